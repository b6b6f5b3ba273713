/* test_unpack.c: lib/emd_unpack.c against protobuf_c_message_unpack(),
 * input for input: the same success or failure and, on success, the same
 * bytes when both results are packed by protobuf-c and the same structure
 * field by field (has_ flags, oneof cases, which strings still point at
 * their default, unknown fields with their bytes). The inputs: a fully
 * populated Event, random Events, emitd's own records and a hand-made
 * descriptor with every type, label, packed run and oneof, packed by
 * protobuf-c; wire made up field by field from the descriptors (unknown
 * and repeated fields, wrong wire types, packed and unpacked runs, long
 * and overlong varints, tags and length prefixes); and all of those cut,
 * bit-flipped, spliced, doubled and concatenated (which merges). Then the
 * quirks one by one, each with the value protobuf-c gives. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emd_arena.h"
#include "emd_event.h"
#include "emd_unpack.h"
#include "pb_events.h"
#include "utf8_ref.h"

/* Fewer rounds under the sanitizers, which are about ten times slower. */
#if defined(__SANITIZE_ADDRESS__)
#define ROUNDS(n) ((n) / 8)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ROUNDS(n) ((n) / 8)
#endif
#endif
#ifndef ROUNDS
#define ROUNDS(n) (n)
#endif

/* ------------------------------------------------------------------ */
/* a fully populated Event (every field of every message) */

/* full_event: pb_events.h */

/* ------------------------------------------------------------------ */
/* random values */

/* rnd_event and its generator: pb_events.h */
/* ------------------------------------------------------------------ */
/* a hand-made descriptor: every type under every label, packed runs,
 * oneofs (proto3 and proto2 style), defaults, long field numbers */

#define SCALARS(X)                                                      \
  X(1, INT32, int32_t, i32)                                             \
  X(2, SINT32, int32_t, s32)                                            \
  X(3, SFIXED32, int32_t, sf32)                                         \
  X(4, INT64, int64_t, i64)                                             \
  X(5, SINT64, int64_t, s64)                                            \
  X(6, SFIXED64, int64_t, sf64)                                         \
  X(7, UINT32, uint32_t, u32)                                           \
  X(8, FIXED32, uint32_t, f32)                                          \
  X(9, UINT64, uint64_t, u64)                                           \
  X(10, FIXED64, uint64_t, f64)                                         \
  X(11, FLOAT, float, fl)                                               \
  X(12, DOUBLE, double, db)                                             \
  X(13, BOOL, protobuf_c_boolean, b)                                    \
  X(14, ENUM, int, en)


typedef struct kitchen kitchen;
struct kitchen {
  ProtobufCMessage base;
  /* proto3 singular (LABEL_NONE), ids 1..17 */
#define X(i, T, ct, nm) ct nm;
  SCALARS(X)
#undef X
  char *str;
  ProtobufCBinaryData by;
  kitchen *child;
  /* proto2 optional, ids 21..37 */
#define X(i, T, ct, nm) protobuf_c_boolean has_o_##nm; ct o_##nm;
  SCALARS(X)
#undef X
  char *o_str;
  protobuf_c_boolean has_o_by;
  ProtobufCBinaryData o_by;
  kitchen *o_msg;
  /* proto2 required, ids 41..43; only r_i32 and r_by are checked */
  int32_t r_i32;
  char *r_str;
  ProtobufCBinaryData r_by;
  /* repeated, ids 61..77 */
#define X(i, T, ct, nm) size_t n_rep_##nm; ct *rep_##nm;
  SCALARS(X)
#undef X
  size_t n_rep_str;
  char **rep_str;
  size_t n_rep_by;
  ProtobufCBinaryData *rep_by;
  size_t n_rep_msg;
  kitchen **rep_msg;
  /* repeated, packed, ids 81..94 */
#define X(i, T, ct, nm) size_t n_pk_##nm; ct *pk_##nm;
  SCALARS(X)
#undef X
  /* a proto3 oneof, ids 100..104 */
  uint32_t pick_case;
  union {
    int32_t p_i32;
    char *p_str;
    kitchen *p_msg;
    ProtobufCBinaryData p_by;
    double p_db;
  };
  /* a proto2 oneof, ids 110..111 */
  uint32_t alt_case;
  union {
    uint64_t a_u64;
    char *a_str;
  };
  /* proto3 singular with long tags */
  uint32_t t2047, t2048, t262143, t262144, t33554431, t33554432;
  char *tmax;   /* id 536870911 */
};

static const char kitchen_dflt[] = "dflt";
static const int32_t kitchen_dflt_i32 = 7;
static const ProtobufCBinaryData kitchen_dflt_by = { 3, (uint8_t *)"abc" };
static ProtobufCMessageDescriptor kitchen_descriptor;

#define F(name, id, label, type, q, off, desc, dflt, flags)             \
  { name, id, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type, q,      \
    offsetof(kitchen, off), desc, dflt, flags, 0, NULL, NULL }
#define Q(m) offsetof(kitchen, m)
#define ONEOF PROTOBUF_C_FIELD_FLAG_ONEOF
#define KITCHEN_FIELDS 82

static const ProtobufCFieldDescriptor kitchen_f[KITCHEN_FIELDS] = {
#define X(i, T, ct, nm) F(#nm, i, NONE, T, 0, nm, NULL, NULL, 0),
  SCALARS(X)
#undef X
  F("str", 15, NONE, STRING, 0, str, NULL, NULL, 0),
  F("by", 16, NONE, BYTES, 0, by, NULL, NULL, 0),
  F("child", 17, NONE, MESSAGE, 0, child, &kitchen_descriptor, NULL, 0),
#define X(i, T, ct, nm)                                                 \
  F("o_" #nm, 20 + i, OPTIONAL, T, Q(has_o_##nm), o_##nm, NULL,        \
    i == 1 ? (const void *)&kitchen_dflt_i32 : NULL, 0),
  SCALARS(X)
#undef X
  F("o_str", 35, OPTIONAL, STRING, 0, o_str, NULL, kitchen_dflt, 0),
  F("o_by", 36, OPTIONAL, BYTES, Q(has_o_by), o_by, NULL, &kitchen_dflt_by,
    0),
  F("o_msg", 37, OPTIONAL, MESSAGE, 0, o_msg, &kitchen_descriptor, NULL, 0),
  F("r_i32", 41, REQUIRED, INT32, 0, r_i32, NULL, NULL, 0),
  F("r_str", 42, REQUIRED, STRING, 0, r_str, NULL, kitchen_dflt, 0),
  F("r_by", 43, REQUIRED, BYTES, 0, r_by, NULL, NULL, 0),
#define X(i, T, ct, nm) F("rep_" #nm, 60 + i, REPEATED, T, Q(n_rep_##nm), \
                        rep_##nm, NULL, NULL, 0),
  SCALARS(X)
#undef X
  F("rep_str", 75, REPEATED, STRING, Q(n_rep_str), rep_str, NULL, NULL, 0),
  F("rep_by", 76, REPEATED, BYTES, Q(n_rep_by), rep_by, NULL, NULL, 0),
  F("rep_msg", 77, REPEATED, MESSAGE, Q(n_rep_msg), rep_msg,
    &kitchen_descriptor, NULL, 0),
#define X(i, T, ct, nm) F("pk_" #nm, 80 + i, REPEATED, T, Q(n_pk_##nm),  \
                        pk_##nm, NULL, NULL,                          \
                        PROTOBUF_C_FIELD_FLAG_PACKED),
  SCALARS(X)
#undef X
  F("p_i32", 100, NONE, INT32, Q(pick_case), p_i32, NULL, NULL, ONEOF),
  F("p_str", 101, NONE, STRING, Q(pick_case), p_str, NULL, NULL, ONEOF),
  F("p_msg", 102, NONE, MESSAGE, Q(pick_case), p_msg, &kitchen_descriptor,
    NULL, ONEOF),
  F("p_by", 103, NONE, BYTES, Q(pick_case), p_by, NULL, NULL, ONEOF),
  F("p_db", 104, NONE, DOUBLE, Q(pick_case), p_db, NULL, NULL, ONEOF),
  F("a_u64", 110, OPTIONAL, UINT64, Q(alt_case), a_u64, NULL, NULL, ONEOF),
  F("a_str", 111, OPTIONAL, STRING, Q(alt_case), a_str, NULL, NULL, ONEOF),
  F("t2047", 2047, NONE, UINT32, 0, t2047, NULL, NULL, 0),
  F("t2048", 2048, NONE, UINT32, 0, t2048, NULL, NULL, 0),
  F("t262143", 262143, NONE, UINT32, 0, t262143, NULL, NULL, 0),
  F("t262144", 262144, NONE, UINT32, 0, t262144, NULL, NULL, 0),
  F("t33554431", 33554431, NONE, UINT32, 0, t33554431, NULL, NULL, 0),
  F("t33554432", 33554432, NONE, UINT32, 0, t33554432, NULL, NULL, 0),
  F("tmax", 536870911, NONE, STRING, 0, tmax, NULL, NULL, 0),
};

/* One range per run of consecutive numbers, and the end. */
static ProtobufCIntRange kitchen_ranges[KITCHEN_FIELDS + 1];

static void kitchen_init(ProtobufCMessage *m)
{
  kitchen *k = (kitchen *)m;

  memset(k, 0, sizeof(*k));
  k->base.descriptor = &kitchen_descriptor;
  k->o_i32 = kitchen_dflt_i32;
  k->o_str = (char *)kitchen_dflt;
  k->o_by = kitchen_dflt_by;
  k->r_str = (char *)kitchen_dflt;
}

/* Fills in the descriptor; with_init false leaves message_init NULL, for
 * both unpackers' generic initialisation (defaults from the fields). */
static void kitchen_setup(bool with_init)
{
  const ProtobufCFieldDescriptor *f = kitchen_f;
  unsigned i, n = 0;

  assert_string_equal(f[KITCHEN_FIELDS - 1].name, "tmax");
  for (i = 0; i < KITCHEN_FIELDS; i++) {
    if (i == 0 || f[i].id != f[i - 1].id + 1) {
      kitchen_ranges[n].start_value = (int)f[i].id;
      kitchen_ranges[n].orig_index = i;
      n++;
    }
  }
  kitchen_ranges[n].start_value = 0;
  kitchen_ranges[n].orig_index = KITCHEN_FIELDS;
  kitchen_descriptor = (ProtobufCMessageDescriptor){
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "test.Kitchen", "Kitchen",
    "Kitchen", "test", sizeof(kitchen), KITCHEN_FIELDS, kitchen_f,
    NULL, n, kitchen_ranges, with_init ? kitchen_init : NULL, NULL, NULL,
    NULL,
  };
}

static kitchen *new_kitchen(struct emd_arena *a)
{
  kitchen *k = emd_arena_alloc(a, sizeof(*k));

  assert_non_null(k);
  kitchen_init(&k->base);
  return k;
}

/* ------------------------------------------------------------------ */
/* hand-made descriptors for the plans: every kind a plan reads by its
 * one-byte tag (numbers 1 to 15: strings, bytes, messages, a repeated
 * message, bool, zigzag and fixed scalars), fields among them that it
 * leaves to the descriptor (proto2 optional, repeated and packable
 * fields; oneofs in odd, where merges fail), a gap, a sub-message type
 * with required fields, and numbers past 15 (a sparse range) */

typedef struct sparse sparse;
struct sparse {
  ProtobufCMessage base;
  char *str;                       /* 1 */
  ProtobufCBinaryData by;          /* 2 */
  sparse *child;                   /* 3 */
  kitchen *k;                      /* 4: required fields */
  size_t n_kids;                   /* 5 */
  sparse **kids;
  protobuf_c_boolean b;            /* 6 */
  int32_t s32;                     /* 7 */
  int64_t s64;                     /* 8 */
  protobuf_c_boolean has_o_u64;    /* 9: proto2 optional */
  uint64_t o_u64;
  char *o_str;                     /* 10: proto2 optional, a default */
  size_t n_rep_by;                 /* 11 */
  ProtobufCBinaryData *rep_by;
  double db;                       /* 13 (no 12) */
  float fl;                        /* 14 */
  size_t n_rep_u32;                /* 15 */
  uint32_t *rep_u32;
  char *t16;                       /* 16 */
  size_t n_rep_str;                /* 17 */
  char **rep_str;
  sparse *t2048;                   /* 2048 */
};

static const ProtobufCMessageDescriptor sparse_descriptor;

#define S(name, id, label, type, q, off, desc, dflt, flags)             \
  { name, id, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type, q,      \
    offsetof(sparse, off), desc, dflt, flags, 0, NULL, NULL }
