/* test_pack.c: lib/emd_pack.c — every message it packs must come out byte
 * for byte as protobuf_c_message_pack() writes it: a fully populated
 * Event (with unknown fields, set by hand and from unpacking), an empty
 * one, thousands of random ones, emitd's own records, and a hand-made
 * descriptor with every type, label, packed run and oneof protobuf-c
 * knows; every sub-message on its own; and the buffer running out of
 * room at every place and growing. */
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emd_arena.h"
#include "emd_event.h"
#include "emd_pack.h"
#include "emd_pack_event.h"
#include "pb_events.h"

/* ------------------------------------------------------------------ */
/* the check everything goes through */

/* Packs m with protobuf-c and with emd_pack() into b and insists on the
 * same bytes and the length protobuf-c's get_packed_size gives. */
static void same_as_protobuf_c(const ProtobufCMessage *m,
                               struct emd_pack_buf *b)
{
  size_t want = protobuf_c_message_get_packed_size(m), got = 0;
  uint8_t *theirs = malloc(want + 1);
  const uint8_t *ours = NULL;
  /* for an Event, emd_pack_event from a buffer of b's size as it is now */
  struct emd_pack_buf e = { 0 };
  bool event = m->descriptor == &buildless__service__v1__event__descriptor;

  assert_non_null(theirs);
  if (event && b->cap > 0) {
    e.buf = malloc(b->cap);
    assert_non_null(e.buf);
    e.cap = b->cap;
  }
  assert_int_equal(protobuf_c_message_pack(m, theirs), want);
  assert_int_equal(emd_pack(m, b, &ours, &got), 0);
  assert_int_equal(got, want);
  assert_non_null(ours);
  /* the bytes sit at the end of the buffer */
  assert_ptr_equal(ours + got, b->buf + b->cap);
  assert_memory_equal(ours, theirs, want);
  /* an Event: emd_pack_event's walk written out for the schema too */
  if (event) {
    ours = NULL;
    got = 0;
    assert_int_equal(emd_pack_event((const emd_event *)m, &e, &ours, &got),
                     0);
    assert_int_equal(got, want);
    assert_ptr_equal(ours + got, e.buf + e.cap);
    assert_memory_equal(ours, theirs, want);
    emd_pack_buf_free(&e);
  }
  free(theirs);
}

/* ------------------------------------------------------------------ */
/* a fully populated Event (every field of every message) */

/* full_event: pb_events.h */

/* Unknown fields of each wire type, one with the largest field number. */
static const uint8_t unk_varint[] = { 0x96, 0x01 };
static const uint8_t unk_fixed64[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
static const uint8_t unk_len[] = { 3, 'a', 'b', 'c' };
static const uint8_t unk_fixed32[] = { 9, 8, 7, 6 };
static ProtobufCMessageUnknownField unknowns[] = {
  { 1000, PROTOBUF_C_WIRE_TYPE_VARINT, 2, (uint8_t *)unk_varint },
  { 15, PROTOBUF_C_WIRE_TYPE_64BIT, 8, (uint8_t *)unk_fixed64 },
  { 536870911, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, 4, (uint8_t *)unk_len },
  { 16, PROTOBUF_C_WIRE_TYPE_32BIT, 4, (uint8_t *)unk_fixed32 },
};

static void add_unknowns(ProtobufCMessage *m, size_t n)
{
  m->n_unknown_fields = n;
  m->unknown_fields = unknowns;
}

static void full_event_packs_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct full *x = malloc(sizeof(*x));

  (void)state;
  assert_non_null(x);
  full_event(x);
  same_as_protobuf_c(&x->ev.base, &c);
  /* the same with unknown fields on every message, one to four each */
  add_unknowns(&x->ev.base, 4);
  add_unknowns(&x->te.base, 1);
  add_unknowns(&x->c[1].base, 2);
  add_unknowns(&x->detail.base, 3);
  add_unknowns(&x->tenant.base, 4);
  add_unknowns(&x->user.base, 1);
  add_unknowns(&x->repo.base, 2);
  add_unknowns(&x->client.base, 3);
  add_unknowns(&x->t[2].base, 4);
  add_unknowns(&x->os.base, 1);
  add_unknowns(&x->agent.base, 2);
  add_unknowns(&x->v[0].base, 3);
  add_unknowns(&x->vos.base, 4);
  add_unknowns(&x->vagent.base, 1);
  add_unknowns(&x->timing.base, 2);
  add_unknowns(&x->loc.base, 3);
  add_unknowns(&x->point.base, 4);
  add_unknowns(&x->data.base, 1);
  same_as_protobuf_c(&x->ev.base, &c);
  emd_pack_buf_free(&c);
  free(x);
}

/* Bytes of m, malloc'd. */
static uint8_t *pack_of(const ProtobufCMessage *m, size_t *len)
{
  uint8_t *p;

  *len = protobuf_c_message_get_packed_size(m);
  p = malloc(*len + 1);
  assert_non_null(p);
  assert_int_equal(protobuf_c_message_pack(m, p), *len);
  return p;
}

/* out = head, then field `id` as a sub-message of body + extra, then
 * extra: a message whose last field's value and whose own end carry
 * fields the schema does not know. */
