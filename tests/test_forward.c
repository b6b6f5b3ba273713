/* test_forward.c: lib/emd_forward.c. First the reply table of SPEC 4, row
 * by row through emd_forward_classify(); then the forwarder for real: a
 * real spool in a temp dir, a real loop, and the project's test upstream
 * (tests/upstream, EMD_UPSTREAM) as a subprocess, scripted to fail. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>
/* the inputs of emd_forward_classify() are curl's transfer results, and
 * the tests speak to the upstream's control interface with curl too */
#include <curl/curl.h>

#include "emd_arena.h"
#include "emd_config.h"
#include "emd_forward.h"
#include "emd_log.h"
#include "emd_spool.h"

/* Batch sizes every row is tried with: one event, two, a full batch. */
static const size_t sizes[] = { 1, 2, 500 };
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

static void expect_status(long status, enum emd_verdict one,
                          enum emd_verdict many)
{
  size_t i;

  for (i = 0; i < N_SIZES; i++) {
    enum emd_verdict want = sizes[i] == 1 ? one : many;
    enum emd_verdict got = emd_forward_classify(CURLE_OK, status, sizes[i]);
    if (got != want)
      fail_msg("HTTP %ld for %zu events: verdict %d, want %d", status,
               sizes[i], (int)got, (int)want);
  }
}

static void any_2xx_is_done(void **state)
{
  static const long statuses[] = { 200, 201, 202, 204, 206, 299 };
  size_t i;

  for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
    expect_status(statuses[i], EMD_DONE, EMD_DONE);
}

static void status_401_pauses_and_never_dead_letters(void **state)
{
  expect_status(401, EMD_PAUSE, EMD_PAUSE);
}

static void status_403_pauses_like_401(void **state)
{
  expect_status(403, EMD_PAUSE, EMD_PAUSE);
}

static void status_404_and_405_pause_as_misconfigured(void **state)
{
  expect_status(404, EMD_PAUSE, EMD_PAUSE);
  expect_status(405, EMD_PAUSE, EMD_PAUSE);
}

static void status_408_429_and_5xx_retry(void **state)
{
  static const long statuses[] = { 408, 429, 500, 502, 503, 504, 599 };
  size_t i;

  for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
    expect_status(statuses[i], EMD_RETRY, EMD_RETRY);
}

static void connection_errors_and_timeouts_retry(void **state)
{
  static const int codes[] = {
    CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_CONNECT,
    CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
    CURLE_GOT_NOTHING, CURLE_SSL_CONNECT_ERROR, CURLE_HTTP2,
    CURLE_HTTP2_STREAM, CURLE_PEER_FAILED_VERIFICATION,
  };
  size_t i, j;

  for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    for (j = 0; j < N_SIZES; j++)
      assert_int_equal(emd_forward_classify(codes[i], 0, sizes[j]),
                       EMD_RETRY);
  }
}

static void a_reply_cut_after_its_status_line_retries(void **state)
{
  /* the status was 200, but the body never arrived whole: no verdicts */
  assert_int_equal(emd_forward_classify(CURLE_PARTIAL_FILE, 200, 10),
                   EMD_RETRY);
  assert_int_equal(emd_forward_classify(CURLE_RECV_ERROR, 200, 1),
                   EMD_RETRY);
  assert_int_equal(emd_forward_classify(CURLE_OPERATION_TIMEDOUT, 400, 10),
                   EMD_RETRY);
}

static void status_413_splits_a_batch_and_dead_letters_one_event(void **state)
{
  expect_status(413, EMD_DEAD, EMD_SPLIT);
}

static void status_400_and_422_split_a_batch_and_dead_letter_one(void **s)
{
  expect_status(400, EMD_DEAD, EMD_SPLIT);
  expect_status(422, EMD_DEAD, EMD_SPLIT);
}

static void other_4xx_dead_letter_a_single_event(void **state)
{
  static const long statuses[] = { 402, 406, 409, 410, 411, 415, 418, 451,
                                   499 };
  size_t i;

  /* a batch is halved first, so one bad event cannot sink the rest */
  for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
    expect_status(statuses[i], EMD_DEAD, EMD_SPLIT);
}

static void redirects_and_unusable_endpoints_pause(void **state)
{
  expect_status(301, EMD_PAUSE, EMD_PAUSE);
  expect_status(302, EMD_PAUSE, EMD_PAUSE);
  expect_status(308, EMD_PAUSE, EMD_PAUSE);
  assert_int_equal(emd_forward_classify(CURLE_URL_MALFORMAT, 0, 5),
                   EMD_PAUSE);
  assert_int_equal(emd_forward_classify(CURLE_UNSUPPORTED_PROTOCOL, 0, 1),
                   EMD_PAUSE);
  assert_int_equal(emd_forward_classify(CURLE_SSL_CACERT_BADFILE, 0, 1),
                   EMD_PAUSE);
}

static void nonsense_statuses_retry_rather_than_lose_events(void **state)
{
  expect_status(0, EMD_RETRY, EMD_RETRY);
  expect_status(100, EMD_RETRY, EMD_RETRY);
  expect_status(600, EMD_RETRY, EMD_RETRY);
  expect_status(999, EMD_RETRY, EMD_RETRY);
  expect_status(-1, EMD_RETRY, EMD_RETRY);
}

static void state_names_match_the_status_reply(void **state)
{
  assert_string_equal(emd_forward_state_name(EMD_FWD_OK), "ok");
  assert_string_equal(emd_forward_state_name(EMD_FWD_BACKOFF), "backoff");
  assert_string_equal(emd_forward_state_name(EMD_FWD_UNAUTHORIZED),
                      "unauthorized");
  assert_string_equal(emd_forward_state_name(EMD_FWD_FORBIDDEN),
                      "forbidden");
  assert_string_equal(emd_forward_state_name(EMD_FWD_MISCONFIGURED),
                      "misconfigured");
  assert_string_equal(emd_forward_state_name(42), "?");
}

/* ---- the forwarder against the test upstream -------------------------- */

#ifndef EMD_UPSTREAM
#error "EMD_UPSTREAM (the path of emd-upstream) comes from tests/CMakeLists.txt"
#endif

#define WAIT_MS 15000              /* the longest any step may take */
#define KEY_BAD "k3yBADsecret0001"
#define KEY_GOOD "k3yGOODsecret002"
/* A first pause waits uniformly up to this long (full jitter): a resume
 * within five seconds then comes from the resume, not the timer, but for
 * a chance of 1 in 720. */
#define PROBE_LATER_MS 3600000

struct canned_server;

struct fx {
  char dir[64];
  char key_path[128];
  char log_path[128];
  int log_fd;
  struct emd_config cfg;
  uv_loop_t loop;
  uv_timer_t tick;
  struct emd_spool *sp;
  struct emd_forward *fw;
  pid_t up_pid;
  char base[64];                   /* http://127.0.0.1:PORT */
  size_t appended;                 /* append callbacks seen */
  size_t append_failed;
  size_t want_appended;
  struct canned_server *canned;    /* or NULL */
  bool (*until)(struct fx *);
  bool met;
  uint64_t deadline;
};

static uint64_t now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  nanosleep(&ts, NULL);
}

static char *dupstr(const char *s)
{
  char *d = strdup(s);

  assert_non_null(d);
  return d;
}

static void set_str(char **field, const char *value)
{
  free(*field);
  *field = value != NULL ? dupstr(value) : NULL;
}

