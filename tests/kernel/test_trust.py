"""Who may speak for whom (bpf/lib/trust.h), against the six bypasses of issue 13: forged local
sources from outside, forwarded neighbour discovery, the ICMPv6 "reply" pivot, ICMP errors from
another pod, and NodePort masquerade. Every attack has a control that must still pass.

The endpoint under attack is EP (pod A, "db"). Other local pods are endpoints on made-up
ifindexes: the kernel's test run takes skb->skb_iif (the interface a packet arrived on) from
the context, so "arrived on pod B's veth" and "arrived on an uplink" are one number apart."""

from __future__ import annotations

import struct

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.datapath.abi import Reason
from tests.support import packets as P
from tests.support.kernel import (
    EP,
    ID_B,
    ID_C,
    NODE_IP,
    NODE_IP6,
    POD_A,
    POD_A6,
    POD_B,
    POD_B6,
    POD_C,
    POD_C6,
    TC_ACT_OK,
    TC_ACT_SHOT,
    Harness,
)

pytestmark = [pytest.mark.root, pytest.mark.bcc]

VETH_B = 77  # pod B ("api"), on this node
VETH_C = 78  # pod C ("x", the attacker), on this node
UPLINK = 99  # the node's uplink
OUTSIDE = "203.0.113.7"
REMOTE_POD = "10.244.2.40"  # a pod on another node


@pytest.fixture
def node(h: Harness) -> Harness:
    """db (EP) accepts ingress only from pod B on TCP 5432; B and C are local pods; the node's
    addresses are known."""
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 5432)
    for ifindex, identity, v4, v6 in ((VETH_B, ID_B, POD_B, POD_B6), (VETH_C, ID_C, POD_C, POD_C6)):
        h.dp.maps["vg_endpoints"].update(*codecs.encode_endpoint(ifindex, identity, 0, v4, v6, slot=ifindex))
        h.dp.maps["vg_slots"].update(codecs.u32_key(ifindex), codecs.u32_key(ifindex))
        h.local(v4, ifindex)
        h.local(v6, ifindex)
    h.local(POD_A, EP)
    h.local(POD_A6, EP)
    h.local(NODE_IP)
    h.local(NODE_IP6)
    h.ipcache(f"{REMOTE_POD}/32", 300)
    return h


def syn(src: str, sport: int = 40000, dport: int = 5432) -> bytes:
    dst = POD_A6 if ":" in src else POD_A
    return (P.ipv6 if ":" in src else P.ipv4)(src, dst, P.TCP, P.tcp(sport, dport))


# -- 1. an address of this node or of its pods is believed only where it belongs -------------------


@pytest.mark.parametrize("src", [POD_B, POD_B6], ids=["v4", "v6"])
def test_a_local_pods_address_arriving_from_another_interface_is_spoofed(node: Harness, src: str) -> None:
    assert node.to_pod(syn(src), arrived_on=UPLINK) == TC_ACT_SHOT
    assert node.count(Reason.DROP_SPOOFED, DIR_INGRESS) == 1
    # control: from its own veth it is pod B, whom db accepts
    assert node.to_pod(syn(src, 40002), arrived_on=VETH_B) == TC_ACT_OK
    assert node.count(Reason.ALLOW_POLICY, DIR_INGRESS) >= 1


def test_a_service_hairpin_routed_through_a_bridge_is_its_client_not_a_forgery(node: Harness) -> None:
    # on a bridge, pod B -> ClusterIP -> db is routed up through cni0 and back: it arrives from the
    # bridge device, not B's veth, but carries the mark B's from_pod set (the deferred client)
    bridge = UPLINK
    deferred = abi.VG_MARK_DEFERRED | (VETH_B << abi.VG_MARK_SLOT_SHIFT)
    assert node.to_pod(syn(POD_B), arrived_on=bridge, mark=deferred) == TC_ACT_OK
    assert node.count(Reason.ALLOW_POLICY, DIR_INGRESS) == 1
    # without the mark, the same packet from the bridge device claims a local pod's address
    assert node.to_pod(syn(POD_B, 40001), arrived_on=bridge) == TC_ACT_SHOT
    assert node.count(Reason.DROP_SPOOFED, DIR_INGRESS) == 1


