/* test_ingest.c: lib/emd_ingest.c on a real uv loop, with a real spool (a
 * temp dir), a real enrichment and a real socket. Clients are non-blocking
 * AF_UNIX sockets driven from the test thread: pump() runs one
 * UV_RUN_NOWAIT turn, moves the clients' bytes, and then sleeps in poll(2)
 * on the loop's backend fd and the clients until something happens. Every
 * wait has a deadline, so a broken module fails instead of hanging. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "emd_codec.h"
#include "emd_enrich.h"
#include "emd_err.h"
#include "emd_ingest.h"
#include "emd_log.h"
#include "emd_spool.h"

#define MAX_CLIENTS 4
#define WAIT_MS 10000

#define SMALLEST                                                        \
  "{\"context\":[{\"type\":\"type.googleapis.com/buildless.context.Build\"," \
  "\"event\":\"started\"}]}"

struct client {
  int fd;                   /* -1: not in use */
  char *out;                /* bytes still to send (malloc'd) */
  size_t outlen, outoff;
  bool shut_wanted;         /* shutdown(SHUT_WR) once out is sent */
  bool shut_done;
  bool paused;              /* do not read (a client that stops reading) */
  char *in;                 /* bytes received (malloc'd, NUL-terminated) */
  size_t inlen, incap;
  bool eof;                 /* the server closed (or reset) */
};

struct fx {
  char dir[64];             /* mkdtemp */
  char sock[128];           /* dir/emitd.sock */
  uv_loop_t loop;
  struct emd_config cfg;
  struct emd_spool *sp;
  struct emd_enrich *en;
  struct emd_ingest *in;
  struct client cl[MAX_CLIENTS];
  int idle_calls;
};

static uint64_t now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void set_str(char **field, const char *v)
{
  free(*field);
  *field = strdup(v);
  assert_non_null(*field);
}

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));
  char path[128], err[256] = "";

  assert_non_null(f);
  strcpy(f->dir, "/tmp/emd-ingest-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->sock, sizeof(f->sock), "%s/emitd.sock", f->dir);
  snprintf(path, sizeof(path), "%s/spool", f->dir);
  assert_int_equal(emd_config_defaults(&f->cfg), 0);
  set_str(&f->cfg.agent.socket, f->sock);
  set_str(&f->cfg.spool.dir, path);
  f->cfg.ingest.max_event_bytes = 1024;
  f->cfg.ingest.max_clients = 8;
  for (int i = 0; i < MAX_CLIENTS; i++)
    f->cl[i].fd = -1;
  /* Refusals log warnings on purpose; keep them out of the output. */
  emd_log_setup(EMD_LOG_ERROR, EMD_LOG_TEXT, false, 2);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  if (emd_spool_open(&f->loop, &f->cfg, &f->sp, err, sizeof(err)) != 0)
    fail_msg("spool: %s", err);
  assert_int_equal(emd_enrich_open(&f->cfg, NULL,
                                   emd_spool_instance_id(f->sp), &f->en), 0);
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

static void client_close(struct client *c)
{
  if (c->fd >= 0)
    close(c->fd);
  free(c->out);
  free(c->in);
  memset(c, 0, sizeof(*c));
  c->fd = -1;
}

static int teardown(void **state)
{
  struct fx *f = *state;

  emd_ingest_close(f->in);
  emd_spool_close(f->sp);
  /* Every handle of the ingest and the spool goes in its close callback. */
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  emd_enrich_close(f->en);
  for (int i = 0; i < MAX_CLIENTS; i++)
    client_close(&f->cl[i]);
  emd_config_free(&f->cfg);
  nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

static void start(struct fx *f)
{
  char err[256] = "";
  int rc = emd_ingest_open(&f->loop, &f->cfg, f->sp, f->en, -1, &f->in, err,
                           sizeof(err));

  if (rc != 0)
    fail_msg("ingest: %d %s", rc, err);
}

static struct emd_ingest_stats stats(struct fx *f)
{
  struct emd_ingest_stats st;

  emd_ingest_stats(f->in, &st);
  return st;
}

/* ---- clients ------------------------------------------------------------- */

/* Connects client i; returns 0 or the errno of connect(2). */
static int client_try_connect(struct fx *f, int i)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct client *c = &f->cl[i];

  assert_int_equal(c->fd, -1);
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  assert_true(c->fd >= 0);
  strcpy(sa.sun_path, f->sock);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    int e = errno;

    close(c->fd);
    c->fd = -1;
    return e;
  }
  return 0;
}

static struct client *client_connect(struct fx *f, int i)
{
  int e = client_try_connect(f, i);

  if (e != 0)
    fail_msg("connect: %s", strerror(e));
  return &f->cl[i];
}

static void client_send(struct client *c, const void *p, size_t n)
{
  char *q = realloc(c->out, c->outlen + n);

  assert_non_null(q);
  memcpy(q + c->outlen, p, n);
  c->out = q;
  c->outlen += n;
}

static void client_puts(struct client *c, const char *s)
{
  client_send(c, s, strlen(s));
}

