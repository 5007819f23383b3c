"""Notifications: what happened, for metrics, logs and the operator."""

from __future__ import annotations

from dataclasses import dataclass

Tuple4 = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Input refused (malformed packet or control message); no state changed."""

    kind: str  # "packet" or "control"
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session: Tuple4
    policy: str
    role: str  # "left", "middle", "right"


@dataclass(frozen=True, slots=True)
class SessionClosed:
    session: Tuple4
    how: str  # "fin", "rst", "idle", "teardown", "kernel" (an offloaded session expired)


@dataclass(frozen=True, slots=True)
class ReconfigStarted:
    session: Tuple4
    rid: int
    right_anchor: int
    hops: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReconfigDone:
    session: Tuple4
    rid: int
    role: str  # "left" or "right" anchor
    started: float
    finished: float


@dataclass(frozen=True, slots=True)
class ReconfigFailed:
    session: Tuple4
    rid: int
    reason: str
    final: bool  # False when the agent will retry


@dataclass(frozen=True, slots=True)
class HopFailed:
    """A chained session made no progress (a hop on its path is dead): it was reset."""

    session: Tuple4
    peer: int  # the neighbour on the dead path
    how: str  # "detected" (no acks here) or "aborted" (the other end detected it)


Event = (Rejected | SessionOpened | SessionClosed | ReconfigStarted | ReconfigDone
         | ReconfigFailed | HopFailed)
