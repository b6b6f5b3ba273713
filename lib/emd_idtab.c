/* emd_idtab.c: see emd_idtab.h.
 *
 * File layout (native byte order; the file never leaves the machine):
 *   page 0     struct hdr
 *   then       cap slots of { hash, seq }, hash 0 meaning empty
 * The file's blocks are allocated when it is made (posix_fallocate).
 *
 * Growing is incremental, so no insert waits for millions of slots to
 * move: a file twice the size is made next to the old one (path + ".new")
 * and renamed into place at once; the old one stays mapped (and unlinked)
 * while each insert, and emd_idtab_step between groups, moves the next
 * few of its slots over. Meanwhile a walk looks in the new table, then in
 * the old one's slots not yet moved; the old table's slots are never
 * shifted, so its probe runs stay whole: a removal there leaves a
 * tombstone (seq TOMB), and moved slots read as occupied. */
#include "emd_idtab.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#define MAGIC "EMDIDTB1"
#define VERSION 1u
#define HDR_SIZE 4096u
#define MIN_CAP ((uint64_t)1 << 16)
#define MAX_CAP ((uint64_t)1 << 36)
#define HUGE_MIN ((size_t)32 << 20)  /* huge pages from here (2M slots;
                                       * map_file) */
#define TOMB UINT64_MAX            /* a removed slot of the old table */
#define MOVE_PER_INSERT 8          /* old slots moved per insert: done
                                    * long before the new table fills */

/* Grows past half full. With linear probing a miss (every new id) looks
 * at 1/2 (1 + 1/(1 - a)^2) slots on average at load a: 2.5 at a half,
 * 6 at 70 %; the slots are 16 bytes, so that is one cache line or two.
 * The file is page cache, not the process's memory. */
static bool too_full(uint64_t count, uint64_t cap)
{
  return count > cap / 2;
}

struct hdr {
  char magic[8];
  uint32_t version;
  uint32_t clean;
  uint64_t cap;
  uint64_t count;
  uint64_t seed;
  struct emd_idtab_stamp stamp;
};

struct slot {
  uint64_t h;
  uint64_t seq;
};

enum jkind { J_INSERTED, J_REMOVED };

struct jent {
  uint64_t h;
  uint64_t seq;
  enum jkind kind;
};

/* The table being emptied into the current one while growing. */
struct old {
  int fd;
  void *map;
  size_t map_len;
  struct slot *slots;
  uint64_t mask;
  uint64_t next;                   /* slots below this are moved */
};

struct emd_idtab {
  char *path;
  int fd;
  void *map;
  size_t map_len;
  struct hdr *hdr;
  struct slot *slots;
  uint64_t mask;
  struct old *old;                 /* while growing */
  bool journaling;
  struct jent *journal;
  size_t njournal, journal_cap;
};

static size_t file_size(uint64_t cap)
{
  return HDR_SIZE + (size_t)cap * sizeof(struct slot);
}

static uint64_t new_seed(void)
{
  uint64_t seed = 0;

  if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
    seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL);
  return seed;
}

/* Maps fd (already len bytes long).
 *
 * From HUGE_MIN on, with huge pages where the kernel can give them (file
 * THP: Linux 6.x maps large page-cache folios of ext4, xfs and tmpfs
 * files with 2 MiB entries when asked): each insert lands on a random
 * slot, and with 4 KiB pages a table of millions of ids is a TLB miss
 * and, after a restart or a writeback, a page fault per page touched.
 * Where the kernel cannot, the advice is ignored.
 *
 * Not below: the first touch of a 2 MiB page-cache page zeroes all of it
 * in one go in the kernel, where nothing preempts it, on the spool
 * writer's thread while commits wait. In a VM whose host backs memory
 * on first touch that was 8 to 20 ms (the writer's longest stretches on
 * a core at 20 000 events/s: 20, 16, 9 ms with the advice on every
 * table, 5, 4, 4 ms without it on small ones), a stall per 2 MiB of
 * every new table; with 4 KiB pages the same cost comes a page at a
 * time. A small table misses the TLB less to begin with, and its page
 * walks hit the cache. */
static int map_file(int fd, size_t len, void **map)
{
  *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (*map == MAP_FAILED) {
    *map = NULL;
    return errno;
  }
#ifdef MADV_HUGEPAGE
  if (len >= HUGE_MIN)
    (void)madvise(*map, len, MADV_HUGEPAGE);
#endif
  return 0;
}

static void use_map(struct emd_idtab *t, void *map, size_t len)
{
  t->map = map;
  t->map_len = len;
  t->hdr = map;
  t->slots = (struct slot *)((char *)map + HDR_SIZE);
  t->mask = t->hdr->cap - 1;
}

