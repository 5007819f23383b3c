"""A small ctnetlink client: conntrack entries with NAT and sequence adjustment.

The fast path (fastpath.py) has the kernel rewrite an end host's sessions: one entry
per session, created through ctnetlink with the session tuple as original tuple, its
plain inverse as reply tuple (the kernel derives the translated reply from the NAT
attributes, fastpath-feasibility.md "what failed" 1) and CTA_SEQ_ADJ_* offsets. Only
ctnetlink-created entries carry the seqadj extension, which is why the entries are not
left to NAT rules. Messages are batched: many per ``send``, one ACK each.

Tuples are the core's ``(src, dst, sport, dport)`` with IPv4 addresses as ints.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from . import netns
from .nlattr import NESTED as _NESTED
from .nlattr import NETLINK_NETFILTER
from .nlattr import attr as _attr
from .nlattr import nest as _nest

GROUP_UPDATE, GROUP_DESTROY = 2, 3  # NFNLGRP_CONNTRACK_UPDATE, _DESTROY
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP = 270, 1
_CT_NEW, _CT_GET, _CT_DELETE = 0x100, 0x101, 0x102
_F_REQUEST, _F_ACK, _F_EXCL, _F_CREATE = 1, 4, 0x200, 0x400
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_CTA_TUPLE_ORIG, _CTA_TUPLE_REPLY, _CTA_PROTOINFO, _CTA_NAT_SRC = 1, 2, 4, 6
_CTA_TIMEOUT, _CTA_MARK, _CTA_NAT_DST = 7, 8, 13
_CTA_SEQ_ADJ_ORIG, _CTA_SEQ_ADJ_REPLY = 15, 16
ESTABLISHED, TIME_WAIT, CLOSE = 3, 7, 8  # enum tcp_conntrack
_TCP_FLAG_BE_LIBERAL = 0x08
_NLH = struct.Struct("=IHHII")
_MASK32 = 0xFFFFFFFF
Tuple4 = tuple[int, int, int, int]




def _tuple(kind: int, t: Tuple4) -> bytes:
    src, dst, sport, dport = t
    return _nest(kind,
                 _nest(1, _attr(1, struct.pack("!I", src)), _attr(2, struct.pack("!I", dst))),
                 _nest(2, _attr(1, b"\x06"), _attr(2, struct.pack("!H", sport)),
                       _attr(3, struct.pack("!H", dport))))


def _nat(kind: int, addr: int, port: int) -> bytes:
    a, p = struct.pack("!I", addr), struct.pack("!H", port)
    return _nest(kind, _attr(1, a), _attr(2, a), _nest(3, _attr(1, p), _attr(2, p)))


def _seqadj(kind: int, offset: int) -> bytes:
    off = struct.pack("!I", offset & _MASK32)
    return _nest(kind, _attr(1, b"\0\0\0\0"), _attr(2, off), _attr(3, off))


def _message(kind: int, flags: int, seqno: int, attrs: bytes) -> bytes:
    body = struct.pack("BBH", socket.AF_INET, 0, 0) + attrs
    return _NLH.pack(16 + len(body), kind, flags, seqno, 0) + body


@dataclass(frozen=True, slots=True)
class Entry:
    """One NATed, sequence-adjusted entry: `orig` as the app sends, `nat_out` on the wire."""

    orig: Tuple4
    nat_out: Tuple4
    orig_off: int  # seq offset of the orig direction (ack offset of the reply one)
    reply_off: int
    mark: int
    timeout: int


def new_message(e: Entry, seqno: int) -> bytes:
    """CT_NEW for `e`: established, window tracking liberal (it starts mid-stream)."""
    src, dst, sport, dport = e.orig
    nsrc, ndst, nsport, ndport = e.nat_out
    flags = struct.pack("BB", _TCP_FLAG_BE_LIBERAL, _TCP_FLAG_BE_LIBERAL)
    attrs = b"".join([
        _tuple(_CTA_TUPLE_ORIG, e.orig),
        _tuple(_CTA_TUPLE_REPLY, (dst, src, dport, sport)),
        _attr(_CTA_TIMEOUT, struct.pack("!I", e.timeout)),
        _attr(_CTA_MARK, struct.pack("!I", e.mark)),
        _nest(_CTA_PROTOINFO, _nest(1, _attr(1, bytes([ESTABLISHED])),
                                    _attr(4, flags), _attr(5, flags))),
        _nat(_CTA_NAT_SRC, nsrc, nsport),
        _nat(_CTA_NAT_DST, ndst, ndport),
        _seqadj(_CTA_SEQ_ADJ_ORIG, e.orig_off),
        _seqadj(_CTA_SEQ_ADJ_REPLY, e.reply_off),
    ])
    return _message(_CT_NEW, _F_REQUEST | _F_ACK | _F_CREATE | _F_EXCL, seqno, attrs)


def get_message(reply: Tuple4, seqno: int) -> bytes:
    """CT_GET by reply tuple: answered with errno 0 if an entry has exactly that one."""
    return _message(_CT_GET, _F_REQUEST | _F_ACK, seqno, _tuple(_CTA_TUPLE_REPLY, reply))


def delete_message(orig: Tuple4, seqno: int) -> bytes:
    return _message(_CT_DELETE, _F_REQUEST | _F_ACK, seqno, _tuple(_CTA_TUPLE_ORIG, orig))


def _tcp_state(msg: bytes) -> int | None:
    """CTA_PROTOINFO_TCP_STATE of an entry message (None if absent)."""
    for kind, value in _attrs(msg, _NLH.size + 4, len(msg)):
        if kind == _CTA_PROTOINFO:
            for k, v in _attrs(value, 0, len(value)):
                if k == 1:  # CTA_PROTOINFO_TCP
                    state = dict(_attrs(v, 0, len(v))).get(1)
                    return state[0] if state else None
    return None


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            return
        yield kind & ~_NESTED, data[start + 4:start + length]
        start += (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class CtEvent:
    """An update or destroy event: the entry's original tuple, mark and TCP state."""

    orig: Tuple4
    mark: int
    destroyed: bool
    state: int | None


