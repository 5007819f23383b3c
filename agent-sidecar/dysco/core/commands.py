"""Commands from the policy server (operator), the CLI or a middlebox application."""

from __future__ import annotations

from dataclasses import dataclass

from .policy import Policy, Selector


@dataclass(frozen=True, slots=True)
class SetPolicies:
    """Replace the policies applied to new sessions opened by this host."""

    policies: tuple[Policy, ...]


@dataclass(frozen=True, slots=True)
class InsertRight:
    """Act as left anchor: put `hops` between this agent and its right neighbour.

    With `right_anchor` set, the segment reaches further right (its middleboxes are
    removed or replaced by `hops`).
    """

    selector: Selector
    hops: tuple[int, ...]
    right_anchor: int | None = None


@dataclass(frozen=True, slots=True)
class ReplaceSelf:
    """A middlebox asks its left neighbour to replace it by `hops` (empty: remove it)."""

    selector: Selector
    hops: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SetContentDelta:
    """A middlebox app reports bytes it added (+) or removed (-) per direction."""

    selector: Selector
    left_to_right: int
    right_to_left: int


@dataclass(frozen=True, slots=True)
class SetKeys:
    """Control-message keys: during a rotation both the old and the new key are listed,
    `current` (used for sending) moves to the new one, then the old one is dropped."""

    keys: tuple[tuple[int, bytes], ...]
    current: int


Command = SetPolicies | InsertRight | ReplaceSelf | SetContentDelta | SetKeys
