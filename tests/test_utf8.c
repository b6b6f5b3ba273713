/* test_utf8.c: lib/emd_utf8.h — every boundary of Unicode's table 3-7:
 * the shortest and longest sequence of each length, overlong forms,
 * surrogates, code points past U+10FFFF, and cut-off sequences. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "emd_utf8.h"

#define SEQ(lit) emd_utf8_seq((const uint8_t *)(lit), sizeof(lit) - 1)
#define VALID(lit) emd_utf8_valid(lit, sizeof(lit) - 1)

static void well_formed_sequences_have_their_length(void **state)
{
  (void)state;
  assert_int_equal(SEQ("A"), 1);
  assert_int_equal(SEQ("\x7f"), 1);
  assert_int_equal(SEQ("\xc2\x80"), 2);            /* U+0080 */
  assert_int_equal(SEQ("\xdf\xbf"), 2);            /* U+07FF */
  assert_int_equal(SEQ("\xe0\xa0\x80"), 3);        /* U+0800 */
  assert_int_equal(SEQ("\xed\x9f\xbf"), 3);        /* U+D7FF */
  assert_int_equal(SEQ("\xee\x80\x80"), 3);        /* U+E000 */
  assert_int_equal(SEQ("\xef\xbf\xbf"), 3);        /* U+FFFF */
  assert_int_equal(SEQ("\xf0\x90\x80\x80"), 4);    /* U+10000 */
  assert_int_equal(SEQ("\xf4\x8f\xbf\xbf"), 4);    /* U+10FFFF */
  assert_int_equal(SEQ("\xc3\xa9xyz"), 2);         /* only the first */
}

static void ill_formed_sequences_are_refused(void **state)
{
  (void)state;
  assert_int_equal(SEQ("\x80"), 0);                /* a continuation */
  assert_int_equal(SEQ("\xc0\xaf"), 0);            /* overlong '/' */
  assert_int_equal(SEQ("\xc1\xbf"), 0);
  assert_int_equal(SEQ("\xe0\x9f\xbf"), 0);        /* overlong */
  assert_int_equal(SEQ("\xed\xa0\x80"), 0);        /* U+D800 */
  assert_int_equal(SEQ("\xed\xbf\xbf"), 0);        /* U+DFFF */
  assert_int_equal(SEQ("\xf0\x8f\xbf\xbf"), 0);    /* overlong */
  assert_int_equal(SEQ("\xf4\x90\x80\x80"), 0);    /* U+110000 */
  assert_int_equal(SEQ("\xf5\x80\x80\x80"), 0);
  assert_int_equal(SEQ("\xff"), 0);
  assert_int_equal(SEQ("\xc3"), 0);                /* cut off */
  assert_int_equal(SEQ("\xe2\x82"), 0);
  assert_int_equal(SEQ("\xf0\x9f\x98"), 0);
  assert_int_equal(SEQ("\xc3\x28"), 0);            /* bad continuation */
  assert_int_equal(SEQ("\xe2\x28\xa1"), 0);
  assert_int_equal(SEQ("\xf0\x9f\x28\x80"), 0);
}

static void whole_strings(void **state)
{
  (void)state;
  assert_true(emd_utf8_valid("", 0));
  assert_true(VALID("plain ascii"));
  assert_true(VALID("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  assert_false(VALID("caf\xc3"));                  /* cut at the end */
  assert_false(VALID("a\xed\xa0\x80z"));
  assert_false(VALID("ok\x80ok"));
  /* A NUL is a character like any other here. */
  assert_true(emd_utf8_valid("a\0b", 3));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(well_formed_sequences_have_their_length),
    cmocka_unit_test(ill_formed_sequences_are_refused),
    cmocka_unit_test(whole_strings),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
