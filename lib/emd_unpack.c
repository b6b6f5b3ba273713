/* emd_unpack.c: see emd_unpack.h.
 *
 * One recursive walk: a message is read field by field as its bytes come;
 * a sub-message is decoded where it stands. Most fields (proto3 fields
 * outside a oneof and repeated sub-messages, numbered 1 to 15) are read
 * by their message type's plan (see Plans): the tag's first byte says
 * how, and the value goes straight to its member. Every other field goes
 * the descriptor's way, through put_field() and put_*(). Repeated arrays
 * grow as elements come (capacity 4, then powers of two: rep_cap()
 * derives it from the count, so nothing more is stored), which leaves
 * some slack behind protobuf-c's exact arrays but reads the input once.
 * Messages and arrays come from blocks of the arena (obj_take()); strings,
 * bytes and unknown fields take their bytes from a pool of len bytes
 * after the first block: each copy is at most the bytes its field takes
 * on the wire minus one (a string's NUL fits in its tag's byte), and
 * fields never overlap, so the pool always suffices. The check a string
 * gets on the way (ASCII, eight bytes at a time, else UTF-8) is what
 * emd_codec's tree check needs, so that check can be skipped for an event
 * with no flag raised. */
#include "emd_unpack.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "emd_utf8.h"

#define WT_VARINT PROTOBUF_C_WIRE_TYPE_VARINT
#define WT_64BIT PROTOBUF_C_WIRE_TYPE_64BIT
#define WT_LEN PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED
#define WT_32BIT PROTOBUF_C_WIRE_TYPE_32BIT

#define OBJ_BLOCK 4096

struct up {
  struct emd_arena *arena;
  uint8_t *pool;                 /* where the next copied bytes go */
  uint8_t *pool_end;
  char *obj;                     /* where the next message or array goes */
  char *obj_end;
  size_t obj_block;              /* bytes to take for the next block */
  unsigned opts;                 /* EMD_UNPACK_* */
  unsigned saw;                  /* EMD_UNPACK_SAW_* */
  bool track;                    /* required fields are checked */
  int rc;                        /* why a function returned NULL */
};

/* Fails with rc: returns NULL, for the functions that say why in u. */
static inline void *fail(struct up *u, int rc)
{
  u->rc = rc;
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Reading the wire as protobuf-c 1.4 reads it */

/* A varint of at most 10 bytes at *pp; bits past 64 are dropped (so an
 * overlong 10-byte form reads). Returns false when none ends in time. */
static bool varint_slow(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
  const uint8_t *p = *pp;
  size_t max = (size_t)(end - p) < 10 ? (size_t)(end - p) : 10, i;
  uint64_t r = 0;

  for (i = 0; i < max; i++) {
    r |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if (p[i] < 0x80) {
      *v = r;
      *pp = p + i + 1;
      return true;
    }
  }
  return false;
}

static inline bool get_varint(const uint8_t **pp, const uint8_t *end,
                              uint64_t *v)
{
  if (*pp < end && **pp < 0x80) {
    *v = **pp;
    (*pp)++;
    return true;
  }
  return varint_slow(pp, end, v);
}

/* A tag of two to five bytes (parse_tag_and_wiretype): the number takes
 * the low 32 bits of what the five bytes give. (A first byte of 0 to 7,
 * field number 0 in one byte, fails before this.) */
static bool tag_slow(const uint8_t **pp, const uint8_t *end, uint32_t *tag,
                     unsigned *wt)
{
  const uint8_t *p = *pp;
  size_t max = (size_t)(end - p) < 5 ? (size_t)(end - p) : 5, i;
  uint32_t t = (uint32_t)(p[0] & 0x7f) >> 3;
  unsigned shift = 4;

  *wt = p[0] & 7;
  for (i = 1; i < max; i++) {
    t |= (uint32_t)(p[i] & 0x7f) << shift;
    shift += 7;
    if (p[i] < 0x80) {
      *tag = t;
      *pp = p + i + 1;
      return true;
    }
  }
  return false;
}

/* A length prefix (scan_length_prefixed_data): at most 5 bytes, a value
 * of at most INT_MAX. Sets *hdr to the prefix's bytes and returns the
 * field's size (prefix + value), or 0 when protobuf-c fails: no end
 * within 5 bytes, a larger value, or more than rem. */
static inline size_t get_len(const uint8_t *p, size_t rem, unsigned *hdr)
{
  size_t max = rem < 5 ? rem : 5, i;
  uint64_t val = 0;

  if (rem > 0 && p[0] < 0x80) {
    *hdr = 1;
    return (size_t)p[0] + 1 <= rem ? (size_t)p[0] + 1 : 0;
  }
  for (i = 0; i < max; i++) {
    val |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if (p[i] < 0x80)
      break;
  }
  if (i == max || val > INT32_MAX)
    return 0;
  *hdr = (unsigned)i + 1;
  return val + *hdr <= rem ? (size_t)val + *hdr : 0;
}

/* parse_boolean: any of the value's bytes with a low bit set. */
static protobuf_c_boolean any_bits(const uint8_t *p, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++)
    if (p[i] & 0x7f)
      return 1;
  return 0;
}

static inline int32_t unzigzag32(uint32_t v)
{
  return (int32_t)((v >> 1) ^ (0u - (v & 1)));
}

static inline int64_t unzigzag64(uint64_t v)
{
  return (int64_t)((v >> 1) ^ ((uint64_t)0 - (v & 1)));
}

/* ------------------------------------------------------------------ */
/* Descriptors */

