/* test_spool.c: lib/emd_spool.c against a real LMDB in a temp dir and a
 * real uv loop. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>
#include <uv.h>

#include "emd_err.h"
#include "emd_log.h"
#include "emd_spool.h"

#define MAXR 6000

/* Allocation failure on demand. test_spool is linked with
 * -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc, so the allocations of
 * emitd's own code (not those of LMDB, libuv or libc, which are shared
 * libraries) come here. Armed with n, the n-th allocation (from 0) made
 * by a thread other than the one that armed it (the spool's writer) or,
 * with oom_arm_here, by that thread itself (the loop), fails, once. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

static atomic_long oom_countdown = -1;
static atomic_bool oom_fired;
static pthread_t oom_armer;
static bool oom_here;

/* Which thread's allocations count is settled before the countdown is
 * armed: the other thread may allocate at any moment. */
static void oom_set(long n, bool here)
{
  oom_armer = pthread_self();
  oom_here = here;
  atomic_store(&oom_fired, false);
  atomic_store(&oom_countdown, n);
}

static void oom_arm(long n)
{
  oom_set(n, false);
}

static void oom_arm_here(long n)
{
  oom_set(n, true);
}

/* Disarms; returns whether the failure was injected. */
static bool oom_disarm(void)
{
  atomic_store(&oom_countdown, -1);
  return atomic_load(&oom_fired);
}

static bool oom_now(void)
{
  if (atomic_load(&oom_countdown) < 0 ||
      (pthread_equal(pthread_self(), oom_armer) != 0) != oom_here)
    return false;
  if (atomic_fetch_sub(&oom_countdown, 1) != 0)
    return false;
  atomic_store(&oom_fired, true);
  return true;
}

void *__wrap_malloc(size_t n)
{
  return oom_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
  return oom_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
  return oom_now() ? NULL : __real_realloc(p, n);
}

struct fx {
  char root[64];             /* mkdtemp */
  char dir[128];             /* root/spool */
  uv_loop_t loop;
  struct emd_config cfg;
  struct emd_spool *sp;
};

/* What the append callbacks saw, by append number. */
struct seen {
  int calls;
  int rc[MAXR];
  uint64_t seq[MAXR];
  uint32_t ordinal[MAXR];
  uint32_t index[MAXR];
  bool dup[MAXR];
};

struct app {
  struct seen *s;
  int i;
  emd_event *ev;
};

static void cfg_defaults(struct fx *f)
{
  memset(&f->cfg, 0, sizeof(f->cfg));
  f->cfg.spool.dir = f->dir;
  f->cfg.spool.sync = EMD_SYNC_ALWAYS;
  f->cfg.spool.sync_interval_ms = 100;
  f->cfg.spool.max_bytes = (uint64_t)1 << 30;
  f->cfg.spool.on_full = EMD_FULL_REJECT;
  f->cfg.spool.max_age_ms = 7ull * 24 * 3600 * 1000;
  f->cfg.spool.dead_max = 10000;
  f->cfg.spool.timer_ttl_ms = 24ull * 3600 * 1000;
  f->cfg.spool.dedup_window_ms = 10 * 60 * 1000;
}

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  strcpy(f->root, "/tmp/emd_spool_XXXXXX");
  assert_non_null(mkdtemp(f->root));
  snprintf(f->dir, sizeof(f->dir), "%s/spool", f->root);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  cfg_defaults(f);
  /* Keep the expected warnings (drop_oldest) out of the test output. */
  emd_log_setup(EMD_LOG_ERROR, EMD_LOG_TEXT, false, 2);
  *state = f;
  return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void close_spool(struct fx *f)
{
  emd_spool_close(f->sp);
  f->sp = NULL;
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
}

static int teardown(void **state)
{
  struct fx *f = *state;

  if (f->sp != NULL)
    close_spool(f);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  nftw(f->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

static void open_spool(struct fx *f)
{
  char err[256] = "";
  int rc = emd_spool_open(&f->loop, &f->cfg, &f->sp, err, sizeof(err));

  if (rc != 0)
    fail_msg("open: %d %s", rc, err);
}

static void on_timeout(uv_timer_t *t)
{
  (void)t;
}

/* Runs the loop for about ms (the spool's own handles do not keep it
 * alive while idle). */
static void run_for(struct fx *f, uint64_t ms)
{
  uv_timer_t t;

  uv_timer_init(&f->loop, &t);
  uv_timer_start(&t, on_timeout, ms, 0);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
}

static void drain(struct fx *f)
{
  uv_run(&f->loop, UV_RUN_DEFAULT);
}

/* An event in the spool's arena: id, timer (tlen 0: none), the client's
 * ordinal and index, and a user string of pad bytes. */
static emd_event *mk_event(struct emd_spool *sp, const char *id,
                           const char *timer, uint32_t ordinal,
                           uint32_t index, size_t pad)
{
  struct emd_arena *a = emd_spool_arena(sp);
  emd_event *ev = emd_arena_alloc(a, sizeof(*ev));
  emd_tevent *te = emd_arena_alloc(a, sizeof(*te));

  assert_non_null(ev);
  assert_non_null(te);
  *ev = (emd_event)BUILDLESS__SERVICE__V1__EVENT__INIT;
  *te = (emd_tevent)BUILDLESS__TELEMETRY__TELEMETRY_EVENT__INIT;
  ev->collection = "tests";
  ev->index = index;
  ev->event = te;
  te->id = emd_arena_strndup(a, id, strlen(id));
  if (timer != NULL) {
    /* 16 bytes, like the timers emitd makes. */
    uint8_t *t = emd_arena_calloc(a, EMD_TIMER_LEN);

    memcpy(t, timer, strlen(timer) < 16 ? strlen(timer) : 16);
    te->timer.data = t;
    te->timer.len = EMD_TIMER_LEN;
  }
  te->ordinal = ordinal;
  if (pad > 0) {
    char *u = emd_arena_alloc(a, pad + 1);

    memset(u, 'u', pad);
    u[pad] = '\0';
    te->user = u;
  }
  return ev;
}

static void on_appended(void *data, const struct emd_spool_result *res)
{
  struct app *a = data;
  struct seen *s = a->s;

  s->calls++;
  s->rc[a->i] = res->rc;
  s->seq[a->i] = res->seq;
  s->ordinal[a->i] = res->ordinal;
  s->dup[a->i] = res->duplicate;
  s->index[a->i] = res->index;
  free(a);
}

/* Appends event i; its result lands in s at i. */
static void append(struct fx *f, struct seen *s, int i, const char *id,
                   const char *timer, uint32_t ordinal, uint32_t index,
                   size_t pad)
{
  struct app *a = calloc(1, sizeof(*a));

  assert_non_null(a);
  a->s = s;
  a->i = i;
  a->ev = mk_event(f->sp, id, timer, ordinal, index, pad);
  assert_int_equal(emd_spool_append(f->sp, a->ev, on_appended, a), 0);
}

static void idn(char *buf, size_t n, int i)
{
  snprintf(buf, n, "event%08dxyz", i);
}

/* Collects what emd_spool_read hands out. */
struct got {
  int n;
  int stop_after;            /* 0: never stop */
  uint64_t seq[MAXR];
  uint32_t attempts[MAXR];
  uint64_t accepted[MAXR];
  char id[MAXR][65];
  uint32_t ordinal[MAXR];
  size_t len[MAXR];
  bool noted[MAXR];          /* the entry came with its id */
};

static int on_entry(void *data, const struct emd_spool_entry *e)
{
  struct got *g = data;
  emd_event *ev;

  ev = buildless__service__v1__event__unpack(NULL, e->event_len, e->event);
  assert_non_null(ev);
  assert_non_null(ev->event);
  g->seq[g->n] = e->seq;
  g->attempts[g->n] = e->attempts;
  g->accepted[g->n] = e->accepted_ms;
  g->len[g->n] = e->event_len;
  snprintf(g->id[g->n], sizeof(g->id[0]), "%s", ev->event->id);
  if (e->id != NULL) {               /* where the spool noted it */
    assert_true(e->id >= e->event &&
                e->id + e->id_len <= e->event + e->event_len);
    assert_int_equal(e->id_len, strlen(ev->event->id));
    assert_memory_equal(e->id, ev->event->id, e->id_len);
  }
  g->noted[g->n] = e->id != NULL;
  g->ordinal[g->n] = ev->event->ordinal;
  buildless__service__v1__event__free_unpacked(ev, NULL);
  g->n++;
  return g->stop_after != 0 && g->n >= g->stop_after;
}

static struct got *read_all(struct fx *f, uint64_t after, size_t max_events,
                            size_t max_bytes, int *rc)
{
  struct got *g = calloc(1, sizeof(*g));

  assert_non_null(g);
  *rc = emd_spool_read(f->sp, after, max_events, max_bytes, on_entry, g);
  return g;
}

static struct emd_spool_stats stats(struct fx *f)
{
  struct emd_spool_stats st;

  emd_spool_stats(f->sp, &st);
  return st;
}

/* What the writer stores for an event packed on append (the ordinal and
 * index it settles put in): the Event with its final ordinal and index,
 * in protobuf-c's own bytes. */
static int on_stored(void *data, const struct emd_spool_entry *e)
{
  struct got *g = data;
  emd_event *ev;
  uint8_t *again;
  size_t n;

  ev = buildless__service__v1__event__unpack(NULL, e->event_len, e->event);
  assert_non_null(ev);
  n = buildless__service__v1__event__get_packed_size(ev);
  again = malloc(n + 1);
  assert_non_null(again);
  assert_int_equal(buildless__service__v1__event__pack(ev, again), n);
  assert_int_equal(n, e->event_len);
  assert_memory_equal(again, e->event, n);
  free(again);
  g->seq[g->n] = e->seq;
  g->ordinal[g->n] = ev->event->ordinal;
  g->attempts[g->n] = ev->index;             /* (index, in a spare slot) */
  g->len[g->n] = ev->event->base.n_unknown_fields;
  buildless__service__v1__event__free_unpacked(ev, NULL);
  g->n++;
  return 0;
}

static void stored_events_carry_their_final_ordinal_and_index(void **state)
{
  static const uint8_t unk[] = { 0x96, 0x01 };
  static ProtobufCMessageUnknownField u = {
    1000, PROTOBUF_C_WIRE_TYPE_VARINT, 2, (uint8_t *)unk
  };
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct got *g = calloc(1, sizeof(*g));
  struct app *a;
  char id[32];
  int n = 0;

  open_spool(f);
  idn(id, sizeof(id), n);
  append(f, s, n++, id, "A", 0, 0, 0);       /* 1: ordinal 1, index 1 */
  idn(id, sizeof(id), n);
  append(f, s, n++, id, "A", 0, 7, 0);       /* 2: ordinal 2, index 7 */
  idn(id, sizeof(id), n);
  append(f, s, n++, id, "A", 500, 0, 0);     /* 3: client's 500, index 500 */
  idn(id, sizeof(id), n);
  append(f, s, n++, id, NULL, 0, 0, 0);      /* 4: no timer: 0, 0 */
  /* unknown fields: refused at once (the ingest drops or refuses them
   * first), nothing queued, the callback never runs */
  idn(id, sizeof(id), 999);
  a = calloc(1, sizeof(*a));
  assert_non_null(a);
  a->ev = mk_event(f->sp, id, "A", 0, 0, 30);
  a->ev->event->base.n_unknown_fields = 1;
  a->ev->event->base.unknown_fields = &u;
  assert_int_equal(emd_spool_append(f->sp, a->ev, on_appended, a),
                   EMD_EINVALID);
  free(a);
  /* an event's memory may go as soon as it is appended */
  idn(id, sizeof(id), n);
  a = calloc(1, sizeof(*a));
  assert_non_null(a);
  a->s = s;
  a->i = n++;
  a->ev = mk_event(f->sp, id, "A", 0, 0, 30);  /* 5: ordinal 3, index 3 */
  assert_int_equal(emd_spool_append(f->sp, a->ev, on_appended, a), 0);
  memset(a->ev->event, 0x5a, sizeof(*a->ev->event));
  memset(a->ev, 0x5a, sizeof(*a->ev));
  /* then ordinals of one, two and three varint bytes */
  for (int i = 0; i < 200; i++) {
    idn(id, sizeof(id), n);
    append(f, s, n++, id, "C", 0, i % 3 ? 0 : 20000 + (uint32_t)i, 0);
  }
  drain(f);
  for (int i = 0; i < n; i++)
    assert_int_equal(s->rc[i], 0);
  assert_int_equal(emd_spool_read(f->sp, 0, MAXR, SIZE_MAX, on_stored, g),
                   n);
  assert_int_equal(g->ordinal[0], 1);
  assert_int_equal(g->attempts[0], 1);
  assert_int_equal(g->ordinal[1], 2);
  assert_int_equal(g->attempts[1], 7);
  assert_int_equal(g->ordinal[2], 500);
  assert_int_equal(g->attempts[2], 500);
  assert_int_equal(g->ordinal[3], 0);
  assert_int_equal(g->attempts[3], 0);
  assert_int_equal(g->ordinal[4], 3);
  assert_int_equal(g->attempts[4], 3);
  assert_int_equal(g->len[4], 0);
  for (int i = 0; i < 200; i++) {
    assert_int_equal(g->ordinal[5 + i], (uint32_t)i + 1);
    assert_int_equal(g->attempts[5 + i],
                     i % 3 ? (uint32_t)i + 1 : 20000 + (uint32_t)i);
    assert_int_equal(s->ordinal[5 + i], (uint32_t)i + 1);
  }
  free(g);
  free(s);
}

/* ---- durability and numbering ---------------------------------------- */

struct visible {
  struct fx *f;
  int calls;
  bool seen_in_spool;
};

static int find_seq(void *data, const struct emd_spool_entry *e)
{
  uint64_t *want = data;

  if (e->seq == *want)
    *want = 0;
  return 0;
}

static void on_visible(void *data, const struct emd_spool_result *res)
{
  struct visible *v = data;
  uint64_t want = res->seq;

  assert_int_equal(res->rc, 0);
  v->calls++;
  /* A fresh reader on the loop thread sees the event: it was committed
   * before this reply. */
  assert_true(emd_spool_read(v->f->sp, 0, 100, SIZE_MAX, find_seq,
                             &want) >= 1);
  v->seen_in_spool = want == 0;
  /* The figures already include this commit. */
  struct emd_spool_stats st;

  emd_spool_stats(v->f->sp, &st);
  assert_true(st.pending >= 1);
  assert_true(st.next_seq > res->seq);
}

static void append_replies_only_after_commit(void **state)
{
  struct fx *f = *state;
  struct visible v = { f, 0, false };
  int rc;
  struct got *g;

  open_spool(f);
  assert_int_equal(emd_spool_append(f->sp,
                                    mk_event(f->sp, "aaaaaaaaaaaa1", "T", 0,
                                             0, 10),
                                    on_visible, &v),
                   0);
  assert_int_equal(v.calls, 0);          /* never from inside append */
  g = read_all(f, 0, 100, SIZE_MAX, &rc);
  assert_int_equal(rc, 0);               /* not committed yet */
  free(g);
  drain(f);
  assert_int_equal(v.calls, 1);
  assert_true(v.seen_in_spool);
  assert_int_equal(stats(f).pending, 1);
  assert_int_equal(stats(f).commits, 1);
}

static void seqs_grow_and_ordinals_count_per_timer(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  const char *timers[] = { "A", "A", "B", "A", "B", "C" };
  const uint32_t want[] = { 1, 2, 1, 3, 2, 1 };
  char id[32];

  open_spool(f);
  for (int i = 0; i < 6; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, timers[i], 0, 0, 0);
  }
  drain(f);
  assert_int_equal(s->calls, 6);
  for (int i = 0; i < 6; i++) {
    assert_int_equal(s->rc[i], 0);
    assert_int_equal(s->seq[i], (uint64_t)i + 1);
    assert_int_equal(s->ordinal[i], want[i]);
    assert_int_equal(s->index[i], want[i]);   /* index was 0 */
  }
  /* A later group continues the counters. */
  idn(id, sizeof(id), 6);
  append(f, s, 6, id, "B", 0, 0, 0);
  drain(f);
  assert_int_equal(s->ordinal[6], 3);
  assert_int_equal(s->seq[6], 7);
  assert_int_equal(stats(f).next_seq, 8);
  free(s);
}

static void client_ordinal_is_kept_without_moving_the_counter(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct got *g;
  int rc;

  open_spool(f);
  append(f, s, 0, "ordinalevent0", "A", 0, 0, 0);
  append(f, s, 1, "ordinalevent1", "A", 77, 0, 0);   /* client's own */
  append(f, s, 2, "ordinalevent2", "A", 0, 5, 0);    /* client's index */
  append(f, s, 3, "ordinalevent3", NULL, 0, 0, 0);   /* no timer */
  drain(f);
  assert_int_equal(s->ordinal[0], 1);
  assert_int_equal(s->index[0], 1);
  assert_int_equal(s->ordinal[1], 77);
  assert_int_equal(s->index[1], 77);      /* index follows the ordinal */
  assert_int_equal(s->ordinal[2], 2);     /* 77 did not move the counter */
  assert_int_equal(s->index[2], 5);       /* a set index is kept */
  assert_int_equal(s->ordinal[3], 0);
  assert_int_equal(s->index[3], 0);
  /* What was stored carries the same ordinals. */
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 4);
  assert_int_equal(g->ordinal[0], 1);
  assert_int_equal(g->ordinal[1], 77);
  assert_int_equal(g->ordinal[2], 2);
  free(g);
  free(s);
}

