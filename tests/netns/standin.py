"""A stand-in for the protocol core: same methods as `dysco.core.Agent`, trivial logic.

It maps virtual TCP ports to real ones (client side: OUTPUT dport VPORT->RPORT, INPUT
sport RPORT->VPORT) with RFC 1624 incremental checksum updates, as the core does, so a
transfer only works if every rewritten packet reaches the wire with a valid checksum.
With `split`, data packets are cut in two: the first half is the verdict, the second
an Inject at the same hook, which exercises injection in both directions.
"""

from __future__ import annotations

import select
import struct
import threading
from typing import Any

from dysco.core.actions import Action, Hook, Inject, SendControl, Verdict
from dysco.dataplane import nfq, segment

VPORT, RPORT = 5201, 5301


def _update16(check: int, old: int, new: int) -> int:
    total = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class PortMapper:
    def __init__(self, *, split: bool = False, control_to: int | None = None,
                 mapping: dict[int, int] | None = None) -> None:
        self.out_map = mapping or {VPORT: RPORT}
        self.in_map = {real: virtual for virtual, real in self.out_map.items()}
        self.split = split
        self.control_to = control_to
        self.deadline: float | None = 0.0 if control_to is not None else None
        self.control_seen: list[tuple[int, bytes]] = []
        self.rewritten = 0
        self.injected = 0

    def packet(self, hook: Hook, data: bytes, now: float) -> list[Action]:
        b = bytearray(data)
        ihl = (b[0] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", b, ihl)
        if hook is Hook.OUTPUT and dport in self.out_map:
            off, old, new = ihl + 2, dport, self.out_map[dport]
        elif hook is Hook.INPUT and sport in self.in_map:
            off, old, new = ihl, sport, self.in_map[sport]
        else:
            return [Verdict(data)]
        struct.pack_into("!H", b, off, new)
        check = struct.unpack_from("!H", b, ihl + 16)[0]
        struct.pack_into("!H", b, ihl + 16, _update16(check, old, new))
        self.rewritten += 1
        out = bytes(b)
        total = int.from_bytes(b[2:4], "big")
        head = ihl + (b[ihl + 12] >> 4) * 4
        if not self.split or total - head < 2:
            return [Verdict(out)]
        # segment.split gives both halves complete checksums of their own.
        pieces = segment.split(out, head + (total - head + 1) // 2)
        self.injected += len(pieces) - 1
        return [Verdict(pieces[0]), *(Inject(p, hook) for p in pieces[1:])]

    def control(self, src: int, data: bytes, now: float) -> list[Action]:
        self.control_seen.append((src, data))
        return []

    def timer(self, now: float) -> list[Action]:
        self.deadline = None
        assert self.control_to is not None
        return [SendControl(self.control_to, b"hello from the stand-in")]

    def next_deadline(self) -> float | None:
        return self.deadline

    def command(self, command: Any, now: float) -> list[Action]:
        return []


class QueueLoop(threading.Thread):
    """Serve two queues with a processor, without the runtime (backend-level tests)."""

    def __init__(self, queues: dict[Hook, nfq.Queue], processor: PortMapper) -> None:
        super().__init__(daemon=True)
        self.queues = queues
        self.processor = processor
        self.stop = threading.Event()
        self.seen = {"packets": 0, "gso": 0, "csum_partial": 0, "max_len": 0}

    def run(self) -> None:
        by_fd = {q.fileno(): (h, q) for h, q in self.queues.items()}
        while not self.stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.1)
            for fd in ready:
                hook, queue = by_fd[fd]
                for pkt in queue.receive():
                    self.seen["packets"] += 1
                    self.seen["gso"] += pkt.gso
                    self.seen["csum_partial"] += pkt.csum_partial
                    self.seen["max_len"] = max(self.seen["max_len"], len(pkt.data))
                    verdict = self.processor.packet(hook, pkt.data, 0.0)[0]
                    assert isinstance(verdict, Verdict) and verdict.data is not None
                    queue.accept(pkt, verdict.data)
                queue.flush()
