from __future__ import annotations

import ipaddress
import time
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired, PolicyEntryKey, RuleRef
from controller.compiler.identity import is_cidr_identity, is_pod_identity
from controller.compiler.model import ClusterState
from controller.compiler.policy import compile_cluster, rule_ref, selected_pods
from controller.core.identities import ID_ANY, ID_HOST, ID_REMOTE_NODE, ID_WORLD
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.debug.verdict_model import verdict
from tests.support.k8s import K8s

K = K8s
A_IP, B_IP, C_IP, D_IP = "10.244.1.10", "10.244.2.10", "10.244.1.11", "10.244.2.11"


def three_pods(**extra: Any) -> list[dict[str, Any]]:
    return [
        K.pod("x/a", {"app": "a"}, [A_IP, "fd00::a"], "node-1", ports=[("http", 80, "TCP")]),
        K.pod("x/b", {"app": "b"}, [B_IP, "fd00::b"], "node-2", ports=[("http", 80, "TCP")]),
        K.pod("y/c", {"app": "c"}, [C_IP, "fd00::c"], "node-1", ports=[("http", 80, "TCP")]),
    ]


def run(
    pods: list[dict[str, Any]], policies: list[dict[str, Any]], **kw: Any
) -> tuple[ClusterState, dict[str, NodeDesired]]:
    c = K.cluster(pods, policies, **kw)
    return c, K.compute_all(c)


def ok(
    d: dict[str, NodeDesired],
    c: ClusterState,
    src: str,
    dst: str,
    port: int = 80,
    proto: str = "TCP",
    family: int = 4,
) -> bool:
    def side(who: str) -> tuple[NodeDesired | None, str]:
        if who in c.pods:
            node = c.pods[who].node
            assert node is not None
            return d[node], who
        return None, who

    sd, s = side(src)
    dd, t = side(dst)
    return verdict(sd, dd, s, t, proto, port, family=family).allowed


# -- isolation and the basic rule shapes -----------------------------------------------------


def test_without_policies_nothing_is_isolated_and_there_are_no_entries() -> None:
    c, d = run(three_pods(), [])
    for ep in d["node-1"].endpoints.values():
        assert not ep.ingress_isolated and not ep.egress_isolated and not ep.entries
    assert ok(d, c, "x/a", "x/b") and ok(d, c, "x/b", "y/c")


def test_an_empty_ingress_list_denies_all_ingress() -> None:
    c, d = run(three_pods(), [K.policy("x/deny", {"podSelector": {}, "ingress": []})])
    a = d["node-1"].endpoints["x/a"]
    assert a.ingress_isolated and not a.egress_isolated and not a.entries
    assert a.policies == ("x/deny",)
    assert not ok(d, c, "y/c", "x/a") and not ok(d, c, "x/b", "x/a")
    assert ok(d, c, "x/a", "y/c")  # egress untouched, y/c not selected


def test_an_empty_rule_allows_every_peer_protocol_and_port() -> None:
    c, d = run(three_pods(), [K.policy("x/all", {"podSelector": {}, "ingress": [{}]})])
    a = d["node-1"].endpoints["x/a"]
    assert set(a.entries) == {PolicyEntryKey(DIR_INGRESS, ID_ANY, 0, 0, 0)}
    assert ok(d, c, "y/c", "x/a", 12345, "UDP") and ok(d, c, "203.0.113.9", "x/a", 1, "ICMP")


def test_an_egress_only_policy_leaves_ingress_open() -> None:
    c, d = run(
        three_pods(),
        [K.policy("x/e", {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"]})],
    )
    a = d["node-1"].endpoints["x/a"]
    assert a.egress_isolated and not a.ingress_isolated
    assert not ok(d, c, "x/a", "y/c") and ok(d, c, "y/c", "x/a")


def test_rules_of_a_direction_missing_from_policy_types_are_ignored() -> None:
    spec = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [], "egress": [{}]}
    _c, d = run(three_pods(), [K.policy("x/p", spec)])
    a = d["node-1"].endpoints["x/a"]
    assert not a.egress_isolated and not any(k.direction == DIR_EGRESS for k in a.entries)


def test_policies_are_additive() -> None:
    pols = [
        K.policy("x/deny", {"podSelector": {}, "ingress": []}),
        K.policy(
            "x/allow-c",
            {
                "podSelector": {},
                "ingress": [
                    {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "c"}}}]}
                ],
            },
        ),
    ]
    c, d = run(three_pods(), pols)
    assert ok(d, c, "y/c", "x/a") and not ok(d, c, "x/b", "x/a")
    assert d["node-1"].endpoints["x/a"].policies == ("x/allow-c", "x/deny")


# -- peers -----------------------------------------------------------------------------------


