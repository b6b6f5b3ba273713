"""Forwarding end to end (SPEC 1, 3, 4): the real emitd sends its spool to
the real test upstream (emd-upstream), which can misbehave on cue."""
import base64
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import SMALLEST, control, event, line, wait_for

FAST = {"retry_initial": "50ms", "retry_max": "300ms",
        "auth_retry_max": "300ms", "batch_linger": "20ms"}


def fwd_conf(upstream, **upstream_keys):
    keys = dict(FAST, endpoint=upstream.url)
    keys.update(upstream_keys)
    return {"upstream": keys}


def delivered(upstream, n, timeout=15):
    wait_for(lambda: upstream.stats()["events"] >= n, timeout,
             "%d events upstream (have %d)" % (n, upstream.stats()["events"]))
    return upstream.events()


@pytest.mark.parametrize("mode,encoding,compression", [
    ("batch", "protobuf", "none"),
    ("batch", "protobuf", "gzip"),
    ("batch", "json", "zstd"),
    ("single", "protobuf", "zstd"),
    ("single", "json", "gzip"),
    ("batch", "json", "none"),
])
def test_events_arrive_enriched_in_every_mode(make_emitd, upstream, mode,
                                              encoding, compression):
    d = make_emitd(conf=fwd_conf(upstream, mode=mode, encoding=encoding,
                                 compression=compression))
    lines = [line({"collection": "builds", "scope": "ci-77",
                   "event": event(id="fwdmode%07d" % i)}) for i in range(20)]
    data = "".join(l + "\n" for l in lines)
    out = subprocess.run(["nc", "-U", "-N", d.socket], input=data.encode(),
                         capture_output=True, timeout=10)
    assert out.stdout.decode().count('"ok":true') == 20
    evs = delivered(upstream, 20)
    assert sorted(e["event"]["event"]["id"] for e in evs) == \
        ["fwdmode%07d" % i for i in range(20)]
    for e in evs:
        assert e["encoding"] == encoding
        assert e["content_encoding"] == compression
        ev = e["event"]
        assert ev["collection"] == "builds" and ev["scope"] == "ci-77"
        te = ev["event"]
        assert te["detail"]["client"]["agent"]["name"] == "emitd"
        assert te["detail"]["client"]["os"]["name"] == os.uname().sysname
        assert len(base64.b64decode(te["timer"])) == 16
        assert int(ev["index"]) == int(te["ordinal"])
    ordinals = sorted(int(e["event"]["event"]["ordinal"]) for e in evs)
    assert ordinals == list(range(1, 21))
    reqs = [r for r in upstream.requests() if r["status"] == 200]
    if mode == "single":
        assert all(r["path"].endswith("event:emit") for r in reqs)
        assert all(e["fin"] for e in evs)
    else:
        assert all(r["path"].endswith("event:stream") for r in reqs)
        # fin is true exactly on the last event of each request.
        by_req = {}
        for e in evs:
            by_req.setdefault(e["req"], []).append(e)
        for req_events in by_req.values():
            req_events.sort(key=lambda e: e["pos"])
            assert [e["fin"] for e in req_events] == \
                [False] * (len(req_events) - 1) + [True]


@pytest.mark.parametrize("auth", ["bearer", "x-api-key", "basic"])
def test_each_auth_style(make_emitd, tmpdir_short, auth):
    from conftest import Upstream
    u = Upstream(tmpdir_short, ["--key", "sekrit-key-1", "--auth-style",
                                auth]).start()
    try:
        d = make_emitd(conf=fwd_conf(u, auth=auth, api_key="sekrit-key-1"))
        assert d.send([SMALLEST])[0]["ok"]
        (e,) = delivered(u, 1)
        assert e["auth"] == auth
    finally:
        u.stop()


