/* emd_ingest.c: see emd_ingest.h.
 *
 * Life of a connection: read callbacks hand in bytes (into one buffer
 * shared by every connection, since each read is consumed at once); whole
 * lines are decoded and queued on the spool straight away, and only an
 * unfinished line is copied into the connection's own buffer. Every line
 * that needs a reply takes a slot in the connection's reply ring, in line
 * order: an error is ready at once, an event waits for its spool callback.
 * Ready slots at the head of the ring are formatted into an output buffer
 * and written. Spool callbacks come in bursts (one per event of a group
 * commit), so they only mark their connection dirty; each dirty connection
 * is flushed once, at the end of the loop turn. The connection is freed
 * only when its handle is closed and no spool callback is owed to it. */
#include "emd_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "emd_arena.h"
#include "emd_codec.h"
#include "emd_err.h"
#include "emd_frame.h"
#include "emd_log.h"
#include "emd_varint.h"

#define READ_BUF (64 * 1024)          /* the shared read buffer */
#define MAX_SLOTS 8192                /* unsent replies before pausing */
#define MAX_OUT (1024 * 1024)         /* unwritten reply bytes, likewise */
#define MSG_MAX 512                   /* longest error message */
#define ACCEPT_BURST 64               /* accepts per loop turn, at most */
#define SCRATCH_KEEP (256 * 1024)     /* an event's arena kept for the next */

enum slot_state { SLOT_WAIT, SLOT_READY };

struct slot {
  uint8_t state;                      /* enum slot_state */
  uint8_t id_len;
  uint8_t timer_len;
  bool duplicate;
  int rc;                             /* 0 or an emd_err */
  uint32_t line;                      /* line or frame number, from 1 */
  uint32_t ordinal;
  uint64_t seq;
  uint64_t t0_ns;                     /* when its line was read (uv_hrtime) */
  char *msg;                          /* error message (malloc'd) or NULL */
  char id[EMD_ID_MAX];
  uint8_t timer[EMD_TIMER_MAX];
};

/* The base64 of a timer emitd made (16 bytes), as a text reply shows it.
 * Replies repeat a few timers (a connection's own, a few scopes'), so
 * their text is kept instead of encoded for every reply (10 KiB). */
#define TIMER_B64_LEN 24              /* base64 of EMD_TIMER_LEN bytes */
#define TIMER_B64_SLOTS 256           /* direct-mapped by the first two
                                       * bytes: a few dozen timers seldom
                                       * meet in one slot */

struct timer_b64 {
  uint8_t timer[EMD_TIMER_LEN];
  char text[TIMER_B64_LEN];           /* text[0] == '\0': slot unused */
};

struct outbuf {
  char *data;
  size_t len;
  size_t cap;
};

struct conn {
  uv_pipe_t pipe;                     /* pipe.data = this */
  struct emd_ingest *in;
  struct conn *prev, *next;           /* in in->conns */
  struct conn *dirty_next;            /* in in->dirty, while dirty */
  bool dirty;                         /* spool callbacks made replies ready;
                                       * flushed at the end of the turn */
  struct emd_framer framer;           /* bytes -> lines or frames */
  uint32_t line;                      /* lines (frames) seen so far */
  bool reading;                       /* uv_read_start is in force */
  bool paused;                        /* stopped: client not reading */
  bool eof;                           /* no more input: close when done */
  bool shut;                          /* uv_shutdown called */
  bool closed;                        /* uv_close called */
  bool handle_gone;                   /* close callback ran */
  bool refuse;                        /* turned away at accept */
  struct slot *slots;                 /* ring of replies in line order */
  size_t cap, head, count;            /* cap: 0 or a power of 2 */
  size_t fill;                        /* offset from head of the next slot
                                       * a spool callback may be for */
  size_t owed;                        /* spool callbacks still to come */
  struct outbuf out[2];               /* out[cur] gathers, the other is
                                       * being written */
  int cur;
  bool writing;
  uv_write_t wreq;
  uv_shutdown_t sreq;
  struct emd_enrich_conn enrich;
  uid_t uid;
  gid_t gid;
  pid_t pid;
};

struct emd_ingest {
  uv_loop_t *loop;
  const struct emd_config *cfg;
  struct emd_spool *sp;
  struct emd_enrich *en;
  uv_pipe_t server;
  bool server_open;                   /* until its close callback */
  bool server_closing;
  bool bound;                         /* we made the socket file */
  bool stopping;                      /* emd_ingest_stop was called */
  bool closing;                       /* emd_ingest_close was called */
  bool blocked;                       /* spool full (on_full = block) */
  uv_check_t turn;                    /* end of a loop turn: new burst */
  uv_idle_t resume;                   /* next turn: accept what waits */
  uv_check_t flusher;                 /* end of a turn: flush in->dirty */
  uv_idle_t flusher_next;             /* or at the start of the next, if
                                       * the check of this one has run */
  bool flusher_closing;
  int extra_handles;                  /* turn, resume and the flushers,
                                       * until closed */
  unsigned accepted_this_turn;
  bool accept_waiting;                /* a connection is left to accept */
  struct conn *conns;
  struct conn *dirty;                 /* connections to flush this turn */
  emd_ingest_idle_cb idle_cb;
  void *idle_data;
  struct emd_ingest_stats st;
  struct emd_codec_opts opts;
  struct emd_arena scratch;           /* the event at hand, decoded and
                                       * enriched: the spool copies what
                                       * it keeps, so one is reused */
  struct timer_b64 timer_b64[TIMER_B64_SLOTS];
  uint64_t now_ns;                    /* uv_hrtime() of the read at hand */
  uint64_t now_ms;                    /* the wall clock at that read (ms
                                       * since the epoch): "now" for the
                                       * events of its lines (SPEC 2.1) */
  char readbuf[READ_BUF];
  bool readbuf_busy;
};

