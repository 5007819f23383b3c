"""The node agent's DataPlane on lab pods: attach by namespace path, policies, drain."""

from __future__ import annotations

import time

from dysco.dataplane import rules
from dysco.dataplane.k8s import create_dataplane
from dysco.k8s import interface as k8s
from dysco.lab import scenarios
from dysco.lab.topology import Lab


def test_policies_sessions_and_drain(lab: Lab) -> None:
    dp = create_dataplane()
    assert isinstance(dp, k8s.DataPlane)
    dp.set_keys({7: b"k" * 32}, 7)
    pods = {short: lab.pod(short) for short in ("client", "server", "mb1", "mb3")}
    try:
        for short, pod in pods.items():
            dp.attach_pod(f"default/{short}", f"/run/netns/{pod.name}", pod.ip)
            dp.attach_pod(f"default/{short}", f"/run/netns/{pod.name}", pod.ip)
        serving = k8s.Chain("default/fw", 1, (k8s.Hop("fw", (pods["mb1"].ip,)),))
        scaled = k8s.Chain("default/fw", 1, (k8s.Hop("fw", (pods["mb1"].ip,
                                                             pods["mb3"].ip)),))
        dp.set_keys({7: b"k" * 32, 8: b"n" * 32}, 8)  # a rotation: both keys valid
        dp.set_policies("default/client", [k8s.Policy(serving, ((pods["server"].ip, (5001,)),))])
        seen: dict[str, object] = {}

        def drain() -> None:
            deadline = time.monotonic() + 10
            while sum(dp.sessions().values()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            seen["sessions"] = dict(dp.sessions())
            time.sleep(0.3)
            dp.set_chains([scaled])
            dp.drain_instance(pods["mb1"].ip, time.time() + 30)
            while (dp.reconfigurations().get(("default/fw", 1), (0, 0))[0] < 2
                   and time.monotonic() < deadline + 10):
                time.sleep(0.05)

        result = scenarios.transfer(lab, "client", "server",
                                    scenarios.Options(bytes=40 << 20, sessions=2, timeout=15),
                                    during=drain)
        assert result["ok"], result["failures"]
        assert seen["sessions"] == {("default/fw", 1): 2}
        assert dp.reconfigurations()[("default/fw", 1)] == (2, 0)
        dp.detach_pod("default/mb3")
        assert not rules.Interception(pods["mb3"].name, dp.runtime.variant).listing()
    finally:
        dp.close()
    for pod in pods.values():
        assert not rules.Interception(pod.name, dp.runtime.variant).listing()