#define SQ(m) offsetof(sparse, m)
#define SPARSE_FIELDS 17

static const ProtobufCFieldDescriptor sparse_f[SPARSE_FIELDS] = {
  S("str", 1, NONE, STRING, 0, str, NULL, &protobuf_c_empty_string, 0),
  S("by", 2, NONE, BYTES, 0, by, NULL, NULL, 0),
  S("child", 3, NONE, MESSAGE, 0, child, &sparse_descriptor, NULL, 0),
  S("k", 4, NONE, MESSAGE, 0, k, &kitchen_descriptor, NULL, 0),
  S("kids", 5, REPEATED, MESSAGE, SQ(n_kids), kids, &sparse_descriptor,
    NULL, 0),
  S("b", 6, NONE, BOOL, 0, b, NULL, NULL, 0),
  S("s32", 7, NONE, SINT32, 0, s32, NULL, NULL, 0),
  S("s64", 8, NONE, SINT64, 0, s64, NULL, NULL, 0),
  S("o_u64", 9, OPTIONAL, UINT64, SQ(has_o_u64), o_u64, NULL, NULL, 0),
  S("o_str", 10, OPTIONAL, STRING, 0, o_str, NULL, kitchen_dflt, 0),
  S("rep_by", 11, REPEATED, BYTES, SQ(n_rep_by), rep_by, NULL, NULL, 0),
  S("db", 13, NONE, DOUBLE, 0, db, NULL, NULL, 0),
  S("fl", 14, NONE, FLOAT, 0, fl, NULL, NULL, 0),
  S("rep_u32", 15, REPEATED, UINT32, SQ(n_rep_u32), rep_u32, NULL, NULL, 0),
  S("t16", 16, NONE, STRING, 0, t16, NULL, &protobuf_c_empty_string, 0),
  S("rep_str", 17, REPEATED, STRING, SQ(n_rep_str), rep_str, NULL, NULL, 0),
  S("t2048", 2048, NONE, MESSAGE, 0, t2048, &sparse_descriptor, NULL, 0),
};

static const ProtobufCIntRange sparse_ranges[] = {
  { 1, 0 }, { 13, 11 }, { 2048, 16 }, { 0, SPARSE_FIELDS },
};

/* no message_init: defaults from the fields */
static const ProtobufCMessageDescriptor sparse_descriptor = {
  PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "test.Sparse", "Sparse", "Sparse",
  "test", sizeof(sparse), SPARSE_FIELDS, sparse_f, NULL, 3, sparse_ranges,
  NULL, NULL, NULL, NULL,
};

/* A repeated message marked packed (protobuf-c reads a length-delimited
 * one as a packed run, and fails), a plain string and a oneof. */
typedef struct odd odd;
struct odd {
  ProtobufCMessage base;
  size_t n_pk;                     /* 1 */
  odd **pk;
  char *str;                       /* 2 */
  uint32_t pick_case;              /* 3, 4 */
  union {
    int32_t p_i32;
    odd *p_msg;
  };
};

static const ProtobufCMessageDescriptor odd_descriptor;

#define O(name, id, label, type, q, off, desc, flags)                   \
  { name, id, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type, q,      \
    offsetof(odd, off), desc, NULL, flags, 0, NULL, NULL }

static const ProtobufCFieldDescriptor odd_f[4] = {
  O("pk", 1, REPEATED, MESSAGE, offsetof(odd, n_pk), pk, &odd_descriptor,
    PROTOBUF_C_FIELD_FLAG_PACKED),
  O("str", 2, NONE, STRING, 0, str, NULL, 0),
  O("p_i32", 3, NONE, INT32, offsetof(odd, pick_case), p_i32, NULL, ONEOF),
  O("p_msg", 4, NONE, MESSAGE, offsetof(odd, pick_case), p_msg,
    &odd_descriptor, ONEOF),
};

static const ProtobufCIntRange odd_ranges[] = { { 1, 0 }, { 0, 4 } };

static const ProtobufCMessageDescriptor odd_descriptor = {
  PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "test.Odd", "Odd", "Odd", "test",
  sizeof(odd), 4, odd_f, NULL, 1, odd_ranges, NULL, NULL, NULL, NULL,
};

static void rnd_scalar(struct rng *r, ProtobufCType type, void *p)
{
  uint64_t v = chance(r, 3) ? 0 : rnd64(r);
  double d;
  float f;

  switch (type) {
  case PROTOBUF_C_TYPE_FLOAT:
    f = (float)rnd_double(r);
    memcpy(p, &f, sizeof(f));
    return;
  case PROTOBUF_C_TYPE_DOUBLE:
    d = rnd_double(r);
    memcpy(p, &d, sizeof(d));
    return;
  case PROTOBUF_C_TYPE_BOOL:
    /* protobuf-c sends any non-zero as 1 */
    *(protobuf_c_boolean *)p = (protobuf_c_boolean)(rnd(r) % 4) - 1;
    return;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    memcpy(p, &v, 8);
    return;
  default: {
    uint32_t w = (uint32_t)v;
    memcpy(p, &w, 4);
    return;
  }
  }
}

static kitchen *rnd_kitchen(struct rng *r, struct emd_arena *a, int depth);

static kitchen *rnd_sub(struct rng *r, struct emd_arena *a, int depth)
{
  if (depth >= 3 || chance(r, 2))
    return NULL;
  return rnd_kitchen(r, a, depth + 1);
}

/* n random elements of type into a fresh array; none NULL (protobuf-c's
 * sizing cannot take a NULL string or message in a repeated field). */
static void *rnd_array(struct rng *r, struct emd_arena *a, ProtobufCType type,
                       size_t n, int depth)
{
  static const size_t elt[] = {
    [PROTOBUF_C_TYPE_INT32] = 4, [PROTOBUF_C_TYPE_SINT32] = 4,
    [PROTOBUF_C_TYPE_SFIXED32] = 4, [PROTOBUF_C_TYPE_INT64] = 8,
    [PROTOBUF_C_TYPE_SINT64] = 8, [PROTOBUF_C_TYPE_SFIXED64] = 8,
    [PROTOBUF_C_TYPE_UINT32] = 4, [PROTOBUF_C_TYPE_FIXED32] = 4,
    [PROTOBUF_C_TYPE_UINT64] = 8, [PROTOBUF_C_TYPE_FIXED64] = 8,
    [PROTOBUF_C_TYPE_FLOAT] = 4, [PROTOBUF_C_TYPE_DOUBLE] = 8,
    [PROTOBUF_C_TYPE_BOOL] = sizeof(protobuf_c_boolean),
    [PROTOBUF_C_TYPE_ENUM] = 4, [PROTOBUF_C_TYPE_STRING] = sizeof(char *),
    [PROTOBUF_C_TYPE_BYTES] = sizeof(ProtobufCBinaryData),
    [PROTOBUF_C_TYPE_MESSAGE] = sizeof(kitchen *),
  };
  char *arr = emd_arena_alloc(a, (n + 1) * elt[type]);
  size_t i;

  assert_non_null(arr);
  for (i = 0; i < n; i++) {
    void *p = arr + i * elt[type];

    if (type == PROTOBUF_C_TYPE_STRING)
      *(char **)p = rnd_str(r, a, false);
    else if (type == PROTOBUF_C_TYPE_BYTES)
      rnd_bytes(r, a, p);
    else if (type == PROTOBUF_C_TYPE_MESSAGE)
      *(kitchen **)p = rnd_kitchen(r, a, depth + 1);
    else
      rnd_scalar(r, type, p);
  }
  return arr;
}

static size_t rnd_count(struct rng *r)
{
  if (chance(r, 2))
    return 0;
  return chance(r, 20) ? 200 : 1 + rnd(r) % 5;  /* 200: long packed runs */
}

