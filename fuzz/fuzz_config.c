/* fuzz_config.c: emd_config_load on the input as agent.conf, and
 * emd_config_parse_size / emd_config_parse_duration on it as a value.
 *
 * The input up to its first NUL byte is the file (a memfd, read through
 * /proc/self/fd/N, so nothing touches the disk); after that NUL, each
 * line is one more environment variable (at most MAX_ENV), after a fixed
 * few that every run has, the API key among them.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 *  - a failure returns EMD_ECONFIG or -ENOMEM, leaves *cfg zeroed and
 *    writes one line into err; success leaves err empty;
 *  - neither the error nor the dump ever shows the API key;
 *  - the value parsers take exactly what the header's grammar allows,
 *    to the same value, and say why not in one line. */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emd_config.h"
#include "emd_err.h"
#include "fuzz.h"

#define SECRET "fuzzS3cretKeyNeverShown"
#define MAX_ENV 8

/* Every run has these; the key must never show in a message or a dump. */
static char *const fixed_env[] = { "PATH=/usr/bin:/bin", "HOME=/nonexistent",
                                   ("EMITD_UPSTREAM_API_KEY=" SECRET) };
#define N_FIXED (sizeof(fixed_env) / sizeof(fixed_env[0]))

/* Two memfds for the whole run: the input, and the dump read back. */
static int conf_fd = -1, dump_fd = -1;
static char conf_path[64], dump_path[64];

static int open_memfd(const char *name, char *path, size_t n)
{
  int fd = memfd_create(name, MFD_CLOEXEC);

  FUZZ_CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
  snprintf(path, n, "/proc/self/fd/%d", fd);
  return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  conf_fd = open_memfd("agent.conf", conf_path, sizeof(conf_path));
  dump_fd = open_memfd("dump.conf", dump_path, sizeof(dump_path));
  return 0;
}

static void fill(int fd, const void *data, size_t size)
{
  FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate: %s", strerror(errno));
  FUZZ_CHECK(size == 0 || pwrite(fd, data, size, 0) == (ssize_t)size,
             "pwrite: %s", strerror(errno));
}

/* envp: the fixed variables, then each line of env[0..n). The strings
 * point into buf, which the caller frees. */
static void make_env(const char *env, size_t n, char **envp, char **buf)
{
  size_t k = 0;
  char *p;

  for (; k < N_FIXED; k++)
    envp[k] = fixed_env[k];
  *buf = p = malloc(n + 1);
  FUZZ_CHECK(p != NULL, "out of memory");
  memcpy(p, env, n);
  p[n] = '\0';
  while (n > 0 && k < N_FIXED + MAX_ENV) {
    char *nl = memchr(p, '\n', n);

    envp[k++] = p;
    if (nl == NULL)
      break;
    *nl = '\0';
    n -= (size_t)(nl + 1 - p);
    p = nl + 1;
  }
  envp[k] = NULL;
}

/* The dump of cfg, malloc'd and NUL-terminated. It may show SECRET only
 * if the input holds it outside the key (in another value). */
static char *dump(const struct emd_config *cfg, bool input_has_secret,
                  size_t *len)
{
  char *text = NULL;
  FILE *f = open_memstream(&text, len);

  FUZZ_CHECK(f != NULL, "open_memstream: %s", strerror(errno));
  emd_config_dump(cfg, f);
  FUZZ_CHECK(fclose(f) == 0, "fclose: %s", strerror(errno));
  FUZZ_CHECK(strstr(text, SECRET) == NULL || input_has_secret,
             "the dump shows the API key");
  return text;
}

static bool zeroed(const struct emd_config *cfg)
{
  static const struct emd_config zero;

  return memcmp(cfg, &zero, sizeof(zero)) == 0;
}

/* The dump of a loaded configuration, then that dump loaded as a file.
 * It need not load back: a value may begin with ';' (a comment after
 * "key = "), and the endpoint loses one more trailing '/' each time. */
static void check_dump(const struct emd_config *cfg, bool input_has_secret)
{
  struct emd_config again;
  char err[512], *text;
  size_t len;

  text = dump(cfg, input_has_secret, &len);
  fill(dump_fd, text, len);
  if (emd_config_load(&again, dump_path, NULL, err, sizeof(err)) == 0)
    emd_config_free(&again);
  free(text);
}

