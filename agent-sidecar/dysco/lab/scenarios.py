"""Scenarios: traffic patterns run in the lab and checked end to end.

A scenario passes only if every session delivered its bytes intact in both directions
(SHA-256 at both ends), nothing stalled, and no pod's kernel counted a reset, an abort
or a checksum error while it ran.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from dysco.core import Selector
from dysco.core import commands as cmd
from dysco.core.events import SessionOpened
from dysco.dataplane import netns
from dysco.dataplane.rules import detect_variant
from dysco.middleboxes import Middlebox, proxy
from dysco.middleboxes.dpi import Dpi
from dysco.middleboxes.firewall import Firewall, copy_state
from dysco.middleboxes.nat import PortNat
from dysco.middleboxes.proxy import Proxy

from . import counters
from .agents import LabAgents
from .control import Order
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
    fastpath: bool = True      # end hosts offload steady sessions to conntrack
    rate: int = 0              # pace each direction of each session (bytes/s, 0: no)
    loss: float = 0.2          # control-loss: share of control datagrams dropped


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
    # The endpoints run without tail loss probes: with the agents' added delay a TLP
    # resends the passive closer's FIN, the peer acks both copies, and the second ACK,
    # reaching a socket already closed, draws a harmless but counted RST.
    for ns in (cpod.name, spod.name):
        netns.sysctl(ns, {"net.ipv4.tcp_early_retrans": "0"})
    before = {ns: counters.read(ns) for ns in pods}
    common = ["--sessions", str(opts.sessions), "--bytes", str(opts.bytes),
              "--timeout", str(opts.timeout), "--rate", str(opts.rate)]
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
    for ns in (cpod.name, spod.name):
        netns.sysctl(ns, {"net.ipv4.tcp_early_retrans": "3"})  # the kernel default
    client_doc = _parse(cli_out, "client")
    server_doc = _parse(srv_out, "server")
    deltas = {ns: counters.delta(before[ns], after[ns]) for ns in pods}
    failures = check(client_doc, server_doc, opts, prefixes)
    for ns, d in deltas.items():
        failures += [f"{ns}: {k} +{v}" for k, v in d.items() if k in _RESET_COUNTERS]
    moved = 2 * opts.bytes * opts.sessions
    slow = sorted(({"session": i, "side": side, "gap_s": r["max_gap_s"], "dir": r.get("gap_dir"),
                    "ended_s": round(r["max_gap_end"] - start, 3)}
                   for side, doc in (("client", client_doc), ("server", server_doc))
                   for i, r in enumerate(doc["sessions"]) if r["max_gap_s"] > SLOW_S),
                  key=lambda d: -d["gap_s"])
    errors = [r["error"] for r in client_doc["sessions"] + server_doc["sessions"]]
    return {"ok": not failures, "failures": failures, "client": client, "server": server,
            "errors": errors,
            "bytes": opts.bytes, "sessions": opts.sessions, "seconds": round(seconds, 3),
            "goodput_mbps": round(moved * 8 / seconds / 1e6, 1),
            "connect_ms": client_doc.get("connect_ms", []),
            "max_gap_s": max([s["max_gap_s"] for s in client_doc["sessions"]
                              + server_doc["sessions"]], default=0.0),
            "counters": {ns: d for ns, d in deltas.items() if d},
            "started_at": start, "slow": slow[:SLOW_LISTED], "slow_count": len(slow)}


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
    result = transfer(lab, "client", "server", opts)
    del result["started_at"]
    return result


# sessions with a gap longer than this are listed in a result (a stall's timeline)
SLOW_S = 1.0
SLOW_LISTED = 20

BoxFactory = Callable[[str], Middlebox]
RECONFIG_AFTER_PACKETS = 300
# A reconfiguration: runs in a thread while the bytes flow; returns what it wants kept
# in the result (the order's answer). `LabAgents.order` gives orders the way
# `dysco chain` does, through the agents' control socket.
Reconfig = Callable[[LabAgents, dict[str, Middlebox]], dict[str, Any]]


def link_packets(ns: str) -> int:
    """Packets through a pod's links, counted by the kernel: how far a transfer got,
    whether the agent saw its packets (queue path) or not (fast path)."""
    links = json.loads(netns.run(ns, ["ip", "-j", "-s", "link", "show"]).stdout)
    return sum(int(link["stats64"][d]["packets"]) for link in links
               if link["ifname"] != "lo" for d in ("rx", "tx"))


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
           must_see: tuple[str, ...] = (), expect_failure: bool = False,
           after_packets: int = RECONFIG_AFTER_PACKETS,
           reconfigures: bool = True, config: dict[str, float] | None = None,
           expect_rejected: bool = False, retries_ok: bool = False) -> dict[str, Any]:
    """Client -> `hops` -> server with Dysco agents on all of them (and on `spare`
    middleboxes that a reconfiguration brings in). `boxes` turn pods into middleboxes;
    `reconfig` runs once the sessions are open and bytes flow; `must_see` are pods
    whose middlebox must have counted traffic. With `expect_failure` the
    reconfiguration must fail (and the sessions still complete on their old path); with
    `reconfigures=False` the `reconfig` step is something else (an agent restart).
    `config` overrides the agents' `AgentConfig` fields; with `expect_rejected` refused
    inputs are the point (a flood) and the caller checks them; with `retries_ok` attempts
    that were cancelled and retried are no failure (the caller checks the outcome)."""
    boxes = boxes or {}
    running: dict[str, Middlebox] = {}
    opened = 0
    agents = LabAgents(lab, ["client", "server", *hops, *spare], backend=opts.backend,
                       config=config, fastpath=opts.fastpath)
    if content_delta:
        short, l2r, r2l = content_delta
        agents.react(short, SessionOpened,
                     lambda: cmd.SetContentDelta(Selector(), l2r, r2l))
    marks: dict[str, Any] = {}
    with agents:
        try:
            for short, factory in boxes.items():
                running[short] = factory(lab.pod(short).name)
                running[short].start()
            agents.set_chain("client", "server", hops, {opts.port})

            base = link_packets(lab.pod("client").name)

            def client_packets() -> int:
                return link_packets(lab.pod("client").name) - base

            def during() -> None:
                """Reconfigure sessions well under way; note how far they had got when
                the reconfiguration completed, and the middlebox counters then."""
                assert reconfig is not None
                if not _wait_for(lambda: client_packets() >= after_packets, 30):
                    return
                marks["at_start"] = client_packets()
                marks["boxes_before"] = {k: b.counters() for k, b in running.items()}
                marks["order_t"] = time.monotonic()
                marks["order"] = reconfig(agents, running)
                if reconfigures and _wait_for(
                        lambda: agents.notifications()["ReconfigDone"] > 0
                        or agents.tracker.failed > 0, 20):
                    marks["at_done"] = client_packets()
                    marks["boxes_at_done"] = {k: b.counters() for k, b in running.items()}

            sport = server_port or opts.port
            result = transfer(lab, "client", "server", replace(opts, port=sport),
                              connect_port=opts.port, prefixes=prefixes,
                              during=during if reconfig else None)
            notes = agents.notifications()
            opened = notes["SessionOpened"]
            result["agents"] = agents.stats()
            result["notifications"] = dict(notes)
            result["rejected"] = agents.rejections()
        finally:
            counts = {short: box.stop() for short, box in running.items()}
    result["middleboxes"] = counts
    started_at = result.pop("started_at")
    if "order_t" in marks:
        result["order_at_s"] = round(marks["order_t"] - started_at, 3)
    failures: list[str] = result["failures"]
    if opened == 0:
        failures.append("no Dysco session was opened")
    if reconfig:
        result["order"] = marks.get("order")
        result["middleboxes_before"] = marks.get("boxes_before")
        result["middleboxes_at_done"] = marks.get("boxes_at_done")
        final = client_packets()
        result["client_packets"] = {k: marks[k] for k in ("at_start", "at_done")
                                    if k in marks} | {"final": final}
        if "at_start" not in marks:
            failures.append("the transfer ended before the reconfiguration could start")
        elif not reconfigures:
            pass
        elif expect_failure:
            if notes["ReconfigDone"]:
                failures.append("the reconfiguration completed but should have failed")
            if not agents.tracker.failed:
                failures.append("the core never reported the reconfiguration failed")
        elif (marks.get("order") or {}).get("sessions") == 0:
            # the agent held no open session to reconfigure: on the fast path an
            # unpaced transfer may end in the kernel before the order reaches it
            failures.append("the order matched no session (the transfer had ended: "
                            f"client packets {result['client_packets']})")
        elif notes["ReconfigDone"] == 0:
            failures.append("the reconfiguration never completed")
        elif marks.get("at_done", final) >= final:
            failures.append(f"no packets after the reconfiguration: {result['client_packets']}")
    if (notes["ReconfigFailed"] and not (expect_failure or retries_ok)) or (
            notes["Rejected"] and not expect_rejected):
        failures.append(f"agents reported {notes['ReconfigFailed']} failed reconfigurations "
                        f"and {notes['Rejected']} rejected inputs")
    for short in must_see:
        if not _saw(counts.get(short, {})):
            failures.append(f"middlebox {short} saw no traffic: {counts.get(short)}")
    result["ok"] = not failures
    return result


def _saw(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.endswith("packets") and k != "dropped_packets")


def _moved(result: dict[str, Any], short: str, *, after: bool) -> int:
    """Packets middlebox `short` handled after (or before) the reconfiguration."""
    before = _saw((result.get("middleboxes_at_done") or {}).get(short, {}))
    total = _saw(result["middleboxes"].get(short, {}))
    return total - before if after else before


def _expect_moves(result: dict[str, Any], gone: tuple[str, ...],
                  new: tuple[str, ...]) -> dict[str, Any]:
    """Middlebox counters prove where the bytes went: the `gone` boxes saw traffic
    before the reconfiguration and (almost) none after it; the `new` ones the reverse."""
    if "middleboxes_at_done" not in result or result["middleboxes_at_done"] is None:
        return result
    for short in gone:
        b, a = _moved(result, short, after=False), _moved(result, short, after=True)
        # in-flight packets and the old path's teardown may still cross it
        if b == 0 or a > max(50, b // 10):
            result["failures"].append(f"{short}: {b} packets before, {a} after removal")
    for short in new:
        a = _moved(result, short, after=True)
        if a == 0:
            result["failures"].append(f"{short} saw nothing after the reconfiguration")
    result["ok"] = not result["failures"]
    return result


def _fw(ns: str) -> Middlebox:
    return Firewall(ns)


def _strict_fw(ns: str) -> Middlebox:
    return Firewall(ns, strict=True)


def _chain_fwd(lab: Lab, opts: Options) -> dict[str, Any]:
    return _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw}, must_see=("mb1",))


def _chain_cross(lab: Lab, opts: Options) -> dict[str, Any]:
    return _dysco(lab, opts, hops=["mb1", "mb3"], boxes={"mb1": _fw, "mb3": Dpi},
                  must_see=("mb1", "mb3"))


def _chain_3(lab: Lab, opts: Options) -> dict[str, Any]:
    return _dysco(lab, opts, hops=["mb1", "mb3", "mb4"],
                  boxes={"mb1": _fw, "mb3": Dpi, "mb4": _fw}, must_see=("mb1", "mb3", "mb4"))


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


def _order(op: str, **kw: Any) -> Reconfig:
    """A reconfiguration that gives one `dysco chain` order and waits for it."""
    def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
        return agents.order(Order(op=op, wait=20.0, **kw))
    return go


def _insert(lab: Lab, opts: Options) -> dict[str, Any]:
    r = _dysco(lab, opts, hops=[], spare=("mb1",), boxes={"mb1": _fw},
               reconfig=_order("insert", at="client", hops=("mb1",)), must_see=("mb1",))
    return _expect_moves(r, (), ("mb1",))


def _insert_2(lab: Lab, opts: Options) -> dict[str, Any]:
    r = _dysco(lab, opts, hops=[], spare=("mb1", "mb3"), boxes={"mb1": _fw, "mb3": Dpi},
               reconfig=_order("insert", at="client", hops=("mb1", "mb3")),
               must_see=("mb1", "mb3"))
    return _expect_moves(r, (), ("mb1", "mb3"))


def _insert_mb(lab: Lab, opts: Options) -> dict[str, Any]:
    """mb1 inserts mb3 to its right: a middlebox anchors the reconfiguration (with the
    fast path it must take the session back from the kernel for the two-path phase)."""
    r = _dysco(lab, opts, hops=["mb1"], spare=("mb3",), boxes={"mb1": _fw, "mb3": _fw},
               reconfig=_order("insert", at="mb1", hops=("mb3",)), must_see=("mb1", "mb3"))
    return _expect_moves(r, (), ("mb1", "mb3"))


def _remove(lab: Lab, opts: Options) -> dict[str, Any]:
    r = _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw},
               reconfig=_order("remove", middlebox="mb1"), must_see=("mb1",))
    return _expect_moves(r, ("mb1",), ())


def _replace(lab: Lab, opts: Options) -> dict[str, Any]:
    r = _dysco(lab, opts, hops=["mb1"], spare=("mb3",), boxes={"mb1": _fw, "mb3": _fw},
               reconfig=_order("replace", middlebox="mb1", hops=("mb3",)),
               must_see=("mb1", "mb3"))
    return _expect_moves(r, ("mb1",), ("mb3",))


def _replace_stateful(lab: Lab, opts: Options) -> dict[str, Any]:
    """Strict firewalls (no mid-stream pickup): mb3 passes the sessions only because
    their conntrack entries were copied from mb1 before the switch."""
    def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
        copied = copy_state(boxes["mb1"].ns, boxes["mb3"].ns, opts.port)
        answer = agents.order(Order(op="replace", middlebox="mb1", hops=("mb3",),
                                    wait=20.0))
        return {**answer, "state": copied}
    r = _dysco(lab, opts, hops=["mb1"], spare=("mb3",),
               boxes={"mb1": _strict_fw, "mb3": _strict_fw}, reconfig=go,
               must_see=("mb1", "mb3"))
    state = (r.get("order") or {}).get("state", {})
    if state.get("imported", 0) < opts.sessions:
        r["failures"].append(f"conntrack state not migrated for every session: {state}")
    dropped = r["middleboxes"].get("mb3", {}).get("dropped_packets", 0)
    if dropped > 50:
        r["failures"].append(f"the new firewall dropped {dropped} packets")
    return _expect_moves(r, ("mb1",), ("mb3",))


def _remove_proxy(lab: Lab, opts: Options) -> dict[str, Any]:
    """The proxy pod asks to be spliced out. The proxy's namespace runs without TCP
    timestamps, so neither half of the session negotiated them and the spliced session
    needs no timestamp translation (the core does none)."""
    netns.sysctl(lab.pod("mb1").name, {"net.ipv4.tcp_timestamps": "0"})
    try:
        r = _dysco(lab, opts, hops=["mb1"],
                   boxes={"mb1": lambda ns: Proxy(ns, port=opts.port)},
                   prefixes=(proxy.BANNER_LR, proxy.BANNER_RL),
                   content_delta=("mb1", len(proxy.BANNER_LR), len(proxy.BANNER_RL)),
                   reconfig=_order("remove", middlebox="mb1"), must_see=("mb1",))
    finally:
        netns.sysctl(lab.pod("mb1").name, {"net.ipv4.tcp_timestamps": "1"})
    return r


def _many(lab: Lab, opts: Options) -> dict[str, Any]:
    """All sessions (run it with --sessions 200 --bytes 256K --rate 16K) replaced
    mb1 -> mb3 by one order while their bytes flow."""
    r = _dysco(lab, opts, hops=["mb1"], spare=("mb3",), boxes={"mb1": _fw, "mb3": _fw},
               reconfig=_order("replace", middlebox="mb1", hops=("mb3",)),
               must_see=("mb1", "mb3"), after_packets=RECONFIG_AFTER_PACKETS
               + 20 * opts.sessions)
    answer = r.get("order") or {}
    if answer.get("sessions") != opts.sessions or answer.get("done") != opts.sessions:
        r["failures"].append(f"order matched {answer.get('sessions')} and completed "
                             f"{answer.get('done')} of {opts.sessions} sessions")
    return _expect_moves(r, ("mb1",), ("mb3",))


@contextlib.contextmanager
def _cut_off(lab: Lab, short: str) -> Iterator[Callable[[], None]]:
    """A function that kills pod `short` as a dead pod looks from outside: its node drops
    everything to and from it. The drop rules are removed when the block ends."""
    pod = lab.pod(short)
    node = lab.node_ns(pod.node)
    ipt = detect_variant().binary()
    rules = [["FORWARD", "-d", pod.ip, "-j", "DROP"], ["FORWARD", "-s", pod.ip, "-j", "DROP"]]

    def kill() -> None:
        for rule in rules:
            netns.run(node, [ipt, "-w", "-I", *rule])
    try:
        yield kill
    finally:
        for rule in rules:
            while netns.run(node, [ipt, "-w", "-D", *rule], check=False).returncode == 0:
                continue


def _kill_new(lab: Lab, opts: Options) -> dict[str, Any]:
    """Insert mb2 and kill it as the order is given (its node drops everything to and
    from it, as for a dead pod): the new path's SYN gets no answer, the core cancels
    after its retries and the sessions finish on the direct path."""
    with _cut_off(lab, "mb2") as kill:
        def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
            kill()
            return agents.order(Order(op="insert", at="client", hops=("mb2",), wait=20.0))
        r = _dysco(lab, opts, hops=[], spare=("mb2",), boxes={"mb2": _fw}, reconfig=go,
                   expect_failure=True)
    if _saw(r["middleboxes"].get("mb2", {})):
        r["failures"].append(f"the dead mb2 forwarded traffic: {r['middleboxes']['mb2']}")
        r["ok"] = False
    return r


def _restart(lab: Lab, opts: Options) -> dict[str, Any]:
    """mb1's agent restarts mid-transfer from a snapshot on tmpfs; meanwhile its rules
    (no queue bypass) drop the pod's packets and TCP retransmits."""
    def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
        before = agents.stats()["mb1"]["packets"]
        info = agents.restart("mb1")
        _wait_for(lambda: agents.stats()["mb1"]["packets"] > 0, 10)
        return {**info, "packets_before": before}
    r = _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw}, reconfig=go,
               must_see=("mb1",), reconfigures=False)
    after = r["agents"]["mb1"]["packets"]
    if after == 0:
        r["failures"].append("the restored mb1 agent handled no packets")
    r["ok"] = not r["failures"]
    return r


