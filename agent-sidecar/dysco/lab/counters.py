"""Kernel TCP counters per namespace: how scenarios see resets and checksum errors.

An application can miss a reset (the peer's socket may already be closed), so scenarios
also compare the namespace's own counters before and after: ``Tcp.OutRsts``,
``Tcp.InCsumErrors`` and the ``TcpExt.TCPAbortOn*`` family.
"""

from __future__ import annotations

from dysco.dataplane import netns

WATCHED = ("Tcp.OutRsts", "Tcp.InCsumErrors", "Tcp.AttemptFails", "Tcp.EstabResets",
           "TcpExt.TCPAbortOnData", "TcpExt.TCPAbortOnClose", "TcpExt.TCPAbortOnMemory",
           "TcpExt.TCPAbortOnTimeout", "TcpExt.TCPAbortOnLinger", "TcpExt.TCPAbortFailed",
           "Tcp.RetransSegs", "IpExt.InTruncatedPkts",
           # retransmission timeouts: what a stall > 2 s is made of (backed-off RTOs)
           "TcpExt.TCPTimeouts", "TcpExt.TCPSpuriousRTOs",
           # control datagrams an agent's socket had no room for
           "Udp.RcvbufErrors")


def read(ns: str | None) -> dict[str, int]:
    """All `Group.Name` counters of /proc/net/snmp and /proc/net/netstat in `ns`."""
    text = netns.run(ns, ["cat", "/proc/net/snmp", "/proc/net/netstat"]).stdout
    lines = text.splitlines()
    values: dict[str, int] = {}
    for head, body in zip(lines[::2], lines[1::2], strict=False):
        group, *names = head.split()
        _, *numbers = body.split()
        for name, number in zip(names, numbers, strict=False):
            values[f"{group.rstrip(':')}.{name}"] = int(number)
    return values


def delta(before: dict[str, int], after: dict[str, int],
          keys: tuple[str, ...] = WATCHED) -> dict[str, int]:
    """The watched counters that changed, with their increase."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if after.get(k, 0) != before.get(k, 0)}