def key_file_case(make_emitd, tmpdir_short, status, state):
    from conftest import Upstream
    args = ["--key", "good-key"]
    if status == 403:
        args += ["--forbid", "bad-key"]
    u = Upstream(tmpdir_short, args).start()
    keyfile = os.path.join(tmpdir_short, "api_key")
    with open(keyfile, "w") as f:
        f.write("bad-key\n")
    try:
        d = make_emitd(conf=fwd_conf(u, api_key_file=keyfile))
        rs = d.send([line(event(id="authcase%06d" % i)) for i in range(30)])
        assert all(r["ok"] for r in rs)
        wait_for(lambda: control(d, "status")["upstream"]["state"] == state,
                 10, "state " + state)
        time.sleep(0.5)
        assert u.stats()["events"] == 0
        st = control(d, "status")
        assert st["spool"]["pending"] == 30 and st["spool"]["dead"] == 0
        assert st["upstream"]["last_status"] == status
        # Still accepting while paused.
        assert d.send([SMALLEST])[0]["ok"]
        # The right key, written in place: everything goes, no restart.
        t0 = time.monotonic()
        with open(keyfile, "w") as f:
            f.write("  good-key \n")
        delivered(u, 31, timeout=5)
        assert time.monotonic() - t0 < 5
        wait_for(lambda: control(d, "status")["upstream"]["state"] == "ok",
                 5, "state ok")
        assert control(d, "status")["spool"]["dead"] == 0
        log = d.read_log()
        assert "good-key" not in log and "bad-key" not in log
        assert "upstream %s" % state in log and "upstream ok" in log
    finally:
        u.stop()


def test_401_pauses_and_a_new_key_file_resumes(make_emitd, tmpdir_short):
    key_file_case(make_emitd, tmpdir_short, 401, "unauthorized")


def test_403_pauses_and_a_new_key_file_resumes(make_emitd, tmpdir_short):
    key_file_case(make_emitd, tmpdir_short, 403, "forbidden")


def test_404_is_misconfigured_and_never_dead_letters(make_emitd, upstream):
    d = make_emitd(conf=fwd_conf(upstream))
    upstream.control("script", [{"status": 404, "repeat": 1000}])
    assert d.send([SMALLEST])[0]["ok"]
    wait_for(lambda: control(d, "status")["upstream"]["state"] ==
             "misconfigured", 10, "misconfigured")
    assert control(d, "status")["spool"]["dead"] == 0
    upstream.control("script", [])
    d.proc.send_signal(signal.SIGHUP)       # resume at once
    delivered(upstream, 1, timeout=5)


def test_retries_through_errors_cuts_and_garbled_replies(make_emitd,
                                                         upstream):
    d = make_emitd(conf=fwd_conf(upstream, batch_max_events=10,
                                 max_inflight=1))
    upstream.control("script", [
        {"status": 503, "retry_after": "1"},
        {"status": 500},
        {"delay_ms": 300},
        {"cut": True, "accept": False},
        {"garbled": True},
        {"status": 502},
        {"cut": True},
    ])
    ids = ["retrycase%05d" % i for i in range(40)]
    assert all(r["ok"] for r in d.send([line(event(id=i)) for i in ids]))
    wait_for(lambda: set(upstream.ids()) >= set(ids), 30, "all 40 ids")
    wait_for(lambda: control(d, "status")["spool"]["pending"] == 0, 10,
             "spool empty")
    st = control(d, "status")
    assert st["spool"]["dead"] == 0
    reqs = upstream.requests()
    # After the 503 with Retry-After: 1, nothing was sent for a second.
    first = reqs[0]
    assert first["status"] == 503
    assert reqs[1]["t_ms"] - first["t_ms"] >= 950
    # After the plain 500, emitd backed off (retry_initial 50 ms, jittered
    # from 0), but not for longer than retry_max allows.
    gap = reqs[2]["t_ms"] - reqs[1]["t_ms"]
    assert gap <= 1000
    # Repeats happen only under the same id.
    assert set(upstream.ids()) == set(ids)