static inline size_t elt_size(ProtobufCType type)
{
  switch (type) {
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return 8;
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(void *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  default:
    return 4;
  }
}

static bool is_packable(ProtobufCType type)
{
  return type != PROTOBUF_C_TYPE_STRING && type != PROTOBUF_C_TYPE_BYTES &&
         type != PROTOBUF_C_TYPE_MESSAGE;
}

/* int_range_lookup: the index of the field numbered value, or -1. */
static int range_lookup(unsigned n_ranges, const ProtobufCIntRange *r,
                        int value)
{
  unsigned start = 0, n = n_ranges, mid;

  if (n == 0)
    return -1;
  while (n > 1) {
    mid = start + n / 2;
    if (value < r[mid].start_value) {
      n = mid - start;
    } else if (value >= r[mid].start_value +
                        (int)(r[mid + 1].orig_index - r[mid].orig_index)) {
      n = start + n - (mid + 1);
      start = mid + 1;
    } else {
      return (value - r[mid].start_value) + r[mid].orig_index;
    }
  }
  if (n > 0 && r[start].start_value <= value &&
      value < r[start].start_value +
              (int)(r[start + 1].orig_index - r[start].orig_index))
    return (value - r[start].start_value) + r[start].orig_index;
  return -1;
}

/* The field numbered tag, or NULL. Most messages number their fields
 * from 1 without gaps: one range, one subtraction. */
static inline const ProtobufCFieldDescriptor *
field_of(const ProtobufCMessageDescriptor *d, uint32_t tag)
{
  const ProtobufCIntRange *r = d->field_ranges;
  uint32_t off;
  int i;

  if (d->n_field_ranges == 0)
    return NULL;
  off = tag - (uint32_t)r[0].start_value;
  if (off < r[1].orig_index - r[0].orig_index)
    return d->fields + r[0].orig_index + off;
  if (d->n_field_ranges == 1)
    return NULL;
  i = range_lookup(d->n_field_ranges, r, (int)tag);
  return i < 0 ? NULL : d->fields + i;
}

/* message_init_generic, for descriptors without message_init. */
static void init_generic(const ProtobufCMessageDescriptor *d,
                         ProtobufCMessage *m)
{
  const ProtobufCFieldDescriptor *f;
  unsigned i;
  void *p;

  memset(m, 0, d->sizeof_message);
  m->descriptor = d;
  for (i = 0; i < d->n_fields; i++) {
    f = &d->fields[i];
    if (f->default_value == NULL || f->label == PROTOBUF_C_LABEL_REPEATED)
      continue;
    p = (char *)m + f->offset;
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
      memcpy(p, &f->default_value, sizeof(void *));
      break;
    default:
      memcpy(p, f->default_value, elt_size(f->type));
      break;
    }
  }
}

/* ------------------------------------------------------------------ */
/* Memory */

/* n bytes for a message or an array, 8-aligned. They come from blocks
 * of the arena: the first of four times the input plus 256 bytes (a
 * decoded Event takes about four times its wire size; emd_unpack() takes
 * it together with the pool), later ones of 4 KiB, so that a frame costs
 * one or two calls into the arena and leaves at most one partly used
 * block behind. Larger objects get their own. */
static void *obj_slow(struct up *u, size_t n)
{
  char *b;

  if (n > u->obj_block / 2)
    return emd_arena_alloc(u->arena, n);
  b = emd_arena_alloc(u->arena, u->obj_block);
  if (b == NULL)
    return NULL;
  u->obj = b + n;
  u->obj_end = b + u->obj_block;
  u->obj_block = OBJ_BLOCK;
  return b;
}

/* n a multiple of 8 */
static inline void *obj_take8(struct up *u, size_t n)
{
  char *p = u->obj;

  if ((size_t)(u->obj_end - p) < n)
    return obj_slow(u, n);
  u->obj = p + n;
  return p;
}

static inline void *obj_take(struct up *u, size_t n)
{
  return obj_take8(u, (n + 7) & ~(size_t)7);
}

/* The capacity an array of n elements was given: 4, then powers of 2. */
static inline size_t rep_cap(size_t n)
{
  if (n <= 4)
    return 4;
  return (size_t)1 << (64 - __builtin_clzll((unsigned long long)n - 1));
}

/* Room for k more elements of elt bytes after the n in *arr (which this
 * walk made, so its capacity is rep_cap(n)); returns where they go. */
static void *rep_room(struct up *u, void *arr, size_t n, size_t k,
                      size_t elt)
{
  char *a;
  size_t cap;

  a = *(char **)arr;
  if (n > 0 && n + k <= rep_cap(n))
    return a + n * elt;
  if (k > SIZE_MAX / 4 - n)
    return NULL;
  cap = rep_cap(n + k);
  if (cap > SIZE_MAX / elt)
    return NULL;
  a = obj_take(u, cap * elt);
  if (a == NULL)
    return NULL;
  if (n > 0)
    memcpy(a, *(char **)arr, n * elt);
  *(char **)arr = a;
  return a + n * elt;
}

/* rep_room() for one element: the first ones inline. */
static inline void *rep_push(struct up *u, void *arr, size_t n, size_t elt)
{
  char *a;

  if (n == 0) {
    a = obj_take(u, 4 * elt);
    if (a != NULL)
      *(char **)arr = a;
    return a;
  }
  if (n < 4 || (n & (n - 1)) != 0)   /* not full: see rep_cap() */
    return *(char **)arr + n * elt;
  return rep_room(u, arr, n, 1, elt);
}

/* n bytes for a copy; the pool always has them (see the top). */
static inline uint8_t *pool_take(struct up *u, size_t n)
{
  uint8_t *p = u->pool;

  if ((size_t)(u->pool_end - p) < n)
    return emd_arena_alloc(u->arena, n);   /* cannot happen */
  u->pool = p + n;
  return p;
}

/* ------------------------------------------------------------------ */
/* Strings */

#define HIGH64 UINT64_C(0x8080808080808080)

/* Copies n bytes and says whether they were all ASCII: eight at a time,
 * the last eight (or four) overlapping. */
static inline bool copy_ascii(uint8_t *dst, const uint8_t *src, size_t n)
{
  uint64_t acc = 0, w;
  uint32_t a, b;
  size_t i;

  if (n >= 8) {
    for (i = 0; i + 8 <= n; i += 8) {
      memcpy(&w, src + i, 8);
      memcpy(dst + i, &w, 8);
      acc |= w;
    }
    if (i < n) {
      memcpy(&w, src + n - 8, 8);
      memcpy(dst + n - 8, &w, 8);
      acc |= w;
    }
    return (acc & HIGH64) == 0;
  }
  if (n >= 4) {
    memcpy(&a, src, 4);
    memcpy(&b, src + n - 4, 4);
    memcpy(dst, &a, 4);
    memcpy(dst + n - 4, &b, 4);
    return ((a | b) & 0x80808080u) == 0;
  }
  for (i = 0, a = 0; i < n; i++) {
    dst[i] = src[i];
    a |= src[i];
  }
  return a < 0x80;
}

/* A fresh NUL-terminated copy of a string field's n bytes. */
static inline __attribute__((always_inline)) char *
copy_string(struct up *u, const uint8_t *s, size_t n)
{
  uint8_t *p = pool_take(u, n + 1);

  if (p == NULL)
    return NULL;
  if (!copy_ascii(p, s, n) && !emd_utf8_valid(p, n))
    u->saw |= EMD_UNPACK_SAW_BAD_UTF8;
  p[n] = '\0';
  return (char *)p;
}

/* ------------------------------------------------------------------ */
/* Merging two copies of a message (merge_messages) */

static uint32_t get_u32(const void *p)
{
  uint32_t v;

  memcpy(&v, p, sizeof(v));
  return v;
}

