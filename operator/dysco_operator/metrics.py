"""Prometheus metrics of the operator (served by ``prometheus_client`` on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILIATIONS = Counter(
    "dysco_operator_reconciliations_total",
    "Plan/status reconciliation passes, by result (success, conflict, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "dysco_operator_reconciliation_duration_seconds",
    "Duration of one reconciliation pass over all ServiceChains.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PLAN_WRITES = Counter(
    "dysco_operator_plan_writes_total",
    "DyscoNodePlan writes, by result (created, updated, conflict, error).",
    ["result"],
)
STATUS_WRITES = Counter(
    "dysco_operator_status_writes_total",
    "ServiceChain status writes, by result (updated, conflict, error).",
    ["result"],
)
REVISIONS = Counter(
    "dysco_operator_chain_revisions_total",
    "Chain revisions stamped (hops changed).",
)
CHAINS = Gauge("dysco_chains", "ServiceChains known to the operator, by readiness.", ["ready"])
CHAIN_REVISION = Gauge("dysco_chain_revision", "Current revision of a chain.", ["chain"])
CHAIN_SESSIONS = Gauge(
    "dysco_chain_sessions", "Live sessions of a chain by revision, as reported by agents.",
    ["chain", "revision"],
)
HOP_INSTANCES = Gauge(
    "dysco_chain_hop_instances", "Middlebox instances of a hop, by state (ready, draining).",
    ["chain", "hop", "state"],
)
PLANNED_NODES = Gauge("dysco_operator_planned_nodes", "Nodes with a non-empty DyscoNodePlan.")
DRAINING = Gauge("dysco_operator_draining_instances", "Middlebox instances being drained.")