/* A fresh, empty file of cap slots at fd (truncated first: the slots
 * read as zero, and the file stays sparse until they are used). */
static int init_file(int fd, uint64_t cap, uint64_t seed, void **map)
{
  struct hdr *h;
  int rc;

  if (ftruncate(fd, 0) != 0 || ftruncate(fd, (off_t)file_size(cap)) != 0)
    return errno;
  /* The blocks now: a full disk is an error here, where a sparse page
   * first written through the map would be a SIGBUS. */
  rc = posix_fallocate(fd, 0, (off_t)file_size(cap));
  if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
    return rc;
  rc = map_file(fd, file_size(cap), map);
  if (rc != 0)
    return rc;
  h = *map;
  memcpy(h->magic, MAGIC, 8);
  h->version = VERSION;
  h->clean = 0;
  h->cap = cap;
  h->count = 0;
  h->seed = seed;
  return 0;
}

static bool header_ok(const struct hdr *h, size_t len)
{
  return memcmp(h->magic, MAGIC, 8) == 0 && h->version == VERSION &&
         h->cap >= MIN_CAP && h->cap <= MAX_CAP &&
         (h->cap & (h->cap - 1)) == 0 && len == file_size(h->cap) &&
         h->count < h->cap;
}

int emd_idtab_open(const char *path, const struct emd_idtab_stamp *stamp,
                   struct emd_idtab **out, bool *trusted, char *err,
                   size_t errlen)
{
  struct emd_idtab *t;
  struct hdr probe;
  struct stat st;
  void *map = NULL;
  bool keep = false;
  int rc;

  *out = NULL;
  *trusted = false;
  t = calloc(1, sizeof(*t));
  if (t == NULL || (t->path = strdup(path)) == NULL) {
    free(t);
    snprintf(err, errlen, "id table %s: out of memory", path);
    return ENOMEM;
  }
  t->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (t->fd < 0 || fstat(t->fd, &st) != 0) {
    rc = errno;
    goto fail;
  }
  if (st.st_size >= (off_t)sizeof(probe) &&
      pread(t->fd, &probe, sizeof(probe), 0) == (ssize_t)sizeof(probe) &&
      header_ok(&probe, (size_t)st.st_size))
    keep = probe.clean == 1 &&
           memcmp(&probe.stamp, stamp, sizeof(*stamp)) == 0;
  if (keep)
    rc = map_file(t->fd, (size_t)st.st_size, &map);
  else
    rc = init_file(t->fd, MIN_CAP, new_seed(), &map);
  if (rc != 0)
    goto fail;
  use_map(t, map, keep ? (size_t)st.st_size : file_size(MIN_CAP));
  /* From now on the file on disk no longer matches any stamp until a
   * clean close says it does. */
  t->hdr->clean = 0;
  if (msync(t->map, HDR_SIZE, MS_SYNC) != 0) {
    rc = errno;
    goto fail;
  }
  *trusted = keep;
  *out = t;
  return 0;
fail:
  snprintf(err, errlen, "id table %s: %s", path, strerror(rc));
  if (map != NULL)
    munmap(map, keep ? (size_t)st.st_size : file_size(MIN_CAP));
  if (t->fd >= 0)
    close(t->fd);
  free(t->path);
  free(t);
  return rc;
}

static void old_drop(struct emd_idtab *t)
{
  if (t->old == NULL)
    return;
  munmap(t->old->map, t->old->map_len);
  close(t->old->fd);
  free(t->old);
  t->old = NULL;
}

int emd_idtab_close(struct emd_idtab *t, const struct emd_idtab_stamp *stamp)
{
  int rc = 0;

  if (t == NULL)
    return 0;
  if (stamp != NULL)
    while (emd_idtab_step(t, SIZE_MAX))
      ;                            /* a clean file holds every slot */
  old_drop(t);
  if (stamp != NULL) {
    /* Every slot on disk before the header says they are. */
    if (msync(t->map, t->map_len, MS_SYNC) != 0)
      rc = errno;
    if (rc == 0) {
      t->hdr->stamp = *stamp;
      t->hdr->clean = 1;
      if (msync(t->map, HDR_SIZE, MS_SYNC) != 0)
        rc = errno;
    }
  }
  munmap(t->map, t->map_len);
  close(t->fd);
  free(t->journal);
  free(t->path);
  free(t);
  return rc;
}

