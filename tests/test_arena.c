/* test_arena.c: lib/emd_arena.c, the bump allocator behind every decoded
 * event. Allocations are filled with a pattern of their own and checked
 * afterwards, so overlapping blocks fail the test; ASan sees the rest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emd_arena.h"
#include "emd_event.h"

#define ALIGN 16

struct block {
  unsigned char *p;
  size_t n;
  unsigned char fill;
};

static uint64_t rng = 0x243f6a8885a308d3u;

static uint64_t rng_next(void)
{
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545f4914f6cdd1du;
}

static void fill_block(struct block *b, unsigned char *p, size_t n,
                       unsigned char fill)
{
  b->p = p;
  b->n = n;
  b->fill = fill;
  memset(p, fill, n);
}

static void check_blocks(const struct block *b, size_t count)
{
  for (size_t i = 0; i < count; i++)
    for (size_t j = 0; j < b[i].n; j++)
      if (b[i].p[j] != b[i].fill)
        fail_msg("block %zu (%zu bytes) overwritten at %zu", i, b[i].n, j);
}

static void every_allocation_is_aligned_and_its_own(void **state)
{
  enum { COUNT = 4000 };
  struct emd_arena a = { 0 };
  struct block *b = calloc(COUNT, sizeof(*b));
  size_t total = 0;

  (void)state;
  assert_non_null(b);
  for (size_t i = 0; i < COUNT; i++) {
    /* Every small size, then random ones, some past a chunk. */
    size_t n = i < 300 ? i : (size_t)(rng_next() % (i % 50 ? 500 : 40000));
    unsigned char *p = emd_arena_alloc(&a, n);

    assert_non_null(p);
    if ((uintptr_t)p % ALIGN != 0)
      fail_msg("allocation %zu of %zu bytes at %p", i, n, (void *)p);
    fill_block(&b[i], p, n, (unsigned char)(i * 31 + 7));
    total += n;
  }
  check_blocks(b, COUNT);
  assert_int_equal(a.total, total);
  emd_arena_free(&a);
  free(b);
}

static void zero_byte_allocation_is_a_valid_pointer(void **state)
{
  struct emd_arena a = { 0 };
  void *p, *q;

  (void)state;
  p = emd_arena_alloc(&a, 0);          /* from an empty arena */
  assert_non_null(p);
  q = emd_arena_alloc(&a, 0);
  assert_non_null(q);
  assert_true((uintptr_t)p % ALIGN == 0 && (uintptr_t)q % ALIGN == 0);
  emd_arena_free(&a);
}

static void big_allocations_are_whole_and_small_ones_go_on(void **state)
{
  static const size_t sizes[] = {
    100, 8193, 100, 16384, 16385, 100, 1 << 20, 3, 5 << 20, 100, 16000,
  };
  enum { N = sizeof(sizes) / sizeof(sizes[0]) };
  struct emd_arena a = { 0 };
  struct block b[N];

  (void)state;
  for (size_t i = 0; i < N; i++) {
    unsigned char *p = emd_arena_alloc(&a, sizes[i]);

    assert_non_null(p);
    assert_true((uintptr_t)p % ALIGN == 0);
    fill_block(&b[i], p, sizes[i], (unsigned char)(0x40 + i));
  }
  check_blocks(b, N);
  /* A big one as the very first allocation. */
  emd_arena_free(&a);
  unsigned char *p = emd_arena_alloc(&a, 200000);
  assert_non_null(p);
  fill_block(&b[0], p, 200000, 0x11);
  p = emd_arena_alloc(&a, 10);
  assert_non_null(p);
  assert_true((uintptr_t)p % ALIGN == 0);
  fill_block(&b[1], p, 10, 0x22);
  check_blocks(b, 2);
  emd_arena_free(&a);
}

static void impossible_sizes_fail_and_the_arena_goes_on(void **state)
{
  struct emd_arena a = { 0 };
  char *p;

  (void)state;
  assert_non_null(emd_arena_alloc(&a, 10));
  assert_null(emd_arena_alloc(&a, SIZE_MAX));
  assert_null(emd_arena_alloc(&a, SIZE_MAX - 8));
  assert_null(emd_arena_calloc(&a, SIZE_MAX));
  p = emd_arena_strndup(&a, "still here", 10);
  assert_non_null(p);
  assert_string_equal(p, "still here");
  assert_int_equal(a.total, 10 + 11);
  emd_arena_free(&a);
}

