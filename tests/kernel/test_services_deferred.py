"""Egress to a Service is judged after DNAT (bpf/lib/service.h), packet by packet:
from_pod defers a flow to a frontend with a mark, the judge (to_uplink / to_pod) gives the
client's egress verdict against the post-DNAT destination."""

from __future__ import annotations

import pytest

from controller.bench.testrun import RunResult, run
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.datapath.abi import CT_DEFERRED, Reason
from tests.support import packets as P
from tests.support.kernel import EP, ID_C, POD_A, POD_C, TC_ACT_OK, TC_ACT_SHOT, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]

VIP = "10.245.0.20"
SLOT = 5
MARK = abi.VG_MARK_DEFERRED | (SLOT << abi.VG_MARK_SLOT_SHIFT)


def client(h: Harness, *, egress_isolated: bool = True, ingress_isolated: bool = True) -> None:
    """The pod at EP is the client, with slot SLOT; VIP:80/TCP is a frontend."""
    flags = abi.EP_F_EGRESS_ISOLATED * egress_isolated | abi.EP_F_INGRESS_ISOLATED * ingress_isolated
    k, v = codecs.encode_endpoint(EP, 256, flags, POD_A, None, slot=SLOT)
    h.dp.maps["vg_endpoints"].update(k, v)
    h.dp.maps["vg_slots"].update(codecs.u32_key(SLOT), codecs.u32_key(EP))
    kb, vb = codecs.encode_svc(4, VIP, P.TCP, 80)
    h.dp.maps["vg_svc"].update(kb, vb)


def to_vip(sport: int, flags: int = P.SYN) -> bytes:
    return P.ipv4(POD_A, VIP, P.TCP, P.tcp(sport, 80, flags))


def to_backend(sport: int, flags: int = P.SYN) -> bytes:
    """The same packet after DNAT to the backend POD_C:8080."""
    return P.ipv4(POD_A, POD_C, P.TCP, P.tcp(sport, 8080, flags))


def uplink(h: Harness, frame: bytes, mark: int = MARK) -> RunResult:
    return run(h.dp.prog_fd("to_uplink"), frame, mark=mark)


def test_a_flow_to_a_frontend_leaves_the_pod_marked_even_when_no_rule_allows_the_clusterip(
    h: Harness,
) -> None:
    client(h)
    r = run(h.dp.prog_fd("from_pod"), to_vip(40000), ifindex=EP)
    assert r.retval == TC_ACT_OK
    assert r.mark == MARK
    assert h.count(Reason.ALLOW_DEFERRED, DIR_EGRESS) == 1
    [entry] = h.dp.dump().ct
    assert (entry.state, entry.daddr, entry.dport, entry.nat) == (CT_DEFERRED, VIP, 80, 0)
    # The next packet of the flow is deferred again (the verdict lives at the judge).
    r = run(h.dp.prog_fd("from_pod"), to_vip(40000, P.ACK), ifindex=EP)
    assert (r.retval, r.mark) == (TC_ACT_OK, MARK)


def test_a_flow_to_an_address_that_is_not_a_frontend_is_judged_at_once(h: Harness) -> None:
    client(h)
    r = run(h.dp.prog_fd("from_pod"), P.ipv4(POD_A, VIP, P.TCP, P.tcp(40000, 81)), ifindex=EP)
    assert r.retval == TC_ACT_SHOT
    assert r.mark == 0
    assert h.count(Reason.DROP_POLICY, DIR_EGRESS) == 1


def test_the_judge_allows_a_backend_the_clients_egress_policy_allows_and_clears_the_mark(h: Harness) -> None:
    client(h)
    h.allow(DIR_EGRESS, ID_C, P.TCP, 8080)
    r = uplink(h, to_backend(40000))
    assert (r.retval, r.mark) == (TC_ACT_OK, 0)
    assert h.count(Reason.ALLOW_POLICY, DIR_EGRESS) == 1
    judged = [e for e in h.dp.dump().ct if e.nat == 1]
    assert [(e.daddr, e.dport, e.ep_id, e.dir) for e in judged] == [(POD_C, 8080, EP, DIR_EGRESS)]
    assert uplink(h, to_backend(40000, P.ACK)).retval == TC_ACT_OK
    assert h.count(Reason.ALLOW_CT, DIR_EGRESS) == 1


