"""Namespace classes (controller/compiler/stages/ns_classes.py): namespaces that every
namespace-wide ClusterNetworkPolicy peer selects alike share one identity in the ipcache and in
the tier profiles' keys, so a rule over many such namespaces is one key per class; a class's
identity is its smallest member's namespace identity, so a policy that splits a class changes
only the ipcache entries of the part without that member."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.clusterview import NS_CLASS_SHOWN, ClusterView, RawObjects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.compiler.policy import compile_cluster
from controller.compiler.stages.ns_classes import NamespaceClasses
from controller.compiler.stages.ns_identities import NamespaceIdentities
from controller.core.verdicts import DIR_INGRESS
from controller.debug import verdict_model
from tests.support.k8s import K8s as K

NODE = "node-1"
NAMES = [f"n{i:02d}" for i in range(12)]  # team: i % 3, env: prod when i is odd


def _ns() -> list[dict[str, Any]]:
    return [_stamped(K.ns(n, team=f"t{i % 3}", env="prod" if i % 2 else "dev")) for i, n in enumerate(NAMES)]


def _stamped(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    meta.setdefault("uid", f"{meta.get('namespace', '')}/{meta['name']}")
    meta.setdefault("resourceVersion", "1")
    return obj


def _pods() -> list[dict[str, Any]]:
    return [
        _stamped(K.pod(f"{ns}/p{j}", {"app": f"a{j}"}, [f"10.1.{i}.{j + 1}"], NODE))
        for i, ns in enumerate(NAMES)
        for j in range(3)
    ]


def _cnp(name: str, priority: int, peer_labels: dict[str, str], port: int | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": "Deny", "from": [{"namespaces": {"matchLabels": peer_labels}}]}
    if port is not None:
        rule["protocols"] = [{"tcp": {"destinationPort": {"number": port}}}]
    return _stamped(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": {
                "tier": "Admin",
                "priority": priority,
                "subject": {"namespaces": {"matchLabels": {"team": "t0"}}},
                "ingress": [rule],
            },
        }
    )


def _profile(d: NodeDesired) -> dict[Any, Any]:
    [entries] = d.tier_profiles.values()
    return dict(entries)


# -- the partition ------------------------------------------------------------------------------

NS_NAMES = [f"ns{i}" for i in range(10)]


@given(st.lists(st.sets(st.sampled_from(NS_NAMES)), max_size=6))
def test_two_namespaces_share_a_class_exactly_when_every_selection_holds_both_or_neither(
    chosen: list[set[str]],
) -> None:
    ids = NamespaceIdentities.derive(NS_NAMES, None)
    selections = [frozenset(ids.of[n] for n in names) for names in chosen]
    classes = NamespaceClasses.build(ids, selections)
    assert set(classes.of) == set(NS_NAMES)
    for a in NS_NAMES:
        for b in NS_NAMES:
            alike = all((a in names) == (b in names) for names in chosen)
            assert (classes.of[a] == classes.of[b]) == alike, (a, b)
    for ident, members in classes.members.items():
        assert ident == min(ids.of[n] for n in members)  # its smallest member's identity
        assert members == tuple(sorted(n for n in NS_NAMES if classes.of[n] == ident))
    for names, selection in zip(chosen, selections, strict=True):
        # a selection is exactly the union of its classes
        got = {n for ident in classes.classes(selection) for n in classes.members[ident]}
        assert got == names


def test_a_namespace_with_its_own_selection_leaves_its_class_and_the_rest_keep_the_identity() -> None:
    ids = NamespaceIdentities.derive(NS_NAMES, None)
    everyone = frozenset(ids.of.values())
    before = NamespaceClasses.build(ids, [everyone])
    lone = max(NS_NAMES, key=lambda n: ids.of[n])  # not the class's smallest member
    after = NamespaceClasses.build(ids, [everyone, frozenset((ids.of[lone],))])
    assert before.moved(after) == {lone}
    assert after.of[lone] == ids.of[lone]
    assert {after.of[n] for n in NS_NAMES if n != lone} == {before.of[lone]}


# -- compiled -------------------------------------------------------------------------------------


def test_a_rule_over_namespaces_selected_alike_is_one_key_per_class_not_per_namespace() -> None:
    nodes = [K.node(NODE, "10.9.0.1")]
    cnps = [_cnp("from-prod", 10, {"env": "prod"})]
    d = compute(cluster_from_objects(_ns(), _pods(), [], nodes, cnps), NODE)
    assert len(_profile(d)) == 1  # the six prod namespaces: one class
    # another rule over one team: (prod | dev) x (t1 | other teams), the peers' selections
    cnps.append(_cnp("from-team-1", 20, {"team": "t1"}, 80))
    d = compute(cluster_from_objects(_ns(), _pods(), [], nodes, cnps), NODE)
    cc = compile_cluster(cluster_from_objects(_ns(), _pods(), [], nodes, cnps))
    classes = {cc.namespace_identity[n] for n in NAMES}
    assert len(classes) == 4
    keyed = {k.identity for k in _profile(d)}
    assert keyed == {cc.namespace_identity[n] for i, n in enumerate(NAMES) if i % 2 or i % 3 == 1}
    assert len(keyed) == 3  # every class but (dev, other teams)
    # and the verdicts are those of the rules: prod namespaces denied on every port, team t1 on 80
    for i, ns in enumerate(NAMES):
        for port in (80, 443):
            got = verdict_model.endpoint_verdict(d, "n00/p0", DIR_INGRESS, f"10.1.{i}.1", "TCP", port).reason
            denied = i % 2 == 1 or (i % 3 == 1 and port == 80)
            assert (got == "DROP_ADMIN") == denied, (ns, port, got)


def test_a_policy_splitting_a_class_changes_only_the_ipcache_entries_of_the_part_that_moves() -> None:
    nodes = [K.node(NODE, "10.9.0.1")]
    builder = ClusterBuilder()
    cnps = [_cnp("from-prod", 10, {"env": "prod"})]
    first = builder.build(_ns(), _pods(), [], nodes, cnps)
    before = compile_cluster(first)
    prod = [n for i, n in enumerate(NAMES) if i % 2]
    lone = max(prod, key=lambda n: before.namespaces.ids.of[n])  # not its class's identity
    one = _cnp("from-lone", 20, {"kubernetes.io/metadata.name": lone}, 8080)
    state = builder.build(_ns(), _pods(), [], nodes, [*cnps, one])
    after = compile_cluster(state)
    assert after.incremental
    moved = {n for n in NAMES if after.namespace_identity[n] != before.namespace_identity[n]}
    assert moved == {lone}
    assert after.ipcache.pod_changes is not None
    removed, added = after.ipcache.pod_changes
    lone_index = NAMES.index(lone)
    assert not removed
    assert set(added) == {ipaddress.ip_network(f"10.1.{lone_index}.{j + 1}/32") for j in range(3)}
    assert {v[2] for v in added.values()} == {after.namespaces.ids.of[lone]}
    # what it computed is what a compilation from scratch computes
    fresh = cluster_from_objects(_ns(), _pods(), [], nodes, [*cnps, one])
    assert compute(state, NODE).ipcache == compute(fresh, NODE).ipcache
    assert _profile(compute(state, NODE)) == _profile(compute(fresh, NODE))


def test_a_class_identity_names_its_first_members_and_how_many_more() -> None:
    nodes = [K.node(NODE, "10.9.0.1")]
    raw = RawObjects(_ns(), _pods(), [], nodes, cluster_policies=[_cnp("from-prod", 10, {"env": "prod"})])
    view = ClusterView(raw)
    prod = [n for i, n in enumerate(NAMES) if i % 2]
    text = view.identity_text(view.compiled.namespace_identity[prod[0]])
    assert text == f"ns:{','.join(prod[:NS_CLASS_SHOWN])} +{len(prod) - NS_CLASS_SHOWN} more"


def test_a_policy_event_that_tells_no_namespaces_apart_keeps_the_classes_and_the_ipcache() -> None:
    nodes = [K.node(NODE, "10.9.0.1")]
    builder = ClusterBuilder()
    cnps = [_cnp("from-prod", 10, {"env": "prod"})]
    first = builder.build(_ns(), _pods(), [], nodes, cnps)  # (held, as the agent does)
    before = compile_cluster(first)
    # the same selection at another priority and port; then one whose selection is another
    # (every namespace but the prod ones) that splits nothing
    for extra in (_cnp("prod-again", 20, {"env": "prod"}, 443), _cnp("from-dev", 30, {"env": "dev"})):
        state = builder.build(_ns(), _pods(), [], nodes, [*cnps, extra])
        after = compile_cluster(state)
        assert after.incremental
        assert after.ipcache.ns_classes is before.ipcache.ns_classes
        assert after.ipcache.pod_ipcache is before.ipcache.pod_ipcache
        first, before = state, after


class _CountedOwners(dict[int, str]):
    """ids.owner that counts the partitions made from it (each walks it once)."""

    walks = 0

    def __iter__(self) -> Iterator[int]:
        type(self).walks += 1
        return super().__iter__()


def test_selections_that_partition_alike_are_remembered_so_the_next_build_does_not_partition_again() -> None:
    derived = NamespaceIdentities.derive(NS_NAMES, None)
    ids = dataclasses.replace(derived, owner=_CountedOwners(derived.owner))
    evens = frozenset(ids.of[n] for n in NS_NAMES[::2])
    odds = frozenset(ids.of[n] for n in NS_NAMES[1::2])
    first = NamespaceClasses.build(ids, [evens])
    # the complement tells the same namespaces apart: partitioned once, the same classes
    walks = _CountedOwners.walks
    assert NamespaceClasses.build(ids, [odds], first) is first
    assert _CountedOwners.walks == walks + 1
    # ... and remembered: the next event with those selections does not partition again
    assert NamespaceClasses.build(ids, [odds], first) is first
    assert _CountedOwners.walks == walks + 1
    # selections that split a class still do (one that is not its smallest member leaves it)
    lone = max(NS_NAMES[1::2], key=lambda n: ids.of[n])
    split = NamespaceClasses.build(ids, [odds, frozenset((ids.of[lone],))], first)
    assert split is not first and split.of[lone] != first.of[lone]
    assert _CountedOwners.walks == walks + 2
