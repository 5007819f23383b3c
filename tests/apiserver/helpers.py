"""Shared helpers for the apiserver tests (kubernetes client against the test apiserver)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "dysco.io", "v1alpha1"
T = TypeVar("T")


def api_client(kubeconfig: Path) -> Any:
    return config.new_client_from_config(config_file=str(kubeconfig))


def wait_for(fn: Callable[[], T], timeout: float = 30.0, what: str = "condition",
              interval: float = 0.2) -> T:
    """Poll ``fn`` until it returns a truthy value; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def apply_crds(api: Any) -> None:
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as e:
            if e.status != 409:
                raise
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]

        def established(n: str = name) -> bool:
            crd = ext.read_custom_resource_definition(n)
            return any(c.type == "Established" and c.status == "True"
                       for c in crd.status.conditions or ())
        wait_for(established, what=f"CRD {name} Established")


def chain_body(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"selector": {"matchLabels": {"app": "client"}}},
        "destination": {"service": {"name": "web"}, "ports": [{"port": 80}]},
        "hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}],
    }
    base.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceChain",
            "metadata": {"name": name}, "spec": base}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return c  # type: ignore[no-any-return]
    return None


def rbac_for_users(api: Any) -> None:
    """The chart's ClusterRoles, bound to the token users of the test apiserver (idempotent)."""
    helm = ROOT / ".venv" / "bin" / "helm"
    assert helm.exists(), f"{helm} missing: run `make cluster-tools` (scripts/cluster/tools.sh)"
    out = subprocess.run([str(helm), "template", "rel", str(ROOT / "charts" / "dysco"),
                          "-s", "templates/rbac.yaml"], capture_output=True, text=True,
                         check=True)
    rbac = client.RbacAuthorizationV1Api(api)
    for doc in yaml.safe_load_all(out.stdout):
        if not doc:
            continue
        try:
            if doc["kind"] == "ClusterRole":
                rbac.create_cluster_role(doc)
            elif doc["kind"] == "ClusterRoleBinding":
                user = "dysco-operator" if "operator" in doc["metadata"]["name"] \
                    else "dysco-agent"
                doc["subjects"] = [{"kind": "User", "name": user,
                                    "apiGroup": "rbac.authorization.k8s.io"}]
                rbac.create_cluster_role_binding(doc)
        except client.ApiException as e:
            if e.status != 409:
                raise
