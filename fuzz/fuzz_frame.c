/* fuzz_frame.c: emd_codec_decode_frame (SPEC 2's binary mode) on the input
 * as one frame payload (a serialized Event, its length prefix removed), in
 * the client's modes and in the test upstream's.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 *  - a failure returns EMD_EINVALID or -ENOMEM, *out NULL and a message;
 *  - what passes with unknown fields refused also passes, unchanged, with
 *    them ignored, and as the upstream decodes it;
 *  - an accepted event re-packed decodes again to the same event (the
 *    client rules are stable), and its JSON form reads back with
 *    opts.upstream into the same text.
 *
 * The same input is also a client's byte stream for emd_frame (binary
 * when it starts with 0x00, else lines), its limit taken from the last
 * byte. The framer must find the same lines or frames, too-large items
 * and truncation as a plain reading of the whole stream, however the
 * stream is cut into reads (whole, byte by byte, random pieces), and its
 * buffer must stay within the limit. */
#include <errno.h>

#include "emd_codec.h"
#include "emd_err.h"
#include "emd_frame.h"
#include "fuzz.h"

static struct emd_arena arena;

static void to_json(const emd_event *ev, struct emd_codec_buf *out)
{
  *out = (struct emd_codec_buf){ 0 };
  FUZZ_CHECK(emd_codec_event_to_json(ev, out) == 0, "event_to_json failed");
}

