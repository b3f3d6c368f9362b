"""A hostile pod against the programs: datagram bounds, anti-spoofing, ICMP errors related to
tracked flows, conntrack entries that disappear (eviction, expiry) and their collection."""

from __future__ import annotations

import struct
import time

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.datapath.abi import CT_DENIED, CT_SEEN_MIDSTREAM, Reason
from tests.support import packets as P
from tests.support.kernel import (
    ID_B,
    NODE_IP,
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

CIDR_ID = 1 << 24  # a CIDR identity standing for an ipBlock the policy allows


def with_padding(frame: bytes, n: int = 32, fill: bytes = b"\x50") -> bytes:
    """Link-layer padding after the IP datagram (the IP length fields stay as they were)."""
    return frame + fill * n


def set_ip4_total_length(frame: bytes, total: int) -> bytes:
    return frame[:16] + struct.pack("!H", total) + frame[18:]


def set_ip6_payload_length(frame: bytes, length: int) -> bytes:
    return frame[:18] + struct.pack("!H", length) + frame[20:]


# -- the IP datagram bounds every header read ---------------------------------------------------


def test_a_truncated_tcp_header_followed_by_padding_is_malformed(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, 0)
    # 2 bytes of TCP in the datagram; the padding after it would read as the rest of a header
    frame = P.ipv4(POD_A, POD_B, P.TCP, P.tcp(40000, 80)[:2])
    assert h.from_pod(with_padding(frame, 40)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_EGRESS) == 1


def test_a_truncated_ipv6_udp_header_followed_by_padding_is_malformed(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, 0)
    frame = set_ip6_payload_length(P.ipv6(POD_A6, POD_B6, P.UDP, P.udp(5000, 53)), 4)
    assert h.from_pod(frame) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_EGRESS) == 1


def test_an_ipv6_extension_header_chain_is_bounded_by_the_payload_length(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, 0)
    payload = P.ext_hdr(P.TCP) + P.tcp(40000, 80)
    frame = set_ip6_payload_length(P.ipv6(POD_A6, POD_B6, 60, payload), 8)  # only the ext header
    assert h.from_pod(frame) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_EGRESS) == 1


@pytest.mark.parametrize("total", [19, 200], ids=["below_ihl", "beyond_the_frame"])
def test_an_ipv4_total_length_outside_header_and_frame_is_malformed(h: Harness, total: int) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, 0)
    frame = set_ip4_total_length(P.ipv4(POD_A, POD_B, P.UDP, P.udp(5000, 53)), total)
    assert h.from_pod(frame) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_EGRESS) == 1


def test_a_complete_datagram_followed_by_padding_is_judged_normally(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, ID_B, P.UDP, 53)
    assert h.from_pod(with_padding(P.ipv4(POD_A, POD_B, P.UDP, P.udp(5000, 53)))) == TC_ACT_OK
    assert h.from_pod(with_padding(P.ipv6(POD_A6, POD_B6, P.UDP, P.udp(5000, 53)))) == TC_ACT_OK
    assert h.count(Reason.ALLOW_POLICY, DIR_EGRESS) == 2


# -- anti-spoofing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [(POD_B, POD_C), ("192.0.2.7", POD_C), (POD_B6, POD_C6), ("2001:db8::7", POD_C6)],
    ids=["v4_other_pod", "v4_allowed_cidr", "v6_other_pod", "v6_allowed_cidr"],
)
def test_a_packet_with_a_source_that_is_not_the_pods_own_is_dropped_as_spoofed(
    h: Harness, src: str, dst: str
) -> None:
    h.endpoint()  # not isolated at all: the check does not depend on policy
    h.ipcache("192.0.2.0/24", 2, CIDR_ID)
    h.ipcache("2001:db8::/64", 2, CIDR_ID)
    build = P.ipv6 if ":" in src else P.ipv4
    for flags in (P.SYN, P.ACK):
        assert h.from_pod(build(src, dst, P.TCP, P.tcp(40000, 80, flags))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_SPOOFED, DIR_EGRESS) == 2
    assert h.dp.dump().ct == []  # nothing tracked for it


def test_a_spoofed_packet_is_dropped_even_when_its_headers_are_malformed(h: Harness) -> None:
    h.endpoint()
    assert h.from_pod(P.ipv4(POD_B, POD_C, P.TCP, b"\x9c\x40")) == TC_ACT_SHOT
    assert h.count(Reason.DROP_SPOOFED, DIR_EGRESS) == 1


