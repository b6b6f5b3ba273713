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

/* Where the walk is: bytes go below p, down to lo. */
struct w {
  const uint8_t *lo;
  uint8_t *p;
  bool other;                    /* something this walk does not handle */
  /* where Event.index, Event.event and TelemetryEvent.ordinal go (see
   * emd_pack_event_open) */
  uint8_t *index_at, *te_at, *te_body_at, *ordinal_at;
};

#define WT_VARINT 0
#define WT_64BIT 1
#define WT_LEN 2
#define TAG(n, wt) ((uint8_t)((n) << 3 | (wt)))

static inline bool room(const struct w *w, size_t n)
{
  return (size_t)(w->p - w->lo) >= n;
}

/* A field with its tag and length, its bytes already below it from end. */
static inline bool close_len(struct w *w, uint8_t tag, const uint8_t *end)
{
  if (!room(w, 11))
    return false;
  w->p = emd_varint_prepend(w->p, (uint64_t)(end - w->p));
  *--w->p = tag;
  return true;
}

static inline bool bytes(struct w *w, uint8_t tag, const void *b, size_t n)
{
  if (!room(w, n + 11))
    return false;
  w->p -= n;
  memcpy(w->p, b, n);
  w->p = emd_varint_prepend(w->p, n);
  *--w->p = tag;
  return true;
}

/* proto3: an empty string (or NULL) is not written */
static inline bool str(struct w *w, uint8_t n, const char *s)
{
  return s == NULL || s[0] == '\0' || bytes(w, TAG(n, WT_LEN), s, strlen(s));
}

static inline bool bin(struct w *w, uint8_t n, const ProtobufCBinaryData *b)
{
  return b->len == 0 || bytes(w, TAG(n, WT_LEN), b->data, b->len);
}

static inline bool u64(struct w *w, uint8_t n, uint64_t v)
{
  if (v == 0)
    return true;
  if (!room(w, 11))
    return false;
  w->p = emd_varint_prepend(w->p, v);
  *--w->p = TAG(n, WT_VARINT);
  return true;
}

/* int32 and enums go out as 64-bit two's complement */
static inline bool i32(struct w *w, uint8_t n, int32_t v)
{
  return u64(w, n, (uint64_t)(int64_t)v);
}

static inline bool boolean(struct w *w, uint8_t n, protobuf_c_boolean v)
{
  if (v == 0)
    return true;
  if (!room(w, 2))
    return false;
  *--w->p = 1;
  *--w->p = TAG(n, WT_VARINT);
  return true;
}

/* A double == 0 (so -0.0 too, not NaN) is not written, as in protobuf-c;
 * its bits go out little-endian. */
static inline bool dbl(struct w *w, uint8_t n, double d)
{
  uint64_t v;

  if (d == 0)
    return true;
  if (!room(w, 9))
    return false;
  memcpy(&v, &d, 8);
  w->p -= 8;
  for (int i = 0; i < 8; i++)
    w->p[i] = (uint8_t)(v >> (8 * i));
  *--w->p = TAG(n, WT_64BIT);
  return true;
}

/* A message this walk can write: no unknown fields. */
static inline bool plain(struct w *w, const ProtobufCMessage *m)
{
  if (m->n_unknown_fields == 0)
    return true;
  w->other = true;
  return false;
}

/* ---- the messages, each field last to first ---------------------------- */

typedef Buildless__Telemetry__VersionInfo version_info;
typedef Buildless__Telemetry__GeoPoint geo_point;

static bool version(struct w *w, const version_info *m)
{
  return plain(w, &m->base) && u64(w, 9, m->release) &&
         str(w, 8, m->spec) && str(w, 7, m->tag) && str(w, 6, m->commit) &&
         str(w, 5, m->rc) && str(w, 4, m->build) && u64(w, 3, m->micro) &&
         u64(w, 2, m->minor) && u64(w, 1, m->major);
}

