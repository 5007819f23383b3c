"""The Dysco agent: one per host. Events in (packets, control messages, time, commands),
actions out. See docs/core-api.md for the contract and docs/protocol.md for the design.
"""

from __future__ import annotations

from . import commands as cmd
from . import control as ctl
from . import seq, synlist
from .actions import Action, Hook
from .auth import Authenticator
from .config import AgentConfig
from .control import MsgType
from .datapath import split_two_paths, to_local, to_wire, track_in, track_out
from .errors import RemoteError
from .events import Rejected, SessionOpened
from .failure import HopWatch
from .packet import ACK, RST, SYN, TcpPacket
from .policy import Policy, Selector, choose_instance
from .reconfig import Reconfigurer
from .state import Path, Phase, Session, Side, Tuple4, reverse


class Agent(Reconfigurer, HopWatch):
    """A Dysco agent. Drive it with `packet`, `control`, `timer` and `command`."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(config)

    # ================= public entry points =================
    def packet(self, hook: Hook, data: bytes | bytearray, now: float) -> list[Action]:
        self._begin(now)
        try:
            pkt = TcpPacket.parse(data)
        except RemoteError as e:
            self._notify(Rejected("packet", e.reason, str(e)))
            if self._owned_raw(data, hook):
                self._drop()  # fail closed: never let a session's packet through unrewritten
            else:
                self._emit(bytes(data), hook)
            return self._end()
        try:
            if hook is Hook.OUTPUT:
                self._output(pkt)
            else:
                self._input(pkt)
        except RemoteError as e:
            self._notify(Rejected("packet", e.reason, str(e)))
            self._drop()
        if not self._verdict_given:
            self._emit(bytes(data), hook)
        return self._end()

    def control(self, src: int, data: bytes, now: float) -> list[Action]:
        self._begin(now)
        if not self.control_limiter.allow(src, now):
            self._notify(Rejected("control", "rate_limited", "over the sender's rate"))
            return self._end()
        try:
            body = data if self.auth is None else self.auth.open(data, src, now)
            msg = ctl.decode(body)
        except RemoteError as e:
            self._notify(Rejected("control", e.reason, str(e)))
            return self._end()
        handler = self._control_table.get(msg.type)
        if handler is not None:
            handler(self, msg, src)
        return self._end()

    def timer(self, now: float) -> list[Action]:
        self._begin(now)
        self._run_timers(now)
        return self._end()

    def command(self, command: cmd.Command, now: float) -> list[Action]:
        self._begin(now)
        if isinstance(command, cmd.SetPolicies):
            self.policies = command.policies
        elif isinstance(command, cmd.InsertRight):
            for s in self._select(command.selector):
                right = s.right
                if right is not None:
                    ra = command.right_anchor or right.path.peer
                    if (command.hops or ra != right.path.peer) and not self._start(
                        right, ra, command.hops, 1
                    ):
                        self._retry_later(right, ra, command.hops, 1)
        elif isinstance(command, cmd.ReplaceSelf):
            for s in self._select(command.selector):
                if s.left is not None and s.right is not None and s.removal is None:
                    s.removal = command.hops
                    s.removal_tries = 0
                    self._removal_tick(s, now)
        elif isinstance(command, cmd.SetKeys):
            if self.auth is None:
                self.auth = Authenticator(dict(command.keys), command.current,
                                          self.config.auth_window)
            else:
                self.auth.set_keys(dict(command.keys), command.current)
        elif isinstance(command, cmd.SetContentDelta):
            for s in self._select(command.selector):
                s.content_l2r = command.left_to_right
                s.content_r2l = command.right_to_left
        return self._end()

    def _select(self, sel: Selector) -> list[Session]:
        return [
            s for s in list(self.sessions.values())
            if not s.torn and sel.matches(s.tuple4(), s.policy)
        ]

    # ================= packets =================
    def _owned_raw(self, data: bytes | bytearray, hook: Hook) -> bool:
        """Might an unparseable packet belong to one of our sessions? Unreadable tuples
        count as ours (fail closed); readable ones are checked against the tables."""
        if len(data) < 20 or data[0] >> 4 != 4:
            return True
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20 or len(data) < ihl + 4:
            return True
        t = (
            int.from_bytes(data[12:16], "big"), int.from_bytes(data[16:20], "big"),
            int.from_bytes(data[ihl : ihl + 2], "big"),
            int.from_bytes(data[ihl + 2 : ihl + 4], "big"),
        )
        return t in (self.by_out if hook is Hook.OUTPUT else self.by_in)

    def _output(self, pkt: TcpPacket) -> None:
        key = pkt.tuple4()
        side = self.by_out.get(key)
        flags = pkt.flags
        if side is not None:
            self._send_on_side(side, pkt)
            return
        if not (flags & SYN) or flags & ACK:
            return
        if pkt.payload_len and (key in self.pending or pkt.tag() is not None or any(
            p.matches(key) for p in self.policies
        )):
            # the SYN list rides as payload: an app SYN with data cannot open a chain
            raise RemoteError("SYN with data from an app whose sessions Dysco carries", "syn_data")
        s = self.pending.get(key)
        if s is None:
            tag = pkt.tag()
            s = self.pending_tag.get(tag) if tag is not None else None
        if s is not None:
            self._middlebox_syn_out(s, pkt)
            return
        for policy in self.policies:
            if policy.matches(key):
                self._left_end_syn(policy, pkt)
                return

    def _input(self, pkt: TcpPacket) -> None:
        key = pkt.tuple4()
        entry = self.by_in.get(key)
        if entry is not None:
            self._receive_on_side(entry[0], entry[1], pkt)
            return
        if key in self.tombstones:
            self._drop()
            return
        flags = pkt.flags
        if flags & SYN and not flags & ACK and pkt.payload_len:
            payload = pkt.payload
            if synlist.looks_like_synlist(payload):
                self._syn_in(pkt, synlist.decode(payload))

    # ----- session setup -----
    def _new_session(self, role: str, policy: str, revision: int) -> Session | None:
        """A session for a new SYN, or None (SYN dropped, reported) over a limit."""
        if len(self.sessions) >= self.config.max_sessions:
            self._notify(Rejected("packet", "session_table_full", "SYN dropped"))
            self._drop()
            return None
        if self.half_open >= self.config.max_half_open:
            self._notify(Rejected("packet", "half_open_full", "SYN dropped"))
            self._drop()
            return None
        s = Session(self._count("sid"), role, policy, revision, last_activity=self.now)
        self.sessions[s.sid] = s
        self._open_half(s, self.now)
        self._watch_idle(s)
        return s

    def _left_end_syn(self, policy: Policy, pkt: TcpPacket) -> None:
        t = pkt.tuple4()
        n = self._count("rr")
        hops = tuple(choose_instance(h, t, n, frozenset()) for h in policy.hops)
        chain = (*hops, t[1])
        s = self._new_session("left", policy.name, policy.revision)
        if s is None:
            return
        right = Side(s, False, reverse(t), Path(self.ports.allocate(self.address, chain[0])))
        s.right, s.sides = right, [right]
        self._register(right, right.path)
        self.by_out[t] = right
        s.syn_payload = synlist.SynList(t, chain, policy.revision).encode()
        self._notify(SessionOpened(t, policy.name, "left"))
        self._send_on_side(right, pkt)

    def _syn_in(self, pkt: TcpPacket, sl: synlist.SynList) -> None:
        if sl.hops[0] != self.address:
            raise RemoteError(f"SYN list names {sl.hops[0]:#x}, not us", "misrouted_syn")
        t = sl.session
        old = self.by_out.get(reverse(t))
        if old is not None and old.session.closing_at is not None and t not in self.pending:
            # The app reused the tuple of a session that ended here and only lingers to
            # absorb late packets (its ends may have forgotten it already: a kernel fast
            # path ends sessions at TIME_WAIT): the new connection replaces it.
            self._free_session(old.session, old.session.close_how)
            old = None
        if t in self.pending or old is not None:
            raise RemoteError("SYN list for a session we already carry", "duplicate_session")
        rest = sl.hops[1:]
        s = self._new_session("middle" if rest else "right", "", sl.revision)
        if s is None:
            return
        left = Side(s, True, t, Path((self.address, pkt.src, pkt.dport, pkt.sport)))
        s.left, s.sides = left, [left]
        self._register(left, left.path)
        self.by_out[left.out_key] = left
        if rest:
            s.pending_hops = rest
            s.tag = self._count("tag") & 0xFFFFFFFF
            self.pending[t] = s
            self.pending_tag[s.tag] = s
        self._notify(SessionOpened(t, "", s.role))
        self._receive_on_side(left, left.path, pkt)

    def _middlebox_syn_out(self, s: Session, pkt: TcpPacket) -> None:
        """The SYN re-emerges from the middlebox app: open the next subsession."""
        assert s.left is not None
        if pkt.tag() is not None:
            pkt = pkt.without_tag()
        t = pkt.tuple4()
        if t in self.by_out:
            raise RemoteError("middlebox emitted a tuple already in use", "tuple_clash")
        nxt = s.pending_hops[0]
        right = Side(s, False, reverse(t), Path(self.ports.allocate(self.address, nxt)))
        s.right = right
        s.sides.append(right)
        self._register(right, right.path)
        self.by_out[t] = right
        s.syn_payload = synlist.SynList(t, s.pending_hops, s.revision).encode()
        self.pending.pop(s.left.local, None)
        if s.tag is not None:
            self.pending_tag.pop(s.tag, None)
        s.pending_hops = ()
        self._send_on_side(right, pkt)

    # ----- steady state -----
    def _send_on_side(self, side: Side, pkt: TcpPacket) -> None:
        s = side.session
        if s.torn:
            self._drop()
            return
        flags = pkt.flags
        syn = bool(flags & SYN)
        if syn and not flags & ACK and s.syn_payload and pkt.payload_len:
            raise RemoteError("SYN with data from a Dysco session's app", "syn_data")
        if syn and pkt.tag() is not None:
            pkt = pkt.without_tag()
        s.last_activity = self.now
        track_out(side, pkt, syn)
        if s.half_open:
            self._check_established(s)
        if s.role != "middle" and pkt.seg_len:
            self._watch_send(side)
        if syn and not flags & ACK and s.syn_payload:
            pkt = pkt.rebuild(payload=s.syn_payload)
        rc = side.rc
        if (
            side.phase is Phase.TWO_PATHS and rc is not None and side.new is not None
            and rc.cutoff_snd is not None and rc.old_rcvd_max is not None
        ):
            parts = split_two_paths(side, rc, pkt)
            for p, on_new in parts:
                to_wire(p, side.new if on_new else side.path)
                self._emit(p.to_bytes(), Hook.OUTPUT)
            self._check_complete(side)
        else:
            to_wire(pkt, side.path)
            self._emit(pkt.to_bytes(), Hook.OUTPUT)
            if flags & RST:
                self._close_now(s, "rst")
                return
        self._check_closed(s)

    def _receive_on_side(self, side: Side, path: Path, pkt: TcpPacket) -> None:
        s = side.session
        if s.torn:
            self._drop()
            return
        flags = pkt.flags
        if s.role != "middle" and side.done() and not pkt.seg_len and not flags & RST:
            # Both FINs are acked and our app's TCP has seen it: a pure ack now only
            # repeats one (the peer, in TIME_WAIT, answering a FIN resent after a
            # spurious RTO), and a passive closer's socket, already CLOSED, would answer
            # it with a RST. Not at a middlebox: its "done" does not mean the far end
            # got the last ack, and the repeat may be what it still waits for.
            self._drop()
            return
        syn = bool(flags & SYN)
        if syn and not flags & ACK:
            if pkt.payload_len and synlist.looks_like_synlist(pkt.payload):
                pkt = pkt.rebuild(payload=b"")
            if s.tag is not None and s.pending_hops:
                pkt = pkt.with_tag(s.tag)
        s.last_activity = self.now
        on_new = path is side.new
        if on_new and side.phase is Phase.WAITING:
            self._enter_two_paths(side)  # first sign that the left anchor switched
        to_local(pkt, side, path)
        stalled, acked = side.stall_since is not None, side.snd_acked
        track_in(side, pkt, syn)
        if s.half_open:
            self._check_established(s)
        if stalled and side.snd_acked != acked:
            self._progress(side)
        rc = side.rc
        if rc is not None and side.phase is Phase.TWO_PATHS and not on_new and pkt.seg_len:
            end = seq.add(pkt.seq, pkt.seg_len)
            if rc.old_rcvd_max is None or seq.gt(end, rc.old_rcvd_max):
                rc.old_rcvd_max = end
            rc.old_data_since_ack = True
        elif (rc is not None and side.phase is Phase.TWO_PATHS and not on_new
              and not flags & RST and rc.old_rcvd_max is not None
              and seq.gt(pkt.seq, rc.old_rcvd_max)):
            # A bare ack on the old path carries the peer's next old-path seq: data
            # below it came that way (relearnt after a kernel fast-path stretch, as
            # track_in relearns rcv_max), so our acks of it may go on the old path.
            rc.old_rcvd_max = pkt.seq
        self._emit(pkt.to_bytes(), Hook.INPUT)
        if flags & RST:
            self._close_now(s, "rst")
            return
        if rc is not None and side.phase is Phase.TWO_PATHS:
            self._check_complete(side)
        self._check_closed(s)

    # ----- session end -----
    def _check_closed(self, s: Session) -> None:
        if s.closing_at is None and s.sides and all(side.done() for side in s.sides):
            if s.pending_hops:
                return
            s.closing_at = self.now + self.config.linger
            self._at(s.closing_at, lambda now: self._linger_done(s, now))

    def _close_now(self, s: Session, how: str) -> None:
        """RST: forget the session after the linger (the RST itself still passes through
        a middlebox's application and out the other side meanwhile)."""
        if s.closing_at is not None and s.closing_at <= self.now + self.config.linger:
            return
        s.close_how = how
        s.closing_at = self.now + self.config.linger
        self._at(s.closing_at, lambda now: self._linger_done(s, now))

    # ================= control messages =================
    _control_table = {
        MsgType.REQUEST_LOCK: lambda a, m, src: a._on_request_lock(m, src),
        MsgType.ACK_LOCK: lambda a, m, src: a._on_ack_lock(m),
        MsgType.NACK_LOCK: lambda a, m, src: a._on_nack_lock(m),
        MsgType.CANCEL_LOCK: lambda a, m, src: a._on_cancel_lock(m, src),
        MsgType.ACK_CANCEL: lambda a, m, src: a._on_ack_cancel(m),
        MsgType.RIGHT_REQUEST: lambda a, m, src: a._on_right_request(m),
        MsgType.SYN: lambda a, m, src: a._on_syn(m, src),
        MsgType.SYN_ACK: lambda a, m, src: a._on_syn_ack(m),
        MsgType.ACK: lambda a, m, src: a._on_ack(m),
        MsgType.ACK_ACK: lambda a, m, src: a._on_ack_ack(m),
        MsgType.COMPLETE: lambda a, m, src: a._on_complete(m, src),
        MsgType.COMPLETE_ACK: lambda a, m, src: a._on_complete_ack(m),
        MsgType.TEARDOWN: lambda a, m, src: a._on_teardown(m),
        MsgType.ABORT: lambda a, m, src: a._on_abort(m, src),
    }

    # ================= introspection =================
    def stats(self) -> dict[str, int]:
        return {
            "sessions": len(self.sessions),
            "half_open": self.half_open,
            "subsessions": len(self.by_in),
            "pending": len(self.pending),
            "reconfigurations": len(self.by_rid),
            "tombstones": len(self.tombstones),
            "timers": len(self._timers),
            "offloaded": sum(s.offloaded for s in self.sessions.values()),
        }

    def forget(self, sid: int, how: str, now: float) -> list[Action]:
        """Free an offloaded session whose end only the driver saw (core/offload.py)."""
        self._begin(now)
        s = self.sessions.get(sid)
        if s is not None and s.offloaded:
            self._free_session(s, how)
        return self._end()

    def stalled(self, sid: int, since: float, now: float) -> list[Action]:
        """A driver handed back an offloaded session whose end has had unacknowledged
        data and no ack since `since` (it read its socket): the dead-hop watch
        (failure.py) carries on from then, as if the core had seen it."""
        self._begin(now)
        s = self.sessions.get(sid)
        if s is not None and not s.offloaded and len(s.sides) == 1:
            side = s.sides[0]
            side.stall_since = since
            if not side.stall_armed:
                self._arm_stall(side, max(now, since + self.config.hop_timeout))
        return self._end()

    def session_of(self, t: Tuple4) -> Session | None:
        side = self.by_out.get(t) or self.by_out.get(reverse(t))
        return side.session if side is not None else None
