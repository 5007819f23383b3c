"""Sequence-number arithmetic modulo 2**32 (RFC 1982 serial numbers)."""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def add(a: int, b: int) -> int:
    """a + b mod 2**32 (b may be negative)."""
    return (a + b) & MASK


def sub(a: int, b: int) -> int:
    """The signed distance a - b, in [-2**31, 2**31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def lt(a: int, b: int) -> bool:
    return sub(a, b) < 0


def le(a: int, b: int) -> bool:
    return sub(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return sub(a, b) > 0


def ge(a: int, b: int) -> bool:
    return sub(a, b) >= 0


def max_(a: int, b: int) -> int:
    return b if lt(a, b) else a


def min_(a: int, b: int) -> int:
    return a if lt(a, b) else b
