"""The CRDs on a real kube-apiserver (1.20): validation, defaulting, pruning, columns."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from .conftest import ADMIN_TOKEN, ApiServer
from .helpers import GROUP, VERSION, api_client, apply_crds, chain_body

NS = "crd-tests"


@pytest.fixture(scope="module")
def api(apiserver: ApiServer) -> Iterator[Any]:
    a = api_client(apiserver.kubeconfig)
    apply_crds(a)
    client.CoreV1Api(a).create_namespace({"metadata": {"name": NS}})
    yield a


def get_table(apiserver: ApiServer, path: str) -> dict[str, Any]:
    """What `kubectl get` shows: the server-side Table with the printer columns."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(apiserver.url + path, headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}",
        "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def create(api: Any, body: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, NS, "servicechains", body)


def refused(api: Any, body: dict[str, Any]) -> str:
    with pytest.raises(client.ApiException) as err:
        create(api, body)
    assert err.value.status == 422, err.value.body
    return str(json.loads(err.value.body)["message"])


@pytest.mark.parametrize(("name", "spec", "needles"), [
    ("no-hops", {"hops": []}, ["spec.hops", "at least 1 items"]),
    ("bad-hop-name", {"hops": [{"name": "FW_1", "selector": {"matchLabels": {"a": "b"}}}]},
     ["spec.hops.name", "should match"]),
    ("dup-hops", {"hops": [{"name": "fw", "selector": {"matchLabels": {"a": "b"}}},
                           {"name": "fw", "selector": {"matchLabels": {"a": "c"}}}]},
     ["spec.hops[1]", "Duplicate value"]),
    ("empty-selector", {"hops": [{"name": "fw", "selector": {}}]},
     ["spec.hops.selector", "at least 1 properties"]),
    ("bad-kind", {"hops": [{"name": "fw", "selector": {"matchLabels": {"a": "b"}},
                            "kind": "router"}]},
     ["spec.hops.kind", "Unsupported value", "transparent"]),
    ("too-many-hops", {"hops": [{"name": f"h{i}", "selector": {"matchLabels": {"a": str(i)}}}
                                for i in range(9)]}, ["spec.hops", "at most 8 items"]),
    ("bad-port", {"destination": {"service": {"name": "web"}, "ports": [{"port": 0}]}},
     ["spec.destination.ports.port", "greater than or equal to 1"]),
    ("no-ports", {"destination": {"service": {"name": "web"}, "ports": []}},
     ["spec.destination.ports", "at least 1 items"]),
    ("two-destinations", {"destination": {"service": {"name": "web"},
                                          "selector": {"matchLabels": {"a": "b"}},
                                          "ports": [{"port": 80}]}},
     ["spec.destination", "oneOf"]),
    ("bad-timeout", {"drainTimeoutSeconds": 0},
     ["spec.drainTimeoutSeconds", "greater than or equal to 1"]),
    ("bad-policy", {"updatePolicy": "whenever"}, ["spec.updatePolicy", "Unsupported value"]),
    ("bad-on-delete", {"onDelete": "explode"}, ["spec.onDelete", "Unsupported value"]),
])
def test_invalid_chain_is_refused_with_a_clear_message(
        api: Any, name: str, spec: dict[str, Any], needles: list[str]) -> None:
    msg = refused(api, chain_body(name, **spec))
    for needle in needles:
        assert needle in msg, msg


def test_missing_required_fields(api: Any) -> None:
    body = chain_body("no-source")
    del body["spec"]["source"]
    assert "spec.source: Required value" in refused(api, body)


def test_valid_chain_gets_defaults_and_unknown_fields_pruned(api: Any) -> None:
    body = chain_body("ok", hops=[
        {"name": "fw", "selector": {"matchLabels": {"nf": "fw"}}, "junk": 1},
        {"name": "tls", "selector": {"matchExpressions": [
            {"key": "nf", "operator": "In", "values": ["tls"]}]}, "kind": "proxy",
         "instanceChoice": "hash", "optional": True},
    ])
    body["spec"]["typo"] = True
    obj = create(api, body)
    spec = obj["spec"]
    assert "typo" not in spec and "junk" not in spec["hops"][0]
    assert spec["updatePolicy"] == "live"
    assert spec["drainTimeoutSeconds"] == 30
    assert spec["onDelete"] == "bypass"
    assert spec["destination"]["ports"] == [{"port": 80, "protocol": "TCP"}]
    assert spec["hops"][0] == {"name": "fw", "selector": {"matchLabels": {"nf": "fw"}},
                               "kind": "transparent", "instanceChoice": "roundRobin",
                               "optional": False}
    assert spec["hops"][1]["kind"] == "proxy" and spec["hops"][1]["optional"] is True
    assert obj["metadata"]["generation"] == 1


def test_status_is_a_subresource(api: Any) -> None:
    co = client.CustomObjectsApi(api)
    create(api, chain_body("st"))
    # status written through the main resource is ignored...
    co.patch_namespaced_custom_object(GROUP, VERSION, NS, "servicechains", "st",
                                      {"status": {"revision": 5}})
    assert "status" not in co.get_namespaced_custom_object(GROUP, VERSION, NS, "servicechains",
                                                           "st")
    # ...and validated through /status
    with pytest.raises(client.ApiException) as err:
        co.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, "servicechains", "st",
            {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}})
    assert err.value.status == 422


def test_printer_columns(api: Any, apiserver: ApiServer) -> None:
    create(api, chain_body("cols"))
    resp = get_table(apiserver, f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/servicechains")
    assert "cols" in [r["cells"][0] for r in resp["rows"]]
    names = [c["name"] for c in resp["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Name", "Ready", "Hops", "Sessions", "Revision", "By-Revision", "Age"]


def test_node_plan_schema(api: Any) -> None:
    co = client.CustomObjectsApi(api)
    with pytest.raises(client.ApiException) as err:
        co.create_cluster_custom_object(GROUP, VERSION, "dysconodeplans", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
            "metadata": {"name": "n0"}, "spec": {"nodeName": "n0", "revision": -1}})
    assert "spec.revision" in json.loads(err.value.body)["message"]
    obj = co.create_cluster_custom_object(GROUP, VERSION, "dysconodeplans", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DyscoNodePlan",
        "metadata": {"name": "n0"},
        "spec": {"nodeName": "n0", "revision": 1,
                 "chains": [{"name": "a/b", "revision": 1,
                             "hops": [{"name": "fw", "instances": ["10.0.0.1"]}]}],
                 "pods": [{"namespace": "a", "name": "fw", "uid": "u", "ip": "10.0.0.1",
                           "contentDelta": {"leftToRight": 27, "rightToLeft": -5}}]}})
    assert obj["spec"]["chains"][0]["updatePolicy"] == "live"
    assert obj["spec"]["chains"][0]["hops"][0]["kind"] == "transparent"
    assert obj["spec"]["pods"][0]["contentDelta"] == {"leftToRight": 27, "rightToLeft": -5}
    co.delete_cluster_custom_object(GROUP, VERSION, "dysconodeplans", "n0")
