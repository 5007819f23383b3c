"""The middlebox fast path's nftables table, made and fed over raw nf_tables netlink.

One table ``ip dysco_mbfast`` holds two maps from a TCP 4-tuple to the 4-tuple it is
rewritten to (``map_in``: subsession -> session as the app sees it; ``map_out``: the
session as the app emits it -> subsession), and three base chains:

* ``mb_in``   prerouting  -310: not SYN/FIN/RST and the tuple in ``map_in``: rewrite
  it (addresses and ports, checksums fixed up) and set the skip bit, before our queue
  in raw -300 and before conntrack (-200), so the pod's firewall, NAT and conntrack see
  the session tuple as on the queue path;
* ``mb_mark`` postrouting -160: not SYN/FIN/RST and the tuple in ``map_out``: set the
  skip bit (locally sent packets, a terminating proxy's; forwarded ones have it from
  ``mb_in``), before our queue in mangle -150;
* ``mb_out``  postrouting  300: skip bit set, not SYN/FIN/RST and the tuple in
  ``map_out``: rewrite it; after source NAT (100), so a DNAT app's replies are matched
  with their source restored, before conntrack confirms (INT_MAX).

nft's rule language cannot write a whole tuple from one map lookup, so the rules are
built here as expressions: one lookup (16-byte key, 16-byte value in registers), three
payload writes. Elements change in batches (one transaction per 1000 elements), no
process per session (nftset.py does the same for sets).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from .nlattr import attr as _attr
from .nlattr import nest as _nest
from .nlattr import netfilter_socket

TABLE = "dysco_mbfast"
MAP_IN, MAP_OUT = "map_in", "map_out"
_SUBSYS = 10
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
_NEWTABLE, _DELTABLE, _NEWCHAIN, _NEWRULE = 0, 2, 3, 6
_NEWSET, _NEWSETELEM, _DELSETELEM = 9, 12, 14
_F_REQUEST, _F_ACK, _F_EXCL, _F_CREATE, _F_APPEND = 1, 4, 0x200, 0x400, 0x800
_NLMSG_ERROR = 2
_NLH = struct.Struct("=IHHII")
_MAX_PER_MESSAGE = 1000
_SET_MAP = 0x8
# nft's type ids (ipv4_addr 7, inet_service 13), concatenated as nft does (6 bits
# each), so that `nft list table ip dysco_mbfast` prints the maps
_KEY_TYPE = (((7 << 6 | 13) << 6 | 7) << 6) | 13   # saddr . sport . daddr . dport
_DATA_TYPE = (((7 << 6 | 7) << 6 | 13) << 6) | 13  # saddr . daddr . sport . dport
_PRE, _POST = 0, 4  # NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING
_NET, _TRANSPORT = 1, 2  # payload bases
_CSUM_INET, _L4CSUM_PSEUDOHDR = 1, 1
_META_MARK, _META_L4PROTO = 3, 16
_R_KEY, _R_DATA = 8, 12  # NFT_REG32_00 .. 03 hold the key, 04 .. 07 the value
Tuple4 = tuple[int, int, int, int]




def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("!I", value & 0xFFFFFFFF))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def key(t: Tuple4) -> bytes:
    """A map key: (src, dst, sport, dport) as ``saddr . sport . daddr . dport``."""
    src, dst, sport, dport = t
    return struct.pack("!IH2xIH2x", src, sport, dst, dport)


def value(t: Tuple4) -> bytes:
    """A map value: (src, dst, sport, dport) as ``saddr . daddr . sport . dport``, the
    order in which the rules write it (addresses at IP offset 12, then each port)."""
    src, dst, sport, dport = t
    return struct.pack("!IIH2xH2x", src, dst, sport, dport)


# --- expressions --------------------------------------------------------------------

def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, _str(1, name), _nest(2, *attrs))


def _meta_load(key_: int, reg: int) -> bytes:
    return _expr("meta", _u32(1, reg), _u32(2, key_))


def _meta_set(key_: int, reg: int) -> bytes:
    return _expr("meta", _u32(2, key_), _u32(3, reg))


def _cmp_eq(reg: int, data: bytes) -> bytes:
    return _expr("cmp", _u32(1, reg), _u32(2, 0), _nest(3, _attr(1, data)))


def _bitwise(reg: int, mask: bytes, xor: bytes) -> bytes:
    """reg = (reg & mask) ^ xor."""
    return _expr("bitwise", _u32(1, reg), _u32(2, reg), _u32(3, len(mask)),
                 _nest(4, _attr(1, mask)), _nest(5, _attr(1, xor)))


def _load(base: int, offset: int, length: int, reg: int) -> bytes:
    return _expr("payload", _u32(1, reg), _u32(2, base), _u32(3, offset), _u32(4, length))


def _write(base: int, offset: int, length: int, reg: int, csum_offset: int,
           pseudo: bool) -> bytes:
    attrs = [_u32(5, reg), _u32(2, base), _u32(3, offset), _u32(4, length),
             _u32(6, _CSUM_INET), _u32(7, csum_offset)]
    if pseudo:
        attrs.append(_u32(8, _L4CSUM_PSEUDOHDR))
    return _expr("payload", *attrs)


def _lookup(name: str, set_id: int, dreg: int | None) -> bytes:
    attrs = [_str(1, name), _u32(2, _R_KEY), _u32(4, set_id)]
    if dreg is not None:
        attrs.append(_u32(3, dreg))
    return _expr("lookup", *attrs)


def _tcp_plain() -> list[bytes]:
    """TCP without SYN, FIN or RST: those always go to the queues (setup, teardown)."""
    return [_meta_load(_META_L4PROTO, _R_KEY), _cmp_eq(_R_KEY, b"\x06"),
            _load(_TRANSPORT, 13, 1, _R_KEY), _bitwise(_R_KEY, b"\x07", b"\x00"),
            _cmp_eq(_R_KEY, b"\x00")]


def _tuple_key() -> list[bytes]:
    return [_load(_NET, 12, 4, _R_KEY), _load(_TRANSPORT, 0, 2, _R_KEY + 1),
            _load(_NET, 16, 4, _R_KEY + 2), _load(_TRANSPORT, 2, 2, _R_KEY + 3)]


def _rewrite() -> list[bytes]:
    """Write the looked-up tuple: addresses (IP checksum and TCP pseudo-header), ports."""
    return [_write(_NET, 12, 8, _R_DATA, 10, True),
            _write(_TRANSPORT, 0, 2, _R_DATA + 2, 16, False),
            _write(_TRANSPORT, 2, 2, _R_DATA + 3, 16, False)]


def _set_mark(bit: int) -> list[bytes]:
    b = struct.pack("=I", bit)
    return [_meta_load(_META_MARK, _R_KEY), _bitwise(_R_KEY, struct.pack("=I", ~bit &
                                                                         0xFFFFFFFF), b),
            _meta_set(_META_MARK, _R_KEY)]


def _has_mark(bit: int) -> list[bytes]:
    b = struct.pack("=I", bit)
    return [_meta_load(_META_MARK, _R_KEY), _bitwise(_R_KEY, b, b"\0\0\0\0"),
            _cmp_eq(_R_KEY, b)]


class MapTable:
    """The table of one pod (namespace `ns`; None: the current one)."""

    def __init__(self, ns: str | None, mark: int) -> None:
        self.sock = netfilter_socket(ns)
        self.mark = mark
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _message(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        if kind in (_BATCH_BEGIN, _BATCH_END):
            head, msg_type = struct.pack("BBH", socket.AF_UNSPEC, 0,
                                         socket.htons(_SUBSYS)), kind
        else:
            head, msg_type = struct.pack("BBH", socket.AF_INET, 0, 0), (_SUBSYS << 8) | kind
        data = head + body
        return self._seq, _NLH.pack(16 + len(data), msg_type, flags, self._seq, 0) + data

    def _transact(self, messages: Sequence[tuple[int, int, bytes]]) -> int:
        """One transaction of (kind, flags, body) messages: 0, or the first errno (then
        nothing changed)."""
        _, begin = self._message(_BATCH_BEGIN, _F_REQUEST, b"")
        parts, seqs = [begin], []
        for kind, flags, body in messages:
            seqno, msg = self._message(kind, flags | _F_REQUEST | _F_ACK, body)
            parts.append(msg)
            seqs.append(seqno)
        _, end = self._message(_BATCH_END, _F_REQUEST, b"")
        parts.append(end)
        self.sock.send(b"".join(parts))
        pending, first_err = set(seqs), 0
        while pending:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _NLH.size <= len(data):
                length, mtype, _, got, _ = _NLH.unpack_from(data, off)
                if length == 0:
                    break
                if mtype == _NLMSG_ERROR and got in pending:
                    pending.discard(got)
                    err = -int(struct.unpack_from("=i", data, off + 16)[0])
                    if err and not first_err:
                        first_err = err
                        # after an error the kernel aborts: later messages get no ack
                        pending.clear()
                off += (length + 3) & ~3
        return first_err

    def create(self) -> int:
        """Create (or replace) the table with its maps and chains: 0 or an errno."""
        table = _str(1, TABLE)
        msgs: list[tuple[int, int, bytes]] = [
            (_NEWTABLE, _F_CREATE, table),
            (_DELTABLE, 0, table),  # start from nothing (a leftover of a crashed agent)
            (_NEWTABLE, _F_CREATE, table),
        ]
        for set_id, name in ((1, MAP_IN), (2, MAP_OUT)):
            msgs.append((_NEWSET, _F_CREATE | _F_EXCL, b"".join([
                _str(1, TABLE), _str(2, name), _u32(3, _SET_MAP), _u32(4, _KEY_TYPE),
                _u32(5, 16), _u32(6, _DATA_TYPE), _u32(7, 16), _u32(10, set_id)])))
        mark = self.mark
        chains = [
            ("mb_in", _PRE, -310, [*_tcp_plain(), *_tuple_key(),
                                   _lookup(MAP_IN, 1, _R_DATA), *_rewrite(),
                                   *_set_mark(mark)]),
            ("mb_mark", _POST, -160, [*_tcp_plain(), *_tuple_key(),
                                      _lookup(MAP_OUT, 2, None), *_set_mark(mark)]),
            ("mb_out", _POST, 300, [*_has_mark(mark), *_tcp_plain(), *_tuple_key(),
                                    _lookup(MAP_OUT, 2, _R_DATA), *_rewrite()]),
        ]
        for name, hook, prio, exprs in chains:
            msgs.append((_NEWCHAIN, _F_CREATE | _F_EXCL, b"".join([
                table, _str(3, name), _nest(4, _u32(1, hook), _u32(2, prio)),
                _u32(5, 1), _str(7, "filter")])))
            msgs.append((_NEWRULE, _F_CREATE | _F_APPEND, b"".join([
                table, _str(2, name), _nest(4, *exprs)])))
        return self._transact(msgs)

    def delete(self) -> int:
        return self._transact([(_DELTABLE, 0, _str(1, TABLE))])

    def _elements(self, add: bool, name: str, items: Sequence[tuple[Tuple4, Tuple4]]) -> bytes:
        if add:
            elems = b"".join(_nest(1, _nest(1, _attr(1, key(k))), _nest(2, _attr(1, value(v))))
                             for k, v in items)
        else:
            elems = b"".join(_nest(1, _nest(1, _attr(1, key(k)))) for k, _ in items)
        return _str(1, TABLE) + _str(2, name) + _nest(3, elems)

    def change(self, add: bool,
               items: Sequence[tuple[str, Tuple4, Tuple4]]) -> list[tuple[str, Tuple4, int]]:
        """Add (key -> value) or remove (key) elements of the maps, given as (map, key,
        value); the (map, key, errno) of those that failed. Up to 1000 elements are one
        transaction; a failed transaction is retried element by element, so one bad
        element (already there, already gone) never blocks the others."""
        kind = _NEWSETELEM if add else _DELSETELEM
        flags = _F_CREATE | _F_EXCL if add else 0
        failed: list[tuple[str, Tuple4, int]] = []
        for i in range(0, len(items), _MAX_PER_MESSAGE):
            part = items[i:i + _MAX_PER_MESSAGE]
            msgs = [(kind, flags, self._elements(add, name, [(k, v) for m, k, v in part
                                                             if m == name]))
                    for name in (MAP_IN, MAP_OUT) if any(m == name for m, _, _ in part)]
            if self._transact(msgs) == 0:
                continue
            for m, k, v in part:
                err = self._transact([(kind, flags, self._elements(add, m, [(k, v)]))])
                if err:
                    failed.append((m, k, err))
        return failed
