/* emd_upstream.c: emd-upstream, a stand-in for the telemetry service of
 * SPEC 1, for emitd's integration tests, its benchmark and the README's
 * "run it locally". It records what arrives and can be told to misbehave.
 *
 * Telemetry endpoints (SPEC 1):
 *   POST /v1/telemetry/event:emit    one Event -> one EventID
 *   POST /v1/telemetry/event:stream  varint-delimited Events -> delimited
 *                                    EventIDs, one per event, in order
 *   POST /v1/telemetry/event:ping    anything -> 200, empty
 * Content-Type application/x-protobuf (also when absent) or
 * application/json (one object per line; the reply is one
 * {"ok":...,"eid":"..."} line per event). Content-Encoding none, gzip or
 * zstd. Another path is 404, another method 405 (with Allow). A body over
 * --max-body (default 64 MiB), before or after decompression, is 413; one
 * that does not decode is 400 with a text/plain message naming the event
 * and the field ("event[3]: event.id: does not match ..."). The service's
 * own checks: Event.event present, event.id matching ^[a-zA-Z0-9]{12,64}$;
 * the codec's (emd_codec_decode_frame and _decode_json with upstream set):
 * valid UTF-8 strings, no unknown fields.
 *
 * Auth (SPEC 1): without a key every request is accepted. With --key K a
 * request must carry K as "Authorization: Bearer K", "X-API-Key: K" or
 * Basic with user "apikey" and password K (--auth-style limits it to one
 * style), else 401 with WWW-Authenticate. A key given with --forbid gets
 * 403, key or not.
 *
 * Records: every accepted event (2xx, ok:true) becomes one NDJSON line,
 * in --record FILE (appended, flushed per request) and in memory:
 *   {"t_ms":T,"req":N,"pos":I,"path":"...","encoding":"protobuf|json",
 *    "content_encoding":"none|gzip|zstd","auth":"bearer|x-api-key|basic|
 *    none","fin":B,"event":<the Event, proto3 JSON>}
 * t_ms is when the request arrived, req numbers telemetry requests from 1,
 * pos is the event's place in its request. Every telemetry request, 4xx
 * and 5xx included, is one line in --requests FILE and in memory:
 *   {"t_ms":T,"req":N,"method":"POST","path":"...","status":S,
 *    "events":N,"accepted":N,"rejected":N,"bytes":N,"encoding":"...",
 *    "content_encoding":"...","auth":"...","script":"none|status|cut|
 *    garbled|delay","delay_ms":N,"ms":N,"error":"..."}
 * ("status":0 for a cut; "error" only on failure, "ms" is the time from
 * arrival to reply).
 *
 * Control interface for tests, same port, JSON bodies, never scripted,
 * never authenticated, not counted as requests:
 *   GET  /_test/stats     {"requests":N,"events":N,"unique_ids":N,
 *                          "duplicates":N,"rejected":N,"cuts":N,
 *                          "garbled":N,"bytes_in":N,"script_left":N,
 *                          "status":{"200":N,...}}
 *                         events counts accepted events (a resent id
 *                         counts again, as a duplicate); unique_ids counts
 *                         distinct ids by 64-bit hash.
 *   GET  /_test/events    the recorded events, NDJSON (as in --record)
 *   GET  /_test/requests  the request log, NDJSON (as in --requests)
 *   POST /_test/script    [step, ...]: replaces what is left of the
 *                         script; each telemetry request takes the next
 *                         step, and once none is left all is normal.
 *                         A step is an object with any of:
 *       "status": S        200..599; not 2xx: answer S at once (after
 *                          any delay), no auth or body checks, nothing
 *                          recorded; 2xx: handle as usual but answer S
 *       "body": "text"     the body of that scripted reply
 *       "retry_after": "2" or 2 or "Wed, 21 Oct 2015 07:28:00 GMT"
 *                          a Retry-After header, as given
 *       "retry_after_in_s": N  Retry-After as the HTTP date N s ahead
 *       "delay_ms": N      wait N ms before answering (else --delay-ms)
 *       "cut": true        handle as usual, then close the connection
 *                          without any reply: the reply lost in flight
 *       "garbled": true    handle as usual, then answer 200 with a body
 *                          that is no EventID sequence (nor JSON)
 *       "accept": false    with cut or garbled: record nothing, as if the
 *                          request never reached the service
 *       "repeat": N        this step N times (default 1)
 *                         Reply {"ok":true,"steps":N}.
 *   POST /_test/reject    {"ids":["...",...]}: those ids get ok:false
 *                         (not recorded, counted as rejected); adds to
 *                         the set.
 *   POST /_test/poison    {"ids":["...",...]}: a request holding any of
 *                         them is 400, one event or many; adds to the set.
 *   POST /_test/key       {"key":"K"} requires K; {"key":null} lets
 *                         anyone in; {"forbid":"K"} adds a forbidden key;
 *                         {"forbid":null} clears them; {"auth_style":
 *                         "any|bearer|x-api-key|basic"}. Members combine.
 *   POST /_test/reset     clears the script, the reject and poison sets,
 *                         the records and the request log (in memory and
 *                         the --record and --requests files) and the
 *                         counters;
 *                         auth and --delay-ms go back to the command
 *                         line's. The body is ignored.
 * Replies are {"ok":true,...}, or 400 {"ok":false,"error":"..."}.
 *
 * One thread per connection (a scripted delay holds only its own
 * connection); one mutex guards everything shared. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <zlib.h>
#include <zstd.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "emd_arena.h"
#include "emd_codec.h"
#include "emd_err.h"
#include "emd_event.h"

#define DEFAULT_LISTEN "127.0.0.1:8787"
#define DEFAULT_MAX_BODY ((size_t)64 << 20)
#define MAX_STEPS 10000
#define MAX_DELAY_MS 600000
#define MSG_MAX 512
#define KEY_MAX 1024

#define PATH_EMIT "/v1/telemetry/event:emit"
#define PATH_STREAM "/v1/telemetry/event:stream"
#define PATH_PING "/v1/telemetry/event:ping"
#define CONTROL_PREFIX "/_test/"

/* ---- growable strings --------------------------------------------- */

/* A byte buffer whose first allocation failure sticks, so builders can
 * append freely and check once. b is what the codec appends to. */
struct sb {
  struct emd_codec_buf b;
  bool oom;
};

static bool sb_reserve(struct sb *s, size_t n)
{
  size_t cap;
  char *p;

  if (s->oom)
    return false;
  if (s->b.cap - s->b.len >= n)
    return true;
  if (n > SIZE_MAX / 4 - s->b.len)
    goto fail;
  cap = s->b.cap != 0 ? s->b.cap : 256;
  while (cap - s->b.len < n)
    cap *= 2;
  p = realloc(s->b.data, cap);
  if (p == NULL)
    goto fail;
  s->b.data = p;
  s->b.cap = cap;
  return true;

fail:
  s->oom = true;
  return false;
}

static void sb_put(struct sb *s, const void *p, size_t n)
{
  if (n == 0 || !sb_reserve(s, n))
    return;
  memcpy(s->b.data + s->b.len, p, n);
  s->b.len += n;
}

static void sb_puts(struct sb *s, const char *str)
{
  sb_put(s, str, strlen(str));
}

static void sb_printf(struct sb *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sb *s, const char *fmt, ...)
{
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || !sb_reserve(s, (size_t)n + 1))
    return;
  va_start(ap, fmt);
  vsnprintf(s->b.data + s->b.len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  s->b.len += (size_t)n;
}

/* Appends str as a JSON string. Control bytes are escaped; other bytes go
 * as they are (our strings are ASCII, or messages already sanitized). */
static void sb_json_str(struct sb *s, const char *str)
{
  const unsigned char *p;

  sb_put(s, "\"", 1);
  for (p = (const unsigned char *)str; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = { '\\', (char)*p };
      sb_put(s, esc, 2);
    } else if (*p < 0x20 || *p == 0x7f) {
      sb_printf(s, "\\u%04x", *p);
    } else {
      sb_put(s, p, 1);
    }
  }
  sb_put(s, "\"", 1);
}

/* Hands the bytes over (malloc'd, or NULL when empty); s is empty after. */
static char *sb_take(struct sb *s, size_t *len)
{
  char *p = s->b.data;

  *len = s->b.len;
  memset(s, 0, sizeof(*s));
  return p;
}

static void sb_free(struct sb *s)
{
  free(s->b.data);
  memset(s, 0, sizeof(*s));
}