static void put_u32(void *p, uint32_t v)
{
  memcpy(p, &v, sizeof(v));
}

/* Merges e (the earlier copy) into l (the later one), which is the result;
 * e is left partly emptied and must not be used again. Returns 0,
 * -EINVAL or -ENOMEM. */
static int merge(struct up *u, ProtobufCMessage *e, ProtobufCMessage *l)
{
  const ProtobufCMessageDescriptor *d = l->descriptor;
  const ProtobufCFieldDescriptor *fi, *f;
  char *ep = (char *)e, *lp = (char *)l, *c;
  size_t *ne, *nl, elt;
  void **ae, **al;
  void *ee, *le;
  uint32_t ec, lc;
  bool need;
  unsigned i;
  int k, rc;

  for (i = 0; i < d->n_fields; i++) {
    fi = &d->fields[i];
    if (fi->label == PROTOBUF_C_LABEL_REPEATED) {
      ne = (size_t *)(ep + fi->quantifier_offset);
      nl = (size_t *)(lp + fi->quantifier_offset);
      ae = (void **)(ep + fi->offset);
      al = (void **)(lp + fi->offset);
      if (*ne == 0)
        continue;
      if (*nl > 0) {
        elt = elt_size(fi->type);
        c = obj_take(u, (*ne + *nl) * elt);
        if (c == NULL)
          return -ENOMEM;
        memcpy(c, *ae, *ne * elt);
        memcpy(c + *ne * elt, *al, *nl * elt);
        *al = c;
        *nl += *ne;
      } else {
        *nl = *ne;
        *al = *ae;
      }
      *ne = 0;
      *ae = NULL;
      continue;
    }
    if (fi->label != PROTOBUF_C_LABEL_OPTIONAL &&
        fi->label != PROTOBUF_C_LABEL_NONE)
      continue;
    /* The has_ flag or oneof case; for a proto3 field (offset 0) this
     * reads the descriptor pointer in both copies, as protobuf-c does, so
     * the later value always stays. */
    ec = get_u32(ep + fi->quantifier_offset);
    lc = get_u32(lp + fi->quantifier_offset);
    f = fi;
    if (fi->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      if (lc != 0)
        continue;
      /* neither copy sets the oneof: protobuf-c finds no field numbered
       * 0 and fails */
      k = range_lookup(d->n_field_ranges, d->field_ranges, (int)ec);
      if (k < 0)
        return -EINVAL;
      f = &d->fields[k];
    }
    ee = ep + f->offset;
    le = lp + f->offset;
    need = false;
    switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE: {
      ProtobufCMessage *em = *(ProtobufCMessage **)ee;
      ProtobufCMessage *lm = *(ProtobufCMessage **)le;

      if (em != NULL && lm != NULL) {
        rc = merge(u, em, lm);
        if (rc != 0)
          return rc;
      } else {
        need = em != NULL;
      }
      break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      const ProtobufCBinaryData *dbd = f->default_value;
      const uint8_t *ed = ((ProtobufCBinaryData *)ee)->data;
      const uint8_t *ld = ((ProtobufCBinaryData *)le)->data;

      need = ed != NULL && (dbd == NULL || ed != dbd->data) &&
             (ld == NULL || (dbd != NULL && ld == dbd->data));
      break;
    }
    case PROTOBUF_C_TYPE_STRING:
      need = *(void **)ee != f->default_value &&
             *(void **)le == f->default_value;
      break;
    default:
      need = ec != 0 && lc == 0;
      break;
    }
    if (need) {
      elt = elt_size(f->type);
      memcpy(le, ee, elt);
      memset(ee, 0, elt);
      if (f->quantifier_offset != 0) {
        put_u32(lp + fi->quantifier_offset, ec);
        put_u32(ep + fi->quantifier_offset, 0);
      }
    }
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Plans: a descriptor read once
 *
 * Read by the descriptor, a field costs its 72-byte field descriptor, a
 * lookup and the tests of label, flags and type that say what to do.
 * A plan is that work done once per message type for what most fields
 * are: a proto3 field outside a oneof (string, bytes, sub-message or
 * scalar) or a repeated sub-message, numbered 1 to 15, so that its tag
 * is one byte. kind[] maps that byte (the number and the wire type) to
 * how to store the value (enum kind), or to K_FIELD: the descriptor's
 * way (put_field()) for everything else. That covers other numbers and
 * labels, oneofs, packed runs, wrong wire types (a bool's too), unknown
 * fields and tags in more bytes than they need. row[] has, by number,
 * the member's offset, the count's and the sub-message's plan. A message
 * type with a required field that has no default is read the
 * descriptor's way throughout, unless the caller said there are none
 * (EMD_UNPACK_NO_REQUIRED), so the planned loop has no checks to make.
 *
 * Plans are made at a type's first use and kept for the life of the
 * process, in one table for every thread: emd_unpack() has no state of
 * its own for them to live in, and the upstream decodes on several
 * threads at once (thread-local plans would be made again, and leaked,
 * per thread). A slot is filled once, by compare-and-swap of a finished
 * plan (a thread that loses the race frees its own and takes the
 * winner's), and never changes after; the only other write is a row's
 * sub-plan, an atomic pointer set to the same value by whoever finds it
 * first. So plans are read without a lock. What a plan holds comes from
 * the descriptor alone, and plans are keyed by the descriptor's address:
 * that assumes that a descriptor's fields, ranges and size stay as they
 * are while it is in use, as generated ones do (message_init is read
 * from the descriptor each time). A type that finds no free slot among
 * the PLAN_PROBES after its hash (the table is nearly full), or no memory
 * for its plan, is read the descriptor's way. */

enum kind {
  K_FIELD,       /* put_field() */
  K_STRING,      /* length-delimited */
  K_BYTES,
  K_MSG,
  K_REP_MSG,
  K_BOOL,        /* varint */
  K_V32,         /* int32, uint32, enum: the low 32 bits */
  K_V64,         /* int64, uint64 */
  K_S32,
  K_S64,
  K_F32,         /* 32-bit: fixed32, sfixed32, float */
  K_F64,         /* 64-bit: fixed64, sfixed64, double */
};

struct plan;

struct prow {
  uint32_t offset;               /* of the member */
  uint32_t qoffset;              /* of the count, K_REP_MSG */
  const ProtobufCFieldDescriptor *f;
  _Atomic(struct plan *) sub;    /* K_MSG, K_REP_MSG: found at first use */
};

/* for put_planned()'s way to a row from a tag byte */
_Static_assert(sizeof(struct prow) % 8 == 0, "a row is 8-byte words");

struct plan {
  const ProtobufCMessageDescriptor *d;
  size_t size;                   /* sizeof_message rounded up to 8 */
  bool required;                 /* some required field has no default */
  uint8_t kind[256];             /* enum kind by the tag's first byte
                                  * (K_FIELD from 0x80: longer tags) */
  struct prow row[16];           /* by field number */
};

#define PLAN_SLOTS EMD_UNPACK_PLANS   /* a power of two */
#define PLAN_PROBES 32           /* slots a type looks at, from its hash */

static _Atomic(struct plan *) plans[PLAN_SLOTS];

/* A proto3 field outside a oneof (and without a has_ flag, which protoc-c
 * never gives one): its value simply goes to its member, as most do. */
static inline bool is_plain(const ProtobufCFieldDescriptor *f)
{
  return f->label == PROTOBUF_C_LABEL_NONE &&
         (f->quantifier_offset | (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) == 0;
}

/* f's kind and the wire type it takes, or K_FIELD. */
static enum kind kind_of(const ProtobufCFieldDescriptor *f, unsigned *wt)
{
  static const uint8_t plain[][2] = {
    [PROTOBUF_C_TYPE_INT32] = { K_V32, WT_VARINT },
    [PROTOBUF_C_TYPE_SINT32] = { K_S32, WT_VARINT },
    [PROTOBUF_C_TYPE_SFIXED32] = { K_F32, WT_32BIT },
    [PROTOBUF_C_TYPE_INT64] = { K_V64, WT_VARINT },
    [PROTOBUF_C_TYPE_SINT64] = { K_S64, WT_VARINT },
    [PROTOBUF_C_TYPE_SFIXED64] = { K_F64, WT_64BIT },
    [PROTOBUF_C_TYPE_UINT32] = { K_V32, WT_VARINT },
    [PROTOBUF_C_TYPE_FIXED32] = { K_F32, WT_32BIT },
    [PROTOBUF_C_TYPE_UINT64] = { K_V64, WT_VARINT },
    [PROTOBUF_C_TYPE_FIXED64] = { K_F64, WT_64BIT },
    [PROTOBUF_C_TYPE_FLOAT] = { K_F32, WT_32BIT },
    [PROTOBUF_C_TYPE_DOUBLE] = { K_F64, WT_64BIT },
    [PROTOBUF_C_TYPE_BOOL] = { K_BOOL, WT_VARINT },
    [PROTOBUF_C_TYPE_ENUM] = { K_V32, WT_VARINT },
    [PROTOBUF_C_TYPE_STRING] = { K_STRING, WT_LEN },
    [PROTOBUF_C_TYPE_BYTES] = { K_BYTES, WT_LEN },
    [PROTOBUF_C_TYPE_MESSAGE] = { K_MSG, WT_LEN },
  };

  if ((unsigned)f->type >= sizeof(plain) / sizeof(plain[0]))
    return K_FIELD;
  if (is_plain(f)) {
    *wt = plain[f->type][1];
    return (enum kind)plain[f->type][0];
  }
  /* a message marked packed fails as a packed run (put_packed) */
  if (f->label == PROTOBUF_C_LABEL_REPEATED &&
      f->type == PROTOBUF_C_TYPE_MESSAGE &&
      !(f->flags & PROTOBUF_C_FIELD_FLAG_PACKED)) {
    *wt = WT_LEN;
    return K_REP_MSG;
  }
  return K_FIELD;
}

/* d's plan, or NULL without memory. The rows are those of the fields
 * that field_of() finds for the numbers 1 to 15, so that the plan and the
 * descriptor's way never disagree about a number. */
static struct plan *plan_make(const ProtobufCMessageDescriptor *d)
{
  const ProtobufCFieldDescriptor *f;
  struct plan *pl = calloc(1, sizeof(*pl));
  enum kind k;
  unsigned i, wt;

  if (pl == NULL)
    return NULL;
  pl->d = d;
  pl->size = (d->sizeof_message + 7) & ~(size_t)7;
  for (i = 0; i < d->n_fields; i++)
    if (d->fields[i].label == PROTOBUF_C_LABEL_REQUIRED &&
        d->fields[i].default_value == NULL)
      pl->required = true;
  for (i = 0; i < 16; i++) {
    atomic_init(&pl->row[i].sub, NULL);
    f = i > 0 ? field_of(d, i) : NULL;
    if (f == NULL || (k = kind_of(f, &wt)) == K_FIELD)
      continue;
    pl->kind[i << 3 | wt] = (uint8_t)k;
    pl->row[i].offset = f->offset;
    pl->row[i].qoffset = f->quantifier_offset;
    pl->row[i].f = f;
  }
  return pl;
}

static inline size_t plan_slot(const ProtobufCMessageDescriptor *d)
{
  uint64_t h = (uint64_t)((uintptr_t)d >> 3) * UINT64_C(0x9e3779b97f4a7c15);

  return (size_t)(h >> 32) & (PLAN_SLOTS - 1);
}

/* d's plan from the table, made the first time; NULL when the slots d
 * may take are full (the table nearly so), or there is no memory. */
static __attribute__((noinline)) struct plan *
plan_get(const ProtobufCMessageDescriptor *d)
{
  size_t i = plan_slot(d), k;
  struct plan *pl, *mine = NULL;

  for (k = 0; k < PLAN_PROBES; k++, i = (i + 1) & (PLAN_SLOTS - 1)) {
    pl = atomic_load_explicit(&plans[i], memory_order_acquire);
    if (pl == NULL) {
      if (mine == NULL && (mine = plan_make(d)) == NULL)
        return NULL;
      if (atomic_compare_exchange_strong_explicit(
              &plans[i], &pl, mine, memory_order_acq_rel,
              memory_order_acquire))
        return mine;
      /* another thread filled the slot first: pl is what it put there */
    }
    if (pl->d == d) {
      free(mine);
      return pl;
    }
  }
  free(mine);
  return NULL;
}

/* plan_get(), in one look when d has its own slot */
static inline struct plan *plan_find(const ProtobufCMessageDescriptor *d)
{
  struct plan *pl = atomic_load_explicit(&plans[plan_slot(d)],
                                         memory_order_acquire);

  return pl != NULL && pl->d == d ? pl : plan_get(d);
}

/* The plan of row r's sub-message type (or NULL), found once and kept in
 * the row (NULL is not kept, so that a later message tries again). */
static __attribute__((noinline)) struct plan *sub_slow(struct prow *r)
{
  struct plan *pl = plan_get(r->f->descriptor);

  if (pl != NULL)
    atomic_store_explicit(&r->sub, pl, memory_order_release);
  return pl;
}

static inline struct plan *sub_plan(struct prow *r)
{
  struct plan *pl = atomic_load_explicit(&r->sub, memory_order_acquire);

  return pl != NULL ? pl : sub_slow(r);
}

/* ------------------------------------------------------------------ */
/* Fields */

static ProtobufCMessage *unpack_message(struct up *u,
                                        const ProtobufCMessageDescriptor *d,
                                        const uint8_t *p, const uint8_t *end);
static int put_message(struct up *u, const ProtobufCFieldDescriptor *f,
                       void *p, ProtobufCMessage *sub);

/* A oneof's member at p, before another member goes there. */
static void clear_oneof(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                        char *p)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  uint32_t c = get_u32((char *)m + f->quantifier_offset);
  int k;

  if (c != 0) {
    k = range_lookup(d->n_field_ranges, d->field_ranges, (int)c);
    memset(p, 0, elt_size(k < 0 ? f->type : d->fields[k].type));
  }
}

/* Where the next value of singular field f goes (parse_oneof_member: a
 * oneof's earlier member is cleared first). */
static inline void *member(ProtobufCMessage *m,
                           const ProtobufCFieldDescriptor *f)
{
  char *p = (char *)m + f->offset;

  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    clear_oneof(m, f, p);
  return p;
}

/* After a singular field's value is in: the oneof case or has_ flag. */
static inline void mark(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    put_u32((char *)m + f->quantifier_offset, f->id);
  else if (f->label != PROTOBUF_C_LABEL_REQUIRED && f->quantifier_offset != 0)
    *(protobuf_c_boolean *)((char *)m + f->quantifier_offset) = 1;
}

/* Stores one scalar value (its bits in v) of field f. */
static inline int put_scalar(struct up *u, ProtobufCMessage *m,
                             const ProtobufCFieldDescriptor *f, uint64_t v)
{
  size_t elt = elt_size(f->type), *n;
  void *p;

  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    n = (size_t *)((char *)m + f->quantifier_offset);
    p = rep_room(u, (char *)m + f->offset, *n, 1, elt);
    if (p == NULL)
      return -ENOMEM;
    (*n)++;
  } else {
    p = member(m, f);
  }
  if (elt == 8) {
    memcpy(p, &v, 8);
  } else {
    uint32_t w = (uint32_t)v;

    memcpy(p, &w, 4);
  }
  if (f->label != PROTOBUF_C_LABEL_REPEATED)
    mark(m, f);
  return 0;
}

/* A varint value for f: its value v, its bytes raw[0..n). */
static __attribute__((noinline)) int
put_varint(struct up *u, ProtobufCMessage *m,
           const ProtobufCFieldDescriptor *f, uint64_t v, const uint8_t *raw,
           size_t n)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    return put_scalar(u, m, f, v);
  case PROTOBUF_C_TYPE_SINT32:
    return put_scalar(u, m, f, (uint32_t)unzigzag32((uint32_t)v));
  case PROTOBUF_C_TYPE_SINT64:
    return put_scalar(u, m, f, (uint64_t)unzigzag64(v));
  case PROTOBUF_C_TYPE_BOOL:
    return put_scalar(u, m, f, (uint64_t)any_bits(raw, n));
  default:
    return -EINVAL;
  }
}

