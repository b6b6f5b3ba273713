/* fuzz_json.c: emd_codec_decode_json (SPEC 2's text mode) on the input as
 * one line, and what emitd does next with an event it accepts.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 *  - a failure returns one of the codes the header lists, *out NULL and a
 *    message;
 *  - an event decoded with unknown fields refused also decodes, to the
 *    same event, with them ignored;
 *  - emd_codec_event_to_json's output decodes with opts.upstream, and
 *    encodes back to the same text (the header's round trip);
 *  - the event packed as protobuf decodes as a frame (the other client
 *    decoder agrees), to the same event. */
#include <errno.h>

#include "emd_codec.h"
#include "emd_err.h"
#include "fuzz.h"

/* One arena for the whole run, reset per input, as the ingest does. */
static struct emd_arena arena;

/* ev as proto3 JSON, malloc'd; the caller frees out->data. */
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

static int decode(const uint8_t *data, size_t size, bool ignore_unknown,
                  emd_event **ev)
{
  struct emd_codec_opts opts = { .ignore_unknown = ignore_unknown };
  char msg[256];
  int rc;

  msg[0] = '\0';
  rc = emd_codec_decode_json((const char *)data, size, &opts, &arena, ev,
                             msg, sizeof(msg));
  FUZZ_CHECK(rc == 0 || rc == EMD_EBADJSON || rc == EMD_EINVALID ||
             rc == EMD_ETOOLARGE || rc == -ENOMEM,
             "decode_json returned %d", rc);
  if (rc == 0) {
    FUZZ_CHECK(*ev != NULL && (*ev)->event != NULL,
               "decoded without an event");
    FUZZ_CHECK(!(*ev)->fin, "a client's fin was kept");
  } else {
    FUZZ_CHECK(*ev == NULL, "failed (%d) with *out set", rc);
    /* Not one line: it may quote client text as sent (escapes undone);
     * the ingest escapes it in the reply, the log flattens it. */
    FUZZ_CHECK(fuzz_has_msg(msg, sizeof(msg)), "failed (%d) without a "
               "message", rc);
  }
  return rc;
}

/* What the forwarder sends in JSON mode must read back as the service
 * (the test upstream) reads it: same event, same text. */
static void check_round_trip(const struct emd_codec_buf *js)
{
  struct emd_codec_opts up = { .upstream = true };
  struct emd_codec_buf again;
  emd_event *ev;
  char msg[256] = "";
  int rc;

  rc = emd_codec_decode_json(js->data, js->len, &up, &arena, &ev, msg,
                             sizeof(msg));
  FUZZ_CHECK(rc == 0, "event_to_json's output does not decode (%d: %s): "
             "%.*s", rc, msg, (int)js->len, js->data);
  to_json(ev, &again);
  FUZZ_CHECK(same_json(js, &again), "round trip changed the event:\n"
             "%.*s\n%.*s", (int)js->len, js->data, (int)again.len,
             again.data);
  free(again.data);
}

/* The same event sent in binary mode must pass too, unchanged (its email,
 * if any, is a 32-byte hash by now and stays as it is). */
static void check_as_frame(const emd_event *ev, const struct emd_codec_buf *js)
{
  emd_event *fev;
  char msg[256] = "";
  size_t n;
  uint8_t *buf = fuzz_pack(&ev->base, &n);
  int rc;

  rc = emd_codec_decode_frame(buf, n, NULL, &arena, &fev, msg, sizeof(msg));
  FUZZ_CHECK(rc == 0, "accepted as JSON, refused as a frame (%d: %s): %.*s",
             rc, msg, (int)js->len, js->data);
  FUZZ_CHECK(fuzz_same_packed(&ev->base, &fev->base),
             "JSON and frame decode differ: %.*s", (int)js->len, js->data);
  free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct emd_codec_buf js, lax;
  emd_event *ev, *ev2;
  int rc, rc2;

  emd_arena_reset(&arena);
  rc = decode(data, size, false, &ev);
  rc2 = decode(data, size, true, &ev2);
  if (rc == 0)
    FUZZ_CHECK(rc2 == 0, "decodes strictly, not with ignore_unknown (%d)",
               rc2);
  if (rc2 != 0)
    return 0;
  to_json(ev2, &lax);
  if (rc == 0) {
    to_json(ev, &js);
    FUZZ_CHECK(same_json(&js, &lax), "ignore_unknown changed a strict "
               "event:\n%.*s\n%.*s", (int)js.len, js.data, (int)lax.len,
               lax.data);
    free(js.data);
  }
  check_round_trip(&lax);
  check_as_frame(ev2, &lax);
  free(lax.data);
  return 0;
}