static size_t splice(uint8_t *out, const uint8_t *head, size_t head_len,
                     uint32_t id, const uint8_t *body, size_t body_len,
                     const uint8_t *extra, size_t extra_len)
{
  uint8_t *p = out;
  size_t n = body_len + extra_len;

  memcpy(p, head, head_len);
  p += head_len;
  *p++ = (uint8_t)(id << 3 | 2);
  while (n >= 0x80) {
    *p++ = (uint8_t)(n | 0x80);
    n >>= 7;
  }
  *p++ = (uint8_t)n;
  memcpy(p, body, body_len);
  p += body_len;
  memcpy(p, extra, extra_len);
  p += extra_len;
  memcpy(p, extra, extra_len);
  p += extra_len;
  return (size_t)(p - out);
}

static void unpacked_event_keeps_its_unknown_fields(void **state)
{
  /* field 99 varint 300, field 100 "xyz", field 101 fixed32, field 102
   * fixed64, field 2047 varint 1 */
  static const uint8_t extra[] = {
    0x98, 0x06, 0xac, 0x02,
    0xa2, 0x06, 3, 'x', 'y', 'z',
    0xad, 0x06, 1, 2, 3, 4,
    0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8,
    0xf8, 0x7f, 1,
  };
  struct emd_pack_buf c = { 0 };
  struct full *x = malloc(sizeof(*x));
  uint8_t *any, *te, *ev, buf_te[4096], buf_ev[8192];
  size_t any_len, te_len, ev_len, n_te, n_ev;
  emd_event *back;

  (void)state;
  assert_non_null(x);
  full_event(x);
  /* TelemetryEvent: everything but data (field 11, its last), then data
   * with extra fields inside and after it */
  any = pack_of(&x->data.base, &any_len);
  x->te.data = NULL;
  te = pack_of(&x->te.base, &te_len);
  n_te = splice(buf_te, te, te_len, 11, any, any_len, extra, sizeof(extra));
  /* Event: everything but event (field 5, its last), then the above */
  x->ev.event = NULL;
  ev = pack_of(&x->ev.base, &ev_len);
  n_ev = splice(buf_ev, ev, ev_len, 5, buf_te, n_te, extra, sizeof(extra));

  back = buildless__service__v1__event__unpack(NULL, n_ev, buf_ev);
  assert_non_null(back);
  assert_int_equal(back->base.n_unknown_fields, 5);
  /* its own five after data, and the Event's five inside it */
  assert_int_equal(back->event->base.n_unknown_fields, 10);
  assert_int_equal(back->event->data->base.n_unknown_fields, 5);
  same_as_protobuf_c(&back->base, &c);
  buildless__service__v1__event__free_unpacked(back, NULL);
  emd_pack_buf_free(&c);
  free(ev);
  free(te);
  free(any);
  free(x);
}

/* ------------------------------------------------------------------ */
/* empty messages */

static void empty_event_packs_to_nothing(void **state)
{
  struct emd_pack_buf c = { 0 };
  emd_event ev;
  emd_tevent te;
  Buildless__Telemetry__EventDetail detail;
  const uint8_t *out = NULL;
  size_t len = 99;

  (void)state;
  buildless__service__v1__event__init(&ev);
  assert_int_equal(emd_pack(&ev.base, &c, &out, &len), 0);
  assert_int_equal(len, 0);
  assert_ptr_equal(out, c.buf + c.cap);
  same_as_protobuf_c(&ev.base, &c);
  /* empty sub-messages still go out, as a tag and a zero length */
  buildless__telemetry__telemetry_event__init(&te);
  buildless__telemetry__event_detail__init(&detail);
  te.detail = &detail;
  ev.event = &te;
  same_as_protobuf_c(&ev.base, &c);
  assert_int_equal(emd_pack(&ev.base, &c, &out, &len), 0);
  assert_int_equal(len, 4);
  assert_memory_equal(out, "\x2a\x02\x32\x00", 4);
  /* proto3 zeros and empty strings stay out */
  ev.collection = "";
  ev.fin = 0;
  te.timer.len = 0;
  te.timer.data = (uint8_t *)"x";
  same_as_protobuf_c(&ev.base, &c);
  emd_pack_buf_free(&c);
}

/* ------------------------------------------------------------------ */
/* random values */

/* rnd_event and its generator: pb_events.h */

static void random_events_pack_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  struct rng r = { UINT64_C(0x5eed0fe7e17) };
  int i;

  (void)state;
  for (i = 0; i < 3000; i++) {
    same_as_protobuf_c(&rnd_event(&r, &a)->base, &c);
    emd_arena_reset(&a);
  }
  emd_arena_free(&a);
  emd_pack_buf_free(&c);
}

/* ------------------------------------------------------------------ */
/* emitd's own messages */

