"""Scenarios: traffic patterns run in the lab and checked end to end.

A scenario passes only if every session delivered its bytes intact in both directions
(SHA-256 at both ends), nothing stalled, and no pod's kernel counted a reset, an abort
or a checksum error while it ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dysco.core import Selector
from dysco.core import commands as cmd
from dysco.dataplane import netns
from dysco.middleboxes import Middlebox, proxy
from dysco.middleboxes.dpi import Dpi
from dysco.middleboxes.firewall import Firewall
from dysco.middleboxes.nat import PortNat
from dysco.middleboxes.proxy import Proxy

from . import counters
from .agents import LabAgents
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
    backend: str = "raw"       # NFQUEUE backend of the Dysco agents


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[Lab, Options], dict[str, Any]]


def _tcpio(ns: str, *args: str) -> list[str]:
    return netns.argv(ns, [sys.executable, "-m", "dysco.lab.tcpio", *args])


def transfer(lab: Lab, client: str, server: str, opts: Options, *,
             connect_to: str | None = None, connect_port: int | None = None,
             prefixes: tuple[bytes, bytes] = (b"", b""),
             during: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run tcpio between two pods (short names) and check both directions.

    The server listens on `opts.port`; the client dials `connect_to`:`connect_port`
    (default: the server pod's IP and the same port), which something on the way
    (Dysco, a NAT) may map to the server's. `prefixes` are the bytes a middlebox adds
    before the server's and the client's stream. `during` runs in a thread while the
    bytes flow (a reconfiguration)."""
    cpod, spod = lab.pod(client), lab.pod(server)
    pods = [p.name for p in lab.pods()]
    before = {ns: counters.read(ns) for ns in pods}
    common = ["--sessions", str(opts.sessions), "--bytes", str(opts.bytes),
              "--timeout", str(opts.timeout)]
    srv = subprocess.Popen(_tcpio(spod.name, "server", "--host", spod.ip,
                                  "--port", str(opts.port), "--skip", str(len(prefixes[0])),
                                  *common),
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        ready = srv.stdout.readline().strip()
        if ready != "READY":
            raise RuntimeError(f"tcpio server in {spod.name} did not start: {ready!r}")
        start = time.monotonic()
        side = threading.Thread(target=during) if during else None
        cli_proc = subprocess.Popen(
            _tcpio(cpod.name, "client", "--host", connect_to or spod.ip,
                   "--port", str(connect_port or opts.port), "--skip", str(len(prefixes[1])),
                   *common), stdout=subprocess.PIPE, text=True)
        if side:
            side.start()
        cli_out, _ = cli_proc.communicate(timeout=opts.timeout * 4 + 60)
        srv_out, _ = srv.communicate(timeout=opts.timeout * 2 + 30)
        seconds = time.monotonic() - start
        if side:
            side.join()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    after = {ns: counters.read(ns) for ns in pods}
    client_doc = _parse(cli_out, "client")
    server_doc = _parse(srv_out, "server")
    deltas = {ns: counters.delta(before[ns], after[ns]) for ns in pods}
    failures = check(client_doc, server_doc, opts, prefixes)
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


def check(client: dict[str, Any], server: dict[str, Any], opts: Options,
          prefixes: tuple[bytes, bytes] = (b"", b"")) -> list[str]:
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
        for side, r, want in (("server", s, prefixes[0]), ("client", c, prefixes[1])):
            if r.get("prefix", "") != want.hex():
                failures.append(f"{name}: {side} got prefix {r.get('prefix')!r}, "
                                f"expected {want!r}")
        if c["sha_sent"] != s["sha_received"]:
            failures.append(f"{name}: client->server bytes differ (SHA-256)")
        if s["sha_sent"] != c["sha_received"]:
            failures.append(f"{name}: server->client bytes differ (SHA-256)")
    return failures


def _plain(lab: Lab, opts: Options) -> dict[str, Any]:
    return transfer(lab, "client", "server", opts)


BoxFactory = Callable[[str], Middlebox]
RECONFIG_AFTER_PACKETS = 300
Reconfig = Callable[[LabAgents], None]


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _dysco(lab: Lab, opts: Options, *, hops: list[str], spare: tuple[str, ...] = (),
           boxes: dict[str, BoxFactory] | None = None, reconfig: Reconfig | None = None,
           server_port: int | None = None, prefixes: tuple[bytes, bytes] = (b"", b""),
           content_delta: tuple[str, int, int] | None = None,
           must_see: tuple[str, ...] = ()) -> dict[str, Any]:
    """Client -> `hops` -> server with Dysco agents on all of them (and on `spare`
    middleboxes that a reconfiguration brings in). `boxes` turn pods into middleboxes;
    `reconfig` runs once the sessions are open and bytes flow; `must_see` are pods
    whose middlebox must have counted traffic."""
    boxes = boxes or {}
    running: dict[str, Middlebox] = {}
    opened = 0
    with LabAgents(lab, ["client", "server", *hops, *spare], backend=opts.backend) as agents:
        try:
            for short, factory in boxes.items():
                running[short] = factory(lab.pod(short).name)
                running[short].start()
            agents.set_chain("client", "server", hops, {opts.port})

            marks: dict[str, int] = {}

            def client_packets() -> int:
                return int(agents.stats()["client"]["packets"])

            def during() -> None:
                if not _wait_for(lambda: agents.notifications()["SessionOpened"] > 0, 10):
                    return
                if content_delta:
                    short, l2r, r2l = content_delta
                    agents.command(short, cmd.SetContentDelta(Selector(), l2r, r2l))
                if reconfig:
                    # reconfigure a session that is well under way, then note how far
                    # it had got when the reconfiguration completed
                    _wait_for(lambda: client_packets() >= RECONFIG_AFTER_PACKETS, 20)
                    marks["at_start"] = client_packets()
                    reconfig(agents)
                    if _wait_for(lambda: agents.notifications()["ReconfigDone"] > 0, 20):
                        marks["at_done"] = client_packets()

            sport = server_port or opts.port
            result = transfer(lab, "client", "server", replace(opts, port=sport),
                              connect_port=opts.port, prefixes=prefixes,
                              during=during if reconfig or content_delta else None)
            notes = agents.notifications()
            opened = notes["SessionOpened"]
            result["agents"] = agents.stats()
            result["notifications"] = dict(notes)
        finally:
            counts = {short: box.stop() for short, box in running.items()}
    result["middleboxes"] = counts
    failures: list[str] = result["failures"]
    if opened == 0:
        failures.append("no Dysco session was opened")
    if reconfig and notes["ReconfigDone"] == 0:
        failures.append("the reconfiguration never completed")
    elif reconfig:
        final = result["agents"]["client"]["packets"]
        result["client_packets"] = {**marks, "final": final}
        if marks.get("at_done", final) >= final:
            failures.append(f"no packets after the reconfiguration: {result['client_packets']}")
    if notes["ReconfigFailed"] or notes["Rejected"]:
        failures.append(f"agents reported {notes['ReconfigFailed']} failed reconfigurations "
                        f"and {notes['Rejected']} rejected inputs")
    for short in must_see:
        if not any(v for k, v in counts.get(short, {}).items() if k.endswith("packets")):
            failures.append(f"middlebox {short} saw no traffic: {counts.get(short)}")
    result["ok"] = not failures
    return result


def _fw(ns: str) -> Middlebox:
    return Firewall(ns)


def _chain_fwd(lab: Lab, opts: Options) -> dict[str, Any]:
    return _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw}, must_see=("mb1",))


