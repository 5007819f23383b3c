"""Smoke test of the local Kubernetes cluster (scripts/cluster, `make cluster-up`).

Fails (does not skip) when the cluster is not up. Checks that the node is Ready, that a pod gets
its own network namespace with an IP from the pod CIDR, that a ClusterIP Service reaches a TCP
server in a pod (from the host and from another pod), and that pods reach the API server through
the `kubernetes` Service. Everything is created in a throw-away namespace that is removed after.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
CACHE = Path(os.environ.get("DYSCO_CACHE", "/var/cache/dysco"))
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
IMAGE = "dysco/base:bookworm"
# PID 1 ignores SIGTERM unless it installs a handler; exit at once so deletion is quick.
SLEEP_CMD = ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"]
WEB_CMD = [
    "python3",
    "-c",
    "import signal, sys, http.server as h\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "h.ThreadingHTTPServer(('0.0.0.0', 8080), h.SimpleHTTPRequestHandler).serve_forever()",
]


def kubectl_bin() -> str:
    built = CACHE / "k8s" / "bin" / "kubectl"  # v1.20.2, same as the server
    if built.exists():
        return str(built)
    found = shutil.which("kubectl")
    if not found:
        pytest.fail("no kubectl (run make cluster-up)")
    return found


def kubectl(*args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [kubectl_bin(), "--kubeconfig", str(KUBECONFIG), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def wait_until(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # transient API errors while objects settle
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def core() -> Any:
    if not KUBECONFIG.exists():
        pytest.fail(f"cluster not up: {KUBECONFIG} missing (run `make cluster-up`)")
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    url = urllib.parse.urlsplit(api_client.configuration.host)
    try:  # fail fast: the client itself would retry a refused connection with backoff
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        api = client.CoreV1Api(api_client)
        api.get_api_resources(_request_timeout=5)
    except Exception as exc:
        pytest.fail(f"cluster not up: API server not reachable ({exc}); run `make cluster-up`")
    return api


@pytest.fixture(scope="module")
def namespace(core: Any) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    # pods are rejected until the token controller has given the ServiceAccount its secret
    wait_until(
        "default ServiceAccount token",
        lambda: core.read_namespaced_service_account("default", name).secrets,
    )
    yield name
    # force: kubelet 1.20 otherwise waits for sandbox GC before the objects disappear
    kubectl("-n", name, "delete", "pods", "--all", "--grace-period=0", "--force", "--wait=false")
    kubectl("delete", "namespace", name, "--wait=false")


def pod_spec(name: str, command: list[str], labels: dict[str, str] | None = None) -> dict:
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
    }
    if name == "web":
        container["ports"] = [{"containerPort": 8080}]
        container["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]},
    }


def wait_running(core: Any, ns: str, name: str) -> Any:
    def ready() -> Any:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase in ("Failed", "Succeeded"):
            raise AssertionError(f"pod {name} ended: {pod.status}")
        conds = {c.type: c.status for c in pod.status.conditions or []}
        return pod if pod.status.phase == "Running" and conds.get("Ready") == "True" else None

    return wait_until(f"pod {ns}/{name} Running and Ready", ready)


@pytest.fixture(scope="module")
def pods(core: Any, namespace: str) -> dict[str, Any]:
    core.create_namespaced_pod(namespace, pod_spec("sleeper", SLEEP_CMD))
    core.create_namespaced_pod(namespace, pod_spec("web", WEB_CMD))
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    return {name: wait_running(core, namespace, name) for name in ("sleeper", "web")}


def test_node_ready(core: Any) -> None:
    nodes = core.list_node().items
    assert [n.metadata.name for n in nodes] == ["localhost"]
    conds = {c.type: c.status for c in nodes[0].status.conditions}
    assert conds["Ready"] == "True", conds


def test_pod_has_own_netns_and_pod_cidr_ip(pods: dict[str, Any], namespace: str) -> None:
    pod = pods["sleeper"]
    assert not pod.spec.host_network
    ip = ipaddress.ip_address(pod.status.pod_ip)
    assert ip in POD_CIDR, ip
    # the address is configured on the pod's eth0, inside a network namespace that is not ours
    addrs = kubectl("-n", namespace, "exec", "sleeper", "--", "ip", "-4", "-o", "addr", "show")
    assert f"inet {ip}/" in addrs, addrs
    pod_netns = kubectl("-n", namespace, "exec", "sleeper", "--", "readlink", "/proc/self/ns/net")
    assert pod_netns.strip() != os.readlink("/proc/self/ns/net")


def http_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


def test_cluster_ip_service_reaches_pod(core: Any, pods: dict[str, Any], namespace: str) -> None:
    svc = core.read_namespaced_service("web", namespace)
    cluster_ip = ipaddress.ip_address(svc.spec.cluster_ip)
    assert cluster_ip in SERVICE_CIDR, cluster_ip

    def endpoints() -> list[str]:
        ep = core.read_namespaced_endpoints("web", namespace)
        return [a.ip for s in ep.subsets or [] for a in s.addresses or []]

    assert wait_until("Service endpoints", endpoints) == [pods["web"].status.pod_ip]
    url = f"http://{cluster_ip}:80/"
    # host -> ClusterIP (kube-proxy's rules must be in place: allow them a few seconds)
    assert wait_until(f"GET {url} from the host", lambda: http_get(url) == 200, timeout=30)
    # pod -> ClusterIP
    code = kubectl(
        "-n", namespace, "exec", "sleeper", "--", "python3", "-c",
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).status)",
    )  # fmt: skip
    assert code.strip() == "200"


def test_pod_reaches_api_server(pods: dict[str, Any], namespace: str) -> None:
    """In-cluster clients use KUBERNETES_SERVICE_HOST (10.96.0.1:443) and the SA token + CA."""
    script = (
        "import os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "host = os.environ['KUBERNETES_SERVICE_HOST']\n"
        "port = os.environ['KUBERNETES_SERVICE_PORT']\n"
        "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
        "req = urllib.request.Request(f'https://{host}:{port}/version', headers={\n"
        "    'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
        "print(host, urllib.request.urlopen(req, context=ctx, timeout=5).read().decode())\n"
    )
    out = kubectl("-n", namespace, "exec", "sleeper", "--", "python3", "-c", script)
    assert out.startswith("10.96.0.1 "), out
    assert '"gitVersion": "v1.20.2"' in out, out
