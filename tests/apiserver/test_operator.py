"""The operator and node agents against a real kube-apiserver (no kubelet).

Pods are created with ``spec.nodeName`` and their status is patched to Running/Ready with
a pod IP, which is all the operator looks at. The operator runs as a subprocess (so it can
be restarted) with the chart's own ClusterRole (token of a user bound to it); the agents
run as threads (`NodeAgent`) with a `RecordingDataPlane`, bound to the agent ClusterRole.
The tests run in order and share one scenario.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from dysco.k8s.agent import NodeAgent
from dysco.k8s.interface import RecordingDataPlane
from dysco_operator.kube import Conflict, Kube
from dysco_operator.model import PlanInfo
from dysco_operator.syncer import PlanSyncer, Snapshot

from .conftest import AGENT_TOKEN, OPERATOR_TOKEN, ApiServer, free_port
from .helpers import (
    GROUP,
    VERSION,
    api_client,
    apply_crds,
    chain_body,
    condition,
    rbac_for_users,
    wait_for,
)

NS = "chains"
CHAIN = f"{NS}/web"


# ------------------------------------------------------------------ fixtures

class Operator:
    def __init__(self, kubeconfig: Path, log: Path, *args: str) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.args = list(args) or ["--standalone"]
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dysco_operator", *self.args, "--verbose",
                 "--metrics-bind-address=127.0.0.1", f"--metrics-port={self.metrics_port}"],
                env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def metrics(self) -> str:
        """The /metrics text, or "" while the (re)started operator is not listening yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""


class AgentThread:
    def __init__(self, node: str, api: Any) -> None:
        self.dp = RecordingDataPlane()
        resolver = _AnyResolver()
        self.agent = NodeAgent(node, client.CustomObjectsApi(api), self.dp, resolver,
                               agent_id=f"agent-{node}", status_interval=0.3)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop.set()
        self.thread.join(10)


class _AnyResolver:
    def resolve(self, pod: Any) -> str:
        return f"/proc/fake-{pod.name}/ns/net"


@pytest.fixture(scope="module")
def env(apiserver: ApiServer) -> Iterator[dict[str, Any]]:
    admin = api_client(apiserver.kubeconfig)
    apply_crds(admin)
    rbac_for_users(admin)
    core = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": NS}})
    nodes = {}
    for n in ("n1", "n2"):
        nodes[n] = core.create_node({"metadata": {"name": n}}).metadata.uid
    op = Operator(apiserver.kubeconfig_for(OPERATOR_TOKEN, "operator"),
                  apiserver.workdir / "operator.log")
    agent_api = api_client(apiserver.kubeconfig_for(AGENT_TOKEN, "agent"))
    agents = {n: AgentThread(n, agent_api) for n in ("n1", "n2")}
    state: dict[str, Any] = {"admin": admin, "op": op, "agents": agents, "nodes": nodes,
                             "log": apiserver.workdir / "operator.log"}
    op.start()
    try:
        yield state
    finally:
        op.stop()
        for a in agents.values():
            a.stop()
        # keep the operator log next to the test output when something failed
        print(f"operator log: {state['log']}")


def co(env: dict[str, Any]) -> Any:
    return client.CustomObjectsApi(env["admin"])


def get_chain(env: dict[str, Any], name: str = "web") -> dict[str, Any]:
    return co(env).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, NS, "servicechains", name)


def get_plan(env: dict[str, Any], node: str) -> dict[str, Any] | None:
    try:
        return co(env).get_cluster_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, "dysconodeplans", node)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def make_pod(env: dict[str, Any], name: str, node: str, ip: str, labels: dict[str, str],
             ready: bool = True) -> None:
    core = client.CoreV1Api(env["admin"])
    core.create_namespaced_pod(NS, {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{
            "name": "c", "image": "dysco/base:bookworm",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
    })
    set_pod_status(env, name, ip, ready)


def set_pod_status(env: dict[str, Any], name: str, ip: str, ready: bool) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.CoreV1Api(env["admin"]).patch_namespaced_pod_status(name, NS, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                        "lastTransitionTime": now}],
        "containerStatuses": [{"name": "c", "ready": ready, "restartCount": 0,
                               "image": "dysco/base:bookworm", "imageID": "",
                               "containerID": f"docker://{name}-cid",
                               "state": {"running": {"startedAt": now}}}],
    }})


