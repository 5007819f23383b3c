"""Goodput and latency of the NFQUEUE backends with the stand-in processor (no core).

Not a test: run as root, ``.venv/bin/python tests/netns/bench_standin.py [--seconds 5]``.
It builds its own lab (prefix dysco-b<pid>-), attaches the runtime to the client pod
with a stand-in that rewrites every packet of the measured connections (virtual
ports -> real ports, incremental checksums), prints a table and removes the lab.
"""

from __future__ import annotations

import argparse
import json
import os
import threading

from standin import PortMapper

from dysco.dataplane.runtime import PodSpec, Runtime
from dysco.lab import bench
from dysco.lab.topology import Lab

VIRTUAL = {bench.IPERF_PORT: 6201, bench.ECHO_PORT: 6002}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args()
    lab = Lab(prefix=f"dysco-b{os.getpid()}-")
    lab.up()
    rows = []
    try:
        rows.append(bench.measure(lab, "plain routing", seconds=a.seconds))
        client = lab.pod("client")
        for backend in ("raw", "binding"):
            mapper = PortMapper(mapping={v: r for r, v in VIRTUAL.items()})
            runtime = Runtime(lambda spec, m=mapper: m, backend=backend)
            runtime.add_pod(PodSpec(client.name, client.ip))
            thread = threading.Thread(target=runtime.run)
            thread.start()
            try:
                row = bench.measure(lab, f"stand-in rewrite on client ({backend})",
                                    seconds=a.seconds, dial=VIRTUAL)
            finally:
                runtime.stop()
                thread.join()
                runtime.close()
            row["rewritten"] = mapper.rewritten
            rows.append(row)
    finally:
        lab.down()
    print(bench.table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
