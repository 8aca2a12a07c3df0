#!/usr/bin/env python3
"""Minimal meshtune.v1.FeatureService/Report sink for checking the filter by hand.

Plain h2c (HTTP/2 with prior knowledge) on 127.0.0.1, no dependencies. Every Report is
decoded (generic protobuf wire format, field numbers of meshtune.proto) and printed as one
JSON line on stdout; the response carries the hints given with --hint.

  python3 grpc_sink.py --port 0 --hint outbound_echo,300,0,2,5000 [--delay-ms 0]

--hint is cluster,timeout_ms,max_retries(or -),concurrency_limit,ttl_ms and may repeat.
The chosen port is printed first as `listening <port>`.
"""
import argparse
import json
import socket
import struct
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


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


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def parse(buf):
    """Generic protobuf decode: {field: [values]} (bytes for length-delimited)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 1:
            v = struct.unpack_from("<d", buf, i)[0]
            i += 8
        elif wt == 2:
            n, i = read_varint(buf, i)
            v = bytes(buf[i:i + n])
            i += n
        elif wt == 5:
            v = struct.unpack_from("<I", buf, i)[0]
            i += 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(field, []).append(v)
    return out


UPSTREAM_FIELDS = {1: "cluster", 2: "requests", 3: "status_1xx", 4: "status_2xx", 5: "status_3xx",
                   6: "status_4xx", 7: "status_5xx", 8: "status_none", 9: "flag_uo",
                   10: "flag_ut", 11: "flag_uf", 12: "flag_uc", 13: "flag_urx", 14: "retries",
                   15: "inflight_max", 16: "inflight_avg", 17: "request_bytes",
                   18: "response_bytes", 19: "http1_requests", 20: "http2_requests",
                   21: "http3_requests", 22: "shed"}
REPORTER_FIELDS = {1: "namespace", 2: "workload", 3: "pod", 4: "vm_id", 5: "filter_version",
                   6: "node_id"}


def packed(b):
    vals, i = [], 0
    while i < len(b):
        v, i = read_varint(b, i)
        vals.append(v)
    return vals


def decode_report(msg):
    f = parse(msg)
    rep = {REPORTER_FIELDS.get(k, k): v[0].decode() for k, v in parse(f.get(1, [b""])[0]).items()}
    ups = []
    for raw in f.get(5, []):
        u = parse(raw)
        d = {}
        for k, v in u.items():
            name = UPSTREAM_FIELDS.get(k)
            if name == "cluster":
                d[name] = v[0].decode()
            elif name:
                d[name] = v[0]
            elif k == 23:
                h = parse(v[0])
                counts = packed(h.get(3, [b""])[0]) if h.get(3) else []
                d["latency"] = {"count": sum(counts), "sum_us": h.get(4, [0])[0],
                                "min_us": h.get(5, [0])[0], "max_us": h.get(6, [0])[0]}
        ups.append(d)
    return {"reporter": rep, "sequence": f.get(2, [0])[0],
            "window_start_unix_ms": f.get(3, [0])[0], "window_length_ms": f.get(4, [0])[0],
            "dropped_reports": f.get(6, [0])[0], "upstreams": ups}


def encode_response(hints, seq):
    out = bytearray()
    for cluster, timeout, retries, limit, ttl in hints:
        h = bytearray()
        c = cluster.encode()
        h += b"\x0a" + varint(len(c)) + c
        if timeout:
            h += b"\x10" + varint(timeout)
        if retries is not None:
            h += b"\x18" + varint(retries)
        if limit:
            h += b"\x20" + varint(limit)
        h += b"\x28" + varint(ttl)
        out += b"\x0a" + varint(len(h)) + h
    out += b"\x10" + varint(seq)
    return bytes(out)


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def serve(conn, args, lock):
    buf = b""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = conn.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk

    need(len(PREFACE))
    buf = buf[len(PREFACE):]
    conn.sendall(frame(SETTINGS, 0, 0))
    bodies = {}
    while True:
        need(9)
        length = int.from_bytes(buf[0:3], "big")
        ftype, flags = buf[3], buf[4]
        stream = struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF
        need(9 + length)
        payload, buf = buf[9:9 + length], buf[9 + length:]
        if ftype == SETTINGS and not flags & ACK:
            conn.sendall(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            conn.sendall(frame(PING, ACK, 0, payload))
        elif ftype == HEADERS:
            bodies.setdefault(stream, b"")
        elif ftype == DATA:
            bodies[stream] = bodies.get(stream, b"") + payload
            if length:
                conn.sendall(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", length)))
        elif ftype == GOAWAY:
            return
        if ftype in (HEADERS, DATA) and flags & END_STREAM:
            body = bodies.pop(stream, b"")
            msg = body[5:5 + struct.unpack(">I", body[1:5])[0]] if len(body) >= 5 else b""
            try:
                rep = decode_report(msg)
            except Exception as e:  # noqa: BLE001 - print and keep serving
                rep = {"error": str(e)}
            with lock:
                print(json.dumps(rep), flush=True)
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            resp = encode_response(args.hint, rep.get("sequence", 0))
            hdrs = b"\x88" + literal("content-type", "application/grpc")
            conn.sendall(frame(HEADERS, END_HEADERS, stream, hdrs)
                         + frame(DATA, 0, stream, b"\x00" + struct.pack(">I", len(resp)) + resp)
                         + frame(HEADERS, END_HEADERS | END_STREAM, stream,
                                 literal("grpc-status", "0")))


def hint_arg(s):
    c, t, r, l, ttl = s.split(",")
    return (c, int(t), None if r == "-" else int(r), int(l), int(ttl))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--hint", type=hint_arg, action="append", default=[])
    ap.add_argument("--delay-ms", type=int, default=0)
    args = ap.parse_args()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", args.port))
    s.listen(16)
    print(f"listening {s.getsockname()[1]}", flush=True)
    lock = threading.Lock()
    while True:
        conn, _ = s.accept()

        def run(c=conn):
            try:
                serve(c, args, lock)
            except (EOFError, OSError):
                pass
            finally:
                c.close()

        threading.Thread(target=run, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
