/* emd_pack_event.c: see emd_pack_event.h.
 *
 * The same walk as emd_pack() (back to front, each sub-message's length a
 * subtraction once its bytes are down), written out for the one message
 * the spool writer packs for every event, so that a field costs a test of
 * its member and, when present, its bytes: no plan row to load, no switch
 * on a kind, no loop. The order of the fields is protobuf-c's (field
 * number order), written last field first.
 *
 * Every field number of the schema is below 16, so every tag is one byte,
 * written as a constant. Room is checked before each write for the most
 * it can take (a string: its bytes, a 10-byte length and the tag); when a
 * write does not fit, the walk stops and the caller starts over in a
 * bigger buffer.
 *
 * The schema is checked once against the descriptors (the number of
 * fields of each message type): if protoc-c's output ever has a field
 * this file does not know, every Event goes to emd_pack() instead, and
 * test_pack says so. An Event with unknown fields anywhere goes there
 * too (emd_pack() writes them where protobuf-c does). */
#include "emd_pack_event.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "emd_varint.h"

/* What the walk notes besides its bytes: whether it met something it does
 * not handle, and where Event.index, Event.event and
 * TelemetryEvent.ordinal go (see emd_pack_event_open). The write position
 * is not here: each function takes it and returns it (NULL when there is
 * no room, or w->other), so it stays in a register across the byte
 * stores, which could alias anything in memory. */
struct w {
  bool other;                    /* something this walk does not handle */
  uint8_t *index_at, *te_at, *te_body_at, *ordinal_at;
};

#define WT_VARINT 0
#define WT_64BIT 1
#define WT_LEN 2
#define TAG(n, wt) ((uint8_t)((n) << 3 | (wt)))

#define INLINE static inline __attribute__((always_inline))

/* The most a varint field takes: its tag and ten bytes. */
#define VARINT_MAX 11

/* Bytes go below p, down to lo: whether n more fit. */
INLINE bool room(const uint8_t *p, const uint8_t *lo, size_t n)
{
  return (size_t)(p - lo) >= n;
}

/* Writes tag and the one-byte v < 0x80 below p (two byte stores: the tag
 * is an immediate, and one 16-bit store would cost more to make). */
INLINE uint8_t *tag_byte(uint8_t *p, uint8_t tag, uint8_t v)
{
  *--p = v;
  *--p = tag;
  return p;
}

/* Writes tag and varint v below p (room checked by the caller). */
INLINE uint8_t *tag_varint(uint8_t *p, uint8_t tag, uint64_t v)
{
  if (v < 0x80)
    return tag_byte(p, tag, (uint8_t)v);
  p = emd_varint_prepend(p, v);
  *--p = tag;
  return p;
}

/* Copies n bytes from s to d: short ones with a few loads and stores
 * (overlapping, all inside both ranges) instead of a call. */
INLINE void copy(uint8_t *d, const void *src, size_t n)
{
  const uint8_t *s = src;

  if (n <= 16) {
    if (n >= 8) {
      memcpy(d, s, 8);
      memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
      memcpy(d, s, 4);
      memcpy(d + n - 4, s + n - 4, 4);
    } else if (n > 0) {
      d[0] = s[0];
      d[n / 2] = s[n / 2];
      d[n - 1] = s[n - 1];
    }
  } else if (n <= 32) {
    memcpy(d, s, 16);
    memcpy(d + n - 16, s + n - 16, 16);
  } else {
    memcpy(d, s, n);
  }
}

/* A field with its tag and length, its bytes already between p and end. */
INLINE uint8_t *close_len(uint8_t *p, const uint8_t *lo, uint8_t tag,
                          const uint8_t *end)
{
  if (!room(p, lo, VARINT_MAX))
    return NULL;
  return tag_varint(p, tag, (uint64_t)(end - p));
}

INLINE uint8_t *bytes(uint8_t *p, const uint8_t *lo, uint8_t tag,
                      const void *b, size_t n)
{
  if (!room(p, lo, n + VARINT_MAX))
    return NULL;
  p -= n;
  copy(p, b, n);
  return tag_varint(p, tag, n);
}

/* proto3: an empty string (or NULL) is not written. An unset one is
 * protobuf-c's protobuf_c_empty_string, known by its address without
 * reading it. */
