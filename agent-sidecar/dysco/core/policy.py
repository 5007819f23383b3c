"""Policies (which sessions get which chain) and selectors (which sessions a command means)."""

from __future__ import annotations

from dataclasses import dataclass

Tuple4 = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop of a chain: a middlebox *type* with the instances an agent may choose from."""

    name: str
    instances: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """Sessions opened from this host to `dst` (and `ports`) traverse `hops` in order.

    An empty `hops` still makes the session a Dysco session (a direct subsession), so
    middleboxes can be inserted into it later.
    """

    name: str
    dst: frozenset[int]
    hops: tuple[Hop, ...]
    ports: frozenset[int] = frozenset()
    revision: int = 0

    def matches(self, t: Tuple4) -> bool:
        return t[1] in self.dst and (not self.ports or t[3] in self.ports)


@dataclass(frozen=True, slots=True)
class Selector:
    """Matches sessions by their tuple as the local app sees it; empty fields match all."""

    src: frozenset[int] = frozenset()
    dst: frozenset[int] = frozenset()
    dst_ports: frozenset[int] = frozenset()
    policy: str = ""

    def matches(self, t: Tuple4, policy: str) -> bool:
        a, b, _sp, dp = t
        if self.policy and policy != self.policy:
            return False
        if self.dst_ports and dp not in self.dst_ports and t[2] not in self.dst_ports:
            return False
        ends = {a, b}
        if self.src and not (self.src & ends):
            return False
        return not (self.dst and not (self.dst & ends))


def choose_instance(hop: Hop, session: Tuple4, counter: int, exclude: frozenset[int]) -> int:
    """Round-robin over the instances not excluded (draining), stable for a session."""
    live = [i for i in hop.instances if i not in exclude] or list(hop.instances)
    if not live:
        raise ValueError(f"hop {hop.name!r} has no instances")
    return live[(counter + hash(session)) % len(live)]