static void emitd_records_pack_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  struct rng r = { 42 };
  struct full *x = malloc(sizeof(*x));
  emd_ack ack;
  emd_spool_record rec;
  emd_spool_record_view view;
  emd_dead_record dead;
  int i;

  (void)state;
  assert_non_null(x);
  full_event(x);
  emitd__v1__ack__init(&ack);
  same_as_protobuf_c(&ack.base, &c);
  ack.ok = 1;
  ack.id = "01JD8X3QZK4M2N5P7R9T1V3W5Y";
  ack.seq = UINT64_MAX;
  ack.timer.data = (uint8_t *)"0123456789abcdef";
  ack.timer.len = 16;
  ack.ordinal = 300;
  ack.duplicate = 1;
  ack.error = "invalid";
  ack.message = "event.id: must match ^[a-zA-Z0-9]{12,64}$";
  ack.line = 1;
  same_as_protobuf_c(&ack.base, &c);

  emitd__v1__spool_record__init(&rec);
  same_as_protobuf_c(&rec.base, &c);
  rec.event = &x->ev;
  rec.accepted_ms = 1732761600123u;
  rec.attempts = 3;
  same_as_protobuf_c(&rec.base, &c);

  emitd__v1__spool_record_view__init(&view);
  view.event.data = (uint8_t *)x->long_user;
  view.event.len = 200;
  view.accepted_ms = 1;
  same_as_protobuf_c(&view.base, &c);

  emitd__v1__dead_record__init(&dead);
  dead.record = &rec;
  dead.reason = "rejected";
  dead.status = 400;
  dead.excerpt.data = (uint8_t *)"{\"error\":\"bad\"}";
  dead.excerpt.len = 15;
  dead.time_ms = 1732761600999u;
  same_as_protobuf_c(&dead.base, &c);

  for (i = 0; i < 500; i++) {
    emitd__v1__ack__init(&ack);
    ack.ok = (protobuf_c_boolean)(rnd(&r) % 3);
    ack.id = rnd_str(&r, &a, true);
    ack.seq = chance(&r, 2) ? 0 : rnd64(&r);
    rnd_bytes(&r, &a, &ack.timer);
    ack.ordinal = chance(&r, 2) ? 0 : rnd32(&r);
    ack.error = rnd_str(&r, &a, true);
    ack.message = rnd_str(&r, &a, true);
    ack.line = chance(&r, 2) ? 0 : rnd32(&r);
    same_as_protobuf_c(&ack.base, &c);
    rec.event = rnd_event(&r, &a);
    rec.accepted_ms = chance(&r, 2) ? 0 : rnd64(&r);
    rec.attempts = chance(&r, 2) ? 0 : rnd32(&r);
    same_as_protobuf_c(&rec.base, &c);
    dead.record = chance(&r, 4) ? NULL : &rec;
    same_as_protobuf_c(&dead.base, &c);
    emd_arena_reset(&a);
  }
  emd_arena_free(&a);
  emd_pack_buf_free(&c);
  free(x);
}

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
  /* proto2 required, ids 41..57 */
#define X(i, T, ct, nm) ct r_##nm;
  SCALARS(X)
#undef X
  char *r_str;
  ProtobufCBinaryData r_by;
  kitchen *r_msg;
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
static const ProtobufCMessageDescriptor kitchen_descriptor;

#define F(name, id, label, type, q, off, desc, dflt, flags)             \
  { name, id, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type, q,      \
    offsetof(kitchen, off), desc, dflt, flags, 0, NULL, NULL }
#define Q(m) offsetof(kitchen, m)
#define ONEOF PROTOBUF_C_FIELD_FLAG_ONEOF

static const ProtobufCFieldDescriptor kitchen_fields[] = {
#define X(i, T, ct, nm) F(#nm, i, NONE, T, 0, nm, NULL, NULL, 0),
  SCALARS(X)
#undef X
  F("str", 15, NONE, STRING, 0, str, NULL, NULL, 0),
  F("by", 16, NONE, BYTES, 0, by, NULL, NULL, 0),
  F("child", 17, NONE, MESSAGE, 0, child, &kitchen_descriptor, NULL, 0),
#define X(i, T, ct, nm)                                                 \
  F("o_" #nm, 20 + i, OPTIONAL, T, Q(has_o_##nm), o_##nm, NULL, NULL, 0),
  SCALARS(X)
#undef X
  F("o_str", 35, OPTIONAL, STRING, 0, o_str, NULL, kitchen_dflt, 0),
  F("o_by", 36, OPTIONAL, BYTES, Q(has_o_by), o_by, NULL, NULL, 0),
  F("o_msg", 37, OPTIONAL, MESSAGE, 0, o_msg, &kitchen_descriptor, NULL, 0),
#define X(i, T, ct, nm) F("r_" #nm, 40 + i, REQUIRED, T, 0, r_##nm, NULL, \
                          NULL, 0),
  SCALARS(X)
#undef X
  F("r_str", 55, REQUIRED, STRING, 0, r_str, NULL, NULL, 0),
  F("r_by", 56, REQUIRED, BYTES, 0, r_by, NULL, NULL, 0),
  F("r_msg", 57, REQUIRED, MESSAGE, 0, r_msg, &kitchen_descriptor, NULL, 0),
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
  F("p_i32", 100, NONE, INT32, Q(pick_case), p_i32, NULL, &kitchen_dflt_i32,
    ONEOF),
  F("p_str", 101, NONE, STRING, Q(pick_case), p_str, NULL, kitchen_dflt,
    ONEOF),
  F("p_msg", 102, NONE, MESSAGE, Q(pick_case), p_msg, &kitchen_descriptor,
    NULL, ONEOF),
  F("p_by", 103, NONE, BYTES, Q(pick_case), p_by, NULL, NULL, ONEOF),
  F("p_db", 104, NONE, DOUBLE, Q(pick_case), p_db, NULL, NULL, ONEOF),
  F("a_u64", 110, OPTIONAL, UINT64, Q(alt_case), a_u64, NULL, NULL, ONEOF),
  F("a_str", 111, OPTIONAL, STRING, Q(alt_case), a_str, NULL, kitchen_dflt,
    ONEOF),
  F("t2047", 2047, NONE, UINT32, 0, t2047, NULL, NULL, 0),
  F("t2048", 2048, NONE, UINT32, 0, t2048, NULL, NULL, 0),
  F("t262143", 262143, NONE, UINT32, 0, t262143, NULL, NULL, 0),
  F("t262144", 262144, NONE, UINT32, 0, t262144, NULL, NULL, 0),
  F("t33554431", 33554431, NONE, UINT32, 0, t33554431, NULL, NULL, 0),
  F("t33554432", 33554432, NONE, UINT32, 0, t33554432, NULL, NULL, 0),
  F("tmax", 536870911, NONE, STRING, 0, tmax, NULL, NULL, 0),
};