static void duplicate_id_answers_the_original_seq_and_is_stored_once(
    void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));

  open_spool(f);
  append(f, s, 0, "duplicateid01", "A", 0, 0, 0);
  drain(f);
  append(f, s, 1, "duplicateid01", "A", 0, 0, 0);    /* a later group */
  append(f, s, 2, "duplicateid02", "A", 0, 0, 0);
  append(f, s, 3, "duplicateid02", "A", 0, 0, 0);    /* the same group */
  drain(f);
  assert_int_equal(s->calls, 4);
  assert_false(s->dup[0]);
  assert_true(s->dup[1]);
  assert_int_equal(s->rc[1], 0);
  assert_int_equal(s->seq[1], s->seq[0]);
  assert_false(s->dup[2]);
  assert_true(s->dup[3]);
  assert_int_equal(s->seq[3], s->seq[2]);
  assert_int_equal(s->ordinal[2], 2);     /* duplicates took no ordinal */
  assert_int_equal(stats(f).pending, 2);
  append(f, s, 4, "duplicateid03", "A", 0, 0, 0);
  drain(f);
  assert_int_equal(s->ordinal[4], 3);
  free(s);
}

static void counters_and_instance_id_survive_reopen(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  uint8_t inst[16];
  char id[32];

  open_spool(f);
  memcpy(inst, emd_spool_instance_id(f->sp), 16);
  for (int i = 0; i < 3; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 100);
  }
  drain(f);
  close_spool(f);

  open_spool(f);
  assert_memory_equal(emd_spool_instance_id(f->sp), inst, 16);
  assert_int_equal(stats(f).pending, 3);
  assert_int_equal(stats(f).next_seq, 4);
  assert_true(stats(f).oldest_ms > 0);
  idn(id, sizeof(id), 3);
  append(f, s, 3, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 0);
  append(f, s, 4, id, "A", 0, 0, 0);       /* still known after reopen */
  drain(f);
  assert_int_equal(s->ordinal[3], 4);      /* no ordinal handed out twice */
  assert_int_equal(s->seq[3], 4);
  assert_true(s->dup[4]);
  assert_int_equal(s->seq[4], 1);
  free(s);
}

/* ---- reading ---------------------------------------------------------- */

static void read_honours_after_max_events_and_max_bytes(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct got *g;
  char id[32];
  int rc;

  open_spool(f);
  for (int i = 0; i < 10; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 50);
  }
  drain(f);
  g = read_all(f, 0, 100, SIZE_MAX, &rc);
  assert_int_equal(rc, 10);
  for (int i = 0; i < 10; i++) {
    idn(id, sizeof(id), i);
    assert_int_equal(g->seq[i], (uint64_t)i + 1);
    assert_string_equal(g->id[i], id);
    assert_int_equal(g->attempts[i], 0);
    assert_true(g->accepted[i] > 0);
  }
  size_t one = g->len[0];
  free(g);

  g = read_all(f, 3, 4, SIZE_MAX, &rc);
  assert_int_equal(rc, 4);
  assert_int_equal(g->seq[0], 4);
  assert_int_equal(g->seq[3], 7);
  free(g);

  g = read_all(f, 0, 100, 2 * one + one / 2, &rc);
  assert_int_equal(rc, 2);
  free(g);
  g = read_all(f, 0, 100, 1, &rc);       /* the first always goes */
  assert_int_equal(rc, 1);
  free(g);
  g = read_all(f, 10, 100, SIZE_MAX, &rc);
  assert_int_equal(rc, 0);
  free(g);

  g = calloc(1, sizeof(*g));
  g->stop_after = 3;
  assert_int_equal(emd_spool_read(f->sp, 0, 100, SIZE_MAX, on_entry, g), 3);
  free(g);
  free(s);
}

/* ---- outcomes --------------------------------------------------------- */

