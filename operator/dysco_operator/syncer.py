"""One reconciliation pass: indexes -> planner -> DyscoNodePlans -> ServiceChain status.

All chains are planned together because a node's plan aggregates every chain. Passes are
triggered (debounced) by any change of a chain, pod, Service, node or plan, and run one at
a time. Writes are optimistic: they carry the resourceVersion they were computed from; a
409 (stale read, e.g. an index that has not seen our last write yet) is resolved by
re-reading that object and trying again; nothing is overwritten blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Gauge

from . import metrics, planner
from .kube import Conflict, Kube, NotFound
from .model import ChainInfo, NodeInfo, PlanInfo, PodInfo, ServiceInfo
from .status import chain_status, merge_patch

log = logging.getLogger("dysco_operator.syncer")

EventSink = Callable[[ChainInfo, str, str, str], None]
"""(chain, type Normal|Warning, reason, message) -> post a Kubernetes Event."""


@dataclass
class Snapshot:
    """Plain copies of the kopf indexes at the start of a pass."""

    chains: dict[str, ChainInfo] = field(default_factory=dict)
    pods: list[PodInfo] = field(default_factory=list)
    services: dict[tuple[str, str], ServiceInfo] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    plans: dict[str, PlanInfo] = field(default_factory=dict)

    @classmethod
    def from_indexes(
        cls,
        chains: Mapping[Any, Iterable[ChainInfo]],
        pods: Mapping[Any, Iterable[PodInfo]],
        services: Mapping[Any, Iterable[ServiceInfo]],
        nodes: Mapping[Any, Iterable[NodeInfo]],
        plans: Mapping[Any, Iterable[PlanInfo]],
    ) -> Snapshot:
        def last(store: Iterable[Any]) -> Any:
            items = list(store)
            return items[-1] if items else None

        snap = cls()
        for k, cs in chains.items():
            if (c := last(cs)) is not None:
                snap.chains[k] = c
        for ps in pods.values():
            snap.pods.extend(ps)
        for k, ss in services.items():
            if (v := last(ss)) is not None:
                snap.services[k] = v
        for k, ns in nodes.items():
            if (n := last(ns)) is not None:
                snap.nodes[k] = n
        for k, pls in plans.items():
            if (p := last(pls)) is not None:
                snap.plans[k] = p
        return snap


@dataclass
class PassResult:
    plans_written: int = 0
    statuses_written: int = 0
    conflicts: int = 0
    desired: dict[str, dict[str, int]] = field(default_factory=dict)
    """chain key -> node -> plan revision carrying the chain's current revision."""


