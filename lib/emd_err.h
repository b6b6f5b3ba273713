/* emd_err.h: one error space for all of emitd. Any thread. */
#ifndef EMD_ERR_H
#define EMD_ERR_H

/* 0 is success. <0 is failure: -errno as is, ours below -1000, never
 * reused. The code is what replies carry ("too_large"); the text is a
 * default message for people. */
#define EMD_ERR_MAP(X)                                                    \
  X(BADJSON,    -1001, "bad_json",      "not valid JSON")                 \
  X(TOOLARGE,   -1002, "too_large",     "over ingest.max_event_bytes")    \
  X(INVALID,    -1003, "invalid",       "event breaks a rule")            \
  X(SPOOLFULL,  -1004, "spool_full",    "spool is full")                  \
  X(SHUTDOWN,   -1005, "shutting_down", "emitd is stopping")              \
  X(CONFIG,     -1006, "config",        "bad configuration")              \
  X(SPOOLVER,   -1007, "spool_version", "spool from a newer emitd")       \
  X(SPOOLBAD,   -1008, "spool_corrupt", "spool cannot be opened")         \
  X(DENIED,     -1009, "denied",        "peer not allowed")               \
  X(TOOMANY,    -1010, "too_many_clients", "over ingest.max_clients")     \
  X(NOTFOUND,   -1011, "not_found",     "no such entry")                  \
  X(BADCMD,     -1012, "bad_command",   "unknown or malformed command")   \
  X(INTERNAL,   -1013, "internal",      "internal error")

enum emd_err {
#define X(name, value, code, msg) EMD_E##name = (value),
  EMD_ERR_MAP(X)
#undef X
};

/* A short text for people. Never NULL; covers -errno too. */
const char *emd_strerror(int err);

/* The machine-readable code for replies ("too_large"). Never NULL; -errno
 * values map to "internal". */
const char *emd_errcode(int err);

#endif