/* ---- hash sets ----------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
  const unsigned char *b = p;
  uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a, then a final mix */
  size_t i;

  for (i = 0; i < n; i++) {
    h ^= b[i];
    h *= 0x100000001b3ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

/* Strings, open addressing; never shrinks, cleared as a whole. */
struct strset {
  char **slot;
  size_t cap;   /* a power of two, or 0 */
  size_t n;
};

static bool strset_has(const struct strset *s, const char *k)
{
  size_t i;

  if (s->n == 0)
    return false;
  for (i = hash_bytes(k, strlen(k)) & (s->cap - 1); s->slot[i] != NULL;
       i = (i + 1) & (s->cap - 1)) {
    if (strcmp(s->slot[i], k) == 0)
      return true;
  }
  return false;
}

static void strset_place(char **slot, size_t cap, char *k)
{
  size_t i = hash_bytes(k, strlen(k)) & (cap - 1);

  while (slot[i] != NULL)
    i = (i + 1) & (cap - 1);
  slot[i] = k;
}

/* Adds a copy of k. Returns 0 or -ENOMEM. */
static int strset_add(struct strset *s, const char *k)
{
  char **slot, *dup;
  size_t cap, i;

  if (strset_has(s, k))
    return 0;
  if ((s->n + 1) * 2 > s->cap) {
    cap = s->cap != 0 ? s->cap * 2 : 16;
    slot = calloc(cap, sizeof(*slot));
    if (slot == NULL)
      return -ENOMEM;
    for (i = 0; i < s->cap; i++) {
      if (s->slot[i] != NULL)
        strset_place(slot, cap, s->slot[i]);
    }
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
  }
  dup = strdup(k);
  if (dup == NULL)
    return -ENOMEM;
  strset_place(s->slot, s->cap, dup);
  s->n++;
  return 0;
}

static void strset_clear(struct strset *s)
{
  size_t i;

  for (i = 0; i < s->cap; i++)
    free(s->slot[i]);
  free(s->slot);
  memset(s, 0, sizeof(*s));
}

/* 64-bit hashes of event ids, to count unique ids without keeping them:
 * 8 bytes an id keeps a benchmark of millions of events small, and a
 * collision among 10^7 ids has odds of about 10^-5. 0 marks a free slot. */
struct idset {
  uint64_t *slot;
  size_t cap;
  size_t n;
};

static void idset_place(uint64_t *slot, size_t cap, uint64_t h)
{
  size_t i = h & (cap - 1);

  while (slot[i] != 0)
    i = (i + 1) & (cap - 1);
  slot[i] = h;
}

static uint64_t idset_hash(const char *id)
{
  uint64_t h = hash_bytes(id, strlen(id));

  return h != 0 ? h : 1;
}

/* Starts loading the slot where the walk for h begins: with millions of
 * ids each walk is a cache miss, and a few in flight overlap. */
static void idset_prefetch(const struct idset *s, uint64_t h)
{
  if (s->cap != 0)
    __builtin_prefetch(&s->slot[h & (s->cap - 1)], 1, 3);
}

/* Adds the id of hash h (idset_hash): 1 when new, 0 when seen before,
 * -ENOMEM. */
static int idset_add(struct idset *s, uint64_t h)
{
  uint64_t *slot;
  size_t i, cap;

  for (i = s->cap != 0 ? h & (s->cap - 1) : 0; s->cap != 0 && s->slot[i];
       i = (i + 1) & (s->cap - 1)) {
    if (s->slot[i] == h)
      return 0;
  }
  if ((s->n + 1) * 2 > s->cap) {
    cap = s->cap != 0 ? s->cap * 2 : 1024;
    slot = calloc(cap, sizeof(*slot));
    if (slot == NULL)
      return -ENOMEM;
    for (i = 0; i < s->cap; i++) {
      if (s->slot[i] != 0)
        idset_place(slot, cap, s->slot[i]);
    }
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
  }
  idset_place(s->slot, s->cap, h);
  s->n++;
  return 1;
}

static void idset_clear(struct idset *s)
{
  free(s->slot);
  memset(s, 0, sizeof(*s));
}

/* ---- JSON bodies of the control interface (jsmn) ------------------- */

struct jdoc {
  const char *s;
  jsmntok_t *t;
  int n;
};

static void jdoc_free(struct jdoc *d)
{
  free(d->t);
  d->t = NULL;
}

/* Parses exactly one JSON value filling s[0..len) (white space around is
 * fine). Returns 0, or -1 with msg. */
static int jdoc_parse(struct jdoc *d, const char *s, size_t len, char *msg,
                      size_t msglen)
{
  jsmn_parser p;
  size_t i;
  int n;

  memset(d, 0, sizeof(*d));
  d->s = s;
  if (len > INT_MAX / 2) {
    snprintf(msg, msglen, "body too large");
    return -1;
  }
  jsmn_init(&p);
  n = jsmn_parse(&p, s, len, NULL, 0);
  if (n <= 0) {
    snprintf(msg, msglen, n == 0 ? "empty body, JSON expected"
                                 : "body is not valid JSON");
    return -1;
  }
  d->t = calloc((size_t)n, sizeof(*d->t));
  if (d->t == NULL) {
    snprintf(msg, msglen, "out of memory");
    return -1;
  }
  jsmn_init(&p);
  d->n = jsmn_parse(&p, s, len, d->t, (unsigned)n);
  if (d->n <= 0)
    goto bad;
  for (i = (size_t)d->t[0].end; i < len; i++) {
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
      goto bad;
  }
  return 0;

bad:
  snprintf(msg, msglen, "body is not one valid JSON value");
  jdoc_free(d);
  return -1;
}

/* The index of the token after token i and everything inside it. */
static int jskip(const struct jdoc *d, int i)
{
  int pending = 1;

  while (pending > 0 && i < d->n) {
    pending += d->t[i].size - 1;
    i++;
  }
  return i;
}

static bool jeq(const struct jdoc *d, int i, const char *lit)
{
  const jsmntok_t *t = &d->t[i];
  size_t n = strlen(lit);

  return t->type == JSMN_STRING && (size_t)(t->end - t->start) == n &&
         memcmp(d->s + t->start, lit, n) == 0;
}

static bool jnull(const struct jdoc *d, int i)
{
  return d->t[i].type == JSMN_PRIMITIVE && d->s[d->t[i].start] == 'n';
}

static int jbool(const struct jdoc *d, int i, bool *v)
{
  char c = d->s[d->t[i].start];

  if (d->t[i].type != JSMN_PRIMITIVE || (c != 't' && c != 'f'))
    return -1;
  *v = c == 't';
  return 0;
}

/* An integer in [lo, hi]; a fraction or an exponent is refused. */
static int jint(const struct jdoc *d, int i, long long lo, long long hi,
                long long *v)
{
  char buf[32], *end;
  int n = d->t[i].end - d->t[i].start;

  if (d->t[i].type != JSMN_PRIMITIVE || n <= 0 || n >= (int)sizeof(buf))
    return -1;
  memcpy(buf, d->s + d->t[i].start, (size_t)n);
  buf[n] = '\0';
  errno = 0;
  *v = strtoll(buf, &end, 10);
  if (errno != 0 || *end != '\0' || *v < lo || *v > hi)
    return -1;
  return 0;
}

static int hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int hex4(const char *p, const char *end, unsigned *v)
{
  int i, h;

  if (end - p < 4)
    return -1;
  *v = 0;
  for (i = 0; i < 4; i++) {
    h = hexval(p[i]);
    if (h < 0)
      return -1;
    *v = *v << 4 | (unsigned)h;
  }
  return 0;
}

/* Writes code point cp as UTF-8; returns the bytes written (1..4). */
static size_t utf8_put(unsigned cp, char *out)
{
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Reads a \uXXXX escape (p after the 'u'), pairing surrogates. Returns the
 * code point and advances *pp, or -1. */
static long json_u_escape(const char **pp, const char *end)
{
  unsigned hi, lo;
  const char *p = *pp;

  if (hex4(p, end, &hi) != 0)
    return -1;
  p += 4;
  if (hi >= 0xdc00 && hi <= 0xdfff)
    return -1;
  if (hi >= 0xd800 && hi <= 0xdbff) {
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
        hex4(p + 2, end, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
      return -1;
    p += 6;
    hi = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
  }
  *pp = p;
  return (long)hi;
}

/* Unescapes string token i into out (NUL-terminated). Returns 0, or -1
 * when it is no string, holds a NUL or does not fit. */
static int jstr(const struct jdoc *d, int i, char *out, size_t outlen)
{
  const char *p = d->s + d->t[i].start, *end = d->s + d->t[i].end;
  size_t n = 0;
  long cp;
  char c;

  if (d->t[i].type != JSMN_STRING)
    return -1;
  while (p < end) {
    if (outlen - n < 5)
      return -1;
    c = *p++;
    if (c != '\\') {
      out[n++] = c;
      continue;
    }
    if (p == end)
      return -1;
    c = *p++;
    switch (c) {
    case 'b': out[n++] = '\b'; break;
    case 'f': out[n++] = '\f'; break;
    case 'n': out[n++] = '\n'; break;
    case 'r': out[n++] = '\r'; break;
    case 't': out[n++] = '\t'; break;
    case 'u':
      cp = json_u_escape(&p, end);
      if (cp <= 0)
        return -1;
      n += utf8_put((unsigned)cp, out + n);
      break;
    default: out[n++] = c; break;   /* " \ / (jsmn checked the rest) */
    }
  }
  out[n] = '\0';
  return 0;
}

/* ---- the server's state ---------------------------------------------- */

enum {
  STYLE_BEARER = 1,
  STYLE_XAPIKEY = 2,
  STYLE_BASIC = 4,
  STYLE_ANY = 7
};

/* One step of a script: how to answer one telemetry request. */
struct step {
  int status;              /* 0: as usual */
  int delay_ms;            /* -1: the default delay */
  int retry_after_in_s;    /* >= 0: Retry-After as a date this far ahead */
  bool cut;                /* close without a reply */
  bool garbled;            /* 200 with a body no client can decode */
  bool accept;             /* with cut or garbled: record the events */
  char retry_after[64];    /* Retry-After as given; "" for none */
  char body[MSG_MAX];      /* body of a scripted status; "" for a default */
};

/* What the command line said; fixed once the server runs. */
struct opts {
  const char *listen;
  const char *port_file;
  const char *record;
  const char *requests;
  const char *key;
  const char *script;
  const char *auth_style;
  struct strset forbid;
  struct strset reject;
  struct strset poison;
  size_t max_body;
  int delay_ms;
  bool quiet;
  bool keep;               /* keep records in memory for /_test/events */
  char *tls_cert;          /* PEM, read from --tls-cert: serve HTTPS */
  char *tls_key;           /* PEM, read from --tls-key */
};

struct upstream {
  const struct opts *o;
  atomic_bool stopping;          /* cuts delays short at shutdown */
  pthread_mutex_t mu;            /* guards everything below */
  char *key;                     /* NULL: anonymous telemetry is fine */
  struct strset forbid;
  unsigned styles;               /* STYLE_* accepted */
  int delay_ms;                  /* before every telemetry reply */
  struct step *script;           /* steps, taken from head on */
  size_t script_n;
  size_t script_head;
  struct strset reject;
  struct strset poison;
  struct sb events;              /* recorded events, NDJSON */
  struct sb reqlog;              /* request log, NDJSON */
  FILE *record;                  /* --record, or NULL */
  FILE *requests;                /* --requests, or NULL */
  struct idset ids;
  uint64_t nreq;                 /* telemetry requests so far */
  uint64_t nevents;              /* accepted events, duplicates too */
  uint64_t nrejected;
  uint64_t ncut;
  uint64_t ngarbled;
  uint64_t bytes_in;             /* request bodies as they came */
  uint64_t by_status[600];
};

/* ---- small helpers ------------------------------------------------- */

static uint64_t now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Sleeps ms in short slices so that a stop does not wait for it. */
static void sleep_ms(struct upstream *up, int ms)
{
  uint64_t until = mono_ms() + (uint64_t)ms, now;
  struct timespec ts;

  while (!atomic_load(&up->stopping) && (now = mono_ms()) < until) {
    uint64_t left = until - now < 50 ? until - now : 50;

    ts.tv_sec = 0;
    ts.tv_nsec = (long)left * 1000000;
    nanosleep(&ts, NULL);
  }
}

static bool is_2xx(int status)
{
  return status >= 200 && status < 300;
}

/* Like SPEC 1.1's id rule, ^[a-zA-Z0-9]{12,64}$. */
static bool id_ok(const char *id)
{
  size_t n = 0;

  for (; id[n] != '\0'; n++) {
    char c = id[n];

    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9')))
      return false;
  }
  return n >= 12 && n <= 64;
}

static int b64val(unsigned char c)
{
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

/* Decodes standard base64 (padding optional) into out, NUL-terminated.
 * Returns the length, or -1 when malformed or too long. */
static long b64_decode(const char *in, char *out, size_t outlen)
{
  size_t n = 0;
  unsigned acc = 0;
  int bits = 0, v;

  for (; *in != '\0' && *in != '='; in++) {
    v = b64val((unsigned char)*in);
    if (v < 0)
      return -1;
    acc = (acc << 6 | (unsigned)v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (n + 1 >= outlen)
        return -1;
      out[n++] = (char)(acc >> bits & 0xff);
    }
  }
  while (*in == '=')
    in++;
  if (*in != '\0')
    return -1;
  out[n] = '\0';
  return (long)n;
}

static size_t varint_put(uint64_t v, uint8_t *out)
{
  size_t n = 0;

  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

/* Reads a varint at *pos; -1 when cut short or over 10 bytes. */
static int varint_get(const uint8_t *p, size_t n, size_t *pos, uint64_t *v)
{
  uint64_t x = 0;
  unsigned shift;

  for (shift = 0; *pos < n && shift < 64; shift += 7) {
    uint8_t b = p[(*pos)++];

    x |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

/* ---- per request --------------------------------------------------- */

enum route {
  R_NONE,
  R_EMIT,
  R_STREAM,
  R_PING,
  R_STATS,
  R_EVENTS,
  R_REQUESTS,
  R_SCRIPT,
  R_REJECT,
  R_POISON,
  R_KEY,
  R_RESET
};

static const struct {
  const char *path;
  const char *method;
  enum route route;
} routes[] = {
  { PATH_EMIT, "POST", R_EMIT },
  { PATH_STREAM, "POST", R_STREAM },
  { PATH_PING, "POST", R_PING },
  { "/_test/stats", "GET", R_STATS },
  { "/_test/events", "GET", R_EVENTS },
  { "/_test/requests", "GET", R_REQUESTS },
  { "/_test/script", "POST", R_SCRIPT },
  { "/_test/reject", "POST", R_REJECT },
  { "/_test/poison", "POST", R_POISON },
  { "/_test/key", "POST", R_KEY },
  { "/_test/reset", "POST", R_RESET },
};

/* One HTTP request, from its headers to its completion. */
struct req {
  enum route route;        /* R_NONE: no such path */
  const char *method;      /* the route's method, NULL for R_NONE */
  bool control;            /* under /_test/ */
  bool too_large;          /* the body went over max_body */
  uint64_t t_ms;           /* arrival, wall clock */
  uint64_t t0_mono;        /* arrival, for "ms" */
  size_t body_bytes;       /* as received, even when dropped */
  struct sb body;
  struct emd_arena arena;  /* decoded events */
};

/* ---- replies ------------------------------------------------------- */

/* Queues a reply; takes ownership of body (malloc'd, may be NULL when
 * len is 0). */
static enum MHD_Result respond(struct MHD_Connection *c, int status,
                               const char *ctype, char *body, size_t len,
                               const struct step *st)
{
  struct MHD_Response *resp;
  enum MHD_Result ret;
  char date[64];

  resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (resp == NULL) {
    free(body);
    return MHD_NO;
  }
  if (ctype != NULL)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  if (st != NULL && st->retry_after[0] != '\0')
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER,
                            st->retry_after);
  if (st != NULL && st->retry_after_in_s >= 0) {
    time_t t = time(NULL) + st->retry_after_in_s;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, date);
  }
  if (status == MHD_HTTP_UNAUTHORIZED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                            "Bearer realm=\"telemetry\"");
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "POST");
  ret = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *c, int status,
                                    const char *msg, const struct step *st)
{
  size_t n = strlen(msg);
  char *body = malloc(n + 1);

  if (body == NULL)
    return MHD_NO;
  memcpy(body, msg, n);
  body[n] = '\n';
  return respond(c, status, "text/plain; charset=utf-8", body, n + 1, st);
}

static enum MHD_Result respond_json(struct MHD_Connection *c, int status,
                                    struct sb *s)
{
  char *body;
  size_t len;

  if (s->oom) {
    sb_free(s);
    return respond_text(c, 500, "out of memory", NULL);
  }
  body = sb_take(s, &len);
  return respond(c, status, "application/json", body, len, NULL);
}

static enum MHD_Result control_error(struct MHD_Connection *c, int status,
                                     const char *msg)
{
  struct sb s = { 0 };

  sb_puts(&s, "{\"ok\":false,\"error\":");
  sb_json_str(&s, msg);
  sb_puts(&s, "}\n");
  return respond_json(c, status, &s);
}

/* ---- a telemetry request ------------------------------------------- */

/* Everything about one telemetry request, for its reply and its logs. */
struct exchange {
  struct upstream *up;
  struct req *r;
  struct MHD_Connection *c;
  const char *path;
  const char *method;
  uint64_t req;                /* its number */
  bool have_step;
  struct step step;            /* valid when have_step */
  int delay_ms;
  bool json;                   /* Content-Type application/json */
  const char *cenc;            /* "none", "gzip", "zstd" or the header */
  const char *auth;            /* credential style seen */
  int status;                  /* the reply's; 0 for a cut */
  char msg[MSG_MAX];           /* why it failed */
  struct sb plain;             /* the body after decompression */
  emd_event **ev;              /* decoded events (in r->arena) */
  size_t nev;
  size_t cap_ev;
  bool *ok;                    /* per event: not rejected */
  size_t naccepted;
  size_t nrejected;
  struct sb reply;
  struct sb records;
};

static int fail(struct exchange *x, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct exchange *x, int status, const char *fmt, ...)
{
  va_list ap;

  x->status = status;
  va_start(ap, fmt);
  vsnprintf(x->msg, sizeof(x->msg), fmt, ap);
  va_end(ap);
  return -1;
}

/* Reads the credentials the request carries into key (NUL-terminated);
 * returns the STYLE_* seen, 0 for none. A Basic user other than "apikey"
 * yields an empty key, which never matches. */
static unsigned read_credentials(struct MHD_Connection *c, char *key,
                                 size_t keylen, const char **name)
{
  const char *h, *colon;
  char tmp[KEY_MAX];
  long n;

  key[0] = '\0';
  *name = "none";
  h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                  MHD_HTTP_HEADER_AUTHORIZATION);
  if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0) {
    *name = "bearer";
    snprintf(key, keylen, "%s", h + 7 + strspn(h + 7, " "));
    return STYLE_BEARER;
  }
  if (h != NULL && strncasecmp(h, "Basic ", 6) == 0) {
    *name = "basic";
    n = b64_decode(h + 6 + strspn(h + 6, " "), tmp, sizeof(tmp));
    colon = n > 0 ? memchr(tmp, ':', (size_t)n) : NULL;
    if (colon != NULL && colon - tmp == 6 && memcmp(tmp, "apikey", 6) == 0)
      snprintf(key, keylen, "%s", colon + 1);
    return STYLE_BASIC;
  }
  h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key");
  if (h != NULL) {
    *name = "x-api-key";
    snprintf(key, keylen, "%s", h);
    return STYLE_XAPIKEY;
  }
  return 0;
}

/* SPEC 1: 403 for a forbidden key; with a key required, 401 unless the
 * request carries it in an accepted style. */
static int check_auth(struct exchange *x)
{
  struct upstream *up = x->up;
  char key[KEY_MAX];
  unsigned style;
  int rc = 0;

  style = read_credentials(x->c, key, sizeof(key), &x->auth);
  pthread_mutex_lock(&up->mu);
  if (style != 0 && key[0] != '\0' && strset_has(&up->forbid, key))
    rc = fail(x, 403, "forbidden: this key has no permission");
  else if (up->key != NULL && style == 0)
    rc = fail(x, 401, "credentials missing");
  else if (up->key != NULL && (style & up->styles) == 0)
    rc = fail(x, 401, "credentials sent as %s, which is not accepted",
              x->auth);
  else if (up->key != NULL && strcmp(key, up->key) != 0)
    rc = fail(x, 401, "credentials invalid or expired");
  pthread_mutex_unlock(&up->mu);
  return rc;
}

static int inflate_gzip(struct exchange *x, const uint8_t *in, size_t n)
{
  size_t max = x->up->o->max_body;
  z_stream zs;
  int zrc;

  memset(&zs, 0, sizeof(zs));
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
    return fail(x, 500, "gzip: cannot start the decoder");
  zs.next_in = (Bytef *)(uintptr_t)in;
  zs.avail_in = (uInt)n;
  for (;;) {
    if (!sb_reserve(&x->plain, 65536)) {
      zrc = fail(x, 500, "out of memory");
      break;
    }
    zs.next_out = (Bytef *)x->plain.b.data + x->plain.b.len;
    zs.avail_out = (uInt)(x->plain.b.cap - x->plain.b.len);
    zrc = inflate(&zs, Z_NO_FLUSH);
    x->plain.b.len = x->plain.b.cap - zs.avail_out;
    if (x->plain.b.len > max) {
      zrc = fail(x, 413, "body over %zu bytes once decompressed", max);
      break;
    }
    if (zrc == Z_STREAM_END && zs.avail_in == 0) {
      zrc = 0;
      break;
    }
    if (zrc == Z_STREAM_END) {             /* another gzip member */
      inflateReset(&zs);
      continue;
    }
    if (zrc == Z_BUF_ERROR && zs.avail_in == 0) {
      zrc = fail(x, 400, "gzip body cut short");
      break;
    }
    if (zrc != Z_OK) {
      zrc = fail(x, 400, "gzip body does not decode: %s",
                 zs.msg != NULL ? zs.msg : "corrupt data");
      break;
    }
  }
  inflateEnd(&zs);
  return zrc;
}

static int inflate_zstd(struct exchange *x, const uint8_t *in, size_t n)
{
  size_t max = x->up->o->max_body, ret = 1;
  ZSTD_inBuffer ib = { in, n, 0 };
  ZSTD_outBuffer ob;
  ZSTD_DCtx *dc;
  int rc = 0;

  dc = ZSTD_createDCtx();
  if (dc == NULL)
    return fail(x, 500, "zstd: cannot start the decoder");
  for (;;) {
    if (!sb_reserve(&x->plain, 65536)) {
      rc = fail(x, 500, "out of memory");
      break;
    }
    ob.dst = x->plain.b.data + x->plain.b.len;
    ob.size = x->plain.b.cap - x->plain.b.len;
    ob.pos = 0;
    ret = ZSTD_decompressStream(dc, &ob, &ib);
    if (ZSTD_isError(ret)) {
      rc = fail(x, 400, "zstd body does not decode: %s",
                ZSTD_getErrorName(ret));
      break;
    }
    x->plain.b.len += ob.pos;
    if (x->plain.b.len > max) {
      rc = fail(x, 413, "body over %zu bytes once decompressed", max);
      break;
    }
    if (ib.pos == ib.size && ob.pos < ob.size) {
      if (ret != 0)
        rc = fail(x, 400, "zstd body cut short");
      break;
    }
  }
  ZSTD_freeDCtx(dc);
  return rc;
}

/* Sets x->json from Content-Type and x->plain from the body and its
 * Content-Encoding. */
static int read_body(struct exchange *x)
{
  const uint8_t *in = (const uint8_t *)x->r->body.b.data;
  size_t n = x->r->body.b.len, tl;
  const char *ct, *ce;

  ct = MHD_lookup_connection_value(x->c, MHD_HEADER_KIND,
                                   MHD_HTTP_HEADER_CONTENT_TYPE);
  ce = MHD_lookup_connection_value(x->c, MHD_HEADER_KIND,
                                   MHD_HTTP_HEADER_CONTENT_ENCODING);
  if (ct != NULL) {
    tl = strcspn(ct, "; \t");
    if (tl == 16 && strncasecmp(ct, "application/json", tl) == 0)
      x->json = true;
    else if (!(tl == 22 && strncasecmp(ct, "application/x-protobuf", tl) ==
                               0) &&
             !(tl == 20 && strncasecmp(ct, "application/protobuf", tl) ==
                               0))
      return fail(x, 415, "unsupported Content-Type %.100s (use "
                  "application/x-protobuf or application/json)", ct);
  }
  if (ce == NULL || ce[0] == '\0' || strcasecmp(ce, "identity") == 0) {
    sb_put(&x->plain, in, n);
    return x->plain.oom ? fail(x, 500, "out of memory") : 0;
  }
  x->cenc = ce;
  if (strcasecmp(ce, "gzip") == 0 || strcasecmp(ce, "x-gzip") == 0) {
    x->cenc = "gzip";
    return n == 0 ? 0 : inflate_gzip(x, in, n);
  }
  if (strcasecmp(ce, "zstd") == 0) {
    x->cenc = "zstd";
    return n == 0 ? 0 : inflate_zstd(x, in, n);
  }
  return fail(x, 415, "unsupported Content-Encoding %.100s (use gzip or "
              "zstd, or none)", ce);
}

/* The service's own checks, on top of what any decoder does. */
static int check_event(struct exchange *x, const emd_event *ev, size_t i)
{
  if (ev->event == NULL)
    return fail(x, 400, "event[%zu]: event: required", i);
  if (!id_ok(ev->event->id))
    return fail(x, 400, "event[%zu]: event.id: does not match "
                "^[a-zA-Z0-9]{12,64}$", i);
  return 0;
}

static int add_event(struct exchange *x, emd_event *ev)
{
  emd_event **v;
  size_t cap;

  if (x->nev == x->cap_ev) {
    cap = x->cap_ev != 0 ? x->cap_ev * 2 : 16;
    v = realloc(x->ev, cap * sizeof(*v));
    if (v == NULL)
      return fail(x, 500, "out of memory");
    x->ev = v;
    x->cap_ev = cap;
  }
  x->ev[x->nev] = ev;
  return check_event(x, ev, x->nev++);
}

/* One serialized Event, decoded as the service would: protobuf-c, then
 * strings checked for UTF-8 and unknown fields refused (emitd sends none,
 * so one would be a bug), fin kept, no client rules. */
static int unpack_event(struct exchange *x, const uint8_t *p, size_t n)
{
  struct emd_codec_opts opts = { .ignore_unknown = false, .upstream = true };
  char msg[MSG_MAX];
  emd_event *ev;
  int rc;

  rc = emd_codec_decode_frame(p, n, &opts, &x->r->arena, &ev, msg,
                              sizeof(msg));
  if (rc == -ENOMEM)
    return fail(x, 500, "out of memory");
  if (rc != 0)
    return fail(x, 400, "event[%zu]: %s", x->nev, msg);
  return add_event(x, ev);
}

static int decode_protobuf(struct exchange *x, bool stream)
{
  const uint8_t *p = (const uint8_t *)x->plain.b.data;
  size_t n = x->plain.b.len, pos = 0;
  uint64_t len;

  if (!stream)
    return unpack_event(x, p, n);
  while (pos < n) {
    if (varint_get(p, n, &pos, &len) != 0)
      return fail(x, 400, "event[%zu]: length prefix cut short or over "
                  "10 bytes", x->nev);
    if (len > n - pos)
      return fail(x, 400, "event[%zu]: length %" PRIu64 " runs past the "
                  "end of the body (%zu bytes left)", x->nev, len, n - pos);
    if (unpack_event(x, p + pos, (size_t)len) != 0)
      return -1;
    pos += (size_t)len;
  }
  return 0;
}

/* A line of only white space, which NDJSON readers skip. */
static bool blank(const char *p, size_t len)
{
  size_t i;

  for (i = 0; i < len; i++) {
    if (p[i] != ' ' && p[i] != '\t')
      return false;
  }
  return true;
}

static int decode_json(struct exchange *x, bool stream)
{
  struct emd_codec_opts opts = { .ignore_unknown = false, .upstream = true };
  char *p = x->plain.b.data, *end = p + x->plain.b.len, *nl;
  char msg[MSG_MAX];
  size_t line = 0, len;
  emd_event *ev;
  int rc;

  for (; p < end; p = nl + 1) {
    nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL)
      nl = end;
    line++;
    len = (size_t)(nl - p);
    if (len > 0 && p[len - 1] == '\r')
      len--;
    if (blank(p, len))
      continue;
    rc = emd_codec_decode_json(p, len, &opts, &x->r->arena, &ev, msg,
                               sizeof(msg));
    if (rc != 0)
      return fail(x, 400, "event[%zu] (line %zu): %s: %s", x->nev, line,
                  emd_errcode(rc), msg);
    if (add_event(x, ev) != 0)
      return -1;
  }
  if (!stream && x->nev != 1)
    return fail(x, 400, "event:emit takes exactly one event, got %zu",
                x->nev);
  return 0;
}

/* Poison sinks the request; reject marks single events ok:false. */
static int judge(struct exchange *x)
{
  struct upstream *up = x->up;
  size_t i;
  int rc = 0;

  x->ok = calloc(x->nev + 1, sizeof(*x->ok));
  if (x->ok == NULL)
    return fail(x, 500, "out of memory");
  pthread_mutex_lock(&up->mu);
  for (i = 0; i < x->nev && rc == 0; i++) {
    const char *id = x->ev[i]->event->id;

    if (strset_has(&up->poison, id))
      rc = fail(x, 400, "event[%zu]: event.id %s is poisoned", i, id);
    x->ok[i] = !strset_has(&up->reject, id);
  }
  pthread_mutex_unlock(&up->mu);
  return rc;
}

static void reply_event_id(struct exchange *x, size_t i, bool stream)
{
  emd_event_id eid = BUILDLESS__SERVICE__V1__EVENT_ID__INIT;
  uint8_t pre[10];
  size_t n;

  if (x->json) {
    sb_printf(&x->reply, "{\"ok\":%s,\"eid\":",
              x->ok[i] ? "true" : "false");
    sb_json_str(&x->reply, x->ev[i]->event->id);
    sb_puts(&x->reply, "}\n");
    return;
  }
  eid.ok = x->ok[i];
  eid.eid = x->ev[i]->event->id;
  n = buildless__service__v1__event_id__get_packed_size(&eid);
  if (stream)
    sb_put(&x->reply, pre, varint_put(n, pre));
  if (!sb_reserve(&x->reply, n))
    return;
  buildless__service__v1__event_id__pack(&eid,
                                         (uint8_t *)x->reply.b.data +
                                             x->reply.b.len);
  x->reply.b.len += n;
}

/* One record line per accepted event (SPEC of --record at the top). */
static void build_records(struct exchange *x)
{
  size_t i;

  for (i = 0; i < x->nev; i++) {
    if (!x->ok[i])
      continue;
    sb_printf(&x->records, "{\"t_ms\":%" PRIu64 ",\"req\":%" PRIu64
              ",\"pos\":%zu,\"path\":", x->r->t_ms, x->req, i);
    sb_json_str(&x->records, x->path);
    sb_printf(&x->records, ",\"encoding\":\"%s\",\"content_encoding\":",
              x->json ? "json" : "protobuf");
    sb_json_str(&x->records, x->cenc);
    sb_printf(&x->records, ",\"auth\":\"%s\",\"fin\":%s,\"event\":",
              x->auth, x->ev[i]->fin ? "true" : "false");
    if (!x->records.oom &&
        emd_codec_event_to_json(x->ev[i], &x->records.b) != 0)
      x->records.oom = true;
    sb_puts(&x->records, "}\n");
  }
}

/* Decodes, checks and judges the events; fills x->reply. */
static int handle_events(struct exchange *x, enum route route)
{
  bool stream = route == R_STREAM;
  size_t i;

  if (read_body(x) != 0)
    return -1;
  if (route == R_PING)
    return 0;
  if ((x->json ? decode_json(x, stream) : decode_protobuf(x, stream)) != 0)
    return -1;
  if (judge(x) != 0)
    return -1;
  for (i = 0; i < x->nev; i++) {
    reply_event_id(x, i, stream);
    if (x->ok[i])
      x->naccepted++;
    else
      x->nrejected++;
  }
  if (x->reply.oom)
    return fail(x, 500, "out of memory");
  return 0;
}

static const char *script_name(const struct exchange *x)
{
  if (!x->have_step)
    return "none";
  if (x->step.cut)
    return "cut";
  if (x->step.garbled)
    return "garbled";
  if (x->step.status != 0)
    return "status";
  return x->step.delay_ms >= 0 ? "delay" : "none";
}

/* Counts the request, stores its records and its log line. */
static void commit(struct exchange *x)
{
  struct upstream *up = x->up;
  struct sb line = { 0 };
  uint64_t ms = mono_ms() - x->r->t0_mono, *hs;
  char status[32];
  size_t i;

  sb_printf(&line, "{\"t_ms\":%" PRIu64 ",\"req\":%" PRIu64 ",\"method\":",
            x->r->t_ms, x->req);
  sb_json_str(&line, x->method);
  sb_puts(&line, ",\"path\":");
  sb_json_str(&line, x->path);
  sb_printf(&line, ",\"status\":%d,\"events\":%zu,\"accepted\":%zu,"
            "\"rejected\":%zu,\"bytes\":%zu,\"encoding\":\"%s\","
            "\"content_encoding\":", x->status, x->nev, x->naccepted,
            x->nrejected, x->r->body_bytes, x->json ? "json" : "protobuf");
  sb_json_str(&line, x->cenc);
  sb_printf(&line, ",\"auth\":\"%s\",\"script\":\"%s\",\"delay_ms\":%d,"
            "\"ms\":%" PRIu64, x->auth, script_name(x), x->delay_ms, ms);
  if (x->msg[0] != '\0') {
    sb_puts(&line, ",\"error\":");
    sb_json_str(&line, x->msg);
  }
  sb_puts(&line, "}\n");

  /* The ids' hashes before the lock, a few slots fetched ahead in it. */
  hs = x->naccepted > 0 ? malloc(x->nev * sizeof(*hs)) : NULL;
  for (i = 0; hs != NULL && i < x->nev; i++)
    hs[i] = x->ok[i] ? idset_hash(x->ev[i]->event->id) : 0;
  pthread_mutex_lock(&up->mu);
  up->bytes_in += x->r->body_bytes;
  if (x->status == 0)
    up->ncut++;
  else if (x->status < 600)
    up->by_status[x->status]++;
  if (x->have_step && x->step.garbled)
    up->ngarbled++;
  up->nrejected += x->nrejected;
  for (i = 0; i < x->nev && x->naccepted > 0; i++) {
    if (hs != NULL && i + 8 < x->nev && hs[i + 8] != 0)
      idset_prefetch(&up->ids, hs[i + 8]);
    if (x->ok[i]) {
      up->nevents++;
      idset_add(&up->ids, hs != NULL ? hs[i]
                                     : idset_hash(x->ev[i]->event->id));
    }
  }
  if (x->records.b.len > 0 && !x->records.oom) {
    if (up->o->keep)
      sb_put(&up->events, x->records.b.data, x->records.b.len);
    if (up->record != NULL) {
      fwrite(x->records.b.data, 1, x->records.b.len, up->record);
      fflush(up->record);
    }
  }
  if (!line.oom) {
    sb_put(&up->reqlog, line.b.data, line.b.len);
    if (up->requests != NULL) {
      fwrite(line.b.data, 1, line.b.len, up->requests);
      fflush(up->requests);
    }
  }
  pthread_mutex_unlock(&up->mu);
  free(hs);
  sb_free(&line);
  if (x->status == 0)
    snprintf(status, sizeof(status), "cut, no reply");
  else
    snprintf(status, sizeof(status), "%d", x->status);
  if (!up->o->quiet)
    fprintf(stderr, "emd-upstream: req %" PRIu64 " %s %s -> %s, %zu "
            "events (%zu accepted)%s%s\n", x->req, x->method, x->path,
            status, x->nev, x->naccepted, x->msg[0] ? ": " : "", x->msg);
}

static void exchange_free(struct exchange *x)
{
  sb_free(&x->plain);
  sb_free(&x->reply);
  sb_free(&x->records);
  free(x->ev);
  free(x->ok);
}

/* The order: the script's delay and status, auth, the body, the verdicts;
 * then a cut or a garbled body replaces the reply if the script says so. */
static enum MHD_Result serve_telemetry(struct upstream *up, struct req *r,
                                       struct MHD_Connection *c,
                                       const char *url, const char *method)
{
  static const char garbage_pb[] = "\xff\xff\xff\xff\xff\xff\xff\xff\xff"
                                   "\xff\xff garbled";
  static const char garbage_json[] = "<html>garbled</html>\n";
  struct exchange x;
  enum MHD_Result ret;
  bool accept;
  char *body;
  size_t len;

  memset(&x, 0, sizeof(x));
  x.up = up;
  x.r = r;
  x.c = c;
  x.path = url;
  x.method = method;
  x.cenc = "none";
  x.auth = "none";
  x.delay_ms = 0;
  pthread_mutex_lock(&up->mu);
  x.req = ++up->nreq;
  if (r->route != R_NONE && strcmp(method, r->method) == 0) {
    x.have_step = up->script_head < up->script_n;
    if (x.have_step)
      x.step = up->script[up->script_head++];
    x.delay_ms = x.have_step && x.step.delay_ms >= 0 ? x.step.delay_ms
                                                     : up->delay_ms;
  }
  pthread_mutex_unlock(&up->mu);

  if (r->route == R_NONE)
    fail(&x, 404, "no such endpoint: %.200s (try %s)", url, PATH_STREAM);
  else if (strcmp(method, "POST") != 0)
    fail(&x, 405, "%.20s not allowed on %.200s, only POST", method, url);
  else {
    sleep_ms(up, x.delay_ms);
    if (x.have_step && x.step.status != 0 && !is_2xx(x.step.status))
      fail(&x, x.step.status, "%s", x.step.body[0] != '\0' ? x.step.body
                                                            : "scripted");
    else if (r->too_large)
      fail(&x, 413, "body over %zu bytes", up->o->max_body);
    else if (check_auth(&x) == 0 && handle_events(&x, r->route) == 0)
      x.status = x.have_step && x.step.status != 0 ? x.step.status : 200;
  }
  accept = is_2xx(x.status) &&
           (!x.have_step || (!x.step.cut && !x.step.garbled) ||
            x.step.accept);
  if (!accept)
    x.naccepted = 0;
  else if (x.naccepted > 0 && (up->o->keep || up->record != NULL))
    build_records(&x);
  if (x.have_step && x.step.garbled)
    x.status = 200;
  if (x.have_step && x.step.cut)
    x.status = 0;
  commit(&x);

  if (x.status == 0)
    ret = MHD_NO;                  /* MHD closes without a reply */
  else if (x.have_step && x.step.garbled) {
    len = x.json ? sizeof(garbage_json) - 1 : sizeof(garbage_pb) - 1;
    body = malloc(len);
    if (body != NULL)
      memcpy(body, x.json ? garbage_json : garbage_pb, len);
    ret = body == NULL ? MHD_NO
                       : respond(c, 200, x.json ? "application/json"
                                                : "application/x-protobuf",
                                 body, len, &x.step);
  } else if (!is_2xx(x.status))
    ret = respond_text(c, x.status, x.msg, x.have_step ? &x.step : NULL);
  else {
    body = sb_take(&x.reply, &len);
    ret = respond(c, x.status, x.json ? "application/json"
                                      : "application/x-protobuf",
                  body, len, x.have_step ? &x.step : NULL);
  }
  exchange_free(&x);
  return ret;
}

/* ---- the control interface ----------------------------------------- */

static int parse_style(const char *s, unsigned *out)
{
  static const struct {
    const char *name;
    unsigned styles;
  } tab[] = { { "any", STYLE_ANY }, { "bearer", STYLE_BEARER },
              { "x-api-key", STYLE_XAPIKEY }, { "basic", STYLE_BASIC } };
  size_t i;

  for (i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
    if (strcmp(s, tab[i].name) == 0) {
      *out = tab[i].styles;
      return 0;
    }
  }
  return -1;
}

/* No control bytes, which would end the header early. */
static bool header_safe(const char *v)
{
  for (; *v != '\0'; v++) {
    if ((unsigned char)*v < 0x20 || *v == 0x7f)
      return false;
  }
  return true;
}

/* Reads one step object at token *i (advanced past it). */
static int parse_step(const struct jdoc *d, int *i, struct step *st,
                      long long *repeat, char *msg, size_t msglen)
{
  int end = jskip(d, *i), k;
  long long v;

  memset(st, 0, sizeof(*st));
  st->delay_ms = -1;
  st->retry_after_in_s = -1;
  st->accept = true;
  *repeat = 1;
  if (d->t[*i].type != JSMN_OBJECT) {
    snprintf(msg, msglen, "a step must be an object");
    return -1;
  }
  for (k = *i + 1; k < end; k = jskip(d, k + 1)) {
    int val = k + 1;
    bool ok;

    if (jeq(d, k, "status"))
      ok = jint(d, val, 200, 599, &v) == 0 && (st->status = (int)v, true);
    else if (jeq(d, k, "delay_ms"))
      ok = jint(d, val, 0, MAX_DELAY_MS, &v) == 0 &&
           (st->delay_ms = (int)v, true);
    else if (jeq(d, k, "retry_after_in_s"))
      ok = jint(d, val, 0, 86400 * 365, &v) == 0 &&
           (st->retry_after_in_s = (int)v, true);
    else if (jeq(d, k, "retry_after") && d->t[val].type == JSMN_PRIMITIVE)
      ok = jint(d, val, 0, INT_MAX, &v) == 0 &&
           snprintf(st->retry_after, sizeof(st->retry_after), "%lld", v);
    else if (jeq(d, k, "retry_after"))
      ok = jstr(d, val, st->retry_after, sizeof(st->retry_after)) == 0 &&
           header_safe(st->retry_after);
    else if (jeq(d, k, "body"))
      ok = jstr(d, val, st->body, sizeof(st->body)) == 0;
    else if (jeq(d, k, "cut"))
      ok = jbool(d, val, &st->cut) == 0;
    else if (jeq(d, k, "garbled"))
      ok = jbool(d, val, &st->garbled) == 0;
    else if (jeq(d, k, "accept"))
      ok = jbool(d, val, &st->accept) == 0;
    else if (jeq(d, k, "repeat"))
      ok = jint(d, val, 1, MAX_STEPS, repeat) == 0;
    else {
      snprintf(msg, msglen, "unknown step member %.*s",
               d->t[k].end - d->t[k].start, d->s + d->t[k].start);
      return -1;
    }
    if (!ok) {
      snprintf(msg, msglen, "bad value for step member %.*s",
               d->t[k].end - d->t[k].start, d->s + d->t[k].start);
      return -1;
    }
  }
  *i = end;
  return 0;
}

/* Parses a JSON list of steps into a fresh array (*out, *n). */
static int parse_script(const char *s, size_t len, struct step **out,
                        size_t *n, char *msg, size_t msglen)
{
  struct step *v = NULL, st;
  struct jdoc d;
  long long repeat;
  size_t count = 0;
  int i, rc = -1;

  if (jdoc_parse(&d, s, len, msg, msglen) != 0)
    return -1;
  if (d.t[0].type != JSMN_ARRAY) {
    snprintf(msg, msglen, "the script must be a JSON list of steps");
    goto out;
  }
  v = calloc((size_t)d.t[0].size + 1, sizeof(*v));
  if (v == NULL) {
    snprintf(msg, msglen, "out of memory");
    goto out;
  }
  for (i = 1; i < d.n;) {
    if (parse_step(&d, &i, &st, &repeat, msg, msglen) != 0)
      goto out;
    if (count + (size_t)repeat > MAX_STEPS) {
      snprintf(msg, msglen, "over %d steps", MAX_STEPS);
      goto out;
    }
    if (repeat > 1) {
      struct step *w = realloc(v, (count + (size_t)repeat +
                                   (size_t)d.t[0].size) * sizeof(*v));
      if (w == NULL) {
        snprintf(msg, msglen, "out of memory");
        goto out;
      }
      v = w;
    }
    while (repeat-- > 0)
      v[count++] = st;
  }
  *out = v;
  *n = count;
  v = NULL;
  rc = 0;

out:
  free(v);
  jdoc_free(&d);
  return rc;
}

/* {"ids":["...",...]} into set. */
static int parse_ids(const char *s, size_t len, struct strset *set,
                     char *msg, size_t msglen)
{
  char id[KEY_MAX];
  struct jdoc d;
  int i, end, rc = -1;

  if (jdoc_parse(&d, s, len, msg, msglen) != 0)
    return -1;
  if (d.t[0].type != JSMN_OBJECT || d.t[0].size != 1 || !jeq(&d, 1, "ids") ||
      d.t[2].type != JSMN_ARRAY) {
    snprintf(msg, msglen, "expected {\"ids\":[\"...\",...]}");
    goto out;
  }
  end = jskip(&d, 2);
  for (i = 3; i < end; i = jskip(&d, i)) {
    if (jstr(&d, i, id, sizeof(id)) != 0) {
      snprintf(msg, msglen, "ids must be strings");
      goto out;
    }
    if (strset_add(set, id) != 0) {
      snprintf(msg, msglen, "out of memory");
      goto out;
    }
  }
  rc = 0;

out:
  jdoc_free(&d);
  return rc;
}

/* {"key":"K"|null, "forbid":"K"|null, "auth_style":"..."}. Checks all
 * members before it changes anything. */
static int control_key(struct upstream *up, const char *s, size_t len,
                       char *msg, size_t msglen)
{
  char key[KEY_MAX], forbid[KEY_MAX], style[32];
  bool set_key = false, null_key = false, set_forbid = false;
  bool clear_forbid = false, set_style = false;
  unsigned styles = STYLE_ANY;
  struct jdoc d;
  int k, rc = -1;

  if (jdoc_parse(&d, s, len, msg, msglen) != 0)
    return -1;
  if (d.t[0].type != JSMN_OBJECT) {
    snprintf(msg, msglen, "expected an object");
    goto out;
  }
  for (k = 1; k < d.n; k = jskip(&d, k + 1)) {
    if (jeq(&d, k, "key") && jnull(&d, k + 1))
      set_key = null_key = true;
    else if (jeq(&d, k, "key") && jstr(&d, k + 1, key, sizeof(key)) == 0)
      set_key = true;
    else if (jeq(&d, k, "forbid") && jnull(&d, k + 1))
      clear_forbid = true;
    else if (jeq(&d, k, "forbid") &&
             jstr(&d, k + 1, forbid, sizeof(forbid)) == 0)
      set_forbid = true;
    else if (jeq(&d, k, "auth_style") &&
             jstr(&d, k + 1, style, sizeof(style)) == 0 &&
             parse_style(style, &styles) == 0)
      set_style = true;
    else {
      snprintf(msg, msglen, "bad member %.*s (key, forbid: string or "
               "null; auth_style: any, bearer, x-api-key or basic)",
               d.t[k].end - d.t[k].start, d.s + d.t[k].start);
      goto out;
    }
  }
  rc = 0;
  pthread_mutex_lock(&up->mu);
  if (set_key) {
    free(up->key);
    up->key = null_key ? NULL : strdup(key);
    if (!null_key && up->key == NULL)
      rc = -1;
  }
  if (clear_forbid)
    strset_clear(&up->forbid);
  if (set_forbid && strset_add(&up->forbid, forbid) != 0)
    rc = -1;
  if (set_style)
    up->styles = styles;
  pthread_mutex_unlock(&up->mu);
  if (rc != 0)
    snprintf(msg, msglen, "out of memory");

out:
  jdoc_free(&d);
  return rc;
}

/* Auth, delay and the rules as the command line set them. Called with
 * mu held, or before the server starts. */
static int apply_start_settings(struct upstream *up)
{
  const struct opts *o = up->o;
  size_t i;

  free(up->key);
  up->key = NULL;
  strset_clear(&up->forbid);
  if (o->key != NULL && (up->key = strdup(o->key)) == NULL)
    return -ENOMEM;
  for (i = 0; i < o->forbid.cap; i++) {
    if (o->forbid.slot[i] != NULL &&
        strset_add(&up->forbid, o->forbid.slot[i]) != 0)
      return -ENOMEM;
  }
  up->styles = STYLE_ANY;
  if (o->auth_style != NULL)
    parse_style(o->auth_style, &up->styles);
  up->delay_ms = o->delay_ms;
  return 0;
}

/* Empties a file opened for appending; the next line goes at offset 0. */
static void truncate_log(FILE *f)
{
  if (f != NULL) {
    fflush(f);
    if (ftruncate(fileno(f), 0) != 0)
      perror("emd-upstream: truncating a log on reset");
  }
}

static void control_reset(struct upstream *up)
{
  pthread_mutex_lock(&up->mu);
  free(up->script);
  up->script = NULL;
  up->script_n = up->script_head = 0;
  strset_clear(&up->reject);
  strset_clear(&up->poison);
  sb_free(&up->events);
  sb_free(&up->reqlog);
  idset_clear(&up->ids);
  up->nreq = up->nevents = up->nrejected = up->ncut = up->ngarbled = 0;
  up->bytes_in = 0;
  memset(up->by_status, 0, sizeof(up->by_status));
  truncate_log(up->record);
  truncate_log(up->requests);
  apply_start_settings(up);
  pthread_mutex_unlock(&up->mu);
}

static enum MHD_Result control_stats(struct upstream *up,
                                     struct MHD_Connection *c)
{
  struct sb s = { 0 };
  const char *sep = "";
  int i;

  pthread_mutex_lock(&up->mu);
  sb_printf(&s, "{\"requests\":%" PRIu64 ",\"events\":%" PRIu64
            ",\"unique_ids\":%zu,\"duplicates\":%" PRIu64
            ",\"rejected\":%" PRIu64 ",\"cuts\":%" PRIu64
            ",\"garbled\":%" PRIu64 ",\"bytes_in\":%" PRIu64
            ",\"script_left\":%zu,\"keep\":%s,\"status\":{",
            up->nreq, up->nevents, up->ids.n, up->nevents - up->ids.n,
            up->nrejected, up->ncut, up->ngarbled, up->bytes_in,
            up->script_n - up->script_head, up->o->keep ? "true" : "false");
  for (i = 100; i < 600; i++) {
    if (up->by_status[i] != 0) {
      sb_printf(&s, "%s\"%d\":%" PRIu64, sep, i, up->by_status[i]);
      sep = ",";
    }
  }
  pthread_mutex_unlock(&up->mu);
  sb_puts(&s, "}}\n");
  return respond_json(c, 200, &s);
}

static enum MHD_Result control_dump(struct upstream *up,
                                    struct MHD_Connection *c,
                                    const struct sb *src)
{
  struct sb s = { 0 };
  char *body;
  size_t len;

  pthread_mutex_lock(&up->mu);
  sb_put(&s, src->b.data, src->b.len);
  pthread_mutex_unlock(&up->mu);
  if (s.oom) {
    sb_free(&s);
    return respond_text(c, 500, "out of memory", NULL);
  }
  body = sb_take(&s, &len);
  return respond(c, 200, "application/x-ndjson", body, len, NULL);
}

static enum MHD_Result control_ok(struct MHD_Connection *c,
                                  const char *extra)
{
  struct sb s = { 0 };

  sb_printf(&s, "{\"ok\":true%s}\n", extra);
  return respond_json(c, 200, &s);
}

static enum MHD_Result serve_control(struct upstream *up, struct req *r,
                                     struct MHD_Connection *c,
                                     const char *method)
{
  const char *body = r->body.b.data != NULL ? r->body.b.data : "";
  size_t len = r->body.b.len, n = 0;
  struct step *steps = NULL;
  char msg[MSG_MAX], extra[64];
  struct strset *set;

  if (r->route == R_NONE)
    return control_error(c, 404, "no such control endpoint");
  if (strcmp(method, r->method) != 0) {
    snprintf(msg, sizeof(msg), "use %s", r->method);
    return control_error(c, 405, msg);
  }
  if (r->too_large)
    return control_error(c, 413, "body too large");
  switch (r->route) {
  case R_STATS:
    return control_stats(up, c);
  case R_EVENTS:
    return control_dump(up, c, &up->events);
  case R_REQUESTS:
    return control_dump(up, c, &up->reqlog);
  case R_SCRIPT:
    if (parse_script(body, len, &steps, &n, msg, sizeof(msg)) != 0)
      return control_error(c, 400, msg);
    pthread_mutex_lock(&up->mu);
    free(up->script);
    up->script = steps;
    up->script_n = n;
    up->script_head = 0;
    pthread_mutex_unlock(&up->mu);
    snprintf(extra, sizeof(extra), ",\"steps\":%zu", n);
    return control_ok(c, extra);
  case R_REJECT:
  case R_POISON:
    /* Parsed into a private set first, so a bad body changes nothing. */
    set = calloc(1, sizeof(*set));
    if (set == NULL)
      return control_error(c, 500, "out of memory");
    if (parse_ids(body, len, set, msg, sizeof(msg)) != 0) {
      strset_clear(set);
      free(set);
      return control_error(c, 400, msg);
    }
    pthread_mutex_lock(&up->mu);
    for (n = 0; n < set->cap; n++) {
      if (set->slot[n] != NULL)
        strset_add(r->route == R_REJECT ? &up->reject : &up->poison,
                   set->slot[n]);
    }
    pthread_mutex_unlock(&up->mu);
    strset_clear(set);
    free(set);
    return control_ok(c, "");
  case R_KEY:
    if (control_key(up, body, len, msg, sizeof(msg)) != 0)
      return control_error(c, 400, msg);
    return control_ok(c, "");
  case R_RESET:
    control_reset(up);
    return control_ok(c, "");
  default:
    return control_error(c, 500, "unhandled route");
  }
}

/* ---- MHD callbacks ------------------------------------------------- */

static struct req *req_new(const char *url)
{
  struct req *r;
  size_t i;

  r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->t_ms = now_ms();
  r->t0_mono = mono_ms();
  r->control = strncmp(url, CONTROL_PREFIX, strlen(CONTROL_PREFIX)) == 0;
  for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    if (strcmp(url, routes[i].path) == 0) {
      r->route = routes[i].route;
      r->method = routes[i].method;
    }
  }
  return r;
}