def _chain_cross(lab: Lab, opts: Options) -> dict[str, Any]:
    return _dysco(lab, opts, hops=["mb1", "mb3"], boxes={"mb1": _fw, "mb3": Dpi},
                  must_see=("mb1", "mb3"))


def _nat(lab: Lab, opts: Options) -> dict[str, Any]:
    to_port = opts.port + 300
    return _dysco(lab, opts, hops=["mb1"], server_port=to_port,
                  boxes={"mb1": lambda ns: PortNat(ns, opts.port, to_port)},
                  must_see=("mb1",))


def _proxy(lab: Lab, opts: Options) -> dict[str, Any]:
    return _dysco(lab, opts, hops=["mb1"],
                  boxes={"mb1": lambda ns: Proxy(ns, port=opts.port)},
                  prefixes=(proxy.BANNER_LR, proxy.BANNER_RL),
                  content_delta=("mb1", len(proxy.BANNER_LR), len(proxy.BANNER_RL)),
                  must_see=("mb1",))


def _insert(lab: Lab, opts: Options) -> dict[str, Any]:
    def go(agents: LabAgents) -> None:
        agents.command("client", cmd.InsertRight(Selector(), (agents.ip("mb1"),)))
    return _dysco(lab, opts, hops=[], spare=("mb1",), boxes={"mb1": _fw}, reconfig=go,
                  must_see=("mb1",))


def _remove(lab: Lab, opts: Options) -> dict[str, Any]:
    def go(agents: LabAgents) -> None:
        agents.command("mb1", cmd.ReplaceSelf(Selector(), ()))
    return _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw}, reconfig=go,
                  must_see=("mb1",))


def _replace(lab: Lab, opts: Options) -> dict[str, Any]:
    def go(agents: LabAgents) -> None:
        agents.command("mb1", cmd.ReplaceSelf(Selector(), (agents.ip("mb3"),)))
    return _dysco(lab, opts, hops=["mb1"], spare=("mb3",), boxes={"mb1": _fw, "mb3": _fw},
                  reconfig=go, must_see=("mb1", "mb3"))


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in [
        Scenario("plain", "no Dysco: client pod (node 1) <-> server pod (node 2), routed",
                 _plain),
        Scenario("direct", "Dysco session with no middlebox (one direct subsession)",
                 lambda lab, opts: _dysco(lab, opts, hops=[])),
        Scenario("chain-fwd", "client -> firewall (mb1) -> server", _chain_fwd),
        Scenario("chain-cross", "client -> firewall (mb1, node 1) -> DPI (mb3, node 2) "
                 "-> server", _chain_cross),
        Scenario("nat", "client -> port-rewriting NAT (mb1) -> server on another port",
                 _nat),
        Scenario("proxy", "client -> TCP-terminating proxy adding banners (mb1) -> server",
                 _proxy),
        Scenario("insert", "live insertion of a firewall (mb1) into a direct session",
                 _insert),
        Scenario("remove", "live removal of the firewall (mb1) from a session", _remove),
        Scenario("replace", "live replacement of firewall mb1 by firewall mb3", _replace),
    ]
}


def run(name: str, lab: Lab, opts: Options) -> dict[str, Any]:
    """Bring the lab up if needed and run scenario `name`."""
    scenario = SCENARIOS[name]
    lab.up()
    result = scenario.run(lab, opts)
    return {"scenario": name, **result}
