/* emitd_control.c: the control commands (SPEC 6), answered from the
 * modules' figures. The control socket itself is lib/emd_control. Loop
 * thread only. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "emd_config.h"
#include "emd_control.h"
#include "emd_err.h"
#include "emd_event.h"
#include "emd_forward.h"
#include "emd_ingest.h"
#include "emd_log.h"
#include "emd_spool.h"
#include "emitd.h"

/* A `flush` being waited for: checked every 100 ms until the spool is
 * empty, the time is up, or the client left. */
struct emitd_flush {
  uv_timer_t timer;                   /* timer.data = this */
  struct emitd *d;
  struct emd_control_reply *r;        /* NULL once answered */
  struct emitd_flush *next;
  uint64_t deadline_ms;               /* uv_now() value */
  uint64_t timeout_ms;
  uint64_t sent_at_start;
};

/* Everything status and metrics show, from the modules' stats. The
 * arrays and the histogram live in the caller's frame. */
struct figures {
  struct emd_control_figures f;
  struct emd_control_count dead[4];
  struct emd_control_count rejected[5];
  struct emd_histogram batch;
  struct emd_histogram ack;           /* copied from the ingest's */
};

static void gather(struct emitd *d, struct figures *g)
{
  static const double bounds[] = EMD_FORWARD_BATCH_BOUNDS;
  struct emd_spool_stats ss;
  struct emd_ingest_stats is;
  struct emd_forward_stats fs;
  struct emd_control_figures *f = &g->f;
  uint64_t now = emitd_now_ms();

  emd_spool_stats(d->spool, &ss);
  emd_ingest_stats(d->ingest, &is);
  emd_forward_stats(d->forward, &fs);
  memset(g, 0, sizeof(*g));
  f->version = EMD_VERSION;
  f->uptime_s = (now - d->start_ms) / 1000;
  f->endpoint = d->cfg.upstream.endpoint;
  f->state = emd_forward_state_name(fs.state);
  f->last_status = fs.last_status;
  f->last_reply_age_s = fs.last_reply_ms == 0 ? -1
    : (int64_t)((now > fs.last_reply_ms ? now - fs.last_reply_ms : 0) / 1000);
  f->sent = fs.sent;
  f->retried = fs.retried;
  f->requests_2xx = fs.requests_2xx;
  f->requests_4xx = fs.requests_4xx;
  f->requests_5xx = fs.requests_5xx;
  f->requests_other = fs.requests_other;
  f->requests_error = fs.requests_error;
  f->inflight = fs.inflight;
  f->pending = ss.pending;
  f->pending_bytes = ss.pending_bytes;
  f->oldest_age_s = ss.oldest_ms == 0 || now < ss.oldest_ms ? 0
                    : (now - ss.oldest_ms) / 1000;
  f->dead = ss.dead;
  f->ids_rebuilding = ss.ids_rebuilding;
  f->dropped = ss.dropped;
  g->dead[0] = (struct emd_control_count){ "rejected", fs.dead_rejected };
  g->dead[1] = (struct emd_control_count){ "status", fs.dead_status };
  g->dead[2] = (struct emd_control_count){ "attempts", fs.dead_attempts };
  g->dead[3] = (struct emd_control_count){ "expired", ss.expired };
  f->dead_by_reason = g->dead;
  f->n_dead_by_reason = 4;
  g->rejected[0] = (struct emd_control_count){ "bad_json", is.bad_json };
  g->rejected[1] = (struct emd_control_count){ "too_large", is.too_large };
  g->rejected[2] = (struct emd_control_count){ "invalid", is.invalid };
  g->rejected[3] = (struct emd_control_count){ "spool_full", is.spool_full };
  g->rejected[4] = (struct emd_control_count){ "shutting_down",
                                               is.shutting_down };
  f->rejected_by_reason = g->rejected;
  f->n_rejected_by_reason = 5;
  f->clients = is.clients;
  f->connections = is.connections;
  f->refused = is.refused;
  f->received = is.received;
  f->accepted = is.accepted;
  f->duplicates = is.duplicates;
  g->ack = is.ack_latency_s;
  /* The forwarder keeps per-bucket counts in the histogram's own shape. */
  if (emd_histogram_init(&g->batch, bounds,
                         sizeof(bounds) / sizeof(bounds[0])) == 0) {
    memcpy(g->batch.count, fs.batch_count, sizeof(fs.batch_count));
    g->batch.sum = (double)fs.batch_events;
    f->batch_events = &g->batch;
  }
  f->ack_latency_s = &g->ack;
  /* f->batch_bytes: when the forwarder keeps it. */
}

