"""The lab comes up routed, goes down without a trace, and carries the plain scenario."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import PREFIX

from dysco.dataplane import netns
from dysco.lab import scenarios
from dysco.lab.topology import Lab


def root_links() -> str:
    return subprocess.run(["ip", "-br", "link"], check=True, capture_output=True,
                          text=True).stdout


def test_up_down_idempotent_and_leaves_nothing() -> None:
    lab = Lab(prefix=f"{PREFIX}ud-", middleboxes_per_node=1)
    links_before = root_links()
    lab.down()
    lab.up()
    lab.up()
    status = lab.status()
    assert status["up"] and all(n["present"] for n in status["namespaces"])
    assert status["unexpected_namespaces"] == []
    json.dumps(status)
    mb = lab.pod("mb1")
    assert netns.run(mb.name, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    client = lab.pod("client")
    assert netns.run(client.name, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
    ping = netns.run(client.name, ["ping", "-c1", "-W2", lab.pod("server").ip], check=False)
    assert ping.returncode == 0, ping.stdout
    # a process left running in a pod is stopped by `down`
    sleeper = subprocess.Popen(netns.argv(mb.name, ["sleep", "300"]))
    lab.down()
    assert sleeper.wait(timeout=5) != 0
    lab.down()
    assert netns.names(f"{PREFIX}ud-") == []
    assert root_links() == links_before


def test_partial_lab_is_rebuilt() -> None:
    lab = Lab(prefix=f"{PREFIX}pa-", middleboxes_per_node=0)
    try:
        netns.add(lab.node_ns(1))  # a leftover from a crashed run
        lab.up()
        assert lab.is_up()
        ping = netns.run(lab.pod("client").name, ["ping", "-c1", "-W2", lab.pod("server").ip],
                         check=False)
        assert ping.returncode == 0
    finally:
        lab.down()
    assert netns.names(f"{PREFIX}pa-") == []


def test_plain_scenario(lab: Lab) -> None:
    result = scenarios.run("plain", lab, scenarios.Options(bytes=20 << 20, sessions=3))
    assert result["ok"], result["failures"]
    assert result["sessions"] == 3


def test_scenario_detects_corruption() -> None:
    """The checker must fail a session whose bytes differ, not only one that errors."""
    good = {"token": "t", "local": "a", "sent": 10, "received": 10, "sha_sent": "x",
            "sha_received": "y", "error": None, "stalled": False, "max_gap_s": 0.0}
    bad = dict(good, sha_sent="y", sha_received="CORRUPT")
    failures = scenarios.check({"role": "client", "sessions": [good]},
                               {"role": "server", "sessions": [bad]},
                               scenarios.Options(bytes=10, sessions=1))
    assert failures == ["session 0 (a): client->server bytes differ (SHA-256)"]


def test_cli_status_json() -> None:
    out = subprocess.run([sys.executable, "-c",
                          "import argparse,sys; from dysco.lab import cli;"
                          "ap=argparse.ArgumentParser(); s=ap.add_subparsers();"
                          "cli.add_lab_parser(s); a=ap.parse_args(sys.argv[1:]);"
                          "sys.exit(a.func(a))",
                          "lab", "status", "--prefix", f"{PREFIX}none-"],
                         check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    assert doc["up"] is False and doc["unexpected_namespaces"] == []
