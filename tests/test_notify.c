/* test_notify.c: lib/emd_notify.c against a real notify socket (an AF_UNIX
 * datagram socket standing in for systemd's) and real listening sockets
 * passed the way systemd passes them (fd 3 on, LISTEN_* variables). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "emd_err.h"
#include "emd_notify.h"

#define FIRST_FD 3          /* SD_LISTEN_FDS_START */
#define SAVED_FD_MIN 100    /* where whatever sat at 3 and 4 is kept */

struct fx {
  char dir[64];             /* mkdtemp */
  char path[128];           /* dir/notify.sock, the NOTIFY_SOCKET */
  int sock;                 /* bound datagram socket reading it */
  uv_loop_t loop;
  struct emd_notify *n;
  int placed[2];            /* fds 3 and 4 hold a test's socket */
  int saved[2];             /* what sat there before, or -1 */
  char sock_paths[2][128];  /* listeners made for the LISTEN_FDS tests */
};

static const char *const env_vars[] = {
  "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
  "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
};

static void env_clear(void)
{
  for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
    unsetenv(env_vars[i]);
}

static void setenv_long(const char *name, long v)
{
  char buf[32];

  snprintf(buf, sizeof(buf), "%ld", v);
  assert_int_equal(setenv(name, buf, 1), 0);
}

static int unix_socket(int type, const char *path, int listening)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);

  assert_true(fd >= 0);
  assert_true(strlen(path) < sizeof(sa.sun_path));
  strcpy(sa.sun_path, path);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  if (listening)
    assert_int_equal(listen(fd, 8), 0);
  return fd;
}

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof(*f));

  assert_non_null(f);
  env_clear();
  strcpy(f->dir, "/tmp/emd-notify-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/notify.sock", f->dir);
  f->sock = unix_socket(SOCK_DGRAM, f->path, 0);
  assert_int_equal(setenv("NOTIFY_SOCKET", f->path, 1), 0);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;

  emd_notify_close(f->n);
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  close(f->sock);
  unlink(f->path);
  for (int i = 0; i < 2; i++)
    if (f->sock_paths[i][0] != '\0')
      unlink(f->sock_paths[i]);
  assert_int_equal(rmdir(f->dir), 0);
  env_clear();
  free(f);
  return 0;
}

/* Reads one datagram into buf (NUL-terminated), waiting up to timeout_ms.
 * Returns its length, or -1 when none came. */
static int recv_msg(struct fx *f, char *buf, size_t len, int timeout_ms)
{
  struct pollfd p = { .fd = f->sock, .events = POLLIN };
  ssize_t r;

  if (poll(&p, 1, timeout_ms) != 1)
    return -1;
  r = recv(f->sock, buf, len - 1, 0);
  assert_true(r >= 0);
  buf[r] = '\0';
  return (int)r;
}

static void expect_msg(struct fx *f, const char *want)
{
  char buf[512];

  assert_true(recv_msg(f, buf, sizeof(buf), 1000) >= 0);
  assert_string_equal(buf, want);
}

static void expect_nothing(struct fx *f, int wait_ms)
{
  char buf[512];

  assert_int_equal(recv_msg(f, buf, sizeof(buf), wait_ms), -1);
}

/* Runs the loop for ms milliseconds. */
static void stop_cb(uv_timer_t *t)
{
  uv_stop(t->loop);
}

static void run_for(struct fx *f, uint64_t ms)
{
  uv_timer_t t;

  assert_int_equal(uv_timer_init(&f->loop, &t), 0);
  assert_int_equal(uv_timer_start(&t, stop_cb, ms, 0), 0);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
}

static int count_watchdog_pings(struct fx *f)
{
  char buf[512];
  int n = 0;

  while (recv_msg(f, buf, sizeof(buf), 0) >= 0) {
    assert_string_equal(buf, "WATCHDOG=1");
    n++;
  }
  return n;
}

