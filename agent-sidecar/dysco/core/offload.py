"""What a driver's kernel fast path may take over, and handing sessions back and forth.

An end host's session in its steady state is a fixed rewrite: the session tuple to one
subsession tuple plus constant sequence offsets. A driver can have the kernel do that
(conntrack NAT and seqadj, see docs/dataplane.md) and stop showing the core the
session's packets. The core keeps the session (reconfiguration, teardown), marked
`offloaded`; the driver hands it back before a reconfiguration needs per-packet
decisions, and tells the core when the kernel saw the session end.

While offloaded the core's stream tracking goes stale; the core relearns it from the
first packets after the hand-back (acks bound what was sent, datapath.track_*), which
is why a driver must hand the session back when the reconfiguration *starts* (lock),
an RTT or more before cutoffs are taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .actions import Action
from .agent import Agent
from .state import Lock, Phase, Session, Side, Tuple4, reverse


@dataclass(frozen=True, slots=True)
class Offload:
    """The fixed rewrite of one end host's session, as the kernel should apply it."""

    sid: int
    local_out: Tuple4  # (src, dst, sport, dport) of packets the app sends
    sub_out: Tuple4  # what they become on the wire
    snd_off: int  # wire seq = local seq + snd_off (our stream)
    rcv_off: int  # local seq = wire seq + rcv_off (the peer's stream)


def _steady(side: Side) -> bool:
    s = side.session
    return (
        len(s.sides) == 1
        and not s.torn and s.closing_at is None and s.removal is None
        and not s.pending_hops
        and side.phase is Phase.ONE_PATH and side.rc is None and side.new is None
        and side.lock is Lock.UNLOCKED and side.retry is None and side.saved is None
        and side.isn_in is not None and side.isn_out is not None
        and side.snd_acked is not None and side.rcv_acked is not None
        and side.fin_in is None and side.fin_out is None
    )


@dataclass(frozen=True, slots=True)
class MbOffload:
    """The rewrites of one middlebox session, as (match, rewrite to) tuple pairs.

    `inbound`: the subsession a packet arrives on -> the session as delivered to the
    middlebox app, from the left and from the right neighbour. `outbound`: the session
    as the app emits it -> the subsession it leaves on, towards the right and the left.
    The app may change the tuple (a NAT): the right side's tuples are the ones the app
    emitted, which the core matched to the session by its SYN tag at setup."""

    sid: int
    inbound: tuple[tuple[Tuple4, Tuple4], tuple[Tuple4, Tuple4]]
    outbound: tuple[tuple[Tuple4, Tuple4], tuple[Tuple4, Tuple4]]

    @property
    def session(self) -> Tuple4:
        """The session tuple as the app receives it from the left (left to right)."""
        return self.inbound[0][1]


def _blind(s: Session) -> bool:
    """The core never saw the app's replies leave towards the left: a DNAT app's
    replies get their source restored after our output hook (docs/dataplane.md), so on
    the queue path they pass it unrecognised. The maps match them after NAT."""
    return s.left is not None and s.left.isn_out is None and s.left.snd_max is None


def _mb_side_steady(side: Side, keeping: bool, blind: bool) -> bool:
    p = side.path
    leftward_unseen = blind and side.is_left
    fins = (side.fin_in, side.fin_out)
    return (
        side.phase is Phase.ONE_PATH and side.rc is None and side.new is None
        and side.retry is None and p.snd_off == 0 and p.rcv_off == 0
        and side.rcv_max is not None and (leftward_unseen or side.snd_max is not None)
        # past the handshake (the third ACK went through the core)
        and side.snd_acked is not None and (leftward_unseen or side.rcv_acked is not None)
        # The core must see the acks that close the session: an offloaded one is kept
        # until both FINs passed (until the first if the core cannot see both), and a
        # session is not offloaded at all after a FIN.
        and (fins.count(None) == 2 or (keeping and not blind and None in fins))
    )


def mb_steady(s: Session, keeping: bool = False) -> bool:
    """A middlebox session whose packets need no decision: both subsessions up, no
    FIN (`keeping` an offloaded one: not both FINs) or RST, no sequence offset, not an
    anchor of a reconfiguration, not being removed, not torn down. Locks it merely
    forwards (a reconfiguration between other anchors) need no per-packet work."""
    if s.left is None or s.right is None or len(s.sides) != 2:
        return False
    if s.inserted:
        # Joined mid-stream through a new path: offloading it during the anchors'
        # two-path phase left reconfigurations unfinished (bulk idle replaces, binding
        # insert; cause not found), so such a session stays on the queue path.
        return False
    blind = _blind(s)
    return (
        not s.torn and s.closing_at is None and s.removal is None
        and not s.pending_hops
        and _mb_side_steady(s.left, keeping, blind)
        and _mb_side_steady(s.right, keeping, blind)
    )


def mb_candidate(agent: Agent, t: Tuple4) -> MbOffload | None:
    """The rewrites of the middlebox session that tuple `t` (either direction, as the
    app sees it) belongs to, if it can be offloaded now."""
    side = agent.by_out.get(t) or agent.by_out.get(reverse(t))
    if side is None:
        return None
    s = side.session
    if s.offloaded or not mb_steady(s):
        return None
    left, right = s.left, s.right
    assert left is not None and right is not None
    return MbOffload(
        s.sid,
        ((left.path.sub_in, left.local), (right.path.sub_in, right.local)),
        ((right.out_key, right.path.sub_out), (left.out_key, left.path.sub_out)),
    )


