"""The reference evaluator's ClusterNetworkPolicy semantics (tests/reference/evaluator.py, written
from the API text) reproduce every upstream conformance probe of ../shared/conformance/cnp: the
evaluator the datapath will be checked against is itself checked against upstream first."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.reference.evaluator import Evaluator, InvalidPolicy
from tests.support.cnp_scenarios import SCENARIOS, replay, scenarios


def reference(
    namespaces: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    policies: list[dict[str, Any]],
    cluster_policies: list[dict[str, Any]],
) -> Callable[[str, str, int, str], bool]:
    ev = Evaluator(namespaces, pods, policies, cluster_policies)
    return lambda src, dst, port, protocol: ev.allowed(src, dst, port, protocol, 4)


def test_the_scenarios_cover_both_tiers_every_action_and_a_networkpolicy_in_between() -> None:
    text = SCENARIOS.read_text() if SCENARIOS.is_file() else ""
    if not text:
        pytest.skip(f"{SCENARIOS} is not present")
    for needle in (
        "tier: Admin",
        "tier: Baseline",
        "action: Accept",
        "action: Deny",
        "action: Pass",
        "kind: NetworkPolicy",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s["id"])
def test_the_reference_evaluator_answers_every_upstream_conformance_probe_as_upstream_expects(
    scenario: dict[str, Any],
) -> None:
    checks = sum(len(s.get("checks") or []) for s in scenario["steps"])
    assert checks > 0
    assert replay(scenario, reference) == []


def test_the_reference_evaluator_refuses_objects_the_crd_would_reject() -> None:
    ns = [{"metadata": {"name": "a"}}]
    base: dict[str, Any] = {
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}},
    }
    bad_specs: list[dict[str, Any]] = [
        {"tier": "Developer"},
        {"priority": 1001},
        {"subject": {}},
        {"ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]},
        {"ingress": [{"action": "Deny", "from": []}]},
        {"egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}]},
        {"ingress": [{"action": "Deny", "from": [{"nodes": {}}]}]},
        {"egress": [{"action": "Deny", "to": [{"networks": []}]}]},
        {"egress": [{"action": "Deny", "to": [{"networks": [f"10.0.{i}.0/24" for i in range(26)]}]}]},
        {"egress": [{"action": "Deny", "to": [{"pods": {"namespaceSelector": {}}}]}]},
        {"egress": [{"action": "Deny", "to": [{"nodes": {}}], "protocols": []}]},
        {"egress": [{"action": "Deny", "to": [{"nodes": {}}], "protocols": [{"udp": {}}]}]},
        {
            "egress": [
                {
                    "action": "Deny",
                    "to": [{"namespaces": {}}, {"networks": ["10.0.0.0/8"]}],
                    "protocols": [{"destinationNamedPort": "http"}],
                }
            ]
        },
        {
            "egress": [
                {"action": "Pass", "to": [{"nodes": {}}], "protocols": [{"destinationNamedPort": "http"}]}
            ]
        },
        {"egress": [{"name": "n" * 101, "action": "Deny", "to": [{"nodes": {}}]}]},
        {
            "ingress": [
                {
                    "action": "Deny",
                    "from": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}],
                }
            ]
        },
    ]
    for bad in bad_specs:
        raw = {**base, "spec": {**base["spec"], **bad}}
        with pytest.raises(InvalidPolicy):
            Evaluator(ns, [], [], [raw])


# -- nodes, host-network pods and a pod's own node ---------------------------------------------
# node-1 (10.244.1.1, role worker) runs x/a, x/c and the host-network pod sys/agent-1;
# node-2 (10.244.2.1, role infra) runs x/b and sys/agent-2. 203.0.113.5 is outside.

NODE_1, NODE_2, OUTSIDE = "10.244.1.1", "10.244.2.1", "203.0.113.5"


def _node(n: int, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": f"node-{n}", "labels": {"kubernetes.io/hostname": f"node-{n}", "role": role}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"10.244.{n}.1"},
                {"type": "InternalIP", "address": f"fd00:10:244:{n}::1"},
                {"type": "Hostname", "address": f"node-{n}"},
            ]
        },
    }


def _pod(key: str, node: int, host: int | None, ports: tuple[tuple[str, int], ...] = ()) -> dict[str, Any]:
    """A pod of `key` on node-<node>: its own addresses (10.244.<node>.<host> and
    fd00:10:244:<node>::<host>), or host-network (host None: the node's)."""
    namespace, name = key.split("/")
    ips = [f"10.244.{node}.{host or 1}", f"fd00:10:244:{node}::{host or 1:x}"]
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": f"node-{node}",
            **({"hostNetwork": True} if host is None else {}),
            "containers": [
                {
                    "name": "c",
                    "ports": [{"containerPort": n, "name": pn, "protocol": "TCP"} for pn, n in ports],
                }
            ],
        },
        "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]},
    }