static void conn_flush(struct conn *c);
static void conn_update_reading(struct conn *c);
static void ingest_maybe_free(struct emd_ingest *in);
static void on_resume_accept(uv_idle_t *h);

static uint64_t now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- output ------------------------------------------------------------ */

static int out_reserve(struct outbuf *o, size_t n)
{
  size_t cap;
  char *p;

  if (o->len + n <= o->cap)
    return 0;
  cap = o->cap ? o->cap : 4096;
  while (cap < o->len + n)
    cap *= 2;
  p = realloc(o->data, cap);
  if (p == NULL)
    return -ENOMEM;
  o->data = p;
  o->cap = cap;
  return 0;
}

/* Appends s as the inside of a JSON string. Bytes outside ASCII become '?':
 * messages are ours and ASCII, and a client's bytes quoted in one may not
 * be valid UTF-8. */
static char *put_json_str(char *d, const char *s, size_t n)
{
  static const char hex[] = "0123456789abcdef";

  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];

    if (ch == '"' || ch == '\\') {
      *d++ = '\\';
      *d++ = (char)ch;
    } else if (ch < 0x20) {
      memcpy(d, "\\u00", 4);
      d[4] = hex[ch >> 4];
      d[5] = hex[ch & 15];
      d += 6;
    } else {
      *d++ = ch < 0x80 ? (char)ch : '?';
    }
  }
  return d;
}

static char *put_bytes(char *d, const void *s, size_t n)
{
  memcpy(d, s, n);
  return d + n;
}

#define PUT_LIT(d, s) put_bytes((d), (s), sizeof(s) - 1)

/* v in decimal, as printf's PRIu64 writes it: its digits counted from
 * its bit length, then written from the end, two digits at a time. */
static char *put_dec(char *d, uint64_t v)
{
  static const char pairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233"
    "34353637383940414243444546474849505152535455565758596061626364656667"
    "6869707172737475767778798081828384858687888990919293949596979899";
  /* p10[t] = 10^t, but 0 for t = 0 (v = 0 has one digit too). */
  static const uint64_t p10[20] = {
    0, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000,
    1000000000, 10000000000u, 100000000000u, 1000000000000u,
    10000000000000u, 100000000000000u, 1000000000000000u,
    10000000000000000u, 100000000000000000u, 1000000000000000000u,
    10000000000000000000u,
  };
  /* t = floor(bits * log10(2)): v has t or t + 1 digits. */
  unsigned t = (unsigned)(64 - __builtin_clzll(v | 1)) * 1233 >> 12;
  size_t n = t + 1 - (v < p10[t]);
  char *end, *q;

  end = q = d + n;
  while (v >= 100) {
    q -= 2;
    memcpy(q, pairs + 2 * (v % 100), 2);
    v /= 100;
  }
  if (v >= 10) {
    q -= 2;
    memcpy(q, pairs + 2 * v, 2);
  } else {
    *--q = (char)('0' + v);
  }
  return end;
}

