"""The event socket end to end: the real emitd, real Unix sockets, a real
LMDB spool (SPEC 2, 2.1, 3)."""
import base64
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import SMALLEST, event, line, wait_for

CTX = [{"type": "type.googleapis.com/buildless.context.Build",
        "event": "started"}]


def test_smallest_line_is_accepted_with_id_seq_timer_and_ordinal(make_emitd):
    d = make_emitd()
    (r,) = d.send([SMALLEST])
    assert r["ok"] is True
    assert len(r["id"]) == 26 and r["id"].isalnum()
    assert r["seq"] >= 1
    assert len(base64.b64decode(r["timer"])) == 16
    assert r["ordinal"] == 1


def test_each_error_code_names_the_line_and_the_problem(make_emitd):
    d = make_emitd(conf={"ingest": {"max_event_bytes": "1KiB"}})
    rs = d.send([
        SMALLEST,
        '{"context": [',                         # bad_json
        '[1,2,3]',                               # invalid: not an object
        line({"collection": "ab", "event": event()}),  # invalid: a rule
        line(event(id="x" * 2000)),              # too_large
        SMALLEST,
    ])
    assert [r["ok"] for r in rs] == [True, False, False, False, False, True]
    assert rs[1]["error"] == "bad_json" and rs[1]["line"] == 2
    assert rs[2]["error"] == "invalid" and rs[2]["line"] == 3
    assert rs[3]["error"] == "invalid" and rs[3]["line"] == 4
    assert "collection" in rs[3]["message"]
    assert "^[a-zA-Z]{3,32}$" in rs[3]["message"]
    assert rs[4]["error"] == "too_large" and rs[4]["line"] == 5
    assert rs[0]["ordinal"] == 1 and rs[5]["ordinal"] == 2


def test_bad_line_between_good_lines_affects_neither(make_emitd):
    d = make_emitd()
    rs = d.send([SMALLEST, "not json at all", SMALLEST])
    assert rs[0]["ok"] and rs[2]["ok"]
    assert rs[1] == {"ok": False, "line": 2, "error": "bad_json",
                     "message": rs[1]["message"]}
    assert rs[2]["seq"] == rs[0]["seq"] + 1


def test_blank_lines_get_no_reply_but_are_counted(make_emitd):
    d = make_emitd()
    rs = d.send(["", "   ", SMALLEST, "\t", "{"])
    assert len(rs) == 2
    assert rs[0]["ok"] is True
    assert rs[1]["line"] == 5


def test_crlf_and_a_last_line_without_newline(make_emitd):
    d = make_emitd()
    c = d.client()
    c.send(SMALLEST + "\r\n" + SMALLEST)      # no newline at the end
    c.shut_write()
    rs = c.read_all()
    assert [r["ok"] for r in rs] == [True, True]


def test_nc_half_close_gets_every_reply(make_emitd):
    d = make_emitd()
    data = (SMALLEST + "\n") * 3 + SMALLEST   # partial last line
    out = subprocess.run(["nc", "-U", "-N", d.socket], input=data.encode(),
                         capture_output=True, timeout=10)
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 4
    assert all('"ok":true' in l for l in lines)


def test_line_split_across_many_writes(make_emitd):
    d = make_emitd()
    c = d.client()
    payload = (SMALLEST + "\n").encode()
    for i in range(len(payload)):
        c.send(payload[i:i + 1])
        if i % 10 == 0:
            time.sleep(0.001)
    (r,) = c.replies(1)
    assert r["ok"] is True
    c.close()


