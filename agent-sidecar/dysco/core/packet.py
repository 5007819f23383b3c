"""IPv4 + TCP packets on a bytearray: parse, read, rewrite in place.

Field setters keep both checksums valid with RFC 1624 incremental updates, so the
per-packet work is header-only. Structural edits (SYN payload, tag option, splitting a
segment) rebuild the packet and recompute checksums; they happen on SYNs and at the
two-path cutoff only.
"""

from __future__ import annotations

import struct

from . import checksum as ck
from .errors import OptionError, PacketError, TruncatedError

# TCP flags
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_OK = 4
OPT_SACK = 5
OPT_TS = 8
# RFC 6994 experimental option carrying the local SYN tag (see docs/protocol.md).
OPT_EXP = 253
TAG_EXID = 0xD15C
TAG_LEN = 8

PROTO_TCP = 6

_FIXED_OPT_LEN = {OPT_MSS: 4, OPT_WSCALE: 3, OPT_SACK_OK: 2, OPT_TS: 10}
_WORD = struct.Struct("!H")
_ADDR_WORDS = struct.Struct("!4H")
_PORT_WORDS = struct.Struct("!2H")
_ADDRS = struct.Struct("!II")
_PORTS = struct.Struct("!HH")
_SEQ_ACK = struct.Struct("!IIBB")


