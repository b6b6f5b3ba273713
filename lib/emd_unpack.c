/* emd_unpack.c: see emd_unpack.h.
 *
 * One recursive walk: a message is read field by field as its bytes come;
 * a sub-message is decoded where it stands. The loop tries the field
 * after the last one first (fields come in their order, with gaps where
 * proto3 leaves zeros out), and stores a proto3 field outside a oneof
 * (nearly all of them) straight into its member; every other case goes
 * through put_*(). Repeated arrays grow as elements come (capacity 4,
 * then powers of two: rep_cap() derives it from the count, so nothing
 * more is stored), which leaves some slack behind protobuf-c's exact
 * arrays but reads the input once. Messages and arrays come from blocks
 * of the arena (obj_take()); strings, bytes and unknown fields take their
 * bytes from one block of len bytes (struct up's pool): each copy is at
 * most the bytes its field takes on the wire minus one (a string's NUL
 * fits in its tag's byte), and fields never overlap, so the block always
 * suffices. The check a string gets on the way (ASCII, eight bytes at a
 * time, else UTF-8) is what emd_codec's tree check needs, so that check
 * can be skipped for an event with no flag raised. */
#include "emd_unpack.h"

#include <errno.h>
#include <stdbool.h>
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
};

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
 * decoded Event takes about four times its wire size), later ones of
 * 4 KiB, so that a frame costs one or two calls into the arena and leaves
 * at most one partly used block behind. Larger objects get their own. */
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

static inline void *obj_take(struct up *u, size_t n)
{
  char *p = u->obj;

  n = (n + 7) & ~(size_t)7;
  if ((size_t)(u->obj_end - p) < n)
    return obj_slow(u, n);
  u->obj = p + n;
  return p;
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
/* Fields */

static int unpack_message(struct up *u, const ProtobufCMessageDescriptor *d,
                          const uint8_t *p, const uint8_t *end,
                          ProtobufCMessage **out);
static inline int put_message(struct up *u,
                              const ProtobufCFieldDescriptor *f, void *p,
                              const uint8_t *s, size_t n);

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
    if (cnt == NULL) {
      rc = put_message(u, f, member(m, f), s, n);
      if (rc == 0)
        mark(m, f);
      return rc;
    }
    rc = unpack_message(u, f->descriptor, s, end, &sub);
    if (rc != 0)
      return rc;
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

/* A proto3 field outside a oneof (and without a has_ flag, which protoc-c
 * never gives one): its value simply goes to its member, as most do. */
static inline bool is_plain(const ProtobufCFieldDescriptor *f)
{
  return f->label == PROTOBUF_C_LABEL_NONE &&
         (f->quantifier_offset | (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) == 0;
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

/* A sub-message s[0..n) for field f, whose member is at p: decoded, and
 * merged into an earlier copy there (parse_required_member). */
static inline int put_message(struct up *u,
                              const ProtobufCFieldDescriptor *f, void *p,
                              const uint8_t *s, size_t n)
{
  ProtobufCMessage *sub, *old;
  int rc;

  rc = unpack_message(u, f->descriptor, s, s + n, &sub);
  if (rc != 0)
    return rc;
  old = *(ProtobufCMessage **)p;
  if (old != NULL && old != f->default_value) {
    rc = merge(u, old, sub);
    if (rc != 0)
      return rc;
  }
  *(ProtobufCMessage **)p = sub;
  return 0;
}

static int unpack_message(struct up *u, const ProtobufCMessageDescriptor *d,
                          const uint8_t *p, const uint8_t *end,
                          ProtobufCMessage **out)
{
  const ProtobufCFieldDescriptor *f, *next = d->fields;
  const ProtobufCFieldDescriptor *fend = next + d->n_fields;
  bool track = !(u->opts & EMD_UNPACK_NO_REQUIRED);
  ProtobufCMessage *m;
  uint64_t seen_stack[2], *seen = seen_stack, v;
  const uint8_t *start;
  uint32_t tag;
  unsigned wt, hdr;
  size_t i, size;
  char *str;
  int rc;

  m = obj_take(u, d->sizeof_message);
  if (m == NULL)
    return -ENOMEM;
  if (d->message_init != NULL)
    d->message_init(m);
  else
    init_generic(d, m);
  if (track) {
    seen_stack[0] = seen_stack[1] = 0;
    if (d->n_fields > 128) {
      seen = emd_arena_calloc(u->arena, (d->n_fields + 63) / 64 * 8);
      if (seen == NULL)
        return -ENOMEM;
    }
  }
  while (p < end) {
    if (p[0] < 0x80) {
      if (p[0] < 8)
        return -EINVAL;            /* field number 0 */
      tag = p[0] >> 3;
      wt = p[0] & 7;
      p++;
    } else if (!tag_slow(&p, end, &tag, &wt)) {
      return -EINVAL;
    }
    /* fields come in their order, mostly, with gaps (proto3 leaves out
     * zeros): look a few past the last one first */
    while (next < fend && next->id < tag && next->id + 4 > tag)
      next++;
    if (next < fend && next->id == tag)
      f = next;
    else
      f = field_of(d, tag);
    if (f != NULL) {
      next = f + 1;
      if (track && f->label == PROTOBUF_C_LABEL_REQUIRED) {
        i = (size_t)(f - d->fields);
        seen[i / 64] |= (uint64_t)1 << (i % 64);
      }
    }
    start = p;
    switch (wt) {
    case WT_VARINT:
      if (p < end && p[0] < 0x80)
        v = *p++;
      else if (!varint_slow(&p, end, &v))
        return -EINVAL;
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
        return -EINVAL;
      p += i;
      if (f == NULL)
        rc = put_unknown(u, m, tag, wt, start, i);
      else
        rc = put_fixed(u, m, f, start, i);
      break;
    case WT_LEN:
      size = get_len(p, (size_t)(end - p), &hdr);
      if (size == 0)
        return -EINVAL;
      p += size;
      if (f == NULL) {
        rc = put_unknown(u, m, tag, wt, start, size);
      } else if (!is_plain(f)) {
        rc = put_len(u, m, f, start, hdr, p);
      } else if (f->type == PROTOBUF_C_TYPE_STRING) {
        str = copy_string(u, start + hdr, size - hdr);
        if (str == NULL)
          return -ENOMEM;
        *(char **)((char *)m + f->offset) = str;
        rc = 0;
      } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        rc = put_message(u, f, (char *)m + f->offset, start + hdr,
                         size - hdr);
      } else {
        rc = put_len(u, m, f, start, hdr, p);
      }
      break;
    default:
      return -EINVAL;
    }
    if (rc != 0)
      return rc;
  }
  if (track && !required_seen(d, seen))
    return -EINVAL;
  *out = m;
  return 0;
}

int emd_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
               size_t len, struct emd_arena *arena, unsigned opts,
               ProtobufCMessage **out, unsigned *saw)
{
  struct up u = { arena, NULL, NULL, NULL, NULL, 0, opts, 0 };
  int rc;

  *out = NULL;
  u.obj_block = len < (OBJ_BLOCK - 256) / 4 ? 4 * len + 256 : OBJ_BLOCK;
  if (len > 0) {
    u.pool = emd_arena_alloc(arena, len);
    if (u.pool == NULL)
      return -ENOMEM;
    u.pool_end = u.pool + len;
  } else {
    data = (const uint8_t *)"";   /* data may be NULL: no NULL + 0 */
  }
  rc = unpack_message(&u, desc, data, data + len, out);
  if (rc != 0)
    *out = NULL;
  if (saw != NULL)
    *saw = u.saw;
  return rc;
}
