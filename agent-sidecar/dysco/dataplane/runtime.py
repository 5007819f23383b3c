"""The agent runtime: drives one protocol-core instance per pod network namespace.

One thread, one event loop for all pods: each pod contributes two NFQUEUE queues
(input, output), a UDP control socket bound to its IP on port 2016 and a raw socket for
injected packets, all opened inside its namespace. Events go into the pod's core
(`Processor`) and the actions it returns are carried out right away:

* ``Verdict``     -> NFQUEUE verdict (drop, or accept with the new bytes)
* ``Inject``      -> raw-socket send in the pod's namespace, marked so our rules skip it
* ``SendControl`` -> UDP datagram from the pod's control socket
* ``Notify``      -> counted per event type, logged at debug level

Queues are opened before the rules are installed and the rules are removed before the
queues close, so a pod is never left with rules and no listener (rules.py explains why
the rules are fail-closed). Per-packet work stays header-only: the core rewrites
headers incrementally, and only partial checksums are completed here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import functools
import json
import logging
import secrets
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from dysco.core import Agent, AgentConfig
from dysco.core.actions import Action, Hook, Inject, Notify, SendControl, Verdict
from dysco.core.events import Event

from . import netns, nfq, rules, segment
from .fastpath import FastPath
from .mbfast import MbFastPath

log = logging.getLogger(__name__)

T = TypeVar("T")
CONTROL_PORT = 2016
_CT_EVENTS = "conntrack-events"  # selector tag of a pod's fast-path event socket
_DRAIN_BATCHES = 64  # at most, per queue, when a pod's fast-path table appears
_SO_MARK = 36
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
# The control socket's buffers. One order can reconfigure thousands of sessions, and
# its messages arrive in bursts (a rightRequest per session, three TEARDOWN copies...):
# with the default 208 KiB about 280 datagrams fit, the rest were dropped
# (Udp.RcvbufErrors) and waited for the core's retransmission timers.
CONTROL_BUFFER = 8 << 20


class Processor(Protocol):
    """What the runtime needs from the core's `Agent` (docs/core-api.md)."""

    def packet(self, hook: Hook, data: bytes, now: float) -> list[Action]: ...
    def control(self, src: int, data: bytes, now: float) -> list[Action]: ...
    def timer(self, now: float) -> list[Action]: ...
    def next_deadline(self) -> float | None: ...
    def command(self, command: Any, now: float) -> list[Action]: ...


@dataclass(frozen=True)
class PodSpec:
    """A pod to attach to: its namespace and the IPv4 address it is a Dysco host for."""

    ns: str
    address: str


@dataclass
class PodStats:
    packets: int = 0
    rewritten: int = 0
    dropped: int = 0
    truncated: int = 0          # arrived incomplete (copy range): passed only if untouched
    injected: int = 0
    control_in: int = 0
    control_out: int = 0
    errors: int = 0             # a core exception or a broken contract: packet dropped
    notifications: collections.Counter[str] = field(default_factory=collections.Counter)


def port_start() -> int:
    """A random `AgentConfig.port_start`, so a new core does not reuse its predecessor's
    subsession tuples while the next hop still has them tombstoned."""
    return secrets.randbelow(1 << 30)


def ip_to_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def int_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


class Pod:
    """Everything the runtime holds in one pod's namespace."""

    def __init__(self, spec: PodSpec, processor: Processor, interception: rules.Interception,
                 queues: dict[Hook, nfq.Queue], control_port: int) -> None:
        self.spec = spec
        self.processor = processor
        self.interception = interception
        self.queues = queues
        self.stats = PodStats()
        self.control_port = control_port
        self.fast: FastPath | None = None  # kernel fast path (fastpath.py), if enabled
        self.mbfast: MbFastPath | None = None  # middlebox sessions' (mbfast.py)
        self.control = netns.open_socket(spec.ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.raw = netns.open_socket(spec.ns, socket.AF_INET, socket.SOCK_RAW,
                                     socket.IPPROTO_RAW)
        try:
            self.control.bind((spec.address, control_port))
            self.control.setblocking(False)
            self.control.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, CONTROL_BUFFER)
            self.control.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, CONTROL_BUFFER)
            self.raw.setsockopt(socket.SOL_SOCKET, _SO_MARK, interception.mark)
            self.mtu = _link_mtu(spec.ns)
        except (OSError, subprocess.CalledProcessError):
            self.close_sockets()
            raise

    def close_sockets(self) -> None:
        self.control.close()
        self.raw.close()
        for queue in self.queues.values():
            queue.close()

    def inject(self, data: bytes, hook: Hook) -> None:
        """Send a core-made packet: OUTPUT to the network, INPUT to the local stack.

        A raw packet addressed to a local address loops back through `lo`, which our
        rules skip, and is delivered like one that came from the network."""
        dst = int_to_ip(int.from_bytes(data[16:20], "big"))
        pieces = [data] if hook is Hook.INPUT else segment.split(data, self.mtu)
        for piece in pieces:
            self.raw.sendto(piece, (dst, 0))
        self.stats.injected += len(pieces)

    def send_control(self, dst: int, data: bytes) -> None:
        try:
            self.control.sendto(data, (int_to_ip(dst), self.control_port))
            self.stats.control_out += 1
        except OSError as exc:  # e.g. no route yet: the core retransmits on its timers
            log.warning("%s: control send to %s failed: %s", self.spec.ns, int_to_ip(dst), exc)


