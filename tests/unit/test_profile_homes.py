"""Tier profile homes (controller/datapath/profile_homes.py): a profile whose id changed is
written into a spare that holds what it was derived from, as the keys that changed; a spare is
never one an endpoint may still use; every home holds exactly its profile's encoding."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler.desired_state import NodeDesired, PolicyEntryKey, PolicyEntryValue, ProfileChange
from controller.core.verdicts import DIR_INGRESS, TIER_ACCEPT, TIER_DENY, TIER_PROFILE_BIT
from controller.datapath.encoding import Encoder
from controller.datapath.profile_homes import ProfileHomes, Rehomed, encode_full
from controller.datapath.sync import _diff_policy
from tests.support.kernel import desired_node

ACCEPT = PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_ACCEPT, admin_rank=1, admin_ref=7)
DENY = PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_DENY, admin_rank=2, admin_ref=8)
L1, L2, L3 = (TIER_PROFILE_BIT | n for n in (0x111, 0x222, 0x333))
Entries = Mapping[PolicyEntryKey, PolicyEntryValue]


def _key(ident: int, port: int = 80) -> PolicyEntryKey:
    return PolicyEntryKey(DIR_INGRESS, ident, 6, port, 16)


def _profile(n: int) -> dict[PolicyEntryKey, PolicyEntryValue]:
    return {_key(1000 + i): ACCEPT for i in range(n)}


def _derive(
    base: Entries, upsert: Mapping[PolicyEntryKey, PolicyEntryValue], remove: tuple[PolicyEntryKey, ...] = ()
) -> tuple[dict[PolicyEntryKey, PolicyEntryValue], ProfileChange]:
    """`base` with `remove` taken out and `upsert` set, and that as the compiler's change."""
    out = dict(base)
    for k in remove:
        out.pop(k, None)
    out.update(upsert)
    return out, ProfileChange(base, tuple(remove), tuple(upsert))


def test_a_profile_under_a_new_id_is_written_into_the_spare_of_its_base_as_the_keys_that_changed() -> None:
    homes = ProfileHomes()
    a = _profile(500)
    first = homes.place({L1: a}, {})
    h1 = first.homes[L1]
    assert h1 == L1 and first.policy[h1] == encode_full(h1, a)  # a new profile: under its own id
    assert [h.home for h in homes.twins()] != [h1]  # idle: a copy of it under another id
    (twin,) = homes.spares.values()
    assert twin.entries is a and twin.encoded == encode_full(twin.home, a)

    b, change = _derive(a, {_key(1000): DENY})
    second = homes.place({L2: b}, {L2: change})
    assert second.homes[L2] == twin.home  # the spare holding its base
    written, keys = second.touched[twin.home]
    assert written is twin.encoded and len(keys) == 1  # one key to write
    assert second.policy[twin.home] == encode_full(twin.home, b)
    assert second.policy[h1] == first.policy[h1]  # retired, kept as a spare (its endpoints moved)
    assert _diff_policy(
        second.policy, {**first.policy, twin.home: twin.encoded}, second.touched
    ) == _diff_policy(second.policy, {**first.policy, twin.home: twin.encoded})


def test_a_change_undone_goes_back_to_the_retired_home_two_derivations_away() -> None:
    homes = ProfileHomes()
    a = _profile(300)
    h1 = homes.place({L1: a}, {}).homes[L1]
    b, add = _derive(a, {_key(5000, 443): DENY})
    second = homes.place({L2: b}, {L2: add})
    h2 = second.homes[L2]
    assert h2 != h1  # h1 was retired by this very placement: endpoints may still use it
    again, undo = _derive(b, {}, (_key(5000, 443),))
    third = homes.place({L3: again}, {L3: undo})
    assert third.homes[L3] == h1  # its content is `a`: a -> b -> a, keys of both changes
    assert third.policy[h1] == encode_full(h1, again) == second.policy[h1]
    assert set(third.policy) == {h1, h2}  # h2 is a spare now


