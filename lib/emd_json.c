/* emd_json.c: see emd_json.h. */
#include "emd_json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the buffer ---------------------------------------------------------- */

void emd_text_init(struct emd_text *t)
{
  memset(t, 0, sizeof(*t));
}

void emd_text_free(struct emd_text *t)
{
  if (t == NULL)
    return;
  free(t->data);
  memset(t, 0, sizeof(*t));
}

void emd_text_reset(struct emd_text *t)
{
  t->len = 0;
  t->err = 0;
  if (t->data != NULL)
    t->data[0] = '\0';
}

int emd_text_reserve(struct emd_text *t, size_t n)
{
  size_t cap;
  char *p;

  if (t->err != 0)
    return t->err;
  /* + 1 keeps room for the terminating NUL. */
  if (n > SIZE_MAX / 2 - t->len - 1) {
    t->err = -ENOMEM;
    return t->err;
  }
  if (t->len + n + 1 <= t->cap)
    return 0;
  cap = t->cap ? t->cap : 256;
  while (cap < t->len + n + 1)
    cap *= 2;
  p = realloc(t->data, cap);
  if (p == NULL) {
    t->err = -ENOMEM;
    return t->err;
  }
  t->data = p;
  t->cap = cap;
  return 0;
}

void emd_text_append(struct emd_text *t, const void *p, size_t n)
{
  if (emd_text_reserve(t, n) != 0)
    return;
  if (n > 0)
    memcpy(t->data + t->len, p, n);
  t->len += n;
  t->data[t->len] = '\0';
}

void emd_text_puts(struct emd_text *t, const char *s)
{
  emd_text_append(t, s, strlen(s));
}

void emd_text_putc(struct emd_text *t, char c)
{
  emd_text_append(t, &c, 1);
}

void emd_text_printf(struct emd_text *t, const char *fmt, ...)
{
  va_list ap;
  int n;

  if (t->err != 0)
    return;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    t->err = -EINVAL;
    return;
  }
  if (emd_text_reserve(t, (size_t)n) != 0)
    return;
  va_start(ap, fmt);
  vsnprintf(t->data + t->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

size_t emd__utf8_len(const unsigned char *p, size_t n)
{
  unsigned char c = p[0];
  size_t len, i;
  uint32_t cp;

  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;           /* a continuation byte, 0xc0/0xc1 or past 0xf4 */
  }
  if (n < len)
    return 0;
  for (i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF. */
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
      (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
    return 0;
  return len;
}

void emd_text_utf8(struct emd_text *t, const void *s, size_t n)
{
  const unsigned char *p = s;
  size_t i = 0, start = 0, k;

  while (i < n) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    k = emd__utf8_len(p + i, n - i);
    if (k > 0) {
      i += k;
      continue;
    }
    emd_text_append(t, p + start, i - start);
    emd_text_append(t, "\xef\xbf\xbd", 3);     /* U+FFFD */
    start = ++i;
  }
  emd_text_append(t, p + start, n - start);
}

void emd__fmt_double(char *buf, size_t len, double v)
{
  /* The shortest of %.15g .. %.17g that reads back exactly: 0.1 stays
   * "0.1" rather than "0.10000000000000001". */
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(buf, len, "%.*g", prec, v);
    if (strtod(buf, NULL) == v)
      return;
  }
}

/* ---- the writer ---------------------------------------------------------- */

void emd_json_init(struct emd_json *j)
{
  memset(j, 0, sizeof(*j));
}

void emd_json_free(struct emd_json *j)
{
  emd_text_free(&j->t);
  memset(j, 0, sizeof(*j));
}

void emd_json_reset(struct emd_json *j)
{
  struct emd_text t = j->t;

  emd_text_reset(&t);
  memset(j, 0, sizeof(*j));
  j->t = t;
}

static void fail(struct emd_json *j)
{
  if (j->t.err == 0)
    j->t.err = -EINVAL;
}

static bool in_object(const struct emd_json *j)
{
  return j->depth > 0 && (j->is_obj >> j->depth & 1);
}

/* Punctuation before a value: a comma between array items; nothing after
 * a key. A value inside an object without its key is misuse. */
static void before_value(struct emd_json *j)
{
  uint64_t bit = UINT64_C(1) << j->depth;

  if (j->want_value) {
    j->want_value = false;
    return;
  }
  if (in_object(j)) {
    fail(j);
    return;
  }
  if (j->depth == 0) {
    if (j->t.len > 0)
      fail(j);          /* a second top-level value */
    return;
  }
  if (j->has_item & bit)
    emd_text_putc(&j->t, ',');
  j->has_item |= bit;
}

static void begin(struct emd_json *j, char c, bool obj)
{
  uint64_t bit;

  before_value(j);
  if (j->depth + 1 > EMD_JSON_MAX_DEPTH) {
    fail(j);
    return;
  }
  j->depth++;
  bit = UINT64_C(1) << j->depth;
  j->has_item &= ~bit;
  if (obj)
    j->is_obj |= bit;
  else
    j->is_obj &= ~bit;
  emd_text_putc(&j->t, c);
}

