/* emd_codec.c: see emd_codec.h.
 *
 * A JSON line is decoded in two passes, with no malloc on the way:
 *  1. lex() tokenizes the line into a stack array of tokens (an arena one
 *     for lines with more), checking as it goes that the line is exactly
 *     one RFC 8259 JSON text in UTF-8; anything else is EMD_EBADJSON.
 *  2. A walk driven by the protobuf-c descriptors fills the generated
 *     structs (allocated from the arena) from the tokens, following the
 *     proto3 JSON mapping; keys are looked up in per-message tables of
 *     field names (struct jmsg); every error names the field path, built
 *     as the error returns. Then the client rules of SPEC 1.1 run on the
 *     structs (rules_event()), the same code that checks binary frames.
 * But first, json_onepass() tries to do both in one pass, straight from
 * the text into the structs, for lines as clients send them; wherever it
 * is not sure (every error, some rare forms) the two passes start over
 * and have the last word, so verdicts and messages are theirs alone.
 * For emitd-bench's ~420-byte events the one pass and the rules take
 * about 3,600 instructions an event, the two passes about 10,300; a line
 * that fails pays for the part of the one pass before its first problem
 * on top of the two passes.
 *
 * Why not jsmn: it was the plan, and it is fast, but it is lax where it
 * matters here. Even in strict mode it accepts missing or doubled
 * separators ({"a":1 "b":2}, [1 2], {"a"::1}, {"a":1,,"b":2}), leading
 * and trailing commas ([1,], {"a":1,}, [,1]), keys without values ({"a"},
 * {"a":}), any run of primitive characters (tru, nulll, 01, 1., -, 1e,
 * 1ee5, -Infinity), raw control characters, invalid UTF-8 and lone
 * surrogates in strings, a second value ({}{}), and anything after a NUL
 * byte; it reports a lone top-level "1" as incomplete; and its bracket
 * matching costs grow with the nesting depth. Closing those gaps needs a
 * second pass over every token and string, while jsmn alone already took
 * about 0.53 us for a 491-byte event on this project's machine. lex() takes
 * about 0.35 us for the same line and is strict by construction: one pass,
 * a state machine over an explicit stack, strings scanned 16 bytes at a
 * time.
 *
 * Where bad_json ends and invalid begins: bad_json is anything a strict
 * RFC 8259 parser refuses to read (syntax, number and literal grammar,
 * NaN/Infinity as bare words, raw control characters in strings, invalid
 * UTF-8 including overlong forms and encoded surrogates, \u escapes that
 * leave a surrogate unpaired, nesting deeper than JSON_MAX_DEPTH).
 * invalid is JSON that reads fine but does not fit: not an object, a value
 * of the wrong type or range, an unknown field, a duplicate key (in either
 * spelling), U+0000 inside a string (protobuf-c strings end at NUL), and
 * every rule of SPEC 1.1.
 *
 * Other choices SPEC leaves open:
 *  - Duplicate keys are refused ("duplicate field"), as protobuf's own
 *    parser does; so are both spellings of one field in one object.
 *  - Enum names match exactly; any int32 decodes as a number, and the
 *    client rules then take defined values only, for RepositoryProvider
 *    (SPEC) and for OSFamily and ProcessorArch alike.
 *  - Integers come as numbers or strings, in any exact integral form (7,
 *    "7", 7.0, 0.7e1); a fraction, a negative unsigned (but -0) or a value
 *    out of range is invalid. Doubles take "NaN", "Infinity" and
 *    "-Infinity" too, and GeoPoint's rule then wants finite values with
 *    lat in [-90, 90] and lon in [-180, 180].
 *  - bytes: standard or URL-safe base64, padded or not; stray bits in the
 *    last character are tolerated. null is the default, but not inside a
 *    list.
 *  - Messages name fields lowerCamelCase, a bare event's under "event."
 *    like an envelope's, an unknown key as the client wrote it.
 *  - An email address is trimmed of ASCII white space and lower-cased in
 *    ASCII only (no Unicode case folding) before it is hashed.
 *  - Patterns follow RE2 (see the rules below); empty optional strings
 *    skip them, and so do an empty id and collection (emitd fills the id;
 *    SPEC's smallest valid line has no collection).
 *  - Frames: emd_unpack decodes as protobuf-c's unpack would, in one pass,
 *    keeping unknown fields and noting them and strings that are not
 *    UTF-8; only then does tree_check() walk the tree, to refuse (or,
 *    with ignore_unknown, drop) the first and name the second.
 */
#include "emd_codec.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* SHA256_Init and friends are deprecated in OpenSSL 3 in favour of EVP,
 * but EVP fetches the algorithm on every call: 400-600 ns per address
 * against 60 ns. They are still part of OpenSSL 3's API. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include "emd_err.h"
#include "emd_unpack.h"
#include "emd_utf8.h"

/* emitd's deepest path is 7 objects; protobuf's own JSON parser stops at
 * 100 levels too. */
#define JSON_MAX_DEPTH 100
/* Enough for any ordinary event (a 400-byte event has about 50 tokens);
 * 256 tokens are 5 KiB of stack. */
#define STACK_TOKENS 256
#define PATH_MAX_SEGS 24
#define CONTEXT_MAX 10

/* The patterns of SPEC 1.1, quoted in error messages. */
#define PAT_COLLECTION "^[a-zA-Z]{3,32}$"
#define PAT_ID "^[a-zA-Z0-9]{12,64}$"
#define PAT_TENANT "^org_[a-zA-Z0-9]{3,32}$"
#define PAT_CTX_TYPE "^type.googleapis.com/buildless.context.[a-zA-Z.0-9]*$"
#define PAT_RESOURCE "^[a-zA-Z]{3,12}::[a-zA-Z0-9]*"
#define PAT_TENANT_NAME "^[a-zA-Z][a-zA-Z0-9_-]{2,32}"

/* ------------------------------------------------------------------ */
/* Messages */

static int vfail(char *msg, size_t msglen, int rc, const char *fmt,
                 va_list ap) __attribute__((format(printf, 4, 0)));

static int vfail(char *msg, size_t msglen, int rc, const char *fmt,
                 va_list ap)
{
  if (msg != NULL && msglen > 0)
    vsnprintf(msg, msglen, fmt, ap);
  return rc;
}

static int fail(char *msg, size_t msglen, int rc, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));

static int fail(char *msg, size_t msglen, int rc, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  rc = vfail(msg, msglen, rc, fmt, ap);
  va_end(ap);
  return rc;
}

/* ------------------------------------------------------------------ */
/* Characters, UTF-8 and the JSON grammar */

static bool is_ws(char c)
{
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c)
{
  return c >= '0' && c <= '9';
}

/* ASCII letters (1) and digits (2), for the pattern rules' loops: one
 * load instead of three range checks a character. */
static const unsigned char char_class[256] = {
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,
  0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
  0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
};

static bool is_alpha(char c)
{
  return char_class[(unsigned char)c] & 1;
}

static bool is_alnum(char c)
{
  return char_class[(unsigned char)c] != 0;
}

static int hex_val(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Code points in a valid UTF-8 string: every byte but continuations. */
static size_t cp_len(const char *s)
{
  size_t n = 0;

  for (; *s != '\0'; s++)
    n += ((unsigned char)*s & 0xc0) != 0x80;
  return n;
}

/* The four hex digits at s, or -1. */
static long hex4(const char *s)
{
  long v = 0;
  int i, h;

  for (i = 0; i < 4; i++) {
    h = hex_val(s[i]);
    if (h < 0)
      return -1;
    v = v * 16 + h;
  }
  return v;
}

/* The end of the number at s[i..n), or i when there is none (RFC 8259:
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?). */
static size_t number_end(const char *s, size_t n, size_t i)
{
  size_t b = i;

  if (i < n && s[i] == '-')
    i++;
  if (i >= n || !is_digit(s[i]))
    return b;
  if (s[i++] != '0')
    while (i < n && is_digit(s[i]))
      i++;
  if (i < n && s[i] == '.') {
    if (++i >= n || !is_digit(s[i]))
      return b;
    while (i < n && is_digit(s[i]))
      i++;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-'))
      i++;
    if (i >= n || !is_digit(s[i]))
      return b;
    while (i < n && is_digit(s[i]))
      i++;
  }
  return i;
}

static bool is_number(const char *s, size_t n)
{
  return n > 0 && number_end(s, n, 0) == n;
}

/* Appends code point cp as UTF-8 at out; returns the bytes written. */
static size_t utf8_put(unsigned long cp, char *out)
{
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Unescapes the lexer-checked string body s[0..n) into out, which has room
 * for n bytes (an escape never grows); returns the length written. */
static size_t unescape(const char *s, size_t n, char *out)
{
  size_t i = 0, o = 0;
  unsigned long cp;
  char c;

  while (i < n) {
    if (s[i] != '\\') {
      out[o++] = s[i++];
      continue;
    }
    c = s[i + 1];
    i += 2;
    switch (c) {
    case 'b': out[o++] = '\b'; break;
    case 'f': out[o++] = '\f'; break;
    case 'n': out[o++] = '\n'; break;
    case 'r': out[o++] = '\r'; break;
    case 't': out[o++] = '\t'; break;
    case 'u':
      cp = (unsigned long)hex4(s + i);
      i += 4;
      if (cp >= 0xd800 && cp <= 0xdbff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) +
             ((unsigned long)hex4(s + i + 2) - 0xdc00);
        i += 6;
      }
      o += utf8_put(cp, out + o);
      break;
    default: out[o++] = c; break;   /* " \ / */
    }
  }
  return o;
}

/* ------------------------------------------------------------------ */
/* Step 1: the lexer */

/* J_NULL is the literal null, apart so the walk spots it in one compare;
 * J_PRIMITIVE is a number, true or false. */
enum jtype { J_OBJECT = 1, J_ARRAY, J_STRING, J_PRIMITIVE, J_NULL };

/* One JSON value, or an object key. The tokens of a line are in document
 * order, each followed by its members. */
struct jtok {
  unsigned char type;   /* enum jtype */
  bool esc;             /* a string with escapes (set for strings only) */
  int start;            /* offset of '{', '[', a primitive, or a string's
                         * first byte after the quote */
  int end;              /* offset just past '}', ']', a primitive, or a
                         * string's last byte before the quote */
  int size;             /* array: its items (set for arrays only; an
                         * object's members run up to its next) */
  int next;             /* index of the token after this value's subtree
                         * (for a key: after the key itself) */
};

struct lexer {
  const char *js;
  size_t len;
  struct jtok *t;          /* the tokens */
  int n;                   /* ... how many, once lexed */
  int cap;                 /* ... room for */
  struct emd_arena *arena; /* where a longer token array goes */
  char *msg;
  size_t msglen;
};

static int lex_fail(struct lexer *lx, const char *why, size_t at)
{
  return fail(lx->msg, lx->msglen, EMD_EBADJSON, "%s at byte %zu", why,
              at + 1);
}

static inline size_t lex_ws(const char *js, size_t len, size_t i)
{
  /* Most lines have no white space between tokens at all. */
  if (i < len && (unsigned char)js[i] > ' ')
    return i;
  while (i < len && is_ws(js[i]))
    i++;
  return i;
}

/* Makes room for more tokens: the array moves to the arena, 4 times
 * larger. Rare, so kept out of the lexer's loop. */
static __attribute__((noinline)) struct jtok *lex_grow(struct lexer *lx,
                                                      struct jtok *t, int n)
{
  struct jtok *bigger;

  bigger = emd_arena_alloc(lx->arena, (size_t)lx->cap * 4 * sizeof(*t));
  if (bigger == NULL)
    return NULL;
  memcpy(bigger, t, (size_t)n * sizeof(*t));
  lx->cap *= 4;
  return bigger;
}

/* The offset of the first of the 8 bytes at p that is '"', '\\', a control
 * character or non-ASCII, or 8. The "hasless" bit tricks set the top bit
 * of each such byte; a borrow can also mark bytes above a true match, but
 * never below one, so the lowest mark is exact. */
static inline unsigned special8(const unsigned char *p)
{
  const uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
  uint64_t x, q, b, m;
  unsigned k;

  memcpy(&x, p, 8);
  q = x ^ (ones * '"');
  b = x ^ (ones * '\\');
  m = (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) | x) &
      high;
  if (m == 0)
    return 8;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  (void)k;
  return (unsigned)__builtin_ctzll(m) / 8;
#else
  for (k = 0; p[k] >= 0x20 && p[k] < 0x80 && p[k] != '"' && p[k] != '\\';)
    k++;
  return k;
#endif
}

#ifdef __SSE2__
/* special8() for the 16 bytes at p, or 16: a signed compare below 0x20
 * catches the control characters and every byte >= 0x80 at once. */
static inline unsigned special16(const unsigned char *p)
{
  __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
  __m128i m = _mm_or_si128(
    _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                 _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))),
    _mm_cmplt_epi8(x, _mm_set1_epi8(0x20)));
  unsigned bits = (unsigned)_mm_movemask_epi8(m);

  return bits != 0 ? (unsigned)__builtin_ctz(bits) : 16;
}
#endif

/* The offset of the first byte of p[i..len) that is '"', '\\', a control
 * character or non-ASCII, or len. */
static inline size_t skip_plain(const unsigned char *p, size_t i, size_t len)
{
  unsigned k;

#ifdef __SSE2__
  for (; i + 16 <= len; i += 16)
    if ((k = special16(p + i)) < 16)
      return i + k;
#endif
  for (; i + 8 <= len; i += 8)
    if ((k = special8(p + i)) < 8)
      return i + k;
  while (i < len && p[i] >= 0x20 && p[i] < 0x80 && p[i] != '"' &&
         p[i] != '\\')
    i++;
  return i;
}

/* Scans the string whose opening quote is at js[i - 1]: no raw control
 * characters, escapes as RFC 8259 has them with surrogates paired,
 * well-formed UTF-8. Returns NULL with *end at the closing quote and *esc
 * set if there were escapes, or what is wrong with *end at it. */
static const char *lex_string(const char *js, size_t len, size_t i,
                              size_t *end, bool *esc)
{
  const unsigned char *p = (const unsigned char *)js;
  size_t k;
  long cp, lo;

  for (;;) {
    i = skip_plain(p, i, len);
    if (i >= len)
      break;
    *end = i;
    if (p[i] == '"')
      return NULL;
    if (p[i] < 0x20)
      return "control character in a string";
    if (p[i] >= 0x80) {
      k = emd_utf8_seq(p + i, len - i);
      if (k == 0)
        return "invalid UTF-8";
      i += k;
      continue;
    }
    *esc = true;
    if (i + 1 < len && memchr("\"\\/bfnrt", js[i + 1], 8) != NULL) {
      i += 2;
      continue;
    }
    if (i + 1 < len && js[i + 1] != 'u')
      return "bad escape";
    if (i + 6 > len)
      break;
    if ((cp = hex4(js + i + 2)) < 0)
      return "bad escape";
    i += 6;
    if (cp >= 0xdc00 && cp <= 0xdfff)
      return "unpaired surrogate";
    if (cp >= 0xd800 && cp <= 0xdbff) {
      if (i + 6 > len || js[i] != '\\' || js[i + 1] != 'u' ||
          (lo = hex4(js + i + 2)) < 0xdc00 || lo > 0xdfff)
        return "unpaired surrogate";
      i += 6;
    }
  }
  *end = len;
  return "unexpected end";
}

