/* emd_pack.h: packs any protobuf-c message to the protobuf wire format,
 * byte for byte as protobuf_c_message_pack() does, in one walk.
 *
 * protobuf-c's packer asks get_packed_size() for the length prefix of
 * every sub-message it writes, at every level, so a leaf nested d deep is
 * sized d + 1 times per pack, and a caller that needs the length first
 * (to reserve room) sizes the whole tree once more. emd_pack() writes the
 * message back to front into a buffer the caller keeps and reuses: each
 * sub-message's bytes are in place before its length prefix is due, so
 * nothing is sized twice and no byte is moved. The caller gets the length
 * and the bytes at once, and copies them where they belong.
 *
 * Driven by the descriptors alone (ProtobufCMessageDescriptor), so it
 * works for every generated type. The rules are protobuf-c 1.4's: fields
 * in descriptor order; proto3 fields (LABEL_NONE) left out when zero, an
 * empty string, empty bytes or a NULL message; LABEL_REQUIRED always;
 * LABEL_OPTIONAL by its has_ flag, or for strings and messages by a
 * pointer that is neither NULL nor the default; oneof members when the
 * case names them; repeated fields item by item, or as one packed run
 * (PROTOBUF_C_FIELD_FLAG_PACKED); unknown fields after the known ones.
 * Two inputs protobuf-c cannot size are packed as its packer writes them:
 * a NULL string or message inside a repeated field (as empty). Only a
 * string or bytes of 4 GiB or more comes out differently: protobuf-c
 * truncates such a length prefix to 32 bits, emd_pack() does not.
 *
 * The Event, packed for every event, has its walk written out in
 * emd_pack_event.c; this packs everything else (and an Event that one
 * leaves, with unknown fields).
 *
 * No state of its own: any thread, one struct emd_pack_buf per thread. */
#ifndef EMD_PACK_H
#define EMD_PACK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* Where emd_pack() writes. Embed it in its owner and reuse it: it grows
 * to fit the largest message seen (plus some slack) and then allocates no
 * more. Zero-initialised it is empty and valid. */
struct emd_pack_buf {
  uint8_t *buf;  /* cap bytes, filled from the end */
  size_t cap;
};

/* Packs m into b. On success returns 0 with *len set to the bytes
 * protobuf_c_message_get_packed_size(m) would return and *out pointing
 * at exactly the bytes protobuf_c_message_pack(m, ...) would write,
 * inside b; they are valid until the next emd_pack() on b or
 * emd_pack_buf_free(b). Borrows m for this call only. Allocates only when
 * m does not fit in b (4 KiB the first time), and then starts over in a
 * buffer twice the size; returns -ENOMEM if that fails (b is then empty,
 * *out and *len are untouched). */
int emd_pack(const ProtobufCMessage *m, struct emd_pack_buf *b,
             const uint8_t **out, size_t *len);

/* Gives b a buffer twice the size (4 KiB the first time), for a packer
 * that ran out of room and starts over; the bytes are not kept. Returns
 * 0 or -ENOMEM (b is then empty). */
int emd_pack_buf_grow(struct emd_pack_buf *b);

/* Releases b's memory; b is empty and valid again. */
void emd_pack_buf_free(struct emd_pack_buf *b);

#endif