static void op_status(void *data, struct emd_control_reply *r)
{
  struct figures g;

  gather(data, &g);
  emd_control_reply_status(r, &g.f);
}

static void op_metrics(void *data, struct emd_control_reply *r)
{
  struct figures g;

  gather(data, &g);
  emd_control_reply_metrics(r, &g.f);
}

static void on_flush_closed(uv_handle_t *h)
{
  free(h->data);
}

/* Answers w (if not yet) and lets it go. */
static void flush_end(struct emitd_flush *w, bool stopping)
{
  struct emd_spool_stats ss;
  struct emd_forward_stats fs;
  struct emitd_flush **pp;

  emd_spool_stats(w->d->spool, &ss);
  emd_forward_stats(w->d->forward, &fs);
  if (stopping)
    emd_control_reply_error(w->r, "shutting_down", "emitd is stopping; %"
                            PRIu64 " events stay in the spool", ss.pending);
  else
    emd_control_reply_flush(w->r, ss.pending, fs.sent - w->sent_at_start,
                            w->timeout_ms, ss.pending ?
                            emd_forward_state_name(fs.state) : NULL);
  w->r = NULL;
  for (pp = &w->d->flushes; *pp != w; pp = &(*pp)->next)
    ;
  *pp = w->next;
  if (w->d->flushes == NULL && !w->d->stopping)
    emd_forward_flush(w->d->forward, false);
  uv_close((uv_handle_t *)&w->timer, on_flush_closed);
}

static void on_flush_tick(uv_timer_t *t)
{
  struct emitd_flush *w = t->data;
  struct emd_spool_stats ss;

  emd_spool_stats(w->d->spool, &ss);
  if (ss.pending == 0 || uv_now(t->loop) >= w->deadline_ms ||
      emd_control_reply_orphaned(w->r))
    flush_end(w, false);
}

static void op_flush(void *data, uint64_t timeout_ms,
                     struct emd_control_reply *r)
{
  struct emitd *d = data;
  struct emd_forward_stats fs;
  struct emitd_flush *w = calloc(1, sizeof(*w));

  if (w == NULL) {
    emd_control_reply_error(r, "internal", "out of memory");
    return;
  }
  emd_forward_stats(d->forward, &fs);
  w->d = d;
  w->r = r;
  w->timeout_ms = timeout_ms;
  w->sent_at_start = fs.sent;
  w->deadline_ms = uv_now(&d->loop) + timeout_ms;
  w->next = d->flushes;
  d->flushes = w;
  uv_timer_init(&d->loop, &w->timer);
  w->timer.data = w;
  emd_forward_flush(d->forward, true);  /* partial batches go at once */
  uv_timer_start(&w->timer, on_flush_tick, 0, 100);
}

void emitd_control_stop(struct emitd *d)
{
  while (d->flushes != NULL)
    flush_end(d->flushes, true);
}

static void op_reload(void *data, struct emd_control_reply *r)
{
  char err[512];

  if (emitd_reload(data, err, sizeof(err)) != 0)
    emd_control_reply_error(r, "config", "%s", err);
  else
    emd_control_reply_ok(r, NULL, 0);
}

static int dead_row(void *data, const struct emd_spool_item *it)
{
  const struct emd_control_dead_item di = {
    .seq = it->seq, .id = it->id, .id_len = it->id_len,
    .reason = it->reason, .reason_len = it->reason_len,
    .status = it->status, .excerpt = it->excerpt,
    .excerpt_len = it->excerpt_len, .time_ms = it->time_ms,
  };

  emd_control_list_dead(data, &di);
  return 0;
}

/* Answers a list command: up to limit rows from list(), and the total. */
static void reply_list(struct emd_control_reply *r, struct emd_spool *sp,
                       const char *name, uint64_t total, uint64_t limit,
                       int (*list)(struct emd_spool *, size_t,
                                   emd_spool_list_fn, void *),
                       emd_spool_list_fn row)
{
  struct emd_json j;
  int rc;

  emd_json_init(&j);
  emd_control_list_begin(&j, name);
  rc = list(sp, limit, row, &j);
  emd_control_list_end(&j, total);
  if (rc < 0)
    emd_control_reply_error(r, emd_errcode(rc), "cannot read the %s list: "
                            "%s", name, emd_strerror(rc));
  else
    emd_control_reply_json(r, &j);
  emd_json_free(&j);
}

