/* test_enrich.c: lib/emd_enrich.c, what emitd fills into an event (SPEC
 * 2.1): ULIDs, the OS from uname(2), the [enrich] values of a real config
 * file, the scope from the config or the CI's environment, and the three
 * timer rules, checked against SHA-256 computed here with OpenSSL. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "emd_arena.h"
#include "emd_config.h"
#include "emd_enrich.h"

#define NOW_MS 1700000000123ull

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

struct fx {
  char dir[64];             /* mkdtemp: the config file lives here */
  char path[128];
  struct emd_config cfg;
  bool have_cfg;
  struct emd_arena arena;
  uint8_t iid[16];          /* the spool's instance ID, made up */
  struct emd_enrich *en;
};

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  strcpy(f->dir, "/tmp/emd-enrich-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/agent.conf", f->dir);
  for (int i = 0; i < 16; i++)
    f->iid[i] = (uint8_t)(0xa0 + i);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;

  emd_enrich_close(f->en);
  emd_arena_free(&f->arena);
  if (f->have_cfg)
    emd_config_free(&f->cfg);
  unlink(f->path);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Loads a config made of ini (no environment overrides). */
static void load_cfg(struct fx *f, const char *ini)
{
  char err[256] = "";
  FILE *fp = fopen(f->path, "w");

  assert_non_null(fp);
  fputs(ini, fp);
  fclose(fp);
  if (emd_config_load(&f->cfg, f->path, NULL, err, sizeof(err)) != 0)
    fail_msg("config: %s", err);
  f->have_cfg = true;
}

/* Opens the enrichment over the loaded config (or defaults) and envp. */
static void open_enrich(struct fx *f, char *const *envp)
{
  if (!f->have_cfg) {
    assert_int_equal(emd_config_defaults(&f->cfg), 0);
    f->have_cfg = true;
  }
  assert_int_equal(emd_enrich_open(&f->cfg, envp, f->iid, &f->en), 0);
}

/* An empty envelope and event, as protobuf-c's init functions leave them,
 * in the arena. */
static emd_event *new_event(struct fx *f)
{
  emd_event *ev = emd_arena_alloc(&f->arena, sizeof(*ev));
  emd_tevent *te = emd_arena_alloc(&f->arena, sizeof(*te));

  assert_non_null(ev);
  assert_non_null(te);
  buildless__service__v1__event__init(ev);
  buildless__telemetry__telemetry_event__init(te);
  ev->event = te;
  return ev;
}

static void sha256_timer(const uint8_t iid[16], const char *scope,
                         size_t len, uint8_t out[16])
{
  uint8_t md[32];
  unsigned mdlen = 0;
  EVP_MD_CTX *c = EVP_MD_CTX_new();

  assert_non_null(c);
  assert_int_equal(EVP_DigestInit_ex(c, EVP_sha256(), NULL), 1);
  assert_int_equal(EVP_DigestUpdate(c, iid, 16), 1);
  assert_int_equal(EVP_DigestUpdate(c, scope, len), 1);
  assert_int_equal(EVP_DigestFinal_ex(c, md, &mdlen), 1);
  assert_int_equal(mdlen, 32);
  EVP_MD_CTX_free(c);
  memcpy(out, md, 16);
}

static void expect_scope_timer(const struct fx *f, const emd_tevent *te,
                               const char *scope)
{
  uint8_t want[16];

  sha256_timer(f->iid, scope, strlen(scope), want);
  assert_int_equal(te->timer.len, 16);
  assert_memory_equal(te->timer.data, want, 16);
}

/* ---- ULIDs ----------------------------------------------------------- */

static uint64_t ulid_time(const char *id)
{
  uint64_t t = 0;

  for (int i = 0; i < 10; i++) {
    const char *p = strchr(crockford, id[i]);

    assert_non_null(p);
    t = t << 5 | (uint64_t)(p - crockford);
  }
  return t;
}

