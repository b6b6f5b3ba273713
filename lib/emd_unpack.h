/* emd_unpack.h: decodes the protobuf wire format into protobuf-c's
 * generated structs, as protobuf_c_message_unpack() does, in one pass.
 *
 * protobuf-c's unpacker reads every message twice (a scan pass that finds
 * and counts the fields, then a parse pass) and makes one allocation per
 * message, string, bytes value, repeated array, unknown field and, past 16
 * fields, per slab of scan records. emd_unpack() reads each field once,
 * takes the messages and arrays from a block or two of the caller's arena
 * and the bytes of every string, bytes value and unknown field from one
 * block of len bytes (they never need more than the input holds). On
 * the way it notes what a caller checking the tree wants to know: whether
 * any string was not UTF-8 and whether any unknown field came by.
 *
 * Driven by the descriptors alone, so it works for every generated type
 * (and any descriptor whose field_ranges cover its fields, as protoc-c
 * writes them).
 * The result has the layout protobuf_c_message_unpack() gives, and the
 * same values: protobuf-c 1.4's rules, including its quirks, which are
 * these. Singular fields: the last one wins. Repeated fields collect every
 * occurrence; a length-delimited run of a packable type is read as packed
 * whatever the descriptor says, and so is anything else one by one. A
 * singular message given twice is merged as protobuf-c's merge_messages()
 * does: repeated fields concatenated, messages merged, and a field of the
 * earlier copy kept only when the later one lacks it in protobuf-c's sense
 * (strings: the later one still points at the default; bytes: the later
 * one is empty; proto2 optional scalars and oneofs: by has_ or case;
 * proto3 scalars: never, the later copy's value, 0 too, wins); the earlier
 * copy's unknown fields are dropped. A oneof member replaces the oneof's
 * previous value (a message member is not merged) and sets the case;
 * copies of a message with a oneof that neither sets cannot be merged
 * (protobuf-c looks up the field numbered 0 and fails).
 * Strings are copied with a NUL added (embedded NULs stay), empty bytes
 * are NULL. A bool takes any wire type and is true when some byte of the
 * value (for a length-delimited one: of its length prefix and contents)
 * has one of its low 7 bits set; in a packed run, each of its varints.
 * Other types want their own wire type. Varints end within 10 bytes
 * (bits past 64 dropped), tags within 5 (the low 32 bits of the number;
 * numbers no field has are unknown, 0 too, but a tag whose first byte
 * is 0 to 7 fails), length prefixes within 5, with a value of at most
 * INT_MAX. Unknown fields keep their tag, wire type and the bytes after
 * the tag (a length prefix included), in order. Wire types 3, 4
 * (groups), 6 and 7 fail, as do truncated values, a missing required
 * field without a default and a malformed packed run.
 *
 * Messages nest as deep as the input does, by recursion, as in
 * protobuf-c.
 *
 * Any thread, each with its own arena. The one state it keeps is a plan
 * per message type, what its descriptor says about each field, made at
 * the type's first use and kept for the life of the process in a table
 * that every thread reads without a lock (made by whichever thread comes
 * first). Plans are found by the descriptor's address, so a descriptor
 * must keep its fields, ranges and size once used, and its address must
 * not go to another descriptor later (generated ones are constant). */
#ifndef EMD_UNPACK_H
#define EMD_UNPACK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "emd_arena.h"

/* opts for emd_unpack() */
#define EMD_UNPACK_DROP_UNKNOWN 1u  /* check unknown fields, keep none */
#define EMD_UNPACK_NO_REQUIRED 2u   /* the caller knows that no message in
                                     * the tree has a required field (true
                                     * of proto3): skip the check that
                                     * every one came (protobuf-c looks at
                                     * each field of each message) */

/* At most this many message types get a plan (see the top); any other
 * (or any type, when there is no memory for its plan) is read by its
 * descriptor alone, with the same results, only slower. */
#define EMD_UNPACK_PLANS 512

/* What emd_unpack() saw (*saw); a hint that errs on the safe side only. */
#define EMD_UNPACK_SAW_UNKNOWN 1u   /* some message had an unknown field */
#define EMD_UNPACK_SAW_BAD_UTF8 2u  /* some string field's bytes were not
                                     * UTF-8 (Unicode table 3-7) */

/* Decodes data[0..len) as a message of type desc into arena. On success
 * returns 0 with *out pointing at a message equal to what
 * protobuf_c_message_unpack(desc, allocator, len, data) returns, every
 * part of it in arena (valid until the arena's next reset; never free it)
 * and none pointing into data; with EMD_UNPACK_DROP_UNKNOWN in opts no
 * message keeps an unknown field. *saw (when saw is not NULL) gets the
 * EMD_UNPACK_SAW_ flags: one that is clear means no part of the result
 * has that property; one that is set means that some string or unknown
 * field was read that way, maybe only in a copy of a message a later one
 * replaced. Returns -EINVAL where protobuf-c returns NULL for bad input,
 * -ENOMEM when the arena runs out; *out is then NULL, and the arena keeps
 * what was taken. Borrows data for this call only. */
int emd_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
               size_t len, struct emd_arena *arena, unsigned opts,
               ProtobufCMessage **out, unsigned *saw);

#endif
