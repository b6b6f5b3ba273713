/* emd_forward.c: see emd_forward.h.
 *
 * Shape: pending events are copied from the spool into batches (framed as
 * delimited Events, so splitting one is a copy of a byte range); a batch
 * is sent by one easy handle of a small pool, on one curl multi whose
 * sockets and timer live on the libuv loop as in curl's multi-uv.c. A
 * batch stays in memory until every event in it has an outcome, so a
 * retry resends the very same events. `last_taken` is the highest seq in
 * any batch: the spool is read only past it. */
#include "emd_forward.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <zlib.h>
#include <zstd.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "emd_arena.h"
#include "emd_backoff.h"
#include "emd_codec.h"
#include "emd_err.h"
#include "emd_log.h"
#include "emd_varint.h"

#define MOD "forward"
#define REPLY_MAX (1u << 20)      /* reply bytes kept; more is unreadable */
#define EXCERPT_MAX 512           /* reply bytes kept with a dead letter */
#define RETRY_AFTER_CAP_MS (UINT64_C(24) * 3600 * 1000)
#define GZIP_LEVEL 1              /* speed over ratio: keep up with ingest */
#define ZSTD_LEVEL 1
#define JSON_TOKENS 32            /* {"ok":…,"eid":…,"sid":…} needs 7 */

/* One event of a batch. Its framed bytes (varint length, then the packed
 * Event) sit in the batch buffer; off points past the varint. */
struct fw_item {
  uint64_t seq;
  size_t off;
  size_t len;
  uint32_t attempts;        /* failed attempts so far, the spool's own too */
  uint32_t id_off;          /* its id at off + id_off, id_len long, as the */
  uint32_t id_len;          /* spool noted it (id_len 0: find it) */
};

struct fw_batch {
  struct fw_batch *next;    /* in the retry queue or the spare list */
  struct fw_item *items;
  size_t n, items_cap;
  uint8_t *buf;             /* framed events, back to back */
  size_t len, buf_cap;
  size_t payload;           /* sum of items' len (batch_max_bytes) */
  bool full;                /* the next event did not fit */
};

struct fw_sock {
  uv_poll_t poll;
  struct emd_forward *fw;
  curl_socket_t fd;
  struct fw_sock *prev, *next;
};

/* One request slot: an easy handle with its buffers, reused. */
struct fw_req {
  struct fw_req *next_idle;
  struct fw_req *next_all;
  struct emd_forward *fw;
  CURL *easy;
  unsigned cfg_gen;         /* options set for this config generation */
  unsigned key_gen;         /* the key the request was sent with */
  unsigned hdr_cfg_gen;     /* headers built for this config ... */
  unsigned hdr_key_gen;     /* ... and this key */
  bool single;              /* sent to event:emit (a reload may change */
  bool json;                /* mode and encoding while it is in flight) */
  struct fw_batch *batch;   /* in flight, or NULL */
  struct curl_slist *headers;  /* kept while config and key stay */
  struct emd_codec_buf body;
  struct emd_codec_buf zbody;
  struct emd_codec_buf reply;
  bool reply_cut;           /* the reply passed REPLY_MAX */
  char errbuf[CURL_ERROR_SIZE];
};

/* What the reply said about one event. */
struct fw_verdict {
  int8_t ok;                /* 1 accepted, 0 rejected, -1 no verdict */
  const void *excerpt;      /* its EventID (or JSON line), for a dead letter */
  size_t excerpt_len;
};

struct emd_forward {
  uv_loop_t *loop;
  const struct emd_config *cfg;
  struct emd_spool *sp;
  CURLM *multi;
  uv_timer_t curl_timer;    /* curl's timeout */
  uv_timer_t linger;        /* a partial batch waits at most this long */
  uv_timer_t hold;          /* backoff, Retry-After or a pause */
  uv_fs_event_t key_file_ev;
  uv_fs_event_t key_dir_ev;
  int handles;              /* open uv handles, sockets too */
  bool closing;
  bool linger_due;          /* the linger ran out: send what there is */
  bool flushing;            /* emd_forward_flush(): no linger */
  uint64_t retry_after_until;  /* loop ms before which Retry-After holds */
  bool curl_inited;
  char *url;                /* event:stream or event:emit, per mode */
  char *auth_header;        /* secret: the header line with the key */
  char *key_path;           /* the watched key file, NULL if none */
  unsigned key_gen;         /* bumped on every key change */
  unsigned cfg_gen;         /* bumped on every reconfigure */
  uint64_t last_taken;      /* highest seq in any batch */
  struct fw_batch *forming; /* being filled from the spool */
  struct fw_batch *retry;   /* waiting to be resent, by first seq */
  struct fw_batch *spare;   /* emptied batches kept for reuse */
  struct fw_req *idle;
  struct fw_req *reqs;      /* every slot, for close */
  struct fw_sock *socks;    /* every polled socket, for close */
  enum emd_forward_state state;
  struct emd_backoff backoff;
  struct emd_rng rng;
  struct emd_arena arena;   /* one request's or one reply's scratch */
  z_stream gz;
  bool gz_inited;
  ZSTD_CCtx *zstd;
  struct emd_forward_stats st;
};

static void pump(struct emd_forward *fw);

/* ---- small helpers ---------------------------------------------------- */

static uint64_t wall_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void secret_free(char *s)
{
  if (s != NULL) {
    explicit_bzero(s, strlen(s));
    free(s);
  }
}

static size_t min_size(size_t a, size_t b)
{
  return a < b ? a : b;
}

