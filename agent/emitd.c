/* emitd.c: the daemon. Arguments, configuration, signals, the loop and an
 * orderly teardown; all behaviour lives in lib/. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "emd_config.h"
#include "emd_control.h"
#include "emd_enrich.h"
#include "emd_err.h"
#include "emd_forward.h"
#include "emd_ingest.h"
#include "emd_log.h"
#include "emd_notify.h"
#include "emd_spool.h"
#include "emitd.h"

extern char **environ;

static void usage(FILE *f)
{
  fprintf(f,
    "Usage: emitd [OPTIONS]\n"
    "\n"
    "A local batching agent for telemetry events: programs send events over a\n"
    "Unix socket; emitd validates and enriches them, makes them durable in a\n"
    "spool, acknowledges them and forwards them upstream.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   configuration file (default " EMD_CONFIG_DEFAULT_PATH
    ";\n"
    "                      without it, built-in defaults and EMITD_* variables)\n"
    "      --check-config  check the configuration (file and environment),\n"
    "                      print the effective settings and exit: 0 if valid\n"
    "  -V, --version       print the version and exit\n"
    "  -h, --help          print this help and exit\n"
    "\n"
    "Every setting can be overridden as EMITD_<SECTION>_<KEY>, for example\n"
    "EMITD_UPSTREAM_ENDPOINT=http://127.0.0.1:8080. Signals: SIGTERM/SIGINT\n"
    "drain and stop; SIGHUP reloads the configuration and the API key file.\n"
    "See agent.conf.example for every key.\n");
}

static void close_walk(uv_handle_t *h, void *arg)
{
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

uint64_t emitd_now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Last step of shutdown: every module closes; the loop then runs dry. */
static void teardown(struct emitd *d)
{
  struct emd_spool_stats st;

  if (d->torn_down)
    return;
  d->torn_down = true;
  emd_spool_stats(d->spool, &st);
  emitd_control_stop(d);
  emd_control_close(d->control);
  d->control = NULL;
  emd_ingest_close(d->ingest);
  d->ingest = NULL;
  emd_forward_close(d->forward);   /* requests in flight: events stay */
  d->forward = NULL;
  emd_spool_close(d->spool);
  d->spool = NULL;
  emd_notify_close(d->notify);
  d->notify = NULL;
  uv_close((uv_handle_t *)&d->status_timer, NULL);
  uv_close((uv_handle_t *)&d->sigterm, NULL);
  uv_close((uv_handle_t *)&d->sigint, NULL);
  uv_close((uv_handle_t *)&d->sighup, NULL);
  uv_close((uv_handle_t *)&d->grace, NULL);
  uv_close((uv_handle_t *)&d->drain, NULL);
  emd_log_info("emitd", "stopped; %llu events pending in the spool%s",
               (unsigned long long)st.pending,
               st.pending > 0 ? " (sent after the next start)" : "");
}

static void on_grace(uv_timer_t *t)
{
  struct emitd *d = t->data;

  emd_log_warn("emitd", "shutdown grace period over; stopping now");
  teardown(d);
}

/* While stopping: done once every reply is written and the spool is
 * empty (or the grace period ends first). */
static void on_drain(uv_timer_t *t)
{
  struct emitd *d = t->data;
  struct emd_spool_stats st;

  emd_spool_stats(d->spool, &st);
  if (d->ingest_idle && st.pending == 0)
    teardown(d);
}

static void on_ingest_idle(void *data)
{
  struct emitd *d = data;

  d->ingest_idle = true;
  on_drain(&d->drain);
}