/* The end of the number or literal at js[i], or i when there is none. */
static size_t lex_primitive(const char *js, size_t len, size_t i)
{
  size_t n = len - i;

  if (n >= 4 && (memcmp(js + i, "true", 4) == 0 ||
                 memcmp(js + i, "null", 4) == 0))
    return i + 4;
  if (n >= 5 && memcmp(js + i, "false", 5) == 0)
    return i + 5;
  return number_end(js, len, i);
}

/* Tokenizes one JSON text strictly (RFC 8259, UTF-8) into lx, with at
 * most JSON_MAX_DEPTH levels of nesting and no recursion. The token array
 * and count live in locals: token stores could alias lx->n. */
static int lex(struct lexer *lx)
{
  const char *js = lx->js, *why;
  size_t len = lx->len, i = 0, e;
  int open[JSON_MAX_DEPTH];   /* token indexes of the open containers */
  int depth = 0, n = 0, top;
  struct jtok *t = lx->t, *k;
  bool in_array = false, key = false;
  char c;

value:
  i = lex_ws(js, len, i);
  if (i >= len)
    goto end;
  if (in_array)
    t[open[depth - 1]].size++;
  if (n == lx->cap && (t = lex_grow(lx, t, n)) == NULL)
    goto nomem;
  k = &t[n++];
  k->next = n;
  c = js[i];
  if (c == '"') {
    k->type = J_STRING;
    k->esc = false;
    goto string;
  }
  k->start = (int)i;
  if (c == '{' || c == '[') {
    if (depth == JSON_MAX_DEPTH)
      return fail(lx->msg, lx->msglen, EMD_EBADJSON,
                  "nested deeper than %d levels", JSON_MAX_DEPTH);
    k->type = c == '{' ? J_OBJECT : J_ARRAY;
    k->size = 0;
    in_array = c == '[';
    open[depth++] = n - 1;
    i = lex_ws(js, len, i + 1);
    if (i < len && js[i] == (c == '{' ? '}' : ']'))
      goto close;
    if (c == '[')
      goto value;
    goto key;
  }
  k->type = c == 'n' ? J_NULL : J_PRIMITIVE;   /* only null starts so */
  e = lex_primitive(js, len, i);
  if (e == i)
    return lex_fail(lx, "syntax error", i);
  k->end = (int)e;
  i = e;
  goto after;

key:   /* at a non-blank byte inside an object */
  if (i >= len)
    goto end;
  if (js[i] != '"')
    return lex_fail(lx, "syntax error", i);
  if (n == lx->cap && (t = lex_grow(lx, t, n)) == NULL)
    goto nomem;
  k = &t[n++];
  k->type = J_STRING;
  k->esc = false;
  k->next = n;
  key = true;
string:   /* k is a string token, its quote at js[i] */
  k->start = (int)i + 1;
  why = lex_string(js, len, i + 1, &e, &k->esc);
  if (why != NULL)
    return lex_fail(lx, why, e);
  k->end = (int)e;
  i = e + 1;
  if (!key)
    goto after;
  key = false;
  if (i < len && js[i] == ':') {   /* no blanks: the usual case */
    i++;
    goto value;
  }
  i = lex_ws(js, len, i);
  if (i >= len)
    goto end;
  if (js[i] != ':')
    return lex_fail(lx, "syntax error", i);
  i++;
  goto value;

after:   /* just past a value */
  i = lex_ws(js, len, i);
  if (depth == 0) {
    if (i < len)
      return lex_fail(lx, "syntax error", i);
    lx->t = t;
    lx->n = n;
    return 0;
  }
  if (i >= len)
    goto end;
  top = open[depth - 1];
  if (js[i] == ',') {
    i = lex_ws(js, len, i + 1);
    if (in_array)
      goto value;
    goto key;
  }
  if (js[i] != (in_array ? ']' : '}'))
    return lex_fail(lx, "syntax error", i);
close:   /* at the '}' or ']' of the innermost open container */
  top = open[--depth];
  t[top].end = (int)i + 1;
  t[top].next = n;
  in_array = depth > 0 && t[open[depth - 1]].type == J_ARRAY;
  i++;
  goto after;

end:
  return lex_fail(lx, "unexpected end", i);
nomem:
  return fail(lx->msg, lx->msglen, -ENOMEM, "out of memory");
}

/* ------------------------------------------------------------------ */
/* Numbers, base64, email */

enum num_rc { NUM_OK, NUM_FRAC, NUM_RANGE };

static int digit_at(const char *s, size_t ib, size_t ni, size_t fb, size_t k)
{
  return (k < ni ? s[ib + k] : s[fb + k - ni]) - '0';
}

/* The integer value of a number in JSON grammar, exact in every form
 * that denotes an integer (100, 1e2, 1.00e2, 1000e-1): magnitude in *out,
 * sign in *neg. NUM_FRAC when it is not an integer, NUM_RANGE when the
 * magnitude does not fit 64 bits. */
static enum num_rc num_int(const char *s, size_t n, bool *neg, uint64_t *out)
{
  size_t i = 0, ib, ni, fb = 0, nf = 0, k, total;
  long exp = 0, e;
  bool eneg = false;
  uint64_t v = 0;
  int d;

  /* Most integers are plain digits that fit: no need for the rest. */
  if (n > 0 && n < 20 && s[0] != '-' && (n == 1 || s[0] != '0')) {
    for (i = 0; i < n && is_digit(s[i]); i++)
      v = v * 10 + (uint64_t)(s[i] - '0');
    if (i == n) {
      *neg = false;
      *out = v;
      return NUM_OK;
    }
    v = 0;
  }
  *neg = s[0] == '-';
  i = *neg;
  for (ib = i; i < n && is_digit(s[i]); i++)
    ;
  ni = i - ib;
  if (i < n && s[i] == '.')
    for (fb = ++i; i < n && is_digit(s[i]); i++)
      nf++;
  if (i < n) {   /* exponent */
    i++;
    if (s[i] == '+' || s[i] == '-')
      eneg = s[i++] == '-';
    for (; i < n; i++)
      if (exp < 100000)
        exp = exp * 10 + (s[i] - '0');
  }
  e = (eneg ? -exp : exp) - (long)nf;
  total = ni + nf;
  while (total > 0 && digit_at(s, ib, ni, fb, total - 1) == 0) {
    total--;
    e++;
  }
  for (k = 0; k < total && digit_at(s, ib, ni, fb, k) == 0; k++)
    ;
  if (k == total) {
    *out = 0;
    return NUM_OK;
  }
  if (e < 0)
    return NUM_FRAC;
  if ((long)(total - k) + e > 20)
    return NUM_RANGE;
  for (; k < total; k++) {
    d = digit_at(s, ib, ni, fb, k);
    if (v > (UINT64_MAX - (uint64_t)d) / 10)
      return NUM_RANGE;
    v = v * 10 + (uint64_t)d;
  }
  for (; e > 0; e--) {
    if (v > UINT64_MAX / 10)
      return NUM_RANGE;
    v *= 10;
  }
  *out = v;
  return NUM_OK;
}

static int b64_val(unsigned char c)
{
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+' || c == '-')
    return 62;
  if (c == '/' || c == '_')
    return 63;
  return -1;
}

/* Decodes standard or URL-safe base64, with or without padding (as proto3
 * JSON parsers accept it), into out (room for n * 3 / 4 + 3 bytes).
 * Returns the length, or -1. */