/* Standard base64 with padding, as emd_codec_base64 writes it. */
static char *put_base64(char *d, const uint8_t *s, size_t n)
{
  static const char tab[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i;
  uint32_t v;

  for (i = 0; i + 2 < n; i += 3) {
    v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    d[0] = tab[v >> 18];
    d[1] = tab[(v >> 12) & 63];
    d[2] = tab[(v >> 6) & 63];
    d[3] = tab[v & 63];
    d += 4;
  }
  if (i < n) {
    v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
    d[0] = tab[v >> 18];
    d[1] = tab[(v >> 12) & 63];
    d[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
    d[3] = '=';
    d += 4;
  }
  return d;
}

static char *put_varint(char *d, uint64_t v)
{
  return (char *)emd_varint_put((uint8_t *)d, v);
}

/* A proto3 field as protobuf-c packs it: left out when empty or zero. */
static char *pb_bytes(char *d, uint8_t key, const void *s, size_t n)
{
  if (n == 0)
    return d;
  *d++ = (char)key;
  d = put_varint(d, n);
  return put_bytes(d, s, n);
}

static char *pb_uint(char *d, uint8_t key, uint64_t v)
{
  if (v == 0)
    return d;
  *d++ = (char)key;
  return put_varint(d, v);
}

/* Field keys of emitd.v1.Ack: field number << 3 | wire type. */
enum {
  ACK_OK = 1 << 3 | 0, ACK_ID = 2 << 3 | 2, ACK_SEQ = 3 << 3 | 0,
  ACK_TIMER = 4 << 3 | 2, ACK_ORDINAL = 5 << 3 | 0,
  ACK_DUPLICATE = 6 << 3 | 0, ACK_ERROR = 7 << 3 | 2,
  ACK_MESSAGE = 8 << 3 | 2, ACK_LINE = 9 << 3 | 0,
};

static const char *reply_msg(const struct emd_ingest_reply *r)
{
  return r->msg != NULL ? r->msg : emd_strerror(r->rc);
}

static inline size_t reply_max(const struct emd_ingest_reply *r)
{
  /* Every message byte escaped to 6 (text), the rest with room to spare
   * (either mode). */
  if (r->rc != 0)
    return 128 + strlen(emd_errcode(r->rc)) + 6 * strlen(reply_msg(r));
  return 128 + r->id_len + 2 * r->timer_len;
}

size_t emd_ingest_reply_max(const struct emd_ingest_reply *r)
{
  return reply_max(r);
}

/* The usual text reply: an event stored, its 16-byte timer's base64 at
 * hand (timer_b64, TIMER_B64_LEN characters). */
static size_t format_text_stored(char *out, const char *id, size_t id_len,
                                 uint64_t seq, const char *timer_b64,
                                 uint32_t ordinal)
{
  char *d = out;

  d = PUT_LIT(d, "{\"ok\":true,\"id\":\"");
  d = put_bytes(d, id, id_len);
  d = PUT_LIT(d, "\",\"seq\":");
  d = put_dec(d, seq);
  d = PUT_LIT(d, ",\"timer\":\"");
  d = put_bytes(d, timer_b64, TIMER_B64_LEN);
  d = PUT_LIT(d, "\",\"ordinal\":");
  d = put_dec(d, ordinal);
  d = PUT_LIT(d, "}\n");
  return (size_t)(d - out);
}

static size_t format_text(const struct emd_ingest_reply *r, char *out)
{
  char *d = out;

  if (r->rc != 0) {
    const char *code = emd_errcode(r->rc), *m = reply_msg(r);

    d = PUT_LIT(d, "{\"ok\":false,\"line\":");
    d = put_dec(d, r->line);
    d = PUT_LIT(d, ",\"error\":\"");
    d = put_bytes(d, code, strlen(code));
    d = PUT_LIT(d, "\",\"message\":\"");
    d = put_json_str(d, m, strlen(m));
    d = PUT_LIT(d, "\"}\n");
    return (size_t)(d - out);
  }
  if (!r->duplicate && r->timer_len == EMD_TIMER_LEN) {
    char b64[TIMER_B64_LEN];

    put_base64(b64, r->timer, EMD_TIMER_LEN);
    return format_text_stored(out, r->id, r->id_len, r->seq, b64,
                              r->ordinal);
  }
  d = PUT_LIT(d, "{\"ok\":true,\"id\":\"");
  d = put_bytes(d, r->id, r->id_len);
  d = PUT_LIT(d, "\",\"seq\":");
  d = put_dec(d, r->seq);
  if (r->duplicate) {
    d = PUT_LIT(d, ",\"duplicate\":true}\n");
  } else {
    d = PUT_LIT(d, ",\"timer\":\"");
    d = put_base64(d, r->timer, r->timer_len);
    d = PUT_LIT(d, "\",\"ordinal\":");
    d = put_dec(d, r->ordinal);
    d = PUT_LIT(d, "}\n");
  }
  return (size_t)(d - out);
}

/* An emitd.v1.Ack, byte for byte as protobuf-c packs it (fields in number
 * order, proto3 defaults left out), after its 4-byte big-endian length. */
static size_t format_binary(const struct emd_ingest_reply *r, char *out)
{
  char *d = out + 4;
  size_t n;

  if (r->rc == 0) {
    d = pb_uint(d, ACK_OK, 1);
    d = pb_bytes(d, ACK_ID, r->id, r->id_len);
    d = pb_uint(d, ACK_SEQ, r->seq);
    if (!r->duplicate) {
      d = pb_bytes(d, ACK_TIMER, r->timer, r->timer_len);
      d = pb_uint(d, ACK_ORDINAL, r->ordinal);
    } else {
      d = pb_uint(d, ACK_DUPLICATE, 1);
    }
  } else {
    const char *code = emd_errcode(r->rc), *m = reply_msg(r);

    d = pb_bytes(d, ACK_ERROR, code, strlen(code));
    d = pb_bytes(d, ACK_MESSAGE, m, strlen(m));
    d = pb_uint(d, ACK_LINE, r->line);
  }
  n = (size_t)(d - out) - 4;
  out[0] = (char)(n >> 24);
  out[1] = (char)(n >> 16);
  out[2] = (char)(n >> 8);
  out[3] = (char)n;
  return n + 4;
}

size_t emd_ingest_format_reply(const struct emd_ingest_reply *r, bool binary,
                               char *out)
{
  return binary ? format_binary(r, out) : format_text(r, out);
}

/* The base64 of a 16-byte timer, from in's cache, or encoded into it. */
static const char *timer_text(struct emd_ingest *in, const uint8_t *timer)
{
  struct timer_b64 *t =
    &in->timer_b64[(timer[0] ^ (unsigned)timer[1] << 4) % TIMER_B64_SLOTS];

  if (t->text[0] == '\0' || memcmp(t->timer, timer, EMD_TIMER_LEN) != 0) {
    memcpy(t->timer, timer, EMD_TIMER_LEN);
    put_base64(t->text, timer, EMD_TIMER_LEN);
  }
  return t->text;
}

/* ---- connection lifetime ------------------------------------------------ */

static void conn_undirty(struct conn *c)
{
  struct conn **pp = &c->in->dirty;

  if (!c->dirty)
    return;
  while (*pp != c)
    pp = &(*pp)->dirty_next;
  *pp = c->dirty_next;
  c->dirty = false;
}

static void conn_free(struct conn *c)
{
  struct emd_ingest *in = c->in;

  if (!c->refuse && in->st.clients > 0) {
    in->st.clients--;
    emd_log_debug("ingest", "client gone (%llu left)",
                  (unsigned long long)in->st.clients);
  }
  if (c->prev != NULL)
    c->prev->next = c->next;
  else if (in->conns == c)
    in->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  conn_undirty(c);
  for (size_t i = 0; i < c->count; i++)
    free(c->slots[(c->head + i) & (c->cap - 1)].msg);
  free(c->slots);
  emd_frame_free(&c->framer);
  free(c->out[0].data);
  free(c->out[1].data);
  free(c);

  if (in->stopping && in->conns == NULL && in->idle_cb != NULL) {
    emd_ingest_idle_cb cb = in->idle_cb;

    in->idle_cb = NULL;
    cb(in->idle_data);    /* may close and free in: touch it no more */
    return;
  }
  ingest_maybe_free(in);
}

static void conn_maybe_free(struct conn *c)
{
  if (c->handle_gone && c->owed == 0)
    conn_free(c);
}

static void on_conn_closed(uv_handle_t *h)
{
  struct conn *c = h->data;

  c->handle_gone = true;
  conn_maybe_free(c);
}

static void conn_close(struct conn *c)
{
  if (c->closed)
    return;
  c->closed = true;
  c->reading = false;
  if (c->dirty) {
    /* Replies made ready this turn are counted, as if written. */
    conn_undirty(c);
    conn_flush(c);
  }
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
  (void)status;
  conn_close(req->data);
}

/* Closes once input ended and every reply is out. */
static void conn_maybe_finish(struct conn *c)
{
  /* While stopping, a client goes as soon as its replies are out; lines
   * it sends until then are answered shutting_down. */
  if (c->closed || c->shut || c->count > 0 || c->writing)
    return;
  if (!c->eof && !c->in->stopping)
    return;
  c->shut = true;
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->pipe, on_shutdown) != 0)
    conn_close(c);
}