/* Keeps the body up to max_body; beyond, keeps only its size. */
static void req_take_body(struct req *r, const char *data, size_t n,
                          size_t max)
{
  r->body_bytes += n;
  if (r->too_large)
    return;
  if (r->body.b.len + n > max) {
    r->too_large = true;
    sb_free(&r->body);
    return;
  }
  sb_put(&r->body, data, n);
  if (r->body.oom) {
    r->too_large = true;          /* answered 413, which is near enough */
    sb_free(&r->body);
  }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version,
                                  const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
  struct upstream *up = cls;
  struct req *r = *con_cls;
  const char *cl;

  if (r == NULL) {
    r = req_new(url);
    if (r == NULL)
      return MHD_NO;
    *con_cls = r;
    /* A body announced too large is refused before it is read. */
    cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > up->o->max_body) {
      r->too_large = true;
      return r->control ? serve_control(up, r, c, method)
                        : serve_telemetry(up, r, c, url, method);
    }
    if (cl != NULL && strtoull(cl, NULL, 10) > 0)
      sb_reserve(&r->body, strtoull(cl, NULL, 10));
    return MHD_YES;
  }
  if (*upload_data_size != 0) {
    req_take_body(r, upload_data, *upload_data_size, up->o->max_body);
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (r->control)
    return serve_control(up, r, c, method);
  return serve_telemetry(up, r, c, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c,
                         void **con_cls, enum MHD_RequestTerminationCode toe)
{
  struct req *r = *con_cls;

  if (r == NULL)
    return;
  sb_free(&r->body);
  emd_arena_free(&r->arena);
  free(r);
  *con_cls = NULL;
}

/* ---- start and stop ------------------------------------------------ */

static void usage(FILE *f)
{
  fputs(
"usage: emd-upstream [options]\n"
"A test stand-in for the telemetry service (emitd SPEC 1): it accepts\n"
"event:emit, event:stream and event:ping, records every event it accepts\n"
"and can be scripted to fail. See tests/upstream/README.md.\n"
"\n"
"  --listen HOST:PORT   where to listen (default " DEFAULT_LISTEN "; PORT 0\n"
"                       picks a free port)\n"
"  --port-file FILE     write the port there once listening\n"
"  --record FILE        append every accepted event as an NDJSON line\n"
"  --requests FILE      append every request as an NDJSON line\n"
"  --key KEY            require KEY (Bearer, X-API-Key or Basic apikey:KEY)\n"
"  --forbid KEY         answer 403 to KEY (repeatable)\n"
"  --auth-style STYLE   any (default), bearer, x-api-key or basic\n"
"  --script JSON        a list of steps, as POST /_test/script takes\n"
"  --reject IDS         comma-separated ids that get ok:false\n"
"  --poison IDS         comma-separated ids that make their request 400\n"
"  --delay-ms N         wait N ms before every telemetry reply\n"
"  --max-body BYTES     largest body, before and after decompression\n"
"                       (default 64 MiB)\n"
"  --no-keep            keep no records in memory (for benchmarks;\n"
"                       /_test/events is then empty)\n"
"  --tls-cert FILE      serve HTTPS with this PEM certificate ...\n"
"  --tls-key FILE       ... and this PEM key\n"
"  --quiet              no line per request on stderr\n"
"  --help               this text\n", f);
}

static int add_ids(struct strset *set, const char *list)
{
  char *copy = strdup(list), *tok, *save = NULL;
  int rc = 0;

  if (copy == NULL)
    return -ENOMEM;
  for (tok = strtok_r(copy, ",", &save); tok != NULL && rc == 0;
       tok = strtok_r(NULL, ",", &save))
    rc = strset_add(set, tok);
  free(copy);
  return rc;
}

/* Reads a PEM file whole, NUL-terminated, into *out (malloc'd). */
static int read_pem(const char *path, char **out)
{
  FILE *f = fopen(path, "rb");
  char *buf;
  long n;

  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
      n > (1 << 20) || fseek(f, 0, SEEK_SET) != 0 ||
      (buf = malloc((size_t)n + 1)) == NULL) {
    fprintf(stderr, "emd-upstream: cannot read %s\n", path);
    if (f != NULL)
      fclose(f);
    return -1;
  }
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fprintf(stderr, "emd-upstream: cannot read %s\n", path);
    free(buf);
    fclose(f);
    return -1;
  }
  buf[n] = '\0';
  fclose(f);
  free(*out);
  *out = buf;
  return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
  enum { O_PORTFILE = 256, O_AUTHSTYLE, O_DELAY, O_MAXBODY, O_NOKEEP,
         O_TLSCERT, O_TLSKEY };
  static const struct option longopts[] = {
    { "listen", required_argument, NULL, 'l' },
    { "port-file", required_argument, NULL, O_PORTFILE },
    { "record", required_argument, NULL, 'r' },
    { "requests", required_argument, NULL, 'R' },
    { "key", required_argument, NULL, 'k' },
    { "forbid", required_argument, NULL, 'f' },
    { "auth-style", required_argument, NULL, O_AUTHSTYLE },
    { "script", required_argument, NULL, 's' },
    { "reject", required_argument, NULL, 'j' },
    { "poison", required_argument, NULL, 'p' },
    { "delay-ms", required_argument, NULL, O_DELAY },
    { "max-body", required_argument, NULL, O_MAXBODY },
    { "no-keep", no_argument, NULL, O_NOKEEP },
    { "tls-cert", required_argument, NULL, O_TLSCERT },
    { "tls-key", required_argument, NULL, O_TLSKEY },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
  };
  unsigned styles;
  char *end;
  long long v;
  int ch;

  o->listen = DEFAULT_LISTEN;
  o->max_body = DEFAULT_MAX_BODY;
  o->keep = true;
  while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (ch) {
    case 'l': o->listen = optarg; break;
    case O_PORTFILE: o->port_file = optarg; break;
    case 'r': o->record = optarg; break;
    case 'R': o->requests = optarg; break;
    case 'k': o->key = optarg; break;
    case 's': o->script = optarg; break;
    case 'q': o->quiet = true; break;
    case O_NOKEEP: o->keep = false; break;
    case O_TLSCERT:
    case O_TLSKEY:
      if (read_pem(optarg, ch == O_TLSCERT ? &o->tls_cert : &o->tls_key)
          != 0)
        return 2;
      break;
    case 'f':
      if (strset_add(&o->forbid, optarg) != 0)
        return 1;
      break;
    case 'j':
    case 'p':
      if (add_ids(ch == 'j' ? &o->reject : &o->poison, optarg) != 0)
        return 1;
      break;
    case O_AUTHSTYLE:
      if (parse_style(optarg, &styles) != 0) {
        fprintf(stderr, "emd-upstream: --auth-style %s: use any, bearer, "
                "x-api-key or basic\n", optarg);
        return 2;
      }
      o->auth_style = optarg;
      break;
    case O_DELAY:
    case O_MAXBODY:
      errno = 0;
      v = strtoll(optarg, &end, 10);
      if (errno != 0 || *end != '\0' || v < 0 ||
          (ch == O_DELAY && v > MAX_DELAY_MS) ||
          (ch == O_MAXBODY && (v < 1 || v > (1ll << 30)))) {
        fprintf(stderr, "emd-upstream: %s %s: out of range\n",
                ch == O_DELAY ? "--delay-ms" : "--max-body", optarg);
        return 2;
      }
      if (ch == O_DELAY)
        o->delay_ms = (int)v;
      else
        o->max_body = (size_t)v;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "emd-upstream: unexpected argument %s\n", argv[optind]);
    return 2;
  }
  if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
    fprintf(stderr, "emd-upstream: --tls-cert and --tls-key go together\n");
    return 2;
  }
  return 0;
}

