"""Reconfiguration: locking, the new-path handshake, two paths, completion, cancel.

Every handler is keyed by the subsession a message travels on (`msg.sub`, which is our
`Path.sub_in`) or, between the two anchors, by the reconfiguration id. Left and right
anchors are symmetric `Side` roles; the data-path half of the two-path phase lives in
`datapath.split_two_paths`.
"""

from __future__ import annotations

from . import control as ctl
from . import seq
from .base import AgentBase
from .control import Control, MsgType, NackReason
from .events import ReconfigDone, ReconfigFailed, ReconfigStarted, Rejected
from .state import Lock, Path, Phase, Reconfig, Retry, Session, Side, Tuple4, reverse

_PERMANENT = {NackReason.NO_ANCHOR, NackReason.NO_SESSION}


class Reconfigurer(AgentBase):
    # ----- deltas -----
    def _app_delta(self, s: Session, left_to_right: bool) -> int:
        """How much the local middlebox app shifts sequence numbers in one direction."""
        if s.left is None or s.right is None:
            return 0
        if left_to_right:
            inp, out, extra = s.left.isn_in, s.right.isn_out, s.content_l2r
        else:
            inp, out, extra = s.right.isn_in, s.left.isn_out, s.content_r2l
        base = seq.sub(out, inp) if inp is not None and out is not None else 0
        return base + extra

    def _through_delta(self, s: Session, left_to_right: bool) -> int:
        """Delta added by this agent to a stream passing through (wire in -> wire out)."""
        assert s.left is not None and s.right is not None
        if left_to_right:
            return s.left.path.rcv_off + self._app_delta(s, True) + s.right.path.snd_off
        return s.right.path.rcv_off + self._app_delta(s, False) + s.left.path.snd_off

    @staticmethod
    def _idle(side: Side | None) -> bool:
        """Not part of a reconfiguration, and traffic seen both ways (past the handshake,
        unless the middlebox joined mid-session): cutoffs need known sequence numbers."""
        return side is None or (
            side.phase is Phase.ONE_PATH
            and side.rc is None
            and side.snd_max is not None
            and side.rcv_max is not None
            and (side.session.inserted or side.snd_acked is not None)
        )

    # ----- starting (left anchor) -----
    def _start(self, side: Side, ra: int, hops: tuple[int, ...], attempt: int) -> bool:
        s = side.session
        if s.sid not in self.sessions or s.torn or s.closing_at is not None:
            return False
        if not self._idle(side) or side.lock is not Lock.UNLOCKED:
            return False
        if len(self.by_rid) >= self.config.max_reconfigs:
            return False  # retried later, like a busy side
        rid = (self.address << 32) | (self._count("rid") & 0xFFFFFFFF)
        rc = Reconfig(rid, "left", ra, hops, self.now, attempt=attempt)
        side.rc = rc
        side.phase = Phase.REQUESTING
        side.lock, side.lock_rid, side.lock_la = Lock.PENDING, rid, self.address
        self.by_rid[rid] = side
        self._notify(ReconfigStarted(s.tuple4(), rid, ra, hops))
        self._send_request(side)
        return True

    def _send_request(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None
        self._over(side.path, MsgType.REQUEST_LOCK, rc.rid, self.address, rc.other,
                   side.path.snd_off)
        self._arm(side, self.config.lock_timeout)

    def _arm(self, side: Side, after: float) -> None:
        rc = side.rc
        assert rc is not None
        when = self.now + after
        rc.deadline = when
        rid = rc.rid
        self._at(when, lambda now: self._on_deadline(side, rid, when, now))

    def _on_deadline(self, side: Side, rid: int, when: float, now: float) -> None:
        rc = side.rc
        if rc is None or rc.rid != rid or rc.deadline != when:
            return
        if side.session.sid not in self.sessions:
            return
        rc.tries += 1
        cfg = self.config
        phase = side.phase
        if phase is Phase.REQUESTING:
            if rc.tries <= cfg.lock_retries:
                self._send_request(side)
            else:
                self._cancel(side, "lock timeout")
        elif phase is Phase.SETTING_UP:
            if rc.tries <= cfg.syn_retries:
                self._send_new_syn(side)
            else:
                self._cancel(side, "new path not built")
        elif phase is Phase.CANCELING:
            if rc.tries <= cfg.cancel_retries:
                self._send_cancel(side)
            else:
                self._give_up(side, "cancel unanswered")
        elif phase is Phase.TWO_PATHS and rc.role == "left" and rc.cutoff_rcv is None:
            self._send_ack(side)
        elif phase is Phase.TWO_PATHS and rc.role == "right" and rc.complete_sent:
            self._send_complete(side)
        elif phase in (Phase.REQUESTED, Phase.WAITING):
            # The right anchor heard nothing for a long time: the left anchor is gone.
            self._abandon_right(side)

    def _over(
        self, path: Path, mtype: MsgType, rid: int, la: int, ra: int, value: int = 0,
        reason: NackReason = NackReason.NONE, session: Tuple4 = (0, 0, 0, 0),
        hops: tuple[int, ...] = (),
    ) -> None:
        """Send a control message to the neighbour at the other end of `path`."""
        msg = Control(mtype, rid, path.sub_out, la, ra, value & seq.MASK, reason, session, hops)
        self._send(msg, path.peer)

    def _on_path(self, msg: Control, from_left: bool) -> Side | None:
        """The side whose current subsession `msg` arrived on, from the expected neighbour
        (old-path messages travel on current paths; anything else is stale or stray)."""
        entry = self.by_in.get(msg.sub)
        if entry is None:
            return None
        side, path = entry
        if side.is_left != from_left or path is not side.path:
            return None
        return side

    # ----- locking -----
    def _on_request_lock(self, msg: Control, src: int) -> None:
        entry = self.by_in.get(msg.sub)
        if entry is None:
            return self._nack_raw(msg, src, NackReason.NO_SESSION)
        side, path = entry
        s = side.session
        if not side.is_left or path is not side.path:
            return self._nack(msg, side, NackReason.BUSY)
        if msg.ra == self.address:
            return self._request_at_anchor(msg, side)
        right = s.right
        if right is None:
            return self._nack(msg, side, NackReason.NO_ANCHOR)
        if right.lock is Lock.PENDING and right.lock_la == self.address and not s.torn:
            right.saved = msg  # our own request is pending: answer this one after ours
            return None
        if right.lock is Lock.LOCKED and right.lock_rid != msg.rid:
            return self._nack(msg, side, NackReason.LOCKED)
        if s.torn or not self._idle(side) or not self._idle(right):
            return self._nack(msg, side, NackReason.BUSY)
        if right.lock is Lock.UNLOCKED:
            right.lock, right.lock_rid, right.lock_la = Lock.PENDING, msg.rid, msg.la
        elif right.lock_rid != msg.rid:
            return self._nack(msg, side, NackReason.CONTENTION)
        return self._forward_request(msg, s)

    def _forward_request(self, msg: Control, s: Session) -> None:
        assert s.right is not None
        value = seq.add(msg.value, self._through_delta(s, True))
        self._over(s.right.path, MsgType.REQUEST_LOCK, msg.rid, msg.la, msg.ra, value)

    def _request_at_anchor(self, msg: Control, side: Side) -> None:
        rc = side.rc
        if rc is not None and rc.rid == msg.rid:
            if side.phase in (Phase.REQUESTED, Phase.WAITING):
                self._ack_lock(side)
            return None
        if not self._idle(side) or side.session.torn:
            return self._nack(msg, side, NackReason.BUSY)
        if len(self.by_rid) >= self.config.max_reconfigs:
            self._notify(Rejected("control", "reconfig_table_full", "lock request refused"))
            return self._nack(msg, side, NackReason.BUSY)
        delta = seq.add(msg.value, side.path.rcv_off)
        rc = Reconfig(msg.rid, "right", msg.la, (), self.now, delta=delta)
        side.rc = rc
        side.phase = Phase.REQUESTED
        self.by_rid[msg.rid] = side
        self._ack_lock(side)
        self._arm(side, self.config.anchor_guard)
        return None

    def _ack_lock(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None
        self._over(side.path, MsgType.ACK_LOCK, rc.rid, rc.other, self.address, side.path.snd_off)

    def _nack(self, msg: Control, side: Side, reason: NackReason) -> None:
        self._over(side.path, MsgType.NACK_LOCK, msg.rid, msg.la, msg.ra, 0, reason)

    def _nack_raw(self, msg: Control, src: int, reason: NackReason) -> None:
        back = Control(MsgType.NACK_LOCK, msg.rid, reverse(msg.sub), msg.la, msg.ra, 0, reason)
        self._send(back, src)

    def _on_ack_lock(self, msg: Control) -> None:
        side = self._on_path(msg, from_left=False)
        if side is None:
            return
        rc = side.rc
        if rc is not None and rc.role == "left" and rc.rid == msg.rid:
            if side.phase is Phase.REQUESTING:
                self._locked(side, rc, seq.add(msg.value, side.path.rcv_off))
            return
        if msg.la == self.address:
            # a lock granted for an attempt we abandoned: release it along the path
            self._over(side.path, MsgType.CANCEL_LOCK, msg.rid, msg.la, msg.ra)
            return
        if side.lock_rid != msg.rid or side.lock is Lock.UNLOCKED:
            return
        side.lock = Lock.LOCKED
        s = side.session
        if s.left is None:
            return
        value = seq.add(msg.value, self._through_delta(s, False))
        self._over(s.left.path, MsgType.ACK_LOCK, msg.rid, msg.la, msg.ra, value)

    def _locked(self, side: Side, rc: Reconfig, left_delta: int) -> None:
        side.lock = Lock.LOCKED
        rc.delta = left_delta
        side.phase = Phase.SETTING_UP
        rc.tries = 0
        if side.saved is not None:
            saved, side.saved = side.saved, None
            s = side.session
            if s.left is not None:
                self._nack(saved, s.left, NackReason.CONTENTION)
        first = rc.hops[0] if rc.hops else rc.other
        side.new = Path(self.ports.allocate(self.address, first), 0, left_delta)
        self._register(side, side.new)
        self._send_new_syn(side)

    def _send_new_syn(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None and side.new is not None
        self._over(side.new, MsgType.SYN, rc.rid, self.address, rc.other,
                   session=side.out_key, hops=(*rc.hops, rc.other))
        self._arm(side, self.config.syn_timeout)

    def _on_nack_lock(self, msg: Control) -> None:
        side = self._on_path(msg, from_left=False)
        if side is None:
            return
        rc = side.rc
        if rc is not None and rc.role == "left" and rc.rid == msg.rid:
            if side.phase is Phase.REQUESTING:
                side.lock = Lock.UNLOCKED
                self._failed(side, f"nacked: {msg.reason.name.lower()}", msg.reason in _PERMANENT)
                if side.saved is not None:
                    saved, side.saved = side.saved, None
                    side.lock, side.lock_rid, side.lock_la = Lock.PENDING, saved.rid, saved.la
                    self._forward_request(saved, side.session)
            return
        if side.lock_rid != msg.rid or side.lock is not Lock.PENDING:
            return
        side.lock = Lock.UNLOCKED
        s = side.session
        if s.left is not None:
            self._over(s.left.path, MsgType.NACK_LOCK, msg.rid, msg.la, msg.ra, 0, msg.reason)

    # ----- cancel -----
    def _cancel(self, side: Side, why: str) -> None:
        rc = side.rc
        assert rc is not None
        if side.new is not None:
            self._retire_path(side.new)
            side.new = None
        side.phase = Phase.CANCELING
        rc.tries = 0
        self._notify(ReconfigFailed(side.session.tuple4(), rc.rid, why, final=False))
        self._send_cancel(side)

    def _send_cancel(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None
        self._over(side.path, MsgType.CANCEL_LOCK, rc.rid, self.address, rc.other)
        self._arm(side, self.config.cancel_timeout)

    def _on_cancel_lock(self, msg: Control, src: int) -> None:
        side = self._on_path(msg, from_left=True)
        if side is None:
            return
        s = side.session
        if msg.ra == self.address:
            rc = side.rc
            if rc is not None and rc.rid == msg.rid and side.phase in (
                Phase.REQUESTED, Phase.WAITING,
            ):
                self._abandon_right(side)
            self._over(side.path, MsgType.ACK_CANCEL, msg.rid, msg.la, msg.ra)
            return
        right = s.right
        if right is None:
            self._over(side.path, MsgType.ACK_CANCEL, msg.rid, msg.la, msg.ra)
            return
        if right.lock_rid == msg.rid and right.lock is not Lock.UNLOCKED:
            right.lock = Lock.UNLOCKED
        if right.saved is not None and right.saved.rid == msg.rid:
            right.saved = None
        self._over(right.path, MsgType.CANCEL_LOCK, msg.rid, msg.la, msg.ra)

    def _abandon_right(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None
        if side.new is not None:
            self._retire_path(side.new)
            side.new = None
        self.by_rid.pop(rc.rid, None)
        side.rc = None
        side.phase = Phase.ONE_PATH

    def _on_ack_cancel(self, msg: Control) -> None:
        side = self._on_path(msg, from_left=False)
        if side is None:
            return
        rc = side.rc
        if rc is not None and rc.role == "left" and rc.rid == msg.rid:
            if side.phase is Phase.CANCELING:
                self._give_up(side, "cancelled")
            return
        s = side.session
        if s.left is not None:
            self._over(s.left.path, MsgType.ACK_CANCEL, msg.rid, msg.la, msg.ra)

    def _give_up(self, side: Side, why: str) -> None:
        """End this attempt at the left anchor; retry later unless attempts are used up."""
        side.lock = Lock.UNLOCKED
        self._failed(side, why, final=False)

    def _failed(self, side: Side, why: str, final: bool) -> None:
        rc = side.rc
        assert rc is not None
        self.by_rid.pop(rc.rid, None)
        side.rc = None
        side.phase = Phase.ONE_PATH
        if side.new is not None:
            self._retire_path(side.new)
            side.new = None
        last = final or rc.attempt >= self.config.reconfig_attempts
        if why != "cancelled" or last:
            self._notify(ReconfigFailed(side.session.tuple4(), rc.rid, why, final=last))
        if not last:
            when = self.now + self.config.retry_backoff * rc.attempt
            self._arm_retry(side, Retry(when, rc.other, rc.hops, rc.attempt + 1))

    def _arm_retry(self, side: Side, retry: Retry) -> None:
        side.retry = retry
        self._at(retry.at, lambda now: self._retry(side, retry))

    def _retry(self, side: Side, retry: Retry) -> None:
        if side.retry is not retry or side.session.sid not in self.sessions:
            return
        side.retry = None
        if not self._start(side, retry.right_anchor, retry.hops, retry.attempt):
            self._retry_later(side, retry.right_anchor, retry.hops, retry.attempt)

    def _retry_later(self, side: Side, ra: int, hops: tuple[int, ...], attempt: int) -> None:
        """The side is busy (or not established yet): try again after a backoff."""
        s = side.session
        if attempt < self.config.reconfig_attempts and s.closing_at is None and not s.torn:
            when = self.now + self.config.retry_backoff * attempt
            self._arm_retry(side, Retry(when, ra, hops, attempt + 1))
        else:
            self._notify(ReconfigFailed(s.tuple4(), 0, "busy", final=True))

    # ----- the new path -----
    def _on_syn(self, msg: Control, src: int) -> None:
        if msg.ra == self.address:
            side = self.by_rid.get(msg.rid)
            if side is None or side.rc is None or side.rc.role != "right":
                return
            if side.phase is Phase.REQUESTED:
                side.new = Path(reverse(msg.sub), 0, side.rc.delta)
                self._register(side, side.new)
                side.phase = Phase.WAITING
            if side.new is None or side.new.sub_in != msg.sub:
                return
            back = Control(MsgType.SYN_ACK, msg.rid, side.new.sub_out, msg.la, msg.ra)
            self._send(back, src)
            return
        entry = self.by_in.get(msg.sub)
        if entry is not None:
            side, _ = entry
            right = side.session.right
            if right is not None and side.is_left:
                self._forward_syn(msg, right)
            return
        if not msg.hops or msg.hops[0] != self.address or len(msg.hops) < 2:
            return
        if msg.sub in self.tombstones:
            return
        if len(self.sessions) >= self.config.max_sessions:
            self._notify(Rejected("control", "session_table_full", "new-path SYN ignored"))
            return
        t = msg.session
        stale = self.by_out.get(reverse(t)) or self.by_out.get(t)
        if stale is not None:
            old = stale.session
            if not (old.inserted and old.rid != msg.rid and old.left and old.left.rcv_max is None):
                return
            # a cancelled attempt left us waiting for traffic that will never come
            self._free_session(old, "cancelled")
        s = Session(self._count("sid"), "middle", last_activity=self.now, inserted=True,
                    rid=msg.rid)
        left = Side(s, True, t, Path(reverse(msg.sub)))
        right = Side(s, False, reverse(t), Path(self.ports.allocate(self.address, msg.hops[1])))
        s.left, s.right, s.sides = left, right, [left, right]
        self.sessions[s.sid] = s
        for side in s.sides:
            self._register(side, side.path)
            self.by_out[side.out_key] = side
        self._watch_idle(s)
        self._forward_syn(msg, right)

    def _forward_syn(self, msg: Control, right: Side) -> None:
        self._over(right.path, MsgType.SYN, msg.rid, msg.la, msg.ra,
                   session=msg.session, hops=msg.hops[1:])

    def _relay(self, msg: Control, leftward: bool) -> bool:
        """Pass a new-path message through a new-path middlebox; False if we are an anchor."""
        entry = self.by_in.get(msg.sub)
        if entry is None:
            return True
        side, path = entry
        if (side.rc is not None and side.rc.rid == msg.rid) or path is side.new:
            return False
        s = side.session
        nxt = s.left if leftward else s.right
        if nxt is None or side.is_left == leftward:
            return True
        self._over(nxt.path, msg.type, msg.rid, msg.la, msg.ra, msg.value)
        return True

    def _on_syn_ack(self, msg: Control) -> None:
        if self._relay(msg, leftward=True):
            return
        side = self.by_rid.get(msg.rid)
        if side is None or side.rc is None or side.rc.role != "left" or side.new is None:
            return
        if side.new.sub_in != msg.sub:
            return
        if side.phase is Phase.SETTING_UP:
            self._enter_two_paths(side)
        if side.phase is Phase.TWO_PATHS:
            self._send_ack(side)

    def _enter_two_paths(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None
        side.phase = Phase.TWO_PATHS
        rc.tries = 0
        rc.cutoff_snd = side.snd_max
        rc.old_rcvd_max = side.rcv_max
        rc.old_acked = side.rcv_acked

    def _send_ack(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None and side.new is not None and rc.cutoff_snd is not None
        self._over(side.new, MsgType.ACK, rc.rid, self.address, rc.other, rc.cutoff_snd)
        self._arm(side, self.config.ack_timeout)

    def _on_ack(self, msg: Control) -> None:
        if self._relay(msg, leftward=False):
            return
        side = self.by_rid.get(msg.rid)
        if side is None or side.rc is None or side.rc.role != "right" or side.new is None:
            return
        rc = side.rc
        if side.phase is Phase.WAITING:
            self._enter_two_paths(side)
        if side.phase is not Phase.TWO_PATHS:
            return
        rc.cutoff_rcv = seq.add(msg.value, rc.delta)
        assert rc.cutoff_snd is not None
        self._over(side.new, MsgType.ACK_ACK, rc.rid, msg.la, self.address, rc.cutoff_snd)
        if rc.deadline is None or rc.deadline > self.now + self.config.complete_timeout:
            self._arm(side, self.config.complete_timeout)
        self._check_complete(side)

    def _on_ack_ack(self, msg: Control) -> None:
        if self._relay(msg, leftward=True):
            return
        side = self.by_rid.get(msg.rid)
        if side is None or side.rc is None or side.rc.role != "left":
            return
        rc = side.rc
        if side.phase is Phase.TWO_PATHS and rc.cutoff_rcv is None:
            rc.cutoff_rcv = seq.add(msg.value, rc.delta)
            rc.deadline = None
            self._check_complete(side)

    # ----- completion -----
    def _complete(self, side: Side) -> bool:
        rc = side.rc
        if rc is None or side.phase is not Phase.TWO_PATHS:
            return False
        if rc.cutoff_snd is None or rc.cutoff_rcv is None:
            return False
        snd_ok = side.snd_acked is not None and seq.ge(side.snd_acked, rc.cutoff_snd)
        rcv_ok = rc.old_acked is not None and seq.ge(rc.old_acked, rc.cutoff_rcv)
        return snd_ok and rcv_ok

    def _check_complete(self, side: Side) -> None:
        rc = side.rc
        if rc is None or not self._complete(side):
            return
        if rc.role == "right":
            if not rc.complete_sent:
                rc.complete_sent = True
                self._send_complete(side)
        elif rc.peer_complete:
            self._finish(side)

    def _send_complete(self, side: Side) -> None:
        rc = side.rc
        assert rc is not None and side.new is not None
        assert rc.cutoff_snd is not None
        # COMPLETE repeats our cutoff: the ACK_ACK that carried it may have been lost.
        msg = Control(
            MsgType.COMPLETE, rc.rid, side.new.sub_out, rc.other, self.address, rc.cutoff_snd,
        )
        self._send(msg, rc.other)
        self._arm(side, self.config.complete_timeout)

    def _on_complete(self, msg: Control, src: int) -> None:
        """The right anchor is done with the old path. We answer only once we are done too:
        until then the right anchor must keep acking old-path retransmissions."""
        side = self.by_rid.get(msg.rid)
        if side is None:
            # Finished already (our COMPLETE_ACK was lost): answer from the message alone.
            back = Control(MsgType.COMPLETE_ACK, msg.rid, reverse(msg.sub), msg.la, msg.ra)
            self._send(back, src)
            return
        rc = side.rc
        if rc is None or rc.role != "left" or side.phase is not Phase.TWO_PATHS:
            return
        rc.peer_complete = True
        if rc.cutoff_rcv is None:
            rc.cutoff_rcv = seq.add(msg.value, rc.delta)
            rc.deadline = None
        self._check_complete(side)

    def _on_complete_ack(self, msg: Control) -> None:
        side = self.by_rid.get(msg.rid)
        if side is None or side.rc is None or side.rc.role != "right":
            return
        if self._complete(side):
            self._finish(side)

    def _finish(self, side: Side) -> None:
        """Both anchors are done with the old path: it goes, the new one stays."""
        rc = side.rc
        assert rc is not None and side.new is not None
        old = side.path
        if rc.role == "left":
            back = Control(MsgType.COMPLETE_ACK, rc.rid, side.new.sub_out, self.address, rc.other)
            self._send(back, rc.other)
            self._send_teardown(side, old)
        self._retire_path(old)
        side.path, side.new = side.new, None
        side.phase = Phase.ONE_PATH
        self.by_rid.pop(rc.rid, None)
        side.rc = None
        if rc.role == "left":
            side.lock = Lock.UNLOCKED
        self._notify(ReconfigDone(side.session.tuple4(), rc.rid, rc.role, rc.started, self.now))

    def _on_teardown(self, msg: Control) -> None:
        side = self._on_path(msg, from_left=True)
        if side is None:
            return
        s = side.session
        if msg.ra == self.address:
            rc = side.rc
            if rc is not None and rc.rid == msg.rid and self._complete(side):
                self._finish(side)
            return
        if s.right is not None:
            self._over(s.right.path, MsgType.TEARDOWN, msg.rid, msg.la, msg.ra)
        if not s.torn:
            s.torn = True
            s.close_how = "teardown"
            s.closing_at = self.now + self.config.linger
            self._at(s.closing_at, lambda now: self._linger_done(s, now))

    # ----- right-request (a middlebox asks to be removed or replaced) -----
    def _on_right_request(self, msg: Control) -> None:
        side = self._on_path(msg, from_left=False)
        if side is None:
            return
        if msg.la != self.address or side.path.peer != msg.sub[0]:
            return
        self._start(side, msg.ra, msg.hops, 1)

    def _send_right_request(self, s: Session) -> None:
        left, right = s.left, s.right
        if left is None or right is None or s.removal is None:
            return
        self._over(left.path, MsgType.RIGHT_REQUEST, 0, left.path.peer, right.path.peer,
                   session=s.tuple4(), hops=s.removal)

    def _removal_tick(self, s: Session, now: float) -> None:
        if s.sid not in self.sessions or s.torn or s.removal is None:
            return
        if s.right is None or s.right.lock is Lock.UNLOCKED:
            s.removal_tries += 1
            if s.removal_tries > self.config.removal_attempts:
                return
            self._send_right_request(s)
        # else a reconfiguration holds the lock through us (our left neighbour acts on
        # the request): repeating it would only load agents that are busy with it
        # (1,000 sessions: thousands of datagrams); ticks resume if it is cancelled.
        self._at(now + self.config.removal_retry, lambda t: self._removal_tick(s, t))



__all__ = ["Reconfigurer", "ctl"]
