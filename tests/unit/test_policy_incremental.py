"""The incremental compiler (a ClusterBuilder build compiled from the previous build's
compilation) computes exactly what a full compilation of the same objects computes.

Random event sequences over a small cluster: pods added, removed, relabelled, moved to another
address or node, terminated; policies added, changed and deleted (pod and namespace selectors,
ipBlocks with excepts around pod addresses, named ports both ways, audit mode); namespaces
relabelled and nodes changed (those take the full path). Small pools of labels, addresses and
identity keys make collisions, shared addresses and empty identities common.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.model import Peer
from controller.compiler.policy import compile_cluster
from controller.compiler.stages import cnp_tables
from controller.compiler.stages.selection import PeerSelector
from tests.support.cluster_world import NAMESPACES, World, summary
from tests.support.k8s import K8s as K


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_every_incremental_compilation_equals_a_full_compilation_of_the_same_objects(seed: int) -> None:
    world = World(random.Random(seed))
    builder = ClusterBuilder()
    state = None
    incremental = 0
    for n in range(25):
        event = world.step(n)
        objects = world.objects()
        previous = state  # like the agent, hold the previous cluster while the next is compiled
        state = builder.build(*objects)
        got = summary(state)
        incremental += compile_cluster(state).incremental
        fresh = cluster_from_objects(*objects)
        assert state == fresh and state.errors == fresh.errors, f"step {n} ({event}): the models differ"
        want = summary(fresh)
        assert got == want, f"step {n} ({event}) differs (seed {seed})"
        del previous
    assert incremental > 0


def test_pod_and_policy_events_are_compiled_incrementally_and_namespace_events_in_full() -> None:
    world = World(random.Random(7))
    builder = ClusterBuilder()
    state = builder.build(*world.objects())
    compile_cluster(state)
    kinds: dict[str, list[bool]] = {}
    for n in range(200):
        event = world.step(n)
        previous = state  # held while the next one is compiled, as the agent does
        state = builder.build(*world.objects())
        kinds.setdefault(event, []).append(compile_cluster(state).incremental)
        del previous
    assert not any(kinds["ns~"]) and not any(kinds["node~"])
    for event in ("pod+", "pod~", "pol+", "pol-", "pol~"):
        # a few fall back (an address shared by two pods, an identity collision); most do not
        assert sum(kinds[event]) > len(kinds[event]) // 2, (event, kinds[event])


def test_a_cluster_built_from_objects_is_never_compiled_from_another() -> None:
    world = World(random.Random(3))
    builder = ClusterBuilder()
    compile_cluster(builder.build(*world.objects()))
    world.step(1)
    fresh = cluster_from_objects(*world.objects())
    assert fresh.delta is None
    assert not compile_cluster(fresh).incremental


def test_a_build_whose_previous_compilation_is_gone_is_compiled_in_full() -> None:
    world = World(random.Random(4))
    builder = ClusterBuilder()
    compile_cluster(builder.build(*world.objects()))  # the cluster and its compilation are dropped
    world.add_pod("x1")
    assert not compile_cluster(builder.build(*world.objects())).incremental


def test_a_build_whose_previous_build_was_not_compiled_is_compiled_in_full() -> None:
    world = World(random.Random(5))
    builder = ClusterBuilder()
    first = builder.build(*world.objects())
    compile_cluster(first)
    world.add_pod("x1")
    builder.build(*world.objects())  # never compiled (say the agent's compute failed)
    world.add_pod("x2")
    assert not compile_cluster(builder.build(*world.objects())).incremental


def test_a_build_names_exactly_the_pods_and_policies_that_changed_and_parses_only_them() -> None:
    world = World(random.Random(11))
    builder = ClusterBuilder()
    first = builder.build(*world.objects())
    assert first.delta is None
    world.change_pod()  # one pod replaced by a new object
    world.add_pod("new")
    world.add_policy("newpol")
    second = builder.build(*world.objects())
    assert second.delta is not None and second.delta.base == first.build_id
    replaced = {k for k, p in second.pods.items() if first.pods.get(k) is not p}
    assert second.delta.pods == replaced and len(replaced) == 2
    assert second.delta.policies == {k for k in second.policies if k not in first.policies}
    assert not second.delta.namespaces and not second.delta.nodes
    assert builder.parsed == 3
    third = builder.build(*world.objects())
    assert third.delta is not None and not third.delta.pods and not third.delta.policies
    assert third.pods is second.pods and builder.parsed == 0


def test_two_builders_in_one_process_each_compile_from_their_own_previous_build() -> None:
    worlds = [World(random.Random(21)), World(random.Random(22))]
    builders = [ClusterBuilder(), ClusterBuilder()]
    states = [b.build(*w.objects()) for b, w in zip(builders, worlds, strict=True)]
    for s in states:
        compile_cluster(s)
    for n in range(6):
        for i in (0, 1):  # interleaved, as two agents in one process would
            worlds[i].add_pod(f"i{n}")
            previous = states[i]
            states[i] = builders[i].build(*worlds[i].objects())
            compiled = compile_cluster(states[i])
            assert compiled.incremental
            assert summary(states[i]) == summary(cluster_from_objects(*worlds[i].objects()))
            del previous


def test_a_failing_incremental_step_falls_back_to_a_full_compilation(monkeypatch: Any) -> None:
    from controller.compiler.stages.selection import Selection

    world = World(random.Random(31))
    builder = ClusterBuilder()
    first = builder.build(*world.objects())
    compile_cluster(first)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug in an incremental step")

    monkeypatch.setattr(Selection, "update", broken)
    world.add_pod("late")
    world.add_policy("late")
    second = builder.build(*world.objects())
    compiled = compile_cluster(second)
    assert not compiled.incremental
    assert summary(second) == summary(cluster_from_objects(*world.objects()))


def _namespace_event(world: World, name: str) -> None:
    world.namespaces[name] = world._stamp(K.ns(name, team=f"{name}-moved"))


def test_two_builders_keep_their_own_generation_caches() -> None:
    """A full compilation (a namespace event) over the very Pod objects of its builder's last
    full build shares that build's identity tables, whatever another builder compiled in between
    (with process-wide caches, the other builder's compilation replaced them)."""
    worlds = [World(random.Random(41)), World(random.Random(42))]
    builders = [ClusterBuilder(), ClusterBuilder()]
    assert builders[0].generations is not builders[1].generations
    states = [b.build(*w.objects()) for b, w in zip(builders, worlds, strict=True)]
    firsts = [compile_cluster(s) for s in states]
    for s, b in zip(states, builders, strict=True):
        assert s.generations is b.generations
    for n in range(4):
        for i in (0, 1):  # interleaved: the other builder compiled since this one's last build
            _namespace_event(worlds[i], NAMESPACES[n % len(NAMESPACES)])
            previous = states[i]
            states[i] = builders[i].build(*worlds[i].objects())
            compiled = compile_cluster(states[i])
            assert not compiled.incremental  # (a namespace event)
            assert compiled.identity_tables is firsts[i].identity_tables
            assert summary(states[i]) == summary(cluster_from_objects(*worlds[i].objects()))
            del previous
    # each cache holds its own builder's generations: pods of its own world only
    from controller.compiler.stages.identities import IdentityGeneration

    for i in (0, 1):
        last = builders[i].generations.last(IdentityGeneration)
        assert last is not None and last.tables is firsts[i].identity_tables
        assert set(last.active) == {k for k, p in states[i].pods.items() if p.active}


def test_clusters_without_a_builder_share_no_generations() -> None:
    world = World(random.Random(43))
    a = cluster_from_objects(*world.objects())
    b = cluster_from_objects(*world.objects())
    assert a.generations is None and b.generations is None
    ca, cb = compile_cluster(a), compile_cluster(b)
    assert ca.generations is not cb.generations
    assert ca.identity_tables is not cb.identity_tables
    assert summary(a) == summary(b)


def test_two_builders_compiling_in_two_threads_each_match_a_full_compilation() -> None:
    """Two compile pipelines at once, events interleaved by the scheduler: each compilation equals
    a fresh full compilation of its own objects."""
    import threading

    failures: list[str] = []
    barrier = threading.Barrier(2)

    def run(seed: int) -> None:
        world = World(random.Random(seed))
        builder = ClusterBuilder()
        state = builder.build(*world.objects())
        compile_cluster(state)
        barrier.wait()
        for n in range(40):
            event = world.step(n)
            previous = state
            state = builder.build(*world.objects())
            got = summary(state)
            want = summary(cluster_from_objects(*world.objects()))
            if got != want:
                failures.append(f"seed {seed} step {n} ({event})")
            del previous

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (51, 52)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_identities_that_come_and_go_update_the_carried_peer_selections_to_what_a_fresh_one_finds() -> None:
    world = World(random.Random(11))
    builder = ClusterBuilder()
    state = builder.build(*world.objects())
    compiled = compile_cluster(state)
    K.compute_all(state)  # every node: the peer selections get cached
    carried = 0
    for n in range(150):
        world.step(n)
        previous, before = state, compiled
        planted = ("planted", None, f"never asked {n}")  # a selection no compilation asks for
        before.selector._cache[planted] = frozenset({1})
        before.selector._peers[planted] = ("planted", None, None)
        state = builder.build(*world.objects())
        compiled = compile_cluster(state)
        sel = compiled.selector
        if compiled.incremental and sel is not before.selector and compiled.namespaces is before.namespaces:
            # what the previous selector was asked for is carried over, nothing else (bounded)
            asked = set(before.selector._asked)
            assert asked <= set(sel._cache) <= asked | sel._asked, f"step {n}"
            assert planted not in sel._cache
            fresh = PeerSelector(compiled.identity_tables, compiled.namespaces)
            for key, got in sel._cache.items():
                policy_ns, ns_sel, pod_sel = sel._peers[key]
                want = fresh.peer_identities(policy_ns, Peer(pod_selector=pod_sel, namespace_selector=ns_sel))
                assert got == want, f"step {n}: {key}"
            carried += 1
        K.compute_all(state)
        del previous, before
    assert carried > 10


def test_the_policies_carried_by_identity_key_keep_no_more_than_twice_the_live_identities(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(cnp_tables, "CARRIED_SLACK", 0)
    world = World(random.Random(5))
    builder = ClusterBuilder()
    state = builder.build(*world.objects())
    K.compute_all(state)
    seen: set[object] = set()
    for n in range(200):
        # pod events only: the policies and namespaces stay, so the table is carried throughout
        if n % 3 == 0 and len(world.pods) > 4:
            del world.pods[world.rnd.choice(sorted(world.pods))]
        elif n % 3 == 1:
            world.add_pod(f"q{n}")
        else:
            world.change_pod()
        previous = state
        state = builder.build(*world.objects())
        compiled = compile_cluster(state)
        K.compute_all(state)
        carried = compiled.tiers.tables._policies_by_key
        seen |= set(carried)
        assert len(carried) <= 2 * len(compiled.identity_tables.identity_of_key), f"step {n}"
        del previous
    assert len(seen) > 2 * len(compiled.identity_tables.identity_of_key)  # (keys did come and go)
