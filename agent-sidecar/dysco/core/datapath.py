"""Per-packet work: translating between local and wire space, and the two-path split.

Pure functions on a `Side` and a `TcpPacket`; the agent decides which path applies.
"""

from __future__ import annotations

from . import seq
from .packet import ACK, FIN, RST, TcpPacket
from .state import Path, Reconfig, Side


def to_wire(pkt: TcpPacket, path: Path) -> None:
    """Local space -> wire space of `path` (packet leaving this agent)."""
    pkt.set_tuple(path.sub_out)
    if path.snd_off:
        pkt.set_seq(seq.add(pkt.seq, path.snd_off))
    if path.rcv_off and pkt.flags & ACK:
        pkt.set_ack(seq.add(pkt.ack, -path.rcv_off))
        blocks = pkt.sack_blocks()
        if blocks:
            off = -path.rcv_off
            pkt.set_sack_blocks([(seq.add(a, off), seq.add(b, off)) for a, b in blocks])


def to_local(pkt: TcpPacket, side: Side, path: Path) -> None:
    """Wire space of `path` -> local space (packet arriving at this agent)."""
    pkt.set_tuple(side.local)
    if path.rcv_off:
        pkt.set_seq(seq.add(pkt.seq, path.rcv_off))
    if path.snd_off and pkt.flags & ACK:
        pkt.set_ack(seq.add(pkt.ack, -path.snd_off))
        blocks = pkt.sack_blocks()
        if blocks:
            off = -path.snd_off
            pkt.set_sack_blocks([(seq.add(a, off), seq.add(b, off)) for a, b in blocks])


def track_out(side: Side, pkt: TcpPacket, syn: bool) -> None:
    """Record what the local app sent towards this side (local space)."""
    s, a, flags, plen = pkt.header()
    if syn:
        side.isn_out = s
    n = plen + (1 if syn else 0) + (1 if flags & FIN else 0)
    if n:
        end = (s + n) & seq.MASK
        side.snd_max = end if side.snd_max is None else seq.max_(side.snd_max, end)
    elif side.snd_max is not None and seq.lt(side.snd_max, s):
        side.snd_max = s  # a bare ack carries the sender's next sequence number
    if flags & FIN:
        side.fin_out = (s + plen + (1 if syn else 0)) & seq.MASK
    if flags & ACK:
        side.rcv_acked = a if side.rcv_acked is None else seq.max_(side.rcv_acked, a)
        # Nobody acks data it has not received: after a stretch the core did not see
        # (a kernel fast path), the first ack restores the bound the cutoffs rely on.
        if side.rcv_max is not None and seq.lt(side.rcv_max, a):
            side.rcv_max = a


def track_in(side: Side, pkt: TcpPacket, syn: bool) -> None:
    """Record what arrived from this side (local space, after translation)."""
    s, a, flags, plen = pkt.header()
    if syn:
        side.isn_in = s
    n = plen + (1 if syn else 0) + (1 if flags & FIN else 0)
    if n:
        end = (s + n) & seq.MASK
        side.rcv_max = end if side.rcv_max is None else seq.max_(side.rcv_max, end)
    elif side.rcv_max is not None and seq.lt(side.rcv_max, s) and not flags & RST:
        # a bare ack carries the sender's next sequence number (a middlebox relearns
        # the stream this way after a stretch on a kernel fast path)
        side.rcv_max = s
    if flags & FIN:
        side.fin_in = (s + plen + (1 if syn else 0)) & seq.MASK
    if flags & ACK:
        side.snd_acked = a if side.snd_acked is None else seq.max_(side.snd_acked, a)
        if side.snd_max is not None and seq.lt(side.snd_max, a):
            side.snd_max = a  # likewise: the peer acks only what we sent


