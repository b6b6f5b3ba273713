/* test_control.c: lib/emd_control.c — the command parser, the shapes of
 * replies, and a real control socket on a real loop with a fake table of
 * callbacks: order of replies, a flush that answers later, bad and
 * over-long commands, the socket's mode, clients that leave early, and
 * closing with clients connected. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "emd_control.h"
#include "emd_err.h"
#include "prom_check.h"

#define S(lit) lit, sizeof(lit) - 1

/* ---- the parser ---------------------------------------------------------- */

static struct emd_control_cmd parse_ok(const char *line)
{
  struct emd_control_cmd cmd;
  char err[512] = "";

  if (emd_control_parse(line, strlen(line), &cmd, err, sizeof(err)) != 0)
    fail_msg("\"%s\" was refused: %s", line, err);
  return cmd;
}

/* Parses a line that must be refused; returns the message. */
static const char *parse_bad(const char *line, size_t len)
{
  static char err[512];
  struct emd_control_cmd cmd;

  err[0] = '\0';
  assert_int_equal(emd_control_parse(line, len, &cmd, err, sizeof(err)),
                   EMD_EBADCMD);
  assert_true(strlen(err) > 0);
  assert_null(strchr(err, '\n'));
  return err;
}

static void parser_knows_every_command_and_its_defaults(void **state)
{
  struct emd_control_cmd c;

  assert_int_equal(parse_ok("status").verb, EMD_CTL_STATUS);
  assert_int_equal(parse_ok("metrics").verb, EMD_CTL_METRICS);
  assert_int_equal(parse_ok("reload").verb, EMD_CTL_RELOAD);
  assert_int_equal(parse_ok("help").verb, EMD_CTL_HELP);
  assert_int_equal(parse_ok("dead purge").verb, EMD_CTL_DEAD_PURGE);
  c = parse_ok("flush");
  assert_int_equal(c.verb, EMD_CTL_FLUSH);
  assert_int_equal(c.timeout_ms, 30000);
  c = parse_ok("pending");
  assert_int_equal(c.verb, EMD_CTL_PENDING);
  assert_int_equal(c.limit, EMD_CONTROL_PENDING_DEFAULT);
  c = parse_ok("dead list");
  assert_int_equal(c.verb, EMD_CTL_DEAD_LIST);
  assert_int_equal(c.limit, EMD_CONTROL_DEAD_DEFAULT);
  c = parse_ok("dead retry");
  assert_int_equal(c.verb, EMD_CTL_DEAD_RETRY);
  assert_string_equal(c.target, "all");
}

static void parser_reads_arguments(void **state)
{
  struct emd_control_cmd c;

  assert_int_equal(parse_ok("flush 500ms").timeout_ms, 500);
  assert_int_equal(parse_ok("flush 45s").timeout_ms, 45000);
  assert_int_equal(parse_ok("flush 2m").timeout_ms, 120000);
  assert_int_equal(parse_ok("flush 1h").timeout_ms, 3600000);
  assert_int_equal(parse_ok("flush 10").timeout_ms, 10000);  /* seconds */
  assert_int_equal(parse_ok("flush 0").timeout_ms, 0);
  assert_int_equal(parse_ok("flush 24h").timeout_ms, 86400000);
  assert_int_equal(parse_ok("pending 5").limit, 5);
  assert_int_equal(parse_ok("pending 10000").limit, 10000);
  assert_int_equal(parse_ok("dead list 1").limit, 1);
  c = parse_ok("dead retry 01JD0000000000000000000000");
  assert_string_equal(c.target, "01JD0000000000000000000000");
  assert_string_equal(parse_ok("dead retry 412").target, "412");
  assert_string_equal(parse_ok("dead retry ALL").target, "all");
}

static void parser_ignores_case_blanks_and_carriage_return(void **state)
{
  assert_int_equal(parse_ok("  STATUS \t\r").verb, EMD_CTL_STATUS);
  assert_int_equal(parse_ok("Dead\t  List   7").limit, 7);
  assert_int_equal(parse_ok("flush 3s\r").timeout_ms, 3000);
  /* Not NUL-terminated: only len bytes count. */
  assert_int_equal(emd_control_parse("statusXYZ", 6, &(struct
                   emd_control_cmd){ 0 }, NULL, 0), 0);
}

static void parser_refuses_unknown_commands_with_a_hint(void **state)
{
  const char *m = parse_bad(S("stauts"));

  assert_string_equal(m, "unknown command \"stauts\" (did you mean "
    "\"status\"?); try: status, metrics, flush [TIMEOUT], reload, "
    "dead list [N], dead retry [ID|all], dead purge, pending [N], help");
  m = parse_bad(S("frobnicate now"));
  assert_non_null(strstr(m, "unknown command \"frobnicate\"; try: status"));
  assert_null(strstr(m, "did you mean"));
  m = parse_bad(S("dead lsit"));
  assert_string_equal(m, "dead: unknown subcommand \"lsit\" (did you mean "
                      "\"list\"?); expected list, retry or purge");
  assert_non_null(strstr(parse_bad(S("dead")), "expected list, retry or "
                                                "purge"));
  assert_non_null(strstr(parse_bad(S("   ")), "empty command"));
}

