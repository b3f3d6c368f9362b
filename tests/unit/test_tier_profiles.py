"""Tier profiles folded per identity signature and carried from one compilation to the next
(controller/compiler/stages/tier_profiles.py) are exactly what the reference fold of every
contribution gives (stages/tiers.py fold()), however the previous compilation's profile was
patched; the encoder's patched encoding of a changed profile is its full encoding; and over
random event sequences rich in ClusterNetworkPolicy events every (incremental) compilation
equals a full compilation of the same objects, unchanged profiles being the very same objects.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.bench import synth, synth_cnp
from controller.compiler import compute
from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue, ProfileChange
from controller.compiler.policy import compile_cluster
from controller.compiler.portrange import range_to_prefixes
from controller.compiler.stages.tier_profiles import ProfileState, RulePart, TierMemo
from controller.compiler.stages.tiers import _part_contributions, fold
from controller.core.verdicts import TIER_ACCEPT, TIER_DENY, TIER_PASS, TIER_PROFILE_BIT
from controller.datapath import codecs
from controller.datapath.profile_homes import ProfileHomes
from controller.datapath.sync import _diff_policy
from tests.support.cluster_world import NODES, World, summary

PID = TIER_PROFILE_BIT | 7
# Port specs that cover one another in every way the fold has to look at.
SPECS = (
    (0, 0, 0),
    (6, 0, 0),
    (17, 0, 0),
    (6, 80, 16),
    (6, 443, 16),
    (17, 53, 16),
    *((6, port, plen) for port, plen in range_to_prefixes(64, 127)),
    *((6, port, plen) for port, plen in range_to_prefixes(0, 1023)[:2]),
)
IDENTS = tuple(range(0, 9))  # 0 = any peer (a failed-closed Deny rule's)


def _intern(direction: int, ident: int, proto: int, port: int, plen: int) -> PolicyEntryKey:
    return PolicyEntryKey(direction, ident, proto, port, plen)


@st.composite
def part_lists(draw: Any, refs: tuple[int, ...] = tuple(range(1, 13))) -> list[RulePart]:
    """Rule parts as the tiers make them: one per rule (its reference), unique ranks per tier."""
    out: list[RulePart] = []
    chosen = draw(st.lists(st.sampled_from(refs), unique=True, max_size=8))
    ranks = draw(st.permutations(range(len(refs))))
    for ref in chosen:
        out.append(_part(draw, ref, ranks[ref - 1]))
    return out


def _part(draw: Any, ref: int, rank: int) -> RulePart:
    tier = draw(st.sampled_from((0, 1)))
    action = draw(st.sampled_from((TIER_ACCEPT, TIER_DENY, TIER_PASS)))
    direction = draw(st.sampled_from((0, 1)))
    specs = tuple(draw(st.lists(st.sampled_from(SPECS), unique=True, min_size=1, max_size=4)))
    idents = frozenset(draw(st.lists(st.sampled_from(IDENTS), max_size=6)))
    extra = tuple(
        draw(
            st.lists(
                st.tuples(st.sampled_from(IDENTS), st.tuples(st.sampled_from(SPECS[3:]))),
                max_size=2 if direction else 0,
            )
        )
    )
    return RulePart(direction, (tier, action, rank, ref), specs, idents, extra)


def _reference(parts: list[RulePart]) -> dict[PolicyEntryKey, PolicyEntryValue]:
    return fold([c for p in parts for c in _part_contributions(p)], _intern)


@settings(max_examples=300, deadline=None)
@given(parts=part_lists())
def test_a_profile_folded_per_signature_equals_the_reference_fold_of_its_contributions(
    parts: list[RulePart],
) -> None:
    memo = TierMemo()
    got = memo.profile("p", tuple(parts), _intern)
    assert dict(got.entries) == _reference(parts)
    assert not memo.changes


@st.composite
def part_list_pairs(draw: Any) -> tuple[list[RulePart], list[RulePart]]:
    """A profile's parts and the parts after an event: a rule's peers gaining or losing
    identities, a rule changed, added or removed, ranks shifted."""
    before = draw(part_lists())
    after: list[RulePart] = []
    for p in before:
        what = draw(st.sampled_from(("keep", "keep", "idents", "idents", "drop", "rank", "specs")))
        if what == "keep":
            after.append(p)
        elif what == "idents":
            gain = frozenset(draw(st.lists(st.sampled_from(IDENTS), max_size=2)))
            lose = frozenset(draw(st.lists(st.sampled_from(IDENTS), max_size=2)))
            after.append(RulePart(p.direction, p.head, p.specs, (p.idents | gain) - lose, p.extra))
        elif what == "rank":
            head = (p.head[0], p.head[1], p.head[2] + 100, p.head[3])
            after.append(RulePart(p.direction, head, p.specs, p.idents, p.extra))
        elif what == "specs":
            specs = tuple(draw(st.lists(st.sampled_from(SPECS), unique=True, min_size=1, max_size=3)))
            after.append(RulePart(p.direction, p.head, specs, p.idents, p.extra))
    if draw(st.booleans()):
        after.append(_part(draw, 50, 200))  # a new rule (of a new policy)
    return before, after


def _apply(base: Any, removed: Any, upserted: Any, entries: Any) -> dict[PolicyEntryKey, PolicyEntryValue]:
    out = dict(base)
    for k in removed:
        del out[k]
    for k in upserted:
        out[k] = entries[k]
    return out


def _two_compilations(
    before: list[RulePart], after: list[RulePart]
) -> tuple[TierMemo, ProfileState, ProfileState, ProfileChange | None]:
    """A profile made of `before` parts, then (the next compilation's memo) of `after` parts:
    (that memo, the first state, the second, its patch)."""
    first = TierMemo()
    old = first.profile("p", tuple(before), _intern)
    second = TierMemo(first)
    got = second.profile("p", tuple(after), _intern)
    return second, old, got, second.changes.get("p")


@settings(max_examples=300, deadline=None)
@given(pair=part_list_pairs())
def test_a_profile_patched_from_the_previous_compilations_equals_one_folded_from_scratch(
    pair: tuple[list[RulePart], list[RulePart]],
) -> None:
    before, after = pair
    second, old, got, change = _two_compilations(before, after)
    assert dict(got.entries) == _reference(after)
    if tuple(after) == tuple(before):
        assert got is old  # nothing it depends on changed: the very entries again
    if change is not None:
        assert change.base is old.entries
        assert _apply(old.entries, change.removed, change.upserted, got.entries) == dict(got.entries)
    # and a third compilation asking for the same parts gets the same state
    assert TierMemo(second).profile("p", tuple(after), _intern) is got


@settings(max_examples=200, deadline=None)
@given(pair=part_list_pairs())
def test_a_profile_under_a_new_key_is_patched_from_the_one_its_endpoints_had(
    pair: tuple[list[RulePart], list[RulePart]],
) -> None:
    before, after = pair
    first = TierMemo()
    old = first.profile("old-key", tuple(before), _intern)
    first.keys[PID] = "old-key"
    second = TierMemo(first)
    got = second.profile("new-key", tuple(after), _intern, predecessor=PID)
    assert dict(got.entries) == _reference(after)
    change = second.changes.get("new-key")
    if tuple(after) == tuple(before):
        assert got is old
    else:  # derived from the predecessor's entries, by a patch or by comparing a full fold
        assert change is not None and change.base is old.entries
        assert _apply(old.entries, change.removed, change.upserted, got.entries) == dict(got.entries)
    # without the predecessor it is folded whole: nothing to derive it from
    alone = TierMemo(first)
    alone.profile("new-key", tuple(after), _intern)
    assert "new-key" not in alone.changes


@settings(max_examples=200, deadline=None)
@given(pair=part_list_pairs())
def test_the_encoding_of_a_patched_profile_and_its_sync_diff_equal_the_full_ones(
    pair: tuple[list[RulePart], list[RulePart]],
) -> None:
    _, old, got, change = _two_compilations(*pair)
    homes = ProfileHomes()
    previous = homes.place({PID: old.entries}, {}).policy[PID]
    placed = homes.place({PID: got.entries}, {PID: change} if change is not None else {})
    assert placed.homes == {PID: PID}  # a profile keeps its home while its id stays
    full = dict(codecs.encode_policy(PID, k, v) for k, v in got.entries.items())
    assert placed.policy[PID] == full
    # and the sync's diff over the touched keys is the diff over everything
    hint = placed.touched.get(PID)
    if hint is not None:
        assert hint[0] is previous
        assert _diff_policy({PID: full}, {PID: previous}, placed.touched) == _diff_policy(
            {PID: full}, {PID: previous}
        )


def _cnp_step(world: World, n: int) -> str:
    """An event, ClusterNetworkPolicy ones four times as often as World.step has them."""
    r = world.rnd
    roll = r.random()
    if roll < 0.25:
        world.add_cnp(r.choice(["c0", "c1", "c2", f"c{n}"]))
        return "cnp+"
    if roll < 0.4 and world.cnps:
        del world.cnps[r.choice(sorted(world.cnps))]
        return "cnp-"
    return world.step(n)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_every_compilation_after_cluster_policy_events_equals_a_full_compilation(seed: int) -> None:
    world = World(random.Random(seed))
    world.add_cnp("c1")
    builder = ClusterBuilder()
    state = None
    for n in range(25):
        event = _cnp_step(world, n)
        objects = world.objects()
        previous = state  # held while the next one is compiled, as the agent does
        state = builder.build(*objects)
        got = summary(state)
        fresh = cluster_from_objects(*objects)
        assert got == summary(fresh), f"step {n} ({event}) differs (seed {seed})"
        for profile in compile_cluster(state).tiers.memo.profiles.values():
            assert dict(profile.entries) == _reference(list(profile.parts)), f"step {n} ({event})"
        del previous


def test_cluster_policy_events_are_compiled_incrementally_and_unaffected_profiles_kept() -> None:
    world = World(random.Random(11))
    for name in ("c0", "c1", "c2"):
        world.add_cnp(name)
    builder = ClusterBuilder()
    state = builder.build(*world.objects())
    before = {n: compute.compute(state, n) for n in NODES}
    incremental = []
    for n in range(40):
        event = _cnp_step(world, n)
        previous = state
        state = builder.build(*world.objects())
        incremental.append((event, compile_cluster(state).incremental))
        after = {n: compute.compute(state, n) for n in NODES}
        if event in ("pol+", "pol-", "pol~"):  # NetworkPolicies: no profile changes
            for node in NODES:
                for pid, entries in after[node].tier_profiles.items():
                    if pid in before[node].tier_profiles:
                        assert entries is before[node].tier_profiles[pid], (n, event)
        before = after
        del previous
    cnp_events = [inc for event, inc in incremental if event in ("cnp+", "cnp-")]
    assert cnp_events and sum(cnp_events) > len(cnp_events) // 2, incremental


def test_the_benchmark_mix_of_cluster_policies_folds_to_the_reference_after_events() -> None:
    cluster = synth_cnp.control_plane_cluster(600, 30, 60, 25)
    objects: dict[str, list[Any]] = {
        "ns": list(cluster.namespaces),
        "pods": list(cluster.pods),
        "pol": list(cluster.policies),
        "nodes": list(cluster.nodes),
        "cnp": list(cluster.cluster_policies),
    }
    builder = ClusterBuilder()

    def build() -> Any:
        return builder.build(objects["ns"], objects["pods"], objects["pol"], objects["nodes"], objects["cnp"])

    state = build()
    compute.compute(state, "node-1")
    for k in range(3):
        objects["pods"] = [*objects["pods"], synth.cp_pod(600 + k * 6, 30, 6)]
        relabeled = list(objects["pods"])
        relabeled[k * 6] = synth.cp_pod(k * 6, 30, 6, app_offset=k + 1)
        objects["pods"] = relabeled
        objects["cnp"] = [*objects["cnp"], synth_cnp.cp_cnp(25 + k, 30)]
        previous = state
        state = build()
        got = compute.compute(state, "node-1")
        want = compute.compute(
            cluster_from_objects(
                objects["ns"], objects["pods"], objects["pol"], objects["nodes"], objects["cnp"]
            ),
            "node-1",
        )
        assert got == want
        assert got.tier_profiles
        for profile in compile_cluster(state).tiers.memo.profiles.values():
            assert dict(profile.entries) == _reference(list(profile.parts))
        del previous


def _cnp(name: str, tier: str, priority: int, rules: int) -> Any:
    from controller.compiler.cnp import parse_cluster_network_policy

    raw = synth_cnp.cluster_network_policy(
        name,
        tier,
        priority,
        {"namespaces": {}},
        ingress=[{"action": "Deny", "from": [{"namespaces": {}}]} for _ in range(rules)],
    )
    errors: list[Any] = []
    pol = parse_cluster_network_policy(raw, errors)
    assert pol is not None and not errors
    return pol


@settings(max_examples=100, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(("Admin", "Baseline")), st.integers(0, 1000), st.integers(1, 3)),
        min_size=1,
        max_size=12,
    ),
    extra=st.tuples(st.sampled_from(("Admin", "Baseline")), st.integers(0, 1000)),
)
def test_rule_ranks_follow_the_tier_order_and_a_policy_of_another_priority_moves_none(
    specs: list[tuple[str, int, int]], extra: tuple[str, int]
) -> None:
    from controller.compiler.stages.cnp_tables import ordered, rule_ranks

    pols = ordered(_cnp(f"p{i:02d}", tier, prio, n) for i, (tier, prio, n) in enumerate(specs))
    ranks = rule_ranks(pols)
    for tier in ("Admin", "Baseline"):
        keys = [(p.name, 0, r.index) for p in pols if p.tier == tier for r in p.ingress]
        got = [ranks[k] for k in keys]
        assert got == sorted(got) and len(set(got)) == len(got)  # the order, one rank each
        assert all(0 <= r < 0xFFFFFFFF for r in got)
    added = _cnp("zz-new", extra[0], extra[1], 2)
    again = rule_ranks(ordered([*pols, added]))
    for p in pols:
        if (p.tier, p.priority) != (added.tier, added.priority):
            for r in p.ingress:
                assert again[(p.name, 0, r.index)] == ranks[(p.name, 0, r.index)]


@settings(max_examples=200, deadline=None)
@given(
    ep_id=st.integers(0, 0xFFFFFFFF),
    direction=st.sampled_from((0, 1)),
    identity=st.integers(0, 0xFFFFFFFF),
    spec=st.sampled_from(SPECS),
    low_bits=st.integers(0, 0xFFFF),
)
def test_a_policy_key_packed_with_struct_is_the_ctypes_struct_policy_key(
    ep_id: int, direction: int, identity: int, spec: tuple[int, int, int], low_bits: int
) -> None:
    from controller.datapath import abi

    proto, port, plen = spec
    if plen:  # bits beyond the prefix are dropped in the encoding
        port |= low_bits & (0xFFFF >> plen)
    key = PolicyEntryKey(direction, identity, proto, port, plen)
    mask = (0xFFFF << (16 - plen)) & 0xFFFF if plen else 0
    want = abi.PolicyKey(
        prefixlen=codecs.policy_prefixlen(key),
        ep_id=ep_id,
        identity=identity,
        dir=direction,
        proto=proto,
        dport=codecs.be16(port & mask),
    )
    assert codecs.encode_policy_key(ep_id, key) == bytes(want)
    assert codecs.decode_policy(bytes(want), codecs.encode_policy_value(PolicyEntryValue(1, 2)))[0] == ep_id
