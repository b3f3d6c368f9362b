"""Verdicts of the tc programs on crafted packets (BPF_PROG_TEST_RUN), maps filled directly."""

from __future__ import annotations

import pytest

from controller.compiler.portrange import range_to_prefixes
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import Reason
from tests.support import packets as P
from tests.support.kernel import (
    ID_B,
    ID_C,
    NODE_IP,
    NODE_IP6,
    POD_A,
    POD_A6,
    POD_B,
    POD_B6,
    POD_C,
    TC_ACT_OK,
    TC_ACT_SHOT,
    Harness,
)

pytestmark = [pytest.mark.root, pytest.mark.bcc]

CIDR_ID = (1 << 24) + 7


def to_a(src: str, sport: int, dport: int, flags: int = P.SYN) -> bytes:
    return P.ipv4(src, POD_A, P.TCP, P.tcp(sport, dport, flags))


def from_a(dst: str, sport: int, dport: int, flags: int = P.SYN) -> bytes:
    return P.ipv4(POD_A, dst, P.TCP, P.tcp(sport, dport, flags))


# -- identities --------------------------------------------------------------------------------


def test_a_peer_identity_with_an_allow_entry_passes_into_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(to_a(POD_B, 40000, 80)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_POLICY, DIR_INGRESS) == 1


def test_a_peer_identity_without_an_entry_is_dropped(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(to_a(POD_C, 40000, 80)) == TC_ACT_SHOT
    assert h.to_pod(to_a(POD_B, 40000, 81)) == TC_ACT_SHOT
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(40000, 80))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 3


def test_a_cidr_identity_allows_an_address_inside_the_prefix_only(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.ipcache("192.0.2.0/24", 2, CIDR_ID)
    h.allow(DIR_EGRESS, CIDR_ID, P.TCP, 443)
    assert h.from_pod(from_a("192.0.2.7", 40000, 443)) == TC_ACT_OK
    assert h.from_pod(from_a("198.51.100.1", 40000, 443)) == TC_ACT_SHOT


def test_a_pod_ip_matches_a_rule_on_the_cidr_identity_it_carries(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.ipcache(f"{POD_C}/32", ID_C, CIDR_ID)
    h.allow(DIR_EGRESS, CIDR_ID, P.TCP, 443)
    assert h.from_pod(from_a(POD_C, 40000, 443)) == TC_ACT_OK


def test_an_any_peer_entry_allows_every_peer(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, 0, P.UDP, 53)
    assert h.to_pod(P.ipv4(POD_C, POD_A, P.UDP, P.udp(1000, 53))) == TC_ACT_OK
    assert h.to_pod(P.ipv4("203.0.113.9", POD_A, P.UDP, P.udp(1000, 53))) == TC_ACT_OK
    assert h.to_pod(P.ipv4("203.0.113.9", POD_A, P.UDP, P.udp(1000, 54))) == TC_ACT_SHOT


def test_an_any_protocol_entry_allows_every_protocol_and_port(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    assert h.to_pod(to_a(POD_B, 1, 2)) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.SCTP, P.sctp(5, 6))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.ICMP, P.icmp_echo(9))) == TC_ACT_OK


def test_a_protocol_entry_without_port_allows_every_port_of_that_protocol(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 0, port_plen=0)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(1, 65535))) == TC_ACT_OK
    assert h.to_pod(to_a(POD_B, 1, 65535)) == TC_ACT_SHOT


@pytest.mark.parametrize(
    ("port", "allowed"), [(7999, False), (8000, True), (8042, True), (8080, True), (8081, False)]
)
def test_a_port_range_is_matched_through_lpm_prefixes(h: Harness, port: int, allowed: bool) -> None:
    h.endpoint(ingress_isolated=True)
    for p, plen in range_to_prefixes(8000, 8080):
        h.allow(DIR_INGRESS, ID_B, P.TCP, p, plen)
    assert h.to_pod(to_a(POD_B, 40000, port)) == (TC_ACT_OK if allowed else TC_ACT_SHOT)