static void parser_refuses_bad_arguments_naming_them(void **state)
{
  assert_string_equal(parse_bad(S("flush 10x")), "flush: bad timeout "
    "\"10x\": expected a duration like 30s or 500ms (ms, s, m, h; at most "
    "24h)");
  parse_bad(S("flush -1s"));
  parse_bad(S("flush 1.5s"));
  parse_bad(S("flush 25h"));
  parse_bad(S("flush 99999999999999999999999s"));
  parse_bad(S("flush s"));
  assert_string_equal(parse_bad(S("flush 1s 2s")), "flush: too many "
                      "arguments; expected flush [TIMEOUT]");
  assert_string_equal(parse_bad(S("pending abc")), "pending: bad count "
                      "\"abc\": expected a number from 1 to 10000");
  parse_bad(S("pending 0"));
  parse_bad(S("pending 10001"));
  parse_bad(S("pending 99999999999999999999999"));
  parse_bad(S("dead list -3"));
  assert_string_equal(parse_bad(S("status now")), "status: takes no "
                      "arguments, got \"now\"");
  parse_bad(S("metrics x"));
  parse_bad(S("dead purge all"));
  parse_bad(S("dead list 1 2"));
  parse_bad(S("dead retry a b"));
  assert_non_null(strstr(parse_bad(S("dead retry ../x")),
                         "bad target \"../x\""));
  parse_bad(S("dead retry "
              "x0000000001000000000100000000010000000001000000000100000000019"
              "999"));
}

static void parser_quotes_bad_bytes_safely(void **state)
{
  const char *m = parse_bad(S("st\"a\x01tus\xff"));

  /* Non-printable bytes are shown as '.'; the quote stays (JSON escapes
   * it later). */
  assert_non_null(strstr(m, "unknown command \"st\"a.tus.\""));
  m = parse_bad("a\0b", 3);
  assert_non_null(strstr(m, "\"a.b\""));
}

static void parser_survives_random_bytes(void **state)
{
  unsigned seed = 99;
  char line[300], err[128];
  struct emd_control_cmd cmd;

  for (int i = 0; i < 20000; i++) {
    size_t n = (size_t)(rand_r(&seed) % sizeof(line));
    int rc;

    for (size_t k = 0; k < n; k++)
      line[k] = (char)(i % 3 == 0 ? "deadlistryfush 0123456789msall\t\r"
                       [rand_r(&seed) % 33] : rand_r(&seed));
    memset(err, 'z', sizeof(err));
    rc = emd_control_parse(line, n, &cmd, err, sizeof(err));
    assert_true(rc == 0 || rc == EMD_EBADCMD);
    if (rc != 0)
      assert_non_null(memchr(err, '\0', sizeof(err)));
  }
}

static void durations_parse_with_units(void **state)
{
  uint64_t ms = 0;

  assert_int_equal(emd_control_parse_duration(S("250ms"), &ms), 0);
  assert_int_equal(ms, 250);
  assert_int_equal(emd_control_parse_duration(S("7"), &ms), 0);
  assert_int_equal(ms, 7000);
  assert_int_equal(emd_control_parse_duration(S(""), &ms), EMD_EBADCMD);
  assert_int_equal(emd_control_parse_duration(S("5d"), &ms), EMD_EBADCMD);
  assert_int_equal(emd_control_parse_duration(S("5 s"), &ms), EMD_EBADCMD);
  assert_int_equal(emd_control_parse_duration(S("18446744073709551615h"),
                                              &ms), EMD_EBADCMD);
}

/* ---- shapes -------------------------------------------------------------- */

static const struct emd_control_count dead_reasons[] = {
  { "rejected", 2 }, { "status", 1 }, { "expired", 0 }, { "attempts", 0 },
};
static const struct emd_control_count rejected_reasons[] = {
  { "bad_json", 1 }, { "too_large", 0 }, { "invalid", 4 },
  { "spool_full", 0 }, { "shutting_down", 0 },
};

static void fill_figures(struct emd_control_figures *f,
                         struct emd_histogram *lat, struct emd_histogram *b)
{
  static const double lat_le[] = { 0.001, 0.01, 0.1 };
  static const double b_le[] = { 1, 10, 100 };

  memset(f, 0, sizeof(*f));
  f->version = "1.2.3";
  f->uptime_s = 3600;
  f->endpoint = "https://rpc.less.build";
  f->state = "backoff";
  f->last_status = 503;
  f->last_reply_age_s = 4;
  f->sent = 1000;
  f->requests_2xx = 10;
  f->requests_5xx = 2;
  f->pending = 12;
  f->pending_bytes = 4096;
  f->oldest_age_s = 65;
  f->dead = 3;
  f->dead_by_reason = dead_reasons;
  f->n_dead_by_reason = 4;
  f->rejected_by_reason = rejected_reasons;
  f->n_rejected_by_reason = 5;
  f->clients = 2;
  f->received = 1020;
  f->accepted = 1012;
  f->duplicates = 3;
  emd_histogram_init(lat, lat_le, 3);
  emd_histogram_observe(lat, 0.002);
  emd_histogram_init(b, b_le, 3);
  emd_histogram_observe_n(b, 50, 2);
  f->ack_latency_s = lat;
  f->batch_events = b;
}

