"""Latency probes for the bench: 1-byte request/response round trips and connect() time.

Run inside a namespace as ``python -m dysco.lab.pingpong server|rr|connect ...``. The
server echoes one byte per byte received and serves any number of connections, so one
server answers both probes; each probe prints one JSON document with p50/p99 in µs.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time


def _echo(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while data := conn.recv(1):
            conn.sendall(data)


def serve(host: str, port: int) -> None:
    with socket.create_server((host, port), backlog=512) as listener:
        print("READY", flush=True)
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _summary(samples_s: list[float]) -> dict[str, float]:
    us = sorted(s * 1e6 for s in samples_s)
    q = statistics.quantiles(us, n=100, method="inclusive")
    return {"n": len(us), "p50_us": round(q[49], 1), "p99_us": round(q[98], 1),
            "mean_us": round(statistics.fmean(us), 1)}


def round_trips(host: str, port: int, count: int) -> dict[str, float]:
    """`count` 1-byte ping-pongs on one connection (after 100 warm-up rounds)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for i in range(count + 100):
            t0 = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("echo lost")
            if i >= 100:
                samples.append(time.perf_counter() - t0)
    return _summary(samples)


def connects(host: str, port: int, count: int) -> dict[str, float]:
    """Time `count` connect() calls (handshake until the SYN-ACK is in)."""
    samples = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        t0 = time.perf_counter()
        s.connect((host, port))
        samples.append(time.perf_counter() - t0)
        s.close()
    return _summary(samples)


def hold(host: str, port: int, count: int, parallel: int = 1) -> int:
    """Open `count` connections (`parallel` at a time) and echo one byte on each; print a
    JSON line; wait for a
    line on stdin (the bench reconfigures them meanwhile); echo on each again and print
    how many still work. For timing reconfigurations of many idle sessions."""
    socks: list[socket.socket] = []
    t0 = time.perf_counter()

    def open_some(n: int) -> None:
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"o")
            if s.recv(1) != b"o":
                raise ConnectionError("echo lost")
            socks.append(s)
    workers = [threading.Thread(target=open_some, args=(count // parallel
                                                         + (i < count % parallel),))
               for i in range(parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"open": len(socks), "seconds": round(time.perf_counter() - t0, 3)}),
          flush=True)
    sys.stdin.readline()
    ok = 0
    for s in socks:
        try:
            s.sendall(b"k")
            ok += s.recv(1) == b"k"
        except OSError:
            pass
    for s in socks:
        s.close()
    print(json.dumps({"ok": ok, "failed": len(socks) - ok}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dysco.lab.pingpong")
    ap.add_argument("mode", choices=["server", "rr", "connect", "hold"])
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=5002)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=1, help="hold: connections opened at once")
    a = ap.parse_args(argv)
    if a.mode == "server":
        serve(a.host, a.port)
        return 0
    if a.mode == "hold":
        return hold(a.host, a.port, a.count, a.parallel)
    probe = round_trips if a.mode == "rr" else connects
    json.dump(probe(a.host, a.port, a.count), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