static void write_file(const char *path, const char *text)
{
  char tmp[256];
  FILE *f;

  /* aside, then renamed over: how editors and secret mounters do it */
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  f = fopen(tmp, "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
  assert_int_equal(rename(tmp, path), 0);
}

static char *read_file(const char *path)
{
  FILE *f = fopen(path, "r");
  char *buf;
  long n;

  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = calloc(1, (size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  return buf;
}

static size_t count_substr(const char *hay, const char *needle)
{
  size_t n = 0;

  while ((hay = strstr(hay, needle)) != NULL) {
    n++;
    hay += strlen(needle);
  }
  return n;
}

/* ---- the loop ---------------------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
  struct fx *fx = t->data;

  if (fx->until(fx)) {
    fx->met = true;
    uv_stop(&fx->loop);
  } else if (uv_now(&fx->loop) >= fx->deadline) {
    uv_stop(&fx->loop);
  }
}

/* Runs the loop until pred holds (true) or ms pass (false). */
static bool run_until(struct fx *fx, bool (*pred)(struct fx *), uint64_t ms)
{
  fx->until = pred;
  fx->met = false;
  uv_update_time(&fx->loop);
  fx->deadline = uv_now(&fx->loop) + ms;
  uv_timer_start(&fx->tick, on_tick, 0, 5);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  uv_timer_stop(&fx->tick);
  return fx->met;
}

static bool never(struct fx *fx)
{
  return false;
}

static void run_for(struct fx *fx, uint64_t ms)
{
  run_until(fx, never, ms);
}

static bool all_appended(struct fx *fx)
{
  return fx->appended >= fx->want_appended;
}

static struct emd_spool_stats spool_stats(struct fx *fx)
{
  struct emd_spool_stats st;

  emd_spool_stats(fx->sp, &st);
  return st;
}

static struct emd_forward_stats fw_stats(struct fx *fx)
{
  struct emd_forward_stats st;

  emd_forward_stats(fx->fw, &st);
  return st;
}

/* Nothing pending, nothing in flight. */
static bool drained(struct fx *fx)
{
  return spool_stats(fx).pending == 0 && fw_stats(fx).inflight == 0;
}

static bool unauthorized(struct fx *fx)
{
  return fw_stats(fx).state == EMD_FWD_UNAUTHORIZED;
}

static bool forbidden(struct fx *fx)
{
  return fw_stats(fx).state == EMD_FWD_FORBIDDEN;
}

static bool misconfigured(struct fx *fx)
{
  return fw_stats(fx).state == EMD_FWD_MISCONFIGURED;
}

static bool in_flight(struct fx *fx)
{
  return fw_stats(fx).inflight > 0;
}

/* ---- events ------------------------------------------------------------ */

static void make_id(size_t i, char *out, size_t n)
{
  snprintf(out, n, "evt%012zu", i);
}

static emd_event *make_event(struct emd_arena *a, size_t i)
{
  emd_event *ev = emd_arena_alloc(a, sizeof(*ev));
  emd_tevent *te = emd_arena_alloc(a, sizeof(*te));
  Buildless__Telemetry__EventContext *ctx = emd_arena_alloc(a, sizeof(*ctx));
  Buildless__Telemetry__EventContext **ctxs = emd_arena_alloc(a, sizeof(ctx));
  Buildless__Telemetry__EventDetail *det = emd_arena_alloc(a, sizeof(*det));
  Buildless__Telemetry__EventTiming *tim = emd_arena_alloc(a, sizeof(*tim));
  uint8_t *timer = emd_arena_calloc(a, 16);
  char id[32];

  assert_true(ev && te && ctx && ctxs && det && tim && timer);
  buildless__service__v1__event__init(ev);
  buildless__telemetry__telemetry_event__init(te);
  buildless__telemetry__event_context__init(ctx);
  buildless__telemetry__event_detail__init(det);
  buildless__telemetry__event_timing__init(tim);
  make_id(i, id, sizeof(id));
  ev->collection = "Build";
  ev->event = te;
  te->id = emd_arena_strndup(a, id, strlen(id));
  ctx->type = "type.googleapis.com/buildless.context.Build";
  ctx->event = "started";
  ctxs[0] = ctx;
  te->n_context = 1;
  te->context = ctxs;
  te->detail = det;
  tim->occurred = now_ms();
  te->timing = tim;
  timer[0] = 0x42;
  te->timer.data = timer;
  te->timer.len = 16;
  return ev;
}

static void on_appended(void *data, const struct emd_spool_result *res)
{
  struct fx *fx = data;

  fx->appended++;
  if (res->rc != 0 || res->duplicate)
    fx->append_failed++;
}

/* Spools events first..first+n-1 and waits until they are durable. */
static void append_events(struct fx *fx, size_t first, size_t n)
{
  size_t i;

  fx->want_appended = fx->appended + n;
  for (i = first; i < first + n; i++) {
    emd_event *ev = make_event(emd_spool_arena(fx->sp), i);
    assert_int_equal(emd_spool_append(fx->sp, ev, on_appended, fx), 0);
  }
  assert_true(run_until(fx, all_appended, WAIT_MS));
  assert_int_equal(fx->append_failed, 0);
}

/* ---- the upstream ------------------------------------------------------ */

struct text {
  char *data;
  size_t len;
};

static size_t on_ctl_body(char *p, size_t size, size_t nmemb, void *data)
{
  struct text *b = data;
  size_t n = size * nmemb;
  char *d = realloc(b->data, b->len + n + 1);

  if (d == NULL)
    return 0;
  memcpy(d + b->len, p, n);
  b->data = d;
  b->len += n;
  d[b->len] = '\0';
  return n;
}

/* GET (post NULL) or POST a /_test/ call; returns the body (free()). */
static char *ctl(struct fx *fx, const char *path, const char *post)
{
  struct text body = { 0 };
  char url[256];
  long status = 0;
  CURL *c = curl_easy_init();

  assert_non_null(c);
  snprintf(url, sizeof(url), "%s%s", fx->base, path);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_ctl_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  if (post != NULL)
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
  assert_int_equal(curl_easy_perform(c), CURLE_OK);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  if (status != 200)
    fail_msg("%s: HTTP %ld: %s", path, status, body.data ? body.data : "");
  if (body.data == NULL)
    body.data = dupstr("");
  return body.data;
}

static void ctl_post(struct fx *fx, const char *path, const char *json)
{
  free(ctl(fx, path, json));
}

static uint64_t json_u64(const char *text, const char *key)
{
  char pat[64];
  const char *p;

  snprintf(pat, sizeof(pat), "\"%s\":", key);
  p = strstr(text, pat);
  if (p == NULL)
    fail_msg("no %s in %s", key, text);
  return strtoull(p + strlen(pat), NULL, 10);
}

static uint64_t up_stat(struct fx *fx, const char *key)
{
  char *stats = ctl(fx, "/_test/stats", NULL);
  uint64_t v = json_u64(stats, key);

  free(stats);
  return v;
}

/* Starts emd-upstream with extra arguments (NULL-terminated) on a free
 * port and points the config at it. */
static void up_start(struct fx *fx, const char *const *extra)
{
  char port_file[128], *text;
  const char *argv[24] = { EMD_UPSTREAM, "--listen", "127.0.0.1:0",
                           "--port-file", port_file, "--quiet" };
  size_t n = 6;
  int i;

  snprintf(port_file, sizeof(port_file), "%s/port", fx->dir);
  while (extra != NULL && *extra != NULL && n < 23)
    argv[n++] = *extra++;
  argv[n] = NULL;
  fx->up_pid = fork();
  assert_true(fx->up_pid >= 0);
  if (fx->up_pid == 0) {
    execv(EMD_UPSTREAM, (char *const *)argv);
    _exit(127);
  }
  for (i = 0; i < 1000 && access(port_file, R_OK) != 0; i++)
    sleep_ms(10);
  text = read_file(port_file);
  snprintf(fx->base, sizeof(fx->base), "http://127.0.0.1:%d", atoi(text));
  free(text);
  set_str(&fx->cfg.upstream.endpoint, fx->base);
}

static void up_stop(struct fx *fx)
{
  int status = 0;

  if (fx->up_pid <= 0)
    return;
  kill(fx->up_pid, SIGTERM);
  assert_int_equal(waitpid(fx->up_pid, &status, 0), fx->up_pid);
  fx->up_pid = 0;
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- replies the test upstream does not give ---------------------------- */

/* A one-thread HTTP/1.1 server that answers each request with the next
 * canned reply (then 200 with an empty body), for replies that parse
 * partly or mislead. It serves one connection at a time, so tests that
 * use it keep max_inflight at 1. It counts what each request carried:
 * delimited messages (protobuf) or lines (JSON). */
#define CANNED_MAX 8

struct canned {
  int status;
  const char *type;                /* Content-Type */
  char *body;
  size_t len;
};

struct canned_server {
  int lfd;
  pthread_t thread;
  pthread_mutex_t mu;
  struct canned replies[CANNED_MAX];
  size_t n_replies;
  size_t served;                   /* requests answered */
  size_t carried[32];              /* events in request i */
};

static void canned_add(struct canned *c, const void *p, size_t n)
{
  c->body = realloc(c->body, c->len + n);
  assert_non_null(c->body);
  memcpy(c->body + c->len, p, n);
  c->len += n;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
  size_t n = 0;

  for (; v >= 0x80; v >>= 7)
    p[n++] = (uint8_t)(v | 0x80);
  p[n++] = (uint8_t)v;
  return n;
}

/* Appends one EventID, delimited unless single. */
static void canned_event_id(struct canned *c, bool ok, const char *eid,
                            bool single)
{
  emd_event_id m = BUILDLESS__SERVICE__V1__EVENT_ID__INIT;
  uint8_t buf[256];
  size_t n = 0, len;

  m.ok = ok;
  m.eid = (char *)eid;
  len = buildless__service__v1__event_id__get_packed_size(&m);
  if (!single)
    n = put_varint(buf, len);
  buildless__service__v1__event_id__pack(&m, buf + n);
  canned_add(c, buf, n + len);
}

static size_t count_carried(const uint8_t *p, size_t len, bool json)
{
  const uint8_t *end = p + len;
  size_t n = 0;

  if (json) {
    for (; p < end; p++)
      n += *p == '\n';
    return n;
  }
  while (p < end) {
    uint64_t l = 0;
    unsigned shift = 0;
    while (p < end && (*p & 0x80)) {
      l |= (uint64_t)(*p++ & 0x7f) << shift;
      shift += 7;
    }
    if (p == end)
      break;
    l |= (uint64_t)*p++ << shift;
    p += l;
    n++;
  }
  return n;
}

/* Reads one request and answers it; -1 when the connection ends. */
static int canned_serve(struct canned_server *cs, int fd)
{
  static const struct canned empty = { 200, "application/x-protobuf",
                                       NULL, 0 };
  char head[8192], *eoh = NULL, *cl;
  size_t have = 0, body_len, i;
  uint8_t *body;
  const struct canned *r;
  ssize_t got;
  int hlen;

  while (eoh == NULL) {
    got = read(fd, head + have, sizeof(head) - 1 - have);
    if (got <= 0)
      return -1;
    have += (size_t)got;
    head[have] = '\0';
    eoh = strstr(head, "\r\n\r\n");
  }
  cl = strcasestr(head, "Content-Length:");
  body_len = cl != NULL ? strtoul(cl + 15, NULL, 10) : 0;
  body = malloc(body_len + 1);
  if (body == NULL)
    return -1;
  i = have - (size_t)(eoh + 4 - head);
  memcpy(body, eoh + 4, i);
  while (i < body_len && (got = read(fd, body + i, body_len - i)) > 0)
    i += (size_t)got;
  pthread_mutex_lock(&cs->mu);
  if (cs->served < 32)
    cs->carried[cs->served] = count_carried(body, body_len,
                              strcasestr(head, "application/json") != NULL);
  r = cs->served < cs->n_replies ? &cs->replies[cs->served] : &empty;
  cs->served++;
  pthread_mutex_unlock(&cs->mu);
  free(body);
  hlen = snprintf(head, sizeof(head), "HTTP/1.1 %d Canned\r\n"
                  "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                  r->status, r->type, r->len);
  if (write(fd, head, (size_t)hlen) != hlen ||
      (r->len > 0 && write(fd, r->body, r->len) != (ssize_t)r->len))
    return -1;
  return 0;
}

static void *canned_main(void *arg)
{
  struct canned_server *cs = arg;
  int fd;

  while ((fd = accept(cs->lfd, NULL, NULL)) >= 0) {
    while (canned_serve(cs, fd) == 0)
      ;
    close(fd);
  }
  return NULL;
}

/* Starts the server with its replies (taken over) and points the config
 * at it. */
static struct canned_server *canned_start(struct fx *fx,
                                          const struct canned *replies,
                                          size_t n)
{
  struct canned_server *cs = calloc(1, sizeof(*cs));
  struct sockaddr_in sa = { .sin_family = AF_INET };
  socklen_t sl = sizeof(sa);

  assert_non_null(cs);
  assert_true(n <= CANNED_MAX);
  memcpy(cs->replies, replies, n * sizeof(*replies));
  cs->n_replies = n;
  pthread_mutex_init(&cs->mu, NULL);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cs->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(cs->lfd >= 0);
  assert_int_equal(bind(cs->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(listen(cs->lfd, 8), 0);
  assert_int_equal(getsockname(cs->lfd, (struct sockaddr *)&sa, &sl), 0);
  assert_int_equal(pthread_create(&cs->thread, NULL, canned_main, cs), 0);
  snprintf(fx->base, sizeof(fx->base), "http://127.0.0.1:%d",
           ntohs(sa.sin_port));
  set_str(&fx->cfg.upstream.endpoint, fx->base);
  fx->cfg.upstream.max_inflight = 1;
  fx->canned = cs;
  return cs;
}

/* After the forwarder closed its connections. NULL-safe. */
static void canned_stop(struct canned_server *cs)
{
  size_t i;

  if (cs == NULL)
    return;
  shutdown(cs->lfd, SHUT_RDWR);     /* accept() returns */
  pthread_join(cs->thread, NULL);
  close(cs->lfd);
  for (i = 0; i < cs->n_replies; i++)
    free(cs->replies[i].body);
  pthread_mutex_destroy(&cs->mu);
  free(cs);
}

static size_t canned_served(struct canned_server *cs, size_t *carried,
                            size_t max)
{
  size_t n;

  pthread_mutex_lock(&cs->mu);
  n = cs->served;
  memcpy(carried, cs->carried, (max < 32 ? max : 32) * sizeof(*carried));
  pthread_mutex_unlock(&cs->mu);
  return n;
}

/* ---- fixture ----------------------------------------------------------- */

static int fx_setup(void **state)
{
  struct fx *fx = calloc(1, sizeof(*fx));
  char path[128];

  assert_non_null(fx);
  strcpy(fx->dir, "/tmp/emd-forward-XXXXXX");
  assert_non_null(mkdtemp(fx->dir));
  snprintf(path, sizeof(path), "%s/secrets", fx->dir);
  assert_int_equal(mkdir(path, 0700), 0);
  snprintf(fx->key_path, sizeof(fx->key_path), "%s/key", path);
  snprintf(fx->log_path, sizeof(fx->log_path), "%s/log", fx->dir);
  fx->log_fd = open(fx->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
  assert_true(fx->log_fd >= 0);
  emd_log_setup(EMD_LOG_DEBUG, EMD_LOG_TEXT, false, fx->log_fd);
  assert_int_equal(uv_loop_init(&fx->loop), 0);
  uv_timer_init(&fx->loop, &fx->tick);
  fx->tick.data = fx;

  assert_int_equal(emd_config_defaults(&fx->cfg), 0);
  snprintf(path, sizeof(path), "%s/spool", fx->dir);
  assert_int_equal(mkdir(path, 0700), 0);
  set_str(&fx->cfg.spool.dir, path);
  fx->cfg.spool.sync = EMD_SYNC_NONE;
  fx->cfg.upstream.batch_linger_ms = 20;
  fx->cfg.upstream.retry_initial_ms = 50;
  fx->cfg.upstream.retry_max_ms = 400;
  fx->cfg.upstream.auth_retry_max_ms = PROBE_LATER_MS;
  fx->cfg.upstream.connect_timeout_ms = 2000;
  fx->cfg.upstream.timeout_ms = 5000;
  *state = fx;
  return 0;
}

/* The spool committed: what emitd's main does too. */
static void on_spool_changed(void *data)
{
  struct fx *fx = data;

  if (fx->fw != NULL)
    emd_forward_kick(fx->fw);
}

/* Opens the spool and the forwarder on the config as the test left it. */
static void fx_open(struct fx *fx)
{
  char err[256];

  assert_int_equal(emd_spool_open(&fx->loop, &fx->cfg, &fx->sp, err,
                                  sizeof(err)), 0);
  emd_spool_set_changed_cb(fx->sp, on_spool_changed, fx);
  assert_int_equal(emd_forward_open(&fx->loop, &fx->cfg, fx->sp, &fx->fw),
                   0);
}

static void rm_tree(const char *dir)
{
  char cmd[256];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

static int fx_teardown(void **state)
{
  struct fx *fx = *state;

  emd_forward_close(fx->fw);
  emd_spool_close(fx->sp);
  uv_close((uv_handle_t *)&fx->tick, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&fx->loop), 0);
  up_stop(fx);
  canned_stop(fx->canned);
  emd_log_setup(EMD_LOG_INFO, EMD_LOG_TEXT, false, 2);
  close(fx->log_fd);
  rm_tree(fx->dir);
  emd_config_free(&fx->cfg);
  free(fx);
  return 0;
}
/* ---- what arrived ------------------------------------------------------ */

struct arrival {
  uint64_t req;
  uint64_t pos;
  bool fin;
  size_t idx;                      /* the number in the event's id */
};

/* Reads /_test/events into arrivals; checks each line's path, encoding
 * and content encoding on the way. Returns how many. */
static size_t arrivals(struct fx *fx, struct arrival *out, size_t max,
                       const char *path, const char *encoding,
                       const char *content_encoding)
{
  char *text = ctl(fx, "/_test/events", NULL), *line, *save = NULL, pat[96];
  size_t n = 0;

  for (line = strtok_r(text, "\n", &save); line != NULL;
       line = strtok_r(NULL, "\n", &save)) {
    const char *fin = strstr(line, "\"fin\":"), *id = strstr(line, "\"id\":\"");
    assert_true(n < max);
    assert_non_null(fin);
    assert_non_null(id);
    snprintf(pat, sizeof(pat), "\"path\":\"%s\"", path);
    assert_non_null(strstr(line, pat));
    snprintf(pat, sizeof(pat), "\"encoding\":\"%s\"", encoding);
    assert_non_null(strstr(line, pat));
    snprintf(pat, sizeof(pat), "\"content_encoding\":\"%s\"",
             content_encoding);
    assert_non_null(strstr(line, pat));
    out[n].req = json_u64(line, "req");
    out[n].pos = json_u64(line, "pos");
    out[n].fin = strncmp(fin + 6, "true", 4) == 0;
    out[n].idx = (size_t)strtoull(id + 9, NULL, 10);  /* past "evt" */
    n++;
  }
  free(text);
  return n;
}

/* Every event 0..n-1 arrived, each request in seq order with fin on its
 * last event only; returns the number of requests. */
static size_t check_arrivals(const struct arrival *a, size_t count, size_t n)
{
  bool *seen = calloc(n, sizeof(*seen));
  size_t i, j, reqs = 0;

  assert_non_null(seen);
  for (i = 0; i < count; i++) {
    bool last = true;
    assert_true(a[i].idx < n);
    seen[a[i].idx] = true;
    for (j = 0; j < count; j++) {
      if (a[j].req != a[i].req)
        continue;
      if (a[j].pos > a[i].pos)
        last = false;
      if (a[j].pos > a[i].pos)
        assert_true(a[j].idx > a[i].idx);
    }
    if (a[i].fin != last)
      fail_msg("event %zu (req %llu pos %llu): fin %d", a[i].idx,
               (unsigned long long)a[i].req, (unsigned long long)a[i].pos,
               (int)a[i].fin);
    reqs += a[i].pos == 0;
  }
  for (i = 0; i < n; i++) {
    if (!seen[i])
      fail_msg("event %zu never arrived", i);
  }
  free(seen);
  return reqs;
}

/* Spools n events under the config's mode, encoding and compression and
 * checks that every one arrives once, as that mode sends it. */
static void deliver(struct fx *fx, enum emd_mode mode, enum emd_encoding enc,
                    enum emd_compression comp, size_t n)
{
  static const char *const comps[] = { "none", "gzip", "zstd" };
  bool single = mode == EMD_MODE_SINGLE;
  struct arrival *a = calloc(n, sizeof(*a));
  size_t count, reqs;

  assert_non_null(a);
  fx->cfg.upstream.mode = mode;
  fx->cfg.upstream.encoding = enc;
  fx->cfg.upstream.compression = comp;
  up_start(fx, NULL);
  fx_open(fx);
  append_events(fx, 0, n);
  assert_true(run_until(fx, drained, WAIT_MS));
  count = arrivals(fx, a, n,
                   single ? "/v1/telemetry/event:emit"
                          : "/v1/telemetry/event:stream",
                   enc == EMD_ENC_JSON ? "json" : "protobuf", comps[comp]);
  assert_int_equal(count, n);              /* each event once */
  reqs = check_arrivals(a, count, n);
  if (single)
    assert_int_equal(reqs, n);
  else
    assert_true(reqs < n);                 /* batched */
  assert_int_equal(spool_stats(fx).dead, 0);
  assert_int_equal(fw_stats(fx).sent, n);
  assert_int_equal(fw_stats(fx).state, EMD_FWD_OK);
  free(a);
}

static void batch_mode_sends_every_event_once_with_fin_on_each_last(void **s)
{
  struct fx *fx = *s;
  struct emd_forward_stats st;

  deliver(fx, EMD_MODE_BATCH, EMD_ENC_PROTOBUF, EMD_COMP_NONE, 1200);
  st = fw_stats(fx);
  /* batch_max_events is 500: at least three requests, none larger */
  assert_true(st.requests_2xx >= 3);
  assert_int_equal(st.batch_count[EMD_FORWARD_BATCH_BUCKETS - 1], 0);
  assert_int_equal(st.batch_events, 1200);
}

/* Spools n events, two of each packed length from base + 3 up (base: the
 * length without a scope), by padding Event.scope. */
static size_t append_sized_events(struct fx *fx, size_t n)
{
  static char pad[128];
  size_t base;

  memset(pad, 'p', sizeof(pad) - 1);
  fx->want_appended = fx->appended + n;
  for (size_t i = 0; i < n; i++) {
    emd_event *ev = make_event(emd_spool_arena(fx->sp), i);

    base = buildless__service__v1__event__get_packed_size(ev);
    ev->scope = pad + sizeof(pad) - 1 - (1 + i / 2);  /* 2 + 1 + i/2 bytes */
    assert_int_equal(buildless__service__v1__event__get_packed_size(ev),
                     base + 3 + i / 2);
    assert_int_equal(emd_spool_append(fx->sp, ev, on_appended, fx), 0);
  }
  assert_true(run_until(fx, all_appended, WAIT_MS));
  assert_int_equal(fx->append_failed, 0);
  return base;
}

/* The body is the batch's own buffer with fin set in place, unless the
 * last event's length (+2 for fin) needs one more varint byte (126 and
 * 127 bytes): then it is a copy. Either way every event arrives once with
 * fin on each last, after a 500 (the same batch again) and a 413 (split
 * in two). */
static void fin_is_set_on_last_events_of_every_length(void **s)
{
  struct fx *fx = *s;
  struct arrival a[64];
  size_t base, count;

  fx->cfg.upstream.batch_max_events = 2;
  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"status\":500},{\"status\":413}]");
  fx_open(fx);
  base = append_sized_events(fx, 64);
  assert_true(base + 3 <= 126 && base + 3 + 31 >= 129);
  assert_true(run_until(fx, drained, WAIT_MS));
  count = arrivals(fx, a, 64, "/v1/telemetry/event:stream", "protobuf",
                   "none");
  assert_int_equal(count, 64);
  check_arrivals(a, count, 64);
  assert_int_equal(up_stat(fx, "unique_ids"), 64);
  assert_int_equal(spool_stats(fx).dead, 0);
  assert_int_equal(fw_stats(fx).sent, 64);
  assert_true(fw_stats(fx).requests_4xx >= 1);
  assert_true(fw_stats(fx).requests_5xx >= 1);
}

static void batch_mode_json_with_gzip_arrives(void **s)
{
  deliver(*s, EMD_MODE_BATCH, EMD_ENC_JSON, EMD_COMP_GZIP, 300);
}

static void batch_mode_protobuf_with_zstd_arrives(void **s)
{
  deliver(*s, EMD_MODE_BATCH, EMD_ENC_PROTOBUF, EMD_COMP_ZSTD, 300);
}

static void batch_mode_json_with_zstd_arrives(void **s)
{
  deliver(*s, EMD_MODE_BATCH, EMD_ENC_JSON, EMD_COMP_ZSTD, 300);
}

static void single_mode_sends_one_event_per_request(void **s)
{
  deliver(*s, EMD_MODE_SINGLE, EMD_ENC_PROTOBUF, EMD_COMP_NONE, 25);
}

static void single_mode_json_with_gzip_arrives(void **s)
{
  deliver(*s, EMD_MODE_SINGLE, EMD_ENC_JSON, EMD_COMP_GZIP, 25);
}

static void single_mode_protobuf_with_zstd_arrives(void **s)
{
  deliver(*s, EMD_MODE_SINGLE, EMD_ENC_PROTOBUF, EMD_COMP_ZSTD, 25);
}

static void a_batch_larger_than_batch_max_bytes_is_cut(void **s)
{
  struct fx *fx = *s;

  /* each event is about 110 bytes: about 9 to a request */
  fx->cfg.upstream.batch_max_bytes = 1000;
  deliver(fx, EMD_MODE_BATCH, EMD_ENC_PROTOBUF, EMD_COMP_NONE, 100);
  assert_true(fw_stats(fx).requests_2xx >= 10);
  assert_int_equal(fw_stats(fx).batch_count[0] + fw_stats(fx).batch_count[1],
                   fw_stats(fx).requests_2xx);      /* none over 10 */
}

static void every_auth_style_reaches_a_keyed_upstream(void **s)
{
  static const char *const styles[] = { "bearer", "x-api-key", "basic" };
  static const enum emd_auth auths[] = { EMD_AUTH_BEARER, EMD_AUTH_X_API_KEY,
                                         EMD_AUTH_BASIC };
  const char *args[] = { "--key", KEY_GOOD, NULL };
  struct fx *fx = *s;
  char body[128];
  size_t i;

  write_file(fx->key_path, "  " KEY_GOOD "\n");   /* trimmed */
  set_str(&fx->cfg.upstream.api_key_file, fx->key_path);
  up_start(fx, args);
  fx_open(fx);
  for (i = 0; i < 3; i++) {
    snprintf(body, sizeof(body), "{\"auth_style\":\"%s\"}", styles[i]);
    ctl_post(fx, "/_test/key", body);
    fx->cfg.upstream.auth = auths[i];
    assert_int_equal(emd_forward_reconfigure(fx->fw, &fx->cfg), 0);
    append_events(fx, 10 * i, 10);
    assert_true(run_until(fx, drained, WAIT_MS));
    assert_int_equal(up_stat(fx, "unique_ids"), 10 * (i + 1));
  }
  assert_int_equal(fw_stats(fx).requests_4xx, 0);
}

static void unauthorized_pauses_and_a_key_file_rewrite_resumes(void **s)
{
  const char *args[] = { "--key", KEY_GOOD, NULL };
  struct fx *fx = *s;
  struct emd_forward_stats st;
  uint64_t t0;
  char *log;

  write_file(fx->key_path, KEY_BAD "\n");
  set_str(&fx->cfg.upstream.api_key_file, fx->key_path);
  /* the next probe would likely come minutes later: only the watch can
   * be quick */
  fx->cfg.upstream.retry_initial_ms = PROBE_LATER_MS;
  up_start(fx, args);
  fx_open(fx);
  append_events(fx, 0, 30);
  assert_true(run_until(fx, unauthorized, WAIT_MS));
  run_for(fx, 300);
  st = fw_stats(fx);
  assert_int_equal(st.state, EMD_FWD_UNAUTHORIZED);
  assert_int_equal(st.last_status, 401);
  assert_int_equal(st.sent, 0);
  assert_int_equal(st.dead_status + st.dead_rejected + st.dead_attempts, 0);
  assert_int_equal(spool_stats(fx).pending, 30);
  assert_int_equal(spool_stats(fx).dead, 0);

  t0 = now_ms();
  write_file(fx->key_path, KEY_GOOD "\n");
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_true(now_ms() - t0 < 5000);
  assert_int_equal(up_stat(fx, "unique_ids"), 30);
  assert_int_equal(fw_stats(fx).state, EMD_FWD_OK);
  assert_int_equal(spool_stats(fx).dead, 0);

  log = read_file(fx->log_path);
  assert_non_null(strstr(log, "API key changed"));
  assert_int_equal(count_substr(log, "upstream unauthorized"), 1);
  assert_null(strstr(log, KEY_BAD));
  assert_null(strstr(log, KEY_GOOD));
  free(log);
}

static void forbidden_pauses_until_a_reload_brings_another_key(void **s)
{
  const char *args[] = { "--forbid", KEY_BAD, NULL };
  struct fx *fx = *s;

  set_str(&fx->cfg.upstream.api_key, KEY_BAD);
  fx->cfg.upstream.retry_initial_ms = PROBE_LATER_MS;
  up_start(fx, args);
  fx_open(fx);
  append_events(fx, 0, 12);
  assert_true(run_until(fx, forbidden, WAIT_MS));
  run_for(fx, 200);
  assert_int_equal(spool_stats(fx).pending, 12);
  assert_int_equal(spool_stats(fx).dead, 0);

  set_str(&fx->cfg.upstream.api_key, KEY_GOOD);
  assert_int_equal(emd_forward_reconfigure(fx->fw, &fx->cfg), 0);
  assert_true(run_until(fx, drained, 5000));
  assert_int_equal(up_stat(fx, "unique_ids"), 12);
  assert_int_equal(fw_stats(fx).state, EMD_FWD_OK);
}

static void a_wrong_endpoint_pauses_as_misconfigured_and_drops_nothing(void **s)
{
  struct fx *fx = *s;
  char url[128];

  up_start(fx, NULL);
  snprintf(url, sizeof(url), "%s/wrong", fx->base);
  set_str(&fx->cfg.upstream.endpoint, url);
  fx->cfg.upstream.retry_initial_ms = PROBE_LATER_MS;
  fx_open(fx);
  append_events(fx, 0, 5);
  assert_true(run_until(fx, misconfigured, WAIT_MS));
  assert_int_equal(fw_stats(fx).last_status, 404);
  run_for(fx, 200);
  assert_int_equal(spool_stats(fx).pending, 5);
  assert_int_equal(spool_stats(fx).dead, 0);

  set_str(&fx->cfg.upstream.endpoint, fx->base);
  assert_int_equal(emd_forward_reconfigure(fx->fw, &fx->cfg), 0);
  assert_true(run_until(fx, drained, 5000));
  assert_int_equal(up_stat(fx, "unique_ids"), 5);
}

static void key_reload_resumes_a_paused_state_at_once(void **s)
{
  const char *args[] = { "--key", KEY_GOOD, NULL };
  struct fx *fx = *s;
  uint64_t t0;

  write_file(fx->key_path, KEY_BAD "\n");
  set_str(&fx->cfg.upstream.api_key_file, fx->key_path);
  fx->cfg.upstream.retry_initial_ms = PROBE_LATER_MS;
  up_start(fx, args);
  fx_open(fx);
  append_events(fx, 0, 8);
  assert_true(run_until(fx, unauthorized, WAIT_MS));
  /* the service lets anyone in now; the key file is as it was, so only
   * the reload (SIGHUP, emitctl reload) can end the pause early */
  ctl_post(fx, "/_test/key", "{\"key\":null}");
  run_for(fx, 200);
  assert_int_equal(spool_stats(fx).pending, 8);
  t0 = now_ms();
  emd_forward_key_reload(fx->fw);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_true(now_ms() - t0 < 5000);
  assert_int_equal(up_stat(fx, "unique_ids"), 8);
}

static void open_fails_when_the_key_file_cannot_be_read(void **s)
{
  struct fx *fx = *s;
  char err[256];

  set_str(&fx->cfg.upstream.api_key_file, fx->key_path);   /* not there */
  set_str(&fx->cfg.upstream.endpoint, "http://127.0.0.1:9");
  assert_int_equal(emd_spool_open(&fx->loop, &fx->cfg, &fx->sp, err,
                                  sizeof(err)), 0);
  assert_int_equal(emd_forward_open(&fx->loop, &fx->cfg, fx->sp, &fx->fw),
                   -ENOENT);
  fx->fw = NULL;
}

/* Arrival time (ms since the epoch) of telemetry request i (from 0). */
static uint64_t request_time(struct fx *fx, size_t i)
{
  char *log = ctl(fx, "/_test/requests", NULL), *line = log;
  uint64_t t;

  while (i-- > 0) {
    line = strchr(line, '\n');
    assert_non_null(line);
    line++;
  }
  t = json_u64(line, "t_ms");
  free(log);
  return t;
}

static void a_full_batch_goes_at_once_and_a_partial_one_lingers(void **s)
{
  struct fx *fx = *s;
  uint64_t t0;

  fx->cfg.upstream.batch_max_events = 10;
  fx->cfg.upstream.batch_linger_ms = 1000;
  up_start(fx, NULL);
  fx_open(fx);
  t0 = now_ms();
  append_events(fx, 0, 10);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_true(request_time(fx, 0) - t0 < 700);

  t0 = now_ms();
  append_events(fx, 10, 3);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_true(request_time(fx, 1) - t0 >= 950);
  assert_int_equal(up_stat(fx, "requests"), 2);
  assert_int_equal(up_stat(fx, "unique_ids"), 13);
}

/* One dead letter as emd_spool_list_dead shows it. */
struct dead_seen {
  size_t n;
  char id[32];
  char reason[16];
  unsigned status;
  bool excerpt;
};

static int on_dead(void *data, const struct emd_spool_item *it)
{
  struct dead_seen *d = data;

  d->n++;
  snprintf(d->id, sizeof(d->id), "%.*s", (int)it->id_len, it->id);
  snprintf(d->reason, sizeof(d->reason), "%.*s", (int)it->reason_len,
           it->reason);
  d->status = it->status;
  d->excerpt = it->excerpt_len > 0;
  return 0;
}

static void a_reply_with_fewer_verdicts_than_events_resends_the_rest(void **s)
{
  struct fx *fx = *s;
  struct canned r = { 200, "application/x-protobuf", NULL, 0 };
  struct canned_server *cs;
  size_t carried[4];

  canned_event_id(&r, true, "evt000000000000", false);
  canned_event_id(&r, true, "evt000000000001", false);
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 5);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 2);
  assert_int_equal(carried[0], 5);
  assert_int_equal(carried[1], 3);          /* only those without a verdict */
  assert_int_equal(fw_stats(fx).sent, 5);
  assert_int_equal(fw_stats(fx).retried, 3);
  assert_int_equal(spool_stats(fx).dead, 0);
}

static void verdicts_naming_other_events_are_not_trusted(void **s)
{
  struct fx *fx = *s;
  struct canned r = { 200, "application/x-protobuf", NULL, 0 };
  struct canned_server *cs;
  size_t carried[4];

  canned_event_id(&r, true, "evt000000000000", false);
  canned_event_id(&r, false, "evt999999999999", false);
  canned_event_id(&r, true, "evt000000000002", false);
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 3);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 2);
  assert_int_equal(carried[1], 3);          /* all again, none dead */
  assert_int_equal(spool_stats(fx).dead, 0);
  assert_int_equal(fw_stats(fx).sent, 3);
}

static void bytes_that_parse_only_as_unknown_fields_are_not_trusted(void **s)
{
  static const uint8_t unknown[] = { 0x02, 0x48, 0x01 };  /* field 9 = 1 */
  struct fx *fx = *s;
  struct canned r = { 200, "application/x-protobuf", NULL, 0 };
  struct canned_server *cs;
  size_t carried[4];

  /* three delimited messages protobuf-c reads as EventID{ok: false} */
  canned_add(&r, unknown, sizeof(unknown));
  canned_add(&r, unknown, sizeof(unknown));
  canned_add(&r, unknown, sizeof(unknown));
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 3);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 2);
  assert_int_equal(carried[1], 3);
  assert_int_equal(spool_stats(fx).dead, 0);
}

static void a_reply_over_the_size_cap_is_unreadable(void **s)
{
  struct fx *fx = *s;
  struct canned r = { 200, "application/x-protobuf", NULL, 0 };
  struct canned_server *cs;
  size_t carried[4];
  char *big = malloc(2 << 20);

  assert_non_null(big);
  memset(big, 'x', 2 << 20);
  canned_add(&r, big, 2 << 20);
  free(big);
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 3);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 2);
  assert_int_equal(carried[1], 3);
  assert_int_equal(spool_stats(fx).dead, 0);
}

