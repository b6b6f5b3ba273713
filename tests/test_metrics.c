/* test_metrics.c: lib/emd_metrics.c — exact Prometheus text for counters,
 * gauges and labels, escaping, number formats, the histogram's buckets,
 * and that a whole exposition stays within the 0.0.4 text grammar. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "emd_metrics.h"
#include "prom_check.h"

static void counter_with_labels_is_written_exactly(void **state)
{
  struct emd_text t = { 0 };
  const struct emd_label l[] = { { "reason", "invalid" },
                                 { "socket", "main" } };

  emd_metrics_family(&t, "emitd_events_rejected_total", EMD_METRIC_COUNTER,
                     "Events refused at the socket, by reason.");
  emd_metrics_u64(&t, "emitd_events_rejected_total", l, 2, 42);
  emd_metrics_u64(&t, "emitd_events_rejected_total", l, 1,
                  UINT64_C(18446744073709551615));
  assert_int_equal(t.err, 0);
  assert_string_equal(t.data,
    "# HELP emitd_events_rejected_total Events refused at the socket, by "
    "reason.\n"
    "# TYPE emitd_events_rejected_total counter\n"
    "emitd_events_rejected_total{reason=\"invalid\",socket=\"main\"} 42\n"
    "emitd_events_rejected_total{reason=\"invalid\"} "
    "18446744073709551615\n");
  emd_text_free(&t);
}

static void unlabelled_counter_and_gauge_are_whole_families(void **state)
{
  struct emd_text t = { 0 };

  emd_metrics_counter(&t, "emitd_events_sent_total", "Sent.", 7);
  emd_metrics_gauge(&t, "emitd_spool_oldest_pending_age_seconds", "Age.",
                    12.5);
  assert_int_equal(t.err, 0);
  assert_string_equal(t.data,
    "# HELP emitd_events_sent_total Sent.\n"
    "# TYPE emitd_events_sent_total counter\n"
    "emitd_events_sent_total 7\n"
    "# HELP emitd_spool_oldest_pending_age_seconds Age.\n"
    "# TYPE emitd_spool_oldest_pending_age_seconds gauge\n"
    "emitd_spool_oldest_pending_age_seconds 12.5\n");
  emd_text_free(&t);
}

static void label_values_escape_backslash_quote_and_newline(void **state)
{
  struct emd_text t = { 0 };
  const struct emd_label l = { "path", "C:\\dir \"x\"\nnext" };

  emd_metrics_u64(&t, "m", &l, 1, 1);
  assert_string_equal(t.data,
                      "m{path=\"C:\\\\dir \\\"x\\\"\\nnext\"} 1\n");
  emd_text_free(&t);
}

static void help_escapes_backslash_and_newline_but_not_quotes(void **state)
{
  struct emd_text t = { 0 };

  emd_metrics_family(&t, "m", EMD_METRIC_GAUGE, "a \\ b\n\"c\"");
  assert_string_equal(t.data, "# HELP m a \\\\ b\\n\"c\"\n# TYPE m gauge\n");
  emd_text_free(&t);
}

static void invalid_utf8_in_a_label_value_becomes_fffd(void **state)
{
  struct emd_text t = { 0 };
  const struct emd_label l = { "v", "a\xff" "b\xc3\xa9" };

  emd_metrics_u64(&t, "m", &l, 1, 0);
  assert_string_equal(t.data, "m{v=\"a\xef\xbf\xbd" "b\xc3\xa9\"} 0\n");
  emd_text_free(&t);
}

static void doubles_use_the_shortest_exact_form_and_special_values(void **state)
{
  struct emd_text t = { 0 };

  emd_metrics_f64(&t, "a", NULL, 0, 0.1);
  emd_metrics_f64(&t, "b", NULL, 0, 1e-3);
  emd_metrics_f64(&t, "c", NULL, 0, 3.0);
  emd_metrics_f64(&t, "d", NULL, 0, NAN);
  emd_metrics_f64(&t, "e", NULL, 0, INFINITY);
  emd_metrics_f64(&t, "f", NULL, 0, -INFINITY);
  emd_metrics_f64(&t, "g", NULL, 0, -2.25);
  emd_metrics_f64(&t, "h", NULL, 0, 1.0 / 3.0);
  assert_string_equal(t.data, "a 0.1\nb 0.001\nc 3\nd NaN\ne +Inf\nf -Inf\n"
                      "g -2.25\nh 0.3333333333333333\n");
  emd_text_free(&t);
}

static void bad_metric_or_label_names_fail_the_buffer(void **state)
{
  struct emd_text t = { 0 };
  const struct emd_label colon = { "a:b", "x" };

  emd_metrics_u64(&t, "9lives", NULL, 0, 1);
  assert_int_equal(t.err, -EINVAL);
  emd_text_reset(&t);
  emd_metrics_u64(&t, "has space", NULL, 0, 1);
  assert_int_equal(t.err, -EINVAL);
  emd_text_reset(&t);
  emd_metrics_u64(&t, "ok:name_1", &colon, 1, 1);   /* colons: names only */
  assert_int_equal(t.err, -EINVAL);
  emd_text_reset(&t);
  emd_metrics_u64(&t, "ok:name_1", NULL, 0, 1);
  assert_int_equal(t.err, 0);
  assert_string_equal(t.data, "ok:name_1 1\n");
  emd_text_free(&t);
}

