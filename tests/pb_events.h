/* pb_events.h: Events for the protobuf tests (test_pack, test_unpack):
 * one with every field of every message set (full_event), and random ones
 * (rnd_event, from a seeded generator) with random subsets of fields,
 * edge values and unknown fields. Header only, like prom_check.h: each
 * test executable includes it once. */
#ifndef PB_EVENTS_H
#define PB_EVENTS_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "emd_arena.h"
#include "emd_event.h"

typedef Buildless__Telemetry__VersionInfo version_t;

static void version(version_t *v, uint32_t major, uint32_t minor,
                    uint32_t micro, const char *const s[5], uint64_t release)
{
  buildless__telemetry__version_info__init(v);
  v->major = major;
  v->minor = minor;
  v->micro = micro;
  v->build = (char *)s[0];
  v->rc = (char *)s[1];
  v->commit = (char *)s[2];
  v->tag = (char *)s[3];
  v->spec = (char *)s[4];
  v->release = release;
}

/* Everything full_event() points into. */
struct full {
  emd_event ev;
  emd_tevent te;
  Buildless__Telemetry__EventContext c[3], *ctx[3];
  Buildless__Telemetry__EventDetail detail;
  Buildless__Telemetry__TenantDetail tenant;
  Buildless__Telemetry__UserDetail user;
  Buildless__Telemetry__RepositoryDetail repo;
  Buildless__Telemetry__ClientDetail client;
  Buildless__Telemetry__ToolInfo t[3], *tools[3];
  Buildless__Telemetry__OSInfo os;
  Buildless__Telemetry__APIClientInfo agent;
  version_t v[3], vos, vagent;
  Buildless__Telemetry__EventTiming timing;
  Buildless__Telemetry__EventLocation loc;
  Buildless__Telemetry__GeoPoint point;
  Google__Protobuf__Any data;
  char long_user[300];
};

static void full_detail(struct full *x)
{
  static const char *const s[3][5] = {
    { "b12", "rc12", "c12", "t12", "12.2.1" },
    { "b3", "rc3", "c3", "t3", "3.25.2" },
    { "b0", "", "c0", "t0", "0.0.0" },
  };
  static const char *const s6[] = { "b6", "rc6", "c6", "t6", "6.1.8-amd64" };
  static const char *const s9[] = { "b9", "rc9", "c9", "t9", "9.4.7" };
  static const char *const names[] = { "gcc", "cmake", "ninja" };
  int i;

  buildless__telemetry__event_detail__init(&x->detail);
  buildless__telemetry__tenant_detail__init(&x->tenant);
  x->tenant.oid = UINT32_MAX;
  x->tenant.name = "acme";
  buildless__telemetry__user_detail__init(&x->user);
  x->user.uid = "u-1";
  x->user.email.data = (uint8_t *)"0123456789abcdef0123456789ABCDEF";
  x->user.email.len = 32;
  x->user.username = "al";
  buildless__telemetry__repository_detail__init(&x->repo);
  x->repo.provider = BUILDLESS__TELEMETRY__REPOSITORY_PROVIDER__GITHUB;
  x->repo.link = "https://github.com/acme/widget";
  x->repo.name = "widget";
  buildless__telemetry__client_detail__init(&x->client);
  for (i = 0; i < 3; i++) {
    buildless__telemetry__tool_info__init(&x->t[i]);
    x->t[i].name = (char *)names[i];
    version(&x->v[i], 12u << (8 * i), 2, 1, s[i], 1012u + i);
    x->t[i].version = &x->v[i];
    x->tools[i] = &x->t[i];
  }
  x->client.n_tool = 3;
  x->client.tool = x->tools;
  buildless__telemetry__osinfo__init(&x->os);
  x->os.name = "Linux";
  x->os.family = BUILDLESS__TELEMETRY__OSFAMILY__OTHER_OS;
  x->os.arch = BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM;
  version(&x->vos, 6, 1, 8, s6, 1006);
  x->os.version = &x->vos;
  buildless__telemetry__apiclient_info__init(&x->agent);
  x->agent.name = "emitd";
  version(&x->vagent, 9, 4, 7, s9, UINT64_MAX);
  x->agent.version = &x->vagent;
  x->client.os = &x->os;
  x->client.agent = &x->agent;
  x->detail.tenant = &x->tenant;
  x->detail.user = &x->user;
  x->detail.repository = &x->repo;
  x->detail.client = &x->client;
}