/* A 32- or 64-bit value (n 4 or 8) for f. */
static __attribute__((noinline)) int
put_fixed(struct up *u, ProtobufCMessage *m,
          const ProtobufCFieldDescriptor *f, const uint8_t *p, size_t n)
{
  uint64_t v;
  uint32_t w;

  switch (f->type) {
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    if (n != 4)
      return -EINVAL;
    memcpy(&w, p, 4);
    return put_scalar(u, m, f, w);
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    if (n != 8)
      return -EINVAL;
    memcpy(&v, p, 8);
    return put_scalar(u, m, f, v);
  case PROTOBUF_C_TYPE_BOOL:
    return put_scalar(u, m, f, (uint64_t)any_bits(p, n));
  default:
    return -EINVAL;
  }
}

/* A packed run p[0..n) for repeated field f (parse_packed_repeated_member,
 * with count_packed_elements' checks). */
static int put_packed(struct up *u, ProtobufCMessage *m,
                      const ProtobufCFieldDescriptor *f, const uint8_t *p,
                      size_t n)
{
  size_t elt = elt_size(f->type), *cnt, count, i;
  const uint8_t *end = p + n, *q;
  char *a;
  uint64_t v;

  cnt = (size_t *)((char *)m + f->quantifier_offset);
  switch (f->type) {
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    if (n % elt != 0)
      return -EINVAL;
    count = n / elt;
    if (count == 0)
      return 0;
    a = rep_room(u, (char *)m + f->offset, *cnt, count, elt);
    if (a == NULL)
      return -ENOMEM;
    memcpy(a, p, n);
    *cnt += count;
    return 0;
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_BOOL:
    for (i = 0, count = 0; i < n; i++)
      count += p[i] < 0x80;
    if (count == 0)
      return n == 0 ? 0 : -EINVAL;
    a = rep_room(u, (char *)m + f->offset, *cnt, count, elt);
    if (a == NULL)
      return -ENOMEM;
    for (i = 0; p < end; i++) {
      q = p;
      if (!get_varint(&p, end, &v))
        return -EINVAL;
      if (f->type == PROTOBUF_C_TYPE_SINT32)
        v = (uint32_t)unzigzag32((uint32_t)v);
      else if (f->type == PROTOBUF_C_TYPE_SINT64)
        v = (uint64_t)unzigzag64(v);
      else if (f->type == PROTOBUF_C_TYPE_BOOL)
        v = (uint64_t)any_bits(q, (size_t)(p - q));
      if (elt == 8) {
        memcpy(a + 8 * i, &v, 8);
      } else {
        uint32_t w = (uint32_t)v;

        memcpy(a + 4 * i, &w, 4);
      }
    }
    *cnt += count;
    return 0;
  default:
    return -EINVAL;   /* a string, bytes or message marked packed */
  }
}

