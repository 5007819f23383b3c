"""``dysco agent``: the node agent (DaemonSet). Register with `add_agent_parser`.

Usage from the main CLI::

    sub = parser.add_subparsers(dest="command")
    add_agent_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from .interface import DataPlane, RecordingDataPlane
from .netns import make_resolver

DEFAULT_DATAPLANE = "dysco.dataplane.k8s:create_dataplane"
# After SIGTERM, every thread's stack goes to stderr if the agent has not suspended by
# then: before the chart's 30 s grace period ends in SIGKILL, which loses the pods'
# state (the next agent then carries nothing on), the log shows where it was stuck.
STUCK_DUMP_AFTER = 20.0


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    env = os.environ.get
    p: argparse.ArgumentParser = subparsers.add_parser(
        "agent", help="run the node agent (watches this node's DyscoNodePlan)",
        description="Node agent: apply this node's DyscoNodePlan to the Dysco data plane "
                    "and report back in its status.")
    p.add_argument("--node-name", default=env("NODE_NAME", ""),
                   help="this node's name (env NODE_NAME; the DaemonSet sets it)")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG", ""),
                   help="kubeconfig file; default in-cluster service account")
    p.add_argument("--dataplane", default=env("DYSCO_DATAPLANE", DEFAULT_DATAPLANE),
                   help="'module:factory' returning a DataPlane, or 'record' (dry run: "
                        "records calls, touches nothing)")
    p.add_argument("--netns-resolver", default=env("DYSCO_NETNS_RESOLVER", "auto"),
                   choices=["auto", "docker", "crictl", "proc"])
    p.add_argument("--http-bind-address", default=env("DYSCO_HTTP_BIND", "127.0.0.1"),
                   help="address of /metrics, /healthz, /readyz")
    p.add_argument("--http-port", type=int, default=int(env("DYSCO_HTTP_PORT", "9402")),
                   help="0 = no HTTP server")
    p.add_argument("--keys-dir", default=env("DYSCO_KEYS_DIR", ""),
                   help="directory of the mounted control-key Secret (key-<id>, current); "
                        "re-read every step, so keys rotate without a restart")
    p.add_argument("--status-interval", type=float, default=5.0,
                   help="seconds between status reports (sessions, reconfigurations)")
    p.add_argument("--fastpath", action=argparse.BooleanOptionalAction,
                   default=env("DYSCO_FASTPATH", "1") != "0",
                   help="offload steady end-host sessions to conntrack (default on); the "
                        "data plane factory reads it as DYSCO_FASTPATH")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run_agent)
    return p


def load_dataplane(spec: str) -> DataPlane:
    """``module:factory`` -> ``factory()``, which must return a `DataPlane`.

    The factory takes no arguments; it may read the environment the DaemonSet provides
    (DYSCO_CONTROL_PORT, NODE_NAME, POD_NAME). Keys arrive through ``set_keys``.
    """
    if spec == "record":
        return RecordingDataPlane()
    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr or "create_dataplane")
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"dysco agent: cannot load data plane {spec!r}: {e} "
                         "(use --dataplane=record for a dry run)") from e
    try:
        dp = factory()
    except ValueError as e:  # e.g. a bad limit in the environment
        raise SystemExit(f"dysco agent: data plane {spec!r}: {e}") from e
    if not isinstance(dp, DataPlane):
        raise SystemExit(f"dysco agent: {spec!r} did not return a DataPlane")
    return dp


def _dataplane(args: argparse.Namespace) -> DataPlane:
    os.environ["DYSCO_FASTPATH"] = "1" if args.fastpath else "0"
    return load_dataplane(args.dataplane)


def run_agent(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from .agent import NodeAgent

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.node_name:
        raise SystemExit("dysco agent: --node-name (or env NODE_NAME) is required")
    if args.kubeconfig:
        config.load_kube_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    dataplane = _dataplane(args)
    agent = NodeAgent(
        args.node_name, client.CustomObjectsApi(), dataplane,
        make_resolver(args.netns_resolver),
        agent_id=os.environ.get("POD_NAME", socket.gethostname()),
        status_interval=args.status_interval,
        keys_dir=Path(args.keys_dir) if args.keys_dir else None,
    )
    server = agent.serve_http(args.http_bind_address, args.http_port) if args.http_port else None

    def _stop(*_: Any) -> None:
        faulthandler.dump_traceback_later(STUCK_DUMP_AFTER, exit=False)
        agent.shutdown()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        agent.run()
    finally:
        if server is not None:
            server.shutdown()
        # SIGTERM (restart, rolling upgrade): the next agent on this node carries on
        dataplane.suspend()
        faulthandler.cancel_dump_traceback_later()
    return 0
