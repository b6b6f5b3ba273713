/* emd_ingest.h: the event socket (SPEC 2). Accepts clients on a Unix stream
 * socket, splits their bytes into lines (text mode) or frames (first byte
 * 0x00: binary mode), decodes and validates each (emd_codec), enriches it
 * (emd_enrich), hands it to the spool's group commit, and writes one reply
 * per line, in line order, once the event is durable. Loop thread only. */
#ifndef EMD_INGEST_H
#define EMD_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "emd_config.h"
#include "emd_enrich.h"
#include "emd_metrics.h"
#include "emd_spool.h"

struct emd_ingest;

/* Counters since open, for status and metrics. */
struct emd_ingest_stats {
  uint64_t clients;         /* connected now */
  uint64_t connections;     /* accepted, ever */
  uint64_t refused;         /* turned away: max_clients or not allowed */
  uint64_t received;        /* lines and frames that got a reply */
  uint64_t accepted;        /* ok:true, new */
  uint64_t duplicates;      /* ok:true, duplicate */
  uint64_t bad_json, too_large, invalid, spool_full, shutting_down;
  uint64_t paused;          /* times a client was paused for not reading */
  struct emd_histogram ack_latency_s;  /* line read to reply written out,
                                        * for every reply */
};

/* Starts listening. listen_fd >= 0 is a listening socket handed over (for
 * systemd socket activation) and is used as is; otherwise the ingest binds
 * cfg->agent.socket (replacing a stale socket file, refusing to replace
 * anything else) with cfg->agent.socket_mode. cfg, sp and en are borrowed
 * until emd_ingest_close. On failure err says what and where. */
int emd_ingest_open(uv_loop_t *loop, const struct emd_config *cfg,
                    struct emd_spool *sp, struct emd_enrich *en,
                    int listen_fd, struct emd_ingest **out, char *err,
                    size_t errlen);

/* Call from the spool's changed callback: resumes reading when the spool
 * has room again (on_full = block). */
void emd_ingest_spool_changed(struct emd_ingest *in);

/* Applies live settings (max_event_bytes, max_clients, unknown_fields,
 * allow lists). cfg is borrowed until the next call or close. */
void emd_ingest_reconfigure(struct emd_ingest *in,
                            const struct emd_config *cfg);

typedef void (*emd_ingest_idle_cb)(void *data);

/* Shutdown, first half: stops accepting; every complete line already read
 * still gets its reply, and each client is closed as soon as its replies
 * are written. Until then, lines that still arrive on it are answered
 * shutting_down and not stored. cb runs once, on the loop, when no client
 * is left (at once if none). */
void emd_ingest_stop(struct emd_ingest *in, emd_ingest_idle_cb cb,
                     void *data);

/* Closes every client now (their events still get stored; their replies
 * are dropped) and the listener; frees in close callbacks. NULL-safe. */
void emd_ingest_close(struct emd_ingest *in);

void emd_ingest_stats(const struct emd_ingest *in,
                      struct emd_ingest_stats *st);

/* One reply (SPEC 2): an event stored (rc 0) or a line refused. */
struct emd_ingest_reply {
  int rc;                   /* 0, or the emd_err the line was refused with */
  uint32_t line;            /* rc != 0: line or frame number, from 1 */
  const char *msg;          /* rc != 0: NUL-terminated; NULL: the error's
                             * emd_strerror() */
  const char *id;           /* rc 0: the event's id, id_len bytes, no NUL */
  size_t id_len;
  uint64_t seq;
  bool duplicate;           /* rc 0: the id was known; no timer, ordinal */
  const uint8_t *timer;     /* rc 0, not duplicate: timer_len bytes */
  size_t timer_len;
  uint32_t ordinal;
};

/* The most bytes emd_ingest_format_reply() writes for r, in either mode. */
size_t emd_ingest_reply_max(const struct emd_ingest_reply *r);

/* Writes r into out (room for emd_ingest_reply_max(r) bytes) as the client
 * gets it: a JSON line, or (binary) a 4-byte big-endian length and the
 * packed emitd.v1.Ack, the bytes protobuf-c would pack. Returns the bytes
 * written. Pure, any thread; the ingest's own formatter, exposed for the
 * tests. */
size_t emd_ingest_format_reply(const struct emd_ingest_reply *r, bool binary,
                               char *out);

#endif
