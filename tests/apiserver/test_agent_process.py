"""`python -m dysco.k8s agent` as a real process against the apiserver (its own RBAC user)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from typing import Any

from kubernetes import client

from .conftest import AGENT_TOKEN, ApiServer, free_port
from .helpers import GROUP, VERSION, api_client, apply_crds, rbac_for_users, wait_for

NODE = "proc-node"


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def test_agent_process_applies_its_plan_and_reports(apiserver: ApiServer) -> None:
    admin = api_client(apiserver.kubeconfig)
    apply_crds(admin)
    rbac_for_users(admin)
    co = client.CustomObjectsApi(admin)
    spec: dict[str, Any] = {
        "nodeName": NODE, "revision": 7,
        "chains": [{"name": "ns/c", "revision": 2,
                    "hops": [{"name": "fw", "instances": ["10.99.0.3"]}]}],
        "pods": [{"namespace": "ns", "name": "client", "uid": "u1", "ip": "10.99.0.2",
                  "roles": [{"chain": "ns/c", "role": "source"}],
                  "policies": [{"chain": "ns/c", "revision": 2, "match": {"destinations": [
                      {"ip": "10.99.0.9", "ports": [80]}]}}]}],
        "draining": [],
    }
    co.create_cluster_custom_object(GROUP, VERSION, "dysconodeplans", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
        "metadata": {"name": NODE}, "spec": spec})
    co.create_cluster_custom_object(GROUP, VERSION, "dysconodeplans", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
        "metadata": {"name": "other-node"}, "spec": {"nodeName": "other-node", "revision": 99}})
    port = free_port()
    log = open(apiserver.workdir / "agent-proc.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dysco.k8s", "agent", "--node-name", NODE,
         "--kubeconfig", str(apiserver.kubeconfig_for(AGENT_TOKEN, "agent-proc")),
         "--dataplane", "record", "--netns-resolver", "proc",
         "--http-bind-address", "127.0.0.1", "--http-port", str(port),
         "--status-interval", "0.5"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        def status() -> dict[str, Any]:
            obj = co.get_cluster_custom_object(GROUP, VERSION, "dysconodeplans", NODE)
            return dict(obj.get("status") or {})
        st = wait_for(lambda: status().get("observedRevision") == 7 and status(),
                      what="agent status")
        # 10.99.0.2 is no local address of any process here: reported, not fatal
        assert st["failures"] == [{"pod": "ns/client", "message":
                                   "network namespace of pod ns/client (10.99.0.2) not found"}]
        assert st["conditions"][0]["reason"] == "PodFailures"
        assert st["attachedPods"] == 0
        other = co.get_cluster_custom_object(GROUP, VERSION, "dysconodeplans", "other-node")
        assert "status" not in other  # it watches only its own node's plan
        assert wait_for(lambda: http_get(port, "/readyz")[0] == 200, what="readyz")
        code, text = http_get(port, "/metrics")
        assert code == 200 and "dysco_agent_plan_revision 7.0" in text
        assert 'dysco_agent_plan_applies_total{result="failure"}' in text
        # a new plan revision is picked up from the watch
        obj = co.get_cluster_custom_object(GROUP, VERSION, "dysconodeplans", NODE)
        obj["spec"] = {**spec, "revision": 8, "pods": []}
        co.replace_cluster_custom_object(GROUP, VERSION, "dysconodeplans", NODE, obj)
        st = wait_for(lambda: status().get("observedRevision") == 8 and status(),
                      what="revision 8 applied")
        assert st["failures"] == [] and st["conditions"][0]["reason"] == "Applied"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            rc = -9
        log.close()
    assert rc == 0, (apiserver.workdir / "agent-proc.log").read_text()[-2000:]
