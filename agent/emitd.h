/* emitd.h: the daemon's own state, shared by the files of agent/ (the
 * loop and signals in emitd.c, the control commands in emitd_control.c).
 * Loop thread only. */
#ifndef EMITD_H
#define EMITD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "emd_config.h"
#include "emd_control.h"

struct emd_spool;
struct emd_enrich;
struct emd_ingest;
struct emd_forward;
struct emd_notify;
struct emitd_flush;

/* Everything the daemon owns: the one place with mutable state outside
 * lib/ modules. */
struct emitd {
  uv_loop_t loop;
  struct emd_config cfg;           /* in force */
  struct emd_config old_cfg;       /* the one before the last reload */
  const char *config_path;         /* --config, or NULL for the default */
  struct emd_spool *spool;
  struct emd_enrich *enrich;
  struct emd_ingest *ingest;
  struct emd_forward *forward;
  struct emd_control *control;
  struct emd_notify *notify;       /* systemd; a no-op outside it */
  int listen_fd;                   /* passed by systemd, or -1 */
  uint64_t start_ms;               /* wall clock at start, for uptime */
  struct emitd_flush *flushes;     /* `flush` commands waiting */
  uv_timer_t status_timer;         /* STATUS= for systemd, every second */
  uv_timer_t grace;                /* bounds the shutdown */
  uv_timer_t drain;                /* while stopping: is everything sent? */
  uv_signal_t sigterm, sigint, sighup;
  bool stopping;
  bool ingest_idle;                /* every reply written, while stopping */
  bool torn_down;
};

/* The control commands (emitd_control.c); data is the struct emitd. */
extern const struct emd_control_ops emitd_control_ops;

/* Answers every waiting `flush` with shutting_down (emitd_control.c). */
void emitd_control_stop(struct emitd *d);

/* Re-reads the configuration file and the key file and applies what may
 * change live; on failure keeps the old configuration and err says why. */
int emitd_reload(struct emitd *d, char *err, size_t errlen);

/* Wall clock, ms since the epoch. */
uint64_t emitd_now_ms(void);

#endif
