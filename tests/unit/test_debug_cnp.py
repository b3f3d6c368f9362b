"""The debug CLI names ClusterNetworkPolicy tiers, policies and rules (issue 15, item 3): explain
(and its live-map cross-check over fake maps that answer LPM lookups as the kernel does),
observe records, bpf tables, get/describe cnp, reachability, and the API inputs. No root."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from controller.cli import main
from controller.compiler.clusterview import ClusterView
from controller.core import verdicts
from controller.core.errors import VethguardError
from controller.core.object_versions import EMPTY_DIGEST, digest_text, kind_digest
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.debug import bpfview, observe, reach
from controller.debug import cnp as cnp_mod
from controller.debug.explain import explain, explain_text
from controller.debug.inputs import CNP_PATH, REQUEST_TIMEOUT, LabTarget, LocalTarget, NodeRef
from controller.debug.kernel import NodeMaps
from controller.debug.live_checks import live_lookup
from controller.lab.store import Store
from tests.support.debug_views import (
    NODES,
    FakeMap,
    fake_maps,
    flow_event,
    kernel_state,
    node_2_behind,
    node_maps,
    raw_cluster,
)
from tests.support.lab_api import served_kubeconfig

CNP = "policy.networking.k8s.io/v1alpha2"


def cnp(name: str, tier: str, priority: int, subject: dict[str, Any], **rules: Any) -> dict[str, Any]:
    return {
        "apiVersion": CNP,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"tier": tier, "priority": priority, "subject": subject, **rules},
    }


def ns(name: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"ns": name}}}


def pods(namespace: str, pod: str) -> dict[str, Any]:
    return {
        "pods": {
            "namespaceSelector": {"matchLabels": {"ns": namespace}},
            "podSelector": {"matchLabels": {"pod": pod}},
        }
    }


# x/a (node-1): Admin accepts y/b, passes z, denies everyone else. Every pod: Baseline denies z
# (y/c is isolated by a NetworkPolicy allowing z, so NetworkPolicy decides there). Pods of y:
# Admin denies TCP 10250 to the nodes (their own node too).
POLICIES = [
    cnp(
        "protect-x-a",
        "Admin",
        10,
        {
            "pods": {
                "namespaceSelector": {"matchLabels": {"ns": "x"}},
                "podSelector": {"matchLabels": {"pod": "a"}},
            }
        },
        ingress=[
            {
                "name": "allow-y-b",
                "action": "Accept",
                "from": [
                    {
                        "pods": {
                            "namespaceSelector": {"matchLabels": {"ns": "y"}},
                            "podSelector": {"matchLabels": {"pod": "b"}},
                        }
                    }
                ],
            },
            {"name": "pass-z", "action": "Pass", "from": [ns("z")]},
            {"name": "deny-others", "action": "Deny", "from": [{"namespaces": {}}]},
        ],
    ),
    cnp(
        "default-deny-z",
        "Baseline",
        5,
        {"namespaces": {}},
        ingress=[{"name": "deny-from-z", "action": "Deny", "from": [ns("z")]}],
    ),
    cnp(
        "no-kubelet",
        "Admin",
        20,
        ns("y"),
        egress=[
            {
                "name": "deny-node-10250",
                "action": "Deny",
                "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 10250}}}],
            }
        ],
    ),
]
NETPOLS = [
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "y-c-from-z", "namespace": "y"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "c"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
        },
    }
]


@pytest.fixture(scope="module")
def view() -> ClusterView:
    return ClusterView(raw_cluster(NETPOLS, cluster_policies=POLICIES))


def _live(view: ClusterView) -> Any:
    refs = {n: NodeRef(n, Path(f"/fake/{n}")) for n in NODES}
    return live_lookup(refs, lambda ref: node_maps(view, ref.name))


# -- explain -----------------------------------------------------------------------------------


def test_explain_names_the_admin_tier_policy_rule_and_action_that_accept(view: ClusterView) -> None:
    e = explain(view, "y/b", "x/a", 80)
    ing = e.ingress.as_json()
    assert e.allowed and ing["reason"] == "ALLOW_ADMIN"
    assert (ing["tier"], ing["policy"], ing["rule_index"], ing["rule_name"], ing["action"]) == (
        "Admin",
        "protect-x-a",
        0,
        "allow-y-b",
        "Accept",
    )
    assert ing["rule"] == "Admin:protect-x-a ingress[0] (allow-y-b)" and ing["passed"] == []
    assert "allowed by Admin tier: ClusterNetworkPolicy protect-x-a ingress[0] (allow-y-b): Accept" in (
        explain_text(e)
    )


def test_explain_names_the_admin_rule_that_denies_over_an_open_pod(view: ClusterView) -> None:
    e = explain(view, "x/b", "x/a", 80)
    assert not e.allowed and e.ingress.reason == "DROP_ADMIN"
    doc = e.as_json()["ingress"]
    assert (doc["tier"], doc["policy"], doc["rule_index"], doc["rule_name"], doc["action"]) == (
        "Admin",
        "protect-x-a",
        2,
        "deny-others",
        "Deny",
    )
    assert (
        "denied by Admin tier: ClusterNetworkPolicy protect-x-a ingress[2] (deny-others): Deny"
        in e.ingress.text
    )


def test_explain_says_which_pass_handed_the_decision_to_the_baseline_deny(view: ClusterView) -> None:
    e = explain(view, "z/a", "x/a", 80)
    assert not e.allowed and e.ingress.reason == "DROP_BASELINE"
    doc = e.as_json()["ingress"]
    assert (doc["tier"], doc["policy"], doc["rule_name"]) == ("Baseline", "default-deny-z", "deny-from-z")
    assert [(p["tier"], p["policy"], p["rule_index"], p["rule_name"]) for p in doc["passed"]] == [
        ("Admin", "protect-x-a", 1, "pass-z")
    ]
    passed = "Admin tier: ClusterNetworkPolicy protect-x-a ingress[1] (pass-z): Pass handed it on; "
    assert e.ingress.text.startswith(passed + "denied by Baseline tier: ClusterNetworkPolicy default-deny-z")


def test_a_networkpolicy_that_isolates_decides_before_the_baseline(view: ClusterView) -> None:
    e = explain(view, "z/a", "y/c", 80)
    doc = e.as_json()["ingress"]
    assert e.allowed and (doc["reason"], doc["tier"], doc["policy"], doc["action"]) == (
        "ALLOW_POLICY",
        "NetworkPolicy",
        "y/y-c-from-z",
        "Allow",
    )
    assert not explain(view, "z/a", "y/a", 80).allowed  # no NetworkPolicy there: Baseline's Deny


def test_explain_judges_a_tiered_pods_egress_to_its_own_node_by_the_tiers(view: ClusterView) -> None:
    own = view.cluster.nodes[view.node_of("y/b") or ""].addresses[0]
    denied = explain(view, "y/b", own, 10250)
    assert not denied.allowed and denied.egress.reason == "DROP_ADMIN"
    assert denied.as_json()["egress"]["rule"] == "Admin:no-kubelet egress[0] (deny-node-10250)"
    other = explain(view, "y/b", own, 80)
    assert other.allowed and other.egress.reason == "ALLOW_HOST"
    assert "no ClusterNetworkPolicy rule denies it" in other.egress.text


def test_the_live_maps_agree_with_the_compiled_tiers_for_every_pair_and_port(view: ClusterView) -> None:
    live, close = _live(view)
    try:
        checked = 0
        for src in view.pods():
            for dst in [*view.pods(), "10.244.1.1", "10.244.2.1"]:
                for port in (80, 10250):
                    if src == dst:
                        continue
                    e = explain(view, src, dst, port, live=live)
                    assert e.mismatches == [], (src, dst, port)
                    checked += sum(h.kernel is not None for h in (e.egress, e.ingress))
        assert checked > 300
    finally:
        close()
    e = explain(view, "z/a", "x/a", 80, live=_live(view)[0])
    assert e.ingress.kernel is not None and e.ingress.kernel.reason == "DROP_BASELINE"
    assert [view.rule(r) for r in e.ingress.kernel.passed] == list(e.ingress.passed)


def test_a_kernel_missing_the_admin_entries_is_a_mismatch_naming_the_tier_rule(view: ClusterView) -> None:
    node = view.node_of("x/a") or ""
    maps, ifindex = fake_maps(view, node)
    stale = NodeMaps(Path("/fake"), maps)
    # The map before the Admin policy: every entry of x/a without its Admin answer.
    items = {}
    for k, v in maps["vg_policy"].items().items():
        value = abi.PolicyValue.from_bytes(v)
        value.admin = value.admin_rank = value.admin_ref = 0
        items[k] = bytes(value)
    stale.maps["vg_policy"] = FakeMap(items, lpm=True)
    refs = {n: NodeRef(n, Path("/fake")) for n in NODES}
    live, close = live_lookup(refs, lambda ref: stale if ref.name == node else node_maps(view, ref.name))
    e = explain(view, "x/b", "x/a", 80, live=live)
    close()
    assert len(e.mismatches) == 1 and ifindex
    assert (
        "compiled state says denied (DROP_ADMIN Admin:protect-x-a ingress[2] (deny-others))"
        in e.mismatches[0]
    )
    assert "live maps say allowed (ALLOW_NOT_ISOLATED)" in e.mismatches[0]


def test_the_live_lookup_reports_the_pass_rules_it_went_through(view: ClusterView) -> None:
    nm = node_maps(view, view.node_of("x/a") or "")
    xa = view.cluster.pods["x/a"]
    ep = nm.endpoint_by_ip(xa.ipv4 or "")
    assert ep is not None
    za = view.cluster.pods["z/a"].ipv4 or ""
    half = nm.verdict(ep, DIR_INGRESS, za, 6, 80)
    assert half.reason == "DROP_BASELINE"
    assert [str(view.rule(r)) for r in half.passed] == ["Admin:protect-x-a ingress[1] (pass-z)"]
    assert str(view.rule(half.rule_ref)) == "Baseline:default-deny-z ingress[0] (deny-from-z)"
    assert nm.verdict(ep, DIR_EGRESS, za, 6, 80).reason == "ALLOW_NOT_ISOLATED"


def test_the_live_lookup_of_a_pending_endpoint_drops_all_but_its_nodes_traffic_as_the_kernel_does(
    view: ClusterView,
) -> None:
    node = view.node_of("x/a") or ""
    nm = node_maps(view, node)
    xa = view.cluster.pods["x/a"]
    ep = nm.endpoint_by_ip(xa.ipv4 or "")
    assert ep is not None
    pending = dataclasses.replace(
        ep, flags=abi.EP_F_PENDING | abi.EP_F_INGRESS_ISOLATED | abi.EP_F_EGRESS_ISOLATED
    )
    za = view.cluster.pods["z/a"].ipv4 or ""
    host = str(view.compiled.node_addresses[node][0])
    assert nm.verdict(pending, DIR_INGRESS, za, 6, 80).reason == "DROP_PENDING"
    assert nm.verdict(pending, DIR_EGRESS, za, 6, 80).reason == "DROP_PENDING"
    # lib/newflow.h: the node itself passes before the endpoint's policy (pending or not)
    assert nm.verdict(pending, DIR_EGRESS, host, 6, 80).reason == "ALLOW_HOST"
    assert nm.verdict(pending, DIR_INGRESS, host, 6, 80).reason == "ALLOW_HOST"


# -- observe -----------------------------------------------------------------------------------


def _record(view: ClusterView, src: str, dst: str, direction: int, reason: int, ref: int) -> dict[str, Any]:
    ips = [view.cluster.pods[p].ipv4 or "" for p in (src, dst)]
    data = flow_event(ips[0], ips[1], direction, reason, ref)
    return observe.record(view, codecs.decode_event(node="node-1", data=data), 0)


def _ref(view: ClusterView, text: str) -> int:
    return next(ref for ref, r in view.compiled.tiers.rules.items() if str(r) == text)


def _named(rec: dict[str, Any]) -> tuple[str, ...]:
    return tuple(rec[k] for k in ("verdict", "reason", "tier", "policy", "rule_name"))


def test_a_tier_drop_event_names_the_tier_policy_and_rule(view: ClusterView) -> None:
    ref = _ref(view, "Admin:protect-x-a ingress[2] (deny-others)")
    rec = _record(view, "x/b", "x/a", DIR_INGRESS, abi.Reason.DROP_ADMIN, ref)
    assert _named(rec) == ("denied", "DROP_ADMIN", "Admin", "protect-x-a", "deny-others")
    assert rec["policies"] == ["protect-x-a"] and rec["rule"] == "Admin:protect-x-a ingress[2] (deny-others)"
    assert observe.line(rec).endswith(
        "(DROP_ADMIN at ingress of x/a)  by Admin:protect-x-a ingress[2] (deny-others)"
    )


def test_tier_accept_events_name_their_rule(view: ClusterView) -> None:
    ref = _ref(view, "Admin:protect-x-a ingress[0] (allow-y-b)")
    rec = _record(view, "y/b", "x/a", DIR_INGRESS, abi.Reason.ALLOW_ADMIN, ref)
    assert _named(rec) == ("allowed", "ALLOW_ADMIN", "Admin", "protect-x-a", "allow-y-b")
    ref = _ref(view, "Baseline:default-deny-z ingress[0] (deny-from-z)")
    rec = _record(view, "z/a", "y/a", DIR_INGRESS, abi.Reason.DROP_BASELINE, ref)
    assert (rec["verdict"], rec["tier"], rec["policy"]) == ("denied", "Baseline", "default-deny-z")


def test_an_established_flow_cut_by_a_tier_names_the_denying_rule(view: ClusterView) -> None:
    ref = _ref(view, "Baseline:default-deny-z ingress[0] (deny-from-z)")
    rec = _record(view, "z/a", "x/a", DIR_INGRESS, abi.Reason.DROP_REVOKED, ref)
    assert _named(rec) == ("denied", "DROP_REVOKED", "Baseline", "default-deny-z", "deny-from-z")


def test_a_networkpolicy_drop_event_is_in_the_networkpolicy_tier_without_a_rule_name(
    view: ClusterView,
) -> None:
    rec = _record(view, "x/a", "y/c", DIR_INGRESS, abi.Reason.DROP_POLICY, 0)
    assert (rec["tier"], rec["policy"], rec["rule"], rec["rule_name"]) == (
        "NetworkPolicy",
        "y/y-c-from-z",
        None,
        None,
    )


# -- bpf ---------------------------------------------------------------------------------------


def test_bpf_policy_shows_each_entrys_networkpolicy_verdict_and_tier_rules(view: ClusterView) -> None:
    node = view.node_of("x/a") or ""
    state, _ = kernel_state(view, node)
    rows = bpfview.policy_rows(view, node, state, 0, pod="x/a")
    zb = view.compiled.pod_identity["z/b"]
    # the tier rules select every pod of namespace z: keyed by its namespace identity
    nz = view.compiled.namespace_identity["z"]
    [row] = [r for r in rows if r["peer_identity"] == nz]
    assert row["peer"] == "ns:z"
    assert (row["verdict"], row["policy"], row["admin"], row["admin_policy"], row["admin_rule"]) == (
        None,
        None,
        "Pass",
        "protect-x-a",
        "ingress[1] (pass-z)",
    )
    assert (row["baseline"], row["baseline_policy"], row["baseline_rule"]) == (
        "Deny",
        "default-deny-z",
        "ingress[0] (deny-from-z)",
    )
    # rank: priority * 1,000,000 + place among the tier's policies of that priority * 1,000 + rule index
    assert row["admin_rank"] == 10_000_001 and row["baseline_rank"] == 5_000_000
    assert bpfview.tier_cell(row, "admin") == "Pass(rank 10000001) protect-x-a ingress[1] (pass-z)"
    assert bpfview.tier_cell(row, "baseline") == "Deny(rank 5000000) default-deny-z ingress[0] (deny-from-z)"
    yc = [
        r
        for r in bpfview.policy_rows(
            view, view.node_of("y/c") or "", kernel_state(view, view.node_of("y/c") or "")[0], 0, pod="y/c"
        )
        if r["peer_identity"] in (zb, nz)
    ]
    # the pod's own NetworkPolicy entry for z/b's identity, and its tier profile's entry
    # (shared with every pod the same ClusterNetworkPolicies select) for z's namespace identity
    own = [r for r in yc if not r["tier_profile"]]
    tiers = [r for r in yc if r["tier_profile"]]
    assert {r["peer_identity"] for r in own} == {zb} and {r["peer_identity"] for r in tiers} == {nz}
    assert [(r["verdict"], r["policy"], r["baseline"]) for r in own] == [("allow", "y/y-c-from-z", None)]
    assert [(r["verdict"], r["baseline"]) for r in tiers] == [(None, "Deny")]
    assert tiers[0]["tier_profile"] & verdicts.TIER_PROFILE_BIT


def test_bpf_ipcache_and_identities_name_a_pod_addresss_namespace_identity(view: ClusterView) -> None:
    node = view.node_of("x/a") or ""
    state, _ = kernel_state(view, node)
    nz = view.compiled.namespace_identity["z"]
    ip = view.compiled.pods["z/b"].ips[0]
    [row] = [r for r in bpfview.ipcache_rows(view, node, state) if r["prefix"].split("/")[0] == ip]
    assert (row["ns_identity"], row["namespace"]) == (nz, "ns:z")
    [ident] = [r for r in bpfview.identity_rows(view, node, state) if r["identity"] == nz]
    assert (ident["kind"], ident["meaning"], ident["in_ipcache"]) == ("namespace", "ns:z", True)


def test_endpoint_flags_show_which_directions_the_tiers_police(view: ClusterView) -> None:
    flags: dict[str, list[str]] = {}
    for node in NODES:
        state, _ = kernel_state(view, node)
        flags |= {r["pod"]: r["flags"] for r in bpfview.endpoint_rows(view, node, state)}
    assert flags["x/a"] == ["ingress-tiered"]
    assert flags["y/b"] == ["ingress-tiered", "egress-tiered"]
    assert flags["y/c"] == ["ingress-isolated", "ingress-tiered", "egress-tiered"]


# -- get / describe cnp --------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
BROKEN = cnp(
    "broken",
    "Admin",
    7,
    {"namespaces": {}},
    egress=[
        {"name": "bad-pass", "action": "Pass", "to": [{"domainNames": ["example.com"]}]},
        {"action": "Accept", "to": [{"networks": ["10.0.0.0/33"]}]},
    ],
)


def test_get_cnp_lists_tier_priority_selected_pods_and_realization_like_kubectl(view: ClusterView) -> None:
    rows = cnp_mod.get_rows(view, view.raw.cluster_policies, list(NODES), node_2_behind(view.raw), NOW)
    lines = cnp_mod.get_text(rows, wide=False).splitlines()
    assert lines[0].split() == ["NAME", "TIER", "PRIORITY", "PODS", "REALIZED", "AGE"]
    assert [line.split() for line in lines[1:]] == [
        ["default-deny-z", "Baseline", "5", "9", "1/2", "5m"],
        ["no-kubelet", "Admin", "20", "3", "1/2", "5m"],
        ["protect-x-a", "Admin", "10", "1", "1/2", "5m"],
    ]
    wide = cnp_mod.get_text(rows, wide=True).splitlines()
    assert wide[0].split()[6:] == ["SUBJECT", "INGRESS", "EGRESS", "ERRORS", "SELECTED-PODS"]
    assert re.split(r"\s{3,}", wide[3])[6:] == ["pods: namespaces ns=x, pods pod=a", "3", "0", "0", "x/a"]
    assert rows[1]["realized"] == {"node-1": True, "node-2": False}


def test_describe_cnp_shows_each_rule_its_order_selected_pods_and_realization(view: ClusterView) -> None:
    obj = next(o for o in view.raw.cluster_policies if o["metadata"]["name"] == "protect-x-a")
    lines = cnp_mod.describe_text(view, obj, list(NODES), node_2_behind(view.raw)).splitlines()
    for line in (
        "  Tier:      Admin",
        "  Priority:  10",
        "  Subject:   pods: namespaces ns=x, pods pod=a",
        "    [0] allow-y-b: Accept",
        "        PodSelector: pod=b",
        "    [1] pass-z: Pass",
        "      Namespaces: ns=z",
        "    [2] deny-others: Deny",
        "      Namespaces: <none> (every namespace)",
        "    Protocols: <any> (every port and protocol, ICMP included)",
        "  Egress: <none>",
        "  Order:           Admin tier, priority 10: policy 1 of 2 (ascending priority, then name)",
        "    node-1: x/a",
        "    node-2: <none>",
        "    node-1: yes",
        "    node-2: NO (the agent realized resourceVersion 9)",
        "  Errors:          <none>",
    ):
        assert line in lines, line


def test_describe_cnp_names_invalid_fields_and_the_rules_failed_closed() -> None:
    view = ClusterView(raw_cluster([], cluster_policies=[BROKEN]))
    text = cnp_mod.describe_text(view, view.raw.cluster_policies[0], list(NODES), node_2_behind(view.raw))
    lines = text.splitlines()
    assert (
        "    [0] bad-pass: Deny (failed closed: Pass written; denies every peer, port and protocol)" in lines
    )
    assert "    [1]: Accept (failed closed: matches nothing)" in lines
    assert "    Protocols: <any> (every port and protocol, ICMP included)" in lines
    errors = lines[lines.index("  Errors:") + 1 :]
    assert [e.split(":")[0].strip() for e in errors] == [
        "spec.egress[0].to[0].domainNames",
        "spec.egress[1].to[0].networks[0]",
    ]
    [row] = cnp_mod.get_rows(view, view.raw.cluster_policies, list(NODES), node_2_behind(view.raw), NOW)
    assert (row["errors"], row["pods"]) == (2, 9)


# -- inputs: the API, with and without the CRD -------------------------------------------------


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig of a Kubernetes API server (the lab's, in this process) with no pods, no
    policies, and no ClusterNetworkPolicy CRD unless the lab serves one."""
    with served_kubeconfig(Store(window=50), tmp_path) as path:
        yield path


