/* emitctl.c: the friendly client of emitd's sockets (SPEC 6). */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "emd_config.h"

extern char **environ;

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
    "  send [JSON ...]   send events (arguments, or lines of stdin) and print\n"
    "                    each reply; exit 1 if any was rejected, 2 if emitd\n"
    "                    cannot be reached\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  read socket paths from FILE (default "
    EMD_CONFIG_DEFAULT_PATH ")\n"
    "  -s, --socket PATH  the socket to use, overriding the configuration\n"
    "  -V, --version      print the version and exit\n"
    "  -h, --help         print this help; COMMAND --help for a command's\n"
    "\n"
    "Socket paths come from -s, else EMITD_AGENT_SOCKET /\n"
    "EMITD_AGENT_CONTROL_SOCKET, else the configuration file.\n");
}

static int load_cfg(struct ctl *ctl)
{
  char err[512];

  if (ctl->have_cfg)
    return 0;
  if (emd_config_load(&ctl->cfg, ctl->config_path, environ, err,
                      sizeof(err)) != 0) {
    fprintf(stderr, "emitctl: %s\n", err);
    return -1;
  }
  ctl->have_cfg = true;
  return 0;
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
              "group, agent.socket_mode)\n");
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
  path = ctl->socket_path;
  if (path == NULL) {
    if (load_cfg(ctl) != 0)
      return 2;
    path = ctl->cfg.agent.socket;
  }
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

int main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "config", required_argument, NULL, 'c' },
    { "socket", required_argument, NULL, 's' },
    { "version", no_argument, NULL, 'V' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct ctl ctl;
  int c, rc;

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
  if (strcmp(argv[0], "send") == 0) {
    rc = cmd_send(&ctl, argc, argv);
  } else {
    fprintf(stderr, "emitctl: unknown command \"%s\" (see emitctl --help)\n",
            argv[0]);
    rc = 2;
  }
  if (ctl.have_cfg)
    emd_config_free(&ctl.cfg);
  return rc;
}