def test_the_pods_own_addresses_pass_and_incoming_packets_are_not_checked(h: Harness) -> None:
    h.endpoint()
    assert h.from_pod(P.ipv4(POD_A, POD_C, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    assert h.from_pod(P.ipv6(POD_A6, POD_C6, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    assert h.count(Reason.DROP_SPOOFED, DIR_EGRESS) == 0


@pytest.mark.parametrize("src", ["fe80::1234", "::"], ids=["link_local", "unspecified"])
def test_ipv6_link_local_and_unspecified_sources_are_exempt(h: Harness, src: str) -> None:
    h.endpoint(egress_isolated=True)
    ns = P.ipv6(src, "ff02::1:ff00:10", P.ICMPV6, P.icmp6(135), hop_limit=255)  # neighbour solicitation / DAD
    assert h.from_pod(ns) == TC_ACT_OK
    assert h.count(Reason.ALLOW_ICMP6_CTRL, DIR_EGRESS) == 1


def test_a_pod_without_an_address_of_a_family_has_no_valid_source_in_it(h: Harness) -> None:
    k, v = codecs.encode_endpoint(1, 256, 0, None, POD_A6)  # IPv6-only pod
    h.dp.maps["vg_endpoints"].update(k, v)
    assert h.from_pod(P.ipv4("0.0.0.0", POD_C, P.UDP, P.udp(68, 67))) == TC_ACT_SHOT
    assert h.from_pod(P.ipv4(POD_A, POD_C, P.UDP, P.udp(68, 67))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_SPOOFED, DIR_EGRESS) == 2


def test_arp_is_not_subject_to_the_ip_source_check(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    assert h.from_pod(P.arp()) == TC_ACT_OK
    assert h.count(Reason.ALLOW_NON_IP, DIR_EGRESS) == 1


# -- ICMP errors related to tracked flows ---------------------------------------------------------


def icmp4_error(typ: int, code: int, embedded: bytes, rest: int = 0) -> bytes:
    """An ICMPv4 error carrying `embedded` (an IP packet, Ethernet header stripped)."""
    return struct.pack("!BBHI", typ, code, 0, rest) + embedded


def icmp6_error(typ: int, code: int, embedded: bytes, rest: int = 0) -> bytes:
    return struct.pack("!BBHI", typ, code, 0, rest) + embedded


def ip_of(frame: bytes) -> bytes:
    return frame[14:]


def test_a_port_unreachable_about_an_allowed_flow_reaches_the_isolated_sender(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)  # nothing may come in but replies and related errors
    sent = P.ipv4(POD_A, POD_B, P.UDP, P.udp(5000, 7777))
    assert h.from_pod(sent) == TC_ACT_OK
    err = P.ipv4(POD_B, POD_A, P.ICMP, icmp4_error(3, 3, ip_of(sent)[:28]))
    assert h.to_pod(err) == TC_ACT_OK
    assert h.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 1


OUTSIDE = "203.0.113.7"  # a server outside the cluster (WORLD)
ROUTER = "198.51.100.1"  # a router on the internet path to it (WORLD)


def test_fragmentation_needed_from_a_router_about_a_flow_to_outside_passes(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    sent = P.ipv4(POD_A, OUTSIDE, P.TCP, P.tcp(40000, 443))
    assert h.from_pod(sent) == TC_ACT_OK
    # a router on the way says the next hop takes 1300 bytes: path MTU discovery
    err = P.ipv4(ROUTER, POD_A, P.ICMP, icmp4_error(3, 4, ip_of(sent)[:28], 1300))
    assert h.to_pod(err) == TC_ACT_OK
    assert h.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 1


def test_an_ipv6_packet_too_big_about_an_allowed_flow_passes(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    sent = P.ipv6(POD_A6, POD_B6, P.UDP, P.udp(5000, 53, b"z" * 64))
    assert h.from_pod(sent) == TC_ACT_OK
    err = P.ipv6(POD_B6, POD_A6, P.ICMPV6, icmp6_error(2, 0, ip_of(sent)[:48], 1280))
    assert h.to_pod(err) == TC_ACT_OK
    assert h.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 1


def test_an_error_about_the_reply_of_an_allowed_ingress_flow_passes(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 53)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    reply = P.ipv4(POD_A, POD_B, P.UDP, P.udp(53, 5000))
    assert h.from_pod(reply) == TC_ACT_OK
    err = P.ipv4(POD_B, POD_A, P.ICMP, icmp4_error(3, 3, ip_of(reply)[:28]))
    assert h.to_pod(err) == TC_ACT_OK
    assert h.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 1


def test_an_error_from_an_egress_isolated_pod_about_an_allowed_ingress_flow_passes(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 7777)
    received = P.ipv4(POD_B, POD_A, P.UDP, P.udp(5000, 7777))
    assert h.to_pod(received) == TC_ACT_OK
    err = P.ipv4(POD_A, POD_B, P.ICMP, icmp4_error(3, 3, ip_of(received)[:28]))
    assert h.from_pod(err) == TC_ACT_OK
    assert h.count(Reason.ALLOW_RELATED, DIR_EGRESS) == 1


def test_an_unsolicited_icmp_error_does_not_get_into_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.UDP, P.udp(5000, 7777))) == TC_ACT_OK
    never_sent = P.ipv4(POD_A, POD_B, P.UDP, P.udp(5001, 7777))
    wrong_target = P.ipv4(POD_C, POD_B, P.UDP, P.udp(5000, 7777))  # tracked tuple, other sender
    for embedded in (never_sent, wrong_target):
        err = P.ipv4(POD_B, POD_A, P.ICMP, icmp4_error(3, 4, ip_of(embedded)[:28], 576))
        assert h.to_pod(err) == TC_ACT_SHOT
    truncated = P.ipv4(POD_B, POD_A, P.ICMP, icmp4_error(3, 3, ip_of(never_sent)[:24]))
    assert h.to_pod(truncated) == TC_ACT_SHOT
    err6 = P.ipv6(
        POD_B6, POD_A6, P.ICMPV6, icmp6_error(2, 0, ip_of(P.ipv6(POD_A6, POD_B6, P.UDP, P.udp(1, 2))), 1280)
    )
    assert h.to_pod(err6) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 4
    assert h.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 0


def test_an_icmp_error_about_a_revoked_flow_is_not_related(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    key = h.allow(DIR_EGRESS, ID_B, P.UDP, 7777)
    sent = P.ipv4(POD_A, POD_B, P.UDP, P.udp(5000, 7777))
    assert h.from_pod(sent) == TC_ACT_OK
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    err = P.ipv4(POD_B, POD_A, P.ICMP, icmp4_error(3, 3, ip_of(sent)[:28]))
    assert h.to_pod(err) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1


def test_an_error_about_an_icmp_echo_is_related_by_identifier(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    echo = P.ipv4(POD_A, OUTSIDE, P.ICMP, P.icmp_echo(4321))
    assert h.from_pod(echo) == TC_ACT_OK
    err = P.ipv4(ROUTER, POD_A, P.ICMP, icmp4_error(11, 0, ip_of(echo)[:28]))
    assert h.to_pod(err) == TC_ACT_OK
    assert h.count(Reason.ALLOW_RELATED, DIR_INGRESS) == 1


# -- ICMP echo and policy ports ------------------------------------------------------------------


def test_a_rule_without_ports_allows_icmp_echo_and_a_rule_with_ports_does_not(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)  # no ports: every protocol
    h.ipcache(f"{POD_C}/32", 258)
    h.allow(DIR_INGRESS, 258, P.TCP, 80)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.ICMP, P.icmp_echo(1))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_C, POD_A, P.ICMP, P.icmp_echo(2))) == TC_ACT_SHOT
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, P.ICMPV6, P.icmp_echo(3, v6=True))) == TC_ACT_OK


# -- conntrack entries that disappear --------------------------------------------------------------


def revoke_flow_from_b(h: Harness) -> bytes:
    """B -> A:80 established while allowed, then the policy stops allowing it (A: ingress
    isolated, egress open). Returns the CT key of the flow."""
    h.endpoint(ingress_isolated=True)
    key = h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.SYN))) == TC_ACT_OK
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40000, P.SYN | P.ACK))) == TC_ACT_OK
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_SHOT
    (entry,) = h.dp.dump().ct
    assert entry.state == CT_DENIED
    return codecs.encode_ct_key(1, DIR_INGRESS, P.TCP, POD_B, POD_A, 40000, 80)