static void expect_ulid_shape(const char *id)
{
  assert_int_equal(strlen(id), 26);
  for (int i = 0; i < 26; i++)
    if (id[i] == '\0' || strchr(crockford, id[i]) == NULL)
      fail_msg("%s: '%c' at %d is not Crockford base32", id, id[i], i);
  /* 48 bits of time in 50: the first digit is at most 7. */
  assert_true(id[0] <= '7');
}

static void ulid_is_26_crockford_digits_encoding_now(void **state)
{
  struct fx *f = *state;
  char id[27];

  open_enrich(f, NULL);
  emd_enrich_ulid(f->en, NOW_MS, id);
  expect_ulid_shape(id);
  assert_int_equal(ulid_time(id), NOW_MS);
  emd_enrich_ulid(f->en, 0xffffffffffffull, id);   /* the largest time */
  expect_ulid_shape(id);
  assert_int_equal(ulid_time(id), 0xffffffffffffull);
}

static void ulids_of_one_millisecond_strictly_increase(void **state)
{
  struct fx *f = *state;
  char prev[27], id[27];

  open_enrich(f, NULL);
  emd_enrich_ulid(f->en, NOW_MS, prev);
  for (int i = 0; i < 10000; i++) {
    emd_enrich_ulid(f->en, NOW_MS, id);
    expect_ulid_shape(id);
    assert_int_equal(ulid_time(id), NOW_MS);
    if (strcmp(prev, id) >= 0)
      fail_msg("%s then %s", prev, id);
    memcpy(prev, id, sizeof(id));
  }
}

/* The 80-bit random part of a ULID as hi (top 16 bits) and lo. */
static void ulid_random(const char *id, uint64_t *hi, uint64_t *lo)
{
  *hi = *lo = 0;
  for (int i = 10; i < 26; i++) {
    uint64_t d = (uint64_t)(strchr(crockford, id[i]) - crockford);

    *hi = *hi << 5 | *lo >> 59;
    *lo = *lo << 5 | d;
  }
}

static void ulids_of_one_millisecond_count_up_by_one(void **state)
{
  struct fx *f = *state;
  uint64_t hi0, lo0, hi, lo;
  char id[27];

  open_enrich(f, NULL);
  emd_enrich_ulid(f->en, NOW_MS, id);
  ulid_random(id, &hi0, &lo0);
  assert_true(hi0 < 1u << 16);
  for (int i = 0; i < 1000; i++) {
    emd_enrich_ulid(f->en, NOW_MS, id);
    ulid_random(id, &hi, &lo);
    lo0++;
    hi0 = (hi0 + (lo0 == 0)) & 0xffff;
    if (hi != hi0 || lo != lo0)
      fail_msg("%s: random part %04llx%016llx, wanted %04llx%016llx", id,
               (unsigned long long)hi, (unsigned long long)lo,
               (unsigned long long)hi0, (unsigned long long)lo0);
  }
}

static void ulids_increase_across_milliseconds_and_a_clock_step_back(
  void **state)
{
  struct fx *f = *state;
  static const uint64_t times[] = {
    NOW_MS, NOW_MS + 1, NOW_MS + 1, NOW_MS + 1000, NOW_MS - 5000, NOW_MS,
    NOW_MS + 1001,
  };
  char prev[27] = "", id[27];

  open_enrich(f, NULL);
  for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
    emd_enrich_ulid(f->en, times[i], id);
    expect_ulid_shape(id);
    if (strcmp(prev, id) >= 0)
      fail_msg("at %zu: %s then %s", i, prev, id);
    memcpy(prev, id, sizeof(id));
  }
  assert_int_equal(ulid_time(id), NOW_MS + 1001);
}

static void ulids_of_two_enrichments_differ(void **state)
{
  struct fx *f = *state;
  struct emd_enrich *other;
  char a[27], b[27];

  open_enrich(f, NULL);
  assert_int_equal(emd_enrich_open(&f->cfg, NULL, f->iid, &other), 0);
  emd_enrich_ulid(f->en, NOW_MS, a);
  emd_enrich_ulid(other, NOW_MS, b);
  assert_memory_equal(a, b, 10);          /* the same time */
  assert_string_not_equal(a + 10, b + 10); /* random parts of their own */
  emd_enrich_close(other);
}

