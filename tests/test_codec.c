/* test_codec.c: lib/emd_codec.c. Every rule of SPEC 1.1 broken once, with
 * the code and the message asserted; every way a line can fail to be JSON;
 * the proto3 JSON mapping; UTF-8; email hashing; event_to_json round
 * trips; binary frames. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emd_codec.h"
#include "emd_err.h"
#include "utf8_ref.h"

#define CTX0 "{\"type\":\"type.googleapis.com/buildless.context.Build\"," \
             "\"event\":\"started\"}"

struct fx {
  struct emd_arena arena;
  struct emd_arena exact;   /* for the exact way alone (decode_n()) */
  struct emd_codec_opts opts;
  emd_event *ev;
  char msg[512];
  char line[16384];
  char rep[4096];
};

/* SHA-256("alice@example.com") */
static const uint8_t alice_sha[32] = {
  0xff, 0x8d, 0x98, 0x19, 0xfc, 0x0e, 0x12, 0xbf, 0x0d, 0x24, 0x89,
  0x2e, 0x45, 0x98, 0x7e, 0x24, 0x9a, 0x28, 0xdc, 0xe8, 0x36, 0xa8,
  0x5c, 0xad, 0x60, 0xe2, 0x8e, 0xaa, 0xa8, 0xc6, 0xd9, 0x76 };

/* snprintf that fails the test instead of truncating. */
static void sfmt(char *buf, size_t cap, const char *format, ...)
  __attribute__((format(printf, 3, 4)));

static void sfmt(char *buf, size_t cap, const char *format, ...)
{
  va_list ap;
  int n;

  va_start(ap, format);
  n = vsnprintf(buf, cap, format, ap);
  va_end(ap);
  assert_true(n >= 0 && (size_t)n < cap);
}

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));

  if (f == NULL)
    return -1;
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;

  emd_arena_free(&f->arena);
  emd_arena_free(&f->exact);
  free(f);
  return 0;
}

static void assert_same_event(const emd_event *a, const emd_event *b);

/* Every line of these tests is decoded twice: as emitd does, into f, and
 * the exact way alone (see emd__codec_decode_json_way()), which must give
 * the same code, message and event. */
static int decode_n(struct fx *f, const char *line, size_t len)
{
  char msg[sizeof(f->msg)];
  emd_event *ev;
  int rc, want;

  msg[0] = '\0';
  emd_arena_reset(&f->exact);
  want = emd__codec_decode_json_way(line, len, &f->opts, &f->exact, &ev, msg,
                                    sizeof(msg), EMD__JSON_EXACT);
  f->msg[0] = '\0';
  emd_arena_reset(&f->arena);
  rc = emd_codec_decode_json(line, len, &f->opts, &f->arena, &f->ev, f->msg,
                             sizeof(f->msg));
  if (rc != want || strcmp(f->msg, msg) != 0)
    fail_msg("%.*s\n  -> %d %s\n  the exact way: %d %s", (int)len, line, rc,
             f->msg, want, msg);
  if (rc == 0)
    assert_same_event(f->ev, ev);
  return rc;
}

/* Whether the one pass alone gives line a verdict. */
static bool one_pass_n(struct fx *f, const char *line, size_t len)
{
  emd_event *ev;
  char msg[256];

  emd_arena_reset(&f->exact);
  return emd__codec_decode_json_way(line, len, &f->opts, &f->exact, &ev, msg,
                                    sizeof(msg), EMD__JSON_ONEPASS) !=
         EMD__JSON_NO_VERDICT;
}

static bool one_pass(struct fx *f, const char *line)
{
  return one_pass_n(f, line, strlen(line));
}

static int decode(struct fx *f, const char *line)
{
  return decode_n(f, line, strlen(line));
}

/* The smallest valid bare event plus extra members. */
static const char *with(struct fx *f, const char *extra)
{
  sfmt(f->line, sizeof(f->line), "{\"context\":[" CTX0 "]%s%s}",
           extra[0] != '\0' ? "," : "", extra);
  return f->line;
}

/* n copies of unit, in f->rep. */
static const char *rep(struct fx *f, const char *unit, size_t n)
{
  size_t k, u = strlen(unit);

  assert_true(u * n < sizeof(f->rep));
  for (k = 0; k < n; k++)
    memcpy(f->rep + k * u, unit, u);
  f->rep[u * n] = '\0';
  return f->rep;
}

static void expect_ok(struct fx *f, const char *line)
{
  int rc = decode(f, line);

  if (rc != 0)
    fail_msg("%s\n  -> %d %s", line, rc, f->msg);
  assert_non_null(f->ev);
}

static void expect_err(struct fx *f, const char *line, int code,
                       const char *msg)
{
  int rc = decode(f, line);

  if (rc != code)
    fail_msg("%s\n  -> %d %s (wanted %d)", line, rc, f->msg, code);
  assert_null(f->ev);
  if (msg != NULL && strcmp(f->msg, msg) != 0)
    fail_msg("%s\n  -> \"%s\"\n  wanted \"%s\"", line, f->msg, msg);
}

static void expect_invalid(struct fx *f, const char *line, const char *msg)
{
  expect_err(f, line, EMD_EINVALID, msg);
}

static void expect_bad_json(struct fx *f, const char *line, const char *msg)
{
  expect_err(f, line, EMD_EBADJSON, msg);
}

/* The event's packed bytes, malloc'd. */
static uint8_t *packed(const emd_event *ev, size_t *len)
{
  uint8_t *buf;

  *len = protobuf_c_message_get_packed_size(&ev->base);
  buf = malloc(*len + 1);
  assert_non_null(buf);
  assert_int_equal(protobuf_c_message_pack(&ev->base, buf), *len);
  return buf;
}

static void assert_same_event(const emd_event *a, const emd_event *b)
{
  size_t na, nb;
  uint8_t *pa = packed(a, &na), *pb = packed(b, &nb);

  assert_int_equal(na, nb);
  assert_memory_equal(pa, pb, na);
  free(pa);
  free(pb);
}

/* ------------------------------------------------------------------ */
/* The shape of a line */

static void smallest_valid_line_from_spec_is_accepted(void **state)
{
  struct fx *f = *state;

  expect_ok(f, "{\"context\":[{\"type\":\"type.googleapis.com/buildless."
               "context.Build\",\"event\":\"started\"}]}");
  assert_string_equal(f->ev->collection, "");
  assert_non_null(f->ev->event);
  assert_int_equal(f->ev->event->n_context, 1);
  assert_string_equal(f->ev->event->context[0]->event, "started");
  assert_null(f->ev->event->detail);
  assert_null(f->ev->event->timing);
}

static void envelope_carries_collection_index_scope_and_event(void **state)
{
  struct fx *f = *state;

  expect_ok(f, "{\"collection\":\"builds\",\"index\":4,\"scope\":\"run-9\","
               "\"event\":{\"context\":[" CTX0 "],\"ordinal\":3}}");
  assert_string_equal(f->ev->collection, "builds");
  assert_int_equal(f->ev->index, 4);
  assert_string_equal(f->ev->scope, "run-9");
  assert_int_equal(f->ev->event->ordinal, 3);
}

static void bare_event_and_envelope_decode_to_the_same_event(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  emd_event *bare;
  const char *line = with(f, "\"id\":\"abcdefghijkl\",\"ordinal\":2");

  assert_int_equal(emd_codec_decode_json(line, strlen(line), NULL, &other,
                                         &bare, NULL, 0), 0);
  expect_ok(f, "{\"event\":{\"context\":[" CTX0 "],\"id\":\"abcdefghijkl\","
               "\"ordinal\":2}}");
  assert_same_event(bare, f->ev);
  emd_arena_free(&other);
}

static void bare_and_envelope_errors_use_the_same_event_prefix(void **state)
{
  struct fx *f = *state;

  expect_invalid(f, with(f, "\"id\":\"short\""),
                 "event.id: does not match ^[a-zA-Z0-9]{12,64}$");
  expect_invalid(f, "{\"event\":{\"context\":[" CTX0 "],\"id\":\"short\"}}",
                 "event.id: does not match ^[a-zA-Z0-9]{12,64}$");
  expect_invalid(f, with(f, "\"bogus\":1"), "event.bogus: unknown field");
  expect_invalid(f, "{\"bogus\":1,\"event\":{}}", "bogus: unknown field");
}

static void envelope_with_null_event_lacks_the_required_event(void **state)
{
  struct fx *f = *state;

  expect_invalid(f, "{\"event\":null}", "event: required");
  expect_invalid(f, "{\"collection\":\"abc\",\"event\":null}",
                 "event: required");
}

static void client_fin_is_ignored_and_upstream_keeps_it(void **state)
{
  struct fx *f = *state;
  const char *line = "{\"fin\":true,\"event\":{\"context\":[" CTX0 "]}}";

  expect_ok(f, line);
  assert_false(f->ev->fin);
  f->opts.upstream = true;
  expect_ok(f, line);
  assert_true(f->ev->fin);
}

static void valid_json_that_is_not_an_object_is_invalid(void **state)
{
  struct fx *f = *state;
  static const char *const lines[] = { "[1]", "[]", "\"x\"", "1", "-2.5e3",
                                       "true", "false", "null", " 7 " };
  size_t i;

  for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
    expect_invalid(f, lines[i], "not a JSON object");
}

/* ------------------------------------------------------------------ */
/* Not JSON: what jsmn would have let through, and the rest */

static void syntax_errors_are_bad_json_naming_the_byte(void **state)
{
  struct fx *f = *state;
  static const struct { const char *line, *msg; } cases[] = {
    { "{\"a\":1 \"b\":2}", "syntax error at byte 8" },   /* missing comma */
    { "[1 2]", "syntax error at byte 4" },
    { "[1,]", "syntax error at byte 4" },                /* trailing comma */
    { "{\"a\":1,}", "syntax error at byte 8" },
    { "[,1]", "syntax error at byte 2" },                /* leading comma */
    { "{,\"a\":1}", "syntax error at byte 2" },
    { "{\"a\":1,,\"b\":2}", "syntax error at byte 8" },  /* doubled */
    { "{\"a\"::1}", "syntax error at byte 6" },
    { "{\"a\"}", "syntax error at byte 5" },             /* no value */
    { "{\"a\":}", "syntax error at byte 6" },
    { "{\"a\" 1}", "syntax error at byte 6" },           /* no colon */
    { "{\"a\":1:2}", "syntax error at byte 7" },
    { "{:1}", "syntax error at byte 2" },
    { "{1:1}", "syntax error at byte 2" },               /* non-string key */
    { "{\"a\":[}]", "syntax error at byte 7" },          /* mismatched */
    { "{\"a\":1}}", "syntax error at byte 8" },          /* extra close */
    { "{} x", "syntax error at byte 4" },                /* garbage after */
    { "{}{}", "syntax error at byte 3" },                /* second value */
    { "{} {}", "syntax error at byte 4" },
    { "{'a':1}", "syntax error at byte 2" },             /* single quotes */
    { "\xef\xbb\xbf{}", "syntax error at byte 1" },      /* BOM */
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    expect_bad_json(f, cases[i].line, cases[i].msg);
}

static void bad_primitives_are_bad_json(void **state)
{
  struct fx *f = *state;
  static const char *const prims[] = {
    "tru", "nul", "nulll", "truex", "True", "01", "00", "-01", "1.", ".5",
    "-", "1e", "1e+", "1ee5", "1.e5", "+1", "0x10", "NaN", "Infinity",
    "-Infinity", "1_000", "--1", "1.5.2", "undefined" };
  char line[64];
  size_t i;

  for (i = 0; i < sizeof(prims) / sizeof(prims[0]); i++) {
    sfmt(line, sizeof(line), "{\"a\":%s}", prims[i]);
    expect_err(f, line, EMD_EBADJSON, NULL);
    assert_non_null(strstr(f->msg, " at byte "));
  }
}

static void good_numbers_are_json(void **state)
{
  struct fx *f = *state;
  static const char *const nums[] = { "0", "-0", "7", "-7", "0.5", "1e3",
                                      "1E+3", "1e-3", "-0.0e0", "123456789" };
  char line[128];
  size_t i;

  f->opts.ignore_unknown = true;
  for (i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
    sfmt(line, sizeof(line), "{\"x\":%s,\"context\":[" CTX0 "]}",
             nums[i]);
    expect_ok(f, line);
  }
}

static void truncated_lines_are_bad_json(void **state)
{
  struct fx *f = *state;
  static const char *const lines[] = { "", "   ", "{", "{\"a\"", "{\"a\":",
                                       "{\"a\":1", "[1,", "{\"a\":\"xy",
                                       "{\"a\":\"x\\", "{\"a\":\"\\u00",
                                       "{\"a\":[", "{\"a\":1," };
  size_t i;

  for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
    expect_err(f, lines[i], EMD_EBADJSON, NULL);
    if (strncmp(f->msg, "unexpected end at byte ", 23) != 0)
      fail_msg("%s -> %s", lines[i], f->msg);
  }
  expect_bad_json(f, "{\"a\":1", "unexpected end at byte 7");
  expect_bad_json(f, "", "unexpected end at byte 1");
}

static void a_nul_byte_anywhere_is_bad_json(void **state)
{
  struct fx *f = *state;
  const char obj[] = "{\"a\":1}\0{}";
  const char str[] = "{\"a\":\"x\0y\"}";

  assert_int_equal(decode_n(f, obj, sizeof(obj) - 1), EMD_EBADJSON);
  assert_string_equal(f->msg, "syntax error at byte 8");
  assert_int_equal(decode_n(f, str, sizeof(str) - 1), EMD_EBADJSON);
  assert_string_equal(f->msg, "control character in a string at byte 8");
}

