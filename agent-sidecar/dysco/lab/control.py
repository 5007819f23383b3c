"""Reconfiguration orders for the lab's running agents: `dysco chain insert|remove|replace`.

The lab's agents (`LabAgents`) listen on a unix stream socket, one per lab prefix
(`socket_path`). An order is one JSON line, the answer one JSON line. The server turns
the order into the core command an operator or a middlebox would give, runs it in the
runtime's loop thread and, if asked, waits until the reconfigurations it started have
completed (or failed), so the answer carries order-to-completion times.

* ``insert``  --at POD --hops POD[,POD...]: POD becomes the left anchor and puts the
  hops between itself and its right neighbour (`InsertRight`).
* ``remove``  --middlebox POD: the middlebox asks its left neighbour to take it out
  (`ReplaceSelf` with no hops).
* ``replace`` --middlebox POD --with POD[,POD...]: the same, with replacements.

Sessions are chosen by a selector: ``dst`` (an IP, either end of the session) and
``port`` (either port); empty means every session of the pod. Scenarios give their
orders through the same socket, so the CLI and the scenarios share one code path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dysco.core import Selector
from dysco.core import commands as cmd

SOCKET_DIR = Path("/run/dysco-lab")
OPS = ("insert", "remove", "replace")


def socket_path(prefix: str) -> Path:
    return SOCKET_DIR / f"{prefix}agents.sock"


@dataclass(frozen=True)
class Order:
    op: str                          # insert | remove | replace
    at: str = ""                     # insert: the left anchor pod
    middlebox: str = ""              # remove / replace: the middlebox pod
    hops: tuple[str, ...] = ()       # insert / replace: the new middlebox pods, in order
    dst: str = ""                    # selector: an IP at either end ("" = any)
    port: int = 0                    # selector: a port at either end (0 = any)
    wait: float = 0.0                # seconds to wait for completion (0: don't wait)

    def validate(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r} (one of {', '.join(OPS)})")
        if self.op == "insert" and (not self.at or not self.hops):
            raise ValueError("insert needs --at and --hops")
        if self.op in ("remove", "replace") and not self.middlebox:
            raise ValueError(f"{self.op} needs --middlebox")
        if self.op == "replace" and not self.hops:
            raise ValueError("replace needs --with")
        if self.op == "remove" and self.hops:
            raise ValueError("remove takes no hops")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "hops": list(self.hops)})

    @staticmethod
    def from_json(text: str) -> Order:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("an order is a JSON object")
        known = set(Order.__dataclass_fields__)
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        doc["hops"] = tuple(str(h) for h in doc.get("hops", ()))
        doc["port"] = int(doc.get("port", 0))
        doc["wait"] = float(doc.get("wait", 0.0))
        order = Order(**doc)
        order.validate()
        return order

    def target(self) -> str:
        """The pod whose agent gets the command."""
        return self.at if self.op == "insert" else self.middlebox

    def command(self, ip: Callable[[str], int]) -> cmd.Command:
        """The core command; `ip` maps a pod name to its address."""
        sel = Selector(dst=frozenset({_ip_int(self.dst)}) if self.dst else frozenset(),
                       dst_ports=frozenset({self.port}) if self.port else frozenset())
        hops = tuple(ip(h) for h in self.hops)
        if self.op == "insert":
            return cmd.InsertRight(sel, hops)
        return cmd.ReplaceSelf(sel, hops)


def _ip_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


@dataclass
class Tracker:
    """Reconfiguration completions seen by the agents (fed from their notifications)."""

    done: int = 0                    # ReconfigDone at left anchors: one per session
    failed: int = 0                  # final ReconfigFailed
    durations: list[float] = field(default_factory=list)   # core's started -> finished
    done_at: list[float] = field(default_factory=list)     # monotonic time of each done
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_done(self, started: float, finished: float) -> None:
        with self.cond:
            self.done += 1
            self.durations.append(finished - started)
            self.done_at.append(time.monotonic())
            self.cond.notify_all()

    def on_failed(self) -> None:
        with self.cond:
            self.failed += 1
            self.cond.notify_all()

    def wait(self, done0: int, failed0: int, expect: int, timeout: float) -> bool:
        """Until `expect` more sessions completed or failed since (done0, failed0)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.done - done0 + self.failed - failed0 < expect:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


# How the server executes an order: returns (pod ns, sessions the command matched).
Executor = Callable[[Order], tuple[str, int]]


class Server:
    """Serves orders on `path` in a thread until `close()`."""

    def __init__(self, path: Path, execute: Executor, tracker: Tracker) -> None:
        self.path, self.execute, self.tracker = path, execute, tracker
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if _alive(path):
                raise RuntimeError(f"agents already serve orders on {path}")
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="dysco-lab-control",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            try:
                line = conn.makefile("r").readline()
                reply = self.answer(Order.from_json(line))
            except Exception as exc:  # the client gets the reason
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall((json.dumps(reply) + "\n").encode())

    def answer(self, order: Order) -> dict[str, Any]:
        t = self.tracker
        with t.cond:
            done0, failed0 = t.done, t.failed
        start = time.monotonic()
        ns, matched = self.execute(order)
        reply: dict[str, Any] = {"ok": True, "pod": ns, "sessions": matched}
        if order.wait > 0 and matched:
            complete = t.wait(done0, failed0, matched, order.wait)
            with t.cond:
                reply.update(done=t.done - done0, failed=t.failed - failed0,
                             complete=complete)
                times = sorted(at - start for at in t.done_at[done0:])
            reply["seconds"] = round(times[-1], 4) if times else None
            reply["p50_s"] = round(times[len(times) // 2], 4) if times else None
            reply["p99_s"] = round(times[min(len(times) - 1, int(len(times) * 0.99))], 4) \
                if times else None
            reply["ok"] = complete and reply["failed"] == 0
        return reply

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def send(path: Path, order: Order, timeout: float = 60.0) -> dict[str, Any]:
    """Give `order` to the agents serving on `path` and return their answer."""
    order.validate()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout + order.wait)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise RuntimeError(f"no lab agents serve orders on {path} (is a scenario "
                               "or `dysco lab agents` running?)") from exc
        sock.sendall((order.to_json() + "\n").encode())
        answer: dict[str, Any] = json.loads(sock.makefile("r").readline())
    return answer
