"""HA: two operator replicas with Kopf peering; only the higher priority one works."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from .conftest import OPERATOR_TOKEN, ApiServer
from .helpers import (
    GROUP,
    VERSION,
    api_client,
    apply_crds,
    chain_body,
    condition,
    rbac_for_users,
    wait_for,
)
from .test_operator import Operator

NS = "ha"
PEERING = "dysco-ha"


@pytest.fixture(scope="module")
def setup(apiserver: ApiServer) -> Iterator[dict[str, Any]]:
    admin = api_client(apiserver.kubeconfig)
    apply_crds(admin)
    rbac_for_users(admin)
    client.CoreV1Api(admin).create_namespace({"metadata": {"name": NS}})
    client.CustomObjectsApi(admin).create_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
         "metadata": {"name": PEERING}})
    kc = apiserver.kubeconfig_for(OPERATOR_TOKEN, "operator-ha")
    high = Operator(kc, apiserver.workdir / "op-high.log", f"--peering={PEERING}",
                    "--priority=200")
    low = Operator(kc, apiserver.workdir / "op-low.log", f"--peering={PEERING}",
                   "--priority=100")
    try:
        yield {"admin": admin, "high": high, "low": low}
    finally:
        high.stop()
        low.stop()


def peers(admin: Any) -> dict[str, Any]:
    obj = client.CustomObjectsApi(admin).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", PEERING)
    return dict(obj.get("status") or {})


def paused(op: Operator) -> bool:
    """Kopf starts paused until it has seen the peers; it logs when it pauses or resumes."""
    log = op.log.read_text()
    return log.rfind("Pausing operations") >= log.rfind("Resuming operations")


def chain_revision(admin: Any, name: str) -> int | None:
    obj = client.CustomObjectsApi(admin).get_namespaced_custom_object(
        GROUP, VERSION, NS, "servicechains", name)
    c = condition(obj, "Accepted")
    return (obj.get("status") or {}).get("revision") if c else None


def test_standby_takes_over(setup: dict[str, Any]) -> None:
    admin, high, low = setup["admin"], setup["high"], setup["low"]
    high.start()
    low.start()
    wait_for(lambda: sorted(p["priority"] for p in peers(admin).values()) == [100, 200],
             timeout=60, what="both replicas registered in the peering object")
    wait_for(lambda: paused(low), timeout=30, what="the low-priority replica is paused")
    co = client.CustomObjectsApi(admin)
    co.create_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", chain_body("a"))
    wait_for(lambda: chain_revision(admin, "a") == 1, timeout=60, what="chain a handled")
    assert "servicechains/a/status" not in low.log.read_text()  # the standby did nothing
    assert "servicechains/a/status" in high.log.read_text()

    assert paused(low)
    high.stop()  # graceful: removes its peering record, the standby resumes at once
    wait_for(lambda: not paused(low), timeout=60, what="the standby resumes")
    co.create_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", chain_body("b"))
    wait_for(lambda: chain_revision(admin, "b") == 1, timeout=60, what="chain b handled")
    assert "servicechains/b/status" in low.log.read_text()
