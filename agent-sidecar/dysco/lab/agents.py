"""Dysco agents for lab pods: one data-plane runtime with the real core per lab node.

In a cluster every node runs one agent process for the pods on it; the lab does the
same: the agents of node 1's pods run in one process, node 2's in another (forked from
the caller, one thread each serving the runtime's loop), so the two nodes' packets are
handled on two CPUs as they would be on two machines. The caller keeps a handle that
sends the core commands an operator or a middlebox would send, gives `dysco chain`
orders, and collects the reconfiguration completions for `control.Tracker`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from dysco.core import Agent, AgentConfig, Hop, Policy, persist
from dysco.core import commands as cmd
from dysco.core.events import Event, ReconfigDone, ReconfigFailed, Rejected
from dysco.dataplane.runtime import Pod, PodSpec, Runtime, ip_to_int, port_start

from . import control
from .topology import Lab

# Control-message timeouts of the lab's agents. The core's 0.2 s defaults suit a fast
# data plane; here Python loops on a shared 2-core machine serve every pod of a node,
# and with hundreds of sessions reconfigured at once a message may wait longer than
# that in a loop, so the defaults retransmit spuriously, which adds load.
LAB_TIMEOUT = 0.5

# where a restarting agent keeps its snapshot (tmpfs, like a node's /run)
SNAPSHOT_DIR = Path("/dev/shm")

# how long a request to a node's agent process may take before the caller gives up
CALL_TIMEOUT = 60.0

# Scheduling priority (nice) of the node agent processes. A cluster gives its node
# agent a CPU request (a cgroup weight) that pods without one cannot take; the lab's
# processes share one cgroup, so under load the agents waited on the run queue
# 50-90% of the time while their NFQUEUE queues held seconds of packets. The
# environment variable DYSCO_LAB_AGENT_NICE overrides it (0: no priority).
AGENT_NICE = int(os.environ.get("DYSCO_LAB_AGENT_NICE", "-10"))

Reaction = tuple[str, type, Callable[[], cmd.Command]]


class LabAgents:
    """Attach agents to `pods` (short names) on enter; detach them all on exit."""

    def __init__(self, lab: Lab, pods: list[str], backend: str = "raw",
                 serve: bool = True, config: Mapping[str, float] | None = None,
                 fastpath: bool = True, mbfast: bool = True) -> None:
        self.lab = lab
        self.overrides = dict(config or {})  # AgentConfig fields (limits, timeouts)
        self.pods = pods
        self.backend = backend
        self.fastpath = fastpath  # offload steady end-host sessions to conntrack
        self.mbfast = mbfast  # and middlebox sessions to nft maps (with fastpath only)
        self.tracker = control.Tracker()
        self.serve = serve
        self._server: control.Server | None = None
        # control messages are authenticated as in a cluster, with a key of this run
        self.keys = ((1, os.urandom(32)),)
        self._reactions: list[Reaction] = []
        self._nodes: dict[int, _Node] = {}

    def config(self, spec: PodSpec) -> AgentConfig:
        """The core configuration of the agent of pod `spec`."""
        config = AgentConfig(address=ip_to_int(spec.address), keys=self.keys, current_key=1,
                             lock_timeout=LAB_TIMEOUT, syn_timeout=LAB_TIMEOUT,
                             ack_timeout=LAB_TIMEOUT, complete_timeout=LAB_TIMEOUT,
                             cancel_timeout=LAB_TIMEOUT, port_start=port_start())
        return replace(config, **self.overrides)  # type: ignore[arg-type]

    def __enter__(self) -> LabAgents:
        by_node: dict[int, list[PodSpec]] = collections.defaultdict(list)
        for short in self.pods:
            pod = self.lab.pod(short)
            by_node[pod.node].append(PodSpec(pod.name, pod.ip))
        try:
            for node, specs in sorted(by_node.items()):
                self._nodes[node] = _Node(self, specs)
            for handle in self._nodes.values():
                handle.wait_ready()
            if self.serve:
                self._server = control.Server(control.socket_path(self.lab.prefix),
                                              self._execute_order, self.tracker)
        except BaseException:
            self._close_nodes()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
        self._close_nodes()

    def _close_nodes(self) -> None:
        for handle in self._nodes.values():
            handle.close()
        self._nodes.clear()

    def _node(self, short: str) -> _Node:
        node = self.lab.pod(short).node
        if node not in self._nodes:
            raise KeyError(f"pod {short} has no running agent here")
        return self._nodes[node]

    def react(self, short: str, event: type, make: Callable[[], cmd.Command]) -> None:
        """Whenever pod `short`'s agent notifies `event`, run the command `make()` at once,
        in the loop, before the next packet: what a middlebox app does through its agent
        API (a proxy reporting its content delta when a session opens). Set before
        entering (the node processes inherit the reactions)."""
        self._reactions.append((self.lab.pod(short).name, event, make))

    def short(self, name: str) -> str:
        """A pod's short name from its short or namespace name (or IP)."""
        for pod in self.lab.pods():
            if name in (pod.short, pod.name, pod.ip):
                return pod.short
        raise KeyError(f"no pod {name!r} in lab {self.lab.prefix}")

    def ip(self, short: str) -> int:
        return ip_to_int(self.lab.pod(self.short(short)).ip)

    def _execute_order(self, order: control.Order) -> tuple[str, int]:
        """Run a `dysco chain` order in the pod's loop; the number of sessions it concerns."""
        target = self.short(order.target())
        ns = self.lab.pod(target).name
        matched: int = self._node(target).call("order", ns, order.command(self.ip))
        return ns, matched

    def order(self, order: control.Order) -> dict[str, Any]:
        """Give an order through the control socket, as `dysco chain` does."""
        return control.send(control.socket_path(self.lab.prefix), order)

    def restart(self, short: str, gap: float = 0.2) -> dict[str, Any]:
        """Restart pod `short`'s agent: stop it (its rules stay, so packets are dropped),
        write its snapshot to tmpfs, wait `gap` s, restore a new core from the file and
        attach it again."""
        pod = self.lab.pod(short)
        info: dict[str, Any] = self._node(short).call("restart", PodSpec(pod.name, pod.ip),
                                                      gap)
        return info

    def command(self, short: str, command: cmd.Command) -> None:
        self._node(short).call("submit", self.lab.pod(short).name, command)

    def set_chain(self, client: str, server: str, hops: list[str], ports: set[int]) -> None:
        """Sessions from `client` to `server` on `ports` go through `hops` in order."""
        policy = Policy("lab", frozenset({self.ip(server)}),
                        tuple(Hop(h, (self.ip(h),)) for h in hops), frozenset(ports))
        self.command(client, cmd.SetPolicies((policy,)))

    def notifications(self) -> collections.Counter[str]:
        """Notification counts summed over all pods (SessionOpened, ReconfigDone...)."""
        total: collections.Counter[str] = collections.Counter()
        for pod in self.stats().values():
            total.update(pod["notifications"])
        return total

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-pod runtime counters keyed by short pod name."""
        return self._per_pod("stats")

    def core_stats(self) -> dict[str, dict[str, int]]:
        """Each agent's table sizes (`Agent.stats`), keyed by short pod name."""
        return self._per_pod("core_stats")

    def rejections(self) -> dict[str, dict[str, int]]:
        """Refused inputs by short pod name and reason."""
        return {k: v for k, v in self._per_pod("rejections").items() if v}

    def _per_pod(self, op: str) -> dict[str, Any]:
        """Ask every node process for `op`, a dict by pod namespace; key by short name."""
        names = {self.lab.pod(s).name: s for s in self.pods}
        out: dict[str, Any] = {}
        for handle in list(self._nodes.values()):
            out.update({names[ns]: v for ns, v in handle.call(op).items()})
        return out

    def node_cpu(self) -> dict[int, float]:
        """CPU seconds of each node's agent process (the unit a setup rate is per)."""
        return {node: handle.call("usage")["cpu_s"] for node, handle in self._nodes.items()}

    def usage(self) -> dict[str, float]:
        """CPU seconds and resident memory (KiB) of the agent processes, summed."""
        total = {"cpu_s": 0.0, "rss_kib": 0.0}
        for handle in list(self._nodes.values()):
            for key, value in handle.call("usage").items():
                total[key] += value
        return total