/* ---- reply ring ---------------------------------------------------------- */

/* Doubles the ring (first 64 slots), its slots from head on in order. */
static __attribute__((noinline)) int slot_grow(struct conn *c)
{
  size_t cap = c->cap ? c->cap * 2 : 64;
  struct slot *n = malloc(cap * sizeof(*n));

  if (n == NULL)
    return -ENOMEM;
  for (size_t i = 0; i < c->count; i++)
    n[i] = c->slots[(c->head + i) & (c->cap - 1)];
  free(c->slots);
  c->slots = n;
  c->cap = cap;
  c->head = 0;
  return 0;
}

/* A new slot at the tail, for the line at hand: inline, since every line
 * that gets a reply takes one. */
static inline __attribute__((always_inline)) struct slot *
slot_push(struct conn *c)
{
  struct slot *s;

  if (c->count == c->cap && slot_grow(c) != 0)
    return NULL;
  s = &c->slots[(c->head + c->count) & (c->cap - 1)];
  c->count++;
  memset(s, 0, offsetof(struct slot, id));
  s->line = c->line;
  s->t0_ns = c->in->now_ns;
  return s;
}

/* Counts a reply by its outcome; its latency is the caller's (see
 * latency_add). */
static void count_reply(struct emd_ingest *in, const struct slot *s)
{
  in->st.received++;
  switch (s->rc) {
  case 0:
    if (s->duplicate)
      in->st.duplicates++;
    else
      in->st.accepted++;
    break;
  case EMD_EBADJSON: in->st.bad_json++; break;
  case EMD_ETOOLARGE: in->st.too_large++; break;
  case EMD_ESPOOLFULL: in->st.spool_full++; break;
  case EMD_ESHUTDOWN: in->st.shutting_down++; break;
  default: in->st.invalid++; break;
  }
}

/* Latencies, observed per run of replies whose lines came in the same
 * read (they share t0_ns, so they share a bucket): once per read, not
 * once per reply. */
struct latency_run {
  uint64_t t0_ns;
  uint64_t n;
};

static void latency_flush(struct emd_ingest *in, struct latency_run *run,
                          uint64_t now_ns)
{
  if (run->n > 0)
    emd_histogram_observe_n(&in->st.ack_latency_s,
                            (double)(now_ns - run->t0_ns) / 1e9, run->n);
  run->n = 0;
}

static void latency_add(struct emd_ingest *in, struct latency_run *run,
                        uint64_t t0_ns, uint64_t now_ns)
{
  if (run->n > 0 && run->t0_ns != t0_ns)
    latency_flush(in, run, now_ns);
  run->t0_ns = t0_ns;
  run->n++;
}

/* Queues a reply that is ready now (an error). */
static void reply_error(struct conn *c, int rc, const char *msg)
{
  struct slot *s = slot_push(c);

  if (s == NULL) {
    emd_log_error("ingest", "out of memory for a reply; closing client");
    conn_close(c);
    return;
  }
  s->state = SLOT_READY;
  s->rc = rc;
  s->msg = msg != NULL ? strdup(msg) : NULL;
}

static void on_write(uv_write_t *req, int status)
{
  struct conn *c = req->data;

  c->writing = false;
  c->out[1 - c->cur].len = 0;
  if (status != 0) {
    /* The client went away: its events are stored, its replies are not
     * wanted any more. */
    c->eof = false;
    conn_close(c);
    return;
  }
  conn_flush(c);
}

/* Formats the ready slots at the head of the ring and starts a write if
 * none is under way. */
