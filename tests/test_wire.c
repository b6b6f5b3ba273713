/* test_wire.c: the wire contract of SPEC 1.1. Three checks:
 *  - every field of every message, and every enum value, against a table
 *    copied from SPEC 1.1 (so renumbering a field in proto/ fails here);
 *  - a small Event packed by protobuf-c against bytes encoded by hand from
 *    SPEC 1.1, independent of the .proto files;
 *  - a fully populated Event packed by protobuf-c against protoc --encode
 *    of the same message in text format (the generated code agrees with
 *    the reference protobuf implementation, byte for byte). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emd_event.h"

/* ------------------------------------------------------------------ */
/* The field table of SPEC 1.1 */

#define F_STR PROTOBUF_C_TYPE_STRING
#define F_BYTES PROTOBUF_C_TYPE_BYTES
#define F_BOOL PROTOBUF_C_TYPE_BOOL
#define F_U32 PROTOBUF_C_TYPE_UINT32
#define F_U64 PROTOBUF_C_TYPE_UINT64
#define F_DBL PROTOBUF_C_TYPE_DOUBLE
#define F_ENUM PROTOBUF_C_TYPE_ENUM
#define F_MSG PROTOBUF_C_TYPE_MESSAGE

struct spec_field {
  const char *name;
  uint32_t number;
  ProtobufCType type;
  bool repeated;
  const char *of;     /* full name of the message or enum type */
};

struct spec_message {
  const ProtobufCMessageDescriptor *desc;
  const char *name;
  struct spec_field fields[12];   /* ends at a NULL name */
};

#define TM "buildless.telemetry."