def test_the_judge_drops_a_backend_the_clients_egress_policy_does_not_allow(h: Harness) -> None:
    client(h)
    h.allow(DIR_EGRESS, ID_C, P.TCP, 9090)  # another port of the same backend
    assert uplink(h, to_backend(40000)).retval == TC_ACT_SHOT
    assert h.count(Reason.DROP_POLICY, DIR_EGRESS) == 1


def test_the_judge_passes_a_client_whose_egress_is_not_isolated(h: Harness) -> None:
    client(h, egress_isolated=False)
    assert uplink(h, to_backend(40000)).retval == TC_ACT_OK
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_EGRESS) == 1


def test_a_policy_change_revokes_a_judged_flow_at_its_next_packet(h: Harness) -> None:
    client(h)
    key = h.allow(DIR_EGRESS, ID_C, P.TCP, 8080)
    assert uplink(h, to_backend(40000)).retval == TC_ACT_OK
    h.dp.maps["vg_policy"].delete(key)
    h.bump()
    assert uplink(h, to_backend(40000, P.ACK)).retval == TC_ACT_SHOT
    assert h.count(Reason.DROP_REVOKED, DIR_EGRESS) == 1


def test_a_deferred_packet_whose_slot_names_no_endpoint_is_dropped(h: Harness) -> None:
    client(h, egress_isolated=False)
    other = abi.VG_MARK_DEFERRED | (SLOT + 1) << abi.VG_MARK_SLOT_SHIFT
    assert uplink(h, to_backend(40000), mark=other).retval == TC_ACT_SHOT


def test_the_uplink_passes_unmarked_packets_of_any_shape_untouched(h: Harness) -> None:
    client(h)
    assert uplink(h, to_backend(40000), mark=0x4000).retval == TC_ACT_OK
    assert uplink(h, b"\xff" * 20, mark=0).retval == TC_ACT_OK
    assert h.counters() == {}


def test_replies_from_the_frontend_reach_an_ingress_isolated_client(h: Harness) -> None:
    client(h)
    assert run(h.dp.prog_fd("from_pod"), to_vip(40000), ifindex=EP).retval == TC_ACT_OK
    reply = P.ipv4(VIP, POD_A, P.TCP, P.tcp(80, 40000, P.SYN | P.ACK))
    assert h.to_pod(reply) == TC_ACT_OK
    assert h.count(Reason.ALLOW_REPLY, DIR_INGRESS) == 1
    # Not a reply: a new connection from the frontend address is judged by ingress policy.
    assert h.to_pod(P.ipv4(VIP, POD_A, P.TCP, P.tcp(80, 40001, P.SYN))) == TC_ACT_SHOT


def test_to_pod_judges_a_deferred_packet_for_its_client_before_the_backends_ingress(h: Harness) -> None:
    # The backend is the endpoint at EP too (hairpin): its ingress is open, the client's egress
    # allows only port 8080 of POD_C. A packet DNATed to POD_A:8080 is not allowed.
    client(h, ingress_isolated=False)
    h.allow(DIR_EGRESS, ID_C, P.TCP, 8080)
    hairpin = P.ipv4(POD_C, POD_A, P.TCP, P.tcp(40000, 8080))
    r = run(h.dp.prog_fd("to_pod"), hairpin, ifindex=EP, mark=MARK)
    assert r.retval == TC_ACT_SHOT  # POD_A (identity 256) is not an allowed egress peer
    assert h.count(Reason.DROP_POLICY, DIR_EGRESS) == 1
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_INGRESS) == 0
    # Without the mark the same packet is only the backend's ingress, which is open.
    assert run(h.dp.prog_fd("to_pod"), hairpin, ifindex=EP).retval == TC_ACT_OK


def test_the_cost_tool_measures_every_service_path_and_the_judge_really_ran(h: Harness) -> None:
    from controller.bench import cost

    report = cost.with_stats_enabled(lambda: cost.measure(h.dp, rounds=1, packets=200))
    figures = [
        report.uplink_unmarked_ns,
        report.deferred_established_ns,
        report.judge_established_ns,
        report.deferred_new_ns,
        report.judge_new_ns,
    ]
    assert all(f is not None and f > 0 for f in figures), report
    # The judge really judged: its 200 new flows were allowed by policy (from_pod adds one SYN),
    # and the deferred ones passed from_pod as ALLOW_DEFERRED.
    assert h.count(Reason.ALLOW_POLICY, DIR_EGRESS) >= 200
    assert h.count(Reason.ALLOW_DEFERRED, DIR_EGRESS) >= 200
