"""A packet-counting "DPI" box: a forwarder that looks into every TCP payload.

It sniffs the pod's interface (AF_PACKET, received packets only, so a forwarded
packet counts once) and counts packets, bytes, flows and payloads that contain a
signature. It never changes or delays traffic; the kernel forwards as usual.

Run as ``python -m dysco.middleboxes.dpi --iface eth0 [--signature TEXT]`` in the pod:
it prints ``READY`` and, on SIGTERM, its counters as JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
from types import FrameType

from dysco.dataplane import netns

_ETH_P_IP = 0x0800
_PACKET_OUTGOING = 4


def sniff(iface: str, signature: bytes) -> dict[str, int]:
    """Count until SIGTERM."""
    counts = {"packets": 0, "bytes": 0, "tcp_payload_bytes": 0, "signature_hits": 0,
              "flows": 0}
    flows: set[tuple[bytes, bytes]] = set()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_IP))
    sock.bind((iface, 0))
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock.settimeout(0.2)
    print("READY", flush=True)
    buf = bytearray(70000)
    while not stop:
        try:
            n, addr = sock.recvfrom_into(buf)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        if addr[2] == _PACKET_OUTGOING or n < 20 or buf[9] != socket.IPPROTO_TCP:
            continue
        counts["packets"] += 1
        counts["bytes"] += n
        ihl = (buf[0] & 0x0F) * 4
        head = ihl + (buf[ihl + 12] >> 4) * 4
        payload = bytes(buf[head:n])
        counts["tcp_payload_bytes"] += len(payload)
        key = (bytes(buf[12:20]), bytes(buf[ihl:ihl + 4]))
        if key not in flows:
            flows.add(key)
            counts["flows"] = len(flows)
        if signature and signature in payload:
            counts["signature_hits"] += 1
    sock.close()
    return counts


class Dpi:
    """Runs the sniffer in pod `ns` (the pod also forwards, ip_forward=1)."""

    def __init__(self, ns: str, iface: str = "eth0", signature: str = "") -> None:
        self.ns = ns
        self.argv = netns.argv(ns, [sys.executable, "-m", "dysco.middleboxes.dpi",
                                    "--iface", iface, "--signature", signature])
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        netns.sysctl(self.ns, {"net.ipv4.ip_forward": "1"})
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("dpi did not start")

    def counters(self) -> dict[str, int]:
        """Counters exist only at the end (the sniffer reports once, on stop)."""
        return {}

    def stop(self) -> dict[str, int]:
        if self.proc is None:
            return {}
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        self.proc = None
        final: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dysco.middleboxes.dpi")
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--signature", default="", help="count payloads containing this text")
    a = ap.parse_args(argv)
    print(json.dumps(sniff(a.iface, a.signature.encode())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