/* ---- OS and hashing helpers ----------------------------------------- */

static void expect_release(const char *r, uint32_t a, uint32_t b, uint32_t c)
{
  uint32_t v[3] = { 99, 99, 99 };

  emd_enrich_parse_release(r, v);
  if (v[0] != a || v[1] != b || v[2] != c)
    fail_msg("\"%s\": %u.%u.%u, wanted %u.%u.%u", r, v[0], v[1], v[2], a,
             b, c);
}

static void release_parses_into_major_minor_micro(void **state)
{
  (void)state;
  expect_release("6.1.0-18-amd64", 6, 1, 0);
  expect_release("5.15", 5, 15, 0);
  expect_release("5.15.0-1051-azure", 5, 15, 0);
  expect_release("4.19.287", 4, 19, 287);
  expect_release("6.8.0-rc1+", 6, 8, 0);
  expect_release("3", 3, 0, 0);
  expect_release("10.20.30.40", 10, 20, 30);
  expect_release("garbage", 0, 0, 0);
  expect_release("", 0, 0, 0);
  expect_release("-1.2.3", 0, 0, 0);
}

static void arch_maps_machines_to_processor_families(void **state)
{
  static const struct {
    const char *machine;
    int arch;
  } cases[] = {
    { "x86_64", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86 },
    { "i686", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86 },
    { "i386", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86 },
    { "i586", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86 },
    { "aarch64", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM },
    { "armv7l", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM },
    { "armv6l", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM },
    { "riscv64", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__UNKNOWN_ARCH },
    { "s390x", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__UNKNOWN_ARCH },
    { "ia64", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__UNKNOWN_ARCH },
    { "i", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__UNKNOWN_ARCH },
    { "", BUILDLESS__TELEMETRY__PROCESSOR_ARCH__UNKNOWN_ARCH },
  };

  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    if (emd_enrich_arch(cases[i].machine) != cases[i].arch)
      fail_msg("%s: %d, wanted %d", cases[i].machine,
               emd_enrich_arch(cases[i].machine), cases[i].arch);
}

static void scope_timer_is_sha256_of_instance_and_scope(void **state)
{
  static const char *const scopes[] = {
    "build-1234", "", "x", "a scope with spaces", "ünïcödé",
  };
  uint8_t iid[16], got[16], want[16];

  (void)state;
  for (int i = 0; i < 16; i++)
    iid[i] = (uint8_t)(i * 17);
  for (size_t i = 0; i < sizeof(scopes) / sizeof(scopes[0]); i++) {
    size_t n = strlen(scopes[i]);

    emd_enrich_scope_timer(iid, scopes[i], n, got);
    sha256_timer(iid, scopes[i], n, want);
    assert_memory_equal(got, want, 16);
  }
  /* len counts, not a NUL: "ab" of "abc" is the timer of "ab". */
  emd_enrich_scope_timer(iid, "abc", 2, got);
  sha256_timer(iid, "ab", 2, want);
  assert_memory_equal(got, want, 16);
  /* Another instance, another timer. */
  iid[0] ^= 1;
  emd_enrich_scope_timer(iid, "ab", 2, got);
  assert_memory_not_equal(got, want, 16);
}

/* ---- apply: what is filled, what is kept ---------------------------- */

