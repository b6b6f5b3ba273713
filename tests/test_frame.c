/* test_frame.c: lib/emd_frame.c, the splitter of a client's byte stream
 * into lines (text mode) or length-prefixed frames (binary mode). Every
 * callback is recorded, so a test compares what the framer found with
 * what the stream holds, however the stream is cut into reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emd_frame.h"

#define MAX_EVENTS 1024

/* One callback as the framer made it. */
struct ev {
  char kind;               /* 'I' item, 'L' too_large, 'T' truncated */
  uint64_t len;            /* item: its length; too_large: its argument */
  char *data;              /* item: a copy of its bytes (malloc'd) */
};

struct rec {
  size_t n;
  struct ev ev[MAX_EVENTS];
  size_t stop_at;          /* the callback making n reach this returns 1 */
  const char *lo, *hi;     /* when set: the bytes being fed */
  size_t copied;           /* items handed out from outside [lo, hi) */
};

static int record(struct rec *r, char kind, const char *p, uint64_t len)
{
  struct ev *e;

  assert_true(r->n < MAX_EVENTS);
  e = &r->ev[r->n++];
  e->kind = kind;
  e->len = len;
  e->data = NULL;
  if (kind == 'I') {
    if (r->lo != NULL && (p < r->lo || p + len > r->hi))
      r->copied++;
    e->data = malloc(len + 1);
    assert_non_null(e->data);
    memcpy(e->data, p, len);
    e->data[len] = '\0';
  }
  return r->stop_at != 0 && r->n == r->stop_at;
}

static int on_item(void *data, const char *p, size_t n)
{
  return record(data, 'I', p, n);
}

static int on_too_large(void *data, uint64_t len)
{
  return record(data, 'L', NULL, len);
}

static int on_truncated(void *data)
{
  return record(data, 'T', NULL, 0);
}

static const struct emd_frame_ops ops = {
  .item = on_item,
  .too_large = on_too_large,
  .truncated = on_truncated,
};

static struct rec *rec_new(void)
{
  struct rec *r = calloc(1, sizeof(*r));

  assert_non_null(r);
  return r;
}

static void rec_free(struct rec *r)
{
  for (size_t i = 0; i < r->n; i++)
    free(r->ev[i].data);
  free(r);
}

static void framer_init(struct emd_framer *f, uint64_t max)
{
  memset(f, 0, sizeof(*f));
  f->max = max;
}

/* Feeds p[0..n) in pieces of step bytes (the last may be shorter); every
 * feed must return 0. */
static void feed_by(struct emd_framer *f, const char *p, size_t n,
                    size_t step, struct rec *r)
{
  for (size_t off = 0; off < n; off += step) {
    size_t k = n - off < step ? n - off : step;

    assert_int_equal(emd_frame_feed(f, p + off, k, &ops, r), 0);
  }
}

static void feed_all(struct emd_framer *f, const char *p, size_t n,
                     struct rec *r)
{
  feed_by(f, p, n, n > 0 ? n : 1, r);
}

static void expect_item(const struct rec *r, size_t i, const char *p,
                        size_t n)
{
  assert_true(i < r->n);
  if (r->ev[i].kind != 'I')
    fail_msg("event %zu: expected an item, got '%c'", i, r->ev[i].kind);
  assert_int_equal(r->ev[i].len, n);
  assert_memory_equal(r->ev[i].data, p, n);
}

static void expect_line(const struct rec *r, size_t i, const char *s)
{
  expect_item(r, i, s, strlen(s));
}

static void expect_too_large(const struct rec *r, size_t i, uint64_t len)
{
  assert_true(i < r->n);
  if (r->ev[i].kind != 'L')
    fail_msg("event %zu: expected too_large, got '%c'", i, r->ev[i].kind);
  assert_int_equal(r->ev[i].len, len);
}

static void expect_truncated(const struct rec *r, size_t i)
{
  assert_true(i < r->n);
  if (r->ev[i].kind != 'T')
    fail_msg("event %zu: expected truncated, got '%c'", i, r->ev[i].kind);
}

static void expect_same(const struct rec *a, const struct rec *b)
{
  assert_int_equal(a->n, b->n);
  for (size_t i = 0; i < a->n; i++) {
    assert_int_equal(a->ev[i].kind, b->ev[i].kind);
    assert_int_equal(a->ev[i].len, b->ev[i].len);
    if (a->ev[i].kind == 'I')
      assert_memory_equal(a->ev[i].data, b->ev[i].data, a->ev[i].len);
  }
}

