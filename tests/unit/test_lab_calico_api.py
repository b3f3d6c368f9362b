"""The lab's API server serves Calico's projectcalico.org/v3 GlobalNetworkPolicy, NetworkPolicy
(namespaced) and HostEndpoint as if Calico's API server were installed, validates them with the
compiler's parsers, `lab apply` / `lab delete` take them, and a Node's labels (ibm.role) are set
with `lab apply`. The server runs over TCP on 127.0.0.1 and a unix socket in a temporary
directory (no root, no namespaces, no agents)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.lab import manifests, topology
from controller.lab.admission import LabAdmission
from controller.lab.kubelet_objects import node_object
from controller.lab.responders import Responders
from controller.lab.state import LabConfig
from controller.lab.store import ApiError, Store
from tests.support.calico_objects import (
    GNP,
    GNP_KEY,
    GROUP,
    HEP,
    HEP_KEY,
    MANIFEST,
    NETPOL,
    NETPOL_KEY,
    VERSION,
    calico_netpol,
    gnp,
    hep,
)
from tests.support.lab_api import api_get, cluster_round_trip, custom_objects, lab_manifest, watch_events


@pytest.fixture
def api() -> Iterator[tuple[Store, Any]]:
    """A store with namespaces x and y, served over TCP, and the official client's
    CustomObjectsApi on it."""
    store = Store(window=50)
    for name in ("x", "y"):
        store.create("namespaces", {"metadata": {"name": name}})
    with custom_objects(store) as objects:
        yield store, objects


def causes(err: ApiError) -> dict[str, str]:
    return {c["field"]: c["message"] for c in (err.details or {})["causes"]}


def test_global_network_policies_and_host_endpoints_are_created_read_listed_replaced_and_deleted(
    api: tuple[Store, Any],
) -> None:
    store, objects = api
    pair = (gnp("a"), gnp("b", order=5))
    cluster_round_trip(store, objects, (GROUP, VERSION, GNP), GNP_KEY, pair, "order")
    objects.create_cluster_custom_object(GROUP, VERSION, HEP, hep())
    assert objects.get_cluster_custom_object(GROUP, VERSION, HEP, "node-1-public")["spec"]["node"] == "node-1"
    objects.delete_cluster_custom_object(GROUP, VERSION, HEP, "node-1-public")
    assert store.list(HEP_KEY)[0] == []


def test_calico_network_policies_are_namespaced_listed_across_namespaces_and_apart_from_kubernetes_ones(
    api: tuple[Store, Any],
) -> None:
    store, objects = api
    objects.create_namespaced_custom_object(GROUP, VERSION, "x", NETPOL, calico_netpol("x", "p"))
    objects.create_namespaced_custom_object(GROUP, VERSION, "y", NETPOL, calico_netpol("y", "p"))
    kubernetes_policy = {"metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}
    store.create("networkpolicies", kubernetes_policy)  # same namespace and name, other group
    in_x = objects.list_namespaced_custom_object(GROUP, VERSION, "x", NETPOL)
    assert in_x["kind"] == "NetworkPolicyList" and len(in_x["items"]) == 1
    everywhere = objects.list_cluster_custom_object(GROUP, VERSION, NETPOL)
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]] == [
        ("x", "p"),
        ("y", "p"),
    ]
    assert [p["apiVersion"] for p in store.list("networkpolicies")[0]] == ["networking.k8s.io/v1"]
    assert [p["apiVersion"] for p in store.list(NETPOL_KEY, "x")[0]] == [f"{GROUP}/{VERSION}"]
    got = objects.get_namespaced_custom_object(GROUP, VERSION, "y", NETPOL, "p")
    got["spec"]["order"] = 7
    objects.replace_namespaced_custom_object(GROUP, VERSION, "y", NETPOL, "p", got)
    assert store.get(NETPOL_KEY, "y", "p")["spec"]["order"] == 7  # type: ignore[index]
    objects.delete_namespaced_custom_object(GROUP, VERSION, "x", NETPOL, "p")
    assert [p["metadata"]["namespace"] for p in store.list(NETPOL_KEY)[0]] == ["y"]
    assert store.get("networkpolicies", "x", "p") is not None  # Kubernetes' one is untouched
    store.delete("namespaces", "", "y")  # a namespace takes its Calico policies with it
    assert store.list(NETPOL_KEY)[0] == []


def test_a_watch_of_calico_network_policies_in_every_namespace_streams_their_changes_and_bookmarks(
    api: tuple[Store, Any],
) -> None:
    store, objects = api
    rv = store.create(NETPOL_KEY, calico_netpol("x", "a"))["metadata"]["resourceVersion"]
    store.replace(NETPOL_KEY, calico_netpol("x", "a", order=3))
    store.create("networkpolicies", {"metadata": {"name": "a", "namespace": "x"}})  # not on this watch
    store.create(NETPOL_KEY, calico_netpol("y", "b"))
    store.delete(NETPOL_KEY, "x", "a")
    events = watch_events(objects, (GROUP, VERSION, NETPOL), rv)
    changes = [
        (e["type"], e["object"]["metadata"].get("namespace"), e["object"]["metadata"].get("name"))
        for e in events
        if e["type"] != "BOOKMARK"
    ]
    assert changes == [("MODIFIED", "x", "a"), ("ADDED", "y", "b"), ("DELETED", "x", "a")]
    bookmarks = [e["object"] for e in events if e["type"] == "BOOKMARK"]  # one per BOOKMARK_SECONDS
    assert (bookmarks[-1]["kind"], bookmarks[-1]["apiVersion"]) == ("NetworkPolicy", f"{GROUP}/{VERSION}")
    assert bookmarks[-1]["metadata"]["resourceVersion"] == str(store.resource_version)


def test_a_calico_policy_with_do_not_track_or_refused_fields_is_refused_naming_every_field(
    api: tuple[Store, Any],
) -> None:
    store, _ = api
    bad = gnp("bad", doNotTrack=True, tier="security", flavour="x")
    bad["spec"]["ingress"] += [
        {"action": "Allow", "protocol": "TCP", "source": {"ports": [22]}},
        {"action": "Allow", "http": {"methods": ["GET"]}},
    ]
    with pytest.raises(ApiError) as refused:
        store.create(GNP_KEY, bad)
    assert refused.value.code == 422
    assert refused.value.message.startswith('GlobalNetworkPolicy.projectcalico.org "bad" is invalid: [')
    found = causes(refused.value)
    assert found["spec.doNotTrack"] == (
        "Invalid value: true: only false is supported: vethguard tracks every connection it allows"
    )
    assert found["spec.tier"].startswith("Invalid value: \"security\": only the 'default' tier")
    assert found["spec.flavour"] == 'Invalid value: "x": unknown field'
    assert found["spec.ingress[2].source.ports"].startswith("Invalid value: [22]: source ports")
    assert found["spec.ingress[3].http"].startswith('Invalid value: {"methods": ["GET"]}: HTTP matching')
    assert store.list(GNP_KEY)[0] == []
    namespaced = calico_netpol("x", "n", preDNAT=True)
    namespaced["spec"]["ingress"][0]["notProtocol"] = "UDP"
    with pytest.raises(ApiError) as refused:
        store.create(NETPOL_KEY, namespaced)
    assert refused.value.message.startswith('NetworkPolicy.projectcalico.org "n" is invalid: [')
    assert {"spec.preDNAT", "spec.ingress[0].notProtocol"} <= set(causes(refused.value))
    with pytest.raises(ApiError, match=re.escape('unknown field "specs"')) as strict:
        store.create(GNP_KEY, {**gnp("c"), "specs": {}})
    assert strict.value.code == 400  # beside metadata and spec: strict decoding, as for every kind
    assert store.write_unvalidated(bad)["spec"]["doNotTrack"] is True  # for the agents to report


def test_a_host_endpoint_without_a_node_or_an_interface_or_with_ports_is_refused() -> None:
    store = Store()
    with pytest.raises(ApiError) as refused:
        store.create(HEP_KEY, hep(node=""))
    assert refused.value.code == 422 and causes(refused.value) == {"spec.node": 'Invalid value: "": required'}
    unplaced = hep()
    del unplaced["spec"]["interfaceName"], unplaced["spec"]["expectedIPs"]
    with pytest.raises(ApiError, match=re.escape("either interfaceName or expectedIPs is required")):
        store.create(HEP_KEY, unplaced)
    with pytest.raises(ApiError) as refused:
        store.create(HEP_KEY, hep(ports=[{"name": "web", "port": 80, "protocol": "TCP"}], expectedIPs=["x"]))
    assert set(causes(refused.value)) == {"spec.ports", "spec.expectedIPs[0]"}
    assert store.create(HEP_KEY, hep(profiles=["p"]))["spec"]["profiles"] == ["p"]


def test_discovery_lists_projectcalico_org_v3_with_its_three_resources(api: tuple[Store, Any]) -> None:
    _, objects = api
    groups = {g["name"]: g["preferredVersion"]["groupVersion"] for g in api_get(objects, "/apis")["groups"]}
    assert groups[GROUP] == f"{GROUP}/{VERSION}"
    assert groups["networking.k8s.io"] == "networking.k8s.io/v1"
    resources = {
        r["name"]: (r["kind"], r["namespaced"])
        for r in api_get(objects, f"/apis/{GROUP}/{VERSION}")["resources"]
    }
    assert resources == {
        GNP: ("GlobalNetworkPolicy", False),
        NETPOL: ("NetworkPolicy", True),
        HEP: ("HostEndpoint", False),
    }


def test_lab_apply_creates_and_configures_calico_s_kinds_and_lab_delete_removes_them(
    cli_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_store.create("namespaces", {"metadata": {"name": "x"}})

    def lab(verb: str, text: str) -> int:
        return lab_manifest(tmp_path, verb, text)

    assert lab("apply", MANIFEST) == 0
    assert lab("apply", MANIFEST.replace("order: 100", "order: 50")) == 0
    assert cli_store.get(NETPOL_KEY, "x", "allow-web")["spec"]["order"] == 50  # type: ignore[index]
    assert cli_store.list("networkpolicies")[0] == []
    assert lab("delete", MANIFEST) == 0
    assert [cli_store.list(key)[0] for key in (GNP_KEY, NETPOL_KEY, HEP_KEY)] == [[], [], []]
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "networkpolicy.projectcalico.org/x/allow-web created",
        "globalnetworkpolicy.projectcalico.org/deny-nodeports created",
        "hostendpoint.projectcalico.org/node-1-public created",
    ]
    assert out[6:] == [
        "hostendpoint.projectcalico.org/node-1-public deleted",
        "globalnetworkpolicy.projectcalico.org/deny-nodeports deleted",
        "networkpolicy.projectcalico.org/x/allow-web deleted",
    ]


def test_lab_apply_of_a_refused_calico_policy_says_which_fields(
    cli_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lab_manifest(tmp_path, "apply", json.dumps(gnp("bad", doNotTrack=True))) != 0
    err = capsys.readouterr().err
    assert 'GlobalNetworkPolicy.projectcalico.org "bad" is invalid' in err and "spec.doNotTrack" in err


def test_manifests_tell_calico_s_network_policy_from_kubernetes_by_its_api_version() -> None:
    calico_policy = manifests.parse("m#1", calico_netpol())
    assert calico_policy.resource.key == NETPOL_KEY
    assert calico_policy.display == "networkpolicy.projectcalico.org/x/allow-web"
    kube = manifests.parse("m#2", {**calico_netpol(), "apiVersion": "networking.k8s.io/v1"})
    assert kube.resource.key == "networkpolicies" and kube.display == "networkpolicy/x/allow-web"
    with pytest.raises(
        manifests.ManifestError,
        match=re.escape("NetworkPolicy must have apiVersion networking.k8s.io/v1 or projectcalico.org/v3"),
    ):
        manifests.parse("m#3", {**calico_netpol(), "apiVersion": "crd.projectcalico.org/v1"})
    with pytest.raises(manifests.ManifestError, match=re.escape("must have apiVersion projectcalico.org/v3")):
        manifests.parse("m#4", {**hep(), "apiVersion": "v1"})


def test_lab_apply_of_a_node_sets_an_ibm_role_label_and_keeps_kubelet_s(
    cli_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_store.create("nodes", node_object(1))
    responders = Responders()
    try:
        cli_store.admission = LabAdmission(LabConfig("t", 1), cli_store, topology.Topology("t"), responders)
        node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {ibm.role: worker_public}\n"
        assert lab_manifest(tmp_path, "apply", node) == 0
    finally:
        responders.close()
    labels = cli_store.get("nodes", "", "node-1")["metadata"]["labels"]  # type: ignore[index]
    assert labels == {
        "ibm.role": "worker_public",
        "kubernetes.io/hostname": "node-1",
        "kubernetes.io/os": "linux",
    }
    assert capsys.readouterr().out.splitlines() == ["node/node-1 configured"]
