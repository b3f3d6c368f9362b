"""The incremental sync (encoding.Encoder + sync.apply_encoding against what the last sync wrote) plans
exactly the operations of a sync that encodes everything afresh and reads the maps, while
reusing what did not change (pure: in-memory maps, no root)."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import random
from collections.abc import Mapping, Sequence

from controller.compiler.desired_state import (
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
)
from controller.core.seqdiff import equal_run
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.encoding import MAX_ALIGN_GAPS, Encoder, _unequal_positions, align, desired_maps
from controller.datapath.sync import SYNCED_MAPS, Written, apply, apply_encoding
from tests.support.sync_world import World

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class DictMap:
    """A synced map in memory (sync.MapLike), full at `capacity` entries like a BPF map."""

    def __init__(self, capacity: int | None = None) -> None:
        self.data: dict[bytes, bytes] = {}
        self.capacity = capacity

    def items(self) -> dict[bytes, bytes]:
        return dict(self.data)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if key not in self.data and self.capacity is not None and len(self.data) >= self.capacity:
            raise bpfsys.BpfError(errno.E2BIG, "full")
        self.data[key] = value

    def delete(self, key: bytes) -> bool:
        return self.data.pop(key, None) is not None

    def key_list(self) -> list[bytes]:
        return list(self.data)

    def lookup(self, key: bytes) -> bytes | None:
        return self.data.get(key)


def _kernel(policy_capacity: int | None = None) -> dict[str, DictMap]:
    names = (*SYNCED_MAPS, "vg_config", "vg_ct")
    kernel = {name: DictMap() for name in names}
    kernel["vg_policy"] = DictMap(policy_capacity)
    return kernel


def _contents(kernel: Mapping[str, DictMap]) -> dict[str, dict[bytes, bytes]]:
    return {name: dict(m.data) for name, m in kernel.items()}


def _run(seed: int, steps: int, policy_capacity: int | None = None) -> None:
    rng = random.Random(seed)
    world = World(rng)
    encoder = Encoder()
    incremental, reference = _kernel(policy_capacity), _kernel(policy_capacity)
    written: Written | None = None
    for n in range(steps):
        desired, pod_ifindex = world.desired(), dict(world.pod_ifindex)
        encoding = encoder.encode(desired, pod_ifindex)
        assert encoding.maps() == desired_maps(desired, pod_ifindex), f"seed {seed} step {n}"
        ipcache = encoding.ipcache
        assert ipcache.prefixes == list(desired.ipcache) and ipcache.values == list(desired.ipcache.values())
        assert ipcache.keys == [codecs.encode_ipcache(net, 0, 0)[0] for net in ipcache.prefixes]
        got, written = apply_encoding(encoding, incremental, written)
        want = apply(desired_maps(desired, pod_ifindex), reference)
        assert got.ops == want.ops, f"seed {seed} step {n}"
        assert (got.revision, got.full, got.skipped) == (want.revision, want.full, want.skipped)
        assert _contents(incremental) == _contents(reference), f"seed {seed} step {n}"
        assert (written is None) == bool(want.full or want.skipped)
        world.step()


def test_incremental_syncs_plan_the_operations_of_syncs_that_read_the_maps_over_random_events() -> None:
    for seed in range(20):
        _run(seed, 50)


def test_incremental_syncs_agree_with_reading_syncs_when_the_policy_map_fills_and_drains() -> None:
    for seed in range(20):  # about one sync in four finds the map full
        _run(1000 + seed, 50, policy_capacity=32)


def test_an_unchanged_ipcache_mapping_keeps_its_whole_encoding() -> None:
    world = World(random.Random(1))
    encoder = Encoder()
    first = encoder.encode(world.desired(), world.pod_ifindex)
    again = encoder.encode(
        dataclasses.replace(world.desired(), endpoints=dict(world.endpoints)), world.pod_ifindex
    )
    assert again.ipcache is first.ipcache
    assert all(again.policy[i] is first.policy[i] for i in first.policy)


def test_a_changed_ipcache_is_encoded_and_diffed_on_the_changed_prefixes_only() -> None:
    world = World(random.Random(2))
    encoder = Encoder()
    kernel = _kernel()
    first = encoder.encode(world.desired(), world.pod_ifindex)
    _, written = apply_encoding(first, kernel, None)
    assert written is not None
    net = next(n for n in world.ipcache if n.prefixlen == 32)
    moved = ipaddress.ip_network(str(net))  # an equal prefix, new object, new value
    ipcache = {n: v for n, v in world.ipcache.items() if n is not net}
    ipcache[moved] = (999, 0, 0)
    ipcache[ipaddress.ip_network("172.16.0.0/12")] = (2, 1 << 24, 0)
    second = encoder.encode(dataclasses.replace(world.desired(), ipcache=ipcache), world.pod_ifindex)
    assert second.ipcache.base == first.ipcache.serial
    assert second.ipcache.touched == {
        codecs.encode_ipcache(net, 0, 0)[0],
        codecs.encode_ipcache(ipaddress.ip_network("172.16.0.0/12"), 0, 0)[0],
    }
    result, _ = apply_encoding(second, kernel, written)
    assert [(op.kind, op.map) for op in result.ops] == [("add", "vg_ipcache4"), ("update", "vg_ipcache4")]


def test_an_endpoint_with_the_same_entries_mapping_keeps_its_encoded_policy_entries() -> None:
    world = World(random.Random(3))
    encoder = Encoder()
    pod = next(p for p, ep in world.endpoints.items() if ep.entries)
    first = encoder.encode(world.desired(), world.pod_ifindex)
    relabeled = dataclasses.replace(world.endpoints[pod], identity=4242)
    second = encoder.encode(
        dataclasses.replace(world.desired(), endpoints={**world.endpoints, pod: relabeled}), world.pod_ifindex
    )
    ifindex = world.pod_ifindex[pod]
    assert second.policy[ifindex] is first.policy[ifindex]
    assert second.endpoints[codecs.u32_key(ifindex)] != first.endpoints[codecs.u32_key(ifindex)]
    moved = encoder.encode(world.desired(), {**world.pod_ifindex, pod: 4000})
    assert moved.policy[4000] is not first.policy[ifindex]
    assert {abi.PolicyKey.from_bytes(k).ep_id for k in moved.policy[4000]} == {4000}


def test_two_pods_claiming_one_ifindex_merge_their_entries_as_a_flat_encoding_does() -> None:
    world = World(random.Random(4))
    a, b = sorted(world.endpoints)[:2]
    other = {PolicyEntryKey(0, 999, 17, 53, 16): PolicyEntryValue(1, 5)}
    endpoints = {**world.endpoints, b: dataclasses.replace(world.endpoints[b], entries=other)}
    pod_ifindex = {**world.pod_ifindex, b: world.pod_ifindex[a]}
    desired = dataclasses.replace(world.desired(), endpoints=endpoints)
    encoder = Encoder()
    encoder.encode(world.desired(), world.pod_ifindex)
    assert encoder.encode(desired, pod_ifindex).maps() == desired_maps(desired, pod_ifindex)


def _check_alignment(new: Sequence[object], old: Sequence[object]) -> int:
    """align()'s contract; returns how many new positions it left outside the runs."""
    runs, new_gaps, old_gaps = align(new, old)
    covered_new = sorted([*((a, b) for a, b, _ in runs), *new_gaps])
    covered_old = sorted([*((a - off, b - off) for a, b, off in runs), *old_gaps])
    for covered, n in ((covered_new, len(new)), (covered_old, len(old))):
        assert all(a < b for a, b in covered)
        assert [a for a, _ in covered] == [0, *(b for _, b in covered[:-1])] if covered else n == 0
        assert (covered[-1][1] if covered else 0) == n
    for a, b, off in runs:
        assert all(new[j] == old[j - off] for j in range(a, b))
    return sum(b - a for a, b in new_gaps)


