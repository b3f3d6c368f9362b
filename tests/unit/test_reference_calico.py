"""The reference evaluator's Calico semantics (tests/reference/calico.py): hand-worked cases for each
rule of issue 16's reading of projectcalico.org/v3 GlobalNetworkPolicy and NetworkPolicy, each
answer stated from that reading, never from the product."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from tests.reference import cases as gen
from tests.reference.calico_cases import CalicoCase, calico_cases, calico_manifests
from tests.reference.evaluator import Evaluator, InvalidPolicy
from tests.support.k8s import K8s as K

NAMESPACES = [K.ns("x", team="a"), K.ns("y", team="b")]
NODES = [K.node("node-1", "10.244.1.1"), K.node("node-2", "10.244.2.1")]
PODS = [
    K.pod("x/web", {"app": "web"}, ["10.244.1.10", "fd00:10:244:1::a"], "node-1", [("http", 8080, "TCP")]),
    K.pod("x/db", {"app": "db"}, ["10.244.2.11", "fd00:10:244:2::b"], "node-2", [("http", 5432, "TCP")]),
    K.pod("y/cli", {"app": "cli"}, ["10.244.2.12", "fd00:10:244:2::c"], "node-2"),
    K.pod("y/hn", {"app": "cli"}, None, "node-1", host_network=True),
]
OUTSIDE = "203.0.113.5"


def gnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def cnp(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {**K.policy(key, spec), "apiVersion": "projectcalico.org/v3"}


def admin_cnp(name: str, action: str) -> dict[str, Any]:
    """An Admin ClusterNetworkPolicy: every pod's ingress from every pod gets `action`."""
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "tier": "Admin",
            "priority": 1,
            "subject": {"namespaces": {}},
            "ingress": [{"action": action, "from": [{"namespaces": {}}]}],
        },
    }


def baseline_deny() -> dict[str, Any]:
    out = admin_cnp("baseline-deny", "Deny")
    out["spec"]["tier"] = "Baseline"
    return out