static void raw_control_characters_and_bad_escapes_are_bad_json(void **st)
{
  struct fx *f = *st;

  expect_bad_json(f, "{\"a\":\"x\ty\"}",
                  "control character in a string at byte 8");
  expect_bad_json(f, "{\"a\x01\":1}",
                  "control character in a string at byte 4");
  expect_bad_json(f, "{\"a\":\"\\x\"}", "bad escape at byte 7");
  expect_bad_json(f, "{\"a\":\"\\u12\"}", "bad escape at byte 7");
  expect_bad_json(f, "{\"a\":\"\\u12g4\"}", "bad escape at byte 7");
  expect_bad_json(f, "{\"a\":\"\\U0041\"}", "bad escape at byte 7");
  expect_bad_json(f, "{\"a\":\"\\'\"}", "bad escape at byte 7");
}

static void deep_nesting_is_bad_json_without_recursion(void **state)
{
  struct fx *f = *state;
  char *line = malloc(200000);
  size_t n = 0, k;

  assert_non_null(line);
  f->opts.ignore_unknown = true;
  /* 100 levels in all (the top object and 99 arrays) are fine... */
  n = (size_t)sprintf(line, "{\"context\":[" CTX0 "],\"x\":");
  for (k = 0; k < 99; k++)
    line[n++] = '[';
  for (k = 0; k < 99; k++)
    line[n++] = ']';
  line[n++] = '}';
  assert_int_equal(decode_n(f, line, n), 0);
  /* ... 101 are not, nor are 100 000, quickly. */
  n = (size_t)sprintf(line, "{\"x\":");
  for (k = 0; k < 100; k++)
    line[n++] = '[';
  for (k = 0; k < 100; k++)
    line[n++] = ']';
  line[n++] = '}';
  assert_int_equal(decode_n(f, line, n), EMD_EBADJSON);
  assert_string_equal(f->msg, "nested deeper than 100 levels");
  for (n = 0; n < 100000; n++)
    line[n] = '[';
  for (; n < 200000; n++)
    line[n] = ']';
  assert_int_equal(decode_n(f, line, n), EMD_EBADJSON);
  assert_string_equal(f->msg, "nested deeper than 100 levels");
  free(line);
}

static void lines_with_many_tokens_decode_from_the_arena(void **state)
{
  struct fx *f = *state;
  char *line = malloc(1 << 20);
  size_t n, k;

  assert_non_null(line);
  f->opts.ignore_unknown = true;
  /* 50 000 tokens: several times over the stack array. */
  n = (size_t)sprintf(line, "{\"x\":[");
  for (k = 0; k < 50000; k++)
    n += (size_t)sprintf(line + n, "%s%zu", k > 0 ? "," : "", k);
  n += (size_t)sprintf(line + n, "],\"context\":[" CTX0 "],\"ordinal\":9}");
  assert_int_equal(decode_n(f, line, n), 0);
  assert_int_equal(f->ev->event->ordinal, 9);
  /* The same, broken at the very end, is still caught. */
  line[n - 1] = ',';
  assert_int_equal(decode_n(f, line, n), EMD_EBADJSON);
  free(line);
}

/* ------------------------------------------------------------------ */
/* UTF-8 */

static void invalid_utf8_is_bad_json(void **state)
{
  struct fx *f = *state;
  static const char *const bad[] = {
    "\xff", "\xfe", "\x80", "\xc3", "\xc3(", "\xc0\xaf",   /* overlong / */
    "\xc1\xbf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf",        /* overlongs */
    "\xed\xa0\x80", "\xed\xbf\xbf",                        /* surrogates */
    "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",                /* > U+10FFFF */
    "\xe2\x82", "\xf0\x9f\x98" };                          /* truncated */
  char line[64];
  size_t i;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sfmt(line, sizeof(line), "{\"user\":\"ab%s\"}", bad[i]);
    expect_bad_json(f, line, "invalid UTF-8 at byte 12");
  }
  /* In a key too, and in a subtree that would be ignored. */
  f->opts.ignore_unknown = true;
  expect_bad_json(f, "{\"\xff\":1}", "invalid UTF-8 at byte 3");
  expect_bad_json(f, "{\"x\":[\"\xc0\xaf\"]}", "invalid UTF-8 at byte 8");
}

static void unpaired_surrogate_escapes_are_bad_json(void **state)
{
  struct fx *f = *state;

  expect_bad_json(f, "{\"user\":\"\\ud800\"}", "unpaired surrogate at byte 10");
  expect_bad_json(f, "{\"user\":\"\\udc00\"}", "unpaired surrogate at byte 10");
  expect_bad_json(f, "{\"user\":\"\\ud800x\"}",
                  "unpaired surrogate at byte 10");
  expect_bad_json(f, "{\"user\":\"\\ud800\\u0041\"}",
                  "unpaired surrogate at byte 10");
  expect_bad_json(f, "{\"user\":\"\\udc00\\ud800\"}",
                  "unpaired surrogate at byte 10");
}

static void escapes_decode_to_utf8(void **state)
{
  struct fx *f = *state;

  expect_ok(f, with(f, "\"user\":\"\\ud83d\\ude00 \\u00e9\\u20ac"
                       "\\n\\t\\\"\\\\\\/\\b\\f\\r\""));
  assert_string_equal(f->ev->event->user,
                      "\xf0\x9f\x98\x80 \xc3\xa9\xe2\x82\xac\n\t\"\\/\b\f\r");
  expect_ok(f, with(f, "\"user\":\"na\xc3\xafve \xf0\x9f\x98\x80\""));
  assert_string_equal(f->ev->event->user, "na\xc3\xafve \xf0\x9f\x98\x80");
}

static void escaped_nul_is_invalid(void **state)
{
  struct fx *f = *state;

  expect_invalid(f, with(f, "\"user\":\"a\\u0000b\""),
                 "event.user: contains U+0000");
}

static void lengths_count_code_points_not_bytes(void **state)
{
  struct fx *f = *state;
  char extra[8192];

  /* 32 two-byte characters (64 bytes) fit username's 32... */
  sfmt(extra, sizeof(extra), "\"detail\":{\"user\":{\"username\":\"%s\"}}",
           rep(f, "\xc3\xa9", 32));
  expect_ok(f, with(f, extra));
  /* ... 33 do not. */
  sfmt(extra, sizeof(extra), "\"detail\":{\"user\":{\"username\":\"%s\"}}",
           rep(f, "\xc3\xa9", 33));
  expect_invalid(f, with(f, extra),
                 "event.detail.user.username: longer than 32 characters");
  /* Four-byte characters, escaped as surrogate pairs: 128 fit user. */
  sfmt(extra, sizeof(extra), "\"user\":\"%s\"",
           rep(f, "\\ud83d\\ude00", 128));
  expect_ok(f, with(f, extra));
  assert_int_equal(strlen(f->ev->event->user), 512);
  sfmt(extra, sizeof(extra), "\"user\":\"%s\"",
           rep(f, "\xf0\x9f\x98\x80", 129));
  expect_invalid(f, with(f, extra),
                 "event.user: longer than 128 characters");
}

/* ------------------------------------------------------------------ */
/* SPEC 1.1, rule by rule */

struct rule_case {
  const char *extra;   /* members added to the smallest valid event */
  const char *msg;     /* NULL: accepted */
};

static void check_cases(struct fx *f, const struct rule_case *c, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++) {
    if (c[i].msg == NULL)
      expect_ok(f, with(f, c[i].extra));
    else
      expect_invalid(f, with(f, c[i].extra), c[i].msg);
  }
}

#define CHECK_CASES(f, c) check_cases(f, c, sizeof(c) / sizeof(c[0]))

static void collection_must_match_its_pattern(void **state)
{
  struct fx *f = *state;
  static const char *const bad[] = { "ab", "abc1", "ab cd", "ab-cd",
    "abcdefghijklmnopqrstuvwxyzABCDEFG", "\xc3\xa9t\xc3\xa9" };
  char line[256];
  size_t i;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sfmt(line, sizeof(line), "{\"collection\":\"%s\",\"event\":"
             "{\"context\":[" CTX0 "]}}", bad[i]);
    expect_invalid(f, line, "collection: does not match ^[a-zA-Z]{3,32}$");
  }
  expect_ok(f, "{\"collection\":\"abc\",\"event\":{\"context\":[" CTX0 "]}}");
  expect_ok(f, "{\"collection\":\"abcdefghijklmnopqrstuvwxyzABCDEF\","
               "\"event\":{\"context\":[" CTX0 "]}}");
}

#define ID_BAD "event.id: does not match ^[a-zA-Z0-9]{12,64}$"
#define HEX64 "0123456789abcdef0123456789abcdef" \
              "0123456789abcdef0123456789abcdef"

static void event_id_must_match_its_pattern(void **state)
{
  static const struct rule_case c[] = {
    { "\"id\":\"abcdefghijk\"", ID_BAD },
    { "\"id\":\"abcdefghijk-\"", ID_BAD },
    { "\"id\":\"01JD8X3QZK4M2N5P7R9T1V3W5Y \"", ID_BAD },
    { "\"id\":\"" HEX64 "X\"", ID_BAD },
    { "\"id\":\"abcdefghijkl\"", NULL },
    { "\"id\":\"" HEX64 "\"", NULL },
    { "\"id\":\"\"", NULL },   /* emitd fills an empty id */
  };

  CHECK_CASES(*state, c);
}

#define TENANT_BAD "event.tenant: does not match ^org_[a-zA-Z0-9]{3,32}$"
#define S33 "abcdefghijklmnopqrstuvwxyz0123456"   /* 33 characters */
#define S32 "abcdefghijklmnopqrstuvwxyz012345"    /* 32 characters */

static void tenant_user_and_scope_follow_their_rules(void **state)
{
  static const struct rule_case c[] = {
    { "\"tenant\":\"acme\"", TENANT_BAD },
    { "\"tenant\":\"org_ab\"", TENANT_BAD },
    { "\"tenant\":\"org_abc_d\"", TENANT_BAD },
    { "\"tenant\":\"org_" S33 "\"", TENANT_BAD },
    { "\"tenant\":\"org_abc\"", NULL },
    { "\"scope\":\"x\"", "event.scope: set by the service only" },
  };
  struct fx *f = *state;
  char extra[512];

  CHECK_CASES(f, c);
  sfmt(extra, sizeof(extra), "\"user\":\"%s\"", rep(f, "u", 128));
  expect_ok(f, with(f, extra));
  sfmt(extra, sizeof(extra), "\"user\":\"%s\"", rep(f, "u", 129));
  expect_invalid(f, with(f, extra), "event.user: longer than 128 characters");
}

static void context_must_have_one_to_ten_items(void **state)
{
  struct fx *f = *state;
  char line[4096];

  expect_invalid(f, "{}", "event.context: required, 1 to 10 items");
  expect_invalid(f, "{\"context\":[]}",
                 "event.context: required, 1 to 10 items");
  expect_invalid(f, "{\"context\":null}",
                 "event.context: required, 1 to 10 items");
  sfmt(line, sizeof(line), "{\"context\":[%s" CTX0 "]}",
           rep(f, CTX0 ",", 9));
  expect_ok(f, line);
  assert_int_equal(f->ev->event->n_context, 10);
  sfmt(line, sizeof(line), "{\"context\":[%s" CTX0 "]}",
           rep(f, CTX0 ",", 10));
  expect_invalid(f, line, "event.context: more than 10 items");
}

/* A bare event with one context item given as its members. */
static const char *ctx(struct fx *f, const char *members)
{
  sfmt(f->line, sizeof(f->line), "{\"context\":[" CTX0 ",{%s}]}",
           members);
  return f->line;
}

#define TYPE_OK "\"type\":\"type.googleapis.com/buildless.context.Test\""
#define TYPE_PAT "^type.googleapis.com/buildless.context.[a-zA-Z.0-9]*$"

static void context_type_is_required_and_matches_its_pattern(void **state)
{
  struct fx *f = *state;
  static const char *const bad[] = {
    "type.googleapis.com/buildless.other.Build",
    "type.googleapis.com/buildless.context.Build-1",
    "type.googleapis.com/buildless.context.Build\\n",
    "type.googleapis.com/buildless.context.B\xc3\xa9",
    "xtype.googleapis.com/buildless.context.Build",
    "type.googleapis.com/buildless.context",
    "type\\ngoogleapis.com/buildless.context.X",
  };
  char members[256];
  size_t i;

  expect_invalid(f, ctx(f, "\"event\":\"e\""),
                 "event.context[1].type: required");
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    sfmt(members, sizeof(members), "\"type\":\"%s\",\"event\":\"e\"",
             bad[i]);
    expect_invalid(f, ctx(f, members),
                   "event.context[1].type: does not match " TYPE_PAT);
  }
  /* The pattern's dots are unescaped: any one character matches them,
   * as it does for the service. The class after the last one may be
   * empty. */
  expect_ok(f, ctx(f, "\"type\":\"type_googleapis\xc3\xa9" "com/buildless"
                      "+context/\",\"event\":\"e\""));
  expect_ok(f, ctx(f, "\"type\":\"type.googleapis.com/buildless.context."
                      "a.B.9\",\"event\":\"e\""));
  /* 64 characters fit; 65 match the pattern but are too long. */
  sfmt(members, sizeof(members), "\"type\":\"type.googleapis.com/"
           "buildless.context.%s\",\"event\":\"e\"", rep(f, "A", 26));
  expect_ok(f, ctx(f, members));
  sfmt(members, sizeof(members), "\"type\":\"type.googleapis.com/"
           "buildless.context.%s\",\"event\":\"e\"", rep(f, "A", 27));
  expect_invalid(f, ctx(f, members),
                 "event.context[1].type: longer than 64 characters");
}