class PlanSyncer:
    def __init__(
        self,
        kube: Kube,
        events: EventSink,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        debounce: float = 0.2,
        resync: float = 30.0,
    ) -> None:
        self.kube = kube
        self.events = events
        self.clock = clock
        self.debounce = debounce
        self.resync = resync
        self.dirty = asyncio.Event()
        self.lock = asyncio.Lock()
        # Our own latest writes, until the (possibly lagging) indexes show them.
        self._plan_specs: dict[str, dict[str, Any]] = {}
        self._chain_status: dict[str, dict[str, Any]] = {}
        self._chain_nodes: dict[str, set[str]] = {}
        self.last: PassResult = PassResult()
        self.dirty.set()

    def trigger(self) -> None:
        self.dirty.set()

    async def serve(self, stopped: Any, snapshot: Callable[[], Snapshot]) -> None:
        """Run passes whenever triggered, until ``stopped`` (a kopf DaemonStopped flag)."""
        idle = 0.0
        while not stopped:
            try:
                await asyncio.wait_for(self.dirty.wait(), timeout=1.0)
            except TimeoutError:
                idle += 1.0
                if idle < self.resync:
                    continue
                # Level-triggered safety net: re-check periodically even without events.
                self.dirty.set()
            idle = 0.0
            if stopped:
                return
            await asyncio.sleep(self.debounce)
            await self.run_pass(snapshot)

    async def run_pass(self, snapshot: Callable[[], Snapshot]) -> PassResult:
        async with self.lock:
            if not self.dirty.is_set():
                return self.last
            self.dirty.clear()
            t0 = time.monotonic()
            try:
                result = await self._pass(snapshot())
            except Exception:
                metrics.RECONCILIATIONS.labels("error").inc()
                log.exception("reconciliation failed; retrying")
                self.dirty.set()
                await asyncio.sleep(1.0)
                return self.last
            finally:
                metrics.RECONCILE_SECONDS.observe(time.monotonic() - t0)
            metrics.RECONCILIATIONS.labels("conflict" if result.conflicts else "success").inc()
            if result.conflicts:
                self.dirty.set()
            self.last = result
            return result

    # ------------------------------------------------------------------ the pass

    def _effective_chain(self, c: ChainInfo) -> ChainInfo:
        """The chain with our latest status write, if its index entry lags behind."""
        mine = self._chain_status.get(c.uid)
        if mine is None:
            return c
        if all(c.status.get(k) == v for k, v in mine.items()):
            del self._chain_status[c.uid]
            return c
        return ChainInfo(c.namespace, c.name, c.uid, c.generation, c.resource_version,
                         c.spec, {**c.status, **mine}, c.deleting)

    def _effective_plan_spec(self, p: PlanInfo) -> dict[str, Any]:
        mine = self._plan_specs.get(p.name)
        if mine is None:
            return dict(p.spec)
        if int(p.spec.get("revision") or 0) >= int(mine["revision"]):
            del self._plan_specs[p.name]
            return dict(p.spec)
        return mine

    async def _pass(self, snap: Snapshot) -> PassResult:
        now = self.clock()
        result = PassResult()
        current_specs = {n: self._effective_plan_spec(p) for n, p in snap.plans.items()}
        used = planner.previously_used_ips(current_specs.values())
        deadlines = planner.previous_draining(current_specs.values())

        chains = [self._effective_chain(c) for c in snap.chains.values() if not c.deleting]
        resolutions: list[planner.ChainResolution] = []
        digests: dict[str, tuple[str, bool]] = {}
        for c in sorted(chains, key=lambda c: c.key):
            revision, digest, bumped = planner.next_revision(c)
            digests[c.key] = (digest, bumped)
            resolutions.append(planner.resolve_chain(
                c, revision, snap.pods, snap.services, snap.nodes, used))

        # 1. Plans.
        desired = planner.build_plans(resolutions, now, deadlines)
        for node in snap.plans.keys() - desired.keys():
            desired[node] = dict(planner.EMPTY_CONTENT)  # keep the object: agent detaches all
        revisions: dict[str, int] = {}
        for node, content in sorted(desired.items()):
            rev = await self._write_plan(node, content, current_specs.get(node), snap, result)
            if rev is not None:
                revisions[node] = rev
        metrics.PLANNED_NODES.set(sum(1 for c in desired.values() if c["pods"]))
        metrics.DRAINING.set(len({d["ip"] for c in desired.values() for d in c["draining"]}))

        # 2. Chain status (and Events).
        plans_now = dict(snap.plans)
        ready = {"true": 0, "false": 0}
        for res in resolutions:
            nodes_of_chain = {
                node: revisions[node] for node, c in desired.items()
                if node in revisions and any(x["name"] == res.key for x in c["chains"])
            }
            result.desired[res.key] = nodes_of_chain
            self._chain_nodes.setdefault(res.key, set()).update(nodes_of_chain)
            digest, bumped = digests[res.key]
            status = chain_status(res, digest, plans_now, nodes_of_chain, now)
            ready["true" if _is_true(status, "Ready") else "false"] += 1
            self._export(res, status)
            await self._write_status(res, status, bumped, result)
        for k, v in ready.items():
            metrics.CHAINS.labels(k).set(v)
        return result

    async def _write_plan(
        self,
        node: str,
        content: dict[str, Any],
        current: Mapping[str, Any] | None,
        snap: Snapshot,
        result: PassResult,
    ) -> int | None:
        """Create/replace one plan; returns the revision that carries ``content``."""
        spec = planner.next_plan_spec(node, content, current)
        if spec is None:
            return int((current or {}).get("revision") or 0)
        owner = None
        if (n := snap.nodes.get(node)) is not None and n.uid:
            owner = {"apiVersion": "v1", "kind": "Node", "name": n.name, "uid": n.uid}
        for _attempt in range(4):
            try:
                if current is None:
                    body = await asyncio.to_thread(self.kube.create_plan, node, spec, owner)
                    metrics.PLAN_WRITES.labels("created").inc()
                else:
                    base = snap.plans.get(node)
                    fresh = {"metadata": {"name": node,
                                          "resourceVersion": base.resource_version if base else ""}}
                    body = await asyncio.to_thread(self.kube.replace_plan_spec, fresh, spec)
                    metrics.PLAN_WRITES.labels("updated").inc()
                self._plan_specs[node] = dict(body["spec"])
                result.plans_written += 1
                return int(spec["revision"])
            except Conflict:
                # Stale read (or the object appeared/changed meanwhile): re-read and re-decide.
                metrics.PLAN_WRITES.labels("conflict").inc()
                result.conflicts += 1
                got = await asyncio.to_thread(self.kube.get_plan, node)
                if got is None:
                    snap.plans.pop(node, None)
                    current = None
                else:
                    snap.plans[node] = PlanInfo.from_body(got)
                    current = snap.plans[node].spec
                spec = planner.next_plan_spec(node, content, current)
                if spec is None:
                    self._plan_specs.pop(node, None)
                    return int((current or {}).get("revision") or 0)
        metrics.PLAN_WRITES.labels("error").inc()
        log.warning("plan %s: giving up after repeated conflicts", node)
        return None

    async def _write_status(
        self,
        res: planner.ChainResolution,
        status: dict[str, Any],
        bumped: bool,
        result: PassResult,
    ) -> None:
        chain = res.chain
        patch = merge_patch(chain.status, status)
        if not patch:
            return
        rv = chain.resource_version
        for _attempt in range(3):
            try:
                body = await asyncio.to_thread(
                    self.kube.patch_chain_status, chain.namespace, chain.name, patch, rv)
            except Conflict:
                metrics.STATUS_WRITES.labels("conflict").inc()
                result.conflicts += 1
                try:
                    fresh = await asyncio.to_thread(self.kube.get_chain, chain.namespace,
                                                    chain.name)
                except NotFound:
                    return
                fresh_status = fresh.get("status") or {}
                fresh_gen = int(fresh["metadata"].get("generation") or 0)
                if fresh_gen != chain.generation or (
                    fresh_status.get("revision") not in (None, status["revision"],
                                                         status["revision"] - 1)):
                    # The spec moved on (or someone else stamped): the next pass handles it.
                    return
                if bumped and fresh_status.get("hopsDigest") == status["hopsDigest"]:
                    bumped = False  # our earlier write already stamped this revision
                patch = merge_patch(fresh_status, status)
                rv = fresh["metadata"]["resourceVersion"]
                if not patch:
                    return
                continue
            except NotFound:
                return
            metrics.STATUS_WRITES.labels("updated").inc()
            result.statuses_written += 1
            self._chain_status[chain.uid] = {
                k: body.get("status", {}).get(k) for k in status
            }
            self._post_events(res, chain.status, status, bumped)
            return

    def _post_events(
        self, res: planner.ChainResolution, old: Mapping[str, Any], new: Mapping[str, Any],
        bumped: bool,
    ) -> None:
        chain = res.chain
        if bumped:
            metrics.REVISIONS.inc()
            prev = old.get("revision")
            how = ("live sessions will be reconfigured"
                   if chain.spec.get("updatePolicy", "live") == "live"
                   else "only new sessions use it")
            msg = (f"revision {new['revision']} (hops {new.get('hopsSummary', '')}); {how}"
                   if prev else f"revision {new['revision']} (hops {new.get('hopsSummary', '')})")
            self.events(chain, "Normal", "RevisionChanged", msg)
        for t in ("Accepted", "ResolvedRefs", "Programmed", "Degraded"):
            o, n = _cond(old, t), _cond(new, t)
            if n is None or (o is not None and o["status"] == n["status"]
                             and o["reason"] == n["reason"]):
                continue
            bad = (n["status"] == "True") == (t == "Degraded")
            self.events(chain, "Warning" if bad else "Normal", n["reason"], f"{t}: {n['message']}")
        lr_old, lr_new = old.get("lastReconfiguration") or {}, new.get("lastReconfiguration") or {}
        if lr_new.get("finished") and not (lr_old.get("finished")
                                           and lr_old.get("revision") == lr_new.get("revision")):
            self.events(chain, "Normal", "ReconfigurationFinished",
                        f"revision {lr_new['revision']}: {lr_new.get('moved', 0)} session(s) moved,"
                        f" {lr_new.get('failed', 0)} failed")

    def _export(self, res: planner.ChainResolution, status: Mapping[str, Any]) -> None:
        export_chain(res, status)

    def forget(self, chain: ChainInfo) -> None:
        """Drop per-chain metric series and caches of a deleted chain."""
        self._chain_status.pop(chain.uid, None)
        self._chain_nodes.pop(chain.key, None)
        with contextlib.suppress(KeyError):
            metrics.CHAIN_REVISION.remove(chain.key)
        for g2 in (metrics.CHAIN_SESSIONS, metrics.HOP_INSTANCES):
            _drop_series(g2, chain.key, set())

    def nodes_pending_release(self, key: str, plans: Mapping[str, PlanInfo]) -> list[str]:
        """Nodes whose plan still has chain ``key``, or whose agent has not applied its removal."""
        pending = []
        had = self._chain_nodes.get(key, set())
        for name, p in plans.items():
            spec = self._effective_plan_spec(p)
            has_chain = any(c.get("name") == key for c in spec.get("chains") or ())
            acked = (p.observed_revision or 0) >= int(spec.get("revision") or 0)
            if has_chain or (name in had and not acked):
                pending.append(name)
        return sorted(pending)


