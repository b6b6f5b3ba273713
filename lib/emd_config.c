/* emd_config.c: see emd_config.h. One table of keys drives the defaults,
 * the file, the environment, the dump and the docs test; inih splits the
 * file into lines, and our reader in front of it counts them. */
#include "emd_config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "emd_err.h"

#define KiB ((uint64_t)1024)
#define MiB (KiB * 1024)
#define GiB (MiB * 1024)
#define SEC ((uint64_t)1000)
#define MIN (SEC * 60)
#define HOUR (MIN * 60)
#define DAY (HOUR * 24)

#define KEY_FILE_MAX (64 * 1024)

enum conf_type {
  CONF_STR,       /* char *; a default makes it required (never empty) */
  CONF_MODE,      /* unsigned, octal, at most 0777 */
  CONF_UIDS,      /* agent.allow_uids and its count */
  CONF_GIDS,      /* agent.allow_gids and its count */
  CONF_ENUM,      /* an int-sized enum, one of names */
  CONF_UINT,      /* uint64_t, a plain count */
  CONF_SIZE,      /* uint64_t bytes */
  CONF_DURATION,  /* uint64_t milliseconds */
};

struct conf_name {
  const char *name;
  int value;
};

struct conf_enum {
  bool numbers;                 /* "1" accepted for a defined value */
  struct conf_name names[5];    /* ends at a NULL name */
};

struct conf_key {
  const char *section;
  const char *key;
  enum conf_type type;
  size_t off;                   /* of the field in struct emd_config */
  const char *def;              /* as agent.conf.example has it; NULL unset */
  const struct conf_enum *names;  /* CONF_ENUM */
  uint64_t min, max;            /* CONF_UINT, CONF_SIZE, CONF_DURATION */
};

/* Enum fields are written through an int. */
_Static_assert(sizeof(enum emd_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_sync) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_on_full) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_unknown) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_encoding) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_compression) == sizeof(int), "enum size");
_Static_assert(sizeof(enum emd_auth) == sizeof(int), "enum size");
_Static_assert(sizeof(uid_t) == sizeof(uint32_t), "uid_t size");
_Static_assert(sizeof(gid_t) == sizeof(uint32_t), "gid_t size");

static const struct conf_enum e_level = { false, {
  { "error", EMD_LOG_ERROR }, { "warn", EMD_LOG_WARN },
  { "info", EMD_LOG_INFO }, { "debug", EMD_LOG_DEBUG } } };
static const struct conf_enum e_format = { false, {
  { "text", EMD_LOG_TEXT }, { "json", EMD_LOG_JSON } } };
static const struct conf_enum e_unknown = { false, {
  { "reject", EMD_UNKNOWN_REJECT }, { "ignore", EMD_UNKNOWN_IGNORE } } };
static const struct conf_enum e_sync = { false, {
  { "always", EMD_SYNC_ALWAYS }, { "interval", EMD_SYNC_INTERVAL },
  { "none", EMD_SYNC_NONE } } };
static const struct conf_enum e_full = { false, {
  { "reject", EMD_FULL_REJECT }, { "drop_oldest", EMD_FULL_DROP_OLDEST },
  { "block", EMD_FULL_BLOCK } } };
static const struct conf_enum e_mode = { false, {
  { "batch", EMD_MODE_BATCH }, { "single", EMD_MODE_SINGLE } } };
static const struct conf_enum e_encoding = { false, {
  { "protobuf", EMD_ENC_PROTOBUF }, { "json", EMD_ENC_JSON } } };
static const struct conf_enum e_comp = { false, {
  { "none", EMD_COMP_NONE }, { "gzip", EMD_COMP_GZIP },
  { "zstd", EMD_COMP_ZSTD } } };
static const struct conf_enum e_auth = { false, {
  { "bearer", EMD_AUTH_BEARER }, { "x-api-key", EMD_AUTH_X_API_KEY },
  { "basic", EMD_AUTH_BASIC } } };
/* RepositoryProvider of the wire schema (SPEC 1.1): defined values only. */
static const struct conf_enum e_provider = { true, {
  { "NO_REPOSITORY_PROVIDER", 0 }, { "GITHUB", 1 } } };

#define F(field) offsetof(struct emd_config, field)
/* Rows by type: section, key, field, default, then names or range. */
#define STR(sec, key, field, def)                                         \
  { sec, key, CONF_STR, F(field), def, NULL, 0, 0 }
#define MODE(sec, key, field, def)                                        \
  { sec, key, CONF_MODE, F(field), def, NULL, 0, 0777 }
#define IDS(sec, key, type, field)                                        \
  { sec, key, type, F(field), NULL, NULL, 0, 0 }
#define ENUM(sec, key, field, def, names)                                 \
  { sec, key, CONF_ENUM, F(field), def, names, 0, 0 }
#define UINT(sec, key, field, def, lo, hi)                                \
  { sec, key, CONF_UINT, F(field), def, NULL, lo, hi }
#define SIZE(sec, key, field, def, lo, hi)                                \
  { sec, key, CONF_SIZE, F(field), def, NULL, lo, hi }
#define DUR(sec, key, field, def, lo, hi)                                 \
  { sec, key, CONF_DURATION, F(field), def, NULL, lo, hi }

/* One row per key of SPEC 5, in the order of agent.conf.example. Ranges
 * keep values where the modules using them stay sane: a binary frame must
 * stay below 16 MiB, curl reads a 0 timeout as "its default", ... */