#define RESOURCE_BAD \
  "event.context[1].resource: does not match ^[a-zA-Z]{3,12}::[a-zA-Z0-9]*"

static void context_resource_action_and_event_follow_rules(void **state)
{
  struct fx *f = *state;
  static const struct { const char *members, *msg; } c[] = {
    { TYPE_OK ",\"resource\":\"ab::x\",\"event\":\"e\"",
      RESOURCE_BAD },
    { TYPE_OK ",\"resource\":\"abcdefghijklm::x\",\"event\":\"e\"",
      RESOURCE_BAD },
    { TYPE_OK ",\"resource\":\"repo:x\",\"event\":\"e\"",
      RESOURCE_BAD },
    { TYPE_OK ",\"resource\":\"1repo::x\",\"event\":\"e\"",
      RESOURCE_BAD },
    /* Not anchored at the end: only the prefix is constrained. */
    { TYPE_OK ",\"resource\":\"repo::\",\"event\":\"e\"", NULL },
    { TYPE_OK ",\"resource\":\"abcdefghijkl::x/y z!\",\"event\":\"e\"", NULL },
    { TYPE_OK ",\"action\":\"build\",\"event\":\"e\"",
      "event.context[1].action: only allowed together with resource" },
    { TYPE_OK ",\"resource\":\"repo::x\",\"action\":\"build\",\"event\":\"e\"",
      NULL },
    { TYPE_OK, "event.context[1].event: required" },
    { TYPE_OK ",\"event\":\"\"", "event.context[1].event: required" },
  };
  char members[512];
  size_t i;

  for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
    if (c[i].msg == NULL)
      expect_ok(f, ctx(f, c[i].members));
    else
      expect_invalid(f, ctx(f, c[i].members), c[i].msg);
  }
  sfmt(members, sizeof(members), TYPE_OK ",\"resource\":\"repo::%s\","
           "\"event\":\"e\"", rep(f, "x", 122));
  expect_ok(f, ctx(f, members));
  sfmt(members, sizeof(members), TYPE_OK ",\"resource\":\"repo::%s\","
           "\"event\":\"e\"", rep(f, "x", 123));
  expect_invalid(f, ctx(f, members),
                 "event.context[1].resource: longer than 128 characters");
  sfmt(members, sizeof(members), TYPE_OK ",\"resource\":\"repo::x\","
           "\"action\":\"%s\",\"event\":\"e\"", rep(f, "a", 33));
  expect_invalid(f, ctx(f, members),
                 "event.context[1].action: longer than 32 characters");
  sfmt(members, sizeof(members), TYPE_OK ",\"event\":\"%s\"",
           rep(f, "e", 64));
  expect_ok(f, ctx(f, members));
  sfmt(members, sizeof(members), TYPE_OK ",\"event\":\"%s\"",
           rep(f, "e", 65));
  expect_invalid(f, ctx(f, members),
                 "event.context[1].event: longer than 64 characters");
}

static void detail_tenant_and_user_follow_rules(void **state)
{
  static const struct rule_case c[] = {
    { "\"detail\":{\"tenant\":{\"oid\":5,\"name\":\"1abc\"}}",
      "event.detail.tenant.name: does not match ^[a-zA-Z][a-zA-Z0-9_-]{2,32}" },
    { "\"detail\":{\"tenant\":{\"name\":\"ab\"}}",
      "event.detail.tenant.name: does not match ^[a-zA-Z][a-zA-Z0-9_-]{2,32}" },
    { "\"detail\":{\"tenant\":{\"name\":\"a b\"}}",
      "event.detail.tenant.name: does not match ^[a-zA-Z][a-zA-Z0-9_-]{2,32}" },
    { "\"detail\":{\"tenant\":{\"name\":\"a_-\"}}", NULL },
    { "\"detail\":{\"tenant\":{\"name\":\"abc def!\"}}", NULL },   /* prefix */
    { "\"detail\":{\"tenant\":{\"name\":\"" S33 "\"}}",
      "event.detail.tenant.name: longer than 32 characters" },
    { "\"detail\":{\"user\":{\"email\":\"AAECAwQFBgcICQoLDA0ODw==\"}}",
      "event.detail.user.email: neither an address nor 32 bytes (a SHA-256)" },
    { "\"detail\":{\"user\":{\"username\":\"" S33 "\"}}",
      "event.detail.user.username: longer than 32 characters" },
    { "\"detail\":{\"user\":{\"username\":\"" S32 "\"}}",
      NULL },
  };
  struct fx *f = *state;
  char extra[512];

  CHECK_CASES(f, c);
  sfmt(extra, sizeof(extra), "\"detail\":{\"user\":{\"uid\":\"%s\"}}",
           rep(f, "u", 128));
  expect_ok(f, with(f, extra));
  sfmt(extra, sizeof(extra), "\"detail\":{\"user\":{\"uid\":\"%s\"}}",
           rep(f, "u", 129));
  expect_invalid(f, with(f, extra),
                 "event.detail.user.uid: longer than 128 characters");
}

#define PROVIDER "event.detail.repository.provider: "

static void detail_repository_follows_rules(void **state)
{
  static const struct rule_case c[] = {
    { "\"detail\":{\"repository\":{\"provider\":\"GITHUB\"}}", NULL },
    { "\"detail\":{\"repository\":{\"provider\":1}}", NULL },
    { "\"detail\":{\"repository\":{\"provider\":\"NO_REPOSITORY_PROVIDER\"}}",
      NULL },
    { "\"detail\":{\"repository\":{\"provider\":\"GITLAB\"}}",
      PROVIDER "unknown RepositoryProvider name: \"GITLAB\"" },
    { "\"detail\":{\"repository\":{\"provider\":\"github\"}}",
      PROVIDER "unknown RepositoryProvider name: \"github\"" },
    { "\"detail\":{\"repository\":{\"provider\":2}}",
      PROVIDER "not a defined RepositoryProvider: 2" },
    { "\"detail\":{\"repository\":{\"provider\":-1}}",
      PROVIDER "not a defined RepositoryProvider: -1" },
    { "\"detail\":{\"repository\":{\"provider\":1.5}}",
      PROVIDER "not an enum number: 1.5" },
    { "\"detail\":{\"repository\":{\"provider\":true}}",
      PROVIDER "expected an enum name or number" },
    { "\"detail\":{\"repository\":{\"provider\":{}}}",
      PROVIDER "expected an enum name or number" },
    { "\"detail\":{\"repository\":{\"provider\":4294967297}}",
      PROVIDER "not an enum number: 4294967297" },
    { "\"detail\":{\"repository\":{\"link\":\"https://h.com/w?x=1#top\"}}",
      NULL },
    { "\"detail\":{\"repository\":{\"link\":\"git+ssh://git@host/a%20b\"}}",
      NULL },
    { "\"detail\":{\"repository\":{\"link\":\"github.com/acme\"}}",
      "event.detail.repository.link: not a URI" },
    { "\"detail\":{\"repository\":{\"link\":\"https://host/a b\"}}",
      "event.detail.repository.link: not a URI" },
    { "\"detail\":{\"repository\":{\"link\":\"https://host/%zz\"}}",
      "event.detail.repository.link: not a URI" },
    { "\"detail\":{\"repository\":{\"link\":\"https://h/#a#b\"}}",
      "event.detail.repository.link: not a URI" },
    { "\"detail\":{\"repository\":{\"link\":\"1http://h\"}}",
      "event.detail.repository.link: not a URI" },
    { "\"detail\":{\"repository\":{\"link\":\"https://h/\xc3\xa9\"}}",
      "event.detail.repository.link: not a URI" },
    { "\"detail\":{\"repository\":{\"name\":\"" S33 "\"}}",
      "event.detail.repository.name: longer than 32 characters" },
  };

  CHECK_CASES(*state, c);
}

static void os_family_and_arch_take_defined_values_only(void **state)
{
  static const struct rule_case c[] = {
    { "\"detail\":{\"client\":{\"os\":{\"family\":\"LINUX\","
      "\"arch\":\"ARM\"}}}",
      NULL },
    { "\"detail\":{\"client\":{\"os\":{\"family\":5,\"arch\":1}}}", NULL },
    { "\"detail\":{\"client\":{\"os\":{\"family\":6}}}",
      "event.detail.client.os.family: not a defined OSFamily: 6" },
    { "\"detail\":{\"client\":{\"os\":{\"family\":\"BEOS\"}}}",
      "event.detail.client.os.family: unknown OSFamily name: \"BEOS\"" },
    { "\"detail\":{\"client\":{\"os\":{\"arch\":3}}}",
      "event.detail.client.os.arch: not a defined ProcessorArch: 3" },
    { "\"detail\":{\"client\":{\"os\":{\"arch\":\"RISCV\"}}}",
      "event.detail.client.os.arch: unknown ProcessorArch name: \"RISCV\"" },
  };

  CHECK_CASES(*state, c);
}

static void service_only_fields_are_refused_by_name(void **state)
{
  static const struct rule_case c[] = {
    { "\"scope\":\"s\"", "event.scope: set by the service only" },
    { "\"timing\":{\"timehash\":\"h\"}",
      "event.timing.timehash: set by the service only" },
    { "\"timing\":{\"received\":1}",
      "event.timing.received: set by the service only" },
    { "\"timing\":{\"ingested\":\"1\"}",
      "event.timing.ingested: set by the service only" },
    { "\"location\":{\"sourceIp\":\"fwAAAQ==\"}",
      "event.location.sourceIp: set by the service only" },
    { "\"location\":{\"source_ip\":\"fwAAAQ==\"}",
      "event.location.sourceIp: set by the service only" },
    { "\"location\":{\"nielsen\":\"n\"}",
      "event.location.nielsen: set by the service only" },
    { "\"location\":{\"tag\":\"u33d\"}",
      "event.location.tag: set by the service only" },
    { "\"timing\":{\"occurred\":1,\"received\":0,\"timehash\":\"\"}", NULL },
  };

  CHECK_CASES(*state, c);
}

static void upstream_mode_allows_service_only_fields(void **state)
{
  struct fx *f = *state;

  f->opts.upstream = true;
  expect_ok(f, with(f, "\"scope\":\"s\",\"timing\":{\"received\":5},"
                       "\"location\":{\"sourceIp\":\"fwAAAQ==\"}"));
  assert_int_equal(f->ev->event->timing->received, 5);
  assert_int_equal(f->ev->event->location->source_ip.len, 4);
}

static void geopoint_must_be_finite_and_on_earth(void **state)
{
  static const struct rule_case c[] = {
    { "\"location\":{\"point\":{\"lat\":52.52,\"lon\":-13.405}}", NULL },
    { "\"location\":{\"point\":{\"lat\":-90,\"lon\":180}}", NULL },
    { "\"location\":{\"point\":{\"lat\":\"12.5\",\"lon\":\"-1e2\"}}", NULL },
    { "\"location\":{\"point\":{\"lat\":90.001}}",
      "event.location.point.lat: not a number from -90 to 90" },
    { "\"location\":{\"point\":{\"lon\":-180.5}}",
      "event.location.point.lon: not a number from -180 to 180" },
    { "\"location\":{\"point\":{\"lat\":\"NaN\"}}",
      "event.location.point.lat: not a number from -90 to 90" },
    { "\"location\":{\"point\":{\"lon\":\"-Infinity\"}}",
      "event.location.point.lon: not a number from -180 to 180" },
    { "\"location\":{\"point\":{\"lat\":1e400}}",
      "event.location.point.lat: not a number from -90 to 90" },
    { "\"location\":{\"point\":{\"lat\":\"north\"}}",
      "event.location.point.lat: expected a number" },
    { "\"location\":{\"point\":{\"lat\":true}}",
      "event.location.point.lat: expected a number" },
  };

  CHECK_CASES(*state, c);
}