def _cluster(*cluster_policies: dict[str, Any], policies: tuple[dict[str, Any], ...] = ()) -> Evaluator:
    return Evaluator(
        [{"metadata": {"name": "x"}}, {"metadata": {"name": "sys", "labels": {"team": "infra"}}}],
        [
            _pod("x/a", 1, 10, (("http", 80),)),
            _pod("x/c", 1, 11, (("http", 8080),)),
            _pod("x/b", 2, 10, (("http", 81),)),
            _pod("sys/agent-1", 1, None, (("http", 80),)),
            _pod("sys/agent-2", 2, None, (("http", 80),)),
        ],
        list(policies),
        list(cluster_policies),
        [_node(1, "worker"), _node(2, "infra")],
    )


def _cnp(name: str, tier: str, subject: dict[str, Any], **rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": 10, "subject": subject, **rules},
    }


EVERY_POD: dict[str, Any] = {"namespaces": {}}
POD_A: dict[str, Any] = {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}}


def _np(name: str, pod: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "x", "name": name},
        "spec": {"podSelector": {"matchLabels": {"app": pod}}, **spec},
    }


def test_a_node_and_its_host_network_pods_reach_the_pods_of_that_node_whatever_the_policies() -> None:
    ev = _cluster(
        _cnp("deny-in", "Admin", EVERY_POD, ingress=[{"action": "Deny", "from": [{"namespaces": {}}]}]),
        _cnp("base-deny", "Baseline", EVERY_POD, ingress=[{"action": "Deny", "from": [{"namespaces": {}}]}]),
        policies=(_np("iso", "a", policyTypes=["Ingress"]),),
    )
    for source in (NODE_1, "fd00:10:244:1::1", "sys/agent-1"):
        family = 6 if ":" in source else 4
        assert ev.allowed(source, "x/a", 80, "TCP", family)
        assert ev.allowed(source, "x/a", 0, "ICMP" if family == 4 else "ICMPv6", family)
    # from the other node: ordinary ingress evaluation (NetworkPolicy isolates x/a, nothing allows)
    assert not ev.allowed(NODE_2, "x/a", 80, "TCP", 4)
    assert not ev.allowed("sys/agent-2", "x/a", 80, "TCP", 4)


def test_an_egress_nodes_peer_matches_every_address_of_a_selected_node_and_nothing_else() -> None:
    ev = _cluster(
        _cnp(
            "no-infra",
            "Admin",
            EVERY_POD,
            egress=[{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]}],
        )
    )
    assert not ev.allowed("x/a", NODE_2, 80, "TCP", 4)
    assert not ev.allowed("x/a", "fd00:10:244:2::1", 80, "TCP", 6)
    assert not ev.allowed("x/a", "sys/agent-2", 80, "TCP", 4)  # a host-network pod is its node
    assert not ev.allowed("x/a", NODE_2, 0, "ICMP", 4)
    assert ev.allowed("x/a", "x/b", 80, "TCP", 4)  # a pod on that node is not the node
    assert ev.allowed("x/a", NODE_1, 80, "TCP", 4)  # a worker node
    assert ev.allowed("x/a", OUTSIDE, 80, "TCP", 4)


