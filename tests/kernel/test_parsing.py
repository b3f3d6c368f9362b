"""Parsing cannot be bypassed: IPv4 options, IPv6 extension headers, fragments, truncation."""

from __future__ import annotations

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import Reason
from tests.support import packets as P
from tests.support.kernel import ID_B, POD_A, POD_A6, POD_B, POD_B6, TC_ACT_OK, TC_ACT_SHOT, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]

NOP4 = bytes([1, 1, 1, 0])  # four NOP/EOL option bytes


@pytest.mark.parametrize("words", [1, 3, 10])
def test_ports_behind_ipv4_options_are_read_at_the_ihl_offset(h: Harness, words: int) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    opts = NOP4 * words
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80), options=opts)) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 81), options=opts)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1


def test_an_ipv4_header_length_below_five_words_is_malformed(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80), ihl=4)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_INGRESS) == 1


def test_ipv4_options_longer_than_the_packet_are_malformed(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, b"", ihl=15)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_INGRESS) == 1


def test_the_l4_header_behind_an_ipv6_extension_header_chain_is_found(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    # hop-by-hop(0) -> dest(60) -> routing(43) -> AH(51) -> TCP
    payload = P.ext_hdr(60) + P.ext_hdr(43) + P.ext_hdr(51, 2)
    ah = bytes([P.TCP, 2]) + bytes(14)
    ok = P.ipv6(POD_B6, POD_A6, 0, payload + ah + P.tcp(40000, 80))
    bad = P.ipv6(POD_B6, POD_A6, 0, payload + ah + P.tcp(40000, 81))
    assert h.to_pod(ok) == TC_ACT_OK
    assert h.to_pod(bad) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1


def test_ports_beyond_the_direct_read_bound_are_read_with_the_helper_and_judged_alike(h: Harness) -> None:
    # parse.h reads headers straight from the skb below VG_DIRECT_MAX_OFF (1024) and with
    # bpf_skb_load_bytes() beyond it: a 1,040-byte destination options header puts the TCP
    # header at offset 1,094, so its ports and flags take the helper path.
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    far = P.ext_hdr(P.TCP, 129)
    assert 14 + 40 + len(far) > 1024
    for dport, verdict in ((80, TC_ACT_OK), (81, TC_ACT_SHOT)):
        assert h.to_pod(P.ipv6(POD_B6, POD_A6, 60, far + P.tcp(40000, dport))) == verdict
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    # the flags came through too: only a flow opened by a SYN lets its reply out of an isolated
    # egress (one tracked from mid-stream must pass the reply direction's own policy)
    assert h.from_pod(P.ipv6(POD_A6, POD_B6, 60, far + P.tcp(80, 40000, P.SYN | P.ACK))) == TC_ACT_OK
    assert h.count(Reason.ALLOW_REPLY, DIR_EGRESS) == 1


def test_an_extension_header_chain_longer_than_the_parser_follows_is_malformed(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    payload = b"".join(P.ext_hdr(60) for _ in range(9)) + P.ext_hdr(P.TCP) + P.tcp(40000, 80)
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 60, payload)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_INGRESS) == 1


def test_a_truncated_extension_header_is_malformed(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 60, bytes([P.TCP, 4]) + bytes(6))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_INGRESS) == 1


# -- fragments ---------------------------------------------------------------------------------


def test_a_later_ipv4_fragment_of_an_allowed_first_fragment_passes(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 5353)
    first = P.ipv4(POD_B, POD_A, P.UDP, P.udp(1000, 5353, b"a" * 32), ident=0x4242, more_fragments=True)
    later = P.ipv4(POD_B, POD_A, P.UDP, b"b" * 40, ident=0x4242, frag_offset=40)
    last = P.ipv4(POD_B, POD_A, P.UDP, b"c" * 8, ident=0x4242, frag_offset=80, more_fragments=False)
    assert h.to_pod(first) == TC_ACT_OK
    assert h.to_pod(later) == TC_ACT_OK
    assert h.to_pod(last) == TC_ACT_OK
    assert h.count(Reason.ALLOW_FRAG, DIR_INGRESS) == 2


