"""The core's middlebox fast-path decision (core/offload.py), on the simulated network."""

from __future__ import annotations

from collections.abc import Callable

from dysco.core import Hop, Policy, Selector, offload
from dysco.core import commands as cmd
from dysco.core.agent import Agent
from dysco.core.state import Phase, reverse
from dysco.sim.apps import Endpoint, Forwarder
from dysco.sim.network import LinkModel
from dysco.sim.scenarios import M1, M2, A, D
from dysco.sim.world import World

SESSION = (A, D, 33000, 80)


def _chain(hops: tuple[int, ...], size: int = 300_000) -> World:
    world = World(5, LinkModel())
    hosts = {n: world.host(n, a) for n, a in (("A", A), ("D", D), ("M1", M1), ("M2", M2))}
    Forwarder(world, hosts["M1"])
    Forwarder(world, hosts["M2"])
    hosts["A"].command(cmd.SetPolicies((Policy("p", frozenset({D}), tuple(
        Hop(f"h{i}", (h,)) for i, h in enumerate(hops))),)))
    Endpoint(world, hosts["D"], b"s" * size, b"c" * size, 500, 0.002)
    Endpoint(world, hosts["A"], b"c" * size, b"s" * size, 500, 0.002, connect_to=SESSION)
    return world


def _agent(world: World, name: str) -> Agent:
    return world.hosts[name].agent


def _until(world: World, done: Callable[[], bool], limit: float = 5.0) -> None:
    """Run the simulation in small steps until `done` holds."""
    t = world.engine.now
    while not done():
        t += 0.0001
        assert t < limit, "condition never reached"
        world.engine.run(t)


def test_a_steady_middlebox_session_is_offered_with_its_tuples() -> None:
    world = _chain((M1,))
    world.engine.run(0.05)
    m1 = _agent(world, "M1")
    o = offload.mb_candidate(m1, SESSION)
    assert o is not None
    (s,) = m1.sessions.values()
    assert s.left is not None and s.right is not None
    assert o.session == SESSION
    assert o.inbound == ((s.left.path.sub_in, SESSION), (s.right.path.sub_in, reverse(SESSION)))
    assert o.outbound == ((SESSION, s.right.path.sub_out), (reverse(SESSION),
                                                            s.left.path.sub_out))
    # the wire tuples are the subsessions, never the session
    assert s.left.path.sub_in[1] == M1 and s.right.path.sub_out[:2] == (M1, D)
    # the same offer whichever direction's tuple the driver saw; end hosts get none
    assert offload.mb_candidate(m1, reverse(SESSION)) == o
    assert offload.mb_candidate(_agent(world, "A"), SESSION) is None
    # offloaded: not offered again, and kept (nothing asks for a hand-back)
    offload.set_offloaded(m1, o.sid, True, world.engine.now)
    assert offload.mb_candidate(m1, SESSION) is None
    assert offload.mb_handback(m1, [o.sid]) == []


def test_not_offered_before_the_handshake_completes() -> None:
    world = _chain((M1,))
    m1 = _agent(world, "M1")
    _until(world, lambda: bool(m1.sessions))  # the SYN is through, no SYN-ACK yet
    assert offload.mb_candidate(m1, SESSION) is None
    _until(world, lambda: any(s.right is not None and s.right.snd_acked is not None
                              for s in m1.sessions.values()))  # SYN-ACK through
    assert offload.mb_candidate(m1, SESSION) is None  # the third ACK is not
    _until(world, lambda: offload.mb_candidate(m1, SESSION) is not None)


def test_anchoring_a_reconfiguration_hands_back() -> None:
    world = _chain((M1,))
    world.engine.run(0.05)
    m1 = _agent(world, "M1")
    o = offload.mb_candidate(m1, SESSION)
    assert o is not None
    offload.set_offloaded(m1, o.sid, True, world.engine.now)
    # M1 inserts M2 to its right: M1's right side becomes the left anchor
    world.hosts["M1"].command(cmd.InsertRight(Selector(), (M2,)))
    assert o.sid in offload.anchored(m1)
    assert offload.mb_handback(m1, [o.sid]) == [o.sid]


