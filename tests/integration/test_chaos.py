"""Bad input, load and faults (SPEC 8, 9): kill -9 under load with a
flapping upstream, garbage on the socket, floods of connections, and the
API key kept out of every output. Real binaries, real sockets."""
import os
import random
import resource
import socket
import threading
import time

from conftest import (SMALLEST, Client, Upstream, control, event, line,
                      wait_for)

FAST = {"retry_initial": "20ms", "retry_max": "200ms",
        "auth_retry_max": "200ms", "batch_linger": "10ms",
        "batch_max_events": "100"}


def quick_reply(d, within=1.0):
    """A normal client gets its reply within a second. Connecting is
    tried again while the listen queue is full (EAGAIN: a flood that just
    stopped can leave it full for a moment), within the same second."""
    t0 = time.monotonic()
    while True:
        try:
            c = d.client()
            break
        except BlockingIOError:
            if time.monotonic() - t0 >= within:
                raise
            time.sleep(0.01)
    c.sock.settimeout(within + 1)
    c.send_lines([SMALLEST])
    r = c.read_line()
    c.close()
    took = time.monotonic() - t0
    assert r["ok"] is True
    assert took < within, "reply took %.3f s" % took


def test_kill9_repeatedly_under_load_with_a_flapping_upstream(make_emitd,
                                                              upstream):
    d = make_emitd(conf={"upstream": dict(FAST, endpoint=upstream.url)})
    acked, sent = set(), set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(w):
        n = 0
        while not stop.is_set():
            try:
                c = d.client()
                while not stop.is_set():
                    ids = ["chaos%dw%09d" % (w, n + i) for i in range(20)]
                    n += 20
                    with lock:
                        sent.update(ids)
                    c.send_lines([line(event(id=i)) for i in ids])
                    for _ in ids:
                        r = c.read_line()
                        if r.get("ok"):
                            with lock:
                                acked.add(r["id"])
            except (OSError, EOFError, ValueError):
                time.sleep(0.05)

    def flap():
        rnd = random.Random(7)
        steps = [{"status": 500}, {"status": 503, "retry_after": "0"},
                 {"cut": True}, {"cut": True, "accept": False},
                 {"garbled": True}, {"status": 401}, {"status": 200},
                 {"delay_ms": 100}]
        while not stop.is_set():
            try:
                upstream.control("script", [rnd.choice(steps)
                                            for _ in range(3)])
            except Exception:
                pass
            time.sleep(0.15)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=flap))
    for t in threads:
        t.start()
    rnd = random.Random(11)
    kills = 0
    try:
        for _ in range(5):
            time.sleep(rnd.uniform(0.3, 1.0))
            d.kill9()
            kills += 1
            d.start()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    upstream.control("script", [])
    wait_for(lambda: acked <= set(upstream.ids()), 60,
             "every acknowledged id upstream")
    got = upstream.ids()
    unique = set(got)
    assert acked <= unique, "%d acknowledged ids never arrived" % len(
        acked - unique)
    assert unique <= sent, "ids upstream that no client sent"
    print("chaos: %d kills, %d sent, %d acknowledged, %d delivered, "
          "%d repeats (same id)" % (kills, len(sent), len(acked),
                                    len(unique), len(got) - len(unique)))
    assert len(acked) > 500


def test_random_bytes_nested_json_and_a_50mb_line(make_emitd):
    d = make_emitd()
    rnd = random.Random(3)
    g = d.client()
    g.send(bytes(rnd.getrandbits(8) for _ in range(200000)).replace(
        b"\x00", b"\x01"))
    g.send(b"\n" + b"[" * 200000 + b"\n")
    g.send(b'{"a":' * 50000 + b"\n")
    quick_reply(d)
    big = d.client()
    chunk = b"x" * (1 << 20)
    for _ in range(50):
        big.send(chunk)
    big.send(b"\n" + SMALLEST.encode() + b"\n")
    r1 = big.read_line()
    r2 = big.read_line()
    assert r1["error"] == "too_large" and r2["ok"] is True
    quick_reply(d)
    g.close()
    big.close()
    rss = int(open("/proc/%d/status" % d.proc.pid).read()
              .split("VmRSS:")[1].split()[0])
    assert rss < 150 * 1024, "emitd holds %d KiB after the garbage" % rss


