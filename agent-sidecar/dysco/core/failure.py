"""Dead hops: an end of a chained session notices that nothing it sends is acknowledged
any more, and resets the session at both ends instead of leaving it hanging.

Only the two ends watch (a middlebox's agent cannot tell a quiet app from a dead
neighbour). A side is *stalled* from the first data it sends while earlier data is
unacked until an ack advances; any ack that advances restarts the clock. After
`hop_timeout` seconds without one, on a path that goes through a middlebox, the end
injects a RST to its app, tells the other end with ABORT (authenticated, sent straight
to it, not along the dead path) and frees the session; the other end does the same.
The peer could be dead rather than a hop; then resetting is what TCP would do anyway.
A side whose app has sent its FIN is no longer watched: its app is done, and a storm of
closes can overflow the queues for longer than the timeout (thousands of sessions closed
at once in `dysco bench --load` were reset before this rule). Neither is a session a
driver offloaded to a kernel fast path (core/offload.py): its acks no longer pass the
core, so silence says nothing; watching starts again with the first data sent after the
hand-back.
"""

from __future__ import annotations

from . import control as ctl
from . import seq
from .actions import Hook, Inject
from .base import AgentBase
from .events import HopFailed
from .packet import ACK, RST, build
from .state import Phase, Side, Tuple4, reverse


class HopWatch(AgentBase):
    def _watch_send(self, side: Side) -> None:
        """After data left on `side`: start the stall clock if earlier data is unacked."""
        if (side.stall_since is None and self.config.hop_timeout > 0
                and side.fin_out is None and side.snd_acked is not None and side.snd_max is not None
                and seq.lt(side.snd_acked, side.snd_max) and not side.session.half_open):
            side.stall_since = self.now
            if not side.stall_armed:
                self._arm_stall(side, self.now + self.config.hop_timeout)

    def _progress(self, side: Side) -> None:
        """An ack advanced: the path is alive."""
        done = side.snd_max is None or (side.snd_acked is not None
                                         and seq.ge(side.snd_acked, side.snd_max))
        side.stall_since = None if done else self.now

    def _arm_stall(self, side: Side, when: float) -> None:
        side.stall_armed = True
        self._at(when, lambda now: self._stall_check(side, now))

    def _stall_check(self, side: Side, now: float) -> None:
        side.stall_armed = False
        s = side.session
        if s.offloaded:
            side.stall_since = None  # the kernel carries it; the next send re-arms
            return
        since = side.stall_since
        if (since is None or s.sid not in self.sessions or s.closing_at is not None or s.torn
                or side.fin_out is not None):
            return
        timeout = self.config.hop_timeout
        if (now - since >= timeout and side.phase is Phase.ONE_PATH
                and side.path.peer != side.local[0]):
            self._hop_dead(side)
            return
        when = since + timeout
        self._arm_stall(side, when if when > now else now + timeout)

    def _hop_dead(self, side: Side) -> None:
        s = side.session
        t = s.tuple4()
        other = side.local[0]  # the other end of the session
        self._reset_app(side)
        msg = ctl.Control(ctl.MsgType.ABORT, 0, t, self.address, other)
        self._send(msg, other)
        for k in range(1, self.config.abort_copies):
            self._at(self.now + k * self.config.teardown_interval,
                     lambda now: self._send(msg, other))
        self._notify(HopFailed(t, side.path.peer, "detected"))
        self._free_session(s, "hop_failed")

    def _reset_app(self, side: Side) -> None:
        """A RST to the local app, as if from its peer, at the sequence number it expects."""
        src, dst, sport, dport = side.local
        at = side.rcv_acked if side.rcv_acked is not None else side.rcv_max
        ack = side.snd_max if side.snd_max is not None else 0
        rst = build(src, dst, sport, dport, at or 0, ack, RST | ACK, window=0)
        self._out.append(Inject(rst, Hook.INPUT))

    def _on_abort(self, msg: ctl.Control, src: int) -> None:
        """The other end found the session's path dead: reset our end of it too."""
        t: Tuple4 = msg.sub
        side = self.by_out.get(t) or self.by_out.get(reverse(t))
        if side is None or msg.la != src or side.local[0] != src:
            return
        s = side.session
        if s.role == "middle" or s.sid not in self.sessions:
            return
        self._reset_app(side)
        self._notify(HopFailed(t, side.path.peer, "aborted"))
        self._free_session(s, "hop_failed")
