"""Both NFQUEUE backends pass and rewrite real TCP, 64 KiB GSO segments included."""

from __future__ import annotations

import pytest
from dysco.core.actions import Hook
from dysco.dataplane import checksum, nfq, rules
from dysco.lab import counters, scenarios
from dysco.lab.topology import Lab
from standin import RPORT, VPORT, PortMapper, QueueLoop

BYTES = 16 << 20


def run_rewritten_transfer(lab: Lab, backend: str) -> dict[str, int]:
    """Client pod dials server:VPORT; only the stand-in's rewrite gets it to RPORT."""
    client = lab.pod("client")
    rule = rules.Interception(client.name, rules.detect_variant())
    queues: dict[Hook, nfq.Queue] = {
        Hook.INPUT: nfq.BACKENDS[backend](rule.queue_in, client.name),
        Hook.OUTPUT: nfq.BACKENDS[backend](rule.queue_out, client.name),
    }
    mapper = PortMapper()
    loop = QueueLoop(queues, mapper)
    loop.start()
    try:
        rule.install()
        before = {p.name: counters.read(p.name) for p in lab.pods()}
        result = scenarios.transfer(
            lab, "client", "server",
            scenarios.Options(bytes=BYTES, sessions=2, port=RPORT, timeout=20),
            connect_port=VPORT)
        after = {p.name: counters.read(p.name) for p in lab.pods()}
    finally:
        rule.remove()
        loop.stop.set()
        loop.join()
        for q in queues.values():
            q.close()
    assert result["ok"], result["failures"]
    assert mapper.rewritten > 0
    for ns in before:
        assert after[ns]["Tcp.InCsumErrors"] == before[ns]["Tcp.InCsumErrors"], ns
    return loop.seen


def test_raw_backend_rewrites_gso_segments(lab: Lab) -> None:
    seen = run_rewritten_transfer(lab, "raw")
    assert seen["gso"] > 0, seen
    assert seen["max_len"] > 16000, seen
    assert seen["csum_partial"] > 0, seen


def test_binding_backend_rewrites(lab: Lab) -> None:
    seen = run_rewritten_transfer(lab, "binding")
    assert seen["packets"] > 1000
    assert seen["max_len"] <= 1500, "without the GSO flag the kernel segments"


@pytest.mark.parametrize("backend", sorted(nfq.BACKENDS))
def test_queue_passes_everything_unchanged(lab: Lab, backend: str) -> None:
    server = lab.pod("server")
    rule = rules.Interception(server.name, rules.detect_variant())
    queues: dict[Hook, nfq.Queue] = {
        Hook.INPUT: nfq.BACKENDS[backend](rule.queue_in, server.name),
        Hook.OUTPUT: nfq.BACKENDS[backend](rule.queue_out, server.name),
    }
    loop = QueueLoop(queues, PortMapper())  # nothing on port 5001 is mapped
    loop.start()
    try:
        rule.install()
        result = scenarios.transfer(lab, "client", "server", scenarios.Options(bytes=BYTES))
    finally:
        rule.remove()
        loop.stop.set()
        loop.join()
        for q in queues.values():
            q.close()
    assert result["ok"], result["failures"]
    assert loop.seen["packets"] > 0


def test_partial_checksum_completion_rules() -> None:
    # Leaving GSO packets are re-checksummed by software GSO; everything else is ours.
    assert not checksum.needs_completion(checksum.HOOK_POST_ROUTING, True, True)
    assert checksum.needs_completion(checksum.HOOK_POST_ROUTING, True, False)
    assert checksum.needs_completion(checksum.HOOK_PRE_ROUTING, True, True)
    assert not checksum.needs_completion(checksum.HOOK_PRE_ROUTING, False, True)