def test_thousand_lines_in_one_write_reply_in_order(make_emitd):
    d = make_emitd()
    c = d.client()
    ids = ["evt%09d" % i for i in range(1000)]
    c.send("".join(line(event(id=i)) + "\n" for i in ids))
    rs = c.replies(1000)
    assert [r["id"] for r in rs] == ids
    assert [r["ordinal"] for r in rs] == list(range(1, 1001))
    seqs = [r["seq"] for r in rs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 1000
    c.close()


def test_envelope_sets_collection_scope_and_index(make_emitd):
    d = make_emitd()
    rs = d.send([line({"collection": "builds", "scope": "run42",
                       "event": event(id="envelopeid0001")}),
                 line({"collection": "builds", "scope": "run42", "index": 9,
                       "event": event(id="envelopeid0002")})])
    assert all(r["ok"] for r in rs)
    assert rs[0]["timer"] == rs[1]["timer"]
    assert [r["ordinal"] for r in rs] == [1, 2]
    d.stop()
    rows, _ = d.dump()
    by_id = {r["event"]["event"]["id"]: r["event"] for r in rows}
    e1, e2 = by_id["envelopeid0001"], by_id["envelopeid0002"]
    assert e1["collection"] == "builds" and e1["scope"] == "run42"
    assert e1["index"] == 1          # the ordinal, since it was 0
    assert e2["index"] == 9          # the client's, kept
    te = e1["event"]
    assert te["detail"]["client"]["agent"]["name"] == "emitd"
    assert te["detail"]["client"]["os"]["name"] == os.uname().sysname
    assert int(te["timing"]["occurred"]) > 1_600_000_000_000


def test_same_scope_shares_a_timer_across_connections_and_restarts(
        make_emitd):
    d = make_emitd()
    env_line = lambda: line({"scope": "build-7", "event": event()})
    results = []

    def worker():
        results.extend(d.send([env_line() for _ in range(50)]))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and all(r["ok"] for r in results)
    assert len({r["timer"] for r in results}) == 1
    assert sorted(r["ordinal"] for r in results) == list(range(1, 201))
    d.stop()
    d.start()
    more = d.send([env_line() for _ in range(5)])
    assert {r["timer"] for r in more} == {results[0]["timer"]}
    assert [r["ordinal"] for r in more] == [201, 202, 203, 204, 205]


def test_connections_without_scope_get_their_own_timers(make_emitd):
    d = make_emitd()
    a = d.send([SMALLEST, SMALLEST])
    b = d.send([SMALLEST])
    assert a[0]["timer"] == a[1]["timer"]
    assert a[0]["timer"] != b[0]["timer"]
    assert [r["ordinal"] for r in a] == [1, 2] and b[0]["ordinal"] == 1


def test_client_timer_and_ordinal_are_kept(make_emitd):
    d = make_emitd()
    timer = base64.b64encode(b"my-own-timer-xyz").decode()
    rs = d.send([line(event(timer=timer, ordinal=40)),
                 line(event(timer=timer)),
                 line(event(timer=timer))])
    assert [r["timer"] for r in rs] == [timer] * 3
    # A given ordinal does not move the counter.
    assert [r["ordinal"] for r in rs] == [40, 1, 2]


def test_ci_scope_from_the_environment(make_emitd):
    d = make_emitd(env={"GITHUB_RUN_ID": "987654"})
    a = d.send([SMALLEST])
    b = d.send([SMALLEST])
    assert a[0]["timer"] == b[0]["timer"]
    assert b[0]["ordinal"] == 2
    d.stop()
    rows, _ = d.dump()
    assert {r["event"]["scope"] for r in rows} == {"987654"}


def test_duplicate_id_is_acknowledged_and_stored_once(make_emitd):
    d = make_emitd()
    first = d.send([line(event(id="dupcheck00001"))])[0]
    again = d.send([line(event(id="dupcheck00001")),
                    line(event(id="dupcheck00001"))])
    assert first["ok"] and "duplicate" not in first
    for r in again:
        assert r == {"ok": True, "id": "dupcheck00001", "seq": first["seq"],
                     "duplicate": True}
    d.stop()
    rows, stats = d.dump()
    assert [r["event"]["event"]["id"] for r in rows].count(
        "dupcheck00001") == 1


def test_plain_email_is_hashed_before_it_is_stored(make_emitd):
    import hashlib
    d = make_emitd()
    (r,) = d.send([line(event(id="emailcheck001",
                              detail={"user": {"email": " Dev@Example.COM "}}))])
    assert r["ok"], r
    d.stop()
    rows, _ = d.dump()
    (row,) = [x for x in rows if x["event"]["event"]["id"] == "emailcheck001"]
    stored = base64.b64decode(row["event"]["event"]["detail"]["user"]["email"])
    assert stored == hashlib.sha256(b"dev@example.com").digest()
    with open(os.path.join(d.spool, "data.mdb"), "rb") as f:
        assert b"Dev@Example.COM" not in f.read()


# One line per rule of SPEC 1.1, each breaking exactly that rule.
BAD = [
    ("collection", {"collection": "ab", "event": event()}),
    ("collection", {"collection": "abc1", "event": event()}),
    ("event.id", event(id="short")),
    ("event.id", event(id="has-dash-in-it")),
    ("event.tenant", event(tenant="acme")),
    ("event.user", event(user="u" * 129)),
    ("event.context", {"context": []}),
    ("event.context", {"context": CTX * 11}),
    ("event.context[0].type", {"context": [{"type": "bad", "event": "x"}]}),
    ("event.context[0].type", {"context": [{
        "type": "type.googleapis.com/buildless.context." + "A" * 40,
        "event": "x"}]}),
    ("event.context[0].event", {"context": [{
        "type": "type.googleapis.com/buildless.context.Build"}]}),
    ("event.context[0].event", {"context": [{
        "type": "type.googleapis.com/buildless.context.Build",
        "event": "e" * 65}]}),
    ("event.context[0].resource", {"context": [dict(CTX[0], resource="x::y")]}),
    ("event.context[0].resource", {"context": [dict(
        CTX[0], resource="repo::" + "a" * 123)]}),
    ("event.context[0].action", {"context": [dict(CTX[0], action="push")]}),
    ("event.context[0].action", {"context": [dict(
        CTX[0], resource="repo::x", action="a" * 33)]}),
    ("event.detail.tenant.name", event(detail={"tenant": {"name": "1abc"}})),
    ("event.detail.tenant.name", event(detail={"tenant": {"name": "a" * 33}})),
    ("event.detail.user.uid", event(detail={"user": {"uid": "u" * 129}})),
    ("event.detail.user.email", event(detail={"user": {"email": "AAAA"}})),
    ("event.detail.user.username", event(detail={"user": {
        "username": "u" * 33}})),
    ("event.detail.repository.provider", event(detail={"repository": {
        "provider": "GITLAB"}})),
    ("event.detail.repository.provider", event(detail={"repository": {
        "provider": 7}})),
    ("event.detail.repository.link", event(detail={"repository": {
        "link": "not a uri"}})),
    ("event.detail.repository.name", event(detail={"repository": {
        "name": "n" * 33}})),
    ("event.timing.timehash", event(timing={"timehash": "abc"})),
    ("event.timing.received", event(timing={"received": "1"})),
    ("event.timing.ingested", event(timing={"ingested": 1})),
    ("event.scope", event(scope="svc")),
    ("event.location.sourceIp", event(location={"sourceIp": "AQID"})),
    ("event.location.nielsen", event(location={"nielsen": "x"})),
    ("event.location.tag", event(location={"tag": "u4pruyd"})),
    ("event.timer", event(timer=base64.b64encode(b"t" * 33).decode())),
    ("event.data", event(data={"typeUrl": "noslash", "value": ""})),
    ("event.ordinal", event(ordinal=-1)),
    ("event.ordinal", event(ordinal=4294967296)),
    ("event.bogus", event(bogus=1)),
]


@pytest.mark.parametrize("path,obj", BAD, ids=[
    "%s-%d" % (p, i) for i, (p, _) in enumerate(BAD)])
def test_every_rule_is_checked_at_the_socket(shared_emitd, path, obj):
    (r,) = shared_emitd.send([line(obj)])
    assert r["ok"] is False, r
    assert r["error"] == "invalid", r
    assert path in r["message"], r


def test_invalid_utf8_is_bad_json(shared_emitd):
    c = shared_emitd.client()
    c.send(b'{"context":[{"type":"type.googleapis.com/buildless.context.B",'
           b'"event":"\xff\xfe"}]}\n')
    (r,) = c.replies(1)
    assert r["error"] == "bad_json"
    c.close()


def test_lengths_count_code_points_not_bytes(shared_emitd):
    ok = event(user="é" * 128)
    bad = event(user="é" * 129)
    rs = shared_emitd.send([line(ok), line(bad)])
    assert rs[0]["ok"] is True
    assert rs[1]["error"] == "invalid" and "event.user" in rs[1]["message"]


@pytest.fixture(scope="module")
def shared_emitd():
    """One emitd for the many one-line rule checks."""
    import shutil
    import tempfile
    from conftest import Emitd
    tmp = tempfile.mkdtemp(prefix="emd-", dir="/tmp")
    d = Emitd(tmp).start()
    yield d
    d.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def test_durability_after_kill9_under_load(make_emitd):
    d = make_emitd()
    acked = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w):
        n = 0
        try:
            c = d.client()
            while not stop.is_set():
                batch = ["%s" % line(event(id="worker%dn%010d" % (w, n + i)))
                         for i in range(50)]
                c.send_lines(batch)
                for _ in batch:
                    r = c.read_line()
                    if r.get("ok"):
                        with lock:
                            acked.append(r["id"])
                n += 50
        except (OSError, EOFError, ValueError):
            pass

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 20000, 60, "20000 acknowledged events")
    d.kill9()
    stop.set()
    for t in threads:
        t.join()
    rows, stats = d.dump()
    stored = [r["event"]["event"]["id"] for r in rows]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(acked) - set(stored)
    assert not missing, "%d acknowledged events lost" % len(missing)
    assert stats["pending"] == len(stored)
    # And it starts again on the same spool.
    d.start()
    assert d.send([SMALLEST])[0]["ok"]