def mb_handback(agent: Agent, sids: Iterable[int]) -> list[int]:
    """Those of `sids` (offloaded middlebox sessions) that need the core's per-packet
    decisions again, or are gone: a reconfiguration anchored here, a removal (splice)
    of this middlebox, both FINs or an RST seen, teardown."""
    out = []
    for sid in sids:
        s = agent.sessions.get(sid)
        if s is None or not mb_steady(s, keeping=True):
            out.append(sid)
    return out


def anchored(agent: Agent) -> list[int]:
    """Sessions with a reconfiguration anchored here (cheap: no scan of all sessions)."""
    return [side.session.sid for side in agent.by_rid.values()]


def mb_probes(agent: Agent, sid: int) -> list[tuple[Tuple4, int, int]]:
    """Segments that make the sockets at both ends of a middlebox session handed back
    for a reconfiguration answer with their real next sequence numbers and acks:
    (wire tuple, seq, ack), one per side, sent towards that side's neighbour. As with
    `probe`, one byte wholly below what the far socket has received (it drops the
    segment and acks at once); the answers cross this middlebox, whose core relearns
    both streams (bare acks bound what was sent, datapath.track_in/out) before the
    cutoffs are taken. None for a side that saw a FIN: the close passes the core."""
    s = agent.sessions.get(sid)
    if s is None or len(s.sides) != 2:
        return []
    out = []
    for side in s.sides:
        if (side.snd_acked is None or side.rcv_acked is None or side.fin_in is not None
                or side.fin_out is not None):
            continue
        p = side.path
        out.append((p.sub_out, (side.snd_acked - 2 + p.snd_off) & 0xFFFFFFFF,
                    (side.rcv_acked - p.rcv_off) & 0xFFFFFFFF))
    return out


def candidate(agent: Agent, local_out: Tuple4) -> Offload | None:
    """The rewrite for the session whose app sends `local_out`, if it can be offloaded
    now: an end host (one side), handshake done, no FIN, no reconfiguration."""
    side = agent.by_out.get(local_out)
    if side is None or side.session.offloaded or not _steady(side):
        return None
    p = side.path
    return Offload(side.session.sid, side.out_key, p.sub_out, p.snd_off, p.rcv_off)


def set_offloaded(agent: Agent, sid: int, on: bool, now: float) -> Session | None:
    """Record that the kernel took the session over (`on`) or handed it back. The
    dead-hop watch stops: the core will not see the acks that would end a stall."""
    s = agent.sessions.get(sid)
    if s is not None:
        s.offloaded = on
        s.last_activity = now
        for side in s.sides:
            side.stall_since = None
    return s


def reconfiguring(agent: Agent) -> list[int]:
    """Offloaded end-host sessions that a reconfiguration anchored here has reached: the
    driver must hand them back at once. (Middlebox sessions: `mb_handback`.)"""
    return [side.session.sid for side in agent.by_rid.values()
            if side.session.offloaded and len(side.session.sides) == 1]


def probe(agent: Agent, sid: int) -> tuple[Tuple4, int, int] | None:
    """A segment that makes the local socket of a handed-back session answer with an
    ack carrying its real next sequence number and ack: (tuple as delivered locally,
    seq, ack) of one byte of data that lies wholly below what the socket has received.
    The socket drops it and acks at once (RFC 793, as for a retransmission); the answer
    passes the core, which relearns the stream it did not see, and reaches the peer,
    whose core relearns our acks. One byte, not a bare ack: the kernel answers bare
    out-of-window acks at most every 0.5 s per socket (tcp_invalid_ratelimit), so a
    second reconfiguration soon after the first got no answer; data segments are not
    rate limited. None once a FIN was seen: the close itself passes the core."""
    s = agent.sessions.get(sid)
    if s is None or len(s.sides) != 1:
        return None
    side = s.sides[0]
    if (side.rcv_acked is None or side.snd_acked is None or side.fin_in is not None
            or side.fin_out is not None):
        return None
    return side.local, (side.rcv_acked - 2) & 0xFFFFFFFF, side.snd_acked


def probe_due(agent: Agent, sid: int) -> bool:
    """Time to probe a session handed back for a reconfiguration: the right anchor at
    once (its peer handed back before asking for the lock), the left anchor once
    locked (the right anchor has handed back by then and sees the answer)."""
    s = agent.sessions.get(sid)
    if s is None or len(s.sides) != 1 or s.sides[0].rc is None:
        return False
    side = s.sides[0]
    assert side.rc is not None
    return side.rc.role == "right" or side.phase is not Phase.REQUESTING


def stalled(agent: Agent, sid: int, since: float, now: float) -> list[Action]:
    """Hand an offloaded session back to the dead-hop watch: its end has had unacked
    data and no ack since `since`. The driver hands it back first (the core must see
    the app's retransmissions, whose acks give the reset its sequence number), and
    keeps it on the queues while `stalling`."""
    set_offloaded(agent, sid, False, now)
    return agent.stalled(sid, since, now)


def stalling(agent: Agent, sid: int) -> bool:
    """Is the dead-hop watch still waiting for an ack on this session?"""
    s = agent.sessions.get(sid)
    return s is not None and any(side.stall_since is not None for side in s.sides)


def ended(agent: Agent, sid: int, how: str, now: float) -> list[Action]:
    """The kernel saw an offloaded session end (its entry expired or was closed)."""
    return agent.forget(sid, how, now)
