"""Typed errors for input the core refuses.

Two kinds, as in h11: `RemoteError` is garbage from the network (a malformed packet or
control message); `UsageError` is misuse by the local caller. Every `RemoteError`
carries a short machine-readable `reason` that drivers use as a metric label.
"""

from __future__ import annotations


class DyscoError(Exception):
    """Base of every error the core raises."""


class RemoteError(DyscoError):
    """Input from the network that the core refuses, without changing any state."""

    reason = "malformed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TruncatedError(RemoteError):
    reason = "truncated"


class PacketError(RemoteError):
    reason = "bad_packet"


class OptionError(RemoteError):
    reason = "bad_option"


class SynPayloadError(RemoteError):
    reason = "bad_syn_payload"


class ControlError(RemoteError):
    reason = "bad_control"


class UsageError(DyscoError):
    """The local caller asked for something impossible (a bug in the driver)."""