/* Moves what can move without blocking. */
static void client_io(struct client *c)
{
  ssize_t n;

  while (c->outoff < c->outlen) {
    n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        c->outoff = c->outlen;       /* the server went: drop the rest */
      break;
    }
    c->outoff += (size_t)n;
  }
  if (c->outoff == c->outlen && c->shut_wanted && !c->shut_done) {
    shutdown(c->fd, SHUT_WR);
    c->shut_done = true;
  }
  while (!c->paused && !c->eof) {
    if (c->incap - c->inlen < 4096) {
      c->incap = c->incap ? c->incap * 2 : 65536;
      c->in = realloc(c->in, c->incap);
      assert_non_null(c->in);
    }
    n = read(c->fd, c->in + c->inlen, c->incap - c->inlen - 1);
    if (n > 0) {
      c->inlen += (size_t)n;
      c->in[c->inlen] = '\0';
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      c->eof = true;
    } else {
      break;
    }
  }
}

/* One turn of the loop, the clients' I/O, then a short sleep until the
 * loop or a client has something to do. */
static void pump(struct fx *f)
{
  struct pollfd p[MAX_CLIENTS + 1];
  int n = 0, timeout;

  uv_run(&f->loop, UV_RUN_NOWAIT);
  p[n].fd = uv_backend_fd(&f->loop);
  p[n++].events = POLLIN;
  for (int i = 0; i < MAX_CLIENTS; i++) {
    struct client *c = &f->cl[i];
    short ev = 0;

    if (c->fd < 0)
      continue;
    client_io(c);
    if (!c->paused && !c->eof)
      ev |= POLLIN;
    if (c->outoff < c->outlen)
      ev |= POLLOUT;
    if (ev != 0) {
      p[n].fd = c->fd;
      p[n++].events = ev;
    }
  }
  timeout = uv_backend_timeout(&f->loop);
  if (timeout < 0 || timeout > 20)
    timeout = 20;
  poll(p, (nfds_t)n, timeout);
}