def _cond(status: Mapping[str, Any], t: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or ():
        if c.get("type") == t:
            return c  # type: ignore[no-any-return]
    return None


def _is_true(status: Mapping[str, Any], t: str) -> bool:
    c = _cond(status, t)
    return c is not None and c.get("status") == "True"


def export_chain(res: planner.ChainResolution, status: Mapping[str, Any]) -> None:
    """The chain's gauges as its status says now. Series of revisions without sessions
    and of hops no longer in the chain go: a gauge keeps its last value otherwise, and
    `dysco_chain_sessions` went on counting sessions that had ended."""
    metrics.CHAIN_REVISION.labels(res.key).set(res.revision)
    by_rev = status.get("sessionsByRevision") or {}
    for rev, n in by_rev.items():
        metrics.CHAIN_SESSIONS.labels(res.key, rev).set(n)
    _drop_series(metrics.CHAIN_SESSIONS, res.key, {(res.key, str(r)) for r in by_rev})
    for h in res.hops:
        metrics.HOP_INSTANCES.labels(res.key, h.name, "ready").set(len(h.instances))
        metrics.HOP_INSTANCES.labels(res.key, h.name, "draining").set(len(h.draining))
    _drop_series(metrics.HOP_INSTANCES, res.key, {(res.key, h.name, state) for h in res.hops
                                                  for state in ("ready", "draining")})


def _drop_series(gauge: Gauge, chain: str, keep: set[tuple[str, ...]]) -> None:
    """Remove `gauge`'s series of `chain` (first label) that are not in `keep`."""
    for labels in list(gauge._metrics):  # prometheus_client has no prefix removal
        if labels and labels[0] == chain and labels not in keep:
            gauge.remove(*labels)
