"""Elements of one nftables set, added and removed over raw nf_tables netlink.

The fast path keeps the inbound tuples of offloaded sessions in a set that a
prerouting rule tests before our raw-table queue (fastpath.py). Per session that is one
element, so an element change must cost microseconds: no `nft` process, many elements
per message, one transaction (batch) per call.

Keys are ``ipv4_addr . inet_service . ipv4_addr . inet_service`` (saddr . sport .
daddr . dport); nftables pads every field of a concatenation to 4 bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from .nlattr import NESTED as _NESTED
from .nlattr import attr as _attr
from .nlattr import netfilter_socket

_SUBSYS_NFTABLES = 10
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
_NEWSETELEM, _DELSETELEM = 12, 14
_F_REQUEST, _F_ACK, _F_CREATE = 1, 4, 0x400
_NLMSG_ERROR = 2
_NLH = struct.Struct("=IHHII")
_MAX_PER_MESSAGE = 1000
Tuple4 = tuple[int, int, int, int]



def key(t: Tuple4) -> bytes:
    """The set key of a core tuple (src, dst, sport, dport)."""
    src, dst, sport, dport = t
    return struct.pack("!IH2xIH2x", src, sport, dst, dport)


class SetElements:
    """Add/remove elements of the sets of `table` (family ip) in namespace `ns`."""

    def __init__(self, ns: str | None, table: str) -> None:
        self.sock = netfilter_socket(ns)
        self._table = _attr(1, table.encode() + b"\0")
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _message(self, kind: int, flags: int, family: int, body: bytes) -> tuple[int, bytes]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        head = struct.pack("BBH", family, 0, socket.htons(_SUBSYS_NFTABLES)
                           if kind in (_BATCH_BEGIN, _BATCH_END) else 0)
        msg_type = kind if kind in (_BATCH_BEGIN, _BATCH_END) else (_SUBSYS_NFTABLES << 8) | kind
        data = head + body
        return self._seq, _NLH.pack(16 + len(data), msg_type, flags, self._seq, 0) + data

    def _batch(self, kind: int, name: str, keys: Sequence[bytes]) -> int:
        """One transaction; 0 or the errno it failed with (then nothing changed)."""
        elements = b"".join(_attr(1 | _NESTED, _attr(1 | _NESTED, _attr(1, k)))
                            for k in keys)
        body = self._table + _attr(2, name.encode() + b"\0") + _attr(3 | _NESTED, elements)
        flags = _F_REQUEST | _F_ACK | (_F_CREATE if kind == _NEWSETELEM else 0)
        _, begin = self._message(_BATCH_BEGIN, _F_REQUEST, socket.AF_UNSPEC, b"")
        seqno, msg = self._message(kind, flags, socket.AF_INET, body)
        _, end = self._message(_BATCH_END, _F_REQUEST, socket.AF_UNSPEC, b"")
        self.sock.send(begin + msg + end)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLH.size <= len(data):
                length, mtype, _, got, _ = _NLH.unpack_from(data, off)
                if mtype == _NLMSG_ERROR and got == seqno:
                    return -int(struct.unpack_from("=i", data, off + 16)[0])
                off += (length + 3) & ~3
                if length == 0:
                    break

    def change(self, add: bool, name: str,
               tuples: Sequence[Tuple4]) -> list[tuple[Tuple4, int]]:
        """Add or remove elements of set `name`; the (tuple, errno) of those that failed.

        Batches of up to 1000 elements are one transaction each; when one fails (an
        element already gone, for example) its elements are retried one by one, so one
        bad element never blocks the others."""
        kind = _NEWSETELEM if add else _DELSETELEM
        failed: list[tuple[Tuple4, int]] = []
        for i in range(0, len(tuples), _MAX_PER_MESSAGE):
            part = tuples[i:i + _MAX_PER_MESSAGE]
            if self._batch(kind, name, [key(t) for t in part]) == 0:
                continue
            for t in part:
                err = self._batch(kind, name, [key(t)])
                if err:
                    failed.append((t, err))
        return failed