INLINE uint8_t *str(uint8_t *p, const uint8_t *lo, uint8_t n, const char *s)
{
  size_t len;

  if (s == protobuf_c_empty_string || s == NULL)
    return p;
  len = strlen(s);
  return len == 0 ? p : bytes(p, lo, TAG(n, WT_LEN), s, len);
}

INLINE uint8_t *bin(uint8_t *p, const uint8_t *lo, uint8_t n,
                    const ProtobufCBinaryData *b)
{
  return b->len == 0 ? p : bytes(p, lo, TAG(n, WT_LEN), b->data, b->len);
}

/* The fixed-size fields put_* write unchecked: the caller has made room
 * for a run of them at once (VARINT_MAX each, 2 for a bool, 9 for a
 * double). */
INLINE uint8_t *put_u64(uint8_t *p, uint8_t n, uint64_t v)
{
  return v == 0 ? p : tag_varint(p, TAG(n, WT_VARINT), v);
}

/* int32 and enums go out as 64-bit two's complement */
INLINE uint8_t *put_i32(uint8_t *p, uint8_t n, int32_t v)
{
  return put_u64(p, n, (uint64_t)(int64_t)v);
}

INLINE uint8_t *put_bool(uint8_t *p, uint8_t n, protobuf_c_boolean v)
{
  return v == 0 ? p : tag_byte(p, TAG(n, WT_VARINT), 1);
}

/* A double == 0 (so -0.0 too, not NaN) is not written, as in protobuf-c;
 * its bits go out little-endian. */
INLINE uint8_t *put_dbl(uint8_t *p, uint8_t n, double d)
{
  uint64_t v;

  if (d == 0)
    return p;
  memcpy(&v, &d, 8);
  p -= 8;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
#endif
  *--p = TAG(n, WT_64BIT);
  return p;
}

/* Inside a message function (p, lo, w in scope): each write, and making
 * room; either way out is NULL. */
#define PUT(expr)                                                        \
  do {                                                                   \
    if ((p = (expr)) == NULL)                                            \
      return NULL;                                                       \
  } while (0)
#define ROOM(n)                                                          \
  do {                                                                   \
    if (!room(p, lo, (n)))                                               \
      return NULL;                                                       \
  } while (0)

/* A message this walk can write: no unknown fields. */
#define PLAIN(m)                                                         \
  do {                                                                   \
    if ((m)->base.n_unknown_fields != 0) {                               \
      w->other = true;                                                   \
      return NULL;                                                       \
    }                                                                    \
  } while (0)

/* A sub-message with its tag and length; NULL is not written. */
#define MSG(n, m, fn)                                                    \
  do {                                                                   \
    if ((m) != NULL) {                                                   \
      uint8_t *end_ = p;                                                 \
                                                                         \
      PUT(fn(p, lo, w, (m)));                                            \
      PUT(close_len(p, lo, TAG(n, WT_LEN), end_));                       \
    }                                                                    \
  } while (0)

/* ---- the messages, each field last to first ---------------------------- */

typedef Buildless__Telemetry__VersionInfo version_info;
typedef Buildless__Telemetry__GeoPoint geo_point;

/* A VersionInfo's numbers below release: micro, minor, major. */
INLINE uint8_t *version_numbers(uint8_t *p, const uint8_t *lo,
                                const version_info *m)
{
  ROOM(3 * VARINT_MAX);
  p = put_u64(p, 3, m->micro);
  p = put_u64(p, 2, m->minor);
  return put_u64(p, 1, m->major);
}

static uint8_t *version_any(uint8_t *p, const uint8_t *lo, struct w *w,
                            const version_info *m)
{
  PLAIN(m);
  ROOM(VARINT_MAX);
  p = put_u64(p, 9, m->release);
  PUT(str(p, lo, 8, m->spec));
  PUT(str(p, lo, 7, m->tag));
  PUT(str(p, lo, 6, m->commit));
  PUT(str(p, lo, 5, m->rc));
  PUT(str(p, lo, 4, m->build));
  return version_numbers(p, lo, m);
}

/* The usual VersionInfo, only numbers below release, written inline
 * (no call, no registers saved for strlen); anything else by
 * version_any. */
