"""Kubernetes access for the demo driver and tests/e2e: objects, waits, pod HTTP, checks.

Everything goes through the API server (pod HTTP through the pods' proxy subresource), so
it works on any cluster a kubeconfig reaches.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client, config

GROUP, VERSION = "dysco.io", "v1alpha1"
T = TypeVar("T")
PORT, HTTP = 5001, 8080


def now() -> float:
    return time.monotonic()


def wait_for(fn: Callable[[], T | None], timeout: float, what: str,
             interval: float = 1.0) -> T:
    """Poll `fn` until it returns something truthy; API errors count as "not yet"."""
    deadline = now() + timeout
    last: Any = None
    while now() < deadline:
        try:
            result = fn()
            if result:
                return result
            last = result
        except client.ApiException as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class Kube:
    """The API clients for one namespace."""

    def __init__(self, namespace: str, kubeconfig: str | None = None) -> None:
        # the generated clients take and return plain dicts too: typed as Any here
        self.api: Any = _client(kubeconfig)
        self.ns = namespace
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    # ------------------------------------------------------------------ objects

    def apply_deployment(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        try:
            self.apps.replace_namespaced_deployment(name, self.ns, body)
        except client.ApiException as e:
            if e.status != 404:
                raise
            self.apps.create_namespaced_deployment(self.ns, body)

    def chain(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, self.ns, "servicechains", name)

    def patch_chain(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, "servicechains",
                                                   name, {"spec": spec})

    def plans(self) -> list[dict[str, Any]]:
        return self.custom.list_cluster_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, "dysconodeplans")["items"]

    def pods(self, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def ready_pods(self, selector: str) -> list[Any]:
        return [p for p in self.pods(selector) if p.metadata.deletion_timestamp is None
                and p.status.pod_ip and any(c.type == "Ready" and c.status == "True"
                                            for c in p.status.conditions or ())]

    def deployment_done(self, name: str) -> bool:
        """Rolled out: every replica updated and available, no old or terminating pod."""
        d = self.apps.read_namespaced_deployment(name, self.ns)
        want = d.spec.replicas or 0
        s = d.status
        if (s.observed_generation or 0) < d.metadata.generation:
            return False
        if (s.updated_replicas or 0) != want or (s.available_replicas or 0) != want:
            return False
        if (s.replicas or 0) != want:
            return False
        sel = ",".join(f"{k}={v}" for k, v in d.spec.selector.match_labels.items())
        return len(self.pods(sel)) == want

    def event(self, obj: dict[str, Any], reason: str, message: str,
              type_: str = "Normal") -> None:
        """A core/v1 Event about `obj` (what the demo did, next to the operator's)."""
        meta = obj["metadata"]
        ts = dt.datetime.now(dt.UTC)
        self.core.create_namespaced_event(self.ns, {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:10]}"},
            "involvedObject": {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                               "kind": obj.get("kind", "ServiceChain"), "name": meta["name"],
                               "namespace": self.ns, "uid": meta["uid"]},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": "dysco-demo"},
            "firstTimestamp": ts.isoformat(), "lastTimestamp": ts.isoformat(), "count": 1,
        })

    # ------------------------------------------------------------------ pod HTTP

    def pod_http(self, pod: str, port: int, path: str, method: str = "GET",
                 query: dict[str, str] | None = None, timeout: float = 20) -> Any:
        """`method` on http://<pod>:<port>/<path> through the API server; JSON answers
        are decoded, anything else is returned as text."""
        method, url, headers, body, post = self.api.param_serialize(
            method, f"/api/v1/namespaces/{self.ns}/pods/{pod}:{port}/proxy/{path}",
            query_params=list((query or {}).items()), header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"])
        resp = self.api.call_api(method, url, headers, body, post, _request_timeout=timeout)
        resp.read()
        data = resp.data.decode()
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            return data


def _client(kubeconfig: str | None) -> Any:
    """From `kubeconfig`, else in-cluster, else the default kubeconfig."""
    if not kubeconfig:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------- verification


@dataclass
class Verdict:
    """The end-to-end check of one batch of sessions (client and server side paired)."""

    label: str
    sessions: int = 0
    verified: int = 0
    resets: int = 0
    bytes_verified: int = 0
    prefixes: int = 0  # sessions that started through the proxy (banner in front)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.resets == 0 and self.verified == self.sessions


def verify(label: str, expected: int, clients: list[dict[str, Any]],
           servers: list[dict[str, Any]]) -> Verdict:
    """Pair sessions by token; each must be done, error-free and SHA-256-equal both ways."""
    v = Verdict(label, sessions=len(clients))
    by_token = {s["token"]: s for s in servers}
    if len(clients) != expected:
        v.problems.append(f"{label}: {len(clients)} sessions, expected {expected}")
    for c in clients:
        err = c["error"]
        s = by_token.get(c["token"])
        if err == "ECONNRESET" or (s and s["error"] == "ECONNRESET"):
            v.resets += 1
        if s is None:
            v.problems.append(f"{label} {c['token']}: the server never saw it ({err})")
            continue
        if err or s["error"]:
            v.problems.append(f"{label} {c['token']}: client error {err}, server {s['error']}")
            continue
        if c["state"] != "done" or s["state"] != "done":
            v.problems.append(f"{label} {c['token']}: still running")
            continue
        if c["sha_sent"] != s["sha_received"] or s["sha_sent"] != c["sha_received"]:
            v.problems.append(f"{label} {c['token']}: bytes differ (SHA-256): client sent "
                              f"{c['sent']} server got {s['received']}, server sent "
                              f"{s['sent']} client got {c['received']}")
            continue
        if not c["sent"] or not s["sent"]:
            v.problems.append(f"{label} {c['token']}: no bytes moved")
            continue
        v.verified += 1
        v.bytes_verified += c["sent"] + s["sent"]
        v.prefixes += bool(c["prefix"])
    return v
