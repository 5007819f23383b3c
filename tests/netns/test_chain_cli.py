"""`dysco chain insert|remove|replace`: orders given by hand to the lab's running agents."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import pytest

from dysco.lab import scenarios
from dysco.lab.agents import LabAgents
from dysco.lab.cli import add_chain_parser
from dysco.lab.control import Order
from dysco.lab.topology import Lab
from dysco.middleboxes import Middlebox

_MAIN = ("import sys, argparse; from dysco.lab.cli import add_chain_parser; "
         "p = argparse.ArgumentParser(prog='dysco'); s = p.add_subparsers(required=True); "
         "add_chain_parser(s); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def chain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _MAIN, "chain", *args],
                          capture_output=True, text=True, timeout=60)


def test_parser_builds_orders() -> None:
    p = argparse.ArgumentParser()
    add_chain_parser(p.add_subparsers(required=True))
    a = p.parse_args(["chain", "insert", "--at", "client", "--hops", "mb1,mb3",
                      "--dst", "10.200.2.2", "--port", "5001"])
    assert a.hops == ("mb1", "mb3") and a.port == 5001
    with pytest.raises(SystemExit):
        p.parse_args(["chain", "replace", "--middlebox", "mb1"])  # --with is required
    with pytest.raises(ValueError):
        Order(op="insert", at="client").validate()
    assert Order.from_json(Order(op="remove", middlebox="mb1").to_json()).middlebox == "mb1"
    with pytest.raises(ValueError):
        Order.from_json('{"op": "remove", "middlebox": "mb1", "evil": 1}')


def test_no_agents_is_an_error(lab: Lab) -> None:
    done = chain("remove", "--middlebox", "mb1", "--prefix", "dysco-nolab-")
    assert done.returncode == 2 and "no lab agents" in done.stderr


def test_orders_to_idle_agents(lab: Lab) -> None:
    with LabAgents(lab, ["client", "server", "mb1"]):
        ok = chain("insert", "--at", "client", "--hops", "mb1", "--prefix", lab.prefix)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == {"ok": True, "pod": lab.pod("client").name,
                                         "sessions": 0}
        bad = chain("replace", "--middlebox", "mb1", "--with", "nosuchpod",
                    "--prefix", lab.prefix)
        assert bad.returncode == 1 and "nosuchpod" in json.loads(bad.stdout)["error"]
        absent = chain("remove", "--middlebox", "mb4", "--prefix", lab.prefix)
        assert absent.returncode == 1 and "no running agent" in absent.stdout


def test_cli_inserts_into_live_sessions(lab: Lab) -> None:
    """The CLI, run as a separate process, inserts a firewall into running sessions."""
    answers: list[dict[str, Any]] = []

    def go(agents: LabAgents, boxes: dict[str, Middlebox]) -> dict[str, Any]:
        done = chain("insert", "--at", "client", "--hops", "mb1", "--port", "5001",
                     "--wait", "20", "--prefix", lab.prefix)
        answers.append(json.loads(done.stdout))
        return answers[-1]

    # paced (8 s): starting the CLI's Python may take a second or more on a loaded
    # machine, and an unpaced transfer could end before the order arrives
    opts = scenarios.Options(bytes=8 << 20, sessions=2, timeout=15, rate=1 << 20)
    result = scenarios._dysco(lab, opts, hops=[], spare=("mb1",),
                              boxes={"mb1": scenarios._fw}, reconfig=go, must_see=("mb1",))
    assert result["ok"], result["failures"]
    assert answers[0]["ok"] and answers[0]["sessions"] == 2 and answers[0]["done"] == 2
