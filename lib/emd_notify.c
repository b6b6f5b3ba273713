/* emd_notify.c: see emd_notify.h. libsystemd does the talking: it is the
 * reference implementation of both protocols (abstract NOTIFY_SOCKET
 * addresses, WATCHDOG_PID, LISTEN_FDNAMES, the fd checks), it is small and
 * in every Debian, and what is left here is policy: when to ping, what a
 * status may contain, which passed socket is the event socket. */
#include "emd_notify.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "emd_err.h"
#include "emd_log.h"

struct emd_notify {
  uv_timer_t watchdog;             /* pings WATCHDOG=1; data points back */
  uint64_t watchdog_ms;            /* ping interval, 0 when off */
  bool enabled;                    /* NOTIFY_SOCKET was set at open */
  bool failing;                    /* the last send failed (logged once) */
  bool have_status;                /* status holds the last STATUS= sent */
  char status[EMD_NOTIFY_STATUS_MAX + 1];
};

/* FileDescriptorName= values taken for the event socket when the caller
 * names none. */
static const char *const default_names[] = { "emitd.sock", "event" };

/* Sends one message; a failure is logged once per run of failures, since a
 * vanished notify socket would otherwise log at every watchdog ping. */
static void notify_send(struct emd_notify *n, const char *msg)
{
  int rc;

  if (!n->enabled)
    return;
  rc = sd_notify(0, msg);
  if (rc > 0) {
    if (n->failing)
      emd_log_info("notify", "notifying systemd works again");
    n->failing = false;
    return;
  }
  if (!n->failing)
    emd_log_warn("notify", "cannot notify systemd: %s",
                 rc < 0 ? emd_strerror(rc) : "NOTIFY_SOCKET is gone");
  n->failing = true;
}

/* Copies src into dst (EMD_NOTIFY_STATUS_MAX + 1 bytes): control bytes
 * become spaces, since a newline would start a new assignment; a cut falls
 * on a character boundary, since systemd drops a status that is not
 * UTF-8. */
static void status_copy(char *dst, const char *src)
{
  size_t len = strnlen(src, EMD_NOTIFY_STATUS_MAX + 1);

  if (len > EMD_NOTIFY_STATUS_MAX) {
    len = EMD_NOTIFY_STATUS_MAX;
    while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)
      len--;
  }
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)src[i];
    dst[i] = (c < 0x20 || c == 0x7F) ? ' ' : (char)c;
  }
  dst[len] = '\0';
}

static void watchdog_cb(uv_timer_t *t)
{
  notify_send(t->data, "WATCHDOG=1");
}

static void close_cb(uv_handle_t *h)
{
  free(h->data);
}

int emd_notify_open(uv_loop_t *loop, struct emd_notify **out)
{
  struct emd_notify *n;
  uint64_t usec = 0;
  int rc;

  n = calloc(1, sizeof(*n));
  if (n == NULL)
    return -ENOMEM;
  rc = uv_timer_init(loop, &n->watchdog);
  if (rc != 0) {
    free(n);                       /* no handle yet, so no close callback */
    return rc;
  }
  n->watchdog.data = n;
  /* The watchdog must never be what keeps the loop running. */
  uv_unref((uv_handle_t *)&n->watchdog);
  n->enabled = getenv("NOTIFY_SOCKET") != NULL;
  if (!n->enabled)
    goto out;
  rc = sd_watchdog_enabled(0, &usec);
  if (rc < 0)
    emd_log_warn("notify", "ignoring WATCHDOG_USEC/WATCHDOG_PID: %s",
                 emd_strerror(rc));
  if (rc > 0 && usec > 0) {
    /* Half the interval, as sd_watchdog_enabled(3) advises: one late ping
     * is no restart. */
    n->watchdog_ms = usec / 2000 > 0 ? usec / 2000 : 1;
    uv_timer_start(&n->watchdog, watchdog_cb, n->watchdog_ms,
                   n->watchdog_ms);
    emd_log_debug("notify", "watchdog ping every %llu ms",
                  (unsigned long long)n->watchdog_ms);
  }

out:
  *out = n;
  return 0;
}

