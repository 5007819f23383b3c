"""Typed errors for input the core refuses.

`RemoteError` is garbage from the network (a malformed packet or control message); it
carries a short machine-readable `reason` that drivers use as a metric label. Misuse by
the local caller (a driver bug) raises the ordinary ValueError or TypeError.
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

