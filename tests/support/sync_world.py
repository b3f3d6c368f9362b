"""A node's desired state changing at random the way the compiler changes it, for the tests that
check the incremental sync against a full one (tests/unit/test_sync_incremental.py in memory,
tests/kernel/test_sync_incremental_kernel.py against real maps)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping

from controller.compiler.desired_state import (
    EndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    SvcFrontend,
)

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class World:
    """A node's desired state that changes the way the compiler changes it: unchanged parts
    are the very objects of the previous state, changed parts new objects."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.values = [PolicyEntryValue(1, r) for r in (11, 12, 13)]
        self.entry_sets = [self._entries() for _ in range(6)]
        self.endpoints: dict[str, EndpointDesired] = {}
        self.pod_ifindex: dict[str, int] = {}
        self.ipcache: dict[IPNet, tuple[int, int, int]] = {ipaddress.ip_network("0.0.0.0/0"): (2, 0, 0)}
        self.frontends: frozenset[SvcFrontend] = frozenset()
        for i in range(12):
            self._add_pod(i)
        self.next_pod = 12
        for i in range(60):
            self.ipcache[self._remote(i)] = (300 + i % 7, 0, 0)

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
        self.ipcache[ipaddress.ip_network(f"10.244.1.{i + 10}/32")] = (256 + i % 5, 0, 0)
        self.ipcache[ipaddress.ip_network(f"fd00:10:244:1::{i + 10:x}/128")] = (256 + i % 5, 0, 0)

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
            self.ipcache = {
                **self.ipcache,
                net: (rng.randrange(256, 270), rng.choice((0, 1 << 24)), rng.choice((0, 1 << 25))),
            }
        elif kind == "prefix_new_object":  # an equal prefix, a new object (same or other value)
            net = rng.choice(list(self.ipcache))
            value = self.ipcache[net] if rng.random() < 0.5 else (2, 0, 0)
            rebuilt = {n: v for n, v in self.ipcache.items() if n != net}
            rebuilt[ipaddress.ip_network(str(net))] = value
            self.ipcache = rebuilt
        elif kind == "prefix_del" and len(self.ipcache) > 1:
            net = rng.choice(list(self.ipcache))
            self.ipcache = {n: v for n, v in self.ipcache.items() if n is not net}
        elif kind == "reorder":  # the same prefix objects in another order, one value changed
            items = list(self.ipcache.items())
            rng.shuffle(items)
            items[0] = (items[0][0], (rng.randrange(256, 270), 0, (1 << 25) + 1))
            self.ipcache = dict(items)
        elif kind == "prefix_insert":  # new prefixes in the middle, a value changed near each end
            items = list(self.ipcache.items())
            at = rng.randrange(len(items) + 1)
            fresh = [
                (ipaddress.ip_network(f"10.250.{rng.randrange(256)}.0/24"), (2, 1 << 24, 0)) for _ in range(2)
            ]
            items[at:at] = fresh
            for j in (0, len(items) - 1):
                items[j] = (items[j][0], (rng.randrange(256, 270), 0, (1 << 25) + 1))
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
                ipaddress.ip_network(f"192.168.{rng.randrange(256)}.0/24"): (2, 1 << 24, 0),
            }
        elif kind == "frontends":
            self.frontends = frozenset(
                SvcFrontend(4, f"10.245.0.{rng.randrange(1, 4)}", 6, 80) for _ in range(rng.randrange(3))
            )

    def desired(self) -> NodeDesired:
        return NodeDesired(
            endpoints=self.endpoints, ipcache=self.ipcache, rules={}, identities={}, frontends=self.frontends
        )