static long b64_decode(const char *s, size_t n, uint8_t *out)
{
  size_t i, pad = 0, o = 0;
  uint32_t acc = 0;
  int v, bits = 0;

  /* Padding only completes a full quad; what is left of a quad without
   * it must be 2 or 3 characters. */
  if (n % 4 == 0)
    while (pad < 2 && n > pad && s[n - 1 - pad] == '=')
      pad++;
  n -= pad;
  if (n % 4 == 1)
    return -1;
  for (i = 0; i < n; i++) {
    v = b64_val((unsigned char)s[i]);
    if (v < 0)
      return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
  return (long)o;
}

size_t emd_codec_base64(const uint8_t *in, size_t len, char *out)
{
  static const char tab[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i, o = 0;
  uint32_t v;

  for (i = 0; i + 2 < len; i += 3) {
    v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = tab[v >> 18];
    out[o++] = tab[(v >> 12) & 63];
    out[o++] = tab[(v >> 6) & 63];
    out[o++] = tab[v & 63];
  }
  if (i < len) {
    v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
    out[o++] = tab[v >> 18];
    out[o++] = tab[(v >> 12) & 63];
    out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
    out[o++] = '=';
  }
  return o;
}

static bool is_space_byte(char c)
{
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
         c == '\v';
}

void emd_codec_hash_email(const char *addr, size_t len, uint8_t out[32])
{
  char low[256];
  size_t i, b = 0, e = len, n;
  SHA256_CTX c;

  while (b < e && is_space_byte(addr[b]))
    b++;
  while (e > b && is_space_byte(addr[e - 1]))
    e--;
  SHA256_Init(&c);
  for (; b < e; b += n) {
    n = e - b < sizeof(low) ? e - b : sizeof(low);
    for (i = 0; i < n; i++)
      low[i] = (char)(addr[b + i] >= 'A' && addr[b + i] <= 'Z'
                        ? addr[b + i] + 32 : addr[b + i]);
    SHA256_Update(&c, low, n);
  }
  SHA256_Final(out, &c);
}

/* SPEC 2: an email that contains '@' is an address, stored as its hash. */
static bool email_is_address(const uint8_t *s, size_t n)
{
  return n > 0 && memchr(s, '@', n) != NULL;
}

/* ------------------------------------------------------------------ */
/* Field paths, as the client sees them: collection, event.context[0].type */

struct seg {
  const char *name;   /* proto field name, or the client's key */
  int len;            /* -1: name is a proto name, shown lowerCamelCase */
  long index;         /* >= 0: a list index; name unused */
};

struct path {
  int n;
  struct seg s[PATH_MAX_SEGS];
};

static void path_push(struct path *p, const char *name, int len, long index)
{
  if (p->n < PATH_MAX_SEGS) {
    p->s[p->n].name = name;
    p->s[p->n].len = len;
    p->s[p->n].index = index;
  }
  p->n++;
}

static void path_pop(struct path *p)
{
  p->n--;
}

static void put_camel(char *out, size_t cap, size_t *o, const char *name)
{
  bool up = false;

  for (; *name != '\0' && *o + 1 < cap; name++) {
    if (*name == '_') {
      up = true;
      continue;
    }
    out[(*o)++] = up && *name >= 'a' && *name <= 'z' ? *name - 32 : *name;
    up = false;
  }
}

static void path_format(const struct path *p, char *out, size_t cap)
{
  const struct seg *s;
  size_t o = 0, k;
  int i, n = p->n < PATH_MAX_SEGS ? p->n : PATH_MAX_SEGS;

  for (i = 0; i < n; i++) {
    s = &p->s[i];
    if (s->index >= 0) {
      o += (size_t)snprintf(out + o, cap - o, "[%ld]", s->index);
      if (o >= cap)
        o = cap - 1;
      continue;
    }
    if (i > 0 && o + 1 < cap)
      out[o++] = '.';
    if (s->len < 0) {
      put_camel(out, cap, &o, s->name);
      continue;
    }
    for (k = 0; k < (size_t)s->len && o + 1 < cap; k++)
      out[o++] = s->name[k];
  }
  out[o] = '\0';
}

/* ------------------------------------------------------------------ */
/* Step 3: tokens -> protobuf-c structs */

struct dec {
  const char *js;
  size_t len;              /* of js */
  const struct jtok *t;
  char *pool;              /* where the next string goes: each string token
                            * is copied at most once, and its copy with a
                            * NUL fits in its quoted length, so one block
                            * of the line's length holds them all */
  struct emd_arena *arena;
  const struct emd_codec_opts *opts;
  char *msg;
  size_t msglen;
  /* The path of a failure is built on the way out, not kept up to date
   * on the way in: dec_fail() writes what went wrong, each frame that
   * returns the failure adds its own segment (dec_up(), innermost
   * first), and dec_finish() turns them around into msg. */
  bool failed;             /* dec_fail() ran: the path is being built */
  char what[192];
  struct path path;
};

static int dec_fail(struct dec *d, int rc, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static int dec_fail(struct dec *d, int rc, const char *fmt, ...)
{
  va_list ap;

  if (d->msg == NULL || d->msglen == 0)
    return rc;
  va_start(ap, fmt);
  vsnprintf(d->what, sizeof(d->what), fmt, ap);
  va_end(ap);
  d->failed = true;
  d->path.n = 0;
  return rc;
}

/* Returns rc, a failure passing out through the segment name (len -1: a
 * proto name; else the client's key) or list index (>= 0). */
static int dec_up(struct dec *d, int rc, const char *name, int len,
                  long index)
{
  if (d->failed)
    path_push(&d->path, name, len, index);
  return rc;
}

/* Writes "path: what" of a dec_fail() into msg; returns rc. */
static __attribute__((noinline)) int dec_finish(struct dec *d, int rc)
{
  char where[256];
  struct seg tmp;
  int i, n = d->path.n < PATH_MAX_SEGS ? d->path.n : PATH_MAX_SEGS;

  if (!d->failed)
    return rc;
  for (i = 0; i < n / 2; i++) {
    tmp = d->path.s[i];
    d->path.s[i] = d->path.s[n - 1 - i];
    d->path.s[n - 1 - i] = tmp;
  }
  path_format(&d->path, where, sizeof(where));
  snprintf(d->msg, d->msglen, "%s: %s", where, d->what);
  return rc;
}

/* How much of the client's text s[0..n) to quote in a message: at most
 * 64 bytes, cut at a character boundary so the message stays UTF-8. */
static int quote_len(const char *s, size_t n)
{
  if (n <= 64)
    return (int)n;
  n = 64;
  while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
    n--;
  return (int)n;
}

static int dec_nomem(struct dec *d)
{
  return fail(d->msg, d->msglen, -ENOMEM, "out of memory");
}

static const char *tok_ptr(const struct dec *d, int i)
{
  return d->js + d->t[i].start;
}

static size_t tok_len(const struct dec *d, int i)
{
  return (size_t)(d->t[i].end - d->t[i].start);
}

static bool tok_is(const struct dec *d, int i, char first)
{
  return d->t[i].type == J_PRIMITIVE && d->js[d->t[i].start] == first;
}

/* Whether key is name in lowerCamelCase (protobuf's ToJsonName: drop each
 * '_' and upper-case the letter after it); for a name without '_' that is
 * the name itself. */
static bool key_is_camel(const char *key, size_t klen, const char *name)
{
  size_t i = 0;
  bool up = false;
  char c;

  for (; *name != '\0'; name++) {
    if (*name == '_') {
      up = true;
      continue;
    }
    c = up && *name >= 'a' && *name <= 'z' ? *name - 32 : *name;
    up = false;
    if (i == klen || key[i++] != c)
      return false;
  }
  return i == klen;
}

/* Whether key names the field called name, in either spelling. Both
 * spellings agree up to the name's first '_'. */
static bool field_is(const char *key, size_t klen, const char *name)
{
  size_t j = 0;

  while (j < klen && name[j] == key[j] && name[j] != '\0')
    j++;
  if (j == klen && name[j] == '\0')
    return true;
  return name[j] == '_' && key_is_camel(key, klen, name);
}

/* The field key names, or NULL. Clients mostly send fields in proto
 * order, so the search starts after the field found last (*hint). */
static const ProtobufCFieldDescriptor *
find_field(const ProtobufCMessageDescriptor *desc, const char *key,
           size_t klen, unsigned *hint)
{
  unsigned i, k, n = desc->n_fields;

  for (k = 0, i = *hint; k < n; k++, i++) {
    if (i >= n)
      i = 0;
    if (field_is(key, klen, desc->fields[i].name)) {
      *hint = i + 1;
      return &desc->fields[i];
    }
  }
  if (desc == &google__protobuf__any__descriptor && klen == 5 &&
      memcmp(key, "@type", 5) == 0)
    return protobuf_c_message_descriptor_get_field(desc, 1);
  return NULL;
}

/* The names a client may give each field of emitd's schema, so that a key
 * is found by its length and two 8-byte compares instead of a walk over
 * the field names in both spellings (find_field() stays for any message
 * without a table). Rows follow the fields in order (desc->fields is
 * sorted by number), each field's proto name first, then its
 * lowerCamelCase when that differs; sub is the table of a message field's
 * type. A test (field_names_resolve_in_both_spellings) checks every row
 * against the descriptors.
 *
 * The one pass finds a row by a hash instead: slot, after the rows, maps
 * jhash() of each name (below: its first 16 bytes as two little-endian
 * words, zero-padded, xored, times JHASH_MUL, top 5 bits) to its row + 1.
 * No two names of one table share a slot (JHASH_MUL was picked so); a new
 * name needs its slot added (or a new JHASH_MUL if that slot is taken),
 * and the same test fails until it is, as it decodes every name in one
 * pass. Before the hash it tries the row after the last one found (keys
 * mostly come in field order), then alt[] of that row's index: the row a
 * client that leaves the field out at its default usually sends instead
 * (a guess only; a wrong one costs one more compare). */
#define JNAME_MAX 16   /* longest name in a table; JMSG_ROWS rows at most */
#define JMSG_ROWS 16

struct jfield {
  char name[JNAME_MAX];      /* what the key must be, zero-padded */
  unsigned char len;         /* strlen(name), at least 1 */
  unsigned char field;       /* index into desc->fields */
  const struct jmsg *sub;    /* message fields: their type's table */
  char quoted[JNAME_MAX + 2];  /* for the one pass: name, '"', ':' ... */
  uint32_t quoted_bits;      /* ... its bytes as a movemask's bits (more
                              * than 16 for a name too long for that) */
  uint64_t bit;              /* 1 << field, for the fields seen (and 64
                              * bytes a row) */
};

struct jmsg {
  const ProtobufCMessageDescriptor *desc;
  const struct jfield *f;    /* n rows, then one no key matches in the
                              * one pass (fp_key_is()) */
  unsigned n;
  const unsigned char *lens; /* f[i].len for i < n, then zeros */
  unsigned char slot[32];    /* jhash() of a name -> its row + 1, or 0 */
  unsigned char alt[JMSG_ROWS + 1];  /* the one pass: when the key is not
                                      * row k, the row + 1 to try next
                                      * (0: none) */
};

#define JF_ROW(name, field, sub)                                            \
  { name, sizeof(name) - 1, field, sub, name "\":",                        \
    sizeof(name) + 1 <= 16 ? (1u << (sizeof(name) + 1)) - 1 : ~0u,         \
    (uint64_t)1 << (field) },
/* The row after the last: its quoted_bits has bits no movemask has. */
#define JF_END { "", 0, 0, NULL, "", ~0u, 0 }
#define JF_LEN(name, field, sub) sizeof(name) - 1,
#define JMSG(var, desc, ROWS, ...)                                          \
  static const struct jfield var##_rows[] = { ROWS(JF_ROW) JF_END };      \
  static const unsigned char var##_lens[JMSG_ROWS] = { ROWS(JF_LEN) };     \
  static const struct jmsg var = {                                         \
    &desc, var##_rows, sizeof(var##_rows) / sizeof(var##_rows[0]) - 1,     \
    var##_lens, __VA_ARGS__ }

#define ROWS_VERSION(X)                                                     \
  X("major", 0, NULL) X("minor", 1, NULL) X("micro", 2, NULL)               \
  X("build", 3, NULL) X("rc", 4, NULL) X("commit", 5, NULL)                 \
  X("tag", 6, NULL) X("spec", 7, NULL) X("release", 8, NULL)
JMSG(jm_version, buildless__telemetry__version_info__descriptor,
     ROWS_VERSION,
     { [9] = 3, [11] = 6, [12] = 8, [14] = 7, [16] = 5, [18] = 2, [19] = 1,
       [24] = 9, [31] = 4 },
     { [1] = 3 });
#define ROWS_TOOL(X) X("name", 0, NULL) X("version", 1, &jm_version)
JMSG(jm_tool, buildless__telemetry__tool_info__descriptor,
     ROWS_TOOL,
     { [15] = 2, [31] = 1 },
     { 0 });
#define ROWS_AGENT(X) X("name", 0, NULL) X("version", 1, &jm_version)
JMSG(jm_agent, buildless__telemetry__apiclient_info__descriptor,
     ROWS_AGENT,
     { [15] = 2, [31] = 1 },
     { 0 });
#define ROWS_OS(X)                                                          \
  X("name", 0, NULL) X("family", 1, NULL) X("arch", 2, NULL)                \
  X("version", 3, &jm_version)
JMSG(jm_os, buildless__telemetry__osinfo__descriptor,
     ROWS_OS,
     { [4] = 2, [9] = 3, [15] = 4, [31] = 1 },
     { 0 });
#define ROWS_CLIENT(X)                                                      \
  X("tool", 0, &jm_tool) X("os", 1, &jm_os) X("agent", 2, &jm_agent)
JMSG(jm_client, buildless__telemetry__client_detail__descriptor,
     ROWS_CLIENT,
     { [0] = 1, [4] = 3, [26] = 2 },
     { 0 });
#define ROWS_TENANT(X) X("oid", 0, NULL) X("name", 1, NULL)
JMSG(jm_tenant, buildless__telemetry__tenant_detail__descriptor,
     ROWS_TENANT,
     { [30] = 1, [31] = 2 },
     { 0 });
#define ROWS_USER(X)                                                        \
  X("uid", 0, NULL) X("email", 1, NULL) X("username", 2, NULL)
JMSG(jm_user, buildless__telemetry__user_detail__descriptor,
     ROWS_USER,
     { [0] = 2, [5] = 3, [8] = 1 },
     { 0 });
#define ROWS_REPO(X)                                                        \
  X("provider", 0, NULL) X("link", 1, NULL) X("name", 2, NULL)
JMSG(jm_repo, buildless__telemetry__repository_detail__descriptor,
     ROWS_REPO,
     { [6] = 1, [28] = 2, [31] = 3 },
     { 0 });
#define ROWS_DETAIL(X)                                                      \
  X("tenant", 0, &jm_tenant) X("user", 1, &jm_user)                         \
  X("repository", 2, &jm_repo) X("client", 3, &jm_client)
JMSG(jm_detail, buildless__telemetry__event_detail__descriptor,
     ROWS_DETAIL,
     { [3] = 2, [8] = 4, [11] = 3, [22] = 1 },
     { [0] = 4, [1] = 4, [2] = 4 });
#define ROWS_CONTEXT(X)                                                     \
  X("type", 0, NULL) X("resource", 1, NULL) X("action", 2, NULL)            \
  X("event", 3, NULL)
JMSG(jm_context, buildless__telemetry__event_context__descriptor,
     ROWS_CONTEXT,
     { [4] = 1, [9] = 4, [25] = 3, [26] = 2 },
     { [1] = 4, [2] = 4 });
#define ROWS_TIMING(X)                                                      \
  X("timehash", 0, NULL) X("occurred", 1, NULL) X("received", 2, NULL)      \
  X("ingested", 3, NULL)
JMSG(jm_timing, buildless__telemetry__event_timing__descriptor,
     ROWS_TIMING,
     { [8] = 4, [15] = 3, [18] = 1, [31] = 2 },
     { [0] = 2 });
#define ROWS_POINT(X) X("lat", 0, NULL) X("lon", 1, NULL)
JMSG(jm_point, buildless__telemetry__geo_point__descriptor,
     ROWS_POINT,
     { [19] = 2, [28] = 1 },
     { 0 });
#define ROWS_LOCATION(X)                                                    \
  X("source_ip", 0, NULL) X("sourceIp", 0, NULL) X("timezone", 1, NULL)     \
  X("point", 2, &jm_point) X("nielsen", 3, NULL) X("locality", 4, NULL)     \
  X("region", 5, NULL) X("country", 6, NULL) X("tag", 7, NULL)              \
  X("edge", 8, NULL)
JMSG(jm_location, buildless__telemetry__event_location__descriptor,
     ROWS_LOCATION,
     { [1] = 6, [8] = 7, [13] = 2, [14] = 9, [16] = 8, [17] = 5, [22] = 1,
       [26] = 10, [28] = 4, [30] = 3 },
     { [0] = 3, [3] = 8, [4] = 8 });
/* "@type" is the proto3 JSON name of Any's type URL too. */
#define ROWS_ANY(X)                                                         \
  X("type_url", 0, NULL) X("typeUrl", 0, NULL) X("@type", 0, NULL)          \
  X("value", 1, NULL)
JMSG(jm_any, google__protobuf__any__descriptor,
     ROWS_ANY,
     { [11] = 2, [22] = 1, [24] = 3, [27] = 4 },
     { [0] = 3, [1] = 4 });
#define ROWS_TEVENT(X)                                                      \
  X("scope", 0, NULL) X("id", 1, NULL) X("tenant", 2, NULL)                 \
  X("user", 3, NULL) X("context", 4, &jm_context)                           \
  X("detail", 5, &jm_detail) X("timing", 6, &jm_timing)                    \
  X("location", 7, &jm_location) X("timer", 8, NULL)                        \
  X("ordinal", 9, NULL) X("data", 10, &jm_any)
JMSG(jm_tevent, buildless__telemetry__telemetry_event__descriptor,
     ROWS_TEVENT,
     { [3] = 4, [7] = 1, [8] = 2, [9] = 6, [10] = 10, [11] = 8, [15] = 5,
       [19] = 11, [22] = 3, [23] = 7, [30] = 9 },
     { [0] = 2, [2] = 5, [3] = 5, [6] = 8 });
#define ROWS_EVENT(X)                                                       \
  X("collection", 0, NULL) X("fin", 1, NULL) X("index", 2, NULL)            \
  X("scope", 3, NULL) X("event", 4, &jm_tevent)
JMSG(jm_event, buildless__service__v1__event__descriptor,
     ROWS_EVENT,
     { [7] = 4, [9] = 5, [15] = 1, [17] = 3, [31] = 2 },
     { [1] = 5 });

/* Bytes [0, n) of the 8 at p as a word, the rest zero (n <= 8). */
static inline uint64_t word_prefix(const char *p, size_t n)
{
  uint64_t w;

  if (n == 0)
    return 0;
  memcpy(&w, p, 8);
  if (n == 8)
    return w;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  return w & (~(uint64_t)0 >> (64 - 8 * n));
#else
  return w & (~(uint64_t)0 << (64 - 8 * n));
#endif
}

/* The row of jm that key (klen bytes, end the end of its buffer) names,
 * or NULL. Clients mostly send fields in order, so the row after the one
 * found last (*hint) is tried first. */
static const struct jfield *find_row(const struct jmsg *jm, const char *key,
                                     size_t klen, const char *end,
                                     unsigned *hint)
{
  const uint64_t ones = 0x0101010101010101u, low7 = 0x7f7f7f7f7f7f7f7fu;
  const struct jfield *r;
  uint64_t k0, k1, n0, n1, l, x, hit;
  char pad[JNAME_MAX];
  unsigned h, i;

  (void)i;
  if (klen == 0 || klen > JNAME_MAX)
    return NULL;
  if ((size_t)(end - key) < JNAME_MAX) {   /* near the end: copy it */
    memset(pad, 0, sizeof(pad));
    memcpy(pad, key, klen);
    key = pad;
  }
  k0 = word_prefix(key, klen < 8 ? klen : 8);
  k1 = word_prefix(key + 8, klen > 8 ? klen - 8 : 0);
  if (*hint < jm->n) {
    r = &jm->f[*hint];
    memcpy(&n0, r->name, 8);
    memcpy(&n1, r->name + 8, 8);
    if (r->len == klen && n0 == k0 && n1 == k1)
      goto found;
  }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  /* Rows whose length is klen: a byte of lens ^ klen that is zero. */
  for (h = 0; h < JMSG_ROWS; h += 8) {
    memcpy(&l, jm->lens + h, 8);
    x = l ^ (ones * klen);
    hit = ~(((x & low7) + low7) | x | low7);   /* 0x80 where x is 0 */
    for (; hit != 0; hit &= hit - 1) {
      r = &jm->f[h + (unsigned)__builtin_ctzll(hit) / 8];
      memcpy(&n0, r->name, 8);
      memcpy(&n1, r->name + 8, 8);
      if (n0 == k0 && n1 == k1)
        goto found;
    }
  }
#else
  (void)ones, (void)low7, (void)l, (void)x, (void)hit, (void)h;
  for (i = 0; i < jm->n; i++) {
    r = &jm->f[i];
    memcpy(&n0, r->name, 8);
    memcpy(&n1, r->name + 8, 8);
    if (r->len == klen && n0 == k0 && n1 == k1)
      goto found;
  }
#endif
  return NULL;

found:
  *hint = (unsigned)(r - jm->f) + 1;
  return r;
}

#define JHASH_MUL 0xb8378d8291cbe387u

/* The slot of a name in struct jmsg, from its first 16 bytes as two
 * little-endian words, zero-padded; no two names of a table share one. */
static inline unsigned jhash(uint64_t k0, uint64_t k1)
{
  return (unsigned)(((k0 ^ k1) * JHASH_MUL) >> 59);
}

/* The row of jm that key names, or NULL: key has klen bytes and no NUL,
 * and 16 bytes can be read at it. One hash and two word compares. */
static inline const struct jfield *fp_find(const struct jmsg *jm,
                                           const char *key, size_t klen)
{
  static const uint64_t mask[9] = {
    0, 0xff, 0xffff, 0xffffff, 0xffffffff, 0xffffffffffu, 0xffffffffffffu,
    0xffffffffffffffu, 0xffffffffffffffffu };
  const struct jfield *r;
  uint64_t k0, k1, n0, n1;
  unsigned s;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (klen - 1 >= JNAME_MAX)   /* also 0 */
    return NULL;
  memcpy(&k0, key, 8);
  memcpy(&k1, key + 8, 8);
  k0 &= mask[klen < 8 ? klen : 8];
  k1 &= mask[klen > 8 ? klen - 8 : 0];
  s = jm->slot[jhash(k0, k1)];
  if (s == 0)
    return NULL;
  r = &jm->f[s - 1];
  memcpy(&n0, r->name, 8);
  memcpy(&n1, r->name + 8, 8);
  return n0 == k0 && n1 == k1 ? r : NULL;
#else
  unsigned hint = 0;

  (void)mask, (void)r, (void)k0, (void)k1, (void)n0, (void)n1, (void)s;
  return find_row(jm, key, klen, key + JNAME_MAX, &hint);
#endif
}

/* The text of key token i, unescaped into buf when it has escapes (a key
 * too long for buf cannot name a field and is left as it is). */
static void key_text(const struct dec *d, int i, char *buf, size_t cap,
                     const char **key, size_t *klen)
{
  *key = tok_ptr(d, i);
  *klen = tok_len(d, i);
  if (d->t[i].esc && *klen <= cap) {
    *klen = unescape(*key, *klen, buf);
    *key = buf;
  }
}

/* memcpy(dst, src, n), inline for the short strings most fields hold:
 * two overlapping word copies that stay inside both ranges. */
static inline void copy_short(char *dst, const char *src, size_t n)
{
  uint64_t a, b;
  uint32_t x, y;

  if (n >= 8 && n <= 16) {
    memcpy(&a, src, 8);
    memcpy(&b, src + n - 8, 8);
    memcpy(dst, &a, 8);
    memcpy(dst + n - 8, &b, 8);
  } else if (n >= 4 && n < 8) {
    memcpy(&x, src, 4);
    memcpy(&y, src + n - 4, 4);
    memcpy(dst, &x, 4);
    memcpy(dst + n - 4, &y, 4);
  } else if (n < 4) {
    for (size_t k = 0; k < n; k++)
      dst[k] = src[k];
  } else {
    memcpy(dst, src, n);
  }
}

/* String token i, unescaped into the arena with a NUL added; U+0000 is
 * refused. */
static int dec_string(struct dec *d, int i, char **out, size_t *outlen)
{
  const char *s = tok_ptr(d, i);
  size_t n = tok_len(d, i);
  char *p = d->pool;

  if (!d->t[i].esc) {
    copy_short(p, s, n);
  } else {
    /* Raw control characters are bad_json, so only an escape can make
     * a NUL, which a protobuf-c string cannot hold. */
    n = unescape(s, n, p);
    if (memchr(p, '\0', n) != NULL)
      return dec_fail(d, EMD_EINVALID, "contains U+0000");
  }
  p[n] = '\0';
  d->pool += n + 1;
  *out = p;
  *outlen = n;
  return 0;
}

/* The text of a primitive or string token, unescaped if need be (into the
 * arena): a number given either way, or an enum name. */
static inline int dec_numtext(struct dec *d, int i, const char **s,
                              size_t *n)
{
  char *p = NULL;
  int rc;

  if (d->t[i].type != J_STRING || !d->t[i].esc) {
    *s = tok_ptr(d, i);
    *n = tok_len(d, i);
    return 0;
  }
  rc = dec_string(d, i, &p, n);
  *s = p;
  return rc;
}

/* The value of s[0..n) when it is at most 19 digits without a leading
 * zero (or just "0"), the form nearly every integer comes in: a JSON
 * number for sure, and one that fits. Else false. */
static bool plain_uint(const char *s, size_t n, uint64_t *out)
{
  uint64_t v = 0;
  size_t k;

  if (n == 0 || n > 19 || (s[0] == '0' && n > 1))
    return false;
  for (k = 0; k < n; k++) {
    if (!is_digit(s[k]))
      return false;
    v = v * 10 + (uint64_t)(s[k] - '0');
  }
  *out = v;
  return true;
}

static int dec_uint(struct dec *d, int i, uint64_t max, const char *type,
                    uint64_t *out)
{
  const char *s;
  size_t n;
  bool neg;
  int rc;

  if (d->t[i].type != J_STRING &&
      (d->t[i].type != J_PRIMITIVE || tok_is(d, i, 't') ||
       tok_is(d, i, 'f')))
    return dec_fail(d, EMD_EINVALID, "expected an integer");
  rc = dec_numtext(d, i, &s, &n);
  if (rc != 0)
    return rc;
  if (plain_uint(s, n, out)) {
    if (*out > max)
      goto range;
    return 0;
  }
  /* The lexer checked a number token; a string may hold anything. */
  if (d->t[i].type == J_STRING && !is_number(s, n))
    return dec_fail(d, EMD_EINVALID, "expected an integer");
  switch (num_int(s, n, &neg, out)) {
  case NUM_FRAC:
    return dec_fail(d, EMD_EINVALID, "not an integer");
  case NUM_RANGE:
    goto range;
  default:
    break;
  }
  if (neg && *out != 0)
    return dec_fail(d, EMD_EINVALID, "must not be negative");
  if (*out > max)
    goto range;
  return 0;

range:
  return dec_fail(d, EMD_EINVALID, "out of range for %s", type);
}

/* Clinger's fast path for the number s[0..n) in JSON grammar: when its
 * digits make an integer m <= 2^53 and its decimal exponent e is within
 * 22 of 0, m and 10^|e| are exact doubles and one IEEE multiplication or
 * division rounds correctly, to what strtod returns (52.52 is 5252 /
 * 100). Needs arithmetic in double precision (FLT_EVAL_METHOD 0, as on
 * x86-64 and arm64); false means use strtod. */
static bool fast_double(const char *s, size_t n, double *out)
{
  static const double p10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
  };
  uint64_t m = 0;
  size_t i = 0, nd = 0;
  long e = 0, x = 0;
  bool neg = s[0] == '-', xneg = false;
  double v;

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
  return false;
#endif
  i = neg;
  for (; i < n && is_digit(s[i]); i++, nd++)
    m = m * 10 + (uint64_t)(s[i] - '0');
  if (i < n && s[i] == '.')
    for (i++; i < n && is_digit(s[i]); i++, nd++, e--)
      m = m * 10 + (uint64_t)(s[i] - '0');
  /* 19 digits cannot wrap; leading zeros count, which only means the
   * rare 0.000...-style number takes strtod. */
  if (nd > 19 || m > (uint64_t)1 << 53)
    return false;
  if (i < n) {   /* the exponent: [eE][+-]?[0-9]+ (the lexer checked) */
    i++;
    if (s[i] == '+' || s[i] == '-')
      xneg = s[i++] == '-';
    for (; i < n; i++) {
      x = x * 10 + (s[i] - '0');
      if (x > 1000)
        return false;
    }
    e += xneg ? -x : x;
  }
  if (e < -22 || e > 22)
    return false;
  v = (double)m;
  v = e < 0 ? v / p10[-e] : v * p10[e];
  *out = neg ? -v : v;
  return true;
}

static int dec_double(struct dec *d, int i, double *out)
{
  char buf[64], *z = buf;
  const char *s;
  size_t n;
  int rc;

  if (d->t[i].type != J_STRING &&
      (d->t[i].type != J_PRIMITIVE || tok_is(d, i, 't') ||
       tok_is(d, i, 'f')))
    return dec_fail(d, EMD_EINVALID, "expected a number");
  rc = dec_numtext(d, i, &s, &n);
  if (rc != 0)
    return rc;
  if (n == 3 && memcmp(s, "NaN", 3) == 0) {
    *out = NAN;
    return 0;
  }
  if ((n == 8 && memcmp(s, "Infinity", 8) == 0) ||
      (n == 9 && memcmp(s, "-Infinity", 9) == 0)) {
    *out = s[0] == '-' ? -INFINITY : INFINITY;
    return 0;
  }
  if (!is_number(s, n))
    return dec_fail(d, EMD_EINVALID, "expected a number");
  if (fast_double(s, n, out))
    return 0;
  if (n >= sizeof(buf)) {
    z = emd_arena_alloc(d->arena, n + 1);
    if (z == NULL)
      return dec_nomem(d);
  }
  memcpy(z, s, n);
  z[n] = '\0';
  /* strtod reads the C locale's '.'; emitd never calls setlocale. */
  *out = strtod(z, NULL);
  return 0;
}

/* Whether the NUL-terminated name is s[0..n), which holds no NUL (as
 * dec_string() makes sure): name ends where s does, without a strlen. */
static bool name_is(const char *name, const char *s, size_t n)
{
  size_t k;

  for (k = 0; k < n; k++)
    if (name[k] != s[k])   /* also stops at name's NUL */
      return false;
  return name[n] == '\0';
}

static int dec_enum(struct dec *d, int i, const ProtobufCEnumDescriptor *ed,
                    int *out)
{
  const char *s;
  size_t n;
  uint64_t v;
  unsigned k;
  bool neg;
  int rc;

  if (d->t[i].type != J_STRING &&
      (d->t[i].type != J_PRIMITIVE || tok_is(d, i, 't') ||
       tok_is(d, i, 'f')))
    return dec_fail(d, EMD_EINVALID, "expected an enum name or number");
  rc = dec_numtext(d, i, &s, &n);   /* the name, when a string */
  if (rc != 0)
    return rc;
  if (d->t[i].type == J_STRING) {
    for (k = 0; k < ed->n_value_names; k++)
      if (name_is(ed->values_by_name[k].name, s, n)) {
        *out = ed->values[ed->values_by_name[k].index].value;
        return 0;
      }
    return dec_fail(d, EMD_EINVALID, "unknown %s name: \"%.*s\"",
                    ed->short_name, quote_len(s, n), s);
  }
  if (num_int(s, n, &neg, &v) != NUM_OK ||
      v > (neg ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX))
    return dec_fail(d, EMD_EINVALID, "not an enum number: %.*s",
                    quote_len(s, n), s);
  *out = neg ? (int)-(int64_t)v : (int)v;
  return 0;
}

static int dec_bytes(struct dec *d, int i, const ProtobufCFieldDescriptor *f,
                     ProtobufCBinaryData *out)
{
  const ProtobufCFieldDescriptor *email;
  char *s;
  size_t n;
  long got;
  int rc;

  if (d->t[i].type != J_STRING)
    return dec_fail(d, EMD_EINVALID, "expected a base64 string");
  rc = dec_string(d, i, &s, &n);
  if (rc != 0)
    return rc;
  email = protobuf_c_message_descriptor_get_field(
    &buildless__telemetry__user_detail__descriptor, 2);
  if (f == email && !d->opts->upstream &&
      email_is_address((const uint8_t *)s, n)) {
    out->data = emd_arena_alloc(d->arena, SHA256_DIGEST_LENGTH);
    if (out->data == NULL)
      return dec_nomem(d);
    emd_codec_hash_email(s, n, out->data);
    out->len = SHA256_DIGEST_LENGTH;
    return 0;
  }
  if (n == 0)
    return 0;
  /* Decoding in place is safe: output never overtakes input. */
  got = b64_decode(s, n, (uint8_t *)s);
  if (got < 0)
    return dec_fail(d, EMD_EINVALID, "not valid base64");
  out->data = (uint8_t *)s;
  out->len = (size_t)got;
  return 0;
}

/* One non-null value of a singular or repeated scalar field into dst. */
static int dec_scalar(struct dec *d, int i, const ProtobufCFieldDescriptor *f,
                      void *dst)
{
  uint64_t v;
  size_t n;
  char *s;
  int rc;

  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    if (d->t[i].type != J_STRING)
      return dec_fail(d, EMD_EINVALID, "expected a string");
    rc = dec_string(d, i, &s, &n);
    *(char **)dst = s;
    return rc;
  case PROTOBUF_C_TYPE_BYTES:
    return dec_bytes(d, i, f, dst);
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    rc = dec_uint(d, i, UINT32_MAX, "uint32", &v);
    *(uint32_t *)dst = (uint32_t)v;
    return rc;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    rc = dec_uint(d, i, UINT64_MAX, "uint64", &v);
    *(uint64_t *)dst = v;
    return rc;
  case PROTOBUF_C_TYPE_DOUBLE:
    return dec_double(d, i, dst);
  case PROTOBUF_C_TYPE_BOOL:
    if (!tok_is(d, i, 't') && !tok_is(d, i, 'f'))
      return dec_fail(d, EMD_EINVALID, "expected true or false");
    *(protobuf_c_boolean *)dst = tok_is(d, i, 't');
    return 0;
  case PROTOBUF_C_TYPE_ENUM:
    return dec_enum(d, i, f->descriptor, dst);
  default:
    /* Signed and float types: no field of emitd's schema has them. */
    return dec_fail(d, EMD_EINTERNAL, "field type %d not supported",
                    (int)f->type);
  }
}

static int dec_object(struct dec *d, int i,
                      const ProtobufCMessageDescriptor *desc,
                      const struct jmsg *jm, void *m, int *next);

/* A fresh message of type desc (names in jm, or NULL) from object token i
 * into *out. */
static int dec_message(struct dec *d, int i,
                       const ProtobufCMessageDescriptor *desc,
                       const struct jmsg *jm, void **out, int *next)
{
  void *m;

  if (d->t[i].type != J_OBJECT)
    return dec_fail(d, EMD_EINVALID, "expected an object");
  m = emd_arena_alloc(d->arena, desc->sizeof_message);
  if (m == NULL)
    return dec_nomem(d);
  protobuf_c_message_init(desc, m);
  *out = m;
  return dec_object(d, i, desc, jm, m, next);
}

static size_t scalar_size(ProtobufCType type)
{
  switch (type) {
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
  case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE: return 8;
  case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
  default: return 4;
  }
}

static int dec_repeated(struct dec *d, int i, const ProtobufCFieldDescriptor *f,
                        const struct jmsg *sub, void *m, int *next)
{
  int n, k, j = i + 1, rc;
  size_t sz = scalar_size(f->type);
  char *items;

  if (d->t[i].type != J_ARRAY)
    return dec_fail(d, EMD_EINVALID, "expected an array");
  n = d->t[i].size;
  items = emd_arena_calloc(d->arena, (size_t)n * sz);
  if (items == NULL)
    return dec_nomem(d);
  for (k = 0; k < n; k++) {
    if (d->t[j].type == J_NULL) {
      rc = dec_fail(d, EMD_EINVALID, "null is not allowed in a list");
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      rc = dec_message(d, j, f->descriptor, sub, (void **)(items + k * sz),
                       &j);
    } else {
      rc = dec_scalar(d, j, f, items + k * sz);
      j++;
    }
    if (rc != 0)
      return dec_up(d, rc, NULL, 0, k);
  }
  *(size_t *)((char *)m + f->quantifier_offset) = (size_t)n;
  *(void **)((char *)m + f->offset) = items;
  *next = j;
  return 0;
}

static int dec_field(struct dec *d, int i, const ProtobufCFieldDescriptor *f,
                     const struct jmsg *sub, void *m, int *next)
{
  void *member = (char *)m + f->offset;

  if (d->t[i].type == J_NULL) {   /* null: the field keeps its default */
    *next = i + 1;
    return 0;
  }
  if (f->label == PROTOBUF_C_LABEL_REPEATED)
    return dec_repeated(d, i, f, sub, m, next);
  if (f->type == PROTOBUF_C_TYPE_MESSAGE)
    return dec_message(d, i, f->descriptor, sub, member, next);
  *next = i + 1;
  /* Most fields are strings: no need for dec_scalar's whole switch. */
  if (f->type == PROTOBUF_C_TYPE_STRING && d->t[i].type == J_STRING) {
    size_t n;

    return dec_string(d, i, (char **)member, &n);
  }
  return dec_scalar(d, i, f, member);
}

/* The members of object token i into message m of type desc, whose
 * field names are in jm (or NULL: found from desc). */
static int dec_object(struct dec *d, int i,
                      const ProtobufCMessageDescriptor *desc,
                      const struct jmsg *jm, void *m, int *next)
{
  const ProtobufCFieldDescriptor *f;
  const struct jfield *row;
  const struct jmsg *sub = NULL;
  int j = i + 1, rc, end = d->t[i].next;
  uint64_t seen = 0, bit;
  unsigned hint = 0, fi;
  const char *key;
  size_t klen;
  char kbuf[64];

  if (jm != NULL && jm->desc != desc)   /* a table out of step: ignore it */
    jm = NULL;
  while (j < end) {   /* j: a key, its value at j + 1 */
    key_text(d, j, kbuf, sizeof(kbuf), &key, &klen);
    if (jm != NULL) {
      row = find_row(jm, key, klen,
                     key == kbuf ? kbuf + sizeof(kbuf) : d->js + d->len,
                     &hint);
      f = row != NULL ? &desc->fields[row->field] : NULL;
      sub = row != NULL ? row->sub : NULL;
      fi = row != NULL ? row->field : 0;
    } else {
      f = find_field(desc, key, klen, &hint);
      fi = f != NULL ? (unsigned)(f - desc->fields) : 0;
    }
    if (f == NULL) {
      if (!d->opts->ignore_unknown)
        return dec_up(d, dec_fail(d, EMD_EINVALID, "unknown field"),
                      tok_ptr(d, j),
                      quote_len(tok_ptr(d, j), tok_len(d, j)), -1);
      j = d->t[j + 1].next;
      continue;
    }
    /* Every message of the schema has fewer than 64 fields. */
    bit = (uint64_t)1 << (fi & 63);
    if (seen & bit)
      rc = dec_fail(d, EMD_EINVALID, "duplicate field");
    else
      rc = dec_field(d, j + 1, f, sub, m, &j);
    if (rc != 0)
      return dec_up(d, rc, f->name, -1, -1);
    seen |= bit;
  }
  *next = j;
  return 0;
}

/* ------------------------------------------------------------------ */
/* The one-pass decode: lexer and walk fused, for lines as clients send
 * them. It reads the line once, straight into the structs, and gives a
 * verdict only for a line it fully accepts; at the first thing it does
 * not take (any error, and a few rare valid forms: escaped keys, numbers
 * other than plain digits, strings for doubles, ...) it gives up, and
 * the two passes above decode the line again from scratch, so that every
 * error is reported as they report it and in their order. What it
 * accepts, the two passes accept too, as the same event: it uses the same
 * checks (lex_string, number_end, the name tables, fast_double/strtod,
 * b64_decode), and a test runs every line of the unit tests both ways.
 *
 * It works on a copy of the line in the arena with a NUL after it and
 * FP_PAD bytes of zeros: a string's closing quote becomes its NUL (no
 * copy per string; escapes are undone in place), the NUL stops every scan
 * so none needs the length, and 16-byte loads stay inside the block. */

#define FP_PAD 16
#define FP_ROOM_MAX 1024  /* most room for messages taken at once */
#define FP_ITEMS 16       /* items of a list; more go the exact way */
#define FP_DEPTH 8        /* objects open at once; the schema nests 6 */
#define FP_SKIP_DEPTH 64  /* levels in a skipped unknown value; the
                           * schema adds fewer than 10, well below
                           * JSON_MAX_DEPTH */

struct fp {
  char *buf;                          /* the copy */
  size_t len;                         /* of the line */
  struct emd_arena *arena;
  const struct emd_codec_opts *opts;
  char *room;                         /* where the next message goes */
  size_t left;                        /* ... bytes left there */
};

static inline char *fp_ws(char *p)
{
  if ((unsigned char)*p > ' ')
    return p;
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
    p++;
  return p;
}

/* The first byte from p on that is '"', '\\', a control character (the
 * NUL after the line is one) or non-ASCII. */
static inline char *fp_plain(char *p)
{
  unsigned k;

#ifdef __SSE2__
  __m128i x, m;

  for (;; p += 16) {
    x = _mm_loadu_si128((const __m128i *)(const void *)p);
    m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                                  _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))),
                     _mm_cmplt_epi8(x, _mm_set1_epi8(0x20)));
    if ((k = (unsigned)_mm_movemask_epi8(m)) != 0)
      return p + __builtin_ctz(k);
  }
