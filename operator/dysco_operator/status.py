"""Pure computation of a ServiceChain's status (conditions, hops, sessions, reconfiguration).

Conditions follow metav1.Condition and the Gateway API habit: every condition carries the
``observedGeneration`` it was computed for, ``lastTransitionTime`` only moves when ``status``
changes. Types: Accepted, ResolvedRefs, Programmed, Degraded and the summary Ready.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from .model import PlanInfo
from .planner import ChainResolution

CONDITION_TYPES = ("Accepted", "ResolvedRefs", "Programmed", "Degraded", "Ready")


def now_ts(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; keeps lastTransitionTime if status is unchanged."""
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(dict(c))
            continue
        found = True
        ltt = c.get("lastTransitionTime") if c.get("status") == status else None
        out.append(_cond(type_, status, reason, message, generation, ltt or now_ts(now)))
    if not found:
        out.append(_cond(type_, status, reason, message, generation, now_ts(now)))
    return out


def _cond(t: str, s: str, r: str, m: str, g: int, ltt: str) -> dict[str, Any]:
    return {"type": t, "status": s, "reason": r, "message": m, "observedGeneration": g,
            "lastTransitionTime": ltt}


def condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in status.get("conditions") or ():
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


def chain_status(
    res: ChainResolution,
    hops_digest: str,
    plans: Mapping[str, PlanInfo],
    desired_revisions: Mapping[str, int],
    now: dt.datetime,
) -> dict[str, Any]:
    """The full operator-owned status of one chain.

    ``plans``: current DyscoNodePlans by node (their agents' reports).
    ``desired_revisions``: node -> plan revision that carries this chain's current revision
    (only the nodes where the chain has participants).
    """
    chain = res.chain
    gen = chain.generation
    old = chain.status
    conds: list[dict[str, Any]] = list(old.get("conditions") or [])

    def setc(t: str, s: str, r: str, m: str) -> None:
        nonlocal conds
        conds = set_condition(conds, t, s, r, m, gen, now)

    # Sessions and reconfiguration reports from every agent.
    by_rev: dict[int, int] = {}
    moved = failed = 0
    failures: list[str] = []
    chain_pods = {p.key for p, _ in res.participants()} if res.accepted else set()
    for plan in plans.values():
        for s in plan.status.get("sessions") or ():
            if s.get("chain") == res.key:
                by_rev[int(s["revision"])] = by_rev.get(int(s["revision"]), 0) + int(s["count"])
        for r in plan.status.get("reconfigurations") or ():
            if r.get("chain") == res.key and int(r.get("revision", -1)) == res.revision:
                moved += int(r.get("done", 0))
                failed += int(r.get("failed", 0))
        for f in plan.status.get("failures") or ():
            if f.get("pod") in chain_pods:
                failures.append(f"{plan.name}: {f['pod']}: {f['message']}")
    active = sum(by_rev.values())

    status: dict[str, Any] = {
        "observedGeneration": gen,
        "revision": res.revision,
        "hopsDigest": hops_digest,
        "activeSessions": active,
        "sessionsByRevision": {str(k): v for k, v in sorted(by_rev.items())},
    }

    if not res.accepted:
        msg = "; ".join(res.errors)
        setc("Accepted", "False", "InvalidSpec", msg)
        setc("ResolvedRefs", "Unknown", "NotAccepted", "the spec is invalid")
        setc("Programmed", "False", "NotAccepted", "the spec is invalid")
        setc("Degraded", "False", "NotAccepted", "the spec is invalid")
        setc("Ready", "False", "InvalidSpec", msg)
        # Never write "": the 1.20 apiserver built here turns "" into null in merge patches.
        status.update(conditions=_ordered(conds), hops=[], hopsSummary="-",
                      nodes={"total": 0, "programmed": 0})
        return status

    setc("Accepted", "True", "Accepted", "the chain is valid")
    if res.problems:
        setc("ResolvedRefs", "False", res.problems[0].reason,
             "; ".join(p.message for p in res.problems))
    else:
        setc("ResolvedRefs", "True", "ResolvedRefs",
             f"{len(res.sources)} source pod(s), {len(res.destination_pods)} destination pod(s),"
             f" {len(res.hops)} hop(s) with ready instances")

    pending = sorted(
        node for node, rev in desired_revisions.items()
        if node not in plans or (plans[node].observed_revision or 0) < rev
    )
    total = len(desired_revisions)
    status["nodes"] = {"total": total, "programmed": total - len(pending)}
    if pending:
        setc("Programmed", "False", "Pending",
             f"waiting for the agents on node(s) {', '.join(pending[:10])}"
             f"{' ...' if len(pending) > 10 else ''} to apply revision {res.revision}")
    elif total == 0:
        setc("Programmed", "True", "NoParticipants",
             "no pod of the chain is running; nothing to program")
    else:
        setc("Programmed", "True", "Programmed",
             f"revision {res.revision} applied by the agents on {total} node(s)")

    # Last reconfiguration: a revision after the first one.
    last = dict(old.get("lastReconfiguration") or {})
    if res.revision > 1:
        if last.get("revision") != res.revision:
            last = {"revision": res.revision, "started": now_ts(now)}
        last["moved"], last["failed"] = moved, failed
        old_sessions = sum(v for k, v in by_rev.items() if k < res.revision)
        live = chain.spec.get("updatePolicy", "live") == "live"
        done = not pending and (not live or old_sessions == 0)
        if done and not last.get("finished"):
            last["finished"] = now_ts(now)
        status["lastReconfiguration"] = last

    draining = [(h.name, d.pod.key) for h in res.hops for d in h.draining]
    if failures:
        setc("Degraded", "True", "AgentFailures", "; ".join(failures[:5]))
    elif failed:
        setc("Degraded", "True", "ReconfigurationFailures",
             f"{failed} session(s) could not move to revision {res.revision}")
    elif draining:
        setc("Degraded", "True", "Draining",
             "moving sessions off " + ", ".join(f"{p} ({h})" for h, p in draining))
    else:
        setc("Degraded", "False", "AsExpected", "no draining instance, no failure")

    ready_blockers = [c for c in conds if c["type"] in ("ResolvedRefs", "Programmed")
                      and c["status"] != "True"]
    if ready_blockers:
        b = ready_blockers[0]
        setc("Ready", "False", b["reason"], b["message"])
    else:
        setc("Ready", "True", "Ready", f"revision {res.revision} is programmed")

    status["conditions"] = _ordered(conds)
    status["hops"] = [
        {"name": h.name, "readyInstances": len(h.instances),
         "drainingInstances": len(h.draining), "instances": h.instance_ips}
        for h in res.hops
    ]
    status["hopsSummary"] = ",".join(f"{h.name}({len(h.instances)})" for h in res.hops) or "-"
    return status


def _ordered(conds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(conds, key=lambda c: order.get(c["type"], len(order)))


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any], top: bool = True) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) turning ``old`` into ``new``.

    At the top level only the keys of ``new`` are considered (other writers' fields stay);
    below it, keys missing from ``new`` are removed with ``null``. Empty = nothing to write.
    """
    patch: dict[str, Any] = {}
    for k, v in new.items():
        o = old.get(k)
        if isinstance(v, Mapping) and isinstance(o, Mapping):
            sub = merge_patch(o, v, top=False)
            if sub:
                patch[k] = sub
        elif o != v and not (v is None and k not in old):
            patch[k] = v
    if not top:
        for k in old:
            if k not in new:
                patch[k] = None
    return patch