static void status_json_has_the_shape_of_spec_6(void **state)
{
  struct emd_control_figures f;
  struct emd_histogram lat, b;
  struct emd_json j = { 0 };

  fill_figures(&f, &lat, &b);
  emd_control_status_json(&f, &j);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data,
    "{\"ok\":true,\"version\":\"1.2.3\",\"uptime_s\":3600,"
    "\"upstream\":{\"endpoint\":\"https://rpc.less.build\","
    "\"state\":\"backoff\",\"last_status\":503,\"last_reply_age_s\":4,"
    "\"inflight\":0},"
    "\"spool\":{\"pending\":12,\"pending_bytes\":4096,\"oldest_age_s\":65,"
    "\"dead\":3},\"sent\":1000,"
    "\"dead_by_reason\":{\"rejected\":2,\"status\":1,\"expired\":0,"
    "\"attempts\":0},"
    "\"ingest\":{\"clients\":2,\"received\":1020,\"accepted\":1012,"
    "\"duplicates\":3,\"rejected\":5}}");
  emd_json_reset(&j);
  f.ids_rebuilding = true;           /* said only while true */
  emd_control_status_json(&f, &j);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_non_null(strstr(j.t.data, "\"oldest_age_s\":65,\"dead\":3,"
                         "\"ids_rebuilding\":true},"));
  emd_json_reset(&j);
  f.ids_rebuilding = false;
  f.last_reply_age_s = -1;           /* no reply yet */
  emd_control_status_json(&f, &j);
  assert_non_null(strstr(j.t.data, "\"last_reply_age_s\":null"));
  emd_json_free(&j);
}

static void metrics_text_is_valid_prometheus_ending_with_eof(void **state)
{
  struct emd_control_figures f;
  struct emd_histogram lat, b;
  struct emd_text t = { 0 };

  fill_figures(&f, &lat, &b);
  emd_control_metrics_text(&f, &t);
  assert_int_equal(t.err, 0);
  check_exposition(t.data);
  assert_non_null(strstr(t.data, "\nemitd_events_received_total 1020\n"));
  assert_non_null(strstr(t.data, "\nemitd_events_rejected_total{reason="
                                 "\"invalid\"} 4\n"));
  assert_non_null(strstr(t.data, "\nemitd_upstream_state{state=\"backoff\"} "
                                 "1\n"));
  assert_non_null(strstr(t.data, "\nemitd_upstream_state{state=\"ok\"} 0\n"));
  assert_non_null(strstr(t.data, "\nemitd_upstream_requests_total{class="
                                 "\"5xx\"} 2\n"));
  assert_non_null(strstr(t.data, "\nemitd_spool_pending_events 12\n"));
  assert_non_null(strstr(t.data, "\nemitd_dead_letters_total{reason="
                                 "\"rejected\"} 2\n"));
  assert_non_null(strstr(t.data, "\nemitd_ack_latency_seconds_bucket{le="
                                 "\"0.01\"} 1\n"));
  assert_non_null(strstr(t.data, "\nemitd_batch_size_events_count 2\n"));
  assert_non_null(strstr(t.data, "emitd_build_info{version=\"1.2.3\"} 1\n"));
  /* Not kept: left out. */
  assert_null(strstr(t.data, "emitd_batch_size_bytes"));
  emd_text_free(&t);
}

static void list_items_have_the_shapes_of_spec_6(void **state)
{
  struct emd_json j = { 0 };
  struct emd_control_dead_item d = {
    .seq = 9, .id = "01JDABCDEFGH", .id_len = 12, .reason = "status",
    .reason_len = 6, .status = 400, .excerpt = "bad \"x\"\n\xff",
    .excerpt_len = 9, .time_ms = 1700000000123,
  };
  struct emd_control_pending_item p = {
    .seq = 10, .id = "01JDXYZXYZXYZQ", .id_len = 14, .collection = NULL,
    .accepted_ms = 1700000000000, .attempts = 2,
  };

  emd_control_list_begin(&j, "dead");
  emd_control_list_dead(&j, &d);
  emd_control_list_end(&j, 5);
  assert_int_equal(emd_json_finish(&j), 0);
  assert_string_equal(j.t.data,
    "{\"ok\":true,\"dead\":[{\"id\":\"01JDABCDEFGH\",\"seq\":9,"
    "\"reason\":\"status\",\"status\":400,"
    "\"excerpt\":\"bad \\\"x\\\"\\n\xef\xbf\xbd\",\"time\":1700000000123}],"
    "\"total\":5}");
  emd_json_reset(&j);
  emd_control_list_begin(&j, "pending");
  emd_control_list_pending(&j, &p);
  p.collection = "builds";
  p.collection_len = 6;
  emd_control_list_pending(&j, &p);
  emd_control_list_end(&j, 2);
  assert_string_equal(j.t.data,
    "{\"ok\":true,\"pending\":[{\"seq\":10,\"id\":\"01JDXYZXYZXYZQ\","
    "\"collection\":\"\",\"accepted_ms\":1700000000000,\"attempts\":2},"
    "{\"seq\":10,\"id\":\"01JDXYZXYZXYZQ\",\"collection\":\"builds\","
    "\"accepted_ms\":1700000000000,\"attempts\":2}],\"total\":2}");
  emd_json_free(&j);
}

