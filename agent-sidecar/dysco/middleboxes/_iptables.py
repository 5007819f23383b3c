"""A dedicated iptables chain with counters, for middleboxes built from iptables rules."""

from __future__ import annotations

from dysco.dataplane import netns
from dysco.dataplane.rules import Variant


class CountedChain:
    """Chain `name` in `table`, jumped to from `builtin`; each rule has a counter name."""

    def __init__(self, ns: str, variant: Variant, table: str, builtin: str, name: str,
                 rules: list[tuple[str, list[str]]]) -> None:
        self.ns, self.variant, self.table = ns, variant, table
        self.builtin, self.name, self.rules = builtin, name, rules

    def _ipt(self, *args: str, check: bool = True) -> str:
        return netns.run(self.ns, [self.variant.binary(), "-w", "-t", self.table, *args],
                         check=check).stdout

    def install(self) -> None:
        """(Re)create the chain with its rules and one jump to it (idempotent)."""
        self.remove()
        self._ipt("-N", self.name)
        for label, spec in self.rules:
            self._ipt("-A", self.name, *spec, "-m", "comment", "--comment", label)
        self._ipt("-A", self.builtin, "-j", self.name)

    def remove(self) -> None:
        while netns.run(self.ns, [self.variant.binary(), "-w", "-t", self.table, "-D",
                                  self.builtin, "-j", self.name], check=False).returncode == 0:
            pass
        self._ipt("-F", self.name, check=False)
        self._ipt("-X", self.name, check=False)

    def counters(self) -> dict[str, int]:
        """`<label>_packets` and `<label>_bytes` for every rule."""
        out = self._ipt("-L", self.name, "-v", "-x", "-n")
        values: dict[str, int] = {}
        for line in out.splitlines()[2:]:
            fields = line.split()
            if "/*" in fields:
                label = fields[fields.index("/*") + 1]
                values[f"{label}_packets"] = values.get(f"{label}_packets", 0) + int(fields[0])
                values[f"{label}_bytes"] = values.get(f"{label}_bytes", 0) + int(fields[1])
        return values