static kitchen *rnd_kitchen(struct rng *r, struct emd_arena *a, int depth)
{
  kitchen *k = new_kitchen(a);
  size_t n;

#define X(i, T, ct, nm)                                                 \
  if (!chance(r, 3))                                                    \
    rnd_scalar(r, PROTOBUF_C_TYPE_##T, &k->nm);                         \
  k->has_o_##nm = chance(r, 2);                                         \
  rnd_scalar(r, PROTOBUF_C_TYPE_##T, &k->o_##nm);
  SCALARS(X)
#undef X
  k->str = rnd_str(r, a, true);
  rnd_bytes(r, a, &k->by);
  k->child = rnd_sub(r, a, depth);
  if (!chance(r, 3))
    k->o_str = rnd_str(r, a, true);   /* else the default */
  k->has_o_by = chance(r, 2);
  if (!chance(r, 3))
    rnd_bytes(r, a, &k->o_by);   /* else the default */
  k->o_msg = rnd_sub(r, a, depth);
  k->r_i32 = (int32_t)rnd32(r);
  if (!chance(r, 3))
    k->r_str = rnd_str(r, a, true);   /* else the default */
  rnd_bytes(r, a, &k->r_by);
  if (depth < 2) {
#define X(i, T, ct, nm)                                                 \
  n = rnd_count(r);                                                     \
  k->n_rep_##nm = n;                                                    \
  k->rep_##nm = rnd_array(r, a, PROTOBUF_C_TYPE_##T, n, depth);         \
  n = rnd_count(r);                                                     \
  k->n_pk_##nm = n;                                                     \
  k->pk_##nm = rnd_array(r, a, PROTOBUF_C_TYPE_##T, n, depth);
    SCALARS(X)
#undef X
    k->n_rep_str = rnd_count(r);
    k->rep_str = rnd_array(r, a, PROTOBUF_C_TYPE_STRING, k->n_rep_str, depth);
    k->n_rep_by = rnd_count(r);
    k->rep_by = rnd_array(r, a, PROTOBUF_C_TYPE_BYTES, k->n_rep_by, depth);
    k->n_rep_msg = rnd(r) % 3;
    k->rep_msg = rnd_array(r, a, PROTOBUF_C_TYPE_MESSAGE, k->n_rep_msg,
                           depth);
  }
  /* the case may name a member, another oneof's field or nothing */
  switch (rnd(r) % 7) {
  case 0:
    k->pick_case = 100;
    k->p_i32 = chance(r, 3) ? 0 : (int32_t)rnd32(r);
    break;
  case 1:
    k->pick_case = 101;
    k->p_str = chance(r, 3) ? (char *)kitchen_dflt : rnd_str(r, a, true);
    break;
  case 2:
    k->pick_case = 102;
    k->p_msg = rnd_sub(r, a, depth);
    break;
  case 3:
    k->pick_case = 103;
    rnd_bytes(r, a, &k->p_by);
    break;
  case 4:
    k->pick_case = 104;
    rnd_scalar(r, PROTOBUF_C_TYPE_DOUBLE, &k->p_db);
    break;
  case 5:
    k->pick_case = 110;   /* no member of pick */
    k->p_i32 = 5;
    break;
  default:
    break;
  }
  switch (rnd(r) % 3) {
  case 0:
    k->alt_case = 110;
    k->a_u64 = chance(r, 3) ? 0 : rnd64(r);
    break;
  case 1:
    k->alt_case = 111;
    k->a_str = chance(r, 3) ? (char *)kitchen_dflt : rnd_str(r, a, true);
    break;
  default:
    break;
  }
  k->t2047 = chance(r, 2) ? 0 : rnd32(r);
  k->t2048 = chance(r, 2) ? 0 : rnd32(r);
  k->t262143 = chance(r, 2) ? 0 : rnd32(r);
  k->t262144 = chance(r, 2) ? 0 : rnd32(r);
  k->t33554431 = chance(r, 2) ? 0 : rnd32(r);
  k->t33554432 = chance(r, 2) ? 0 : rnd32(r);
  k->tmax = rnd_str(r, a, true);
  rnd_unknowns(r, a, &k->base);
  return k;
}

static sparse *rnd_sparse(struct rng *r, struct emd_arena *a, int depth)
{
  sparse *sp = emd_arena_alloc(a, sizeof(*sp));
  size_t i;

  assert_non_null(sp);
  /* what both unpackers' generic initialisation gives it */
  memset(sp, 0, sizeof(*sp));
  sp->base.descriptor = &sparse_descriptor;
  sp->str = sp->t16 = (char *)protobuf_c_empty_string;
  sp->o_str = (char *)kitchen_dflt;
  sp->str = rnd_str(r, a, true);
  rnd_bytes(r, a, &sp->by);
  if (depth < 3 && chance(r, 2))
    sp->child = rnd_sparse(r, a, depth + 1);
  if (depth == 0 && chance(r, 3))
    sp->k = rnd_kitchen(r, a, 2);   /* 2: no repeated fields */
  sp->n_kids = depth < 2 ? rnd(r) % 7 : 0;   /* past 4 now and then */
  sp->kids = emd_arena_alloc(a, (sp->n_kids + 1) * sizeof(*sp->kids));
  assert_non_null(sp->kids);
  for (i = 0; i < sp->n_kids; i++)
    sp->kids[i] = rnd_sparse(r, a, depth + 1);
  rnd_scalar(r, PROTOBUF_C_TYPE_BOOL, &sp->b);
  rnd_scalar(r, PROTOBUF_C_TYPE_SINT32, &sp->s32);
  rnd_scalar(r, PROTOBUF_C_TYPE_SINT64, &sp->s64);
  sp->has_o_u64 = chance(r, 2);
  rnd_scalar(r, PROTOBUF_C_TYPE_UINT64, &sp->o_u64);
  if (!chance(r, 3))
    sp->o_str = rnd_str(r, a, true);   /* else the default */
  sp->n_rep_by = rnd(r) % 3;
  sp->rep_by = rnd_array(r, a, PROTOBUF_C_TYPE_BYTES, sp->n_rep_by, depth);
  rnd_scalar(r, PROTOBUF_C_TYPE_DOUBLE, &sp->db);
  rnd_scalar(r, PROTOBUF_C_TYPE_FLOAT, &sp->fl);
  sp->n_rep_u32 = rnd_count(r);
  sp->rep_u32 = rnd_array(r, a, PROTOBUF_C_TYPE_UINT32, sp->n_rep_u32, depth);
  sp->t16 = rnd_str(r, a, true);
  sp->n_rep_str = rnd(r) % 3;
  sp->rep_str = rnd_array(r, a, PROTOBUF_C_TYPE_STRING, sp->n_rep_str, depth);
  if (depth < 3 && chance(r, 4))
    sp->t2048 = rnd_sparse(r, a, depth + 1);
  if (depth == 0)   /* often not a valid field: once a tree is enough */
    rnd_unknowns(r, a, &sp->base);
  return sp;
}

/* ------------------------------------------------------------------ */
/* comparing the two results */

static char why[512];

static bool differ(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static bool differ(const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  return false;
}

static size_t elt_of(ProtobufCType t)
{
  switch (t) {
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return 8;
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(void *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  default:
    return 4;
  }
}

static uint32_t u32_at(const void *m, unsigned off)
{
  uint32_t v;

  memcpy(&v, (const char *)m + off, 4);
  return v;
}

static bool same_msg(const ProtobufCMessage *a, const ProtobufCMessage *b,
                     bool drop);

/* One value of f: theirs at a, ours at b. */
static bool same_value(const ProtobufCFieldDescriptor *f, const void *a,
                       const void *b, bool drop)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING: {
    const char *x = *(char *const *)a, *y = *(char *const *)b;

    if ((x == NULL) != (y == NULL))
      return differ("%s: NULL in one", f->name);
    if (x == NULL)
      return true;
    if ((x == f->default_value) != (y == f->default_value))
      return differ("%s: the default in one", f->name);
    return strcmp(x, y) == 0 || differ("%s: \"%s\" \"%s\"", f->name, x, y);
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *x = a, *y = b, *dd = f->default_value;

    if (x->len != y->len || (x->data == NULL) != (y->data == NULL))
      return differ("%s: %zu bytes, %zu bytes", f->name, x->len, y->len);
    if (dd != NULL && (x->data == dd->data) != (y->data == dd->data))
      return differ("%s: the default in one", f->name);
    return x->len == 0 || memcmp(x->data, y->data, x->len) == 0 ||
           differ("%s: other bytes", f->name);
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessage *x = *(ProtobufCMessage *const *)a;
    const ProtobufCMessage *y = *(ProtobufCMessage *const *)b;

    if ((x == NULL) != (y == NULL))
      return differ("%s: NULL in one", f->name);
    return x == NULL || same_msg(x, y, drop);
  }
  default:
    return memcmp(a, b, elt_of(f->type)) == 0 ||
           differ("%s: other value", f->name);
  }
}

/* a (protobuf-c's) and b (ours) field by field; with drop, b must have no
 * unknown fields and a's do not count. */
static bool same_msg(const ProtobufCMessage *a, const ProtobufCMessage *b,
                     bool drop)
{
  const ProtobufCMessageDescriptor *d = a->descriptor;
  const ProtobufCFieldDescriptor *f;
  const ProtobufCMessageUnknownField *x, *y;
  unsigned i;
  size_t k, n;

  if (b->descriptor != d)
    return differ("another descriptor");
  for (i = 0; i < d->n_fields; i++) {
    const char *pa, *pb;

    f = &d->fields[i];
    pa = (const char *)a + f->offset;
    pb = (const char *)b + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      n = *(const size_t *)((const char *)a + f->quantifier_offset);
      if (n != *(const size_t *)((const char *)b + f->quantifier_offset))
        return differ("%s: %zu and %zu items", f->name, n,
                      *(const size_t *)((const char *)b +
                                        f->quantifier_offset));
      if (n == 0 && (*(void *const *)pa != NULL || *(void *const *)pb != NULL))
        return differ("%s: an array for no items", f->name);
      for (k = 0; k < n; k++)
        if (!same_value(f, *(char *const *)pa + k * elt_of(f->type),
                        *(char *const *)pb + k * elt_of(f->type), drop))
          return false;
      continue;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t c = u32_at(a, f->quantifier_offset);

      if (c != u32_at(b, f->quantifier_offset))
        return differ("%s: case %u and %u", f->name, c,
                      u32_at(b, f->quantifier_offset));
      if (c == f->id && !same_value(f, pa, pb, drop))
        return false;
      continue;
    }
    if (f->quantifier_offset != 0 &&
        u32_at(a, f->quantifier_offset) != u32_at(b, f->quantifier_offset))
      return differ("has_%s differs", f->name);
    if (!same_value(f, pa, pb, drop))
      return false;
  }
  if (drop)
    return b->n_unknown_fields == 0 ||
           differ("%s: unknown fields kept", d->name);
  if (a->n_unknown_fields != b->n_unknown_fields)
    return differ("%s: %u and %u unknown fields", d->name,
                  a->n_unknown_fields, b->n_unknown_fields);
  for (i = 0; i < a->n_unknown_fields; i++) {
    x = &a->unknown_fields[i];
    y = &b->unknown_fields[i];
    if (x->tag != y->tag || x->wire_type != y->wire_type ||
        x->len != y->len || memcmp(x->data, y->data, x->len) != 0)
      return differ("%s: unknown field %u differs", d->name, i);
  }
  return true;
}

/* Whether m's tree has an unknown field, or a string (as C sees it) that
 * is not UTF-8. */
static void tree_props(const ProtobufCMessage *m, bool *unknown, bool *bad)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const ProtobufCFieldDescriptor *f;
  const char *p;
  unsigned i;
  size_t k, n;

  if (m->n_unknown_fields > 0)
    *unknown = true;
  for (i = 0; i < d->n_fields; i++) {
    f = &d->fields[i];
    p = (const char *)m + f->offset;
    if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        u32_at(m, f->quantifier_offset) != f->id)
      continue;
    n = 1;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      n = *(const size_t *)((const char *)m + f->quantifier_offset);
      p = *(char *const *)p;
    }
    for (k = 0; k < n; k++) {
      const void *v = *(void *const *)(p + k * sizeof(void *));

      if (v == NULL)
        continue;
      if (f->type == PROTOBUF_C_TYPE_STRING)
        *bad = *bad || !ref_utf8(v);
      else
        tree_props(v, unknown, bad);
    }
  }
}

static void fail_with(const uint8_t *data, size_t len, const char *what)
  __attribute__((noreturn));

static void fail_with(const uint8_t *data, size_t len, const char *what)
{
  char hex[3 * 256 + 8];
  size_t i, o = 0;

  for (i = 0; i < len && i < 256; i++)
    o += (size_t)snprintf(hex + o, sizeof(hex) - o, "%02x ", data[i]);
  if (i < len)
    snprintf(hex + o, sizeof(hex) - o, "...");
  fail_msg("%s\n  input (%zu bytes): %s", what, len, hex);
  abort();
}

static uint8_t *packed_by_protobuf_c(const ProtobufCMessage *m, size_t *len)
{
  uint8_t *p;

  *len = protobuf_c_message_get_packed_size(m);
  p = malloc(*len + 1);
  assert_non_null(p);
  assert_int_equal(protobuf_c_message_pack(m, p), *len);
  return p;
}

struct tally {
  unsigned long ok, failed;
};

/* Whether a message in d's tree has a required field (seen: the
 * descriptors on the way down, n of them). */
static bool tree_has_required(const ProtobufCMessageDescriptor *d,
                              const ProtobufCMessageDescriptor **seen,
                              size_t n)
{
  const ProtobufCFieldDescriptor *f;
  size_t i;

  for (i = 0; i < n; i++)
    if (seen[i] == d)
      return false;
  if (n == 32)
    return true;
  seen[n] = d;
  for (i = 0; i < d->n_fields; i++) {
    f = &d->fields[i];
    if (f->label == PROTOBUF_C_LABEL_REQUIRED ||
        (f->type == PROTOBUF_C_TYPE_MESSAGE &&
         tree_has_required(f->descriptor, seen, n + 1)))
      return true;
  }
  return false;
}

static bool has_required(const ProtobufCMessageDescriptor *d)
{
  const ProtobufCMessageDescriptor *seen[32];

  return tree_has_required(d, seen, 0);
}

/* Both unpackers on data[0..len): the same outcome, and on success the
 * same message, also with the unknown fields dropped and with
 * EMD_UNPACK_NO_REQUIRED; the flags cover the result. A tree without
 * required fields is unpacked both with and without
 * EMD_UNPACK_NO_REQUIRED whatever the outcome. Returns 1 when it
 * unpacked, 0 when both failed. *out (if not NULL) gets ours, in a. */
static int unpack_both(const ProtobufCMessageDescriptor *d,
                       const uint8_t *data, size_t len, struct emd_arena *a,
                       struct tally *t, ProtobufCMessage **out)
{
  ProtobufCMessage *theirs, *ours = (ProtobufCMessage *)(uintptr_t)1;
  ProtobufCMessage *dropped;
  uint8_t *pa, *pb;
  size_t na, nb;
  unsigned saw = 99;
  bool unknown = false, bad = false;
  char what[600];
  int rc;

  if (out != NULL)
    *out = NULL;
  theirs = protobuf_c_message_unpack(d, NULL, len, data);
  rc = emd_unpack(d, data, len, a, 0, &ours, &saw);
  if (!has_required(d)) {
    ProtobufCMessage *again;
    unsigned saw2;
    int rc2 = emd_unpack(d, data, len, a, EMD_UNPACK_NO_REQUIRED, &again,
                         &saw2);

    if (rc2 != rc || saw2 != saw ||
        (rc == 0 && !same_msg(ours, again, false)))
      fail_with(data, len, "EMD_UNPACK_NO_REQUIRED changes the result");
  }
  if (theirs == NULL) {
    if (rc != -EINVAL || ours != NULL) {
      snprintf(what, sizeof(what), "protobuf-c fails, emd_unpack returns "
               "%d", rc);
      fail_with(data, len, what);
    }
    if (t != NULL)
      t->failed++;
    return 0;
  }
  if (rc != 0 || ours == NULL) {
    snprintf(what, sizeof(what), "protobuf-c unpacks, emd_unpack returns "
             "%d", rc);
    fail_with(data, len, what);
  }
  pa = packed_by_protobuf_c(theirs, &na);
  pb = packed_by_protobuf_c(ours, &nb);
  if (na != nb || memcmp(pa, pb, na) != 0)
    fail_with(data, len, "the results pack differently");
  free(pa);
  free(pb);
  if (!same_msg(theirs, ours, false)) {
    snprintf(what, sizeof(what), "the results differ: %s", why);
    fail_with(data, len, what);
  }
  /* protobuf-c found every required field, so skipping the check
   * changes nothing */
  rc = emd_unpack(d, data, len, a, EMD_UNPACK_NO_REQUIRED, &dropped, NULL);
  if (rc != 0 || !same_msg(theirs, dropped, false)) {
    snprintf(what, sizeof(what), "with NO_REQUIRED: %d %s", rc, why);
    fail_with(data, len, what);
  }
  tree_props(theirs, &unknown, &bad);
  if ((unknown && !(saw & EMD_UNPACK_SAW_UNKNOWN)) ||
      (bad && !(saw & EMD_UNPACK_SAW_BAD_UTF8)) || saw > 3)
    fail_with(data, len, "a flag is missing");
  rc = emd_unpack(d, data, len, a, EMD_UNPACK_DROP_UNKNOWN, &dropped, NULL);
  if (rc != 0 || !same_msg(theirs, dropped, true)) {
    snprintf(what, sizeof(what), "with DROP_UNKNOWN: %d %s", rc, why);
    fail_with(data, len, what);
  }
  protobuf_c_message_free_unpacked(theirs, NULL);
  if (t != NULL)
    t->ok++;
  if (out != NULL)
    *out = ours;
  return 1;
}

