/* emd_config.h: emitd's configuration (SPEC 5). An INI file, then
 * EMITD_<SECTION>_<KEY> environment overrides, validated into one immutable
 * struct. Any thread; no global state. */
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
 * environment envp (NULL-terminated "NAME=value" strings; pass environ), then
 * conf_validate(). path NULL means EMD_CONFIG_DEFAULT_PATH if it exists,
 * else defaults and environment alone; a path given explicitly must exist.
 * On failure returns EMD_ECONFIG and writes one line (no newline) naming the
 * file, line and key and what was expected into err, e.g.
 *   "agent.conf:12: [spool] sycn: unknown key"
 *   "EMITD_SPOOL_MAX_BYTES: bad size \"12XB\": expected a number with B, KiB, MiB or GiB"
 * and leaves *cfg empty (nothing to free). Never prints the API key. */
int emd_config_load(struct emd_config *cfg, const char *path,
                    char *const *envp, char *err, size_t errlen);

/* Releases what the struct owns and zeroes it. NULL-safe; safe twice. */
void emd_config_free(struct emd_config *cfg);

/* Writes the effective configuration as INI to f, api_key shown as
 * "(set)" when set. For --check-config -v and tests. */
void emd_config_dump(const struct emd_config *cfg, FILE *f);

/* Reads the key file: its content trimmed of surrounding white space.
 * *out is the caller's (free()); NULL when the file is empty. */
int emd_config_read_key_file(const char *path, char **out);

/* Parsers for one value, exposed for the fuzzer and unit tests.
 * Return 0, or EMD_ECONFIG with a reason ("bad unit \"x\"") in err. */
int emd_config_parse_size(const char *s, uint64_t *out, char *err, size_t n);
int emd_config_parse_duration(const char *s, uint64_t *out, char *err,
                              size_t n);

#endif