def test_spares_are_no_more_than_live_profiles_and_stay_within_their_room() -> None:
    homes = ProfileHomes()
    profiles = {TIER_PROFILE_BIT | (0x100 + i): _profile(50 + i) for i in range(3)}
    homes.place(profiles, {})
    assert len(homes.twins(limit=5)) == 3 and not homes.twins()
    homes.forget_spares()
    assert len(homes.twins(limit=5, room=60)) == 1  # one profile of 50 fits, the next would not
    assert sum(len(h.encoded) for h in homes.spares.values()) <= 60
    # a placement without two of them retires them, but keeps spares within the bounds
    kept = {k: v for k, v in list(profiles.items())[:1]}
    placed = homes.place(kept, {})
    assert len(homes.spares) <= 1 and set(placed.policy) == {placed.homes[k] for k in kept} | set(
        homes.spares
    )


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(2, 12))
def test_every_placement_writes_each_home_exactly_its_profile_and_its_touched_diff_is_the_full_diff(
    seed: int, steps: int
) -> None:
    rng = random.Random(seed)
    homes = ProfileHomes()
    live: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] = {L1: _profile(rng.randint(0, 40))}
    last = homes.place(live, {})
    for _ in range(steps):
        changes: dict[int, ProfileChange] = {}
        nxt: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] = {}
        for lid, entries in live.items():
            move = rng.random()
            if move < 0.2:
                continue  # retired
            upsert = {
                _key(rng.randint(990, 1050), rng.choice((80, 443))): rng.choice((ACCEPT, DENY))
                for _ in range(rng.randint(0, 4))
            }
            remove = tuple(rng.sample(sorted(entries, key=repr), min(len(entries), rng.randint(0, 3))))
            new, change = _derive(entries, upsert, remove)
            new_id = lid if move < 0.5 else TIER_PROFILE_BIT | rng.randint(1, 0x400)
            if new_id in nxt:
                continue
            nxt[new_id] = new
            if rng.random() < 0.8:  # else the compiler folded it whole (no change)
                changes[new_id] = change
        if not nxt or rng.random() < 0.1:
            nxt[TIER_PROFILE_BIT | rng.randint(0x401, 0x800)] = _profile(rng.randint(0, 30))
        if rng.random() < 0.3:
            homes.twins(rng.randint(1, 2))
            before = homes.place(live, {})  # the twins written (nothing else changes)
            assert before.homes == last.homes
            last = before
        placed = homes.place(nxt, changes)
        assert len(set(placed.homes.values())) == len(placed.homes)  # one home per profile
        for lid, home in placed.homes.items():
            assert placed.policy[home] == encode_full(home, nxt[lid])
            # a home in use by the previous placement's endpoints is patched only for that profile
            if home in last.homes.values():
                assert next(k for k, h in last.homes.items() if h == home) == lid
        for spare in homes.spares.values():
            assert placed.policy[spare.home] == encode_full(spare.home, spare.entries)
            assert spare.home not in placed.homes.values()
        assert len(homes.spares) <= len(placed.homes)
        assert _diff_policy(placed.policy, last.policy, placed.touched) == _diff_policy(
            placed.policy, last.policy
        )
        live, last = nxt, placed


def test_an_idle_copy_of_a_live_profile_replaces_a_retired_home_when_spares_are_at_their_bound() -> None:
    homes = ProfileHomes()
    a = _profile(40)
    h1 = homes.place({L1: a}, {}).homes[L1]
    b = _profile(41)
    homes.place({L2: b}, {})  # L1 retired: a spare, as many as live profiles
    assert list(homes.spares) == [h1]
    (twin,) = homes.twins()
    assert twin.entries is b and list(homes.spares) == [twin.home]  # the retired one made way


def test_a_new_profile_never_gets_the_home_of_one_its_placement_retires() -> None:
    homes = ProfileHomes()
    a = _profile(20)
    homes.place({L1: a}, {})
    (twin,) = homes.twins()
    b, change = _derive(a, {_key(1000): DENY})
    assert homes.place({L2: b}, {L2: change}).homes[L2] == twin.home
    # a profile whose own id is that home's, while L2's endpoints still point at it
    placed = homes.place({twin.home: _profile(5)}, {})
    assert placed.homes[twin.home] != twin.home


def _node_with(profile: Entries, own: int) -> NodeDesired:
    """x/a (ifindex 1) with `own` NetworkPolicy entries of its own, tiered by profile L1."""
    base = desired_node({_key(7000 + i): ACCEPT for i in range(own)})
    eps = {
        p: dataclasses.replace(ep, ingress_tiered=True, tier_profile=L1) for p, ep in base.endpoints.items()
    }
    return dataclasses.replace(base, endpoints=eps, tier_profiles={L1: profile})


def test_the_encoder_keeps_spares_only_in_the_room_left_beside_everything_else_and_one_largest_profile() -> (
    None
):
    enc = Encoder()
    enc.policy_capacity = 300  # a profile of 100, its copy, and 100 of headroom for a re-key
    a = _profile(100)
    first = enc.encode(_node_with(a, 0), {"x/a": 1})
    (twin,) = enc.homes.twins()
    assert enc.encode(_node_with(a, 0), {"x/a": 1}).policy.keys() == {1, *first.policy.keys(), twin.home}
    grown = enc.encode(_node_with(a, 50), {"x/a": 1})  # the endpoint's own entries take 50 of it
    assert twin.home not in grown.policy and not enc.homes.spares
    assert sum(len(p) for p in grown.policy.values()) + 100 <= 300


def test_a_rekeyed_spare_answers_get_and_in_exactly_as_its_materialized_entries() -> None:
    src = encode_full(L1, _profile(5))
    view = Rehomed(src, L1, L2)
    flat = view.materialized()
    probes = [*flat, *src, *encode_full(L3, _profile(5)), *encode_full(L2, _profile(7)), b"short"]
    for kb in probes:
        assert view.get(kb) == flat.get(kb), kb
        assert view.get(kb, b"none") == flat.get(kb, b"none"), kb
        assert (kb in view) == (kb in flat), kb
    assert dict(view) == flat and len(view) == len(flat) == 5
