"""TCP endpoint tool for scenarios: move N bytes both ways at once and prove them intact.

Each session carries N bytes in each direction simultaneously. Both ends hash what they
send and what they receive with SHA-256, so a scenario proves the stream arrived
byte-exact in both directions even when middleboxes or Dysco rewrite every header. The
first 8 bytes the client sends are a random session token; the server reports it, so
sessions are paired even through NAT. A direction that makes no progress for longer
than `STALL_S` is reported as a stall, and a reset as the error "ECONNRESET".

All sessions of one process run in one thread on non-blocking sockets (`selectors`):
with a thread per direction, 200 sessions meant 400 threads contending for the GIL on
the same CPUs as the agents, and a blocking `sendall` of a whole chunk counted as one
step, so a sender waiting its fair share of a shared path looked stalled. Progress is
now every byte the kernel accepts or delivers.

Run inside a namespace as ``python -m dysco.lab.tcpio server|client ...``; the result
is one JSON document on stdout (the server first prints ``READY`` once listening).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import random
import selectors
import socket
import sys
import time
from dataclasses import asdict, dataclass

STALL_S = 2.0
TOKEN_LEN = 8
_CHUNK = 256 * 1024
# A paced sender sends 20 chunks a second, but no chunk under `PACE_CHUNK` bytes unless
# that would leave more than `PACE_STEP` s (well under the stall limit) between them;
# it starts at a random point of its first step. Per-packet work is what the agents
# pay for (200 sessions at 16K/s sent 1 KiB each every 50 ms), and 200 sessions
# sending in step would reach their queues in bursts.
PACE_STEP = 0.5
PACE_CHUNK = 16 * 1024
_SWEEP = 0.2  # how often every session is checked for the timeout
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
    gap_dir: str = ""        # the direction of that gap: "send" or "receive"
    stalled: bool = False
    error: str | None = None
    prefix: str = ""         # hex of the `skip` bytes a middlebox put before the stream


class Progress:
    """Last time a direction moved, and its longest gap so far (the stall detector)."""

    def __init__(self, now: float) -> None:
        self.last = now
        self.max_gap = 0.0
        self.max_gap_end = 0.0

    def tick(self, now: float) -> None:
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


def recv_exact(sock: socket.socket, n: int, first: bytes = b"") -> bytes:
    """At least `n` bytes: `first` and what it takes to complete them."""
    data = first
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("closed before the session token arrived")
        data += part
    return data


def _pool_start(token: bytes) -> int:
    return int.from_bytes(hashlib.sha256(token).digest()[:4], "big") % len(_POOL)


class _Session:
    """One connected socket moving `nbytes` each way; driven by `run_sessions`.

    Receiving: the first `skip` bytes are a middlebox's prefix (reported, not counted);
    a server then reads the client's token, which starts its stream. Sending: a client
    sends its token first; both then send pool bytes from a token-derived offset,
    paced to `rate` bytes/s when it is > 0."""

    def __init__(self, sock: socket.socket, nbytes: int, *, is_client: bool, skip: int,
                 rate: int, now: float) -> None:
        self.sock = sock
        self.res = SessionResult(local="{}:{}".format(*sock.getsockname()),
                                 peer="{}:{}".format(*sock.getpeername()))
        sock.setblocking(False)
        self.nbytes, self.skip, self.rate, self.start = nbytes, skip, rate, now
        floor = max(1024, min(PACE_CHUNK, int(rate * PACE_STEP)))
        self.chunk = _CHUNK if rate <= 0 else min(_CHUNK, max(rate // 20, floor))
        self.sha_out, self.sha_in = hashlib.sha256(), hashlib.sha256()
        self.head = bytearray()          # prefix (and a server's token) not yet complete
        self.lead = b""                  # bytes to send before the pool (client token)
        self.pos = -1                    # pool offset; -1 until the token is known
        self.paced_from = now + self._phase()  # a server's: from the token's arrival
        if is_client:
            token = random.randbytes(TOKEN_LEN)
            self.res.token, self.lead, self.pos = token.hex(), token, _pool_start(token)
        self.is_client = is_client
        self.sending = self.receiving = True
        self.progress = (Progress(now), Progress(now))  # send, receive

    def _phase(self) -> float:
        """A random start within the first pacing step."""
        return random.uniform(0, self.chunk / self.rate) if self.rate > 0 else 0.0

    @property
    def open(self) -> bool:
        return self.sending or self.receiving

    def send_at(self) -> float | None:
        """When this session may send next (None: nothing to send yet or any more)."""
        if not self.sending or self.pos < 0:
            return None
        return self.paced_from + self.res.sent / self.rate if self.rate > 0 else 0.0

    def on_writable(self, now: float) -> None:
        res = self.res
        if self.lead:
            data = memoryview(self.lead)
        else:
            data = memoryview(_POOL_WRAP)[self.pos:self.pos + min(self.chunk,
                                                                  self.nbytes - res.sent)]
        n = self.sock.send(data)
        self.sha_out.update(data[:n])
        res.sent += n
        if self.lead:
            self.lead = self.lead[n:]
        else:
            self.pos = (self.pos + n) % len(_POOL)
        self.progress[0].tick(now)
        if res.sent >= self.nbytes:
            self.sock.shutdown(socket.SHUT_WR)
            self.sending = False
            res.sha_sent = self.sha_out.hexdigest()

    def on_readable(self, buf: bytearray, now: float) -> None:
        res = self.res
        n = self.sock.recv_into(buf)
        if n == 0:
            if len(self.head) < self.skip + (0 if self.is_client else TOKEN_LEN):
                raise ConnectionError("closed before the session token arrived")
            self.receiving = False
            res.sha_received = self.sha_in.hexdigest()
            return
        self.progress[1].tick(now)
        data = memoryview(buf)[:n]
        need = self.skip + (0 if self.is_client else TOKEN_LEN)
        if len(self.head) < need:
            take = min(need - len(self.head), n)
            self.head += data[:take]
            data = data[take:]
            if len(self.head) < need:
                return
            res.prefix = bytes(self.head[:self.skip]).hex()
            if not self.is_client:
                token = bytes(self.head[self.skip:])
                res.token, self.pos = token.hex(), _pool_start(token)
                self.paced_from = now + self._phase()
                self.sha_in.update(token)
                res.received += TOKEN_LEN
        self.sha_in.update(data)
        res.received += len(data)

    def fail(self, exc: OSError) -> None:
        self.res.error = self.res.error or error_name(exc)
        self.sending = self.receiving = False

    def finish(self, now: float) -> SessionResult:
        self.sock.close()
        res = self.res
        res.sha_sent = res.sha_sent or self.sha_out.hexdigest()
        res.sha_received = res.sha_received or self.sha_in.hexdigest()
        res.seconds = round(now - self.start, 4)
        worst = max(self.progress, key=lambda p: p.max_gap)
        res.gap_dir = "send" if worst is self.progress[0] else "receive"
        res.max_gap_s = round(worst.max_gap, 3)
        res.max_gap_end = round(worst.max_gap_end, 3)
        res.stalled = res.max_gap_s > STALL_S
        return res


def run_sessions(socks: list[socket.socket], nbytes: int, is_client: bool,
                 timeout: float, skip: int = 0, rate: int = 0) -> list[SessionResult]:
    """Move `nbytes` each way on every socket at once, in this thread; close them.

    Work is per event: a session is looked at when its socket is ready or its pacing
    step is due (a heap), and all of them only every `_SWEEP` s for the timeout. A
    direction that makes no progress for `timeout` s ends its session with the error
    "TIMEOUT"."""
    now = time.monotonic()
    sessions = [_Session(s, nbytes, is_client=is_client, skip=skip, rate=rate, now=now)
                for s in socks]
    results: list[SessionResult | None] = [None] * len(sessions)
    sel = selectors.DefaultSelector()
    mask = [0] * len(sessions)             # what each socket is registered for
    due: list[tuple[float, int]] = []      # paced senders' next step (a heap)
    queued: list[float | None] = [None] * len(sessions)
    left = len(sessions)
    buf = bytearray(_CHUNK)

    def settle(i: int, now: float) -> None:
        """After anything happened to session i: its interest, its next step, its end."""
        nonlocal left
        s = sessions[i]
        want = 0
        if s.open:
            want = selectors.EVENT_READ if s.receiving else 0
            at = s.send_at()
            if at is not None and at <= now:
                want |= selectors.EVENT_WRITE
            elif at is not None and queued[i] != at:
                queued[i] = at
                heapq.heappush(due, (at, i))
        if want != mask[i]:
            if not mask[i]:
                sel.register(s.sock, want, i)
            elif not want:
                sel.unregister(s.sock)
            else:
                sel.modify(s.sock, want, i)
            mask[i] = want
        if not s.open and results[i] is None:
            results[i] = s.finish(now)
            left -= 1

    for i in range(len(sessions)):
        settle(i, now)
    sweep = now + _SWEEP
    while left:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, i = heapq.heappop(due)
            queued[i] = None
            settle(i, now)
        if now >= sweep:
            sweep = now + _SWEEP
            for i, s in enumerate(sessions):
                if results[i] is None and any(
                        active and now - p.last > timeout
                        for p, active in zip(s.progress, (s.sending, s.receiving),
                                             strict=True)):
                    s.fail(TimeoutError())
                    settle(i, now)
        wait = max(0.0, min(sweep, due[0][0] if due else sweep) - now)
        if not any(mask):
            time.sleep(wait)
            continue
        for key, events in sel.select(wait):
            i = key.data
            s = sessions[i]
            now = time.monotonic()
            try:
                if events & selectors.EVENT_READ and s.receiving:
                    s.on_readable(buf, now)
                if events & selectors.EVENT_WRITE and s.sending:
                    s.on_writable(now)
            except BlockingIOError:
                pass
            except OSError as exc:
                s.fail(exc)
            settle(i, now)
    sel.close()
    return [r for r in results if r is not None]


def serve(bind: str, port: int, sessions: int, nbytes: int, timeout: float,
          skip: int = 0, rate: int = 0) -> dict[str, object]:
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
    results = run_sessions(socks, nbytes, False, timeout, skip, rate)
    return {"role": "server", "error": None, "sessions": [asdict(r) for r in results]}


def connect(host: str, port: int, sessions: int, nbytes: int, timeout: float,
            skip: int = 0, rate: int = 0) -> dict[str, object]:
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
    results = run_sessions(socks, nbytes, True, timeout, skip, rate)
    return {"role": "client", "error": None, "connect_ms": connect_ms,
            "sessions": [asdict(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dysco.lab.tcpio", description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--host", default="0.0.0.0", help="bind (server) or connect (client) address")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=1 << 20, help="bytes per direction per session")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="a direction without progress this long fails (hard stall)")
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
