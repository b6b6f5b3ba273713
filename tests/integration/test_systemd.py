"""Where users run emitd (SPEC 7): systemd's notify protocol and socket
activation against the real binary, and the CI sidecar's environment-only
configuration."""
import os
import socket
import subprocess
import time

from conftest import (EMITD, SMALLEST, Client, control, event, line,
                      wait_for)


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.s.settimeout(0.1)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.s.recv(4096).decode())
            except socket.timeout:
                return self.messages

    def seen(self, text):
        return any(text in m for m in self.drain())


def env_only(tmp, upstream_url="http://127.0.0.1:9", **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMITD_")}
    env.update({
        "EMITD_AGENT_SOCKET": os.path.join(tmp, "emitd.sock"),
        "EMITD_AGENT_CONTROL_SOCKET": os.path.join(tmp, "control.sock"),
        "EMITD_SPOOL_DIR": os.path.join(tmp, "spool"),
        "EMITD_UPSTREAM_ENDPOINT": upstream_url,
        "EMITD_UPSTREAM_RETRY_INITIAL": "50ms",
        "EMITD_UPSTREAM_RETRY_MAX": "200ms",
        "EMITD_UPSTREAM_BATCH_LINGER": "20ms",
    })
    env.update(extra)
    return env


def wait_up(p, path, tmp):
    """Waits until path accepts connections; fails with emitd's log."""
    def up():
        if p.poll() is not None:
            raise AssertionError("emitd exited %s: %s" % (
                p.returncode, open(os.path.join(tmp, "log")).read()))
        return connectable(path)
    wait_for(up, 10, "emitd to listen on " + path)


def connectable(path):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.close()
        return True
    except OSError:
        return False


def test_ready_after_the_socket_listens_and_watchdog_pings(tmpdir_short):
    n = NotifySocket(os.path.join(tmpdir_short, "notify"))
    env = env_only(tmpdir_short, NOTIFY_SOCKET=n.path,
                   WATCHDOG_USEC="200000")
    log = open(os.path.join(tmpdir_short, "log"), "wb")
    p = subprocess.Popen(["sh", "-c", 'WATCHDOG_PID=$$ exec "$0"', EMITD],
                         env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: n.seen("READY=1"), 10, "READY=1")
        # READY=1 came only once the socket was connectable.
        assert connectable(env["EMITD_AGENT_SOCKET"])
        ready = [m for m in n.messages if "READY=1" in m][0]
        assert "STATUS=pending 0" in ready
        n.messages.clear()
        time.sleep(0.6)
        pings = sum(m.count("WATCHDOG=1") for m in n.drain())
        assert pings >= 3
        p.terminate()
        assert p.wait(10) == 0
        assert n.seen("STOPPING=1")
    finally:
        if p.poll() is None:
            p.kill()


def test_serves_on_a_socket_passed_by_systemd(tmpdir_short):
    path = os.path.join(tmpdir_short, "activated.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(16)
    os.set_inheritable(ls.fileno(), True)
    # The configured path differs: emitd must not bind it.
    env = env_only(tmpdir_short, LISTEN_FDS="1",
                   LISTEN_FDNAMES="emitd.sock")
    log = open(os.path.join(tmpdir_short, "log"), "wb")
    fd = ls.fileno()
    p = subprocess.Popen(
        ["bash", "-c", 'exec 3<&%d; LISTEN_PID=$$ exec "$0"' % fd, EMITD],
        env=env, stdout=log, stderr=log, pass_fds=(fd,))
    try:
        wait_up(p, env["EMITD_AGENT_CONTROL_SOCKET"], tmpdir_short)
        c = Client(path)
        c.send_lines([SMALLEST])
        assert c.read_line()["ok"]
        c.close()
        assert not os.path.exists(env["EMITD_AGENT_SOCKET"])
        p.terminate()
        assert p.wait(10) == 0
        # The socket is systemd's: emitd leaves it in place.
        assert os.path.exists(path)
    finally:
        if p.poll() is None:
            p.kill()
        ls.close()


def test_environment_only_configuration_forwards(tmpdir_short, upstream):
    env = env_only(tmpdir_short, upstream.url)
    log = open(os.path.join(tmpdir_short, "log"), "wb")
    # No --config and (in a container) no /etc/emitd/agent.conf: the
    # environment alone. Point the default path away from the host's.
    p = subprocess.Popen([EMITD], env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: connectable(env["EMITD_AGENT_SOCKET"]), 10, "up")
        c = Client(env["EMITD_AGENT_SOCKET"])
        c.send_lines([line(event(id="envonlyevent01"))])
        assert c.read_line()["ok"]
        c.close()
        wait_for(lambda: "envonlyevent01" in upstream.ids(), 10,
                 "forwarded")
        p.terminate()
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_sigterm_with_a_backlog_exits_in_time_keeps_it_and_says_stopping(
        tmpdir_short):
    n = NotifySocket(os.path.join(tmpdir_short, "notify"))
    env = env_only(tmpdir_short, NOTIFY_SOCKET=n.path,
                   EMITD_AGENT_SHUTDOWN_GRACE="1s")
    log = open(os.path.join(tmpdir_short, "log"), "wb")
    p = subprocess.Popen([EMITD], env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: n.seen("READY=1"), 10, "READY=1")
        c = Client(env["EMITD_AGENT_SOCKET"])
        c.send_lines([line(event(id="backlog%07d" % i)) for i in range(300)])
        assert all(r["ok"] for r in c.replies(300))
        c.close()
        t0 = time.monotonic()
        p.terminate()
        assert p.wait(10) == 0
        assert time.monotonic() - t0 < 2.0
        assert n.seen("STOPPING=1")
    finally:
        if p.poll() is None:
            p.kill()
    # The backlog is intact for the next start.
    env2 = dict(env)
    del env2["NOTIFY_SOCKET"]
    p = subprocess.Popen([EMITD], env=env2, stdout=log, stderr=log)
    try:
        wait_for(lambda: connectable(env["EMITD_AGENT_SOCKET"]), 10, "up")

        class D:
            control = env["EMITD_AGENT_CONTROL_SOCKET"]
        assert control(D, "status")["spool"]["pending"] == 300
    finally:
        p.terminate()
        p.wait(10)


def dockerfile_env():
    """The ENV settings of the runtime image, read from the Dockerfile."""
    from conftest import SOURCE
    text = open(os.path.join(SOURCE, "Dockerfile")).read()
    block = text[text.index("\nENV ") + 5:].split("\n\n")[0].split("\nVOLUME")[0]
    env = {}
    for part in block.replace("\\\n", " ").split():
        k, v = part.split("=", 1)
        env[k] = v
    entry = text[text.index("ENTRYPOINT"):].split("\n")[0]
    health = text[text.index("HEALTHCHECK"):].split("CMD", 1)[1].split("\n")[0]
    return env, entry, health


def test_the_image_entry_command_runs_on_its_environment(tmpdir_short,
                                                         upstream):
    from conftest import EMITCTL
    env_img, entry, health = dockerfile_env()
    assert '"emitd"' in entry and '"emitctl", "status"' in health
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMITD_")}
    for k, v in env_img.items():      # the image's volumes, here in tmp
        env[k] = v.replace("/run/emitd", tmpdir_short + "/run").replace(
            "/var/lib/emitd", tmpdir_short + "/lib")
    os.makedirs(tmpdir_short + "/run")
    env["EMITD_UPSTREAM_ENDPOINT"] = upstream.url
    log = open(os.path.join(tmpdir_short, "log"), "wb")
    p = subprocess.Popen([EMITD], env=env, stdout=log, stderr=log)
    try:
        wait_up(p, env["EMITD_AGENT_SOCKET"], tmpdir_short)
        assert os.stat(env["EMITD_AGENT_SOCKET"]).st_mode & 0o777 == 0o666
        c = Client(env["EMITD_AGENT_SOCKET"])
        c.send_lines([line(event(id="imageentry0001"))])
        assert c.read_line()["ok"]
        c.close()
        wait_for(lambda: "imageentry0001" in upstream.ids(), 10, "forwarded")
        h = subprocess.run([EMITCTL, "status"], env=env, capture_output=True,
                           text=True, timeout=10)
        assert h.returncode == 0, h.stderr
        p.terminate()
        assert p.wait(10) == 0
        # JSON logs for the container runtime.
        first = open(os.path.join(tmpdir_short, "log")).readline()
        assert first.startswith("{") and '"level":"info"' in first
    finally:
        if p.poll() is None:
            p.kill()