static void ready_sends_ready_with_the_status(void **state)
{
  struct fx *f = *state;

  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_ready(f->n, "pending 0, upstream ok");
  expect_msg(f, "READY=1\nSTATUS=pending 0, upstream ok");
  emd_notify_ready(f->n, NULL);
  expect_msg(f, "READY=1");
}

static void status_and_stopping_reach_the_notify_socket(void **state)
{
  struct fx *f = *state;

  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_status(f->n, "pending 12, upstream ok");
  expect_msg(f, "STATUS=pending 12, upstream ok");
  emd_notify_stopping(f->n);
  expect_msg(f, "STOPPING=1");
  expect_nothing(f, 50);
}

static void an_unchanged_status_is_not_sent_again(void **state)
{
  struct fx *f = *state;

  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_ready(f->n, "pending 0, upstream ok");
  expect_msg(f, "READY=1\nSTATUS=pending 0, upstream ok");
  emd_notify_status(f->n, "pending 0, upstream ok");
  emd_notify_status(f->n, "pending 3, upstream ok");
  emd_notify_status(f->n, "pending 3, upstream ok");
  expect_msg(f, "STATUS=pending 3, upstream ok");
  expect_nothing(f, 50);
}

static void a_status_cannot_smuggle_in_other_assignments(void **state)
{
  struct fx *f = *state;

  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_status(f->n, "upstream 401\nREADY=1\tnow");
  expect_msg(f, "STATUS=upstream 401 READY=1 now");
}

static void a_long_status_is_cut_between_characters(void **state)
{
  struct fx *f = *state;
  char status[EMD_NOTIFY_STATUS_MAX + 16];
  char want[EMD_NOTIFY_STATUS_MAX + 16];

  /* "é" (2 bytes) straddles the limit: it goes whole, not half. */
  memset(status, 'a', EMD_NOTIFY_STATUS_MAX - 1);
  strcpy(status + EMD_NOTIFY_STATUS_MAX - 1, "\xc3\xa9 and more");
  strcpy(want, "STATUS=");
  memset(want + 7, 'a', EMD_NOTIFY_STATUS_MAX - 1);
  want[7 + EMD_NOTIFY_STATUS_MAX - 1] = '\0';
  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_status(f->n, status);
  expect_msg(f, want);
}

static void watchdog_pings_from_the_loop_at_half_the_interval(void **state)
{
  struct fx *f = *state;
  int pings;

  setenv_long("WATCHDOG_USEC", 200000);
  setenv_long("WATCHDOG_PID", (long)getpid());
  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  run_for(f, 500);
  /* Every 100 ms: 4 or 5 in 500 ms; a loaded machine may lose one. */
  pings = count_watchdog_pings(f);
  assert_in_range(pings, 3, 5);
  /* A loop that does not run sends nothing: that is the point. */
  usleep(300 * 1000);
  assert_int_equal(count_watchdog_pings(f), 0);
  run_for(f, 250);
  assert_in_range(count_watchdog_pings(f), 1, 3);
}

static void watchdog_stays_off_when_meant_for_another_pid(void **state)
{
  struct fx *f = *state;

  setenv_long("WATCHDOG_USEC", 200000);
  setenv_long("WATCHDOG_PID", (long)getppid());
  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  run_for(f, 300);
  assert_int_equal(count_watchdog_pings(f), 0);
}

static void nothing_is_sent_outside_systemd(void **state)
{
  struct fx *f = *state;

  unsetenv("NOTIFY_SOCKET");
  setenv_long("WATCHDOG_USEC", 200000);
  setenv_long("WATCHDOG_PID", (long)getpid());
  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_ready(f->n, "pending 0");
  emd_notify_status(f->n, "pending 1");
  emd_notify_stopping(f->n);
  run_for(f, 300);
  expect_nothing(f, 0);
}

