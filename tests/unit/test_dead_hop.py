"""A middlebox dies under a live session: both ends notice (no acks for `hop_timeout`),
reset their apps and forget the session, instead of leaving it hanging."""

from __future__ import annotations

import pytest

from dysco.core import Hop, Policy, offload
from dysco.core import commands as cmd
from dysco.core import control as ctl
from dysco.core.auth import Authenticator
from dysco.core.events import Event, HopFailed, SessionClosed
from dysco.sim.apps import Endpoint, Forwarder
from dysco.sim.network import LinkModel
from dysco.sim.scenarios import M1, A, D
from dysco.sim.world import SIM_KEYS, World


def setup(hops: tuple[int, ...]) -> tuple[World, Endpoint, Endpoint, list[Event]]:
    world = World(1, LinkModel())
    hosts = {n: world.host(n, a) for n, a in (("A", A), ("D", D), ("M1", M1))}
    Forwarder(world, hosts["M1"])
    hosts["A"].command(cmd.SetPolicies((Policy("p", frozenset({D}), tuple(
        Hop(f"h{i}", (h,)) for i, h in enumerate(hops))),)))
    big = 400_000  # 0.8 s of data each way
    server = Endpoint(world, hosts["D"], b"s" * big, b"c" * big, 500, 0.001)
    client = Endpoint(world, hosts["A"], b"c" * big, b"s" * big, 500, 0.001,
                      connect_to=(A, D, 33000, 80))
    events: list[Event] = []
    world.listeners.append(events.append)
    return world, client, server, events


def test_dead_middlebox_resets_both_ends() -> None:
    world, _client, _server, events = setup((M1,))
    world.engine.run(0.2)
    assert all(h.agent.sessions for h in world.hosts.values())
    world.hosts["M1"].down = True  # killed without warning: drops everything
    world.engine.run(0.2 + 15 + 5)
    # one HopFailed per end: it detected the stall itself, or the other end's ABORT came
    # first (both ends send here, so both usually detect it)
    failed = [e for e in events if isinstance(e, HopFailed)]
    assert len(failed) == 2 and all(e.peer == M1 for e in failed), failed
    closed = [e.how for e in events if isinstance(e, SessionClosed)]
    assert closed.count("hop_failed") == 2
    assert not world.hosts["A"].agent.sessions and not world.hosts["D"].agent.sessions
    assert any("A: got RST" in v for v in world.violations)  # the apps were reset
    assert any("D: got RST" in v for v in world.violations)


def test_a_live_chain_and_a_direct_session_are_never_reset() -> None:
    world, client, server, events = setup((M1,))
    world.engine.run(60)
    assert client.finished() and server.finished()
    world, client, server, events = setup(())
    world.engine.run(0.2)
    world.hosts["D"].down = True  # the peer itself: TCP's business, not ours
    world.engine.run(30)
    assert not [e for e in events if isinstance(e, HopFailed)]
    assert world.hosts["A"].agent.sessions


def test_abort_must_come_from_the_other_end() -> None:
    world, _client, _server, events = setup((M1,))
    world.engine.run(0.2)
    a = world.hosts["A"].agent
    t = next(iter(a.sessions.values())).tuple4()
    now = world.engine.now
    for sender in (M1, 0x0A0000EE):  # a middlebox of the chain, a stranger
        msg = ctl.Control(ctl.MsgType.ABORT, 0, t, sender, A).encode()
        a.control(sender, Authenticator(dict(SIM_KEYS), 1).seal(msg, sender, now), now)
    msg = ctl.Control(ctl.MsgType.ABORT, 0, t, D, A).encode()
    a.control(D, msg, now)  # right sender, no MAC
    assert len(a.sessions) == 1 and not any(isinstance(e, HopFailed) for e in events)
    a.control(D, Authenticator(dict(SIM_KEYS), 1).seal(msg, D, now), now)
    assert not a.sessions


def test_one_end_idle_learns_it_from_the_abort() -> None:
    """Only the client sends: the server has nothing unacked, the client's ABORT resets it."""
    world = World(2, LinkModel())
    hosts = {n: world.host(n, a) for n, a in (("A", A), ("D", D), ("M1", M1))}
    Forwarder(world, hosts["M1"])
    hosts["A"].command(cmd.SetPolicies((Policy("p", frozenset({D}), (Hop("h", (M1,)),)),)))
    Endpoint(world, hosts["D"], b"", b"c" * 400_000, 500, 0.001)
    Endpoint(world, hosts["A"], b"c" * 400_000, b"", 500, 0.001,
             connect_to=(A, D, 33000, 80))
    events: list[Event] = []
    world.listeners.append(events.append)
    world.engine.run(0.2)
    hosts["M1"].down = True
    world.engine.run(25)
    assert sorted(e.how for e in events if isinstance(e, HopFailed)) == ["aborted", "detected"]
    assert not hosts["A"].agent.sessions and not hosts["D"].agent.sessions


