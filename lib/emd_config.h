/* emd_config.h: emitd's configuration (SPEC 5). An INI file, then
 * EMITD_<SECTION>_<KEY> environment overrides, validated into one immutable
 * struct. Any thread; no global state.
 *
 * The file: "[section]" and "key = value" lines; lines starting with '#' or
 * ';' are comments, and " ;" starts a comment after a value (inih's rule);
 * values are taken literally (no quotes), lines are at most 199 characters.
 * An empty value unsets an optional key; a key with a default cannot be
 * empty. A key given twice: the later line wins. Enum values match without
 * regard to case. Sizes: a whole number with B, KiB, MiB or GiB (a bare
 * number is bytes; KB, MB and GB are refused). Durations: a whole number
 * with ms, s, m, h or d (the unit is required). allow_uids/allow_gids take
 * numbers only, separated by commas or spaces. When both upstream.api_key
 * and upstream.api_key_file are set, api_key_file wins: it can be rotated
 * and re-read, so the loaded struct carries api_key NULL. */
#ifndef EMD_CONFIG_H
#define EMD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define EMD_CONFIG_DEFAULT_PATH "/etc/emitd/agent.conf"
#define EMD_CONFIG_MAX_IDS 64   /* entries in allow_uids / allow_gids */

enum emd_log_format { EMD_LOG_TEXT, EMD_LOG_JSON };
enum emd_log_level { EMD_LOG_ERROR, EMD_LOG_WARN, EMD_LOG_INFO, EMD_LOG_DEBUG };
enum emd_sync { EMD_SYNC_ALWAYS, EMD_SYNC_INTERVAL, EMD_SYNC_NONE };
enum emd_on_full { EMD_FULL_REJECT, EMD_FULL_DROP_OLDEST, EMD_FULL_BLOCK };
enum emd_unknown { EMD_UNKNOWN_REJECT, EMD_UNKNOWN_IGNORE };
enum emd_mode { EMD_MODE_BATCH, EMD_MODE_SINGLE };
enum emd_encoding { EMD_ENC_PROTOBUF, EMD_ENC_JSON };
enum emd_compression { EMD_COMP_NONE, EMD_COMP_GZIP, EMD_COMP_ZSTD };
enum emd_auth { EMD_AUTH_BEARER, EMD_AUTH_X_API_KEY, EMD_AUTH_BASIC };

/* Strings are owned by the struct (freed by emd_config_free); an unset
 * optional string is NULL, never "". Durations are in milliseconds, sizes
 * in bytes. */
struct emd_config {
  char *path;                      /* file it was read from, NULL if none */
  struct {
    char *socket;                  /* event socket path */
    unsigned socket_mode;          /* e.g. 0660 */
    char *control_socket;          /* control socket path (mode 0600) */
    uid_t allow_uids[EMD_CONFIG_MAX_IDS];
    size_t n_allow_uids;           /* 0: every uid may send */
    gid_t allow_gids[EMD_CONFIG_MAX_IDS];
    size_t n_allow_gids;           /* 0: every gid may send */
    enum emd_log_level log_level;
    enum emd_log_format log_format;
    uint64_t shutdown_grace_ms;
  } agent;
  struct {
    uint64_t max_event_bytes;      /* longest line or frame */
    enum emd_unknown unknown_fields;
    uint64_t max_clients;          /* concurrent connections */
  } ingest;
  struct {
    char *dir;
    enum emd_sync sync;
    uint64_t sync_interval_ms;
    uint64_t max_bytes;
    enum emd_on_full on_full;
    uint64_t max_age_ms;
    uint64_t dead_max;
    uint64_t timer_ttl_ms;
    uint64_t dedup_window_ms;
  } spool;
  struct {
    char *endpoint;                /* base URL, no trailing slash */
    enum emd_mode mode;
    enum emd_encoding encoding;
    enum emd_compression compression;
    char *api_key;                 /* secret: never print it */
    char *api_key_file;
    enum emd_auth auth;
    uint64_t batch_max_events;
    uint64_t batch_max_bytes;
    uint64_t batch_linger_ms;
    uint64_t max_inflight;
    uint64_t connect_timeout_ms;
    uint64_t timeout_ms;
    uint64_t retry_initial_ms;
    uint64_t retry_max_ms;
    uint64_t auth_retry_max_ms;
    uint64_t max_attempts;         /* 0: unlimited */
    char *ca_file;
  } upstream;
  struct {
    char *scope;
    char *tenant;
    char *timezone;
    int repository_provider;       /* RepositoryProvider enum value; 0 unset */
    char *repository_link;
    char *repository_name;
  } enrich;
};

/* Fills *cfg with the built-in defaults of SPEC 5 (no file, no
 * environment). On success the caller frees with emd_config_free(). */
int emd_config_defaults(struct emd_config *cfg);

/* Loads the configuration: defaults, then the INI file at path, then the
 * environment envp (NULL-terminated "NAME=value" strings; pass environ; NULL
 * for none), then the cross-field checks. path NULL means
 * EMD_CONFIG_DEFAULT_PATH if it exists, else defaults and environment
 * alone; a path given explicitly must exist. Every EMITD_* variable must
 * name a key. *cfg is overwritten, not freed; on success it is the
 * caller's, to release with emd_config_free(). Returns 0, EMD_ECONFIG (or
 * -ENOMEM). On failure writes one line (no newline) into err naming where
 * the value came from (path as given and line, or the variable), the key
 * and what was expected, e.g.
 *   "agent.conf:12: [spool] sycn: unknown key (did you mean sync?)"
 *   "agent.conf:7: unknown section [spol] (did you mean [spool]?)"
 *   "EMITD_SPOOL_MAX_BYTES: bad size \"12XB\": expected a number with B,
 *    KiB, MiB or GiB"
 *   "/etc/x.conf: cannot open: No such file or directory"
 * and leaves *cfg zeroed (nothing to free). Never prints the API key. */
int emd_config_load(struct emd_config *cfg, const char *path,
                    char *const *envp, char *err, size_t errlen);

/* Releases what the struct owns and zeroes it. NULL-safe; safe twice. */
void emd_config_free(struct emd_config *cfg);

/* Writes the effective configuration as INI to f, api_key shown as
 * "(set)" when set. For --check-config -v and tests. */
void emd_config_dump(const struct emd_config *cfg, FILE *f);

/* Reads the key file: its content trimmed of surrounding white space.
 * *out is the caller's (free()); NULL when the file is empty. Returns 0;
 * -errno when the file cannot be opened or read; EMD_ECONFIG when it is
 * over 64 KiB or the key holds white space, control or non-ASCII bytes
 * (it goes into an HTTP header). On failure writes one line naming path
 * into err, never the file's content. */
int emd_config_read_key_file(const char *path, char **out, char *err,
                             size_t errlen);

/* The key table, for tests and documentation: the i-th key's section, name
 * and default exactly as agent.conf.example writes it (*def NULL: unset by
 * default). Returns false when i is past the last key. */
bool emd_config_key(size_t i, const char **section, const char **key,
                    const char **def);

/* Parsers for one value, exposed for the fuzzer and unit tests. Whole
 * numbers only, no sign; one optional space before the unit. Return 0, or
 * EMD_ECONFIG with the reason in err, e.g.
 *   "bad duration \"5x\": expected a number with ms, s, m, h or d" */
int emd_config_parse_size(const char *s, uint64_t *out, char *err, size_t n);
int emd_config_parse_duration(const char *s, uint64_t *out, char *err,
                              size_t n);

#endif
