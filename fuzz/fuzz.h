/* fuzz.h: what the libFuzzer targets in fuzz/ share. Each target checks
 * the promises its header makes, beyond "does not crash": a broken one
 * aborts, so libFuzzer keeps the input as a crash. */
#ifndef EMD_FUZZ_H
#define EMD_FUZZ_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

/* libFuzzer's entry points; -Wmissing-prototypes wants them declared. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static void fuzz_fail(const char *file, int line, const char *fmt, ...)
  __attribute__((format(printf, 3, 4), noreturn));

static void fuzz_fail(const char *file, int line, const char *fmt, ...)
{
  va_list ap;

  fprintf(stderr, "%s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}

/* Stops the run with a message when cond is false. */
#define FUZZ_CHECK(cond, ...)                                   \
  do {                                                          \
    if (!(cond))                                                \
      fuzz_fail(__FILE__, __LINE__, __VA_ARGS__);               \
  } while (0)

/* Whether s holds a message: not empty, NUL-terminated within cap. */
static inline bool fuzz_has_msg(const char *s, size_t cap)
{
  size_t n = strnlen(s, cap);

  return n > 0 && n < cap;
}

/* Whether s is one line: a message (above) without a newline. */
static inline bool fuzz_one_line(const char *s, size_t cap)
{
  return fuzz_has_msg(s, cap) && strchr(s, '\n') == NULL;
}

/* Whether s is one line of printable ASCII. */
static inline bool fuzz_printable_line(const char *s, size_t cap)
{
  if (!fuzz_has_msg(s, cap))
    return false;
  for (; *s != '\0'; s++)
    if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
      return false;
  return true;
}

/* m serialized, malloc'd (the caller frees it), its length in *n. */
static inline uint8_t *fuzz_pack(const ProtobufCMessage *m, size_t *n)
{
  uint8_t *buf;

  *n = protobuf_c_message_get_packed_size(m);
  buf = malloc(*n ? *n : 1);
  FUZZ_CHECK(buf != NULL, "out of memory");
  FUZZ_CHECK(protobuf_c_message_pack(m, buf) == *n, "pack size");
  return buf;
}

/* Whether a and b serialize to the same bytes: equal as protobuf-c sees
 * them (it drops -0.0 as a default, as it drops 0.0). */
static inline bool fuzz_same_packed(const ProtobufCMessage *a,
                                    const ProtobufCMessage *b)
{
  size_t na, nb;
  uint8_t *pa = fuzz_pack(a, &na), *pb = fuzz_pack(b, &nb);
  bool same = na == nb && memcmp(pa, pb, na) == 0;

  free(pa);
  free(pb);
  return same;
}

#endif
