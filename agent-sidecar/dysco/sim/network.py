"""The simulated network: per-packet delay with jitter (so reordering), loss, duplication."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .engine import Engine


@dataclass
class LinkModel:
    delay: float = 0.001
    jitter: float = 0.001
    loss: float = 0.0
    dup: float = 0.0


class Network:
    def __init__(self, engine: Engine, rng: random.Random, model: LinkModel) -> None:
        self.engine = engine
        self.rng = rng
        self.model = model
        self.packets: dict[int, Callable[[bytes], None]] = {}
        self.controls: dict[int, Callable[[int, bytes], None]] = {}
        self.down: set[int] = set()  # hosts that silently drop control messages
        self.sent = 0
        self.lost = 0

    def attach(
        self, address: int, on_packet: Callable[[bytes], None],
        on_control: Callable[[int, bytes], None],
    ) -> None:
        self.packets[address] = on_packet
        self.controls[address] = on_control

    def _deliver(self, fn: Callable[[], None]) -> None:
        m = self.model
        self.sent += 1
        copies = 2 if self.rng.random() < m.dup else 1
        for _ in range(copies):
            if self.rng.random() < m.loss:
                self.lost += 1
                continue
            self.engine.after(m.delay + self.rng.random() * m.jitter, fn)

    def send_packet(self, data: bytes) -> None:
        dst = int.from_bytes(data[16:20], "big")
        target = self.packets.get(dst)
        if target is not None:
            self._deliver(lambda: target(data))

    def send_control(self, src: int, dst: int, data: bytes) -> None:
        target = self.controls.get(dst)
        if target is None or dst in self.down or src in self.down:
            return
        self._deliver(lambda: target(src, data))
