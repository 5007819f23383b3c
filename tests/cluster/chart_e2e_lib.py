"""Shared helpers of the chart end-to-end tests on the local cluster (scripts/cluster/).

Every chart test module installs the chart (release ``dysco`` in ``dysco-e2e``) for itself
with ``chart_installed(ns)``: it holds a host-wide lock meanwhile (two operators would fight
over the plans) and removes everything it created. The images are built once per process.
Everything here FAILS (does not skip) when the cluster is not up.

(Not a conftest.py: tests/netns does ``from conftest import ...`` and a second rootless
conftest module would shadow it.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = Path(os.environ.get("DYSCO_KUBECONFIG", ROOT / ".cluster" / "kubeconfig"))
HELM = ROOT / ".venv" / "bin" / "helm"
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"  # v1.20.2, built with the cluster
RELEASE, SYSTEM_NS, TAG = "dysco", "dysco-e2e", "e2e"
IMAGE = "dysco/base:bookworm"
GROUP, VERSION = "dysco.io", "v1alpha1"


def wait_for(fn: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll ``fn`` until it returns something truthy (API errors count as "not yet")."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except client.ApiException as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def run(*cmd: str, timeout: float = 600) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "KUBECONFIG": str(KUBECONFIG)})
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out.stdout


def kubectl(*args: str, timeout: float = 120) -> str:
    return run(str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args, timeout=timeout)


def cond(obj: dict[str, Any], t: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c["type"] == t:
            return c  # type: ignore[no-any-return]
    return {}


def drop_finalizers(api: Any, ns: str) -> None:
    """Without a running operator nothing releases a chain: clear the finalizers by hand."""
    co = client.CustomObjectsApi(api)
    try:
        items = co.list_namespaced_custom_object(GROUP, VERSION, ns, "servicechains")["items"]
    except client.ApiException:
        return
    for sc in items:
        co.patch_namespaced_custom_object(GROUP, VERSION, ns, "servicechains",
                                          sc["metadata"]["name"],
                                          {"metadata": {"finalizers": None}})


def _helm_uninstall(timeout: str = "120s") -> None:
    subprocess.run([str(HELM), "uninstall", RELEASE, "-n", SYSTEM_NS, "--wait",
                    "--timeout", timeout], env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
                   capture_output=True, timeout=180)


@contextlib.contextmanager
def cluster_lock() -> Iterator[None]:
    """One chart install per cluster at a time: two operators would fight over the plans."""
    with open("/tmp/dysco-chart-e2e.lock", "w") as f:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another chart e2e run holds /tmp/dysco-chart-e2e.lock")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def kube_client() -> Any:
    if not KUBECONFIG.exists():
        pytest.fail(f"{KUBECONFIG} missing: start the local cluster with `make cluster-up`",
                    pytrace=False)
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    try:
        client.CoreV1Api(api).list_node(_request_timeout=5)
    except Exception as e:
        pytest.fail(f"local cluster not reachable ({e}): `make cluster-up`", pytrace=False)
    return api


_built: set[str] = set()


def build_images() -> None:
    """dysco/operator:e2e and dysco/agent:e2e, built once per process with the cluster's dockerd."""
    if TAG not in _built:
        run(str(ROOT / "scripts" / "build-images.sh"), TAG, timeout=1200)
        _built.add(TAG)


@contextlib.contextmanager
def chart_installed(ns: str, values: tuple[Path, ...] = ()) -> Iterator[Any]:
    """Lock, cluster check, images, then the chart and an empty namespace ``ns``: yields the
    API client. Everything is removed on exit (see ``installed_chart``)."""
    with cluster_lock():
        api = kube_client()
        build_images()
        with installed_chart(api, ns, values):
            yield api


@contextlib.contextmanager
def installed_chart(api: Any, ns: str, values: tuple[Path, ...] = ()) -> Iterator[Any]:
    """The chart installed (operator + agents) and an empty namespace ``ns`` for the test;
    ``values`` are more values files, after ``ci/local-cluster-values.yaml``.

    On exit: the chains are deleted while the operator still runs (its finalizer releases
    them), then the Deployments and pods (forced), the namespace and the release.
    """
    core = client.CoreV1Api(api)
    # a run that crashed may have left its release or namespace behind
    subprocess.run([str(HELM), "uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"],
                   env={**os.environ, "KUBECONFIG": str(KUBECONFIG)}, capture_output=True,
                   timeout=180)
    drop_finalizers(api, ns)
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(ns)
    with contextlib.suppress(client.ApiException):
        for p in core.list_namespaced_pod(ns).items:
            core.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
    wait_for(lambda: not {ns, SYSTEM_NS} & {n.metadata.name for n in core.list_namespace().items
                                            if n.status.phase == "Terminating" or n.metadata.name
                                            == ns}, 120, "namespaces of an earlier run to go")
    try:
        run(str(HELM), "upgrade", "--install", RELEASE, str(ROOT / "charts" / "dysco"),
            "-n", SYSTEM_NS, "--create-namespace",
            "-f", str(ROOT / "charts" / "dysco" / "ci" / "local-cluster-values.yaml"),
            *(arg for v in values for arg in ("-f", str(v))),
            "--set", f"operator.image.tag={TAG},agent.image.tag={TAG}",
            "--wait", "--timeout", "240s")
        core.create_namespace({"metadata": {"name": ns}})
        # pods are refused until the namespace's default ServiceAccount has its token
        wait_for(lambda: core.read_namespaced_service_account("default", ns).secrets, 60,
                 "default ServiceAccount token")
        yield api
    finally:
        co = client.CustomObjectsApi(api)
        try:
            # chains first, while the operator runs: its finalizer releases them
            for sc in co.list_namespaced_custom_object(GROUP, VERSION, ns,
                                                       "servicechains")["items"]:
                co.delete_namespaced_custom_object(GROUP, VERSION, ns, "servicechains",
                                                   sc["metadata"]["name"])
            wait_for(lambda: not co.list_namespaced_custom_object(
                GROUP, VERSION, ns, "servicechains")["items"], 90, "chains released")
            # no controller may bring pods back while the namespace goes
            apps = client.AppsV1Api(api)
            for d in apps.list_namespaced_deployment(ns).items:
                apps.delete_namespaced_deployment(d.metadata.name, ns,
                                                  propagation_policy="Background")
            # force: kubelet 1.20 otherwise waits for sandbox GC before pods disappear
            for p in core.list_namespaced_pod(ns).items:
                core.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
            core.delete_namespace(ns)
        except (client.ApiException, AssertionError):
            drop_finalizers(api, ns)
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(ns)
        _helm_uninstall()
        # the control-key Secret is kept by design; the tests leave nothing behind
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(SYSTEM_NS)