static void timer_is_at_most_32_bytes(void **state)
{
  static const struct rule_case c[] = {
    /* 32 bytes, then 33 */
    { "\"timer\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"", NULL },
    { "\"timer\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g\"",
      "event.timer: longer than 32 bytes" },
    { "\"timer\":\"not base64!\"", "event.timer: not valid base64" },
    { "\"timer\":\"AAECA\"", "event.timer: not valid base64" },
    { "\"timer\":\"AA=A\"", "event.timer: not valid base64" },
    { "\"timer\":\"AA==AA==\"", "event.timer: not valid base64" },
    { "\"timer\":3", "event.timer: expected a base64 string" },
  };

  CHECK_CASES(*state, c);
}

static void data_type_url_needs_a_slash(void **state)
{
  static const struct rule_case c[] = {
    { "\"data\":{\"typeUrl\":\"acme.Custom\",\"value\":\"AQI=\"}",
      "event.data.typeUrl: does not contain a /" },
    { "\"data\":{}", "event.data.typeUrl: does not contain a /" },
    { "\"data\":{\"typeUrl\":\"type.googleapis.com/acme.Custom\","
      "\"value\":\"AQI=\"}", NULL },
    { "\"data\":{\"type_url\":\"x/y\"}", NULL },
    { "\"data\":{\"@type\":\"x/y\",\"value\":\"\"}", NULL },
    { "\"data\":{\"@type\":\"x/y\",\"typeUrl\":\"x/z\"}",
      "event.data.typeUrl: duplicate field" },
  };

  CHECK_CASES(*state, c);
}

/* ------------------------------------------------------------------ */
/* The one pass and the exact way (decode_n() compares them on every line) */

/* Lines as clients send them: the one pass decodes each alone. */
static void one_pass_decodes_lines_as_clients_send_them(void **state)
{
  static const char *const lines[] = {
    /* emitd-bench's kind of event */
    "{\"collection\":\"Test\",\"scope\":\"gha-5753357822\",\"event\":{\"id\":"
    "\"gGR0pilgRItjbE3XO3uRdIn5Ay\",\"context\":[{\"type\":\"type.googleapis"
    ".com/buildless.context.Test\",\"resource\":\"task::link37\",\"event\":"
    "\"finished\"}],\"detail\":{\"client\":{\"tool\":[{\"name\":\"npm\","
    "\"version\":{\"major\":10,\"minor\":2,\"micro\":4}}],\"os\":{\"name\":"
    "\"Windows\",\"family\":\"WINDOWS\",\"arch\":\"X86\"}}},\"timing\":{"
    "\"occurred\":\"1795845624777\"},\"location\":{\"point\":{\"lat\":"
    "40.7128,\"lon\":-74.006},\"country\":\"US\"}}}",
    /* fields left out where the one pass guesses which comes instead
     * (alt[]), and where it guesses wrong */
    "{\"collection\":\"Build\",\"event\":{\"id\":\"abcdefghijkl\",\"context\":"
    "[{\"type\":\"type.googleapis.com/buildless.context.Build\",\"event\":"
    "\"x\"},{\"type\":\"type.googleapis.com/buildless.context.Build\","
    "\"resource\":\"task::a\",\"event\":\"y\"}],\"detail\":{\"client\":{"
    "\"tool\":[{\"name\":\"a\",\"version\":{\"major\":1,\"micro\":2}}]}},"
    "\"location\":{\"timezone\":\"UTC\",\"country\":\"US\"},\"data\":{"
    "\"@type\":\"a/b\",\"value\":\"\"}}}",
    "{\"id\":\"abcdefghijkl\",\"tenant\":\"org_abc\",\"context\":[" CTX0 "],"
    "\"detail\":{\"user\":{\"uid\":\"u\"},\"client\":{}},\"timing\":{"
    "\"occurred\":5},\"location\":{\"point\":{\"lat\":1,\"lon\":2},"
    "\"country\":\"US\"},\"data\":{\"type_url\":\"a/b\",\"value\":\"\"}}",
    /* bare, blanks everywhere */
    " \t{ \"context\" : [ {\"type\":\"type.googleapis.com/buildless.context."
    "Build\" ,\r\n\"event\":\"started\"} , " CTX0 " ] , \"ordinal\" : 7 }\n",
    /* every type: escapes and UTF-8 in strings, integers bare and quoted,
     * enums by name and number, bytes, an address to hash, doubles for
     * strtod, Any by "@type", null, empty objects and lists */
    "{\"collection\":\"abc\",\"fin\":false,\"index\":\"4294967295\",\"event\":"
    "{\"context\":[" CTX0 ",{\"type\":\"type.googleapis.com/buildless."
    "context.X\",\"resource\":\"ab\\u0063::\\u0078\",\"action\":\"\\\"q\\\"\","
    "\"event\":\"\xc3\xa9t\xc3\xa9 \xf0\x9f\x8e\x89\"}],\"tenant\":"
    "\"org_abc\",\"user\":\"\\ud83c\\udf89\",\"detail\":{\"tenant\":{\"oid\":"
    "0,\"name\":\"acme\"},\"user\":{\"uid\":\"u\",\"email\":"
    "\" Alice@Example.com \",\"username\":null},\"repository\":{"
    "\"provider\":1,\"link\":\"https://x.test/a\"},\"client\":{\"tool\":[],"
    "\"os\":{\"family\":\"DARWIN\",\"arch\":2,\"version\":{\"release\":"
    "9223372036854775807}},\"agent\":{}}},\"timing\":{\"occurred\":0},"
    "\"location\":{\"timezone\":\"UTC\",\"point\":{\"lat\":"
    "-12.3456789012345678,\"lon\":1e2}},\"timer\":\"AQID\",\"ordinal\":"
    "4294967295,\"data\":{\"@type\":\"a/b\",\"value\":\"AQI\"}}}",
  };
  struct fx *f = *state;

  for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
    if (!one_pass(f, lines[i]))
      fail_msg("no verdict: %s", lines[i]);
    expect_ok(f, lines[i]);
  }
  assert_memory_equal(f->ev->event->detail->user->email.data, alice_sha, 32);
  assert_string_equal(f->ev->event->context[1]->event,
                      "\xc3\xa9t\xc3\xa9 \xf0\x9f\x8e\x89");
  assert_string_equal(f->ev->event->context[1]->action, "\"q\"");
  assert_int_equal(f->ev->event->timer.len, 3);
  /* A broken rule is the one pass's verdict too. */
  assert_true(one_pass(f, "{\"collection\":\"ab\",\"event\":{}}"));
  expect_invalid(f, "{\"collection\":\"ab\",\"event\":{}}",
                 "collection: does not match ^[a-zA-Z]{3,32}$");
  /* Unknown fields of every kind, ignored. */
  f->opts.ignore_unknown = true;
  assert_true(one_pass(f, with(f, "\"x\":{\"a\":[1,-2.5e3,\"s\\n\",true,"
                                  "false,null,{},[[]]]},\"y\":\"\xc3\xa9\","
                                  "\"a_very_long_unknown_key\":0")));
  expect_ok(f, f->line);
}

/* s: n copies of c, then at index bad (if below n) the text b instead of
 * its copy. */
static void fill(char *s, size_t n, char c, size_t bad, const char *b)
{
  size_t k, o = 0;

  for (k = 0; k < n; k++)
    if (k == bad)
      o += (size_t)sprintf(s + o, "%s", b);
    else
      s[o++] = c;
  s[o] = '\0';
}

/* The rules the one pass's events go through read 16 bytes at a time
 * (its strings sit in the line's padded copy): every length and every
 * place of a bad byte around those blocks gives the verdict and message
 * of the exact way, whose rules go byte by byte (decode() compares). */
static void rules_read_in_blocks_agree_with_byte_by_byte(void **state)
{
  /* and the bytes next to the ranges of letters and digits */
  static const char *const bad[] = { "-", ".", "\xc3\xa9", "0", "_", "@",
                                     "[", "`", "{", "/", ":", " " };
  static const char usual[] = "type.googleapis.com/buildless.context.";
  struct fx *f = *state;
  char s[200], line[1024];
  size_t n, k, b, ok = 0, rounds = 0;

  for (n = 0; n <= 80; n++)
    for (k = 0; k <= n; k++)
      for (b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        if (k == n && b > 0)
          continue;   /* the clean string once */
        /* event.id: ^[a-zA-Z0-9]{12,64}$ */
        fill(s, n, n % 2 ? 'a' : '7', k, bad[b]);
        sfmt(line, sizeof(line), "{\"id\":\"%s\",\"context\":[" CTX0 "]}", s);
        assert_true(one_pass(f, line));
        ok += decode(f, line) == 0;
        /* collection: ^[a-zA-Z]{3,32}$ */
        fill(s, n, n % 2 ? 'B' : 'b', k, bad[b]);
        sfmt(line, sizeof(line), "{\"collection\":\"%s\",\"event\":{"
             "\"context\":[" CTX0 "]}}", s);
        assert_true(one_pass(f, line));
        ok += decode(f, line) == 0;
        /* the context's type after its usual start, and the start with
         * one byte changed (a dot may be any character) */
        fill(s, n, n % 3 ? 'x' : '.', k, bad[b]);
        sfmt(line, sizeof(line), "{\"context\":[{\"type\":\"%s%s\",\"event\":"
             "\"e\"}]}", usual, s);
        assert_true(one_pass(f, line));
        ok += decode(f, line) == 0;
        if (n < sizeof(usual) - 1) {
          memcpy(s, usual, sizeof(usual));
          s[n] = bad[b][0] == '.' || bad[b][1] != '\0' ? 'X' : bad[b][0];
          sfmt(line, sizeof(line), "{\"context\":[{\"type\":\"%.*s\",\"event\":"
               "\"e\"}]}", (int)(k == n ? n : sizeof(usual) - 1), s);
          assert_true(one_pass(f, line));
          ok += decode(f, line) == 0;
        }
        rounds++;
      }
  /* Lengths near the limits of too_long(), in bytes and characters. */
  for (n = 20; n <= 140; n++)
    for (b = 0; b < 2; b++) {
      char a[100], e[100];
      size_t na = n % 45, ne = n % 70;   /* around 32 and 64 */

      fill(s, n, 'r', b ? n / 2 : n, "\xc3\xa9");
      fill(a, na, 'a', b ? na / 2 : na, "\xc3\xa9");
      fill(e, ne, 'e', b ? ne / 2 : ne, "\xc3\xa9");
      sfmt(line, sizeof(line), "{\"context\":[{\"type\":\"%s\",\"resource\":"
           "\"task::%s\",\"action\":\"%s\",\"event\":\"%s\"}],\"user\":"
           "\"%s\"}", usual, s, a, e, s);
      assert_true(one_pass(f, line));
      ok += decode(f, line) == 0;
    }
  assert_true(rounds > 1000);
  assert_true(ok > 100);   /* valid ones among them */
}

/* Integers given as strings are read 8 digits at a time in the one pass:
 * every length around those blocks, leading zeros, a byte that is not a
 * digit at every place (those next to '0' and '9' too), and the largest
 * values, give the exact way's verdict and value. */
static void quoted_integers_read_in_blocks_agree(void **state)
{
  static const char *const bad[] = { "/", ":", "x", ".", "e", "-", " ",
                                     "\xc3\xa9" };
  static const char *const big[] = {
    "4294967295", "4294967296", "18446744073709551615",
    "18446744073709551616", "9999999999999999999", "10000000000000000000",
    "0000000000000000001", "0", "00", "01" };
  struct fx *f = *state;
  char s[64], t[64], line[512];
  size_t n, k, b, i, ok = 0;

  for (n = 0; n <= 22; n++)
    for (k = 0; k <= n; k++)
      for (b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        if (k == n && b > 0)
          continue;
        for (i = 0; i < n; i++)
          t[i] = (char)('1' + (i * 7 + n) % 9);
        t[n] = '\0';
        if (k < n)
          sfmt(s, sizeof(s), "%.*s%s%s", (int)k, t, bad[b], t + k + 1);
        else
          memcpy(s, t, n + 1);
        sfmt(line, sizeof(line), "{\"context\":[" CTX0 "],\"timing\":{"
             "\"occurred\":\"%s\"},\"ordinal\":\"%.*s\"}", s,
             (int)(n % 11), s);
        if (k == n && n >= 1 && n <= 19 && n % 11 != 0 && n % 11 < 10)
          assert_true(one_pass(f, line));
        ok += decode(f, line) == 0;
      }
  for (i = 0; i < sizeof(big) / sizeof(big[0]); i++)
    for (b = 0; b < 2; b++) {
      sfmt(line, sizeof(line), b ? "{\"context\":[" CTX0 "],\"ordinal\":"
           "\"%s\"}" : "{\"context\":[" CTX0 "],\"timing\":{\"occurred\":"
           "\"%s\"}}", big[i]);
      ok += decode(f, line) == 0;
    }
  assert_true(ok > 20);
  expect_ok(f, "{\"context\":[" CTX0 "],\"timing\":{\"occurred\":"
               "\"18446744073709551615\"}}");
  assert_true(f->ev->event->timing->occurred == UINT64_MAX);
  expect_ok(f, "{\"context\":[" CTX0 "],\"timing\":{\"occurred\":"
               "\"1732761600123\"}}");
  assert_true(f->ev->event->timing->occurred == 1732761600123ull);
}

/* Every error, and the forms the one pass does not take, go the exact
 * way: the same verdicts, in the same order, as without the one pass. */
