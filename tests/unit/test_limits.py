"""Resource limits: SYN floods and control floods cannot grow an agent's tables past its
configured limits, refusals are reported with a reason, existing sessions are untouched."""

from __future__ import annotations

from dataclasses import replace

from dysco.core import Agent, AgentConfig, Hook, Hop, Notify, Policy, Selector, Verdict, persist
from dysco.core import commands as cmd
from dysco.core import control as ctl
from dysco.core.actions import Action
from dysco.core.events import Rejected
from dysco.core.limits import RateLimiter
from dysco.core.packet import ACK, SYN, TcpPacket, build
from dysco.core.synlist import SynList

A, M, D = 0x0A000001, 0x0A000101, 0x0A000002


def rejected(acts: list[Action]) -> list[str]:
    return [x.event.reason for x in acts if isinstance(x, Notify)
            and isinstance(x.event, Rejected)]


def client(**limits: float) -> Agent:
    agent = Agent(replace(AgentConfig(address=A), **limits))  # type: ignore[arg-type]
    agent.command(cmd.SetPolicies((Policy("p", frozenset({D}), (Hop("fw", (M,)),)),)), 0.0)
    return agent


def syn(sport: int) -> bytes:
    return build(A, D, sport, 80, 1000, 0, SYN)


def open_session(agent: Agent, sport: int, now: float) -> tuple[int, int]:
    """Full handshake of a client session through the agent; its subsession ports."""
    out = agent.packet(Hook.OUTPUT, syn(sport), now)[0]
    assert isinstance(out, Verdict) and out.data is not None
    wire = TcpPacket.parse(out.data)
    synack = build(M, A, wire.dport, wire.sport, 5000, 1001, SYN | ACK)
    assert agent.packet(Hook.INPUT, synack, now)[0].data is not None  # type: ignore[union-attr]
    agent.packet(Hook.OUTPUT, build(A, D, sport, 80, 1001, 5001, ACK), now)
    return wire.sport, wire.dport


def test_syn_flood_fills_only_the_half_open_table() -> None:
    agent = client(max_half_open=50, handshake_timeout=10.0)
    ports = open_session(agent, 30000, 0.0)
    assert agent.half_open == 0 and len(agent.sessions) == 1
    reasons = []
    for i in range(200):
        acts = agent.packet(Hook.OUTPUT, syn(31000 + i), 1.0)
        if acts[0] == Verdict(None):
            reasons += rejected(acts)
    assert agent.half_open == 50 and len(agent.sessions) == 51
    assert reasons == ["half_open_full"] * 150
    # the established session still carries data, rewritten onto its subsession
    data = agent.packet(Hook.OUTPUT, build(A, D, 30000, 80, 1001, 5001, ACK,
                                           payload=b"x" * 100), 1.0)[0]
    assert isinstance(data, Verdict) and data.data is not None
    assert TcpPacket.parse(data.data).tuple4() == (A, M, *ports)
    # the flood's sessions expire after the handshake timeout; new SYNs get in again
    agent.timer(11.5)
    assert agent.half_open == 0 and len(agent.sessions) == 1
    assert agent.packet(Hook.OUTPUT, syn(40000), 12.0)[0].data is not None  # type: ignore[union-attr]


def test_full_session_table_drops_new_syns_and_keeps_the_old() -> None:
    agent = client(max_sessions=3)
    for p in (30000, 30001, 30002):
        open_session(agent, p, 0.0)
    acts = agent.packet(Hook.OUTPUT, syn(30003), 1.0)
    assert acts[0] == Verdict(None) and rejected(acts) == ["session_table_full"]
    assert len(agent.sessions) == 3 and agent.half_open == 0
    # a retransmitted SYN of a session we carry is not a new session
    open_session(agent, 30001, 1.0)
    assert len(agent.sessions) == 3


def test_forged_syn_lists_at_a_right_end_are_bounded() -> None:
    """A hostile pod sends SYNs carrying SYN lists that name the server's agent."""
    server = Agent(AgentConfig(address=D, max_half_open=20))
    dropped = 0
    for i in range(100):
        t = (0x0A0000AA, D, 20000 + i, 80)
        payload = SynList(t, (D,)).encode()
        acts = server.packet(Hook.INPUT, build(0x0A0000AA, D, 40000 + i, 20000 + i, 7, 0,
                                               SYN, payload=payload), 0.0)
        dropped += acts[0] == Verdict(None)
    assert server.half_open == 20 and len(server.sessions) == 20 and dropped == 80
    assert server.stats()["half_open"] == 20


def test_half_open_sessions_survive_a_restart_counted() -> None:
    agent = client(max_half_open=5)
    open_session(agent, 30000, 0.0)
    for i in range(3):
        agent.packet(Hook.OUTPUT, syn(31000 + i), 0.0)
    again = persist.restore(agent.config, persist.snapshot(agent), 1.0)
    assert again.half_open == 3 and len(again.sessions) == 4
    again.timer(1.0 + again.config.handshake_timeout)
    assert again.half_open == 0 and len(again.sessions) == 1


def test_control_flood_is_rate_limited_per_sender() -> None:
    agent = Agent(AgentConfig(address=A, control_rate=100.0, control_burst=10))
    msg = ctl.Control(ctl.MsgType.REQUEST_LOCK, 1, (M, A, 40000, 20000), M, A).encode()
    reasons = [r for _ in range(50) for r in rejected(agent.control(M, msg, 0.0))]
    # the first 10 are parsed (and refused: no such subsession, so a nack goes back)
    assert reasons == ["rate_limited"] * 40
    other = agent.control(D, msg, 0.0)
    assert not rejected(other) and other, "another sender is not slowed down"
    assert not rejected(agent.control(M, msg, 0.1))  # the bucket refilled


def test_rate_limiter_table_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_senders=8)
    allowed = sum(limiter.allow(src, 0.0) for src in range(1000))
    assert limiter.senders() <= 9
    assert allowed == 8 + 2  # eight own buckets, then the shared one's burst
    # once quiet senders' buckets refill they are forgotten: new senders get their own
    assert limiter.allow(5000, 10.0) and limiter.senders() <= 9


def test_concurrent_reconfigurations_are_capped() -> None:
    agent = client(max_reconfigs=2)
    for p in range(30000, 30005):
        open_session(agent, p, 0.0)
        agent.packet(Hook.INPUT, build(M, A, *_sub_in(agent, p), 5001, 1001, ACK,
                                       payload=b"y"), 0.0)
    agent.command(cmd.InsertRight(Selector(), hops=(0x0A000102,)), 1.0)
    assert len(agent.by_rid) == 2
    assert sum(1 for s in agent.sessions.values() if s.right and s.right.retry) == 3


def _sub_in(agent: Agent, sport: int) -> tuple[int, int]:
    side = agent.by_out[(A, D, sport, 80)]
    return side.path.sub_out[3], side.path.sub_out[2]
