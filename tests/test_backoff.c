/* test_backoff.c: lib/emd_backoff.c — doubling, the cap, full jitter with a
 * fixed generator, reset, and Retry-After in both of its forms. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "emd_backoff.h"
#include "emd_err.h"

#define S(lit) lit, sizeof(lit) - 1

static void ceiling_doubles_from_initial_up_to_max(void **state)
{
  assert_int_equal(emd_backoff_ceiling(0, 500, 60000), 500);
  assert_int_equal(emd_backoff_ceiling(1, 500, 60000), 1000);
  assert_int_equal(emd_backoff_ceiling(2, 500, 60000), 2000);
  assert_int_equal(emd_backoff_ceiling(6, 500, 60000), 32000);
  assert_int_equal(emd_backoff_ceiling(7, 500, 60000), 60000);
  assert_int_equal(emd_backoff_ceiling(8, 500, 60000), 60000);
}

static void ceiling_never_overflows_on_many_attempts(void **state)
{
  assert_int_equal(emd_backoff_ceiling(63, 500, 60000), 60000);
  assert_int_equal(emd_backoff_ceiling(64, 500, 60000), 60000);
  assert_int_equal(emd_backoff_ceiling(1000, 500, 60000), 60000);
  /* 3 << 63 would wrap around */
  assert_true(emd_backoff_ceiling(63, 3, UINT64_MAX) == UINT64_MAX);
  assert_true(emd_backoff_ceiling(62, 3, UINT64_MAX) == UINT64_C(3) << 62);
}

static void ceiling_is_max_when_max_is_below_initial(void **state)
{
  assert_int_equal(emd_backoff_ceiling(0, 500, 100), 100);
  assert_int_equal(emd_backoff_ceiling(5, 500, 100), 100);
  assert_int_equal(emd_backoff_ceiling(3, 0, 100), 0);
}

static void full_jitter_stays_within_zero_and_the_ceiling(void **state)
{
  struct emd_rng rng;
  unsigned attempt;
  int i;

  emd_rng_seed(&rng, 42);
  for (attempt = 0; attempt < 12; attempt++) {
    uint64_t ceiling = emd_backoff_ceiling(attempt, 500, 60000);
    for (i = 0; i < 1000; i++)
      assert_true(emd_backoff_next(attempt, 500, 60000, &rng) <= ceiling);
  }
}

static void full_jitter_spreads_over_the_whole_window(void **state)
{
  struct emd_rng rng;
  uint64_t lo = UINT64_MAX, hi = 0, sum = 0, d;
  int i;

  emd_rng_seed(&rng, 7);
  for (i = 0; i < 4000; i++) {
    d = emd_backoff_next(4, 500, 60000, &rng);   /* ceiling 8000 */
    lo = d < lo ? d : lo;
    hi = d > hi ? d : hi;
    sum += d;
  }
  assert_true(lo < 200);
  assert_true(hi > 7800);
  /* a uniform draw averages half the ceiling */
  assert_true(sum / 4000 > 3600 && sum / 4000 < 4400);
}

static void same_seed_gives_same_delays(void **state)
{
  struct emd_rng a, b, c;
  int i, differ = 0;

  emd_rng_seed(&a, 1234);
  emd_rng_seed(&b, 1234);
  emd_rng_seed(&c, 4321);
  for (i = 0; i < 100; i++) {
    uint64_t x = emd_backoff_next(10, 500, 60000, &a);
    assert_true(x == emd_backoff_next(10, 500, 60000, &b));
    differ += x != emd_backoff_next(10, 500, 60000, &c);
  }
  assert_true(differ > 90);
}

static void zero_seed_and_zeroed_state_still_give_randomness(void **state)
{
  struct emd_rng zeroed = { 0 }, seeded;
  uint64_t x, y;

  emd_rng_seed(&seeded, 0);
  assert_true(seeded.s != 0);
  x = emd_rng_next(&zeroed);
  y = emd_rng_next(&zeroed);
  assert_true(x != 0 && y != 0 && x != y);
}

static void failed_counts_up_and_reset_starts_over(void **state)
{
  struct emd_backoff b = { 0 };
  struct emd_rng rng;
  int i;

  emd_rng_seed(&rng, 99);
  for (i = 0; i < 10; i++) {
    uint64_t ceiling = emd_backoff_ceiling((unsigned)i, 500, 60000);
    assert_true(emd_backoff_failed(&b, 500, 60000, &rng) <= ceiling);
  }
  assert_int_equal(b.attempt, 10);
  emd_backoff_reset(&b);
  assert_int_equal(b.attempt, 0);
  for (i = 0; i < 200; i++) {
    struct emd_backoff fresh = b;
    assert_true(emd_backoff_failed(&fresh, 500, 60000, &rng) <= 500);
  }
}

