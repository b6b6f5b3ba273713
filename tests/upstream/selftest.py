#!/usr/bin/env python3
"""Self-test of emd-upstream: starts it on a free port and speaks HTTP to it.

usage: selftest.py PATH/TO/emd-upstream

Standard library only; zstd bodies are made with the zstd CLI (Debian
package zstd, installed by scripts/deps.sh). Every check runs against a real
server process; each test reads as a sentence and resets the server first.
"""
import base64
import gzip
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

BIN = None
EMIT = "/v1/telemetry/event:emit"
STREAM = "/v1/telemetry/event:stream"
PING = "/v1/telemetry/event:ping"
CTX = "type.googleapis.com/buildless.context.Build"


# ---- a few lines of protobuf wire format --------------------------------

def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def event(eid, collection="Build", fin=False, index=0, scope="",
          ctx_event="started", occurred=1700000000000):
    """Serializes a buildless.service.v1.Event."""
    context = field_bytes(1, CTX) + field_bytes(4, ctx_event)
    timing = field_varint(2, occurred)
    tev = field_bytes(2, eid) + field_bytes(5, context) + \
        field_bytes(6, b"") + field_bytes(7, timing)
    out = field_bytes(1, collection) if collection else b""
    if fin:
        out += field_varint(2, 1)
    if index:
        out += field_varint(3, index)
    if scope:
        out += field_bytes(4, scope)
    return out + field_bytes(5, tev)


def delimited(msgs):
    return b"".join(varint(len(m)) + m for m in msgs)


def read_varint(buf, pos):
    shift = n = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def parse_event_id(buf):
    """An EventID as {"ok":bool,"eid":str,"sid":str}; ValueError if bad."""
    out = {"ok": False, "eid": "", "sid": ""}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = read_varint(buf, pos)
            if num == 1:
                out["ok"] = bool(val)
        elif wt == 2:
            n, pos = read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("field runs past the end")
            val = buf[pos:pos + n].decode()
            pos += n
            if num == 2:
                out["eid"] = val
            elif num == 3:
                out["sid"] = val
        else:
            raise ValueError("unexpected wire type %d" % wt)
    return out


def parse_event_ids(buf):
    out, pos = [], 0
    while pos < len(buf):
        n, pos = read_varint(buf, pos)
        if pos + n > len(buf):
            raise ValueError("message runs past the end")
        out.append(parse_event_id(buf[pos:pos + n]))
        pos += n
    return out


def ids(prefix, n):
    return ["%s%08d" % (prefix, i) for i in range(n)]


# ---- the server ---------------------------------------------------------

