from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.compiler.builder import cluster_from_objects
from controller.compiler.model import NS_NAME_LABEL, ClusterState, ContainerPort, NetworkPolicy, PolicyPort
from controller.compiler.parse import parse_network_policy
from controller.compiler.selectors import LabelSelector


def pol(spec: Any, name: str = "p", ns: str = "x") -> NetworkPolicy:
    return parse_network_policy({"metadata": {"namespace": ns, "name": name}, "spec": spec})


def error_fields(p: NetworkPolicy) -> list[str]:
    return [e.field for e in p.errors]


# -- policyTypes defaulting ----------------------------------------------------------------


def test_policy_types_default_to_ingress_only_without_egress_rules() -> None:
    assert pol({"podSelector": {}}).policy_types == {"Ingress"}
    assert pol({"podSelector": {}, "egress": []}).policy_types == {"Ingress"}


def test_policy_types_default_to_ingress_and_egress_with_egress_rules() -> None:
    assert pol({"podSelector": {}, "egress": [{}]}).policy_types == {"Ingress", "Egress"}


def test_explicit_policy_types_are_taken_as_given() -> None:
    p = pol({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}], "egress": [{}]})
    assert p.policy_types == {"Egress"}
    assert not p.isolates_ingress and p.isolates_egress


def test_an_unknown_policy_type_isolates_both_directions() -> None:
    p = pol({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]})
    assert p.policy_types == {"Ingress", "Egress"}
    assert error_fields(p) == ["spec.policyTypes"]


def test_a_missing_pod_selector_selects_every_pod_of_the_namespace() -> None:
    p = pol({"ingress": [{}]})
    assert p.pod_selector.is_everything and not p.errors


# -- rules, peers, ports -------------------------------------------------------------------


def test_rules_keep_their_indices_and_parse_peers_and_ports() -> None:
    p = pol(
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app": "web"}}},
                        {"namespaceSelector": {}, "podSelector": {}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "ports": [
                        {"port": 80},
                        {"protocol": "UDP"},
                        {"port": "http"},
                        {"port": 8000, "endPort": 8080},
                    ],
                }
            ],
        }
    )
    assert not p.errors
    (rule,) = p.ingress
    assert rule.index == 0
    assert rule.peers[0].pod_selector == LabelSelector.parse({"matchLabels": {"app": "web"}})
    assert rule.peers[0].namespace_selector is None
    assert rule.peers[1].namespace_selector == LabelSelector.EVERYTHING
    block = rule.peers[2].ip_block
    assert block is not None and block.cidr == ipaddress.ip_network("10.0.0.0/8")
    assert block.excepts == (ipaddress.ip_network("10.1.0.0/16"),)
    assert rule.ports == (
        PolicyPort("TCP", 80),
        PolicyPort("UDP", None),
        PolicyPort("TCP", "http"),
        PolicyPort("TCP", 8000, 8080),
    )
    assert rule.has_named_ports


def test_a_cidr_with_host_bits_is_normalised() -> None:
    p = pol({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.244.1.7/4"}}]}]})
    assert p.egress[0].peers[0].ip_block.cidr == ipaddress.ip_network("0.0.0.0/4")  # type: ignore[union-attr]


BAD_RULES = [
    (
        {"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]},
        "spec.ingress[1].from[0].podSelector.matchExpressions[0].operator",
    ),
    (
        {
            "from": [
                {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": "b"}]}}
            ]
        },
        "spec.ingress[1].from[0].namespaceSelector.matchExpressions[0].values",
    ),
    (
        {
            "from": [
                {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}}
            ]
        },
        "spec.ingress[1].from[0].podSelector.matchExpressions[0].values",
    ),
    ({"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}, "spec.ingress[1].from[0].ipBlock.cidr"),
    ({"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}, "spec.ingress[1].from[0].ipBlock.cidr"),
    (
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]},
        "spec.ingress[1].from[0].ipBlock.except[0]",
    ),
    (
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]},
        "spec.ingress[1].from[0].ipBlock.except[0]",
    ),
    (
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]},
        "spec.ingress[1].from[0].ipBlock.except[0]",
    ),
    ({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}, "spec.ingress[1].from[0]"),
    ({"from": [{}]}, "spec.ingress[1].from[0]"),
    ({"ports": [{"port": 0}]}, "spec.ingress[1].ports[0].port"),
    ({"ports": [{"port": 65536}]}, "spec.ingress[1].ports[0].port"),
    ({"ports": [{"port": "80"}]}, "spec.ingress[1].ports[0].port"),
    ({"ports": [{"port": "Not_A_Name"}]}, "spec.ingress[1].ports[0].port"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ingress[1].ports[0].protocol"),
    ({"ports": [{"port": 80, "protocol": "tcp"}]}, "spec.ingress[1].ports[0].protocol"),
    ({"ports": [{"endPort": 90}]}, "spec.ingress[1].ports[0].endPort"),
    ({"ports": [{"port": "http", "endPort": 90}]}, "spec.ingress[1].ports[0].endPort"),
    ({"ports": [{"port": 90, "endPort": 80}]}, "spec.ingress[1].ports[0].endPort"),
    ({"ports": [{"port": 90, "endPort": 70000}]}, "spec.ingress[1].ports[0].endPort"),
    ({"ports": {"port": 80}}, "spec.ingress[1].ports"),
    ("allow", "spec.ingress[1]"),
]


@pytest.mark.parametrize(("rule", "field"), BAD_RULES)
def test_an_invalid_rule_is_dropped_whole_with_an_error_naming_the_field(rule: Any, field: str) -> None:
    p = pol({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}, rule, {"ports": [{"port": 81}]}]})
    assert error_fields(p) == [field], [str(e) for e in p.errors]
    assert str(p.errors[0]).startswith("NetworkPolicy x/p: spec.ingress[1]")
    assert [r.index for r in p.ingress] == [0, 2]  # the others survive with their indices
    assert p.isolates_ingress  # fail closed: still isolated


