/* emd_pack.c: see emd_pack.h.
 *
 * One walk, back to front: fields in reverse descriptor order, repeated
 * items in reverse, each value written just below the previous one, so
 * by the time a sub-message's tag and length prefix are due its bytes are
 * already there and its length is a subtraction. Nothing is sized twice
 * and no byte is moved.
 *
 * Room is checked only where the size is not bounded: a scalar field
 * never takes more than MAX_SCALAR bytes (a 5-byte tag and a 10-byte
 * varint), so each message first makes sure of MAX_SCALAR bytes for each
 * of its fields, and from then on only strings, bytes, repeated fields,
 * unknown fields and the return from a sub-message (which may have used
 * that reserve) check again, for their own bytes plus the reserve of the
 * fields still to come. A message that does not fit makes every level
 * return NULL, and emd_pack() starts over in a buffer twice the size. */
#include "emd_pack.h"
#include "emd_varint.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SCALAR 15   /* a tag (at most 5 bytes) and a 10-byte varint */
#define FIRST_CAP 4096  /* bytes of the first buffer */

/* protobuf-c's wire types, by field type (ProtobufCType order). */
static const uint8_t wire_type[] = {
  [PROTOBUF_C_TYPE_INT32] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_SINT32] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_SFIXED32] = PROTOBUF_C_WIRE_TYPE_32BIT,
  [PROTOBUF_C_TYPE_INT64] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_SINT64] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_SFIXED64] = PROTOBUF_C_WIRE_TYPE_64BIT,
  [PROTOBUF_C_TYPE_UINT32] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_FIXED32] = PROTOBUF_C_WIRE_TYPE_32BIT,
  [PROTOBUF_C_TYPE_UINT64] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_FIXED64] = PROTOBUF_C_WIRE_TYPE_64BIT,
  [PROTOBUF_C_TYPE_FLOAT] = PROTOBUF_C_WIRE_TYPE_32BIT,
  [PROTOBUF_C_TYPE_DOUBLE] = PROTOBUF_C_WIRE_TYPE_64BIT,
  [PROTOBUF_C_TYPE_BOOL] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_ENUM] = PROTOBUF_C_WIRE_TYPE_VARINT,
  [PROTOBUF_C_TYPE_STRING] = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
  [PROTOBUF_C_TYPE_BYTES] = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
  [PROTOBUF_C_TYPE_MESSAGE] = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
};

/* Bytes one element of a repeated field takes in its C array. */
static const uint8_t elt_size[] = {
  [PROTOBUF_C_TYPE_INT32] = 4,
  [PROTOBUF_C_TYPE_SINT32] = 4,
  [PROTOBUF_C_TYPE_SFIXED32] = 4,
  [PROTOBUF_C_TYPE_INT64] = 8,
  [PROTOBUF_C_TYPE_SINT64] = 8,
  [PROTOBUF_C_TYPE_SFIXED64] = 8,
  [PROTOBUF_C_TYPE_UINT32] = 4,
  [PROTOBUF_C_TYPE_FIXED32] = 4,
  [PROTOBUF_C_TYPE_UINT64] = 8,
  [PROTOBUF_C_TYPE_FIXED64] = 8,
  [PROTOBUF_C_TYPE_FLOAT] = 4,
  [PROTOBUF_C_TYPE_DOUBLE] = 8,
  [PROTOBUF_C_TYPE_BOOL] = sizeof(protobuf_c_boolean),
  [PROTOBUF_C_TYPE_ENUM] = 4,
  [PROTOBUF_C_TYPE_STRING] = sizeof(char *),
  [PROTOBUF_C_TYPE_BYTES] = sizeof(ProtobufCBinaryData),
  [PROTOBUF_C_TYPE_MESSAGE] = sizeof(ProtobufCMessage *),
};

#define MEMBER(type, base, off) \
  (*(const type *)(const void *)((const char *)(base) + (off)))

/* ------------------------------------------------------------------ */
/* writing backwards: each helper takes the lowest byte written so far
 * and returns the new lowest */