static void one_pass_leaves_errors_and_rare_forms_to_the_exact_way(
  void **state)
{
  static const struct {
    const char *line;
    int rc;
    const char *msg;
  } cases[] = {
    /* A wrong type before a syntax error: the syntax error is first. */
    { "{\"collection\":1,\"event\":{}", EMD_EBADJSON,
      "unexpected end at byte 27" },
    { "{\"ordinal\":\"x\",\"context\":[],}", EMD_EBADJSON,
      "syntax error at byte 29" },
    { "{\"context\":[" CTX0 "],\"ordinal\":1.0}", 0, NULL },
    { "{\"context\":[" CTX0 "],\"ordinal\":-0}", 0, NULL },
    { "{\"context\":[" CTX0 "],\"ordinal\":\"1e1\"}", 0, NULL },
    { "{\"context\":[" CTX0 "],\"ordinal\":1.5}", EMD_EINVALID,
      "event.ordinal: not an integer" },
    { "{\"\\u0063ontext\":[" CTX0 "]}", 0, NULL },
    { "{\"context\":[" CTX0 "],\"location\":{\"point\":{\"lat\":\"NaN\"}}}",
      EMD_EINVALID, "event.location.point.lat: not a number from -90 to 90" },
    { "{\"context\":[" CTX0 "],\"detail\":{\"client\":{\"os\":{\"family\":"
      "-1}}}}", EMD_EINVALID, "event.detail.client.os.family: not a defined "
      "OSFamily: -1" },
    { "{\"context\":[" CTX0 "," CTX0 "," CTX0 "," CTX0 "," CTX0 "," CTX0 ","
      CTX0 "," CTX0 "," CTX0 "," CTX0 "," CTX0 "," CTX0 "," CTX0 "," CTX0 ","
      CTX0 "," CTX0 "," CTX0 "]}", EMD_EINVALID,
      "event.context: more than 10 items" },
    { "{\"context\":[" CTX0 "],\"user\":\"a\\u0000b\"}", EMD_EINVALID,
      "event.user: contains U+0000" },
    { "{\"context\":[" CTX0 "],\"ordinal\":1,\"ordinal\":1}", EMD_EINVALID,
      "event.ordinal: duplicate field" },
    { "[]", EMD_EINVALID, "not a JSON object" },
  };
  struct fx *f = *state;

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    size_t n = strlen(cases[i].line);
    emd_event *ev;
    char msg[64];
    int rc;

    emd_arena_reset(&f->exact);
    rc = emd__codec_decode_json_way(cases[i].line, n, &f->opts, &f->exact,
                                    &ev, msg, sizeof(msg),
                                    EMD__JSON_ONEPASS);
    if (rc != EMD__JSON_NO_VERDICT)
      fail_msg("one pass, %d: %s", rc, cases[i].line);
    rc = decode_n(f, cases[i].line, n);
    if (rc != cases[i].rc ||
        (cases[i].msg != NULL && strcmp(f->msg, cases[i].msg) != 0))
      fail_msg("%s\n  -> %d %s", cases[i].line, rc, f->msg);
  }
  /* A NUL after the object (the one pass's own scans stop at one). */
  sfmt(f->line, sizeof(f->line), "{\"context\":[" CTX0 "]}");
  assert_true(one_pass_n(f, f->line, strlen(f->line)));
  assert_false(one_pass_n(f, f->line, strlen(f->line) + 1));
  assert_int_equal(decode_n(f, f->line, strlen(f->line) + 1), EMD_EBADJSON);
  assert_string_equal(f->msg, "syntax error at byte 87");
  /* ... and in a key, where it is not the padding of a shorter name. */
  memcpy(f->line, "{\"context\":[{\"type\0\0\":\"t\"}]}", 28);
  assert_int_equal(decode_n(f, f->line, 28), EMD_EBADJSON);
  assert_string_equal(f->msg, "control character in a string at byte 19");
  /* Envelope or bare is the whole object's affair, not its first key's. */
  f->opts.ignore_unknown = true;
  /* An unknown value nested deeper than the one pass goes (but within
   * JSON_MAX_DEPTH). */
  sfmt(f->line, sizeof(f->line), "{\"x\":%s", rep(f, "[", 90));
  sfmt(f->line + strlen(f->line), sizeof(f->line) - strlen(f->line),
       "%s,\"context\":[" CTX0 "]}", rep(f, "]", 90));
  assert_false(one_pass(f, f->line));
  expect_ok(f, f->line);
  sfmt(f->line, sizeof(f->line), "{\"x\":%s", rep(f, "[", 50));
  sfmt(f->line + strlen(f->line), sizeof(f->line) - strlen(f->line),
       "%s,\"context\":[" CTX0 "]}", rep(f, "]", 50));
  assert_true(one_pass(f, f->line));
  expect_ok(f, f->line);
  expect_ok(f, "{\"collection\":\"abc\",\"context\":[" CTX0 "]}");
  assert_string_equal(f->ev->collection, "");
  expect_ok(f, "{\"context\":[],\"event\":{\"context\":[" CTX0 "]}}");
  assert_int_equal(f->ev->event->n_context, 1);
}

/* ------------------------------------------------------------------ */
/* The proto3 JSON mapping */

static void both_field_name_spellings_are_accepted(void **state)
{
  struct fx *f = *state;

  f->opts.upstream = true;
  expect_ok(f, with(f, "\"location\":{\"source_ip\":\"AQI=\"},"
                       "\"data\":{\"type_url\":\"a/b\"}"));
  assert_int_equal(f->ev->event->location->source_ip.len, 2);
  assert_string_equal(f->ev->event->data->type_url, "a/b");
  expect_ok(f, with(f, "\"location\":{\"sourceIp\":\"AQI=\"},"
                       "\"data\":{\"typeUrl\":\"a/c\"}"));
  assert_int_equal(f->ev->event->location->source_ip.len, 2);
  assert_string_equal(f->ev->event->data->type_url, "a/c");
  expect_ok(f, with(f, "\"data\":{\"@type\":\"a/d\"}"));
  assert_string_equal(f->ev->event->data->type_url, "a/d");
  /* A mixed spelling is neither. */
  expect_invalid(f, with(f, "\"data\":{\"type_Url\":\"a/b\"}"),
                 "event.data.type_Url: unknown field");
  expect_invalid(f, with(f, "\"data\":{\"typeurl\":\"a/b\"}"),
                 "event.data.typeurl: unknown field");
}

static void duplicate_keys_are_invalid_in_either_spelling(void **state)
{
  struct fx *f = *state;

  expect_invalid(f, with(f, "\"ordinal\":1,\"ordinal\":2"),
                 "event.ordinal: duplicate field");
  expect_invalid(f, with(f, "\"user\":null,\"user\":\"x\""),
                 "event.user: duplicate field");
  expect_invalid(f, "{\"context\":[" CTX0 "],\"context\":[" CTX0 "]}",
                 "event.context: duplicate field");
  f->opts.upstream = true;
  expect_invalid(f, with(f, "\"location\":{\"sourceIp\":\"\","
                            "\"source_ip\":\"\"}"),
                 "event.location.sourceIp: duplicate field");
}

/* lowerCamelCase of a proto field name, as protobuf's ToJsonName. */
static void to_camel(const char *name, char *out)
{
  bool up = false;

  for (; *name != '\0'; name++) {
    if (*name == '_') {
      up = true;
      continue;
    }
    *out++ = up && *name >= 'a' && *name <= 'z' ? (char)(*name - 32) : *name;
    up = false;
  }
  *out = '\0';
}

/* Every field of desc, reached by pre ... post at path, is found by
 * either of its names (and Any's type URL by "@type" too), shows in
 * messages under its own name, and a name one letter longer is unknown;
 * then the same for the messages inside. */
static void check_field_names(struct fx *f,
                              const ProtobufCMessageDescriptor *desc,
                              const char *pre, const char *post,
                              const char *path, int *checked)
{
  char cm[64], want[256], line[1024], npre[768], npost[256], npath[256];
  const char *names[3];
  size_t n, a, b;

  for (unsigned i = 0; i < desc->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &desc->fields[i];
    bool rep = fd->label == PROTOBUF_C_LABEL_REPEATED;

    to_camel(fd->name, cm);
    n = 0;
    names[n++] = fd->name;
    if (strcmp(cm, fd->name) != 0)
      names[n++] = cm;
    if (desc == &google__protobuf__any__descriptor && fd->id == 1)
      names[n++] = "@type";
    sfmt(want, sizeof(want), "%s%s%s: duplicate field", path,
         path[0] != '\0' ? "." : "", cm);
    for (a = 0; a < n && strstr(pre, names[a]) == NULL; a++) {
      /* the one pass's tables know it too */
      sfmt(line, sizeof(line), "%s\"%s\":null%s", pre, names[a], post);
      if (!one_pass(f, line))
        fail_msg("no verdict: %s", line);
    }
    for (a = 0; a < n; a++)
      for (b = 0; b < n; b++) {
        sfmt(line, sizeof(line), "%s\"%s\":null,\"%s\":null%s", pre,
             names[a], names[b], post);
        expect_invalid(f, line, want);
        (*checked)++;
      }
    sfmt(line, sizeof(line), "%s\"%sx\":null%s", pre, cm, post);
    sfmt(want, sizeof(want), "%s%s%sx: unknown field", path,
         path[0] != '\0' ? "." : "", cm);
    expect_invalid(f, line, want);
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (desc == &buildless__service__v1__event__descriptor) {
      /* The envelope's event: the filler "event":{} of pre is it. */
      sfmt(npre, sizeof(npre), "{\"event\":{");
      sfmt(npost, sizeof(npost), "}}");
    } else {
      sfmt(npre, sizeof(npre), "%s\"%s\":%s{", pre, cm, rep ? "[" : "");
      sfmt(npost, sizeof(npost), "}%s%s", rep ? "]" : "", post);
    }
    sfmt(npath, sizeof(npath), "%s%s%s%s", path, path[0] != '\0' ? "." : "",
         cm, rep ? "[0]" : "");
    check_field_names(f, fd->descriptor, npre, npost, npath, checked);
  }
}

static void field_names_resolve_in_both_spellings(void **state)
{
  struct fx *f = *state;
  int checked = 0;

  /* The envelope's own fields: its "event" member makes it one. */
  check_field_names(f, &buildless__service__v1__event__descriptor,
                    "{\"event\":{},", "}", "", &checked);
  assert_true(checked > 70);
  f->opts.upstream = true;   /* service-only fields are names too */
  checked = 0;
  check_field_names(f, &buildless__service__v1__event__descriptor,
                    "{\"event\":{},", "}", "", &checked);
  assert_true(checked > 70);
}

static void escaped_keys_name_fields(void **state)
{
  struct fx *f = *state;

  expect_ok(f, "{\"\\u0063ontext\":[" CTX0 "],\"ordi\\u006eal\":4}");
  assert_int_equal(f->ev->event->ordinal, 4);
  expect_ok(f, "{\"\\u0065vent\":{\"context\":[" CTX0 "]},"
               "\"collection\":\"abc\"}");
  assert_string_equal(f->ev->collection, "abc");
}

static void enums_decode_by_name_or_number(void **state)
{
  struct fx *f = *state;
  const Buildless__Telemetry__OSInfo *os;

  expect_ok(f, with(f, "\"detail\":{\"client\":{\"os\":{\"family\":"
                       "\"DARWIN\",\"arch\":2}},\"repository\":{\"provider\":"
                       "\"\\u0047ITHUB\"}}"));
  os = f->ev->event->detail->client->os;
  assert_int_equal(os->family, BUILDLESS__TELEMETRY__OSFAMILY__DARWIN);
  assert_int_equal(os->arch, BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM);
  assert_int_equal(f->ev->event->detail->repository->provider,
                   BUILDLESS__TELEMETRY__REPOSITORY_PROVIDER__GITHUB);
  expect_ok(f, with(f, "\"detail\":{\"client\":{\"os\":{\"family\":4,"
                       "\"arch\":\"X86\"}}}"));
  os = f->ev->event->detail->client->os;
  assert_int_equal(os->family, BUILDLESS__TELEMETRY__OSFAMILY__WINDOWS);
  assert_int_equal(os->arch, BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86);
}

static void integers_decode_from_numbers_and_strings(void **state)
{
  struct fx *f = *state;
  const Buildless__Telemetry__VersionInfo *v;

  expect_ok(f, with(f, "\"ordinal\":\"4294967295\",\"timing\":{\"occurred\":"
                       "\"1732761600123\"},\"detail\":{\"client\":{\"agent\":"
                       "{\"version\":{\"major\":1e2,\"minor\":\"25\","
                       "\"micro\":1.0,\"release\":18446744073709551615}}}}"));
  assert_int_equal(f->ev->event->ordinal, 4294967295u);
  assert_int_equal(f->ev->event->timing->occurred, 1732761600123ull);
  v = f->ev->event->detail->client->agent->version;
  assert_int_equal(v->major, 100);
  assert_int_equal(v->minor, 25);
  assert_int_equal(v->micro, 1);
  assert_true(v->release == UINT64_MAX);
  expect_ok(f, with(f, "\"timing\":{\"occurred\":1732761600123},"
                       "\"ordinal\":-0"));
  assert_int_equal(f->ev->event->timing->occurred, 1732761600123ull);
  assert_int_equal(f->ev->event->ordinal, 0);
  expect_ok(f, with(f, "\"ordinal\":12.5e1"));
  assert_int_equal(f->ev->event->ordinal, 125);
}

/* Doubles read exactly as strtod reads them, bit for bit, both on the
 * short path (up to 19 digits, exponent within 22) and past it. */
static void doubles_decode_as_strtod_does(void **state)
{
  static const char *const nums[] = {
    "0", "-0", "0.0", "-0.0", "1", "-1", "52.52", "-74.006", "13.405",
    "0.1", "0.2", "0.3", "-121.8863", "139.6503", "1e22", "1e23", "-1e-22",
    "1e-23", "9007199254740992", "9007199254740993", "9007199254740991.5",
    "1234567890123456789", "12345678901234567890", "0.1e1", "100e-2",
    "1.7976931348623157e308", "4.9e-324", "2.2250738585072014e-308",
    "0.000000000000000000000000000001", "123456.789e-3", "1E5", "1e+5",
    "3.141592653589793", "2.718281828459045235360287", "0e400",
    "-5e-1", "1.00000000000000011102230246251565404236316680908203125",
    "\"12.5\"", "\"-1e2\"",
  };
  struct fx *f = *state;
  double got, want;
  char line[256], plain[64];
  size_t n;

  f->opts.upstream = true;   /* no range rule: any double decodes */
  for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
    sfmt(line, sizeof(line), "{\"event\":{\"location\":{\"point\":"
         "{\"lat\":%s}}}}", nums[i]);
    expect_ok(f, line);
    got = f->ev->event->location->point->lat;
    n = strlen(nums[i]);
    if (nums[i][0] == '"') {
      memcpy(plain, nums[i] + 1, n - 2);
      plain[n - 2] = '\0';
    } else {
      memcpy(plain, nums[i], n + 1);
    }
    want = strtod(plain, NULL);
    if (memcmp(&got, &want, sizeof(got)) != 0)
      fail_msg("%s: %.17g, strtod says %.17g", nums[i], got, want);
  }
}