def events_of(env: dict[str, Any], name: str) -> list[str]:
    evs = client.CoreV1Api(env["admin"]).list_namespaced_event(
        NS, field_selector=f"involvedObject.name={name}").items
    return [e.reason for e in evs]


def cond_is(obj: dict[str, Any], type_: str, status: str, reason: str | None = None) -> bool:
    c = condition(obj, type_)
    return c is not None and c["status"] == status and (reason is None or c["reason"] == reason)


def fresh_conditions(obj: dict[str, Any]) -> bool:
    gen = obj["metadata"]["generation"]
    st = obj.get("status") or {}
    return st.get("observedGeneration") == gen and all(
        c.get("observedGeneration") == gen for c in st.get("conditions") or ())


def policies(agent: AgentThread, pod: str) -> list[tuple[str, int, list[str]]]:
    return [(p.chain.name, p.revision, [h.name for h in p.chain.hops])
            for p in agent.dp.policies.get(f"{NS}/{pod}", ())]


# ------------------------------------------------------------------ the scenario

def test_01_chain_planned_then_programmed_by_agents(env: dict[str, Any]) -> None:
    core = client.CoreV1Api(env["admin"])
    svc = core.create_namespaced_service(NS, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    cluster_ip = svc.spec.cluster_ip
    make_pod(env, "client-1", "n1", "10.88.1.2", {"app": "client"})
    make_pod(env, "fw-1", "n1", "10.88.1.3", {"nf": "fw"})
    make_pod(env, "fw-2", "n2", "10.88.2.3", {"nf": "fw"})
    make_pod(env, "ids-1", "n2", "10.88.2.4", {"nf": "ids"})
    make_pod(env, "web-1", "n2", "10.88.2.5", {"app": "web"})
    co(env).create_namespaced_custom_object(GROUP, VERSION, NS, "servicechains",
                                            chain_body("web"))

    chain = wait_for(lambda: (c := get_chain(env)).get("status", {}).get("revision") == 1
                     and cond_is(c, "ResolvedRefs", "True") and c, timeout=60,
                     what="chain revision 1 resolved")
    assert cond_is(chain, "Accepted", "True", "Accepted")
    assert "dysco.io/finalizer" in chain["metadata"]["finalizers"]
    # no agent yet: planned but not programmed
    assert cond_is(chain, "Programmed", "False", "Pending")
    assert cond_is(chain, "Ready", "False", "Pending")
    assert chain["status"]["hopsSummary"] == "fw(2)"

    plan = wait_for(lambda: get_plan(env, "n1"), what="plan n1")
    spec = plan["spec"]
    assert spec["nodeName"] == "n1" and spec["revision"] >= 1
    assert plan["metadata"]["ownerReferences"][0]["uid"] == env["nodes"]["n1"]
    pods = {p["name"]: p for p in spec["pods"]}
    assert sorted(pods) == ["client-1", "fw-1"]
    assert pods["client-1"]["containerIDs"] == ["docker://client-1-cid"]
    assert pods["client-1"]["policies"] == [{"chain": CHAIN, "revision": 1, "match": {
        "destinations": [{"ip": cluster_ip, "ports": [80]},
                         {"ip": "10.88.2.5", "ports": [8080]}]}}]  # named targetPort
    assert spec["chains"][0]["hops"][0]["instances"] == ["10.88.1.3", "10.88.2.3"]
    n2 = get_plan(env, "n2")
    assert n2 is not None
    assert sorted(p["name"] for p in n2["spec"]["pods"]) == ["fw-2", "web-1"]

    for a in env["agents"].values():
        a.start()
    chain = wait_for(lambda: (c := get_chain(env)) and cond_is(c, "Ready", "True") and c,
                     what="chain Ready after the agents applied the plans")
    assert cond_is(chain, "Programmed", "True", "Programmed")
    assert chain["status"]["nodes"] == {"total": 2, "programmed": 2}
    assert fresh_conditions(chain)
    for n in ("n1", "n2"):
        p = get_plan(env, n)
        assert p is not None and p["status"]["observedRevision"] == p["spec"]["revision"]
        assert cond_is(p, "Applied", "True")
    a1 = env["agents"]["n1"]
    assert sorted(a1.dp.pods) == [f"{NS}/client-1", f"{NS}/fw-1"]
    assert policies(a1, "client-1") == [(CHAIN, 1, ["fw"])]
    assert a1.dp.pods[f"{NS}/client-1"] == ("/proc/fake-client-1/ns/net", "10.88.1.2")
    assert "RevisionChanged" in wait_for(lambda: events_of(env, "web"), what="events")


def test_02_hop_added_bumps_revision_and_reports_reconfiguration(env: dict[str, Any]) -> None:
    a1 = env["agents"]["n1"]
    a1.dp.session_counts = {(CHAIN, 1): 4}  # live sessions before the change
    wait_for(lambda: get_chain(env)["status"].get("activeSessions") == 4, what="4 sessions")
    hops = [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}},
            {"name": "ids", "selector": {"matchLabels": {"nf": "ids"}}, "kind": "proxy"}]
    co(env).patch_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", "web",
                                           {"spec": {"hops": hops}})
    wait_for(lambda: policies(a1, "client-1") == [(CHAIN, 2, ["fw", "ids"])],
             what="agent n1 got revision 2")
    chain = wait_for(lambda: (c := get_chain(env)) and cond_is(c, "Ready", "True")
                     and c["status"]["revision"] == 2 and c, what="revision 2 Ready")
    assert chain["status"]["hopsSummary"] == "fw(2),ids(1)"
    last = chain["status"]["lastReconfiguration"]
    assert last["revision"] == 2 and last["started"] and "finished" not in last
    # the data plane reports sessions: one still on revision 1, one failed to move
    a1.dp.session_counts = {(CHAIN, 1): 1, (CHAIN, 2): 3}
    a1.dp.reconfig_counts = {(CHAIN, 2): (3, 1)}
    chain = wait_for(lambda: (c := get_chain(env))["status"].get("sessionsByRevision") == {
        "1": 1, "2": 3} and c, what="sessions reported")
    assert chain["status"]["activeSessions"] == 4
    assert chain["status"]["lastReconfiguration"]["moved"] == 3
    assert chain["status"]["lastReconfiguration"]["failed"] == 1
    assert "finished" not in chain["status"]["lastReconfiguration"]
    assert cond_is(chain, "Degraded", "True", "ReconfigurationFailures")
    # the last session moves, the failure is retried successfully
    a1.dp.session_counts = {(CHAIN, 2): 4}
    a1.dp.reconfig_counts = {(CHAIN, 2): (4, 0)}
    chain = wait_for(lambda: (c := get_chain(env))["status"]["lastReconfiguration"].get(
        "finished") and c, what="reconfiguration finished")
    assert cond_is(chain, "Degraded", "False", "AsExpected")
    assert chain["status"]["sessionsByRevision"] == {"2": 4}
    wait_for(lambda: "ReconfigurationFinished" in events_of(env, "web"), what="event")