INLINE uint8_t *version(uint8_t *p, const uint8_t *lo, struct w *w,
                        const version_info *m)
{
  const char *e = protobuf_c_empty_string;

  if (m->base.n_unknown_fields != 0 || m->release != 0 || m->spec != e ||
      m->tag != e || m->commit != e || m->rc != e || m->build != e)
    return version_any(p, lo, w, m);
  return version_numbers(p, lo, m);
}

static uint8_t *tool(uint8_t *p, const uint8_t *lo, struct w *w,
                     const Buildless__Telemetry__ToolInfo *m)
{
  PLAIN(m);
  MSG(2, m->version, version);
  return str(p, lo, 1, m->name);
}

static uint8_t *agent(uint8_t *p, const uint8_t *lo, struct w *w,
                      const Buildless__Telemetry__APIClientInfo *m)
{
  PLAIN(m);
  MSG(4, m->version, version);
  return str(p, lo, 1, m->name);
}

static uint8_t *os(uint8_t *p, const uint8_t *lo, struct w *w,
                   const Buildless__Telemetry__OSInfo *m)
{
  PLAIN(m);
  MSG(4, m->version, version);
  ROOM(2 * VARINT_MAX);
  p = put_i32(p, 3, (int32_t)m->arch);
  p = put_i32(p, 2, (int32_t)m->family);
  return str(p, lo, 1, m->name);
}

static uint8_t *client(uint8_t *p, const uint8_t *lo, struct w *w,
                       const Buildless__Telemetry__ClientDetail *m)
{
  PLAIN(m);
  MSG(3, m->agent, agent);
  MSG(2, m->os, os);
  for (size_t i = m->n_tool; i-- > 0;) {
    uint8_t *end = p;

    /* a NULL item goes out empty, as protobuf-c's packer writes it */
    if (m->tool[i] != NULL)
      PUT(tool(p, lo, w, m->tool[i]));
    PUT(close_len(p, lo, TAG(1, WT_LEN), end));
  }
  return p;
}

static uint8_t *tenant(uint8_t *p, const uint8_t *lo, struct w *w,
                       const Buildless__Telemetry__TenantDetail *m)
{
  PLAIN(m);
  PUT(str(p, lo, 2, m->name));
  ROOM(VARINT_MAX);
  return put_u64(p, 1, m->oid);
}

static uint8_t *user(uint8_t *p, const uint8_t *lo, struct w *w,
                     const Buildless__Telemetry__UserDetail *m)
{
  PLAIN(m);
  PUT(str(p, lo, 3, m->username));
  PUT(bin(p, lo, 2, &m->email));
  return str(p, lo, 1, m->uid);
}

static uint8_t *repository(uint8_t *p, const uint8_t *lo, struct w *w,
                           const Buildless__Telemetry__RepositoryDetail *m)
{
  PLAIN(m);
  PUT(str(p, lo, 3, m->name));
  PUT(str(p, lo, 2, m->link));
  ROOM(VARINT_MAX);
  return put_i32(p, 1, (int32_t)m->provider);
}

static uint8_t *detail(uint8_t *p, const uint8_t *lo, struct w *w,
                       const Buildless__Telemetry__EventDetail *m)
{
  PLAIN(m);
  MSG(4, m->client, client);
  MSG(3, m->repository, repository);
  MSG(2, m->user, user);
  MSG(1, m->tenant, tenant);
  return p;
}

static uint8_t *context(uint8_t *p, const uint8_t *lo, struct w *w,
                        const Buildless__Telemetry__EventContext *m)
{
  PLAIN(m);
  PUT(str(p, lo, 4, m->event));
  PUT(str(p, lo, 3, m->action));
  PUT(str(p, lo, 2, m->resource));
  return str(p, lo, 1, m->type);
}

static uint8_t *timing(uint8_t *p, const uint8_t *lo, struct w *w,
                       const Buildless__Telemetry__EventTiming *m)
{
  PLAIN(m);
  ROOM(3 * VARINT_MAX);
  p = put_u64(p, 4, m->ingested);
  p = put_u64(p, 3, m->received);
  p = put_u64(p, 2, m->occurred);
  return str(p, lo, 1, m->timehash);
}

