"""The established fast path (bpf/vethguard.c step 0, lib/conntrack.h vg_ct_fast): a tracked flow's
packets are decided by their conntrack entry without the endpoint lookup, and what the full path
checks first still holds: the pod's source address, its endpoint, the policy revision."""

from __future__ import annotations

import pytest

from controller.bench.testrun import run
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.datapath.abi import CT_SEEN_SRC_OWN, CtValue, Reason
from tests.support import packets as P
from tests.support.kernel import EP, POD_A, POD_B, POD_C, TC_ACT_OK, TC_ACT_SHOT, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]


def segment(src: str, dst: str, sport: int, dport: int, flags: int = P.ACK) -> bytes:
    return P.ipv4(src, dst, P.TCP, P.tcp(sport, dport, flags))


def est_counts(h: Harness, slot: int, reason: Reason, direction: int) -> int:
    per_cpu = h.dp.maps["vg_est_counters"].lookup_percpu(codecs.est_key(slot, reason, direction)) or []
    return sum(int.from_bytes(raw[:8], "little") for raw in per_cpu)


def test_a_flows_later_packets_are_counted_by_the_endpoints_slot_and_readers_see_them(h: Harness) -> None:
    h.endpoint(ingress_isolated=True, slot=7)
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80, P.SYN)) == TC_ACT_OK  # full path: a new flow
    for _ in range(4):
        assert h.from_pod(segment(POD_A, POD_B, 40000, 80)) == TC_ACT_OK
    for _ in range(2):
        assert h.to_pod(segment(POD_B, POD_A, 80, 40000)) == TC_ACT_OK
    (entry,) = h.dp.dump().ct
    assert entry.slot == 7 and entry.seen & CT_SEEN_SRC_OWN
    assert est_counts(h, 7, Reason.ALLOW_CT, DIR_EGRESS) == 4
    assert est_counts(h, 7, Reason.ALLOW_REPLY, DIR_INGRESS) == 2
    assert h.count(Reason.ALLOW_CT, DIR_EGRESS) == 4
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 2
    assert entry.packets == 1 + 4 + 2


def test_a_reply_from_an_address_that_is_not_the_pods_own_is_dropped_although_its_flow_is_tracked(
    h: Harness,
) -> None:
    """An entry made entering the pod holds whatever destination the node routed to it; its reply
    comes from that address, which only the full path's source check vouches for."""
    h.endpoint()  # not isolated: both flows below are tracked
    assert h.to_pod(segment(POD_B, POD_C, 40000, 80, P.SYN)) == TC_ACT_OK  # to an address not the pod's
    assert h.to_pod(segment(POD_B, POD_A, 40001, 80, P.SYN)) == TC_ACT_OK  # control: to the pod's own
    for _ in range(2):  # the second time too: the fast path never takes it
        assert h.from_pod(segment(POD_C, POD_B, 80, 40000)) == TC_ACT_SHOT
        assert h.from_pod(segment(POD_A, POD_B, 80, 40001)) == TC_ACT_OK
    assert h.count(Reason.DROP_SPOOFED, DIR_EGRESS) == 2
    assert h.count(Reason.ALLOW_REPLY, DIR_EGRESS) == 2  # the control's: full path, then fast
    assert est_counts(h, 1, Reason.ALLOW_REPLY, DIR_EGRESS) == 1
    spoofed = [e for e in h.dp.dump().ct if e.daddr == POD_C]
    assert spoofed and not spoofed[0].seen & CT_SEEN_SRC_OWN