def test_03_change_outside_hops_keeps_revision(env: dict[str, Any]) -> None:
    co(env).patch_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", "web",
                                           {"spec": {"drainTimeoutSeconds": 20}})
    chain = wait_for(lambda: (c := get_chain(env))["metadata"]["generation"] == 3
                     and fresh_conditions(c) and c, what="generation 3 observed")
    assert chain["status"]["revision"] == 2
    plan = get_plan(env, "n1")
    assert plan is not None and plan["spec"]["chains"][0]["drainTimeoutSeconds"] == 20


def test_04_terminating_middlebox_is_drained_before_it_goes(env: dict[str, Any]) -> None:
    core = client.CoreV1Api(env["admin"])
    core.delete_namespaced_pod("fw-2", NS, grace_period_seconds=30)  # no kubelet: stays
    pod = core.read_namespaced_pod("fw-2", NS)
    deleting = pod.metadata.deletion_timestamp
    assert deleting is not None
    a1, a2 = env["agents"]["n1"], env["agents"]["n2"]
    wait_for(lambda: "10.88.2.3" in a1.dp.draining, what="agent n1 drains fw-2")
    plan = get_plan(env, "n1")
    assert plan is not None
    d = plan["spec"]["draining"][0]
    assert (d["ip"], d["pod"], d["reason"], d["chains"]) == (
        "10.88.2.3", f"{NS}/fw-2", "Terminating", [CHAIN])
    deadline = dt.datetime.fromisoformat(d["deadline"].replace("Z", "+00:00"))
    assert deadline <= deleting
    assert abs(a1.dp.draining["10.88.2.3"] - deadline.timestamp()) < 1
    assert plan["spec"]["chains"][0]["hops"][0]["instances"] == ["10.88.1.3"]
    assert f"{NS}/fw-2" in a2.dp.pods  # still attached: it carries sessions until moved
    chain = wait_for(lambda: (c := get_chain(env)) and cond_is(c, "Degraded", "True",
                                                               "Draining")
                     and cond_is(c, "Ready", "True") and c,
                     what="Degraded=Draining, still Ready")
    assert chain["status"]["hops"][0]["drainingInstances"] == 1
    wait_for(lambda: "Draining" in events_of(env, "web"), what="Draining event")

    core.delete_namespaced_pod("fw-2", NS, grace_period_seconds=0)
    wait_for(lambda: not a1.dp.draining and f"{NS}/fw-2" not in a2.dp.pods,
             what="drain over, fw-2 detached")
    assert ("cancel_drain", "10.88.2.3") in a1.dp.calls
    chain = wait_for(lambda: (c := get_chain(env)) and cond_is(c, "Degraded", "False") and c,
                     what="not degraded")
    assert chain["status"]["hopsSummary"] == "fw(1),ids(1)"