/* A length-delimited field for f: the prefix at p (hdr bytes), the
 * contents up to end. */
static __attribute__((noinline)) int
put_len(struct up *u, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
        const uint8_t *p, unsigned hdr, const uint8_t *end)
{
  const uint8_t *s = p + hdr;
  size_t n = (size_t)(end - s), *cnt = NULL;
  ProtobufCBinaryData *bd;
  ProtobufCMessage *sub;
  void *slot;
  char *str;
  int rc;

  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_PACKED) || is_packable(f->type))
      return put_packed(u, m, f, s, n);
    cnt = (size_t *)((char *)m + f->quantifier_offset);
  }
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    str = copy_string(u, s, n);
    if (str == NULL)
      return -ENOMEM;
    if (cnt != NULL) {
      slot = rep_room(u, (char *)m + f->offset, *cnt, 1, sizeof(char *));
      if (slot == NULL)
        return -ENOMEM;
      (*cnt)++;
    } else {
      slot = member(m, f);
      mark(m, f);
    }
    *(char **)slot = str;
    return 0;
  case PROTOBUF_C_TYPE_BYTES:
    if (cnt != NULL) {
      slot = rep_room(u, (char *)m + f->offset, *cnt, 1, sizeof(*bd));
      if (slot == NULL)
        return -ENOMEM;
      (*cnt)++;
    } else {
      slot = member(m, f);
      mark(m, f);
    }
    bd = slot;
    bd->len = n;
    bd->data = NULL;
    if (n > 0) {
      bd->data = pool_take(u, n);
      if (bd->data == NULL)
        return -ENOMEM;
      memcpy(bd->data, s, n);
    }
    return 0;
  case PROTOBUF_C_TYPE_MESSAGE:
    slot = cnt == NULL ? member(m, f) : NULL;
    sub = unpack_message(u, f->descriptor, s, end);
    if (sub == NULL)
      return u->rc;
    if (cnt == NULL) {
      rc = put_message(u, f, slot, sub);
      if (rc == 0)
        mark(m, f);
      return rc;
    }
    slot = rep_room(u, (char *)m + f->offset, *cnt, 1, sizeof(sub));
    if (slot == NULL)
      return -ENOMEM;
    (*cnt)++;
    *(ProtobufCMessage **)slot = sub;
    return 0;
  case PROTOBUF_C_TYPE_BOOL:
    /* no wire type check: the prefix's and the contents' bits count */
    return put_scalar(u, m, f, (uint64_t)any_bits(p, (size_t)(end - p)));
  default:
    return -EINVAL;
  }
}