static bool same_json(const struct emd_codec_buf *a,
                      const struct emd_codec_buf *b)
{
  return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static int decode(const uint8_t *data, size_t size,
                  const struct emd_codec_opts *opts, emd_event **ev)
{
  char msg[256];
  int rc;

  msg[0] = '\0';
  rc = emd_codec_decode_frame(data, size, opts, &arena, ev, msg,
                              sizeof(msg));
  FUZZ_CHECK(rc == 0 || rc == EMD_EINVALID || rc == -ENOMEM,
             "decode_frame returned %d", rc);
  if (rc == 0) {
    FUZZ_CHECK(*ev != NULL, "decoded without an event");
    FUZZ_CHECK(opts->upstream || (!(*ev)->fin && (*ev)->event != NULL),
               "a client's fin was kept, or no event");
  } else {
    FUZZ_CHECK(*ev == NULL, "failed (%d) with *out set", rc);
    /* Not one line: it may quote client text as sent (escapes undone);
     * the ingest escapes it in the reply, the log flattens it. */
    FUZZ_CHECK(fuzz_has_msg(msg, sizeof(msg)), "failed (%d) without a "
               "message", rc);
  }
  return rc;
}

static void check_same(const emd_event *a, const emd_event *b,
                       const char *what)
{
  struct emd_codec_buf ja, jb;

  to_json(a, &ja);
  to_json(b, &jb);
  FUZZ_CHECK(same_json(&ja, &jb), "%s:\n%.*s\n%.*s", what, (int)ja.len,
             ja.data, (int)jb.len, jb.data);
  free(ja.data);
  free(jb.data);
}

/* ev re-packed must pass the client decoder again, unchanged. */
static void check_repack(const emd_event *ev)
{
  static const struct emd_codec_opts strict;
  emd_event *again;
  size_t n;
  uint8_t *buf = fuzz_pack(&ev->base, &n);

  FUZZ_CHECK(decode(buf, n, &strict, &again) == 0,
             "an accepted event, re-packed, is refused");
  FUZZ_CHECK(fuzz_same_packed(&ev->base, &again->base),
             "an accepted event changed when re-packed");
  free(buf);
}

/* Its JSON form, as the forwarder would send it, must read back. */
static void check_round_trip(const emd_event *ev)
{
  struct emd_codec_opts up = { .upstream = true };
  struct emd_codec_buf js;
  emd_event *back;
  char msg[256] = "";
  int rc;

  /* Without Event.event, to_json writes no "event" member, and the line
   * reads back as a bare TelemetryEvent. Only the upstream decoder lets
   * such an Event through. */
  if (ev->event == NULL)
    return;
  to_json(ev, &js);
  rc = emd_codec_decode_json(js.data, js.len, &up, &arena, &back, msg,
                             sizeof(msg));
  FUZZ_CHECK(rc == 0, "event_to_json's output does not decode (%d: %s): "
             "%.*s", rc, msg, (int)js.len, js.data);
  check_same(ev, back, "JSON round trip changed the event");
  free(js.data);
}

/* ---- the framer ------------------------------------------------------ */

/* What the framer reported, as bytes: per callback a kind ('I' item, 'L'
 * too large, 'T' truncated), a length and an item's bytes. Two readings
 * agree when their logs are equal. */
struct flog {
  uint8_t *p;
  size_t len, cap;
  size_t n;                /* callbacks */
  size_t stop_at;          /* the callback making n this asks to stop */
};

/* Records one callback; returns its answer (non-zero: stop). */
static int flog_put(struct flog *l, char kind, uint64_t len,
                    const void *bytes, size_t nbytes)
{
  size_t need = l->len + 1 + sizeof(len) + nbytes;

  if (need > l->cap) {
    l->cap = need * 2;
    l->p = realloc(l->p, l->cap);
    FUZZ_CHECK(l->p != NULL, "out of memory");
  }
  l->p[l->len++] = (uint8_t)kind;
  memcpy(l->p + l->len, &len, sizeof(len));
  l->len += sizeof(len);
  if (nbytes > 0)
    memcpy(l->p + l->len, bytes, nbytes);
  l->len += nbytes;
  l->n++;
  return l->n == l->stop_at;
}

static int on_item(void *data, const char *p, size_t n)
{
  return flog_put(data, 'I', n, p, n);
}

static int on_too_large(void *data, uint64_t len)
{
  return flog_put(data, 'L', len, NULL, 0);
}

static int on_truncated(void *data)
{
  return flog_put(data, 'T', 0, NULL, 0);
}

static const struct emd_frame_ops frame_ops = {
  .item = on_item,
  .too_large = on_too_large,
  .truncated = on_truncated,
};

static uint32_t be32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

/* Text mode read plainly: each line (the last one may lack its '\n') is
 * an item, or too large when longer than max without a final '\r'. */
static void reference_text(const uint8_t *s, size_t n, uint64_t max,
                           struct flog *l)
{
  while (n > 0) {
    const uint8_t *nl = memchr(s, '\n', n);
    size_t len = nl != NULL ? (size_t)(nl - s) : n;
    size_t shown = len > 0 && s[len - 1] == '\r' ? len - 1 : len;

    if (shown > max)
      flog_put(l, 'L', 0, NULL, 0);
    else
      flog_put(l, 'I', len, s, len);
    if (nl == NULL)
      return;
    n -= len + 1;
    s += len + 1;
  }
}

/* Binary mode read plainly: a 4-byte length, then that many bytes. */
static void reference_binary(const uint8_t *s, size_t n, uint64_t max,
                             struct flog *l)
{
  while (n > 0) {
    uint32_t len;

    if (n < 4) {
      flog_put(l, 'T', 0, NULL, 0);
      return;
    }
    len = be32(s);
    s += 4;
    n -= 4;
    if (len > max)
      flog_put(l, 'L', len, NULL, 0);
    if (n < len) {
      flog_put(l, 'T', 0, NULL, 0);
      return;
    }
    if (len <= max)
      flog_put(l, 'I', len, s, len);
    s += len;
    n -= len;
  }
}

/* How a stream is cut into reads. */
enum cut { CUT_NONE, CUT_BYTES, CUT_RANDOM };

/* Feeds s in reads cut as asked (random sizes from seed), then the end
 * of input. */
static void feed(const uint8_t *s, size_t n, uint64_t max, enum cut cut,
                 uint64_t seed, struct flog *l)
{
  struct emd_framer f = { .max = max };
  size_t off = 0, k;

  while (off < n) {
    k = n - off;
    if (cut == CUT_BYTES) {
      k = 1;
    } else if (cut == CUT_RANDOM) {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      k = 1 + (size_t)(seed % (seed & 0x100 ? n : 8));
      if (k > n - off)
        k = n - off;
    }
    FUZZ_CHECK(emd_frame_feed(&f, (const char *)s + off, k, &frame_ops, l)
               == 0, "emd_frame_feed failed");
    FUZZ_CHECK(f.plen <= max + 4 && (f.pcap <= 1024 || f.pcap < 2 * max + 8),
               "the framer keeps %zu bytes in %zu, limit %llu", f.plen,
               f.pcap, (unsigned long long)max);
    off += k;
  }
  FUZZ_CHECK(emd_frame_eof(&f, &frame_ops, l) == 0, "emd_frame_eof failed");
  emd_frame_free(&f);
  FUZZ_CHECK(f.partial == NULL && f.max == max, "emd_frame_free");
}

/* A callback that asks to stop ends the feed at once: the framer has
 * reported a prefix of what it would have, up to that callback. */
static void check_stop(const uint8_t *data, size_t size, uint64_t max,
                       uint64_t seed, const struct flog *want,
                       struct flog *got)
{
  struct emd_framer f = { .max = max };
  int rc;

  got->len = got->n = 0;
  got->stop_at = 1 + (size_t)(seed % want->n);
  rc = emd_frame_feed(&f, (const char *)data, size, &frame_ops, got);
  if (rc == 0)
    rc = emd_frame_eof(&f, &frame_ops, got);
  FUZZ_CHECK(rc == 1 && got->n == got->stop_at && got->len <= want->len &&
             memcmp(got->p, want->p, got->len) == 0,
             "asked to stop at callback %zu of %zu: returned %d after %zu",
             got->stop_at, want->n, rc, got->n);
  emd_frame_free(&f);
  got->stop_at = 0;
}

static void check_framer(const uint8_t *data, size_t size)
{
  /* Small limits often, to reach too-large items; large ones too. */
  uint8_t b = data[size - 1];
  uint64_t max = b < 128 ? b : (uint64_t)(b - 128) * 64;
  uint64_t seed = 0xcbf29ce484222325u;
  struct flog want = { 0 }, got = { 0 };

  for (size_t i = 0; i < size; i++)
    seed = (seed ^ data[i]) * 0x100000001b3u;
  if (data[0] == 0)
    reference_binary(data, size, max, &want);
  else
    reference_text(data, size, max, &want);
  for (int cut = CUT_NONE; cut <= CUT_RANDOM; cut++) {
    got.len = got.n = 0;
    feed(data, size, max, (enum cut)cut, seed | 1, &got);
    FUZZ_CHECK(got.len == want.len &&
               (got.len == 0 || memcmp(got.p, want.p, got.len) == 0),
               "the framer (reads cut %d) found %zu items, a plain reading "
               "%zu (limit %llu)", cut, got.n, want.n,
               (unsigned long long)max);
  }
  check_stop(data, size, max, seed, &want, &got);
  free(want.p);
  free(got.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const struct emd_codec_opts strict, lax = { .ignore_unknown = true },
                                     up = { .upstream = true };
  emd_event *ev, *ev_lax, *ev_up;
  int rc, rc_lax, rc_up;

  if (size > 0)
    check_framer(data, size);
  emd_arena_reset(&arena);
  rc = decode(data, size, &strict, &ev);
  rc_lax = decode(data, size, &lax, &ev_lax);
  rc_up = decode(data, size, &up, &ev_up);
  if (rc_up == 0)
    check_round_trip(ev_up);
  if (rc_lax == 0) {
    check_repack(ev_lax);
    check_round_trip(ev_lax);
  }
  if (rc != 0)
    return 0;
  FUZZ_CHECK(rc_lax == 0, "passes strictly, not with ignore_unknown (%d)",
             rc_lax);
  FUZZ_CHECK(rc_up == 0, "passes the client rules, not the upstream's (%d)",
             rc_up);
  check_same(ev, ev_lax, "ignore_unknown changed a strict event");
  return 0;
}
