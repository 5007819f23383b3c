"""Agent settings: addresses, port ranges, timeouts and limits (all times in seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AgentConfig:
    address: int
    control_port: int = 2016
    # Subsession ports. The initiator of a subsession takes its own port from
    # `local_ports` and the peer's from `peer_ports`; the ranges are disjoint so two
    # agents that open subsessions towards each other can never pick the same tuple.
    local_ports: tuple[int, int] = (40000, 59999)
    peer_ports: tuple[int, int] = (20000, 39999)
    # Where in those ranges allocation starts. A data plane passes a random value: an
    # agent that starts afresh (pod re-attached, agent restarted) must not pick the
    # tuples its predecessor used, which the next hop still drops for `linger` seconds.
    port_start: int = 0
    lock_timeout: float = 0.2
    lock_retries: int = 8
    syn_timeout: float = 0.2
    syn_retries: int = 3
    ack_timeout: float = 0.2
    complete_timeout: float = 0.2
    cancel_timeout: float = 0.2
    cancel_retries: int = 10
    reconfig_attempts: int = 8
    retry_backoff: float = 0.3
    removal_retry: float = 0.5
    removal_attempts: int = 40
    teardown_copies: int = 3
    teardown_interval: float = 0.05
    # An anchor that acked a lock but hears nothing more gives up after this long.
    anchor_guard: float = 5.0
    idle_timeout: float = 120.0
    linger: float = 60.0
    # Resource limits (docs/security.md): what a flood of SYNs or control messages can
    # take. Over a limit a new session's SYN is dropped (never passed unchained: the chain
    # may be a firewall) and existing sessions are untouched; each refusal is reported
    # as `Rejected` with its reason.
    max_sessions: int = 100_000  # sessions of this agent (pod), in any state
    max_half_open: int = 10_000  # sessions whose TCP handshake this agent has not seen end
    handshake_timeout: float = 30.0  # a half-open session is freed after this
    max_reconfigs: int = 10_000  # reconfigurations this agent anchors at once
    control_rate: float = 20_000.0  # control messages per second and sender...
    control_burst: int = 5_000  # ...with this burst
    control_senders: int = 4_096  # senders with a bucket of their own; the rest share one
    # Dead hop (docs/protocol.md): an end of a chained session that has sent data and got
    # no ack at all for this long gives up on the session: RST to its app and ABORT to the
    # other end, which does the same. 0 disables. Longer than TCP's usual recovery.
    hop_timeout: float = 15.0
    abort_copies: int = 3
    # Control-message keys (id -> secret); empty disables authentication (tests only).
    keys: tuple[tuple[int, bytes], ...] = ()
    current_key: int = 0
    auth_window: float = 30.0
