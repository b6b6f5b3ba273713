/* test_idtab.c: lib/emd_idtab.c — insert, walk and remove against a plain
 * model under random operations (growth and backward-shift removal
 * included), colliding hashes, the journal's rollback, and which files
 * are trusted at open: only one closed cleanly with the same stamp. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

#include "emd_idtab.h"

struct fix {
  char dir[64];
  char path[96];
};

static int setup(void **state)
{
  struct fix *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  strcpy(f->dir, "/tmp/emd-idtab-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/ids.tab", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fix *f = *state;
  char cmd[96];

  snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

static const struct emd_idtab_stamp stamp_a = { "instance-a......", 41 };
static const struct emd_idtab_stamp stamp_b = { "instance-a......", 42 };

static struct emd_idtab *open_tab(struct fix *f, const struct emd_idtab_stamp *s,
                                  bool *trusted)
{
  struct emd_idtab *t;
  char err[256];

  assert_int_equal(emd_idtab_open(f->path, s, &t, trusted, err,
                                  sizeof(err)), 0);
  return t;
}

/* Every seq stored under h, in walk order. */
static size_t seqs_of(const struct emd_idtab *t, uint64_t h, uint64_t *out,
                      size_t max)
{
  size_t pos = 0, n = 0;
  uint64_t seq;

  while (emd_idtab_next(t, h, &pos, &seq))
    if (n < max)
      out[n++] = seq;
  return n;
}

static bool has(const struct emd_idtab *t, uint64_t h, uint64_t seq)
{
  uint64_t got[16];
  size_t n = seqs_of(t, h, got, 16);

  for (size_t i = 0; i < n; i++)
    if (got[i] == seq)
      return true;
  return false;
}

static void hash_is_seeded_stable_and_never_zero(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  uint64_t a = emd_idtab_hash(t, "evt000000000001", 15);

  assert_false(trusted);
  assert_true(a != 0);
  assert_true(a == emd_idtab_hash(t, "evt000000000001", 15));
  assert_true(a != emd_idtab_hash(t, "evt000000000002", 15));
  /* what another thread computes with the table's seed (the spool's
   * loop, on append) */
  assert_true(a == emd_idtab_hash_seeded(emd_idtab_seed(t),
                                         "evt000000000001", 15));
  assert_int_equal(emd_idtab_close(t, &stamp_a), 0);
  /* The seed is kept with the table... */
  t = open_tab(f, &stamp_a, &trusted);
  assert_true(trusted);
  assert_true(a == emd_idtab_hash(t, "evt000000000001", 15));
  /* ...and a cleared table takes a new one. */
  assert_int_equal(emd_idtab_clear(t), 0);
  assert_true(a != emd_idtab_hash(t, "evt000000000001", 15));
  emd_idtab_close(t, NULL);
}

static void insert_walk_remove_with_colliding_hashes(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  uint64_t got[8];
  size_t cap = emd_idtab_capacity(t);
  /* Three hashes with the same home slot, and one hash with two seqs. */
  uint64_t h1 = 5, h2 = 5 + cap, h3 = 5 + 2 * (uint64_t)cap;

  assert_int_equal(emd_idtab_insert(t, h1, 100), 0);
  assert_int_equal(emd_idtab_insert(t, h2, 200), 0);
  assert_int_equal(emd_idtab_insert(t, h3, 300), 0);
  assert_int_equal(emd_idtab_insert(t, h2, 201), 0);
  assert_int_equal(emd_idtab_insert(t, h2, 201), 0);     /* no second copy */
  assert_int_equal(emd_idtab_count(t), 4);
  assert_int_equal(seqs_of(t, h2, got, 8), 2);
  assert_true(got[0] == 200 && got[1] == 201);
  assert_int_equal(seqs_of(t, 6, got, 8), 0);
  assert_int_equal(emd_idtab_insert(t, 0, 1), EINVAL);

  /* Removing the head of the run moves the rest back: all still found. */
  assert_true(emd_idtab_remove(t, h1, 100));
  assert_false(emd_idtab_remove(t, h1, 100));
  assert_false(emd_idtab_remove(t, h2, 999));
  assert_true(has(t, h2, 200) && has(t, h2, 201) && has(t, h3, 300));
  assert_false(has(t, h1, 100));
  assert_int_equal(emd_idtab_count(t), 3);
  emd_idtab_close(t, NULL);
}

