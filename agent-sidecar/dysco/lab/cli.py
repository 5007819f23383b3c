"""`dysco lab ...` and `dysco bench`: subcommands the main CLI registers.

Each parser sets ``func``: a callable taking the parsed namespace and returning the exit
status, so `dysco.cli.main` only has to call ``args.func(args)``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

from dysco.dataplane import nfq

from . import bench, control, scenarios
from .agents import LabAgents
from .topology import DEFAULT_PREFIX, OFFLOAD_MODES, Lab

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMG]?)(i?B?)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'50M' -> 50 * 2**20; plain digits are bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64K, 50M, 1G)")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(prefix=args.prefix, middleboxes_per_node=args.middleboxes,
               offloads=args.offloads)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
    p.add_argument("--middleboxes", type=int, default=2, help="middlebox pods per node")
    p.add_argument("--offloads", choices=sorted(OFFLOAD_MODES), default="default",
                   help="veth offloads (default: kernel defaults, TSO/GSO on)")


def _up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    lab.up()
    print(json.dumps(lab.status(), indent=2))
    return 0


def _down(args: argparse.Namespace) -> int:
    _lab(args).down()
    return 0


def _status(args: argparse.Namespace) -> int:
    print(json.dumps(_lab(args).status(), indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.list:
        for s in scenarios.SCENARIOS.values():
            print(f"{s.name:12} {s.summary}")
        return 0
    if not args.scenario:
        print("dysco lab run: give --scenario NAME or --list", file=sys.stderr)
        return 2
    opts = scenarios.Options(bytes=args.bytes, sessions=args.sessions, timeout=args.timeout,
                             backend=args.backend, rate=args.rate, loss=args.loss,
                             fastpath=args.fastpath)
    result = scenarios.run(args.scenario, _lab(args), opts)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verdict = "PASS" if result["ok"] else "FAIL"
        print(f"{verdict} {args.scenario}: {result['sessions']} session(s) x "
              f"{result['bytes']} B each way in {result['seconds']} s "
              f"({result['goodput_mbps']} Mbit/s total), longest stall "
              f"{result['max_gap_s']} s")
        for failure in result["failures"]:
            print(f"  - {failure}")
    return 0 if result["ok"] else 1


def _agents(args: argparse.Namespace) -> int:
    """Run agents on every lab pod until interrupted; `dysco chain` orders go to them."""
    lab = _lab(args)
    lab.up()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LabAgents(lab, [p.short for p in lab.pods()], backend=args.backend,
                   fastpath=args.fastpath) as agents:
        agents.set_chain("client", "server", args.hops, set(args.ports))
        print(json.dumps({"serving": str(control.socket_path(lab.prefix)),
                          "chain": ["client", *args.hops, "server"], "ports": args.ports}),
              flush=True)
        stop.wait()
        print(json.dumps(agents.stats()), flush=True)
    return 0


def add_fastpath_switch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fastpath", action=argparse.BooleanOptionalAction, default=True,
                   help="end hosts offload steady sessions to conntrack (default on)")


def add_lab_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `dysco lab up|down|status|run`."""
    lab = subparsers.add_parser("lab", help="the network-namespace lab (nodes and pods)")
    sub = lab.add_subparsers(dest="lab_command", required=True)
    for name, func, text in [("up", _up, "build the lab (idempotent)"),
                             ("down", _down, "remove the lab and its processes"),
                             ("status", _status, "print the lab as JSON")]:
        p = sub.add_parser(name, help=text)
        _common(p)
        p.set_defaults(func=func)
    ag = sub.add_parser("agents", help="run Dysco agents on every lab pod until Ctrl-C "
                        "(for `dysco chain` by hand)")
    _common(ag)
    ag.add_argument("--hops", type=lambda t: [h for h in t.split(",") if h], default=[],
                    help="chain of new client -> server sessions, e.g. mb1,mb3")
    ag.add_argument("--ports", type=int, nargs="+", default=[5001])
    ag.add_argument("--backend", choices=sorted(nfq.BACKENDS), default="raw")
    add_fastpath_switch(ag)
    ag.set_defaults(func=_agents)
    run = sub.add_parser("run", help="run a scenario (brings the lab up if needed)")
    _common(run)
    run.add_argument("--scenario", choices=sorted(scenarios.SCENARIOS))
    run.add_argument("--list", action="store_true", help="list the scenarios")
    run.add_argument("--bytes", type=parse_size, default=parse_size("50M"),
                     help="bytes per direction per session (e.g. 50M)")
    run.add_argument("--sessions", type=int, default=1)
    run.add_argument("--timeout", type=float, default=30.0, help="socket timeout, s")
    run.add_argument("--rate", type=parse_size, default=0,
                     help="pace each direction of each session to this many bytes/s "
                     "(e.g. 32K with --sessions 200; default: as fast as possible)")
    run.add_argument("--backend", choices=sorted(nfq.BACKENDS), default="raw",
                     help="NFQUEUE backend of the Dysco agents")
    add_fastpath_switch(run)
    run.add_argument("--loss", type=float, default=0.2,
                     help="control-loss: share of control datagrams dropped (0..1)")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    run.set_defaults(func=_run)


