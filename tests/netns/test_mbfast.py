"""The middlebox fast path: real nftables maps, real middlebox apps, real TCP.

Offloaded middleboxes forward a session's bytes without their agent seeing them, while
the middlebox app still sees the session (the firewall's ESTABLISHED counter counts
the bytes); sessions that end leave no map element behind; a table the kernel refuses
leaves the sessions on the queue path, counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from dysco.dataplane import netns, nftmaps
from dysco.lab import scenarios
from dysco.lab.agents import LabAgents
from dysco.lab.topology import Lab
from dysco.middleboxes.firewall import Firewall

ECHO_PORT = 5002
MIDDLEBOXES = {"chain-fwd": ("mb1",), "chain-cross": ("mb1", "mb3"), "nat": ("mb1",)}


def _elements(ns: str) -> int:
    """Elements in the middlebox fast path's maps in `ns` (0 if there is no table)."""
    listing = netns.run(ns, ["nft", "-j", "list", "table", "ip", nftmaps.TABLE], check=False)
    if listing.returncode != 0:
        return 0
    return sum(len(item.get("map", {}).get("elem", []))
               for item in json.loads(listing.stdout)["nftables"])


@pytest.mark.parametrize("name", sorted(MIDDLEBOXES))
def test_chain_offloaded(lab: Lab, name: str) -> None:
    """1 and 2 offloaded middleboxes: SHA-256 at both ends (the scenario), the agents
    saw a handful of packets, the firewall counted every byte as ESTABLISHED."""
    size, sessions = 16 << 20, 2
    result = scenarios.run(name, lab, scenarios.Options(bytes=size, sessions=sessions,
                                                        timeout=15))
    assert result["ok"], result["failures"]
    for short in MIDDLEBOXES[name]:
        agent = result["agents"][short]
        assert agent["mbfast"]["offloaded"] == sessions, agent
        assert agent["mbfast"]["failed"] == 0 and agent["mbfast"]["sessions"] == 0, agent
        if name != "nat":  # a DNAT box's replies: handed back at the first FIN
            assert agent["packets"] < 100, agent
        assert _elements(lab.pod(short).name) == 0
    boxes = result["middleboxes"]
    if name != "nat":
        # payload both ways plus headers: every byte went through the firewall's FORWARD
        assert boxes["mb1"]["established_bytes"] > 2 * sessions * size, boxes
        assert boxes["mb1"]["dropped_packets"] == 0, boxes
    if name == "chain-cross":
        assert boxes["mb3"]["tcp_payload_bytes"] > 0 and boxes["mb3"]["flows"] > 0, boxes


def _hold_round(client_ns: str, server_ip: str, n: int) -> dict[str, int]:
    """`n` sessions open at once (each echoes a byte, so past the handshake), echo again,
    then all close; the hold's {"ok", "failed"} counts."""
    hold = subprocess.Popen(netns.argv(client_ns, [
        "prlimit", f"--nofile={n + 1000}", sys.executable, "-m", "dysco.lab.pingpong",
        "hold", "--host", server_ip, "--port", str(ECHO_PORT), "--count", str(n)]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout is not None and hold.stdin is not None
        assert json.loads(hold.stdout.readline())["open"] == n
        hold.stdin.write("go\n")
        hold.stdin.flush()
        counts: dict[str, int] = json.loads(hold.stdout.readline())
        assert hold.wait(30) == 0
        return counts
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait()


def test_no_leak_after_10000_sessions(lab: Lab) -> None:
    """10,000 sessions (20 rounds of 500 held open at once) through a firewall middlebox,
    each offloaded there (and at both ends), then closed: no map element and no
    installed session is left, every session was handed back, none refused. The client
    reuses closed connections' tuples now and then; the middlebox takes such a SYN list
    in place of the lingering old session (agent.py `_syn_in`)."""
    client, server, mb = lab.pod("client"), lab.pod("server"), lab.pod("mb1")
    rounds, n = 20, 500
    fw = Firewall(mb.name, ports=(ECHO_PORT,))
    outcomes = {"ok": 0, "failed": 0}
    with LabAgents(lab, ["client", "server", "mb1"]) as agents:
        agents.set_chain("client", "server", ["mb1"], {ECHO_PORT})
        echo = subprocess.Popen(netns.argv(server.name, [
            sys.executable, "-m", "dysco.lab.pingpong", "server", "--host", server.ip,
            "--port", str(ECHO_PORT)]), stdout=subprocess.PIPE, text=True)
        fw.start()
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
            for _ in range(rounds):
                for k, v in _hold_round(client.name, server.ip, n).items():
                    outcomes[k] += v
            deadline = time.monotonic() + 30
            while True:
                mb_stats = agents.stats()["mb1"]
                stats: dict[str, Any] = mb_stats["mbfast"]
                if stats["sessions"] == 0 and _elements(mb.name) == 0:
                    break
                assert time.monotonic() < deadline, (stats, _elements(mb.name))
                time.sleep(1)
        finally:
            counters = fw.stop()
            echo.kill()
            echo.wait()
    assert outcomes == {"ok": rounds * n, "failed": 0}
    # every session the middlebox opened was offloaded
    opened = mb_stats["notifications"]["SessionOpened"]
    assert stats["offloaded"] == opened == rounds * n, (stats, opened)
    assert stats["returned"] == stats["offloaded"] and stats["failed"] == 0, stats
    assert counters["dropped_packets"] == 0, counters


def test_table_refused_keeps_the_queue_path(lab: Lab,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """nf_tables refuses the table: the middlebox forwards on NFQUEUE, the metric says so."""
    monkeypatch.setattr(nftmaps, "TABLE", "x" * 300)  # longer than NFT_NAME_MAXLEN
    result = scenarios.run("chain-fwd", lab, scenarios.Options(bytes=4 << 20, sessions=2,
                                                               timeout=15))
    assert result["ok"], result["failures"]
    mb = result["agents"]["mb1"]
    assert mb["mbfast"]["unavailable"] == 1 and mb["mbfast"]["offloaded"] == 0, mb
    assert mb["packets"] > 100, mb
