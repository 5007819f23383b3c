"""How a chain revision's hop changes become edits for the agents next to them."""

from __future__ import annotations

from dysco.dataplane.k8s import Edit, chain_edits
from dysco.k8s.interface import Hop


def hops(*names: str) -> tuple[Hop, ...]:
    return tuple(Hop(n, (f"10.0.0.{i + 1}",)) for i, n in enumerate(names))


def test_no_change() -> None:
    assert chain_edits(hops("fw", "ids"), hops("fw", "ids")) == []


def test_append_is_anchored_at_the_last_kept_hop() -> None:
    new = hops("fw", "ids")
    assert chain_edits(hops("fw"), new) == [Edit("fw", "insert", new[1:])]


def test_front_insertion_is_anchored_at_the_source() -> None:
    new = hops("ids", "fw")
    assert chain_edits(hops("fw"), new) == [Edit(None, "insert", new[:1])]


def test_removed_hops_remove_themselves() -> None:
    assert chain_edits(hops("fw", "ids", "dpi"), hops("fw")) == [
        Edit("ids", "replace", ()), Edit("dpi", "replace", ())]


def test_replaced_hops_first_one_brings_the_new_ones() -> None:
    new = hops("fw", "a", "b")
    assert chain_edits(hops("fw", "x", "y"), new) == [
        Edit("x", "replace", new[1:]), Edit("y", "replace", ())]
