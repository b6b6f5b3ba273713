/* emd_control.c: see emd_control.h.
 *
 * Life of a connection: bytes read are kept in the connection's input
 * buffer; whole lines are taken from its front one at a time, each parsed
 * and handed to its callback with a fresh reply; the next line waits until
 * that reply is completed. So replies leave in command order without a
 * queue, and a client has at most one command running. Reading goes on
 * while a command runs (up to IN_MAX buffered bytes), so a client that
 * hangs up entirely is noticed and its running command orphaned. The
 * connection is freed in its close callback; a reply still owed then
 * only forgets it. */
#include "emd_control.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "emd_err.h"
#include "emd_log.h"

#define IN_MAX (64 * 1024)            /* buffered input before pausing */
#define IN_CHUNK (16 * 1024)          /* room offered to each read */
#define OUT_MAX (1024 * 1024)         /* unwritten bytes before pausing */
#define SAMPLE_MAX 40                 /* bad input quoted in messages */

struct conn;

struct emd_control_reply {
  struct conn *conn;                  /* NULL once orphaned */
  enum emd_control_verb verb;
};

struct conn {
  uv_pipe_t pipe;                     /* pipe.data = this */
  uv_shutdown_t sreq;                 /* sreq.data = this */
  struct emd_control *ctl;
  struct conn *prev, *next;           /* in ctl->conns */
  char *in;                           /* read, not yet processed */
  size_t len, cap;
  struct emd_control_reply *cur;      /* the command running, or NULL */
  bool skipping;                      /* inside an over-long line */
  bool eof;                           /* the client sent all it will */
  bool reading;                       /* uv_read_start in force */
  bool processing;                    /* inside conn_process */
  bool shut;                          /* uv_shutdown called */
  bool closing;                       /* uv_close called */
};

struct emd_control {
  uv_loop_t *loop;
  const struct emd_control_ops *ops;
  void *data;
  char *path;
  uv_pipe_t server;                   /* server.data = this */
  bool server_open;                   /* until its close callback */
  bool bound;                         /* we made the socket file */
  bool closing;                       /* emd_control_close was called */
  struct conn *conns;
  size_t nconns;
};

struct wreq {
  uv_write_t req;
  struct conn *conn;
  char data[];
};

/* ---- parsing ------------------------------------------------------------- */

#define TRY_LIST "try: status, metrics, flush [TIMEOUT], reload, " \
  "dead list [N], dead retry [ID|all], dead purge, pending [N], help"

const char *emd_control_help_text(void)
{
  return
    "  status               upstream state, pending events, sent, dead, "
    "uptime\n"
    "  metrics              Prometheus text, ending with # EOF\n"
    "  flush [TIMEOUT]      send now; answer once the spool is empty or\n"
    "                       TIMEOUT (default 30s) passed\n"
    "  reload               re-read the configuration and the API key "
    "file\n"
    "  dead list [N]        the oldest N dead letters (default 100)\n"
    "  dead retry [ID|all]  move a dead letter (seq or event id), or all\n"
    "                       (the default), back to pending\n"
    "  dead purge           delete every dead letter\n"
    "  pending [N]          the oldest N pending events (default 20)\n"
    "  help                 this list\n";
}

struct tok {
  const char *p;
  size_t n;
};

static bool is_blank(char c)
{
  return c == ' ' || c == '\t';
}

/* Splits line into at most max blank-separated tokens; returns how many
 * there are in all (more than max when too many). */
static size_t tokenize(const char *line, size_t len, struct tok *toks,
                       size_t max)
{
  size_t i = 0, n = 0;

  while (len > 0 && (is_blank(line[len - 1]) || line[len - 1] == '\r'))
    len--;
  while (i < len) {
    size_t start;

    while (i < len && is_blank(line[i]))
      i++;
    if (i == len)
      break;
    start = i;
    while (i < len && !is_blank(line[i]))
      i++;
    if (n < max) {
      toks[n].p = line + start;
      toks[n].n = i - start;
    }
    n++;
  }
  return n;
}

static bool tok_is(const struct tok *t, const char *word)
{
  return t->n == strlen(word) && strncasecmp(t->p, word, t->n) == 0;
}

/* A printable sample of untrusted bytes, for messages. */
static const char *sample(const struct tok *t, char *buf, size_t len)
{
  return emd_log_sample(t->p, t->n, buf, len);
}

/* Edit distance, for "did you mean"; words longer than 16 bytes are
 * simply "far". */
