/* emd_enrich.c: see emd_enrich.h. */
#include "emd_enrich.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/utsname.h>

/* SHA256_Init and friends are deprecated in OpenSSL 3 in favour of EVP,
 * but EVP fetches the algorithm on every digest: about 7 800 instructions
 * per timer against 1 700 (emd_codec.c makes the same choice). */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include "emd_err.h"

/* Recent scope -> timer pairs kept: SCOPE_SETS sets of SCOPE_WAYS, a set
 * picked by a hash of the scope, so a few dozen scopes (a CI runner with
 * many concurrent jobs, the benchmark's 16) all stay cached. */
#define SCOPE_SETS 16
#define SCOPE_WAYS 4

struct scope_timer {
  char *scope;                      /* malloc'd; NULL if the slot is free */
  size_t len;
  uint64_t hash;                    /* scope_hash() of scope */
  uint8_t timer[EMD_TIMER_LEN];
};

struct emd_enrich {
  const struct emd_config *cfg;
  uint8_t instance_id[16];
  char *scope;                      /* enrich.scope or the CI build ID */
  uint64_t rng[4];                  /* xoshiro256** state for ULIDs, timers */
  uint64_t ulid_ms;                 /* time part of the last ULID */
  uint8_t ulid_rand[10];            /* random part of the last ULID */
  struct scope_timer cache[SCOPE_SETS][SCOPE_WAYS];
  uint8_t cache_next[SCOPE_SETS];   /* way the set's next miss replaces */
  /* Read-only pieces shared by every event (protobuf-c packs, never
   * writes): the agent, the OS and the configured repository. */
  Buildless__Telemetry__VersionInfo agent_version;
  Buildless__Telemetry__APIClientInfo agent;
  Buildless__Telemetry__VersionInfo os_version;
  Buildless__Telemetry__OSInfo os;
  Buildless__Telemetry__RepositoryDetail repo;
  bool has_repo;
  struct utsname uts;
  char agent_spec[32];
};

