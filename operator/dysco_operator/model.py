"""Small immutable views of the Kubernetes objects the planner needs.

The kopf indexes store these (not whole bodies), so memory stays small and the planner
(`planner.py`) is a pure function of plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "dysco.io"
VERSION = "v1alpha1"
CHAINS = "servicechains"
PLANS = "dysconodeplans"
CONTENT_DELTA = "dysco.io/content-delta"
"""Pod annotation of a TCP-terminating proxy: "<left-to-right>,<right-to-left>", the
bytes it adds (negative: removes) to every session per direction."""


@dataclass(frozen=True)
class PodInfo:
    """A pod as the planner sees it."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    node: str | None
    ip: str | None
    phase: str
    ready: bool
    deleting: str | None
    """metadata.deletionTimestamp (RFC 3339) when the pod is terminating."""
    container_ids: tuple[str, ...] = ()
    ports: Mapping[str, int] = field(default_factory=dict)
    """Named container ports (for Services with a named targetPort)."""
    host_network: bool = False
    """Pods in the node's own network namespace are never Dysco hosts."""
    content_delta: tuple[int, int] | None = None
    """A proxy's `CONTENT_DELTA` annotation (None: absent or not two integers)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def alive(self) -> bool:
        """Own netns, an IP on a node, not terminated: a possible Dysco host."""
        return (bool(self.ip and self.node) and not self.host_network
                and self.phase not in ("Succeeded", "Failed"))

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodInfo:
        meta = body.get("metadata", {})
        spec = body.get("spec", {})
        status = body.get("status", {})
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or ()
        )
        cids = tuple(
            cs["containerID"]
            for cs in status.get("containerStatuses") or ()
            if cs.get("containerID")
        )
        ports: dict[str, int] = {}
        for c in spec.get("containers") or ():
            for p in c.get("ports") or ():
                if p.get("name") and p.get("containerPort"):
                    ports[p["name"]] = int(p["containerPort"])
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            labels=dict(meta.get("labels") or {}),
            node=spec.get("nodeName"),
            ip=status.get("podIP"),
            phase=status.get("phase", "Pending"),
            ready=ready,
            deleting=meta.get("deletionTimestamp"),
            container_ids=cids,
            ports=ports,
            host_network=bool(spec.get("hostNetwork")),
            content_delta=_content_delta((meta.get("annotations") or {}).get(CONTENT_DELTA)),
        )


def _content_delta(text: str | None) -> tuple[int, int] | None:
    try:
        l2r, r2l = (int(x) for x in (text or "").split(","))
    except ValueError:
        return None
    return l2r, r2l


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]
    selector: Mapping[str, str] | None
    ports: tuple[ServicePort, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ServiceInfo:
        meta = body.get("metadata", {})
        spec = body.get("spec", {})
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        ips = [ip for ip in ips if ip and ip != "None"]
        ports = tuple(
            ServicePort(
                port=int(p["port"]),
                target_port=p.get("targetPort", p["port"]),
                protocol=p.get("protocol", "TCP"),
                name=p.get("name", ""),
            )
            for p in spec.get("ports") or ()
        )
        selector = spec.get("selector")
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            cluster_ips=tuple(ips),
            selector=dict(selector) if selector else None,
            ports=ports,
        )


@dataclass(frozen=True)
class NodeInfo:
    name: str
    uid: str
    unschedulable: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeInfo:
        meta = body.get("metadata", {})
        return cls(
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            unschedulable=bool(body.get("spec", {}).get("unschedulable")),
        )


@dataclass(frozen=True)
class ChainInfo:
    """A ServiceChain: spec plus the operator-owned part of its status."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ChainInfo:
        meta = body.get("metadata", {})
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            spec=_plain(body.get("spec") or {}),
            status=_plain(body.get("status") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclass(frozen=True)
class PlanInfo:
    """A DyscoNodePlan as last seen: its spec and the agent's status."""

    name: str
    resource_version: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @property
    def revision(self) -> int:
        return int(self.spec.get("revision") or 0)

    @property
    def observed_revision(self) -> int | None:
        v = self.status.get("observedRevision")
        return None if v is None else int(v)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PlanInfo:
        meta = body.get("metadata", {})
        return cls(
            name=meta.get("name", ""),
            resource_version=str(meta.get("resourceVersion", "")),
            spec=_plain(body.get("spec") or {}),
            status=_plain(body.get("status") or {}),
        )


def _plain(obj: Any) -> Any:
    """Deep-copy kopf's read-only body views into plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