def test_ids_stay_known_after_kill9_and_after_a_clean_restart(make_emitd):
    d = make_emitd()
    ids = ["knownafter%08d" % i for i in range(3000)]
    first = d.send([line(event(id=i)) for i in ids])
    assert all(r["ok"] and "duplicate" not in r for r in first)
    seqs = {r["id"]: r["seq"] for r in first}
    d.kill9()
    # The id table was not closed cleanly: rebuilt from the spool.
    d.start()
    wait_for(lambda: "id table rebuilt: 3000 ids" in d.read_log(), 10,
             "the id table rebuild")
    again = d.send([line(event(id=i)) for i in ids[::7]])
    assert all(r == {"ok": True, "id": r["id"], "seq": seqs[r["id"]],
                     "duplicate": True} for r in again), again[:3]
    # A clean stop writes the table out: the next start trusts it.
    d.stop()
    log_before = len(d.read_log())
    d.start()
    again = d.send([line(event(id=i)) for i in ids[3::7]])
    assert all(r.get("duplicate") and r["seq"] == seqs[r["id"]]
               for r in again), again[:3]
    assert "rebuilding" not in d.read_log()[log_before:]
    fresh = d.send([line(event(id="knownafterfresh1"))])[0]
    assert fresh["ok"] and "duplicate" not in fresh
    assert fresh["seq"] == 3001