static uint64_t rotl(uint64_t x, int k)
{
  return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4])
{
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;

  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static void rng_fill(uint64_t s[4], uint8_t *out, size_t n)
{
  while (n > 0) {
    uint64_t r = rng_next(s);
    size_t k = n < 8 ? n : 8;

    memcpy(out, &r, k);
    out += k;
    n -= k;
  }
}

static const char *env_get(char *const *envp, const char *name)
{
  size_t n = strlen(name);

  for (; envp != NULL && *envp != NULL; envp++)
    if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
      return *envp + n + 1;
  return NULL;
}

int emd_enrich_arch(const char *m)
{
  if (strncmp(m, "x86", 3) == 0 ||
      (m[0] == 'i' && m[1] != '\0' && strcmp(m + 2, "86") == 0))
    return BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86;
  if (strncmp(m, "arm", 3) == 0 || strcmp(m, "aarch64") == 0)
    return BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM;
  return BUILDLESS__TELEMETRY__PROCESSOR_ARCH__UNKNOWN_ARCH;
}

void emd_enrich_parse_release(const char *r, uint32_t v[3])
{
  v[0] = v[1] = v[2] = 0;
  for (int i = 0; i < 3; i++) {
    uint64_t x = 0;

    if (*r < '0' || *r > '9')
      return;
    while (*r >= '0' && *r <= '9') {
      x = x * 10 + (uint64_t)(*r++ - '0');
      if (x > UINT32_MAX)
        x = UINT32_MAX;
    }
    v[i] = (uint32_t)x;
    if (*r != '.')
      return;
    r++;
  }
}

void emd_enrich_scope_timer(const uint8_t instance_id[16], const char *scope,
                            size_t len, uint8_t out[EMD_TIMER_LEN])
{
  uint8_t md[SHA256_DIGEST_LENGTH];
  SHA256_CTX c;

  SHA256_Init(&c);
  SHA256_Update(&c, instance_id, 16);
  SHA256_Update(&c, scope, len);
  SHA256_Final(md, &c);
  memcpy(out, md, EMD_TIMER_LEN);
}

static void build_tables(struct emd_enrich *en)
{
  const struct emd_config *cfg = en->cfg;
  uint32_t v[3];

  buildless__telemetry__version_info__init(&en->agent_version);
  en->agent_version.major = EMD_VERSION_MAJOR;
  en->agent_version.minor = EMD_VERSION_MINOR;
  en->agent_version.micro = EMD_VERSION_MICRO;
  snprintf(en->agent_spec, sizeof(en->agent_spec), "%s", EMD_VERSION);
  en->agent_version.spec = en->agent_spec;
  buildless__telemetry__apiclient_info__init(&en->agent);
  en->agent.name = "emitd";
  en->agent.version = &en->agent_version;

  buildless__telemetry__version_info__init(&en->os_version);
  buildless__telemetry__osinfo__init(&en->os);
  if (uname(&en->uts) == 0) {
    emd_enrich_parse_release(en->uts.release, v);
    en->os_version.major = v[0];
    en->os_version.minor = v[1];
    en->os_version.micro = v[2];
    en->os_version.spec = en->uts.release;
    en->os.name = en->uts.sysname;
    en->os.arch = emd_enrich_arch(en->uts.machine);
    en->os.version = &en->os_version;
  }
  en->os.family = BUILDLESS__TELEMETRY__OSFAMILY__LINUX;

  buildless__telemetry__repository_detail__init(&en->repo);
  en->repo.provider = cfg->enrich.repository_provider;
  if (cfg->enrich.repository_link != NULL)
    en->repo.link = cfg->enrich.repository_link;
  if (cfg->enrich.repository_name != NULL)
    en->repo.name = cfg->enrich.repository_name;
  en->has_repo = cfg->enrich.repository_provider != 0 ||
                 cfg->enrich.repository_link != NULL ||
                 cfg->enrich.repository_name != NULL;
}

int emd_enrich_open(const struct emd_config *cfg, char *const *envp,
                    const uint8_t instance_id[16], struct emd_enrich **out)
{
  static const char *const ci_vars[] = {
    "GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_ID", "BUILD_TAG",
  };
  struct emd_enrich *en;
  const char *scope = cfg->enrich.scope;

  en = calloc(1, sizeof(*en));
  if (en == NULL)
    return -ENOMEM;
  en->cfg = cfg;
  memcpy(en->instance_id, instance_id, 16);
  if (getrandom(en->rng, sizeof(en->rng), 0) != sizeof(en->rng)) {
    free(en);
    return -EIO;
  }
  for (size_t i = 0; scope == NULL && i < sizeof(ci_vars) / sizeof(*ci_vars);
       i++) {
    scope = env_get(envp, ci_vars[i]);
    if (scope != NULL && *scope == '\0')
      scope = NULL;
  }
  if (scope != NULL && (en->scope = strdup(scope)) == NULL) {
    free(en);
    return -ENOMEM;
  }
  build_tables(en);
  *out = en;
  return 0;
}

void emd_enrich_close(struct emd_enrich *en)
{
  if (en == NULL)
    return;
  for (int i = 0; i < SCOPE_SETS; i++)
    for (int j = 0; j < SCOPE_WAYS; j++)
      free(en->cache[i][j].scope);
  free(en->scope);
  free(en);
}

const char *emd_enrich_scope(const struct emd_enrich *en)
{
  return en->scope;
}

void emd_enrich_ulid(struct emd_enrich *en, uint64_t now_ms, char out[27])
{
  static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  uint8_t *r = en->ulid_rand;

  if (now_ms > en->ulid_ms) {
    en->ulid_ms = now_ms;
    rng_fill(en->rng, r, sizeof(en->ulid_rand));
  } else {
    /* Same (or earlier) millisecond: count up, so ids stay sortable. */
    for (int i = 9; i >= 0 && ++r[i] == 0; i--)
      ;
  }
  uint64_t t = en->ulid_ms, a = 0, b = 0;
  for (int i = 9; i >= 0; i--) {
    out[i] = b32[t & 31];
    t >>= 5;
  }
  /* 80 random bits, big-endian, as 16 base32 digits: two halves of 40
   * bits, 8 digits each. */
  for (int i = 0; i < 5; i++) {
    a = a << 8 | r[i];
    b = b << 8 | r[5 + i];
  }
  for (int i = 7; i >= 0; i--) {
    out[10 + i] = b32[a & 31];
    out[18 + i] = b32[b & 31];
    a >>= 5;
    b >>= 5;
  }
  out[26] = '\0';
}

/* FNV-1a over 8-byte words: picks a cache set and screens its slots. A
 * scope of 8 bytes or more ends with its last 8 bytes as one more word
 * (overlapping the one before), not byte by byte. */
static uint64_t scope_hash(const char *s, size_t len)
{
  uint64_t h = 0xcbf29ce484222325u, w;
  size_t i = 0;

  for (; i + 8 <= len; i += 8) {
    memcpy(&w, s + i, 8);
    h = (h ^ w) * 0x100000001b3u;
    h ^= h >> 29;
  }
  if (i < len && len >= 8) {
    memcpy(&w, s + len - 8, 8);
    h = (h ^ w) * 0x100000001b3u;
    h ^= h >> 29;
  } else {
    for (; i < len; i++)
      h = (h ^ (unsigned char)s[i]) * 0x100000001b3u;
  }
  return h ^ (h >> 32);
}

static const uint8_t *scope_timer(struct emd_enrich *en, const char *scope)
{
  size_t len = strlen(scope);
  uint64_t h = scope_hash(scope, len);
  unsigned set = (unsigned)h % SCOPE_SETS;
  struct scope_timer *st, *ways = en->cache[set];

  for (int i = 0; i < SCOPE_WAYS; i++) {
    st = &ways[i];
    if (st->scope != NULL && st->hash == h && st->len == len &&
        memcmp(st->scope, scope, len) == 0)
      return st->timer;
  }
  st = &ways[en->cache_next[set]];
  en->cache_next[set] = (uint8_t)((en->cache_next[set] + 1) % SCOPE_WAYS);
  free(st->scope);
  st->scope = strndup(scope, len);
  st->len = len;
  st->hash = h;
  emd_enrich_scope_timer(en->instance_id, scope, len, st->timer);
  if (st->scope == NULL)   /* out of memory: answer, just do not cache */
    st->len = 0;
  return st->timer;
}

#define NEW(arena, type, init)                                            \
  ({                                                                      \
    type *p_ = emd_arena_alloc(arena, sizeof(type));                      \
    if (p_ != NULL)                                                       \
      init(p_);                                                           \
    p_;                                                                   \
  })

int emd_enrich_apply(struct emd_enrich *en, emd_event *ev,
                     struct emd_enrich_conn *conn, struct emd_arena *a,
                     uint64_t now_ms)
{
  const struct emd_config *cfg = en->cfg;
  emd_tevent *te = ev->event;
  uint8_t *timer;

  if (te->id == NULL || te->id[0] == '\0') {
    char *id = emd_arena_alloc(a, 27);

    if (id == NULL)
      return -ENOMEM;
    emd_enrich_ulid(en, now_ms, id);
    te->id = id;
  }
  if (te->timing == NULL) {
    te->timing = NEW(a, Buildless__Telemetry__EventTiming,
                     buildless__telemetry__event_timing__init);
    if (te->timing == NULL)
      return -ENOMEM;
  }
  if (te->timing->occurred == 0)
    te->timing->occurred = now_ms;
  if (te->detail == NULL) {
    te->detail = NEW(a, Buildless__Telemetry__EventDetail,
                     buildless__telemetry__event_detail__init);
    if (te->detail == NULL)
      return -ENOMEM;
  }
  if (te->detail->client == NULL) {
    te->detail->client = NEW(a, Buildless__Telemetry__ClientDetail,
                             buildless__telemetry__client_detail__init);
    if (te->detail->client == NULL)
      return -ENOMEM;
  }
  if (te->detail->client->agent == NULL)
    te->detail->client->agent = &en->agent;
  if (te->detail->client->os == NULL)
    te->detail->client->os = &en->os;
  if (te->detail->repository == NULL && en->has_repo)
    te->detail->repository = &en->repo;
  if ((te->tenant == NULL || te->tenant[0] == '\0') &&
      cfg->enrich.tenant != NULL)
    te->tenant = cfg->enrich.tenant;
  if (cfg->enrich.timezone != NULL) {
    if (te->location == NULL) {
      te->location = NEW(a, Buildless__Telemetry__EventLocation,
                         buildless__telemetry__event_location__init);
      if (te->location == NULL)
        return -ENOMEM;
    }
    if (te->location->timezone == NULL || te->location->timezone[0] == '\0')
      te->location->timezone = cfg->enrich.timezone;
  }
  if ((ev->scope == NULL || ev->scope[0] == '\0') && en->scope != NULL)
    ev->scope = en->scope;

  /* The three timer rules of SPEC 2.1, in order. */
  if (te->timer.len > 0)
    return 0;
  if (ev->scope != NULL && ev->scope[0] != '\0') {
    timer = emd_arena_alloc(a, EMD_TIMER_LEN);
    if (timer == NULL)
      return -ENOMEM;
    memcpy(timer, scope_timer(en, ev->scope), EMD_TIMER_LEN);
  } else {
    if (!conn->has_timer) {
      rng_fill(en->rng, conn->timer, EMD_TIMER_LEN);
      conn->has_timer = true;
    }
    timer = conn->timer;   /* lives as long as the connection's events */
  }
  te->timer.data = timer;
  te->timer.len = EMD_TIMER_LEN;
  return 0;
}
