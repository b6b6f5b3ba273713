/* emd_idtab.h: the id table, which event ids the spool knows, for the
 * duplicate check, without a B-tree insert per event.
 *
 * An open-addressing hash table (linear probing) in a file of its own,
 * mapped shared: its pages are page cache, not the process's anonymous
 * memory, and with random ids an insert dirties one page of memory, not a
 * B-tree page that a commit must copy and write. Each slot holds a 64-bit
 * seeded hash of an id and the seq of the event that carries it.
 *
 * The table is an index, never the record: a slot whose hash matches is
 * a candidate, and the caller looks the id up at that seq in the spool
 * before calling anything a duplicate. So a stale or lost slot can cost a
 * missed duplicate, never an event.
 *
 * Changes since emd_idtab_begin are journaled; emd_idtab_rollback undoes
 * them (a transaction that did not commit), emd_idtab_commit forgets the
 * journal. The file is trusted at open only if it was closed cleanly with
 * the same stamp (the spool's instance and last transaction); otherwise
 * it is emptied and the caller rebuilds it.
 *
 * One thread uses a table at a time. */
#ifndef EMD_IDTAB_H
#define EMD_IDTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct emd_idtab;

/* What a cleanly closed table must match to be trusted again. */
struct emd_idtab_stamp {
  uint8_t instance[16];
  uint64_t txnid;
};

/* Opens or creates the table at path. *trusted says whether its content
 * was kept (closed cleanly with an equal stamp); if not, it is empty.
 * Returns 0 or an errno value with err set. */
int emd_idtab_open(const char *path, const struct emd_idtab_stamp *stamp,
                   struct emd_idtab **out, bool *trusted, char *err,
                   size_t errlen);

/* Writes the table out and, with stamp, marks it clean; frees it. With
 * stamp NULL it stays marked unclean (the next open empties it). Returns
 * 0 or an errno value (the table is freed either way). */
int emd_idtab_close(struct emd_idtab *t, const struct emd_idtab_stamp *stamp);

/* Empties the table (a new seed too); the journal is dropped. */
int emd_idtab_clear(struct emd_idtab *t);

/* The table's hash of an id; never 0. */
uint64_t emd_idtab_hash(const struct emd_idtab *t, const void *id,
                        size_t len);

/* The table's seed, fixed from open (or emd_idtab_clear) on, and the
 * hash with a given seed: emd_idtab_hash(t, ...) is
 * emd_idtab_hash_seeded(emd_idtab_seed(t), ...), for a thread that hashes
 * ids before handing them to the table's own. */
uint64_t emd_idtab_seed(const struct emd_idtab *t);
uint64_t emd_idtab_hash_seeded(uint64_t seed, const void *id, size_t len);

/* Walks the seqs stored under hash h: start with *pos = 0, call until it
 * returns false. Removing the slot just returned is allowed only through
 * emd_idtab_remove, after which the walk must start again. */
bool emd_idtab_next(const struct emd_idtab *t, uint64_t h, size_t *pos,
                    uint64_t *seq);

/* Starts loading the slot where a walk for h begins (a hint only). */
void emd_idtab_prefetch(const struct emd_idtab *t, uint64_t h);

/* Adds (h, seq); nothing if it is there already. Past half full the
 * table starts growing into a file twice the size, a few slots per insert
 * (see emd_idtab_step). h must not be 0, seq not UINT64_MAX. Returns 0 or
 * an errno value. */
int emd_idtab_insert(struct emd_idtab *t, uint64_t h, uint64_t seq);

/* The same for a seq the table has never held (a new event's), without
 * the walk that looks for (h, seq) first. */
int emd_idtab_insert_new(struct emd_idtab *t, uint64_t h, uint64_t seq);

/* Moves up to budget slots of a growth in progress; returns whether any
 * are left. For idle time; inserts move some too, and a clean close all. */
bool emd_idtab_step(struct emd_idtab *t, size_t budget);

/* Removes (h, seq); returns whether it was there. */
bool emd_idtab_remove(struct emd_idtab *t, uint64_t h, uint64_t seq);

size_t emd_idtab_count(const struct emd_idtab *t);
size_t emd_idtab_capacity(const struct emd_idtab *t);

/* The journal: begin starts one (dropping any), commit keeps the changes,
 * rollback undoes them. Returns 0 or an errno value. */
void emd_idtab_begin(struct emd_idtab *t);
void emd_idtab_commit(struct emd_idtab *t);
int emd_idtab_rollback(struct emd_idtab *t);

#endif
