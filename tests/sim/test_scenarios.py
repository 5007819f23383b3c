"""Every scenario, 500 seeds each, with loss, duplication and reordering.

The invariants of each run are checked by the simulator itself (`dysco.sim.runner`):
exact byte streams at both ends, no ack for unsent data at any endpoint or middlebox,
lock bookkeeping, quiescence, all state freed, and the expected reconfigurations done.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from dysco.sim.runner import run_many, run_one
from dysco.sim.scenarios import SCENARIOS

SEEDS = int(os.environ.get("DYSCO_SIM_SEEDS", "500"))


def _batch(args: tuple[str, int, int, float]) -> list[tuple[int, list[str]]]:
    name, first, n, loss = args
    results, _ = run_many(name, n, first, loss, 20_000)
    return [(r["seed"], r["violations"]) for r in results if not r["ok"]]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_holds_for_every_seed(name: str) -> None:
    # half the seeds at 2% loss, half at 5% (duplication is half the loss); jitter reorders
    half = SEEDS // 2
    jobs = [(name, 1000, half, 0.02), (name, 5000, SEEDS - half, 0.05)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        bad = [b for part in pool.map(_batch, jobs) for b in part]
    assert not bad, f"{len(bad)} of {SEEDS} runs violated invariants, first: {bad[:3]}"


def test_runs_are_deterministic() -> None:
    assert run_one("contention", 42, 0.05) == run_one("contention", 42, 0.05)


def test_a_broken_core_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariants can fail: drop the ack clamp on the old path and runs must break."""
    from dysco.core import datapath

    def no_split(side, rc, pkt):  # type: ignore[no-untyped-def]
        return [(pkt, datapath.seq.ge(pkt.seq, rc.cutoff_snd))]

    monkeypatch.setattr("dysco.core.agent.split_two_paths", no_split)
    bad = [run_one("delete-two", s, 0.0) for s in range(10)]
    assert any(not r["ok"] for r in bad)
