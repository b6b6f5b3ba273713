/* test_config.c: exercises lib/emd_config.c: defaults against SPEC 5, the
 * example file against the key table, every kind of error message, the
 * environment, the value parsers and the key file. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "emd_config.h"
#include "emd_err.h"

#define EXAMPLE EMD_SOURCE_DIR "/agent.conf.example"
#define DATA EMD_SOURCE_DIR "/tests/data/config/"
#define SECRET "sk_live_9f8e7d6c5b4a3f2e1d0c"

/* Tests run inside a fresh temp dir, so files are named as a user would
 * name them ("agent.conf") and messages read as in the docs. */
static char tmpdir[64];
static char oldcwd[4096];

static int setup(void **state)
{
  (void)state;
  strcpy(tmpdir, "/tmp/emd-config-XXXXXX");
  if (getcwd(oldcwd, sizeof(oldcwd)) == NULL || mkdtemp(tmpdir) == NULL ||
      chdir(tmpdir) != 0)
    return -1;
  return 0;
}

static int teardown(void **state)
{
  char cmd[128];

  (void)state;
  if (chdir(oldcwd) != 0)
    return -1;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *name, const char *text)
{
  FILE *f = fopen(name, "w");

  assert_non_null(f);
  assert_int_equal(fputs(text, f) >= 0, 1);
  assert_int_equal(fclose(f), 0);
}

/* Loads text as agent.conf with env; returns the rc, err holds the line. */
static int load_text(struct emd_config *cfg, const char *text,
                     char *const *env, char *err, size_t n)
{
  write_file("agent.conf", text);
  return emd_config_load(cfg, "agent.conf", env, err, n);
}

/* Asserts that loading text fails with exactly msg. */
static void expect_error(const char *text, char *const *env, const char *msg)
{
  struct emd_config cfg;
  char err[512];
  int rc = load_text(&cfg, text, env, err, sizeof(err));

  if (rc == 0)
    emd_config_free(&cfg);
  assert_int_equal(rc, EMD_ECONFIG);
  assert_string_equal(err, msg);
}

static void assert_str_eq(const char *a, const char *b, const char *what)
{
  if (a == NULL || b == NULL) {
    if (a != b)
      fail_msg("%s: \"%s\" != \"%s\"", what, a ? a : "(null)",
               b ? b : "(null)");
    return;
  }
  if (strcmp(a, b) != 0)
    fail_msg("%s: \"%s\" != \"%s\"", what, a, b);
}

/* A new field must be compared here too: this stops the build until it
 * is (LP64 Linux layout). */
_Static_assert(sizeof(struct emd_config) == 856,
               "struct emd_config changed: update assert_config_equal");

/* Every field but path. */
static void assert_config_equal(const struct emd_config *a,
                                const struct emd_config *b)
{
#define NUM(f) assert_int_equal(a->f, b->f)
#define STR(f) assert_str_eq(a->f, b->f, #f)
  STR(agent.socket);
  NUM(agent.socket_mode);
  STR(agent.control_socket);
  NUM(agent.n_allow_uids);
  assert_memory_equal(a->agent.allow_uids, b->agent.allow_uids,
                      sizeof(a->agent.allow_uids));
  NUM(agent.n_allow_gids);
  assert_memory_equal(a->agent.allow_gids, b->agent.allow_gids,
                      sizeof(a->agent.allow_gids));
  NUM(agent.log_level);
  NUM(agent.log_format);
  NUM(agent.shutdown_grace_ms);
  NUM(ingest.max_event_bytes);
  NUM(ingest.unknown_fields);
  NUM(ingest.max_clients);
  STR(spool.dir);
  NUM(spool.sync);
  NUM(spool.sync_interval_ms);
  NUM(spool.max_bytes);
  NUM(spool.on_full);
  NUM(spool.max_age_ms);
  NUM(spool.dead_max);
  NUM(spool.timer_ttl_ms);
  NUM(spool.dedup_window_ms);
  STR(upstream.endpoint);
  NUM(upstream.mode);
  NUM(upstream.encoding);
  NUM(upstream.compression);
  STR(upstream.api_key);
  STR(upstream.api_key_file);
  NUM(upstream.auth);
  NUM(upstream.batch_max_events);
  NUM(upstream.batch_max_bytes);
  NUM(upstream.batch_linger_ms);
  NUM(upstream.max_inflight);
  NUM(upstream.connect_timeout_ms);
  NUM(upstream.timeout_ms);
  NUM(upstream.retry_initial_ms);
  NUM(upstream.retry_max_ms);
  NUM(upstream.auth_retry_max_ms);
  NUM(upstream.max_attempts);
  STR(upstream.ca_file);
  STR(enrich.scope);
  STR(enrich.tenant);
  STR(enrich.timezone);
  NUM(enrich.repository_provider);
  STR(enrich.repository_link);
  STR(enrich.repository_name);
#undef NUM
#undef STR
}

/* ---- defaults and the example ---- */

