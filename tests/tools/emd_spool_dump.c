/* emd_spool_dump.c: prints the pending events of a spool as NDJSON, one
 * {"seq":…,"attempts":…,"accepted_ms":…,"event":{…}} per line, then a
 * {"stats":{…}} line. For tests: run it while emitd is stopped. Uses only
 * the spool's public API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "emd_codec.h"
#include "emd_config.h"
#include "emd_err.h"
#include "emd_spool.h"

struct dump {
  uint64_t last;
  size_t n;
  struct emd_codec_buf buf;
};

static int print_one(void *data, const struct emd_spool_entry *e)
{
  struct dump *d = data;
  emd_event *ev;

  d->last = e->seq;
  d->n++;
  ev = buildless__service__v1__event__unpack(NULL, e->event_len, e->event);
  if (ev == NULL) {
    printf("{\"seq\":%llu,\"error\":\"cannot unpack\"}\n",
           (unsigned long long)e->seq);
    return 0;
  }
  d->buf.len = 0;
  if (emd_codec_event_to_json(ev, &d->buf) == 0)
    printf("{\"seq\":%llu,\"attempts\":%u,\"accepted_ms\":%llu,\"event\":"
           "%.*s}\n", (unsigned long long)e->seq, e->attempts,
           (unsigned long long)e->accepted_ms, (int)d->buf.len,
           d->buf.data);
  buildless__service__v1__event__free_unpacked(ev, NULL);
  return 0;
}

int main(int argc, char **argv)
{
  struct emd_config cfg;
  struct emd_spool *sp;
  struct emd_spool_stats st;
  struct dump d = { 0 };
  char err[512] = "";
  uv_loop_t loop;
  int rc;

  if (argc != 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: emd-spool-dump SPOOL_DIR\n");
    return 2;
  }
  emd_config_defaults(&cfg);
  free(cfg.spool.dir);
  cfg.spool.dir = strdup(argv[1]);
  uv_loop_init(&loop);
  rc = emd_spool_open(&loop, &cfg, &sp, err, sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "emd-spool-dump: %s\n", err[0] ? err : emd_strerror(rc));
    return 1;
  }
  do {
    d.n = 0;
    rc = emd_spool_read(sp, d.last, 1000, 64 << 20, print_one, &d);
  } while (rc > 0);
  emd_spool_stats(sp, &st);
  printf("{\"stats\":{\"pending\":%llu,\"pending_bytes\":%llu,\"dead\":%llu,"
         "\"next_seq\":%llu,\"dropped\":%llu,\"expired\":%llu}}\n",
         (unsigned long long)st.pending, (unsigned long long)st.pending_bytes,
         (unsigned long long)st.dead, (unsigned long long)st.next_seq,
         (unsigned long long)st.dropped, (unsigned long long)st.expired);
  emd_spool_close(sp);
  uv_run(&loop, UV_RUN_DEFAULT);
  free(d.buf.data);
  emd_config_free(&cfg);
  return uv_loop_close(&loop) == 0 && rc >= 0 ? 0 : 1;
}