def test_an_sctp_port_is_enforced(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.SCTP, 9999)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.SCTP, P.sctp(5, 9999))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.SCTP, P.sctp(5, 9998))) == TC_ACT_SHOT


def test_ipv6_peers_are_judged_by_their_identity(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, P.TCP, P.tcp(40000, 80))) == TC_ACT_OK
    assert h.to_pod(P.ipv6("fd00:10:244:2::30", POD_A6, P.TCP, P.tcp(40000, 80))) == TC_ACT_SHOT


def test_a_direction_that_is_not_isolated_allows_everything(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.from_pod(from_a(POD_C, 40000, 1234)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_EGRESS) == 1


# -- always allowed ----------------------------------------------------------------------------


def test_non_ip_frames_pass_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    assert h.to_pod(P.arp()) == TC_ACT_OK
    assert h.from_pod(P.arp()) == TC_ACT_OK
    assert h.count(Reason.ALLOW_NON_IP, DIR_INGRESS) == 1


GATEWAY_LL = "fe80::1"  # the node's link-local address on the pod's veth
SOLICITED = "ff02::1:ff00:1"  # solicited-node multicast of the gateway


@pytest.mark.parametrize(
    ("icmp_type", "src", "dst", "hop_limit"),
    [
        (133, "fe80::10", "ff02::2", 255),  # router solicitation to all routers
        (135, POD_A6, SOLICITED, 255),  # neighbour solicitation for the gateway
        (136, "fe80::10", GATEWAY_LL, 255),  # neighbour advertisement to the gateway
        (143, "fe80::10", "ff02::16", 1),  # MLDv2 report
    ],
    ids=["rs", "ns", "na", "mld"],
)
def test_ipv6_neighbour_discovery_and_mld_on_the_link_pass_an_isolated_pod(
    h: Harness, icmp_type: int, src: str, dst: str, hop_limit: int
) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    out = P.ipv6(src, dst, P.ICMPV6, P.icmp6(icmp_type), hop_limit=hop_limit)
    back = P.ipv6(
        GATEWAY_LL,
        src if icmp_type != 143 else "ff02::1",
        P.ICMPV6,
        P.icmp6(134 if icmp_type == 133 else icmp_type),
        hop_limit=hop_limit,
    )
    assert h.from_pod(out) == TC_ACT_OK
    assert h.to_pod(back) == TC_ACT_OK  # the node answers over the link
    assert h.count(Reason.ALLOW_ICMP6_CTRL, DIR_EGRESS) == 1
    assert h.count(Reason.ALLOW_ICMP6_CTRL, DIR_INGRESS) == 1


def test_an_icmpv6_echo_is_not_control_traffic(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, P.ICMPV6, P.icmp_echo(7, v6=True))) == TC_ACT_SHOT


def test_the_own_node_reaches_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    assert h.to_pod(to_a(NODE_IP, 40000, 8080)) == TC_ACT_OK
    assert h.from_pod(from_a(NODE_IP, 40000, 10250)) == TC_ACT_OK
    assert h.to_pod(P.ipv6(NODE_IP6, POD_A6, P.TCP, P.tcp(40000, 8080))) == TC_ACT_OK
    assert h.count(Reason.ALLOW_HOST, DIR_INGRESS) == 2


def test_an_interface_without_an_endpoint_entry_drops_everything(h: Harness) -> None:
    assert h.to_pod(to_a(POD_B, 40000, 80)) == TC_ACT_SHOT
    assert h.from_pod(P.arp()) == TC_ACT_SHOT
    assert h.count(Reason.DROP_NO_ENDPOINT, DIR_INGRESS) == 1


def test_a_pending_endpoint_drops_all_but_always_allowed_traffic(h: Harness) -> None:
    h.endpoint(pending=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(to_a(POD_B, 40000, 80)) == TC_ACT_SHOT
    assert h.from_pod(from_a(POD_B, 40000, 80)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_PENDING, DIR_INGRESS) == 1
    assert h.to_pod(P.arp()) == TC_ACT_OK
    assert h.to_pod(to_a(NODE_IP, 40000, 80)) == TC_ACT_OK
