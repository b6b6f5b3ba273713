/* utf8_ref.h: UTF-8 by the book (Unicode table 3-7), one code point at a
 * time, up to the NUL: the tests' own oracle, written apart from
 * lib/emd_utf8.h on purpose, so comparing the two can fail. Header only,
 * like prom_check.h. */
#ifndef UTF8_REF_H
#define UTF8_REF_H

#include <stdbool.h>
#include <stdint.h>

static bool ref_utf8(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;
  uint32_t cp, min;
  int more;

  while (*p != 0) {
    if (*p < 0x80) {
      p++;
      continue;
    }
    if ((*p & 0xe0) == 0xc0) {
      cp = *p & 0x1f;
      more = 1;
      min = 0x80;
    } else if ((*p & 0xf0) == 0xe0) {
      cp = *p & 0x0f;
      more = 2;
      min = 0x800;
    } else if ((*p & 0xf8) == 0xf0) {
      cp = *p & 0x07;
      more = 3;
      min = 0x10000;
    } else {
      return false;
    }
    for (p++; more > 0; more--, p++) {
      if ((*p & 0xc0) != 0x80)
        return false;
      cp = cp << 6 | (*p & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
  }
  return true;
}

#endif
