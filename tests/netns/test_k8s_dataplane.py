"""The node agent's DataPlane on lab pods: attach by namespace path, policies, drains,
live chain updates and chain deletion, with real TCP checked end to end (SHA-256, no
reset unless the chain says close).

All lab pods are attached to one NodeDataPlane, which therefore plays every node; the
calls come in the order the node agent's reconciler makes them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dysco.dataplane import netns, rules
from dysco.dataplane.k8s import NodeDataPlane, create_dataplane
from dysco.k8s import interface as k8s
from dysco.lab import scenarios
from dysco.lab.topology import Lab
from dysco.middleboxes import proxy

CHAIN = "default/web"
PORT = 5001
# Paced sessions: long enough for the reconfigurations ordered while they run.
PACED = scenarios.Options(bytes=8 << 20, sessions=2, timeout=15, rate=1 << 20)


@pytest.fixture
def dp(lab: Lab) -> Iterator[NodeDataPlane]:
    # These tests tell which middleboxes carry a chain by their agents' packet counters,
    # which the middlebox fast path would keep near zero (tests/netns/test_mbfast.py
    # covers it); the end hosts' fast path stays on.
    os.environ["DYSCO_MBFAST"] = "0"
    try:
        plane = create_dataplane()
    finally:
        del os.environ["DYSCO_MBFAST"]
    plane.set_keys({7: b"k" * 32}, 7)
    try:
        yield plane
    finally:
        plane.close()
    for pod in lab.pods():
        assert not rules.Interception(pod.name, plane.runtime.variant).listing()


def attach(dp: NodeDataPlane, lab: Lab, *shorts: str) -> None:
    for short in shorts:
        pod = lab.pod(short)
        dp.attach_pod(key(short), ns(lab, short), pod.ip)


def key(short: str) -> str:
    return f"default/{short}"


def chain(lab: Lab, revision: int, *hops: tuple[str, tuple[str, ...]], **kw: Any) -> k8s.Chain:
    return k8s.Chain(CHAIN, revision, tuple(
        k8s.Hop(name, tuple(lab.pod(s).ip for s in shorts)) for name, shorts in hops), **kw)


def apply(dp: NodeDataPlane, lab: Lab, c: k8s.Chain) -> None:
    """What a new plan carrying chain `c` makes the reconciler call."""
    dp.set_chains([c])
    dp.set_policies(key("client"), [k8s.Policy(c, ((lab.pod("server").ip, (PORT,)),))])


def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def packets(dp: NodeDataPlane, lab: Lab, short: str) -> int:
    stats = dp.runtime.call(dp.runtime.stats)
    return int(stats[ns(lab, short)]["packets"])


def ns(lab: Lab, short: str) -> str:
    """The runtime's name of a pod: its namespace file, as the node agent passes it."""
    return f"/run/netns/{lab.pod(short).name}"


def under_way(dp: NodeDataPlane, lab: Lab) -> None:
    """Both sessions open and moving bytes, as the lab scenarios wait before their
    reconfigurations (RECONFIG_AFTER_PACKETS)."""
    assert wait(lambda: sum(dp.sessions().values()) == 2)
    # kernel counters: with the fast path the client's agent sees only the handshakes
    base = scenarios.link_packets(lab.pod("client").name)
    assert wait(lambda: scenarios.link_packets(lab.pod("client").name) - base
                >= scenarios.RECONFIG_AFTER_PACKETS)
    assert dp.sessions() == {(CHAIN, 1): 2}


def attached(dp: NodeDataPlane) -> list[str]:
    return dp.runtime.call(lambda: sorted(dp.runtime.pods))


def done(dp: NodeDataPlane, revision: int) -> tuple[int, int]:
    return dp.reconfigurations().get((CHAIN, revision), (0, 0))


