"""The Dysco protocol core: pure, deterministic, no I/O (sans-I/O)."""

from .actions import Action, Hook, Inject, Notify, SendControl, Verdict
from .agent import Agent
from .config import AgentConfig
from .policy import Hop, Policy, Selector

__all__ = [
    "Action", "Agent", "AgentConfig", "Hook", "Hop", "Inject", "Notify", "Policy",
    "Selector", "SendControl", "Verdict",
]