class _CustomObjects:
    """kubernetes.client.CustomObjectsApi answering the ClusterNetworkPolicy list."""

    answer: tuple[int, list[dict[str, Any]]] = (200, [])

    def __init__(self, api_client: Any) -> None:
        pass

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Any:
        if group == "projectcalico.org":
            raise ApiException(status=404, reason="Not Found")  # no Calico API server
        assert (group, version, plural, kw) == (
            "policy.networking.k8s.io",
            "v1alpha2",
            "clusternetworkpolicies",
            {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT},
        )
        code, items = self.answer
        if code != 200:
            raise ApiException(status=code, reason="Forbidden" if code == 403 else "Internal")
        return SimpleNamespace(data=json.dumps({"items": items, "metadata": {"resourceVersion": "7"}}))


def _run(kubeconfig: Path, *argv: str) -> int:
    local = [
        "--kubeconfig",
        str(kubeconfig),
        "--node",
        "node-1",
        "--agent",
        "127.0.0.1:9",
        "--pin-root",
        "/nonexistent",
    ]
    return main([*argv, *local])


def test_get_cnp_on_a_cluster_without_the_crd_says_no_resources_found(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(kubeconfig, "get", "cnp") == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "No resources found\n")
    assert _run(kubeconfig, "get", "clusternetworkpolicies", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == {"apiVersion": "v1", "kind": "List", "items": []}
    assert _run(kubeconfig, "describe", "cnp", "nope") == 1
    err = capsys.readouterr().err
    assert err == 'error: clusternetworkpolicies.policy.networking.k8s.io "nope" not found\n'


def test_the_local_target_lists_cluster_network_policies_through_the_custom_objects_api(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s_client, "CustomObjectsApi", _CustomObjects)
    items = [{"metadata": {"name": p["metadata"]["name"]}, "spec": p["spec"]} for p in POLICIES]
    monkeypatch.setattr(_CustomObjects, "answer", (200, items))
    raw = LocalTarget("node-1", "/nonexistent", str(kubeconfig), "127.0.0.1:9").objects()
    names = sorted(o["metadata"]["name"] for o in raw.cluster_policies)
    assert names == ["default-deny-z", "no-kubelet", "protect-x-a"]
    assert {(o["kind"], o["apiVersion"]) for o in raw.cluster_policies} == {("ClusterNetworkPolicy", CNP)}
    assert _run(kubeconfig, "get", "cnp") == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["default-deny-z", "Baseline", "5"]
    monkeypatch.setattr(_CustomObjects, "answer", (403, []))
    raw = LocalTarget("node-1", "/nonexistent", str(kubeconfig), "127.0.0.1:9").objects()
    assert (
        list(raw.cluster_policies) == [] and "not allowed to list clusternetworkpolicies" in raw.warnings[0]
    )
    monkeypatch.setattr(_CustomObjects, "answer", (500, []))
    with pytest.raises(VethguardError, match=r"listing clusternetworkpolicies.* failed \(500\)"):
        LocalTarget("node-1", "/nonexistent", str(kubeconfig), "127.0.0.1:9").objects()


class _LabClient:
    def __init__(self, cnp_answer: tuple[int, Any]) -> None:
        self.cnp_answer = cnp_answer

    def request(self, method: str, path: str) -> tuple[int, Any]:
        if path == CNP_PATH:
            return self.cnp_answer
        return 200, {"items": [], "metadata": {"resourceVersion": "3"}}


def test_a_lab_that_does_not_serve_cluster_network_policies_has_none() -> None:
    lab = LabTarget.__new__(LabTarget)
    lab.lab = "t"
    lab.client = _LabClient((404, {"kind": "Status"}))  # type: ignore[assignment]
    raw = lab.objects()
    assert (list(raw.cluster_policies), list(raw.warnings)) == ([], [])
    assert "ClusterNetworkPolicy" not in raw.digests and raw.digests["Pod"] == digest_text(EMPTY_DIGEST)
    lab.client = _LabClient((200, {"items": [POLICIES[0]], "metadata": {"resourceVersion": "4"}}))  # type: ignore[assignment]
    raw = lab.objects()
    assert [o["metadata"]["name"] for o in raw.cluster_policies] == ["protect-x-a"]
    assert raw.digests["ClusterNetworkPolicy"] == digest_text(kind_digest(raw.cluster_policies, False))
    assert ClusterView(raw).cluster.cluster_policies["protect-x-a"].tier == "Admin"


# -- reachability ---------------------------------------------------------------------------------


def test_reachability_cells_name_the_tier_policy_and_rule_that_decided(view: ClusterView) -> None:
    pods = view.pods()
    cells = {(r["from"], r["to"]): r for r in reach.matrix(view, pods, 80, "TCP")}
    assert {k: cells[("x/b", "x/a")][k] for k in ("allowed", "direction", "reason", "tier", "policy")} == {
        "allowed": False,
        "direction": "ingress",
        "reason": "DROP_ADMIN",
        "tier": "Admin",
        "policy": "protect-x-a",
    }
    assert (cells[("y/b", "x/a")]["rule_name"], cells[("z/a", "y/a")]["rule_name"]) == (
        "allow-y-b",
        "deny-from-z",
    )
    assert (cells[("z/a", "y/c")]["tier"], cells[("z/a", "y/c")]["policy"]) == (
        "NetworkPolicy",
        "y/y-c-from-z",
    )
    assert cells[("x/a", "y/a")]["tier"] is None and cells[("x/a", "y/a")]["reason"] == "ALLOW_NOT_ISOLATED"
    assert reach.tier_lines(list(cells.values())) == [
        "  Admin:protect-x-a ingress[0] (allow-y-b): 1 allowed",
        "  Admin:protect-x-a ingress[2] (deny-others): 5 denied",
        "  Baseline:default-deny-z ingress[0] (deny-from-z): 24 denied",
    ]
