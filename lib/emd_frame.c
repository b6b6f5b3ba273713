/* emd_frame.c: see emd_frame.h. */
#include "emd_frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int partial_append(struct emd_framer *f, const char *p, size_t n)
{
  if (f->plen + n > f->pcap) {
    size_t cap = f->pcap ? f->pcap : 1024;
    char *q;

    while (cap < f->plen + n)
      cap *= 2;
    q = realloc(f->partial, cap);
    if (q == NULL)
      return -ENOMEM;
    f->partial = q;
    f->pcap = cap;
  }
  memcpy(f->partial + f->plen, p, n);
  f->plen += n;
  return 0;
}

/* A line may carry a '\r' before its '\n' beyond the limit. */
static size_t line_len(const char *p, size_t n)
{
  return n > 0 && p[n - 1] == '\r' ? n - 1 : n;
}

static int feed_text(struct emd_framer *f, const char *p, size_t n,
                     const struct emd_frame_ops *ops, void *data)
{
  const char *nl;
  int rc;

  while (n > 0) {
    nl = memchr(p, '\n', n);
    if (f->skipping) {
      if (nl == NULL)
        return 0;
      f->skipping = false;
      n -= (size_t)(nl + 1 - p);
      p = nl + 1;
      continue;
    }
    if (nl == NULL) {
      /* Keep the start of a line, as long as it may still fit. */
      if (f->plen + n > f->max + 1) {
        f->plen = 0;
        f->skipping = true;
        return ops->too_large(data, 0) ? 1 : 0;
      }
      return partial_append(f, p, n);
    }
    size_t len = (size_t)(nl - p);
    const char *line = p;

    n -= len + 1;
    p = nl + 1;
    if (f->plen > 0) {
      if (f->plen + len > f->max + 1) {
        f->plen = 0;
        if (ops->too_large(data, 0))
          return 1;
        continue;
      }
      if (partial_append(f, line, len) != 0)
        return -ENOMEM;
      line = f->partial;
      len = f->plen;
      f->plen = 0;
    }
    if (line_len(line, len) > f->max)
      rc = ops->too_large(data, 0);
    else
      rc = ops->item(data, line, len);
    if (rc)
      return 1;
  }
  return 0;
}

static uint32_t be32(const void *v)
{
  const uint8_t *p = v;

  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static int feed_binary(struct emd_framer *f, const char *p, size_t n,
                       const struct emd_frame_ops *ops, void *data)
{
  uint32_t len;

  while (n > 0) {
    if (f->skip > 0) {
      size_t k = f->skip < n ? (size_t)f->skip : n;

      f->skip -= k;
      p += k;
      n -= k;
      continue;
    }
    if (f->plen == 0 && n >= 4) {
      len = be32(p);
      if (len > f->max) {
        f->skip = len;
        p += 4;
        n -= 4;
        if (ops->too_large(data, len))
          return 1;
        continue;
      }
      if (n - 4 >= len) {
        p += 4 + (size_t)len;
        n -= 4 + (size_t)len;
        if (ops->item(data, p - len, len))
          return 1;
        continue;
      }
    }
    /* First the header, then (its length known and allowed) the rest. */
    size_t want = f->plen < 4 ? 4 : 4 + (size_t)be32(f->partial);
    size_t k = want - f->plen < n ? want - f->plen : n;

    if (partial_append(f, p, k) != 0)
      return -ENOMEM;
    p += k;
    n -= k;
    if (f->plen < 4)
      continue;
    len = be32(f->partial);
    if (len > f->max) {
      f->plen = 0;
      f->skip = len;
      if (ops->too_large(data, len))
        return 1;
    } else if (f->plen == 4 + (size_t)len) {
      f->plen = 0;
      if (ops->item(data, f->partial + 4, len))
        return 1;
    }
  }
  return 0;
}

int emd_frame_feed(struct emd_framer *f, const char *p, size_t n,
                   const struct emd_frame_ops *ops, void *data)
{
  if (n == 0)
    return 0;
  if (f->mode == EMD_FRAME_UNKNOWN)
    f->mode = p[0] == '\0' ? EMD_FRAME_BINARY : EMD_FRAME_TEXT;
  if (f->mode == EMD_FRAME_TEXT)
    return feed_text(f, p, n, ops, data);
  return feed_binary(f, p, n, ops, data);
}

int emd_frame_eof(struct emd_framer *f, const struct emd_frame_ops *ops,
                  void *data)
{
  int rc = 0;

  if (f->mode == EMD_FRAME_TEXT && f->plen > 0 && !f->skipping) {
    size_t len = f->plen;

    f->plen = 0;
    if (line_len(f->partial, len) > f->max)
      rc = ops->too_large(data, 0);
    else
      rc = ops->item(data, f->partial, len);
  } else if (f->mode == EMD_FRAME_BINARY && (f->plen > 0 || f->skip > 0)) {
    f->plen = 0;
    f->skip = 0;
    rc = ops->truncated(data);
  }
  f->skipping = false;
  return rc ? 1 : 0;
}

void emd_frame_free(struct emd_framer *f)
{
  uint64_t max = f->max;

  free(f->partial);
  memset(f, 0, sizeof(*f));
  f->max = max;
}