class _Node:
    """The parent's handle on one node's agent process: requests go down a pipe, one at
    a time; completions and failures of reconfigurations come up it unasked."""

    def __init__(self, agents: LabAgents, specs: list[PodSpec]) -> None:
        self.agents = agents
        ctx = multiprocessing.get_context("fork")  # the child inherits the reactions
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_node, args=(child, agents, specs),
                                name=f"dysco-lab-agents-{specs[0].ns}", daemon=True)
        self.proc.start()
        child.close()
        self._replies: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        tracker = self.agents.tracker
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self._replies.put((False, "the node's agent process ended"))
                return
            if msg[0] == "done":
                tracker.on_done(msg[1], msg[2])
            elif msg[0] == "failed":
                tracker.on_failed()
            else:
                self._replies.put((msg[1], msg[2]))

    def _reply(self) -> Any:
        ok, value = self._replies.get(timeout=CALL_TIMEOUT)
        if not ok:
            raise RuntimeError(f"{self.proc.name}: {value}")
        return value

    def wait_ready(self) -> None:
        self._reply()

    def call(self, op: str, *args: Any) -> Any:
        with self._lock:
            self.conn.send((op, *args))
            return self._reply()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.call("stop")
            except (RuntimeError, OSError, queue.Empty):
                self.proc.terminate()
        self.proc.join(10)
        self.conn.close()


