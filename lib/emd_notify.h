/* emd_notify.h: systemd's notify and socket-activation protocols (SPEC 7),
 * through libsystemd. Outside systemd (no NOTIFY_SOCKET, no LISTEN_FDS)
 * every call is a harmless no-op, so callers never special-case it.
 * Loop thread only. */
#ifndef EMD_NOTIFY_H
#define EMD_NOTIFY_H

#include <uv.h>

/* Longest STATUS= text sent; longer texts are cut at a UTF-8 boundary. */
#define EMD_NOTIFY_STATUS_MAX 200

struct emd_notify;                      /* opaque */

/* Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. When systemd asks
 * for a watchdog (WatchdogSec=) for this process, starts a timer on loop
 * that sends WATCHDOG=1 every half interval: the pings come from the loop,
 * so a stuck loop stops them and systemd restarts emitd. The timer does
 * not keep the loop alive on its own. Not under systemd, *out is a valid
 * object that sends nothing. On success *out is the caller's; release it
 * with emd_notify_close(). Returns 0 or -ENOMEM. */
int emd_notify_open(uv_loop_t *loop, struct emd_notify **out);

/* Sends "READY=1\nSTATUS=<status>": call it once, when the event socket
 * listens and the spool is open. status may be NULL (READY=1 alone). */
void emd_notify_ready(struct emd_notify *n, const char *status);

/* Sends "STATUS=<status>" (shown by systemctl status), for example
 * "pending 12, upstream ok". Control characters become spaces, so a status
 * cannot smuggle in other assignments. A status equal to the last one sent
 * is not sent again. Each call that sends is a few syscalls: call it from
 * a timer or on a change of state, not per event. */
void emd_notify_status(struct emd_notify *n, const char *status);

/* Sends "STOPPING=1": call it first thing on SIGTERM/SIGINT. The watchdog
 * keeps pinging while emitd drains, until emd_notify_close(). */
void emd_notify_stopping(struct emd_notify *n);

/* Stops the watchdog and closes the timer; n is freed in the timer's close
 * callback, so run the loop once more before uv_loop_close(). NULL is a
 * no-op. */
void emd_notify_close(struct emd_notify *n);

/* The event socket passed by systemd (socket activation: LISTEN_PID,
 * LISTEN_FDS, LISTEN_FDNAMES), if any. Only a listening Unix stream socket
 * qualifies. Among several, the first named want_name wins (NULL means
 * "emitd.sock" or "event", as set by FileDescriptorName=), else the first
 * that qualifies; the passed fds not chosen are closed. The variables are
 * unset, so call it once, early, before any other thread starts (unsetenv
 * is not thread-safe) and before forking anything.
 * Returns the fd (close-on-exec, already listening: uv_pipe_open() it,
 * do not bind, chmod or unlink its path), or -1 when no fd was passed to
 * this process (LISTEN_PID is another pid or unset: bind the configured
 * path as usual), or EMD_ECONFIG, logged, when fds were passed but none
 * qualifies or the variables are malformed: refuse to start, since binding
 * our own socket would leave systemd's unserved. */
int emd_notify_listen_fd(const char *want_name);

#endif
