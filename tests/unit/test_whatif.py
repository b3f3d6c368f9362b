"""`vethguard whatif` (controller/debug/whatif.py, pure): a change compiled beside the live state
and the agents' flow records replayed against both, in the conformance 9-pod model (pods x/a
10.244.1.10, x/b 10.244.2.11, x/c 10.244.1.12, y/a 10.244.2.13 ...; tests/support/debug_views)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from controller.core.errors import VethguardError
from controller.debug.whatif import Change, ChangeError, parse_ref, whatif
from controller.debug.whatif_cli import report_text
from tests.support.debug_views import raw_cluster
from tests.support.flows import flow_rec

IPS = {"x/a": "10.244.1.10", "x/b": "10.244.2.11", "x/c": "10.244.1.12", "y/a": "10.244.2.13"}


def flow(src: str, dst: str, **fields: Any) -> dict[str, Any]:
    """An allowed TCP/80 record src -> dst at the destination's ingress (fields replaced)."""
    ends: dict[str, Any] = {"from": src, "to": dst}
    rec = flow_rec(
        **ends,
        src_ip=IPS[src],
        dst_ip=IPS[dst],
        endpoint=dst,
        verdict="allowed",
        reason="ALLOW_NOT_ISOLATED",
        tier=None,
        policy=None,
        policies=[],
    )
    rec.update(fields)
    return rec


def netpol(name: str, ingress: list[Any] | None = None, pod: str = "a", ns: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"pod": pod}},
            "policyTypes": ["Ingress"],
            "ingress": ingress or [],
        },
    }


def from_pod(pod: str) -> list[Any]:
    return [{"from": [{"podSelector": {"matchLabels": {"pod": pod}}}]}]


FLOWS = [flow("x/b", "x/a"), flow("x/c", "x/a"), flow("y/a", "x/a"), flow("x/a", "x/b")]


def changes(report: Any) -> dict[tuple[str, str], tuple[str, str]]:
    return {(c.source, c.destination): (c.before.verdict, c.after.verdict) for c in report.changed}


def test_a_new_deny_all_networkpolicy_lists_every_flow_to_the_pod_as_newly_denied() -> None:
    raw = raw_cluster([])
    kept = copy.deepcopy(raw)
    report = whatif(raw, Change(apply=[netpol("deny")]), FLOWS)
    assert changes(report) == {
        ("x/b", "x/a"): ("allowed", "denied"),
        ("x/c", "x/a"): ("allowed", "denied"),
        ("y/a", "x/a"): ("allowed", "denied"),
    }
    after = report.changed[0].after
    assert (after.direction, after.endpoint, after.reason, after.tier, after.policy) == (
        "ingress",
        "x/a",
        "DROP_POLICY",
        "NetworkPolicy",
        "x/deny",
    )
    assert after.rule == "ingress of x/a: isolated by x/deny, no rule matches"
    assert report.changed[0].before.rule == "ingress of x/a: not isolated"
    assert report.summary == {
        "x": {"newly_denied": 3, "newly_allowed": 0, "other": 0},
        "y": {"newly_denied": 1, "newly_allowed": 0, "other": 0},
    }
    assert report.objects == [
        {"kind": "NetworkPolicy", "namespace": "x", "name": "deny", "action": "created"}
    ]
    assert (report.flows, report.records, report.nodes) == (4, 4, ["node-1"])
    assert raw == kept  # the live state is not touched


def test_deleting_a_networkpolicy_lists_the_flows_it_denied_as_newly_allowed() -> None:
    raw = raw_cluster([netpol("only-b", from_pod("b"))])
    denied = dict(verdict="denied", reason="DROP_POLICY", policy="x/only-b")
    flows = [flow("x/b", "x/a"), flow("x/c", "x/a", **denied), flow("y/a", "x/a", **denied)]
    report = whatif(raw, Change(delete=["NetPol/x/only-b"]), flows)
    assert changes(report) == {("x/c", "x/a"): ("denied", "allowed"), ("y/a", "x/a"): ("denied", "allowed")}
    assert report.changed[0].before.policy == "x/only-b"
    assert report.objects[0]["action"] == "deleted"
    assert report.summary["x"] == {"newly_denied": 0, "newly_allowed": 2, "other": 0}


def test_replacing_a_networkpolicy_names_the_deciding_rule_before_and_after() -> None:
    raw = raw_cluster([netpol("web", from_pod("b"))])
    report = whatif(raw, Change(apply=[netpol("web", from_pod("c"))]), FLOWS)
    assert changes(report) == {("x/b", "x/a"): ("allowed", "denied"), ("x/c", "x/a"): ("denied", "allowed")}
    b, c = report.changed
    assert b.before.rule == "x/web ingress[0]" and b.after.reason == "DROP_POLICY"
    assert c.after.rule == "x/web ingress[0]" and c.after.tier == "NetworkPolicy"
    assert report.objects[0]["action"] == "replaced"
    assert report.summary["x"] == {"newly_denied": 1, "newly_allowed": 1, "other": 0}


