"""Namespace identities (controller/compiler/stages/ns_identities.py): every namespace gets one,
kept while it exists; a pod address's ipcache entry carries its namespace's class's
(stages/ns_classes.py); a ClusterNetworkPolicy peer that selects every pod of some namespaces
is keyed by their classes (far fewer entries than one key per pod identity), and a pod coming
into a selected namespace changes the ipcache only, not the tier profile."""

from __future__ import annotations

import ipaddress
from typing import Any

from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.compiler.identity import is_namespace_identity, is_pod_identity
from controller.compiler.policy import compile_cluster
from controller.compiler.stages.ns_identities import NamespaceIdentities
from controller.core.identities import ID_REMOTE_NODE, NS_ID_MAX, NS_ID_MIN
from controller.core.verdicts import DIR_INGRESS
from controller.debug import verdict_model
from tests.support.k8s import K8s as K

NODE = "node-1"
NAMESPACES = [f"ns{i}" for i in range(4)]  # ns0, ns1: team a; ns2, ns3: team b


def _namespaces(names: list[str] = NAMESPACES) -> list[dict[str, Any]]:
    return [_stamped(K.ns(n, team="a" if int(n[2:]) < 2 else "b")) for n in names]


def _stamped(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server gives it: with a uid and a resourceVersion (what lets the
    builder see which objects changed, so a compilation can be incremental)."""
    meta = obj["metadata"]
    meta.setdefault("uid", f"{meta.get('namespace', '')}/{meta['name']}")
    meta.setdefault("resourceVersion", "1")
    return obj


def _pods(names: list[str] = NAMESPACES, per_ns: int = 10) -> list[dict[str, Any]]:
    out = []
    for i, ns in enumerate(names):
        for j in range(per_ns):
            out.append(_stamped(K.pod(f"{ns}/p{j}", {"app": f"app{j}"}, [f"10.{i}.0.{j + 1}"], NODE)))
    return out


def _cnp(peer: dict[str, Any]) -> dict[str, Any]:
    return _stamped(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "from-team-b"},
            "spec": {
                "tier": "Admin",
                "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
                "ingress": [{"action": "Deny", "from": [peer]}],
            },
        }
    )


FROM_B_NAMESPACES = {"namespaces": {"matchLabels": {"team": "b"}}}
FROM_B_ALL_PODS = {"pods": {"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {}}}
FROM_B_LABELLED_PODS = {
    "pods": {
        "namespaceSelector": {"matchLabels": {"team": "b"}},
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
    }
}


def _desired(peer: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> NodeDesired:
    cluster = cluster_from_objects(
        _namespaces(), pods or _pods(), [], [K.node(NODE, "10.9.0.1")], [_cnp(peer)]
    )
    assert not cluster.errors, cluster.errors
    return compute(cluster, NODE)


def _profile(d: NodeDesired) -> dict[Any, Any]:
    [entries] = d.tier_profiles.values()
    return dict(entries)


def test_every_namespace_gets_an_identity_in_the_namespace_range() -> None:
    cc = compile_cluster(cluster_from_objects(_namespaces(), _pods(), [], [K.node(NODE, "10.9.0.1")]))
    ids = cc.namespaces.ids.of
    assert set(ids) == set(NAMESPACES)
    assert len(set(ids.values())) == len(NAMESPACES)
    assert all(NS_ID_MIN <= i <= NS_ID_MAX and is_namespace_identity(i) for i in ids.values())
    # no ClusterNetworkPolicy tells them apart: one class, named by its smallest member identity
    assert set(cc.namespace_identity.values()) == {min(ids.values())}


def test_a_namespace_added_or_removed_moves_no_other_and_one_recreated_gets_its_number_back() -> None:
    first = NamespaceIdentities.derive(["a", "b", "c"], None)
    added = NamespaceIdentities.derive(["a", "b", "c", "d"], first)
    assert {n: added.of[n] for n in "abc"} == dict(first.of)
    removed = NamespaceIdentities.derive(["a", "c", "d"], added)
    assert {n: removed.of[n] for n in "acd"} == {n: added.of[n] for n in "acd"}
    again = NamespaceIdentities.derive(["a", "b", "c", "d"], removed)
    assert again.of == added.of
    assert NamespaceIdentities.derive(["a", "b", "c", "d"], again) is again


def test_a_pod_address_carries_its_namespace_identity_and_other_addresses_none() -> None:
    cluster = cluster_from_objects(
        _namespaces(), _pods(), [], [K.node(NODE, "10.9.0.1")], [_cnp(FROM_B_NAMESPACES)]
    )
    d, cc = compute(cluster, NODE), compile_cluster(cluster)
    pod = d.ipcache[ipaddress.ip_network("10.2.0.3/32")]
    assert pod[2] == cc.namespace_identity["ns2"] and is_pod_identity(pod[0])
    assert d.ipcache[ipaddress.ip_network("10.9.0.1/32")][2] == 0  # the node
    assert d.ipcache[ipaddress.ip_network("0.0.0.0/0")][2] == 0


def test_a_namespaces_peer_is_keyed_by_namespace_identities_with_far_fewer_entries() -> None:
    by_ns = _profile(_desired(FROM_B_NAMESPACES))
    by_pod = _profile(_desired(FROM_B_LABELLED_PODS))
    d = _desired(FROM_B_NAMESPACES)
    named = [
        d.identities[k.identity].namespaces for k in by_ns if d.identities[k.identity].kind == "namespace"
    ]
    assert named == [("ns2", "ns3")]  # selected alike by every namespace-wide peer: one class
    assert all(is_namespace_identity(k.identity) for k in by_ns)
    assert all(is_pod_identity(k.identity) for k in by_pod)
    assert len(by_ns) == 1 and len(by_pod) == 20  # one key per class, one per pod identity


def test_a_pods_peer_with_an_empty_pod_selector_is_keyed_like_a_namespaces_peer() -> None:
    assert _profile(_desired(FROM_B_ALL_PODS)) == _profile(_desired(FROM_B_NAMESPACES))


def test_a_pod_added_to_a_selected_namespace_changes_the_ipcache_and_not_the_profile() -> None:
    builder = ClusterBuilder()
    nodes = [K.node(NODE, "10.9.0.1")]
    first = builder.build(_namespaces(), _pods(), [], nodes, [_cnp(FROM_B_NAMESPACES)])
    before = compute(first, NODE)  # (`first` held while the next one is compiled, as the agent does)
    newcomer = _stamped(K.pod("ns3/new", {"app": "fresh"}, ["10.3.0.99"], NODE))
    state = builder.build(_namespaces(), [*_pods(), newcomer], [], nodes, [_cnp(FROM_B_NAMESPACES)])
    after = compute(state, NODE)
    assert compile_cluster(state).incremental
    assert after.tier_profiles == before.tier_profiles
    assert [after.tier_profiles[p] is before.tier_profiles[p] for p in before.tier_profiles] == [True]
    ns3 = compile_cluster(state).namespace_identity["ns3"]
    assert after.ipcache[ipaddress.ip_network("10.3.0.99/32")][2] == ns3


def test_a_namespace_deleted_and_recreated_keys_the_profile_as_before() -> None:
    nodes = [K.node(NODE, "10.9.0.1")]
    builder = ClusterBuilder()
    cnps = [_cnp(FROM_B_NAMESPACES)]
    first = compute(builder.build(_namespaces(), _pods(), [], nodes, cnps), NODE)
    rest = NAMESPACES[:3]
    gone = compute(builder.build(_namespaces(rest), _pods(rest), [], nodes, cnps), NODE)
    assert len(_profile(gone)) == 1  # only ns2 is left to select
    back = compute(builder.build(_namespaces(), _pods(), [], nodes, cnps), NODE)
    assert _profile(back) == _profile(first)
    assert back.ipcache == first.ipcache


def test_a_host_network_pod_of_a_selected_namespace_is_no_peer_and_has_no_namespace_identity() -> None:
    nodes = [K.node(NODE, "10.9.0.1"), K.node("node-2", "10.9.0.2")]
    host_pod = K.pod("ns3/agent", {"app": "agent"}, ["10.9.0.2"], "node-2", host_network=True)
    cluster = cluster_from_objects(_namespaces(), [*_pods(), host_pod], [], nodes, [_cnp(FROM_B_NAMESPACES)])
    d = compute(cluster, NODE)
    assert d.ipcache[ipaddress.ip_network("10.9.0.2/32")] == (ID_REMOTE_NODE, 0, 0)
    assert verdict_model.endpoint_verdict(d, "ns0/p0", DIR_INGRESS, "10.9.0.2", "TCP", 80).reason == (
        "ALLOW_NOT_ISOLATED"
    )
    assert (
        verdict_model.endpoint_verdict(d, "ns0/p0", DIR_INGRESS, "10.3.0.1", "TCP", 80).reason == "DROP_ADMIN"
    )