/* "HOST:PORT" or "[V6]:PORT" into a socket address. */
static int resolve_listen(const char *spec, struct sockaddr_storage *ss,
                          bool *v6)
{
  char host[256];
  const char *port;
  struct addrinfo hints, *ai = NULL;
  size_t hl;
  int rc;

  port = strrchr(spec, ':');
  if (port == NULL || port == spec)
    return -1;
  hl = (size_t)(port - spec);
  if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') {
    spec++;
    hl -= 2;
  }
  if (hl >= sizeof(host))
    return -1;
  memcpy(host, spec, hl);
  host[hl] = '\0';
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  rc = getaddrinfo(host, port + 1, &hints, &ai);
  if (rc != 0 || ai == NULL || ai->ai_addrlen > sizeof(*ss))
    goto fail;
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  *v6 = ai->ai_family == AF_INET6;
  freeaddrinfo(ai);
  return 0;

fail:
  if (ai != NULL)
    freeaddrinfo(ai);
  return -1;
}

static int write_port_file(const char *path, unsigned port)
{
  char tmp[4096];
  FILE *f;

  /* Written aside and renamed, so a test never reads half a number. */
  if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
    return -1;
  f = fopen(tmp, "w");
  if (f == NULL)
    return -1;
  fprintf(f, "%u\n", port);
  if (fclose(f) != 0 || rename(tmp, path) != 0)
    return -1;
  return 0;
}