struct listed {
  int n;
  uint64_t seq[64];
  char reason[64][16];
  unsigned status[64];
  char excerpt[64][600];
  size_t excerpt_len[64];
  char id[64][65];
  uint32_t attempts[64];
};

static int on_item(void *data, const struct emd_spool_item *it)
{
  struct listed *l = data;
  int i = l->n++;

  l->seq[i] = it->seq;
  l->status[i] = it->status;
  l->attempts[i] = it->attempts;
  snprintf(l->id[i], sizeof(l->id[i]), "%.*s", (int)it->id_len, it->id);
  if (it->reason != NULL)
    snprintf(l->reason[i], sizeof(l->reason[i]), "%.*s",
             (int)it->reason_len, it->reason);
  l->excerpt_len[i] = it->excerpt_len;
  if (it->excerpt_len > 0)
    memcpy(l->excerpt[i], it->excerpt, it->excerpt_len);
  return 0;
}

static void delete_attempted_and_dead_do_what_they_say(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct listed *l = calloc(1, sizeof(*l));
  char big[700];
  struct got *g;
  char id[32];
  int rc;

  open_spool(f);
  for (int i = 0; i < 4; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 20);
  }
  drain(f);
  uint64_t bytes0 = stats(f).pending_bytes;

  assert_int_equal(emd_spool_attempted(f->sp, (uint64_t[]){ 1, 1, 2 }, 3),
                   0);
  drain(f);
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 4);
  assert_int_equal(g->attempts[0], 2);
  assert_int_equal(g->attempts[1], 1);
  assert_int_equal(g->attempts[2], 0);
  free(g);
  assert_true(stats(f).pending_bytes > bytes0);   /* attempts take bytes */

  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1, 99 }, 2), 0);
  memset(big, 'x', sizeof(big));
  assert_int_equal(emd_spool_dead(f->sp, 2, "rejected", 400, big,
                                  sizeof(big)), 0);
  assert_int_equal(emd_spool_dead(f->sp, 3, "status", 0, NULL, 0), 0);
  drain(f);
  assert_int_equal(stats(f).pending, 1);
  assert_int_equal(stats(f).dead, 2);
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 1);
  assert_int_equal(g->seq[0], 4);
  free(g);

  assert_int_equal(emd_spool_list_dead(f->sp, 10, on_item, l), 2);
  assert_int_equal(l->seq[0], 2);
  assert_string_equal(l->reason[0], "rejected");
  assert_int_equal(l->status[0], 400);
  assert_int_equal(l->excerpt_len[0], 512);       /* cut at 512 */
  idn(id, sizeof(id), 1);
  assert_string_equal(l->id[0], id);
  assert_int_equal(l->attempts[0], 1);
  assert_string_equal(l->reason[1], "status");
  assert_int_equal(l->excerpt_len[1], 0);

  memset(l, 0, sizeof(*l));
  assert_int_equal(emd_spool_list_pending(f->sp, 10, on_item, l), 1);
  assert_int_equal(l->seq[0], 4);
  assert_string_equal(l->reason[0], "");   /* pending: no reason */
  assert_int_equal(l->attempts[0], 0);

  /* A delivered id is still a duplicate within dedup_window. */
  idn(id, sizeof(id), 0);
  append(f, s, 10, id, "A", 0, 0, 0);
  drain(f);
  assert_true(s->dup[10]);
  assert_int_equal(s->seq[10], 1);
  /* And so is a dead one. */
  idn(id, sizeof(id), 1);
  append(f, s, 11, id, "A", 0, 0, 0);
  drain(f);
  assert_true(s->dup[11]);
  free(l);
  free(s);
}

static void dead_max_keeps_only_the_newest(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct listed *l = calloc(1, sizeof(*l));
  char id[32];

  f->cfg.spool.dead_max = 2;
  open_spool(f);
  for (int i = 0; i < 4; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 0);
  }
  drain(f);
  for (uint64_t seq = 1; seq <= 4; seq++)
    assert_int_equal(emd_spool_dead(f->sp, seq, "rejected", 422, "no", 2),
                     0);
  drain(f);
  assert_int_equal(stats(f).dead, 2);
  assert_int_equal(stats(f).pending, 0);
  assert_int_equal(emd_spool_list_dead(f->sp, 10, on_item, l), 2);
  assert_int_equal(l->seq[0], 3);
  assert_int_equal(l->seq[1], 4);
  /* The evicted letter's id is forgotten: it may come again. */
  idn(id, sizeof(id), 0);
  append(f, s, 4, id, "A", 0, 0, 0);
  drain(f);
  assert_false(s->dup[4]);
  assert_int_equal(s->seq[4], 5);
  free(l);
  free(s);
}

struct counted {
  int calls;
  int rc;
  uint64_t n;
};

static void on_count(void *data, int rc, uint64_t n)
{
  struct counted *c = data;

  c->calls++;
  c->rc = rc;
  c->n = n;
}

static void dead_retry_and_purge_work_on_dead_letters(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct counted c1 = { 0 }, c2 = { 0 }, c3 = { 0 };
  struct got *g;
  char id[32];
  int rc;

  open_spool(f);
  for (int i = 0; i < 3; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 0);
  }
  drain(f);
  assert_int_equal(emd_spool_attempted(f->sp, (uint64_t[]){ 1 }, 1), 0);
  for (uint64_t seq = 1; seq <= 3; seq++)
    assert_int_equal(emd_spool_dead(f->sp, seq, "rejected", 400, NULL, 0),
                     0);
  drain(f);
  assert_int_equal(emd_spool_dead_retry(f->sp, 1, on_count, &c1), 0);
  assert_int_equal(emd_spool_dead_retry(f->sp, 42, on_count, &c2), 0);
  drain(f);
  assert_int_equal(c1.calls, 1);
  assert_int_equal(c1.rc, 0);
  assert_int_equal(c1.n, 1);
  assert_int_equal(c2.rc, EMD_ENOTFOUND);
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 1);
  assert_int_equal(g->seq[0], 4);          /* a new seq, after the rest */
  assert_int_equal(g->attempts[0], 0);
  idn(id, sizeof(id), 0);
  assert_string_equal(g->id[0], id);
  free(g);
  assert_int_equal(stats(f).dead, 2);

  assert_int_equal(emd_spool_dead_purge(f->sp, on_count, &c3), 0);
  drain(f);
  assert_int_equal(c3.n, 2);
  assert_int_equal(stats(f).dead, 0);
  /* Purged ids are forgotten; the retried one is pending again. */
  idn(id, sizeof(id), 2);
  append(f, s, 3, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 0);
  append(f, s, 4, id, "A", 0, 0, 0);
  drain(f);
  assert_false(s->dup[3]);
  assert_true(s->dup[4]);
  assert_int_equal(s->seq[4], 4);
  free(s);
}

/* ---- bounds ---------------------------------------------------------- */

/* The pending bytes of one record with pad 100 (the ids used here all
 * have the same length). */
static uint64_t one_record(struct fx *f)
{
  struct seen *s = calloc(1, sizeof(*s));
  uint64_t n;

  open_spool(f);
  append(f, s, 0, "sizingevent00", "A", 0, 0, 100);
  drain(f);
  n = stats(f).pending_bytes;
  close_spool(f);
  nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(s);
  return n;
}

static void on_full_reject_refuses_what_does_not_fit(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  uint64_t one = one_record(f);
  char id[32];

  f->cfg.spool.max_bytes = 2 * one + one / 2;
  open_spool(f);
  for (int i = 0; i < 4; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 100);
  }
  drain(f);
  assert_int_equal(s->calls, 4);
  assert_int_equal(s->rc[0], 0);
  assert_int_equal(s->rc[1], 0);
  assert_int_equal(s->rc[2], EMD_ESPOOLFULL);
  assert_int_equal(s->rc[3], EMD_ESPOOLFULL);
  assert_int_equal(stats(f).pending, 2);
  assert_true(emd_spool_has_room(f->sp));  /* reject never blocks */
  /* Refused events took no ordinal, and their ids are not known. */
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1 }, 1), 0);
  drain(f);
  idn(id, sizeof(id), 2);
  append(f, s, 4, id, "A", 0, 0, 100);
  drain(f);
  assert_int_equal(s->rc[4], 0);
  assert_false(s->dup[4]);
  assert_int_equal(s->ordinal[4], 3);
  free(s);
}

static void on_full_drop_oldest_evicts_and_counts(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct listed *l = calloc(1, sizeof(*l));
  uint64_t one = one_record(f);
  struct got *g;
  char id[32];
  int rc;

  f->cfg.spool.max_bytes = 2 * one + one / 2;
  f->cfg.spool.on_full = EMD_FULL_DROP_OLDEST;
  open_spool(f);
  for (int i = 0; i < 5; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 100);
  }
  drain(f);
  for (int i = 0; i < 5; i++)
    assert_int_equal(s->rc[i], 0);
  assert_int_equal(stats(f).pending, 2);
  assert_int_equal(stats(f).dropped, 3);
  assert_true(stats(f).pending_bytes <= f->cfg.spool.max_bytes);
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 2);
  assert_int_equal(g->seq[0], 4);
  assert_int_equal(g->seq[1], 5);
  free(g);
  assert_int_equal(emd_spool_list_dead(f->sp, 10, on_item, l), 3);
  assert_string_equal(l->reason[0], "dropped");
  assert_int_equal(l->seq[0], 1);
  free(l);
  free(s);
}

/* One group that mixes runs of appends with everything else that changes
 * pending: deletes, attempts, dead letters, and evictions for room (the
 * writer keeps a cursor at the end of pending for a run of appends). Each
 * event lands once, in seq order, and reads back as itself. */
static void appends_mixed_with_other_changes_in_one_group(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  uint64_t one = one_record(f), last = 0;
  struct got *g;
  char id[32];
  int rc, n = 0;

  assert_non_null(s);
  f->cfg.spool.max_bytes = 400 * one;
  f->cfg.spool.on_full = EMD_FULL_DROP_OLDEST;
  open_spool(f);
  for (; n < 300; n++) {
    idn(id, sizeof(id), n);
    append(f, s, n, id, n % 2 ? "A" : "B", 0, 0, 100);
  }
  drain(f);
  /* one loop turn, so one group */
  for (int round = 0; round < 40; round++) {
    uint64_t base = (uint64_t)round * 7;

    for (int j = 0; j < 50; j++, n++) {
      idn(id, sizeof(id), n);
      append(f, s, n, id, n % 2 ? "A" : "B", 0, 0, 100);
    }
    assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ base + 1,
                                                           base + 2 }, 2), 0);
    assert_int_equal(emd_spool_attempted(f->sp, (uint64_t[]){ base + 3 },
                                         1), 0);
    assert_int_equal(emd_spool_dead(f->sp, base + 4, "rejected", 400, NULL,
                                    0), 0);
  }
  drain(f);
  assert_int_equal(s->calls, n);
  for (int i = 0; i < n; i++) {
    assert_int_equal(s->rc[i], 0);
    assert_false(s->dup[i]);
    assert_int_equal(s->seq[i], (uint64_t)i + 1);
  }
  assert_true(stats(f).dropped > 0);            /* evictions came between */
  assert_true(stats(f).pending_bytes <= f->cfg.spool.max_bytes);
  g = read_all(f, 0, MAXR, SIZE_MAX, &rc);
  assert_int_equal(rc, (int)stats(f).pending);
  for (int i = 0; i < g->n; i++) {
    assert_true(g->seq[i] > last);
    last = g->seq[i];
    idn(id, sizeof(id), (int)g->seq[i] - 1);
    assert_string_equal(g->id[i], id);
  }
  assert_int_equal(last, (uint64_t)n);         /* the newest is there */
  free(g);
  free(s);
}

