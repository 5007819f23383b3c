"""Control messages between agents (UDP), versioned, one fixed layout for every type.

    magic u16 = 0xD15C | version u8 = 1 | type u8 | rid u64
    sub: src u32 dst u32 sport u16 dport u16    (the subsession the message travels on,
                                                  as its sender names it)
    left anchor u32 | right anchor u32 | value u32 (delta or cutoff) | reason u8
    [SYN and RIGHT_REQUEST only] session tuple (12 B) | count u8 | count x hop u32

`rid` names one reconfiguration attempt: the left anchor's address in the high 32 bits
and a counter in the low ones, so retransmissions are recognised and a new attempt
after a cancel is never confused with the old one.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import ControlError, TruncatedError

MAGIC = 0xD15C
VERSION = 1
MAX_HOPS = 16
_HEAD = struct.Struct("!HBBQIIHHIIIB")
_EXT = struct.Struct("!IIHHB")

Tuple4 = tuple[int, int, int, int]


class MsgType(enum.IntEnum):
    REQUEST_LOCK = 1
    ACK_LOCK = 2
    NACK_LOCK = 3
    CANCEL_LOCK = 4
    ACK_CANCEL = 5
    RIGHT_REQUEST = 6
    SYN = 7
    SYN_ACK = 8
    ACK = 9
    ACK_ACK = 10
    COMPLETE = 11
    COMPLETE_ACK = 12
    TEARDOWN = 13
    ABORT = 14  # end to end: a hop of the session is dead, reset it (sub = session tuple)


class NackReason(enum.IntEnum):
    NONE = 0
    LOCKED = 1
    NO_ANCHOR = 2
    CONTENTION = 3
    BUSY = 4
    NO_SESSION = 5


_EXTENDED = frozenset({MsgType.SYN, MsgType.RIGHT_REQUEST})


@dataclass(frozen=True, slots=True)
class Control:
    type: MsgType
    rid: int
    sub: Tuple4
    la: int
    ra: int
    value: int = 0
    reason: NackReason = NackReason.NONE
    session: Tuple4 = (0, 0, 0, 0)
    hops: tuple[int, ...] = ()

    def encode(self) -> bytes:
        s = self.sub
        out = _HEAD.pack(
            MAGIC, VERSION, self.type, self.rid, s[0], s[1], s[2], s[3],
            self.la, self.ra, self.value & 0xFFFFFFFF, self.reason,
        )
        if self.type in _EXTENDED:
            if len(self.hops) > MAX_HOPS:
                raise ValueError("too many hops")
            t = self.session
            out += _EXT.pack(t[0], t[1], t[2], t[3], len(self.hops))
            out += struct.pack(f"!{len(self.hops)}I", *self.hops)
        return out


def decode(data: bytes) -> Control:
    """Parse one control datagram; raises a `RemoteError` subclass, never anything else."""
    if len(data) < _HEAD.size:
        raise TruncatedError(f"control message needs {_HEAD.size} bytes, got {len(data)}")
    magic, version, mtype, rid, a, b, c, d, la, ra, value, reason = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ControlError("not a Dysco control message", "bad_magic")
    if version != VERSION:
        raise ControlError(f"control version {version} unsupported", "bad_version")
    try:
        t = MsgType(mtype)
    except ValueError:
        raise ControlError(f"unknown control type {mtype}", "bad_type") from None
    try:
        r = NackReason(reason)
    except ValueError:
        raise ControlError(f"unknown nack reason {reason}", "bad_reason") from None
    session: Tuple4 = (0, 0, 0, 0)
    hops: tuple[int, ...] = ()
    if t in _EXTENDED:
        if len(data) < _HEAD.size + _EXT.size:
            raise TruncatedError("control extension truncated")
        s0, s1, s2, s3, count = _EXT.unpack_from(data, _HEAD.size)
        if count > MAX_HOPS:
            raise ControlError(f"{count} hops in a control message", "bad_hop_count")
        need = _HEAD.size + _EXT.size + 4 * count
        if len(data) != need:
            raise ControlError(f"{t.name} of {count} hops needs {need} bytes", "bad_length")
        hops = tuple(int(h) for h in struct.unpack_from(f"!{count}I", data, _HEAD.size + _EXT.size))
        session = (s0, s1, s2, s3)
        if 0 in hops:
            raise ControlError("zero address in hop list", "bad_address")
    elif len(data) != _HEAD.size:
        raise ControlError(f"{t.name} must be {_HEAD.size} bytes", "bad_length")
    if la == 0 or ra == 0:
        raise ControlError("control message without anchors", "bad_address")
    return Control(t, rid, (a, b, c, d), la, ra, value, r, session, hops)
