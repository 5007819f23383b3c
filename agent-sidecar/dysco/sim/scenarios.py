"""Scenarios: a topology, a transfer in both directions, and reconfigurations during it.

Addresses: A (client) 10.0.0.1, D (server) 10.0.0.2, middleboxes 10.0.1.x / 10.0.2.x.
Each scenario says what must have happened by the end (`expect`), on top of the
invariants every run checks (see `runner.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core import Hop, Policy, Selector
from ..core import commands as cmd
from ..core.events import ReconfigDone
from ..core.packet import ip_to_int
from .apps import Endpoint, Forwarder, Nat, Proxy, Shifter
from .world import Host, World

A = ip_to_int("10.0.0.1")
D = ip_to_int("10.0.0.2")
M1 = ip_to_int("10.0.1.1")
M2 = ip_to_int("10.0.1.2")
X = ip_to_int("10.0.2.1")
Y = ip_to_int("10.0.2.2")
Z = ip_to_int("10.0.2.3")
W = ip_to_int("10.0.2.4")
ALL = Selector()


@dataclass
class Setup:
    world: World
    client: Endpoint
    server: Endpoint
    hosts: dict[str, Host]
    expect_done: int  # reconfigurations that must complete (left-anchor count)
    at_least: bool = False  # expect_done is a minimum (contention: either may win)


Builder = Callable[[World, int], Setup]


def _chain(world: World, size: int, hops: tuple[int, ...], mids: dict[str, str],
           banner: tuple[bytes, bytes] = (b"", b"")) -> tuple[Endpoint, Endpoint, dict[str, Host]]:
    """Client A -> [hops] -> server D; `mids` maps extra host names to app kinds."""
    addr = {"A": A, "D": D, "M1": M1, "M2": M2, "X": X, "Y": Y, "Z": Z, "W": W}
    hosts = {n: world.host(n, addr[n]) for n in ("A", "D", *mids)}
    for name, kind in mids.items():
        h = hosts[name]
        if kind == "fwd":
            Forwarder(world, h)
        elif kind == "shift":
            Shifter(world, h, d_lr=1000, d_rl=77777)
        elif kind == "nat":
            Nat(world, h)
        elif kind == "proxy":
            Proxy(world, h, *banner)
    policy = Policy("sim", frozenset({D}), tuple(Hop(f"h{i}", (h,)) for i, h in enumerate(hops)))
    hosts["A"].command(cmd.SetPolicies((policy,)))
    rng = world.rng
    up = rng.randbytes(size)
    down = rng.randbytes(size)
    chunk, interval = 500, 0.006
    server = Endpoint(world, hosts["D"], down, banner[0] + up, chunk, interval)
    client = Endpoint(world, hosts["A"], up, banner[1] + down, chunk, interval,
                      connect_to=(A, D, 33000, 80))
    on_path = [hosts[n] for n in mids if addr[n] in hops]
    world.established = lambda: all(
        e.conn is not None and e.conn.state == "established" for e in (client, server)
    ) and all(h.agent.sessions for h in on_path)
    return client, server, hosts


def _at(world: World, t: float, host: Host, c: cmd.Command) -> None:
    """Issue `c` at time `t`, or as soon after as the session is established everywhere
    (a command applies to the sessions an agent has, as a policy server's would)."""

    def fire() -> None:
        if world.established():
            host.command(c)
        else:
            world.engine.after(0.005, fire)

    world.engine.at(t, fire)


def _then(world: World, steps: list[tuple[Host, cmd.Command]]) -> None:
    """Run `steps` one after another, each once the previous reconfiguration completed."""
    if not steps:
        return
    (host, command), rest = steps[0], steps[1:]

    def go(ev: object) -> None:
        if not isinstance(ev, ReconfigDone) or ev.role != "left":
            return
        world.listeners.remove(go)
        _then(world, rest)
        world.engine.after(0.01, lambda: host.command(command))

    world.listeners.append(go)


def insert_two(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size, (), {"M1": "fwd", "M2": "fwd"})
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (M1, M2)))
    return Setup(world, c, s, h, 1)


def delete_one(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size, (M1,), {"M1": "shift"})
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (), right_anchor=D))
    return Setup(world, c, s, h, 1)