def test_a_later_fragment_of_a_denied_first_fragment_is_dropped(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 5353)
    first = P.ipv4(POD_B, POD_A, P.UDP, P.udp(1000, 5354, b"a" * 32), ident=7, more_fragments=True)
    later = P.ipv4(POD_B, POD_A, P.UDP, b"b" * 40, ident=7, frag_offset=40)
    assert h.to_pod(first) == TC_ACT_SHOT
    assert h.to_pod(later) == TC_ACT_SHOT
    assert h.count(Reason.DROP_FRAG_UNKNOWN, DIR_INGRESS) == 1


def test_an_unknown_non_first_fragment_is_dropped_by_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)  # even a peer allowed everything: nothing to judge the fragment by
    frag = P.ipv4(POD_B, POD_A, P.UDP, b"b" * 40, ident=99, frag_offset=1480)
    assert h.to_pod(frag) == TC_ACT_SHOT
    assert h.count(Reason.DROP_FRAG_UNKNOWN, DIR_INGRESS) == 1


def test_an_unknown_non_first_fragment_passes_a_direction_that_is_not_isolated(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    frag = P.ipv4(POD_A, POD_B, P.UDP, b"b" * 40, ident=99, frag_offset=1480)
    assert h.from_pod(frag) == TC_ACT_OK
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_EGRESS) == 1


def test_a_later_ipv6_fragment_of_an_allowed_first_fragment_passes(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 5353)
    first = P.frag_hdr(P.UDP, 0, True, 0xABCDEF) + P.udp(1000, 5353, b"a" * 32)
    later = P.frag_hdr(P.UDP, 40, False, 0xABCDEF) + b"b" * 24
    other = P.frag_hdr(P.UDP, 40, False, 0xABCDE0) + b"b" * 24
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 44, first)) == TC_ACT_OK
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 44, later)) == TC_ACT_OK
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 44, other)) == TC_ACT_SHOT
    assert h.count(Reason.ALLOW_FRAG, DIR_INGRESS) == 1
    assert h.count(Reason.DROP_FRAG_UNKNOWN, DIR_INGRESS) == 1


def test_an_ipv6_fragment_header_behind_other_extension_headers_is_honoured(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.UDP, 5353)
    first = P.ext_hdr(44) + P.frag_hdr(P.UDP, 0, True, 5) + P.udp(1000, 5353, b"a" * 32)
    later = P.ext_hdr(44) + P.frag_hdr(P.UDP, 40, False, 5) + b"b" * 24
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 0, first)) == TC_ACT_OK
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, 0, later)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_FRAG, DIR_INGRESS) == 1


def test_a_first_fragment_too_short_for_the_ports_is_malformed(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    first = P.ipv4(POD_B, POD_A, P.TCP, b"\x00\x01", ident=3, more_fragments=True)
    assert h.to_pod(first) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_INGRESS) == 1


# -- truncation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "l4"),
    [(P.TCP, P.tcp(40000, 80)[:19]), (P.TCP, b"\x9c\x40"), (P.UDP, P.udp(1, 53)[:7]), (P.SCTP, bytes(11))],
)
def test_a_truncated_l4_header_from_an_isolated_pod_is_dropped(h: Harness, proto: int, l4: bytes) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, 0)  # everything allowed: only malformation can drop it
    assert h.from_pod(P.ipv4(POD_A, POD_B, proto, l4)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_EGRESS) == 1


def test_a_truncated_ipv6_l4_header_from_an_isolated_pod_is_dropped(h: Harness) -> None:
    h.endpoint(egress_isolated=True)
    h.allow(DIR_EGRESS, 0)
    assert h.from_pod(P.ipv6(POD_A6, POD_B6, P.UDP, b"\x00\x35\x00")) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_EGRESS) == 1


def test_a_truncated_header_passes_a_direction_that_is_not_isolated(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, b"\x9c\x40")) == TC_ACT_OK
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_EGRESS) == 1


def test_a_truncated_icmp_echo_is_malformed(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.ICMP, bytes([8, 0, 0, 0, 0]))) == TC_ACT_SHOT
    assert h.count(Reason.DROP_MALFORMED, DIR_INGRESS) == 1