static void full_event(struct full *x)
{
  static const char *const kinds[] = { "Build", "Test", "Cache" };
  int i;

  memset(x, 0, sizeof(*x));
  buildless__service__v1__event__init(&x->ev);
  x->ev.collection = "builds";
  x->ev.fin = 1;
  x->ev.index = 3;
  x->ev.scope = "run-42";
  x->ev.event = &x->te;
  buildless__telemetry__telemetry_event__init(&x->te);
  x->te.scope = "svc";
  x->te.id = "01JD8X3QZK4M2N5P7R9T1V3W5Y";
  x->te.tenant = "org_acme";
  /* 299 bytes: a two-byte length prefix */
  memset(x->long_user, 'u', sizeof(x->long_user) - 1);
  x->te.user = x->long_user;
  for (i = 0; i < 3; i++) {
    buildless__telemetry__event_context__init(&x->c[i]);
    x->c[i].type = (char *)kinds[i];
    x->c[i].resource = "repo::acme";
    x->c[i].action = "compile";
    x->c[i].event = "started";
    x->ctx[i] = &x->c[i];
  }
  x->te.n_context = 3;
  x->te.context = x->ctx;
  full_detail(x);
  x->te.detail = &x->detail;
  buildless__telemetry__event_timing__init(&x->timing);
  x->timing.timehash = "th";
  x->timing.occurred = 1732761600123u;
  x->timing.received = 1732761600200u;
  x->timing.ingested = UINT64_MAX;
  x->te.timing = &x->timing;
  buildless__telemetry__event_location__init(&x->loc);
  x->loc.source_ip.data = (uint8_t *)"\177\000\000\001";
  x->loc.source_ip.len = 4;
  x->loc.timezone = "Europe/Berlin";
  buildless__telemetry__geo_point__init(&x->point);
  x->point.lat = 52.52;
  x->point.lon = -13.405;
  x->loc.point = &x->point;
  x->loc.nielsen = "n1";
  x->loc.locality = "Berlin";
  x->loc.region = "BE";
  x->loc.country = "DE";
  x->loc.tag = "u33d";
  x->loc.edge = "fra1";
  x->te.location = &x->loc;
  x->te.timer.data = (uint8_t *)"\001\002\377";
  x->te.timer.len = 3;
  x->te.ordinal = 7;
  google__protobuf__any__init(&x->data);
  x->data.type_url = "type.googleapis.com/acme.Custom";
  x->data.value.data = (uint8_t *)"\010\226\001";
  x->data.value.len = 3;
  x->te.data = &x->data;
}

struct rng {
  uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
  uint64_t x = r->s;

  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return x * UINT64_C(0x2545f4914f6cdd1d);
}

static bool chance(struct rng *r, unsigned one_in)
{
  return rnd(r) % one_in == 0;
}

/* 64 random bits, often one of the values at an edge. */
static uint64_t rnd64(struct rng *r)
{
  static const uint64_t edge[] = {
    0, 1, 127, 128, 16383, 16384, 0x7fffffff, 0x80000000, 0xffffffff,
    UINT64_C(0x100000000), UINT64_C(0x7fffffffffffffff),
    UINT64_C(0x8000000000000000), UINT64_MAX, UINT64_MAX - 1,
  };

  switch (rnd(r) % 4) {
  case 0:
    return edge[rnd(r) % (sizeof(edge) / sizeof(edge[0]))];
  case 1:
    return rnd(r) >> (rnd(r) % 64);   /* any bit length */
  case 2:
    return (uint64_t) - (int64_t)(rnd(r) >> (rnd(r) % 64));  /* negative */
  default:
    return rnd(r);
  }
}

static uint32_t rnd32(struct rng *r)
{
  return (uint32_t)rnd64(r);
}

static double rnd_double(struct rng *r)
{
  switch (rnd(r) % 6) {
  case 0:
    return 0.0;
  case 1:
    return -0.0;
  case 2:
    return NAN;
  case 3:
    return -INFINITY;
  default:
    return ((double)(int64_t)rnd(r)) / (double)(rnd(r) | 1);
  }
}

/* A string of 0 to 300 bytes (sometimes 20000, for a three-byte length)
 * in the arena, or NULL when may_be_null and the dice say so. */
static char *rnd_str(struct rng *r, struct emd_arena *a, bool may_be_null)
{
  size_t len, i;
  char *s;

  if (may_be_null && chance(r, 5))
    return NULL;
  len = chance(r, 200) ? 20000 : rnd(r) % (chance(r, 4) ? 301 : 12);
  s = emd_arena_alloc(a, len + 1);
  assert_non_null(s);
  for (i = 0; i < len; i++)
    s[i] = (char)(1 + rnd(r) % 255);
  s[len] = '\0';
  return s;
}

