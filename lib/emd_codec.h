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
                          * skip the client rules */
};

/* Decodes one NDJSON line (newline and any '\r' already removed) as SPEC 2
 * says: an object with an "event" member is an envelope (the JSON form of
 * Event), any other object is a bare TelemetryEvent wrapped in a fresh
 * Event. proto3 JSON mapping: lowerCamelCase or original names, enums by
 * name or number, 64-bit integers as numbers or strings, bytes as base64,
 * null as the default, data as {"typeUrl"|"@type", "value"}. A
 * detail.user.email containing '@' is trimmed, lower-cased and replaced by
 * its SHA-256. A client's fin is ignored (left false). Then runs
 * emd_codec_validate().
 * Everything in *out lives in arena. Returns 0, EMD_EBADJSON (syntax,
 * invalid UTF-8, NaN) or EMD_EINVALID (not an object, wrong type, unknown
 * field, a broken rule), with msg naming the field path and the rule, e.g.
 * "event.context[0].type: does not match ^type.googleapis.com/...". */
int emd_codec_decode_json(const char *line, size_t len,
                          const struct emd_codec_opts *opts,
                          struct emd_arena *arena, emd_event **out,
                          char *msg, size_t msglen);

/* Decodes one binary-mode frame payload (a serialized Event, SPEC 2):
 * protobuf-c unpack into arena, the same email rule, fin cleared, then
 * emd_codec_validate(). Returns 0, EMD_EINVALID (garbage protobuf or a
 * broken rule) with msg. */
int emd_codec_decode_frame(const uint8_t *buf, size_t len,
                           const struct emd_codec_opts *opts,
                           struct emd_arena *arena, emd_event **out,
                           char *msg, size_t msglen);

/* Checks an event as a client sent it, before enrichment, against SPEC 1.1:
 * Event.event present; collection pattern; id pattern when set (emitd fills
 * an empty one); tenant, user, context (1..10; type, resource, action,
 * event), detail.* (tenant name, user uid/email/username, repository
 * provider/link/name), timer <= 32 bytes, data.type_url with a '/',
 * service-only fields unset, every string valid UTF-8 with lengths counted
 * in code points. Returns 0 or EMD_EINVALID with msg. */
int emd_codec_validate(const emd_event *ev, char *msg, size_t msglen);

/* A growable byte buffer for encoders. */
struct emd_codec_buf {
  char *data;
  size_t len;
  size_t cap;
};

/* Appends ev as one line of proto3 JSON (lowerCamelCase names, enums by
 * name, 64-bit integers as strings, bytes as base64, defaults omitted) and
 * no newline. Returns 0 or -ENOMEM. */
int emd_codec_event_to_json(const emd_event *ev, struct emd_codec_buf *out);

/* SHA-256 of the trimmed, lower-cased address into out[32]. */
void emd_codec_hash_email(const char *addr, size_t len, uint8_t out[32]);

/* Standard base64 with padding; returns bytes written (no NUL). */
size_t emd_codec_base64(const uint8_t *in, size_t len, char *out);

#endif
