/* emitd_bench.c: emitd-bench, the benchmark that ships with emitd (SPEC 8
 * and 9; the README's performance section quotes it).
 *
 * Every figure comes from a clean daemon: the tool starts a fresh emitd
 * (spool in a new directory under /tmp, configured through EMITD_*
 * variables) and, as its destination, the project's test upstream, drives
 * emitd over N Unix-socket connections with realistic events of about 400
 * bytes in text or binary mode, and stops both. It reports the ingest rate,
 * reply latency at a steady offered rate, the end-to-end rate (until the
 * upstream has counted every event), emitd's CPU time per event and its
 * peak memory, next to the targets, as a plain table or as JSON.
 *
 * The tool must never be what limits the figures, so one thread drives
 * every connection with epoll: events come from a pool made once (only the
 * 26-character id is rewritten per send, so every event is new to emitd),
 * writes are batched, and replies are counted rather than parsed: a text
 * reply is ok when it starts with {"ok":true, a binary one when its Ack
 * starts with field 1 = true. A second thread samples emitd's memory. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "emd_arena.h"
#include "emd_codec.h"
#include "emd_event.h"
#include "emd_json.h"

extern char **environ;

#define ID_LEN 26                          /* ids we send, like a ULID's */
#define ID_MARK "BENCHIDBENCHIDBENCHIDBENCH"  /* where a template's id is */
#define OUT_CAP (256u * 1024)              /* bytes queued per connection */
#define IN_CAP (256u * 1024)               /* bytes read at once */
#define TS_CAP (1u << 17)                  /* latency: unanswered events */
#define TICK_NS 100000u                    /* latency: send clock, 100 us */
#define STALL_NS (30ull * 1000000000)      /* no reply this long: give up */
#define E2E_POLL_NS 5000000ull             /* upstream polled every 5 ms */
#define E2E_STALL_NS (20ull * 1000000000)  /* upstream count stuck: give up */
#define SAMPLE_NS 20000000ull              /* memory sampled every 20 ms */
#define MIB (1024.0 * 1024.0)

/* ---- targets (the issue's, for this 2-core machine) -------------------- */

#define T_INGEST_TEXT 400000.0       /* events/s, sync=always, 4 conns */
#define T_LATENCY_P99_MS 10.0        /* at 20 000 events/s offered */
#define T_E2E 250000.0               /* events/s, 1M, batch, protobuf */
#define T_CPU_US 3.0                 /* emitd CPU per event, whole path */
#define T_ANON_MIB 24.0              /* peak anonymous memory, 1M run */
#define T_BACKLOG_RATIO 0.90         /* ingest with backlog / empty */
#define T_RESTART_MS 100.0           /* first reply after a restart */

enum mode { MODE_TEXT, MODE_BINARY };

static const char *const mode_names[] = { "text", "binary" };

#define MAX_RUNS 9                /* --runs */

