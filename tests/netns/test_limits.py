"""Resource limits on the real data plane: floods of SYNs (from a pod with a policy and
forged SYN lists from a hostile pod) and of control messages during a transfer."""

from __future__ import annotations

from dysco.lab import scenarios
from dysco.lab.topology import Lab


def test_floods_leave_sessions_alone_and_tables_bounded(lab: Lab) -> None:
    result = scenarios.run("syn-flood", lab, scenarios.Options(
        bytes=16 << 20, sessions=2, timeout=15, rate=4 << 20))
    assert result["ok"], result["failures"]
    limit = scenarios.FLOOD_LIMITS["max_half_open"]
    tables = result["order"]["tables"]
    assert {t["half_open"] for t in tables.values()} == {limit}, tables
    assert all(t["sessions"] <= limit + 2 for t in tables.values()), tables
    sent = result["order"]["floods"][0]["sent"]
    # every flood SYN over the limit was refused at the first agent it met
    assert result["rejected"]["client"]["half_open_full"] >= sent - limit - 10
    assert result["rejected"]["client"]["rate_limited"] > 0