def test_alignment_leaves_only_the_edited_positions_outside_its_runs() -> None:
    rng = random.Random(9)
    for _ in range(400):
        old = [object() for _ in range(rng.randrange(0, 300))]
        new = list(old)
        edited = 0
        for _ in range(rng.randrange(0, 5)):
            kind = rng.choice(("replace", "insert", "delete", "block"))
            at = rng.randrange(len(new) + 1)
            if kind == "insert":
                new[at:at] = [object()]
            elif at < len(new) and kind == "delete":
                del new[at]
            elif at < len(new):
                width = 1 if kind == "replace" else rng.randrange(1, 150)
                new[at : at + width] = [object() for _ in new[at : at + width]]
            edited += 1 if kind != "block" else 150
        outside = _check_alignment(new, old)
        replaced_or_inserted = sum(1 for o in new if all(o is not p for p in old))
        assert outside <= replaced_or_inserted + edited  # few edits: about their own size


def test_alignment_of_unrelated_or_shuffled_lists_keeps_its_contract() -> None:
    rng = random.Random(10)
    for _ in range(200):
        old = [object() for _ in range(rng.randrange(0, 200))]
        new = list(old)
        rng.shuffle(new)
        new += [object() for _ in range(rng.randrange(3))]
        _check_alignment(new, old)
        _check_alignment([object() for _ in old], old)
    # a long stretch replaced by a longer one: what follows is aligned from the back
    common = [object() for _ in range(50)]
    old = [object() for _ in range(100)] + common
    new = [object() for _ in range(130)] + common
    assert _check_alignment(new, old) == 130
    # more mismatched stretches than it steps over: the rest is left to matching by object
    old = [object() for _ in range(10 * MAX_ALIGN_GAPS)]
    new = [o if j % 5 else object() for j, o in enumerate(old)]
    assert _check_alignment(new, old) < len(new)


