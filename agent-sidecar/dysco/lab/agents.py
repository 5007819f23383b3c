"""Dysco agents for lab pods: the data-plane runtime with the real core, in a thread.

In a cluster the node agent runs the runtime; in the lab a scenario does, for just the
pods it needs, and sends the core commands an operator or a middlebox would send.
"""

from __future__ import annotations

import collections
import threading
from types import TracebackType
from typing import Any

from dysco.core import Hop, Policy
from dysco.core import commands as cmd
from dysco.dataplane.runtime import PodSpec, Runtime, ip_to_int

from .topology import Lab


class LabAgents:
    """Attach agents to `pods` (short names) on enter; detach them all on exit."""

    def __init__(self, lab: Lab, pods: list[str], backend: str = "raw") -> None:
        self.lab = lab
        self.pods = pods
        self.runtime = Runtime(backend=backend)
        self._thread = threading.Thread(target=self.runtime.run, name="dysco-runtime",
                                        daemon=True)

    def __enter__(self) -> LabAgents:
        try:
            for short in self.pods:
                pod = self.lab.pod(short)
                self.runtime.add_pod(PodSpec(pod.name, pod.ip))
        except BaseException:
            self.runtime.close()
            raise
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.runtime.stop()
        self._thread.join()
        self.runtime.close()

    def ip(self, short: str) -> int:
        return ip_to_int(self.lab.pod(short).ip)

    def command(self, short: str, command: cmd.Command) -> None:
        self.runtime.submit(self.lab.pod(short).name, command)

    def set_chain(self, client: str, server: str, hops: list[str], ports: set[int]) -> None:
        """Sessions from `client` to `server` on `ports` go through `hops` in order."""
        policy = Policy("lab", frozenset({self.ip(server)}),
                        tuple(Hop(h, (self.ip(h),)) for h in hops), frozenset(ports))
        self.command(client, cmd.SetPolicies((policy,)))

    def notifications(self) -> collections.Counter[str]:
        """Notification counts summed over all pods (SessionOpened, ReconfigDone...)."""
        total: collections.Counter[str] = collections.Counter()
        for pod in list(self.runtime.pods.values()):
            total.update(pod.stats.notifications)
        return total

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-pod runtime counters keyed by short pod name."""
        names = {self.lab.pod(s).name: s for s in self.pods}
        return {names[ns]: v for ns, v in self.runtime.stats().items()}
