/* emd_frame.h: splits a client's byte stream into items, incrementally:
 * lines in text mode, or frames (a 4-byte big-endian length, then that
 * many bytes) in binary mode, chosen by the first byte (0x00: binary; SPEC
 * 2). Whole items are handed out in place, without copying; only an item
 * cut by the end of a read is gathered in the framer's own buffer, which
 * never grows past the limit. No I/O, no other state: any thread. */
#ifndef EMD_FRAME_H
#define EMD_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum emd_frame_mode { EMD_FRAME_UNKNOWN, EMD_FRAME_TEXT, EMD_FRAME_BINARY };

/* What the framer found. Each callback returns 0 to go on, non-zero to
 * stop this feed at once (the rest of its bytes are dropped). */
struct emd_frame_ops {
  /* A line without its '\n' (a '\r' before it is kept), or a frame's
   * payload. Valid during the call only. */
  int (*item)(void *data, const char *p, size_t n);
  /* An item longer than the limit: a frame of len bytes, or a line (len
   * 0: its length is unknown, since its end is not read yet). The item is
   * skipped; the stream goes on after it. */
  int (*too_large)(void *data, uint64_t len);
  /* The input ended inside a frame (binary mode). */
  int (*truncated)(void *data);
};

/* Zero it, then set max. */
struct emd_framer {
  enum emd_frame_mode mode;
  uint64_t max;            /* longest line (without "\r\n") or payload */
  char *partial;           /* an unfinished item (malloc'd) */
  size_t plen, pcap;
  uint64_t skip;           /* binary: payload bytes of a refused frame
                            * still to drop */
  bool skipping;           /* text: inside an over-long line */
};

/* Feeds n bytes. Returns 0, 1 if a callback stopped it, or -ENOMEM when
 * an unfinished item could not be kept (the stream cannot go on: drop the
 * client). */
int emd_frame_feed(struct emd_framer *f, const char *p, size_t n,
                   const struct emd_frame_ops *ops, void *data);

/* The input ended: a last line without a newline is an item; a partial
 * frame is truncated. */
int emd_frame_eof(struct emd_framer *f, const struct emd_frame_ops *ops,
                  void *data);

/* Releases the buffer; the framer is zero again but for max. */
void emd_frame_free(struct emd_framer *f);

#endif
