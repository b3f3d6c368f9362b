"""Tier profile homes in the kernel (controller/datapath/profile_homes.py): a profile whose id
changed is written into an idle-time spare copy as the keys that changed, the endpoints switch to
it with one write each, packets are judged by the new profile, and a change undone goes back to
the home the endpoints left, writing nothing but the switch. After every incremental sync a sync
that reads the maps finds nothing to change."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from controller.compiler.desired_state import NodeDesired, PolicyEntryKey, PolicyEntryValue, ProfileChange
from controller.core.verdicts import DIR_INGRESS, TIER_ACCEPT, TIER_DENY, TIER_PROFILE_BIT
from controller.datapath import readback, sync
from controller.datapath.abi import Reason
from tests.support import packets as P
from tests.support.kernel import EP, ID_B, POD_A, POD_B, Harness, desired_node
from tests.support.tier_world import reason_of

pytestmark = [pytest.mark.root, pytest.mark.bcc]

ACCEPT = PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_ACCEPT, admin_rank=1, admin_ref=11)
DENY = PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_DENY, admin_rank=1, admin_ref=12)
WEB = PolicyEntryKey(DIR_INGRESS, ID_B, 6, 80, 16)
L1, L2, L3 = (TIER_PROFILE_BIT | n for n in (0x1001, 0x1002, 0x1003))
FILLER = {PolicyEntryKey(DIR_INGRESS, 5000 + i, 6, 443, 16): ACCEPT for i in range(300)}


def _node(
    pid: int, profile: dict[PolicyEntryKey, PolicyEntryValue], change: ProfileChange | None
) -> NodeDesired:
    base = desired_node({}, pods=("x/a", "x/b"))
    eps = {
        p: dataclasses.replace(ep, ingress_isolated=False, ingress_tiered=True, tier_profile=pid)
        for p, ep in base.endpoints.items()
    }
    return dataclasses.replace(
        base,
        endpoints=eps,
        tier_profiles={pid: profile},
        tier_profile_changes={pid: change} if change is not None else {},
    )


_SPORTS = itertools.count(41000)


def _web(h: Harness) -> Reason:
    """A new TCP flow from POD_B to x/a's port 80: the reason counted."""
    return reason_of(h, h.to_pod, P.ipv4(POD_B, POD_A, P.TCP, P.tcp(next(_SPORTS), 80)), DIR_INGRESS)


def _home_entries(h: Harness) -> dict[PolicyEntryKey, PolicyEntryValue]:
    """The entries of the home x/a's endpoint points at, as the kernel holds them."""
    state = readback.dump(h.dp.maps)
    home = state.endpoints[EP].tier_profile
    return {key: value for (ep, key), value in state.policy.items() if ep == home}


def _sync(h: Harness, desired: NodeDesired, pods: dict[str, int]) -> int:
    """An incremental sync; returns its vg_policy writes. A full sync then changes nothing."""
    result = h.dp.sync_incremental(desired, pods)
    assert not h.dp.sync(desired, pods).changed
    return sum(1 for op in result.ops if op.map == "vg_policy")


def test_a_rekeyed_profile_is_written_into_its_spare_as_what_changed_and_undone_by_switching_back(
    h: Harness,
) -> None:
    pods = {"x/a": EP, "x/b": 2}
    a = {WEB: ACCEPT, **FILLER}
    assert _sync(h, _node(L1, a, None), pods) == len(a)
    first_home = readback.dump(h.dp.maps).endpoints[EP].tier_profile
    assert _web(h) is Reason.ALLOW_ADMIN

    revision = sync.read_revision(h.dp.maps["vg_config"])
    assert h.dp.prepare_spares() == 1  # idle: a copy of the profile under another id
    assert sync.read_revision(h.dp.maps["vg_config"]) == revision  # no flow needs a re-check
    assert h.dp.prepare_spares() == 0  # one spare per live profile
    assert len(readback.dump(h.dp.maps).policy) == 2 * len(a)

    b = {**a, WEB: DENY}  # e.g. a Deny of a new ClusterNetworkPolicy: a new profile key
    assert _sync(h, _node(L2, b, ProfileChange(a, (), (WEB,))), pods) == 1  # one entry, not 301
    state = readback.dump(h.dp.maps)
    homes = {state.endpoints[EP].tier_profile, state.endpoints[2].tier_profile}
    assert len(homes) == 1 and first_home not in homes  # both endpoints switched to the spare
    assert _home_entries(h) == b
    assert _web(h) is Reason.DROP_ADMIN

    again = dict(a)  # the policy deleted again: the endpoints go back to the home they left
    assert _sync(h, _node(L3, again, ProfileChange(b, (), (WEB,))), pods) == 0
    assert readback.dump(h.dp.maps).endpoints[EP].tier_profile == first_home
    assert _home_entries(h) == again
    assert _web(h) is Reason.ALLOW_ADMIN