def test_spool_full_rejects_new_events_and_keeps_old_ones(make_emitd):
    d = make_emitd(conf={"spool": {"max_bytes": "8KiB"}})
    rs = d.send([line(event(id="fill%09d" % i, user="u" * 100))
                 for i in range(100)])
    codes = [r.get("error") for r in rs]
    assert codes[0] is None
    assert "spool_full" in codes
    first_full = codes.index("spool_full")
    d.stop()
    rows, stats = d.dump()
    assert len(rows) == sum(1 for r in rs if r["ok"])
    assert rows[0]["event"]["event"]["id"] == "fill%09d" % 0
    assert first_full > 5


def test_drop_oldest_evicts_and_counts(make_emitd):
    d = make_emitd(conf={"spool": {"max_bytes": "8KiB",
                                   "on_full": "drop_oldest"}})
    rs = d.send([line(event(id="drop%09d" % i, user="u" * 100))
                 for i in range(100)])
    assert all(r["ok"] for r in rs)
    d.stop()
    rows, stats = d.dump()
    ids = [r["event"]["event"]["id"] for r in rows]
    assert ids[-1] == "drop%09d" % 99
    assert "drop%09d" % 0 not in ids
    assert stats["dropped"] == 100 - len(ids)
    assert stats["dropped"] > 0