static void conn_flush(struct conn *c)
{
  struct emd_ingest *in = c->in;
  struct outbuf *o = &c->out[c->cur];
  bool binary = c->framer.mode == EMD_FRAME_BINARY;
  struct latency_run run = { 0, 0 };
  uint64_t now_ns = 0;

  while (c->count > 0) {
    struct slot *s = &c->slots[c->head];

    if (s->state != SLOT_READY)
      break;
    if (now_ns == 0)
      now_ns = uv_hrtime();
    count_reply(in, s);
    latency_add(in, &run, s->t0_ns, now_ns);
    if (!c->closed) {
      if (!binary && s->rc == 0 && !s->duplicate &&
          s->timer_len == EMD_TIMER_LEN) {
        /* the usual reply, without the general formatter's tests */
        if (out_reserve(o, 128 + s->id_len + 2 * EMD_TIMER_LEN) == 0)
          o->len += format_text_stored(o->data + o->len, s->id, s->id_len,
                                       s->seq, timer_text(in, s->timer),
                                       s->ordinal);
      } else {
        struct emd_ingest_reply r = {
          .rc = s->rc, .line = s->line, .msg = s->msg,
          .id = s->id, .id_len = s->id_len, .seq = s->seq,
          .duplicate = s->duplicate, .timer = s->timer,
          .timer_len = s->timer_len, .ordinal = s->ordinal,
        };

        if (out_reserve(o, reply_max(&r)) == 0)
          o->len += emd_ingest_format_reply(&r, binary, o->data + o->len);
      }
    }
    if (s->msg != NULL)
      free(s->msg);
    c->head = (c->head + 1) & (c->cap - 1);
    c->count--;
    if (c->fill > 0)
      c->fill--;
  }
  latency_flush(in, &run, now_ns);
  if (c->closed) {
    o->len = 0;
    return;
  }
  if (!c->writing && o->len > 0) {
    uv_buf_t b = uv_buf_init(o->data, (unsigned)o->len);

    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->pipe, &b, 1, on_write) != 0) {
      o->len = 0;
      conn_close(c);
      return;
    }
    c->writing = true;
    c->cur = 1 - c->cur;
  }
  conn_update_reading(c);
  conn_maybe_finish(c);
}

/* Flushes every connection that spool callbacks made replies ready on,
 * once, however many events its group commit held. */
static void flush_dirty(struct emd_ingest *in)
{
  struct conn *c;

  uv_check_stop(&in->flusher);
  uv_idle_stop(&in->flusher_next);
  while ((c = in->dirty) != NULL) {
    in->dirty = c->dirty_next;
    c->dirty = false;
    conn_flush(c);        /* never frees c */
  }
}

/* Spool callbacks run in the poll phase (the spool's uv_async): the check
 * phase right after it ends their turn. */
static void on_flush_turn(uv_check_t *h)
{
  flush_dirty(h->data);
}

/* Had a callback come after this turn's check phase, the idle handle
 * flushes at the start of the next turn, and keeps the loop from
 * sleeping in poll until then. */
static void on_flush_next(uv_idle_t *h)
{
  flush_dirty(h->data);
}

static void conn_mark_dirty(struct conn *c)
{
  struct emd_ingest *in = c->in;

  if (c->dirty)
    return;
  if (in->flusher_closing) {
    conn_flush(c);
    return;
  }
  if (in->dirty == NULL) {
    uv_check_start(&in->flusher, on_flush_turn);
    uv_idle_start(&in->flusher_next, on_flush_next);
  }
  c->dirty = true;
  c->dirty_next = in->dirty;
  in->dirty = c;
}

/* A spool callback: fills the oldest slot still waiting for one. */
static void on_spooled(void *data, const struct emd_spool_result *res)
{
  struct conn *c = data;
  struct slot *s = NULL;

  c->owed--;
  while (c->fill < c->count) {
    s = &c->slots[(c->head + c->fill) & (c->cap - 1)];
    c->fill++;
    if (s->state == SLOT_WAIT)
      break;
    s = NULL;
  }
  if (s == NULL) {        /* cannot happen: callbacks run in append order */
    emd_log_error("ingest", "spool reply with no line waiting for it");
    conn_maybe_free(c);
    return;
  }
  s->state = SLOT_READY;
  s->rc = res->rc;
  s->seq = res->seq;
  s->ordinal = res->ordinal;
  s->duplicate = res->duplicate;
  if (c->closed) {
    /* With nobody left to reply to, this still moves the ring on (counts
     * stay right) and frees the connection after its last callback. */
    conn_flush(c);
    conn_maybe_free(c);
  } else {
    conn_mark_dirty(c);
  }
}

/* ---- input --------------------------------------------------------------- */

/* Takes one decoded event on to enrichment and the spool. */
static void submit(struct conn *c, emd_event *ev)
{
  struct emd_ingest *in = c->in;
  struct slot *s;
  int rc;

  rc = emd_enrich_apply(in->en, ev, &c->enrich, &in->scratch, in->now_ms);
  if (rc != 0) {
    reply_error(c, rc, "out of memory");
    return;
  }
  s = slot_push(c);
  if (s == NULL) {
    conn_close(c);
    return;
  }
  s->state = SLOT_WAIT;
  s->id_len = (uint8_t)strnlen(ev->event->id, EMD_ID_MAX);
  memcpy(s->id, ev->event->id, s->id_len);
  s->timer_len = (uint8_t)ev->event->timer.len;
  if (s->timer_len == EMD_TIMER_LEN)     /* emitd's own: a fixed copy */
    memcpy(s->timer, ev->event->timer.data, EMD_TIMER_LEN);
  else
    memcpy(s->timer, ev->event->timer.data, s->timer_len);
  rc = emd_spool_append(in->sp, ev, on_spooled, c);
  if (rc != 0) {
    s->state = SLOT_READY;
    s->rc = rc;
    return;
  }
  c->owed++;
}