static const struct conf_key keys[] = {
  STR("agent", "socket", agent.socket, "/run/emitd/emitd.sock"),
  MODE("agent", "socket_mode", agent.socket_mode, "0660"),
  STR("agent", "control_socket", agent.control_socket,
      "/run/emitd/control.sock"),
  IDS("agent", "allow_uids", CONF_UIDS, agent.allow_uids),
  IDS("agent", "allow_gids", CONF_GIDS, agent.allow_gids),
  ENUM("agent", "log_level", agent.log_level, "info", &e_level),
  ENUM("agent", "log_format", agent.log_format, "text", &e_format),
  DUR("agent", "shutdown_grace", agent.shutdown_grace_ms, "5s", 0, HOUR),

  SIZE("ingest", "max_event_bytes", ingest.max_event_bytes, "1MiB",
       64, 8 * MiB),
  ENUM("ingest", "unknown_fields", ingest.unknown_fields, "reject",
       &e_unknown),
  UINT("ingest", "max_clients", ingest.max_clients, "1024", 1, 1048576),

  STR("spool", "dir", spool.dir, "/var/lib/emitd"),
  ENUM("spool", "sync", spool.sync, "always", &e_sync),
  DUR("spool", "sync_interval", spool.sync_interval_ms, "100ms", 1, MIN),
  SIZE("spool", "max_bytes", spool.max_bytes, "1GiB", 4096, UINT64_MAX),
  ENUM("spool", "on_full", spool.on_full, "reject", &e_full),
  DUR("spool", "max_age", spool.max_age_ms, "7d", SEC, 3650 * DAY),
  UINT("spool", "dead_max", spool.dead_max, "10000", 1, 100000000),
  DUR("spool", "timer_ttl", spool.timer_ttl_ms, "24h", SEC, 3650 * DAY),
  DUR("spool", "dedup_window", spool.dedup_window_ms, "10m", 0, 30 * DAY),

  STR("upstream", "endpoint", upstream.endpoint, "https://rpc.less.build"),
  ENUM("upstream", "mode", upstream.mode, "batch", &e_mode),
  ENUM("upstream", "encoding", upstream.encoding, "protobuf", &e_encoding),
  ENUM("upstream", "compression", upstream.compression, "none", &e_comp),
  STR("upstream", "api_key", upstream.api_key, NULL),
  STR("upstream", "api_key_file", upstream.api_key_file, NULL),
  ENUM("upstream", "auth", upstream.auth, "bearer", &e_auth),
  UINT("upstream", "batch_max_events", upstream.batch_max_events, "500",
       1, 100000),
  SIZE("upstream", "batch_max_bytes", upstream.batch_max_bytes, "1MiB",
       1, 256 * MiB),
  DUR("upstream", "batch_linger", upstream.batch_linger_ms, "200ms", 0, MIN),
  UINT("upstream", "max_inflight", upstream.max_inflight, "2", 1, 64),
  DUR("upstream", "connect_timeout", upstream.connect_timeout_ms, "5s",
      1, 10 * MIN),
  DUR("upstream", "timeout", upstream.timeout_ms, "10s", 1, HOUR),
  DUR("upstream", "retry_initial", upstream.retry_initial_ms, "500ms",
      1, HOUR),
  DUR("upstream", "retry_max", upstream.retry_max_ms, "60s", 1, DAY),
  DUR("upstream", "auth_retry_max", upstream.auth_retry_max_ms, "5m",
      1, DAY),
  UINT("upstream", "max_attempts", upstream.max_attempts, "0", 0, 1000000),
  STR("upstream", "ca_file", upstream.ca_file, NULL),

  STR("enrich", "scope", enrich.scope, NULL),
  STR("enrich", "tenant", enrich.tenant, NULL),
  STR("enrich", "timezone", enrich.timezone, NULL),
  ENUM("enrich", "repository_provider", enrich.repository_provider, NULL,
       &e_provider),
  STR("enrich", "repository_link", enrich.repository_link, NULL),
  STR("enrich", "repository_name", enrich.repository_name, NULL),
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static const char *const sections[] = {
  "agent", "ingest", "spool", "upstream", "enrich"
};

#define N_SECTIONS (sizeof(sections) / sizeof(sections[0]))

/* Where a key's value came from, for messages about it. */
struct conf_origin {
  int line;                     /* file line; 0 if not from the file */
  const char *env;              /* "NAME=value" from envp, or NULL */
  size_t env_len;               /* length of NAME */
};

struct conf_ctx {
  struct emd_config *cfg;
  const char *path;             /* as given, for messages */
  FILE *f;
  char *buf;                    /* getline's */
  size_t cap;
  int line;                     /* lines handed to inih so far */
  int rc;                       /* first failure, 0 while none */
  char *err;
  size_t errlen;
  struct conf_origin origin[N_KEYS];
};

/* ---- small helpers ---- */

/* Records the first failure only: later ones are consequences. */
__attribute__((format(printf, 3, 4)))
static void fail(struct conf_ctx *c, int rc, const char *fmt, ...)
{
  va_list ap;

  if (c->rc != 0)
    return;
  c->rc = rc;
  if (c->err == NULL || c->errlen == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(c->err, c->errlen, fmt, ap);
  va_end(ap);
}

__attribute__((format(printf, 3, 4)))
static int reason(char *why, size_t n, const char *fmt, ...)
{
  va_list ap;

  if (why != NULL && n > 0) {
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
  }
  return EMD_ECONFIG;
}

/* A value fit to quote in a one-line message: printable ASCII, cut. */
static const char *sanitize(const char *s, char *out, size_t n)
{
  size_t i = 0;

  for (; *s != '\0' && i + 4 < n; s++) {
    unsigned char ch = (unsigned char)*s;
    out[i++] = ch < 0x20 || ch >= 0x7f || ch == '"' ? '?' : (char)ch;
  }
  if (*s != '\0')
    memcpy(out + i, "...", 3), i += 3;
  out[i] = '\0';
  return out;
}

/* strerror, thread-safe (the GNU strerror_r, as we build with
 * _GNU_SOURCE). */
static const char *errstr(int e, char *buf, size_t n)
{
  return strerror_r(e, buf, n);
}

static bool is_space(char ch)
{
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
         ch == '\v' || ch == '\f';
}

static bool is_digit(char ch)
{
  return ch >= '0' && ch <= '9';
}

static bool is_alnum(char ch)
{
  return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/* Levenshtein distance, for "did you mean"; big for long strings. */
static size_t distance(const char *a, const char *b)
{
  size_t la = strlen(a), lb = strlen(b), row[65], i, j;

  if (la > 64 || lb > 64)
    return SIZE_MAX;
  for (j = 0; j <= lb; j++)
    row[j] = j;
  for (i = 1; i <= la; i++) {
    size_t diag = row[0], up;

    row[0] = i;
    for (j = 1; j <= lb; j++) {
      size_t best = diag + (a[i - 1] != b[j - 1]);

      up = row[j];
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      diag = up;
      row[j] = best;
    }
  }
  return row[lb];
}

static bool near(const char *typo, const char *name)
{
  size_t d = distance(typo, name);

  return d <= 2 && d < strlen(name);
}

/* Counts code points of a valid UTF-8 string; -1 if it is not valid. */
static long utf8_length(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;
  long n = 0;

  while (*p != '\0') {
    unsigned cp;
    int more;

    if (*p < 0x80)
      cp = *p, more = 0;
    else if ((*p & 0xe0) == 0xc0)
      cp = *p & 0x1f, more = 1;
    else if ((*p & 0xf0) == 0xe0)
      cp = *p & 0x0f, more = 2;
    else if ((*p & 0xf8) == 0xf0)
      cp = *p & 0x07, more = 3;
    else
      return -1;
    p++;
    for (int i = 0; i < more; i++, p++) {
      if ((*p & 0xc0) != 0x80)
        return -1;
      cp = (cp << 6) | (*p & 0x3f);
    }
    /* overlong forms, surrogates and values past U+10FFFF */
    if ((more == 1 && cp < 0x80) || (more == 2 && cp < 0x800) ||
        (more == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return -1;
    n++;
  }
  return n;
}

/* True for a key fit for an HTTP header: visible ASCII only. */
static bool key_chars_ok(const char *s, size_t len)
{
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
      return false;
  return true;
}

/* ---- value parsers ---- */

static const char size_expect[] = "expected a number with B, KiB, MiB or GiB";
static const char dur_expect[] = "expected a number with ms, s, m, h or d";

/* Reads the leading whole number of s into *n and points *unit past it.
 * -1 if there are no digits, -2 on overflow. */
static int leading_number(const char *s, uint64_t *n, const char **unit)
{
  uint64_t v = 0;
  const char *p = s;

  if (!is_digit(*p))
    return -1;
  for (; is_digit(*p); p++) {
    unsigned d = (unsigned)(*p - '0');

    if (v > (UINT64_MAX - d) / 10)
      return -2;
    v = v * 10 + d;
  }
  *n = v;
  *unit = p;
  return 0;
}

static int scale(uint64_t n, uint64_t mult, uint64_t *out)
{
  if (n != 0 && mult > UINT64_MAX / n)
    return -1;
  *out = n * mult;
  return 0;
}

int emd_config_parse_size(const char *s, uint64_t *out, char *err, size_t n)
{
  static const struct { const char *unit; uint64_t mult; } units[] = {
    { "", 1 }, { "B", 1 }, { "KiB", KiB }, { "MiB", MiB }, { "GiB", GiB },
  };
  char q[64];
  const char *unit;
  uint64_t num;
  int rc;

  rc = leading_number(s, &num, &unit);
  if (rc == -2)
    return reason(err, n, "bad size \"%s\": too large", sanitize(s, q, 64));
  if (rc == 0 && *unit == '.')
    return reason(err, n, "bad size \"%s\": %s (whole numbers only)",
                  sanitize(s, q, 64), size_expect);
  if (rc == 0 && unit[0] == ' ' && unit[1] != '\0' && !is_space(unit[1]))
    unit++;                       /* "1 MiB" */
  for (size_t i = 0; rc == 0 && i < sizeof(units) / sizeof(units[0]); i++) {
    if (strcmp(unit, units[i].unit) != 0)
      continue;
    if (scale(num, units[i].mult, out) != 0)
      return reason(err, n, "bad size \"%s\": too large",
                    sanitize(s, q, 64));
    return 0;
  }
  /* "1MB", "1k", "1gb": say why the usual suspects are refused */
  if (rc == 0 && unit[0] != '\0' && strchr("kKmMgGtT", unit[0]) != NULL &&
      (unit[1] == '\0' || ((unit[1] == 'b' || unit[1] == 'B') &&
                           unit[2] == '\0')))
    return reason(err, n, "bad size \"%s\": %s (KB, MB and GB are not "
                  "accepted)", sanitize(s, q, 64), size_expect);
  return reason(err, n, "bad size \"%s\": %s", sanitize(s, q, 64),
                size_expect);
}

int emd_config_parse_duration(const char *s, uint64_t *out, char *err,
                              size_t n)
{
  static const struct { const char *unit; uint64_t mult; } units[] = {
    { "ms", 1 }, { "s", SEC }, { "m", MIN }, { "h", HOUR }, { "d", DAY },
  };
  char q[64];
  const char *unit;
  uint64_t num;
  int rc;

  rc = leading_number(s, &num, &unit);
  if (rc == -2)
    return reason(err, n, "bad duration \"%s\": too large",
                  sanitize(s, q, 64));
  if (rc == 0 && *unit == '\0')
    return reason(err, n, "bad duration \"%s\": expected a unit ms, s, m, "
                  "h or d", sanitize(s, q, 64));
  if (rc == 0 && *unit == '.')
    return reason(err, n, "bad duration \"%s\": %s (whole numbers only: "
                  "1500ms, not 1.5s)", sanitize(s, q, 64), dur_expect);
  if (rc == 0 && unit[0] == ' ' && unit[1] != '\0' && !is_space(unit[1]))
    unit++;                       /* "5 s" */
  for (size_t i = 0; rc == 0 && i < sizeof(units) / sizeof(units[0]); i++) {
    if (strcmp(unit, units[i].unit) != 0)
      continue;
    if (scale(num, units[i].mult, out) != 0)
      return reason(err, n, "bad duration \"%s\": too large",
                    sanitize(s, q, 64));
    return 0;
  }
  return reason(err, n, "bad duration \"%s\": %s", sanitize(s, q, 64),
                dur_expect);
}

/* ---- formatting, for messages and the dump ---- */

static const char *fmt_size(uint64_t v, char *out, size_t n)
{
  if (v != 0 && v % GiB == 0)
    snprintf(out, n, "%lluGiB", (unsigned long long)(v / GiB));
  else if (v != 0 && v % MiB == 0)
    snprintf(out, n, "%lluMiB", (unsigned long long)(v / MiB));
  else if (v != 0 && v % KiB == 0)
    snprintf(out, n, "%lluKiB", (unsigned long long)(v / KiB));
  else
    snprintf(out, n, "%lluB", (unsigned long long)v);
  return out;
}

static const char *fmt_duration(uint64_t ms, char *out, size_t n)
{
  static const struct { const char *unit; uint64_t mult; } units[] = {
    { "d", DAY }, { "h", HOUR }, { "m", MIN }, { "s", SEC },
  };

  for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if (ms != 0 && ms % units[i].mult == 0) {
      snprintf(out, n, "%llu%s", (unsigned long long)(ms / units[i].mult),
               units[i].unit);
      return out;
    }
  }
  snprintf(out, n, "%llums", (unsigned long long)ms);
  return out;
}

static const char *fmt_number(enum conf_type t, uint64_t v, char *out,
                              size_t n)
{
  if (t == CONF_SIZE)
    return fmt_size(v, out, n);
  if (t == CONF_DURATION)
    return fmt_duration(v, out, n);
  snprintf(out, n, "%llu", (unsigned long long)v);
  return out;
}

/* ---- setting one key ---- */

static int set_str(char **field, const struct conf_key *k, const char *v,
                   char *why, size_t n)
{
  char *copy = NULL;

  for (const char *p = v; *p != '\0'; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      return reason(why, n, "control characters are not allowed");
  if (*v == '\0' && k->def != NULL)
    return reason(why, n, "must not be empty");
  if (*v != '\0' && (copy = strdup(v)) == NULL)
    return -ENOMEM;
  free(*field);
  *field = copy;
  return 0;
}

static int set_mode(unsigned *field, const char *v, char *why, size_t n)
{
  unsigned mode = 0;
  char q[64];
  const char *p = v;

  for (; *p >= '0' && *p <= '7' && mode <= 0777; p++)
    mode = mode * 8 + (unsigned)(*p - '0');
  if (p == v || *p != '\0' || mode > 0777)
    return reason(why, n, "bad mode \"%s\": expected an octal number from "
                  "0000 to 0777", sanitize(v, q, 64));
  *field = mode;
  return 0;
}

static int set_ids(struct emd_config *cfg, bool uids, const char *v,
                   char *why, size_t n)
{
  uint32_t ids[EMD_CONFIG_MAX_IDS];
  size_t count = 0;
  const char *what = uids ? "uid" : "gid";
  char q[64];

  for (const char *p = v; *p != '\0';) {
    uint64_t id = 0;
    const char *start = p;

    if (*p == ',' || is_space(*p)) {
      p++;
      continue;
    }
    for (; is_digit(*p); p++)
      if (id < UINT32_MAX)          /* saturates: no overflow */
        id = id * 10 + (uint64_t)(*p - '0');
    if (p == start || (*p != '\0' && *p != ',' && !is_space(*p)))
      return reason(why, n, "bad %s list \"%s\": expected numbers separated "
                    "by commas or spaces (names are not accepted)", what,
                    sanitize(v, q, 64));
    if (id >= UINT32_MAX)             /* (uid_t)-1 means "no one" */
      return reason(why, n, "bad %s list \"%s\": %s out of range", what,
                    sanitize(v, q, 64), what);
    if (count == EMD_CONFIG_MAX_IDS)
      return reason(why, n, "too many %ss (at most %d)", what,
                    EMD_CONFIG_MAX_IDS);
    ids[count++] = (uint32_t)id;
  }
  for (size_t i = 0; i < count; i++) {
    if (uids)
      cfg->agent.allow_uids[i] = (uid_t)ids[i];
    else
      cfg->agent.allow_gids[i] = (gid_t)ids[i];
  }
  *(uids ? &cfg->agent.n_allow_uids : &cfg->agent.n_allow_gids) = count;
  return 0;
}

static int set_enum(int *field, const struct conf_enum *e, const char *v,
                    char *why, size_t n)
{
  char q[64], list[160] = "";
  size_t i, len = 0;
  uint64_t num;
  const char *rest;

  for (i = 0; e->names[i].name != NULL; i++) {
    if (strcasecmp(v, e->names[i].name) == 0) {
      *field = e->names[i].value;
      return 0;
    }
  }
  if (e->numbers && leading_number(v, &num, &rest) == 0 && *rest == '\0') {
    for (i = 0; e->names[i].name != NULL; i++) {
      if ((uint64_t)e->names[i].value == num) {
        *field = e->names[i].value;
        return 0;
      }
    }
  }
  for (i = 0; e->names[i].name != NULL && len < sizeof(list); i++) {
    const char *sep = i == 0 ? "" : e->names[i + 1].name == NULL ? " or "
                                                                 : ", ";

    if (e->numbers)
      len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s (%d)",
                              sep, e->names[i].name, e->names[i].value);
    else
      len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", sep,
                              e->names[i].name);
  }
  return reason(why, n, "bad value \"%s\": expected %s", sanitize(v, q, 64),
                list);
}

static int set_number(uint64_t *field, const struct conf_key *k,
                      const char *v, char *why, size_t n)
{
  char q[64], lo[32], hi[32];
  const char *rest;
  uint64_t num;
  int rc;

  if (k->type == CONF_SIZE) {
    rc = emd_config_parse_size(v, &num, why, n);
  } else if (k->type == CONF_DURATION) {
    rc = emd_config_parse_duration(v, &num, why, n);
  } else {
    rc = leading_number(v, &num, &rest);
    if (rc == -2)
      return reason(why, n, "bad number \"%s\": too large",
                    sanitize(v, q, 64));
    if (rc != 0 || *rest != '\0')
      return reason(why, n, "bad number \"%s\": expected a whole number",
                    sanitize(v, q, 64));
  }
  if (rc != 0)
    return rc;
  if (num < k->min || num > k->max) {
    fmt_number(k->type, k->min, lo, sizeof(lo));
    fmt_number(k->type, k->max, hi, sizeof(hi));
    if (k->max == UINT64_MAX)
      return reason(why, n, "%s is out of range: expected at least %s",
                    sanitize(v, q, 64), lo);
    return reason(why, n, "%s is out of range: expected %s to %s",
                  sanitize(v, q, 64), lo, hi);
  }
  *field = num;
  return 0;
}

/* Parses v into k's field of cfg. Returns 0, -ENOMEM, or EMD_ECONFIG with
 * the reason (no location) in why. */
static int conf_set(struct emd_config *cfg, const struct conf_key *k,
                    const char *v, char *why, size_t n)
{
  void *field = (char *)cfg + k->off;

  /* The file reads " ;" as the start of a comment: a value that starts
   * with ';' could not be written back and read the same. */
  if (v[0] == ';') {
    snprintf(why, n, "a value may not start with ';' (it reads as a "
             "comment)");
    return EMD_ECONFIG;
  }
  switch (k->type) {
  case CONF_STR:
    return set_str(field, k, v, why, n);
  case CONF_MODE:
    return set_mode(field, v, why, n);
  case CONF_UIDS:
  case CONF_GIDS:
    return set_ids(cfg, k->type == CONF_UIDS, v, why, n);
  case CONF_ENUM:
    return set_enum(field, k->names, v, why, n);
  case CONF_UINT:
  case CONF_SIZE:
  case CONF_DURATION:
    return set_number(field, k, v, why, n);
  }
  return EMD_EINTERNAL;
}

/* ---- lookups ---- */

static const struct conf_key *find_key(const char *section, const char *key)
{
  for (size_t i = 0; i < N_KEYS; i++)
    if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
      return &keys[i];
  return NULL;
}

static size_t key_index_of(size_t off)
{
  for (size_t i = 0; i < N_KEYS; i++)
    if (keys[i].off == off)
      return i;
  return 0;   /* unreachable: callers pass offsets of keys */
}

/* "EMITD_" SECTION "_" KEY, upper case, for key k. */
static void env_name(const struct conf_key *k, char *out, size_t n)
{
  size_t len = (size_t)snprintf(out, n, "EMITD_%s_%s", k->section, k->key);

  for (size_t i = 0; i < len && i < n; i++)
    if (out[i] >= 'a' && out[i] <= 'z')
      out[i] = (char)(out[i] - 'a' + 'A');
}

/* Appends " (did you mean ...?)" to out when key is a near miss. */
static void suggest_key(const char *section, const char *key, char *out,
                        size_t n)
{
  out[0] = '\0';
  for (size_t i = 0; i < N_KEYS; i++) {
    if (strcmp(keys[i].key, key) == 0) {
      snprintf(out, n, " (it belongs in [%s])", keys[i].section);
      return;
    }
  }
  for (size_t i = 0; i < N_KEYS; i++) {
    if (strcmp(keys[i].section, section) == 0 && near(key, keys[i].key)) {
      snprintf(out, n, " (did you mean %s?)", keys[i].key);
      return;
    }
  }
}

/* ---- the file ---- */

static bool section_known(const char *name)
{
  for (size_t i = 0; i < N_SECTIONS; i++)
    if (strcmp(sections[i], name) == 0)
      return true;
  return false;
}

/* Checks a "[name]" line; inih only tells the handler about keys, so an
 * unknown empty section would otherwise pass unnoticed. */
static void check_section(struct conf_ctx *c, const char *line)
{
  char name[64], q[64], hint[64] = "";
  const char *end = strchr(line, ']'), *p;
  size_t len;

  if (end == NULL) {
    fail(c, EMD_ECONFIG, "%s:%d: bad section header: expected [name]",
         c->path, c->line);
    return;
  }
  for (p = end + 1; is_space(*p); p++)
    ;
  if (*p != '\0' && *p != '#' && *p != ';') {
    fail(c, EMD_ECONFIG, "%s:%d: unexpected text after ']'", c->path,
         c->line);
    return;
  }
  len = (size_t)(end - line - 1);
  if (len >= sizeof(name))
    len = sizeof(name) - 1;
  memcpy(name, line + 1, len);
  name[len] = '\0';
  if (section_known(name) && (size_t)(end - line - 1) == len)
    return;
  for (size_t i = 0; i < N_SECTIONS; i++)
    if (near(name, sections[i]))
      snprintf(hint, sizeof(hint), " (did you mean [%s]?)", sections[i]);
  fail(c, EMD_ECONFIG, "%s:%d: unknown section [%s]%s", c->path, c->line,
       sanitize(name, q, sizeof(q)), hint);
}

/* inih's reader: hands out one line per call, so c->line is the line the
 * handler is looking at. Strips leading white space, which also keeps
 * inih's multi-line continuation (an indented line) from ever applying.
 * Returns NULL at the end or at the first error, which stops inih. */
static char *conf_reader(char *str, int num, void *stream)
{
  struct conf_ctx *c = stream;
  char *p, eb[128];
  ssize_t len;
  size_t n;

  if (c->rc != 0)
    return NULL;
  errno = 0;
  len = getline(&c->buf, &c->cap, c->f);
  if (len < 0) {
    int e = errno;

    if (e == ENOMEM)
      fail(c, -ENOMEM, "out of memory");
    else if (ferror(c->f))
      fail(c, EMD_ECONFIG, "%s: cannot read: %s", c->path,
           errstr(e, eb, sizeof(eb)));
    return NULL;
  }
  c->line++;
  if (memchr(c->buf, '\0', (size_t)len) != NULL) {
    fail(c, EMD_ECONFIG, "%s:%d: NUL byte in line", c->path, c->line);
    return NULL;
  }
  p = c->buf;
  if (c->line == 1 && strncmp(p, "\xef\xbb\xbf", 3) == 0)
    p += 3;                       /* a UTF-8 byte order mark */
  while (is_space(*p))
    p++;
  n = strlen(p);
  while (n > 0 && is_space(p[n - 1]))
    p[--n] = '\0';
  if (num < 1 || n > (size_t)num - 1) {
    fail(c, EMD_ECONFIG, "%s:%d: line too long (at most %d characters)",
         c->path, c->line, num - 1);
    return NULL;
  }
  if (*p == '[')
    check_section(c, p);
  if (c->rc != 0)
    return NULL;
  memcpy(str, p, n + 1);
  return str;
}

static int conf_handler(void *user, const char *section, const char *name,
                        const char *value)
{
  struct conf_ctx *c = user;
  const struct conf_key *k;
  char why[256], q[64], hint[64];
  int rc;

  if (c->rc != 0)
    return 0;
  if (*name == '\0') {
    fail(c, EMD_ECONFIG, "%s:%d: missing key name before '='", c->path,
         c->line);
    return 0;
  }
  if (*section == '\0') {
    fail(c, EMD_ECONFIG, "%s:%d: %s: key outside any [section]", c->path,
         c->line, sanitize(name, q, sizeof(q)));
    return 0;
  }
  k = find_key(section, name);
  if (k == NULL) {
    suggest_key(section, name, hint, sizeof(hint));
    fail(c, EMD_ECONFIG, "%s:%d: [%s] %s: unknown key%s", c->path, c->line,
         section, sanitize(name, q, sizeof(q)), hint);
    return 0;
  }
  rc = conf_set(c->cfg, k, value, why, sizeof(why));
  if (rc == -ENOMEM)
    fail(c, rc, "out of memory");
  else if (rc != 0)
    fail(c, rc, "%s:%d: [%s] %s: %s", c->path, c->line, section, name, why);
  if (rc != 0)
    return 0;
  c->origin[k - keys] = (struct conf_origin){ .line = c->line };
  return 1;
}

static void conf_read_file(struct conf_ctx *c)
{
  char eb[128];
  int line;

  c->f = fopen(c->path, "re");
  if (c->f == NULL) {
    int e = errno;

    fail(c, e == ENOMEM ? -ENOMEM : EMD_ECONFIG, "%s: cannot open: %s",
         c->path, errstr(e, eb, sizeof(eb)));
    return;
  }
  line = ini_parse_stream(conf_reader, c, conf_handler, c);
  /* inih goes on after a line it cannot parse; ours stop it. So the first
   * failure is inih's when its line comes before ours. */
  if (line > 0 && (c->rc == 0 || line < c->line)) {
    c->rc = 0;
    fail(c, EMD_ECONFIG, "%s:%d: expected [section] or key = value",
         c->path, line);
  } else if (line < 0 && c->rc == 0) {
    fail(c, -ENOMEM, "out of memory");
  }
  free(c->buf);
  c->buf = NULL;
  fclose(c->f);
  c->f = NULL;
}

/* ---- the environment ---- */

static void conf_read_env(struct conf_ctx *c, char *const *envp)
{
  char name[96], why[256], hint[128];

  for (; envp != NULL && *envp != NULL && c->rc == 0; envp++) {
    const char *var = *envp, *eq = strchr(var, '='), *v, *end;
    size_t len = eq != NULL ? (size_t)(eq - var) : strlen(var);
    const struct conf_key *k = NULL;
    char *value;
    int rc;

    if (strncmp(var, "EMITD_", 6) != 0)
      continue;
    hint[0] = '\0';
    for (size_t i = 0; i < N_KEYS && k == NULL; i++) {
      env_name(&keys[i], name, sizeof(name));
      if (strlen(name) == len && strncmp(name, var, len) == 0)
        k = &keys[i];
    }
    if (k == NULL || eq == NULL) {
      for (size_t i = 0; i < N_KEYS && k == NULL && len < 64 &&
                         hint[0] == '\0'; i++) {
        char typo[64];

        env_name(&keys[i], name, sizeof(name));
        memcpy(typo, var, len);
        typo[len] = '\0';
        if (near(typo, name))
          snprintf(hint, sizeof(hint), " (did you mean %s?)", name);
      }
      char shown[96], raw[96];

      snprintf(raw, sizeof(raw), "%.*s", (int)(len < 80 ? len : 80), var);
      fail(c, EMD_ECONFIG, "%s: %s%s", sanitize(raw, shown, sizeof(shown)),
           k == NULL ? "unknown setting" : "no value", hint);
      return;
    }
    /* Trimmed like a file value; a copy, since envp is not ours. */
    for (v = eq + 1; is_space(*v); v++)
      ;
    for (end = v + strlen(v); end > v && is_space(end[-1]); end--)
      ;
    value = strndup(v, (size_t)(end - v));
    if (value == NULL) {
      fail(c, -ENOMEM, "out of memory");
      return;
    }
    rc = conf_set(c->cfg, k, value, why, sizeof(why));
    free(value);
    if (rc == -ENOMEM)
      fail(c, rc, "out of memory");
    else if (rc != 0)
      fail(c, rc, "%.*s: %s", (int)len, var, why);
    else
      c->origin[k - keys] = (struct conf_origin){ .env = var, .env_len = len };
  }
}

/* ---- cross-field checks ---- */

/* "agent.conf:12: [upstream] retry_max: ", "EMITD_X: " or, for a default,
 * "[upstream] retry_max: ": where the value of field came from. */
static const char *where(const struct conf_ctx *c, size_t off, char *out,
                         size_t n)
{
  size_t i = key_index_of(off);
  const struct conf_origin *o = &c->origin[i];

  if (o->env != NULL)
    snprintf(out, n, "%.*s: ", (int)o->env_len, o->env);
  else if (o->line > 0)
    snprintf(out, n, "%s:%d: [%s] %s: ", c->path, o->line, keys[i].section,
             keys[i].key);
  else
    snprintf(out, n, "[%s] %s: ", keys[i].section, keys[i].key);
  return out;
}

static bool was_set(const struct conf_ctx *c, size_t off)
{
  const struct conf_origin *o = &c->origin[key_index_of(off)];

  return o->env != NULL || o->line > 0;
}

static void check_retry(struct conf_ctx *c)
{
  const struct emd_config *cfg = c->cfg;
  char loc[256], a[32], b[32];

  if (cfg->upstream.retry_initial_ms <= cfg->upstream.retry_max_ms)
    return;
  fmt_duration(cfg->upstream.retry_initial_ms, a, sizeof(a));
  fmt_duration(cfg->upstream.retry_max_ms, b, sizeof(b));
  if (was_set(c, F(upstream.retry_initial_ms)))
    fail(c, EMD_ECONFIG, "%s%s is more than retry_max (%s)",
         where(c, F(upstream.retry_initial_ms), loc, sizeof(loc)), a, b);
  else
    fail(c, EMD_ECONFIG, "%s%s is less than retry_initial (%s)",
         where(c, F(upstream.retry_max_ms), loc, sizeof(loc)), b, a);
}

/* http:// or https://, a host, no query or fragment; one trailing '/' is
 * dropped since paths are appended to it. */
static void check_endpoint(struct conf_ctx *c)
{
  char *url = c->cfg->upstream.endpoint, loc[256];
  size_t len = strlen(url), skip;

  if (strncasecmp(url, "https://", 8) == 0)
    skip = 8;
  else if (strncasecmp(url, "http://", 7) == 0)
    skip = 7;
  else
    skip = 0;
  if (skip == 0 || url[skip] == '\0' || url[skip] == '/' ||
      strpbrk(url, " \t?#") != NULL) {
    fail(c, EMD_ECONFIG, "%sexpected a base URL starting with http:// or "
         "https://, without query or fragment",
         where(c, F(upstream.endpoint), loc, sizeof(loc)));
    return;
  }
  while (len > skip && url[len - 1] == '/')   /* "no trailing slash" */
    url[--len] = '\0';
}

static void check_api_key(struct conf_ctx *c)
{
  struct emd_config *cfg = c->cfg;
  char loc[256];

  if (cfg->upstream.api_key == NULL)
    return;
  /* Named, never quoted: this is the secret. */
  if (!key_chars_ok(cfg->upstream.api_key, strlen(cfg->upstream.api_key))) {
    fail(c, EMD_ECONFIG, "%scontains white space, control or non-ASCII "
         "characters (not allowed in an HTTP header)",
         where(c, F(upstream.api_key), loc, sizeof(loc)));
    return;
  }
  /* api_key_file wins: it can be rotated without a restart. */
  if (cfg->upstream.api_key_file != NULL) {
    free(cfg->upstream.api_key);
    cfg->upstream.api_key = NULL;
  }
}

static bool tenant_ok(const char *s)
{
  size_t n = 0;

  if (strncmp(s, "org_", 4) != 0)
    return false;
  for (s += 4; is_alnum(*s); s++)
    n++;
  return *s == '\0' && n >= 3 && n <= 32;
}

/* scheme ":" then something, no white space: the shape of a URI. */
static bool uri_ok(const char *s)
{
  const char *p = s;

  if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
    return false;
  while (is_alnum(*p) || *p == '+' || *p == '-' || *p == '.')
    p++;
  return *p == ':' && p[1] != '\0' && strpbrk(s, " \t") == NULL;
}

/* [enrich] values are stamped onto events, so they obey SPEC 1.1. */
static void check_enrich(struct conf_ctx *c)
{
  const struct emd_config *cfg = c->cfg;
  static const size_t strs[] = {
    F(enrich.scope), F(enrich.tenant), F(enrich.timezone),
    F(enrich.repository_link), F(enrich.repository_name),
  };
  char loc[256];

  for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
    const char *s = *(char *const *)((const char *)cfg + strs[i]);

    if (s != NULL && utf8_length(s) < 0) {
      fail(c, EMD_ECONFIG, "%snot valid UTF-8",
           where(c, strs[i], loc, sizeof(loc)));
      return;
    }
  }
  if (cfg->enrich.tenant != NULL && !tenant_ok(cfg->enrich.tenant))
    fail(c, EMD_ECONFIG, "%sdoes not match ^org_[a-zA-Z0-9]{3,32}$",
         where(c, F(enrich.tenant), loc, sizeof(loc)));
  else if (cfg->enrich.repository_name != NULL &&
           utf8_length(cfg->enrich.repository_name) > 32)
    fail(c, EMD_ECONFIG, "%slonger than 32 characters",
         where(c, F(enrich.repository_name), loc, sizeof(loc)));
  else if (cfg->enrich.repository_link != NULL &&
           !uri_ok(cfg->enrich.repository_link))
    fail(c, EMD_ECONFIG, "%sexpected a URI with a scheme, such as "
         "https://github.com/org/repo",
         where(c, F(enrich.repository_link), loc, sizeof(loc)));
}

static void check_sockets(struct conf_ctx *c)
{
  const struct emd_config *cfg = c->cfg;
  static const size_t socks[] = { F(agent.socket), F(agent.control_socket) };
  char loc[256];

  for (size_t i = 0; i < 2; i++) {
    const char *s = *(char *const *)((const char *)cfg + socks[i]);

    /* sun_path holds 108 bytes with the NUL */
    if (strlen(s) > 107) {
      fail(c, EMD_ECONFIG, "%spath too long for a Unix socket (at most 107 "
           "bytes)", where(c, socks[i], loc, sizeof(loc)));
      return;
    }
  }
  if (strcmp(cfg->agent.socket, cfg->agent.control_socket) == 0)
    fail(c, EMD_ECONFIG, "%sthe same path as agent.socket",
         where(c, F(agent.control_socket), loc, sizeof(loc)));
}

/* Checks that span keys or need more than the value's type; messages say
 * where the offending value came from. May normalize (the endpoint's
 * slash, api_key under api_key_file). */
static void conf_validate(struct conf_ctx *c)
{
  if (c->rc == 0)
    check_sockets(c);
  if (c->rc == 0)
    check_retry(c);
  if (c->rc == 0)
    check_endpoint(c);
  if (c->rc == 0)
    check_api_key(c);
  if (c->rc == 0)
    check_enrich(c);
}

/* ---- the API ---- */

void emd_config_free(struct emd_config *cfg)
{
  if (cfg == NULL)
    return;
  for (size_t i = 0; i < N_KEYS; i++) {
    if (keys[i].type == CONF_STR) {
      char **s = (char **)((char *)cfg + keys[i].off);

      free(*s);
    }
  }
  free(cfg->path);
  memset(cfg, 0, sizeof(*cfg));
}

int emd_config_defaults(struct emd_config *cfg)
{
  char why[256];
  int rc;

  memset(cfg, 0, sizeof(*cfg));
  for (size_t i = 0; i < N_KEYS; i++) {
    if (keys[i].def == NULL)
      continue;
    rc = conf_set(cfg, &keys[i], keys[i].def, why, sizeof(why));
    if (rc != 0) {
      emd_config_free(cfg);
      return rc == -ENOMEM ? rc : EMD_EINTERNAL;  /* a bad table row */
    }
  }
  return 0;
}

int emd_config_load(struct emd_config *cfg, const char *path,
                    char *const *envp, char *err, size_t errlen)
{
  struct emd_config tmp;
  struct conf_ctx c = { .cfg = &tmp, .err = err, .errlen = errlen };
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  memset(cfg, 0, sizeof(*cfg));
  rc = emd_config_defaults(&tmp);
  if (rc != 0) {
    fail(&c, rc, "cannot build the defaults: %s", emd_strerror(rc));
    return rc;
  }
  if (path == NULL && access(EMD_CONFIG_DEFAULT_PATH, F_OK) == 0)
    path = EMD_CONFIG_DEFAULT_PATH;
  if (path != NULL) {
    c.path = path;
    tmp.path = strdup(path);
    if (tmp.path == NULL)
      fail(&c, -ENOMEM, "out of memory");
    else
      conf_read_file(&c);
  }
  if (c.rc == 0)
    conf_read_env(&c, envp);
  conf_validate(&c);
  if (c.rc != 0) {
    emd_config_free(&tmp);
    return c.rc;
  }
  *cfg = tmp;
  return 0;
}

/* True for an unset optional key: the dump writes "key =", which loads
 * back as unset. */
static bool dump_empty(const struct emd_config *cfg, const struct conf_key *k)
{
  if (k->type == CONF_STR)
    return *(char *const *)((const char *)cfg + k->off) == NULL;
  if (k->type == CONF_UIDS)
    return cfg->agent.n_allow_uids == 0;
  if (k->type == CONF_GIDS)
    return cfg->agent.n_allow_gids == 0;
  return false;
}

static void dump_value(const struct emd_config *cfg, const struct conf_key *k,
                       FILE *f)
{
  const void *field = (const char *)cfg + k->off;
  char buf[32];

  switch (k->type) {
  case CONF_STR: {
    const char *s = *(char *const *)field;

    fputs(k->off == F(upstream.api_key) ? "(set)" : s, f);
    break;
  }
  case CONF_MODE:
    fprintf(f, "%04o", *(const unsigned *)field);
    break;
  case CONF_UIDS:
    for (size_t i = 0; i < cfg->agent.n_allow_uids; i++)
      fprintf(f, "%s%u", i ? "," : "", (unsigned)cfg->agent.allow_uids[i]);
    break;
  case CONF_GIDS:
    for (size_t i = 0; i < cfg->agent.n_allow_gids; i++)
      fprintf(f, "%s%u", i ? "," : "", (unsigned)cfg->agent.allow_gids[i]);
    break;
  case CONF_ENUM: {
    int v = *(const int *)field;
    const struct conf_name *nm = k->names->names;

    while (nm->name != NULL && nm->value != v)
      nm++;
    if (nm->name != NULL)
      fputs(nm->name, f);
    else
      fprintf(f, "%d", v);
    break;
  }
  case CONF_UINT:
  case CONF_SIZE:
  case CONF_DURATION:
    fputs(fmt_number(k->type, *(const uint64_t *)field, buf, sizeof(buf)), f);
    break;
  }
}

void emd_config_dump(const struct emd_config *cfg, FILE *f)
{
  const char *section = "";

  fprintf(f, "# emitd configuration: %s and the environment\n",
          cfg->path != NULL ? cfg->path : "built-in defaults");
  for (size_t i = 0; i < N_KEYS; i++) {
    if (strcmp(section, keys[i].section) != 0) {
      section = keys[i].section;
      fprintf(f, "\n[%s]\n", section);
    }
    fprintf(f, "%s =", keys[i].key);
    if (!dump_empty(cfg, &keys[i])) {
      fputc(' ', f);
      dump_value(cfg, &keys[i], f);
    }
    fputc('\n', f);
  }
}

bool emd_config_key(size_t i, const char **section, const char **key,
                    const char **def)
{
  if (i >= N_KEYS)
    return false;
  *section = keys[i].section;
  *key = keys[i].key;
  *def = keys[i].def;
  return true;
}

/* Reads at most KEY_FILE_MAX + 1 bytes of fd into buf. */
static ssize_t read_all(int fd, char *buf, size_t cap)
{
  size_t len = 0;

  while (len < cap) {
    ssize_t r = read(fd, buf + len, cap - len);

    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -1;
    if (r == 0)
      break;
    len += (size_t)r;
  }
  return (ssize_t)len;
}

int emd_config_read_key_file(const char *path, char **out, char *err,
                             size_t errlen)
{
  struct conf_ctx c = { .err = err, .errlen = errlen };
  char *buf = NULL, eb[128];
  size_t start = 0;
  ssize_t len;
  int fd;

  *out = NULL;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;

    fail(&c, -e, "%s: cannot open: %s", path, errstr(e, eb, sizeof(eb)));
    return c.rc;
  }
  buf = malloc(KEY_FILE_MAX + 1);
  if (buf == NULL) {
    fail(&c, -ENOMEM, "%s: out of memory", path);
    goto out;
  }
  len = read_all(fd, buf, KEY_FILE_MAX + 1);
  if (len < 0) {
    int e = errno;

    fail(&c, -e, "%s: cannot read: %s", path, errstr(e, eb, sizeof(eb)));
    goto out;
  }
  if (len > KEY_FILE_MAX) {
    fail(&c, EMD_ECONFIG, "%s: too large for a key (over 64 KiB)", path);
    goto out;
  }
  while (len > 0 && is_space(buf[len - 1]))
    len--;
  while ((ssize_t)start < len && is_space(buf[start]))
    start++;
  if ((ssize_t)start == len)
    goto out;                     /* empty: no key */
  if (!key_chars_ok(buf + start, (size_t)len - start)) {
    fail(&c, EMD_ECONFIG, "%s: the key contains white space, control or "
         "non-ASCII characters", path);
    goto out;
  }
  memmove(buf, buf + start, (size_t)len - start);
  buf[(size_t)len - start] = '\0';
  *out = buf;
  buf = NULL;

out:
  if (buf != NULL)
    explicit_bzero(buf, KEY_FILE_MAX + 1);   /* it may hold the key */
  free(buf);
  close(fd);
  return c.rc;
}