def test_a_pod_selector_peer_only_matches_pods_of_the_policy_namespace() -> None:
    pods = [*three_pods(), K.pod("y/b", {"app": "b"}, [D_IP], "node-2")]
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
    }
    c, d = run(pods, [K.policy("x/p", spec)])
    assert ok(d, c, "x/b", "x/a") and not ok(d, c, "y/b", "x/a")


def test_selector_peers_translate_to_identities_of_pods_on_every_node() -> None:
    spec = {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    cc = compile_cluster(c)
    peers = {k.identity for k in d["node-1"].endpoints["x/a"].entries}
    assert peers == {cc.pod_identity["x/a"], cc.pod_identity["x/b"], cc.pod_identity["y/c"]}
    assert all(is_pod_identity(i) for i in peers)


def test_namespace_and_pod_selector_in_one_peer_must_both_match() -> None:
    nss = [K.ns("x", team="red"), K.ns("y", team="blue")]
    pods = [*three_pods(), K.pod("y/b", {"app": "b"}, [D_IP], "node-2")]
    spec = {
        "podSelector": {"matchLabels": {"app": "c"}},
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"team": "blue"}},
                        "podSelector": {"matchLabels": {"app": "b"}},
                    }
                ]
            }
        ],
    }
    c, d = run(pods, [K.policy("y/p", spec)], namespaces=nss)
    assert ok(d, c, "y/b", "y/c") and not ok(d, c, "x/b", "y/c") and not ok(d, c, "x/a", "y/c")


def test_a_namespace_label_change_moves_pods_in_and_out_of_a_peer() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)], namespaces=[K.ns("x"), K.ns("y")])
    assert not ok(d, c, "y/c", "x/a")
    c, d = run(three_pods(), [K.policy("x/p", spec)], namespaces=[K.ns("x"), K.ns("y", team="blue")])
    assert ok(d, c, "y/c", "x/a")


def test_pods_with_equal_labels_in_one_namespace_share_an_identity() -> None:
    pods = [
        K.pod("x/a1", {"app": "a"}, [A_IP]),
        K.pod("x/a2", {"app": "a"}, [C_IP]),
        K.pod("x/b", {"app": "b"}, [B_IP]),
    ]
    _c, d = run(pods, [])
    eps = d["node-1"].endpoints
    assert eps["x/a1"].identity == eps["x/a2"].identity != eps["x/b"].identity
    info = d["node-1"].identities[eps["x/a1"].identity]
    assert info.kind == "pod" and info.namespace == "x" and dict(info.labels) == {"app": "a"}


# -- ipBlock ---------------------------------------------------------------------------------


def test_an_ip_block_matches_external_addresses_and_pod_ips_but_not_its_excepts() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.2.0/24"]}}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    assert ok(d, c, "10.1.2.3", "x/a")
    assert ok(d, c, "y/c", "x/a")  # pod IP 10.244.1.11 inside the block
    assert not ok(d, c, "x/b", "x/a")  # 10.244.2.10 in the except
    assert not ok(d, c, "10.244.2.99", "x/a") and not ok(d, c, "192.0.2.1", "x/a")
    assert not ok(d, c, "y/c", "x/a", family=6)  # an IPv4 block never matches IPv6


