"""The namespace lab: a two-node "cluster" built from network namespaces.

Each node is a namespace that routes like a node with a point-to-point CNI (the ptp
plugin, Calico): every pod has its own veth to its node, a /32 address and a default
route via the node's gateway address 10.200.<node>.1; the nodes route each other's pod
/24 over one veth link (10.201.0.0/24). Real Linux TCP then crosses two routers, as
between two pods on two nodes of a real cluster. Every namespace name starts with the
lab's prefix, so `down` removes exactly what `up` made.

Pods have roles: one endpoint per node (`client` on node 1, `server` on node 2) and
middlebox pods (`mb1`...), which forward (ip_forward=1) like a middlebox needs to.
rp_filter is off everywhere: Dysco rewrites addresses before routing on the input hook,
and a strict reverse-path check would drop such packets (nfqueue-feasibility.md §5.7).
Offloads stay at veth defaults (TSO/GSO on): the data plane handles 64 KiB segments
whole, and turning them off cuts plain goodput by two thirds; `offloads` can change it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from dysco.dataplane import netns

DEFAULT_PREFIX = "dysco-lab-"
NODE_LINK = "nl0"
OFFLOAD_MODES = {
    "default": None,
    "off": ("tso", "off", "gso", "off", "gro", "off"),
    "gro": ("tso", "off", "gso", "off", "gro", "on"),
}


@dataclass(frozen=True)
class Pod:
    name: str
    node: int
    role: str            # "endpoint" or "middlebox"
    short: str           # client, server, mb1, ...
    ip: str
    node_veth: str       # the node-side end of its veth (the pod side is eth0)


@dataclass(frozen=True)
class Lab:
    """A lab layout; `up()` makes it real, `down()` removes it."""

    prefix: str = DEFAULT_PREFIX
    middleboxes_per_node: int = 2
    offloads: str = "default"
    nodes: tuple[int, int] = field(default=(1, 2), init=False)

    def node_ns(self, node: int) -> str:
        return f"{self.prefix}node{node}"

    @staticmethod
    def node_link_ip(node: int) -> str:
        return f"10.201.0.{node}"

    @staticmethod
    def gateway(node: int) -> str:
        return f"10.200.{node}.1"

    def pods(self) -> list[Pod]:
        pods = []
        mb = 0
        for node in self.nodes:
            shorts = ["client" if node == 1 else "server"]
            for _ in range(self.middleboxes_per_node):
                mb += 1
                shorts.append(f"mb{mb}")
            for k, short in enumerate(shorts):
                pods.append(Pod(name=f"{self.prefix}{short}", node=node,
                                role="endpoint" if k == 0 else "middlebox", short=short,
                                ip=f"10.200.{node}.{k + 2}", node_veth=f"v{short}"))
        return pods

    def pod(self, short: str) -> Pod:
        for pod in self.pods():
            if pod.short == short:
                return pod
        raise KeyError(f"no pod {short!r} in this lab")

    def namespaces(self) -> list[str]:
        return [self.node_ns(n) for n in self.nodes] + [p.name for p in self.pods()]

    def is_up(self) -> bool:
        return all(netns.exists(name) for name in self.namespaces())

    def up(self) -> None:
        """Build the lab; a complete lab is left as it is, a partial one is rebuilt."""
        if self.is_up():
            return
        self.down()
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        off = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}
        for node in self.nodes:
            ns = self.node_ns(node)
            netns.add(ns)
            netns.sysctl(ns, {**off, "net.ipv4.ip_forward": "1"})
        a, b = (self.node_ns(n) for n in self.nodes)
        _ip("link", "add", NODE_LINK, "netns", a, "type", "veth",
            "peer", "name", NODE_LINK, "netns", b)
        for node in self.nodes:
            ns = self.node_ns(node)
            _ip("-n", ns, "addr", "add", f"{self.node_link_ip(node)}/24", "dev", NODE_LINK)
            _ip("-n", ns, "link", "set", NODE_LINK, "up")
            other = 3 - node
            _ip("-n", ns, "route", "add", f"10.200.{other}.0/24",
                "via", self.node_link_ip(other), "dev", NODE_LINK)
        for pod in self.pods():
            self._add_pod(pod, off)
        self._set_offloads()

    def _add_pod(self, pod: Pod, off: dict[str, str]) -> None:
        node = self.node_ns(pod.node)
        gw = self.gateway(pod.node)
        netns.add(pod.name)
        forward = "1" if pod.role == "middlebox" else "0"
        netns.sysctl(pod.name, {**off, "net.ipv4.ip_forward": forward})
        _ip("link", "add", pod.node_veth, "netns", node, "type", "veth",
            "peer", "name", "eth0", "netns", pod.name)
        _ip("-n", node, "addr", "add", f"{gw}/32", "dev", pod.node_veth)
        _ip("-n", node, "link", "set", pod.node_veth, "up")
        _ip("-n", node, "route", "add", f"{pod.ip}/32", "dev", pod.node_veth)
        _ip("-n", pod.name, "addr", "add", f"{pod.ip}/32", "dev", "eth0")
        _ip("-n", pod.name, "link", "set", "eth0", "up")
        _ip("-n", pod.name, "route", "add", gw, "dev", "eth0", "scope", "link")
        _ip("-n", pod.name, "route", "add", "default", "via", gw, "dev", "eth0")

    def _set_offloads(self) -> None:
        features = OFFLOAD_MODES[self.offloads]
        if features is None:
            return
        for ns, dev in self._links():
            netns.run(ns, ["ethtool", "-K", dev, *features])

    def _links(self) -> list[tuple[str, str]]:
        links = [(self.node_ns(n), NODE_LINK) for n in self.nodes]
        for pod in self.pods():
            links += [(pod.name, "eth0"), (self.node_ns(pod.node), pod.node_veth)]
        return links

    def down(self) -> None:
        """Stop every process inside the lab's namespaces (by PID) and delete them all."""
        names = netns.names(self.prefix)
        victims = [pid for name in names for pid in netns.pids(name)]
        _terminate(victims)
        for name in names:
            netns.delete(name)

    def status(self) -> dict[str, Any]:
        """What exists now, as JSON-ready data (namespaces, addresses, sysctls, processes)."""
        present = set(netns.names(self.prefix))
        entries = []
        for ns in self.namespaces():
            entry: dict[str, Any] = {"name": ns, "present": ns in present}
            if ns in present:
                entry["addresses"] = _addresses(ns)
                entry["ip_forward"] = _read_sysctl(ns, "net/ipv4/ip_forward")
                entry["processes"] = len(netns.pids(ns))
            entries.append(entry)
        extra = sorted(present - set(self.namespaces()))
        pods = {p.name: {"node": self.node_ns(p.node), "role": p.role, "ip": p.ip}
                for p in self.pods()}
        return {"prefix": self.prefix, "up": self.is_up(), "namespaces": entries,
                "pods": pods, "unexpected_namespaces": extra}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _addresses(ns: str) -> dict[str, list[str]]:
    out = netns.run(ns, ["ip", "-j", "addr"]).stdout
    return {link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                             if a.get("family") == "inet"]
            for link in json.loads(out) if link["ifname"] != "lo"}


def _read_sysctl(ns: str, key: str) -> str:
    return netns.run(ns, ["cat", f"/proc/sys/{key}"]).stdout.strip()


def _terminate(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM the given PIDs, then SIGKILL whatever is still alive after `grace` s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False
