/* emd_spool.c: see emd_spool.h.
 *
 * Threads. The loop thread gathers appends and outcomes into a group
 * (struct group: an arena for the packed events and copies of the ops'
 * input, and an array of ops); an append is packed there and then, while
 * the event is in the loop's core's cache, with the places where the
 * ordinal and index go noted, so the writer settles those two and splices
 * them in without reading the event itself. At the end
 * of a loop turn (uv_check) the group goes to the writer thread if the
 * writer has nothing left to commit; otherwise it keeps gathering. The
 * writer runs one write transaction per group and hands the group back
 * (uv_async) once it is durable per spool.sync; the loop then runs the
 * group's callbacks in order and recycles it. Groups move between the
 * threads only under sp->mu, which orders everything written to them.
 * With spool.sync = interval the writer commits without fsync, parks the
 * group until the next mdb_env_sync and meanwhile takes the next group,
 * so up to MAX_INFLIGHT groups may wait for one sync.
 *
 * Databases (keys and values big-endian):
 *   pending    first seq(8) -> a chunk of SpoolRecords with consecutive
 *              seqs (see "pending: events in chunks")
 *   ids        first seq(8) -> delivered_ms(8) RUN_MARK, then per seq of
 *              a run of consecutive ones delivered together: varint(len)
 *              event id (schema 2: seq(8) -> delivered_ms(8) event id):
 *              the ids of delivered events, kept for dedup_window
 *   timers     timer -> next ordinal(4) last used ms(8)
 *   dead       seq(8) -> DeadRecord
 *   meta       "schema_version" -> u32, "instance_id" -> 16 bytes,
 *              "state" -> struct counters as 6 x u64
 * Schema 1 had ids as event id -> seq, a B-tree insert per event at a
 * random place (a page written per event with random ids), and the
 * delivered ids in a database of their own; schemas 1 and 2 kept one
 * SpoolRecord per row of pending (still read as they are). Opening an
 * older spool upgrades it.
 *
 * Which ids are known (pending, dead or delivered) is answered by the id
 * table (emd_idtab, a hash table in ids.tab next to data.mdb), from the
 * hash of an id to candidate seqs; the id is then compared with the one
 * stored at that seq here, so the databases stay the only truth. The
 * writer changes the table in step with each transaction (rolled back
 * with it). A table not closed cleanly with this spool's last
 * transaction is rebuilt from the databases, in steps between groups.
 * SpoolRecord and DeadRecord are written and read on the wire level here,
 * so events are packed once, spliced into the chunk being filled, and
 * never unpacked. */
#include "emd_spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>

#include "emd_err.h"
#include "emd_idtab.h"
#include "emd_log.h"
#include "emd_pack_event.h"
#include "emd_varint.h"

#define SCHEMA_VERSION 3u
#define META_SCHEMA "schema_version"
#define META_INSTANCE "instance_id"
#define META_STATE "state"
#define STATE_LEN 48            /* struct counters on disk */
#define INSTANCE_LEN 16
#define MAX_INFLIGHT 16         /* groups handed to the writer at once */
#define GATHER_MAX_OPS 65536    /* no room while a group waits this big */
#define GATHER_MAX_BYTES ((size_t)64 << 20)
/* Each commit costs the kernel a few hundred microseconds of CPU whatever
 * its size (its fsyncs, and in a VM the exits to the disk's host). A group
 * of deletes only (deliveries: nobody waits on them) waits up to
 * DELETE_LINGER_MS from its first for more, or for appends to go with:
 * while the forwarder drains a backlog, a commit per acknowledged batch
 * had cost more than the batch's deletes themselves. */
#define DELETE_LINGER_MS 10
#define EXCERPT_MAX 512
#define KEY_MAX 511             /* LMDB's default maximum key size */
#define WALK_MAX 65536          /* expiry rows per transaction */
#define REBUILD_STEP 16384      /* rows per id table rebuild step */
#define GROW_STEP 8192          /* id table slots moved per idle step:
                                 * about half a millisecond, the longest
                                 * a group that comes meanwhile waits */
#define PREFETCH_AHEAD 8        /* appends whose id slot is fetched ahead */
#define IDTAB_FILE "ids.tab"
#define MAP_HEADROOM ((uint64_t)4 << 30)  /* ids, timers, dead, free pages */
#define MIB ((uint64_t)1 << 20)

enum op_kind {
  OP_APPEND,
  OP_DELETE,
  OP_ATTEMPTED,
  OP_DEAD,
  OP_MAINT,         /* nothing: a transaction for expiry while idle */
  OP_RETRY,
  OP_PURGE
};

struct op {
  enum op_kind kind;
  union {
    struct {
      emd_spool_cb cb;
      void *data;
      uint32_t ordinal0, index0;  /* as given */
      /* The id's hash (0: no id, or one the spool refuses; the id
       * table's seed is fixed from open on, the spool never clears it)
       * and the timer: taken on append, so that the writer reads what it
       * needs of a new event from the op alone. */
      uint64_t h;
      const char *id;             /* in the group's arena, after packed */
      size_t idlen;
      uint8_t timer[EMD_TIMER_MAX];
      uint8_t timer_len;
      /* the event, packed on append with ordinal0 and index0 (in the
       * group's arena): the writer puts in what it settles */
      const uint8_t *packed;
      size_t packed_len;
      struct emd_pack_splice splice;
      struct emd_spool_result res;
    } app;
    struct {
      const uint64_t *seqs;       /* copy in the group's arena */
      size_t n;
    } seqs;
    struct {
      uint64_t seq;
      const char *reason;         /* copies in the group's arena */
      size_t reason_len;
      unsigned status;
      const uint8_t *excerpt;
      size_t excerpt_len;
    } dead;
    struct {
      uint64_t seq;               /* OP_RETRY: 0 for all */
      emd_spool_count_cb cb;
      void *data;
      int rc;
      uint64_t n;
    } count;
  } u;
};

/* The figures kept in meta "state". */
struct counters {
  uint64_t next_seq;
  uint64_t pending;
  uint64_t pending_bytes;
  uint64_t dead;
  uint64_t dropped;
  uint64_t expired;
};

struct group {
  struct group *next;        /* in a queue or the free list */
  struct emd_arena arena;    /* the events and copies of the ops' input */
  struct op *ops;
  size_t nops, cap;
  size_t eager;              /* ops other than deletes */
  uint64_t first_ns;         /* when its first op came */
  bool changed;              /* its commit changed the spool */
  struct counters after;     /* the writer's figures after it */
  uint64_t oldest_ms;
  uint64_t commits;
  bool ids_rebuilding;
};

/* Settings that may change live; the loop's copy is sp->k, the writer's
 * sp->w.k, taken under sp->mu from sp->k_shared before each group. */
struct knobs {
  enum emd_sync sync;
  uint64_t sync_interval_ms;
  uint64_t max_bytes;        /* 0: no bound */
  enum emd_on_full on_full;
  uint64_t max_age_ms;       /* 0: never expire */
  uint64_t dead_max;
  uint64_t timer_ttl_ms;     /* 0: keep counters forever */
  uint64_t dedup_window_ms;  /* 0: forget ids once delivered */
};

/* One timer counter in the writer's per-transaction map. */
struct tslot {
  uint32_t next;             /* the ordinal the next event gets */
  uint8_t len;
  bool used;
  bool dirty;                /* to be written at the end of the txn */
  uint8_t key[EMD_TIMER_MAX];
};

struct group_queue {
  struct group *head, *tail;
};

/* Filling an untrusted id table from pending, dead and ids, in steps. */
struct rebuild {
  bool active;
  int phase;                 /* 0 pending, 1 dead, 2 ids; 3 done */
  uint64_t next;             /* the next seq to look at in that phase */
  uint64_t n;                /* ids indexed */
  uint64_t start_ns;
};

/* The chunk this transaction's appends fill (see "pending: events in
 * chunks"): written to pending when full, before pending changes
 * otherwise, and at the end of the group. */
struct fill {
  uint8_t *buf;              /* CHUNK_MARK, entries */
  size_t len, cap;
  uint64_t first, last;      /* seqs; n == 0: empty */
  size_t n;
};

/* The ids of a run of consecutive seqs delivered together, on their way to
 * a row of ids. */
struct run {
  uint8_t *buf;              /* delivered_ms(8) RUN_MARK, then the ids */
  size_t len, cap;
  uint64_t first, last;
  size_t n;                  /* 0: empty */
};

/* One event of the chunk being edited. rec points into the map (or a
 * page this transaction dirtied): pending is not changed while the edit
 * holds it, so it stays put. */
struct eentry {
  uint64_t seq;
  const uint8_t *rec;
  size_t len;
  size_t idoff;              /* as in the chunk */
  uint32_t bump;             /* attempts to add */
  bool gone;
};

/* The chunk whose events this transaction removes or changes: kept as
 * it is in pending and rewritten once, when the writer moves on to
 * another chunk, changes pending otherwise, or ends the group. */
struct edit {
  bool active;
  bool front;                /* pending's first chunk */
  bool changed;
  bool garbled;              /* its end could not be read */
  uint8_t raw[KEY_MAX];      /* its key */
  size_t rawlen;
  struct eentry *e;
  size_t n, cap;
  size_t live;               /* entries not gone */
  size_t at;                 /* where the last lookup ended */
  size_t front_at;           /* front: the entries before are gone */
};

/* What only the writer thread touches (after open). */
struct writer {
  struct knobs k;
  struct counters c;         /* as of the last commit */
  uint64_t oldest_ms;
  uint64_t commits;
  struct tslot *slots;       /* open addressing; nslots is a power of 2 */
  size_t nslots;
  size_t *touched;           /* slots used in this txn */
  size_t ntouched;
  uint8_t *scratch;
  size_t scratch_cap;
  uint64_t next_sweep_ms;
  struct group_queue unsynced;  /* committed, waiting for mdb_env_sync */
  uint64_t last_sync_ns;
  struct emd_idtab *ids;     /* see the top of this file */
  struct fill fill;
  struct edit ed;
  struct run run;
  struct rebuild rb;
  bool ids_bad;              /* a rollback failed: not clean at close */
};

struct emd_spool {
  uv_loop_t *loop;
  uv_async_t async;          /* writer -> loop: groups done */
  uv_check_t check;          /* end of a loop turn: hand the group over */
  uv_idle_t idle;            /* keeps poll from blocking while ops wait */
  uv_timer_t maint;          /* expiry while no group comes by */
  uv_timer_t space;          /* deletes' turn, see DELETE_LINGER_MS */
  int nhandles;              /* open handles; the last close frees */

  MDB_env *env;
  MDB_dbi db_pending, db_ids, db_timers, db_dead, db_meta;
  uint32_t loaded_version;   /* of an existing spool; 0 when created */
  MDB_txn *rtxn;             /* the loop's reader, reset between reads */
  MDB_cursor *rcur;
  bool reading;
  int lockfd;                /* the spool directory, flock()ed */

  /* Loop thread. */
  struct knobs k;
  struct group *gather;      /* the group being gathered */
  struct group *free_groups;
  size_t inflight;           /* groups at the writer */
  struct emd_spool_stats st;
  uint8_t instance[INSTANCE_LEN];
  emd_spool_changed_cb changed_cb;
  void *changed_data;
  bool room_was;             /* emd_spool_has_room at the last check */
  struct emd_arena spare;    /* emd_spool_arena after close ran short */
  struct emd_pack_buf lpack; /* events are packed here on append */
  uint64_t ids_seed;         /* the id table's, for hashing on append */
  bool closing;

  /* Shared, under mu. */
  uv_mutex_t mu;
  uv_cond_t cv;
  bool sync_init;
  struct group_queue todo;   /* handed over, not yet taken */
  struct group_queue done;   /* durable: callbacks to run */
  bool busy;                 /* the writer holds an uncommitted group */
  bool stop;
  bool exited;
  struct knobs k_shared;

  uv_thread_t thread;
  bool thread_started;
  struct writer w;
};

