"""A NAT middlebox that rewrites the destination port (DNAT), keeping the address.

Connections to `port` leave towards `to_port`, and conntrack restores the port on the
way back. Dysco's agent in this pod sees the rewritten SYN on output and follows the
changed 5-tuple.

Source NAT (SNAT/MASQUERADE) cannot work here: it rewrites in nat POSTROUTING, after
the Dysco output hook (mangle POSTROUTING), and would overwrite the subsession address
the agent just wrote. Destination NAT runs in nat PREROUTING, between the two hooks.
"""

from __future__ import annotations

from dysco.dataplane import netns
from dysco.dataplane.rules import Variant, detect_variant

from ._iptables import CountedChain

CHAIN = "DYSCO-MB-NAT"


class PortNat:
    def __init__(self, ns: str, port: int, to_port: int, variant: Variant | None = None) -> None:
        self.ns = ns
        rules = [("translated", ["-p", "tcp", "--dport", str(port), "-j", "DNAT",
                                 "--to-destination", f":{to_port}"])]
        self.chain = CountedChain(ns, variant or detect_variant(), "nat", "PREROUTING",
                                  CHAIN, rules)

    def start(self) -> None:
        netns.sysctl(self.ns, {"net.ipv4.ip_forward": "1"})
        self.chain.install()

    def counters(self) -> dict[str, int]:
        """Packets that created a translation (nat rules see a connection's first packet)."""
        return self.chain.counters()

    def stop(self) -> dict[str, int]:
        final = self.counters()
        self.chain.remove()
        return final
