/* emd_forward.h: sends spooled events upstream (SPEC 1 and 4) with the
 * libcurl multi interface driven by the libuv loop. Events go in seq
 * order, in batches cut by count, bytes and linger; an event leaves the
 * spool only when the service accepted it. Replies become verdicts through
 * emd_forward_classify(), the one place the table of SPEC 4 lives.
 * Every function here is for the loop thread only. */
#ifndef EMD_FORWARD_H
#define EMD_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "emd_config.h"
#include "emd_spool.h"

struct emd_forward;

/* What a reply means for the events of one request (SPEC 4):
 *   DONE   2xx: read the per-event verdicts from the body
 *   RETRY  408, 429, 5xx, a transport error or timeout: back off, resend
 *   PAUSE  401, 403, 404, 405 (and 3xx, a malformed URL, an unusable
 *          ca_file): stop sending until the key or config changes, probe
 *          now and then; never dead-letter
 *   SPLIT  413, or any other 4xx, for more than one event: halve it
 *   DEAD   any other 4xx for a single event: dead letter "status" */
enum emd_verdict { EMD_DONE, EMD_RETRY, EMD_PAUSE, EMD_SPLIT, EMD_DEAD };

/* Pure: the verdict for a finished request of n_events events. curl_rc
 * is the transfer's CURLcode (0 when a reply arrived); status is its HTTP
 * status (0 when none). Exposed for the tests. */
enum emd_verdict emd_forward_classify(int curl_rc, long status,
                                      size_t n_events);

/* Pure, for tests and the fuzzer: reads a 2xx reply body (len 0: all
 * accepted) to the n events whose packed Events are events[i] (lens[i]
 * bytes), sent as JSON or protobuf to event:emit (single) or
 * event:stream, under the same trust rules as a real reply. ok[i] becomes
 * 1 accepted, 0 rejected, -1 no trusted verdict (the event is resent).
 * Returns the verdicts read (0..n), -1 when the body is not trusted, or
 * -ENOMEM. */
long emd_forward_parse_reply(const void *body, size_t len, bool json,
                             bool single, const uint8_t *const *events,
                             const size_t *lens, size_t n, int *ok);

/* The upstream state that `status` reports (SPEC 6). */
enum emd_forward_state {
  EMD_FWD_OK,              /* sending */
  EMD_FWD_BACKOFF,         /* the last request failed; retrying */
  EMD_FWD_UNAUTHORIZED,    /* 401: paused until the key changes */
  EMD_FWD_FORBIDDEN,       /* 403: likewise */
  EMD_FWD_MISCONFIGURED,   /* 404, 405, ...: paused until reconfigured */
};

/* "ok", "backoff", "unauthorized", "forbidden", "misconfigured"; "?" for
 * anything else. Never NULL. */
const char *emd_forward_state_name(int state);

/* Upper bounds of the batch size histogram (events per request); a last
 * bucket counts the larger ones. */
#define EMD_FORWARD_BATCH_BOUNDS { 1, 10, 50, 100, 250, 500, 1000 }
#define EMD_FORWARD_BATCH_BUCKETS 8

struct emd_forward_stats {
  int state;                 /* enum emd_forward_state */
  long last_status;          /* HTTP status of the last reply; 0: none yet,
                              * or the last request got no reply */
  uint64_t last_reply_ms;    /* wall clock (ms since the epoch) of the last
                              * finished request, 0 if none */
  uint64_t sent;             /* events the service accepted */
  uint64_t requests_2xx;     /* replies by status class */
  uint64_t requests_4xx;
  uint64_t requests_5xx;
  uint64_t requests_other;   /* 1xx, 3xx and nonsense statuses */
  uint64_t requests_error;   /* no reply: connect errors, timeouts, cuts */
  uint64_t dead_rejected;    /* dead letters by reason: ok false in a 2xx */
  uint64_t dead_status;      /* a 4xx for a single event */
  uint64_t dead_attempts;    /* upstream.max_attempts reached */
  uint64_t retried;          /* events put back for another attempt */
  uint64_t inflight;         /* requests now in flight */
  uint64_t inflight_events;  /* events in them */
  uint64_t batch_count[EMD_FORWARD_BATCH_BUCKETS];  /* requests per bucket
                              * of EMD_FORWARD_BATCH_BOUNDS (not cumulative) */
  uint64_t batch_events;     /* sum of events over all requests */
};

/* Creates the forwarder on loop and reads the API key (api_key_file wins
 * over api_key; the file is then watched, with its directory, for edits
 * and replacements). Nothing is sent until emd_forward_kick(). cfg and sp
 * are borrowed until emd_forward_close() (cfg until the next
 * emd_forward_reconfigure()). On success *out is the caller's. On failure
 * (-ENOMEM; a key file that cannot be read, -errno, or holds no valid
 * key, EMD_ECONFIG) what was built is closed: run the loop to free it. The
 * endpoint is taken as emd_config_load() checked it. */
int emd_forward_open(uv_loop_t *loop, const struct emd_config *cfg,
                     struct emd_spool *sp, struct emd_forward **out);

/* New events were committed: consider sending. Cheap when nothing can be
 * sent (every request slot busy, or paused). The spool's changed callback
 * calls this. */
void emd_forward_kick(struct emd_forward *fw);

/* Sends now, for `flush` (SPEC 6) and the shutdown grace. While on, a
 * partial batch goes at once instead of waiting for batch_linger, and
 * turning it on ends a backoff wait at once; a Retry-After still holds,
 * and a state paused by 401, 403 or 404 stays paused (the same reply would
 * only come again). Off: batches linger again. */
void emd_forward_flush(struct emd_forward *fw, bool on);

/* Applies a reloaded configuration: endpoint, mode, encoding,
 * compression, auth, key and key file, batch limits, linger, inflight,
 * timeouts, retry timings, max_attempts, ca_file. Requests in flight
 * finish as they began. Re-reads the key and resumes a paused state at
 * once. cfg is borrowed until the next call or close. Returns 0, or <0
 * (the key file cannot be read; the old key stays in use). */
int emd_forward_reconfigure(struct emd_forward *fw,
                            const struct emd_config *cfg);

/* Re-reads api_key_file now (SIGHUP, `emitctl reload`) and resumes a
 * state paused by 401, 403 or 404 at once. A file that cannot be read
 * keeps the old key and is logged (its path, never the key). The file is
 * also watched: an edit or a replacement re-reads it, and a changed key
 * resumes at once. */
void emd_forward_key_reload(struct emd_forward *fw);

/* Stops sending and aborts the requests in flight (their events stay
 * pending in the spool), then closes every handle; the memory goes in
 * the last close callback, so the caller runs the loop until it has no
 * handles left. NULL-safe. */
void emd_forward_close(struct emd_forward *fw);

/* The current figures. */
void emd_forward_stats(const struct emd_forward *fw,
                       struct emd_forward_stats *st);

#endif