static void integers_out_of_range_or_fractional_are_invalid(void **state)
{
  static const struct rule_case c[] = {
    { "\"ordinal\":4294967296", "event.ordinal: out of range for uint32" },
    { "\"ordinal\":\"4294967296\"", "event.ordinal: out of range for uint32" },
    { "\"ordinal\":1e10", "event.ordinal: out of range for uint32" },
    { "\"ordinal\":-1", "event.ordinal: must not be negative" },
    { "\"ordinal\":\"-1\"", "event.ordinal: must not be negative" },
    { "\"ordinal\":1.5", "event.ordinal: not an integer" },
    { "\"ordinal\":1e-1", "event.ordinal: not an integer" },
    { "\"ordinal\":\" 1\"", "event.ordinal: expected an integer" },
    { "\"ordinal\":\"0x10\"", "event.ordinal: expected an integer" },
    { "\"ordinal\":\"\"", "event.ordinal: expected an integer" },
    { "\"ordinal\":true", "event.ordinal: expected an integer" },
    { "\"ordinal\":[1]", "event.ordinal: expected an integer" },
    { "\"timing\":{\"occurred\":18446744073709551616}",
      "event.timing.occurred: out of range for uint64" },
    { "\"timing\":{\"occurred\":\"99999999999999999999999\"}",
      "event.timing.occurred: out of range for uint64" },
    { "\"timing\":{\"occurred\":1e20}",
      "event.timing.occurred: out of range for uint64" },
    { "\"detail\":{\"tenant\":{\"oid\":-5}}",
      "event.detail.tenant.oid: must not be negative" },
  };

  CHECK_CASES(*state, c);
}

static void wrong_json_types_are_invalid(void **state)
{
  static const struct rule_case c[] = {
    { "\"id\":5", "event.id: expected a string" },
    { "\"user\":{}", "event.user: expected a string" },
    { "\"detail\":[]", "event.detail: expected an object" },
    { "\"detail\":\"x\"", "event.detail: expected an object" },
    { "\"timing\":7", "event.timing: expected an object" },
    { "\"detail\":{\"client\":{\"tool\":{}}}",
      "event.detail.client.tool: expected an array" },
    { "\"detail\":{\"client\":{\"tool\":[\"gcc\"]}}",
      "event.detail.client.tool[0]: expected an object" },
    { "\"detail\":{\"client\":{\"tool\":[{\"name\":\"a\"},null]}}",
      "event.detail.client.tool[1]: null is not allowed in a list" },
  };
  struct fx *f = *state;

  CHECK_CASES(f, c);
  expect_invalid(f, "{\"context\":{}}", "event.context: expected an array");
  expect_invalid(f, "{\"context\":[null]}",
                 "event.context[0]: null is not allowed in a list");
  expect_invalid(f, "{\"context\":[" CTX0 ",{\"type\":1}]}",
                 "event.context[1].type: expected a string");
  expect_invalid(f, "{\"fin\":\"yes\",\"event\":{}}",
                 "fin: expected true or false");
  expect_invalid(f, "{\"index\":-1,\"event\":{}}",
                 "index: must not be negative");
}

static void null_means_the_default(void **state)
{
  struct fx *f = *state;

  expect_ok(f, with(f, "\"id\":null,\"detail\":null,\"timer\":null,"
                       "\"ordinal\":null,\"location\":{\"point\":null}"));
  assert_string_equal(f->ev->event->id, "");
  assert_null(f->ev->event->detail);
  assert_int_equal(f->ev->event->timer.len, 0);
  assert_null(f->ev->event->location->point);
  expect_ok(f, "{\"collection\":null,\"fin\":null,\"index\":null,"
               "\"event\":{\"context\":[" CTX0 "]}}");
}

static void unknown_fields_are_rejected_or_ignored(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  const char *plain = "{\"context\":[" CTX0 "],\"ordinal\":3}";
  emd_event *ref;

  expect_invalid(f, with(f, "\"colour\":\"red\""),
                 "event.colour: unknown field");
  expect_invalid(f, with(f, "\"detail\":{\"user\":{\"age\":3}}"),
                 "event.detail.user.age: unknown field");
  expect_invalid(f, "{\"context\":[{\"typo\":1}]}",
                 "event.context[0].typo: unknown field");
  expect_invalid(f, "{\"envelope\":1,\"event\":{}}",
                 "envelope: unknown field");
  f->opts.ignore_unknown = true;
  expect_ok(f, "{\"colour\":{\"deep\":[1,{\"x\":[]}]},\"context\":[{"
               "\"typo\":1,\"type\":\"type.googleapis.com/buildless.context."
               "Build\",\"event\":\"started\"}],\"ordinal\":3,\"z\":null}");
  assert_int_equal(emd_codec_decode_json(plain, strlen(plain), NULL, &other,
                                         &ref, NULL, 0), 0);
  assert_same_event(ref, f->ev);
  emd_arena_free(&other);
}

static void quoted_client_text_is_cut_at_a_character_boundary(void **st)
{
  struct fx *f = *st;
  char line[512], want[256];

  /* 63 ASCII bytes, then 2-byte characters: 64 bytes would split one. */
  sfmt(line, sizeof(line), "{\"%s%s\":1}", rep(f, "k", 63),
       "\xc3\xa9\xc3\xa9\xc3\xa9");
  sfmt(want, sizeof(want), "event.%s: unknown field", rep(f, "k", 63));
  expect_invalid(f, line, want);
  sfmt(line, sizeof(line), "{\"context\":[" CTX0 "],\"detail\":{\"client\":"
       "{\"os\":{\"family\":\"%s\xe2\x82\xac\"}}}}", rep(f, "F", 62));
  sfmt(want, sizeof(want), "event.detail.client.os.family: unknown OSFamily "
       "name: \"%s\"", rep(f, "F", 62));
  expect_invalid(f, line, want);
}

static void email_address_is_trimmed_lowercased_and_hashed(void **state)
{
  struct fx *f = *state;
  uint8_t h[32];

  emd_codec_hash_email(" \tAlice@Example.COM\n", 20, h);
  assert_memory_equal(h, alice_sha, 32);
  expect_ok(f, with(f, "\"detail\":{\"user\":{\"email\":"
                       "\"  Alice@EXAMPLE.com \"}}"));
  assert_int_equal(f->ev->event->detail->user->email.len, 32);
  assert_memory_equal(f->ev->event->detail->user->email.data, alice_sha, 32);
  /* An escaped '@' is an '@'. */
  expect_ok(f, with(f, "\"detail\":{\"user\":{\"email\":"
                       "\"alice\\u0040example.com\"}}"));
  assert_memory_equal(f->ev->event->detail->user->email.data, alice_sha, 32);
}

static void long_email_address_is_hashed_in_blocks(void **state)
{
  /* SHA-256 of 300 'a' then "@example.com" */
  static const uint8_t want[32] = {
    0xd7, 0x1e, 0x10, 0x56, 0xb3, 0x3f, 0xe2, 0x49, 0xcb, 0x82, 0x96,
    0x75, 0xb3, 0x79, 0xaf, 0x27, 0xfa, 0xd9, 0x89, 0x05, 0x35, 0xe0,
    0x5a, 0xb5, 0x33, 0x5c, 0xa1, 0x19, 0x08, 0xf3, 0xb6, 0xec };
  struct fx *f = *state;
  char addr[400];
  uint8_t h[32];

  sfmt(addr, sizeof(addr), "  %s@Example.COM ", rep(f, "A", 300));
  emd_codec_hash_email(addr, strlen(addr), h);
  assert_memory_equal(h, want, 32);
}

static void email_hash_given_as_base64_is_kept(void **state)
{
  struct fx *f = *state;

  /* standard, URL-safe, with and without padding */
  static const char *const forms[] = {
    "/42YGfwOEr8NJIkuRZh+JJoo3Og2qFytYOKOqqjG2XY=",
    "/42YGfwOEr8NJIkuRZh+JJoo3Og2qFytYOKOqqjG2XY",
    "_42YGfwOEr8NJIkuRZh-JJoo3Og2qFytYOKOqqjG2XY=",
    "_42YGfwOEr8NJIkuRZh-JJoo3Og2qFytYOKOqqjG2XY" };
  char extra[256];
  size_t i;

  for (i = 0; i < 4; i++) {
    sfmt(extra, sizeof(extra), "\"detail\":{\"user\":{\"email\":\"%s\"}}",
             forms[i]);
    expect_ok(f, with(f, extra));
    assert_int_equal(f->ev->event->detail->user->email.len, 32);
    assert_memory_equal(f->ev->event->detail->user->email.data, alice_sha,
                        32);
  }
  expect_invalid(f, with(f, "\"detail\":{\"user\":{\"email\":\"alice\"}}"),
                 "event.detail.user.email: not valid base64");
}