/* ---- a real socket ------------------------------------------------------- */

struct fx {
  uv_loop_t loop;
  char dir[64];
  char path[128];
  struct emd_control_ops ops;
  struct emd_control *ctl;
  /* what the fake callbacks saw */
  int status_calls;
  int flush_calls;
  uint64_t flush_timeout_ms;
  struct emd_control_reply *held;     /* the flush not answered yet */
  uint64_t limit;
  char target[80];
  const char *metrics_text;           /* what metrics answers */
};

static void op_status(void *data, struct emd_control_reply *r)
{
  struct fx *fx = data;
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "{\"ok\":true,\"n\":%d}",
                   ++fx->status_calls);

  emd_control_reply_done(r, buf, (size_t)n);
}

static void op_metrics(void *data, struct emd_control_reply *r)
{
  struct fx *fx = data;

  emd_control_reply_done(r, fx->metrics_text, strlen(fx->metrics_text));
}

static void op_flush(void *data, uint64_t timeout_ms,
                     struct emd_control_reply *r)
{
  struct fx *fx = data;

  fx->flush_calls++;
  fx->flush_timeout_ms = timeout_ms;
  assert_null(fx->held);
  fx->held = r;                       /* answered later, by the test */
}

static void op_reload(void *data, struct emd_control_reply *r)
{
  emd_control_reply_ok(r, NULL, 0);
}

static void op_dead_list(void *data, uint64_t limit,
                         struct emd_control_reply *r)
{
  struct fx *fx = data;
  struct emd_json j = { 0 };

  fx->limit = limit;
  emd_control_list_begin(&j, "dead");
  emd_control_list_end(&j, 0);
  emd_control_reply_json(r, &j);
  emd_json_free(&j);
}

static void op_dead_retry(void *data, const char *target,
                          struct emd_control_reply *r)
{
  struct fx *fx = data;

  snprintf(fx->target, sizeof(fx->target), "%s", target);
  if (strcmp(target, "404") == 0)
    emd_control_reply_error(r, "not_found", "no dead letter %s", target);
  else
    emd_control_reply_ok(r, "retried", 1);
}

static void op_dead_purge(void *data, struct emd_control_reply *r)
{
  emd_control_reply_ok(r, "purged", 3);
}

static void op_pending(void *data, uint64_t limit,
                       struct emd_control_reply *r)
{
  struct fx *fx = data;

  fx->limit = limit;
  emd_control_reply_ok(r, "pending_limit", limit);
}

static int setup(void **state)
{
  struct fx *fx = calloc(1, sizeof(*fx));
  char err[256];

  signal(SIGPIPE, SIG_IGN);
  assert_non_null(fx);
  snprintf(fx->dir, sizeof(fx->dir), "/tmp/emd-ctl-XXXXXX");
  assert_non_null(mkdtemp(fx->dir));
  snprintf(fx->path, sizeof(fx->path), "%s/control.sock", fx->dir);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  fx->ops = (struct emd_control_ops){
    .status = op_status, .metrics = op_metrics, .flush = op_flush,
    .reload = op_reload, .dead_list = op_dead_list,
    .dead_retry = op_dead_retry, .dead_purge = op_dead_purge,
    .pending = op_pending,
  };
  fx->metrics_text = "# HELP x X.\n# TYPE x counter\nx 1\n";
  if (emd_control_open(&fx->loop, fx->path, &fx->ops, fx, &fx->ctl, err,
                       sizeof(err)) != 0)
    fail_msg("open: %s", err);
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  struct fx *fx = *state;

  emd_control_close(fx->ctl);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  if (fx->held != NULL)               /* owed; safe after close */
    emd_control_reply_done(fx->held, S("{}"));
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  unlink(fx->path);
  assert_int_equal(rmdir(fx->dir), 0);
  free(fx);
  return 0;
}

static int client(struct fx *fx)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

  assert_true(fd >= 0);
  strcpy(sa.sun_path, fx->path);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  return fd;
}

static void send_str(int fd, const char *s, size_t n)
{
  while (n > 0) {
    ssize_t w = write(fd, s, n);

    assert_true(w > 0);
    s += w;
    n -= (size_t)w;
  }
}