def test_policies_sessions_and_rollout(lab: Lab, dp: NodeDataPlane) -> None:
    """A rollout, pod by pod: mb3 comes and mb1 drains, then mb4 comes and mb3 drains;
    each drain moves the live sessions to the new instance."""
    assert isinstance(dp, k8s.DataPlane)
    attach(dp, lab, "client", "server", "mb1", "mb3")
    attach(dp, lab, "client")  # idempotent
    apply(dp, lab, chain(lab, 1, ("fw", ("mb1",))))
    dp.set_keys({7: b"k" * 32, 8: b"n" * 32}, 8)  # a rotation: both keys valid
    seen: dict[str, Any] = {}

    def rollout() -> None:
        under_way(dp, lab)
        seen["sessions"] = dict(dp.sessions())
        seen["fastpath"] = dict(dp.fastpath())
        attach(dp, lab, "mb4")
        dp.set_chains([chain(lab, 1, ("fw", ("mb1", "mb3")))])
        dp.drain_instance(lab.pod("mb1").ip, time.time() + 30)
        assert wait(lambda: done(dp, 1)[0] >= 2)
        # as the operator plans it: the instance going away is no longer in its hop
        dp.set_chains([chain(lab, 1, ("fw", ("mb4",)))])
        dp.cancel_drain(lab.pod("mb1").ip)
        dp.detach_pod(key("mb1"))
        dp.drain_instance(lab.pod("mb3").ip, time.time() + 30)
        assert wait(lambda: done(dp, 1)[0] >= 4)
        seen["mb4"] = packets(dp, lab, "mb4")

    result = scenarios.transfer(lab, "client", "server", PACED, during=rollout)
    assert result["ok"], result["failures"]
    assert seen["sessions"] == {(CHAIN, 1): 2}
    # what the agent's metrics export: nothing refused, every pod with its fast path
    assert seen["fastpath"]["unavailable_pods"] == 0, seen["fastpath"]
    assert seen["fastpath"]["refused_sessions"] == 0, seen["fastpath"]
    assert done(dp, 1) == (4, 0)
    assert seen["mb4"] > 0
    assert packets(dp, lab, "mb4") > seen["mb4"]  # the sessions finished through mb4
    dp.detach_pod(key("mb3"))
    assert wait(lambda: not rules.Interception(lab.pod("mb3").name,
                                               dp.runtime.variant).listing())


def test_live_revisions_append_remove_insert(lab: Lab, dp: NodeDataPlane) -> None:
    """fw -> fw,ids (appended after mb1) -> ids (fw removed: mb1 leaves) -> fw,ids
    (inserted in front, by the source) -> fw (ids removed, its left neighbour mb2
    anchors); the sessions' revision follows."""
    attach(dp, lab, "client", "server", "mb1", "mb2", "mb3")
    apply(dp, lab, chain(lab, 1, ("fw", ("mb1",))))
    seen: dict[str, Any] = {}

    def update() -> None:
        under_way(dp, lab)
        apply(dp, lab, chain(lab, 2, ("fw", ("mb1",)), ("ids", ("mb3",))))
        assert wait(lambda: done(dp, 2)[0] == 2), dp.reconfigurations()
        # a paced stream may not have crossed the new path yet when it completed (its
        # old data was acked in a pause between chunks): wait for it before moving on
        assert wait(lambda: packets(dp, lab, "mb3") > 0)
        seen[2] = dict(dp.sessions()), packets(dp, lab, "mb3")
        apply(dp, lab, chain(lab, 3, ("ids", ("mb3",))))
        assert wait(lambda: done(dp, 3)[0] == 2), dp.reconfigurations()
        seen[3] = dict(dp.sessions()), packets(dp, lab, "mb1")
        apply(dp, lab, chain(lab, 4, ("fw", ("mb2",)), ("ids", ("mb3",))))
        assert wait(lambda: done(dp, 4)[0] == 2), dp.reconfigurations()
        assert wait(lambda: packets(dp, lab, "mb2") > 0)
        seen[4] = dict(dp.sessions()), packets(dp, lab, "mb2")
        apply(dp, lab, chain(lab, 5, ("fw", ("mb2",))))
        assert wait(lambda: done(dp, 5)[0] == 2), dp.reconfigurations()
        seen[5] = dict(dp.sessions()), packets(dp, lab, "mb3")

    result = scenarios.transfer(lab, "client", "server", replace(PACED, bytes=12 << 20),
                                during=update)
    assert result["ok"], result["failures"]
    assert seen[2][0] == {(CHAIN, 2): 2}
    assert seen[3][0] == {(CHAIN, 3): 2}
    assert seen[4][0] == {(CHAIN, 4): 2}
    assert seen[5][0] == {(CHAIN, 5): 2}
    assert {r: done(dp, r) for r in (2, 3, 4, 5)} == {r: (2, 0) for r in (2, 3, 4, 5)}
    assert packets(dp, lab, "mb3") > seen[2][1] > 0    # ids joined at revision 2
    assert packets(dp, lab, "mb1") - seen[3][1] < 50   # fw@mb1 left at revision 3
    assert packets(dp, lab, "mb2") > seen[4][1] > 0    # fw@mb2 joined at revision 4
    assert packets(dp, lab, "mb3") - seen[5][1] < 50   # ids@mb3 left at revision 5