def test_a_thousand_connections_at_once(make_emitd):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)),
                                                hard))
    d = make_emitd()
    conns = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.socket)
            conns.append(s)
        time.sleep(0.3)
        quick_reply(d)
        for s in conns[:100]:
            s.sendall((SMALLEST + "\n").encode())
        for s in conns[:100]:
            s.settimeout(5)
            assert b'"ok":true' in s.recv(4096)
        st = control(d, "status")
        assert st["ok"]
    finally:
        for s in conns:
            s.close()
    quick_reply(d)


def test_over_max_clients_floods_do_not_starve_a_normal_client(make_emitd):
    d = make_emitd(conf={"ingest": {"max_clients": 50}})
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(d.socket)
                s.close()
            except OSError:
                pass

    ts = [threading.Thread(target=flood) for _ in range(2)]
    for t in ts:
        t.start()
    try:
        time.sleep(0.3)
        for _ in range(5):
            wait_for(lambda: _try_reply(d), 10, "a reply during the flood")
    finally:
        stop.set()
        for t in ts:
            t.join()
    quick_reply(d)


def _try_reply(d):
    try:
        c = d.client()
        c.send_lines([SMALLEST])
        r = c.read_line()
        c.close()
        return r.get("ok") is True
    except (OSError, EOFError):
        return False


def test_spool_full_in_block_mode_pauses_reading_then_resumes(make_emitd,
                                                              upstream):
    upstream.control("script", [{"status": 503, "repeat": 1000}])
    d = make_emitd(conf={"spool": {"max_bytes": "8KiB", "on_full": "block"},
                         "upstream": dict(FAST, endpoint=upstream.url)})
    c = d.client()
    # Several loop turns' worth (a turn reads up to ~2 MiB from a client):
    # block mode acts between them.
    n = 20000
    ids = ["blockcase%05d" % i for i in range(n)]
    data = "".join(line(event(id=i, user="u" * 60)) + "\n" for i in ids)

    def send_all(buf):
        # The socket has a timeout (non-blocking underneath) for the
        # reader; this writer waits for room itself, for as long as emitd
        # is not reading.
        import select
        view = memoryview(buf)
        while view:
            select.select([], [c.sock], [], 30)
            try:
                view = view[c.sock.send(view):]
            except (BlockingIOError, socket.timeout):
                pass

    sender = threading.Thread(target=send_all, args=(data.encode(),))
    sender.start()
    got = []
    c.sock.settimeout(1.0)
    try:
        while len(got) < n:
            got.append(c.read_line())
    except (socket.timeout, TimeoutError):
        pass
    assert 0 < len(got) < n, "block mode should hold some lines back"
    assert all(r["ok"] for r in got)
    upstream.control("script", [])          # the service comes back
    c.sock.settimeout(20)
    while len(got) < n:
        got.append(c.read_line())
    sender.join()
    assert all(r["ok"] for r in got)
    assert [r["id"] for r in got] == ids
    wait_for(lambda: set(ids) <= set(upstream.ids()), 30, "all delivered")


def test_the_api_key_never_shows(make_emitd, tmpdir_short):
    key = "SeCrEt-KeY-0123456789"
    u = Upstream(tmpdir_short, ["--forbid", key]).start()
    try:
        d = make_emitd(conf={"upstream": dict(FAST, endpoint=u.url,
                                              api_key=key),
                             "agent": {"log_level": "debug"}})
        rs = d.send([SMALLEST, "{bad", line(event(user=key * 10))])
        wait_for(lambda: control(d, "status")["upstream"]["state"] ==
                 "forbidden", 10, "forbidden")
        seen = [str(rs)]
        for cmd in ("status", "metrics", "pending 10", "dead list",
                    "bogus " + "x"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.control)
            s.sendall((cmd + "\n").encode())
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                buf += b
            seen.append(buf.decode())
        d.proc.send_signal(1)
        time.sleep(0.3)
        d.stop()
        seen.append(d.read_log())
        text = "\n".join(seen)
        assert "forbidden" in text
        assert key not in text
    finally:
        u.stop()