static void json_lines_delete_the_accepted_and_dead_letter_the_rejected(
  void **s)
{
  static const char lines[] =
    "{\"ok\":true,\"eid\":\"evt000000000000\"}\n"
    "{\"eid\":\"evt000000000001\",\"ok\":false,\"sid\":\"s\"}\n"
    "\n"
    "{\"ok\":true,\"eid\":\"evt000000000002\"}\n";
  struct fx *fx = *s;
  struct canned r = { 200, "application/json", NULL, 0 };
  struct canned_server *cs;
  struct dead_seen d = { 0 };
  size_t carried[4];

  canned_add(&r, lines, sizeof(lines) - 1);
  fx->cfg.upstream.encoding = EMD_ENC_JSON;
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 3);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 1);
  assert_int_equal(carried[0], 3);
  assert_int_equal(fw_stats(fx).sent, 2);
  assert_int_equal(emd_spool_list_dead(fx->sp, 10, on_dead, &d), 1);
  assert_string_equal(d.id, "evt000000000001");
  assert_string_equal(d.reason, "rejected");
  assert_int_equal(d.status, 200);
  assert_true(d.excerpt);
}

static void a_json_reply_with_a_misspelt_true_is_not_trusted(void **s)
{
  static const char reply[] = "{\"ok\":tru}\n";
  struct fx *fx = *s;
  struct canned r = { 200, "application/json", NULL, 0 };
  struct canned_server *cs;
  size_t carried[4];

  canned_add(&r, reply, sizeof(reply) - 1);
  fx->cfg.upstream.encoding = EMD_ENC_JSON;
  fx->cfg.upstream.mode = EMD_MODE_SINGLE;
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 1);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 2);   /* sent again */
  assert_int_equal(fw_stats(fx).retried, 1);
  assert_int_equal(spool_stats(fx).dead, 0);
}