/* A run that wraps around the end of the table. */
static void removal_keeps_runs_that_wrap_around(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  uint64_t cap = emd_idtab_capacity(t), last = cap - 1;

  assert_int_equal(emd_idtab_insert(t, last, 1), 0);
  assert_int_equal(emd_idtab_insert(t, last + cap, 2), 0);  /* slot 0 */
  assert_int_equal(emd_idtab_insert(t, 1, 3), 0);          /* slot 1 */
  assert_int_equal(emd_idtab_insert(t, 2 * cap, 4), 0);    /* home 0: 2 */
  assert_true(emd_idtab_remove(t, last, 1));
  assert_true(has(t, last + cap, 2));
  assert_true(has(t, 1, 3));
  assert_true(has(t, 2 * cap, 4));
  assert_true(emd_idtab_remove(t, last + cap, 2));
  assert_true(has(t, 2 * cap, 4));
  assert_true(has(t, 1, 3));
  assert_int_equal(emd_idtab_count(t), 2);
  emd_idtab_close(t, NULL);
}

/* Pairs of keys share a home slot, so runs form and removals shift them;
 * never 0. */
static uint64_t hash_of(uint64_t k)
{
  return (((k >> 1) + 1) * 0x9E3779B97F4A7C15ull & ~(uint64_t)1) | (k & 1) |
         ((uint64_t)1 << 63);
}

/* Distinct keys' hashes spread over the table; never 0. */
static uint64_t spread(uint64_t i)
{
  return i * 0x9E3779B97F4A7C15ull | 1;
}

static void check_model(const struct emd_idtab *t, const uint64_t *model,
                        uint64_t space)
{
  for (uint64_t k = 0; k < space; k++) {
    uint64_t h = hash_of(k), got[4];
    size_t n = seqs_of(t, h, got, 4);

    if (model[k] != 0) {
      assert_int_equal(n, 1);
      assert_true(got[0] == model[k]);
    } else {
      assert_int_equal(n, 0);
    }
  }
}

/* Random inserts and removes of a small hash space (many collisions),
 * checked against a plain array, through two growths. */
static void random_operations_match_a_model(void **state)
{
  struct fix *f = *state;
  enum { N = 400000, SPACE = 200000 };
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  uint64_t *model = calloc(SPACE, sizeof(uint64_t));   /* seq or 0 */
  size_t live = 0, cap0 = emd_idtab_capacity(t);
  uint64_t x = 88172645463325252ull;
  bool saw_growing = false;

  assert_non_null(model);
  for (uint64_t i = 1; i <= N; i++) {
    uint64_t k, h;

    /* Now and then, and whenever a growth is under way, every key. */
    if (i % 50000 == 0 || (emd_idtab_step(t, 0) && i % 1999 == 0)) {
      saw_growing |= emd_idtab_step(t, 0);
      check_model(t, model, SPACE);
    }

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    k = x % SPACE;
    h = hash_of(k);
    if (model[k] != 0 && (x >> 60) < 6) {
      assert_true(emd_idtab_remove(t, h, model[k]));
      model[k] = 0;
      live--;
    } else if (model[k] == 0) {
      /* i is a seq never used before: either call may add it */
      assert_int_equal(i % 2 ? emd_idtab_insert_new(t, h, i)
                             : emd_idtab_insert(t, h, i), 0);
      model[k] = i;
      live++;
    }
  }
  assert_int_equal(emd_idtab_count(t), live);
  assert_true(emd_idtab_capacity(t) >= cap0 * 2);
  assert_true(saw_growing);
  check_model(t, model, SPACE);
  while (emd_idtab_step(t, 1000))
    ;
  check_model(t, model, SPACE);
  assert_int_equal(emd_idtab_count(t), live);
  free(model);
  emd_idtab_close(t, NULL);
}

/* While a growth is under way: entries in both tables are found, a
 * removal in the old one keeps the runs behind it whole, a pair still in
 * the old one is not added twice, and a clean close moves the rest. */