/* ------------------------------------------------------------------ */
/* wire, by hand */

struct wbuf {
  uint8_t *p;
  size_t len, cap;
};

static void w_put(struct wbuf *w, const void *p, size_t n)
{
  if (w->p == NULL || w->len + n > w->cap) {
    w->cap = (w->len + n) * 2 + 64;
    w->p = realloc(w->p, w->cap);
    assert_non_null(w->p);
  }
  if (n > 0)
    memcpy(w->p + w->len, p, n);
  w->len += n;
}

static void w_byte(struct wbuf *w, uint8_t b)
{
  w_put(w, &b, 1);
}

/* v as a varint, with pad more bytes than it needs (an overlong form). */
static void w_varint(struct wbuf *w, uint64_t v, unsigned pad)
{
  while (v >= 0x80) {
    w_byte(w, (uint8_t)(v | 0x80));
    v >>= 7;
  }
  if (pad == 0) {
    w_byte(w, (uint8_t)v);
    return;
  }
  w_byte(w, (uint8_t)(v | 0x80));
  while (--pad > 0)
    w_byte(w, 0x80);
  w_byte(w, 0);
}

static void w_tag(struct wbuf *w, uint32_t num, unsigned wt)
{
  w_varint(w, (uint64_t)num << 3 | wt, 0);
}

/* A length-delimited field: tag, length, bytes. */
static void w_len(struct wbuf *w, uint32_t num, const void *p, size_t n)
{
  w_tag(w, num, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
  w_varint(w, n, 0);
  w_put(w, p, n);
}

static void w_str(struct wbuf *w, uint32_t num, const char *s)
{
  w_len(w, num, s, strlen(s));
}

static void w_msg(struct wbuf *w, uint32_t num, const struct wbuf *sub)
{
  w_len(w, num, sub->p, sub->len);
}

static void w_uint(struct wbuf *w, uint32_t num, uint64_t v)
{
  w_tag(w, num, PROTOBUF_C_WIRE_TYPE_VARINT);
  w_varint(w, v, 0);
}

/* ------------------------------------------------------------------ */
/* wire made up from the descriptors */

static bool is_packable(ProtobufCType t)
{
  return t != PROTOBUF_C_TYPE_STRING && t != PROTOBUF_C_TYPE_BYTES &&
         t != PROTOBUF_C_TYPE_MESSAGE;
}

static unsigned natural_wt(ProtobufCType t)
{
  switch (t) {
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return PROTOBUF_C_WIRE_TYPE_64BIT;
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
    return PROTOBUF_C_WIRE_TYPE_32BIT;
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_BYTES:
  case PROTOBUF_C_TYPE_MESSAGE:
    return PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
  default:
    return PROTOBUF_C_WIRE_TYPE_VARINT;
  }
}

/* A varint value for a field of type t (or any, t < 0). */
static uint64_t gen_varint_value(struct rng *r, int t)
{
  if (t == PROTOBUF_C_TYPE_BOOL && !chance(r, 4))
    return rnd(r) % 2;
  return chance(r, 3) ? rnd(r) % 300 : rnd64(r);
}

/* A varint, now and then overlong, too long (11 bytes) or cut short. */
static void gen_varint(struct rng *r, struct wbuf *w, uint64_t v)
{
  size_t need = 1;
  uint64_t x;

  for (x = v; x >= 0x80; x >>= 7)
    need++;
  if (chance(r, 400)) {
    w_put(w, "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 11);
  } else if (chance(r, 400)) {
    w_byte(w, 0x80);   /* unterminated, if nothing follows */
  } else if (chance(r, 25) && need < 10) {
    w_varint(w, v, 1 + (unsigned)(rnd(r) % (10 - need)));
  } else {
    w_varint(w, v, 0);
  }
}

/* Some text: ASCII, valid UTF-8, or not UTF-8, NULs now and then. */
static void gen_text(struct rng *r, struct wbuf *w)
{
  static const char *const bits[] = {
    "a", "Build", "type.googleapis.com/buildless.context.Build", " ",
    "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xef\xbf\xbf",
    "\xff", "\xc0\x80", "\x80", "\xe0\x80\x80", "\xed\xa0\x80",
    "\xf4\x90\x80\x80", "\xc3", "\xe2\x82", "\xf5\x80\x80\x80", "\0",
  };
  size_t n = rnd(r) % (chance(r, 10) ? 40 : 6), i;
  const char *b;

  for (i = 0; i < n; i++) {
    /* mostly ASCII and valid UTF-8 */
    b = bits[chance(r, 6) ? rnd(r) % 18 : rnd(r) % 8];
    w_put(w, b, b[0] == '\0' ? 1 : strlen(b));
  }
}

static void gen_message(struct rng *r, struct wbuf *w,
                        const ProtobufCMessageDescriptor *d, int depth);

/* A packed run of type t. */
static void gen_packed(struct rng *r, struct wbuf *w, ProtobufCType t)
{
  size_t n = chance(r, 10) ? 0 : 1 + rnd(r) % (chance(r, 10) ? 100 : 4), i;
  uint64_t v;

  for (i = 0; i < n; i++) {
    switch (natural_wt(t)) {
    case PROTOBUF_C_WIRE_TYPE_64BIT:
      v = rnd64(r);
      w_put(w, &v, 8);
      break;
    case PROTOBUF_C_WIRE_TYPE_32BIT:
      v = rnd64(r);
      w_put(w, &v, 4);
      break;
    default:
      gen_varint(r, w, gen_varint_value(r, (int)t));
      break;
    }
  }
  if (n > 0 && chance(r, 30))
    w->len--;   /* a run cut short */
}

/* The value of a field numbered num (f NULL: unknown) as wire type wt. */
static void gen_value(struct rng *r, struct wbuf *w,
                      const ProtobufCFieldDescriptor *f, unsigned wt,
                      int depth)
{
  struct wbuf sub = { 0 };
  uint64_t v = rnd64(r), len;
  size_t i;

  switch (wt) {
  case PROTOBUF_C_WIRE_TYPE_VARINT:
    gen_varint(r, w, gen_varint_value(r, f != NULL ? (int)f->type : -1));
    return;
  case PROTOBUF_C_WIRE_TYPE_64BIT:
    w_put(w, &v, 8);
    return;
  case PROTOBUF_C_WIRE_TYPE_32BIT:
    w_put(w, &v, 4);
    return;
  case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
    break;
  default:   /* groups and the rest: whatever follows */
    if (chance(r, 2))
      w_byte(w, (uint8_t)rnd(r));
    return;
  }
  if (f == NULL || chance(r, 30)) {
    for (i = rnd(r) % 12; i > 0; i--)
      w_byte(w, (uint8_t)rnd(r));
  } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    if (depth < 4)
      gen_message(r, &sub, f->descriptor, depth + 1);
  } else if (f->type == PROTOBUF_C_TYPE_STRING) {
    gen_text(r, &sub);
  } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
    for (i = rnd(r) % (chance(r, 3) ? 40 : 3); i > 0; i--)
      w_byte(&sub, (uint8_t)rnd(r));
  } else if (f->type == PROTOBUF_C_TYPE_BOOL && chance(r, 3)) {
    for (i = rnd(r) % 4; i > 0; i--)
      w_byte(&sub, (uint8_t)(chance(r, 8) ? rnd(r) : rnd(r) % 2));
  } else {
    gen_packed(r, &sub, f->type);
  }
  len = sub.len;
  switch (rnd(r) % 40) {
  case 0:   /* padded to five bytes */
    w_varint(w, len, len < 0x80 ? 4 : len < 0x4000 ? 3 : 2);
    break;
  case 1:   /* five bytes, bits past 32 set: too long */
    w_byte(w, (uint8_t)(len | 0x80));
    w_byte(w, (uint8_t)(len >> 7 | 0x80));
    w_byte(w, (uint8_t)(len >> 14 | 0x80));
    w_byte(w, (uint8_t)(len >> 21 | 0x80));
    w_byte(w, (uint8_t)((len >> 28) | (1 + rnd(r) % 7) << 4));
    break;
  case 2:   /* longer than what follows, maybe */
    w_varint(w, len + 1 + rnd(r) % 3, 0);
    break;
  case 3:   /* six bytes */
    w_varint(w, len, 5);
    break;
  default:
    w_varint(w, len, 0);
    break;
  }
  w_put(w, sub.p, sub.len);
  free(sub.p);
}

/* Field numbers no message of ours has, and some that are odd. */
static uint32_t gen_unknown_num(struct rng *r)
{
  static const uint32_t nums[] = {
    0, 18, 99, 1000, 2047, 2048, 536870911, 536870912, 0x7fffffff,
    0x80000000, 0xffffffff,
  };

  return chance(r, 2) ? nums[rnd(r) % 11] : (uint32_t)rnd(r);
}

/* A message of type d: fields in any order and number, known and not,
 * mostly of their own wire type. */
static void gen_message(struct rng *r, struct wbuf *w,
                        const ProtobufCMessageDescriptor *d, int depth)
{
  const ProtobufCFieldDescriptor *f;
  size_t n = rnd(r) % (depth == 0 ? 14 : 7), i;
  uint32_t num;
  unsigned wt;

  for (i = 0; i < n; i++) {
    f = NULL;
    if (chance(r, 10)) {
      num = gen_unknown_num(r);
      f = protobuf_c_message_descriptor_get_field(d, num);
      wt = f != NULL ? natural_wt(f->type) : (unsigned)(rnd(r) % 4);
      if (wt == 3 || wt == 4)
        wt += 2;   /* 5 (32 bits) or 6 */
    } else {
      f = &d->fields[rnd(r) % d->n_fields];
      num = f->id;
      wt = natural_wt(f->type);
      if (f->label == PROTOBUF_C_LABEL_REPEATED && is_packable(f->type) &&
          chance(r, 2))
        wt = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    }
    if (chance(r, 20))
      wt = (unsigned)(rnd(r) % 8);
    if (chance(r, 40))   /* a tag in more bytes than it needs */
      w_varint(w, (uint64_t)num << 3 | wt, 1 + (unsigned)(rnd(r) % 2));
    else
      w_varint(w, (uint64_t)num << 3 | wt, 0);
    gen_value(r, w, f, wt, depth);
  }
  /* the hand-made descriptor's required fields, mostly */
  if (d == &kitchen_descriptor) {
    if (!chance(r, 10))
      w_uint(w, 41, rnd64(r));
    if (!chance(r, 10))
      w_str(w, 43, "req");
  }
}

/* ------------------------------------------------------------------ */
/* mutations */

/* Changes w in one of several ways; other is another message of the same
 * type, for splicing. */
static void mutate(struct rng *r, struct wbuf *w, const struct wbuf *other)
{
  static const uint8_t edge[] = { 0, 1, 0x7f, 0x80, 0xff, 0x08, 0x0a, 0x12,
                                  0x2a, 0x0b, 0x0c, 0x0f };
  struct wbuf tmp = { 0 };
  size_t i, j, k;
  uint8_t b;

  w_put(w, "", 0);   /* never NULL, for w->p + i */
  switch (rnd(r) % 10) {
  case 0:   /* cut */
    w->len = w->len == 0 ? 0 : rnd(r) % w->len;
    return;
  case 1:   /* flip a bit */
    if (w->len > 0)
      w->p[rnd(r) % w->len] ^= (uint8_t)(1u << rnd(r) % 8);
    return;
  case 2:   /* an edge value */
    if (w->len > 0)
      w->p[rnd(r) % w->len] = edge[rnd(r) % sizeof(edge)];
    return;
  case 3:   /* a byte more */
    b = (uint8_t)rnd(r);
    i = w->len == 0 ? 0 : rnd(r) % (w->len + 1);
    w_put(&tmp, w->p, i);
    w_put(&tmp, &b, 1);
    w_put(&tmp, w->p + i, w->len - i);
    break;
  case 4:   /* a byte less */
    if (w->len == 0)
      return;
    i = rnd(r) % w->len;
    memmove(w->p + i, w->p + i + 1, w->len - i - 1);
    w->len--;
    return;
  case 5:   /* a span copied elsewhere */
    if (w->len == 0)
      return;
    i = rnd(r) % w->len;
    j = i + 1 + rnd(r) % (w->len - i);
    k = rnd(r) % (w->len + 1);
    w_put(&tmp, w->p, k);
    w_put(&tmp, w->p + i, j - i);
    w_put(&tmp, w->p + k, w->len - k);
    break;
  case 6:   /* twice over: every field again, messages merged */
  case 7:
    w_put(&tmp, w->p, w->len);
    w_put(&tmp, w->p, w->len);
    break;
  default:  /* another one after it, or before */
    if (chance(r, 2)) {
      w_put(&tmp, w->p, w->len);
      w_put(&tmp, other->p, other->len);
    } else {
      w_put(&tmp, other->p, other->len);
      w_put(&tmp, w->p, w->len);
    }
    break;
  }
  free(w->p);
  *w = tmp;
}