def _link_mtu(ns: str) -> int:
    """The smallest MTU of the pod's links: what a raw packet sent out may be at most
    (an overlay CNI often gives pods less than 1500)."""
    links = json.loads(netns.run(ns, ["ip", "-j", "link", "show"]).stdout)
    return min((int(link["mtu"]) for link in links if link["ifname"] != "lo"), default=1500)


ProcessorFactory = Callable[[PodSpec], Processor]


class Runtime:
    """Attaches pods, runs the event loop, detaches pods. Not thread-safe except `wake`
    and `submit`, which another thread may call to hand work to the loop."""

    def __init__(self, factory: ProcessorFactory | None = None, *, backend: str = "raw",
                 variant: rules.Variant | None = None, control_port: int = CONTROL_PORT,
                 queue_in: int = rules.DEFAULT_QUEUE_IN,
                 queue_out: int = rules.DEFAULT_QUEUE_OUT, mark: int = rules.DEFAULT_MARK,
                 clock: Callable[[], float] = time.monotonic,
                 exempt: tuple[str, ...] = (), fastpath: bool = True,
                 mbfast: bool = True) -> None:
        self.factory = factory or self._core_agent
        self.exempt = exempt  # addresses whose TCP the pods' rules never queue
        self.backend = nfq.BACKENDS[backend]
        self.variant = variant or rules.detect_variant()
        self.control_port = control_port
        self.queue_in, self.queue_out, self.mark = queue_in, queue_out, mark
        self.clock = clock
        self.fastpath = fastpath  # offload steady end-host sessions to the kernel
        self.mbfast = fastpath and mbfast  # and middlebox sessions (mbfast.py)
        self.pods: dict[str, Pod] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._running = False
        self._loop_thread: int | None = None
        self.started = threading.Event()  # set once `run` serves; then use `call`
        # called in the loop thread for every notification, after it was counted
        self.on_notify: Callable[[Pod, Event], None] | None = None

    def _core_agent(self, spec: PodSpec) -> Processor:
        """The default processor: one protocol-core Agent per pod."""
        return Agent(AgentConfig(address=ip_to_int(spec.address),
                                 control_port=self.control_port, port_start=port_start()))

    # --- pods -------------------------------------------------------------------------

    def add_pod(self, spec: PodSpec, processor: Processor | None = None) -> Pod:
        """Open queues and sockets in the pod, then install its rules (idempotent).

        `processor` replaces the factory's (a core restored from a snapshot)."""
        if spec.ns in self.pods:
            return self.pods[spec.ns]
        interception = rules.Interception(spec.ns, self.variant, self.queue_in,
                                          self.queue_out, self.mark, exempt=self.exempt)
        queues: dict[Hook, nfq.Queue] = {}
        try:
            queues[Hook.INPUT] = self.backend(self.queue_in, spec.ns)
            queues[Hook.OUTPUT] = self.backend(self.queue_out, spec.ns)
            pod = Pod(spec, processor or self.factory(spec), interception, queues,
                      self.control_port)
        except BaseException:
            for queue in queues.values():
                queue.close()
            raise
        for hook, queue in queues.items():
            self._selector.register(queue.fileno(), selectors.EVENT_READ, (pod, hook))
        self._selector.register(pod.control, selectors.EVENT_READ, (pod, None))
        self.pods[spec.ns] = pod
        if self.fastpath and isinstance(pod.processor, Agent):
            if self.mbfast:
                pod.mbfast = MbFastPath(spec.ns, pod.processor, self.mark)
            try:
                pod.fast = FastPath(spec.ns, pod.processor, self.mark)
                self._selector.register(pod.fast.fileno(), selectors.EVENT_READ,
                                        (pod, _CT_EVENTS))
            except OSError as exc:  # no ctnetlink: every session stays on the queues
                log.warning("%s: no fast path: %s", spec.ns, exc)
        try:
            interception.install()
        except BaseException:
            self.remove_pod(spec.ns)
            raise
        log.info("attached %s (%s)", spec.ns, spec.address)
        return pod

    def remove_pod(self, ns: str) -> None:
        """Remove the pod's rules, then close everything opened for it."""
        pod = self.pods.pop(ns, None)
        if pod is None:
            return
        try:
            self._close_fast(pod)
            if netns.exists(ns):
                pod.interception.remove()
        finally:
            for queue in pod.queues.values():
                self._selector.unregister(queue.fileno())
            self._selector.unregister(pod.control)
            pod.close_sockets()
        log.info("detached %s", ns)

    def suspend_pod(self, ns: str) -> Processor:
        """Close the pod's queues and sockets but leave its rules in place, as a crashed
        or restarting agent does: the rules have no queue bypass, so until `add_pod`
        attaches again the pod's TCP packets are dropped, never passed unrewritten.
        Returns the pod's processor (to snapshot)."""
        pod = self.pods.pop(ns)
        self._close_fast(pod)  # the restored core starts with every session on the queues
        for queue in pod.queues.values():
            self._selector.unregister(queue.fileno())
        self._selector.unregister(pod.control)
        pod.close_sockets()
        log.info("suspended %s (rules kept: its packets are dropped)", ns)
        return pod.processor

    def _close_fast(self, pod: Pod) -> None:
        if pod.mbfast is not None:
            pod.mbfast.close(self.clock())
            pod.mbfast = None
        if pod.fast is not None:
            self._selector.unregister(pod.fast.fileno())
            pod.fast.close(self.clock())
            pod.fast = None

    def close(self) -> None:
        for ns in list(self.pods):
            self.remove_pod(ns)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- loop -------------------------------------------------------------------------

    def submit(self, ns: str, command: Any) -> None:
        """Hand a core command for pod `ns` to the loop (safe from any thread)."""
        self._pending.append(functools.partial(self._command, ns, command))
        self.wake()

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run `fn` in the loop's thread and return its result (safe from any thread).

        Attaching and detaching pods change what the loop iterates over, so another
        thread (a node agent's) goes through here; without a running loop `fn` runs
        at once."""
        if not self._running or threading.get_ident() == self._loop_thread:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._pending.append(job)
        self.wake()
        return future.result(timeout)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """Make `run` return after the current step (safe from any thread)."""
        self._running = False
        self.wake()

    def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self._running = True
        self.started.set()
        try:
            while self._running:
                self.step(1.0)
        finally:
            self._running = False
            self._run_pending()  # callers waiting in call() get their answer

    def step(self, max_wait: float) -> None:
        """Wait at most `max_wait` s (less if a core timer is due) and handle what came."""
        timeout = max_wait
        now = self.clock()
        for pod in self.pods.values():
            deadline = pod.processor.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - now))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
                continue
            pod, hook = key.data
            if hook is None:
                self._on_control(pod)
            elif hook == _CT_EVENTS and pod.fast is not None:
                self._execute(pod, pod.fast.ended(self.clock()))
            else:
                self._on_queue(pod, hook)
        self._run_pending()
        self._run_timers()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _run_pending(self) -> None:
        while self._pending:
            self._pending.popleft()()

    def _command(self, ns: str, command: Any) -> None:
        pod = self.pods.get(ns)
        if pod is None:
            log.warning("command for unknown pod %s dropped: %r", ns, command)
            return
        self.execute_command(pod, command)

    def execute_command(self, pod: Pod, command: Any) -> None:
        """Give `pod`'s core a command now; only from the loop thread (`on_notify`)."""
        self._execute(pod, pod.processor.command(command, self.clock()))
        self._settle(pod, full=True)

    def _settle(self, pod: Pod, full: bool = False) -> None:
        """Let the fast paths follow the core after a batch of inputs (`full`: a control
        message or a command, which may change any session)."""
        mbfast = pod.mbfast
        if mbfast is not None:
            mbfast.settle(self.clock(), full)
            probes, mbfast.probes = mbfast.probes, []
            self._execute(pod, [Inject(p, Hook.OUTPUT) for p in probes])
        fast = pod.fast
        if fast is None:
            return
        fast.settle(self.clock())
        if fast.drain_queues:
            # its table just turned conntrack on: packets queued before it go first
            fast.drain_queues = False
            for hook in pod.queues:
                for _ in range(_DRAIN_BATCHES):
                    if not self._on_queue(pod, hook, settle=False):
                        break
            fast.settle(self.clock())
        probes, fast.probes = fast.probes, []
        self._execute(pod, [Inject(p, Hook.INPUT) for p in probes])

    def _run_timers(self) -> None:
        now = self.clock()
        for pod in list(self.pods.values()):
            deadline = pod.processor.next_deadline()
            if deadline is not None and deadline <= now:
                self._execute(pod, pod.processor.timer(now))
                self._settle(pod)
            if pod.fast is not None:
                self._execute(pod, pod.fast.watch(now))

    def _on_queue(self, pod: Pod, hook: Hook, settle: bool = True) -> int:
        """Handle a batch of `hook`'s queue; how many packets it had."""
        queue = pod.queues[hook]
        stats = pod.stats
        fast, mbfast = pod.fast, pod.mbfast
        batch = queue.receive()
        for pkt in batch:
            stats.packets += 1
            stats.truncated += pkt.truncated
            if fast is not None:
                self._execute(pod, fast.reopen(hook, pkt.data, self.clock()))
            try:
                actions = pod.processor.packet(hook, pkt.data, self.clock())
            except Exception:
                log.exception("%s: core failed on a %s packet; dropped", pod.spec.ns, hook.name)
                stats.errors += 1
                queue.drop(pkt)
                continue
            verdict = actions[0] if actions else None
            if isinstance(verdict, Verdict):
                if fast is not None:
                    fast.saw(hook, pkt.data, verdict.data)
                if mbfast is not None:
                    mbfast.saw(hook, pkt.data, verdict.data)
            if not isinstance(verdict, Verdict):
                log.error("%s: core gave no verdict first (%r); dropped", pod.spec.ns, actions)
                stats.errors += 1
                queue.drop(pkt)
            elif verdict.data is None:
                stats.dropped += 1
                queue.drop(pkt)
            elif pkt.truncated and verdict.data != pkt.data:
                # The core cannot parse a cut packet and passes it unchanged unless its
                # tuple is a session's; a rewrite of the cut bytes would cut the packet.
                stats.dropped += 1
                queue.drop(pkt)
            elif pkt.truncated:
                queue.accept(pkt)
            elif queue.accept(pkt, verdict.data):
                stats.rewritten += 1
            if len(actions) > 1:
                # The verdict's packet must go first: a split segment injected ahead of
                # its first part would arrive reordered.
                queue.flush()
                self._execute(pod, actions[1:])
        queue.flush()  # before offloading: these verdicts must meet the old ct state
        if settle:
            self._settle(pod)
        return len(batch)

    def _on_control(self, pod: Pod) -> None:
        while True:
            try:
                payload, (src, _) = pod.control.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:  # an ICMP error for an earlier send
                    continue
                raise
            pod.stats.control_in += 1
            self._execute(pod, pod.processor.control(ip_to_int(src), payload, self.clock()))
            self._settle(pod, full=True)

    def _execute(self, pod: Pod, actions: Iterable[Action]) -> None:
        for action in actions:
            match action:
                case Inject(data=data, hook=hook):
                    try:
                        pod.inject(data, hook)
                    except OSError as exc:
                        log.warning("%s: inject failed: %s", pod.spec.ns, exc)
                        pod.stats.errors += 1
                case SendControl(dst=dst, data=data):
                    pod.send_control(dst, data)
                case Notify(event=event):
                    pod.stats.notifications[type(event).__name__] += 1
                    log.debug("%s: %r", pod.spec.ns, event)
                    if pod.fast is not None:
                        pod.fast.notice(event)
                    if pod.mbfast is not None:
                        pod.mbfast.notice(event)
                    if self.on_notify is not None:
                        self.on_notify(pod, event)
                case Verdict():
                    log.error("%s: extra verdict ignored", pod.spec.ns)
                    pod.stats.errors += 1

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-pod counters, JSON-ready."""
        out = {}
        for ns, pod in self.pods.items():
            s = pod.stats
            out[ns] = {k: v for k, v in vars(s).items() if k != "notifications"}
            out[ns]["notifications"] = dict(s.notifications)
            if pod.fast is not None:
                out[ns]["fastpath"] = {**vars(pod.fast.stats),
                                       "sessions": len(pod.fast.installed)}
            if pod.mbfast is not None:
                out[ns]["mbfast"] = {**vars(pod.mbfast.stats),
                                     "sessions": len(pod.mbfast.installed)}
        return out