def test_an_evicted_tombstone_does_not_let_the_revoked_peer_back_in(h: Harness) -> None:
    tomb = revoke_flow_from_b(h)
    h.dp.maps["vg_ct"].delete(tomb)  # what LRU eviction or expiry does
    # The peer alone: every packet is a new flow, judged (and denied) by A's ingress policy.
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_SHOT
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.SYN))) == TC_ACT_SHOT
    # A retransmits on the dead connection: its open egress lets that out and starts tracking
    # in mid-stream, but the peer's answers are not replies until A's ingress allows them.
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40000, P.ACK))) == TC_ACT_OK
    assert any(e.seen & CT_SEEN_MIDSTREAM for e in h.dp.dump().ct)
    for _ in range(3):
        assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_SHOT
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 0
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 5


def test_a_mid_stream_entry_passes_replies_its_own_policy_allows(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    key = h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    # the entry of an allowed flow was lost: the peer's next segment re-creates it mid-stream
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_OK
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40000, P.ACK))) == TC_ACT_OK  # egress open
    assert h.count(Reason.ALLOW_REPLY, DIR_EGRESS) == 1
    # ... and is re-judged after a policy change like any entry
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40000, P.ACK))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_REVOKED, DIR_EGRESS) == 1


def test_a_mid_stream_reply_into_an_egress_isolated_pod_needs_its_egress_policy(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_OK
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40000, P.ACK))) == TC_ACT_SHOT
    # the same after a SYN: a connection B opened, A's answers are replies
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40001, 80, P.SYN))) == TC_ACT_OK
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40001, P.SYN | P.ACK))) == TC_ACT_OK


