"""``python -m dysco_operator.cleanup``: delete every ServiceChain and wait until the operator
released them (the chart's pre-delete hook, so `helm uninstall` leaves no chain stuck on a
finalizer that nobody would release)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

from kubernetes import client

from .kube import load_api_client
from .model import CHAINS, GROUP, VERSION


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dysco-operator-cleanup")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    co = client.CustomObjectsApi(load_api_client())

    def names() -> list[tuple[str, str]]:
        listed = cast(dict[str, Any], co.list_cluster_custom_object(GROUP, VERSION, CHAINS))
        items = listed["items"]
        return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]

    for ns, name in names():
        try:
            co.delete_namespaced_custom_object(GROUP, VERSION, ns, CHAINS, name)
            print(f"deleting ServiceChain {ns}/{name}", flush=True)
        except client.ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + args.timeout
    while (left := names()) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        print(f"still there after {args.timeout:.0f}s: {left}", file=sys.stderr)
        return 1
    print("all ServiceChains released", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
