"""Snapshot and restore of an agent's state, so an agent can restart (or be upgraded)
under live sessions: the driver writes `snapshot()` to node-local storage (tmpfs) after
each batch of events and hands it to `restore()` on start. Versioned JSON: a snapshot
from an unknown version is refused, never half-applied.
"""

from __future__ import annotations

from typing import Any

from . import control as ctl
from .agent import Agent
from .config import AgentConfig
from .errors import RemoteError
from .policy import Hop, Policy
from .state import Lock, Path, Phase, Reconfig, Retry, Session, Side

VERSION = 1


class SnapshotError(RemoteError):
    reason = "bad_snapshot"


def _path(p: Path | None) -> list[Any] | None:
    return None if p is None else [list(p.sub_out), p.snd_off, p.rcv_off]


def _unpath(v: list[Any] | None) -> Path | None:
    return None if v is None else Path(_t4(v[0]), int(v[1]), int(v[2]))


def _t4(v: list[int]) -> tuple[int, int, int, int]:
    a, b, c, d = (int(x) for x in v)
    return (a, b, c, d)


_RC = ("rid", "role", "other", "started", "attempt", "delta", "cutoff_snd", "cutoff_rcv",
       "old_rcvd_max", "old_acked", "old_data_since_ack", "peer_complete", "complete_sent",
       "tries", "deadline")
_SIDE = ("is_left", "lock_rid", "lock_la", "isn_in", "isn_out", "snd_max", "snd_acked",
         "rcv_max", "rcv_acked", "fin_out", "fin_in")
_SESSION = ("sid", "role", "policy", "revision", "tag", "content_l2r", "content_r2l",
            "last_activity", "closing_at", "close_how", "torn", "inserted", "rid",
            "removal_tries")


def snapshot(agent: Agent) -> dict[str, Any]:
    sessions = []
    for s in agent.sessions.values():
        sides = []
        for d in s.sides:
            rc = d.rc
            sides.append({
                **{k: getattr(d, k) for k in _SIDE},
                "local": list(d.local), "path": _path(d.path), "new": _path(d.new),
                "phase": d.phase.value, "lock": d.lock.value,
                "saved": d.saved.encode().hex() if d.saved else None,
                "retry": None if d.retry is None else [
                    d.retry.at, d.retry.right_anchor, list(d.retry.hops), d.retry.attempt],
                "rc": None if rc is None else {
                    **{k: getattr(rc, k) for k in _RC}, "hops": list(rc.hops)},
            })
        sessions.append({
            **{k: getattr(s, k) for k in _SESSION},
            "pending_hops": list(s.pending_hops), "syn_payload": s.syn_payload.hex(),
            "removal": None if s.removal is None else list(s.removal), "sides": sides,
        })
    return {
        "version": VERSION,
        "address": agent.address,
        "counters": dict(agent.counters),
        "nonce": agent.auth.last_nonce if agent.auth else 0,
        "policies": [{
            "name": p.name, "dst": sorted(p.dst), "ports": sorted(p.ports),
            "revision": p.revision,
            "hops": [{"name": h.name, "instances": list(h.instances)} for h in p.hops],
        } for p in agent.policies],
        "ports": [list(t) for t in sorted(agent.ports.used())],
        "tombstones": [[list(k), v] for k, v in agent.tombstones.items()],
        "sessions": sessions,
    }


def restore(config: AgentConfig, data: dict[str, Any], now: float) -> Agent:
    """A new agent carrying on from `data`; its timers are armed again from the state."""
    version = data.get("version") if isinstance(data, dict) else None
    if version != VERSION:
        raise SnapshotError(f"snapshot version {version!r} is not {VERSION}")
    if data.get("address") != config.address:
        raise SnapshotError("snapshot of another agent's address")
    try:
        return _restore(config, data, now)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SnapshotError(f"malformed snapshot: {e}") from None


def _restore(config: AgentConfig, data: dict[str, Any], now: float) -> Agent:
    a = Agent(config)
    a.now = now
    a.counters.update({k: int(v) for k, v in data["counters"].items()})
    if a.auth is not None:
        a.auth.last_nonce = int(data["nonce"])
    a.policies = tuple(
        Policy(p["name"], frozenset(p["dst"]),
               tuple(Hop(h["name"], tuple(h["instances"])) for h in p["hops"]),
               frozenset(p["ports"]), p["revision"])
        for p in data["policies"]
    )
    for t in data["ports"]:
        a.ports.reserve(_t4(t))
    for k, until in data["tombstones"]:
        a.tombstones[_t4(k)] = float(until)
        _arm_tombstone(a, _t4(k), float(until))
    for sd in data["sessions"]:
        s = Session(**{k: sd[k] for k in _SESSION})
        s.pending_hops = tuple(sd["pending_hops"])
        s.syn_payload = bytes.fromhex(sd["syn_payload"])
        s.removal = None if sd["removal"] is None else tuple(sd["removal"])
        for dd in sd["sides"]:
            path = _unpath(dd["path"])
            assert path is not None
            side = Side(s, dd["is_left"], _t4(dd["local"]), path, _unpath(dd["new"]))
            for k in _SIDE[1:]:
                setattr(side, k, dd[k])
            side.phase = Phase(dd["phase"])
            side.lock = Lock(dd["lock"])
            side.saved = ctl.decode(bytes.fromhex(dd["saved"])) if dd["saved"] else None
            r = dd["retry"]
            side.retry = None if r is None else Retry(r[0], r[1], tuple(r[2]), r[3])
            rcd = dd["rc"]
            if rcd is not None:
                side.rc = Reconfig(**{k: rcd[k] for k in _RC if k != "deadline"},
                                   hops=tuple(rcd["hops"]))
                side.rc.deadline = rcd["deadline"]
            s.sides.append(side)
            if side.is_left:
                s.left = side
            else:
                s.right = side
        a.sessions[s.sid] = s
        _index(a, s)
    return a


def _arm_tombstone(a: Agent, key: tuple[int, int, int, int], until: float) -> None:
    a._at(until, lambda t: a._expire_tombstone(key, t))


def _arm_deadline(a: Agent, side: Side, rid: int, when: float) -> None:
    a._at(when, lambda t: a._on_deadline(side, rid, when, t))


def _index(a: Agent, s: Session) -> None:
    """Rebuild the lookup tables and timers of one restored session."""
    for side in s.sides:
        for p in (side.path, side.new):
            if p is not None:
                a.by_in[p.sub_in] = (side, p)
        a.by_out[side.out_key] = side
        rc = side.rc
        if rc is not None:
            a.by_rid[rc.rid] = side
            if rc.deadline is not None:
                _arm_deadline(a, side, rc.rid, rc.deadline)
        if side.retry is not None:
            a._arm_retry(side, side.retry)
    if s.pending_hops and s.left is not None:
        a.pending[s.left.local] = s
        if s.tag is not None:
            a.pending_tag[s.tag] = s
    if not s.inserted and not a._handshake_done(s):
        a._open_half(s, a.now)
    a._watch_idle(s)
    if s.closing_at is not None:
        a._at(s.closing_at, lambda t: a._linger_done(s, t))
    if s.removal is not None and not s.torn:
        a._at(a.now, lambda t: a._removal_tick(s, t))