static void on_changed(void *data)
{
  (*(int *)data)++;
}

static void on_full_block_accepts_and_stops_reading_until_room(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  uint64_t one = one_record(f);
  int changed = 0;
  char id[32];

  f->cfg.spool.max_bytes = 2 * one + one / 2;
  f->cfg.spool.on_full = EMD_FULL_BLOCK;
  open_spool(f);
  emd_spool_set_changed_cb(f->sp, on_changed, &changed);
  assert_true(emd_spool_has_room(f->sp));
  for (int i = 0; i < 3; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 100);
  }
  drain(f);
  for (int i = 0; i < 3; i++)
    assert_int_equal(s->rc[i], 0);
  assert_false(emd_spool_has_room(f->sp));
  assert_true(changed >= 1);
  changed = 0;
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1, 2 }, 2), 0);
  drain(f);
  assert_true(emd_spool_has_room(f->sp));
  assert_true(changed >= 1);

  /* Room again by a reconfigure alone also tells the ingest. */
  idn(id, sizeof(id), 3);
  append(f, s, 3, id, "A", 0, 0, 100);
  idn(id, sizeof(id), 4);
  append(f, s, 4, id, "A", 0, 0, 100);
  drain(f);
  assert_false(emd_spool_has_room(f->sp));
  changed = 0;
  f->cfg.spool.max_bytes = 100 * one;
  emd_spool_reconfigure(f->sp, &f->cfg);
  drain(f);
  assert_true(emd_spool_has_room(f->sp));
  assert_int_equal(changed, 1);
  free(s);
}

static void on_counted(void *data, const struct emd_spool_result *res)
{
  int *n = data;

  assert_int_equal(res->rc, 0);
  (*n)++;
}

static void a_writer_far_behind_stops_the_ingest_until_it_catches_up(
    void **state)
{
  struct fx *f = *state;
  int done = 0, changed = 0;
  char id[32];

  open_spool(f);
  emd_spool_set_changed_cb(f->sp, on_changed, &changed);
  for (int i = 0; i < 65536; i++) {
    assert_true(emd_spool_has_room(f->sp));
    idn(id, sizeof(id), i);
    assert_int_equal(emd_spool_append(f->sp,
                                      mk_event(f->sp, id, "A", 0, 0, 0),
                                      on_counted, &done),
                     0);
  }
  /* 65536 events wait in one group: the ingest should stop reading. */
  assert_false(emd_spool_has_room(f->sp));
  drain(f);
  assert_int_equal(done, 65536);
  assert_true(emd_spool_has_room(f->sp));
  assert_true(changed >= 1);
  assert_int_equal(stats(f).pending, 65536);
}

/* ---- time ------------------------------------------------------------- */

static void max_age_moves_old_events_to_dead_letters(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct listed *l = calloc(1, sizeof(*l));
  char id[32];

  f->cfg.spool.max_age_ms = 100;
  open_spool(f);
  for (int i = 0; i < 3; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 0);
  }
  drain(f);
  assert_int_equal(stats(f).pending, 3);
  run_for(f, 400);
  assert_int_equal(stats(f).pending, 0);
  assert_int_equal(stats(f).expired, 3);
  assert_int_equal(stats(f).dead, 3);
  assert_int_equal(stats(f).oldest_ms, 0);
  assert_int_equal(emd_spool_list_dead(f->sp, 10, on_item, l), 3);
  assert_string_equal(l->reason[0], "expired");
  free(l);
  free(s);
}

static void dedup_window_forgets_delivered_ids(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));

  f->cfg.spool.dedup_window_ms = 100;
  open_spool(f);
  append(f, s, 0, "windowevent01", "A", 0, 0, 0);
  drain(f);
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1 }, 1), 0);
  drain(f);
  append(f, s, 1, "windowevent01", "A", 0, 0, 0);
  drain(f);
  assert_true(s->dup[1]);                 /* delivered, within the window */
  run_for(f, 400);
  append(f, s, 2, "windowevent01", "A", 0, 0, 0);
  drain(f);
  assert_false(s->dup[2]);                /* forgotten after it */
  assert_int_equal(s->seq[2], 2);
  free(s);
}

/* Deliveries out of seq order (a retried batch after a later one): every
 * delivered id is still known, whichever order its row went in. */
static void delivered_out_of_order_stay_known(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  char id[32];

  open_spool(f);
  for (int i = 0; i < 6; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 0);
  }
  drain(f);
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 4, 6 }, 2), 0);
  drain(f);
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1, 5, 2, 3 }, 4),
                   0);
  drain(f);
  assert_int_equal(stats(f).pending, 0);
  for (int i = 0; i < 6; i++) {
    idn(id, sizeof(id), i);
    append(f, s, 6 + i, id, "A", 0, 0, 0);
  }
  drain(f);
  for (int i = 0; i < 6; i++) {
    assert_true(s->dup[6 + i]);
    assert_int_equal(s->seq[6 + i], i + 1);
  }
  free(s);
}

static void timer_ttl_forgets_idle_counters(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  const char *timers[] = { "A", "B", "C" };
  char id[32];
  int n = 0;

  f->cfg.spool.timer_ttl_ms = 100;
  open_spool(f);
  for (int r = 0; r < 2; r++)
    for (int t = 0; t < 3; t++) {
      idn(id, sizeof(id), n);
      append(f, s, n, id, timers[t], 0, 0, 0);
      n++;
    }
  drain(f);
  assert_int_equal(s->ordinal[5], 2);
  run_for(f, 400);
  for (int t = 0; t < 3; t++) {
    idn(id, sizeof(id), n);
    append(f, s, n, id, timers[t], 0, 0, 0);
    n++;
  }
  drain(f);
  for (int i = 6; i < 9; i++)
    assert_int_equal(s->ordinal[i], 1);
  free(s);
}

/* ---- the id table ---------------------------------------------------- */

static int patch(const char *path, const void *from, const void *to,
                 size_t n);

/* Four events: seq 1 delivered (kept for the window), seq 2 a dead
 * letter, seqs 3 and 4 pending. */
static void known_ids_spool(struct fx *f)
{
  struct seen *s = calloc(1, sizeof(*s));

  open_spool(f);
  append(f, s, 0, "knowndelivered1", "A", 0, 0, 0);
  append(f, s, 1, "knowndeadletter", "A", 0, 0, 0);
  append(f, s, 2, "knownpending001", "A", 0, 0, 0);
  append(f, s, 3, "knownpending002", "A", 0, 0, 0);
  drain(f);
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1 }, 1), 0);
  assert_int_equal(emd_spool_dead(f->sp, 2, "rejected", 400, "no", 2), 0);
  drain(f);
  free(s);
}

/* Every id of known_ids_spool is a duplicate of its seq; fresh, a new
 * id, is not and gets seq next. */
static void ids_still_known(struct fx *f, const char *fresh, uint64_t next)
{
  struct seen *s = calloc(1, sizeof(*s));
  const char *ids[] = { "knowndelivered1", "knowndeadletter",
                        "knownpending001", "knownpending002" };

  for (int i = 0; i < 4; i++)
    append(f, s, i, ids[i], "A", 0, 0, 0);
  append(f, s, 4, fresh, "A", 0, 0, 0);
  drain(f);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(s->rc[i], 0);
    assert_true(s->dup[i]);
    assert_int_equal(s->seq[i], i + 1);
  }
  assert_false(s->dup[4]);
  assert_int_equal(s->seq[4], next);
  free(s);
}

static void id_table_survives_a_clean_restart(void **state)
{
  struct fx *f = *state;
  char path[256];
  struct stat st;

  known_ids_spool(f);
  close_spool(f);
  snprintf(path, sizeof(path), "%s/ids.tab", f->dir);
  assert_int_equal(stat(path, &st), 0);
  open_spool(f);
  assert_false(stats(f).ids_rebuilding);  /* trusted as it is */
  ids_still_known(f, "knownnotyet0001", 5);
}

/* After a crash (the table not closed cleanly) or with the table gone,
 * the table is rebuilt from pending, dead and delivered ids. The writer
 * rebuilds before it takes its first group, so a small spool is done
 * before the first duplicate check. */
static void id_table_is_rebuilt_after_a_crash_or_loss(void **state)
{
  struct fx *f = *state;
  char path[256];

  known_ids_spool(f);
  close_spool(f);
  snprintf(path, sizeof(path), "%s/ids.tab", f->dir);
  /* What a crash leaves: the header's clean flag (after magic, version)
   * still 0. */
  assert_int_equal(patch(path, "EMDIDTB1\1\0\0\0\1\0\0\0",
                         "EMDIDTB1\1\0\0\0\0\0\0\0", 16), 1);
  open_spool(f);
  assert_true(stats(f).ids_rebuilding);
  ids_still_known(f, "knownnotyet0001", 5);
  assert_false(stats(f).ids_rebuilding);
  close_spool(f);
  assert_int_equal(unlink(path), 0);
  open_spool(f);
  assert_true(stats(f).ids_rebuilding);
  ids_still_known(f, "knownnotyet0002", 6);
}

/* A rebuild goes in steps of REBUILD_STEP (16 384) events, and a step can
 * end inside a chunk of pending, here the last one: the next step goes on
 * from the event after, so every id is known once it is done. */
