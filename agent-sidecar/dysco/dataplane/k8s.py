"""The node agent's data plane: `dysco.k8s.interface.DataPlane` on top of the runtime.

The Kubernetes glue tells us which pods take part (by namespace file and IP), their
chains and policies, and which middlebox instances drain; we keep one runtime with one
core Agent per attached pod, turn policies into core `SetPolicies`, drains into the
middlebox's `ReplaceSelf`, and count sessions and reconfigurations for its status.

Live sessions follow their chain (docs/dataplane.md, "Kubernetes"):

* A chain revision that grows with ``update_policy == "live"`` is turned into hop edits
  (`chain_edits`), each carried out by the agent next to it, because a middlebox kept
  by both revisions cannot be on the old and the new path of one session at once:
  hops inserted in front -> the source pod (`InsertRight`); hops inserted after a kept
  hop -> that hop's instances (`InsertRight` at the middlebox); removed or replaced
  hops -> their instances (`ReplaceSelf`, like a drain). ``newSessionsOnly`` chains
  move nothing.
* A policy that disappears (chain deleted, pod no longer selected) follows the chain's
  last ``on_delete``: ``bypass`` moves the source's sessions onto a direct path,
  ``close`` resets them (both ends get a RST).
* `detach_pod` keeps a pod whose namespace still exists attached until its sessions
  have ended, so sessions are never blackholed by a half-removed chain.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dysco.core import Agent, AgentConfig, Hop, Policy, Selector, persist
from dysco.core import commands as cmd
from dysco.core.events import (
    Event,
    HopFailed,
    ReconfigDone,
    ReconfigFailed,
    Rejected,
    SessionClosed,
    SessionOpened,
)
from dysco.core.state import Session, Tuple4
from dysco.k8s import interface as k8s

from . import netns
from .runtime import Pod, PodSpec, Runtime, int_to_ip, ip_to_int, port_start

log = logging.getLogger(__name__)

# A restart gap longer than this is no restart: the sessions' peers have given up.
STATE_MAX_AGE = 600.0
Key = tuple[str, int]
SWEEP_INTERVAL = 1.0  # seconds between checks whether a detached pod's sessions ended
RESET_BATCH = 64  # sessions per `ss -K` call


def core_policies(policies: Sequence[k8s.Policy]) -> tuple[Policy, ...]:
    """One core policy per (chain, port set): the core matches one port set per policy.

    An optional hop without instances is left out (bypassed)."""
    out = []
    for p in policies:
        by_ports: dict[frozenset[int], set[int]] = collections.defaultdict(set)
        for ip, ports in p.destinations:
            by_ports[frozenset(ports)].add(ip_to_int(ip))
        hops = tuple(Hop(h.name, tuple(ip_to_int(i) for i in h.instances))
                     for h in p.chain.hops if h.instances or not h.optional)
        for port_set, dsts in sorted(by_ports.items(), key=lambda kv: sorted(kv[0])):
            out.append(Policy(p.chain.name, frozenset(dsts), hops, port_set, p.chain.revision))
    return tuple(out)


# Per-pod resource limits of the core (`AgentConfig`), from the DaemonSet's environment
# (chart values `agent.limits`); see docs/security.md.
LIMIT_ENV: dict[str, tuple[str, type[int] | type[float]]] = {
    "DYSCO_MAX_SESSIONS": ("max_sessions", int),
    "DYSCO_MAX_HALF_OPEN": ("max_half_open", int),
    "DYSCO_HANDSHAKE_TIMEOUT": ("handshake_timeout", float),
    "DYSCO_MAX_RECONFIGS": ("max_reconfigs", int),
    "DYSCO_CONTROL_RATE": ("control_rate", float),
    "DYSCO_CONTROL_BURST": ("control_burst", int),
}


def limits_from_env(env: Mapping[str, str]) -> dict[str, float]:
    """The limits set in `env` as `AgentConfig` field values; ValueError names a bad one."""
    out: dict[str, float] = {}
    for var, (name, kind) in LIMIT_ENV.items():
        text = env.get(var, "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{var}={text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise ValueError(f"{var}={text!r} must be positive")
        out[name] = value
    return out


@dataclass(frozen=True)
class Edit:
    """One change of a chain, made by the agent at `anchor` for each live session.

    `anchor` is the old chain's hop whose instances act, or None for the source pod.
    ``insert``: put `hops` right after the anchor (`InsertRight`); ``replace``: the
    anchor hop asks to be replaced by `hops` (`ReplaceSelf`, empty: removed)."""

    anchor: str | None
    op: str  # insert | replace
    hops: tuple[k8s.Hop, ...]


def chain_edits(old: Sequence[k8s.Hop], new: Sequence[k8s.Hop]) -> list[Edit]:
    """The edits that take sessions from the `old` hops to the `new` ones (by hop name;
    a kept hop keeps its instance, instance changes are drains)."""
    names = difflib.SequenceMatcher(a=[h.name for h in old], b=[h.name for h in new],
                                    autojunk=False)
    edits = []
    for tag, i1, i2, j1, j2 in names.get_opcodes():
        added = tuple(new[j1:j2])
        if tag == "insert":
            edits.append(Edit(old[i1 - 1].name if i1 else None, "insert", added))
        elif tag in ("delete", "replace"):
            edits.append(Edit(old[i1].name, "replace", added))
            edits += [Edit(h.name, "replace", ()) for h in old[i1 + 1:i2]]
    return edits


def session_selector(t: Tuple4, policy: str = "") -> Selector:
    """A selector for one session (a core selector matches a port at either end, so two
    sessions between the same hosts whose ports coincide are both chosen)."""
    return Selector(src=frozenset({t[0]}), dst=frozenset({t[1]}),
                    dst_ports=frozenset({t[2]}), policy=policy)


def _open(s: Session) -> bool:
    """Not ended (a closed session lingers a while in the core's tables)."""
    return not s.torn and s.closing_at is None and s.right is not None


class NodeDataPlane:
    """All pods of one node, served by one runtime thread."""

    def __init__(self, backend: str = "raw", limits: Mapping[str, float] | None = None,
                 state_dir: str | None = None, exempt: tuple[str, ...] = (),
                 fastpath: bool = True, mbfast: bool = True) -> None:
        self._limits = dict(limits or {})
        # where `suspend` leaves each pod's core state for the next agent (node tmpfs)
        self.state_dir = Path(state_dir) if state_dir else None
        self.restored = 0  # pods whose state a predecessor left and we carried on from
        self._drop_stale_state()
        self._rejected: collections.Counter[str] = collections.Counter()
        self._hop_failures: collections.Counter[str] = collections.Counter()
        self.keys: tuple[tuple[int, bytes], ...] = ()
        self.current_key = 0
        self.runtime = Runtime(self._agent, backend=backend, exempt=exempt,
                               fastpath=fastpath, mbfast=mbfast)
        self.runtime.on_notify = self._on_notify
        self.pods: dict[str, PodSpec] = {}
        self.policies: dict[str, tuple[k8s.Policy, ...]] = {}
        self.chains: dict[str, k8s.Chain] = {}
        self.draining: dict[str, float] = {}
        self._hop_of: dict[str, tuple[str, str]] = {}  # instance IP -> (chain, hop), ever
        self.content_deltas: dict[str, tuple[int, int]] = {}  # pod ns -> (l2r, r2l)
        # detached pods whose sessions still run (changed in the loop thread only)
        self.leaving: dict[str, PodSpec] = {}
        self._reconfigs: dict[Key, list[int]] = collections.defaultdict(lambda: [0, 0])
        self._durations: list[float] = []  # of finished reconfigurations, not yet taken
        # Loop-thread state: the (chain, revision) a reconfiguration we ordered moves a
        # session to (revision None: off the chain), by (pod ns, session tuple) ...
        self._moves: dict[tuple[str, Tuple4], tuple[str, int | None]] = {}
        # ... and the revision a source pod's sessions of a chain reach when they finish
        # a reconfiguration another agent anchored (a middlebox removing itself).
        self._targets: dict[tuple[str, str], int] = {}
        # ... and edits waiting for middlebox sessions being set up.
        self._waiting: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self.runtime.run, name="dysco-dataplane",
                                        daemon=True)
        self._thread.start()
        self.runtime.started.wait()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="dysco-sweeper",
                                         daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Detach every pod (rules and sockets go) and stop the loop."""
        self._stop.set()
        self._sweeper.join()
        self.runtime.stop()
        self._thread.join()
        self.runtime.close()

    def _agent(self, spec: PodSpec) -> Agent:
        """A pod's core, with the control-message keys known at attach time; it carries
        on from the state a predecessor left for this pod, if any (see `suspend`)."""
        config = AgentConfig(address=ip_to_int(spec.address),
                             control_port=self.runtime.control_port,
                             keys=self.keys, current_key=self.current_key,
                             port_start=port_start(), **self._limits)  # type: ignore[arg-type]
        path = self._state_file(spec)
        if path is None or not path.exists():
            return Agent(config)
        try:
            agent = persist.restore(config, json.loads(path.read_text()), self.runtime.clock())
        except (OSError, ValueError) as exc:  # SnapshotError is a ValueError too
            log.warning("%s: state left by the previous agent not used: %s", spec.ns, exc)
            agent = Agent(config)
        else:
            self.restored += 1
            log.info("%s: carried on with %d sessions of the previous agent", spec.ns,
                     len(agent.sessions))
        path.unlink(missing_ok=True)
        return agent

    def _drop_stale_state(self) -> None:
        """Forget state older than `STATE_MAX_AGE` (its pods are gone, or their sessions
        idled out): it would never be taken and would pile up in the node's /run."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return
        for path in self.state_dir.glob("*.json"):
            try:
                if time.time() - path.stat().st_mtime > STATE_MAX_AGE:
                    path.unlink()
            except OSError as exc:
                log.warning("%s: %s", path, exc)

    def _state_file(self, spec: PodSpec) -> Path | None:
        if self.state_dir is None:
            return None
        name = hashlib.sha256(f"{spec.ns}|{spec.address}".encode()).hexdigest()[:32]
        return self.state_dir / f"{name}.json"

    def suspend(self) -> int:
        """Stop for a successor: each attached pod's queues and sockets close but its
        rules stay (no queue bypass: its TCP packets are dropped, never let through
        unrewritten), and its core's snapshot goes to `state_dir` for the next agent."""
        self._stop.set()
        self._sweeper.join()

        def save() -> int:
            saved = 0
            for ns, pod in list(self.runtime.pods.items()):
                path = self._state_file(pod.spec)
                processor = self.runtime.suspend_pod(ns)
                if path is None or not isinstance(processor, Agent):
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(persist.snapshot(processor)))
                tmp.replace(path)
                saved += 1
            return saved
        saved = self.runtime.call(save)
        self.runtime.stop()
        self._thread.join()
        log.info("suspended: state of %d pods left in %s", saved, self.state_dir)
        return saved

    def set_keys(self, keys: Mapping[int, bytes], current: int) -> None:
        """New keys for pods attached later, and a `SetKeys` for those attached now."""
        self.keys = tuple(sorted(keys.items()))
        self.current_key = current
        for spec in (*self.pods.values(), *list(self.leaving.values())):
            self.runtime.submit(spec.ns, cmd.SetKeys(self.keys, current))

    def attach_pod(self, pod_key: str, netns_path: str, ip: str) -> None:
        spec = PodSpec(netns_path, ip)
        if self.pods.get(pod_key) == spec:
            return
        self.detach_pod(pod_key)

        def add() -> None:
            self.leaving.pop(spec.ns, None)  # back in the plan before its sessions ended
            self.runtime.add_pod(spec)
        self.runtime.call(add)
        self.pods[pod_key] = spec

    def detach_pod(self, pod_key: str) -> None:
        """The pod's chains follow their ``on_delete``; the pod itself stays attached
        until its sessions ended (or its namespace is gone)."""
        spec = self.pods.pop(pod_key, None)
        if spec is None:
            return
        for policy in self.policies.pop(pod_key, ()):
            self._on_delete(spec, policy.chain)

        def leave() -> None:
            self.leaving[spec.ns] = spec
            self._sweep()
        self.runtime.call(leave)

    def set_content_delta(self, pod_key: str, left_to_right: int, right_to_left: int) -> None:
        """Pod `pod_key` is a TCP-terminating proxy that adds (or removes, if negative)
        these many bytes to every session it carries, per direction: each session it
        opens gets a `SetContentDelta`, so it can be spliced out (or replaced) live."""
        spec = self.pods[pod_key]
        if left_to_right or right_to_left:
            self.content_deltas[spec.ns] = (left_to_right, right_to_left)
        else:
            self.content_deltas.pop(spec.ns, None)

    def set_chains(self, chains: Sequence[k8s.Chain]) -> None:
        """Middlebox side of live chain updates: edits anchored at a hop of this node."""
        old, self.chains = self.chains, {c.name: c for c in chains}
        # the plan lists a draining instance under `draining`, no longer in its hop
        self._hop_of.update({ip: (c.name, h.name) for c in chains for h in c.hops
                             for ip in h.instances})
        for name, chain in self.chains.items():
            before = old.get(name)
            if before is None or not self._moves_live(before, chain):
                continue
            by_name = {h.name: h for h in before.hops}
            for edit in chain_edits(before.hops, chain.hops):
                if edit.anchor is None:
                    continue
                for spec in self._local(by_name[edit.anchor].instances):
                    self.runtime.call(functools.partial(
                        self._edit_middlebox, spec.ns, edit, name, chain.revision))

    def set_policies(self, pod_key: str, policies: Sequence[k8s.Policy]) -> None:
        """New sessions follow `policies` at once; live ones are moved (source side of
        live chain updates) or follow ``on_delete`` if their policy disappeared."""
        spec = self.pods.get(pod_key)
        if spec is None:
            raise KeyError(f"policies for a pod that is not attached: {pod_key}")
        old = {p.chain.name: p for p in self.policies.get(pod_key, ())}
        self.policies[pod_key] = tuple(policies)
        self.runtime.submit(spec.ns, cmd.SetPolicies(core_policies(policies)))
        for policy in policies:
            before = old.pop(policy.chain.name, None)
            if before is not None and self._moves_live(before.chain, policy.chain):
                self.runtime.call(functools.partial(
                    self._edit_source, spec.ns, before.chain, policy.chain))
        for gone in old.values():
            self._on_delete(spec, gone.chain)

    @staticmethod
    def _moves_live(before: k8s.Chain, after: k8s.Chain) -> bool:
        return after.revision > before.revision and after.update_policy == "live"

    def _local(self, ips: Iterable[str]) -> list[PodSpec]:
        """The attached pods of this node among `ips`."""
        wanted = set(ips)
        return [s for s in self.pods.values() if s.address in wanted]

    def _instances(self, hops: Sequence[k8s.Hop], n: int) -> tuple[int, ...] | None:
        """The `n`-th session's instances of `hops`, round robin over the instances that
        do not drain; None if a mandatory hop has none."""
        out = []
        for hop in hops:
            live = [i for i in hop.instances if i not in self.draining] or list(hop.instances)
            if live:
                out.append(ip_to_int(live[n % len(live)]))
            elif not hop.optional:
                log.warning("hop %s has no instances: live sessions not moved", hop.name)
                return None
        return tuple(out)

    def _sessions(self, ns: str, role: str, chain: str = "") -> list[Session]:
        """Open sessions of pod `ns` in `role` (of `chain`, for a source)."""
        pod = self.runtime.pods.get(ns)
        if pod is None or not isinstance(pod.processor, Agent):
            return []
        return [s for s in pod.processor.sessions.values()
                if s.role == role and _open(s) and (not chain or s.policy == chain)]

    # --- in the loop thread -----------------------------------------------------------

    def _edit_source(self, ns: str, before: k8s.Chain, after: k8s.Chain) -> None:
        """Move a source pod's sessions of `after.name` to `after.revision`."""
        edits = chain_edits(before.hops, after.hops)
        front = [e for e in edits if e.anchor is None]
        first = before.hops[0].name if before.hops else None
        # A removal or replacement of the first hop makes us its left anchor as well.
        ours = bool(front) or any(e.anchor == first and e.op == "replace" for e in edits)
        pod = self.runtime.pods[ns]
        sessions = [s for s in self._sessions(ns, "left", after.name)
                    if s.revision < after.revision]
        if ours:
            self._targets[(ns, after.name)] = after.revision
        for n, s in enumerate(sessions):
            if not ours:
                s.revision = after.revision  # the middleboxes move it; they count results
            for edit in front:
                hops = self._instances(edit.hops, n)
                if hops is None:
                    continue
                t = s.tuple4()
                self._moves[(ns, t)] = (after.name, after.revision)
                self.runtime.execute_command(pod, cmd.InsertRight(
                    session_selector(t, after.name), hops))

    def _edit_middlebox(self, ns: str, edit: Edit, chain: str, revision: int,
                        only: frozenset[int] | None = None) -> None:
        """Carry out `edit` for every session of middlebox pod `ns` (a middlebox does not
        know its sessions' chains: like a drain, it acts for all of them).

        Sessions still being set up (the middlebox app has not sent their SYN on) get
        the edit once they are, on a later sweep (`only`: their ids)."""
        pod = self.runtime.pods.get(ns)
        if pod is None or not isinstance(pod.processor, Agent):
            return
        setting_up = frozenset(
            s.sid for s in pod.processor.sessions.values()
            if s.role == "middle" and s.right is None and not s.torn and s.closing_at is None
            and (only is None or s.sid in only))
        if setting_up:  # (until they are set up or time out idle)
            self._waiting.append(functools.partial(
                self._edit_middlebox, ns, edit, chain, revision, setting_up))
        sessions = [s for s in self._sessions(ns, "middle") if only is None or s.sid in only]
        for n, s in enumerate(sessions):
            hops = self._instances(edit.hops, n)
            if hops is None:
                continue
            t = s.tuple4()
            if edit.op == "insert":
                if not hops:
                    continue
                self._moves[(ns, t)] = (chain, revision)
                self.runtime.execute_command(pod, cmd.InsertRight(session_selector(t), hops))
                continue
            # our left neighbour anchors the replacement: we count it if it is ours too
            assert s.left is not None
            left = self._local([int_to_ip(s.left.path.peer)])
            if left:
                self._moves[(left[0].ns, t)] = (chain, revision)
            self.runtime.execute_command(pod, cmd.ReplaceSelf(session_selector(t), hops))

    def _bypass(self, ns: str, chain: str) -> None:
        """Move a source pod's sessions of `chain` onto a direct path; they leave the
        chain (and its session counts) once moved."""
        pod = self.runtime.pods.get(ns)
        if pod is None:
            return
        self._targets.pop((ns, chain), None)
        for s in self._sessions(ns, "left", chain):
            t = s.tuple4()
            assert s.right is not None
            if s.right.path.peer == t[1]:
                s.policy = ""  # already direct
                continue
            self._moves[(ns, t)] = (chain, None)
            self.runtime.execute_command(pod, cmd.InsertRight(
                session_selector(t, chain), (), right_anchor=t[1]))

    def _sweep(self) -> None:
        """Retry edits for sessions that were being set up; detach the leaving pods whose
        sessions ended or whose namespace is gone."""
        waiting, self._waiting = self._waiting, []
        for retry in waiting:
            retry()
        for ns, spec in list(self.leaving.items()):
            gone = not netns.exists(spec.ns)
            pod = self.runtime.pods.get(ns)
            if gone or pod is None or not isinstance(pod.processor, Agent) or not any(
                    not s.torn and s.closing_at is None
                    for s in pod.processor.sessions.values()):
                del self.leaving[ns]
                self.content_deltas.pop(ns, None)
                self._moves = {k: v for k, v in self._moves.items() if k[0] != ns}
                self._targets = {k: v for k, v in self._targets.items() if k[0] != ns}
                self.runtime.remove_pod(ns)

    # ----------------------------------------------------------------------------------

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            if self.leaving or self._waiting:
                try:
                    self.runtime.call(self._sweep)
                except Exception:  # keep sweeping: what failed is retried
                    log.exception("sweep failed")

    def _on_delete(self, spec: PodSpec, chain: k8s.Chain) -> None:
        """A source pod's policy for `chain` is gone: bypass or close its sessions."""
        if chain.on_delete == "close":
            tuples = self.runtime.call(
                lambda: [s.tuple4() for s in self._sessions(spec.ns, "left", chain.name)])
            for i in range(0, len(tuples), RESET_BATCH):
                _reset(spec.ns, tuples[i:i + RESET_BATCH])
        else:
            self.runtime.call(lambda: self._bypass(spec.ns, chain.name))

    def drain_instance(self, ip: str, deadline: float) -> None:
        """Ask the middlebox pod `ip` to hand its sessions to another instance of its hop
        (or to leave, if its hop is optional and has no other instance).

        A middlebox's sessions do not know their chain (the SYN list does not carry it),
        so the first hop that lists `ip` (now, or before the plan moved it to the draining
        list) serves them all: they are spread over its other instances
        (`_edit_middlebox`, as for a hop replaced in a chain update)."""
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
                if ip not in hop.instances and self._hop_of.get(ip) != (chain.name, hop.name):
                    continue
                others = tuple(i for i in hop.instances if i != ip and i not in self.draining)
                if others or hop.optional:
                    rest = (dataclasses.replace(hop, instances=others),) if others else ()
                    self.runtime.call(functools.partial(
                        self._edit_middlebox, spec.ns, Edit(hop.name, "replace", rest),
                        chain.name, chain.revision))
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
                        if s.policy and s.role == "left" and _open(s):
                            out[(s.policy, s.revision)] += 1
            return dict(out)
        return self.runtime.call(count)

    def reconfigurations(self) -> Mapping[Key, tuple[int, int]]:
        return self.runtime.call(lambda: {k: (v[0], v[1]) for k, v in self._reconfigs.items()})

    def limits(self) -> Mapping[str, float]:
        """Each pod's core limits (the configured ones and the defaults)."""
        config = AgentConfig(address=1, **self._limits)  # type: ignore[arg-type]
        return {name: getattr(config, name) for name, _ in LIMIT_ENV.values()}

    def rejections(self) -> Mapping[str, int]:
        return self.runtime.call(lambda: dict(self._rejected))

    def hop_failures(self) -> Mapping[str, int]:
        return self.runtime.call(lambda: dict(self._hop_failures))

    def fastpath(self) -> Mapping[str, int]:
        def count() -> dict[str, int]:
            out = dict.fromkeys(("end_host_sessions", "middlebox_sessions",
                                 "unavailable_pods", "refused_sessions"), 0)
            for pod in self.runtime.pods.values():
                for fast, key in ((pod.fast, "end_host_sessions"),
                                  (pod.mbfast, "middlebox_sessions")):
                    if fast is None:
                        continue
                    out[key] += len(fast.installed)
                    out["unavailable_pods"] += fast.stats.unavailable > 0
                    out["refused_sessions"] += fast.stats.failed
            return out
        return self.runtime.call(count)

    def take_reconfiguration_durations(self) -> Sequence[float]:
        def take() -> list[float]:
            out, self._durations = self._durations, []
            return out
        return self.runtime.call(take)

    def _on_notify(self, pod: Pod, event: Event) -> None:
        """Count refused inputs by reason and sessions reset for a dead hop; give proxies'
        sessions their content delta; count finished reconfigurations once, at their left
        anchor, under the (chain, revision) they moved the session to, and move the
        session's revision."""
        if isinstance(event, Rejected):
            self._rejected[event.reason] += 1
            return
        if isinstance(event, HopFailed):
            self._hop_failures[event.how] += 1
            return
        if not isinstance(pod.processor, Agent):
            return
        if isinstance(event, SessionOpened):
            delta = self.content_deltas.get(pod.spec.ns)
            if delta is not None:
                self.runtime.execute_command(pod, cmd.SetContentDelta(
                    session_selector(event.session), *delta))
            return
        if isinstance(event, SessionClosed):  # ended before its reconfiguration did
            self._moves.pop((pod.spec.ns, event.session), None)
            return
        if isinstance(event, ReconfigDone) and event.role == "left":
            slot = 0
        elif isinstance(event, ReconfigFailed) and event.final:
            slot = 1
        else:
            return
        session = pod.processor.session_of(event.session)
        if session is None:
            return
        move = self._moves.pop((pod.spec.ns, session.tuple4()), None)
        if move is None and session.policy:
            target = self._targets.get((pod.spec.ns, session.policy), session.revision)
            move = (session.policy, max(target, session.revision))
        if move is None:
            return
        chain, revision = move
        self._reconfigs[(chain, session.revision if revision is None else revision)][slot] += 1
        if isinstance(event, ReconfigDone):
            self._durations.append(event.finished - event.started)
        if slot == 0 and revision is None:
            session.policy = ""
        elif slot == 0 and revision is not None and session.policy == chain:
            session.revision = revision


