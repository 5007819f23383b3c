"""The node agent's Kubernetes side.

It watches this node's DyscoNodePlan (written by the operator), finds the participating
pods' network namespaces, drives the data plane through the small `DataPlane` protocol
(`interface.py`) and reports back in the plan's status. Read-only HTTP: /metrics,
/healthz, /readyz. Entry point: ``dysco agent`` (see `cli.add_agent_parser`).
"""