static const struct spec_message spec_messages[] = {
  { &buildless__service__v1__event__descriptor, "buildless.service.v1.Event", {
    { "collection", 1, F_STR, false, NULL },
    { "fin", 2, F_BOOL, false, NULL },
    { "index", 3, F_U32, false, NULL },
    { "scope", 4, F_STR, false, NULL },
    { "event", 5, F_MSG, false, TM "TelemetryEvent" } } },
  { &buildless__service__v1__event_id__descriptor,
    "buildless.service.v1.EventID", {
    { "ok", 1, F_BOOL, false, NULL },
    { "eid", 2, F_STR, false, NULL },
    { "sid", 3, F_STR, false, NULL } } },
  { &buildless__telemetry__telemetry_event__descriptor, TM "TelemetryEvent", {
    { "scope", 1, F_STR, false, NULL },
    { "id", 2, F_STR, false, NULL },
    { "tenant", 3, F_STR, false, NULL },
    { "user", 4, F_STR, false, NULL },
    { "context", 5, F_MSG, true, TM "EventContext" },
    { "detail", 6, F_MSG, false, TM "EventDetail" },
    { "timing", 7, F_MSG, false, TM "EventTiming" },
    { "location", 8, F_MSG, false, TM "EventLocation" },
    { "timer", 9, F_BYTES, false, NULL },
    { "ordinal", 10, F_U32, false, NULL },
    { "data", 11, F_MSG, false, "google.protobuf.Any" } } },
  { &buildless__telemetry__event_context__descriptor, TM "EventContext", {
    { "type", 1, F_STR, false, NULL },
    { "resource", 2, F_STR, false, NULL },
    { "action", 3, F_STR, false, NULL },
    { "event", 4, F_STR, false, NULL } } },
  { &buildless__telemetry__event_detail__descriptor, TM "EventDetail", {
    { "tenant", 1, F_MSG, false, TM "TenantDetail" },
    { "user", 2, F_MSG, false, TM "UserDetail" },
    { "repository", 3, F_MSG, false, TM "RepositoryDetail" },
    { "client", 4, F_MSG, false, TM "ClientDetail" } } },
  { &buildless__telemetry__tenant_detail__descriptor, TM "TenantDetail", {
    { "oid", 1, F_U32, false, NULL },
    { "name", 2, F_STR, false, NULL } } },
  { &buildless__telemetry__user_detail__descriptor, TM "UserDetail", {
    { "uid", 1, F_STR, false, NULL },
    { "email", 2, F_BYTES, false, NULL },
    { "username", 3, F_STR, false, NULL } } },
  { &buildless__telemetry__repository_detail__descriptor,
    TM "RepositoryDetail", {
    { "provider", 1, F_ENUM, false, TM "RepositoryProvider" },
    { "link", 2, F_STR, false, NULL },
    { "name", 3, F_STR, false, NULL } } },
  { &buildless__telemetry__client_detail__descriptor, TM "ClientDetail", {
    { "tool", 1, F_MSG, true, TM "ToolInfo" },
    { "os", 2, F_MSG, false, TM "OSInfo" },
    { "agent", 3, F_MSG, false, TM "APIClientInfo" } } },
  { &buildless__telemetry__tool_info__descriptor, TM "ToolInfo", {
    { "name", 1, F_STR, false, NULL },
    { "version", 2, F_MSG, false, TM "VersionInfo" } } },
  { &buildless__telemetry__apiclient_info__descriptor, TM "APIClientInfo", {
    { "name", 1, F_STR, false, NULL },
    { "version", 4, F_MSG, false, TM "VersionInfo" } } },
  { &buildless__telemetry__osinfo__descriptor, TM "OSInfo", {
    { "name", 1, F_STR, false, NULL },
    { "family", 2, F_ENUM, false, TM "OSFamily" },
    { "arch", 3, F_ENUM, false, TM "ProcessorArch" },
    { "version", 4, F_MSG, false, TM "VersionInfo" } } },
  { &buildless__telemetry__version_info__descriptor, TM "VersionInfo", {
    { "major", 1, F_U32, false, NULL },
    { "minor", 2, F_U32, false, NULL },
    { "micro", 3, F_U32, false, NULL },
    { "build", 4, F_STR, false, NULL },
    { "rc", 5, F_STR, false, NULL },
    { "commit", 6, F_STR, false, NULL },
    { "tag", 7, F_STR, false, NULL },
    { "spec", 8, F_STR, false, NULL },
    { "release", 9, F_U64, false, NULL } } },
  { &buildless__telemetry__event_timing__descriptor, TM "EventTiming", {
    { "timehash", 1, F_STR, false, NULL },
    { "occurred", 2, F_U64, false, NULL },
    { "received", 3, F_U64, false, NULL },
    { "ingested", 4, F_U64, false, NULL } } },
  { &buildless__telemetry__event_location__descriptor, TM "EventLocation", {
    { "source_ip", 1, F_BYTES, false, NULL },
    { "timezone", 2, F_STR, false, NULL },
    { "point", 3, F_MSG, false, TM "GeoPoint" },
    { "nielsen", 4, F_STR, false, NULL },
    { "locality", 5, F_STR, false, NULL },
    { "region", 6, F_STR, false, NULL },
    { "country", 7, F_STR, false, NULL },
    { "tag", 8, F_STR, false, NULL },
    { "edge", 9, F_STR, false, NULL } } },
  { &buildless__telemetry__geo_point__descriptor, TM "GeoPoint", {
    { "lat", 1, F_DBL, false, NULL },
    { "lon", 2, F_DBL, false, NULL } } },
  { &google__protobuf__any__descriptor, "google.protobuf.Any", {
    { "type_url", 1, F_STR, false, NULL },
    { "value", 2, F_BYTES, false, NULL } } },
};

struct spec_enum {
  const ProtobufCEnumDescriptor *desc;
  const char *name;
  const char *values[7];   /* values[i] is the name of number i */
};

static const struct spec_enum spec_enums[] = {
  { &buildless__telemetry__repository_provider__descriptor,
    TM "RepositoryProvider", { "NO_REPOSITORY_PROVIDER", "GITHUB" } },
  { &buildless__telemetry__osfamily__descriptor, TM "OSFamily",
    { "UNKNOWN_OS_FAMILY", "UNIX", "LINUX", "DARWIN", "WINDOWS",
      "OTHER_OS" } },
  { &buildless__telemetry__processor_arch__descriptor, TM "ProcessorArch",
    { "UNKNOWN_ARCH", "X86", "ARM" } },
};

static void check_field(const ProtobufCMessageDescriptor *d,
                        const struct spec_field *sf)
{
  const ProtobufCFieldDescriptor *f;
  const char *of;

  f = protobuf_c_message_descriptor_get_field_by_name(d, sf->name);
  if (f == NULL)
    fail_msg("%s.%s: missing", d->name, sf->name);
  if (f->id != sf->number)
    fail_msg("%s.%s: field %u, SPEC 1.1 says %u", d->name, sf->name,
             (unsigned)f->id, (unsigned)sf->number);
  if (f->type != sf->type)
    fail_msg("%s.%s: type %d, SPEC 1.1 says %d", d->name, sf->name,
             (int)f->type, (int)sf->type);
  if ((f->label == PROTOBUF_C_LABEL_REPEATED) != sf->repeated)
    fail_msg("%s.%s: repeated is wrong", d->name, sf->name);
  if (sf->of == NULL)
    return;
  of = f->type == F_MSG
         ? ((const ProtobufCMessageDescriptor *)f->descriptor)->name
         : ((const ProtobufCEnumDescriptor *)f->descriptor)->name;
  if (strcmp(of, sf->of) != 0)
    fail_msg("%s.%s: of type %s, SPEC 1.1 says %s", d->name, sf->name, of,
             sf->of);
}

