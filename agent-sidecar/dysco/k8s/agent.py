"""The node agent loop: watch this node's plan, apply it, report status; serve read-only HTTP.

Threads: a watcher (list + watch of ONE DyscoNodePlan, by field selector on its name), the
main loop (the only caller of the data plane), and a small HTTP server (/metrics,
/healthz, /readyz; GET only, nothing that changes sessions).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .interface import DataPlane
from .keys import BadKeys, load_keys
from .netns import NetnsResolver
from .reconcile import Reconciler

log = logging.getLogger("dysco.k8s.agent")

GROUP, VERSION, PLANS = "dysco.io", "v1alpha1", "dysconodeplans"


def _now_ts() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _StatsCollector:
    """Exports the data plane's counts as cached by the main loop (no data plane calls here)."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("dysco_active_sessions", "Live Dysco sessions on this node.",
                              labels=["chain", "revision"])
        for (chain, rev), n in sorted(self.agent.last_sessions.items()):
            g.add_metric([chain, str(rev)], n)
        yield g
        c = CounterMetricFamily("dysco_reconfigurations",
                                "Session reconfigurations on this node, by result.",
                                labels=["chain", "revision", "result"])
        for (chain, rev), (done, failed) in sorted(self.agent.last_reconfigs.items()):
            c.add_metric([chain, str(rev), "success"], done)
            c.add_metric([chain, str(rev), "failed"], failed)
        yield c
        r = CounterMetricFamily("dysco_agent_rejected",
                                "Inputs the data plane refused (SYNs over a limit, "
                                "malformed or unauthenticated input), by reason.",
                                labels=["reason"])
        for reason, n in sorted(self.agent.last_rejections.items()):
            r.add_metric([reason], n)
        yield r
        h = CounterMetricFamily("dysco_agent_hop_failures",
                                "Session ends reset because a hop of their path died, by "
                                "how (detected here, or aborted by the other end).",
                                labels=["how"])
        for how, n in sorted(self.agent.last_hop_failures.items()):
            h.add_metric([how], n)
        yield h
        fast = self.agent.last_fastpath
        g = GaugeMetricFamily("dysco_agent_offloaded_sessions",
                              "Sessions the kernel fast path rewrites now, by where.",
                              labels=["role"])
        for role in ("end_host", "middlebox"):
            g.add_metric([role], fast.get(f"{role}_sessions", 0))
        yield g
        yield GaugeMetricFamily("dysco_agent_fastpath_unavailable_pods",
                                "Attached pods whose fast path could not be set up (their "
                                "sessions stay on NFQUEUE).",
                                value=fast.get("unavailable_pods", 0))
        yield GaugeMetricFamily("dysco_agent_fastpath_refused_sessions",
                                "Sessions of the attached pods whose kernel state was "
                                "refused (they stayed on NFQUEUE).",
                                value=fast.get("refused_sessions", 0))
        g = GaugeMetricFamily("dysco_agent_limit", "Resource limits of each pod's agent.",
                              labels=["name"])
        for name, value in sorted(self.agent.limits.items()):
            g.add_metric([name], value)
        yield g


