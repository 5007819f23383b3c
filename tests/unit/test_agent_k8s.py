"""The node agent's Kubernetes glue without an API server: plan -> DataPlane calls."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dysco.k8s import netns
from dysco.k8s.agent import NodeAgent
from dysco.k8s.cli import add_agent_parser, load_dataplane
from dysco.k8s.interface import DataPlane, RecordingDataPlane
from dysco.k8s.netns import PodRef, StaticResolver
from dysco.k8s.reconcile import Reconciler


def plan_spec(revision: int = 1, hops: list[str] | None = None, pods: list[str] | None = None,
              draining: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    hops = ["10.0.0.3"] if hops is None else hops
    chain = {"name": "ns/web", "revision": revision, "updatePolicy": "live", "onDelete": "close",
             "drainTimeoutSeconds": 30,
             "hops": [{"name": "fw", "kind": "proxy", "instanceChoice": "hash",
                       "optional": False, "instances": hops}]}
    all_pods = {
        "client": {"namespace": "ns", "name": "client", "uid": "u1", "ip": "10.0.0.2",
                   "containerIDs": ["docker://c1"],
                   "roles": [{"chain": "ns/web", "role": "source"}],
                   "policies": [{"chain": "ns/web", "revision": revision, "match": {
                       "destinations": [{"ip": "10.96.0.10", "ports": [80]}]}}]},
        "fw": {"namespace": "ns", "name": "fw", "uid": "u2", "ip": "10.0.0.3",
               "roles": [{"chain": "ns/web", "role": "middlebox", "hop": "fw"}]},
    }
    names = list(all_pods) if pods is None else pods
    return {"nodeName": "n1", "revision": revision, "chains": [chain],
            "pods": [all_pods[n] for n in names], "draining": draining or []}


def make(paths: dict[str, str] | None = None) -> tuple[Reconciler, RecordingDataPlane]:
    dp = RecordingDataPlane()
    paths = {"ns/client": "/proc/10/ns/net", "ns/fw": "/proc/11/ns/net"} if paths is None \
        else paths
    return Reconciler(dp, StaticResolver(paths)), dp


def test_recording_dataplane_satisfies_the_protocol() -> None:
    assert isinstance(RecordingDataPlane(), DataPlane)


def test_first_plan_attaches_and_sets_policies_and_chains() -> None:
    rec, dp = make()
    assert rec.apply(plan_spec()) == {}
    assert dp.pods == {"ns/client": ("/proc/10/ns/net", "10.0.0.2"),
                       "ns/fw": ("/proc/11/ns/net", "10.0.0.3")}
    (pol,) = dp.policies["ns/client"]
    assert pol.revision == 1 and pol.destinations == (("10.96.0.10", (80,)),)
    hop = pol.chain.hops[0]
    assert (hop.name, hop.kind, hop.instance_choice, hop.instances) == (
        "fw", "proxy", "hash", ("10.0.0.3",))
    assert pol.chain.on_delete == "close"
    assert "ns/fw" not in dp.policies  # middleboxes get no policies, only chains
    assert [c.name for c in dp.chains] == ["ns/web"]
    # order: chains first, attach before policies
    kinds = [c[0] for c in dp.calls]
    assert kinds == ["set_chains", "attach_pod", "attach_pod", "set_policies"]


def test_same_plan_again_is_a_no_op() -> None:
    rec, dp = make()
    rec.apply(plan_spec())
    n = len(dp.calls)
    rec.apply(plan_spec())
    assert len(dp.calls) == n


def test_new_revision_updates_policies_without_reattaching() -> None:
    rec, dp = make()
    rec.apply(plan_spec())
    dp.calls.clear()
    rec.apply(plan_spec(revision=2, hops=["10.0.0.3", "10.0.0.4"]))
    assert [c[0] for c in dp.calls] == ["set_chains", "set_policies"]
    assert dp.policies["ns/client"][0].revision == 2


def test_drain_cancel_and_detach() -> None:
    rec, dp = make()
    rec.apply(plan_spec())
    deadline = "2026-11-27T05:00:30Z"
    rec.apply(plan_spec(hops=[], draining=[{"ip": "10.0.0.3", "deadline": deadline}]))
    ts = dt.datetime(2026, 11, 27, 5, 0, 30, tzinfo=dt.UTC).timestamp()
    assert dp.draining == {"10.0.0.3": ts}
    rec.apply(plan_spec())  # the instance is ready again
    assert dp.draining == {} and ("cancel_drain", "10.0.0.3") in dp.calls
    rec.apply(plan_spec(pods=["client"]))
    assert list(dp.pods) == ["ns/client"] and dp.calls[-1] == ("detach_pod", "ns/fw")
    rec.apply(None)  # plan deleted
    assert dp.pods == {} and dp.chains == ()


def test_missing_netns_is_a_failure_retried_later() -> None:
    rec, dp = make({"ns/client": "/proc/10/ns/net"})
    failures = rec.apply(plan_spec())
    assert list(failures) == ["ns/fw"] and "network namespace" in failures["ns/fw"]
    rec.resolver = StaticResolver({"ns/client": "/proc/10/ns/net", "ns/fw": "/proc/11/ns/net"})
    assert rec.apply(plan_spec()) == {}
    assert "ns/fw" in dp.pods


def test_attach_error_is_reported_not_raised() -> None:
    rec, dp = make()
    dp.fail_attach.add("ns/client")
    failures = rec.apply(plan_spec())
    assert failures == {"ns/client": "attach failed: cannot attach ns/client"}
    assert "ns/client" not in dp.policies


def test_replaced_pod_with_same_name_is_reattached() -> None:
    rec, dp = make()
    rec.apply(plan_spec())
    spec = plan_spec()
    spec["pods"][1] = {**spec["pods"][1], "uid": "u2-new", "ip": "10.0.0.9"}
    rec.apply(spec)
    assert ("detach_pod", "ns/fw") in dp.calls
    assert dp.pods["ns/fw"] == ("/proc/11/ns/net", "10.0.0.9")


def test_fib_trie_parsing(tmp_path: Path) -> None:
    trie = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.88.0.0
        /24 link UNICAST
     |-- 10.88.0.7
        /32 host LOCAL
"""
    assert netns._has_local_ip(trie, "10.88.0.7")
    assert not netns._has_local_ip(trie, "10.88.0.0")
    assert not netns._has_local_ip(trie, "10.88.0.70")
    proc = tmp_path / "proc"
    for pid, ip in ((5, "10.88.0.5"), (7, "10.88.0.7")):
        (proc / str(pid) / "net").mkdir(parents=True)
        (proc / str(pid) / "ns").mkdir()
        (proc / str(pid) / "ns" / "net").write_text(str(pid))  # distinct inodes
        (proc / str(pid) / "net" / "fib_trie").write_text(trie.replace("10.88.0.7", ip))
    found = netns.ProcScanResolver(proc).resolve(PodRef("ns", "p", "u", "10.88.0.7"))
    assert found == str(proc / "7" / "ns" / "net")