static void growth_moves_slots_a_few_at_a_time(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  uint64_t cap = emd_idtab_capacity(t), n = cap / 2;
  /* Runs: groups of 4 hashes share a home slot. */
#define H(i) ((((uint64_t)(i) / 4) * 2654435761u % cap) | \
              (((uint64_t)(i) % 4 + 1) << 40))

  for (uint64_t i = 0; i < n; i++)
    assert_int_equal(emd_idtab_insert(t, H(i), i + 1), 0);
  assert_false(emd_idtab_step(t, 0));          /* not growing yet */
  assert_int_equal(emd_idtab_insert(t, H(n), n + 1), 0);
  assert_true(emd_idtab_step(t, 0));           /* growing now */
  assert_int_equal(emd_idtab_capacity(t), cap * 2);
  assert_true(emd_idtab_step(t, cap / 4));     /* a quarter moved */
  /* Everything is found, wherever it is. */
  for (uint64_t i = 0; i <= n; i++)
    assert_true(has(t, H(i), i + 1));
  /* Remove the head of every run (old or new table): the rest stay. */
  for (uint64_t i = 0; i <= n; i += 4)
    assert_true(emd_idtab_remove(t, H(i), i + 1));
  for (uint64_t i = 0; i <= n; i++)
    assert_true(has(t, H(i), i + 1) == (i % 4 != 0));
  /* A pair still in the old table is not added again. */
  assert_int_equal(emd_idtab_insert(t, H(n - 1), n), 0);
  assert_int_equal(seqs_of(t, H(n - 1), (uint64_t[4]){ 0 }, 4), 1);
  assert_int_equal(emd_idtab_count(t), n + 1 - (n / 4 + 1));
  /* A clean close moves the rest; the file holds every pair. */
  assert_int_equal(emd_idtab_close(t, &stamp_a), 0);
  t = open_tab(f, &stamp_a, &trusted);
  assert_true(trusted);
  assert_false(emd_idtab_step(t, 0));
  assert_int_equal(emd_idtab_capacity(t), cap * 2);
  for (uint64_t i = 0; i <= n; i++)
    assert_true(has(t, H(i), i + 1) == (i % 4 != 0));
  assert_int_equal(emd_idtab_count(t), n + 1 - (n / 4 + 1));
#undef H
  emd_idtab_close(t, NULL);
}

static void rollback_undoes_inserts_and_removes_commit_keeps_them(
    void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);

  assert_int_equal(emd_idtab_insert(t, 11, 1), 0);
  assert_int_equal(emd_idtab_insert(t, 12, 2), 0);
  emd_idtab_begin(t);
  assert_int_equal(emd_idtab_insert(t, 13, 3), 0);
  assert_int_equal(emd_idtab_insert_new(t, 14, 4), 0);
  assert_true(has(t, 14, 4));
  assert_int_equal(emd_idtab_insert(t, 11, 1), 0);   /* there: no entry */
  assert_true(emd_idtab_remove(t, 12, 2));
  assert_false(emd_idtab_remove(t, 99, 9));
  assert_int_equal(emd_idtab_rollback(t), 0);
  assert_true(has(t, 11, 1) && has(t, 12, 2));
  assert_false(has(t, 13, 3) || has(t, 14, 4));
  assert_int_equal(emd_idtab_count(t), 2);

  /* A rollback across a growth. */
  emd_idtab_begin(t);
  for (uint64_t i = 100; i < 100000; i++)
    assert_int_equal(emd_idtab_insert(t, i * 7919, i), 0);
  assert_true(emd_idtab_capacity(t) > 65536);
  assert_true(emd_idtab_remove(t, 11, 1));
  assert_int_equal(emd_idtab_rollback(t), 0);
  assert_int_equal(emd_idtab_count(t), 2);
  assert_true(has(t, 11, 1) && has(t, 12, 2));
  assert_false(has(t, 500 * 7919, 500));

  emd_idtab_begin(t);
  assert_int_equal(emd_idtab_insert(t, 13, 3), 0);
  emd_idtab_commit(t);
  assert_int_equal(emd_idtab_rollback(t), 0);        /* nothing to undo */
  assert_true(has(t, 13, 3));
  emd_idtab_close(t, NULL);
}

