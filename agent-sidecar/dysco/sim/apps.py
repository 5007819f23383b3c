"""Applications on simulated hosts: TCP endpoints and middlebox models.

Middleboxes: `Forwarder` (transparent), `Shifter` (changes sequence numbers by a
different delta in each direction, like a sequence-randomising firewall), `Nat`
(rewrites the client's address and port), `Proxy` (terminates TCP on both sides and
prepends a banner to each direction, so its deltas are ISN differences plus content).
Each middlebox checks that it never sees an ack for data it did not forward.
"""

from __future__ import annotations

from ..core import Selector, seq
from ..core.commands import SetContentDelta
from ..core.packet import ACK, SYN, TcpPacket
from .tcp import TcpEndpoint
from .world import Host, World

Tuple4 = tuple[int, int, int, int]


class AckWatcher:
    """Highest sequence number seen per direction; acks must stay below the opposite one."""

    def __init__(self, name: str, violations: list[str]) -> None:
        self.name = name
        self.violations = violations
        self.high: dict[Tuple4, int] = {}

    def record(self, pkt: TcpPacket) -> None:
        """A packet as forwarded (output space)."""
        t = pkt.tuple4()
        n = pkt.seg_len
        if n:
            end = seq.add(pkt.seq, n)
            cur = self.high.get(t)
            self.high[t] = end if cur is None else seq.max_(cur, end)

    def check(self, pkt: TcpPacket) -> None:
        """A packet as received (input space): its ack must cover forwarded data only."""
        t = pkt.tuple4()
        if pkt.flags & ACK:
            back = (t[1], t[0], t[3], t[2])
            limit = self.high.get(back)
            if limit is None:
                return
            if seq.gt(pkt.ack, limit):
                beyond = seq.sub(pkt.ack, limit)
                self.violations.append(
                    f"{self.name}: saw ack for data it never forwarded ({beyond} beyond, {t})"
                )
            for _a, b in pkt.sack_blocks():
                if seq.gt(b, limit):
                    self.violations.append(f"{self.name}: saw SACK for data it never forwarded")


class Endpoint:
    """A client (active open) or server (passive) moving `data` and expecting `expect`."""

    def __init__(
        self, world: World, host: Host, data: bytes, expect: bytes, chunk: int, interval: float,
        connect_to: Tuple4 | None = None,
    ) -> None:
        self.world = world
        self.host = host
        self.data = data
        self.expect = expect
        self.chunk = chunk
        self.interval = interval
        self.conn: TcpEndpoint | None = None
        self.bad = False
        host.app = self
        if connect_to is not None:
            self.conn = self._make(connect_to)
            self.conn.connect()
            world.engine.after(0.0, self._pump_later)

    def _make(self, local: Tuple4) -> TcpEndpoint:
        c = TcpEndpoint(
            self.world.engine, self.host.name, local, self.world.rng.getrandbits(32),
            self.host.app_send, self.world.violations,
        )
        c.on_data = self._check
        return c

    def _check(self, _chunk: bytes) -> None:
        assert self.conn is not None
        got = self.conn.received
        if not self.bad and bytes(got) != self.expect[: len(got)]:
            self.bad = True
            self.world.violations.append(f"{self.host.name}: received bytes differ from those sent")

    def _pump_later(self) -> None:
        self._pumped = 0
        self._pump()

    def _pump(self) -> None:
        c = self.conn
        if c is None:
            return
        if c.state != "established":
            self.world.engine.after(self.interval, self._pump)
            return
        if self._pumped < len(self.data):
            c.write(self.data[self._pumped : self._pumped + self.chunk])
            self._pumped += self.chunk
            self.world.engine.after(self.interval, self._pump)
        else:
            c.close()

    def receive(self, data: bytes) -> None:
        pkt = TcpPacket.parse(data)
        if self.conn is None:
            if pkt.flags & SYN and not pkt.flags & ACK:
                t = pkt.tuple4()
                self.conn = self._make((t[1], t[0], t[3], t[2]))
                self.conn.listen()
                self._pumped = 0
                self.world.engine.after(0.0, self._pump)
            else:
                return
        self.conn.receive(data)

    def session_closed(self) -> None:
        pass

    def finished(self) -> bool:
        c = self.conn
        return c is not None and c.done and bytes(c.received) == self.expect