class Server:
    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="emd-upstream-test.")
        self.port_file = os.path.join(self.dir, "port")
        self.record = os.path.join(self.dir, "events.ndjson")
        self.requests = os.path.join(self.dir, "requests.ndjson")
        self.stderr = open(os.path.join(self.dir, "stderr"), "w+")
        self.proc = subprocess.Popen(
            [BIN, "--listen", "127.0.0.1:0", "--port-file", self.port_file,
             "--record", self.record, "--requests", self.requests,
             "--quiet"] + list(args),
            stderr=self.stderr)
        deadline = time.time() + 15
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise AssertionError("emd-upstream exited with %d: %s" %
                                     (self.proc.returncode, self.log()))
            if time.time() > deadline:
                raise AssertionError("no port file after 15 s")
            time.sleep(0.02)
        with open(self.port_file) as f:
            self.port = int(f.read())

    def log(self):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)

    def post(self, path, body=b"", headers=None, conn=None):
        c = conn or self.conn()
        h = {"Content-Type": "application/x-protobuf"}
        h.update(headers or {})
        c.request("POST", path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, r, data

    def get(self, path):
        c = self.conn()
        c.request("GET", path)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def control(self, path, obj=None, raw=None):
        c = self.conn()
        body = raw if raw is not None else json.dumps(obj or {})
        c.request("POST", "/_test/" + path, body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = json.loads(r.read())
        c.close()
        return r.status, data

    def stats(self):
        status, data = self.get("/_test/stats")
        assert status == 200, status
        return json.loads(data)

    def events(self):
        status, data = self.get("/_test/events")
        assert status == 200, status
        return [json.loads(l) for l in data.decode().splitlines()]

    def request_log(self):
        status, data = self.get("/_test/requests")
        assert status == 200, status
        return [json.loads(l) for l in data.decode().splitlines()]

    def stop(self):
        """SIGTERM; the server must exit 0 (under ASan: no leak, no error)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        log = self.log()
        self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert rc == 0, "exit status %d; stderr:\n%s" % (rc, log)
        assert "Sanitizer" not in log, log


def expect(cond, what):
    if not cond:
        text = repr(what)
        raise AssertionError(text if len(text) < 3000 else
                             text[:3000] + "...")


# ---- the tests; each gets a reset server ---------------------------------

def ping_answers_200_with_an_empty_body(s):
    status, _, body = s.post(PING)
    expect(status == 200 and body == b"", (status, body))


def emit_records_the_event_and_replies_one_event_id(s):
    status, r, body = s.post(EMIT, event("emitsingle0001", fin=True,
                                         index=7, scope="run42"))
    expect(status == 200, (status, body))
    expect(r.getheader("Content-Type") == "application/x-protobuf",
           r.getheader("Content-Type"))
    eid = parse_event_id(body)
    expect(eid["ok"] and eid["eid"] == "emitsingle0001", eid)
    ev = s.events()
    expect(len(ev) == 1, ev)
    rec = ev[0]
    expect(rec["path"] == EMIT and rec["encoding"] == "protobuf" and
           rec["content_encoding"] == "none" and rec["auth"] == "none" and
           rec["fin"] is True and rec["req"] == 1 and rec["pos"] == 0, rec)
    expect(abs(rec["t_ms"] - time.time() * 1000) < 60000, rec["t_ms"])
    e = rec["event"]
    expect(e["collection"] == "Build" and e["index"] == 7 and
           e["scope"] == "run42" and e["fin"] is True, e)
    expect(e["event"]["id"] == "emitsingle0001", e)
    expect(e["event"]["context"][0]["type"] == CTX and
           e["event"]["context"][0]["event"] == "started", e)


def stream_replies_delimited_event_ids_in_order(s):
    names = ids("streamorder", 5)
    body = delimited([event(n, fin=(i == 4)) for i, n in enumerate(names)])
    status, _, reply = s.post(STREAM, body)
    expect(status == 200, (status, reply))
    got = parse_event_ids(reply)
    expect([g["eid"] for g in got] == names, got)
    expect(all(g["ok"] for g in got), got)
    ev = s.events()
    expect([r["event"]["event"]["id"] for r in ev] == names, ev)
    expect([r["pos"] for r in ev] == list(range(5)), ev)
    expect([r["fin"] for r in ev] == [False] * 4 + [True], ev)
    st = s.stats()
    expect(st["requests"] == 1 and st["events"] == 5 and
           st["unique_ids"] == 5 and st["duplicates"] == 0, st)


def an_empty_stream_is_accepted_with_an_empty_reply(s):
    status, _, reply = s.post(STREAM, b"")
    expect(status == 200 and reply == b"", (status, reply))
    expect(s.stats()["events"] == 0, s.stats())


def gzip_bodies_are_inflated(s):
    names = ids("gzipbody", 50)
    raw = delimited([event(n) for n in names])
    status, _, reply = s.post(STREAM, gzip.compress(raw),
                              {"Content-Encoding": "gzip"})
    expect(status == 200, (status, reply))
    expect([g["eid"] for g in parse_event_ids(reply)] == names, reply)
    ev = s.events()
    expect(len(ev) == 50 and ev[0]["content_encoding"] == "gzip", ev[:1])
    log = s.request_log()
    expect(log[-1]["bytes"] < len(raw) and log[-1]["events"] == 50, log)


def zstd_bodies_are_decompressed(s):
    zstd = shutil.which("zstd")
    expect(zstd is not None,
           "the zstd CLI is missing (Debian package zstd; scripts/deps.sh)")
    names = ids("zstdbody", 40)
    raw = delimited([event(n) for n in names])
    packed = subprocess.run([zstd, "-q", "-c"], input=raw,
                            stdout=subprocess.PIPE, check=True).stdout
    status, _, reply = s.post(STREAM, packed, {"Content-Encoding": "zstd"})
    expect(status == 200, (status, reply))
    expect([g["eid"] for g in parse_event_ids(reply)] == names, reply)
    expect(s.events()[0]["content_encoding"] == "zstd", s.events()[0])
    status, _, reply = s.post(STREAM, packed[:-5],
                              {"Content-Encoding": "zstd"})
    expect(status == 400 and b"zstd" in reply, (status, reply))


def bad_bodies_get_400_naming_what_is_wrong(s):
    good = event("goodevent00001")
    cases = [
        (STREAM, delimited([good]) + b"\x80", {}, b"event[1]: length"),
        (STREAM, delimited([good]) + b"\x20abc", {}, b"runs past"),
        (STREAM, delimited([good, b"\xff\xff\xff"]), {},
         b"event[1]: not a valid Event"),
        (EMIT, b"\x0a\x05Bu", {}, b"not a valid Event"),
        (EMIT, b"", {}, b"event: required"),
        (EMIT, event("short"), {}, b"event.id: does not match"),
        (EMIT, event("has-a-dash-in-it"), {}, b"event.id"),
        (EMIT, event("unknownfield01") + field_varint(15, 1), {},
         b"event[0]: unknown field 15"),
        (STREAM, delimited([good, field_bytes(1, b"Bu\xffld") +
                            event("badutf8event01", collection="")]), {},
         b"event[1]: collection: not valid UTF-8"),
        (STREAM, b"not gzip at all", {"Content-Encoding": "gzip"},
         b"gzip body does not decode"),
        (STREAM, gzip.compress(delimited([good]))[:-6],
         {"Content-Encoding": "gzip"}, b"gzip body cut short"),
        (STREAM, b"\x28\xb5\x2f\xfd garbage", {"Content-Encoding": "zstd"},
         b"zstd"),
    ]
    for path, body, headers, needle in cases:
        status, _, reply = s.post(path, body, headers)
        expect(status == 400 and needle in reply,
               (path, body[:20], status, reply))
    status, _, reply = s.post(STREAM, b"", {"Content-Encoding": "br"})
    expect(status == 415 and b"Content-Encoding br" in reply, reply)
    status, _, reply = s.post(STREAM, b"", {"Content-Type": "text/plain"})
    expect(status == 415 and b"Content-Type" in reply, reply)
    st = s.stats()
    expect(st["events"] == 0 and st["status"]["400"] == len(cases), st)
    expect(s.events() == [], s.events())


def wrong_paths_get_404_and_wrong_methods_405(s):
    status, _, _ = s.post("/v1/telemetry/event:nope", b"")
    expect(status == 404, status)
    status, _, _ = s.post("/", b"")
    expect(status == 404, status)
    status, _ = s.get(STREAM)
    expect(status == 405, status)
    c = s.conn()
    c.request("PUT", EMIT, body=b"")
    r = c.getresponse()
    r.read()
    expect(r.status == 405 and r.getheader("Allow") == "POST",
           (r.status, r.getheaders()))
    log = s.request_log()
    expect([l["status"] for l in log] == [404, 404, 405, 405], log)
    status, data = s.get("/_test/nothing")
    expect(status == 404, status)
    status, data = s.get("/_test/script")
    expect(status == 405, status)


def keys_work_in_all_three_styles_and_others_get_401(s):
    s.control("key", {"key": "sekrit", "forbid": "banned"})
    body = event("authevent00001")
    basic = base64.b64encode(b"apikey:sekrit").decode()
    cases = [
        ({}, 401, "none"),
        ({"Authorization": "Bearer sekrit"}, 200, "bearer"),
        ({"X-API-Key": "sekrit"}, 200, "x-api-key"),
        ({"Authorization": "Basic " + basic}, 200, "basic"),
        ({"Authorization": "Basic " +
          base64.b64encode(b"someone:sekrit").decode()}, 401, "basic"),
        ({"Authorization": "Bearer wrong"}, 401, "bearer"),
        ({"X-API-Key": "banned"}, 403, "x-api-key"),
        ({"Authorization": "Basic !!!"}, 401, "basic"),
    ]
    for headers, want, style in cases:
        status, r, reply = s.post(EMIT, body, headers)
        expect(status == want, (headers, status, reply))
        if want == 401:
            expect(r.getheader("WWW-Authenticate", "").startswith("Bearer"),
                   r.getheaders())
    log = s.request_log()
    expect([l["status"] for l in log] == [c[1] for c in cases], log)
    expect([l["auth"] for l in log] == [c[2] for c in cases], log)
    expect([r["auth"] for r in s.events()] == ["bearer", "x-api-key",
                                               "basic"], s.events())


def auth_changes_at_run_time(s):
    body = event("authchange0001")
    expect(s.post(EMIT, body)[0] == 200, "anonymous first")
    s.control("key", {"key": "k1"})
    expect(s.post(EMIT, body)[0] == 401, "key now required")
    expect(s.post(EMIT, body, {"X-API-Key": "k1"})[0] == 200, "k1")
    s.control("key", {"auth_style": "bearer"})
    expect(s.post(EMIT, body, {"X-API-Key": "k1"})[0] == 401, "style")
    expect(s.post(EMIT, body, {"Authorization": "Bearer k1"})[0] == 200,
           "bearer k1")
    s.control("key", {"forbid": "k1"})
    expect(s.post(EMIT, body, {"Authorization": "Bearer k1"})[0] == 403,
           "forbidden now")
    s.control("key", {"forbid": None, "key": None})
    expect(s.post(EMIT, body)[0] == 200, "anonymous again")
    status, data = s.control("key", {"key": 5})
    expect(status == 400 and data["ok"] is False, data)
    status, data = s.control("key", {"auth_style": "carrier-pigeon"})
    expect(status == 400, data)


def scripted_statuses_come_in_order_then_all_is_normal(s):
    status, data = s.control("script", [
        {"status": 503, "retry_after": "2"},
        {"status": 500, "body": "upstream broke"},
        {"status": 429, "retry_after": 7},
        {"status": 503, "retry_after_in_s": 30},
        {"status": 401, "repeat": 2},
        {"status": 202},
    ])
    expect(status == 200 and data == {"ok": True, "steps": 7}, data)
    body = delimited([event("scriptedevt001")])
    st, r, reply = s.post(STREAM, body)
    expect(st == 503 and r.getheader("Retry-After") == "2", (st, reply))
    st, r, reply = s.post(STREAM, body)
    expect(st == 500 and reply == b"upstream broke\n", (st, reply))
    st, r, _ = s.post(STREAM, body)
    expect(st == 429 and r.getheader("Retry-After") == "7", st)
    st, r, _ = s.post(STREAM, body)
    date = r.getheader("Retry-After")
    expect(st == 503 and date.endswith(" GMT"), (st, date))
    from email.utils import parsedate_to_datetime
    ahead = parsedate_to_datetime(date).timestamp() - time.time()
    expect(25 < ahead <= 31, ahead)
    expect(s.post(STREAM, body)[0] == 401, "401 once")
    expect(s.post(STREAM, body)[0] == 401, "401 twice")
    expect(s.stats()["script_left"] == 1, s.stats())
    st, _, reply = s.post(STREAM, body)
    expect(st == 202 and parse_event_ids(reply)[0]["ok"], (st, reply))
    st, _, reply = s.post(STREAM, body)
    expect(st == 200, st)
    log = s.request_log()
    expect([l["status"] for l in log] ==
           [503, 500, 429, 503, 401, 401, 202, 200], log)
    expect([l["script"] for l in log][:2] == ["status", "status"], log)
    expect(s.stats()["events"] == 2, s.stats())


def delays_hold_only_their_own_connection(s):
    s.control("script", [{"delay_ms": 1200}])
    result = {}

    def slow():
        t0 = time.time()
        result["status"] = s.post(PING)[0]
        result["took"] = time.time() - t0

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    t0 = time.time()
    expect(s.post(PING)[0] == 200, "second ping")
    quick = time.time() - t0
    t.join()
    expect(result["status"] == 200 and result["took"] >= 1.1, result)
    expect(quick < 0.8, quick)
    log = s.request_log()
    expect(sorted(l["delay_ms"] for l in log) == [0, 1200], log)


def a_cut_closes_without_a_reply_but_the_events_arrived(s):
    s.control("script", [{"cut": True}, {"cut": True, "accept": False}])
    for name in ("cutaccepted001", "cutdropped0001"):
        try:
            s.post(STREAM, delimited([event(name)]))
            raise AssertionError("a reply came for a cut request")
        except (http.client.RemoteDisconnected, ConnectionError):
            pass
    ev = s.events()
    expect([r["event"]["event"]["id"] for r in ev] == ["cutaccepted001"], ev)
    st = s.stats()
    expect(st["cuts"] == 2 and st["requests"] == 2, st)
    expect([l["status"] for l in s.request_log()] == [0, 0], "cut logged")
    st, _, reply = s.post(STREAM, delimited([event("cutaccepted001")]))
    expect(st == 200, st)
    st = s.stats()
    expect(st["events"] == 2 and st["unique_ids"] == 1 and
           st["duplicates"] == 1, st)


def a_garbled_reply_is_200_and_undecodable(s):
    s.control("script", [{"garbled": True}])
    st, _, reply = s.post(STREAM, delimited([event("garbledevt001")]))
    expect(st == 200 and reply, (st, reply))
    try:
        parse_event_ids(reply)
        raise AssertionError("garbled reply decoded")
    except ValueError:
        pass
    expect(s.stats()["garbled"] == 1 and s.stats()["events"] == 1,
           s.stats())


def rejected_ids_get_ok_false_and_are_not_recorded(s):
    names = ids("rejectme", 4)
    status, _ = s.control("reject", {"ids": [names[1], names[3]]})
    expect(status == 200, status)
    st, _, reply = s.post(STREAM, delimited([event(n) for n in names]))
    expect(st == 200, st)
    got = parse_event_ids(reply)
    expect([g["ok"] for g in got] == [True, False, True, False], got)
    expect([g["eid"] for g in got] == names, got)
    expect([r["event"]["event"]["id"] for r in s.events()] ==
           [names[0], names[2]], s.events())
    expect(s.stats()["rejected"] == 2, s.stats())
    st, _, reply = s.post(EMIT, event(names[1]))
    expect(st == 200 and parse_event_id(reply)["ok"] is False, reply)


def poisoned_ids_sink_their_whole_request_with_400(s):
    names = ids("poisoned", 4)
    s.control("poison", {"ids": [names[2]]})
    st, _, reply = s.post(STREAM, delimited([event(n) for n in names]))
    expect(st == 400 and names[2].encode() in reply, (st, reply))
    st, _, reply = s.post(EMIT, event(names[2]))
    expect(st == 400, st)
    st, _, _ = s.post(STREAM, delimited([event(n) for n in names[:2]]))
    expect(st == 200, st)
    expect(len(s.events()) == 2, s.events())


def bad_control_bodies_get_400_and_change_nothing(s):
    for path, raw in [("script", "{}"), ("script", "[{\"status\":99}]"),
                      ("script", "[{\"status\":100}]"),
                      ("script", "[{\"retry_after\":\"1\\r\\nX: y\"}]"),
                      ("script", "[{\"bogus\":1}]"), ("script", "[1]"),
                      ("script", "not json"), ("script", "[] []"),
                      ("reject", "{\"ids\":[1]}"), ("poison", "[]"),
                      ("reject", ""), ("key", "[\"k\"]")]:
        status, data = s.control(path, raw=raw)
        expect(status == 400 and data["ok"] is False and data["error"],
               (path, raw, status, data))
    expect(s.stats()["script_left"] == 0, s.stats())
    expect(s.post(EMIT, event("controlok0001"))[0] == 200, "still normal")


def the_record_and_request_files_match_memory(s):
    s.control("key", {"key": "filekey"})
    s.post(STREAM, delimited([event(n) for n in ids("fileevt", 3)]),
           {"X-API-Key": "filekey"})
    s.post(STREAM, delimited([event("fileevtnokey1")]))
    with open(s.record) as f:
        lines = [json.loads(l) for l in f]
    expect(lines == s.events(), (lines, s.events()))
    with open(s.requests) as f:
        reqs = [json.loads(l) for l in f]
    expect(reqs == s.request_log(), reqs)
    expect([r["status"] for r in reqs] == [200, 401], reqs)
    expect("credentials missing" in reqs[1]["error"], reqs[1])


def keep_alive_serves_many_requests_on_one_connection(s):
    c = s.conn()
    for i in range(20):
        st, _, reply = s.post(EMIT, event("keepalive%05d" % i), conn=c)
        expect(st == 200, st)
    sock = c.sock
    st, _, _ = s.post(PING, conn=c)
    expect(st == 200 and c.sock is sock, "connection was not reused")
    c.close()
    expect(s.stats()["events"] == 20, s.stats())


def parallel_clients_lose_and_mix_up_nothing(s):
    errors = []

    def client(k):
        try:
            c = s.conn()
            for r in range(15):
                names = ids("par%02dr%02dn" % (k, r), 10)
                body = delimited([event(n) for n in names])
                st, _, reply = s.post(STREAM, body, conn=c)
                got = [g["eid"] for g in parse_event_ids(reply)]
                if st != 200 or got != names:
                    errors.append((k, r, st, got))
            c.close()
        except Exception as e:
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect(not errors, errors[:3])
    st = s.stats()
    expect(st["requests"] == 120 and st["events"] == 1200 and
           st["unique_ids"] == 1200, st)
    reqs = sorted(r["req"] for r in s.request_log())
    expect(reqs == list(range(1, 121)), reqs)
    expect(len(s.events()) == 1200, "records")


def json_bodies_decode_and_reply_one_line_per_event(s):
    lines = [
        {"collection": "Build", "event": {
            "id": "jsonevent%05d" % i,
            "context": [{"type": CTX, "event": "started"}],
            "timing": {"occurred": "1700000000000"}}}
        for i in range(3)
    ]
    lines[2]["fin"] = True
    body = "\n".join(json.dumps(l) for l in lines) + "\n\n"
    st, r, reply = s.post(STREAM, body.encode(),
                          {"Content-Type": "application/json"})
    expect(st == 200, (st, reply))
    expect(r.getheader("Content-Type") == "application/json", r.getheaders())
    got = [json.loads(l) for l in reply.decode().splitlines()]
    expect(got == [{"ok": True, "eid": "jsonevent%05d" % i}
                   for i in range(3)], got)
    ev = s.events()
    expect([r["encoding"] for r in ev] == ["json"] * 3, ev)
    expect([r["fin"] for r in ev] == [False, False, True], ev)
    expect(ev[0]["event"]["event"]["id"] == "jsonevent00000", ev[0])
    st, _, reply = s.post(EMIT, json.dumps(lines[0]).encode(),
                          {"Content-Type": "application/json"})
    expect(st == 200 and json.loads(reply)["eid"] == "jsonevent00000", reply)
    st, _, reply = s.post(STREAM, b"{\"event\": \n",
                          {"Content-Type": "application/json"})
    expect(st == 400 and b"line 1" in reply, (st, reply))
    st, _, reply = s.post(EMIT, (body + body).encode(),
                          {"Content-Type": "application/json"})
    expect(st == 400 and b"exactly one" in reply, (st, reply))


def reset_clears_script_rules_and_records(s):
    s.control("script", [{"status": 500}] * 3)
    s.control("reject", {"ids": ["resetreject01"]})
    s.control("poison", {"ids": ["resetpoison01"]})
    s.control("key", {"key": "resetkey"})
    s.post(EMIT, event("resetevent001"))
    status, data = s.control("reset")
    expect(status == 200 and data["ok"], data)
    st = s.stats()
    expect(st["requests"] == 0 and st["events"] == 0 and
           st["script_left"] == 0 and st["status"] == {}, st)
    expect(s.events() == [] and s.request_log() == [], "records cleared")
    st, _, reply = s.post(STREAM, delimited([event("resetreject01"),
                                             event("resetpoison01")]))
    expect(st == 200, (st, reply))
    expect(all(g["ok"] for g in parse_event_ids(reply)), reply)


TESTS = [
    ping_answers_200_with_an_empty_body,
    emit_records_the_event_and_replies_one_event_id,
    stream_replies_delimited_event_ids_in_order,
    an_empty_stream_is_accepted_with_an_empty_reply,
    gzip_bodies_are_inflated,
    zstd_bodies_are_decompressed,
    bad_bodies_get_400_naming_what_is_wrong,
    wrong_paths_get_404_and_wrong_methods_405,
    keys_work_in_all_three_styles_and_others_get_401,
    auth_changes_at_run_time,
    scripted_statuses_come_in_order_then_all_is_normal,
    delays_hold_only_their_own_connection,
    a_cut_closes_without_a_reply_but_the_events_arrived,
    a_garbled_reply_is_200_and_undecodable,
    rejected_ids_get_ok_false_and_are_not_recorded,
    poisoned_ids_sink_their_whole_request_with_400,
    bad_control_bodies_get_400_and_change_nothing,
    the_record_and_request_files_match_memory,
    keep_alive_serves_many_requests_on_one_connection,
    parallel_clients_lose_and_mix_up_nothing,
    json_bodies_decode_and_reply_one_line_per_event,
    reset_clears_script_rules_and_records,
]


# ---- tests that need a server of their own ---------------------------------

def command_line_settings_apply_from_the_start():
    s = Server("--key", "clikey", "--forbid", "clibad", "--auth-style",
               "x-api-key", "--reject", "clireject0001,clireject0002",
               "--poison", "clipoison0001", "--script",
               '[{"status":503}]', "--delay-ms", "300")
    try:
        body = delimited([event("clievent00001"), event("clireject0001")])
        st, _, _ = s.post(STREAM, body, {"X-API-Key": "clikey"})
        expect(st == 503, st)
        t0 = time.time()
        st, _, reply = s.post(STREAM, body, {"X-API-Key": "clikey"})
        expect(time.time() - t0 >= 0.28, "no --delay-ms")
        expect(st == 200, (st, reply))
        expect([g["ok"] for g in parse_event_ids(reply)] == [True, False],
               reply)
        st, _, _ = s.post(STREAM, body, {"Authorization": "Bearer clikey"})
        expect(st == 401, st)
        st, _, _ = s.post(STREAM, body, {"X-API-Key": "clibad"})
        expect(st == 403, st)
        st, _, _ = s.post(EMIT, event("clipoison0001"),
                          {"X-API-Key": "clikey"})
        expect(st == 400, st)
        s.control("key", {"key": None})
        s.control("reset")
        st, _, _ = s.post(EMIT, event("clievent00001"))
        expect(st == 401, "reset restores the command line's key")
    finally:
        s.stop()


def bodies_over_max_body_get_413():
    s = Server("--max-body", "4096")
    try:
        st, _, reply = s.post(STREAM, b"\0" * 5000)
        expect(st == 413, (st, reply))
        bomb = gzip.compress(delimited([event("bombevent0001")]) * 400)
        expect(len(bomb) < 4096, len(bomb))
        st, _, reply = s.post(STREAM, bomb, {"Content-Encoding": "gzip"})
        expect(st == 413 and b"decompressed" in reply, (st, reply))
        # A chunked body, with no Content-Length to refuse it early.
        c = s.conn()
        c.putrequest("POST", STREAM)
        c.putheader("Content-Type", "application/x-protobuf")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        for _ in range(10):
            c.send(b"400\r\n" + b"\0" * 0x400 + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        r.read()
        c.close()
        expect(r.status == 413, r.status)
        expect(s.stats()["status"] == {"413": 3}, s.stats())
    finally:
        s.stop()


def bad_command_lines_are_refused():
    for args in (["--listen", "nonsense"], ["--delay-ms", "-1"],
                 ["--script", "[{\"nope\":1}]"], ["--auth-style", "x"],
                 ["--max-body", "0"], ["extra"]):
        p = subprocess.run([BIN, "--quiet"] + args, stderr=subprocess.PIPE,
                           timeout=10)
        expect(p.returncode != 0 and p.stderr, (args, p.returncode))
    p = subprocess.run([BIN, "--help"], stdout=subprocess.PIPE, timeout=10)
    expect(p.returncode == 0 and b"--port-file" in p.stdout, p.stdout)


def the_startup_line_names_the_url():
    s = Server()
    try:
        deadline = time.time() + 5
        want = "emd-upstream listening on http://127.0.0.1:%d" % s.port
        while want not in s.log() and time.time() < deadline:
            time.sleep(0.02)
        expect(want in s.log(), s.log())
    finally:
        s.stop()


ALONE = [
    command_line_settings_apply_from_the_start,
    bodies_over_max_body_get_413,
    bad_command_lines_are_refused,
    the_startup_line_names_the_url,
]


def main():
    global BIN
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    BIN = sys.argv[1]
    only = os.environ.get("SELFTEST_ONLY")
    failed = []
    s = Server()
    try:
        for t in TESTS:
            if only and only not in t.__name__:
                continue
            s.control("reset")
            try:
                t(s)
                print("ok   %s" % t.__name__)
            except Exception:
                failed.append(t.__name__)
                print("FAIL %s\n%s" % (t.__name__, traceback.format_exc()))
    finally:
        try:
            s.stop()
        except Exception:
            failed.append("shared server stop")
            print("FAIL shared server stop\n%s" % traceback.format_exc())
    for t in ALONE:
        if only and only not in t.__name__:
            continue
        try:
            t()
            print("ok   %s" % t.__name__)
        except Exception:
            failed.append(t.__name__)
            print("FAIL %s\n%s" % (t.__name__, traceback.format_exc()))
    if failed:
        print("%d failed: %s" % (len(failed), ", ".join(failed)))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