static void only_a_clean_close_with_the_same_stamp_is_trusted(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);

  assert_false(trusted);                     /* a new file */
  for (uint64_t i = 1; i <= 50000; i++)      /* grows once */
    assert_int_equal(emd_idtab_insert(t, i * 2654435761u, i), 0);
  assert_int_equal(emd_idtab_close(t, &stamp_a), 0);

  t = open_tab(f, &stamp_a, &trusted);
  assert_true(trusted);
  assert_int_equal(emd_idtab_count(t), 50000);
  assert_true(has(t, (uint64_t)777 * 2654435761u, 777));
  /* Open and not closed cleanly (a crash): not trusted next time. */
  emd_idtab_close(t, NULL);
  t = open_tab(f, &stamp_a, &trusted);
  assert_false(trusted);
  assert_int_equal(emd_idtab_count(t), 0);
  assert_false(has(t, (uint64_t)777 * 2654435761u, 777));

  /* Clean, but the spool has moved on since (another stamp). */
  assert_int_equal(emd_idtab_insert(t, 5, 5), 0);
  assert_int_equal(emd_idtab_close(t, &stamp_a), 0);
  t = open_tab(f, &stamp_b, &trusted);
  assert_false(trusted);
  assert_int_equal(emd_idtab_count(t), 0);
  emd_idtab_close(t, NULL);
}

static void a_garbled_or_short_file_is_emptied_not_trusted(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t;
  FILE *fp;

  fp = fopen(f->path, "w");
  assert_non_null(fp);
  fputs("EMDIDTB1 but not a table", fp);
  fclose(fp);
  t = open_tab(f, &stamp_a, &trusted);
  assert_false(trusted);
  assert_int_equal(emd_idtab_count(t), 0);
  assert_int_equal(emd_idtab_insert(t, 9, 9), 0);
  assert_int_equal(emd_idtab_close(t, &stamp_a), 0);
  /* Cut short after a clean close. */
  assert_int_equal(truncate(f->path, 8192), 0);
  t = open_tab(f, &stamp_a, &trusted);
  assert_false(trusted);
  assert_false(has(t, 9, 9));
  emd_idtab_close(t, NULL);
}

static void open_reports_a_path_it_cannot_use(void **state)
{
  struct emd_idtab *t;
  bool trusted;
  char err[256];

  (void)state;
  assert_int_equal(emd_idtab_open("/nonexistent-dir/ids.tab", &stamp_a, &t,
                                  &trusted, err, sizeof(err)), ENOENT);
  assert_null(t);
  assert_non_null(strstr(err, "/nonexistent-dir/ids.tab"));
  assert_non_null(strstr(err, "No such file"));
}

/* A growth that cannot make its file (here the file size limit, as a
 * full disk would) fails the insert that needed it with the error, and
 * leaves the table as it was and usable: everything found, the journal
 * able to roll back; once the file can be made, the next insert grows. */
static void a_growth_that_cannot_make_its_file_fails_cleanly(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  uint64_t cap = emd_idtab_capacity(t), n = cap / 2;
  struct rlimit old, lim;
  void (*was)(int);

  for (uint64_t i = 1; i <= n; i++)
    assert_int_equal(emd_idtab_insert_new(t, spread(i), i), 0);
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
  was = signal(SIGXFSZ, SIG_IGN);
  lim = old;
  /* room for a file of cap slots (16 bytes and a page), not of 2 cap */
  lim.rlim_cur = (rlim_t)(cap * 16 + 4096) + cap * 8;
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

  emd_idtab_begin(t);
  assert_int_equal(emd_idtab_insert(t, spread(n + 1), n + 1), EFBIG);
  assert_int_equal(emd_idtab_insert_new(t, spread(n + 2), n + 2), EFBIG);
  assert_int_equal(emd_idtab_capacity(t), cap);
  assert_int_equal(emd_idtab_count(t), n);
  assert_false(has(t, spread(n + 1), n + 1) ||
               has(t, spread(n + 2), n + 2));
  assert_true(emd_idtab_remove(t, spread(7), 7));  /* still usable */
  assert_int_equal(emd_idtab_rollback(t), 0);  /* undoes the removal only */
  assert_int_equal(emd_idtab_count(t), n);
  for (uint64_t i = 1; i <= n; i++)
    assert_true(has(t, spread(i), i));

  assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, was);
  assert_int_equal(emd_idtab_insert_new(t, spread(n + 1), n + 1), 0);
  assert_int_equal(emd_idtab_capacity(t), cap * 2);
  assert_true(has(t, spread(n + 1), n + 1) && has(t, spread(1), 1));
  emd_idtab_close(t, NULL);
}

