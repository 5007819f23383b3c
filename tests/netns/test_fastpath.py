"""The kernel fast path: real conntrack entries, real nftables sets, real TCP.

Offloaded sessions must end without leaving kernel or core state behind, and whatever
the kernel refuses leaves sessions on the queue path (counted), never broken.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PREFIX

from dysco.dataplane import conntrack, fastpath, netns, rules
from dysco.lab import scenarios
from dysco.lab.agents import LabAgents
from dysco.lab.topology import Lab, Pod

ECHO_PORT = 5002
# conntrack state timeouts after a close, shortened so ended sessions go in seconds
SHORT_TIMEOUTS = {f"net.netfilter.nf_conntrack_tcp_timeout_{k}": "1"
                  for k in ("time_wait", "close", "close_wait", "fin_wait", "last_ack")}


def _kernel_state(ns: str) -> tuple[int, int]:
    """Conntrack entries and fast-path set elements in `ns` (the table may be gone)."""
    entries = int(netns.run(ns, ["conntrack", "-C"]).stdout.strip() or 0)
    listing = netns.run(ns, ["nft", "-j", "list", "table", "ip", fastpath.TABLE],
                        check=False)
    elements = 0
    if listing.returncode == 0:
        for item in json.loads(listing.stdout)["nftables"]:
            elements += len(item.get("set", {}).get("elem", []))
    return entries, elements


def _fast(agents: LabAgents, short: str) -> dict[str, Any]:
    """The pod's fast-path counters, its installed sessions and its core's offloaded
    sessions, asked of its node's agent process."""
    fast: dict[str, Any] = agents.stats()[short]["fastpath"]
    return {**fast, "installed": fast["sessions"],
            "core_offloaded": agents.core_stats()[short]["offloaded"]}


