"""Run scenarios under seeded schedules and check the invariants of every run."""

from __future__ import annotations

import time
from typing import Any

from .network import LinkModel
from .scenarios import SCENARIOS
from .world import World

HORIZON = 120.0  # simulated seconds; a run still busy by then is deadlocked


def run_one(name: str, seed: int, loss: float = 0.0, size: int = 20_000,
            dup: float | None = None, jitter: float = 0.001) -> dict[str, Any]:
    builder, _ = SCENARIOS[name]
    link = LinkModel(delay=0.001, jitter=jitter, loss=loss,
                     dup=loss / 2 if dup is None else dup)
    world = World(seed, link)
    setup = builder(world, size)
    quiet = world.engine.run(HORIZON)
    v = list(world.violations)
    if not quiet:
        v.append("no quiescence: events still pending at the horizon (deadlock or livelock)")
    for ep, who in ((setup.client, "client"), (setup.server, "server")):
        if not ep.finished():
            c = ep.conn
            got = len(c.received) if c else 0
            v.append(f"{who} did not finish: received {got}/{len(ep.expect)} bytes")
    done = len(world.outcome.done)
    if (done < setup.expect_done) if setup.at_least else (done != setup.expect_done):
        v.append(f"{done} reconfigurations completed, expected {setup.expect_done}")
    v.extend(world.leftovers())
    return {
        "scenario": name,
        "seed": seed,
        "loss": loss,
        "ok": not v,
        "violations": v,
        "bytes": len(setup.client.expect) + len(setup.server.expect),
        "reconfigs_done": done,
        "reconfigs_retried": len([f for _, f in world.outcome.failed if not f.final]),
        "reconfigs_failed": len([f for _, f in world.outcome.failed if f.final]),
        "packets": world.net.sent,
        "lost": world.net.lost,
        "sim_time": round(world.engine.now, 4),
        "events": world.engine.events,
    }


def run_many(
    name: str, runs: int, seed: int, loss: float, size: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    t0 = time.perf_counter()
    results = [run_one(name, seed + i, loss, size) for i in range(runs)]
    bad = [r for r in results if not r["ok"]]
    summary = {
        "scenario": name,
        "runs": runs,
        "violations": len(bad),
        "seed": seed,
        "loss": loss,
        "failed_seeds": [r["seed"] for r in bad][:20],
        "reconfigs_done": sum(r["reconfigs_done"] for r in results),
        "reconfigs_retried": sum(r["reconfigs_retried"] for r in results),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    return results, summary
