"""Operating emitd (SPEC 6): the control socket and emitctl against the
real daemon and the real test upstream."""
import json
import os
import signal
import socket
import subprocess
import time

from prometheus_client.parser import text_string_to_metric_families

from conftest import (EMITCTL, SMALLEST, Upstream, control, event, line,
                      wait_for)

FAST = {"retry_initial": "50ms", "retry_max": "300ms",
        "auth_retry_max": "300ms", "batch_linger": "20ms"}


def ctl(d, *args, input=None, timeout=30):
    e = {k: v for k, v in os.environ.items() if not k.startswith("EMITD_")}
    return subprocess.run([EMITCTL, "-c", d.config_path] + list(args),
                          capture_output=True, text=True, env=e,
                          input=input, timeout=timeout)


def raw(d, text):
    """Sends text to the control socket; returns everything it answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.control)
    s.sendall(text.encode())
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.decode()


def metrics(d):
    text = raw(d, "metrics\n")
    assert text.endswith("# EOF\n")
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "".join(
                "{%s=%s}" % kv for kv in sorted(s.labels.items()))
            out[key] = s.value
    return out


def down_upstream(make_emitd, **keys):
    conf = {"upstream": dict(FAST, endpoint="http://127.0.0.1:9", **keys)}
    return make_emitd(conf=conf)


def test_control_socket_is_0600_and_answers_each_command(make_emitd):
    d = down_upstream(make_emitd)
    assert os.stat(d.control).st_mode & 0o777 == 0o600
    rs = d.send([line(event(id="controlcase%03d" % i)) for i in range(3)])
    assert all(r["ok"] for r in rs)
    st = control(d, "status")
    assert st["ok"] and st["version"]
    assert st["upstream"]["endpoint"] == "http://127.0.0.1:9"
    assert st["spool"]["pending"] == 3 and st["spool"]["dead"] == 0
    p = control(d, "pending 2")
    assert [x["id"] for x in p["pending"]] == ["controlcase000",
                                               "controlcase001"]
    assert p["total"] == 3
    assert control(d, "dead list") == {"ok": True, "dead": [], "total": 0}
    assert control(d, "reload")["ok"]
    bad = control(d, "stauts")
    assert bad["ok"] is False and bad["error"] == "bad_command"
    assert "status" in bad["message"]
    fl = control(d, "flush 300ms")
    assert fl["ok"] is False and fl["error"] == "timeout"
    assert fl["pending"] == 3


def test_commands_pipelined_on_one_connection(make_emitd):
    d = down_upstream(make_emitd)
    out = raw(d, "status\nbogus\npending 1\n")
    lines = out.splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0])["ok"] is True
    assert json.loads(lines[1])["error"] == "bad_command"
    assert "pending" in json.loads(lines[2])


def test_dead_letters_list_retry_and_purge(make_emitd, upstream):
    d = make_emitd(conf={"upstream": dict(FAST, endpoint=upstream.url)})
    upstream.control("reject", {"ids": ["deadcase00001", "deadcase00002"]})
    rs = d.send([line(event(id="deadcase%05d" % i)) for i in range(4)])
    assert all(r["ok"] for r in rs)
    wait_for(lambda: control(d, "status")["spool"]["dead"] == 2, 10,
             "two dead letters")
    r = ctl(d, "dead", "list")
    assert r.returncode == 0
    assert "deadcase00001" in r.stdout and "rejected" in r.stdout
    dl = control(d, "dead list")["dead"]
    assert {x["id"] for x in dl} == {"deadcase00001", "deadcase00002"}
    assert all(x["reason"] == "rejected" for x in dl)
    # The service changes its mind: retry one by id, it is delivered.
    upstream.control("reset", {})
    r = ctl(d, "dead", "retry", "deadcase00001")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "deadcase00001" in upstream.ids(), 10, "retried event")
    assert control(d, "status")["spool"]["dead"] == 1
    r = ctl(d, "dead", "retry", "nosuchdeadletter")
    assert r.returncode == 1
    r = ctl(d, "dead", "purge")
    assert r.returncode == 0
    assert control(d, "status")["spool"]["dead"] == 0


def test_emitctl_status_after_401_and_after_the_key_is_fixed(make_emitd,
                                                             tmpdir_short):
    u = Upstream(tmpdir_short, ["--key", "right-key"]).start()
    keyfile = os.path.join(tmpdir_short, "key")
    with open(keyfile, "w") as f:
        f.write("wrong-key")
    try:
        d = make_emitd(conf={"upstream": dict(FAST, endpoint=u.url,
                                              api_key_file=keyfile)})
        assert all(r["ok"] for r in d.send([SMALLEST] * 7))
        wait_for(lambda: "unauthorized" in ctl(d, "status").stdout, 10,
                 "unauthorized in emitctl status")
        out = ctl(d, "status").stdout
        assert "7" in out and "pending" in out.lower()
        assert "401" in out
        with open(keyfile, "w") as f:
            f.write("right-key\n")
        wait_for(lambda: u.stats()["events"] == 7, 10, "drained")
        # The upstream counts a batch before emitd has its reply and has
        # deleted the batch from the spool: wait for the delete too.
        wait_for(lambda: control(d, "status")["spool"]["pending"] == 0, 10,
                 "delivered batch deleted")
        js = json.loads(ctl(d, "status", "--json").stdout)
        assert js["upstream"]["state"] == "ok"
        assert js["spool"]["pending"] == 0 and js["sent"] == 7
        out = ctl(d, "status").stdout
        assert "wrong-key" not in out and "right-key" not in out
    finally:
        u.stop()


def test_emitctl_flush_empties_the_spool_or_times_out(make_emitd, upstream):
    d = make_emitd(conf={"upstream": dict(FAST, endpoint=upstream.url,
                                          batch_linger="10s")})
    assert all(r["ok"] for r in d.send([SMALLEST] * 5))
    r = ctl(d, "flush", "--timeout", "10s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert upstream.stats()["events"] == 5
    upstream.control("script", [{"status": 503, "repeat": 10000}])
    assert all(r["ok"] for r in d.send([SMALLEST] * 2))
    r = ctl(d, "flush", "--timeout", "500ms")
    assert r.returncode != 0
    assert "2" in r.stdout + r.stderr


def test_emitctl_reports_emitd_down(tmpdir_short):
    conf = os.path.join(tmpdir_short, "c.conf")
    with open(conf, "w") as f:
        f.write("[agent]\nsocket = %s/nope.sock\ncontrol_socket = %s/no.sock\n"
                % (tmpdir_short, tmpdir_short))
    for args in (["status"], ["flush"], ["metrics"], ["pending"],
                 ["dead", "list"], ["reload"]):
        r = subprocess.run([EMITCTL, "-c", conf] + args, capture_output=True,
                           text=True, timeout=10)
        assert r.returncode == 2, args
        assert "no.sock" in r.stderr


def test_metrics_parse_and_count_what_was_sent(make_emitd, upstream):
    d = make_emitd(conf={"upstream": dict(FAST, endpoint=upstream.url)})
    rs = d.send([line(event(id="metricscase%03d" % i)) for i in range(10)] +
                ["{bad", line(event(id="metricscase000"))])
    assert sum(1 for r in rs if r["ok"]) == 11
    wait_for(lambda: upstream.stats()["events"] == 10, 10, "delivered")
    wait_for(lambda: metrics(d).get("emitd_events_sent_total") == 10 and
             metrics(d).get("emitd_spool_pending_events") == 0, 5,
             "sent and deleted")
    m = metrics(d)
    assert m["emitd_events_received_total"] == 12
    assert m["emitd_events_accepted_total"] == 10
    assert m["emitd_events_duplicate_total"] == 1
    assert m["emitd_events_rejected_total{reason=bad_json}"] == 1
    assert m["emitd_spool_pending_events"] == 0
    assert m["emitd_upstream_requests_total{class=2xx}"] >= 1
    assert m["emitd_upstream_state{state=ok}"] == 1
    assert m["emitd_batch_size_events_count"] >= 1
    assert m["emitd_batch_size_events_sum"] == 10
    assert m["emitd_ack_latency_seconds_count"] == 12
    assert m["emitd_ack_latency_seconds_bucket{le=+Inf}"] == 12
    assert 0 < m["emitd_ack_latency_seconds_sum"] < 12
    r = ctl(d, "metrics")
    assert r.returncode == 0 and "emitd_events_sent_total 10" in r.stdout


def test_reload_changes_log_level_and_batch_size_live(make_emitd, upstream):
    d = make_emitd(conf={"agent": {"log_level": "info"},
                         "upstream": dict(FAST, endpoint=upstream.url,
                                          batch_max_events=500,
                                          batch_linger="300ms")})
    c = d.client()                     # a client stays connected throughout
    c.send_lines([SMALLEST] * 20)
    c.replies(20)
    wait_for(lambda: upstream.stats()["events"] == 20, 10, "first 20")
    assert max(r["events"] for r in upstream.requests()) == 20
    assert "debug" not in d.read_log()
    d.conf["agent"]["log_level"] = "debug"
    d.conf["upstream"]["batch_max_events"] = 5
    d.write_config()
    r = ctl(d, "reload")
    assert r.returncode == 0, r.stderr
    assert "batch_max_events 5" in d.read_log()
    c.send_lines([SMALLEST] * 20)
    assert all(x["ok"] for x in c.replies(20))
    wait_for(lambda: upstream.stats()["events"] == 40, 10, "next 20")
    later = upstream.requests()[-4:]
    assert all(r["events"] <= 5 for r in later)
    assert d.send([SMALLEST])[0]["ok"]     # a new client: a debug line
    wait_for(lambda: " debug " in d.read_log(), 5, "debug lines")
    # A broken file: the old configuration stays, and the reply says why.
    with open(d.config_path, "a") as f:
        f.write("[spool]\nsycn = always\n")
    rep = control(d, "reload")
    assert rep["ok"] is False and "sycn" in rep["message"]
    c.send_lines([SMALLEST])
    assert c.read_line()["ok"]
    c.close()


def test_sighup_reloads_without_dropping_clients(make_emitd):
    d = down_upstream(make_emitd)
    c = d.client()
    c.send_lines([SMALLEST])
    assert c.read_line()["ok"]
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.read_log(), 5, "reload")
    c.send_lines([SMALLEST])
    assert c.read_line()["ok"]
    c.close()
