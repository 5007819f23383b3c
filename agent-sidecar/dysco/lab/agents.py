"""Dysco agents for lab pods: the data-plane runtime with the real core, in a thread.

In a cluster the node agent runs the runtime; in the lab a scenario does, for just the
pods it needs, and sends the core commands an operator or a middlebox would send.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from dysco.core import Agent, AgentConfig, Hop, Policy, persist
from dysco.core import commands as cmd
from dysco.core.events import Event, ReconfigDone, ReconfigFailed
from dysco.dataplane.runtime import Pod, PodSpec, Runtime, ip_to_int

from . import control
from .topology import Lab

# Control-message timeouts of the lab's agents. The core's 0.2 s defaults suit a fast
# data plane; here one Python loop serves every pod on a shared 2-core machine, and
# with hundreds of sessions reconfigured at once a message may wait longer than that
# in the loop, so the defaults retransmit spuriously, which adds load and slows
# everything (200 sessions: 4 s instead of 0.4-1.2 s, and stalls).
LAB_TIMEOUT = 0.5

# where a restarting agent keeps its snapshot (tmpfs, like a node's /run)
SNAPSHOT_DIR = Path("/dev/shm")


class LabAgents:
    """Attach agents to `pods` (short names) on enter; detach them all on exit."""

    def __init__(self, lab: Lab, pods: list[str], backend: str = "raw",
                 serve: bool = True, fastpath: bool = True, mbfast: bool = True) -> None:
        self.lab = lab
        self.pods = pods
        self.tracker = control.Tracker()
        self.serve = serve
        self._server: control.Server | None = None
        # control messages are authenticated as in a cluster, with a key of this run
        self.keys = ((1, os.urandom(32)),)
        self.runtime = Runtime(self._agent, backend=backend, fastpath=fastpath,
                               mbfast=mbfast)
        self.runtime.on_notify = self._on_notify
        self._reactions: list[tuple[str, type, Callable[[], cmd.Command]]] = []
        self._thread = threading.Thread(target=self.runtime.run, name="dysco-runtime",
                                        daemon=True)

    def _config(self, spec: PodSpec) -> AgentConfig:
        return AgentConfig(address=ip_to_int(spec.address),
                           control_port=self.runtime.control_port,
                           keys=self.keys, current_key=1, lock_timeout=LAB_TIMEOUT,
                           syn_timeout=LAB_TIMEOUT, ack_timeout=LAB_TIMEOUT,
                           complete_timeout=LAB_TIMEOUT, cancel_timeout=LAB_TIMEOUT)

    def _agent(self, spec: PodSpec) -> Agent:
        return Agent(self._config(spec))

    def __enter__(self) -> LabAgents:
        try:
            for short in self.pods:
                pod = self.lab.pod(short)
                self.runtime.add_pod(PodSpec(pod.name, pod.ip))
            if self.serve:
                self._server = control.Server(control.socket_path(self.lab.prefix),
                                              self._execute_order, self.tracker)
        except BaseException:
            self.runtime.close()
            raise
        self._thread.start()
        self.runtime.started.wait(10)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
        self.runtime.stop()
        self._thread.join()
        self.runtime.close()

    def react(self, short: str, event: type, make: Callable[[], cmd.Command]) -> None:
        """Whenever pod `short`'s agent notifies `event`, run the command `make()` at once,
        in the loop, before the next packet: what a middlebox app does through its agent
        API (a proxy reporting its content delta when a session opens). Set before
        entering."""
        self._reactions.append((self.lab.pod(short).name, event, make))

    def _on_notify(self, pod: Pod, event: Event) -> None:
        if isinstance(event, ReconfigDone) and event.role == "left":
            self.tracker.on_done(event.started, event.finished)
        elif isinstance(event, ReconfigFailed) and event.final:
            self.tracker.on_failed()
        for ns, kind, make in self._reactions:
            if pod.spec.ns == ns and isinstance(event, kind):
                self.runtime.execute_command(pod, make())

    def short(self, name: str) -> str:
        """A pod's short name from its short or namespace name (or IP)."""
        for pod in self.lab.pods():
            if name in (pod.short, pod.name, pod.ip):
                return pod.short
        raise KeyError(f"no pod {name!r} in lab {self.lab.prefix}")

    def ip(self, short: str) -> int:
        return ip_to_int(self.lab.pod(self.short(short)).ip)

    def _execute_order(self, order: control.Order) -> tuple[str, int]:
        """Run a `dysco chain` order in the loop; the number of sessions it concerns."""
        target = self.short(order.target())
        ns = self.lab.pod(target).name
        command = order.command(self.ip)
        if ns not in self.runtime.pods:
            raise KeyError(f"pod {target} has no running agent here")

        def job() -> int:
            pod = self.runtime.pods[ns]
            matched = _matching(pod.processor, command)
            self.runtime.execute_command(pod, command)
            return matched
        return ns, self.runtime.call(job)

    def order(self, order: control.Order) -> dict[str, Any]:
        """Give an order through the control socket, as `dysco chain` does."""
        return control.send(control.socket_path(self.lab.prefix), order)

    def restart(self, short: str, gap: float = 0.2) -> dict[str, Any]:
        """Restart pod `short`'s agent: stop it (its rules stay, so packets are dropped),
        write its snapshot to tmpfs, wait `gap` s, restore a new core from the file and
        attach it again."""
        ns = self.lab.pod(short).name
        path = SNAPSHOT_DIR / f"{ns}.snapshot.json"
        spec_ip = self.lab.pod(short).ip

        def stop() -> tuple[int, int]:
            processor = self.runtime.suspend_pod(ns)
            assert isinstance(processor, Agent)
            text = json.dumps(persist.snapshot(processor))
            path.write_text(text)
            return len(processor.sessions), len(text)
        t0 = time.monotonic()
        sessions, size = self.runtime.call(stop)
        time.sleep(gap)
        spec = PodSpec(ns, spec_ip)

        def start() -> None:
            data = json.loads(path.read_text())
            agent = persist.restore(self._config(spec), data, self.runtime.clock())
            self.runtime.add_pod(spec, agent)
        try:
            self.runtime.call(start)
        finally:
            path.unlink(missing_ok=True)
        return {"sessions": sessions, "down_s": round(time.monotonic() - t0, 3),
                "snapshot_bytes": size}

    def command(self, short: str, command: cmd.Command) -> None:
        self.runtime.submit(self.lab.pod(short).name, command)

    def set_chain(self, client: str, server: str, hops: list[str], ports: set[int]) -> None:
        """Sessions from `client` to `server` on `ports` go through `hops` in order."""
        policy = Policy("lab", frozenset({self.ip(server)}),
                        tuple(Hop(h, (self.ip(h),)) for h in hops), frozenset(ports))
        self.command(client, cmd.SetPolicies((policy,)))

    def notifications(self) -> collections.Counter[str]:
        """Notification counts summed over all pods (SessionOpened, ReconfigDone...)."""
        total: collections.Counter[str] = collections.Counter()
        for pod in list(self.runtime.pods.values()):
            total.update(pod.stats.notifications)
        return total

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-pod runtime counters keyed by short pod name."""
        names = {self.lab.pod(s).name: s for s in self.pods}
        return {names[ns]: v for ns, v in self.runtime.call(self.runtime.stats).items()}


def _matching(processor: Any, command: cmd.Command) -> int:
    """How many of the core's sessions `command` concerns (for waiting on completion)."""
    if not isinstance(processor, Agent) or not isinstance(
            command, (cmd.InsertRight, cmd.ReplaceSelf)):
        return 0
    count = 0
    for s in list(processor.sessions.values()):
        if s.torn or not command.selector.matches(s.tuple4(), s.policy):
            continue
        needs_left = isinstance(command, cmd.ReplaceSelf)
        if s.right is not None and (s.left is not None or not needs_left):
            count += 1
    return count
