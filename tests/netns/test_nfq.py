"""Both NFQUEUE backends pass and rewrite real TCP, 64 KiB GSO segments included."""

from __future__ import annotations

import os
import struct

import pytest
from standin import RPORT, VPORT, PortMapper, QueueLoop

from dysco.core.actions import Hook
from dysco.dataplane import checksum, nfq, rules, segment
from dysco.lab import counters, scenarios
from dysco.lab.topology import Lab

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


def test_checksums_and_segmentation() -> None:
    """Full checksums of odd and 64 KiB sizes, and MTU cuts that stay contiguous."""
    for size in (0, 1, 3, 1447, 4097, 65_000):
        payload = os.urandom(size)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + size, 7, 0x4000, 64, 6, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 0xFFFFFF00, 5, 0x50, 0x19, 500, 0, 0)
        packet = checksum.with_tcp_checksum(ip + tcp + payload)
        assert checksum.tcp_checksum_ok(packet)
        assert size == 0 or not checksum.tcp_checksum_ok(packet[:-1] + bytes([packet[-1] ^ 1]))
        pieces = segment.split(packet, 1500)
        assert b"".join(p[40:] for p in pieces) == payload
        seq = 0xFFFFFF00
        for i, piece in enumerate(pieces):
            assert len(piece) <= 1500 and checksum.tcp_checksum_ok(piece)
            assert struct.unpack_from("!I", piece, 24)[0] == seq  # wraps past 2**32
            last = i == len(pieces) - 1
            assert piece[33] & 0x09 == (0x09 if last else 0)  # FIN and PSH on the last only
            seq = (seq + len(piece) - 40) & 0xFFFFFFFF