static inline uint8_t *prepend_tag(uint8_t *p, uint32_t id, unsigned wire)
{
  if (id < 16) {
    *--p = (uint8_t)(id << 3 | wire);
    return p;
  }
  return emd_varint_prepend(p, ((uint64_t)id << 3) | wire);
}

static inline uint8_t *prepend_le32(uint8_t *p, uint32_t v)
{
  p -= 4;
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
  return p;
}

static inline uint8_t *prepend_le64(uint8_t *p, uint64_t v)
{
  p = prepend_le32(p, (uint32_t)(v >> 32));
  return prepend_le32(p, (uint32_t)v);
}

static inline uint8_t *prepend_bytes(uint8_t *p, const void *data, size_t len)
{
  p -= len;
  if (len != 0)
    memcpy(p, data, len);
  return emd_varint_prepend(p, len);
}

static inline uint32_t load32(const void *p)
{
  uint32_t v;

  memcpy(&v, p, 4);   /* floats too: their bits, as protobuf-c sends them */
  return v;
}

static inline uint64_t load64(const void *p)
{
  uint64_t v;

  memcpy(&v, p, 8);
  return v;
}

static inline uint32_t zigzag32(int32_t v)
{
  return ((uint32_t)v << 1) ^ (uint32_t) - (int32_t)((uint32_t)v >> 31);
}

static inline uint64_t zigzag64(int64_t v)
{
  return ((uint64_t)v << 1) ^ (uint64_t) - (int64_t)((uint64_t)v >> 63);
}

/* int32 and enum go out as 64-bit two's complement: 10 bytes if < 0 */
static inline uint64_t int32_wire(int32_t v)
{
  return (uint64_t)(int64_t)v;
}

/* Whether [lo, p) holds n bytes plus the reserve of k more fields. */
static inline bool room(const uint8_t *lo, const uint8_t *p, size_t k,
                        size_t n)
{
  return (size_t)(p - lo) >= k * MAX_SCALAR + n;
}

/* ------------------------------------------------------------------ */
/* which fields go out: protobuf-c 1.4's rules
 *
 * A plain proto3 field (LABEL_NONE, outside any oneof) goes out unless it
 * is "zeroish": 0 (a float or double == 0, so -0.0 too but not NaN), a
 * NULL or empty string, bytes of len 0, a NULL message. That test is the
 * common case and sits inside enc_proto3(), case by case; every other
 * field goes through field_present(). */

static inline bool is_plain_proto3(const ProtobufCFieldDescriptor *f)
{
  return f->label == PROTOBUF_C_LABEL_NONE &&
         (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0;
}

static inline bool is_pointer_type(ProtobufCType type)
{
  return type == PROTOBUF_C_TYPE_MESSAGE || type == PROTOBUF_C_TYPE_STRING;
}

/* Whether a required, optional or oneof field goes out. */
static inline bool field_present(const ProtobufCFieldDescriptor *f,
                                 const ProtobufCMessage *m,
                                 const void *member)
{
  const void *ptr;

  if (f->label == PROTOBUF_C_LABEL_REQUIRED)
    return true;
  /* OPTIONAL, or a oneof member (OPTIONAL or NONE) */
  if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0) {
    if (MEMBER(uint32_t, m, f->quantifier_offset) != f->id)
      return false;
    if (!is_pointer_type(f->type))
      return true;   /* even when 0 */
  } else if (!is_pointer_type(f->type)) {
    return MEMBER(protobuf_c_boolean, m, f->quantifier_offset) != 0;
  }
  ptr = *(const void *const *)member;
  return ptr != NULL && ptr != f->default_value;
}

/* Packed runs are for scalars only; protobuf-c never marks others. */
static inline bool is_packed(const ProtobufCFieldDescriptor *f)
{
  return (f->flags & PROTOBUF_C_FIELD_FLAG_PACKED) != 0 &&
         wire_type[f->type] != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
}