def test_ip_block_prefixes_are_in_the_ipcache_as_world_with_their_cidr_identity() -> None:
    spec = {
        "podSelector": {},
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    ic = d["node-1"].ipcache
    cc = compile_cluster(c)
    world4 = ipaddress.ip_network("0.0.0.0/0")
    ten = ipaddress.ip_network("10.0.0.0/8")
    assert ic[world4] == (ID_WORLD, cc.cidr_identity[world4], 0) and is_cidr_identity(ic[world4][1])
    assert ic[ten] == (ID_WORLD, cc.cidr_identity[ten], 0)
    assert ic[ipaddress.ip_network("::/0")] == (ID_WORLD, 0, 0)
    assert ic[ipaddress.ip_network(f"{A_IP}/32")] == (
        cc.pod_identity["x/a"],
        cc.cidr_identity[ten],
        cc.namespace_identity["x"],
    )
    assert ok(d, c, "x/a", "8.8.8.8") and not ok(d, c, "x/a", "y/c") and not ok(d, c, "x/a", "10.9.9.9")


def test_node_addresses_are_host_on_their_own_node_and_remote_node_elsewhere() -> None:
    c, d = run(three_pods(), [K.policy("x/deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})])
    n1, n2 = ipaddress.ip_network("192.168.0.1/32"), ipaddress.ip_network("192.168.0.2/32")
    assert d["node-1"].ipcache[n1][0] == ID_HOST and d["node-1"].ipcache[n2][0] == ID_REMOTE_NODE
    assert d["node-2"].ipcache[n1][0] == ID_REMOTE_NODE and d["node-2"].ipcache[n2][0] == ID_HOST
    assert ok(d, c, "192.168.0.1", "x/a") and ok(d, c, "x/a", "192.168.0.1")  # own node: always
    assert not ok(d, c, "192.168.0.2", "x/a")  # another node: policy applies


prefix_lens = st.integers(min_value=8, max_value=30)


@st.composite
def blocks_and_addresses(draw: Any) -> tuple[str, list[str], list[str]]:
    base = ipaddress.ip_network("10.0.0.0/8")
    plen = draw(st.integers(min_value=8, max_value=24))
    cidr = ipaddress.ip_network(
        f"{base.network_address + draw(st.integers(0, 2**24 - 1))}/{plen}", strict=False
    )
    excepts = []
    for _ in range(draw(st.integers(0, 3))):
        eplen = draw(st.integers(min_value=plen + 1, max_value=32))
        off = draw(st.integers(0, cidr.num_addresses - 1))
        excepts.append(str(ipaddress.ip_network(f"{cidr.network_address + off}/{eplen}", strict=False)))
    addrs = []
    for _ in range(6):
        if draw(st.booleans()):
            addrs.append(str(cidr.network_address + draw(st.integers(0, cidr.num_addresses - 1))))
        elif excepts and draw(st.booleans()):
            e = ipaddress.ip_network(draw(st.sampled_from(excepts)))
            addrs.append(str(e.network_address + draw(st.integers(0, e.num_addresses - 1))))
        else:
            addrs.append(str(ipaddress.ip_address(draw(st.integers(2**24, 2**32 - 2**28)))))
    return str(cidr), excepts, addrs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks_and_addresses(), st.booleans())
def test_ip_block_except_carving_matches_the_definition(
    case: tuple[str, list[str], list[str]], other_policy: bool
) -> None:
    cidr, excepts, addrs = case
    pols = [
        K.policy(
            "x/p",
            {
                "podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": excepts}}]}],
            },
        )
    ]
    if other_policy:  # unrelated prefixes of another policy must not change the answer
        pols.append(
            K.policy(
                "y/q",
                {
                    "podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/12", "except": ["10.8.0.0/16"]}}]}],
                },
            )
        )
    c, d = run(three_pods(), pols)
    net = ipaddress.ip_network(cidr)
    ex = [ipaddress.ip_network(e) for e in excepts]
    for a in addrs:
        ip = ipaddress.ip_address(a)
        want = ip in net and not any(ip in e for e in ex)
        assert ok(d, c, a, "x/a") == want, (a, cidr, excepts)


# -- ports -----------------------------------------------------------------------------------


def test_a_port_without_protocol_is_tcp_and_exact() -> None:
    spec = {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"ports": [{"port": 80}]}]}
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    assert set(d["node-1"].endpoints["x/a"].entries) == {PolicyEntryKey(DIR_INGRESS, ID_ANY, 6, 80, 16)}
    assert (
        ok(d, c, "y/c", "x/a", 80, "TCP")
        and not ok(d, c, "y/c", "x/a", 80, "UDP")
        and not ok(d, c, "y/c", "x/a", 81)
    )


def test_a_protocol_without_port_allows_every_port_of_that_protocol() -> None:
    spec = {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    assert set(d["node-1"].endpoints["x/a"].entries) == {PolicyEntryKey(DIR_INGRESS, ID_ANY, 17, 0, 0)}
    assert ok(d, c, "y/c", "x/a", 5353, "UDP") and not ok(d, c, "y/c", "x/a", 5353, "TCP")


def test_a_policy_allowing_only_sctp_still_isolates_tcp() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    assert not ok(d, c, "y/c", "x/a", 80, "TCP") and ok(d, c, "y/c", "x/a", 80, "SCTP")


def test_end_port_ranges_use_aligned_prefixes() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"ports": [{"port": 32000, "endPort": 32768}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    keys = d["node-1"].endpoints["x/a"].entries
    assert len(keys) < 2 * 16 and all(k.proto == 6 and k.port_plen <= 16 for k in keys)
    assert [p for p in (31999, 32000, 32400, 32768, 32769) if ok(d, c, "y/c", "x/a", p)] == [
        32000,
        32400,
        32768,
    ]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 65535), st.integers(0, 65535), st.lists(st.integers(1, 65535), min_size=1, max_size=8))
def test_a_port_range_allows_exactly_its_ports(lo: int, width: int, probes: list[int]) -> None:
    hi = min(65535, lo + width)
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"ports": [{"port": lo, "endPort": hi}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    for p in [*probes, lo, hi, lo - 1, hi + 1]:
        if 0 <= p <= 65535:
            assert ok(d, c, "y/c", "x/a", p) == (lo <= p <= hi), (lo, hi, p)


def test_a_rule_without_ports_uses_protocol_zero() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}],
    }
    _c, d = run(three_pods(), [K.policy("x/p", spec)])
    (key,) = d["node-1"].endpoints["x/a"].entries
    assert (key.proto, key.port, key.port_plen) == (0, 0, 0)