static void apply_fills_id_occurred_agent_and_os(void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn conn = { 0 };
  emd_event *ev;
  emd_tevent *te;
  struct utsname uts;
  uint32_t v[3];

  open_enrich(f, NULL);
  ev = new_event(f);
  te = ev->event;
  assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena, NOW_MS), 0);

  expect_ulid_shape(te->id);
  assert_int_equal(ulid_time(te->id), NOW_MS);
  assert_non_null(te->timing);
  assert_int_equal(te->timing->occurred, NOW_MS);

  assert_non_null(te->detail);
  assert_non_null(te->detail->client);
  const Buildless__Telemetry__APIClientInfo *ag = te->detail->client->agent;
  assert_non_null(ag);
  assert_string_equal(ag->name, "emitd");
  assert_non_null(ag->version);
  assert_int_equal(ag->version->major, EMD_VERSION_MAJOR);
  assert_int_equal(ag->version->minor, EMD_VERSION_MINOR);
  assert_int_equal(ag->version->micro, EMD_VERSION_MICRO);
  assert_string_equal(ag->version->spec, EMD_VERSION);

  assert_int_equal(uname(&uts), 0);
  emd_enrich_parse_release(uts.release, v);
  const Buildless__Telemetry__OSInfo *os = te->detail->client->os;
  assert_non_null(os);
  assert_string_equal(os->name, uts.sysname);
  assert_int_equal(os->family, BUILDLESS__TELEMETRY__OSFAMILY__LINUX);
  assert_int_equal(os->arch, emd_enrich_arch(uts.machine));
  assert_non_null(os->version);
  assert_int_equal(os->version->major, v[0]);
  assert_int_equal(os->version->minor, v[1]);
  assert_int_equal(os->version->micro, v[2]);
  assert_string_equal(os->version->spec, uts.release);

  /* Nothing configured: no tenant, no location, no repository, no
   * scope. */
  assert_string_equal(te->tenant, "");
  assert_null(te->location);
  assert_null(te->detail->repository);
  assert_string_equal(ev->scope, "");
  assert_null(emd_enrich_scope(f->en));

  /* The whole event packs (protobuf-c reads every piece we filled). */
  size_t n = buildless__service__v1__event__get_packed_size(ev);
  uint8_t *buf = emd_arena_alloc(&f->arena, n);
  assert_int_equal(buildless__service__v1__event__pack(ev, buf), n);
}

static const char full_enrich[] =
  "[enrich]\n"
  "tenant = org_acme\n"
  "timezone = Europe/Berlin\n"
  "repository_provider = GITHUB\n"
  "repository_link = https://github.com/acme/app\n"
  "repository_name = acme/app\n";

static void apply_stamps_the_enrich_values_of_the_config(void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn conn = { 0 };
  emd_event *ev;
  emd_tevent *te;

  load_cfg(f, full_enrich);
  open_enrich(f, NULL);
  ev = new_event(f);
  te = ev->event;
  assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena, NOW_MS), 0);
  assert_string_equal(te->tenant, "org_acme");
  assert_non_null(te->location);
  assert_string_equal(te->location->timezone, "Europe/Berlin");
  const Buildless__Telemetry__RepositoryDetail *repo = te->detail->repository;
  assert_non_null(repo);
  assert_int_equal(repo->provider,
                   BUILDLESS__TELEMETRY__REPOSITORY_PROVIDER__GITHUB);
  assert_string_equal(repo->link, "https://github.com/acme/app");
  assert_string_equal(repo->name, "acme/app");
}

static void apply_fills_empty_parts_of_what_the_client_sent(void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn conn = { 0 };
  Buildless__Telemetry__EventDetail detail;
  Buildless__Telemetry__EventLocation loc;
  Buildless__Telemetry__EventTiming timing;
  emd_event *ev;
  emd_tevent *te;

  load_cfg(f, full_enrich);
  open_enrich(f, NULL);
  ev = new_event(f);
  te = ev->event;
  /* Present but empty: a detail without a client, a location without a
   * timezone, a timing with occurred 0, an empty id. */
  buildless__telemetry__event_detail__init(&detail);
  buildless__telemetry__event_location__init(&loc);
  buildless__telemetry__event_timing__init(&timing);
  loc.country = "DE";
  te->detail = &detail;
  te->location = &loc;
  te->timing = &timing;
  assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena, NOW_MS), 0);
  assert_ptr_equal(te->detail, &detail);
  assert_non_null(detail.client);
  assert_non_null(detail.client->agent);
  assert_non_null(detail.client->os);
  assert_non_null(detail.repository);
  assert_ptr_equal(te->location, &loc);
  assert_string_equal(loc.timezone, "Europe/Berlin");
  assert_string_equal(loc.country, "DE");
  assert_ptr_equal(te->timing, &timing);
  assert_int_equal(timing.occurred, NOW_MS);
  expect_ulid_shape(te->id);
}