static void kitchen_init(ProtobufCMessage *m)
{
  kitchen *k = (kitchen *)m;

  memset(k, 0, sizeof(*k));
  k->base.descriptor = &kitchen_descriptor;
  k->o_str = (char *)kitchen_dflt;
  k->o_i32 = kitchen_dflt_i32;
}

static const ProtobufCMessageDescriptor kitchen_descriptor = {
  PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "test.Kitchen", "Kitchen", "Kitchen",
  "test", sizeof(kitchen),
  sizeof(kitchen_fields) / sizeof(kitchen_fields[0]), kitchen_fields,
  NULL, 0, NULL, kitchen_init, NULL, NULL, NULL,
};

static kitchen *new_kitchen(struct emd_arena *a)
{
  kitchen *k = emd_arena_alloc(a, sizeof(*k));

  assert_non_null(k);
  kitchen_init(&k->base);
  return k;
}

/* One random value of type T into *p. */
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
  rnd_scalar(r, PROTOBUF_C_TYPE_##T, &k->o_##nm);                       \
  rnd_scalar(r, PROTOBUF_C_TYPE_##T, &k->r_##nm);
  SCALARS(X)
#undef X
  k->str = rnd_str(r, a, true);
  rnd_bytes(r, a, &k->by);
  k->child = rnd_sub(r, a, depth);
  if (!chance(r, 3))
    k->o_str = rnd_str(r, a, true);   /* else the default */
  k->has_o_by = chance(r, 2);
  rnd_bytes(r, a, &k->o_by);
  k->o_msg = rnd_sub(r, a, depth);
  k->r_str = rnd_str(r, a, true);
  rnd_bytes(r, a, &k->r_by);
  k->r_msg = rnd_sub(r, a, depth);
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

static void every_type_and_label_packs_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  struct rng r = { 7 };
  kitchen *k;
  int i;

  (void)state;
  /* empty, but for the required fields (zeros, a NULL string and a NULL
   * message: protobuf-c writes them anyway) and the optional string's
   * default, which stays out */
  k = new_kitchen(&a);
  same_as_protobuf_c(&k->base, &c);
  for (i = 0; i < 2000; i++) {
    same_as_protobuf_c(&rnd_kitchen(&r, &a, 0)->base, &c);
    emd_arena_reset(&a);
  }
  emd_arena_free(&a);
  emd_pack_buf_free(&c);
}

static void packed_runs_and_oneofs_pack_as_protobuf_c_does(void **state)
{
  static const int32_t neg[] = { -1, 0, 1, INT32_MIN, INT32_MAX };
  static const protobuf_c_boolean bools[] = { 0, 1, 2, -1 };
  static const double dbl[] = { 0.0, -0.0, 1.5 };
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  kitchen *k = new_kitchen(&a), *sub = new_kitchen(&a);
  int32_t *many = emd_arena_alloc(&a, 20 * sizeof(*many));
  size_t i;

  (void)state;
  k->n_pk_i32 = 5;
  k->pk_i32 = (int32_t *)neg;   /* 10-byte varints for the negatives */
  k->n_pk_en = 5;
  k->pk_en = (int *)neg;
  k->n_pk_s32 = 5;
  k->pk_s32 = (int32_t *)neg;
  k->n_pk_sf32 = 5;
  k->pk_sf32 = (int32_t *)neg;
  k->n_pk_b = 4;
  k->pk_b = (protobuf_c_boolean *)bools;
  k->n_pk_db = 3;
  k->pk_db = (double *)dbl;
  same_as_protobuf_c(&k->base, &c);
  /* a run whose length prefix is one byte longer than its minimum */
  for (i = 0; i < 20; i++)
    many[i] = -1;
  k->n_pk_i32 = 20;
  k->pk_i32 = many;
  same_as_protobuf_c(&k->base, &c);

  /* oneofs: a member at its default or NULL stays out, an empty message
   * does not */
  k->pick_case = 101;
  k->p_str = (char *)kitchen_dflt;
  same_as_protobuf_c(&k->base, &c);
  k->p_str = NULL;
  same_as_protobuf_c(&k->base, &c);
  k->p_str = "";
  same_as_protobuf_c(&k->base, &c);
  k->pick_case = 102;
  k->p_msg = sub;
  same_as_protobuf_c(&k->base, &c);
  k->pick_case = 100;
  k->p_i32 = 0;   /* a oneof member goes out even when 0 */
  same_as_protobuf_c(&k->base, &c);
  k->alt_case = 111;
  k->a_str = "alt";
  same_as_protobuf_c(&k->base, &c);
  /* optional: has_ decides, but for strings and messages the pointer */
  k->has_o_i32 = 1;
  k->o_i32 = 0;
  k->has_o_by = 1;
  k->o_str = "";
  k->o_msg = sub;
  same_as_protobuf_c(&k->base, &c);
  emd_arena_free(&a);
  emd_pack_buf_free(&c);
}

static void null_items_pack_as_protobuf_c_packs_them(void **state)
{
  static char *strs[] = { "a", NULL, "b" };
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  kitchen *k = new_kitchen(&a), *items[] = { new_kitchen(&a), NULL };
  uint8_t theirs[4096];
  const uint8_t *ours;
  size_t n, len;

  (void)state;
  /* protobuf-c's get_packed_size cannot take these, its packer writes
   * them as empty: so does emd_pack */
  k->n_rep_str = 3;
  k->rep_str = strs;
  k->n_rep_msg = 2;
  k->rep_msg = items;
  n = protobuf_c_message_pack(&k->base, theirs);
  assert_int_equal(emd_pack(&k->base, &c, &ours, &len), 0);
  assert_int_equal(len, n);
  assert_memory_equal(ours, theirs, n);
  emd_pack_buf_free(&c);

  /* More of them than the first buffer holds: each takes room of its own
   * (under ASan, a write below the buffer would stop the test), and the
   * buffer grows instead. */
  kitchen **nulls = calloc(3000, sizeof(*nulls));
  uint8_t *big = malloc(65536);

  assert_non_null(nulls);
  assert_non_null(big);
  k->n_rep_str = 0;
  k->n_rep_msg = 3000;
  k->rep_msg = nulls;
  n = protobuf_c_message_pack(&k->base, big);
  assert_true(n >= 6000);   /* past the first buffer, 4 KiB */
  assert_int_equal(emd_pack(&k->base, &c, &ours, &len), 0);
  assert_int_equal(len, n);
  assert_memory_equal(ours, big, n);
  emd_pack_buf_free(&c);
  free(big);
  free(nulls);
  emd_arena_free(&a);
}

/* ------------------------------------------------------------------ */
/* tight fits: messages of one field each, with the longest tag (5 bytes)
 * and the longest varints (10), so no reserve is left over anywhere */

typedef struct tight tight;
struct tight {
  ProtobufCMessage base;
  int32_t v;        /* -1: ten bytes */
  char *s;
  ProtobufCBinaryData b;
  tight *sub;
  size_t n_pk;
  int32_t *pk;
  size_t n_rv;
  int32_t *rv;
  size_t n_rm;
  tight **rm;
  size_t n_rs;
  char **rs;
};

#define TIGHT_ID 536870911
static const ProtobufCMessageDescriptor tight_v_descriptor;

#define TF(label, type, q, off, desc, flags)                            \
  { #off, TIGHT_ID, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type,    \
    q, offsetof(tight, off), desc, NULL, flags, 0, NULL, NULL }
#define TQ(m) offsetof(tight, m)

/* each descriptor takes one of these as its only field */
static const ProtobufCFieldDescriptor tight_fields[] = {
  TF(NONE, INT32, 0, v, NULL, 0),
  TF(NONE, STRING, 0, s, NULL, 0),
  TF(NONE, BYTES, 0, b, NULL, 0),
  TF(NONE, MESSAGE, 0, sub, &tight_v_descriptor, 0),
  TF(REPEATED, INT32, TQ(n_pk), pk, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
  TF(REPEATED, INT32, TQ(n_rv), rv, NULL, 0),
  TF(REPEATED, MESSAGE, TQ(n_rm), rm, &tight_v_descriptor, 0),
  TF(REPEATED, STRING, TQ(n_rs), rs, NULL, 0),
};

#define TD(name, i)                                                     \
  { PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, name, name, name, "test",      \
    sizeof(tight), 1, &tight_fields[i], NULL, 0, NULL, NULL, NULL,     \
    NULL, NULL }
static const ProtobufCMessageDescriptor tight_v_descriptor = TD("v", 0);
static const ProtobufCMessageDescriptor tight_descriptors[] = {
  TD("v", 0), TD("s", 1), TD("b", 2), TD("sub", 3), TD("pk", 4),
  TD("rv", 5), TD("rm", 6), TD("rs", 7),
  /* no fields at all: the unknown one alone */
  { PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "none", "none", "none", "test",
    sizeof(tight), 0, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL },
};

static void tight_fits_pack_as_protobuf_c_does(void **state)
{
  static const size_t edges[] = { 4096, 8192 };
  static int32_t minus[3] = { -1, -1, -1 };
  static char long_s[201], *strs[3] = { "a", "", long_s };
  struct emd_pack_buf c = { 0 };
  ProtobufCMessageUnknownField u = {
    TIGHT_ID, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, 0, NULL
  };
  tight leaf, *leaves[3] = { &leaf, &leaf, &leaf }, m;
  uint8_t *blob = calloc(1, 8192 + 100);
  size_t d, e;

  (void)state;
  assert_non_null(blob);
  /* longer than any reserve, so its own room check is what counts */
  memset(long_s, 'l', sizeof(long_s) - 1);
  memset(&leaf, 0, sizeof(leaf));
  leaf.base.descriptor = &tight_v_descriptor;
  leaf.v = -1;
  for (d = 0; d < sizeof(tight_descriptors) / sizeof(tight_descriptors[0]);
       d++) {
    memset(&m, 0, sizeof(m));
    m.base.descriptor = &tight_descriptors[d];
    m.v = -1;
    m.s = long_s;
    m.b.data = (uint8_t *)long_s;
    m.b.len = 200;
    m.sub = &leaf;
    m.n_pk = m.n_rv = m.n_rm = m.n_rs = 3;
    m.pk = m.rv = minus;
    m.rm = leaves;
    m.rs = strs;
    /* an unknown field, written first, moves the field through every
     * byte around the ends of the first two buffers, from where it just
     * fits to where nothing does */
    m.base.n_unknown_fields = 1;
    m.base.unknown_fields = &u;
    for (e = 0; e < 2; e++) {
      for (u.len = edges[e] - 300; u.len < edges[e] + 10; u.len++) {
        u.data = blob;
        same_as_protobuf_c(&m.base, &c);
        emd_pack_buf_free(&c);
      }
    }
  }
  free(blob);
}

/* ------------------------------------------------------------------ */
/* every sub-message alone, and the buffer */

/* Packs each message-typed field of m, pre-order, on its own. */
static void each_sub_message_alone(const ProtobufCMessage *m,
                                   struct emd_pack_buf *b, size_t *n)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  unsigned i;
  size_t j, count;

  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    const char *member = (const char *)m + f->offset;
    const ProtobufCMessage *const *subs;

    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      count = *(const size_t *)((const char *)m + f->quantifier_offset);
      subs = *(const ProtobufCMessage *const *const *)member;
    } else {
      subs = (const ProtobufCMessage *const *)member;
      count = *subs != NULL;
    }
    for (j = 0; j < count; j++) {
      same_as_protobuf_c(subs[j], b);
      (*n)++;
      each_sub_message_alone(subs[j], b, n);
    }
  }
}