/* Sets w to a copy of p[0..n). */
static void w_set(struct wbuf *w, const uint8_t *p, size_t n)
{
  w->len = 0;
  w_put(w, p, n);
}

/* ------------------------------------------------------------------ */
/* many inputs */

typedef ProtobufCMessage *(*maker)(struct rng *r, struct emd_arena *a);

/* n inputs for type d: messages from make() as protobuf-c packs them, or
 * wire made up from d; cut, flipped, spliced or doubled now and then
 * (none, one, two or three times). */
static void rounds(const ProtobufCMessageDescriptor *d, maker make,
                   unsigned long n, uint64_t seed, struct tally *t)
{
  struct emd_arena a = { 0 }, ours = { 0 };
  struct wbuf w = { 0 }, o = { 0 };
  struct rng r = { seed };
  ProtobufCMessage *m;
  unsigned long i;
  unsigned k;
  uint8_t *p;
  size_t len;

  for (i = 0; i < n; i++) {
    emd_arena_reset(&a);
    if (make != NULL && chance(&r, 2)) {
      m = make(&r, &a);
      p = packed_by_protobuf_c(m, &len);
      w_set(&w, p, len);
      free(p);
      m = make(&r, &a);
      p = packed_by_protobuf_c(m, &len);
      w_set(&o, p, len);
      free(p);
    } else {
      w.len = o.len = 0;
      gen_message(&r, &w, d, 0);
      gen_message(&r, &o, d, 0);
    }
    for (k = (unsigned)(rnd(&r) % 4); k > 0; k--)
      mutate(&r, &w, &o);
    emd_arena_reset(&ours);
    unpack_both(d, w.p, w.len, &ours, t, NULL);
  }
  free(w.p);
  free(o.p);
  emd_arena_free(&a);
  emd_arena_free(&ours);
}

/* Both outcomes must have come up often. */
static void assert_mixed(const struct tally *t, unsigned long n)
{
  if (t->ok < n / 8 || t->failed < n / 20)
    fail_msg("%lu unpacked, %lu failed of %lu", t->ok, t->failed, n);
}

static ProtobufCMessage *make_event(struct rng *r, struct emd_arena *a)
{
  return &rnd_event(r, a)->base;
}

static ProtobufCMessage *make_kitchen(struct rng *r, struct emd_arena *a)
{
  return &rnd_kitchen(r, a, 0)->base;
}

static void random_events_unpack_as_protobuf_c_does(void **state)
{
  struct tally t = { 0 };
  unsigned long n = ROUNDS(150000);

  (void)state;
  rounds(&buildless__service__v1__event__descriptor, make_event, n,
         UINT64_C(0x5eed0fe7e17), &t);
  assert_mixed(&t, n);
}

static void every_type_and_label_unpacks_as_protobuf_c_does(void **state)
{
  struct tally t = { 0 }, g = { 0 };
  unsigned long n = ROUNDS(40000);

  (void)state;
  kitchen_setup(true);
  rounds(&kitchen_descriptor, make_kitchen, n, 7, &t);
  assert_mixed(&t, n);
  /* the same without message_init: defaults from the descriptor */
  kitchen_setup(false);
  rounds(&kitchen_descriptor, make_kitchen, n / 2, 8, &g);
  assert_mixed(&g, n / 2);
  kitchen_setup(true);
}

static ProtobufCMessage *make_sparse(struct rng *r, struct emd_arena *a)
{
  return &rnd_sparse(r, a, 0)->base;
}

/* The plans' kinds, and what they leave to the descriptor. */
static void sparse_types_unpack_as_protobuf_c_does(void **state)
{
  struct tally t = { 0 }, o = { 0 };
  unsigned long n = ROUNDS(20000);

  (void)state;
  rounds(&sparse_descriptor, make_sparse, n, 11, &t);
  assert_mixed(&t, n);
  /* most fail: the message marked packed, whenever it comes */
  rounds(&odd_descriptor, NULL, n / 4, 12, &o);
  assert_true(o.ok > n / 100);
}

static ProtobufCMessage *make_ack(struct rng *r, struct emd_arena *a)
{
  emd_ack *ack = NEW(a, emd_ack, emitd__v1__ack__init);

  ack->ok = (protobuf_c_boolean)(rnd(r) % 3);
  ack->id = rnd_str(r, a, false);
  ack->seq = chance(r, 2) ? 0 : rnd64(r);
  rnd_bytes(r, a, &ack->timer);
  ack->ordinal = chance(r, 2) ? 0 : rnd32(r);
  ack->duplicate = chance(r, 2);
  ack->error = rnd_str(r, a, false);
  ack->message = rnd_str(r, a, false);
  ack->line = chance(r, 2) ? 0 : rnd32(r);
  rnd_unknowns(r, a, &ack->base);
  return &ack->base;
}

static ProtobufCMessage *make_record(struct rng *r, struct emd_arena *a)
{
  emd_spool_record *rec = NEW(a, emd_spool_record,
                              emitd__v1__spool_record__init);

  rec->event = chance(r, 8) ? NULL : rnd_event(r, a);
  rec->accepted_ms = chance(r, 2) ? 0 : rnd64(r);
  rec->attempts = chance(r, 2) ? 0 : rnd32(r);
  return &rec->base;
}

static ProtobufCMessage *make_view(struct rng *r, struct emd_arena *a)
{
  emd_spool_record_view *v = NEW(a, emd_spool_record_view,
                                 emitd__v1__spool_record_view__init);
  size_t n;

  v->event.data = packed_by_protobuf_c(&rnd_event(r, a)->base, &n);
  /* into the arena, so that nothing leaks */
  v->event.len = n;
  if (n > 0) {
    uint8_t *copy = emd_arena_alloc(a, n);

    assert_non_null(copy);
    memcpy(copy, v->event.data, n);
    free(v->event.data);
    v->event.data = copy;
  } else {
    free(v->event.data);
    v->event.data = NULL;
  }
  v->accepted_ms = rnd64(r);
  v->attempts = rnd32(r);
  return &v->base;
}

static ProtobufCMessage *make_dead(struct rng *r, struct emd_arena *a)
{
  emd_dead_record *d = NEW(a, emd_dead_record, emitd__v1__dead_record__init);

  d->record = chance(r, 4) ? NULL : (emd_spool_record *)make_record(r, a);
  d->reason = rnd_str(r, a, false);
  d->status = rnd32(r);
  rnd_bytes(r, a, &d->excerpt);
  d->time_ms = rnd64(r);
  return &d->base;
}

static void emitd_records_unpack_as_protobuf_c_does(void **state)
{
  static const struct {
    const ProtobufCMessageDescriptor *d;
    maker make;
  } types[] = {
    { &emitd__v1__ack__descriptor, make_ack },
    { &emitd__v1__spool_record__descriptor, make_record },
    { &emitd__v1__spool_record_view__descriptor, make_view },
    { &emitd__v1__dead_record__descriptor, make_dead },
    { &buildless__service__v1__event_id__descriptor, NULL },
  };
  unsigned long n = ROUNDS(20000);
  size_t i;

  (void)state;
  for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
    struct tally t = { 0 };

    rounds(types[i].d, types[i].make, n, 100 + i, &t);
    assert_mixed(&t, n);
  }
}

/* A fully populated Event as protobuf-c packs it, with unknown fields
 * on its messages, and every prefix of it. */
static void full_event_unpacks_as_protobuf_c_does(void **state)
{
  static const uint8_t uv[] = { 0x96, 0x01 };
  static const uint8_t u64[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
  static const uint8_t ulen[] = { 3, 'a', 'b', 'c' };
  static const uint8_t u32[] = { 9, 8, 7, 6 };
  ProtobufCMessageUnknownField unk[] = {
    { 1000, PROTOBUF_C_WIRE_TYPE_VARINT, 2, (uint8_t *)uv },
    { 15, PROTOBUF_C_WIRE_TYPE_64BIT, 8, (uint8_t *)u64 },
    { 536870911, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, 4, (uint8_t *)ulen },
    { 16, PROTOBUF_C_WIRE_TYPE_32BIT, 4, (uint8_t *)u32 },
  };
  const ProtobufCMessageDescriptor *d =
    &buildless__service__v1__event__descriptor;
  struct full *x = malloc(sizeof(*x));
  struct emd_arena a = { 0 };
  ProtobufCMessage *m;
  emd_event *ev;
  unsigned saw;
  uint8_t *p;
  size_t len, i;

  (void)state;
  assert_non_null(x);
  full_event(x);
  p = packed_by_protobuf_c(&x->ev.base, &len);
  assert_int_equal(unpack_both(d, p, len, &a, NULL, &m), 1);
  ev = (emd_event *)m;
  assert_string_equal(ev->collection, "builds");
  assert_true(ev->fin);
  assert_int_equal(strlen(ev->event->user), 299);
  assert_int_equal(ev->event->n_context, 3);
  assert_string_equal(ev->event->context[2]->type, "Cache");
  assert_int_equal(ev->event->detail->client->n_tool, 3);
  assert_int_equal(ev->event->detail->client->tool[1]->version->major,
                   12u << 8);
  assert_true(ev->event->location->point->lon == -13.405);
  assert_memory_equal(ev->event->timer.data, "\001\002\377", 3);
  assert_int_equal(emd_unpack(d, p, len, &a, 0, &m, &saw), 0);
  assert_int_equal(saw, 0);
  for (i = 0; i < len; i++)
    unpack_both(d, p, i, &a, NULL, NULL);
  free(p);

  x->ev.base.n_unknown_fields = 4;
  x->ev.base.unknown_fields = unk;
  x->te.base.n_unknown_fields = 1;
  x->te.base.unknown_fields = unk + 3;
  x->c[1].base.n_unknown_fields = 2;
  x->c[1].base.unknown_fields = unk + 1;
  x->vos.base.n_unknown_fields = 3;
  x->vos.base.unknown_fields = unk;
  x->point.base.n_unknown_fields = 1;
  x->point.base.unknown_fields = unk + 2;
  p = packed_by_protobuf_c(&x->ev.base, &len);
  assert_int_equal(unpack_both(d, p, len, &a, NULL, &m), 1);
  ev = (emd_event *)m;
  assert_int_equal(ev->base.n_unknown_fields, 4);
  assert_int_equal(ev->base.unknown_fields[2].tag, 536870911);
  assert_int_equal(ev->base.unknown_fields[2].len, 4);
  assert_memory_equal(ev->base.unknown_fields[2].data, ulen, 4);
  assert_int_equal(ev->event->context[1]->base.n_unknown_fields, 2);
  assert_int_equal(emd_unpack(d, p, len, &a, 0, &m, &saw), 0);
  assert_int_equal(saw, EMD_UNPACK_SAW_UNKNOWN);
  for (i = 0; i < len; i++)
    unpack_both(d, p, i, &a, NULL, NULL);
  free(p);
  free(x);
  emd_arena_free(&a);
}

/* ------------------------------------------------------------------ */
/* the rules one by one, each checked against protobuf-c as well */

struct fx {
  struct emd_arena a;
  struct wbuf w;
};

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));

  if (f == NULL)
    return -1;
  kitchen_setup(true);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;

  emd_arena_free(&f->a);
  free(f->w.p);
  free(f);
  return 0;
}

static const ProtobufCMessageDescriptor *const event_d =
  &buildless__service__v1__event__descriptor;

/* Unpacks w both ways, expecting success; returns ours. */
static void *ok(struct fx *f, const ProtobufCMessageDescriptor *d,
                const struct wbuf *w)
{
  ProtobufCMessage *m;

  if (unpack_both(d, w->p, w->len, &f->a, NULL, &m) != 1)
    fail_with(w->p, w->len, "does not unpack");
  return m;
}