def test_docker_resolver_uses_container_pid(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n[ \"$4\" = abc ] && echo 42 || exit 1\n")
    fake.chmod(0o755)
    (tmp_path / "42" / "ns").mkdir(parents=True)
    (tmp_path / "42" / "ns" / "net").write_text("")
    r = netns.DockerResolver(docker=str(fake), proc=tmp_path)
    assert r.resolve(PodRef("ns", "p", "u", "1.2.3.4", ("docker://abc",))) == \
        str(tmp_path / "42" / "ns" / "net")
    assert r.resolve(PodRef("ns", "p", "u", "1.2.3.4", ("containerd://abc",))) is None


def test_keys_loaded_from_directory_and_reloaded_on_rotation(tmp_path: Path) -> None:
    (tmp_path / "key-1").write_bytes(b"a" * 32)
    (tmp_path / "current").write_text("1")
    dp = RecordingDataPlane()
    agent = NodeAgent("n1", FakeApi(), dp, StaticResolver({}), keys_dir=tmp_path)
    agent.step()
    assert dp.keys == ({1: b"a" * 32}, 1)
    agent.step()
    assert [c for c in dp.calls if c[0] == "set_keys"] == [("set_keys", ([1], 1))]
    (tmp_path / "key-2").write_bytes(b"b" * 32)
    (tmp_path / "current").write_text("2\n")
    agent.step()
    assert dp.keys == ({1: b"a" * 32, 2: b"b" * 32}, 2)
    (tmp_path / "current").write_text("3")  # broken edit: previous keys stay in force
    agent.step()
    assert dp.keys[1] == 2 and agent.keys_error is not None
    assert "no key-3 file" in agent.keys_error


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    from dysco.k8s.keys import BadKeys, load_keys
    (tmp_path / "key-1").write_bytes(b"short")
    (tmp_path / "current").write_text("1")
    with pytest.raises(BadKeys, match="at least 16 bytes"):
        load_keys(tmp_path)
    (tmp_path / "key-1").write_bytes(b"x" * 16)
    (tmp_path / "key-300").write_bytes(b"x" * 16)
    with pytest.raises(BadKeys, match=r"1\.\.255"):
        load_keys(tmp_path)


class FakeApi:
    """Just enough of CustomObjectsApi for NodeAgent.step() (no watch thread)."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_cluster_custom_object_status(self, g: str, v: str, p: str, name: str,
                                           body: dict[str, Any]) -> None:
        self.patches.append(body)


def test_agent_step_reports_status_and_serves_read_only_http() -> None:
    api = FakeApi()
    dp = RecordingDataPlane()
    agent = NodeAgent("n1", api, dp, StaticResolver({"ns/client": "/p/1", "ns/fw": "/p/2"}),
                      agent_id="agent-x")
    agent._set_latest({"metadata": {"name": "n1", "generation": 4}, "spec": plan_spec(3)})
    agent._listed = True
    dp.session_counts = {("ns/web", 3): 7}
    dp.reconfig_counts = {("ns/web", 3): (5, 1)}
    dp.rejection_counts = {"half_open_full": 12}
    dp.hop_failure_counts = {"detected": 2}
    dp.fastpath_counts = {"end_host_sessions": 5, "middlebox_sessions": 0,
                          "unavailable_pods": 1, "refused_sessions": 3}
    dp.reconfig_durations = [0.02, 0.3]
    server = agent.serve_http("127.0.0.1", 0)
    port = server.server_address[1]
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert err.value.code == 503
        agent.step()
        st = api.patches[-1]["status"]
        assert st["observedRevision"] == 3 and st["agent"] == "agent-x"
        assert st["sessions"] == [{"chain": "ns/web", "revision": 3, "count": 7}]
        assert st["reconfigurations"] == [{"chain": "ns/web", "revision": 3, "done": 5,
                                           "failed": 1}]
        assert st["rejected"] == {"half_open_full": 12}
        assert st["hopFailures"] == {"detected": 2}
        assert st["conditions"][0]["type"] == "Applied"
        assert st["conditions"][0]["observedGeneration"] == 4
        agent.step()
        assert len(api.patches) == 1  # nothing changed: no write
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'dysco_active_sessions{chain="ns/web",revision="3"} 7.0' in text
        assert 'dysco_reconfigurations_total{chain="ns/web",result="failed",revision="3"} 1.0' \
            in text
        assert "dysco_agent_plan_revision 3.0" in text
        assert 'dysco_agent_rejected_total{reason="half_open_full"} 12.0' in text
        assert 'dysco_agent_hop_failures_total{how="detected"} 2.0' in text
        assert 'dysco_agent_offloaded_sessions{role="end_host"} 5.0' in text
        assert "dysco_agent_fastpath_unavailable_pods 1.0" in text
        assert "dysco_agent_fastpath_refused_sessions 3.0" in text
        assert "dysco_reconfiguration_duration_seconds_count 2.0" in text
        assert 'dysco_reconfiguration_duration_seconds_bucket{le="0.025"} 1.0' in text
        assert dp.reconfig_durations == []  # taken once, not observed again
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 501  # read-only
    finally:
        server.shutdown()
        server.server_close()
    json.dumps(api.patches)  # status is plain JSON


def test_cli_parser_and_dataplane_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    parser = argparse.ArgumentParser(prog="dysco")
    add_agent_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", "--dataplane", "record", "--http-port", "0"])
    assert args.node_name == "node-7" and args.http_bind_address == "127.0.0.1"
    assert callable(args.func)
    assert isinstance(load_dataplane("record"), RecordingDataPlane)
    with pytest.raises(SystemExit, match="cannot load data plane"):
        load_dataplane("no.such.module:factory")


def test_limits_from_the_environment() -> None:
    from dysco.dataplane.k8s import limits_from_env
    assert limits_from_env({}) == {}
    assert limits_from_env({"DYSCO_MAX_HALF_OPEN": "500", "DYSCO_HANDSHAKE_TIMEOUT": "2.5",
                            "DYSCO_MAX_SESSIONS": " "}) == {
        "max_half_open": 500, "handshake_timeout": 2.5}
    with pytest.raises(ValueError, match="DYSCO_MAX_SESSIONS='many' is not a int"):
        limits_from_env({"DYSCO_MAX_SESSIONS": "many"})
    with pytest.raises(ValueError, match="must be positive"):
        limits_from_env({"DYSCO_CONTROL_RATE": "0"})


def test_content_delta_of_a_proxy_pod_is_passed_on_and_cleared() -> None:
    rec, dp = make()
    spec = plan_spec()
    spec["pods"][1]["contentDelta"] = {"leftToRight": 27, "rightToLeft": -5}
    rec.apply(spec)
    kinds = [c[0] for c in dp.calls]
    assert kinds.index("set_content_delta") > kinds.index("attach_pod")
    assert dp.content_deltas == {"ns/fw": (27, -5)}
    n = len(dp.calls)
    rec.apply(spec)
    assert len(dp.calls) == n
    rec.apply(plan_spec())  # annotation removed
    assert dp.content_deltas == {"ns/fw": (0, 0)}


def test_shutdown_ends_the_main_loop_at_once() -> None:
    """SIGTERM's `shutdown` does not wait for the next status step: the agent's successor
    (a rolling upgrade) starts only when this one is gone."""
    agent = NodeAgent("n1", FakeApi(), RecordingDataPlane(), StaticResolver({}),
                      status_interval=60)
    loop = threading.Thread(target=agent.run)
    loop.start()
    time.sleep(0.2)
    t = time.monotonic()
    agent.shutdown()
    loop.join(5)
    assert not loop.is_alive()
    assert time.monotonic() - t < 2


def test_node_addresses_are_exempt_candidates() -> None:
    from dysco.dataplane.k8s import node_addresses
    addrs = node_addresses()
    assert addrs, "no address but loopback's"
    assert addrs == tuple(sorted(set(addrs)))
    assert not any(a.startswith("127.") for a in addrs)
    assert all(len(a.split(".")) == 4 for a in addrs)


def test_demo_batches_get_fresh_labels() -> None:
    """A batch is known by its label: a reused one would count an earlier batch's
    sessions (the cause of the first 100-session rollout test's timeout)."""
    from dysco.demo.driver import fresh
    assert fresh("rollout", set()) == "rollout"
    assert fresh("rollout", {"rollout", "rollout-2", "long"}) == "rollout-3"