struct opts {
  const char *cmd;               /* limits, ingest, ..., all */
  const char *emitd_path;
  const char *upstream_path;
  const char *tmp_dir;           /* where run directories go */
  const char *perf_path;         /* perf record output prefix, or NULL */
  const char *timeline_path;     /* latency: every reply, or NULL */
  const char *sync;              /* spool.sync */
  enum mode mode;                /* ingest, latency, e2e */
  unsigned conns;
  uint64_t events;               /* ingest, e2e, backlog measurement */
  uint64_t window;               /* unanswered events per connection */
  double rate;                   /* latency: offered events/s */
  double duration_s;             /* latency */
  uint64_t backlog;              /* events pending for the backlog test */
  uint64_t pool;                 /* distinct event templates */
  bool json;
  unsigned runs;                 /* each test this many times: median */
  unsigned pairs;                /* backlog: empty/full ingests per run */
  bool keep;                     /* keep run directories */
  bool no_upstream;              /* ingest: an unreachable destination */
  bool ulid;                     /* --ids ulid: time-sorted ids */
  const char *extra_env[32];     /* --emitd-env K=V */
  unsigned n_extra_env;
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t now_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
  struct timespec ts = { (time_t)(ns / 1000000000u),
                         (long)(ns % 1000000000u) };

  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static double secs(uint64_t ns)
{
  return (double)ns / 1e9;
}

static double self_cpu_s(void)
{
  struct rusage ru;

  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* splitmix64: fast, and plenty random for ids and choices. */
static uint64_t rnd(uint64_t *s)
{
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t seed(void)
{
  uint64_t s;

  if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s))
    s = now_ns() ^ ((uint64_t)getpid() << 32);
  return s;
}

/* 26 random letters and digits (the id rule is ^[a-zA-Z0-9]{12,64}$): six
 * bits a character, ten characters a draw. 'a' and 'b' come up twice as
 * often as the rest, which costs nothing in uniqueness. With ulid_ms, the
 * first ten characters are that time in Crockford base32 instead, as in a
 * ULID, so ids sort by time like the ones emitd makes. */
static void fill_id(uint64_t *rng, char *dst, uint64_t ulid_ms)
{
  static const char digits[65] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789ab";
  static const char crockford[33] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  uint64_t r = 0;
  int bits = 0, i = 0;

  if (ulid_ms != 0) {
    for (i = 0; i < 10; i++)
      dst[i] = crockford[(ulid_ms >> (45 - 5 * i)) & 31];
  }
  for (; i < ID_LEN; i++) {
    if (bits < 6) {
      r = rnd(rng);
      bits = 64;
    }
    dst[i] = digits[r & 63];
    r >>= 6;
    bits -= 6;
  }
}

static uint64_t wall_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* "1 234 567": figures people read. */
static const char *fmt_count(char *buf, size_t len, double v)
{
  char digits[32];
  size_t n, o = 0;

  snprintf(digits, sizeof(digits), "%.0f", v);
  n = strlen(digits);
  for (size_t i = 0; i < n && o + 2 < len; i++) {
    if (i > 0 && (n - i) % 3 == 0)
      buf[o++] = ' ';
    buf[o++] = digits[i];
  }
  buf[o] = '\0';
  return buf;
}

/* Reads a small text file (proc files) into buf; returns its length or -1. */
static ssize_t read_small(const char *path, char *buf, size_t len)
{
  ssize_t n, got = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    return -1;
  while ((size_t)got + 1 < len) {
    n = read(fd, buf + got, len - 1 - (size_t)got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += n;
  }
  close(fd);
  buf[got] = '\0';
  return got;
}

/* The number after "key" at the start of a line of /proc/PID/<file> (kB
 * in status and smaps_rollup, bytes in io); 0 when the process or the
 * line is gone. */
static uint64_t proc_field(pid_t pid, const char *file, const char *key)
{
  char path[64], buf[8192];
  const char *p;
  size_t klen = strlen(key);

  snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
  if (read_small(path, buf, sizeof(buf)) < 0)
    return 0;
  for (p = buf; p != NULL && *p != '\0'; p = strchr(p, '\n')) {
    if (*p == '\n')
      p++;
    if (strncmp(p, key, klen) == 0)
      return strtoull(p + klen, NULL, 10);
  }
  return 0;
}

/* utime + stime of every thread of pid, in seconds; -1 if it is gone. */
static double proc_cpu_s(pid_t pid)
{
  char path[64], buf[1024];
  unsigned long long ut, st;
  const char *p;

  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (read_small(path, buf, sizeof(buf)) < 0)
    return -1;
  p = strrchr(buf, ')');        /* the command name may hold anything */
  if (p == NULL ||
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
             &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- the event pool ---------------------------------------------------- */

/* One event as bytes ready to send: a line with its newline, or a frame
 * with its length prefix. id_off is where its ID_LEN-byte id starts. */
struct tmpl {
  uint32_t off, len, id_off;
};

struct pool {
  size_t n;
  struct emd_text text;          /* every line, back to back */
  struct emd_text bin;           /* every frame, back to back */
  struct tmpl *t, *b;            /* n each */
  double text_avg, bin_avg;      /* bytes per event */
};

struct tool_def {
  const char *name;
  unsigned v[3];
};

struct os_def {
  const char *name;
  Buildless__Telemetry__OSFamily family;
  Buildless__Telemetry__ProcessorArch arch;
};

struct place_def {
  const char *tz, *country;
  double lat, lon;
};

static const struct tool_def tools[] = {
  { "gradle", { 8, 5, 0 } }, { "bazel", { 7, 0, 2 } },
  { "maven", { 3, 9, 6 } }, { "npm", { 10, 2, 4 } },
  { "cargo", { 1, 75, 0 } }, { "go", { 1, 21, 5 } },
  { "pnpm", { 8, 14, 1 } }, { "sbt", { 1, 9, 8 } },
};

static const struct os_def oses[] = {
  { "Linux", BUILDLESS__TELEMETRY__OSFAMILY__LINUX,
    BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86 },
  { "Linux", BUILDLESS__TELEMETRY__OSFAMILY__LINUX,
    BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM },
  { "Darwin", BUILDLESS__TELEMETRY__OSFAMILY__DARWIN,
    BUILDLESS__TELEMETRY__PROCESSOR_ARCH__ARM },
  { "Windows", BUILDLESS__TELEMETRY__OSFAMILY__WINDOWS,
    BUILDLESS__TELEMETRY__PROCESSOR_ARCH__X86 },
};

static const struct place_def places[] = {
  { "Europe/Berlin", "DE", 52.52, 13.405 },
  { "America/New_York", "US", 40.7128, -74.006 },
  { "Asia/Tokyo", "JP", 35.6762, 139.6503 },
  { "America/Los_Angeles", "US", 37.3382, -121.8863 },
  { "Europe/London", "GB", 51.5072, -0.1276 },
};

static const char *const ctx_kinds[] = { "Build", "Test", "Task", "Cache" };
static const char *const ctx_events[] = {
  "started", "finished", "cache_hit", "cache_miss", "failed", "uploaded",
};
static const char *const task_names[] = {
  "compileJava", "test", "lint", "bundle", "link", "jar", "check",
};
static const char *const collections[] = { "Build", "Test", "Cache" };

#define PICK(rng, arr) (arr[rnd(rng) % (sizeof(arr) / sizeof(arr[0]))])

/* One event under construction: every message and string it points to. */
struct ev_build {
  emd_event ev;
  Buildless__Telemetry__TelemetryEvent te;
  Buildless__Telemetry__EventContext ctx[2];
  Buildless__Telemetry__EventContext *ctxp[2];
  Buildless__Telemetry__EventDetail detail;
  Buildless__Telemetry__ClientDetail client;
  Buildless__Telemetry__ToolInfo tool;
  Buildless__Telemetry__ToolInfo *toolp;
  Buildless__Telemetry__VersionInfo tool_v;
  Buildless__Telemetry__OSInfo os;
  Buildless__Telemetry__EventTiming timing;
  Buildless__Telemetry__EventLocation loc;
  Buildless__Telemetry__GeoPoint point;
  char type[2][64], resource[2][40];
};

/* Builds one event shaped like SPEC 2's examples into b: an envelope with
 * a collection (and, for half of them, one of 16 CI scopes, so emitd keeps
 * those timers' counters in the spool), a context (two, one time in 16),
 * a tool with its version, an OS, timing and a location (a time zone or a
 * point, and a country): about 420 bytes of JSON, 180 of protobuf. The id
 * is ID_MARK, rewritten per send. */
static emd_event *make_event(uint64_t *rng, uint64_t now_ms,
                             const char *const *scopes, size_t n_scopes,
                             struct ev_build *b)
{
  const struct tool_def *td = &PICK(rng, tools);
  const struct os_def *od = &PICK(rng, oses);
  const struct place_def *pd = &PICK(rng, places);
  size_t nctx = rnd(rng) % 16 == 0 ? 2 : 1;

  buildless__service__v1__event__init(&b->ev);
  buildless__telemetry__telemetry_event__init(&b->te);
  for (size_t i = 0; i < nctx; i++) {
    Buildless__Telemetry__EventContext *c = &b->ctx[i];
    buildless__telemetry__event_context__init(c);
    snprintf(b->type[i], sizeof(b->type[i]),
             "type.googleapis.com/buildless.context.%s", PICK(rng, ctx_kinds));
    snprintf(b->resource[i], sizeof(b->resource[i]), "task::%s%u",
             PICK(rng, task_names), (unsigned)(rnd(rng) % 100));
    c->type = b->type[i];
    if (rnd(rng) % 2 == 0)
      c->resource = b->resource[i];
    c->event = (char *)PICK(rng, ctx_events);
    b->ctxp[i] = c;
  }
  buildless__telemetry__version_info__init(&b->tool_v);
  b->tool_v.major = td->v[0];
  b->tool_v.minor = td->v[1];
  b->tool_v.micro = td->v[2];
  buildless__telemetry__tool_info__init(&b->tool);
  b->tool.name = (char *)td->name;
  b->tool.version = &b->tool_v;
  b->toolp = &b->tool;
  buildless__telemetry__osinfo__init(&b->os);
  b->os.name = (char *)od->name;
  b->os.family = od->family;
  b->os.arch = od->arch;
  buildless__telemetry__client_detail__init(&b->client);
  b->client.n_tool = 1;
  b->client.tool = &b->toolp;
  b->client.os = &b->os;
  buildless__telemetry__event_detail__init(&b->detail);
  b->detail.client = &b->client;
  buildless__telemetry__event_timing__init(&b->timing);
  b->timing.occurred = now_ms - rnd(rng) % 60000;
  buildless__telemetry__geo_point__init(&b->point);
  b->point.lat = pd->lat;
  b->point.lon = pd->lon;
  buildless__telemetry__event_location__init(&b->loc);
  if (rnd(rng) % 2 == 0)
    b->loc.timezone = (char *)pd->tz;
  else
    b->loc.point = &b->point;
  b->loc.country = (char *)pd->country;
  b->te.id = ID_MARK;
  b->te.n_context = nctx;
  b->te.context = b->ctxp;
  b->te.detail = &b->detail;
  b->te.timing = &b->timing;
  b->te.location = &b->loc;
  b->ev.collection = (char *)PICK(rng, collections);
  if (rnd(rng) % 2 == 0)
    b->ev.scope = (char *)scopes[rnd(rng) % n_scopes];
  b->ev.event = &b->te;
  return &b->ev;
}

/* Where the id mark sits in p[0..len); it must be there exactly once. */
static int find_id(const void *p, size_t len, uint32_t *off)
{
  const char *hit = memmem(p, len, ID_MARK, ID_LEN);
  const char *end = (const char *)p + len;

  if (hit == NULL || memmem(hit + 1, (size_t)(end - hit - 1), ID_MARK,
                            ID_LEN) != NULL)
    return -1;
  *off = (uint32_t)(hit - (const char *)p);
  return 0;
}

static void pool_free(struct pool *p)
{
  emd_text_free(&p->text);
  emd_text_free(&p->bin);
  free(p->t);
  free(p->b);
  memset(p, 0, sizeof(*p));
}

/* Makes n events, each as a text line and as a binary frame, and checks
 * every one with emitd's own decoders, so a bench bug shows up here and
 * not as a flood of ok:false. Returns 0 or -1 (said why). */
static int pool_make(struct pool *p, size_t n)
{
  struct emd_codec_buf json = { 0 };
  struct emd_arena arena = { 0 };
  struct ev_build *b = malloc(sizeof(*b));
  char scope_buf[16][24];
  const char *scopes[16];
  uint64_t rng = seed(), now_ms = (uint64_t)time(NULL) * 1000;
  emd_event *ev, *back;
  uint8_t frame[4096];
  char msg[256];
  bool said = false;
  int rc = -1;

  memset(p, 0, sizeof(*p));
  p->n = n;
  p->t = calloc(n, sizeof(*p->t));
  p->b = calloc(n, sizeof(*p->b));
  if (p->t == NULL || p->b == NULL || b == NULL)
    goto fail;
  for (size_t i = 0; i < 16; i++) {
    snprintf(scope_buf[i], sizeof(scope_buf[i]), "gha-%010llu",
             (unsigned long long)(rnd(&rng) % 10000000000ull));
    scopes[i] = scope_buf[i];
  }
  for (size_t i = 0; i < n; i++) {
    ev = make_event(&rng, now_ms, scopes, 16, b);
    size_t blen = protobuf_c_message_get_packed_size(&ev->base);
    if (blen + 4 > sizeof(frame))
      goto fail;                 /* cannot happen: events are ~200 bytes */
    frame[0] = (uint8_t)(blen >> 24);
    frame[1] = (uint8_t)(blen >> 16);
    frame[2] = (uint8_t)(blen >> 8);
    frame[3] = (uint8_t)blen;
    protobuf_c_message_pack(&ev->base, frame + 4);
    json.len = 0;
    if (emd_codec_event_to_json(ev, &json) != 0)
      goto fail;
    emd_arena_reset(&arena);
    if (emd_codec_decode_json(json.data, json.len, NULL, &arena, &back, msg,
                              sizeof(msg)) != 0 ||
        emd_codec_decode_frame(frame + 4, blen, NULL, &arena, &back, msg,
                               sizeof(msg)) != 0) {
      fprintf(stderr, "emitd-bench: a made-up event is not valid: %s\n",
              msg);
      said = true;
      goto fail;
    }
    p->t[i].off = (uint32_t)p->text.len;
    p->t[i].len = (uint32_t)json.len + 1;
    p->b[i].off = (uint32_t)p->bin.len;
    p->b[i].len = (uint32_t)blen + 4;
    if (find_id(json.data, json.len, &p->t[i].id_off) != 0 ||
        find_id(frame, blen + 4, &p->b[i].id_off) != 0) {
      fprintf(stderr, "emitd-bench: cannot find the id in event %zu\n", i);
      said = true;
      goto fail;
    }
    emd_text_append(&p->text, json.data, json.len);
    emd_text_putc(&p->text, '\n');
    emd_text_append(&p->bin, frame, blen + 4);
  }
  if (p->text.err != 0 || p->bin.err != 0 || p->text.len > UINT32_MAX ||
      p->bin.len > UINT32_MAX)
    goto fail;
  p->text_avg = (double)p->text.len / (double)n;
  p->bin_avg = (double)p->bin.len / (double)n;
  rc = 0;

fail:
  if (rc != 0 && !said)
    fprintf(stderr, "emitd-bench: cannot make the event pool: out of "
            "memory\n");
  free(json.data);
  free(b);
  emd_arena_free(&arena);
  if (rc != 0)
    pool_free(p);
  return rc;
}

/* ---- latency histogram ------------------------------------------------- */

/* Fixed buckets in microseconds, HdrHistogram-like: exact below 1024 us,
 * then 512 buckets per power of two (0.2 % resolution), up to 2^40 us. */
#define H_EXACT 1024u
#define H_SUB 512u
#define H_BUCKETS (H_EXACT + 31u * H_SUB)

struct hist {
  uint64_t count;
  uint64_t max_us;
  uint64_t b[H_BUCKETS];
};

static void hist_add(struct hist *h, uint64_t us)
{
  unsigned idx;

  if (us >= (1ull << 40))
    us = (1ull << 40) - 1;
  if (us < H_EXACT) {
    idx = (unsigned)us;
  } else {
    unsigned shift = (unsigned)(63 - __builtin_clzll(us)) - 9;
    idx = H_EXACT + (shift - 1) * H_SUB + (unsigned)((us >> shift) - H_SUB);
  }
  h->b[idx]++;
  h->count++;
  if (us > h->max_us)
    h->max_us = us;
}

/* The value below which a fraction q of the samples lie (the top of its
 * bucket), in milliseconds. */
static double hist_quantile_ms(const struct hist *h, double q)
{
  double want = q * (double)h->count;
  uint64_t rank = (uint64_t)want, seen = 0;

  if (h->count == 0)
    return 0;
  if ((double)rank < want)
    rank++;
  if (rank == 0)
    rank = 1;
  for (unsigned i = 0; i < H_BUCKETS; i++) {
    seen += h->b[i];
    if (seen >= rank) {
      uint64_t top;
      if (i < H_EXACT) {
        top = i;
      } else {
        unsigned shift = (i - H_EXACT) / H_SUB + 1;
        uint64_t sub = (i - H_EXACT) % H_SUB + H_SUB;
        top = ((sub + 1) << shift) - 1;
      }
      if (top > h->max_us)
        top = h->max_us;
      return (double)top / 1000.0;
    }
  }
  return (double)h->max_us / 1000.0;
}

/* ---- processes: emitd and the test upstream ---------------------------- */

/* One clean set of daemons in its own directory. */
struct daemons {
  char dir[PATH_MAX];            /* /tmp/emitd-bench.XXXXXX */
  char sock[PATH_MAX];           /* emitd's event socket */
  char spool[PATH_MAX];
  char emitd_log[PATH_MAX];
  char endpoint[64];             /* what emitd forwards to */
  pid_t emitd;                   /* 0 when not running */
  pid_t upstream;
  unsigned port;                 /* the upstream's, 0 when none */
  int dead_fd;                   /* bound, never listening: unreachable */
  bool keep;
};

static int spawn(const char *const argv[], char *const envp[],
                 const char *log, pid_t *pid)
{
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t def;
  int rc;

  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log,
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  /* We ignore SIGPIPE; the child should start with the default. */
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &def);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
  rc = posix_spawn(pid, argv[0], &fa, &attr, (char *const *)argv,
                   envp != NULL ? envp : environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    fprintf(stderr, "emitd-bench: cannot run %s: %s\n", argv[0],
            strerror(rc));
    return -1;
  }
  return 0;
}

/* Stops pid: SIGTERM, up to 20 s, then SIGKILL. Returns its wait status,
 * or -1. */
static int stop_proc(pid_t pid, int sig)
{
  int status;
  uint64_t deadline = now_ns() + 20ull * 1000000000;

  kill(pid, sig);
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid)
      return status;
    if (r < 0 && errno != EINTR)
      return -1;
    if (now_ns() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    sleep_ns(2000000);
  }
}

static void print_log_tail(const char *path)
{
  char buf[2049];
  ssize_t n;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    return;
  off_t size = lseek(fd, 0, SEEK_END);
  lseek(fd, size > 2048 ? size - 2048 : 0, SEEK_SET);
  n = read(fd, buf, 2048);
  close(fd);
  if (n > 0) {
    buf[n] = '\0';
    fprintf(stderr, "--- end of %s ---\n%s\n---\n", path, buf);
  }
}

/* True while emitd runs; says so once when it has died. */
static bool emitd_alive(struct daemons *dm)
{
  int status;

  if (dm->emitd == 0)
    return false;
  if (waitpid(dm->emitd, &status, WNOHANG) != dm->emitd)
    return true;
  fprintf(stderr, "emitd-bench: emitd exited (%s %d)\n",
          WIFSIGNALED(status) ? "signal" : "status",
          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
  print_log_tail(dm->emitd_log);
  dm->emitd = 0;
  return false;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void daemons_close(struct daemons *dm)
{
  if (dm->emitd > 0)
    stop_proc(dm->emitd, SIGTERM);
  if (dm->upstream > 0)
    stop_proc(dm->upstream, SIGTERM);
  dm->emitd = dm->upstream = 0;
  if (dm->dead_fd >= 0)
    close(dm->dead_fd);
  dm->dead_fd = -1;
  if (dm->dir[0] != '\0') {
    if (dm->keep)
      fprintf(stderr, "emitd-bench: kept %s\n", dm->dir);
    else
      nftw(dm->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  dm->dir[0] = '\0';
}

/* A fresh directory; with upstream, the test upstream started in it and
 * made emitd's destination, else a TCP port that refuses (bound by us,
 * never listening), so nothing ever drains. */
static int daemons_open(struct daemons *dm, const struct opts *o,
                        bool upstream)
{
  char port_file[PATH_MAX + 8], log[PATH_MAX + 16], buf[32];
  struct sockaddr_in sa = { .sin_family = AF_INET };
  socklen_t salen = sizeof(sa);

  memset(dm, 0, sizeof(*dm));
  dm->dead_fd = -1;
  dm->keep = o->keep;
  snprintf(dm->dir, sizeof(dm->dir), "%s/emitd-bench.XXXXXX", o->tmp_dir);
  if (mkdtemp(dm->dir) == NULL) {
    fprintf(stderr, "emitd-bench: cannot make a directory in %s: %s\n",
            o->tmp_dir, strerror(errno));
    dm->dir[0] = '\0';
    return -1;
  }
  snprintf(dm->sock, sizeof(dm->sock), "%.4000s/emitd.sock", dm->dir);
  snprintf(dm->spool, sizeof(dm->spool), "%.4000s/spool", dm->dir);
  snprintf(dm->emitd_log, sizeof(dm->emitd_log), "%.4000s/emitd.log",
           dm->dir);
  if (strlen(dm->sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
    fprintf(stderr, "emitd-bench: %s is too long for a socket path "
            "(--tmp)\n", dm->sock);
    goto fail;
  }
  if (!upstream) {
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    dm->dead_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (dm->dead_fd < 0 ||
        bind(dm->dead_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(dm->dead_fd, (struct sockaddr *)&sa, &salen) != 0) {
      fprintf(stderr, "emitd-bench: cannot bind a port: %s\n",
              strerror(errno));
      goto fail;
    }
    snprintf(dm->endpoint, sizeof(dm->endpoint), "http://127.0.0.1:%u",
             (unsigned)ntohs(sa.sin_port));
    return 0;
  }
  snprintf(port_file, sizeof(port_file), "%s/port", dm->dir);
  snprintf(log, sizeof(log), "%s/upstream.log", dm->dir);
  const char *argv[] = { o->upstream_path, "--listen", "127.0.0.1:0",
                         "--port-file", port_file, "--no-keep", "--quiet",
                         NULL };
  if (spawn(argv, NULL, log, &dm->upstream) != 0)
    goto fail;
  for (uint64_t end = now_ns() + 10ull * 1000000000;;) {
    if (read_small(port_file, buf, sizeof(buf)) > 0) {
      dm->port = (unsigned)strtoul(buf, NULL, 10);
      break;
    }
    if (waitpid(dm->upstream, NULL, WNOHANG) == dm->upstream ||
        now_ns() > end) {
      if (kill(dm->upstream, 0) == 0)
        stop_proc(dm->upstream, SIGKILL);
      dm->upstream = 0;
      fprintf(stderr, "emitd-bench: the test upstream did not start\n");
      print_log_tail(log);
      goto fail;
    }
    sleep_ns(1000000);
  }
  snprintf(dm->endpoint, sizeof(dm->endpoint), "http://127.0.0.1:%u",
           dm->port);
  return 0;

fail:
  daemons_close(dm);
  return -1;
}

/* environ without EMITD_* (emitd refuses unknown ones), then ours. */
static char **emitd_env(const struct daemons *dm, const struct opts *o,
                        const char *sync, uint64_t max_bytes)
{
  size_t n = 0, k = 0;
  char **env;

  while (environ[n] != NULL)
    n++;
  env = calloc(n + 16 + o->n_extra_env, sizeof(*env));
  if (env == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "EMITD_", 6) != 0)
      env[k++] = strdup(environ[i]);
#define SET(...)                                                            \
  if (asprintf(&env[k++], __VA_ARGS__) < 0)                                 \
    env[k - 1] = NULL;
  SET("EMITD_AGENT_SOCKET=%s", dm->sock)
  SET("EMITD_AGENT_CONTROL_SOCKET=%s/control.sock", dm->dir)
  SET("EMITD_AGENT_SHUTDOWN_GRACE=1s")
  SET("EMITD_SPOOL_DIR=%s", dm->spool)
  SET("EMITD_SPOOL_SYNC=%s", sync)
  SET("EMITD_SPOOL_MAX_BYTES=%" PRIu64 "MiB", max_bytes >> 20)
  SET("EMITD_UPSTREAM_ENDPOINT=%s", dm->endpoint)
  SET("EMITD_UPSTREAM_MODE=batch")
  SET("EMITD_UPSTREAM_ENCODING=protobuf")
  for (unsigned i = 0; i < o->n_extra_env; i++)
    SET("%s", o->extra_env[i])
#undef SET
  for (size_t i = 0; i < k; i++) {
    if (env[i] == NULL) {
      for (size_t j = 0; j < k; j++)
        free(env[j]);
      free(env);
      return NULL;
    }
  }
  return env;
}

static void env_free(char **env)
{
  for (size_t i = 0; env != NULL && env[i] != NULL; i++)
    free(env[i]);
  free(env);
}

/* A connection to emitd's socket, blocking; -1 if it refuses. */
static int sock_connect(const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    fd = -1;
  }
  return fd;
}

/* Starts emitd on dm's spool; returns once it accepts a connection, the
 * open connection in *fd when fd is not NULL. */
static int emitd_start(struct daemons *dm, const struct opts *o,
                       const char *sync, uint64_t max_bytes, int *fd)
{
  const char *argv[] = { o->emitd_path, NULL };
  char **env = emitd_env(dm, o, sync, max_bytes);
  uint64_t end;
  int c, rc;

  if (env == NULL)
    return -1;
  rc = spawn(argv, env, dm->emitd_log, &dm->emitd);
  env_free(env);
  if (rc != 0)
    return -1;
  for (end = now_ns() + 30ull * 1000000000;;) {
    c = sock_connect(dm->sock);
    if (c >= 0)
      break;
    if (!emitd_alive(dm))
      return -1;
    if (now_ns() > end) {
      fprintf(stderr, "emitd-bench: emitd did not listen within 30 s\n");
      print_log_tail(dm->emitd_log);
      return -1;
    }
    sleep_ns(200000);
  }
  if (fd != NULL)
    *fd = c;
  else
    close(c);
  return 0;
}

/* SIGTERM, then a warning if emitd did not exit 0. */
static int emitd_stop(struct daemons *dm)
{
  int status;

  if (dm->emitd <= 0)
    return -1;
  status = stop_proc(dm->emitd, SIGTERM);
  dm->emitd = 0;
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (status != -1 && WIFSIGNALED(status))
      fprintf(stderr, "emitd-bench: emitd died of signal %d\n",
              WTERMSIG(status));
    else if (status != -1)
      fprintf(stderr, "emitd-bench: emitd exited with status %d\n",
              WEXITSTATUS(status));
    else
      fprintf(stderr, "emitd-bench: emitd did not stop within 20 s\n");
    print_log_tail(dm->emitd_log);
    return -1;
  }
  return 0;
}

/* Spool bound: the default 1 GiB, or room for every event we will send
 * (well over their size, so spool_full never limits a figure). */
static uint64_t spool_bytes_for(uint64_t events)
{
  uint64_t want = events * 1024;

  if (want < (1ull << 30))
    want = 1ull << 30;
  return (want + (1ull << 30) - 1) & ~((1ull << 30) - 1);
}

/* ---- measuring emitd --------------------------------------------------- */

struct sampler {
  pid_t pid;
  pthread_t th;
  atomic_bool stop;
  uint64_t anon_max_kb;          /* the thread's until joined */
  bool running;
};

/* Samples RssAnon of /proc/PID/status: the same anonymous pages as
 * smaps_rollup's "Anonymous:" (LMDB's map is a file mapping, in neither),
 * but read from a counter, where smaps_rollup walks every page table entry
 * of emitd, a cost that grows with its resident spool pages and would be
 * taken from the two cores emitd runs on. meter_stop adds one exact
 * smaps_rollup reading at the end. */
static void *sampler_main(void *arg)
{
  struct sampler *s = arg;
  uint64_t kb;

  do {
    kb = proc_field(s->pid, "status", "RssAnon:");
    if (kb > s->anon_max_kb)
      s->anon_max_kb = kb;
    sleep_ns(SAMPLE_NS);
  } while (!atomic_load(&s->stop));
  return NULL;
}

/* What emitd used over one measured phase. */
struct usage {
  double cpu_s;                  /* utime + stime, every thread */
  double bench_cpu_s;            /* ours, to show we were not the limit */
  double rss_peak_mib;           /* VmHWM: peak resident, since start */
  double anon_peak_mib;          /* max of RssAnon samples and of
                                  * smaps_rollup Anonymous at the end */
  double disk_write_mib;         /* write_bytes of /proc/PID/io */
};

struct meter {
  pid_t pid;
  double cpu0, self0;
  uint64_t wbytes0;
  struct sampler s;
  pid_t perf;
};

/* perf_out non-NULL: perf record attaches to emitd for the phase. */
static void meter_start(struct meter *m, pid_t pid, const char *perf_out,
                        const char *dir)
{
  memset(m, 0, sizeof(*m));
  m->pid = pid;
  if (perf_out != NULL) {
    char pidbuf[16], log[PATH_MAX + 16];
    snprintf(pidbuf, sizeof(pidbuf), "%d", (int)pid);
    snprintf(log, sizeof(log), "%s/perf.log", dir);
    /* DWARF call graphs: our builds keep no frame pointers. */
    const char *argv[] = { "/usr/bin/perf", "record", "-F", "499",
                           "--call-graph", "dwarf,16384", "-o", perf_out,
                           "-p", pidbuf, NULL };
    if (spawn(argv, NULL, log, &m->perf) == 0) {
      sleep_ns(500000000);       /* let it attach before the load */
      fprintf(stderr, "emitd-bench: perf record -> %s\n", perf_out);
    }
  }
  m->s.pid = pid;
  atomic_init(&m->s.stop, false);
  m->s.running = pthread_create(&m->s.th, NULL, sampler_main, &m->s) == 0;
  m->cpu0 = proc_cpu_s(pid);
  m->self0 = self_cpu_s();
  m->wbytes0 = proc_field(pid, "io", "write_bytes:");
}

static void meter_stop(struct meter *m, struct usage *u)
{
  u->cpu_s = proc_cpu_s(m->pid) - m->cpu0;
  u->bench_cpu_s = self_cpu_s() - m->self0;
  uint64_t wb = proc_field(m->pid, "io", "write_bytes:");
  u->disk_write_mib = wb > m->wbytes0 ? (double)(wb - m->wbytes0) / MIB : 0;
  u->rss_peak_mib = (double)proc_field(m->pid, "status", "VmHWM:") / 1024.0;
  if (m->s.running) {
    atomic_store(&m->s.stop, true);
    pthread_join(m->s.th, NULL);
    m->s.running = false;
  }
  uint64_t kb = proc_field(m->pid, "smaps_rollup", "Anonymous:");
  if (kb > m->s.anon_max_kb)
    m->s.anon_max_kb = kb;
  u->anon_peak_mib = (double)m->s.anon_max_kb / 1024.0;
  if (m->perf > 0) {
    stop_proc(m->perf, SIGINT);
    m->perf = 0;
  }
}

/* ---- driving emitd ----------------------------------------------------- */

struct conn {
  int fd;
  uint64_t quota;                /* events it may send by now */
  uint64_t sent;                 /* events put in out */
  uint64_t acked;                /* replies read */
  char *out;                     /* OUT_CAP bytes not yet written */
  size_t out_off, out_len;
  char *in;                      /* IN_CAP; a reply cut by a read waits */
  size_t in_len;
  bool armed;                    /* waiting for EPOLLOUT */
  uint64_t *ts;                  /* latency: event k due at ts[k%TS_CAP] */
  uint64_t rng;
};

struct drive {
  enum mode mode;
  const char *base;              /* the pool's bytes for this mode */
  const struct tmpl *tmpl;
  size_t n_tmpl;
  uint64_t next_tmpl;
  uint64_t window;               /* unanswered per connection; 0: none */
  bool ulid;                     /* time-sorted ids, not random ones */
  struct conn *conns;
  unsigned n;
  int ep;
  uint64_t total;                /* events to send, all connections */
  uint64_t acked, failed;
  char first_failure[320];
  struct hist *hist;             /* latency mode only */
  FILE *timeline;                /* latency: a line per reply, or NULL */
  unsigned run;                  /* its first column */
  struct daemons *dm;
  uint64_t t_first, t_last;      /* first write, last reply */
};

static void drive_close(struct drive *d)
{
  for (unsigned i = 0; d->conns != NULL && i < d->n; i++) {
    if (d->conns[i].fd >= 0)
      close(d->conns[i].fd);
    free(d->conns[i].out);
    free(d->conns[i].in);
    free(d->conns[i].ts);
  }
  free(d->conns);
  d->conns = NULL;
  if (d->ep >= 0)
    close(d->ep);
  d->ep = -1;
  free(d->hist);
  d->hist = NULL;
}

static int drive_open(struct drive *d, struct daemons *dm,
                      const struct pool *p, enum mode mode, unsigned n,
                      uint64_t window, uint64_t total, bool latency,
                      bool ulid)
{
  memset(d, 0, sizeof(*d));
  d->mode = mode;
  d->base = mode == MODE_TEXT ? p->text.data : p->bin.data;
  d->tmpl = mode == MODE_TEXT ? p->t : p->b;
  d->n_tmpl = p->n;
  d->window = window;
  d->ulid = ulid;
  d->n = n;
  d->total = total;
  d->dm = dm;
  d->ep = epoll_create1(EPOLL_CLOEXEC);
  d->conns = calloc(n, sizeof(*d->conns));
  if (d->ep < 0 || d->conns == NULL)
    goto fail;
  if (latency && (d->hist = calloc(1, sizeof(*d->hist))) == NULL)
    goto fail;
  for (unsigned i = 0; i < n; i++)
    d->conns[i].fd = -1;
  for (unsigned i = 0; i < n; i++) {
    struct conn *c = &d->conns[i];
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    c->rng = seed();
    c->out = malloc(OUT_CAP);
    c->in = malloc(IN_CAP);
    if (c->out == NULL || c->in == NULL ||
        (latency && (c->ts = malloc(TS_CAP * sizeof(*c->ts))) == NULL))
      goto fail;
    c->fd = sock_connect(dm->sock);
    if (c->fd < 0) {
      fprintf(stderr, "emitd-bench: cannot connect to %s: %s\n", dm->sock,
              strerror(errno));
      goto fail;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    if (epoll_ctl(d->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
      goto fail;
  }
  return 0;

fail:
  drive_close(d);
  return -1;
}

static void conn_arm(struct drive *d, struct conn *c, bool out)
{
  struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0),
                            .data.ptr = c };

  if (c->armed != out) {
    epoll_ctl(d->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->armed = out;
  }
}

/* Appends the events c may send now (its quota, within the window) to its
 * output: a template's bytes, then a fresh id over the mark. */
static void conn_fill(struct drive *d, struct conn *c)
{
  uint64_t allow = c->quota - c->sent, ulid_ms;

  if (d->window != 0) {
    uint64_t open = d->window - (c->sent - c->acked);
    if (allow > open)
      allow = open;
  }
  if (c->out_off == c->out_len) {
    c->out_off = c->out_len = 0;
  } else if (c->out_off > OUT_CAP / 2) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  ulid_ms = d->ulid && allow > 0 ? wall_ms() : 0;
  while (allow > 0) {
    const struct tmpl *t = &d->tmpl[d->next_tmpl % d->n_tmpl];
    if (c->out_len + t->len > OUT_CAP)
      break;
    memcpy(c->out + c->out_len, d->base + t->off, t->len);
    fill_id(&c->rng, c->out + c->out_len + t->id_off, ulid_ms);
    c->out_len += t->len;
    c->sent++;
    d->next_tmpl++;
    allow--;
  }
}

/* Queues what c may send and writes as much as the socket takes. */
static int conn_pump(struct drive *d, struct conn *c)
{
  for (int round = 0; round < 8; round++) {
    conn_fill(d, c);
    if (c->out_off == c->out_len)
      break;
    if (d->t_first == 0)
      d->t_first = now_ns();
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN) {
        conn_arm(d, c, true);
        return 0;
      }
      fprintf(stderr, "emitd-bench: writing to emitd: %s\n",
              strerror(errno));
      return -1;
    }
    c->out_off += (size_t)n;
    if (c->out_off < c->out_len) {
      conn_arm(d, c, true);
      return 0;
    }
  }
  conn_arm(d, c, false);
  return 0;
}

static void note_failure(struct drive *d, const char *p, size_t len)
{
  if (d->failed++ > 0)
    return;
  if (d->mode == MODE_TEXT) {
    snprintf(d->first_failure, sizeof(d->first_failure), "%.*s",
             (int)(len > 300 ? 300 : len), p);
    return;
  }
  emd_ack *ack = emitd__v1__ack__unpack(NULL, len, (const uint8_t *)p);
  snprintf(d->first_failure, sizeof(d->first_failure), "%s: %s",
           ack != NULL ? ack->error : "(an Ack that does not decode)",
           ack != NULL ? ack->message : "");
  if (ack != NULL)
    emitd__v1__ack__free_unpacked(ack, NULL);
}

static void on_reply(struct drive *d, struct conn *c, bool ok, const char *p,
                     size_t len, uint64_t now)
{
  if (d->hist != NULL) {
    uint64_t sent = c->ts[c->acked % TS_CAP];

    hist_add(d->hist, (now - sent) / 1000);
    if (d->timeline != NULL)
      fprintf(d->timeline, "%u %" PRIu64 " %" PRIu64 "\n", d->run, sent,
              (now - sent) / 1000);
  }
  c->acked++;
  d->acked++;
  if (!ok)
    note_failure(d, p, len);
}

/* Reads what emitd has answered and counts the replies: text ones end at
 * a newline and are ok when they start with {"ok":true; binary ones are
 * frames whose Ack starts with field 1 (ok) = true. */
static int conn_read(struct drive *d, struct conn *c)
{
  static const char ok_text[] = "{\"ok\":true";
  ssize_t n;
  size_t pos = 0;
  uint64_t now;

  n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR)
      return 0;
    fprintf(stderr, "emitd-bench: reading from emitd: %s\n",
            strerror(errno));
    return -1;
  }
  if (n == 0) {
    fprintf(stderr, "emitd-bench: emitd closed a connection after %" PRIu64
            " of %" PRIu64 " replies\n", c->acked, c->sent);
    return -1;
  }
  now = d->hist != NULL ? now_ns() : 0;
  c->in_len += (size_t)n;
  if (d->mode == MODE_TEXT) {
    for (;;) {
      const char *line = c->in + pos;
      const char *nl = memchr(line, '\n', c->in_len - pos);
      if (nl == NULL)
        break;
      size_t len = (size_t)(nl - line);
      on_reply(d, c, len >= sizeof(ok_text) - 1 &&
               memcmp(line, ok_text, sizeof(ok_text) - 1) == 0, line, len,
               now);
      pos += len + 1;
    }
  } else {
    while (c->in_len - pos >= 4) {
      const uint8_t *f = (const uint8_t *)c->in + pos;
      size_t len = (size_t)f[0] << 24 | (size_t)f[1] << 16 |
                   (size_t)f[2] << 8 | f[3];
      if (len + 4 > IN_CAP) {
        fprintf(stderr, "emitd-bench: a reply frame of %zu bytes\n", len);
        return -1;
      }
      if (c->in_len - pos - 4 < len)
        break;
      on_reply(d, c, len >= 2 && f[4] == 0x08 && f[5] == 0x01,
               (const char *)f + 4, len, now);
      pos += 4 + len;
    }
  }
  if (pos == 0 && c->in_len == IN_CAP) {
    fprintf(stderr, "emitd-bench: a reply over %u bytes\n", IN_CAP);
    return -1;
  }
  memmove(c->in, c->in + pos, c->in_len - pos);
  c->in_len -= pos;
  return 0;
}

/* Latency mode: hands out the events due by now, round robin; event j is
 * due at t0 + j / rate, and its latency counts from then, so a stall in
 * emitd shows up in full (no coordinated omission). */
static int release_due(struct drive *d, uint64_t *released, uint64_t t0,
                       double rate)
{
  double elapsed = (double)(now_ns() - t0);
  uint64_t due = (uint64_t)(elapsed * rate / 1e9) + 1;

  if (due > d->total)
    due = d->total;
  while (*released < due) {
    uint64_t j = (*released)++;
    struct conn *c = &d->conns[j % d->n];
    if (c->quota - c->acked >= TS_CAP) {
      fprintf(stderr, "emitd-bench: emitd fell %u events behind on one "
              "connection at %.0f events/s\n", TS_CAP, rate);
      return -1;
    }
    c->ts[c->quota % TS_CAP] = t0 + (uint64_t)((double)j * 1e9 / rate);
    c->quota++;
  }
  for (unsigned i = 0; i < d->n; i++)
    if (d->conns[i].quota > d->conns[i].sent &&
        conn_pump(d, &d->conns[i]) != 0)
      return -1;
  return 0;
}

/* Sends d->total events, spread evenly (rate 0: as fast as the window
 * lets; else rate events/s on a 100 us clock) and returns once every
 * reply is in. */
static int drive_run(struct drive *d, double rate)
{
  struct epoll_event evs[64];
  struct itimerspec its = { { 0, TICK_NS }, { 0, TICK_NS } };
  uint64_t released = 0, t0 = now_ns(), last_acked = 0, last_progress;
  uint64_t last_check, now;
  int tfd = -1, rc = -1;

  last_progress = last_check = t0;
  if (rate > 0) {
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) != 0 ||
        epoll_ctl(d->ep, EPOLL_CTL_ADD, tfd, &ev) != 0)
      goto out;
    d->t_first = t0;
    if (release_due(d, &released, t0, rate) != 0)
      goto out;
  } else {
    for (unsigned i = 0; i < d->n; i++) {
      d->conns[i].quota = d->total / d->n + (i < d->total % d->n);
      if (conn_pump(d, &d->conns[i]) != 0)
        goto out;
    }
  }
  while (d->acked < d->total) {
    int k = epoll_wait(d->ep, evs, 64, 1000);
    if (k < 0 && errno != EINTR)
      goto out;
    for (int i = 0; i < k; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c == NULL) {
        uint64_t ticks;
        if (read(tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
          goto out;
        if (released < d->total &&
            release_due(d, &released, t0, rate) != 0)
          goto out;
        if (released == d->total) {
          struct itimerspec off = { { 0, 0 }, { 0, 0 } };
          timerfd_settime(tfd, 0, &off, NULL);
        }
        continue;
      }
      if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) &&
          conn_read(d, c) != 0)
        goto out;
      if (conn_pump(d, c) != 0)
        goto out;
    }
    now = now_ns();
    if (d->acked != last_acked) {
      last_acked = d->acked;
      last_progress = now;
    } else if (now - last_check >= 1000000000ull) {
      last_check = now;
      if (!emitd_alive(d->dm))
        goto out;
      if (now - last_progress > STALL_NS) {
        fprintf(stderr, "emitd-bench: no reply for 30 s (%" PRIu64 " of %"
                PRIu64 ")\n", d->acked, d->total);
        goto out;
      }
    }
  }
  d->t_last = now_ns();
  rc = 0;

out:
  if (rc != 0)
    fprintf(stderr, "emitd-bench: stopped after %" PRIu64 " of %" PRIu64
            " replies\n", d->acked, d->total);
  if (tfd >= 0)
    close(tfd);
  return rc;
}

