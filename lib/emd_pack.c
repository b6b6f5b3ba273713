/* emd_pack.c: see emd_pack.h.
 *
 * Two walks over the same fields with the same presence rules: size_msg()
 * appends a length to the cache for every sub-message (and every packed
 * run) it enters, before its children, and write_msg() consumes them in
 * that same order. The two must skip and visit exactly the same fields,
 * which is why both go through field_present() and value kinds shared
 * here. */
#include "emd_pack.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

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
/* varints */

static inline size_t varint_size(uint64_t v)
{
  /* 1 + floor(bit length / 7), from the index of the top bit */
  return ((unsigned)(63 - __builtin_clzll(v | 1)) * 9 + 73) / 64;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v)
{
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p++ = (uint8_t)v;
  return p;
}

static inline uint32_t zigzag32(int32_t v)
{
  return ((uint32_t)v << 1) ^ (uint32_t)-(int32_t)((uint32_t)v >> 31);
}

static inline uint64_t zigzag64(int64_t v)
{
  return ((uint64_t)v << 1) ^ (uint64_t)-(int64_t)((uint64_t)v >> 63);
}

/* int32 and enum go out as 64-bit two's complement: 10 bytes if < 0 */
static inline uint64_t int32_wire(int32_t v)
{
  return (uint64_t)(int64_t)v;
}

static inline size_t tag_size(uint32_t id)
{
  return varint_size((uint64_t)id << 3);
}

static inline uint8_t *put_tag(uint8_t *p, uint32_t id, unsigned wire)
{
  return put_varint(p, ((uint64_t)id << 3) | wire);
}

static inline uint8_t *put_le32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
  return p + 4;
}

static inline uint8_t *put_le64(uint8_t *p, uint64_t v)
{
  put_le32(p, (uint32_t)v);
  return put_le32(p + 4, (uint32_t)(v >> 32));
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

/* ------------------------------------------------------------------ */
/* which fields go out: protobuf-c 1.4's rules, in one place */

static bool is_zeroish(ProtobufCType type, const void *member)
{
  switch (type) {
  case PROTOBUF_C_TYPE_BOOL:
    return *(const protobuf_c_boolean *)member == 0;
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
    return *(const uint32_t *)member == 0;
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
    return *(const uint64_t *)member == 0;
  case PROTOBUF_C_TYPE_FLOAT:
    return *(const float *)member == 0;    /* -0.0 too, not NaN */
  case PROTOBUF_C_TYPE_DOUBLE:
    return *(const double *)member == 0;
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(const char *const *)member;
    return s == NULL || s[0] == '\0';
  }
  case PROTOBUF_C_TYPE_BYTES:
    /* protobuf-c reads the first word, which is len */
    return ((const ProtobufCBinaryData *)member)->len == 0;
  case PROTOBUF_C_TYPE_MESSAGE:
    return *(const void *const *)member == NULL;
  }
  return true;
}

static inline bool is_pointer_type(ProtobufCType type)
{
  return type == PROTOBUF_C_TYPE_MESSAGE || type == PROTOBUF_C_TYPE_STRING;
}