/* ------------------------------------------------------------------ */
/* values; k is the number of fields of the enclosing message still to be
 * written after this one, whose reserve must survive */

static uint8_t *enc_msg(const ProtobufCMessage *m, const uint8_t *lo,
                        uint8_t *p);

/* A sub-message with its length prefix (no tag); NULL is empty. */
static inline uint8_t *enc_sub(const ProtobufCMessage *sub,
                               const uint8_t *lo, uint8_t *p, size_t k)
{
  uint8_t *end = p;

  if (sub != NULL)
    p = enc_msg(sub, lo, p);
  /* the prefix and tag, and the reserve sub may have used (a NULL item of
   * a repeated field too: many of them would eat the reserve) */
  if (p == NULL || !room(lo, p, k, MAX_SCALAR))
    return NULL;
  return emd_varint_prepend(p, (size_t)(end - p));
}

static inline uint8_t *enc_string(const char *s, const uint8_t *lo,
                                  uint8_t *p, size_t k)
{
  size_t len = s != NULL ? strlen(s) : 0;

  if (!room(lo, p, k, len + MAX_SCALAR))
    return NULL;
  return prepend_bytes(p, s, len);
}

static inline uint8_t *enc_binary(const ProtobufCBinaryData *b,
                                  const uint8_t *lo, uint8_t *p, size_t k)
{
  if (!room(lo, p, k, b->len + MAX_SCALAR))
    return NULL;
  return prepend_bytes(p, b->data, b->len);
}

/* One value without its tag. Scalars rely on the reserve. */
static uint8_t *enc_value(ProtobufCType type, const void *member,
                          const uint8_t *lo, uint8_t *p, size_t k)
{
  switch (type) {
  case PROTOBUF_C_TYPE_SINT32:
    return emd_varint_prepend(p, zigzag32(*(const int32_t *)member));
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
    return emd_varint_prepend(p, int32_wire(*(const int32_t *)member));
  case PROTOBUF_C_TYPE_UINT32:
    return emd_varint_prepend(p, *(const uint32_t *)member);
  case PROTOBUF_C_TYPE_SINT64:
    return emd_varint_prepend(p, zigzag64(*(const int64_t *)member));
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    return emd_varint_prepend(p, *(const uint64_t *)member);
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    return prepend_le32(p, load32(member));
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return prepend_le64(p, load64(member));
  case PROTOBUF_C_TYPE_BOOL:
    *--p = *(const protobuf_c_boolean *)member != 0;
    return p;
  case PROTOBUF_C_TYPE_STRING:
    return enc_string(*(const char *const *)member, lo, p, k);
  case PROTOBUF_C_TYPE_BYTES:
    return enc_binary(member, lo, p, k);
  case PROTOBUF_C_TYPE_MESSAGE:
    return enc_sub(*(const ProtobufCMessage *const *)member, lo, p, k);
  }
  return p;
}

/* A plain proto3 field, tag and value, or nothing when it is zeroish.
 * One switch does both the test and the writing. */