int emd_idtab_clear(struct emd_idtab *t)
{
  void *map;
  int rc;

  old_drop(t);
  munmap(t->map, t->map_len);
  t->map = NULL;
  rc = init_file(t->fd, MIN_CAP, new_seed(), &map);
  if (rc != 0)
    return rc;
  use_map(t, map, file_size(MIN_CAP));
  t->njournal = 0;
  return 0;
}

uint64_t emd_idtab_hash_seeded(uint64_t seed, const void *id, size_t len)
{
  uint64_t h = XXH3_64bits_withSeed(id, len, seed);

  return h != 0 ? h : 1;
}

uint64_t emd_idtab_hash(const struct emd_idtab *t, const void *id,
                        size_t len)
{
  return emd_idtab_hash_seeded(t->hdr->seed, id, len);
}

uint64_t emd_idtab_seed(const struct emd_idtab *t)
{
  return t->hdr->seed;
}

void emd_idtab_prefetch(const struct emd_idtab *t, uint64_t h)
{
  __builtin_prefetch(&t->slots[h & t->mask], 1, 3);
}

bool emd_idtab_next(const struct emd_idtab *t, uint64_t h, size_t *pos,
                    uint64_t *seq)
{
  const struct old *o = t->old;
  uint64_t ncap = t->mask + 1, i = *pos;

  /* *pos counts the slots looked at: first from h's home slot in the
   * table, then (past ncap) from its home slot in the old one. */
  for (; i < ncap; i++) {
    const struct slot *s = &t->slots[(h + i) & t->mask];

    if (s->h == 0)
      break;
    if (s->h == h) {
      *pos = (size_t)i + 1;
      *seq = s->seq;
      return true;
    }
  }
  if (o != NULL) {
    for (i = i < ncap ? 0 : i - ncap; i <= o->mask; i++) {
      uint64_t at = (h + i) & o->mask;
      const struct slot *s = &o->slots[at];

      if (s->h == 0)
        break;
      if (s->h == h && at >= o->next && s->seq != TOMB) {
        *pos = (size_t)(ncap + i + 1);
        *seq = s->seq;
        return true;
      }
    }
  }
  *pos = SIZE_MAX;
  return false;
}

/* Puts (h, seq) into slots of a table with mask, known not to be there
 * and with room. */
static void place(struct slot *slots, uint64_t mask, uint64_t h,
                  uint64_t seq)
{
  uint64_t i = h & mask;

  while (slots[i].h != 0)
    i = (i + 1) & mask;
  slots[i].h = h;
  slots[i].seq = seq;
}

bool emd_idtab_step(struct emd_idtab *t, size_t budget)
{
  struct old *o = t->old;

  if (o == NULL)
    return false;
  for (; budget > 0 && o->next <= o->mask; budget--, o->next++) {
    const struct slot *s = &o->slots[o->next];

    if (s->h != 0 && s->seq != TOMB)
      place(t->slots, t->mask, s->h, s->seq);
  }
  if (o->next <= o->mask)
    return true;
  old_drop(t);
  return false;
}

/* Starts growing: a table twice the size takes the file's name, and the
 * current one becomes the old one, emptied into it step by step. */
static int grow(struct emd_idtab *t)
{
  uint64_t cap = t->hdr->cap * 2;
  size_t len = file_size(cap);
  struct old *o;
  char *tmp;
  void *map = NULL;
  struct hdr *nh;
  int fd, rc;

  while (emd_idtab_step(t, SIZE_MAX))
    ;                              /* the last growth, if not done yet */
  if (cap > MAX_CAP)
    return ENOSPC;
  o = calloc(1, sizeof(*o));
  tmp = malloc(strlen(t->path) + 5);
  if (o == NULL || tmp == NULL) {
    free(o);
    free(tmp);
    return ENOMEM;
  }
  sprintf(tmp, "%s.new", t->path);
  fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  rc = fd < 0 ? errno : init_file(fd, cap, t->hdr->seed, &map);
  if (rc == 0 && rename(tmp, t->path) != 0)
    rc = errno;
  if (rc != 0) {
    if (map != NULL)
      munmap(map, len);
    if (fd >= 0) {
      close(fd);
      unlink(tmp);
    }
    free(tmp);
    free(o);
    return rc;
  }
  free(tmp);
  nh = map;
  nh->count = t->hdr->count;
  o->fd = t->fd;
  o->map = t->map;
  o->map_len = t->map_len;
  o->slots = t->slots;
  o->mask = t->mask;
  o->next = 0;
  t->old = o;
  t->fd = fd;
  use_map(t, map, len);
  return 0;
}

static int journal_add(struct emd_idtab *t, uint64_t h, uint64_t seq,
                       enum jkind kind)
{
  struct jent *j;
  size_t cap;

