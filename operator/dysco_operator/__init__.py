"""Dysco operator: ServiceChain -> per-node DyscoNodePlans (the paper's policy server)."""