def test_a_closing_end_is_not_watched() -> None:
    """Once its app has sent FIN, an end leaves the rest to TCP (a storm of closes can
    delay FIN acks past the timeout without any hop being dead)."""
    world = World(3, LinkModel())
    hosts = {n: world.host(n, a) for n, a in (("A", A), ("D", D), ("M1", M1))}
    Forwarder(world, hosts["M1"])
    hosts["A"].command(cmd.SetPolicies((Policy("p", frozenset({D}), (Hop("h", (M1,)),)),)))
    Endpoint(world, hosts["D"], b"s" * 1000, b"c" * 1000, 500, 0.001)
    Endpoint(world, hosts["A"], b"c" * 1000, b"s" * 1000, 500, 0.001,
             connect_to=(A, D, 33000, 80))
    events: list[Event] = []
    world.listeners.append(events.append)
    ends = (hosts["A"].agent, hosts["D"].agent)

    def fins_out() -> bool:
        sides = [d for a in ends for s in a.sessions.values() for d in s.sides]
        return len(sides) == 2 and all(d.fin_out is not None for d in sides)
    step = 0.0
    while not fins_out():
        step += 0.0002
        assert step < 1 and not world.engine.run(step), "the apps never closed"
    hosts["M1"].down = True  # dies before the FINs are acked
    world.engine.run(world.engine.now + 30)
    assert not [e for e in events if isinstance(e, HopFailed)]


def test_an_offloaded_session_is_not_watched_until_handed_back() -> None:
    """While a kernel fast path carries a session its core sees no acks: no HopFailed
    however long the silence; handed back, the watch works again."""
    world, _client, _server, events = setup((M1,))
    world.engine.run(0.2)
    ends = [world.hosts[n].agent for n in ("A", "D")]
    for agent in ends:
        (s,) = agent.sessions.values()
        offload.set_offloaded(agent, s.sid, True, world.engine.now)
    world.hosts["M1"].down = True  # no ack reaches either core from now on
    world.engine.run(0.2 + 15 + 10)
    assert not [e for e in events if isinstance(e, HopFailed)]
    assert all(agent.sessions for agent in ends)
    for agent in ends:
        (s,) = agent.sessions.values()
        offload.set_offloaded(agent, s.sid, False, world.engine.now)
    world.engine.run(world.engine.now + 15 + 30)
    assert [e for e in events if isinstance(e, HopFailed)]


def test_a_stall_the_driver_saw_while_offloaded_is_a_dead_hop() -> None:
    """The driver read the socket of an offloaded session (no ack for a while) and
    hands it back with the time the stall began: reset at `since + hop_timeout`."""
    world, _client, _server, events = setup((M1,))
    world.engine.run(0.2)
    for name in ("A", "D"):
        agent = world.hosts[name].agent
        (s,) = agent.sessions.values()
        offload.set_offloaded(agent, s.sid, True, world.engine.now)
    world.hosts["M1"].down = True
    world.engine.run(5.0)
    a = world.hosts["A"].agent
    (s,) = a.sessions.values()
    since = world.engine.now - 4.0
    world.hosts["A"]._run(offload.stalled(a, s.sid, since, world.engine.now), None)
    assert not s.offloaded
    world.engine.run(since + 15 - 0.5)
    assert not [e for e in events if isinstance(e, HopFailed)]
    world.engine.run(since + 15 + 3)
    failed = [e for e in events if isinstance(e, HopFailed)]
    assert len(failed) == 2 and {e.how for e in failed} == {"detected", "aborted"}, failed


@pytest.mark.timeout(20)
def test_an_offloaded_session_outlives_its_idle_timeout() -> None:
    """An offloaded session is silent to its core for as long as the kernel carries it:
    its idle check must come back later, not at once (it rescheduled itself at a time
    already past, and the agent's timer loop never returned)."""
    world, _client, _server, _events = setup((M1,))
    world.engine.run(0.2)
    agent = world.hosts["A"].agent
    (s,) = agent.sessions.values()
    offload.set_offloaded(agent, s.sid, True, world.engine.now)
    for k in range(1, 4):  # the core sees no packet of it meanwhile
        agent.timer(world.engine.now + k * agent.config.idle_timeout)
    assert list(agent.sessions.values()) == [s]