static uint64_t mono_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Lets closing handles finish while the fixture's listener keeps the
 * loop alive (UV_RUN_DEFAULT would not return). */
static void settle(struct fx *fx)
{
  for (int i = 0; i < 5; i++)
    uv_run(&fx->loop, UV_RUN_NOWAIT);
}

/* Runs the loop and reads from fd into buf until pred holds or a second
 * passes (then pred's last answer is returned). Returns bytes read; *eof
 * says whether the server closed. */
struct rd {
  char buf[1 << 20];
  size_t len;
  bool eof;
};

static size_t count_lines(const struct rd *rd)
{
  size_t n = 0;

  for (size_t i = 0; i < rd->len; i++)
    n += rd->buf[i] == '\n';
  return n;
}

static void pump(struct fx *fx, int fd, struct rd *rd, size_t lines,
                 bool want_eof, uint64_t wait_ms)
{
  uint64_t end = mono_ms() + wait_ms;

  while (mono_ms() < end) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ssize_t n;

    uv_run(&fx->loop, UV_RUN_NOWAIT);
    if (fd >= 0 && !rd->eof && poll(&p, 1, 2) == 1) {
      n = recv(fd, rd->buf + rd->len, sizeof(rd->buf) - rd->len - 1,
               MSG_DONTWAIT);
      if (n == 0)
        rd->eof = true;
      else if (n > 0)
        rd->len += (size_t)n;
      rd->buf[rd->len] = '\0';
    }
    if (count_lines(rd) >= lines && (!want_eof || rd->eof))
      return;
  }
}

/* The i-th line (from 0) of what was read, without its newline. */
static const char *line_at(const struct rd *rd, size_t i)
{
  static char out[8192];
  const char *p = rd->buf, *nl;

  for (; i > 0; i--) {
    p = strchr(p, '\n');
    assert_non_null(p);
    p++;
  }
  nl = strchr(p, '\n');
  assert_non_null(nl);
  snprintf(out, sizeof(out), "%.*s", (int)(nl - p), p);
  return out;
}

static void replies_come_in_order_for_pipelined_commands(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("status\nreload\npending 5\n\ndead list 7\ndead retry "
                 "01JDAAAAAAAAA\ndead purge\nhelp\nstatus\n"));
  pump(fx, fd, &rd, 8, false, 2000);
  assert_int_equal(count_lines(&rd), 8);  /* the blank line: no reply */
  assert_string_equal(line_at(&rd, 0), "{\"ok\":true,\"n\":1}");
  assert_string_equal(line_at(&rd, 1), "{\"ok\":true}");
  assert_string_equal(line_at(&rd, 2), "{\"ok\":true,\"pending_limit\":5}");
  assert_string_equal(line_at(&rd, 3), "{\"ok\":true,\"dead\":[],"
                      "\"total\":0}");
  assert_int_equal(fx->limit, 7);
  assert_string_equal(line_at(&rd, 4), "{\"ok\":true,\"retried\":1}");
  assert_string_equal(fx->target, "01JDAAAAAAAAA");
  assert_string_equal(line_at(&rd, 5), "{\"ok\":true,\"purged\":3}");
  assert_non_null(strstr(line_at(&rd, 6), "\"help\":\"  status "));
  assert_string_equal(line_at(&rd, 7), "{\"ok\":true,\"n\":2}");
  close(fd);
}

static void async_flush_holds_back_later_replies(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("status\nflush 2s\nstatus\nstatus\n"));
  pump(fx, fd, &rd, 2, false, 300);
  /* The first status is out; the flush runs; what follows waits. */
  assert_int_equal(count_lines(&rd), 1);
  assert_int_equal(fx->flush_calls, 1);
  assert_int_equal(fx->flush_timeout_ms, 2000);
  assert_int_equal(fx->status_calls, 1);
  assert_non_null(fx->held);
  assert_false(emd_control_reply_orphaned(fx->held));

  emd_control_reply_flush(fx->held, 0, 17, 2000, NULL);
  fx->held = NULL;
  pump(fx, fd, &rd, 4, false, 2000);
  assert_int_equal(count_lines(&rd), 4);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":true,\"n\":1}");
  assert_string_equal(line_at(&rd, 1), "{\"ok\":true,\"pending\":0,"
                      "\"flushed\":17}");
  assert_string_equal(line_at(&rd, 2), "{\"ok\":true,\"n\":2}");
  assert_string_equal(line_at(&rd, 3), "{\"ok\":true,\"n\":3}");
  close(fd);
}

static void flush_timeout_reply_says_what_is_left(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("flush 1500ms\n"));
  pump(fx, fd, &rd, 1, false, 200);
  assert_non_null(fx->held);
  emd_control_reply_flush(fx->held, 42, 8, 1500, "unauthorized");
  fx->held = NULL;
  pump(fx, fd, &rd, 1, false, 2000);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":false,\"error\":\"timeout\","
    "\"message\":\"42 events still pending after 1500ms (upstream: "
    "unauthorized)\",\"pending\":42,\"flushed\":8}");
  close(fd);
}

