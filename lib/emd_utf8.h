/* emd_utf8.h: well-formed UTF-8 (Unicode 15, table 3-7: no overlong
 * forms, no surrogates, nothing above U+10FFFF), for the JSON lexer and
 * the binary-frame decoder. Header only: both call it per character on
 * their hot paths, and it must inline there. */
#ifndef EMD_UTF8_H
#define EMD_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed sequence at s[0..n) (n >= 1): 1 for ASCII,
 * 2 to 4, or 0 if none starts there. */
static inline size_t emd_utf8_seq(const uint8_t *s, size_t n)
{
  uint8_t c = s[0];

  if (c < 0x80)
    return 1;
  if (c < 0xc2)
    return 0;
  if (c < 0xe0)
    return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
  if (c < 0xf0) {
    if (n < 3 || (s[2] & 0xc0) != 0x80)
      return 0;
    if (c == 0xe0)
      return s[1] >= 0xa0 && s[1] <= 0xbf ? 3 : 0;
    if (c == 0xed)
      return s[1] >= 0x80 && s[1] <= 0x9f ? 3 : 0;
    return (s[1] & 0xc0) == 0x80 ? 3 : 0;
  }
  if (c > 0xf4 || n < 4 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
    return 0;
  if (c == 0xf0)
    return s[1] >= 0x90 && s[1] <= 0xbf ? 4 : 0;
  if (c == 0xf4)
    return s[1] >= 0x80 && s[1] <= 0x8f ? 4 : 0;
  return (s[1] & 0xc0) == 0x80 ? 4 : 0;
}

/* Whether s[0..n) is well-formed UTF-8 throughout. */
static inline bool emd_utf8_valid(const void *s, size_t n)
{
  const uint8_t *p = s;
  size_t i = 0, k;

  while (i < n) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    k = emd_utf8_seq(p + i, n - i);
    if (k == 0)
      return false;
    i += k;
  }
  return true;
}

#endif
