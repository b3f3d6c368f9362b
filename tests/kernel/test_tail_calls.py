"""to_pod reaches a deferred packet's judge by tail call (vg_tail, bpf/vethguard.c): the judge
(to_pod_judge), then to_pod's own decision with the client as sender (to_pod_judged). The loader
fills vg_tail with its build's programs; a slot found empty drops the packet (fail closed) and a
full sync puts back a slot changed behind the agent's back. Every program keeps headroom in the
verifier's budget, which is what the split is for."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.bench.testrun import run
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, bpfsys, codecs, loader
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath
from tests.support import packets as P
from tests.support.kernel import (
    EP,
    ID_A,
    POD_A,
    POD_C,
    TC_ACT_OK,
    TC_ACT_SHOT,
    Harness,
    build_tail_ids,
    desired_node,
)

pytestmark = [pytest.mark.root, pytest.mark.bcc]

SLOT = 7
MARK = abi.VG_MARK_DEFERRED | (SLOT << abi.VG_MARK_SLOT_SHIFT)
VERIFIER_BUDGET = 1_000_000  # processed instructions per program load (BPF_COMPLEXITY_LIMIT_INSNS)
HEADROOM = 0.9  # a program past nine tenths leaves too little for the next change


def _hairpin_backend(d: Datapath, *, ingress_isolated: bool) -> None:
    """The pod at EP is both the client (slot SLOT, egress isolated) and the Service's backend,
    whose ingress is open unless `ingress_isolated`."""
    flags = abi.EP_F_EGRESS_ISOLATED | abi.EP_F_INGRESS_ISOLATED * ingress_isolated
    d.maps["vg_endpoints"].update(*codecs.encode_endpoint(EP, 256, flags, POD_A, None, slot=SLOT))
    d.maps["vg_slots"].update(codecs.u32_key(SLOT), codecs.u32_key(EP))


def _allow_client_to_itself(h: Harness) -> None:
    """The client's egress allows TCP 8080 to its own identity (the backend after DNAT)."""
    h.allow(DIR_EGRESS, ID_A, P.TCP, 8080)


def hairpin(sport: int, flags: int = P.SYN) -> bytes:
    """A packet of the client's flow to the Service after DNAT to itself, POD_A:8080."""
    return P.ipv4(POD_C, POD_A, P.TCP, P.tcp(sport, 8080, flags))


def _deferred_to_pod(d: Datapath, frame: bytes) -> int:
    """`frame` enters the pod at EP through d's to_pod with the client's deferred mark."""
    return run(d.prog_fd("to_pod"), frame, ifindex=EP, mark=MARK).retval


def test_the_load_puts_this_builds_judge_and_its_continuation_into_vg_tail(dp: Datapath) -> None:
    assert set(loader.TAIL_PROGRAMS) == set(range(abi.VG_TAIL_SLOTS))
    assert dp.tail_programs() == build_tail_ids(dp)
    assert dp.place_tail_programs() == (), "in place already: nothing written"


def test_a_deferred_packet_is_judged_for_its_client_then_enters_the_pod_through_both_tail_calls(
    h: Harness,
) -> None:
    _hairpin_backend(h.dp, ingress_isolated=False)
    _allow_client_to_itself(h)
    assert _deferred_to_pod(h.dp, hairpin(40000)) == TC_ACT_OK
    assert h.count(Reason.ALLOW_POLICY, DIR_EGRESS) == 1, "the judge ran (to_pod_judge)"
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_INGRESS) == 1, "then the backend's ingress (to_pod_judged)"
    assert h.count(Reason.DROP_TAIL_CALL, DIR_INGRESS) == 0


def test_the_backends_ingress_policy_still_decides_after_the_judge_passed_the_packet(h: Harness) -> None:
    _hairpin_backend(h.dp, ingress_isolated=True)  # and no ingress rule
    _allow_client_to_itself(h)
    assert _deferred_to_pod(h.dp, hairpin(40000)) == TC_ACT_SHOT
    assert h.count(Reason.ALLOW_POLICY, DIR_EGRESS) == 1
    assert h.count(Reason.DROP_POLICY, DIR_INGRESS) == 1


@pytest.mark.parametrize("slot", [abi.VG_TAIL_JUDGE, abi.VG_TAIL_TO_POD])
def test_a_deferred_packet_is_dropped_and_counted_when_its_tail_call_finds_the_slot_empty(
    h: Harness, slot: int
) -> None:
    _hairpin_backend(h.dp, ingress_isolated=False)
    _allow_client_to_itself(h)
    assert h.dp.maps["vg_tail"].delete(codecs.u32_key(slot))
    assert _deferred_to_pod(h.dp, hairpin(40000)) == TC_ACT_SHOT, "never let in unjudged"
    assert h.count(Reason.DROP_TAIL_CALL, DIR_INGRESS) == 1
    judged = h.count(Reason.ALLOW_POLICY, DIR_EGRESS)
    assert judged == (0 if slot == abi.VG_TAIL_JUDGE else 1), "the judge runs only from its own slot"
    assert h.count(Reason.ALLOW_NOT_ISOLATED, DIR_INGRESS) == 0
    # Control: a packet without the mark never tail-calls, and enters the open backend.
    assert h.to_pod(hairpin(40001)) == TC_ACT_OK
    assert h.dp.place_tail_programs() == (slot,)
    assert _deferred_to_pod(h.dp, hairpin(40002)) == TC_ACT_OK


def test_a_full_sync_puts_back_a_slot_changed_behind_the_agents_back_and_an_incremental_one_does_not(
    h: Harness,
) -> None:
    wrong = codecs.u32_key(h.dp.prog_fd("to_pod_judged"))
    h.dp.maps["vg_tail"].update(codecs.u32_key(abi.VG_TAIL_JUDGE), wrong)
    want = desired_node({})
    h.dp.sync_incremental(want, {"x/a": EP})
    assert h.dp.tail_programs()[abi.VG_TAIL_JUDGE] == h.dp.prog_id("to_pod_judged").id
    h.dp.sync(want, {"x/a": EP})
    assert h.dp.tail_programs() == build_tail_ids(h.dp)


def test_every_program_of_the_build_loads_within_nine_tenths_of_the_verifiers_budget(dp: Datapath) -> None:
    used = {name: bpfsys.prog_verified_insns(dp.prog_fd(name)) for name in loader.BUILD_PROGRAMS}
    if not any(used.values()):
        pytest.skip("this kernel does not report verified_insns (5.16+)")
    over = {name: n for name, n in used.items() if n > HEADROOM * VERIFIER_BUDGET}
    assert not over, f"processed instructions past {HEADROOM:.0%} of the budget: {over} (all: {used})"
    assert all(n > 0 for n in used.values()), used


def test_during_an_upgrade_the_previous_builds_to_pod_calls_the_new_builds_judge(
    node: str, opened: Callable[..., Datapath]
) -> None:
    old = opened(node)
    new = opened(node, ("-DVG_UPGRADE_MARKER=2",))  # its conntrack entries carry marker 2
    assert new.tail_programs() == build_tail_ids(new) != build_tail_ids(old)
    new.maps["vg_endpoints"].update(*codecs.encode_endpoint(EP, 256, 0, POD_A, None, slot=SLOT))
    new.maps["vg_slots"].update(codecs.u32_key(SLOT), codecs.u32_key(EP))
    assert _deferred_to_pod(old, hairpin(40000)) == TC_ACT_OK  # still attached: the old to_pod
    [judged] = [e for e in new.dump().ct if e.nat == 1]
    assert (judged.ep_id, judged.dir, judged.marker) == (EP, DIR_EGRESS, 2), "judged by the new build"
