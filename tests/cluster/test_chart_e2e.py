"""The chart on the local cluster (scripts/cluster/): operator + agent DaemonSet in-cluster.

Needs ``make cluster-up`` (kubeconfig in .cluster/kubeconfig) and builds the images with
scripts/build-images.sh. The agent runs the recording data plane but everything else is
real: in-cluster RBAC, Kopf peering between the two operator replicas, the agent finding
each pod's network namespace by scanning /proc (hostPID), plan status round trips, Events.
FAILS (does not skip) when the cluster is not up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chart_e2e_lib import HELM, IMAGE, RELEASE, SYSTEM_NS, chart_installed, cond, run, wait_for
from kubernetes import client

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

NS = "e2e-chains"
SLEEPER = ["python3", "-c", "import signal,time\nsignal.signal(signal.SIGTERM, lambda *a: exit(0))"
           "\nwhile True: time.sleep(3600)"]
WEB = ["python3", "-c", "import signal,http.server as h\nsignal.signal(signal.SIGTERM, lambda *a:"
       " exit(0))\nh.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"]


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    with chart_installed(NS) as api:
        yield api


def pod(name: str, labels: dict[str, str], command: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 20, "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": command, "ports": [{"name": "http", "containerPort": 8080}]}]}}


def chain(api: Any) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        "dysco.io", "v1alpha1", NS, "servicechains", "web")


def test_chain_programmed_by_in_cluster_agents(api: Any) -> None:
    core = client.CoreV1Api(api)
    for name, labels, cmd in (("client", {"app": "client"}, SLEEPER),
                              ("fw-1", {"nf": "fw"}, SLEEPER), ("fw-2", {"nf": "fw"}, SLEEPER),
                              ("web", {"app": "web"}, WEB)):
        core.create_namespaced_pod(NS, pod(name, labels, cmd))
    core.create_namespaced_service(NS, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    wait_for(lambda: all(p.status.phase == "Running" for p in core.list_namespaced_pod(NS).items),
             120, "pods running")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "dysco.io", "v1alpha1", NS, "servicechains", {
            "apiVersion": "dysco.io/v1alpha1", "kind": "ServiceChain",
            "metadata": {"name": "web"},
            "spec": {"source": {"selector": {"matchLabels": {"app": "client"}}},
                     "destination": {"service": {"name": "web"}, "ports": [{"port": 80}]},
                     "hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}]}})
    sc = wait_for(lambda: cond(c := chain(api), "Ready").get("status") == "True" and c, 120,
                  "chain Ready (in-cluster operator + agent)")
    assert sc["status"]["hopsSummary"] == "fw(2)"
    plans = client.CustomObjectsApi(api).list_cluster_custom_object(
        "dysco.io", "v1alpha1", "dysconodeplans")["items"]
    (plan,) = plans
    st = plan["status"]
    assert st["observedRevision"] == plan["spec"]["revision"]
    # the agent found every pod's network namespace through /proc (no failures)
    assert st.get("failures", []) == [] and st["attachedPods"] == 4
    assert st["agent"].startswith(f"{RELEASE}-agent-")
    peering = client.CustomObjectsApi(api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", RELEASE)
    assert len(peering.get("status") or {}) == 2  # both operator replicas take part

    core.delete_namespaced_pod("fw-2", NS)  # graceful: drained first
    wait_for(lambda: "Draining" in [e.reason for e in core.list_namespaced_event(
        NS, field_selector="involvedObject.name=web").items], 60, "Draining event")
    wait_for(lambda: (c := chain(api))["status"]["hopsSummary"] == "fw(1)"
             and cond(c, "Degraded").get("status") == "False"
             and cond(c, "Ready").get("status") == "True", 120,
             "fw-2 gone; chain Ready and not degraded")


def test_uninstall_hook_releases_the_chains(api: Any) -> None:
    """`helm uninstall` runs the pre-delete Job: chains are released while the operator runs."""
    co = client.CustomObjectsApi(api)
    assert co.list_namespaced_custom_object("dysco.io", "v1alpha1", NS, "servicechains")["items"]
    run(str(HELM), "uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout", "180s")
    assert co.list_namespaced_custom_object("dysco.io", "v1alpha1", NS,
                                            "servicechains")["items"] == []
    plans = co.list_cluster_custom_object("dysco.io", "v1alpha1", "dysconodeplans")["items"]
    assert all(p["spec"]["chains"] == [] for p in plans)