/* Whether a field that is not repeated goes out. */
static inline bool field_present(const ProtobufCFieldDescriptor *f,
                                 const ProtobufCMessage *m,
                                 const void *member)
{
  const void *ptr;

  if (f->label == PROTOBUF_C_LABEL_NONE &&
      (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0)
    return !is_zeroish(f->type, member);
  if (f->label == PROTOBUF_C_LABEL_REQUIRED)
    return true;
  /* OPTIONAL, or a oneof member (OPTIONAL or NONE) */
  if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0) {
    if (MEMBER(uint32_t, m, f->quantifier_offset) != f->id)
      return false;
    if (!is_pointer_type(f->type))
      return true;
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
/* sizing */

static size_t size_msg(const ProtobufCMessage *m, struct emd_pack_sizes *c);

/* A new cache entry, filled in later by set_entry(); counts past cap
 * without storing, so emd_pack_size() learns how much to grow. */
static inline size_t new_entry(struct emd_pack_sizes *c)
{
  return c->n++;
}

static inline void set_entry(struct emd_pack_sizes *c, size_t i, size_t v)
{
  if (i < c->cap)
    c->len[i] = v;
}

/* Size of one value without its tag. */
static size_t value_size(ProtobufCType type, const void *member,
                         struct emd_pack_sizes *c)
{
  switch (type) {
  case PROTOBUF_C_TYPE_SINT32:
    return varint_size(zigzag32(*(const int32_t *)member));
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
    return varint_size(int32_wire(*(const int32_t *)member));
  case PROTOBUF_C_TYPE_UINT32:
    return varint_size(*(const uint32_t *)member);
  case PROTOBUF_C_TYPE_SINT64:
    return varint_size(zigzag64(*(const int64_t *)member));
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    return varint_size(*(const uint64_t *)member);
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    return 4;
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return 8;
  case PROTOBUF_C_TYPE_BOOL:
    return 1;
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(const char *const *)member;
    size_t len = s != NULL ? strlen(s) : 0;
    return varint_size(len) + len;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    size_t len = ((const ProtobufCBinaryData *)member)->len;
    return varint_size(len) + len;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;
    size_t i, len;

    if (sub == NULL)   /* written as an empty message, no entry */
      return 1;
    i = new_entry(c);
    len = size_msg(sub, c);
    set_entry(c, i, len);
    return varint_size(len) + len;
  }
  }
  return 0;
}

static size_t packed_payload_size(ProtobufCType type, size_t count,
                                  const void *array)
{
  size_t i, rv = 0;

  switch (type) {
  case PROTOBUF_C_TYPE_SINT32:
    for (i = 0; i < count; i++)
      rv += varint_size(zigzag32(((const int32_t *)array)[i]));
    return rv;
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
    for (i = 0; i < count; i++)
      rv += varint_size(int32_wire(((const int32_t *)array)[i]));
    return rv;
  case PROTOBUF_C_TYPE_UINT32:
    for (i = 0; i < count; i++)
      rv += varint_size(((const uint32_t *)array)[i]);
    return rv;
  case PROTOBUF_C_TYPE_SINT64:
    for (i = 0; i < count; i++)
      rv += varint_size(zigzag64(((const int64_t *)array)[i]));
    return rv;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    for (i = 0; i < count; i++)
      rv += varint_size(((const uint64_t *)array)[i]);
    return rv;
  case PROTOBUF_C_TYPE_BOOL:
    return count;
  default:
    return count * elt_size[type];   /* fixed32/64, float, double */
  }
}

static size_t size_repeated(const ProtobufCFieldDescriptor *f, size_t count,
                            const void *array, struct emd_pack_sizes *c)
{
  size_t i, rv, step;

  if (is_packed(f)) {
    size_t entry = new_entry(c);
    size_t payload = packed_payload_size(f->type, count, array);

    set_entry(c, entry, payload);
    return tag_size(f->id) + varint_size(payload) + payload;
  }
  rv = tag_size(f->id) * count;
  step = elt_size[f->type];
  for (i = 0; i < count; i++)
    rv += value_size(f->type, (const char *)array + i * step, c);
  return rv;
}

static size_t size_msg(const ProtobufCMessage *m, struct emd_pack_sizes *c)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const ProtobufCFieldDescriptor *f = d->fields, *end = f + d->n_fields;
  size_t i, rv = 0;

  for (; f < end; f++) {
    const void *member = (const char *)m + f->offset;

    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t count = MEMBER(size_t, m, f->quantifier_offset);

      if (count != 0)
        rv += size_repeated(f, count, *(const void *const *)member, c);
    } else if (field_present(f, m, member)) {
      rv += tag_size(f->id) + value_size(f->type, member, c);
    }
  }
  for (i = 0; i < m->n_unknown_fields; i++)
    rv += tag_size(m->unknown_fields[i].tag) + m->unknown_fields[i].len;
  return rv;
}

int emd_pack_size(const ProtobufCMessage *m, struct emd_pack_sizes *c,
                  size_t *len)
{
  size_t rv, cap;
  size_t *grown;

  for (;;) {
    c->n = 0;
    rv = size_msg(m, c);
    if (c->n <= c->cap)
      break;
    /* more entries than room: grow to fit them all, and size again */
    cap = c->cap * 2 > c->n ? c->cap * 2 : c->n;
    cap = cap < 32 ? 32 : cap;
    grown = realloc(c->len, cap * sizeof(*c->len));
    if (grown == NULL) {
      c->n = 0;
      return -ENOMEM;
    }
    c->len = grown;
    c->cap = cap;
  }
  *len = rv;
  return 0;
}

/* ------------------------------------------------------------------ */
/* writing */

static uint8_t *write_msg(const ProtobufCMessage *m, const size_t **next,
                          uint8_t *p);

