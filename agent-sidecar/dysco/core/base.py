"""Tables, timers and output helpers shared by the agent's concerns."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from . import control as ctl
from .actions import Action, Hook, Inject, Notify, SendControl, Verdict
from .auth import Authenticator
from .config import AgentConfig
from .events import Event, SessionClosed
from .limits import RateLimiter
from .policy import Policy
from .ports import PortAllocator
from .state import Path, Session, Side, Tuple4

Timer = Callable[[float], None]


class AgentBase:
    """State of one agent: session tables, timers and the actions being collected."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.address = config.address
        self.sessions: dict[int, Session] = {}
        self.by_in: dict[Tuple4, tuple[Side, Path]] = {}  # arriving subsession tuple
        self.by_out: dict[Tuple4, Side] = {}  # tuple the local app sends towards a side
        self.pending: dict[Tuple4, Session] = {}  # middlebox: SYN not yet out of the app
        self.pending_tag: dict[int, Session] = {}
        self.by_rid: dict[int, Side] = {}  # reconfigurations this agent anchors
        self.tombstones: dict[Tuple4, float] = {}  # retired subsessions: drop until then
        self.policies: tuple[Policy, ...] = ()
        self.ports = PortAllocator(config.local_ports, config.peer_ports, config.port_start)
        self.auth = (
            Authenticator(dict(config.keys), config.current_key, config.auth_window)
            if config.keys else None
        )
        self.half_open = 0  # sessions whose handshake we have not seen complete
        self.control_limiter = RateLimiter(config.control_rate, config.control_burst,
                                           config.control_senders)
        # counters: session ids, SYN tags, reconfiguration ids, round robin
        self.counters = {"sid": 0, "tag": 0, "rid": 0, "rr": 0}
        self._timers: list[tuple[float, int, Timer]] = []
        self._tseq = itertools.count()
        self._out: list[Action] = []
        self._verdict_given = False
        self.now = 0.0

    def _count(self, name: str) -> int:
        self.counters[name] += 1
        return self.counters[name]

    # ----- collecting actions -----
    def _begin(self, now: float) -> None:
        self.now = now
        self._out = []
        self._verdict_given = False

    def _end(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _emit(self, data: bytes, hook: Hook) -> None:
        """The first packet of a packet() call is its verdict, later ones are injected."""
        if self._verdict_given:
            self._out.append(Inject(data, hook))
        else:
            self._verdict_given = True
            self._out.insert(0, Verdict(data))

    def _drop(self) -> None:
        if not self._verdict_given:
            self._verdict_given = True
            self._out.insert(0, Verdict(None))

    def _notify(self, event: Event) -> None:
        self._out.append(Notify(event))

    def _send(self, msg: ctl.Control, dst: int) -> None:
        self._out.append(SendControl(dst, self._seal(msg.encode())))

    def _seal(self, data: bytes) -> bytes:
        return data if self.auth is None else self.auth.seal(data, self.address, self.now)

    # ----- timers -----
    def _at(self, when: float, fn: Timer) -> None:
        heapq.heappush(self._timers, (when, next(self._tseq), fn))

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn(now)

    # ----- table maintenance -----
    def _register(self, side: Side, path: Path) -> None:
        self.by_in[path.sub_in] = (side, path)
        self.tombstones.pop(path.sub_in, None)

    def _retire_path(self, path: Path) -> None:
        """Forget a subsession; late packets on it are dropped for `linger` seconds."""
        if self.by_in.pop(path.sub_in, None) is not None:
            self.ports.release(path.sub_out)
            until = self.now + self.config.linger
            self.tombstones[path.sub_in] = until
            key = path.sub_in
            self._at(until, lambda now: self._expire_tombstone(key, now))

    def _expire_tombstone(self, key: Tuple4, now: float) -> None:
        until = self.tombstones.get(key)
        if until is not None and until <= now:
            del self.tombstones[key]

    def _free_session(self, s: Session, how: str) -> None:
        if self.sessions.pop(s.sid, None) is None:
            return
        if s.half_open:
            s.half_open = False
            self.half_open -= 1
        for side in s.sides:
            for path in (side.path, side.new):
                if path is not None:
                    self._retire_path(path)
            if self.by_out.get(side.out_key) is side:
                del self.by_out[side.out_key]
            if side.rc is not None:
                self.by_rid.pop(side.rc.rid, None)
                if side.new is not None and side.rc.role == "left":
                    self._send_teardown(side, side.path)
                side.rc = None
        if s.left is not None and self.pending.get(s.left.local) is s:
            del self.pending[s.left.local]
        if s.tag is not None:
            self.pending_tag.pop(s.tag, None)
        self._notify(SessionClosed(s.tuple4(), how))

    def _linger_done(self, s: Session, now: float) -> None:
        if s.closing_at is not None and s.closing_at <= now:
            self._free_session(s, s.close_how)

    def _open_half(self, s: Session, since: float) -> None:
        """Count `s` as half-open; free it if its handshake has not ended by the timeout
        (a SYN flood's sessions never finish theirs)."""
        s.half_open = True
        self.half_open += 1
        when = since + self.config.handshake_timeout
        self._at(when, lambda now: self._handshake_check(s))

    def _handshake_check(self, s: Session) -> None:
        if s.half_open and s.sid in self.sessions:
            self._free_session(s, "handshake_timeout")

    @staticmethod
    def _handshake_done(s: Session) -> bool:
        """Every side has had its SYN acknowledged and no hop is still to be opened."""
        return (bool(s.sides) and not s.pending_hops
                and all(side.snd_acked is not None for side in s.sides))

    def _check_established(self, s: Session) -> None:
        if s.half_open and self._handshake_done(s):
            s.half_open = False
            self.half_open -= 1

    def _watch_idle(self, s: Session) -> None:
        when = s.last_activity + self.config.idle_timeout
        self._at(when, lambda now: self._idle_check(s, now))

    def _idle_check(self, s: Session, now: float) -> None:
        if s.sid not in self.sessions:
            return
        if s.offloaded:
            # its last activity stays where the kernel took it over: a check due at
            # last_activity + idle_timeout would be due at once, forever (the loop
            # that ran it would never return); the kernel's entry times it out
            self._at(now + self.config.idle_timeout, lambda t: self._idle_check(s, t))
        elif now - s.last_activity >= self.config.idle_timeout:
            self._free_session(s, "idle")
        else:
            self._watch_idle(s)

    def _send_teardown(self, side: Side, old: Path) -> None:
        """Best-effort TEARDOWN copies along a retired old path (idle timers catch losses)."""
        rc = side.rc
        assert rc is not None
        msg = ctl.Control(ctl.MsgType.TEARDOWN, rc.rid, old.sub_out, self.address, rc.other)
        peer = old.peer
        self._send(msg, peer)
        for k in range(1, self.config.teardown_copies):
            when = self.now + k * self.config.teardown_interval
            self._at(when, lambda now: self._send(msg, peer))
