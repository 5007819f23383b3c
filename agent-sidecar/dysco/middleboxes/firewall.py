"""A transparent forwarder with a stateful firewall (the classic middlebox).

The pod forwards (ip_forward=1) and filters in FORWARD: established and related
traffic passes, new TCP connections pass only for the allowed ports, the rest is
dropped. Conntrack sees sessions as the applications do, because the Dysco input hook
runs before it (dataplane/rules.py), so "ESTABLISHED" works across subsessions. A
session the firewall joins mid-stream (a live insertion) is picked up by conntrack's
loose mode as NEW on whichever side speaks first, hence the rule for both ports.

`strict=True` makes a firewall that only admits a session it saw open: NEW must be a
SYN and conntrack's loose mid-stream pickup is off (nf_conntrack_tcp_loose=0), so a
mid-stream packet of a session it has no entry for is INVALID and dropped. Replacing
such a firewall live needs its per-session state: `copy_state` exports the conntrack
entries of the sessions (`conntrack -L`) and inserts them in the new instance
(`conntrack -I`), which must happen before the switch.
"""

from __future__ import annotations

import re

from dysco.dataplane import netns
from dysco.dataplane.rules import Variant, detect_variant

from ._iptables import CountedChain

CHAIN = "DYSCO-MB-FW"
_ENTRY = re.compile(r"^tcp\s+\d+\s+\d+\s+(\S+)\s+src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)"
                    r".*?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


class Firewall:
    def __init__(self, ns: str, ports: tuple[int, ...] = (5001,),
                 variant: Variant | None = None, strict: bool = False) -> None:
        self.ns = ns
        self.strict = strict
        plist = ",".join(str(p) for p in ports)
        new = ["-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]
        if strict:
            rules = [
                ("established", ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                                 "-j", "ACCEPT"]),
                ("new", ["-p", "tcp", "--syn", "-m", "multiport", "--dports", plist, *new]),
                ("dropped", ["-j", "DROP"]),
            ]
        else:
            rules = [
                ("established", ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                                 "-j", "ACCEPT"]),
                ("new", ["-p", "tcp", "-m", "multiport", "--dports", plist, *new]),
                ("new", ["-p", "tcp", "-m", "multiport", "--sports", plist, *new]),
                ("dropped", ["-j", "DROP"]),
            ]
        self.chain = CountedChain(ns, variant or detect_variant(), "filter", "FORWARD",
                                  CHAIN, rules)

    def start(self) -> None:
        netns.sysctl(self.ns, {"net.ipv4.ip_forward": "1"})
        self.chain.install()  # loads conntrack in the namespace, and its sysctls
        if self.strict:
            netns.sysctl(self.ns, {"net.netfilter.nf_conntrack_tcp_loose": "0"})

    def counters(self) -> dict[str, int]:
        return self.chain.counters()

    def stop(self) -> dict[str, int]:
        final = self.counters()
        self.chain.remove()
        if self.strict:
            netns.sysctl(self.ns, {"net.netfilter.nf_conntrack_tcp_loose": "1"})
        return final


def export_state(ns: str, port: int) -> list[list[str]]:
    """The conntrack entries of established TCP sessions to or from `port` in `ns`:
    [state, src, dst, sport, dport, reply src, reply dst, reply sport, reply dport]."""
    out = netns.run(ns, ["conntrack", "-L", "-p", "tcp"], check=False).stdout
    entries = []
    for line in out.splitlines():
        m = _ENTRY.match(line)
        if m and str(port) in (m.group(4), m.group(5)) and m.group(1) == "ESTABLISHED":
            entries.append(list(m.groups()))
    return entries


def import_state(ns: str, entries: list[list[str]], timeout: int = 600) -> int:
    """Insert exported entries into `ns`'s conntrack table; returns how many were new."""
    added = 0
    for state, src, dst, sport, dport, rsrc, rdst, rsport, rdport in entries:
        done = netns.run(ns, ["conntrack", "-I", "-p", "tcp", "-s", src, "-d", dst,
                              "--sport", sport, "--dport", dport, "-r", rsrc, "-q", rdst,
                              "--reply-port-src", rsport, "--reply-port-dst", rdport,
                              "--state", state, "--timeout", str(timeout),
                              "-u", "ASSURED,SEEN_REPLY"], check=False)
        added += done.returncode == 0
    return added


def copy_state(src_ns: str, dst_ns: str, port: int) -> dict[str, int]:
    """Migrate the firewall's per-session state from one instance to another."""
    entries = export_state(src_ns, port)
    return {"exported": len(entries), "imported": import_state(dst_ns, entries)}
