"""TCP sockets of a pod as the kernel sees them (NETLINK_SOCK_DIAG, no `ss` process).

The fast path (fastpath.py) keeps the dead-hop watch (core/failure.py) for sessions
whose packets the core no longer sees: a socket with unacknowledged data that has
received no ack for a while is what the core would call stalled.
"""

from __future__ import annotations

import socket
import struct

from . import netns

NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_F_REQUEST, _F_DUMP = 1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_INFO = 2
_TCPF_ESTABLISHED = 1 << 1
_NLH = struct.Struct("=IHHII")
_MSG = struct.Struct("!BBBBHH16s16s")  # family, state, timer, retrans, sport, dport, src, dst
_MSG_LEN = 72  # struct inet_diag_msg
_INFO = struct.Struct("=24xI28xI")  # tcp_info: tcpi_unacked (24), tcpi_last_ack_recv (56)
Tuple4 = tuple[int, int, int, int]


def request(seqno: int) -> bytes:
    """A dump request for established IPv4 TCP sockets, with their tcp_info."""
    body = struct.pack("=BBBxI", socket.AF_INET, socket.IPPROTO_TCP,
                       1 << (_INET_DIAG_INFO - 1), _TCPF_ESTABLISHED) + bytes(48)
    return _NLH.pack(_NLH.size + len(body), _SOCK_DIAG_BY_FAMILY, _F_REQUEST | _F_DUMP,
                     seqno, 0) + body


def parse(msg: bytes) -> tuple[Tuple4, int, float] | None:
    """One inet_diag message: (local src, dst, sport, dport), unacked segments, seconds
    since the last ack came in; None without tcp_info."""
    if len(msg) < _NLH.size + _MSG_LEN:
        return None
    _, _, _, _, sport, dport, src, dst = _MSG.unpack_from(msg, _NLH.size)
    off = _NLH.size + _MSG_LEN
    while off + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, off)
        if length < 4:
            return None
        if kind == _INET_DIAG_INFO and length - 4 >= _INFO.size:
            unacked, last_ack_ms = _INFO.unpack_from(msg, off + 4)
            t = (int.from_bytes(src[:4], "big"), int.from_bytes(dst[:4], "big"), sport, dport)
            return t, unacked, last_ack_ms / 1000
        off += (length + 3) & ~3
    return None


def unacked_since(ns: str) -> dict[Tuple4, float]:
    """Established TCP sockets in `ns` with unacknowledged data: seconds since each last
    received an ack, by its tuple (src, dst, sport, dport) as it sends."""
    sock = netns.open_socket(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    out: dict[Tuple4, float] = {}
    try:
        sock.send(request(1))
        while True:
            data = sock.recv(1 << 20)
            off = 0
            while off + _NLH.size <= len(data):
                length, kind = _NLH.unpack_from(data, off)[:2]
                if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < _NLH.size:
                    return out
                entry = parse(data[off:off + length])
                if entry is not None and entry[1] > 0:
                    out[entry[0]] = entry[2]
                off += (length + 3) & ~3
    finally:
        sock.close()