def _bench(args: argparse.Namespace) -> int:
    lab = _lab(args)
    lab.up()
    load = Path("/proc/loadavg").read_text().split()[:3]
    if args.load:
        result = bench.load(lab, args.load, args.load_reconfigure, args.backends[0])
        print(json.dumps({**result, "load_before": load}))
        return 0 if result["ok"] else 1
    rows = [bench.measure(lab, "plain routing", seconds=args.seconds, count=args.count),
            bench.measure_conntrack(lab, ["client", "mb1", "mb3", "server"],
                                    seconds=args.seconds, count=args.count)]
    reconfigs: list[dict[str, object]] = []
    if not args.plain_only:
        for hops in ([], ["mb1"], ["mb1", "mb3"]):
            # fast path (end hosts and middleboxes), end hosts only, queue path
            for fastpath, mbfast in ((True, True), (True, False), (False, False)):
                if fastpath and not mbfast and not hops:
                    continue
                for backend in args.backends if hops and not fastpath else args.backends[:1]:
                    rows.append(bench.measure_dysco(lab, hops, backend, seconds=args.seconds,
                                                    count=args.count, fastpath=fastpath,
                                                    mbfast=mbfast))
        for n in args.reconfig_sessions:
            reconfigs.append(bench.reconfiguration(lab, n, args.backends[0]))
    print(bench.table(rows))
    for rc in reconfigs:
        print(f"replace mb1 -> mb3 for {rc['sessions']} idle session(s) "
              f"({rc['backend']}): all done in {rc.get('seconds')} s, per session p50 "
              f"{rc.get('p50_s')} s, p99 {rc.get('p99_s')} s; {rc.get('setup_per_s')} "
              f"sessions/s opened; agent {rc.get('agent_cpu_us_per_session_setup')} µs CPU "
              f"and {rc.get('agent_rss_kib_per_session')} KiB per session; "
              f"{'ok' if rc.get('ok') else 'FAILED'}")
    head = bench.summary(rows, reconfigs, args.backends[0]) if not args.plain_only else {}
    print(json.dumps(head))
    print(f"load average before the run: {' '.join(load)} ({os.cpu_count()} CPUs)")
    if args.plot and not args.plain_only:
        bench.plot(rows, args.plot)
        print(f"plot written to {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({**head, "load_before": load, "rows": rows,
                                               "reconfiguration": reconfigs},
                                              indent=2) + "\n")
    return 0 if all(rc.get("ok") for rc in reconfigs) else 1


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `dysco bench`."""
    p = subparsers.add_parser("bench", help="measure goodput and latency in the lab")
    _common(p)
    p.add_argument("--seconds", type=float, default=3.0, help="iperf3 time per direction")
    p.add_argument("--count", type=int, default=2000, help="round trips per latency probe")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--backends", nargs="+", choices=sorted(nfq.BACKENDS),
                   default=["raw", "binding"], help="NFQUEUE backends for the Dysco rows")
    p.add_argument("--plain-only", action="store_true", help="skip the Dysco rows")
    p.add_argument("--plot", metavar="PNG", default="dysco-bench.png",
                   help="write goodput and latency bars here")
    p.add_argument("--reconfig-sessions", type=int, nargs="*", default=[1, 1000],
                   help="idle sessions replaced mb1 -> mb3 by one order (timed)")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="instead: hold N idle sessions at once through the agents, report "
                   "memory per session, replace --load-reconfigure of them by one order")
    p.add_argument("--load-reconfigure", type=int, default=1000, metavar="M")
    p.set_defaults(func=_bench)


def _pods(text: str) -> tuple[str, ...]:
    pods = tuple(p.strip() for p in text.split(",") if p.strip())
    if not pods:
        raise argparse.ArgumentTypeError("give at least one pod")
    return pods


def _chain(args: argparse.Namespace) -> int:
    order = control.Order(op=args.chain_command, at=getattr(args, "at", "") or "",
                          middlebox=getattr(args, "middlebox", "") or "",
                          hops=tuple(getattr(args, "hops", ()) or ()),
                          dst=args.dst or "", port=args.port or 0, wait=args.wait)
    try:
        order.validate()
        answer = control.send(Path(args.socket) if args.socket
                              else control.socket_path(args.prefix), order)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"dysco chain {args.chain_command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


def add_chain_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `dysco chain insert|remove|replace`: reconfigure live sessions by hand
    (the lab's running agents take the order on their control socket)."""
    chain = subparsers.add_parser("chain", help="insert, remove or replace middleboxes in "
                                  "live sessions (lab agents)")
    sub = chain.add_subparsers(dest="chain_command", required=True)
    ins = sub.add_parser("insert", help="POD (left anchor) puts HOPS after itself")
    ins.add_argument("--at", required=True, help="the left anchor pod (e.g. client, mb1)")
    ins.add_argument("--hops", type=_pods, required=True, help="POD[,POD...] to insert")
    rem = sub.add_parser("remove", help="take middlebox POD out of its sessions")
    rem.add_argument("--middlebox", required=True)
    rep = sub.add_parser("replace", help="replace middlebox POD by others")
    rep.add_argument("--middlebox", required=True)
    rep.add_argument("--with", dest="hops", type=_pods, required=True,
                     help="POD[,POD...] replacing it")
    for p in (ins, rem, rep):
        p.add_argument("--dst", help="only sessions with this IP at either end")
        p.add_argument("--port", type=int, help="only sessions with this port at either end")
        p.add_argument("--wait", type=float, default=10.0,
                       help="seconds to wait for completion (0: return once ordered)")
        p.add_argument("--prefix", default=DEFAULT_PREFIX, help="the lab's prefix")
        p.add_argument("--socket", help="the agents' control socket (default: per prefix)")
        p.set_defaults(func=_chain)