static void close_frees_in_the_close_callback(void **state)
{
  struct fx *f = *state;

  setenv_long("WATCHDOG_USEC", 200000);
  assert_int_equal(emd_notify_open(&f->loop, &f->n), 0);
  emd_notify_close(f->n);
  f->n = NULL;
  /* The closing timer is the loop's only handle; uv_run returns once its
   * close callback has run (the teardown's uv_loop_close checks it), and
   * leak checkers see the free. */
  assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
  expect_nothing(f, 0);
}

/* --- socket activation ------------------------------------------------ */

/* Puts fd at number target, keeping whatever was there (the test runner's,
 * the loop's or the notify socket) out of the way at SAVED_FD_MIN and up,
 * for restore_fds. */
static void place_fd(struct fx *f, int fd, int target)
{
  int i = target - FIRST_FD;

  f->placed[i] = 1;
  f->saved[i] = -1;
  if (fd == target)
    return;                            /* it was free */
  f->saved[i] = fcntl(target, F_DUPFD_CLOEXEC, SAVED_FD_MIN);
  assert_int_equal(dup2(fd, target), target);
  close(fd);
}

static void restore_fds(struct fx *f)
{
  for (int i = 0; i < 2; i++) {
    if (!f->placed[i])
      continue;
    if (f->saved[i] >= 0) {
      assert_int_equal(dup2(f->saved[i], FIRST_FD + i), FIRST_FD + i);
      close(f->saved[i]);
    } else {
      close(FIRST_FD + i);
    }
    f->placed[i] = 0;
  }
}

/* A listening (or, for type SOCK_DGRAM, bound) Unix socket at fd 3 + i. */
static void pass_socket(struct fx *f, int i, int type)
{
  char path[sizeof(f->sock_paths[i])];

  /* Through a local: gcc -O2 cannot tell f->dir from f->sock_paths. */
  snprintf(path, sizeof(path), "%s/passed%d.sock", f->dir, i);
  memcpy(f->sock_paths[i], path, sizeof(path));
  place_fd(f, unix_socket(type, f->sock_paths[i], type == SOCK_STREAM),
           FIRST_FD + i);
}

static void pass_env(long n_fds, long pid, const char *names)
{
  setenv_long("LISTEN_FDS", n_fds);
  setenv_long("LISTEN_PID", pid);
  if (names != NULL)
    assert_int_equal(setenv("LISTEN_FDNAMES", names, 1), 0);
}

static void assert_listen_env_unset(void)
{
  assert_null(getenv("LISTEN_FDS"));
  assert_null(getenv("LISTEN_PID"));
  assert_null(getenv("LISTEN_FDNAMES"));
}

static int fd_is_open(int fd)
{
  return fcntl(fd, F_GETFD) >= 0;
}

