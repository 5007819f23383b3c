"""A small but honest TCP endpoint: handshake, sliding window, retransmission on timeout
and on three duplicate acks, out-of-order reassembly, SACK blocks, FIN per direction.

It checks what a real stack would refuse: acks or SACK blocks for data never sent,
and RSTs. Violations are recorded, not raised, so a run reports all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core import seq
from ..core.packet import ACK, FIN, PSH, RST, SYN, TcpPacket, build, sack_option
from .engine import Engine

Tuple4 = tuple[int, int, int, int]


class TcpEndpoint:
    def __init__(
        self,
        engine: Engine,
        name: str,
        local: Tuple4,
        isn: int,
        send: Callable[[bytes], None],
        violations: list[str],
        mss: int = 1000,
        window: int = 8,
        rto: float = 0.03,
    ) -> None:
        self.engine = engine
        self.name = name
        self.local = local  # (my ip, peer ip, my port, peer port)
        self.isn = isn
        self._send = send
        self.violations = violations
        self.mss = mss
        self.window = window
        self.base_rto = rto
        self.rto = rto
        self.state = "closed"
        self.out = bytearray()  # everything the app wrote
        self.snd_una = seq.add(isn, 1)
        self.snd_nxt = self.snd_una
        self.snd_max = self.snd_una
        self.closing = False  # app closed its sending side
        self.fin_seq: int | None = None
        self.rcv_nxt = 0
        self.ooo: dict[int, bytes] = {}
        self.received = bytearray()
        self.fin_rcvd = False
        self.fin_at: int | None = None  # sequence number of the peer's FIN, once seen
        self.peer_isn: int | None = None
        self.dupacks = 0
        self._rto_at: float | None = None
        self.retransmits = 0
        self.on_data: Callable[[bytes], None] | None = None
        self.on_fin: Callable[[], None] | None = None
        self.dead = False

    # ----- app side -----
    def connect(self) -> None:
        self.state = "syn-sent"
        self._emit(self.isn, 0, SYN, b"")
        self.snd_max = seq.add(self.isn, 1)
        self._arm()

    def listen(self) -> None:
        self.state = "listen"

    def write(self, data: bytes) -> None:
        self.out += data
        self._output()

    def close(self) -> None:
        self.closing = True
        self._output()

    def kill(self) -> None:
        """Forget the connection silently (a proxy whose session was spliced out)."""
        self.dead = True
        self._rto_at = None

    @property
    def done(self) -> bool:
        return (
            self.fin_rcvd
            and self.fin_seq is not None
            and seq.gt(self.snd_una, self.fin_seq)
        )

    # ----- wire -----
    def _emit(self, seqno: int, ack: int, flags: int, payload: bytes) -> None:
        if self.dead:
            return
        opts = b""
        if flags & ACK and self.ooo:
            opts = sack_option(self._sack_blocks())
        me, peer, mp, pp = self.local
        self._send(build(me, peer, mp, pp, seqno, ack, flags, options=opts, payload=payload))

    def _sack_blocks(self) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for s in sorted(self.ooo, key=lambda x: seq.sub(x, self.rcv_nxt)):
            e = seq.add(s, len(self.ooo[s]))
            if spans and seq.le(s, spans[-1][1]):
                spans[-1] = (spans[-1][0], seq.max_(e, spans[-1][1]))
            else:
                spans.append((s, e))
        return spans[:3]

    def _in_flight(self) -> int:
        return seq.sub(self.snd_nxt, self.snd_una)

    def _output(self) -> None:
        if self.state != "established" or self.dead:
            return
        base = seq.add(self.isn, 1)
        while True:
            off = seq.sub(self.snd_nxt, base)
            avail = len(self.out) - off
            if avail > 0 and self._in_flight() < self.window * self.mss:
                chunk = bytes(self.out[off : off + min(avail, self.mss)])
                self._emit(self.snd_nxt, self.rcv_nxt, ACK | PSH, chunk)
                self.snd_nxt = seq.add(self.snd_nxt, len(chunk))
                self.snd_max = seq.max_(self.snd_max, self.snd_nxt)
                self._arm_if_idle()
                continue
            fin_due = self.fin_seq is None or self.snd_nxt == self.fin_seq
            if avail == 0 and self.closing and fin_due:
                if self.fin_seq is None:
                    self.fin_seq = self.snd_nxt
                if seq.le(self.snd_nxt, self.fin_seq):
                    self._emit(self.fin_seq, self.rcv_nxt, ACK | FIN, b"")
                    self.snd_nxt = seq.add(self.fin_seq, 1)
                    self.snd_max = seq.max_(self.snd_max, self.snd_nxt)
                    self._arm_if_idle()
            return

    def _arm_if_idle(self) -> None:
        if self._rto_at is None:
            self._arm()

    def _arm(self) -> None:
        when = self.engine.now + self.rto
        self._rto_at = when
        self.engine.at(when, lambda: self._on_rto(when))

    def _on_rto(self, when: float) -> None:
        if self._rto_at != when or self.dead:
            return
        self._rto_at = None
        if self.state == "syn-sent":
            self._emit(self.isn, 0, SYN, b"")
        elif self.state == "syn-rcvd":
            self._emit(self.isn, self.rcv_nxt, SYN | ACK, b"")
        elif self.snd_una != self.snd_max:
            self.retransmits += 1
            self.snd_nxt = self.snd_una
            self._output()
        else:
            return
        self.rto = min(self.rto * 2, 1.0)
        self._arm()

    def receive(self, data: bytes) -> None:
        if self.dead:
            return
        pkt = TcpPacket.parse(data)
        flags = pkt.flags
        if flags & RST:
            self.violations.append(f"{self.name}: got RST")
            return
        if flags & SYN:
            self._on_syn(pkt)
            return
        if self.state in ("closed", "listen", "syn-sent"):
            return
        if flags & ACK:
            self._on_ack(pkt)
        if pkt.payload_len or flags & FIN:
            self._on_data(pkt)

    def _on_syn(self, pkt: TcpPacket) -> None:
        flags = pkt.flags
        if flags & ACK:
            if self.state == "syn-sent":
                if pkt.ack != seq.add(self.isn, 1):
                    self.violations.append(f"{self.name}: SYN-ACK acks {pkt.ack}, not our ISN+1")
                    return
                self.peer_isn = pkt.seq
                self.rcv_nxt = seq.add(pkt.seq, 1)
                self.snd_una = pkt.ack
                self.state = "established"
                self._rto_at = None
                self.rto = self.base_rto
                self._emit(self.snd_nxt, self.rcv_nxt, ACK, b"")
                self._output()
            elif self.peer_isn == pkt.seq:
                self._emit(self.snd_nxt, self.rcv_nxt, ACK, b"")
            return
        if self.state == "listen":
            self.peer_isn = pkt.seq
            self.rcv_nxt = seq.add(pkt.seq, 1)
            self.state = "syn-rcvd"
            self._emit(self.isn, self.rcv_nxt, SYN | ACK, b"")
            self.snd_max = seq.add(self.isn, 1)
            self._arm()
        elif self.peer_isn == pkt.seq and self.state == "syn-rcvd":
            self._emit(self.isn, self.rcv_nxt, SYN | ACK, b"")

    def _on_ack(self, pkt: TcpPacket) -> None:
        a = pkt.ack
        if seq.gt(a, self.snd_max):
            self.violations.append(
                f"{self.name}: ack {seq.sub(a, self.isn)} beyond data sent "
                f"{seq.sub(self.snd_max, self.isn)}"
            )
            return
        for _l, r in pkt.sack_blocks():
            if seq.gt(r, self.snd_max):
                self.violations.append(f"{self.name}: SACK block beyond data sent")
        if self.state == "syn-rcvd" and seq.gt(a, self.isn):
            self.state = "established"
            self._rto_at = None
            self.rto = self.base_rto
        if seq.gt(a, self.snd_una):
            self.snd_una = a
            if seq.lt(self.snd_nxt, a):
                self.snd_nxt = a
            self.dupacks = 0
            self.rto = self.base_rto
            self._rto_at = None
            if self.snd_una != self.snd_max:
                self._arm()
        elif a == self.snd_una and pkt.payload_len == 0 and self.snd_una != self.snd_max:
            self.dupacks += 1
            if self.dupacks == 3:
                self.retransmits += 1
                self._retransmit_one()
        self._output()

    def _retransmit_one(self) -> None:
        base = seq.add(self.isn, 1)
        off = seq.sub(self.snd_una, base)
        if self.fin_seq is not None and self.snd_una == self.fin_seq:
            self._emit(self.fin_seq, self.rcv_nxt, ACK | FIN, b"")
            return
        chunk = bytes(self.out[off : off + self.mss])
        if chunk:
            self._emit(self.snd_una, self.rcv_nxt, ACK | PSH, chunk)

    def _on_data(self, pkt: TcpPacket) -> None:
        s = pkt.seq
        payload = pkt.payload
        if pkt.flags & FIN:
            self.fin_at = seq.add(s, len(payload))
        if payload and seq.ge(s, self.rcv_nxt):
            self.ooo.setdefault(s, payload)
        elif payload and seq.lt(s, self.rcv_nxt) and seq.gt(seq.add(s, len(payload)), self.rcv_nxt):
            cut = seq.sub(self.rcv_nxt, s)
            self.ooo.setdefault(self.rcv_nxt, payload[cut:])
        self._drain()
        self._emit(self.snd_nxt, self.rcv_nxt, ACK, b"")

    def _drain(self) -> None:
        while True:
            chunk = self.ooo.pop(self.rcv_nxt, None)
            if chunk is None:
                # drop stale pieces wholly below rcv_nxt; trim overlapping ones
                for k in list(self.ooo):
                    if seq.lt(k, self.rcv_nxt):
                        piece = self.ooo.pop(k)
                        end = seq.add(k, len(piece))
                        if seq.gt(end, self.rcv_nxt):
                            self.ooo.setdefault(self.rcv_nxt, piece[seq.sub(self.rcv_nxt, k):])
                if self.rcv_nxt in self.ooo:
                    continue
                break
            self.received += chunk
            self.rcv_nxt = seq.add(self.rcv_nxt, len(chunk))
            if self.on_data is not None:
                self.on_data(chunk)
        if self.fin_at is not None and self.fin_at == self.rcv_nxt and not self.fin_rcvd:
            self.fin_rcvd = True
            self.rcv_nxt = seq.add(self.rcv_nxt, 1)
            if self.on_fin is not None:
                self.on_fin()
