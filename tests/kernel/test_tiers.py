"""ClusterNetworkPolicy tiers in the kernel: a cluster compiled by the real compiler, synced into
the maps, and packets run through the tc programs. Each packet's reason (read from the
counters) must be the lookup model's (controller/debug/verdict_model.py), and the named cases
check the tier semantics themselves: Pass chains, an Admin Deny over a NetworkPolicy allow,
Baseline only where NetworkPolicy does not isolate, the pod's own node, a change that cuts an
established flow, and the denying rule named in the drop event."""

from __future__ import annotations

import pytest

from controller.compiler.stages.tiers import cnp_rule_ref
from controller.core.verdicts import DIR_INGRESS
from controller.datapath.abi import Reason
from controller.datapath.codecs import Event
from tests.support import packets as P
from tests.support.kernel import NODE_IP, POD_A, POD_B, POD_C, TC_ACT_OK, Harness
from tests.support.tier_world import (
    FROM_ALL,
    FROM_B,
    FROM_Y,
    NODE,
    assert_kernel_is_model,
    cnp,
    egress,
    ingress,
    netpol,
    reason_of,
    rule,
    synced,
)

pytestmark = [pytest.mark.root, pytest.mark.bcc]


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
