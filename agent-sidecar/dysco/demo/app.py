"""The demo's in-pod programs: ``dysco demo-app server|client|middlebox``.

* ``server``: accepts sessions on ``--port``; each one sends a paced stream back until the
  client's stream ends, hashing what it sends and receives (SHA-256).
* ``client``: opens sessions to ``--target`` when told to over HTTP; each one sends a paced
  stream until it is told to stop, then half-closes and reads the server's stream to its end.
* ``middlebox``: turns the pod into a firewall (`dysco.middleboxes.firewall`) or a
  stream-changing terminating proxy (`dysco.middleboxes.proxy`); on SIGTERM it keeps
  forwarding for ``--drain-seconds`` (the agent moves its sessions away meanwhile).

Every program serves read-only JSON on ``--http`` (GET ``/sessions``, ``/counters``); the
client also takes ``POST /start?label=&sessions=&rate=`` and ``POST /stop?label=``. A
session is identified by the 8-byte random token its client sends first, so both ends
can be paired. A proxy on the path puts a banner line before each direction; the
receiver recognises it (``BANNER_MARK``), reports it as ``prefix`` and leaves it out of the
hash, so the hashes compare the applications' streams.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dysco.lab.tcpio import SessionResult, error_name, recv_exact
from dysco.middleboxes import Middlebox
from dysco.middleboxes.firewall import Firewall
from dysco.middleboxes.proxy import Proxy

BANNER_MARK = b"dysco-proxy:"
TOKEN_LEN = 8
_CHUNK = 16 * 1024
_POOL = random.Random(2017).randbytes(1 << 20)
_POOL_WRAP = _POOL + _POOL[:_CHUNK]
SELF_NS = "/proc/self/ns/net"


@dataclass
class Live(SessionResult):
    """A session as it runs: `SessionResult` plus its batch label and state."""

    label: str = ""
    state: str = "running"  # running | done


class Stream:
    """One side of a session: a paced sender and a receiver, each in its own thread."""

    def __init__(self, sock: socket.socket, res: Live, rate: int) -> None:
        self.sock, self.res, self.rate = sock, res, rate
        self.stop = threading.Event()
        self.sha_out = hashlib.sha256()
        self.sha_in = hashlib.sha256()

    def send(self, lead: bytes = b"") -> None:
        """Send paced bytes until `stop` is set, then half-close."""
        res, start = self.res, time.monotonic()
        pos = random.randrange(len(_POOL))
        view = memoryview(_POOL_WRAP)
        try:
            if lead:
                self.sock.sendall(lead)
                self.sha_out.update(lead)
                res.sent += len(lead)
            while not self.stop.is_set():
                ahead = res.sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    self.stop.wait(min(ahead, 0.5))
                    continue
                chunk = view[pos:pos + _CHUNK]
                self.sock.sendall(chunk)
                self.sha_out.update(chunk)
                res.sent += len(chunk)
                pos = (pos + _CHUNK) % len(_POOL)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            res.error = res.error or error_name(exc)
        res.sha_sent = self.sha_out.hexdigest()

    def receive(self, first: bytes = b"") -> None:
        """Read to the end of the peer's stream."""
        res = self.res
        self.sha_in.update(first)
        res.received += len(first)
        buf = bytearray(_CHUNK * 4)
        last = time.monotonic()
        try:
            while n := self.sock.recv_into(buf):
                self.sha_in.update(memoryview(buf)[:n])
                res.received += n
                now = time.monotonic()
                res.max_gap_s = round(max(res.max_gap_s, now - last), 3)
                last = now
        except OSError as exc:
            res.error = res.error or error_name(exc)
        res.sha_received = self.sha_in.hexdigest()


def read_prefix(sock: socket.socket) -> tuple[bytes, bytes]:
    """(banner line put in front by a proxy, or b""; the first bytes of the stream)."""
    head = b""
    while len(head) < len(BANNER_MARK):
        part = sock.recv(len(BANNER_MARK) - len(head))
        if not part:
            return b"", head
        head += part
        if not BANNER_MARK.startswith(head):
            return b"", head
    while not head.endswith(b"\n"):
        part = sock.recv(1)
        if not part:
            break
        head += part
    return head, b""


