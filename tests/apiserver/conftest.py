"""A real etcd + kube-apiserver on 127.0.0.1 for the `apiserver` tests.

Binaries: kube-apiserver from $DYSCO_K8S_BIN or /var/cache/dysco/k8s/bin (built from
Debian's kubernetes source by `make cluster-build`), etcd from there or $PATH. If they
are missing the tests FAIL (CI builds them first); they never skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(os.environ.get("DYSCO_K8S_BIN", "/var/cache/dysco/k8s/bin"))
ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-token"
# Tokens for RBAC checks: users bound by the tests to the chart's ClusterRoles.
OPERATOR_TOKEN = "operator-token"
AGENT_TOKEN = "agent-token"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.apiserver)
            # the test apiserver has a self-signed certificate (loopback only)
            item.add_marker(pytest.mark.filterwarnings(
                "ignore::urllib3.exceptions.InsecureRequestWarning"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    url: str
    kubeconfig: Path
    workdir: Path
    log: Path

    def kubeconfig_for(self, token: str, name: str) -> Path:
        path = self.workdir / f"kubeconfig-{name}"
        path.write_text(_kubeconfig(self.url, token))
        return path


def _kubeconfig(url: str, token: str) -> str:
    return f"""apiVersion: v1
kind: Config
clusters: [{{name: local, cluster: {{server: "{url}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: {token}}}}}]
contexts: [{{name: local, context: {{cluster: local, user: u, namespace: default}}}}]
current-context: local
"""


def _find(name: str) -> str:
    p = BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found in {BIN} or $PATH: build the local Kubernetes binaries first "
            "(`make cluster-build`, see scripts/cluster/); these tests need a real apiserver",
            pytrace=False)
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    apiserver_bin = str(BIN / "kube-apiserver")
    if not Path(apiserver_bin).exists():
        pytest.fail(
            f"{apiserver_bin} is missing: build it with `make cluster-build` "
            "(Debian kubernetes source, scripts/cluster/build.sh); set DYSCO_K8S_BIN to use "
            "another directory", pytrace=False)
    etcd_bin = _find("etcd")
    work = tmp_path_factory.mktemp("apiserver")
    pki = work / "pki"
    pki.mkdir()
    subprocess.run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"], check=True,
                   capture_output=True)
    (pki / "tokens.csv").write_text(
        f"{ADMIN_TOKEN},admin,admin,system:masters\n"
        f"{OPERATOR_TOKEN},dysco-operator,dysco-operator\n"
        f"{AGENT_TOKEN},dysco-agent,dysco-agent\n")
    etcd_client, etcd_peer, port = free_port(), free_port(), free_port()
    etcd_log = open(work / "etcd.log", "wb")  # noqa: SIM115 (closed in teardown)
    etcd = subprocess.Popen(
        [etcd_bin, "--data-dir", str(work / "etcd"), "--name", "default",
         "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
         "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
         "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"],
        stdout=etcd_log, stderr=subprocess.STDOUT)
    log = work / "apiserver.log"
    api_log = open(log, "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [apiserver_bin, f"--etcd-servers=http://127.0.0.1:{etcd_client}",
         "--bind-address=127.0.0.1", f"--secure-port={port}", "--insecure-port=0",
         "--advertise-address=127.0.0.1", f"--cert-dir={pki}",
         f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=RBAC",
         f"--service-account-key-file={pki / 'sa.key'}",
         f"--service-account-signing-key-file={pki / 'sa.key'}",
         "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
         "--service-cluster-ip-range=10.96.0.0/24", "--endpoint-reconciler-type=none",
         "--disable-admission-plugins=ServiceAccount", "--allow-privileged=true"],
        stdout=api_log, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + 90
    ready = False
    try:
        while time.monotonic() < deadline:
            if api.poll() is not None or etcd.poll() is not None:
                break
            try:
                req = urllib.request.Request(f"{url}/readyz",
                                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                    if r.read().strip() == b"ok":
                        ready = True
                        break
            except OSError:
                pass
            time.sleep(0.2)
        if not ready:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"kube-apiserver did not become ready:\n{tail}", pytrace=False)
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(_kubeconfig(url, ADMIN_TOKEN))
        yield ApiServer(url=url, kubeconfig=kubeconfig, workdir=work, log=log)
    finally:
        _stop(api)
        _stop(etcd)
        api_log.close()
        etcd_log.close()
