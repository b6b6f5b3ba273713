/* emd_varint.h: writing protobuf varints, for every module that writes
 * the wire format by hand: a value's size, the value forwards, and the
 * value backwards (for a packer that fills its buffer from the end).
 * Reading stays with each reader, whose rules differ: the unpacker reads
 * overlong forms as protobuf-c does, the spool and the forwarder read
 * what emitd wrote. */
#ifndef EMD_VARINT_H
#define EMD_VARINT_H

#include <stddef.h>
#include <stdint.h>

/* Bytes v takes: 1 + floor(bit length / 7), from the index of the top
 * bit. */
static inline size_t emd_varint_size(uint64_t v)
{
  return ((unsigned)(63 - __builtin_clzll(v | 1)) * 9 + 73) / 64;
}

/* Writes v at p; returns the byte after it. */
static inline uint8_t *emd_varint_put(uint8_t *p, uint64_t v)
{
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p++ = (uint8_t)v;
  return p;
}

/* Writes v to end just below p; returns its first byte. */
static inline uint8_t *emd_varint_prepend(uint8_t *p, uint64_t v)
{
  if (v < 0x80) {
    *--p = (uint8_t)v;
    return p;
  }
  p -= emd_varint_size(v);
  emd_varint_put(p, v);
  return p;
}

#endif