static void id_table_rebuild_resumes_inside_a_chunk(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  enum { N = 16400 };        /* the first step ends in the last chunk */
  const int probe[] = { 0, 1, 16382, 16383, 16384, 16385, N - 1 };
  char path[256], id[32];
  int done = 0;

  assert_non_null(s);
  open_spool(f);
  for (int i = 0; i < N; i++) {
    idn(id, sizeof(id), i);
    assert_int_equal(emd_spool_append(f->sp, mk_event(f->sp, id, NULL, 0, 0,
                                                      0),
                                      on_counted, &done), 0);
    if (i % 2000 == 1999)
      drain(f);
  }
  drain(f);
  assert_int_equal(done, N);
  close_spool(f);
  snprintf(path, sizeof(path), "%s/ids.tab", f->dir);
  assert_int_equal(unlink(path), 0);
  open_spool(f);
  for (int i = 0; stats(f).ids_rebuilding; i++) {  /* groups carry the flag */
    assert_true(i < 1000);
    idn(id, sizeof(id), N + 1000 + i);
    append(f, s, 0, id, NULL, 0, 0, 0);
    drain(f);
  }
  for (size_t i = 0; i < sizeof(probe) / sizeof(probe[0]); i++) {
    idn(id, sizeof(id), probe[i]);
    append(f, s, (int)i + 1, id, NULL, 0, 0, 0);
  }
  drain(f);
  for (size_t i = 0; i < sizeof(probe) / sizeof(probe[0]); i++) {
    assert_true(s->dup[i + 1]);
    assert_int_equal(s->seq[i + 1], probe[i] + 1);
  }
  free(s);
}

/* The spool's LMDB environment opened by hand (with the spool closed),
 * to write, or only to read. */
static MDB_env *raw_env(struct fx *f, bool write)
{
  MDB_env *env;

  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
  if (write)
    assert_int_equal(mdb_env_set_mapsize(env, (size_t)5 << 30), 0);
  assert_int_equal(mdb_env_open(env, f->dir, write ? 0 : MDB_RDONLY, 0600),
                   0);
  return env;
}

/* A spool written by schema 1 (ids as id -> seq, delivered ids in a
 * "delivered" database) made by hand from a schema 2 one: opening it
 * upgrades it and keeps every id known. */
static void schema_1_spool_is_upgraded_with_its_ids(void **state)
{
  struct fx *f = *state;
  const char *ids[] = { "knowndelivered1", "knowndeadletter",
                        "knownpending001", "knownpending002" };
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dids, ddel, dmeta;
  MDB_val k, v;
  uint8_t seq[16] = { 0 }, key16[16] = { 0 }, ver[4] = { 0, 0, 0, 1 };
  uint64_t now = (uint64_t)time(NULL) * 1000;
  char path[256];

  known_ids_spool(f);
  close_spool(f);
  env = raw_env(f, true);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "ids", 0, &dids), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dmeta), 0);
  assert_int_equal(mdb_dbi_open(txn, "delivered", MDB_CREATE, &ddel), 0);
  assert_int_equal(mdb_drop(txn, dids, 0), 0);
  for (int i = 0; i < 4; i++) {
    seq[7] = (uint8_t)(i + 1);
    k = (MDB_val){ strlen(ids[i]), (void *)ids[i] };
    v = (MDB_val){ 16, seq };
    assert_int_equal(mdb_put(txn, dids, &k, &v, 0), 0);
  }
  for (int i = 0; i < 8; i++)
    key16[i] = (uint8_t)(now >> (56 - 8 * i));
  key16[15] = 1;
  k = (MDB_val){ 16, key16 };
  v = (MDB_val){ strlen(ids[0]), (void *)ids[0] };
  assert_int_equal(mdb_put(txn, ddel, &k, &v, 0), 0);
  k = (MDB_val){ 14, "schema_version" };
  v = (MDB_val){ 4, ver };
  assert_int_equal(mdb_put(txn, dmeta, &k, &v, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  snprintf(path, sizeof(path), "%s/ids.tab", f->dir);
  assert_int_equal(unlink(path), 0);

  open_spool(f);
  ids_still_known(f, "knownnotyet0001", 5);
  close_spool(f);
  /* Upgraded: schema 3, no "delivered", the delivered id in ids. */
  env = raw_env(f, false);
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "delivered", 0, &ddel), MDB_NOTFOUND);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dmeta), 0);
  k = (MDB_val){ 14, "schema_version" };
  assert_int_equal(mdb_get(txn, dmeta, &k, &v), 0);
  assert_int_equal(((uint8_t *)v.mv_data)[3], 3);
  assert_int_equal(mdb_dbi_open(txn, "ids", 0, &dids), 0);
  seq[7] = 1;
  k = (MDB_val){ 8, seq };
  assert_int_equal(mdb_get(txn, dids, &k, &v), 0);
  assert_int_equal(v.mv_size, 8 + strlen(ids[0]));
  assert_memory_equal((uint8_t *)v.mv_data + 8, ids[0], strlen(ids[0]));
  mdb_txn_abort(txn);
  mdb_env_close(env);
}

/* ---- pending in chunks -------------------------------------------------- */

#define CN 600                 /* events of about 350 bytes: several chunks */

/* What pending should hold: seqs 1..n alive with their attempts. */
struct model {
  int n;
  bool legacy;               /* schema 2 rows: ids not noted */
  bool alive[CN + 64];
  uint32_t att[CN + 64];
};

/* Pending holds exactly what m says: read whole, in order, with ids and
 * attempts; read from after every seq (the next one alive comes first);
 * listed; and counted. */
static void pending_is(struct fx *f, const struct model *m)
{
  struct listed *l = calloc(1, sizeof(*l));
  struct got *g;
  char id[32];
  int rc, want = 0, k = 0;

  assert_non_null(l);
  for (int i = 1; i <= m->n; i++)
    want += m->alive[i];
  g = read_all(f, 0, MAXR, SIZE_MAX, &rc);
  assert_int_equal(rc, want);
  for (int i = 1; i <= m->n; i++) {
    if (!m->alive[i])
      continue;
    assert_int_equal(g->seq[k], i);
    assert_int_equal(g->attempts[k], m->att[i]);
    idn(id, sizeof(id), i - 1);
    assert_string_equal(g->id[k], id);
    assert_true(g->noted[k] || m->legacy);
    k++;
  }
  free(g);
  for (int after = 0; after <= m->n; after++) {
    int next = after + 1;

    while (next <= m->n && !m->alive[next])
      next++;
    g = read_all(f, (uint64_t)after, 1, SIZE_MAX, &rc);
    assert_int_equal(rc, next <= m->n ? 1 : 0);
    if (next <= m->n)
      assert_int_equal(g->seq[0], next);
    free(g);
  }
  rc = emd_spool_list_pending(f->sp, 64, on_item, l);
  assert_int_equal(rc, want < 64 ? want : 64);
  for (int i = 1, j = 0; i <= m->n && j < rc; i++)
    if (m->alive[i])
      assert_int_equal(l->seq[j++], i);
  free(l);
  assert_int_equal(stats(f).pending, want);
}

static void delete_seqs(struct fx *f, struct model *m, const uint64_t *seqs,
                        size_t n)
{
  assert_int_equal(emd_spool_delete(f->sp, seqs, n), 0);
  drain(f);
  for (size_t i = 0; i < n; i++)
    if (seqs[i] >= 1 && seqs[i] <= (uint64_t)m->n)
      m->alive[seqs[i]] = false;
}

static int stats_pending(const struct model *m)
{
  int n = 0;

  for (int i = 1; i <= m->n; i++)
    n += m->alive[i];
  return n;
}

static int chunk_entries(const MDB_val *k, const MDB_val *v, uint64_t *seq,
                         const uint8_t **rec, size_t *len, int max);
static void make_spool(struct fx *f, int events);

/* The events in pending's rows, read raw (the spool closed), each with
 * the place of its id right (chunk_entries checks). */
static int raw_pending(struct fx *f)
{
  static uint64_t seq[CN + 64];
  static const uint8_t *rec[CN + 64];
  static size_t len[CN + 64];
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dp;
  MDB_cursor *c;
  MDB_val k, v;
  int n = 0, rc;

  env = raw_env(f, false);
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "pending", 0, &dp), 0);
  assert_int_equal(mdb_cursor_open(txn, dp, &c), 0);
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
    n += chunk_entries(&k, &v, seq + n, rec + n, len + n, CN + 64 - n);
  assert_int_equal(rc, MDB_NOTFOUND);
  mdb_cursor_close(c);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return n;
}

/* Events are kept several to a row in pending (emd_spool.c, "pending:
 * events in chunks"). Deletes, attempts and dead letters anywhere in a
 * chunk, at its first and last event, and across chunks, in any order and
 * repeated, leave exactly the right events, readable from any seq, with
 * duplicates still found, across a restart, and the byte count back at 0
 * once everything went. */
static void pending_chunks_take_every_change_anywhere(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct model *m = calloc(1, sizeof(*m));
  uint64_t seqs[CN + 64];
  size_t n = 0;
  char id[32];

  assert_non_null(s);
  assert_non_null(m);
  open_spool(f);
  for (int i = 0; i < CN; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 300);
  }
  drain(f);
  m->n = CN;
  for (int i = 1; i <= CN; i++) {
    assert_int_equal(s->seq[i - 1], i);
    m->alive[i] = true;
  }
  pending_is(f, m);

  /* every third, a run over several chunks given backwards, the last
   * seq, and seqs already gone or never used */
  for (int i = 3; i <= CN; i += 3)
    seqs[n++] = (uint64_t)i;
  for (int i = 420; i >= 250; i--)
    seqs[n++] = (uint64_t)i;
  seqs[n++] = CN;
  seqs[n++] = 3;
  seqs[n++] = CN + 50;
  delete_seqs(f, m, seqs, n);
  pending_is(f, m);

  /* attempts: the first event, one in the middle twice, the last alive,
   * and one already deleted (nothing) */
  assert_int_equal(emd_spool_attempted(f->sp, (uint64_t[]){ 1, 100, 100,
                                                             CN - 1, 3 }, 5),
                   0);
  drain(f);
  m->att[1] = 1;
  m->att[100] = 2;
  m->att[CN - 1] = 1;
  pending_is(f, m);

  /* dead letters from the middle and the front */
  assert_int_equal(emd_spool_dead(f->sp, 101, "rejected", 400, NULL, 0), 0);
  assert_int_equal(emd_spool_dead(f->sp, 1, "status", 0, NULL, 0), 0);
  drain(f);
  m->alive[101] = m->alive[1] = false;
  pending_is(f, m);
  assert_int_equal(stats(f).dead, 2);

  /* duplicates of a pending event in a rewritten chunk, of a delivered
   * one and of a dead one answer their seq */
  idn(id, sizeof(id), 99);
  append(f, s, CN, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 2);
  append(f, s, CN + 1, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 100);
  append(f, s, CN + 2, id, "A", 0, 0, 0);
  drain(f);
  assert_true(s->dup[CN] && s->dup[CN + 1] && s->dup[CN + 2]);
  assert_int_equal(s->seq[CN], 100);
  assert_int_equal(s->seq[CN + 1], 3);
  assert_int_equal(s->seq[CN + 2], 101);

  close_spool(f);
  assert_int_equal(raw_pending(f), stats_pending(m));
  open_spool(f);
  pending_is(f, m);

  /* everything else delivered: nothing left, no byte counted */
  n = 0;
  for (int i = 1; i <= CN; i++)
    if (m->alive[i])
      seqs[n++] = (uint64_t)i;
  delete_seqs(f, m, seqs, n);
  pending_is(f, m);
  assert_int_equal(stats(f).pending_bytes, 0);

  /* and new events go on from the next seq */
  for (int i = CN + 3; i < CN + 13; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 300);
  }
  drain(f);
  assert_int_equal(s->seq[CN + 3], CN + 1);

  /* delivered ids are kept a row per run of consecutive seqs: ids from
   * runs of one (given backwards), the first, middle and last of long
   * runs are all known, and again once the id table is rebuilt from
   * those rows */
  for (int pass = 0; pass < 2; pass++) {
    const int probe[] = { 2, 251, 300, 420, 422, 423, 500, CN - 2, CN - 1 };
    char path[256];

    memset(s, 0, sizeof(*s));
    for (int i = 0; i < (int)(sizeof(probe) / sizeof(probe[0])); i++) {
      idn(id, sizeof(id), probe[i] - 1);
      append(f, s, i, id, "A", 0, 0, 0);
    }
    drain(f);
    for (int i = 0; i < (int)(sizeof(probe) / sizeof(probe[0])); i++) {
      assert_true(s->dup[i]);
      assert_int_equal(s->seq[i], probe[i]);
    }
    close_spool(f);
    snprintf(path, sizeof(path), "%s/ids.tab", f->dir);
    assert_int_equal(unlink(path), 0);
    open_spool(f);
    for (int i = 0; stats(f).ids_rebuilding; i++) {
      assert_true(i < 1000);
      run_for(f, 5);
    }
  }
  free(m);
  free(s);
}

