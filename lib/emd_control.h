/* emd_control.h: the control socket (SPEC 6), agent.control_socket.
 *
 * A Unix stream socket of mode 0600 on the libuv loop. One command per
 * line ("\n"; "\r\n" accepted; a last line without a newline before EOF
 * counts; blank lines are skipped without a reply), one reply per command:
 * a JSON line, except for `metrics`, which answers Prometheus text ending
 * with the line "# EOF". Commands:
 *
 *   status                 figures for people and machines
 *   metrics                Prometheus text
 *   flush [TIMEOUT]        send now; answers once the spool is empty or
 *                          TIMEOUT (default 30s) has passed
 *   reload                 re-read the configuration and the key file
 *   dead list [N]          the oldest N dead letters (default 100)
 *   dead retry [ID|all]    move one dead letter (by seq or event id), or
 *                          all of them (the default), back to pending
 *   dead purge             delete every dead letter
 *   pending [N]            the oldest N pending events (default 20)
 *   help                   the list of commands
 *
 * The commands of one connection run one at a time, in order: a command
 * that answers later (flush) holds back the ones after it, so
 * "flush\nstatus\n" reports the state after the flush. An unknown or
 * malformed command is answered with bad_command, a line over
 * EMD_CONTROL_LINE_MAX bytes with too_large (the rest of that line is
 * skipped); the connection goes on. A client that half-closes (EOF) gets
 * every reply, then the connection closes. At most EMD_CONTROL_MAX_CLIENTS
 * at once; one more is answered too_many_clients and closed.
 *
 * The control module knows no other module: emitd fills in a table of
 * callbacks (struct emd_control_ops), and each callback answers through
 * the reply it is handed. Loop thread only. */
#ifndef EMD_CONTROL_H
#define EMD_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "emd_json.h"
#include "emd_metrics.h"

#define EMD_CONTROL_LINE_MAX 4096          /* longest command line */
#define EMD_CONTROL_MAX_CLIENTS 64         /* connections at once */
#define EMD_CONTROL_FLUSH_DEFAULT_MS 30000
#define EMD_CONTROL_FLUSH_MAX_MS (24ULL * 3600 * 1000)
#define EMD_CONTROL_PENDING_DEFAULT 20
#define EMD_CONTROL_DEAD_DEFAULT 100
#define EMD_CONTROL_LIST_MAX 10000         /* largest N of pending, dead */
#define EMD_CONTROL_TARGET_MAX 64          /* longest ID of dead retry */

/* ---- commands --------------------------------------------------------- */

enum emd_control_verb {
  EMD_CTL_STATUS,
  EMD_CTL_METRICS,
  EMD_CTL_FLUSH,
  EMD_CTL_RELOAD,
  EMD_CTL_DEAD_LIST,
  EMD_CTL_DEAD_RETRY,
  EMD_CTL_DEAD_PURGE,
  EMD_CTL_PENDING,
  EMD_CTL_HELP,
};

/* One parsed command. Fields a verb does not use are 0 / "". */
struct emd_control_cmd {
  enum emd_control_verb verb;
  uint64_t timeout_ms;     /* flush: 0 .. EMD_CONTROL_FLUSH_MAX_MS */
  uint64_t limit;          /* pending, dead list: 1 .. EMD_CONTROL_LIST_MAX */
  char target[EMD_CONTROL_TARGET_MAX + 1];
                           /* dead retry: "all", or 1 to 64 ASCII letters
                            * and digits: a seq or an event id */
};

/* Parses one command line (without its newline; a trailing "\r" and
 * surrounding blanks are ignored; verbs and "all" in any case). Pure, for
 * the server, emitctl, the tests and the fuzzer: line need not be
 * NUL-terminated and may hold any bytes. Returns 0 with *out filled, or
 * EMD_EBADCMD with a message for people in err (one line, naming the
 * command and what was expected; untrusted bytes shown as '.'), e.g.
 *   unknown command "stauts" (did you mean "status"?); try: status, ...
 *   flush: bad timeout "10x": expected a duration like 30s or 500ms */
int emd_control_parse(const char *line, size_t len,
                      struct emd_control_cmd *out, char *err,
                      size_t errlen);

/* Parses a duration: a whole number with ms, s, m or h (a bare number is
 * seconds). Returns 0, or EMD_EBADCMD; *out in milliseconds. */
int emd_control_parse_duration(const char *s, size_t len, uint64_t *out);

/* The usage text of every command, one "  usage   summary" line each. */
const char *emd_control_help_text(void);

/* ---- replies ---------------------------------------------------------- */

/* A reply owed to one command. Each callback below is handed one and must
 * complete it exactly once, through one of the emd_control_reply_*
 * functions that say "completes r" — at once, inside the callback, or
 * later from the loop. r is freed by that call. Completing r after its
 * client left, or after emd_control_close(), is safe: the text is
 * dropped. */
struct emd_control_reply;