#else
  for (;; p += 8)
    if ((k = special8((const unsigned char *)p)) < 8)
      return p + k;
#endif
}

/* The string whose opening quote is at p[-1], checked as lex() checks
 * it: returns the byte after its closing quote, or NULL. Leaves the
 * string as it is. */
static char *fp_skip_string(struct fp *f, char *p)
{
  char *e = fp_plain(p);
  size_t end;
  bool esc = false;

  if (*e == '"')
    return e + 1;
  if (lex_string(f->buf, f->len, (size_t)(e - f->buf), &end, &esc) != NULL)
    return NULL;
  return f->buf + end + 1;
}

/* fp_string() for a string with escapes, UTF-8 or a problem at e. */
static __attribute__((noinline)) char *fp_string_rest(struct fp *f, char *p,
                                                      char *e, char **out,
                                                      size_t *outlen)
{
  size_t end, n;
  bool esc = false;

  if (lex_string(f->buf, f->len, (size_t)(e - f->buf), &end, &esc) != NULL)
    return NULL;
  e = f->buf + end;
  n = (size_t)(e - p);
  if (esc) {
    n = unescape(p, n, p);
    if (memchr(p, '\0', n) != NULL)
      return NULL;
  }
  p[n] = '\0';
  *out = p;
  *outlen = n;
  return e + 1;
}

