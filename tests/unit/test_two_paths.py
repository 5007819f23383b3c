"""The two-path split, case by case: cutoffs, split segments, FIN on either path, ack
clamping and SACK clipping (docs/protocol.md, "Two paths")."""

from __future__ import annotations

from dysco.core import AgentConfig, seq
from dysco.core.agent import Agent
from dysco.core.datapath import clip_sack, split_two_paths
from dysco.core.packet import ACK, FIN, PSH, RST, TcpPacket, build, sack_option
from dysco.core.state import Path, Phase, Reconfig, Session, Side

T = (1, 2, 10, 20)


def side(cut: int, orm: int, old_acked: int) -> tuple[Side, Reconfig]:
    s = Session(1, "left")
    sd = Side(s, False, T, Path((1, 3, 1, 1)), new=Path((1, 4, 1, 1)), phase=Phase.TWO_PATHS)
    rc = Reconfig(7, "left", 9, (), 0.0, cutoff_snd=cut, old_rcvd_max=orm, old_acked=old_acked)
    sd.rc = rc
    return sd, rc


def pkt(
    s: int, a: int, payload: bytes = b"", flags: int = ACK | PSH,
    sack: list[tuple[int, int]] | None = None,
) -> TcpPacket:
    opts = sack_option(sack) if sack else b""
    return TcpPacket.parse(build(1, 2, 10, 20, s, a, flags, options=opts, payload=payload))


def test_old_data_stays_old_with_clamped_ack_and_new_ack_goes_new() -> None:
    sd, rc = side(cut=1000, orm=500, old_acked=400)
    out = split_two_paths(sd, rc, pkt(900, 600, b"x" * 100))
    assert [(p.seq, p.payload_len, p.ack, new) for p, new in out] == [
        (900, 100, 500, False), (1000, 0, 600, True)]
    assert rc.old_acked == 500


def test_segment_straddling_the_cutoff_is_split() -> None:
    sd, rc = side(cut=1000, orm=500, old_acked=500)
    out = split_two_paths(sd, rc, pkt(950, 500, b"a" * 50 + b"b" * 50, ACK | PSH | FIN))
    (old, on_old), (new, on_new) = out
    assert (old.seq, old.payload, old.flags & FIN, on_old) == (950, b"a" * 50, 0, False)
    assert (new.seq, new.payload, bool(new.flags & FIN), on_new) == (1000, b"b" * 50, True, True)


def test_new_data_goes_new_and_old_path_gets_its_last_ack() -> None:
    sd, rc = side(cut=1000, orm=500, old_acked=450)
    out = split_two_paths(sd, rc, pkt(1000, 700, b"z" * 10))
    assert [(p.seq, p.ack, new) for p, new in out] == [(1000, 700, True), (1000, 500, False)]
    # once the old path has its ack, new data travels alone
    out = split_two_paths(sd, rc, pkt(1010, 800, b"z" * 10))
    assert [new for _, new in out] == [True]


def test_fin_below_cutoff_stays_old_and_fin_above_goes_new() -> None:
    sd, rc = side(cut=1001, orm=500, old_acked=500)
    out = split_two_paths(sd, rc, pkt(1000, 500, b"", ACK | FIN))
    assert [new for _, new in out] == [False]
    sd, rc = side(cut=1000, orm=500, old_acked=500)
    out = split_two_paths(sd, rc, pkt(1000, 500, b"", ACK | FIN))
    assert [new for _, new in out] == [True]


def test_pure_acks_follow_the_data_they_acknowledge() -> None:
    sd, rc = side(cut=1000, orm=500, old_acked=400)
    out = split_two_paths(sd, rc, pkt(1200, 480, b"", ACK))
    assert [(p.ack, p.seq, new) for p, new in out] == [(480, 1000, False)]
    out = split_two_paths(sd, rc, pkt(1200, 900, b"", ACK))
    assert [(p.ack, new) for p, new in out] == [(900, True), (500, False)]


def test_sack_blocks_above_the_old_path_are_clipped_there() -> None:
    sd, rc = side(cut=1000, orm=500, old_acked=400)
    out = split_two_paths(sd, rc, pkt(1000, 450, b"", ACK, sack=[(460, 480), (600, 700)]))
    old = next(p for p, new in out if not new)
    new = next(p for p, n in out if n)
    assert old.sack_blocks() == [(460, 480)]
    assert new.sack_blocks() == [(460, 480), (600, 700)]


def test_rst_goes_on_both_paths() -> None:
    sd, rc = side(cut=1000, orm=500, old_acked=400)
    out = split_two_paths(sd, rc, pkt(1000, 500, b"", RST | ACK))
    assert sorted(new for _, new in out) == [False, True]


def test_clip_sack_across_wraparound() -> None:
    lim = seq.add(0xFFFFFFF0, 0x20)
    assert clip_sack([(0xFFFFFFF0, seq.add(lim, 5))], lim) == [(0xFFFFFFF0, lim)]


def test_acks_below_the_peers_cutoff_go_old_even_if_the_switch_saw_a_stale_stream() -> None:
    """After a kernel fast-path stretch the core's view at the switch is stale: the peer
    sent up to 600 on the old path (its cutoff), the core last saw 500. Our socket's ack
    of 600 (a probe's answer, the session idle) must reach the old path, or the
    reconfiguration waits for it forever (bulk idle replaces, middlebox fast path on)."""
    sd, rc = side(cut=1000, orm=500, old_acked=500)
    rc.cutoff_rcv = 600
    out = split_two_paths(sd, rc, pkt(1000, 600, b"", ACK))
    assert [(p.ack, new) for p, new in out] == [(600, False)]
    assert rc.old_acked == 600 and rc.old_rcvd_max == 600
    # beyond the cutoff the peer's data came new: the old path's ack stays at the cutoff
    out = split_two_paths(sd, rc, pkt(1000, 700, b"", ACK))
    assert [(p.ack, new) for p, new in out] == [(700, True)]
    assert rc.old_acked == 600 and rc.old_rcvd_max == 600


def test_a_bare_ack_on_the_old_path_raises_what_came_that_way() -> None:
    """The peer's bare ack on the old path carries its next old-path seq (at most its
    cutoff): data below it came on the old path, though the core, stale after a kernel
    fast-path stretch, never saw it. Data on the new path does not count."""
    agent = Agent(AgentConfig(address=1))
    sd, rc = side(cut=1000, orm=500, old_acked=500)
    sd.rcv_max, sd.rcv_acked, sd.snd_max, sd.snd_acked = 500, 500, 1000, 1000
    agent._begin(0.0)
    agent._receive_on_side(sd, sd.path, pkt(600, 1000, b"", ACK))
    assert rc.old_rcvd_max == 600 and not rc.old_data_since_ack
    assert sd.new is not None
    agent._receive_on_side(sd, sd.new, pkt(700, 1000, b"", ACK))
    assert rc.old_rcvd_max == 600
    agent._receive_on_side(sd, sd.path, pkt(650, 1000, b"", RST | ACK))
    assert rc.old_rcvd_max == 600
