"""`dysco fuzz`: hostile input against live agents, at volume.

Agents are taken from the middle of a simulated reconfiguration (locks held, a new path
being built, data flowing on both paths), then fed packets at both hooks, SYN lists, tag
options and control messages: random bytes, truncations, bit flips and field tweaks of
valid ones, and well-formed messages with random fields sealed with the cluster key (a
compromised or buggy agent). Checked for every input: no exception escapes the core,
rejected input changes no state, lock bookkeeping stays consistent; at the end, memory
is bounded.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..core import Agent, Hook, Notify
from ..core import control as ctl
from ..core.auth import Authenticator
from ..core.events import Rejected
from ..core.packet import ACK, FIN, PSH, RST, SYN, build, sack_option
from ..core.synlist import SynList
from .network import LinkModel
from .scenarios import SCENARIOS
from .world import SIM_KEYS, World


def digest(a: Agent) -> tuple[Any, ...]:
    """Everything an input could change in an agent."""
    sides = []
    for s in a.sessions.values():
        for d in s.sides:
            rc = d.rc
            sides.append((
                s.sid, s.torn, s.closing_at, s.last_activity, d.local, d.path.sub_out,
                d.path.snd_off, d.path.rcv_off, d.new.sub_out if d.new else None, d.phase,
                d.lock, d.lock_rid, d.snd_max, d.snd_acked, d.rcv_max, d.rcv_acked, d.fin_in,
                d.fin_out, None if rc is None else (
                    rc.rid, rc.cutoff_snd, rc.cutoff_rcv, rc.old_acked, rc.old_rcvd_max,
                    rc.peer_complete, rc.tries, rc.deadline,
                ),
            ))
    return (tuple(a.by_in), tuple(a.by_out), tuple(a.pending), tuple(a.by_rid),
            tuple(a.tombstones.items()), tuple(sides), len(a._timers))


REFRESH = 20_000


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.world = World(seed, LinkModel())
        SCENARIOS["delete-two"][0](self.world, 20_000)
        self.world.engine.run(0.027)
        self.agents = [h.agent for h in self.world.hosts.values()]
        self.key = Authenticator(dict(SIM_KEYS), 1, window=1e12)
        self.reasons: Counter[str] = Counter()
        self.accepted = 0
        self.errors: list[str] = []

    # ----- generators -----
    def _tuple(self, a: Agent, hook: Hook) -> tuple[int, int, int, int]:
        table = list(a.by_in if hook is Hook.INPUT else a.by_out)
        r = self.rng
        if table and r.random() < 0.7:
            return r.choice(table)
        return (r.getrandbits(32), r.getrandbits(32), r.getrandbits(16), r.getrandbits(16))

    def _packet(self, a: Agent, hook: Hook) -> bytes:
        r = self.rng
        t = self._tuple(a, hook)
        flags = r.choice([ACK, ACK | PSH, SYN, SYN | ACK, ACK | FIN, RST, r.getrandbits(8)])
        opts = sack_option([(r.getrandbits(32), r.getrandbits(32))]) if r.random() < 0.3 else b""
        payload = r.randbytes(r.randrange(0, 40))
        if flags & SYN and r.random() < 0.5:
            hops = tuple(r.getrandbits(32) or 1 for _ in range(r.randrange(1, 4)))
            if r.random() < 0.5:
                hops = (a.address, *hops)
            payload = SynList(t, hops, r.getrandbits(32)).encode()
        data = bytearray(build(t[0], t[1], t[2], t[3], r.getrandbits(32), r.getrandbits(32),
                               flags, options=opts, payload=payload))
        return bytes(self._mutate(data))

    def _mutate(self, data: bytearray) -> bytearray:
        r = self.rng
        k = r.randrange(6)
        if k == 0 and data:
            return data[: r.randrange(len(data))]
        if k == 1 and data:
            for _ in range(r.randrange(1, 4)):
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
            return data
        if k == 2:
            return data + bytearray(r.randbytes(r.randrange(1, 16)))
        if k == 3 and len(data) > 33:
            data[32] = r.getrandbits(8)  # TCP data offset
            return data
        if k == 4 and len(data) > 40:
            data[40:42] = bytes([r.choice([0, 1, 2, 4, 5, 8, 253, 255]), r.getrandbits(8)])
            return data
        return data  # valid as built

    def _control(self, a: Agent) -> tuple[int, bytes]:
        r = self.rng
        subs = list(a.by_in)
        sub = r.choice(subs) if subs and r.random() < 0.7 else (
            r.getrandbits(32), r.getrandbits(32), r.getrandbits(16), r.getrandbits(16))
        rids = list(a.by_rid)
        rid = r.choice(rids) if rids and r.random() < 0.5 else r.getrandbits(64)
        msg = ctl.Control(
            r.choice(list(ctl.MsgType)), rid, sub,
            r.choice([a.address, sub[0], r.getrandbits(32) or 1]),
            r.choice([a.address, sub[1], r.getrandbits(32) or 1]),
            r.getrandbits(32), r.choice(list(ctl.NackReason)), sub,
            tuple(r.getrandbits(32) or 1 for _ in range(r.randrange(0, 4))),
        )
        body = bytearray(msg.encode())
        if r.random() < 0.5:
            body = self._mutate(body)
        src = sub[0]
        how = r.randrange(3)
        if how == 0:
            return src, bytes(body)  # unauthenticated
        sealed = bytearray(self.key.seal(bytes(body), src, self.world.engine.now))
        if how == 1 and sealed:
            sealed[r.randrange(len(sealed))] ^= 1  # forged
        return src, bytes(sealed)

    # ----- driving -----
    def one(self) -> None:
        r = self.rng
        a = r.choice(self.agents)
        now = self.world.engine.now
        before = digest(a)
        kind = r.randrange(3)
        try:
            if kind == 2:
                src, data = self._control(a)
                acts = a.control(src, data, now)
            else:
                hook = Hook.INPUT if kind == 0 else Hook.OUTPUT
                acts = a.packet(hook, self._packet(a, hook), now)
        except Exception as e:  # the property under test: nothing escapes
            self.errors.append(f"{type(e).__name__}: {e}")
            return
        rejected = [
            x.event for x in acts if isinstance(x, Notify) and isinstance(x.event, Rejected)
        ]
        if rejected:
            for ev in rejected:
                self.reasons[f"{ev.kind}:{ev.reason}"] += 1
            if digest(a) != before:
                self.errors.append(f"state changed on rejected input ({rejected[0].reason})")
        else:
            self.accepted += 1
        n = len(self.world.violations)
        self.world.check_locks(self.world.hosts[next(
            k for k, h in self.world.hosts.items() if h.agent is a)])
        if len(self.world.violations) > n:
            self.errors.extend(self.world.violations[n:])


def run(inputs: int, seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    tracemalloc.start()
    fz = Fuzzer(seed)
    reasons: Counter[str] = Counter()
    errors: list[str] = []
    accepted = 0
    t0 = time.perf_counter()
    peak_at_start = tracemalloc.get_traced_memory()[1]
    step = max(1, inputs // 20)
    sessions = 0
    for i in range(inputs):
        if i and i % REFRESH == 0:
            # a fresh live world: accepted garbage (e.g. random valid SYNs) would otherwise
            # pile up sessions that only idle timeouts, which we do not let run, reclaim
            sessions = max(sessions, *(len(a.sessions) for a in fz.agents))
            reasons += fz.reasons
            errors += fz.errors
            accepted += fz.accepted
            fz = Fuzzer(seed + i)
        fz.one()
        if (i + 1) % step == 0:
            progress(f"fuzz: {i + 1}/{inputs} inputs, {len(errors) + len(fz.errors)} errors")
        if len(fz.errors) > 50:
            break
    reasons += fz.reasons
    errors += fz.errors
    accepted += fz.accepted
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sessions = max(sessions, *(len(a.sessions) for a in fz.agents))
    wall = time.perf_counter() - t0
    return {
        "inputs": inputs,
        "seed": seed,
        "errors": len(errors),
        "first_errors": errors[:5],
        "accepted": accepted,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "max_sessions_per_agent": sessions,
        "peak_memory_growth_kib": round((peak - peak_at_start) / 1024, 1),
        "inputs_per_s": round(inputs / wall) if wall else 0,
        "wall_s": round(wall, 1),
    }


def add_fuzz_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fuzz", help="feed hostile input to live agents",
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None,
    )
    p.add_argument("--inputs", type=int, default=100_000, help="number of inputs (default 100000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write the summary to FILE")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    summary = run(args.inputs, args.seed, lambda line: print(line, file=sys.stderr, flush=True))
    text = json.dumps(summary, sort_keys=True)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if summary["errors"] == 0 else 1