static void bad_command_is_answered_and_the_connection_goes_on(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("stauts\nflush soon\nstatus\n"));
  pump(fx, fd, &rd, 3, false, 2000);
  assert_int_equal(count_lines(&rd), 3);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":false,\"error\":"
    "\"bad_command\",\"message\":\"unknown command \\\"stauts\\\" (did you "
    "mean \\\"status\\\"?); try: status, metrics, flush [TIMEOUT], reload, "
    "dead list [N], dead retry [ID|all], dead purge, pending [N], help\"}");
  assert_non_null(strstr(line_at(&rd, 1), "\"error\":\"bad_command\","
                         "\"message\":\"flush: bad timeout \\\"soon\\\""));
  assert_string_equal(line_at(&rd, 2), "{\"ok\":true,\"n\":1}");
  assert_int_equal(fx->flush_calls, 0);
  close(fd);
}

static void over_long_line_is_refused_and_the_rest_skipped(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  static char big[20000];
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  memset(big, 'x', sizeof(big));
  /* In pieces, so the server sees the line grow past the limit before
   * its end arrives. */
  send_str(fd, big, 3000);
  pump(fx, fd, &rd, 1, false, 100);
  send_str(fd, big, sizeof(big));
  pump(fx, fd, &rd, 1, false, 300);
  assert_int_equal(count_lines(&rd), 1);       /* answered at once */
  send_str(fd, S("status with junk\nstatus\n"));
  pump(fx, fd, &rd, 2, false, 2000);
  assert_int_equal(count_lines(&rd), 2);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":false,\"error\":"
    "\"too_large\",\"message\":\"command line longer than 4096 bytes; "
    "skipped\"}");
  assert_string_equal(line_at(&rd, 1), "{\"ok\":true,\"n\":1}");
  assert_int_equal(fx->status_calls, 1);
  close(fd);
}

static void a_line_of_exactly_the_limit_is_a_command(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  static char line[EMD_CONTROL_LINE_MAX + 2];
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  memset(line, ' ', sizeof(line));
  memcpy(line, "status", 6);
  line[EMD_CONTROL_LINE_MAX] = '\r';   /* \r is not counted */
  line[EMD_CONTROL_LINE_MAX + 1] = '\n';
  send_str(fd, line, sizeof(line));
  pump(fx, fd, &rd, 1, false, 2000);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":true,\"n\":1}");
  close(fd);
}

static void eof_after_the_last_command_answers_all_then_closes(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  /* The last line has no newline; it still counts. */
  send_str(fd, S("status\r\nflush\nstatus"));
  shutdown(fd, SHUT_WR);
  pump(fx, fd, &rd, 1, false, 300);
  assert_non_null(fx->held);
  assert_int_equal(fx->flush_timeout_ms, 30000);
  /* Half-closed is not gone: the reply is still wanted. */
  assert_false(emd_control_reply_orphaned(fx->held));
  emd_control_reply_flush(fx->held, 0, 0, 30000, NULL);
  fx->held = NULL;
  pump(fx, fd, &rd, 3, true, 2000);
  assert_true(rd.eof);
  assert_int_equal(count_lines(&rd), 3);
  assert_string_equal(line_at(&rd, 2), "{\"ok\":true,\"n\":2}");
  pump(fx, -1, &rd, 0, false, 50);
  assert_int_equal(emd_control_clients(fx->ctl), 0);
  close(fd);
}

static void client_leaving_before_an_async_reply_is_harmless(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);
  uint64_t end;

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("flush 1m\nstatus\n"));
  pump(fx, fd, &rd, 1, false, 200);
  assert_non_null(fx->held);
  close(fd);
  end = mono_ms() + 2000;
  while (!emd_control_reply_orphaned(fx->held) && mono_ms() < end)
    pump(fx, -1, &rd, 1, false, 10);
  assert_true(emd_control_reply_orphaned(fx->held));
  pump(fx, -1, &rd, 1, false, 50);
  assert_int_equal(emd_control_clients(fx->ctl), 0);
  /* Answering now is safe, and the command after it never runs. */
  emd_control_reply_flush(fx->held, 0, 0, 60000, NULL);
  fx->held = NULL;
  pump(fx, -1, &rd, 1, false, 50);
  assert_int_equal(fx->status_calls, 0);
}

static void client_gone_before_its_last_unterminated_command(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);
  uint64_t end;

  memset(&rd, 0, sizeof(rd));
  /* No newline: the command runs only once EOF says the line is whole,
   * and by then the client is gone. */
  send_str(fd, S("flush 1m"));
  close(fd);
  end = mono_ms() + 2000;
  while ((fx->held == NULL || !emd_control_reply_orphaned(fx->held)) &&
         mono_ms() < end)
    pump(fx, -1, &rd, 1, false, 10);
  assert_non_null(fx->held);
  assert_true(emd_control_reply_orphaned(fx->held));
  emd_control_reply_flush(fx->held, 0, 0, 60000, NULL);
  fx->held = NULL;
  pump(fx, -1, &rd, 1, false, 50);
  assert_int_equal(emd_control_clients(fx->ctl), 0);
}