/* Appends a frame (4-byte big-endian length, then the payload) to buf at
 * *len. */
static void put_frame(char *buf, size_t *len, const void *payload,
                      uint32_t n)
{
  unsigned char *d = (unsigned char *)buf + *len;

  d[0] = (unsigned char)(n >> 24);
  d[1] = (unsigned char)(n >> 16);
  d[2] = (unsigned char)(n >> 8);
  d[3] = (unsigned char)n;
  if (n > 0)
    memcpy(d + 4, payload, n);
  *len += 4 + (size_t)n;
}

/* ---- text mode ------------------------------------------------------- */

static void text_lines_split_byte_by_byte_come_out_whole(void **state)
{
  static const char s[] = "one\ntwo\n{\"a\":1}\n";
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_by(&f, s, strlen(s), 1, r);
  assert_int_equal(f.mode, EMD_FRAME_TEXT);
  assert_int_equal(r->n, 3);
  expect_line(r, 0, "one");
  expect_line(r, 1, "two");
  expect_line(r, 2, "{\"a\":1}");
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 3);
  emd_frame_free(&f);
  rec_free(r);
}

static void text_many_lines_in_one_feed_are_each_an_item(void **state)
{
  char buf[200 * 16];
  size_t len = 0;
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  for (int i = 0; i < 200; i++)
    len += (size_t)sprintf(buf + len, "line %d\n", i);
  framer_init(&f, 64);
  r->lo = buf;
  r->hi = buf + len;
  feed_all(&f, buf, len, r);
  assert_int_equal(r->n, 200);
  for (int i = 0; i < 200; i++) {
    char want[16];

    sprintf(want, "line %d", i);
    expect_line(r, (size_t)i, want);
  }
  /* Whole lines in one read are handed out in place, not copied. */
  assert_int_equal(r->copied, 0);
  assert_int_equal(f.plen, 0);
  emd_frame_free(&f);
  rec_free(r);
}

static void text_crlf_line_keeps_its_cr_for_the_caller(void **state)
{
  static const char s[] = "a\r\nbc\r\n\r\n";
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_all(&f, s, strlen(s), r);
  assert_int_equal(r->n, 3);
  expect_line(r, 0, "a\r");
  expect_line(r, 1, "bc\r");
  expect_line(r, 2, "\r");
  emd_frame_free(&f);
  rec_free(r);
}

/* Feeds s whole, then in pieces of every size, to framers of max 8, and
 * checks what each one found. */
static void check_limit_case(const char *s, const char *want_item)
{
  size_t n = strlen(s);

  for (size_t step = 1; step <= n; step++) {
    struct emd_framer f;
    struct rec *r = rec_new();

    framer_init(&f, 8);
    feed_by(&f, s, n, step, r);
    assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
    if (r->n != 2)
      fail_msg("%s in steps of %zu: %zu events", s, step, r->n);
    if (want_item != NULL)
      expect_line(r, 0, want_item);
    else
      expect_too_large(r, 0, 0);
    expect_line(r, 1, "ok");
    emd_frame_free(&f);
    rec_free(r);
  }
}

static void text_line_of_exactly_max_bytes_is_an_item(void **state)
{
  (void)state;
  check_limit_case("12345678\nok\n", "12345678");
}

static void text_line_one_byte_over_max_is_too_large(void **state)
{
  (void)state;
  check_limit_case("123456789\nok\n", NULL);
}

static void text_limit_counts_a_line_without_its_cr(void **state)
{
  (void)state;
  check_limit_case("12345678\r\nok\n", "12345678\r");
  check_limit_case("123456789\r\nok\n", NULL);
}

static void text_last_line_at_the_limit_without_newline_at_eof(void **state)
{
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 8);
  feed_all(&f, "12345678", 8, r);
  assert_int_equal(r->n, 0);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 1);
  expect_line(r, 0, "12345678");
  emd_frame_free(&f);

  /* One over: reported once, either while feeding or at eof. */
  framer_init(&f, 8);
  feed_by(&f, "123456789", 9, 1, r);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 2);
  expect_too_large(r, 1, 0);
  emd_frame_free(&f);
  rec_free(r);
}

