/* test_json.c: lib/emd_json.c — the growable buffer and the JSON writer:
 * punctuation, escaping, UTF-8 repair, numbers, misuse, and that any bytes
 * written as a string come out as a document a strict parser accepts. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "emd_json.h"

static void text_grows_and_stays_nul_terminated(void **state)
{
  struct emd_text t = { 0 };
  char big[5000];

  memset(big, 'x', sizeof(big));
  emd_text_puts(&t, "a");
  emd_text_putc(&t, 'b');
  emd_text_printf(&t, "%d-%s", 12, "c");
  emd_text_append(&t, big, sizeof(big));
  assert_int_equal(t.err, 0);
  assert_int_equal(t.len, 6 + sizeof(big));
  assert_memory_equal(t.data, "ab12-c", 6);
  assert_int_equal(t.data[t.len], '\0');
  emd_text_reset(&t);
  assert_int_equal(t.len, 0);
  assert_string_equal(t.data, "");
  emd_text_free(&t);
  assert_null(t.data);
  emd_text_free(&t);                 /* safe twice */
}

static void writer_places_commas_and_colons(void **state)
{
  struct emd_json j = { 0 };

  emd_json_obj_begin(&j);
  emd_json_kbool(&j, "ok", true);
  emd_json_key(&j, "list");
  emd_json_arr_begin(&j);
  emd_json_u64(&j, 1);
  emd_json_obj_begin(&j);
  emd_json_obj_end(&j);
  emd_json_arr_begin(&j);
  emd_json_arr_end(&j);
  emd_json_null(&j);
  emd_json_arr_end(&j);
  emd_json_ki64(&j, "neg", -5);
  emd_json_kstr(&j, "none", NULL);
  emd_json_kf64(&j, "half", 0.5);
  emd_json_obj_end(&j);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data, "{\"ok\":true,\"list\":[1,{},[],null],"
                      "\"neg\":-5,\"none\":null,\"half\":0.5}");
  emd_json_free(&j);
}

static void strings_escape_quotes_backslashes_and_controls(void **state)
{
  struct emd_json j = { 0 };

  emd_json_strn(&j, "a\"b\\c\n\r\t\b\f\x01\x1f\x7f/", 14);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data, "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f"
                      "\\u007f/\"");
  emd_json_free(&j);
}

static void strings_keep_valid_utf8_and_replace_invalid_bytes(void **state)
{
  struct emd_json j = { 0 };
  /* é, €, 😀 stay; a stray continuation, an overlong '/', a surrogate,
   * a cut sequence and 0xff each become U+FFFD. */
  const char in[] = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\x80|\xc0\xaf|"
                    "\xed\xa0\x80|\xff|\xe2\x82";

  emd_json_strn(&j, in, sizeof(in) - 1);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|"
    "\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
    "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd|"
    "\xef\xbf\xbd\xef\xbf\xbd\"");
  emd_json_free(&j);
}

static void strings_may_hold_nul_bytes(void **state)
{
  struct emd_json j = { 0 };

  emd_json_strn(&j, "a\0b", 3);
  assert_string_equal(j.t.data, "\"a\\u0000b\"");
  emd_json_free(&j);
}

static void numbers_cover_the_whole_range_and_nonfinite_is_null(void **state)
{
  struct emd_json j = { 0 };

  emd_json_arr_begin(&j);
  emd_json_u64(&j, UINT64_MAX);
  emd_json_i64(&j, INT64_MIN);
  emd_json_f64(&j, NAN);
  emd_json_f64(&j, INFINITY);
  emd_json_f64(&j, 1e21);
  emd_json_arr_end(&j);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data, "[18446744073709551615,"
                      "-9223372036854775808,null,null,1e+21]");
  emd_json_free(&j);
}

static void misuse_is_an_error_not_bad_output(void **state)
{
  struct emd_json j = { 0 };

  emd_json_obj_begin(&j);
  emd_json_u64(&j, 1);               /* a value without its key */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  emd_json_arr_begin(&j);
  emd_json_key(&j, "k");             /* a key in an array */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  emd_json_obj_begin(&j);
  emd_json_arr_end(&j);              /* the wrong end */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  emd_json_obj_begin(&j);
  emd_json_key(&j, "k");
  emd_json_obj_end(&j);              /* the key has no value */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  emd_json_obj_begin(&j);            /* never closed */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  emd_json_u64(&j, 1);
  emd_json_u64(&j, 2);               /* two documents */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  for (int i = 0; i <= EMD_JSON_MAX_DEPTH; i++)
    emd_json_arr_begin(&j);          /* too deep */
  assert_int_equal(emd_json_finish(&j), -EINVAL);
  emd_json_reset(&j);

  assert_int_equal(emd_json_finish(&j), -EINVAL);   /* nothing at all */
  emd_json_bool(&j, false);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data, "false");
  emd_json_free(&j);
}

/* Any bytes as a key and a value give a document that a strict parser
 * reads as one object of one member, and whose text is valid UTF-8. */
static void any_bytes_make_a_valid_document(void **state)
{
  unsigned seed = 12345;

  for (int round = 0; round < 2000; round++) {
    struct emd_json j = { 0 };
    unsigned char buf[64];
    char key[16];
    jsmn_parser p;
    jsmntok_t toks[8];
    size_t n = (size_t)(rand_r(&seed) % sizeof(buf)), i;
    int r;

    for (i = 0; i < n; i++)
      buf[i] = (unsigned char)rand_r(&seed);
    for (i = 0; i + 1 < sizeof(key); i++)
      key[i] = (char)(1 + rand_r(&seed) % 255);
    key[i] = '\0';
    emd_json_obj_begin(&j);
    emd_json_kstrn(&j, key, buf, n);
    emd_json_obj_end(&j);
    assert_int_equal(emd_json_finish(&j), 0);
    jsmn_init(&p);
    r = jsmn_parse(&p, j.t.data, j.t.len, toks, 8);
    assert_int_equal(r, 3);
    assert_int_equal(toks[0].type, JSMN_OBJECT);
    assert_int_equal(toks[0].end, (int)j.t.len);
    for (i = 0; i < j.t.len;) {
      size_t k = emd__utf8_len((const unsigned char *)j.t.data + i,
                               j.t.len - i);

      assert_true(k > 0);
      assert_true((unsigned char)j.t.data[i] >= 0x20);
      i += k;
    }
    emd_json_free(&j);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(text_grows_and_stays_nul_terminated),
    cmocka_unit_test(writer_places_commas_and_colons),
    cmocka_unit_test(strings_escape_quotes_backslashes_and_controls),
    cmocka_unit_test(strings_keep_valid_utf8_and_replace_invalid_bytes),
    cmocka_unit_test(strings_may_hold_nul_bytes),
    cmocka_unit_test(numbers_cover_the_whole_range_and_nonfinite_is_null),
    cmocka_unit_test(misuse_is_an_error_not_bad_output),
    cmocka_unit_test(any_bytes_make_a_valid_document),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