/* One write transaction of the writer. */
struct txn {
  struct emd_spool *sp;
  MDB_txn *txn;
  uint64_t now_ms;
  bool dirty;
  uint64_t dropped;          /* evicted for room, for one log line */
  MDB_cursor *app;           /* pending's end, for a run of chunks */
  MDB_cursor *pc;            /* pending, for lookups */
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t wall_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put_be64(uint8_t *p, uint64_t v)
{
  for (int i = 7; i >= 0; i--) {
    p[i] = (uint8_t)v;
    v >>= 8;
  }
}

static uint64_t get_be64(const uint8_t *p)
{
  uint64_t v = 0;

  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

static int err_from_mdb(int rc)
{
  switch (rc) {
  case MDB_SUCCESS:
    return 0;
  case MDB_MAP_FULL:
  case MDB_TXN_FULL:
  case ENOSPC:
    return EMD_ESPOOLFULL;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_INVALID:
  case MDB_VERSION_MISMATCH:
  case MDB_INCOMPATIBLE:
    return EMD_ESPOOLBAD;
  default:
    return rc > 0 ? -rc : EMD_EINTERNAL;
  }
}

/* Text for a code from LMDB (MDB_* or errno) or from us. */
static const char *why(int rc)
{
  return rc < -1000 && rc > -2000 ? emd_strerror(rc) : mdb_strerror(rc);
}

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL || errlen == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- protobuf wire -------------------------------------------------- */

static inline int get_varint(const uint8_t **pp, const uint8_t *end,
                             uint64_t *v)
{
  const uint8_t *p = *pp;
  uint64_t r = 0;

  if (p != end && p[0] < 0x80) {   /* most of them: lengths, deltas */
    *v = p[0];
    *pp = p + 1;
    return 0;
  }
  for (unsigned shift = 0; shift < 64; shift += 7) {
    if (p == end)
      return -1;
    r |= (uint64_t)(*p & 0x7f) << shift;
    if ((*p++ & 0x80) == 0) {
      *pp = p;
      *v = r;
      return 0;
    }
  }
  return -1;
}

/* Reads the next field at *pp: its number, and its value (varint) or its
 * bytes (length-delimited; *val is then the length). Fixed-width fields
 * are skipped with *val 0. Returns 1, 0 at the end, -1 on bad input. */
static int wire_next(const uint8_t **pp, const uint8_t *end, uint32_t *field,
                     uint64_t *val, const uint8_t **bytes)
{
  uint64_t tag, len;

  if (*pp == end)
    return 0;
  if (get_varint(pp, end, &tag) != 0 || tag >> 3 == 0 || tag >> 3 > UINT32_MAX)
    return -1;
  *field = (uint32_t)(tag >> 3);
  *bytes = NULL;
  *val = 0;
  switch (tag & 7) {
  case 0:
    return get_varint(pp, end, val) == 0 ? 1 : -1;
  case 1:
  case 5:
    len = (tag & 7) == 1 ? 8 : 4;
    break;
  case 2:
    if (get_varint(pp, end, &len) != 0)
      return -1;
    *val = len;
    *bytes = *pp;
    break;
  default:
    return -1;                      /* groups: never in our messages */
  }
  if (len > (uint64_t)(end - *pp))
    return -1;
  *pp += len;
  return 1;
}

/* A SpoolRecord, as pointers into its bytes. */
struct rec {
  const uint8_t *event;
  size_t event_len;
  uint64_t accepted_ms;
  uint32_t attempts;
};

static int rec_parse(const void *buf, size_t n, struct rec *r)
{
  const uint8_t *p = buf, *end = p + n, *b;
  uint32_t f;
  uint64_t v;
  int rc;

  memset(r, 0, sizeof(*r));
  /* The shape emitd writes (rec_head, rec_tail): event, then accepted_ms
   * and attempts if not 0, each once. Anything else takes the walk. */
  if (n >= 2 && p[0] == 0x0a) {
    const uint8_t *q = p + 1, *ev;
    uint64_t len, ms = 0, att = 0;

    if (get_varint(&q, end, &len) == 0 && len <= (uint64_t)(end - q)) {
      ev = q;
      q += len;
      if (q < end && *q == 0x10 && (q++, get_varint(&q, end, &ms) != 0))
        goto walk;
      if (q < end && *q == 0x18 &&
          (q++, get_varint(&q, end, &att) != 0 || att > UINT32_MAX))
        goto walk;
      if (q == end) {
        r->event = ev;
        r->event_len = (size_t)len;
        r->accepted_ms = ms;
        r->attempts = (uint32_t)att;
        return 0;
      }
    }
  }
walk:
  while ((rc = wire_next(&p, end, &f, &v, &b)) == 1) {
    if (f == 1 && b != NULL) {
      r->event = b;
      r->event_len = (size_t)v;
    } else if (f == 2 && b == NULL) {
      r->accepted_ms = v;
    } else if (f == 3 && b == NULL) {
      r->attempts = (uint32_t)v;
    }
  }
  return rc == 0 && r->event != NULL ? 0 : -1;
}

/* SpoolRecord in the field order and with the zero omissions of
 * protobuf-c's own output. */
static size_t rec_size(size_t event_len, uint64_t accepted_ms,
                       uint32_t attempts)
{
  size_t n = 1 + emd_varint_size(event_len) + event_len;

  if (accepted_ms != 0)
    n += 1 + emd_varint_size(accepted_ms);
  if (attempts != 0)
    n += 1 + emd_varint_size(attempts);
  return n;
}

static uint8_t *rec_head(uint8_t *p, size_t event_len)
{
  *p++ = 0x0a;
  return emd_varint_put(p, event_len);
}

static uint8_t *rec_tail(uint8_t *p, uint64_t accepted_ms, uint32_t attempts)
{
  if (accepted_ms != 0) {
    *p++ = 0x10;
    p = emd_varint_put(p, accepted_ms);
  }
  if (attempts != 0) {
    *p++ = 0x18;
    p = emd_varint_put(p, attempts);
  }
  return p;
}

/* Finds length-delimited field want in buf: the first one. Every event in
 * the spool was packed by emitd (emd_pack, or protobuf-c before it), which
 * writes a field once and in field-number order, so the first is the only
 * one, and the walk stops there instead of reading the whole event (about
 * 1 100 instructions per delivered event otherwise). */
static int wire_find(const uint8_t *buf, size_t n, uint32_t want,
                     const uint8_t **out, size_t *outlen)
{
  const uint8_t *p = buf, *end = buf + n, *b;
  uint32_t f;
  uint64_t v;
  int rc;

  /* The fields before it have one-byte tags and are varints or strings:
   * stepped over here; anything else goes to wire_next() from where this
   * stopped. */
  while (p < end && p[0] >= 8 && p[0] < 0x80 &&
         ((p[0] & 7) == 0 || (p[0] & 7) == 2)) {
    const uint8_t *q = p + 1;

    if (get_varint(&q, end, &v) != 0)
      return -1;
    if ((p[0] & 7) == 0) {
      p = q;
      continue;
    }
    if (v > (uint64_t)(end - q))
      return -1;
    if (p[0] >> 3 == want) {
      *out = q;
      *outlen = (size_t)v;
      return 0;
    }
    p = q + v;
  }
  while ((rc = wire_next(&p, end, &f, &v, &b)) == 1)
    if (f == want && b != NULL) {
      *out = b;
      *outlen = (size_t)v;
      return 0;
    }
  return -1;
}

/* The TelemetryEvent id inside a packed Event (Event.event = 5, id = 2). */
static int event_id(const uint8_t *ev, size_t n, const uint8_t **id,
                    size_t *idlen)
{
  const uint8_t *te;
  size_t telen;

  if (wire_find(ev, n, 5, &te, &telen) != 0)
    return -1;
  if (wire_find(te, telen, 2, id, idlen) != 0 || *idlen == 0 ||
      *idlen > KEY_MAX)
    return -1;
  return 0;
}

/* A DeadRecord, as pointers into its bytes. */
struct deadrec {
  const uint8_t *rec;
  size_t rec_len;
  const uint8_t *reason;
  size_t reason_len;
  unsigned status;
  const uint8_t *excerpt;
  size_t excerpt_len;
  uint64_t time_ms;
};

static int dead_parse(const void *buf, size_t n, struct deadrec *d)
{
  const uint8_t *p = buf, *end = p + n, *b;
  uint32_t f;
  uint64_t v;
  int rc;

  memset(d, 0, sizeof(*d));
  while ((rc = wire_next(&p, end, &f, &v, &b)) == 1) {
    if (f == 1 && b != NULL) {
      d->rec = b;
      d->rec_len = (size_t)v;
    } else if (f == 2 && b != NULL) {
      d->reason = b;
      d->reason_len = (size_t)v;
    } else if (f == 3 && b == NULL) {
      d->status = (unsigned)v;
    } else if (f == 4 && b != NULL) {
      d->excerpt = b;
      d->excerpt_len = (size_t)v;
    } else if (f == 5 && b == NULL) {
      d->time_ms = v;
    }
  }
  return rc == 0 && d->rec != NULL ? 0 : -1;
}

static size_t len_field_size(size_t n)
{
  return n == 0 ? 0 : 1 + emd_varint_size(n) + n;
}

static uint8_t *put_len_field(uint8_t *p, uint8_t tag, const void *b,
                              size_t n)
{
  if (n == 0)
    return p;
  *p++ = tag;
  p = emd_varint_put(p, n);
  memcpy(p, b, n);
  return p + n;
}

/* ---- pending: events in chunks -------------------------------------------
 *
 * pending holds events several to a row: a chunk of events with
 * consecutive seqs (up to CHUNK_MAX bytes, or one event bigger than
 * that). A row per event made LMDB insert and delete a node per event, and
 * deleting from the front of the tree (delivery order) made it refill the
 * emptying page from its neighbour at nearly every delete, copying an
 * event each time; a chunk is one node, its bytes in overflow pages that a
 * delete frees whole.
 *
 *   key    the smallest seq in the chunk (8 bytes, big-endian)
 *   value  CHUNK_MARK, then per event, seqs ascending:
 *          varint(seq - key) varint(len) varint(idoff) SpoolRecord[len]
 *          where idoff is where the event's id starts in the record (0:
 *          not noted), so that taking an event out of a chunk (every
 *          delivery) need not walk the record for its id
 *
 * A value that does not start with CHUNK_MARK is schema 2's single
 * SpoolRecord (its first byte is 0x0a, field 1) for seq = key, read as a
 * chunk of one. A chunk is rewritten (under its new smallest seq) when
 * some of its events go, and deleted when the last one goes. */
#define CHUNK_MARK 0x00
#define CHUNK_MAX ((size_t)32 << 10)

struct chunk_it {
  const uint8_t *p, *end;
  uint64_t key, last;
  size_t idoff;              /* of the entry chunk_next gave (0: none) */
  bool single;               /* schema 2's one record */
  bool started;
};

static void chunk_begin(struct chunk_it *it, const MDB_val *k,
                        const MDB_val *v)
{
  it->p = v->mv_data;
  it->end = it->p + v->mv_size;
  it->key = k->mv_size == 8 ? get_be64(k->mv_data) : 0;
  it->single = v->mv_size == 0 || it->p[0] != CHUNK_MARK;
  it->started = false;
  if (!it->single)
    it->p++;
  if (k->mv_size != 8)
    it->p = it->end = NULL;        /* not ours: nothing in it */
}

/* The next event of a chunk: 1 with *seq and the record, 0 at the end,
 * -1 if the rest of the chunk cannot be read. */
static int chunk_next(struct chunk_it *it, uint64_t *seq, const uint8_t **rec,
                      size_t *len)
{
  uint64_t d, n, io;

  it->idoff = 0;
  if (it->single) {
    if (it->started || it->p == NULL)
      return 0;
    it->started = true;
    *seq = it->key;
    *rec = it->p;
    *len = (size_t)(it->end - it->p);
    return 1;
  }
  if (it->p == it->end)
    return 0;
  if (get_varint(&it->p, it->end, &d) != 0 ||
      get_varint(&it->p, it->end, &n) != 0 ||
      get_varint(&it->p, it->end, &io) != 0 || (io != 0 && io >= n) ||
      n > (uint64_t)(it->end - it->p) || d > UINT64_MAX - it->key ||
      (it->started && it->key + d <= it->last) || (!it->started && d != 0)) {
    it->p = it->end;
    return -1;
  }
  it->started = true;
  it->last = *seq = it->key + d;
  it->idoff = (size_t)io;
  *rec = it->p;
  *len = (size_t)n;
  it->p += n;
  return 1;
}

/* Puts c on the chunk that may hold seq: the last whose key is at most
 * seq. MDB_NOTFOUND when every key is above seq (or there are none). */
static int chunk_floor(MDB_cursor *c, uint64_t seq, MDB_val *k, MDB_val *v)
{
  uint8_t key[8];
  int rc;

  put_be64(key, seq);
  k->mv_size = 8;
  k->mv_data = key;
  rc = mdb_cursor_get(c, k, v, MDB_SET_RANGE);
  if (rc == 0 && k->mv_size == 8 && get_be64(k->mv_data) == seq)
    return 0;
  if (rc == 0)
    return mdb_cursor_get(c, k, v, MDB_PREV);
  if (rc == MDB_NOTFOUND)
    return mdb_cursor_get(c, k, v, MDB_LAST);
  return rc;
}

/* Puts c on the first chunk that may hold a seq at or above from. */
static int chunk_from(MDB_cursor *c, uint64_t from, MDB_val *k, MDB_val *v)
{
  int rc = chunk_floor(c, from, k, v);

  return rc == MDB_NOTFOUND ? mdb_cursor_get(c, k, v, MDB_FIRST) : rc;
}

/* Rows of ids: a run of delivered ids (schema 3), or schema 2's one. */
#define RUN_MARK 0x00
#define RUN_MAX ((size_t)64 << 10)

struct idrow_it {
  const uint8_t *p, *end;
  uint64_t seq;              /* of the next id */
  bool single;
  bool done;
};

/* Starts on the row at k, v: *ms when its ids were delivered; -1 if it
 * is garbled. */
static int idrow_begin(struct idrow_it *it, const MDB_val *k,
                       const MDB_val *v, uint64_t *ms)
{
  const uint8_t *p = v->mv_data;

  if (k->mv_size != 8 || v->mv_size < 8)
    return -1;
  *ms = get_be64(p);
  it->seq = get_be64(k->mv_data);
  it->p = p + 8;
  it->end = p + v->mv_size;
  it->single = it->p == it->end || it->p[0] != RUN_MARK;
  it->done = false;
  if (it->single)
    return it->end - it->p > KEY_MAX ? -1 : 0;
  it->p++;
  return 0;
}

/* The next id: 1 with *seq and the id (*len 0: not known), 0 at the end,
 * -1 if the rest cannot be read. */
static int idrow_next(struct idrow_it *it, uint64_t *seq, const uint8_t **id,
                      size_t *len)
{
  uint64_t n;

  if (it->done || (!it->single && it->p == it->end))
    return 0;
  if (it->single) {
    it->done = true;
    *seq = it->seq;
    *id = it->p;
    *len = (size_t)(it->end - it->p);
    return 1;
  }
  if (get_varint(&it->p, it->end, &n) != 0 || n > KEY_MAX ||
      n > (uint64_t)(it->end - it->p)) {
    it->done = true;
    return -1;
  }
  *seq = it->seq++;
  *id = it->p;
  *len = (size_t)n;
  it->p += n;
  return 1;
}

/* ---- the writer: one transaction per group ------------------------------ */

/* True when at_ms lies age_ms or more before now_ms. */
static bool older(uint64_t at_ms, uint64_t age_ms, uint64_t now_ms)
{
  return now_ms >= at_ms && now_ms - at_ms >= age_ms;
}

/* Makes *buf (of *cap bytes) hold at least need, doubling from first;
 * 0 or ENOMEM. The writer's buffers keep their size from group to group. */
static int grow(uint8_t **buf, size_t *cap, size_t need, size_t first)
{
  size_t c = *cap ? *cap : first;
  uint8_t *p;

  if (need <= *cap)
    return 0;
  while (c < need)
    c *= 2;
  p = realloc(*buf, c);
  if (p == NULL)
    return ENOMEM;
  *buf = p;
  *cap = c;
  return 0;
}

static int scratch_reserve(struct writer *w, size_t n)
{
  return grow(&w->scratch, &w->scratch_cap, n, 4096);
}

static int first_row(struct txn *t, MDB_dbi dbi, MDB_val *k, MDB_val *v)
{
  MDB_cursor *c;
  int rc;

  rc = mdb_cursor_open(t->txn, dbi, &c);
  if (rc != 0)
    return rc;
  rc = mdb_cursor_get(c, k, v, MDB_FIRST);
  mdb_cursor_close(c);
  return rc;
}

/* The event at seq no longer carries id for the duplicate check. Only
 * the hash is kept, so id may point into the map. */
static void forget_id(struct txn *t, const void *id, size_t idlen,
                      uint64_t seq)
{
  struct emd_idtab *tab = t->sp->w.ids;

  emd_idtab_remove(tab, emd_idtab_hash(tab, id, idlen), seq);
}

/* The id of a packed record, in place (*idlen 0 if it cannot be read). */
static void rec_id(const uint8_t *rec, size_t len, const uint8_t **id,
                   size_t *idlen)
{
  struct rec r;

  if (rec_parse(rec, len, &r) != 0 ||
      event_id(r.event, r.event_len, id, idlen) != 0)
    *idlen = 0;
}

/* The same for the record of a dead letter v. */
static void dead_id(const MDB_val *v, const uint8_t **id, size_t *idlen)
{
  struct deadrec d;

  if (dead_parse(v->mv_data, v->mv_size, &d) != 0)
    *idlen = 0;
  else
    rec_id(d.rec, d.rec_len, id, idlen);
}

/* ---- the writer's chunks: the fill and the edit -------------------------- */

static int pending_cursor(struct txn *t, MDB_cursor **c)
{
  int rc = 0;

  if (t->pc == NULL)
    rc = mdb_cursor_open(t->txn, t->sp->db_pending, &t->pc);
  *c = t->pc;
  return rc;
}

/* Forgets the append cursor: before anything else changes pending. */
static void app_cursor_drop(struct txn *t)
{
  if (t->app != NULL)
    mdb_cursor_close(t->app);
  t->app = NULL;
}

/* The index of seq among the edit's events, if there. Lookups come in
 * seq order mostly: the one after the last is tried first. */
static bool edit_find(struct edit *ed, uint64_t seq, size_t *i)
{
  size_t lo = 0, hi = ed->n;

  if (ed->at < ed->n && ed->e[ed->at].seq <= seq) {
    if (ed->e[ed->at].seq == seq) {
      *i = ed->at;
      return true;
    }
    lo = ed->at + 1;
    if (lo < ed->n && ed->e[lo].seq == seq) {
      *i = ed->at = lo;
      return true;
    }
  }
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (ed->e[mid].seq < seq)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < ed->n && ed->e[lo].seq == seq) {
    *i = ed->at = lo;
    return true;
  }
  return false;
}

static void edit_remove(struct txn *t, size_t i)
{
  struct edit *ed = &t->sp->w.ed;

  ed->e[i].gone = true;
  ed->live--;
  ed->changed = true;
  t->dirty = true;
}

/* Takes the chunk at k, v (in pending) for editing. */
static int edit_load(struct txn *t, const MDB_val *k, const MDB_val *v,
                     bool front)
{
  struct edit *ed = &t->sp->w.ed;
  struct chunk_it it;
  const uint8_t *rec;
  uint64_t seq;
  size_t len;
  int r;

  if (k->mv_size > KEY_MAX)
    return MDB_CORRUPTED;
  memcpy(ed->raw, k->mv_data, k->mv_size);
  ed->rawlen = k->mv_size;
  ed->front = front;
  ed->changed = false;
  ed->garbled = false;
  ed->n = ed->at = ed->front_at = 0;
  chunk_begin(&it, k, v);
  while ((r = chunk_next(&it, &seq, &rec, &len)) == 1) {
    if (ed->n == ed->cap) {
      size_t cap = ed->cap ? 2 * ed->cap : 256;
      struct eentry *e = realloc(ed->e, cap * sizeof(*e));

      if (e == NULL)
        return ENOMEM;
      ed->e = e;
      ed->cap = cap;
    }
    ed->e[ed->n].seq = seq;
    ed->e[ed->n].rec = rec;
    ed->e[ed->n].len = len;
    ed->e[ed->n].idoff = it.idoff;
    ed->e[ed->n].bump = 0;
    ed->e[ed->n].gone = false;
    ed->n++;
  }
  ed->live = ed->n;
  ed->garbled = r < 0 || k->mv_size != 8;
  ed->changed = ed->n == 0;        /* nothing readable: the row goes */
  ed->active = true;
  return 0;
}

/* An edit entry's record as rewritten: *r parsed and its new attempts
 * in *att, and true, if it changes (a garbled one is left alone). */
static bool edit_entry_bumped(const struct eentry *e, struct rec *r,
                              uint32_t *att)
{
  if (e->bump == 0 || rec_parse(e->rec, e->len, r) != 0)
    return false;
  *att = r->attempts > UINT32_MAX - e->bump ? UINT32_MAX
                                            : r->attempts + e->bump;
  return true;
}

/* Its size as rewritten. */
static size_t edit_entry_size(const struct eentry *e)
{
  struct rec r;
  uint32_t att;

  return edit_entry_bumped(e, &r, &att)
             ? rec_size(r.event_len, r.accepted_ms, att) : e->len;
}

/* Writes the edited chunk back: deleted if nothing is left in it, else
 * rewritten under its smallest seq (built beside the map first: the
 * records point into the row that goes). */
static int edit_flush(struct txn *t)
{
  struct writer *w = &t->sp->w;
  struct edit *ed = &w->ed;
  uint8_t key[8], *p;
  MDB_val k, v;
  uint64_t first = 0;
  size_t size = 1, reclen;
  int rc;

  if (!ed->active)
    return 0;
  ed->active = false;
  if (!ed->changed)
    return 0;
  app_cursor_drop(t);
  if (ed->garbled)
    emd_log_error("spool", "pending chunk at seq %llu is garbled past its "
                  "%zu readable events; its unreadable end is dropped as "
                  "the chunk is rewritten",
                  ed->rawlen == 8 ? (unsigned long long)get_be64(ed->raw)
                                  : 0ull, ed->n);
  for (size_t i = 0; i < ed->n; i++) {
    if (ed->e[i].gone)
      continue;
    if (size == 1)
      first = ed->e[i].seq;
    reclen = edit_entry_size(&ed->e[i]);
    size += emd_varint_size(ed->e[i].seq - first) + emd_varint_size(reclen) +
            emd_varint_size(ed->e[i].idoff) + reclen;
  }
  if (ed->live > 0) {
    if (scratch_reserve(w, size) != 0)
      return ENOMEM;
    p = w->scratch;
    *p++ = CHUNK_MARK;
    for (size_t i = 0; i < ed->n; i++) {
      const struct eentry *e = &ed->e[i];
      struct rec r;
      uint32_t att;

      if (e->gone)
        continue;
      p = emd_varint_put(p, e->seq - first);
      if (!edit_entry_bumped(e, &r, &att)) {
        p = emd_varint_put(p, e->len);
        p = emd_varint_put(p, e->idoff);
        memcpy(p, e->rec, e->len);
        p += e->len;
        continue;
      }
      /* the event keeps its place in the record: rec_head is as it was
       * (emitd wrote it), so the id's offset stays */
      reclen = rec_size(r.event_len, r.accepted_ms, att);
      p = emd_varint_put(p, reclen);
      p = emd_varint_put(p, (size_t)(r.event - e->rec) ==
                                    1 + emd_varint_size(r.event_len)
                                ? e->idoff : 0);
      p = rec_head(p, r.event_len);
      memcpy(p, r.event, r.event_len);
      p = rec_tail(p + r.event_len, r.accepted_ms, att);
      w->c.pending_bytes += reclen - e->len;
    }
  }
  k.mv_size = ed->rawlen;
  k.mv_data = ed->raw;
  rc = mdb_del(t->txn, t->sp->db_pending, &k, NULL);
  if (rc == 0 && ed->live > 0) {
    put_be64(key, first);
    k.mv_size = 8;
    k.mv_data = key;
    v.mv_size = size;
    v.mv_data = w->scratch;
    rc = mdb_put(t->txn, t->sp->db_pending, &k, &v, 0);
  }
  t->dirty = true;
  return rc;
}

/* Puts the chunk being filled into pending, after the edit (both change
 * pending). Seqs only grow, so MDB_APPEND skips the search, and one cursor
 * for a run of chunks (as mdb_load does) stays at the end of the tree. */
static int fill_flush(struct txn *t)
{
  struct fill *f = &t->sp->w.fill;
  uint8_t key[8];
  MDB_val k = { 8, key }, v = { f->len, f->buf };
  int rc;

  if (f->n == 0)
    return 0;
  rc = edit_flush(t);
  if (rc == 0 && t->app == NULL)
    rc = mdb_cursor_open(t->txn, t->sp->db_pending, &t->app);
  put_be64(key, f->first);
  if (rc == 0)
    rc = mdb_cursor_put(t->app, &k, &v, MDB_APPEND);
  f->n = 0;
  f->len = 0;
  t->dirty = true;
  return rc;
}

/* Room in the fill for a record of size bytes at seq whose event id
 * starts at idoff in it (0: not noted); the chunk goes to pending first if
 * it would grow past CHUNK_MAX. *dst is where the record goes. */
static int fill_add(struct txn *t, uint64_t seq, size_t size, size_t idoff,
                    uint8_t **dst)
{
  struct fill *f = &t->sp->w.fill;
  size_t need;
  uint8_t *p;
  int rc;

  if (f->n > 0 && f->len + 20 + size > CHUNK_MAX) {
    rc = fill_flush(t);
    if (rc != 0)
      return rc;
  }
  if (f->n == 0) {
    f->first = seq;
    f->len = 1;
  }
  need = f->len + emd_varint_size(seq - f->first) + emd_varint_size(size) +
         emd_varint_size(idoff) + size;
  rc = grow(&f->buf, &f->cap, need, CHUNK_MAX + 64);
  if (rc != 0)
    return rc;
  f->buf[0] = CHUNK_MARK;
  p = emd_varint_put(f->buf + f->len, seq - f->first);
  p = emd_varint_put(p, size);
  p = emd_varint_put(p, idoff);
  *dst = p;
  f->len = (size_t)(p - f->buf) + size;
  f->last = seq;
  f->n++;
  t->dirty = true;
  return 0;
}

/* The edit's entry i holding seq, if seq is pending (not in the fill). */
static int edit_get(struct txn *t, uint64_t seq, size_t *i, bool *found)
{
  struct edit *ed = &t->sp->w.ed;
  MDB_cursor *c;
  MDB_val k, v;
  int rc;

  *found = false;
  if (!ed->active || ed->n == 0 || seq < ed->e[0].seq ||
      seq > ed->e[ed->n - 1].seq) {
    rc = edit_flush(t);
    if (rc == 0)
      rc = pending_cursor(t, &c);
    if (rc == 0)
      rc = chunk_floor(c, seq, &k, &v);
    if (rc == 0)
      rc = edit_load(t, &k, &v, false);
    if (rc != 0)
      return rc == MDB_NOTFOUND ? 0 : rc;
  }
  *found = edit_find(ed, seq, i) && !ed->e[*i].gone;
  return 0;
}

/* The oldest pending event in the fill-less part of pending: the edit's
 * entry *i, or *none. */
static int pending_front(struct txn *t, size_t *i, bool *none)
{
  struct edit *ed = &t->sp->w.ed;
  MDB_cursor *c;
  MDB_val k, v;
  int rc;

  *none = false;
  for (;;) {
    if (ed->active && ed->front) {
      for (; ed->front_at < ed->n; ed->front_at++)
        if (!ed->e[ed->front_at].gone) {
          *i = ed->front_at;
          return 0;
        }
    }
    rc = edit_flush(t);            /* a front chunk emptied goes */
    if (rc == 0)
      rc = pending_cursor(t, &c);
    if (rc == 0)
      rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    if (rc == MDB_NOTFOUND) {
      *none = true;
      return 0;
    }
    if (rc == 0)
      rc = edit_load(t, &k, &v, true);
    if (rc != 0)
      return rc;
  }
}

/* The id of a chunk entry's record at idoff, where the chunk says it is
 * (a one-byte length and the id field's tag before it): false if not
 * noted there. */
static bool entry_id_noted(const uint8_t *rec, size_t len, size_t idoff,
                           const uint8_t **id, size_t *idlen)
{
  if (idoff >= 2 && idoff < len && rec[idoff - 2] == 0x12 &&
      rec[idoff - 1] != 0 && rec[idoff - 1] < 0x80 &&
      rec[idoff - 1] <= len - idoff) {
    *id = rec + idoff;
    *idlen = rec[idoff - 1];
    return true;
  }
  return false;
}

/* The same, or walked for. */
static void entry_id(const uint8_t *rec, size_t len, size_t idoff,
                     const uint8_t **id, size_t *idlen)
{
  if (!entry_id_noted(rec, len, idoff, id, idlen))
    rec_id(rec, len, id, idlen);
}

/* The record at seq in the chunk at k, v: *found. */
static void chunk_find(const MDB_val *k, const MDB_val *v, uint64_t seq,
                       const uint8_t **rec, size_t *len, bool *found)
{
  struct chunk_it it;
  uint64_t s;

  *found = false;
  chunk_begin(&it, k, v);
  while (chunk_next(&it, &s, rec, len) == 1 && s <= seq)
    if (s == seq) {
      *found = true;
      return;
    }
}

/* Where pending's event seq is in this transaction: *found, and its
 * record: in the fill, the chunk being edited (*found false if it went),
 * or the chunk in pending. */
static int pending_at(struct txn *t, uint64_t seq, const uint8_t **rec,
                      size_t *len, bool *found)
{
  struct writer *w = &t->sp->w;
  struct edit *ed = &w->ed;
  uint8_t key[8];
  MDB_cursor *c;
  MDB_val k = { 8, key }, v;
  int rc;

  *found = false;
  if (w->fill.n > 0 && seq >= w->fill.first && seq <= w->fill.last) {
    put_be64(key, w->fill.first);
    v.mv_size = w->fill.len;
    v.mv_data = w->fill.buf;
    chunk_find(&k, &v, seq, rec, len, found);
    return 0;
  }
  if (ed->active && ed->n > 0 && seq >= ed->e[0].seq &&
      seq <= ed->e[ed->n - 1].seq) {
    size_t i;

    if (edit_find(ed, seq, &i) && !ed->e[i].gone) {
      *found = true;
      *rec = ed->e[i].rec;
      *len = ed->e[i].len;
    }
    return 0;
  }
  rc = pending_cursor(t, &c);
  if (rc == 0)
    rc = chunk_floor(c, seq, &k, &v);
  if (rc == 0)
    chunk_find(&k, &v, seq, rec, len, found);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Whether seq is among the delivered ids kept: *found, with its id (*idlen
 * 0 if not known). Rows hold disjoint runs of seqs, so the row with the
 * greatest first seq at most seq is the only one that may. */
static int delivered_at(struct txn *t, uint64_t seq, const uint8_t **id,
                        size_t *idlen, bool *found)
{
  struct idrow_it it;
  MDB_cursor *c;
  MDB_val k, v;
  uint64_t ms, s;
  int rc;

  *found = false;
  rc = mdb_cursor_open(t->txn, t->sp->db_ids, &c);
  if (rc != 0)
    return rc;
  rc = chunk_floor(c, seq, &k, &v);
  if (rc == 0 && idrow_begin(&it, &k, &v, &ms) == 0)
    while (idrow_next(&it, &s, id, idlen) == 1 && s <= seq)
      if (s == seq) {
        *found = true;
        break;
      }
  mdb_cursor_close(c);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

/* What the spool holds at seq: *found, and the id of the pending record,
 * dead letter or delivered event there (in the map; *idlen 0 if it cannot
 * be read). */
static int id_at(struct txn *t, uint64_t seq, const uint8_t **id,
                 size_t *idlen, bool *found)
{
  uint8_t key[8];
  MDB_val k = { 8, key }, v;
  const uint8_t *rec;
  size_t len;
  int rc;

  *found = true;
  *idlen = 0;
  rc = pending_at(t, seq, &rec, &len, found);
  if (rc != 0 || *found) {
    if (*found)
      rec_id(rec, len, id, idlen);
    return rc;
  }
  *found = true;
  put_be64(key, seq);
  rc = mdb_get(t->txn, t->sp->db_dead, &k, &v);
  if (rc == 0) {
    dead_id(&v, id, idlen);
    return 0;
  }
  *found = false;
  if (rc == MDB_NOTFOUND)
    rc = delivered_at(t, seq, id, idlen, found);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Whether the spool knows id (hash h): *seq is then the event carrying
 * it. Slots naming a seq that holds nothing any more are dropped on the
 * way; a seq holding another id is another id with the same hash. */
static int id_known(struct txn *t, uint64_t h, const char *id, size_t len,
                    bool *known, uint64_t *seq)
{
  struct emd_idtab *tab = t->sp->w.ids;
  const uint8_t *got;
  size_t pos = 0, gotlen;
  uint64_t s;
  bool found;
  int rc;

  *known = false;
  while (emd_idtab_next(tab, h, &pos, &s)) {
    rc = id_at(t, s, &got, &gotlen, &found);
    if (rc != 0)
      return rc;
    if (found && gotlen == len && memcmp(got, id, len) == 0) {
      *known = true;
      *seq = s;
      return 0;
    }
    if (!found && emd_idtab_remove(tab, h, s))
      pos = 0;                     /* slots moved: walk again */
  }
  return 0;
}

/* Deletes the oldest dead letter and forgets its id; MDB_NOTFOUND when
 * there is none. */
static int drop_first_dead(struct txn *t)
{
  uint8_t key[8];
  const uint8_t *id;
  size_t idlen;
  MDB_val k, v;
  int rc;

  rc = first_row(t, t->sp->db_dead, &k, &v);
  if (rc != 0)
    return rc;
  memcpy(key, k.mv_data, 8);
  dead_id(&v, &id, &idlen);
  if (idlen > 0)
    forget_id(t, id, idlen, get_be64(key));   /* before the delete moves it */
  k.mv_data = key;
  rc = mdb_del(t->txn, t->sp->db_dead, &k, NULL);
  if (rc == 0)
    t->dirty = true;
  return rc;
}

/* Deletes the oldest dead letters while there are more than dead_max. */
static int trim_dead(struct txn *t)
{
  struct writer *w = &t->sp->w;
  int rc;

  while (w->c.dead > w->k.dead_max) {
    rc = drop_first_dead(t);
    if (rc == MDB_NOTFOUND) {
      w->c.dead = 0;              /* the count had drifted */
      break;
    }
    if (rc != 0)
      return rc;
    w->c.dead--;
  }
  return 0;
}

/* One log line per dead letter: its id, seq, reason and HTTP status. */
static void log_dead(uint64_t seq, const uint8_t *id, size_t idlen,
                     const char *reason, size_t reason_len, unsigned status)
{
  char sample[EMD_ID_MAX + 4];

  emd_log_sample(id, idlen, sample, sizeof(sample));
  if (status != 0)
    emd_log_warn("spool", "dead letter: event %s (seq %llu), reason %.*s, "
                 "HTTP %u", idlen ? sample : "?", (unsigned long long)seq,
                 (int)reason_len, reason, status);
  else
    emd_log_warn("spool", "dead letter: event %s (seq %llu), reason %.*s",
                 idlen ? sample : "?", (unsigned long long)seq,
                 (int)reason_len, reason);
}

/* Puts pending's event seq (its record rec, still in the map) in dead;
 * the caller takes it out of the edit. */
static int to_dead(struct txn *t, uint64_t seq, const void *rec,
                   size_t reclen, const char *reason, size_t reason_len,
                   unsigned status, const void *excerpt, size_t excerpt_len)
{
  struct writer *w = &t->sp->w;
  uint8_t key[8], *p, id[KEY_MAX];
  const uint8_t *idp;
  size_t n, idlen;
  MDB_val k = { 8, key }, v;
  int rc;

  /* The id for the log line, copied now: rec points into the map, and the
   * writes below may move what it points at. */
  rec_id(rec, reclen, &idp, &idlen);
  if (idlen > 0)
    memcpy(id, idp, idlen);
  n = len_field_size(reclen) + len_field_size(reason_len) +
      (status ? 1 + emd_varint_size(status) : 0) + len_field_size(excerpt_len) +
      1 + emd_varint_size(t->now_ms);
  if (reclen == 0)
    n += 2;                        /* an empty record is still present */
  if (scratch_reserve(w, n) != 0)
    return ENOMEM;
  p = w->scratch;
  if (reclen == 0) {
    *p++ = 0x0a;
    *p++ = 0;
  }
  p = put_len_field(p, 0x0a, rec, reclen);
  p = put_len_field(p, 0x12, reason, reason_len);
  if (status != 0) {
    *p++ = 0x18;
    p = emd_varint_put(p, status);
  }
  p = put_len_field(p, 0x22, excerpt, excerpt_len);
  *p++ = 0x28;
  p = emd_varint_put(p, t->now_ms);
  put_be64(key, seq);
  v.mv_size = (size_t)(p - w->scratch);
  v.mv_data = w->scratch;
  rc = mdb_put(t->txn, t->sp->db_dead, &k, &v, 0);
  if (rc != 0)
    return rc;
  w->c.pending--;
  w->c.pending_bytes -= reclen;
  w->c.dead++;
  t->dirty = true;
  log_dead(seq, id, idlen, reason, reason_len, status);
  return trim_dead(t);
}

/* Moves the oldest pending record outside the fill to dead with reason.
 * *none is set when there is none. */
static int evict_first(struct txn *t, const char *reason, bool *none)
{
  struct edit *ed = &t->sp->w.ed;
  size_t i;
  int rc;

  rc = pending_front(t, &i, none);
  if (rc != 0 || *none)
    return rc;
  rc = to_dead(t, ed->e[i].seq, ed->e[i].rec, ed->e[i].len, reason,
               strlen(reason), 0, NULL, 0);
  if (rc == 0)
    edit_remove(t, i);
  return rc;
}

/* Makes room for a record of size bytes per on_full. Sets *refused when
 * it cannot go in. */
static int make_room(struct txn *t, size_t size, bool *refused)
{
  struct writer *w = &t->sp->w;
  bool none = false;
  int rc;

  *refused = false;
  if (w->k.max_bytes == 0 || w->c.pending_bytes + size <= w->k.max_bytes)
    return 0;
  switch (w->k.on_full) {
  case EMD_FULL_BLOCK:
    return 0;                      /* soft: the ingest stops reading */
  case EMD_FULL_REJECT:
    *refused = true;
    return 0;
  case EMD_FULL_DROP_OLDEST:
    if (size > w->k.max_bytes) {
      *refused = true;
      return 0;
    }
    while (w->c.pending_bytes + size > w->k.max_bytes) {
      rc = evict_first(t, "dropped", &none);
      if (rc == 0 && none && w->fill.n > 0) {
        rc = fill_flush(t);        /* the oldest are this group's own */
        continue;
      }
      if (rc != 0 || none)
        return rc;
      w->c.dropped++;
      t->dropped++;
    }
    return 0;
  }
  return 0;
}

/* A timer's slot in the writer's map: FNV-1a over 8-byte words (timers
 * are 16 bytes mostly), the tail byte by byte. */
static uint32_t timer_hash(const uint8_t *p, size_t n)
{
  uint64_t h = 0xcbf29ce484222325u, w;

  for (; n >= 8; p += 8, n -= 8) {
    memcpy(&w, p, 8);
    h = (h ^ w) * 0x100000001b3u;
    h ^= h >> 29;
  }
  while (n-- > 0)
    h = (h ^ *p++) * 0x100000001b3u;
  return (uint32_t)(h ^ h >> 32);
}

/* Readies the timer map for a group of nappends appends. */
static int timers_begin(struct writer *w, size_t nappends)
{
  size_t need = 64;

  while (need < 2 * nappends)
    need *= 2;
  for (size_t i = 0; i < w->ntouched; i++)
    w->slots[w->touched[i]].used = false;
  w->ntouched = 0;
  if (need <= w->nslots)
    return 0;
  free(w->slots);
  free(w->touched);
  w->slots = calloc(need, sizeof(*w->slots));
  w->touched = calloc(need / 2, sizeof(*w->touched));
  w->nslots = w->slots && w->touched ? need : 0;
  return w->nslots ? 0 : ENOMEM;
}

/* The counter of timer key, from the map or the database. */
static int timer_get(struct txn *t, const uint8_t *key, size_t len,
                     struct tslot **out)
{
  struct writer *w = &t->sp->w;
  size_t mask = w->nslots - 1, i = timer_hash(key, len) & mask;
  struct tslot *s;
  MDB_val k = { len, (void *)key }, v;
  int rc;

  for (;; i = (i + 1) & mask) {
    s = &w->slots[i];
    if (!s->used)
      break;
    if (s->len == len && memcmp(s->key, key, len) == 0) {
      *out = s;
      return 0;
    }
  }
  rc = mdb_get(t->txn, t->sp->db_timers, &k, &v);
  if (rc != 0 && rc != MDB_NOTFOUND)
    return rc;
  s->next = rc == 0 && v.mv_size >= 4 ? get_be32(v.mv_data) : 1;
  if (s->next == 0)
    s->next = 1;
  s->len = (uint8_t)len;
  memcpy(s->key, key, len);
  s->used = true;
  s->dirty = false;
  w->touched[w->ntouched++] = i;
  *out = s;
  return 0;
}

/* Writes each counter moved in this transaction, once. */
static int timers_flush(struct txn *t)
{
  struct writer *w = &t->sp->w;
  uint8_t val[12];
  MDB_val k, v = { sizeof(val), val };
  int rc;

  put_be64(val + 4, t->now_ms);
  for (size_t i = 0; i < w->ntouched; i++) {
    struct tslot *s = &w->slots[w->touched[i]];

    if (!s->dirty)
      continue;
    put_be32(val, s->next);
    k.mv_size = s->len;
    k.mv_data = s->key;
    rc = mdb_put(t->txn, t->sp->db_timers, &k, &v, 0);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* Makes room in the fill for a SpoolRecord of size bytes whose event
 * takes evlen at seq, its id at ev_idoff in it (0: not known), and writes
 * all of it but the event's bytes, which go at *evdst. */
static int put_record(struct txn *t, uint64_t seq, size_t evlen,
                      size_t ev_idoff, size_t size, uint8_t **evdst)
{
  size_t head = 1 + emd_varint_size(evlen);
  uint8_t *p;
  int rc;

  rc = fill_add(t, seq, size, ev_idoff != 0 ? head + ev_idoff : 0, &p);
  if (rc != 0)
    return rc;
  p = rec_head(p, evlen);
  rec_tail(p + evlen, t->now_ms, 0);
  *evdst = p;
  return 0;
}

/* Where the id starts in an append's event once index and ordinal are
 * spliced in (0: not found): found in the packed bytes, in the
 * TelemetryEvent's fields before the ordinal, which the splice copies as
 * they are to after the index and the TelemetryEvent's new length. */
static size_t spliced_id_at(const struct op *op, uint32_t add_index,
                            uint32_t add_ordinal)
{
  const struct emd_pack_splice *sp = &op->u.app.splice;
  const uint8_t *p = op->u.app.packed, *end = p + op->u.app.packed_len;
  const uint8_t *q = p + sp->te_at, *id;
  uint64_t tl;
  size_t idlen;

  if (sp->te_at >= op->u.app.packed_len || *q++ != 0x2a ||
      get_varint(&q, end, &tl) != 0 || q != p + sp->te_body_at ||
      sp->ordinal_at < sp->te_body_at || sp->ordinal_at > op->u.app.packed_len ||
      wire_find(q, sp->ordinal_at - sp->te_body_at, 2, &id, &idlen) != 0 ||
      idlen != op->u.app.idlen || idlen >= 0x80 || id[-1] != idlen ||
      id[-2] != 0x12)
    return 0;
  if (add_ordinal != 0)
    tl += 1 + emd_varint_size(add_ordinal);
  return sp->te_at + (add_index != 0 ? 1 + emd_varint_size(add_index) : 0) +
         1 + emd_varint_size(tl) + (size_t)(id - q);
}

static int apply_append(struct txn *t, struct op *op, bool allowed)
{
  struct writer *w = &t->sp->w;
  struct emd_spool_result *res = &op->u.app.res;
  struct tslot *slot = NULL;
  uint8_t *dst;
  size_t evlen, size;
  uint32_t ordinal = op->u.app.ordinal0, index, add_index, add_ordinal;
  uint64_t h = op->u.app.h, seq;
  bool refused, known;
  int rc;

  memset(res, 0, sizeof(*res));
  if (!allowed) {
    res->rc = EMD_ESPOOLFULL;
    return 0;
  }
  if (h == 0) {                    /* no id, or one too long; timer too */
    res->rc = EMD_EINVALID;
    return 0;
  }
  rc = id_known(t, h, op->u.app.id, op->u.app.idlen, &known, &seq);
  if (rc != 0)
    return rc;
  if (known) {
    res->duplicate = true;
    res->seq = seq;
    return 0;
  }
  if (ordinal == 0 && op->u.app.timer_len > 0) {
    rc = timer_get(t, op->u.app.timer, op->u.app.timer_len, &slot);
    if (rc != 0)
      return rc;
    ordinal = slot->next;
  }
  index = op->u.app.index0 != 0 ? op->u.app.index0 : ordinal;
  /* packed on append with ordinal0 and index0: what was 0 then and is
   * not now goes in where it belongs */
  add_index = op->u.app.index0 == 0 ? index : 0;
  add_ordinal = op->u.app.ordinal0 == 0 ? ordinal : 0;
  evlen = emd_pack_splice_size(op->u.app.packed_len, &op->u.app.splice,
                               add_index, add_ordinal);
  size = rec_size(evlen, t->now_ms, 0);
  rc = make_room(t, size, &refused);
  if (rc != 0)
    return rc;
  if (refused) {
    res->rc = EMD_ESPOOLFULL;
    return 0;
  }
  rc = put_record(t, w->c.next_seq, evlen,
                  spliced_id_at(op, add_index, add_ordinal), size, &dst);
  if (rc != 0)
    return rc;
  emd_pack_splice_write(dst, op->u.app.packed, op->u.app.packed_len,
                        &op->u.app.splice, add_index, add_ordinal);
  rc = emd_idtab_insert_new(w->ids, h, w->c.next_seq);
  if (rc != 0)
    return rc;
  if (slot != NULL) {
    slot->next = slot->next == UINT32_MAX ? 1 : slot->next + 1;
    slot->dirty = true;
  }
  res->seq = w->c.next_seq++;
  res->ordinal = ordinal;
  res->index = index;
  w->c.pending++;
  w->c.pending_bytes += size;
  t->dirty = true;
  return 0;
}

/* Writes the run of delivered ids as a row of ids. Runs hold disjoint
 * seqs; they mostly come in seq order, and then MDB_APPEND skips the
 * search. */
static int run_flush(struct txn *t, MDB_cursor *ic, uint64_t *last)
{
  struct run *r = &t->sp->w.run;
  uint8_t key[8];
  MDB_val k = { 8, key }, v = { r->len, r->buf };
  int rc;

  if (r->n == 0)
    return 0;
  put_be64(key, r->first);
  rc = mdb_cursor_put(ic, &k, &v, r->first > *last ? MDB_APPEND : 0);
  if (r->last > *last)
    *last = r->last;
  r->n = 0;
  return rc;
}

/* Adds seq's id (idlen 0: not known) to the run, after writing the run
 * out if seq does not follow it. */
static int run_add(struct txn *t, MDB_cursor *ic, uint64_t *last,
                   uint64_t seq, const uint8_t *id, size_t idlen)
{
  struct run *r = &t->sp->w.run;
  size_t need;
  int rc;

  if (r->n > 0 && (seq != r->last + 1 || r->len > RUN_MAX)) {
    rc = run_flush(t, ic, last);
    if (rc != 0)
      return rc;
  }
  need = (r->n == 0 ? 9 : r->len) + 2 + idlen;
  rc = grow(&r->buf, &r->cap, need, 16384);
  if (rc != 0)
    return rc;
  if (r->n == 0) {
    put_be64(r->buf, t->now_ms);
    r->buf[8] = RUN_MARK;
    r->len = 9;
    r->first = seq;
  }
  r->len = (size_t)(emd_varint_put(r->buf + r->len, idlen) - r->buf);
  memcpy(r->buf + r->len, id, idlen);
  r->len += idlen;
  r->last = seq;
  r->n++;
  return 0;
}

/* Deletes delivered events (their seqs, as the forwarder sent them: in
 * order, mostly) and remembers their ids for dedup_window in ids, a row
 * per run of consecutive seqs, where their table slots now find them, or
 * forgets them at once. */
static int apply_deletes(struct txn *t, const uint64_t *seqs, size_t n)
{
  struct writer *w = &t->sp->w;
  struct edit *ed = &w->ed;
  bool keep = w->k.dedup_window_ms != 0, found;
  const uint8_t *id;
  MDB_cursor *ic = NULL;
  MDB_val k, v;
  uint64_t last = 0;               /* the highest seq in ids */
  size_t idlen, j;
  int rc = 0;

  w->run.n = 0;
  if (keep) {
    rc = mdb_cursor_open(t->txn, t->sp->db_ids, &ic);
    if (rc == 0)
      rc = mdb_cursor_get(ic, &k, &v, MDB_LAST);
    if (rc == 0 && k.mv_size == 8) {
      struct idrow_it it;
      const uint8_t *p;
      uint64_t ms, s;
      size_t len;

      last = get_be64(k.mv_data);
      if (idrow_begin(&it, &k, &v, &ms) == 0)
        while (idrow_next(&it, &s, &p, &len) == 1)
          last = s;
    }
    if (rc == MDB_NOTFOUND)
      rc = 0;
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    rc = edit_get(t, seqs[i], &j, &found);
    if (rc != 0 || !found)
      continue;                    /* gone already (a dead letter, say) */
    /* in the chunk, which stays put until the edit is written back */
    entry_id(ed->e[j].rec, ed->e[j].len, ed->e[j].idoff, &id, &idlen);
    w->c.pending--;
    w->c.pending_bytes -= ed->e[j].len;
    edit_remove(t, j);
    if (keep)
      rc = run_add(t, ic, &last, seqs[i], id, idlen);
    else if (idlen > 0)
      forget_id(t, id, idlen, seqs[i]);
  }
  if (rc == 0 && keep)
    rc = run_flush(t, ic, &last);
  if (ic != NULL)
    mdb_cursor_close(ic);
  return rc;
}

/* One more attempt for the event at seq: its record is rewritten with
 * the chunk (a garbled one is left alone). */
static int apply_attempted(struct txn *t, uint64_t seq)
{
  struct edit *ed = &t->sp->w.ed;
  size_t i;
  bool found;
  int rc;

  rc = edit_get(t, seq, &i, &found);
  if (rc != 0 || !found)
    return rc;
  if (ed->e[i].bump < UINT32_MAX)
    ed->e[i].bump++;
  ed->changed = true;
  t->dirty = true;
  return 0;
}

static int apply_dead(struct txn *t, const struct op *op)
{
  struct edit *ed = &t->sp->w.ed;
  size_t i;
  bool found;
  int rc;

  rc = edit_get(t, op->u.dead.seq, &i, &found);
  if (rc != 0 || !found)
    return rc;
  rc = to_dead(t, op->u.dead.seq, ed->e[i].rec, ed->e[i].len,
               op->u.dead.reason, op->u.dead.reason_len, op->u.dead.status,
               op->u.dead.excerpt, op->u.dead.excerpt_len);
  if (rc == 0)
    edit_remove(t, i);
  return rc;
}

/* Moves the dead letter at key k (value v, in the map) back to pending
 * under a new seq. */
static int revive(struct txn *t, MDB_val *k, MDB_val *v)
{
  struct writer *w = &t->sp->w;
  uint8_t old[8], id[KEY_MAX], *p;
  const uint8_t *idp;
  size_t idlen = 0, size;
  struct deadrec d;
  struct rec r;
  MDB_val nk = { 8, old };
  uint64_t seq = w->c.next_seq;
  int rc;

  memcpy(old, k->mv_data, 8);      /* the old seq, for the delete */
  if (dead_parse(v->mv_data, v->mv_size, &d) != 0 ||
      rec_parse(d.rec, d.rec_len, &r) != 0)
    return mdb_del(t->txn, t->sp->db_dead, k, NULL) == 0 ? 0 : EIO;
  if (event_id(r.event, r.event_len, &idp, &idlen) == 0)
    memcpy(id, idp, idlen);
  else
    idlen = 0;
  size = rec_size(r.event_len, t->now_ms, 0);
  rc = put_record(t, seq, r.event_len,
                  idlen > 0 ? (size_t)(idp - r.event) : 0, size, &p);
  if (rc != 0)
    return rc;
  memcpy(p, r.event, r.event_len);
  rc = mdb_del(t->txn, t->sp->db_dead, &nk, NULL);
  if (rc == 0 && idlen > 0) {
    forget_id(t, id, idlen, get_be64(old));
    rc = emd_idtab_insert(w->ids, emd_idtab_hash(w->ids, id, idlen), seq);
  }
  if (rc != 0)
    return rc;
  w->c.next_seq++;
  w->c.pending++;
  w->c.pending_bytes += size;
  w->c.dead--;
  t->dirty = true;
  return 0;
}

static int apply_retry(struct txn *t, struct op *op)
{
  uint8_t key[8];
  MDB_val k = { 8, key }, v;
  int rc;

  if (op->u.count.seq != 0) {
    put_be64(key, op->u.count.seq);
    rc = mdb_get(t->txn, t->sp->db_dead, &k, &v);
    if (rc == MDB_NOTFOUND) {
      op->u.count.rc = EMD_ENOTFOUND;
      return 0;
    }
    if (rc == 0)
      rc = revive(t, &k, &v);
    op->u.count.n = rc == 0;
    return rc;
  }
  while ((rc = first_row(t, t->sp->db_dead, &k, &v)) == 0) {
    rc = revive(t, &k, &v);
    if (rc != 0)
      return rc;
    op->u.count.n++;
  }
  return rc == MDB_NOTFOUND ? 0 : rc;
}

static int apply_purge(struct txn *t, struct op *op)
{
  int rc;

  while ((rc = drop_first_dead(t)) == 0)
    op->u.count.n++;
  t->sp->w.c.dead = 0;
  return rc == MDB_NOTFOUND ? 0 : rc;
}

static int apply_op(struct txn *t, struct op *op, bool appends)
{
  int rc = 0;

  switch (op->kind) {
  case OP_APPEND:
    return apply_append(t, op, appends);
  case OP_DELETE:
    return apply_deletes(t, op->u.seqs.seqs, op->u.seqs.n);
  case OP_ATTEMPTED:
    for (size_t i = 0; i < op->u.seqs.n && rc == 0; i++)
      rc = apply_attempted(t, op->u.seqs.seqs[i]);
    return rc;
  case OP_DEAD:
    return apply_dead(t, op);
  case OP_MAINT:
    return 0;
  case OP_RETRY:
    op->u.count.rc = 0;
    op->u.count.n = 0;
    return apply_retry(t, op);
  case OP_PURGE:
    op->u.count.rc = 0;
    op->u.count.n = 0;
    return apply_purge(t, op);
  }
  return 0;
}

/* max_age: pending records accepted before now - max_age become dead
 * letters "expired". Seqs follow acceptance, so the walk stops at the
 * first young one. */
static int expire_pending(struct txn *t)
{
  struct writer *w = &t->sp->w;
  struct edit *ed = &w->ed;
  struct rec r;
  size_t j;
  bool none;
  int rc;

  if (w->k.max_age_ms == 0)
    return 0;
  for (int i = 0; i < WALK_MAX; i++) {
    rc = pending_front(t, &j, &none);
    if (rc != 0 || none)
      return rc;
    /* A record we cannot read counts as old: it goes to the dead letters
     * instead of blocking the front of the queue. */
    if (rec_parse(ed->e[j].rec, ed->e[j].len, &r) != 0)
      r.accepted_ms = 0;
    if (!older(r.accepted_ms, w->k.max_age_ms, t->now_ms))
      return 0;
    rc = to_dead(t, ed->e[j].seq, ed->e[j].rec, ed->e[j].len, "expired", 7,
                 0, NULL, 0);
    if (rc != 0)
      return rc;
    edit_remove(t, j);
    w->c.expired++;
  }
  return 0;
}

/* dedup_window: forgets ids delivered before now - dedup_window. Rows
 * go by seq, which is nearly delivery order; a row delivered late holds
 * back the younger ones after it until it expires itself. */
static int expire_ids(struct txn *t)
{
  struct writer *w = &t->sp->w;
  uint8_t key[KEY_MAX];
  struct idrow_it it;
  const uint8_t *id;
  uint64_t ms, seq;
  size_t idlen;
  bool bad;
  MDB_val k, v;
  int rc;

  for (int i = 0; i < WALK_MAX; i++) {
    rc = first_row(t, t->sp->db_ids, &k, &v);
    if (rc != 0)
      return rc == MDB_NOTFOUND ? 0 : rc;
    /* A garbled row is dropped, not allowed to stop every commit. */
    bad = k.mv_size > KEY_MAX || idrow_begin(&it, &k, &v, &ms) != 0;
    if (!bad && !older(ms, w->k.dedup_window_ms, t->now_ms))
      return 0;
    memcpy(key, k.mv_data, k.mv_size);
    if (!bad)                      /* before the delete moves them */
      while (idrow_next(&it, &seq, &id, &idlen) == 1)
        if (idlen > 0)
          forget_id(t, id, idlen, seq);
    k.mv_data = key;
    rc = mdb_del(t->txn, t->sp->db_ids, &k, NULL);
    if (rc != 0)
      return rc;
    t->dirty = true;
  }
  return 0;
}

/* timer_ttl: forgets counters idle that long. The timers database is
 * small (one row per live timer), so a full walk now and then is fine. */
static int sweep_timers(struct txn *t)
{
  struct writer *w = &t->sp->w;
  MDB_cursor *c;
  MDB_val k, v;
  uint64_t every;
  int rc;

  if (w->k.timer_ttl_ms == 0 || t->now_ms < w->next_sweep_ms)
    return 0;
  every = w->k.timer_ttl_ms / 2;
  every = every < 10 ? 10 : every > 60000 ? 60000 : every;
  w->next_sweep_ms = t->now_ms + every;
  rc = mdb_cursor_open(t->txn, t->sp->db_timers, &c);
  if (rc != 0)
    return rc;
  rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
  while (rc == 0) {
    if (v.mv_size < 12 || older(get_be64((uint8_t *)v.mv_data + 4),
                                w->k.timer_ttl_ms, t->now_ms)) {
      rc = mdb_cursor_del(c, 0);
      if (rc != 0)
        break;
      t->dirty = true;
    }
    /* After a delete the cursor already sits on the next row, and
     * MDB_NEXT knows it. */
    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(c);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

static int put_state(struct txn *t)
{
  const struct counters *c = &t->sp->w.c;
  uint8_t val[STATE_LEN];
  MDB_val k = { sizeof(META_STATE) - 1, META_STATE }, v = { STATE_LEN, val };

  put_be64(val, c->next_seq);
  put_be64(val + 8, c->pending);
  put_be64(val + 16, c->pending_bytes);
  put_be64(val + 24, c->dead);
  put_be64(val + 32, c->dropped);
  put_be64(val + 40, c->expired);
  return mdb_put(t->txn, t->sp->db_meta, &k, &v, 0);
}

/* When the oldest pending event was accepted (0: none, or unreadable). */
static int oldest_pending(MDB_txn *txn, MDB_dbi dbi, uint64_t *ms)
{
  struct chunk_it it;
  MDB_cursor *c;
  MDB_val k, v;
  const uint8_t *rec;
  uint64_t seq;
  size_t len;
  struct rec r;
  int rc;

  *ms = 0;
  rc = mdb_cursor_open(txn, dbi, &c);
  if (rc != 0)
    return rc;
  rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
  if (rc == 0) {
    chunk_begin(&it, &k, &v);
    if (chunk_next(&it, &seq, &rec, &len) == 1 &&
        rec_parse(rec, len, &r) == 0)
      *ms = r.accepted_ms;
  }
  mdb_cursor_close(c);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Undoes the table's changes of a transaction that did not commit. */
static void ids_rollback(struct writer *w)
{
  int rc = emd_idtab_rollback(w->ids);

  if (rc != 0 && !w->ids_bad) {
    /* Slots may be missing (never extra ones): duplicates could go
     * unnoticed until the table is rebuilt at the next start. */
    emd_log_error("spool", "id table: cannot undo a failed transaction "
                  "(%s); it will be rebuilt at the next start",
                  strerror(rc));
    w->ids_bad = true;
  }
}

/* One write transaction for group g; appends false refuses every append
 * (the retry after the map filled up). Returns an MDB or emd error; on
 * error nothing was committed. */
/* Hashes an append's id and asks for its slot in the id table, ahead of
 * the op: with a big table that slot is a cache miss (and a TLB miss),
 * and a few of them overlap instead of each stalling the writer. */
static void append_ahead(struct writer *w, const struct op *op)
{
  if (op->kind == OP_APPEND && op->u.app.h != 0)
    emd_idtab_prefetch(w->ids, op->u.app.h);
}

static int group_apply(struct emd_spool *sp, struct group *g, bool appends)
{
  struct writer *w = &sp->w;
  struct txn t = { .sp = sp, .now_ms = wall_ms() };
  size_t nappends = 0;
  uint64_t oldest;
  int rc;

  for (size_t i = 0; i < g->nops; i++)
    nappends += g->ops[i].kind == OP_APPEND;
  rc = timers_begin(w, nappends);
  if (rc != 0)
    return rc;
  rc = mdb_txn_begin(sp->env, NULL, 0, &t.txn);
  if (rc != 0)
    return rc;
  w->fill.n = 0;
  w->fill.len = 0;
  w->ed.active = false;
  emd_idtab_begin(w->ids);
  for (size_t i = 0; i < g->nops && i < PREFETCH_AHEAD; i++)
    append_ahead(w, &g->ops[i]);
  for (size_t i = 0; i < g->nops && rc == 0; i++) {
    if (i + PREFETCH_AHEAD < g->nops)
      append_ahead(w, &g->ops[i + PREFETCH_AHEAD]);
    rc = apply_op(&t, &g->ops[i], appends);
  }
  if (rc == 0)
    rc = fill_flush(&t);
  if (rc == 0)
    rc = timers_flush(&t);
  if (rc == 0)
    rc = expire_pending(&t);
  if (rc == 0)
    rc = edit_flush(&t);
  w->ed.active = false;
  w->fill.n = 0;
  app_cursor_drop(&t);
  if (t.pc != NULL)
    mdb_cursor_close(t.pc);
  t.pc = NULL;
  if (rc == 0)
    rc = expire_ids(&t);
  if (rc == 0)
    rc = sweep_timers(&t);
  if (rc == 0)
    rc = trim_dead(&t);            /* dead_max may have been lowered */
  if (rc == 0 && t.dirty)
    rc = put_state(&t);
  if (rc == 0)
    rc = oldest_pending(t.txn, sp->db_pending, &oldest);
  if (rc != 0 || !t.dirty) {
    mdb_txn_abort(t.txn);
    ids_rollback(w);
    return rc;
  }
  rc = mdb_txn_commit(t.txn);
  if (rc != 0) {
    ids_rollback(w);
    return rc;
  }
  emd_idtab_commit(w->ids);
  w->commits++;
  w->oldest_ms = oldest;
  g->changed = true;
  if (t.dropped > 0)
    emd_log_warn("spool", "spool full (max_bytes %llu): dropped the %llu "
                 "oldest pending events to dead letters (%llu ever)",
                 (unsigned long long)w->k.max_bytes,
                 (unsigned long long)t.dropped,
                 (unsigned long long)w->c.dropped);
  return 0;
}

/* Every op of g failed with rc: nothing of it was committed. */
static void group_fail(struct group *g, int rc)
{
  for (size_t i = 0; i < g->nops; i++) {
    struct op *op = &g->ops[i];

    if (op->kind == OP_APPEND) {
      memset(&op->u.app.res, 0, sizeof(op->u.app.res));
      op->u.app.res.rc = rc;
    } else if (op->kind == OP_RETRY || op->kind == OP_PURGE) {
      op->u.count.rc = rc;
      op->u.count.n = 0;
    }
  }
}

static size_t group_appends(const struct group *g)
{
  size_t n = 0;

  for (size_t i = 0; i < g->nops; i++)
    n += g->ops[i].kind == OP_APPEND;
  return n;
}

static void writer_group(struct emd_spool *sp, struct group *g)
{
  struct writer *w = &sp->w;
  struct counters saved = w->c;
  int rc;

  g->changed = false;
  if (g->nops == 0)
    goto out;                      /* only arena memory to give back */
  rc = group_apply(sp, g, true);
  if (err_from_mdb(rc) == EMD_ESPOOLFULL && group_appends(g) > 0) {
    emd_log_error("spool", "spool map full (%s): refusing %zu new events, "
                  "applying the rest", why(rc), group_appends(g));
    w->c = saved;
    rc = group_apply(sp, g, false);
  }
  if (rc != 0) {
    emd_log_error("spool", "group commit failed: %s", why(rc));
    w->c = saved;
    group_fail(g, err_from_mdb(rc));
  }
out:
  g->after = w->c;
  g->oldest_ms = w->oldest_ms;
  g->commits = w->commits;
  g->ids_rebuilding = w->rb.active;
}

static void queue_push(struct group_queue *q, struct group *g)
{
  g->next = NULL;
  if (q->tail != NULL)
    q->tail->next = g;
  else
    q->head = g;
  q->tail = g;
}

static struct group *queue_pop(struct group_queue *q)
{
  struct group *g = q->head;

  if (g != NULL) {
    q->head = g->next;
    if (q->head == NULL)
      q->tail = NULL;
    g->next = NULL;
  }
  return g;
}

static void queue_move(struct group_queue *to, struct group_queue *from)
{
  struct group *g;

  while ((g = queue_pop(from)) != NULL)
    queue_push(to, g);
}

/* The groups parked for a sync failed it: their appends are committed but
 * maybe not on disk, so they report the error. */
static void unsynced_fail(struct group_queue *q, int rc)
{
  for (struct group *g = q->head; g != NULL; g = g->next)
    for (size_t i = 0; i < g->nops; i++)
      if (g->ops[i].kind == OP_APPEND && g->ops[i].u.app.res.rc == 0)
        g->ops[i].u.app.res.rc = rc;
}

/* Called with sp->mu held; returns with it held. */
static void writer_sync(struct emd_spool *sp)
{
  struct writer *w = &sp->w;
  int rc;

  uv_mutex_unlock(&sp->mu);
  rc = mdb_env_sync(sp->env, 1);
  if (rc != 0) {
    emd_log_error("spool", "sync failed: %s", mdb_strerror(rc));
    unsynced_fail(&w->unsynced, err_from_mdb(rc));
  }
  w->last_sync_ns = uv_hrtime();
  uv_mutex_lock(&sp->mu);
  queue_move(&sp->done, &w->unsynced);
  uv_async_send(&sp->async);
}

/* True when the parked groups' sync is due; else *wait_ns (if not NULL)
 * is how long until it is. */
static bool sync_due(const struct writer *w, uint64_t *wait_ns)
{
  uint64_t now = uv_hrtime();
  uint64_t due = w->last_sync_ns + w->k.sync_interval_ms * 1000000u;

  if (now >= due)
    return true;
  if (wait_ns != NULL)
    *wait_ns = due - now;
  return false;
}

/* One step of filling the id table from the databases: up to budget
 * rows, in a read transaction of the writer's own between groups. */
static void rebuild_step(struct emd_spool *sp, size_t budget)
{
  struct writer *w = &sp->w;
  struct rebuild *rb = &w->rb;
  MDB_dbi dbs[3] = { sp->db_pending, sp->db_dead, sp->db_ids };
  uint8_t key[8];
  MDB_val k, v;
  MDB_txn *txn = NULL;
  MDB_cursor *c;
  const uint8_t *id;
  size_t idlen;
  int rc;

  rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
  while (rc == 0 && rb->phase < 3 && budget > 0) {
    rc = mdb_cursor_open(txn, dbs[rb->phase], &c);
    if (rc != 0)
      break;
    if (rb->phase == 0) {
      /* pending, by chunk: the events from rb->next on */
      struct chunk_it it;
      const uint8_t *rec;
      uint64_t seq;
      size_t len;

      rc = chunk_from(c, rb->next, &k, &v);
      while (rc == 0 && budget > 0) {
        chunk_begin(&it, &k, &v);
        while (budget > 0 && chunk_next(&it, &seq, &rec, &len) == 1) {
          if (seq < rb->next)
            continue;
          budget--;
          rb->next = seq + 1;
          rec_id(rec, len, &id, &idlen);
          if (idlen > 0 &&
              emd_idtab_insert(w->ids, emd_idtab_hash(w->ids, id, idlen),
                               seq) == 0)
            rb->n++;
        }
        if (budget > 0)            /* else the step ends in this chunk */
          rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
      }
      mdb_cursor_close(c);
      if (rc == MDB_NOTFOUND) {
        rb->phase++;
        rb->next = 0;
        rc = 0;
      }
      continue;
    }
    put_be64(key, rb->next);
    k.mv_size = 8;
    k.mv_data = key;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
         rc == 0 && budget > 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), budget--) {
      if (k.mv_size != 8)
        continue;
      idlen = 0;
      if (rb->phase == 1) {
        dead_id(&v, &id, &idlen);
      } else {                     /* a row of delivered ids: all of it */
        struct idrow_it it;
        uint64_t ms, seq;

        if (idrow_begin(&it, &k, &v, &ms) == 0)
          while (idrow_next(&it, &seq, &id, &idlen) == 1)
            if (idlen > 0 &&
                emd_idtab_insert(w->ids, emd_idtab_hash(w->ids, id, idlen),
                                 seq) == 0)
              rb->n++;
        idlen = 0;
      }
      rb->next = get_be64(k.mv_data) + 1;
      if (idlen > 0 &&
          emd_idtab_insert(w->ids, emd_idtab_hash(w->ids, id, idlen),
                           get_be64(k.mv_data)) == 0)
        rb->n++;
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) {
      rb->phase++;
      rb->next = 0;
      rc = 0;
    }
  }
  if (txn != NULL)
    mdb_txn_abort(txn);
  if (rc != 0) {
    emd_log_error("spool", "id table rebuild stopped: %s; duplicates of "
                  "events from before this start may go unnoticed",
                  mdb_strerror(rc));
    rb->active = false;
    w->ids_bad = true;
  } else if (rb->phase == 3) {
    rb->active = false;
    emd_log_info("spool", "id table rebuilt: %llu ids in %.1f s",
                 (unsigned long long)rb->n,
                 (double)(uv_hrtime() - rb->start_ns) / 1e9);
  }
}

/* The writer's last act: the id table, marked clean for the spool's last
 * transaction unless it is not complete. */
static void ids_close(struct emd_spool *sp)
{
  struct writer *w = &sp->w;
  struct emd_idtab_stamp stamp;
  MDB_envinfo info;
  bool clean;
  int rc;

  memcpy(stamp.instance, sp->instance, INSTANCE_LEN);
  clean = !w->rb.active && !w->ids_bad &&
          mdb_env_info(sp->env, &info) == 0;
  stamp.txnid = clean ? (uint64_t)info.me_last_txnid : 0;
  rc = emd_idtab_close(w->ids, clean ? &stamp : NULL);
  w->ids = NULL;
  if (rc != 0)
    emd_log_warn("spool", "id table: cannot write it out (%s); it will be "
                 "rebuilt at the next start", strerror(rc));
}

static void writer_main(void *arg)
{
  struct emd_spool *sp = arg;
  struct writer *w = &sp->w;
  struct group *g;
  uint64_t wait_ns;

  uv_mutex_lock(&sp->mu);
  for (;;) {
    w->k = sp->k_shared;
    /* A due sync goes before the next group, so steady traffic cannot
     * hold replies back; at stop, after the last group. */
    if (w->unsynced.head != NULL &&
        (sync_due(w, NULL) || (sp->stop && sp->todo.head == NULL))) {
      writer_sync(sp);
      continue;
    }
    if (w->rb.active && !sp->stop) {
      uv_mutex_unlock(&sp->mu);
      rebuild_step(sp, REBUILD_STEP);
      uv_mutex_lock(&sp->mu);
    }
    /* A growth of the id table moves some slots with every insert; with
     * nothing else to do, many. */
    if (sp->todo.head == NULL && emd_idtab_step(w->ids, 0)) {
      uv_mutex_unlock(&sp->mu);
      emd_idtab_step(w->ids, GROW_STEP);
      uv_mutex_lock(&sp->mu);
    }
    g = queue_pop(&sp->todo);
    if (g != NULL) {
      sp->busy = true;
      uv_mutex_unlock(&sp->mu);
      writer_group(sp, g);
      uv_mutex_lock(&sp->mu);
      sp->busy = false;
      /* A group that changed nothing may pass parked ones only if none
       * is parked: its duplicates may name events not yet synced. */
      if (w->k.sync == EMD_SYNC_INTERVAL &&
          (g->changed || w->unsynced.head != NULL))
        queue_push(&w->unsynced, g);
      else
        queue_push(&sp->done, g);
      uv_async_send(&sp->async);   /* done, or ready for the next group */
      continue;
    }
    if (w->unsynced.head != NULL) {
      if (!sync_due(w, &wait_ns))
        uv_cond_timedwait(&sp->cv, &sp->mu, wait_ns);
      continue;
    }
    if (sp->stop)
      break;
    if (!w->rb.active && !emd_idtab_step(w->ids, 0))
      uv_cond_wait(&sp->cv, &sp->mu);
  }
  uv_mutex_unlock(&sp->mu);
  ids_close(sp);
  uv_mutex_lock(&sp->mu);
  sp->exited = true;
  uv_async_send(&sp->async);
  uv_mutex_unlock(&sp->mu);
}

/* ---- the loop side -------------------------------------------------- */

static struct group *group_take(struct emd_spool *sp)
{
  struct group *g = sp->free_groups;

  if (g != NULL) {
    sp->free_groups = g->next;
    g->next = NULL;
    return g;
  }
  return calloc(1, sizeof(*g));
}

static void group_free(struct group *g)
{
  emd_arena_free(&g->arena);
  free(g->ops);
  free(g);
}

static bool group_empty(const struct group *g)
{
  return g == NULL || (g->nops == 0 && g->arena.total == 0);
}

static void on_space(uv_timer_t *h);

/* Hands the gathered group to the writer when the writer has committed
 * everything it holds; otherwise the group keeps growing. A group of
 * deletes alone first waits its DELETE_LINGER_MS (on the space timer). */
static void maybe_submit(struct emd_spool *sp, bool force)
{
  struct group *g = sp->gather, *next;
  bool ready;

  if (group_empty(g))
    return;
  if (!force && sp->inflight >= MAX_INFLIGHT)
    return;
  if (!force && g->eager == 0) {
    uint64_t since = (uv_hrtime() - g->first_ns) / 1000000;

    if (since < DELETE_LINGER_MS) {
      if (!uv_is_active((uv_handle_t *)&sp->space))
        uv_timer_start(&sp->space, on_space, DELETE_LINGER_MS - since, 0);
      return;
    }
  }
  next = group_take(sp);
  if (next == NULL && !force)
    return;                        /* try again next turn */
  uv_mutex_lock(&sp->mu);
  ready = force || (sp->todo.head == NULL && !sp->busy);
  if (ready) {
    queue_push(&sp->todo, g);
    uv_cond_signal(&sp->cv);
  }
  uv_mutex_unlock(&sp->mu);
  if (!ready) {
    next->next = sp->free_groups;
    sp->free_groups = next;
    return;
  }
  /* At close, out of memory: nothing more is gathered anyway. */
  sp->gather = next;
  sp->inflight++;
  uv_ref((uv_handle_t *)&sp->async);
}

bool emd_spool_has_room(const struct emd_spool *sp)
{
  const struct group *g = sp->gather;

  /* A writer far behind: the group waiting for it would grow without
   * bound if the ingest kept reading. */
  if (g != NULL &&
      (g->nops >= GATHER_MAX_OPS || g->arena.total >= GATHER_MAX_BYTES))
    return false;
  return sp->k.on_full != EMD_FULL_BLOCK || sp->k.max_bytes == 0 ||
         sp->st.pending_bytes < sp->k.max_bytes;
}

/* Calls the changed callback after a commit that changed the spool, or
 * when there is room again. */
static void notify_changed(struct emd_spool *sp, bool changed)
{
  bool room = emd_spool_has_room(sp);

  if (room && !sp->room_was)
    changed = true;
  sp->room_was = room;
  if (changed && !sp->closing && sp->changed_cb != NULL)
    sp->changed_cb(sp->changed_data);
}

static void on_turn_end(struct emd_spool *sp)
{
  if (sp->closing)
    return;
  maybe_submit(sp, false);
  uv_idle_stop(&sp->idle);
  notify_changed(sp, false);       /* room again, e.g. after a reconfigure */
}

static void on_check(uv_check_t *h)
{
  on_turn_end(h->data);
}

static void on_space(uv_timer_t *h)
{
  on_turn_end(h->data);
}

static void on_idle(uv_idle_t *h)
{
  on_turn_end(h->data);
}

/* Runs the callbacks of a durable group and recycles it. The figures
 * come first, so a callback sees its own commit in emd_spool_stats. */
static void group_finish(struct emd_spool *sp, struct group *g)
{
  sp->st.next_seq = g->after.next_seq;
  sp->st.pending = g->after.pending;
  sp->st.pending_bytes = g->after.pending_bytes;
  sp->st.dead = g->after.dead;
  sp->st.dropped = g->after.dropped;
  sp->st.expired = g->after.expired;
  sp->st.oldest_ms = g->oldest_ms;
  sp->st.commits = g->commits;
  sp->st.ids_rebuilding = g->ids_rebuilding;
  for (size_t i = 0; i < g->nops; i++) {
    struct op *op = &g->ops[i];

    if (op->kind == OP_APPEND)
      op->u.app.cb(op->u.app.data, &op->u.app.res);
    else if ((op->kind == OP_RETRY || op->kind == OP_PURGE) &&
             op->u.count.cb != NULL)
      op->u.count.cb(op->u.count.data, op->u.count.rc, op->u.count.n);
  }
  emd_arena_reset(&g->arena);
  g->nops = 0;
  g->eager = 0;
  g->next = sp->free_groups;
  sp->free_groups = g;
}

static void spool_free(struct emd_spool *sp)
{
  struct group *g;

  if (sp->gather != NULL)
    group_free(sp->gather);
  while ((g = sp->free_groups) != NULL) {
    sp->free_groups = g->next;
    group_free(g);
  }
  emd_arena_free(&sp->spare);
  if (sp->sync_init) {
    uv_cond_destroy(&sp->cv);
    uv_mutex_destroy(&sp->mu);
  }
  emd_idtab_close(sp->w.ids, NULL);   /* if the writer never ran */
  free(sp->w.slots);
  free(sp->w.touched);
  free(sp->w.scratch);
  free(sp->w.fill.buf);
  free(sp->w.run.buf);
  free(sp->w.ed.e);
  emd_pack_buf_free(&sp->lpack);
  free(sp);
}

static void env_close(struct emd_spool *sp)
{
  if (sp->rcur != NULL)
    mdb_cursor_close(sp->rcur);
  if (sp->rtxn != NULL)
    mdb_txn_abort(sp->rtxn);
  sp->rcur = NULL;
  sp->rtxn = NULL;
  if (sp->env != NULL)
    mdb_env_close(sp->env);
  sp->env = NULL;
  if (sp->lockfd >= 0)
    close(sp->lockfd);
  sp->lockfd = -1;
}

static void on_closed(uv_handle_t *h)
{
  struct emd_spool *sp = h->data;

  if (--sp->nhandles == 0)
    spool_free(sp);
}

static void on_async(uv_async_t *h)
{
  struct emd_spool *sp = h->data;
  struct group_queue done;
  struct group *g;
  bool changed = false, exited;

  uv_mutex_lock(&sp->mu);
  done = sp->done;
  sp->done.head = sp->done.tail = NULL;
  exited = sp->exited;
  uv_mutex_unlock(&sp->mu);
  for (g = done.head; g != NULL; g = g->next)
    sp->inflight--;
  /* The writer is free: give it the next group before running this
   * group's callbacks, so the two overlap. */
  if (!sp->closing)
    maybe_submit(sp, false);
  while ((g = queue_pop(&done)) != NULL) {
    changed |= g->changed;
    group_finish(sp, g);
  }
  if (!sp->closing)
    notify_changed(sp, changed);
  if (sp->inflight == 0 && !sp->closing)
    uv_unref((uv_handle_t *)&sp->async);
  if (sp->closing && exited && sp->thread_started) {
    uv_thread_join(&sp->thread);
    sp->thread_started = false;
    env_close(sp);
    uv_close((uv_handle_t *)&sp->async, on_closed);
  }
}

static struct op *op_add(struct emd_spool *sp, enum op_kind kind);

static void on_maint(uv_timer_t *h)
{
  struct emd_spool *sp = h->data;

  if (sp->closing || sp->inflight > 0 || sp->gather->nops > 0)
    return;                        /* a commit is coming anyway */
  (void)op_add(sp, OP_MAINT);
}

/* How often the loop makes sure a transaction runs the expiry walks. */
static uint64_t maint_period(const struct knobs *k)
{
  uint64_t p = 1000, v[3] = { k->max_age_ms, k->dedup_window_ms,
                              k->timer_ttl_ms };

  for (int i = 0; i < 3; i++)
    if (v[i] != 0 && v[i] / 4 < p)
      p = v[i] / 4;
  return p < 10 ? 10 : p;
}

static void knobs_from(struct knobs *k, const struct emd_config *cfg)
{
  k->sync = cfg->spool.sync;
  k->sync_interval_ms = cfg->spool.sync_interval_ms;
  k->max_bytes = cfg->spool.max_bytes;
  k->on_full = cfg->spool.on_full;
  k->max_age_ms = cfg->spool.max_age_ms;
  k->dead_max = cfg->spool.dead_max;
  k->timer_ttl_ms = cfg->spool.timer_ttl_ms;
  k->dedup_window_ms = cfg->spool.dedup_window_ms;
}

/* ---- open ------------------------------------------------------------ */

/* Creates the directory if needed and takes an exclusive lock on it:
 * LMDB must not be opened twice in one process, and two emitd on one
 * spool would hand out the same seqs. */
static int dir_lock(struct emd_spool *sp, const char *dir, char *err,
                    size_t errlen)
{
  int e;

  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    e = errno;
    errf(err, errlen, "cannot create spool directory %s: %s", dir,
         strerror(e));
    return -e;
  }
  sp->lockfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (sp->lockfd < 0) {
    e = errno;
    errf(err, errlen, "cannot open spool directory %s: %s", dir,
         strerror(e));
    return -e;
  }
  if (flock(sp->lockfd, LOCK_EX | LOCK_NB) != 0) {
    e = errno;
    errf(err, errlen, "spool %s is in use by another emitd (%s)", dir,
         e == EWOULDBLOCK ? "locked" : strerror(e));
    return e == EWOULDBLOCK ? -EBUSY : -e;
  }
  return 0;
}

static size_t map_size(uint64_t max_bytes)
{
  uint64_t m = 64 * MIB + MAP_HEADROOM;

  if (max_bytes > (UINT64_MAX - m) / 2)
    return SIZE_MAX / 2;
  m += 2 * max_bytes;
  return m > SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)m;
}

/* Refuses a data.mdb shorter than the pages LMDB thinks it has: reading
 * past its end would be a SIGBUS, not an error. */
static int env_check_size(struct emd_spool *sp, const char *dir, char *err,
                          size_t errlen)
{
  char path[4096];
  struct stat st;
  MDB_envinfo info;
  MDB_stat ms;

  snprintf(path, sizeof(path), "%s/data.mdb", dir);
  if (stat(path, &st) != 0 || mdb_env_info(sp->env, &info) != 0 ||
      mdb_env_stat(sp->env, &ms) != 0)
    return 0;
  if ((uint64_t)st.st_size < ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize) {
    errf(err, errlen, "spool %s: data.mdb is truncated (%lld bytes, needs "
         "%llu); move the spool aside", dir, (long long)st.st_size,
         ((unsigned long long)info.me_last_pgno + 1) * ms.ms_psize);
    return EMD_ESPOOLBAD;
  }
  return 0;
}

static int env_open(struct emd_spool *sp, const char *dir, char *err,
                    size_t errlen)
{
  unsigned flags = sp->k.sync == EMD_SYNC_ALWAYS ? 0 : MDB_NOSYNC;
  int rc;

  rc = mdb_env_create(&sp->env);
  if (rc == 0)
    rc = mdb_env_set_maxdbs(sp->env, 8);
  if (rc == 0)
    rc = mdb_env_set_mapsize(sp->env, map_size(sp->k.max_bytes));
  if (rc == 0)
    rc = mdb_env_open(sp->env, dir, flags, 0600);
  if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
    errf(err, errlen, "spool %s: data.mdb is not an LMDB database this "
         "emitd can read (%s); move the spool aside (emitd then starts a "
         "new one)", dir, mdb_strerror(rc));
    return EMD_ESPOOLBAD;
  }
  if (rc != 0) {
    errf(err, errlen, "cannot open spool %s: %s", dir, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  return env_check_size(sp, dir, err, errlen);
}

#define NDBS 5
static const char *const db_names[NDBS] = { "pending", "ids", "timers",
                                            "dead", "meta" };

static MDB_dbi *db_slot(struct emd_spool *sp, int i)
{
  MDB_dbi *dbs[NDBS] = { &sp->db_pending, &sp->db_ids, &sp->db_timers,
                         &sp->db_dead, &sp->db_meta };

  return dbs[i];
}

/* A new spool: every database and meta in one transaction. */
static int spool_create(struct emd_spool *sp, const char *dir, char *err,
                        size_t errlen)
{
  uint8_t ver[4], state[STATE_LEN] = { 0 };
  MDB_val k, v;
  MDB_txn *txn = NULL;
  int rc;

  if (getrandom(sp->instance, INSTANCE_LEN, 0) != INSTANCE_LEN) {
    int e = errno;

    errf(err, errlen, "getrandom: %s", strerror(e));
    return -e;
  }
  rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
  for (int i = 0; i < NDBS && rc == 0; i++)
    rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, db_slot(sp, i));
  put_be32(ver, SCHEMA_VERSION);
  put_be64(state, 1);              /* next_seq: seqs start at 1 */
  k.mv_size = sizeof(META_SCHEMA) - 1;
  k.mv_data = META_SCHEMA;
  v.mv_size = 4;
  v.mv_data = ver;
  if (rc == 0)
    rc = mdb_put(txn, sp->db_meta, &k, &v, 0);
  k.mv_size = sizeof(META_INSTANCE) - 1;
  k.mv_data = META_INSTANCE;
  v.mv_size = INSTANCE_LEN;
  v.mv_data = sp->instance;
  if (rc == 0)
    rc = mdb_put(txn, sp->db_meta, &k, &v, 0);
  k.mv_size = sizeof(META_STATE) - 1;
  k.mv_data = META_STATE;
  v.mv_size = STATE_LEN;
  v.mv_data = state;
  if (rc == 0)
    rc = mdb_put(txn, sp->db_meta, &k, &v, 0);
  if (rc == 0)
    rc = mdb_txn_commit(txn);
  else if (txn != NULL)
    mdb_txn_abort(txn);
  if (rc != 0) {
    errf(err, errlen, "cannot create spool %s: %s", dir, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  sp->w.c.next_seq = 1;
  return 0;
}

static int meta_get(MDB_txn *txn, MDB_dbi dbi, const char *key, MDB_val *v)
{
  MDB_val k = { strlen(key), (void *)key };

  return mdb_get(txn, dbi, &k, v);
}

/* next_seq must lie past every seq in use, or every append would fail
 * (MDB_APPEND) or reuse a dead letter's key. One cursor step. */
static int seq_check(struct emd_spool *sp, MDB_txn *txn, MDB_dbi dbi,
                     const char *dir)
{
  MDB_cursor *c;
  MDB_val k, v;
  uint64_t last;
  int rc;

  rc = mdb_cursor_open(txn, dbi, &c);
  if (rc != 0)
    return rc;
  rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
  if (rc == MDB_NOTFOUND || rc != 0 || k.mv_size != 8) {
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc != 0 ? rc : MDB_CORRUPTED;
  }
  last = get_be64(k.mv_data);
  if (dbi == sp->db_pending) {     /* its last chunk's last event */
    struct chunk_it it;
    const uint8_t *rec;
    uint64_t seq;
    size_t len;

    chunk_begin(&it, &k, &v);
    while (chunk_next(&it, &seq, &rec, &len) == 1)
      last = seq;
  }
  mdb_cursor_close(c);
  if (last >= sp->w.c.next_seq) {
    emd_log_warn("spool", "spool %s: next seq %llu was behind seq %llu in "
                 "use; continuing from %llu", dir,
                 (unsigned long long)sp->w.c.next_seq,
                 (unsigned long long)last, (unsigned long long)last + 1);
    sp->w.c.next_seq = last + 1;
  }
  return 0;
}

/* Reads meta of an existing spool; opens the other databases. Nothing is
 * written. */
static int spool_load(struct emd_spool *sp, MDB_txn *txn, const char *dir,
                      char *err, size_t errlen)
{
  struct counters *c = &sp->w.c;
  MDB_val v;
  uint32_t ver;
  int rc;

  rc = mdb_dbi_open(txn, "meta", 0, &sp->db_meta);
  if (rc != 0) {
    errf(err, errlen, "spool %s holds data but no emitd meta (%s): not an "
         "emitd spool; move it aside", dir, mdb_strerror(rc));
    return EMD_ESPOOLBAD;
  }
  rc = meta_get(txn, sp->db_meta, META_SCHEMA, &v);
  if (rc != 0 || v.mv_size != 4 || get_be32(v.mv_data) == 0) {
    errf(err, errlen, "spool %s: schema version missing or garbled; move "
         "the spool aside", dir);
    return EMD_ESPOOLBAD;
  }
  ver = get_be32(v.mv_data);
  if (ver > SCHEMA_VERSION) {
    errf(err, errlen, "spool %s has schema version %u, newer than the %u "
         "this emitd knows: upgrade emitd or move the spool aside", dir,
         ver, SCHEMA_VERSION);
    return EMD_ESPOOLVER;
  }
  rc = meta_get(txn, sp->db_meta, META_INSTANCE, &v);
  if (rc != 0 || v.mv_size != INSTANCE_LEN) {
    errf(err, errlen, "spool %s: instance ID missing or garbled; move the "
         "spool aside", dir);
    return EMD_ESPOOLBAD;
  }
  memcpy(sp->instance, v.mv_data, INSTANCE_LEN);
  rc = meta_get(txn, sp->db_meta, META_STATE, &v);
  if (rc != 0 || v.mv_size != STATE_LEN) {
    errf(err, errlen, "spool %s: state missing or garbled; move the spool "
         "aside", dir);
    return EMD_ESPOOLBAD;
  }
  c->next_seq = get_be64(v.mv_data);
  c->pending = get_be64((uint8_t *)v.mv_data + 8);
  c->pending_bytes = get_be64((uint8_t *)v.mv_data + 16);
  c->dead = get_be64((uint8_t *)v.mv_data + 24);
  c->dropped = get_be64((uint8_t *)v.mv_data + 32);
  c->expired = get_be64((uint8_t *)v.mv_data + 40);
  sp->loaded_version = ver;
  /* Schema 1 has all five too (and "delivered", see spool_upgrade). */
  for (int i = 0; i < NDBS - 1; i++) {
    rc = mdb_dbi_open(txn, db_names[i], 0, db_slot(sp, i));
    if (rc != 0) {
      errf(err, errlen, "spool %s: database \"%s\" missing (%s); move the "
           "spool aside", dir, db_names[i], mdb_strerror(rc));
      return EMD_ESPOOLBAD;
    }
  }
  rc = oldest_pending(txn, sp->db_pending, &sp->w.oldest_ms);
  if (rc == 0)
    rc = seq_check(sp, txn, sp->db_pending, dir);
  if (rc == 0)
    rc = seq_check(sp, txn, sp->db_dead, dir);
  if (rc != 0) {
    errf(err, errlen, "spool %s: %s", dir, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  return 0;
}

static int spool_meta(struct emd_spool *sp, const char *dir, char *err,
                      size_t errlen)
{
  MDB_txn *txn = NULL;
  MDB_dbi main_db;
  MDB_stat ms;
  int rc;

  rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
  if (rc == 0)
    rc = mdb_dbi_open(txn, NULL, 0, &main_db);
  if (rc == 0)
    rc = mdb_stat(txn, main_db, &ms);
  if (rc != 0) {
    if (txn != NULL)
      mdb_txn_abort(txn);
    errf(err, errlen, "cannot read spool %s: %s", dir, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  if (ms.ms_entries == 0) {
    mdb_txn_abort(txn);
    return spool_create(sp, dir, err, errlen);
  }
  rc = spool_load(sp, txn, dir, err, errlen);
  if (rc != 0) {
    mdb_txn_abort(txn);
    return rc;
  }
  /* Committing keeps the database handles opened in it. */
  rc = mdb_txn_commit(txn);
  if (rc != 0) {
    errf(err, errlen, "cannot read spool %s: %s", dir, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  return 0;
}

/* An older schema -> this one, in one transaction. From 1: the old ids
 * index (id -> seq) goes, the delivered ids move from "delivered"
 * (delivered_ms seq -> id) into ids (seq -> delivered_ms id), and the id
 * table is rebuilt after. From 2 (and 1): pending's rows of one
 * SpoolRecord each stay as they are, read as chunks of one, so only the
 * version changes; it keeps an older emitd, which would not read chunks,
 * from opening the spool. */
static int spool_upgrade(struct emd_spool *sp, const char *dir, char *err,
                         size_t errlen)
{
  MDB_val k, v, nk, nv;
  MDB_txn *txn = NULL;
  MDB_cursor *c = NULL;
  MDB_dbi old;
  uint8_t key[8], val[8 + KEY_MAX], ver[4];
  uint64_t n = 0;
  int rc;

  rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
  if (rc == 0 && sp->loaded_version == 1)
    rc = mdb_drop(txn, sp->db_ids, 0);
  if (rc == 0 && sp->loaded_version == 1) {
    rc = mdb_dbi_open(txn, "delivered", 0, &old);
    if (rc == 0)
      rc = mdb_cursor_open(txn, old, &c);
    else if (rc == MDB_NOTFOUND)
      rc = 0;                      /* nothing delivered to remember */
  }
  while (rc == 0 && c != NULL &&
         (rc = mdb_cursor_get(c, &k, &v, n ? MDB_NEXT : MDB_FIRST)) == 0) {
    n++;
    if (k.mv_size != 16 || v.mv_size == 0 || v.mv_size > KEY_MAX)
      continue;                    /* garbled: forgotten */
    memcpy(key, (uint8_t *)k.mv_data + 8, 8);
    memcpy(val, k.mv_data, 8);
    memcpy(val + 8, v.mv_data, v.mv_size);
    nk.mv_size = 8;
    nk.mv_data = key;
    nv.mv_size = 8 + v.mv_size;
    nv.mv_data = val;
    rc = mdb_put(txn, sp->db_ids, &nk, &nv, 0);
  }
  if (rc == MDB_NOTFOUND)
    rc = 0;
  if (c != NULL) {
    mdb_cursor_close(c);
    if (rc == 0)
      rc = mdb_drop(txn, old, 1);
  }
  put_be32(ver, SCHEMA_VERSION);
  k.mv_size = sizeof(META_SCHEMA) - 1;
  k.mv_data = META_SCHEMA;
  v.mv_size = 4;
  v.mv_data = ver;
  if (rc == 0)
    rc = mdb_put(txn, sp->db_meta, &k, &v, 0);
  if (rc == 0)
    rc = mdb_txn_commit(txn);
  else if (txn != NULL)
    mdb_txn_abort(txn);
  if (rc != 0) {
    errf(err, errlen, "spool %s: cannot upgrade it from schema %u: %s", dir,
         sp->loaded_version, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  if (sp->loaded_version == 1)
    emd_log_info("spool", "spool %s upgraded from schema 1 to %u (%llu "
                 "delivered ids kept)", dir, SCHEMA_VERSION,
                 (unsigned long long)n);
  else
    emd_log_info("spool", "spool %s upgraded from schema %u to %u",
                 dir, sp->loaded_version, SCHEMA_VERSION);
  return 0;
}

/* Opens the id table; one that cannot be trusted is rebuilt by the writer
 * (see rebuild_step). */
static int ids_open(struct emd_spool *sp, const char *dir, char *err,
                    size_t errlen)
{
  struct emd_idtab_stamp stamp;
  char path[4096];
  MDB_envinfo info;
  bool trusted;
  int rc;

  rc = mdb_env_info(sp->env, &info);
  if (rc != 0) {
    errf(err, errlen, "cannot read spool %s: %s", dir, mdb_strerror(rc));
    return err_from_mdb(rc);
  }
  memcpy(stamp.instance, sp->instance, INSTANCE_LEN);
  stamp.txnid = (uint64_t)info.me_last_txnid;
  snprintf(path, sizeof(path), "%s/%s", dir, IDTAB_FILE);
  rc = emd_idtab_open(path, &stamp, &sp->w.ids, &trusted, err, errlen);
  if (rc != 0)
    return -rc;
  sp->ids_seed = emd_idtab_seed(sp->w.ids);   /* before the writer runs */
  if (!trusted && sp->loaded_version != 0) {
    sp->w.rb.active = true;
    sp->w.rb.start_ns = uv_hrtime();
    emd_log_info("spool", "id table %s was not closed cleanly with this "
                 "spool: rebuilding it in the background from %llu pending "
                 "and %llu dead events and the delivered ids; until it is "
                 "done, an event sent again may be stored twice (the "
                 "service de-duplicates by id)", path,
                 (unsigned long long)sp->w.c.pending,
                 (unsigned long long)sp->w.c.dead);
  }
  return 0;
}

static void stats_from_writer(struct emd_spool *sp)
{
  sp->st.next_seq = sp->w.c.next_seq;
  sp->st.pending = sp->w.c.pending;
  sp->st.pending_bytes = sp->w.c.pending_bytes;
  sp->st.dead = sp->w.c.dead;
  sp->st.dropped = sp->w.c.dropped;
  sp->st.expired = sp->w.c.expired;
  sp->st.oldest_ms = sp->w.oldest_ms;
  sp->st.commits = 0;
  sp->st.ids_rebuilding = sp->w.rb.active;
}

/* The handles and the writer thread, last: nothing before can fail with
 * a handle open. */
static int spool_start(struct emd_spool *sp)
{
  uint64_t period = maint_period(&sp->k);
  int rc;

  rc = uv_async_init(sp->loop, &sp->async, on_async);
  if (rc != 0)
    return rc;
  sp->async.data = sp;
  uv_unref((uv_handle_t *)&sp->async);
  uv_check_init(sp->loop, &sp->check);
  sp->check.data = sp;
  uv_check_start(&sp->check, on_check);
  uv_unref((uv_handle_t *)&sp->check);
  uv_idle_init(sp->loop, &sp->idle);
  sp->idle.data = sp;
  uv_timer_init(sp->loop, &sp->maint);
  sp->maint.data = sp;
  uv_timer_start(&sp->maint, on_maint, period, period);
  uv_unref((uv_handle_t *)&sp->maint);
  uv_timer_init(sp->loop, &sp->space);
  sp->space.data = sp;
  sp->nhandles = 5;
  rc = uv_thread_create(&sp->thread, writer_main, sp);
  if (rc != 0) {
    sp->closing = true;
    env_close(sp);
    uv_close((uv_handle_t *)&sp->async, on_closed);
    uv_close((uv_handle_t *)&sp->check, on_closed);
    uv_close((uv_handle_t *)&sp->idle, on_closed);
    uv_close((uv_handle_t *)&sp->maint, on_closed);
    uv_close((uv_handle_t *)&sp->space, on_closed);
    return rc;
  }
  sp->thread_started = true;
  return 0;
}

int emd_spool_open(uv_loop_t *loop, const struct emd_config *cfg,
                   struct emd_spool **out, char *err, size_t errlen)
{
  struct emd_spool *sp;
  const char *dir = cfg->spool.dir;
  int rc;

  *out = NULL;
  if (dir == NULL || *dir == '\0') {
    errf(err, errlen, "spool.dir is not set");
    return EMD_ECONFIG;
  }
  sp = calloc(1, sizeof(*sp));
  if (sp == NULL)
    return -ENOMEM;
  sp->loop = loop;
  sp->lockfd = -1;
  knobs_from(&sp->k, cfg);
  sp->k_shared = sp->k;
  sp->w.k = sp->k;
  rc = -ENOMEM;
  sp->gather = calloc(1, sizeof(*sp->gather));
  if (sp->gather == NULL || uv_mutex_init(&sp->mu) != 0)
    goto fail;
  if (uv_cond_init(&sp->cv) != 0) {
    uv_mutex_destroy(&sp->mu);
    goto fail;
  }
  sp->sync_init = true;
  rc = dir_lock(sp, dir, err, errlen);
  if (rc == 0)
    rc = env_open(sp, dir, err, errlen);
  if (rc == 0)
    rc = spool_meta(sp, dir, err, errlen);
  if (rc == 0 && sp->loaded_version != 0 &&
      sp->loaded_version < SCHEMA_VERSION)
    rc = spool_upgrade(sp, dir, err, errlen);
  if (rc == 0)
    rc = ids_open(sp, dir, err, errlen);
  if (rc != 0)
    goto fail;
  stats_from_writer(sp);
  sp->room_was = emd_spool_has_room(sp);
  sp->w.last_sync_ns = uv_hrtime();
  rc = spool_start(sp);
  if (rc != 0) {
    errf(err, errlen, "cannot start the spool: %s", uv_strerror(rc));
    if (sp->nhandles > 0)
      return rc;                   /* freed by the handles' close */
    goto fail;
  }
  *out = sp;
  return 0;

fail:
  env_close(sp);
  spool_free(sp);
  return rc;
}

void emd_spool_close(struct emd_spool *sp)
{
  if (sp == NULL || sp->closing)
    return;
  sp->closing = true;
  uv_close((uv_handle_t *)&sp->check, on_closed);
  uv_close((uv_handle_t *)&sp->idle, on_closed);
  uv_close((uv_handle_t *)&sp->maint, on_closed);
  uv_close((uv_handle_t *)&sp->space, on_closed);
  if (sp->gather != NULL && sp->gather->nops > 0)
    maybe_submit(sp, true);
  uv_mutex_lock(&sp->mu);
  sp->stop = true;
  uv_cond_signal(&sp->cv);
  uv_mutex_unlock(&sp->mu);
  /* The writer finishes what it holds, syncs, and says it exited; on_async
   * then joins it and closes the last handle. */
  uv_ref((uv_handle_t *)&sp->async);
}

void emd_spool_reconfigure(struct emd_spool *sp, const struct emd_config *cfg)
{
  enum emd_sync sync = sp->k.sync;
  uint64_t period;

  knobs_from(&sp->k, cfg);
  sp->k.sync = sync;               /* fixed at open (MDB_NOSYNC) */
  uv_mutex_lock(&sp->mu);
  sp->k_shared = sp->k;
  uv_cond_signal(&sp->cv);         /* a shorter sync_interval applies now */
  uv_mutex_unlock(&sp->mu);
  if (sp->closing)
    return;
  period = maint_period(&sp->k);
  uv_timer_start(&sp->maint, on_maint, period, period);
  if (!sp->room_was && emd_spool_has_room(sp))
    uv_idle_start(&sp->idle, on_idle);   /* on_turn_end tells the user */
}

struct emd_arena *emd_spool_arena(struct emd_spool *sp)
{
  return sp->gather != NULL ? &sp->gather->arena : &sp->spare;
}

/* A new op in the gathered group, or NULL (ENOMEM). */
static struct op *op_add(struct emd_spool *sp, enum op_kind kind)
{
  struct group *g = sp->gather;
  struct op *op;

  if (g->nops == g->cap) {
    size_t cap = g->cap ? 2 * g->cap : 64;

    op = realloc(g->ops, cap * sizeof(*op));
    if (op == NULL)
      return NULL;
    g->ops = op;
    g->cap = cap;
  }
  if (g->nops == 0)
    g->first_ns = uv_hrtime();
  op = &g->ops[g->nops++];
  op->kind = kind;
  g->eager += kind != OP_DELETE;
  uv_idle_start(&sp->idle, on_idle);
  return op;
}

int emd_spool_append(struct emd_spool *sp, const emd_event *ev,
                     emd_spool_cb cb, void *data)
{
  const emd_tevent *te;
  struct emd_pack_splice splice;
  const uint8_t *p;
  uint8_t *copy;
  struct op *op;
  size_t n, idlen;
  int rc;

  if (sp->closing)
    return EMD_ESHUTDOWN;
  if (ev == NULL || ev->event == NULL || cb == NULL)
    return EMD_EINVALID;
  te = ev->event;
  /* Packed here, where the event was just made and is in this core's
   * cache (the writer, on another core, would first fetch every part of
   * it: half the time its packing took), with the id next to it; the
   * writer puts in only the ordinal and index it settles. */
  rc = emd_pack_event_open(ev, &sp->lpack, &p, &n, &splice);
  if (rc != 0)
    return rc == 1 ? EMD_EINVALID : -ENOMEM;
  idlen = te->id != NULL ? strnlen(te->id, KEY_MAX + 1) : 0;
  copy = emd_arena_alloc(&sp->gather->arena, n + idlen);
  if (copy == NULL)
    return -ENOMEM;
  memcpy(copy, p, n);
  if (idlen > 0)
    memcpy(copy + n, te->id, idlen);
  op = op_add(sp, OP_APPEND);
  if (op == NULL)
    return -ENOMEM;
  op->u.app.cb = cb;
  op->u.app.data = data;
  op->u.app.ordinal0 = te->ordinal;
  op->u.app.index0 = ev->index;
  op->u.app.packed = copy;
  op->u.app.packed_len = n;
  op->u.app.splice = splice;
  op->u.app.id = (const char *)copy + n;
  op->u.app.idlen = idlen;
  op->u.app.h = 0;
  op->u.app.timer_len = 0;
  /* the hash too (the seed is the id table's, fixed from open), and the
   * timer: the writer reads nothing of ev */
  if (idlen > 0 && idlen <= KEY_MAX && te->timer.len <= EMD_TIMER_MAX) {
    op->u.app.h = emd_idtab_hash_seeded(sp->ids_seed, te->id, idlen);
    op->u.app.timer_len = (uint8_t)te->timer.len;
    if (te->timer.len > 0)
      memcpy(op->u.app.timer, te->timer.data, te->timer.len);
  }
  return 0;
}

void emd_spool_set_changed_cb(struct emd_spool *sp, emd_spool_changed_cb cb,
                              void *data)
{
  sp->changed_cb = cb;
  sp->changed_data = data;
}

static int queue_seqs(struct emd_spool *sp, enum op_kind kind,
                      const uint64_t *seqs, size_t n)
{
  uint64_t *copy;
  struct op *op;

  if (sp->closing)
    return EMD_ESHUTDOWN;
  if (n == 0)
    return 0;
  if (n > SIZE_MAX / sizeof(*seqs))
    return -ENOMEM;
  copy = emd_arena_alloc(&sp->gather->arena, n * sizeof(*seqs));
  if (copy == NULL)
    return -ENOMEM;
  memcpy(copy, seqs, n * sizeof(*seqs));
  op = op_add(sp, kind);
  if (op == NULL)
    return -ENOMEM;
  op->u.seqs.seqs = copy;
  op->u.seqs.n = n;
  return 0;
}

int emd_spool_delete(struct emd_spool *sp, const uint64_t *seqs, size_t n)
{
  return queue_seqs(sp, OP_DELETE, seqs, n);
}

int emd_spool_attempted(struct emd_spool *sp, const uint64_t *seqs, size_t n)
{
  return queue_seqs(sp, OP_ATTEMPTED, seqs, n);
}

int emd_spool_dead(struct emd_spool *sp, uint64_t seq, const char *reason,
                   unsigned status, const void *excerpt, size_t excerpt_len)
{
  struct emd_arena *a;
  size_t rlen = reason ? strlen(reason) : 0;
  char *r;
  uint8_t *ex = NULL;
  struct op *op;

  if (sp->closing)
    return EMD_ESHUTDOWN;
  a = &sp->gather->arena;
  if (excerpt_len > EXCERPT_MAX)
    excerpt_len = EXCERPT_MAX;
  if (excerpt == NULL)
    excerpt_len = 0;
  r = emd_arena_strndup(a, reason ? reason : "", rlen);
  if (excerpt_len > 0)
    ex = emd_arena_alloc(a, excerpt_len);
  if (r == NULL || (excerpt_len > 0 && ex == NULL))
    return -ENOMEM;
  if (excerpt_len > 0)
    memcpy(ex, excerpt, excerpt_len);
  op = op_add(sp, OP_DEAD);
  if (op == NULL)
    return -ENOMEM;
  op->u.dead.seq = seq;
  op->u.dead.reason = r;
  op->u.dead.reason_len = rlen;
  op->u.dead.status = status;
  op->u.dead.excerpt = ex;
  op->u.dead.excerpt_len = excerpt_len;
  return 0;
}

static int queue_count(struct emd_spool *sp, enum op_kind kind, uint64_t seq,
                       emd_spool_count_cb cb, void *data)
{
  struct op *op;

  if (sp->closing)
    return EMD_ESHUTDOWN;
  op = op_add(sp, kind);
  if (op == NULL)
    return -ENOMEM;
  op->u.count.seq = seq;
  op->u.count.cb = cb;
  op->u.count.data = data;
  op->u.count.rc = 0;
  op->u.count.n = 0;
  return 0;
}

int emd_spool_dead_retry(struct emd_spool *sp, uint64_t seq,
                         emd_spool_count_cb cb, void *data)
{
  return queue_count(sp, OP_RETRY, seq, cb, data);
}

int emd_spool_dead_purge(struct emd_spool *sp, emd_spool_count_cb cb,
                         void *data)
{
  return queue_count(sp, OP_PURGE, 0, cb, data);
}

void emd_spool_stats(const struct emd_spool *sp, struct emd_spool_stats *st)
{
  *st = sp->st;
}

const uint8_t *emd_spool_instance_id(const struct emd_spool *sp)
{
  return sp->instance;
}

/* ---- reads on the loop thread ------------------------------------------ */

/* Positions the loop's reader on dbi at key (or the first row if key is
 * NULL). The reader transaction is reset, not freed, between reads: the
 * renewal costs no allocation. */
static int reader_begin(struct emd_spool *sp, MDB_dbi dbi)
{
  int rc;

  if (sp->closing)
    return EMD_ESHUTDOWN;
  if (sp->reading)
    return -EBUSY;                 /* a read from inside a read callback */
  if (sp->rtxn == NULL)
    rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &sp->rtxn);
  else
    rc = mdb_txn_renew(sp->rtxn);
  if (rc != 0)
    return err_from_mdb(rc);
  if (sp->rcur != NULL)
    mdb_cursor_close(sp->rcur);
  sp->rcur = NULL;
  rc = mdb_cursor_open(sp->rtxn, dbi, &sp->rcur);
  if (rc != 0) {
    mdb_txn_reset(sp->rtxn);
    return err_from_mdb(rc);
  }
  sp->reading = true;
  return 0;
}

static void reader_end(struct emd_spool *sp)
{
  mdb_cursor_close(sp->rcur);
  sp->rcur = NULL;
  mdb_txn_reset(sp->rtxn);
  sp->reading = false;
}

int emd_spool_read(struct emd_spool *sp, uint64_t after, size_t max_events,
                   size_t max_bytes, emd_spool_read_fn fn, void *data)
{
  struct emd_spool_entry e;
  struct chunk_it it;
  const uint8_t *rec;
  struct rec r;
  MDB_val k, v;
  size_t n = 0, bytes = 0, len;
  bool stop = false;
  int rc, got = 0;

  if (max_events == 0 || after == UINT64_MAX)
    return sp->closing ? EMD_ESHUTDOWN : 0;
  rc = reader_begin(sp, sp->db_pending);
  if (rc != 0)
    return rc;
  rc = chunk_from(sp->rcur, after + 1, &k, &v);
  while (rc == 0 && !stop) {
    chunk_begin(&it, &k, &v);
    while (!stop && (got = chunk_next(&it, &e.seq, &rec, &len)) == 1) {
      if (e.seq <= after)
        continue;
      if (rec_parse(rec, len, &r) != 0) {
        emd_log_error("spool", "pending record %llu is garbled; skipped (it "
                      "goes to the dead letters at max_age)",
                      (unsigned long long)e.seq);
        continue;
      }
      if (n > 0 && bytes + r.event_len > max_bytes) {
        stop = true;
        break;
      }
      e.event = r.event;
      e.event_len = r.event_len;
      e.accepted_ms = r.accepted_ms;
      e.attempts = r.attempts;
      if (!entry_id_noted(rec, len, it.idoff, &e.id, &e.id_len) ||
          e.id < r.event || e.id + e.id_len > r.event + r.event_len) {
        e.id = NULL;
        e.id_len = 0;
      }
      n++;
      bytes += r.event_len;
      stop = fn(data, &e) != 0 || n == max_events;
    }
    if (got < 0)
      emd_log_error("spool", "pending chunk %llu is garbled past seq %llu; "
                    "the rest of it is skipped",
                    (unsigned long long)it.key, (unsigned long long)it.last);
    if (!stop)
      rc = mdb_cursor_get(sp->rcur, &k, &v, MDB_NEXT);
  }
  reader_end(sp);
  return rc == 0 || rc == MDB_NOTFOUND ? (int)n : err_from_mdb(rc);
}

static void item_from_rec(struct emd_spool_item *it, const struct rec *r)
{
  const uint8_t *id;

  it->event = r->event;
  it->event_len = r->event_len;
  it->accepted_ms = r->accepted_ms;
  it->attempts = r->attempts;
  if (event_id(r->event, r->event_len, &id, &it->id_len) == 0)
    it->id = (const char *)id;
}

int emd_spool_list_pending(struct emd_spool *sp, size_t limit,
                           emd_spool_list_fn fn, void *data)
{
  struct emd_spool_item it;
  struct chunk_it ci;
  const uint8_t *rec;
  size_t len, n = 0;
  struct rec r;
  MDB_val k, v;
  bool stop = false;
  int rc;

  if (limit == 0)
    return sp->closing ? EMD_ESHUTDOWN : 0;
  rc = reader_begin(sp, sp->db_pending);
  if (rc != 0)
    return rc;
  rc = mdb_cursor_get(sp->rcur, &k, &v, MDB_FIRST);
  while (rc == 0 && !stop) {
    chunk_begin(&ci, &k, &v);
    memset(&it, 0, sizeof(it));
    while (!stop && chunk_next(&ci, &it.seq, &rec, &len) == 1) {
      if (rec_parse(rec, len, &r) != 0)
        continue;
      item_from_rec(&it, &r);
      n++;
      stop = fn(data, &it) != 0 || n == limit;
      memset(&it, 0, sizeof(it));
    }
    if (!stop)
      rc = mdb_cursor_get(sp->rcur, &k, &v, MDB_NEXT);
  }
  reader_end(sp);
  return rc == 0 || rc == MDB_NOTFOUND ? (int)n : err_from_mdb(rc);
}

int emd_spool_list_dead(struct emd_spool *sp, size_t limit,
                        emd_spool_list_fn fn, void *data)
{
  struct emd_spool_item it;
  struct deadrec d;
  struct rec r;
  MDB_val k, v;
  size_t n = 0;
  int rc;

  if (limit == 0)
    return sp->closing ? EMD_ESHUTDOWN : 0;
  rc = reader_begin(sp, sp->db_dead);
  if (rc != 0)
    return rc;
  for (rc = mdb_cursor_get(sp->rcur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(sp->rcur, &k, &v, MDB_NEXT)) {
    memset(&it, 0, sizeof(it));
    it.seq = k.mv_size == 8 ? get_be64(k.mv_data) : 0;
    if (dead_parse(v.mv_data, v.mv_size, &d) != 0 ||
        rec_parse(d.rec, d.rec_len, &r) != 0)
      continue;
    it.reason = d.reason != NULL ? (const char *)d.reason : "";
    it.reason_len = d.reason_len;
    it.status = d.status;
    it.excerpt = d.excerpt;
    it.excerpt_len = d.excerpt_len;
    it.time_ms = d.time_ms;
    item_from_rec(&it, &r);
    n++;
    if (fn(data, &it) != 0 || n == limit)
      break;
  }
  reader_end(sp);
  return rc == 0 || rc == MDB_NOTFOUND ? (int)n : err_from_mdb(rc);
}