class Registry:
    """Sessions of this program, for /sessions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: list[Live] = []
        self.streams: list[Stream] = []

    def add(self, stream: Stream) -> None:
        with self.lock:
            self.sessions.append(stream.res)
            self.streams.append(stream)

    def snapshot(self, label: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [asdict(s) for s in self.sessions if label in (None, s.label)]


def _finish(stream: Stream, started: float) -> None:
    stream.res.seconds = round(time.monotonic() - started, 3)
    stream.res.state = "done"
    stream.sock.close()


def serve(port: int, rate: int, reg: Registry) -> None:
    """Accept sessions forever; each echoes a paced stream until the client's ends."""
    listener = socket.create_server(("0.0.0.0", port), backlog=256)

    def one(sock: socket.socket) -> None:
        started = time.monotonic()
        res = Live(local="{}:{}".format(*sock.getsockname()),
                   peer="{}:{}".format(*sock.getpeername()))
        stream = Stream(sock, res, rate)
        try:
            prefix, first = read_prefix(sock)
            res.prefix = prefix.hex()
            head = recv_exact(sock, TOKEN_LEN, first)
        except OSError as exc:
            res.error = error_name(exc)
            _finish(stream, started)
            return
        res.token = head[:TOKEN_LEN].hex()
        reg.add(stream)
        sender = threading.Thread(target=stream.send, daemon=True)
        sender.start()
        stream.receive(head)
        stream.stop.set()  # the client is done: finish our direction too
        sender.join()
        _finish(stream, started)

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=one, args=(sock,), daemon=True).start()


def open_session(target: tuple[str, int], rate: int, label: str, reg: Registry) -> None:
    """One client session: connect, send the token and a paced stream until stopped."""
    started = time.monotonic()
    res = Live(label=label)
    token = os.urandom(TOKEN_LEN)
    res.token = token.hex()
    try:
        sock = socket.create_connection(target, timeout=10)
    except OSError as exc:
        res.error, res.state = error_name(exc), "done"
        with reg.lock:
            reg.sessions.append(res)
        return
    sock.settimeout(None)
    res.local = "{}:{}".format(*sock.getsockname())
    res.peer = "{}:{}".format(*sock.getpeername())
    stream = Stream(sock, res, rate)
    reg.add(stream)
    sender = threading.Thread(target=stream.send, args=(token,), daemon=True)
    sender.start()
    try:
        prefix, first = read_prefix(sock)
        res.prefix = prefix.hex()
    except OSError as exc:
        res.error, first = error_name(exc), b""
    stream.receive(first)
    sender.join()
    _finish(stream, started)


class Handler(BaseHTTPRequestHandler):
    """GET /sessions[?label=], /counters; client: POST /start, /stop."""

    reg: Registry
    target: tuple[str, int] | None = None
    box: Middlebox | None = None

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/sessions":
            self._json(200, {"sessions": self.reg.snapshot(q.get("label"))})
        elif url.path == "/counters":
            self._json(200, self.box.counters() if self.box else {})
        elif url.path == "/healthz":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        label = q.get("label", "default")
        if url.path == "/start" and self.target is not None:
            n, rate = int(q.get("sessions", "1")), int(q.get("rate", "65536"))
            for _ in range(n):
                threading.Thread(target=open_session, args=(self.target, rate, label,
                                                              self.reg), daemon=True).start()
            self._json(200, {"started": n, "label": label})
        elif url.path == "/stop":
            with self.reg.lock:
                streams = [s for s in self.reg.streams if s.res.label == label]
            for s in streams:
                s.stop.set()
            self._json(200, {"stopped": len(streams), "label": label})
        else:
            self._json(404, {"error": "not found"})

    def _json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _http(port: int, **attrs: Any) -> ThreadingHTTPServer:
    handler = type("H", (Handler,), attrs)
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _wait_for_term() -> None:
    done = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    done.wait()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dysco demo-app``."""
    reg = Registry()
    if args.role == "server":
        _http(args.http, reg=reg)
        threading.Thread(target=serve, args=(args.port, args.rate, reg), daemon=True).start()
        print(f"server: port {args.port}, stream {args.rate} B/s per session", flush=True)
        _wait_for_term()
        return 0
    if args.role == "client":
        _http(args.http, reg=reg, target=(args.target, args.port))
        print(f"client: sessions go to {args.target}:{args.port}", flush=True)
        _wait_for_term()
        return 0
    box: Middlebox = (Firewall(SELF_NS, ports=(args.port,)) if args.kind == "firewall"
                      else Proxy(SELF_NS, port=args.port))
    box.start()
    _http(args.http, reg=reg, box=box)
    print(f"middlebox: {args.kind} for port {args.port}", flush=True)
    _wait_for_term()
    print(f"SIGTERM: forwarding {args.drain_seconds} s more while sessions move", flush=True)
    time.sleep(args.drain_seconds)
    print(json.dumps({"counters": box.stop()}), flush=True)
    return 0


def add_app_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo-app", help="the demo's in-pod programs (server, client, middlebox)",
        description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["server", "client", "middlebox"])
    p.add_argument("--port", type=int, default=5001, help="the chained TCP port")
    p.add_argument("--http", type=int, default=8080, help="port of the JSON endpoint")
    p.add_argument("--rate", type=int, default=65536, help="server: bytes/s per session")
    p.add_argument("--target", default="127.0.0.1", help="client: the server's address")
    p.add_argument("--kind", choices=["firewall", "proxy"], default="firewall")
    p.add_argument("--drain-seconds", type=float, default=15.0,
                   help="middlebox: how long it keeps forwarding after SIGTERM")
    p.set_defaults(func=run)
    return p
