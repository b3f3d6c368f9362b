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
    EndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    SvcFrontend,
)
from controller.core.seqdiff import equal_run
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.encoding import MAX_ALIGN_GAPS, Encoder, _unequal_positions, align, desired_maps
from controller.datapath.sync import Written, apply, apply_encoding

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
    names = (
        "vg_local",
        "vg_ipcache4",
        "vg_ipcache6",
        "vg_slots",
        "vg_endpoints",
        "vg_svc",
        "vg_config",
        "vg_ct",
    )
    kernel = {name: DictMap() for name in names}
    kernel["vg_policy"] = DictMap(policy_capacity)
    return kernel


def _contents(kernel: Mapping[str, DictMap]) -> dict[str, dict[bytes, bytes]]:
    return {name: dict(m.data) for name, m in kernel.items()}


class World:
    """A node's desired state that changes the way the compiler changes it: unchanged parts
    are the very objects of the previous state, changed parts new objects."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.values = [PolicyEntryValue(1, 0, r) for r in (11, 12, 13)]
        self.entry_sets = [self._entries() for _ in range(6)]
        self.endpoints: dict[str, EndpointDesired] = {}
        self.pod_ifindex: dict[str, int] = {}
        self.ipcache: dict[IPNet, tuple[int, int]] = {ipaddress.ip_network("0.0.0.0/0"): (2, 0)}
        self.frontends: frozenset[SvcFrontend] = frozenset()
        for i in range(12):
            self._add_pod(i)
        self.next_pod = 12
        for i in range(60):
            self.ipcache[self._remote(i)] = (300 + i % 7, 0)

    def _entries(self) -> dict[PolicyEntryKey, PolicyEntryValue]:
        rng = self.rng
        keys = {
            PolicyEntryKey(rng.randrange(2), 256 + rng.randrange(8), 6, rng.randrange(1, 9) * 10, 16)
            for _ in range(rng.randrange(0, 6))
        }
        return {k: rng.choice(self.values) for k in keys}

    def _remote(self, i: int) -> IPNet:
        return ipaddress.ip_network(f"10.244.{2 + i // 200}.{i % 200 + 10}/32")

    def _add_pod(self, i: int) -> None:
        pod = f"x/p{i}"
        self.endpoints[pod] = self._endpoint(pod, i)
        self.pod_ifindex[pod] = 100 + i
        self.ipcache[ipaddress.ip_network(f"10.244.1.{i + 10}/32")] = (256 + i % 5, 0)
        self.ipcache[ipaddress.ip_network(f"fd00:10:244:1::{i + 10:x}/128")] = (256 + i % 5, 0)

    def _endpoint(
        self, pod: str, i: int, entries: Mapping[PolicyEntryKey, PolicyEntryValue] | None = None
    ) -> EndpointDesired:
        return EndpointDesired(
            pod=pod,
            identity=256 + i % 5,
            ingress_isolated=self.rng.random() < 0.7,
            egress_isolated=self.rng.random() < 0.3,
            ipv4=f"10.244.1.{i + 10}",
            ipv6=f"fd00:10:244:1::{i + 10:x}",
            entries=self.rng.choice(self.entry_sets) if entries is None else entries,
        )

    def step(self) -> None:
        """One event: replace only what it changes (copy-on-write, as the compiler does)."""
        rng = self.rng
        kind = rng.choice(
            [
                "relabel",
                "entries",
                "new_entries",
                "pod_add",
                "pod_del",
                "veth",
                "prefix_value",
                "prefix_new_object",
                "prefix_del",
                "prefix_add",
                "reorder",
                "prefix_insert",
                "block_replace",
                "frontends",
                "nothing",
                "no_veth",
                "pending",
            ]
        )
        pods = sorted(self.endpoints)
        if kind in ("relabel", "entries", "new_entries") and pods:
            pod = rng.choice(pods)
            i = int(pod.split("/p")[1])
            entries: Mapping[PolicyEntryKey, PolicyEntryValue] | None = (
                self._entries() if kind == "new_entries" else None
            )
            if kind == "entries":  # same entries mapping, other flags/identity: a new object
                entries = self.endpoints[pod].entries
            self.endpoints = {**self.endpoints, pod: self._endpoint(pod, i, entries)}
        elif kind == "pod_add":
            i = self.next_pod
            self.next_pod += 1
            self.endpoints = dict(self.endpoints)
            self.pod_ifindex = dict(self.pod_ifindex)
            self.ipcache = dict(self.ipcache)
            self._add_pod(i)
        elif kind == "pod_del" and pods:
            pod = rng.choice(pods)
            self.endpoints = {p: e for p, e in self.endpoints.items() if p != pod}
            self.pod_ifindex = {p: i for p, i in self.pod_ifindex.items() if p != pod}
        elif kind == "veth" and self.pod_ifindex:  # a pod's veth replaced: new ifindex
            pod = rng.choice(sorted(self.pod_ifindex))
            self.pod_ifindex = {**self.pod_ifindex, pod: 500 + rng.randrange(50)}
        elif kind == "no_veth" and self.pod_ifindex:
            pod = rng.choice(sorted(self.pod_ifindex))
            self.pod_ifindex = {p: i for p, i in self.pod_ifindex.items() if p != pod}
        elif kind == "pending":  # a veth no pod claims yet
            self.pod_ifindex = {**self.pod_ifindex, f"(unclaimed)/{rng.randrange(5)}": 900 + rng.randrange(5)}
        elif kind == "prefix_value":
            net = rng.choice(list(self.ipcache))
            self.ipcache = {**self.ipcache, net: (rng.randrange(256, 270), rng.choice((0, 1 << 24)))}
        elif kind == "prefix_new_object":  # an equal prefix, a new object (same or other value)
            net = rng.choice(list(self.ipcache))
            value = self.ipcache[net] if rng.random() < 0.5 else (2, 0)
            rebuilt = {n: v for n, v in self.ipcache.items() if n != net}
            rebuilt[ipaddress.ip_network(str(net))] = value
            self.ipcache = rebuilt
        elif kind == "prefix_del" and len(self.ipcache) > 1:
            net = rng.choice(list(self.ipcache))
            self.ipcache = {n: v for n, v in self.ipcache.items() if n is not net}
        elif kind == "reorder":  # the same prefix objects in another order, one value changed
            items = list(self.ipcache.items())
            rng.shuffle(items)
            items[0] = (items[0][0], (rng.randrange(256, 270), 0))
            self.ipcache = dict(items)
        elif kind == "prefix_insert":  # new prefixes in the middle, a value changed near each end
            items = list(self.ipcache.items())
            at = rng.randrange(len(items) + 1)
            fresh = [
                (ipaddress.ip_network(f"10.250.{rng.randrange(256)}.0/24"), (2, 1 << 24)) for _ in range(2)
            ]
            items[at:at] = fresh
            for j in (0, len(items) - 1):
                items[j] = (items[j][0], (rng.randrange(256, 270), 0))
            self.ipcache = dict(items)
        elif kind == "block_replace":  # equal, new objects for a block (node addresses), in place
            items = list(self.ipcache.items())
            at = rng.randrange(len(items))
            for j in range(at, min(len(items), at + rng.randrange(1, 8))):
                items[j] = (ipaddress.ip_network(str(items[j][0])), items[j][1])
            self.ipcache = dict(items)
        elif kind == "prefix_add":
            self.ipcache = {
                **self.ipcache,
                ipaddress.ip_network(f"192.168.{rng.randrange(256)}.0/24"): (2, 1 << 24),
            }
        elif kind == "frontends":
            self.frontends = frozenset(
                SvcFrontend(4, f"10.245.0.{rng.randrange(1, 4)}", 6, 80) for _ in range(rng.randrange(3))
            )

    def desired(self) -> NodeDesired:
        return NodeDesired(
            endpoints=self.endpoints, ipcache=self.ipcache, rules={}, identities={}, frontends=self.frontends
        )


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
    ipcache[moved] = (999, 0)
    ipcache[ipaddress.ip_network("172.16.0.0/12")] = (2, 1 << 24)
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
    other = {PolicyEntryKey(0, 999, 17, 53, 16): PolicyEntryValue(1, 0, 5)}
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
    cidrs = {ipaddress.ip_network(f"192.168.{i}.0/24"): (2, (1 << 24) + i) for i in range(20)}
    nodes = {ipaddress.ip_network(f"172.20.0.{i}/32"): (3, 0) for i in range(30)}
    pods = {ipaddress.ip_network(f"10.244.{i // 250}.{i % 250}/32"): (256 + i % 9, 0) for i in range(2000)}
    encoder = Encoder()
    desired = NodeDesired(endpoints={}, ipcache={**cidrs, **nodes, **pods}, rules={}, identities={})
    first = encoder.encode(desired, {}).ipcache
    rebuilt = {ipaddress.ip_network(str(n)): v for n, v in nodes.items()}
    pod = ipaddress.ip_network("10.244.99.1/32")
    moved = next(iter(pods))
    pods = {**pods, moved: (300, 0), pod: (300, 0)}  # one pod relabeled, one added
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