static inline uint8_t *enc_proto3(const ProtobufCFieldDescriptor *f,
                                  const void *member, const uint8_t *lo,
                                  uint8_t *p, size_t k)
{
  unsigned wire;

  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(const char *const *)member;

    if (s == NULL || s[0] == '\0')
      return p;
    p = enc_string(s, lo, p, k);
    wire = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;

    if (sub == NULL)
      return p;
    p = enc_sub(sub, lo, p, k);
    wire = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    break;
  }
  case PROTOBUF_C_TYPE_BYTES:
    /* protobuf-c tests the first word of the struct, which is len */
    if (((const ProtobufCBinaryData *)member)->len == 0)
      return p;
    p = enc_binary(member, lo, p, k);
    wire = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    break;
  case PROTOBUF_C_TYPE_BOOL:
    if (*(const protobuf_c_boolean *)member == 0)
      return p;
    *--p = 1;
    wire = PROTOBUF_C_WIRE_TYPE_VARINT;
    break;
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32: {
    int32_t v = *(const int32_t *)member;

    if (v == 0)
      return p;
    p = emd_varint_prepend(p, int32_wire(v));
    wire = PROTOBUF_C_WIRE_TYPE_VARINT;
    break;
  }
  case PROTOBUF_C_TYPE_SINT32: {
    int32_t v = *(const int32_t *)member;

    if (v == 0)
      return p;
    p = emd_varint_prepend(p, zigzag32(v));
    wire = PROTOBUF_C_WIRE_TYPE_VARINT;
    break;
  }
  case PROTOBUF_C_TYPE_UINT32: {
    uint32_t v = *(const uint32_t *)member;

    if (v == 0)
      return p;
    p = emd_varint_prepend(p, v);
    wire = PROTOBUF_C_WIRE_TYPE_VARINT;
    break;
  }
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32: {
    uint32_t v = *(const uint32_t *)member;

    if (v == 0)
      return p;
    p = prepend_le32(p, v);
    wire = PROTOBUF_C_WIRE_TYPE_32BIT;
    break;
  }
  case PROTOBUF_C_TYPE_FLOAT:
    if (*(const float *)member == 0)   /* -0.0 too, not NaN */
      return p;
    p = prepend_le32(p, load32(member));
    wire = PROTOBUF_C_WIRE_TYPE_32BIT;
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64: {
    uint64_t v = *(const uint64_t *)member;

    if (v == 0)
      return p;
    p = emd_varint_prepend(p, v);
    wire = PROTOBUF_C_WIRE_TYPE_VARINT;
    break;
  }
  case PROTOBUF_C_TYPE_SINT64: {
    int64_t v = *(const int64_t *)member;

    if (v == 0)
      return p;
    p = emd_varint_prepend(p, zigzag64(v));
    wire = PROTOBUF_C_WIRE_TYPE_VARINT;
    break;
  }
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64: {
    uint64_t v = *(const uint64_t *)member;

    if (v == 0)
      return p;
    p = prepend_le64(p, v);
    wire = PROTOBUF_C_WIRE_TYPE_64BIT;
    break;
  }
  case PROTOBUF_C_TYPE_DOUBLE:
    if (*(const double *)member == 0)
      return p;
    p = prepend_le64(p, load64(member));
    wire = PROTOBUF_C_WIRE_TYPE_64BIT;
    break;
  default:
    return p;
  }
  if (p == NULL)
    return NULL;
  return prepend_tag(p, f->id, wire);
}

/* The items of a packed run, last first. The caller checked the room. */
static uint8_t *enc_packed_items(ProtobufCType type, size_t count,
                                 const void *array, uint8_t *p)
{
  size_t i = count;

  switch (type) {
  case PROTOBUF_C_TYPE_SINT32:
    while (i-- > 0)
      p = emd_varint_prepend(p, zigzag32(((const int32_t *)array)[i]));
    return p;
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
    while (i-- > 0)
      p = emd_varint_prepend(p, int32_wire(((const int32_t *)array)[i]));
    return p;
  case PROTOBUF_C_TYPE_UINT32:
    while (i-- > 0)
      p = emd_varint_prepend(p, ((const uint32_t *)array)[i]);
    return p;
  case PROTOBUF_C_TYPE_SINT64:
    while (i-- > 0)
      p = emd_varint_prepend(p, zigzag64(((const int64_t *)array)[i]));
    return p;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    while (i-- > 0)
      p = emd_varint_prepend(p, ((const uint64_t *)array)[i]);
    return p;
  case PROTOBUF_C_TYPE_BOOL:
    while (i-- > 0)
      *--p = ((const protobuf_c_boolean *)array)[i] != 0;
    return p;
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    while (i-- > 0)
      p = prepend_le32(p, load32((const char *)array + 4 * i));
    return p;
  default:   /* sfixed64, fixed64, double */
    while (i-- > 0)
      p = prepend_le64(p, load64((const char *)array + 8 * i));
    return p;
  }
}

