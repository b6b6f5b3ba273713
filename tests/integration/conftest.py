"""Shared fixtures: start the real emitd (and the project's test upstream)
in a temporary directory and talk to them over their real sockets."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

BUILD = os.environ.get("EMD_BUILD_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build")
SOURCE = os.environ.get("EMD_SOURCE_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..")
EMITD = os.path.join(BUILD, "agent", "emitd")
EMITCTL = os.path.join(BUILD, "agent", "emitctl")
SPOOL_DUMP = os.path.join(BUILD, "tests", "tools", "emd-spool-dump")
UPSTREAM = os.path.join(BUILD, "tests", "upstream", "emd-upstream")
# EMD_VALGRIND=1 runs emitd under valgrind: any error or definite leak
# makes it exit 99, which stop() reports.
VALGRIND = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
            "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite"]
WRAP = VALGRIND if os.environ.get("EMD_VALGRIND") == "1" else []

SMALLEST = ('{"context":[{"type":"type.googleapis.com/buildless.context.Build",'
            '"event":"started"}]}')


def event(**fields):
    """A valid bare event as a dict, with fields merged in."""
    ev = {"context": [{"type": "type.googleapis.com/buildless.context.Build",
                       "event": "started"}]}
    ev.update(fields)
    return ev


def line(obj):
    return json.dumps(obj, separators=(",", ":"))


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


class Client:
    """One connection to the event socket."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_lines(self, lines):
        self.send("".join(l + "\n" for l in lines))

    def shut_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def read_line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("emitd closed the connection; buffered: %r"
                               % self.buf[:200])
            self.buf += chunk
        l, self.buf = self.buf.split(b"\n", 1)
        return json.loads(l)

    def replies(self, n):
        return [self.read_line() for _ in range(n)]

    def read_all(self):
        """Reads until EOF; returns every reply line."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        out = [json.loads(l) for l in self.buf.split(b"\n") if l.strip()]
        self.buf = b""
        return out

    def close(self):
        self.sock.close()


class Emitd:
    """A running emitd with its own config, spool and sockets."""

    def __init__(self, tmp, conf=None, env=None):
        self.tmp = tmp
        self.socket = os.path.join(tmp, "emitd.sock")
        self.control = os.path.join(tmp, "control.sock")
        self.spool = os.path.join(tmp, "spool")
        self.log_path = os.path.join(tmp, "emitd.log")
        self.conf = {
            "agent": {"socket": self.socket, "control_socket": self.control,
                      "log_level": "debug", "shutdown_grace": "3s"},
            "spool": {"dir": self.spool},
            # Nothing listens here unless a test starts an upstream.
            "upstream": {"endpoint": "http://127.0.0.1:9",
                         "retry_initial": "50ms", "retry_max": "200ms"},
        }
        for section, keys in (conf or {}).items():
            self.conf.setdefault(section, {}).update(keys)
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("EMITD_"):
                del self.env[k]
        self.env.update(env or {})
        self.proc = None
        self.config_path = os.path.join(tmp, "agent.conf")

    def write_config(self):
        with open(self.config_path, "w") as f:
            for section, keys in self.conf.items():
                f.write("[%s]\n" % section)
                for k, v in keys.items():
                    f.write("%s = %s\n" % (k, v))

    def start(self, wait=True):
        self.write_config()
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(WRAP + [EMITD, "--config",
                                             self.config_path],
                                     stdout=self.log, stderr=self.log,
                                     env=self.env)
        if wait:
            wait_for(self.connectable, 60 if WRAP else 10,
                     "emitd to listen (log: %s)" % self.log_path)
        return self

    def connectable(self):
        if self.proc.poll() is not None:
            raise AssertionError("emitd exited with %s:\n%s"
                                 % (self.proc.returncode, self.read_log()))
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.socket)
            s.close()
            return True
        except OSError:
            return False

    def client(self):
        return Client(self.socket)

    def send(self, lines):
        """Sends lines on a fresh connection, half-closes, returns replies."""
        c = self.client()
        c.send_lines(lines)
        c.shut_write()
        out = c.read_all()
        c.close()
        return out

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout * (6 if WRAP else 1))
        self.proc = None
        self.log.close()
        if WRAP and sig != signal.SIGKILL:
            assert rc == 0, "valgrind found errors or leaks:\n" + \
                self.read_log()[-8000:]
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def dump(self):
        """The pending events in the spool (emitd must be stopped)."""
        out = subprocess.run([SPOOL_DUMP, self.spool], capture_output=True,
                             check=True, timeout=60)
        rows = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
        stats = rows.pop()["stats"]
        return rows, stats


@pytest.fixture
def tmpdir_short():
    # Unix socket paths are limited to 108 bytes: keep the folder short.
    d = tempfile.mkdtemp(prefix="emd-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_emitd(tmpdir_short):
    started = []

    def make(conf=None, env=None, start=True, sub=None):
        tmp = tmpdir_short if sub is None else os.path.join(tmpdir_short, sub)
        os.makedirs(tmp, exist_ok=True)
        d = Emitd(tmp, conf, env)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        if d.proc is not None:
            if WRAP:
                d.stop()           # valgrind's verdict comes at exit
            else:
                d.proc.kill()
                d.proc.wait()


class Upstream:
    """The project's test upstream (emd-upstream) on a free port."""

    def __init__(self, tmp, args=(), cafile=None):
        self.tmp = tmp
        self.cafile = cafile       # set when it serves HTTPS
        self.port_file = os.path.join(tmp, "upstream.port")
        self.log_path = os.path.join(tmp, "upstream.log")
        self.args = list(args)
        self.proc = None

    def start(self):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [UPSTREAM, "--listen", "127.0.0.1:0", "--port-file",
             self.port_file, "--quiet"] + self.args,
            stdout=self.log, stderr=self.log)
        wait_for(lambda: os.path.exists(self.port_file), 10,
                 "emd-upstream to listen")
        with open(self.port_file) as f:
            self.port = int(f.read().strip())
        self.url = "%s://127.0.0.1:%d" % (
            "https" if self.cafile else "http", self.port)
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            self.log.close()

    def _req(self, method, path, body=None):
        import http.client
        if self.cafile:
            import ssl
            ctx = ssl.create_default_context(cafile=self.cafile)
            c = http.client.HTTPSConnection("127.0.0.1", self.port,
                                             timeout=10, context=ctx)
        else:
            c = http.client.HTTPConnection("127.0.0.1", self.port,
                                           timeout=10)
        data = None if body is None else json.dumps(body)
        c.request(method, path, body=data,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.read().decode()
        c.close()
        return r.status, out

    def control(self, what, body):
        status, out = self._req("POST", "/_test/" + what, body)
        assert status == 200, out
        return json.loads(out)

    def stats(self):
        return json.loads(self._req("GET", "/_test/stats")[1])

    def events(self):
        out = self._req("GET", "/_test/events")[1]
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    def requests(self):
        out = self._req("GET", "/_test/requests")[1]
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    def ids(self):
        return [e["event"]["event"]["id"] for e in self.events()]


@pytest.fixture
def upstream(tmpdir_short):
    u = Upstream(tmpdir_short).start()
    yield u
    u.stop()


def control(d, command, timeout=30):
    """One command on emitd's control socket; the parsed JSON reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(d.control)
    s.sendall((command + "\n").encode())
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf.split(b"\n", 1)[0])