static void reset_forgets_everything_and_keeps_working(void **state)
{
  struct emd_arena a = { 0 };
  struct block b[64];

  (void)state;
  for (int round = 0; round < 300; round++) {
    size_t count = (size_t)(rng_next() % 64) + 1;

    for (size_t i = 0; i < count; i++) {
      size_t n = (size_t)(rng_next() % (i % 16 ? 2000 : 70000));
      unsigned char *p = emd_arena_alloc(&a, n);

      assert_non_null(p);
      assert_true((uintptr_t)p % ALIGN == 0);
      fill_block(&b[i], p, n, (unsigned char)(round + i));
    }
    check_blocks(b, count);
    emd_arena_reset(&a);
    assert_int_equal(a.total, 0);
    assert_int_equal(a.used, 0);
  }
  emd_arena_free(&a);
}

static void reset_reuses_the_chunk_it_keeps(void **state)
{
  struct emd_arena a = { 0 };
  void *first, *again;

  (void)state;
  first = emd_arena_alloc(&a, 100);
  for (int i = 0; i < 10; i++)
    assert_non_null(emd_arena_alloc(&a, 100));
  emd_arena_reset(&a);
  again = emd_arena_alloc(&a, 100);
  /* The same memory, not a fresh malloc per event. */
  assert_ptr_equal(first, again);
  assert_int_equal(a.total, 100);
  emd_arena_free(&a);
}

static void calloc_zeroes_memory_that_was_used_before(void **state)
{
  struct emd_arena a = { 0 };
  unsigned char *p, *q;

  (void)state;
  p = emd_arena_alloc(&a, 1000);
  memset(p, 0xaa, 1000);
  q = emd_arena_alloc(&a, 50000);
  memset(q, 0xbb, 50000);
  emd_arena_reset(&a);
  p = emd_arena_calloc(&a, 1000);
  q = emd_arena_calloc(&a, 50000);
  assert_non_null(p);
  assert_non_null(q);
  for (size_t i = 0; i < 1000; i++)
    assert_int_equal(p[i], 0);
  for (size_t i = 0; i < 50000; i++)
    assert_int_equal(q[i], 0);
  assert_non_null(emd_arena_calloc(&a, 0));
  emd_arena_free(&a);
}

static void strndup_copies_n_bytes_and_adds_a_nul(void **state)
{
  struct emd_arena a = { 0 };
  char *p;

  (void)state;
  p = emd_arena_strndup(&a, "hello world", 5);
  assert_string_equal(p, "hello");
  p = emd_arena_strndup(&a, "", 0);
  assert_non_null(p);
  assert_string_equal(p, "");
  p = emd_arena_strndup(&a, "xyz", 0);
  assert_string_equal(p, "");
  /* n bytes are n bytes, NULs included (lengths come from the lexer). */
  p = emd_arena_strndup(&a, "a\0b", 3);
  assert_memory_equal(p, "a\0b\0", 4);
  emd_arena_free(&a);
}

static void free_leaves_an_empty_valid_arena(void **state)
{
  struct emd_arena a = { 0 };

  (void)state;
  emd_arena_free(&a);                  /* empty: nothing to do */
  emd_arena_reset(&a);
  assert_non_null(emd_arena_alloc(&a, 100000));
  assert_non_null(emd_arena_alloc(&a, 100));
  emd_arena_free(&a);
  assert_null(a.head);
  assert_int_equal(a.total, 0);
  assert_non_null(emd_arena_strndup(&a, "again", 5));
  emd_arena_free(&a);
  emd_arena_free(&a);
}

