"""Hosts, their agents and the invariants checked while a simulated run goes on."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..core import Action, Agent, AgentConfig, Hook, persist
from ..core import commands as cmd
from ..core.actions import Inject, Notify, SendControl, Verdict
from ..core.events import Event, ReconfigDone, ReconfigFailed, Rejected, SessionClosed
from ..core.packet import RST, TcpPacket
from ..core.state import Lock, Phase
from .engine import Engine
from .network import LinkModel, Network

SIM_AGENT = dict(
    lock_timeout=0.02, syn_timeout=0.02, ack_timeout=0.02, complete_timeout=0.02,
    cancel_timeout=0.02, retry_backoff=0.03, removal_retry=0.05, teardown_interval=0.005,
    anchor_guard=2.0, idle_timeout=20.0, linger=10.0,
)
# every simulated agent authenticates control messages with the same cluster key
SIM_KEYS = ((1, b"simulated-cluster-secret-0001"),)


class App(Protocol):
    def receive(self, data: bytes) -> None: ...

    def session_closed(self) -> None: ...


@dataclass
class Outcome:
    done: list[tuple[str, ReconfigDone]] = field(default_factory=list)
    failed: list[tuple[str, ReconfigFailed]] = field(default_factory=list)
    rejected: list[tuple[str, Rejected]] = field(default_factory=list)


class Host:
    def __init__(self, world: World, name: str, address: int) -> None:
        self.world = world
        self.name = name
        self.address = address
        self.agent = Agent(
            AgentConfig(address=address, keys=SIM_KEYS, current_key=1, **SIM_AGENT)  # type: ignore[arg-type]
        )
        self.app: App | None = None
        self.down = False  # agent restarting: its queues have no reader, packets drop
        self._wake_at: float | None = None
        world.net.attach(address, self.from_network, self.from_control)

    @property
    def now(self) -> float:
        return self.world.engine.now

    def app_send(self, data: bytes) -> None:
        if not self.down:
            self._run(self.agent.packet(Hook.OUTPUT, data, self.now), Hook.OUTPUT)

    def from_network(self, data: bytes) -> None:
        if not self.down:
            self._run(self.agent.packet(Hook.INPUT, data, self.now), Hook.INPUT)

    def from_control(self, src: int, data: bytes) -> None:
        if not self.down:
            self._run(self.agent.control(src, data, self.now), None)

    def restart(self, gap: float) -> None:
        """Stop the agent (state written as JSON, as to the node's tmpfs), start a new one
        `gap` seconds later from that state. Meanwhile packets are dropped, never passed."""
        saved = json.dumps(persist.snapshot(self.agent))
        self.down = True
        config = self.agent.config

        def start() -> None:
            self.agent = persist.restore(config, json.loads(saved), self.now)
            self.down = False
            self._wake_at = None
            self._schedule()

        self.world.engine.after(gap, start)

    def command(self, c: cmd.Command) -> None:
        self._run(self.agent.command(c, self.now), None)

    def _run(self, actions: list[Action], hook: Hook | None) -> None:
        for a in actions:
            if isinstance(a, Verdict):
                if a.data is not None and hook is not None:
                    self._forward(a.data, hook)
            elif isinstance(a, Inject):
                self._forward(a.data, a.hook)
            elif isinstance(a, SendControl):
                self.world.net.send_control(self.address, a.dst, a.data)
            elif isinstance(a, Notify):
                self.world.on_event(self, a.event)
        self.world.check_locks(self)
        self._schedule()

    def _forward(self, data: bytes, hook: Hook) -> None:
        if TcpPacket.parse(data).flags & RST:
            self.world.violations.append(f"{self.name}: RST on the path")
        if hook is Hook.OUTPUT:
            self.world.net.send_packet(data)
        elif self.app is not None:
            self.app.receive(data)

    def _schedule(self) -> None:
        d = self.agent.next_deadline()
        if d is not None and (self._wake_at is None or d < self._wake_at):
            self._wake_at = d
            self.world.engine.at(d, self._wake)

    def _wake(self) -> None:
        self._wake_at = None
        if self.down:
            return
        d = self.agent.next_deadline()
        if d is not None and d <= self.now:
            self._run(self.agent.timer(self.now), None)
        else:
            self._schedule()


class World:
    def __init__(self, seed: int, link: LinkModel) -> None:
        self.rng = random.Random(seed)
        self.engine = Engine()
        self.net = Network(self.engine, random.Random(seed * 7919 + 1), link)
        self.hosts: dict[str, Host] = {}
        self.violations: list[str] = []
        self.outcome = Outcome()
        self.listeners: list[Callable[[Event], None]] = []
        self.established: Callable[[], bool] = lambda: True

    def host(self, name: str, address: int) -> Host:
        h = Host(self, name, address)
        self.hosts[name] = h
        return h

    def on_event(self, host: Host, event: Event) -> None:
        if isinstance(event, ReconfigDone) and event.role == "left":
            self.outcome.done.append((host.name, event))
        elif isinstance(event, ReconfigFailed):
            self.outcome.failed.append((host.name, event))
        elif isinstance(event, Rejected):
            self.outcome.rejected.append((host.name, event))
        elif isinstance(event, SessionClosed) and host.app is not None:
            host.app.session_closed()
        for fn in list(self.listeners):
            fn(event)

    def check_locks(self, host: Host) -> None:
        """Lock bookkeeping invariants, checked after every event at every agent."""
        a = host.agent
        for rid, side in a.by_rid.items():
            if side.rc is None or side.rc.rid != rid:
                self.violations.append(f"{host.name}: by_rid[{rid:#x}] points at a side without it")
        for s in a.sessions.values():
            for side in s.sides:
                rc = side.rc
                if side.lock is not Lock.UNLOCKED and side.lock_rid == 0:
                    self.violations.append(f"{host.name}: lock held without a requestor")
                if rc is None or rc.role != "left":
                    continue
                if side.phase is Phase.REQUESTING and (
                    side.lock is not Lock.PENDING or side.lock_rid != rc.rid
                ):
                    self.violations.append(f"{host.name}: requesting without a pending lock")
                if side.phase in (Phase.SETTING_UP, Phase.TWO_PATHS) and (
                    side.lock is not Lock.LOCKED or side.lock_rid != rc.rid
                ):
                    self.violations.append(f"{host.name}: {side.phase.value} without the lock")

    def leftovers(self) -> list[str]:
        """State that should be gone once every session has closed."""
        out = []
        for name, h in self.hosts.items():
            st = h.agent.stats()
            st.pop("timers")
            st["ports"] = h.agent.ports.in_use()
            left = {k: v for k, v in st.items() if v}
            if left:
                out.append(f"{name}: state not freed {left}")
        return out