static bool is_blank(const char *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
      return false;
  return true;
}

/* One line (text mode) or frame payload (binary mode): decoded, checked
 * and handed on, or answered with an error at once. */
static void handle_item(struct conn *c, const char *p, size_t n)
{
  struct emd_ingest *in = c->in;
  bool binary = c->framer.mode == EMD_FRAME_BINARY;
  char msg[MSG_MAX];
  emd_event *ev;
  int rc;

  c->line++;
  if (!binary) {
    if (n > 0 && p[n - 1] == '\r')
      n--;
    if (is_blank(p, n))
      return;               /* counted, but no reply (SPEC 2) */
  }
  if (in->stopping) {
    reply_error(c, EMD_ESHUTDOWN, NULL);
    return;
  }
  msg[0] = '\0';
  /* the last event's memory: kept for this one, unless it was a big one */
  if (in->scratch.total > SCRATCH_KEEP)
    emd_arena_free(&in->scratch);
  else
    emd_arena_reset(&in->scratch);
  if (binary)
    rc = emd_codec_decode_frame((const uint8_t *)p, n, &in->opts,
                                &in->scratch, &ev, msg, sizeof(msg));
  else
    rc = emd_codec_decode_json(p, n, &in->opts, &in->scratch, &ev, msg,
                               sizeof(msg));
  if (rc != 0) {
    reply_error(c, rc, msg[0] ? msg : NULL);
    return;
  }
  submit(c, ev);
}

static int on_item(void *data, const char *p, size_t n)
{
  struct conn *c = data;

  handle_item(c, p, n);
  return c->closed;
}

static int on_too_large(void *data, uint64_t len)
{
  struct conn *c = data;
  char msg[160];

  c->line++;
  if (len > 0)
    snprintf(msg, sizeof(msg), "frame of %" PRIu64 " bytes is longer than "
             "ingest.max_event_bytes (%" PRIu64 ")", len,
             c->in->cfg->ingest.max_event_bytes);
  else
    snprintf(msg, sizeof(msg), "line longer than ingest.max_event_bytes (%"
             PRIu64 " bytes)", c->in->cfg->ingest.max_event_bytes);
  reply_error(c, EMD_ETOOLARGE, msg);
  return c->closed;
}

static int on_truncated(void *data)
{
  struct conn *c = data;

  c->line++;
  reply_error(c, EMD_EINVALID, "truncated frame at end of input");
  return c->closed;
}

static const struct emd_frame_ops frame_ops = {
  .item = on_item,
  .too_large = on_too_large,
  .truncated = on_truncated,
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct conn *c = h->data;
  struct emd_ingest *in = c->in;

  (void)suggested;
  if (in->readbuf_busy) {
    /* Cannot happen on one loop; refuse politely if it ever does. */
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  in->readbuf_busy = true;
  *buf = uv_buf_init(in->readbuf, sizeof(in->readbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  struct conn *c = s->data;
  struct emd_ingest *in = c->in;

  if (buf->base == in->readbuf)
    in->readbuf_busy = false;
  if (nread == 0)
    return;
  /* One clock read per read, not per event: the lines of one read all
   * arrived at that moment. */
  in->now_ns = uv_hrtime();
  in->now_ms = now_ms();
  if (nread < 0) {
    if (nread != UV_EOF) {
      /* Reset by the peer: nobody will read replies. Events already
       * handed to the spool are still stored. */
      conn_close(c);
      return;
    }
    /* Half-close: a last line without a newline still counts. */
    emd_frame_eof(&c->framer, &frame_ops, c);
    c->eof = true;
    uv_read_stop(s);
    c->reading = false;
    conn_flush(c);
    return;
  }
  if (emd_frame_feed(&c->framer, buf->base, (size_t)nread, &frame_ops, c)
      == -ENOMEM) {
    emd_log_error("ingest", "out of memory for a client's unfinished "
                  "line; closing it");
    conn_close(c);
    return;
  }
  conn_flush(c);
  /* The spool may have filled up (block mode) or fallen far behind. */
  if (!in->blocked && !emd_spool_has_room(in->sp))
    emd_ingest_spool_changed(in);
}

/* Reads unless the client has too many unsent replies, the spool is full
 * in block mode, or input ended. */
static void conn_update_reading(struct conn *c)
{
  struct emd_ingest *in = c->in;
  size_t pending = c->out[0].len + c->out[1].len;
  bool want;

  if (c->closed || c->shut || c->eof || c->refuse)
    want = false;
  else if (c->count >= MAX_SLOTS || pending >= MAX_OUT)
    want = false;
  else if (c->paused)
    /* Resume only once it drained well below the limit. */
    want = c->count < MAX_SLOTS / 2 && pending < MAX_OUT / 2;
  else
    want = true;
  if (in->blocked)
    want = false;
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
      c->reading = true;
    c->paused = false;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = false;
    if (!in->blocked && !c->eof && !in->stopping && !c->closed) {
      c->paused = true;
      in->st.paused++;
    }
  }
}

/* ---- accepting ------------------------------------------------------------ */

static bool id_allowed(const uint32_t *list, size_t n, uint32_t id)
{
  if (n == 0)
    return true;
  for (size_t i = 0; i < n; i++)
    if (list[i] == id)
      return true;
  return false;
}

/* Reads the peer's credentials; false if they are not allowed in. */
static bool peer_allowed(struct emd_ingest *in, struct conn *c)
{
  const struct emd_config *cfg = in->cfg;
  struct ucred cred;
  socklen_t len = sizeof(cred);
  uv_os_fd_t fd;

  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return cfg->agent.n_allow_uids == 0 && cfg->agent.n_allow_gids == 0;
  c->uid = cred.uid;
  c->gid = cred.gid;
  c->pid = cred.pid;
  if (cfg->agent.n_allow_uids == 0 && cfg->agent.n_allow_gids == 0)
    return true;
  /* Either list admits: a user named in allow_uids, or a member of a
   * group in allow_gids. */
  if (cfg->agent.n_allow_uids > 0 &&
      id_allowed(cfg->agent.allow_uids, cfg->agent.n_allow_uids, cred.uid))
    return true;
  if (cfg->agent.n_allow_gids > 0 &&
      id_allowed(cfg->agent.allow_gids, cfg->agent.n_allow_gids, cred.gid))
    return true;
  return false;
}

/* True when the peer has already closed (or reset) the connection, with
 * nothing left to read: a peek, no bytes consumed. */
static bool peer_gone(struct conn *c)
{
  uv_os_fd_t fd;
  char b;
  ssize_t n;

  if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0)
    return false;
  n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                    errno != EINTR);
}