void emd_notify_ready(struct emd_notify *n, const char *status)
{
  char msg[sizeof("READY=1\nSTATUS=") + EMD_NOTIFY_STATUS_MAX];

  if (status == NULL) {
    notify_send(n, "READY=1");
    return;
  }
  status_copy(n->status, status);
  n->have_status = true;
  snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", n->status);
  notify_send(n, msg);
}

void emd_notify_status(struct emd_notify *n, const char *status)
{
  char copy[EMD_NOTIFY_STATUS_MAX + 1];
  char msg[sizeof("STATUS=") + EMD_NOTIFY_STATUS_MAX];

  if (!n->enabled || status == NULL)
    return;
  status_copy(copy, status);
  if (n->have_status && strcmp(copy, n->status) == 0)
    return;
  memcpy(n->status, copy, sizeof(copy));
  n->have_status = true;
  snprintf(msg, sizeof(msg), "STATUS=%s", n->status);
  notify_send(n, msg);
}

void emd_notify_stopping(struct emd_notify *n)
{
  notify_send(n, "STOPPING=1");
}

void emd_notify_close(struct emd_notify *n)
{
  if (n == NULL)
    return;
  uv_timer_stop(&n->watchdog);
  uv_close((uv_handle_t *)&n->watchdog, close_cb);
}

static bool name_wanted(const char *name, const char *want)
{
  if (want != NULL)
    return strcmp(name, want) == 0;
  for (size_t i = 0; i < sizeof(default_names) / sizeof(default_names[0]);
       i++)
    if (strcmp(name, default_names[i]) == 0)
      return true;
  return false;
}

static bool usable(int fd)
{
  /* A listening (1) Unix socket of type stream, bound to any path. */
  return sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0;
}

/* Index in the passed fds of the event socket, or -1. */
static int pick_fd(int n_fds, char **names, const char *want)
{
  int first = -1;

  for (int i = 0; i < n_fds; i++) {
    if (!usable(SD_LISTEN_FDS_START + i))
      continue;
    if (name_wanted(names[i], want))
      return i;
    if (first < 0)
      first = i;
  }
  return first;
}

int emd_notify_listen_fd(const char *want)
{
  char **names = NULL;
  int n_fds, pick, rc;

  /* 1: unset LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, whatever the
   * outcome, so nothing we start inherits them. */
  n_fds = sd_listen_fds_with_names(1, &names);
  if (n_fds < 0) {
    emd_log_error("notify", "socket activation: bad LISTEN_FDS or "
                  "LISTEN_FDNAMES: %s", emd_strerror(n_fds));
    return EMD_ECONFIG;
  }
  if (n_fds == 0)
    return -1;
  pick = pick_fd(n_fds, names, want);
  for (int i = 0; i < n_fds; i++) {
    int fd = SD_LISTEN_FDS_START + i;

    if (i == pick)
      continue;
    /* They are ours now and nothing else can find them. */
    emd_log_warn("notify", "socket activation: closing passed fd %d "
                 "(\"%s\"): %s", fd, names[i], usable(fd)
                 ? "not the socket wanted" : "not a listening Unix stream "
                 "socket");
    close(fd);
  }
  if (pick < 0) {
    emd_log_error("notify", "socket activation: none of the %d passed "
                  "fds is a listening Unix stream socket (ListenStream= "
                  "with a path in emitd.socket)", n_fds);
    rc = EMD_ECONFIG;
  } else {
    emd_log_info("notify", "socket activation: event socket is fd %d "
                 "(\"%s\")", SD_LISTEN_FDS_START + pick, names[pick]);
    rc = SD_LISTEN_FDS_START + pick;
  }
  for (int i = 0; i < n_fds; i++)
    free(names[i]);
  free(names);
  return rc;
}