# -- named ports -----------------------------------------------------------------------------


def test_an_ingress_named_port_resolves_on_each_endpoint() -> None:
    pods = [
        K.pod("x/w1", {"app": "web"}, [A_IP], "node-1", ports=[("http", 8080, "TCP")]),
        K.pod("x/w2", {"app": "web"}, [C_IP], "node-1", ports=[("http", 9090, "TCP")]),
        K.pod("x/w3", {"app": "web"}, [D_IP], "node-1", ports=[("metrics", 9090, "TCP")]),
        K.pod("y/c", {"app": "c"}, [B_IP], "node-2"),
    ]
    spec = {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}
    c, d = run(pods, [K.policy("x/p", spec)])
    assert ok(d, c, "y/c", "x/w1", 8080) and not ok(d, c, "y/c", "x/w1", 9090)
    assert ok(d, c, "y/c", "x/w2", 9090) and not ok(d, c, "y/c", "x/w2", 8080)
    assert not ok(d, c, "y/c", "x/w3", 9090) and not d["node-1"].endpoints["x/w3"].entries


def test_a_named_port_needs_the_same_protocol() -> None:
    pods = [
        K.pod("x/a", {"app": "a"}, [A_IP], ports=[("dns", 53, "UDP")]),
        K.pod("y/c", {"app": "c"}, [C_IP]),
    ]
    spec = {"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]}  # protocol defaults to TCP
    c, d = run(pods, [K.policy("x/p", spec)])
    assert not ok(d, c, "y/c", "x/a", 53, "UDP") and not ok(d, c, "y/c", "x/a", 53, "TCP")


def test_an_egress_named_port_with_consistent_pods_uses_their_identity() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "http"}]}],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    cc = compile_cluster(c)
    assert not cc.cidr_identity  # no exact prefixes needed
    assert {k.identity for k in d["node-1"].endpoints["x/a"].entries} == {
        cc.pod_identity["x/b"],
        cc.pod_identity["y/c"],
        cc.pod_identity["x/a"],
    }
    assert (
        ok(d, c, "x/a", "x/b", 80)
        and not ok(d, c, "x/a", "x/b", 81)
        and not ok(d, c, "x/a", "203.0.113.1", 80)
    )


def test_an_egress_named_port_is_exact_per_destination_pod_when_equal_labels_disagree() -> None:
    pods = [
        K.pod("x/client", {"app": "client"}, [A_IP, "fd00::a"], "node-1"),
        K.pod("y/s1", {"app": "srv"}, [B_IP, "fd00::b"], "node-2", ports=[("http", 8080, "TCP")]),
        K.pod("y/s2", {"app": "srv"}, [D_IP, "fd00::d"], "node-2", ports=[("http", 9090, "TCP")]),
    ]
    spec = {
        "podSelector": {"matchLabels": {"app": "client"}},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "srv"}}}],
                "ports": [{"port": "http"}],
            }
        ],
    }
    c, d = run(pods, [K.policy("x/p", spec)])
    for fam in (4, 6):
        assert ok(d, c, "x/client", "y/s1", 8080, family=fam) and not ok(
            d, c, "x/client", "y/s1", 9090, family=fam
        )
        assert ok(d, c, "x/client", "y/s2", 9090, family=fam) and not ok(
            d, c, "x/client", "y/s2", 8080, family=fam
        )
    cc = compile_cluster(c)
    assert ipaddress.ip_network(f"{B_IP}/32") in cc.cidr_identity
    assert ipaddress.ip_network("fd00::d/128") in cc.cidr_identity
    # the pod keeps its pod identity and carries its exact prefix's CIDR identity
    assert d["node-1"].ipcache[ipaddress.ip_network(f"{B_IP}/32")] == (
        cc.pod_identity["y/s1"],
        cc.cidr_identity[ipaddress.ip_network(f"{B_IP}/32")],
        cc.namespace_identity["y"],
    )


