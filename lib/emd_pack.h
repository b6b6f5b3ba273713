/* emd_pack.h: packs any protobuf-c message to the protobuf wire format,
 * byte for byte as protobuf_c_message_pack() does, but sizes every
 * (sub)message once.
 *
 * protobuf-c's packer asks get_packed_size() for the length prefix of
 * every sub-message it writes, at every level, so a leaf nested d deep is
 * sized d + 1 times per pack. Here emd_pack_size() walks the message once
 * and records each sub-message's size (and each packed field's payload
 * length) in a caller-owned cache, in the order emd_pack_write() meets
 * them; emd_pack_write() then writes straight into the output without
 * sizing anything again.
 *
 * Driven by the descriptors alone (ProtobufCMessageDescriptor), so it
 * works for every generated type. The rules are protobuf-c 1.4's: fields
 * in descriptor order; proto3 fields (LABEL_NONE) left out when zero, an
 * empty string, empty bytes or a NULL message; LABEL_OPTIONAL by its has_
 * flag, or for strings and messages by a pointer that is neither NULL
 * nor the default; oneof members when the case names them; repeated
 * fields item by item, or as one packed run (PROTOBUF_C_FIELD_FLAG_PACKED);
 * unknown fields appended after the known ones.
 *
 * No state of its own: any thread, one cache per thread. */
#ifndef EMD_PACK_H
#define EMD_PACK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* The lengths emd_pack_size() found, for emd_pack_write(). Embed it in its
 * owner and reuse it: it grows to the largest message seen and then
 * allocates no more. Zero-initialised it is empty and valid. */
struct emd_pack_sizes {
  size_t *len;  /* sub-message sizes and packed payload lengths, pre-order */
  size_t n;     /* entries the last emd_pack_size() filled */
  size_t cap;   /* entries allocated */
};

/* Sizes m: on success returns 0 with *len set to the bytes
 * protobuf_c_message_get_packed_size(m) would return, and c filled in for
 * emd_pack_write(). Borrows m for this call only. Allocates only when m
 * has more sub-messages than c has ever held; returns -ENOMEM (c then
 * keeps what it had, *len untouched) if that fails. */
int emd_pack_size(const ProtobufCMessage *m, struct emd_pack_sizes *c,
                  size_t *len);

/* Writes m to out, which must hold the *len bytes the last
 * emd_pack_size(m, c, len) returned; m must not have changed since. The
 * bytes are those protobuf_c_message_pack(m, out) writes. Returns the
 * number of bytes written (that same *len). Reads c only, so one sizing
 * may be written any number of times. */
size_t emd_pack_write(const ProtobufCMessage *m,
                      const struct emd_pack_sizes *c, uint8_t *out);

/* Releases c's memory; c is empty and valid again. */
void emd_pack_sizes_free(struct emd_pack_sizes *c);

#endif