static void a_single_json_reply_may_span_lines(void **s)
{
  static const char reply[] =
    "{\n  \"ok\": true,\n  \"eid\": \"evt000000000000\"\n}\n";
  struct fx *fx = *s;
  struct canned r = { 200, "application/json", NULL, 0 };
  struct canned_server *cs;
  size_t carried[4];

  canned_add(&r, reply, sizeof(reply) - 1);
  fx->cfg.upstream.encoding = EMD_ENC_JSON;
  fx->cfg.upstream.mode = EMD_MODE_SINGLE;
  cs = canned_start(fx, &r, 1);
  fx_open(fx);
  append_events(fx, 0, 1);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(canned_served(cs, carried, 4), 1);
  assert_int_equal(fw_stats(fx).sent, 1);
}

static void a_poisoned_event_in_a_batch_ends_dead_alone(void **s)
{
  struct fx *fx = *s;
  struct dead_seen d = { 0 };
  char id[32], body[96], *events;

  up_start(fx, NULL);
  make_id(37, id, sizeof(id));
  snprintf(body, sizeof(body), "{\"ids\":[\"%s\"]}", id);
  ctl_post(fx, "/_test/poison", body);
  fx_open(fx);
  append_events(fx, 0, 64);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(up_stat(fx, "unique_ids"), 63);
  events = ctl(fx, "/_test/events", NULL);
  assert_null(strstr(events, id));
  free(events);
  assert_int_equal(spool_stats(fx).dead, 1);
  assert_int_equal(emd_spool_list_dead(fx->sp, 10, on_dead, &d), 1);
  assert_string_equal(d.id, id);
  assert_string_equal(d.reason, "status");
  assert_int_equal(d.status, 400);
  assert_true(d.excerpt);
  assert_int_equal(fw_stats(fx).dead_status, 1);
  assert_int_equal(fw_stats(fx).sent, 63);
}

