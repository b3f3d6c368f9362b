"""ClusterNetworkPolicy peers that select every pod of some namespaces, in the kernel: the tier
profile holds one key per namespace class (stages/ns_classes.py), and the ipcache entry of each
pod address carries its namespace's class identity (lib/policy.h vg_tiers_lookup's fourth
lookup); a policy that splits a class moves one part's pods to a new identity. A control pod in
another namespace must not match; a pod added to a selected namespace after the profile was
written, and a namespace deleted and created again, are covered by the ipcache entries alone:
the profile's entries in the kernel are the ones first written."""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler.identity import is_namespace_identity
from controller.compiler.stages.tiers import cnp_rule_ref
from controller.core.verdicts import DIR_INGRESS, TIER_PROFILE_BIT
from controller.datapath import readback
from controller.datapath.abi import Reason
from controller.datapath.codecs import Event
from tests.support.kernel import POD_B, POD_C, Harness
from tests.support.tier_world import (
    FROM_Y,
    NAMESPACES,
    PODS,
    assert_kernel_is_model,
    cnp,
    ingress,
    pod,
    rule,
    synced,
)

pytestmark = [pytest.mark.root, pytest.mark.bcc]

NEWCOMER = "10.244.2.40"  # a pod of namespace y that comes after the profile was written
CNPS = [
    cnp("accept-y-80", "Admin", 1, ingress=[rule("Accept", [FROM_Y], 80, name="web")]),
    cnp("deny-y", "Admin", 2, ingress=[rule("Deny", [FROM_Y], name="rest")]),
]


def _profile_entries(h: Harness) -> dict[Any, Any]:
    """The tier profiles' entries as the kernel holds them."""
    state = readback.dump(h.dp.maps)
    return {k: v for k, v in state.policy.items() if k[0] & TIER_PROFILE_BIT}


def _ipcache_ns(h: Harness, address: str) -> int:
    state = readback.dump(h.dp.maps)
    return state.ipcache[readback.ipnet(f"{address}/32")][2]


def test_a_namespaces_peer_is_decided_by_the_namespace_key_and_a_pod_elsewhere_does_not_match(
    h: Harness, events: list[Event]
) -> None:
    d = synced(h, [], CNPS)
    entries = _profile_entries(h)
    ns_y = d.ipcache[readback.ipnet(f"{POD_C}/32")][2]
    assert d.identities[ns_y].namespace == "y"
    assert {key.identity for _, key in entries} == {ns_y} and is_namespace_identity(ns_y)
    assert _ipcache_ns(h, POD_C) == ns_y and _ipcache_ns(h, POD_B) not in (0, ns_y)
    assert ingress(h, POD_C, 80) is Reason.ALLOW_ADMIN
    assert ingress(h, POD_C, 81) is Reason.DROP_ADMIN
    assert ingress(h, POD_B, 81) is Reason.ALLOW_NOT_ISOLATED  # namespace x: not selected
    h.dp.poll_events(0)
    drops = [e for e in events if e.reason == Reason.DROP_ADMIN]
    assert drops and drops[-1].rule_ref == cnp_rule_ref("deny-y", DIR_INGRESS, 0)
    assert_kernel_is_model(h, d)


def test_a_pod_added_to_a_selected_namespace_is_matched_through_its_ipcache_entry_alone(h: Harness) -> None:
    synced(h, [], CNPS)
    written = _profile_entries(h)
    d = synced(h, [], CNPS, pods=[*PODS, pod("y", "d", NEWCOMER, "node-2")])
    assert _profile_entries(h) == written
    assert _ipcache_ns(h, NEWCOMER) == _ipcache_ns(h, POD_C) != 0
    assert ingress(h, NEWCOMER, 80) is Reason.ALLOW_ADMIN
    assert ingress(h, NEWCOMER, 81) is Reason.DROP_ADMIN
    assert_kernel_is_model(h, d)


def test_a_namespace_deleted_and_created_again_is_keyed_by_the_same_entries(h: Harness) -> None:
    synced(h, [], CNPS)
    written = _profile_entries(h)
    without_y = [n for n in NAMESPACES if n["metadata"]["name"] != "y"]
    synced(h, [], CNPS, namespaces=without_y, pods=[p for p in PODS if p["metadata"]["namespace"] != "y"])
    assert ingress(h, POD_C, 81) is Reason.ALLOW_NOT_ISOLATED  # no such pod: world, not selected
    d = synced(h, [], CNPS)
    assert _profile_entries(h) == written  # the namespace's identity came back with it
    assert ingress(h, POD_C, 81) is Reason.DROP_ADMIN
    assert_kernel_is_model(h, d)


def test_a_policy_that_tells_two_namespaces_of_a_class_apart_moves_one_and_both_keep_their_verdicts(
    h: Harness,
) -> None:
    w_pod = "10.244.2.50"
    namespaces = [*NAMESPACES, {"metadata": {"name": "w", "labels": {"team": "y"}}}]
    pods = [*PODS, pod("w", "e", w_pod, "node-2")]
    d = synced(h, [], CNPS, namespaces=namespaces, pods=pods)
    assert _ipcache_ns(h, w_pod) == _ipcache_ns(h, POD_C) != 0  # y and w: one class
    assert d.identities[_ipcache_ns(h, POD_C)].namespaces == ("w", "y")
    assert len(_profile_entries(h)) == 2  # the class on 80 (accept) and on every port (deny)
    # a rule naming w alone at a higher precedence: w's pods now differ from y's
    only_w = {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "w"}}}
    split = [cnp("accept-w-81", "Admin", 0, ingress=[rule("Accept", [only_w], 81, name="w")]), *CNPS]
    d = synced(h, [], split, namespaces=namespaces, pods=pods)
    ns_w, ns_y = _ipcache_ns(h, w_pod), _ipcache_ns(h, POD_C)
    assert ns_w != ns_y and {d.identities[ns_w].namespaces, d.identities[ns_y].namespaces} == {("w",), ("y",)}
    assert ingress(h, w_pod, 81) is Reason.ALLOW_ADMIN
    assert ingress(h, w_pod, 82) is Reason.DROP_ADMIN
    assert ingress(h, POD_C, 81) is Reason.DROP_ADMIN
    assert ingress(h, POD_C, 80) is Reason.ALLOW_ADMIN
    assert ingress(h, POD_B, 81) is Reason.ALLOW_NOT_ISOLATED  # namespace x: selected by none
    assert_kernel_is_model(h, d)
