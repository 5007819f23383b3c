"""A hostile pod's floods, for the resource-limit tests: run inside a namespace as
``python -m dysco.lab.flood syn|synlist|control --src IP --dst IP ...``.

* ``syn``: bare SYNs from random source ports (a SYN flood an app could send; an agent
  with a matching policy opens a session for each);
* ``synlist``: SYNs carrying a forged SYN list that names `dst` as the last hop, so
  `dst`'s agent opens a right-end session for each (no agent on the sender needed);
* ``control``: unauthenticated datagrams to `dst`'s control port.

Packets go out of a raw socket at `--rate` per second; prints one JSON line (sent, s).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import time

from dysco.core.packet import SYN, build
from dysco.core.synlist import SynList


def _ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def packets(kind: str, src: int, dst: int, port: int, rng: random.Random) -> bytes:
    """One flood packet of `kind` (a whole IPv4 packet, or a UDP payload for control)."""
    if kind == "control":
        return rng.randbytes(rng.randrange(20, 120))
    sport = rng.randrange(1024, 65535)
    payload = b""
    if kind == "synlist":
        payload = SynList((src, dst, sport, port), (dst,)).encode()
    return build(src, dst, sport, port, rng.getrandbits(32), 0, SYN, payload=payload)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dysco.lab.flood")
    p.add_argument("kind", choices=["syn", "synlist", "control"])
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True, help="TCP or control (UDP) port")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=float, default=2000.0, help="packets per second")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    src, dst = _ip(args.src), _ip(args.dst)
    if args.kind == "control":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.src, 0))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    start = time.monotonic()
    sent = 0
    with sock:
        for i in range(args.count):
            due = start + i / args.rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            data = packets(args.kind, src, dst, args.port, rng)
            try:
                sock.sendto(data, (args.dst, args.port if args.kind == "control" else 0))
                sent += 1
            except OSError:  # a full send buffer: a flood may lose some
                pass
    print(json.dumps({"kind": args.kind, "sent": sent,
                      "seconds": round(time.monotonic() - start, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