def parse_event(msg: bytes) -> CtEvent | None:
    """Decode one ctnetlink event message (None if it is not a TCP/IPv4 entry)."""
    tup: Tuple4 | None = None
    mark = 0
    for kind, value in _attrs(msg, _NLH.size + 4, len(msg)):
        if kind == _CTA_TUPLE_ORIG:
            ip: dict[int, int] = {}
            ports: dict[int, int] = {}
            for k, v in _attrs(value, 0, len(value)):
                inner = dict(_attrs(v, 0, len(v)))
                if k == 1:
                    ip = {a: int.from_bytes(b, "big") for a, b in inner.items()}
                elif k == 2:
                    if inner.get(1) != b"\x06":
                        return None
                    ports = {a: int.from_bytes(b, "big") for a, b in inner.items() if a != 1}
            if 1 not in ip or 2 not in ip or 2 not in ports or 3 not in ports:
                return None
            tup = (ip[1], ip[2], ports[2], ports[3])
        elif kind == _CTA_MARK and len(value) == 4:
            mark = int.from_bytes(value, "big")
    if tup is None:
        return None
    kind = _NLH.unpack_from(msg)[1]
    return CtEvent(tup, mark, kind == _CT_DELETE, _tcp_state(msg))


class Conntrack:
    """A ctnetlink socket in namespace `ns` (None: ours): batched requests, or update
    and destroy events (state changes only: a handful per connection)."""

    def __init__(self, ns: str | None, events: bool = False) -> None:
        if ns is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        else:
            self.sock = netns.open_socket(ns, socket.AF_NETLINK, socket.SOCK_RAW,
                                          NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, 8 << 20)
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
            self.sock.bind((0, 0))
            if events:
                for group in (GROUP_UPDATE, GROUP_DESTROY):
                    self.sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
                self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self._seq = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def transact(self, requests: Sequence[Callable[[int], bytes]]) -> list[int]:
        """Send requests (each builds its message from a sequence number) in few
        ``send`` calls; the errno of each, in order (0: done). Every message asks for an
        ACK, so every one gets an answer."""
        pending: dict[int, int] = {}
        order: list[int] = []
        chunk: list[bytes] = []
        size = 0
        for build in requests:
            self._seq = (self._seq + 1) & _MASK32
            pending[self._seq] = -1
            order.append(self._seq)
            msg = build(self._seq)
            chunk.append(msg)
            size += len(msg)
            if size > 100_000:
                self.sock.send(b"".join(chunk))
                chunk, size = [], 0
                self._collect(pending, until_empty=False)
        if chunk:
            self.sock.send(b"".join(chunk))
        self._collect(pending, until_empty=True)
        return [pending[n] for n in order]

    def tcp_state(self, orig: Tuple4) -> int | None:
        """The TCP state (`ESTABLISHED`...) of the entry with original tuple `orig`, or
        None if there is none."""
        self._seq = (self._seq + 1) & _MASK32
        self.sock.send(_message(_CT_GET, _F_REQUEST | _F_ACK, self._seq,
                                _tuple(_CTA_TUPLE_ORIG, orig)))
        state = None
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _NLH.size <= len(data):
                length, kind, _, seqno, _ = _NLH.unpack_from(data, off)
                if length < _NLH.size:
                    break
                if seqno == self._seq and kind == _CT_NEW:
                    state = _tcp_state(data[off:off + length])
                elif seqno == self._seq and kind == _NLMSG_ERROR:
                    return state
                off += (length + 3) & ~3

    def _collect(self, pending: dict[int, int], until_empty: bool) -> None:
        waiting = sum(1 for v in pending.values() if v < 0)
        while waiting:
            try:
                data = self.sock.recv(1 << 20, 0 if until_empty else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            off = 0
            while off + _NLH.size <= len(data):
                length, kind, _, seqno, _ = _NLH.unpack_from(data, off)
                if kind == _NLMSG_ERROR and pending.get(seqno) == -1:
                    pending[seqno] = -struct.unpack_from("=i", data, off + 16)[0]
                    waiting -= 1
                off += (length + 3) & ~3
                if length == 0:
                    break

    def events(self) -> tuple[list[CtEvent], bool]:
        """Drain update and destroy events; the flag says some were lost (overrun)."""
        out: list[CtEvent] = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return out, False
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return out, True
                raise
            off = 0
            while off + _NLH.size <= len(data):
                length = _NLH.unpack_from(data, off)[0]
                if length < _NLH.size:
                    break
                event = parse_event(data[off:off + length])
                if event is not None:
                    out.append(event)
                off += (length + 3) & ~3