@pytest.mark.parametrize("src", [NODE_IP, NODE_IP6], ids=["v4", "v6"])
def test_the_nodes_address_arriving_from_outside_is_not_the_node(node: Harness, src: str) -> None:
    assert node.to_pod(syn(src, dport=22), arrived_on=UPLINK) == TC_ACT_SHOT
    assert node.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    assert node.count(Reason.ALLOW_HOST, DIR_INGRESS) == 0
    # control: the node itself (kubelet probes) still reaches the isolated pod on any port
    assert node.to_pod(syn(src, dport=22)) == TC_ACT_OK
    assert node.count(Reason.ALLOW_HOST, DIR_INGRESS) == 1


@pytest.mark.parametrize("src", [POD_B, POD_B6, NODE_IP6, NODE_IP], ids=["pod4", "pod6", "node6", "node4"])
def test_the_uplink_drops_and_counts_packets_claiming_a_local_address(node: Harness, src: str) -> None:
    # (the test run needs a real device: lo stands for the uplink, counted under its ifindex)
    assert node.from_uplink(syn(src)) == TC_ACT_SHOT
    assert node.count(Reason.DROP_SPOOFED, DIR_INGRESS) == 1


@pytest.mark.parametrize("src", [REMOTE_POD, OUTSIDE, "fd00:10:244:2::40"])
def test_the_uplink_passes_remote_and_outside_sources_uncounted(node: Harness, src: str) -> None:
    assert node.from_uplink(syn(src)) == TC_ACT_OK
    assert node.from_uplink(P.arp()) == TC_ACT_OK
    assert node.counters() == {}


# -- 2. IPv6 control messages only as the link allows them ----------------------------------------


def nd(typ: int, src: str, dst: str, hop_limit: int = 255, body: bytes = bytes(20)) -> bytes:
    return P.ipv6(src, dst, P.ICMPV6, P.icmp6(typ, body), hop_limit=hop_limit)


def test_a_neighbour_solicitation_routed_between_pods_is_judged_by_policy(node: Harness) -> None:
    # prod/web -> db, type 135 with a 200-byte payload: the node routed it (hop limit 254)
    assert node.to_pod(nd(135, POD_C6, POD_A6, 254, bytes(200)), arrived_on=VETH_C) == TC_ACT_SHOT
    assert node.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    # control: a solicitation over the link (hop limit 255) from the node
    assert node.to_pod(nd(135, "fe80::1", "ff02::1:ff00:10")) == TC_ACT_OK
    assert node.count(Reason.ALLOW_ICMP6_CTRL, DIR_INGRESS) == 1


@pytest.mark.parametrize("typ", [136, 143, 135, 133])
def test_neighbour_discovery_and_mld_cannot_leave_an_egress_isolated_pod_for_another_network(
    h: Harness, typ: int
) -> None:
    h.endpoint(egress_isolated=True)
    hop = 1 if typ == 143 else 255
    out = nd(typ, POD_A6, "2001:db8::99", hop, bytes(500))  # to an outside host
    assert h.from_pod(out) == TC_ACT_SHOT
    small = nd(typ, POD_A6, "2001:db8::99", hop)  # a well-formed size changes nothing
    assert h.from_pod(small) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_EGRESS) == 2


def test_neighbour_discovery_to_the_gateway_and_on_the_link_passes(node: Harness) -> None:
    node.endpoint(egress_isolated=True, ingress_isolated=True)
    assert node.from_pod(nd(135, POD_A6, "ff02::1:ff00:1")) == TC_ACT_OK  # address resolution
    assert node.from_pod(nd(135, POD_A6, NODE_IP6)) == TC_ACT_OK  # reachability of the gateway
    assert node.from_pod(nd(136, "fe80::10", "fe80::1")) == TC_ACT_OK
    assert node.count(Reason.ALLOW_ICMP6_CTRL, DIR_EGRESS) == 3


