/* fuzz_reply.c: emd_forward_parse_reply, the reading of the service's
 * reply to a request (SPEC 1: delimited EventIDs, or JSON lines), on the
 * input as a reply body. The first byte picks protobuf or JSON, emit or
 * stream, and how many of three known events the request held.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour": the count
 * read is -1 or within 0..n; every verdict is -1, 0 or 1; an untrusted
 * body gives no verdict to anyone; an event past the count read has none;
 * and a single-event request never reads more than one. */
#include <stdint.h>
#include <string.h>

#include "emd_event.h"
#include "emd_forward.h"
#include "fuzz.h"

#define N_EVENTS 3

static uint8_t packed[N_EVENTS][256];
static size_t packed_len[N_EVENTS];

static void make_events(void)
{
  static const char *const ids[N_EVENTS] = {
    "replyevent000001", "replyevent000002", "01JDREPLYEVENT0003"
  };

  for (int i = 0; i < N_EVENTS; i++) {
    Buildless__Service__V1__Event ev = BUILDLESS__SERVICE__V1__EVENT__INIT;
    Buildless__Telemetry__TelemetryEvent te =
      BUILDLESS__TELEMETRY__TELEMETRY_EVENT__INIT;

    te.id = (char *)ids[i];
    ev.event = &te;
    packed_len[i] = buildless__service__v1__event__pack(&ev, packed[i]);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static bool ready;
  const uint8_t *events[N_EVENTS];
  int ok[N_EVENTS];
  bool json, single;
  size_t n;
  long got;

  if (!ready) {
    make_events();
    ready = true;
  }
  if (size == 0)
    return 0;
  json = data[0] & 1;
  single = data[0] & 2;
  n = single ? 1 : 1 + (size_t)((data[0] >> 2) % N_EVENTS);
  for (size_t i = 0; i < N_EVENTS; i++)
    events[i] = packed[i];
  memset(ok, 0x55, sizeof(ok));
  got = emd_forward_parse_reply(data + 1, size - 1, json, single, events,
                                packed_len, n, ok);
  FUZZ_CHECK(got >= -1 && got <= (long)n, "got %ld for %zu events", got, n);
  FUZZ_CHECK(!single || got <= 1, "single request read %ld verdicts", got);
  for (size_t i = 0; i < n; i++) {
    FUZZ_CHECK(ok[i] >= -1 && ok[i] <= 1, "verdict %d", ok[i]);
    if (got < 0 || (long)i >= got)
      FUZZ_CHECK(ok[i] == -1, "event %zu has verdict %d past %ld read", i,
                 ok[i], got);
  }
  return 0;
}