/* An unknown field: tag, wire type and the n bytes after the tag. */
static __attribute__((noinline)) int
put_unknown(struct up *u, ProtobufCMessage *m, uint32_t tag, unsigned wt,
            const uint8_t *p, size_t n)
{
  ProtobufCMessageUnknownField *uf;

  u->saw |= EMD_UNPACK_SAW_UNKNOWN;
  if (u->opts & EMD_UNPACK_DROP_UNKNOWN)
    return 0;
  uf = rep_room(u, &m->unknown_fields, m->n_unknown_fields, 1, sizeof(*uf));
  if (uf == NULL)
    return -ENOMEM;
  uf->data = pool_take(u, n);
  if (uf->data == NULL)
    return -ENOMEM;
  memcpy(uf->data, p, n);
  uf->tag = tag;
  uf->wire_type = (ProtobufCWireType)wt;
  uf->len = n;
  m->n_unknown_fields++;
  return 0;
}

/* Every required field without a default must have come by. */
static bool required_seen(const ProtobufCMessageDescriptor *d,
                          const uint64_t *seen)
{
  const ProtobufCFieldDescriptor *f = d->fields, *end = f + d->n_fields;
  size_t i;

  for (; f < end; f++) {
    if (f->label != PROTOBUF_C_LABEL_REQUIRED || f->default_value != NULL)
      continue;
    i = (size_t)(f - d->fields);
    if (!(seen[i / 64] >> (i % 64) & 1))
      return false;
  }
  return true;
}

/* A plain field's varint value (v, its bytes raw[0..n)) into member p;
 * false for types that take no varint. */
static inline bool plain_varint(const ProtobufCFieldDescriptor *f, void *p,
                                uint64_t v, const uint8_t *raw, size_t n)
{
  uint32_t w;

  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_ENUM:
    w = (uint32_t)v;
    memcpy(p, &w, 4);
    return true;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    memcpy(p, &v, 8);
    return true;
  case PROTOBUF_C_TYPE_BOOL:
    *(protobuf_c_boolean *)p = v != 0 || any_bits(raw, n);
    return true;
  default:
    return false;
  }
}

/* Sub-message sub of field f goes to its member at p: merged into an
 * earlier copy there (parse_required_member). */
static int put_message(struct up *u, const ProtobufCFieldDescriptor *f,
                       void *p, ProtobufCMessage *sub)
{
  ProtobufCMessage *old = *(ProtobufCMessage **)p;
  int rc;

  if (old != NULL && old != f->default_value) {
    rc = merge(u, old, sub);
    if (rc != 0)
      return rc;
  }
  *(ProtobufCMessage **)p = sub;
  return 0;
}

/* A plain field's length-delimited value s[0..n) (its prefix at p, hdr
 * bytes, the field's end at end) into m. */
static int plain_len(struct up *u, ProtobufCMessage *m,
                     const ProtobufCFieldDescriptor *f, const uint8_t *p,
                     unsigned hdr, const uint8_t *end)
{
  ProtobufCMessage *sub;
  char *str;

  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    str = copy_string(u, p + hdr, (size_t)(end - p) - hdr);
    if (str == NULL)
      return -ENOMEM;
    *(char **)((char *)m + f->offset) = str;
    return 0;
  case PROTOBUF_C_TYPE_MESSAGE:
    sub = unpack_message(u, f->descriptor, p + hdr, end);
    if (sub == NULL)
      return u->rc;
    return put_message(u, f, (char *)m + f->offset, sub);
  default:
    return put_len(u, m, f, p, hdr, end);
  }
}

/* One field of m (type d) the descriptor's way: its tag at p. Returns
 * where the next one starts, or NULL (u->rc says why). seen (NULL: not
 * wanted) gets a bit per required field that came. */