static uint8_t *enc_repeated(const ProtobufCFieldDescriptor *f, size_t count,
                             const void *array, const uint8_t *lo,
                             uint8_t *p, size_t k)
{
  unsigned wire = wire_type[f->type];
  size_t i = count, step = elt_size[f->type];
  uint8_t *end = p;

  if (is_packed(f)) {
    /* at most 10 bytes an item, then a length prefix and a tag */
    if (!room(lo, p, k, count * 10 + MAX_SCALAR))
      return NULL;
    p = enc_packed_items(f->type, count, array, p);
    p = emd_varint_prepend(p, (size_t)(end - p));
    return prepend_tag(p, f->id, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
  }
  /* strings, bytes and messages check for themselves */
  if (wire != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED &&
      !room(lo, p, k, count * MAX_SCALAR))
    return NULL;
  while (i-- > 0) {
    p = enc_value(f->type, (const char *)array + i * step, lo, p, k);
    if (p == NULL)
      return NULL;
    p = prepend_tag(p, f->id, wire);
  }
  return p;
}

/* Field f of m with its tag, or nothing; k fields of m still to come. */
static inline uint8_t *enc_field(const ProtobufCFieldDescriptor *f,
                                 const ProtobufCMessage *m,
                                 const uint8_t *lo, uint8_t *p, size_t k)
{
  const void *member = (const char *)m + f->offset;

  if (is_plain_proto3(f))
    return enc_proto3(f, member, lo, p, k);
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    size_t count = MEMBER(size_t, m, f->quantifier_offset);

    if (count == 0)
      return p;
    return enc_repeated(f, count, *(const void *const *)member, lo, p, k);
  }
  if (!field_present(f, m, member))
    return p;
  p = enc_value(f->type, member, lo, p, k);
  return p != NULL ? prepend_tag(p, f->id, wire_type[f->type]) : NULL;
}

static uint8_t *enc_msg(const ProtobufCMessage *m, const uint8_t *lo,
                        uint8_t *p)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const ProtobufCFieldDescriptor *f;
  size_t n = d->n_fields, i = m->n_unknown_fields;

  /* unknown fields come last, so they are written first */
  while (i-- > 0) {
    const ProtobufCMessageUnknownField *u = &m->unknown_fields[i];

    if (!room(lo, p, n, u->len + MAX_SCALAR))
      return NULL;
    p -= u->len;
    if (u->len != 0)
      memcpy(p, u->data, u->len);
    p = prepend_tag(p, u->tag, u->wire_type);
  }
  if (!room(lo, p, n, 0))
    return NULL;
  if (n == 0)
    return p;
  /* field i written, fields 0 .. i - 1 still to come: i keeps the reserve */
  for (i = n, f = d->fields + n; i-- > 0;) {
    f--;
    p = enc_field(f, m, lo, p, i);
    if (p == NULL)
      return NULL;
  }
  return p;
}

/* ------------------------------------------------------------------ */

int emd_pack(const ProtobufCMessage *m, struct emd_pack_buf *b,
             const uint8_t **out, size_t *len)
{
  uint8_t *end, *p;

  for (;;) {
    if (b->buf != NULL) {
      end = b->buf + b->cap;
      p = enc_msg(m, b->buf, end);
      if (p != NULL) {
        *out = p;
        *len = (size_t)(end - p);
        return 0;
      }
    }
    /* too small (or none yet): start over in one twice the size */
    if (emd_pack_buf_grow(b) != 0)
      return -ENOMEM;
  }
}

int emd_pack_buf_grow(struct emd_pack_buf *b)
{
  size_t cap = b->cap < FIRST_CAP / 2 ? FIRST_CAP : b->cap * 2;

  free(b->buf);
  b->buf = malloc(cap);
  b->cap = b->buf != NULL ? cap : 0;
  return b->buf != NULL ? 0 : -ENOMEM;
}

void emd_pack_buf_free(struct emd_pack_buf *b)
{
  free(b->buf);
  b->buf = NULL;
  b->cap = 0;
}