static int upstream_open(struct upstream *up, const struct opts *o,
                         char *msg, size_t msglen)
{
  size_t i;

  up->o = o;
  atomic_init(&up->stopping, false);
  pthread_mutex_init(&up->mu, NULL);
  if (apply_start_settings(up) != 0)
    goto nomem;
  for (i = 0; i < o->reject.cap; i++) {
    if (o->reject.slot[i] != NULL &&
        strset_add(&up->reject, o->reject.slot[i]) != 0)
      goto nomem;
  }
  for (i = 0; i < o->poison.cap; i++) {
    if (o->poison.slot[i] != NULL &&
        strset_add(&up->poison, o->poison.slot[i]) != 0)
      goto nomem;
  }
  if (o->script != NULL &&
      parse_script(o->script, strlen(o->script), &up->script,
                   &up->script_n, msg, msglen) != 0)
    return -1;
  if (o->record != NULL && (up->record = fopen(o->record, "a")) == NULL) {
    snprintf(msg, msglen, "--record %s: %s", o->record, strerror(errno));
    return -1;
  }
  if (o->requests != NULL &&
      (up->requests = fopen(o->requests, "a")) == NULL) {
    snprintf(msg, msglen, "--requests %s: %s", o->requests,
             strerror(errno));
    return -1;
  }
  return 0;

nomem:
  snprintf(msg, msglen, "out of memory");
  return -1;
}

