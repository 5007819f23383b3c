"""The kernel fast path of a middlebox pod: steady sessions rewritten by nft maps.

Python handles a session's setup at a middlebox (the SYN and SYN-ACK pass the core,
which builds the chain and follows a NAT app's tuple by its tag). Once the core calls
the session steady (`core.offload.mb_candidate`: both subsessions up, handshake done,
no sequence offset, no reconfiguration anchored here) the fast path adds four map
elements in one batch per drained queue (nftmaps.py): both subsessions' inbound tuples
-> the session tuples the app receives, the tuples the app emits -> both subsessions.
From then on the kernel forwards the session's packets; the app (iptables, conntrack,
a DPI sniffer) sees them as on the queue path.

SYN, FIN and RST are never rewritten by the maps: they go to the queues, so the core
sees setup and teardown. After each input batch the fast path hands back (elements
removed: the packets queue again) the sessions that need the core per packet: a FIN
or RST seen (the core must see the acks that close the session), a reconfiguration
anchored here, this middlebox being spliced out (ReplaceSelf), teardown of an old
path, the session's end. A middlebox that a reconfiguration merely passes through
keeps forwarding in the kernel. Whatever the kernel refuses (no nf_tables, an element)
leaves the session on the queue path, counted in `MbStats`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from dysco.core import Agent
from dysco.core import offload as core_offload
from dysco.core.actions import Hook
from dysco.core.events import Event, ReconfigDone, SessionClosed

from . import fastpath, nftmaps

log = logging.getLogger(__name__)

Tuple4 = tuple[int, int, int, int]


@dataclass
class MbStats:
    offloaded: int = 0      # sessions handed to the kernel (re-offloads included)
    returned: int = 0       # handed back to the queues (FIN/RST, reconfiguration, end)
    failed: int = 0         # elements refused: the session stayed on the queue path
    unavailable: int = 0    # the table could not be created: the pod has no fast path
    install_s: float = 0.0  # wall time spent adding elements (netlink included)


def _rev(t: Tuple4) -> Tuple4:
    return (t[1], t[0], t[3], t[2])


def _app_tuples(o: core_offload.MbOffload) -> list[Tuple4]:
    """The tuples under which the app (and the core's notifications) see the session."""
    return [o.inbound[0][1], o.inbound[1][1], o.outbound[0][0], o.outbound[1][0]]


class MbFastPath:
    """Middlebox fast-path state of one pod; driven by the runtime's loop thread only."""

    def __init__(self, ns: str, agent: Agent, mark: int) -> None:
        self.ns = ns
        self.agent = agent
        self.mark = mark
        self.stats = MbStats()
        self.installed: dict[int, core_offload.MbOffload] = {}  # by core session id
        self._seen: set[Tuple4] = set()   # tuples of packets that went through the core
        # the tuples the app sees (both sides, both directions) -> installed session
        self._by_tuple: dict[Tuple4, int] = {}
        self._refused: set[int] = set()
        self._table: nftmaps.MapTable | None = None
        self._broken = False
        # handed back for a reconfiguration anchored here: sid -> when to probe (again)
        self._stale: dict[int, float] = {}
        self.probes: list[bytes] = []  # for the runtime to send to the network

    # --- the runtime's hooks --------------------------------------------------------

    def saw(self, hook: Hook, before: bytes, after: bytes | None) -> None:
        """A packet went through the core: its session may have become steady, or (a
        FIN, an RST) stopped being so."""
        data = before if hook is Hook.OUTPUT else after
        if data is None or len(data) < 24 or data[9] != 6:
            return
        ihl = (data[0] & 0x0F) * 4
        self._seen.add((int.from_bytes(data[12:16], "big"), int.from_bytes(data[16:20], "big"),
                        int.from_bytes(data[ihl:ihl + 2], "big"),
                        int.from_bytes(data[ihl + 2:ihl + 4], "big")))

    def notice(self, event: Event) -> None:
        """A finished reconfiguration may offload again; a closed session goes."""
        if isinstance(event, ReconfigDone | SessionClosed):
            self._seen.add(event.session)

    def settle(self, now: float, full: bool) -> None:
        """After a batch of inputs: hand back what stopped being steady, then offload
        what became steady. `full` (after control messages and commands, which may
        tear a session down or start its removal) checks every offloaded session;
        otherwise those whose packets were seen and those anchoring a reconfiguration."""
        if not self.installed and not self._seen and not self._stale:
            return
        seen, self._seen = self._seen, set()
        check = {self._by_tuple[t] for t in seen if t in self._by_tuple}
        check.update(sid for sid in core_offload.anchored(self.agent) if sid in self.installed)
        if full:
            check.update(self.installed)
            self._refused.intersection_update(self.agent.sessions)
        back = core_offload.mb_handback(self.agent, check) if check else []
        if back:
            self._remove(back, now)
            anchored = set(core_offload.anchored(self.agent))
            self._stale.update((sid, now) for sid in back if sid in anchored)
        self._probe(now)
        if not self._broken:
            offers = [o for o in (core_offload.mb_candidate(self.agent, t) for t in seen)
                      if o is not None and o.sid not in self._refused]
            if offers:
                self._offload(offers, now)

    def _probe(self, now: float) -> None:
        """While a reconfiguration anchored here lasts, have both ends' sockets tell
        their next sequence numbers: the core's view of the streams is stale after the
        stretch in the kernel, and an idle or paced session may bring no packet before
        the cutoffs are taken (core.offload.mb_probes)."""
        if not self._stale:
            return
        anchored = set(core_offload.anchored(self.agent))
        for sid, when in list(self._stale.items()):
            if sid not in anchored:
                del self._stale[sid]  # done, failed or gone: nothing left to learn
            elif when <= now:
                self.probes += [fastpath.segment(*fields)
                                for fields in core_offload.mb_probes(self.agent, sid)]
                # again while it lasts: an answer may be lost, and sockets answer such
                # segments at most every 0.5 s
                self._stale[sid] = now + fastpath.PROBE_AGAIN

    def close(self, now: float) -> None:
        """Hand every session back and remove the table (pod detached or suspended)."""
        self._remove(list(self.installed), now, count=False)
        if self._table is not None:
            self._table.delete()
            self._table.close()
            self._table = None

    # --- kernel state ---------------------------------------------------------------

    def _setup(self) -> bool:
        try:
            self._table = nftmaps.MapTable(self.ns, self.mark)
            err = self._table.create()
        except OSError as exc:
            err = exc.errno or -1
        if err:
            log.warning("%s: no middlebox fast path (errno %d); sessions stay on NFQUEUE",
                        self.ns, err)
            if self._table is not None:
                self._table.close()
                self._table = None
            self._broken = True
            self.stats.unavailable += 1
            return False
        return True

    def _offload(self, offers: list[core_offload.MbOffload], now: float) -> None:
        if self._table is None and not self._setup():
            return
        assert self._table is not None
        t0 = time.perf_counter()
        unique = list({o.sid: o for o in offers}.values())
        items = [(name, k, v) for o in unique
                 for name, pairs in ((nftmaps.MAP_IN, o.inbound), (nftmaps.MAP_OUT, o.outbound))
                 for k, v in pairs]
        failed = {(m, k) for m, k, _ in self._table.change(True, items)}
        undo = []
        for o in unique:
            mine = [(nftmaps.MAP_IN, k) for k, _ in o.inbound] + \
                   [(nftmaps.MAP_OUT, k) for k, _ in o.outbound]
            if any(m in failed for m in mine):
                log.warning("%s: map elements for session %d refused", self.ns, o.sid)
                self._refused.add(o.sid)
                self.stats.failed += 1
                undo += [(m, k, k) for m, k in mine if (m, k) not in failed]
                continue
            self.installed[o.sid] = o
            for t in _app_tuples(o):
                self._by_tuple[t] = o.sid
            core_offload.set_offloaded(self.agent, o.sid, True, now)
            self.stats.offloaded += 1
        if undo:
            self._table.change(False, undo)
        self.stats.install_s += time.perf_counter() - t0

    def _remove(self, sids: list[int], now: float, count: bool = True) -> None:
        """Back to the queues: inbound elements first, then outbound ones, so a packet
        rewritten on its way in finds its outbound rewrite (forwarding runs in one
        softirq, far shorter than a netlink round trip)."""
        gone = [self.installed.pop(sid) for sid in sids if sid in self.installed]
        if not gone:
            return
        for o in gone:
            for t in _app_tuples(o):
                self._by_tuple.pop(t, None)
            core_offload.set_offloaded(self.agent, o.sid, False, now)
        if count:
            self.stats.returned += len(gone)
        assert self._table is not None
        for name, attr in ((nftmaps.MAP_IN, "inbound"), (nftmaps.MAP_OUT, "outbound")):
            items = [(name, k, k) for o in gone for k, _ in getattr(o, attr)]
            for m, k, err in self._table.change(False, items):
                log.warning("%s: %s element %s not removed (errno %d)", self.ns, m, k, err)
