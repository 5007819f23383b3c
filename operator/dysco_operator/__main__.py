"""Entry point of the operator: ``dysco-operator`` (or ``python -m dysco_operator``)."""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
from collections.abc import Sequence
from typing import Any

import kopf
from prometheus_client import start_http_server


def build_settings(args: argparse.Namespace) -> kopf.OperatorSettings:
    """The one settings object of the operator."""
    s = kopf.OperatorSettings()
    # Own annotation/finalizer names, so we never collide with other kopf operators.
    s.persistence.finalizer = "dysco.io/finalizer"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dysco.io")
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dysco.io", key="last-handled-configuration")
    # Our own Events are explicit (syncer/handlers); handler logs become Events only if bad.
    s.posting.level = logging.WARNING
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    s.watching.connect_timeout = 10
    s.networking.request_timeout = 30
    s.execution.max_workers = 4
    s.peering.name = args.peering
    s.peering.clusterwide = True
    s.peering.standalone = args.standalone
    s.peering.priority = args.priority
    s.peering.stealth = True
    return s


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="dysco-operator",
        description="Reconcile ServiceChains into per-node DyscoNodePlans (Kopf operator).")
    p.add_argument("--peering", default=env("DYSCO_PEERING", "dysco-operator"),
                   help="ClusterKopfPeering name shared by the replicas (HA)")
    p.add_argument("--standalone", action="store_true",
                   default=env("DYSCO_STANDALONE", "") == "1",
                   help="no peering: the only replica (tests, development)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority; default random, so that replicas never tie")
    p.add_argument("--metrics-bind-address", default=env("DYSCO_METRICS_BIND", "127.0.0.1"))
    p.add_argument("--metrics-port", type=int, default=int(env("DYSCO_METRICS_PORT", "9401")),
                   help="Prometheus /metrics port (0 = off)")
    p.add_argument("--liveness", default=env("DYSCO_LIVENESS", ""),
                   help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.priority is None:
        args.priority = random.SystemRandom().randint(1, 2**31 - 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import handlers  # noqa: F401  (registers the handlers)

    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_bind_address)
    settings = build_settings(args)
    # Peering identity: the pod name is unique per replica (Kopf would otherwise derive it
    # from the Unix user name, which an arbitrary container UID may not have).
    pod = os.environ.get("POD_NAME")
    # (kopf's Identity is a NewType of str that kopf does not export)
    identity: Any = f"{pod}@{socket.gethostname()}" if pod else None
    kopf.run(
        settings=settings,
        clusterwide=True,
        standalone=args.standalone,
        priority=args.priority,
        peering_name=None if args.standalone else args.peering,
        liveness_endpoint=args.liveness or None,
        identity=identity,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