static void every_field_number_matches_spec(void **state)
{
  const struct spec_message *m;
  unsigned n;
  size_t i;

  (void)state;
  for (i = 0; i < sizeof(spec_messages) / sizeof(spec_messages[0]); i++) {
    m = &spec_messages[i];
    assert_string_equal(m->desc->name, m->name);
    for (n = 0; m->fields[n].name != NULL; n++)
      check_field(m->desc, &m->fields[n]);
    if (m->desc->n_fields != n)
      fail_msg("%s: %u fields, SPEC 1.1 has %u", m->name,
               m->desc->n_fields, n);
  }
}

static void every_enum_value_matches_spec(void **state)
{
  const struct spec_enum *e;
  const ProtobufCEnumValue *v;
  unsigned n;
  size_t i;

  (void)state;
  for (i = 0; i < sizeof(spec_enums) / sizeof(spec_enums[0]); i++) {
    e = &spec_enums[i];
    assert_string_equal(e->desc->name, e->name);
    for (n = 0; e->values[n] != NULL; n++) {
      v = protobuf_c_enum_descriptor_get_value(e->desc, (int)n);
      if (v == NULL || strcmp(v->name, e->values[n]) != 0)
        fail_msg("%s: %u is %s, SPEC 1.1 says %s", e->name, n,
                 v != NULL ? v->name : "missing", e->values[n]);
    }
    assert_int_equal(e->desc->n_values, n);
  }
}

/* ------------------------------------------------------------------ */
/* Bytes encoded by hand from SPEC 1.1 */

static void small_event_packs_to_the_bytes_spec_implies(void **state)
{
  static const uint8_t want[] = {
    0x0a, 0x03, 'a', 'b', 'c',      /* 1 collection */
    0x10, 0x01,                     /* 2 fin */
    0x18, 0x03,                     /* 3 index */
    0x22, 0x01, 's',                /* 4 scope */
    0x2a, 0x1f,                     /* 5 event, 31 bytes: */
    0x32, 0x08,                     /*   6 detail */
    0x22, 0x06,                     /*     4 client */
    0x1a, 0x04,                     /*       3 agent */
    0x22, 0x02,                     /*         4 version */
    0x08, 0x01,                     /*           1 major */
    0x3a, 0x02, 0x10, 0x05,         /*   7 timing { 2 occurred } */
    0x42, 0x03, 0x4a, 0x01, 'e',    /*   8 location { 9 edge } */
    0x4a, 0x01, 0x01,               /*   9 timer */
    0x50, 0x07,                     /*   10 ordinal */
    0x5a, 0x05, 0x0a, 0x03, 'a', '/', 'b' /* 11 data { 1 type_url } */
  };
  Buildless__Service__V1__Event ev = BUILDLESS__SERVICE__V1__EVENT__INIT;
  emd_tevent te = BUILDLESS__TELEMETRY__TELEMETRY_EVENT__INIT;
  Buildless__Telemetry__EventDetail detail =
    BUILDLESS__TELEMETRY__EVENT_DETAIL__INIT;
  Buildless__Telemetry__ClientDetail client =
    BUILDLESS__TELEMETRY__CLIENT_DETAIL__INIT;
  Buildless__Telemetry__APIClientInfo agent =
    BUILDLESS__TELEMETRY__APICLIENT_INFO__INIT;
  Buildless__Telemetry__VersionInfo version =
    BUILDLESS__TELEMETRY__VERSION_INFO__INIT;
  Buildless__Telemetry__EventTiming timing =
    BUILDLESS__TELEMETRY__EVENT_TIMING__INIT;
  Buildless__Telemetry__EventLocation loc =
    BUILDLESS__TELEMETRY__EVENT_LOCATION__INIT;
  Google__Protobuf__Any data = GOOGLE__PROTOBUF__ANY__INIT;
  uint8_t timer = 1, out[sizeof(want) + 8];

  (void)state;
  ev.collection = "abc";
  ev.fin = 1;
  ev.index = 3;
  ev.scope = "s";
  ev.event = &te;
  te.detail = &detail;
  detail.client = &client;
  client.agent = &agent;
  agent.version = &version;
  version.major = 1;
  te.timing = &timing;
  timing.occurred = 5;
  te.location = &loc;
  loc.edge = "e";
  te.timer.data = &timer;
  te.timer.len = 1;
  te.ordinal = 7;
  te.data = &data;
  data.type_url = "a/b";
  assert_int_equal(protobuf_c_message_get_packed_size(&ev.base),
                   sizeof(want));
  assert_int_equal(protobuf_c_message_pack(&ev.base, out), sizeof(want));
  assert_memory_equal(out, want, sizeof(want));
}