static void every_sub_message_packs_alone_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  struct rng r = { 99 };
  struct full *x = malloc(sizeof(*x));
  size_t n = 0;
  int i;

  (void)state;
  assert_non_null(x);
  full_event(x);
  each_sub_message_alone(&x->ev.base, &c, &n);
  /* te, 3 contexts, detail, tenant, user, repo, client, 3 tools with a
   * version each, os and its version, agent and its version, timing,
   * location, point, data */
  assert_int_equal(n, 23);
  for (i = 0; i < 300; i++) {
    each_sub_message_alone(&rnd_event(&r, &a)->base, &c, &n);
    emd_arena_reset(&a);
  }
  emd_pack_buf_free(&c);
  assert_null(c.buf);
  assert_int_equal(c.cap, 0);
  emd_arena_free(&a);
  free(x);
}

static void buffer_grows_once_and_is_reused(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct full *x = malloc(sizeof(*x));
  char *big = malloc(100001);
  const uint8_t *out;
  uint8_t *buf;
  size_t len, cap;
  int i;

  (void)state;
  assert_non_null(x);
  assert_non_null(big);
  full_event(x);
  same_as_protobuf_c(&x->ev.base, &c);
  assert_non_null(c.buf);
  /* a message bigger than the buffer: it starts over in a bigger one */
  memset(big, 'b', 100000);
  big[100000] = '\0';
  x->c[1].action = big;
  cap = c.cap;
  same_as_protobuf_c(&x->ev.base, &c);
  assert_true(c.cap > cap);
  assert_true(c.cap >= 100000);
  /* smaller ones after it reuse the same memory */
  buf = c.buf;
  cap = c.cap;
  x->c[1].action = "compile";
  for (i = 0; i < 10; i++) {
    assert_int_equal(emd_pack(&x->ev.base, &c, &out, &len), 0);
    assert_ptr_equal(c.buf, buf);
    assert_int_equal(c.cap, cap);
  }
  emd_pack_buf_free(&c);
  /* a buffer too small for anything grows too */
  c.buf = malloc(16);
  assert_non_null(c.buf);
  c.cap = 16;
  same_as_protobuf_c(&x->ev.base, &c);
  emd_pack_buf_free(&c);
  free(big);
  free(x);
}

