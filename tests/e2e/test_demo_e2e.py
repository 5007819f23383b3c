"""Acceptance suite of `make demo` on the local cluster, with the agents' real data plane.

The chart is installed with ``ci/local-cluster-dataplane-values.yaml``; `dysco.demo` deploys
its server, client, firewall ``fw`` (2 replicas) and proxy, applies the chain and starts a
long batch of sessions that must survive every test below (checked last but one). Each step
runs its own batch of sessions across the change and checks it end to end: every session
done, no reset, SHA-256 equal at both ends in both directions.

The tests share one cluster state and run in file order. They FAIL (never skip) when the
cluster is not up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from chart_e2e_lib import HELM, KUBECONFIG, RELEASE, ROOT, SYSTEM_NS, TAG, chart_installed, run

from dysco.demo.cluster import HTTP, Kube, wait_for
from dysco.demo.driver import CHAIN, Demo, StepResult

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

NS = "e2e-demo"
HUNDRED = 100
AGENTS = "app.kubernetes.io/component=agent"
VALUES = (ROOT / "charts" / "dysco" / "ci" / "local-cluster-dataplane-values.yaml",)


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with chart_installed(NS, VALUES):
        d = Demo(Kube(NS, str(KUBECONFIG)), f"dysco/agent:{TAG}", "Never", sessions=3,
                 rate=32768, step_timeout=120, json_out=False)
        d.setup()
        d.start("long", d.sessions)
        yield d


def passed(r: StepResult) -> None:
    assert r.ok, f"{r.step}: {r.problems}"
    assert r.resets == 0
    assert r.bytes_verified > 0


def events(demo: Demo) -> list[str]:
    evs = demo.k.core.list_namespaced_event(NS).items
    return [f"{e.involved_object.kind}/{e.reason}" for e in evs]


def test_insert_hop_with_kubectl_patch_moves_live_sessions(demo: Demo) -> None:
    r = demo.step_insert()
    passed(r)
    assert r.reconfigured >= demo.sessions


def test_rollout_replaces_each_instance_under_live_sessions(demo: Demo) -> None:
    r = demo.step_rollout()
    passed(r)
    assert r.reconfigured >= 1, "no session was moved off the old pods"
    assert "ServiceChain/Draining" in events(demo) or any(
        "Drain" in e for e in events(demo)), events(demo)


def test_drain_by_hand_and_by_scale_down(demo: Demo) -> None:
    r = demo.step_drain()
    passed(r)
    assert len(demo.k.ready_pods("app=fw")) == 1


def test_agent_daemonset_upgraded_under_live_sessions(demo: Demo) -> None:
    """`helm upgrade` to a new agent image tag rolls the DaemonSet while sessions run
    through the node's fw and proxy: the stopping agent leaves their state in
    agent.stateDir and the next one carries them on (no reset, SHA-256 equal), still
    chained: both middleboxes keep seeing their packets. The next test removes the proxy
    from these restored sessions (and the long batch's)."""
    system = Kube(SYSTEM_NS, str(KUBECONFIG))
    old = {p.metadata.name for p in system.pods(AGENTS)}
    label = demo.fresh_label("agent-upgrade")
    demo.start(label, demo.sessions)
    run(str(ROOT / "scripts" / "cluster" / "docker.sh"), "tag", f"dysco/agent:{TAG}",
        f"dysco/agent:{TAG}-next")
    t = time.monotonic()
    run(str(HELM), "upgrade", RELEASE, str(ROOT / "charts" / "dysco"), "-n", SYSTEM_NS,
        "--reuse-values", "--set", f"agent.image.tag={TAG}-next", "--wait",
        "--timeout", "240s")
    agent = wait_for(lambda: next((p for p in system.ready_pods(AGENTS)
                                   if p.metadata.name not in old), None), 120,
                     "the upgraded agent")
    assert agent.spec.containers[0].image == f"dysco/agent:{TAG}-next"
    wait_for(lambda: not {p.metadata.name for p in system.pods(AGENTS)} & old, 120,
             "the old agent to go")
    demo.wait_applied()
    rolled = time.monotonic() - t
    # every session moves bytes again, through both middleboxes
    mb0, got0 = _mb_packets(demo), _received(demo, label)
    wait_for(lambda: all(n > got0[tok] for tok, n in _received(demo, label).items()), 60,
             "every session to move bytes after the upgrade")
    resumed = time.monotonic() - t
    time.sleep(2)
    mb1 = _mb_packets(demo)
    print(f"agent upgrade: rolled in {rolled:.1f} s, sessions moving again at {resumed:.1f} s;"
          f" fw/proxy packets meanwhile {mb1[0] - mb0[0]}/{mb1[1] - mb0[1]}")
    assert mb1[0] - mb0[0] > 50 and mb1[1] - mb0[1] > 50, (mb0, mb1)
    log = system.core.read_namespaced_pod_log(agent.metadata.name, SYSTEM_NS)
    assert "carried on with" in log, log[-3000:]
    v = demo.finish(label, demo.sessions)
    assert v.ok, v.problems
    assert v.resets == 0


def test_remove_terminating_proxy_hop_live(demo: Demo) -> None:
    passed(demo.step_remove())


def test_new_sessions_only_keeps_old_paths(demo: Demo) -> None:
    r = demo.step_new_only()
    passed(r)
    assert r.reconfigured == 0, "newSessionsOnly reconfigured established sessions"


def test_long_sessions_survived_every_step(demo: Demo) -> None:
    v = demo.finish("long", demo.sessions)
    assert v.ok, v.problems
    assert v.resets == 0


def test_agent_metrics_count_sessions_and_reconfigurations(demo: Demo) -> None:
    agent = demo.k.core.list_namespaced_pod(
        SYSTEM_NS, label_selector="app.kubernetes.io/component=agent").items[0]
    k = Kube(SYSTEM_NS, str(KUBECONFIG))
    text = k.pod_http(agent.metadata.name, 9402, "metrics")
    assert "dysco_active_sessions" in text
    assert f'dysco_reconfigurations_total{{chain="{NS}/{CHAIN}"' in text \
        and 'result="success"' in text, text[-2000:]
    count = [line for line in text.splitlines()
             if line.startswith("dysco_reconfiguration_duration_seconds_count")]
    assert count and float(count[0].split()[-1]) > 0, count
    # the operator's per-revision gauge follows the chain's status (no stale revisions)
    wait_for(lambda: _operator_sessions(k) == demo.by_revision(), 60,
             "dysco_chain_sessions to match status.sessionsByRevision")


def _operator_sessions(k: Kube) -> dict[str, int] | None:
    """dysco_chain_sessions of the demo chain by revision, from the active operator replica's
    /metrics (the standby exports no chain gauges); None while no replica has the chain."""
    for pod in k.ready_pods("app.kubernetes.io/component=operator"):
        text = k.pod_http(pod.metadata.name, 9401, "metrics")
        if f'dysco_chain_revision{{chain="{NS}/{CHAIN}"}}' not in text:
            continue
        prefix = f'dysco_chain_sessions{{chain="{NS}/{CHAIN}",revision="'
        out = {line[len(prefix):].split('"')[0]: int(float(line.split()[-1]))
               for line in text.splitlines() if line.startswith(prefix)}
        return {rev: n for rev, n in out.items() if n}
    return None


def test_hundred_sessions_through_one_chain_during_a_rollout(demo: Demo) -> None:
    """100 sessions through fw (2 replicas) while fw rolls out: each ends up on a new pod
    (some move twice: off the first old pod onto the second, then off that)."""
    demo.k.patch_chain(CHAIN, {"updatePolicy": "live", "hops": [demo.hop("fw")]})
    demo.k.apps.patch_namespaced_deployment_scale("fw", NS, {"spec": {"replicas": 2}})
    wait_for(lambda: demo.k.deployment_done("fw"), 120, "fw at 2 replicas")
    demo.wait_applied()
    t = time.monotonic()
    r = demo.step_rollout(sessions=HUNDRED, rate=4096)
    print(f"100-session rollout: {time.monotonic() - t:.1f} s in all, {r.seconds} s "
          f"rollout, {r.reconfigured} reconfigured, {r.bytes_verified} bytes verified")
    # Failed attempts are tolerated here (not in the demo's steps): with 100 sessions on
    # 2 old pods a session can get overlapping moves and the loser counts as failed
    # (docs/demo.md, known problems). What a user sees must hold: every session on a
    # new pod, no reset, every byte verified.
    assert [p for p in r.problems if "reconfiguration(s) failed" not in p] == []
    assert r.resets == 0 and r.bytes_verified > 0
    assert r.sessions == HUNDRED
    assert r.reconfigured >= HUNDRED, "not every session was moved off the old pods"


def test_operator_killed_during_rollout_the_rollout_completes(demo: Demo) -> None:
    ops = Kube(SYSTEM_NS, str(KUBECONFIG))

    def kill_operator_then_roll() -> None:
        for p in ops.pods("app.kubernetes.io/component=operator"):
            ops.core.delete_namespaced_pod(p.metadata.name, SYSTEM_NS, grace_period_seconds=0)
        demo.k.apply_deployment(demo.fw(len(demo.k.ready_pods("app=fw")), demo.version + 1))
        demo.version += 1

    r = demo.run_step("operator-killed", "operator pods deleted, fw rolled out meanwhile",
                      kill_operator_then_roll, lambda: demo.k.deployment_done("fw"))
    passed(r)
    wait_for(lambda: len(ops.ready_pods("app.kubernetes.io/component=operator")) == 2, 180,
             "the operator to come back")
    demo.wait_applied()


def test_chain_deleted_sessions_fall_back_without_resets(demo: Demo) -> None:
    demo.start("deleted", demo.sessions)
    demo.k.custom.delete_namespaced_custom_object("dysco.io", "v1alpha1", NS, "servicechains",
                                                  CHAIN)
    wait_for(lambda: not demo.k.custom.list_namespaced_custom_object(
        "dysco.io", "v1alpha1", NS, "servicechains")["items"], 90, "the chain to go")
    time.sleep(5)
    v = demo.finish("deleted", demo.sessions)
    assert v.ok, v.problems
    # new sessions take the direct path: no firewall admits a new connection any more
    before = _fw_new(demo)
    demo.start("after-delete", demo.sessions)
    time.sleep(3)
    v = demo.finish("after-delete", demo.sessions)
    assert v.ok, v.problems
    assert _fw_new(demo) == before


def _fw_new(demo: Demo) -> int:
    """Packets the firewalls passed as NEW connections (a SYN, or a mid-stream pickup)."""
    total = 0
    for p in demo.k.ready_pods("app=fw"):
        c: dict[str, Any] = demo.k.pod_http(p.metadata.name, HTTP, "counters")
        total += int(c.get("new_packets", 0))
    return total


def _mb_packets(demo: Demo) -> tuple[int, int]:
    """Packets the firewalls let through established sessions, and packets the proxies
    took in (diverted to them, or replies to their connections)."""
    fw = sum(int(demo.k.pod_http(p.metadata.name, HTTP, "counters").get(
        "established_packets", 0)) for p in demo.k.ready_pods("app=fw"))
    proxy = 0
    for p in demo.k.ready_pods("app=proxy"):
        c: dict[str, Any] = demo.k.pod_http(p.metadata.name, HTTP, "counters")
        proxy += int(c.get("diverted_packets", 0)) + int(c.get("reply_packets", 0))
    return fw, proxy


def _received(demo: Demo, label: str) -> dict[str, int]:
    """Bytes each client session of batch `label` received so far, by token."""
    return {s["token"]: s["received"] for s in demo.k.pod_http(
        demo.client_pod(), HTTP, "sessions", query={"label": label})["sessions"]}
