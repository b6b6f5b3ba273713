"""emitctl against a fake control socket: a Unix socket server in a thread
that answers canned replies in the shapes of SPEC 6, so the client's
rendering, exit codes and messages are tested without a running emitd."""
import json
import os
import pty
import select
import socket
import subprocess
import threading
import time

import pytest

from conftest import EMITCTL

STATUS = {
    "ok": True, "version": "0.1.0", "uptime_s": 3 * 3600 + 12 * 60 + 5,
    "upstream": {"endpoint": "https://rpc.less.build", "state": "unauthorized",
                 "last_status": 401, "last_reply_age_s": 42},
    "spool": {"pending": 1234, "pending_bytes": 1258291,
              "oldest_age_s": 185, "dead": 3},
    "sent": 45678,
    "dead_by_reason": {"rejected": 2, "status": 1, "expired": 0},
    "ingest": {"clients": 2, "received": 50000, "accepted": 46912,
               "duplicates": 3, "rejected": 7},
}


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


class FakeControl:
    """A control socket that answers each command line with what
    reply(cmd) returns: a string (one reply; "\\n" added if missing), a
    (delay_s, string) pair, or None to hang up."""

    def __init__(self, path, reply):
        self.path = path
        self.reply = reply
        self.commands = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        # Polls, so that close() can stop this thread before the socket
        # goes: a thread still inside accept() on a closed socket could
        # accept on its reused fd number, i.e. for the next test's server.
        while not self.stopping:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = line.decode()
                    with self.lock:
                        self.commands.append(cmd)
                    out = self.reply(cmd)
                    if out is None:
                        return
                    if isinstance(out, tuple):
                        time.sleep(out[0])
                        out = out[1]
                    if not out.endswith("\n"):
                        out += "\n"
                    try:
                        conn.sendall(out.encode())
                    except OSError:
                        return

    def seen(self):
        with self.lock:
            return list(self.commands)

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def fake(tmpdir_short):
    servers = []

    def make(reply):
        path = os.path.join(tmpdir_short, "control%d.sock" % len(servers))
        srv = FakeControl(path, reply)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.close()


def run(*args, env=None, timeout=30, stdin=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("EMITD_")}
    # No configuration file: only -s or the environment name a socket.
    e.update(env or {})
    return subprocess.run([EMITCTL] + list(args), capture_output=True,
                          text=True, timeout=timeout, env=e,
                          input=stdin)


def canned(table):
    def reply(cmd):
        return table.get(cmd, dumps({"ok": False, "error": "bad_command",
                                     "message": "unexpected %r" % cmd}))
    return reply


