"""TCP endpoint tool for scenarios: move N bytes both ways at once and prove them intact.

Each session carries N bytes in each direction simultaneously. Both ends hash what they
send and what they receive with SHA-256, so a scenario proves the stream arrived
byte-exact in both directions even when middleboxes or Dysco rewrite every header. The
first 8 bytes the client sends are a random session token; the server reports it, so
sessions are paired even through NAT. A direction that makes no progress for longer
than `STALL_S` is reported as a stall, and a reset as the error "ECONNRESET".

Run inside a namespace as ``python -m dysco.lab.tcpio server|client ...``; the result
is one JSON document on stdout (the server first prints ``READY`` once listening).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

STALL_S = 2.0
TOKEN_LEN = 8
_CHUNK = 256 * 1024
_POOL = random.Random(2016).randbytes(4 * 1024 * 1024 + 4099)
_POOL_WRAP = _POOL + _POOL[:_CHUNK]


@dataclass
class SessionResult:
    token: str = ""
    local: str = ""
    peer: str = ""
    sent: int = 0
    received: int = 0
    sha_sent: str = ""
    sha_received: str = ""
    seconds: float = 0.0
    max_gap_s: float = 0.0   # longest time a direction made no progress
    max_gap_end: float = 0.0  # when it ended: time.monotonic(), which every namespace
                              # of the host shares, so it lines up with agent traces
    stalled: bool = False
    error: str | None = None
    prefix: str = ""         # hex of the `skip` bytes a middlebox put before the stream


class Progress:
    """Last time each direction moved, for the stall detector."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.max_gap = 0.0
        self.max_gap_end = 0.0
        self.lock = threading.Lock()

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last > self.max_gap:
                self.max_gap = now - self.last
                self.max_gap_end = now
            self.last = now


def error_name(exc: OSError) -> str:
    if isinstance(exc, ConnectionResetError):
        return "ECONNRESET"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TIMEOUT"
    return f"{type(exc).__name__}: {exc}"


