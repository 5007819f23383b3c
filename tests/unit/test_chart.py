"""The Helm chart: lint, render, validate for Kubernetes 1.20 and 1.30; CRDs and examples.

Needs helm in the venv (`make cluster-tools`, scripts/cluster/tools.sh) and the 1.20 JSON schemas
(``scripts/fetch-k8s-schemas.sh``); both are offline afterwards. Missing tools FAIL.
"""

from __future__ import annotations

import base64
import copy
import filecmp
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dysco"
HELM = ROOT / ".venv" / "bin" / "helm"
EXTRA_SCHEMAS = ROOT / ".venv" / "share" / "dysco" / "kubernetes-json-schema"
CR_KINDS = {"ClusterKopfPeering", "ServiceMonitor"}  # custom resources: checked separately


def helm(*args: str) -> str:
    assert HELM.exists(), f"{HELM} missing: run `make cluster-tools` (scripts/cluster/tools.sh)"
    out = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def render(kube_version: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "-n", "dysco-system", "--include-crds",
            "--kube-version", kube_version]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def _schema_validator(doc: dict[str, Any], version: str) -> jsonschema.protocols.Validator:
    """A strict validator for ``doc`` (built-in kinds) from kubernetes-validate's schemas,
    or from the 1.20 schemas that scripts/fetch-k8s-schemas.sh puts next to the venv."""
    mm = ".".join(version.split(".")[:2])
    api = doc["apiVersion"]
    group, _, ver = api.rpartition("/")
    name = f"{doc['kind'].lower()}-{(group.split('.')[0] + '-') if group else ''}{ver}.json"
    bundled = [v for v in kubernetes_validate.utils.all_versions()
               if v.rsplit(".", 1)[0] == mm]
    if bundled:
        base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
        d = base / f"v{bundled[0]}-local-strict"
    else:
        d = EXTRA_SCHEMAS / f"v{mm}.0-local-strict"
        assert d.exists(), f"{d} missing: run scripts/fetch-k8s-schemas.sh"
    path = d / name
    assert path.exists(), f"Kubernetes {version} has no {doc['kind']} in {api}"
    schema = json.loads(path.read_text())
    defs = json.loads((d / "_definitions.json").read_text())
    registry: Registry = Registry().with_resources([
        ("_definitions.json", Resource.from_contents(defs, default_specification=DRAFT202012)),
    ])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_helm_lint_strict() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


VARIANTS = [
    (),
    ("metrics.serviceMonitor.enabled=true", "controlChannel.existingSecret=my-key",
     "agent.privileged=true", "operator.hostNetwork=true", "operator.replicas=1",
     "agent.runtimeSocket="),
]


@pytest.mark.parametrize("kube_version", ["1.20.2", "1.30.0"])
@pytest.mark.parametrize("sets", VARIANTS, ids=["defaults", "options"])
def test_rendered_manifests_are_valid(kube_version: str, sets: tuple[str, ...]) -> None:
    docs = render(kube_version, *sets)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 3
    for doc in docs:
        if doc["kind"] in CR_KINDS:
            continue
        errors = sorted(_schema_validator(doc, kube_version).iter_errors(doc), key=str)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors[0].message}"


@pytest.mark.parametrize("values", sorted((CHART / "ci").glob("*-values.yaml")),
                         ids=lambda p: p.name)
def test_ci_values_files_render_valid_manifests(values: Path) -> None:
    docs = [d for d in yaml.safe_load_all(helm(
        "template", "rel", str(CHART), "-n", "dysco-system", "--kube-version", "1.20.2",
        "-f", str(values))) if d]
    for doc in docs:
        if doc["kind"] not in CR_KINDS:
            errors = list(_schema_validator(doc, "1.20.2").iter_errors(doc))
            assert not errors, f"{doc['kind']}: {errors[0].message}"


def test_api_versions_follow_the_cluster() -> None:
    pdb = {v: next(d for d in render(v) if d["kind"] == "PodDisruptionBudget")
           for v in ("1.20.2", "1.30.0")}
    assert pdb["1.20.2"]["apiVersion"] == "policy/v1beta1"
    assert pdb["1.30.0"]["apiVersion"] == "policy/v1"


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_workloads_security_and_ha() -> None:
    docs = render("1.30.0")
    dep = by_kind(docs, "Deployment")[0]
    assert dep["spec"]["replicas"] == 2
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert any(a.startswith("--peering=") for a in c["args"])
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    ds = by_kind(docs, "DaemonSet")[0]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc["privileged"] is False
    assert {"NET_ADMIN", "SYS_ADMIN", "NET_RAW"} <= set(sc["capabilities"]["add"])
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["DYSCO_KEYS_DIR"]["value"] == "/etc/dysco/keys"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["control-keys"]["secret"]["secretName"] == "rel-dysco-control-key"
    assert pod["containers"][0]["args"][0] == "agent"
    assert by_kind(docs, "ClusterKopfPeering")[0]["metadata"]["name"] in " ".join(c["args"])
    assert not by_kind(docs, "ServiceMonitor")


def test_rbac_is_least_privilege() -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(render("1.30.0"), "ClusterRole")}
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "secrets" not in rule["resources"]
    agent = roles["rel-dysco-agent"]["rules"]
    writes = {(r, v) for rule in agent for r in rule["resources"] for v in rule["verbs"]
              if v not in ("get", "list", "watch")}
    assert writes == {("dysconodeplans/status", "patch")}
    op = roles["rel-dysco-operator"]["rules"]
    core = next(r for r in op if r["apiGroups"] == [""] and "pods" in r["resources"])
    assert core["verbs"] == ["get", "list", "watch"]