def test_new_sessions_only_keeps_old_paths(lab: Lab, dp: NodeDataPlane) -> None:
    attach(dp, lab, "client", "server", "mb1", "mb3")
    apply(dp, lab, chain(lab, 1, ("fw", ("mb1",)), update_policy="newSessionsOnly"))
    seen: dict[str, Any] = {}

    def update() -> None:
        under_way(dp, lab)
        apply(dp, lab, chain(lab, 2, ("ids", ("mb3",)), update_policy="newSessionsOnly"))
        time.sleep(1.0)
        seen["sessions"] = dict(dp.sessions())
        seen["mb1"] = packets(dp, lab, "mb1")

    result = scenarios.transfer(lab, "client", "server", replace(PACED, bytes=3 << 20),
                                during=update)
    assert result["ok"], result["failures"]
    assert seen["sessions"] == {(CHAIN, 1): 2}
    assert dp.reconfigurations() == {}
    assert packets(dp, lab, "mb1") > seen["mb1"]
    assert packets(dp, lab, "mb3") == 0
    result = scenarios.transfer(lab, "client", "server", replace(PACED, bytes=1 << 20,
                                                                 rate=0))
    assert result["ok"], result["failures"]
    assert packets(dp, lab, "mb3") > 0  # new sessions take revision 2


def delete_chain(dp: NodeDataPlane) -> None:
    """What the plan without the chain makes the reconciler call: no chains, and the
    pods, which take part in no other chain, leave."""
    dp.set_chains([])
    for short in ("client", "mb1", "server"):
        dp.detach_pod(key(short))


def test_chain_deleted_bypass(lab: Lab, dp: NodeDataPlane) -> None:
    attach(dp, lab, "client", "server", "mb1")
    apply(dp, lab, chain(lab, 1, ("fw", ("mb1",))))
    seen: dict[str, Any] = {}

    def delete() -> None:
        under_way(dp, lab)
        seen["mb1"] = packets(dp, lab, "mb1")  # it may leave soon after the bypass
        delete_chain(dp)
        assert wait(lambda: done(dp, 1)[0] == 2), dp.reconfigurations()
        seen["sessions"] = dict(dp.sessions())
        # mb1 leaves once its sessions are torn down, the ends stay until they end
        seen["mb1_left"] = wait(lambda: ns(lab, "mb1") not in attached(dp), 5)
        seen["attached"] = attached(dp)

    result = scenarios.transfer(lab, "client", "server", PACED, during=delete)
    assert result["ok"], result["failures"]
    assert seen["sessions"] == {}  # off the chain
    assert done(dp, 1) == (2, 0)
    assert seen["mb1_left"]
    assert seen["attached"] == sorted(ns(lab, s) for s in ("client", "server"))
    assert seen["mb1"] > 0
    assert wait(lambda: not attached(dp))
    for short in ("client", "server", "mb1"):
        assert not rules.Interception(lab.pod(short).name, dp.runtime.variant).listing()


