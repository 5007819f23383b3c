"""The node agent's data plane: `dysco.k8s.interface.DataPlane` on top of the runtime.

The Kubernetes glue tells us which pods take part (by namespace file and IP), their
chains and policies, and which middlebox instances drain; we keep one runtime with one
core Agent per attached pod, turn policies into core `SetPolicies`, drains into the
middlebox's `ReplaceSelf`, and count sessions and reconfigurations for its status.

Not implemented yet: reconfiguring live sessions when a chain's revision grows
(``update_policy == "live"``) and ``on_delete`` for detached policies; new sessions
always follow the newest policies.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Mapping, Sequence

from dysco.core import Agent, AgentConfig, Hop, Policy, Selector
from dysco.core import commands as cmd
from dysco.core.events import Event, ReconfigDone, ReconfigFailed
from dysco.k8s import interface as k8s

from .runtime import Pod, PodSpec, Runtime, ip_to_int

log = logging.getLogger(__name__)
Key = tuple[str, int]


def core_policies(policies: Sequence[k8s.Policy]) -> tuple[Policy, ...]:
    """One core policy per (chain, port set): the core matches one port set per policy."""
    out = []
    for p in policies:
        by_ports: dict[frozenset[int], set[int]] = collections.defaultdict(set)
        for ip, ports in p.destinations:
            by_ports[frozenset(ports)].add(ip_to_int(ip))
        hops = tuple(Hop(h.name, tuple(ip_to_int(i) for i in h.instances))
                     for h in p.chain.hops)
        for port_set, dsts in sorted(by_ports.items(), key=lambda kv: sorted(kv[0])):
            out.append(Policy(p.chain.name, frozenset(dsts), hops, port_set, p.chain.revision))
    return tuple(out)


class NodeDataPlane:
    """All pods of one node, served by one runtime thread."""

    def __init__(self, backend: str = "raw", fastpath: bool = True) -> None:
        self.keys: tuple[tuple[int, bytes], ...] = ()
        self.current_key = 0
        self.runtime = Runtime(self._agent, backend=backend, fastpath=fastpath)
        self.runtime.on_notify = self._on_notify
        self.pods: dict[str, PodSpec] = {}
        self.chains: dict[str, k8s.Chain] = {}
        self.draining: dict[str, float] = {}
        self._reconfigs: dict[Key, list[int]] = collections.defaultdict(lambda: [0, 0])
        self._thread = threading.Thread(target=self.runtime.run, name="dysco-dataplane",
                                        daemon=True)
        self._thread.start()
        self.runtime.started.wait()

    def close(self) -> None:
        """Detach every pod (rules and sockets go) and stop the loop."""
        self.runtime.stop()
        self._thread.join()
        self.runtime.close()

    def _agent(self, spec: PodSpec) -> Agent:
        """A pod's core, with the control-message keys known at attach time."""
        return Agent(AgentConfig(address=ip_to_int(spec.address),
                                 control_port=self.runtime.control_port,
                                 keys=self.keys, current_key=self.current_key))

    def set_keys(self, keys: Mapping[int, bytes], current: int) -> None:
        """New keys for pods attached later, and a `SetKeys` for those attached now."""
        self.keys = tuple(sorted(keys.items()))
        self.current_key = current
        for spec in self.pods.values():
            self.runtime.submit(spec.ns, cmd.SetKeys(self.keys, current))

    def attach_pod(self, pod_key: str, netns_path: str, ip: str) -> None:
        spec = PodSpec(netns_path, ip)
        if self.pods.get(pod_key) == spec:
            return
        self.detach_pod(pod_key)
        self.runtime.call(lambda: self.runtime.add_pod(spec))
        self.pods[pod_key] = spec

    def detach_pod(self, pod_key: str) -> None:
        spec = self.pods.pop(pod_key, None)
        if spec is not None:
            self.runtime.call(lambda: self.runtime.remove_pod(spec.ns))

    def set_chains(self, chains: Sequence[k8s.Chain]) -> None:
        self.chains = {c.name: c for c in chains}

    def set_policies(self, pod_key: str, policies: Sequence[k8s.Policy]) -> None:
        spec = self.pods.get(pod_key)
        if spec is None:
            raise KeyError(f"policies for a pod that is not attached: {pod_key}")
        self.runtime.submit(spec.ns, cmd.SetPolicies(core_policies(policies)))

    def drain_instance(self, ip: str, deadline: float) -> None:
        """Ask the middlebox pod `ip` to hand its sessions to another instance of its hop
        (or to leave, if its hop is optional and has no other instance).

        A middlebox's sessions do not know their chain (the SYN list does not carry it),
        so one replacement serves them all: the first other instance of the first hop
        that lists `ip`."""
        first = ip not in self.draining
        self.draining[ip] = deadline
        if not first:
            return
        spec = next((s for s in self.pods.values() if s.address == ip), None)
        if spec is None:
            log.warning("drain of %s: not a pod of this node", ip)
            return
        for chain in self.chains.values():
            for hop in chain.hops:
                if ip not in hop.instances:
                    continue
                others = [i for i in hop.instances if i != ip and i not in self.draining]
                if others or hop.optional:
                    hops = (ip_to_int(others[0]),) if others else ()
                    self.runtime.submit(spec.ns, cmd.ReplaceSelf(Selector(), hops))
                    return
        log.warning("drain of %s: no hop with another instance; sessions stay", ip)

    def cancel_drain(self, ip: str) -> None:
        self.draining.pop(ip, None)

    def sessions(self) -> Mapping[Key, int]:
        def count() -> dict[Key, int]:
            out: collections.Counter[Key] = collections.Counter()
            for pod in self.runtime.pods.values():
                if isinstance(pod.processor, Agent):
                    for s in pod.processor.sessions.values():
                        if s.policy and s.role == "left":
                            out[(s.policy, s.revision)] += 1
            return dict(out)
        return self.runtime.call(count)

    def reconfigurations(self) -> Mapping[Key, tuple[int, int]]:
        return self.runtime.call(lambda: {k: (v[0], v[1]) for k, v in self._reconfigs.items()})

    def _on_notify(self, pod: Pod, event: Event) -> None:
        """Count finished reconfigurations once, at their left anchor."""
        if isinstance(event, ReconfigDone) and event.role == "left":
            slot = 0
        elif isinstance(event, ReconfigFailed) and event.final:
            slot = 1
        else:
            return
        if isinstance(pod.processor, Agent):
            session = pod.processor.session_of(event.session)
            if session is not None and session.policy:
                self._reconfigs[(session.policy, session.revision)][slot] += 1


def create_dataplane() -> NodeDataPlane:
    """Entry point for ``dysco k8s agent --dataplane dysco.dataplane.k8s:create_dataplane``;
    ``DYSCO_NFQ_BACKEND`` picks the NFQUEUE backend (raw, binding); ``DYSCO_FASTPATH=0``
    (``--no-fastpath``) keeps every session on NFQUEUE."""
    return NodeDataPlane(backend=os.environ.get("DYSCO_NFQ_BACKEND", "raw"),
                         fastpath=os.environ.get("DYSCO_FASTPATH", "1") != "0")