static void text_over_long_line_is_reported_once_and_stream_goes_on(
  void **state)
{
  char s[400];
  size_t len = 0;

  (void)state;
  len += (size_t)sprintf(s + len, "before\n");
  memset(s + len, 'x', 300);
  len += 300;
  len += (size_t)sprintf(s + len, "\nafter\n");
  for (size_t step = 1; step <= len; step++) {
    struct emd_framer f;
    struct rec *r = rec_new();

    framer_init(&f, 16);
    feed_by(&f, s, len, step, r);
    assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
    if (r->n != 3)
      fail_msg("steps of %zu: %zu events", step, r->n);
    expect_line(r, 0, "before");
    expect_too_large(r, 1, 0);
    expect_line(r, 2, "after");
    /* The framer never kept more than the limit allows. */
    assert_true(f.pcap <= 1024);
    emd_frame_free(&f);
    rec_free(r);
  }
}

static void text_over_long_last_line_is_reported_once_at_eof(void **state)
{
  char s[100];
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  memset(s, 'y', sizeof(s));
  framer_init(&f, 16);
  feed_by(&f, s, sizeof(s), 7, r);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 1);
  expect_too_large(r, 0, 0);
  emd_frame_free(&f);
  rec_free(r);
}

static void text_last_line_without_newline_comes_at_eof(void **state)
{
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_all(&f, "first\nlast", 10, r);
  assert_int_equal(r->n, 1);
  expect_line(r, 0, "first");
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 2);
  expect_line(r, 1, "last");
  /* A second eof finds nothing more. */
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 2);
  emd_frame_free(&f);
  rec_free(r);
}

static void text_eof_after_a_newline_adds_nothing(void **state)
{
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_all(&f, "only\n", 5, r);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 1);
  expect_line(r, 0, "only");
  emd_frame_free(&f);
  rec_free(r);
}

static void text_blank_lines_are_items_for_the_caller_to_skip(void **state)
{
  static const char s[] = "\n\n  \t\na\n";
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_all(&f, s, strlen(s), r);
  assert_int_equal(r->n, 4);
  expect_line(r, 0, "");
  expect_line(r, 1, "");
  expect_line(r, 2, "  \t");
  expect_line(r, 3, "a");
  emd_frame_free(&f);
  rec_free(r);
}

static void text_callback_returning_non_zero_stops_the_feed(void **state)
{
  static const char s[] = "a\nb\nc\nd\n";
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  r->stop_at = 2;
  assert_int_equal(emd_frame_feed(&f, s, strlen(s), &ops, r), 1);
  assert_int_equal(r->n, 2);
  expect_line(r, 0, "a");
  expect_line(r, 1, "b");
  emd_frame_free(&f);
  rec_free(r);
}

static void text_too_large_returning_non_zero_stops_the_feed(void **state)
{
  static const char s[] = "0123456789abcdef\nb\n";
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 4);
  r->stop_at = 1;
  assert_int_equal(emd_frame_feed(&f, s, strlen(s), &ops, r), 1);
  assert_int_equal(r->n, 1);
  expect_too_large(r, 0, 0);
  emd_frame_free(&f);
  rec_free(r);
}

static void text_stays_text_when_a_nul_byte_comes_later(void **state)
{
  static const char s[] = "a\n\0\0\0\1x\n";
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_all(&f, s, sizeof(s) - 1, r);
  assert_int_equal(f.mode, EMD_FRAME_TEXT);
  assert_int_equal(r->n, 2);
  expect_line(r, 0, "a");
  expect_item(r, 1, "\0\0\0\1x", 5);
  emd_frame_free(&f);
  rec_free(r);
}

static void free_keeps_max_and_forgets_the_rest(void **state)
{
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 64);
  feed_all(&f, "unfinished", 10, r);
  assert_non_null(f.partial);
  emd_frame_free(&f);
  assert_int_equal(f.max, 64);
  assert_int_equal(f.mode, EMD_FRAME_UNKNOWN);
  assert_null(f.partial);
  assert_int_equal(f.plen, 0);
  /* Usable again, and the old line is gone. */
  feed_all(&f, "new\n", 4, r);
  assert_int_equal(r->n, 1);
  expect_line(r, 0, "new");
  emd_frame_free(&f);
  rec_free(r);
}