static void op_dead_list(void *data, uint64_t limit,
                         struct emd_control_reply *r)
{
  struct emitd *d = data;
  struct emd_spool_stats ss;

  emd_spool_stats(d->spool, &ss);
  reply_list(r, d->spool, "dead", ss.dead, limit, emd_spool_list_dead,
             dead_row);
}

static int pending_row(void *data, const struct emd_spool_item *it)
{
  emd_event *ev = buildless__service__v1__event__unpack(NULL, it->event_len,
                                                        it->event);
  const char *coll = ev != NULL ? ev->collection : NULL;
  const struct emd_control_pending_item pi = {
    .seq = it->seq, .id = it->id, .id_len = it->id_len, .collection = coll,
    .collection_len = coll != NULL ? strlen(coll) : 0,
    .accepted_ms = it->accepted_ms, .attempts = it->attempts,
  };

  emd_control_list_pending(data, &pi);
  if (ev != NULL)
    buildless__service__v1__event__free_unpacked(ev, NULL);
  return 0;
}

static void op_pending(void *data, uint64_t limit,
                       struct emd_control_reply *r)
{
  struct emitd *d = data;
  struct emd_spool_stats ss;

  emd_spool_stats(d->spool, &ss);
  reply_list(r, d->spool, "pending", ss.pending, limit,
             emd_spool_list_pending, pending_row);
}

/* dead retry ID: the dead letter whose event id is ID, else whose seq is
 * ID. */
struct find {
  const char *target;
  uint64_t seq;
};

static int find_row(void *data, const struct emd_spool_item *it)
{
  struct find *f = data;
  char *end;
  uint64_t n;

  if (strlen(f->target) == it->id_len &&
      memcmp(f->target, it->id, it->id_len) == 0) {
    f->seq = it->seq;
    return 1;
  }
  n = strtoull(f->target, &end, 10);
  if (*end == '\0' && n == it->seq && f->seq == 0)
    f->seq = it->seq;                 /* keep looking for an id match */
  return 0;
}

struct count_reply {
  struct emd_control_reply *r;
  const char *key;                    /* "retried", "purged" */
  struct emitd *d;
};

static void on_counted(void *data, int rc, uint64_t n)
{
  struct count_reply *c = data;

  if (rc == EMD_ENOTFOUND)
    emd_control_reply_error(c->r, "not_found", "no such dead letter");
  else if (rc != 0)
    emd_control_reply_error(c->r, emd_errcode(rc), "%s", emd_strerror(rc));
  else
    emd_control_reply_ok(c->r, c->key, n);
  if (rc == 0 && c->key[0] == 'r')
    emd_forward_kick(c->d->forward);
  free(c);
}

static void op_dead_retry(void *data, const char *target,
                          struct emd_control_reply *r)
{
  struct emitd *d = data;
  struct find f = { target, 0 };
  struct count_reply *c;
  int rc;

  if (strcmp(target, "all") != 0) {
    rc = emd_spool_list_dead(d->spool, d->cfg.spool.dead_max, find_row, &f);
    if (rc >= 0 && f.seq == 0) {
      emd_control_reply_error(r, "not_found", "no dead letter has seq or "
                              "id %s (emitctl dead list)", target);
      return;
    }
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) {
    emd_control_reply_error(r, "internal", "out of memory");
    return;
  }
  *c = (struct count_reply){ r, "retried", d };
  rc = emd_spool_dead_retry(d->spool, f.seq, on_counted, c);
  if (rc != 0) {
    free(c);
    emd_control_reply_error(r, emd_errcode(rc), "%s", emd_strerror(rc));
  }
}

static void op_dead_purge(void *data, struct emd_control_reply *r)
{
  struct emitd *d = data;
  struct count_reply *c = calloc(1, sizeof(*c));
  int rc;

  if (c == NULL) {
    emd_control_reply_error(r, "internal", "out of memory");
    return;
  }
  *c = (struct count_reply){ r, "purged", d };
  rc = emd_spool_dead_purge(d->spool, on_counted, c);
  if (rc != 0) {
    free(c);
    emd_control_reply_error(r, emd_errcode(rc), "%s", emd_strerror(rc));
  }
}

const struct emd_control_ops emitd_control_ops = {
  .status = op_status,
  .metrics = op_metrics,
  .flush = op_flush,
  .reload = op_reload,
  .dead_list = op_dead_list,
  .dead_retry = op_dead_retry,
  .dead_purge = op_dead_purge,
  .pending = op_pending,
};