/* The string whose opening quote is at p[-1], unescaped in place and
 * ended with a NUL (U+0000 is refused, as dec_string() does): *out and
 * *outlen are set, and the byte after the closing quote is returned, or
 * NULL. */
static inline char *fp_string(struct fp *f, char *p, char **out,
                              size_t *outlen)
{
  char *e = fp_plain(p);

  if (__builtin_expect(*e != '"', 0))
    return fp_string_rest(f, p, e, out, outlen);
  *e = '\0';
  *out = p;
  *outlen = (size_t)(e - p);
  return e + 1;
}

/* Any JSON value at p, checked and passed over (an unknown field's, with
 * ignore_unknown): the byte after it, or NULL. */
static char *fp_skip(struct fp *f, char *p, int depth)
{
  char close;
  size_t e;

  switch (*p) {
  case '"':
    return fp_skip_string(f, p + 1);
  case '{':
  case '[':
    if (depth == FP_SKIP_DEPTH)
      return NULL;
    close = *p == '{' ? '}' : ']';
    p = fp_ws(p + 1);
    if (*p == close)
      return p + 1;
    for (;;) {
      if (close == '}') {
        if (*p != '"' || (p = fp_skip_string(f, p + 1)) == NULL)
          return NULL;
        p = fp_ws(p);
        if (*p != ':')
          return NULL;
        p = fp_ws(p + 1);
      }
      if ((p = fp_skip(f, p, depth + 1)) == NULL)
        return NULL;
      p = fp_ws(p);
      if (*p == close)
        return p + 1;
      if (*p != ',')
        return NULL;
      p = fp_ws(p + 1);
    }
  case 't':
    return memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
  case 'f':
    return memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
  case 'n':
    return memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
  default:
    e = number_end(f->buf, f->len, (size_t)(p - f->buf));
    return f->buf + e != p ? f->buf + e : NULL;
  }
}

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* For the one pass's integers, 8 bytes of text at a time: w is them read
 * as a little-endian word. How many of its first bytes are ASCII digits,
 * 0 to 8. (A byte that is not one can carry into the bytes after it in
 * the add, never into those before it.) */
static inline unsigned digits8_run(uint64_t w)
{
  uint64_t x = w ^ 0x3030303030303030u;   /* a digit: 0 to 9 */
  uint64_t m = (x | (x + 0x0606060606060606u)) & 0xf0f0f0f0f0f0f0f0u;

  return m == 0 ? 8 : (unsigned)__builtin_ctzll(m) / 8;
}

/* The number the first n (1 to 8) bytes of w spell, all digits: moved to
 * the top of the word (zeros before them are leading zeros), then
 * pairs, fours and eights of digits combined in three multiplies. */
static inline uint64_t digits8_value(uint64_t w, unsigned n)
{
  uint64_t x = (w ^ 0x3030303030303030u) << (64 - 8 * n);

  x = (x * 10 + (x >> 8)) & 0x00ff00ff00ff00ffu;
  x = (x * 100 + (x >> 16)) & 0x0000ffff0000ffffu;
  return (x * 10000 + (x >> 32)) & 0xffffffffu;
}
#endif

/* The digits from s on, as fp_uint() reads them (its value wraps past
 * 20 digits; more than 19 are refused anyway): *e gets the byte after
 * them. 8 at a time for integers given as strings, which are mostly
 * times in ms (13 digits); the line's copy has FP_PAD zeros after it,
 * so 8 bytes can be read at any byte of it up to its NUL. */
static __attribute__((noinline)) uint64_t fp_digits(char *s, char **e)
{
  uint64_t v = 0;
  unsigned d;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  static const uint64_t p10[9] = { 1, 10, 100, 1000, 10000, 100000,
                                   1000000, 10000000, 100000000 };
  uint64_t w;
  unsigned k;

  do {
    memcpy(&w, s, 8);
    if ((k = digits8_run(w)) == 0)
      break;
    v = v * p10[k] + digits8_value(w, k);
    s += k;
  } while (k == 8);
#else
  for (;; s++) {
    d = (unsigned)(unsigned char)*s - '0';
    if (d > 9)
      break;
    v = v * 10 + d;
  }
#endif
  (void)d;
  *e = s;
  return v;
}

/* An integer at p given as at most 19 plain digits, bare or quoted (what
 * plain_uint() takes), and at most max: the byte after it, or NULL. A
 * bare number that goes on ('.', 'e') is left to the caller's check of
 * what follows a value. */
static inline char *fp_uint(char *p, uint64_t max, uint64_t *out)
{
  bool quoted = *p == '"';
  char *s = p + quoted, *e = s;
  uint64_t v = 0;
  unsigned d;
  size_t n;

  if (quoted)
    v = fp_digits(s, &e);
  else
    for (;; e++) {
      d = (unsigned)(unsigned char)*e - '0';
      if (d > 9)
        break;
      v = v * 10 + d;
    }
  n = (size_t)(e - s);
  if (n == 0 || n > 19 || (s[0] == '0' && n > 1) || v > max)
    return NULL;
  if (quoted && *e++ != '"')
    return NULL;
  *out = v;
  return e;
}

/* A bare JSON number at p, read as dec_double() reads it. */
static char *fp_double(struct fp *f, char *p, double *out)
{
  size_t i = (size_t)(p - f->buf), e;
  char z[64];

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
  /* The usual form, [-]digits[.digits], read in the same pass and worked
   * out as fast_double() does. */
  static const double p10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
  };
  char *s = p + (*p == '-');
  unsigned nd = 0, nf = 0;
  uint64_t m = 0;
  double v;

  if (is_digit(*s) && (*s != '0' || !is_digit(s[1]))) {
    for (; is_digit(*s); s++, nd++)
      m = m * 10 + (uint64_t)(*s - '0');
    if (*s == '.' && is_digit(s[1]))
      for (s++; is_digit(*s); s++, nd++, nf++)
        m = m * 10 + (uint64_t)(*s - '0');
    if (*s != 'e' && *s != 'E' && *s != '.' && nd <= 19 &&
        m <= (uint64_t)1 << 53 && nf <= 22) {
      v = (double)m;
      v = v / p10[nf];
      *out = *p == '-' ? -v : v;
      return s;
    }
  }
#endif
  e = number_end(f->buf, f->len, i);
  if (e == i)
    return NULL;
  if (!fast_double(p, e - i, out)) {
    if (e - i >= sizeof(z))
      return NULL;
    memcpy(z, p, e - i);
    z[e - i] = '\0';
    *out = strtod(z, NULL);
  }
  return f->buf + e;
}

/* A string at p for a bytes field, as dec_bytes() reads it. */
static char *fp_bytes(struct fp *f, const ProtobufCFieldDescriptor *fd,
                      char *p, ProtobufCBinaryData *out)
{
  char *s;
  size_t n;
  long got;

  if (*p != '"' || (p = fp_string(f, p + 1, &s, &n)) == NULL)
    return NULL;
  if (fd == protobuf_c_message_descriptor_get_field(
               &buildless__telemetry__user_detail__descriptor, 2) &&
      !f->opts->upstream && email_is_address((const uint8_t *)s, n)) {
    out->data = emd_arena_alloc(f->arena, SHA256_DIGEST_LENGTH);
    if (out->data == NULL)
      return NULL;
    emd_codec_hash_email(s, n, out->data);
    out->len = SHA256_DIGEST_LENGTH;
    return p;
  }
  if (n == 0)
    return p;
  got = b64_decode(s, n, (uint8_t *)s);
  if (got < 0)
    return NULL;
  out->data = (uint8_t *)s;
  out->len = (size_t)got;
  return p;
}

/* An enum at p: a name, or a number in plain digits. */
static char *fp_enum(struct fp *f, const ProtobufCEnumDescriptor *ed,
                     char *p, int *out)
{
  uint64_t v;
  unsigned k;
  size_t n;
  char *s;

  if (*p != '"') {
    if ((p = fp_uint(p, INT32_MAX, &v)) != NULL)
      *out = (int)v;
    return p;
  }
  if ((p = fp_string(f, p + 1, &s, &n)) == NULL)
    return NULL;
  for (k = 0; k < ed->n_value_names; k++)
    if (name_is(ed->values_by_name[k].name, s, n)) {
      *out = ed->values[ed->values_by_name[k].index].value;
      return p;
    }
  return NULL;
}

/* n bytes for messages and lists: from the room taken with the copy of
 * the line while it lasts (emd_arena_alloc() is a call each time). */
static inline void *fp_alloc(struct fp *f, size_t n)
{
  void *m = f->room;

  n = (n + 7) & ~(size_t)7;   /* no message needs more alignment */
  if (__builtin_expect(n > f->left, 0))
    return emd_arena_alloc(f->arena, n);
  f->room += n;
  f->left -= n;
  return m;
}

static inline void *fp_new(struct fp *f,
                           const ProtobufCMessageDescriptor *desc)
{
  void *m = fp_alloc(f, desc->sizeof_message);

  if (m != NULL)   /* what protobuf_c_message_init() calls */
    desc->message_init(m);
  return m;
}

/* The value at p of field fd of message m, null or not a message nor a
 * list (fp_objects() reads those): the byte after it, or NULL. */