static void defaults_equal_the_spec_values(void **state)
{
  struct emd_config c;

  (void)state;
  assert_int_equal(emd_config_defaults(&c), 0);
  assert_null(c.path);
  assert_string_equal(c.agent.socket, "/run/emitd/emitd.sock");
  assert_int_equal(c.agent.socket_mode, 0660);
  assert_string_equal(c.agent.control_socket, "/run/emitd/control.sock");
  assert_int_equal(c.agent.n_allow_uids, 0);
  assert_int_equal(c.agent.n_allow_gids, 0);
  assert_int_equal(c.agent.log_level, EMD_LOG_INFO);
  assert_int_equal(c.agent.log_format, EMD_LOG_TEXT);
  assert_int_equal(c.agent.shutdown_grace_ms, 5000);
  assert_int_equal(c.ingest.max_event_bytes, 1024 * 1024);
  assert_int_equal(c.ingest.unknown_fields, EMD_UNKNOWN_REJECT);
  assert_int_equal(c.ingest.max_clients, 1024);
  assert_string_equal(c.spool.dir, "/var/lib/emitd");
  assert_int_equal(c.spool.sync, EMD_SYNC_ALWAYS);
  assert_int_equal(c.spool.sync_interval_ms, 100);
  assert_int_equal(c.spool.max_bytes, 1024ull * 1024 * 1024);
  assert_int_equal(c.spool.on_full, EMD_FULL_REJECT);
  assert_int_equal(c.spool.max_age_ms, 7ull * 24 * 3600 * 1000);
  assert_int_equal(c.spool.dead_max, 10000);
  assert_int_equal(c.spool.timer_ttl_ms, 24ull * 3600 * 1000);
  assert_int_equal(c.spool.dedup_window_ms, 10 * 60 * 1000);
  assert_string_equal(c.upstream.endpoint, "https://rpc.less.build");
  assert_int_equal(c.upstream.mode, EMD_MODE_BATCH);
  assert_int_equal(c.upstream.encoding, EMD_ENC_PROTOBUF);
  assert_int_equal(c.upstream.compression, EMD_COMP_NONE);
  assert_null(c.upstream.api_key);
  assert_null(c.upstream.api_key_file);
  assert_int_equal(c.upstream.auth, EMD_AUTH_BEARER);
  assert_int_equal(c.upstream.batch_max_events, 500);
  assert_int_equal(c.upstream.batch_max_bytes, 1024 * 1024);
  assert_int_equal(c.upstream.batch_linger_ms, 200);
  assert_int_equal(c.upstream.max_inflight, 2);
  assert_int_equal(c.upstream.connect_timeout_ms, 5000);
  assert_int_equal(c.upstream.timeout_ms, 10000);
  assert_int_equal(c.upstream.retry_initial_ms, 500);
  assert_int_equal(c.upstream.retry_max_ms, 60000);
  assert_int_equal(c.upstream.auth_retry_max_ms, 5 * 60 * 1000);
  assert_int_equal(c.upstream.max_attempts, 0);
  assert_null(c.upstream.ca_file);
  assert_null(c.enrich.scope);
  assert_null(c.enrich.tenant);
  assert_null(c.enrich.timezone);
  assert_int_equal(c.enrich.repository_provider, 0);
  assert_null(c.enrich.repository_link);
  assert_null(c.enrich.repository_name);
  emd_config_free(&c);
}

static void defaults_pass_validation_with_no_file_and_no_environment(
  void **state)
{
  struct emd_config c, d;
  char err[512];

  (void)state;
  write_file("empty.conf", "");
  assert_int_equal(emd_config_load(&c, "empty.conf", NULL, err, sizeof(err)),
                   0);
  assert_int_equal(emd_config_defaults(&d), 0);
  assert_config_equal(&c, &d);
  assert_string_equal(c.path, "empty.conf");
  emd_config_free(&c);
  emd_config_free(&d);
}

static void example_file_loads_to_exactly_the_defaults(void **state)
{
  struct emd_config c, d;
  char err[512] = "";

  (void)state;
  if (emd_config_load(&c, EXAMPLE, NULL, err, sizeof(err)) != 0)
    fail_msg("%s", err);
  assert_int_equal(emd_config_defaults(&d), 0);
  assert_config_equal(&c, &d);
  assert_string_equal(c.path, EXAMPLE);
  emd_config_free(&c);
  emd_config_free(&d);
}

struct example_line {
  char section[32];
  char key[64];
  char value[256];
  bool commented;
  bool explained;             /* a plain comment line right above it */
};

/* "key = value" or "# key = value"; false for anything else. */
static bool parse_key_line(const char *line, struct example_line *out)
{
  const char *p = line, *eq;
  size_t n;

  out->commented = *p == '#';
  if (out->commented)
    p += 2;
  for (n = 0; (p[n] >= 'a' && p[n] <= 'z') || p[n] == '_'; n++)
    ;
  if (n == 0 || n >= sizeof(out->key) || strncmp(p + n, " = ", 3) != 0)
    return false;
  memcpy(out->key, p, n);
  out->key[n] = '\0';
  eq = p + n + 3;
  snprintf(out->value, sizeof(out->value), "%s", eq);
  return true;
}

/* Reads the key lines of agent.conf.example into lines; returns count. */
static size_t read_example(struct example_line *lines, size_t max)
{
  FILE *f = fopen(EXAMPLE, "r");
  char buf[512], section[32] = "";
  bool prev_comment = false;
  size_t n = 0;

  assert_non_null(f);
  while (fgets(buf, sizeof(buf), f) != NULL) {
    struct example_line l = { 0 };

    buf[strcspn(buf, "\n")] = '\0';
    if (buf[0] == '[') {
      snprintf(section, sizeof(section), "%.*s",
               (int)(strcspn(buf, "]") - 1), buf + 1);
      prev_comment = false;
      continue;
    }
    if (section[0] != '\0' && parse_key_line(buf, &l)) {
      assert_true(n < max);
      snprintf(l.section, sizeof(l.section), "%s", section);
      l.explained = prev_comment;
      lines[n++] = l;
      prev_comment = false;
      continue;
    }
    prev_comment = buf[0] == '#';
  }
  fclose(f);
  return n;
}

static void every_key_appears_in_the_example_with_its_default(void **state)
{
  struct example_line lines[128];
  size_t n = read_example(lines, 128), i, j, found;
  const char *sec, *key, *def;

  (void)state;
  for (i = 0; emd_config_key(i, &sec, &key, &def); i++) {
    for (found = 0, j = 0; j < n; j++) {
      if (strcmp(lines[j].section, sec) != 0 || strcmp(lines[j].key, key))
        continue;
      found++;
      if (!lines[j].explained)
        fail_msg("[%s] %s: no explanation line above it", sec, key);
      if (def == NULL && !lines[j].commented)
        fail_msg("[%s] %s: unset by default, must be commented out", sec,
                 key);
      if (def != NULL && lines[j].commented)
        fail_msg("[%s] %s: has a default, must not be commented out", sec,
                 key);
      if (def != NULL)
        assert_str_eq(lines[j].value, def, key);
    }
    if (found != 1)
      fail_msg("[%s] %s appears %zu times in the example", sec, key, found);
  }
  /* and nothing in the example that the table lacks */
  assert_int_equal(n, i);
}

/* The commented-out sample values must be valid too: each is applied
 * through its EMITD_ variable on top of the example. */