static void upstream_close(struct upstream *up)
{
  if (up->record != NULL)
    fclose(up->record);
  if (up->requests != NULL)
    fclose(up->requests);
  free(up->key);
  free(up->script);
  strset_clear(&up->forbid);
  strset_clear(&up->reject);
  strset_clear(&up->poison);
  sb_free(&up->events);
  sb_free(&up->reqlog);
  idset_clear(&up->ids);
  pthread_mutex_destroy(&up->mu);
}

static struct MHD_Daemon *start_daemon(struct upstream *up,
                                       const struct sockaddr_storage *ss,
                                       bool v6)
{
  unsigned flags = MHD_USE_THREAD_PER_CONNECTION |
                   MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;

  if (!up->o->quiet)
    flags |= MHD_USE_ERROR_LOG;
  if (v6)
    flags |= MHD_USE_IPv6;
  if (up->o->tls_cert != NULL)
    return MHD_start_daemon(flags | MHD_USE_TLS, 0, NULL, NULL, on_request,
                            up,
                            MHD_OPTION_HTTPS_MEM_CERT, up->o->tls_cert,
                            MHD_OPTION_HTTPS_MEM_KEY, up->o->tls_key,
                            MHD_OPTION_SOCK_ADDR, ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, up,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
                            MHD_OPTION_END);
  return MHD_start_daemon(flags, 0, NULL, NULL, on_request, up,
                          MHD_OPTION_SOCK_ADDR, ss,
                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, up,
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                          MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
                          MHD_OPTION_END);
}