def test_an_egress_named_port_to_an_ip_block_only_reaches_pods_inside_it() -> None:
    pods = [
        K.pod("x/client", {"app": "client"}, [A_IP], "node-1"),
        K.pod("y/in", {"app": "srv"}, [B_IP], "node-2", ports=[("http", 8080, "TCP")]),
        K.pod("y/out", {"app": "srv"}, ["10.245.0.5"], "node-2", ports=[("http", 8080, "TCP")]),
    ]
    spec = {
        "podSelector": {"matchLabels": {"app": "client"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16"}}], "ports": [{"port": "http"}]}],
    }
    c, d = run(pods, [K.policy("x/p", spec)])
    assert ok(d, c, "x/client", "y/in", 8080) and not ok(d, c, "x/client", "y/out", 8080)
    assert not ok(d, c, "x/client", "10.244.9.9", 8080)  # not a pod: no named ports


# -- rule references, identities, endpoints, errors ------------------------------------------


def test_rule_references_name_policy_direction_and_index() -> None:
    spec = {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{}, {"ports": [{"port": 81}]}],
        "egress": [{}],
    }
    _c, d = run(three_pods(), [K.policy("x/p", spec)])
    ref = rule_ref("x", "p", DIR_INGRESS, 1)
    assert ref == zlib.crc32(b"x/p/ingress/1") & 0x7FFFFFFF
    assert d["node-1"].rules[ref] == RuleRef("x", "p", DIR_INGRESS, 1)
    assert str(d["node-1"].rules[ref]) == "x/p ingress[1]"
    entries = d["node-1"].endpoints["x/a"].entries
    assert entries[PolicyEntryKey(DIR_INGRESS, ID_ANY, 6, 81, 16)].rule_ref == ref
    assert entries[PolicyEntryKey(DIR_EGRESS, ID_ANY, 0, 0, 0)].rule_ref == rule_ref("x", "p", DIR_EGRESS, 0)


def test_endpoints_are_the_active_pods_of_the_node_with_an_ip() -> None:
    pods = [
        *three_pods(),
        K.pod("x/pending", {"app": "a"}, None, "node-1"),
        K.pod("x/hostnet", {"app": "a"}, ["192.168.0.1"], "node-1", host_network=True),
        K.pod("x/done", {"app": "a"}, ["10.244.1.99"], "node-1", phase="Succeeded"),
        K.pod("x/unscheduled", {"app": "a"}, None, None),
    ]
    _c, d = run(pods, [])
    assert sorted(d["node-1"].endpoints) == ["x/a", "y/c"]
    assert sorted(d["node-2"].endpoints) == ["x/b"]
    ep = d["node-1"].endpoints["x/a"]
    assert (ep.ipv4, ep.ipv6) == (A_IP, "fd00::a")
    assert d["node-1"].ipcache[ipaddress.ip_network("192.168.0.1/32")][0] == ID_HOST


def test_an_invalid_policy_keeps_isolating_with_its_valid_rules() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [
            {"ports": [{"port": 80}]},
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]},
        ],
    }
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    assert [str(e) for e in d["node-1"].errors] == [str(e) for e in c.errors] and len(c.errors) == 1
    assert c.errors[0].field == "spec.ingress[1].from[0].ipBlock.except[0]"
    assert ok(d, c, "y/c", "x/a", 80) and not ok(d, c, "y/c", "x/a", 81)


def test_an_invalid_pod_selector_isolates_the_namespace() -> None:
    spec = {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Bogus"}]}, "ingress": [{}]}
    c, d = run(three_pods(), [K.policy("x/p", spec)])
    assert not ok(d, c, "y/c", "x/a") and not ok(d, c, "y/c", "x/b") and ok(d, c, "x/a", "y/c")
    assert selected_pods(c, c.policies["x/p"]) == ["x/a", "x/b"]


def test_compute_is_deterministic_across_runs_and_object_order() -> None:
    pols = [
        K.policy(
            "x/p",
            {
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}],
            },
        ),
        K.policy("y/q", {"podSelector": {}, "egress": [{"ports": [{"port": "http"}]}]}),
    ]
    pods = three_pods()
    d1 = compute(K.cluster(pods, pols), "node-1")
    d2 = compute(K.cluster(list(reversed(pods)), list(reversed(pols))), "node-1")
    assert {k: dict(v.entries) for k, v in d1.endpoints.items()} == {
        k: dict(v.entries) for k, v in d2.endpoints.items()
    }
    assert d1.ipcache == d2.ipcache and dict(d1.identities) == dict(d2.identities)