static void commented_samples_in_the_example_are_valid(void **state)
{
  struct example_line lines[128];
  size_t n = read_example(lines, 128);

  (void)state;
  for (size_t i = 0; i < n; i++) {
    char var[512], err[512] = "";
    char *env[] = { var, NULL };
    struct emd_config c;
    int len;

    if (!lines[i].commented)
      continue;
    len = snprintf(var, sizeof(var), "EMITD_%s_%s=%s", lines[i].section,
                   lines[i].key, lines[i].value);
    for (int k = 0; k < len && var[k] != '='; k++)
      if (var[k] >= 'a' && var[k] <= 'z')
        var[k] = (char)(var[k] - 'a' + 'A');
    if (emd_config_load(&c, EXAMPLE, env, err, sizeof(err)) != 0)
      fail_msg("%s: %s", var, err);
    emd_config_free(&c);
  }
}

/* ---- the file ---- */

static void file_values_replace_the_defaults(void **state)
{
  struct emd_config c;
  char err[512] = "";

  (void)state;
  assert_int_equal(load_text(&c,
    "# a comment\n"
    "; another\n"
    "[agent]\n"
    "socket = /tmp/e.sock\n"
    "socket_mode = 600\n"
    "allow_uids = 0, 1000 1001\n"
    "allow_gids = 27\n"
    "log_level = DEBUG\n"
    "log_format = json\n"
    "shutdown_grace = 0ms\n"
    "[ingest]\n"
    "max_event_bytes = 64 KiB\n"
    "unknown_fields = ignore\n"
    "[spool]\n"
    "sync = interval\n"
    "max_bytes = 2097152\n"
    "on_full = drop_oldest\n"
    "max_age = 36h\n"
    "[upstream]\n"
    "endpoint = http://localhost:8080/\n"
    "compression = zstd ; inline comment\n"
    "auth = x-api-key\n"
    "max_attempts = 7\n"
    "ca_file = /etc/ssl/x.pem\n"
    "[enrich]\n"
    "tenant = org_acme\n"
    "repository_provider = github\n"
    "repository_name = caf\xc3\xa9\n",
    NULL, err, sizeof(err)), 0);
  assert_string_equal(err, "");
  assert_string_equal(c.agent.socket, "/tmp/e.sock");
  assert_int_equal(c.agent.socket_mode, 0600);
  assert_int_equal(c.agent.n_allow_uids, 3);
  assert_int_equal(c.agent.allow_uids[0], 0);
  assert_int_equal(c.agent.allow_uids[1], 1000);
  assert_int_equal(c.agent.allow_uids[2], 1001);
  assert_int_equal(c.agent.n_allow_gids, 1);
  assert_int_equal(c.agent.allow_gids[0], 27);
  assert_int_equal(c.agent.log_level, EMD_LOG_DEBUG);
  assert_int_equal(c.agent.log_format, EMD_LOG_JSON);
  assert_int_equal(c.agent.shutdown_grace_ms, 0);
  assert_int_equal(c.ingest.max_event_bytes, 64 * 1024);
  assert_int_equal(c.ingest.unknown_fields, EMD_UNKNOWN_IGNORE);
  assert_int_equal(c.spool.sync, EMD_SYNC_INTERVAL);
  assert_int_equal(c.spool.max_bytes, 2097152);
  assert_int_equal(c.spool.on_full, EMD_FULL_DROP_OLDEST);
  assert_int_equal(c.spool.max_age_ms, 36ull * 3600 * 1000);
  assert_string_equal(c.upstream.endpoint, "http://localhost:8080");
  assert_int_equal(c.upstream.compression, EMD_COMP_ZSTD);
  assert_int_equal(c.upstream.auth, EMD_AUTH_X_API_KEY);
  assert_int_equal(c.upstream.max_attempts, 7);
  assert_string_equal(c.upstream.ca_file, "/etc/ssl/x.pem");
  assert_string_equal(c.enrich.tenant, "org_acme");
  assert_int_equal(c.enrich.repository_provider, 1);
  assert_string_equal(c.enrich.repository_name, "caf\xc3\xa9");
  emd_config_free(&c);
}

static void later_lines_win_and_empty_values_unset_optional_keys(
  void **state)
{
  struct emd_config c;
  char err[512];

  (void)state;
  assert_int_equal(load_text(&c,
    "[upstream]\nca_file = /a.pem\nmax_inflight = 3\n"
    "[agent]\nallow_uids = 5\n"
    "[upstream]\nmax_inflight = 4\nca_file =\n"
    "[agent]\nallow_uids =\n",
    NULL, err, sizeof(err)), 0);
  assert_int_equal(c.upstream.max_inflight, 4);
  assert_null(c.upstream.ca_file);
  assert_int_equal(c.agent.n_allow_uids, 0);
  emd_config_free(&c);
  expect_error("[spool]\ndir =\n",
               NULL, "agent.conf:2: [spool] dir: must not be empty");
}

static void crlf_line_ends_indentation_and_a_bom_are_accepted(void **state)
{
  struct emd_config c;
  char err[512] = "";

  (void)state;
  assert_int_equal(load_text(&c,
    "\xef\xbb\xbf[spool]\r\n"
    "   max_age = 2d\r\n"
    "\tdead_max = 5\r\n",
    NULL, err, sizeof(err)), 0);
  assert_string_equal(err, "");
  assert_int_equal(c.spool.max_age_ms, 2ull * 24 * 3600 * 1000);
  assert_int_equal(c.spool.dead_max, 5);
  emd_config_free(&c);
}

static void unknown_key_names_file_line_section_and_key(void **state)
{
  (void)state;
  expect_error("[spool]\n\n# c\nsycn = always\n", NULL,
               "agent.conf:4: [spool] sycn: unknown key (did you mean sync?)");
  expect_error("[spool]\nfrobnicate = 1\n", NULL,
               "agent.conf:2: [spool] frobnicate: unknown key");
  expect_error("[spool]\nendpoint = http://x\n", NULL,
               "agent.conf:2: [spool] endpoint: unknown key (it belongs in "
               "[upstream])");
  expect_error("dir = /x\n", NULL,
               "agent.conf:1: dir: key outside any [section]");
}

static void unknown_section_is_an_error_even_when_empty(void **state)
{
  (void)state;
  expect_error("[agent]\nlog_level = info\n\n[spol]\n", NULL,
               "agent.conf:4: unknown section [spol] (did you mean [spool]?)");
  expect_error("[Agent]\nsocket = /x\n", NULL,
               "agent.conf:1: unknown section [Agent] (did you mean "
               "[agent]?)");
  expect_error("[agent\n", NULL,
               "agent.conf:1: bad section header: expected [name]");
  expect_error("[agent] junk\n", NULL,
               "agent.conf:1: unexpected text after ']'");
}

