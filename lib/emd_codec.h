/* emd_codec.h: client bytes -> Event, checked against the rules of SPEC 1.1,
 * and Event -> proto3 JSON for the upstream's JSON encoding. No state: any
 * thread, given its own arena. */
#ifndef EMD_CODEC_H
#define EMD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emd_arena.h"
#include "emd_event.h"

struct emd_codec_opts {
  bool ignore_unknown;   /* ingest.unknown_fields = ignore */
  bool upstream;         /* decoding as the service would (the test
                          * upstream): keep fin, allow service-only fields,
                          * skip the client rules and the email rule */
};

/* Decodes one NDJSON line (newline and any '\r' already removed) as SPEC 2
 * says: an object with an "event" member is an envelope (the JSON form of
 * Event), any other object is a bare TelemetryEvent wrapped in a fresh
 * Event. proto3 JSON mapping: lowerCamelCase or original names, enums by
 * name or number, 64-bit integers as numbers or strings, bytes as base64
 * (standard or URL-safe, padded or not), null as the default, data as
 * {"typeUrl"|"type_url"|"@type", "value"}. A detail.user.email containing
 * '@' is trimmed, lower-cased (ASCII) and replaced by its SHA-256. A
 * client's fin is ignored (left false). Then runs the client rules of
 * emd_codec_validate(). opts NULL means all false.
 *
 * Everything in *out lives in arena (so does the token array of a line
 * with more than 256 tokens). Returns 0, or with *out NULL and msg set:
 * EMD_EBADJSON (not exactly one RFC 8259 JSON text in UTF-8: syntax, NaN,
 * raw control characters, invalid UTF-8, unpaired surrogate escapes,
 * nesting deeper than 100; msg names the byte, counted from 1),
 * EMD_EINVALID (JSON that is not an object, a wrong type, an unknown or
 * duplicate field, U+0000 in a string, a broken rule), EMD_ETOOLARGE (len
 * of 1 GiB or more), or -ENOMEM. msg names the field path as the client
 * sees it, lowerCamelCase, with a bare event's fields under "event." as
 * an envelope's are, e.g. "event.context[0].type: does not match
 * ^type.googleapis.com/...". msg may be NULL. */
int emd_codec_decode_json(const char *line, size_t len,
                          const struct emd_codec_opts *opts,
                          struct emd_arena *arena, emd_event **out,
                          char *msg, size_t msglen);

/* For tests: emd_codec_decode_json() taking one of its two ways only.
 * It decodes a line in one pass and, wherever that pass is not sure
 * (every error and a few rare forms), again with the two passes of lex
 * and walk, which decide every verdict and message. EMD__JSON_EXACT takes
 * the two passes alone; EMD__JSON_ONEPASS the one pass alone, returning
 * EMD__JSON_NO_VERDICT (with *out NULL, msg untouched) where the other
 * way would be taken. EMD__JSON_BOTH is emd_codec_decode_json(). */
enum emd__json_way { EMD__JSON_BOTH, EMD__JSON_EXACT, EMD__JSON_ONEPASS };
#define EMD__JSON_NO_VERDICT 1
int emd__codec_decode_json_way(const char *line, size_t len,
                               const struct emd_codec_opts *opts,
                               struct emd_arena *arena, emd_event **out,
                               char *msg, size_t msglen,
                               enum emd__json_way way);

/* Decodes one binary-mode frame payload (a serialized Event, SPEC 2):
 * emd_unpack into arena (protobuf-c's unpack, in one pass); unknown
 * fields refused (or dropped with
 * ignore_unknown); strings checked for UTF-8; then, unless opts->upstream,
 * fin cleared, the email rule (bytes containing '@' and not 32 long are an
 * address) and the client rules. Returns 0, EMD_EINVALID (garbage protobuf
 * or a broken rule) with msg, or -ENOMEM. */
int emd_codec_decode_frame(const uint8_t *buf, size_t len,
                           const struct emd_codec_opts *opts,
                           struct emd_arena *arena, emd_event **out,
                           char *msg, size_t msglen);

/* Checks an event as a client sent it, before enrichment, against SPEC 1.1:
 * Event.event present; collection pattern when set; id pattern when set
 * (emitd fills an empty one); tenant, user, context (1..10; type, resource,
 * action, event), detail.* (tenant name, user uid/email/username,
 * repository provider/link/name, os family/arch: defined enum values
 * only), timing and location service-only fields unset, GeoPoint finite
 * with lat in [-90, 90] and lon in [-180, 180], timer <= 32 bytes,
 * data.type_url with a '/', scope unset; every string valid UTF-8, lengths
 * counted in code points. Patterns match as RE2 does ('.' is any code
 * point but '\n'; unanchored patterns only constrain a prefix). String
 * fields must not be NULL (protobuf-c's init and unpack never leave them
 * NULL). Returns 0 or EMD_EINVALID with msg. */
int emd_codec_validate(const emd_event *ev, char *msg, size_t msglen);

/* A growable byte buffer for encoders: data is malloc'd and grown with
 * realloc; the caller frees it. Zero-initialised is empty and valid. */
struct emd_codec_buf {
  char *data;
  size_t len;
  size_t cap;
};

/* Appends ev as one line of proto3 JSON (lowerCamelCase names, enums by
 * name, 64-bit integers as strings, bytes as standard base64, doubles
 * exact or "NaN"/"Infinity", defaults omitted, data as {"typeUrl",
 * "value"}) and no newline. decode_json with opts->upstream reads it back
 * into an equal message. Returns 0, or -ENOMEM with out->len unchanged. */
int emd_codec_event_to_json(const emd_event *ev, struct emd_codec_buf *out);

/* SHA-256 of the address with ASCII white space trimmed and ASCII letters
 * lower-cased, into out[32]. */
void emd_codec_hash_email(const char *addr, size_t len, uint8_t out[32]);

/* Standard base64 with padding into out (room for 4 * ((len + 2) / 3));
 * returns the bytes written (no NUL). */
size_t emd_codec_base64(const uint8_t *in, size_t len, char *out);

#endif
