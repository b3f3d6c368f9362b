"""Edges of the NetworkPolicy API (issue #5 item 6) through compile + the datapath lookup model.

Every verdict is computed by `controller.debug.verdict_model` over `controller.compiler.compute` and is
also checked against the reference evaluator (tests/reference/evaluator.py); the expected
values are stated from the API semantics in each test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.model import ClusterState
from controller.debug.verdict_model import verdict
from tests.reference.evaluator import Evaluator, InvalidPolicy
from tests.support.k8s import K8s as K

NODES = [
    K.node("node-1", "10.244.1.1", "fd00:10:244:1::1"),
    K.node("node-2", "10.244.2.1", "fd00:10:244:2::1"),
]
A_IPS = ["10.244.1.10", "fd00:10:244:1::a"]
B_IPS = ["10.244.2.11", "fd00:10:244:2::b"]
C_IPS = ["10.244.2.12", "fd00:10:244:2::c"]


@dataclasses.dataclass
class World:
    """Raw objects of a small cluster; `allowed` answers through compile + lookup."""

    namespaces: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    policies: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def cluster(self) -> ClusterState:
        return cluster_from_objects(self.namespaces, self.pods, self.policies, NODES)

    def allowed(
        self,
        src: str,
        dst: str,
        port: int,
        protocol: str = "TCP",
        family: int = 4,
        check_reference: bool = True,
    ) -> bool:
        c = self.cluster()
        desired = {n: compute(c, n) for n in c.nodes}

        def side(who: str) -> Any:
            pod = c.pods.get(who)
            return desired[pod.node] if pod is not None and pod.node else None

        got = verdict(side(src), side(dst), src, dst, protocol, port, family).allowed
        if check_reference:
            ref = Evaluator(self.namespaces, self.pods, self.policies)
            assert got == ref.allowed(src, dst, port, protocol, family), (src, dst, port, protocol, family)
        return got

    def put(self, obj: dict[str, Any]) -> None:
        """Create or replace an object by (kind, namespace, name), as `kubectl apply` would."""
        bucket = (
            self.policies
            if "spec" in obj and "podSelector" in obj["spec"]
            else (self.pods if "spec" in obj else self.namespaces)
        )
        meta = obj["metadata"]
        ident = (meta.get("namespace"), meta["name"])
        bucket[:] = [o for o in bucket if (o["metadata"].get("namespace"), o["metadata"]["name"]) != ident]
        bucket.append(obj)

    def remove_policy(self, key: str) -> None:
        ns, name = key.split("/")
        self.policies[:] = [
            p for p in self.policies if (p["metadata"]["namespace"], p["metadata"]["name"]) != (ns, name)
        ]


def pod(
    key: str,
    ips: list[str],
    node: str,
    labels: dict[str, str] | None = None,
    ports: list[tuple[str | None, int, str]] | None = None,
) -> dict[str, Any]:
    return K.pod(key, labels or {"pod": key.split("/")[1]}, ips, node, ports=ports)


def world(
    *policies: dict[str, Any],
    b_ports: list[tuple[str | None, int, str]] | None = None,
    c_ports: list[tuple[str | None, int, str]] | None = None,
) -> World:
    return World(
        [K.ns("x", team="a"), K.ns("y", team="b")],
        [
            pod("x/a", A_IPS, "node-1"),
            pod("x/b", B_IPS, "node-2", ports=b_ports),
            pod("x/c", C_IPS, "node-2", ports=c_ports),
        ],
        list(policies),
    )


def ingress_to(selector: dict[str, Any], *rules: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return K.policy(
        f"x/{name}", {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": list(rules)}
    )


def egress_from(selector: dict[str, Any], *rules: dict[str, Any], name: str = "e") -> dict[str, Any]:
    return K.policy(f"x/{name}", {"podSelector": selector, "policyTypes": ["Egress"], "egress": list(rules)})


B = {"matchLabels": {"pod": "b"}}
A = {"matchLabels": {"pod": "a"}}


# -- named ports ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_a_named_port_the_destination_pod_does_not_declare_matches_nothing(family: int) -> None:
    w = world(ingress_to({}, {"ports": [{"port": "http"}]}), b_ports=[("http", 8080, "TCP")])
    assert w.allowed("x/a", "x/b", 8080, family=family)
    for port in (80, 8080, 0, 65535):  # x/c has no "http": no port at all opens
        assert not w.allowed("x/a", "x/c", port, family=family)


def test_an_egress_named_port_opens_only_towards_pods_that_declare_it() -> None:
    w = world(egress_from(A, {"ports": [{"port": "http"}]}), b_ports=[("http", 8080, "TCP")])
    assert w.allowed("x/a", "x/b", 8080)
    assert not w.allowed("x/a", "x/c", 8080)
    assert not w.allowed("x/a", "203.0.113.5", 8080)  # an outside address has no named ports


def test_one_port_name_on_two_protocols_resolves_per_protocol() -> None:
    dns: list[tuple[str | None, int, str]] = [("dns", 53, "TCP"), ("dns", 5353, "UDP")]
    w = world(ingress_to(B, {"ports": [{"port": "dns", "protocol": "UDP"}]}), b_ports=dns)
    assert w.allowed("x/a", "x/b", 5353, "UDP")
    assert not w.allowed("x/a", "x/b", 53, "UDP")
    assert not w.allowed("x/a", "x/b", 53, "TCP")
    w.policies = [ingress_to(B, {"ports": [{"port": "dns"}]})]  # protocol defaults to TCP
    assert w.allowed("x/a", "x/b", 53, "TCP")
    assert not w.allowed("x/a", "x/b", 5353, "UDP")


@pytest.mark.parametrize("family", [4, 6])
def test_pods_with_equal_labels_map_one_egress_name_to_their_own_numbers(family: int) -> None:
    same = {"app": "web"}
    w = World(
        [K.ns("x")],
        [
            pod("x/a", A_IPS, "node-1"),
            pod("x/b", B_IPS, "node-2", same, [("http", 80, "TCP")]),
            pod("x/c", C_IPS, "node-2", same, [("http", 8080, "TCP")]),
        ],
        [egress_from(A, {"to": [{"podSelector": {"matchLabels": same}}], "ports": [{"port": "http"}]})],
    )
    assert w.allowed("x/a", "x/b", 80, family=family) and not w.allowed("x/a", "x/b", 8080, family=family)
    assert w.allowed("x/a", "x/c", 8080, family=family) and not w.allowed("x/a", "x/c", 80, family=family)


# -- endPort ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "inside", "outside"),
    [
        (1, 65535, [1, 2, 32768, 65534, 65535], [0]),
        (65535, 65535, [65535], [0, 65534, 1]),
        (80, 80, [80], [79, 81, 0, 65535]),
        (1, 1, [1], [0, 2, 65535]),
        (32768, 65535, [32768, 40000, 65535], [32767, 0, 1]),
        (65534, 65535, [65534, 65535], [65533, 0]),
    ],
)
def test_end_port_ranges_hold_exactly_their_bounds(
    lo: int, hi: int, inside: list[int], outside: list[int]
) -> None:
    w = world(ingress_to(B, {"ports": [{"port": lo, "endPort": hi}]}))
    for port in inside:
        assert w.allowed("x/a", "x/b", port), port
        assert not w.allowed("x/a", "x/b", port, "UDP"), port
    for port in outside:
        assert not w.allowed("x/a", "x/b", port), port


def test_a_port_zero_or_an_end_port_beyond_65535_is_rejected_and_fails_closed() -> None:
    for bad in (
        {"port": 0},
        {"port": 80, "endPort": 65536},
        {"port": 81, "endPort": 80},
        {"port": "http", "endPort": 90},
    ):
        w = world(ingress_to(B, {"ports": [bad]}, {"ports": [{"port": 9}]}))
        errors = w.cluster().errors
        assert [e.field.split(".")[-1] for e in errors] in (["port"], ["endPort"]), errors
        assert not w.allowed("x/a", "x/b", 80, check_reference=False)  # the bad rule is dropped whole
        assert w.allowed("x/a", "x/b", 9, check_reference=False)  # the valid rule still applies
        with pytest.raises(InvalidPolicy):  # and the API server would not have stored it
            Evaluator(w.namespaces, w.pods, w.policies)


# -- ipBlocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_overlapping_ip_blocks_from_several_policies_are_a_union(family: int) -> None:
    if family == 4:
        big, ex1, ex2, inner = "10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.1.2.0/24"
        probes = {"10.1.2.3": True, "10.1.3.3": True, "10.2.0.9": True, "10.3.0.1": True, "11.0.0.1": False}
    else:
        big, ex1, ex2, inner = "2001:db8::/32", "2001:db8:1::/48", "2001:db8:2::/48", "2001:db8:1:2::/64"
        probes = {
            "2001:db8:1:2::3": True,
            "2001:db8:1:3::3": True,
            "2001:db8:2::9": True,
            "2001:db8:3::1": True,
            "2001:db9::1": False,
        }
    # p1 and p2 carve different excepts out of the same cidr: together they allow all of it.
    w = world(
        ingress_to(B, {"from": [{"ipBlock": {"cidr": big, "except": [ex1]}}]}, name="p1"),
        ingress_to(B, {"from": [{"ipBlock": {"cidr": big, "except": [ex2]}}]}, name="p2"),
    )
    for ip, expected in probes.items():
        assert w.allowed(ip, "x/b", 80, family=family) is expected, ip
    # Without p2, ex1 is carved out, except where a third policy allows a smaller block.
    w.remove_policy("x/p2")
    w.put(ingress_to(B, {"from": [{"ipBlock": {"cidr": inner}}]}, name="p3"))
    inside_inner, outside_inner = list(probes)[:2]
    assert w.allowed(inside_inner, "x/b", 80, family=family)
    assert not w.allowed(outside_inner, "x/b", 80, family=family)


def test_ip_blocks_match_pod_addresses_through_nested_excepts() -> None:
    # 10.244.2.0/24 except 10.244.2.8/29 (holds b and c) except nothing re-adds c: c stays out;
    # a /32 block for c in another policy adds it back.
    w = world(ingress_to(A, {"from": [{"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.8/29"]}}]}))
    assert not w.allowed("x/c", "x/a", 80) and not w.allowed("x/b", "x/a", 80)
    w.put(ingress_to(A, {"from": [{"ipBlock": {"cidr": "10.244.2.12/32"}}]}, name="q"))
    assert w.allowed("x/c", "x/a", 80) and not w.allowed("x/b", "x/a", 80)


@pytest.mark.parametrize(("cidr", "family"), [("10.0.0.0/24", 4), ("2001:db8::/64", 6)])
def test_an_except_equal_to_its_cidr_is_rejected_and_the_rule_fails_closed(cidr: str, family: int) -> None:
    """The API server's ValidateIPBlock requires every except to be a STRICT subset of cidr
    ("must be a strict subset of `cidr`"), so such a policy never reaches a real cluster. If one
    arrives anyway (an old or lax API server, the lab), the agent names the field and drops the
    whole rule: dropping only the except would allow the block it meant to exclude."""
    outside = "10.0.0.7" if family == 4 else "2001:db8::7"
    block = {"ipBlock": {"cidr": cidr, "except": [cidr]}}
    w = world(ingress_to(B, {"from": [block]}, {"ports": [{"port": 9}]}))
    errors = w.cluster().errors
    assert len(errors) == 1 and errors[0].field == "spec.ingress[0].from[0].ipBlock.except[0]"
    assert "strict subset" in errors[0].message and errors[0].object == "NetworkPolicy x/p"
    assert not w.allowed(outside, "x/b", 80, family=family, check_reference=False)
    # x/b stays isolated and its valid rule 1 still works
    assert w.allowed(outside, "x/b", 9, family=family, check_reference=False)
    assert w.allowed("x/a", "x/c", 80, family=family, check_reference=False)  # nothing else changes
    with pytest.raises(InvalidPolicy):
        Evaluator(w.namespaces, w.pods, w.policies)


# -- objects that come and go -------------------------------------------------------------------


def test_a_policy_in_a_namespace_without_pods_applies_to_the_pod_that_appears_later() -> None:
    w = World(
        [K.ns("x"), K.ns("empty")],
        [pod("x/a", A_IPS, "node-1")],
        [
            K.policy(
                "empty/allow-x",
                {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 5432}]}]},
            )
        ],
    )
    assert not w.cluster().errors
    assert compute(w.cluster(), "node-2").endpoints == {}
    w.put(pod("empty/db", B_IPS, "node-2", {"app": "db"}))
    assert w.allowed("x/a", "empty/db", 5432) and not w.allowed("x/a", "empty/db", 80)
    w.put(pod("empty/other", C_IPS, "node-2", {"app": "other"}))
    assert w.allowed("x/a", "empty/other", 80)  # not selected: not isolated


def test_a_pod_relabelled_into_and_out_of_a_selector_changes_its_verdicts_both_ways() -> None:
    w = world(ingress_to(B, {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}))
    assert not w.allowed("x/a", "x/b", 80)
    w.put(pod("x/a", A_IPS, "node-1", {"pod": "a", "role": "client"}))
    assert w.allowed("x/a", "x/b", 80)
    w.put(pod("x/b", B_IPS, "node-2", {"pod": "b2"}))  # the target leaves the policy: not isolated
    assert w.allowed("x/c", "x/b", 80)
    w.put(pod("x/b", B_IPS, "node-2", {"pod": "b"}))
    w.put(pod("x/a", A_IPS, "node-1", {"pod": "a"}))
    assert not w.allowed("x/a", "x/b", 80)


def test_a_relabelled_pod_changes_identity_and_its_old_identity_entries_no_longer_name_it() -> None:
    w = world(ingress_to(B, {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}))
    before = compute(w.cluster(), "node-2").endpoints["x/b"].entries
    w.put(pod("x/a", A_IPS, "node-1", {"pod": "a", "role": "client"}))
    c = w.cluster()
    after = compute(c, "node-2")
    new_identity = compute(c, "node-1").endpoints["x/a"].identity
    assert {k.identity for k in after.endpoints["x/b"].entries} == {new_identity}
    assert not before  # nothing matched role=client before
    assert after.ipcache[next(n for n in after.ipcache if str(n) == "10.244.1.10/32")][0] == new_identity


def test_relabelling_a_namespace_moves_its_pods_in_and_out_of_namespace_selectors() -> None:
    w = world(ingress_to(B, {"from": [{"namespaceSelector": {"matchLabels": {"trusted": "yes"}}}]}))
    w.pods.append(pod("y/d", ["10.244.1.20", "fd00:10:244:1::14"], "node-1"))
    assert not w.allowed("y/d", "x/b", 80)
    w.put(K.ns("y", team="b", trusted="yes"))
    assert w.allowed("y/d", "x/b", 80, family=6)
    assert not w.allowed("x/a", "x/b", 80)  # x itself is not trusted
    w.put(K.ns("y", team="b"))
    assert not w.allowed("y/d", "x/b", 80)


def test_a_policy_deleted_and_recreated_under_the_same_name_takes_its_new_content() -> None:
    w = world(ingress_to(B, {"ports": [{"port": 80}]}))
    ref_before = {v.rule_ref for v in compute(w.cluster(), "node-2").endpoints["x/b"].entries.values()}
    assert w.allowed("x/a", "x/b", 80) and not w.allowed("x/a", "x/b", 81)
    w.remove_policy("x/p")
    assert w.allowed("x/a", "x/b", 81)  # gone: not isolated any more
    w.put(ingress_to(B, {"ports": [{"port": 81}]}))
    assert w.allowed("x/a", "x/b", 81) and not w.allowed("x/a", "x/b", 80)
    entries = compute(w.cluster(), "node-2").endpoints["x/b"].entries
    assert {v.rule_ref for v in entries.values()} == ref_before  # same name, same rule references
    assert {k.port for k in entries} == {81}