static void syntax_errors_name_the_line(void **state)
{
  char text[400];

  (void)state;
  expect_error("[agent]\nlog_level = info\njust words\nsocket = /x\n", NULL,
               "agent.conf:3: expected [section] or key = value");
  /* the first error wins, even when a later line is wrong too */
  expect_error("[agent]\nnonsense\nsocket_mode = 9\n", NULL,
               "agent.conf:2: expected [section] or key = value");
  expect_error("[agent]\n= 5\n", NULL,
               "agent.conf:2: missing key name before '='");
  memset(text, 0, sizeof(text));
  strcpy(text, "[spool]\ndir = /");
  memset(text + strlen(text), 'a', 250);
  strcat(text, "\n");
  expect_error(text, NULL,
               "agent.conf:2: line too long (at most 199 characters)");
}

static void nul_byte_in_the_file_is_an_error(void **state)
{
  struct emd_config c;
  char err[512];
  FILE *f = fopen("agent.conf", "w");

  (void)state;
  assert_non_null(f);
  fwrite("[spool]\ndir = /a\0b\n", 1, 19, f);
  fclose(f);
  assert_int_equal(emd_config_load(&c, "agent.conf", NULL, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_string_equal(err, "agent.conf:2: NUL byte in line");
}

static void bad_duration_names_file_line_and_key(void **state)
{
  (void)state;
  expect_error("[agent]\nlog_level = info\n[spool]\nmax_age = 5x\n", NULL,
               "agent.conf:4: [spool] max_age: bad duration \"5x\": expected "
               "a number with ms, s, m, h or d");
  expect_error("[upstream]\ntimeout = 10\n", NULL,
               "agent.conf:2: [upstream] timeout: bad duration \"10\": "
               "expected a unit ms, s, m, h or d");
}

static void bad_size_unit_names_file_line_and_key(void **state)
{
  (void)state;
  expect_error("[spool]\nmax_bytes = 2GB\n", NULL,
               "agent.conf:2: [spool] max_bytes: bad size \"2GB\": expected "
               "a number with B, KiB, MiB or GiB (KB, MB and GB are not "
               "accepted)");
  expect_error("[ingest]\nmax_event_bytes = 1 XiB\n", NULL,
               "agent.conf:2: [ingest] max_event_bytes: bad size \"1 XiB\": "
               "expected a number with B, KiB, MiB or GiB");
}

static void out_of_range_numbers_are_errors(void **state)
{
  (void)state;
  expect_error("[upstream]\nmax_inflight = 0\n", NULL,
               "agent.conf:2: [upstream] max_inflight: 0 is out of range: "
               "expected 1 to 64");
  expect_error("[upstream]\nbatch_max_events = 0\n", NULL,
               "agent.conf:2: [upstream] batch_max_events: 0 is out of "
               "range: expected 1 to 100000");
  expect_error("[upstream]\nmax_inflight = 99999999999999999999999\n", NULL,
               "agent.conf:2: [upstream] max_inflight: bad number "
               "\"99999999999999999999999\": too large");
  expect_error("[upstream]\nmax_inflight = -1\n", NULL,
               "agent.conf:2: [upstream] max_inflight: bad number \"-1\": "
               "expected a whole number");
  expect_error("[agent]\nsocket_mode = 01000\n", NULL,
               "agent.conf:2: [agent] socket_mode: bad mode \"01000\": "
               "expected an octal number from 0000 to 0777");
  expect_error("[agent]\nsocket_mode = 0698\n", NULL,
               "agent.conf:2: [agent] socket_mode: bad mode \"0698\": "
               "expected an octal number from 0000 to 0777");
  expect_error("[ingest]\nmax_event_bytes = 16MiB\n", NULL,
               "agent.conf:2: [ingest] max_event_bytes: 16MiB is out of "
               "range: expected 64B to 8MiB");
  expect_error("[spool]\nmax_bytes = 1KiB\n", NULL,
               "agent.conf:2: [spool] max_bytes: 1KiB is out of range: "
               "expected at least 4KiB");
  expect_error("[spool]\nsync_interval = 2m\n", NULL,
               "agent.conf:2: [spool] sync_interval: 2m is out of range: "
               "expected 1ms to 1m");
}

static void bad_enum_values_list_the_choices(void **state)
{
  (void)state;
  expect_error("[spool]\nsync = sometimes\n", NULL,
               "agent.conf:2: [spool] sync: bad value \"sometimes\": "
               "expected always, interval or none");
  expect_error("[enrich]\nrepository_provider = 2\n", NULL,
               "agent.conf:2: [enrich] repository_provider: bad value \"2\": "
               "expected NO_REPOSITORY_PROVIDER (0) or GITHUB (1)");
  expect_error("[upstream]\nmode = 1\n", NULL,
               "agent.conf:2: [upstream] mode: bad value \"1\": expected "
               "batch or single");
}

static void repository_provider_takes_names_and_numbers(void **state)
{
  static const struct { const char *v; int want; } cases[] = {
    { "GITHUB", 1 }, { "github", 1 }, { "1", 1 },
    { "NO_REPOSITORY_PROVIDER", 0 }, { "0", 0 },
  };

  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct emd_config c;
    char text[128], err[512];

    snprintf(text, sizeof(text), "[enrich]\nrepository_provider = %s\n",
             cases[i].v);
    assert_int_equal(load_text(&c, text, NULL, err, sizeof(err)), 0);
    assert_int_equal(c.enrich.repository_provider, cases[i].want);
    emd_config_free(&c);
  }
}

static void id_lists_take_numbers_only(void **state)
{
  struct emd_config c;
  char text[1024], err[512];
  size_t len;

  (void)state;
  expect_error("[agent]\nallow_uids = 0, www-data\n", NULL,
               "agent.conf:2: [agent] allow_uids: bad uid list \"0, "
               "www-data\": expected numbers separated by commas or spaces "
               "(names are not accepted)");
  expect_error("[agent]\nallow_gids = 4294967295\n", NULL,
               "agent.conf:2: [agent] allow_gids: bad gid list "
               "\"4294967295\": gid out of range");
  expect_error("[agent]\nallow_uids = 99999999999999999999999999\n", NULL,
               "agent.conf:2: [agent] allow_uids: bad uid list "
               "\"99999999999999999999999999\": uid out of range");
  len = (size_t)snprintf(text, sizeof(text), "[agent]\nallow_uids =");
  for (int i = 0; i < EMD_CONFIG_MAX_IDS; i++)
    len += (size_t)snprintf(text + len, sizeof(text) - len, " %d", i);
  strcat(text, "\n");
  assert_int_equal(load_text(&c, text, NULL, err, sizeof(err)), 0);
  assert_int_equal(c.agent.n_allow_uids, EMD_CONFIG_MAX_IDS);
  assert_int_equal(c.agent.allow_uids[EMD_CONFIG_MAX_IDS - 1],
                   EMD_CONFIG_MAX_IDS - 1);
  emd_config_free(&c);
  text[strlen(text) - 1] = '\0';
  strcat(text, ",64\n");
  expect_error(text, NULL,
               "agent.conf:2: [agent] allow_uids: too many uids (at most 64)");
}

static void missing_file_fails_naming_the_path(void **state)
{
  struct emd_config c;
  char err[512];

  (void)state;
  assert_int_equal(emd_config_load(&c, "/etc/x.conf", NULL, err,
                                   sizeof(err)), EMD_ECONFIG);
  assert_string_equal(err, "/etc/x.conf: cannot open: No such file or "
                      "directory");
  assert_int_equal(mkdir("adir", 0700), 0);
  assert_int_equal(emd_config_load(&c, "adir", NULL, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_string_equal(err, "adir: cannot read: Is a directory");
}

static void no_path_means_the_default_file_or_defaults_alone(void **state)
{
  struct emd_config c;
  char err[512] = "";
  char *env[] = { "EMITD_SPOOL_DIR=/srv/spool", NULL };
  int rc;

  (void)state;
  rc = emd_config_load(&c, NULL, env, err, sizeof(err));
  if (access(EMD_CONFIG_DEFAULT_PATH, F_OK) == 0) {
    /* a machine with emitd installed: the file is read */
    if (rc == 0)
      assert_string_equal(c.path, EMD_CONFIG_DEFAULT_PATH);
    else
      assert_non_null(strstr(err, EMD_CONFIG_DEFAULT_PATH));
  } else {
    assert_int_equal(rc, 0);
    assert_null(c.path);
    assert_string_equal(c.spool.dir, "/srv/spool");
  }
  emd_config_free(&c);
}

static void a_failed_load_leaves_the_struct_empty(void **state)
{
  struct emd_config c, zero;
  char err[512];

  (void)state;
  memset(&c, 0x5a, sizeof(c));
  memset(&zero, 0, sizeof(zero));
  assert_int_equal(load_text(&c, "[spool]\ndir = /x\nsync = bad\n", NULL,
                             err, sizeof(err)), EMD_ECONFIG);
  assert_memory_equal(&c, &zero, sizeof(c));
  emd_config_free(&c);            /* and freeing it is harmless */
  emd_config_free(&c);
  emd_config_free(NULL);
}

/* ---- the environment ---- */

static void environment_overrides_win_over_the_file(void **state)
{
  struct emd_config c;
  char err[512] = "";
  char *env[] = {
    "PATH=/usr/bin",
    "EMITD_SPOOL_MAX_BYTES=2GiB",
    "EMITD_AGENT_SOCKET=  /tmp/env.sock  ",
    "EMITD_UPSTREAM_MODE=single",
    "EMITD_ENRICH_TENANT=org_fromenv",
    "EMITD_UPSTREAM_API_KEY_FILE=/run/secrets/key",
    "EMITD_AGENT_ALLOW_GIDS=1,2",
    "HOME=/root",
    NULL
  };

  (void)state;
  assert_int_equal(load_text(&c,
    "[spool]\nmax_bytes = 4GiB\ndir = /from/file\n"
    "[agent]\nsocket = /tmp/file.sock\n"
    "[enrich]\ntenant = org_fromfile\n",
    env, err, sizeof(err)), 0);
  assert_string_equal(err, "");
  assert_int_equal(c.spool.max_bytes, 2ull << 30);
  assert_string_equal(c.spool.dir, "/from/file");
  assert_string_equal(c.agent.socket, "/tmp/env.sock");
  assert_int_equal(c.upstream.mode, EMD_MODE_SINGLE);
  assert_string_equal(c.enrich.tenant, "org_fromenv");
  assert_string_equal(c.upstream.api_key_file, "/run/secrets/key");
  assert_int_equal(c.agent.n_allow_gids, 2);
  emd_config_free(&c);
}

static void unknown_emitd_variable_is_an_error(void **state)
{
  char *env1[] = { "EMITD_SPOOL_SYNCC=always", NULL };
  char *env2[] = { "EMITD_FOO=1", NULL };
  char *env3[] = { "EMITD_spool_sync=always", NULL };
  char *env4[] = { "EMITDX=1", "MY_EMITD_SPOOL_X=1", NULL };
  struct emd_config c;
  char err[512];

  (void)state;
  expect_error("", env1, "EMITD_SPOOL_SYNCC: unknown setting (did you mean "
               "EMITD_SPOOL_SYNC?)");
  expect_error("", env2, "EMITD_FOO: unknown setting");
  expect_error("", env3, "EMITD_spool_sync: unknown setting");
  /* only the EMITD_ prefix is ours */
  assert_int_equal(load_text(&c, "", env4, err, sizeof(err)), 0);
  emd_config_free(&c);
}

static void environment_errors_name_the_variable(void **state)
{
  char *env1[] = { "EMITD_SPOOL_MAX_BYTES=12XB", NULL };
  char *env2[] = { "EMITD_UPSTREAM_RETRY_MAX=100ms", NULL };
  char *env3[] = { "EMITD_SPOOL_DIR=", NULL };

  (void)state;
  expect_error("", env1, "EMITD_SPOOL_MAX_BYTES: bad size \"12XB\": expected "
               "a number with B, KiB, MiB or GiB");
  expect_error("", env2, "EMITD_UPSTREAM_RETRY_MAX: 100ms is less than "
               "retry_initial (500ms)");
  expect_error("", env3, "EMITD_SPOOL_DIR: must not be empty");
}

/* ---- cross-field checks ---- */

static void retry_initial_above_retry_max_is_an_error(void **state)
{
  (void)state;
  expect_error("[upstream]\nretry_max = 2s\nretry_initial = 3s\n", NULL,
               "agent.conf:3: [upstream] retry_initial: 3s is more than "
               "retry_max (2s)");
  expect_error("[upstream]\n\nretry_max = 100ms\n", NULL,
               "agent.conf:3: [upstream] retry_max: 100ms is less than "
               "retry_initial (500ms)");
}

static void endpoint_needs_http_and_loses_trailing_slashes(void **state)
{
  struct emd_config c;
  char err[512];
  const char *msg = "agent.conf:2: [upstream] endpoint: expected a base URL "
                    "starting with http:// or https://, without query or "
                    "fragment";

  (void)state;
  expect_error("[upstream]\nendpoint = ftp://x\n", NULL, msg);
  expect_error("[upstream]\nendpoint = rpc.less.build\n", NULL, msg);
  expect_error("[upstream]\nendpoint = https://\n", NULL, msg);
  expect_error("[upstream]\nendpoint = https://x/?a=b\n", NULL, msg);
  assert_int_equal(load_text(&c, "[upstream]\nendpoint = https://h/base//\n",
                             NULL, err, sizeof(err)), 0);
  assert_string_equal(c.upstream.endpoint, "https://h/base");
  emd_config_free(&c);
  assert_int_equal(load_text(&c, "[upstream]\nendpoint = HTTP://h:1\n",
                             NULL, err, sizeof(err)), 0);
  assert_string_equal(c.upstream.endpoint, "HTTP://h:1");
  emd_config_free(&c);
}

static void enrich_values_obey_the_event_rules(void **state)
{
  struct emd_config c;
  char err[512] = "";

  (void)state;
  expect_error("[enrich]\ntenant = acme\n", NULL,
               "agent.conf:2: [enrich] tenant: does not match "
               "^org_[a-zA-Z0-9]{3,32}$");
  expect_error("[enrich]\ntenant = org_ab\n", NULL,
               "agent.conf:2: [enrich] tenant: does not match "
               "^org_[a-zA-Z0-9]{3,32}$");
  expect_error("[enrich]\ntenant = org_a-bc\n", NULL,
               "agent.conf:2: [enrich] tenant: does not match "
               "^org_[a-zA-Z0-9]{3,32}$");
  expect_error("[enrich]\nrepository_name = "
               "abcdefghijklmnopqrstuvwxyz0123456\n", NULL,
               "agent.conf:2: [enrich] repository_name: longer than 32 "
               "characters");
  expect_error("[enrich]\nrepository_link = github.com/x/y\n", NULL,
               "agent.conf:2: [enrich] repository_link: expected a URI with "
               "a scheme, such as https://github.com/org/repo");
  expect_error("[enrich]\ntimezone = \xff\xfe\n", NULL,
               "agent.conf:2: [enrich] timezone: not valid UTF-8");
  expect_error("[enrich]\nscope = \xc0\xaf\n", NULL,
               "agent.conf:2: [enrich] scope: not valid UTF-8");
  /* 32 characters of two bytes each: lengths count characters */
  {
    char text[256] = "[enrich]\nrepository_name = ";

    for (int i = 0; i < 32; i++)
      strcat(text, "\xc3\xa9");
    strcat(text, "\ntenant = org_abcdefghijklmnopqrstuvwxyz012345\n"
           "repository_link = git+ssh://git@host/r\n"
           "timezone = America/New_York\n");
    assert_int_equal(load_text(&c, text, NULL, err, sizeof(err)), 0);
    assert_string_equal(c.enrich.timezone, "America/New_York");
    emd_config_free(&c);
  }
}

static void sockets_must_fit_and_differ(void **state)
{
  char text[400];

  (void)state;
  expect_error("[agent]\nsocket = /s\ncontrol_socket = /s\n", NULL,
               "agent.conf:3: [agent] control_socket: the same path as "
               "agent.socket");
  strcpy(text, "[agent]\nsocket = /");
  memset(text + strlen(text), 's', 120);
  strcpy(text + strlen("[agent]\nsocket = /") + 120, "\n");
  expect_error(text, NULL, "agent.conf:2: [agent] socket: path too long for "
               "a Unix socket (at most 107 bytes)");
}

/* ---- the API key ---- */

static void api_key_never_appears_in_errors_or_the_dump(void **state)
{
  struct emd_config c;
  char err[512], *buf = NULL;
  size_t len = 0;
  char *env1[] = { "EMITD_UPSTREAM_API_KEY=" SECRET " x", NULL };
  char *env2[] = { "EMITD_UPSTREAM_API_KEY=" SECRET, "EMITD_X=1", NULL };
  FILE *f;

  (void)state;
  /* a bad key is named, not quoted */
  assert_int_equal(load_text(&c, "[upstream]\napi_key = " SECRET " x\n",
                             NULL, err, sizeof(err)), EMD_ECONFIG);
  assert_string_equal(err, "agent.conf:2: [upstream] api_key: contains "
                      "white space, control or non-ASCII characters (not "
                      "allowed in an HTTP header)");
  assert_int_equal(load_text(&c, "", env1, err, sizeof(err)), EMD_ECONFIG);
  assert_null(strstr(err, SECRET));
  assert_non_null(strstr(err, "EMITD_UPSTREAM_API_KEY: "));
  /* errors elsewhere, with the key set, do not echo it */
  assert_int_equal(load_text(&c, "[upstream]\napi_kye = " SECRET "\n",
                             NULL, err, sizeof(err)), EMD_ECONFIG);
  assert_null(strstr(err, SECRET));
  assert_int_equal(load_text(&c, SECRET "\n", NULL, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_null(strstr(err, SECRET));
  assert_int_equal(load_text(&c, "", env2, err, sizeof(err)), EMD_ECONFIG);
  assert_null(strstr(err, SECRET));
  /* the dump says (set) */
  assert_int_equal(load_text(&c, "[upstream]\napi_key = " SECRET "\n",
                             NULL, err, sizeof(err)), 0);
  assert_string_equal(c.upstream.api_key, SECRET);
  f = open_memstream(&buf, &len);
  assert_non_null(f);
  emd_config_dump(&c, f);
  fclose(f);
  assert_null(strstr(buf, SECRET));
  assert_non_null(strstr(buf, "\napi_key = (set)\n"));
  free(buf);
  emd_config_free(&c);
}

static void api_key_file_wins_over_api_key(void **state)
{
  struct emd_config c;
  char err[512];
  char *env[] = { "EMITD_UPSTREAM_API_KEY=" SECRET, NULL };

  (void)state;
  assert_int_equal(load_text(&c, "[upstream]\napi_key_file = /k\n", env,
                             err, sizeof(err)), 0);
  assert_null(c.upstream.api_key);
  assert_string_equal(c.upstream.api_key_file, "/k");
  emd_config_free(&c);
  assert_int_equal(load_text(&c, "", env, err, sizeof(err)), 0);
  assert_string_equal(c.upstream.api_key, SECRET);
  emd_config_free(&c);
}

static void key_file_is_trimmed_and_errors_name_the_path(void **state)
{
  char *key = (char *)"unchanged", err[512];

  (void)state;
  write_file("key", "\n  " SECRET " \r\n\n");
  assert_int_equal(emd_config_read_key_file("key", &key, err, sizeof(err)),
                   0);
  assert_string_equal(key, SECRET);
  free(key);
  write_file("empty", " \n\t\n");
  assert_int_equal(emd_config_read_key_file("empty", &key, err, sizeof(err)),
                   0);
  assert_null(key);
  assert_int_equal(emd_config_read_key_file("nokey", &key, err, sizeof(err)),
                   -ENOENT);
  assert_null(key);
  assert_string_equal(err, "nokey: cannot open: No such file or directory");
  write_file("two", SECRET "\nsecond-line\n");
  assert_int_equal(emd_config_read_key_file("two", &key, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_null(key);
  assert_string_equal(err, "two: the key contains white space, control or "
                      "non-ASCII characters");
  {
    char *big = malloc(70000);

    assert_non_null(big);
    memset(big, 'k', 69999);
    big[69999] = '\0';
    write_file("big", big);
    free(big);
  }
  assert_int_equal(emd_config_read_key_file("big", &key, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_string_equal(err, "big: too large for a key (over 64 KiB)");
}

/* ---- the dump ---- */

static void dump_loads_back_to_the_same_config(void **state)
{
  struct emd_config a, b;
  char err[512] = "";
  FILE *f;

  (void)state;
  assert_int_equal(load_text(&a,
    "[agent]\nallow_uids = 1 2 3\nsocket_mode = 0600\nlog_format = json\n"
    "[spool]\nmax_bytes = 1536MiB\nmax_age = 90m\nsync_interval = 1500ms\n"
    "[upstream]\nretry_max = 60s\nca_file = /ca.pem\nauth = basic\n"
    "batch_max_bytes = 1000\n"
    "[enrich]\nrepository_provider = 1\nscope = ci-7\n",
    NULL, err, sizeof(err)), 0);
  f = fopen("dumped.conf", "w");
  assert_non_null(f);
  emd_config_dump(&a, f);
  fclose(f);
  if (emd_config_load(&b, "dumped.conf", NULL, err, sizeof(err)) != 0)
    fail_msg("%s", err);
  assert_config_equal(&a, &b);
  emd_config_free(&a);
  emd_config_free(&b);
}

/* ---- the value parsers ---- */

static void size_parser_accepts_binary_units_only(void **state)
{
  static const struct { const char *s; uint64_t want; } ok[] = {
    { "0", 0 }, { "1", 1 }, { "1B", 1 }, { "1KiB", 1024 },
    { "1 MiB", 1048576 }, { "16GiB", 16ull << 30 },
    { "18446744073709551615", UINT64_MAX }, { "17179869183GiB",
                                              17179869183ull << 30 },
  };
  static const char *const bad[] = {
    "", " 1", "1 ", "1  MiB", "-1", "+1", "1.5MiB", "1e3", "MiB", "1mib",
    "1KB", "1kB", "1MB", "1GB", "1TiB", "1 B ", "0x10",
    "18446744073709551616", "17179869184GiB", "99999999999999999999999",
  };
  char err[256];
  uint64_t v;

  (void)state;
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    v = 42;
    if (emd_config_parse_size(ok[i].s, &v, err, sizeof(err)) != 0)
      fail_msg("\"%s\": %s", ok[i].s, err);
    assert_int_equal(v, ok[i].want);
  }
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    v = 42;
    if (emd_config_parse_size(bad[i], &v, err, sizeof(err)) != EMD_ECONFIG)
      fail_msg("\"%s\" was accepted", bad[i]);
    assert_int_equal(v, 42);
    assert_non_null(strstr(err, "bad size \""));
  }
  emd_config_parse_size("18446744073709551616", &v, err, sizeof(err));
  assert_string_equal(err, "bad size \"18446744073709551616\": too large");
  emd_config_parse_size("1.5MiB", &v, err, sizeof(err));
  assert_string_equal(err, "bad size \"1.5MiB\": expected a number with B, "
                      "KiB, MiB or GiB (whole numbers only)");
  emd_config_parse_size("1kB", &v, err, sizeof(err));
  assert_string_equal(err, "bad size \"1kB\": expected a number with B, KiB, "
                      "MiB or GiB (KB, MB and GB are not accepted)");
  emd_config_parse_size("1TiB", &v, err, sizeof(err));
  assert_string_equal(err, "bad size \"1TiB\": expected a number with B, "
                      "KiB, MiB or GiB");
  emd_config_parse_size("", &v, err, sizeof(err));
  assert_string_equal(err, "bad size \"\": expected a number with B, KiB, "
                      "MiB or GiB");
  /* no err buffer: still refused, nothing written */
  assert_int_equal(emd_config_parse_size("x", &v, NULL, 0), EMD_ECONFIG);
}

static void duration_parser_requires_a_unit(void **state)
{
  static const struct { const char *s; uint64_t want; } ok[] = {
    { "0ms", 0 }, { "1ms", 1 }, { "5s", 5000 }, { "5 s", 5000 },
    { "3m", 180000 }, { "2h", 7200000 }, { "1d", 86400000 },
    { "18446744073709551615ms", UINT64_MAX },
  };
  static const char *const bad[] = {
    "", "5", "0", "1.5s", "-1s", "+1s", "5x", "5S", "5 ", "s", "1h30m",
    "5  s", "1 d ", "18446744073709551616ms", "999999999999d", " 5s",
    "5sec", "5min",
  };
  char err[256];
  uint64_t v;

  (void)state;
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    v = 42;
    if (emd_config_parse_duration(ok[i].s, &v, err, sizeof(err)) != 0)
      fail_msg("\"%s\": %s", ok[i].s, err);
    assert_int_equal(v, ok[i].want);
  }
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    v = 42;
    if (emd_config_parse_duration(bad[i], &v, err, sizeof(err)) !=
        EMD_ECONFIG)
      fail_msg("\"%s\" was accepted", bad[i]);
    assert_int_equal(v, 42);
    assert_non_null(strstr(err, "bad duration \""));
  }
  emd_config_parse_duration("5", &v, err, sizeof(err));
  assert_string_equal(err, "bad duration \"5\": expected a unit ms, s, m, h "
                      "or d");
  emd_config_parse_duration("1.5s", &v, err, sizeof(err));
  assert_string_equal(err, "bad duration \"1.5s\": expected a number with "
                      "ms, s, m, h or d (whole numbers only: 1500ms, not "
                      "1.5s)");
  emd_config_parse_duration("999999999999d", &v, err, sizeof(err));
  assert_string_equal(err, "bad duration \"999999999999d\": too large");
  emd_config_parse_duration("", &v, err, sizeof(err));
  assert_string_equal(err, "bad duration \"\": expected a number with ms, s, "
                      "m, h or d");
}

/* ---- the data files for CLI tests ---- */

static void test_data_files_fail_as_their_comments_say(void **state)
{
  static const struct { const char *file, *msg; } cases[] = {
    { DATA "unknown-key.conf", ":4: [spool] sycn: unknown key" },
    { DATA "bad-duration.conf", ":5: [spool] max_age: bad duration \"5x\"" },
    { DATA "unknown-section.conf", ":3: unknown section [spol]" },
    { DATA "bad-size.conf", ":3: [spool] max_bytes: bad size \"2GB\"" },
  };
  struct emd_config c;
  char err[512], want[512];

  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    assert_int_equal(emd_config_load(&c, cases[i].file, NULL, err,
                                     sizeof(err)), EMD_ECONFIG);
    snprintf(want, sizeof(want), "%s%s", cases[i].file, cases[i].msg);
    if (strncmp(err, want, strlen(want)) != 0)
      fail_msg("%s: got \"%s\"", cases[i].file, err);
  }
  if (emd_config_load(&c, DATA "good.conf", NULL, err, sizeof(err)) != 0)
    fail_msg("%s", err);
  assert_string_equal(c.upstream.endpoint, "http://127.0.0.1:8080");
  emd_config_free(&c);
}

static void values_that_would_read_back_as_comments_are_refused(
    void **state)
{
  (void)state;
  expect_error("[agent]\nsocket=;x\n", NULL,
               "agent.conf:2: [agent] socket: a value may not start with ';' "
               "(it reads as a comment)");
}

static void raw_bytes_in_variable_names_are_not_echoed(void **state)
{
  char *const env[] = { "EMITD_SPOOL_\x05SYNC=always", NULL };
  struct emd_config c;
  char err[256];

  (void)state;
  assert_int_equal(emd_config_load(&c, "/dev/null", env, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_null(strchr(err, '\x05'));
  assert_non_null(strstr(err, "EMITD_SPOOL_?SYNC: unknown setting"));
}

static void error_buffer_is_cut_safely(void **state)
{
  struct emd_config c;
  char err[16];

  (void)state;
  memset(err, 'x', sizeof(err));
  assert_int_equal(load_text(&c, "[spol]\n", NULL, err, sizeof(err)),
                   EMD_ECONFIG);
  assert_string_equal(err, "agent.conf:1: u");
  assert_int_equal(load_text(&c, "[spol]\n", NULL, NULL, 0), EMD_ECONFIG);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(defaults_equal_the_spec_values),
    cmocka_unit_test(
      defaults_pass_validation_with_no_file_and_no_environment),
    cmocka_unit_test(example_file_loads_to_exactly_the_defaults),
    cmocka_unit_test(every_key_appears_in_the_example_with_its_default),
    cmocka_unit_test(commented_samples_in_the_example_are_valid),
    cmocka_unit_test(file_values_replace_the_defaults),
    cmocka_unit_test(later_lines_win_and_empty_values_unset_optional_keys),
    cmocka_unit_test(crlf_line_ends_indentation_and_a_bom_are_accepted),
    cmocka_unit_test(unknown_key_names_file_line_section_and_key),
    cmocka_unit_test(unknown_section_is_an_error_even_when_empty),
    cmocka_unit_test(syntax_errors_name_the_line),
    cmocka_unit_test(nul_byte_in_the_file_is_an_error),
    cmocka_unit_test(bad_duration_names_file_line_and_key),
    cmocka_unit_test(bad_size_unit_names_file_line_and_key),
    cmocka_unit_test(out_of_range_numbers_are_errors),
    cmocka_unit_test(bad_enum_values_list_the_choices),
    cmocka_unit_test(repository_provider_takes_names_and_numbers),
    cmocka_unit_test(id_lists_take_numbers_only),
    cmocka_unit_test(missing_file_fails_naming_the_path),
    cmocka_unit_test(no_path_means_the_default_file_or_defaults_alone),
    cmocka_unit_test(a_failed_load_leaves_the_struct_empty),
    cmocka_unit_test(environment_overrides_win_over_the_file),
    cmocka_unit_test(unknown_emitd_variable_is_an_error),
    cmocka_unit_test(environment_errors_name_the_variable),
    cmocka_unit_test(retry_initial_above_retry_max_is_an_error),
    cmocka_unit_test(endpoint_needs_http_and_loses_trailing_slashes),
    cmocka_unit_test(enrich_values_obey_the_event_rules),
    cmocka_unit_test(sockets_must_fit_and_differ),
    cmocka_unit_test(api_key_never_appears_in_errors_or_the_dump),
    cmocka_unit_test(api_key_file_wins_over_api_key),
    cmocka_unit_test(key_file_is_trimmed_and_errors_name_the_path),
    cmocka_unit_test(dump_loads_back_to_the_same_config),
    cmocka_unit_test(size_parser_accepts_binary_units_only),
    cmocka_unit_test(duration_parser_requires_a_unit),
    cmocka_unit_test(test_data_files_fail_as_their_comments_say),
    cmocka_unit_test(values_that_would_read_back_as_comments_are_refused),
    cmocka_unit_test(raw_bytes_in_variable_names_are_not_echoed),
    cmocka_unit_test(error_buffer_is_cut_safely),
  };

  return cmocka_run_group_tests(tests, setup, teardown);
}