static uint8_t *point(uint8_t *p, const uint8_t *lo, struct w *w,
                      const geo_point *m)
{
  PLAIN(m);
  ROOM(2 * 9);
  p = put_dbl(p, 2, m->lon);
  return put_dbl(p, 1, m->lat);
}

static uint8_t *location(uint8_t *p, const uint8_t *lo, struct w *w,
                         const Buildless__Telemetry__EventLocation *m)
{
  PLAIN(m);
  PUT(str(p, lo, 9, m->edge));
  PUT(str(p, lo, 8, m->tag));
  PUT(str(p, lo, 7, m->country));
  PUT(str(p, lo, 6, m->region));
  PUT(str(p, lo, 5, m->locality));
  PUT(str(p, lo, 4, m->nielsen));
  MSG(3, m->point, point);
  PUT(str(p, lo, 2, m->timezone));
  return bin(p, lo, 1, &m->source_ip);
}

static uint8_t *any(uint8_t *p, const uint8_t *lo, struct w *w,
                    const Google__Protobuf__Any *m)
{
  PLAIN(m);
  PUT(bin(p, lo, 2, &m->value));
  return str(p, lo, 1, m->type_url);
}

static uint8_t *telemetry(uint8_t *p, const uint8_t *lo, struct w *w,
                          const emd_tevent *m)
{
  PLAIN(m);
  MSG(11, m->data, any);
  w->ordinal_at = p;
  ROOM(VARINT_MAX);
  p = put_u64(p, 10, m->ordinal);
  PUT(bin(p, lo, 9, &m->timer));
  MSG(8, m->location, location);
  MSG(7, m->timing, timing);
  MSG(6, m->detail, detail);
  for (size_t i = m->n_context; i-- > 0;) {
    uint8_t *end = p;

    if (m->context[i] != NULL)
      PUT(context(p, lo, w, m->context[i]));
    PUT(close_len(p, lo, TAG(5, WT_LEN), end));
  }
  PUT(str(p, lo, 4, m->user));
  PUT(str(p, lo, 3, m->tenant));
  PUT(str(p, lo, 2, m->id));
  return str(p, lo, 1, m->scope);
}

static uint8_t *event(uint8_t *p, const uint8_t *lo, struct w *w,
                      const emd_event *m)
{
  uint8_t *end = p;

  PLAIN(m);
  if (m->event != NULL) {
    PUT(telemetry(p, lo, w, m->event));
    w->te_body_at = p;
    PUT(close_len(p, lo, TAG(5, WT_LEN), end));
    w->te_at = p;
  }
  PUT(str(p, lo, 4, m->scope));
  w->index_at = p;
  ROOM(VARINT_MAX + 2);
  p = put_u64(p, 3, m->index);
  p = put_bool(p, 2, m->fin);
  return str(p, lo, 1, m->collection);
}

/* ---- the schema check -------------------------------------------------- */

/* 1: the descriptors have the fields above, -1: they do not, 0: not yet
 * looked. Every thread that looks finds the same answer. */
static _Atomic int schema_known;

static bool schema_matches(void)
{
  static const struct {
    const ProtobufCMessageDescriptor *d;
    unsigned n_fields;
  } want[] = {
    { &buildless__service__v1__event__descriptor, 5 },
    { &buildless__telemetry__telemetry_event__descriptor, 11 },
    { &buildless__telemetry__event_context__descriptor, 4 },
    { &buildless__telemetry__event_detail__descriptor, 4 },
    { &buildless__telemetry__tenant_detail__descriptor, 2 },
    { &buildless__telemetry__user_detail__descriptor, 3 },
    { &buildless__telemetry__repository_detail__descriptor, 3 },
    { &buildless__telemetry__client_detail__descriptor, 3 },
    { &buildless__telemetry__tool_info__descriptor, 2 },
    { &buildless__telemetry__apiclient_info__descriptor, 2 },
    { &buildless__telemetry__osinfo__descriptor, 4 },
    { &buildless__telemetry__version_info__descriptor, 9 },
    { &buildless__telemetry__event_timing__descriptor, 4 },
    { &buildless__telemetry__event_location__descriptor, 9 },
    { &buildless__telemetry__geo_point__descriptor, 2 },
    { &google__protobuf__any__descriptor, 2 },
  };

  for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
    if (want[i].d->n_fields != want[i].n_fields)
      return false;
  return true;
}

