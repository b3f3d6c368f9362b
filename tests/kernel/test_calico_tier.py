"""Calico's tier in the kernel (issue 16): GlobalNetworkPolicies and Calico NetworkPolicies
compiled by the real compiler into the tier profile, synced into the maps, and packets run
through the tc programs. Each case checks the reason the program counted, and every packet of a
sweep must get the lookup model's reason (controller/debug/verdict_model.py)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler.calico import CalicoObjects, parse_calico_policy
from controller.compiler.stages.calico_tier import calico_rule_ref
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import Reason
from controller.datapath.codecs import Event
from tests.support import packets as P
from tests.support.kernel import NODE_IP, POD_A, POD_B, POD_C, TC_ACT_OK, Harness
from tests.support.tier_world import (
    assert_kernel_is_model,
    cnp,
    egress,
    ingress,
    model,
    netpol,
    reason_of,
    synced,
)

pytestmark = [pytest.mark.root, pytest.mark.bcc]

SELECT_A = "app == 'a'"


def gnp(name: str, order: float | None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"selector": SELECT_A, **spec}
    if order is not None:
        body["order"] = order
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def calico(*gnps: dict[str, Any], namespaced: tuple[dict[str, Any], ...] = ()) -> CalicoObjects:
    return CalicoObjects(global_policies=list(gnps), namespaced_policies=list(namespaced))


def icmp_reason(h: Harness, src: str, icmp_type: int) -> Reason:
    body = bytes([icmp_type, 0, 0, 0]) + bytes(4) + b"x" * 8
    return reason_of(h, h.to_pod, P.ipv4(src, POD_A, P.ICMP, body), DIR_INGRESS)


def test_a_deny_rule_ordered_before_an_allow_rule_decides_and_nothing_matching_is_the_end_of_tier_drop(
    h: Harness,
) -> None:
    d = synced(
        h,
        [],
        [],
        calico(
            gnp("b-deny", 10, ingress=[{"action": "Deny", "source": {"selector": "app == 'b'"}}]),
            gnp(
                "a-allow",
                20,
                ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}],
            ),
        ),
    )
    assert ingress(h, POD_B, 80) is Reason.DROP_CALICO
    assert ingress(h, POD_C, 80) is Reason.ALLOW_CALICO
    assert ingress(h, POD_C, 81) is Reason.DROP_CALICO_END
    assert egress(h, POD_C, 81) is Reason.ALLOW_NOT_ISOLATED  # types: Ingress only
    assert_kernel_is_model(h, d)


def test_networkpolicies_take_part_at_order_1000(h: Harness) -> None:
    allow_b = netpol("allow-b", ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}])
    deny_b = [{"action": "Deny", "source": {"selector": "app == 'b'"}}]
    d = synced(h, [allow_b], [], calico(gnp("deny-first", 999, ingress=deny_b)))
    assert ingress(h, POD_B, 80) is Reason.DROP_CALICO
    assert ingress(h, POD_C, 80) is Reason.DROP_CALICO_END
    assert_kernel_is_model(h, d)
    d = synced(h, [allow_b], [], calico(gnp("deny-after", 1001, ingress=deny_b)))
    assert ingress(h, POD_B, 80) is Reason.ALLOW_CALICO  # the NetworkPolicy's rule came first
    assert_kernel_is_model(h, d)


def test_pass_goes_on_to_baseline_and_an_admin_pass_comes_to_calicos_tier(h: Harness) -> None:
    baseline_deny = cnp(
        "baseline-deny", "Baseline", 1, ingress=[{"action": "Deny", "from": [{"namespaces": {}}]}]
    )
    admin_pass = cnp(
        "admin-pass",
        "Admin",
        1,
        ingress=[{"action": "Pass", "from": [{"namespaces": {}}]}],
    )
    pol = gnp(
        "pass-b",
        5,
        ingress=[
            {"action": "Pass", "source": {"selector": "app == 'b'"}},
            {"action": "Allow"},
        ],
    )
    d = synced(h, [], [admin_pass, baseline_deny], calico(pol))
    assert ingress(h, POD_B, 80) is Reason.DROP_BASELINE
    assert ingress(h, POD_C, 80) is Reason.ALLOW_CALICO
    assert_kernel_is_model(h, d)


def test_an_icmp_type_rule_allows_that_type_only(h: Harness) -> None:
    d = synced(
        h,
        [],
        [],
        calico(gnp("ping", 1, ingress=[{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}])),
    )
    assert icmp_reason(h, POD_B, 8) is Reason.ALLOW_CALICO
    assert icmp_reason(h, POD_B, 13) is Reason.DROP_CALICO_END  # a timestamp request
    assert ingress(h, POD_B, 80) is Reason.DROP_CALICO_END
    assert_kernel_is_model(h, d)


def test_negations_select_the_complement_including_peers_without_labels(h: Harness) -> None:
    d = synced(
        h,
        [],
        [],
        calico(
            gnp(
                "not",
                1,
                types=["Ingress", "Egress"],
                ingress=[{"action": "Allow", "source": {"notSelector": "app == 'b'"}}],
                egress=[
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "destination": {"notNets": ["10.244.2.0/24"], "notPorts": ["1:79"]},
                    }
                ],
            )
        ),
    )
    assert ingress(h, POD_B, 80) is Reason.DROP_CALICO_END
    assert ingress(h, POD_C, 80) is Reason.ALLOW_CALICO
    assert ingress(h, "8.8.8.8", 80) is Reason.ALLOW_CALICO
    assert egress(h, POD_C, 80) is Reason.DROP_CALICO_END
    assert egress(h, "8.8.8.8", 80) is Reason.ALLOW_CALICO
    assert egress(h, "8.8.8.8", 53) is Reason.DROP_CALICO_END
    assert egress(h, NODE_IP, 53) is Reason.ALLOW_HOST  # end of tier never blocks the pod's node
    assert_kernel_is_model(h, d)


def test_a_calico_deny_blocks_the_pods_own_node_and_a_namespaced_policy_stays_in_its_namespace(
    h: Harness,
) -> None:
    ns_pol = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "from-own-ns"},
        "spec": {
            "order": 1,
            "selector": SELECT_A,
            "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow", "source": {"selector": "all()"}}],
            "egress": [
                {
                    "action": "Deny",
                    "protocol": "TCP",
                    "destination": {"nets": [f"{NODE_IP}/32"], "ports": [10250]},
                }
            ],
        },
    }
    d = synced(h, [], [], calico(namespaced=(ns_pol,)))
    assert ingress(h, POD_B, 80) is Reason.ALLOW_CALICO  # x/b: the policy's namespace
    assert ingress(h, POD_C, 80) is Reason.DROP_CALICO_END  # y/c: all() in a namespaced policy is x only
    assert egress(h, NODE_IP, 10250) is Reason.DROP_CALICO
    assert egress(h, NODE_IP, 53) is Reason.ALLOW_HOST
    assert model(d, DIR_EGRESS, NODE_IP, 10250) == "DROP_CALICO"
    assert_kernel_is_model(h, d)


def test_a_log_rule_reports_the_flow_and_the_next_rule_decides(h: Harness, events: list[Event]) -> None:
    pol = gnp(
        "audit-b",
        1,
        ingress=[
            {"action": "Log", "source": {"selector": "app == 'b'"}},
            {"action": "Deny", "protocol": "TCP", "destination": {"ports": [81]}},
            {"action": "Allow"},
        ],
    )
    d = synced(h, [], [], calico(pol))
    assert d.endpoints["x/a"].calico_log
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(42100, 80))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(42101, 81))) != TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_C, POD_A, P.TCP, P.tcp(42102, 80))) == TC_ACT_OK  # no Log for y/c
    h.dp.poll_events(100)
    pol_obj = parse_calico_policy(pol, "GlobalNetworkPolicy", [])
    assert pol_obj is not None
    log_ref = calico_rule_ref(pol_obj, DIR_INGRESS, 0)
    assert [(e.reason, e.rule_ref) for e in events] == [
        (Reason.LOG_CALICO, log_ref),
        (Reason.ALLOW_CALICO, calico_rule_ref(pol_obj, DIR_INGRESS, 2)),
        (Reason.LOG_CALICO, log_ref),
        (Reason.DROP_CALICO, calico_rule_ref(pol_obj, DIR_INGRESS, 1)),
        (Reason.ALLOW_CALICO, calico_rule_ref(pol_obj, DIR_INGRESS, 2)),
    ]