/* ---- the upstream's count ---------------------------------------------- */

/* One keep-alive connection to the test upstream's control interface, so
 * polling every few milliseconds costs it no thread per request. */
struct stats_conn {
  unsigned port;
  int fd;                        /* -1 until connected */
};

static void stats_close(struct stats_conn *sc)
{
  if (sc->fd >= 0)
    close(sc->fd);
  sc->fd = -1;
}

/* "events" of GET /_test/stats. Returns 0, or -1 with the connection
 * closed (the next call reconnects). */
static int upstream_events(struct stats_conn *sc, uint64_t *events)
{
  static const char req[] = "GET /_test/stats HTTP/1.1\r\n"
                            "Host: 127.0.0.1\r\n\r\n";
  struct sockaddr_in sa = { .sin_family = AF_INET,
                            .sin_port = htons((uint16_t)sc->port) };
  struct timeval tv = { 2, 0 };
  char buf[4096];
  const char *body, *p;
  size_t got = 0, want;
  ssize_t n;

  if (sc->fd < 0) {
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sc->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sc->fd < 0)
      return -1;
    setsockopt(sc->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(sc->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
      goto fail;
  }
  if (write(sc->fd, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1)
    goto fail;
  /* Headers, then Content-Length bytes of body. */
  for (body = NULL, want = 0;;) {
    if (got + 1 >= sizeof(buf))
      goto fail;
    n = read(sc->fd, buf + got, sizeof(buf) - 1 - got);
    if (n <= 0)
      goto fail;
    got += (size_t)n;
    buf[got] = '\0';
    if (body == NULL && (p = strstr(buf, "\r\n\r\n")) != NULL) {
      const char *cl = strcasestr(buf, "\r\nContent-Length:");
      if (cl == NULL || cl > p)
        goto fail;
      body = p + 4;
      want = (size_t)(body - buf) + strtoul(cl + 17, NULL, 10);
    }
    if (body != NULL && got >= want)
      break;
  }
  p = strstr(body, "\"events\":");
  if (p == NULL || got > want)
    goto fail;
  *events = strtoull(p + 9, NULL, 10);
  return 0;

fail:
  stats_close(sc);
  return -1;
}

/* ---- the tests --------------------------------------------------------- */

struct ingest_res {
  bool done;                     /* measured */
  enum mode mode;
  bool upstream;                 /* forwarding to the live upstream */
  uint64_t events, failed;
  double secs, rate;
  struct usage u;
  char failure[320];
};

struct latency_res {
  bool done;
  uint64_t events, failed;
  double offered, achieved;      /* events/s */
  double p50, p90, p99, p999, max;  /* ms */
  struct usage u;
  char failure[320];
};

struct e2e_res {
  bool done;                     /* every event counted upstream */
  bool ran;                      /* the ingest half worked */
  uint64_t events, failed, counted;
  double ingest_rate, rate, secs;
  struct usage u;
  double upstream_cpu_s;
  char failure[320];
  char note[160];
};

struct backlog_res {
  bool done;
  uint64_t backlog, events;
  double prefill_rate;           /* sync=none, binary */
  double empty_rate, backlog_rate, ratio;   /* the median pair */
  unsigned pairs;
  double pair_ratio[MAX_RUNS];   /* each pair's, in the order run */
  double listen_ms;              /* spawn to a connection accepted */
  double restart_ms;             /* spawn to the first reply */
  struct usage u_empty, u_backlog;
  uint64_t failed;
  char failure[320];
};

/* The machine's own limits (SPEC 8): the disk's fsync rate and one core's
 * decoding speed. */
struct limits_res {
  bool done;
  double fsync_per_s;            /* 4 KiB appended, then fdatasync */
  double fsync_p50, fsync_p99;   /* ms */
  double decode_per_s[2];        /* by mode, one core */
};

struct report {
  const struct opts *o;
  const struct pool *pool;
  struct limits_res limits;
  bool ran_limits;
  struct ingest_res ingest[2];   /* by mode */
  struct latency_res lat;
  struct e2e_res e2e;
  struct backlog_res backlog;
  bool ran_ingest[2], ran_lat, ran_e2e, ran_backlog;
  bool error;                    /* some run could not finish */
  /* With --runs N, each test's median run is the one shown; the range of
   * its figure over the runs goes below the table. */
  unsigned nspread;
  struct spread {
    const char *what, *unit;
    double lo, hi;
  } spread[5];
};

/* Which of key[0..n-1] is the median (the lower middle one for even n;
 * n at most MAX_RUNS). */
static size_t median_index(const double *key, size_t n)
{
  size_t idx[MAX_RUNS];

  for (size_t i = 0; i < n; i++) {      /* idx in the order of key */
    size_t j = i;

    for (; j > 0 && key[idx[j - 1]] > key[i]; j--)
      idx[j] = idx[j - 1];
    idx[j] = i;
  }
  return idx[(n - 1) / 2];
}

/* The median of n runs by key[] (the run itself, so that its figures stay
 * together; the lower middle one for even n), noting key's range in rp. */
static size_t median_run(struct report *rp, const char *what,
                         const char *unit, const double *key, size_t n)
{
  if (n > 1 && rp->nspread < sizeof(rp->spread) / sizeof(rp->spread[0])) {
    struct spread sp = { what, unit, key[0], key[0] };

    for (size_t i = 1; i < n; i++) {
      sp.lo = key[i] < sp.lo ? key[i] : sp.lo;
      sp.hi = key[i] > sp.hi ? key[i] : sp.hi;
    }
    rp->spread[rp->nspread++] = sp;
  }
  return median_index(key, n);
}

static char *perf_name(const struct opts *o, const char *test, char *buf,
                       size_t len)
{
  if (o->perf_path == NULL)
    return NULL;
  snprintf(buf, len, "%s.%s", o->perf_path, test);
  return buf;
}

/* Drives emitd (already running in dm) with events in mode, as fast as
 * the window lets, and fills r. */
static int ingest_on(struct daemons *dm, const struct opts *o,
                     const struct pool *p, enum mode mode, uint64_t events,
                     const char *perf_out, struct ingest_res *r)
{
  struct drive d;
  struct meter m;
  int rc;

  r->mode = mode;
  r->events = events;
  if (drive_open(&d, dm, p, mode, o->conns, o->window, events, false,
                 o->ulid) != 0)
    return -1;
  meter_start(&m, dm->emitd, perf_out, dm->dir);
  rc = drive_run(&d, 0);
  meter_stop(&m, &r->u);
  r->failed = d.failed;
  snprintf(r->failure, sizeof(r->failure), "%s", d.first_failure);
  if (rc == 0) {
    r->secs = secs(d.t_last - d.t_first);
    r->rate = (double)events / r->secs;
    r->done = true;
  }
  drive_close(&d);
  return rc;
}

static int run_ingest(const struct opts *o, const struct pool *p,
                      enum mode mode, struct ingest_res *r)
{
  struct daemons dm;
  char perf[PATH_MAX];
  int rc = -1;

  fprintf(stderr, "emitd-bench: ingest, %s: %" PRIu64 " events over %u "
          "connections, window %" PRIu64 ", sync=%s\n", mode_names[mode],
          o->events, o->conns, o->window, o->sync);
  memset(r, 0, sizeof(*r));
  r->upstream = !o->no_upstream;
  if (daemons_open(&dm, o, !o->no_upstream) != 0)
    return -1;
  if (emitd_start(&dm, o, o->sync, spool_bytes_for(o->events), NULL) != 0)
    goto out;
  rc = ingest_on(&dm, o, p, mode, o->events,
                 perf_name(o, mode == MODE_TEXT ? "ingest-text"
                           : "ingest-binary", perf, sizeof(perf)), r);
  if (emitd_stop(&dm) != 0)
    rc = -1;

out:
  daemons_close(&dm);
  return rc;
}

/* With --timeline, every reply goes to that file as a line "run sent
 * latency": the run (0 on), when the event was due to be sent (ns,
 * CLOCK_MONOTONIC, as perf record -k CLOCK_MONOTONIC stamps), and how
 * long its reply took (us). */
static int run_latency(const struct opts *o, const struct pool *p,
                       unsigned run, struct latency_res *r)
{
  struct daemons dm;
  struct drive d;
  struct meter m;
  char perf[PATH_MAX];
  uint64_t events = (uint64_t)(o->rate * o->duration_s);
  FILE *timeline = NULL;
  int rc = -1;

  fprintf(stderr, "emitd-bench: latency: %.0f events/s for %.0f s over %u "
          "connections, %s, sync=%s\n", o->rate, o->duration_s, o->conns,
          mode_names[o->mode], o->sync);
  memset(r, 0, sizeof(*r));
  r->events = events;
  r->offered = o->rate;
  if (events == 0)
    return -1;
  /* A timeline that cannot be written fails the run before it starts,
   * not after its seconds of load. */
  if (o->timeline_path != NULL) {
    timeline = fopen(o->timeline_path, run == 0 ? "w" : "a");
    if (timeline == NULL) {
      fprintf(stderr, "emitd-bench: --timeline %s: %s\n", o->timeline_path,
              strerror(errno));
      return -1;
    }
  }
  if (daemons_open(&dm, o, true) != 0)
    goto out_timeline;
  if (emitd_start(&dm, o, o->sync, spool_bytes_for(events), NULL) != 0)
    goto out;
  if (drive_open(&d, &dm, p, o->mode, o->conns, 0, events, true,
                 o->ulid) != 0)
    goto out;
  meter_start(&m, dm.emitd, perf_name(o, "latency", perf, sizeof(perf)),
              dm.dir);
  d.timeline = timeline;
  d.run = run;
  rc = drive_run(&d, o->rate);
  meter_stop(&m, &r->u);
  d.timeline = NULL;
  r->failed = d.failed;
  snprintf(r->failure, sizeof(r->failure), "%s", d.first_failure);
  if (rc == 0) {
    r->achieved = (double)events / secs(d.t_last - d.t_first);
    r->p50 = hist_quantile_ms(d.hist, 0.50);
    r->p90 = hist_quantile_ms(d.hist, 0.90);
    r->p99 = hist_quantile_ms(d.hist, 0.99);
    r->p999 = hist_quantile_ms(d.hist, 0.999);
    r->max = (double)d.hist->max_us / 1000.0;
    r->done = true;
  }
  drive_close(&d);
  if (emitd_stop(&dm) != 0)
    rc = -1;

out:
  daemons_close(&dm);
out_timeline:
  if (timeline != NULL && fclose(timeline) != 0) {
    fprintf(stderr, "emitd-bench: --timeline %s: %s\n", o->timeline_path,
            strerror(errno));
    rc = -1;
  }
  return rc;
}

/* Sends the events, then polls the upstream until it has counted them
 * all; the rate runs from the first write to the poll that saw the last. */
static int run_e2e(const struct opts *o, const struct pool *p,
                   struct e2e_res *r)
{
  struct daemons dm;
  struct drive d;
  struct meter m;
  char perf[PATH_MAX];
  struct stats_conn sc = { 0, -1 };
  uint64_t counted = 0, last = 0, t_change, t_end = 0;
  double up_cpu0;
  int rc = -1;

  fprintf(stderr, "emitd-bench: e2e: %" PRIu64 " events over %u "
          "connections, %s, batch, protobuf, sync=%s\n", o->events, o->conns,
          mode_names[o->mode], o->sync);
  memset(r, 0, sizeof(*r));
  r->events = o->events;
  if (daemons_open(&dm, o, true) != 0)
    return -1;
  if (emitd_start(&dm, o, o->sync, spool_bytes_for(o->events), NULL) != 0)
    goto out;
  if (drive_open(&d, &dm, p, o->mode, o->conns, o->window, o->events,
                 false, o->ulid) != 0)
    goto out;
  sc.port = dm.port;
  up_cpu0 = proc_cpu_s(dm.upstream);
  meter_start(&m, dm.emitd, perf_name(o, "e2e", perf, sizeof(perf)),
              dm.dir);
  rc = drive_run(&d, 0);
  if (rc == 0) {
    r->ran = true;
    r->ingest_rate = (double)o->events / secs(d.t_last - d.t_first);
    for (t_change = now_ns();;) {
      uint64_t t = now_ns();
      if (upstream_events(&sc, &counted) == 0 && counted >= o->events) {
        t_end = t;
        break;
      }
      if (counted != last) {
        last = counted;
        t_change = t;
      } else if (t - t_change > E2E_STALL_NS || !emitd_alive(&dm)) {
        snprintf(r->note, sizeof(r->note), "the upstream counted %" PRIu64
                 " of %" PRIu64 " and then no more for 20 s", counted,
                 o->events);
        fprintf(stderr, "emitd-bench: e2e: %s\n", r->note);
        rc = -1;
        break;
      }
      sleep_ns(E2E_POLL_NS);
    }
  }
  meter_stop(&m, &r->u);
  stats_close(&sc);
  r->upstream_cpu_s = proc_cpu_s(dm.upstream) - up_cpu0;
  r->counted = counted;
  r->failed = d.failed;
  snprintf(r->failure, sizeof(r->failure), "%s", d.first_failure);
  if (rc == 0) {
    r->secs = secs(t_end - d.t_first);
    r->rate = (double)o->events / r->secs;
    r->done = true;
  }
  drive_close(&d);
  if (emitd_stop(&dm) != 0)
    rc = -1;

out:
  daemons_close(&dm);
  return rc;
}

/* Appends 4 KiB and fdatasyncs, again and again for a second, in a file
 * in the directory the spools go to: the most group commits this disk
 * allows per second. */
static int fsync_rate(const struct opts *o, struct limits_res *r)
{
  char path[PATH_MAX];
  static const char block[4096];
  struct hist *h = calloc(1, sizeof(*h));
  uint64_t t0, t, n = 0;
  int fd, rc = -1;

  snprintf(path, sizeof(path), "%s/emitd-bench.fsync.XXXXXX", o->tmp_dir);
  fd = h != NULL ? mkstemp(path) : -1;
  if (fd < 0) {
    fprintf(stderr, "emitd-bench: cannot make a file in %s: %s\n",
            o->tmp_dir, strerror(errno));
    free(h);
    return -1;
  }
  unlink(path);
  t0 = now_ns();
  do {
    t = now_ns();
    if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block) ||
        fdatasync(fd) != 0)
      goto out;
    hist_add(h, (now_ns() - t) / 1000);
    n++;
  } while (now_ns() - t0 < 1000000000ull || n < 20);
  r->fsync_per_s = (double)n / secs(now_ns() - t0);
  r->fsync_p50 = hist_quantile_ms(h, 0.50);
  r->fsync_p99 = hist_quantile_ms(h, 0.99);
  rc = 0;

out:
  close(fd);
  free(h);
  return rc;
}