static void an_event_the_service_rejects_becomes_a_dead_letter(void **s)
{
  struct fx *fx = *s;
  struct dead_seen d = { 0 };
  char id[32], body[96];

  up_start(fx, NULL);
  make_id(5, id, sizeof(id));
  snprintf(body, sizeof(body), "{\"ids\":[\"%s\"]}", id);
  ctl_post(fx, "/_test/reject", body);
  fx_open(fx);
  append_events(fx, 0, 20);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(up_stat(fx, "unique_ids"), 19);
  assert_int_equal(emd_spool_list_dead(fx->sp, 10, on_dead, &d), 1);
  assert_string_equal(d.id, id);
  assert_string_equal(d.reason, "rejected");
  assert_int_equal(d.status, 200);
  assert_int_equal(fw_stats(fx).dead_rejected, 1);
}

/* The arrival times of the first two telemetry requests, and the first's
 * status. */
static void first_two_requests(struct fx *fx, uint64_t *t1, uint64_t *t2,
                               uint64_t *status1)
{
  char *log = ctl(fx, "/_test/requests", NULL), *second;

  second = strchr(log, '\n');
  assert_non_null(second);
  *t1 = json_u64(log, "t_ms");
  *status1 = json_u64(log, "status");
  *t2 = json_u64(second + 1, "t_ms");
  free(log);
}

static bool backing_off(struct fx *fx)
{
  return fw_stats(fx).state == EMD_FWD_BACKOFF;
}

static void flush_sends_a_partial_batch_without_the_linger(void **s)
{
  struct fx *fx = *s;

  fx->cfg.upstream.batch_linger_ms = 600000;
  up_start(fx, NULL);
  fx_open(fx);
  append_events(fx, 0, 3);
  run_for(fx, 200);
  assert_int_equal(up_stat(fx, "requests"), 0);
  emd_forward_flush(fx->fw, true);
  assert_true(run_until(fx, drained, 5000));
  assert_int_equal(up_stat(fx, "unique_ids"), 3);
}

static void flush_ends_a_backoff_wait_at_once(void **s)
{
  struct fx *fx = *s;

  fx->cfg.upstream.retry_initial_ms = PROBE_LATER_MS;
  fx->cfg.upstream.retry_max_ms = PROBE_LATER_MS;
  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"status\":503}]");
  fx_open(fx);
  append_events(fx, 0, 4);
  assert_true(run_until(fx, backing_off, WAIT_MS));
  emd_forward_flush(fx->fw, true);
  assert_true(run_until(fx, drained, 5000));
  assert_int_equal(up_stat(fx, "unique_ids"), 4);
}

