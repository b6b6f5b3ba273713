/* test_err.c: lib/emd_err.c, the one error table. Every row of
 * EMD_ERR_MAP is checked through the same macro the library expands, so a
 * row added later is covered without touching this file. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emd_err.h"

struct row {
  const char *name;
  int value;
  const char *code;
  const char *msg;
};

static const struct row rows[] = {
#define X(name, value, code, msg) { #name, EMD_E##name, code, msg },
  EMD_ERR_MAP(X)
#undef X
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

static void every_code_has_its_own_value_below_minus_1000(void **state)
{
  (void)state;
  assert_true(NROWS >= 13);
  for (size_t i = 0; i < NROWS; i++) {
    if (rows[i].value > -1000)
      fail_msg("EMD_E%s = %d: not below -1000", rows[i].name,
               rows[i].value);
    for (size_t j = 0; j < i; j++)
      if (rows[i].value == rows[j].value)
        fail_msg("EMD_E%s and EMD_E%s share %d", rows[i].name,
                 rows[j].name, rows[i].value);
  }
}

static void every_code_has_its_own_code_string_and_message(void **state)
{
  (void)state;
  for (size_t i = 0; i < NROWS; i++) {
    const char *code = emd_errcode(rows[i].value);
    const char *msg = emd_strerror(rows[i].value);

    assert_non_null(code);
    assert_non_null(msg);
    assert_string_equal(code, rows[i].code);
    assert_string_equal(msg, rows[i].msg);
    assert_true(strlen(msg) > 0);
    /* Codes go into JSON replies as they are: lower case and '_'. */
    assert_true(strlen(code) > 0);
    assert_int_equal(strspn(code, "abcdefghijklmnopqrstuvwxyz_"),
                     strlen(code));
    for (size_t j = 0; j < i; j++)
      if (strcmp(code, rows[j].code) == 0)
        fail_msg("EMD_E%s and EMD_E%s share the code %s", rows[i].name,
                 rows[j].name, code);
  }
}

static void reply_codes_are_the_ones_spec_2_names(void **state)
{
  (void)state;
  assert_string_equal(emd_errcode(EMD_EBADJSON), "bad_json");
  assert_string_equal(emd_errcode(EMD_ETOOLARGE), "too_large");
  assert_string_equal(emd_errcode(EMD_EINVALID), "invalid");
  assert_string_equal(emd_errcode(EMD_ESPOOLFULL), "spool_full");
  assert_string_equal(emd_errcode(EMD_ESHUTDOWN), "shutting_down");
}

static void errno_values_give_strerror_text_and_internal(void **state)
{
  static const int errs[] = {
    ENOENT, ENOMEM, EACCES, EEXIST, ENOSPC, EPIPE, ECONNRESET, EIO, EINVAL,
  };

  (void)state;
  for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
    char want[256];

    /* strerror may reuse its buffer: copy before the next call. */
    snprintf(want, sizeof(want), "%s", strerror(errs[i]));
    assert_string_equal(emd_strerror(-errs[i]), want);
    assert_string_equal(emd_errcode(-errs[i]), "internal");
  }
}

static void zero_and_unknown_values_never_give_null(void **state)
{
  static const int odd[] = { 1, 42, -1000, -1999, -5000, INT32_MIN,
                             INT32_MAX };

  (void)state;
  assert_string_equal(emd_errcode(0), "ok");
  assert_non_null(emd_strerror(0));
  for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
    assert_non_null(emd_strerror(odd[i]));
    assert_true(strlen(emd_strerror(odd[i])) > 0);
    assert_string_equal(emd_errcode(odd[i]), "internal");
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(every_code_has_its_own_value_below_minus_1000),
    cmocka_unit_test(every_code_has_its_own_code_string_and_message),
    cmocka_unit_test(reply_codes_are_the_ones_spec_2_names),
    cmocka_unit_test(errno_values_give_strerror_text_and_internal),
    cmocka_unit_test(zero_and_unknown_values_never_give_null),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