static char *fp_field(struct fp *f, const ProtobufCFieldDescriptor *fd,
                      void *m, char *p)
{
  void *member = (char *)m + fd->offset;
  uint64_t v;
  size_t n;

  if (*p == 'n')   /* null: the default */
    return memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
  if (fd->label == PROTOBUF_C_LABEL_REPEATED)
    return NULL;
  switch (fd->type) {
  case PROTOBUF_C_TYPE_STRING:
    return *p == '"' ? fp_string(f, p + 1, member, &n) : NULL;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    if ((p = fp_uint(p, UINT32_MAX, &v)) != NULL)
      *(uint32_t *)member = (uint32_t)v;
    return p;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return fp_uint(p, UINT64_MAX, member);
  case PROTOBUF_C_TYPE_DOUBLE:
    return fp_double(f, p, member);
  case PROTOBUF_C_TYPE_BOOL:
    if (memcmp(p, "true", 4) == 0) {
      *(protobuf_c_boolean *)member = 1;
      return p + 4;
    }
    if (memcmp(p, "false", 5) == 0) {
      *(protobuf_c_boolean *)member = 0;
      return p + 5;
    }
    return NULL;
  case PROTOBUF_C_TYPE_ENUM:
    return fp_enum(f, fd->descriptor, p, member);
  case PROTOBUF_C_TYPE_BYTES:
    return fp_bytes(f, fd, p, member);
  default:
    return NULL;
  }
}

/* Whether the key whose opening quote is at key[-1] is r's name, with
 * the ':' right after it: one compare of 16 bytes. */
static inline bool fp_key_is(const struct jfield *r, const char *key)
{
#ifdef __SSE2__
  __m128i x = _mm_loadu_si128((const __m128i *)(const void *)key);
  __m128i q = _mm_loadu_si128((const __m128i *)(const void *)r->quoted);

  return ((unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, q)) &
          r->quoted_bits) == r->quoted_bits;
#else
  return r->quoted_bits <= 0xffff &&
         memcmp(key, r->quoted, r->len + 2u) == 0;
#endif
}

/* The key whose opening quote is at key[-1]: returns its closing quote,
 * with *row the row of jm it names (NULL: none), or NULL when the key
 * has escapes, UTF-8 or worse (the exact way takes those). */
static inline __attribute__((always_inline)) char *
fp_key(const struct jmsg *jm, char *key, const struct jfield **row)
{
#if defined(__SSE2__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  /* 16 bytes of ones, then 16 of zeros: at 16 - k, a mask of k bytes. */
  static const unsigned char first[32] = {
    255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255 };
  __m128i x = _mm_loadu_si128((const __m128i *)(const void *)key), h;
  unsigned bits, k, s;
  const struct jfield *r;
  char *e;

  /* Only the first '"' is looked for: a key that matches a name, length
   * and all (a NUL must not pass for the padding), has none of the other
   * bytes a key must be checked for; one that does not is checked in full
   * below. */
  bits = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')));
  if (__builtin_expect(bits == 0, 0))   /* 16 bytes or more */
    goto unknown;
  k = (unsigned)__builtin_ctz(bits);
  /* The key's bytes, the rest zero: jhash() of its two words. */
  x = _mm_and_si128(x, _mm_loadu_si128(
                         (const __m128i *)(const void *)(first + 16 - k)));
  h = _mm_xor_si128(x, _mm_unpackhi_epi64(x, x));
  s = jm->slot[jhash((uint64_t)_mm_cvtsi128_si64(h), 0)];
  if (s != 0) {
    r = &jm->f[s - 1];
    if (r->len == k &&
        _mm_movemask_epi8(_mm_cmpeq_epi8(
          x, _mm_loadu_si128((const __m128i *)(const void *)r->name))) ==
          0xffff) {
      *row = r;
      return key + k;
    }
  }
unknown:
  *row = NULL;
  e = fp_plain(key);
  if (*e != '"')
    return NULL;
  if (e - key == JNAME_MAX)   /* none yet, but fp_find() takes them */
    *row = fp_find(jm, key, JNAME_MAX);
  return e;
#else
  char *e = fp_plain(key);

  if (*e != '"')
    return NULL;
  *row = fp_find(jm, key, (size_t)(e - key));
  return e;
#endif
}

/* An object of the one pass that has another open inside it. */
struct fp_open {
  const struct jmsg *jm;     /* its table ... */
  void *m;                   /* ... message ... */
  uint64_t seen;             /* ... fields seen, by index ... */
  const struct jfield *next; /* ... and row likely named next */
  const ProtobufCFieldDescriptor *list;  /* the list being read, whose
                                          * item the inner object is, or
                                          * NULL */
  const struct jmsg *sub;    /* the items' table */
  size_t n;                  /* items so far */
  void *items[FP_ITEMS];
};

/* The object whose '{' is at p[-1], and every object inside it, into
 * message m, whose names are in jm: the byte after its '}', or NULL.
 * *seen gets the fields seen, by index. Objects inside objects are a
 * stack here, not calls: a call and its register saves cost more than
 * most members do. Blanks are skipped where a byte is not what it
 * nearly always is. */
static char *fp_objects(struct fp *f, const struct jmsg *jm, void *m,
                        char *p, uint64_t *seen_out)
{
  struct fp_open open[FP_DEPTH], *top = open;   /* top: the parent */
  /* In locals: the stores below could alias the tables, as far as the
   * compiler knows. */
  const ProtobufCFieldDescriptor *fd, *fields;
  const struct jfield *row, *next;
  uint64_t seen, bit;
  char *key, c;
  void **copy;
  unsigned k;

  top--;   /* no parent yet */
start:   /* p just past the '{' of an object of jm into m */
  fields = jm->desc->fields;
  next = jm->f;
  seen = 0;
  if (*p != '"') {
    p = fp_ws(p);
    if (*p == '}')
      goto close;
    if (*p != '"')
      return NULL;
  }
member:   /* p at a key's opening quote */
  key = p + 1;
  if (fp_key_is(next, key)) {   /* next: the likely row (or the end) */
    row = next;
    p = key + row->len + 2;
  } else if ((k = jm->alt[next - jm->f]) != 0 &&
             fp_key_is(&jm->f[k - 1], key)) {   /* a field skipped */
    row = &jm->f[k - 1];
    p = key + row->len + 2;
  } else {
    p = fp_key(jm, key, &row);
    if (p == NULL)
      return NULL;
    if (*++p != ':') {
      p = fp_ws(p);
      if (*p != ':')
        return NULL;
    }
    p++;
  }
  if ((unsigned char)*p <= ' ')
    p = fp_ws(p);
  if (row == NULL) {
    /* Unknown. At the top, "event" would have made the line an
     * envelope. */
    if (!f->opts->ignore_unknown || memcmp(key, "event\"", 6) == 0)
      return NULL;
    p = fp_skip(f, p, 0);
    goto after;
  }
  /* Clients mostly send fields in order: the next row is the likely
   * next key (after a name with a second spelling, a miss: those fields
   * are rare). */
  next = row + 1;
  bit = row->bit;
  if (seen & bit)
    return NULL;
  seen |= bit;
  fd = &fields[row->field];
  if (fd->type == PROTOBUF_C_TYPE_STRING && *p == '"' &&
      fd->label != PROTOBUF_C_LABEL_REPEATED) {
    char **out = (char **)((char *)m + fd->offset), *e = fp_plain(++p);

    if (__builtin_expect(*e == '"', 1)) {   /* fp_string(), inline */
      *e = '\0';
      *out = p;
      p = e + 1;
    } else {
      size_t n;

      p = fp_string_rest(f, p, e, out, &n);
    }
    goto after;
  }
  if (fd->type != PROTOBUF_C_TYPE_MESSAGE || *p == 'n') {
    p = fp_field(f, fd, m, p);
    goto after;
  }
  /* A message or a list of them: this object waits on the stack. */
  if (row->sub == NULL || top == open + FP_DEPTH - 1)
    return NULL;
  top++;
  top->jm = jm;
  top->m = m;
  top->seen = seen;
  top->next = next;
  top->list = NULL;
  jm = row->sub;
  if (fd->label != PROTOBUF_C_LABEL_REPEATED) {
    if (*p != '{' || (m = fp_new(f, jm->desc)) == NULL)
      return NULL;
    *(void **)((char *)top->m + fd->offset) = m;
    p++;
    goto start;
  }
  if (*p != '[')
    return NULL;
  top->list = fd;
  top->sub = jm;
  top->n = 0;
  p = fp_ws(p + 1);
  if (*p == ']')
    goto list_end;
item:   /* p at an item of top's list */
  if (*p != '{' || top->n == FP_ITEMS ||
      (m = fp_new(f, top->sub->desc)) == NULL)
    return NULL;
  top->items[top->n++] = m;
  jm = top->sub;
  p++;
  goto start;

after:   /* just past a member's value, or NULL */
  if (p == NULL)
    return NULL;
  c = *p;
  if (c != ',' && c != '}') {
    p = fp_ws(p);
    c = *p;
  }
  if (c == ',') {
    if (*++p != '"') {
      p = fp_ws(p);
      if (*p != '"')
        return NULL;
    }
    goto member;
  }
  if (c != '}')
    return NULL;
close:   /* p at the '}' of the object of jm */
  p++;
  if (top < open) {
    *seen_out = seen;
    return p;
  }
  if (top->list != NULL) {   /* an item: the next, or the list's end */
    p = fp_ws(p);
    if (*p == ',') {
      p = fp_ws(p + 1);
      goto item;
    }
    if (*p != ']')
      return NULL;
list_end:   /* p at the ']' of top's list */
    copy = fp_alloc(f, top->n * sizeof(*copy));
    if (copy == NULL)
      return NULL;
    memcpy(copy, top->items, top->n * sizeof(*copy));
    *(size_t *)((char *)top->m + top->list->quantifier_offset) = top->n;
    *(void ***)((char *)top->m + top->list->offset) = copy;
    p++;
  }
  jm = top->jm;
  m = top->m;
  seen = top->seen;
  next = top->next;
  fields = jm->desc->fields;
  top--;
  goto after;
}

/* Decodes the line in one pass into *out (the client rules not applied),
 * or returns 1: no verdict, decode it the exact way. */
static int json_onepass(const char *line, size_t len,
                        const struct emd_codec_opts *opts,
                        struct emd_arena *arena, emd_event **out)
{
  struct fp f = { NULL, len, arena, opts, NULL, 0 };
  const struct jfield *row;
  emd_event *ev;
  uint64_t seen;
  char *p, *k;

  /* One block: the event (the arena aligns it for any type), room for
   * the other messages (twice the line's length holds those of a usual
   * event, a little less than they need in a short one; the block grows
   * with the line only up to FP_ROOM_MAX), then the copy. */
  f.left = len < FP_ROOM_MAX / 2 ? 2 * len : FP_ROOM_MAX;
  ev = emd_arena_alloc(arena, sizeof(*ev) + f.left + len + FP_PAD);
  if (ev == NULL)
    return 1;
  f.room = (char *)(ev + 1);
  f.buf = f.room + f.left;
  memcpy(f.buf, line, len);
  memset(f.buf + len, 0, FP_PAD);
  buildless__service__v1__event__init(ev);
  p = fp_ws(f.buf);
  if (*p != '{')
    return 1;
  /* An envelope when it has an "event" member. Its first key tells
   * which it is likely to be; an envelope without "event" or a bare
   * event with one is left to the exact way. */
  k = fp_ws(p + 1);
  if (*k == '"' && (fp_key_is(jm_event.f, k + 1) ||   /* "collection" */
                    (fp_key(&jm_event, k + 1, &row) != NULL && row != NULL))) {
    p = fp_objects(&f, &jm_event, ev, p + 1, &seen);
    if (p == NULL || !(seen & (uint64_t)1 << 4))   /* "event" */
      return 1;
  } else {
    ev->event = fp_new(&f, &buildless__telemetry__telemetry_event__descriptor);
    if (ev->event == NULL ||
        (p = fp_objects(&f, &jm_tevent, ev->event, p + 1, &seen)) == NULL)
      return 1;
  }
  if (fp_ws(p) != f.buf + len)
    return 1;
  *out = ev;
  return 0;
}

/* Whether the top-level object has an "event" member (an envelope). */
static bool has_event_member(const struct dec *d)
{
  int j = 1;
  const char *key;
  size_t klen;
  char kbuf[64];

  while (j < d->t[0].next) {
    key_text(d, j, kbuf, sizeof(kbuf), &key, &klen);
    if (klen == 5 && memcmp(key, "event", 5) == 0)
      return true;
    j = d->t[j + 1].next;
  }
  return false;
}

/* ------------------------------------------------------------------ */
/* Whole-tree checks for messages not made by dec_*: UTF-8 of every
 * string, and unknown fields (protobuf-c keeps them for re-packing). */

struct tree {
  bool unknown;       /* unknown fields are an error */
  bool drop;          /* ... or are dropped */
  char *msg;
  size_t msglen;
  struct path path;
};

static int tree_fail(struct tree *c, const char *what)
{
  char where[256];

  path_format(&c->path, where, sizeof(where));
  return fail(c->msg, c->msglen, EMD_EINVALID, "%s%s%s", where,
              where[0] != '\0' ? ": " : "", what);
}

static int tree_check(struct tree *c, ProtobufCMessage *m);

static int tree_value(struct tree *c, const ProtobufCFieldDescriptor *f,
                      void *v)
{
  const char *s;

  if (f->type == PROTOBUF_C_TYPE_MESSAGE)
    return *(void **)v == NULL ? 0 : tree_check(c, *(void **)v);
  if (f->type != PROTOBUF_C_TYPE_STRING)
    return 0;
  s = *(char **)v;
  if (s != NULL && !emd_utf8_valid(s, strlen(s)))
    return tree_fail(c, "not valid UTF-8");
  return 0;
}

