"""Pure planning: ServiceChain + pods + Services -> per-node DyscoNodePlan content."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dysco_operator import planner
from dysco_operator.model import ChainInfo, NodeInfo, PodInfo, ServiceInfo, ServicePort

NOW = dt.datetime(2026, 11, 27, 5, 0, 0, tzinfo=dt.UTC)


def pod(name: str, node: str, ip: str, labels: dict[str, str], *, ready: bool = True,
        deleting: str | None = None, ns: str = "default",
        ports: dict[str, int] | None = None) -> PodInfo:
    return PodInfo(namespace=ns, name=name, uid=f"uid-{name}", labels=labels, node=node, ip=ip,
                   phase="Running", ready=ready, deleting=deleting,
                   container_ids=(f"docker://{name}",), ports=ports or {})


def chain(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
          name: str = "web") -> ChainInfo:
    base: dict[str, Any] = {
        "source": {"selector": {"matchLabels": {"app": "client"}}},
        "destination": {"service": {"name": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]},
        "hops": [
            {"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}},
            {"name": "ids", "selector": {"matchExpressions": [
                {"key": "nf", "operator": "In", "values": ["ids"]}]}, "kind": "proxy"},
        ],
        "updatePolicy": "live", "drainTimeoutSeconds": 30, "onDelete": "bypass",
    }
    base.update(spec or {})
    return ChainInfo(namespace="default", name=name, uid=f"uid-chain-{name}", generation=1,
                     resource_version="1", spec=base, status=status or {})


SERVICES = {("default", "web"): ServiceInfo(
    namespace="default", name="web", cluster_ips=("10.96.0.10",), selector={"app": "web"},
    ports=(ServicePort(port=80, target_port=8080), ServicePort(port=443, target_port="https")))}
NODES = {n: NodeInfo(n, f"uid-{n}", False) for n in ("a", "b", "c")}


def world() -> list[PodInfo]:
    return [
        pod("client-1", "a", "10.88.0.2", {"app": "client"}),
        pod("client-2", "b", "10.88.1.2", {"app": "client"}),
        pod("fw-1", "b", "10.88.1.3", {"nf": "fw"}),
        pod("fw-2", "c", "10.88.2.3", {"nf": "fw"}),
        pod("ids-1", "c", "10.88.2.4", {"nf": "ids"}),
        pod("web-1", "c", "10.88.2.5", {"app": "web"}, ports={"https": 8443}),
        pod("other", "a", "10.88.0.9", {"app": "other"}),
        pod("client-x", "a", "10.88.0.8", {"app": "client"}, ns="elsewhere"),
    ]


def plan_for(c: ChainInfo, pods: list[PodInfo], **kw: Any) -> tuple[
        planner.ChainResolution, dict[str, dict[str, Any]]]:
    res = planner.resolve_chain(c, 1, pods, SERVICES, kw.pop("nodes", NODES),
                                kw.pop("used", frozenset()))
    return res, planner.build_plans([res], NOW, kw.pop("old", None))


def test_plans_per_node_with_policies_only_on_sources() -> None:
    res, plans = plan_for(chain(), world())
    assert res.accepted and not res.problems
    assert sorted(plans) == ["a", "b", "c"]
    a = plans["a"]
    assert [p["name"] for p in a["pods"]] == ["client-1"]          # not "other", not other ns
    pol = a["pods"][0]["policies"]
    assert pol == [{"chain": "default/web", "revision": 1, "match": {"destinations": [
        {"ip": "10.96.0.10", "ports": [80]}, {"ip": "10.88.2.5", "ports": [8080]}]}}]
    assert a["chains"][0]["hops"] == [
        {"name": "fw", "kind": "transparent", "instanceChoice": "roundRobin", "optional": False,
         "instances": ["10.88.1.3", "10.88.2.3"]},
        {"name": "ids", "kind": "proxy", "instanceChoice": "roundRobin", "optional": False,
         "instances": ["10.88.2.4"]},
    ]
    b = {p["name"]: p for p in plans["b"]["pods"]}
    assert b["fw-1"]["roles"] == [{"chain": "default/web", "role": "middlebox", "hop": "fw"}]
    assert b["fw-1"]["policies"] == []
    assert b["client-2"]["policies"][0]["chain"] == "default/web"
    c = {p["name"]: p for p in plans["c"]["pods"]}
    assert c["web-1"]["roles"] == [{"chain": "default/web", "role": "destination"}]
    assert c["web-1"]["containerIDs"] == ["docker://web-1"]
    assert all(p["draining"] == [] for p in plans.values())


def test_host_network_pods_never_take_part() -> None:
    pods = world()
    pods[0] = PodInfo(namespace="default", name="client-1", uid="uid-client-1",
                      labels={"app": "client"}, node="a", ip="192.0.2.10", phase="Running",
                      ready=True, deleting=None, host_network=True)
    res, plans = plan_for(chain(), pods)
    assert [p.name for p in res.sources] == ["client-2"]
    assert "a" not in plans  # its only participant was in the node's own netns


def test_pod_info_from_body() -> None:
    body = {"metadata": {"namespace": "ns", "name": "p", "uid": "u", "labels": {"a": "b"},
                         "deletionTimestamp": "2026-11-27T05:00:00Z"},
            "spec": {"nodeName": "n1", "hostNetwork": True, "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"containerID": "docker://x"}, {}]}}
    p = PodInfo.from_body(body)
    assert (p.key, p.node, p.ip, p.ready, p.deleting, p.host_network) == (
        "ns/p", "n1", "10.0.0.1", True, "2026-11-27T05:00:00Z", True)
    assert p.container_ids == ("docker://x",) and p.ports == {"http": 8080}
    assert not p.alive


def test_named_target_port_resolved_from_pod_ports() -> None:
    c = chain({"destination": {"service": {"name": "web"}, "ports": [{"port": 443}]}})
    res, _ = plan_for(c, world())
    assert ("10.88.2.5", (8443,)) in res.destinations
    assert ("10.96.0.10", (443,)) in res.destinations


def test_destination_selector_uses_pod_ports() -> None:
    c = chain({"destination": {"selector": {"matchLabels": {"app": "web"}},
                               "ports": [{"port": 8080}]}})
    res, _ = plan_for(c, world())
    assert res.destinations == (("10.88.2.5", (8080,)),)


def test_missing_service_and_empty_hop_are_problems_not_errors() -> None:
    c = chain({"destination": {"service": {"name": "nope"}, "ports": [{"port": 80}]}})
    pods = [p for p in world() if not p.name.startswith("ids")]
    res, plans = plan_for(c, pods)
    assert res.accepted
    assert [p.reason for p in res.problems] == ["ServiceNotFound", "NoReadyInstances"]
    # still planned: agents keep attached pods; no destination -> no policy
    assert plans["a"]["pods"][0]["policies"] == []


def test_optional_hop_without_instances_is_fine() -> None:
    c = chain({"hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}},
                        {"name": "dpi", "selector": {"matchLabels": {"nf": "dpi"}},
                         "optional": True}]})
    res, plans = plan_for(c, world())
    assert not res.problems
    assert plans["a"]["chains"][0]["hops"][1]["instances"] == []


def test_invalid_selector_expression_is_not_accepted_and_not_planned() -> None:
    c = chain({"hops": [{"name": "fw", "selector": {"matchExpressions": [
        {"key": "nf", "operator": "In"}]}}]})
    res, plans = plan_for(c, world())
    assert not res.accepted
    assert "operator In needs values" in res.errors[0]
    assert plans == {}


def test_terminating_instance_is_drained_until_its_deletion_deadline() -> None:
    pods = world()
    pods[2] = pod("fw-1", "b", "10.88.1.3", {"nf": "fw"}, deleting="2026-11-27T05:00:20Z")
    res, plans = plan_for(chain(), pods, used=frozenset({"10.88.1.3"}))
    fw = res.hops[0]
    assert [p.name for p in fw.instances] == ["fw-2"]
    assert [(d.pod.name, d.reason) for d in fw.draining] == [("fw-1", "Terminating")]
    for node in ("a", "b", "c"):
        assert plans[node]["draining"] == [{
            "ip": "10.88.1.3", "deadline": "2026-11-27T05:00:20Z", "pod": "default/fw-1",
            "reason": "Terminating", "chains": ["default/web"]}]
        assert plans[node]["chains"][0]["hops"][0]["instances"] == ["10.88.2.3"]
    # the draining pod stays attached: it still carries live sessions
    assert "fw-1" in [p["name"] for p in plans["b"]["pods"]]


def test_drain_deadline_bounded_by_timeout_and_kept_stable() -> None:
    pods = world()
    pods[2] = pod("fw-1", "b", "10.88.1.3", {"nf": "fw"}, ready=False)
    _, plans = plan_for(chain(), pods, used=frozenset({"10.88.1.3"}))
    d = plans["a"]["draining"][0]
    assert (d["reason"], d["deadline"]) == ("NotReady", "2026-11-27T05:00:30Z")
    # a later pass keeps the first deadline instead of pushing it out
    res = planner.resolve_chain(chain(), 1, pods, SERVICES, NODES, frozenset({"10.88.1.3"}))
    later = planner.build_plans([res], NOW + dt.timedelta(seconds=10),
                                planner.previous_draining(plans.values()))
    assert later["a"]["draining"][0]["deadline"] == "2026-11-27T05:00:30Z"


def test_not_ready_pod_never_used_is_not_drained() -> None:
    pods = world()
    pods[2] = pod("fw-1", "b", "10.88.1.3", {"nf": "fw"}, ready=False)
    res, plans = plan_for(chain(), pods)
    assert res.hops[0].draining == ()
    assert all(p["draining"] == [] for p in plans.values())


def test_cordoned_node_drains_its_instances() -> None:
    nodes = dict(NODES, c=NodeInfo("c", "uid-c", True))
    res, _ = plan_for(chain(), world(), nodes=nodes, used=frozenset({"10.88.2.3", "10.88.2.4"}))
    assert [(d.pod.name, d.reason) for d in res.hops[0].draining] == [
        ("fw-2", "NodeUnschedulable")]
    assert res.hops[1].instances == ()
    assert [p.reason for p in res.problems] == ["NoReadyInstances"]


def test_revision_bumps_only_when_hops_change() -> None:
    c1 = chain()
    rev, digest, bumped = planner.next_revision(c1)
    assert (rev, bumped) == (1, True)
    stamped = chain(status={"revision": 1, "hopsDigest": digest})
    assert planner.next_revision(stamped) == (1, digest, False)
    ports_changed = chain({"destination": {"service": {"name": "web"}, "ports": [{"port": 443}]},
                           "updatePolicy": "newSessionsOnly"},
                          status={"revision": 1, "hopsDigest": digest})
    assert planner.next_revision(ports_changed)[2] is False
    hop_removed = chain({"hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}]},
                        status={"revision": 1, "hopsDigest": digest})
    assert planner.next_revision(hop_removed)[:1] == (2,)
    # defaults written by the API server do not count as a change
    explicit = chain({"hops": [
        {"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}, "kind": "transparent",
         "instanceChoice": "roundRobin", "optional": False},
        {"name": "ids", "selector": {"matchExpressions": [
            {"key": "nf", "operator": "In", "values": ["ids"]}]}, "kind": "proxy"}]})
    assert planner.hops_digest(explicit.spec) == digest


def test_next_plan_spec_bumps_only_on_change_and_ignores_server_defaults() -> None:
    _, plans = plan_for(chain(), world())
    first = planner.next_plan_spec("a", plans["a"], None)
    assert first is not None and first["revision"] == 1 and first["nodeName"] == "a"
    assert planner.next_plan_spec("a", plans["a"], first) is None
    stored = {**first, "chains": [{k: v for k, v in c.items() if k != "onDelete"}
                                  for c in first["chains"]]}
    assert planner.next_plan_spec("a", plans["a"], stored) is None  # server fills the default
    changed = dict(plans["a"], draining=[{"ip": "1.2.3.4", "deadline": "x"}])
    nxt = planner.next_plan_spec("a", changed, first)
    assert nxt is not None and nxt["revision"] == 2


def test_two_chains_share_a_node_and_a_pod() -> None:
    c2 = chain({"destination": {"service": {"name": "web"}, "ports": [{"port": 443}]},
                "hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}]},
               name="tls")
    r1 = planner.resolve_chain(chain(), 3, world(), SERVICES, NODES)
    r2 = planner.resolve_chain(c2, 1, world(), SERVICES, NODES)
    plans = planner.build_plans([r2, r1], NOW)
    assert [c["name"] for c in plans["a"]["chains"]] == ["default/tls", "default/web"]
    client = plans["a"]["pods"][0]
    assert [(p["chain"], p["revision"]) for p in client["policies"]] == [
        ("default/tls", 1), ("default/web", 3)]
    assert len(client["roles"]) == 2
    assert planner.build_plans([r1, r2], NOW) == plans  # order-independent


def test_selector_semantics() -> None:
    m = planner.selector_matches
    assert m({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not m({"matchLabels": {"a": "1"}}, {"a": "2"})
    assert not m({}, {"a": "1"})  # empty selects nothing here (schema forbids it anyway)
    exprs = {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]},
                                  {"key": "b", "operator": "Exists"},
                                  {"key": "c", "operator": "DoesNotExist"}]}
    assert m(exprs, {"b": ""}) and m(exprs, {"a": "y", "b": "1"})
    assert not m(exprs, {"a": "x", "b": "1"}) and not m(exprs, {"b": "1", "c": "1"})


labels = st.sampled_from([{"app": "client"}, {"nf": "fw"}, {"nf": "ids"}, {"app": "web"}, {}])


@st.composite
def pods_strategy(draw: st.DrawFn) -> list[PodInfo]:
    n = draw(st.integers(0, 12))
    out = []
    for i in range(n):
        out.append(pod(f"p{i}", draw(st.sampled_from(["a", "b", "c"])), f"10.0.0.{i + 1}",
                       draw(labels), ready=draw(st.booleans()),
                       deleting=draw(st.sampled_from([None, "2026-11-27T05:00:05Z"]))))
    return out


@settings(max_examples=200, deadline=None)
@given(pods_strategy(), st.frozensets(st.sampled_from([f"10.0.0.{i}" for i in range(1, 13)])))
def test_plan_invariants(pods: list[PodInfo], used: frozenset[str]) -> None:
    res = planner.resolve_chain(chain(), 1, pods, SERVICES, NODES, used)
    plans = planner.build_plans([res], NOW)
    by_ip = {p.ip: p for p in pods}
    all_instances = {ip for h in res.hops for ip in h.instance_ips}
    for node, content in plans.items():
        assert [c["name"] for c in content["chains"]] == ["default/web"]
        for p in content["pods"]:
            info = by_ip[p["ip"]]
            assert info.node == node                       # pods only on their own node's plan
            assert bool(p["policies"]) == (
                any(r["role"] == "source" for r in p["roles"]) and bool(res.destinations))
        for d in content["draining"]:
            assert d["ip"] in used and d["ip"] not in all_instances
            assert d["deadline"] <= "2026-11-27T05:00:30Z"
    for ip in all_instances:                               # instances are ready and staying
        assert by_ip[ip].ready and not by_ip[ip].deleting
    assert planner.build_plans([res], NOW) == plans        # deterministic


def test_proxy_content_delta_annotation_reaches_the_plan() -> None:
    body = {"metadata": {"namespace": "default", "name": "ids-1", "uid": "u",
                         "annotations": {"dysco.io/content-delta": "27,-5"}}}
    assert PodInfo.from_body(body).content_delta == (27, -5)
    for bad in ("27", "a,b", "1,2,3", ""):
        body["metadata"]["annotations"]["dysco.io/content-delta"] = bad
        assert PodInfo.from_body(body).content_delta is None
    pods = [dataclasses.replace(p, content_delta=(27, 57)) if p.name == "ids-1" else p
            for p in world()]
    _, plans = plan_for(chain(), pods)
    by_name = {p["name"]: p for p in plans["c"]["pods"]}
    assert by_name["ids-1"]["contentDelta"] == {"leftToRight": 27, "rightToLeft": 57}
    assert "contentDelta" not in by_name["fw-2"]