/* Connects to path and checks that listen_fd accepts the connection. */
static void assert_accepts(int listen_fd, const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int a;

  strcpy(sa.sun_path, path);
  assert_int_equal(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
  a = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
  assert_true(a >= 0);
  close(a);
  close(c);
}

static void listen_fd_returns_the_passed_unix_listener(void **state)
{
  struct fx *f = *state;
  int fd;

  pass_socket(f, 0, SOCK_STREAM);
  pass_env(1, (long)getpid(), NULL);
  fd = emd_notify_listen_fd(NULL);
  assert_int_equal(fd, FIRST_FD);
  assert_listen_env_unset();
  assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  assert_accepts(fd, f->sock_paths[0]);
  restore_fds(f);
}

static void listen_fd_ignores_fds_meant_for_another_pid(void **state)
{
  struct fx *f = *state;

  pass_socket(f, 0, SOCK_STREAM);
  pass_env(1, (long)getppid(), NULL);
  assert_int_equal(emd_notify_listen_fd(NULL), -1);
  assert_listen_env_unset();
  assert_true(fd_is_open(FIRST_FD));   /* not ours to close */
  restore_fds(f);
}

static void listen_fd_is_minus_one_when_nothing_was_passed(void **state)
{
  (void)state;
  assert_int_equal(emd_notify_listen_fd(NULL), -1);
  assert_listen_env_unset();
}

static void listen_fd_prefers_the_socket_named_emitd_sock(void **state)
{
  struct fx *f = *state;

  pass_socket(f, 0, SOCK_STREAM);
  pass_socket(f, 1, SOCK_STREAM);
  pass_env(2, (long)getpid(), "other:emitd.sock");
  assert_int_equal(emd_notify_listen_fd(NULL), FIRST_FD + 1);
  assert_listen_env_unset();
  assert_false(fd_is_open(FIRST_FD));  /* the unused one is closed */
  assert_accepts(FIRST_FD + 1, f->sock_paths[1]);
  restore_fds(f);
}

static void listen_fd_takes_the_name_asked_for(void **state)
{
  struct fx *f = *state;

  pass_socket(f, 0, SOCK_STREAM);
  pass_socket(f, 1, SOCK_STREAM);
  pass_env(2, (long)getpid(), "emitd.sock:mine");
  assert_int_equal(emd_notify_listen_fd("mine"), FIRST_FD + 1);
  restore_fds(f);
}

static void listen_fd_skips_what_is_not_a_stream_listener(void **state)
{
  struct fx *f = *state;

  pass_socket(f, 0, SOCK_DGRAM);
  pass_socket(f, 1, SOCK_STREAM);
  pass_env(2, (long)getpid(), NULL);
  assert_int_equal(emd_notify_listen_fd(NULL), FIRST_FD + 1);
  assert_false(fd_is_open(FIRST_FD));
  restore_fds(f);
}

static void listen_fd_refuses_passed_fds_it_cannot_use(void **state)
{
  struct fx *f = *state;

  /* Named right, but a datagram socket: binding our own socket instead
   * would leave systemd's unserved, so this is an error. */
  pass_socket(f, 0, SOCK_DGRAM);
  pass_env(1, (long)getpid(), "emitd.sock");
  assert_int_equal(emd_notify_listen_fd(NULL), EMD_ECONFIG);
  assert_listen_env_unset();
  assert_false(fd_is_open(FIRST_FD));
  restore_fds(f);
}

static void listen_fd_refuses_malformed_variables(void **state)
{
  struct fx *f = *state;

  pass_socket(f, 0, SOCK_STREAM);
  pass_env(1, (long)getpid(), "a:b");  /* two names for one fd */
  assert_int_equal(emd_notify_listen_fd(NULL), EMD_ECONFIG);
  assert_listen_env_unset();
  assert_int_equal(setenv("LISTEN_FDS", "three", 1), 0);
  setenv_long("LISTEN_PID", (long)getpid());
  assert_int_equal(emd_notify_listen_fd(NULL), EMD_ECONFIG);
  assert_listen_env_unset();
  restore_fds(f);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
  const struct CMUnitTest tests[] = {
    T(ready_sends_ready_with_the_status),
    T(status_and_stopping_reach_the_notify_socket),
    T(an_unchanged_status_is_not_sent_again),
    T(a_status_cannot_smuggle_in_other_assignments),
    T(a_long_status_is_cut_between_characters),
    T(watchdog_pings_from_the_loop_at_half_the_interval),
    T(watchdog_stays_off_when_meant_for_another_pid),
    T(nothing_is_sent_outside_systemd),
    T(close_frees_in_the_close_callback),
    T(listen_fd_returns_the_passed_unix_listener),
    T(listen_fd_ignores_fds_meant_for_another_pid),
    T(listen_fd_is_minus_one_when_nothing_was_passed),
    T(listen_fd_prefers_the_socket_named_emitd_sock),
    T(listen_fd_takes_the_name_asked_for),
    T(listen_fd_skips_what_is_not_a_stream_listener),
    T(listen_fd_refuses_passed_fds_it_cannot_use),
    T(listen_fd_refuses_malformed_variables),
  };
#undef T

  return cmocka_run_group_tests(tests, NULL, NULL);
}