static void apply_keeps_everything_the_client_set(void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn conn = { 0 };
  Buildless__Telemetry__EventDetail detail;
  Buildless__Telemetry__ClientDetail client;
  Buildless__Telemetry__APIClientInfo agent;
  Buildless__Telemetry__OSInfo os;
  Buildless__Telemetry__RepositoryDetail repo;
  Buildless__Telemetry__EventLocation loc;
  Buildless__Telemetry__EventTiming timing;
  uint8_t timer[5] = { 1, 2, 3, 4, 5 };
  char id[] = "01CLIENTSETID0000000000000";
  emd_event *ev;
  emd_tevent *te;

  load_cfg(f, "[enrich]\nscope = cfg-scope\n"
              "tenant = org_acme\ntimezone = Europe/Berlin\n"
              "repository_name = acme/app\n");
  open_enrich(f, NULL);
  ev = new_event(f);
  te = ev->event;
  buildless__telemetry__event_detail__init(&detail);
  buildless__telemetry__client_detail__init(&client);
  buildless__telemetry__apiclient_info__init(&agent);
  buildless__telemetry__osinfo__init(&os);
  buildless__telemetry__repository_detail__init(&repo);
  buildless__telemetry__event_location__init(&loc);
  buildless__telemetry__event_timing__init(&timing);
  agent.name = "my-tool";
  os.name = "Plan9";
  repo.name = "mine/repo";
  loc.timezone = "Asia/Tokyo";
  timing.occurred = 42;
  client.agent = &agent;
  client.os = &os;
  detail.client = &client;
  detail.repository = &repo;
  te->detail = &detail;
  te->location = &loc;
  te->timing = &timing;
  te->id = id;
  te->tenant = "org_mine";
  te->timer.data = timer;
  te->timer.len = sizeof(timer);
  ev->scope = "my-scope";

  assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena, NOW_MS), 0);
  assert_ptr_equal(te->id, id);
  assert_string_equal(te->id, "01CLIENTSETID0000000000000");
  assert_ptr_equal(te->timing, &timing);
  assert_int_equal(timing.occurred, 42);
  assert_ptr_equal(te->detail, &detail);
  assert_ptr_equal(detail.client, &client);
  assert_ptr_equal(client.agent, &agent);
  assert_string_equal(agent.name, "my-tool");
  assert_ptr_equal(client.os, &os);
  assert_ptr_equal(detail.repository, &repo);
  assert_string_equal(repo.name, "mine/repo");
  assert_string_equal(te->tenant, "org_mine");
  assert_ptr_equal(te->location, &loc);
  assert_string_equal(loc.timezone, "Asia/Tokyo");
  assert_string_equal(ev->scope, "my-scope");
  assert_ptr_equal(te->timer.data, timer);
  assert_int_equal(te->timer.len, sizeof(timer));
  /* No connection timer was made for it. */
  assert_false(conn.has_timer);
}

/* ---- scope: the config, else the CI ---------------------------------- */

static void enrich_scope_in_the_config_wins_over_ci_variables(void **state)
{
  struct fx *f = *state;
  char *envp[] = { "GITHUB_RUN_ID=111", "BUILD_TAG=jenkins-1", NULL };
  struct emd_enrich_conn conn = { 0 };
  emd_event *ev;

  load_cfg(f, "[enrich]\nscope = build-7\n");
  open_enrich(f, envp);
  assert_string_equal(emd_enrich_scope(f->en), "build-7");
  ev = new_event(f);
  assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena, NOW_MS), 0);
  assert_string_equal(ev->scope, "build-7");
  /* A scope emitd filled in counts for the timer. */
  expect_scope_timer(f, ev->event, "build-7");
  assert_false(conn.has_timer);
}