static int buf_reserve(struct emd_codec_buf *b, size_t extra)
{
  size_t cap;
  char *p;

  if (b->cap - b->len >= extra)
    return 0;
  cap = b->cap ? b->cap : 4096;
  while (cap - b->len < extra)
    cap *= 2;
  p = realloc(b->data, cap);
  if (p == NULL)
    return -ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

static void buf_free(struct emd_codec_buf *b)
{
  free(b->data);
  memset(b, 0, sizeof(*b));
}

static bool varint_get_long(const uint8_t **p, const uint8_t *end,
                            uint64_t *v)
{
  uint64_t x = 0;
  unsigned shift;

  for (shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t c = *(*p)++;
    x |= (uint64_t)(c & 0x7f) << shift;
    if ((c & 0x80) == 0) {
      *v = x;
      return true;
    }
  }
  return false;
}

static inline bool varint_get(const uint8_t **p, const uint8_t *end,
                              uint64_t *v)
{
  if (*p < end && **p < 0x80) {        /* most keys and lengths */
    *v = *(*p)++;
    return true;
  }
  return varint_get_long(p, end, v);
}

/* Finds the first length-delimited field `field` of a packed message. */
static bool pb_find_slow(const uint8_t *p, size_t len, uint32_t field,
                         const uint8_t **out, size_t *out_len)
{
  const uint8_t *end = p + len;
  uint64_t key, v;

  while (p < end) {
    if (!varint_get(&p, end, &key))
      return false;
    switch (key & 7) {
    case 0:
      if (!varint_get(&p, end, &v))
        return false;
      break;
    case 1:
    case 5:
      v = (key & 7) == 1 ? 8 : 4;
      if ((uint64_t)(end - p) < v)
        return false;
      p += v;
      break;
    case 2:
      if (!varint_get(&p, end, &v) || (uint64_t)(end - p) < v)
        return false;
      if ((key >> 3) == field) {
        *out = p;
        *out_len = (size_t)v;
        return true;
      }
      p += v;
      break;
    default:
      return false;
    }
  }
  return false;
}

/* pb_find_slow with a fast path, as emd_spool.c's wire_find has: the
 * fields emitd packs before the one wanted have one-byte keys and are
 * varints or strings, with values and lengths of one or two bytes. Those
 * are stepped over here exactly as pb_find_slow would; at anything else
 * it goes on from there. The same answer on every input. */
static inline bool pb_find(const uint8_t *p, size_t len, uint32_t field,
                           const uint8_t **out, size_t *out_len)
{
  const uint8_t *end = p + len;

  /* a one-byte key (bit 7 clear) of wire type 0 or 2 (bits 0, 2 clear) */
  while (end - p >= 3 && (p[0] & 0x85) == 0) {
    size_t v = p[1];
    const uint8_t *q = p + 2;

    if (v >= 0x80) {
      if (p[2] >= 0x80)
        break;                        /* a longer varint */
      v = (v & 0x7f) | (size_t)p[2] << 7;
      q = p + 3;
    }
    if ((p[0] & 7) == 0) {            /* a varint: v was its value */
      p = q;
      continue;
    }
    if ((size_t)(end - q) < v)
      return false;
    if ((uint32_t)(p[0] >> 3) == field) {
      *out = q;
      *out_len = v;
      return true;
    }
    p = q + v;
  }
  return pb_find_slow(p, (size_t)(end - p), field, out, out_len);
}

/* The TelemetryEvent id inside a packed Event (Event.event = 5, id = 2). */
static bool event_id(const uint8_t *ev, size_t len, const uint8_t **id,
                     size_t *id_len)
{
  const uint8_t *te;
  size_t te_len;

  return pb_find(ev, len, 5, &te, &te_len) &&
         pb_find(te, te_len, 2, id, id_len);
}

/* The id of b's event i: where the spool said, or found. */
static inline bool item_id(const struct fw_batch *b, size_t i,
                           const uint8_t **id, size_t *id_len)
{
  const struct fw_item *it = &b->items[i];

  if (it->id_len != 0) {
    *id = b->buf + it->off + it->id_off;
    *id_len = it->id_len;
    return true;
  }
  return event_id(b->buf + it->off, it->len, id, id_len);
}

/* ---- batches ---------------------------------------------------------- */

static struct fw_batch *batch_get(struct emd_forward *fw)
{
  struct fw_batch *b = fw->spare;

  if (b != NULL) {
    fw->spare = b->next;
    b->next = NULL;
    return b;
  }
  return calloc(1, sizeof(*b));
}

static void batch_put(struct emd_forward *fw, struct fw_batch *b)
{
  b->n = b->len = b->payload = 0;
  b->full = false;
  b->next = fw->spare;
  fw->spare = b;
}

static void batch_free(struct fw_batch *b)
{
  free(b->items);
  free(b->buf);
  free(b);
}

static int batch_grow(struct fw_batch *b, size_t items, size_t bytes)
{
  if (b->items_cap - b->n < items) {
    size_t cap = b->items_cap ? b->items_cap * 2 : 64;
    struct fw_item *p;
    while (cap - b->n < items)
      cap *= 2;
    p = realloc(b->items, cap * sizeof(*p));
    if (p == NULL)
      return -ENOMEM;
    b->items = p;
    b->items_cap = cap;
  }
  if (b->buf_cap - b->len < bytes) {
    size_t cap = b->buf_cap ? b->buf_cap * 2 : 16384;
    uint8_t *p;
    while (cap - b->len < bytes)
      cap *= 2;
    p = realloc(b->buf, cap);
    if (p == NULL)
      return -ENOMEM;
    b->buf = p;
    b->buf_cap = cap;
  }
  return 0;
}

/* Room for items more items and bytes more bytes. Batches are reused, so
 * after the first few this never grows anything. */
static inline int batch_reserve(struct fw_batch *b, size_t items,
                                size_t bytes)
{
  if (b->items_cap - b->n >= items && b->buf_cap - b->len >= bytes)
    return 0;
  return batch_grow(b, items, bytes);
}

/* Appends e to b, which has room for it. Everything is stored before the
 * copy, so that nothing is live across it. */
static inline void batch_append(struct fw_batch *b,
                                const struct emd_spool_entry *e)
{
  size_t len = e->event_len;
  uint8_t *at = emd_varint_put(b->buf + b->len, len);
  struct fw_item *it = &b->items[b->n++];

  it->seq = e->seq;
  it->off = (size_t)(at - b->buf);
  it->len = len;
  it->attempts = e->attempts;
  it->id_off = e->id != NULL ? (uint32_t)(e->id - e->event) : 0;
  it->id_len = e->id != NULL ? (uint32_t)e->id_len : 0;
  b->len = it->off + len;
  b->payload += len;
  memcpy(at, e->event, len);
}

static size_t frame_start(const struct fw_batch *b, size_t i)
{
  return i == b->n ? b->len
                   : b->items[i].off - emd_varint_size(b->items[i].len);
}

/* A new batch holding items [from, to) of b. */
static struct fw_batch *batch_range(struct emd_forward *fw,
                                    const struct fw_batch *b, size_t from,
                                    size_t to)
{
  size_t start = frame_start(b, from), end = frame_start(b, to), i;
  struct fw_batch *nb = batch_get(fw);

  if (nb == NULL || batch_reserve(nb, to - from, end - start) != 0) {
    if (nb != NULL)
      batch_put(fw, nb);
    return NULL;
  }
  memcpy(nb->buf, b->buf + start, end - start);
  nb->len = end - start;
  for (i = from; i < to; i++) {
    nb->items[nb->n] = b->items[i];
    nb->items[nb->n].off -= start;
    nb->payload += b->items[i].len;
    nb->n++;
  }
  return nb;
}

/* Keeps the items whose keep[i] is set, in order, in place. */
static void batch_compact(struct fw_batch *b, const bool *keep)
{
  size_t i, w = 0, at = 0, n = b->n;

  b->payload = 0;
  for (i = 0; i < n; i++) {
    size_t start = frame_start(b, i), end = b->items[i].off + b->items[i].len;
    struct fw_item it = b->items[i];
    if (!keep[i])
      continue;
    memmove(b->buf + at, b->buf + start, end - start);
    it.off = at + (it.off - start);
    at += end - start;
    b->items[w++] = it;
    b->payload += it.len;
  }
  b->n = w;
  b->len = at;
}

/* Puts b into the retry queue, which stays in seq order. */
static void retry_push(struct emd_forward *fw, struct fw_batch *b)
{
  struct fw_batch **pp = &fw->retry;

  if (b->n == 0) {
    batch_put(fw, b);
    return;
  }
  while (*pp != NULL && (*pp)->items[0].seq < b->items[0].seq)
    pp = &(*pp)->next;
  b->next = *pp;
  *pp = b;
}

/* ---- the key ---------------------------------------------------------- */

/* The header line that carries key in the configured style. */
static char *auth_header_for(enum emd_auth auth, const char *key)
{
  static const char basic[] = "Authorization: Basic ";
  size_t klen = strlen(key), n;
  char *h, *cred;

  if (auth != EMD_AUTH_BASIC) {
    const char *prefix = auth == EMD_AUTH_X_API_KEY
                           ? "X-API-Key: " : "Authorization: Bearer ";
    n = strlen(prefix) + klen + 1;
    h = malloc(n);
    if (h != NULL)
      snprintf(h, n, "%s%s", prefix, key);
    return h;
  }
  /* HTTP Basic: user "apikey", the key as password */
  n = sizeof("apikey:") + klen;
  cred = malloc(n);
  h = malloc(sizeof(basic) + 4 * (n / 3 + 1));
  if (cred == NULL || h == NULL) {
    secret_free(cred);
    free(h);
    return NULL;
  }
  snprintf(cred, n, "apikey:%s", key);
  memcpy(h, basic, sizeof(basic) - 1);
  n = sizeof(basic) - 1 + emd_codec_base64((const uint8_t *)cred, n - 1,
                                           h + sizeof(basic) - 1);
  h[n] = '\0';
  secret_free(cred);
  return h;
}

/* Reads the key per the config and builds its header. Returns 1 when the
 * header differs from the one in use (and installs it), 0 when it is the
 * same, <0 on failure (the old one stays). */
static int key_load(struct emd_forward *fw)
{
  const struct emd_config *cfg = fw->cfg;
  char *key = NULL, *header = NULL, err[512];
  bool same;
  int rc;

  /* the config checked api_key, and the file's reader checks the file:
   * either way the key is fit for a header line (and NULL, not "", when
   * there is none) */
  if (cfg->upstream.api_key_file != NULL) {
    rc = emd_config_read_key_file(cfg->upstream.api_key_file, &key, err,
                                  sizeof(err));
    if (rc != 0) {
      emd_log_warn(MOD, "upstream.api_key_file %s", err);
      return rc;
    }
  } else if (cfg->upstream.api_key != NULL) {
    key = strdup(cfg->upstream.api_key);
    if (key == NULL)
      return -ENOMEM;
  }
  if (key != NULL) {
    header = auth_header_for(cfg->upstream.auth, key);
    secret_free(key);
    if (header == NULL)
      return -ENOMEM;
  }
  same = header == NULL ? fw->auth_header == NULL
                        : fw->auth_header != NULL &&
                            strcmp(header, fw->auth_header) == 0;
  secret_free(fw->auth_header);
  fw->auth_header = header;
  if (same)
    return 0;
  fw->key_gen++;
  return 1;
}

static bool is_paused(const struct emd_forward *fw)
{
  return fw->state == EMD_FWD_UNAUTHORIZED ||
         fw->state == EMD_FWD_FORBIDDEN ||
         fw->state == EMD_FWD_MISCONFIGURED;
}

/* Sending may start again now (the key or the config changed). */
static void resume(struct emd_forward *fw)
{
  if (!is_paused(fw))
    return;
  uv_timer_stop(&fw->hold);
  emd_backoff_reset(&fw->backoff);
  pump(fw);
}

static void on_key_event(uv_fs_event_t *h, const char *name, int events,
                         int status);

/* Watches the key file, and its directory for editors and secret
 * mounters that replace the file rather than write it. */
static void key_watch(struct emd_forward *fw)
{
  const char *path = fw->cfg->upstream.api_key_file;
  const char *slash;
  char *dir;
  int rc;

  uv_fs_event_stop(&fw->key_file_ev);
  uv_fs_event_stop(&fw->key_dir_ev);
  free(fw->key_path);
  fw->key_path = NULL;
  if (path == NULL)
    return;
  slash = strrchr(path, '/');
  if (slash == NULL)
    dir = strdup(".");
  else
    dir = strndup(path, slash == path ? 1 : (size_t)(slash - path));
  fw->key_path = strdup(path);
  if (dir == NULL || fw->key_path == NULL) {
    free(dir);
    return;
  }
  rc = uv_fs_event_start(&fw->key_dir_ev, on_key_event, dir, 0);
  if (rc != 0)
    emd_log_warn(MOD, "cannot watch %s for key changes: %s", dir,
                 uv_strerror(rc));
  /* follows a symlinked key file to its target */
  uv_fs_event_start(&fw->key_file_ev, on_key_event, path, 0);
  free(dir);
}

static void on_key_event(uv_fs_event_t *h, const char *name, int events,
                         int status)
{
  struct emd_forward *fw = h->data;

  if (fw->closing || status < 0)
    return;
  /* the file watch follows an inode that a replacement leaves behind */
  if (h == &fw->key_dir_ev && fw->key_path != NULL) {
    uv_fs_event_stop(&fw->key_file_ev);
    uv_fs_event_start(&fw->key_file_ev, on_key_event, fw->key_path, 0);
  }
  if (key_load(fw) == 1) {
    emd_log_info(MOD, "upstream API key changed (%s)", fw->key_path);
    resume(fw);
  }
}

void emd_forward_key_reload(struct emd_forward *fw)
{
  if (fw == NULL || fw->closing)
    return;
  if (key_load(fw) == 1)
    emd_log_info(MOD, "upstream API key reloaded");
  resume(fw);
}

/* ---- verdicts and state ----------------------------------------------- */

enum emd_verdict emd_forward_classify(int curl_rc, long status,
                                      size_t n_events)
{
  if (curl_rc != CURLE_OK) {
    /* an endpoint or CA file that can never work: a person must act */
    if (curl_rc == CURLE_UNSUPPORTED_PROTOCOL ||
        curl_rc == CURLE_URL_MALFORMAT || curl_rc == CURLE_SSL_CACERT_BADFILE)
      return EMD_PAUSE;
    return EMD_RETRY;
  }
  if (status >= 200 && status <= 299)
    return EMD_DONE;
  if (status == 401 || status == 403 || status == 404 || status == 405)
    return EMD_PAUSE;
  /* no redirects are followed (they could carry the key elsewhere): a
   * moved endpoint is a configuration matter */
  if (status >= 300 && status <= 399)
    return EMD_PAUSE;
  if (status == 408 || status == 429)
    return EMD_RETRY;
  if (status >= 400 && status <= 499)
    return n_events > 1 ? EMD_SPLIT : EMD_DEAD;
  /* 5xx, and 1xx, 0 or nonsense: nothing says the events are at fault */
  return EMD_RETRY;
}

const char *emd_forward_state_name(int state)
{
  switch (state) {
  case EMD_FWD_OK: return "ok";
  case EMD_FWD_BACKOFF: return "backoff";
  case EMD_FWD_UNAUTHORIZED: return "unauthorized";
  case EMD_FWD_FORBIDDEN: return "forbidden";
  case EMD_FWD_MISCONFIGURED: return "misconfigured";
  }
  return "?";
}

/* "HTTP 503" or the transport error, for logs; never holds the key. */
static const char *describe(const struct fw_req *r, int rc, long status,
                            char *out, size_t n)
{
  if (rc != CURLE_OK)
    snprintf(out, n, "%s%s%s", curl_easy_strerror((CURLcode)rc),
             r->errbuf[0] != '\0' ? ": " : "", r->errbuf);
  else
    snprintf(out, n, "HTTP %ld", status);
  return out;
}

/* Logs once per change of state, not per retry. */
static void set_state(struct emd_forward *fw, enum emd_forward_state s,
                      const char *why)
{
  if (s == fw->state)
    return;
  fw->state = s;
  switch (s) {
  case EMD_FWD_OK:
    emd_log_info(MOD, "upstream ok: sending");
    break;
  case EMD_FWD_BACKOFF:
    emd_log_warn(MOD, "upstream failing (%s): retrying with backoff", why);
    break;
  case EMD_FWD_UNAUTHORIZED:
    emd_log_warn(MOD, "upstream unauthorized (%s): sending paused until "
                      "the API key changes; events keep spooling", why);
    break;
  case EMD_FWD_FORBIDDEN:
    emd_log_warn(MOD, "upstream forbidden (%s): the API key lacks "
                      "permission; sending paused until it changes", why);
    break;
  case EMD_FWD_MISCONFIGURED:
    emd_log_warn(MOD, "upstream misconfigured (%s): check "
                      "upstream.endpoint; sending paused until reload", why);
    break;
  }
}

static void on_hold(uv_timer_t *t)
{
  pump(t->data);
}

/* No new request for delay_ms (extends a hold already running). */
static void hold(struct emd_forward *fw, uint64_t delay_ms)
{
  if (delay_ms == 0)
    delay_ms = 1;   /* still give the loop a turn */
  if (uv_is_active((uv_handle_t *)&fw->hold) &&
      uv_timer_get_due_in(&fw->hold) >= delay_ms)
    return;
  uv_timer_start(&fw->hold, on_hold, delay_ms, 0);
}

/* A failure: back off (pause states up to auth_retry_max apart), for at
 * least the Retry-After the reply asked for. */
static void back_off(struct emd_forward *fw, enum emd_forward_state s,
                     const char *why, uint64_t retry_after_ms)
{
  const struct emd_config *cfg = fw->cfg;
  uint64_t max = s == EMD_FWD_BACKOFF ? cfg->upstream.retry_max_ms
                                      : cfg->upstream.auth_retry_max_ms;
  uint64_t delay = emd_backoff_failed(&fw->backoff,
                                      cfg->upstream.retry_initial_ms, max,
                                      &fw->rng);

  set_state(fw, s, why);
  if (retry_after_ms > RETRY_AFTER_CAP_MS)
    retry_after_ms = RETRY_AFTER_CAP_MS;
  if (uv_now(fw->loop) + retry_after_ms > fw->retry_after_until)
    fw->retry_after_until = uv_now(fw->loop) + retry_after_ms;
  hold(fw, delay > retry_after_ms ? delay : retry_after_ms);
}

static void succeeded(struct emd_forward *fw)
{
  emd_backoff_reset(&fw->backoff);
  set_state(fw, EMD_FWD_OK, NULL);
}

static void dead(struct emd_forward *fw, uint64_t seq, const char *reason,
                 long status, const void *excerpt, size_t len)
{
  int rc = emd_spool_dead(fw->sp, seq, reason, (unsigned)status, excerpt,
                          min_size(len, EXCERPT_MAX));

  if (rc != 0)
    emd_log_error(MOD, "cannot dead-letter seq %llu: %s",
                  (unsigned long long)seq, emd_strerror(rc));
  if (strcmp(reason, "rejected") == 0)
    fw->st.dead_rejected++;
  else if (strcmp(reason, "status") == 0)
    fw->st.dead_status++;
  else
    fw->st.dead_attempts++;
}

/* Every event of b failed once more: count it in the spool, dead-letter
 * those past max_attempts, keep the rest for a retry. */
static void failed(struct emd_forward *fw, struct fw_batch *b, long status,
                   const void *excerpt, size_t excerpt_len)
{
  uint64_t max = fw->cfg->upstream.max_attempts;
  uint64_t *seqs;
  bool *keep;
  size_t i, n = 0;

  emd_arena_reset(&fw->arena);
  seqs = emd_arena_alloc(&fw->arena, b->n * sizeof(*seqs));
  keep = emd_arena_alloc(&fw->arena, b->n * sizeof(*keep));
  if (seqs == NULL || keep == NULL) {
    retry_push(fw, b);     /* uncounted this once; nothing is lost */
    return;
  }
  for (i = 0; i < b->n; i++) {
    struct fw_item *it = &b->items[i];
    it->attempts++;
    keep[i] = max == 0 || it->attempts < max;
    if (keep[i])
      seqs[n++] = it->seq;
    else
      dead(fw, it->seq, "attempts", status, excerpt, excerpt_len);
  }
  if (n > 0 && emd_spool_attempted(fw->sp, seqs, n) != 0)
    emd_log_warn(MOD, "cannot count attempts of %zu events", n);
  fw->st.retried += n;
  if (n < b->n)
    batch_compact(b, keep);
  retry_push(fw, b);
}

/* ---- reading replies -------------------------------------------------- */

static bool id_matches(const struct fw_batch *b, size_t i, const char *eid,
                       size_t eid_len)
{
  const uint8_t *id;
  size_t id_len;

  if (!item_id(b, i, &id, &id_len))
    return false;
  return id_len == eid_len && memcmp(id, eid, eid_len) == 0;
}

/* Reads an EventID of the shape replies have, in place: ok (one byte, 0
 * or 1), eid and sid (each a length under 128, eid without NUL bytes),
 * each at most once, in field order. What protobuf-c would make of those
 * bytes is plain: nothing unknown, eid these bytes, ok this value. Returns
 * false for any other bytes (they may still be a valid EventID). */
static bool pb_event_id_plain(const uint8_t *p, size_t len, bool *ok,
                              const uint8_t **eid, size_t *eid_len)
{
  const uint8_t *end = p + len;

  *ok = false;
  *eid = p;
  *eid_len = 0;
  if (p < end && p[0] == 0x08) {          /* 1 ok, varint */
    if (end - p < 2 || p[1] > 1)
      return false;
    *ok = p[1] == 1;
    p += 2;
  }
  if (p < end && p[0] == 0x12) {          /* 2 eid, length-delimited */
    if (end - p < 2 || p[1] >= 0x80 || end - p - 2 < p[1] ||
        memchr(p + 2, 0, p[1]) != NULL)
      return false;
    *eid = p + 2;
    *eid_len = p[1];
    p += 2 + p[1];
  }
  if (p < end && p[0] == 0x1a) {          /* 3 sid, length-delimited */
    if (end - p < 2 || p[1] >= 0x80 || end - p - 2 < p[1])
      return false;
    p += 2 + p[1];
  }
  return p == end;
}

/* One EventID: trusted when its eid is the event's id, or, without an
 * eid, when it holds nothing unknown (bytes that merely happen to parse
 * must not delete or dead-letter anything). */
static bool pb_verdict(const struct fw_batch *b, size_t i, const uint8_t *p,
                       size_t len, struct emd_arena *arena,
                       struct fw_verdict *v)
{
  const uint8_t *plain_eid;
  size_t plain_len;
  bool ok;

  if (pb_event_id_plain(p, len, &ok, &plain_eid, &plain_len)) {
    /* nothing unknown: an eid, if any, decides */
    if (plain_len > 0 &&
        !id_matches(b, i, (const char *)plain_eid, plain_len))
      return false;
  } else {
    emd_event_id *eid = buildless__service__v1__event_id__unpack(
      emd_arena_pb(arena), len, p);

    if (eid == NULL)
      return false;
    if (eid->eid != NULL && eid->eid[0] != '\0') {
      if (!id_matches(b, i, eid->eid, strlen(eid->eid)))
        return false;
    } else if (eid->base.n_unknown_fields != 0) {
      return false;
    }
    ok = eid->ok;
  }
  v->ok = ok ? 1 : 0;
  v->excerpt = p;
  v->excerpt_len = len;
  return true;
}

/* event:stream: delimited EventIDs; event:emit: one EventID. Returns how
 * many verdicts were read, or -1 when the body cannot be trusted. */
static long parse_pb(struct emd_arena *arena, const struct fw_batch *b,
                     const uint8_t *p, size_t len, bool single,
                     struct fw_verdict *v)
{
  const uint8_t *end = p + len;
  uint64_t l;
  size_t i = 0;

  if (single)
    return pb_verdict(b, 0, p, len, arena, &v[0]) ? 1 : -1;
  while (p < end) {
    if (i == b->n)
      return -1;
    /* The EventID every service sends, read here in place: a one-byte
     * length, 08 01 or 08 00 (ok) or nothing (not ok), then 12, the eid's
     * length n from 1 to 127 and the eid, ending the message.
     * pb_event_id_plain reads such bytes the same way (and, a NUL in the
     * eid, they go to pb_verdict, as any other bytes do). */
    if (p[0] >= 3 && p[0] < 0x80 && (size_t)(end - p) > p[0]) {
      const uint8_t *q = p + 1;
      size_t h = q[0] == 0x08 && q[1] <= 1 ? 2 : 0, n = (size_t)p[0] - h;

      if (n >= 3 && q[h] == 0x12 && q[h + 1] == n - 2 &&
          memchr(q + h + 2, 0, n - 2) == NULL) {
        const uint8_t *id;
        size_t id_len;

        /* id_matches, written out: the compiler keeps that a call */
        if (!item_id(b, i, &id, &id_len) ||
            id_len != n - 2 || memcmp(id, q + h + 2, n - 2) != 0)
          return -1;
        v[i].ok = h != 0 && q[1] == 1;
        v[i].excerpt = q;
        v[i].excerpt_len = p[0];
        p = q + p[0];
        i++;
        continue;
      }
    }
    if (!varint_get(&p, end, &l) || (uint64_t)(end - p) < l ||
        !pb_verdict(b, i, p, (size_t)l, arena, &v[i]))
      return -1;
    p += l;
    i++;
  }
  return (long)i;
}

static bool json_word(const char *js, const jsmntok_t *t, const char *s)
{
  size_t n = strlen(s);

  return (size_t)(t->end - t->start) == n && memcmp(js + t->start, s, n) == 0;
}

static bool json_eq(const char *js, const jsmntok_t *t, const char *s)
{
  return t->type == JSMN_STRING && json_word(js, t, s);
}

/* Index of the token after t and everything inside it. */
static int json_skip(const jsmntok_t *t, int i, int count)
{
  int left = 1;

  while (left > 0 && i < count) {
    left += t[i].type == JSMN_OBJECT ? 2 * t[i].size
            : t[i].type == JSMN_ARRAY ? t[i].size : 0;
    left--;
    i++;
  }
  return i;
}

static bool json_lit(const char **p, const char *end, const char *lit,
                     size_t n)
{
  if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
    return false;
  *p += n;
  return true;
}

/* A string without escapes or control bytes (a NUL ends jsmn's input). */
static bool json_str_plain(const char **p, const char *end, const char **s,
                           size_t *n)
{
  const char *q = *p;

  if (q == end || *q != '"')
    return false;
  *s = ++q;
  while (q < end && *q != '"') {
    if ((unsigned char)*q < 0x20 || *q == '\\')
      return false;
    q++;
  }
  if (q == end)
    return false;
  *n = (size_t)(q - *s);
  *p = q + 1;
  return true;
}

/* Reads a verdict of the shape replies have, in place:
 * {"ok":true,"eid":"…"} or "ok":false, then an optional ,"sid":"…", no
 * white space, strings without escapes or control bytes. jsmn reads those
 * bytes as exactly these tokens. Returns false for anything else (it may
 * still be a valid verdict). */
static bool json_verdict_plain(const char *js, size_t len, bool *ok,
                               const char **eid, size_t *eid_len)
{
  static const char t[] = "{\"ok\":true,\"eid\":";
  static const char f[] = "{\"ok\":false,\"eid\":";
  static const char sid[] = ",\"sid\":";
  const char *p = js, *end = js + len, *s;
  size_t n;

  if (json_lit(&p, end, t, sizeof(t) - 1))
    *ok = true;
  else if (json_lit(&p, end, f, sizeof(f) - 1))
    *ok = false;
  else
    return false;
  if (!json_str_plain(&p, end, eid, eid_len))
    return false;
  if (json_lit(&p, end, sid, sizeof(sid) - 1) &&
      !json_str_plain(&p, end, &s, &n))
    return false;
  return json_lit(&p, end, "}", 1) && p == end;
}

/* jsmn's reading of a verdict line, for any layout: *ok as it says; false
 * when it cannot be trusted (see json_verdict). */
static bool json_verdict_tokens(const struct fw_batch *b, size_t i,
                                const char *js, size_t len, bool *ok)
{
  jsmntok_t t[JSON_TOKENS];
  jsmn_parser jp;
  int count, k;
  bool has_eid = false, unknown = false;

  *ok = false;
  jsmn_init(&jp);
  count = jsmn_parse(&jp, js, len, t, JSON_TOKENS);
  if (count < 1 || t[0].type != JSMN_OBJECT || t[0].end != (int)len)
    return false;
  for (k = 1; k < count;) {
    const jsmntok_t *key, *val;
    if (k + 1 >= count)
      return false;
    key = &t[k];
    val = &t[k + 1];
    if (json_eq(js, key, "ok")) {
      /* jsmn takes "tru" for a primitive: compare whole words */
      if (val->type != JSMN_PRIMITIVE)
        return false;
      if (json_word(js, val, "true"))
        *ok = true;
      else if (!json_word(js, val, "false") && !json_word(js, val, "null"))
        return false;
    } else if (json_eq(js, key, "eid")) {
      if (val->type != JSMN_STRING ||
          !id_matches(b, i, js + val->start, (size_t)(val->end - val->start)))
        return false;
      has_eid = true;
    } else if (!json_eq(js, key, "sid")) {
      unknown = true;
    }
    k = json_skip(t, k + 1, count);
  }
  return has_eid || !unknown;
}

/* One {"ok":…,"eid":…} line, under the same trust rule as pb_verdict. */
static bool json_verdict(const struct fw_batch *b, size_t i, const char *js,
                         size_t len, struct fw_verdict *v)
{
  const char *eid;
  size_t eid_len;
  bool ok;

  if (json_verdict_plain(js, len, &ok, &eid, &eid_len)) {
    if (!id_matches(b, i, eid, eid_len))
      return false;
  } else if (!json_verdict_tokens(b, i, js, len, &ok)) {
    return false;
  }
  v->ok = ok ? 1 : 0;
  v->excerpt = js;
  v->excerpt_len = len;
  return true;
}

static bool is_ws(char c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* event:stream: one JSON object per line (blank lines ignored);
 * event:emit: the whole body is one object, however it is laid out. */
static long parse_json(const struct fw_batch *b, const char *p, size_t len,
                       bool single, struct fw_verdict *v)
{
  const char *end = p + len, *nl;
  size_t i = 0;

  while (p < end) {
    const char *s, *e;
    nl = single ? NULL : memchr(p, '\n', (size_t)(end - p));
    e = nl != NULL ? nl : end;
    s = p;
    p = nl != NULL ? nl + 1 : end;
    while (s < e && is_ws(*s))
      s++;
    while (e > s && is_ws(e[-1]))
      e--;
    if (s == e)
      continue;
    if (i == b->n || !json_verdict(b, i, s, (size_t)(e - s), &v[i]))
      return -1;
    i++;
  }
  return (long)i;
}

/* The verdicts of a 2xx body for the events of b, into v[0..b->n): an
 * empty body accepts all; an event the body gives no trusted verdict for
 * gets -1. Every v[i].ok is set; v[i].excerpt only with an ok of 0.
 * Returns the verdicts read, or -1 when the body is untrusted. */
static long read_verdicts(struct emd_arena *arena, const struct fw_batch *b,
                          const char *body, size_t len, bool json,
                          bool single, struct fw_verdict *v)
{
  long got;

  if (len == 0) {
    for (size_t i = 0; i < b->n; i++)
      v[i].ok = 1;
    return (long)b->n;
  }
  got = json ? parse_json(b, body, len, single, v)
             : parse_pb(arena, b, (const uint8_t *)body, len, single, v);
  for (size_t i = got < 0 ? 0 : (size_t)got; i < b->n; i++)
    v[i].ok = -1;
  return got;
}

long emd_forward_parse_reply(const void *body, size_t len, bool json,
                             bool single, const uint8_t *const *events,
                             const size_t *lens, size_t n, int *ok)
{
  struct fw_batch b;
  struct fw_verdict *v;
  struct emd_arena arena = { 0 };
  size_t total = 0, i;
  long got = -ENOMEM;

  memset(&b, 0, sizeof(b));
  for (i = 0; i < n; i++)
    total += lens[i];
  b.items = calloc(n + 1, sizeof(*b.items));
  b.buf = malloc(total + 1);
  v = calloc(n + 1, sizeof(*v));
  if (b.items == NULL || b.buf == NULL || v == NULL)
    goto out;
  for (i = 0; i < n; i++) {
    memcpy(b.buf + b.len, events[i], lens[i]);
    b.items[i].off = b.len;
    b.items[i].len = lens[i];
    b.len += lens[i];
  }
  b.n = n;
  got = read_verdicts(&arena, &b, body, len, json, single, v);
  for (i = 0; i < n; i++)
    ok[i] = v[i].ok;
out:
  free(b.items);
  free(b.buf);
  free(v);
  emd_arena_free(&arena);
  return got;
}

/* A 2xx: per event, accepted -> delete, rejected -> dead letter, no
 * verdict -> retry. An event is never deleted without its ok. */
static void take_reply(struct emd_forward *fw, struct fw_req *r,
                       struct fw_batch *b, long status)
{
  const struct emd_config *cfg = fw->cfg;
  const char *body = r->reply.data;
  size_t len = r->reply.len, i, n_ok = 0, n_none = 0;
  struct fw_verdict *v;
  uint64_t *seqs;
  bool *keep;

  emd_arena_reset(&fw->arena);
  /* not zeroed: every v[i].ok is set below, and an excerpt is read only
   * with the ok = 0 that was set with it */
  v = emd_arena_alloc(&fw->arena, b->n * sizeof(*v));
  seqs = emd_arena_alloc(&fw->arena, b->n * sizeof(*seqs));
  keep = emd_arena_alloc(&fw->arena, b->n * sizeof(*keep));
  if (v == NULL || seqs == NULL || keep == NULL) {
    retry_push(fw, b);
    hold(fw, cfg->upstream.retry_initial_ms);
    return;
  }
  if (r->reply_cut) {             /* cut short: no verdict for anyone */
    for (i = 0; i < b->n; i++)
      v[i].ok = -1;
  } else {
    read_verdicts(&fw->arena, b, body, len, r->json, r->single, v);
  }
  for (i = 0; i < b->n; i++) {
    keep[i] = v[i].ok < 0;
    if (v[i].ok > 0)
      seqs[n_ok++] = b->items[i].seq;
    else if (v[i].ok == 0)
      dead(fw, b->items[i].seq, "rejected", status, v[i].excerpt,
           v[i].excerpt_len);
    else
      n_none++;
  }
  if (n_ok > 0 && emd_spool_delete(fw->sp, seqs, n_ok) != 0)
    emd_log_error(MOD, "cannot delete %zu delivered events", n_ok);
  fw->st.sent += n_ok;
  if (n_none == 0) {
    batch_put(fw, b);
    succeeded(fw);
    return;
  }
  if (n_none < b->n) {
    /* the service works but left some out: resend those now */
    batch_compact(b, keep);
    succeeded(fw);
    failed(fw, b, status, body, len);
    return;
  }
  emd_log_debug(MOD, "unreadable %ld reply (%zu bytes): retrying %zu events",
                status, len, n_none);
  failed(fw, b, status, body, len);
  back_off(fw, EMD_FWD_BACKOFF, "unreadable reply", 0);
}

/* ---- sending ---------------------------------------------------------- */

static int encode_json(struct emd_forward *fw, struct fw_batch *b,
                       bool single, struct emd_codec_buf *out)
{
  size_t i;
  int rc;

  for (i = 0; i < b->n; i++) {
    emd_event *ev;
    emd_arena_reset(&fw->arena);
    ev = buildless__service__v1__event__unpack(
      emd_arena_pb(&fw->arena), b->items[i].len, b->buf + b->items[i].off);
    if (ev == NULL)
      return EMD_EINVALID;
    ev->fin = single || i + 1 == b->n;
    rc = emd_codec_event_to_json(ev, out);
    if (rc == 0 && !single)
      rc = buf_reserve(out, 1);
    if (rc != 0)
      return rc;
    if (!single)
      out->data[out->len++] = '\n';
  }
  return 0;
}

/* event:stream gets the framed events with fin = true on the last one;
 * event:emit gets the one event with fin = true. Appending field 2 = 1
 * (bytes 10 01) to a packed message sets it: the last value on the wire
 * wins. The body is the batch's own buffer, sealed in place: 10 01 goes
 * past its end and the last frame's length grows by 2 (batch_unseal puts
 * it back). Only when that length would take one more varint byte is the
 * body copied into out instead. */
static int encode_pb(struct fw_batch *b, bool single,
                     struct emd_codec_buf *out, const void **data,
                     size_t *len)
{
  const struct fw_item *last = &b->items[b->n - 1];
  size_t head = single ? 0 : frame_start(b, b->n - 1);

  if (single || emd_varint_size(last->len + 2) == emd_varint_size(last->len)) {
    if (batch_reserve(b, 0, 2) != 0)
      return -ENOMEM;
    if (!single)
      emd_varint_put(b->buf + head, last->len + 2);
    b->buf[last->off + last->len] = 0x10;
    b->buf[last->off + last->len + 1] = 0x01;
    *data = single ? b->buf + last->off : b->buf;
    *len = last->off + last->len + 2 - (single ? last->off : 0);
    return 0;
  }
  if (buf_reserve(out, head + 10 + last->len + 2) != 0)
    return -ENOMEM;
  memcpy(out->data, b->buf, head);
  out->len = head;
  out->len = (size_t)(emd_varint_put((uint8_t *)out->data + out->len,
                                     last->len + 2) -
                      (uint8_t *)out->data);
  memcpy(out->data + out->len, b->buf + last->off, last->len);
  out->len += last->len;
  out->data[out->len++] = 0x10;
  out->data[out->len++] = 0x01;
  *data = out->data;
  *len = out->len;
  return 0;
}

/* Undoes encode_pb's seal: the last frame's length as it was (the bytes
 * past the end do not matter). A no-op on a batch not sealed. */
static void batch_unseal(struct fw_batch *b)
{
  if (b->n > 0)
    emd_varint_put(b->buf + frame_start(b, b->n - 1), b->items[b->n - 1].len);
}

static int gzip_into(struct emd_forward *fw, const void *in, size_t in_len,
                     struct emd_codec_buf *out)
{
  z_stream *z = &fw->gz;

  if (!fw->gz_inited) {
    if (deflateInit2(z, GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK)
      return -ENOMEM;
    fw->gz_inited = true;
  } else if (deflateReset(z) != Z_OK) {
    return EMD_EINTERNAL;
  }
  out->len = 0;
  if (buf_reserve(out, deflateBound(z, in_len)) != 0)
    return -ENOMEM;
  z->next_in = (Bytef *)in;
  z->avail_in = (uInt)in_len;
  z->next_out = (Bytef *)out->data;
  z->avail_out = (uInt)out->cap;
  if (deflate(z, Z_FINISH) != Z_STREAM_END)
    return EMD_EINTERNAL;
  out->len = z->total_out;
  return 0;
}

static int zstd_into(struct emd_forward *fw, const void *in, size_t in_len,
                     struct emd_codec_buf *out)
{
  size_t n;

  if (fw->zstd == NULL && (fw->zstd = ZSTD_createCCtx()) == NULL)
    return -ENOMEM;
  out->len = 0;
  if (buf_reserve(out, ZSTD_compressBound(in_len)) != 0)
    return -ENOMEM;
  n = ZSTD_compressCCtx(fw->zstd, out->data, out->cap, in, in_len,
                        ZSTD_LEVEL);
  if (ZSTD_isError(n))
    return EMD_EINTERNAL;
  out->len = n;
  return 0;
}

/* The body for b: in b's own buffer (protobuf, sealed), r->body (JSON),
 * or r->zbody (compressed). *data stays valid, unchanged, until the
 * request is over; then batch_unseal(b). */
static int build_body(struct emd_forward *fw, struct fw_req *r,
                      struct fw_batch *b, const void **data, size_t *len)
{
  const struct emd_config *cfg = fw->cfg;
  bool single = cfg->upstream.mode == EMD_MODE_SINGLE;
  int rc;

  r->body.len = 0;
  if (cfg->upstream.encoding == EMD_ENC_JSON) {
    rc = encode_json(fw, b, single, &r->body);
    *data = r->body.data;
    *len = r->body.len;
  } else {
    rc = encode_pb(b, single, &r->body, data, len);
  }
  if (rc != 0)
    return rc;
  if (cfg->upstream.compression == EMD_COMP_GZIP)
    rc = gzip_into(fw, *data, *len, &r->zbody);
  else if (cfg->upstream.compression == EMD_COMP_ZSTD)
    rc = zstd_into(fw, *data, *len, &r->zbody);
  else
    return 0;
  *data = r->zbody.data;
  *len = r->zbody.len;
  return rc;
}

/* Frees a header list; the key in it is wiped first. */
static void headers_free(struct curl_slist *h)
{
  for (struct curl_slist *t = h; t != NULL; t = t->next)
    explicit_bzero(t->data, strlen(t->data));
  curl_slist_free_all(h);
}

/* r's header lines, built again only when the config or the key changed
 * since they were. */
static int build_headers(struct emd_forward *fw, struct fw_req *r)
{
  const struct emd_config *cfg = fw->cfg;
  bool json = cfg->upstream.encoding == EMD_ENC_JSON;
  struct curl_slist *h = NULL, *t;
  const char *lines[5];
  size_t n = 0, i;

  if (r->headers != NULL && r->hdr_cfg_gen == fw->cfg_gen &&
      r->hdr_key_gen == fw->key_gen)
    return 0;
  headers_free(r->headers);
  r->headers = NULL;
  lines[n++] = json ? "Content-Type: application/json"
                    : "Content-Type: application/x-protobuf";
  lines[n++] = json ? "Accept: application/json"
                    : "Accept: application/x-protobuf";
  /* no 100-continue round trip before large bodies */
  lines[n++] = "Expect:";
  if (cfg->upstream.compression == EMD_COMP_GZIP)
    lines[n++] = "Content-Encoding: gzip";
  else if (cfg->upstream.compression == EMD_COMP_ZSTD)
    lines[n++] = "Content-Encoding: zstd";
  if (fw->auth_header != NULL)
    lines[n++] = fw->auth_header;
  for (i = 0; i < n; i++) {
    t = curl_slist_append(h, lines[i]);
    if (t == NULL) {
      headers_free(h);
      return -ENOMEM;
    }
    h = t;
  }
  r->headers = h;
  r->hdr_cfg_gen = fw->cfg_gen;
  r->hdr_key_gen = fw->key_gen;
  return 0;
}

static size_t on_reply_bytes(char *p, size_t size, size_t nmemb, void *data)
{
  struct fw_req *r = data;
  size_t n = size * nmemb, take = min_size(n, REPLY_MAX - r->reply.len);

  if (take > 0 && buf_reserve(&r->reply, take) != 0)
    take = 0;
  if (take < n)
    r->reply_cut = true;
  if (take > 0) {
    memcpy(r->reply.data + r->reply.len, p, take);
    r->reply.len += take;
  }
  return n;   /* read on: aborting would look like a cut connection */
}

/* The options that come from the config; set again after a reload. */
static int req_setup(struct emd_forward *fw, struct fw_req *r)
{
  const struct emd_config *cfg = fw->cfg;
  CURL *e = r->easy;
  CURLcode rc = CURLE_OK;

#define SET(opt, val)                                                   \
  do {                                                                  \
    if (rc == CURLE_OK)                                                 \
      rc = curl_easy_setopt(e, opt, val);                               \
  } while (0)
  curl_easy_reset(e);
  SET(CURLOPT_URL, fw->url);
  SET(CURLOPT_PRIVATE, r);
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_USERAGENT, "emitd/" EMD_VERSION);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_SSL_VERIFYPEER, 1L);
  SET(CURLOPT_SSL_VERIFYHOST, 2L);
  /* Debian's libcurl keeps its CA path (/etc/ssl/certs) beside CAINFO, so
   * this adds a CA rather than replacing the system ones. */
  if (cfg->upstream.ca_file != NULL)
    SET(CURLOPT_CAINFO, cfg->upstream.ca_file);
  SET(CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->upstream.connect_timeout_ms);
  SET(CURLOPT_TIMEOUT_MS, (long)cfg->upstream.timeout_ms);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  SET(CURLOPT_POST, 1L);
  SET(CURLOPT_WRITEFUNCTION, on_reply_bytes);
  SET(CURLOPT_WRITEDATA, r);
  SET(CURLOPT_ERRORBUFFER, r->errbuf);
#undef SET
  if (rc != CURLE_OK) {
    emd_log_error(MOD, "curl setup: %s", curl_easy_strerror(rc));
    return EMD_EINTERNAL;
  }
  r->cfg_gen = fw->cfg_gen;
  return 0;
}

static struct fw_req *req_get(struct emd_forward *fw)
{
  struct fw_req *r = fw->idle;

  if (r != NULL) {
    fw->idle = r->next_idle;
  } else {
    r = calloc(1, sizeof(*r));
    if (r == NULL)
      return NULL;
    r->easy = curl_easy_init();
    if (r->easy == NULL) {
      free(r);
      return NULL;
    }
    r->fw = fw;
    r->next_all = fw->reqs;
    fw->reqs = r;
  }
  if (r->cfg_gen != fw->cfg_gen && req_setup(fw, r) != 0) {
    r->next_idle = fw->idle;
    fw->idle = r;
    return NULL;
  }
  return r;
}

static void req_put(struct emd_forward *fw, struct fw_req *r)
{
  r->batch = NULL;
  r->reply.len = 0;
  r->reply_cut = false;
  r->errbuf[0] = '\0';
  r->next_idle = fw->idle;
  fw->idle = r;
}

static size_t histogram_bucket(size_t n)
{
  static const size_t bounds[] = EMD_FORWARD_BATCH_BOUNDS;
  size_t i;

  for (i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
    if (n <= bounds[i])
      return i;
  }
  return EMD_FORWARD_BATCH_BUCKETS - 1;
}

/* Starts the request for b; b belongs to the request from here on. */
static int send_batch(struct emd_forward *fw, struct fw_batch *b)
{
  const void *body;
  size_t len;
  struct fw_req *r;
  int rc;

  r = req_get(fw);
  if (r == NULL)
    return -ENOMEM;
  rc = build_body(fw, r, b, &body, &len);
  if (rc == 0)
    rc = build_headers(fw, r);
  if (rc != 0)
    goto fail;
  curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
  r->batch = b;
  r->key_gen = fw->key_gen;
  r->single = fw->cfg->upstream.mode == EMD_MODE_SINGLE;
  r->json = fw->cfg->upstream.encoding == EMD_ENC_JSON;
  if (curl_multi_add_handle(fw->multi, r->easy) != CURLM_OK) {
    rc = EMD_EINTERNAL;
    goto fail;
  }
  fw->st.inflight++;
  fw->st.inflight_events += b->n;
  fw->st.batch_count[histogram_bucket(b->n)]++;
  fw->st.batch_events += b->n;
  return 0;

fail:
  batch_unseal(b);
  req_put(fw, r);
  return rc;
}

/* An event that cannot be encoded (JSON needs it unpacked) can never be
 * sent: dead-letter it alone, so it does not hold up the rest. */
static size_t drop_unencodable(struct emd_forward *fw, struct fw_batch *b)
{
  bool *keep = calloc(b->n, sizeof(*keep));
  size_t i, n = b->n;

  if (keep == NULL)
    return 0;
  for (i = 0; i < b->n; i++) {
    emd_arena_reset(&fw->arena);
    keep[i] = buildless__service__v1__event__unpack(
                emd_arena_pb(&fw->arena), b->items[i].len,
                b->buf + b->items[i].off) != NULL;
    if (!keep[i]) {
      static const char why[] = "spooled event cannot be decoded";
      dead(fw, b->items[i].seq, "rejected", 0, why, sizeof(why) - 1);
    }
  }
  batch_compact(b, keep);
  free(keep);
  return n - b->n;
}

static size_t batch_limit(const struct emd_forward *fw)
{
  if (fw->cfg->upstream.mode == EMD_MODE_SINGLE)
    return 1;
  return fw->cfg->upstream.batch_max_events > 0
           ? (size_t)fw->cfg->upstream.batch_max_events : 1;
}

static int on_spool_entry(void *data, const struct emd_spool_entry *e);

/* on_spool_entry when the forming batch must grow first: off the path
 * taken once batches are reused. */
static __attribute__((noinline, cold)) int
on_spool_entry_grow(struct emd_forward *fw, const struct emd_spool_entry *e)
{
  if (batch_grow(fw->forming, 1, e->event_len + 10) != 0)
    return 1;
  return on_spool_entry(fw, e);
}

static int on_spool_entry(void *data, const struct emd_spool_entry *e)
{
  struct emd_forward *fw = data;
  struct fw_batch *b = fw->forming;
  size_t len = e->event_len;

  /* the first event goes however large: it has to go somehow */
  if (b->n > 0 && b->payload + len > fw->cfg->upstream.batch_max_bytes) {
    b->full = true;
    return 1;
  }
  if (b->items_cap == b->n || b->buf_cap - b->len < len + 10)
    return on_spool_entry_grow(fw, e);
  fw->last_taken = e->seq;
  batch_append(b, e);
  return 0;
}

/* Tops up the forming batch from the spool, past last_taken. */
static void fill_forming(struct emd_forward *fw)
{
  size_t limit = batch_limit(fw);
  int rc;

  if (fw->forming == NULL && (fw->forming = batch_get(fw)) == NULL)
    return;
  if (fw->forming->full || fw->forming->n >= limit)
    return;
  rc = emd_spool_read(fw->sp, fw->last_taken, limit - fw->forming->n,
                      SIZE_MAX, on_spool_entry, fw);
  if (rc < 0)
    emd_log_error(MOD, "cannot read the spool: %s", emd_strerror(rc));
}

static void on_linger(uv_timer_t *t)
{
  struct emd_forward *fw = t->data;

  fw->linger_due = true;
  pump(fw);
}

/* The next batch to send: a retry first, else the forming batch once it
 * is full or has lingered long enough. */
static struct fw_batch *next_batch(struct emd_forward *fw)
{
  struct fw_batch *b = fw->retry;

  if (b != NULL) {
    fw->retry = b->next;
    b->next = NULL;
    return b;
  }
  fill_forming(fw);
  b = fw->forming;
  if (b == NULL || b->n == 0) {
    uv_timer_stop(&fw->linger);
    fw->linger_due = false;
    return NULL;
  }
  if (b->full || b->n >= batch_limit(fw) || fw->linger_due ||
      fw->flushing || fw->cfg->upstream.batch_linger_ms == 0) {
    fw->forming = NULL;
    fw->linger_due = false;
    uv_timer_stop(&fw->linger);
    return b;
  }
  if (!uv_is_active((uv_handle_t *)&fw->linger))
    uv_timer_start(&fw->linger, on_linger, fw->cfg->upstream.batch_linger_ms,
                   0);
  return NULL;
}

/* Halves b (a 413, a 400 for many): one bad event cannot sink the rest. */
static void split(struct emd_forward *fw, struct fw_batch *b)
{
  size_t half = b->n / 2;
  struct fw_batch *lo = batch_range(fw, b, 0, half);
  struct fw_batch *hi = batch_range(fw, b, half, b->n);

  if (lo == NULL || hi == NULL) {
    if (lo != NULL)
      batch_put(fw, lo);
    if (hi != NULL)
      batch_put(fw, hi);
    retry_push(fw, b);
    hold(fw, fw->cfg->upstream.retry_initial_ms);
    return;
  }
  batch_put(fw, b);
  retry_push(fw, lo);
  retry_push(fw, hi);
}

static size_t inflight_limit(const struct emd_forward *fw)
{
  /* while failing, one request probes; the others wait */
  if (fw->state != EMD_FWD_OK)
    return 1;
  return fw->cfg->upstream.max_inflight > 0
           ? (size_t)fw->cfg->upstream.max_inflight : 1;
}

static void pump(struct emd_forward *fw)
{
  struct fw_batch *b;
  int rc;

  if (fw->closing || uv_is_active((uv_handle_t *)&fw->hold))
    return;
  while (fw->st.inflight < inflight_limit(fw) &&
         (b = next_batch(fw)) != NULL) {
    /* a batch taken before a switch to mode = single */
    if (fw->cfg->upstream.mode == EMD_MODE_SINGLE && b->n > 1) {
      split(fw, b);
      continue;
    }
    rc = send_batch(fw, b);
    if (rc == EMD_EINVALID && drop_unencodable(fw, b) > 0) {
      retry_push(fw, b);
      continue;
    }
    if (rc != 0) {
      emd_log_error(MOD, "cannot start a request: %s", emd_strerror(rc));
      retry_push(fw, b);
      hold(fw, fw->cfg->upstream.retry_initial_ms);
      return;
    }
  }
}

void emd_forward_kick(struct emd_forward *fw)
{
  if (fw != NULL)
    pump(fw);
}

void emd_forward_flush(struct emd_forward *fw, bool on)
{
  uint64_t now;

  if (fw == NULL || fw->closing)
    return;
  fw->flushing = on;
  if (on && fw->state == EMD_FWD_BACKOFF &&
      uv_is_active((uv_handle_t *)&fw->hold)) {
    now = uv_now(fw->loop);
    if (now >= fw->retry_after_until)
      uv_timer_stop(&fw->hold);
    else
      uv_timer_start(&fw->hold, on_hold, fw->retry_after_until - now, 0);
  }
  pump(fw);
}

/* ---- finished requests ------------------------------------------------ */

static uint64_t retry_after_ms(struct fw_req *r)
{
  struct curl_header *h;
  uint64_t ms;

  if (curl_easy_header(r->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) !=
      CURLHE_OK)
    return 0;
  if (emd_backoff_retry_after(h->value, strlen(h->value), wall_ms(), &ms) != 0)
    return 0;
  return ms;
}

static void count_reply(struct emd_forward *fw, int rc, long status)
{
  fw->st.last_status = rc == CURLE_OK ? status : 0;
  fw->st.last_reply_ms = wall_ms();
  if (rc != CURLE_OK)
    fw->st.requests_error++;
  else if (status >= 200 && status <= 299)
    fw->st.requests_2xx++;
  else if (status >= 400 && status <= 499)
    fw->st.requests_4xx++;
  else if (status >= 500 && status <= 599)
    fw->st.requests_5xx++;
  else
    fw->st.requests_other++;
}

static enum emd_forward_state pause_state(long status)
{
  if (status == 401)
    return EMD_FWD_UNAUTHORIZED;
  if (status == 403)
    return EMD_FWD_FORBIDDEN;
  return EMD_FWD_MISCONFIGURED;
}

/* 401/403/404...: hold every event, never dead-letter. A reply to an old
 * key says nothing about the new one; otherwise re-read the key file, in
 * case it changed without a watch event. */
static void paused(struct emd_forward *fw, struct fw_req *r,
                   struct fw_batch *b, const char *why, long status,
                   uint64_t ra_ms)
{
  retry_push(fw, b);
  if (r->key_gen != fw->key_gen)
    return;
  if ((status == 401 || status == 403) && key_load(fw) == 1) {
    emd_log_info(MOD, "upstream API key changed; retrying at once");
    return;
  }
  back_off(fw, pause_state(status), why, ra_ms);
}

static void finish(struct emd_forward *fw, struct fw_req *r, CURLcode rc)
{
  struct fw_batch *b = r->batch;
  long status = 0;
  char why[CURL_ERROR_SIZE + 64];
  enum emd_verdict verdict;

  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_multi_remove_handle(fw->multi, r->easy);
  batch_unseal(b);
  fw->st.inflight--;
  fw->st.inflight_events -= b->n;
  count_reply(fw, rc, status);
  verdict = emd_forward_classify(rc, status, b->n);
  if (verdict != EMD_DONE && verdict != EMD_DEAD)
    describe(r, rc, status, why, sizeof(why));
  switch (verdict) {
  case EMD_DONE:
    take_reply(fw, r, b, status);
    break;
  case EMD_RETRY:
    emd_log_debug(MOD, "%s: retrying %zu events", why, b->n);
    failed(fw, b, status, rc == CURLE_OK ? r->reply.data : why,
           rc == CURLE_OK ? r->reply.len : strlen(why));
    back_off(fw, EMD_FWD_BACKOFF, why, retry_after_ms(r));
    break;
  case EMD_PAUSE:
    paused(fw, r, b, why, status, retry_after_ms(r));
    break;
  case EMD_SPLIT:
    emd_log_debug(MOD, "%s for %zu events: splitting", why, b->n);
    split(fw, b);
    break;
  case EMD_DEAD:
    dead(fw, b->items[0].seq, "status", status, r->reply.data, r->reply.len);
    batch_put(fw, b);
    break;
  }
  req_put(fw, r);
}

/* Drains curl's finished transfers; then sends what may go next. */
static void check_done(struct emd_forward *fw)
{
  CURLMsg *msg;
  char *priv;
  int left;

  while ((msg = curl_multi_info_read(fw->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
    finish(fw, (struct fw_req *)priv, msg->data.result);
  }
  pump(fw);
}

/* ---- curl on the loop (curl's multi-uv.c) ------------------------------ */

static void on_sock_closed(uv_handle_t *h);

static void on_poll(uv_poll_t *h, int status, int events)
{
  struct fw_sock *s = h->data;
  struct emd_forward *fw = s->fw;
  int flags = 0, running;

  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(fw->multi, s->fd, flags, &running);
  check_done(fw);
}

static void sock_close(struct emd_forward *fw, struct fw_sock *s)
{
  /* stopping at once frees the fd for a new socket curl may open on it */
  uv_poll_stop(&s->poll);
  if (s->prev != NULL)
    s->prev->next = s->next;
  else
    fw->socks = s->next;
  if (s->next != NULL)
    s->next->prev = s->prev;
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int action, void *data,
                          void *sockp)
{
  struct emd_forward *fw = data;
  struct fw_sock *s = sockp;
  int events = 0;

  if (action == CURL_POLL_REMOVE) {
    if (s != NULL) {
      curl_multi_assign(fw->multi, fd, NULL);
      sock_close(fw, s);
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL || uv_poll_init_socket(fw->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->fw = fw;
    s->fd = fd;
    s->next = fw->socks;
    if (fw->socks != NULL)
      fw->socks->prev = s;
    fw->socks = s;
    fw->handles++;
    curl_multi_assign(fw->multi, fd, s);
  }
  if (action != CURL_POLL_OUT)
    events |= UV_READABLE;
  if (action != CURL_POLL_IN)
    events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

static void on_curl_timeout(uv_timer_t *t)
{
  struct emd_forward *fw = t->data;
  int running;

  curl_multi_socket_action(fw->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(fw);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *data)
{
  struct emd_forward *fw = data;

  if (timeout_ms < 0 || fw->closing) {
    uv_timer_stop(&fw->curl_timer);
    return 0;
  }
  /* 0 means "now"; from this callback that must still be a new turn */
  uv_timer_start(&fw->curl_timer, on_curl_timeout,
                 timeout_ms == 0 ? 1 : (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- open, reconfigure, close ----------------------------------------- */

/* The endpoint was checked by the config (http or https, no trailing
 * slash); anything curl still cannot use shows as state misconfigured. */
static int set_url(struct emd_forward *fw)
{
  const struct emd_config *cfg = fw->cfg;
  const char *path = cfg->upstream.mode == EMD_MODE_SINGLE
                       ? "/v1/telemetry/event:emit"
                       : "/v1/telemetry/event:stream";
  size_t n = strlen(cfg->upstream.endpoint) + strlen(path) + 1;
  char *url = malloc(n);

  if (url == NULL)
    return -ENOMEM;
  snprintf(url, n, "%s%s", cfg->upstream.endpoint, path);
  free(fw->url);
  fw->url = url;
  return 0;
}

static void on_handle_closed(uv_handle_t *h);

static void fw_free(struct emd_forward *fw)
{
  struct fw_batch *b;

  while ((b = fw->retry) != NULL) {
    fw->retry = b->next;
    batch_free(b);
  }
  while ((b = fw->spare) != NULL) {
    fw->spare = b->next;
    batch_free(b);
  }
  if (fw->forming != NULL)
    batch_free(fw->forming);
  if (fw->gz_inited)
    deflateEnd(&fw->gz);
  ZSTD_freeCCtx(fw->zstd);
  emd_arena_free(&fw->arena);
  secret_free(fw->auth_header);
  free(fw->key_path);
  free(fw->url);
  if (fw->curl_inited)
    curl_global_cleanup();
  free(fw);
}

static void on_handle_closed(uv_handle_t *h)
{
  struct emd_forward *fw = h->data;

  if (--fw->handles == 0)
    fw_free(fw);
}

static void on_sock_closed(uv_handle_t *h)
{
  struct fw_sock *s = h->data;
  struct emd_forward *fw = s->fw;

  free(s);
  if (--fw->handles == 0 && fw->closing)
    fw_free(fw);
}

int emd_forward_open(uv_loop_t *loop, const struct emd_config *cfg,
                     struct emd_spool *sp, struct emd_forward **out)
{
  struct emd_forward *fw;
  int rc;

  fw = calloc(1, sizeof(*fw));
  if (fw == NULL)
    return -ENOMEM;
  fw->loop = loop;
  fw->cfg = cfg;
  fw->sp = sp;
  fw->cfg_gen = 1;
  emd_rng_seed(&fw->rng, (uint64_t)uv_hrtime() ^ (uint64_t)(uintptr_t)fw);
  uv_timer_init(loop, &fw->curl_timer);
  uv_timer_init(loop, &fw->linger);
  uv_timer_init(loop, &fw->hold);
  uv_fs_event_init(loop, &fw->key_file_ev);
  uv_fs_event_init(loop, &fw->key_dir_ev);
  fw->curl_timer.data = fw->linger.data = fw->hold.data = fw;
  fw->key_file_ev.data = fw->key_dir_ev.data = fw;
  fw->handles = 5;
  rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : EMD_EINTERNAL;
  if (rc != 0)
    goto fail;
  fw->curl_inited = true;
  fw->multi = curl_multi_init();
  if (fw->multi == NULL) {
    rc = -ENOMEM;
    goto fail;
  }
  curl_multi_setopt(fw->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  curl_multi_setopt(fw->multi, CURLMOPT_SOCKETDATA, fw);
  curl_multi_setopt(fw->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(fw->multi, CURLMOPT_TIMERDATA, fw);
  rc = set_url(fw);
  if (rc == 0)
    rc = key_load(fw);
  if (rc < 0)
    goto fail;
  key_watch(fw);
  *out = fw;
  return 0;

fail:
  emd_forward_close(fw);
  return rc;
}

int emd_forward_reconfigure(struct emd_forward *fw,
                            const struct emd_config *cfg)
{
  const char *path = cfg->upstream.api_key_file;
  int rc;

  fw->cfg = cfg;
  fw->cfg_gen++;                  /* requests pick up the new options */
  rc = set_url(fw);               /* on failure the old URL stays */
  if ((path == NULL) != (fw->key_path == NULL) ||
      (path != NULL && strcmp(path, fw->key_path) != 0))
    key_watch(fw);
  if (rc == 0)
    rc = key_load(fw);
  resume(fw);
  pump(fw);
  return rc < 0 ? rc : 0;
}

void emd_forward_close(struct emd_forward *fw)
{
  struct fw_req *r, *next;

  if (fw == NULL || fw->closing)
    return;
  fw->closing = true;
  for (r = fw->reqs; r != NULL; r = next) {
    next = r->next_all;
    if (r->batch != NULL) {
      curl_multi_remove_handle(fw->multi, r->easy);
      batch_free(r->batch);
    }
    headers_free(r->headers);
    curl_easy_cleanup(r->easy);
    buf_free(&r->body);
    buf_free(&r->zbody);
    buf_free(&r->reply);
    free(r);
  }
  fw->reqs = fw->idle = NULL;
  fw->st.inflight = fw->st.inflight_events = 0;
  if (fw->multi != NULL)
    curl_multi_cleanup(fw->multi);
  fw->multi = NULL;
  while (fw->socks != NULL)
    sock_close(fw, fw->socks);
  uv_close((uv_handle_t *)&fw->curl_timer, on_handle_closed);
  uv_close((uv_handle_t *)&fw->linger, on_handle_closed);
  uv_close((uv_handle_t *)&fw->hold, on_handle_closed);
  uv_close((uv_handle_t *)&fw->key_file_ev, on_handle_closed);
  uv_close((uv_handle_t *)&fw->key_dir_ev, on_handle_closed);
}

void emd_forward_stats(const struct emd_forward *fw,
                       struct emd_forward_stats *st)
{
  *st = fw->st;
  st->state = fw->state;
}
