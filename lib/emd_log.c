/* emd_log.c: see emd_log.h. */
#include "emd_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct {
  enum emd_log_level level;
  enum emd_log_format format;
  bool journal;
  int fd;
} log_cfg = { EMD_LOG_INFO, EMD_LOG_TEXT, false, 2 };

static const char *const level_names[] = { "error", "warn", "info", "debug" };
/* syslog priorities: err, warning, info, debug */
static const int level_prio[] = { 3, 4, 6, 7 };

void emd_log_setup(enum emd_log_level level, enum emd_log_format fmt,
                   bool journal, int fd)
{
  log_cfg.level = level;
  log_cfg.format = fmt;
  log_cfg.journal = journal;
  log_cfg.fd = fd;
}

bool emd_log_journal_detect(void)
{
  const char *js = getenv("JOURNAL_STREAM");
  unsigned long long dev, ino;
  struct stat st;

  if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
    return false;
  if (fstat(2, &st) != 0)
    return false;
  return (unsigned long long)st.st_dev == dev &&
         (unsigned long long)st.st_ino == ino;
}

bool emd_log_enabled(enum emd_log_level lvl)
{
  return lvl <= log_cfg.level;
}

int emd_log_level_parse(const char *s)
{
  for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
    if (strcmp(s, level_names[i]) == 0)
      return (int)i;
  return -1;
}

const char *emd_log_level_name(enum emd_log_level lvl)
{
  if ((unsigned)lvl >= sizeof(level_names) / sizeof(level_names[0]))
    return "info";
  return level_names[lvl];
}

/* Appends s to buf as the inside of a JSON string. Returns the new length,
 * never more than cap - 1. */
static size_t json_escape(char *buf, size_t len, size_t cap, const char *s)
{
  static const char hex[] = "0123456789abcdef";

  for (; *s != '\0' && len + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;

    if (c == '"' || c == '\\') {
      buf[len++] = '\\';
      buf[len++] = (char)c;
    } else if (c == '\n') {
      buf[len++] = '\\';
      buf[len++] = 'n';
    } else if (c < 0x20) {
      memcpy(buf + len, "\\u00", 4);
      buf[len + 4] = hex[c >> 4];
      buf[len + 5] = hex[c & 15];
      len += 6;
    } else {
      buf[len++] = (char)c;
    }
  }
  return len;
}

void emd_logv(enum emd_log_level lvl, const char *module, const char *fmt,
              va_list ap)
{
  char msg[4096], line[8192 + 256], ts[40];
  struct timespec now;
  struct tm tm;
  size_t n = 0;
  int w;

  if (!emd_log_enabled(lvl))
    return;
  w = vsnprintf(msg, sizeof(msg), fmt, ap);
  if (w < 0)
    return;
  /* A message never spans lines: a client's bytes could otherwise forge
   * a log line. */
  for (char *p = msg; *p != '\0'; p++)
    if (*p == '\n' || *p == '\r')
      *p = ' ';
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  if (log_cfg.format == EMD_LOG_JSON) {
    char pfx[8] = "";

    /* Under journald the priority prefix goes before the JSON object. */
    if (log_cfg.journal)
      snprintf(pfx, sizeof(pfx), "<%d>", level_prio[lvl]);
    w = snprintf(line, sizeof(line), "%s{\"ts\":\"%s.%03ldZ\",\"level\":"
                 "\"%s\",\"module\":\"", pfx, ts, now.tv_nsec / 1000000,
                 level_names[lvl]);
    n = (size_t)w;
    n = json_escape(line, n, sizeof(line) - 32, module);
    memcpy(line + n, "\",\"msg\":\"", 9);
    n += 9;
    n = json_escape(line, n, sizeof(line) - 4, msg);
    line[n++] = '"';
    line[n++] = '}';
  } else if (log_cfg.journal) {
    w = snprintf(line, sizeof(line), "<%d>%s: %s", level_prio[lvl], module,
                 msg);
    n = (size_t)w < sizeof(line) - 1 ? (size_t)w : sizeof(line) - 2;
  } else {
    w = snprintf(line, sizeof(line), "%s.%03ldZ %-5s %s: %s", ts,
                 now.tv_nsec / 1000000, level_names[lvl], module, msg);
    n = (size_t)w < sizeof(line) - 1 ? (size_t)w : sizeof(line) - 2;
  }
  line[n++] = '\n';
  /* One write per line keeps lines whole between threads. */
  ssize_t r = write(log_cfg.fd, line, n);
  (void)r;
}

void emd_log(enum emd_log_level lvl, const char *module, const char *fmt,
             ...)
{
  va_list ap;

  va_start(ap, fmt);
  emd_logv(lvl, module, fmt, ap);
  va_end(ap);
}

char *emd_log_sample(const void *buf, size_t len, char *out, size_t outlen)
{
  const unsigned char *p = buf;
  size_t i, n = 0;

  if (outlen == 0)
    return out;
  for (i = 0; i < len && n + 1 < outlen; i++)
    out[n++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '.';
  if (i < len && outlen > 4) {
    n = n > outlen - 4 ? outlen - 4 : n;
    memcpy(out + n, "...", 3);
    n += 3;
  }
  out[n] = '\0';
  return out;
}
