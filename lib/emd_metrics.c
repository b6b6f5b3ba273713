/* emd_metrics.c: see emd_metrics.h. */
#include "emd_metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const char *type_name(enum emd_metric_type type)
{
  switch (type) {
  case EMD_METRIC_COUNTER: return "counter";
  case EMD_METRIC_GAUGE: return "gauge";
  case EMD_METRIC_HISTOGRAM: return "histogram";
  }
  return "untyped";
}

static bool name_ok(const char *s, bool colon)
{
  if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
    return false;
  for (; *s != '\0'; s++) {
    char c = *s;

    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || (colon && c == ':')))
      return false;
  }
  return true;
}

/* Writes name as is, or marks t failed. Keeps a bad name out of the
 * output, where it would break the whole scrape. */
static bool put_name(struct emd_text *t, const char *name, bool colon)
{
  if (!name_ok(name, colon)) {
    if (t->err == 0)
      t->err = -EINVAL;
    return false;
  }
  emd_text_puts(t, name);
  return true;
}

/* Appends s escaped for a label value (quote too) or a HELP text (not):
 * backslash, newline and, for labels, double quote; valid UTF-8. */
static void put_escaped(struct emd_text *t, const char *s, bool quote)
{
  const char *start = s;

  for (; *s != '\0'; s++) {
    const char *rep = NULL;

    if (*s == '\\')
      rep = "\\\\";
    else if (*s == '\n')
      rep = "\\n";
    else if (*s == '"' && quote)
      rep = "\\\"";
    if (rep == NULL)
      continue;
    emd_text_utf8(t, start, (size_t)(s - start));
    emd_text_append(t, rep, 2);
    start = s + 1;
  }
  emd_text_utf8(t, start, (size_t)(s - start));
}

void emd_metrics_family(struct emd_text *t, const char *name,
                        enum emd_metric_type type, const char *help)
{
  emd_text_puts(t, "# HELP ");
  put_name(t, name, true);
  emd_text_putc(t, ' ');
  put_escaped(t, help, false);
  emd_text_puts(t, "\n# TYPE ");
  put_name(t, name, true);
  emd_text_putc(t, ' ');
  emd_text_puts(t, type_name(type));
  emd_text_putc(t, '\n');
}

/* name{a="x",b="y"} with an optional extra label (le) last. */
static void put_series(struct emd_text *t, const char *name,
                       const char *suffix, const struct emd_label *labels,
                       size_t n, const char *extra_name,
                       const char *extra_value)
{
  bool any = n > 0 || extra_name != NULL;

  put_name(t, name, true);
  if (suffix != NULL)
    emd_text_puts(t, suffix);
  if (!any)
    return;
  emd_text_putc(t, '{');
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      emd_text_putc(t, ',');
    put_name(t, labels[i].name, false);
    emd_text_append(t, "=\"", 2);
    put_escaped(t, labels[i].value != NULL ? labels[i].value : "", true);
    emd_text_putc(t, '"');
  }
  if (extra_name != NULL) {
    if (n > 0)
      emd_text_putc(t, ',');
    emd_text_puts(t, extra_name);
    emd_text_append(t, "=\"", 2);
    emd_text_puts(t, extra_value);
    emd_text_putc(t, '"');
  }
  emd_text_putc(t, '}');
}

static void fmt_value(char *buf, size_t len, double v)
{
  if (isnan(v))
    snprintf(buf, len, "NaN");
  else if (isinf(v))
    snprintf(buf, len, "%s", v > 0 ? "+Inf" : "-Inf");
  else
    emd__fmt_double(buf, len, v);
}

void emd_metrics_u64(struct emd_text *t, const char *name,
                     const struct emd_label *labels, size_t n, uint64_t v)
{
  put_series(t, name, NULL, labels, n, NULL, NULL);
  emd_text_printf(t, " %" PRIu64 "\n", v);
}

void emd_metrics_f64(struct emd_text *t, const char *name,
                     const struct emd_label *labels, size_t n, double v)
{
  char buf[40];

  fmt_value(buf, sizeof(buf), v);
  put_series(t, name, NULL, labels, n, NULL, NULL);
  emd_text_putc(t, ' ');
  emd_text_puts(t, buf);
  emd_text_putc(t, '\n');
}

void emd_metrics_counter(struct emd_text *t, const char *name,
                         const char *help, uint64_t v)
{
  emd_metrics_family(t, name, EMD_METRIC_COUNTER, help);
  emd_metrics_u64(t, name, NULL, 0, v);
}

void emd_metrics_gauge(struct emd_text *t, const char *name,
                       const char *help, double v)
{
  emd_metrics_family(t, name, EMD_METRIC_GAUGE, help);
  emd_metrics_f64(t, name, NULL, 0, v);
}

void emd_metrics_eof(struct emd_text *t)
{
  emd_text_puts(t, "# EOF\n");
}

/* ---- histograms ---------------------------------------------------------- */

int emd_histogram_init(struct emd_histogram *h, const double *le, size_t n)
{
  memset(h, 0, sizeof(*h));
  if (n == 0 || n > EMD_HISTOGRAM_MAX)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(le[i]) || (i > 0 && le[i] <= le[i - 1]))
      return -EINVAL;
    h->le[i] = le[i];
  }
  h->n = n;
  return 0;
}

void emd_histogram_observe_n(struct emd_histogram *h, double v,
                             uint64_t times)
{
  size_t lo = 0, hi = h->n;

  if (isnan(v) || times == 0)
    return;
  /* The first bound >= v; n when v is above them all. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (h->le[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  h->count[lo] += times;
  h->sum += v * (double)times;
}

void emd_histogram_observe(struct emd_histogram *h, double v)
{
  emd_histogram_observe_n(h, v, 1);
}

uint64_t emd_histogram_total(const struct emd_histogram *h)
{
  uint64_t total = 0;

  for (size_t i = 0; i <= h->n && i <= EMD_HISTOGRAM_MAX; i++)
    total += h->count[i];
  return total;
}

void emd_metrics_histogram(struct emd_text *t, const char *name,
                           const struct emd_label *labels, size_t n,
                           const struct emd_histogram *h)
{
  uint64_t cum = 0;
  char le[40], sum[40];
  size_t nb = h->n <= EMD_HISTOGRAM_MAX ? h->n : EMD_HISTOGRAM_MAX;

  for (size_t i = 0; i <= nb; i++) {
    cum += h->count[i];
    if (i < nb)
      fmt_value(le, sizeof(le), h->le[i]);
    else
      snprintf(le, sizeof(le), "+Inf");
    put_series(t, name, "_bucket", labels, n, "le", le);
    emd_text_printf(t, " %" PRIu64 "\n", cum);
  }
  fmt_value(sum, sizeof(sum), h->sum);
  put_series(t, name, "_sum", labels, n, NULL, NULL);
  emd_text_printf(t, " %s\n", sum);
  put_series(t, name, "_count", labels, n, NULL, NULL);
  emd_text_printf(t, " %" PRIu64 "\n", cum);
}