def test_one_poisoned_event_in_a_batch_of_500(make_emitd, upstream):
    d = make_emitd(conf=fwd_conf(upstream, batch_max_events=500,
                                 batch_linger="500ms"))
    ids = ["poisoncase%05d" % i for i in range(500)]
    upstream.control("poison", {"ids": [ids[137]]})
    c = d.client()
    c.send_lines([line(event(id=i)) for i in ids])
    assert all(r["ok"] for r in c.replies(500))
    c.close()
    wait_for(lambda: len(set(upstream.ids())) == 499, 20, "499 delivered")
    wait_for(lambda: control(d, "status")["spool"]["dead"] == 1, 10,
             "one dead letter")
    assert ids[137] not in upstream.ids()
    dead = control(d, "dead list")["dead"]
    assert [x["id"] for x in dead] == [ids[137]]
    assert dead[0]["status"] == 400
    assert "dead letter: event %s (seq %d)" % (ids[137], dead[0]["seq"]) \
        in d.read_log()
    wait_for(lambda: control(d, "status")["spool"]["pending"] == 0, 10,
             "every delivered batch deleted")


def test_kill9_with_batches_in_flight_loses_nothing(make_emitd, upstream):
    d = make_emitd(conf=fwd_conf(upstream, batch_max_events=50))
    upstream.control("script", [{"delay_ms": 200, "repeat": 30}])
    acked = []
    ids = ["killflight%06d" % i for i in range(3000)]
    for chunk in range(0, 3000, 500):
        rs = d.send([line(event(id=i)) for i in ids[chunk:chunk + 500]])
        acked += [r["id"] for r in rs if r["ok"]]
    time.sleep(0.3)          # requests are in flight, held by the delay
    d.kill9()
    d.start()
    wait_for(lambda: set(upstream.ids()) >= set(acked), 30,
             "every acknowledged id upstream")
    got = upstream.ids()
    assert set(got) == set(acked)      # repeats only under the same id


def test_sigterm_drains_a_backlog_within_the_grace(make_emitd, upstream):
    d = make_emitd(conf=dict(fwd_conf(upstream),
                             agent={"shutdown_grace": "5s"}))
    upstream.control("script", [{"status": 503, "repeat": 1000}])
    ids = ["draincase%06d" % i for i in range(200)]
    assert all(r["ok"] for r in d.send([line(event(id=i)) for i in ids]))
    upstream.control("script", [])
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 5.5
    assert set(upstream.ids()) == set(ids)
    rows, stats = d.dump()
    assert stats["pending"] == 0


def test_sigterm_with_the_upstream_down_exits_on_time_and_keeps_all(
        make_emitd, upstream):
    d = make_emitd(conf=dict(fwd_conf(upstream),
                             agent={"shutdown_grace": "1s"}))
    upstream.stop()
    ids = ["downcase%06d" % i for i in range(100)]
    assert all(r["ok"] for r in d.send([line(event(id=i)) for i in ids]))
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 2.5
    rows, stats = d.dump()
    assert sorted(r["event"]["event"]["id"] for r in rows) == ids


def test_tls_verification_is_on_and_ca_file_adds_a_ca(make_emitd,
                                                      tmpdir_short):
    from conftest import Upstream
    cert = os.path.join(tmpdir_short, "cert.pem")
    key = os.path.join(tmpdir_short, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    u = Upstream(tmpdir_short, ["--tls-cert", cert, "--tls-key", key],
                 cafile=cert).start()
    try:
        assert u.url.startswith("https://")
        # A self-signed upstream without ca_file: never trusted.
        d = make_emitd(conf=fwd_conf(u), sub="noca")
        assert d.send([line(event(id="tlsnotrusted01"))])[0]["ok"]
        wait_for(lambda: control(d, "status")["upstream"]["state"] ==
                 "backoff", 10, "backoff on the untrusted certificate")
        time.sleep(0.5)
        assert u.stats()["events"] == 0
        assert control(d, "status")["spool"]["pending"] == 1
        assert control(d, "status")["upstream"]["last_status"] == 0
        assert "certificate" in d.read_log().lower()
        d.stop()
        # The same upstream with its certificate as ca_file: delivered.
        d2 = make_emitd(conf=fwd_conf(u, ca_file=cert), sub="withca")
        assert d2.send([line(event(id="tlstrusted001"))])[0]["ok"]
        wait_for(lambda: "tlstrusted001" in u.ids(), 10, "delivered over TLS")
    finally:
        u.stop()
