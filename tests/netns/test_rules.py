"""Interception rules: exact install and removal, idempotence, fail-closed."""

from __future__ import annotations

import subprocess

import pytest

from dysco.dataplane import netns, rules
from dysco.lab.topology import Lab

BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def legacy_tables(save: str) -> dict[str, list[str]]:
    """iptables-legacy-save by table, without comments, counters and empty tables
    (a legacy table, once loaded, stays in the namespace with its empty built-ins)."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in save.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line.startswith("-A ") or (line.startswith(":")
                                        and line.split()[0][1:] not in BUILTIN):
            current.append(line)
    return {name: lines for name, lines in tables.items() if lines}


def ruleset(ns: str) -> dict[str, object]:
    """Everything both iptables variants and nft show in `ns`."""
    return {
        "legacy": legacy_tables(netns.run(ns, ["iptables-legacy-save"]).stdout),
        "nft": netns.run(ns, ["nft", "list", "ruleset"]).stdout,
    }


@pytest.mark.parametrize("input_table", ["raw", "mangle"])
@pytest.mark.parametrize("variant", list(rules.Variant))
def test_install_remove_exact_and_idempotent(lab: Lab, variant: rules.Variant,
                                             input_table: str) -> None:
    ns = lab.pod("mb1").name
    # Someone else's rules in the same table must survive untouched.
    netns.run(ns, [variant.binary(), "-t", "mangle", "-A", "PREROUTING", "-p", "udp",
                   "-j", "ACCEPT"])
    before = ruleset(ns)
    rule = rules.Interception(ns, variant, input_table=input_table)
    rule.install()
    first = ruleset(ns)
    rule.install()
    assert ruleset(ns) == first, "a second install changed the ruleset"
    assert rule.installed()
    save = netns.run(ns, [variant.binary("iptables-save")]).stdout
    assert "--queue-bypass" not in save, "rules must be fail-closed"
    assert save.count("-j NFQUEUE") == 2
    rule.remove()
    rule.remove()
    after = ruleset(ns)
    assert not rule.listing()
    assert after == before
    netns.run(ns, [variant.binary(), "-t", "mangle", "-D", "PREROUTING", "-p", "udp",
                   "-j", "ACCEPT"])


def test_fresh_namespace_left_empty(lab: Lab) -> None:
    ns = lab.pod("mb2").name
    variant = rules.Variant.NFT
    assert netns.run(ns, ["nft", "list", "ruleset"]).stdout.strip() == ""
    rule = rules.Interception(ns, variant)
    rule.install()
    rule.remove()
    assert netns.run(ns, ["nft", "list", "ruleset"]).stdout.strip() == ""


def test_detect_variant_follows_rule_count(lab: Lab) -> None:
    ns = lab.pod("mb3").name
    for variant in rules.Variant:
        netns.run(ns, [variant.binary(), "-A", "INPUT", "-p", "udp", "-j", "ACCEPT"])
        netns.run(ns, [variant.binary(), "-A", "INPUT", "-p", "icmp", "-j", "ACCEPT"])
        other = next(v for v in rules.Variant if v is not variant)
        netns.run(ns, [other.binary(), "-F", "INPUT"])
        assert rules.detect_variant(ns) is variant
    for variant in rules.Variant:
        netns.run(ns, [variant.binary(), "-F", "INPUT"])


def test_fail_closed_without_listener(lab: Lab) -> None:
    """With our rules and no agent, TCP is held back (dropped), never passed unchanged."""
    client, server = lab.pod("client"), lab.pod("server")
    rule = rules.Interception(client.name, rules.detect_variant())
    srv = subprocess.Popen(netns.argv(server.name, ["iperf3", "-s", "-1", "-p", "5999"]),
                           stdout=subprocess.DEVNULL)
    try:
        rule.install()
        probe = netns.run(client.name, ["iperf3", "-c", server.ip, "-p", "5999", "-t", "1",
                                        "--connect-timeout", "1500"], check=False)
        assert probe.returncode != 0
        rule.remove()
        ok = netns.run(client.name, ["iperf3", "-c", server.ip, "-p", "5999", "-t", "1"],
                       check=False)
        assert ok.returncode == 0, ok.stderr
    finally:
        rule.remove()
        srv.kill()
        srv.wait()


def test_exempt_addresses_pass_without_listener(lab: Lab) -> None:
    """TCP with an exempt address (the node's, in a cluster: kubelet probes) passes the
    rules even with no agent listening; other TCP is still held back."""
    client, server, other = lab.pod("client"), lab.pod("server"), lab.pod("mb1")
    rule = rules.Interception(client.name, rules.detect_variant(), exempt=(server.ip,))
    servers = [subprocess.Popen(netns.argv(p.name, ["iperf3", "-s", "-1", "-p", "5998"]),
                                stdout=subprocess.DEVNULL) for p in (server, other)]
    try:
        rule.install()
        assert rule.installed()
        exempt = netns.run(client.name, ["iperf3", "-c", server.ip, "-p", "5998", "-t", "1"],
                           check=False)
        assert exempt.returncode == 0, exempt.stderr
        held = netns.run(client.name, ["iperf3", "-c", other.ip, "-p", "5998", "-t", "1",
                                       "--connect-timeout", "1500"], check=False)
        assert held.returncode != 0
    finally:
        rule.remove()
        for srv in servers:
            srv.kill()
            srv.wait()