/* ---- binary mode ----------------------------------------------------- */

/* Three frames: "abc", an empty one, and 300 bytes of a pattern. */
static size_t three_frames(char *buf, char *big)
{
  size_t len = 0;

  for (int i = 0; i < 300; i++)
    big[i] = (char)(i * 7);
  put_frame(buf, &len, "abc", 3);
  put_frame(buf, &len, "", 0);
  put_frame(buf, &len, big, 300);
  return len;
}

static void expect_three_frames(const struct rec *r, const char *big)
{
  assert_int_equal(r->n, 3);
  expect_item(r, 0, "abc", 3);
  expect_item(r, 1, "", 0);
  expect_item(r, 2, big, 300);
}

static void binary_whole_frames_in_one_feed(void **state)
{
  char buf[512], big[300];
  size_t len = three_frames(buf, big);
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  framer_init(&f, 1024);
  r->lo = buf;
  r->hi = buf + len;
  feed_all(&f, buf, len, r);
  assert_int_equal(f.mode, EMD_FRAME_BINARY);
  expect_three_frames(r, big);
  /* Whole frames in one read are handed out in place, not copied. */
  assert_int_equal(r->copied, 0);
  assert_int_equal(f.plen, 0);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 3);
  emd_frame_free(&f);
  rec_free(r);
}

static void binary_frames_split_at_every_byte_position(void **state)
{
  char buf[512], big[300];
  size_t len = three_frames(buf, big);

  (void)state;
  for (size_t cut = 0; cut <= len; cut++) {
    struct emd_framer f;
    struct rec *r = rec_new();

    framer_init(&f, 1024);
    if (cut > 0)
      feed_all(&f, buf, cut, r);
    if (cut < len)
      feed_all(&f, buf + cut, len - cut, r);
    assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
    expect_three_frames(r, big);
    emd_frame_free(&f);
    rec_free(r);
  }
  /* And one byte at a time. */
  struct emd_framer f;
  struct rec *r = rec_new();

  framer_init(&f, 1024);
  feed_by(&f, buf, len, 1, r);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  expect_three_frames(r, big);
  emd_frame_free(&f);
  rec_free(r);
}

static void binary_zero_length_frame_is_an_empty_item(void **state)
{
  char buf[16];
  size_t len = 0;
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  put_frame(buf, &len, "", 0);
  put_frame(buf, &len, "", 0);
  framer_init(&f, 16);
  feed_by(&f, buf, len, 1, r);
  assert_int_equal(r->n, 2);
  expect_item(r, 0, "", 0);
  expect_item(r, 1, "", 0);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, 2);
  emd_frame_free(&f);
  rec_free(r);
}

static void binary_frame_at_exactly_max_is_an_item(void **state)
{
  char buf[64];
  size_t len = 0;
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  put_frame(buf, &len, "12345678", 8);
  framer_init(&f, 8);
  feed_by(&f, buf, len, 3, r);
  assert_int_equal(r->n, 1);
  expect_item(r, 0, "12345678", 8);
  emd_frame_free(&f);
  rec_free(r);
}

static void binary_over_max_frame_is_refused_and_skipped_across_feeds(
  void **state)
{
  char buf[512], big[200];
  size_t len = 0;

  (void)state;
  /* The refused payload holds what would look like frame headers. */
  memset(big, 0, sizeof(big));
  for (size_t i = 3; i < sizeof(big); i += 9)
    big[i] = 2;
  put_frame(buf, &len, "ab", 2);
  put_frame(buf, &len, big, sizeof(big));
  put_frame(buf, &len, "cd", 2);
  for (size_t cut = 0; cut <= len; cut++) {
    for (size_t step = 1; step <= 64; step *= 4) {
      struct emd_framer f;
      struct rec *r = rec_new();

      framer_init(&f, 16);
      if (cut > 0)
        feed_by(&f, buf, cut, step, r);
      if (cut < len)
        feed_by(&f, buf + cut, len - cut, step, r);
      assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
      if (r->n != 3)
        fail_msg("cut %zu step %zu: %zu events", cut, step, r->n);
      expect_item(r, 0, "ab", 2);
      expect_too_large(r, 1, sizeof(big));
      expect_item(r, 2, "cd", 2);
      /* Nothing of the refused frame was gathered. */
      assert_true(f.pcap <= 1024);
      emd_frame_free(&f);
      rec_free(r);
    }
  }
}