def _dropped_by(ns: str, ipt: str, chain: str, marker: str) -> int:
    """Packets dropped by our rule(s) containing `marker` in `chain` of the filter table."""
    out = netns.run(ns, [ipt, "-w", "-L", chain, "-v", "-x", "-n"]).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if marker in line)


def _control_loss(lab: Lab, opts: Options) -> dict[str, Any]:
    """Replace mb1 -> mb3 while every agent pod drops `opts.loss` of the control
    datagrams that reach it (iptables statistic in INPUT, as if the network lost them):
    retransmissions, cancels and retries must finish every session's reconfiguration,
    or give up cleanly on the old path."""
    ipt = detect_variant().binary()
    names = [lab.pod(p).name for p in ("client", "server", "mb1", "mb3")]
    rule = ["INPUT", "-p", "udp", "--dport", "2016", "-m", "statistic", "--mode",
            "random", "--probability", str(opts.loss), "-j", "DROP"]
    for ns in names:
        netns.run(ns, [ipt, "-w", "-I", *rule])
    try:
        r = _dysco(lab, opts, hops=["mb1"], spare=("mb3",), boxes={"mb1": _fw, "mb3": _fw},
                   reconfig=_order("replace", middlebox="mb1", hops=("mb3",)),
                   reconfigures=False, retries_ok=True, must_see=("mb1",))
        r["control_dropped"] = sum(_dropped_by(ns, ipt, "INPUT", "statistic")
                                   for ns in names)
    finally:
        for ns in names:
            netns.run(ns, [ipt, "-w", "-D", *rule], check=False)
    answer = r.get("order") or {}
    if answer.get("done", 0) + answer.get("failed", 0) != opts.sessions:
        r["failures"].append(f"not every reconfiguration completed or gave up: {answer}")
    if not r["control_dropped"]:
        r["failures"].append("no control datagram was dropped")
    r["ok"] = not r["failures"]
    return r