def insert_right(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size, (M1,), {"M1": "shift", "X": "fwd"})
    _at(world, 0.02, h["M1"], cmd.InsertRight(ALL, (X,)))
    return Setup(world, c, s, h, 1)


def replace_one(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size, (M1,), {"M1": "shift", "X": "fwd"})
    _at(world, 0.02, h["M1"], cmd.ReplaceSelf(ALL, (X,)))
    return Setup(world, c, s, h, 1)


def delete_two(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size, (M1, M2), {"M1": "shift", "M2": "fwd"})
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (), right_anchor=D))
    return Setup(world, c, s, h, 1)


def contention(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size * 3, (M1, M2), {"M1": "fwd", "M2": "fwd", "X": "fwd", "Y": "fwd"})
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (X,), right_anchor=M2))
    _at(world, 0.02, h["M1"], cmd.InsertRight(ALL, (Y,), right_anchor=D))
    return Setup(world, c, s, h, 1, at_least=True)


def proxy_removal(world: World, size: int) -> Setup:
    banners = (b"HELLO-FROM-PROXY\r\n", b"X-Proxy: seen\r\n\r\nbanner")
    c, s, h = _chain(world, size * 2, (M1,), {"M1": "proxy"}, banner=banners)
    _at(world, 0.03, h["M1"], cmd.ReplaceSelf(ALL, ()))
    return Setup(world, c, s, h, 1)


def nat(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size * 2, (M1,), {"M1": "nat", "X": "fwd"})
    _at(world, 0.02, h["M1"], cmd.InsertRight(ALL, (X,)))
    _then(world, [(h["A"], cmd.InsertRight(ALL, (), right_anchor=X))])
    return Setup(world, c, s, h, 2)


def cancel_retry(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size * 3, (), {"M1": "fwd"})
    world.net.down.add(M1)
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (M1,)))
    world.engine.at(0.07, lambda: world.net.down.discard(M1))
    return Setup(world, c, s, h, 1)


def five_successive(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size * 8, (), {"M1": "fwd", "M2": "shift", "X": "fwd", "Y": "fwd"})
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (M1,)))
    _then(world, [
        (h["M1"], cmd.InsertRight(ALL, (X,))),
        (h["A"], cmd.InsertRight(ALL, (), right_anchor=X)),
        (h["X"], cmd.ReplaceSelf(ALL, (Y,))),
        (h["A"], cmd.InsertRight(ALL, (), right_anchor=D)),
    ])
    return Setup(world, c, s, h, 5)


def agent_restart(world: World, size: int) -> Setup:
    c, s, h = _chain(world, size, (M1,), {"M1": "fwd", "X": "fwd"})
    _at(world, 0.02, h["A"], cmd.InsertRight(ALL, (X,)))
    world.engine.at(0.03, lambda: h["M1"].restart(0.03))  # the right anchor, mid-handshake
    world.engine.at(0.09, lambda: h["A"].restart(0.02))  # the left anchor, later on
    world.engine.at(0.15, lambda: h["X"].restart(0.02))  # the inserted middlebox
    return Setup(world, c, s, h, 1)


SCENARIOS: dict[str, tuple[Builder, str]] = {
    "insert-two": (insert_two, "no middlebox -> insert two (model run 1)"),
    "delete-one": (delete_one, "one delta middlebox -> delete it (model run 2)"),
    "insert-right": (insert_right, "one middlebox -> insert another right of it (model run 3)"),
    "replace-one": (replace_one, "one middlebox -> replace it, asked by itself (model run 4)"),
    "delete-two": (delete_two, "two middleboxes -> delete both (model run 5)"),
    "contention": (contention, "overlapping reconfigurations contend for the same lock"),
    "proxy-removal": (proxy_removal, "remove a TCP-terminating proxy with unequal deltas"),
    "nat": (nat, "a NAT middlebox: tag matching at setup, insert right of it, remove it"),
    "cancel-retry": (cancel_retry, "new path cannot be built -> cancel -> retry succeeds"),
    "five-successive": (five_successive, "five successive reconfigurations of one session"),
    "agent-restart": (agent_restart, "agents restart from saved state during a reconfiguration"),
}
