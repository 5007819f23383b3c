"""A middlebox dies under live sessions: both ends are reset within the hop timeout (not
left hanging until their sockets time out), and each end counts it."""

from __future__ import annotations

from dysco.lab import scenarios
from dysco.lab.topology import Lab


def test_dead_middlebox_resets_both_ends(lab: Lab) -> None:
    result = scenarios.run("dead-middlebox", lab, scenarios.Options(
        bytes=32 << 20, sessions=2, timeout=15, rate=2 << 20))
    assert result["ok"], result["failures"]
    assert result["errors"] == ["ECONNRESET"] * 4
    assert result["notifications"]["HopFailed"] == 4
    assert result["reset_after_s"] < scenarios.DEAD_HOP_TIMEOUT + 5
