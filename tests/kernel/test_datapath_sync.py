"""Datapath.sync against the real maps: contents, idempotence, revision, CT cleanup."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from controller.compiler.desired_state import (
    PolicyEntryKey,
    PolicyEntryValue,
    SvcFrontend,
)
from controller.datapath import abi, codecs, dns_codecs
from controller.datapath.node import Datapath
from tests.support import packets as P
from tests.support.kernel import EP, ID_B, POD_A, POD_B, TC_ACT_OK, TC_ACT_SHOT, Harness, desired_node

pytestmark = [pytest.mark.root, pytest.mark.bcc]

ALLOW = PolicyEntryValue(verdict=1, rule_ref=99)


def _empty(dp: Datapath) -> None:
    for name in (
        "vg_endpoints",
        "vg_slots",
        "vg_svc",
        "vg_local",
        "vg_policy",
        "vg_ipcache4",
        "vg_ipcache6",
        "vg_ct",
        "vg_counters",
    ):
        dp.maps[name].clear()


def test_sync_writes_the_desired_state_and_a_second_sync_changes_nothing(h: Harness) -> None:
    _empty(h.dp)
    want = desired_node({PolicyEntryKey(0, ID_B, P.TCP, 80, 16): ALLOW})
    first = h.dp.sync(want, {"x/a": EP})
    # 3 ipcache, policy, slot, endpoint, and the pod's address in vg_local
    assert (first.adds, first.updates, first.deletes) == (7, 0, 0)
    state = h.dp.dump()
    assert state.endpoints[EP].slot == 1
    assert h.dp.maps["vg_slots"].items() == {codecs.u32_key(1): codecs.u32_key(EP)}
    assert state.revision == first.revision
    assert state.endpoints[EP].flags == abi.EP_F_INGRESS_ISOLATED
    assert state.policy == {(EP, PolicyEntryKey(0, ID_B, P.TCP, 80, 16)): ALLOW}
    assert state.ipcache[ipaddress.ip_network(f"{POD_B}/32")] == (ID_B, 0, 0)
    again = h.dp.sync(want, {"x/a": EP})
    assert not again.changed and again.revision == first.revision


def test_a_synced_policy_is_enforced_and_a_synced_removal_revokes_the_flow(h: Harness) -> None:
    _empty(h.dp)
    h.dp.sync(desired_node({PolicyEntryKey(0, ID_B, P.TCP, 80, 16): ALLOW}), {"x/a": EP})
    syn = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80))
    assert h.to_pod(syn) == TC_ACT_OK
    result = h.dp.sync(desired_node({PolicyEntryKey(0, ID_B, P.TCP, 443, 16): ALLOW}), {"x/a": EP})
    assert (result.adds, result.updates, result.deletes) == (1, 0, 1)
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_SHOT
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40001, 443))) == TC_ACT_OK


def test_removing_an_endpoint_deletes_its_conntrack_entries(h: Harness) -> None:
    _empty(h.dp)
    h.dp.sync(desired_node({PolicyEntryKey(0, ID_B, P.TCP, 80, 16): ALLOW}), {"x/a": EP})
    assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80))) == TC_ACT_OK
    for _ in range(3):  # the fast path: counted in vg_est_counters by the endpoint's slot
        assert h.to_pod(P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))) == TC_ACT_OK
    assert h.dp.counters()[(EP, abi.Reason.ALLOW_CT, 0)][0] == 3
    assert len(h.dp.dump().ct) == 1
    result = h.dp.sync(desired_node({}, pods=()), {})
    assert result.ct_deleted == 1
    state = h.dp.dump()
    assert state.ct == [] and state.endpoints == {} and state.policy == {}
    assert h.dp.counters() == {}


def test_removing_an_endpoint_deletes_what_it_learned_from_dns(h: Harness) -> None:
    _empty(h.dp)
    h.dp.sync(desired_node({}, pods=("x/a", "x/b")), {"x/a": EP, "x/b": 2})
    learned = h.dp.maps["vg_dns_learned"]
    for ep in (EP, 2):  # (another pod's veth reusing ifindex 1 must not inherit EP's)
        learned.update(*dns_codecs.encode_learned(ep, "203.0.113.5", 0x2000001, 1 << 62))
    h.dp.sync(desired_node({}, pods=("x/b",)), {"x/b": 2})
    assert [dns_codecs.decode_learned(k, v).ep_id for k, v in learned.items().items()] == [2]


def test_sync_writes_the_frontends_and_keeps_every_endpoints_slot_when_others_come_and_go(h: Harness) -> None:
    _empty(h.dp)
    base = desired_node({})
    fronts = frozenset({SvcFrontend(4, "10.245.0.10", P.UDP, 53), SvcFrontend(4, "10.244.1.1", P.TCP, 30080)})
    h.dp.sync(dataclasses.replace(base, frontends=fronts), {"x/a": 7})
    assert set(h.dp.dump().frontends) == {(4, "10.245.0.10", P.UDP, 53), (4, "10.244.1.1", P.TCP, 30080)}
    assert h.dp.dump().endpoints[7].slot == 1
    # A pod with a lower ifindex arrives: x/a keeps slot 1, the newcomer takes the next free one.
    h.dp.sync(dataclasses.replace(base, frontends=fronts), {"x/a": 7, "x/b": 3})
    state = h.dp.dump()
    assert (state.endpoints[7].slot, state.endpoints[3].slot) == (1, 2)
    # x/a goes: its slot is freed and x/b keeps its own.
    h.dp.sync(base, {"x/b": 3})
    state = h.dp.dump()
    assert state.endpoints[3].slot == 2 and state.frontends == ()
    assert h.dp.maps["vg_slots"].items() == {codecs.u32_key(2): codecs.u32_key(3)}


def test_an_incremental_sync_writes_what_a_full_sync_writes_and_keeps_the_slots(h: Harness) -> None:
    _empty(h.dp)
    want = desired_node({PolicyEntryKey(0, ID_B, P.TCP, 80, 16): ALLOW})
    first = h.dp.sync(want, {"x/a": 7})  # the maps were emptied behind its back: read them
    assert (first.adds, first.updates, first.deletes) == (7, 0, 0)
    assert not h.dp.sync_incremental(want, {"x/a": 7}).changed
    # x/b arrives with a lower ifindex, x/a's entry changes, then x/a goes: the diffs against
    # what the last sync wrote give the slots and entries a sync reading the kernel gives.
    more = desired_node({PolicyEntryKey(0, ID_B, P.TCP, 443, 16): ALLOW}, pods=("x/a", "x/b"))
    step = h.dp.sync_incremental(more, {"x/a": 7, "x/b": 3})
    # 2 policy, slot, endpoint, x/b's address in vg_local; x/a's old policy entry
    assert (step.adds, step.updates, step.deletes) == (5, 0, 1)
    state = h.dp.dump()
    assert (state.endpoints[7].slot, state.endpoints[3].slot) == (1, 2)
    assert set(state.policy) == {(ep, PolicyEntryKey(0, ID_B, P.TCP, 443, 16)) for ep in (3, 7)}
    h.dp.sync_incremental(desired_node({}, pods=("x/b",)), {"x/b": 3})
    state = h.dp.dump()
    assert set(state.endpoints) == {3} and state.endpoints[3].slot == 2 and state.policy == {}
    assert h.dp.maps["vg_slots"].items() == {codecs.u32_key(2): codecs.u32_key(3)}
    assert not h.dp.sync(desired_node({}, pods=("x/b",)), {"x/b": 3}).changed  # the kernel agrees


def test_an_incremental_sync_misses_entries_deleted_behind_its_back_and_a_full_sync_restores_them(
    h: Harness,
) -> None:
    _empty(h.dp)
    want = desired_node({PolicyEntryKey(0, ID_B, P.TCP, 80, 16): ALLOW})
    h.dp.sync(want, {"x/a": EP})
    key = codecs.encode_policy(EP, PolicyEntryKey(0, ID_B, P.TCP, 80, 16), ALLOW)[0]
    h.dp.maps["vg_policy"].delete(key)
    h.dp.maps["vg_ipcache4"].clear()
    assert not h.dp.sync_incremental(want, {"x/a": EP}).changed  # diffs against what it wrote
    repaired = h.dp.sync(want, {"x/a": EP})  # reads the kernel maps
    assert (repaired.adds, repaired.updates, repaired.deletes) == (4, 0, 0)
    state = h.dp.dump()
    assert (EP, PolicyEntryKey(0, ID_B, P.TCP, 80, 16)) in state.policy and len(state.ipcache) == 3
    assert not h.dp.sync_incremental(want, {"x/a": EP}).changed