def test_a_clusternetworkpolicy_deny_is_named_with_its_tier_and_rule() -> None:
    deny = {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "no-y"},
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
            "ingress": [
                {"name": "from-y", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}
            ],
        },
    }
    report = whatif(raw_cluster([]), Change(apply=[deny]), FLOWS)
    assert changes(report) == {("y/a", "x/a"): ("allowed", "denied")}
    after = report.changed[0].after
    assert (after.tier, after.policy, after.reason, after.rule) == (
        "Admin",
        "no-y",
        "DROP_ADMIN",
        "Admin:no-y ingress[0] (from-y)",
    )


def test_a_calico_globalnetworkpolicy_deny_is_replayed_in_calicos_tier() -> None:
    gnp = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "no-c-to-a"},
        "spec": {
            "order": 10,
            "selector": "pod == 'a'",
            "types": ["Ingress"],
            "ingress": [
                {"action": "Deny", "source": {"selector": "pod == 'c'"}},
                {"action": "Allow"},
            ],
        },
    }
    report = whatif(raw_cluster([]), Change(apply=[gnp]), FLOWS)
    assert changes(report) == {("x/c", "x/a"): ("allowed", "denied")}
    after = report.changed[0].after
    assert (after.tier, after.policy, after.reason) == ("Calico", "no-c-to-a", "DROP_CALICO")
    assert report.objects == [
        {"kind": "GlobalNetworkPolicy", "namespace": None, "name": "no-c-to-a", "action": "created"}
    ]


def test_an_invalid_document_fails_naming_object_and_field_and_nothing_is_replayed() -> None:
    bad = netpol("deny")
    bad["spec"]["ingress"] = [{"ports": [{"port": 0}]}]
    bad["spec"]["policyTypes"] = ["Bogus"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}
    with pytest.raises(ChangeError) as err:
        whatif(raw_cluster([]), Change(apply=[bad, pod], delete=["cnp/missing"]), FLOWS)
    said = err.value.problems
    assert any(p.startswith("NetworkPolicy x/deny: spec.ingress[0].ports[0].port: ") for p in said)
    assert any(p.startswith("NetworkPolicy x/deny: spec.policyTypes") for p in said)
    assert any(p.startswith("document 2: v1 Pod is not a policy kind") for p in said)
    assert "ClusterNetworkPolicy missing: not found (nothing to delete)" in said
    assert "spec.ingress[0].ports[0].port" in str(err.value)


def test_an_unknown_field_the_api_server_refuses_is_an_error_too() -> None:
    doc = netpol("deny")
    doc["spec"]["ingres"] = []
    with pytest.raises(ChangeError, match=r"NetworkPolicy x/deny: .*ingres"):
        whatif(raw_cluster([]), Change(apply=[doc]), FLOWS)


def test_records_of_one_flow_replay_once_and_what_is_no_policy_decision_is_skipped() -> None:
    flows = [
        flow("x/c", "x/a", count=5),
        flow("x/c", "x/a", direction="egress", endpoint="x/c", node="node-1", count=2),
        flow("x/c", "x/a", reason="LOG_CALICO", verdict="log"),
        flow("x/b", "x/a", reason="DROP_SPOOFED", verdict="denied", node="node-2"),
    ]
    report = whatif(raw_cluster([]), Change(apply=[netpol("deny")]), flows)
    assert (report.flows, report.records) == (1, 4)
    assert report.skipped == {"DROP_SPOOFED": 1, "LOG_CALICO": 1}
    (only,) = report.changed
    assert (only.events, only.nodes) == (7, ("node-1",))


def test_the_text_report_has_the_table_the_summary_and_what_was_replayed() -> None:
    report = whatif(raw_cluster([]), Change(apply=[netpol("deny")]), FLOWS)
    text = report_text(report)
    lines = text.splitlines()
    assert lines[0] == "NetworkPolicy x/deny: created (not applied)"
    assert lines[2].split() == ["FROM", "TO", "PORT", "PROTO", "BEFORE", "AFTER", "RULE-BEFORE", "RULE-AFTER"]
    assert lines[3].split()[:6] == ["x/b", "x/a", "80", "TCP", "allowed", "denied"]
    assert "NAMESPACE   NEWLY-DENIED   NEWLY-ALLOWED   OTHER" in text
    assert lines[-1] == "3 of 4 flows change their verdict; replayed 4 records kept by the agents of node-1"
    assert report.to_json()["changed"][0]["after"]["policy"] == "x/deny"


def test_delete_references_take_short_names_in_any_case_and_refuse_a_bad_shape() -> None:
    assert str(parse_ref("NETPOL/x/web")) == "NetworkPolicy x/web"
    assert str(parse_ref("netpol/web")) == "NetworkPolicy default/web"
    assert str(parse_ref("cnp/no-y")) == "ClusterNetworkPolicy no-y"
    assert str(parse_ref("gnp/g")) == "GlobalNetworkPolicy g"
    assert str(parse_ref("cnetpol/x/c")) == "NetworkPolicy x/c"
    assert parse_ref("hep/h").kind.kind == "HostEndpoint"
    for bad in ("gnp/x/g", "pod/x/a", "netpol", "netpol/x/"):
        with pytest.raises(VethguardError):
            parse_ref(bad)


def test_a_change_with_nothing_in_it_changes_no_verdict() -> None:
    raw = dataclasses.replace(raw_cluster([netpol("web", from_pod("b"))]))
    report = whatif(raw, Change(), FLOWS)
    assert report.changed == [] and report.summary == {} and report.flows == 4
    assert "No replayed flow changes its verdict." in report_text(report)
