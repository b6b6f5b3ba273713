/* test_log.c: lib/emd_log.c writing into a pipe (the fd of emd_log_setup)
 * and read back: the text and JSON formats, levels, journal prefixes, one
 * line per call whatever the message holds, and emd_log_sample. JSON lines
 * are checked by a strict little parser for flat objects of strings. */
#include <ctype.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "emd_log.h"

#define TS_LEN 24           /* 2024-01-02T03:04:05.678Z */

struct fx {
  int rd, wr;               /* the pipe the log writes into */
  char buf[256 * 1024];     /* what was read back */
  size_t len;
};

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));
  int p[2];

  assert_non_null(f);
  assert_int_equal(pipe(p), 0);
  f->rd = p[0];
  f->wr = p[1];
  assert_int_equal(fcntl(f->rd, F_SETFL, O_NONBLOCK), 0);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;

  emd_log_setup(EMD_LOG_INFO, EMD_LOG_TEXT, false, 2);
  unsetenv("JOURNAL_STREAM");
  close(f->rd);
  close(f->wr);
  free(f);
  return 0;
}

/* Reads whatever the log wrote since the last call; NUL-terminated. */
static const char *drain(struct fx *f)
{
  ssize_t n;

  f->len = 0;
  while ((n = read(f->rd, f->buf + f->len, sizeof(f->buf) - 1 - f->len)) > 0)
    f->len += (size_t)n;
  f->buf[f->len] = '\0';
  return f->buf;
}

/* Exactly one line was written: returns it without its newline. */
static const char *one_line(struct fx *f)
{
  const char *s = drain(f);
  const char *nl = strchr(s, '\n');

  if (nl == NULL || (size_t)(nl - s) != f->len - 1)
    fail_msg("expected one line, got %zu bytes: %.200s", f->len, s);
  f->buf[f->len - 1] = '\0';
  return f->buf;
}

static void expect_timestamp(const char *ts)
{
  static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
  struct tm tm;
  time_t t, now = time(NULL);

  for (int i = 0; i < TS_LEN; i++) {
    if (shape[i] == 'd' ? !isdigit((unsigned char)ts[i]) : ts[i] != shape[i])
      fail_msg("timestamp %.24s: wrong at %d", ts, i);
  }
  memset(&tm, 0, sizeof(tm));
  assert_non_null(strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm));
  t = timegm(&tm);                     /* UTC */
  /* time() reads the coarse clock, which may still show the previous
   * second when the line's precise timestamp shows the next one. */
  assert_true(t <= now + 1 && now - t <= 5);
}

/* ---- a strict parser for {"key":"string",...} ----------------------- */

/* Parses a JSON string at *p into out (unescaped); false if malformed. */
static bool json_string(const char **p, char *out, size_t outlen)
{
  const char *s = *p;
  size_t n = 0;

  if (*s++ != '"')
    return false;
  while (*s != '"') {
    unsigned char c = (unsigned char)*s++;

    if (c < 0x20)
      return false;                    /* raw control bytes: not JSON */
    if (c == '\\') {
      switch (*s++) {
      case '"': c = '"'; break;
      case '\\': c = '\\'; break;
      case '/': c = '/'; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'u': {
        unsigned v = 0;

        for (int i = 0; i < 4; i++, s++) {
          if (!isxdigit((unsigned char)*s))
            return false;
          v = v * 16 + (unsigned)(isdigit((unsigned char)*s)
                                  ? *s - '0'
                                  : tolower((unsigned char)*s) - 'a' + 10);
        }
        if (v >= 0x80)
          return false;                /* not needed by these tests */
        c = (unsigned char)v;
        break;
      }
      default:
        return false;
      }
    }
    if (n + 1 >= outlen)
      return false;
    out[n++] = (char)c;
  }
  out[n] = '\0';
  *p = s + 1;
  return true;
}

struct member {
  char key[32];
  char *val;                           /* malloc'd */
};

/* Parses line as one flat object of string members into m (at most max);
 * returns how many, or -1 if it is not exactly that. */