static __attribute__((noinline)) const uint8_t *
put_field(struct up *u, ProtobufCMessage *m,
          const ProtobufCMessageDescriptor *d, uint64_t *seen,
          const uint8_t *p, const uint8_t *end)
{
  const ProtobufCFieldDescriptor *f;
  const uint8_t *start;
  unsigned wt, hdr;
  uint32_t tag;
  size_t i, size;
  uint64_t v;
  int rc;

  if (p[0] < 0x80) {
    if (p[0] < 8)
      return fail(u, -EINVAL);   /* field number 0 */
    tag = p[0] >> 3;
    wt = p[0] & 7;
    p++;
  } else if (!tag_slow(&p, end, &tag, &wt)) {
    return fail(u, -EINVAL);
  }
  f = field_of(d, tag);
  if (f != NULL && seen != NULL && f->label == PROTOBUF_C_LABEL_REQUIRED) {
    i = (size_t)(f - d->fields);
    seen[i / 64] |= (uint64_t)1 << (i % 64);
  }
  start = p;
  switch (wt) {
  case WT_VARINT:
    if (!get_varint(&p, end, &v))
      return fail(u, -EINVAL);
    if (f == NULL)
      rc = put_unknown(u, m, tag, wt, start, (size_t)(p - start));
    else if (is_plain(f) && plain_varint(f, (char *)m + f->offset, v, start,
                                         (size_t)(p - start)))
      rc = 0;
    else
      rc = put_varint(u, m, f, v, start, (size_t)(p - start));
    break;
  case WT_64BIT:
  case WT_32BIT:
    i = wt == WT_64BIT ? 8 : 4;
    if ((size_t)(end - p) < i)
      return fail(u, -EINVAL);
    p += i;
    if (f == NULL)
      rc = put_unknown(u, m, tag, wt, start, i);
    else
      rc = put_fixed(u, m, f, start, i);
    break;
  case WT_LEN:
    size = get_len(p, (size_t)(end - p), &hdr);
    if (size == 0)
      return fail(u, -EINVAL);
    p += size;
    if (f == NULL)
      rc = put_unknown(u, m, tag, wt, start, size);
    else if (is_plain(f))
      rc = plain_len(u, m, f, start, hdr, p);
    else
      rc = put_len(u, m, f, start, hdr, p);
    break;
  default:
    return fail(u, -EINVAL);
  }
  return rc == 0 ? p : fail(u, rc);
}

/* A new message of type d, initialised, of size bytes (a multiple of 8). */
static inline ProtobufCMessage *
new_message(struct up *u, const ProtobufCMessageDescriptor *d, size_t size)
{
  ProtobufCMessage *m = obj_take8(u, size);

  if (m == NULL)
    return fail(u, -ENOMEM);
  if (d->message_init != NULL)
    d->message_init(m);
  else
    init_generic(d, m);
  return m;
}

/* A message of type d from p[0..end), the descriptor's way (every field
 * by put_field()). Returns it, or NULL (u->rc says why). */
static __attribute__((noinline)) ProtobufCMessage *
unpack_by_desc(struct up *u, const ProtobufCMessageDescriptor *d,
               const uint8_t *p, const uint8_t *end)
{
  uint64_t seen_stack[2], *seen = NULL;
  ProtobufCMessage *m;

  m = new_message(u, d, (d->sizeof_message + 7) & ~(size_t)7);
  if (m == NULL)
    return NULL;
  if (u->track) {
    seen = seen_stack;
    seen_stack[0] = seen_stack[1] = 0;
    if (d->n_fields > 128) {
      seen = emd_arena_calloc(u->arena, (d->n_fields + 63) / 64 * 8);
      if (seen == NULL)
        return fail(u, -ENOMEM);
    }
  }
  while (p < end) {
    p = put_field(u, m, d, seen, p, end);
    if (p == NULL)
      return NULL;
  }
  if (seen != NULL && !required_seen(d, seen))
    return fail(u, -EINVAL);
  return m;
}

/* A varint at p: returns where it ends, or NULL. */
static inline const uint8_t *read_varint(const uint8_t *p,
                                         const uint8_t *end, uint64_t *v)
{
  if (p < end && p[0] < 0x80) {
    *v = p[0];
    return p + 1;
  }
  return varint_slow(&p, end, v) ? p : NULL;
}

/* A length-delimited value at p: *s and *n get its contents; returns
 * where it ends, or NULL (get_len()'s checks). */
static inline const uint8_t *read_len(const uint8_t *p, const uint8_t *end,
                                      const uint8_t **s, size_t *n)
{
  unsigned hdr;
  size_t size;

  if (p < end && p[0] < 0x80) {
    *n = p[0];
    *s = p + 1;
    return *n < (size_t)(end - p) ? p + 1 + *n : NULL;
  }
  size = get_len(p, (size_t)(end - p), &hdr);
  if (size == 0)
    return NULL;
  *s = p + hdr;
  *n = size - hdr;
  return p + size;
}

static ProtobufCMessage *unpack_planned(struct up *u, struct plan *pl,
                                        const uint8_t *p, const uint8_t *end);

/* Row r's sub-message s[0..end), by its plan if it has one. */
static inline ProtobufCMessage *unpack_row(struct up *u, struct prow *r,
                                           const uint8_t *s,
                                           const uint8_t *end)
{
  struct plan *pl = sub_plan(r);

  return pl != NULL ? unpack_planned(u, pl, s, end)
                    : unpack_by_desc(u, r->f->descriptor, s, end);
}

/* The fields by kind (put_planned()): each reads its value at p, after
 * the tag, up to end, and stores it at dst, the member; each returns
 * where the next field starts, or NULL (u->rc says why). Inlined into
 * the one loop that reads a message by its plan. */

static inline __attribute__((always_inline)) const uint8_t *
plan_string(struct up *u, void *dst, const uint8_t *p,
            const uint8_t *end)
{
  const uint8_t *s;
  size_t n;
  char *str;

  p = read_len(p, end, &s, &n);
  if (p == NULL)
    return fail(u, -EINVAL);
  str = copy_string(u, s, n);
  if (str == NULL)
    return fail(u, -ENOMEM);
  *(char **)dst = str;
  return p;
}

static inline __attribute__((always_inline)) const uint8_t *
plan_bytes(struct up *u, void *dst, const uint8_t *p,
           const uint8_t *end)
{
  ProtobufCBinaryData *bd = dst;
  const uint8_t *s;
  size_t n;

  p = read_len(p, end, &s, &n);
  if (p == NULL)
    return fail(u, -EINVAL);
  bd->len = n;
  bd->data = NULL;
  if (n == 0)
    return p;
  bd->data = pool_take(u, n);
  if (bd->data == NULL)
    return fail(u, -ENOMEM);
  memcpy(bd->data, s, n);
  return p;
}

/* row r's sub-message, merged into an earlier one at dst */
static inline __attribute__((always_inline)) const uint8_t *
plan_msg(struct up *u, void *dst, struct prow *r, const uint8_t *p,
         const uint8_t *end)
{
  ProtobufCMessage *sub;
  const uint8_t *s;
  size_t n;
  int rc;

  p = read_len(p, end, &s, &n);
  if (p == NULL)
    return fail(u, -EINVAL);
  sub = unpack_row(u, r, s, p);
  if (sub == NULL)
    return NULL;
  if (*(ProtobufCMessage **)dst == NULL) {
    *(ProtobufCMessage **)dst = sub;
    return p;
  }
  rc = put_message(u, r->f, dst, sub);
  return rc == 0 ? p : fail(u, rc);
}

