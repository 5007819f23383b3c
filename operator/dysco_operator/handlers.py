"""Kopf handlers: indexes feed the planner, every change triggers a reconciliation pass.

The handlers are deliberately tiny; the work is in ``planner`` (pure) and ``syncer`` (I/O).
"""

from __future__ import annotations

from typing import Any, cast

import kopf

from .kube import Kube
from .model import (
    CHAINS,
    GROUP,
    PLANS,
    VERSION,
    ChainInfo,
    NodeInfo,
    PlanInfo,
    PodInfo,
    ServiceInfo,
)
from .syncer import PlanSyncer, Snapshot


def post_event(chain: ChainInfo, type_: str, reason: str, message: str) -> None:
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceChain",
           "metadata": {"name": chain.name, "namespace": chain.namespace, "uid": chain.uid}}
    kopf.event(cast(kopf.Body, ref), type=type_, reason=reason, message=message[:1024])


@kopf.on.startup()
async def start(memo: kopf.Memo, **_: Any) -> None:
    memo.syncer = PlanSyncer(Kube(), events=post_event)
    memo.seen = {}  # shared by the per-object memos (shallow copies of this one)


# ---------------------------------------------------------------- indexes (no API calls per event)

@kopf.index("", "v1", "pods")
def pods_idx(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, PodInfo]:
    return {namespace or "": PodInfo.from_body(body)}


@kopf.index("", "v1", "services")
def services_idx(namespace: str | None, name: str, body: kopf.Body, **_: Any
                 ) -> dict[tuple[str, str], ServiceInfo]:
    return {(namespace or "", name): ServiceInfo.from_body(body)}


@kopf.index("", "v1", "nodes")
def nodes_idx(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    return {name: NodeInfo.from_body(body)}


@kopf.index(GROUP, VERSION, CHAINS)
def chains_idx(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[str, ChainInfo]:
    return {f"{namespace}/{name}": ChainInfo.from_body(body)}


@kopf.index(GROUP, VERSION, PLANS)
def plans_idx(name: str, body: kopf.Body, **_: Any) -> dict[str, PlanInfo]:
    return {name: PlanInfo.from_body(body)}


def snapshot(kw: dict[str, Any]) -> Snapshot:
    return Snapshot.from_indexes(kw["chains_idx"], kw["pods_idx"], kw["services_idx"],
                                 kw["nodes_idx"], kw["plans_idx"])


# ---------------------------------------------------------------- triggers

@kopf.on.event(GROUP, VERSION, CHAINS)
@kopf.on.event(GROUP, VERSION, PLANS)
def changed(memo: kopf.Memo, **_: Any) -> None:
    memo.syncer.trigger()


def _trigger_if_view_changed(memo: kopf.Memo, kind: str, type: str | None, body: kopf.Body,
                             view: object) -> None:
    """Pods, Services and Nodes change often in ways the planner ignores (heartbeats,
    unrelated status fields): trigger a pass only when the planner's view of them changed."""
    seen: dict[tuple[str, str], object] = memo.seen
    key = (kind, str(body.get("metadata", {}).get("uid", "")))
    if type == "DELETED":
        seen.pop(key, None)
    elif seen.get(key) == view:
        return
    else:
        seen[key] = view
    memo.syncer.trigger()


@kopf.on.event("", "v1", "pods")
def pod_changed(memo: kopf.Memo, type: str | None, body: kopf.Body, **_: Any) -> None:
    _trigger_if_view_changed(memo, "pod", type, body, PodInfo.from_body(body))


@kopf.on.event("", "v1", "services")
def service_changed(memo: kopf.Memo, type: str | None, body: kopf.Body, **_: Any) -> None:
    _trigger_if_view_changed(memo, "service", type, body, ServiceInfo.from_body(body))


@kopf.on.event("", "v1", "nodes")
def node_changed(memo: kopf.Memo, type: str | None, body: kopf.Body, **_: Any) -> None:
    _trigger_if_view_changed(memo, "node", type, body, NodeInfo.from_body(body))


# ---------------------------------------------------------------- reconciliation

@kopf.daemon(GROUP, VERSION, CHAINS, id="reconciler", cancellation_timeout=5.0)
async def reconciler(stopped: kopf.DaemonStopped, memo: kopf.Memo, **kw: Any) -> None:
    """Every chain runs this; the passes are shared (one at a time, all chains at once)."""
    await memo.syncer.serve(stopped, lambda: snapshot(kw))


@kopf.on.delete(GROUP, VERSION, CHAINS, id="release")
async def release(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, runtime: Any,
                  **kw: Any) -> None:
    """Finalizer: take the chain out of every plan and wait for the agents to apply it."""
    syncer: PlanSyncer = memo.syncer
    chain = ChainInfo.from_body(body)
    syncer.trigger()
    await syncer.run_pass(lambda: snapshot(kw))
    plans = {k: v for k, v in snapshot(kw).plans.items()}
    pending = syncer.nodes_pending_release(chain.key, plans)
    action = spec.get("onDelete", "bypass")
    timeout = int(spec.get("drainTimeoutSeconds", 30))
    if pending and runtime.total_seconds() < timeout:
        raise kopf.TemporaryError(
            f"waiting for the agents on {', '.join(pending)} to {action} the chain's sessions",
            delay=1)
    if pending:
        post_event(chain, "Warning", "ReleaseTimeout",
                   f"agents on {', '.join(pending)} did not confirm within {timeout}s;"
                   " releasing anyway")
    else:
        post_event(chain, "Normal", "Released",
                   f"removed from all node plans; live sessions: {action}")
    syncer.forget(chain)