static void reply_completed_after_close_is_safe(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("flush\n"));
  pump(fx, fd, &rd, 1, false, 200);
  assert_non_null(fx->held);
  emd_control_close(fx->ctl);
  fx->ctl = NULL;
  assert_true(emd_control_reply_orphaned(fx->held));
  uv_run(&fx->loop, UV_RUN_DEFAULT);   /* every handle closes */
  emd_control_reply_done(fx->held, S("{\"ok\":true}"));
  fx->held = NULL;
  pump(fx, fd, &rd, 0, true, 1000);
  assert_true(rd.eof);
  assert_int_equal(rd.len, 0);
  /* The socket file is gone with the listener. */
  assert_int_equal(access(fx->path, F_OK), -1);
  close(fd);
}

static void close_with_clients_connected_leaves_the_loop_clean(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fds[5];

  memset(&rd, 0, sizeof(rd));
  for (int i = 0; i < 5; i++)
    fds[i] = client(fx);
  send_str(fds[0], S("stat"));          /* half a command */
  send_str(fds[1], S("flush\n"));       /* a command running */
  send_str(fds[2], S("status\n"));
  pump(fx, fds[2], &rd, 1, false, 1000);
  assert_int_equal(emd_control_clients(fx->ctl), 5);
  /* teardown closes with them connected and checks uv_loop_close. */
  for (int i = 0; i < 5; i++)
    close(fds[i]);
}

static void metrics_reply_ends_with_eof_even_when_the_callback_forgot(
  void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("metrics\nmetrics\nstatus\n"));
  pump(fx, fd, &rd, 9, false, 2000);
  assert_string_equal(rd.buf,
    "# HELP x X.\n# TYPE x counter\nx 1\n# EOF\n"
    "# HELP x X.\n# TYPE x counter\nx 1\n# EOF\n"
    "{\"ok\":true,\"n\":1}\n");
  close(fd);
}

static void metrics_reply_keeps_an_eof_already_there(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  fx->metrics_text = "x 1\n# EOF";
  send_str(fd, S("metrics\n"));
  pump(fx, fd, &rd, 2, false, 2000);
  assert_string_equal(rd.buf, "x 1\n# EOF\n");
  close(fd);
}

static void missing_callback_is_answered_not_available(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  fx->ops.pending = NULL;
  send_str(fd, S("pending\n"));
  pump(fx, fd, &rd, 1, false, 2000);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":false,\"error\":\"internal\","
    "\"message\":\"this command is not available in this emitd\"}");
  close(fd);
}

static void error_from_a_callback_reaches_the_client(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fd = client(fx);

  memset(&rd, 0, sizeof(rd));
  send_str(fd, S("dead retry 404\n"));
  pump(fx, fd, &rd, 1, false, 2000);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":false,\"error\":"
                      "\"not_found\",\"message\":\"no dead letter 404\"}");
  close(fd);
}

static void many_pipelined_commands_are_all_answered_in_order(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  static char cmds[7 * 20000];
  int fd = client(fx);
  size_t off = 0;
  const char *p;
  int want = 1;

  memset(&rd, 0, sizeof(rd));
  fcntl(fd, F_SETFL, O_NONBLOCK);
  for (int i = 0; i < 20000; i++)
    memcpy(cmds + 7 * (size_t)i, "status\n", 7);
  /* Write and read in turns: neither side may block the other. */
  while (count_lines(&rd) < 20000) {
    if (off < sizeof(cmds)) {
      ssize_t w = write(fd, cmds + off, sizeof(cmds) - off);

      if (w > 0)
        off += (size_t)w;
    }
    pump(fx, fd, &rd, count_lines(&rd) + 1, false, 20);
    assert_false(rd.eof);
  }
  for (p = rd.buf; *p != '\0'; p = strchr(p, '\n') + 1) {
    char expect[64];

    snprintf(expect, sizeof(expect), "{\"ok\":true,\"n\":%d}\n", want++);
    assert_memory_equal(p, expect, strlen(expect));
  }
  assert_int_equal(want, 20001);
  close(fd);
}

static void at_most_64_clients_and_one_more_is_told_why(void **state)
{
  struct fx *fx = *state;
  static struct rd rd;
  int fds[EMD_CONTROL_MAX_CLIENTS], extra;

  memset(&rd, 0, sizeof(rd));
  for (int i = 0; i < EMD_CONTROL_MAX_CLIENTS; i++) {
    fds[i] = client(fx);
    pump(fx, -1, &rd, 0, false, 1);
  }
  pump(fx, -1, &rd, 1, false, 50);
  assert_int_equal(emd_control_clients(fx->ctl), EMD_CONTROL_MAX_CLIENTS);
  extra = client(fx);
  pump(fx, extra, &rd, 1, true, 2000);
  assert_true(rd.eof);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":false,\"error\":"
    "\"too_many_clients\",\"message\":\"too many control clients; try "
    "again later\"}");
  close(extra);
  /* The others still work. */
  memset(&rd, 0, sizeof(rd));
  send_str(fds[63], S("status\n"));
  pump(fx, fds[63], &rd, 1, false, 2000);
  assert_string_equal(line_at(&rd, 0), "{\"ok\":true,\"n\":1}");
  for (int i = 0; i < EMD_CONTROL_MAX_CLIENTS; i++)
    close(fds[i]);
}