/* Writes one value without its tag. */
static uint8_t *write_value(ProtobufCType type, const void *member,
                            const size_t **next, uint8_t *p)
{
  switch (type) {
  case PROTOBUF_C_TYPE_SINT32:
    return put_varint(p, zigzag32(*(const int32_t *)member));
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
    return put_varint(p, int32_wire(*(const int32_t *)member));
  case PROTOBUF_C_TYPE_UINT32:
    return put_varint(p, *(const uint32_t *)member);
  case PROTOBUF_C_TYPE_SINT64:
    return put_varint(p, zigzag64(*(const int64_t *)member));
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    return put_varint(p, *(const uint64_t *)member);
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    return put_le32(p, load32(member));
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return put_le64(p, load64(member));
  case PROTOBUF_C_TYPE_BOOL:
    *p = *(const protobuf_c_boolean *)member != 0;
    return p + 1;
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(const char *const *)member;
    size_t len = s != NULL ? strlen(s) : 0;

    p = put_varint(p, len);
    if (len != 0)
      memcpy(p, s, len);
    return p + len;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *b = member;

    p = put_varint(p, b->len);
    if (b->len != 0)
      memcpy(p, b->data, b->len);
    return p + b->len;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)member;

    if (sub == NULL) {
      *p = 0;
      return p + 1;
    }
    p = put_varint(p, *(*next)++);
    return write_msg(sub, next, p);
  }
  }
  return p;
}

static uint8_t *write_packed(ProtobufCType type, size_t count,
                             const void *array, uint8_t *p)
{
  size_t i;

  switch (type) {
  case PROTOBUF_C_TYPE_SINT32:
    for (i = 0; i < count; i++)
      p = put_varint(p, zigzag32(((const int32_t *)array)[i]));
    return p;
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_INT32:
    for (i = 0; i < count; i++)
      p = put_varint(p, int32_wire(((const int32_t *)array)[i]));
    return p;
  case PROTOBUF_C_TYPE_UINT32:
    for (i = 0; i < count; i++)
      p = put_varint(p, ((const uint32_t *)array)[i]);
    return p;
  case PROTOBUF_C_TYPE_SINT64:
    for (i = 0; i < count; i++)
      p = put_varint(p, zigzag64(((const int64_t *)array)[i]));
    return p;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    for (i = 0; i < count; i++)
      p = put_varint(p, ((const uint64_t *)array)[i]);
    return p;
  case PROTOBUF_C_TYPE_BOOL:
    for (i = 0; i < count; i++)
      *p++ = ((const protobuf_c_boolean *)array)[i] != 0;
    return p;
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    for (i = 0; i < count; i++)
      p = put_le32(p, load32((const char *)array + 4 * i));
    return p;
  default:   /* sfixed64, fixed64, double */
    for (i = 0; i < count; i++)
      p = put_le64(p, load64((const char *)array + 8 * i));
    return p;
  }
}

static uint8_t *write_repeated(const ProtobufCFieldDescriptor *f,
                               size_t count, const void *array,
                               const size_t **next, uint8_t *p)
{
  unsigned wire = wire_type[f->type];
  size_t i, step;

  if (is_packed(f)) {
    p = put_tag(p, f->id, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
    p = put_varint(p, *(*next)++);
    return write_packed(f->type, count, array, p);
  }
  step = elt_size[f->type];
  for (i = 0; i < count; i++) {
    p = put_tag(p, f->id, wire);
    p = write_value(f->type, (const char *)array + i * step, next, p);
  }
  return p;
}

static uint8_t *write_msg(const ProtobufCMessage *m, const size_t **next,
                          uint8_t *p)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const ProtobufCFieldDescriptor *f = d->fields, *end = f + d->n_fields;
  size_t i;

  for (; f < end; f++) {
    const void *member = (const char *)m + f->offset;

    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t count = MEMBER(size_t, m, f->quantifier_offset);

      if (count != 0)
        p = write_repeated(f, count, *(const void *const *)member, next, p);
    } else if (field_present(f, m, member)) {
      p = put_tag(p, f->id, wire_type[f->type]);
      p = write_value(f->type, member, next, p);
    }
  }
  for (i = 0; i < m->n_unknown_fields; i++) {
    const ProtobufCMessageUnknownField *u = &m->unknown_fields[i];

    p = put_tag(p, u->tag, u->wire_type);
    if (u->len != 0)
      memcpy(p, u->data, u->len);
    p += u->len;
  }
  return p;
}

size_t emd_pack_write(const ProtobufCMessage *m,
                      const struct emd_pack_sizes *c, uint8_t *out)
{
  const size_t *next = c->len;

  return (size_t)(write_msg(m, &next, out) - out);
}

void emd_pack_sizes_free(struct emd_pack_sizes *c)
{
  free(c->len);
  c->len = NULL;
  c->n = 0;
  c->cap = 0;
}