/* Decodes the pool's events in mode with emitd's own codec on this one
 * thread for a second (no socket, no spool): the most one core can take
 * in. */
static int decode_rate(const struct pool *p, enum mode mode, double *rate)
{
  struct emd_arena arena = { 0 };
  emd_event *ev;
  uint64_t t0 = now_ns(), n = 0;
  int rc = 0;

  do {
    for (size_t i = 0; i < 1024 && rc == 0; i++, n++) {
      const struct tmpl *t = mode == MODE_TEXT ? &p->t[n % p->n]
                             : &p->b[n % p->n];
      emd_arena_reset(&arena);
      if (mode == MODE_TEXT)
        rc = emd_codec_decode_json(p->text.data + t->off, t->len - 1, NULL,
                                   &arena, &ev, NULL, 0);
      else
        rc = emd_codec_decode_frame((const uint8_t *)p->bin.data + t->off
                                    + 4, t->len - 4, NULL, &arena, &ev,
                                    NULL, 0);
    }
  } while (rc == 0 && now_ns() - t0 < 1000000000ull);
  *rate = (double)n / secs(now_ns() - t0);
  emd_arena_free(&arena);
  return rc == 0 ? 0 : -1;
}

static int run_limits(const struct opts *o, const struct pool *p,
                      struct limits_res *r)
{
  fprintf(stderr, "emitd-bench: limits: fdatasync rate in %s, decoding "
          "speed on one core\n", o->tmp_dir);
  memset(r, 0, sizeof(*r));
  if (fsync_rate(o, r) != 0 ||
      decode_rate(p, MODE_TEXT, &r->decode_per_s[MODE_TEXT]) != 0 ||
      decode_rate(p, MODE_BINARY, &r->decode_per_s[MODE_BINARY]) != 0)
    return -1;
  r->done = true;
  return 0;
}

