/* emitctl.c: the friendly client of emitd's sockets (SPEC 6). `send` talks
 * to the event socket; every other command to the control socket, one
 * command line out, one reply in (emd_control.h has the protocol), shown
 * for people or, with --json, as it came.
 *
 * Exit status: 0 done; 1 emitd answered with an error (a rejected event,
 * a flush that timed out, an unknown dead letter); 2 a usage error, or
 * emitd could not be reached or did not answer. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "emd_config.h"
#include "emd_control.h"

extern char **environ;

#define ANSWER_MS 10000         /* how long a reply may take */
#define FLUSH_GRACE_MS 10000    /* beyond a flush's own timeout */
#define POLL_TTY_MS 200         /* progress bar redraws */
#define POLL_PLAIN_MS 5000      /* progress lines without a terminal */

struct ctl {
  const char *config_path;     /* -c */
  const char *socket_path;     /* -s: overrides the one the command uses */
  struct emd_config cfg;
  bool have_cfg;
};

static void usage(FILE *f)
{
  fprintf(f,
    "Usage: emitctl [-c FILE] [-s PATH] COMMAND [ARGS]\n"
    "\n"
    "Talks to a running emitd.\n"
    "\n"
    "Commands:\n"
    "  send [JSON ...]          send events (arguments, or lines of stdin)\n"
    "                           and print each reply\n"
    "  status [--json]          upstream state, pending events, sent, dead\n"
    "                           letters, uptime\n"
    "  flush [--timeout D]      send now and wait until the spool is empty\n"
    "  metrics                  Prometheus metrics\n"
    "  reload                   re-read the configuration and the API key\n"
    "  dead list [--limit N]    dead letters: events upstream refused\n"
    "  dead retry [ID|all]      send dead letters again\n"
    "  dead purge               delete every dead letter\n"
    "  pending [--limit N]      the oldest pending events\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  read socket paths from FILE (default "
    EMD_CONFIG_DEFAULT_PATH ")\n"
    "  -s, --socket PATH  the socket to use, overriding the configuration\n"
    "  -V, --version      print the version and exit\n"
    "  -h, --help         print this help; COMMAND --help for a command's\n"
    "\n"
    "Socket paths come from -s, else EMITD_AGENT_SOCKET (send) or\n"
    "EMITD_AGENT_CONTROL_SOCKET (the others), else the configuration file.\n"
    "Exit status: 0 done, 1 emitd answered with an error, 2 usage error or\n"
    "emitd unreachable.\n");
}

static int load_cfg(struct ctl *ctl)
{
  char err[512];

  if (ctl->have_cfg)
    return 0;
  if (emd_config_load(&ctl->cfg, ctl->config_path, environ, err,
                      sizeof(err)) != 0) {
    fprintf(stderr, "emitctl: %s\n", err);
    if (ctl->config_path != NULL || emd_config_defaults(&ctl->cfg) != 0)
      return -1;
    /* The default file may be unreadable to this user: the built-in
     * paths are still the likely ones. */
    fprintf(stderr, "emitctl: using the built-in socket paths\n");
  }
  ctl->have_cfg = true;
  return 0;
}

/* The socket a command talks to: -s, else the environment, else the
 * configuration. NULL (with a message) if the configuration is bad. */
static const char *socket_for(struct ctl *ctl, bool control)
{
  const char *env = getenv(control ? "EMITD_AGENT_CONTROL_SOCKET"
                                   : "EMITD_AGENT_SOCKET");

  if (ctl->socket_path != NULL)
    return ctl->socket_path;
  if (env != NULL && env[0] != '\0')
    return env;
  if (load_cfg(ctl) != 0)
    return NULL;
  return control ? ctl->cfg.agent.control_socket : ctl->cfg.agent.socket;
}