/* row r's sub-message, appended to m's array */
static inline __attribute__((always_inline)) const uint8_t *
plan_rep_msg(struct up *u, char *m, struct prow *r, const uint8_t *p,
             const uint8_t *end)
{
  size_t *cnt = (size_t *)(m + r->qoffset), n;
  ProtobufCMessage *sub, **slot;
  const uint8_t *s;

  p = read_len(p, end, &s, &n);
  if (p == NULL)
    return fail(u, -EINVAL);
  sub = unpack_row(u, r, s, p);
  if (sub == NULL)
    return NULL;
  slot = rep_push(u, m + r->offset, *cnt, sizeof(sub));
  if (slot == NULL)
    return fail(u, -ENOMEM);
  (*cnt)++;
  *slot = sub;
  return p;
}

/* n (4 or 8) bytes as they are */
static inline __attribute__((always_inline)) const uint8_t *
plan_fixed(struct up *u, void *dst, const uint8_t *p,
           const uint8_t *end, size_t n)
{
  if ((size_t)(end - p) < n)
    return fail(u, -EINVAL);
  memcpy(dst, p, n);
  return p + n;
}

static inline __attribute__((always_inline)) const uint8_t *
plan_bool(struct up *u, void *dst, const uint8_t *p,
          const uint8_t *end)
{
  const uint8_t *s = p;
  uint64_t v;

  p = read_varint(p, end, &v);
  if (p == NULL)
    return fail(u, -EINVAL);
  *(protobuf_c_boolean *)dst = v != 0 || any_bits(s, (size_t)(p - s));
  return p;
}

static inline __attribute__((always_inline)) const uint8_t *
plan_v32(struct up *u, void *dst, const uint8_t *p,
         const uint8_t *end, bool zigzag)
{
  uint64_t v;
  uint32_t w;

  p = read_varint(p, end, &v);
  if (p == NULL)
    return fail(u, -EINVAL);
  w = (uint32_t)v;
  if (zigzag)
    w = (uint32_t)unzigzag32(w);
  memcpy(dst, &w, 4);
  return p;
}

static inline __attribute__((always_inline)) const uint8_t *
plan_v64(struct up *u, void *dst, const uint8_t *p,
         const uint8_t *end, bool zigzag)
{
  uint64_t v;

  p = read_varint(p, end, &v);
  if (p == NULL)
    return fail(u, -EINVAL);
  if (zigzag)
    v = (uint64_t)unzigzag64(v);
  memcpy(dst, &v, 8);
  return p;
}

/* The field at p (its tag's first byte there) of m, by plan pl. Returns
 * where the next one starts, or NULL (u->rc says why). */
static inline __attribute__((always_inline)) const uint8_t *
put_planned(struct up *u, ProtobufCMessage *m, struct plan *pl,
            const uint8_t *p, const uint8_t *end)
{
  /* &pl->row[(p[0] >> 3) & 15], in fewer instructions; masked, so that
   * the first byte of a longer tag (K_FIELD, which has no row) still
   * names a row inside the plan */
  struct prow *r = (struct prow *)((char *)pl->row + (size_t)(p[0] & 0x78) *
                                   (sizeof(struct prow) / 8));
  char *mp = (char *)m;

  /* the member's address in each case: K_FIELD has no row */
  switch ((enum kind)pl->kind[p[0]]) {
  case K_FIELD:
    return put_field(u, m, pl->d, NULL, p, end);
  case K_STRING:
    return plan_string(u, mp + r->offset, p + 1, end);
  case K_BYTES:
    return plan_bytes(u, mp + r->offset, p + 1, end);
  case K_MSG:
    return plan_msg(u, mp + r->offset, r, p + 1, end);
  case K_REP_MSG:
    return plan_rep_msg(u, mp, r, p + 1, end);
  case K_BOOL:
    return plan_bool(u, mp + r->offset, p + 1, end);
  case K_V32:
    return plan_v32(u, mp + r->offset, p + 1, end, false);
  case K_S32:
    return plan_v32(u, mp + r->offset, p + 1, end, true);
  case K_V64:
    return plan_v64(u, mp + r->offset, p + 1, end, false);
  case K_S64:
    return plan_v64(u, mp + r->offset, p + 1, end, true);
  case K_F32:
    return plan_fixed(u, mp + r->offset, p + 1, end, 4);
  case K_F64:
    return plan_fixed(u, mp + r->offset, p + 1, end, 8);
  }
  __builtin_unreachable();   /* kind[] holds nothing else */
}

/* A message by its plan pl from p[0..end). Returns it, or NULL (u->rc
 * says why). */
static ProtobufCMessage *unpack_planned(struct up *u, struct plan *pl,
                                        const uint8_t *p, const uint8_t *end)
{
  ProtobufCMessage *m;

  if (pl->required && u->track)
    return unpack_by_desc(u, pl->d, p, end);
  m = new_message(u, pl->d, pl->size);
  if (m == NULL)
    return NULL;
  while (p < end) {
    p = put_planned(u, m, pl, p, end);
    if (p == NULL)
      return NULL;
  }
  return m;
}

/* A message of type d from p[0..end), by its plan if it has one. Returns
 * it, or NULL (u->rc says why). */
static ProtobufCMessage *unpack_message(struct up *u,
                                        const ProtobufCMessageDescriptor *d,
                                        const uint8_t *p, const uint8_t *end)
{
  struct plan *pl = plan_find(d);

  return pl != NULL ? unpack_planned(u, pl, p, end)
                    : unpack_by_desc(u, d, p, end);
}

int emd_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
               size_t len, struct emd_arena *arena, unsigned opts,
               ProtobufCMessage **out, unsigned *saw)
{
  struct up u = { .arena = arena, .opts = opts };
  char *b;

  *out = NULL;
  u.track = !(opts & EMD_UNPACK_NO_REQUIRED);
  if (len == 0)
    data = (const uint8_t *)"";   /* data may be NULL: no NULL + 0 */
  /* the first block for messages and arrays, and the pool after it */
  u.obj_block = len < (OBJ_BLOCK - 256) / 4 ? 4 * len + 256 : OBJ_BLOCK;
  b = emd_arena_alloc(arena, u.obj_block + len);
  if (b != NULL) {
    u.obj = b;
    u.obj_end = b + u.obj_block;
    u.obj_block = OBJ_BLOCK;
    u.pool = (uint8_t *)u.obj_end;
    u.pool_end = u.pool + len;
    *out = unpack_message(&u, desc, data, data + len);
  } else {
    u.rc = -ENOMEM;
  }
  if (saw != NULL)
    *saw = u.saw;
  return *out != NULL ? 0 : u.rc;
}
