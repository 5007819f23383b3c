"""Agent snapshots: a restored agent has exactly the state of the one that stopped, and
bad snapshots are refused whole."""

from __future__ import annotations

import json

import pytest

from dysco.core import persist
from dysco.sim.fuzz import digest
from dysco.sim.network import LinkModel
from dysco.sim.scenarios import SCENARIOS
from dysco.sim.world import World


def live_world() -> World:
    world = World(5, LinkModel())
    SCENARIOS["contention"][0](world, 20_000)
    world.engine.run(0.035)  # locks held, a saved request, new paths being built
    return world


def test_round_trip_keeps_every_table_and_timer() -> None:
    world = live_world()
    for h in world.hosts.values():
        data = json.loads(json.dumps(persist.snapshot(h.agent)))
        back = persist.restore(h.agent.config, data, h.agent.now)
        assert digest(back)[:6] == digest(h.agent)[:6]
        assert back.counters == h.agent.counters
        assert back.ports.used() == h.agent.ports.used()
        assert (back.next_deadline() is None) == (h.agent.next_deadline() is None)


def test_bad_snapshots_are_refused() -> None:
    world = live_world()
    a = world.hosts["A"].agent
    good = persist.snapshot(a)
    for bad in ({**good, "version": 99}, {**good, "address": 1}, {**good, "sessions": [{}]},
                {"version": 1}, "junk"):
        with pytest.raises(persist.SnapshotError):
            persist.restore(a.config, bad, 0.0)  # type: ignore[arg-type]