def test_identities_cover_reserved_pod_cidr_and_namespace_kinds() -> None:
    spec = {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64"}}]}]}
    _c, d = run(three_pods(), [K.policy("x/p", spec)])
    kinds = {i.kind for i in d["node-1"].identities.values()}
    assert kinds == {"reserved", "pod", "cidr", "namespace"}
    # (no ClusterNetworkPolicy tells the namespaces apart: one class of both)
    assert [i.namespaces for i in d["node-1"].identities.values() if i.kind == "namespace"] == [("x", "y")]
    assert d["node-1"].identities[ID_HOST].name == "host"
    (cidr_info,) = [i for i in d["node-1"].identities.values() if i.kind == "cidr"]
    assert cidr_info.cidr == "fd00::/64"


# -- scale (printout only, no timed assertion) -----------------------------------------------


def synthetic_cluster(
    n_ns: int = 500, pods_per_ns: int = 20, n_pol: int = 1000, n_nodes: int = 10
) -> ClusterState:
    nss = [K.ns(f"ns-{i}", team=f"t{i % 20}", env="prod" if i % 2 else "dev") for i in range(n_ns)]
    pods = []
    k = 0
    for i in range(n_ns):
        for j in range(pods_per_ns):
            k += 1
            ip4 = f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"
            pods.append(
                K.pod(
                    f"ns-{i}/p{j}",
                    {"app": f"app{j % 5}", "tier": ("web", "db", "cache")[j % 3]},
                    [ip4, f"fd00::{k:x}"],
                    f"node-{k % n_nodes}",
                    ports=[("http", 8080 + j % 2, "TCP")],
                )
            )
    pols = []
    for p in range(n_pol):
        spec = {
            "podSelector": {"matchLabels": {"app": f"app{p % 5}"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"tier": "web"}}},
                        {
                            "namespaceSelector": {"matchLabels": {"team": f"t{p % 20}"}},
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["app1", "app2"]}
                                ]
                            },
                        },
                    ],
                    "ports": [
                        {"port": 80},
                        {"port": 8000, "endPort": 8100},
                        *([{"port": "http"}] if p % 4 == 1 else []),
                    ],
                },
                {
                    "from": [
                        {
                            "ipBlock": {
                                "cidr": f"172.{p % 32}.0.0/16",
                                "except": [f"172.{p % 32}.{p % 200}.0/24"],
                            }
                        }
                    ]
                },
            ],
            "egress": [
                {
                    "to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                    "ports": [{"port": 5432}, *([{"port": "http"}] if p % 4 == 2 else [])],
                },
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": "0.0.0.0/0",
                                "except": ["10.0.0.0/8", f"192.168.{p % 256}.0/24"],
                            }
                        }
                    ]
                },
            ],
        }
        pols.append(K.policy(f"ns-{p % n_ns}/pol-{p}", spec))
    nodes = [K.node(f"node-{i}", f"192.0.2.{i + 1}") for i in range(n_nodes)]
    return cluster_from_objects(nss, pods, pols, nodes)


@pytest.mark.slow
def test_a_ten_thousand_pod_cluster_compiles_in_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    c = synthetic_cluster()
    t1 = time.perf_counter()
    d = compute(c, "node-1")
    t2 = time.perf_counter()
    compute(c, "node-2")
    t3 = time.perf_counter()
    entries = sum(len(e.entries) for e in d.endpoints.values())
    with capsys.disabled():
        print(
            f"\n10k pods / 1k policies: model {t1 - t0:.2f}s, first node {t2 - t1:.2f}s, "
            f"next node {t3 - t2:.2f}s; {len(d.endpoints)} endpoints, {entries} entries, "
            f"{len(d.ipcache)} ipcache, {len(d.identities)} identities"
        )
    assert len(d.endpoints) == 1000 and not c.errors


def test_a_replaced_cluster_state_is_compiled_afresh() -> None:
    import dataclasses

    c = K.cluster(three_pods(), [K.policy("x/deny", {"podSelector": {}, "ingress": []})])
    assert compute(c, "node-1").endpoints["x/a"].ingress_isolated
    c2 = dataclasses.replace(c, policies={})
    assert not compute(c2, "node-1").endpoints["x/a"].ingress_isolated


# -- differential: compiled maps + lookup vs a direct reading of the API semantics ------------

LBL = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]), max_size=2)
SEL: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"matchLabels": LBL}),
    st.fixed_dictionaries(
        {
            "matchExpressions": st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {
                            "key": st.sampled_from(["app", "tier"]),
                            "operator": st.sampled_from(["In", "NotIn"]),
                            "values": st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2),
                        }
                    ),
                    st.fixed_dictionaries(
                        {
                            "key": st.sampled_from(["app", "tier"]),
                            "operator": st.sampled_from(["Exists", "DoesNotExist"]),
                        }
                    ),
                ),
                max_size=2,
            )
        }
    ),
)
CIDRS = ["10.244.0.0/16", "10.244.1.0/24", "10.244.1.10/32", "10.244.2.0/24", "0.0.0.0/0", "203.0.113.0/24"]
IP_BLOCK = st.builds(
    lambda c, ex: {"ipBlock": {"cidr": c, "except": [e for e in ex if _strict_subnet(e, c)]}},
    st.sampled_from(CIDRS[:2] + CIDRS[4:5]),
    st.lists(st.sampled_from(CIDRS[1:4]), min_size=1, max_size=2),
)
PEER = st.one_of(
    IP_BLOCK,
    st.fixed_dictionaries({"podSelector": SEL}),
    st.fixed_dictionaries({"namespaceSelector": SEL}),
    st.fixed_dictionaries({"podSelector": SEL, "namespaceSelector": SEL}),
    st.builds(
        lambda c, ex: {"ipBlock": {"cidr": c, "except": [e for e in ex if _strict_subnet(e, c)]}},
        st.sampled_from(CIDRS),
        st.lists(st.sampled_from(CIDRS), max_size=2),
    ),
)
PORT = st.one_of(
    st.fixed_dictionaries(
        {"port": st.sampled_from([80, 81, 8080])}, optional={"protocol": st.sampled_from(["TCP", "UDP"])}
    ),
    st.fixed_dictionaries({"protocol": st.sampled_from(["TCP", "UDP"])}),
    st.fixed_dictionaries(
        {"port": st.sampled_from(["http", "metrics"])}, optional={"protocol": st.sampled_from(["TCP", "UDP"])}
    ),
    st.fixed_dictionaries({"port": st.just(79), "endPort": st.sampled_from([80, 81, 9000])}),
)
RULE = st.fixed_dictionaries(
    {}, optional={"peers": st.lists(PEER, max_size=2), "ports": st.lists(PORT, max_size=2)}
)
POLICY = st.fixed_dictionaries(
    {
        "ns": st.sampled_from(["x", "y"]),
        "podSelector": SEL,
        "types": st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
        "ingress": st.lists(RULE, max_size=2),
        "egress": st.lists(RULE, max_size=2),
    }
)
POD_PORTS = st.lists(
    st.tuples(
        st.sampled_from(["http", "metrics", None]),
        st.sampled_from([80, 81, 8080]),
        st.sampled_from(["TCP", "UDP"]),
    ),
    max_size=3,
    unique_by=lambda t: (t[1], t[2]),
)