static void histogram_buckets_are_cumulative_with_inf_sum_and_count(
  void **state)
{
  static const double le[] = { 0.001, 0.01, 0.1, 1 };
  struct emd_histogram h;
  struct emd_text t = { 0 };

  assert_int_equal(emd_histogram_init(&h, le, 4), 0);
  emd_histogram_observe(&h, 0.0005);   /* first bucket */
  emd_histogram_observe(&h, 0.001);    /* le is inclusive: first bucket */
  emd_histogram_observe(&h, 0.05);     /* third */
  emd_histogram_observe(&h, 0.5);      /* fourth */
  emd_histogram_observe(&h, 2.5);      /* above every bound: +Inf */
  emd_histogram_observe(&h, NAN);      /* ignored */
  assert_int_equal(h.count[0], 2);
  assert_int_equal(h.count[1], 0);
  assert_int_equal(h.count[2], 1);
  assert_int_equal(h.count[3], 1);
  assert_int_equal(h.count[4], 1);
  assert_int_equal(emd_histogram_total(&h), 5);

  emd_metrics_family(&t, "emitd_ack_latency_seconds", EMD_METRIC_HISTOGRAM,
                     "Accept to reply.");
  emd_metrics_histogram(&t, "emitd_ack_latency_seconds", NULL, 0, &h);
  assert_int_equal(t.err, 0);
  assert_string_equal(t.data,
    "# HELP emitd_ack_latency_seconds Accept to reply.\n"
    "# TYPE emitd_ack_latency_seconds histogram\n"
    "emitd_ack_latency_seconds_bucket{le=\"0.001\"} 2\n"
    "emitd_ack_latency_seconds_bucket{le=\"0.01\"} 2\n"
    "emitd_ack_latency_seconds_bucket{le=\"0.1\"} 3\n"
    "emitd_ack_latency_seconds_bucket{le=\"1\"} 4\n"
    "emitd_ack_latency_seconds_bucket{le=\"+Inf\"} 5\n"
    "emitd_ack_latency_seconds_sum 3.0515\n"
    "emitd_ack_latency_seconds_count 5\n");
  emd_text_free(&t);
}

static void histogram_labels_come_before_le(void **state)
{
  static const double le[] = { 10, 100 };
  const struct emd_label l = { "mode", "batch" };
  struct emd_histogram h;
  struct emd_text t = { 0 };

  assert_int_equal(emd_histogram_init(&h, le, 2), 0);
  emd_histogram_observe_n(&h, 50, 3);
  emd_metrics_histogram(&t, "emitd_batch_size_events", &l, 1, &h);
  assert_string_equal(t.data,
    "emitd_batch_size_events_bucket{mode=\"batch\",le=\"10\"} 0\n"
    "emitd_batch_size_events_bucket{mode=\"batch\",le=\"100\"} 3\n"
    "emitd_batch_size_events_bucket{mode=\"batch\",le=\"+Inf\"} 3\n"
    "emitd_batch_size_events_sum{mode=\"batch\"} 150\n"
    "emitd_batch_size_events_count{mode=\"batch\"} 3\n");
  emd_text_free(&t);
}

static void empty_histogram_renders_zeros(void **state)
{
  static const double le[] = { 1 };
  struct emd_histogram h;
  struct emd_text t = { 0 };

  assert_int_equal(emd_histogram_init(&h, le, 1), 0);
  emd_metrics_histogram(&t, "x", NULL, 0, &h);
  assert_string_equal(t.data, "x_bucket{le=\"1\"} 0\nx_bucket{le=\"+Inf\"} 0\n"
                      "x_sum 0\nx_count 0\n");
  emd_text_free(&t);
}

