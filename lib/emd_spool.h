/* emd_spool.h: the durable FIFO of events keyed by seq, in LMDB (SPEC 3).
 * Named databases: pending (seq -> SpoolRecord), ids (event id -> seq and
 * state, for de-duplication), timers (timer -> next ordinal, last use),
 * dead (seq -> DeadRecord), delivered (time ‖ seq -> id, to expire ids
 * after spool.dedup_window) and meta (schema version, instance ID, next
 * seq, counters).
 *
 * Writes are group commits on a writer thread of the spool's own: every
 * append and outcome queued during one loop turn shares one write
 * transaction and, for sync = always, one fsync; the loop keeps running
 * while it syncs. Results come back to the loop through uv_async. Every
 * function here is for the loop thread only. */
#ifndef EMD_SPOOL_H
#define EMD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "emd_arena.h"
#include "emd_config.h"
#include "emd_event.h"

struct emd_spool;

/* What happened to one appended event. */
struct emd_spool_result {
  int rc;              /* 0; EMD_ESPOOLFULL (on_full = reject); <0 other */
  uint64_t seq;        /* its seq, or the stored one's for a duplicate */
  uint32_t ordinal;    /* the event's ordinal (kept or assigned); 0 for a
                        * duplicate */
  uint32_t index;      /* its index: as given, or the ordinal if 0 */
  bool duplicate;      /* the id was known: nothing stored */
};

/* Runs exactly once per append, on the loop, after the event is durable
 * per spool.sync (or it was refused). */
typedef void (*emd_spool_cb)(void *data, const struct emd_spool_result *res);

/* Runs on the loop after each group commit that changed the spool
 * (events in, out, dead), and when there is room again after being full. */
typedef void (*emd_spool_changed_cb)(void *data);

/* Opens (creating if needed) the spool in cfg->spool.dir and starts its
 * writer thread. Reads only meta: start-up cost does not grow with the
 * backlog. A spool of a newer schema (EMD_ESPOOLVER) or one that cannot be
 * opened (EMD_ESPOOLBAD, or -errno) is never modified; err then says what
 * happened and what to do. cfg is borrowed until emd_spool_close. On
 * success *out is the caller's. */
int emd_spool_open(uv_loop_t *loop, const struct emd_config *cfg,
                   struct emd_spool **out, char *err, size_t errlen);

/* Finishes queued work (one last group commit), stops the writer thread
 * and closes the handles; the memory goes in their close callback, so the
 * caller runs the loop until it has no handles left. Callbacks of queued
 * appends still run (after their commit). NULL-safe. */
void emd_spool_close(struct emd_spool *sp);

/* Applies settings that may change live (sync_interval, max_bytes within
 * the map size, on_full, max_age, dead_max, timer_ttl, dedup_window);
 * cfg is borrowed until the next call or close. */
void emd_spool_reconfigure(struct emd_spool *sp, const struct emd_config *cfg);

/* The arena of the group being gathered: it is reset after every
 * callback of its group (and of the groups before it) has run. The group
 * changes between loop turns, so ask again rather than keeping the
 * pointer. (emd_spool_append keeps its own copy of what it needs of an
 * event; this is for memory a caller wants to live as long.) */
struct emd_arena *emd_spool_arena(struct emd_spool *sp);

/* Queues ev (enriched: id, timer set) for the next group commit: it is
 * read during this call only (packed, with its id and timer copied), so
 * the caller may reuse its memory at once. In that transaction the spool
 * de-duplicates on ev->event->id, assigns the ordinal from the counter of
 * ev->event->timer when ev->event->ordinal is 0 (and the index, when 0,
 * is the ordinal), assigns the seq, stores the record and the counter;
 * cb runs exactly once and gets the ordinal and index. Returns 0, or <0
 * and then cb never runs: EMD_ESHUTDOWN after close began, EMD_EINVALID
 * for an event with no TelemetryEvent or with unknown fields (the ingest
 * drops or refuses those first), -ENOMEM. */
int emd_spool_append(struct emd_spool *sp, const emd_event *ev,
                     emd_spool_cb cb, void *data);

/* True unless on_full = block and the spool is at max_bytes, or the
 * writer has fallen far behind (the group being gathered holds 65536
 * events or 64 MiB): the ingest stops reading while this is false and
 * resumes on the changed callback. Appends made anyway are still taken. */
bool emd_spool_has_room(const struct emd_spool *sp);

void emd_spool_set_changed_cb(struct emd_spool *sp, emd_spool_changed_cb cb,
                              void *data);

/* One pending record as the forwarder sees it. The pointers are valid only
 * during the emd_spool_read callback. */
