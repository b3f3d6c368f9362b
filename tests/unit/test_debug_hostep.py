"""The host endpoint model (controller.debug.hostep_model) over the real compiler's output: the
guide's preDNAT NodePort policy on a HostEndpoint, a NodePort open from one CIDR only, failsafe
ports, Calico's default deny of the node's other ports, forwarded and leaving traffic."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controller.compiler.clusterview import ClusterView
from controller.compiler.desired_state import NodeDesired
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.debug import hostep_model as hm
from tests.support.debug_views import (
    LB_IP,
    NODE_1_IP,
    NODE_PORT,
    OFFICE,
    OUTSIDE,
    example_objects,
    raw_host_endpoint_cluster,
)

HEP = "node-1-public"


def desired(*files: str, extra: tuple[dict[str, Any], ...] = ()) -> NodeDesired:
    view = ClusterView(raw_host_endpoint_cluster(*example_objects("host-endpoints.yaml", *files), *extra))
    assert not view.cluster.errors, view.cluster.errors
    return view.desired("node-1")


def arriving(d: NodeDesired, src: str, dst: str, port: int, proto: str = "TCP") -> hm.HepVerdict:
    return hm.host_endpoint_verdict(d, HEP, DIR_INGRESS, src, dst, proto, port)


def forward_policy(action: str, nets: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "forward-web"},
        "spec": {
            "order": 10,
            "selector": "ibm.role == 'worker_public'",
            "applyOnForward": True,
            "types": ["Ingress"],
            "ingress": [
                {
                    "action": action,
                    "protocol": "TCP",
                    "source": {"nets": nets},
                    "destination": {"ports": [80]},
                }
            ],
        },
    }


def test_the_guides_preDNAT_policy_denies_a_nodeport_by_its_first_rule_and_udp_by_its_second() -> None:
    d = desired("deny-nodeports.yaml")
    v = arriving(d, OUTSIDE, NODE_1_IP, NODE_PORT)
    assert (v.allowed, v.reason, v.policy_set) == (False, hm.DROP_PREDNAT, hm.SET_PREDNAT)
    assert v.rule is not None and (v.rule.kind, v.rule.policy, v.rule.index, v.rule.name, v.rule.tier) == (
        "GlobalNetworkPolicy",
        "deny-nodeports",
        0,
        "Deny",
        "Calico",
    )
    assert (v.host_endpoint, v.interface, v.traffic) == (HEP, "eth0", hm.FORWARDED)  # a frontend: DNATed
    udp = arriving(d, OUTSIDE, NODE_1_IP, 31000, "UDP")
    assert (udp.reason, udp.rule and udp.rule.index) == (hm.DROP_PREDNAT, 1)


def test_the_load_balancer_address_is_forwarded_and_passes_unpoliced() -> None:
    v = arriving(desired("deny-nodeports.yaml"), OUTSIDE, LB_IP, 80)
    assert (v.allowed, v.reason, v.policy_set, v.traffic, v.rule) == (
        True,
        hm.ALLOW_HOSTEP,
        hm.SET_UNPOLICED,
        hm.FORWARDED,
        None,
    )


def test_a_cidr_only_preDNAT_allow_opens_the_nodeport_to_that_network_only() -> None:
    d = desired("allow-office.yaml", "deny-nodeports.yaml")
    office = arriving(d, OFFICE, NODE_1_IP, NODE_PORT)
    assert (office.reason, office.rule and office.rule.policy) == (hm.ALLOW_PREDNAT, "allow-office-nodeport")
    assert office.peer_cidr_identity != 0  # the office CIDR's identity matched
    outside = arriving(d, OUTSIDE, NODE_1_IP, NODE_PORT)
    assert (outside.reason, outside.rule and outside.rule.policy) == (hm.DROP_PREDNAT, "deny-nodeports")


def test_failsafe_ports_pass_before_any_policy_in_their_own_direction_only() -> None:
    d = desired("deny-nodeports.yaml")
    ssh = arriving(d, OUTSIDE, NODE_1_IP, 22)
    assert (ssh.allowed, ssh.reason, ssh.policy_set) == (True, hm.ALLOW_FAILSAFE, hm.SET_FAILSAFE)
    dns_in = arriving(d, OUTSIDE, NODE_1_IP, 53, "UDP")  # outbound-only failsafe
    assert dns_in.reason == hm.DROP_HOSTEP_END
    dns_out = hm.host_endpoint_verdict(d, HEP, DIR_EGRESS, NODE_1_IP, "192.0.2.53", "UDP", 53)
    assert (dns_out.reason, dns_out.traffic, dns_out.peer) == (hm.ALLOW_FAILSAFE, hm.FROM_NODE, "192.0.2.53")
    none = dataclasses.replace(d, failsafe_inbound=())
    assert arriving(none, OUTSIDE, NODE_1_IP, 22).reason == hm.DROP_HOSTEP_END


def test_the_nodes_other_ports_end_in_calicos_default_deny_of_the_normal_set() -> None:
    v = arriving(desired("deny-nodeports.yaml"), OUTSIDE, NODE_1_IP, 8080)
    assert (v.allowed, v.reason, v.policy_set, v.default_deny_of, v.traffic) == (
        False,
        hm.DROP_HOSTEP_END,
        hm.SET_DEFAULT_DENY,
        hm.SET_NORMAL,
        hm.TO_NODE,
    )
    assert v.policies == ("GlobalNetworkPolicy deny-nodeports",)


def test_a_nodeport_without_its_service_is_the_node_itself_and_a_service_port_is_forwarded() -> None:
    d = desired()  # no policy at all: the host endpoint alone
    assert arriving(d, OUTSIDE, NODE_1_IP, NODE_PORT).policy_set == hm.SET_UNPOLICED
    bare = dataclasses.replace(d, frontends=frozenset())
    assert arriving(bare, OUTSIDE, NODE_1_IP, NODE_PORT).reason == hm.DROP_HOSTEP_END


@pytest.mark.parametrize(("action", "reason"), [("Deny", hm.DROP_HOSTEP), ("Allow", hm.ALLOW_HOSTEP)])
def test_apply_on_forward_policies_judge_forwarded_traffic_and_end_in_default_deny(
    action: str, reason: str
) -> None:
    d = desired(extra=(forward_policy(action, ["203.0.113.0/24"]),))
    v = arriving(d, OUTSIDE, LB_IP, 80)
    assert (v.reason, v.policy_set, v.rule and v.rule.policy) == (reason, hm.SET_FORWARD, "forward-web")
    other = arriving(d, OFFICE, LB_IP, 80)
    assert (other.reason, other.policy_set, other.default_deny_of) == (
        hm.DROP_HOSTEP_END,
        hm.SET_DEFAULT_DENY,
        hm.SET_FORWARD,
    )


def test_leaving_traffic_of_the_node_is_judged_as_the_nodes_and_forwarded_traffic_passes() -> None:
    d = desired("deny-nodeports.yaml")
    own = hm.host_endpoint_verdict(d, HEP, DIR_EGRESS, NODE_1_IP, OUTSIDE, "TCP", 443)
    assert (own.traffic, own.reason) == (hm.FROM_NODE, hm.DROP_HOSTEP_END)
    fwd = hm.host_endpoint_verdict(d, HEP, DIR_EGRESS, "10.244.1.10", OUTSIDE, "TCP", 443)
    assert (fwd.traffic, fwd.reason) == (hm.FORWARDED, hm.ALLOW_HOSTEP)


def test_an_unknown_host_endpoint_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        hm.host_endpoint_verdict(desired(), "nope", DIR_INGRESS, OUTSIDE, NODE_1_IP, "TCP", 22)