static void binary_too_large_returning_non_zero_stops_the_feed(void **state)
{
  char buf[128], big[40] = { 0 };
  size_t len = 0;
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  put_frame(buf, &len, big, sizeof(big));
  put_frame(buf, &len, "x", 1);
  framer_init(&f, 16);
  r->stop_at = 1;
  assert_int_equal(emd_frame_feed(&f, buf, len, &ops, r), 1);
  assert_int_equal(r->n, 1);
  expect_too_large(r, 0, sizeof(big));
  emd_frame_free(&f);
  rec_free(r);
}

static void binary_item_returning_non_zero_stops_the_feed(void **state)
{
  char buf[64];
  size_t len = 0;
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  put_frame(buf, &len, "a", 1);
  put_frame(buf, &len, "b", 1);
  put_frame(buf, &len, "c", 1);
  framer_init(&f, 16);
  r->stop_at = 2;
  assert_int_equal(emd_frame_feed(&f, buf, len, &ops, r), 1);
  assert_int_equal(r->n, 2);
  expect_item(r, 1, "b", 1);
  emd_frame_free(&f);
  rec_free(r);
}

/* Feeds the first n bytes of buf, then eof: one truncated, after items. */
static void check_truncated(const char *buf, size_t n, size_t items,
                            uint64_t max)
{
  struct emd_framer f;
  struct rec *r = rec_new();

  framer_init(&f, max);
  feed_by(&f, buf, n, 1, r);
  assert_int_equal(r->n, items);
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  if (r->n != items + 1)
    fail_msg("%zu bytes: %zu events, wanted %zu", n, r->n, items + 1);
  expect_truncated(r, items);
  /* Reported once. */
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  assert_int_equal(r->n, items + 1);
  emd_frame_free(&f);
  rec_free(r);
}

static void binary_frame_cut_by_eof_is_truncated(void **state)
{
  char buf[64];
  size_t len = 0;

  (void)state;
  put_frame(buf, &len, "ok", 2);
  put_frame(buf, &len, "payload", 7);
  /* Inside the second header, then inside its payload. */
  for (size_t n = 7; n < len; n++)
    check_truncated(buf, n, 1, 16);
  /* Inside the first header. */
  check_truncated(buf, 1, 0, 16);
  check_truncated(buf, 3, 0, 16);
}

static void binary_eof_inside_a_refused_frame_is_truncated(void **state)
{
  char buf[64] = { 0 };
  size_t len = 0;

  (void)state;
  put_frame(buf, &len, buf + 32, 20);
  check_truncated(buf, 10, 1, 8);  /* the too_large, then truncated */
}

static void binary_mode_is_decided_by_the_first_byte_only(void **state)
{
  char buf[64];
  size_t len = 0;
  struct emd_framer f;
  struct rec *r = rec_new();

  (void)state;
  /* A frame holding a newline, and a later header whose first byte is
   * not 0: both are frames. */
  put_frame(buf, &len, "{\n", 2);
  framer_init(&f, 0x7fffffff);
  feed_all(&f, buf, len, r);
  assert_int_equal(f.mode, EMD_FRAME_BINARY);
  expect_item(r, 0, "{\n", 2);
  feed_all(&f, "\x01\x00\x00\x00", 4, r);
  assert_int_equal(f.mode, EMD_FRAME_BINARY);
  assert_int_equal(r->n, 1);         /* waiting for 16 MiB of payload */
  assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
  expect_truncated(r, 1);
  emd_frame_free(&f);
  rec_free(r);
}

/* ---- whatever the reads ---------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void)
{
  /* xorshift64*: fixed seed, the same cuts on every run and libc. */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1du;
}

/* Feeds buf whole, and 200 times cut at random points, and compares. */
static void check_random_splits(const char *buf, size_t len, uint64_t max)
{
  struct emd_framer f;
  struct rec *once = rec_new();

  framer_init(&f, max);
  feed_all(&f, buf, len, once);
  assert_int_equal(emd_frame_eof(&f, &ops, once), 0);
  emd_frame_free(&f);
  assert_true(once->n > 10);
  for (int round = 0; round < 200; round++) {
    struct rec *r = rec_new();
    size_t off = 0;

    framer_init(&f, max);
    while (off < len) {
      /* Mostly short reads, sometimes long ones. */
      size_t k = (size_t)(rng_next() % (round % 2 ? 700 : 40)) + 1;

      if (k > len - off)
        k = len - off;
      assert_int_equal(emd_frame_feed(&f, buf + off, k, &ops, r), 0);
      off += k;
    }
    assert_int_equal(emd_frame_eof(&f, &ops, r), 0);
    expect_same(once, r);
    emd_frame_free(&f);
    rec_free(r);
  }
  rec_free(once);
}