def test_05_stale_writes_conflict_and_tampering_is_reverted(
        env: dict[str, Any], apiserver: ApiServer) -> None:
    kube = Kube(env["admin"])
    plan = get_plan(env, "n1")
    assert plan is not None
    stale = {"metadata": dict(plan["metadata"])}
    kube.replace_plan_spec(plan, plan["spec"])  # someone else writes first
    with pytest.raises(Conflict):
        kube.replace_plan_spec(stale, plan["spec"])
    chain = get_chain(env)
    with pytest.raises(Conflict):
        kube.patch_chain_status(NS, "web", {"hopsSummary": "x"},
                                str(int(chain["metadata"]["resourceVersion"]) - 1))

    # Somebody empties the plan by hand: the operator puts its content back.
    plan = get_plan(env, "n1")
    assert plan is not None
    rev = plan["spec"]["revision"]
    kube.replace_plan_spec(plan, {**plan["spec"], "revision": rev + 10, "pods": []})
    fixed = wait_for(lambda: (p := get_plan(env, "n1")) and p["spec"]["revision"] == rev + 11
                     and p, what="plan restored")
    assert sorted(p["name"] for p in fixed["spec"]["pods"]) == ["client-1", "fw-1"]


def test_06_syncer_recovers_from_a_stale_snapshot(env: dict[str, Any]) -> None:
    """A pass computed from an out-of-date plan gets 409, re-reads, and converges."""
    plan = get_plan(env, "n2")
    assert plan is not None
    stale = PlanInfo.from_body({**plan, "metadata": {
        **plan["metadata"], "resourceVersion": str(int(plan["metadata"]["resourceVersion"]) - 1)},
        "spec": {**plan["spec"], "pods": []}})
    posted: list[str] = []
    syncer = PlanSyncer(Kube(env["admin"]), events=lambda c, t, r, m: posted.append(r))
    chains = co(env).list_namespaced_custom_object(GROUP, VERSION, NS, "servicechains")["items"]
    from dysco_operator.model import ChainInfo, NodeInfo, PodInfo, ServiceInfo
    core = client.CoreV1Api(env["admin"])
    api = env["admin"]
    pods = [PodInfo.from_body(api.sanitize_for_serialization(p))
            for p in core.list_namespaced_pod(NS).items]
    svcs = [ServiceInfo.from_body(api.sanitize_for_serialization(s))
            for s in core.list_namespaced_service(NS).items]
    snap = Snapshot(
        chains={f"{NS}/{c['metadata']['name']}": ChainInfo.from_body(c) for c in chains},
        pods=pods, services={(s.namespace, s.name): s for s in svcs},
        nodes={n: NodeInfo(n, uid, False) for n, uid in env["nodes"].items()},
        plans={"n1": PlanInfo.from_body(get_plan(env, "n1") or {}), "n2": stale})
    result = asyncio.run(syncer.run_pass(lambda: snap))
    assert result.conflicts >= 1
    after = get_plan(env, "n2")
    assert after is not None
    # the fresh read showed the content was already right: no spurious rewrite
    assert after["spec"]["revision"] == plan["spec"]["revision"]


