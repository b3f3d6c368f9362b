"""The lab's API server serves ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, cluster
scoped) as the other kinds, `lab apply` / `lab delete` take it, and lab Nodes carry kubelet's
labels. The server runs over TCP on 127.0.0.1 and a unix socket in a temporary directory (no
root, no namespaces, no agents)."""

from __future__ import annotations

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
from tests.support.lab_api import api_get, cluster_round_trip, custom_objects, lab_manifest, watch_events

GROUP, VERSION, PLURAL = "policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies"


def cnp(name: str, priority: int = 10, action: str = "Deny", tier: str = "Admin") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "tier": tier,
            "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
            "ingress": [
                {"name": "r", "action": action, "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}
            ],
        },
    }


MANIFEST = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-y}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  ingress:
  - {name: no-y, action: Deny, from: [{namespaces: {matchLabels: {team: y}}}]}
"""


@pytest.fixture
def api() -> Iterator[tuple[Store, Any]]:
    """A store served over TCP and the official client's CustomObjectsApi on it."""
    store = Store(window=50)
    with custom_objects(store) as objects:
        yield store, objects


def test_cluster_network_policies_are_created_read_listed_replaced_and_deleted_cluster_wide(
    api: tuple[Store, Any],
) -> None:
    store, objects = api
    pair = (cnp("a"), cnp("b", priority=5))
    cluster_round_trip(store, objects, (GROUP, VERSION, PLURAL), PLURAL, pair, "priority")


def test_a_cluster_network_policy_watch_from_a_resource_version_streams_changes_and_bookmarks(
    api: tuple[Store, Any],
) -> None:
    store, objects = api
    store.create("namespaces", {"metadata": {"name": "x"}})
    rv = store.create(PLURAL, cnp("a"))["metadata"]["resourceVersion"]
    store.replace(PLURAL, cnp("a", priority=3))
    store.create("namespaces", {"metadata": {"name": "y"}})  # another kind: not on this watch
    store.delete(PLURAL, "", "a")
    events = watch_events(objects, (GROUP, VERSION, PLURAL), rv)
    changes = [(e["type"], e["object"]["metadata"].get("name")) for e in events if e["type"] != "BOOKMARK"]
    assert changes == [("MODIFIED", "a"), ("DELETED", "a")]
    bookmarks = [e["object"] for e in events if e["type"] == "BOOKMARK"]  # one per BOOKMARK_SECONDS
    assert bookmarks[-1]["kind"] == "ClusterNetworkPolicy"
    assert bookmarks[-1]["metadata"]["resourceVersion"] == str(store.resource_version)


def test_an_invalid_cluster_network_policy_is_refused_naming_its_fields_and_can_be_stored_unvalidated(
    api: tuple[Store, Any],
) -> None:
    store, _ = api
    bad = cnp("bad", priority=1001, action="Drop")
    with pytest.raises(ApiError) as refused:
        store.create(PLURAL, bad)
    assert refused.value.code == 422
    assert refused.value.message.startswith(
        'ClusterNetworkPolicy.policy.networking.k8s.io "bad" is invalid: ['
    )
    causes = {c["field"]: c["message"] for c in (refused.value.details or {})["causes"]}
    assert causes["spec.priority"].startswith("Invalid value: 1001: must be an integer in 0..1000")
    assert causes["spec.ingress[0].action"].startswith('Invalid value: "Drop"')
    unknown = cnp("unknown")
    unknown["spec"]["ingress"][0]["from"] = [{"namespaces": {}, "pods": {"podSelector": {}}}]
    with pytest.raises(ApiError, match=r"spec.ingress\[0\].from\[0\]"):
        store.create(PLURAL, unknown)
    with pytest.raises(ApiError, match=re.escape('unknown field "spec.order"')):
        store.create(PLURAL, {**cnp("c"), "spec": {**cnp("c")["spec"], "order": 1}})
    assert store.write_unvalidated(bad)["spec"]["priority"] == 1001  # for the agents to report
    assert store.list(PLURAL)[0][0]["metadata"]["name"] == "bad"


def test_discovery_names_the_group_and_the_cluster_scoped_resource_as_kubectl_reads_them(
    api: tuple[Store, Any],
) -> None:
    _, objects = api
    groups = {g["name"]: g["preferredVersion"]["groupVersion"] for g in api_get(objects, "/apis")["groups"]}
    assert groups[GROUP] == f"{GROUP}/{VERSION}"
    (resource,) = api_get(objects, f"/apis/{GROUP}/{VERSION}")["resources"]
    assert (resource["name"], resource["kind"], resource["namespaced"]) == (
        PLURAL,
        "ClusterNetworkPolicy",
        False,
    )
    assert {"list", "watch", "get", "create", "update", "delete"} <= set(resource["verbs"])


def test_lab_apply_creates_and_configures_a_cluster_network_policy_and_lab_delete_removes_it(
    cli_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def lab(verb: str, text: str) -> int:
        return lab_manifest(tmp_path, verb, text)

    assert lab("apply", MANIFEST) == 0
    assert lab("apply", MANIFEST.replace("priority: 10", "priority: 7")) == 0
    assert cli_store.get(PLURAL, "", "deny-y")["spec"]["priority"] == 7  # type: ignore[index]
    assert lab("delete", MANIFEST) == 0
    assert cli_store.list(PLURAL)[0] == []
    assert capsys.readouterr().out.splitlines() == [
        "clusternetworkpolicy/deny-y created",
        "clusternetworkpolicy/deny-y configured",
        "clusternetworkpolicy/deny-y deleted",
    ]


def test_manifests_of_cluster_network_policies_and_nodes_are_read_and_a_wrong_api_version_is_named() -> None:
    (policy,) = [manifests.parse("m#1", doc) for doc in [cnp("a")]]
    assert policy.display == "clusternetworkpolicy/a" and policy.namespace == ""
    node = manifests.parse("m#2", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    assert [m.resource.kind for m in manifests.apply_order([policy, node])] == [
        "Node",
        "ClusterNetworkPolicy",
    ]
    with pytest.raises(
        manifests.ManifestError, match=re.escape("must have apiVersion policy.networking.k8s.io/v1alpha2")
    ):
        manifests.parse("m#3", {**cnp("a"), "apiVersion": "policy.networking.k8s.io/v1alpha1"})


def test_lab_nodes_carry_kubelet_s_labels_and_a_replace_changes_only_their_other_labels(
    tmp_path: Path,
) -> None:
    store = Store()
    store.create("nodes", node_object(2))
    responders = Responders()
    try:
        store.admission = LabAdmission(LabConfig("t", 2), store, topology.Topology("t"), responders)
        labels = store.get("nodes", "", "node-2")["metadata"]["labels"]  # type: ignore[index]
        assert labels == {"kubernetes.io/hostname": "node-2", "kubernetes.io/os": "linux"}
        relabel = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-2", "labels": {"zone": "a"}},
        }
        stored = store.replace("nodes", relabel)
        assert stored["metadata"]["labels"] == {
            "zone": "a",
            "kubernetes.io/hostname": "node-2",
            "kubernetes.io/os": "linux",
        }
        assert stored["spec"]["podCIDRs"] == list(topology.node_cidrs(2))
        assert stored["status"]["addresses"][0] == {"type": "InternalIP", "address": "10.244.2.1"}
        with pytest.raises(ApiError, match="lab nodes are fixed when the lab is created"):
            store.create("nodes", {"metadata": {"name": "node-3"}})
    finally:
        responders.close()