def _strict_subnet(e: str, c: str) -> bool:
    en, cn = ipaddress.ip_network(e), ipaddress.ip_network(c)
    return en.subnet_of(cn) and en.prefixlen > cn.prefixlen  # type: ignore[arg-type]


def _raw_rules(rules: list[dict[str, Any]], peer_key: str) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        raw: dict[str, Any] = {}
        if "peers" in r:
            raw[peer_key] = r["peers"]
        if "ports" in r:
            raw["ports"] = r["ports"]
        out.append(raw)
    return out


def reference_allowed(c: ClusterState, src: str, dst: str, proto: str, port: int) -> bool:
    """NetworkPolicy semantics read straight off the model, independent of identities and maps."""
    from controller.compiler.model import Pod

    def addr(who: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(c.pods[who].ips[0] if who in c.pods else who)

    def peer_ok(pol: Any, rule: Any, peer_who: str) -> bool:
        if not rule.peers:
            return True
        pod = c.pods.get(peer_who)
        for p in rule.peers:
            if p.ip_block is not None:
                if p.ip_block.contains(addr(peer_who)):
                    return True
                continue
            if pod is None:
                continue
            ns_ok = (
                pod.namespace == pol.namespace
                if p.namespace_selector is None
                else p.namespace_selector.matches(c.namespace_labels(pod.namespace))
            )
            if ns_ok and (p.pod_selector is None or p.pod_selector.matches(pod.labels)):
                return True
        return False

    def port_ok(rule: Any, dst_pod: Pod | None) -> bool:
        if not rule.ports:
            return True
        for p in rule.ports:
            if p.protocol != proto:
                continue
            if p.port is None:
                return True
            if isinstance(p.port, int) and p.port <= port <= (p.end_port or p.port):
                return True
            if (
                isinstance(p.port, str)
                and dst_pod is not None
                and port in dst_pod.resolve_named_port(p.port, proto)
            ):
                return True
        return False

    def side_ok(pod_key: str, direction: str, peer_who: str) -> bool:
        pod = c.pods.get(pod_key)
        if pod is None:
            return True
        pols = [
            p
            for p in c.policies.values()
            if p.namespace == pod.namespace
            and p.pod_selector.matches(pod.labels)
            and direction in p.policy_types
        ]
        if not pols:
            return True
        dst_pod = c.pods.get(dst)
        for pol in pols:
            for rule in pol.ingress if direction == "Ingress" else pol.egress:
                if peer_ok(pol, rule, peer_who) and port_ok(rule, dst_pod):
                    return True
        return False

    return side_ok(src, "Egress", dst) and side_ok(dst, "Ingress", src)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    pod_labels=st.lists(LBL, min_size=4, max_size=4),
    pod_ports=st.lists(POD_PORTS, min_size=4, max_size=4),
    ns_labels=st.lists(LBL, min_size=2, max_size=2),
    policies=st.lists(POLICY, min_size=1, max_size=3),
)
def test_random_policies_agree_with_a_direct_reading_of_the_api_semantics(
    pod_labels: list[dict[str, str]],
    pod_ports: list[list[tuple[str | None, int, str]]],
    ns_labels: list[dict[str, str]],
    policies: list[dict[str, Any]],
) -> None:
    keys = ["x/a", "x/b", "y/a", "y/b"]
    ips = ["10.244.1.10", "10.244.2.10", "10.244.1.11", "10.244.2.11"]
    pods = [
        K.pod(k, pod_labels[i], [ip], f"node-{1 + i % 2}", ports=pod_ports[i])
        for i, (k, ip) in enumerate(zip(keys, ips, strict=True))
    ]
    raw_pols = []
    for i, p in enumerate(policies):
        spec: dict[str, Any] = {
            "podSelector": p["podSelector"],
            "ingress": _raw_rules(p["ingress"], "from"),
            "egress": _raw_rules(p["egress"], "to"),
        }
        if p["types"] is not None:
            spec["policyTypes"] = p["types"]
        raw_pols.append(K.policy(f"{p['ns']}/p{i}", spec))
    nss = [K.ns("x", **ns_labels[0]), K.ns("y", **ns_labels[1])]
    c, d = run(pods, raw_pols, namespaces=nss)
    assert not c.errors, [str(e) for e in c.errors]
    who = [*keys, "203.0.113.7", "198.51.100.1"]
    for s in who:
        for t in who:
            if s == t or (s not in c.pods and t not in c.pods):
                continue
            for proto, port in (("TCP", 80), ("UDP", 81), ("TCP", 8080), ("TCP", 79)):
                assert ok(d, c, s, t, port, proto) == reference_allowed(c, s, t, proto, port), (
                    s,
                    t,
                    proto,
                    port,
                )


