"""`dysco sim`: run scenarios under seeded schedules and report invariant violations."""

from __future__ import annotations

import argparse
import json
import sys

from .runner import run_many
from .scenarios import SCENARIOS


def add_sim_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim",
        help="run protocol scenarios in the deterministic simulator",
        description="Run Dysco scenarios in a deterministic discrete-event simulator: "
        "real protocol core, simulated TCP endpoints, middleboxes and a lossy, reordering, "
        "duplicating network. Prints one JSON line per run and a summary line per scenario; "
        "exits 0 only when no run violated an invariant.",
    )
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                   help="scenario to run (repeatable)")
    p.add_argument("--all", action="store_true", help="run every scenario")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--runs", type=int, default=10, help="seeded runs per scenario (default 10)")
    p.add_argument("--seed", type=int, default=1, help="first seed (runs use seed, seed+1, ...)")
    p.add_argument("--loss", type=float, default=0.0,
                   help="packet and control-message loss probability, 0..0.2 (duplication "
                   "is half of it)")
    p.add_argument("--bytes", type=int, default=20_000, help="base bytes per direction")
    p.add_argument("--quiet", action="store_true", help="print only the summary lines")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.list:
        for name, (_, what) in SCENARIOS.items():
            print(f"{name:18s} {what}")
        return 0
    names = sorted(SCENARIOS) if args.all else (args.scenario or [])
    if not names:
        print("dysco sim: give --scenario NAME, --all or --list", file=sys.stderr)
        return 2
    if not 0.0 <= args.loss <= 0.2:
        print("dysco sim: --loss must be within 0..0.2", file=sys.stderr)
        return 2
    total = 0
    for name in names:
        results, summary = run_many(name, args.runs, args.seed, args.loss, args.bytes)
        if not args.quiet:
            for r in results:
                print(json.dumps(r, sort_keys=True))
        print(json.dumps(summary, sort_keys=True), flush=True)
        total += summary["violations"]
    return 0 if total == 0 else 1