static void flush_still_honours_retry_after(void **s)
{
  struct fx *fx = *s;
  uint64_t t1, t2, status;

  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"status\":503,\"retry_after\":\"2\"}]");
  fx_open(fx);
  append_events(fx, 0, 4);
  assert_true(run_until(fx, backing_off, WAIT_MS));
  emd_forward_flush(fx->fw, true);
  assert_true(run_until(fx, drained, WAIT_MS));
  first_two_requests(fx, &t1, &t2, &status);
  assert_int_equal(status, 503);
  assert_true(t2 - t1 >= 2000);
}

static void retry_after_in_seconds_holds_the_next_request(void **s)
{
  struct fx *fx = *s;
  uint64_t t1, t2, status;

  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"status\":503,\"retry_after\":\"1\"}]");
  fx_open(fx);
  append_events(fx, 0, 10);
  assert_true(run_until(fx, drained, WAIT_MS));
  first_two_requests(fx, &t1, &t2, &status);
  assert_int_equal(status, 503);
  /* the backoff alone would be at most retry_initial (50 ms) */
  assert_true(t2 - t1 >= 1000);
  assert_true(t2 - t1 < 5000);
  assert_int_equal(up_stat(fx, "unique_ids"), 10);
  assert_int_equal(fw_stats(fx).requests_5xx, 1);
}

static void retry_after_as_an_http_date_holds_the_next_request(void **s)
{
  struct fx *fx = *s;
  uint64_t t1, t2, status;

  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"status\":429,\"retry_after_in_s\":2}]");
  fx_open(fx);
  append_events(fx, 0, 10);
  assert_true(run_until(fx, drained, WAIT_MS));
  first_two_requests(fx, &t1, &t2, &status);
  assert_int_equal(status, 429);
  /* a date has whole seconds: 2 s from the reply is more than 1 s away */
  assert_true(t2 - t1 >= 1000);
  assert_true(t2 - t1 < 6000);
  assert_int_equal(up_stat(fx, "unique_ids"), 10);
}

static void cut_and_garbled_replies_are_retried_and_nothing_is_lost(void **s)
{
  struct fx *fx = *s;

  fx->cfg.upstream.batch_max_events = 10;
  up_start(fx, NULL);
  /* accept false: the service never saw it, so an event deleted on such
   * a reply would never arrive; accepted ones come again (duplicates) */
  ctl_post(fx, "/_test/script",
           "[{\"cut\":true,\"accept\":false},"
           "{\"garbled\":true,\"accept\":false},"
           "{\"cut\":true},{\"garbled\":true}]");
  fx_open(fx);
  append_events(fx, 0, 40);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(up_stat(fx, "cuts"), 2);
  assert_int_equal(up_stat(fx, "garbled"), 2);
  assert_int_equal(up_stat(fx, "unique_ids"), 40);
  assert_true(up_stat(fx, "duplicates") >= 10);
  assert_int_equal(spool_stats(fx).dead, 0);
  assert_int_equal(fw_stats(fx).sent, 40);
  /* curl resends once by itself when a reused connection dies before
   * any reply, so one of the cuts may never reach the forwarder; the
   * garbled replies always do */
  assert_true(fw_stats(fx).requests_error >= 1);
  assert_true(fw_stats(fx).retried >= 30);
}

static void max_attempts_dead_letters_events_that_keep_failing(void **s)
{
  struct fx *fx = *s;
  struct dead_seen d = { 0 };

  fx->cfg.upstream.max_attempts = 2;
  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"status\":500,\"repeat\":2}]");
  fx_open(fx);
  append_events(fx, 0, 5);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(up_stat(fx, "requests"), 2);
  assert_int_equal(up_stat(fx, "unique_ids"), 0);
  assert_int_equal(spool_stats(fx).dead, 5);
  assert_int_equal(emd_spool_list_dead(fx->sp, 10, on_dead, &d), 5);
  assert_string_equal(d.reason, "attempts");
  assert_int_equal(d.status, 500);
  assert_int_equal(fw_stats(fx).dead_attempts, 5);
}

static void closing_with_a_request_in_flight_keeps_its_events(void **s)
{
  struct fx *fx = *s;

  up_start(fx, NULL);
  ctl_post(fx, "/_test/script", "[{\"delay_ms\":3000}]");
  fx_open(fx);
  append_events(fx, 0, 10);
  assert_true(run_until(fx, in_flight, WAIT_MS));
  emd_forward_close(fx->fw);
  fx->fw = NULL;
  run_for(fx, 100);
  assert_int_equal(spool_stats(fx).pending, 10);

  /* the next start sends them again */
  assert_int_equal(emd_forward_open(&fx->loop, &fx->cfg, fx->sp, &fx->fw),
                   0);
  emd_forward_kick(fx->fw);
  assert_true(run_until(fx, drained, WAIT_MS));
  assert_int_equal(up_stat(fx, "unique_ids"), 10);
}

/* ---- the reply reader, on its own ------------------------------------ */

static size_t pack_event(const char *id, uint8_t *out)
{
  Buildless__Service__V1__Event ev = BUILDLESS__SERVICE__V1__EVENT__INIT;
  Buildless__Telemetry__TelemetryEvent te =
    BUILDLESS__TELEMETRY__TELEMETRY_EVENT__INIT;

  te.id = (char *)id;
  ev.event = &te;
  return buildless__service__v1__event__pack(&ev, out);
}

static void reply_reader_trusts_only_verdicts_for_their_own_events(
    void **state)
{
  uint8_t a[64], b[64];
  const uint8_t *evs[2] = { a, b };
  size_t lens[2];
  int ok[2];
  /* Delimited EventIDs: ok for the first by id, not ok for the second. */
  static const uint8_t good[] = {
    0x14, 0x08, 0x01, 0x12, 0x10, 'r', 'e', 'p', 'l', 'y', 'e', 'v', 'e',
    'n', 't', '0', '0', '0', '0', '0', '1',
    0x12, 0x12, 0x10, 'r', 'e', 'p', 'l', 'y', 'e', 'v', 'e', 'n', 't',
    '0', '0', '0', '0', '0', '2',
  };
  /* The same verdicts, naming each other's events: not to be trusted. */
  static const uint8_t swapped[] = {
    0x14, 0x08, 0x01, 0x12, 0x10, 'r', 'e', 'p', 'l', 'y', 'e', 'v', 'e',
    'n', 't', '0', '0', '0', '0', '0', '2',
    0x12, 0x12, 0x10, 'r', 'e', 'p', 'l', 'y', 'e', 'v', 'e', 'n', 't',
    '0', '0', '0', '0', '0', '1',
  };
  const char *json = "{\"ok\":true}\n";

  (void)state;
  lens[0] = pack_event("replyevent000001", a);
  lens[1] = pack_event("replyevent000002", b);
  assert_int_equal(emd_forward_parse_reply(good, sizeof(good), false, false,
                                           evs, lens, 2, ok), 2);
  assert_int_equal(ok[0], 1);
  assert_int_equal(ok[1], 0);
  assert_int_equal(emd_forward_parse_reply(swapped, sizeof(swapped), false,
                                           false, evs, lens, 2, ok), -1);
  assert_int_equal(ok[0], -1);
  assert_int_equal(ok[1], -1);
  /* A short JSON reply: the first accepted, the second resent. */
  assert_int_equal(emd_forward_parse_reply(json, strlen(json), true, false,
                                           evs, lens, 2, ok), 1);
  assert_int_equal(ok[0], 1);
  assert_int_equal(ok[1], -1);
  /* An empty 2xx accepts all. */
  assert_int_equal(emd_forward_parse_reply("", 0, false, false, evs, lens,
                                           2, ok), 2);
  assert_int_equal(ok[0], 1);
  assert_int_equal(ok[1], 1);
}

/* ---- the reply reader against a reference ----------------------------- */

/* The reader as it was before its fast paths: every EventID through
 * protobuf-c, every JSON line through jsmn. emd_forward_parse_reply must
 * agree with it on every input. */
struct ref_batch {
  const uint8_t *const *events;
  const size_t *lens;
  size_t n;
};

static bool ref_id_matches(const struct ref_batch *b, size_t i,
                           const char *eid, size_t eid_len)
{
  Buildless__Service__V1__Event *ev =
    buildless__service__v1__event__unpack(NULL, b->lens[i], b->events[i]);
  bool same;

  assert_non_null(ev);
  same = ev->event != NULL && strlen(ev->event->id) == eid_len &&
         memcmp(ev->event->id, eid, eid_len) == 0;
  buildless__service__v1__event__free_unpacked(ev, NULL);
  return same;
}

static bool ref_pb_verdict(const struct ref_batch *b, size_t i,
                           const uint8_t *p, size_t len, int *ok)
{
  Buildless__Service__V1__EventID *eid =
    buildless__service__v1__event_id__unpack(NULL, len, p);
  bool trusted;

  if (eid == NULL)
    return false;
  if (eid->eid != NULL && eid->eid[0] != '\0')
    trusted = ref_id_matches(b, i, eid->eid, strlen(eid->eid));
  else
    trusted = eid->base.n_unknown_fields == 0;
  *ok = eid->ok ? 1 : 0;
  buildless__service__v1__event_id__free_unpacked(eid, NULL);
  return trusted;
}

static bool ref_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
  uint64_t x = 0;

  for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t c = *(*p)++;
    x |= (uint64_t)(c & 0x7f) << shift;
    if ((c & 0x80) == 0) {
      *v = x;
      return true;
    }
  }
  return false;
}

static bool ref_word(const char *js, const jsmntok_t *t, const char *s)
{
  size_t n = strlen(s);

  return (size_t)(t->end - t->start) == n && memcmp(js + t->start, s, n) == 0;
}