static void ci_variables_are_tried_in_the_documented_order(void **state)
{
  struct fx *f = *state;
  static const char *const vars[] = {
    "GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_ID", "BUILD_TAG",
  };
  char env[4][64];

  open_enrich(f, NULL);
  assert_null(emd_enrich_scope(f->en));
  emd_enrich_close(f->en);
  f->en = NULL;
  /* With variables first..3 set (listed backwards, so the order of envp
   * does not decide), the scope is variable first's value. */
  for (int first = 0; first < 4; first++) {
    char *envp[6];
    int n = 0;

    envp[n++] = "PATH=/usr/bin";
    for (int i = 3; i >= first; i--) {
      snprintf(env[i], sizeof(env[i]), "%s=value-of-%d", vars[i], i);
      envp[n++] = env[i];
    }
    envp[n] = NULL;
    open_enrich(f, envp);
    char want[32];

    snprintf(want, sizeof(want), "value-of-%d", first);
    assert_non_null(emd_enrich_scope(f->en));
    assert_string_equal(emd_enrich_scope(f->en), want);

    struct emd_enrich_conn conn = { 0 };
    emd_event *ev = new_event(f);

    assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena, NOW_MS),
                     0);
    assert_string_equal(ev->scope, want);
    expect_scope_timer(f, ev->event, want);
    emd_enrich_close(f->en);
    f->en = NULL;
  }
}

static void empty_or_look_alike_ci_variables_are_not_a_scope(void **state)
{
  struct fx *f = *state;
  char *envp[] = {
    "GITHUB_RUN_ID=", "GITHUB_RUN_ID_X=1", "XCI_PIPELINE_ID=2",
    "BUILDKITE_BUILD_ID", "BUILD_TAG=jenkins-app-9", NULL,
  };
  char *none[] = { "GITHUB_RUN_ID=", "CI_PIPELINE_IDX=3", NULL };

  open_enrich(f, envp);
  assert_string_equal(emd_enrich_scope(f->en), "jenkins-app-9");
  emd_enrich_close(f->en);
  f->en = NULL;
  open_enrich(f, none);
  assert_null(emd_enrich_scope(f->en));
}

/* ---- the three timer rules ------------------------------------------ */

static void client_scope_gives_the_scope_timer_on_any_connection(
  void **state)
{
  struct fx *f = *state;
  char *envp[] = { "GITHUB_RUN_ID=gh-1", NULL };
  struct emd_enrich_conn c1 = { 0 }, c2 = { 0 };
  emd_event *a, *b, *other;

  open_enrich(f, envp);
  a = new_event(f);
  b = new_event(f);
  other = new_event(f);
  a->scope = "ci-42";
  b->scope = "ci-42";
  other->scope = "ci-43";
  assert_int_equal(emd_enrich_apply(f->en, a, &c1, &f->arena, NOW_MS), 0);
  assert_int_equal(emd_enrich_apply(f->en, b, &c2, &f->arena, NOW_MS), 0);
  assert_int_equal(emd_enrich_apply(f->en, other, &c1, &f->arena, NOW_MS),
                   0);
  /* The client's scope is kept over the CI's. */
  assert_string_equal(a->scope, "ci-42");
  expect_scope_timer(f, a->event, "ci-42");
  expect_scope_timer(f, b->event, "ci-42");
  expect_scope_timer(f, other->event, "ci-43");
  assert_false(c1.has_timer);
  assert_false(c2.has_timer);
}

static void scope_timers_stay_right_past_the_cache(void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn conn = { 0 };
  char scopes[200][16];

  open_enrich(f, NULL);
  for (int i = 0; i < 200; i++)
    snprintf(scopes[i], sizeof(scopes[i]), "scope-%d", i);
  /* Round robin over more scopes than are remembered (64), twice, and
   * then one scope again and again. */
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 200; i++) {
      emd_event *ev = new_event(f);

      ev->scope = scopes[round < 2 ? i : 7];
      assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena,
                                        NOW_MS), 0);
      expect_scope_timer(f, ev->event, ev->scope);
    }
    emd_arena_reset(&f->arena);
  }
}

/* Scopes of every length from 1 to 40 bytes, and ones that differ from
 * another only in one byte (first, middle or last), each get their own
 * scope timer, from the cache as when first made. */
