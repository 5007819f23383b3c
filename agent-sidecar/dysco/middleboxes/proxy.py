"""A TCP-terminating transparent proxy that changes the stream.

Connections to `port` that pass through the pod are diverted to the proxy with TPROXY;
the proxy accepts them *as the server* (same addresses and ports) and opens its own
connection to the server *as the client* (IP_TRANSPARENT, bound to the client's
address and port). So both halves carry the session's 5-tuple, as a transparent
proxy on the path would, but with the proxy's own sequence numbers. It prepends a
banner to each direction, of different lengths, so the two halves also differ in
length: sequence deltas that Dysco must carry (the proxy's agent learns the lengths
through the `SetContentDelta` command).

Run as ``python -m dysco.middleboxes.proxy --listen 15001`` in the pod; `Proxy` sets
up the TPROXY rules and policy routing around it. Counters come as JSON on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys

from dysco.dataplane import netns
from dysco.dataplane.rules import Variant, detect_variant

from ._iptables import CountedChain

BANNER_LR = b"dysco-proxy: hello server\r\n"          # prepended towards the server
BANNER_RL = b"dysco-proxy: hello client, from the proxy in the middle\r\n"
CHAIN = "DYSCO-MB-PROXY"
_MARK = "0x1"
_TABLE = "2016"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                counts: dict[str, int], key: str) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            counts[key] += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        counts["errors"] += 1
        writer.close()


async def _serve(listen: int, counts: dict[str, int]) -> None:
    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        counts["connections"] += 1
        client = cwriter.get_extra_info("peername")
        server = cwriter.get_extra_info("sockname")  # TPROXY: the original destination
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        up.bind(client)
        up.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(up, server)
        except OSError:
            counts["errors"] += 1
            up.close()
            cwriter.close()
            return
        sreader, swriter = await asyncio.open_connection(sock=up)
        swriter.write(BANNER_LR)
        cwriter.write(BANNER_RL)
        try:
            await asyncio.gather(_pipe(creader, swriter, counts, "bytes_to_server"),
                                 _pipe(sreader, cwriter, counts, "bytes_to_client"))
        except asyncio.CancelledError:
            # shut down with a session still open: a spliced-out session's halves stay
            # idle (Dysco carries the session) and are dropped with the process
            counts["spliced_or_open"] = counts.get("spliced_or_open", 0) + 1
            return
        swriter.close()
        cwriter.close()

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", listen))
    server = await asyncio.start_server(handle, sock=lsock)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    async with server:
        await stop.wait()


class Proxy:
    """Diverts TCP to `port` in pod `ns` to the proxy process and runs it."""

    def __init__(self, ns: str, port: int = 5001, listen: int = 15001,
                 variant: Variant | None = None) -> None:
        self.ns = ns
        self.listen = listen
        rules = [
            ("reply", ["-p", "tcp", "-m", "socket", "--transparent",
                       "-j", "MARK", "--set-mark", _MARK]),
            ("reply", ["-m", "mark", "--mark", _MARK, "-j", "ACCEPT"]),
            ("diverted", ["-p", "tcp", "--dport", str(port), "-j", "TPROXY",
                          "--on-port", str(listen), "--tproxy-mark", f"{_MARK}/{_MARK}"]),
        ]
        self.chain = CountedChain(ns, variant or detect_variant(), "mangle", "PREROUTING",
                                  CHAIN, rules)
        self.proc: subprocess.Popen[str] | None = None

    def _route(self, op: str) -> None:
        netns.run(self.ns, ["ip", "rule", op, "fwmark", _MARK, "lookup", _TABLE], check=False)
        netns.run(self.ns, ["ip", "route", op, "local", "0.0.0.0/0", "dev", "lo",
                            "table", _TABLE], check=False)

    def start(self) -> None:
        netns.sysctl(self.ns, {"net.ipv4.ip_forward": "1"})
        self._route("del")
        self._route("add")
        self.chain.install()
        self.proc = subprocess.Popen(
            netns.argv(self.ns, [sys.executable, "-m", "dysco.middleboxes.proxy",
                                 "--listen", str(self.listen)]),
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("proxy did not start")

    def counters(self) -> dict[str, int]:
        return self.chain.counters()

    def stop(self) -> dict[str, int]:
        """Stop the proxy without a word on its sessions: once spliced out (Dysco carries
        the session end to end) its two halves must not send a FIN or RST with the
        session's tuple, which the endpoints would answer with resets. So its locally
        sent TCP is dropped while the process ends and its sockets are destroyed."""
        final = self.counters()
        quiet = [self.chain.variant.binary(), "-w", "-t", "raw", "-I", "OUTPUT", "-p", "tcp",
                 "-m", "comment", "--comment", "dysco-proxy-quiet", "-j", "DROP"]
        if self.proc is not None:
            netns.run(self.ns, quiet)
            try:
                self.proc.terminate()
                out, _ = self.proc.communicate(timeout=10)
                self.proc = None
                with contextlib.suppress(ValueError, IndexError):
                    final |= json.loads(out.strip().splitlines()[-1])
                netns.run(self.ns, ["ss", "-K", "-t", "state", "all"], check=False)
            finally:
                quiet[4] = "-D"
                while netns.run(self.ns, quiet, check=False).returncode == 0:
                    pass
        self.chain.remove()
        self._route("del")
        return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dysco.middleboxes.proxy")
    ap.add_argument("--listen", type=int, default=15001)
    a = ap.parse_args(argv)
    counts = {"connections": 0, "bytes_to_server": 0, "bytes_to_client": 0, "errors": 0}
    asyncio.run(_serve(a.listen, counts))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
