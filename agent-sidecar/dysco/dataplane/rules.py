"""Our NFQUEUE interception rules in one pod network namespace.

Two hooks, each in a dedicated chain so that removal is exact and never touches rules
that other tools (kube-proxy, CNI plugins, a middlebox's own firewall) wrote:

* ``DYSCO-IN``  from ``raw PREROUTING`` (or ``mangle``, see `DEFAULT_INPUT_TABLE`):
  TCP addressed to a local address (core ``Hook.INPUT``).
* ``DYSCO-OUT`` from ``mangle POSTROUTING``: TCP leaving the pod, whether sent by a
  local socket or forwarded by a middlebox (core ``Hook.OUTPUT``).

Only TCP is queued, so the control channel (UDP, port 2016) never reaches the queues.
Loopback traffic is not Dysco's business and is skipped, which also keeps the 64 KiB
``lo`` MTU away from the queues. Packets the agent injects itself carry ``mark`` and
return from the chains at once, so an injected segment is never queued again. TCP with
one of the `exempt` addresses (the node's own: the kubelet's probes, the API server's
pod proxy) is skipped too: no Dysco session has a node address as its end, and while
an agent restarts those packets would otherwise be dropped, the pods would turn NotReady
and the operator would take them out of their chains.

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
# The input hook runs in the raw table, before conntrack (priority -300 < -200), so that
# conntrack, NAT and firewalls in the pod only ever see the session as the application
# sees it; in mangle (-150) conntrack would have keyed its entry on the subsession
# tuple and replies arriving on another subsession would look INVALID.
DEFAULT_INPUT_TABLE = "raw"


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
class _Hook:
    table: str
    builtin: str
    chain: str
    jump: tuple[str, ...]
    queue: int


@dataclass(frozen=True)
class Interception:
    """The interception rules of one namespace (`ns` None: the current one)."""

    ns: str | None
    variant: Variant
    queue_in: int = DEFAULT_QUEUE_IN
    queue_out: int = DEFAULT_QUEUE_OUT
    mark: int = DEFAULT_MARK
    input_table: str = DEFAULT_INPUT_TABLE
    exempt: tuple[str, ...] = ()  # IPv4 addresses whose TCP is never queued

    def _exemptions(self, chain: str) -> list[str]:
        way = "-s" if chain == CHAIN_IN else "-d"
        return [f"-A {chain} {way} {addr}/32 -j RETURN" for addr in self.exempt]

    def _hooks(self) -> list[_Hook]:
        return [
            _Hook(self.input_table, "PREROUTING", CHAIN_IN,
                  ("-p", "tcp", "!", "-i", "lo", "-m", "addrtype", "--dst-type", "LOCAL"),
                  self.queue_in),
            _Hook("mangle", "POSTROUTING", CHAIN_OUT, ("-p", "tcp", "!", "-o", "lo"),
                  self.queue_out),
        ]

    def _iptables(self, table: str, *args: str,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        return netns.run(self.ns, [self.variant.binary(), "-w", "-t", table, *args],
                         check=check)

    def install(self) -> None:
        """Create or refresh both chains and their jumps; running it twice changes nothing."""
        skip = f"-m mark --mark {self.mark:#x}/{self.mark:#x} -j RETURN"
        for hook in self._hooks():
            script = "\n".join([
                f"*{hook.table}",
                f":{hook.chain} - [0:0]",  # declaring a chain with --noflush empties it
                f"-A {hook.chain} {skip}",
                *self._exemptions(hook.chain),
                f"-A {hook.chain} -j NFQUEUE --queue-num {hook.queue}",
                "COMMIT",
                "",
            ])
            netns.run(self.ns, [self.variant.binary("iptables-restore"), "-w", "--noflush"],
                      stdin=script)
            jump = (hook.builtin, *hook.jump, "-j", hook.chain)
            if self._iptables(hook.table, "-C", *jump, check=False).returncode != 0:
                self._iptables(hook.table, "-I", hook.builtin, "1", *jump[1:])

    def remove(self) -> None:
        """Delete our jumps and chains, and nothing else; a no-op when absent."""
        for hook in self._hooks():
            jump = (hook.builtin, *hook.jump, "-j", hook.chain)
            while self._iptables(hook.table, "-D", *jump, check=False).returncode == 0:
                pass
            if self._iptables(hook.table, "-F", hook.chain, check=False).returncode == 0:
                self._iptables(hook.table, "-X", hook.chain)
            if self.variant is Variant.NFT:
                self._drop_empty_nft_table(hook.table)

    def _drop_empty_nft_table(self, table: str) -> None:
        """iptables-nft creates base chains and tables on first use and never deletes
        them; drop the ones we may have created if they are empty and accept by
        default, so the namespace looks as before. nft refuses to delete a chain that
        still has rules, so this cannot remove anybody's rules."""
        save = netns.run(self.ns, [self.variant.binary("iptables-save"), "-t", table],
                         check=False).stdout.splitlines()
        for line in save:
            if line.startswith(":") and line.split()[1] == "ACCEPT":
                chain = line.split()[0][1:]
                if not any(rule.startswith(f"-A {chain} ") for rule in save):
                    netns.run(self.ns, ["nft", "delete", "chain", "ip", table, chain],
                              check=False)
        listing = netns.run(self.ns, ["nft", "list", "table", "ip", table], check=False)
        if listing.returncode == 0 and "chain " not in listing.stdout:
            netns.run(self.ns, ["nft", "delete", "table", "ip", table], check=False)

    def listing(self) -> list[str]:
        """Our rules and chains as iptables-save prints them (empty when not installed)."""
        lines = []
        for table in sorted({hook.table for hook in self._hooks()}):
            save = netns.run(self.ns, [self.variant.binary("iptables-save"), "-t", table],
                             check=False).stdout
            lines += [f"{table}: {line}" for line in save.splitlines()
                      if CHAIN_IN in line or CHAIN_OUT in line]
        return lines

    def installed(self) -> bool:
        return len(self.listing()) == 8 + 2 * len(self.exempt)