static void messages_around_the_buffer_size_pack_whole(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct full *x = malloc(sizeof(*x));
  char *s = malloc(9000);
  size_t len;

  (void)state;
  assert_non_null(x);
  assert_non_null(s);
  full_event(x);
  /* each length from well below the first buffer's size to twice it,
   * every time from a fresh buffer: the writing runs out of room at every
   * possible place, in the string, its prefix, the tags around it, the
   * fields after it */
  for (len = 2500; len < 9000; len += 7) {
    memset(s, 's', len);
    s[len] = '\0';
    x->loc.locality = s;
    same_as_protobuf_c(&x->ev.base, &c);
    emd_pack_buf_free(&c);
  }
  free(s);
  free(x);
}

static void deep_nesting_packs_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct emd_arena a = { 0 };
  kitchen *top = new_kitchen(&a), *k = top;
  int i;

  (void)state;
  /* 300 levels, each with its required fields: far more than the first
   * buffer holds */
  for (i = 0; i < 300; i++) {
    k->child = new_kitchen(&a);
    k = k->child;
  }
  same_as_protobuf_c(&top->base, &c);
  assert_true(c.cap > 4096);
  emd_pack_buf_free(&c);
  emd_arena_free(&a);
}


/* ------------------------------------------------------------------ */
/* emd_pack_event: the Event's walk written out
 *
 * Every Event the tests above pack goes through it as well (see
 * same_as_protobuf_c); here, what those do not reach. */

/* The generated schema is the one emd_pack_event writes out: when a
 * field is added to the .proto, this fails until emd_pack_event.c knows
 * it (until then every Event goes to emd_pack, right but slower). */
static void the_schema_is_the_one_written_out(void **state)
{
  (void)state;
  assert_true(emd_pack_event_specialised());
}

/* Values at the edges of each write: negative enums (ten bytes), -0.0
 * and NaN, the largest numbers, lengths of one, two and three bytes,
 * NULL items in repeated fields, empty sub-messages, and a buffer that
 * starts too small at every size. */