/* Unpacks w both ways, expecting failure. */
static void bad(struct fx *f, const ProtobufCMessageDescriptor *d,
                const struct wbuf *w)
{
  if (unpack_both(d, w->p, w->len, &f->a, NULL, NULL) != 0)
    fail_with(w->p, w->len, "unpacks");
}

/* A context message's bytes. */
static void ctx(struct wbuf *w, const char *type)
{
  w->len = 0;
  w_str(w, 1, type);
  w_str(w, 4, "started");
}

static void scalars_last_one_wins_and_repeated_fields_collect(void **state)
{
  struct fx *f = *state;
  struct wbuf te = { 0 }, c = { 0 };
  emd_event *ev;

  w_str(&f->w, 1, "first");
  w_uint(&f->w, 3, 7);
  w_uint(&f->w, 2, 1);
  w_str(&f->w, 1, "second");
  w_uint(&f->w, 2, 0);            /* an explicit zero wins too */
  ctx(&c, "a");
  w_msg(&te, 5, &c);
  w_str(&te, 2, "x");
  ctx(&c, "b");
  w_msg(&te, 5, &c);
  w_str(&te, 2, "y");
  ctx(&c, "c");
  w_msg(&te, 5, &c);
  w_msg(&f->w, 5, &te);
  ev = ok(f, event_d, &f->w);
  assert_string_equal(ev->collection, "second");
  assert_int_equal(ev->index, 7);
  assert_false(ev->fin);
  assert_string_equal(ev->event->id, "y");
  assert_int_equal(ev->event->n_context, 3);
  assert_string_equal(ev->event->context[0]->type, "a");
  assert_string_equal(ev->event->context[2]->type, "c");
  assert_string_equal(ev->event->context[2]->event, "started");
  /* absent strings point at protobuf-c's empty default */
  assert_ptr_equal(ev->scope, protobuf_c_empty_string);
  assert_ptr_equal(ev->event->context[0]->resource, protobuf_c_empty_string);
  free(te.p);
  free(c.p);
}

static void a_message_given_twice_is_merged_as_protobuf_c_merges(void **st)
{
  struct fx *f = *st;
  struct wbuf t1 = { 0 }, t2 = { 0 }, t3 = { 0 }, c = { 0 }, d = { 0 };
  struct wbuf x = { 0 };
  emd_event *ev;
  emd_tevent *te;

  /* the first copy: strings, a number, bytes, a list, a sub-message and
   * an unknown field */
  w_str(&t1, 2, "id-1");
  w_str(&t1, 3, "org_a");
  w_uint(&t1, 10, 5);
  w_str(&t1, 9, "timer");
  ctx(&c, "c1");
  w_msg(&t1, 5, &c);
  w_uint(&x, 1, 77);                /* TenantDetail.oid */
  w_str(&x, 2, "acme");
  w_msg(&d, 1, &x);                 /* EventDetail.tenant */
  w_msg(&t1, 6, &d);
  w_uint(&t1, 99, 1);
  /* the second: other fields, an explicitly empty timer */
  w_str(&t2, 4, "user-2");
  ctx(&c, "c2");
  w_msg(&t2, 5, &c);
  x.len = d.len = 0;
  w_str(&x, 1, "uid-2");
  w_msg(&d, 2, &x);                 /* EventDetail.user */
  w_msg(&t2, 6, &d);
  w_len(&t2, 9, "", 0);
  w_msg(&f->w, 5, &t1);
  w_msg(&f->w, 5, &t2);
  ev = ok(f, event_d, &f->w);
  te = ev->event;
  assert_string_equal(te->id, "id-1");      /* absent later: kept */
  assert_string_equal(te->tenant, "org_a");
  assert_string_equal(te->user, "user-2");
  assert_int_equal(te->ordinal, 0);         /* proto3 scalar: later wins */
  assert_int_equal(te->timer.len, 5);       /* empty later: kept */
  assert_int_equal(te->n_context, 2);       /* lists concatenated */
  assert_string_equal(te->context[0]->type, "c1");
  assert_string_equal(te->context[1]->type, "c2");
  assert_int_equal(te->detail->tenant->oid, 77);   /* merged, deeper */
  assert_string_equal(te->detail->user->uid, "uid-2");
  assert_int_equal(te->base.n_unknown_fields, 0);  /* the first copy's */
  /* a third copy with an explicitly empty id */
  w_len(&t3, 2, "", 0);
  w_uint(&t3, 10, 9);
  w_msg(&f->w, 5, &t3);
  ev = ok(f, event_d, &f->w);
  assert_string_equal(ev->event->id, "");
  assert_true(ev->event->id != protobuf_c_empty_string);
  assert_string_equal(ev->event->user, "user-2");
  assert_int_equal(ev->event->ordinal, 9);
  /* kept from the earlier copy: the later one's unknown fields only */
  x.len = 0;
  w_uint(&x, 98, 3);
  w_msg(&f->w, 5, &x);
  ev = ok(f, event_d, &f->w);
  assert_int_equal(ev->event->base.n_unknown_fields, 1);
  assert_int_equal(ev->event->base.unknown_fields[0].tag, 98);
  assert_int_equal(ev->event->n_context, 2);
  free(t1.p);
  free(t2.p);
  free(t3.p);
  free(c.p);
  free(d.p);
  free(x.p);
}

/* A kitchen's required fields, so that it unpacks. */
static void required(struct wbuf *w)
{
  w_uint(w, 41, 1);
  w_str(w, 43, "r");
}

static void oneof_members_replace_each_other_and_set_the_case(void **st)
{
  struct fx *f = *st;
  struct wbuf sub = { 0 };
  kitchen *k;

  required(&f->w);
  required(&sub);
  w_str(&sub, 15, "first");
  w_msg(&f->w, 102, &sub);
  w_str(&f->w, 101, "s");
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->pick_case, 101);
  assert_string_equal(k->p_str, "s");
  /* a message member twice: replaced, not merged */
  w_msg(&f->w, 102, &sub);
  sub.len = 0;
  required(&sub);
  w_str(&sub, 1500, "x");   /* unknown */
  w_uint(&sub, 2047, 5);
  w_msg(&f->w, 102, &sub);
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->pick_case, 102);
  assert_ptr_equal(k->p_msg->str, NULL);
  assert_int_equal(k->p_msg->t2047, 5);
  /* the proto2 oneof, and a double member */
  w_tag(&f->w, 104, PROTOBUF_C_WIRE_TYPE_64BIT);
  w_put(&f->w, "\0\0\0\0\0\0\xf8\x3f", 8);
  w_uint(&f->w, 110, 3);
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->pick_case, 104);
  assert_true(k->p_db == 1.5);
  assert_int_equal(k->alt_case, 110);
  assert_int_equal(k->a_u64, 3);
  /* a oneof in copies of a message merged: the later case stays, the
   * earlier one where the later copy has none, none where neither has */
  sub.len = 0;
  required(&sub);
  w_str(&sub, 111, "alt");
  w_msg(&f->w, 17, &sub);
  sub.len = 0;
  required(&sub);
  w_uint(&sub, 100, 8);
  w_msg(&f->w, 17, &sub);
  sub.len = 0;
  required(&sub);
  w_msg(&f->w, 17, &sub);
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->child->pick_case, 100);
  assert_int_equal(k->child->p_i32, 8);
  assert_int_equal(k->child->alt_case, 111);
  assert_string_equal(k->child->a_str, "alt");
  /* copies where neither sets a oneof do not merge */
  f->w.len = 0;
  required(&f->w);
  sub.len = 0;
  required(&sub);
  w_uint(&sub, 100, 8);
  w_msg(&f->w, 17, &sub);
  w_msg(&f->w, 17, &sub);
  bad(f, &kitchen_descriptor, &f->w);
  free(sub.p);
}

static void packed_and_unpacked_runs_mix_in_one_field(void **state)
{
  struct fx *f = *state;
  struct wbuf run = { 0 };
  kitchen *k;

  required(&f->w);
  w_uint(&f->w, 67, 1);                      /* rep_u32 */
  w_varint(&run, 2, 0);
  w_varint(&run, 300, 0);
  w_len(&f->w, 67, run.p, run.len);
  w_uint(&f->w, 67, 4);
  w_uint(&f->w, 82, 3);                      /* pk_s32, one at a time */
  w_uint(&f->w, 82, 4);
  w_len(&f->w, 92, "\x00\x00\x00\x00\x00\x00\xf0\x3f", 8);   /* pk_db */
  w_len(&f->w, 93, "\x01\x00\x01", 3);       /* pk_b */
  w_len(&f->w, 81, "", 0);                   /* pk_i32: an empty run */
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->n_rep_u32, 4);
  assert_int_equal(k->rep_u32[1], 2);
  assert_int_equal(k->rep_u32[2], 300);
  assert_int_equal(k->rep_u32[3], 4);
  assert_int_equal(k->n_pk_s32, 2);
  assert_int_equal(k->pk_s32[0], -2);
  assert_int_equal(k->pk_s32[1], 2);
  assert_true(k->n_pk_db == 1 && k->pk_db[0] == 1.0);
  assert_int_equal(k->n_pk_b, 3);
  assert_int_equal(k->n_pk_i32, 0);
  assert_null(k->pk_i32);
  /* a long run grows the array */
  run.len = 0;
  for (int i = 0; i < 5000; i++)
    w_varint(&run, (uint64_t)i * 977, 0);
  w_len(&f->w, 67, run.p, run.len);
  w_uint(&f->w, 67, 5);
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->n_rep_u32, 5005);
  assert_int_equal(k->rep_u32[5003], 4999 * 977);
  assert_int_equal(k->rep_u32[5004], 5);
  /* a bool run holds varints, true when a low bit is set */
  f->w.len = 0;
  required(&f->w);
  w_len(&f->w, 93, "\x02\x80\x00\x80\x01\x00", 6);
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_int_equal(k->n_pk_b, 4);
  assert_true(k->pk_b[0] && !k->pk_b[1] && k->pk_b[2] && !k->pk_b[3]);
  /* a fixed run has whole elements only */
  f->w.len = 0;
  required(&f->w);
  w_len(&f->w, 88, "\x01\x02\x03\x04\x05", 5);   /* pk_f32 */
  bad(f, &kitchen_descriptor, &f->w);
  f->w.len = 0;
  required(&f->w);
  w_len(&f->w, 87, "\x80\x80", 2);               /* pk_u32, unterminated */
  bad(f, &kitchen_descriptor, &f->w);
  free(run.p);
}

static void unknown_fields_keep_tag_wire_type_and_bytes(void **state)
{
  struct fx *f = *state;
  const ProtobufCMessageUnknownField *u;
  emd_event *ev;

  w_put(&f->w, "\x80\x00", 2);       /* field 0, in two bytes */
  w_varint(&f->w, 300, 0);
  w_str(&f->w, 99, "abc");
  w_tag(&f->w, UINT32_MAX, PROTOBUF_C_WIRE_TYPE_32BIT);  /* 5-byte tag */
  w_put(&f->w, "\x01\x02\x03\x04", 4);
  w_put(&f->w, "\x8a\x00\x02hi", 5);     /* collection, its tag overlong */
  w_tag(&f->w, 6, PROTOBUF_C_WIRE_TYPE_64BIT);
  w_put(&f->w, "12345678", 8);
  ev = ok(f, event_d, &f->w);
  assert_string_equal(ev->collection, "hi");
  assert_int_equal(ev->base.n_unknown_fields, 4);
  u = ev->base.unknown_fields;
  assert_int_equal(u[0].tag, 0);
  assert_int_equal(u[0].wire_type, PROTOBUF_C_WIRE_TYPE_VARINT);
  assert_int_equal(u[0].len, 2);
  assert_memory_equal(u[0].data, "\xac\x02", 2);
  assert_int_equal(u[1].tag, 99);
  assert_int_equal(u[1].len, 4);                   /* its length too */
  assert_memory_equal(u[1].data, "\x03" "abc", 4);
  assert_int_equal(u[2].tag, UINT32_MAX);
  assert_int_equal(u[2].wire_type, PROTOBUF_C_WIRE_TYPE_32BIT);
  assert_int_equal(u[3].tag, 6);
  assert_int_equal(u[3].len, 8);
}