def test_hmac_secret_generated_and_kept() -> None:
    secret = by_kind(render("1.30.0"), "Secret")[0]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["key-1"])
    assert len(key) == 64 and key.isalnum()
    assert base64.b64decode(secret["data"]["current"]) == b"1"
    assert not by_kind(render("1.30.0", "controlChannel.existingSecret=mine"), "Secret")
    assert "lookup" in (CHART / "templates" / "secret.yaml").read_text()


def test_values_schema_refuses_typos_and_bad_enums() -> None:
    for bad, needle in (("operator.replica=3", "replica"),
                        ("agent.netnsResolver=magic", "netnsResolver"),
                        ("operator.image.pullPolicy=Sometimes", "pullPolicy")):
        out = subprocess.run([str(HELM), "template", "rel", str(CHART), "--set", bad],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and needle in out.stderr, (bad, out.stderr)


def test_uninstall_hook_deletes_chains_first() -> None:
    docs = render("1.30.0")
    job = by_kind(docs, "Job")[0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python", "-m", "dysco_operator.cleanup"]
    role = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-cleanup")]
    assert role[0]["rules"] == [{"apiGroups": ["dysco.io"], "resources": ["servicechains"],
                                 "verbs": ["list", "delete"]}]
    assert not by_kind(render("1.30.0", "cleanupOnUninstall.enabled=false"), "Job")


def test_service_monitor_optional() -> None:
    sms = by_kind(render("1.30.0", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert sorted(s["spec"]["endpoints"][0]["port"] for s in sms) == ["http", "metrics"]


# ------------------------------------------------------------------ CRDs

def test_chart_crds_identical_to_top_level() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top == chart, "charts/dysco/crds must hold exactly the files of crds/"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", top, shallow=False)
    assert not mismatch and not errors, (
        f"differ: {mismatch + errors}; run: cp crds/*.yaml charts/dysco/crds/")


def crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / f"{name}.yaml").read_text())  # type: ignore[no-any-return]


def chain_schema() -> dict[str, Any]:
    return crd("servicechains.dysco.io")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


GOOD = {
    "apiVersion": "dysco.io/v1alpha1", "kind": "ServiceChain",
    "metadata": {"name": "c", "namespace": "default"},
    "spec": {
        "source": {"selector": {"matchLabels": {"app": "client"}}},
        "destination": {"service": {"name": "web"}, "ports": [{"port": 80}]},
        "hops": [{"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}, "kind": "proxy"}],
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GOOD)
    obj["spec"].update(changes)
    return obj


@pytest.mark.parametrize(("obj", "needle"), [
    (with_spec(hops=[]), "should be non-empty"),
    (with_spec(hops=[{"name": "Bad_Name", "selector": {"matchLabels": {"a": "b"}}}]),
     "does not match"),
    (with_spec(hops=[{"name": "fw", "selector": {}}]), "should be non-empty"),
    (with_spec(hops=[{"name": "fw", "selector": {"matchLabels": {"a": "b"}},
                      "kind": "router"}]), "is not one of"),
    (with_spec(destination={"service": {"name": "web"}, "ports": [{"port": 70000}]}),
     "is greater than the maximum"),
    (with_spec(destination={"service": {"name": "web"}, "selector": {"matchLabels": {"a": "b"}},
                            "ports": [{"port": 80}]}), "valid under each of"),
    (with_spec(destination={"ports": [{"port": 80}]}), "is not valid under any"),
    (with_spec(drainTimeoutSeconds=0), "is less than the minimum"),
    (with_spec(updatePolicy="sometimes"), "is not one of"),
])
def test_invalid_chains_rejected_by_schema(obj: dict[str, Any], needle: str) -> None:
    errors = list(jsonschema.Draft4Validator(chain_schema()).iter_errors(obj))
    assert errors and any(needle in e.message for e in errors), [e.message for e in errors]


def test_valid_chain_accepted_by_schema() -> None:
    jsonschema.Draft4Validator(chain_schema()).validate(GOOD)
    hops8 = [{"name": f"h{i}", "selector": {"matchLabels": {"nf": str(i)}}} for i in range(8)]
    jsonschema.Draft4Validator(chain_schema()).validate(with_spec(hops=hops8))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(chain_schema()).validate(
            with_spec(hops=[*hops8, {"name": "h9", "selector": {"matchLabels": {"a": "b"}}}]))


def test_crd_conventions() -> None:
    sc = crd("servicechains.dysco.io")
    v = sc["spec"]["versions"][0]
    assert sc["spec"]["names"]["shortNames"] == ["sc", "schain"]
    assert v["subresources"] == {"status": {}}
    cols = [c["name"].upper() for c in v["additionalPrinterColumns"] if not c.get("priority")]
    assert cols == ["READY", "HOPS", "SESSIONS", "REVISION", "BY-REVISION", "AGE"]
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    cond = status["conditions"]["items"]
    assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(cond["required"])
    assert "observedGeneration" in cond["properties"]
    assert "x-kubernetes-validations" not in json.dumps(sc)  # dropped by 1.20
    plan = crd("dysconodeplans.dysco.io")
    assert plan["spec"]["scope"] == "Cluster"
    assert plan["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_kind_config_is_multi_node() -> None:
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    roles = [n["role"] for n in cfg["nodes"]]
    assert (cfg["kind"], roles) == ("Cluster", ["control-plane", "worker", "worker"])