def test_chain_deleted_close(lab: Lab, dp: NodeDataPlane) -> None:
    attach(dp, lab, "client", "server", "mb1")
    apply(dp, lab, chain(lab, 1, ("fw", ("mb1",)), on_delete="close"))
    seen: dict[str, float] = {}

    def delete() -> None:
        under_way(dp, lab)
        seen["at"] = time.monotonic()
        delete_chain(dp)

    opts = replace(PACED, bytes=20 << 20)
    result = scenarios.transfer(lab, "client", "server", opts, during=delete)
    # Both ends of both sessions saw the reset at once; nothing stalled.
    errors = [f for f in result["failures"] if " error " in f]
    assert len(errors) == 4, result["failures"]
    assert not [f for f in result["failures"] if "stalled" in f], result["failures"]
    assert result["counters"][lab.pod("client").name].get("Tcp.OutRsts", 0) >= 2
    assert result["seconds"] < opts.bytes / opts.rate / 2
    assert wait(lambda: not attached(dp)), dp.runtime.call(lambda: {
        ns: ([(s.offloaded, s.torn, s.closing_at, s.role) for s in p.processor.sessions.values()],
             p.fast and vars(p.fast.stats)) for ns, p in dp.runtime.pods.items()})


def test_proxy_hop_replaced(lab: Lab, dp: NodeDataPlane) -> None:
    """A TCP-terminating proxy hop (its content delta reported through
    `set_content_delta`) is replaced by a firewall hop in live sessions."""
    mb1 = lab.pod("mb1").name
    netns.sysctl(mb1, {"net.ipv4.tcp_timestamps": "0"})
    box = proxy.Proxy(mb1, port=PORT)
    box.start()
    try:
        attach(dp, lab, "client", "server", "mb1", "mb3")
        dp.set_content_delta(key("mb1"), len(proxy.BANNER_LR), len(proxy.BANNER_RL))
        apply(dp, lab, chain(lab, 1, ("proxy", ("mb1",))))

        def update() -> None:
            under_way(dp, lab)
            apply(dp, lab, chain(lab, 2, ("fw", ("mb3",))))
            assert wait(lambda: done(dp, 2)[0] == 2), dp.reconfigurations()

        result = scenarios.transfer(lab, "client", "server", PACED, during=update,
                                    prefixes=(proxy.BANNER_LR, proxy.BANNER_RL))
    finally:
        counts = box.stop()
        netns.sysctl(mb1, {"net.ipv4.tcp_timestamps": "1"})
    assert result["ok"], result["failures"]
    assert counts["connections"] == 2
    assert done(dp, 2) == (2, 0)
    assert dp.sessions() == {} or set(dp.sessions()) == {(CHAIN, 2)}
    assert packets(dp, lab, "mb3") > 0


def test_agent_restart_carries_live_sessions_on(lab: Lab, tmp_path: Path) -> None:
    """A stopping agent (SIGTERM: restart, rolling upgrade) leaves each pod's core state
    in its state directory and its rules in place; the next agent attaches the same pods
    and carries the live chained sessions on: no reset, SHA-256 equal at both ends."""
    # mb1's agent packet counter shows the chain survived: no middlebox fast path
    planes = [NodeDataPlane(state_dir=str(tmp_path), mbfast=False)]
    seen: dict[str, Any] = {}

    def start(plane: NodeDataPlane) -> None:
        plane.set_keys({7: b"k" * 32}, 7)
        attach(plane, lab, "client", "server", "mb1")
        apply(plane, lab, chain(lab, 1, ("fw", ("mb1",))))

    def restart() -> None:
        under_way(planes[0], lab)
        seen["saved"] = planes[0].suspend()
        seen["files"] = len(list(tmp_path.glob("*.json")))
        time.sleep(0.3)  # the gap: the pods' packets are dropped, TCP retransmits
        planes.append(NodeDataPlane(state_dir=str(tmp_path), mbfast=False))
        start(planes[1])
        seen["restored"] = planes[1].restored
        seen["sessions"] = dict(planes[1].sessions())

    start(planes[0])
    try:
        result = scenarios.transfer(lab, "client", "server", PACED, during=restart)
        # still chained: a fresh agent would let the sessions' packets pass unrewritten,
        # straight from client to server, past the firewall
        seen["mb1"] = packets(planes[1], lab, "mb1")
    finally:
        for plane in reversed(planes):
            plane.close()
    assert result["ok"], result["failures"]
    assert seen["mb1"] > 100
    assert seen["saved"] == seen["files"] == seen["restored"] == 3
    assert seen["sessions"] == {(CHAIN, 1): 2}
    assert not list(tmp_path.glob("*.json"))  # taken by the successor
    for pod in lab.pods():
        assert not rules.Interception(pod.name, planes[1].runtime.variant).listing()