/* ------------------------------------------------------------------ */
/* protobuf-c against protoc, every field set */

/* The same message as full_event() builds, in protobuf text format. */
static const char full_text[] =
  "collection: \"builds\"\n"
  "fin: true\n"
  "index: 3\n"
  "scope: \"run-42\"\n"
  "event {\n"
  "  scope: \"svc\"\n"
  "  id: \"01JD8X3QZK4M2N5P7R9T1V3W5Y\"\n"
  "  tenant: \"org_acme\"\n"
  "  user: \"alice\"\n"
  "  context { type: \"type.googleapis.com/buildless.context.Build\"\n"
  "    resource: \"repo::acme\" action: \"compile\" event: \"started\" }\n"
  "  context { type: \"type.googleapis.com/buildless.context.Test\"\n"
  "    resource: \"test::unit\" action: \"run\" event: \"finished\" }\n"
  "  detail {\n"
  "    tenant { oid: 42 name: \"acme\" }\n"
  "    user { uid: \"u-1\" email: \"0123456789abcdef0123456789ABCDEF\"\n"
  "      username: \"al\" }\n"
  "    repository { provider: GITHUB\n"
  "      link: \"https://github.com/acme/widget\" name: \"widget\" }\n"
  "    client {\n"
  "      tool { name: \"gcc\" version { major: 12 minor: 2 micro: 1\n"
  "        build: \"b12\" rc: \"rc12\" commit: \"c12\" tag: \"t12\"\n"
  "        spec: \"12.2.1\" release: 1012 } }\n"
  "      tool { name: \"cmake\" version { major: 3 minor: 25 micro: 2\n"
  "        build: \"b3\" rc: \"rc3\" commit: \"c3\" tag: \"t3\"\n"
  "        spec: \"3.25.2\" release: 1003 } }\n"
  "      os { name: \"Linux\" family: LINUX arch: X86 version {\n"
  "        major: 6 minor: 1 micro: 8 build: \"b6\" rc: \"rc6\"\n"
  "        commit: \"c6\" tag: \"t6\" spec: \"6.1.8-amd64\" release: 1006 } }\n"
  "      agent { name: \"emitd\" version { major: 9 minor: 4 micro: 7\n"
  "        build: \"b9\" rc: \"rc9\" commit: \"c9\" tag: \"t9\"\n"
  "        spec: \"9.4.7\" release: 18446744073709551615 } }\n"
  "    }\n"
  "  }\n"
  "  timing { timehash: \"th\" occurred: 1732761600123\n"
  "    received: 1732761600200 ingested: 1732761600300 }\n"
  "  location { source_ip: \"\\177\\000\\000\\001\"\n"
  "    timezone: \"Europe/Berlin\"\n"
  "    point { lat: 52.52 lon: -13.405 } nielsen: \"n1\"\n"
  "    locality: \"Berlin\" region: \"BE\" country: \"DE\" tag: \"u33d\"\n"
  "    edge: \"fra1\" }\n"
  "  timer: \"\\001\\002\\377\"\n"
  "  ordinal: 7\n"
  "  data { type_url: \"type.googleapis.com/acme.Custom\"\n"
  "    value: \"\\010\\226\\001\" }\n"
  "}\n";

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
  Buildless__Telemetry__EventContext c1, c2, *ctx[2];
  Buildless__Telemetry__EventDetail detail;
  Buildless__Telemetry__TenantDetail tenant;
  Buildless__Telemetry__UserDetail user;
  Buildless__Telemetry__RepositoryDetail repo;
  Buildless__Telemetry__ClientDetail client;
  Buildless__Telemetry__ToolInfo t1, t2, *tools[2];
  Buildless__Telemetry__OSInfo os;
  Buildless__Telemetry__APIClientInfo agent;
  version_t v1, v2, vos, vagent;
  Buildless__Telemetry__EventTiming timing;
  Buildless__Telemetry__EventLocation loc;
  Buildless__Telemetry__GeoPoint point;
  Google__Protobuf__Any data;
};