static int tree_check(struct tree *c, ProtobufCMessage *m)
{
  const ProtobufCMessageDescriptor *desc = m->descriptor;
  const ProtobufCFieldDescriptor *f;
  char what[48];
  size_t k, n, sz;
  unsigned i;
  int rc;

  if (m->n_unknown_fields > 0 && c->unknown) {
    snprintf(what, sizeof(what), "unknown field %u",
             (unsigned)m->unknown_fields[0].tag);
    return tree_fail(c, what);
  }
  if (c->drop)
    m->n_unknown_fields = 0;
  for (i = 0; i < desc->n_fields; i++) {
    f = &desc->fields[i];
    path_push(&c->path, f->name, -1, -1);
    if (f->label != PROTOBUF_C_LABEL_REPEATED) {
      rc = tree_value(c, f, (char *)m + f->offset);
    } else {
      n = *(size_t *)((char *)m + f->quantifier_offset);
      sz = scalar_size(f->type);
      for (k = 0, rc = 0; k < n && rc == 0; k++) {
        path_push(&c->path, NULL, 0, (long)k);
        rc = tree_value(c, f, *(char **)((char *)m + f->offset) + k * sz);
        path_pop(&c->path);
      }
    }
    if (rc != 0)
      return rc;
    path_pop(&c->path);
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* The client rules of SPEC 1.1, hand-coded (no regex engine). Patterns
 * follow RE2 semantics, as protoc-gen-validate applies them: '.' is one
 * code point other than '\n', '$' is the very end. */

typedef Buildless__Telemetry__EventContext ctx_t;
typedef Buildless__Telemetry__EventDetail detail_t;
typedef Buildless__Telemetry__EventTiming timing_t;
typedef Buildless__Telemetry__EventLocation location_t;

/* The rules after the one pass: its strings are all in the line's copy,
 * which has FP_PAD zeros after the line, so 16 bytes can be read at any
 * byte of a string up to its NUL (struct rules' padded). There the runs
 * of characters below are scanned 16 bytes at a time. */
#define RUN_ALPHA 0u   /* [a-zA-Z] */
#define RUN_ALNUM 1u   /* [a-zA-Z0-9] */
#define RUN_TYPE 2u    /* [a-zA-Z.0-9] */

#ifdef __SSE2__
/* The bytes of x in the class (RUN_*), as a movemask's bits. */
static inline unsigned run_class16(__m128i x, unsigned cls)
{
  __m128i l = _mm_or_si128(x, _mm_set1_epi8(0x20)), m;

  /* Bytes from 0x80 on are negative: in no range. */
  m = _mm_and_si128(_mm_cmpgt_epi8(l, _mm_set1_epi8('a' - 1)),
                    _mm_cmplt_epi8(l, _mm_set1_epi8('z' + 1)));
  if (cls != RUN_ALPHA)
    m = _mm_or_si128(m, _mm_and_si128(
                          _mm_cmpgt_epi8(x, _mm_set1_epi8('0' - 1)),
                          _mm_cmplt_epi8(x, _mm_set1_epi8('9' + 1))));
  if (cls == RUN_TYPE)
    m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('.')));
  return (unsigned)_mm_movemask_epi8(m);
}
#endif

/* How many bytes from s on are in the class (RUN_*), counted only up
 * to the first past max: any count above max may be returned once it
 * is passed. s must be a string that can be read 16 bytes past its NUL
 * (a NUL is in no class, so no load starts past it). */
static inline __attribute__((always_inline)) size_t
run_padded(const char *s, size_t max, unsigned cls)
{
  size_t n = 0;

#ifdef __SSE2__
  unsigned m;

  for (;;) {
    m = run_class16(_mm_loadu_si128((const __m128i *)(const void *)(s + n)),
                    cls) ^ 0xffffu;
    if (m != 0)
      return n + (unsigned)__builtin_ctz(m);
    n += 16;
    if (n > max)
      return n;
  }
#else
  (void)max;
  while (cls == RUN_ALPHA ? is_alpha(s[n])
         : is_alnum(s[n]) || (cls == RUN_TYPE && s[n] == '.'))
    n++;
  return n;
#endif
}

/* strnlen(s, max) for a string that can be read 16 bytes past its NUL. */
static inline size_t strnlen_padded(const char *s, size_t max)
{
#ifdef __SSE2__
  size_t n = 0;
  unsigned m;

  for (;;) {
    m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
          _mm_loadu_si128((const __m128i *)(const void *)(s + n)),
          _mm_setzero_si128()));
    if (m != 0)
      n += (unsigned)__builtin_ctz(m);
    else
      n += 16;
    if (m != 0 || n >= max)
      return n < max ? n : max;
  }
#else
  return strnlen(s, max);
#endif
}

/* ^[a-zA-Z]{3,32}$ */
static bool match_collection(const char *s, bool padded)
{
  size_t n = 0;

  if (padded)
    n = run_padded(s, 32, RUN_ALPHA);
  else
    while (is_alpha(s[n]))
      n++;
  return n >= 3 && n <= 32 && s[n] == '\0';
}

/* ^[a-zA-Z0-9]{12,64}$ */
static bool match_id(const char *s, bool padded)
{
  size_t n = 0;

  if (padded)
    return (n = run_padded(s, 64, RUN_ALNUM)) >= 12 && n <= 64 &&
           s[n] == '\0';
  /* Four at a time: the NUL is not alnum, so && stops there. */
  while (is_alnum(s[n]) && is_alnum(s[n + 1]) && is_alnum(s[n + 2]) &&
         is_alnum(s[n + 3]))
    n += 4;
  while (is_alnum(s[n]))
    n++;
  return s[n] == '\0' && n >= 12 && n <= 64;
}

/* ^org_[a-zA-Z0-9]{3,32}$ */
static bool match_tenant(const char *s)
{
  size_t n = 0;

  if (strncmp(s, "org_", 4) != 0)
    return false;
  s += 4;
  while (is_alnum(s[n]))
    n++;
  return s[n] == '\0' && n >= 3 && n <= 32;
}

/* Regex '.': one code point other than '\n' at *s. */
static bool match_any(const char **s)
{
  size_t k;

  if (**s == '\0' || **s == '\n')
    return false;
  k = emd_utf8_seq((const unsigned char *)*s, strlen(*s));
  *s += k > 0 ? k : 1;
  return true;
}

/* ^type.googleapis.com/buildless.context.[a-zA-Z.0-9]*$ : the unescaped
 * dots match any character, as they do for the service. Returns the end
 * of a matching s (its NUL), or NULL. */
static const char *match_ctx_type(const char *s, bool padded)
{
  static const struct { const char *s; size_t n; } lit[] = {
    { "type", 4 }, { "googleapis", 10 }, { "com/buildless", 13 },
    { "context", 7 } };
  static const char usual[] = "type.googleapis.com/buildless.context.";
  size_t i;

#ifdef __SSE2__
  /* Padded: bytes 0-15, 16-31, then 22-37, each read only when the one
   * before matched (and so had no NUL). */
  if (padded &&
      (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
        _mm_loadu_si128((const __m128i *)(const void *)s),
        _mm_loadu_si128((const __m128i *)(const void *)usual))) == 0xffffu &&
      (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
        _mm_loadu_si128((const __m128i *)(const void *)(s + 16)),
        _mm_loadu_si128((const __m128i *)(const void *)(usual + 16)))) ==
        0xffffu &&
      (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
        _mm_loadu_si128((const __m128i *)(const void *)(s + 22)),
        _mm_loadu_si128((const __m128i *)(const void *)(usual + 22)))) ==
        0xffffu) {
    s += sizeof(usual) - 1;
    s += run_padded(s, SIZE_MAX, RUN_TYPE);
    return *s == '\0' ? s : NULL;
  }
#endif
  /* Nearly always the dots are dots: one compare instead of four. */
  if (strncmp(s, usual, sizeof(usual) - 1) == 0)
    s += sizeof(usual) - 1;
  else
    for (i = 0; i < 4; i++) {
      /* strncmp stops at a shorter s's NUL, so no overrun. */
      if (strncmp(s, lit[i].s, lit[i].n) != 0)
        return NULL;
      s += lit[i].n;
      if (!match_any(&s))
        return NULL;
    }
  while (is_alnum(*s) || *s == '.')
    s++;
  return *s == '\0' ? s : NULL;
}

/* ^[a-zA-Z]{3,12}::[a-zA-Z0-9]* : a prefix only. ':' is not a letter, so
 * the letters before "::" are the whole leading run. */
static bool match_resource(const char *s)
{
  size_t n = 0;

  while (is_alpha(s[n]))
    n++;
  return n >= 3 && n <= 12 && s[n] == ':' && s[n + 1] == ':';
}

/* ^[a-zA-Z][a-zA-Z0-9_-]{2,32} : a prefix only, so three characters
 * decide it. */
static bool match_tenant_name(const char *s)
{
  int i;

  if (!is_alpha(s[0]))
    return false;
  for (i = 1; i < 3; i++)
    if (!is_alnum(s[i]) && s[i] != '_' && s[i] != '-')
      return false;
  return true;
}

/* An absolute URI (RFC 3986): scheme ":" then only URI characters, '%'
 * followed by two hex digits, at most one '#'. */