static void rnd_bytes(struct rng *r, struct emd_arena *a,
                      ProtobufCBinaryData *b)
{
  size_t i;

  b->len = chance(r, 3) ? 0 : rnd(r) % (chance(r, 4) ? 300 : 40);
  if (b->len == 0 && chance(r, 2)) {
    b->data = NULL;
    return;
  }
  b->data = emd_arena_alloc(a, b->len + 1);
  assert_non_null(b->data);
  for (i = 0; i < b->len; i++)
    b->data[i] = (uint8_t)rnd(r);
}

static void rnd_unknowns(struct rng *r, struct emd_arena *a,
                         ProtobufCMessage *m)
{
  static const ProtobufCWireType wt[] = {
    PROTOBUF_C_WIRE_TYPE_VARINT, PROTOBUF_C_WIRE_TYPE_64BIT,
    PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, PROTOBUF_C_WIRE_TYPE_32BIT,
  };
  ProtobufCMessageUnknownField *u;
  size_t i, n;

  if (!chance(r, 8))
    return;
  n = 1 + rnd(r) % 3;
  u = emd_arena_alloc(a, n * sizeof(*u));
  assert_non_null(u);
  for (i = 0; i < n; i++) {
    ProtobufCBinaryData b;

    u[i].tag = 1 + (uint32_t)(rnd64(r) % 536870911);
    u[i].wire_type = wt[rnd(r) % 4];
    rnd_bytes(r, a, &b);
    u[i].len = b.len;
    u[i].data = b.data;
  }
  m->n_unknown_fields = n;
  m->unknown_fields = u;
}

#define NEW(a, type, init)                                              \
  __extension__({                                                       \
    type *p_ = emd_arena_alloc((a), sizeof(type));                      \
    assert_non_null(p_);                                                \
    init(p_);                                                           \
    p_;                                                                 \
  })

/* ------------------------------------------------------------------ */
/* random Events */

static version_t *rnd_version(struct rng *r, struct emd_arena *a)
{
  version_t *v;

  if (chance(r, 3))
    return NULL;
  v = NEW(a, version_t, buildless__telemetry__version_info__init);
  v->major = chance(r, 2) ? 0 : rnd32(r);
  v->minor = chance(r, 2) ? 0 : rnd32(r);
  v->micro = chance(r, 2) ? 0 : rnd32(r);
  v->build = rnd_str(r, a, true);
  v->rc = rnd_str(r, a, true);
  v->commit = rnd_str(r, a, true);
  v->tag = rnd_str(r, a, true);
  v->spec = rnd_str(r, a, true);
  v->release = chance(r, 2) ? 0 : rnd64(r);
  rnd_unknowns(r, a, &v->base);
  return v;
}

static Buildless__Telemetry__ClientDetail *rnd_client(struct rng *r,
                                                      struct emd_arena *a)
{
  Buildless__Telemetry__ClientDetail *cl;
  size_t i;

  if (chance(r, 4))
    return NULL;
  cl = NEW(a, Buildless__Telemetry__ClientDetail,
           buildless__telemetry__client_detail__init);
  cl->n_tool = rnd(r) % 4;
  cl->tool = emd_arena_alloc(a, (cl->n_tool + 1) * sizeof(*cl->tool));
  assert_non_null(cl->tool);
  for (i = 0; i < cl->n_tool; i++) {
    cl->tool[i] = NEW(a, Buildless__Telemetry__ToolInfo,
                      buildless__telemetry__tool_info__init);
    cl->tool[i]->name = rnd_str(r, a, true);
    cl->tool[i]->version = rnd_version(r, a);
  }
  if (!chance(r, 3)) {
    cl->os = NEW(a, Buildless__Telemetry__OSInfo,
                 buildless__telemetry__osinfo__init);
    cl->os->name = rnd_str(r, a, true);
    cl->os->family = chance(r, 3) ? 0 : (int)rnd32(r);   /* < 0 too */
    cl->os->arch = (int)(rnd(r) % 3);
    cl->os->version = rnd_version(r, a);
    rnd_unknowns(r, a, &cl->os->base);
  }
  if (!chance(r, 3)) {
    cl->agent = NEW(a, Buildless__Telemetry__APIClientInfo,
                    buildless__telemetry__apiclient_info__init);
    cl->agent->name = rnd_str(r, a, true);
    cl->agent->version = rnd_version(r, a);
  }
  rnd_unknowns(r, a, &cl->base);
  return cl;
}

static Buildless__Telemetry__EventDetail *rnd_detail(struct rng *r,
                                                     struct emd_arena *a)
{
  Buildless__Telemetry__EventDetail *d;