def send_stream(sock: socket.socket, token: bytes, nbytes: int, lead: bytes,
                res: SessionResult, prog: Progress, rate: int = 0) -> None:
    """Send `nbytes`; `rate` > 0 paces the sending to that many bytes per second."""
    sha = hashlib.sha256()
    chunk_max = _CHUNK if rate <= 0 else max(1024, min(_CHUNK, rate // 20))
    start = time.monotonic()
    pos = int.from_bytes(hashlib.sha256(token).digest()[:4], "big") % len(_POOL)
    view = memoryview(_POOL_WRAP)
    try:
        if lead:
            sock.sendall(lead)
            sha.update(lead)
            res.sent += len(lead)
        while res.sent < nbytes:
            if rate > 0:
                ahead = res.sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            n = min(chunk_max, nbytes - res.sent)
            chunk = view[pos:pos + n]
            sock.sendall(chunk)
            sha.update(chunk)
            res.sent += n
            pos = (pos + n) % len(_POOL)
            prog.tick()
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        res.error = res.error or error_name(exc)
    res.sha_sent = sha.hexdigest()


def receive_stream(sock: socket.socket, res: SessionResult, prog: Progress,
                   first: bytes = b"") -> None:
    sha = hashlib.sha256(first)
    res.received = len(first)
    buf = bytearray(_CHUNK)
    try:
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                break
            sha.update(memoryview(buf)[:n])
            res.received += n
            prog.tick()
    except OSError as exc:
        res.error = res.error or error_name(exc)
    res.sha_received = sha.hexdigest()


def recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    """At least `n` bytes: `first` and what it takes to complete them."""
    data = first
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("closed before the session token arrived")
        data += part
    return data


def exchange(sock: socket.socket, nbytes: int, *, is_client: bool, timeout: float,
             skip: int = 0, rate: int = 0) -> SessionResult:
    """Send and receive `nbytes` at once on a connected socket; close it at the end.

    The first `skip` received bytes are not part of the stream (a proxy's banner):
    they are reported as `prefix` and left out of the count and the hash."""
    res = SessionResult(local="{}:{}".format(*sock.getsockname()),
                        peer="{}:{}".format(*sock.getpeername()))
    sock.settimeout(timeout)
    start = time.monotonic()
    prog = [Progress(), Progress()]
    first = b""
    sender: threading.Thread | None = None
    try:
        if is_client:
            token = random.randbytes(TOKEN_LEN)
            sender = threading.Thread(target=send_stream,
                                      args=(sock, token, nbytes, token, res, prog[0],
                                            rate))
            sender.start()
            res.prefix = recv_exact(sock, skip).hex()
        else:
            res.prefix = recv_exact(sock, skip).hex()
            token = first = recv_exact(sock, TOKEN_LEN)
            sender = threading.Thread(target=send_stream,
                                      args=(sock, token, nbytes, b"", res, prog[0], rate))
            sender.start()
        res.token = token.hex()
        receive_stream(sock, res, prog[1], first)
    except OSError as exc:
        res.error = error_name(exc)
    finally:
        if sender is not None:
            sender.join()
        sock.close()
    res.seconds = round(time.monotonic() - start, 4)
    worst = max(prog, key=lambda p: p.max_gap)
    res.max_gap_s = round(worst.max_gap, 3)
    res.max_gap_end = round(worst.max_gap_end, 3)
    res.stalled = res.max_gap_s > STALL_S
    return res


def _run_sessions(socks: list[socket.socket], nbytes: int, is_client: bool,
                  timeout: float, skip: int, rate: int = 0) -> list[SessionResult]:
    results: list[SessionResult] = [SessionResult() for _ in socks]

    def one(i: int) -> None:
        results[i] = exchange(socks[i], nbytes, is_client=is_client, timeout=timeout,
                              skip=skip, rate=rate)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(socks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def serve(bind: str, port: int, sessions: int, nbytes: int, timeout: float,
          skip: int = 0, rate: int = 0) -> dict[str, Any]:
    """Accept `sessions` connections and run them all at once."""
    listener = socket.create_server((bind, port), backlog=max(16, sessions))
    listener.settimeout(timeout)
    print("READY", flush=True)
    socks = []
    try:
        for _ in range(sessions):
            socks.append(listener.accept()[0])
    except OSError as exc:
        for s in socks:
            s.close()
        return {"role": "server", "error": error_name(exc), "sessions": []}
    finally:
        listener.close()
    results = _run_sessions(socks, nbytes, False, timeout, skip, rate)
    return {"role": "server", "error": None, "sessions": [asdict(r) for r in results]}


def connect(host: str, port: int, sessions: int, nbytes: int, timeout: float,
            skip: int = 0, rate: int = 0) -> dict[str, Any]:
    """Open `sessions` connections, timing each connect(), then run them all at once."""
    socks, connect_ms = [], []
    try:
        for _ in range(sessions):
            t0 = time.perf_counter()
            socks.append(socket.create_connection((host, port), timeout=timeout))
            connect_ms.append(round((time.perf_counter() - t0) * 1000, 3))
    except OSError as exc:
        for s in socks:
            s.close()
        return {"role": "client", "error": error_name(exc), "sessions": []}
    results = _run_sessions(socks, nbytes, True, timeout, skip, rate)
    return {"role": "client", "error": None, "connect_ms": connect_ms,
            "sessions": [asdict(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dysco.lab.tcpio", description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--host", default="0.0.0.0", help="bind (server) or connect (client) address")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=1 << 20, help="bytes per direction per session")
    ap.add_argument("--timeout", type=float, default=10.0, help="socket timeout (hard stall)")
    ap.add_argument("--skip", type=int, default=0,
                    help="received bytes that precede the stream (a proxy's banner)")
    ap.add_argument("--rate", type=int, default=0,
                    help="pace each direction of each session to this many bytes/s")
    a = ap.parse_args(argv)
    if a.role == "server":
        out = serve(a.host, a.port, a.sessions, a.bytes, a.timeout, a.skip, a.rate)
    else:
        out = connect(a.host, a.port, a.sessions, a.bytes, a.timeout, a.skip, a.rate)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
