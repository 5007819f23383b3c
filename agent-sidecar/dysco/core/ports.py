"""Subsession port allocation without collisions."""

from __future__ import annotations

Tuple4 = tuple[int, int, int, int]


class PortAllocator:
    """Hands out (local port, peer port) pairs unique per (local address, peer address).

    Ports come from two disjoint ranges (see `AgentConfig`), so a tuple chosen here can
    never equal one that the peer chose towards us.
    """

    def __init__(self, local: tuple[int, int], peer: tuple[int, int], start: int = 0) -> None:
        self._local = local
        self._peer = peer
        self._used: set[Tuple4] = set()
        self._next = start % ((local[1] - local[0] + 1) * (peer[1] - peer[0] + 1))

    def allocate(self, me: int, peer: int) -> Tuple4:
        lo, hi = self._local
        plo, phi = self._peer
        span = (hi - lo + 1) * (phi - plo + 1)
        for _ in range(min(span, 1 << 20)):
            k = self._next
            self._next = (self._next + 1) % span
            t = (me, peer, lo + k % (hi - lo + 1), plo + (k // (hi - lo + 1)) % (phi - plo + 1))
            if t not in self._used:
                self._used.add(t)
                return t
        raise RuntimeError("subsession ports exhausted")

    def release(self, t: Tuple4) -> None:
        self._used.discard(t)

    def in_use(self) -> int:
        return len(self._used)

    def used(self) -> frozenset[Tuple4]:
        return frozenset(self._used)

    def reserve(self, t: Tuple4) -> None:
        """Mark a tuple taken (restoring a snapshot)."""
        self._used.add(t)