  if (chance(r, 5))
    return NULL;
  d = NEW(a, Buildless__Telemetry__EventDetail,
          buildless__telemetry__event_detail__init);
  if (!chance(r, 3)) {
    d->tenant = NEW(a, Buildless__Telemetry__TenantDetail,
                    buildless__telemetry__tenant_detail__init);
    d->tenant->oid = chance(r, 2) ? 0 : rnd32(r);
    d->tenant->name = rnd_str(r, a, true);
  }
  if (!chance(r, 3)) {
    d->user = NEW(a, Buildless__Telemetry__UserDetail,
                  buildless__telemetry__user_detail__init);
    d->user->uid = rnd_str(r, a, true);
    rnd_bytes(r, a, &d->user->email);
    d->user->username = rnd_str(r, a, true);
    rnd_unknowns(r, a, &d->user->base);
  }
  if (!chance(r, 3)) {
    d->repository = NEW(a, Buildless__Telemetry__RepositoryDetail,
                        buildless__telemetry__repository_detail__init);
    d->repository->provider = (int)(rnd(r) % 2);
    d->repository->link = rnd_str(r, a, true);
    d->repository->name = rnd_str(r, a, true);
  }
  d->client = rnd_client(r, a);
  return d;
}

static emd_tevent *rnd_tevent(struct rng *r, struct emd_arena *a)
{
  emd_tevent *te;
  size_t i;

  if (chance(r, 10))
    return NULL;
  te = NEW(a, emd_tevent, buildless__telemetry__telemetry_event__init);
  te->scope = rnd_str(r, a, true);
  te->id = rnd_str(r, a, true);
  te->tenant = rnd_str(r, a, true);
  te->user = rnd_str(r, a, true);
  te->n_context = rnd(r) % 5;
  te->context = emd_arena_alloc(a, (te->n_context + 1) * sizeof(*te->context));
  assert_non_null(te->context);
  for (i = 0; i < te->n_context; i++) {
    Buildless__Telemetry__EventContext *c =
      NEW(a, Buildless__Telemetry__EventContext,
          buildless__telemetry__event_context__init);
    c->type = rnd_str(r, a, true);
    c->resource = rnd_str(r, a, true);
    c->action = rnd_str(r, a, true);
    c->event = rnd_str(r, a, true);
    rnd_unknowns(r, a, &c->base);
    te->context[i] = c;
  }
  te->detail = rnd_detail(r, a);
  if (!chance(r, 4)) {
    te->timing = NEW(a, Buildless__Telemetry__EventTiming,
                     buildless__telemetry__event_timing__init);
    te->timing->timehash = rnd_str(r, a, true);
    te->timing->occurred = chance(r, 3) ? 0 : rnd64(r);
    te->timing->received = chance(r, 3) ? 0 : rnd64(r);
    te->timing->ingested = chance(r, 3) ? 0 : rnd64(r);
  }
  if (!chance(r, 3)) {
    Buildless__Telemetry__EventLocation *l =
      NEW(a, Buildless__Telemetry__EventLocation,
          buildless__telemetry__event_location__init);
    rnd_bytes(r, a, &l->source_ip);
    l->timezone = rnd_str(r, a, true);
    if (!chance(r, 3)) {
      l->point = NEW(a, Buildless__Telemetry__GeoPoint,
                     buildless__telemetry__geo_point__init);
      l->point->lat = rnd_double(r);
      l->point->lon = rnd_double(r);
    }
    l->nielsen = rnd_str(r, a, true);
    l->locality = rnd_str(r, a, true);
    l->region = rnd_str(r, a, true);
    l->country = rnd_str(r, a, true);
    l->tag = rnd_str(r, a, true);
    l->edge = rnd_str(r, a, true);
    te->location = l;
  }
  rnd_bytes(r, a, &te->timer);
  te->ordinal = chance(r, 2) ? 0 : rnd32(r);
  if (chance(r, 4)) {
    te->data = NEW(a, Google__Protobuf__Any, google__protobuf__any__init);
    te->data->type_url = rnd_str(r, a, true);
    rnd_bytes(r, a, &te->data->value);
  }
  rnd_unknowns(r, a, &te->base);
  return te;
}

static emd_event *rnd_event(struct rng *r, struct emd_arena *a)
{
  emd_event *ev = NEW(a, emd_event, buildless__service__v1__event__init);

  ev->collection = rnd_str(r, a, true);
  ev->fin = chance(r, 2) ? 0 : (protobuf_c_boolean)rnd32(r);  /* 1, 2, -1 */
  ev->index = chance(r, 2) ? 0 : rnd32(r);
  ev->scope = rnd_str(r, a, true);
  ev->event = rnd_tevent(r, a);
  rnd_unknowns(r, a, &ev->base);
  return ev;
}

#endif