  if (!t->journaling)
    return 0;
  if (t->njournal == t->journal_cap) {
    cap = t->journal_cap ? t->journal_cap * 2 : 1024;
    j = realloc(t->journal, cap * sizeof(*j));
    if (j == NULL)
      return ENOMEM;
    t->journal = j;
    t->journal_cap = cap;
  }
  t->journal[t->njournal++] = (struct jent){ h, seq, kind };
  return 0;
}

static bool contains(const struct emd_idtab *t, uint64_t h, uint64_t seq)
{
  size_t pos = 0;
  uint64_t s;

  while (emd_idtab_next(t, h, &pos, &s))
    if (s == seq)
      return true;
  return false;
}

/* Insert without the journal; fresh: the caller knows (h, seq) is not
 * there. */
static int insert(struct emd_idtab *t, uint64_t h, uint64_t seq,
                  bool fresh, bool *added)
{
  int rc;

  *added = false;
  if (!fresh && contains(t, h, seq))
    return 0;
  if (too_full(t->hdr->count + 1, t->hdr->cap)) {
    rc = grow(t);
    if (rc != 0)
      return rc;
  }
  place(t->slots, t->mask, h, seq);
  t->hdr->count++;
  *added = true;
  emd_idtab_step(t, MOVE_PER_INSERT);
  return 0;
}

/* Remove without the journal. In the table the slot is emptied and the
 * slots after it in its run move back where their probe allows (no
 * tombstones); in the old table it becomes a tombstone. */
static bool remove_slot(struct emd_idtab *t, uint64_t h, uint64_t seq)
{
  struct old *o = t->old;
  uint64_t i, j, home;

  for (i = h & t->mask; t->slots[i].h != 0; i = (i + 1) & t->mask)
    if (t->slots[i].h == h && t->slots[i].seq == seq)
      break;
  if (t->slots[i].h == 0) {
    if (o == NULL)
      return false;
    for (i = h & o->mask; o->slots[i].h != 0; i = (i + 1) & o->mask)
      if (o->slots[i].h == h && o->slots[i].seq == seq && i >= o->next) {
        o->slots[i].seq = TOMB;
        t->hdr->count--;
        return true;
      }
    return false;
  }
  for (j = (i + 1) & t->mask; t->slots[j].h != 0; j = (j + 1) & t->mask) {
    home = t->slots[j].h & t->mask;
    /* The slot at j may move to i if its home is not in (i, j]. */
    if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
      t->slots[i] = t->slots[j];
      i = j;
    }
  }
  t->slots[i].h = 0;
  t->slots[i].seq = 0;
  t->hdr->count--;
  return true;
}

static int insert_journaled(struct emd_idtab *t, uint64_t h, uint64_t seq,
                            bool fresh)
{
  bool added;
  int rc;

  if (h == 0 || seq == TOMB)
    return EINVAL;
  /* Room in the journal first, so a change is never left unrecorded. */
  rc = journal_add(t, h, seq, J_INSERTED);
  if (rc != 0)
    return rc;
  rc = insert(t, h, seq, fresh, &added);
  if (!added && t->journaling)
    t->njournal--;
  return rc;
}

int emd_idtab_insert(struct emd_idtab *t, uint64_t h, uint64_t seq)
{
  return insert_journaled(t, h, seq, false);
}

int emd_idtab_insert_new(struct emd_idtab *t, uint64_t h, uint64_t seq)
{
  return insert_journaled(t, h, seq, true);
}

bool emd_idtab_remove(struct emd_idtab *t, uint64_t h, uint64_t seq)
{
  if (h == 0 || journal_add(t, h, seq, J_REMOVED) != 0)
    return false;
  if (remove_slot(t, h, seq))
    return true;
  if (t->journaling)
    t->njournal--;
  return false;
}

size_t emd_idtab_count(const struct emd_idtab *t)
{
  return (size_t)t->hdr->count;
}

size_t emd_idtab_capacity(const struct emd_idtab *t)
{
  return (size_t)t->hdr->cap;
}

void emd_idtab_begin(struct emd_idtab *t)
{
  t->journaling = true;
  t->njournal = 0;
}

void emd_idtab_commit(struct emd_idtab *t)
{
  t->journaling = false;
  t->njournal = 0;
}

int emd_idtab_rollback(struct emd_idtab *t)
{
  bool added;
  int rc = 0;

  t->journaling = false;
  while (t->njournal > 0) {
    const struct jent *j = &t->journal[--t->njournal];

    if (j->kind == J_INSERTED)
      remove_slot(t, j->h, j->seq);
    else if (rc == 0)
      rc = insert(t, j->h, j->seq, false, &added);
  }
  return rc;
}
