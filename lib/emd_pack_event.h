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

/* Where a writer that settles Event.index and TelemetryEvent.ordinal
 * after the packing puts them: offsets into the packed Event of the
 * place each field takes when it is not there (after Event.fin; after
 * TelemetryEvent.timer), and of Event.event's tag and its contents. */
struct emd_pack_splice {
  uint32_t index_at;
  uint32_t te_at;
  uint32_t te_body_at;
  uint32_t ordinal_at;
};

/* emd_pack_event, and where index and ordinal go (*sp): for an Event
 * packed now and completed later. Returns 0, 1 when it cannot do this
 * (no TelemetryEvent, unknown fields, a schema it does not know: pack
 * later with emd_pack_event instead), or -ENOMEM. */
int emd_pack_event_open(const emd_event *ev, struct emd_pack_buf *b,
                        const uint8_t **out, size_t *len,
                        struct emd_pack_splice *sp);

/* The Event of p[0..len) (from emd_pack_event_open, with sp) with index
 * and ordinal put in, where they were 0 when it was packed (a 0 here
 * leaves the field out): its size, and the bytes written to dst, exactly
 * as emd_pack_event packs the Event with those values. */
size_t emd_pack_splice_size(size_t len, const struct emd_pack_splice *sp,
                            uint32_t index, uint32_t ordinal);
void emd_pack_splice_write(uint8_t *dst, const uint8_t *p, size_t len,
                           const struct emd_pack_splice *sp, uint32_t index,
                           uint32_t ordinal);

/* Whether the generated schema is the one this module writes out (if
 * not, every Event goes to emd_pack()). */
bool emd_pack_event_specialised(void);

#endif