static bool ref_json_verdict(const struct ref_batch *b, size_t i,
                             const char *js, size_t len, int *ok)
{
  jsmntok_t t[32];
  jsmn_parser jp;
  int count, k;
  bool has_eid = false, unknown = false;

  *ok = 0;
  jsmn_init(&jp);
  count = jsmn_parse(&jp, js, len, t, 32);
  if (count < 1 || t[0].type != JSMN_OBJECT || t[0].end != (int)len)
    return false;
  for (k = 1; k < count;) {
    const jsmntok_t *key = &t[k], *val;
    int left = 1;

    if (k + 1 >= count)
      return false;
    val = &t[k + 1];
    if (key->type == JSMN_STRING && ref_word(js, key, "ok")) {
      if (val->type != JSMN_PRIMITIVE)
        return false;
      if (ref_word(js, val, "true"))
        *ok = 1;
      else if (!ref_word(js, val, "false") && !ref_word(js, val, "null"))
        return false;
    } else if (key->type == JSMN_STRING && ref_word(js, key, "eid")) {
      if (val->type != JSMN_STRING ||
          !ref_id_matches(b, i, js + val->start,
                          (size_t)(val->end - val->start)))
        return false;
      has_eid = true;
    } else if (!(key->type == JSMN_STRING && ref_word(js, key, "sid"))) {
      unknown = true;
    }
    for (k++; left > 0 && k < count; k++) {
      left += t[k].type == JSMN_OBJECT ? 2 * t[k].size
              : t[k].type == JSMN_ARRAY ? t[k].size : 0;
      left--;
    }
  }
  return has_eid || !unknown;
}

static bool ref_ws(char c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static long ref_parse_reply(const void *body, size_t len, bool json,
                            bool single, const struct ref_batch *b, int *ok)
{
  long got = 0;
  size_t i;

  if (len == 0) {
    for (i = 0; i < b->n; i++)
      ok[i] = 1;
    return (long)b->n;
  }
  if (json) {
    const char *p = body, *end = p + len;

    while (p < end) {
      const char *nl = single ? NULL : memchr(p, '\n', (size_t)(end - p));
      const char *s = p, *e = nl != NULL ? nl : end;

      p = nl != NULL ? nl + 1 : end;
      while (s < e && ref_ws(*s))
        s++;
      while (e > s && ref_ws(e[-1]))
        e--;
      if (s == e)
        continue;
      if ((size_t)got == b->n ||
          !ref_json_verdict(b, (size_t)got, s, (size_t)(e - s), &ok[got])) {
        got = -1;
        break;
      }
      got++;
    }
  } else if (single) {
    got = ref_pb_verdict(b, 0, body, len, &ok[0]) ? 1 : -1;
  } else {
    const uint8_t *p = body, *end = p + len;
    uint64_t l;

    while (p < end) {
      if ((size_t)got == b->n || !ref_varint(&p, end, &l) ||
          (uint64_t)(end - p) < l ||
          !ref_pb_verdict(b, (size_t)got, p, (size_t)l, &ok[got])) {
        got = -1;
        break;
      }
      p += l;
      got++;
    }
  }
  for (i = 0; i < b->n; i++)
    if (got < 0 || i >= (size_t)got)
      ok[i] = -1;
  return got;
}

static uint64_t rnd_state;

static size_t min_len(size_t a, size_t b)
{
  return a < b ? a : b;
}

static uint32_t rnd(uint32_t n)
{
  rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rnd_state >> 33) % n;
}

struct gen {
  uint8_t *p;
  size_t len, cap;
};

static void gen_put(struct gen *g, const void *p, size_t n)
{
  assert_true(g->len + n <= g->cap);
  memcpy(g->p + g->len, p, n);
  g->len += n;
}

static void gen_byte(struct gen *g, uint8_t c)
{
  gen_put(g, &c, 1);
}

static void gen_varint(struct gen *g, uint64_t v, bool long_form)
{
  while (v >= 0x80) {
    gen_byte(g, (uint8_t)(v | 0x80));
    v >>= 7;
  }
  if (long_form) {               /* a valid but not minimal varint */
    gen_byte(g, (uint8_t)(v | 0x80));
    v = 0;
  }
  gen_byte(g, (uint8_t)v);
}

/* An id for event i: its own, another event's, or a near miss. */
static void gen_id(char *out, size_t i, size_t n)
{
  static const char *const odd[] = { "", "x", "evt", "evt00000000000000001",
                                     "evt0000000000000001\\u0031" };

  switch (rnd(8)) {
  case 0:
    snprintf(out, 64, "evt%016zu", (i + 1 + rnd(2)) % (n + 1));
    break;
  case 1:
    snprintf(out, 64, "%s", odd[rnd(5)]);
    break;
  default:
    snprintf(out, 64, "evt%016zu", i);
  }
}

/* One EventID: mostly as services send them, with now and then what a
 * broken or hostile one might: other fields, other wire types, repeats,
 * long varints, a NUL in the id, unknown fields. */
static void gen_event_id(struct gen *g, size_t i, size_t n)
{
  char id[64];
  size_t parts = 1 + rnd(4);

  for (size_t k = 0; k < parts; k++) {
    uint32_t what = rnd(16);

    gen_id(id, i, n);
    if (what < 5) {
      gen_byte(g, 0x08);
      gen_varint(g, rnd(4) == 0 ? rnd(300) : rnd(2), rnd(8) == 0);
    } else if (what < 11) {
      size_t l = strlen(id);

      if (rnd(10) == 0 && l > 2)
        id[rnd((uint32_t)l)] = '\0';
      gen_byte(g, 0x12);
      gen_varint(g, l, rnd(8) == 0);
      gen_put(g, id, l);
    } else if (what < 13) {
      size_t l = rnd(200);

      gen_byte(g, 0x1a);
      gen_varint(g, l, false);
      for (size_t j = 0; j < l; j++)
        gen_byte(g, (uint8_t)('a' + j % 26));
    } else if (what == 13) {
      gen_byte(g, (uint8_t)(rnd(16) << 3 | rnd(8)));   /* any key */
      gen_varint(g, rnd(5), false);
    } else if (what == 14) {
      gen_byte(g, 0x22);                  /* unknown length-delimited */
      gen_varint(g, 2, false);
      gen_put(g, "zz", 2);
    } else {
      gen_byte(g, (uint8_t)rnd(256));
    }
    if (rnd(4) == 0)
      break;
  }
  /* the shape every service sends, most of the time */
  if (rnd(3) == 0) {
    g->len = 0;
    gen_id(id, i, n);
    if (rnd(4) != 0) {
      gen_byte(g, 0x08);
      gen_byte(g, (uint8_t)rnd(2));
    }
    gen_byte(g, 0x12);
    gen_varint(g, strlen(id), false);
    gen_put(g, id, strlen(id));
  }
}

static void gen_json_line(struct gen *g, size_t i, size_t n)
{
  static const char *const oks[] = { "true", "false", "null", "tru", "1",
                                     "\"true\"" };
  static const char *const ws[] = { "", "", "", " ", "\t", "\r\n", "\n" };
  static const char *const extra[] = { "", "", "", ",\"sid\":\"s1\"",
                                       ",\"sid\":5", ",\"x\":1",
                                       ",\"eid\":\"evt0000000000000000\"",
                                       ",\"ok\":false", ",\"sid\":\"a\\\"b\"",
                                       ",", ",\"sid\":\"a~b\"" };
  static const char *const tail[] = { "", "", "", "", " ", "}", " x", "," };
  char id[64], line[256];
  int l;

  gen_id(id, i, n);
  if (rnd(10) == 0)
    id[rnd(3)] = (char)(rnd(2) ? 0x01 : 0xc3);
  switch (rnd(4)) {
  case 0:
    l = snprintf(line, sizeof(line), "{%s\"eid\"%s:%s\"%s\"%s,\"ok\":%s%s}",
                 ws[rnd(7)], ws[rnd(7)], ws[rnd(7)], id,
                 extra[rnd(11)], oks[rnd(6)], ws[rnd(7)]);
    break;
  case 1:
    l = snprintf(line, sizeof(line), "{\"ok\":%s%s}", oks[rnd(6)],
                 extra[rnd(11)]);
    break;
  default:
    l = snprintf(line, sizeof(line), "{\"ok\":%s,\"eid\":\"%s\"%s}%s",
                 oks[rnd(2)], id, extra[rnd(11)], tail[rnd(8)]);
  }
  for (int k = 0; k < l; k++)       /* a NUL ends jsmn's input */
    if (line[k] == '~')
      line[k] = '\0';
  if (rnd(20) == 0)
    line[rnd((uint32_t)l)] = (char)rnd(256);
  if (rnd(30) == 0)
    l = (int)rnd((uint32_t)l);
  gen_put(g, line, (size_t)l);
}

static void reply_reader_agrees_with_protobuf_c_and_jsmn(void **state)
{
  enum { N = 6 };
  uint8_t evbuf[N][96], body[8192], one[1024];
  const uint8_t *evs[N];
  size_t lens[N];
  char id[32];
  int ok[N], ref_ok[N];
  long got, want;

  (void)state;
  rnd_state = 8;
  for (size_t i = 0; i < N; i++) {
    snprintf(id, sizeof(id), "evt%016zu", i);
    lens[i] = pack_event(id, evbuf[i]);
    evs[i] = evbuf[i];
  }
  for (int round = 0; round < 200000; round++) {
    struct gen g = { body, 0, sizeof(body) };
    bool json = rnd(2), single = rnd(4) == 0;
    size_t n = single ? 1 : 1 + rnd(N), verdicts = single ? 1 : rnd(N + 2);
    struct ref_batch b = { evs, lens, n };

    for (size_t i = 0; i < verdicts; i++) {
      if (json) {
        gen_json_line(&g, i, n);
        if (!single || rnd(2))
          gen_put(&g, "\n", 1);
      } else if (single) {
        gen_event_id(&g, i, n);
      } else {
        struct gen e = { one, 0, sizeof(one) };

        gen_event_id(&e, i, n);
        gen_varint(&g, rnd(30) ? e.len : e.len + rnd(3), false);
        gen_put(&g, one, e.len);
      }
    }
    got = emd_forward_parse_reply(body, g.len, json, single, evs, lens, n,
                                  ok);
    want = ref_parse_reply(body, g.len, json, single, &b, ref_ok);
    if (got != want || memcmp(ok, ref_ok, n * sizeof(*ok)) != 0)
      fail_msg("round %d (%s, %s): got %ld, want %ld", round,
               json ? "json" : "protobuf", single ? "single" : "stream",
               got, want);
    for (size_t i = 0; i < n; i++)
      assert_int_equal(ok[i], ref_ok[i]);
  }
}