/* Spawns emitd on an existing spool and times spawn -> first reply on a
 * fresh connection (connect retried every 200 us, then one event). */
static int restart_time(struct daemons *dm, const struct opts *o,
                        const struct pool *p, uint64_t max_bytes,
                        double *listen_ms, double *ms)
{
  uint64_t t0 = now_ns(), rng = seed();
  char line[4096], reply[512];
  size_t got = 0;
  ssize_t n;
  int fd;

  if (emitd_start(dm, o, o->sync, max_bytes, &fd) != 0)
    return -1;
  *listen_ms = (double)(now_ns() - t0) / 1e6;
  memcpy(line, p->text.data + p->t[0].off, p->t[0].len);
  fill_id(&rng, line + p->t[0].id_off, 0);
  if (write(fd, line, p->t[0].len) != (ssize_t)p->t[0].len)
    goto fail;
  while (got < sizeof(reply) - 1 &&
         (n = read(fd, reply + got, sizeof(reply) - 1 - got)) > 0) {
    got += (size_t)n;
    if (memchr(reply, '\n', got) != NULL)
      break;
  }
  *ms = (double)(now_ns() - t0) / 1e6;
  close(fd);
  reply[got] = '\0';
  if (strncmp(reply, "{\"ok\":true", 10) != 0) {
    fprintf(stderr, "emitd-bench: first reply after the restart: %s\n",
            reply);
    return -1;
  }
  return 0;

fail:
  close(fd);
  return -1;
}

/* fsyncs every file in dir, and dir. */
static int sync_files(const char *dir)
{
  char path[PATH_MAX];
  struct dirent *e;
  DIR *d = opendir(dir);
  int fd, rc = 0;

  if (d == NULL)
    return -1;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
      rc = -1;
    if (fd >= 0)
      close(fd);
  }
  fd = dirfd(d);
  if (fsync(fd) != 0)
    rc = -1;
  closedir(d);
  return rc;
}

/* The name of pair k's phase for --perf: base, then base-2, base-3... */
static void pair_phase(char *buf, size_t len, const char *base, unsigned k)
{
  if (k == 0)
    snprintf(buf, len, "%s", base);
  else
    snprintf(buf, len, "%s-%u", base, k + 1);
}

/* Fills a spool with o->backlog events (sync=none, binary, an upstream
 * that refuses, so nothing drains); then, o->pairs times, ingests into a
 * new empty spool and, right after, restarts emitd on the full one with
 * o->sync and ingests the same number of events into it. The first
 * restart is timed to its first reply. Each pair's ratio compares two
 * ingests a few seconds apart, so the machine's drift (its speed moves
 * by up to 1.5x within minutes) weighs on a pair as little as it can;
 * the median pair is the figure. Each pair adds o->events to the full
 * spool: the later pairs run on a bigger backlog than --backlog.
 *
 * Every measured ingest grows the page cache by some gigabytes of spool.
 * In a VM the first touch of a page costs a fault in the host (README,
 * "Where the time goes now"), so both sides must find memory in the same
 * state: the fill goes first and nothing is deleted until the end, so
 * each takes pages the machine has not handed out before. (The other
 * order let the empty run reuse what earlier tests had freed, and that,
 * not the backlog, was most of the gap; with the empty spool deleted
 * before the full run it was the other way round.) */
static int run_backlog(const struct opts *o, const struct pool *p,
                       struct backlog_res *r)
{
  struct daemons dm, de[MAX_RUNS];
  struct ingest_res fill, empty[MAX_RUNS], full[MAX_RUNS];
  char perf[PATH_MAX], what[64];
  uint64_t max_bytes = spool_bytes_for(o->backlog +
                                       (o->pairs + 1) * o->events);
  size_t mid;
  int rc = -1;