def test_a_pods_egress_to_its_own_node_is_denied_by_an_admin_deny_and_allowed_by_an_admin_accept() -> None:
    deny = _cnp(
        "kubelet",
        "Admin",
        EVERY_POD,
        egress=[
            {
                "action": "Deny",
                "to": [{"nodes": {"matchLabels": {"kubernetes.io/hostname": "node-1"}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 10250}}}],
            }
        ],
    )
    ev = _cluster(deny)
    assert not ev.allowed("x/a", NODE_1, 10250, "TCP", 4)
    assert not ev.allowed("x/a", "sys/agent-1", 10250, "TCP", 4)
    assert ev.allowed("x/a", NODE_1, 10251, "TCP", 4)
    assert not ev.allowed("x/b", NODE_1, 10250, "TCP", 4)  # a remote node: the same rule applies
    accept = _cnp(
        "open", "Admin", EVERY_POD, egress=[{"action": "Accept", "to": [{"networks": ["10.244.1.1/32"]}]}]
    )
    base_deny = _cnp(
        "closed", "Baseline", EVERY_POD, egress=[{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]
    )
    ev = _cluster(accept, base_deny)
    assert ev.allowed("x/a", NODE_1, 10250, "TCP", 4)
    assert not ev.allowed("x/a", NODE_2, 10250, "TCP", 4)


def test_a_pods_egress_to_its_own_node_under_networkpolicy_isolation_is_allowed_over_a_baseline_deny() -> (
    None
):
    ev = _cluster(
        _cnp(
            "closed", "Baseline", EVERY_POD, egress=[{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]
        ),
        policies=(_np("no-egress", "a", policyTypes=["Egress"], egress=[]),),
    )
    assert ev.allowed("x/a", NODE_1, 10250, "TCP", 4)
    assert ev.allowed("x/a", "sys/agent-1", 80, "TCP", 4)
    assert ev.allowed("x/a", NODE_1, 0, "ICMP", 4)
    assert not ev.allowed("x/a", NODE_2, 10250, "TCP", 4)  # another node: NetworkPolicy denies
    assert not ev.allowed("x/a", "x/c", 80, "TCP", 4)


def test_a_pods_egress_to_its_own_node_without_networkpolicy_is_decided_by_the_baseline_tier() -> None:
    deny = _cnp("closed", "Baseline", EVERY_POD, egress=[{"action": "Deny", "to": [{"nodes": {}}]}])
    ev = _cluster(deny)
    assert not ev.allowed("x/a", NODE_1, 10250, "TCP", 4)
    assert not ev.allowed("x/a", "sys/agent-1", 10250, "TCP", 4)
    assert not ev.allowed("x/b", NODE_1, 10250, "TCP", 4)
    passing = _cnp("pass", "Admin", EVERY_POD, egress=[{"action": "Pass", "to": [{"nodes": {}}]}])
    assert not _cluster(passing, deny).allowed("x/a", NODE_1, 10250, "TCP", 4)  # Pass goes on to Baseline
    accept = {**deny, "spec": {**deny["spec"], "egress": [{"action": "Accept", "to": [{"nodes": {}}]}]}}
    assert _cluster(accept).allowed("x/a", NODE_1, 10250, "TCP", 4)


def test_networkpolicy_ipblocks_match_node_addresses_and_its_selectors_never_do() -> None:
    by_block = _np(
        "to-node-2",
        "a",
        policyTypes=["Egress", "Ingress"],
        egress=[{"to": [{"ipBlock": {"cidr": "10.244.2.1/32"}}]}],
        ingress=[{"from": [{"ipBlock": {"cidr": "10.244.2.0/24"}}]}],
    )
    ev = _cluster(policies=(by_block,))
    assert ev.allowed("x/a", NODE_2, 80, "TCP", 4)
    assert ev.allowed("x/a", "sys/agent-2", 80, "TCP", 4)
    assert ev.allowed(NODE_2, "x/a", 80, "TCP", 4)
    assert ev.allowed("sys/agent-2", "x/a", 80, "TCP", 4)
    assert ev.allowed("x/b", "x/a", 80, "TCP", 4)  # 10.244.2.10 is in 10.244.2.0/24 too
    by_selector = _np(
        "everyone",
        "a",
        policyTypes=["Egress", "Ingress"],
        egress=[{"to": [{"namespaceSelector": {}}]}],
        ingress=[{"from": [{"namespaceSelector": {}}]}],
    )
    ev = _cluster(policies=(by_selector,))
    assert ev.allowed("x/a", "x/b", 80, "TCP", 4)
    assert not ev.allowed("x/a", NODE_2, 80, "TCP", 4)
    assert not ev.allowed("x/a", "sys/agent-2", 80, "TCP", 4)
    assert not ev.allowed("sys/agent-2", "x/a", 80, "TCP", 4)
    assert ev.allowed("x/a", NODE_1, 80, "TCP", 4)  # its own node: NetworkPolicy never blocks it


def test_host_network_pods_are_never_subjects_nor_pod_or_namespace_peers() -> None:
    infra = {"namespaces": {"matchLabels": {"team": "infra"}}}
    ev = _cluster(
        _cnp("infra-out", "Admin", infra, egress=[{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]),
        _cnp("infra-in", "Admin", infra, ingress=[{"action": "Deny", "from": [{"namespaces": {}}]}]),
        _cnp("to-infra", "Admin", EVERY_POD, egress=[{"action": "Deny", "to": [infra]}]),
        policies=(
            {
                "metadata": {"namespace": "sys", "name": "iso"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            },
        ),
    )
    assert ev.allowed("sys/agent-2", "x/a", 80, "TCP", 4)
    assert ev.allowed("x/a", "sys/agent-2", 80, "TCP", 4)
    assert ev.allowed("x/b", "sys/agent-1", 80, "TCP", 4)


def test_clusternetworkpolicy_ingress_rules_never_match_a_node_source() -> None:
    ev = _cluster(
        _cnp("a-in", "Admin", POD_A, ingress=[{"action": "Deny", "from": [{"namespaces": {}}]}]),
        _cnp(
            "base-in",
            "Baseline",
            EVERY_POD,
            ingress=[{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}],
        ),
    )
    assert ev.allowed(NODE_2, "x/a", 80, "TCP", 4)
    assert ev.allowed("sys/agent-2", "x/b", 80, "TCP", 4)
    assert ev.allowed(OUTSIDE, "x/b", 80, "TCP", 4)
    assert not ev.allowed("x/b", "x/a", 80, "TCP", 4)
    assert not ev.allowed("x/a", "x/b", 80, "TCP", 4)


def test_networks_peers_match_pods_nodes_and_outside_addresses_and_icmp_without_protocols() -> None:
    ev = _cluster(
        _cnp("cluster", "Admin", POD_A, egress=[{"action": "Deny", "to": [{"networks": ["10.244.0.0/16"]}]}]),
        _cnp(
            "web",
            "Admin",
            EVERY_POD,
            egress=[
                {
                    "action": "Deny",
                    "to": [{"networks": ["203.0.113.0/24"]}],
                    "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 90}}}}],
                }
            ],
        ),
    )
    for target in ("x/b", "x/c", NODE_1, NODE_2, "sys/agent-2"):
        assert not ev.allowed("x/a", target, 80, "TCP", 4), target
        assert not ev.allowed("x/a", target, 0, "ICMP", 4), target
    assert ev.allowed("x/a", "fd00:10:244:2::1", 80, "TCP", 6)  # the other family
    assert not ev.allowed("x/c", OUTSIDE, 90, "TCP", 4)
    assert ev.allowed("x/c", OUTSIDE, 91, "TCP", 4)
    assert ev.allowed("x/c", OUTSIDE, 80, "UDP", 4)
    assert ev.allowed("x/c", OUTSIDE, 0, "ICMP", 4)


def test_named_ports_resolve_on_the_destination_pod_and_never_on_a_host_network_pod() -> None:
    ev = _cluster(
        _cnp(
            "http",
            "Admin",
            EVERY_POD,
            egress=[
                {
                    "action": "Deny",
                    "to": [{"namespaces": {}}],
                    "protocols": [{"destinationNamedPort": "http"}],
                }
            ],
        )
    )
    assert not ev.allowed("x/a", "x/b", 81, "TCP", 4)
    assert ev.allowed("x/a", "x/b", 80, "TCP", 4)
    assert not ev.allowed("x/a", "x/c", 8080, "TCP", 4)
    assert ev.allowed("x/b", "x/a", 81, "TCP", 4)
    assert ev.allowed("x/a", "sys/agent-2", 80, "TCP", 4)
