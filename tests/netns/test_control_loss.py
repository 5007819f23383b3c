"""Control-message loss on the real data plane: a live replacement with a fifth of the
control datagrams dropped completes (or gives up cleanly); bytes intact, no reset."""

from __future__ import annotations

from dysco.lab import scenarios
from dysco.lab.topology import Lab


def test_replace_under_control_loss(lab: Lab) -> None:
    # paced (about 10 s), so the sessions outlast retransmissions and retries
    result = scenarios.run("control-loss", lab, scenarios.Options(
        bytes=32 << 20, sessions=2, timeout=15, rate=3 << 20, loss=0.2))
    assert result["ok"], result["failures"]
    assert result["control_dropped"] > 0
    assert result["order"]["done"] + result["order"]["failed"] == 2, result["order"]
