"""Every exit path is counted; new flows and drops (only) produce rate-limited events."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.abi import Reason
from controller.datapath.codecs import Event
from tests.support import packets as P
from tests.support.kernel import EP, ID_B, NODE_IP, POD_A, POD_A6, POD_B, POD_B6, POD_C, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]


SCENARIOS: dict[Reason, tuple[int, Callable[[Harness], object]]] = {
    Reason.ALLOW_POLICY: (DIR_INGRESS, lambda h: h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(1, 80)))),
    Reason.ALLOW_NOT_ISOLATED: (DIR_EGRESS, lambda h: h.from_pod(P.ipv4(POD_A, POD_C, P.TCP, P.tcp(1, 9)))),
    Reason.ALLOW_HOST: (DIR_INGRESS, lambda h: h.to_pod(P.ipv4(NODE_IP, POD_A, P.TCP, P.tcp(1, 9)))),
    Reason.ALLOW_NON_IP: (DIR_INGRESS, lambda h: h.to_pod(P.arp())),
    Reason.ALLOW_ICMP6_CTRL: (
        DIR_INGRESS,
        lambda h: h.to_pod(P.ipv6(POD_B6, POD_A6, P.ICMPV6, P.icmp6(135), hop_limit=255)),
    ),
    Reason.DROP_POLICY: (DIR_INGRESS, lambda h: h.to_pod(P.ipv4(POD_C, POD_A, P.TCP, P.tcp(1, 80)))),
    Reason.DROP_MALFORMED: (DIR_INGRESS, lambda h: h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, b"\x00"))),
    Reason.DROP_FRAG_UNKNOWN: (
        DIR_INGRESS,
        lambda h: h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, bytes(16), ident=5, frag_offset=800)),
    ),
}


@pytest.mark.parametrize("reason", list(SCENARIOS), ids=lambda r: r.name)
def test_each_reason_hit_increments_exactly_its_own_counter(h: Harness, reason: Reason) -> None:
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80)
    direction, scenario = SCENARIOS[reason]
    scenario(h)
    counters = h.counters()
    assert counters[(EP, int(reason), direction)][0] == 1
    assert counters[(EP, int(reason), direction)][1] > 0  # bytes too
    assert sum(pk for pk, _ in counters.values()) == 1


def test_the_stateful_reasons_are_counted(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, egress_isolated=False)
    key = h.allow(DIR_INGRESS, ID_B, P.UDP, 53)
    h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(9, 53)))  # ALLOW_POLICY
    h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(9, 53)))  # ALLOW_CT
    h.from_pod(P.ipv4(POD_A, POD_B, P.UDP, P.udp(53, 9)))  # ALLOW_REPLY
    h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(10, 53, b"x" * 32), ident=1, more_fragments=True))
    h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, bytes(8), ident=1, frag_offset=40))  # ALLOW_FRAG
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    h.to_pod(P.ipv4(POD_B, POD_A, P.UDP, P.udp(9, 53)))  # DROP_REVOKED
    h.endpoint(pending=True)
    h.to_pod(P.ipv4(POD_C, POD_A, P.UDP, P.udp(9, 53)))  # DROP_PENDING
    h.to_pod(P.arp(), ifindex=EP)
    c = h.counters()
    for reason, direction in [
        (Reason.ALLOW_CT, DIR_INGRESS),
        (Reason.ALLOW_REPLY, DIR_EGRESS),
        (Reason.ALLOW_FRAG, DIR_INGRESS),
        (Reason.DROP_REVOKED, DIR_INGRESS),
        (Reason.DROP_PENDING, DIR_INGRESS),
    ]:
        assert c[(EP, int(reason), direction)][0] == 1, reason.name
    assert c[(EP, int(Reason.ALLOW_POLICY), DIR_INGRESS)][0] == 2  # the flow and the first fragment


def test_a_missing_endpoint_is_counted_under_the_interface_index(h: Harness) -> None:
    h.to_pod(P.arp())
    assert h.counters() == {(EP, int(Reason.DROP_NO_ENDPOINT), DIR_INGRESS): (1, len(P.arp()))}


def _collect(h: Harness) -> list[Event]:
    events: list[Event] = []
    h.dp.open_events(events.append)
    h.dp.poll_events(0)  # drain anything left by earlier tests
    events.clear()
    return events


def test_new_flows_and_drops_produce_events_but_established_packets_do_not(h: Harness) -> None:
    events = _collect(h)
    h.endpoint(ingress_isolated=True)
    h.allow(DIR_INGRESS, ID_B, P.TCP, 80, rule_ref=777)
    for _ in range(5):
        h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80)))
    h.from_pod(P.ipv4(POD_A, POD_B, P.TCP, P.tcp(80, 40000, P.ACK)))
    h.to_pod(P.ipv4(POD_C, POD_A, P.TCP, P.tcp(40001, 22)))
    h.dp.poll_events(100)
    assert [e.reason for e in events] == [Reason.ALLOW_POLICY, Reason.DROP_POLICY]
    new, drop = events
    assert (new.saddr, new.daddr, new.sport, new.dport, new.proto) == (POD_B, POD_A, 40000, 80, P.TCP)
    assert (new.ep_id, new.dir, new.peer_identity, new.rule_ref, new.family) == (
        EP,
        DIR_INGRESS,
        ID_B,
        777,
        4,
    )
    assert (drop.saddr, drop.dport, drop.rule_ref) == (POD_C, 22, 0)


def test_events_are_rate_limited_per_cpu(h: Harness) -> None:
    events = _collect(h)
    # A fresh bucket: tokens refill to the burst size from the last event time.
    for k in list(h.dp.maps["vg_evrate"].key_list()):
        h.dp.maps["vg_evrate"].update(k, bytes(abi.EvrateState()))
    h.endpoint(ingress_isolated=True)
    from controller.bench.testrun import run

    frame = P.ipv4(POD_C, POD_A, P.TCP, P.tcp(40001, 22))
    run(h.dp.prog_fd("to_pod"), frame, ifindex=EP, repeat=5000)
    h.dp.poll_events(100)
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 5000
    assert 900 <= len(events) <= 1000 * bpfsys.possible_cpus() + 50


def _evlost(h: Harness) -> tuple[int, int]:
    per_cpu = h.dp.maps["vg_evlost"].lookup_percpu(codecs.u32_key(0)) or []
    values = [abi.EvlostState.from_bytes(raw) for raw in per_cpu]
    return sum(v.rate_limited for v in values), sum(v.ring_full for v in values)


def test_every_event_the_rate_limit_suppresses_is_counted_in_vg_evlost(h: Harness) -> None:
    events = _collect(h)
    for k in list(h.dp.maps["vg_evrate"].key_list()):
        h.dp.maps["vg_evrate"].update(k, bytes(abi.EvrateState()))
    limited_before, full_before = _evlost(h)
    h.endpoint(ingress_isolated=True)
    from controller.bench.testrun import run

    frame = P.ipv4(POD_C, POD_A, P.TCP, P.tcp(40001, 22))
    run(h.dp.prog_fd("to_pod"), frame, ifindex=EP, repeat=5000)
    h.dp.poll_events(100)
    limited, full = _evlost(h)
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 5000
    assert len(events) + (limited - limited_before) + (full - full_before) == 5000
    assert limited - limited_before >= 5000 - 1000 * bpfsys.possible_cpus() - 50