static int json_members(const char *line, struct member *m, int max)
{
  const char *p = line;
  static char val[16384];
  int n = 0;

  if (*p++ != '{')
    return -1;
  while (*p != '}') {
    if (n > 0 && *p++ != ',')
      return -1;
    if (n == max || !json_string(&p, m[n].key, sizeof(m[n].key)) ||
        *p++ != ':' || !json_string(&p, val, sizeof(val)))
      return -1;
    m[n].val = strdup(val);
    assert_non_null(m[n].val);
    n++;
  }
  return p[1] == '\0' ? n : -1;
}

/* Checks that line is {"ts","level","module","msg"} with these values (ts
 * only in shape). */
static void expect_json(const char *line, const char *level,
                        const char *module, const char *msg)
{
  static const char *const keys[] = { "ts", "level", "module", "msg" };
  struct member m[8];
  int n = json_members(line, m, 8);

  if (n != 4)
    fail_msg("not the JSON object expected: %.300s", line);
  for (int i = 0; i < 4; i++)
    assert_string_equal(m[i].key, keys[i]);
  expect_timestamp(m[0].val);
  assert_int_equal(strlen(m[0].val), TS_LEN);
  assert_string_equal(m[1].val, level);
  assert_string_equal(m[2].val, module);
  assert_string_equal(m[3].val, msg);
  for (int i = 0; i < n; i++)
    free(m[i].val);
}

/* ---- formats ---------------------------------------------------------- */

static void text_line_is_timestamp_level_module_message(void **state)
{
  struct fx *f = *state;
  const char *line;

  emd_log_setup(EMD_LOG_DEBUG, EMD_LOG_TEXT, false, f->wr);
  emd_log(EMD_LOG_INFO, "spool", "opened %d records in %s", 3, "/var/x");
  line = one_line(f);
  expect_timestamp(line);
  assert_string_equal(line + TS_LEN,
                      " info  spool: opened 3 records in /var/x");
  emd_log(EMD_LOG_ERROR, "ingest", "boom");
  assert_string_equal(one_line(f) + TS_LEN, " error ingest: boom");
  emd_log(EMD_LOG_WARN, "forward", "slow");
  assert_string_equal(one_line(f) + TS_LEN, " warn  forward: slow");
  emd_log(EMD_LOG_DEBUG, "batch", "cut");
  assert_string_equal(one_line(f) + TS_LEN, " debug batch: cut");
}

static void json_line_is_an_object_of_ts_level_module_msg(void **state)
{
  struct fx *f = *state;

  emd_log_setup(EMD_LOG_DEBUG, EMD_LOG_JSON, false, f->wr);
  emd_log_info("spool", "opened %d records", 3);
  expect_json(one_line(f), "info", "spool", "opened 3 records");
  emd_log_error("ingest", "boom");
  expect_json(one_line(f), "error", "ingest", "boom");
  emd_log_warn("forward", "slow");
  expect_json(one_line(f), "warn", "forward", "slow");
  emd_log_debug("batch", "cut");
  expect_json(one_line(f), "debug", "batch", "cut");
}

static void json_escapes_quotes_backslashes_and_control_bytes(void **state)
{
  struct fx *f = *state;
  static const char msg[] = "say \"hi\" \\ to\tall \x01\x1f / end";

  emd_log_setup(EMD_LOG_INFO, EMD_LOG_JSON, false, f->wr);
  emd_log_info("mod\"x", "%s", msg);
  expect_json(one_line(f), "info", "mod\"x", msg);
}

static void levels_below_the_setting_are_dropped(void **state)
{
  struct fx *f = *state;
  const char *s;

  emd_log_setup(EMD_LOG_WARN, EMD_LOG_TEXT, false, f->wr);
  assert_true(emd_log_enabled(EMD_LOG_ERROR));
  assert_true(emd_log_enabled(EMD_LOG_WARN));
  assert_false(emd_log_enabled(EMD_LOG_INFO));
  assert_false(emd_log_enabled(EMD_LOG_DEBUG));
  emd_log_error("m", "one");
  emd_log_warn("m", "two");
  emd_log_info("m", "three");
  emd_log_debug("m", "four");
  s = drain(f);
  assert_non_null(strstr(s, "m: one\n"));
  assert_non_null(strstr(s, "m: two\n"));
  assert_null(strstr(s, "three"));
  assert_null(strstr(s, "four"));

  emd_log_setup(EMD_LOG_ERROR, EMD_LOG_JSON, false, f->wr);
  emd_log_warn("m", "two");
  emd_log_error("m", "one");
  expect_json(one_line(f), "error", "m", "one");

  emd_log_setup(EMD_LOG_DEBUG, EMD_LOG_TEXT, false, f->wr);
  assert_true(emd_log_enabled(EMD_LOG_DEBUG));
  emd_log_debug("m", "four");
  assert_string_equal(one_line(f) + TS_LEN, " debug m: four");
}