def world(
    calico: list[dict[str, Any]],
    policies: list[dict[str, Any]] = (),  # type: ignore[assignment]
    cluster_policies: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> Evaluator:
    return Evaluator(NAMESPACES, PODS, list(policies), list(cluster_policies), NODES, calico_policies=calico)


def tcp_ok(ev: Evaluator, src: str, dst: str, port: int = 80) -> bool:
    return ev.allowed(src, dst, port, "TCP", 4)


DB = "app == 'db'"
ALLOW_ALL = {"action": "Allow"}
DENY_ALL = {"action": "Deny"}


def test_the_first_matching_rule_decides_a_deny_before_an_allow() -> None:
    ev = world(
        [
            gnp(
                "g",
                {
                    "selector": DB,
                    "ingress": [{"action": "Deny", "source": {"selector": "app == 'cli'"}}, ALLOW_ALL],
                },
            )
        ]
    )
    assert not tcp_ok(ev, "y/cli", "x/db") and tcp_ok(ev, "x/web", "x/db")


def test_policies_are_taken_by_ascending_order_whatever_their_names() -> None:
    ev = world(
        [
            gnp("a-deny", {"order": 10, "selector": DB, "ingress": [DENY_ALL]}),
            gnp("z-allow", {"order": 5, "selector": DB, "ingress": [ALLOW_ALL]}),
        ]
    )
    assert tcp_ok(ev, "y/cli", "x/db")


def test_a_policy_without_order_comes_after_every_ordered_one_networkpolicy_included() -> None:
    deny_unordered = gnp("a", {"selector": DB, "ingress": [DENY_ALL]})
    ev = world([deny_unordered, gnp("z", {"order": 2000, "selector": DB, "ingress": [ALLOW_ALL]})])
    assert tcp_ok(ev, "y/cli", "x/db")
    knp = K.policy("x/open", {"podSelector": {}, "ingress": [{}]})  # order 1000: before the unordered one
    assert tcp_ok(world([deny_unordered], [knp]), "y/cli", "x/db")
    assert not tcp_ok(world([deny_unordered]), "y/cli", "x/db")


def test_equal_orders_are_ordered_by_name_key_in_byte_order() -> None:
    def first_wins(first: str, second: str) -> bool:
        """`first` allows, `second` denies, both at order 1: is cli -> db allowed?"""
        make = [cnp if "/" in key else gnp for key in (first, second)]
        one, two = (
            f(key, {"order": 1, "selector": DB, "ingress": [rule]})
            for f, key, rule in zip(make, (first, second), (ALLOW_ALL, DENY_ALL), strict=True)
        )
        return tcp_ok(world([two, one]), "y/cli", "x/db")

    # GlobalNetworkPolicy keys are names, NetworkPolicy keys "<namespace>/<name>"
    assert first_wins("b", "c") and not first_wins("c", "b")
    assert first_wins("x/a", "y") and not first_wins("y", "x/a")
    assert first_wins("b", "x/a") and first_wins("B", "a")  # byte order: upper case first


def test_a_kubernetes_networkpolicy_sits_at_order_1000_named_knp_default() -> None:
    knp = K.policy("x/p", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]})
    # "x/a" < "x/knp.default.p" < "x/z"
    assert not tcp_ok(
        world([cnp("x/a", {"order": 1000, "selector": DB, "ingress": [DENY_ALL]})], [knp]), "y/cli", "x/db"
    )
    assert tcp_ok(
        world([cnp("x/z", {"order": 1000, "selector": DB, "ingress": [DENY_ALL]})], [knp]), "y/cli", "x/db"
    )
    # its rules are Allow rules: not matching, the tier goes on to the next policy
    narrow = K.policy("x/p", {"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]})
    assert tcp_ok(
        world([gnp("z", {"order": 2000, "selector": DB, "ingress": [ALLOW_ALL]})], [narrow]), "y/cli", "x/db"
    )


def test_a_selected_pod_that_no_rule_matches_is_denied_at_the_end_of_the_tier() -> None:
    ev = world(
        [gnp("g", {"selector": DB, "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]})]
    )
    assert tcp_ok(ev, "x/web", "x/db") and not tcp_ok(ev, "y/cli", "x/db")
    assert tcp_ok(ev, "y/cli", "x/web")  # web is not selected: no tier, allowed
    assert not tcp_ok(world([gnp("g", {"selector": DB})]), "x/web", "x/db")  # no rules at all
    # a networkpolicy with no ingress rules inside the tier is a policy with no rules
    assert not tcp_ok(
        world(
            [
                gnp(
                    "g",
                    {"order": 2000, "selector": DB, "egress": [ALLOW_ALL], "types": ["Ingress", "Egress"]},
                )
            ],
            [K.policy("x/iso", {"podSelector": {}})],
        ),
        "x/web",
        "x/db",
    )


def test_log_has_no_effect_and_evaluation_goes_on_with_the_next_rule() -> None:
    assert not tcp_ok(
        world([gnp("g", {"selector": DB, "ingress": [{"action": "Log"}, DENY_ALL, ALLOW_ALL]})]),
        "x/web",
        "x/db",
    )
    assert tcp_ok(
        world([gnp("g", {"selector": DB, "ingress": [{"action": "Log"}, ALLOW_ALL]})]), "x/web", "x/db"
    )
    assert not tcp_ok(world([gnp("g", {"selector": DB, "ingress": [{"action": "Log"}]})]), "x/web", "x/db")


def test_a_pass_leaves_the_calico_tier_networkpolicy_included_for_baseline() -> None:
    isolating = K.policy("x/iso", {"podSelector": {}})  # would deny everything into x at order 1000
    passing = gnp("g", {"order": 1, "selector": DB, "ingress": [{"action": "Pass"}]})
    assert tcp_ok(world([passing], [isolating]), "y/cli", "x/db")
    assert not tcp_ok(world([passing], [isolating], [baseline_deny()]), "y/cli", "x/db")
    assert tcp_ok(world([passing], [isolating]), OUTSIDE, "x/db")  # outside hosts pass on to Baseline too


def test_an_admin_pass_goes_on_into_the_calico_tier_and_its_networkpolicies() -> None:
    knp = K.policy(
        "x/p", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}
    )
    only_selects = gnp("g", {"order": 2000, "selector": DB, "ingress": [DENY_ALL]})
    ev = world([only_selects], [knp], [admin_cnp("pass", "Pass")])
    assert tcp_ok(ev, "x/web", "x/db") and not tcp_ok(ev, "y/cli", "x/db")
    assert not tcp_ok(
        world([gnp("g", {"selector": DB, "ingress": [ALLOW_ALL]})], [], [admin_cnp("deny", "Deny")]),
        "x/web",
        "x/db",
    )


def test_without_a_calico_policy_for_the_pod_networkpolicy_works_as_before() -> None:
    knp = K.policy(
        "x/p",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        },
    )
    ev = world([gnp("g", {"selector": "app == 'web'", "ingress": [DENY_ALL]})], [knp])
    assert tcp_ok(ev, "x/web", "x/db") and not tcp_ok(ev, "y/cli", "x/db")


def test_icmp_rules_match_the_echo_request_of_their_family_by_type_and_code() -> None:
    def ping(rule: dict[str, Any], family: int = 4) -> bool:
        return world([gnp("g", {"selector": DB, "ingress": [rule]})]).allowed(
            "x/web", "x/db", 0, "ICMP", family
        )

    assert ping({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}})
    assert ping({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}})
    assert not ping({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 1}})
    assert not ping({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 0}})
    assert not ping({"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 8}})
    assert ping({"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 3}})
    assert not ping({"action": "Allow", "protocol": "ICMP"}, family=6)
    assert ping({"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128}}, family=6)
    assert ping({"action": "Allow", "protocol": 58}, family=6) and ping({"action": "Allow", "protocol": 1})
    # rules with ports never match ICMP; Kubernetes NetworkPolicy rules without ports do
    assert not ping({"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [1]}})
    assert not tcp_ok(
        world([gnp("g", {"selector": DB, "ingress": [{"action": "Allow", "protocol": "ICMP"}]})]),
        "x/web",
        "x/db",
    )
    knp_any = K.policy("x/p", {"podSelector": {}, "ingress": [{}]})
    knp_port = K.policy("x/p", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    select = gnp("g", {"order": 2000, "selector": DB})
    assert world([select], [knp_any]).allowed("x/web", "x/db", 0, "ICMP", 4)
    assert not world([select], [knp_port]).allowed("x/web", "x/db", 0, "ICMP", 4)


def test_not_nets_and_not_selector_match_peers_that_are_not_pods() -> None:
    not_web = world(
        [
            gnp(
                "g",
                {"selector": DB, "ingress": [{"action": "Allow", "source": {"notSelector": "app == 'web'"}}]},
            )
        ]
    )
    assert (
        tcp_ok(not_web, OUTSIDE, "x/db")
        and tcp_ok(not_web, "y/hn", "x/db")
        and tcp_ok(not_web, "y/cli", "x/db")
    )
    assert not tcp_ok(not_web, "x/web", "x/db")
    outside_cluster = world(
        [
            gnp(
                "g",
                {"selector": DB, "ingress": [{"action": "Allow", "source": {"notNets": ["10.244.0.0/16"]}}]},
            )
        ]
    )
    assert tcp_ok(outside_cluster, OUTSIDE, "x/db") and not tcp_ok(outside_cluster, "y/cli", "x/db")
    # selectors never match a host-network pod (it is its node's address): all() does not either
    any_pod = world(
        [gnp("g", {"selector": DB, "ingress": [{"action": "Allow", "source": {"selector": "all()"}}]})]
    )
    assert (
        tcp_ok(any_pod, "y/cli", "x/db")
        and not tcp_ok(any_pod, "y/hn", "x/db")
        and not tcp_ok(any_pod, OUTSIDE, "x/db")
    )
    by_net = world(
        [gnp("g", {"selector": DB, "ingress": [{"action": "Allow", "source": {"nets": ["10.244.1.1/32"]}}]})]
    )
    assert tcp_ok(by_net, "y/hn", "x/db") and not tcp_ok(by_net, "x/web", "x/db")


def test_named_ports_resolve_on_the_destination_pod_with_the_rule_protocol() -> None:
    def rule(ports: list[Any], protocol: str = "TCP") -> list[dict[str, Any]]:
        return [{"action": "Allow", "protocol": protocol, "destination": {"ports": ports}}]

    ingress = world([gnp("g", {"selector": "all()", "ingress": rule(["http"]), "types": ["Ingress"]})])
    assert tcp_ok(ingress, "y/cli", "x/web", 8080) and tcp_ok(ingress, "y/cli", "x/db", 5432)
    assert not tcp_ok(ingress, "y/cli", "x/web", 5432) and not ingress.allowed(
        "y/cli", "x/web", 8080, "UDP", 4
    )
    egress = world([gnp("g", {"selector": "app == 'cli'", "egress": rule(["http", "8000:8100"])})])
    assert tcp_ok(egress, "y/cli", "x/db", 5432) and tcp_ok(egress, "y/cli", OUTSIDE, 8050)
    assert not tcp_ok(egress, "y/cli", OUTSIDE, 5432)  # not a pod: no named ports
    excluded = world(
        [
            gnp(
                "g",
                {
                    "selector": DB,
                    "ingress": [
                        {"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [80, "1:10"]}}
                    ],
                },
            )
        ]
    )
    assert (
        tcp_ok(excluded, "x/web", "x/db", 81)
        and not tcp_ok(excluded, "x/web", "x/db", 80)
        and not tcp_ok(excluded, "x/web", "x/db", 10)
    )


def test_types_default_from_the_rules_present_and_limit_the_directions() -> None:
    only_egress = world([gnp("g", {"selector": DB, "egress": [DENY_ALL]})])
    assert tcp_ok(only_egress, "y/cli", "x/db") and not tcp_ok(only_egress, "x/db", "y/cli")
    both = world([gnp("g", {"selector": DB, "egress": [DENY_ALL], "ingress": [ALLOW_ALL]})])
    assert tcp_ok(both, "y/cli", "x/db") and not tcp_ok(both, "x/db", "y/cli")
    neither = world([gnp("g", {"selector": DB})])
    assert not tcp_ok(neither, "y/cli", "x/db") and tcp_ok(neither, "x/db", "y/cli")
    ignored = world(
        [gnp("g", {"selector": DB, "types": ["Egress"], "ingress": [DENY_ALL], "egress": [ALLOW_ALL]})]
    )
    assert tcp_ok(ignored, "y/cli", "x/db")  # ingress rules ignored: db has no tier for ingress


def test_egress_rules_read_source_as_the_selected_pod_and_destination_as_the_peer() -> None:
    ev = world(
        [
            gnp(
                "g",
                {
                    "selector": "all()",
                    "types": ["Egress"],
                    "egress": [
                        {
                            "action": "Deny",
                            "source": {"selector": "app == 'web'"},
                            "destination": {"nets": ["10.244.2.0/24"]},
                        },
                        ALLOW_ALL,
                    ],
                },
            )
        ]
    )
    assert not tcp_ok(ev, "x/web", "x/db") and tcp_ok(ev, "x/web", OUTSIDE) and tcp_ok(ev, "y/cli", "x/db")


def test_implicit_labels_and_namespace_selectors_scope_what_policies_select() -> None:
    in_y = world([gnp("g", {"selector": "projectcalico.org/namespace == 'y'", "ingress": [DENY_ALL]})])
    assert not tcp_ok(in_y, "x/web", "y/cli") and tcp_ok(in_y, "y/cli", "x/web")
    team_a = world([gnp("g", {"namespaceSelector": "team == 'a'", "ingress": [DENY_ALL]})])
    assert not tcp_ok(team_a, "y/cli", "x/web") and tcp_ok(team_a, "x/web", "y/cli")
    k8s_peers = world(
        [
            gnp(
                "g",
                {
                    "selector": DB,
                    "ingress": [
                        {"action": "Allow", "source": {"selector": "projectcalico.org/orchestrator == 'k8s'"}}
                    ],
                },
            )
        ]
    )
    assert tcp_ok(k8s_peers, "y/cli", "x/db") and not tcp_ok(k8s_peers, OUTSIDE, "x/db")
    # a namespaced policy selects and matches pods of its own namespace only, unless namespaceSelector
    local = world(
        [
            cnp(
                "x/n",
                {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": "has(app)"}}]},
            )
        ]
    )
    assert (
        tcp_ok(local, "x/web", "x/db")
        and not tcp_ok(local, "y/cli", "x/db")
        and tcp_ok(local, "x/web", "y/cli")
    )
    other = world(
        [
            cnp(
                "x/n",
                {
                    "selector": "all()",
                    "ingress": [
                        {
                            "action": "Allow",
                            "source": {"selector": "has(app)", "namespaceSelector": "team == 'b'"},
                        }
                    ],
                },
            )
        ]
    )
    assert tcp_ok(other, "y/cli", "x/db") and not tcp_ok(other, "x/web", "x/db")
    anywhere = world(
        [gnp("g", {"selector": DB, "ingress": [{"action": "Allow", "source": {"selector": "app == 'cli'"}}]})]
    )
    assert tcp_ok(anywhere, "y/cli", "x/db")
    local_not = world(
        [
            cnp(
                "x/n",
                {"selector": DB, "ingress": [{"action": "Allow", "source": {"notSelector": "has(app)"}}]},
            )
        ]
    )
    assert tcp_ok(local_not, "y/cli", "x/db") and not tcp_ok(local_not, "x/web", "x/db")


def test_protocols_by_name_and_number() -> None:
    def allowed(protocol: Any, query: str) -> bool:
        ev = world([gnp("g", {"selector": DB, "ingress": [{"action": "Allow", "protocol": protocol}]})])
        return ev.allowed("x/web", "x/db", 80, query, 4)

    assert allowed("TCP", "TCP") and not allowed("TCP", "UDP") and allowed(17, "UDP") and allowed(132, "SCTP")
    assert not allowed("UDPLite", "UDP") and not allowed(6, "SCTP")


def rule_with(**fields: Any) -> dict[str, Any]:
    return gnp("bad", {"ingress": [{"action": "Allow", **fields}]})


@pytest.mark.parametrize(
    "raw",
    [
        gnp("bad", {"tier": "default"}),
        cnp("x/bad", {"namespaceSelector": "all()"}),
        gnp("bad", {"doNotTrack": True}),
        gnp("bad", {"preDNAT": True, "applyOnForward": True}),
        gnp("bad", {"selector": "a contains 'b'"}),
        gnp("bad", {"order": "10"}),
        gnp("bad", {"types": ["ingress"]}),
        gnp("bad", {"ingress": [{"action": "allow"}]}),
        rule_with(ipVersion=4),
        rule_with(protocol="tcp"),
        rule_with(protocol=256),
        rule_with(destination={"ports": [80]}),
        rule_with(protocol="ICMP", destination={"ports": [80]}),
        rule_with(protocol="TCP", source={"ports": [80]}),
        rule_with(protocol="TCP", destination={"ports": ["90:80"]}),
        rule_with(protocol="TCP", destination={"ports": [65536]}),
        rule_with(protocol="TCP", destination={"notPorts": ["http"]}),
        rule_with(protocol="TCP", icmp={"type": 8}),
        rule_with(notICMP={"type": 8}),
        rule_with(protocol="ICMP", icmp={"code": 0}),
        rule_with(source={"serviceAccounts": {}}),
        rule_with(source={"nets": ["10.0.0.0/33"]}),
        rule_with(source={"notSelector": "has("}),
    ],
)
def test_what_calico_or_this_reading_refuses_raises_invalid_policy(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicy):
        world([raw])


def test_valid_corner_forms_are_accepted() -> None:
    ok = [
        gnp(
            "ok",
            {"preDNAT": False, "doNotTrack": False, "applyOnForward": True, "order": 10.5, "selector": ""},
        ),
        rule_with(
            protocol="SCTP",
            destination={"ports": [0, "65535", "1:65535"]},
            metadata={"annotations": {"a": "b"}},
        ),
        rule_with(protocol="UDPLite"),  # ports of UDPLite are refused; the protocol alone is fine
        rule_with(protocol="ICMPv6", icmp={"type": 128, "code": 0}),
    ]
    ev = world(ok)  # accepted; "ok" (order 10.5, no rules) selects every pod, nothing matches TCP/80
    assert len(ev.calico_policies) == 4 and not ev.allowed("x/web", "x/db", 80, "TCP", 4)


# -- the generator of random Calico policies (tests/reference/calico_cases.py) ----------------------

GENERATED = calico_cases(max_calico=3, max_pods=4, max_policies=2, cluster_policies=2, host_network=1)


def reference_of(c: CalicoCase) -> tuple[Evaluator, dict[str, list[str]]]:
    addresses = gen.unit_addresses(c.case)
    ev = Evaluator(
        gen.namespace_objects(c.case),
        [gen.pod_object(p, addresses[p.key]) for p in c.case.pods],
        [gen.materialize_policy(p, addresses) for p in c.case.policies],
        [gen.materialize_cluster_policy(p, addresses) for p in c.case.cluster_policies],
        gen.node_objects(nodes=c.case.nodes),
        calico_policies=calico_manifests(c, addresses),
    )
    return ev, addresses


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=GENERATED)
def test_generated_calico_policies_are_valid_and_every_question_has_an_answer(c: CalicoCase) -> None:
    ev, addresses = reference_of(c)
    assert len(ev.calico_policies) == len(c.calico_policies), c.describe()
    for q in gen.queries(c.case, addresses, ports=(80, 8080), protocols=("TCP", "UDP")):
        assert isinstance(ev.allowed(q.src, q.dst, q.port, q.protocol, q.family), bool)


def _rules(c: CalicoCase) -> list[dict[str, Any]]:
    return [r for p in c.calico_policies for d in ("ingress", "egress") for r in p["spec"].get(d) or []]


FEATURES: dict[str, Callable[[CalicoCase], bool]] = {
    "both kinds": lambda c: (
        {p["kind"] for p in c.calico_policies} == {"GlobalNetworkPolicy", "NetworkPolicy"}
    ),
    "an order tie": lambda c: (
        len({p["spec"].get("order", "absent") for p in c.calico_policies}) < len(c.calico_policies)
    ),
    "order 1000 and absent": lambda c: (
        {1000, "absent"} <= {p["spec"].get("order", "absent") for p in c.calico_policies}
    ),
    "every action": lambda c: {r["action"] for r in _rules(c)} == {"Allow", "Deny", "Pass", "Log"},
    "icmp and notICMP": lambda c: (
        any("icmp" in r for r in _rules(c)) and any("notICMP" in r for r in _rules(c))
    ),
    "a named port and a range": lambda c: (
        any(
            isinstance(v, str) and not v[0].isdigit()
            for r in _rules(c)
            for v in r.get("destination", {}).get("ports", [])
        )
        and any(":" in str(v) for r in _rules(c) for v in r.get("destination", {}).get("notPorts", []))
    ),
    "notSelector and notNets on a peer": lambda c: any(
        {"notSelector", "notNets"} <= set(r.get("source", {})) for r in _rules(c)
    ),
    "a pod-relative net": lambda c: any(
        str(n).startswith("pod:")
        for r in _rules(c)
        for e in (r.get("source", {}), r.get("destination", {}))
        for n in e.get("nets", [])
    ),
    "a global namespaceSelector": lambda c: any("namespaceSelector" in p["spec"] for p in c.calico_policies),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_the_generator_reaches_each_feature(feature: str) -> None:
    found = find(
        GENERATED,
        FEATURES[feature],
        settings=settings(max_examples=5000, database=None, phases=[Phase.generate]),
    )
    assert FEATURES[feature](found)
