"""Scenarios: traffic patterns run in the lab and checked end to end.

A scenario passes only if every session delivered its bytes intact in both directions
(SHA-256 at both ends), nothing stalled, and no pod's kernel counted a reset, an abort
or a checksum error while it ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dysco.dataplane import netns

from . import counters
from .topology import Lab

_RESET_COUNTERS = ("Tcp.OutRsts", "Tcp.InCsumErrors", "Tcp.EstabResets",
                   "TcpExt.TCPAbortOnData", "TcpExt.TCPAbortOnClose",
                   "TcpExt.TCPAbortOnMemory", "TcpExt.TCPAbortOnTimeout",
                   "TcpExt.TCPAbortOnLinger", "TcpExt.TCPAbortFailed")


@dataclass(frozen=True)
class Options:
    bytes: int = 10 << 20      # per direction per session
    sessions: int = 1
    timeout: float = 30.0      # hard limit per socket operation
    port: int = 5001


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[Lab, Options], dict[str, Any]]


def _tcpio(ns: str, *args: str) -> list[str]:
    return netns.argv(ns, [sys.executable, "-m", "dysco.lab.tcpio", *args])


def transfer(lab: Lab, client: str, server: str, opts: Options,
             connect_to: str | None = None, connect_port: int | None = None) -> dict[str, Any]:
    """Run tcpio between two pods (short names) and check both directions.

    The server listens on `opts.port`; the client dials `connect_to`:`connect_port`
    (default: the server pod's IP and the same port), which something on the way
    (Dysco, a NAT) may map to the server's."""
    cpod, spod = lab.pod(client), lab.pod(server)
    pods = [p.name for p in lab.pods()]
    before = {ns: counters.read(ns) for ns in pods}
    common = ["--sessions", str(opts.sessions), "--bytes", str(opts.bytes),
              "--timeout", str(opts.timeout)]
    srv = subprocess.Popen(_tcpio(spod.name, "server", "--host", spod.ip,
                                  "--port", str(opts.port), *common),
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        ready = srv.stdout.readline().strip()
        if ready != "READY":
            raise RuntimeError(f"tcpio server in {spod.name} did not start: {ready!r}")
        start = time.monotonic()
        cli = subprocess.run(_tcpio(cpod.name, "client", "--host", connect_to or spod.ip,
                                    "--port", str(connect_port or opts.port), *common),
                             capture_output=True, text=True, timeout=opts.timeout * 4 + 60)
        srv_out, _ = srv.communicate(timeout=opts.timeout * 2 + 30)
        seconds = time.monotonic() - start
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    after = {ns: counters.read(ns) for ns in pods}
    client_doc = _parse(cli.stdout, "client")
    server_doc = _parse(srv_out, "server")
    deltas = {ns: counters.delta(before[ns], after[ns]) for ns in pods}
    failures = check(client_doc, server_doc, opts)
    for ns, d in deltas.items():
        failures += [f"{ns}: {k} +{v}" for k, v in d.items() if k in _RESET_COUNTERS]
    moved = 2 * opts.bytes * opts.sessions
    return {"ok": not failures, "failures": failures, "client": client, "server": server,
            "bytes": opts.bytes, "sessions": opts.sessions, "seconds": round(seconds, 3),
            "goodput_mbps": round(moved * 8 / seconds / 1e6, 1),
            "connect_ms": client_doc.get("connect_ms", []),
            "max_gap_s": max([s["max_gap_s"] for s in client_doc["sessions"]
                              + server_doc["sessions"]], default=0.0),
            "counters": {ns: d for ns, d in deltas.items() if d}}


def _parse(stdout: str, role: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"role": role, "error": f"no result (output {stdout[-200:]!r})", "sessions": []}
    return doc


def check(client: dict[str, Any], server: dict[str, Any], opts: Options) -> list[str]:
    """Every way the two tcpio reports can show a broken session."""
    failures = [f"{d['role']}: {d['error']}" for d in (client, server) if d.get("error")]
    by_token = {s["token"]: s for s in server["sessions"]}
    if len(client["sessions"]) != opts.sessions:
        failures.append(f"client ran {len(client['sessions'])}/{opts.sessions} sessions")
    for i, c in enumerate(client["sessions"]):
        name = f"session {i} ({c['local']})"
        s = by_token.get(c["token"])
        if s is None:
            failures.append(f"{name}: the server never saw token {c['token']}")
            continue
        for side, r in (("client", c), ("server", s)):
            if r["error"]:
                failures.append(f"{name}: {side} error {r['error']}")
            if r["stalled"]:
                failures.append(f"{name}: {side} stalled {r['max_gap_s']} s")
            if r["sent"] != opts.bytes or r["received"] != opts.bytes:
                failures.append(f"{name}: {side} sent {r['sent']} received {r['received']}")
        if c["sha_sent"] != s["sha_received"]:
            failures.append(f"{name}: client->server bytes differ (SHA-256)")
        if s["sha_sent"] != c["sha_received"]:
            failures.append(f"{name}: server->client bytes differ (SHA-256)")
    return failures


def _plain(lab: Lab, opts: Options) -> dict[str, Any]:
    return transfer(lab, "client", "server", opts)


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in [
        Scenario("plain", "no Dysco: client pod (node 1) <-> server pod (node 2), routed",
                 _plain),
    ]
}


def run(name: str, lab: Lab, opts: Options) -> dict[str, Any]:
    """Bring the lab up if needed and run scenario `name`."""
    scenario = SCENARIOS[name]
    lab.up()
    result = scenario.run(lab, opts)
    return {"scenario": name, **result}
