"""ClusterNetworkPolicy tiers in the kernel: a cluster compiled by the real compiler, synced into
the maps, and packets run through the tc programs. Each packet's reason (read from the
counters) must be the lookup model's (controller/debug/verdict_model.py), and the named cases
check the tier semantics themselves: Pass chains, an Admin Deny over a NetworkPolicy allow,
Baseline only where NetworkPolicy does not isolate, the pod's own node, a change that cuts an
established flow, and the denying rule named in the drop event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.compiler.stages.tiers import cnp_rule_ref
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import Reason
from controller.datapath.codecs import Event
from controller.debug import verdict_model
from tests.support import packets as P
from tests.support.kernel import EP, NODE_IP, POD_A, POD_B, POD_C, TC_ACT_OK, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]

NODE = "node-1"
NAMESPACES = [
    {"metadata": {"name": "x", "labels": {"team": "x"}}},
    {"metadata": {"name": "y", "labels": {"team": "y"}}},
]


def _pod(
    ns: str, name: str, ip: str, node: str, ports: tuple[tuple[str, int, str], ...] = ()
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "ports": [{"name": n, "containerPort": p, "protocol": pr} for n, p, pr in ports],
                }
            ],
        },
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


PODS = [
    _pod("x", "a", POD_A, NODE, (("web", 8080, "TCP"),)),  # the endpoint under test (EP)
    _pod("x", "b", POD_B, NODE),
    _pod("y", "c", POD_C, "node-2"),
]
NODES = [
    {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "role": "worker"}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    },
    {
        "metadata": {"name": "node-2", "labels": {"kubernetes.io/hostname": "node-2", "role": "worker"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.244.2.1"}]},
    },
]


def cnp(
    name: str,
    tier: str,
    priority: int,
    ingress: tuple[Any, ...] | list[Any] = (),
    egress: tuple[Any, ...] | list[Any] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tier": tier,
        "priority": priority,
        "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
    }
    if ingress:
        spec["ingress"] = list(ingress)
    if egress:
        spec["egress"] = list(egress)
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def rule(
    action: str, peers: list[Any], port: int | None = None, name: str = "", to: bool = False
) -> dict[str, Any]:
    r: dict[str, Any] = {"action": action, ("to" if to else "from"): peers}
    if name:
        r["name"] = name
    if port is not None:
        r["protocols"] = [{"tcp": {"destinationPort": {"number": port}}}]
    return r


FROM_B = {
    "pods": {
        "namespaceSelector": {"matchLabels": {"team": "x"}},
        "podSelector": {"matchLabels": {"app": "b"}},
    }
}
FROM_Y = {"namespaces": {"matchLabels": {"team": "y"}}}
FROM_ALL: dict[str, Any] = {"namespaces": {}}


def netpol(name: str, ingress: list[Any] | None = None, egress: list[Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return {"kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": name}, "spec": spec}


def synced(h: Harness, nps: list[dict[str, Any]], cnps: list[dict[str, Any]]) -> NodeDesired:
    cluster = cluster_from_objects(NAMESPACES, PODS, nps, NODES, cnps)
    assert all("futurePeer" in str(e) for e in cluster.errors), cluster.errors
    desired = compute(cluster, NODE)
    h.dp.sync(desired, {"x/a": EP})
    return desired


def reason_of(h: Harness, send: Any, frame: bytes, direction: int) -> Reason:
    """The reason the program counted for one packet (the counter that moved)."""
    before = h.counters()
    send(frame)
    after = h.counters()
    moved = [k for k, v in after.items() if k[0] == EP and k[2] == direction and v != before.get(k)]
    assert len(moved) == 1, moved
    return Reason(moved[0][1])


_SPORT = iter(range(20000, 60000))


def ingress(h: Harness, src: str, port: int, proto: int = P.TCP) -> Reason:
    seg = P.tcp(next(_SPORT), port) if proto == P.TCP else P.udp(next(_SPORT), port)
    return reason_of(h, h.to_pod, P.ipv4(src, POD_A, proto, seg), DIR_INGRESS)


def egress(h: Harness, dst: str, port: int, proto: int = P.TCP) -> Reason:
    seg = P.tcp(next(_SPORT), port) if proto == P.TCP else P.udp(next(_SPORT), port)
    return reason_of(h, h.from_pod, P.ipv4(POD_A, dst, proto, seg), DIR_EGRESS)


def model(desired: NodeDesired, direction: int, peer: str, port: int, proto: str = "TCP") -> str:
    return verdict_model.endpoint_verdict(desired, "x/a", direction, peer, proto, port).reason


def assert_kernel_is_model(h: Harness, desired: NodeDesired) -> None:
    for peer in (POD_B, POD_C, "8.8.8.8"):
        for port in (80, 81, 8080, 10250):
            assert ingress(h, peer, port).name == model(desired, DIR_INGRESS, peer, port), (peer, port)
    for peer in (POD_B, POD_C, NODE_IP, "10.244.2.1", "8.8.8.8"):
        for port in (53, 80, 10250):
            for proto, pname in ((P.TCP, "TCP"), (P.UDP, "UDP")):
                got = egress(h, peer, port, proto).name
                assert got == model(desired, DIR_EGRESS, peer, port, pname), (peer, port, pname)


def test_an_admin_deny_beats_a_networkpolicy_allow_and_an_admin_accept_comes_first(h: Harness) -> None:
    d = synced(
        h,
        [netpol("allow-all", ingress=[{}])],
        [
            cnp("deny-b", "Admin", 10, ingress=[rule("Deny", [FROM_B])]),
            cnp("accept-b-80", "Admin", 5, ingress=[rule("Accept", [FROM_B], 80)]),
        ],
    )
    assert ingress(h, POD_B, 80) is Reason.ALLOW_ADMIN
    assert ingress(h, POD_B, 81) is Reason.DROP_ADMIN
    assert ingress(h, POD_C, 81) is Reason.ALLOW_POLICY
    assert_kernel_is_model(h, d)


def test_a_pass_chain_hands_the_decision_to_networkpolicy_and_then_to_baseline(h: Harness) -> None:
    cnps = [
        cnp("pass-b-80", "Admin", 1, ingress=[rule("Pass", [FROM_B], 80)]),
        cnp("deny-x", "Admin", 2, ingress=[rule("Deny", [FROM_B])]),
        cnp("baseline-deny", "Baseline", 1, ingress=[rule("Deny", [FROM_ALL])]),
    ]
    d = synced(h, [], cnps)
    assert ingress(h, POD_B, 80) is Reason.DROP_BASELINE  # passed, not isolated, Baseline denies
    assert ingress(h, POD_B, 81) is Reason.DROP_ADMIN
    assert ingress(h, POD_C, 80) is Reason.DROP_BASELINE
    assert_kernel_is_model(h, d)
    d = synced(
        h, [netpol("allow-b", ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}])], cnps
    )
    assert ingress(h, POD_B, 80) is Reason.ALLOW_POLICY  # passed to NetworkPolicy, which isolates
    assert ingress(h, POD_C, 80) is Reason.DROP_POLICY  # isolated: Baseline is never consulted
    assert_kernel_is_model(h, d)


def test_baseline_accept_and_equal_priorities_are_ordered_by_name(h: Harness) -> None:
    d = synced(
        h,
        [],
        [
            cnp("b-deny", "Baseline", 7, ingress=[rule("Deny", [FROM_Y])]),
            cnp("a-accept", "Baseline", 7, ingress=[rule("Accept", [FROM_Y], 80)]),
        ],
    )
    assert ingress(h, POD_C, 80) is Reason.ALLOW_BASELINE
    assert ingress(h, POD_C, 81) is Reason.DROP_BASELINE
    assert ingress(h, POD_B, 81) is Reason.ALLOW_NOT_ISOLATED  # no implicit isolation
    assert_kernel_is_model(h, d)


def test_the_pods_own_node_is_reachable_unless_a_tier_denies_it(h: Harness) -> None:
    node_peer = {"nodes": {"matchLabels": {"kubernetes.io/hostname": NODE}}}
    cnps = [
        cnp("no-kubelet", "Admin", 1, egress=[rule("Deny", [node_peer], 10250, to=True)]),
        cnp(
            "baseline-no-node",
            "Baseline",
            1,
            egress=[rule("Deny", [{"networks": [f"{NODE_IP}/32"]}], to=True)],
        ),
    ]
    d = synced(h, [], cnps)
    assert egress(h, NODE_IP, 10250) is Reason.DROP_ADMIN
    assert egress(h, NODE_IP, 53, P.UDP) is Reason.DROP_BASELINE
    assert egress(h, "10.244.2.1", 10250) is Reason.ALLOW_NOT_ISOLATED  # another node, not selected
    assert (
        reason_of(h, h.to_pod, P.ipv4(NODE_IP, POD_A, P.TCP, P.tcp(4000, 80)), DIR_INGRESS)
        is Reason.ALLOW_HOST
    )
    assert_kernel_is_model(h, d)
    # NetworkPolicy isolating the pod's egress decides after Admin, and never blocks its node.
    d = synced(h, [netpol("egress-dns", egress=[{"ports": [{"protocol": "UDP", "port": 53}]}])], cnps)
    assert egress(h, NODE_IP, 10250) is Reason.DROP_ADMIN
    assert egress(h, NODE_IP, 53, P.UDP) is Reason.ALLOW_HOST
    assert egress(h, POD_C, 80) is Reason.DROP_POLICY
    assert_kernel_is_model(h, d)


def test_egress_named_ports_and_networks_covering_pods(h: Harness) -> None:
    to_a_web = {
        "action": "Deny",
        "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}}}],
        "protocols": [{"destinationNamedPort": "web"}],
    }
    d = synced(
        h,
        [],
        [
            cnp("named", "Admin", 1, egress=[to_a_web]),
            cnp("nets", "Admin", 2, egress=[rule("Deny", [{"networks": ["10.244.2.0/24"]}], 80, to=True)]),
        ],
    )
    assert egress(h, POD_C, 80) is Reason.DROP_ADMIN  # a pod address inside the network
    assert egress(h, POD_C, 81) is Reason.ALLOW_NOT_ISOLATED
    assert_kernel_is_model(h, d)


def test_the_first_rule_in_tier_order_wins_across_the_identity_cidr_and_any_lookups(h: Harness) -> None:
    to_c = {"pods": {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {}}}
    to_net = {"networks": ["10.244.2.0/24"]}
    deny_all_bad = {"action": "Deny", "to": [{"futurePeer": {}}]}  # failed closed: Deny of everything
    for accept_first in (True, False):
        d = synced(
            h,
            [],
            [
                cnp("pods", "Admin", 1 if accept_first else 3, egress=[rule("Accept", [to_c], 80, to=True)]),
                cnp("nets", "Admin", 2, egress=[rule("Deny", [to_net], to=True)]),
                cnp("any", "Admin", 4, egress=[rule("Accept", [to_c], to=True), deny_all_bad]),
            ],
        )
        assert egress(h, POD_C, 80) is (Reason.ALLOW_ADMIN if accept_first else Reason.DROP_ADMIN)
        assert egress(h, POD_C, 81) is Reason.DROP_ADMIN
        assert egress(h, POD_B, 81) is Reason.DROP_ADMIN  # the failed-closed rule: every peer
        assert_kernel_is_model(h, d)


def test_a_changed_policy_cuts_an_established_flow_at_its_next_packet(h: Harness) -> None:
    synced(h, [], [cnp("accept-b", "Admin", 1, ingress=[rule("Accept", [FROM_B])])])
    syn = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(41000, 80))
    ack = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(41000, 80, P.ACK))
    assert reason_of(h, h.to_pod, syn, DIR_INGRESS) is Reason.ALLOW_ADMIN
    assert reason_of(h, h.to_pod, ack, DIR_INGRESS) is Reason.ALLOW_CT
    # The same policy turned into a Deny: the next packet of the established flow is dropped.
    synced(h, [], [cnp("accept-b", "Admin", 1, ingress=[rule("Deny", [FROM_B])])])
    assert reason_of(h, h.to_pod, ack, DIR_INGRESS) is Reason.DROP_REVOKED
    # and a priority patch that puts an Accept first lets it through again
    synced(
        h,
        [],
        [
            cnp("accept-b", "Admin", 5, ingress=[rule("Deny", [FROM_B])]),
            cnp("z-accept", "Admin", 1, ingress=[rule("Accept", [FROM_B])]),
        ],
    )
    assert reason_of(h, h.to_pod, ack, DIR_INGRESS) is Reason.ALLOW_CT


@pytest.fixture
def events(h: Harness) -> Iterator[list[Event]]:
    got: list[Event] = []
    h.dp.open_events(got.append)
    h.dp.poll_events(0)
    got.clear()
    yield got


def test_the_drop_event_names_the_denying_tier_rule(h: Harness, events: list[Event]) -> None:
    synced(
        h,
        [],
        [
            cnp(
                "guard",
                "Admin",
                3,
                ingress=[rule("Accept", [FROM_Y], 80), rule("Deny", [FROM_ALL], name="rest")],
            )
        ],
    )
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(42000, 81))) != TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_C, POD_A, P.TCP, P.tcp(42001, 80))) == TC_ACT_OK
    h.dp.poll_events(100)
    assert [(e.reason, e.rule_ref) for e in events] == [
        (Reason.DROP_ADMIN, cnp_rule_ref("guard", DIR_INGRESS, 1)),
        (Reason.ALLOW_ADMIN, cnp_rule_ref("guard", DIR_INGRESS, 0)),
    ]