static void journal_text_has_priority_prefix_and_no_timestamp(void **state)
{
  struct fx *f = *state;

  emd_log_setup(EMD_LOG_DEBUG, EMD_LOG_TEXT, true, f->wr);
  emd_log_error("spool", "a");
  assert_string_equal(one_line(f), "<3>spool: a");
  emd_log_warn("spool", "b");
  assert_string_equal(one_line(f), "<4>spool: b");
  emd_log_info("spool", "c");
  assert_string_equal(one_line(f), "<6>spool: c");
  emd_log_debug("spool", "d");
  assert_string_equal(one_line(f), "<7>spool: d");
}

static void journal_json_puts_the_prefix_before_the_object(void **state)
{
  struct fx *f = *state;
  const char *line;

  emd_log_setup(EMD_LOG_INFO, EMD_LOG_JSON, true, f->wr);
  emd_log_error("spool", "a \"quoted\" thing");
  line = one_line(f);
  assert_memory_equal(line, "<3>", 3);
  expect_json(line + 3, "error", "spool", "a \"quoted\" thing");
  emd_log_info("x", "y");
  line = one_line(f);
  assert_memory_equal(line, "<6>", 3);
  expect_json(line + 3, "info", "x", "y");
}

/* ---- one call, one line ----------------------------------------------- */

static void newlines_in_a_message_never_split_the_line(void **state)
{
  struct fx *f = *state;
  static const char forged[] =
    "bad\n2024-01-01T00:00:00.000Z error spool: forged\r\nx";

  emd_log_setup(EMD_LOG_INFO, EMD_LOG_TEXT, false, f->wr);
  emd_log_info("ingest", "%s", forged);
  assert_string_equal(one_line(f) + TS_LEN,
                      " info  ingest: bad 2024-01-01T00:00:00.000Z error "
                      "spool: forged  x");
  emd_log_setup(EMD_LOG_INFO, EMD_LOG_TEXT, true, f->wr);
  emd_log_info("ingest", "%s", forged);
  assert_string_equal(one_line(f), "<6>ingest: bad 2024-01-01T00:00:00.000Z "
                      "error spool: forged  x");
  emd_log_setup(EMD_LOG_INFO, EMD_LOG_JSON, false, f->wr);
  emd_log_info("ingest", "%s", forged);
  expect_json(one_line(f), "info", "ingest",
              "bad 2024-01-01T00:00:00.000Z error spool: forged  x");
}

static void long_message_is_cut_at_4_kib_and_stays_one_line(void **state)
{
  struct fx *f = *state;
  char *big = malloc(10001), *want = malloc(4096);
  const char *line;

  assert_non_null(big);
  assert_non_null(want);
  memset(big, 'a', 10000);
  big[10000] = '\0';
  memset(want, 'a', 4095);
  want[4095] = '\0';
  emd_log_setup(EMD_LOG_INFO, EMD_LOG_TEXT, false, f->wr);
  emd_log_info("m", "%s", big);
  line = one_line(f);
  assert_string_equal(line + TS_LEN + strlen(" info  m: "), want);
  emd_log_setup(EMD_LOG_INFO, EMD_LOG_JSON, false, f->wr);
  emd_log_info("m", "%s", big);
  expect_json(one_line(f), "info", "m", want);
  /* Escaping can double the length or more: still one valid object. */
  memset(big, '"', 10000);
  emd_log_info("m", "%s", big);
  line = one_line(f);
  struct member m[8];
  int n = json_members(line, m, 8);
  if (n != 4)
    fail_msg("not a JSON object: %.200s...", line);
  assert_true(strlen(m[3].val) > 1000);
  assert_int_equal(strspn(m[3].val, "\""), strlen(m[3].val));
  for (int i = 0; i < n; i++)
    free(m[i].val);
  free(big);
  free(want);
}