def test_an_evicted_allowed_entry_is_re_judged_and_re_created(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 53)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    h.dp.maps["vg_ct"].clear()
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    assert h.count(Reason.ALLOW_POLICY, DIR_INGRESS) == 2
    assert len(h.dp.dump().ct) == 1


def test_gc_removes_expired_entries_and_keeps_live_ones(h: Harness) -> None:
    h.endpoint()
    for sport in (1000, 1001, 1002):
        assert h.from_pod(P.ipv4(POD_A, POD_B, P.UDP, P.udp(sport, 53))) == TC_ACT_OK
    first = P.ipv4(POD_A, POD_B, P.UDP, P.udp(1, 53, b"a" * 32), ident=9, more_fragments=True)
    assert h.from_pod(first) == TC_ACT_OK
    ct = h.dp.maps["vg_ct"]
    stale = codecs.encode_ct_key(1, DIR_EGRESS, P.UDP, POD_A, POD_B, 1000, 53)
    v = abi.CtValue.from_bytes(ct.lookup(stale) or b"")
    v.expires_ns = time.monotonic_ns() - 1
    ct.update(stale, bytes(v))
    result = h.dp.gc_conntrack()
    assert (result.ct_deleted, result.frag_deleted, result.ct_left) == (1, 0, 3)
    assert ct.lookup(stale) is None
    # 31 s later (UDP entries live 60 s, fragments 30 s) only the fragment record goes
    later = h.dp.gc_conntrack(time.monotonic_ns() + 31 * 10**9)
    assert (later.ct_deleted, later.frag_deleted, later.ct_left) == (0, 1, 3)
    assert len(h.dp.maps["vg_frag"].key_list()) == 0


def test_a_fin_or_rst_shortens_the_entry_so_gc_collects_it_soon(h: Harness) -> None:
    h.endpoint()
    for sport, close in ((40000, P.FIN | P.ACK), (40001, P.RST)):
        assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(sport, 80, P.SYN))) == TC_ACT_OK
        assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(80, sport, P.SYN | P.ACK))) == TC_ACT_OK
        assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(sport, 80, close))) == TC_ACT_OK
    assert h.from_pod(P.ipv4(POD_A, NODE_IP, P.TCP, P.tcp(40002, 80, P.SYN))) == TC_ACT_OK  # host: untracked
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(40003, 80, P.SYN))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(80, 40003, P.SYN | P.ACK))) == TC_ACT_OK
    result = h.dp.gc_conntrack(time.monotonic_ns() + 11 * 10**9)  # closed entries live 10 s
    assert (result.ct_deleted, result.ct_left) == (2, 1)