int main(int argc, char **argv)
{
  struct opts o;
  struct upstream up;
  struct sockaddr_storage ss;
  struct MHD_Daemon *d = NULL;
  const union MHD_DaemonInfo *info;
  char msg[MSG_MAX], host[256];
  sigset_t sigs;
  bool v6 = false;
  int rc, sig;

  memset(&o, 0, sizeof(o));
  memset(&up, 0, sizeof(up));
  rc = parse_args(argc, argv, &o);
  if (rc != 0)
    goto out_opts;
  rc = 2;
  if (resolve_listen(o.listen, &ss, &v6) != 0) {
    fprintf(stderr, "emd-upstream: --listen %s: expected HOST:PORT\n",
            o.listen);
    goto out_opts;
  }
  if (upstream_open(&up, &o, msg, sizeof(msg)) != 0) {
    fprintf(stderr, "emd-upstream: %s\n", msg);
    goto out;
  }
  /* Every thread MHD starts inherits this mask; main takes the signals. */
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  d = start_daemon(&up, &ss, v6);
  info = d != NULL ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)
                   : NULL;
  if (info == NULL) {
    fprintf(stderr, "emd-upstream: cannot listen on %s (in use?)\n",
            o.listen);
    goto out;
  }
  if (o.port_file != NULL && write_port_file(o.port_file, info->port)) {
    fprintf(stderr, "emd-upstream: --port-file %s: %s\n", o.port_file,
            strerror(errno));
    goto out;
  }
  snprintf(host, sizeof(host), "%.*s", (int)(strrchr(o.listen, ':') -
                                             o.listen), o.listen);
  fprintf(stderr, "emd-upstream listening on %s://%s:%u\n",
          o.tls_cert != NULL ? "https" : "http", host, info->port);
  sigwait(&sigs, &sig);
  if (!o.quiet)
    fprintf(stderr, "emd-upstream: %s, stopping\n", strsignal(sig));
  rc = 0;

out:
  atomic_store(&up.stopping, true);
  if (d != NULL)
    MHD_stop_daemon(d);
  upstream_close(&up);
out_opts:
  strset_clear(&o.forbid);
  free(o.tls_cert);
  free(o.tls_key);
  strset_clear(&o.reject);
  strset_clear(&o.poison);
  return rc;
}