static void wrong_wire_types_fail_but_a_bool_takes_any(void **state)
{
  static const struct {
    uint32_t num;
    unsigned wt;
    const char *value;
    size_t n;
  } bads[] = {
    { 1, PROTOBUF_C_WIRE_TYPE_VARINT, "\x01", 1 },       /* string */
    { 3, PROTOBUF_C_WIRE_TYPE_64BIT, "12345678", 8 },    /* uint32 */
    { 3, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, "\x01\x01", 2 },
    { 3, PROTOBUF_C_WIRE_TYPE_32BIT, "1234", 4 },
    { 5, PROTOBUF_C_WIRE_TYPE_VARINT, "\x00", 1 },       /* message */
    { 5, PROTOBUF_C_WIRE_TYPE_32BIT, "\0\0\0\0", 4 },
  };
  static const struct {
    unsigned wt;
    const char *value;
    size_t n;
    bool want;
  } bools[] = {
    { PROTOBUF_C_WIRE_TYPE_VARINT, "\x02", 1, true },
    { PROTOBUF_C_WIRE_TYPE_VARINT, "\x80\x00", 2, false },
    /* ten bytes whose value is 0 in 64 bits, but a low bit is set */
    { PROTOBUF_C_WIRE_TYPE_VARINT,
      "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02", 10, true },
    { PROTOBUF_C_WIRE_TYPE_64BIT, "\0\0\0\0\0\0\0\x80", 8, false },
    { PROTOBUF_C_WIRE_TYPE_64BIT, "\0\0\0\0\0\0\0\x01", 8, true },
    { PROTOBUF_C_WIRE_TYPE_32BIT, "\0\0\x40\0", 4, true },
    /* the length prefix counts: 0x01 has a low bit set */
    { PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, "\x01\x00", 2, true },
    { PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, "\x80\x00", 2, false },
  };
  struct fx *f = *state;
  emd_event *ev;
  size_t i;

  for (i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
    f->w.len = 0;
    w_tag(&f->w, bads[i].num, bads[i].wt);
    w_put(&f->w, bads[i].value, bads[i].n);
    bad(f, event_d, &f->w);
  }
  for (i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
    f->w.len = 0;
    w_tag(&f->w, 2, bools[i].wt);   /* fin */
    w_put(&f->w, bools[i].value, bools[i].n);
    ev = ok(f, event_d, &f->w);
    assert_int_equal(ev->fin, bools[i].want);
  }
}

static void bad_varints_tags_and_lengths_fail(void **state)
{
  struct fx *f = *state;
  emd_event *ev;
  unsigned wt;

  /* ten bytes, overlong: fine; eleven: not */
  w_put(&f->w, "\x18\x85\x80\x80\x80\x80\x80\x80\x80\x80\x00", 11);
  ev = ok(f, event_d, &f->w);
  assert_int_equal(ev->index, 5);
  w_put(&f->w, "\x18\x85\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", 12);
  bad(f, event_d, &f->w);
  /* a 32-bit field keeps the low bits */
  f->w.len = 0;
  w_uint(&f->w, 3, UINT64_C(0x100000007));
  ev = ok(f, event_d, &f->w);
  assert_int_equal(ev->index, 7);
  /* cut short */
  w_put(&f->w, "\x18\x85", 2);
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x0a\x05" "abcd", 6);      /* one byte missing */
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x0a", 1);                 /* no length */
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x0a\x80", 2);             /* half a length */
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x31\x01\x02", 3);         /* fixed64, unknown, cut */
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x8a", 1);                 /* half a tag */
  bad(f, event_d, &f->w);
  /* a tag in five bytes is fine, in six not */
  f->w.len = 0;
  w_put(&f->w, "\x8a\x80\x80\x80\x00\x01x", 7);
  ev = ok(f, event_d, &f->w);
  assert_string_equal(ev->collection, "x");
  f->w.len = 0;
  w_put(&f->w, "\x8a\x80\x80\x80\x80\x00\x01x", 8);
  bad(f, event_d, &f->w);
  /* a length in five bytes; its bits past 32 count */
  f->w.len = 0;
  w_put(&f->w, "\x0a\x83\x80\x80\x80\x00" "abc", 9);
  ev = ok(f, event_d, &f->w);
  assert_string_equal(ev->collection, "abc");
  w_put(&f->w, "\x0a\x83\x80\x80\x80\x70" "abc", 9);
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x0a\x83\x80\x80\x80\x80\x00" "abc", 10);  /* six bytes */
  bad(f, event_d, &f->w);
  /* groups and the wire types no one has, known field or not */
  for (wt = 3; wt < 8; wt++) {
    if (wt == PROTOBUF_C_WIRE_TYPE_32BIT)
      continue;
    f->w.len = 0;
    w_tag(&f->w, 1, wt);
    w_put(&f->w, "\0\0\0\0\0\0\0\0", 8);
    bad(f, event_d, &f->w);
    f->w.len = 0;
    w_tag(&f->w, 77, wt);
    w_tag(&f->w, 77, wt == 3 ? 4 : wt);
    bad(f, event_d, &f->w);
  }
  /* nothing at all: an empty message */
  f->w.len = 0;
  ev = ok(f, event_d, &f->w);
  assert_ptr_equal(ev->collection, protobuf_c_empty_string);
  assert_null(ev->event);
}

