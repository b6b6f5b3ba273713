/* emd_json.h: a growable text buffer and a small JSON writer on top of it,
 * for replies that are built once and sent (the control socket's JSON,
 * the Prometheus text of emd_metrics). Not for the event hot path. Any
 * thread; no global state.
 *
 * Errors are sticky: every append after a failure does nothing, and the
 * caller checks once, at the end (emd_text.err, emd_json_finish). So a
 * reply is written as a straight line of calls without an if per value. */
#ifndef EMD_JSON_H
#define EMD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes that grow as needed. data is NUL-terminated whenever it is not
 * NULL (the NUL is not counted in len). Zero-initialise, or
 * emd_text_init(). */
struct emd_text {
  char *data;
  size_t len;
  size_t cap;
  int err;            /* 0, or the first failure (-ENOMEM, -EINVAL) */
};

void emd_text_init(struct emd_text *t);

/* Releases the memory and zeroes t. NULL-safe; safe twice. */
void emd_text_free(struct emd_text *t);

/* Empties t (and clears err) but keeps its memory for the next use. */
void emd_text_reset(struct emd_text *t);

/* Appends n bytes (which may hold NULs); a string; one byte; or printf
 * output. */
void emd_text_append(struct emd_text *t, const void *p, size_t n);
void emd_text_puts(struct emd_text *t, const char *s);
void emd_text_putc(struct emd_text *t, char c);
void emd_text_printf(struct emd_text *t, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

/* Makes sure n more bytes fit; returns 0 or t->err. */
int emd_text_reserve(struct emd_text *t, size_t n);

/* Appends the UTF-8 text p[0..n) with invalid sequences (stray
 * continuation bytes, overlongs, surrogates, past U+10FFFF, cut ones)
 * each replaced by U+FFFD, so the result is always valid UTF-8. */
void emd_text_utf8(struct emd_text *t, const void *p, size_t n);

/* The JSON writer. Commas and colons are placed for the caller: it says
 * what comes (begin an object, a key, a value, end) and the writer
 * punctuates. Misuse (a key inside an array, a value where a key is due,
 * an end that does not match, nesting past EMD_JSON_MAX_DEPTH) sets
 * err = -EINVAL. Zero-initialise, or emd_json_init(). */
#define EMD_JSON_MAX_DEPTH 32

struct emd_json {
  struct emd_text t;  /* the output so far; one line, no newline */
  unsigned depth;     /* open containers */
  uint64_t is_obj;    /* bit d: the container at depth d is an object */
  uint64_t has_item;  /* bit d: it has a member already */
  bool want_value;    /* a key was written; its value is due */
};

void emd_json_init(struct emd_json *j);
void emd_json_free(struct emd_json *j);
void emd_json_reset(struct emd_json *j);

void emd_json_obj_begin(struct emd_json *j);
void emd_json_obj_end(struct emd_json *j);
void emd_json_arr_begin(struct emd_json *j);
void emd_json_arr_end(struct emd_json *j);

/* A member name; the next call writes its value. */
void emd_json_key(struct emd_json *j, const char *key);

/* Values. Strings are escaped ("\\", "\"", control characters as \n, \t
 * or \u00XX) and made valid UTF-8 (see emd_text_utf8): bytes from upstream
 * or from a client can be written as they are. A NULL string writes null.
 * A double that is not finite writes null (JSON has no NaN). */
void emd_json_str(struct emd_json *j, const char *s);
void emd_json_strn(struct emd_json *j, const void *s, size_t n);
void emd_json_u64(struct emd_json *j, uint64_t v);
void emd_json_i64(struct emd_json *j, int64_t v);
void emd_json_f64(struct emd_json *j, double v);
void emd_json_bool(struct emd_json *j, bool v);
void emd_json_null(struct emd_json *j);

/* A member: key then value, in one call. */
void emd_json_kstr(struct emd_json *j, const char *key, const char *s);
void emd_json_kstrn(struct emd_json *j, const char *key, const void *s,
                    size_t n);
void emd_json_ku64(struct emd_json *j, const char *key, uint64_t v);
void emd_json_ki64(struct emd_json *j, const char *key, int64_t v);
void emd_json_kf64(struct emd_json *j, const char *key, double v);
void emd_json_kbool(struct emd_json *j, const char *key, bool v);

/* Returns 0 when the document is complete (every container closed, no
 * key left without a value) and nothing failed; else the error. */
int emd_json_finish(const struct emd_json *j);

/* Shared with emd_metrics.c, not an API: the length (1 to 4) of the
 * valid UTF-8 sequence at the start of p[0..n), or 0 if it is not one. */
size_t emd__utf8_len(const unsigned char *p, size_t n);

/* Shared with emd_metrics.c: the shortest "%g" form of v that reads back
 * as v (at most 17 significant digits) into buf (at least 32 bytes). */
void emd__fmt_double(char *buf, size_t len, double v);

#endif