DEAD_HOP_TIMEOUT = 3.0  # the lab agents' hop_timeout in the dead-middlebox scenario


def _dead_middlebox(lab: Lab, opts: Options) -> dict[str, Any]:
    """mb1 dies mid-transfer (its node drops everything to and from it): both ends'
    agents see no acks for `DEAD_HOP_TIMEOUT` s and reset the sessions at both ends
    (RST to the apps, ABORT to the other end), long before the sockets would time out."""
    start = time.monotonic()
    with _cut_off(lab, "mb1") as kill:
        def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
            kill()
            return {"killed_at": time.monotonic()}
        r = _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw}, reconfig=go,
                   reconfigures=False, config={"hop_timeout": DEAD_HOP_TIMEOUT})
    # resets are the point here: judge by what each end saw, not by the usual checks
    failures = [f for f in r["failures"] if f.startswith("middlebox") or "opened" in f]
    if "at_start" not in (r.get("client_packets") or {}):
        failures.append("the transfer ended before mb1 was killed")
    if r["errors"] != ["ECONNRESET"] * (2 * opts.sessions):
        failures.append(f"not every end was reset: {r['errors']}")
    failed = r["notifications"].get("HopFailed", 0)
    if failed != 2 * opts.sessions:
        failures.append(f"{failed} session ends reported a dead hop, not {2 * opts.sessions}")
    killed = (r.get("order") or {}).get("killed_at", start)
    r["reset_after_s"] = round(start + r["seconds"] - killed, 3)
    if r["reset_after_s"] > DEAD_HOP_TIMEOUT + 5:
        failures.append(f"the ends were reset {r['reset_after_s']} s after the kill")
    r["failures"] = failures
    r["ok"] = not failures
    return r


