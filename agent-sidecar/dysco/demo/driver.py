"""``dysco demo``: live middlebox changes under long-running, verified TCP sessions.

Deploys (namespace ``--namespace``) a server behind a Service, a client, a firewall-like
forwarder Deployment ``fw`` (2 replicas) and a stream-changing terminating proxy ``proxy``
(it puts a banner in front of each direction), applies the ServiceChain ``demo`` (client ->
proxy -> server), starts long sessions in both directions and then, while they run,
performs the steps below. Each step also starts its own batch of sessions just before its
change. After each step the batch is finished and checked at both ends (SHA-256 of each
direction); the long batch is checked at the end.

Steps: insert (``fw`` hop put in front of the proxy with a patch), rollout (new version of
``fw``, pod by pod), drain (a ``fw`` pod deleted by hand, then ``fw`` scaled 2 -> 1),
remove (``proxy`` hop removed from live sessions), new-sessions-only (updatePolicy
newSessionsOnly and ``proxy`` added again: old sessions keep their revision and path, new
ones go through the proxy). Without the insert step the chain starts as fw -> proxy.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dysco.middleboxes.proxy import BANNER_LR, BANNER_RL

from .cluster import GROUP, HTTP, PORT, VERSION, Kube, Verdict, now, verify, wait_for

CHAIN = "demo"
STEPS = ("insert", "rollout", "drain", "remove", "new-sessions-only")


@dataclass
class StepResult:
    """One row of the final table."""

    step: str
    ok: bool = False
    action: str = ""
    seconds: float = 0.0
    sessions: int = 0         # sessions of the step's batch and the long batch alive meanwhile
    reconfigured: int = 0     # reconfigurations done (agents' counters) during the step
    failed_reconfigs: int = 0
    resets: int = 0
    bytes_verified: int = 0
    revisions: str = ""       # sessionsByRevision before -> after
    problems: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, kube: Kube, image: str, pull_policy: str, sessions: int, rate: int,
                 step_timeout: float, json_out: bool) -> None:
        self.k = kube
        self.image, self.pull = image, pull_policy
        self.sessions, self.rate = sessions, rate
        self.step_timeout = step_timeout
        self.json_out = json_out
        self.t0 = now()
        self.version = 1

    def say(self, msg: str) -> None:
        """A progress line (stderr with --json, so stdout stays one JSON document)."""
        print(f"[demo {now() - self.t0:6.1f}s] {msg}",
              file=sys.stderr if self.json_out else sys.stdout, flush=True)

    # ------------------------------------------------------------------ objects

    def _pod(self, role: str, args: list[str], privileged: bool = False,
             grace: int = 30, env: dict[str, str] | None = None) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": role, "image": self.image, "imagePullPolicy": self.pull,
            "command": ["dysco", "demo-app", *args],
            "ports": [{"name": "http", "containerPort": HTTP}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                               "periodSeconds": 2},
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        }
        if privileged:  # ip_forward, iptables and TPROXY in its own network namespace
            c["securityContext"] = {"privileged": True}
        return {"terminationGracePeriodSeconds": grace, "containers": [c]}

    def _deployment(self, name: str, replicas: int, spec: dict[str, Any],
                    version: int = 1, annotations: dict[str, str] | None = None
                    ) -> dict[str, Any]:
        labels = {"app": name, "app.kubernetes.io/part-of": "dysco-demo"}
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": labels | {"version": f"v{version}"},
                                               "annotations": annotations or {}},
                                  "spec": spec}},
        }

    def fw(self, replicas: int, version: int) -> dict[str, Any]:
        return self._deployment("fw", replicas, self._pod(
            "fw", ["middlebox", "--kind", "firewall", "--drain-seconds", "12"],
            privileged=True, env={"DEMO_VERSION": f"v{version}"}), version)

    def setup(self, hops: tuple[str, ...] = ("proxy",)) -> None:
        """Deploy everything, apply the chain with `hops` and wait until it is programmed."""
        k = self.k
        self.say(f"namespace {k.ns}: server + Service, client, fw (2 replicas), proxy")
        try:
            k.core.read_namespace(k.ns)
        except Exception:
            k.core.create_namespace({"metadata": {"name": k.ns}})
        wait_for(lambda: k.core.read_namespaced_service_account("default", k.ns).secrets,
                 60, "the namespace's default ServiceAccount")
        try:
            k.core.read_namespaced_service("server", k.ns)
        except Exception:
            k.core.create_namespaced_service(k.ns, {
                "metadata": {"name": "server"},
                "spec": {"selector": {"app": "server"},
                         "ports": [{"name": "data", "port": PORT, "targetPort": PORT}]}})
        k.apply_deployment(self._deployment("server", 1, self._pod(
            "server", ["server", "--rate", str(self.rate)])))
        wait_for(functools.partial(k.deployment_done, "server"), 300, "Deployment server", 2)
        # The client connects to the Service's endpoint, not to its ClusterIP: the chain's
        # last hop sends on the subsession's ports, which kube-proxy's DNAT (keyed on the
        # Service port) does not match (docs/demo.md, "Known limits").
        server_ip = k.ready_pods("app=server")[0].status.pod_ip
        k.apply_deployment(self._deployment("client", 1, self._pod(
            "client", ["client", "--target", server_ip])))
        k.apply_deployment(self.fw(2, self.version))
        # the proxy puts a banner in front of each direction: its agent must know the
        # lengths to splice the proxy out of a session (the operator reads the annotation)
        k.apply_deployment(self._deployment("proxy", 1, self._pod(
            "proxy", ["middlebox", "--kind", "proxy", "--drain-seconds", "12"],
            privileged=True), annotations={
                "dysco.io/content-delta": f"{len(BANNER_LR)},{len(BANNER_RL)}"}))
        for name in ("server", "client", "fw", "proxy"):
            wait_for(functools.partial(k.deployment_done, name), 300, f"Deployment {name}", 2)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceChain",
                "metadata": {"name": CHAIN},
                "spec": {"source": {"selector": {"matchLabels": {"app": "client"}}},
                         "destination": {"service": {"name": "server"},
                                         "ports": [{"port": PORT}]},
                         "hops": [self.hop(h) for h in hops], "updatePolicy": "live",
                         "drainTimeoutSeconds": 20}}
        try:
            k.custom.create_namespaced_custom_object(GROUP, VERSION, k.ns, "servicechains", body)
        except Exception:
            k.custom.replace_namespaced_custom_object(
                GROUP, VERSION, k.ns, "servicechains", CHAIN,
                body | {"metadata": {"name": CHAIN, "resourceVersion": k.chain(CHAIN)[
                    "metadata"]["resourceVersion"]}})
        self.wait_applied()
        self.say(f"ServiceChain {CHAIN} Ready: {k.chain(CHAIN)['status'].get('hopsSummary')}")

    @staticmethod
    def hop(name: str) -> dict[str, Any]:
        kind = "proxy" if name == "proxy" else "transparent"
        return {"name": name, "selector": {"matchLabels": {"app": name}}, "kind": kind}

    # ------------------------------------------------------------------ observations

    def status(self) -> dict[str, Any]:
        return self.k.chain(CHAIN).get("status") or {}

    def wait_applied(self) -> dict[str, Any]:
        """The chain is Ready and every agent applied its latest plan."""
        def ready() -> dict[str, Any] | None:
            sc = self.k.chain(CHAIN)
            st = sc.get("status") or {}
            conds = {c["type"]: c["status"] for c in st.get("conditions") or ()}
            gen_ok = st.get("observedGeneration") == sc["metadata"]["generation"]
            nodes = st.get("nodes") or {}
            applied = nodes.get("programmed") == nodes.get("total")
            return st if gen_ok and conds.get("Ready") == "True" and applied else None
        return wait_for(ready, 120, f"ServiceChain {CHAIN} Ready and applied")

    def reconfigs(self) -> tuple[int, int]:
        """(done, failed) reconfigurations of the chain, summed over the node agents."""
        key = f"{self.k.ns}/{CHAIN}"
        done = failed = 0
        for p in self.k.plans():
            for r in (p.get("status") or {}).get("reconfigurations") or ():
                if r["chain"] == key:
                    done += int(r["done"])
                    failed += int(r["failed"])
        return done, failed

    def by_revision(self) -> dict[str, int]:
        return {k: v for k, v in (self.status().get("sessionsByRevision") or {}).items() if v}

    def client_pod(self) -> str:
        return str(self.k.ready_pods("app=client")[0].metadata.name)

    def server_pod(self) -> str:
        return str(self.k.ready_pods("app=server")[0].metadata.name)

    def start(self, label: str, n: int) -> None:
        """Open `n` sessions and wait until each has received bytes; on a timeout the
        batch is stopped (so it does not load later steps) and TimeoutError raised."""
        self.k.pod_http(self.client_pod(), HTTP, "start", "POST",
                        {"label": label, "sessions": str(n), "rate": str(self.rate)})
        try:
            wait_for(lambda: len([s for s in self.k.pod_http(
                self.client_pod(), HTTP, "sessions", query={"label": label})["sessions"]
                if s["received"] > 0]) == n, 60 + n, f"{n} sessions of batch {label} moving "
                "bytes")
        except TimeoutError:
            self.k.pod_http(self.client_pod(), HTTP, "stop", "POST", {"label": label})
            raise

    def finish(self, label: str, n: int) -> Verdict:
        """Stop the batch, wait for both ends to finish, verify."""
        cp, sp = self.client_pod(), self.server_pod()
        self.k.pod_http(cp, HTTP, "stop", "POST", {"label": label})

        def done() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
            cs = self.k.pod_http(cp, HTTP, "sessions", query={"label": label})["sessions"]
            tokens = {c["token"] for c in cs}
            ss = [s for s in self.k.pod_http(sp, HTTP, "sessions")["sessions"]
                  if s["token"] in tokens]
            return (cs, ss) if all(s["state"] == "done" for s in cs + ss) else None
        try:
            cs, ss = wait_for(done, 60, f"batch {label} to finish", 1)
        except TimeoutError as e:
            return Verdict(label, sessions=n, problems=[str(e)])
        return verify(label, n, cs, ss)

    # ------------------------------------------------------------------ steps

    def run_step(self, name: str, action: str, change: Callable[[], None],
                 complete: Callable[[], bool]) -> StepResult:
        r = StepResult(step=name, action=action)
        self.say(f"step {name}: starting {self.sessions} sessions, then: {action}")
        try:
            self.start(name, self.sessions)
        except TimeoutError as e:
            r.problems.append(str(e))
            return r
        before_rev = self.by_revision()
        done0, failed0 = self.reconfigs()
        t = now()
        try:
            change()
            sc = self.k.chain(CHAIN)
            self.k.event(sc, "DemoStep", f"{name}: {action}")
            wait_for(complete, self.step_timeout, f"{name} to complete", 1)
        except TimeoutError as e:
            r.problems.append(str(e))
        r.seconds = round(now() - t, 1)
        time.sleep(3)  # bytes keep flowing on the new path before the check
        done1, failed1 = self.reconfigs()
        r.reconfigured, r.failed_reconfigs = done1 - done0, failed1 - failed0
        r.revisions = f"{_revs(before_rev)} -> {_revs(self.by_revision())}"
        v = self.finish(name, self.sessions)
        r.sessions = v.sessions
        r.resets, r.bytes_verified = v.resets, v.bytes_verified
        r.problems += v.problems
        if r.failed_reconfigs:
            r.problems.append(f"{r.failed_reconfigs} reconfiguration(s) failed")
        r.ok = not r.problems and r.resets == 0
        self.say(f"step {name}: {'ok' if r.ok else 'FAILED'} in {r.seconds} s, "
                 f"{r.reconfigured} reconfigured, sessions by revision {r.revisions}, "
                 f"{r.resets} resets, {r.bytes_verified} bytes verified"
                 + "".join(f"\n    - {p}" for p in r.problems))
        return r

    def live_moved(self, revision: int) -> bool:
        """Every session of the chain is at `revision` (live reconfiguration done)."""
        revs = self.by_revision()
        return bool(revs) and set(revs) == {str(revision)}

    def step_insert(self) -> StepResult:
        rev = int(self.status().get("revision") or 0)
        return self.run_step(
            "insert", "kubectl patch: hops proxy -> fw,proxy (live insertion of fw)",
            lambda: self.k.patch_chain(CHAIN, {"hops": [self.hop("fw"), self.hop("proxy")]}),
            lambda: self.live_moved(rev + 1))

    def step_rollout(self) -> StepResult:
        self.version += 1
        replicas = len(self.k.ready_pods("app=fw"))
        return self.run_step(
            "rollout", f"fw rolled out to v{self.version}, pod by pod (live replacement)",
            lambda: self.k.apply_deployment(self.fw(replicas, self.version)),
            lambda: self.k.deployment_done("fw"))

    def step_drain(self) -> StepResult:
        def change() -> None:
            victim = self.k.ready_pods("app=fw")[0].metadata.name
            self.say(f"  deleting pod {victim} by hand")
            self.k.core.delete_namespaced_pod(victim, self.k.ns)
            wait_for(lambda: self.k.deployment_done("fw"), self.step_timeout,
                     "fw to replace the deleted pod", 1)
            self.say("  scaling fw 2 -> 1")
            self.k.apps.patch_namespaced_deployment_scale("fw", self.k.ns,
                                                          {"spec": {"replicas": 1}})
        return self.run_step("drain", "fw pod deleted by hand, then fw scaled 2 -> 1",
                             change, lambda: self.k.deployment_done("fw"))

    def step_remove(self) -> StepResult:
        rev = int(self.status().get("revision") or 0)
        return self.run_step(
            "remove", "kubectl patch: hops fw,proxy -> fw (live removal of the proxy)",
            lambda: self.k.patch_chain(CHAIN, {"hops": [self.hop("fw")]}),
            lambda: self.live_moved(rev + 1))

    def hop_names(self) -> list[str]:
        return [h["name"] for h in self.k.chain(CHAIN)["spec"]["hops"]]

    def step_new_only(self) -> StepResult:
        rev = int(self.status().get("revision") or 0)
        old: dict[str, int] = {}
        before = self.hop_names()
        # the proxy goes in (or out): the new sessions' banners show which path they took
        after = ["fw"] if "proxy" in before else ["fw", "proxy"]

        def change() -> None:
            old.update(self.by_revision())
            self.k.patch_chain(CHAIN, {"updatePolicy": "newSessionsOnly",
                                       "hops": [self.hop(h) for h in after]})
            wait_for(lambda: int(self.status().get("revision") or 0) == rev + 1, 60,
                     "the new revision")
            self.wait_applied()
            self.start("new-only-fresh", self.sessions)

        def complete() -> bool:
            """Old sessions are still at their revision, the fresh ones at the new one."""
            revs = self.by_revision()
            return revs.get(str(rev), 0) >= sum(old.values()) \
                and revs.get(str(rev + 1), 0) >= self.sessions

        r = self.run_step("new-sessions-only",
                          f"updatePolicy newSessionsOnly, hops {','.join(before)} -> "
                          f"{','.join(after)}: old sessions keep their path", change, complete)
        fresh = self.finish("new-only-fresh", self.sessions)
        r.sessions += fresh.sessions
        r.resets += fresh.resets
        r.bytes_verified += fresh.bytes_verified
        r.problems += fresh.problems
        want = fresh.sessions if "proxy" in after else 0
        if fresh.prefixes != want:
            r.problems.append(f"{fresh.prefixes}/{fresh.sessions} new sessions went through "
                              f"the proxy, expected {want}")
        r.ok = r.ok and not r.problems and r.resets == 0
        self.say(f"  new sessions: {fresh.verified}/{fresh.sessions} verified, "
                 f"{fresh.prefixes} through the proxy")
        return r


def _revs(revs: dict[str, int]) -> str:
    return ",".join(f"r{k}:{v}" for k, v in sorted(revs.items())) or "-"


def table(rows: list[StepResult]) -> str:
    head = ("step", "result", "sessions", "reconfigured", "seconds", "resets",
            "bytes verified", "sessions by revision")
    body = [(r.step, "ok" if r.ok else "FAILED", str(r.sessions), str(r.reconfigured),
             f"{r.seconds:.1f}", str(r.resets), f"{r.bytes_verified:,}", r.revisions)
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(f"{x:<{w}}" for x, w in zip(row, widths, strict=True))
                     for row in (head, *body))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dysco demo``."""
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        print(f"dysco demo: unknown steps {unknown}; known: {','.join(STEPS)}", file=sys.stderr)
        return 2
    demo = Demo(Kube(args.namespace, args.kubeconfig or None), args.image, args.pull_policy,
                args.sessions, args.rate, args.step_timeout, args.json)
    rows: list[StepResult] = []
    # with the insertion step the chain starts with the proxy only (fw comes in live)
    demo.setup(("proxy",) if "insert" in steps else ("fw", "proxy"))
    demo.say(f"long batch: {args.sessions} sessions through the chain for the whole demo")
    demo.start("long", args.sessions)
    runners = {"insert": demo.step_insert, "rollout": demo.step_rollout,
               "drain": demo.step_drain, "remove": demo.step_remove,
               "new-sessions-only": demo.step_new_only}
    for s in steps:
        rows.append(runners[s]())
    long = demo.finish("long", args.sessions)
    rows.append(StepResult(step="long (all steps)", ok=long.ok, sessions=long.sessions,
                           resets=long.resets, bytes_verified=long.bytes_verified,
                           seconds=round(now() - demo.t0, 1), problems=long.problems))
    demo.say(f"long batch: {long.verified}/{long.sessions} verified"
             + "".join(f"\n    - {p}" for p in long.problems))
    ok = all(r.ok for r in rows)
    if args.json:
        json.dump({"ok": ok, "steps": [asdict(r) for r in rows]}, sys.stdout, indent=1)
        print()
    else:
        print(table(rows))
        print(f"\nresult: {'all checks held' if ok else 'SOME CHECKS FAILED'}")
        print(f"watch: kubectl -n {args.namespace} get schain {CHAIN} -w ; "
              f"kubectl -n {args.namespace} get events")
    return 0 if ok else 1


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="live middlebox insertion, replacement, drain and removal on a cluster",
        description=__doc__.splitlines()[0], epilog="steps: " + ", ".join(STEPS))
    p.add_argument("--kubeconfig", default="", help="default: $KUBECONFIG or ~/.kube/config")
    p.add_argument("--namespace", default="dysco-demo")
    p.add_argument("--image", default="dysco/agent:0.1.0",
                   help="image with the dysco package (the agent image)")
    p.add_argument("--pull-policy", default="IfNotPresent")
    p.add_argument("--sessions", type=int, default=3, help="sessions per batch")
    p.add_argument("--rate", type=int, default=32768,
                   help="bytes/s per direction per session")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated, in order")
    p.add_argument("--step-timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true",
                   help="one JSON document on stdout (progress on stderr)")
    p.set_defaults(func=run)
    return p
