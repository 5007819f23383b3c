"""The runtime drives a core-shaped processor per pod and cleans up after itself."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from standin import RPORT, VPORT, PortMapper

from dysco.dataplane import netns, rules
from dysco.dataplane.runtime import CONTROL_BUFFER, PodSpec, Processor, Runtime, ip_to_int
from dysco.lab import scenarios
from dysco.lab.topology import Lab


@pytest.mark.parametrize("backend", ["raw", "binding"])
def test_runtime_rewrites_injects_and_signals(lab: Lab, backend: str) -> None:
    client, server = lab.pod("client"), lab.pod("server")
    mappers = {client.name: PortMapper(split=True, control_to=ip_to_int(server.ip)),
               server.name: PortMapper()}

    def factory(spec: PodSpec) -> Processor:
        return mappers[spec.ns]

    runtime = Runtime(factory, backend=backend)
    for pod in (client, server):
        runtime.add_pod(PodSpec(pod.name, pod.ip))
        runtime.add_pod(PodSpec(pod.name, pod.ip))  # attaching twice is a no-op
    thread = threading.Thread(target=runtime.run)
    thread.start()
    try:
        result = scenarios.transfer(
            lab, "client", "server",
            scenarios.Options(bytes=4 << 20, sessions=2, port=RPORT, timeout=20),
            connect_port=VPORT)
        stats = runtime.stats()
    finally:
        runtime.stop()
        thread.join()
        runtime.close()
    assert result["ok"], result["failures"]
    assert stats[client.name]["rewritten"] > 0
    assert stats[client.name]["injected"] > 0
    assert stats[client.name]["errors"] == 0
    assert stats[client.name]["control_out"] == 1
    assert stats[server.name]["control_in"] == 1
    assert mappers[server.name].control_seen == [(ip_to_int(client.ip),
                                                 b"hello from the stand-in")]
    for pod in (client, server):
        assert not rules.Interception(pod.name, runtime.variant).listing()
        with netns.entered(pod.name):  # the control port is free again
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind((pod.ip, 2016))
            probe.close()


def test_remove_pod_and_restart(lab: Lab) -> None:
    mb = lab.pod("mb1")
    for _ in range(2):  # a restart finds nothing left over and starts again
        runtime = Runtime(lambda spec: PortMapper())
        runtime.add_pod(PodSpec(mb.name, mb.ip))
        assert rules.Interception(mb.name, runtime.variant).installed()
        runtime.step(0.01)
        runtime.remove_pod(mb.name)
        assert not rules.Interception(mb.name, runtime.variant).listing()
        runtime.close()


def test_control_socket_holds_an_orders_burst(lab: Lab) -> None:
    """One order sends a control datagram per session at once: 1,000 queued datagrams
    must fit the receiving agent's control socket (the default buffer holds ~280)."""
    client, mb = lab.pod("client"), lab.pod("mb1")
    runtime = Runtime(lambda spec: PortMapper())
    try:
        pod = runtime.add_pod(PodSpec(client.name, client.ip))
        assert pod.control.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= CONTROL_BUFFER
        with netns.entered(mb.name):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            for i in range(1000):
                sender.sendto(i.to_bytes(4, "big") * 20, (client.ip, 2016))
        got = 0
        with contextlib.suppress(BlockingIOError):
            while pod.control.recv(4096):
                got += 1
        assert got == 1000
    finally:
        runtime.close()