def _reset(ns: str, sessions: Sequence[Tuple4]) -> None:
    """Abort the local sockets of `sessions` in pod `ns` (SOCK_DESTROY): the apps get an
    error and the kernel's RSTs, rewritten by the pod's agent, reset the other ends."""
    expr: list[str] = []
    for t in sessions:
        expr += [*(["or"] if expr else []), "(", "src", f"{int_to_ip(t[0])}:{t[2]}",
                 "and", "dst", f"{int_to_ip(t[1])}:{t[3]}", ")"]
    try:
        netns.run(ns, ["ss", "-K", "-t", "-n", *expr])
    except (OSError, subprocess.CalledProcessError) as exc:
        log.warning("%s: could not reset %d sessions: %s", ns, len(sessions), exc)


def node_addresses() -> tuple[str, ...]:
    """The IPv4 addresses of our network namespace but loopback's: the node's, since the
    agent runs with hostNetwork (the source of the kubelet's probes is among them)."""
    out = json.loads(netns.run(None, ["ip", "-4", "-j", "addr", "show"]).stdout)
    return tuple(sorted({a["local"] for link in out for a in link.get("addr_info", ())
                         if not a["local"].startswith("127.")}))


def create_dataplane() -> NodeDataPlane:
    """Entry point for ``dysco k8s agent --dataplane dysco.dataplane.k8s:create_dataplane``;
    ``DYSCO_NFQ_BACKEND`` picks the NFQUEUE backend (raw, binding), `LIMIT_ENV` the
    limits, ``DYSCO_STATE_DIR`` where sessions' state waits for the next agent,
    ``DYSCO_FASTPATH=0`` (``--no-fastpath``) keeps every session on NFQUEUE,
    ``DYSCO_MBFAST=0`` only the middleboxes' (the end hosts' fast path stays). The
    node's addresses are exempt from interception (`rules.Interception`)."""
    return NodeDataPlane(backend=os.environ.get("DYSCO_NFQ_BACKEND", "raw"),
                         limits=limits_from_env(os.environ),
                         state_dir=os.environ.get("DYSCO_STATE_DIR") or None,
                         exempt=node_addresses(),
                         fastpath=os.environ.get("DYSCO_FASTPATH", "1") != "0",
                         mbfast=os.environ.get("DYSCO_MBFAST", "1") != "0")