/* Pulls the entries out of a chunk row (its format in emd_spool.c), and
 * checks that each notes where its event's id is. */
static int chunk_entries(const MDB_val *k, const MDB_val *v, uint64_t *seq,
                         const uint8_t **rec, size_t *len, int max)
{
  const uint8_t *p = v->mv_data, *end = p + v->mv_size;
  uint64_t key = 0;
  int n = 0;

  for (int i = 0; i < 8; i++)
    key = key << 8 | ((const uint8_t *)k->mv_data)[i];
  assert_int_equal(*p++, 0x00);
  while (p < end && n < max) {
    uint64_t d = 0, l = 0, io = 0;
    int sh = 0;

    do
      d |= (uint64_t)(*p & 0x7f) << sh, sh += 7;
    while (*p++ & 0x80);
    sh = 0;
    do
      l |= (uint64_t)(*p & 0x7f) << sh, sh += 7;
    while (*p++ & 0x80);
    sh = 0;
    do                                  /* where the id is in the record */
      io |= (uint64_t)(*p & 0x7f) << sh, sh += 7;
    while (*p++ & 0x80);
    assert_true(io > 2 && io < l && p[io - 2] == 0x12 &&
                memcmp(p + io, "event", 5) == 0);
    seq[n] = key + d;
    rec[n] = p;
    len[n] = (size_t)l;
    p += l;
    n++;
  }
  assert_true(p == end);
  return n;
}

/* A schema 2 spool, one SpoolRecord per row of pending, made by hand from
 * a chunked one: it opens (upgraded to 3, the rows as they are), reads,
 * takes deletes, attempts and dead letters on those rows next to new
 * events in chunks, and finds its ids (the id table is rebuilt). */
static void schema_2_spool_with_a_row_per_event_is_upgraded(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct model *m = calloc(1, sizeof(*m));
  enum { N = 200 };
  static uint64_t seq[N];
  static const uint8_t *rec[N];
  static size_t len[N];
  static uint8_t copy[N][512];
  uint8_t key[8], ver[4] = { 0, 0, 0, 2 };
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dp, dmeta;
  MDB_cursor *c;
  MDB_val k, v;
  char id[32];
  int n = 0, rc;

  assert_non_null(s);
  assert_non_null(m);
  make_spool(f, N);
  env = raw_env(f, true);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "pending", 0, &dp), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dmeta), 0);
  assert_int_equal(mdb_cursor_open(txn, dp, &c), 0);
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
    n += chunk_entries(&k, &v, seq + n, rec + n, len + n, N - n);
  assert_int_equal(rc, MDB_NOTFOUND);
  assert_int_equal(n, N);
  assert_true(mdb_stat(txn, dp, &(MDB_stat){ 0 }) == 0);
  mdb_cursor_close(c);
  for (int i = 0; i < N; i++) {     /* copies: the drop frees the pages */
    assert_true(len[i] <= sizeof(copy[i]));
    memcpy(copy[i], rec[i], len[i]);
  }
  assert_int_equal(mdb_drop(txn, dp, 0), 0);
  for (int i = 0; i < N; i++) {
    for (int b = 0; b < 8; b++)
      key[b] = (uint8_t)(seq[i] >> (56 - 8 * b));
    k = (MDB_val){ 8, key };
    v = (MDB_val){ len[i], copy[i] };
    assert_int_equal(copy[i][0], 0x0a);        /* a bare SpoolRecord */
    assert_int_equal(mdb_put(txn, dp, &k, &v, MDB_APPEND), 0);
  }
  k = (MDB_val){ 14, "schema_version" };
  v = (MDB_val){ 4, ver };
  assert_int_equal(mdb_put(txn, dmeta, &k, &v, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);

  open_spool(f);
  m->n = N;
  m->legacy = true;
  for (int i = 1; i <= N; i++)
    m->alive[i] = true;
  pending_is(f, m);
  /* rows of schema 2 and new chunks side by side */
  for (int i = N; i < N + 20; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 300);
  }
  drain(f);
  m->n = N + 20;
  for (int i = N + 1; i <= N + 20; i++)
    m->alive[i] = true;
  delete_seqs(f, m, (uint64_t[]){ 5, 6, 7, 150, N + 2 }, 5);
  assert_int_equal(emd_spool_attempted(f->sp, (uint64_t[]){ 8, N + 3 }, 2),
                   0);
  assert_int_equal(emd_spool_dead(f->sp, 9, "rejected", 400, NULL, 0), 0);
  drain(f);
  m->att[8] = m->att[N + 3] = 1;
  m->alive[9] = false;
  pending_is(f, m);
  /* ids of every kind are known (pending rows, delivered, dead) */
  idn(id, sizeof(id), 10);
  append(f, s, N + 20, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 4);
  append(f, s, N + 21, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 8);
  append(f, s, N + 22, id, "A", 0, 0, 0);
  drain(f);
  assert_true(s->dup[N + 20] && s->dup[N + 21] && s->dup[N + 22]);
  assert_int_equal(s->seq[N + 20], 11);
  assert_int_equal(s->seq[N + 21], 5);
  assert_int_equal(s->seq[N + 22], 9);
  close_spool(f);

  env = raw_env(f, false);
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dmeta), 0);
  k = (MDB_val){ 14, "schema_version" };
  assert_int_equal(mdb_get(txn, dmeta, &k, &v), 0);
  assert_int_equal(((uint8_t *)v.mv_data)[3], 3);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  free(m);
  free(s);
}

/* ---- refusing to open --------------------------------------------------- */

static char *slurp(const char *path, size_t *n)
{
  FILE *fp = fopen(path, "rb");
  char *buf;
  long len;

  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  len = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  buf = malloc((size_t)len + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
  fclose(fp);
  *n = (size_t)len;
  return buf;
}

static void spit(const char *path, const void *buf, size_t n)
{
  FILE *fp = fopen(path, "wb");

  assert_non_null(fp);
  assert_int_equal(fwrite(buf, 1, n, fp), n);
  fclose(fp);
}

/* Replaces every copy of from (old pages included) by to, in place. */
static int patch(const char *path, const void *from, const void *to,
                 size_t n)
{
  size_t len;
  char *buf = slurp(path, &len);
  int hits = 0;

  for (size_t i = 0; i + n <= len; i++)
    if (memcmp(buf + i, from, n) == 0) {
      memcpy(buf + i, to, n);
      hits++;
    }
  spit(path, buf, len);
  free(buf);
  return hits;
}

static void make_spool(struct fx *f, int events)
{
  struct seen *s = calloc(1, sizeof(*s));
  char id[32];

  open_spool(f);
  for (int i = 0; i < events; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 300);
  }
  drain(f);
  close_spool(f);
  free(s);
}

/* Opening must fail with want, say so in err, and leave data.mdb as it
 * was. */
static void refuses(struct fx *f, int want, const char *says)
{
  char path[256], err[512] = "";
  size_t n0, n1;
  char *before, *after;
  int rc;

  snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
  before = slurp(path, &n0);
  rc = emd_spool_open(&f->loop, &f->cfg, &f->sp, err, sizeof(err));
  assert_int_equal(rc, want);
  assert_null(f->sp);
  assert_non_null(strstr(err, says));
  assert_non_null(strstr(err, f->dir));
  after = slurp(path, &n1);
  assert_int_equal(n0, n1);
  assert_memory_equal(before, after, n0);
  free(before);
  free(after);
  /* Refusing again gives the same answer: nothing was half-done. */
  rc = emd_spool_open(&f->loop, &f->cfg, &f->sp, err, sizeof(err));
  assert_int_equal(rc, want);
}

/* A chunk whose end cannot be read (what LMDB never does, but a disk
 * might): its readable events are read, delivered and kept as they were;
 * the unreadable end is skipped with a log line, and dropped when the
 * chunk is rewritten. Nothing crashes, nothing else changes. */
static void a_garbled_chunk_keeps_what_can_be_read(void **state)
{
  static const uint8_t junk[] = { 0x05, 0xff, 0xff };
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  uint8_t *val;
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dp;
  MDB_cursor *c;
  MDB_val k, v;
  struct got *g;
  char id[32];
  int rc;

  assert_non_null(s);
  make_spool(f, 3);                          /* one chunk: seqs 1 to 3 */
  env = raw_env(f, true);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "pending", 0, &dp), 0);
  assert_int_equal(mdb_cursor_open(txn, dp, &c), 0);
  assert_int_equal(mdb_cursor_get(c, &k, &v, MDB_FIRST), 0);
  val = malloc(v.mv_size + sizeof(junk));
  assert_non_null(val);
  memcpy(val, v.mv_data, v.mv_size);
  memcpy(val + v.mv_size, junk, sizeof(junk));
  v.mv_data = val;
  v.mv_size += sizeof(junk);
  assert_int_equal(mdb_cursor_put(c, &k, &v, MDB_CURRENT), 0);
  mdb_cursor_close(c);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  free(val);

  open_spool(f);
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 3);
  assert_int_equal(g->seq[2], 3);
  free(g);
  assert_int_equal(emd_spool_attempted(f->sp, (uint64_t[]){ 2 }, 1), 0);
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1 }, 1), 0);
  drain(f);
  close_spool(f);
  open_spool(f);
  g = read_all(f, 0, 10, SIZE_MAX, &rc);
  assert_int_equal(rc, 2);
  assert_int_equal(g->seq[0], 2);
  assert_int_equal(g->attempts[0], 1);
  assert_int_equal(g->seq[1], 3);
  free(g);
  assert_int_equal(stats(f).pending, 2);
  idn(id, sizeof(id), 99);
  append(f, s, 0, id, "A", 0, 0, 0);
  idn(id, sizeof(id), 2);                    /* seq 3's id: still known */
  append(f, s, 1, id, "A", 0, 0, 0);
  drain(f);
  assert_int_equal(s->seq[0], 4);
  assert_true(s->dup[1]);
  assert_int_equal(s->seq[1], 3);
  free(s);
}

