"""The contract between the Kubernetes glue and the data plane.

Everything the data plane needs from Kubernetes arrives through `DataPlane` (a Protocol:
any object with these methods works); everything Kubernetes wants to know comes back
through `sessions()` and `reconfigurations()`. All calls come from one thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Hop:
    """One hop of a chain: instance IPs (dotted quads) in the operator's order."""

    name: str
    instances: tuple[str, ...]
    kind: str = "transparent"  # transparent | proxy | nat
    instance_choice: str = "roundRobin"  # roundRobin | hash | leastSessions
    optional: bool = False


@dataclass(frozen=True)
class Chain:
    """A chain as the node sees it (for middleboxes that must find a replacement)."""

    name: str  # "<namespace>/<name>" of the ServiceChain
    revision: int
    hops: tuple[Hop, ...]
    update_policy: str = "live"  # live | newSessionsOnly
    on_delete: str = "bypass"  # bypass | close: what to do with live sessions on removal
    drain_timeout_seconds: int = 30


@dataclass(frozen=True)
class Policy:
    """Sessions from a source pod to one of `destinations` traverse `chain.hops`."""

    chain: Chain
    destinations: tuple[tuple[str, tuple[int, ...]], ...] = field(default=())
    """(destination IP, ports) pairs the policy matches."""

    @property
    def revision(self) -> int:
        return self.chain.revision


@runtime_checkable
class DataPlane(Protocol):
    """What the node agent calls. Implementations must be idempotent.

    - ``attach_pod``: start intercepting in the pod's netns (``netns_path`` is a file such
      as ``/proc/<pid>/ns/net`` that can be passed to setns(2) or bind-mounted); ``ip`` is
      the pod's IPv4 address, i.e. the Dysco host address.
    - ``detach_pod``: stop intercepting; live sessions of the pod follow its chains'
      ``on_delete`` (the data plane may keep intercepting until they have ended, so
      that none is cut).
    - ``set_chains``: every chain with a participant on this node (middleboxes use it to
      pick a replacement instance when they are drained, and to make the edits anchored
      at them when a ``live`` chain's revision grows).
    - ``set_policies``: the complete policy list of a source pod. A policy whose chain
      revision grew reconfigures live sessions when ``update_policy == "live"``; a policy
      that disappeared is handled according to its last ``on_delete``.
    - ``drain_instance``: move every live session off middlebox ``ip`` (replace it with
      another instance of the same hop, or bypass an optional hop without instances)
      before ``deadline`` (UNIX time). Calling it again updates the deadline.
    - ``cancel_drain``: the instance is serving again (it became ready).
    - ``set_content_delta``: pod ``pod_key`` is a TCP-terminating proxy that adds these
      many bytes per direction to every session it carries ((0, 0): none); called after
      ``attach_pod``, before the pod's sessions may be spliced out or replaced.
    - ``set_keys``: control-message keys (id -> secret) and the id to send with; called
      before the first attach and whenever the mounted Secret changes (rotation).
    - ``sessions``: live sessions by (chain, revision), summed over the attached pods.
    - ``reconfigurations``: cumulative (done, failed) by (chain, target revision).
    - ``rejections``: cumulative inputs refused, by reason (a limit reached, malformed or
      unauthenticated input); ``limits``: the resource limits in force, by name.
    - ``hop_failures``: cumulative session ends reset because a hop of their path died,
      by how the end learnt it ("detected": no acks; "aborted": told by the other end).
    - ``fastpath``: the kernel fast path over the attached pods, now:
      ``end_host_sessions`` and ``middlebox_sessions`` (sessions the kernel rewrites),
      ``unavailable_pods`` (the fast path could not be set up: every session there stays
      on NFQUEUE), ``refused_sessions`` (the kernel refused a session's state: it stayed
      on NFQUEUE).
    - ``take_reconfiguration_durations``: seconds each reconfiguration finished since the
      last call took (start to done, at its left anchor); the list is emptied.
    - ``suspend``: the agent is stopping for a successor on this node (restart, rolling
      upgrade): keep intercepting rules in place (packets are dropped, never passed
      unrewritten, until the successor attaches) and leave the sessions' state where the
      successor's ``attach_pod`` restores it; returns how many pods were saved.
    """

    def attach_pod(self, pod_key: str, netns_path: str, ip: str) -> None: ...
    def detach_pod(self, pod_key: str) -> None: ...
    def set_chains(self, chains: Sequence[Chain]) -> None: ...
    def set_policies(self, pod_key: str, policies: Sequence[Policy]) -> None: ...
    def drain_instance(self, ip: str, deadline: float) -> None: ...
    def cancel_drain(self, ip: str) -> None: ...
    def set_content_delta(self, pod_key: str, left_to_right: int,
                          right_to_left: int) -> None: ...
    def set_keys(self, keys: Mapping[int, bytes], current: int) -> None: ...
    def sessions(self) -> Mapping[tuple[str, int], int]: ...
    def reconfigurations(self) -> Mapping[tuple[str, int], tuple[int, int]]: ...
    def rejections(self) -> Mapping[str, int]: ...
    def limits(self) -> Mapping[str, float]: ...
    def hop_failures(self) -> Mapping[str, int]: ...
    def fastpath(self) -> Mapping[str, int]: ...
    def take_reconfiguration_durations(self) -> Sequence[float]: ...
    def suspend(self) -> int: ...