def test_status_shows_a_readable_summary(fake):
    srv = fake(canned({"status": dumps(STATUS)}))
    r = run("-s", srv.path, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert srv.seen() == ["status"]
    assert "emitd 0.1.0, up 3h 12m" in out
    assert "https://rpc.less.build" in out
    assert "unauthorized, last reply HTTP 401, 42s ago" in out
    assert "emitctl reload" in out            # what to do about it
    assert "1,234 events (1.2 MiB), oldest 3m 5s ago" in out
    assert "45,678 events" in out
    assert "3 kept" in out
    assert "rejected 2, status 1" in out
    assert "expired" not in out               # zero counts are left out
    assert "2 connected" in out
    assert "rebuilding" not in out
    assert r.stderr == ""


def test_status_says_when_the_id_table_is_rebuilt(fake):
    st = json.loads(dumps(STATUS))
    st["spool"]["ids_rebuilding"] = True
    srv = fake(canned({"status": dumps(st)}))
    r = run("-s", srv.path, "status")
    assert r.returncode == 0, r.stderr
    assert "rebuilding the id table" in r.stdout
    assert "may be stored twice" in r.stdout


def test_status_of_a_healthy_empty_agent(fake):
    st = dict(STATUS)
    st["upstream"] = {"endpoint": "http://127.0.0.1:8787", "state": "ok",
                      "last_status": 200, "last_reply_age_s": 0}
    st["spool"] = {"pending": 0, "pending_bytes": 0, "oldest_age_s": 0,
                   "dead": 0}
    st["dead_by_reason"] = {}
    srv = fake(canned({"status": dumps(st)}))
    r = run("-s", srv.path, "status")
    assert r.returncode == 0, r.stderr
    assert "ok, last reply HTTP 200, 0s ago" in r.stdout
    assert "none: the spool is empty" in r.stdout
    assert "dead      none" in r.stdout
    assert "hint" not in r.stdout and "reload" not in r.stdout


def test_status_before_any_reply_and_after_a_failed_connection(fake):
    st = json.loads(dumps(STATUS))
    st["upstream"].update(state="backoff", last_status=0,
                          last_reply_age_s=None)
    srv = fake(canned({"status": dumps(st)}))
    r = run("-s", srv.path, "status")
    assert "backoff, no reply yet" in r.stdout
    st["upstream"]["last_reply_age_s"] = 7200
    srv2 = fake(canned({"status": dumps(st)}))
    r = run("-s", srv2.path, "status")
    assert "no answer 2h ago (connection failed or timed out)" in r.stdout


def test_status_json_prints_the_reply_as_it_came(fake):
    line = dumps(STATUS)
    srv = fake(canned({"status": line}))
    r = run("-s", srv.path, "status", "--json")
    assert r.returncode == 0
    assert r.stdout == line + "\n"


def test_status_copes_with_missing_and_odd_fields(fake):
    srv = fake(canned({"status": dumps({"ok": True, "upstream": "?",
                                        "spool": {"pending": "many"}})}))
    r = run("-s", srv.path, "status")
    assert r.returncode == 0, r.stderr
    assert "emitd ?" in r.stdout
    assert "none: the spool is empty" in r.stdout


def test_control_socket_comes_from_the_environment(fake):
    srv = fake(canned({"status": dumps(STATUS)}))
    r = run("status", env={"EMITD_AGENT_CONTROL_SOCKET": srv.path})
    assert r.returncode == 0, r.stderr
    assert srv.seen() == ["status"]


def test_control_socket_comes_from_the_config_file(fake, tmpdir_short):
    srv = fake(canned({"status": dumps(STATUS)}))
    conf = os.path.join(tmpdir_short, "agent.conf")
    with open(conf, "w") as f:
        f.write("[agent]\ncontrol_socket = %s\n" % srv.path)
    r = run("-c", conf, "status")
    assert r.returncode == 0, r.stderr
    assert srv.seen() == ["status"]


def test_unreachable_socket_exits_2_naming_the_path(tmpdir_short):
    path = os.path.join(tmpdir_short, "nobody-here.sock")
    for cmd in (["status"], ["flush"], ["metrics"], ["reload"],
                ["dead", "list"], ["pending"]):
        r = run("-s", path, *cmd)
        assert r.returncode == 2, cmd
        assert path in r.stderr
        assert "is emitd running?" in r.stderr
        assert r.stdout == ""


def test_a_socket_that_never_answers_exits_2(fake):
    srv = fake(lambda cmd: None)          # hangs up at once
    r = run("-s", srv.path, "status")
    assert r.returncode == 2
    assert "closed the connection without an answer" in r.stderr


def test_error_reply_exits_1_with_its_message(fake):
    srv = fake(canned({"dead retry 99": dumps({
        "ok": False, "error": "not_found",
        "message": "no dead letter with seq 99"})}))
    r = run("-s", srv.path, "dead", "retry", "99")
    assert r.returncode == 1
    assert "no dead letter with seq 99 [not_found]" in r.stderr


def test_flush_sends_the_timeout_and_reports_success(fake):
    srv = fake(canned({
        "status": dumps(STATUS),
        "flush 45000ms": dumps({"ok": True, "pending": 0, "flushed": 1234})}))
    r = run("-s", srv.path, "flush", "--timeout", "45s")
    assert r.returncode == 0, r.stderr
    assert "flush 45000ms" in srv.seen()
    assert "flushed 1,234 events" in r.stdout
    assert "the spool is empty" in r.stdout
    # Not a terminal: plain lines, no bar.
    assert "\r" not in r.stderr and "[" not in r.stderr


def test_flush_default_timeout_is_30s(fake):
    srv = fake(canned({
        "status": dumps(STATUS),
        "flush 30000ms": dumps({"ok": True, "pending": 0, "flushed": 0})}))
    r = run("-s", srv.path, "flush")
    assert r.returncode == 0, r.stderr
    assert "flush 30000ms" in srv.seen()


def test_flush_that_times_out_exits_1_saying_what_is_left(fake):
    srv = fake(canned({
        "status": dumps(STATUS),
        "flush 1000ms": (1.0, dumps({
            "ok": False, "error": "timeout", "pending": 42, "flushed": 8,
            "message": "42 events still pending after 1s (upstream: "
                       "unauthorized)"}))}))
    r = run("-s", srv.path, "flush", "-t", "1s")
    assert r.returncode == 1
    assert "42 events still pending after 1s (upstream: unauthorized)" \
        in r.stderr
    assert "did not empty in time" in r.stderr
    assert "flushed" not in r.stdout


def test_flush_json_prints_the_reply(fake):
    line = dumps({"ok": False, "error": "timeout", "pending": 3,
                  "flushed": 0, "message": "3 events still pending"})
    srv = fake(canned({"status": dumps(STATUS), "flush 500ms": line}))
    r = run("-s", srv.path, "flush", "--timeout=500ms", "--json")
    assert r.returncode == 1
    assert r.stdout == line + "\n"


def test_flush_refuses_a_bad_timeout_before_connecting(fake):
    srv = fake(canned({}))
    r = run("-s", srv.path, "flush", "--timeout", "soon")
    assert r.returncode == 2
    assert "bad --timeout \"soon\"" in r.stderr
    r = run("-s", srv.path, "flush", "--timeout")
    assert r.returncode == 2
    assert "needs a value" in r.stderr
    assert srv.seen() == []


def test_flush_on_a_terminal_draws_a_progress_bar(fake):
    left = [900, 600, 300, 100]

    def reply(cmd):
        if cmd == "status":
            st = json.loads(dumps(STATUS))
            st["spool"]["pending"] = left.pop(0) if len(left) > 1 else left[0]
            return dumps(st)
        if cmd == "flush 10000ms":
            return (1.5, dumps({"ok": True, "pending": 0, "flushed": 900}))
        return dumps({"ok": False, "error": "bad_command", "message": cmd})

    srv = fake(reply)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMITD_")}
    p = subprocess.Popen([EMITCTL, "-s", srv.path, "flush", "-t", "10s"],
                         stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(5)
    os.close(master)
    text = out.decode(errors="replace")
    assert p.returncode == 0, text
    assert "flushing [" in text
    assert "%" in text and "left" in text
    assert "\r" in text                       # redrawn in place
    assert "flushed 900 events" in text
    # Polled on a second connection while the flush was waiting.
    assert srv.seen().count("status") >= 3


def test_metrics_prints_prometheus_text_up_to_eof(fake):
    text = ("# HELP emitd_events_sent_total Sent.\n"
            "# TYPE emitd_events_sent_total counter\n"
            "emitd_events_sent_total 7\n# EOF\n")
    # The server keeps the connection open: emitctl must stop at # EOF.
    srv = fake(canned({"metrics": text}))
    r = run("-s", srv.path, "metrics", timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text


def test_metrics_error_reply_exits_1(fake):
    srv = fake(canned({"metrics": dumps({
        "ok": False, "error": "internal", "message": "out of memory"}) +
        "\n# EOF"}))
    r = run("-s", srv.path, "metrics")
    assert r.returncode == 1
    assert "out of memory" in r.stderr


def test_reload_reports_done(fake):
    srv = fake(canned({"reload": dumps({"ok": True})}))
    r = run("-s", srv.path, "reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "configuration reloaded\n"


def test_dead_list_is_a_table(fake):
    dead = {"ok": True, "total": 5, "dead": [
        {"id": "01JDABCDEFGHJKMNPQRSTVWXYZ", "seq": 17, "reason": "status",
         "status": 400, "excerpt": "bad request: field \"x\"\n\u001b[31m",
         "time": 1764300000000},
        {"id": "01JDABCDEFGHJKMNPQRSTVWXY2", "seq": 18,
         "reason": "rejected", "status": 200, "excerpt": "", "time": 0}]}
    srv = fake(canned({"dead list 100": dumps(dead),
                       "dead list 2": dumps(dead)}))
    r = run("-s", srv.path, "dead", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "ID", "REASON", "STATUS", "TIME",
                                "EXCERPT"]
    assert lines[1].split()[:4] == ["17", "01JDABCDEFGHJKMNPQRSTVWXYZ",
                                    "status", "400"]
    assert "bad request" in lines[1]
    assert "\x1b" not in r.stdout             # no terminal escapes pass
    assert lines[2].split()[:4] == ["18", "01JDABCDEFGHJKMNPQRSTVWXY2",
                                    "rejected", "200"]
    assert "2 shown of 5 dead letters" in r.stdout
    r = run("-s", srv.path, "dead", "list", "--limit", "2")
    assert srv.seen()[-1] == "dead list 2"


def test_dead_list_empty_says_so(fake):
    srv = fake(canned({"dead list 100": dumps({"ok": True, "dead": [],
                                               "total": 0})}))
    r = run("-s", srv.path, "dead", "list")
    assert r.stdout == "no dead letters\n"


def test_dead_retry_and_purge(fake):
    srv = fake(canned({
        "dead retry": dumps({"ok": True, "retried": 4}),
        "dead retry 01JDABCDEFGHJKMNPQRSTVWXYZ": dumps({"ok": True,
                                                       "retried": 1}),
        "dead purge": dumps({"ok": True, "purged": 2})}))
    r = run("-s", srv.path, "dead", "retry")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "4 dead letter(s) moved back to pending\n"
    r = run("-s", srv.path, "dead", "retry", "01JDABCDEFGHJKMNPQRSTVWXYZ")
    assert r.stdout == "1 dead letter(s) moved back to pending\n"
    r = run("-s", srv.path, "dead", "purge")
    assert r.stdout == "2 dead letter(s) deleted\n"
    assert srv.seen() == ["dead retry", "dead retry "
                          "01JDABCDEFGHJKMNPQRSTVWXYZ", "dead purge"]


def test_dead_retry_refuses_a_bad_id_before_connecting(fake):
    srv = fake(canned({}))
    r = run("-s", srv.path, "dead", "retry", "../etc")
    assert r.returncode == 2
    assert "bad target" in r.stderr
    r = run("-s", srv.path, "dead", "frob")
    assert r.returncode == 2
    assert "unknown subcommand \"frob\"" in r.stderr
    assert srv.seen() == []


def test_pending_is_a_table_with_ages(fake):
    now = int(time.time() * 1000)
    srv = fake(canned({"pending 20": dumps({"ok": True, "total": 1,
        "pending": [{"seq": 18, "id": "01JDABCDEFGHJKMNPQRSTVWXY0",
                     "collection": "builds", "accepted_ms": now - 65000,
                     "attempts": 3}]}),
        "pending 5": dumps({"ok": True, "pending": [], "total": 0})}))
    r = run("-s", srv.path, "pending")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "ID", "COLLECTION", "AGE",
                                "ATTEMPTS"]
    assert lines[1].split() == ["18", "01JDABCDEFGHJKMNPQRSTVWXY0",
                                "builds", "1m", "5s", "ago", "3"]
    r = run("-s", srv.path, "pending", "-n", "5")
    assert r.stdout == "no pending events: the spool is empty\n"
    r = run("-s", srv.path, "pending", "--limit", "0")
    assert r.returncode == 2
    assert "bad --limit" in r.stderr


def test_unknown_command_and_option_exit_2(fake):
    r = run("frobnicate")
    assert r.returncode == 2
    assert "unknown command \"frobnicate\"" in r.stderr
    srv = fake(canned({}))
    r = run("-s", srv.path, "status", "--limit", "3")
    assert r.returncode == 2
    assert "unknown option" in r.stderr
    r = run("-s", srv.path, "status", "extra")
    assert r.returncode == 2
    assert "unexpected argument \"extra\"" in r.stderr
    assert srv.seen() == []
    r = run()
    assert r.returncode == 2
    assert "Usage: emitctl" in r.stderr


@pytest.mark.parametrize("cmd", [["send"], ["status"], ["flush"],
                                 ["metrics"], ["reload"], ["dead"],
                                 ["dead", "list"], ["dead", "retry"],
                                 ["pending"]])
def test_every_command_has_help(cmd, tmpdir_short):
    path = os.path.join(tmpdir_short, "unused.sock")
    r = run("-s", path, *cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: emitctl " + cmd[0])
    assert r.stderr == ""


def test_top_level_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("send", "status", "flush", "metrics", "reload", "dead list",
                "dead retry", "dead purge", "pending"):
        assert "  " + cmd in r.stdout
