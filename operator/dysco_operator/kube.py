"""The few API calls the operator makes itself (kopf does the watching and the events).

Synchronous ``kubernetes`` client calls, run in a thread by the async callers. Every write
that depends on what was read carries the ``resourceVersion`` it was based on, so a stale
read shows up as HTTP 409 (:class:`Conflict`) instead of silently overwriting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .model import CHAINS, GROUP, PLANS, VERSION


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class NotFound(Exception):
    """The object does not exist (HTTP 404)."""


def _wrap(e: ApiException) -> Exception:
    if e.status == 409:
        return Conflict(str(e.reason))
    if e.status == 404:
        return NotFound(str(e.reason))
    return e


def load_api_client() -> Any:
    """In-cluster service account first, then $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Kube:
    def __init__(self, api_client: Any | None = None) -> None:
        self.custom = client.CustomObjectsApi(api_client or load_api_client())

    # ---- ServiceChain
    def get_chain(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CHAINS, name))
        except ApiException as e:
            raise _wrap(e) from e

    def patch_chain_status(
        self, namespace: str, name: str, status_patch: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Merge-patch the status subresource, only if the chain is still at resource_version."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status_patch)}
        try:
            return cast(dict[str, Any], self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, CHAINS, name, body))
        except ApiException as e:
            raise _wrap(e) from e

    # ---- DyscoNodePlan
    def get_plan(self, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.custom.get_cluster_custom_object(
                GROUP, VERSION, PLANS, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create_plan(
        self, name: str, spec: Mapping[str, Any], owner: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "dysco-operator"},
        }
        if owner:
            meta["ownerReferences"] = [dict(owner)]
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
                "metadata": meta, "spec": dict(spec)}
        try:
            return cast(dict[str, Any], self.custom.create_cluster_custom_object(
                GROUP, VERSION, PLANS, body))
        except ApiException as e:
            raise _wrap(e) from e

    def replace_plan_spec(
        self, current: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """PUT the plan with a new spec; fails with Conflict if ``current`` is stale."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
            "metadata": dict(current["metadata"]), "spec": dict(spec),
        }
        try:
            return cast(dict[str, Any], self.custom.replace_cluster_custom_object(
                GROUP, VERSION, PLANS, current["metadata"]["name"], body))
        except ApiException as e:
            raise _wrap(e) from e