static void newer_schema_refuses_to_open_and_leaves_files_alone(
    void **state)
{
  struct fx *f = *state;
  char path[256];

  make_spool(f, 5);
  snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
  assert_true(patch(path, "schema_version\0\0\0\3", "schema_version\0\0\0\4",
                    18) >= 1);
  refuses(f, EMD_ESPOOLVER, "upgrade emitd or move the spool aside");
}

static void garbage_files_refuse_to_open(void **state)
{
  struct fx *f = *state;
  char path[256], *junk = malloc(65536);

  assert_int_equal(mkdir(f->dir, 0700), 0);
  snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
  for (int i = 0; i < 65536; i++)
    junk[i] = (char)(i * 7 + 3);
  spit(path, junk, 65536);
  refuses(f, EMD_ESPOOLBAD, "move the spool aside");
  spit(path, "short", 5);
  refuses(f, EMD_ESPOOLBAD, "move the spool aside");
  free(junk);
}

static void spool_without_meta_refuses_to_open(void **state)
{
  struct fx *f = *state;
  char path[256];

  make_spool(f, 3);
  snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
  /* An LMDB environment whose meta lost its schema key. */
  assert_true(patch(path, "schema_version", "schema_versioX", 14) >= 1);
  refuses(f, EMD_ESPOOLBAD, "schema version missing");
}

static void truncated_spool_refuses_to_open(void **state)
{
  struct fx *f = *state;
  char path[256];

  make_spool(f, 200);
  snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
  assert_int_equal(truncate(path, 3 * 4096), 0);
  refuses(f, EMD_ESPOOLBAD, "truncated");
}

static void a_spool_in_use_refuses_a_second_open(void **state)
{
  struct fx *f = *state;
  struct emd_spool *other = NULL;
  char err[256] = "";

  open_spool(f);
  assert_int_equal(emd_spool_open(&f->loop, &f->cfg, &other, err,
                                  sizeof(err)),
                   -EBUSY);
  assert_null(other);
  assert_non_null(strstr(err, "in use"));
}

/* ---- group commit and close ------------------------------------------- */

struct burst {
  struct fx *f;
  struct seen *s;
  uv_idle_t idle;
  int turns, per_turn, next;
};

/* Appends per_turn events on each of turns loop turns, as fast as the
 * loop turns. */
static void on_burst(uv_idle_t *h)
{
  struct burst *b = h->data;
  char id[32];

  for (int i = 0; i < b->per_turn; i++) {
    idn(id, sizeof(id), b->next);
    append(b->f, b->s, b->next, id, "A", 0, 0, 300);
    b->next++;
  }
  if (--b->turns == 0)
    uv_idle_stop(h);
}

/* Deliveries are not waited on: a group of deletes alone waits a little
 * (DELETE_LINGER_MS from its first) for more to share its commit, where an
 * append's group would have gone to the writer at the end of the turn;
 * appends that come meanwhile take the deletes along. */
static void deletes_alone_wait_to_share_a_commit(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  uint64_t c0;
  char id[32];

  open_spool(f);
  for (int i = 0; i < 6; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 0);
  }
  drain(f);
  c0 = stats(f).commits;
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 1, 2 }, 2), 0);
  uv_run(&f->loop, UV_RUN_NOWAIT);   /* a turn ends: an append would go */
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 3 }, 1), 0);
  drain(f);
  assert_int_equal(stats(f).pending, 3);
  assert_int_equal(stats(f).commits, c0 + 1);
  /* appends join a waiting delete and take it along */
  assert_int_equal(emd_spool_delete(f->sp, (uint64_t[]){ 4 }, 1), 0);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  idn(id, sizeof(id), 6);
  append(f, s, 6, id, "A", 0, 0, 0);
  drain(f);
  assert_int_equal(s->calls, 7);
  assert_int_equal(s->rc[6], 0);
  assert_int_equal(stats(f).pending, 3);
  free(s);
}

static void appends_over_many_turns_share_few_commits(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct burst b = { f, s, { 0 }, 100, 50, 0 };
  struct got *g;
  int rc;

  open_spool(f);
  uv_idle_init(&f->loop, &b.idle);
  b.idle.data = &b;
  uv_idle_start(&b.idle, on_burst);
  drain(f);
  uv_close((uv_handle_t *)&b.idle, NULL);
  drain(f);
  assert_int_equal(s->calls, 5000);
  for (int i = 0; i < 5000; i++) {
    assert_int_equal(s->rc[i], 0);
    assert_int_equal(s->seq[i], (uint64_t)i + 1);
    assert_int_equal(s->ordinal[i], (uint32_t)i + 1);
  }
  /* One transaction (and fsync) per group; while the writer commits one,
   * the loop's turns gather the next: fewer commits than turns. */
  print_message("5000 events in 100 turns: %llu commits\n",
                (unsigned long long)stats(f).commits);
  assert_true(stats(f).commits >= 2);
  assert_true(stats(f).commits < 100);
  g = read_all(f, 0, MAXR, SIZE_MAX, &rc);
  assert_int_equal(rc, 5000);
  free(g);
  free(s);
}

static void close_with_appends_queued_still_calls_every_callback(
    void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  char id[32];

  f->cfg.spool.sync = EMD_SYNC_INTERVAL;
  f->cfg.spool.sync_interval_ms = 60000;  /* the close must sync anyway */
  open_spool(f);
  for (int i = 0; i < 100; i++) {
    idn(id, sizeof(id), i);
    append(f, s, i, id, "A", 0, 0, 100);
  }
  emd_spool_close(f->sp);
  assert_int_equal(emd_spool_append(f->sp, NULL, on_appended, NULL),
                   EMD_ESHUTDOWN);
  f->sp = NULL;
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(s->calls, 100);
  for (int i = 0; i < 100; i++)
    assert_int_equal(s->rc[i], 0);
  open_spool(f);
  assert_int_equal(stats(f).pending, 100);
  free(s);
}

static void on_timed(void *data, const struct emd_spool_result *res)
{
  uint64_t *t = data;

  assert_int_equal(res->rc, 0);
  *t = uv_hrtime();
}

static void sync_interval_replies_wait_for_the_sync(void **state)
{
  struct fx *f = *state;
  uint64_t t0, t1 = 0;

  f->cfg.spool.sync = EMD_SYNC_INTERVAL;
  f->cfg.spool.sync_interval_ms = 200;
  open_spool(f);
  t0 = uv_hrtime();
  assert_int_equal(emd_spool_append(f->sp,
                                    mk_event(f->sp, "intervalevent", "A", 0,
                                             0, 0),
                                    on_timed, &t1),
                   0);
  drain(f);
  assert_true(t1 > 0);
  /* The first sync is due an interval after open. */
  assert_true(t1 - t0 >= 150 * 1000000ull);
  assert_int_equal(stats(f).pending, 1);
}

static void sync_none_replies_after_commit(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));

  f->cfg.spool.sync = EMD_SYNC_NONE;
  open_spool(f);
  append(f, s, 0, "nosyncevent01", "A", 0, 0, 0);
  drain(f);
  assert_int_equal(s->calls, 1);
  assert_int_equal(s->rc[0], 0);
  close_spool(f);
  open_spool(f);
  assert_int_equal(stats(f).pending, 1);
  free(s);
}

static void bad_events_are_refused_without_harm(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));

  open_spool(f);
  assert_int_equal(emd_spool_append(f->sp, NULL, on_appended, NULL),
                   EMD_EINVALID);
  append(f, s, 0, "", "A", 0, 0, 0);              /* no id */
  append(f, s, 1, "fineevent0001", "A", 0, 0, 0);
  drain(f);
  assert_int_equal(s->rc[0], EMD_EINVALID);
  assert_int_equal(s->rc[1], 0);
  assert_int_equal(s->ordinal[1], 1);
  assert_int_equal(stats(f).pending, 1);
  free(s);
}

/* Pending holds exactly seqs q <= top with alive[q], in order, each with
 * its attempts att[q] and id ids[q]; the count agrees. */
static void pending_matches(struct fx *f, const bool *alive,
                            const uint32_t *att, char (*ids)[32],
                            uint64_t top)
{
  int n = 0, rc;
  struct got *g = read_all(f, 0, MAXR, SIZE_MAX, &rc);

  for (uint64_t q = 1; q <= top; q++) {
    if (!alive[q])
      continue;
    assert_true(n < rc);
    assert_int_equal(g->seq[n], q);
    assert_int_equal(g->attempts[n], att[q]);
    assert_string_equal(g->id[n], ids[q]);
    n++;
  }
  assert_int_equal(rc, n);
  free(g);
  assert_int_equal(stats(f).pending, n);
}

/* The spool writer out of memory at each of its allocations in turn (a
 * new writer each time, its first group), in a group of appends (new
 * chunks, a timer's counter), deliveries and attempts (chunk edits) over
 * a spool of several chunks: the group is
 * whole or not at all (its appends all acknowledged or all refused, its
 * deliveries and attempts all done or none), what is pending reads back
 * as the acknowledged groups made it, the ids of refused appends are not
 * known (they are taken again as new), the timer's ordinals run on
 * without a gap or a repeat, and a restart sees the same. */
