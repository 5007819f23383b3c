"""API server (or operator) down: the data plane keeps working on its last plan.

A node agent (`NodeAgent` with the real `NodeDataPlane` on lab pods) reaches the private
apiserver through a TCP proxy; the proxy is cut mid-transfer (connections reset, new
ones refused), as when the apiserver dies or the node is cut off from it. The chained
sessions must keep flowing and new sessions must still get the chain. Needs root.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes import client

from dysco.dataplane.k8s import NodeDataPlane
from dysco.k8s.agent import NodeAgent
from dysco.k8s.netns import StaticResolver
from dysco.lab import scenarios
from dysco.lab.topology import Lab
from dysco.middleboxes.firewall import Firewall

from .conftest import AGENT_TOKEN, ApiServer, free_port
from .helpers import GROUP, VERSION, api_client, apply_crds, rbac_for_users, wait_for

NODE = "outage-node"


class CuttableProxy:
    """A TCP forwarder to the apiserver that can be cut: `cut()` resets every open
    connection and stops listening (clients then get 'connection refused')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.pairs: dict[socket.socket, socket.socket] = {}
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.running:
            for key, _ in self.sel.select(0.1):
                if key.data is None:
                    conn, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    for a, b in ((conn, upstream), (upstream, conn)):
                        self.pairs[a] = b
                        self.sel.register(a, selectors.EVENT_READ, "data")
                    continue
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.pairs[src].sendall(data)
                else:
                    self._close(src)
        for sock in list(self.pairs):
            if sock in self.pairs:  # not closed with its pair already
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                self._close(sock)
        self.sel.unregister(self.listener)
        self.listener.close()

    def _close(self, sock: socket.socket) -> None:
        other = self.pairs.pop(sock, None)
        for s in (sock, other):
            if s is not None:
                self.pairs.pop(s, None)
                self.sel.unregister(s)
                s.close()

    def cut(self) -> None:
        self.running = False
        self.thread.join()


@pytest.fixture()
def lab() -> Iterator[Lab]:
    assert os.geteuid() == 0, "needs root (network namespaces, iptables)"
    lab = Lab(prefix=f"dysco-t{os.getpid()}-ao-")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def test_data_plane_keeps_its_last_plan_without_the_apiserver(
        apiserver: ApiServer, lab: Lab, tmp_path: Path) -> None:
    admin = api_client(apiserver.kubeconfig)
    apply_crds(admin)
    rbac_for_users(admin)
    pods = {short: lab.pod(short) for short in ("client", "server", "mb1")}
    spec: dict[str, Any] = {
        "nodeName": NODE, "revision": 1,
        "chains": [{"name": "ns/fw", "revision": 1,
                    "hops": [{"name": "fw", "instances": [pods["mb1"].ip]}]}],
        "pods": [{"namespace": "ns", "name": short, "uid": f"u-{short}", "ip": pod.ip,
                  "policies": [{"chain": "ns/fw", "revision": 1, "match": {"destinations": [
                      {"ip": pods["server"].ip, "ports": [5001]}]}}] if short == "client"
                  else []}
                 for short, pod in pods.items()],
        "draining": [],
    }
    co = client.CustomObjectsApi(admin)
    co.create_cluster_custom_object(GROUP, VERSION, "dysconodeplans", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
        "metadata": {"name": NODE}, "spec": spec})
    url = urlparse(apiserver.url)
    proxy = CuttableProxy((url.hostname or "127.0.0.1", url.port or 443))
    kubeconfig = apiserver.kubeconfig_for(AGENT_TOKEN, "outage")
    kubeconfig.write_text(kubeconfig.read_text().replace(
        apiserver.url, f"https://127.0.0.1:{proxy.port}"))
    (tmp_path / "key-1").write_bytes(b"k" * 32)
    (tmp_path / "current").write_text("1")
    dp = NodeDataPlane()
    agent = NodeAgent(NODE, client.CustomObjectsApi(api_client(kubeconfig)), dp,
                      StaticResolver({f"ns/{s}": f"/run/netns/{p.name}"
                                      for s, p in pods.items()}),
                      status_interval=0.3, keys_dir=tmp_path)
    fw = Firewall(pods["mb1"].name)
    fw.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: agent.synced and len(agent.reconciler.applied.pods) == 3, 30,
                 "plan applied")
        wait_for(lambda: agent.m_status.labels("success")._value.get() > 0, 30,
                 "status written")
        seen: dict[str, Any] = {}

        def outage() -> None:
            wait_for(lambda: sum(dp.sessions().values()) >= 2, 10, "chained sessions")
            time.sleep(0.5)
            proxy.cut()
            seen["cut_at"] = time.monotonic()
            seen["watch_restarts"] = agent.m_watch._value.get()

        opts = scenarios.Options(bytes=24 << 20, sessions=2, timeout=15, rate=3 << 20)
        first = scenarios.transfer(lab, "client", "server", opts, during=outage)
        assert first["ok"], first["failures"]
        assert time.monotonic() - seen["cut_at"] > 3, "the transfer outlived the cut"
        # the agent noticed: its watch lost the apiserver and keeps retrying
        wait_for(lambda: agent.m_watch._value.get() > seen["watch_restarts"], 10,
                 "watch restarted")
        # new sessions still follow the last plan: they go through mb1's agent
        before = fw.counters()["established_packets"]
        second = scenarios.transfer(lab, "client", "server", scenarios.Options(
            bytes=4 << 20, sessions=2, timeout=15))
        assert second["ok"], second["failures"]
        assert fw.counters()["established_packets"] > before + 100
        opened = dp.runtime.call(lambda: {
            ns: pod.stats.notifications["SessionOpened"] for ns, pod in dp.runtime.pods.items()})
        assert opened[f"/run/netns/{pods['mb1'].name}"] == 4, opened
        assert agent.healthy()
    finally:
        agent.stop.set()
        runner.join(10)
        fw.stop()
        dp.close()
        if proxy.running:
            proxy.cut()
        co.delete_cluster_custom_object(GROUP, VERSION, "dysconodeplans", NODE)