static void scope_timers_of_every_length_and_near_alike_scopes(void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn conn = { 0 };
  static char scopes[40 * 4][48];
  size_t n = 0;

  open_enrich(f, NULL);
  for (size_t len = 1; len <= 40; len++) {
    size_t at[] = { 0, len / 2, len - 1 };

    for (size_t k = 0; k < len; k++)
      scopes[n][k] = (char)('a' + k % 26);
    n++;
    for (size_t j = 0; j < 3; j++) {
      memcpy(scopes[n], scopes[n - 1 - j], len);
      scopes[n][at[j]] = 'Z';
      n++;
    }
  }
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < n; i++) {
      emd_event *ev = new_event(f);

      ev->scope = scopes[i];
      assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena,
                                        NOW_MS), 0);
      expect_scope_timer(f, ev->event, ev->scope);
      /* and again at once: from the cache */
      ev = new_event(f);
      ev->scope = scopes[i];
      assert_int_equal(emd_enrich_apply(f->en, ev, &conn, &f->arena,
                                        NOW_MS), 0);
      expect_scope_timer(f, ev->event, ev->scope);
    }
    emd_arena_reset(&f->arena);
  }
}

static void connection_timer_is_shared_within_and_differs_between(
  void **state)
{
  struct fx *f = *state;
  struct emd_enrich_conn c1 = { 0 }, c2 = { 0 };
  static const uint8_t zero[16] = { 0 };
  emd_event *a1, *a2, *b1;

  open_enrich(f, NULL);
  a1 = new_event(f);
  a2 = new_event(f);
  b1 = new_event(f);
  assert_int_equal(emd_enrich_apply(f->en, a1, &c1, &f->arena, NOW_MS), 0);
  assert_true(c1.has_timer);
  assert_int_equal(emd_enrich_apply(f->en, a2, &c1, &f->arena, NOW_MS + 1),
                   0);
  assert_int_equal(emd_enrich_apply(f->en, b1, &c2, &f->arena, NOW_MS), 0);
  assert_true(c2.has_timer);
  assert_int_equal(a1->event->timer.len, 16);
  assert_int_equal(a2->event->timer.len, 16);
  assert_int_equal(b1->event->timer.len, 16);
  assert_memory_equal(a1->event->timer.data, c1.timer, 16);
  assert_memory_equal(a2->event->timer.data, c1.timer, 16);
  assert_memory_equal(b1->event->timer.data, c2.timer, 16);
  assert_memory_not_equal(c1.timer, c2.timer, 16);
  assert_memory_not_equal(c1.timer, zero, 16);
  /* No scope anywhere: events keep an empty scope. */
  assert_string_equal(a1->scope, "");
  /* Each event got its own id. */
  assert_string_not_equal(a1->event->id, a2->event->id);
  assert_string_not_equal(a1->event->id, b1->event->id);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(ulid_is_26_crockford_digits_encoding_now),
    T(ulids_of_one_millisecond_strictly_increase),
    T(ulids_of_one_millisecond_count_up_by_one),
    T(ulids_increase_across_milliseconds_and_a_clock_step_back),
    T(ulids_of_two_enrichments_differ),
    T(release_parses_into_major_minor_micro),
    T(arch_maps_machines_to_processor_families),
    T(scope_timer_is_sha256_of_instance_and_scope),
    T(apply_fills_id_occurred_agent_and_os),
    T(apply_stamps_the_enrich_values_of_the_config),
    T(apply_fills_empty_parts_of_what_the_client_sent),
    T(apply_keeps_everything_the_client_set),
    T(enrich_scope_in_the_config_wins_over_ci_variables),
    T(ci_variables_are_tried_in_the_documented_order),
    T(empty_or_look_alike_ci_variables_are_not_a_scope),
    T(client_scope_gives_the_scope_timer_on_any_connection),
    T(scope_timers_stay_right_past_the_cache),
    T(scope_timers_of_every_length_and_near_alike_scopes),
    T(connection_timer_is_shared_within_and_differs_between),
#undef T
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