/* A sub-message with its tag and length; NULL is not written. */
#define MSG(w, n, m, fn)                                                 \
  do {                                                                   \
    if ((m) != NULL) {                                                   \
      uint8_t *end_ = (w)->p;                                            \
                                                                         \
      if (!fn((w), (m)) || !close_len((w), TAG(n, WT_LEN), end_))        \
        return false;                                                    \
    }                                                                    \
  } while (0)

static bool tool(struct w *w, const Buildless__Telemetry__ToolInfo *m)
{
  if (!plain(w, &m->base))
    return false;
  MSG(w, 2, m->version, version);
  return str(w, 1, m->name);
}

static bool agent(struct w *w, const Buildless__Telemetry__APIClientInfo *m)
{
  if (!plain(w, &m->base))
    return false;
  MSG(w, 4, m->version, version);
  return str(w, 1, m->name);
}

static bool os(struct w *w, const Buildless__Telemetry__OSInfo *m)
{
  if (!plain(w, &m->base))
    return false;
  MSG(w, 4, m->version, version);
  return i32(w, 3, (int32_t)m->arch) && i32(w, 2, (int32_t)m->family) &&
         str(w, 1, m->name);
}

static bool client(struct w *w, const Buildless__Telemetry__ClientDetail *m)
{
  if (!plain(w, &m->base))
    return false;
  MSG(w, 3, m->agent, agent);
  MSG(w, 2, m->os, os);
  for (size_t i = m->n_tool; i-- > 0;) {
    uint8_t *end = w->p;

    /* a NULL item goes out empty, as protobuf-c's packer writes it */
    if ((m->tool[i] != NULL && !tool(w, m->tool[i])) ||
        !close_len(w, TAG(1, WT_LEN), end))
      return false;
  }
  return true;
}

static bool tenant(struct w *w, const Buildless__Telemetry__TenantDetail *m)
{
  return plain(w, &m->base) && str(w, 2, m->name) && u64(w, 1, m->oid);
}

static bool user(struct w *w, const Buildless__Telemetry__UserDetail *m)
{
  return plain(w, &m->base) && str(w, 3, m->username) &&
         bin(w, 2, &m->email) && str(w, 1, m->uid);
}

static bool repository(struct w *w,
                       const Buildless__Telemetry__RepositoryDetail *m)
{
  return plain(w, &m->base) && str(w, 3, m->name) && str(w, 2, m->link) &&
         i32(w, 1, (int32_t)m->provider);
}

static bool detail(struct w *w, const Buildless__Telemetry__EventDetail *m)
{
  if (!plain(w, &m->base))
    return false;
  MSG(w, 4, m->client, client);
  MSG(w, 3, m->repository, repository);
  MSG(w, 2, m->user, user);
  MSG(w, 1, m->tenant, tenant);
  return true;
}

static bool context(struct w *w, const Buildless__Telemetry__EventContext *m)
{
  return plain(w, &m->base) && str(w, 4, m->event) &&
         str(w, 3, m->action) && str(w, 2, m->resource) &&
         str(w, 1, m->type);
}

static bool timing(struct w *w, const Buildless__Telemetry__EventTiming *m)
{
  return plain(w, &m->base) && u64(w, 4, m->ingested) &&
         u64(w, 3, m->received) && u64(w, 2, m->occurred) &&
         str(w, 1, m->timehash);
}

static bool point(struct w *w, const geo_point *m)
{
  return plain(w, &m->base) && dbl(w, 2, m->lon) && dbl(w, 1, m->lat);
}

static bool location(struct w *w,
                     const Buildless__Telemetry__EventLocation *m)
{
  if (!plain(w, &m->base) || !str(w, 9, m->edge) || !str(w, 8, m->tag) ||
      !str(w, 7, m->country) || !str(w, 6, m->region) ||
      !str(w, 5, m->locality) || !str(w, 4, m->nielsen))
    return false;
  MSG(w, 3, m->point, point);
  return str(w, 2, m->timezone) && bin(w, 1, &m->source_ip);
}

