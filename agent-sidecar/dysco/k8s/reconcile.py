"""Apply a DyscoNodePlan spec to the data plane (diff against what was applied before).

No API calls here: `NodeAgent` (agent.py) feeds specs in and writes the status out, so this
is unit-testable with `RecordingDataPlane` and `StaticResolver`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .interface import Chain, DataPlane, Hop, Policy
from .netns import NetnsResolver, PodRef

log = logging.getLogger("dysco.k8s.reconcile")


def parse_chains(spec: Mapping[str, Any]) -> dict[str, Chain]:
    out: dict[str, Chain] = {}
    for c in spec.get("chains") or ():
        out[c["name"]] = Chain(
            name=c["name"],
            revision=int(c["revision"]),
            update_policy=c.get("updatePolicy", "live"),
            on_delete=c.get("onDelete", "bypass"),
            drain_timeout_seconds=int(c.get("drainTimeoutSeconds", 30)),
            hops=tuple(
                Hop(name=h["name"], instances=tuple(h.get("instances") or ()),
                    kind=h.get("kind", "transparent"),
                    instance_choice=h.get("instanceChoice", "roundRobin"),
                    optional=bool(h.get("optional", False)))
                for h in c.get("hops") or ()
            ),
        )
    return out


def parse_policies(pod: Mapping[str, Any], chains: Mapping[str, Chain]) -> tuple[Policy, ...]:
    out = []
    for p in pod.get("policies") or ():
        chain = chains.get(p["chain"])
        if chain is None:
            continue
        dests = tuple(
            (d["ip"], tuple(int(x) for x in d.get("ports") or ()))
            for d in (p.get("match") or {}).get("destinations") or ()
        )
        out.append(Policy(chain=chain, destinations=dests))
    return tuple(sorted(out, key=lambda x: x.chain.name))


def _epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass
class Applied:
    """What the data plane currently has, as far as this agent knows."""

    pods: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # key -> uid, ip, netns
    policies: dict[str, tuple[Policy, ...]] = field(default_factory=dict)
    chains: tuple[Chain, ...] = ()
    draining: dict[str, float] = field(default_factory=dict)
    content_deltas: dict[str, tuple[int, int]] = field(default_factory=dict)


class Reconciler:
    def __init__(self, dataplane: DataPlane, resolver: NetnsResolver) -> None:
        self.dataplane = dataplane
        self.resolver = resolver
        self.applied = Applied()
        self.failures: dict[str, str] = {}

    def apply(self, spec: Mapping[str, Any] | None) -> dict[str, str]:
        """Make the data plane match ``spec`` (None = no plan: detach everything).

        Returns the failures (pod key -> message); failed pods are retried on the next call.
        """
        spec = spec or {}
        failures: dict[str, str] = {}
        chains = parse_chains(spec)
        chain_list = tuple(chains[k] for k in sorted(chains))
        if chain_list != self.applied.chains:
            self.dataplane.set_chains(chain_list)
            self.applied.chains = chain_list

        desired: dict[str, tuple[PodRef, tuple[Policy, ...]]] = {}
        deltas: dict[str, tuple[int, int]] = {}
        for p in spec.get("pods") or ():
            ref = PodRef(namespace=p["namespace"], name=p["name"], uid=p["uid"], ip=p["ip"],
                         container_ids=tuple(p.get("containerIDs") or ()))
            desired[ref.key] = (ref, parse_policies(p, chains))
            if p.get("contentDelta"):
                d = p["contentDelta"]
                deltas[ref.key] = (int(d["leftToRight"]), int(d["rightToLeft"]))

        # Pods that were replaced (same name, new uid or IP) are detached first.
        for key, (uid, ip, _ns) in list(self.applied.pods.items()):
            want = desired.get(key)
            if want is not None and (want[0].uid, want[0].ip) != (uid, ip):
                self._detach(key)

        # New pods: attach (new instances must exist before sessions move to them).
        for key, (ref, _) in desired.items():
            if key in self.applied.pods:
                continue
            path = self.resolver.resolve(ref)
            if path is None:
                failures[key] = f"network namespace of pod {key} ({ref.ip}) not found"
                continue
            try:
                self.dataplane.attach_pod(key, path, ref.ip)
            except Exception as e:  # the data plane's own errors: report, retry later
                failures[key] = f"attach failed: {e}"
                log.warning("attach %s failed: %s", key, e)
                continue
            self.applied.pods[key] = (ref.uid, ref.ip, path)

        for key, (_ref, policies) in desired.items():
            if key not in self.applied.pods:
                continue
            delta = deltas.get(key, (0, 0))
            if self.applied.content_deltas.get(key, (0, 0)) != delta:
                self.dataplane.set_content_delta(key, *delta)
                self.applied.content_deltas[key] = delta
            if self.applied.policies.get(key, ()) != policies:
                try:
                    self.dataplane.set_policies(key, policies)
                except Exception as e:
                    failures[key] = f"set_policies failed: {e}"
                    continue
                self.applied.policies[key] = policies

        drains = {d["ip"]: _epoch(d["deadline"]) for d in spec.get("draining") or ()}
        for ip, deadline in drains.items():
            if self.applied.draining.get(ip) != deadline:
                self.dataplane.drain_instance(ip, deadline)
                self.applied.draining[ip] = deadline
        for ip in list(self.applied.draining):
            if ip not in drains:
                self.dataplane.cancel_drain(ip)
                del self.applied.draining[ip]

        # Pods no longer in the plan: detach last (their sessions were moved or bypassed).
        for key in list(self.applied.pods):
            if key not in desired:
                self._detach(key)

        self.failures = failures
        return failures

    def _detach(self, key: str) -> None:
        try:
            self.dataplane.detach_pod(key)
        except Exception as e:
            log.warning("detach %s failed: %s", key, e)
        self.applied.pods.pop(key, None)
        self.applied.policies.pop(key, None)
        self.applied.content_deltas.pop(key, None)