static void on_unaccepted_closed(uv_handle_t *h)
{
  free(h->data);
}

/* Takes one waiting connection off the listening socket. */
static void accept_one(struct emd_ingest *in)
{
  struct conn *c;

  in->accepted_this_turn++;
  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return;
  c->in = in;
  c->framer.max = in->cfg->ingest.max_event_bytes;
  uv_pipe_init(in->loop, &c->pipe, 0);
  c->pipe.data = c;
  if (uv_accept((uv_stream_t *)&in->server, (uv_stream_t *)&c->pipe) != 0) {
    uv_close((uv_handle_t *)&c->pipe, on_unaccepted_closed);
    return;
  }
  c->next = in->conns;
  if (in->conns != NULL)
    in->conns->prev = c;
  in->conns = c;
  in->st.connections++;
  in->now_ns = uv_hrtime();
  /* A flood of connect-and-close must not take the places of clients that
   * stay: one already closed by its peer is dropped unanswered. */
  if (peer_gone(c)) {
    c->refuse = true;
    conn_close(c);
    return;
  }
  if (in->stopping) {
    c->refuse = true;
    reply_error(c, EMD_ESHUTDOWN, "emitd is shutting down");
  } else if (in->st.clients >= in->cfg->ingest.max_clients) {
    char msg[128];

    c->refuse = true;
    snprintf(msg, sizeof(msg), "too many clients (ingest.max_clients = %"
             PRIu64 "); try again later", in->cfg->ingest.max_clients);
    reply_error(c, EMD_ETOOMANY, msg);
    in->st.refused++;
  } else if (!peer_allowed(in, c)) {
    char msg[128];

    c->refuse = true;
    snprintf(msg, sizeof(msg), "uid %u gid %u is not in agent.allow_uids "
             "or agent.allow_gids", (unsigned)c->uid, (unsigned)c->gid);
    reply_error(c, EMD_EDENIED, msg);
    in->st.refused++;
    emd_log_warn("ingest", "refused pid %d uid %u gid %u: not allowed",
                 (int)c->pid, (unsigned)c->uid, (unsigned)c->gid);
  }
  if (!c->refuse) {
    in->st.clients++;     /* only clients that are served take a place */
    emd_log_debug("ingest", "client connected (%llu now)",
                  (unsigned long long)in->st.clients);
  }
  if (c->refuse) {
    c->eof = true;
    conn_flush(c);
    return;
  }
  conn_update_reading(c);
}

/* A flood of connections must not keep the loop accepting: libuv accepts
 * until the backlog is empty, which under a flood is never. Past a burst
 * per loop turn, the next accept waits for the next turn (libuv stops
 * watching the socket until then), so clients already in get their
 * turn. */
static void on_connection(uv_stream_t *server, int status)
{
  struct emd_ingest *in = server->data;

  if (status != 0) {
    emd_log_warn("ingest", "accept failed: %s", uv_strerror(status));
    return;
  }
  if (in->accepted_this_turn >= ACCEPT_BURST) {
    in->accept_waiting = true;
    uv_idle_start(&in->resume, on_resume_accept);
    return;
  }
  accept_one(in);
}

static void on_resume_accept(uv_idle_t *h)
{
  struct emd_ingest *in = h->data;

  uv_idle_stop(h);
  if (in->accept_waiting && in->server_open && !in->server_closing) {
    in->accept_waiting = false;
    accept_one(in);          /* and libuv watches the socket again */
  }
}

static void on_turn(uv_check_t *h)
{
  struct emd_ingest *in = h->data;

  in->accepted_this_turn = 0;
}

static int bind_socket(struct emd_ingest *in, char *err, size_t errlen)
{
  const char *path = in->cfg->agent.socket;
  struct stat st;
  mode_t old;
  int rc;

  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      snprintf(err, errlen, "%s exists and is not a socket; move it away "
               "or set agent.socket", path);
      return -EEXIST;
    }
    unlink(path);          /* a socket left by an earlier run */
  }
  /* The mode is in force from the first moment the socket exists. */
  old = umask(~in->cfg->agent.socket_mode & 0777);
  rc = uv_pipe_bind(&in->server, path);
  umask(old);
  if (rc == 0) {
    in->bound = true;
    rc = chmod(path, in->cfg->agent.socket_mode) == 0 ? 0 : -errno;
  }
  if (rc != 0)
    snprintf(err, errlen, "cannot listen on %s: %s", path, uv_strerror(rc));
  return rc;
}