static void begin_shutdown(struct emitd *d, const char *why)
{
  struct emd_spool_stats st;

  if (d->stopping)
    return;
  d->stopping = true;
  emd_notify_stopping(d->notify);
  emd_spool_stats(d->spool, &st);
  emd_log_info("emitd", "%s: stopping; forwarding %llu pending events for "
               "up to %llu ms", why, (unsigned long long)st.pending,
               (unsigned long long)d->cfg.agent.shutdown_grace_ms);
  uv_timer_start(&d->grace, on_grace, d->cfg.agent.shutdown_grace_ms, 0);
  uv_timer_start(&d->drain, on_drain, 20, 20);
  emd_forward_flush(d->forward, true);   /* no lingering now */
  emd_ingest_stop(d->ingest, on_ingest_idle, d);
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
  begin_shutdown(s->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

int emitd_reload(struct emitd *d, char *err, size_t errlen)
{
  struct emd_config next;
  int rc;

  rc = emd_config_load(&next, d->config_path, environ, err, errlen);
  if (rc != 0) {
    emd_log_error("emitd", "reload failed, keeping the current "
                  "configuration: %s", err);
    return rc;
  }
  /* Settings that cannot change while running are kept, and said so. */
#define KEEP(field, name)                                                   \
  if ((next.field == NULL) != (d->cfg.field == NULL) ||                     \
      (next.field != NULL && strcmp(next.field, d->cfg.field) != 0)) {      \
    emd_log_warn("emitd", "reload: %s cannot change while running; "       \
                 "keeping %s (restart to apply)", name, d->cfg.field);      \
    free(next.field);                                                       \
    next.field = strdup(d->cfg.field);                                      \
  }
  KEEP(spool.dir, "spool.dir")
  KEEP(agent.socket, "agent.socket")
  KEEP(agent.control_socket, "agent.control_socket")
#undef KEEP
  emd_config_free(&d->old_cfg);
  d->old_cfg = d->cfg;
  d->cfg = next;
  emd_log_setup(d->cfg.agent.log_level, d->cfg.agent.log_format,
                emd_log_journal_detect(), 2);
  emd_spool_reconfigure(d->spool, &d->cfg);
  emd_ingest_reconfigure(d->ingest, &d->cfg);
  if (emd_forward_reconfigure(d->forward, &d->cfg) != 0)
    emd_log_warn("emitd", "reload: the API key file could not be read; "
                 "keeping the key in use");
  emd_log_info("emitd", "configuration reloaded from %s (log_level %s, "
               "batch_max_events %llu)",
               d->cfg.path ? d->cfg.path : "the environment",
               emd_log_level_name(d->cfg.agent.log_level),
               (unsigned long long)d->cfg.upstream.batch_max_events);
  return 0;
}

static void on_sighup(uv_signal_t *s, int signum)
{
  char err[512];

  (void)signum;
  emitd_reload(s->data, err, sizeof(err));
}

static void on_spool_changed(void *data)
{
  struct emitd *d = data;

  if (d->ingest != NULL)
    emd_ingest_spool_changed(d->ingest);
  if (d->forward != NULL)
    emd_forward_kick(d->forward);
}

static void status_text(struct emitd *d, char *buf, size_t len)
{
  struct emd_spool_stats st;
  struct emd_forward_stats fs;

  emd_spool_stats(d->spool, &st);
  emd_forward_stats(d->forward, &fs);
  snprintf(buf, len, "pending %llu, upstream %s",
           (unsigned long long)st.pending, emd_forward_state_name(fs.state));
}

static void on_status_timer(uv_timer_t *t)
{
  struct emitd *d = t->data;
  char buf[128];

  status_text(d, buf, sizeof(buf));
  emd_notify_status(d->notify, buf);
}

/* ingest.max_clients connections need as many descriptors, and the usual
 * soft limit is 1024: take what the hard limit allows. */
static void raise_fd_limit(const struct emd_config *cfg)
{
  struct rlimit rl;
  rlim_t want = (rlim_t)cfg->ingest.max_clients + 256;

  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
    return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want
                ? want : rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
    emd_log_warn("emitd", "open files limited to %llu: fewer than "
                 "ingest.max_clients (%llu) clients may connect",
                 (unsigned long long)rl.rlim_cur,
                 (unsigned long long)cfg->ingest.max_clients);
}

static int check_config(const char *path)
{
  struct emd_config cfg;
  char err[512];

  if (emd_config_load(&cfg, path, environ, err, sizeof(err)) != 0) {
    fprintf(stderr, "emitd: %s\n", err);
    return 1;
  }
  emd_config_dump(&cfg, stdout);
  fprintf(stderr, "emitd: configuration OK (%s)\n",
          cfg.path ? cfg.path : "built-in defaults and environment");
  emd_config_free(&cfg);
  return 0;
}

static int run(struct emitd *d)
{
  char err[512];
  int rc;

  err[0] = '\0';
  rc = emd_spool_open(&d->loop, &d->cfg, &d->spool, err, sizeof(err));
  if (rc != 0) {
    emd_log_error("emitd", "cannot open the spool in %s: %s", d->cfg.spool.dir,
                  err[0] ? err : emd_strerror(rc));
    return 1;
  }
  rc = emd_enrich_open(&d->cfg, environ, emd_spool_instance_id(d->spool),
                       &d->enrich);
  if (rc != 0) {
    emd_log_error("emitd", "cannot set up enrichment: %s", emd_strerror(rc));
    goto fail;
  }
  /* The control socket first: once the event socket accepts, so does it
   * (nothing is served before the loop runs). */
  rc = emd_control_open(&d->loop, d->cfg.agent.control_socket,
                        &emitd_control_ops, d, &d->control, err,
                        sizeof(err));
  if (rc != 0) {
    emd_log_error("emitd", "%s", err[0] ? err : emd_strerror(rc));
    goto fail;
  }
  rc = emd_ingest_open(&d->loop, &d->cfg, d->spool, d->enrich, d->listen_fd,
                       &d->ingest, err, sizeof(err));
  if (rc != 0) {
    emd_log_error("emitd", "%s", err[0] ? err : emd_strerror(rc));
    goto fail;
  }
  rc = emd_forward_open(&d->loop, &d->cfg, d->spool, &d->forward);
  if (rc != 0) {
    emd_log_error("emitd", "cannot start forwarding to %s: %s",
                  d->cfg.upstream.endpoint, emd_strerror(rc));
    goto fail;
  }
  emd_spool_set_changed_cb(d->spool, on_spool_changed, d);
  d->start_ms = emitd_now_ms();

  uv_signal_init(&d->loop, &d->sigterm);
  uv_signal_init(&d->loop, &d->sigint);
  uv_signal_init(&d->loop, &d->sighup);
  d->sigterm.data = d->sigint.data = d->sighup.data = d;
  uv_signal_start(&d->sigterm, on_stop_signal, SIGTERM);
  uv_signal_start(&d->sigint, on_stop_signal, SIGINT);
  uv_signal_start(&d->sighup, on_sighup, SIGHUP);
  uv_timer_init(&d->loop, &d->grace);
  d->grace.data = d;
  uv_timer_init(&d->loop, &d->drain);
  d->drain.data = d;
  uv_timer_init(&d->loop, &d->status_timer);
  d->status_timer.data = d;
  uv_timer_start(&d->status_timer, on_status_timer, 1000, 1000);
  uv_unref((uv_handle_t *)&d->status_timer);

  struct emd_spool_stats st;
  emd_spool_stats(d->spool, &st);
  emd_log_info("emitd", "emitd %s listening on %s%s; spool %s (%llu "
               "pending)", EMD_VERSION, d->cfg.agent.socket,
               d->listen_fd >= 0 ? " (from systemd)" : "", d->cfg.spool.dir,
               (unsigned long long)st.pending);
  char buf[128];
  status_text(d, buf, sizeof(buf));
  emd_notify_ready(d->notify, buf);
  emd_forward_kick(d->forward);       /* a backlog from the last run */
  uv_run(&d->loop, UV_RUN_DEFAULT);
  emd_enrich_close(d->enrich);
  return 0;

fail:
  emd_control_close(d->control);
  emd_forward_close(d->forward);
  emd_ingest_close(d->ingest);
  emd_spool_close(d->spool);
  uv_run(&d->loop, UV_RUN_DEFAULT);
  emd_enrich_close(d->enrich);
  return 1;
}

int main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "config", required_argument, NULL, 'c' },
    { "check-config", no_argument, NULL, 'C' },
    { "version", no_argument, NULL, 'V' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct emitd d;
  bool check = false;
  char err[512];
  int c, rc;

  memset(&d, 0, sizeof(d));
  while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
    switch (c) {
    case 'c': d.config_path = optarg; break;
    case 'C': check = true; break;
    case 'V': printf("emitd %s\n", EMD_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "emitd: unexpected argument \"%s\"\n", argv[optind]);
    usage(stderr);
    return 2;
  }
  if (check)
    return check_config(d.config_path);
  /* Before any thread starts: it unsets the LISTEN_* variables. */
  d.listen_fd = emd_notify_listen_fd(NULL);
  if (d.listen_fd < -1)
    return 1;
  if (emd_config_load(&d.cfg, d.config_path, environ, err, sizeof(err)) != 0) {
    fprintf(stderr, "emitd: %s\n", err);
    return 1;
  }
  emd_log_setup(d.cfg.agent.log_level, d.cfg.agent.log_format,
                emd_log_journal_detect(), 2);
  signal(SIGPIPE, SIG_IGN);
  raise_fd_limit(&d.cfg);
  uv_loop_init(&d.loop);
  if (emd_notify_open(&d.loop, &d.notify) != 0) {
    fprintf(stderr, "emitd: out of memory\n");
    return 1;
  }
  rc = run(&d);
  emd_notify_close(d.notify);     /* NULL when teardown already did */
  uv_walk(&d.loop, close_walk, NULL);
  uv_run(&d.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&d.loop) != 0)
    emd_log_warn("emitd", "loop closed with handles still open");
  emd_config_free(&d.cfg);
  emd_config_free(&d.old_cfg);
  return rc;
}