  memset(r, 0, sizeof(*r));
  memset(&fill, 0, sizeof(fill));
  memset(empty, 0, sizeof(empty));
  memset(full, 0, sizeof(full));
  memset(de, 0, sizeof(de));
  for (unsigned k = 0; k < MAX_RUNS; k++)
    de[k].dead_fd = -1;
  r->backlog = o->backlog;
  r->events = o->events;
  fprintf(stderr, "emitd-bench: backlog: filling a spool with %" PRIu64
          " events (binary, sync=none)\n", o->backlog);
  if (daemons_open(&dm, o, false) != 0)
    return -1;
  if (emitd_start(&dm, o, "none", max_bytes, NULL) != 0 ||
      ingest_on(&dm, o, p, MODE_BINARY, o->backlog, NULL, &fill) != 0 ||
      emitd_stop(&dm) != 0)
    goto out;
  r->prefill_rate = fill.rate;
  /* The fill ran with sync=none: its pages may still wait for writeback,
   * and emitd's first fdatasync would pay for all of them. */
  if (sync_files(dm.spool) != 0) {
    fprintf(stderr, "emitd-bench: cannot sync %s: %s\n", dm.spool,
            strerror(errno));
    goto out;
  }

  for (unsigned k = 0; k < o->pairs; k++) {
    fprintf(stderr, "emitd-bench: backlog: pair %u of %u: ingest of %"
            PRIu64 " events, text, into an empty spool\n", k + 1, o->pairs,
            o->events);
    pair_phase(what, sizeof(what), "backlog-empty", k);
    if (daemons_open(&de[k], o, false) != 0)
      goto out;
    if (emitd_start(&de[k], o, o->sync, max_bytes, NULL) != 0 ||
        ingest_on(&de[k], o, p, MODE_TEXT, o->events,
                  perf_name(o, what, perf, sizeof(perf)), &empty[k]) != 0 ||
        emitd_stop(&de[k]) != 0)
      goto out;
    /* de[k]'s spool stays until the end: freed, its page cache would be
     * the memory the next ingest reuses. */

    fprintf(stderr, "emitd-bench: backlog: pair %u of %u: restart on %"
            PRIu64 " pending, then ingest of %" PRIu64 " events, text\n",
            k + 1, o->pairs, o->backlog + k * o->events, o->events);
    pair_phase(what, sizeof(what), "backlog-full", k);
    if ((k == 0 ? restart_time(&dm, o, p, max_bytes, &r->listen_ms,
                               &r->restart_ms)
                : emitd_start(&dm, o, o->sync, max_bytes, NULL)) != 0 ||
        ingest_on(&dm, o, p, MODE_TEXT, o->events,
                  perf_name(o, what, perf, sizeof(perf)), &full[k]) != 0 ||
        emitd_stop(&dm) != 0)
      goto out;
    r->pair_ratio[k] = full[k].rate / empty[k].rate;
    r->pairs = k + 1;
  }
  mid = median_index(r->pair_ratio, r->pairs);
  r->empty_rate = empty[mid].rate;
  r->backlog_rate = full[mid].rate;
  r->ratio = r->pair_ratio[mid];
  r->u_empty = empty[mid].u;
  r->u_backlog = full[mid].u;
  r->done = true;
  rc = 0;

out:
  r->failed = fill.failed;
  snprintf(r->failure, sizeof(r->failure), "%s", fill.failure);
  for (unsigned k = 0; k < o->pairs; k++) {
    r->failed += empty[k].failed + full[k].failed;
    if (r->failure[0] == '\0')
      snprintf(r->failure, sizeof(r->failure), "%s", empty[k].failure[0]
               ? empty[k].failure : full[k].failure);
  }
  for (unsigned k = 0; k < MAX_RUNS; k++)
    daemons_close(&de[k]);
  daemons_close(&dm);
  return rc;
}

/* ---- the report -------------------------------------------------------- */

enum verdict { V_INFO, V_PASS, V_FAIL, V_NA };

struct row {
  char metric[64];
  char measured[48];
  char target[24];
  enum verdict v;
  double value;                  /* the figure, for JSON */
  const char *unit;
};

struct rows {
  struct row r[32];
  unsigned n;
};

static struct row *row_add(struct rows *rs, const char *metric,
                           const char *unit)
{
  struct row *r = &rs->r[rs->n < 31 ? rs->n++ : 31];

  memset(r, 0, sizeof(*r));
  snprintf(r->metric, sizeof(r->metric), "%s", metric);
  snprintf(r->target, sizeof(r->target), "-");
  r->unit = unit;
  r->v = V_NA;
  r->value = NAN;
  return r;
}

static void row_set(struct row *r, bool measured, double value,
                    const char *measured_text, enum verdict v)
{
  if (!measured) {
    snprintf(r->measured, sizeof(r->measured), "not measured");
    r->v = V_NA;
    return;
  }
  r->value = value;
  snprintf(r->measured, sizeof(r->measured), "%s", measured_text);
  r->v = v;
}

static enum verdict check(bool ok)
{
  return ok ? V_PASS : V_FAIL;
}

static void build_rows(const struct report *rp, struct rows *rs)
{
  const struct opts *o = rp->o;
  char buf[64], buf2[32], name[64];
  struct row *r;

  memset(rs, 0, sizeof(*rs));
  if (rp->ran_limits) {
    const struct limits_res *l = &rp->limits;
    r = row_add(rs, "disk: 4 KiB write + fdatasync (per s)", "per s");
    snprintf(buf, sizeof(buf), "%s (p50 %.1f, p99 %.1f ms)",
             fmt_count(buf2, sizeof(buf2), l->fsync_per_s), l->fsync_p50,
             l->fsync_p99);
    row_set(r, l->done, l->fsync_per_s, buf, V_INFO);
    for (int m = 0; m < 2; m++) {
      snprintf(name, sizeof(name), "decode, %s, one core (events/s)",
               mode_names[m]);
      r = row_add(rs, name, "events/s");
      row_set(r, l->done, l->decode_per_s[m],
              fmt_count(buf, sizeof(buf), l->decode_per_s[m]), V_INFO);
    }
  }
  for (int m = 0; m < 2; m++) {
    const struct ingest_res *in = &rp->ingest[m];
    if (!rp->ran_ingest[m])
      continue;
    snprintf(name, sizeof(name), "ingest, %s, %u conns (events/s)",
             mode_names[m], o->conns);
    r = row_add(rs, name, "events/s");
    if (m == MODE_TEXT) {
      snprintf(r->target, sizeof(r->target), ">= %s",
               fmt_count(buf2, sizeof(buf2), T_INGEST_TEXT));
      row_set(r, in->done, in->rate, fmt_count(buf, sizeof(buf), in->rate),
              check(in->rate >= T_INGEST_TEXT));
    } else {
      snprintf(r->target, sizeof(r->target), "> text");
      row_set(r, in->done, in->rate, fmt_count(buf, sizeof(buf), in->rate),
              rp->ran_ingest[MODE_TEXT] && rp->ingest[MODE_TEXT].done
              ? check(in->rate > rp->ingest[MODE_TEXT].rate) : V_INFO);
    }
    snprintf(name, sizeof(name), "  emitd CPU, ingest %s (us/event)",
             mode_names[m]);
    r = row_add(rs, name, "us/event");
    snprintf(buf, sizeof(buf), "%.2f", in->u.cpu_s * 1e6 / (double)in->events);
    row_set(r, in->done, in->u.cpu_s * 1e6 / (double)in->events, buf,
            V_INFO);
  }
  if (rp->ran_lat) {
    const struct latency_res *l = &rp->lat;
    const char *q[] = { "p50", "p99", "p999" };
    const double v[] = { l->p50, l->p99, l->p999 };
    for (int i = 0; i < 3; i++) {
      snprintf(name, sizeof(name), "reply latency %s @ %s/s (ms)", q[i],
               fmt_count(buf2, sizeof(buf2), l->offered));
      r = row_add(rs, name, "ms");
      if (i == 1)
        snprintf(r->target, sizeof(r->target), "< %.0f", T_LATENCY_P99_MS);
      snprintf(buf, sizeof(buf), "%.2f", v[i]);
      row_set(r, l->done, v[i], buf,
              i == 1 ? check(v[i] < T_LATENCY_P99_MS) : V_INFO);
    }
  }
  if (rp->ran_e2e) {
    const struct e2e_res *e = &rp->e2e;
    snprintf(name, sizeof(name), "end to end, %s events, batch (events/s)",
             fmt_count(buf2, sizeof(buf2), (double)e->events));
    r = row_add(rs, name, "events/s");
    snprintf(r->target, sizeof(r->target), ">= %s",
             fmt_count(buf2, sizeof(buf2), T_E2E));
    row_set(r, e->done, e->rate, fmt_count(buf, sizeof(buf), e->rate),
            check(e->rate >= T_E2E));
    r = row_add(rs, "emitd CPU, whole path (us/event)", "us/event");
    snprintf(r->target, sizeof(r->target), "< %.0f", T_CPU_US);
    double us = e->u.cpu_s * 1e6 / (double)e->events;
    snprintf(buf, sizeof(buf), "%.2f", us);
    row_set(r, e->done, us, buf, check(us < T_CPU_US));
    r = row_add(rs, "peak anonymous memory, e2e run (MiB)", "MiB");
    snprintf(r->target, sizeof(r->target), "< %.0f", T_ANON_MIB);
    snprintf(buf, sizeof(buf), "%.1f", e->u.anon_peak_mib);
    row_set(r, e->done, e->u.anon_peak_mib, buf,
            check(e->u.anon_peak_mib < T_ANON_MIB));
    r = row_add(rs, "peak RSS (VmHWM), e2e run (MiB)", "MiB");
    snprintf(buf, sizeof(buf), "%.1f", e->u.rss_peak_mib);
    row_set(r, e->done, e->u.rss_peak_mib, buf, V_INFO);
  }
  if (rp->ran_backlog) {
    const struct backlog_res *b = &rp->backlog;
    snprintf(name, sizeof(name), "ingest with %s pending / empty",
             fmt_count(buf2, sizeof(buf2), (double)b->backlog));
    r = row_add(rs, name, "ratio");
    snprintf(r->target, sizeof(r->target), ">= %.0f %%",
             T_BACKLOG_RATIO * 100);
    snprintf(buf, sizeof(buf), "%.1f %% (%.0fk/%.0fk)", b->ratio * 100,
             b->backlog_rate / 1000, b->empty_rate / 1000);
    row_set(r, b->done, b->ratio, buf, check(b->ratio >= T_BACKLOG_RATIO));
    if (b->pairs > 1) {
      size_t n = 0;

      r = row_add(rs, "  each pair (the median above)", "ratio");
      buf[0] = '\0';
      for (unsigned k = 0; k < b->pairs && n < sizeof(buf); k++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%.0f %s",
                              b->pair_ratio[k] * 100,
                              k + 1 < b->pairs ? "" : "%");
      row_set(r, b->done, b->ratio, buf, V_INFO);
    }
    r = row_add(rs, "restart with that backlog: first reply (ms)", "ms");
    snprintf(r->target, sizeof(r->target), "< %.0f", T_RESTART_MS);
    snprintf(buf, sizeof(buf), "%.1f", b->restart_ms);
    row_set(r, b->done, b->restart_ms, buf,
            check(b->restart_ms < T_RESTART_MS));
  }
}

struct machine {
  long nproc;
  char cpu[128];
  char kernel[128];
  char date[40];
  char load[2][32];              /* /proc/loadavg before and after */
};

/* The 1, 5 and 15 minute load averages: other work on the machine shows
 * up here, and in every figure. */
static void load_get(char *buf, size_t len)
{
  char raw[128];
  double a, b, c;

  if (read_small("/proc/loadavg", raw, sizeof(raw)) > 0 &&
      sscanf(raw, "%lf %lf %lf", &a, &b, &c) == 3)
    snprintf(buf, len, "%.2f %.2f %.2f", a, b, c);
  else
    snprintf(buf, len, "unknown");
}

static void machine_get(struct machine *mc)
{
  char buf[16384], *p, *nl;
  struct utsname u;
  time_t t = time(NULL);
  struct tm tm;

  memset(mc, 0, sizeof(*mc));
  mc->nproc = sysconf(_SC_NPROCESSORS_ONLN);
  snprintf(mc->cpu, sizeof(mc->cpu), "unknown CPU");
  if (read_small("/proc/cpuinfo", buf, sizeof(buf)) > 0 &&
      (p = strstr(buf, "model name")) != NULL &&
      (p = strchr(p, ':')) != NULL) {
    p += 2;
    if ((nl = strchr(p, '\n')) != NULL)
      *nl = '\0';
    snprintf(mc->cpu, sizeof(mc->cpu), "%s", p);
  }
  if (uname(&u) == 0)
    snprintf(mc->kernel, sizeof(mc->kernel), "%s %s", u.sysname,
             u.release);
  gmtime_r(&t, &tm);
  strftime(mc->date, sizeof(mc->date), "%Y-%m-%d %H:%M UTC", &tm);
  load_get(mc->load[0], sizeof(mc->load[0]));
}

static void print_failures(const struct report *rp, FILE *f)
{
  const char *names[] = { "ingest text", "ingest binary", "latency", "e2e",
                          "backlog" };
  uint64_t failed[] = { rp->ingest[0].failed, rp->ingest[1].failed,
                        rp->lat.failed, rp->e2e.failed,
                        rp->backlog.failed };
  const char *first[] = { rp->ingest[0].failure, rp->ingest[1].failure,
                          rp->lat.failure, rp->e2e.failure,
                          rp->backlog.failure };

  for (int i = 0; i < 5; i++)
    if (failed[i] > 0)
      fprintf(f, "%s: %" PRIu64 " replies not ok; the first: %s\n",
              names[i], failed[i], first[i]);
  if (rp->ran_e2e && rp->e2e.note[0] != '\0')
    fprintf(f, "e2e: %s\n", rp->e2e.note);
}

