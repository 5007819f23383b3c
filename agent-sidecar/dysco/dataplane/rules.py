"""Our NFQUEUE interception rules in one pod network namespace.

Two hooks, each in a dedicated chain so that removal is exact and never touches rules
that other tools (kube-proxy, CNI plugins, a middlebox's own firewall) wrote:

* ``DYSCO-IN``  from ``mangle PREROUTING``: TCP addressed to a local address
  (core ``Hook.INPUT``).
* ``DYSCO-OUT`` from ``mangle POSTROUTING``: TCP leaving the pod, whether sent by a
  local socket or forwarded by a middlebox (core ``Hook.OUTPUT``).

Only TCP is queued, so the control channel (UDP, port 2016) never reaches the queues.
Loopback traffic is not Dysco's business and is skipped, which also keeps the 64 KiB
``lo`` MTU away from the queues. Packets the agent injects itself carry ``mark`` and
return from the chains at once, so an injected segment is never queued again.

The rules are **fail-closed**: no ``--queue-bypass``. Without a listener the kernel
drops queued packets, and TCP retransmits them once the agent is back. With bypass
(or FAIL_OPEN) a packet that needed rewriting would leave un-rewritten, reach a peer
that does not know that tuple and get the session reset (nfqueue-feasibility.md §5.4);
a short outage is cheaper than a reset.

iptables comes in two variants that both support NFQUEUE. Mixing them in one namespace
runs both rule sets, so we use the variant the host uses (as kube-proxy's wrapper does).
"""

from __future__ import annotations

import enum
import subprocess
from dataclasses import dataclass

from . import netns

CHAIN_IN = "DYSCO-IN"
CHAIN_OUT = "DYSCO-OUT"
DEFAULT_QUEUE_IN = 2016
DEFAULT_QUEUE_OUT = 2017
# One bit of skb->mark; veth scrubs the mark when a packet changes namespace, so it
# cannot clash with marks the node's own rules use.
DEFAULT_MARK = 0x00400000


class Variant(enum.Enum):
    LEGACY = "legacy"
    NFT = "nft"

    def binary(self, tool: str = "iptables") -> str:
        """`tool` is iptables, iptables-save or iptables-restore."""
        head, _, tail = tool.partition("-")
        return f"{head}-{self.value}" + (f"-{tail}" if tail else "")


def _rule_count(variant: Variant, ns: str | None) -> int:
    try:
        out = netns.run(ns, [variant.binary("iptables-save")], check=False).stdout
    except FileNotFoundError:
        return -1
    return sum(1 for line in out.splitlines() if line.startswith("-A "))


def detect_variant(ns: str | None = None) -> Variant:
    """The variant with more rules in namespace `ns` (default: ours, i.e. the node's).

    On a tie (a fresh host) the system's `iptables` alternative decides.
    """
    legacy, nft = _rule_count(Variant.LEGACY, ns), _rule_count(Variant.NFT, ns)
    if legacy != nft:
        return Variant.LEGACY if legacy > nft else Variant.NFT
    version = subprocess.run(
        ["iptables", "--version"], check=True, capture_output=True, text=True
    ).stdout
    return Variant.NFT if "nf_tables" in version else Variant.LEGACY


@dataclass(frozen=True)
class Interception:
    """The interception rules of one namespace (`ns` None: the current one)."""

    ns: str | None
    variant: Variant
    queue_in: int = DEFAULT_QUEUE_IN
    queue_out: int = DEFAULT_QUEUE_OUT
    mark: int = DEFAULT_MARK

    def _jumps(self) -> list[tuple[str, list[str]]]:
        return [
            ("PREROUTING",
             ["-p", "tcp", "!", "-i", "lo", "-m", "addrtype", "--dst-type", "LOCAL",
              "-j", CHAIN_IN]),
            ("POSTROUTING", ["-p", "tcp", "!", "-o", "lo", "-j", CHAIN_OUT]),
        ]

    def _iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return netns.run(self.ns, [self.variant.binary(), "-w", "-t", "mangle", *args],
                         check=check)

    def install(self) -> None:
        """Create or refresh both chains and their jumps; running it twice changes nothing."""
        skip = f"-m mark --mark {self.mark:#x}/{self.mark:#x} -j RETURN"
        script = "\n".join([
            "*mangle",
            f":{CHAIN_IN} - [0:0]",        # declaring a chain with --noflush empties it
            f":{CHAIN_OUT} - [0:0]",
            f"-A {CHAIN_IN} {skip}",
            f"-A {CHAIN_IN} -j NFQUEUE --queue-num {self.queue_in}",
            f"-A {CHAIN_OUT} {skip}",
            f"-A {CHAIN_OUT} -j NFQUEUE --queue-num {self.queue_out}",
            "COMMIT",
            "",
        ])
        netns.run(self.ns, [self.variant.binary("iptables-restore"), "-w", "--noflush"],
                  stdin=script)
        for chain, spec in self._jumps():
            if self._iptables("-C", chain, *spec, check=False).returncode != 0:
                self._iptables("-I", chain, "1", *spec)

    def remove(self) -> None:
        """Delete our jumps and chains, and nothing else; a no-op when absent."""
        for chain, spec in self._jumps():
            while self._iptables("-D", chain, *spec, check=False).returncode == 0:
                pass
        for chain in (CHAIN_IN, CHAIN_OUT):
            if self._iptables("-F", chain, check=False).returncode == 0:
                self._iptables("-X", chain)
        if self.variant is Variant.NFT:
            self._drop_empty_nft_table()

    def _drop_empty_nft_table(self) -> None:
        """iptables-nft creates base chains and the `ip mangle` table on first use and
        never deletes them; drop the ones we may have created if they are empty and
        accept by default, so the namespace looks as before. nft refuses to delete a
        chain that still has rules, so this cannot remove anybody's rules."""
        save = netns.run(self.ns, [self.variant.binary("iptables-save"), "-t", "mangle"],
                         check=False).stdout.splitlines()
        for chain in ("PREROUTING", "POSTROUTING"):
            accepts = any(line.startswith(f":{chain} ACCEPT ") for line in save)
            if accepts and not any(line.startswith(f"-A {chain} ") for line in save):
                netns.run(self.ns, ["nft", "delete", "chain", "ip", "mangle", chain],
                          check=False)
        table = netns.run(self.ns, ["nft", "list", "table", "ip", "mangle"], check=False)
        if table.returncode == 0 and "chain " not in table.stdout:
            netns.run(self.ns, ["nft", "delete", "table", "ip", "mangle"], check=False)

    def listing(self) -> list[str]:
        """Our rules and chains as iptables-save prints them (empty when not installed)."""
        save = netns.run(self.ns, [self.variant.binary("iptables-save"), "-t", "mangle"],
                         check=False).stdout
        return [line for line in save.splitlines()
                if CHAIN_IN in line or CHAIN_OUT in line]

    def installed(self) -> bool:
        return len(self.listing()) == 8