struct emd_spool_entry {
  uint64_t seq;
  const uint8_t *event;   /* a packed buildless.service.v1.Event */
  size_t event_len;
  uint64_t accepted_ms;
  uint32_t attempts;
  const uint8_t *id;      /* its TelemetryEvent id, inside event, where the
                           * spool noted it; NULL: find it in event */
  size_t id_len;
};
typedef int (*emd_spool_read_fn)(void *data, const struct emd_spool_entry *e);

/* Calls fn for pending records with seq > after, in seq order, up to
 * max_events and, past the first, max_bytes of event bytes; stops early
 * when fn returns non-zero. A read-only transaction on the loop thread
 * (it never waits for the writer). Returns how many fn saw, or <0. */
int emd_spool_read(struct emd_spool *sp, uint64_t after, size_t max_events,
                   size_t max_bytes, emd_spool_read_fn fn, void *data);

/* Outcomes from upstream, applied in the next group commit. The seqs are
 * borrowed for the call only. Seqs no longer pending are skipped. */
/* Delivered: removed from pending; ids remembered for dedup_window. */
int emd_spool_delete(struct emd_spool *sp, const uint64_t *seqs, size_t n);
/* Failed once more: attempts += 1 on each. */
int emd_spool_attempted(struct emd_spool *sp, const uint64_t *seqs,
                        size_t n);
/* Moved to dead letters with reason ("rejected", "expired", "attempts",
 * "status"), HTTP status (0 if none) and up to 512 bytes of the reply. */
int emd_spool_dead(struct emd_spool *sp, uint64_t seq, const char *reason,
                   unsigned status, const void *excerpt, size_t excerpt_len);

struct emd_spool_stats {
  uint64_t pending;        /* events waiting for upstream */
  uint64_t pending_bytes;  /* bytes of their records */
  uint64_t oldest_ms;      /* accepted_ms of the oldest pending, 0 if none */
  uint64_t dead;           /* dead letters kept */
  uint64_t next_seq;       /* the seq the next event gets */
  uint64_t dropped;        /* evicted by on_full = drop_oldest, ever (they
                            * become dead letters "dropped") */
  uint64_t expired;        /* moved to dead by max_age, ever */
  uint64_t commits;        /* group commits since open */
  bool ids_rebuilding;     /* the id table is being rebuilt (after a crash
                            * or an upgrade): until done, an event sent
                            * again may be stored twice */
};

/* The current figures, as of the last commit. */
void emd_spool_stats(const struct emd_spool *sp, struct emd_spool_stats *st);

/* The spool's instance ID (16 random bytes made once per spool). */
const uint8_t *emd_spool_instance_id(const struct emd_spool *sp);

/* For the control socket (SPEC 6). One pending record or dead letter as
 * `pending` and `dead list` show it; the pointers are valid only during
 * the callback. reason is NULL (and status, excerpt, time_ms are 0) for a
 * pending record. */
struct emd_spool_item {
  uint64_t seq;
  const char *id;          /* the event's id, not NUL-terminated */
  size_t id_len;
  const uint8_t *event;    /* a packed buildless.service.v1.Event */
  size_t event_len;
  uint64_t accepted_ms;
  uint32_t attempts;
  const char *reason;      /* dead letters: "rejected", "expired", ... */
  size_t reason_len;
  unsigned status;         /* dead letters: HTTP status, 0 if none */
  const uint8_t *excerpt;  /* dead letters: start of the reply */
  size_t excerpt_len;
  uint64_t time_ms;        /* dead letters: when it was dead-lettered */
};
typedef int (*emd_spool_list_fn)(void *data, const struct emd_spool_item *it);

/* Call fn for the oldest limit pending records, or dead letters, in seq
 * order; stop early when fn returns non-zero. Read-only, on the loop
 * thread. Return how many fn saw, or <0. */
int emd_spool_list_pending(struct emd_spool *sp, size_t limit,
                           emd_spool_list_fn fn, void *data);
int emd_spool_list_dead(struct emd_spool *sp, size_t limit,
                        emd_spool_list_fn fn, void *data);

/* Runs exactly once, on the loop, after the commit that applied a
 * dead-letter command: rc 0 and n the number of letters it touched, or
 * rc <0 (EMD_ENOTFOUND: no dead letter with that seq). */
typedef void (*emd_spool_count_cb)(void *data, int rc, uint64_t n);

/* Moves the dead letter seq (0: every one) back to pending, in the next
 * group commit: it gets a new seq (after every other pending record),
 * accepted_ms = now and attempts 0, so max_age counts from the retry.
 * Returns 0 and cb runs once, or <0 and cb never runs. */
int emd_spool_dead_retry(struct emd_spool *sp, uint64_t seq,
                         emd_spool_count_cb cb, void *data);

/* Deletes every dead letter (and forgets their ids) in the next group
 * commit. Returns 0 and cb runs once, or <0 and cb never runs. */
int emd_spool_dead_purge(struct emd_spool *sp, emd_spool_count_cb cb,
                         void *data);

#endif
