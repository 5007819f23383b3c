"""Pure planning: ServiceChains + pods + Services -> one DyscoNodePlan spec per node.

No I/O, no clock (``now`` is a parameter), no kopf: every function here is a plain function
of values, unit-tested in ``tests/unit/test_planner.py``. The kopf handlers feed it from
their indexes and write what it returns.

Vocabulary
- *participant*: a pod on some node that the node agent must attach to (enter its netns):
  the chain's source pods, its middlebox instances (ready or draining) and its destination pods.
- *instance*: a ready middlebox pod of a hop; new and moved sessions may use it.
- *draining*: a middlebox pod that served the chain and is going away (terminating, no
  longer ready, or on a cordoned node). Agents move live sessions off it before the deadline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import ChainInfo, NodeInfo, PodInfo, ServiceInfo

# --------------------------------------------------------------------------- selectors


def selector_errors(selector: Mapping[str, Any] | None, where: str) -> list[str]:
    """What the API server's schema cannot check about a label selector."""
    errors: list[str] = []
    if not selector:
        return [f"{where}: must not be empty"]
    for i, expr in enumerate(selector.get("matchExpressions") or ()):
        op, values = expr.get("operator"), expr.get("values") or []
        if op in ("In", "NotIn") and not values:
            errors.append(f"{where}.matchExpressions[{i}]: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            errors.append(f"{where}.matchExpressions[{i}]: operator {op} takes no values")
    return errors


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty or missing selector matches nothing here."""
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# --------------------------------------------------------------------------- chain spec


def validate_chain(spec: Mapping[str, Any]) -> list[str]:
    """Semantic checks on top of the CRD schema. Empty list = valid."""
    errors = selector_errors((spec.get("source") or {}).get("selector"), "spec.source.selector")
    dest = spec.get("destination") or {}
    if bool(dest.get("service")) == bool(dest.get("selector")):
        errors.append("spec.destination: exactly one of service or selector is required")
    if dest.get("selector") is not None:
        errors += selector_errors(dest.get("selector"), "spec.destination.selector")
    names: set[str] = set()
    for i, hop in enumerate(spec.get("hops") or ()):
        if hop.get("name") in names:
            errors.append(f"spec.hops[{i}].name: duplicate hop name {hop.get('name')!r}")
        names.add(hop.get("name", ""))
        errors += selector_errors(hop.get("selector"), f"spec.hops[{i}].selector")
    if not spec.get("hops"):
        errors.append("spec.hops: at least one hop is required")
    return errors


def hop_defaults(hop: Mapping[str, Any]) -> dict[str, Any]:
    """A hop with the CRD defaults applied (the API server applies them too)."""
    return {
        "name": hop["name"],
        "selector": hop.get("selector") or {},
        "kind": hop.get("kind", "transparent"),
        "instanceChoice": hop.get("instanceChoice", "roundRobin"),
        "optional": bool(hop.get("optional", False)),
    }


def hops_digest(spec: Mapping[str, Any]) -> str:
    """Digest of what a chain revision stands for: the ordered hops.

    Changing a hop (add, remove, reorder, selector, kind, instance choice, optional) changes
    it; changing ports, updatePolicy, drainTimeoutSeconds or onDelete does not.
    """
    hops = [hop_defaults(h) for h in spec.get("hops") or ()]
    canon = json.dumps(hops, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def next_revision(chain: ChainInfo) -> tuple[int, str, bool]:
    """(revision, digest, bumped) for a chain: bump when the hops digest changed."""
    digest = hops_digest(chain.spec)
    current = int(chain.status.get("revision") or 0)
    if chain.status.get("hopsDigest") == digest and current > 0:
        return current, digest, False
    return current + 1, digest, True


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Draining:
    pod: PodInfo
    reason: str  # Terminating | NotReady | NodeUnschedulable


@dataclass(frozen=True)
class HopResolution:
    name: str
    kind: str
    instance_choice: str
    optional: bool
    instances: tuple[PodInfo, ...]
    draining: tuple[Draining, ...] = ()

    @property
    def instance_ips(self) -> list[str]:
        return [p.ip for p in self.instances if p.ip]


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class ChainResolution:
    chain: ChainInfo
    revision: int
    errors: tuple[str, ...] = ()
    """Spec errors: the chain is not Accepted and gets no plans."""
    problems: tuple[Problem, ...] = ()
    """Unresolved references (ResolvedRefs=False), the chain is still planned."""
    sources: tuple[PodInfo, ...] = ()
    destinations: tuple[tuple[str, tuple[int, ...]], ...] = ()
    destination_pods: tuple[PodInfo, ...] = ()
    hops: tuple[HopResolution, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.errors

    @property
    def key(self) -> str:
        return self.chain.key

    def participants(self) -> list[tuple[PodInfo, dict[str, str]]]:
        """Every (pod, role) of this chain; a pod may appear with several roles."""
        out: list[tuple[PodInfo, dict[str, str]]] = []
        for p in self.sources:
            out.append((p, {"chain": self.key, "role": "source"}))
        for hop in self.hops:
            pods = list(hop.instances) + [d.pod for d in hop.draining]
            for p in pods:
                out.append((p, {"chain": self.key, "role": "middlebox", "hop": hop.name}))
        for p in self.destination_pods:
            out.append((p, {"chain": self.key, "role": "destination"}))
        return out


def _serves(pod: PodInfo, nodes: Mapping[str, NodeInfo]) -> str | None:
    """None when the pod can take new sessions, else why it cannot (draining reason)."""
    if pod.deleting:
        return "Terminating"
    if not pod.ready:
        return "NotReady"
    node = nodes.get(pod.node or "")
    if node is not None and node.unschedulable:
        return "NodeUnschedulable"
    return None


def _by_name(pods: Iterable[PodInfo]) -> tuple[PodInfo, ...]:
    return tuple(sorted(pods, key=lambda p: (p.name, p.uid)))


def resolve_chain(
    chain: ChainInfo,
    revision: int,
    pods: Iterable[PodInfo],
    services: Mapping[tuple[str, str], ServiceInfo],
    nodes: Mapping[str, NodeInfo],
    previously_used: frozenset[str] = frozenset(),
) -> ChainResolution:
    """Resolve one chain against the pods of its namespace.

    ``previously_used`` holds the IPs that were instances or draining in the current plans:
    only such pods can carry live sessions, so only they are drained when they go away
    (a pod that never became ready has nothing to drain).
    """
    errors = validate_chain(chain.spec)
    if errors:
        return ChainResolution(chain=chain, revision=revision, errors=tuple(errors))
    ns_pods = [p for p in pods if p.namespace == chain.namespace and p.alive]
    spec = chain.spec
    problems: list[Problem] = []

    sources = _by_name(
        p for p in ns_pods if selector_matches(spec["source"]["selector"], p.labels)
    )

    # Destination: IPs + ports that the source pods' sessions are addressed to.
    dest = spec["destination"]
    wanted_ports = [int(p["port"]) for p in dest.get("ports") or ()]
    destinations: list[tuple[str, tuple[int, ...]]] = []
    dest_pods: list[PodInfo] = []
    if dest.get("service"):
        svc = services.get((chain.namespace, dest["service"]["name"]))
        if svc is None:
            svc_name = f"{chain.namespace}/{dest['service']['name']}"
            problems.append(Problem("ServiceNotFound", f"Service {svc_name} not found"))
        elif svc.selector is None:
            problems.append(Problem("ServiceWithoutSelector",
                                    f"Service {svc.namespace}/{svc.name} has no selector"))
        else:
            svc_ports = [sp for sp in svc.ports if sp.port in wanted_ports]
            missing = sorted(set(wanted_ports) - {sp.port for sp in svc_ports})
            if missing:
                problems.append(Problem("PortNotFound",
                                        f"Service {svc.name} has no port {missing}"))
            for ip in svc.cluster_ips:
                if svc_ports:
                    destinations.append((ip, tuple(sorted({sp.port for sp in svc_ports}))))
            for p in _by_name(ns_pods):
                if not selector_matches({"matchLabels": svc.selector}, p.labels):
                    continue
                if not p.ready or p.deleting or not p.ip:
                    continue
                tports: set[int] = set()
                for sp in svc_ports:
                    tp = sp.target_port
                    if isinstance(tp, str) and not tp.isdigit():
                        if tp in p.ports:
                            tports.add(p.ports[tp])
                    else:
                        tports.add(int(tp))
                if tports:
                    dest_pods.append(p)
                    destinations.append((p.ip, tuple(sorted(tports))))
    else:
        for p in _by_name(ns_pods):
            if selector_matches(dest["selector"], p.labels) and p.ready and not p.deleting:
                dest_pods.append(p)
                if p.ip:
                    destinations.append((p.ip, tuple(sorted(set(wanted_ports)))))
    if not dest_pods and not any(pr.reason == "ServiceNotFound" for pr in problems):
        problems.append(Problem("NoDestinationPods", "no ready destination pod"))

    hops: list[HopResolution] = []
    for raw in spec["hops"]:
        hop = hop_defaults(raw)
        instances: list[PodInfo] = []
        draining: list[Draining] = []
        for p in _by_name(ns_pods):
            if not selector_matches(hop["selector"], p.labels):
                continue
            why = _serves(p, nodes)
            if why is None:
                instances.append(p)
            elif p.ip in previously_used:
                draining.append(Draining(pod=p, reason=why))
        hops.append(HopResolution(
            name=hop["name"], kind=hop["kind"], instance_choice=hop["instanceChoice"],
            optional=hop["optional"], instances=tuple(instances), draining=tuple(draining),
        ))
    empty = [h.name for h in hops if not h.instances and not h.optional]
    if empty:
        problems.append(Problem("NoReadyInstances",
                                f"no ready instance for hop(s) {', '.join(empty)}"))

    return ChainResolution(
        chain=chain, revision=revision, problems=tuple(problems), sources=sources,
        destinations=tuple(destinations), destination_pods=tuple(dest_pods), hops=tuple(hops),
    )


# --------------------------------------------------------------------------- plans


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def previous_draining(plans: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """ip -> deadline of every draining entry in the current plan specs (kept stable)."""
    out: dict[str, str] = {}
    for spec in plans:
        for d in spec.get("draining") or ():
            if d["ip"] not in out or d["deadline"] < out[d["ip"]]:
                out[d["ip"]] = d["deadline"]
    return out


def previously_used_ips(plans: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """IPs that were hop instances or draining in the current plan specs."""
    ips: set[str] = set()
    for spec in plans:
        for chain in spec.get("chains") or ():
            for hop in chain.get("hops") or ():
                ips.update(hop.get("instances") or ())
        ips.update(d["ip"] for d in spec.get("draining") or ())
    return frozenset(ips)


@dataclass
class _NodeAcc:
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    draining: dict[str, dict[str, Any]] = field(default_factory=dict)


def _chain_entry(res: ChainResolution) -> dict[str, Any]:
    spec = res.chain.spec
    return {
        "name": res.key,
        "revision": res.revision,
        "updatePolicy": spec.get("updatePolicy", "live"),
        "onDelete": spec.get("onDelete", "bypass"),
        "drainTimeoutSeconds": int(spec.get("drainTimeoutSeconds", 30)),
        "hops": [
            {"name": h.name, "kind": h.kind, "instanceChoice": h.instance_choice,
             "optional": h.optional, "instances": h.instance_ips}
            for h in res.hops
        ],
    }


def build_plans(
    resolutions: Sequence[ChainResolution],
    now: dt.datetime,
    old_deadlines: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-node plan content (spec without ``revision``/``nodeName``) for all chains.

    Only accepted chains are planned. A node gets a chain entry when it hosts at least one
    participant of the chain; the chain's draining instances go to the same nodes. Output
    is deterministic (sorted), so comparing it with the stored spec detects real changes.
    """
    old_deadlines = old_deadlines or {}
    nodes: dict[str, _NodeAcc] = {}
    for res in resolutions:
        if not res.accepted:
            continue
        entry = _chain_entry(res)
        drains = [(h, d) for h in res.hops for d in h.draining]
        timeout = dt.timedelta(seconds=int(res.chain.spec.get("drainTimeoutSeconds", 30)))
        for pod, role in res.participants():
            assert pod.node and pod.ip
            acc = nodes.setdefault(pod.node, _NodeAcc())
            acc.chains[res.key] = entry
            p = acc.pods.setdefault(pod.uid, {
                "namespace": pod.namespace, "name": pod.name, "uid": pod.uid, "ip": pod.ip,
                "containerIDs": list(pod.container_ids), "roles": [], "policies": [],
            })
            if pod.content_delta is not None:
                p["contentDelta"] = {"leftToRight": pod.content_delta[0],
                                     "rightToLeft": pod.content_delta[1]}
            if role not in p["roles"]:
                p["roles"].append(role)
            if role["role"] == "source" and res.destinations and not any(
                    x["chain"] == res.key for x in p["policies"]):
                p["policies"].append({
                    "chain": res.key, "revision": res.revision,
                    "match": {"destinations": [
                        {"ip": ip, "ports": list(ports)} for ip, ports in res.destinations]},
                })
        for node in {p.node for p, _ in res.participants() if p.node}:
            acc = nodes[node]
            for _hop, d in drains:
                assert d.pod.ip
                deadline = now + timeout
                if d.pod.deleting:
                    deadline = min(deadline, parse_ts(d.pod.deleting))
                ts = min(_ts(deadline), old_deadlines.get(d.pod.ip, "9999"))
                cur = acc.draining.get(d.pod.ip)
                if cur is None:
                    cur = acc.draining[d.pod.ip] = {
                        "ip": d.pod.ip, "deadline": ts, "pod": d.pod.key,
                        "reason": d.reason, "chains": [],
                    }
                cur["deadline"] = min(cur["deadline"], ts)
                if res.key not in cur["chains"]:
                    cur["chains"].append(res.key)
    out: dict[str, dict[str, Any]] = {}
    for node, acc in nodes.items():
        pods = sorted(acc.pods.values(), key=lambda p: (p["namespace"], p["name"], p["uid"]))
        for p in pods:
            p["roles"].sort(key=lambda r: (r["chain"], r["role"], r.get("hop", "")))
            p["policies"].sort(key=lambda x: x["chain"])
        drains_out = sorted(acc.draining.values(), key=lambda d: d["ip"])
        for entry in drains_out:
            entry["chains"].sort()
        out[node] = {
            "chains": [acc.chains[k] for k in sorted(acc.chains)],
            "pods": pods,
            "draining": drains_out,
        }
    return out


EMPTY_CONTENT: dict[str, Any] = {"chains": [], "pods": [], "draining": []}


def plan_content(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable part of a stored plan spec (no revision, defaults filled)."""
    return {
        "chains": list(spec.get("chains") or []),
        "pods": list(spec.get("pods") or []),
        "draining": list(spec.get("draining") or []),
    }


def next_plan_spec(
    node: str, content: Mapping[str, Any], current: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The spec to write for ``node``, or None when the stored one is already up to date.

    The plan revision is bumped on every change, so an agent's ``observedRevision`` says
    exactly which content it applied.
    """
    if current is not None and _normalise(plan_content(current)) == _normalise(content):
        return None
    revision = int((current or {}).get("revision") or 0) + 1
    return {"nodeName": node, "revision": revision, **{k: content[k] for k in EMPTY_CONTENT}}


def _normalise(content: Mapping[str, Any]) -> str:
    # Server-side defaulting may add fields (e.g. hop kind); compare with defaults applied.
    def fill(c: Mapping[str, Any]) -> dict[str, Any]:
        c = dict(c)
        c.setdefault("updatePolicy", "live")
        c.setdefault("onDelete", "bypass")
        c.setdefault("drainTimeoutSeconds", 30)
        c["hops"] = [
            {"kind": "transparent", "instanceChoice": "roundRobin", "optional": False, **h}
            for h in c.get("hops") or ()
        ]
        return c

    norm = {
        "chains": [fill(c) for c in content.get("chains") or ()],
        "pods": [
            {"containerIDs": [], "roles": [], "policies": [], **p}
            for p in content.get("pods") or ()
        ],
        "draining": list(content.get("draining") or ()),
    }
    return json.dumps(norm, sort_keys=True)