static void base64_encodes_rfc4648_vectors(void **state)
{
  static const struct { const char *in, *out; } v[] = {
    { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
    { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" },
    { "foobar", "Zm9vYmFy" }, { "\xfb\xff", "+/8=" } };
  char out[16];
  size_t i, n;

  (void)state;
  for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    n = emd_codec_base64((const uint8_t *)v[i].in, strlen(v[i].in), out);
    assert_int_equal(n, strlen(v[i].out));
    assert_memory_equal(out, v[i].out, n);
  }
}

/* ------------------------------------------------------------------ */
/* event_to_json */

/* Every field set, service-only ones too (decoded as the upstream). */
static const char full_event[] =
  "{\"collection\":\"builds\",\"fin\":true,\"index\":3,\"scope\":\"run-42\","
  "\"event\":{\"scope\":\"svc\",\"id\":\"01JD8X3QZK4M2N5P7R9T1V3W5Y\","
  "\"tenant\":\"org_acme\",\"user\":\"al\\\"ice\\\\ \xc3\xa9\\n\\u0001\","
  "\"context\":[{\"type\":\"type.googleapis.com/buildless.context.Build\","
  "\"resource\":\"repo::acme\",\"action\":\"compile\",\"event\":\"started\"},"
  "{\"type\":\"type.googleapis.com/buildless.context.Test\",\"event\":\"ok\"}],"
  "\"detail\":{\"tenant\":{\"oid\":42,\"name\":\"acme\"},\"user\":{\"uid\":"
  "\"u-1\",\"email\":\"/42YGfwOEr8NJIkuRZh+JJoo3Og2qFytYOKOqqjG2XY=\","
  "\"username\":\"alice\"},\"repository\":{\"provider\":\"GITHUB\",\"link\":"
  "\"https://github.com/acme/widget\",\"name\":\"widget\"},\"client\":{"
  "\"tool\":[{\"name\":\"gcc\",\"version\":{\"major\":12,\"minor\":2,"
  "\"micro\":1,\"build\":\"b\",\"rc\":\"rc1\",\"commit\":\"abc\",\"tag\":"
  "\"v12\",\"spec\":\"12.2.1\",\"release\":\"18446744073709551615\"}},"
  "{\"name\":\"cmake\"}],\"os\":{\"name\":\"Linux\",\"family\":\"LINUX\","
  "\"arch\":\"X86\",\"version\":{\"major\":6}},\"agent\":{\"name\":\"emitd\","
  "\"version\":{\"minor\":1}}}},\"timing\":{\"timehash\":\"th\",\"occurred\":"
  "\"1732761600123\",\"received\":\"1732761600200\",\"ingested\":"
  "\"1732761600300\"},\"location\":{\"sourceIp\":\"fwAAAQ==\",\"timezone\":"
  "\"Europe/Berlin\",\"point\":{\"lat\":52.52,\"lon\":-0.1},\"nielsen\":"
  "\"n1\",\"locality\":\"Berlin\",\"region\":\"BE\",\"country\":\"DE\","
  "\"tag\":\"u33d\",\"edge\":\"fra1\"},\"timer\":\"AQL/\",\"ordinal\":7,"
  "\"data\":{\"typeUrl\":\"type.googleapis.com/acme.Custom\",\"value\":"
  "\"CJYB\"}}}";

static void event_to_json_writes_canonical_proto3_json(void **state)
{
  struct fx *f = *state;
  struct emd_codec_buf b = { 0 };

  f->opts.upstream = true;
  expect_ok(f, full_event);
  assert_int_equal(emd_codec_event_to_json(f->ev, &b), 0);
  /* The input was written canonically, so the output is the same text;
   * the escapes come back as JSON needs them. */
  assert_int_equal(b.len, strlen(full_event));
  assert_memory_equal(b.data, full_event, b.len);
  free(b.data);
}

static void event_to_json_round_trips_through_decode(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  struct emd_codec_opts up = { .upstream = true };
  struct emd_codec_buf b = { 0 };
  emd_event *back;
  char msg[256];

  f->opts.upstream = true;
  expect_ok(f, full_event);
  assert_int_equal(emd_codec_event_to_json(f->ev, &b), 0);
  assert_int_equal(emd_codec_decode_json(b.data, b.len, &up, &other, &back,
                                         msg, sizeof(msg)), 0);
  assert_same_event(f->ev, back);
  /* And a client's event, decoded with the client rules. */
  b.len = 0;
  f->opts.upstream = false;
  expect_ok(f, with(f, "\"detail\":{\"user\":{\"email\":\"a@b.c\"}},"
                       "\"location\":{\"point\":{\"lat\":-0.0,\"lon\":1e-300}},"
                       "\"timer\":\"_-8\""));
  assert_int_equal(emd_codec_event_to_json(f->ev, &b), 0);
  emd_arena_reset(&other);
  assert_int_equal(emd_codec_decode_json(b.data, b.len, &up, &other, &back,
                                         msg, sizeof(msg)), 0);
  assert_same_event(f->ev, back);
  free(b.data);
  emd_arena_free(&other);
}

static void event_to_json_appends_and_writes_nonfinite_doubles(void **st)
{
  struct fx *f = *st;
  struct emd_codec_buf b = { 0 };
  static const char want[] =
    "x{\"event\":{\"context\":[{\"type\":\"t/u\",\"event\":\"e\"}],"
    "\"location\":{\"point\":{\"lat\":\"NaN\",\"lon\":\"-Infinity\"}}}}";

  f->opts.upstream = true;
  expect_ok(f, "{\"context\":[{\"type\":\"t/u\",\"event\":\"e\"}],"
               "\"location\":{\"point\":{\"lat\":\"NaN\",\"lon\":"
               "\"-Infinity\"}}}");
  b.data = malloc(1);
  assert_non_null(b.data);
  b.data[0] = 'x';
  b.len = b.cap = 1;
  assert_int_equal(emd_codec_event_to_json(f->ev, &b), 0);
  assert_int_equal(b.len, strlen(want));
  assert_memory_equal(b.data, want, b.len);
  free(b.data);
}

static void event_to_json_writes_undefined_enums_as_numbers(void **state)
{
  struct fx *f = *state;
  struct emd_codec_buf b = { 0 };
  static const char line[] =
    "{\"event\":{\"context\":[{\"type\":\"t/u\",\"event\":\"e\"}],"
    "\"detail\":{\"repository\":{\"provider\":-3},\"client\":{\"os\":"
    "{\"family\":9,\"arch\":\"ARM\"}}},\"ordinal\":4294967295}}";

  f->opts.upstream = true;
  expect_ok(f, line);
  assert_int_equal(emd_codec_event_to_json(f->ev, &b), 0);
  assert_int_equal(b.len, strlen(line));
  assert_memory_equal(b.data, line, b.len);
  free(b.data);
}

/* ------------------------------------------------------------------ */
/* Binary frames */

static int frame(struct fx *f, const uint8_t *buf, size_t len)
{
  f->msg[0] = '\0';
  return emd_codec_decode_frame(buf, len, &f->opts, &f->arena, &f->ev,
                                f->msg, sizeof(f->msg));
}

static void frames_decode_like_lines(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  struct emd_codec_opts opts = { 0 };
  emd_event *ref;
  uint8_t *buf;
  size_t n;
  const char *line = "{\"collection\":\"abc\",\"fin\":true,\"event\":{"
                     "\"context\":[" CTX0 "],\"ordinal\":5}}";

  assert_int_equal(emd_codec_decode_json(line, strlen(line), &opts, &other,
                                         &ref, NULL, 0), 0);
  ref->fin = 1;   /* as a client might send it */
  buf = packed(ref, &n);
  assert_int_equal(frame(f, buf, n), 0);
  assert_false(f->ev->fin);
  assert_string_equal(f->ev->collection, "abc");
  assert_int_equal(f->ev->event->ordinal, 5);
  f->opts.upstream = true;
  assert_int_equal(frame(f, buf, n), 0);
  assert_true(f->ev->fin);
  assert_same_event(ref, f->ev);
  free(buf);
  emd_arena_free(&other);
}

static void garbage_and_truncated_frames_are_invalid(void **state)
{
  struct fx *f = *state;
  static const uint8_t garbage[] = { 0xff, 0xff, 0xff, 0xff, 0x0f };
  static const uint8_t bad_wire_type[] = { 0x0f, 0x01 };
  struct emd_arena other = { 0 };
  emd_event *ref;
  uint8_t *buf;
  size_t n;
  const char *line = with(f, "\"ordinal\":5");

  assert_int_equal(frame(f, garbage, sizeof(garbage)), EMD_EINVALID);
  assert_string_equal(f->msg, "not a valid Event message");
  assert_null(f->ev);
  assert_int_equal(frame(f, bad_wire_type, sizeof(bad_wire_type)),
                   EMD_EINVALID);
  assert_string_equal(f->msg, "not a valid Event message");
  assert_int_equal(emd_codec_decode_json(line, strlen(line), NULL, &other,
                                         &ref, NULL, 0), 0);
  buf = packed(ref, &n);
  assert_int_equal(frame(f, buf, n - 1), EMD_EINVALID);
  assert_string_equal(f->msg, "not a valid Event message");
  assert_int_equal(frame(f, buf, n / 2), EMD_EINVALID);
  assert_string_equal(f->msg, "not a valid Event message");
  /* An empty frame is an empty Event: valid protobuf, no event in it. */
  assert_int_equal(frame(f, buf, 0), EMD_EINVALID);
  assert_string_equal(f->msg, "event: required");
  free(buf);
  emd_arena_free(&other);
}

static void frames_break_rules_with_the_same_messages(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  emd_event *ref;
  uint8_t *buf;
  size_t n;
  const char *line;

  f->opts.upstream = true;
  line = with(f, "\"timing\":{\"received\":9}");
  assert_int_equal(emd_codec_decode_json(line, strlen(line), &f->opts,
                                         &other, &ref, NULL, 0), 0);
  buf = packed(ref, &n);
  f->opts.upstream = false;
  assert_int_equal(frame(f, buf, n), EMD_EINVALID);
  assert_string_equal(f->msg, "event.timing.received: set by the service only");
  free(buf);
  /* Invalid UTF-8 can only come in through a frame. */
  ref->event->timing->received = 0;
  ref->event->detail = NULL;
  ref->event->user = "ok\xc3(";
  buf = packed(ref, &n);
  assert_int_equal(frame(f, buf, n), EMD_EINVALID);
  assert_string_equal(f->msg, "event.user: not valid UTF-8");
  assert_int_equal(emd_codec_validate(ref, f->msg, sizeof(f->msg)),
                   EMD_EINVALID);
  assert_string_equal(f->msg, "event.user: not valid UTF-8");
  free(buf);
  ref->event->user = "ok";
  ref->event->context[0]->type = "type.googleapis.com/buildless.context.\xff";
  buf = packed(ref, &n);
  assert_int_equal(frame(f, buf, n), EMD_EINVALID);
  assert_string_equal(f->msg, "event.context[0].type: not valid UTF-8");
  free(buf);
  emd_arena_free(&other);
}

static void frame_email_address_is_hashed(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  emd_event *ref;
  uint8_t *buf;
  size_t n;
  const char *line = with(f, "\"detail\":{\"user\":{\"uid\":\"u\"}}");
  static char addr[] = " Alice@Example.com";

  assert_int_equal(emd_codec_decode_json(line, strlen(line), NULL, &other,
                                         &ref, NULL, 0), 0);
  ref->event->detail->user->email.data = (uint8_t *)addr;
  ref->event->detail->user->email.len = strlen(addr);
  buf = packed(ref, &n);
  assert_int_equal(frame(f, buf, n), 0);
  assert_int_equal(f->ev->event->detail->user->email.len, 32);
  assert_memory_equal(f->ev->event->detail->user->email.data, alice_sha, 32);
  free(buf);
  /* 32 bytes are a hash even with an '@' in them. */
  ref->event->detail->user->email.data =
    (uint8_t *)"0123456789@bcdef0123456789abcdef";
  ref->event->detail->user->email.len = 32;
  buf = packed(ref, &n);
  assert_int_equal(frame(f, buf, n), 0);
  assert_memory_equal(f->ev->event->detail->user->email.data,
                      "0123456789@bcdef0123456789abcdef", 32);
  free(buf);
  emd_arena_free(&other);
}

static void frame_unknown_fields_are_rejected_or_dropped(void **state)
{
  struct fx *f = *state;
  struct emd_arena other = { 0 };
  emd_event *ref;
  uint8_t *buf, *ext;
  size_t n;
  const char *line = with(f, "\"ordinal\":5");

  assert_int_equal(emd_codec_decode_json(line, strlen(line), NULL, &other,
                                         &ref, NULL, 0), 0);
  buf = packed(ref, &n);
  ext = malloc(n + 2);
  assert_non_null(ext);
  memcpy(ext, buf, n);
  ext[n] = 0x78;       /* field 15, varint */
  ext[n + 1] = 0x01;
  assert_int_equal(frame(f, ext, n + 2), EMD_EINVALID);
  assert_string_equal(f->msg, "unknown field 15");
  f->opts.ignore_unknown = true;
  assert_int_equal(frame(f, ext, n + 2), 0);
  assert_same_event(ref, f->ev);   /* dropped, not forwarded */
  free(ext);
  free(buf);
  emd_arena_free(&other);
}

/* ------------------------------------------------------------------ */
/* Frames against the decoder they had before emd_unpack: protobuf-c's
 * unpack, then the whole tree checked (the first unknown field or string
 * that is not UTF-8 in field order, named by its path), then fin, the
 * email rule and the client rules. */

struct wire {
  uint8_t p[8192];
  size_t n;
};

static void wire_varint(struct wire *w, uint64_t v)
{
  while (v >= 0x80) {
    assert_true(w->n < sizeof(w->p));
    w->p[w->n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  assert_true(w->n < sizeof(w->p));
  w->p[w->n++] = (uint8_t)v;
}

static void wire_bytes(struct wire *w, const void *p, size_t n)
{
  assert_true(w->n + n <= sizeof(w->p));
  memcpy(w->p + w->n, p, n);
  w->n += n;
}

/* A length-delimited field. */
static void wire_len(struct wire *w, uint32_t num, const void *p, size_t n)
{
  wire_varint(w, (uint64_t)num << 3 | 2);
  wire_varint(w, n);
  wire_bytes(w, p, n);
}

static void wire_str(struct wire *w, uint32_t num, const char *s)
{
  wire_len(w, num, s, strlen(s));
}

static void wire_sub(struct wire *w, uint32_t num, const struct wire *sub)
{
  wire_len(w, num, sub->p, sub->n);
}

static int frame_wire(struct fx *f, const struct wire *w)
{
  return frame(f, w->p, w->n);
}

/* path + "." + name in lowerCamelCase, into out. */
static void ref_push(char *out, size_t cap, const char *path, const char *name)
{
  size_t o;
  bool up = false;

  snprintf(out, cap, "%s%s", path, path[0] != '\0' ? "." : "");
  o = strlen(out);
  for (; *name != '\0' && o + 1 < cap; name++) {
    if (*name == '_') {
      up = true;
      continue;
    }
    out[o++] = up && *name >= 'a' && *name <= 'z' ? *name - 32 : *name;
    up = false;
  }
  out[o] = '\0';
}

static int ref_fail(char *msg, size_t msglen, const char *path,
                    const char *what)
{
  snprintf(msg, msglen, "%s%s%s", path, path[0] != '\0' ? ": " : "", what);
  return EMD_EINVALID;
}

static int ref_tree(ProtobufCMessage *m, bool strict, const char *path,
                    char *msg, size_t msglen)
{
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const ProtobufCFieldDescriptor *fd;
  char here[300], item[320], what[48];
  size_t k, n;
  unsigned i;
  int rc;

  if (m->n_unknown_fields > 0 && strict) {
    snprintf(what, sizeof(what), "unknown field %u",
             (unsigned)m->unknown_fields[0].tag);
    return ref_fail(msg, msglen, path, what);
  }
  if (!strict)
    m->n_unknown_fields = 0;
  for (i = 0; i < d->n_fields; i++) {
    fd = &d->fields[i];
    ref_push(here, sizeof(here), path, fd->name);
    n = 1;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED)
      n = *(size_t *)((char *)m + fd->quantifier_offset);
    for (k = 0; k < n; k++) {
      void *v = (char *)m + fd->offset;

      if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
        v = *(char **)v + k * sizeof(void *);
        snprintf(item, sizeof(item), "%s[%zu]", here, k);
      } else {
        snprintf(item, sizeof(item), "%s", here);
      }
      if (fd->type == PROTOBUF_C_TYPE_MESSAGE && *(void **)v != NULL) {
        rc = ref_tree(*(ProtobufCMessage **)v, strict, item, msg, msglen);
        if (rc != 0)
          return rc;
      } else if (fd->type == PROTOBUF_C_TYPE_STRING && *(char **)v != NULL &&
                 !ref_utf8(*(char **)v)) {
        return ref_fail(msg, msglen, item, "not valid UTF-8");
      }
    }
  }
  return 0;
}

static int ref_frame(const uint8_t *buf, size_t len,
                     const struct emd_codec_opts *opts, struct emd_arena *a,
                     emd_event **out, char *msg, size_t msglen)
{
  emd_event *ev;
  Buildless__Telemetry__UserDetail *u = NULL;
  uint8_t *h;
  int rc;

  *out = NULL;
  ev = (emd_event *)protobuf_c_message_unpack(
    &buildless__service__v1__event__descriptor, emd_arena_pb(a), len, buf);
  if (ev == NULL) {
    snprintf(msg, msglen, "not a valid Event message");
    return EMD_EINVALID;
  }
  rc = ref_tree(&ev->base, !opts->ignore_unknown, "", msg, msglen);
  if (rc != 0)
    return rc;
  if (!opts->upstream) {
    ev->fin = 0;
    if (ev->event != NULL && ev->event->detail != NULL)
      u = ev->event->detail->user;
    if (u != NULL && u->email.len != 32 && u->email.len > 0 &&
        memchr(u->email.data, '@', u->email.len) != NULL) {
      h = emd_arena_alloc(a, 32);
      assert_non_null(h);
      emd_codec_hash_email((const char *)u->email.data, u->email.len, h);
      u->email.data = h;
      u->email.len = 32;
    }
    rc = emd_codec_validate(ev, msg, msglen);
    if (rc != 0)
      return rc;
  }
  *out = ev;
  return 0;
}

/* decode_frame and the reference agree on w: code, message, event. */
static void frame_as_before(struct fx *f, const uint8_t *p, size_t n)
{
  struct emd_arena other = { 0 };
  emd_event *ref;
  char want[512];
  int rc, want_rc;

  want[0] = '\0';
  want_rc = ref_frame(p, n, &f->opts, &other, &ref, want, sizeof(want));
  rc = frame(f, p, n);
  if (rc != want_rc || (rc != 0 && strcmp(f->msg, want) != 0)) {
    char hex[3 * 64 + 1];
    size_t i;

    for (i = 0; i < n && i < 64; i++)
      snprintf(hex + 3 * i, 4, "%02x ", p[i]);
    fail_msg("frame %s (%zu bytes, opts %d%d): %d \"%s\", was %d \"%s\"",
             hex, n, f->opts.ignore_unknown, f->opts.upstream, rc, f->msg,
             want_rc, want);
  }
  if (rc == 0)
    assert_same_event(ref, f->ev);
  emd_arena_free(&other);
}

static void frame_errors_name_the_first_bad_field_in_field_order(void **st)
{
  struct fx *f = *st;
  struct wire ev = { .n = 0 }, te = { .n = 0 }, sub = { .n = 0 };
  struct wire loc = { .n = 0 };

  /* an unknown field deep down, named by its message's path */
  wire_varint(&sub, 7 << 3);
  wire_varint(&sub, 1);
  wire_sub(&te, 6, &sub);                      /* detail */
  wire_sub(&ev, 5, &te);
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "event.detail: unknown field 7");
  frame_as_before(f, ev.p, ev.n);
  /* the context (field 5) comes before the location (field 8) */
  ev.n = te.n = sub.n = 0;
  wire_str(&sub, 1, "type.googleapis.com/buildless.context.Build");
  wire_sub(&te, 5, &sub);
  sub.n = 0;
  wire_str(&sub, 2, "task::\xc3");             /* resource, cut short */
  wire_sub(&te, 5, &sub);
  wire_varint(&loc, 50 << 3);
  wire_varint(&loc, 1);
  wire_sub(&te, 8, &loc);
  wire_sub(&ev, 5, &te);
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "event.context[1].resource: not valid UTF-8");
  frame_as_before(f, ev.p, ev.n);
  f->opts.ignore_unknown = true;
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "event.context[1].resource: not valid UTF-8");
  frame_as_before(f, ev.p, ev.n);
  f->opts.ignore_unknown = false;
  /* a message's unknown fields before its own strings */
  wire_str(&ev, 1, "\xff");
  wire_varint(&ev, 15 << 3);
  wire_varint(&ev, 1);
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "unknown field 15");
  frame_as_before(f, ev.p, ev.n);
  f->opts.ignore_unknown = true;
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "collection: not valid UTF-8");
  frame_as_before(f, ev.p, ev.n);
}

