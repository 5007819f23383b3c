"""Internet checksums: full computation and RFC 1624 incremental updates."""

from __future__ import annotations

import struct


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """Unfolded ones-complement sum of 16-bit big-endian words (odd tail zero-padded)."""
    mv = memoryview(data)
    n = len(mv)
    total = start
    even = n - (n & 1)
    if even:
        total += sum(struct.unpack_from(f"!{even // 2}H", mv, 0))
    if n & 1:
        total += mv[n - 1] << 8
    return total


def fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def finish(total: int) -> int:
    """The checksum field value for an unfolded sum."""
    return ~fold(total) & 0xFFFF


def update16(check: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one changed 16-bit word."""
    total = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    return ~fold(total) & 0xFFFF


def update32(check: int, old: int, new: int) -> int:
    """Update for a changed 32-bit field (two words)."""
    total = (~check & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    total += (new >> 16) + (new & 0xFFFF)
    return ~fold(total) & 0xFFFF