static size_t distance(const char *a, size_t na, const char *b)
{
  size_t nb = strlen(b), row[17], i, j;

  if (na > 16 || nb > 16)
    return 99;
  for (j = 0; j <= nb; j++)
    row[j] = j;
  for (i = 1; i <= na; i++) {
    size_t diag = row[0];

    row[0] = i;
    for (j = 1; j <= nb; j++) {
      size_t up = row[j];
      size_t cost = tolower((unsigned char)a[i - 1]) != b[j - 1];
      size_t best = diag + cost;

      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      if (up + 1 < best)
        best = up + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

/* The closest of words to t, if it is close enough to be a typo. */
static const char *suggest(const struct tok *t, const char *const *words,
                           size_t n)
{
  const char *best = NULL;
  size_t best_d = 3;

  if (t->n < 2)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    size_t d = distance(t->p, t->n, words[i]);

    if (d < best_d && d < strlen(words[i])) {
      best = words[i];
      best_d = d;
    }
  }
  return best;
}

static int bad(char *err, size_t errlen, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static int bad(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;

  if (errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return EMD_EBADCMD;
}

int emd_control_parse_duration(const char *s, size_t len, uint64_t *out)
{
  uint64_t v = 0, mult;
  size_t i = 0;

  while (i < len && s[i] >= '0' && s[i] <= '9') {
    if (v > (UINT64_MAX - 9) / 10)
      return EMD_EBADCMD;
    v = v * 10 + (uint64_t)(s[i] - '0');
    i++;
  }
  if (i == 0)
    return EMD_EBADCMD;
  if (i == len || (len - i == 1 && s[i] == 's'))
    mult = 1000;
  else if (len - i == 2 && s[i] == 'm' && s[i + 1] == 's')
    mult = 1;
  else if (len - i == 1 && s[i] == 'm')
    mult = 60 * 1000;
  else if (len - i == 1 && s[i] == 'h')
    mult = 3600 * 1000;
  else
    return EMD_EBADCMD;
  if (v > UINT64_MAX / mult)
    return EMD_EBADCMD;
  *out = v * mult;
  return 0;
}

/* A count N: 1 .. EMD_CONTROL_LIST_MAX. */
static int parse_limit(const struct tok *t, const char *cmd, uint64_t *out,
                       char *err, size_t errlen)
{
  uint64_t v = 0;
  char s[SAMPLE_MAX];

  for (size_t i = 0; i < t->n; i++) {
    if (t->p[i] < '0' || t->p[i] > '9' || v > EMD_CONTROL_LIST_MAX) {
      v = 0;
      break;
    }
    v = v * 10 + (uint64_t)(t->p[i] - '0');
  }
  if (v < 1 || v > EMD_CONTROL_LIST_MAX)
    return bad(err, errlen, "%s: bad count \"%s\": expected a number from "
               "1 to %d", cmd, sample(t, s, sizeof(s)), EMD_CONTROL_LIST_MAX);
  *out = v;
  return 0;
}

static int parse_target(const struct tok *t, struct emd_control_cmd *out,
                        char *err, size_t errlen)
{
  char s[SAMPLE_MAX];
  bool ok = t->n >= 1 && t->n <= EMD_CONTROL_TARGET_MAX;

  for (size_t i = 0; ok && i < t->n; i++)
    ok = isalnum((unsigned char)t->p[i]) && (unsigned char)t->p[i] < 0x80;
  if (!ok)
    return bad(err, errlen, "dead retry: bad target \"%s\": expected all, "
               "a dead letter's seq or its event id",
               sample(t, s, sizeof(s)));
  if (tok_is(t, "all")) {
    strcpy(out->target, "all");
  } else {
    memcpy(out->target, t->p, t->n);
    out->target[t->n] = '\0';
  }
  return 0;
}

static int parse_dead(const struct tok *toks, size_t n,
                      struct emd_control_cmd *out, char *err, size_t errlen)
{
  static const char *const subs[] = { "list", "retry", "purge" };
  const char *hint;
  char s[SAMPLE_MAX];

  if (n < 2)
    return bad(err, errlen, "dead: expected list, retry or purge");
  if (tok_is(&toks[1], "list")) {
    out->verb = EMD_CTL_DEAD_LIST;
    out->limit = EMD_CONTROL_DEAD_DEFAULT;
    if (n > 3)
      return bad(err, errlen, "dead list: too many arguments; expected "
                 "dead list [N]");
    return n == 3 ? parse_limit(&toks[2], "dead list", &out->limit, err,
                                errlen) : 0;
  }
  if (tok_is(&toks[1], "retry")) {
    out->verb = EMD_CTL_DEAD_RETRY;
    strcpy(out->target, "all");
    if (n > 3)
      return bad(err, errlen, "dead retry: too many arguments; expected "
                 "dead retry [ID|all]");
    return n == 3 ? parse_target(&toks[2], out, err, errlen) : 0;
  }
  if (tok_is(&toks[1], "purge")) {
    out->verb = EMD_CTL_DEAD_PURGE;
    if (n > 2)
      return bad(err, errlen, "dead purge: takes no arguments");
    return 0;
  }
  hint = suggest(&toks[1], subs, 3);
  if (hint != NULL)
    return bad(err, errlen, "dead: unknown subcommand \"%s\" (did you mean "
               "\"%s\"?); expected list, retry or purge",
               sample(&toks[1], s, sizeof(s)), hint);
  return bad(err, errlen, "dead: unknown subcommand \"%s\"; expected list, "
             "retry or purge", sample(&toks[1], s, sizeof(s)));
}

static int unknown(const struct tok *t, char *err, size_t errlen)
{
  static const char *const names[] = { "status", "metrics", "flush",
    "reload", "dead", "pending", "help" };
  const char *hint = suggest(t, names, sizeof(names) / sizeof(names[0]));
  char s[SAMPLE_MAX];

  if (hint != NULL)
    return bad(err, errlen, "unknown command \"%s\" (did you mean \"%s\"?); "
               TRY_LIST, sample(t, s, sizeof(s)), hint);
  return bad(err, errlen, "unknown command \"%s\"; " TRY_LIST,
             sample(t, s, sizeof(s)));
}

int emd_control_parse(const char *line, size_t len,
                      struct emd_control_cmd *out, char *err, size_t errlen)
{
  static const struct {
    const char *name;
    enum emd_control_verb verb;
  } plain[] = {
    { "status", EMD_CTL_STATUS }, { "metrics", EMD_CTL_METRICS },
    { "reload", EMD_CTL_RELOAD }, { "help", EMD_CTL_HELP },
  };
  struct tok toks[4];
  size_t n = tokenize(line, len, toks, 4);
  char s[SAMPLE_MAX];

  memset(out, 0, sizeof(*out));
  if (n == 0)
    return bad(err, errlen, "empty command; " TRY_LIST);
  for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
    if (!tok_is(&toks[0], plain[i].name))
      continue;
    out->verb = plain[i].verb;
    if (n > 1)
      return bad(err, errlen, "%s: takes no arguments, got \"%s\"",
                 plain[i].name, sample(&toks[1], s, sizeof(s)));
    return 0;
  }
  if (tok_is(&toks[0], "flush")) {
    out->verb = EMD_CTL_FLUSH;
    out->timeout_ms = EMD_CONTROL_FLUSH_DEFAULT_MS;
    if (n > 2)
      return bad(err, errlen, "flush: too many arguments; expected flush "
                 "[TIMEOUT]");
    if (n == 2 &&
        (emd_control_parse_duration(toks[1].p, toks[1].n, &out->timeout_ms)
         != 0 || out->timeout_ms > EMD_CONTROL_FLUSH_MAX_MS))
      return bad(err, errlen, "flush: bad timeout \"%s\": expected a "
                 "duration like 30s or 500ms (ms, s, m, h; at most 24h)",
                 sample(&toks[1], s, sizeof(s)));
    return 0;
  }
  if (tok_is(&toks[0], "pending")) {
    out->verb = EMD_CTL_PENDING;
    out->limit = EMD_CONTROL_PENDING_DEFAULT;
    if (n > 2)
      return bad(err, errlen, "pending: too many arguments; expected "
                 "pending [N]");
    return n == 2 ? parse_limit(&toks[1], "pending", &out->limit, err,
                                errlen) : 0;
  }
  if (tok_is(&toks[0], "dead"))
    return parse_dead(toks, n, out, err, errlen);  /* n > 3: refused there */
  return unknown(&toks[0], err, errlen);
}

/* ---- shapes of replies --------------------------------------------------- */

static uint64_t sum_counts(const struct emd_control_count *c, size_t n)
{
  uint64_t sum = 0;

  for (size_t i = 0; i < n; i++)
    sum += c[i].n;
  return sum;
}

void emd_control_status_json(const struct emd_control_figures *f,
                             struct emd_json *j)
{
  emd_json_obj_begin(j);
  emd_json_kbool(j, "ok", true);
  emd_json_kstr(j, "version", f->version);
  emd_json_ku64(j, "uptime_s", f->uptime_s);
  emd_json_key(j, "upstream");
  emd_json_obj_begin(j);
  emd_json_kstr(j, "endpoint", f->endpoint);
  emd_json_kstr(j, "state", f->state);
  emd_json_ki64(j, "last_status", f->last_status);
  emd_json_key(j, "last_reply_age_s");
  if (f->last_reply_age_s < 0)
    emd_json_null(j);
  else
    emd_json_i64(j, f->last_reply_age_s);
  emd_json_ku64(j, "inflight", f->inflight);
  emd_json_obj_end(j);
  emd_json_key(j, "spool");
  emd_json_obj_begin(j);
  emd_json_ku64(j, "pending", f->pending);
  emd_json_ku64(j, "pending_bytes", f->pending_bytes);
  emd_json_ku64(j, "oldest_age_s", f->oldest_age_s);
  emd_json_ku64(j, "dead", f->dead);
  if (f->ids_rebuilding)
    emd_json_kbool(j, "ids_rebuilding", true);
  emd_json_obj_end(j);
  emd_json_ku64(j, "sent", f->sent);
  emd_json_key(j, "dead_by_reason");
  emd_json_obj_begin(j);
  for (size_t i = 0; i < f->n_dead_by_reason; i++)
    emd_json_ku64(j, f->dead_by_reason[i].name, f->dead_by_reason[i].n);
  emd_json_obj_end(j);
  emd_json_key(j, "ingest");
  emd_json_obj_begin(j);
  emd_json_ku64(j, "clients", f->clients);
  emd_json_ku64(j, "received", f->received);
  emd_json_ku64(j, "accepted", f->accepted);
  emd_json_ku64(j, "duplicates", f->duplicates);
  emd_json_ku64(j, "rejected", sum_counts(f->rejected_by_reason,
                                          f->n_rejected_by_reason));
  emd_json_obj_end(j);
  emd_json_obj_end(j);
}

static void by_label(struct emd_text *t, const char *name, const char *help,
                     const char *label, const struct emd_control_count *c,
                     size_t n)
{
  if (n == 0)
    return;
  emd_metrics_family(t, name, EMD_METRIC_COUNTER, help);
  for (size_t i = 0; i < n; i++) {
    struct emd_label l = { label, c[i].name };

    emd_metrics_u64(t, name, &l, 1, c[i].n);
  }
}

static void histogram(struct emd_text *t, const char *name, const char *help,
                      const struct emd_histogram *h)
{
  if (h == NULL)
    return;
  emd_metrics_family(t, name, EMD_METRIC_HISTOGRAM, help);
  emd_metrics_histogram(t, name, NULL, 0, h);
}

static void upstream_metrics(const struct emd_control_figures *f,
                             struct emd_text *t)
{
  static const char *const states[] = { "ok", "backoff", "unauthorized",
    "forbidden", "misconfigured" };
  const struct emd_control_count classes[] = {
    { "2xx", f->requests_2xx }, { "4xx", f->requests_4xx },
    { "5xx", f->requests_5xx }, { "other", f->requests_other },
    { "error", f->requests_error },
  };

  emd_metrics_counter(t, "emitd_events_sent_total",
                      "Events the service accepted.", f->sent);
  emd_metrics_counter(t, "emitd_events_retried_total",
                      "Events put back for another attempt.", f->retried);
  by_label(t, "emitd_upstream_requests_total", "Upstream requests by "
           "status class (error: no reply).", "class", classes, 5);
  emd_metrics_gauge(t, "emitd_upstream_inflight_requests",
                    "Upstream requests in flight.", (double)f->inflight);
  emd_metrics_family(t, "emitd_upstream_state", EMD_METRIC_GAUGE,
                     "1 for the forwarder's current state, 0 for the "
                     "others.");
  for (size_t i = 0; i < 5; i++) {
    struct emd_label l = { "state", states[i] };

    emd_metrics_u64(t, "emitd_upstream_state", &l, 1,
                    f->state != NULL && strcmp(f->state, states[i]) == 0);
  }
  emd_metrics_gauge(t, "emitd_upstream_last_status", "HTTP status of the "
                    "last upstream reply (0: none).", (double)f->last_status);
}

void emd_control_metrics_text(const struct emd_control_figures *f,
                              struct emd_text *t)
{
  struct emd_label version = { "version", f->version ? f->version : "" };

  emd_metrics_family(t, "emitd_build_info", EMD_METRIC_GAUGE,
                     "Always 1; the version is a label.");
  emd_metrics_u64(t, "emitd_build_info", &version, 1, 1);
  emd_metrics_gauge(t, "emitd_uptime_seconds", "Seconds since emitd "
                    "started.", (double)f->uptime_s);
  emd_metrics_counter(t, "emitd_events_received_total", "Lines and frames "
                      "received on the event socket.", f->received);
  emd_metrics_counter(t, "emitd_events_accepted_total", "Events stored in "
                      "the spool.", f->accepted);
  emd_metrics_counter(t, "emitd_events_duplicate_total", "Events "
                      "acknowledged as duplicates, not stored again.",
                      f->duplicates);
  by_label(t, "emitd_events_rejected_total", "Events refused at the "
           "socket, by reason.", "reason", f->rejected_by_reason,
           f->n_rejected_by_reason);
  emd_metrics_counter(t, "emitd_events_dropped_total", "Pending events "
                      "evicted by spool.on_full = drop_oldest.", f->dropped);
  upstream_metrics(f, t);
  emd_metrics_gauge(t, "emitd_spool_pending_events", "Events waiting for "
                    "upstream.", (double)f->pending);
  emd_metrics_gauge(t, "emitd_spool_pending_bytes", "Bytes of the pending "
                    "events.", (double)f->pending_bytes);
  emd_metrics_gauge(t, "emitd_spool_oldest_pending_age_seconds", "Age of "
                    "the oldest pending event (0: none).",
                    (double)f->oldest_age_s);
  emd_metrics_gauge(t, "emitd_dead_letters", "Dead letters kept in the "
                    "spool.", (double)f->dead);
  emd_metrics_gauge(t, "emitd_spool_ids_rebuilding", "1 while the id table "
                    "is rebuilt after a crash: until then an event sent "
                    "again may be stored twice.",
                    f->ids_rebuilding ? 1.0 : 0.0);
  by_label(t, "emitd_dead_letters_total", "Events moved to dead letters "
           "since start, by reason.", "reason", f->dead_by_reason,
           f->n_dead_by_reason);
  emd_metrics_gauge(t, "emitd_clients", "Clients connected to the event "
                    "socket.", (double)f->clients);
  emd_metrics_counter(t, "emitd_connections_total", "Connections accepted "
                      "on the event socket.", f->connections);
  emd_metrics_counter(t, "emitd_connections_refused_total", "Connections "
                      "turned away (max_clients, allow lists).", f->refused);
  histogram(t, "emitd_ack_latency_seconds", "Time from reading an event to "
            "writing its reply.", f->ack_latency_s);
  histogram(t, "emitd_batch_size_events", "Events per upstream request.",
            f->batch_events);
  histogram(t, "emitd_batch_size_bytes", "Bytes per upstream request, "
            "before compression.", f->batch_bytes);
  emd_metrics_eof(t);
}

void emd_control_list_begin(struct emd_json *j, const char *name)
{
  emd_json_obj_begin(j);
  emd_json_kbool(j, "ok", true);
  emd_json_key(j, name);
  emd_json_arr_begin(j);
}

void emd_control_list_dead(struct emd_json *j,
                           const struct emd_control_dead_item *it)
{
  emd_json_obj_begin(j);
  emd_json_kstrn(j, "id", it->id, it->id_len);
  emd_json_ku64(j, "seq", it->seq);
  emd_json_kstrn(j, "reason", it->reason, it->reason_len);
  emd_json_ku64(j, "status", it->status);
  emd_json_kstrn(j, "excerpt", it->excerpt, it->excerpt_len);
  emd_json_ku64(j, "time", it->time_ms);
  emd_json_obj_end(j);
}

void emd_control_list_pending(struct emd_json *j,
                              const struct emd_control_pending_item *it)
{
  emd_json_obj_begin(j);
  emd_json_ku64(j, "seq", it->seq);
  emd_json_kstrn(j, "id", it->id, it->id_len);
  emd_json_kstrn(j, "collection", it->collection,
                 it->collection != NULL ? it->collection_len : 0);
  emd_json_ku64(j, "accepted_ms", it->accepted_ms);
  emd_json_ku64(j, "attempts", it->attempts);
  emd_json_obj_end(j);
}

void emd_control_list_end(struct emd_json *j, uint64_t total)
{
  emd_json_arr_end(j);
  emd_json_ku64(j, "total", total);
  emd_json_obj_end(j);
}

/* ---- completing replies -------------------------------------------------- */

static void conn_process(struct conn *c);
static void conn_send(struct conn *c, const char *p, size_t n,
                      const char *tail, size_t tn);

/* What must follow text so that the reader sees where the reply ends. */
static const char *tail_for(enum emd_control_verb verb, const char *text,
                            size_t len)
{
  static const char eof[] = "# EOF\n";

  if (verb != EMD_CTL_METRICS)
    return len > 0 && text[len - 1] == '\n' ? "" : "\n";
  if (len >= 6 && memcmp(text + len - 6, eof, 6) == 0 &&
      (len == 6 || text[len - 7] == '\n'))
    return "";
  if (len >= 5 && memcmp(text + len - 5, eof, 5) == 0 &&
      (len == 5 || text[len - 6] == '\n'))
    return "\n";
  return len == 0 || text[len - 1] == '\n' ? eof : "\n# EOF\n";
}

void emd_control_reply_done(struct emd_control_reply *r, const char *text,
                            size_t len)
{
  struct conn *c = r->conn;
  const char *tail;

  if (c != NULL) {
    c->cur = NULL;
    tail = tail_for(r->verb, text, len);
    conn_send(c, text, len, tail, strlen(tail));
    if (!c->processing)
      conn_process(c);
  }
  free(r);
}

bool emd_control_reply_orphaned(const struct emd_control_reply *r)
{
  return r->conn == NULL;
}

void emd_control_reply_json(struct emd_control_reply *r,
                            const struct emd_json *j)
{
  int rc = emd_json_finish(j);

  if (rc != 0) {
    emd_log_error("control", "cannot build a reply: %s", emd_strerror(rc));
    emd_control_reply_error(r, "internal", "cannot build the reply: %s",
                            emd_strerror(rc));
    return;
  }
  emd_control_reply_done(r, j->t.data, j->t.len);
}

void emd_control_reply_error(struct emd_control_reply *r, const char *code,
                             const char *fmt, ...)
{
  static const char oom[] =
    "{\"ok\":false,\"error\":\"internal\",\"message\":\"out of memory\"}";
  struct emd_json j;
  char msg[1024];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  emd_json_init(&j);
  emd_json_obj_begin(&j);
  emd_json_kbool(&j, "ok", false);
  emd_json_kstr(&j, "error", code);
  emd_json_kstr(&j, "message", msg);
  emd_json_obj_end(&j);
  if (emd_json_finish(&j) == 0)
    emd_control_reply_done(r, j.t.data, j.t.len);
  else
    emd_control_reply_done(r, oom, sizeof(oom) - 1);
  emd_json_free(&j);
}

void emd_control_reply_ok(struct emd_control_reply *r, const char *key,
                          uint64_t n)
{
  char buf[128];
  int len;

  if (key == NULL)
    len = snprintf(buf, sizeof(buf), "{\"ok\":true}");
  else
    len = snprintf(buf, sizeof(buf), "{\"ok\":true,\"%s\":%" PRIu64 "}",
                   key, n);
  emd_control_reply_done(r, buf, (size_t)len < sizeof(buf) ? (size_t)len
                         : sizeof(buf) - 1);
}

void emd_control_reply_status(struct emd_control_reply *r,
                              const struct emd_control_figures *f)
{
  struct emd_json j;

  emd_json_init(&j);
  emd_control_status_json(f, &j);
  emd_control_reply_json(r, &j);
  emd_json_free(&j);
}

void emd_control_reply_metrics(struct emd_control_reply *r,
                               const struct emd_control_figures *f)
{
  struct emd_text t;

  emd_text_init(&t);
  emd_control_metrics_text(f, &t);
  if (t.err != 0)
    emd_control_reply_error(r, "internal", "cannot build the metrics: %s",
                            emd_strerror(t.err));
  else
    emd_control_reply_done(r, t.data, t.len);
  emd_text_free(&t);
}

void emd_control_reply_flush(struct emd_control_reply *r, uint64_t pending,
                             uint64_t flushed, uint64_t timeout_ms,
                             const char *state)
{
  struct emd_json j;
  char msg[256], dur[32];

  if (timeout_ms % 1000 == 0)
    snprintf(dur, sizeof(dur), "%" PRIu64 "s", timeout_ms / 1000);
  else
    snprintf(dur, sizeof(dur), "%" PRIu64 "ms", timeout_ms);
  snprintf(msg, sizeof(msg), "%" PRIu64 " event%s still pending after %s%s%s"
           "%s", pending, pending == 1 ? "" : "s", dur,
           state != NULL ? " (upstream: " : "", state != NULL ? state : "",
           state != NULL ? ")" : "");
  emd_json_init(&j);
  emd_json_obj_begin(&j);
  emd_json_kbool(&j, "ok", pending == 0);
  if (pending > 0) {
    emd_json_kstr(&j, "error", "timeout");
    emd_json_kstr(&j, "message", msg);
  }
  emd_json_ku64(&j, "pending", pending);
  emd_json_ku64(&j, "flushed", flushed);
  emd_json_obj_end(&j);
  emd_control_reply_json(r, &j);
  emd_json_free(&j);
}

/* ---- connections --------------------------------------------------------- */

static void ctl_maybe_free(struct emd_control *ctl)
{
  if (ctl->closing && !ctl->server_open && ctl->conns == NULL) {
    free(ctl->path);
    free(ctl);
  }
}

static void on_conn_closed(uv_handle_t *h)
{
  struct conn *c = h->data;
  struct emd_control *ctl = c->ctl;

  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    ctl->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  ctl->nconns--;
  free(c->in);
  free(c);
  ctl_maybe_free(ctl);
}

/* Closes now; a command still running keeps its reply, orphaned. The
 * memory goes in the close callback. */
static void conn_close(struct conn *c)
{
  if (c->closing)
    return;
  c->closing = true;
  if (c->cur != NULL) {
    c->cur->conn = NULL;
    c->cur = NULL;
  }
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
  struct wreq *w = (struct wreq *)req;
  struct conn *c = w->conn;

  /* Writes cancelled by uv_close end here too, before the close
   * callback, so c is still there. */
  free(w);
  if (c->closing)
    return;
  if (status < 0) {
    emd_log_debug("control", "client left: %s", uv_strerror(status));
    conn_close(c);
    return;
  }
  conn_process(c);      /* may have waited for the output to drain */
}

static void conn_send(struct conn *c, const char *p, size_t n,
                      const char *tail, size_t tn)
{
  struct wreq *w;
  uv_buf_t buf;

  if (c->closing)
    return;
  w = malloc(sizeof(*w) + n + tn);
  if (w == NULL) {
    conn_close(c);
    return;
  }
  w->conn = c;
  if (n > 0)
    memcpy(w->data, p, n);
  memcpy(w->data + n, tail, tn);
  buf = uv_buf_init(w->data, (unsigned)(n + tn));
  if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written) != 0) {
    free(w);
    conn_close(c);
  }
}

static void dispatch(struct emd_control *ctl, const struct emd_control_cmd *cmd,
                     struct emd_control_reply *r)
{
  const struct emd_control_ops *ops = ctl->ops;
  void *d = ctl->data;

  switch (cmd->verb) {
  case EMD_CTL_STATUS:
    if (ops->status == NULL)
      break;
    ops->status(d, r);
    return;
  case EMD_CTL_METRICS:
    if (ops->metrics == NULL)
      break;
    ops->metrics(d, r);
    return;
  case EMD_CTL_FLUSH:
    if (ops->flush == NULL)
      break;
    ops->flush(d, cmd->timeout_ms, r);
    return;
  case EMD_CTL_RELOAD:
    if (ops->reload == NULL)
      break;
    ops->reload(d, r);
    return;
  case EMD_CTL_DEAD_LIST:
    if (ops->dead_list == NULL)
      break;
    ops->dead_list(d, cmd->limit, r);
    return;
  case EMD_CTL_DEAD_RETRY:
    if (ops->dead_retry == NULL)
      break;
    ops->dead_retry(d, cmd->target, r);
    return;
  case EMD_CTL_DEAD_PURGE:
    if (ops->dead_purge == NULL)
      break;
    ops->dead_purge(d, r);
    return;
  case EMD_CTL_PENDING:
    if (ops->pending == NULL)
      break;
    ops->pending(d, cmd->limit, r);
    return;
  case EMD_CTL_HELP: {
    struct emd_json j;

    emd_json_init(&j);
    emd_json_obj_begin(&j);
    emd_json_kbool(&j, "ok", true);
    emd_json_kstr(&j, "help", emd_control_help_text());
    emd_json_obj_end(&j);
    emd_control_reply_json(r, &j);
    emd_json_free(&j);
    return;
  }
  }
  emd_control_reply_error(r, "internal", "this command is not available "
                          "in this emitd");
}

/* Starts the command on line[0..len) (no newline). Blank lines are
 * skipped without a reply. */
static void run_line(struct conn *c, const char *line, size_t len)
{
  struct emd_control_reply *r;
  struct emd_control_cmd cmd;
  char err[512];
  size_t i;

  for (i = 0; i < len; i++)
    if (!is_blank(line[i]) && line[i] != '\r')
      break;
  if (i == len)
    return;
  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    conn_close(c);
    return;
  }
  r->conn = c;
  c->cur = r;
  if (len > EMD_CONTROL_LINE_MAX) {
    r->verb = EMD_CTL_STATUS;     /* any verb that answers JSON */
    emd_control_reply_error(r, "too_large", "command line longer than %d "
                            "bytes; skipped", EMD_CONTROL_LINE_MAX);
    return;
  }
  if (emd_control_parse(line, len, &cmd, err, sizeof(err)) != 0) {
    r->verb = EMD_CTL_STATUS;
    emd_control_reply_error(r, "bad_command", "%s", err);
    return;
  }
  if (emd_log_enabled(EMD_LOG_DEBUG)) {
    char sample_buf[64];

    emd_log_debug("control", "command: %s",
                  emd_log_sample(line, len, sample_buf, sizeof(sample_buf)));
  }
  r->verb = cmd.verb;
  dispatch(c->ctl, &cmd, r);
}

