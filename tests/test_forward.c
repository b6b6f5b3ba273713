/* test_forward.c: lib/emd_forward.c — the reply table of SPEC 4 row by
 * row through emd_forward_classify(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
/* the inputs of emd_forward_classify() are curl's transfer results */
#include <curl/curl.h>

#include "emd_forward.h"

/* Batch sizes every row is tried with: one event, two, a full batch. */
static const size_t sizes[] = { 1, 2, 500 };
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

static void expect_status(long status, enum emd_verdict one,
                          enum emd_verdict many)
{
  size_t i;

  for (i = 0; i < N_SIZES; i++) {
    enum emd_verdict want = sizes[i] == 1 ? one : many;
    enum emd_verdict got = emd_forward_classify(CURLE_OK, status, sizes[i]);
    if (got != want)
      fail_msg("HTTP %ld for %zu events: verdict %d, want %d", status,
               sizes[i], (int)got, (int)want);
  }
}

static void any_2xx_is_done(void **state)
{
  static const long statuses[] = { 200, 201, 202, 204, 206, 299 };
  size_t i;

  for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
    expect_status(statuses[i], EMD_DONE, EMD_DONE);
}

static void status_401_pauses_and_never_dead_letters(void **state)
{
  expect_status(401, EMD_PAUSE, EMD_PAUSE);
}

static void status_403_pauses_like_401(void **state)
{
  expect_status(403, EMD_PAUSE, EMD_PAUSE);
}

static void status_404_and_405_pause_as_misconfigured(void **state)
{
  expect_status(404, EMD_PAUSE, EMD_PAUSE);
  expect_status(405, EMD_PAUSE, EMD_PAUSE);
}

static void status_408_429_and_5xx_retry(void **state)
{
  static const long statuses[] = { 408, 429, 500, 502, 503, 504, 599 };
  size_t i;

  for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
    expect_status(statuses[i], EMD_RETRY, EMD_RETRY);
}

static void connection_errors_and_timeouts_retry(void **state)
{
  static const int codes[] = {
    CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_CONNECT,
    CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
    CURLE_GOT_NOTHING, CURLE_SSL_CONNECT_ERROR, CURLE_HTTP2,
    CURLE_HTTP2_STREAM, CURLE_PEER_FAILED_VERIFICATION,
  };
  size_t i, j;

  for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    for (j = 0; j < N_SIZES; j++)
      assert_int_equal(emd_forward_classify(codes[i], 0, sizes[j]),
                       EMD_RETRY);
  }
}

static void a_reply_cut_after_its_status_line_retries(void **state)
{
  /* the status was 200, but the body never arrived whole: no verdicts */
  assert_int_equal(emd_forward_classify(CURLE_PARTIAL_FILE, 200, 10),
                   EMD_RETRY);
  assert_int_equal(emd_forward_classify(CURLE_RECV_ERROR, 200, 1),
                   EMD_RETRY);
  assert_int_equal(emd_forward_classify(CURLE_OPERATION_TIMEDOUT, 400, 10),
                   EMD_RETRY);
}

static void status_413_splits_a_batch_and_dead_letters_one_event(void **state)
{
  expect_status(413, EMD_DEAD, EMD_SPLIT);
}

static void status_400_and_422_split_a_batch_and_dead_letter_one(void **s)
{
  expect_status(400, EMD_DEAD, EMD_SPLIT);
  expect_status(422, EMD_DEAD, EMD_SPLIT);
}

static void other_4xx_dead_letter_a_single_event(void **state)
{
  static const long statuses[] = { 402, 406, 409, 410, 411, 415, 418, 451,
                                   499 };
  size_t i;

  /* a batch is halved first, so one bad event cannot sink the rest */
  for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
    expect_status(statuses[i], EMD_DEAD, EMD_SPLIT);
}

static void redirects_and_unusable_endpoints_pause(void **state)
{
  expect_status(301, EMD_PAUSE, EMD_PAUSE);
  expect_status(302, EMD_PAUSE, EMD_PAUSE);
  expect_status(308, EMD_PAUSE, EMD_PAUSE);
  assert_int_equal(emd_forward_classify(CURLE_URL_MALFORMAT, 0, 5),
                   EMD_PAUSE);
  assert_int_equal(emd_forward_classify(CURLE_UNSUPPORTED_PROTOCOL, 0, 1),
                   EMD_PAUSE);
  assert_int_equal(emd_forward_classify(CURLE_SSL_CACERT_BADFILE, 0, 1),
                   EMD_PAUSE);
}

static void nonsense_statuses_retry_rather_than_lose_events(void **state)
{
  expect_status(0, EMD_RETRY, EMD_RETRY);
  expect_status(100, EMD_RETRY, EMD_RETRY);
  expect_status(600, EMD_RETRY, EMD_RETRY);
  expect_status(999, EMD_RETRY, EMD_RETRY);
  expect_status(-1, EMD_RETRY, EMD_RETRY);
}

static void state_names_match_the_status_reply(void **state)
{
  assert_string_equal(emd_forward_state_name(EMD_FWD_OK), "ok");
  assert_string_equal(emd_forward_state_name(EMD_FWD_BACKOFF), "backoff");
  assert_string_equal(emd_forward_state_name(EMD_FWD_UNAUTHORIZED),
                      "unauthorized");
  assert_string_equal(emd_forward_state_name(EMD_FWD_FORBIDDEN),
                      "forbidden");
  assert_string_equal(emd_forward_state_name(EMD_FWD_MISCONFIGURED),
                      "misconfigured");
  assert_string_equal(emd_forward_state_name(42), "?");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(any_2xx_is_done),
    cmocka_unit_test(status_401_pauses_and_never_dead_letters),
    cmocka_unit_test(status_403_pauses_like_401),
    cmocka_unit_test(status_404_and_405_pause_as_misconfigured),
    cmocka_unit_test(status_408_429_and_5xx_retry),
    cmocka_unit_test(connection_errors_and_timeouts_retry),
    cmocka_unit_test(a_reply_cut_after_its_status_line_retries),
    cmocka_unit_test(status_413_splits_a_batch_and_dead_letters_one_event),
    cmocka_unit_test(status_400_and_422_split_a_batch_and_dead_letter_one),
    cmocka_unit_test(other_4xx_dead_letter_a_single_event),
    cmocka_unit_test(redirects_and_unusable_endpoints_pause),
    cmocka_unit_test(nonsense_statuses_retry_rather_than_lose_events),
    cmocka_unit_test(state_names_match_the_status_reply),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
