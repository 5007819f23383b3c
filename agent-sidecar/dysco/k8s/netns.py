"""Finding a pod's network namespace on this node, behind one small interface.

Resolvers, tried in order by `ChainedResolver`:
- `DockerResolver`: ``docker inspect`` of one of the pod's containers -> PID.
- `CrictlResolver`: ``crictl inspect`` (containerd, CRI-O) -> PID.
- `ProcScanResolver`: scan /proc/<pid>/net/fib_trie for the pod IP (needs hostPID; no setns).
The result is a path like ``/proc/<pid>/ns/net``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    ip: str
    container_ids: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class NetnsResolver(Protocol):
    def resolve(self, pod: PodRef) -> str | None:
        """A netns path for the pod, or None when this resolver cannot tell."""
        ...


def _run(cmd: Sequence[str], timeout: float = 5.0) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _pid_path(proc: Path, pid: int) -> str | None:
    p = proc / str(pid) / "ns" / "net"
    return str(p) if pid > 0 and p.exists() else None


class DockerResolver:
    def __init__(self, docker: str = "docker", proc: Path = Path("/proc")) -> None:
        self.docker, self.proc = docker, proc

    def resolve(self, pod: PodRef) -> str | None:
        for cid in pod.container_ids:
            runtime, _, ident = cid.partition("://")
            if runtime != "docker" or not ident:
                continue
            out = _run([self.docker, "inspect", "-f", "{{.State.Pid}}", ident])
            if out and out.strip().isdigit():
                return _pid_path(self.proc, int(out.strip()))
        return None


class CrictlResolver:
    def __init__(self, crictl: str = "crictl", proc: Path = Path("/proc")) -> None:
        self.crictl, self.proc = crictl, proc

    def resolve(self, pod: PodRef) -> str | None:
        for cid in pod.container_ids:
            runtime, _, ident = cid.partition("://")
            if runtime not in ("containerd", "cri-o") or not ident:
                continue
            out = _run([self.crictl, "inspect", ident])
            if not out:
                continue
            try:
                pid = int(json.loads(out).get("info", {}).get("pid", 0))
            except (ValueError, AttributeError):
                continue
            return _pid_path(self.proc, pid)
        return None


class ProcScanResolver:
    """Find a process whose network namespace has the pod IP as a local address."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def resolve(self, pod: PodRef) -> str | None:
        seen: set[int] = set()
        for entry in self.proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ino = os.stat(entry / "ns" / "net").st_ino
                if ino in seen:
                    continue
                seen.add(ino)
                if _has_local_ip((entry / "net" / "fib_trie").read_text(), pod.ip):
                    return str(entry / "ns" / "net")
            except OSError:
                continue
        return None


def _has_local_ip(fib_trie: str, ip: str) -> bool:
    """True when fib_trie lists ``ip`` as a /32 host LOCAL entry."""
    lines = fib_trie.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip().endswith(ip) and line.strip().split()[-1] == ip \
                and "/32 host LOCAL" in lines[i + 1]:
            return True
    return False


class StaticResolver:
    """A fixed pod-key -> path table (tests, or a CNI that publishes paths)."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        self.paths = dict(paths)

    def resolve(self, pod: PodRef) -> str | None:
        return self.paths.get(pod.key)


class ChainedResolver:
    def __init__(self, resolvers: Sequence[NetnsResolver]) -> None:
        self.resolvers = list(resolvers)

    def resolve(self, pod: PodRef) -> str | None:
        for r in self.resolvers:
            path = r.resolve(pod)
            if path:
                return path
        return None


def make_resolver(kind: str) -> NetnsResolver:
    """``auto`` (docker/crictl if present, then /proc scan), ``docker``, ``crictl``, ``proc``."""
    if kind == "docker":
        return DockerResolver()
    if kind == "crictl":
        return CrictlResolver()
    if kind == "proc":
        return ProcScanResolver()
    if kind != "auto":
        raise ValueError(f"unknown netns resolver {kind!r}")
    chain: list[NetnsResolver] = []
    if shutil.which("docker"):
        chain.append(DockerResolver())
    if shutil.which("crictl"):
        chain.append(CrictlResolver())
    chain.append(ProcScanResolver())
    return ChainedResolver(chain)