static bool is_uri(const char *s)
{
  /* RFC 3986 unreserved, gen-delims and sub-delims: letters, digits,
   * "-._~" ":/?#[]@" "!$&'()*+,;=", as a bitmap over ASCII. */
  static const uint32_t uri_chars[4] = { 0, 0xafffffdau, 0xafffffffu,
                                         0x47fffffeu };
  size_t i = 0;
  unsigned char u;
  bool frag = false;

  if (!is_alpha(s[0]))
    return false;
  while (is_alnum(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.')
    i++;
  if (s[i++] != ':')
    return false;
  for (; s[i] != '\0'; i++) {
    if (s[i] == '%') {
      if (hex_val(s[i + 1]) < 0 || hex_val(s[i + 2]) < 0)
        return false;
      i += 2;
    } else if (s[i] == '#') {
      if (frag)
        return false;
      frag = true;
    } else {
      u = (unsigned char)s[i];
      if (u >= 128 || !(uri_chars[u >> 5] >> (u & 31) & 1))
        return false;
    }
  }
  return true;
}

static bool enum_defined(const ProtobufCEnumDescriptor *ed, int v)
{
  /* values is sorted by number; emitd's enums run 0, 1, 2, ... */
  if (v >= 0 && (unsigned)v < ed->n_values && ed->values[v].value == v)
    return true;
  return protobuf_c_enum_descriptor_get_value(ed, v) != NULL;
}

struct rules {
  char *msg;
  size_t msglen;
  bool padded;   /* strings from the one pass (see run_padded()) */
};

static int rule(struct rules *r, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static int rule(struct rules *r, const char *fmt, ...)
{
  va_list ap;
  int rc;

  va_start(ap, fmt);
  rc = vfail(r->msg, r->msglen, EMD_EINVALID, fmt, ap);
  va_end(ap);
  return rc;
}

/* Whether s has more than max code points; bytes bound them from above,
 * so most strings need no count. */
static inline __attribute__((always_inline)) bool
too_long(const struct rules *r, const char *s, size_t max)
{
  return s[0] != '\0' &&
         (r->padded ? strnlen_padded(s, max + 1) : strnlen(s, max + 1)) >
           max &&
         cp_len(s) > max;
}

#define CTX "event.context[%zu]."

static int rules_context(struct rules *r, const ctx_t *c, size_t i)
{
  const char *end;

  if (c->type[0] == '\0')
    return rule(r, CTX "type: required", i);
  if ((end = match_ctx_type(c->type, r->padded)) == NULL)
    return rule(r, CTX "type: does not match %s", i, PAT_CTX_TYPE);
  if (end - c->type > 64 && cp_len(c->type) > 64)   /* too_long() */
    return rule(r, CTX "type: longer than 64 characters", i);
  if (c->resource[0] != '\0' && !match_resource(c->resource))
    return rule(r, CTX "resource: does not match %s", i, PAT_RESOURCE);
  if (too_long(r, c->resource, 128))
    return rule(r, CTX "resource: longer than 128 characters", i);
  if (c->action[0] != '\0' && c->resource[0] == '\0')
    return rule(r, CTX "action: only allowed together with resource", i);
  if (too_long(r, c->action, 32))
    return rule(r, CTX "action: longer than 32 characters", i);
  if (c->event[0] == '\0')
    return rule(r, CTX "event: required", i);
  if (too_long(r, c->event, 64))
    return rule(r, CTX "event: longer than 64 characters", i);
  return 0;
}

#define DETAIL "event.detail."

static int rules_os(struct rules *r, const Buildless__Telemetry__OSInfo *os)
{
  if (os == NULL)
    return 0;
  if (!enum_defined(&buildless__telemetry__osfamily__descriptor,
                    (int)os->family))
    return rule(r, DETAIL "client.os.family: not a defined OSFamily: %d",
                (int)os->family);
  if (!enum_defined(&buildless__telemetry__processor_arch__descriptor,
                    (int)os->arch))
    return rule(r, DETAIL "client.os.arch: not a defined ProcessorArch: "
                "%d", (int)os->arch);
  return 0;
}

static int rules_detail(struct rules *r, const detail_t *d)
{
  const Buildless__Telemetry__RepositoryDetail *repo;
  const Buildless__Telemetry__UserDetail *u;

  if (d == NULL)
    return 0;
  if (d->tenant != NULL && d->tenant->name[0] != '\0') {
    if (!match_tenant_name(d->tenant->name))
      return rule(r, DETAIL "tenant.name: does not match %s",
                  PAT_TENANT_NAME);
    if (too_long(r, d->tenant->name, 32))
      return rule(r, DETAIL "tenant.name: longer than 32 characters");
  }
  if ((u = d->user) != NULL) {
    if (too_long(r, u->uid, 128))
      return rule(r, DETAIL "user.uid: longer than 128 characters");
    if (u->email.len != 0 && u->email.len != 32)
      return rule(r, DETAIL "user.email: neither an address nor 32 bytes "
                  "(a SHA-256)");
    if (too_long(r, u->username, 32))
      return rule(r, DETAIL "user.username: longer than 32 characters");
  }
  if ((repo = d->repository) != NULL) {
    if (!enum_defined(&buildless__telemetry__repository_provider__descriptor,
                      (int)repo->provider))
      return rule(r, DETAIL "repository.provider: not a defined "
                  "RepositoryProvider: %d", (int)repo->provider);
    if (repo->link[0] != '\0' && !is_uri(repo->link))
      return rule(r, DETAIL "repository.link: not a URI");
    if (too_long(r, repo->name, 32))
      return rule(r, DETAIL "repository.name: longer than 32 characters");
  }
  return d->client != NULL ? rules_os(r, d->client->os) : 0;
}

static int rules_timing(struct rules *r, const timing_t *t)
{
  if (t == NULL)
    return 0;
  if (t->timehash[0] != '\0')
    return rule(r, "event.timing.timehash: set by the service only");
  if (t->received != 0)
    return rule(r, "event.timing.received: set by the service only");
  if (t->ingested != 0)
    return rule(r, "event.timing.ingested: set by the service only");
  return 0;
}

static int rules_location(struct rules *r, const location_t *l)
{
  const Buildless__Telemetry__GeoPoint *pt;

  if (l == NULL)
    return 0;
  if (l->source_ip.len != 0)
    return rule(r, "event.location.sourceIp: set by the service only");
  if (l->nielsen[0] != '\0')
    return rule(r, "event.location.nielsen: set by the service only");
  if (l->tag[0] != '\0')
    return rule(r, "event.location.tag: set by the service only");
  pt = l->point;
  if (pt != NULL && !(isfinite(pt->lat) && fabs(pt->lat) <= 90))
    return rule(r, "event.location.point.lat: not a number from -90 to 90");
  if (pt != NULL && !(isfinite(pt->lon) && fabs(pt->lon) <= 180))
    return rule(r, "event.location.point.lon: not a number from -180 to "
                "180");
  return 0;
}

/* Every client rule, in field order; the first broken one is reported.
 * Strings must be valid UTF-8 already. */
static int rules_event(const emd_event *ev, char *msg, size_t msglen,
                       bool padded)
{
  struct rules r = { msg, msglen, padded };
  const emd_tevent *te = ev->event;
  size_t i;
  int rc;

  if (ev->collection[0] != '\0' && !match_collection(ev->collection, padded))
    return rule(&r, "collection: does not match %s", PAT_COLLECTION);
  if (te == NULL)
    return rule(&r, "event: required");
  if (te->scope[0] != '\0')
    return rule(&r, "event.scope: set by the service only");
  if (te->id[0] != '\0' && !match_id(te->id, padded))
    return rule(&r, "event.id: does not match %s", PAT_ID);
  if (te->tenant[0] != '\0' && !match_tenant(te->tenant))
    return rule(&r, "event.tenant: does not match %s", PAT_TENANT);
  if (too_long(&r, te->user, 128))
    return rule(&r, "event.user: longer than 128 characters");
  if (te->n_context == 0)
    return rule(&r, "event.context: required, 1 to %d items", CONTEXT_MAX);
  if (te->n_context > CONTEXT_MAX)
    return rule(&r, "event.context: more than %d items", CONTEXT_MAX);
  for (i = 0; i < te->n_context; i++)
    if ((rc = rules_context(&r, te->context[i], i)) != 0)
      return rc;
  if ((rc = rules_detail(&r, te->detail)) != 0 ||
      (rc = rules_timing(&r, te->timing)) != 0 ||
      (rc = rules_location(&r, te->location)) != 0)
    return rc;
  if (te->timer.len > EMD_TIMER_MAX)
    return rule(&r, "event.timer: longer than %d bytes", EMD_TIMER_MAX);
  if (te->data != NULL && strchr(te->data->type_url, '/') == NULL)
    return rule(&r, "event.data.typeUrl: does not contain a /");
  return 0;
}

int emd_codec_validate(const emd_event *ev, char *msg, size_t msglen)
{
  struct tree c = { .msg = msg, .msglen = msglen };
  int rc;

  rc = tree_check(&c, (ProtobufCMessage *)&ev->base);
  if (rc != 0)
    return rc;
  return rules_event(ev, msg, msglen, false);
}

/* ------------------------------------------------------------------ */
/* Decoding entry points */

static const struct emd_codec_opts no_opts;

/* The two passes: lex() checks the whole line, then the walk fills the
 * structs; into *out, the client rules not applied. */
static __attribute__((noinline)) int
json_exact(const char *line, size_t len, const struct emd_codec_opts *opts,
           struct emd_arena *arena, emd_event **out, char *msg,
           size_t msglen)
{
  struct jtok stack[STACK_TOKENS];
  struct dec d;
  struct lexer lx = { line, len, stack, 0, STACK_TOKENS, arena, msg,
                      msglen };
  struct jtok *t;
  emd_event *ev;
  int next, rc;

  rc = lex(&lx);
  if (rc != 0)
    return rc;
  t = lx.t;
  if (t[0].type != J_OBJECT)
    return fail(msg, msglen, EMD_EINVALID, "not a JSON object");
  /* Set field by field: the path array needs no zeroing. */
  d.js = line;
  d.len = len;
  d.t = t;
  d.arena = arena;
  d.opts = opts;
  d.msg = msg;
  d.msglen = msglen;
  d.failed = false;
  d.path.n = 0;
  d.pool = emd_arena_alloc(arena, len);
  ev = emd_arena_alloc(arena, sizeof(*ev));
  if (ev == NULL || d.pool == NULL)
    return dec_nomem(&d);
  buildless__service__v1__event__init(ev);
  if (has_event_member(&d)) {
    rc = dec_object(&d, 0, &buildless__service__v1__event__descriptor,
                    &jm_event, ev, &next);
  } else {
    rc = dec_message(&d, 0, &buildless__telemetry__telemetry_event__descriptor,
                     &jm_tevent, (void **)&ev->event, &next);
    rc = dec_up(&d, rc, "event", -1, -1);
  }
  if (rc != 0)
    return dec_finish(&d, rc);
  *out = ev;
  return 0;
}

static inline int decode_json(const char *line, size_t len,
                              const struct emd_codec_opts *opts,
                              struct emd_arena *arena, emd_event **out,
                              char *msg, size_t msglen,
                              enum emd__json_way way);

int emd_codec_decode_json(const char *line, size_t len,
                          const struct emd_codec_opts *opts,
                          struct emd_arena *arena, emd_event **out,
                          char *msg, size_t msglen)
{
  return decode_json(line, len, opts, arena, out, msg, msglen,
                     EMD__JSON_BOTH);
}

int emd__codec_decode_json_way(const char *line, size_t len,
                               const struct emd_codec_opts *opts,
                               struct emd_arena *arena, emd_event **out,
                               char *msg, size_t msglen,
                               enum emd__json_way way)
{
  return decode_json(line, len, opts, arena, out, msg, msglen, way);
}

static inline int decode_json(const char *line, size_t len,
                              const struct emd_codec_opts *opts,
                              struct emd_arena *arena, emd_event **out,
                              char *msg, size_t msglen,
                              enum emd__json_way way)
{
  emd_event *ev;
  bool padded = true;   /* the one pass's event */
  int rc;

  *out = NULL;
  /* Token offsets are ints. */
  if (len >= (size_t)1 << 30)
    return fail(msg, msglen, EMD_ETOOLARGE, "line too long");
  if (opts == NULL)
    opts = &no_opts;
  if (way == EMD__JSON_EXACT ||
      json_onepass(line, len, opts, arena, &ev) != 0) {
    if (way == EMD__JSON_ONEPASS)
      return EMD__JSON_NO_VERDICT;
    rc = json_exact(line, len, opts, arena, &ev, msg, msglen);
    if (rc != 0)
      return rc;
    padded = false;
  }
  if (!opts->upstream) {
    ev->fin = 0;
    rc = rules_event(ev, msg, msglen, padded);
    if (rc != 0)
      return rc;
  }
  *out = ev;
  return 0;
}

/* SPEC 2's email rule for a frame: bytes with an '@' that are not a
 * 32-byte hash already are an address, replaced by its hash. */
static int frame_email(emd_event *ev, struct emd_arena *arena)
{
  Buildless__Telemetry__UserDetail *u = NULL;
  uint8_t *h;

  if (ev->event != NULL && ev->event->detail != NULL)
    u = ev->event->detail->user;
  if (u == NULL || u->email.len == SHA256_DIGEST_LENGTH ||
      !email_is_address(u->email.data, u->email.len))
    return 0;
  h = emd_arena_alloc(arena, SHA256_DIGEST_LENGTH);
  if (h == NULL)
    return -ENOMEM;
  emd_codec_hash_email((const char *)u->email.data, u->email.len, h);
  u->email.data = h;
  u->email.len = SHA256_DIGEST_LENGTH;
  return 0;
}

/* emd_unpack() reads the frame as protobuf-c would (Event's tree is
 * proto3: no required fields to look for), and says whether it met an
 * unknown field or a string that is not UTF-8: only then can the tree
 * check find something (the first one in tree order, for the message),
 * so only then does it run. With ignore_unknown the unknown fields are
 * not kept in the first place. Out of memory reads as a bad frame, as it
 * did with protobuf-c's unpack. */
int emd_codec_decode_frame(const uint8_t *buf, size_t len,
                           const struct emd_codec_opts *opts,
                           struct emd_arena *arena, emd_event **out,
                           char *msg, size_t msglen)
{
  struct tree c;   /* set up only when needed: its path is 600 bytes */
  ProtobufCMessage *m;
  emd_event *ev;
  unsigned saw;
  int rc;

  *out = NULL;
  if (opts == NULL)
    opts = &no_opts;
  if (emd_unpack(&buildless__service__v1__event__descriptor, buf, len, arena,
                 EMD_UNPACK_NO_REQUIRED |
                 (opts->ignore_unknown ? EMD_UNPACK_DROP_UNKNOWN : 0), &m,
                 &saw) != 0)
    return fail(msg, msglen, EMD_EINVALID, "not a valid Event message");
  ev = (emd_event *)m;
  if ((saw & EMD_UNPACK_SAW_BAD_UTF8) ||
      (!opts->ignore_unknown && (saw & EMD_UNPACK_SAW_UNKNOWN))) {
    c = (struct tree){ .msg = msg, .msglen = msglen };
    c.unknown = !opts->ignore_unknown;
    c.drop = opts->ignore_unknown;
    rc = tree_check(&c, &ev->base);
    if (rc != 0)
      return rc;
  }
  if (!opts->upstream) {
    ev->fin = 0;
    if (frame_email(ev, arena) != 0)
      return fail(msg, msglen, -ENOMEM, "out of memory");
    rc = rules_event(ev, msg, msglen, false);
    if (rc != 0)
      return rc;
  }
  *out = ev;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Event -> proto3 JSON */

struct jw {
  struct emd_codec_buf *b;
  bool oom;
};

/* Room for n more bytes at the end of the buffer, or NULL. */
static char *jw_room(struct jw *w, size_t n)
{
  struct emd_codec_buf *b = w->b;
  size_t cap;
  char *p;

  if (w->oom)
    return NULL;
  if (b->cap - b->len < n) {
    cap = b->cap > 0 ? b->cap : 256;
    while (cap - b->len < n)
      cap *= 2;
    p = realloc(b->data, cap);
    if (p == NULL) {
      w->oom = true;
      return NULL;
    }
    b->data = p;
    b->cap = cap;
  }
  return b->data + b->len;
}

static void jw_put(struct jw *w, const char *s, size_t n)
{
  char *p = jw_room(w, n);

  if (p != NULL) {
    memcpy(p, s, n);
    w->b->len += n;
  }
}

static void jw_str(struct jw *w, const char *s)
{
  jw_put(w, s, strlen(s));
}

static void jw_quoted(struct jw *w, const char *s)
{
  static const char hex[] = "0123456789abcdef";
  const char *run = s;
  char esc[6] = { '\\', 'u', '0', '0', 0, 0 };
  char two[2] = { '\\', 0 };
  unsigned char c;

  jw_put(w, "\"", 1);
  for (; *s != '\0'; s++) {
    c = (unsigned char)*s;
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    jw_put(w, run, (size_t)(s - run));
    run = s + 1;
    two[1] = c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : (char)c;
    if (c == '"' || c == '\\' || c == '\n' || c == '\t' || c == '\r') {
      jw_put(w, two, 2);
    } else {
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      jw_put(w, esc, 6);
    }
  }
  jw_put(w, run, (size_t)(s - run));
  jw_put(w, "\"", 1);
}

static void jw_key(struct jw *w, bool *first, const char *name)
{
  char buf[64];
  size_t o = 0;

  if (!*first)
    jw_put(w, ",", 1);
  *first = false;
  buf[o++] = '"';
  put_camel(buf, sizeof(buf) - 2, &o, name);
  buf[o++] = '"';
  buf[o++] = ':';
  jw_put(w, buf, o);
}

static void jw_double(struct jw *w, double v)
{
  char buf[40];
  int prec;

  if (isnan(v)) {
    jw_str(w, "\"NaN\"");
    return;
  }
  if (isinf(v)) {
    jw_str(w, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    return;
  }
  /* The shortest of %.15g..%.17g that reads back as the same double. */
  for (prec = 15; prec < 17; prec++) {
    snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  if (prec == 17)
    snprintf(buf, sizeof(buf), "%.17g", v);
  jw_str(w, buf);
}

static void jw_bytes(struct jw *w, const ProtobufCBinaryData *b)
{
  char *p = jw_room(w, (b->len + 2) / 3 * 4 + 2);

  if (p == NULL)
    return;
  p[0] = '"';
  w->b->len += 1 + emd_codec_base64(b->data, b->len, p + 1);
  jw_put(w, "\"", 1);
}

static void jw_message(struct jw *w, const ProtobufCMessage *m);

/* v in decimal, quoted if asked (proto3 JSON quotes 64-bit integers). */
static void jw_uint(struct jw *w, uint64_t v, bool quote)
{
  char buf[24], *p = buf + sizeof(buf);

  if (quote)
    *--p = '"';
  do
    *--p = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  if (quote)
    *--p = '"';
  jw_put(w, p, (size_t)(buf + sizeof(buf) - p));
}

static void jw_value(struct jw *w, const ProtobufCFieldDescriptor *f,
                     const void *v)
{
  const ProtobufCEnumValue *ev;
  int e;

  switch (f->type) {
  case PROTOBUF_C_TYPE_MESSAGE:
    jw_message(w, *(const ProtobufCMessage *const *)v);
    return;
  case PROTOBUF_C_TYPE_STRING:
    jw_quoted(w, *(const char *const *)v);
    return;
  case PROTOBUF_C_TYPE_BYTES:
    jw_bytes(w, v);
    return;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    jw_uint(w, *(const uint64_t *)v, true);
    return;
  case PROTOBUF_C_TYPE_DOUBLE:
    jw_double(w, *(const double *)v);
    return;
  case PROTOBUF_C_TYPE_BOOL:
    jw_str(w, *(const protobuf_c_boolean *)v ? "true" : "false");
    return;
  case PROTOBUF_C_TYPE_ENUM:
    e = *(const int *)v;
    ev = protobuf_c_enum_descriptor_get_value(f->descriptor, e);
    if (ev != NULL) {
      jw_quoted(w, ev->name);
      return;
    }
    if (e < 0)
      jw_put(w, "-", 1);
    jw_uint(w, e < 0 ? 0 - (uint64_t)(int64_t)e : (uint64_t)e, false);
    return;
  default:   /* uint32, fixed32: the rest are not in the schema */
    jw_uint(w, *(const uint32_t *)v, false);
    return;
  }
}

/* Whether a singular field holds its default (and is left out). */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *v)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_MESSAGE: return *(void *const *)v == NULL;
  case PROTOBUF_C_TYPE_STRING:
    return *(const char *const *)v == NULL || **(const char *const *)v == 0;
  case PROTOBUF_C_TYPE_BYTES:
    return ((const ProtobufCBinaryData *)v)->len == 0;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    /* Bitwise, as protobuf-c packs it: -0.0 is kept. */
    return *(const uint64_t *)v == 0;
  case PROTOBUF_C_TYPE_BOOL: return *(const protobuf_c_boolean *)v == 0;
  default: return *(const uint32_t *)v == 0;
  }
}

static void jw_message(struct jw *w, const ProtobufCMessage *m)
{
  const ProtobufCMessageDescriptor *desc = m->descriptor;
  const ProtobufCFieldDescriptor *f;
  const char *v, *items;
  bool first = true;
  size_t k, n, sz;
  unsigned i;

  jw_put(w, "{", 1);
  for (i = 0; i < desc->n_fields; i++) {
    f = &desc->fields[i];
    v = (const char *)m + f->offset;
    if (f->label != PROTOBUF_C_LABEL_REPEATED) {
      if (is_default(f, v))
        continue;
      jw_key(w, &first, f->name);
      jw_value(w, f, v);
      continue;
    }
    n = *(const size_t *)((const char *)m + f->quantifier_offset);
    if (n == 0)
      continue;
    jw_key(w, &first, f->name);
    jw_put(w, "[", 1);
    items = *(const char *const *)v;
    sz = scalar_size(f->type);
    for (k = 0; k < n; k++) {
      if (k > 0)
        jw_put(w, ",", 1);
      jw_value(w, f, items + k * sz);
    }
    jw_put(w, "]", 1);
  }
  jw_put(w, "}", 1);
}

int emd_codec_event_to_json(const emd_event *ev, struct emd_codec_buf *out)
{
  struct jw w = { out, false };
  size_t len0 = out->len;

  jw_message(&w, &ev->base);
  if (w.oom) {
    out->len = len0;
    return -ENOMEM;
  }
  return 0;
}