class Forwarder:
    def __init__(self, world: World, host: Host) -> None:
        self.host = host
        self.watch = AckWatcher(host.name, world.violations)
        self.packets = 0
        host.app = self

    def receive(self, data: bytes) -> None:
        self.packets += 1
        pkt = TcpPacket.parse(data)
        self.watch.check(pkt)
        self.watch.record(pkt)
        self.host.app_send(data)

    def session_closed(self) -> None:
        pass


class Shifter(Forwarder):
    """Adds `d_lr` to client->server sequence numbers and `d_rl` to the other direction."""

    def __init__(self, world: World, host: Host, d_lr: int, d_rl: int) -> None:
        super().__init__(world, host)
        self.d_lr = d_lr
        self.d_rl = d_rl
        self.client: int | None = None

    def receive(self, data: bytes) -> None:
        pkt = TcpPacket.parse(data)
        self.watch.check(pkt)
        if pkt.flags & SYN and not pkt.flags & ACK:
            self.client = pkt.src
        fwd = pkt.src == self.client
        mine, theirs = (self.d_lr, self.d_rl) if fwd else (self.d_rl, self.d_lr)
        pkt.set_seq(seq.add(pkt.seq, mine))
        if pkt.flags & ACK:
            pkt.set_ack(seq.add(pkt.ack, -theirs))
            blocks = pkt.sack_blocks()
            if blocks:
                pkt.set_sack_blocks([(seq.add(a, -theirs), seq.add(b, -theirs)) for a, b in blocks])
        self.watch.record(pkt)
        self.host.app_send(pkt.to_bytes())


class Nat(Forwarder):
    """Source NAT: the client's address and port become the NAT's own."""

    def __init__(self, world: World, host: Host, port_shift: int = 1000) -> None:
        super().__init__(world, host)
        self.shift = port_shift
        self.client: tuple[int, int] | None = None

    def receive(self, data: bytes) -> None:
        pkt = TcpPacket.parse(data)
        self.watch.check(pkt)
        if pkt.flags & SYN and not pkt.flags & ACK and self.client is None:
            self.client = (pkt.src, pkt.sport)
        if self.client is None:
            return
        if (pkt.src, pkt.sport) == self.client:
            pkt.set_src(self.host.address)
            pkt.set_sport((pkt.sport + self.shift) & 0xFFFF)
        elif pkt.dst == self.host.address:
            pkt.set_dst(self.client[0])
            pkt.set_dport(self.client[1])
        self.watch.record(pkt)
        self.host.app_send(pkt.to_bytes())


class Proxy:
    """A transparent TCP-terminating proxy that prepends a banner in each direction."""

    def __init__(self, world: World, host: Host, banner_lr: bytes, banner_rl: bytes) -> None:
        self.world = world
        self.host = host
        self.banner_lr = banner_lr
        self.banner_rl = banner_rl
        self.left: TcpEndpoint | None = None
        self.right: TcpEndpoint | None = None
        self.session: Tuple4 | None = None
        host.app = self

    def receive(self, data: bytes) -> None:
        pkt = TcpPacket.parse(data)
        t = pkt.tuple4()
        if self.session is None:
            if not (pkt.flags & SYN) or pkt.flags & ACK:
                return
            self.session = t
            w = self.world
            self.left = TcpEndpoint(
                w.engine, f"{self.host.name}/left", (t[1], t[0], t[3], t[2]),
                w.rng.getrandbits(32), self.host.app_send, w.violations,
            )
            self.right = TcpEndpoint(
                w.engine, f"{self.host.name}/right", t, w.rng.getrandbits(32),
                self.host.app_send, w.violations,
            )
            left, right = self.left, self.right
            left.listen()
            right.connect()
            right.write(self.banner_lr)
            left.write(self.banner_rl)
            left.on_data = right.write
            right.on_data = left.write
            left.on_fin = right.close
            right.on_fin = left.close
            # tell the local agent how the stream changes: its deltas need it
            sel = Selector(dst=frozenset({t[1]}), dst_ports=frozenset({t[3]}))
            self.host.command(SetContentDelta(sel, len(self.banner_lr), len(self.banner_rl)))
        assert self.left is not None and self.right is not None
        if t == self.session:
            self.left.receive(data)
        else:
            self.right.receive(data)

    def session_closed(self) -> None:
        if self.left is not None and self.right is not None:
            self.left.kill()
            self.right.kill()