/* Completes r with text[0..len), copied: one JSON object (a newline is
 * added when missing), or for metrics Prometheus text ("# EOF\n" is added
 * when the text does not end with it). */
void emd_control_reply_done(struct emd_control_reply *r, const char *text,
                            size_t len);

/* Completes r with the document j holds, or with an "internal" error if
 * j failed or is incomplete. j stays the caller's (free or reuse it). */
void emd_control_reply_json(struct emd_control_reply *r,
                            const struct emd_json *j);

/* Completes r with {"ok":true}, or {"ok":true,"<key>":n} when key is not
 * NULL (dead retry: "retried"; dead purge: "purged"). */
void emd_control_reply_ok(struct emd_control_reply *r, const char *key,
                          uint64_t n);

/* Completes r with {"ok":false,"error":code,"message":…}; code is a
 * machine word such as emd_errcode(rc) ("not_found", "internal"). */
void emd_control_reply_error(struct emd_control_reply *r, const char *code,
                             const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

/* True once r's client is gone (it hung up, or the control socket closed):
 * a long wait (flush) may end early. Completing r is still required. */
bool emd_control_reply_orphaned(const struct emd_control_reply *r);

/* ---- what status and metrics show ------------------------------------- */

/* A count by name, e.g. dead letters by reason. */
struct emd_control_count {
  const char *name;
  uint64_t n;
};

/* The figures emitd gathers from its modules for `status` and `metrics`.
 * Plain numbers and borrowed strings, so that this module needs none of
 * the others. Zero-initialise, then fill in what is known. */
struct emd_control_figures {
  const char *version;            /* EMD_VERSION */
  uint64_t uptime_s;
  /* upstream */
  const char *endpoint;           /* base URL: never holds the API key */
  const char *state;              /* "ok", "backoff", "unauthorized",
                                   * "forbidden", "misconfigured" */
  long last_status;               /* HTTP status of the last reply; 0 none */
  int64_t last_reply_age_s;       /* < 0: no reply yet (status shows null) */
  uint64_t sent;                  /* events the service accepted */
  uint64_t retried;               /* events put back for another attempt */
  uint64_t requests_2xx, requests_4xx, requests_5xx, requests_other;
  uint64_t requests_error;        /* no reply: connect errors, timeouts */
  uint64_t inflight;              /* requests in flight now */
  /* spool */
  uint64_t pending;               /* events waiting for upstream */
  uint64_t pending_bytes;
  uint64_t oldest_age_s;          /* of the oldest pending; 0 if none */
  uint64_t dead;                  /* dead letters kept */
  bool ids_rebuilding;            /* the id table is being rebuilt */
  uint64_t dropped;               /* evicted by on_full = drop_oldest */
  const struct emd_control_count *dead_by_reason;   /* since start */
  size_t n_dead_by_reason;
  /* the event socket */
  uint64_t clients;               /* connected now */
  uint64_t connections;           /* accepted since start */
  uint64_t refused;               /* turned away at accept */
  uint64_t received;              /* lines and frames answered */
  uint64_t accepted;              /* stored, new */
  uint64_t duplicates;            /* acknowledged, already known */
  const struct emd_control_count *rejected_by_reason;
                                  /* "bad_json", "too_large", "invalid",
                                   * "spool_full", "shutting_down" */
  size_t n_rejected_by_reason;
  /* histograms; NULL: not kept, left out of metrics */
  const struct emd_histogram *ack_latency_s;   /* accept to reply */
  const struct emd_histogram *batch_events;    /* events per request */
  const struct emd_histogram *batch_bytes;     /* bytes per request */
};

/* Writes the status object (SPEC 6) into j:
 * {"ok":true,"version":…,"uptime_s":N,
 *  "upstream":{"endpoint":…,"state":…,"last_status":N,
 *              "last_reply_age_s":N|null},
 *  "spool":{"pending":N,"pending_bytes":N,"oldest_age_s":N,"dead":N
 *           [,"ids_rebuilding":true]},
 *  "sent":N,"dead_by_reason":{"rejected":N,…},
 *  "ingest":{"clients":N,"received":N,"accepted":N,"duplicates":N,
 *            "rejected":N}} */
void emd_control_status_json(const struct emd_control_figures *f,
                             struct emd_json *j);

/* Writes every metric of emitd, then "# EOF", into t:
 * emitd_build_info, emitd_uptime_seconds, emitd_events_received_total,
 * emitd_events_accepted_total, emitd_events_duplicate_total,
 * emitd_events_rejected_total{reason}, emitd_events_dropped_total,
 * emitd_events_sent_total, emitd_events_retried_total,
 * emitd_spool_pending_events, emitd_spool_pending_bytes,
 * emitd_spool_oldest_pending_age_seconds, emitd_dead_letters,
 * emitd_dead_letters_total{reason}, emitd_upstream_requests_total{class},
 * emitd_upstream_inflight_requests, emitd_upstream_state{state},
 * emitd_upstream_last_status, emitd_clients, emitd_connections_total,
 * emitd_connections_refused_total, emitd_ack_latency_seconds,
 * emitd_batch_size_events, emitd_batch_size_bytes. */
void emd_control_metrics_text(const struct emd_control_figures *f,
                              struct emd_text *t);

/* Completes r with the status object / the metrics text of f. */
void emd_control_reply_status(struct emd_control_reply *r,
                              const struct emd_control_figures *f);
void emd_control_reply_metrics(struct emd_control_reply *r,
                               const struct emd_control_figures *f);

/* Completes a flush: pending 0 gives {"ok":true,"pending":0,"flushed":N};
 * otherwise {"ok":false,"error":"timeout","message":"N events still
 * pending after 30s (upstream: STATE)","pending":N,"flushed":N}. flushed
 * counts the events sent while waiting; state may be NULL. */
void emd_control_reply_flush(struct emd_control_reply *r, uint64_t pending,
                             uint64_t flushed, uint64_t timeout_ms,
                             const char *state);

/* ---- lists: dead list, pending ---------------------------------------- */

struct emd_control_dead_item {
  uint64_t seq;
  const char *id;               /* the event's id; not NUL-terminated */
  size_t id_len;
  const char *reason;           /* "rejected", "status", "expired", ... */
  size_t reason_len;
  unsigned status;              /* HTTP status, 0 if none */
  const void *excerpt;          /* start of upstream's reply, any bytes */
  size_t excerpt_len;
  uint64_t time_ms;             /* when it died, ms since the epoch */
};

struct emd_control_pending_item {
  uint64_t seq;
  const char *id;               /* not NUL-terminated */
  size_t id_len;
  const char *collection;       /* Event.collection; NULL or "" if unset */
  size_t collection_len;
  uint64_t accepted_ms;         /* ms since the epoch */
  uint32_t attempts;
};

/* A list reply is written in three steps into j (then
 * emd_control_reply_json):
 *   emd_control_list_begin(j, "dead")      {"ok":true,"dead":[
 *   emd_control_list_dead(j, &item) ...    {"id":…,"seq":…,…},…
 *   emd_control_list_end(j, total)         ],"total":N}
 * total is the number that exists (shown ones and the rest). */
void emd_control_list_begin(struct emd_json *j, const char *name);
void emd_control_list_dead(struct emd_json *j,
                           const struct emd_control_dead_item *it);
void emd_control_list_pending(struct emd_json *j,
                              const struct emd_control_pending_item *it);
void emd_control_list_end(struct emd_json *j, uint64_t total);

/* ---- the server ------------------------------------------------------- */

/* What emitd does for each command; data is emitd's. Each callback gets a
 * reply r it must complete exactly once (see above). A NULL callback is
 * answered {"ok":false,"error":"internal",…"not available"}. help is
 * answered by this module. */
struct emd_control_ops {
  void (*status)(void *data, struct emd_control_reply *r);
  void (*metrics)(void *data, struct emd_control_reply *r);
  /* Send now; complete r when the spool is empty, or timeout_ms from now
   * (emd_control_reply_flush); 0 means "report at once". */
  void (*flush)(void *data, uint64_t timeout_ms,
                struct emd_control_reply *r);
  /* As SIGHUP: re-read the configuration and the key file. */
  void (*reload)(void *data, struct emd_control_reply *r);
  void (*dead_list)(void *data, uint64_t limit, struct emd_control_reply *r);
  /* target: "all", or a dead letter's event id or seq (1 to 64 ASCII
   * letters and digits, NUL-terminated, valid during the call). */
  void (*dead_retry)(void *data, const char *target,
                     struct emd_control_reply *r);
  void (*dead_purge)(void *data, struct emd_control_reply *r);
  void (*pending)(void *data, uint64_t limit, struct emd_control_reply *r);
};

struct emd_control;

/* Listens on path with mode 0600 from the first moment (umask around the
 * bind, then chmod). A socket file left by an earlier run is replaced; a
 * live one (something answers on it) or a file that is not a socket is
 * refused (-EADDRINUSE, -EEXIST). ops and data are borrowed until
 * emd_control_close. On success *out is the caller's; on failure err says
 * what and where, and nothing is left to free (run the loop once to let
 * the handle close). */
int emd_control_open(uv_loop_t *loop, const char *path,
                     const struct emd_control_ops *ops, void *data,
                     struct emd_control **out, char *err, size_t errlen);

/* Stops listening (removing the socket file it made) and closes every
 * client at once, unwritten replies dropped. Replies still owed become
 * orphans (their completion is still required, and safe). The memory goes
 * in the last close callback: run the loop until it has no handles left.
 * NULL-safe. */
void emd_control_close(struct emd_control *ctl);

/* Connections open now. */
size_t emd_control_clients(const struct emd_control *ctl);

#endif
