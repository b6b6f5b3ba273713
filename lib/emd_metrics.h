/* emd_metrics.h: a writer of the Prometheus text exposition format
 * (version 0.0.4), and a fixed-bucket histogram. No registry and no global
 * state: the caller keeps its own counters and, when asked for metrics,
 * writes them into an emd_text in one go. Any thread (each call touches
 * only its arguments).
 *
 * A metric family is written as "# HELP", "# TYPE", then its samples, all
 * together (the format requires a family's lines to be adjacent). Names
 * follow Prometheus conventions: emitd_ prefix, base units in the name
 * (_seconds, _bytes), _total on counters. Names must match
 * [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]*; a bad
 * one sets the buffer's err to -EINVAL. Label values are any bytes: they
 * are escaped (backslash, double quote, newline) and made valid UTF-8.
 *
 * emd_metrics_eof() ends the text with "# EOF" as OpenMetrics does; in
 * the 0.0.4 format that line is an ordinary comment, so the whole text
 * still parses as Prometheus text, and a reader of a stream (the control
 * socket) knows where the reply ends. */
#ifndef EMD_METRICS_H
#define EMD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "emd_json.h"   /* struct emd_text */

enum emd_metric_type { EMD_METRIC_COUNTER, EMD_METRIC_GAUGE,
                       EMD_METRIC_HISTOGRAM };

/* One label of a sample. */
struct emd_label {
  const char *name;
  const char *value;
};

/* "# HELP name help" (help escaped: backslash, newline) and
 * "# TYPE name counter|gauge|histogram". */
void emd_metrics_family(struct emd_text *t, const char *name,
                        enum emd_metric_type type, const char *help);

/* One sample line: name{labels} value. labels may be NULL when n is 0.
 * Doubles are written in their shortest exact form; NaN and infinities
 * as NaN, +Inf, -Inf. */
void emd_metrics_u64(struct emd_text *t, const char *name,
                     const struct emd_label *labels, size_t n, uint64_t v);
void emd_metrics_f64(struct emd_text *t, const char *name,
                     const struct emd_label *labels, size_t n, double v);

/* A whole family of one unlabelled sample: HELP, TYPE and the value. */
void emd_metrics_counter(struct emd_text *t, const char *name,
                         const char *help, uint64_t v);
void emd_metrics_gauge(struct emd_text *t, const char *name,
                       const char *help, double v);

/* The line "# EOF". */
void emd_metrics_eof(struct emd_text *t);

/* A histogram with fixed upper bounds ("le", inclusive, ascending).
 * count[] is per bucket, not cumulative: count[i] holds observations v
 * with le[i-1] < v <= le[i], and count[n] those above le[n-1] (the +Inf
 * bucket). The fields are public so that figures kept elsewhere in the
 * same shape (per-bucket counts and a sum) can be rendered too. */
#define EMD_HISTOGRAM_MAX 32

struct emd_histogram {
  size_t n;                                /* finite bounds */
  double le[EMD_HISTOGRAM_MAX];            /* ascending */
  uint64_t count[EMD_HISTOGRAM_MAX + 1];   /* per bucket; [n] is +Inf */
  double sum;                              /* of every observed value */
};

/* Sets the bounds le[0..n) and zeroes the counts. Returns 0, or -EINVAL
 * when n is 0 or over EMD_HISTOGRAM_MAX, or the bounds are not finite and
 * strictly ascending. */
int emd_histogram_init(struct emd_histogram *h, const double *le, size_t n);

/* Counts v (times times). NaN is ignored. O(log n), no allocation. */
void emd_histogram_observe(struct emd_histogram *h, double v);
void emd_histogram_observe_n(struct emd_histogram *h, double v,
                             uint64_t times);

/* Every observation counted so far. */
uint64_t emd_histogram_total(const struct emd_histogram *h);

/* The samples of a histogram family (the family line is the caller's,
 * with EMD_METRIC_HISTOGRAM): name_bucket{labels,le="…"} with cumulative
 * counts for every bound and le="+Inf", then name_sum and name_count. */
void emd_metrics_histogram(struct emd_text *t, const char *name,
                           const struct emd_label *labels, size_t n,
                           const struct emd_histogram *h);

#endif
