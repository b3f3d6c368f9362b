"""ClusterNetworkPolicy objects (controller.compiler.cnp, pure): the upstream conformance policies
parse cleanly, the order is tier -> priority -> name, and every unusable part fails closed as the
API says (Accept matches nothing; Deny and Pass become Deny-all) with an error naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler.cnp import (
    ACCEPT,
    DENY,
    PASS,
    ClusterNetworkPolicy,
    CnpPort,
    parse_cluster_network_policy,
)
from controller.core.errors import PolicyError

CNP_SCENARIOS = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "cnp" / "cnp-public.yaml"
EVERYONE: dict[str, Any] = {"namespaces": {}}


def cnp(name: str = "p", tier: Any = "Admin", priority: Any = 10, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tier": tier, "priority": priority, "subject": EVERYONE, **spec}
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def parse(raw: Any) -> tuple[ClusterNetworkPolicy, list[PolicyError]]:
    errors: list[PolicyError] = []
    pol = parse_cluster_network_policy(raw, errors)
    assert pol is not None
    return pol, errors


def rule(action: str, *peers: Any, protocols: Any = None, key: str = "from") -> dict[str, Any]:
    r: dict[str, Any] = {"name": f"{action.lower()}-rule", "action": action, key: list(peers)}
    if protocols is not None:
        r["protocols"] = protocols
    return r


def _scenario_policies() -> list[dict[str, Any]]:
    if not CNP_SCENARIOS.is_file():
        pytest.skip(f"{CNP_SCENARIOS} is not present")
    out = []
    for scenario in yaml.safe_load(CNP_SCENARIOS.read_text()):
        for step in scenario.get("steps", []):
            out += [o for o in step.get("apply", []) or [] if o.get("kind") == "ClusterNetworkPolicy"]
    return out


def test_every_policy_of_the_upstream_conformance_scenarios_parses_without_an_error() -> None:
    policies = _scenario_policies()
    assert len(policies) >= 6
    for raw in policies:
        pol, errors = parse(raw)
        assert errors == [], errors
        assert not any(r.matches_nothing or r.deny_all for r in (*pol.ingress, *pol.egress))
        assert len(pol.ingress) == len(raw["spec"].get("ingress", []))


def test_policies_are_ordered_by_tier_then_priority_then_name() -> None:
    pols = [
        parse(cnp(n, t, p))[0]
        for n, t, p in [("b", "Admin", 5), ("a", "Admin", 5), ("z", "Admin", 1), ("c", "Baseline", 0)]
    ]
    assert [p.name for p in sorted(pols, key=lambda p: p.order)] == ["z", "a", "b", "c"]


def test_each_protocol_form_becomes_its_port_match() -> None:
    protocols = [
        {"tcp": {"destinationPort": {"number": 80}}},
        {"udp": {"destinationPort": {"range": {"start": 5000, "end": 5010}}}},
        {"sctp": {}},
        {"destinationNamedPort": "web"},
    ]
    pol, errors = parse(cnp(ingress=[rule(ACCEPT, EVERYONE, protocols=protocols)]))
    assert errors == []
    assert pol.ingress[0].ports == (
        CnpPort("TCP", 80, 80),
        CnpPort("UDP", 5000, 5010),
        CnpPort("SCTP"),
        CnpPort("", named="web"),
    )
    no_protocols, _ = parse(cnp(ingress=[rule(ACCEPT, EVERYONE)]))
    assert no_protocols.ingress[0].ports is None  # every port and protocol, ICMP included


BAD_PEERS = [
    ({}, "exactly one field"),
    ({"namespaces": {}, "pods": {"podSelector": {}}}, "exactly one field"),
    ({"serviceAccounts": {}}, "unknown field"),  # an API newer than ours
    ({"namespaces": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}, "operator"),
    ({"pods": {"namespaceSelector": {}}}, "podSelector"),
]
BAD_PROTOCOLS = [
    ([{"tcp": {"destinationPort": {"number": 0}}}], "1..65535"),
    ([{"tcp": {"destinationPort": {"number": 65536}}}], "1..65535"),
    ([{"udp": {"destinationPort": {"range": {"start": 90, "end": 90}}}}], "less than end"),
    ([{"tcp": {"destinationPort": {"number": 80, "range": {"start": 1, "end": 2}}}}], "exactly one field"),
    ([{"icmp": {}}], "unknown field"),
    ([], "at least one"),
]


@pytest.mark.parametrize(("peer", "why"), BAD_PEERS)
@pytest.mark.parametrize("action", [ACCEPT, DENY, PASS])
def test_an_unusable_peer_makes_accept_match_nothing_and_deny_or_pass_a_deny_all_rule(
    peer: Any, why: str, action: str
) -> None:
    pol, errors = parse(cnp(ingress=[rule(action, peer)]))
    (r,) = pol.ingress
    assert [e.field.startswith("spec.ingress[0]") and why in str(e) for e in errors] == [True], errors
    assert str(errors[0]).startswith("ClusterNetworkPolicy p: spec.ingress[0]")
    if action == ACCEPT:
        assert (r.action, r.matches_nothing, r.deny_all) == (ACCEPT, True, False)
    else:
        assert (r.action, r.matches_nothing, r.deny_all, r.peers, r.ports) == (DENY, False, True, (), None)


@pytest.mark.parametrize(("protocols", "why"), BAD_PROTOCOLS)
def test_an_unusable_protocol_entry_fails_the_rule_closed(protocols: Any, why: str) -> None:
    pol, errors = parse(
        cnp(
            ingress=[rule(ACCEPT, EVERYONE, protocols=protocols)],
            egress=[rule(PASS, EVERYONE, protocols=protocols, key="to")],
        )
    )
    assert pol.ingress[0].matches_nothing and pol.egress[0].deny_all
    assert len(errors) == 2 and all(why in e.message for e in errors), errors


def test_domain_names_in_an_accept_rule_are_canonical_patterns_once_each() -> None:
    peer = {"domainNames": ["API.example.com.", "*.Example.com", "api.example.com"]}
    pol, errors = parse(
        cnp(egress=[rule(ACCEPT, peer, key="to"), rule(DENY, {"networks": ["0.0.0.0/0"]}, key="to")])
    )
    assert errors == []
    [parsed] = pol.egress[0].peers
    assert (parsed.kind, parsed.domains) == ("domainNames", ("api.example.com", "*.example.com"))


@pytest.mark.parametrize("action", [DENY, PASS])
def test_domain_names_in_a_deny_or_pass_rule_are_refused_as_the_api_says(action: str) -> None:
    pol, errors = parse(cnp(egress=[rule(action, {"domainNames": ["*.example.com"]}, key="to")]))
    assert [(e.field, e.message) for e in errors] == [
        ("spec.egress[0].to[0].domainNames", f"only allowed in Accept rules, not in a {action} rule")
    ]
    assert pol.egress[0].deny_all


@pytest.mark.parametrize(
    ("names", "field", "message"),
    [
        (["ok.example.com", "example"], "domainNames[1]", "'example': must have at least two labels"),
        (["www.*.example.com"], "domainNames[0]", "a wildcard is only allowed as a whole first label"),
        (["bad_-.example.com "], "domainNames[0]", "must consist of"),
        ([], "domainNames", "must be a non-empty list of domain names"),
    ],
)
def test_bad_domain_names_are_reported_by_name(names: list[str], field: str, message: str) -> None:
    pol, errors = parse(cnp(egress=[rule(ACCEPT, {"domainNames": names}, key="to")]))
    assert [e.field for e in errors] == [f"spec.egress[0].to[0].{field}"]
    assert message in errors[0].message
    assert pol.egress[0].matches_nothing


def test_egress_peers_networks_and_nodes_and_their_limits() -> None:
    pol, errors = parse(
        cnp(
            egress=[
                rule(
                    DENY,
                    {"networks": ["10.0.0.0/8", "fd00::/8"]},
                    {"nodes": {"matchLabels": {"a": "b"}}},
                    key="to",
                )
            ]
        )
    )
    assert errors == []
    nets, nodes = pol.egress[0].peers
    assert [str(n) for n in nets.networks] == ["10.0.0.0/8", "fd00::/8"] and nodes.kind == "nodes"
    ingress_nodes, errors = parse(cnp(ingress=[rule(DENY, {"nodes": {}})]))
    assert ingress_nodes.ingress[0].deny_all and "unknown field" in errors[0].message  # egress only
    bad_cidr, errors = parse(cnp(egress=[rule(ACCEPT, {"networks": ["10.0.0.0/33"]}, key="to")]))
    assert bad_cidr.egress[0].matches_nothing and errors[0].field == "spec.egress[0].to[0].networks[0]"
    named, errors = parse(
        cnp(
            egress=[
                rule(
                    DENY, {"networks": ["10.0.0.0/8"]}, protocols=[{"destinationNamedPort": "dns"}], key="to"
                )
            ]
        )
    )
    assert named.egress[0].deny_all and "named port" in errors[0].message


@pytest.mark.parametrize(
    "raw_rule",
    [{"action": "Allow", "from": [EVERYONE]}, {"action": DENY, "from": []}, {"action": PASS}, "deny"],
)
def test_a_rule_without_peers_or_with_an_unknown_action_is_a_deny_all_rule(raw_rule: Any) -> None:
    pol, errors = parse(cnp(ingress=[raw_rule]))
    assert pol.ingress[0].deny_all and pol.ingress[0].action == DENY and len(errors) == 1


@pytest.mark.parametrize(
    ("tier", "priority"), [("Developer", 5), ("Admin", 1001), ("Baseline", -1), ("Admin", "5"), (None, None)]
)
def test_a_policy_without_a_usable_place_is_put_first_and_can_only_deny(tier: Any, priority: Any) -> None:
    pol, errors = parse(
        cnp(
            tier=tier,
            priority=priority,
            ingress=[rule(ACCEPT, EVERYONE), rule(PASS, EVERYONE), rule(DENY, EVERYONE)],
        )
    )
    assert (pol.tier, pol.priority) == ("Admin", 0) and errors
    accept, passed, deny = pol.ingress
    assert accept.matches_nothing
    assert (passed.action, passed.peers) == (DENY, deny.peers)
    assert (deny.action, deny.deny_all, deny.matches_nothing) == (DENY, False, False)


@pytest.mark.parametrize(
    "subject", [None, {}, {"namespaces": {}, "pods": {"podSelector": {}}}, {"services": {}}]
)
def test_a_policy_without_a_usable_subject_applies_to_every_pod_and_can_only_deny(subject: Any) -> None:
    raw = cnp(egress=[rule(ACCEPT, EVERYONE, key="to"), rule(DENY, EVERYONE, key="to")])
    raw["spec"]["subject"] = subject
    pol, errors = parse(raw)
    assert (pol.subject_namespaces, pol.subject_pods) == (None, None)
    assert errors[0].field.startswith("spec.subject") and "every pod" in errors[0].message
    assert pol.egress[0].matches_nothing and pol.egress[1].action == DENY


def test_more_than_25_rules_is_reported_and_enforced_as_written() -> None:
    pol, errors = parse(cnp(ingress=[rule(DENY, EVERYONE)] * 26))
    assert len(pol.ingress) == 26 and not any(r.deny_all for r in pol.ingress)
    assert [e.field for e in errors] == ["spec.ingress"]


def test_a_policy_without_a_name_is_skipped_with_an_error() -> None:
    errors: list[PolicyError] = []
    assert parse_cluster_network_policy({"metadata": {}, "spec": {}}, errors) is None
    assert [e.field for e in errors] == ["metadata.name"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.sampled_from(["Admin", "Accept", "Deny", "Pass", "10.0.0.0/8", "web", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "tier",
                    "priority",
                    "subject",
                    "ingress",
                    "egress",
                    "from",
                    "to",
                    "action",
                    "namespaces",
                    "pods",
                    "podSelector",
                    "namespaceSelector",
                    "networks",
                    "nodes",
                    "protocols",
                    "tcp",
                    "destinationPort",
                    "number",
                    "range",
                    "start",
                    "end",
                    "matchLabels",
                    "name",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_spec_parses_without_raising_and_no_rule_is_wider_than_a_valid_one(spec: Any) -> None:
    errors: list[PolicyError] = []
    pol = parse_cluster_network_policy({"metadata": {"name": "fuzz"}, "spec": spec}, errors)
    assert pol is not None
    assert all(e.object == "ClusterNetworkPolicy fuzz" for e in errors)
    for r in (*pol.ingress, *pol.egress):
        assert r.action in (ACCEPT, DENY, PASS)
        assert not (r.matches_nothing and r.deny_all)
        if r.matches_nothing:
            assert r.action == ACCEPT
        if r.deny_all:
            assert r.action == DENY and r.peers == () and r.ports is None