static void histogram_init_refuses_bad_bounds(void **state)
{
  static const double unsorted[] = { 1, 0.5 };
  static const double twice[] = { 1, 1 };
  const double inf[] = { 1, INFINITY };
  double many[EMD_HISTOGRAM_MAX + 1];
  struct emd_histogram h;

  for (size_t i = 0; i <= EMD_HISTOGRAM_MAX; i++)
    many[i] = (double)i;
  assert_int_equal(emd_histogram_init(&h, unsorted, 2), -EINVAL);
  assert_int_equal(emd_histogram_init(&h, twice, 2), -EINVAL);
  assert_int_equal(emd_histogram_init(&h, inf, 2), -EINVAL);
  assert_int_equal(emd_histogram_init(&h, many, 0), -EINVAL);
  assert_int_equal(emd_histogram_init(&h, many, EMD_HISTOGRAM_MAX + 1),
                   -EINVAL);
  assert_int_equal(emd_histogram_init(&h, many, EMD_HISTOGRAM_MAX), 0);
  emd_histogram_observe(&h, 1e9);
  assert_int_equal(h.count[EMD_HISTOGRAM_MAX], 1);
}

static void observe_finds_the_right_bucket_for_every_value(void **state)
{
  static const double le[] = { 1, 2, 4, 8, 16 };
  struct emd_histogram h;

  assert_int_equal(emd_histogram_init(&h, le, 5), 0);
  for (int v = -1; v <= 20; v++) {
    size_t want = 0;

    while (want < 5 && le[want] < v)
      want++;
    emd_histogram_observe(&h, v);
    assert_true(h.count[want] > 0);
  }
  assert_int_equal(h.count[0], 3);    /* -1, 0, 1 */
  assert_int_equal(h.count[1], 1);    /* 2 */
  assert_int_equal(h.count[2], 2);    /* 3, 4 */
  assert_int_equal(h.count[3], 4);    /* 5 .. 8 */
  assert_int_equal(h.count[4], 8);    /* 9 .. 16 */
  assert_int_equal(h.count[5], 4);    /* 17 .. 20 */
}

static void a_whole_exposition_ends_with_eof_and_keeps_the_grammar(
  void **state)
{
  static const double le[] = { 0.001, 0.01 };
  struct emd_histogram h;
  struct emd_text t = { 0 };
  const struct emd_label l[] = { { "reason", "bad \"json\"\n" },
                                 { "x", "\\" } };

  emd_histogram_init(&h, le, 2);
  emd_histogram_observe(&h, 0.002);
  emd_metrics_counter(&t, "emitd_events_received_total", "Received.", 3);
  emd_metrics_family(&t, "emitd_events_rejected_total", EMD_METRIC_COUNTER,
                     "By reason.");
  emd_metrics_u64(&t, "emitd_events_rejected_total", l, 2, 1);
  emd_metrics_family(&t, "emitd_ack_latency_seconds", EMD_METRIC_HISTOGRAM,
                     "Latency.");
  emd_metrics_histogram(&t, "emitd_ack_latency_seconds", NULL, 0, &h);
  emd_metrics_eof(&t);
  assert_int_equal(t.err, 0);
  check_exposition(t.data);
  emd_text_free(&t);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(counter_with_labels_is_written_exactly),
    cmocka_unit_test(unlabelled_counter_and_gauge_are_whole_families),
    cmocka_unit_test(label_values_escape_backslash_quote_and_newline),
    cmocka_unit_test(help_escapes_backslash_and_newline_but_not_quotes),
    cmocka_unit_test(invalid_utf8_in_a_label_value_becomes_fffd),
    cmocka_unit_test(doubles_use_the_shortest_exact_form_and_special_values),
    cmocka_unit_test(bad_metric_or_label_names_fail_the_buffer),
    cmocka_unit_test(histogram_buckets_are_cumulative_with_inf_sum_and_count),
    cmocka_unit_test(histogram_labels_come_before_le),
    cmocka_unit_test(empty_histogram_renders_zeros),
    cmocka_unit_test(histogram_init_refuses_bad_bounds),
    cmocka_unit_test(observe_finds_the_right_bucket_for_every_value),
    cmocka_unit_test(a_whole_exposition_ends_with_eof_and_keeps_the_grammar),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