/* Connects to path; on failure says which socket and what to check. */
static int connect_unix(const char *path)
{
  struct sockaddr_un sa;
  int fd;

  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(sa.sun_path)) {
    fprintf(stderr, "emitctl: socket path too long: %s\n", path);
    return -1;
  }
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    int e = errno;

    fprintf(stderr, "emitctl: cannot reach emitd at %s: %s\n", path,
            strerror(e));
    if (e == ENOENT || e == ECONNREFUSED)
      fprintf(stderr, "emitctl: is emitd running? (systemctl status emitd; "
              "or pass -s PATH / -c FILE)\n");
    else if (e == EACCES)
      fprintf(stderr, "emitctl: check that you may use the socket (its "
              "owner and mode; the control socket is 0600, for emitd's "
              "user)\n");
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
  while (n > 0) {
    ssize_t w = write(fd, p, n);

    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Sends every line, half-closes, prints every reply. Exit status: 0 all
 * accepted, 1 any rejected, 2 emitd unreachable. */
static int cmd_send(struct ctl *ctl, int argc, char **argv)
{
  const char *path;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int fd, status = 0;

  if (argc > 1 && (strcmp(argv[1], "--help") == 0 ||
                   strcmp(argv[1], "-h") == 0)) {
    printf("Usage: emitctl send [JSON ...]\n\n"
           "Sends each JSON argument (or each line of stdin when there are\n"
           "none) as one event and prints emitd's reply to each, in order.\n"
           "Exit status: 0 all accepted, 1 any rejected, 2 emitd "
           "unreachable.\n");
    return 0;
  }
  path = socket_for(ctl, false);
  if (path == NULL)
    return 2;
  fd = connect_unix(path);
  if (fd < 0)
    return 2;
  if (argc > 1) {
    for (int i = 1; i < argc; i++)
      if (write_all(fd, argv[i], strlen(argv[i])) != 0 ||
          write_all(fd, "\n", 1) != 0)
        goto lost;
  } else {
    while ((n = getline(&line, &cap, stdin)) > 0)
      if (write_all(fd, line, (size_t)n) != 0)
        goto lost;
  }
  shutdown(fd, SHUT_WR);
  FILE *in = fdopen(fd, "r");
  if (in == NULL)
    goto lost;
  while ((n = getline(&line, &cap, in)) > 0) {
    fwrite(line, 1, (size_t)n, stdout);
    if (strncmp(line, "{\"ok\":true", 10) != 0)
      status = 1;
  }
  fclose(in);
  free(line);
  return status;

lost:
  fprintf(stderr, "emitctl: connection to %s lost: %s\n", path,
          strerror(errno));
  close(fd);
  free(line);
  return 2;
}

/* ---- talking to the control socket --------------------------------------- */

static uint64_t mono_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One connection to the control socket, with what was read past the last
 * line handed out. */
struct conn {
  int fd;
  const char *path;
  char *buf;
  size_t len, cap;
  size_t taken;                /* bytes of buf handed out as a line */
};

static int conn_open(struct conn *c, const char *path)
{
  memset(c, 0, sizeof(*c));
  c->path = path;
  c->fd = connect_unix(path);
  return c->fd < 0 ? -1 : 0;
}

static void conn_close(struct conn *c)
{
  if (c->fd >= 0)
    close(c->fd);
  free(c->buf);
  memset(c, 0, sizeof(*c));
  c->fd = -1;
}

static int conn_command(struct conn *c, const char *cmd)
{
  if (write_all(c->fd, cmd, strlen(cmd)) != 0 ||
      write_all(c->fd, "\n", 1) != 0) {
    fprintf(stderr, "emitctl: connection to %s lost: %s\n", c->path,
            strerror(errno));
    return -1;
  }
  return 0;
}

enum { READ_LINE = 1, READ_EOF = 0, READ_TIMEOUT = -1, READ_ERROR = -2 };

/* The next line (NUL-terminated, without its newline) in *line, valid
 * until the next call. Waits at most until deadline (mono_ms), or not at
 * all when deadline is 0 and nothing is buffered. */
static int conn_line(struct conn *c, uint64_t deadline, char **line)
{
  for (;;) {
    char *nl;
    struct pollfd p = { .fd = c->fd, .events = POLLIN };
    uint64_t now;
    ssize_t n;

    if (c->taken > 0) {
      memmove(c->buf, c->buf + c->taken, c->len - c->taken);
      c->len -= c->taken;
      c->taken = 0;
    }
    nl = c->len > 0 ? memchr(c->buf, '\n', c->len) : NULL;
    if (nl != NULL) {
      *nl = '\0';
      c->taken = (size_t)(nl - c->buf) + 1;
      *line = c->buf;
      return READ_LINE;
    }
    now = mono_ms();
    if (now >= deadline)
      return READ_TIMEOUT;
    if (poll(&p, 1, (int)(deadline - now)) == 0)
      return READ_TIMEOUT;
    if (c->cap - c->len < 4096) {
      size_t cap = c->cap ? c->cap * 2 : 8192;
      char *b = realloc(c->buf, cap);

      if (b == NULL)
        return READ_ERROR;
      c->buf = b;
      c->cap = cap;
    }
    n = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return READ_ERROR;
    if (n == 0)
      return READ_EOF;
    c->len += (size_t)n;
  }
}

/* Says why no reply came; returns 2. */
static int no_reply(const struct conn *c, int rc, uint64_t waited_ms)
{
  if (rc == READ_TIMEOUT)
    fprintf(stderr, "emitctl: emitd at %s did not answer within %" PRIu64
            "s\n", c->path, waited_ms / 1000);
  else
    fprintf(stderr, "emitctl: emitd at %s closed the connection without "
            "an answer\n", c->path);
  return 2;
}

/* ---- reading JSON replies ------------------------------------------------ */

/* A parsed reply: jsmn's tokens over the reply's text. Lookups take the
 * index of an object and return the index of a member's value, or -1;
 * readers of a missing or mistyped value return the default, so that a
 * reply without some field still shows the rest. */
struct jdoc {
  const char *js;
  jsmntok_t *t;
  int n;
};

static int jparse(struct jdoc *d, const char *js)
{
  jsmn_parser p;
  size_t len = strlen(js);
  int n;

  memset(d, 0, sizeof(*d));
  jsmn_init(&p);
  n = jsmn_parse(&p, js, len, NULL, 0);
  if (n < 1)
    return -1;
  d->t = calloc((size_t)n, sizeof(*d->t));
  if (d->t == NULL)
    return -1;
  jsmn_init(&p);
  if (jsmn_parse(&p, js, len, d->t, (unsigned)n) != n ||
      d->t[0].type != JSMN_OBJECT) {
    free(d->t);
    d->t = NULL;
    return -1;
  }
  d->js = js;
  d->n = n;
  return 0;
}

static void jfree(struct jdoc *d)
{
  free(d->t);
  d->t = NULL;
}

/* The index just past token i and everything inside it. */
static int jnext(const struct jdoc *d, int i)
{
  int end = d->t[i].end, j = i + 1;

  while (j < d->n && d->t[j].start < end)
    j++;
  return j;
}

static int jget(const struct jdoc *d, int obj, const char *key)
{
  size_t klen = strlen(key);
  int i;

  if (obj < 0 || obj >= d->n || d->t[obj].type != JSMN_OBJECT)
    return -1;
  i = obj + 1;
  for (int k = 0; k < d->t[obj].size && i < d->n; k++) {
    const jsmntok_t *kt = &d->t[i];

    if (i + 1 >= d->n)
      return -1;
    if (kt->type == JSMN_STRING && (size_t)(kt->end - kt->start) == klen &&
        memcmp(d->js + kt->start, key, klen) == 0)
      return i + 1;
    i = jnext(d, i + 1);
  }
  return -1;
}

/* Array item k of the array at arr, or -1. */
static int jitem(const struct jdoc *d, int arr, int k)
{
  int i;

  if (arr < 0 || d->t[arr].type != JSMN_ARRAY || k >= d->t[arr].size)
    return -1;
  i = arr + 1;
  while (k-- > 0)
    i = jnext(d, i);
  return i;
}

static bool jnumber(const struct jdoc *d, int i, long double *out)
{
  char buf[64], *end;
  int len;

  if (i < 0 || d->t[i].type != JSMN_PRIMITIVE)
    return false;
  len = d->t[i].end - d->t[i].start;
  if (len <= 0 || len >= (int)sizeof(buf))
    return false;
  memcpy(buf, d->js + d->t[i].start, (size_t)len);
  buf[len] = '\0';
  if (!(buf[0] == '-' || (buf[0] >= '0' && buf[0] <= '9')))
    return false;
  *out = strtold(buf, &end);
  return *end == '\0';
}

static uint64_t ju64(const struct jdoc *d, int i, uint64_t def)
{
  long double v;

  if (!jnumber(d, i, &v) || v < 0 || v > (long double)UINT64_MAX)
    return def;
  return (uint64_t)v;
}

static int64_t ji64(const struct jdoc *d, int i, int64_t def)
{
  long double v;

  if (!jnumber(d, i, &v) || v < (long double)INT64_MIN ||
      v > (long double)INT64_MAX)
    return def;
  return (int64_t)v;
}

static bool jbool(const struct jdoc *d, int i, bool def)
{
  if (i < 0 || d->t[i].type != JSMN_PRIMITIVE)
    return def;
  if (d->js[d->t[i].start] == 't')
    return true;
  if (d->js[d->t[i].start] == 'f')
    return false;
  return def;
}

static void put_utf8(char *out, size_t len, size_t *o, uint32_t cp)
{
  char b[4];
  size_t n;

  if (cp < 0x80) {
    b[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    b[0] = (char)(0xc0 | cp >> 6);
    b[1] = (char)(0x80 | (cp & 0x3f));
    n = 2;
  } else if (cp < 0x10000) {
    b[0] = (char)(0xe0 | cp >> 12);
    b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
    b[2] = (char)(0x80 | (cp & 0x3f));
    n = 3;
  } else {
    b[0] = (char)(0xf0 | cp >> 18);
    b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    b[3] = (char)(0x80 | (cp & 0x3f));
    n = 4;
  }
  if (*o + n < len) {
    memcpy(out + *o, b, n);
    *o += n;
  }
}

static uint32_t hex4(const char *p)
{
  uint32_t v = 0;

  for (int i = 0; i < 4; i++) {
    char c = p[i];

    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (uint32_t)(c - 'A' + 10);
    else
      return 0xfffd;
  }
  return v;
}

/* The string at i, unescaped, into out (cut to fit); a copy of def if i
 * is not a string. Returns out. */
static const char *jstr(const struct jdoc *d, int i, char *out, size_t len,
                        const char *def)
{
  const char *p, *end;
  size_t o = 0;

  if (i < 0 || d->t[i].type != JSMN_STRING) {
    snprintf(out, len, "%s", def);
    return out;
  }
  p = d->js + d->t[i].start;
  end = d->js + d->t[i].end;
  while (p < end && o + 1 < len) {
    char c = *p++;
    uint32_t cp;

    if (c != '\\' || p >= end) {
      out[o++] = c;
      continue;
    }
    c = *p++;
    switch (c) {
    case 'n': out[o++] = '\n'; break;
    case 't': out[o++] = '\t'; break;
    case 'r': out[o++] = '\r'; break;
    case 'b': out[o++] = '\b'; break;
    case 'f': out[o++] = '\f'; break;
    case 'u':
      if (end - p < 4) {
        p = end;
        break;
      }
      cp = hex4(p);
      p += 4;
      if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' &&
          p[1] == 'u') {
        uint32_t lo = hex4(p + 2);

        if (lo >= 0xdc00 && lo < 0xe000) {
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          p += 6;
        }
      }
      if (cp >= 0xd800 && cp < 0xe000)
        cp = 0xfffd;
      put_utf8(out, len, &o, cp);
      break;
    default: out[o++] = c; break;   /* \" \\ \/ */
    }
  }
  out[o] = '\0';
  return out;
}

/* Makes s safe to print on a terminal: control characters (escape
 * sequences, newlines) become spaces. */
static char *printable(char *s)
{
  for (char *p = s; *p != '\0'; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = ' ';
  return s;
}

/* ---- numbers for people -------------------------------------------------- */

/* 1234567 -> "1,234,567" */
static const char *fmt_count(uint64_t v, char *buf, size_t len)
{
  char digits[32];
  int n = snprintf(digits, sizeof(digits), "%" PRIu64, v);
  size_t o = 0;

  for (int i = 0; i < n && o + 2 < len; i++) {
    if (i > 0 && (n - i) % 3 == 0)
      buf[o++] = ',';
    buf[o++] = digits[i];
  }
  buf[o] = '\0';
  return buf;
}

/* 1258291 -> "1.2 MiB" */
static const char *fmt_bytes(uint64_t v, char *buf, size_t len)
{
  static const char *const units[] = { "KiB", "MiB", "GiB", "TiB" };
  double x = (double)v;
  int u = -1;

  if (v < 1024) {
    snprintf(buf, len, "%" PRIu64 " B", v);
    return buf;
  }
  while (x >= 1024 && u < 3) {
    x /= 1024;
    u++;
  }
  snprintf(buf, len, x < 10 ? "%.1f %s" : "%.0f %s", x, units[u]);
  return buf;
}

/* 185 -> "3m 5s"; 7380 -> "2h 3m"; 90061 -> "1d 1h" */
static const char *fmt_age(uint64_t s, char *buf, size_t len)
{
  if (s < 60)
    snprintf(buf, len, "%" PRIu64 "s", s);
  else if (s < 3600)
    snprintf(buf, len, s % 60 ? "%" PRIu64 "m %" PRIu64 "s" : "%" PRIu64
             "m", s / 60, s % 60);
  else if (s < 86400)
    snprintf(buf, len, (s / 60) % 60 ? "%" PRIu64 "h %" PRIu64 "m" : "%"
             PRIu64 "h", s / 3600, (s / 60) % 60);
  else
    snprintf(buf, len, (s / 3600) % 24 ? "%" PRIu64 "d %" PRIu64 "h" : "%"
             PRIu64 "d", s / 86400, (s / 3600) % 24);
  return buf;
}

static uint64_t wall_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* An age from a wall-clock time in ms: "3m ago" ("just now" under 1s). */
static const char *fmt_since(uint64_t when_ms, char *buf, size_t len)
{
  uint64_t now = wall_ms(), s;
  char age[32];

  if (when_ms == 0)
    return "-";
  s = now > when_ms ? (now - when_ms) / 1000 : 0;
  if (s == 0)
    return "just now";
  snprintf(buf, len, "%s ago", fmt_age(s, age, sizeof(age)));
  return buf;
}

/* ---- one request, one reply ---------------------------------------------- */

/* A reply, kept whole and parsed. */
struct reply {
  struct conn conn;
  char *text;                   /* the JSON line */
  struct jdoc doc;
};

static void reply_free(struct reply *r)
{
  jfree(&r->doc);
  free(r->text);
  conn_close(&r->conn);
}

/* Sends cmd to the control socket and reads the JSON reply within
 * wait_ms. Returns 0, or the exit status (2) after saying why. */
static int request(struct ctl *ctl, const char *cmd, uint64_t wait_ms,
                   struct reply *r)
{
  const char *path = socket_for(ctl, true);
  char *line;
  int rc;

  memset(r, 0, sizeof(*r));
  r->conn.fd = -1;
  if (path == NULL || conn_open(&r->conn, path) != 0 ||
      conn_command(&r->conn, cmd) != 0)
    return 2;
  rc = conn_line(&r->conn, mono_ms() + wait_ms, &line);
  if (rc != READ_LINE)
    return no_reply(&r->conn, rc, wait_ms);
  r->text = strdup(line);
  if (r->text == NULL || jparse(&r->doc, r->text) != 0) {
    fprintf(stderr, "emitctl: emitd at %s sent a reply that is not a JSON "
            "object: %.200s\n", path, line);
    return 2;
  }
  return 0;
}

/* For a reply {"ok":false,...}: prints its message; returns 1. */
static int print_error(const struct reply *r)
{
  char code[64], msg[1024];

  jstr(&r->doc, jget(&r->doc, 0, "message"), msg, sizeof(msg), "");
  jstr(&r->doc, jget(&r->doc, 0, "error"), code, sizeof(code), "error");
  if (msg[0] != '\0')
    fprintf(stderr, "emitctl: %s [%s]\n", printable(msg), printable(code));
  else
    fprintf(stderr, "emitctl: emitd refused: %s\n", printable(code));
  return 1;
}

static bool reply_ok(const struct reply *r)
{
  return jbool(&r->doc, jget(&r->doc, 0, "ok"), false);
}

/* ---- options of the commands --------------------------------------------- */

struct opts {
  bool json;
  uint64_t timeout_ms;
  uint64_t limit;
  bool have_limit;
  int argc;                     /* what is left, after the options */
  char **argv;
};

enum { OPT_JSON = 1, OPT_TIMEOUT = 2, OPT_LIMIT = 4 };

/* Parses the options a command takes (allowed, OPT_*); prints help when
 * asked (returns 1) and errors (returns 2). */
static int parse_opts(const char *name, int argc, char **argv,
                      unsigned allowed, void (*help)(FILE *), struct opts *o)
{
  static const struct option longs[] = {
    { "json", no_argument, NULL, 'j' },
    { "timeout", required_argument, NULL, 't' },
    { "limit", required_argument, NULL, 'n' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  memset(o, 0, sizeof(*o));
  o->timeout_ms = EMD_CONTROL_FLUSH_DEFAULT_MS;
  optind = 0;                   /* glibc: start afresh on this argv */
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+jt:n:h", longs, NULL)) != -1) {
    if (c == 'h') {
      help(stdout);
      return 1;
    }
    if (c == 'j' && (allowed & OPT_JSON)) {
      o->json = true;
    } else if (c == 't' && (allowed & OPT_TIMEOUT)) {
      if (emd_control_parse_duration(optarg, strlen(optarg), &o->timeout_ms)
          != 0 || o->timeout_ms > EMD_CONTROL_FLUSH_MAX_MS) {
        fprintf(stderr, "emitctl %s: bad --timeout \"%s\": expected a "
                "duration like 30s, 500ms or 2m (at most 24h)\n", name,
                optarg);
        return 2;
      }
    } else if (c == 'n' && (allowed & OPT_LIMIT)) {
      char *end;

      errno = 0;
      o->limit = strtoull(optarg, &end, 10);
      if (errno != 0 || *end != '\0' || optarg[0] == '-' || o->limit < 1 ||
          o->limit > EMD_CONTROL_LIST_MAX) {
        fprintf(stderr, "emitctl %s: bad --limit \"%s\": expected a number "
                "from 1 to %d\n", name, optarg, EMD_CONTROL_LIST_MAX);
        return 2;
      }
      o->have_limit = true;
    } else if (c == '?' && ((optopt == 't' && (allowed & OPT_TIMEOUT)) ||
                            (optopt == 'n' && (allowed & OPT_LIMIT)))) {
      fprintf(stderr, "emitctl %s: %s needs a value (see emitctl %s "
              "--help)\n", name, argv[optind - 1], name);
      return 2;
    } else {
      fprintf(stderr, "emitctl %s: unknown option \"%s\" (see emitctl %s "
              "--help)\n", name, argv[optind - 1], name);
      return 2;
    }
  }
  o->argc = argc - optind;
  o->argv = argv + optind;
  return 0;
}

static int no_args(const char *cmd, const struct opts *o)
{
  if (o->argc == 0)
    return 0;
  fprintf(stderr, "emitctl %s: unexpected argument \"%s\" (see emitctl %s "
          "--help)\n", cmd, o->argv[0], cmd);
  return 2;
}

/* ---- status -------------------------------------------------------------- */

static void help_status(FILE *f)
{
  fprintf(f, "Usage: emitctl status [--json]\n\n"
          "Shows emitd at a glance: the upstream endpoint, its state and its\n"
          "last reply, the pending events (count, size, oldest), events sent,\n"
          "dead letters by reason, uptime and version.\n\n"
          "  --json   print emitd's reply as it came (one JSON line)\n");
}

static const char *state_hint(const char *state)
{
  if (strcmp(state, "unauthorized") == 0)
    return "the service refused the API key; fix upstream.api_key_file,\n"
           "            then run: emitctl reload (events wait meanwhile)";
  if (strcmp(state, "forbidden") == 0)
    return "the API key may not send events; use one that may,\n"
           "            then run: emitctl reload (events wait meanwhile)";
  if (strcmp(state, "misconfigured") == 0)
    return "the endpoint has no such API; check upstream.endpoint,\n"
           "            then run: emitctl reload (events wait meanwhile)";
  if (strcmp(state, "backoff") == 0)
    return "the last request failed; retrying with backoff";
  return NULL;
}

static void print_upstream(const struct jdoc *d, int up)
{
  char endpoint[512], state[32], age[32];
  int age_i = jget(d, up, "last_reply_age_s");
  int64_t last = ji64(d, jget(d, up, "last_status"), 0);
  const char *hint;

  jstr(d, jget(d, up, "endpoint"), endpoint, sizeof(endpoint), "?");
  jstr(d, jget(d, up, "state"), state, sizeof(state), "?");
  printf("  upstream  %s\n", printable(endpoint));
  printf("  state     %s", printable(state));
  if (age_i < 0 || d->t[age_i].type != JSMN_PRIMITIVE ||
      d->js[d->t[age_i].start] == 'n')
    printf(", no reply yet\n");
  else if (last == 0)
    printf(", no answer %s ago (connection failed or timed out)\n",
           fmt_age(ju64(d, age_i, 0), age, sizeof(age)));
  else
    printf(", last reply HTTP %" PRId64 ", %s ago\n", last,
           fmt_age(ju64(d, age_i, 0), age, sizeof(age)));
  hint = state_hint(state);
  if (hint != NULL)
    printf("            %s\n", hint);
}

static void print_spool(const struct jdoc *d, int sp)
{
  uint64_t pending = ju64(d, jget(d, sp, "pending"), 0);
  char n[32], b[32], age[32];

  if (pending == 0)
    printf("  pending   none: the spool is empty\n");
  else
    printf("  pending   %s event%s (%s), oldest %s ago\n",
           fmt_count(pending, n, sizeof(n)), pending == 1 ? "" : "s",
           fmt_bytes(ju64(d, jget(d, sp, "pending_bytes"), 0), b, sizeof(b)),
           fmt_age(ju64(d, jget(d, sp, "oldest_age_s"), 0), age,
                   sizeof(age)));
  if (jbool(d, jget(d, sp, "ids_rebuilding"), false))
    printf("  ids       rebuilding the id table after an unclean stop: "
           "until done, an event sent again may be stored twice (the "
           "service de-duplicates by id)\n");
}

static void print_dead(const struct jdoc *d, int sp, int by)
{
  uint64_t dead = ju64(d, jget(d, sp, "dead"), 0);
  char n[32], name[64];
  bool any = false;

  if (dead == 0)
    printf("  dead      none");
  else
    printf("  dead      %s kept (emitctl dead list)",
           fmt_count(dead, n, sizeof(n)));
  if (by >= 0 && d->t[by].type == JSMN_OBJECT) {
    for (int k = 0, i = by + 1; k < d->t[by].size; k++) {
      uint64_t v = ju64(d, i + 1, 0);

      if (v > 0) {
        jstr(d, i, name, sizeof(name), "?");
        printf("%s%s %s", any ? ", " : "; since start: ", printable(name),
               fmt_count(v, n, sizeof(n)));
        any = true;
      }
      i = jnext(d, i + 1);
    }
  }
  printf("\n");
}

static void print_status(const struct jdoc *d)
{
  char version[64], up[32], n[32];
  int ing = jget(d, 0, "ingest");

  jstr(d, jget(d, 0, "version"), version, sizeof(version), "?");
  printf("emitd %s, up %s\n", printable(version),
         fmt_age(ju64(d, jget(d, 0, "uptime_s"), 0), up, sizeof(up)));
  print_upstream(d, jget(d, 0, "upstream"));
  print_spool(d, jget(d, 0, "spool"));
  printf("  sent      %s events\n",
         fmt_count(ju64(d, jget(d, 0, "sent"), 0), n, sizeof(n)));
  print_dead(d, jget(d, 0, "spool"), jget(d, 0, "dead_by_reason"));
  if (ing >= 0)
    printf("  clients   %s connected\n",
           fmt_count(ju64(d, jget(d, ing, "clients"), 0), n, sizeof(n)));
}

static int cmd_status(struct ctl *ctl, int argc, char **argv)
{
  struct reply r;
  struct opts o;
  int rc;

  rc = parse_opts("status", argc, argv, OPT_JSON, help_status, &o);
  if (rc != 0)
    return rc == 1 ? 0 : rc;
  if ((rc = no_args("status", &o)) != 0)
    return rc;
  rc = request(ctl, "status", ANSWER_MS, &r);
  if (rc == 0) {
    if (o.json)
      printf("%s\n", r.text);
    if (!reply_ok(&r))
      rc = print_error(&r);
    else if (!o.json)
      print_status(&r.doc);
  }
  reply_free(&r);
  return rc;
}

/* ---- flush --------------------------------------------------------------- */

static void help_flush(FILE *f)
{
  fprintf(f, "Usage: emitctl flush [--timeout D] [--json]\n\n"
          "Asks emitd to send every pending event now and waits until the\n"
          "spool is empty, or D (default 30s; e.g. 500ms, 45s, 2m) passed.\n"
          "On a terminal a progress bar shows the events still pending.\n\n"
          "  -t, --timeout D   how long emitd may take\n"
          "      --json        print emitd's reply as it came\n\n"
          "Exit status: 0 the spool is empty, 1 events were left when the\n"
          "time was up, 2 emitd unreachable.\n");
}

/* What the progress display knows. */
struct progress {
  struct conn conn;            /* a second connection, for status */
  bool tty;
  uint64_t start_ms;
  uint64_t timeout_ms;
  uint64_t first;              /* most pending seen: the 0% mark */
  uint64_t pending, bytes;
  bool known;
  uint64_t last_line_ms;
};

/* Asks for status on the second connection; false if that failed (the
 * display then just waits). */
static bool progress_poll(struct progress *p)
{
  struct jdoc d;
  char *line;
  int sp;

  if (p->conn.fd < 0 || conn_command(&p->conn, "status") != 0 ||
      conn_line(&p->conn, mono_ms() + 2000, &line) != READ_LINE ||
      jparse(&d, line) != 0)
    return false;
  sp = jget(&d, 0, "spool");
  p->pending = ju64(&d, jget(&d, sp, "pending"), p->pending);
  p->bytes = ju64(&d, jget(&d, sp, "pending_bytes"), p->bytes);
  if (p->pending > p->first)
    p->first = p->pending;
  p->known = true;
  jfree(&d);
  return true;
}

/* Columns of the terminal on fd; 80 when it is not one. */
static int term_width(int fd)
{
  struct winsize ws;

  if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40)
    return ws.ws_col;
  return 80;
}

static void progress_draw(struct progress *p)
{
  uint64_t elapsed = mono_ms() - p->start_ms;
  char n[32], b[32], bar[128];
  int width = term_width(STDERR_FILENO) - 50, filled;
  double frac;

  if (!p->known)
    return;
  frac = p->first == 0 ? 1.0 : (double)(p->first - p->pending) /
         (double)p->first;
  if (width > 60)
    width = 60;
  if (width < 10)
    width = 10;
  filled = (int)(frac * width + 0.5);
  for (int i = 0; i < width; i++)
    bar[i] = i < filled ? '#' : '.';
  bar[width] = '\0';
  fprintf(stderr, "\r\033[Kflushing [%s] %3d%%  %s left (%s)  %.1fs/%.0fs",
          bar, (int)(frac * 100 + 0.5), fmt_count(p->pending, n, sizeof(n)),
          fmt_bytes(p->bytes, b, sizeof(b)), (double)elapsed / 1000,
          (double)p->timeout_ms / 1000);
  fflush(stderr);
}

/* Between polls: a redrawn bar on a terminal, else a line now and then. */
static void progress_tick(struct progress *p)
{
  char n[32];

  if (!progress_poll(p))
    return;
  if (p->tty) {
    progress_draw(p);
  } else if (mono_ms() - p->last_line_ms >= POLL_PLAIN_MS) {
    p->last_line_ms = mono_ms();
    fprintf(stderr, "emitctl: waiting: %s events pending\n",
            fmt_count(p->pending, n, sizeof(n)));
  }
}

static void progress_end(struct progress *p)
{
  if (p->tty && p->known)
    fprintf(stderr, "\r\033[K");
  conn_close(&p->conn);
}

/* Waits for the flush reply on c, drawing progress meanwhile. */
static int flush_wait(struct conn *c, struct progress *p, char **line)
{
  uint64_t deadline = mono_ms() + p->timeout_ms + FLUSH_GRACE_MS;
  uint64_t step = p->tty ? POLL_TTY_MS : POLL_PLAIN_MS;

  for (;;) {
    uint64_t now = mono_ms(), until = now + step;
    int rc;

    if (until > deadline)
      until = deadline;
    rc = conn_line(c, until, line);
    if (rc != READ_TIMEOUT || mono_ms() >= deadline)
      return rc;
    progress_tick(p);
  }
}

static void print_flush(const struct reply *r, uint64_t ms)
{
  char n[32];
  uint64_t flushed = ju64(&r->doc, jget(&r->doc, 0, "flushed"), 0);

  printf("flushed %s event%s in %.1fs; the spool is empty\n",
         fmt_count(flushed, n, sizeof(n)), flushed == 1 ? "" : "s",
         (double)ms / 1000);
}

static int cmd_flush(struct ctl *ctl, int argc, char **argv)
{
  struct progress p;
  struct reply r;
  struct opts o;
  const char *path;
  char cmd[64], *line;
  int rc;

  rc = parse_opts("flush", argc, argv, OPT_JSON | OPT_TIMEOUT, help_flush,
                  &o);
  if (rc != 0)
    return rc == 1 ? 0 : rc;
  if ((rc = no_args("flush", &o)) != 0)
    return rc;
  path = socket_for(ctl, true);
  if (path == NULL)
    return 2;
  memset(&r, 0, sizeof(r));
  memset(&p, 0, sizeof(p));
  p.conn.fd = r.conn.fd = -1;
  p.tty = isatty(STDERR_FILENO) && !o.json;
  p.timeout_ms = o.timeout_ms;
  p.start_ms = mono_ms();
  p.last_line_ms = p.start_ms;
  if (conn_open(&r.conn, path) != 0)
    return 2;
  /* The progress comes from status on a connection of its own, since the
   * flush's connection answers nothing else until it is done. */
  if (conn_open(&p.conn, path) == 0)
    progress_poll(&p);
  snprintf(cmd, sizeof(cmd), "flush %" PRIu64 "ms", o.timeout_ms);
  if (!p.tty && !o.json && p.known) {
    char n[32];

    fprintf(stderr, "emitctl: flushing %s pending events (up to %.1fs)\n",
            fmt_count(p.pending, n, sizeof(n)), (double)o.timeout_ms / 1000);
  }
  rc = conn_command(&r.conn, cmd) != 0 ? 2 : 0;
  if (rc == 0) {
    if (p.tty)
      progress_draw(&p);
    rc = flush_wait(&r.conn, &p, &line);
    progress_end(&p);
    if (rc != READ_LINE)
      rc = no_reply(&r.conn, rc, o.timeout_ms + FLUSH_GRACE_MS);
    else if ((r.text = strdup(line)) == NULL || jparse(&r.doc, r.text) != 0)
      rc = 2;
    else
      rc = 0;
  } else {
    progress_end(&p);
  }
  if (rc == 0) {
    if (o.json)
      printf("%s\n", r.text);
    if (!reply_ok(&r)) {
      char code[32];

      rc = print_error(&r);
      jstr(&r.doc, jget(&r.doc, 0, "error"), code, sizeof(code), "");
      if (strcmp(code, "timeout") == 0)
        fprintf(stderr, "emitctl: the spool did not empty in time; "
                "`emitctl status` shows why\n");
    } else if (!o.json) {
      print_flush(&r, mono_ms() - p.start_ms);
    }
  }
  reply_free(&r);
  return rc;
}

/* ---- metrics, reload ----------------------------------------------------- */

static void help_metrics(FILE *f)
{
  fprintf(f, "Usage: emitctl metrics\n\n"
          "Prints emitd's metrics in the Prometheus text format (it ends\n"
          "with a line \"# EOF\"), e.g. for node_exporter's textfile\n"
          "collector.\n");
}

static int cmd_metrics(struct ctl *ctl, int argc, char **argv)
{
  struct conn c;
  struct opts o;
  const char *path;
  uint64_t deadline;
  char *line;
  int rc;

  rc = parse_opts("metrics", argc, argv, 0, help_metrics, &o);
  if (rc != 0)
    return rc == 1 ? 0 : rc;
  if ((rc = no_args("metrics", &o)) != 0)
    return rc;
  path = socket_for(ctl, true);
  if (path == NULL || conn_open(&c, path) != 0)
    return 2;
  if (conn_command(&c, "metrics") != 0) {
    conn_close(&c);
    return 2;
  }
  deadline = mono_ms() + ANSWER_MS;
  /* The reply is many lines; "# EOF" ends it. */
  while ((rc = conn_line(&c, deadline, &line)) == READ_LINE) {
    if (line[0] == '{') {
      struct reply r = { .conn = { .fd = -1 } };

      r.text = strdup(line);
      rc = r.text != NULL && jparse(&r.doc, r.text) == 0 ? print_error(&r)
                                                          : 2;
      reply_free(&r);
      conn_close(&c);
      return rc;
    }
    printf("%s\n", line);
    if (strcmp(line, "# EOF") == 0)
      break;
  }
  rc = rc == READ_LINE ? 0 : no_reply(&c, rc, ANSWER_MS);
  conn_close(&c);
  return rc;
}

static void help_reload(FILE *f)
{
  fprintf(f, "Usage: emitctl reload\n\n"
          "Asks emitd to re-read its configuration file and API key file, as\n"
          "SIGHUP does; a forwarder paused by 401/403/404 retries at once.\n"
          "Settings that cannot change while running (spool.dir, the socket\n"
          "paths) are kept and reported in emitd's log.\n");
}

/* A command whose reply is only ok or an error: prints what it did,
 * "<count_key's number> <what>" or just "<what>". */
static int simple(struct ctl *ctl, const char *cmd, const char *count_key,
                  const char *what, bool json)
{
  struct reply r;
  char msg[512], n[32];
  int rc = request(ctl, cmd, ANSWER_MS, &r);

  if (rc == 0) {
    if (json)
      printf("%s\n", r.text);
    if (!reply_ok(&r)) {
      rc = print_error(&r);
    } else if (!json) {
      jstr(&r.doc, jget(&r.doc, 0, "message"), msg, sizeof(msg), "");
      if (count_key != NULL)
        printf("%s ", fmt_count(ju64(&r.doc, jget(&r.doc, 0, count_key), 0),
                                n, sizeof(n)));
      printf("%s", what);
      if (msg[0] != '\0')
        printf(" (%s)", printable(msg));
      printf("\n");
    }
  }
  reply_free(&r);
  return rc;
}

static int cmd_reload(struct ctl *ctl, int argc, char **argv)
{
  struct opts o;
  int rc = parse_opts("reload", argc, argv, OPT_JSON, help_reload, &o);

  if (rc != 0)
    return rc == 1 ? 0 : rc;
  if ((rc = no_args("reload", &o)) != 0)
    return rc;
  return simple(ctl, "reload", NULL, "configuration reloaded", o.json);
}

/* ---- dead, pending ------------------------------------------------------- */

static void help_dead(FILE *f)
{
  fprintf(f, "Usage: emitctl dead list [--limit N] [--json]\n"
          "       emitctl dead retry [ID|all]\n"
          "       emitctl dead purge\n\n"
          "Dead letters are events the service refused for good (or that\n"
          "expired, or ran out of attempts); emitd keeps them apart.\n\n"
          "  list    the oldest N (default 100): seq, id, reason, HTTP\n"
          "          status, when, and the start of the service's reply\n"
          "  retry   move one (by seq or event id) or all (the default) back\n"
          "          to pending, to be sent again\n"
          "  purge   delete every dead letter\n");
}

/* Prints s cut to width characters (counting UTF-8 lead bytes), padded
 * when pad. */
static void cell(const char *s, int width, bool pad)
{
  int cols = 0;
  const char *p = s;

  while (*p != '\0') {
    if (((unsigned char)*p & 0xc0) != 0x80) {
      if (cols == width)
        break;
      cols++;
    }
    p++;
  }
  if (*p != '\0' && width > 0) {
    /* Cut: end with "…" in the last column. */
    const char *q = s;
    int c = 0;

    while (*q != '\0' && c < width - 1) {
      q++;
      while (((unsigned char)*q & 0xc0) == 0x80)
        q++;
      c++;
    }
    fwrite(s, 1, (size_t)(q - s), stdout);
    fputs("\xe2\x80\xa6", stdout);
    cols = width;
  } else {
    fwrite(s, 1, (size_t)(p - s), stdout);
  }
  while (pad && cols++ < width)
    putchar(' ');
}

static void time_cell(uint64_t ms, char *buf, size_t len)
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;

  if (ms == 0 || localtime_r(&t, &tm) == NULL)
    snprintf(buf, len, "-");
  else
    strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static void print_total(const struct reply *r, int shown, const char *what)
{
  uint64_t total = ju64(&r->doc, jget(&r->doc, 0, "total"), (uint64_t)shown);
  char n[32];

  if (total > (uint64_t)shown)
    printf("(%d shown of %s %s; --limit N for more)\n", shown,
           fmt_count(total, n, sizeof(n)), what);
}

static void print_dead_list(const struct reply *r)
{
  const struct jdoc *d = &r->doc;
  int arr = jget(d, 0, "dead");
  int n = arr >= 0 && d->t[arr].type == JSMN_ARRAY ? d->t[arr].size : 0;
  int excerpt_w = term_width(STDOUT_FILENO) - 84;

  if (n == 0) {
    printf("no dead letters\n");
    return;
  }
  if (excerpt_w < 20)
    excerpt_w = 20;
  printf("%-8s %-26s %-9s %-6s %-19s %s\n", "SEQ", "ID", "REASON", "STATUS",
         "TIME", "EXCERPT");
  for (int k = 0; k < n; k++) {
    int it = jitem(d, arr, k);
    char id[80], reason[32], excerpt[1024], when[32], seq[24], st[8];
    uint64_t status = ju64(d, jget(d, it, "status"), 0);

    snprintf(seq, sizeof(seq), "%" PRIu64, ju64(d, jget(d, it, "seq"), 0));
    snprintf(st, sizeof(st), status ? "%" PRIu64 : "-", status);
    jstr(d, jget(d, it, "id"), id, sizeof(id), "?");
    jstr(d, jget(d, it, "reason"), reason, sizeof(reason), "?");
    jstr(d, jget(d, it, "excerpt"), excerpt, sizeof(excerpt), "");
    time_cell(ju64(d, jget(d, it, "time"), 0), when, sizeof(when));
    cell(seq, 8, true);
    putchar(' ');
    cell(printable(id), 26, true);
    putchar(' ');
    cell(printable(reason), 9, true);
    putchar(' ');
    cell(st, 6, true);
    putchar(' ');
    cell(when, 19, true);
    putchar(' ');
    cell(printable(excerpt), excerpt_w, false);
    putchar('\n');
  }
  print_total(r, n, "dead letters");
}

static int list(struct ctl *ctl, const char *verb, uint64_t limit, bool json,
                void (*show)(const struct reply *))
{
  struct reply r;
  char cmd[64];
  int rc;

  snprintf(cmd, sizeof(cmd), "%s %" PRIu64, verb, limit);
  rc = request(ctl, cmd, ANSWER_MS, &r);
  if (rc == 0) {
    if (json)
      printf("%s\n", r.text);
    if (!reply_ok(&r))
      rc = print_error(&r);
    else if (!json)
      show(&r);
  }
  reply_free(&r);
  return rc;
}

static int cmd_dead(struct ctl *ctl, int argc, char **argv)
{
  char cmd[128];
  struct opts o;
  const char *sub = argc > 1 ? argv[1] : NULL;
  int rc;

  if (sub == NULL || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
    help_dead(sub == NULL ? stderr : stdout);
    return sub == NULL ? 2 : 0;
  }
  if (strcmp(sub, "list") == 0) {
    rc = parse_opts("dead list", argc - 1, argv + 1, OPT_JSON | OPT_LIMIT,
                    help_dead, &o);
    if (rc != 0)
      return rc == 1 ? 0 : rc;
    if ((rc = no_args("dead list", &o)) != 0)
      return rc;
    return list(ctl, "dead list", o.have_limit ? o.limit
                : EMD_CONTROL_DEAD_DEFAULT, o.json, print_dead_list);
  }
  if (strcmp(sub, "retry") == 0 || strcmp(sub, "purge") == 0) {
    bool retry = sub[0] == 'r';
    struct emd_control_cmd parsed;
    char err[512];

    rc = parse_opts(retry ? "dead retry" : "dead purge", argc - 1, argv + 1,
                    OPT_JSON, help_dead, &o);
    if (rc != 0)
      return rc == 1 ? 0 : rc;
    if (o.argc > (retry ? 1 : 0)) {
      fprintf(stderr, "emitctl dead %s: unexpected argument \"%s\"\n", sub,
              o.argv[retry ? 1 : 0]);
      return 2;
    }
    snprintf(cmd, sizeof(cmd), "dead %s%s%s", sub, o.argc ? " " : "",
             o.argc ? o.argv[0] : "");
    /* The same check emitd makes, with the same message, before any
     * connection. */
    if (emd_control_parse(cmd, strlen(cmd), &parsed, err, sizeof(err))
        != 0) {
      fprintf(stderr, "emitctl: %s\n", err);
      return 2;
    }
    return retry ? simple(ctl, cmd, "retried", "dead letter(s) moved back to "
                          "pending", o.json)
                 : simple(ctl, cmd, "purged", "dead letter(s) deleted",
                          o.json);
  }
  fprintf(stderr, "emitctl dead: unknown subcommand \"%s\"; expected list, "
          "retry or purge\n", sub);
  return 2;
}

static void help_pending(FILE *f)
{
  fprintf(f, "Usage: emitctl pending [--limit N] [--json]\n\n"
          "Shows the oldest N (default 20) events waiting to be sent: seq,\n"
          "id, collection, age and failed attempts so far.\n");
}

static void print_pending_list(const struct reply *r)
{
  const struct jdoc *d = &r->doc;
  int arr = jget(d, 0, "pending");
  int n = arr >= 0 && d->t[arr].type == JSMN_ARRAY ? d->t[arr].size : 0;

  if (n == 0) {
    printf("no pending events: the spool is empty\n");
    return;
  }
  printf("%-8s %-26s %-12s %-12s %s\n", "SEQ", "ID", "COLLECTION", "AGE",
         "ATTEMPTS");
  for (int k = 0; k < n; k++) {
    int it = jitem(d, arr, k);
    char id[80], coll[64], age[32], seq[24];

    snprintf(seq, sizeof(seq), "%" PRIu64, ju64(d, jget(d, it, "seq"), 0));
    jstr(d, jget(d, it, "id"), id, sizeof(id), "?");
    jstr(d, jget(d, it, "collection"), coll, sizeof(coll), "");
    cell(seq, 8, true);
    putchar(' ');
    cell(printable(id), 26, true);
    putchar(' ');
    cell(coll[0] ? printable(coll) : "-", 12, true);
    putchar(' ');
    cell(fmt_since(ju64(d, jget(d, it, "accepted_ms"), 0), age, sizeof(age)),
         12, true);
    printf(" %" PRIu64 "\n", ju64(d, jget(d, it, "attempts"), 0));
  }
  print_total(r, n, "pending");
}

static int cmd_pending(struct ctl *ctl, int argc, char **argv)
{
  struct opts o;
  int rc = parse_opts("pending", argc, argv, OPT_JSON | OPT_LIMIT,
                      help_pending, &o);

  if (rc != 0)
    return rc == 1 ? 0 : rc;
  if ((rc = no_args("pending", &o)) != 0)
    return rc;
  return list(ctl, "pending", o.have_limit ? o.limit
              : EMD_CONTROL_PENDING_DEFAULT, o.json, print_pending_list);
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "config", required_argument, NULL, 'c' },
    { "socket", required_argument, NULL, 's' },
    { "version", no_argument, NULL, 'V' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  static const struct {
    const char *name;
    int (*fn)(struct ctl *, int, char **);
  } cmds[] = {
    { "send", cmd_send }, { "status", cmd_status }, { "flush", cmd_flush },
    { "metrics", cmd_metrics }, { "reload", cmd_reload },
    { "dead", cmd_dead }, { "pending", cmd_pending },
  };
  struct ctl ctl;
  int c, rc = -1;

  memset(&ctl, 0, sizeof(ctl));
  /* '+': stop at the command, so its own options are left to it. */
  while ((c = getopt_long(argc, argv, "+c:s:Vh", opts, NULL)) != -1) {
    switch (c) {
    case 'c': ctl.config_path = optarg; break;
    case 's': ctl.socket_path = optarg; break;
    case 'V': printf("emitctl %s\n", EMD_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return 2;
  }
  argc -= optind;
  argv += optind;
  for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
    if (strcmp(argv[0], cmds[i].name) == 0)
      rc = cmds[i].fn(&ctl, argc, argv);
  if (rc == -1) {
    fprintf(stderr, "emitctl: unknown command \"%s\" (see emitctl --help)\n",
            argv[0]);
    rc = 2;
  }
  if (ctl.have_cfg)
    emd_config_free(&ctl.cfg);
  return rc;
}