def test_a_block_of_rebuilt_prefixes_and_an_appended_one_cost_only_the_appended_one() -> None:
    """The shape of a pod event at 10k pods: node address prefixes rebuilt (new, equal objects,
    same place), the new pod's prefix appended, every other prefix object kept in its place."""
    cidrs = {ipaddress.ip_network(f"192.168.{i}.0/24"): (2, (1 << 24) + i, 0) for i in range(20)}
    nodes = {ipaddress.ip_network(f"172.20.0.{i}/32"): (3, 0, 0) for i in range(30)}
    pods = {ipaddress.ip_network(f"10.244.{i // 250}.{i % 250}/32"): (256 + i % 9, 0, 0) for i in range(2000)}
    encoder = Encoder()
    desired = NodeDesired(endpoints={}, ipcache={**cidrs, **nodes, **pods}, rules={}, identities={})
    first = encoder.encode(desired, {}).ipcache
    rebuilt = {ipaddress.ip_network(str(n)): v for n, v in nodes.items()}
    pod = ipaddress.ip_network("10.244.99.1/32")
    moved = next(iter(pods))
    pods = {**pods, moved: (300, 0, 0), pod: (300, 0, 0)}  # one pod relabeled, one added
    second = encoder.encode(dataclasses.replace(desired, ipcache={**cidrs, **rebuilt, **pods}), {}).ipcache
    assert _check_alignment(second.prefixes, first.prefixes) == 1
    assert second.touched == {codecs.encode_ipcache(n, 0, 0)[0] for n in (pod, moved)}
    assert second.v4 == {**first.v4, **{k: second.v4[k] for k in second.touched}}


def test_equal_runs_and_unequal_positions_are_those_a_position_by_position_comparison_finds() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        n = rng.randrange(0, 120)
        old = [rng.randrange(3) for _ in range(n)]
        new = [v if rng.random() < 0.9 else rng.randrange(3) for v in old]
        i = rng.randrange(n + 1)
        limit = rng.randrange(n - i + 1)
        forward = next((x for x in range(limit) if new[i + x] != old[i + x]), limit)
        assert equal_run(new, i, old, i, limit) == forward
        backward = next((x for x in range(limit) if new[n - i - 1 - x] != old[n - i - 1 - x]), limit)
        assert equal_run(new, n - i, old, n - i, limit, step=-1) == backward
        assert _unequal_positions(new, i, old, i, limit) == [
            x for x in range(limit) if new[i + x] != old[i + x]
        ]
