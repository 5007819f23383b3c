"""Network namespaces: create, enter, run commands in them.

A namespace is given either by name (``ip netns`` style, a file in /run/netns) or by
an absolute path to a namespace file (``/proc/<pid>/ns/net``, what a node agent finds
for a pod's sandbox); every function here takes both.

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
# Where sysctls are read and written. A container's /proc/sys is read-only unless it is
# privileged; the chart mounts the node's /proc/sys/net (as Cilium does) and points this
# there. Entries under net/ are the namespace of the thread that opens them, whichever
# procfs mount the path goes through.
PROC_SYS = Path(os.environ.get("DYSCO_PROC_SYS", "/proc/sys"))
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def path(ns: str) -> Path:
    """The namespace file: `ns` itself if absolute, else the one `ip netns` manages."""
    return Path(ns) if ns.startswith("/") else NETNS_DIR / ns


def exists(ns: str) -> bool:
    return path(ns).exists()


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
def entered(ns: str | None) -> Iterator[None]:
    """Run the body with the calling thread in namespace `ns` (None: stay put)."""
    if ns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path(ns), os.O_RDONLY)
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


def open_socket(ns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `ns` whatever thread uses it later."""
    with entered(ns):
        return socket.socket(family, kind, proto)


def argv(ns: str | None, cmd: Sequence[str]) -> list[str]:
    """`cmd` prefixed so that it runs inside `ns` (None: the current namespace)."""
    return list(cmd) if ns is None else ["nsenter", f"--net={path(ns)}", "--", *cmd]


def run(
    ns: str | None, cmd: Sequence[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in namespace `ns` and capture its output as text."""
    return subprocess.run(
        argv(ns, cmd), check=check, capture_output=True, text=True, input=stdin
    )


def sysctl(ns: str | None, settings: dict[str, str]) -> None:
    """Write sysctls (keys like "net.ipv4.ip_forward") inside namespace `ns`."""
    with entered(ns):
        for key, value in settings.items():
            PROC_SYS.joinpath(*key.split(".")).write_text(value)


def read_sysctl(ns: str | None, key: str) -> str:
    """A sysctl's value inside namespace `ns`."""
    with entered(ns):
        return PROC_SYS.joinpath(*key.split(".")).read_text().strip()