static void event_edges_pack_as_protobuf_c_does(void **state)
{
  struct emd_pack_buf c = { 0 };
  struct full *x = malloc(sizeof(*x));
  char *s = malloc(20000);
  Buildless__Telemetry__EventContext *ctx[3];
  Buildless__Telemetry__ToolInfo *tools[2];
  Buildless__Telemetry__OSInfo os;
  const uint8_t *out;
  size_t len;

  (void)state;
  assert_non_null(x);
  assert_non_null(s);
  full_event(x);
  x->os.family = (Buildless__Telemetry__OSFamily)-1;
  x->os.arch = (Buildless__Telemetry__ProcessorArch)INT32_MIN;
  x->repo.provider = (Buildless__Telemetry__RepositoryProvider)INT32_MAX;
  x->point.lat = -0.0;
  x->point.lon = NAN;
  x->te.ordinal = UINT32_MAX;
  x->timing.occurred = UINT64_MAX;
  x->v[0].release = (uint64_t)1 << 63;
  same_as_protobuf_c(&x->ev.base, &c);
  x->point.lat = 0.0;
  x->point.lon = -0.0;                 /* both zero: an empty GeoPoint */
  same_as_protobuf_c(&x->ev.base, &c);
  for (size_t n = 126; n < 20000; n = n < 140 ? n + 1 : n * 3) {
    memset(s, 'q', n);
    s[n] = '\0';
    x->loc.edge = s;
    same_as_protobuf_c(&x->ev.base, &c);
  }
  x->loc.edge = "e";
  /* NULL items go out empty, as protobuf-c's packer writes them (its
   * sizer cannot take them, so compare with emd_pack) */
  ctx[0] = x->ctx[0];
  ctx[1] = NULL;
  ctx[2] = x->ctx[2];
  x->te.context = ctx;
  x->te.n_context = 3;
  tools[0] = NULL;
  tools[1] = x->tools[1];
  x->client.tool = tools;
  x->client.n_tool = 2;
  buildless__telemetry__osinfo__init(&os);
  x->client.os = &os;                  /* empty, not NULL: tag and 0 */
  {
    uint8_t *theirs;
    size_t want;

    assert_int_equal(emd_pack(&x->ev.base, &c, &out, &len), 0);
    want = len;
    theirs = malloc(want);
    assert_non_null(theirs);
    memcpy(theirs, out, want);
    assert_int_equal(emd_pack_event(&x->ev, &c, &out, &len), 0);
    assert_int_equal(len, want);
    assert_memory_equal(out, theirs, want);
    free(theirs);
  }
  x->te.context = x->ctx;
  x->client.tool = x->tools;
  x->client.n_tool = 3;
  x->client.os = &x->os;
  /* from a buffer of each size up to past the event's own */
  for (size_t cap = 1; cap < 1200; cap += 13) {
    emd_pack_buf_free(&c);
    c.buf = malloc(cap);
    assert_non_null(c.buf);
    c.cap = cap;
    same_as_protobuf_c(&x->ev.base, &c);
  }
  emd_pack_buf_free(&c);
  free(s);
  free(x);
}


/* An Event packed with index and ordinal 0 and completed later (the spool
 * packs on the loop thread, and its writer settles the two): the same
 * bytes as packing it with them, for every pair of lengths. */
static void spliced_events_pack_as_protobuf_c_does(void **state)
{
  static const uint32_t vals[] = { 0, 1, 127, 128, 16383, 16384,
                                   2097152, UINT32_MAX };
  struct emd_pack_buf c = { 0 }, d = { 0 };
  struct emd_arena a = { 0 };
  struct rng r = { 77 };
  struct full *x = malloc(sizeof(*x));
  struct emd_pack_splice sp;
  const uint8_t *open, *want;
  uint8_t *got = malloc(1 << 16);
  size_t open_len, want_len, n;
  int rc, spliced = 0;

  (void)state;
  assert_non_null(x);
  assert_non_null(got);
  full_event(x);
  for (int i = 0; i < 600; i++) {
    emd_event *ev = i == 0 ? &x->ev : rnd_event(&r, &a);

    if (ev->event == NULL)
      continue;                      /* left to emd_pack_event, below */
    ev->index = 0;
    ev->event->ordinal = 0;
    rc = emd_pack_event_open(ev, &c, &open, &open_len, &sp);
    if (rc == 1)
      continue;                      /* unknown fields: emd_pack's */
    assert_int_equal(rc, 0);
    spliced++;
    for (size_t j = 0; j < sizeof(vals) / sizeof(vals[0]); j++)
      for (size_t k = 0; k < sizeof(vals) / sizeof(vals[0]); k++) {
        ev->index = vals[j];
        ev->event->ordinal = vals[k];
        same_as_protobuf_c(&ev->base, &d);
        assert_int_equal(emd_pack(&ev->base, &d, &want, &want_len), 0);
        n = emd_pack_splice_size(open_len, &sp, vals[j], vals[k]);
        assert_int_equal(n, want_len);
        assert_true(n <= 1 << 16);
        memset(got, 0xee, n + 1);
        emd_pack_splice_write(got, open, open_len, &sp, vals[j], vals[k]);
        assert_memory_equal(got, want, n);
        assert_int_equal(got[n], 0xee);          /* nothing past it */
      }
    emd_arena_reset(&a);
  }
  assert_true(spliced > 100);
  /* what it leaves to emd_pack_event: no TelemetryEvent, unknown fields */
  x->ev.event = NULL;
  assert_int_equal(emd_pack_event_open(&x->ev, &c, &open, &open_len, &sp),
                   1);
  full_event(x);
  add_unknowns(&x->point.base, 1);
  assert_int_equal(emd_pack_event_open(&x->ev, &c, &open, &open_len, &sp),
                   1);
  emd_arena_free(&a);
  emd_pack_buf_free(&c);
  emd_pack_buf_free(&d);
  free(got);
  free(x);
}

/* A spliced event checked against packing it whole, for index and
 * ordinal 0 (as packed) and both set. */