def clip_sack(blocks: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """SACK blocks restricted to data below `limit` (what the old path carried)."""
    out = []
    for a, b in blocks:
        if seq.lt(a, limit):
            out.append((a, b if seq.le(b, limit) else limit))
    return out


def _pure_ack(pkt: TcpPacket, seqno: int, ack: int) -> TcpPacket:
    p = pkt.slice(0, 0, fin=False)
    p.set_flags(p.flags & ~0x08)  # no PSH on a pure ack
    p.set_seq(seqno)
    p.set_ack(ack)
    return p


def split_two_paths(side: Side, rc: Reconfig, pkt: TcpPacket) -> list[tuple[TcpPacket, bool]]:
    """Decide old/new path for an outgoing segment in the two-path phase (local space).

    Returns (packet, on_new_path) pairs. Data below our cutoff stays on the old path,
    data above goes on the new one, a segment straddling the cutoff is split. Acks go
    where the acknowledged data went: up to the highest peer data seen on the old path
    they stay old (clamped there), beyond it they go new, so no middlebox ever sees an
    ack for data it did not forward. The old path keeps getting acks until it has acked
    everything that came on it.
    """
    assert rc.cutoff_snd is not None and rc.old_rcvd_max is not None
    cut = rc.cutoff_snd
    flags = pkt.flags
    if flags & ACK and rc.cutoff_rcv is not None:
        # Our socket acks only what it received, and the peer sent everything below its
        # cutoff on the old path: after a stretch the core did not see (a kernel fast
        # path), `old_rcvd_max` taken at the switch may be stale, and acks clamped to
        # it could never reach the cutoff (the reconfiguration would never complete).
        bound = seq.min_(pkt.ack, rc.cutoff_rcv)
        if seq.gt(bound, rc.old_rcvd_max):
            rc.old_rcvd_max = bound
    orm = rc.old_rcvd_max
    if flags & RST:
        return [(pkt, False), (pkt.slice(0, pkt.payload_len, fin=False), True)]
    s = pkt.seq
    plen = pkt.payload_len
    fin = bool(flags & FIN)
    has_ack = bool(flags & ACK)
    a = pkt.ack
    a_old = seq.min_(a, orm)
    blocks = pkt.sack_blocks() if has_ack else []
    high_sack = any(seq.gt(b, orm) for _, b in blocks)

    def needs_old_ack() -> bool:
        return has_ack and (
            rc.old_acked is None or seq.gt(a_old, rc.old_acked) or rc.old_data_since_ack
        )

    def old_view(p: TcpPacket) -> TcpPacket:
        if p.payload_len == 0 and not p.flags & FIN and seq.gt(p.seq, cut):
            p.set_seq(cut)  # the old path's next sequence number
        if has_ack:
            p.set_ack(a_old)
            if blocks:
                p.set_sack_blocks(clip_sack(p.sack_blocks(), orm))
        return p

    out: list[tuple[TcpPacket, bool]] = []
    n_old = 0 if plen == 0 or seq.ge(s, cut) else min(plen, seq.sub(cut, s))
    fin_old = fin and seq.lt(seq.add(s, plen), cut)
    if plen or fin:
        if n_old == plen and (not fin or fin_old):
            out.append((old_view(pkt), False))
            if has_ack and (seq.gt(a, orm) or high_sack):
                out.append((_pure_ack(pkt, cut, a), True))
        elif n_old == 0:
            out.append((pkt, True))
            if needs_old_ack():
                out.append((old_view(_pure_ack(pkt, cut, a)), False))
        else:
            out.append((old_view(pkt.slice(0, n_old, fin=False)), False))
            out.append((pkt.slice(n_old, plen, fin=fin), True))
    elif not has_ack or seq.le(a, orm):
        copy = pkt.slice(0, 0, fin=False) if high_sack else None
        out.append((old_view(pkt), False))
        if copy is not None:
            out.append((copy, True))
    else:
        old_ack = _pure_ack(pkt, cut, a) if needs_old_ack() else None
        out.append((pkt, True))
        if old_ack is not None:
            out.append((old_view(old_ack), False))
    for p, on_new in out:
        if not on_new and p.flags & ACK:
            rc.old_acked = p.ack if rc.old_acked is None else seq.max_(rc.old_acked, p.ack)
            rc.old_data_since_ack = False
    return out