/* Fields a service will not know, with keys of one and two bytes, of
 * every wire type a reader must step over. None is a field the event
 * lookup wants (Event 5, TelemetryEvent 2). */
static void gen_unknown(struct gen *g, bool in_event)
{
  switch (rnd(6)) {
  case 0:                                   /* a varint, 1 to 10 bytes */
    gen_byte(g, in_event ? 0x48 : 0x68);
    gen_varint(g, rnd(3) == 0 ? UINT64_MAX >> rnd(64) : rnd(300), false);
    break;
  case 1:                                   /* fixed64 */
    gen_byte(g, in_event ? 0x51 : 0x71);
    gen_put(g, "\x81\x82\x83\x84\x85\x86\x87\x88", 8);
    break;
  case 2:                                   /* fixed32 */
    gen_byte(g, in_event ? 0x5d : 0x7d);
    gen_put(g, "\x81\x82\x83\x84", 4);
    break;
  case 3: {                                 /* bytes, 1- or 2-byte length */
    size_t l = rnd(300);

    gen_byte(g, in_event ? 0x62 : 0x7a);
    gen_varint(g, l, false);
    for (size_t j = 0; j < l; j++)
      gen_byte(g, (uint8_t)(0x80 | j));
    break;
  }
  case 4:                                   /* a two-byte key, varint */
    gen_put(g, "\xa0\x06", 2);
    gen_varint(g, rnd(100000), false);
    break;
  default:                                  /* a two-byte key, bytes */
    gen_put(g, "\xa2\x06\x03xyz", 6);
  }
}

/* A packed Event with id as TelemetryEvent.id, the fields emitd packs
 * around it at random (strings whose lengths take one, two or three
 * bytes, varints of any size), and now and then unknown fields before
 * either message's own. */
static size_t gen_event(const char *id, uint8_t *out, size_t cap,
                        char *text, size_t text_cap)
{
  Buildless__Service__V1__Event ev = BUILDLESS__SERVICE__V1__EVENT__INIT;
  Buildless__Telemetry__TelemetryEvent te =
    BUILDLESS__TELEMETRY__TELEMETRY_EVENT__INIT;
  static const size_t text_lens[] = { 0, 1, 5, 127, 128, 200, 16383,
                                      16384, 20000 };
  uint8_t te_buf[2048];
  struct gen g = { out, 0, cap }, t = { te_buf, 0, sizeof(te_buf) };
  size_t l;

  l = text_lens[rnd(9)];
  assert_true(l < text_cap);
  memset(text, 'c', l);
  text[l] = '\0';
  if (rnd(2))
    ev.collection = text;
  if (rnd(2))
    ev.scope = text + l - min_len(l, rnd(300));
  ev.index = rnd(2) ? 0 : rnd(2) ? rnd(128) : UINT32_MAX >> rnd(32);
  ev.fin = rnd(4) == 0;
  if (rnd(2))
    te.scope = (char *)"a scope";
  te.id = (char *)id;
  te.tenant = (char *)"org_tenant";
  te.ordinal = rnd(2) ? 0 : rnd(100000);
  for (int k = 0; k < 3 && rnd(4) == 0; k++)
    gen_unknown(&g, true);
  g.len += buildless__service__v1__event__pack(&ev, out + g.len);
  for (int k = 0; k < 3 && rnd(4) == 0; k++)
    gen_unknown(&t, false);
  assert_true(t.len + buildless__telemetry__telemetry_event__get_packed_size(
                        &te) <= t.cap);
  t.len += buildless__telemetry__telemetry_event__pack(&te, te_buf + t.len);
  gen_byte(&g, 0x2a);                       /* Event.event */
  gen_varint(&g, t.len, false);
  gen_put(&g, te_buf, t.len);
  return g.len;
}

/* The event's id, found in its bytes, against protobuf-c's reading of
 * the same bytes: replies naming each event by its id (or a near miss),
 * through emd_forward_parse_reply and the reference reader. */
static void event_ids_are_found_as_protobuf_c_finds_them(void **state)
{
  enum { N = 4 };
  static uint8_t evbuf[N][24576];
  static char text[N][20001];
  uint8_t body[2048], one[256];
  const uint8_t *evs[N];
  size_t lens[N];
  char ids[N][32];
  int ok[N], ref_ok[N];
  long got, want;

  (void)state;
  rnd_state = 17;
  for (int round = 0; round < 20000; round++) {
    struct gen g = { body, 0, sizeof(body) };
    bool json = rnd(4) == 0;
    size_t n = 1 + rnd(N);
    struct ref_batch b = { evs, lens, n };

    for (size_t i = 0; i < n; i++) {
      snprintf(ids[i], sizeof(ids[i]), "evt%0*zu", 9 + (int)rnd(20),
               i + 100 * (size_t)round);
      lens[i] = gen_event(ids[i], evbuf[i], sizeof(evbuf[i]), text[i],
                          sizeof(text[i]));
      evs[i] = evbuf[i];
    }
    for (size_t i = 0; i < n; i++) {
      char id[40];
      int k = snprintf(id, sizeof(id), "%s", ids[i]);

      if (rnd(5) == 0)                     /* a near miss */
        id[rnd((uint32_t)k)] ^= 1;
      if (json) {
        k = snprintf((char *)one, sizeof(one), "{\"ok\":%s,\"eid\":\"%s\"}\n",
                     rnd(2) ? "true" : "false", id);
        gen_put(&g, one, (size_t)k);
      } else {
        struct gen e = { one, 0, sizeof(one) };

        if (rnd(2)) {
          gen_byte(&e, 0x08);
          gen_byte(&e, (uint8_t)rnd(2));
        }
        gen_byte(&e, 0x12);
        gen_varint(&e, (uint64_t)k, false);
        gen_put(&e, id, (size_t)k);
        gen_varint(&g, e.len, false);
        gen_put(&g, one, e.len);
      }
    }
    got = emd_forward_parse_reply(body, g.len, json, false, evs, lens, n,
                                  ok);
    want = ref_parse_reply(body, g.len, json, false, &b, ref_ok);
    if (got != want || memcmp(ok, ref_ok, n * sizeof(*ok)) != 0)
      fail_msg("round %d (%s): got %ld, want %ld", round,
               json ? "json" : "protobuf", got, want);
  }
}

int main(void)
{
  const struct CMUnitTest classify[] = {
    cmocka_unit_test(any_2xx_is_done),
    cmocka_unit_test(reply_reader_trusts_only_verdicts_for_their_own_events),
    cmocka_unit_test(reply_reader_agrees_with_protobuf_c_and_jsmn),
    cmocka_unit_test(event_ids_are_found_as_protobuf_c_finds_them),
    cmocka_unit_test(status_401_pauses_and_never_dead_letters),
    cmocka_unit_test(status_403_pauses_like_401),
    cmocka_unit_test(status_404_and_405_pause_as_misconfigured),
    cmocka_unit_test(status_408_429_and_5xx_retry),
    cmocka_unit_test(connection_errors_and_timeouts_retry),
    cmocka_unit_test(a_reply_cut_after_its_status_line_retries),
    cmocka_unit_test(status_413_splits_a_batch_and_dead_letters_one_event),
    cmocka_unit_test(status_400_and_422_split_a_batch_and_dead_letter_one),
    cmocka_unit_test(other_4xx_dead_letter_a_single_event),
    cmocka_unit_test(redirects_and_unusable_endpoints_pause),
    cmocka_unit_test(nonsense_statuses_retry_rather_than_lose_events),
    cmocka_unit_test(state_names_match_the_status_reply),
  };
#define T(name) cmocka_unit_test_setup_teardown(name, fx_setup, fx_teardown)
  const struct CMUnitTest live[] = {
    T(batch_mode_sends_every_event_once_with_fin_on_each_last),
    T(fin_is_set_on_last_events_of_every_length),
    T(batch_mode_json_with_gzip_arrives),
    T(batch_mode_protobuf_with_zstd_arrives),
    T(batch_mode_json_with_zstd_arrives),
    T(single_mode_sends_one_event_per_request),
    T(single_mode_json_with_gzip_arrives),
    T(single_mode_protobuf_with_zstd_arrives),
    T(a_batch_larger_than_batch_max_bytes_is_cut),
    T(a_full_batch_goes_at_once_and_a_partial_one_lingers),
    T(every_auth_style_reaches_a_keyed_upstream),
    T(unauthorized_pauses_and_a_key_file_rewrite_resumes),
    T(key_reload_resumes_a_paused_state_at_once),
    T(forbidden_pauses_until_a_reload_brings_another_key),
    T(a_wrong_endpoint_pauses_as_misconfigured_and_drops_nothing),
    T(a_poisoned_event_in_a_batch_ends_dead_alone),
    T(an_event_the_service_rejects_becomes_a_dead_letter),
    T(retry_after_in_seconds_holds_the_next_request),
    T(retry_after_as_an_http_date_holds_the_next_request),
    T(flush_sends_a_partial_batch_without_the_linger),
    T(flush_ends_a_backoff_wait_at_once),
    T(flush_still_honours_retry_after),
    T(cut_and_garbled_replies_are_retried_and_nothing_is_lost),
    T(max_attempts_dead_letters_events_that_keep_failing),
    T(closing_with_a_request_in_flight_keeps_its_events),
    T(a_reply_with_fewer_verdicts_than_events_resends_the_rest),
    T(verdicts_naming_other_events_are_not_trusted),
    T(bytes_that_parse_only_as_unknown_fields_are_not_trusted),
    T(a_reply_over_the_size_cap_is_unreadable),
    T(json_lines_delete_the_accepted_and_dead_letter_the_rejected),
    T(a_json_reply_with_a_misspelt_true_is_not_trusted),
    T(a_single_json_reply_may_span_lines),
    T(open_fails_when_the_key_file_cannot_be_read),
  };
#undef T
  int failed;

  curl_global_init(CURL_GLOBAL_DEFAULT);
  failed = cmocka_run_group_tests_name("classify", classify, NULL, NULL);
  failed += cmocka_run_group_tests_name("live", live, NULL, NULL);
  curl_global_cleanup();
  return failed;
}
