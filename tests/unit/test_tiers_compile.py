"""ClusterNetworkPolicy tiers compiled into policy entries (controller/compiler/stages/tiers.py),
decided by the lookup model of the datapath (controller/debug/verdict_model.py): the upstream
conformance scenarios, the fold of shorter prefixes, ranks across lookups, and node traffic."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.stages.domains import DomainClasses
from controller.core.verdicts import TIER_ACCEPT
from controller.debug.verdict_model import verdict
from tests.support.cnp_scenarios import NODE, replay, scenarios

NODES = [
    {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]},
    }
]


def compiled(
    namespaces: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    nps: list[dict[str, Any]],
    cnps: list[dict[str, Any]],
) -> Callable[[str, str, int, str], bool]:
    cluster = cluster_from_objects(list(namespaces), list(pods), nps, NODES, cnps)
    assert not cluster.errors, cluster.errors
    desired = compute(cluster, NODE)

    def connected(src: str, dst: str, port: int, proto: str) -> bool:
        return verdict(desired, desired, src, dst, proto, port).allowed

    return connected


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s["id"])
def test_the_compiled_tiers_answer_every_upstream_conformance_probe_as_upstream_expects(
    scenario: dict[str, Any],
) -> None:
    assert replay(scenario, compiled) == []


# -- invalid objects fail closed, and everything else keeps being enforced ---------------------

SMALL_NS = [{"metadata": {"name": n, "labels": {"team": n}}} for n in ("x", "y")]


def _small_pod(ns: str, name: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


SMALL_PODS = [
    _small_pod("x", "a", "10.244.1.2"),
    _small_pod("x", "b", "10.244.1.3"),
    _small_pod("y", "c", "10.244.1.4"),
]


def _cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    base = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"team": "x"}}}}
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def _decide(cnps: list[dict[str, Any]]) -> tuple[Callable[[str, str, int], str], list[str]]:
    cluster = cluster_from_objects(SMALL_NS, SMALL_PODS, [], NODES, cnps)
    desired = compute(cluster, NODE)

    def reason(src: str, dst: str, port: int) -> str:
        v = verdict(desired, desired, src, dst, "TCP", port)
        return v.deciding.reason

    return reason, [str(e) for e in cluster.errors]


FROM_Y = {"namespaces": {"matchLabels": {"team": "y"}}}


def test_an_accept_rule_with_an_unknown_peer_field_matches_nothing_and_the_next_rule_decides() -> None:
    reason, errors = _decide(
        [
            _cnp(
                "p",
                {
                    "ingress": [
                        {"action": "Accept", "from": [FROM_Y, {"serviceAccounts": {}}]},
                        {"action": "Deny", "from": [FROM_Y]},
                    ]
                },
            )
        ]
    )
    assert any("ClusterNetworkPolicy p" in e and "spec.ingress[0].from[1]" in e for e in errors), errors
    assert reason("y/c", "x/a", 80) == "DROP_ADMIN"


def test_a_deny_or_pass_rule_with_an_unusable_port_denies_everything_for_its_subjects() -> None:
    bad_range = [{"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]
    for action in ("Deny", "Pass"):
        reason, errors = _decide(
            [
                _cnp("p", {"ingress": [{"action": action, "from": [FROM_Y], "protocols": bad_range}]}),
                _cnp("q", {"priority": 20, "ingress": [{"action": "Accept", "from": [FROM_Y]}]}),
            ]
        )
        assert any("protocols[0]" in e for e in errors), errors
        assert reason("y/c", "x/a", 80) == "DROP_ADMIN"
        assert reason("x/b", "x/a", 81) == "DROP_ADMIN"  # every peer and port
        assert reason("x/a", "y/c", 80) == "ALLOW_NOT_ISOLATED"  # y is no subject


def test_a_policy_with_an_unusable_priority_goes_first_with_its_accepts_matching_nothing() -> None:
    reason, errors = _decide(
        [
            _cnp("bad", {"priority": 5000, "ingress": [{"action": "Accept", "from": [FROM_Y]}]}),
            _cnp("deny", {"priority": 0, "ingress": [{"action": "Deny", "from": [FROM_Y]}]}),
        ]
    )
    assert any("spec.priority" in e for e in errors), errors
    assert reason("y/c", "x/a", 80) == "DROP_ADMIN"


def test_domain_names_key_their_rule_by_domain_identity_and_make_the_pods_learn_from_dns() -> None:
    cnps = [
        _cnp(
            "dns",
            {
                "egress": [
                    {"action": "Accept", "to": [{"domainNames": ["example.com", "*.example.com"]}]},
                    {"action": "Deny", "to": [{"networks": ["10.244.1.4/32"]}]},
                ]
            },
        )
    ]
    reason, errors = _decide(cnps)
    assert errors == []
    assert reason("x/a", "y/c", 80) == "DROP_ADMIN"  # nothing learned: a pod address stays denied
    assert reason("x/a", "x/b", 80) == "ALLOW_NOT_ISOLATED"
    cluster = cluster_from_objects(SMALL_NS, SMALL_PODS, [], NODES, cnps)
    desired = compute(cluster, NODE)
    ep = desired.endpoints["x/a"]
    assert ep.dns and ep.egress_tiered
    domains = DomainClasses.build(["example.com", "*.example.com"])
    accepted = {
        k.identity for k, v in desired.tier_profiles[ep.tier_profile].items() if v.admin == TIER_ACCEPT
    }
    assert accepted == set(domains.ids.values()) and len(accepted) == 2


def test_host_network_pods_are_never_subjects_nor_peers() -> None:
    host = _small_pod("x", "h", "192.168.50.1")
    host["spec"]["hostNetwork"] = True
    cluster = cluster_from_objects(
        SMALL_NS,
        [*SMALL_PODS, host],
        [],
        NODES,
        [
            _cnp(
                "all",
                {
                    "subject": {"namespaces": {}},
                    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
                },
            )
        ],
    )
    desired = compute(cluster, NODE)
    assert "x/h" not in desired.endpoints
    # the host-network pod's address is the node's: from the node, always allowed
    assert verdict(desired, desired, "192.168.50.1", "x/a", "TCP", 80).ingress.reason == "ALLOW_HOST"
    assert verdict(desired, desired, "x/b", "x/a", "TCP", 80).ingress.reason == "DROP_ADMIN"


def test_a_nodes_peer_matches_a_nodes_external_ip_but_only_internal_ips_are_the_pods_own_node() -> None:
    node = {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.168.50.1"},
                {"type": "ExternalIP", "address": "198.51.100.9"},
                {"type": "Hostname", "address": NODE},
            ]
        },
    }
    deny_nodes = _cnp(
        "no-nodes",
        {
            "egress": [
                {
                    "action": "Deny",
                    "to": [{"nodes": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 10250}}}],
                }
            ]
        },
    )
    cluster = cluster_from_objects(SMALL_NS, SMALL_PODS, [], [node], [deny_nodes])
    assert not cluster.errors
    desired = compute(cluster, NODE)
    for address in ("192.168.50.1", "198.51.100.9"):
        assert verdict(desired, desired, "x/a", address, "TCP", 10250).egress.reason == "DROP_ADMIN", address
    assert verdict(desired, desired, "x/a", "192.168.50.1", "TCP", 22).egress.reason == "ALLOW_HOST"
    assert verdict(desired, desired, "x/a", "198.51.100.9", "TCP", 22).egress.reason == "ALLOW_NOT_ISOLATED"
