"""`helm install` / `upgrade` / `uninstall` of the chart into the real 1.20 apiserver.

No kubelet or controllers run, so nothing starts; what is checked is that the API server
accepts every object of the chart (server-side validation for 1.20) and that the HMAC
key Secret survives upgrades (the `lookup` in the template) and uninstall.
"""

from __future__ import annotations

import base64
import subprocess
from typing import Any

from kubernetes import client

from .conftest import ApiServer
from .helpers import ROOT, api_client

HELM = ROOT / ".venv" / "bin" / "helm"
NS = "dysco-system"


def helm(apiserver: ApiServer, *args: str) -> str:
    assert HELM.exists(), f"{HELM} missing: run `make cluster-tools` (scripts/cluster/tools.sh)"
    out = subprocess.run([str(HELM), "--kubeconfig", str(apiserver.kubeconfig), *args],
                         capture_output=True, text=True, timeout=120,
                         env={"HOME": str(apiserver.workdir), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def keys(api: Any) -> dict[str, bytes]:
    s = client.CoreV1Api(api).read_namespaced_secret("inst-dysco-control-key", NS)
    return {k: base64.b64decode(v) for k, v in s.data.items()}


def test_install_upgrade_uninstall(apiserver: ApiServer) -> None:
    api = api_client(apiserver.kubeconfig)
    out = helm(apiserver, "install", "inst", str(ROOT / "charts" / "dysco"), "-n", NS,
               "--create-namespace")
    assert "STATUS: deployed" in out and "kubectl get servicechains" in out  # NOTES.txt
    apps = client.AppsV1Api(api)
    dep = apps.read_namespaced_deployment("inst-dysco-operator", NS)
    assert dep.spec.replicas == 2
    ds = apps.read_namespaced_daemon_set("inst-dysco-agent", NS)
    assert ds.spec.template.spec.host_pid is True
    caps = ds.spec.template.spec.containers[0].security_context.capabilities.add
    assert {"NET_ADMIN", "SYS_ADMIN", "NET_RAW"} <= set(caps)
    pdb = client.CustomObjectsApi(api).get_namespaced_custom_object(  # 1.20: v1beta1 only
        "policy", "v1beta1", NS, "poddisruptionbudgets", "inst-dysco-operator")
    assert pdb["spec"]["minAvailable"] == 1
    peering = client.CustomObjectsApi(api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "inst-dysco")
    assert peering["metadata"]["name"] == "inst-dysco"
    generated = keys(api)
    assert sorted(generated) == ["current", "key-1"] and generated["current"] == b"1"
    assert len(generated["key-1"]) == 64
    # an operator rotates: key-2 added and made current (agents re-read the mounted files)
    rotated = {**generated, "key-2": b"k" * 32, "current": b"2"}
    client.CoreV1Api(api).patch_namespaced_secret("inst-dysco-control-key", NS, {"data": {
        k: base64.b64encode(v).decode() for k, v in rotated.items()}})

    helm(apiserver, "upgrade", "inst", str(ROOT / "charts" / "dysco"), "-n", NS,
         "--set", "operator.replicas=3")
    assert apps.read_namespaced_deployment("inst-dysco-operator", NS).spec.replicas == 3
    assert keys(api) == rotated  # upgrade keeps the keys as they are: agents keep talking

    # no kubelet here to run the pre-delete cleanup Job (tests/cluster runs it for real)
    helm(apiserver, "uninstall", "inst", "-n", NS, "--no-hooks")
    assert keys(api) == rotated  # kept on uninstall (helm.sh/resource-policy: keep)
    client.CoreV1Api(api).delete_namespaced_secret("inst-dysco-control-key", NS)
    try:
        apps.read_namespaced_deployment("inst-dysco-operator", NS)
        raise AssertionError("deployment still there after uninstall")
    except client.ApiException as e:
        assert e.status == 404
