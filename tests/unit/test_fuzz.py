"""`dysco fuzz` at CI budget: hostile input against live agents never raises, never
changes state when rejected, keeps lock bookkeeping consistent, stays bounded."""

from __future__ import annotations

import os

from dysco.sim.fuzz import run

BUDGET = int(os.environ.get("DYSCO_FUZZ_INPUTS", "4000"))


def test_fuzz_budget_runs_clean() -> None:
    summary = run(BUDGET, 7, lambda _line: None)
    assert summary["errors"] == 0, summary["first_errors"]
    # the generators reach deep: most rejection reasons of both parsers show up
    reasons = summary["rejected_by_reason"]
    assert {"packet:truncated", "packet:bad_doff", "control:bad_mac", "control:unknown_key",
            "control:bad_length"} <= set(reasons)
    assert summary["accepted"] > BUDGET // 10
    assert summary["max_sessions_per_agent"] < 200
