"""A middlebox dies under live sessions: both ends are reset within the hop timeout (not
left hanging until their sockets time out), and each end counts it. With the fast path
the ends' agents see no packets of their sessions: their sockets show the stall."""

from __future__ import annotations

import pytest

from dysco.lab import scenarios
from dysco.lab.topology import Lab


@pytest.mark.parametrize("fastpath", [True, False], ids=["fast", "queue"])
def test_dead_middlebox_resets_both_ends(lab: Lab, fastpath: bool) -> None:
    result = scenarios.run("dead-middlebox", lab, scenarios.Options(
        bytes=32 << 20, sessions=2, timeout=15, rate=2 << 20, fastpath=fastpath))
    assert result["ok"], result["failures"]
    assert result["errors"] == ["ECONNRESET"] * 4
    assert result["notifications"]["HopFailed"] == 4
    assert result["reset_after_s"] < scenarios.DEAD_HOP_TIMEOUT + 5
    if fastpath:  # offloaded, then handed back to the watch by the socket check
        for short in ("client", "server"):
            fast = result["agents"][short]["fastpath"]
            assert fast["offloaded"] == 2 and fast["returned"] >= 1, fast
