"""Namespace-lab fixtures. These tests need root; without it they fail, never skip."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dysco.dataplane import netns
from dysco.lab.topology import Lab

PREFIX = f"dysco-t{os.getpid()}-"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(scope="session", autouse=True)
def _root() -> None:
    assert os.geteuid() == 0, "tests/netns need root (network namespaces, iptables)"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A lab of our own (prefix dysco-t<pid>-), removed and checked gone afterwards."""
    lab = Lab(prefix=PREFIX)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
    assert netns.names(PREFIX) == []
