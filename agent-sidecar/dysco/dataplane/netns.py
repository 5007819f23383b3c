"""Named network namespaces: create, enter, run commands in them.

The agent serves many pods from one process, so it must open sockets (NFQUEUE netlink,
raw, UDP) *inside* each pod's namespace. A socket stays in the namespace it was
created in, so entering a namespace only for the `socket()` call is enough; `entered`
switches the calling thread only (setns(2) is per thread) and always switches back.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> Path:
    """The bind-mounted namespace file that `ip netns` manages."""
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def names(prefix: str = "") -> list[str]:
    """Named namespaces whose name starts with `prefix`, sorted."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add(name: str) -> None:
    """Create `name` unless it exists (idempotent) and bring its loopback up."""
    if not exists(name):
        subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def delete(name: str) -> None:
    """Delete `name` if it exists (idempotent)."""
    if exists(name):
        subprocess.run(["ip", "netns", "del", name], check=True)


def pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is `name`."""
    out = subprocess.run(
        ["ip", "netns", "pids", name], check=True, capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread in namespace `name` (None: stay put)."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path(name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def open_socket(name: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `name` whatever thread uses it later."""
    with entered(name):
        return socket.socket(family, kind, proto)


def argv(name: str | None, cmd: Sequence[str]) -> list[str]:
    """`cmd` prefixed so that it runs inside `name` (None: the current namespace)."""
    return list(cmd) if name is None else ["ip", "netns", "exec", name, *cmd]


def run(
    name: str | None, cmd: Sequence[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in namespace `name` and capture its output as text."""
    return subprocess.run(
        argv(name, cmd), check=check, capture_output=True, text=True, input=stdin
    )


def sysctl(name: str | None, settings: dict[str, str]) -> None:
    """Write sysctls (keys like "net.ipv4.ip_forward") inside namespace `name`."""
    with entered(name):
        for key, value in settings.items():
            Path("/proc/sys", *key.split(".")).write_text(value)
