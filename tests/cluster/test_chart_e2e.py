"""The chart on the local cluster (scripts/cluster/): operator + agent DaemonSet in-cluster.

Needs ``make cluster-up`` (kubeconfig in .cluster/kubeconfig) and builds the images with
scripts/build-images.sh. The agent runs the recording data plane but everything else is
real: in-cluster RBAC, Kopf peering between the two operator replicas, the agent finding
each pod's network namespace by scanning /proc (hostPID), plan status round trips, Events.
FAILS (does not skip) when the cluster is not up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = Path(os.environ.get("DYSCO_KUBECONFIG", ROOT / ".cluster" / "kubeconfig"))
HELM = ROOT / ".venv" / "bin" / "helm"
RELEASE, SYSTEM_NS, NS, TAG = "dysco", "dysco-e2e", "e2e-chains", "e2e"
IMAGE = "dysco/base:bookworm"
SLEEPER = ["python3", "-c", "import signal,time\nsignal.signal(signal.SIGTERM, lambda *a: exit(0))"
           "\nwhile True: time.sleep(3600)"]
WEB = ["python3", "-c", "import signal,http.server as h\nsignal.signal(signal.SIGTERM, lambda *a:"
       " exit(0))\nh.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"]


def wait_for(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except client.ApiException as e:
            last = e
        else:
            if last:
                return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def run(*cmd: str, timeout: float = 600) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "KUBECONFIG": str(KUBECONFIG)})
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def cluster_lock() -> Iterator[None]:
    """One chart install per cluster at a time: two operators would fight over the plans."""
    with open("/tmp/dysco-chart-e2e.lock", "w") as f:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another chart e2e run holds /tmp/dysco-chart-e2e.lock")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def api(cluster_lock: None) -> Iterator[Any]:
    if not KUBECONFIG.exists():
        pytest.fail(f"{KUBECONFIG} missing: start the local cluster with `make cluster-up`",
                    pytrace=False)
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    try:
        client.CoreV1Api(api).list_node(_request_timeout=5)
    except Exception as e:
        pytest.fail(f"local cluster not reachable ({e}): `make cluster-up`", pytrace=False)
    run(str(ROOT / "scripts" / "build-images.sh"), TAG, timeout=1200)
    core = client.CoreV1Api(api)
    # a run that crashed may have left its release or namespace behind
    subprocess.run([str(HELM), "uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"],
                   env={**os.environ, "KUBECONFIG": str(KUBECONFIG)}, capture_output=True,
                   timeout=180)
    _drop_finalizers(api)
    wait_for(lambda: not {NS, SYSTEM_NS} & {n.metadata.name for n in core.list_namespace().items
                                            if n.status.phase == "Terminating"}, 120,
             "namespaces of an earlier run to go")
    try:
        run(str(HELM), "upgrade", "--install", RELEASE, str(ROOT / "charts" / "dysco"),
            "-n", SYSTEM_NS, "--create-namespace",
            "-f", str(ROOT / "charts" / "dysco" / "ci" / "local-cluster-values.yaml"),
            "--set", f"operator.image.tag={TAG},agent.image.tag={TAG}",
            "--wait", "--timeout", "240s")
        core.create_namespace({"metadata": {"name": NS}})
        # pods are refused until the namespace's default ServiceAccount has its token
        wait_for(lambda: core.read_namespaced_service_account("default", NS).secrets, 60,
                 "default ServiceAccount token")
        yield api
    finally:
        co = client.CustomObjectsApi(api)
        try:
            # chains first, while the operator runs: its finalizer releases them
            for sc in co.list_namespaced_custom_object(
                    "dysco.io", "v1alpha1", NS, "servicechains")["items"]:
                co.delete_namespaced_custom_object(
                    "dysco.io", "v1alpha1", NS, "servicechains", sc["metadata"]["name"])
            wait_for(lambda: not co.list_namespaced_custom_object(
                "dysco.io", "v1alpha1", NS, "servicechains")["items"], 90, "chains released")
            for p in core.list_namespaced_pod(NS).items:
                core.delete_namespaced_pod(p.metadata.name, NS, grace_period_seconds=0)
            core.delete_namespace(NS)
        except (client.ApiException, AssertionError):
            _drop_finalizers(api)
        subprocess.run([str(HELM), "uninstall", RELEASE, "-n", SYSTEM_NS, "--wait",
                        "--timeout", "120s"], env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
                       capture_output=True, timeout=180)
        # the control-key Secret is kept by design; this test leaves nothing behind
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(SYSTEM_NS)


def _drop_finalizers(api: Any) -> None:
    """Without a running operator nothing releases a chain: clear the finalizers by hand."""
    co = client.CustomObjectsApi(api)
    try:
        items = co.list_namespaced_custom_object("dysco.io", "v1alpha1", NS,
                                                 "servicechains")["items"]
    except client.ApiException:
        return
    for sc in items:
        co.patch_namespaced_custom_object("dysco.io", "v1alpha1", NS, "servicechains",
                                          sc["metadata"]["name"],
                                          {"metadata": {"finalizers": None}})


def pod(name: str, labels: dict[str, str], command: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 20, "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": command, "ports": [{"name": "http", "containerPort": 8080}]}]}}


def chain(api: Any) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        "dysco.io", "v1alpha1", NS, "servicechains", "web")


def cond(obj: dict[str, Any], t: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c["type"] == t:
            return c  # type: ignore[no-any-return]
    return {}


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
