"""What keeps the agent's memory bounded: shared model objects, no reference cycles between a
cluster and its compilation, the pods' ipcache prefixes reused across compilations, and the C
heap trimmed after a compile (issue 7: agent RSS at 10k pods). Figures are printed, not asserted
against a time or a machine-specific size."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from controller.agent import loop as agent_mod
from controller.agent.loop import Agent, AgentConfig
from controller.bench import synth
from controller.bench.control_plane import FixedDiscovery, MemorySources
from controller.compiler import compute
from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.model import ClusterState
from controller.compiler.policy import compile_cluster
from controller.compiler.selectors import LabelIndex, LabelSelector
from controller.datapath import loader
from tests.support.agent_fakes import NullDatapath


def small_cluster(pods: int = 40) -> synth.Cluster:
    return synth.control_plane_cluster(pods, namespaces=4, policies=10)


def build(c: synth.Cluster) -> ClusterState:
    return cluster_from_objects(c.namespaces, c.pods, c.policies, c.nodes)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting frees objects: a cycle shows up as an object that stays alive."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- the model ----------------------------------------------------------------------------------


def test_pods_with_equal_labels_share_one_label_map_and_one_port_tuple():
    c = small_cluster(pods=360)  # synth repeats a label set every 120 pods
    state = build(c)
    pods = list(state.pods.values())
    same = [p for p in pods if dict(p.labels) == dict(pods[0].labels)]
    assert len(same) > 1
    assert all(p.labels is same[0].labels for p in same)
    assert all(p.ports is pods[0].ports for p in pods) and pods[0].ports
    distinct_label_maps = {id(p.labels) for p in pods}
    distinct_label_sets = {tuple(sorted(p.labels.items())) for p in pods}
    print(f"{len(pods)} pods: {len(distinct_label_maps)} label maps, {len(distinct_label_sets)} label sets")
    assert len(distinct_label_maps) == len(distinct_label_sets)


def test_shared_label_maps_do_not_mix_up_pods_with_different_labels():
    raw: list[dict[str, Any]] = [
        {"metadata": {"namespace": "x", "name": "a", "labels": {"app": "web"}}},
        {"metadata": {"namespace": "x", "name": "b", "labels": {"app": "db"}}},
        {"metadata": {"namespace": "y", "name": "c", "labels": {"app": "web"}}},
        {"metadata": {"namespace": "y", "name": "d"}},
    ]
    state = cluster_from_objects([], raw, [], [])
    assert dict(state.pods["x/a"].labels) == {"app": "web"}
    assert dict(state.pods["x/b"].labels) == {"app": "db"}
    assert state.pods["y/c"].labels is state.pods["x/a"].labels
    assert dict(state.pods["y/d"].labels) == {}


def test_a_pods_key_is_built_once_and_is_the_string_its_tables_are_keyed_by():
    state = build(small_cluster())
    for key, pod in state.pods.items():
        assert pod.key == f"{pod.namespace}/{pod.name}" == key
        assert pod.key is pod.key
    # key does not take part in equality (it is derived) and pods stay slotted
    pod = next(iter(state.pods.values()))
    assert not hasattr(pod, "__dict__")


def test_a_canonical_pod_ip_from_the_api_is_kept_and_a_non_canonical_one_is_normalised():
    raw: list[dict[str, Any]] = [
        {"metadata": {"namespace": "x", "name": "a"}, "status": {"podIP": "10.0.0.1"}},
        {"metadata": {"namespace": "x", "name": "b"}, "status": {"podIPs": [{"ip": "fd00:0::1"}]}},
    ]
    state = cluster_from_objects([], raw, [], [])
    assert state.pods["x/a"].ips == ("10.0.0.1",)
    assert state.pods["x/a"].ips[0] is raw[0]["status"]["podIP"]
    assert state.pods["x/b"].ips == ("fd00::1",)


# -- the compiler -------------------------------------------------------------------------------


def test_a_replaced_cluster_and_its_compilation_are_freed_without_the_garbage_collector(no_gc: None):
    c = small_cluster()
    state = build(c)
    desired = compute.compute(state, "node-1")
    assert desired.endpoints
    compiled = weakref.ref(compile_cluster(state))
    cluster_ref = weakref.ref(state)
    del state
    assert cluster_ref() is None, "the ClusterState is still alive: a reference cycle holds it"
    assert compiled() is None, "the CompiledCluster is still alive: a reference cycle holds it"


def test_the_compilation_cached_on_a_cluster_is_reused_for_every_node():
    state = build(small_cluster())
    first = compile_cluster(state)
    compute.compute(state, "node-1")
    assert compile_cluster(state) is first


def test_consecutive_compilations_share_the_pods_ipcache_prefix_objects():
    # (one builder, as the agent has: the prefix objects are carried in its generation cache;
    # clusters of different builders share nothing)
    c = small_cluster()
    builder = ClusterBuilder()
    old = compute.compute(builder.build(c.namespaces, c.pods, c.policies, c.nodes), "node-1")
    new = compute.compute(builder.build(c.namespaces, c.pods, c.policies, c.nodes), "node-1")
    old_keys = {k: k for k in old.ipcache}
    pod_ips = {p["status"]["podIP"] for p in c.pods}
    pod_prefixes = [k for k in new.ipcache if k.prefixlen == 32 and str(k.network_address) in pod_ips]
    shared = [k for k in pod_prefixes if old_keys.get(k) is k]
    print(f"{len(shared)} of {len(pod_prefixes)} pod prefixes are the previous compilation's objects")
    assert len(pod_prefixes) == len(pod_ips) == len(c.pods)
    assert len(shared) == len(pod_prefixes)
    assert old.ipcache == new.ipcache


def test_the_ipcache_is_unchanged_when_pod_addresses_move_between_compilations():
    c = small_cluster()
    before = compute.compute(build(c), "node-1")
    moved = synth.Cluster(c.namespaces, [dict(p) for p in c.pods], c.policies, c.nodes)
    moved.pods[0] = {**moved.pods[0], "status": {"phase": "Running", "podIP": "10.100.200.1"}}
    after = compute.compute(build(moved), "node-1")
    old_ip = c.pods[0]["status"]["podIP"]
    assert not any(str(k.network_address) == old_ip and k.prefixlen == 32 for k in after.ipcache)
    assert any(str(k.network_address) == "10.100.200.1" and k.prefixlen == 32 for k in after.ipcache)
    assert len(after.ipcache) == len(before.ipcache)


# -- selectors ----------------------------------------------------------------------------------


def test_key_based_selection_sees_objects_added_after_it_was_first_used():
    index = LabelIndex([(1, {"app": "web"}), (2, {"tier": "db"})])
    exists = LabelSelector.parse({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    absent = LabelSelector.parse({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
    not_in = LabelSelector.parse(
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}
    )
    assert set(exists.select(index)) == {1}
    assert set(absent.select(index)) == {2}
    index.add(3, {"app": "api"})
    assert set(exists.select(index)) == {1, 3}
    assert set(absent.select(index)) == {2}
    assert set(not_in.select(index)) == {2, 3}
    assert index.by_key == {"app": {1, 3}, "tier": {2}}


# -- the C heap ---------------------------------------------------------------------------------


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_release_free_heap_hands_freed_malloc_pages_back_to_the_kernel():
    # 64 MB in 4 KiB malloc'd buffers (bytearray beyond pymalloc's 512 bytes), then every buffer
    # but one in 32 freed: glibc keeps the holes (they are not at the heap's top) until trimmed.
    blocks = [bytearray(b"x" * 4096) for _ in range(16384)]
    keep = blocks[::32]
    before_free = _rss_anon_kb()
    del blocks
    after_free = _rss_anon_kb()
    assert loader.release_free_heap() is True
    after_trim = _rss_anon_kb()
    print(f"RssAnon: {before_free} kB with the buffers, {after_free} kB freed, {after_trim} kB trimmed")
    assert after_free - after_trim > 32 * 1024
    assert len(keep) == 512


class _CountingDatapath(NullDatapath):
    def __init__(self) -> None:
        self.syncs = 0

    def sync(self, desired: Any, pod_ifindex: Mapping[str, int]) -> dict[str, int]:
        self.syncs += 1
        return {"added": len(desired.endpoints)}

    def close(self) -> None:
        pass


def test_the_agent_trims_the_heap_after_a_pass_that_recomputed_or_a_full_resync_only(monkeypatch):
    trims: list[int] = []

    def counting_trim() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(agent_mod, "release_free_heap", counting_trim)
    c = small_cluster()
    sources = MemorySources(c)
    dp = _CountingDatapath()
    agent = Agent(
        AgentConfig(node="node-1", health_addr=None),
        sources,  # type: ignore[arg-type]
        datapath_factory=lambda _n, _p: dp,
        discovery=FixedDiscovery({}),
    )
    agent.interface_exists = lambda _i: False
    assert agent._open_datapath()
    assert agent.reconcile(full=True)
    assert len(trims) == 1
    assert agent.reconcile()  # nothing changed: nothing recomputed, nothing to give back
    assert len(trims) == 1
    sources.change("Pod", [*sources.kinds["Pod"], synth.cp_pod(len(c.pods) * 10, 4, len(c.nodes))])
    assert agent.reconcile()
    assert len(trims) == 2
    assert agent.reconcile(full=True)
    assert len(trims) == 3
    assert dp.syncs == 3