static void consume(struct conn *c, size_t n)
{
  memmove(c->in, c->in + n, c->len - n);
  c->len -= n;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
  conn_close(req->data);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static bool peer_gone(struct conn *c);

/* Reads while there is room and input may come; once the client is done
 * and every reply is out, closes its side. */
static void conn_update(struct conn *c)
{
  bool want;

  if (c->closing)
    return;
  /* A client that left entirely cannot read the answer of the command
   * it waits for; let its owner know (orphaned) and stop here. */
  if (c->eof && c->cur != NULL && peer_gone(c)) {
    emd_log_debug("control", "client left while a command was running");
    conn_close(c);
    return;
  }
  want = !c->eof && c->len < IN_MAX;
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) != 0) {
      conn_close(c);
      return;
    }
    c->reading = true;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = false;
  }
  if (c->eof && c->cur == NULL && c->len == 0 && !c->shut) {
    c->shut = true;
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->pipe, on_shutdown) != 0)
      conn_close(c);
  }
}

/* Runs the commands in the input, one at a time: stops at a command that
 * has not answered yet, and while the client is slow to read. */
static void conn_process(struct conn *c)
{
  if (c->processing || c->closing)
    return;
  c->processing = true;
  while (c->cur == NULL && !c->closing &&
         c->pipe.write_queue_size < OUT_MAX) {
    char *nl = c->len > 0 ? memchr(c->in, '\n', c->len) : NULL;
    size_t n;

    if (c->skipping) {
      /* The tail of an over-long line, already answered. */
      if (nl == NULL) {
        c->len = 0;
        if (c->eof)
          c->skipping = false;
        break;
      }
      consume(c, (size_t)(nl - c->in) + 1);
      c->skipping = false;
      continue;
    }
    if (nl == NULL) {
      /* No whole line: wait for more, unless there will be none, or it
       * is too long already ("+ 1" leaves room for a "\r"). */
      if (c->len > EMD_CONTROL_LINE_MAX + 1) {
        run_line(c, c->in, c->len);
        c->len = 0;
        c->skipping = !c->eof;
      } else if (c->eof && c->len > 0) {
        n = c->len;
        run_line(c, c->in, n);
        c->len = 0;
      } else {
        break;
      }
      continue;
    }
    n = (size_t)(nl - c->in);
    run_line(c, c->in, n > 0 && c->in[n - 1] == '\r' ? n - 1 : n);
    consume(c, n + 1);
  }
  c->processing = false;
  conn_update(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct conn *c = h->data;

  (void)suggested;
  if (c->cap - c->len < IN_CHUNK) {
    size_t cap = c->len + IN_CHUNK;
    char *p = realloc(c->in, cap);

    if (p == NULL) {
      *buf = uv_buf_init(NULL, 0);      /* on_read gets UV_ENOBUFS */
      return;
    }
    c->in = p;
    c->cap = cap;
  }
  *buf = uv_buf_init(c->in + c->len, (unsigned)(c->cap - c->len));
}

/* True when the peer closed its socket altogether, not only its writing
 * side: Linux reports POLLHUP on a Unix stream socket only then. */
static bool peer_gone(struct conn *c)
{
  struct pollfd pfd;
  uv_os_fd_t fd;

  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0)
    return true;
  pfd.fd = fd;
  pfd.events = POLLIN;
  pfd.revents = 0;
  return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  struct conn *c = s->data;

  (void)buf;
  if (nread == 0)
    return;
  if (nread == UV_EOF) {
    c->eof = true;
    conn_process(c);
    return;
  }
  if (nread < 0) {
    conn_close(c);
    return;
  }
  c->len += (size_t)nread;
  conn_process(c);
}