bool emd_pack_event_specialised(void)
{
  int k = schema_known;

  if (k == 0) {
    k = schema_matches() ? 1 : -1;
    schema_known = k;
  }
  return k == 1;
}

/* The walk, in b, starting over in a bigger buffer when it runs out of
 * room: 0 with *out the first byte, 1 when it cannot take ev (emd_pack()
 * can), or -ENOMEM. */
static int walk(const emd_event *ev, struct emd_pack_buf *b, struct w *w,
                uint8_t **out)
{
  if (!emd_pack_event_specialised())
    return 1;
  for (;;) {
    if (b->buf != NULL) {
      memset(w, 0, sizeof(*w));
      *out = event(b->buf + b->cap, b->buf, w, ev);
      if (*out != NULL)
        return 0;
      if (w->other)
        return 1;
    }
    if (emd_pack_buf_grow(b) != 0)
      return -ENOMEM;
  }
}

int emd_pack_event(const emd_event *ev, struct emd_pack_buf *b,
                   const uint8_t **out, size_t *len)
{
  struct w w;
  uint8_t *p;
  int rc = walk(ev, b, &w, &p);

  if (rc == 1)
    return emd_pack(&ev->base, b, out, len);
  if (rc != 0)
    return rc;
  *out = p;
  *len = (size_t)(b->buf + b->cap - p);
  return 0;
}

int emd_pack_event_open(const emd_event *ev, struct emd_pack_buf *b,
                        const uint8_t **out, size_t *len,
                        struct emd_pack_splice *sp)
{
  struct w w;
  uint8_t *p;
  int rc;

  if (ev->event == NULL)
    return 1;
  rc = walk(ev, b, &w, &p);
  if (rc != 0)
    return rc;
  *out = p;
  *len = (size_t)(b->buf + b->cap - p);
  sp->index_at = (uint32_t)(w.index_at - p);
  sp->te_at = (uint32_t)(w.te_at - p);
  sp->te_body_at = (uint32_t)(w.te_body_at - p);
  sp->ordinal_at = (uint32_t)(w.ordinal_at - p);
  return 0;
}

/* The TelemetryEvent's length once ordinal goes in. */
static size_t te_len(size_t len, const struct emd_pack_splice *sp,
                     uint32_t ordinal)
{
  return len - sp->te_body_at +
         (ordinal != 0 ? 1 + emd_varint_size(ordinal) : 0);
}

size_t emd_pack_splice_size(size_t len, const struct emd_pack_splice *sp,
                            uint32_t index, uint32_t ordinal)
{
  size_t tl = te_len(len, sp, ordinal);

  return sp->te_at + 1 + emd_varint_size(tl) + tl +
         (index != 0 ? 1 + emd_varint_size(index) : 0);
}

void emd_pack_splice_write(uint8_t *dst, const uint8_t *p, size_t len,
                           const struct emd_pack_splice *sp, uint32_t index,
                           uint32_t ordinal)
{
  size_t tl = te_len(len, sp, ordinal);

  /* the short pieces (collection and fin; scope; data, usually none)
   * copied inline, the TelemetryEvent's body with memcpy */
  copy(dst, p, sp->index_at);                   /* collection, fin */
  dst += sp->index_at;
  if (index != 0) {
    *dst++ = TAG(3, WT_VARINT);
    dst = emd_varint_put(dst, index);
  }
  copy(dst, p + sp->index_at, sp->te_at - sp->index_at);     /* scope */
  dst += sp->te_at - sp->index_at;
  *dst++ = TAG(5, WT_LEN);
  dst = emd_varint_put(dst, tl);
  memcpy(dst, p + sp->te_body_at, sp->ordinal_at - sp->te_body_at);
  dst += sp->ordinal_at - sp->te_body_at;
  if (ordinal != 0) {
    *dst++ = TAG(10, WT_VARINT);
    dst = emd_varint_put(dst, ordinal);
  }
  copy(dst, p + sp->ordinal_at, len - sp->ordinal_at);       /* data */
}
