"""The kernel fast path of one pod: end-host sessions rewritten by conntrack.

Python handles a session's handshake (the core builds the chain from the SYN); once
the core calls it steady (`core.offload.candidate`) the fast path installs, in one
batch per drained queue:

* a conntrack entry made through ctnetlink: original tuple = the session as the app
  sends it, NAT to the subsession tuple, seqadj = the path's offsets (conntrack.py);
  its mark carries `mark` (the bit our NFQUEUE chains skip on) plus a generation;
* the subsession's inbound tuple in set ``sessions_in``, the session's outbound tuple
  in set ``sessions_out``.

Table ``ip dysco_fastpath`` (created at the first offload, so pods that never end a
session, middleboxes, are left alone) then splits the pod's TCP in two:

* Offloaded sessions: inbound, a set lookup at prerouting -310 sets the skip bit (our
  queue sits in raw -300, before conntrack, so no ct state is known there); outbound,
  ``ct mark`` at postrouting -160 does (before the queue in mangle -150). Conntrack
  matches them to their entries and NAT and seqadj rewrite them.
* All other TCP is ``notrack`` (prerouting and output -310): the queue path works as
  without the fast path, and its packets never meet NAT. Otherwise NAT would give the
  queue path's connections null bindings, whose port clash handling may rewrite a
  packet the core already rewrote, and an entry made for a session's handshake
  would clash with the one installed for it.

The table's empty NAT chains register the NAT hooks that the entries' NAT needs; its
``ct`` expression turns conntrack on in the namespace. While the pod has the table its
TCP early demux is off (`EARLY_DEMUX` says why).

Back to the queues: a session that a reconfiguration anchored here reaches is handed
back at once (set element first, then the entry, so a packet never goes unrewritten),
and offloaded again with its new offsets when the reconfiguration is done. The kernel
reports an entry's close (update event: TIME_WAIT or CLOSE) and its end (destroy event),
matched on tuple and generation: the core forgets the session at the close, the set
elements go with the entry. A SYN that reuses the tuple of a closed session ends it
at once (`reopen`). Whatever cannot be installed (no
nf_conntrack/nf_tables, a netlink error) leaves the session on the queue path, counted
in `FastStats`.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import time
from dataclasses import dataclass

from dysco.core import Agent, synlist
from dysco.core import offload as core_offload
from dysco.core.actions import Action, Hook
from dysco.core.errors import RemoteError
from dysco.core.events import Event, ReconfigDone, SessionClosed

from . import checksum, conntrack, netns, nftset, sockdiag

log = logging.getLogger(__name__)

TABLE = "dysco_fastpath"
SET_IN = "sessions_in"
SET_OUT = "sessions_out"
# Off while the pod has the table. An inbound segment of an offloaded session matches
# its entry in the reply direction: NAT restores the local port at prerouting but the
# peer's (subsession -> session port) only at local-in, and TCP early demux, which runs
# in between, picks the socket by the half-translated tuple. A socket of another
# connection with exactly that tuple (the peer's app connected from the port our
# subsession uses) got the segment (the kernel re-checks a changed source address,
# not a changed port of a reply); the session stalled. Without early demux the socket
# is looked up once the packet is fully translated.
EARLY_DEMUX = "net.ipv4.tcp_early_demux"
_GEN_MASK = 0x3FFFF  # generation bits of the ct mark (below the skip bit)
_ENOENT = 2
_EEXIST = 17
PROBE_AGAIN = 0.6
Tuple4 = tuple[int, int, int, int]


def table_script(mark: int) -> str:
    """The pod's fast-path table. RSTs of offloaded sessions still take the queues:
    an entry installed mid-stream ignores a RST outside the window it never learnt, so
    only the core can rewrite it and end the session. It replaces a table left by an
    agent that died without `close` (nft would append the rules twice and keep its
    elements); one `nft -f` is one transaction."""
    key = "ip saddr . tcp sport . ip daddr . tcp dport"
    live = "tcp flags & rst == 0"
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  set {SET_IN} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; size 1048576; }}
  set {SET_OUT} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; size 1048576; }}
  chain skip_in {{ type filter hook prerouting priority -310;
    ip protocol tcp {live} {key} @{SET_IN} meta mark set meta mark | {mark:#x} return
    ip protocol tcp notrack; }}
  chain track_out {{ type filter hook output priority -310;
    ip protocol tcp {live} {key} @{SET_OUT} return
    ip protocol tcp notrack; }}
  chain skip_out {{ type filter hook postrouting priority -160;
    ct mark & {mark:#x} == {mark:#x} meta mark set meta mark | {mark:#x}; }}
  chain nat_pre {{ type nat hook prerouting priority -100; }}
  chain nat_in {{ type nat hook input priority 100; }}
  chain nat_out {{ type nat hook output priority -100; }}
  chain nat_post {{ type nat hook postrouting priority 100; }}
}}
"""