/* The VmFlags of the mapping of path in /proc/self/smaps (NULL if none):
 * "hg" there is MADV_HUGEPAGE. */
static char *vm_flags_of(const char *path, char *out, size_t len)
{
  FILE *f = fopen("/proc/self/smaps", "r");
  char line[512];
  bool in = false;
  size_t plen = strlen(path);

  assert_non_null(f);
  while (fgets(line, sizeof(line), f) != NULL) {
    size_t n = strlen(line);

    if (n > 0 && line[n - 1] == '\n')
      line[--n] = '\0';
    if (strncmp(line, "VmFlags:", 8) == 0) {
      if (in) {
        snprintf(out, len, "%s ", line + 8);
        fclose(f);
        return out;
      }
    } else if ((line[0] >= '0' && line[0] <= '9') ||
               (line[0] >= 'a' && line[0] <= 'f')) {
      /* a mapping's first line, "start-end perms offset dev inode path"
       * (the others start with a capitalized field name) */
      in = n >= plen && strcmp(line + n - plen, path) == 0;
    }
  }
  fclose(f);
  return NULL;
}

/* Small tables are mapped without the huge-page advice (the first touch
 * of a 2 MiB page would zero it in one go on the writer's thread); from
 * 2M slots (32 MiB) on, with it. */
static void only_big_tables_ask_for_huge_pages(void **state)
{
  struct fix *f = *state;
  bool trusted;
  struct emd_idtab *t = open_tab(f, &stamp_a, &trusted);
  char flags[256];
  uint64_t i = 1;

  assert_non_null(vm_flags_of(f->path, flags, sizeof(flags)));
  assert_null(strstr(flags, " hg "));
  for (; emd_idtab_capacity(t) < ((uint64_t)1 << 20); i++)
    assert_int_equal(emd_idtab_insert_new(t, spread(i), i), 0);
  assert_non_null(vm_flags_of(f->path, flags, sizeof(flags)));
  assert_null(strstr(flags, " hg "));               /* 16 MiB */
  for (; emd_idtab_capacity(t) < ((uint64_t)1 << 21); i++)
    assert_int_equal(emd_idtab_insert_new(t, spread(i), i), 0);
  assert_non_null(vm_flags_of(f->path, flags, sizeof(flags)));
  assert_non_null(strstr(flags, " hg "));           /* 32 MiB */
  assert_int_equal(emd_idtab_close(t, &stamp_a), 0);
  t = open_tab(f, &stamp_a, &trusted);              /* and when reopened */
  assert_true(trusted);
  assert_non_null(vm_flags_of(f->path, flags, sizeof(flags)));
  assert_non_null(strstr(flags, " hg "));
  assert_true(has(t, spread(1), 1) && has(t, spread(i - 1), i - 1));
  emd_idtab_close(t, NULL);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
  const struct CMUnitTest tests[] = {
    T(hash_is_seeded_stable_and_never_zero),
    T(insert_walk_remove_with_colliding_hashes),
    T(removal_keeps_runs_that_wrap_around),
    T(random_operations_match_a_model),
    T(growth_moves_slots_a_few_at_a_time),
    T(rollback_undoes_inserts_and_removes_commit_keeps_them),
    T(only_a_clean_close_with_the_same_stamp_is_trusted),
    T(a_garbled_or_short_file_is_emptied_not_trusted),
    T(a_growth_that_cannot_make_its_file_fails_cleanly),
    T(only_big_tables_ask_for_huge_pages),
    cmocka_unit_test(open_reports_a_path_it_cannot_use),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