static void on_connection(uv_stream_t *server, int status)
{
  struct emd_control *ctl = server->data;
  struct conn *c;

  if (status != 0) {
    emd_log_warn("control", "accept failed: %s", uv_strerror(status));
    return;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return;
  c->ctl = ctl;
  uv_pipe_init(ctl->loop, &c->pipe, 0);
  c->pipe.data = c;
  c->next = ctl->conns;
  if (ctl->conns != NULL)
    ctl->conns->prev = c;
  ctl->conns = c;
  ctl->nconns++;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
    conn_close(c);
    return;
  }
  if (ctl->nconns > EMD_CONTROL_MAX_CLIENTS) {
    static const char msg[] = "{\"ok\":false,\"error\":\"too_many_clients\","
      "\"message\":\"too many control clients; try again later\"}\n";

    emd_log_warn("control", "refused a control client: %d connected",
                 EMD_CONTROL_MAX_CLIENTS);
    conn_send(c, msg, sizeof(msg) - 1, "", 0);
    c->eof = true;
  }
  conn_update(c);
}

/* ---- the listening socket ------------------------------------------------ */

/* True when something accepts connections on path. Non-blocking, so a
 * full backlog counts as alive rather than hanging the start. */
static bool socket_alive(const char *path)
{
  struct sockaddr_un sa;
  bool alive;
  int fd;

  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path));
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return false;
  alive = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ||
          errno == EAGAIN || errno == EINPROGRESS;
  close(fd);
  return alive;
}