#define OOM_MAX 4096
static void writer_out_of_memory_anywhere_keeps_groups_whole(void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  bool *alive = calloc(OOM_MAX, sizeof(bool));
  uint32_t *att = calloc(OOM_MAX, sizeof(uint32_t));
  uint64_t *want = calloc(OOM_MAX, sizeof(uint64_t));
  char (*ids)[32] = calloc(OOM_MAX, sizeof(*ids));
  uint64_t top = 0, next_id = 0, ordinal = 0;
  int devnull = open("/dev/null", O_WRONLY), failed = 0, k, n;
  char id[32];

  assert_non_null(s);
  assert_non_null(alive);
  assert_non_null(att);
  assert_non_null(want);
  assert_non_null(ids);
  assert_true(devnull >= 0);
  /* the failed groups' errors, expected, out of the test's output */
  emd_log_setup(EMD_LOG_ERROR, EMD_LOG_TEXT, false, devnull);
  open_spool(f);
  for (int i = 0; i < 150; i++) {       /* several chunks to edit */
    snprintf(id, sizeof(id), "oom%06" PRIu64, next_id++);
    append(f, s, i, id, NULL, 0, 0, 300);
  }
  drain(f);
  for (int i = 0; i < 150; i++) {
    assert_int_equal(s->rc[i], 0);
    top = s->seq[i];
    alive[top] = true;
    snprintf(ids[top], sizeof(ids[0]), "oom%06d", i);
  }

  for (k = 0; k < 2000; k++) {
    uint64_t del[3], tried[2], first = 0, mid = 0, last = 0, c;
    bool fired, ok;
    int j;

    /* a writer of its own each time, so that the group is its first and
     * the writer's buffers all grow in it (a warm writer allocates only
     * now and then) */
    close_spool(f);
    open_spool(f);

    /* deliveries: the oldest, one in the middle and the newest pending;
     * attempts: the first two after the oldest but the middle one */
    n = 0;
    for (uint64_t q = 1; q <= top; q++)
      if (alive[q]) {
        first = first ? first : q;
        last = q;
        n++;
      }
    c = 0;
    for (uint64_t q = first; q <= top && mid == 0; q++)
      if (alive[q] && ++c == (uint64_t)n / 2)
        mid = q;
    c = 0;
    for (uint64_t q = first + 1; q <= top && c < 2; q++)
      if (alive[q] && q != mid)
        tried[c++] = q;
    assert_true(n > 10 && mid != 0 && c == 2);
    del[0] = first;
    del[1] = mid;
    del[2] = last;

    memset(s, 0, sizeof(*s));
    oom_arm(k);
    for (j = 0; j < 6; j++) {
      snprintf(id, sizeof(id), "oom%06" PRIu64, next_id + (uint64_t)j);
      append(f, s, j, id, "T", 0, 0, 300);
    }
    assert_int_equal(emd_spool_delete(f->sp, del, 3), 0);
    assert_int_equal(emd_spool_attempted(f->sp, tried, 2), 0);
    drain(f);
    fired = oom_disarm();

    assert_int_equal(s->calls, 6);
    ok = s->rc[0] == 0;
    for (j = 0; j < 6; j++) {
      assert_int_equal(s->rc[j] == 0, ok);   /* whole or not at all */
      assert_false(ok && s->dup[j]);         /* refused ids unknown */
    }
    if (ok) {
      for (j = 0; j < 6; j++) {
        assert_true(s->seq[j] > top && s->seq[j] < OOM_MAX);
        assert_int_equal(s->ordinal[j], ++ordinal);
        alive[s->seq[j]] = true;
        snprintf(ids[s->seq[j]], sizeof(ids[0]), "oom%06" PRIu64,
                 next_id + (uint64_t)j);
        top = s->seq[j];
      }
      next_id += 6;
      for (j = 0; j < 3; j++)
        alive[del[j]] = false;
      att[tried[0]]++;
      att[tried[1]]++;
    } else {
      assert_true(fired);
      failed++;
    }

    pending_matches(f, alive, att, ids, top);
    if (!fired)
      break;                  /* past the group's last allocation */
  }
  assert_true(k < 2000);
  /* The writer did allocate, and failed: in its first group (today) the
   * timer map's two arrays, the fill of new chunks, the id table's
   * journal, an edited chunk's entries and the edit's and the run of
   * delivered ids' buffers: 7. */
  assert_true(failed >= 5);

  /* A restart sees the same, and every acknowledged id is known. */
  close_spool(f);
  emd_log_setup(EMD_LOG_ERROR, EMD_LOG_TEXT, false, 2);
  close(devnull);
  open_spool(f);
  pending_matches(f, alive, att, ids, top);
  memset(s, 0, sizeof(*s));
  n = 0;
  for (uint64_t q = 1; q <= top; q++)
    if (alive[q]) {
      want[n] = q;
      append(f, s, n, ids[q], NULL, 0, 0, 0);
      n++;
    }
  drain(f);
  for (int i = 0; i < n; i++) {
    assert_true(s->dup[i]);
    assert_int_equal(s->seq[i], want[i]);
  }
  free(ids);
  free(want);
  free(att);
  free(alive);
  free(s);
}

/* The loop out of memory at each allocation of an append, a delivery and
 * an attempt in turn: the call that could not allocate returns -ENOMEM
 * and its callback never runs, nothing of it is stored or done, the group
 * being gathered keeps what came before it, and the spool goes on. */
static void loop_out_of_memory_refuses_the_call_and_keeps_the_rest(
    void **state)
{
  struct fx *f = *state;
  struct seen *s = calloc(1, sizeof(*s));
  struct app *apps[2];
  bool alive[400] = { false };
  uint32_t att[400] = { 0 };
  uint64_t top = 0, next_id = 0;
  int failed = 0, k;
  char id[32], ids[400][32];

  assert_non_null(s);
  open_spool(f);
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof(id), "loop%06" PRIu64, next_id++);
    append(f, s, i, id, "T", 0, 0, 200);
  }
  drain(f);
  for (int i = 0; i < 40; i++) {
    top = s->seq[i];
    alive[top] = true;
    snprintf(ids[top], sizeof(ids[0]), "loop%06d", i);
  }

  for (k = 0; k < 200; k++) {
    uint64_t del[1] = { 0 }, tried[1] = { 0 };
    emd_event *ev[2];
    int arc[2], drc, trc;
    bool fired;

    close_spool(f);                /* cold: its buffers grow in the call */
    open_spool(f);
    for (uint64_t q = 1; q <= top; q++)
      if (alive[q]) {
        if (del[0] == 0)
          del[0] = q;
        else if (tried[0] == 0)
          tried[0] = q;
      }
    memset(s, 0, sizeof(*s));
    for (int j = 0; j < 2; j++) {      /* made before: the ingest's part */
      snprintf(id, sizeof(id), "loop%06" PRIu64, next_id + (uint64_t)j);
      ev[j] = mk_event(f->sp, id, "T", 0, 0, 200 + 2000 * (size_t)j);
      apps[j] = calloc(1, sizeof(*apps[j]));   /* on_appended frees it */
      assert_non_null(apps[j]);
      *apps[j] = (struct app){ s, j, ev[j] };
    }
    oom_arm_here(k);
    for (int j = 0; j < 2; j++)
      arc[j] = emd_spool_append(f->sp, ev[j], on_appended, apps[j]);
    drc = emd_spool_delete(f->sp, del, 1);
    trc = emd_spool_attempted(f->sp, tried, 1);
    fired = oom_disarm();
    drain(f);
    for (int j = 0; j < 2; j++)
      if (arc[j] != 0)
        free(apps[j]);             /* its callback will never run */

    assert_true(fired == (arc[0] || arc[1] || drc || trc));
    for (int j = 0; j < 2; j++) {
      assert_true(arc[j] == 0 || arc[j] == -ENOMEM);
      assert_int_equal(s->rc[j], 0);
      if (arc[j] != 0)
        continue;                  /* and its callback never ran */
      assert_false(s->dup[j]);
      assert_true(s->seq[j] > top && s->seq[j] < 400);
      alive[s->seq[j]] = true;
      snprintf(ids[s->seq[j]], sizeof(ids[0]), "loop%06" PRIu64,
               next_id + (uint64_t)j);
    }
    assert_int_equal(s->calls, (arc[0] == 0) + (arc[1] == 0));
    for (int j = 0; j < 2; j++)
      if (arc[j] == 0 && s->seq[j] > top)
        top = s->seq[j];
    next_id += 2;                  /* a refused id is never sent again */
    assert_true(drc == 0 || drc == -ENOMEM);
    assert_true(trc == 0 || trc == -ENOMEM);
    if (drc == 0)
      alive[del[0]] = false;
    if (trc == 0)
      att[tried[0]]++;
    failed += fired;

    pending_matches(f, alive, att, ids, top);
    if (!fired)
      break;
  }
  assert_true(k < 200);
  /* Allocations there were, and failed: the first append's pack buffer
   * and the group's op array (today; the rest fit what they had). */
  assert_true(failed >= 2);
  free(s);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(append_replies_only_after_commit),
    T(seqs_grow_and_ordinals_count_per_timer),
    T(stored_events_carry_their_final_ordinal_and_index),
    T(client_ordinal_is_kept_without_moving_the_counter),
    T(duplicate_id_answers_the_original_seq_and_is_stored_once),
    T(counters_and_instance_id_survive_reopen),
    T(read_honours_after_max_events_and_max_bytes),
    T(delete_attempted_and_dead_do_what_they_say),
    T(dead_max_keeps_only_the_newest),
    T(dead_retry_and_purge_work_on_dead_letters),
    T(on_full_reject_refuses_what_does_not_fit),
    T(on_full_drop_oldest_evicts_and_counts),
    T(appends_mixed_with_other_changes_in_one_group),
    T(on_full_block_accepts_and_stops_reading_until_room),
    T(a_writer_far_behind_stops_the_ingest_until_it_catches_up),
    T(max_age_moves_old_events_to_dead_letters),
    T(dedup_window_forgets_delivered_ids),
    T(delivered_out_of_order_stay_known),
    T(timer_ttl_forgets_idle_counters),
    T(id_table_survives_a_clean_restart),
    T(id_table_is_rebuilt_after_a_crash_or_loss),
    T(id_table_rebuild_resumes_inside_a_chunk),
    T(schema_1_spool_is_upgraded_with_its_ids),
    T(pending_chunks_take_every_change_anywhere),
    T(schema_2_spool_with_a_row_per_event_is_upgraded),
    T(a_garbled_chunk_keeps_what_can_be_read),
    T(writer_out_of_memory_anywhere_keeps_groups_whole),
    T(loop_out_of_memory_refuses_the_call_and_keeps_the_rest),
    T(newer_schema_refuses_to_open_and_leaves_files_alone),
    T(garbage_files_refuse_to_open),
    T(spool_without_meta_refuses_to_open),
    T(truncated_spool_refuses_to_open),
    T(a_spool_in_use_refuses_a_second_open),
    T(appends_over_many_turns_share_few_commits),
    T(deletes_alone_wait_to_share_a_commit),
    T(close_with_appends_queued_still_calls_every_callback),
    T(sync_interval_replies_wait_for_the_sync),
    T(sync_none_replies_after_commit),
    T(bad_events_are_refused_without_harm),
#undef T
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
