"""Data-plane benchmark in the lab: goodput (iperf3), 1-byte round trips, connect().

Every row measures the same client pod (node 1) -> server pod (node 2) path; rows
differ in what sits on the path (nothing, or Dysco with a given NFQUEUE backend).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from dysco.dataplane import netns

from .agents import LabAgents
from .topology import Lab

IPERF_PORT = 5201
ECHO_PORT = 5002
COLUMNS = [("label", "row", "{}"), ("fwd_gbps", "fwd Gbit/s", "{:.2f}"),
           ("rev_gbps", "rev Gbit/s", "{:.2f}"), ("rr_p50_us", "RR p50 µs", "{:.0f}"),
           ("rr_p99_us", "RR p99 µs", "{:.0f}"), ("connect_p50_us", "connect p50 µs", "{:.0f}"),
           ("connect_p99_us", "connect p99 µs", "{:.0f}")]


def _iperf(ns: str, host: str, port: int, seconds: float, reverse: bool) -> float:
    """Goodput in Gbit/s; retries while the server is still finishing the last test."""
    cmd = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"]
    for _ in range(20):
        doc = json.loads(netns.run(ns, cmd + (["-R"] if reverse else []), check=False).stdout)
        if "busy" not in doc.get("error", ""):
            break
        time.sleep(0.25)
    if "error" in doc:
        raise RuntimeError(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def _probe(ns: str, mode: str, host: str, port: int, count: int) -> dict[str, float]:
    out = netns.run(ns, [sys.executable, "-m", "dysco.lab.pingpong", mode, "--host", host,
                         "--port", str(port), "--count", str(count)]).stdout
    doc: dict[str, float] = json.loads(out)
    return doc


def measure(lab: Lab, label: str, *, seconds: float = 5.0, count: int = 2000,
            dial: dict[int, int] | None = None) -> dict[str, Any]:
    """One row. `dial` maps a server port to the port the client dials instead
    (for paths that rewrite ports)."""
    dial = dial or {}
    client, server = lab.pod("client"), lab.pod("server")
    servers: list[subprocess.Popen[str]] = [
        subprocess.Popen(netns.argv(server.name, ["iperf3", "-s", "-p", str(IPERF_PORT)]),
                         stdout=subprocess.DEVNULL, text=True),
        subprocess.Popen(netns.argv(server.name, [sys.executable, "-m", "dysco.lab.pingpong",
                                                  "server", "--host", server.ip,
                                                  "--port", str(ECHO_PORT)]),
                         stdout=subprocess.PIPE, text=True),
    ]
    try:
        assert servers[1].stdout is not None
        if servers[1].stdout.readline().strip() != "READY":
            raise RuntimeError("echo server did not start")
        iperf_port = dial.get(IPERF_PORT, IPERF_PORT)
        echo_port = dial.get(ECHO_PORT, ECHO_PORT)
        _wait_listening(server.name, IPERF_PORT)
        row: dict[str, Any] = {"label": label}
        row["fwd_gbps"] = _iperf(client.name, server.ip, iperf_port, seconds, False)
        row["rev_gbps"] = _iperf(client.name, server.ip, iperf_port, seconds, True)
        rr = _probe(client.name, "rr", server.ip, echo_port, count)
        conn = _probe(client.name, "connect", server.ip, echo_port, min(count, 500))
        row |= {"rr_p50_us": rr["p50_us"], "rr_p99_us": rr["p99_us"],
                "connect_p50_us": conn["p50_us"], "connect_p99_us": conn["p99_us"]}
        return row
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def measure_dysco(lab: Lab, hops: list[str], backend: str, *, seconds: float = 5.0,
                  count: int = 2000) -> dict[str, Any]:
    """A row with Dysco agents on the client, the server and `hops` (forwarding pods)."""
    label = f"dysco {' -> '.join(['client', *hops, 'server'])} ({backend})"
    with LabAgents(lab, ["client", "server", *hops], backend=backend) as agents:
        for hop in hops:
            netns.sysctl(lab.pod(hop).name, {"net.ipv4.ip_forward": "1"})
        agents.set_chain("client", "server", hops, {IPERF_PORT, ECHO_PORT})
        row = measure(lab, label, seconds=seconds, count=count)
        notes = agents.notifications()
    row["sessions_opened"] = notes["SessionOpened"]
    return row


def _wait_listening(ns: str, port: int) -> None:
    """iperf3 -s prints nothing useful on stdout; poll the socket table instead."""
    for _ in range(100):
        out = netns.run(ns, ["ss", "-Htln", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} in {ns}")


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned plain-text table."""
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
