"""Middlebox lifecycle on the local cluster with the chart installed (operator + agents in-cluster).

The middleboxes of the chain's only hop come from a Deployment. The tests run in order and
share the objects:

1. 2 replicas: the chain is Ready with 2 instances, the node's DyscoNodePlan lists both;
2. ``kubectl scale --replicas=1``: the removed pod is draining in the plan (and acknowledged
   by the agent) before it goes, a ``Draining`` Event is posted; then 1 instance, Ready;
3. ``kubectl drain`` of the node: the evicted middlebox is draining in the plan, the chain is
   not Ready (``NoReadyInstances``) while no instance is left, Events are posted; after
   ``kubectl uncordon`` the Deployment's new pod is scheduled and the chain is Ready again.
   The node is uncordoned in a ``finally``, even when the test fails.

The middlebox takes a few seconds to finish after SIGTERM (like one that drains its sessions),
so the draining state can be observed before the pod disappears. Waits poll the API with
timeouts; the tests FAIL (never skip) when the cluster is not up or something is wrong.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chart_e2e_lib import IMAGE, KUBECONFIG, KUBECTL, chart_installed, cond, kubectl, wait_for
from kubernetes import client

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

NS, NODE, CHAIN = "e2e-lifecycle", "localhost", "web"
KEY = f"{NS}/{CHAIN}"
# Only this test's middleboxes carry it: `kubectl drain --pod-selector` evicts nothing else.
LABEL = "dysco-e2e-lifecycle"
FW_LABELS = {"nf": "fw", LABEL: "fw"}
FW_SELECTOR = f"{LABEL}=fw"
GRACE = 10  # seconds a middlebox keeps running after SIGTERM
SLEEPER = ["python3", "-c", "import signal,sys,time\n"
           "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True: time.sleep(3600)"]
MIDDLEBOX = ["python3", "-c", "import signal,sys,time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (time.sleep({GRACE}), sys.exit(0)))\n"
             "while True: time.sleep(3600)"]
WEB = ["python3", "-c", "import signal,sys,http.server as h\n"
       "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
       "h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"]


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    with chart_installed(NS) as api:
        yield api


# ---------------------------------------------------------------- readers


def when(obj: Any, ok: Any) -> Any:
    """``obj`` if ``ok(obj)``, else None (for wait_for)."""
    return obj if ok(obj) else None


def container(command: list[str]) -> dict[str, Any]:
    return {"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": command,
            "ports": [{"name": "http", "containerPort": 8080}]}


def chain(api: Any) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        "dysco.io", "v1alpha1", NS, "servicechains", CHAIN)


def plan(api: Any) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_cluster_custom_object(  # type: ignore[no-any-return]
        "dysco.io", "v1alpha1", "dysconodeplans", NODE)


def plan_hop_instances(p: dict[str, Any]) -> list[str]:
    (entry,) = [c for c in p["spec"].get("chains") or () if c["name"] == KEY]
    (hop,) = entry["hops"]
    return sorted(hop.get("instances") or ())


def plan_middleboxes(p: dict[str, Any]) -> list[str]:
    return sorted(x["name"] for x in p["spec"].get("pods") or ()
                  if any(r["chain"] == KEY and r["role"] == "middlebox" for r in x["roles"]))


def plan_draining(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["pod"]: d for d in p["spec"].get("draining") or ()}


def applied(p: dict[str, Any]) -> bool:
    """The agent has applied the current plan revision, without failures."""
    st = p.get("status") or {}
    return st.get("observedRevision") == p["spec"]["revision"] and not st.get("failures")


def hop_status(sc: dict[str, Any]) -> dict[str, Any]:
    (hop,) = sc["status"]["hops"]
    return hop  # type: ignore[no-any-return]


def fw_pods(api: Any) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=FW_SELECTOR).items)


def is_ready(p: Any) -> bool:
    return bool(p.status.phase == "Running" and not p.metadata.deletion_timestamp
                and any(c.type == "Ready" and c.status == "True"
                        for c in p.status.conditions or ()))


def chain_events(api: Any) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_event(
        NS, field_selector=f"involvedObject.kind=ServiceChain,involvedObject.name={CHAIN}").items)


def new_event(api: Any, seen: set[str], reason: str, text: str = "") -> Any:
    for e in chain_events(api):
        if e.metadata.uid not in seen and e.reason == reason and text in (e.message or ""):
            return e
    return None


def event_uids(api: Any) -> set[str]:
    return {e.metadata.uid for e in chain_events(api)}


def pod_exists(api: Any, name: str, uid: str) -> bool:
    try:
        return bool(client.CoreV1Api(api).read_namespaced_pod(name, NS).metadata.uid == uid)
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


def settled(api: Any, n: int) -> Any:
    """Chain Ready and not degraded with ``n`` ready instances, in status and (applied) plan."""
    sc, p = chain(api), plan(api)
    ips = sorted(x.status.pod_ip for x in fw_pods(api) if is_ready(x))
    ok = (cond(sc, "Ready").get("status") == "True"
          and cond(sc, "Degraded").get("status") == "False"
          and sc["status"]["observedGeneration"] == sc["metadata"]["generation"]
          and hop_status(sc)["readyInstances"] == n and hop_status(sc)["drainingInstances"] == 0
          and sorted(hop_status(sc)["instances"]) == ips and len(ips) == n
          and plan_hop_instances(p) == ips and not plan_draining(p) and applied(p))
    return (sc, p) if ok else None


# ---------------------------------------------------------------- tests


def test_deployment_instances_in_status_and_plan(api: Any) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    for name, cmd in (("client", SLEEPER), ("web", WEB)):
        core.create_namespaced_pod(NS, {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [container(cmd)]}})
    core.create_namespaced_service(NS, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    apps.create_namespaced_deployment(NS, {
        "metadata": {"name": "fw"},
        "spec": {"replicas": 2, "selector": {"matchLabels": FW_LABELS},
                 "template": {"metadata": {"labels": FW_LABELS}, "spec": {
                     "terminationGracePeriodSeconds": GRACE + 20,
                     "containers": [container(MIDDLEBOX)]}}}})
    wait_for(lambda: (d := apps.read_namespaced_deployment("fw", NS).status).ready_replicas == 2
             and d.replicas == 2, 90, "Deployment fw: 2 ready replicas")
    wait_for(lambda: all(is_ready(p) for p in core.list_namespaced_pod(NS).items), 60,
             "client and web ready")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "dysco.io", "v1alpha1", NS, "servicechains", {
            "apiVersion": "dysco.io/v1alpha1", "kind": "ServiceChain",
            "metadata": {"name": CHAIN},
            "spec": {"source": {"selector": {"matchLabels": {"app": "client"}}},
                     "destination": {"service": {"name": "web"}, "ports": [{"port": 80}]},
                     "drainTimeoutSeconds": 30,
                     "hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}]}})

    sc, p = wait_for(lambda: settled(api, 2), 90, "chain Ready with 2 instances, plan applied")
    pods = fw_pods(api)
    assert sc["status"]["hopsSummary"] == "fw(2)"
    assert cond(sc, "Programmed")["reason"] == "Programmed"
    # the plan lists both Deployment pods: as hop instances and as middlebox participants
    assert plan_hop_instances(p) == sorted(x.status.pod_ip for x in pods)
    assert plan_middleboxes(p) == sorted(x.metadata.name for x in pods)
    assert p["status"]["attachedPods"] == 4  # client, web, 2 x fw


def test_scale_down_drains_the_removed_pod(api: Any) -> None:
    seen = event_uids(api)
    before = {x.metadata.name: x for x in fw_pods(api)}
    assert len(before) == 2
    kubectl("-n", NS, "scale", "deployment", "fw", "--replicas=1")

    (gone,) = wait_for(lambda: [x for x in fw_pods(api) if x.metadata.deletion_timestamp], 30,
                       "the ReplicaSet to delete one pod")
    name, uid, ip = gone.metadata.name, gone.metadata.uid, gone.status.pod_ip
    (survivor_ip,) = [x.status.pod_ip for n, x in before.items() if n != name]
    pod_key = f"{NS}/{name}"

    # the removed pod is draining in the plan, and the agent has applied that revision,
    # while the pod still exists (it runs GRACE seconds after SIGTERM)
    p = wait_for(lambda: when(plan(api), lambda q: pod_key in plan_draining(q) and applied(q)),
                 30, f"{pod_key} draining in the plan, applied by the agent", interval=0.2)
    assert pod_exists(api, name, uid), f"{pod_key} went before it was marked draining"
    d = plan_draining(p)[pod_key]
    assert (d["ip"], d["reason"], d["chains"]) == (ip, "Terminating", [KEY])
    assert plan_hop_instances(p) == [survivor_ip]  # no new session goes to the draining pod
    assert name in plan_middleboxes(p)  # still attached: its sessions are moved off
    # status: one instance serves (Ready), one drains (Degraded)
    sc = wait_for(lambda: when(chain(api), lambda c: cond(c, "Ready").get("status") == "True"
                  and (hop_status(c)["readyInstances"], hop_status(c)["drainingInstances"])
                  == (1, 1)), 30, "status: 1 ready, 1 draining", interval=0.2)
    assert pod_exists(api, name, uid)
    assert cond(sc, "Degraded")["reason"] == "Draining" and name in cond(sc, "Degraded")["message"]
    ev = wait_for(lambda: new_event(api, seen, "Draining", name), 30, "Draining Event")
    assert ev.type == "Warning"

    wait_for(lambda: not pod_exists(api, name, uid), 60, f"{pod_key} to go")
    sc, p = wait_for(lambda: settled(api, 1), 60, "chain Ready with 1 instance, plan applied")
    assert sc["status"]["hopsSummary"] == "fw(1)"
    assert plan_hop_instances(p) == [survivor_ip] and name not in plan_middleboxes(p)
    assert p["status"]["attachedPods"] == 3
    wait_for(lambda: new_event(api, seen, "AsExpected"), 30, "Degraded=False Event")


def test_node_drain_and_uncordon(api: Any) -> None:
    core = client.CoreV1Api(api)
    seen = event_uids(api)
    (old,) = fw_pods(api)
    name, uid, ip = old.metadata.name, old.metadata.uid, old.status.pod_ip
    pod_key = f"{NS}/{name}"
    assert core.read_node(NODE).spec.unschedulable is not True, "node already cordoned"

    # A real `kubectl drain` (cordon, then eviction through the Eviction API), limited with
    # --pod-selector to this test's middleboxes: on this single-node cluster a full drain
    # would also evict the operator itself, the chain's source and destination pods, and
    # other tests' pods. It blocks until the evicted pods are gone, so it runs alongside.
    drain = subprocess.Popen(
        [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), "drain", NODE,
         f"--pod-selector={FW_SELECTOR}", "--ignore-daemonsets", "--delete-emptydir-data",
         "--force", "--timeout=90s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: core.read_node(NODE).spec.unschedulable, 30, "node cordoned")
        # the middlebox on the cordoned node is draining: first NodeUnschedulable, then
        # Terminating once evicted; it is still there
        p = wait_for(lambda: when(plan(api), lambda q: pod_key in plan_draining(q) and applied(q)),
                     30, f"{pod_key} draining in the plan", interval=0.2)
        assert pod_exists(api, name, uid), f"{pod_key} went before it was marked draining"
        assert plan_draining(p)[pod_key]["ip"] == ip
        assert plan_draining(p)[pod_key]["reason"] in ("NodeUnschedulable", "Terminating")
        assert plan_hop_instances(p) == []
        # no instance left: not Ready, with the reason, while the last one drains
        sc = wait_for(lambda: when(chain(api), lambda c: cond(c, "Ready").get("status") == "False"
                                           and hop_status(c)["drainingInstances"] == 1), 30,
                      "chain not Ready, its last instance draining")
        assert hop_status(sc)["readyInstances"] == 0 and sc["status"]["hopsSummary"] == "fw(0)"
        assert cond(sc, "Ready")["reason"] == "NoReadyInstances"
        assert "no ready instance for hop(s) fw" in cond(sc, "Ready")["message"]
        assert cond(sc, "Degraded")["status"] == "True"
        assert cond(sc, "Degraded")["reason"] == "Draining"
        ev = wait_for(lambda: new_event(api, seen, "NoReadyInstances"), 30,
                      "NoReadyInstances Event")
        assert ev.type == "Warning" and "fw" in ev.message
        wait_for(lambda: new_event(api, seen, "Draining", name), 30, "Draining Event")

        out, _ = drain.communicate(timeout=90)
        assert drain.returncode == 0, out
        assert f"pod/{name} evicted" in out, out
        assert not pod_exists(api, name, uid)
        # the Deployment's replacement cannot be scheduled on the cordoned node
        (new,) = wait_for(lambda: [x for x in fw_pods(api) if x.metadata.uid != uid
                                   and any(c.type == "PodScheduled" and c.status == "False"
                                           for c in x.status.conditions or ())], 30,
                          "the replacement pod, unschedulable")
        p = wait_for(lambda: when(plan(api), lambda q: not plan_draining(q) and applied(q)),
                     30, "drain finished in the plan")
        assert plan_hop_instances(p) == [] and plan_middleboxes(p) == []
        # the operator writes the status after the plan: the agent may acknowledge first
        sc = wait_for(lambda: when(chain(api), lambda c: hop_status(c)["drainingInstances"] == 0),
                      30, "status: nothing draining")
        assert cond(sc, "Ready")["status"] == "False", sc["status"]
        assert cond(sc, "Ready")["reason"] == "NoReadyInstances", sc["status"]
        assert hop_status(sc)["readyInstances"] == 0, sc["status"]

        kubectl("uncordon", NODE)
        sc, p = wait_for(lambda: settled(api, 1), 90,
                         "after uncordon: the new pod serves, chain Ready")
        (back,) = fw_pods(api)
        assert back.metadata.uid == new.metadata.uid
        assert plan_middleboxes(p) == [back.metadata.name]
        wait_for(lambda: new_event(api, seen, "ResolvedRefs"), 30, "ResolvedRefs=True Event")
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
        _uncordon(core)


def _uncordon(core: Any) -> None:
    """Leave the node schedulable for everyone else, whatever happened."""
    for _ in range(5):
        try:
            kubectl("uncordon", NODE)
            if not core.read_node(NODE).spec.unschedulable:
                return
        except (AssertionError, client.ApiException, subprocess.TimeoutExpired):
            pass
        time.sleep(2)
    raise AssertionError(f"could not uncordon node {NODE}: run `kubectl uncordon {NODE}`")