static void splices_as_packed(emd_event *ev, struct emd_pack_buf *c,
                              struct emd_pack_buf *d)
{
  static const uint32_t vals[][2] = { { 0, 0 }, { 300, 5 } };
  struct emd_pack_splice sp;
  const uint8_t *open, *want;
  uint8_t got[4096];
  size_t open_len, want_len, n;

  for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
    ev->index = 0;
    ev->event->ordinal = 0;
    assert_int_equal(emd_pack_event_open(ev, c, &open, &open_len, &sp), 0);
    ev->index = vals[i][0];
    ev->event->ordinal = vals[i][1];
    assert_int_equal(emd_pack(&ev->base, d, &want, &want_len), 0);
    n = emd_pack_splice_size(open_len, &sp, vals[i][0], vals[i][1]);
    assert_int_equal(n, want_len);
    assert_true(n < sizeof(got));
    memset(got, 0xee, n + 1);
    emd_pack_splice_write(got, open, open_len, &sp, vals[i][0], vals[i][1]);
    assert_memory_equal(got, want, n);
    assert_int_equal(got[n], 0xee);
  }
}

/* The short writes emd_pack_event does inline: strings of every length
 * around its copies' steps (1, 4, 8, 16, 32 bytes) in a field of each
 * kind of place (the envelope, before and after the spliced fields, a
 * sub-message), empty strings that are not protobuf-c's unset one, NULL
 * strings, and a VersionInfo with only its numbers (written inline) or
 * with any one other field set (release and each string). */
static void short_writes_pack_as_protobuf_c_does(void **state)
{
  static const uint64_t nums[] = { 0, 1, 127, 128, 16383, 16384, UINT32_MAX };
  struct emd_pack_buf c = { 0 }, d = { 0 };
  struct full *x = malloc(sizeof(*x));
  char s[80], empty[1] = { '\0' };
  version_t *vs[3];

  (void)state;
  assert_non_null(x);
  full_event(x);
  for (size_t n = 0; n < sizeof(s) - 10; n++) {
    memset(s, 'a' + (int)(n % 26), n);
    s[n] = '\0';
    x->ev.collection = s;
    x->ev.scope = s + n / 2;
    x->te.scope = s + n / 3;
    x->loc.edge = s;
    x->data.type_url = s + n / 4;
    same_as_protobuf_c(&x->ev.base, &c);
    splices_as_packed(&x->ev, &c, &d);
  }
  x->ev.collection = empty;
  x->ev.scope = NULL;
  x->te.scope = empty;
  x->loc.edge = NULL;
  x->data.type_url = (char *)protobuf_c_empty_string;
  same_as_protobuf_c(&x->ev.base, &c);
  splices_as_packed(&x->ev, &c, &d);
  full_event(x);
  vs[0] = &x->v[0];
  vs[1] = &x->vos;
  vs[2] = &x->vagent;
  for (size_t k = 0; k < 3; k++) {
    version_t *v = vs[k];

    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
      /* numbers only */
      buildless__telemetry__version_info__init(v);
      v->major = (uint32_t)nums[i];
      v->minor = (uint32_t)nums[(i + 1) % 7];
      v->micro = (uint32_t)nums[(i + 2) % 7];
      same_as_protobuf_c(&x->ev.base, &c);
      /* and one more field: release, then each string, set, empty or
       * NULL */
      for (int f = 0; f < 16; f++) {
        char **str[] = { &v->build, &v->rc, &v->commit, &v->tag, &v->spec };

        buildless__telemetry__version_info__init(v);
        v->major = (uint32_t)nums[i];
        if (f == 0)
          v->release = nums[(i + 3) % 7] + 1;
        else
          *str[(f - 1) % 5] = f <= 5 ? "x.y" : f <= 10 ? empty : NULL;
        same_as_protobuf_c(&x->ev.base, &c);
        splices_as_packed(&x->ev, &c, &d);
      }
    }
    /* unknown fields in a version: emd_pack's */
    buildless__telemetry__version_info__init(v);
    v->major = 1;
    add_unknowns(&v->base, 2);
    same_as_protobuf_c(&x->ev.base, &c);
    full_event(x);
  }
  emd_pack_buf_free(&c);
  emd_pack_buf_free(&d);
  free(x);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(full_event_packs_as_protobuf_c_does),
    cmocka_unit_test(unpacked_event_keeps_its_unknown_fields),
    cmocka_unit_test(empty_event_packs_to_nothing),
    cmocka_unit_test(random_events_pack_as_protobuf_c_does),
    cmocka_unit_test(emitd_records_pack_as_protobuf_c_does),
    cmocka_unit_test(every_type_and_label_packs_as_protobuf_c_does),
    cmocka_unit_test(packed_runs_and_oneofs_pack_as_protobuf_c_does),
    cmocka_unit_test(null_items_pack_as_protobuf_c_packs_them),
    cmocka_unit_test(tight_fits_pack_as_protobuf_c_does),
    cmocka_unit_test(every_sub_message_packs_alone_as_protobuf_c_does),
    cmocka_unit_test(buffer_grows_once_and_is_reused),
    cmocka_unit_test(messages_around_the_buffer_size_pack_whole),
    cmocka_unit_test(deep_nesting_packs_as_protobuf_c_does),
    cmocka_unit_test(the_schema_is_the_one_written_out),
    cmocka_unit_test(event_edges_pack_as_protobuf_c_does),
    cmocka_unit_test(spliced_events_pack_as_protobuf_c_does),
    cmocka_unit_test(short_writes_pack_as_protobuf_c_does),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