@contextlib.contextmanager
def _echo_server(server: Pod) -> Iterator[None]:
    """The lab's echo server in `server`, listening on ECHO_PORT for the body."""
    echo = subprocess.Popen(netns.argv(server.name, [
        sys.executable, "-m", "dysco.lab.pingpong", "server", "--host", server.ip,
        "--port", str(ECHO_PORT)]), stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "READY"
        yield
    finally:
        echo.kill()
        echo.wait()


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line `proc` prints, within `timeout` s: a lost session must fail the
    test, not hang it."""
    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], timeout)[0], f"no answer in {timeout} s"
    return proc.stdout.readline()


def _hold_round(client_ns: str, server_ip: str, n: int) -> None:
    """`n` sessions open at once (opened four at a time, each echoes a byte, so past the
    handshake), echo again, then all close."""
    hold = subprocess.Popen(netns.argv(client_ns, [
        "prlimit", f"--nofile={n + 1000}", sys.executable, "-m", "dysco.lab.pingpong",
        "hold", "--host", server_ip, "--port", str(ECHO_PORT), "--count", str(n),
        "--parallel", "4"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout is not None and hold.stdin is not None
        assert json.loads(_line(hold, 120))["open"] == n
        hold.stdin.write("go\n")
        hold.stdin.flush()
        assert json.loads(_line(hold, 60)) == {"ok": n, "failed": 0}
        assert hold.wait(30) == 0
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait()


def test_no_leak_after_many_sessions(lab: Lab) -> None:
    """10,000 sessions (40 rounds of 250 held open at once) open on the fast path and
    close; once conntrack dropped their entries nothing is left: no entry, no set
    element, no installed or offloaded session. (Rounds lost sessions until the pods'
    TCP early demux was turned off: test_a_subsession_port_equal_to_another_sessions_port.)"""
    client, server = lab.pod("client"), lab.pod("server")
    rounds, n = 40, 250
    with LabAgents(lab, ["client", "server"]) as agents:
        agents.set_chain("client", "server", [], {ECHO_PORT})
        with _echo_server(server):
            for ns in (client.name, server.name):
                netns.sysctl(ns, SHORT_TIMEOUTS)
            for _ in range(rounds):
                _hold_round(client.name, server.ip, n)
            deadline = time.monotonic() + 60
            while True:
                state = {s: (_fast(agents, s), _kernel_state(lab.pod(s).name))
                         for s in ("client", "server")}
                if all(f["installed"] == 0 and k == (0, 0) for f, k in state.values()):
                    break
                assert time.monotonic() < deadline, state
                time.sleep(1)
        for short, (fast, _) in state.items():
            assert fast["offloaded"] == rounds * n, (short, fast)
            assert fast["ended"] == fast["offloaded"], (short, fast)
            assert fast["core_offloaded"] == 0 and fast["failed"] == 0, (short, fast)


def test_table_unavailable_keeps_the_queue_path(lab: Lab,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """nft refuses the table: every session stays on NFQUEUE, the metric says so."""
    monkeypatch.setattr(fastpath, "table_script", lambda mark: "table ip broken {")
    result = scenarios.run("direct", lab, scenarios.Options(bytes=4 << 20, sessions=2,
                                                            timeout=15))
    assert result["ok"], result["failures"]
    for short in ("client", "server"):
        fast = result["agents"][short]["fastpath"]
        assert fast["unavailable"] == 1 and fast["offloaded"] == 0, fast
        assert result["agents"][short]["packets"] > 100


def test_a_table_left_by_a_dead_agent_is_replaced() -> None:
    """An agent that died without `close` left its table: the next one's script
    replaces it (nft -f alone would append every rule again and keep the elements)."""
    ns = f"{PREFIX}left"
    netns.add(ns)
    try:
        script = fastpath.table_script(rules.DEFAULT_MARK)
        netns.run(ns, ["nft", "-f", "-"], stdin=script)
        netns.run(ns, ["nft", "add", "element", "ip", fastpath.TABLE, fastpath.SET_IN,
                       "{ 10.0.0.1 . 1 . 10.0.0.2 . 2 }"])
        netns.run(ns, ["nft", "-f", "-"], stdin=script)
        listing = netns.run(ns, ["nft", "list", "table", "ip", fastpath.TABLE]).stdout
        assert listing.count("notrack") == 2, listing
        assert "10.0.0.1" not in listing, listing
    finally:
        netns.delete(ns)


def test_refused_entries_keep_the_queue_path(lab: Lab,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """ctnetlink refuses the entries (EINVAL: no timeout attribute): the sessions
    complete on NFQUEUE and are counted as failed installs."""
    real = conntrack.new_message

    def without_timeout(e: conntrack.Entry, seqno: int) -> bytes:
        msg = real(e, seqno)
        attr = conntrack._attr(7, e.timeout.to_bytes(4, "big"))
        cut = msg.replace(attr, b"")
        return len(cut).to_bytes(4, sys.byteorder) + cut[4:]

    monkeypatch.setattr(conntrack, "new_message", without_timeout)
    result = scenarios.run("direct", lab, scenarios.Options(bytes=4 << 20, sessions=2,
                                                            timeout=15))
    assert result["ok"], result["failures"]
    for short in ("client", "server"):
        fast = result["agents"][short]["fastpath"]
        assert fast["failed"] == 2 and fast["offloaded"] == 0, fast



REUSE = """
import socket, sys, time
src, dst, port, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(rounds):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    s.bind((src, 40123))
    s.connect((dst, port))
    for _ in range(3):  # offloaded after the first round trip
        s.sendall(b"x")
        assert s.recv(1) == b"x", i
        time.sleep(0.2)
    s.close()  # the client's socket lingers in TIME_WAIT, the entries too
    time.sleep(1.2)  # tcp_tw_reuse: a newer timestamp than the last one seen
print("ok", flush=True)
"""


def test_a_new_connection_reusing_an_ended_sessions_tuple(lab: Lab) -> None:
    """The client reuses its tuple while the ended session's entries are in TIME_WAIT
    (tcp_tw_reuse, a fixed source port): each new connection ends the old session
    first and gets a session of its own, offloaded again. (Failed before the queues
    were drained when the table appears: a segment queued before it was tracked after
    an installed entry, NAT moved it to another port, and the next connection's SYN
    clashed with that entry.)"""
    client, server = lab.pod("client"), lab.pod("server")
    rounds = 4
    with LabAgents(lab, ["client", "server"]) as agents:
        agents.set_chain("client", "server", [], {ECHO_PORT})
        netns.sysctl(client.name, {"net.ipv4.tcp_tw_reuse": "1"})
        with _echo_server(server):
            run = subprocess.run(netns.argv(client.name, [
                sys.executable, "-c", REUSE, client.ip, server.ip, str(ECHO_PORT),
                str(rounds)]), capture_output=True, text=True, timeout=60)
            fast = {s: _fast(agents, s) for s in ("client", "server")}
            assert run.stdout.strip() == "ok", (run.stderr, fast)
    for short, f in fast.items():
        assert f["offloaded"] == rounds and f["failed"] == 0, (short, f)
    # the server's entry waits in TIME_WAIT: the SYN list ends it (at the client
    # conntrack itself replaces an entry in TIME_WAIT by the SYN's)
    assert fast["server"]["reopened"] == rounds - 1, fast


COLLIDE = """
import socket, sys, time
src, dst, port, xport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def echo(s, n):
    for _ in range(n):  # offloaded after the first round trip
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        time.sleep(0.2)
x = socket.socket()
x.settimeout(5)
x.bind((src, xport))
x.connect((dst, port))
echo(x, 3)
y = socket.create_connection((dst, port), timeout=5)
echo(y, 3)
echo(x, 1)
print("ok", flush=True)
"""


def test_a_subsession_port_equal_to_another_sessions_port(lab: Lab) -> None:
    """Session y's subsession leaves the client from the port of session x's socket.
    At the server, y's packets match its entry in the reply direction: NAT restores
    the server's port at prerouting but the client's only at local-in, and TCP early
    demux in between looked the socket up by (client:that port, server:5002), which is
    x's. Lost segments for y, dup acks on x (the echoes of the 250-session rounds that
    never came back). The pods' early demux is off while they have the table."""
    client, server = lab.pod("client"), lab.pod("server")
    start = 5000  # the client's first subsession port: 40000 + 5000, the next one +1
    with LabAgents(lab, ["client", "server"], config={"port_start": start}) as agents:
        agents.set_chain("client", "server", [], {ECHO_PORT})
        with _echo_server(server):
            run = subprocess.run(netns.argv(client.name, [
                sys.executable, "-c", COLLIDE, client.ip, server.ip, str(ECHO_PORT),
                str(40000 + start + 1)]), capture_output=True, text=True, timeout=60)
            fast = {s: _fast(agents, s) for s in ("client", "server")}
            assert run.stdout.strip() == "ok", (run.stderr, fast)
            assert {_early_demux(p.name) for p in (client, server)} == {"0"}
    for short, f in fast.items():
        assert f["offloaded"] == 2 and f["failed"] == 0, (short, f)
    assert {_early_demux(p.name) for p in (client, server)} == {"1"}  # restored


def _early_demux(ns: str) -> str:
    return netns.read_sysctl(ns, fastpath.EARLY_DEMUX)
