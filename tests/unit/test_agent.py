"""Agent behaviour outside reconfiguration: setup, retransmitted SYNs, RST, idle timeout,
ports and policies. Runs three real agents wired by the simulator's network."""

from __future__ import annotations

from dysco.core import Hop, Policy, Selector
from dysco.core import commands as cmd
from dysco.core import control as ctl
from dysco.core.actions import Action, SendControl
from dysco.core.auth import TRAILER
from dysco.core.packet import ACK, RST, TcpPacket, build
from dysco.core.policy import choose_instance
from dysco.core.ports import PortAllocator
from dysco.core.state import Lock
from dysco.sim.apps import Endpoint, Forwarder
from dysco.sim.network import LinkModel
from dysco.sim.scenarios import M1, M2, A, D
from dysco.sim.world import World


def chain(world: World, hops: tuple[int, ...]) -> tuple[Endpoint, Endpoint]:
    hosts = {n: world.host(n, a) for n, a in (("A", A), ("D", D), ("M1", M1), ("M2", M2))}
    Forwarder(world, hosts["M1"])
    Forwarder(world, hosts["M2"])
    hosts["A"].command(cmd.SetPolicies((Policy("p", frozenset({D}), tuple(
        Hop(f"h{i}", (h,)) for i, h in enumerate(hops))),)))
    server = Endpoint(world, hosts["D"], b"s" * 3000, b"c" * 3000, 500, 0.002)
    client = Endpoint(world, hosts["A"], b"c" * 3000, b"s" * 3000, 500, 0.002,
                      connect_to=(A, D, 33000, 80))
    return client, server


def test_syn_list_is_carried_and_stripped_and_sessions_close_cleanly() -> None:
    world = World(1, LinkModel())
    client, server = chain(world, (M1, M2))
    world.engine.run(60)
    assert client.finished() and server.finished() and not world.violations
    assert world.leftovers() == []


def test_retransmitted_syns_survive_loss() -> None:
    for seed in range(30):
        world = World(seed, LinkModel(loss=0.2, dup=0.1))
        client, server = chain(world, (M1,))
        world.engine.run(60)
        assert client.finished() and server.finished(), seed
        assert not world.violations and world.leftovers() == [], seed


def test_rst_tears_the_chain_down_everywhere() -> None:
    world = World(2, LinkModel())
    client, _ = chain(world, (M1, M2))
    world.engine.run(0.01)
    a = world.hosts["A"]
    assert all(h.agent.sessions for h in world.hosts.values())
    c = client.conn
    assert c is not None
    rst = build(A, D, 33000, 80, c.snd_nxt, c.rcv_nxt, RST | ACK)
    c.kill()
    world.hosts["D"].app = None  # the server is gone too: nobody answers
    a.app_send(rst)
    world.engine.run(60)
    assert world.leftovers() == []
    assert any("RST" in v for v in world.violations)  # the RST was seen on the path


def test_idle_sessions_are_freed() -> None:
    world = World(3, LinkModel())
    client, server = chain(world, (M1,))
    world.engine.run(0.01)
    for e in (client, server):
        assert e.conn is not None
        e.conn.kill()  # both ends vanish without FIN
    world.engine.run(60)
    assert world.leftovers() == []


def test_port_allocator_never_repeats_a_live_tuple() -> None:
    ports = PortAllocator((40000, 40003), (20000, 20001))
    got = {ports.allocate(1, 2) for _ in range(8)}
    assert len(got) == 8
    ports.release(next(iter(got)))
    assert ports.allocate(1, 2) not in got - {next(iter(got))}


def test_port_start_keeps_a_new_agent_off_its_predecessors_tuples() -> None:
    """A re-attached pod's new core must not reopen tuples the next hop has tombstoned."""
    old = PortAllocator((40000, 59999), (20000, 39999))
    used = {old.allocate(1, 2) for _ in range(100)}
    assert PortAllocator((40000, 59999), (20000, 39999)).allocate(1, 2) in used
    new = PortAllocator((40000, 59999), (20000, 39999), start=123_456_789)
    assert not {new.allocate(1, 2) for _ in range(100)} & used
    wrapped = PortAllocator((40000, 40003), (20000, 20001), start=8 * 3 + 5)
    assert wrapped.allocate(1, 2) == (1, 2, 40001, 20001)


def test_instance_choice_skips_excluded_and_is_stable() -> None:
    hop = Hop("fw", (10, 11, 12))
    t = (1, 2, 3, 4)
    assert choose_instance(hop, t, 5, frozenset()) == choose_instance(hop, t, 5, frozenset())
    assert choose_instance(hop, t, 5, frozenset({10, 11})) == 12
    assert {choose_instance(hop, t, n, frozenset()) for n in range(3)} == {10, 11, 12}


def test_sessions_without_policy_are_untouched() -> None:
    world = World(4, LinkModel())
    h = world.host("A", A)
    data = build(A, 0x0B000001, 1234, 80, 1, 0, 0x02)
    acts = h.agent.packet(__import__("dysco.core", fromlist=["Hook"]).Hook.OUTPUT, data, 0.0)
    assert len(acts) == 1 and acts[0].data == data  # type: ignore[union-attr]
    assert not h.agent.sessions


def test_selector_matches_either_end() -> None:
    sel = Selector(dst=frozenset({D}))
    assert sel.matches((A, D, 1, 80), "") and sel.matches((D, A, 80, 1), "")
    assert not Selector(policy="x").matches((A, D, 1, 80), "y")
    assert TcpPacket.parse(build(A, D, 1, 2, 3, 4, ACK)).tuple4() == (A, D, 1, 2)


def _right_requests(actions: list[Action]) -> int:
    return sum(1 for a in actions if isinstance(a, SendControl)
               and ctl.decode(a.data[:-TRAILER.size]).type is ctl.MsgType.RIGHT_REQUEST)


def test_a_middlebox_repeats_its_request_to_leave_only_while_no_lock_is_held() -> None:
    """ReplaceSelf repeats rightRequest until the middlebox is out of the session, but not
    while a reconfiguration holds the lock through it (the repeats would only load the
    agents busy with it); they resume if that attempt is cancelled."""
    world = World(4, LinkModel())
    chain(world, (M1,))
    world.engine.run(0.01)
    m1 = world.hosts["M1"].agent
    (s,) = m1.sessions.values()
    assert s.right is not None
    t = world.engine.now
    assert _right_requests(m1.command(cmd.ReplaceSelf(Selector(), ()), t)) == 1
    t += m1.config.removal_retry
    s.right.lock = Lock.LOCKED  # a reconfiguration took the lock through us
    assert _right_requests(m1.timer(t)) == 0
    t += m1.config.removal_retry
    s.right.lock = Lock.UNLOCKED  # ... and was cancelled
    assert _right_requests(m1.timer(t)) == 1