static void full_detail(struct full *x)
{
  static const char *const s1[] = { "b12", "rc12", "c12", "t12", "12.2.1" };
  static const char *const s2[] = { "b3", "rc3", "c3", "t3", "3.25.2" };
  static const char *const s6[] = { "b6", "rc6", "c6", "t6", "6.1.8-amd64" };
  static const char *const s9[] = { "b9", "rc9", "c9", "t9", "9.4.7" };

  buildless__telemetry__event_detail__init(&x->detail);
  buildless__telemetry__tenant_detail__init(&x->tenant);
  x->tenant.oid = 42;
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
  buildless__telemetry__tool_info__init(&x->t1);
  buildless__telemetry__tool_info__init(&x->t2);
  x->t1.name = "gcc";
  version(&x->v1, 12, 2, 1, s1, 1012);
  x->t1.version = &x->v1;
  x->t2.name = "cmake";
  version(&x->v2, 3, 25, 2, s2, 1003);
  x->t2.version = &x->v2;
  x->tools[0] = &x->t1;
  x->tools[1] = &x->t2;
  x->client.n_tool = 2;
  x->client.tool = x->tools;
  buildless__telemetry__osinfo__init(&x->os);
  x->os.name = "Linux";
  x->os.family = BUILDLESS__TELEMETRY__OSFAMILY__LINUX;
  x->os.arch = BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86;
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
  x->te.user = "alice";
  buildless__telemetry__event_context__init(&x->c1);
  x->c1.type = "type.googleapis.com/buildless.context.Build";
  x->c1.resource = "repo::acme";
  x->c1.action = "compile";
  x->c1.event = "started";
  buildless__telemetry__event_context__init(&x->c2);
  x->c2.type = "type.googleapis.com/buildless.context.Test";
  x->c2.resource = "test::unit";
  x->c2.action = "run";
  x->c2.event = "finished";
  x->ctx[0] = &x->c1;
  x->ctx[1] = &x->c2;
  x->te.n_context = 2;
  x->te.context = x->ctx;
  full_detail(x);
  x->te.detail = &x->detail;
  buildless__telemetry__event_timing__init(&x->timing);
  x->timing.timehash = "th";
  x->timing.occurred = 1732761600123u;
  x->timing.received = 1732761600200u;
  x->timing.ingested = 1732761600300u;
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

/* protoc --encode of text; the bytes, malloc'd, and their length. */
static uint8_t *protoc_encode(const char *text, size_t *len)
{
  char dir[] = "/tmp/emd_wire_XXXXXX", path[64], cmd[4096];
  uint8_t *out;
  size_t cap = 1 << 16;
  FILE *fp;

  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/event.txt", dir);
  fp = fopen(path, "w");
  assert_non_null(fp);
  assert_int_equal(fputs(text, fp) >= 0, 1);
  assert_int_equal(fclose(fp), 0);
  snprintf(cmd, sizeof(cmd),
           "'%s' --encode=buildless.service.v1.Event -I '%s' "
           "buildless/service/v1/emit.proto < '%s'",
           EMD_PROTOC, EMD_PROTO_DIR, path);
  fp = popen(cmd, "r");
  assert_non_null(fp);
  out = malloc(cap);
  assert_non_null(out);
  *len = fread(out, 1, cap, fp);
  assert_int_equal(pclose(fp), 0);
  assert_true(*len < cap);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(rmdir(dir), 0);
  return out;
}

static void full_event_packs_exactly_as_protoc_encodes_it(void **state)
{
  struct full *x = calloc(1, sizeof(*x));
  uint8_t *ours, *theirs;
  size_t n, m;

  (void)state;
  assert_non_null(x);
  full_event(x);
  n = protobuf_c_message_get_packed_size(&x->ev.base);
  ours = malloc(n);
  assert_non_null(ours);
  assert_int_equal(protobuf_c_message_pack(&x->ev.base, ours), n);
  theirs = protoc_encode(full_text, &m);
  assert_int_equal(n, m);
  assert_memory_equal(ours, theirs, n);
  free(theirs);
  free(ours);
  free(x);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(every_field_number_matches_spec),
    cmocka_unit_test(every_enum_value_matches_spec),
    cmocka_unit_test(small_event_packs_to_the_bytes_spec_implies),
    cmocka_unit_test(full_event_packs_exactly_as_protoc_encodes_it),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
