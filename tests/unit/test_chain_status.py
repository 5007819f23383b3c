"""ServiceChain status: conditions (metav1.Condition conventions) and merge patches."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dysco_operator import planner
from dysco_operator.model import ChainInfo, NodeInfo, PlanInfo, PodInfo, ServiceInfo
from dysco_operator.status import chain_status, condition, merge_patch, set_condition

T0 = dt.datetime(2026, 11, 27, 5, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=1)


def test_set_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    c = set_condition([], "Ready", "False", "Pending", "wait", 1, T0)
    c = set_condition(c, "Ready", "False", "Other", "still waiting", 2, T1)
    assert c == [{"type": "Ready", "status": "False", "reason": "Other",
                  "message": "still waiting", "observedGeneration": 2,
                  "lastTransitionTime": "2026-11-27T05:00:00Z"}]
    c = set_condition(c, "Ready", "True", "Ready", "ok", 2, T1)
    assert c[0]["lastTransitionTime"] == "2026-11-27T05:01:00Z"


def test_merge_patch() -> None:
    old: dict[str, Any] = {"a": 1, "kopf": {"x": 1}, "last": {"revision": 1, "finished": "t"},
                           "byRev": {"1": 3}}
    new = {"a": 1, "last": {"revision": 2, "started": "s"}, "byRev": {"2": 1}}
    assert merge_patch(old, new) == {
        "last": {"revision": 2, "started": "s", "finished": None},
        "byRev": {"2": 1, "1": None},
    }  # top-level keys of other writers ("kopf") are left alone
    assert merge_patch(new, new) == {}


def _res(status: dict[str, Any] | None = None, hop_pods: int = 1) -> planner.ChainResolution:
    chain = ChainInfo("ns", "web", "uid", 5, "10", {
        "source": {"selector": {"matchLabels": {"app": "c"}}},
        "destination": {"selector": {"matchLabels": {"app": "w"}}, "ports": [{"port": 80}]},
        "hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}],
    }, status or {})
    pods = [PodInfo("ns", "c", "u1", {"app": "c"}, "n1", "10.0.0.1", "Running", True, None),
            PodInfo("ns", "w", "u2", {"app": "w"}, "n2", "10.0.0.2", "Running", True, None)]
    pods += [PodInfo("ns", f"fw{i}", f"f{i}", {"nf": "fw"}, "n2", f"10.0.1.{i}", "Running",
                     True, None) for i in range(hop_pods)]
    services: dict[tuple[str, str], ServiceInfo] = {}
    nodes = {n: NodeInfo(n, n, False) for n in ("n1", "n2")}
    return planner.resolve_chain(chain, 2, pods, services, nodes)


def plan(name: str, observed: int, **status: Any) -> PlanInfo:
    return PlanInfo(name, "1", {"revision": 3}, {"observedRevision": observed, **status})


def test_ready_when_all_agents_applied_the_plan() -> None:
    st = chain_status(_res(), "d", {"n1": plan("n1", 3), "n2": plan("n2", 3)},
                      {"n1": 3, "n2": 3}, T0)
    assert [(c["type"], c["status"]) for c in st["conditions"]] == [
        ("Accepted", "True"), ("ResolvedRefs", "True"), ("Programmed", "True"),
        ("Degraded", "False"), ("Ready", "True")]
    assert all(c["observedGeneration"] == 5 for c in st["conditions"])
    assert st["observedGeneration"] == 5 and st["revision"] == 2
    assert st["hopsSummary"] == "fw(1)" and st["nodes"] == {"total": 2, "programmed": 2}


def test_pending_agent_and_missing_instances() -> None:
    st = chain_status(_res(hop_pods=0), "d", {"n1": plan("n1", 2)}, {"n1": 3, "n2": 3}, T0)
    pr = condition(st, "Programmed")
    assert pr is not None and pr["reason"] == "Pending" and "n1, n2" in pr["message"]
    ready = condition(st, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == (
        "False", "NoReadyInstances")


def test_sessions_and_reconfiguration_progress() -> None:
    plans = {"n1": plan("n1", 3,
                        sessions=[{"chain": "ns/web", "revision": 1, "count": 2},
                                  {"chain": "ns/web", "revision": 2, "count": 5},
                                  {"chain": "ns/other", "revision": 9, "count": 100}],
                        reconfigurations=[{"chain": "ns/web", "revision": 2, "done": 5,
                                           "failed": 0}])}
    st = chain_status(_res(), "d", plans, {"n1": 3}, T0)
    assert st["activeSessions"] == 7 and st["sessionsByRevision"] == {"1": 2, "2": 5}
    assert st["lastReconfiguration"] == {"revision": 2, "started": "2026-11-27T05:00:00Z",
                                         "moved": 5, "failed": 0}
    plans["n1"].status["sessions"] = [{"chain": "ns/web", "revision": 2, "count": 7}]
    res = _res(status=st)
    st2 = chain_status(res, "d", plans, {"n1": 3}, T1)
    assert st2["lastReconfiguration"]["finished"] == "2026-11-27T05:01:00Z"
    assert st2["lastReconfiguration"]["started"] == "2026-11-27T05:00:00Z"


def test_agent_failure_on_a_chain_pod_degrades() -> None:
    plans = {"n1": plan("n1", 3, failures=[{"pod": "ns/c", "message": "netns not found"}])}
    st = chain_status(_res(), "d", plans, {"n1": 3}, T0)
    deg = condition(st, "Degraded")
    assert deg is not None and (deg["status"], deg["reason"]) == ("True", "AgentFailures")


def test_chain_gauges_drop_revisions_without_sessions_and_gone_hops() -> None:
    """A gauge keeps its last value: the series of a revision whose sessions ended, or of
    a hop taken out of the chain, must go, or the metrics count what no longer exists."""
    from prometheus_client import REGISTRY

    from dysco_operator.syncer import export_chain

    def hop(name: str) -> planner.HopResolution:
        return planner.HopResolution(name=name, kind="transparent", instance_choice="hash",
                                     optional=False, instances=(), draining=())

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"chain": "ns/gauges", **labels})

    chain = ChainInfo(namespace="ns", name="gauges", uid="u-g", generation=1,
                      resource_version="1", spec={}, status={})
    first = planner.ChainResolution(chain=chain, revision=1, hops=(hop("fw"), hop("proxy")))
    export_chain(first, {"sessionsByRevision": {"1": 4}})
    assert sample("dysco_chain_sessions", revision="1") == 4
    assert sample("dysco_chain_hop_instances", hop="proxy", state="ready") == 0
    second = planner.ChainResolution(chain=chain, revision=2, hops=(hop("fw"),))
    export_chain(second, {"sessionsByRevision": {"2": 3}})
    assert sample("dysco_chain_sessions", revision="1") is None
    assert sample("dysco_chain_sessions", revision="2") == 3
    assert sample("dysco_chain_hop_instances", hop="proxy", state="ready") is None
    assert sample("dysco_chain_hop_instances", hop="fw", state="ready") == 0
    export_chain(second, {"sessionsByRevision": {}})
    assert sample("dysco_chain_sessions", revision="2") is None