static void frame_copies_are_merged_before_the_check(void **state)
{
  struct fx *f = *state;
  struct wire ev = { .n = 0 }, te1 = { .n = 0 }, te2 = { .n = 0 };
  struct wire c = { .n = 0 };

  wire_str(&c, 1, "type.googleapis.com/buildless.context.Build");
  wire_str(&c, 4, "started");
  wire_sub(&te1, 5, &c);
  wire_str(&te1, 4, "bad \xff");               /* user */
  wire_varint(&te1, 60 << 3);                  /* unknown */
  wire_varint(&te1, 1);
  wire_str(&te2, 4, "good");
  wire_sub(&ev, 5, &te1);
  wire_sub(&ev, 5, &te2);
  /* protobuf-c's merge drops the first copy's unknown field and user */
  assert_int_equal(frame_wire(f, &ev), 0);
  assert_string_equal(f->ev->event->user, "good");
  assert_int_equal(f->ev->event->n_context, 1);
  frame_as_before(f, ev.p, ev.n);
  /* the other way round, the bad user stays */
  ev.n = 0;
  wire_sub(&ev, 5, &te2);
  wire_sub(&ev, 5, &te1);
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "event: unknown field 60");
  frame_as_before(f, ev.p, ev.n);
  f->opts.ignore_unknown = true;
  assert_int_equal(frame_wire(f, &ev), EMD_EINVALID);
  assert_string_equal(f->msg, "event.user: not valid UTF-8");
  frame_as_before(f, ev.p, ev.n);
  /* strings end at a NUL for the check, as for everything after it */
  ev.n = 0;
  te1.n = 0;
  wire_sub(&te1, 5, &c);
  wire_len(&te1, 4, "ok\0\xff", 4);
  wire_sub(&ev, 5, &te1);
  assert_int_equal(frame_wire(f, &ev), 0);
  assert_string_equal(f->ev->event->user, "ok");
  frame_as_before(f, ev.p, ev.n);
}

static uint64_t frame_rnd(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Valid events from lines, then cut, flipped, doubled, with unknown
 * fields and strings that are not UTF-8 put in, in the three modes:
 * every code and message as before. */
static void frames_decode_as_protobuf_c_and_the_tree_check_did(void **st)
{
  static const char *const extras[] = {
    "\"ordinal\":5",
    "\"id\":\"ABCDEFGHIJKLMN\",\"tenant\":\"org_acme\",\"user\":\"al\"",
    ("\"detail\":{\"user\":{\"uid\":\"u\",\"email\":\"Al@Example.com\"},"
     "\"client\":{\"tool\":[{\"name\":\"gradle\",\"version\":{\"major\":8}},"
     "{\"name\":\"x\"}],\"os\":{\"name\":\"Linux\",\"family\":\"LINUX\"}}}"),
    ("\"timing\":{\"occurred\":\"1732761600123\"},\"location\":{\"point\":"
     "{\"lat\":1.5,\"lon\":2.5},\"country\":\"DE\"}"),
    "\"data\":{\"typeUrl\":\"a/b\",\"value\":\"AAE=\"},\"timer\":\"AAEC\"",
    "\"location\":{\"timezone\":\"Europe/Berlin\"}",
  };
  static const uint8_t junk[][4] = {
    { 0x78, 0x01 },              /* field 15, varint */
    { 0x22, 0x01, 0xff },        /* field 4 (a string), not UTF-8 */
    { 0x0a, 0x02, 0xc3, 0x28 },  /* field 1 (a string), not UTF-8 */
    { 0x2a, 0x00 },              /* field 5, an empty message */
    { 0x80, 0x00, 0x01 },        /* field 0 in two bytes, unknown */
  };
  struct fx *f = *st;
  struct emd_arena other = { 0 };
  uint64_t seed = 0x9e3779b97f4a7c15u;
  uint8_t buf[8192], *packed_ev;
  emd_event *ev;
  size_t n, len, i, k, at;
  int round;

  for (round = 0; round < 20000; round++) {
    const char *line = with(f, extras[frame_rnd(&seed) % 6]);

    emd_arena_reset(&other);
    assert_int_equal(emd_codec_decode_json(line, strlen(line), NULL,
                                           &other, &ev, NULL, 0), 0);
    if (frame_rnd(&seed) % 3 == 0)
      ev->event->user = "caf\xc3\xa9";
    if (ev->event->detail != NULL && frame_rnd(&seed) % 2 == 0) {
      /* an address, as a client may send it in a frame */
      ev->event->detail->user->email.data = (uint8_t *)" Al@Example.com";
      ev->event->detail->user->email.len = 15;
    }
    packed_ev = packed(ev, &len);
    memcpy(buf, packed_ev, len);
    free(packed_ev);
    n = len;
    for (k = frame_rnd(&seed) % 4; k > 0; k--) {
      switch (frame_rnd(&seed) % 6) {
      case 0:   /* cut */
        n = n == 0 ? 0 : frame_rnd(&seed) % n;
        break;
      case 1:   /* a bit flipped */
        if (n > 0)
          buf[frame_rnd(&seed) % n] ^= (uint8_t)(1u << frame_rnd(&seed) % 8);
        break;
      case 2:   /* twice over */
        if (2 * n <= sizeof(buf)) {
          memcpy(buf + n, buf, n);
          n *= 2;
        }
        break;
      default:  /* something put in at the end or inside */
        i = frame_rnd(&seed) % 5;
        at = frame_rnd(&seed) % 2 ? n : (n == 0 ? 0 : frame_rnd(&seed) % n);
        if (n + 4 <= sizeof(buf)) {
          size_t jl = junk[i][0] == 0x80 ? 3 : junk[i][1] + 2u;

          memmove(buf + at + jl, buf + at, n - at);
          memcpy(buf + at, junk[i], jl);
          n += jl;
        }
        break;
      }
    }
    f->opts.ignore_unknown = round % 3 == 1;
    f->opts.upstream = round % 3 == 2;
    frame_as_before(f, buf, n);
  }
  emd_arena_free(&other);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(smallest_valid_line_from_spec_is_accepted),
    T(envelope_carries_collection_index_scope_and_event),
    T(bare_event_and_envelope_decode_to_the_same_event),
    T(bare_and_envelope_errors_use_the_same_event_prefix),
    T(envelope_with_null_event_lacks_the_required_event),
    T(client_fin_is_ignored_and_upstream_keeps_it),
    T(valid_json_that_is_not_an_object_is_invalid),
    T(syntax_errors_are_bad_json_naming_the_byte),
    T(bad_primitives_are_bad_json),
    T(good_numbers_are_json),
    T(truncated_lines_are_bad_json),
    T(a_nul_byte_anywhere_is_bad_json),
    T(raw_control_characters_and_bad_escapes_are_bad_json),
    T(deep_nesting_is_bad_json_without_recursion),
    T(lines_with_many_tokens_decode_from_the_arena),
    T(invalid_utf8_is_bad_json),
    T(unpaired_surrogate_escapes_are_bad_json),
    T(escapes_decode_to_utf8),
    T(escaped_nul_is_invalid),
    T(lengths_count_code_points_not_bytes),
    T(collection_must_match_its_pattern),
    T(event_id_must_match_its_pattern),
    T(tenant_user_and_scope_follow_their_rules),
    T(context_must_have_one_to_ten_items),
    T(context_type_is_required_and_matches_its_pattern),
    T(context_resource_action_and_event_follow_rules),
    T(detail_tenant_and_user_follow_rules),
    T(detail_repository_follows_rules),
    T(os_family_and_arch_take_defined_values_only),
    T(service_only_fields_are_refused_by_name),
    T(upstream_mode_allows_service_only_fields),
    T(geopoint_must_be_finite_and_on_earth),
    T(timer_is_at_most_32_bytes),
    T(data_type_url_needs_a_slash),
    T(both_field_name_spellings_are_accepted),
    T(duplicate_keys_are_invalid_in_either_spelling),
    T(field_names_resolve_in_both_spellings),
    T(escaped_keys_name_fields),
    T(enums_decode_by_name_or_number),
    T(integers_decode_from_numbers_and_strings),
    T(integers_out_of_range_or_fractional_are_invalid),
    T(doubles_decode_as_strtod_does),
    T(wrong_json_types_are_invalid),
    T(null_means_the_default),
    T(unknown_fields_are_rejected_or_ignored),
    T(one_pass_decodes_lines_as_clients_send_them),
    T(one_pass_leaves_errors_and_rare_forms_to_the_exact_way),
    T(rules_read_in_blocks_agree_with_byte_by_byte),
    T(quoted_integers_read_in_blocks_agree),
    T(quoted_client_text_is_cut_at_a_character_boundary),
    T(email_address_is_trimmed_lowercased_and_hashed),
    T(long_email_address_is_hashed_in_blocks),
    T(email_hash_given_as_base64_is_kept),
    T(base64_encodes_rfc4648_vectors),
    T(event_to_json_writes_canonical_proto3_json),
    T(event_to_json_round_trips_through_decode),
    T(event_to_json_appends_and_writes_nonfinite_doubles),
    T(event_to_json_writes_undefined_enums_as_numbers),
    T(frames_decode_like_lines),
    T(garbage_and_truncated_frames_are_invalid),
    T(frames_break_rules_with_the_same_messages),
    T(frame_email_address_is_hashed),
    T(frame_unknown_fields_are_rejected_or_dropped),
    T(frame_errors_name_the_first_bad_field_in_field_order),
    T(frame_copies_are_merged_before_the_check),
    T(frames_decode_as_protobuf_c_and_the_tree_check_did),
#undef T
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
