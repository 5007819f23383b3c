"""Example middlebox programs for the lab and for users' own chains.

Each one turns a pod into a middlebox of one kind and reports counters, so a scenario
can prove traffic really went through it:

* `firewall`  a transparent forwarder with a stateful iptables firewall
* `nat`       a NAT that rewrites the destination port (iptables DNAT)
* `proxy`     a TCP-terminating transparent proxy that changes the stream (banners)
* `dpi`       a packet-counting "DPI" box that looks into payloads

`Middlebox` is what they have in common: `start()` in a pod, `counters()` any time,
`stop()` removes everything it added and returns the final counters.
"""

from __future__ import annotations

from typing import Protocol


class Middlebox(Protocol):
    ns: str

    def start(self) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def stop(self) -> dict[str, int]: ...