class NodeAgent:
    def __init__(
        self,
        node: str,
        custom_api: Any,
        dataplane: DataPlane,
        resolver: NetnsResolver,
        *,
        agent_id: str = "",
        status_interval: float = 5.0,
        heartbeat: float = 60.0,
        keys_dir: Path | None = None,
    ) -> None:
        self.node = node
        self.api = custom_api
        self.dataplane = dataplane
        self.reconciler = Reconciler(dataplane, resolver)
        self.agent_id = agent_id or node
        self.status_interval = status_interval
        self.heartbeat = heartbeat
        self.keys_dir = keys_dir
        self._keys: tuple[dict[int, bytes], int] | None = None
        self.keys_error: str | None = None
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._listed = False  # first list done: the plan exists or is known to be absent
        self.synced = False
        self.loop_beat = time.monotonic()
        self.applied_revision: int | None = None
        self.last_sessions: Mapping[tuple[str, int], int] = {}
        self.last_reconfigs: Mapping[tuple[str, int], tuple[int, int]] = {}
        self.last_rejections: Mapping[str, int] = {}
        self.last_hop_failures: Mapping[str, int] = {}
        self.last_fastpath: Mapping[str, int] = {}
        self.limits = dict(dataplane.limits())
        self._last_status: dict[str, Any] | None = None
        self._last_status_time = 0.0

        self.registry = CollectorRegistry()
        self.m_revision = Gauge("dysco_agent_plan_revision", "Plan revision applied last.",
                                registry=self.registry)
        self.m_pods = Gauge("dysco_agent_attached_pods", "Pods attached to the data plane.",
                            registry=self.registry)
        self.m_draining = Gauge("dysco_agent_draining_instances",
                                "Middlebox instances being drained.", registry=self.registry)
        self.m_applies = Counter("dysco_agent_plan_applies_total",
                                 "Plan applications, by result (success, failure).", ["result"],
                                 registry=self.registry)
        self.m_status = Counter("dysco_agent_status_writes_total",
                                "Plan status writes, by result.", ["result"],
                                registry=self.registry)
        self.m_keys = Counter("dysco_agent_key_loads_total",
                              "Control-key (re)loads from the mounted Secret, by result.",
                              ["result"], registry=self.registry)
        self.m_watch = Counter("dysco_agent_watch_restarts_total",
                               "Plan watch (re)starts.", registry=self.registry)
        self.m_reconfig_seconds = Histogram(
            "dysco_reconfiguration_duration_seconds",
            "Time from the start of a session reconfiguration to its completion (left anchor).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.registry.register(_StatsCollector(self))

    # ------------------------------------------------------------------ watcher thread

    def _watch(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        selector = f"metadata.name={self.node}"
        rv = ""
        while not self.stop.is_set():
            self.m_watch.inc()
            try:
                if not rv:
                    lst = self.api.list_cluster_custom_object(
                        GROUP, VERSION, PLANS, field_selector=selector)
                    items = lst.get("items") or []
                    self._set_latest(items[0] if items else None)
                    self._listed = True
                    rv = lst["metadata"]["resourceVersion"]
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for ev in w.stream(  # type: ignore[no-untyped-call]
                        self.api.list_cluster_custom_object, GROUP, VERSION, PLANS,
                                   field_selector=selector, resource_version=rv,
                                   timeout_seconds=60, allow_watch_bookmarks=True):
                    if self.stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        rv = ""  # e.g. 410 Gone: relist
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._set_latest(obj)
                    elif ev["type"] == "DELETED":
                        self._set_latest(None)
            except ApiException as e:
                if e.status == 410:
                    rv = ""
                    continue
                log.warning("plan watch failed: %s", e)
                self.stop.wait(2.0)
            except Exception as e:
                log.warning("plan watch failed: %s", e)
                rv = ""
                self.stop.wait(2.0)

    def _set_latest(self, obj: dict[str, Any] | None) -> None:
        with self._lock:
            self._latest = obj
        self._wake.set()

    # ------------------------------------------------------------------ main loop

    def _refresh_keys(self) -> None:
        if self.keys_dir is None:
            return
        try:
            keys = load_keys(self.keys_dir)
        except (BadKeys, OSError) as e:
            if self.keys_error != str(e):
                log.error("control keys not loaded (previous keys stay in force): %s", e)
                self.m_keys.labels("error").inc()
            self.keys_error = str(e)
            return
        self.keys_error = None
        if keys != self._keys:
            self.dataplane.set_keys(*keys)
            self._keys = keys
            self.m_keys.labels("success").inc()
            log.info("control keys loaded: ids %s, sending with %d", sorted(keys[0]), keys[1])

    def step(self) -> None:
        """One iteration of the main loop (keys, apply if needed, then report)."""
        self.loop_beat = time.monotonic()
        self._refresh_keys()
        with self._lock:
            plan = self._latest
        if not self._listed:
            return
        spec = (plan or {}).get("spec") or {}
        revision = int(spec["revision"]) if plan and "revision" in spec else None
        if not self.synced or revision != self.applied_revision or self.reconciler.failures:
            failures = self.reconciler.apply(spec if plan else None)
            self.m_applies.labels("failure" if failures else "success").inc()
            self.applied_revision = revision
            self.m_revision.set(revision or 0)
            self.synced = True
        self.m_pods.set(len(self.reconciler.applied.pods))
        self.m_draining.set(len(self.reconciler.applied.draining))
        self.last_sessions = dict(self.dataplane.sessions())
        self.last_reconfigs = dict(self.dataplane.reconfigurations())
        self.last_rejections = dict(self.dataplane.rejections())
        self.last_hop_failures = dict(self.dataplane.hop_failures())
        self.last_fastpath = dict(self.dataplane.fastpath())
        for seconds in self.dataplane.take_reconfiguration_durations():
            self.m_reconfig_seconds.observe(seconds)
        if plan is not None and revision is not None:
            self._report(plan, revision)

    def status_body(self, plan: Mapping[str, Any], revision: int) -> dict[str, Any]:
        failures = self.reconciler.failures
        old_conds = {c["type"]: c for c in (plan.get("status") or {}).get("conditions") or ()}
        status = "False" if failures else "True"
        reason = "PodFailures" if failures else "Applied"
        msg = (f"{len(failures)} pod(s) could not be programmed" if failures
               else f"revision {revision} applied to {len(self.reconciler.applied.pods)} pod(s)")
        old = old_conds.get("Applied")
        ltt = old["lastTransitionTime"] if old and old.get("status") == status else _now_ts()
        return {
            "observedRevision": revision,
            "agent": self.agent_id,
            "attachedPods": len(self.reconciler.applied.pods),
            "activeSessions": sum(self.last_sessions.values()),
            "sessions": [{"chain": c, "revision": r, "count": n}
                         for (c, r), n in sorted(self.last_sessions.items())],
            "reconfigurations": [{"chain": c, "revision": r, "done": d, "failed": f}
                                 for (c, r), (d, f) in sorted(self.last_reconfigs.items())],
            "failures": [{"pod": k, "message": v} for k, v in sorted(failures.items())],
            "rejected": dict(sorted(self.last_rejections.items())),
            "hopFailures": dict(sorted(self.last_hop_failures.items())),
            "conditions": [{
                "type": "Applied", "status": status, "reason": reason, "message": msg,
                "observedGeneration": int(plan.get("metadata", {}).get("generation") or 0),
                "lastTransitionTime": ltt,
            }],
        }

    def _report(self, plan: Mapping[str, Any], revision: int) -> None:
        body = self.status_body(plan, revision)
        due = time.monotonic() - self._last_status_time > self.heartbeat
        if body == self._last_status and not due:
            return
        body["lastUpdateTime"] = _now_ts()
        try:
            self.api.patch_cluster_custom_object_status(
                GROUP, VERSION, PLANS, self.node, {"status": body})
        except Exception as e:
            self.m_status.labels("error").inc()
            log.warning("status write failed: %s", e)
            return
        self.m_status.labels("success").inc()
        body.pop("lastUpdateTime")
        self._last_status = body
        self._last_status_time = time.monotonic()

    def shutdown(self) -> None:
        """Make `run` return now (SIGTERM): the next agent waits for us to be gone, and
        our pods' TCP waits for the next agent."""
        self.stop.set()
        self._wake.set()

    def run(self) -> None:
        watcher = threading.Thread(target=self._watch, name="plan-watch", daemon=True)
        watcher.start()
        try:
            while not self.stop.is_set():
                self._wake.wait(self.status_interval)
                self._wake.clear()
                if self.stop.is_set():
                    break
                try:
                    self.step()
                except Exception:
                    log.exception("agent step failed")
        finally:
            self.stop.set()

    # ------------------------------------------------------------------ HTTP

    def healthy(self) -> bool:
        return time.monotonic() - self.loop_beat < max(30.0, 3 * self.status_interval)

    def serve_http(self, host: str, port: int) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(agent.registry),
                               "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    ok = agent.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n")
                elif path == "/readyz":
                    ok = agent.synced and agent.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"plan not applied yet\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="agent-http", daemon=True).start()
        return server