def test_an_invalid_pod_selector_isolates_the_whole_namespace_with_no_rules() -> None:
    p = pol(
        {
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{}],
            "egress": [{}],
        }
    )
    assert error_fields(p) == ["spec.podSelector.matchExpressions[0].operator"]
    assert p.pod_selector.is_everything
    assert p.ingress == () and p.egress == ()
    assert p.policy_types == {"Ingress", "Egress"}


def test_a_spec_that_is_not_an_object_isolates_everything_in_both_directions() -> None:
    p = pol("deny")
    assert p.pod_selector.is_everything and p.policy_types == {"Ingress", "Egress"}
    assert error_fields(p) == ["spec"]


def test_rule_lists_that_are_not_lists_give_no_rules_but_keep_isolation() -> None:
    p = pol({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": {"from": []}})
    assert error_fields(p) == ["spec.ingress"]
    assert p.ingress == () and p.isolates_ingress


# -- pods, namespaces, nodes and the cluster ------------------------------------------------


def test_namespaces_always_carry_the_metadata_name_label() -> None:
    c = cluster_from_objects([{"metadata": {"name": "x", "labels": {"team": "a"}}}], [], [], [])
    assert c.namespaces["x"].labels == {"team": "a", NS_NAME_LABEL: "x"}
    assert c.namespace_labels("unknown") == {NS_NAME_LABEL: "unknown"}


def test_pods_take_ips_from_pod_ips_then_pod_ip(k8s: Any) -> None:
    dual = k8s.pod("x/a", ips=["10.0.0.1", "fd00::1"])
    single = {"metadata": {"namespace": "x", "name": "b"}, "status": {"podIP": "10.0.0.2"}}
    bad = k8s.pod("x/c", ips=["not-an-ip", "10.0.0.3"])
    c = cluster_from_objects([], [dual, single, bad], [], [])
    assert c.pods["x/a"].ips == ("10.0.0.1", "fd00::1")
    assert c.pods["x/a"].ipv4 == "10.0.0.1" and c.pods["x/a"].ipv6 == "fd00::1"
    assert c.pods["x/b"].ips == ("10.0.0.2",) and c.pods["x/b"].ipv6 is None
    assert c.pods["x/c"].ips == ("10.0.0.3",)
    assert [(e.object, e.field) for e in c.errors] == [("Pod x/c", "status.podIPs[0].ip")]


def test_pods_keep_their_named_container_ports(k8s: Any) -> None:
    raw = k8s.pod("x/a", ports=[("http", 8080, "TCP"), (None, 53, "UDP"), ("bad", 0, "TCP")])
    c = cluster_from_objects([], [raw], [], [])
    pod = c.pods["x/a"]
    assert pod.ports == (ContainerPort("http", 8080, "TCP"), ContainerPort(None, 53, "UDP"))
    assert pod.named_ports == (("http", 8080, "TCP"),)
    assert pod.resolve_named_port("http", "TCP") == (8080,)
    assert pod.resolve_named_port("http", "UDP") == ()
    assert [e.field for e in c.errors] == ["spec.containers[0].ports[2].containerPort"]


def test_host_network_and_finished_pods_are_not_active(k8s: Any) -> None:
    c = cluster_from_objects(
        [],
        [
            k8s.pod("x/a", ips=["10.0.0.1"]),
            k8s.pod("x/h", ips=["192.168.0.1"], host_network=True),
            k8s.pod("x/d", ips=["10.0.0.2"], phase="Succeeded"),
        ],
        [],
        [],
    )
    assert [k for k, p in c.pods.items() if p.active] == ["x/a"]


def test_nodes_keep_only_internal_ip_addresses(k8s: Any) -> None:
    raw = k8s.node("n1", "192.168.0.1", "fd00::1")
    raw["status"]["addresses"].append({"type": "Hostname", "address": "n1"})
    raw["status"]["addresses"].append({"type": "ExternalIP", "address": "203.0.113.1"})
    c = cluster_from_objects([], [], [], [raw])
    assert c.nodes["n1"].addresses == ("192.168.0.1", "fd00::1")


def test_from_objects_never_raises_and_collects_every_error(k8s: Any) -> None:
    c = cluster_from_objects(
        [{"metadata": {}}, "junk"],  # type: ignore[list-item]
        [{"metadata": {"name": "p"}}, 42],  # type: ignore[list-item]
        [
            k8s.policy("x/bad", {"podSelector": {}, "ingress": [{"ports": [{"port": -1}]}]}),
            {"metadata": {}},
        ],
        [{"status": {}}],
    )
    objects = [e.object for e in c.errors]
    assert "NetworkPolicy x/bad" in objects
    assert objects.count("Namespace ?") == 2 and objects.count("Node ?") == 1
    assert "NetworkPolicy ?" in objects and "Pod ?" in objects
    assert "x/bad" in c.policies and c.policies["x/bad"].isolates_ingress


# -- ClusterBuilder: reuse of unchanged objects ---------------------------------------------


def _versioned(raw: dict[str, Any], rv: int, uid: str | None = None) -> dict[str, Any]:
    meta = {**raw.get("metadata", {}), "resourceVersion": str(rv)}
    if uid is not None:
        meta["uid"] = uid
    return {**raw, "metadata": meta}


def _same_state(a: ClusterState, b: ClusterState) -> None:
    assert (a.namespaces, a.pods, a.policies, a.nodes, a.errors) == (
        b.namespaces,
        b.pods,
        b.policies,
        b.nodes,
        b.errors,
    )


def test_a_builder_reuses_unchanged_objects_and_builds_what_from_objects_builds(k8s: Any) -> None:
    from controller.compiler.builder import ClusterBuilder

    nss = [
        _versioned({"metadata": {"name": n, "labels": {"team": n}}}, i) for i, n in enumerate(("x", "y"), 1)
    ]
    pods = [
        _versioned(k8s.pod("x/a", {"app": "web"}, ["10.0.0.1"], "n1"), 10, "u-a"),
        _versioned(k8s.pod("x/b", {"app": "web"}, ["10.0.0.2"], "n1"), 11, "u-b"),
        _versioned({"metadata": {"name": "bad", "namespace": "x"}, "status": {"podIP": "nope"}}, 12, "u-bad"),
    ]
    pols = [_versioned(k8s.policy("x/bad", {"podSelector": {}, "ingress": [{"ports": [{"port": -1}]}]}), 20)]
    nodes = [_versioned({"metadata": {"name": "n1"}, "status": {}}, 30)]
    builder = ClusterBuilder()
    first = builder.build(nss, pods, pols, nodes)
    _same_state(first, cluster_from_objects(nss, pods, pols, nodes))
    assert builder.parsed == 7 and first.errors  # the bad pod's IP and the bad policy's port

    again = builder.build(nss, pods, pols, nodes)
    _same_state(again, first)
    assert builder.parsed == 0
    assert again.pods["x/a"] is first.pods["x/a"] and again.policies["x/bad"] is first.policies["x/bad"]

    # A relabel (new resourceVersion), a recreated pod (same name, new uid), a new pod without
    # a resourceVersion: those three are parsed again, everything else is reused.
    changed = [
        _versioned(k8s.pod("x/a", {"app": "db"}, ["10.0.0.1"], "n1"), 40, "u-a"),
        _versioned(k8s.pod("x/b", {"app": "api"}, ["10.0.0.3"], "n1"), 11, "u-b2"),
        pods[2],
        k8s.pod("y/c", {"app": "web"}, ["10.0.0.4"], "n1"),
    ]
    third = builder.build(nss, changed, pols, nodes)
    _same_state(third, cluster_from_objects(nss, changed, pols, nodes))
    assert builder.parsed == 3
    assert third.pods["x/a"].labels == {"app": "db"} and third.pods["x/b"].ips == ("10.0.0.3",)
    assert third.pods["x/bad"] is first.pods["x/bad"]

    # A deleted object is gone; put back with its old resourceVersion it is parsed again.
    builder.build(nss, changed[1:], pols, nodes)
    builder.build(nss, changed, pols, nodes)
    assert builder.parsed == 2  # x/a, and y/c (no resourceVersion) as every time