@dataclass
class FastStats:
    offloaded: int = 0      # sessions handed to the kernel (re-offloads included)
    returned: int = 0       # handed back to the queues (reconfiguration)
    ended: int = 0          # ended in the kernel (TIME_WAIT, CLOSE or destroyed)
    failed: int = 0         # install refused (netlink error): stayed on the queue path
    unavailable: int = 0    # the table could not be created: the pod has no fast path
    events_lost: int = 0    # destroy-event socket overruns
    reopened: int = 0       # ended because a new connection reused the tuple (SYN)
    install_s: float = 0.0  # wall time spent installing (netlink round trips included)


@dataclass(frozen=True, slots=True)
class _Installed:
    orig: Tuple4
    inbound: Tuple4
    mark: int


class FastPath:
    """Fast-path state of one pod; driven by the runtime's loop thread only."""

    def __init__(self, ns: str, agent: Agent, mark: int) -> None:
        self.ns = ns
        self.agent = agent
        self.mark = mark
        self.stats = FastStats()
        self.installed: dict[int, _Installed] = {}     # by core session id
        self.by_orig: dict[Tuple4, int] = {}
        self._candidates: set[Tuple4] = set()
        self._refused: set[int] = set()
        # handed back for a reconfiguration: sid -> when to probe (again)
        self._stale: dict[int, float] = {}
        # tuples of ended sessions a new connection reuses: entries to delete after
        # the verdicts (the new SYN may have left one with a null binding)
        self._purge: list[Tuple4] = []
        self.probes: list[bytes] = []  # for the runtime to deliver locally
        # closed in the kernel: core session ended, entry left to expire
        self._closed: set[int] = set()
        # handed back to the dead-hop watch: on the queues until an ack comes
        self._watched: set[int] = set()
        self._next_watch = 0.0
        self._gen = 0
        self._ready = False
        self._broken = False
        # set when the table was just created: the runtime verdicts what its queues
        # hold before the first entry goes in (see `_offload`)
        self.drain_queues = False
        self.ct = conntrack.Conntrack(ns)
        try:
            self.events = conntrack.Conntrack(ns, events=True)
        except OSError:
            self.ct.close()
            raise
        self._set: nftset.SetElements | None = None
        self._early_demux: str | None = None  # the pod's setting before we turned it off

    def fileno(self) -> int:
        """The destroy-event socket, for the runtime's selector."""
        return self.events.fileno()

    # --- the runtime's hooks --------------------------------------------------------

    def saw(self, hook: Hook, before: bytes, after: bytes | None) -> None:
        """A packet went through the core: its session may have become steady."""
        if self._broken:
            return
        data = before if hook is Hook.OUTPUT else after
        if data is None or len(data) < 24 or data[9] != 6:
            return
        ihl = (data[0] & 0x0F) * 4
        t = (int.from_bytes(data[12:16], "big"), int.from_bytes(data[16:20], "big"),
             int.from_bytes(data[ihl:ihl + 2], "big"),
             int.from_bytes(data[ihl + 2:ihl + 4], "big"))
        self._candidates.add(t if hook is Hook.OUTPUT else (t[1], t[0], t[3], t[2]))

    def reopen(self, hook: Hook, data: bytes, now: float) -> list[Action]:
        """Before the core sees a SYN: if it opens a new connection on the tuple of an
        installed session, the kernel carried the old one to its end unseen (TIME_WAIT:
        the client's socket lingers 60 s, the entry 120 s). The old entry and core
        session would capture the new connection (old NAT ports and offsets: PAWS
        drops, resets, segments for another socket), so end them first. An entry still
        ESTABLISHED stays: a forged SYN list cannot end a live session."""
        if not self.installed or len(data) < 40 or data[9] != 6:
            return []
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 20 or data[ihl + 13] & 0x12 != 0x02:
            return []
        if hook is Hook.OUTPUT:
            orig = (int.from_bytes(data[12:16], "big"), int.from_bytes(data[16:20], "big"),
                    int.from_bytes(data[ihl:ihl + 2], "big"),
                    int.from_bytes(data[ihl + 2:ihl + 4], "big"))
        else:
            payload = bytes(data[ihl + (data[ihl + 12] >> 4) * 4:])
            if not synlist.looks_like_synlist(payload):
                return []
            try:
                orig = _rev(synlist.decode(payload).session)
            except RemoteError:
                return []  # the core reports it
        sid = self.by_orig.get(orig)
        if sid is None:
            return []
        closed = sid in self._closed
        if not closed and self.ct.tcp_state(orig) == conntrack.ESTABLISHED:
            return []
        self._remove([sid], delete_entries=True)
        self._purge.append(orig)
        self.stats.reopened += 1
        if closed:
            return []
        self.stats.ended += 1
        return core_offload.ended(self.agent, sid, "kernel", now)

    def notice(self, event: Event) -> None:
        """A core notification: a finished reconfiguration may offload again."""
        if isinstance(event, ReconfigDone):
            t = event.session
            self._candidates.update((t, (t[1], t[0], t[3], t[2])))
        elif isinstance(event, SessionClosed):
            sid = next((self.by_orig[k] for k in (event.session, _rev(event.session))
                        if k in self.by_orig), None)
            if sid is not None and sid not in self._closed:
                self._remove([sid], delete_entries=True)

    def settle(self, now: float) -> None:
        """After a batch of inputs: hand back what a reconfiguration reached, then
        offload what became steady."""
        if self._purge:
            purge, self._purge = self._purge, []
            self.ct.transact([functools.partial(conntrack.delete_message, t) for t in purge])
        back = core_offload.reconfiguring(self.agent)
        if back:
            self._remove(back, delete_entries=True)
            for sid in back:
                core_offload.set_offloaded(self.agent, sid, False, now)
            self.stats.returned += len(back)
            self._stale.update(dict.fromkeys(back, now))
        for sid, when in list(self._stale.items()):
            side = self.agent.sessions[sid].sides[0] if sid in self.agent.sessions else None
            if side is None or (side.rc is None and side.retry is None):
                # done (or gone): nothing left to learn. A cancelled attempt waiting to
                # be retried stays: the retry must probe too, the session being on the
                # queues already (not handed back again)
                del self._stale[sid]
            elif when <= now and core_offload.probe_due(self.agent, sid):
                fields = core_offload.probe(self.agent, sid)
                if fields is not None:
                    self.probes.append(segment(*fields))
                # again while the reconfiguration lasts: an answer may be lost, and the
                # socket answers out-of-window segments at most every 0.5 s
                self._stale[sid] = now + PROBE_AGAIN
        if self._candidates:
            keys, self._candidates = self._candidates, set()
            self._offload(keys, now)

    def ended(self, now: float) -> list[Action]:
        """Drain conntrack events. A session whose entry reached TIME_WAIT or CLOSE (both
        FINs, or a RST) ends in the core then, as it would on the queue path after its
        FINs (a detached pod leaves once its sessions ended); its entry and set
        elements stay until the kernel destroys the entry, so retransmitted FINs and
        acks still meet the rewrite."""
        events, lost = self.events.events()
        self.stats.events_lost += lost
        done: list[int] = []
        gone: list[int] = []
        for ev in events:
            sid = self.by_orig.get(ev.orig)
            if sid is None or self.installed[sid].mark != ev.mark:
                continue
            if ev.destroyed:
                gone.append(sid)
            if sid not in self._closed and (
                    ev.destroyed or ev.state in (conntrack.TIME_WAIT, conntrack.CLOSE)):
                self._closed.add(sid)
                done.append(sid)
        self._remove(gone, delete_entries=False)
        self.stats.ended += len(done)
        actions: list[Action] = []
        for sid in done:
            actions += core_offload.ended(self.agent, sid, "kernel", now)
        return actions

    def watch(self, now: float) -> list[Action]:
        """The dead-hop watch (core/failure.py) for offloaded sessions, every third of
        `hop_timeout`: the core sees none of their acks, their sockets show them. A
        session whose socket has had unacked data and no ack for a third of the
        timeout goes back to the queues and to the core's watch, which resets it at
        `hop_timeout` unless an ack comes (then it is offloaded again)."""
        timeout = self.agent.config.hop_timeout
        if timeout <= 0 or now < self._next_watch:
            return []
        self._next_watch = now + timeout / 3
        live = [sid for sid in self.installed if sid not in self._closed]
        if not live:
            return []
        try:
            waiting = sockdiag.unacked_since(self.ns)
        except OSError as exc:
            log.warning("%s: sockets not readable for the dead-hop watch: %s", self.ns, exc)
            return []
        stalled = [(sid, waiting[self.installed[sid].orig]) for sid in live
                   if waiting.get(self.installed[sid].orig, 0.0) >= timeout / 3]
        if not stalled:
            return []
        self._remove([sid for sid, _ in stalled], delete_entries=True)
        self.stats.returned += len(stalled)
        actions: list[Action] = []
        for sid, idle in stalled:
            self._watched.add(sid)
            actions += core_offload.stalled(self.agent, sid, now - idle, now)
        return actions

    def close(self, now: float) -> None:
        """Hand every session back and remove the table (pod detached or suspended)."""
        sids = list(self.installed)
        self._remove(sids, delete_entries=True)
        for sid in sids:
            core_offload.set_offloaded(self.agent, sid, False, now)
        if self._ready and netns.exists(self.ns):
            netns.run(self.ns, ["nft", "delete", "table", "ip", TABLE], check=False)
        if self._early_demux is not None and netns.exists(self.ns):
            try:
                netns.sysctl(self.ns, {EARLY_DEMUX: self._early_demux})
            except OSError as exc:
                log.warning("%s: %s not restored: %s", self.ns, EARLY_DEMUX, exc)
        if self._set is not None:
            self._set.close()
        self.ct.close()
        self.events.close()

    # --- kernel state ---------------------------------------------------------------

    def _setup(self) -> None:
        try:
            before = netns.read_sysctl(self.ns, EARLY_DEMUX)
            netns.sysctl(self.ns, {EARLY_DEMUX: "0"})  # read-only /proc/sys: no fast path
            self._early_demux = before
            netns.run(self.ns, ["nft", "-f", "-"], stdin=table_script(self.mark))
            self._set = nftset.SetElements(self.ns, TABLE)
            self._ready = True
        except (OSError, subprocess.CalledProcessError) as exc:
            log.warning("%s: no fast path (%s); sessions stay on NFQUEUE", self.ns, exc)
            self._broken = True
            self.stats.unavailable += 1

    def _offload(self, keys: set[Tuple4], now: float) -> None:
        self._watched = {sid for sid in self._watched
                         if core_offload.stalling(self.agent, sid)}
        offers = [o for o in (core_offload.candidate(self.agent, k) for k in keys)
                  if o is not None and o.sid not in self._refused
                  and o.sid not in self._watched]
        if not offers or self._broken:
            return
        if not self._ready:
            # The table turns conntrack on in the pod. Packets queued before it existed
            # were not made untracked: after their verdicts conntrack would give them
            # entries, and one made after an installed entry clashes with it, so NAT
            # moves the packet to another port (a segment for another socket, a reset).
            # The runtime verdicts what its queues hold first (`drain_queues`).
            self._setup()
            if self._ready:
                self._candidates.update(keys)
                self.drain_queues = True
            return
        assert self._set is not None
        t0 = time.perf_counter()
        entries = []
        for o in offers:
            self._gen = (self._gen + 1) & _GEN_MASK
            entries.append(conntrack.Entry(
                o.local_out, o.sub_out, o.snd_off, o.rcv_off, self.mark | self._gen,
                int(self.agent.config.idle_timeout)))
        errs = self.ct.transact([functools.partial(conntrack.new_message, e) for e in entries])
        # An entry conntrack made for the session's own tuples (a packet of it queued
        # before the table existed, tracked after its verdict) clashes: it goes, and
        # the install is tried once more.
        clash = [i for i, err in enumerate(errs) if err == _EEXIST]
        if clash:
            self.ct.transact([functools.partial(conntrack.delete_message, t)
                              for i in clash for t in (entries[i].orig, _rev(entries[i].orig))])
            again = self.ct.transact([functools.partial(conntrack.new_message, entries[i])
                                      for i in clash])
            for i, err in zip(clash, again, strict=True):
                errs[i] = err
        # NAT keeps tuples unique: where the wanted ports clash with another entry's
        # (an app's ephemeral port equal to a subsession port), the kernel picks other
        # ports instead of failing. Such an entry would rewrite wrongly: look each up by
        # the reply tuple we asked for, and keep the sessions not found on the queues.
        found = self.ct.transact([functools.partial(conntrack.get_message, _rev(e.nat_out))
                                  for e, err in zip(entries, errs, strict=True) if not err])
        clashed = []
        it = iter(found)
        errs = [err or next(it) for err in errs]
        done = []
        for o, e, err in zip(offers, entries, errs, strict=True):
            if err == _ENOENT:
                clashed.append(functools.partial(conntrack.delete_message, e.orig))
            if err:
                log.warning("%s: conntrack entry for session %d refused (errno %d)",
                            self.ns, o.sid, err)
                self._refused.add(o.sid)
                self.stats.failed += 1
            else:
                done.append((o, e))
        if clashed:
            self.ct.transact(clashed)
        failed = dict(self._set.change(True, SET_IN, [_rev(o.sub_out) for o, _ in done]))
        failed |= dict(self._set.change(True, SET_OUT, [o.local_out for o, _ in done]))
        dropped = []
        for o, e in done:
            inbound = _rev(o.sub_out)
            if inbound in failed or o.local_out in failed:
                self._refused.add(o.sid)
                self.stats.failed += 1
                dropped.append(e.orig)
                continue
            self.installed[o.sid] = _Installed(e.orig, inbound, e.mark)
            self.by_orig[e.orig] = o.sid
            core_offload.set_offloaded(self.agent, o.sid, True, now)
            self.stats.offloaded += 1
        if dropped:
            self.ct.transact([functools.partial(conntrack.delete_message, t) for t in dropped])
            self._set.change(False, SET_IN, [_rev(o.sub_out) for o, e in done
                                             if e.orig in dropped])
            self._set.change(False, SET_OUT, dropped)
        self.stats.install_s += time.perf_counter() - t0

    def _remove(self, sids: list[int], delete_entries: bool) -> None:
        """Forget kernel state: set elements first (the packets queue again, untracked),
        then the entries."""
        self._closed.difference_update(sids)
        gone = [self.installed.pop(sid) for sid in sids if sid in self.installed]
        for inst in gone:
            del self.by_orig[inst.orig]
        if not gone:
            return
        if self._set is not None:
            for name, keys in ((SET_IN, [i.inbound for i in gone]),
                               (SET_OUT, [i.orig for i in gone])):
                for t, err in self._set.change(False, name, keys):
                    if err != _ENOENT:
                        log.warning("%s: %s element %s not removed (errno %d)",
                                    self.ns, name, t, err)
        if delete_entries:
            errs = self.ct.transact(
                [functools.partial(conntrack.delete_message, inst.orig) for inst in gone])
            for inst, err in zip(gone, errs, strict=True):
                if err not in (0, _ENOENT):
                    log.warning("%s: entry %s not deleted (errno %d)", self.ns, inst.orig, err)


def segment(t: Tuple4, seqno: int, ack: int) -> bytes:
    """A segment `t` = (src, dst, sport, dport) with seq, ack and one byte of data."""
    src, dst, sport, dport = t
    ip = bytes([0x45, 0, 0, 41, 0, 0, 0x40, 0, 64, 6, 0, 0]) + src.to_bytes(4, "big") \
        + dst.to_bytes(4, "big")
    tcp = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + seqno.to_bytes(4, "big")
           + ack.to_bytes(4, "big") + bytes([0x50, 0x10]) + (1024).to_bytes(2, "big")
           + bytes(4) + b"\0")
    return checksum.with_tcp_checksum(ip + tcp)


def _rev(t: Tuple4) -> Tuple4:
    return (t[1], t[0], t[3], t[2])