def test_07_operator_restart_bumps_revision_exactly_once(env: dict[str, Any]) -> None:
    op: Operator = env["op"]
    op.stop()
    before = {n: (get_plan(env, n) or {})["spec"]["revision"] for n in ("n1", "n2")}
    co(env).patch_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", "web", {
        "spec": {"hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}}]}})
    op.start()
    chain = wait_for(lambda: (c := get_chain(env)) and c["status"]["revision"] == 3
                     and cond_is(c, "Ready", "True") and fresh_conditions(c) and c,
                     timeout=60, what="revision 3 after restart")
    assert chain["status"]["hopsSummary"] == "fw(1)"
    a1 = env["agents"]["n1"]
    wait_for(lambda: policies(a1, "client-1") == [(CHAIN, 3, ["fw"])], what="agent rev 3")
    after = {n: (get_plan(env, n) or {})["spec"]["revision"] for n in ("n1", "n2")}
    assert after["n1"] == before["n1"] + 1
    # a restart without changes rewrites nothing
    op.stop()
    op.start()
    wait_for(lambda: "dysco_operator_reconciliations_total" in op.metrics()
             and 'result="success"' in op.metrics(), timeout=60, what="operator passes")
    assert get_chain(env)["status"]["revision"] == 3
    assert {n: (get_plan(env, n) or {})["spec"]["revision"] for n in ("n1", "n2")} == after


def test_08_semantically_invalid_chain_is_not_accepted(env: dict[str, Any]) -> None:
    co(env).create_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", chain_body(
        "bad", hops=[{"name": "fw", "selector": {"matchExpressions": [
            {"key": "nf", "operator": "In"}]}}]))
    chain = wait_for(lambda: (c := get_chain(env, "bad")) and condition(c, "Accepted") and c,
                     what="bad chain handled")
    c = condition(chain, "Accepted")
    assert c is not None and (c["status"], c["reason"]) == ("False", "InvalidSpec")
    assert "needs values" in c["message"]
    assert cond_is(chain, "Ready", "False", "InvalidSpec")
    for n in ("n1", "n2"):
        p = get_plan(env, n)
        assert p is not None
        assert f"{NS}/bad" not in [x["name"] for x in p["spec"]["chains"]]
    co(env).delete_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", "bad")


def test_09_metrics(env: dict[str, Any]) -> None:
    text = env["op"].metrics()
    for name in ("dysco_operator_reconciliations_total", "dysco_chains",
                 "dysco_chain_revision", "dysco_operator_plan_writes_total",
                 "dysco_operator_reconciliation_duration_seconds_bucket"):
        assert name in text, name
    agent: NodeAgent = env["agents"]["n1"].agent
    server = agent.serve_http("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert "dysco_agent_plan_revision" in body
        assert f'dysco_active_sessions{{chain="{CHAIN}",revision="2"}} 4.0' in body
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_10_rbac_is_enforced(env: dict[str, Any], apiserver: ApiServer) -> None:
    agent_api = api_client(apiserver.kubeconfig_for(AGENT_TOKEN, "agent"))
    plan = co(env).get_cluster_custom_object(GROUP, VERSION, "dysconodeplans", "n1")
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(agent_api).replace_cluster_custom_object(
            GROUP, VERSION, "dysconodeplans", "n1", plan)
    assert err.value.status == 403
    op_api = api_client(apiserver.kubeconfig_for(OPERATOR_TOKEN, "operator"))
    with pytest.raises(client.ApiException) as err:
        client.CoreV1Api(op_api).delete_namespaced_pod("fw-1", NS)
    assert err.value.status == 403


def test_11_delete_releases_sessions_then_the_finalizer(env: dict[str, Any]) -> None:
    co(env).delete_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", "web")

    def gone() -> bool:
        try:
            get_chain(env)
        except client.ApiException as e:
            return e.status == 404
        return False
    wait_for(gone, timeout=30, what="chain deleted after the agents released it")
    for n in ("n1", "n2"):
        p = get_plan(env, n)
        assert p is not None and p["spec"]["chains"] == [] and p["spec"]["pods"] == []
        assert p["status"]["observedRevision"] == p["spec"]["revision"]
    a1 = env["agents"]["n1"]
    assert a1.dp.pods == {} and a1.dp.policies == {}
    assert "Released" in wait_for(lambda: events_of(env, "web"), what="events")
    log = Path(env["log"]).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
