"""Conntrack: replies, established fast path, revocation by revision, timeouts."""

from __future__ import annotations

import time

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.datapath.abi import CT_ALLOWED, CT_SEEN_FIN, CT_SEEN_REPLY, Reason
from tests.support import packets as P
from tests.support.kernel import ID_B, POD_A, POD_A6, POD_B, POD_B6, POD_C, TC_ACT_OK, TC_ACT_SHOT, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]


def a_to_b(sport: int, dport: int, flags: int = P.SYN) -> bytes:
    return P.ipv4(POD_A, POD_B, P.TCP, P.tcp(sport, dport, flags))


def b_to_a(sport: int, dport: int, flags: int = P.SYN | P.ACK) -> bytes:
    return P.ipv4(POD_B, POD_A, P.TCP, P.tcp(sport, dport, flags))


def test_a_reply_of_an_allowed_flow_passes_into_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)  # egress open: the pod may connect out
    assert h.from_pod(a_to_b(40000, 80)) == TC_ACT_OK
    assert h.to_pod(b_to_a(80, 40000)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 1
    # The same peer cannot open a new connection into the isolated pod.
    assert h.to_pod(b_to_a(80, 40001, P.SYN)) == TC_ACT_SHOT


def test_a_reply_of_an_allowed_ingress_flow_passes_out_of_an_egress_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(b_to_a(40000, 80, P.SYN)) == TC_ACT_OK
    assert h.from_pod(a_to_b(80, 40000, P.SYN | P.ACK)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_REPLY, DIR_EGRESS) == 1


def test_a_syn_is_never_a_reply_so_a_peer_cannot_open_a_connection_back_on_a_flows_ports(
    h: Harness,
) -> None:
    h.endpoint(ingress_isolated=True)  # egress open: the pod may connect out
    assert h.from_pod(a_to_b(40000, 80)) == TC_ACT_OK
    # The peer's SYN on the reverse tuple opens a connection into the isolated pod: a new flow,
    # judged by ingress policy (and dropped), not a reply (a SYN skips the reverse lookup).
    assert h.to_pod(b_to_a(80, 40000, P.SYN)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 0
    # control: the flow's real reply passes
    assert h.to_pod(b_to_a(80, 40000, P.SYN | P.ACK)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 1


def test_established_packets_take_the_conntrack_path_and_are_counted_in_the_entry(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    for _ in range(3):
        assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_OK
    assert h.from_pod(a_to_b(80, 40000, P.ACK)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_POLICY, DIR_INGRESS) == 1
    assert h.count(Reason.ALLOW_CT, DIR_INGRESS) == 2
    (entry,) = h.dp.dump().ct
    assert (entry.saddr, entry.daddr, entry.sport, entry.dport) == (POD_B, POD_A, 40000, 80)
    assert entry.dir == DIR_INGRESS and entry.state == CT_ALLOWED
    assert entry.packets == 4 and entry.seen & CT_SEEN_REPLY
    assert entry.rule_ref == 4242


def test_a_revoked_flow_is_dropped_in_both_directions_after_the_revision_bump(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=True)
    key = h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    h.bump()
    assert h.to_pod(b_to_a(40000, 80, P.SYN)) == TC_ACT_OK
    assert h.from_pod(a_to_b(80, 40000, P.SYN | P.ACK)) == TC_ACT_OK
    h.dp.maps["vg_policy"].delete(key)
    # Without a revision bump the flow is still judged by its stored verdict.
    assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_OK
    h.bump()
    assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_SHOT
    assert h.from_pod(a_to_b(80, 40000, P.ACK)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_REVOKED, DIR_INGRESS) == 1
    assert h.count(Reason.DROP_REVOKED, DIR_EGRESS) == 1


def test_a_revoked_reply_is_dropped_even_where_the_direction_is_not_isolated(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)  # egress open: only the tombstone stops the replies
    key = h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(b_to_a(40000, 80, P.SYN)) == TC_ACT_OK
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    assert h.from_pod(a_to_b(80, 40000, P.ACK)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_REVOKED, DIR_EGRESS) == 1


def test_a_flow_that_stays_allowed_is_never_interrupted_by_a_revision_bump(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(b_to_a(40000, 80, P.SYN)) == TC_ACT_OK
    h.allow(DIR_INGRESS, ID_B, P.UDP, 53)  # unrelated change
    h.bump()
    assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_CT, DIR_INGRESS) == 1


def test_a_revoked_flow_resumes_when_the_policy_allows_it_again(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    key = h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(b_to_a(40000, 80, P.SYN)) == TC_ACT_OK
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_SHOT
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    h.bump()
    assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_OK


def test_an_expired_entry_is_a_miss(h: Harness) -> None:
    from controller.datapath import abi

    h.endpoint(ingress_isolated=True)
    key = h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    assert h.to_pod(b_to_a(40000, 80, P.SYN)) == TC_ACT_OK
    ct = h.dp.maps["vg_ct"]
    (kb,) = list(ct.key_list())
    v = abi.CtValue.from_bytes(ct.lookup(kb) or b"")
    v.expires_ns = 1
    ct.update(kb, bytes(v))
    h.dp.maps["vg_policy"].delete(key)
    # Expired: judged as a new flow, no longer allowed (no bump needed).
    assert h.to_pod(b_to_a(40000, 80, P.ACK)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1


def test_a_fin_shortens_the_tcp_timeout(h: Harness) -> None:
    h.endpoint()
    assert h.from_pod(a_to_b(40000, 80, P.SYN)) == TC_ACT_OK
    assert h.to_pod(b_to_a(80, 40000, P.SYN | P.ACK)) == TC_ACT_OK
    (est,) = h.dp.dump().ct
    assert h.from_pod(a_to_b(40000, 80, P.FIN | P.ACK)) == TC_ACT_OK
    (fin,) = h.dp.dump().ct
    assert fin.seen & CT_SEEN_FIN
    # 6 h after the reply, 10 s after FIN.
    assert est.expires_ns - fin.expires_ns > 5 * 3600 * 10**9


def test_an_icmp_echo_reply_passes_through_conntrack_by_identifier(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.from_pod(P.ipv4(POD_A, POD_B, P.ICMP, P.icmp_echo(77))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.ICMP, P.icmp_echo(77, request=False))) == TC_ACT_OK
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.ICMP, P.icmp_echo(78, request=False))) == TC_ACT_SHOT
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 1


def test_an_ipv6_reply_passes_into_an_isolated_pod(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.from_pod(P.ipv6(POD_A6, POD_B6, P.UDP, P.udp(5000, 53))) == TC_ACT_OK
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, P.UDP, P.udp(53, 5000))) == TC_ACT_OK
    assert h.to_pod(P.ipv6(POD_B6, POD_A6, P.UDP, P.udp(53, 5001))) == TC_ACT_SHOT


def test_conntrack_entries_are_per_endpoint(h: Harness) -> None:
    # A flow tracked for another endpoint id does not open this one.

    h.endpoint(ingress_isolated=True)
    kb = codecs.encode_ct_key(99, DIR_EGRESS, P.TCP, POD_A, POD_C, 40000, 80)
    v = abi.CtValue(expires_ns=2**63, state=CT_ALLOWED)
    h.dp.maps["vg_ct"].update(kb, bytes(v))
    assert h.to_pod(P.ipv4(POD_C, POD_A, P.TCP, P.tcp(80, 40000, P.ACK))) == TC_ACT_SHOT


SYN_TIMEOUT_NS = 60 * 10**9  # CT_TIMEOUT_TCP_SYN (bpf/lib/common.h): a flow before its reply


def deadline_of_new_flow(h: Harness, sport: int) -> int:
    assert h.to_pod(b_to_a(sport, 80, P.SYN)) == TC_ACT_OK
    (entry,) = [e for e in h.dp.dump().ct if e.sport == sport]
    return entry.expires_ns


def test_a_new_entrys_deadline_is_the_tick_clock_plus_its_timeout(h: Harness) -> None:
    h.endpoint()
    tick = 10**7  # HZ >= 100: the tick clock is at most 10 ms behind CLOCK_MONOTONIC
    before = time.monotonic_ns()
    deadline = deadline_of_new_flow(h, 40000)
    after = time.monotonic_ns()
    assert before - 2 * tick <= deadline - SYN_TIMEOUT_NS <= after
    # the CPU that ran it keeps the reading (lib/clock.h)
    assert any(before - 2 * tick <= r.ns <= after and r.jiffies for r in h.clock_readings())


def test_a_reading_of_another_jiffy_is_never_used(h: Harness) -> None:
    h.endpoint()
    h.set_clock_readings(abi.ClockCache(jiffies=1, ns=5 * 10**9))  # a jiffy long gone
    before = time.monotonic_ns()
    deadline = deadline_of_new_flow(h, 40000)
    assert deadline - SYN_TIMEOUT_NS >= before - 2 * 10**7
    assert all(r.jiffies != 1 for r in h.clock_readings() if r.ns != 5 * 10**9)


def test_the_reading_of_the_current_jiffy_saves_the_clock_helper(h: Harness) -> None:
    """Within one jiffy the programs take the time from vg_clock, not from the helper: a marker
    reading planted for the current jiffy shows up in a new entry's deadline. A jiffy is 1-10 ms,
    so planting and sending may straddle a tick: tried until one attempt lands inside one."""
    h.endpoint()
    marker = 7 * 10**9
    try:
        for attempt in range(500):
            deadline_of_new_flow(h, 41000 + attempt)  # a reading of the current jiffy
            jiffies = max(r.jiffies for r in h.clock_readings())
            h.set_clock_readings(abi.ClockCache(jiffies=jiffies, ns=marker))
            if deadline_of_new_flow(h, 51000 + attempt) == marker + SYN_TIMEOUT_NS:
                return
        pytest.fail("no new flow took its time from vg_clock's reading of the current jiffy")
    finally:
        h.set_clock_readings(abi.ClockCache())  # what follows must read the real clock