static void end(struct emd_json *j, char c, bool obj)
{
  if (j->depth == 0 || in_object(j) != obj || j->want_value) {
    fail(j);
    return;
  }
  j->depth--;
  emd_text_putc(&j->t, c);
}

void emd_json_obj_begin(struct emd_json *j)
{
  begin(j, '{', true);
}

void emd_json_obj_end(struct emd_json *j)
{
  end(j, '}', true);
}

void emd_json_arr_begin(struct emd_json *j)
{
  begin(j, '[', false);
}

void emd_json_arr_end(struct emd_json *j)
{
  end(j, ']', false);
}

/* Appends s[0..n) as the body of a JSON string (no quotes). */
static void put_escaped(struct emd_text *t, const unsigned char *p, size_t n)
{
  static const char hex[] = "0123456789abcdef";
  size_t i = 0, start = 0, k;
  char esc[7];

  while (i < n) {
    unsigned char c = p[i];
    const char *rep = NULL;
    size_t rlen = 2;

    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
      i++;
      continue;
    }
    if (c >= 0x80) {
      k = emd__utf8_len(p + i, n - i);
      if (k > 0) {
        i += k;
        continue;
      }
      rep = "\xef\xbf\xbd";
      rlen = 3;
    } else if (c == '"') {
      rep = "\\\"";
    } else if (c == '\\') {
      rep = "\\\\";
    } else if (c == '\n') {
      rep = "\\n";
    } else if (c == '\r') {
      rep = "\\r";
    } else if (c == '\t') {
      rep = "\\t";
    } else if (c == '\b') {
      rep = "\\b";
    } else if (c == '\f') {
      rep = "\\f";
    } else {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      rep = esc;
      rlen = 6;
    }
    emd_text_append(t, p + start, i - start);
    emd_text_append(t, rep, rlen);
    start = ++i;
  }
  emd_text_append(t, p + start, n - start);
}

void emd_json_key(struct emd_json *j, const char *key)
{
  uint64_t bit = UINT64_C(1) << j->depth;

  if (!in_object(j) || j->want_value) {
    fail(j);
    return;
  }
  if (j->has_item & bit)
    emd_text_putc(&j->t, ',');
  j->has_item |= bit;
  emd_text_putc(&j->t, '"');
  put_escaped(&j->t, (const unsigned char *)key, strlen(key));
  emd_text_append(&j->t, "\":", 2);
  j->want_value = true;
}

void emd_json_strn(struct emd_json *j, const void *s, size_t n)
{
  before_value(j);
  emd_text_putc(&j->t, '"');
  put_escaped(&j->t, s, n);
  emd_text_putc(&j->t, '"');
}

void emd_json_str(struct emd_json *j, const char *s)
{
  if (s == NULL)
    emd_json_null(j);
  else
    emd_json_strn(j, s, strlen(s));
}

void emd_json_u64(struct emd_json *j, uint64_t v)
{
  before_value(j);
  emd_text_printf(&j->t, "%" PRIu64, v);
}

void emd_json_i64(struct emd_json *j, int64_t v)
{
  before_value(j);
  emd_text_printf(&j->t, "%" PRId64, v);
}

void emd_json_f64(struct emd_json *j, double v)
{
  char buf[40];

  if (!isfinite(v)) {
    emd_json_null(j);
    return;
  }
  before_value(j);
  emd__fmt_double(buf, sizeof(buf), v);
  emd_text_puts(&j->t, buf);
}

void emd_json_bool(struct emd_json *j, bool v)
{
  before_value(j);
  emd_text_puts(&j->t, v ? "true" : "false");
}

void emd_json_null(struct emd_json *j)
{
  before_value(j);
  emd_text_puts(&j->t, "null");
}

void emd_json_kstr(struct emd_json *j, const char *key, const char *s)
{
  emd_json_key(j, key);
  emd_json_str(j, s);
}

void emd_json_kstrn(struct emd_json *j, const char *key, const void *s,
                    size_t n)
{
  emd_json_key(j, key);
  emd_json_strn(j, s, n);
}

void emd_json_ku64(struct emd_json *j, const char *key, uint64_t v)
{
  emd_json_key(j, key);
  emd_json_u64(j, v);
}

void emd_json_ki64(struct emd_json *j, const char *key, int64_t v)
{
  emd_json_key(j, key);
  emd_json_i64(j, v);
}

void emd_json_kf64(struct emd_json *j, const char *key, double v)
{
  emd_json_key(j, key);
  emd_json_f64(j, v);
}

void emd_json_kbool(struct emd_json *j, const char *key, bool v)
{
  emd_json_key(j, key);
  emd_json_bool(j, v);
}

int emd_json_finish(const struct emd_json *j)
{
  if (j->t.err != 0)
    return j->t.err;
  if (j->depth != 0 || j->want_value || j->t.len == 0)
    return -EINVAL;
  return 0;
}