/* An event with nested messages, repeated fields, bytes and an Any. */
static size_t pack_sample(uint8_t **out)
{
  emd_event ev = BUILDLESS__SERVICE__V1__EVENT__INIT;
  emd_tevent te = BUILDLESS__TELEMETRY__TELEMETRY_EVENT__INIT;
  Buildless__Telemetry__EventContext ctx[3], *ctxp[3];
  Buildless__Telemetry__EventTiming timing =
    BUILDLESS__TELEMETRY__EVENT_TIMING__INIT;
  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  static uint8_t timer[16] = { 9, 8, 7, 6, 5, 4, 3, 2, 1 };
  static uint8_t value[3000];
  size_t n;

  for (int i = 0; i < 3; i++) {
    buildless__telemetry__event_context__init(&ctx[i]);
    ctx[i].type = "type.googleapis.com/buildless.context.Build";
    ctx[i].event = i == 0 ? "started" : i == 1 ? "step" : "finished";
    ctxp[i] = &ctx[i];
  }
  for (size_t i = 0; i < sizeof(value); i++)
    value[i] = (uint8_t)i;
  te.id = "01HXAMPLE0000000000000000A";
  te.user = "someone";
  te.n_context = 3;
  te.context = ctxp;
  timing.occurred = 1700000000000u;
  te.timing = &timing;
  te.timer.data = timer;
  te.timer.len = sizeof(timer);
  te.ordinal = 7;
  any.type_url = "type.example.com/x.Y";
  any.value.data = value;
  any.value.len = sizeof(value);
  te.data = &any;
  ev.collection = "builds";
  ev.scope = "ci-9";
  ev.event = &te;
  n = buildless__service__v1__event__get_packed_size(&ev);
  *out = malloc(n);
  assert_non_null(*out);
  assert_int_equal(buildless__service__v1__event__pack(&ev, *out), n);
  return n;
}

static void protobuf_c_unpacks_into_the_arena(void **state)
{
  struct emd_arena a = { 0 };
  uint8_t *buf;
  size_t n = pack_sample(&buf);

  (void)state;
  for (int round = 0; round < 200; round++) {
    emd_event *ev = buildless__service__v1__event__unpack(emd_arena_pb(&a),
                                                          n, buf);

    assert_non_null(ev);
    assert_true(a.total > n);          /* the message lives in the arena */
    assert_string_equal(ev->collection, "builds");
    assert_string_equal(ev->scope, "ci-9");
    assert_non_null(ev->event);
    assert_string_equal(ev->event->id, "01HXAMPLE0000000000000000A");
    assert_string_equal(ev->event->user, "someone");
    assert_int_equal(ev->event->n_context, 3);
    assert_string_equal(ev->event->context[2]->event, "finished");
    assert_int_equal(ev->event->timing->occurred, 1700000000000u);
    assert_int_equal(ev->event->timer.len, 16);
    assert_int_equal(ev->event->timer.data[0], 9);
    assert_int_equal(ev->event->ordinal, 7);
    assert_string_equal(ev->event->data->type_url, "type.example.com/x.Y");
    assert_int_equal(ev->event->data->value.len, 3000);
    assert_int_equal(ev->event->data->value.data[2999], (uint8_t)2999);
    /* Freeing through the adapter is a no-op; the reset frees. */
    buildless__service__v1__event__free_unpacked(ev, emd_arena_pb(&a));
    emd_arena_reset(&a);
  }
  /* A truncated message fails cleanly, the arena still usable. */
  assert_null(buildless__service__v1__event__unpack(emd_arena_pb(&a),
                                                    n - 1, buf));
  assert_non_null(emd_arena_alloc(&a, 10));
  emd_arena_free(&a);
  free(buf);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(every_allocation_is_aligned_and_its_own),
    cmocka_unit_test(zero_byte_allocation_is_a_valid_pointer),
    cmocka_unit_test(big_allocations_are_whole_and_small_ones_go_on),
    cmocka_unit_test(impossible_sizes_fail_and_the_arena_goes_on),
    cmocka_unit_test(reset_forgets_everything_and_keeps_working),
    cmocka_unit_test(reset_reuses_the_chunk_it_keeps),
    cmocka_unit_test(calloc_zeroes_memory_that_was_used_before),
    cmocka_unit_test(strndup_copies_n_bytes_and_adds_a_nul),
    cmocka_unit_test(free_leaves_an_empty_valid_arena),
    cmocka_unit_test(protobuf_c_unpacks_into_the_arena),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
