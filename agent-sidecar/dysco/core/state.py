"""Per-session state kept by one agent.

A `Session` has up to two `Side`s: the left side faces the left neighbour (towards the
session's initiator), the right side faces the right neighbour. End hosts have one side,
middleboxes two. A side talks over one `Path` (a subsession), or over two during a
reconfiguration (the old `path` and the `new` one). All sequence numbers kept on a side
are in *local* space: as the application on this host sees them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import seq
from .control import Control

Tuple4 = tuple[int, int, int, int]


def reverse(t: Tuple4) -> Tuple4:
    return (t[1], t[0], t[3], t[2])


@dataclass(slots=True)
class Path:
    """One subsession seen from this agent, with its sequence translation.

    On the wire: seq of data we send = local + snd_off; seq of data we receive
    = wire + rcv_off in local space. Acks and SACK blocks are translated inversely.
    """

    sub_out: Tuple4  # (me, peer, my port, peer port): how we address packets we send
    snd_off: int = 0
    rcv_off: int = 0

    @property
    def peer(self) -> int:
        return self.sub_out[1]

    @property
    def sub_in(self) -> Tuple4:
        return reverse(self.sub_out)


class Phase(enum.Enum):
    ONE_PATH = "one-path"
    REQUESTING = "requesting"  # left anchor: requestLock sent
    SETTING_UP = "setting-up"  # left anchor: locked, new-path SYN sent
    REQUESTED = "requested"  # right anchor: ackLock sent
    WAITING = "waiting"  # right anchor: new-path SYN-ACK sent
    TWO_PATHS = "two-paths"  # either anchor: new data on the new path
    CANCELING = "canceling"  # left anchor: cancelLock sent


class Lock(enum.Enum):
    UNLOCKED = "unlocked"
    PENDING = "pending"
    LOCKED = "locked"


@dataclass(slots=True)
class Reconfig:
    """A reconfiguration this side anchors (as left or right anchor)."""

    rid: int
    role: str  # "left" or "right"
    other: int  # the other anchor
    hops: tuple[int, ...]
    started: float
    attempt: int = 1
    delta: int = 0  # the accumulated delta received from the other anchor
    cutoff_snd: int | None = None  # our stream: data below went on the old path
    cutoff_rcv: int | None = None  # peer stream: likewise, learnt in ACK / ACK_ACK
    old_rcvd_max: int | None = None  # highest peer seq end that came on the old path
    old_acked: int | None = None  # highest ack we sent on the old path
    old_data_since_ack: bool = False
    peer_complete: bool = False  # left anchor: got COMPLETE from the right anchor
    complete_sent: bool = False  # right anchor: COMPLETE sent, resent until acked
    tries: int = 0  # retransmissions of the current request
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    at: float
    right_anchor: int
    hops: tuple[int, ...]
    attempt: int


@dataclass(slots=True)
class Side:
    session: Session
    is_left: bool  # True: faces the left neighbour
    local: Tuple4  # tuple of packets arriving from this side, as delivered locally
    path: Path
    new: Path | None = None
    phase: Phase = Phase.ONE_PATH
    rc: Reconfig | None = None
    # lock of the subsession to our right (kept by its left end, so right sides only)
    lock: Lock = Lock.UNLOCKED
    lock_rid: int = 0
    lock_la: int = 0
    saved: Control | None = None  # a request blocked by our own pending request
    retry: Retry | None = None  # a reconfiguration to try again later
    # stream tracking, local space
    isn_in: int | None = None
    isn_out: int | None = None
    snd_max: int | None = None
    snd_acked: int | None = None
    rcv_max: int | None = None
    rcv_acked: int | None = None
    fin_out: int | None = None
    fin_in: int | None = None
    stall_since: float | None = None  # data outstanding and no ack since (end hosts)
    stall_armed: bool = False  # a stall check is pending in the timer heap

    @property
    def out_key(self) -> Tuple4:
        """Tuple of packets the local app sends towards this side."""
        return reverse(self.local)

    def done(self) -> bool:
        """Both FINs seen on this side and both acknowledged."""
        return (
            self.fin_out is not None
            and self.fin_in is not None
            and self.snd_acked is not None
            and self.rcv_acked is not None
            and seq.gt(self.snd_acked, self.fin_out)
            and seq.gt(self.rcv_acked, self.fin_in)
        )


@dataclass(slots=True)
class Session:
    sid: int
    role: str  # "left", "middle", "right"
    policy: str = ""
    revision: int = 0
    left: Side | None = None
    right: Side | None = None
    # middlebox waiting for its app to emit the SYN: where to go next
    pending_hops: tuple[int, ...] = ()
    tag: int | None = None
    syn_payload: bytes = b""  # the SYN list we appended, for retransmitted SYNs
    content_l2r: int = 0
    content_r2l: int = 0
    last_activity: float = 0.0
    closing_at: float | None = None  # lingering after close, freed at this time
    close_how: str = "fin"  # fin, rst, teardown, idle, handshake_timeout
    torn: bool = False  # old-path middlebox told to go away
    inserted: bool = False  # joined mid-session through a new path (saw no handshake)
    half_open: bool = False  # counted in the agent's half-open limit until the handshake ends
    rid: int = 0  # for an inserted session: the reconfiguration that created it
    removal: tuple[int, ...] | None = None  # ReplaceSelf wanted: replacement hops
    removal_tries: int = 0
    # The driver's kernel fast path rewrites this session's packets: the core sees none
    # of them, so it must not judge the session idle (the driver reports its end).
    offloaded: bool = False
    sides: list[Side] = field(default_factory=list)

    def tuple4(self) -> Tuple4:
        """The session as its left end's app sees it (left to right)."""
        if self.left is not None:
            return self.left.local
        assert self.right is not None
        return reverse(self.right.local)
