"""A transparent forwarder with a stateful firewall (the classic middlebox).

The pod forwards (ip_forward=1) and filters in FORWARD: established and related
traffic passes, new TCP connections pass only for the allowed ports, the rest is
dropped. Conntrack sees sessions as the applications do, because the Dysco input hook
runs before it (dataplane/rules.py), so "ESTABLISHED" works across subsessions. A
session the firewall joins mid-stream (a live insertion) is picked up by conntrack's
loose mode as NEW on whichever side speaks first, hence the rule for both ports.
"""

from __future__ import annotations

from dysco.dataplane import netns
from dysco.dataplane.rules import Variant, detect_variant

from ._iptables import CountedChain

CHAIN = "DYSCO-MB-FW"


class Firewall:
    def __init__(self, ns: str, ports: tuple[int, ...] = (5001,),
                 variant: Variant | None = None) -> None:
        self.ns = ns
        plist = ",".join(str(p) for p in ports)
        rules = [
            ("established", ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                             "-j", "ACCEPT"]),
            ("new", ["-p", "tcp", "-m", "multiport", "--dports", plist,
                     "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]),
            ("new", ["-p", "tcp", "-m", "multiport", "--sports", plist,
                     "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]),
            ("dropped", ["-j", "DROP"]),
        ]
        self.chain = CountedChain(ns, variant or detect_variant(), "filter", "FORWARD",
                                  CHAIN, rules)

    def start(self) -> None:
        netns.sysctl(self.ns, {"net.ipv4.ip_forward": "1"})
        self.chain.install()

    def counters(self) -> dict[str, int]:
        return self.chain.counters()

    def stop(self) -> dict[str, int]:
        final = self.counters()
        self.chain.remove()
        return final