static bool any(struct w *w, const Google__Protobuf__Any *m)
{
  return plain(w, &m->base) && bin(w, 2, &m->value) &&
         str(w, 1, m->type_url);
}

static bool telemetry(struct w *w, const emd_tevent *m)
{
  if (!plain(w, &m->base))
    return false;
  MSG(w, 11, m->data, any);
  w->ordinal_at = w->p;
  if (!u64(w, 10, m->ordinal) || !bin(w, 9, &m->timer))
    return false;
  MSG(w, 8, m->location, location);
  MSG(w, 7, m->timing, timing);
  MSG(w, 6, m->detail, detail);
  for (size_t i = m->n_context; i-- > 0;) {
    uint8_t *end = w->p;

    if ((m->context[i] != NULL && !context(w, m->context[i])) ||
        !close_len(w, TAG(5, WT_LEN), end))
      return false;
  }
  return str(w, 4, m->user) && str(w, 3, m->tenant) && str(w, 2, m->id) &&
         str(w, 1, m->scope);
}

static bool event(struct w *w, const emd_event *m)
{
  uint8_t *end = w->p;

  if (!plain(w, &m->base))
    return false;
  if (m->event != NULL) {
    if (!telemetry(w, m->event))
      return false;
    w->te_body_at = w->p;
    if (!close_len(w, TAG(5, WT_LEN), end))
      return false;
    w->te_at = w->p;
  }
  if (!str(w, 4, m->scope))
    return false;
  w->index_at = w->p;
  return u64(w, 3, m->index) && boolean(w, 2, m->fin) &&
         str(w, 1, m->collection);
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
 * room: 0, 1 when it cannot take ev (emd_pack() can), or -ENOMEM. */
static int walk(const emd_event *ev, struct emd_pack_buf *b, struct w *w)
{
  if (!emd_pack_event_specialised())
    return 1;
  for (;;) {
    if (b->buf != NULL) {
      memset(w, 0, sizeof(*w));
      w->lo = b->buf;
      w->p = b->buf + b->cap;
      if (event(w, ev))
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
  int rc = walk(ev, b, &w);

  if (rc == 1)
    return emd_pack(&ev->base, b, out, len);
  if (rc != 0)
    return rc;
  *out = w.p;
  *len = (size_t)(b->buf + b->cap - w.p);
  return 0;
}

int emd_pack_event_open(const emd_event *ev, struct emd_pack_buf *b,
                        const uint8_t **out, size_t *len,
                        struct emd_pack_splice *sp)
{
  struct w w;
  int rc;

  if (ev->event == NULL)
    return 1;
  rc = walk(ev, b, &w);
  if (rc != 0)
    return rc;
  *out = w.p;
  *len = (size_t)(b->buf + b->cap - w.p);
  sp->index_at = (uint32_t)(w.index_at - w.p);
  sp->te_at = (uint32_t)(w.te_at - w.p);
  sp->te_body_at = (uint32_t)(w.te_body_at - w.p);
  sp->ordinal_at = (uint32_t)(w.ordinal_at - w.p);
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

  memcpy(dst, p, sp->index_at);                 /* collection, fin */
  dst += sp->index_at;
  if (index != 0) {
    *dst++ = TAG(3, WT_VARINT);
    dst = emd_varint_put(dst, index);
  }
  memcpy(dst, p + sp->index_at, sp->te_at - sp->index_at);   /* scope */
  dst += sp->te_at - sp->index_at;
  *dst++ = TAG(5, WT_LEN);
  dst = emd_varint_put(dst, tl);
  memcpy(dst, p + sp->te_body_at, sp->ordinal_at - sp->te_body_at);
  dst += sp->ordinal_at - sp->te_body_at;
  if (ordinal != 0) {
    *dst++ = TAG(10, WT_VARINT);
    dst = emd_varint_put(dst, ordinal);
  }
  memcpy(dst, p + sp->ordinal_at, len - sp->ordinal_at);   /* data */
}