static void text_random_splits_give_the_same_items_as_one_feed(void **state)
{
  char *buf = malloc(64 * 1024);
  size_t len = 0;

  (void)state;
  assert_non_null(buf);
  for (int i = 0; i < 300; i++) {
    size_t n = (size_t)(rng_next() % 90);   /* some over the limit of 64 */
    int kind = (int)(rng_next() % 4);

    for (size_t j = 0; j < n; j++)
      buf[len++] = (char)('a' + (i + j) % 26);
    if (kind == 0)
      buf[len++] = '\r';
    buf[len++] = '\n';
  }
  memcpy(buf + len, "tail", 4);           /* no newline: comes at eof */
  len += 4;
  check_random_splits(buf, len, 64);
  free(buf);
}

static void binary_random_splits_give_the_same_items_as_one_feed(
  void **state)
{
  char *buf = malloc(64 * 1024), payload[120];
  size_t len = 0;

  (void)state;
  assert_non_null(buf);
  for (int i = 0; i < 300; i++) {
    uint32_t n = (uint32_t)(rng_next() % 120);   /* some over 100 */

    for (uint32_t j = 0; j < n; j++)
      payload[j] = (char)(rng_next() & 0xff);
    put_frame(buf, &len, payload, n);
  }
  put_frame(buf, &len, payload, 50);
  len -= 20;                              /* the last one truncated */
  check_random_splits(buf, len, 100);
  free(buf);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(text_lines_split_byte_by_byte_come_out_whole),
    cmocka_unit_test(text_many_lines_in_one_feed_are_each_an_item),
    cmocka_unit_test(text_crlf_line_keeps_its_cr_for_the_caller),
    cmocka_unit_test(text_line_of_exactly_max_bytes_is_an_item),
    cmocka_unit_test(text_line_one_byte_over_max_is_too_large),
    cmocka_unit_test(text_limit_counts_a_line_without_its_cr),
    cmocka_unit_test(text_last_line_at_the_limit_without_newline_at_eof),
    cmocka_unit_test(
      text_over_long_line_is_reported_once_and_stream_goes_on),
    cmocka_unit_test(text_over_long_last_line_is_reported_once_at_eof),
    cmocka_unit_test(text_last_line_without_newline_comes_at_eof),
    cmocka_unit_test(text_eof_after_a_newline_adds_nothing),
    cmocka_unit_test(text_blank_lines_are_items_for_the_caller_to_skip),
    cmocka_unit_test(text_callback_returning_non_zero_stops_the_feed),
    cmocka_unit_test(text_too_large_returning_non_zero_stops_the_feed),
    cmocka_unit_test(text_stays_text_when_a_nul_byte_comes_later),
    cmocka_unit_test(free_keeps_max_and_forgets_the_rest),
    cmocka_unit_test(binary_whole_frames_in_one_feed),
    cmocka_unit_test(binary_frames_split_at_every_byte_position),
    cmocka_unit_test(binary_zero_length_frame_is_an_empty_item),
    cmocka_unit_test(binary_frame_at_exactly_max_is_an_item),
    cmocka_unit_test(
      binary_over_max_frame_is_refused_and_skipped_across_feeds),
    cmocka_unit_test(binary_too_large_returning_non_zero_stops_the_feed),
    cmocka_unit_test(binary_item_returning_non_zero_stops_the_feed),
    cmocka_unit_test(binary_frame_cut_by_eof_is_truncated),
    cmocka_unit_test(binary_eof_inside_a_refused_frame_is_truncated),
    cmocka_unit_test(binary_mode_is_decided_by_the_first_byte_only),
    cmocka_unit_test(text_random_splits_give_the_same_items_as_one_feed),
    cmocka_unit_test(binary_random_splits_give_the_same_items_as_one_feed),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