int emd_ingest_open(uv_loop_t *loop, const struct emd_config *cfg,
                    struct emd_spool *sp, struct emd_enrich *en,
                    int listen_fd, struct emd_ingest **out, char *err,
                    size_t errlen)
{
  struct emd_ingest *in;
  int rc;

  in = calloc(1, sizeof(*in));
  if (in == NULL)
    return -ENOMEM;
  in->loop = loop;
  in->cfg = cfg;
  in->sp = sp;
  in->en = en;
  /* Seconds, from 100 µs to 10 s. */
  static const double le[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                               0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                               1, 2.5, 10 };
  emd_histogram_init(&in->st.ack_latency_s, le, sizeof(le) / sizeof(*le));
  in->now_ns = uv_hrtime();
  in->now_ms = now_ms();
  in->opts.ignore_unknown = cfg->ingest.unknown_fields == EMD_UNKNOWN_IGNORE;
  rc = uv_pipe_init(loop, &in->server, 0);
  if (rc != 0) {
    free(in);
    return rc;
  }
  in->server.data = in;
  in->server_open = true;
  uv_check_init(loop, &in->turn);
  uv_idle_init(loop, &in->resume);
  uv_check_init(loop, &in->flusher);
  uv_idle_init(loop, &in->flusher_next);
  in->turn.data = in->resume.data = in;
  in->flusher.data = in->flusher_next.data = in;
  in->extra_handles = 4;
  uv_check_start(&in->turn, on_turn);
  uv_unref((uv_handle_t *)&in->turn);
  if (listen_fd >= 0) {
    rc = uv_pipe_open(&in->server, listen_fd);
    if (rc != 0)
      snprintf(err, errlen, "cannot use the listening socket passed as fd "
               "%d: %s", listen_fd, uv_strerror(rc));
  } else {
    rc = bind_socket(in, err, errlen);
  }
  if (rc == 0) {
    rc = uv_listen((uv_stream_t *)&in->server, 1024, on_connection);
    if (rc != 0)
      snprintf(err, errlen, "cannot listen on %s: %s", cfg->agent.socket,
               uv_strerror(rc));
  }
  if (rc != 0) {
    emd_ingest_close(in);
    return rc;
  }
  *out = in;
  return 0;
}

void emd_ingest_spool_changed(struct emd_ingest *in)
{
  bool blocked = !emd_spool_has_room(in->sp);

  if (blocked == in->blocked)
    return;
  in->blocked = blocked;
  if (blocked)
    emd_log_warn("ingest", "spool is full: not reading from clients until "
                 "there is room (spool.on_full = block)");
  for (struct conn *c = in->conns; c != NULL; c = c->next)
    conn_update_reading(c);
}

void emd_ingest_reconfigure(struct emd_ingest *in,
                            const struct emd_config *cfg)
{
  in->cfg = cfg;
  in->opts.ignore_unknown = cfg->ingest.unknown_fields == EMD_UNKNOWN_IGNORE;
  /* The new limit holds for clients already connected too. */
  for (struct conn *c = in->conns; c != NULL; c = c->next)
    c->framer.max = cfg->ingest.max_event_bytes;
}

static void ingest_maybe_free(struct emd_ingest *in)
{
  if (in->closing && !in->server_open && in->conns == NULL &&
      in->extra_handles == 0) {
    emd_arena_free(&in->scratch);
    free(in);
  }
}

static void on_extra_closed(uv_handle_t *h)
{
  struct emd_ingest *in = h->data;

  in->extra_handles--;
  ingest_maybe_free(in);
}

static void on_server_closed(uv_handle_t *h)
{
  struct emd_ingest *in = h->data;

  in->server_open = false;
  ingest_maybe_free(in);
}

/* Stops accepting; removes the socket file if this process made it. */
static void close_server(struct emd_ingest *in)
{
  if (!in->server_open || in->server_closing)
    return;
  in->server_closing = true;
  uv_close((uv_handle_t *)&in->server, on_server_closed);
  uv_close((uv_handle_t *)&in->turn, on_extra_closed);
  uv_close((uv_handle_t *)&in->resume, on_extra_closed);
  if (in->bound)
    unlink(in->cfg->agent.socket);
}

void emd_ingest_stop(struct emd_ingest *in, emd_ingest_idle_cb cb,
                     void *data)
{
  in->stopping = true;
  in->idle_cb = cb;
  in->idle_data = data;
  close_server(in);
  for (struct conn *c = in->conns, *next; c != NULL; c = next) {
    next = c->next;
    conn_maybe_finish(c);
  }
  if (in->conns == NULL && in->idle_cb != NULL) {
    in->idle_cb = NULL;
    cb(data);
  }
}

void emd_ingest_close(struct emd_ingest *in)
{
  struct conn *c, *next;

  if (in == NULL)
    return;
  in->stopping = true;
  in->closing = true;
  in->idle_cb = NULL;
  for (c = in->conns; c != NULL; c = next) {
    next = c->next;     /* conn_close never frees synchronously */
    conn_close(c);
  }
  close_server(in);
  if (!in->flusher_closing) {
    in->flusher_closing = true;
    uv_close((uv_handle_t *)&in->flusher, on_extra_closed);
    uv_close((uv_handle_t *)&in->flusher_next, on_extra_closed);
  }
  ingest_maybe_free(in);
}

void emd_ingest_stats(const struct emd_ingest *in,
                      struct emd_ingest_stats *st)
{
  *st = in->st;
}
