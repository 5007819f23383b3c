"""Dysco in the lab with the real protocol core: chains and live reconfiguration.

Every scenario moves bytes both ways at once with SHA-256 at both ends and fails on a
stall, a reset, a checksum error, a rejected packet or a failed reconfiguration.
"""

from __future__ import annotations

import pytest
from conftest import PREFIX

from dysco.lab import scenarios
from dysco.lab.topology import Lab

LIVE = ["insert", "remove", "replace"]


@pytest.mark.parametrize("name", ["direct", "chain-fwd", "chain-cross", "nat", "proxy"])
def test_chain(lab: Lab, name: str) -> None:
    result = scenarios.run(name, lab, scenarios.Options(bytes=8 << 20, sessions=2,
                                                        timeout=15))
    assert result["ok"], result["failures"]


@pytest.mark.parametrize("name", LIVE)
def test_live_reconfiguration(lab: Lab, name: str) -> None:
    result = scenarios.run(name, lab, scenarios.Options(bytes=40 << 20, sessions=2,
                                                        timeout=15))
    assert result["ok"], result["failures"]
    assert result["client_packets"]["final"] > result["client_packets"]["at_done"]


@pytest.mark.parametrize("name", ["direct", "insert"])
def test_binding_backend(lab: Lab, name: str) -> None:
    result = scenarios.run(name, lab, scenarios.Options(bytes=12 << 20, sessions=1,
                                                        timeout=15, backend="binding"))
    assert result["ok"], result["failures"]


@pytest.mark.parametrize("offloads", ["gro", "off"])
def test_other_offloads(offloads: str) -> None:
    """MTU-sized segments (offloads off) and GRO-built super-packets at the receivers."""
    lab = Lab(prefix=f"{PREFIX}{offloads}-", middleboxes_per_node=1, offloads=offloads)
    try:
        result = scenarios.run("chain-fwd", lab, scenarios.Options(bytes=8 << 20, sessions=2,
                                                                   timeout=15))
    finally:
        lab.down()
    assert result["ok"], result["failures"]