static void retry_after_takes_delay_seconds(void **state)
{
  uint64_t ms = 1;

  assert_int_equal(emd_backoff_retry_after(S("120"), 0, &ms), 0);
  assert_int_equal(ms, 120000);
  assert_int_equal(emd_backoff_retry_after(S(" 0 "), 5, &ms), 0);
  assert_int_equal(ms, 0);
  assert_int_equal(emd_backoff_retry_after(S("99999999999999999999999"), 0,
                                           &ms), 0);
  assert_true(ms == EMD_RETRY_AFTER_MAX_S * 1000);
}

static void retry_after_takes_an_http_date_relative_to_now(void **state)
{
  /* 1994-11-06 08:49:37 UTC is 784111777 */
  uint64_t now_ms = UINT64_C(784111777) * 1000 - 30500, ms = 0;

  assert_int_equal(emd_backoff_retry_after(
                     S("Sun, 06 Nov 1994 08:49:37 GMT"), now_ms, &ms), 0);
  assert_int_equal(ms, 30500);
  assert_int_equal(emd_backoff_retry_after(
                     S("Sunday, 06-Nov-94 08:49:37 GMT"), now_ms, &ms), 0);
  assert_int_equal(ms, 30500);
  assert_int_equal(emd_backoff_retry_after(
                     S("Sun Nov  6 08:49:37 1994"), now_ms, &ms), 0);
  assert_int_equal(ms, 30500);
}

static void retry_after_in_the_past_is_no_delay(void **state)
{
  uint64_t ms = 7;

  assert_int_equal(emd_backoff_retry_after(
                     S("Sun, 06 Nov 1994 08:49:37 GMT"),
                     UINT64_C(1700000000000), &ms), 0);
  assert_int_equal(ms, 0);
}

static void retry_after_rejects_garbage(void **state)
{
  static const char *const bad[] = {
    "", "   ", "-5", "5s", "1.5", "soon", "Sun, 06 Nov 1994 08:49:37",
    "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 31 Feb 1994 08:49:37 GMT",
    "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT",
    "Sun, 06 Nov 94 08:49:37 GMT", "Sun Nov  6 08:49:37", "Sun, 06 Nov",
    "Sun, 06 Nov 1994 08:49:37 GMT trailing", "Sun, 06-Nov-1994 08:49:37 GMT",
  };
  uint64_t ms;
  size_t i;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (emd_backoff_retry_after(bad[i], strlen(bad[i]), 0, &ms) !=
        EMD_EINVALID)
      fail_msg("accepted \"%s\"", bad[i]);
  }
}

static void http_date_knows_leap_years_and_two_digit_years(void **state)
{
  int64_t t;

  assert_int_equal(emd_backoff_http_date(
                     S("Thu, 29 Feb 2024 00:00:00 GMT"), &t), 0);
  assert_true(t == 1709164800);
  assert_int_equal(emd_backoff_http_date(
                     S("Thu, 29 Feb 2023 00:00:00 GMT"), &t), EMD_EINVALID);
  assert_int_equal(emd_backoff_http_date(
                     S("Thursday, 01-Jan-70 00:00:00 GMT"), &t), 0);
  assert_true(t == 0);
  assert_int_equal(emd_backoff_http_date(
                     S("Friday, 01-Jan-30 00:00:00 GMT"), &t), 0);
  assert_true(t == 1893456000);
  assert_int_equal(emd_backoff_http_date(
                     S("Thu Jan  1 00:00:00 1970"), &t), 0);
  assert_true(t == 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(ceiling_doubles_from_initial_up_to_max),
    cmocka_unit_test(ceiling_never_overflows_on_many_attempts),
    cmocka_unit_test(ceiling_is_max_when_max_is_below_initial),
    cmocka_unit_test(full_jitter_stays_within_zero_and_the_ceiling),
    cmocka_unit_test(full_jitter_spreads_over_the_whole_window),
    cmocka_unit_test(same_seed_gives_same_delays),
    cmocka_unit_test(zero_seed_and_zeroed_state_still_give_randomness),
    cmocka_unit_test(failed_counts_up_and_reset_starts_over),
    cmocka_unit_test(retry_after_takes_delay_seconds),
    cmocka_unit_test(retry_after_takes_an_http_date_relative_to_now),
    cmocka_unit_test(retry_after_in_the_past_is_no_delay),
    cmocka_unit_test(retry_after_rejects_garbage),
    cmocka_unit_test(http_date_knows_leap_years_and_two_digit_years),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
