"""Binary mode (SPEC 2): a connection whose first byte is 0x00 sends frames
of a 4-byte big-endian length and a serialized Event, and gets Ack frames
back. The encoder and decoder here are written from the .proto files by
hand, so they check emitd's wire format independently of protobuf-c."""
import socket
import struct

from conftest import wait_for


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def context(type_="type.googleapis.com/buildless.context.Build",
            event="started"):
    return field_bytes(1, type_) + field_bytes(4, event)


def telemetry(id_=None, ctx=None, ordinal=None, extra=b""):
    body = b""
    if id_ is not None:
        body += field_bytes(2, id_)
    body += field_bytes(5, ctx if ctx is not None else context())
    if ordinal is not None:
        body += field_varint(10, ordinal)
    return body + extra


def envelope(te, collection=None, scope=None):
    body = b""
    if collection is not None:
        body += field_bytes(1, collection)
    if scope is not None:
        body += field_bytes(4, scope)
    return body + field_bytes(5, te)


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def parse_ack(data):
    """Decodes an emitd.v1.Ack into a dict keyed by field name."""
    names = {1: "ok", 2: "id", 3: "seq", 4: "timer", 5: "ordinal",
             6: "duplicate", 7: "error", 8: "message", 9: "line"}
    out, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
        elif wt == 2:
            n, i = read_varint(data, i)
            v = data[i:i + n]
            i += n
            if num in (2, 7, 8):
                v = v.decode()
        else:
            raise AssertionError("unexpected wire type %d" % wt)
        out[names[num]] = v
    for b in ("ok", "duplicate"):
        out[b] = bool(out.get(b, 0))
    return out


def read_varint(data, i):
    shift = n = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


class BinClient:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("closed with %d bytes buffered" % len(self.buf))
            self.buf += chunk

    def ack(self):
        self._fill(4)
        (n,) = struct.unpack(">I", self.buf[:4])
        self._fill(4 + n)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return parse_ack(body)

    def acks(self, n):
        return [self.ack() for _ in range(n)]

    def close(self):
        self.s.close()


def test_frames_in_acks_out(make_emitd):
    d = make_emitd()
    c = BinClient(d.socket)
    c.send(frame(envelope(telemetry("binaryevent0001"))) +
           frame(envelope(telemetry(), scope="bin-scope")) +
           frame(envelope(telemetry(), scope="bin-scope")))
    a = c.acks(3)
    assert all(x["ok"] for x in a)
    assert a[0]["id"] == "binaryevent0001"
    assert len(a[1]["id"]) == 26
    assert a[1]["timer"] == a[2]["timer"] and len(a[1]["timer"]) == 16
    assert [x["ordinal"] for x in a[1:]] == [1, 2]
    assert a[0]["seq"] < a[1]["seq"] < a[2]["seq"]
    c.close()


def test_duplicate_and_invalid_frames(make_emitd):
    d = make_emitd()
    c = BinClient(d.socket)
    good = frame(envelope(telemetry("binarydup00001")))
    bad_rule = frame(envelope(telemetry(), collection="x1"))
    no_ctx = frame(envelope(field_bytes(2, "binarynoctx001")))
    c.send(good + good + bad_rule + no_ctx)
    a = c.acks(4)
    assert a[0]["ok"] and not a[0]["duplicate"]
    assert a[1]["ok"] and a[1]["duplicate"] and a[1]["seq"] == a[0]["seq"]
    assert not a[2]["ok"] and a[2]["error"] == "invalid"
    assert "collection" in a[2]["message"] and a[2]["line"] == 3
    assert not a[3]["ok"] and "event.context" in a[3]["message"]
    c.close()


def test_garbage_protobuf_gets_invalid_and_the_connection_goes_on(
        make_emitd):
    d = make_emitd()
    c = BinClient(d.socket)
    c.send(frame(b"\xff\xff\xff\xff\x0f") +
           frame(envelope(telemetry("afterthegarbage"))))
    a = c.acks(2)
    assert not a[0]["ok"] and a[0]["error"] == "invalid"
    assert a[1]["ok"] and a[1]["id"] == "afterthegarbage"
    c.close()


def test_frame_over_the_limit_is_too_large_and_skipped(make_emitd):
    d = make_emitd(conf={"ingest": {"max_event_bytes": "1KiB"}})
    c = BinClient(d.socket)
    big = envelope(telemetry("bigbigbigbig01", extra=field_bytes(4, "u" * 2000)))
    c.send(frame(big) + frame(envelope(telemetry("smallafterbig1"))))
    a = c.acks(2)
    assert not a[0]["ok"] and a[0]["error"] == "too_large"
    assert a[1]["ok"] and a[1]["id"] == "smallafterbig1"
    c.close()


def test_frames_split_across_writes(make_emitd):
    d = make_emitd()
    c = BinClient(d.socket)
    data = b"".join(frame(envelope(telemetry("splitframe%04d" % i)))
                    for i in range(20))
    for i in range(0, len(data), 7):
        c.send(data[i:i + 7])
    a = c.acks(20)
    assert [x["id"] for x in a] == ["splitframe%04d" % i for i in range(20)]
    c.close()


def test_truncated_frame_at_eof_is_reported(make_emitd):
    d = make_emitd()
    c = BinClient(d.socket)
    whole = frame(envelope(telemetry("truncatedok001")))
    c.send(whole + whole[:len(whole) - 3].replace(b"truncatedok001",
                                                  b"truncatedno001"))
    c.s.shutdown(socket.SHUT_WR)
    a = c.acks(2)
    assert a[0]["ok"]
    assert not a[1]["ok"] and a[1]["error"] == "invalid"
    assert "truncated" in a[1]["message"]
    c.close()
