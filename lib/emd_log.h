/* emd_log.h: one log line per event, to stderr (SPEC 6). Levels; text or
 * JSON; syslog priority prefixes ("<3>") when JOURNAL_STREAM is set. Any
 * thread: each line goes out in one write(2). The settings are the one
 * piece of process-wide state in lib/, like syslog's. */
#ifndef EMD_LOG_H
#define EMD_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "emd_config.h"   /* enum emd_log_level, enum emd_log_format */

/* Sets level and format; journal adds "<N>" priority prefixes and, in
 * text format, drops the timestamp (journald stamps lines itself; a JSON
 * line keeps its "ts" member). fd is where lines go
 * (2 for stderr). Call before other threads start, or from the loop on
 * reload (a line racing a reload may use either setting). */
void emd_log_setup(enum emd_log_level level, enum emd_log_format fmt,
                   bool journal, int fd);

/* True when JOURNAL_STREAM names our stderr, as systemd sets it. */
bool emd_log_journal_detect(void);

/* True when lines at lvl are written. */
bool emd_log_enabled(enum emd_log_level lvl);

/* Writes one line at lvl, from module (e.g. "spool"). fmt is printf-like;
 * a newline is added; the message is cut at 4 KiB. */
void emd_log(enum emd_log_level lvl, const char *module, const char *fmt,
             ...) __attribute__((format(printf, 3, 4)));
void emd_logv(enum emd_log_level lvl, const char *module, const char *fmt,
              va_list ap) __attribute__((format(printf, 3, 0)));

/* Parses "error", "warn", "info", "debug"; -1 if none matches. */
int emd_log_level_parse(const char *s);
const char *emd_log_level_name(enum emd_log_level lvl);

/* Writes a short printable sample of untrusted bytes into out (at most
 * outlen - 1 characters, NUL-terminated): bytes outside printable ASCII
 * become '.', and "..." marks a cut. Returns out. */
char *emd_log_sample(const void *buf, size_t len, char *out, size_t outlen);

#define emd_log_error(mod, ...) emd_log(EMD_LOG_ERROR, mod, __VA_ARGS__)
#define emd_log_warn(mod, ...) emd_log(EMD_LOG_WARN, mod, __VA_ARGS__)
#define emd_log_info(mod, ...) emd_log(EMD_LOG_INFO, mod, __VA_ARGS__)
#define emd_log_debug(mod, ...)                                          \
  do {                                                                   \
    if (emd_log_enabled(EMD_LOG_DEBUG))                                  \
      emd_log(EMD_LOG_DEBUG, mod, __VA_ARGS__);                          \
  } while (0)

#endif
