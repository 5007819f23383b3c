"""What the core asks its driver to do (see docs/core-api.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .events import Event


class Hook(enum.Enum):
    OUTPUT = "output"  # leaving this host towards the network
    INPUT = "input"  # arrived from the network for this host


@dataclass(frozen=True, slots=True)
class Verdict:
    """The fate of the hooked packet: None drops it, bytes accept it rewritten."""

    data: bytes | None


@dataclass(frozen=True, slots=True)
class Inject:
    """An extra packet (a split segment) to send (OUTPUT) or deliver locally (INPUT)."""

    data: bytes
    hook: Hook


@dataclass(frozen=True, slots=True)
class SendControl:
    """One UDP datagram from our control port to `dst`'s control port."""

    dst: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Notify:
    event: Event


Action = Verdict | Inject | SendControl | Notify