static void print_table(const struct report *rp, const struct machine *mc)
{
  const struct opts *o = rp->o;
  static const char *const vs[] = { "info", "pass", "FAIL", "n/a" };
  struct rows rs;

  build_rows(rp, &rs);
  printf("machine: %ld CPUs, %s, %s, %s\n", mc->nproc, mc->cpu, mc->kernel,
         mc->date);
  printf("load average: %s before, %s after\n", mc->load[0], mc->load[1]);
  printf("emitd: %s; sync=%s; %u connections, window %" PRIu64 "\n",
         o->emitd_path, o->sync, o->conns, o->window);
  printf("events: text %.0f B, binary %.0f B on average; %zu templates; "
         "%s ids\n\n", rp->pool->text_avg, rp->pool->bin_avg, rp->pool->n,
         o->ulid ? "time-sorted (ULID-like)" : "random");
  printf("%-46s %-24s %-12s %s\n", "metric", "measured", "target",
         "result");
  for (unsigned i = 0; i < rs.n; i++)
    printf("%-46s %-24s %-12s %s\n", rs.r[i].metric, rs.r[i].measured,
           rs.r[i].target, vs[rs.r[i].v]);
  printf("\n");
  for (int m = 0; m < 2; m++)
    if (rp->ran_ingest[m] && rp->ingest[m].done)
      printf("ingest %s: %.2f s, emitd %.2f s CPU, bench %.2f s CPU, peak "
             "RSS %.1f MiB, anon %.1f MiB, %.0f MiB written%s\n",
             mode_names[m], rp->ingest[m].secs, rp->ingest[m].u.cpu_s,
             rp->ingest[m].u.bench_cpu_s, rp->ingest[m].u.rss_peak_mib,
             rp->ingest[m].u.anon_peak_mib, rp->ingest[m].u.disk_write_mib,
             rp->ingest[m].upstream ? "" : " (no upstream)");
  if (rp->ran_lat && rp->lat.done)
    printf("latency: %" PRIu64 " events, %.0f/s achieved, p90 %.2f ms, "
           "max %.2f ms\n", rp->lat.events, rp->lat.achieved, rp->lat.p90,
           rp->lat.max);
  if (rp->ran_e2e && rp->e2e.done)
    printf("e2e: ingest %.0f events/s; all counted after %.2f s; emitd "
           "%.2f s CPU, upstream %.2f s CPU; peak anon %.1f MiB, RSS %.1f "
           "MiB\n", rp->e2e.ingest_rate, rp->e2e.secs, rp->e2e.u.cpu_s,
           rp->e2e.upstream_cpu_s, rp->e2e.u.anon_peak_mib,
           rp->e2e.u.rss_peak_mib);
  else if (rp->ran_e2e && rp->e2e.ran)
    printf("e2e: ingest %.0f events/s, then the upstream counted %" PRIu64
           " of %" PRIu64 "\n", rp->e2e.ingest_rate, rp->e2e.counted,
           rp->e2e.events);
  if (rp->ran_backlog && rp->backlog.done)
    printf("backlog: filled at %.0f events/s (sync=none, binary); after "
           "the restart emitd accepted a connection at %.1f ms\n",
           rp->backlog.prefill_rate, rp->backlog.listen_ms);
  if (rp->nspread > 0)
    printf("each test ran %u times; above, the median run of each; over "
           "the runs:\n", o->runs);
  for (unsigned i = 0; i < rp->nspread; i++)
    printf("  %s: %.*f to %.*f %s\n", rp->spread[i].what,
           rp->spread[i].hi < 100 ? 2 : 0, rp->spread[i].lo,
           rp->spread[i].hi < 100 ? 2 : 0, rp->spread[i].hi,
           rp->spread[i].unit);
  print_failures(rp, stdout);
}

static void json_usage(struct emd_json *j, const char *key,
                       const struct usage *u)
{
  emd_json_key(j, key);
  emd_json_obj_begin(j);
  emd_json_kf64(j, "emitd_cpu_s", u->cpu_s);
  emd_json_kf64(j, "bench_cpu_s", u->bench_cpu_s);
  emd_json_kf64(j, "rss_peak_mib", u->rss_peak_mib);
  emd_json_kf64(j, "anon_peak_mib", u->anon_peak_mib);
  emd_json_kf64(j, "disk_write_mib", u->disk_write_mib);
  emd_json_obj_end(j);
}

static void json_ingest(struct emd_json *j, const char *key,
                        const struct ingest_res *r)
{
  emd_json_key(j, key);
  emd_json_obj_begin(j);
  emd_json_kbool(j, "done", r->done);
  emd_json_kbool(j, "upstream", r->upstream);
  emd_json_ku64(j, "events", r->events);
  emd_json_ku64(j, "failed", r->failed);
  emd_json_kf64(j, "secs", r->secs);
  emd_json_kf64(j, "events_per_s", r->rate);
  emd_json_kf64(j, "emitd_cpu_us_per_event",
                r->u.cpu_s * 1e6 / (double)r->events);
  json_usage(j, "usage", &r->u);
  emd_json_obj_end(j);
}

static int print_json(const struct report *rp, const struct machine *mc)
{
  const struct opts *o = rp->o;
  static const char *const vs[] = { "info", "pass", "fail", "n/a" };
  struct emd_json j;
  struct rows rs;
  int rc;

  build_rows(rp, &rs);
  emd_json_init(&j);
  emd_json_obj_begin(&j);
  emd_json_key(&j, "machine");
  emd_json_obj_begin(&j);
  emd_json_ki64(&j, "nproc", mc->nproc);
  emd_json_kstr(&j, "cpu", mc->cpu);
  emd_json_kstr(&j, "kernel", mc->kernel);
  emd_json_kstr(&j, "date", mc->date);
  emd_json_kstr(&j, "load_before", mc->load[0]);
  emd_json_kstr(&j, "load_after", mc->load[1]);
  emd_json_obj_end(&j);
  emd_json_key(&j, "config");
  emd_json_obj_begin(&j);
  emd_json_kstr(&j, "emitd", o->emitd_path);
  emd_json_kstr(&j, "sync", o->sync);
  emd_json_ku64(&j, "conns", o->conns);
  emd_json_ku64(&j, "window", o->window);
  emd_json_ku64(&j, "runs", o->runs);
  emd_json_ku64(&j, "events", o->events);
  emd_json_kf64(&j, "rate", o->rate);
  emd_json_kf64(&j, "duration_s", o->duration_s);
  emd_json_ku64(&j, "backlog", o->backlog);
  emd_json_ku64(&j, "pool", rp->pool->n);
  emd_json_kstr(&j, "ids", o->ulid ? "ulid" : "random");
  emd_json_kf64(&j, "text_event_bytes", rp->pool->text_avg);
  emd_json_kf64(&j, "binary_event_bytes", rp->pool->bin_avg);
  emd_json_obj_end(&j);
  emd_json_key(&j, "results");
  emd_json_obj_begin(&j);
  if (rp->ran_limits) {
    const struct limits_res *l = &rp->limits;
    emd_json_key(&j, "limits");
    emd_json_obj_begin(&j);
    emd_json_kbool(&j, "done", l->done);
    emd_json_kf64(&j, "fdatasync_per_s", l->fsync_per_s);
    emd_json_kf64(&j, "fdatasync_p50_ms", l->fsync_p50);
    emd_json_kf64(&j, "fdatasync_p99_ms", l->fsync_p99);
    emd_json_kf64(&j, "decode_text_per_s", l->decode_per_s[MODE_TEXT]);
    emd_json_kf64(&j, "decode_binary_per_s", l->decode_per_s[MODE_BINARY]);
    emd_json_obj_end(&j);
  }
  if (rp->ran_ingest[MODE_TEXT])
    json_ingest(&j, "ingest_text", &rp->ingest[MODE_TEXT]);
  if (rp->ran_ingest[MODE_BINARY])
    json_ingest(&j, "ingest_binary", &rp->ingest[MODE_BINARY]);
  if (rp->ran_lat) {
    const struct latency_res *l = &rp->lat;
    emd_json_key(&j, "latency");
    emd_json_obj_begin(&j);
    emd_json_kbool(&j, "done", l->done);
    emd_json_ku64(&j, "events", l->events);
    emd_json_ku64(&j, "failed", l->failed);
    emd_json_kf64(&j, "offered_per_s", l->offered);
    emd_json_kf64(&j, "achieved_per_s", l->achieved);
    emd_json_kf64(&j, "p50_ms", l->p50);
    emd_json_kf64(&j, "p90_ms", l->p90);
    emd_json_kf64(&j, "p99_ms", l->p99);
    emd_json_kf64(&j, "p999_ms", l->p999);
    emd_json_kf64(&j, "max_ms", l->max);
    json_usage(&j, "usage", &l->u);
    emd_json_obj_end(&j);
  }
  if (rp->ran_e2e) {
    const struct e2e_res *e = &rp->e2e;
    emd_json_key(&j, "e2e");
    emd_json_obj_begin(&j);
    emd_json_kbool(&j, "done", e->done);
    emd_json_ku64(&j, "events", e->events);
    emd_json_ku64(&j, "failed", e->failed);
    emd_json_ku64(&j, "counted", e->counted);
    emd_json_kf64(&j, "ingest_per_s", e->ingest_rate);
    emd_json_kf64(&j, "events_per_s", e->rate);
    emd_json_kf64(&j, "secs", e->secs);
    emd_json_kf64(&j, "emitd_cpu_us_per_event",
                  e->u.cpu_s * 1e6 / (double)e->events);
    emd_json_kf64(&j, "upstream_cpu_s", e->upstream_cpu_s);
    json_usage(&j, "usage", &e->u);
    if (e->note[0] != '\0')
      emd_json_kstr(&j, "note", e->note);
    emd_json_obj_end(&j);
  }
  if (rp->ran_backlog) {
    const struct backlog_res *b = &rp->backlog;
    emd_json_key(&j, "backlog");
    emd_json_obj_begin(&j);
    emd_json_kbool(&j, "done", b->done);
    emd_json_ku64(&j, "pending", b->backlog);
    emd_json_ku64(&j, "events", b->events);
    emd_json_ku64(&j, "failed", b->failed);
    emd_json_kf64(&j, "prefill_per_s", b->prefill_rate);
    emd_json_kf64(&j, "empty_per_s", b->empty_rate);
    emd_json_kf64(&j, "backlog_per_s", b->backlog_rate);
    emd_json_kf64(&j, "ratio", b->ratio);
    emd_json_key(&j, "pair_ratios");
    emd_json_arr_begin(&j);
    for (unsigned k = 0; k < b->pairs; k++)
      emd_json_f64(&j, b->pair_ratio[k]);
    emd_json_arr_end(&j);
    emd_json_kf64(&j, "restart_listen_ms", b->listen_ms);
    emd_json_kf64(&j, "restart_first_reply_ms", b->restart_ms);
    json_usage(&j, "usage_empty", &b->u_empty);
    json_usage(&j, "usage_backlog", &b->u_backlog);
    emd_json_obj_end(&j);
  }
  emd_json_obj_end(&j);
  emd_json_key(&j, "spread");        /* with runs > 1: over the runs */
  emd_json_arr_begin(&j);
  for (unsigned i = 0; i < rp->nspread; i++) {
    emd_json_obj_begin(&j);
    emd_json_kstr(&j, "metric", rp->spread[i].what);
    emd_json_kstr(&j, "unit", rp->spread[i].unit);
    emd_json_kf64(&j, "min", rp->spread[i].lo);
    emd_json_kf64(&j, "max", rp->spread[i].hi);
    emd_json_obj_end(&j);
  }
  emd_json_arr_end(&j);
  emd_json_key(&j, "checks");
  emd_json_arr_begin(&j);
  for (unsigned i = 0; i < rs.n; i++) {
    const char *m = rs.r[i].metric;
    while (*m == ' ')
      m++;
    emd_json_obj_begin(&j);
    emd_json_kstr(&j, "metric", m);
    emd_json_kf64(&j, "value", rs.r[i].value);
    emd_json_kstr(&j, "unit", rs.r[i].unit);
    emd_json_kstr(&j, "target", rs.r[i].target);
    emd_json_kstr(&j, "result", vs[rs.r[i].v]);
    emd_json_obj_end(&j);
  }
  emd_json_arr_end(&j);
  emd_json_obj_end(&j);
  rc = emd_json_finish(&j);
  if (rc == 0)
    printf("%s\n", j.t.data);
  emd_json_free(&j);
  return rc;
}

/* ---- command line ------------------------------------------------------ */