def test_recompiling_reused_and_relabeled_pods_gives_the_identities_a_fresh_allocation_gives() -> None:
    from controller.compiler.builder import ClusterBuilder
    from controller.compiler.identity import allocate_pod_identities, pod_identity_key

    def versioned(raw: dict[str, Any], rv: int) -> dict[str, Any]:
        return {
            **raw,
            "metadata": {**raw["metadata"], "resourceVersion": str(rv), "uid": raw["metadata"]["name"]},
        }

    pods = [versioned(p, i) for i, p in enumerate(three_pods(), 1)]
    builder = ClusterBuilder()
    steps = [
        pods,
        pods,  # every Pod object reused
        [versioned(K.pod("x/a", {"app": "b"}, [A_IP], "node-1"), 10), *pods[1:]],  # x/a takes b's labels
        [*pods, versioned(K.pod("y/d", {"app": "d"}, [D_IP], "node-2"), 11)],  # a new identity
    ]
    for step in steps:
        cluster = builder.build([K.ns("x"), K.ns("y")], step, [], [])
        keys = {p.key: pod_identity_key(p.namespace, p.labels) for p in cluster.pods.values() if p.active}
        fresh = allocate_pod_identities(keys.values())
        assert compile_cluster(cluster).pod_identity == {k: fresh[v] for k, v in keys.items()}
    assert compile_cluster(cluster).pod_identity["x/a"] != compile_cluster(cluster).pod_identity["y/d"]


def test_a_pods_ipcache_entry_follows_an_ip_block_added_or_removed_between_compilations() -> None:
    from controller.compiler.builder import ClusterBuilder

    block = K.policy("x/to-a", {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": f"{A_IP}/31"}}]}]})
    builder = ClusterBuilder()
    nss = [K.ns("x"), K.ns("y")]
    a_net = ipaddress.ip_network(f"{A_IP}/32")
    for pols in ([], [block], [block], []):
        cluster = builder.build(nss, three_pods(), pols, [])
        fresh = cluster_from_objects(nss, three_pods(), pols, [])
        got = compute(cluster, "node-1").ipcache
        assert got == compute(fresh, "node-1").ipcache
        assert is_cidr_identity(got[a_net][1]) == bool(pols)


def test_a_policy_event_shares_the_identity_tables_and_computes_what_a_fresh_build_computes() -> None:
    from controller.compiler.builder import ClusterBuilder

    nss = [K.ns("x"), K.ns("y")]
    allow_b = K.policy("x/to-a", {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [{}]}]})
    builder = ClusterBuilder()
    pods = [{**p, "metadata": {**p["metadata"], "resourceVersion": "1"}} for p in three_pods()]
    # (the previous cluster is held while the next one is compiled, as the agent does)
    held = builder.build(nss, pods, [], [])
    first = compile_cluster(held)
    for pols in ([allow_b], []):
        cluster = builder.build(nss, pods, pols, [])
        compiled = compile_cluster(cluster)
        assert compiled.pod_identity is first.pod_identity and compiled.ns_index is first.ns_index
        got = compute(cluster, "node-1")
        # (a compilation of other Pod objects in between only costs the next one its reuse)
        assert got == compute(cluster_from_objects(nss, pods, pols, []), "node-1")
        held = builder.build(nss, pods, pols, [])
        first = compile_cluster(held)
    moved = [pods[0], {**pods[1], "metadata": {**pods[1]["metadata"], "resourceVersion": "2", "labels": {}}}]
    cluster = builder.build(nss, moved, [allow_b], [])
    assert compile_cluster(cluster).pod_identity is not first.pod_identity
    fresh = cluster_from_objects(nss, moved, [allow_b], [])
    assert compute(cluster, "node-1") == compute(fresh, "node-1")