@pytest.mark.parametrize("reply_first", [False, True], ids=["pod-first", "reply-first"])
def test_a_flow_from_the_pods_old_address_is_dropped_once_the_endpoint_changed_address(
    h: Harness, reply_first: bool
) -> None:
    h.endpoint()
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80, P.SYN)) == TC_ACT_OK
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80)) == TC_ACT_OK  # fast
    h.endpoint(ipv4=POD_C)  # the agent rewrites the endpoint and bumps the revision
    h.bump()
    if reply_first:  # the peer's packet brings the entry to the new revision first
        assert h.to_pod(segment(POD_B, POD_A, 80, 40000)) == TC_ACT_OK
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_SPOOFED, DIR_EGRESS) == 1
    assert h.from_pod(segment(POD_C, POD_B, 40000, 80, P.SYN)) == TC_ACT_OK  # control: the new address


def test_a_removed_endpoints_tracked_flows_are_dropped_even_with_their_entries_left(h: Harness) -> None:
    h.endpoint(ingress_isolated=True)
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80, P.SYN)) == TC_ACT_OK
    assert h.to_pod(segment(POD_B, POD_A, 80, 40000)) == TC_ACT_OK
    h.dp.maps["vg_endpoints"].delete(codecs.u32_key(EP))
    h.bump()  # what every sync that removes an endpoint does (it deletes the entries too)
    assert len(h.dp.dump().ct) == 1
    assert h.to_pod(segment(POD_B, POD_A, 80, 40000)) == TC_ACT_SHOT
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80)) == TC_ACT_SHOT
    assert h.count(Reason.DROP_NO_ENDPOINT, DIR_INGRESS) == 1


def test_an_entry_without_a_slot_takes_the_full_path_and_gets_its_endpoints_slot(h: Harness) -> None:
    """Entries of a program before the fast path have slot 0 (the upper half of their marker)."""
    h.endpoint(ingress_isolated=True, slot=3)
    assert h.from_pod(segment(POD_A, POD_B, 40000, 80, P.SYN)) == TC_ACT_OK
    ((kb, vb),) = h.dp.maps["vg_ct"].items().items()

    old = CtValue.from_buffer_copy(vb)
    old.slot = 0
    h.dp.maps["vg_ct"].update(kb, bytes(old))
    assert h.to_pod(segment(POD_B, POD_A, 80, 40000)) == TC_ACT_OK  # full path
    assert h.to_pod(segment(POD_B, POD_A, 80, 40000)) == TC_ACT_OK  # fast
    assert h.dp.dump().ct[0].slot == 3
    assert est_counts(h, 3, Reason.ALLOW_REPLY, DIR_INGRESS) == 1
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 2


def test_a_service_flows_later_packets_are_marked_for_the_judge_by_the_fast_path(h: Harness) -> None:
    vip, slot = "10.245.0.20", 5
    h.endpoint(egress_isolated=True, slot=slot)
    h.dp.maps["vg_slots"].update(codecs.u32_key(slot), codecs.u32_key(EP))
    h.dp.maps["vg_svc"].update(*codecs.encode_svc(4, vip, P.TCP, 80))
    mark = abi.VG_MARK_DEFERRED | (slot << abi.VG_MARK_SLOT_SHIFT)
    first = run(h.dp.prog_fd("from_pod"), segment(POD_A, vip, 40000, 80, P.SYN), ifindex=EP)
    assert (first.retval, first.mark) == (TC_ACT_OK, mark)  # full path: a new deferred flow
    for _ in range(3):
        later = run(h.dp.prog_fd("from_pod"), segment(POD_A, vip, 40000, 80), ifindex=EP, mark=0x4000)
        assert (later.retval, later.mark) == (TC_ACT_OK, mark | 0x4000)  # kube-proxy's bits kept
    assert est_counts(h, slot, Reason.ALLOW_DEFERRED, DIR_EGRESS) == 3
    assert h.count(Reason.ALLOW_DEFERRED, DIR_EGRESS) == 4
    # Another source on the same interface finds no entry of its own: judged (and dropped) anew.
    spoofed = run(h.dp.prog_fd("from_pod"), segment(POD_C, vip, 40000, 80), ifindex=EP)
    assert spoofed.retval == TC_ACT_SHOT and not spoofed.mark & abi.VG_MARK_DEFERRED
