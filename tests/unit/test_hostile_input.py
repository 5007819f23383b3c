"""Bad input gets a typed rejection, changes no state and never raises: agents are fed
garbage in the middle of a live reconfiguration taken from the simulator."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dysco.core import Agent, Hook, Notify, Verdict
from dysco.core import control as ctl
from dysco.core.auth import Authenticator
from dysco.core.events import Rejected
from dysco.core.packet import ACK, build
from dysco.sim.network import LinkModel
from dysco.sim.scenarios import SCENARIOS
from dysco.sim.world import SIM_KEYS, World


def digest(a: Agent) -> Any:
    sides = []
    for s in a.sessions.values():
        for d in s.sides:
            rc = d.rc
            sides.append((
                s.sid, d.is_left, d.local, d.path.sub_out, d.path.snd_off, d.path.rcv_off,
                d.new.sub_out if d.new else None, d.phase, d.lock, d.lock_rid, d.snd_max,
                d.snd_acked, d.rcv_max, d.rcv_acked, d.fin_in, d.fin_out, s.last_activity,
                None if rc is None else (rc.rid, rc.cutoff_snd, rc.cutoff_rcv, rc.old_acked,
                                         rc.old_rcvd_max, rc.tries, rc.deadline),
            ))
    return (sorted(a.by_in), sorted(a.by_out), sorted(a.pending), sorted(a.by_rid),
            sorted(a.tombstones.items()), sides, len(a._timers))


@pytest.fixture(scope="module")
def live() -> World:
    world = World(3, LinkModel())
    SCENARIOS["delete-two"][0](world, 20_000)
    world.engine.run(0.027)  # locks held, new path being built, data flowing
    assert any(h.agent.by_rid for h in world.hosts.values())
    return world


def _agents(world: World) -> list[Agent]:
    return [h.agent for h in world.hosts.values()]


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=160))
def test_control_garbage_changes_nothing(live: World, data: bytes) -> None:
    for a in _agents(live):
        before = digest(a)
        try:
            ctl.decode(data)
            continue  # valid by chance: not garbage
        except Exception:
            pass
        acts = a.control(0x0A000001, data, live.engine.now)
        assert digest(a) == before
        assert [type(x) for x in acts] == [Notify]
        assert isinstance(acts[0].event, Rejected)  # type: ignore[union-attr]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 60), st.sampled_from([Hook.INPUT, Hook.OUTPUT]), st.binary(max_size=8))
def test_broken_packets_of_live_sessions_are_dropped(live: World, cut: int, hook: Hook,
                                                      junk: bytes) -> None:
    for a in _agents(live):
        keys = list(a.by_in if hook is Hook.INPUT else a.by_out)
        for t in keys[:2]:
            good = build(t[0], t[1], t[2], t[3], 1, 1, ACK, payload=b"p" * 30)
            bad = good[:cut] + junk  # truncated: IP total length no longer matches
            if len(bad) >= len(good):
                continue
            before = digest(a)
            acts = a.packet(hook, bad, live.engine.now)
            assert digest(a) == before
            if cut >= 24:  # the session's tuple is still readable
                assert acts[0] == Verdict(None), "a session's packet must never pass unrewritten"
            assert any(isinstance(x, Notify) and isinstance(x.event, Rejected) for x in acts)


def test_unknown_subsession_messages_only_get_a_nack(live: World) -> None:
    a = _agents(live)[0]
    before = digest(a)
    msg = ctl.Control(ctl.MsgType.REQUEST_LOCK, 99, (9, 9, 9, 9), 9, 9)
    peer = Authenticator(dict(SIM_KEYS), 1)
    acts = a.control(9, peer.seal(msg.encode(), 9, live.engine.now), live.engine.now)
    assert digest(a) == before
    assert len(acts) == 1
    reply = Authenticator(dict(SIM_KEYS), 1).open(acts[0].data, a.address, live.engine.now)  # type: ignore[union-attr]
    assert ctl.decode(reply).type is ctl.MsgType.NACK_LOCK


def test_a_hostile_pod_without_the_key_cannot_touch_sessions(live: World) -> None:
    """Well-formed lock, cancel, teardown and right-request messages naming real
    subsessions, sent by someone without the cluster key (or with a wrong one)."""
    wrong = Authenticator({1: b"not-the-cluster-secret!!"}, 1)
    for a in _agents(live):
        for sub, (_side, path) in list(a.by_in.items())[:2]:
            for mtype in (ctl.MsgType.REQUEST_LOCK, ctl.MsgType.CANCEL_LOCK, ctl.MsgType.TEARDOWN,
                          ctl.MsgType.RIGHT_REQUEST, ctl.MsgType.NACK_LOCK):
                msg = ctl.Control(mtype, 7, sub, a.address, path.peer).encode()
                for data in (msg, wrong.seal(msg, sub[0], live.engine.now)):
                    before = digest(a)
                    acts = a.control(sub[0], data, live.engine.now)
                    assert digest(a) == before
                    assert [type(x) for x in acts] == [Notify]