#define PUMP_UNTIL(f, cond)                                               \
  do {                                                                    \
    uint64_t until_ = now_ms() + WAIT_MS;                                 \
    while (!(cond)) {                                                     \
      if (now_ms() > until_)                                              \
        fail_msg("timed out waiting for %s", #cond);                      \
      pump(f);                                                            \
    }                                                                     \
  } while (0)

static size_t nlines(const struct client *c)
{
  size_t n = 0;

  for (size_t i = 0; i < c->inlen; i++)
    n += c->in[i] == '\n';
  return n;
}

/* Line i (from 0) of what the client received, without its newline. */
static const char *line_at(const struct client *c, size_t i, char *out,
                           size_t outlen)
{
  const char *p = c->in, *nl;

  assert_non_null(p);
  for (; i > 0; i--) {
    p = strchr(p, '\n');
    assert_non_null(p);
    p++;
  }
  nl = strchr(p, '\n');
  assert_non_null(nl);
  assert_true((size_t)(nl - p) < outlen);
  memcpy(out, p, (size_t)(nl - p));
  out[nl - p] = '\0';
  return out;
}

/* ---- replies ------------------------------------------------------------- */

struct ok_reply {
  char id[32];
  uint64_t seq;
  char timer[32];
  unsigned ordinal;
};

/* Parses {"ok":true,"id":...,"seq":...,"timer":...,"ordinal":...}
 * exactly; id is the client's, or NULL for one emitd made (a ULID). */
static void expect_ok_id(const struct client *c, size_t i, const char *id,
                         struct ok_reply *r)
{
  char line[512];
  int end = -1;

  line_at(c, i, line, sizeof(line));
  sscanf(line, "{\"ok\":true,\"id\":\"%31[0-9A-Za-z]\",\"seq\":%" SCNu64
         ",\"timer\":\"%31[A-Za-z0-9+/=]\",\"ordinal\":%u}%n", r->id,
         &r->seq, r->timer, &r->ordinal, &end);
  if (end < 0 || (size_t)end != strlen(line))
    fail_msg("reply %zu is not an ok reply: %s", i, line);
  if (id != NULL)
    assert_string_equal(r->id, id);
  else
    assert_int_equal(strlen(r->id), 26);
  assert_int_equal(strlen(r->timer), 24);        /* 16 bytes in base64 */
}

static void expect_ok(const struct client *c, size_t i, struct ok_reply *r)
{
  expect_ok_id(c, i, NULL, r);
}

/* Checks {"ok":false,"line":n,"error":code,"message":...}; returns the
 * message (as sent, still escaped). */
static const char *expect_err(const struct client *c, size_t i,
                              unsigned line_no, const char *code,
                              char *line, size_t linelen)
{
  char got_code[32];
  unsigned got_line;
  int start = -1;
  size_t n;

  line_at(c, i, line, linelen);
  sscanf(line, "{\"ok\":false,\"line\":%u,\"error\":\"%31[a-z_]\","
         "\"message\":\"%n", &got_line, got_code, &start);
  n = strlen(line);
  if (start < 0 || n < (size_t)start + 2 || strcmp(line + n - 2, "\"}") != 0)
    fail_msg("reply %zu is not an error reply: %s", i, line);
  assert_int_equal(got_line, line_no);
  assert_string_equal(got_code, code);
  line[n - 2] = '\0';
  return line + start;
}

static void on_idle(void *data)
{
  struct fx *f = data;

  f->idle_calls++;
}

/* ---- text mode ----------------------------------------------------------- */

static void text_replies_come_in_line_order_for_good_and_bad_lines(
  void **state)
{
  struct fx *f = *state;
  struct client *c;
  struct ok_reply ok[4];
  struct emd_ingest_stats st;
  char line[512];
  const char *msg;

  start(f);
  c = client_connect(f, 0);
  client_puts(c, SMALLEST "\n"                           /* 1 ok */
                 "not json\n"                            /* 2 bad_json */
                 SMALLEST "\n"                           /* 3 ok */
                 "[1,2,3]\n"                             /* 4 invalid */
                 "\n"                                    /* 5 blank */
                 "  \t\r\n"                              /* 6 blank */
                 "{\"collection\":\"ab\",\"event\":" SMALLEST "}\n" /* 7 */
                 SMALLEST "\r\n"                         /* 8 ok, CRLF */
                 SMALLEST);                              /* 9 ok, at EOF */
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  if (nlines(c) != 7)
    fail_msg("7 replies expected, got:\n%s", c->in);
  expect_ok(c, 0, &ok[0]);
  expect_err(c, 1, 2, "bad_json", line, sizeof(line));
  expect_ok(c, 2, &ok[1]);
  expect_err(c, 3, 4, "invalid", line, sizeof(line));
  msg = expect_err(c, 4, 7, "invalid", line, sizeof(line));
  assert_non_null(strstr(msg, "collection"));
  expect_ok(c, 5, &ok[2]);
  expect_ok(c, 6, &ok[3]);
  for (int i = 0; i < 4; i++) {
    /* One connection, no scope: one timer, counted 1, 2, 3, 4. */
    assert_int_equal(ok[i].ordinal, (unsigned)i + 1);
    assert_int_equal(ok[i].seq, ok[0].seq + (uint64_t)i);
    assert_string_equal(ok[i].timer, ok[0].timer);
    for (int j = 0; j < i; j++)
      assert_string_not_equal(ok[i].id, ok[j].id);
  }
  PUMP_UNTIL(f, stats(f).clients == 0);
  st = stats(f);
  assert_int_equal(st.connections, 1);
  assert_int_equal(st.received, 7);
  assert_int_equal(st.accepted, 4);
  assert_int_equal(st.bad_json, 1);
  assert_int_equal(st.invalid, 2);
  assert_int_equal(st.too_large, 0);
}

/* Each reply shows its own event's timer, however the timers of nearby
 * replies look: 15 client timers of 16 bytes, three of them at a time
 * alike in their first two bytes (so in the slot the ingest keeps their
 * text in), each sent about 20 times, interleaved with the connection's
 * own timer and with 17 and 18-byte ones. */
static void text_replies_show_each_event_s_own_timer(void **state)
{
  enum { N = 400 };
  struct fx *f = *state;
  struct client *c;
  struct ok_reply ok;
  static uint8_t sent[N][18];
  static size_t sent_len[N];
  char b64[64], own[32] = "", line[256];

  start(f);
  c = client_connect(f, 0);
  for (int i = 0; i < N; i++) {
    sent_len[i] = i % 4 == 3 ? 0 : i % 37 == 5 ? 17 : i % 41 == 7 ? 18 : 16;
    for (size_t k = 0; k < sent_len[i]; k++)
      sent[i][k] = (uint8_t)(k == 0 ? (size_t)(i % 5) * 7
                             : k == 1 ? 3
                             : (size_t)(i % 15) * 16 + k + sent_len[i]);
    if (sent_len[i] == 0) {
      client_puts(c, SMALLEST "\n");
      continue;
    }
    b64[emd_codec_base64(sent[i], sent_len[i], b64)] = '\0';
    snprintf(line, sizeof(line), "{\"timer\":\"%s\",%s\n", b64,
             &SMALLEST[1]);
    client_puts(c, line);
  }
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  assert_int_equal(nlines(c), N);
  for (int i = 0; i < N; i++) {
    expect_ok(c, (size_t)i, &ok);
    if (sent_len[i] == 0) {
      /* The connection's own timer, the same every time. */
      if (own[0] == '\0')
        strcpy(own, ok.timer);
      assert_string_equal(ok.timer, own);
      continue;
    }
    b64[emd_codec_base64(sent[i], sent_len[i], b64)] = '\0';
    assert_string_equal(ok.timer, b64);
  }
}

static void text_duplicate_id_gets_the_duplicate_reply(void **state)
{
  struct fx *f = *state;
  struct client *c;
  struct ok_reply first;
  char line[512], want[512];
  static const char ev[] =
    "{\"id\":\"dupdupdup0001\",\"context\":[{\"type\":"
    "\"type.googleapis.com/buildless.context.Build\",\"event\":\"x\"}]}\n";

  start(f);
  c = client_connect(f, 0);
  client_puts(c, ev);
  client_puts(c, ev);
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  assert_int_equal(nlines(c), 2);
  expect_ok_id(c, 0, "dupdupdup0001", &first);
  snprintf(want, sizeof(want),
           "{\"ok\":true,\"id\":\"dupdupdup0001\",\"seq\":%" PRIu64
           ",\"duplicate\":true}", first.seq);
  assert_string_equal(line_at(c, 1, line, sizeof(line)), want);
  assert_int_equal(stats(f).duplicates, 1);
}

static void text_over_long_line_is_too_large_and_the_next_goes_on(
  void **state)
{
  struct fx *f = *state;
  struct client *c;
  struct ok_reply a, b;
  char line[512], *big = malloc(5001);

  assert_non_null(big);
  memset(big, 'x', 5000);
  big[5000] = '\n';
  start(f);
  c = client_connect(f, 0);
  client_puts(c, SMALLEST "\n");
  client_send(c, big, 5001);
  client_puts(c, SMALLEST "\n");
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  assert_int_equal(nlines(c), 3);
  expect_ok(c, 0, &a);
  assert_string_equal(expect_err(c, 1, 2, "too_large", line, sizeof(line)),
                      "line longer than ingest.max_event_bytes (1024 bytes)");
  expect_ok(c, 2, &b);
  assert_int_equal(b.ordinal, 2);
  assert_int_equal(stats(f).too_large, 1);
  free(big);
}

static void reconfigured_limit_applies_to_new_connections(void **state)
{
  struct fx *f = *state;
  struct emd_config cfg2;
  struct client *c;
  struct ok_reply r;
  char line[512], big[301];

  start(f);
  cfg2 = f->cfg;                       /* shares the strings: not freed */
  cfg2.ingest.max_event_bytes = 200;
  emd_ingest_reconfigure(f->in, &cfg2);
  memset(big, 'x', 300);
  big[300] = '\n';
  c = client_connect(f, 0);
  client_send(c, big, sizeof(big));
  client_puts(c, SMALLEST "\n");
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  assert_int_equal(nlines(c), 2);
  assert_string_equal(expect_err(c, 0, 1, "too_large", line, sizeof(line)),
                      "line longer than ingest.max_event_bytes (200 bytes)");
  expect_ok(c, 1, &r);
  emd_ingest_reconfigure(f->in, &f->cfg);
}

/* ---- binary mode --------------------------------------------------------- */

static void put_frame(struct client *c, const void *p, uint32_t n)
{
  uint8_t h[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
                   (uint8_t)n };

  client_send(c, h, 4);
  if (n > 0)
    client_send(c, p, n);
}

/* Splits what the client received into acks; returns how many. */
static size_t read_acks(const struct client *c, emd_ack **acks, size_t max)
{
  size_t off = 0, n = 0;

  while (off + 4 <= c->inlen) {
    const uint8_t *p = (const uint8_t *)c->in + off;
    uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                   (uint32_t)p[2] << 8 | p[3];

    assert_true(off + 4 + len <= c->inlen);
    assert_true(n < max);
    acks[n] = emitd__v1__ack__unpack(NULL, len, p + 4);
    assert_non_null(acks[n]);
    n++;
    off += 4 + (size_t)len;
  }
  assert_int_equal(off, c->inlen);
  return n;
}

static void binary_frames_get_ack_frames_in_order(void **state)
{
  struct fx *f = *state;
  struct emd_arena a = { 0 };
  struct client *c;
  emd_event *ev;
  emd_ack *acks[8];
  uint8_t *good, big[2000];
  size_t n, got;

  /* A valid Event, packed the way a binary client would send it. */
  assert_int_equal(emd_codec_decode_json(SMALLEST, strlen(SMALLEST), NULL,
                                         &a, &ev, NULL, 0), 0);
  n = buildless__service__v1__event__get_packed_size(ev);
  good = emd_arena_alloc(&a, n);
  buildless__service__v1__event__pack(ev, good);
  memset(big, 'b', sizeof(big));

  start(f);
  c = client_connect(f, 0);
  put_frame(c, good, (uint32_t)n);                        /* 1 ok */
  put_frame(c, "\xff\xff\xff", 3);                        /* 2 garbage */
  put_frame(c, big, sizeof(big));                         /* 3 too large */
  put_frame(c, good, (uint32_t)n);                        /* 4 ok */
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  got = read_acks(c, acks, 8);
  assert_int_equal(got, 4);

  assert_true(acks[0]->ok);
  assert_int_equal(strlen(acks[0]->id), 26);
  assert_true(acks[0]->seq > 0);
  assert_int_equal(acks[0]->timer.len, 16);
  assert_int_equal(acks[0]->ordinal, 1);
  assert_false(acks[0]->duplicate);

  assert_false(acks[1]->ok);
  assert_string_equal(acks[1]->error, "invalid");
  assert_int_equal(acks[1]->line, 2);
  assert_true(strlen(acks[1]->message) > 0);

  assert_false(acks[2]->ok);
  assert_string_equal(acks[2]->error, "too_large");
  assert_int_equal(acks[2]->line, 3);
  assert_string_equal(acks[2]->message, "frame of 2000 bytes is longer than "
                      "ingest.max_event_bytes (1024)");

  assert_true(acks[3]->ok);
  assert_int_equal(acks[3]->seq, acks[0]->seq + 1);
  assert_int_equal(acks[3]->ordinal, 2);
  assert_memory_equal(acks[3]->timer.data, acks[0]->timer.data, 16);
  assert_string_not_equal(acks[3]->id, acks[0]->id);

  for (size_t i = 0; i < got; i++)
    emitd__v1__ack__free_unpacked(acks[i], NULL);
  emd_arena_free(&a);
}

static void binary_frame_cut_by_eof_is_answered_invalid(void **state)
{
  struct fx *f = *state;
  struct client *c;
  emd_ack *acks[4];

  start(f);
  c = client_connect(f, 0);
  client_send(c, "\0\0\0\x20partial", 11);
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  assert_int_equal(read_acks(c, acks, 4), 1);
  assert_false(acks[0]->ok);
  assert_string_equal(acks[0]->error, "invalid");
  assert_string_equal(acks[0]->message, "truncated frame at end of input");
  emitd__v1__ack__free_unpacked(acks[0], NULL);
}

/* ---- who may connect ----------------------------------------------------- */

static void client_over_max_clients_is_told_why_and_closed(void **state)
{
  struct fx *f = *state;
  struct client *a, *b, *c;
  struct ok_reply r;

  f->cfg.ingest.max_clients = 1;
  start(f);
  a = client_connect(f, 0);
  PUMP_UNTIL(f, stats(f).clients == 1);
  b = client_connect(f, 1);
  PUMP_UNTIL(f, b->eof);
  assert_string_equal(b->in, "{\"ok\":false,\"line\":0,\"error\":"
                      "\"too_many_clients\",\"message\":\"too many clients "
                      "(ingest.max_clients = 1); try again later\"}\n");
  assert_int_equal(stats(f).refused, 1);
  /* The one let in is served as usual. */
  client_puts(a, SMALLEST "\n");
  a->shut_wanted = true;
  PUMP_UNTIL(f, a->eof);
  expect_ok(a, 0, &r);
  /* Once both are gone there is room again. */
  PUMP_UNTIL(f, stats(f).clients == 0);
  client_close(a);
  client_close(b);
  c = client_connect(f, 2);
  client_puts(c, SMALLEST "\n");
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  expect_ok(c, 0, &r);
  assert_int_equal(stats(f).refused, 1);
  assert_int_equal(stats(f).connections, 3);
}

static void peer_outside_the_allow_lists_is_denied(void **state)
{
  struct fx *f = *state;
  struct client *c;
  struct ok_reply r;
  char want[256];

  f->cfg.agent.allow_uids[0] = getuid() + 1;
  f->cfg.agent.n_allow_uids = 1;
  start(f);
  c = client_connect(f, 0);
  client_puts(c, SMALLEST "\n");
  PUMP_UNTIL(f, c->eof);
  snprintf(want, sizeof(want), "{\"ok\":false,\"line\":0,\"error\":\"denied\","
           "\"message\":\"uid %u gid %u is not in agent.allow_uids or "
           "agent.allow_gids\"}\n", (unsigned)getuid(), (unsigned)getgid());
  assert_string_equal(c->in, want);
  assert_int_equal(stats(f).refused, 1);
  assert_int_equal(stats(f).received, 1);
  assert_int_equal(stats(f).accepted, 0);
  client_close(c);

  /* Either list admits: our group, after a live reconfigure. */
  f->cfg.agent.allow_gids[0] = getgid();
  f->cfg.agent.n_allow_gids = 1;
  emd_ingest_reconfigure(f->in, &f->cfg);
  c = client_connect(f, 0);
  client_puts(c, SMALLEST "\n");
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  expect_ok(c, 0, &r);
}

/* ---- the socket file ----------------------------------------------------- */

static void socket_file_gets_the_configured_mode(void **state)
{
  static const unsigned modes[] = { 0600, 0660, 0666, 0620 };
  struct fx *f = *state;
  struct stat st;
  mode_t mask = umask(022);

  umask(mask);
  for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
    f->cfg.agent.socket_mode = modes[i];
    start(f);
    assert_int_equal(lstat(f->sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    if ((st.st_mode & 0777) != modes[i])
      fail_msg("socket mode %o, wanted %o", st.st_mode & 0777, modes[i]);
    /* The process umask is left as it was. */
    assert_int_equal(umask(mask), mask);
    emd_ingest_close(f->in);
    f->in = NULL;
    /* Closing removes the file it made. */
    assert_int_equal(lstat(f->sock, &st), -1);
    assert_int_equal(errno, ENOENT);
    pump(f);
  }
}

static void stale_socket_is_replaced_and_other_files_refused(void **state)
{
  struct fx *f = *state;
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct client *c;
  struct ok_reply r;
  char err[256] = "";
  FILE *fp;
  int fd, rc;

  fp = fopen(f->sock, "w");
  assert_non_null(fp);
  fputs("precious", fp);
  fclose(fp);
  rc = emd_ingest_open(&f->loop, &f->cfg, f->sp, f->en, -1, &f->in, err,
                       sizeof(err));
  assert_int_equal(rc, -EEXIST);
  assert_null(f->in);
  assert_non_null(strstr(err, f->sock));
  assert_non_null(strstr(err, "not a socket"));
  fp = fopen(f->sock, "r");
  assert_non_null(fp);                 /* left alone */
  fclose(fp);
  unlink(f->sock);

  /* A socket file left by a dead process. */
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  strcpy(sa.sun_path, f->sock);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  close(fd);
  start(f);
  c = client_connect(f, 0);
  client_puts(c, SMALLEST "\n");
  c->shut_wanted = true;
  PUMP_UNTIL(f, c->eof);
  expect_ok(c, 0, &r);
}

/* ---- shutdown ------------------------------------------------------------ */

static void stop_without_clients_calls_idle_at_once(void **state)
{
  struct fx *f = *state;

  start(f);
  emd_ingest_stop(f->in, on_idle, f);
  assert_int_equal(f->idle_calls, 1);
  assert_int_equal(client_try_connect(f, 0), ENOENT);
  for (int i = 0; i < 5; i++)
    pump(f);
  assert_int_equal(f->idle_calls, 1);
}

static void stop_calls_idle_once_every_reply_is_out(void **state)
{
  enum { LINES = 6000 };
  struct fx *f = *state;
  struct client *c;
  struct ok_reply r;

  start(f);
  c = client_connect(f, 0);
  /* The client sends and does not read yet: its replies (some 650 KB,
   * more than a socket buffer holds) pile up on the server's side. */
  c->paused = true;
  for (int i = 0; i < LINES; i++)
    client_puts(c, SMALLEST "\n");
  PUMP_UNTIL(f, stats(f).received == LINES);
  emd_ingest_stop(f->in, on_idle, f);
  /* A client is still connected: no idle yet, and no new client. */
  assert_int_equal(f->idle_calls, 0);
  assert_int_equal(client_try_connect(f, 1), ENOENT);
  c->paused = false;
  PUMP_UNTIL(f, c->eof);
  PUMP_UNTIL(f, f->idle_calls > 0);
  /* Every reply reached the client, in order, before it was closed. */
  assert_int_equal(nlines(c), LINES);
  for (int i = 0; i < LINES; i++) {
    expect_ok(c, (size_t)i, &r);
    assert_int_equal(r.ordinal, (unsigned)i + 1);
  }
  for (int i = 0; i < 5; i++)
    pump(f);
  assert_int_equal(f->idle_calls, 1);
  assert_int_equal(stats(f).clients, 0);
}

static void line_sent_while_stopping_is_answered_shutting_down(void **state)
{
  enum { LINES = 6000 };
  struct fx *f = *state;
  struct client *c;
  struct ok_reply r;
  char line[512];
  int queued = 0;

  start(f);
  c = client_connect(f, 0);
  c->paused = true;
  for (int i = 0; i < LINES; i++)
    client_puts(c, SMALLEST "\n");
  PUMP_UNTIL(f, stats(f).received == LINES);
  /* The premise: replies are still waiting on the server's side, so the
   * connection is not finished when the stop comes. */
  assert_int_equal(ioctl(c->fd, FIONREAD, &queued), 0);
  if ((size_t)queued >= (size_t)LINES * 99)
    fail_msg("the kernel took all %d bytes of replies; raise LINES", queued);
  emd_ingest_stop(f->in, on_idle, f);
  client_puts(c, SMALLEST "\n");
  PUMP_UNTIL(f, stats(f).shutting_down == 1);
  c->paused = false;
  PUMP_UNTIL(f, c->eof && f->idle_calls == 1);
  assert_int_equal(nlines(c), LINES + 1);
  expect_ok(c, LINES - 1, &r);
  assert_string_equal(expect_err(c, LINES, LINES + 1, "shutting_down", line,
                                 sizeof(line)),
                      "emitd is stopping");
  assert_int_equal(stats(f).accepted, LINES);
}

static void close_with_clients_connected_frees_everything(void **state)
{
  struct fx *f = *state;
  struct client *idle, *half, *busy;
  char b;

  start(f);
  idle = client_connect(f, 0);
  half = client_connect(f, 1);
  busy = client_connect(f, 2);
  client_puts(half, "{\"context\":[{\"type\":");      /* no newline yet */
  busy->paused = true;
  for (int i = 0; i < 200; i++)
    client_puts(busy, SMALLEST "\n");
  PUMP_UNTIL(f, stats(f).clients == 3 && stats(f).received > 0);
  emd_ingest_close(f->in);
  f->in = NULL;
  /* Whatever was in flight: the loop winds down to nothing (teardown
   * checks uv_run and uv_loop_close), and every client sees its end. */
  emd_spool_close(f->sp);
  f->sp = NULL;
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(read(idle->fd, &b, 1), 0);
  /* EOF, or a reset if the server had not read the half line yet. */
  ssize_t n = read(half->fd, &b, 1);
  assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
  busy->paused = false;
  client_io(busy);
  assert_true(busy->eof);
}

/* ---- replies per loop turn --------------------------------------------- */

#define GROUP_LINES 20

struct peek {
  struct fx *f;
  int calls;                /* changed callbacks so far */
  uint64_t received;        /* stats at the first one */
  uint64_t accepted;
  bool close;               /* close the ingest there and then */
};

/* The spool's changed callback runs right after the spool callbacks of a
 * group commit, in the same loop turn. */
static void on_changed_peek(void *data)
{
  struct peek *pk = data;
  struct emd_ingest_stats st;

  if (pk->calls++ > 0 || pk->f->in == NULL)
    return;
  if (pk->close) {
    emd_ingest_close(pk->f->in);
    /* Still readable until the loop runs the close callbacks. */
    emd_ingest_stats(pk->f->in, &st);
    pk->f->in = NULL;
  } else {
    st = stats(pk->f);
  }
  pk->received = st.received;
  pk->accepted = st.accepted;
}

static void send_group(struct fx *f, struct peek *pk)
{
  struct client *c;

  emd_spool_set_changed_cb(f->sp, on_changed_peek, pk);
  start(f);
  c = client_connect(f, 0);
  for (int i = 0; i < GROUP_LINES; i++)
    client_puts(c, SMALLEST "\n");
  PUMP_UNTIL(f, pk->calls > 0);
}

static void replies_of_a_group_commit_go_out_at_the_end_of_the_turn(
  void **state)
{
  struct fx *f = *state;
  struct peek pk = { .f = f };
  struct emd_ingest_stats st;
  struct ok_reply ok;
  struct client *c;

  send_group(f, &pk);
  /* Every callback of the group has run, and no reply is out yet: they
   * leave together when the turn ends, one flush for the connection. */
  assert_int_equal(pk.received, 0);
  c = &f->cl[0];
  PUMP_UNTIL(f, nlines(c) == GROUP_LINES);
  for (size_t i = 0; i < GROUP_LINES; i++) {
    expect_ok(c, i, &ok);
    assert_int_equal(ok.ordinal, i + 1);
  }
  st = stats(f);
  assert_int_equal(st.received, GROUP_LINES);
  assert_int_equal(st.accepted, GROUP_LINES);
  assert_int_equal(emd_histogram_total(&st.ack_latency_s), GROUP_LINES);
  emd_spool_set_changed_cb(f->sp, NULL, NULL);
}

static void replies_ready_when_the_ingest_closes_are_still_counted(
  void **state)
{
  struct fx *f = *state;
  struct peek pk = { .f = f, .close = true };

  send_group(f, &pk);
  assert_int_equal(pk.received, GROUP_LINES);
  assert_int_equal(pk.accepted, GROUP_LINES);
  emd_spool_set_changed_cb(f->sp, NULL, NULL);
}

/* ---- reply formatting ---------------------------------------------------- */

/* The text reply as printf words it: the reference the formatter must
 * match byte for byte. */
static size_t ref_text(const struct emd_ingest_reply *r, char *out)
{
  char timer[64];
  int n;

  if (r->rc != 0) {
    const char *m = r->msg ? r->msg : emd_strerror(r->rc);
    size_t len;

    n = sprintf(out, "{\"ok\":false,\"line\":%" PRIu32 ",\"error\":\"%s\","
                "\"message\":\"", r->line, emd_errcode(r->rc));
    len = (size_t)n;
    for (const char *p = m; *p; p++) {
      unsigned char ch = (unsigned char)*p;

      if (ch == '"' || ch == '\\')
        len += (size_t)sprintf(out + len, "\\%c", ch);
      else if (ch < 0x20)
        len += (size_t)sprintf(out + len, "\\u%04x", ch);
      else
        out[len++] = ch < 0x80 ? (char)ch : '?';
    }
    memcpy(out + len, "\"}\n", 3);
    return len + 3;
  }
  if (r->duplicate)
    n = sprintf(out, "{\"ok\":true,\"id\":\"%.*s\",\"seq\":%" PRIu64
                ",\"duplicate\":true}\n", (int)r->id_len, r->id, r->seq);
  else {
    timer[emd_codec_base64(r->timer, r->timer_len, timer)] = '\0';
    n = sprintf(out, "{\"ok\":true,\"id\":\"%.*s\",\"seq\":%" PRIu64
                ",\"timer\":\"%s\",\"ordinal\":%" PRIu32 "}\n",
                (int)r->id_len, r->id, r->seq, timer, r->ordinal);
  }
  return (size_t)n;
}

/* The binary reply as protobuf-c packs it. */
static size_t ref_binary(const struct emd_ingest_reply *r, char *out)
{
  emd_ack ack = EMITD__V1__ACK__INIT;
  char id[EMD_ID_MAX + 1];
  size_t n;

  ack.ok = r->rc == 0;
  if (r->rc == 0) {
    memcpy(id, r->id, r->id_len);
    id[r->id_len] = '\0';
    ack.id = id;
    ack.seq = r->seq;
    ack.duplicate = r->duplicate;
    if (!r->duplicate) {
      ack.timer.data = (uint8_t *)r->timer;
      ack.timer.len = r->timer_len;
      ack.ordinal = r->ordinal;
    }
  } else {
    ack.error = (char *)emd_errcode(r->rc);
    ack.message = (char *)(r->msg ? r->msg : emd_strerror(r->rc));
    ack.line = r->line;
  }
  n = emitd__v1__ack__get_packed_size(&ack);
  out[0] = (char)(n >> 24);
  out[1] = (char)(n >> 16);
  out[2] = (char)(n >> 8);
  out[3] = (char)n;
  emitd__v1__ack__pack(&ack, (uint8_t *)out + 4);
  return n + 4;
}

static void check_reply(const struct emd_ingest_reply *r)
{
  size_t max = emd_ingest_reply_max(r);

  for (int binary = 0; binary < 2; binary++) {
    char *got = malloc(max + 64), want[8192];
    size_t n, wn;

    assert_non_null(got);
    memset(got, 0x5a, max + 64);
    n = emd_ingest_format_reply(r, binary, got);
    wn = binary ? ref_binary(r, want) : ref_text(r, want);
    assert_true(n <= max);
    assert_int_equal(n, wn);
    assert_memory_equal(got, want, n);
    assert_int_equal((unsigned char)got[max], 0x5a);   /* no overrun */
    free(got);
  }
}

static void replies_match_printf_and_protobuf_c_byte_for_byte(void **state)
{
  static const uint64_t seqs[] = { 0, 1, 9, 10, 99, 100, 127, 128, 999,
                                   1000, 16383, 16384, 1234567890123ull,
                                   9999999999999999999ull,
                                   10000000000000000000ull, UINT64_MAX };
  static const uint32_t u32s[] = { 0, 1, 127, 128, 4242, UINT32_MAX };
  static const int rcs[] = { EMD_EBADJSON, EMD_ETOOLARGE, EMD_EINVALID,
                             EMD_ESPOOLFULL, EMD_ESHUTDOWN, EMD_EDENIED,
                             EMD_ETOOMANY, -ENOMEM };
  char id[EMD_ID_MAX], msg[300];
  uint8_t timer[EMD_TIMER_MAX];
  struct emd_ingest_reply r;

  (void)state;
  for (size_t i = 0; i < sizeof(id); i++)
    id[i] = (char)('A' + i % 26);
  for (size_t i = 0; i < sizeof(timer); i++)
    timer[i] = (uint8_t)(i * 37 + 251);
  /* Stored and duplicate events: every id and timer length (base64
   * padding of 0, 1 and 2), seqs and ordinals across varint and digit
   * boundaries. */
  for (size_t il = 0; il <= EMD_ID_MAX; il += 13)
    for (size_t tl = 0; tl <= EMD_TIMER_MAX; tl++)
      for (size_t k = 0; k < sizeof(seqs) / sizeof(*seqs); k++)
        for (int dup = 0; dup < 2; dup++) {
          memset(&r, 0, sizeof(r));
          r.id = id;
          r.id_len = il;
          r.seq = seqs[k];
          r.duplicate = dup;
          r.timer = timer;
          r.timer_len = tl;
          r.ordinal = u32s[(il + tl + k) % (sizeof(u32s) / sizeof(*u32s))];
          check_reply(&r);
        }
  /* Errors: every code, our own message or the default one, with quotes,
   * backslashes, control and non-ASCII bytes, and a message long enough
   * for a 2-byte length. */
  for (size_t i = 0; i < sizeof(msg) - 1; i++)
    msg[i] = i % 7 == 0 ? '"' : i % 11 == 0 ? '\\' : i % 13 == 0 ? '\x01'
             : i % 17 == 0 ? '\xc3' : (char)('a' + i % 26);
  msg[sizeof(msg) - 1] = '\0';
  for (size_t k = 0; k < sizeof(rcs) / sizeof(*rcs); k++)
    for (size_t u = 0; u < sizeof(u32s) / sizeof(*u32s); u++) {
      memset(&r, 0, sizeof(r));
      r.rc = rcs[k];
      r.line = u32s[u];
      check_reply(&r);
      r.msg = "line longer than ingest.max_event_bytes (1024 bytes)";
      check_reply(&r);
      r.msg = msg;
      check_reply(&r);
      r.msg = msg + sizeof(msg) - 2;     /* one byte */
      check_reply(&r);
    }
}

/* seq and ordinal next to every power of ten (and of two), where the
 * formatter's digit count changes, against printf. */
static void decimal_fields_at_every_digit_boundary(void **state)
{
  char id[] = "01JD0000000000000000000000";
  uint8_t timer[EMD_TIMER_LEN] = { 1, 2, 3 };
  struct emd_ingest_reply r;
  uint64_t p = 1;

  (void)state;
  for (int i = 0; i < 64; i++) {
    uint64_t vs[] = { p - 1, p, p + 1, (uint64_t)1 << i,
                      ((uint64_t)1 << i) - 1 };

    for (size_t k = 0; k < sizeof(vs) / sizeof(*vs); k++) {
      memset(&r, 0, sizeof(r));
      r.id = id;
      r.id_len = sizeof(id) - 1;
      r.seq = vs[k];
      r.timer = timer;
      r.timer_len = sizeof(timer);
      r.ordinal = (uint32_t)vs[k];
      check_reply(&r);
      r.rc = EMD_EINVALID;
      r.line = (uint32_t)vs[k];
      check_reply(&r);
    }
    if (p <= UINT64_MAX / 10)
      p *= 10;
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(text_replies_come_in_line_order_for_good_and_bad_lines),
    T(text_duplicate_id_gets_the_duplicate_reply),
    T(text_replies_show_each_event_s_own_timer),
    T(text_over_long_line_is_too_large_and_the_next_goes_on),
    T(reconfigured_limit_applies_to_new_connections),
    T(binary_frames_get_ack_frames_in_order),
    T(binary_frame_cut_by_eof_is_answered_invalid),
    T(client_over_max_clients_is_told_why_and_closed),
    T(peer_outside_the_allow_lists_is_denied),
    T(socket_file_gets_the_configured_mode),
    T(stale_socket_is_replaced_and_other_files_refused),
    T(stop_without_clients_calls_idle_at_once),
    T(stop_calls_idle_once_every_reply_is_out),
    T(line_sent_while_stopping_is_answered_shutting_down),
    T(close_with_clients_connected_frees_everything),
    T(replies_of_a_group_commit_go_out_at_the_end_of_the_turn),
    T(replies_ready_when_the_ingest_closes_are_still_counted),
#undef T
    cmocka_unit_test(replies_match_printf_and_protobuf_c_byte_for_byte),
    cmocka_unit_test(decimal_fields_at_every_digit_boundary),
  };

  /* A client gone before its reply must not kill the test process. */
  signal(SIGPIPE, SIG_IGN);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