/* ---- names, samples, journal detection -------------------------------- */

static void level_names_parse_and_print(void **state)
{
  static const char *const names[] = { "error", "warn", "info", "debug" };

  (void)state;
  for (int i = 0; i < 4; i++) {
    assert_int_equal(emd_log_level_parse(names[i]), i);
    assert_string_equal(emd_log_level_name((enum emd_log_level)i), names[i]);
  }
  assert_int_equal(emd_log_level_parse("warning"), -1);
  assert_int_equal(emd_log_level_parse("trace"), -1);
  assert_int_equal(emd_log_level_parse(""), -1);
  assert_string_equal(emd_log_level_name((enum emd_log_level)99), "info");
}

static void expect_sample(const void *buf, size_t len, size_t outlen,
                          const char *want)
{
  char out[64];

  assert_true(outlen <= sizeof(out));
  assert_ptr_equal(emd_log_sample(buf, len, out, outlen), out);
  assert_string_equal(out, want);
}

static void sample_replaces_non_printables_and_marks_cuts(void **state)
{
  (void)state;
  expect_sample("plain text", 10, 32, "plain text");
  expect_sample("a\nb\tc\x7f\xff\x00z", 9, 32, "a.b.c...z");
  expect_sample("\xc3\xa9t\xc3\xa9", 5, 32, "..t..");
  expect_sample("", 0, 32, "");
  /* Cut: outlen - 1 characters at most, the last three "...". */
  expect_sample("abcdefghijklmnop", 16, 11, "abcdefg...");
  /* Exactly fitting: no mark. */
  expect_sample("abcdefghij", 10, 11, "abcdefghij");
  expect_sample("abcdefghijk", 11, 11, "abcdefg...");
}

static void sample_never_writes_past_outlen(void **state)
{
  static const char src[] = "0123456789abcdefghij\x01\x02";
  char out[40];

  (void)state;
  for (size_t outlen = 0; outlen <= 24; outlen++) {
    for (size_t len = 0; len < sizeof(src); len++) {
      memset(out, '#', sizeof(out));
      emd_log_sample(src, len, out, outlen);
      for (size_t i = outlen; i < sizeof(out); i++)
        if (out[i] != '#')
          fail_msg("outlen %zu len %zu: wrote byte %zu", outlen, len, i);
      if (outlen > 0) {
        size_t n = strnlen(out, outlen);

        assert_true(n < outlen);
        assert_true(n <= len);
        /* A cut with room for the mark is marked. */
        if (len > outlen - 1 && outlen > 4)
          assert_string_equal(out + n - 3, "...");
      }
    }
  }
}

static void journal_is_detected_only_for_our_stderr(void **state)
{
  struct stat st;
  char v[64];

  (void)state;
  assert_int_equal(fstat(2, &st), 0);
  unsetenv("JOURNAL_STREAM");
  assert_false(emd_log_journal_detect());
  snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino);
  setenv("JOURNAL_STREAM", v, 1);
  assert_true(emd_log_journal_detect());
  snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino + 1);
  setenv("JOURNAL_STREAM", v, 1);
  assert_false(emd_log_journal_detect());
  setenv("JOURNAL_STREAM", "not numbers", 1);
  assert_false(emd_log_journal_detect());
  setenv("JOURNAL_STREAM", "", 1);
  assert_false(emd_log_journal_detect());
}

int main(void)
{
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(text_line_is_timestamp_level_module_message),
    T(json_line_is_an_object_of_ts_level_module_msg),
    T(json_escapes_quotes_backslashes_and_control_bytes),
    T(levels_below_the_setting_are_dropped),
    T(journal_text_has_priority_prefix_and_no_timestamp),
    T(journal_json_puts_the_prefix_before_the_object),
    T(newlines_in_a_message_never_split_the_line),
    T(long_message_is_cut_at_4_kib_and_stays_one_line),
    T(level_names_parse_and_print),
    T(sample_replaces_non_printables_and_marks_cuts),
    T(sample_never_writes_past_outlen),
    T(journal_is_detected_only_for_our_stderr),
#undef T
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