static void socket_is_0600_whatever_the_umask(void **state)
{
  struct fx *fx = *state;
  struct emd_control *other;
  struct stat st;
  char path[160], err[256];
  mode_t old;

  assert_int_equal(stat(fx->path, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(st.st_mode & 07777, 0600);
  /* Even when the process's umask would allow everyone. */
  snprintf(path, sizeof(path), "%s/open.sock", fx->dir);
  old = umask(0);
  assert_int_equal(emd_control_open(&fx->loop, path, &fx->ops, fx, &other,
                                    err, sizeof(err)), 0);
  assert_int_equal(umask(old), 0);     /* and the umask is put back */
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  emd_control_close(other);
  settle(fx);
  assert_int_equal(access(path, F_OK), -1);
}

static void stale_socket_is_replaced_but_live_socket_and_files_are_not(
  void **state)
{
  struct fx *fx = *state;
  struct emd_control *other = NULL;
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  char path[160], err[256];
  int fd;

  /* Live: fx's own socket. */
  assert_int_equal(emd_control_open(&fx->loop, fx->path, &fx->ops, fx,
                                    &other, err, sizeof(err)), -EADDRINUSE);
  assert_non_null(strstr(err, fx->path));
  assert_non_null(strstr(err, "in use"));
  settle(fx);

  /* Stale: a socket file nobody listens on. */
  snprintf(path, sizeof(path), "%s/stale.sock", fx->dir);
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  close(fd);
  assert_int_equal(emd_control_open(&fx->loop, path, &fx->ops, fx, &other,
                                    err, sizeof(err)), 0);
  emd_control_close(other);
  settle(fx);

  /* Not a socket: left alone. */
  fd = open(path, O_CREAT | O_WRONLY, 0644);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(emd_control_open(&fx->loop, path, &fx->ops, fx, &other,
                                    err, sizeof(err)), -EEXIST);
  assert_non_null(strstr(err, "is not a socket"));
  settle(fx);
  assert_int_equal(access(path, F_OK), 0);
  unlink(path);

  /* Too long for sun_path. */
  memset(path, 'a', sizeof(path) - 1);
  path[0] = '/';
  path[sizeof(path) - 1] = '\0';
  assert_int_equal(emd_control_open(&fx->loop, path, &fx->ops, fx, &other,
                                    err, sizeof(err)), -ENAMETOOLONG);
  assert_non_null(strstr(err, "too long"));
  settle(fx);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(parser_knows_every_command_and_its_defaults),
    cmocka_unit_test(parser_reads_arguments),
    cmocka_unit_test(parser_ignores_case_blanks_and_carriage_return),
    cmocka_unit_test(parser_refuses_unknown_commands_with_a_hint),
    cmocka_unit_test(parser_refuses_bad_arguments_naming_them),
    cmocka_unit_test(parser_quotes_bad_bytes_safely),
    cmocka_unit_test(parser_survives_random_bytes),
    cmocka_unit_test(durations_parse_with_units),
    cmocka_unit_test(status_json_has_the_shape_of_spec_6),
    cmocka_unit_test(metrics_text_is_valid_prometheus_ending_with_eof),
    cmocka_unit_test(list_items_have_the_shapes_of_spec_6),
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(replies_come_in_order_for_pipelined_commands),
    T(async_flush_holds_back_later_replies),
    T(flush_timeout_reply_says_what_is_left),
    T(bad_command_is_answered_and_the_connection_goes_on),
    T(over_long_line_is_refused_and_the_rest_skipped),
    T(a_line_of_exactly_the_limit_is_a_command),
    T(eof_after_the_last_command_answers_all_then_closes),
    T(client_leaving_before_an_async_reply_is_harmless),
    T(client_gone_before_its_last_unterminated_command),
    T(reply_completed_after_close_is_safe),
    T(close_with_clients_connected_leaves_the_loop_clean),
    T(metrics_reply_ends_with_eof_even_when_the_callback_forgot),
    T(metrics_reply_keeps_an_eof_already_there),
    T(missing_callback_is_answered_not_available),
    T(error_from_a_callback_reaches_the_client),
    T(many_pipelined_commands_are_all_answered_in_order),
    T(at_most_64_clients_and_one_more_is_told_why),
    T(socket_is_0600_whatever_the_umask),
    T(stale_socket_is_replaced_but_live_socket_and_files_are_not),
#undef T
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