def test_an_oversized_neighbour_solicitation_is_not_control_traffic(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    assert h.from_pod(nd(135, POD_A6, "ff02::1:ff00:1", body=bytes(300))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_EGRESS) == 1


def test_router_advertisements_come_only_from_the_node(node: Harness) -> None:
    node.endpoint(egress_isolated=True, ingress_isolated=True)
    ra = nd(134, "fe80::77", "ff02::1")
    assert node.to_pod(ra, arrived_on=VETH_C) == TC_ACT_SHOT  # another pod on a bridge
    assert node.from_pod(nd(134, "fe80::10", "ff02::1")) == TC_ACT_SHOT  # the pod itself
    assert node.to_pod(nd(137, "fe80::77", POD_A6), arrived_on=VETH_C) == TC_ACT_SHOT  # redirect
    assert node.count(Reason.ALLOW_ICMP6_CTRL, DIR_INGRESS) == 0
    assert node.to_pod(ra) == TC_ACT_OK  # control: the node, the pod's router
    assert node.count(Reason.ALLOW_ICMP6_CTRL, DIR_INGRESS) == 1


def test_mld_needs_a_link_local_source_and_hop_limit_one(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    assert h.from_pod(nd(143, POD_A6, "ff02::16", 1)) == TC_ACT_SHOT  # global source
    assert h.from_pod(nd(143, "fe80::10", "ff02::16", 255)) == TC_ACT_SHOT
    assert h.from_pod(nd(143, "fe80::10", "ff02::16", 1)) == TC_ACT_OK
    assert h.from_pod(nd(143, "::", "ff02::16", 1)) == TC_ACT_OK


# -- 3. non-echo ICMP never opens a way back ---------------------------------------------------------


def icmp_error(v6: bool, embedded: bytes) -> bytes:
    typ, code = (4, 1) if v6 else (3, 3)  # parameter problem / port unreachable
    return struct.pack("!BBHI", typ, code, 0, 0) + embedded


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_an_icmp_error_a_pod_sends_lets_no_icmp_back(node: Harness, v6: bool) -> None:
    a, c = (POD_A6, POD_C6) if v6 else (POD_A, POD_C)
    ip = P.ipv6 if v6 else P.ipv4
    proto = P.ICMPV6 if v6 else P.ICMP
    probe = ip(c, a, P.UDP, P.udp(5000, 9))[14:]
    # db answers x's bad packet with an error (db's egress is not isolated)
    assert node.from_pod(ip(a, c, proto, icmp_error(v6, probe[: 48 if v6 else 28]))) == TC_ACT_OK
    assert node.dp.dump().ct == [], "non-echo ICMP is never tracked"
    # then x sends ICMP of an unknown type with a payload: no "reply" of anything
    data = struct.pack("!BBH", 200, 0, 0) + b"exfil" * 20
    assert node.to_pod(ip(c, a, proto, data), arrived_on=VETH_C) == TC_ACT_SHOT
    assert node.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    # control: an echo is still a flow, and its reply passes
    assert node.from_pod(ip(a, c, proto, P.icmp_echo(9, v6=v6))) == TC_ACT_OK
    reply = ip(c, a, proto, P.icmp_echo(9, request=False, v6=v6))
    assert node.to_pod(reply, arrived_on=VETH_C) == TC_ACT_OK
    assert node.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 1


# -- 4. an ICMP error is related only from a source that could have sent it ----------------------


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_an_error_about_a_tracked_flow_from_another_pod_is_not_related(node: Harness, v6: bool) -> None:
    a, b, c = (POD_A6, POD_B6, POD_C6) if v6 else (POD_A, POD_B, POD_C)
    ip = P.ipv6 if v6 else P.ipv4
    proto = P.ICMPV6 if v6 else P.ICMP
    veth = {b: VETH_B, c: VETH_C}
    assert node.to_pod(ip(b, a, P.TCP, P.tcp(40000, 5432)), arrived_on=VETH_B) == TC_ACT_OK  # api -> db
    inner = ip(a, b, P.TCP, P.tcp(5432, 40000))[14:][: 48 if v6 else 28]  # db:5432 -> api
    err = struct.pack("!BBHI", 1 if v6 else 3, 3 if not v6 else 4, 0, 0) + inner + b"payload" * 10
    assert node.to_pod(ip(c, a, proto, err), arrived_on=veth[c]) == TC_ACT_SHOT  # x speaks for api
    assert node.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 0
    assert node.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    # controls: the flow's peer itself, and the node
    assert node.to_pod(ip(b, a, proto, err), arrived_on=VETH_B) == TC_ACT_OK
    node_ip = NODE_IP6 if v6 else NODE_IP
    assert node.to_pod(ip(node_ip, a, proto, err)) == TC_ACT_OK
    assert node.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 2
    # the node's address arriving from outside is not the node
    assert node.to_pod(ip(node_ip, a, proto, err), arrived_on=UPLINK) == TC_ACT_SHOT


def test_an_outside_router_speaks_only_for_flows_to_outside(node: Harness) -> None:
    router = "198.51.100.1"
    to_remote_pod = P.ipv4(POD_A, REMOTE_POD, P.TCP, P.tcp(40000, 443))
    to_outside = P.ipv4(POD_A, OUTSIDE, P.TCP, P.tcp(40001, 443))
    assert node.from_pod(to_remote_pod) == TC_ACT_OK
    assert node.from_pod(to_outside) == TC_ACT_OK
    frag_needed = struct.pack("!BBHHH", 3, 4, 0, 0, 1300)
    assert node.to_pod(P.ipv4(router, POD_A, P.ICMP, frag_needed + to_outside[14:42]), arrived_on=UPLINK) == 0
    assert (
        node.to_pod(P.ipv4(router, POD_A, P.ICMP, frag_needed + to_remote_pod[14:42]), arrived_on=UPLINK)
        == TC_ACT_SHOT
    )
    assert node.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 1


# -- 5. what the node forwards for someone else is judged by who sent it ----------------------


def test_a_pod_masqueraded_to_the_node_address_is_judged_as_that_pod(node: Harness) -> None:
    # x -> its node's address:nodePort; kube-proxy DNATs to db and masquerades to the node address
    assert node.to_pod(syn(NODE_IP, 51000), arrived_on=VETH_C) == TC_ACT_SHOT
    assert node.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    assert node.count(Reason.ALLOW_HOST, DIR_INGRESS) == 0
    # control: api through the same NodePort is api, whom db accepts
    assert node.to_pod(syn(NODE_IP, 51001), arrived_on=VETH_B) == TC_ACT_OK
    assert node.count(Reason.ALLOW_POLICY, DIR_INGRESS) == 1
    [entry] = node.dp.dump().ct
    assert entry.origin == VETH_B  # the slot of api: the real sender


def test_a_masqueraded_flow_is_revoked_by_its_real_senders_policy(node: Harness) -> None:
    assert node.to_pod(syn(NODE_IP, 51001), arrived_on=VETH_B) == TC_ACT_OK
    key = node.allow(DIR_INGRESS, ID_B, P.TCP, 5432)
    node.dp.maps["vg_policy"].delete(key)
    node.bump()
    assert node.to_pod(syn(NODE_IP, 51001), arrived_on=VETH_B) == TC_ACT_SHOT
    assert node.count(Reason.DROP_REVOKED, DIR_INGRESS) == 1


def test_an_outside_client_masqueraded_to_the_node_address_is_judged_as_outside(node: Harness) -> None:
    assert node.to_pod(syn(NODE_IP, 52000), arrived_on=UPLINK) == TC_ACT_SHOT
    cidr = 1 << 24
    node.ipcache(f"{NODE_IP}/32", 1, cidr)  # an ipBlock containing the node's address
    node.allow(DIR_INGRESS, cidr, P.TCP, 5432)
    assert node.to_pod(syn(NODE_IP, 52001), arrived_on=UPLINK) == TC_ACT_OK
    [entry] = node.dp.dump().ct
    assert entry.origin == abi.CT_ORIGIN_OUTSIDE