class RecordingDataPlane:
    """A data plane that only records what it is told (tests, ``--dataplane=record``)."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, str]] = {}
        self.policies: dict[str, tuple[Policy, ...]] = {}
        self.chains: tuple[Chain, ...] = ()
        self.draining: dict[str, float] = {}
        self.calls: list[tuple[str, object]] = []
        self.session_counts: dict[tuple[str, int], int] = {}
        self.reconfig_counts: dict[tuple[str, int], tuple[int, int]] = {}
        self.rejection_counts: dict[str, int] = {}
        self.hop_failure_counts: dict[str, int] = {}
        self.fastpath_counts: dict[str, int] = {}
        self.reconfig_durations: list[float] = []
        self.fail_attach: set[str] = set()
        self.keys: tuple[dict[int, bytes], int] | None = None
        self.content_deltas: dict[str, tuple[int, int]] = {}

    def attach_pod(self, pod_key: str, netns_path: str, ip: str) -> None:
        if pod_key in self.fail_attach:
            raise RuntimeError(f"cannot attach {pod_key}")
        self.calls.append(("attach_pod", (pod_key, netns_path, ip)))
        self.pods[pod_key] = (netns_path, ip)

    def detach_pod(self, pod_key: str) -> None:
        self.calls.append(("detach_pod", pod_key))
        self.pods.pop(pod_key, None)
        self.policies.pop(pod_key, None)

    def set_chains(self, chains: Sequence[Chain]) -> None:
        self.calls.append(("set_chains", tuple(chains)))
        self.chains = tuple(chains)

    def set_policies(self, pod_key: str, policies: Sequence[Policy]) -> None:
        self.calls.append(("set_policies", (pod_key, tuple(policies))))
        self.policies[pod_key] = tuple(policies)

    def drain_instance(self, ip: str, deadline: float) -> None:
        self.calls.append(("drain_instance", (ip, deadline)))
        self.draining[ip] = deadline

    def cancel_drain(self, ip: str) -> None:
        self.calls.append(("cancel_drain", ip))
        self.draining.pop(ip, None)

    def set_content_delta(self, pod_key: str, left_to_right: int,
                          right_to_left: int) -> None:
        self.calls.append(("set_content_delta", (pod_key, left_to_right, right_to_left)))
        self.content_deltas[pod_key] = (left_to_right, right_to_left)

    def set_keys(self, keys: Mapping[int, bytes], current: int) -> None:
        self.calls.append(("set_keys", (sorted(keys), current)))
        self.keys = (dict(keys), current)

    def sessions(self) -> Mapping[tuple[str, int], int]:
        return dict(self.session_counts)

    def reconfigurations(self) -> Mapping[tuple[str, int], tuple[int, int]]:
        return dict(self.reconfig_counts)

    def rejections(self) -> Mapping[str, int]:
        return dict(self.rejection_counts)

    def limits(self) -> Mapping[str, float]:
        return {}

    def hop_failures(self) -> Mapping[str, int]:
        return dict(self.hop_failure_counts)

    def fastpath(self) -> Mapping[str, int]:
        return dict(self.fastpath_counts)

    def take_reconfiguration_durations(self) -> Sequence[float]:
        out, self.reconfig_durations = self.reconfig_durations, []
        return out

    def suspend(self) -> int:
        self.calls.append(("suspend", ()))
        return len(self.pods)