/* Makes way for the socket: nothing there, or a stale socket removed. */
static int clear_path(const char *path, char *err, size_t errlen)
{
  struct sockaddr_un sa;
  struct stat st;

  if (strlen(path) >= sizeof(sa.sun_path)) {
    snprintf(err, errlen, "control socket path is too long (%zu bytes, at "
             "most %zu): %s", strlen(path), sizeof(sa.sun_path) - 1, path);
    return -ENAMETOOLONG;
  }
  if (lstat(path, &st) != 0) {
    if (errno == ENOENT)
      return 0;
    snprintf(err, errlen, "cannot use %s as the control socket: %s", path,
             strerror(errno));
    return -errno;
  }
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(err, errlen, "%s exists and is not a socket; move it away or "
             "set agent.control_socket", path);
    return -EEXIST;
  }
  if (socket_alive(path)) {
    snprintf(err, errlen, "%s is in use: another process (emitd?) listens "
             "on it; stop it or set agent.control_socket", path);
    return -EADDRINUSE;
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    snprintf(err, errlen, "cannot remove the stale socket %s: %s", path,
             strerror(errno));
    return -errno;
  }
  return 0;
}

static int bind_socket(struct emd_control *ctl, char *err, size_t errlen)
{
  mode_t old;
  int rc;

  rc = clear_path(ctl->path, err, errlen);
  if (rc != 0)
    return rc;
  /* Mode 0600 from the first moment: no window in which another user
   * could connect. The chmod is for file systems that ignore the umask
   * for sockets. */
  old = umask(0177);
  rc = uv_pipe_bind(&ctl->server, ctl->path);
  umask(old);
  if (rc == 0) {
    ctl->bound = true;
    rc = chmod(ctl->path, 0600) == 0 ? 0 : -errno;
  }
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&ctl->server, 16, on_connection);
  if (rc != 0)
    snprintf(err, errlen, "cannot listen on %s: %s", ctl->path,
             uv_strerror(rc));
  return rc;
}

