/* emd_pack_event.h: packs a buildless.service.v1.Event, the message the
 * spool writer packs for every event, byte for byte as emd_pack() (and
 * protobuf_c_message_pack()) would, with the walk written out for this
 * schema instead of read from its descriptors: about half the
 * instructions of emd_pack()'s plans.
 *
 * An Event with unknown fields anywhere, or generated code whose schema
 * has fields this module does not know (it checks the descriptors once),
 * is handed to emd_pack(), so the result is always right. Any thread,
 * one struct emd_pack_buf per thread. */
#ifndef EMD_PACK_EVENT_H
#define EMD_PACK_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emd_event.h"
#include "emd_pack.h"

/* emd_pack(&ev->base, b, out, len), faster: the same bytes, the same
 * contract. */
int emd_pack_event(const emd_event *ev, struct emd_pack_buf *b,
                   const uint8_t **out, size_t *len);

/* Whether the generated schema is the one this module writes out (if
 * not, every Event goes to emd_pack()). */
bool emd_pack_event_specialised(void);

#endif