static void fuzz_load(const uint8_t *data, size_t size)
{
  const uint8_t *nul = memchr(data, '\0', size);
  size_t file_len = nul != NULL ? (size_t)(nul - data) : size;
  bool has_secret = memmem(data, size, SECRET, strlen(SECRET)) != NULL;
  char *envp[N_FIXED + MAX_ENV + 1], *envbuf, err[512];
  struct emd_config cfg;
  int rc;

  fill(conf_fd, data, file_len);
  make_env(nul != NULL ? (const char *)nul + 1 : "",
           nul != NULL ? size - file_len - 1 : 0, envp, &envbuf);
  memset(err, 'x', sizeof(err));
  rc = emd_config_load(&cfg, conf_path, envp, err, sizeof(err));
  FUZZ_CHECK(rc == 0 || rc == EMD_ECONFIG || rc == -ENOMEM,
             "emd_config_load returned %d", rc);
  if (rc == 0) {
    FUZZ_CHECK(err[0] == '\0', "success with an error: %s", err);
    check_dump(&cfg, has_secret);
    emd_config_free(&cfg);
    FUZZ_CHECK(zeroed(&cfg), "emd_config_free left fields set");
  } else {
    FUZZ_CHECK(zeroed(&cfg), "failed (%d) with *cfg not zeroed", rc);
    FUZZ_CHECK(fuzz_one_line(err, sizeof(err)),
               "failed (%d) without a one-line message", rc);
    /* Unless the input holds it too (the fuzzer learns it): messages
     * quote the file's keys. */
    FUZZ_CHECK(strstr(err, SECRET) == NULL || has_secret,
               "the error shows the API key: %s", err);
  }
  free(envbuf);
}

struct unit {
  const char *name;
  uint64_t mult;
};

static const struct unit size_units[] = {
  { "", 1 }, { "B", 1 }, { "KiB", 1ull << 10 }, { "MiB", 1ull << 20 },
  { "GiB", 1ull << 30 }, { NULL, 0 },
};
static const struct unit duration_units[] = {
  { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
  { "d", 86400000 }, { NULL, 0 },
};

/* The header's grammar, read plainly: a whole number (no sign), one
 * optional space, then a unit of the table (exactly); the product must
 * fit. Returns 0 with *out, or -1. */
static int reference(const char *s, const struct unit *u, uint64_t *out)
{
  uint64_t v = 0;

  if (*s < '0' || *s > '9')
    return -1;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
      return -1;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  if (*s == ' ' && *++s == '\0')
    return -1;                      /* a space, then no unit */
  for (; u->name != NULL; u++) {
    if (strcmp(s, u->name) != 0)
      continue;
    if (v != 0 && u->mult > UINT64_MAX / v)
      return -1;
    *out = v * u->mult;
    return 0;
  }
  return -1;
}

/* One value parser on s: the value the grammar gives, or one line saying
 * why not. */
static void fuzz_value(int (*parse)(const char *, uint64_t *, char *,
                                    size_t), const struct unit *units,
                       const char *s)
{
  char err[256];
  uint64_t v, want;
  int rc, ref;

  memset(err, 'x', sizeof(err));
  rc = parse(s, &v, err, sizeof(err));
  ref = reference(s, units, &want);
  FUZZ_CHECK((rc == 0) == (ref == 0), "\"%s\": parser %d, grammar %d", s,
             rc, ref);
  if (rc == 0) {
    FUZZ_CHECK(v == want, "\"%s\" parsed as %llu, not %llu", s,
               (unsigned long long)v, (unsigned long long)want);
  } else {
    FUZZ_CHECK(rc == EMD_ECONFIG, "value parser returned %d", rc);
    FUZZ_CHECK(fuzz_one_line(err, sizeof(err)), "no one-line reason");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *s;

  fuzz_load(data, size);
  s = strndup((const char *)data, size);
  FUZZ_CHECK(s != NULL, "out of memory");
  fuzz_value(emd_config_parse_size, size_units, s);
  fuzz_value(emd_config_parse_duration, duration_units, s);
  free(s);
  return 0;
}