def test_max_clients_turns_away_the_extra_client_only(make_emitd):
    d = make_emitd(conf={"ingest": {"max_clients": 2}})
    time.sleep(0.3)     # the start-up probe's connection is gone by now
    a, b = d.client(), d.client()
    time.sleep(0.1)
    c = d.client()
    r = c.read_all()
    assert len(r) == 1 and r[0]["ok"] is False
    assert "max_clients" in r[0]["message"]
    a.send_lines([SMALLEST])
    b.send_lines([SMALLEST])
    assert a.read_line()["ok"] and b.read_line()["ok"]
    a.close()
    b.close()


def test_allow_uids_refuses_other_users(make_emitd):
    d = make_emitd(conf={"agent": {"allow_uids": str(os.getuid() + 1)}})
    c = d.client()
    (r,) = c.read_all()
    assert r["ok"] is False and r["error"] == "denied"
    assert str(os.getuid()) in r["message"]
    d2 = make_emitd(conf={"agent": {"allow_uids": str(os.getuid())}},
                    sub="allowed")
    assert d2.send([SMALLEST])[0]["ok"]


def test_socket_mode_is_applied(make_emitd):
    d = make_emitd(conf={"agent": {"socket_mode": "0600"}})
    assert os.stat(d.socket).st_mode & 0o777 == 0o600


def test_a_client_that_never_reads_does_not_block_others(make_emitd):
    d = make_emitd()
    hog = d.client()
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = ((SMALLEST + "\n") * 2000).encode()
    sent = 0
    hog.sock.setblocking(False)
    deadline = time.monotonic() + 10
    # Keep sending until emitd stops reading from it (our send blocks).
    while time.monotonic() < deadline:
        try:
            sent += hog.sock.send(payload)
        except BlockingIOError:
            time.sleep(0.05)
            try:
                sent += hog.sock.send(payload)
            except BlockingIOError:
                break
    t0 = time.monotonic()
    assert d.send([SMALLEST])[0]["ok"]
    assert time.monotonic() - t0 < 1.0
    rss = int(open("/proc/%d/status" % d.proc.pid).read()
              .split("VmRSS:")[1].split()[0])
    assert rss < 200 * 1024, "emitd grew to %d KiB" % rss
    hog.close()


def test_sigterm_answers_late_lines_shutting_down_and_exits_0(make_emitd):
    d = make_emitd()
    c = d.client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.send_lines([SMALLEST] * 6000)       # replies pile up unread
    time.sleep(0.5)
    d.proc.send_signal(15)
    time.sleep(0.3)
    c.send_lines([SMALLEST])
    rs = c.read_all()
    assert d.proc.wait(10) == 0
    assert len(rs) == 6001
    assert all(r["ok"] for r in rs[:6000])
    assert rs[6000]["error"] == "shutting_down"


def test_unknown_fields_can_be_ignored(make_emitd):
    d = make_emitd(conf={"ingest": {"unknown_fields": "ignore"}})
    (r,) = d.send([line(event(bogus={"deep": [1, {"x": None}]}))])
    assert r["ok"] is True


def test_a_reload_lowers_max_event_bytes_for_open_connections(make_emitd):
    import signal
    d = make_emitd(conf={"ingest": {"max_event_bytes": "4KiB"}})
    c = d.client()
    big = line(event(user="u" * 100, id="reloadlimit001"))
    c.send_lines([big])
    assert c.read_line()["ok"]
    d.conf["ingest"]["max_event_bytes"] = "100B"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.read_log(), 5, "reload")
    c.send_lines([big])
    r = c.read_line()
    assert r["error"] == "too_large" and "(100 bytes)" in r["message"]
    c.close()