def _serve_node(conn: multiprocessing.connection.Connection, agents: LabAgents,
                specs: list[PodSpec]) -> None:
    """The node's agent process: the runtime loop in a thread, requests in this one."""
    # before any thread starts: Linux keeps a nice value per thread, new ones inherit it
    with contextlib.suppress(PermissionError):  # no CAP_SYS_NICE: the inherited one
        os.setpriority(os.PRIO_PROCESS, 0, AGENT_NICE)
    send_lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(msg)

    runtime = Runtime(lambda spec: Agent(agents.config(spec)), backend=agents.backend,
                      fastpath=agents.fastpath, mbfast=agents.mbfast)
    rejected: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)

    def on_notify(pod: Pod, event: Event) -> None:
        if isinstance(event, Rejected):
            rejected[pod.spec.ns][event.reason] += 1
        if isinstance(event, ReconfigDone) and event.role == "left":
            send(("done", event.started, event.finished))
        elif isinstance(event, ReconfigFailed) and event.final:
            send(("failed",))
        for ns, kind, make in agents._reactions:
            if pod.spec.ns == ns and isinstance(event, kind):
                runtime.execute_command(pod, make())

    runtime.on_notify = on_notify
    thread = threading.Thread(target=runtime.run, name="dysco-runtime", daemon=True)
    try:
        for spec in specs:
            runtime.add_pod(spec)
        thread.start()
        runtime.started.wait(10)
    except Exception as exc:
        send(("reply", False, f"{type(exc).__name__}: {exc}"))
        runtime.close()
        return
    send(("reply", True, None))
    handlers: dict[str, Callable[..., Any]] = {
        "order": lambda ns, command: runtime.call(lambda: _order(runtime, ns, command)),
        "submit": runtime.submit,
        "stats": lambda: runtime.call(runtime.stats),
        "core_stats": lambda: runtime.call(lambda: {
            ns: pod.processor.stats() for ns, pod in runtime.pods.items()
            if isinstance(pod.processor, Agent)}),
        "rejections": lambda: runtime.call(lambda: {
            ns: dict(rejected[ns]) for ns in runtime.pods}),
        "restart": lambda spec, gap: _restart(runtime, agents, spec, gap),
        "usage": _usage,
    }
    stopped = False
    try:
        while not stopped:
            op, *args = conn.recv()
            stopped = op == "stop"
            if not stopped:
                try:
                    send(("reply", True, handlers[op](*args)))
                except Exception as exc:  # the caller gets the reason
                    send(("reply", False, f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError):
        pass  # the parent went away: detach and end
    finally:
        runtime.stop()
        thread.join()
        runtime.close()
    if stopped:
        send(("reply", True, None))


def _order(runtime: Runtime, ns: str, command: cmd.Command) -> int:
    """Give `command` to pod `ns`'s core; how many of its sessions it concerns."""
    pod = runtime.pods.get(ns)
    if pod is None:
        raise KeyError(f"pod {ns} has no running agent here")
    matched = _matching(pod.processor, command)
    runtime.execute_command(pod, command)
    return matched


def _restart(runtime: Runtime, agents: LabAgents, spec: PodSpec, gap: float) -> dict[str, Any]:
    path = SNAPSHOT_DIR / f"{spec.ns}.snapshot.json"

    def stop() -> tuple[int, int]:
        processor = runtime.suspend_pod(spec.ns)
        assert isinstance(processor, Agent)
        text = json.dumps(persist.snapshot(processor))
        path.write_text(text)
        return len(processor.sessions), len(text)
    t0 = time.monotonic()
    sessions, size = runtime.call(stop)
    time.sleep(gap)

    def start() -> None:
        data = json.loads(path.read_text())
        agent = persist.restore(agents.config(spec), data, runtime.clock())
        runtime.add_pod(spec, agent)
    try:
        runtime.call(start)
    finally:
        path.unlink(missing_ok=True)
    return {"sessions": sessions, "down_s": round(time.monotonic() - t0, 3),
            "snapshot_bytes": size}


def _usage() -> dict[str, float]:
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"cpu_s": time.process_time(), "rss_kib": float(rss)}


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