static void on_server_closed(uv_handle_t *h)
{
  struct emd_control *ctl = h->data;

  ctl->server_open = false;
  ctl_maybe_free(ctl);
}

int emd_control_open(uv_loop_t *loop, const char *path,
                     const struct emd_control_ops *ops, void *data,
                     struct emd_control **out, char *err, size_t errlen)
{
  struct emd_control *ctl;
  int rc;

  if (errlen > 0)
    err[0] = '\0';
  ctl = calloc(1, sizeof(*ctl));
  if (ctl == NULL)
    return -ENOMEM;
  ctl->loop = loop;
  ctl->ops = ops;
  ctl->data = data;
  ctl->path = strdup(path);
  if (ctl->path == NULL) {
    free(ctl);
    return -ENOMEM;
  }
  rc = uv_pipe_init(loop, &ctl->server, 0);
  if (rc != 0) {
    free(ctl->path);
    free(ctl);
    return rc;
  }
  ctl->server.data = ctl;
  ctl->server_open = true;
  rc = bind_socket(ctl, err, errlen);
  if (rc != 0)
    goto fail;
  *out = ctl;
  return 0;

fail:
  emd_control_close(ctl);
  return rc;
}

void emd_control_close(struct emd_control *ctl)
{
  if (ctl == NULL || ctl->closing)
    return;
  ctl->closing = true;
  for (struct conn *c = ctl->conns; c != NULL; c = c->next)
    conn_close(c);      /* frees only in its close callback */
  uv_close((uv_handle_t *)&ctl->server, on_server_closed);
  if (ctl->bound)
    unlink(ctl->path);
  ctl_maybe_free(ctl);
}

size_t emd_control_clients(const struct emd_control *ctl)
{
  return ctl->nconns;
}