static void huge_length_prefixes_and_field_zero_fail(void **state)
{
  /* 2^32 - 5 to 2^32 - 1, 2^31: more than there is, more than INT_MAX */
  static const char *const prefixes[] = {
    "\xfb\xff\xff\xff\x0f", "\xfc\xff\xff\xff\x0f", "\xfd\xff\xff\xff\x1f",
    "\xfe\xff\xff\xff\x7f", "\xff\xff\xff\xff\x0f", "\x80\x80\x80\x80\x08",
  };
  static const uint32_t nums[] = { 99, 1, 2, 5 };   /* unknown, string,
                                                     * bool, message */
  struct fx *f = *state;
  emd_event *ev;
  size_t i, j;

  for (i = 0; i < 6; i++) {
    for (j = 0; j < 4; j++) {
      f->w.len = 0;
      w_tag(&f->w, nums[j], PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
      w_put(&f->w, prefixes[i], 5);
      w_put(&f->w, "\x08\x01", 2);
      bad(f, event_d, &f->w);
    }
    f->w.len = 0;
    required(&f->w);
    w_tag(&f->w, 67, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);   /* packed */
    w_put(&f->w, prefixes[i], 5);
    bad(f, &kitchen_descriptor, &f->w);
  }
  /* field number 0: a one-byte tag fails, a longer one is unknown */
  f->w.len = 0;
  w_put(&f->w, "\x00\x05", 2);
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x02\x00", 2);
  bad(f, event_d, &f->w);
  f->w.len = 0;
  w_put(&f->w, "\x80\x80\x80\x80\x00\x05", 6);
  ev = ok(f, event_d, &f->w);
  assert_int_equal(ev->base.n_unknown_fields, 1);
  assert_int_equal(ev->base.unknown_fields[0].tag, 0);
  /* past 32 bits, a tag's bits are dropped */
  f->w.len = 0;
  w_put(&f->w, "\xf8\xff\xff\xff\x7f\x05", 6);
  ev = ok(f, event_d, &f->w);
  assert_int_equal(ev->base.unknown_fields[0].tag, 0xffffffffu);
}

static void a_missing_required_field_fails(void **state)
{
  struct fx *f = *state;
  kitchen *k;

  w_str(&f->w, 43, "r");
  bad(f, &kitchen_descriptor, &f->w);        /* no r_i32 */
  f->w.len = 0;
  w_uint(&f->w, 41, 5);
  bad(f, &kitchen_descriptor, &f->w);        /* no r_by */
  w_len(&f->w, 43, "", 0);
  k = ok(f, &kitchen_descriptor, &f->w);     /* r_str has a default */
  assert_ptr_equal(k->r_str, kitchen_dflt);
  assert_int_equal(k->r_i32, 5);
  assert_int_equal(k->r_by.len, 0);
  assert_null(k->r_by.data);
  /* a sub-message missing one fails the whole */
  w_len(&f->w, 17, "\x08\x01", 2);
  bad(f, &kitchen_descriptor, &f->w);
  /* and so does a wrong wire type for a required field */
  f->w.len = 0;
  w_str(&f->w, 43, "r");
  w_tag(&f->w, 41, PROTOBUF_C_WIRE_TYPE_64BIT);
  w_put(&f->w, "12345678", 8);
  bad(f, &kitchen_descriptor, &f->w);
}

static void no_required_skips_the_check_for_required_fields(void **state)
{
  struct fx *f = *state;
  ProtobufCMessage *m;

  /* emitd's trees are proto3: the codec may skip the check */
  assert_false(has_required(event_d));
  assert_false(has_required(&emitd__v1__dead_record__descriptor));
  assert_true(has_required(&kitchen_descriptor));
  w_str(&f->w, 43, "r");
  bad(f, &kitchen_descriptor, &f->w);
  assert_int_equal(emd_unpack(&kitchen_descriptor, f->w.p, f->w.len, &f->a,
                              EMD_UNPACK_NO_REQUIRED, &m, NULL), 0);
  assert_int_equal(((kitchen *)m)->r_i32, 0);
}

static void optional_fields_set_has_and_keep_defaults(void **state)
{
  struct fx *f = *state;
  kitchen *k;

  required(&f->w);
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_false(k->has_o_i32);
  assert_int_equal(k->o_i32, 7);
  assert_ptr_equal(k->o_str, kitchen_dflt);
  w_uint(&f->w, 21, 0);
  w_len(&f->w, 36, "", 0);
  w_str(&f->w, 35, "dflt");
  k = ok(f, &kitchen_descriptor, &f->w);
  assert_true(k->has_o_i32);
  assert_int_equal(k->o_i32, 0);
  assert_true(k->has_o_by);
  assert_true(k->o_str != kitchen_dflt);
  assert_string_equal(k->o_str, "dflt");
  /* merged: has_ decides for scalars, the default pointer for strings */
  f->w.len = 0;
  required(&f->w);
  {
    struct wbuf s1 = { 0 }, s2 = { 0 };

    required(&s1);
    w_uint(&s1, 21, 4);
    w_str(&s1, 35, "one");
    w_uint(&s1, 1, 9);
    w_uint(&s1, 100, 1);   /* both oneofs, or the copies do not merge */
    w_uint(&s1, 110, 1);
    required(&s2);
    w_uint(&s2, 22, 5);
    w_msg(&f->w, 37, &s1);
    w_msg(&f->w, 37, &s2);
    k = ok(f, &kitchen_descriptor, &f->w);
    assert_int_equal(k->o_msg->pick_case, 100);
    assert_int_equal(k->o_msg->alt_case, 110);
    assert_true(k->o_msg->has_o_i32);
    assert_int_equal(k->o_msg->o_i32, 4);
    assert_int_equal(k->o_msg->o_s32, -3);
    assert_string_equal(k->o_msg->o_str, "one");
    assert_int_equal(k->o_msg->i32, 0);
    free(s1.p);
    free(s2.p);
  }
}

static void strings_keep_nuls_and_bad_utf8_is_reported(void **state)
{
  struct fx *f = *state;
  ProtobufCMessage *m;
  emd_event *ev;
  unsigned saw;

  w_len(&f->w, 1, "ab\0\xff", 4);
  ev = ok(f, event_d, &f->w);
  assert_string_equal(ev->collection, "ab");
  assert_memory_equal(ev->collection, "ab\0\xff", 5);
  assert_int_equal(emd_unpack(event_d, f->w.p, f->w.len, &f->a, 0, &m, &saw),
                   0);
  assert_int_equal(saw, EMD_UNPACK_SAW_BAD_UTF8);   /* a hint, on the
                                                     * safe side */
  f->w.len = 0;
  w_str(&f->w, 1, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 long enough");
  w_str(&f->w, 4, "\xef\xbf\xbf");
  assert_int_equal(emd_unpack(event_d, f->w.p, f->w.len, &f->a, 0, &m, &saw),
                   0);
  assert_int_equal(saw, 0);
  static const char *const invalid[] = {
    "\xc3", "\xc0\x80", "\xe0\x80\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
    "\xf5\x80\x80\x80", "a\x80", "12345678\xff", "\xe2\x82",
  };
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    f->w.len = 0;
    w_str(&f->w, 4, invalid[i]);
    ok(f, event_d, &f->w);
    assert_int_equal(emd_unpack(event_d, f->w.p, f->w.len, &f->a, 0, &m,
                                &saw), 0);
    assert_int_equal(saw, EMD_UNPACK_SAW_BAD_UTF8);
  }
}

static void drop_unknown_keeps_no_unknown_field(void **state)
{
  struct fx *f = *state;
  struct wbuf te = { 0 };
  ProtobufCMessage *m;
  emd_event *ev;
  unsigned saw;

  w_uint(&te, 50, 1);
  w_str(&te, 2, "id");
  w_msg(&f->w, 5, &te);
  w_uint(&f->w, 50, 1);
  ev = ok(f, event_d, &f->w);    /* with and without, against protobuf-c */
  assert_int_equal(ev->event->base.n_unknown_fields, 1);
  assert_int_equal(emd_unpack(event_d, f->w.p, f->w.len, &f->a,
                              EMD_UNPACK_DROP_UNKNOWN, &m, &saw), 0);
  ev = (emd_event *)m;
  assert_int_equal(saw, EMD_UNPACK_SAW_UNKNOWN);
  assert_int_equal(ev->base.n_unknown_fields, 0);
  assert_int_equal(ev->event->base.n_unknown_fields, 0);
  assert_string_equal(ev->event->id, "id");
  free(te.p);
}

static void arrays_grow_and_messages_nest_deep(void **state)
{
  struct fx *f = *state;
  struct wbuf te = { 0 }, c = { 0 }, in = { 0 }, out = { 0 };
  emd_event *ev;
  kitchen *k;
  int i;

  ctx(&c, "type.googleapis.com/buildless.context.Build");
  for (i = 0; i < 1000; i++)
    w_msg(&te, 5, &c);
  w_msg(&f->w, 5, &te);
  ev = ok(f, event_d, &f->w);
  assert_int_equal(ev->event->n_context, 1000);
  assert_string_equal(ev->event->context[999]->event, "started");
  /* 2000 kitchens deep */
  required(&in);
  for (i = 0; i < 2000; i++) {
    out.len = 0;
    required(&out);
    w_msg(&out, 17, &in);
    w_set(&in, out.p, out.len);
  }
  k = ok(f, &kitchen_descriptor, &in);
  for (i = 0; i < 2000; i++)
    k = k->child;
  assert_null(k->child);
  free(te.p);
  free(c.p);
  free(in.p);
  free(out.p);
}

static void plans_read_what_they_can_and_leave_the_rest(void **state)
{
  struct fx *f = *state;
  struct wbuf c = { 0 }, k = { 0 };
  ProtobufCMessage *m;
  sparse *sp;
  odd *o;
  int i;

  /* a planned number in a two-byte tag, a gap, numbers past 15 */
  w_varint(&f->w, 1 << 3 | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, 1);
  w_varint(&f->w, 3, 0);
  w_put(&f->w, "abc", 3);
  w_uint(&f->w, 12, 5);
  w_str(&f->w, 16, "t16");
  w_str(&f->w, 17, "r1");
  w_str(&c, 1, "in 2048");
  w_msg(&f->w, 2048, &c);
  sp = ok(f, &sparse_descriptor, &f->w);
  assert_string_equal(sp->str, "abc");
  assert_int_equal(sp->base.n_unknown_fields, 1);
  assert_int_equal(sp->base.unknown_fields[0].tag, 12);
  assert_string_equal(sp->t16, "t16");
  assert_int_equal(sp->n_rep_str, 1);
  assert_string_equal(sp->t2048->str, "in 2048");
  assert_ptr_equal(sp->t2048->t16, protobuf_c_empty_string);

  /* other wire types: a bool takes any, the rest fail */
  f->w.len = 0;
  w_len(&f->w, 6, "\0\2", 2);
  w_tag(&f->w, 13, PROTOBUF_C_WIRE_TYPE_64BIT);
  w_put(&f->w, "\0\0\0\0\0\0\xf0\x3f", 8);
  sp = ok(f, &sparse_descriptor, &f->w);
  assert_true(sp->b);
  assert_true(sp->db == 1.0);
  f->w.len = 0;
  w_tag(&f->w, 7, PROTOBUF_C_WIRE_TYPE_32BIT);
  w_put(&f->w, "\1\0\0\0", 4);
  bad(f, &sparse_descriptor, &f->w);
  f->w.len = 0;
  w_uint(&f->w, 1, 5);
  bad(f, &sparse_descriptor, &f->w);
  f->w.len = 0;
  w_uint(&f->w, 3, 5);
  bad(f, &sparse_descriptor, &f->w);
  f->w.len = 0;
  w_tag(&f->w, 14, PROTOBUF_C_WIRE_TYPE_64BIT);
  w_put(&f->w, "\0\0\0\0\0\0\xf0\x3f", 8);
  bad(f, &sparse_descriptor, &f->w);

  /* zigzag, cut short */
  f->w.len = 0;
  w_uint(&f->w, 7, 3);
  w_uint(&f->w, 8, 4);
  sp = ok(f, &sparse_descriptor, &f->w);
  assert_int_equal(sp->s32, -2);
  assert_int_equal(sp->s64, 2);
  f->w.len--;
  w_byte(&f->w, 0x84);
  bad(f, &sparse_descriptor, &f->w);

  /* a sub-message twice is merged; a repeated one grows past 4 and 8 */
  f->w.len = c.len = 0;
  w_str(&c, 1, "first");
  w_uint(&c, 7, 1);
  w_msg(&f->w, 3, &c);
  c.len = 0;
  w_uint(&c, 6, 1);
  w_msg(&f->w, 3, &c);
  for (i = 0; i < 9; i++) {
    c.len = 0;
    w_uint(&c, 7, (uint64_t)i * 2);
    w_msg(&f->w, 5, &c);
  }
  sp = ok(f, &sparse_descriptor, &f->w);
  assert_string_equal(sp->child->str, "first");
  assert_true(sp->child->b);
  assert_int_equal(sp->child->s32, 0);   /* proto3: the later 0 wins */
  assert_int_equal(sp->n_kids, 9);
  assert_int_equal(sp->kids[8]->s32, 8);

  /* optional, repeated and packable fields among the planned numbers */
  f->w.len = 0;
  w_uint(&f->w, 9, 0);
  w_len(&f->w, 11, "", 0);
  w_len(&f->w, 15, "\1\2\3", 3);
  w_uint(&f->w, 15, 4);
  sp = ok(f, &sparse_descriptor, &f->w);
  assert_true(sp->has_o_u64);
  assert_ptr_equal(sp->o_str, kitchen_dflt);
  assert_int_equal(sp->n_rep_by, 1);
  assert_int_equal(sp->n_rep_u32, 4);
  assert_int_equal(sp->rep_u32[3], 4);

  /* below a planned message, a type with required fields */
  f->w.len = 0;
  w_str(&k, 15, "no required");
  w_msg(&f->w, 4, &k);
  bad(f, &sparse_descriptor, &f->w);
  assert_int_equal(emd_unpack(&sparse_descriptor, f->w.p, f->w.len, &f->a,
                              EMD_UNPACK_NO_REQUIRED, &m, NULL), 0);
  assert_string_equal(((sparse *)m)->k->str, "no required");
  required(&k);
  f->w.len = 0;
  w_msg(&f->w, 4, &k);
  sp = ok(f, &sparse_descriptor, &f->w);
  assert_int_equal(sp->k->r_i32, 1);

  /* oneof members replace each other; a message marked packed fails as
   * a packed run */
  f->w.len = c.len = 0;
  w_str(&f->w, 2, "s");
  w_str(&c, 2, "x");
  w_msg(&f->w, 4, &c);
  w_uint(&f->w, 3, 7);
  o = ok(f, &odd_descriptor, &f->w);
  assert_string_equal(o->str, "s");
  assert_int_equal(o->pick_case, 3);
  assert_int_equal(o->p_i32, 7);
  w_msg(&f->w, 1, &c);
  bad(f, &odd_descriptor, &f->w);
  free(c.p);
  free(k.p);
}

/* ------------------------------------------------------------------ */
/* plans from several threads */

#define THREADS 4
#define COPIES 8
#define INPUTS 300

/* Descriptors no other test uses, so that their plans are made here. */
static ProtobufCMessageDescriptor sparse_copies[COPIES];

struct job {
  pthread_barrier_t *go;
  const struct wbuf *in;         /* INPUTS of them */
  uint8_t *const *want;          /* protobuf-c's result, packed, or NULL */
  const size_t *want_len;
  unsigned long wrong;
};

/* Each input with each copy, in the same order in every thread, so that
 * they ask for the same new plans at once. */
static void *decode_all(void *arg)
{
  struct job *j = arg;
  struct emd_arena a = { 0 };
  ProtobufCMessage *m;
  size_t i, k, len;
  uint8_t *p;

  pthread_barrier_wait(j->go);
  for (k = 0; k < COPIES; k++) {
    for (i = 0; i < INPUTS; i++) {
      emd_arena_reset(&a);
      if (emd_unpack(&sparse_copies[k], j->in[i].p, j->in[i].len, &a, 0, &m,
                     NULL) != 0) {
        j->wrong += j->want[i] != NULL;
        continue;
      }
      len = protobuf_c_message_get_packed_size(m);
      p = malloc(len + 1);
      if (j->want[i] == NULL || m->descriptor != &sparse_copies[k] ||
          p == NULL || protobuf_c_message_pack(m, p) != len ||
          len != j->want_len[i] || memcmp(p, j->want[i], len) != 0)
        j->wrong++;
      free(p);
    }
  }
  emd_arena_free(&a);
  return NULL;
}

static void plans_are_made_once_by_threads_at_once(void **state)
{
  static struct wbuf in[INPUTS];
  static uint8_t *want[INPUTS];
  static size_t want_len[INPUTS];
  struct job jobs[THREADS];
  pthread_t th[THREADS];
  pthread_barrier_t go;
  struct rng r = { 21 };
  ProtobufCMessage *m;
  size_t i;

  (void)state;
  for (i = 0; i < COPIES; i++)
    sparse_copies[i] = sparse_descriptor;
  for (i = 0; i < INPUTS; i++) {
    gen_message(&r, &in[i], &sparse_descriptor, 0);
    w_put(&in[i], "", 0);   /* never NULL */
    m = protobuf_c_message_unpack(&sparse_descriptor, NULL, in[i].len,
                                  in[i].p);
    want[i] = m != NULL ? packed_by_protobuf_c(m, &want_len[i]) : NULL;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  assert_int_equal(pthread_barrier_init(&go, NULL, THREADS), 0);
  for (i = 0; i < THREADS; i++) {
    jobs[i] = (struct job){ &go, in, want, want_len, 0 };
    assert_int_equal(pthread_create(&th[i], NULL, decode_all, &jobs[i]), 0);
  }
  for (i = 0; i < THREADS; i++) {
    assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(jobs[i].wrong, 0);
  }
  pthread_barrier_destroy(&go);
  for (i = 0; i < INPUTS; i++) {
    free(in[i].p);
    free(want[i]);
  }
}

/* More message types than the table has plans for: the types past it are
 * read by their descriptors, with the same results. Run last: it leaves
 * the table full. */
static ProtobufCMessageDescriptor sparse_many[EMD_UNPACK_PLANS + 100];

static void more_types_than_plans_unpack_the_same(void **state)
{
  struct fx *f = *state;
  struct rng r = { 31 };
  size_t i, k, n = sizeof(sparse_many) / sizeof(sparse_many[0]);

  for (i = 0; i < n; i++) {
    sparse_many[i] = sparse_descriptor;
    for (k = 0; k < 4; k++) {
      f->w.len = 0;
      gen_message(&r, &f->w, &sparse_many[i], 0);
      w_put(&f->w, "", 0);
      emd_arena_reset(&f->a);
      unpack_both(&sparse_many[i], f->w.p, f->w.len, &f->a, NULL, NULL);
    }
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(scalars_last_one_wins_and_repeated_fields_collect),
    T(a_message_given_twice_is_merged_as_protobuf_c_merges),
    T(oneof_members_replace_each_other_and_set_the_case),
    T(packed_and_unpacked_runs_mix_in_one_field),
    T(unknown_fields_keep_tag_wire_type_and_bytes),
    T(wrong_wire_types_fail_but_a_bool_takes_any),
    T(bad_varints_tags_and_lengths_fail),
    T(huge_length_prefixes_and_field_zero_fail),
    T(a_missing_required_field_fails),
    T(no_required_skips_the_check_for_required_fields),
    T(optional_fields_set_has_and_keep_defaults),
    T(strings_keep_nuls_and_bad_utf8_is_reported),
    T(drop_unknown_keeps_no_unknown_field),
    T(arrays_grow_and_messages_nest_deep),
    T(full_event_unpacks_as_protobuf_c_does),
    T(random_events_unpack_as_protobuf_c_does),
    T(every_type_and_label_unpacks_as_protobuf_c_does),
    T(emitd_records_unpack_as_protobuf_c_does),
    T(sparse_types_unpack_as_protobuf_c_does),
    T(plans_read_what_they_can_and_leave_the_rest),
    T(plans_are_made_once_by_threads_at_once),
    T(more_types_than_plans_unpack_the_same),   /* last: fills the table */
#undef T
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