FLOOD_LIMITS = {"max_half_open": 100, "handshake_timeout": 60.0, "control_rate": 1000.0,
                "control_burst": 200}
FLOOD_PORT = 5002  # the server drops it: flood SYNs get no answer (so no RST either)


def _flood(ns: str, kind: str, src: str, dst: str, port: int, count: int,
           rate: int) -> subprocess.Popen[str]:
    return subprocess.Popen(netns.argv(ns, [
        sys.executable, "-m", "dysco.lab.flood", kind, "--src", src, "--dst", dst,
        "--port", str(port), "--count", str(count), "--rate", str(rate)]),
        stdout=subprocess.PIPE, text=True)


def _syn_flood(lab: Lab, opts: Options) -> dict[str, Any]:
    """While sessions client -> mb1 -> server move bytes, the client pod floods SYNs to
    a chained port, a hostile pod (mb2, no agent) floods the server with forged SYN lists
    and the client's agent with unauthenticated control messages. The agents' tables stay
    within `FLOOD_LIMITS`, refusals are counted by reason, the sessions are untouched."""
    client, server, mb2 = lab.pod("client"), lab.pod("server"), lab.pod("mb2")
    ipt = detect_variant().binary()
    closed = ["INPUT", "-p", "tcp", "--dport", str(FLOOD_PORT), "-j", "DROP"]
    count, rate = 1000, 500  # per flood; the control flood sends 4x as many, 4x as fast

    def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
        agents.set_chain("client", "server", ["mb1"], {opts.port, FLOOD_PORT})
        floods = [
            _flood(client.name, "syn", client.ip, server.ip, FLOOD_PORT, count, rate),
            _flood(mb2.name, "synlist", mb2.ip, server.ip, FLOOD_PORT, count, rate),
            _flood(mb2.name, "control", mb2.ip, client.ip, 2016, 4 * count, 4 * rate),
        ]
        sent = [json.loads(f.communicate(timeout=60)[0] or "{}") for f in floods]
        return {"floods": sent, "tables": agents.core_stats()}
    netns.run(server.name, [ipt, "-w", "-I", *closed])
    try:
        r = _dysco(lab, opts, hops=["mb1"], boxes={"mb1": _fw}, reconfig=go,
                   reconfigures=False, config=FLOOD_LIMITS, expect_rejected=True,
                   must_see=("mb1",))
    finally:
        netns.run(server.name, [ipt, "-w", "-D", *closed], check=False)
    tables = (r.get("order") or {}).get("tables", {})
    for short, t in tables.items():
        if t["half_open"] > FLOOD_LIMITS["max_half_open"]:
            r["failures"].append(f"{short}: {t['half_open']} half-open sessions")
    rejected = r["rejected"]
    for short, reason in (("client", "half_open_full"), ("server", "half_open_full"),
                          ("client", "rate_limited")):
        if not rejected.get(short, {}).get(reason):
            r["failures"].append(f"{short} refused nothing for {reason}: {rejected}")
    r["ok"] = not r["failures"]
    return r


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
        Scenario("chain-3", "client -> firewall (mb1) -> DPI (mb3) -> firewall (mb4) "
                 "-> server", _chain_3),
        Scenario("insert", "live insertion of a firewall (mb1) into a direct session",
                 _insert),
        Scenario("insert-2", "live insertion of firewall mb1 and DPI mb3 at once (0 -> 2)",
                 _insert_2),
        Scenario("insert-mb", "firewall mb1 inserts firewall mb3 to its right (a "
                 "middlebox anchors)", _insert_mb),
        Scenario("remove", "live removal of the firewall (mb1) from a session", _remove),
        Scenario("replace", "live replacement of firewall mb1 by firewall mb3", _replace),
        Scenario("replace-stateful", "live replacement of a strict stateful firewall, "
                 "conntrack state copied mb1 -> mb3 first", _replace_stateful),
        Scenario("remove-proxy", "the TCP-terminating proxy (mb1) splices itself out",
                 _remove_proxy),
        Scenario("many", "all sessions replaced mb1 -> mb3 by one order (use "
                 "--sessions 200 --bytes 256K --rate 16K)", _many),
        Scenario("kill-new", "insertion of a dead middlebox (mb2) fails; sessions finish "
                 "on the old path", _kill_new),
        Scenario("restart", "mb1's agent restarts mid-transfer (snapshot/restore)",
                 _restart),
        Scenario("dead-middlebox", "mb1 dies mid-transfer: both ends detect it and reset "
                 "the sessions (hop_timeout 3 s)", _dead_middlebox),
        Scenario("control-loss", "replace mb1 -> mb3 while --loss of the control "
                 "datagrams are dropped (default 0.2)", _control_loss),
        Scenario("syn-flood", "SYN, forged SYN-list and control floods during a transfer: "
                 "tables stay within limits, sessions untouched", _syn_flood),
    ]
}


def run(name: str, lab: Lab, opts: Options) -> dict[str, Any]:
    """Bring the lab up if needed and run scenario `name`."""
    scenario = SCENARIOS[name]
    lab.up()
    result = scenario.run(lab, opts)
    return {"scenario": name, **result}