def ip_to_int(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {text!r}")
    value = 0
    for p in parts:
        octet = int(p)
        if not 0 <= octet <= 255:
            raise ValueError(f"not an IPv4 address: {text!r}")
        value = (value << 8) | octet
    return value


def int_to_ip(value: int) -> str:
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


class TcpPacket:
    """A parsed IPv4/TCP packet whose header fields can be rewritten in place."""

    __slots__ = ("buf", "doff", "ihl", "total_len")

    def __init__(self, buf: bytearray, ihl: int, doff: int, total_len: int) -> None:
        self.buf = buf
        self.ihl = ihl
        self.doff = doff
        self.total_len = total_len

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> TcpPacket:
        """Validate and wrap `data` (copied). Raises a `RemoteError` subclass if malformed."""
        n = len(data)
        if n < 20:
            raise TruncatedError(f"IPv4 header needs 20 bytes, got {n}")
        b0 = data[0]
        if b0 >> 4 != 4:
            raise PacketError(f"IP version {b0 >> 4} is not 4", "not_ipv4")
        ihl = (b0 & 0x0F) * 4
        if ihl < 20:
            raise PacketError(f"IPv4 header length {ihl} < 20", "bad_ihl")
        total_len = (data[2] << 8) | data[3]
        if total_len < ihl or total_len > n:
            raise TruncatedError(f"IPv4 total length {total_len} vs {n} bytes captured")
        if data[9] != PROTO_TCP:
            raise PacketError(f"IP protocol {data[9]} is not TCP", "not_tcp")
        frag = ((data[6] << 8) | data[7]) & 0x3FFF
        if frag:
            raise PacketError("IPv4 fragments are not handled", "fragment")
        if total_len < ihl + 20:
            raise TruncatedError("TCP header truncated")
        doff = (data[ihl + 12] >> 4) * 4
        if doff < 20 or ihl + doff > total_len:
            raise PacketError(f"TCP data offset {doff} invalid", "bad_doff")
        pkt = cls(bytearray(data[:total_len]), ihl, doff, total_len)
        pkt.options()  # raises OptionError on malformed options
        return pkt

    # ----- reading -----
    @property
    def src(self) -> int:
        return int(struct.unpack_from("!I", self.buf, 12)[0])

    @property
    def dst(self) -> int:
        return int(struct.unpack_from("!I", self.buf, 16)[0])

    @property
    def sport(self) -> int:
        return int(struct.unpack_from("!H", self.buf, self.ihl)[0])

    @property
    def dport(self) -> int:
        return int(struct.unpack_from("!H", self.buf, self.ihl + 2)[0])

    @property
    def seq(self) -> int:
        return int(struct.unpack_from("!I", self.buf, self.ihl + 4)[0])

    @property
    def ack(self) -> int:
        return int(struct.unpack_from("!I", self.buf, self.ihl + 8)[0])

    @property
    def flags(self) -> int:
        return self.buf[self.ihl + 13]

    @property
    def window(self) -> int:
        return int(struct.unpack_from("!H", self.buf, self.ihl + 14)[0])

    @property
    def payload_off(self) -> int:
        return self.ihl + self.doff

    @property
    def payload_len(self) -> int:
        return self.total_len - self.ihl - self.doff

    @property
    def payload(self) -> bytes:
        return bytes(self.buf[self.payload_off : self.total_len])

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: payload plus one for SYN and one for FIN."""
        f = self.flags
        return self.payload_len + (1 if f & SYN else 0) + (1 if f & FIN else 0)

    @property
    def tcp_checksum(self) -> int:
        return int(struct.unpack_from("!H", self.buf, self.ihl + 16)[0])

    @property
    def ip_checksum(self) -> int:
        return int(struct.unpack_from("!H", self.buf, 10)[0])

    def tuple4(self) -> tuple[int, int, int, int]:
        return (self.src, self.dst, self.sport, self.dport)

    def options(self) -> list[tuple[int, int, int]]:
        """(kind, offset in buf, length) of each option; raises `OptionError` if malformed."""
        out: list[tuple[int, int, int]] = []
        i = self.ihl + 20
        end = self.ihl + self.doff
        buf = self.buf
        while i < end:
            kind = buf[i]
            if kind == OPT_EOL:
                break
            if kind == OPT_NOP:
                i += 1
                continue
            if i + 1 >= end:
                raise OptionError(f"option {kind} has no length byte")
            ln = buf[i + 1]
            if ln < 2 or i + ln > end:
                raise OptionError(f"option {kind} length {ln} overruns the header")
            fixed = _FIXED_OPT_LEN.get(kind)
            if fixed is not None and ln != fixed:
                raise OptionError(f"option {kind} has length {ln}, expected {fixed}")
            if kind == OPT_SACK and (ln - 2) % 8:
                raise OptionError(f"SACK option length {ln} is not 2+8n")
            out.append((kind, i, ln))
            i += ln
        return out

    def find_option(self, kind: int) -> tuple[int, int] | None:
        for k, off, ln in self.options():
            if k == kind and (kind != OPT_EXP or self._is_tag(off, ln)):
                return off, ln
        return None

    def _is_tag(self, off: int, ln: int) -> bool:
        return ln == TAG_LEN and struct.unpack_from("!H", self.buf, off + 2)[0] == TAG_EXID

    def tag(self) -> int | None:
        found = self.find_option(OPT_EXP)
        if found is None:
            return None
        return int(struct.unpack_from("!I", self.buf, found[0] + 4)[0])

    def sack_blocks(self) -> list[tuple[int, int]]:
        found = self.find_option(OPT_SACK)
        if found is None:
            return []
        off, ln = found
        blocks = []
        for k in range((ln - 2) // 8):
            a, b = struct.unpack_from("!II", self.buf, off + 2 + 8 * k)
            blocks.append((int(a), int(b)))
        return blocks

    def timestamps(self) -> tuple[int, int] | None:
        """(TSval, TSecr) of the RFC 7323 timestamp option, if present."""
        found = self.find_option(OPT_TS)
        if found is None:
            return None
        a, b = struct.unpack_from("!II", self.buf, found[0] + 2)
        return int(a), int(b)

    def to_bytes(self) -> bytes:
        return bytes(self.buf)

    # ----- in-place rewriting with incremental checksums -----
    def _set_tcp_csum(self, value: int) -> None:
        struct.pack_into("!H", self.buf, self.ihl + 16, value)

    def _set32(self, off: int, new: int, ip_header: bool) -> None:
        old = int(struct.unpack_from("!I", self.buf, off)[0])
        if old == new:
            return
        struct.pack_into("!I", self.buf, off, new)
        self._set_tcp_csum(ck.update32(self.tcp_checksum, old, new))
        if ip_header:
            struct.pack_into("!H", self.buf, 10, ck.update32(self.ip_checksum, old, new))

    def _set16(self, off: int, new: int) -> None:
        old = int(struct.unpack_from("!H", self.buf, off)[0])
        if old == new:
            return
        struct.pack_into("!H", self.buf, off, new)
        self._set_tcp_csum(ck.update16(self.tcp_checksum, old, new))

    def set_src(self, value: int) -> None:
        self._set32(12, value, ip_header=True)

    def set_dst(self, value: int) -> None:
        self._set32(16, value, ip_header=True)

    def set_sport(self, value: int) -> None:
        self._set16(self.ihl, value)

    def set_dport(self, value: int) -> None:
        self._set16(self.ihl + 2, value)

    def set_tuple(self, t: tuple[int, int, int, int]) -> None:
        """Rewrite addresses and ports at once: one incremental update per checksum."""
        buf, ihl = self.buf, self.ihl
        a0, a1, a2, a3 = _ADDR_WORDS.unpack_from(buf, 12)
        p0, p1 = _PORT_WORDS.unpack_from(buf, ihl)
        src, dst, sport, dport = t
        old_a = a0 + a1 + a2 + a3
        new_a = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
        old_p = p0 + p1
        new_p = sport + dport
        if old_a == new_a and old_p == new_p and (a0, a1, a2, a3, p0, p1) == (
            src >> 16, src & 0xFFFF, dst >> 16, dst & 0xFFFF, sport, dport
        ):
            return
        # RFC 1624 over several words: HC' = ~(~HC + sum(~m) + sum(m'))
        ip_c, = _WORD.unpack_from(buf, 10)
        tcp_c, = _WORD.unpack_from(buf, ihl + 16)
        ip_total = (~ip_c & 0xFFFF) + 4 * 0xFFFF - old_a + new_a
        tcp_total = (~tcp_c & 0xFFFF) + 6 * 0xFFFF - old_a - old_p + new_a + new_p
        _ADDRS.pack_into(buf, 12, src, dst)
        _PORTS.pack_into(buf, ihl, sport, dport)
        _WORD.pack_into(buf, 10, ~ck.fold(ip_total) & 0xFFFF)
        _WORD.pack_into(buf, ihl + 16, ~ck.fold(tcp_total) & 0xFFFF)

    def header(self) -> tuple[int, int, int, int]:
        """(seq, ack, flags, payload length) in one read, for the per-packet path."""
        s, a, _off, f = _SEQ_ACK.unpack_from(self.buf, self.ihl + 4)
        return s, a, f, self.total_len - self.ihl - self.doff

    def set_seq(self, value: int) -> None:
        self._set32(self.ihl + 4, value, ip_header=False)

    def set_ack(self, value: int) -> None:
        self._set32(self.ihl + 8, value, ip_header=False)

    def set_flags(self, value: int) -> None:
        off = self.ihl + 12
        old = int(struct.unpack_from("!H", self.buf, off)[0])
        self._set16(off, (old & 0xFF00) | value)

    def set_sack_blocks(self, blocks: list[tuple[int, int]]) -> None:
        """Rewrite the SACK option in place; fewer blocks are padded with NOPs (same length)."""
        found = self.find_option(OPT_SACK)
        if found is None:
            if blocks:
                raise OptionError("no SACK option to rewrite")
            return
        off, ln = found
        room = (ln - 2) // 8
        if len(blocks) > room:
            raise OptionError("more SACK blocks than the option holds")
        old = bytes(self.buf[off : off + ln])
        if blocks:
            new = bytearray([OPT_SACK, 2 + 8 * len(blocks)])
            for a, b in blocks:
                new += struct.pack("!II", a, b)
            new += bytes([OPT_NOP]) * (ln - len(new))
        else:
            new = bytearray([OPT_NOP]) * ln
        self._replace_region(off, old, bytes(new))

    def _replace_region(self, off: int, old: bytes, new: bytes) -> None:
        """Replace equal-length bytes at `off` and update the TCP checksum incrementally."""
        self.buf[off : off + len(new)] = new
        pad_old = old if (off & 1) == 0 else b"\x00" + old
        pad_new = new if (off & 1) == 0 else b"\x00" + new
        total = (~self.tcp_checksum & 0xFFFF) + (~ck.fold(ck.ones_sum(pad_old)) & 0xFFFF)
        total += ck.ones_sum(pad_new)
        self._set_tcp_csum(~ck.fold(total) & 0xFFFF)

    # ----- structural edits (full checksum) -----
    def recompute_checksums(self) -> None:
        buf = self.buf
        struct.pack_into("!H", buf, 10, 0)
        struct.pack_into("!H", buf, 10, ck.finish(ck.ones_sum(memoryview(buf)[: self.ihl])))
        self._set_tcp_csum(0)
        tcp_len = self.total_len - self.ihl
        pseudo = ck.ones_sum(bytes(buf[12:20])) + PROTO_TCP + tcp_len
        tcp = memoryview(buf)[self.ihl : self.total_len]
        self._set_tcp_csum(ck.finish(ck.ones_sum(tcp, pseudo)))

    def rebuild(self, options: bytes | None = None, payload: bytes | None = None) -> TcpPacket:
        """A new packet with other options and/or payload; checksums recomputed."""
        opts = bytes(self.buf[self.ihl + 20 : self.ihl + self.doff]) if options is None else options
        if len(opts) % 4:
            opts += bytes([OPT_NOP]) * (4 - len(opts) % 4)
        body = self.payload if payload is None else payload
        doff = 20 + len(opts)
        if doff > 60:
            raise OptionError("TCP options exceed 40 bytes")
        total = self.ihl + doff + len(body)
        if total > 0xFFFF:
            raise PacketError("packet would exceed 64 KiB", "too_big")
        buf = bytearray(self.buf[: self.ihl]) + bytearray(self.buf[self.ihl : self.ihl + 20])
        buf += opts + body
        struct.pack_into("!H", buf, 2, total)
        buf[self.ihl + 12] = (doff // 4) << 4 | (buf[self.ihl + 12] & 0x0F)
        pkt = TcpPacket(buf, self.ihl, doff, total)
        pkt.recompute_checksums()
        return pkt

    def option_bytes(self) -> bytes:
        return bytes(self.buf[self.ihl + 20 : self.ihl + self.doff])

    def with_tag(self, tag: int) -> TcpPacket:
        """Add the local SYN tag option (replacing one already there)."""
        base = self.without_tag().option_bytes() if self.tag() is not None else self.option_bytes()
        base = _strip_trailing_padding(base)
        return self.rebuild(options=base + struct.pack("!BBHI", OPT_EXP, TAG_LEN, TAG_EXID, tag))

    def without_tag(self) -> TcpPacket:
        found = self.find_option(OPT_EXP)
        if found is None:
            return self
        off, ln = found
        rel = off - self.ihl - 20
        opts = self.option_bytes()
        return self.rebuild(options=_strip_trailing_padding(opts[:rel] + opts[rel + ln :]))

    def slice(self, start: int, end: int, fin: bool) -> TcpPacket:
        """A copy carrying payload bytes [start, end) with seq adjusted; FIN kept if `fin`."""
        pkt = self.rebuild(payload=self.payload[start:end])
        pkt.buf[pkt.ihl + 13] = (self.flags & ~FIN) | (FIN if fin else 0)
        pkt.buf[pkt.ihl + 4 : pkt.ihl + 8] = struct.pack("!I", (self.seq + start) & 0xFFFFFFFF)
        pkt.recompute_checksums()
        return pkt


def _strip_trailing_padding(opts: bytes) -> bytes:
    """Drop trailing NOP/EOL padding so options can be appended."""
    end = len(opts)
    i = 0
    last_real = 0
    while i < end:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        ln = opts[i + 1]
        i += ln
        last_real = i
    return opts[:last_real]


def build(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int = 65535,
    options: bytes = b"",
    payload: bytes = b"",
    ident: int = 0,
    ttl: int = 64,
) -> bytes:
    """Serialise a TCP/IPv4 packet with valid checksums (used by tests and the simulator)."""
    if len(options) % 4:
        options += bytes([OPT_NOP]) * (4 - len(options) % 4)
    doff = 20 + len(options)
    total = 20 + doff + len(payload)
    ip = struct.pack(
        "!BBHHHBBHII", 0x45, 0, total, ident & 0xFFFF, 0x4000, ttl, PROTO_TCP, 0, src, dst
    )
    tcp = struct.pack(
        "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (doff // 4) << 4, flags,
        window, 0, 0,
    )
    pkt = TcpPacket(bytearray(ip + tcp + options + payload), 20, doff, total)
    pkt.recompute_checksums()
    return pkt.to_bytes()


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    opt = bytes([OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)])
    for a, b in blocks:
        opt += struct.pack("!II", a & 0xFFFFFFFF, b & 0xFFFFFFFF)
    return opt


def verify_checksums(data: bytes | bytearray) -> bool:
    """True when both the IPv4 header and the TCP checksum are valid."""
    pkt = TcpPacket.parse(data)
    if ck.fold(ck.ones_sum(memoryview(pkt.buf)[: pkt.ihl])) != 0xFFFF:
        return False
    tcp_len = pkt.total_len - pkt.ihl
    pseudo = ck.ones_sum(bytes(pkt.buf[12:20])) + PROTO_TCP + tcp_len
    return ck.fold(ck.ones_sum(memoryview(pkt.buf)[pkt.ihl : pkt.total_len], pseudo)) == 0xFFFF
