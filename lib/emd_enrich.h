/* emd_enrich.h: fills what a client left empty (SPEC 2.1): the id (a
 * ULID), timing.occurred, detail.client.agent and .os, the [enrich] values,
 * Event.scope, and the timer. Ordinals are the spool's job (they are
 * counted in its transaction). Loop thread only. */
#ifndef EMD_ENRICH_H
#define EMD_ENRICH_H

#include <stdbool.h>
#include <stdint.h>

#include "emd_arena.h"
#include "emd_config.h"
#include "emd_event.h"

struct emd_enrich;

/* Per-connection state the enrichment needs: the connection's own timer,
 * made at its first event that needs one. Zero-initialise it. */
struct emd_enrich_conn {
  uint8_t timer[EMD_TIMER_LEN];
  bool has_timer;
};

/* Builds the enrichment from cfg (borrowed until close), the environment
 * envp (for the CI build ID: GITHUB_RUN_ID, CI_PIPELINE_ID,
 * BUILDKITE_BUILD_ID, BUILD_TAG, in that order, when enrich.scope is
 * unset), uname(2), and the spool's 16-byte instance ID (copied). On
 * success *out is the caller's. */
int emd_enrich_open(const struct emd_config *cfg, char *const *envp,
                    const uint8_t instance_id[16], struct emd_enrich **out);
void emd_enrich_close(struct emd_enrich *en);

/* Fills ev in place; new pieces come from arena (or are shared, read-only
 * tables of en: callers must not modify them). now_ms is the wall clock in
 * ms. Returns 0 or -ENOMEM. */
int emd_enrich_apply(struct emd_enrich *en, emd_event *ev,
                     struct emd_enrich_conn *conn, struct emd_arena *arena,
                     uint64_t now_ms);

/* The scope emitd fills in, or NULL. */
const char *emd_enrich_scope(const struct emd_enrich *en);

/* Helpers exposed for tests. */
/* Writes a 26-character ULID and a NUL into out; monotonic within en. */
void emd_enrich_ulid(struct emd_enrich *en, uint64_t now_ms, char out[27]);
/* The first 16 bytes of SHA-256(instance ID ‖ scope). */
void emd_enrich_scope_timer(const uint8_t instance_id[16], const char *scope,
                            size_t len, uint8_t out[EMD_TIMER_LEN]);
/* Parses a kernel release ("6.1.0-18-amd64") into major, minor, micro. */
void emd_enrich_parse_release(const char *release, uint32_t v[3]);
/* x86_64, i686 -> X86; arm*, aarch64 -> ARM; else UNKNOWN. */
int emd_enrich_arch(const char *machine);

#endif