def _offload_all(world: World, names: tuple[str, ...]) -> dict[str, offload.MbOffload]:
    offers = {}
    for name in names:
        o = offload.mb_candidate(_agent(world, name), SESSION)
        assert o is not None, name
        offload.set_offloaded(_agent(world, name), o.sid, True, world.engine.now)
        offers[name] = o
    return offers


def test_a_middlebox_asked_to_leave_hands_back_and_so_does_its_left_anchor() -> None:
    world = _chain((M1, M2))
    world.engine.run(0.05)
    m1, m2 = _agent(world, "M1"), _agent(world, "M2")
    offers = _offload_all(world, ("M1", "M2"))
    world.hosts["M2"].command(cmd.ReplaceSelf(Selector(), ()))
    sid1, sid2 = offers["M1"].sid, offers["M2"].sid
    assert offload.mb_handback(m2, [sid2]) == [sid2]   # being spliced out
    assert offload.mb_handback(m1, [sid1]) == []
    _until(world, lambda: bool(offload.anchored(m1)))  # the right-request arrived
    assert offload.mb_handback(m1, [sid1]) == [sid1]


def test_middleboxes_a_reconfiguration_passes_through_keep_forwarding() -> None:
    """A removes both middleboxes (new path A -> D): M1 and M2 only relay the lock and
    stay offloaded while the old path carries data, until they are torn down."""
    world = _chain((M1, M2), size=3_000_000)
    world.engine.run(0.05)
    offers = _offload_all(world, ("M1", "M2"))
    world.hosts["A"].command(cmd.InsertRight(Selector(), (), right_anchor=D))
    a = _agent(world, "A")
    _until(world, lambda: any(side.phase is Phase.TWO_PATHS for side in a.by_rid.values()))
    for name, o in offers.items():
        assert offload.mb_handback(_agent(world, name), [o.sid]) == [], name
    _until(world, lambda: not a.by_rid)
    _until(world, lambda: all(offload.mb_handback(_agent(world, n), [o.sid]) == [o.sid]
                              for n, o in offers.items()))
    for name, o in offers.items():
        s = _agent(world, name).sessions.get(o.sid)
        assert s is None or s.torn, name


def test_fins_hand_back_and_the_end_is_reported() -> None:
    world = _chain((M1,), size=20_000)
    world.engine.run(0.01)
    m1 = _agent(world, "M1")
    o = offload.mb_candidate(m1, SESSION)
    assert o is not None
    offload.set_offloaded(m1, o.sid, True, world.engine.now)
    world.engine.run(120)
    # both FINs went through: handed back (and the session is gone in the end)
    assert offload.mb_handback(m1, [o.sid]) == [o.sid]
    assert o.sid not in m1.sessions


def test_a_new_connection_on_an_ended_sessions_tuple_replaces_it_at_a_middlebox() -> None:
    """The ends forgot a closed session (their fast path ended it) while the middlebox
    still lingers on it; the app reuses the tuple: the middlebox takes the new SYN list
    (it used to reject it as duplicate_session and the connect() timed out)."""
    world = _chain((M1,), size=20_000)
    world.engine.run(5)
    m1 = _agent(world, "M1")
    (old,) = m1.sessions.values()
    assert old.closing_at is not None  # done, lingering
    for name in ("A", "D"):
        agent = _agent(world, name)
        for sid in list(agent.sessions):
            offload.set_offloaded(agent, sid, True, world.engine.now)
            offload.ended(agent, sid, "kernel", world.engine.now)
        assert not agent.sessions
    hosts = world.hosts
    server = Endpoint(world, hosts["D"], b"S" * 5000, b"C" * 5000, 500, 0.002)
    client = Endpoint(world, hosts["A"], b"C" * 5000, b"S" * 5000, 500, 0.002,
                      connect_to=SESSION)
    world.engine.run(3)  # well before the old session's linger ends (10 s here)
    assert old.closing_at is not None and old.closing_at > world.engine.now
    assert client.finished() and server.finished() and not world.violations
    assert old.sid not in m1.sessions