static void usage(FILE *f)
{
  fprintf(f,
    "Usage: emitd-bench COMMAND [OPTIONS]\n"
    "\n"
    "Starts a fresh emitd (and the test upstream as its destination) for\n"
    "every figure and drives it with realistic events of about 400 bytes.\n"
    "\n"
    "Commands:\n"
    "  ingest    events/s until every reply is read (N connections,\n"
    "            at most --window unanswered events on each)\n"
    "  latency   reply latency percentiles at a steady offered rate\n"
    "  e2e       events/s until the upstream has counted every event\n"
    "  backlog   ingest with --backlog events pending vs an empty spool,\n"
    "            and the first reply after a restart on that backlog\n"
    "  limits    the disk's fdatasync rate and one core's decoding speed\n"
    "            (SPEC 8), without emitd\n"
    "  all       limits, ingest (text and binary), latency, e2e, backlog\n"
    "\n"
    "Options:\n"
    "  --emitd PATH        emitd (default: ../agent/emitd next to us)\n"
    "  --upstream PATH     emd-upstream (default: ../tests/upstream/)\n"
    "  --conns N           connections (default 4)\n"
    "  --events N          events for ingest, e2e, backlog (default "
    "1000000)\n"
    "  --mode text|binary  ingest, latency, e2e (default text)\n"
    "  --window N          unanswered events per connection (default "
    "2000)\n"
    "  --rate N            latency: offered events/s (default 20000)\n"
    "  --duration S        latency: seconds (default 10)\n"
    "  --backlog N         backlog: pending events (default 5000000)\n"
    "  --sync MODE         spool.sync: always, interval, none (default "
    "always)\n"
    "  --pool N            distinct event templates (default 65536)\n"
    "  --no-upstream       ingest: forward to a port that refuses\n"
    "  --ids random|ulid   event ids: random (default), or time-sorted\n"
    "                      like the ULIDs emitd makes\n"
    "  --emitd-env K=V     one more EMITD_* setting (repeatable)\n"
    "  --tmp DIR           where run directories go (default /tmp)\n"
    "  --keep              keep the run directories (spools, logs)\n"
    "  --timeline FILE     latency: a line per reply into FILE: the run\n"
    "                      (0 on), when the event was due (ns,\n"
    "                      CLOCK_MONOTONIC) and its latency (us)\n"
    "  --perf PREFIX       perf record (DWARF call graphs, 499 Hz) on\n"
    "                      emitd during each phase,\n"
    "                      into PREFIX.<phase>\n"
    "  --json              JSON instead of the table\n"
    "  --runs N            run each test N times (1 to 9, default 1) and\n"
    "                      show the median run, with the range\n"
    "  --pairs N           backlog: empty and full ingests per run, each\n"
    "                      pair a few seconds apart (1 to 9, default 3);\n"
    "                      the median pair's ratio is the run's\n"
    "\n"
    "Targets are printed next to the figures; they never change the exit\n"
    "status, which is 1 only when a run could not finish or a reply was\n"
    "not ok.\n");
}

/* A path next to our own binary: build/bench/emitd-bench -> build/rel. */
static const char *beside_self(const char *rel, char *buf, size_t len)
{
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  char *slash;

  if (n <= 0)
    return rel;
  self[n] = '\0';
  slash = strrchr(self, '/');
  if (slash != NULL)
    *slash = '\0';
  snprintf(buf, len, "%.2000s/%s", self, rel);
  return buf;
}

static int parse_u64(const char *s, const char *what, uint64_t min,
                     uint64_t *out)
{
  char *end;
  unsigned long long v;

  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min) {
    fprintf(stderr, "emitd-bench: %s: \"%s\" is not a whole number of at "
            "least %" PRIu64 "\n", what, s, min);
    return -1;
  }
  *out = v;
  return 0;
}

/* --runs, --pairs: 1 to MAX_RUNS. */
static int parse_count(const char *s, const char *what, unsigned *out)
{
  uint64_t v;

  if (parse_u64(s, what, 1, &v) != 0 || v > MAX_RUNS) {
    fprintf(stderr, "emitd-bench: %s: 1 to %d\n", what, MAX_RUNS);
    return -1;
  }
  *out = (unsigned)v;
  return 0;
}

static int parse_args(int argc, char **argv, struct opts *o, char *emitd,
                      char *upstream, size_t len)
{
  enum { OPT_EMITD = 256, OPT_UPSTREAM, OPT_CONNS, OPT_EVENTS, OPT_MODE,
         OPT_WINDOW, OPT_RATE, OPT_DURATION, OPT_BACKLOG, OPT_SYNC, OPT_POOL,
         OPT_NO_UPSTREAM, OPT_ENV, OPT_TMP, OPT_KEEP, OPT_PERF, OPT_TIMELINE,
         OPT_JSON, OPT_IDS, OPT_RUNS, OPT_PAIRS };
  static const struct option lo[] = {
    { "emitd", required_argument, NULL, OPT_EMITD },
    { "upstream", required_argument, NULL, OPT_UPSTREAM },
    { "conns", required_argument, NULL, OPT_CONNS },
    { "events", required_argument, NULL, OPT_EVENTS },
    { "mode", required_argument, NULL, OPT_MODE },
    { "window", required_argument, NULL, OPT_WINDOW },
    { "rate", required_argument, NULL, OPT_RATE },
    { "duration", required_argument, NULL, OPT_DURATION },
    { "backlog", required_argument, NULL, OPT_BACKLOG },
    { "sync", required_argument, NULL, OPT_SYNC },
    { "pool", required_argument, NULL, OPT_POOL },
    { "no-upstream", no_argument, NULL, OPT_NO_UPSTREAM },
    { "emitd-env", required_argument, NULL, OPT_ENV },
    { "tmp", required_argument, NULL, OPT_TMP },
    { "keep", no_argument, NULL, OPT_KEEP },
    { "perf", required_argument, NULL, OPT_PERF },
    { "timeline", required_argument, NULL, OPT_TIMELINE },
    { "json", no_argument, NULL, OPT_JSON },
    { "runs", required_argument, NULL, OPT_RUNS },
    { "pairs", required_argument, NULL, OPT_PAIRS },
    { "ids", required_argument, NULL, OPT_IDS },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  uint64_t v;
  int c;

  memset(o, 0, sizeof(*o));
  o->emitd_path = beside_self("../agent/emitd", emitd, len);
  o->upstream_path = beside_self("../tests/upstream/emd-upstream", upstream,
                                 len);
  o->tmp_dir = "/tmp";
  o->sync = "always";
  o->conns = 4;
  o->events = 1000000;
  o->window = 2000;
  o->rate = 20000;
  o->duration_s = 10;
  o->backlog = 5000000;
  o->pool = 65536;
  o->runs = 1;
  o->pairs = 3;
  if (argc < 2 || argv[1][0] == '-') {
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "--help") == 0)) {
      usage(stdout);
      exit(0);
    }
    usage(stderr);
    return -1;
  }
  o->cmd = argv[1];
  if (strcmp(o->cmd, "ingest") != 0 && strcmp(o->cmd, "latency") != 0 &&
      strcmp(o->cmd, "limits") != 0 &&
      strcmp(o->cmd, "e2e") != 0 && strcmp(o->cmd, "backlog") != 0 &&
      strcmp(o->cmd, "all") != 0) {
    fprintf(stderr, "emitd-bench: unknown command \"%s\"\n", o->cmd);
    usage(stderr);
    return -1;
  }
  optind = 2;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case OPT_EMITD: o->emitd_path = optarg; break;
    case OPT_UPSTREAM: o->upstream_path = optarg; break;
    case OPT_CONNS:
      if (parse_u64(optarg, "--conns", 1, &v) != 0 || v > 4096)
        return -1;
      o->conns = (unsigned)v;
      break;
    case OPT_EVENTS:
      if (parse_u64(optarg, "--events", 1, &o->events) != 0)
        return -1;
      break;
    case OPT_MODE:
      if (strcmp(optarg, "text") == 0) {
        o->mode = MODE_TEXT;
      } else if (strcmp(optarg, "binary") == 0) {
        o->mode = MODE_BINARY;
      } else {
        fprintf(stderr, "emitd-bench: --mode: text or binary, not \"%s\"\n",
                optarg);
        return -1;
      }
      break;
    case OPT_WINDOW:
      if (parse_u64(optarg, "--window", 1, &o->window) != 0)
        return -1;
      break;
    case OPT_RATE:
      if (parse_u64(optarg, "--rate", 1, &v) != 0)
        return -1;
      o->rate = (double)v;
      break;
    case OPT_DURATION:
      if (parse_u64(optarg, "--duration", 1, &v) != 0)
        return -1;
      o->duration_s = (double)v;
      break;
    case OPT_BACKLOG:
      if (parse_u64(optarg, "--backlog", 0, &o->backlog) != 0)
        return -1;
      break;
    case OPT_SYNC:
      if (strcmp(optarg, "always") != 0 && strcmp(optarg, "interval") != 0
          && strcmp(optarg, "none") != 0) {
        fprintf(stderr, "emitd-bench: --sync: always, interval or none, "
                "not \"%s\"\n", optarg);
        return -1;
      }
      o->sync = optarg;
      break;
    case OPT_POOL:
      if (parse_u64(optarg, "--pool", 1, &o->pool) != 0 ||
          o->pool > 4000000)
        return -1;
      break;
    case OPT_NO_UPSTREAM: o->no_upstream = true; break;
    case OPT_IDS:
      if (strcmp(optarg, "random") != 0 && strcmp(optarg, "ulid") != 0) {
        fprintf(stderr, "emitd-bench: --ids: random or ulid, not \"%s\"\n",
                optarg);
        return -1;
      }
      o->ulid = strcmp(optarg, "ulid") == 0;
      break;
    case OPT_ENV:
      if (strncmp(optarg, "EMITD_", 6) != 0 || strchr(optarg, '=') == NULL
          || o->n_extra_env == 32) {
        fprintf(stderr, "emitd-bench: --emitd-env: EMITD_<SECTION>_<KEY>="
                "VALUE, at most 32 times\n");
        return -1;
      }
      o->extra_env[o->n_extra_env++] = optarg;
      break;
    case OPT_TMP: o->tmp_dir = optarg; break;
    case OPT_KEEP: o->keep = true; break;
    case OPT_PERF: o->perf_path = optarg; break;
    case OPT_TIMELINE: o->timeline_path = optarg; break;
    case OPT_JSON: o->json = true; break;
    case OPT_RUNS:
      if (parse_count(optarg, "--runs", &o->runs) != 0)
        return -1;
      break;
    case OPT_PAIRS:
      if (parse_count(optarg, "--pairs", &o->pairs) != 0)
        return -1;
      break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); return -1;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "emitd-bench: unexpected argument \"%s\"\n",
            argv[optind]);
    return -1;
  }
  if (access(o->emitd_path, X_OK) != 0) {
    fprintf(stderr, "emitd-bench: no emitd at %s (--emitd)\n",
            o->emitd_path);
    return -1;
  }
  if (access(o->upstream_path, X_OK) != 0) {
    fprintf(stderr, "emitd-bench: no emd-upstream at %s (--upstream)\n",
            o->upstream_path);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv)
{
  static struct report rp;
  char emitd[PATH_MAX], upstream[PATH_MAX];
  struct machine mc;
  struct pool pool;
  struct opts o;
  bool all;
  int rc;

  if (parse_args(argc, argv, &o, emitd, upstream, sizeof(emitd)) != 0)
    return 2;
  signal(SIGPIPE, SIG_IGN);
  machine_get(&mc);
  if (pool_make(&pool, o.pool) != 0)
    return 1;
  rp.o = &o;
  rp.pool = &pool;
  all = strcmp(o.cmd, "all") == 0;
  if (all || strcmp(o.cmd, "limits") == 0) {
    rp.ran_limits = true;
    if (run_limits(&o, &pool, &rp.limits) != 0)
      rp.error = true;
  }
  /* Each test o.runs times, the median run kept (this machine's figures
   * move by up to 1.5x from run to run). */
  if (all || strcmp(o.cmd, "ingest") == 0) {
    for (int m = 0; m < 2; m++) {
      static struct ingest_res r[MAX_RUNS];
      double key[MAX_RUNS];

      if (!all && (enum mode)m != o.mode)
        continue;
      rp.ran_ingest[m] = true;
      for (unsigned i = 0; i < o.runs; i++) {
        if (run_ingest(&o, &pool, (enum mode)m, &r[i]) != 0 ||
            r[i].failed > 0)
          rp.error = true;
        key[i] = r[i].done ? r[i].rate : 0;
      }
      rp.ingest[m] = r[median_run(&rp, m == MODE_TEXT ? "ingest, text"
                                  : "ingest, binary", "events/s", key,
                                  o.runs)];
    }
  }
  if (all || strcmp(o.cmd, "latency") == 0) {
    static struct latency_res r[MAX_RUNS];
    double key[MAX_RUNS];

    rp.ran_lat = true;
    for (unsigned i = 0; i < o.runs; i++) {
      if (run_latency(&o, &pool, i, &r[i]) != 0 || r[i].failed > 0)
        rp.error = true;
      key[i] = r[i].done ? r[i].p99 : 1e9;
    }
    rp.lat = r[median_run(&rp, "reply latency p99", "ms", key, o.runs)];
  }
  if (all || strcmp(o.cmd, "e2e") == 0) {
    static struct e2e_res r[MAX_RUNS];
    double key[MAX_RUNS];

    rp.ran_e2e = true;
    for (unsigned i = 0; i < o.runs; i++) {
      if (run_e2e(&o, &pool, &r[i]) != 0 || r[i].failed > 0)
        rp.error = true;
      key[i] = r[i].done ? r[i].u.cpu_s * 1e6 / (double)r[i].events : 1e9;
    }
    rp.e2e = r[median_run(&rp, "e2e, emitd CPU", "us/event", key, o.runs)];
  }
  if ((all && o.backlog > 0) || strcmp(o.cmd, "backlog") == 0) {
    static struct backlog_res r[MAX_RUNS];
    double key[MAX_RUNS];

    rp.ran_backlog = true;
    for (unsigned i = 0; i < o.runs; i++) {
      if (run_backlog(&o, &pool, &r[i]) != 0 || r[i].failed > 0)
        rp.error = true;
      key[i] = r[i].done ? r[i].ratio : 0;
    }
    rp.backlog = r[median_run(&rp, "ingest with a backlog / empty", "",
                              key, o.runs)];
  }
  load_get(mc.load[1], sizeof(mc.load[1]));
  if (o.json) {
    rc = print_json(&rp, &mc);
    print_failures(&rp, stderr);
  } else {
    print_table(&rp, &mc);
    rc = 0;
  }
  fflush(stdout);
  pool_free(&pool);
  return rc != 0 || rp.error ? 1 : 0;
}
