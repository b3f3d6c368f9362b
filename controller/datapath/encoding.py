"""NodeDesired -> the bytes of every synced map's keys and values (pure): endpoint flags and
slots, the policy and ipcache encodings, and an Encoder that re-encodes only what changed since
its last encoding (aligning the new policy entry sequence with the old one)."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, count, islice
from operator import is_
from typing import Any

from controller.compiler.desired_state import (
    EndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
)
from controller.core.net import L4_PROTOCOLS, IPNetwork
from controller.core.seqdiff import equal_run
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, TIER_PROFILE_BIT
from controller.datapath import abi, codecs
from controller.datapath.profile_homes import ProfileHomes

log = logging.getLogger(__name__)

KV = Mapping[bytes, bytes]  # one map's contents: key bytes -> value bytes


def endpoint_flags(
    ingress_isolated: bool,
    egress_isolated: bool,
    ingress_audit: bool = False,
    egress_audit: bool = False,
    ingress_tiered: bool = False,
    egress_tiered: bool = False,
    ingress_calico: bool = False,
    egress_calico: bool = False,
    calico_log: bool = False,
    dns: bool = False,
) -> int:
    return (
        (abi.EP_F_INGRESS_ISOLATED if ingress_isolated else 0)
        | (abi.EP_F_EGRESS_ISOLATED if egress_isolated else 0)
        | (abi.EP_F_INGRESS_AUDIT if ingress_audit else 0)
        | (abi.EP_F_EGRESS_AUDIT if egress_audit else 0)
        | (abi.EP_F_INGRESS_TIERED if ingress_tiered else 0)
        | (abi.EP_F_EGRESS_TIERED if egress_tiered else 0)
        | (abi.EP_F_INGRESS_CALICO if ingress_calico else 0)
        | (abi.EP_F_EGRESS_CALICO if egress_calico else 0)
        | (abi.EP_F_CALICO_LOG if calico_log else 0)
        | (abi.EP_F_DNS if dns else 0)
    )


# A pod with a veth but no computed policy yet: drop everything but the always-allowed classes.
PENDING_FLAGS = abi.EP_F_PENDING | abi.EP_F_INGRESS_ISOLATED | abi.EP_F_EGRESS_ISOLATED


IPCACHE4_KEY_SIZE = ctypes.sizeof(abi.Ipcache4Key)
_serials = count(1)


@dataclass(frozen=True, eq=False)
class IpcacheEncoding:
    """The vg_ipcache4/6 bytes of one NodeDesired.ipcache mapping, and per position of that
    mapping (in its iteration order) the prefix object, its value and its key bytes.

    `touched` lists the keys whose entry may differ from those of the encoding numbered
    `base` (None: unknown, diff it all). Never mutated once built: a sync's record of what it
    wrote may share it.
    """

    source: Mapping[IPNetwork, tuple[int, int, int]]
    prefixes: list[IPNetwork]
    values: list[tuple[int, int, int]]
    keys: list[bytes]
    v4: dict[bytes, bytes]
    v6: dict[bytes, bytes]
    serial: int
    base: int | None = None
    touched: frozenset[bytes] = frozenset()


@dataclass(frozen=True, eq=False)
class Encoding:
    """Concrete map contents of one NodeDesired, grouped by what changes together, so that an
    incremental sync diffs only the parts that are not the very objects it wrote last time.
    Never mutated once built (see Encoder)."""

    endpoints: dict[bytes, bytes]  # vg_endpoints, slots not assigned yet (0)
    policy: dict[int, Mapping[bytes, bytes]]  # ep_id -> that endpoint's vg_policy entries
    ipcache: IpcacheEncoding
    svc: dict[bytes, bytes]
    local: dict[bytes, bytes]  # vg_local: the node's addresses and its pods'
    hosteps: dict[bytes, bytes] = dataclasses.field(default_factory=dict)  # vg_hosteps
    failsafe: dict[bytes, bytes] = dataclasses.field(default_factory=dict)  # vg_failsafe
    # ep_id -> (an earlier encoding of its entries, the keys that may differ from it): for the
    # tier profiles the encoder patched, so the sync compares only those keys
    policy_touched: dict[int, tuple[Mapping[bytes, bytes], frozenset[bytes]]] = dataclasses.field(
        default_factory=dict
    )

    def maps(self) -> dict[str, dict[bytes, bytes]]:
        """Key/value bytes per synced map (vg_slots empty: apply assigns the slots). The
        ipcache dicts are the encoding's own: read them, never change them."""
        policy: dict[bytes, bytes] = {}
        for entries in self.policy.values():
            policy.update(entries)
        return {
            "vg_local": dict(self.local),
            "vg_ipcache4": self.ipcache.v4,
            "vg_ipcache6": self.ipcache.v6,
            "vg_policy": policy,
            "vg_slots": {},
            "vg_endpoints": dict(self.endpoints),
            "vg_svc": dict(self.svc),
            "vg_hosteps": dict(self.hosteps),
            "vg_failsafe": dict(self.failsafe),
        }


@dataclass(frozen=True, eq=False)
class _EndpointEncoding:
    """One pod's vg_endpoints entry and vg_policy entries, and what they were encoded from."""

    ep: EndpointDesired | None
    ifindex: int
    key: bytes
    value: bytes
    entries: Mapping[PolicyEntryKey, PolicyEntryValue] | None
    policy: Mapping[bytes, bytes] | None  # None: no policy entries (a PENDING endpoint)
    local: tuple[tuple[bytes, bytes], ...] = ()  # its addresses' vg_local entries
    home: int = 0  # its tier profile's home id (the value's tier_profile)


class Encoder:
    """desired_maps() that reuses its previous call's bytes for what did not change.

    The compiler hands out the same objects for what it did not recompute, and NodeDesired's
    mappings are never mutated, so "the same object as last time" means "the same contents":
    - a pod whose EndpointDesired object and ifindex are those of the previous call keeps its
      encoded endpoint and policy entries; one whose `entries` mapping is the same object (and
      ifindex the same) keeps its policy entries;
    - the ipcache: the same mapping object keeps the whole encoding; otherwise it is aligned
      with the previous one (align(): runs of equal prefixes found by slice comparisons, C
      loops), only the prefixes outside the runs or with a changed value are encoded, and the
      result records which keys it touched, so the sync diffs only those;
    - equal frontends keep their encoding.
    """

    def __init__(self) -> None:
        self._endpoints: dict[str, _EndpointEncoding] = {}
        self._ipcache: IpcacheEncoding | None = None
        self._frontends: tuple[Any, dict[bytes, bytes]] | None = None
        self._host: tuple[tuple[str, ...], dict[bytes, bytes]] | None = None
        # where each tier profile is written (its home id, spares: controller/datapath/profile_homes.py)
        self.homes = ProfileHomes()
        self.policy_capacity: int | None = None  # vg_policy's max_entries: what spares may use

    def encode(
        self,
        desired: NodeDesired,
        pod_ifindex: Mapping[str, int],
        hep_ifindexes: Mapping[str, Sequence[int]] | None = None,
    ) -> Encoding:
        """`hep_ifindexes`: the interfaces each host endpoint of `desired` is on (by name)."""
        endpoints: dict[bytes, bytes] = {}
        # Tier profiles first: endpoints and host endpoints name their homes.
        placed = self.homes.place(
            getattr(desired, "tier_profiles", {}), getattr(desired, "tier_profile_changes", {})
        )
        homes = placed.homes
        policy: dict[int, Mapping[bytes, bytes]] = {}
        host = tuple(getattr(desired, "host_addresses", ()))
        if self._host is None or self._host[0] != host:
            self._host = (host, dict(codecs.encode_local(a, 0) for a in host))
        local = dict(self._host[1])
        previous = self._endpoints
        kept: dict[str, _EndpointEncoding] = {}
        desired_eps = desired.endpoints
        for pod, ifindex in pod_ifindex.items():
            ep = desired_eps.get(pod)
            hit = previous.get(pod)
            home = homes.get(ep.tier_profile, 0) if ep is not None and ep.tier_profile else 0
            if hit is None or hit.ep is not ep or hit.ifindex != ifindex or hit.home != home:
                hit = _encode_endpoint(ep, ifindex, hit, home)
            kept[pod] = hit
            endpoints[hit.key] = hit.value
            local.update(hit.local)
            if hit.policy is not None:
                had = policy.get(ifindex)
                # Two pods claiming one ifindex: later pods' entries win, as in one flat map.
                policy[ifindex] = hit.policy if had is None else {**had, **hit.policy}
        self._endpoints = kept
        # Tier profiles: keyed in vg_policy by their home id (TIER_PROFILE_BIT set) like an endpoint.
        # Spares use what the map has beyond everything else and one largest profile.
        dropped: set[int] = set()
        room = self._spare_room(sum(len(p) for p in policy.values()))
        if room is not None and self.homes.spares:
            dropped = self.homes.fit(room)
        policy.update((k, v) for k, v in placed.policy.items() if k not in dropped)
        self._ipcache = ipcache = self._encode_ipcache(desired.ipcache)
        frontends = getattr(desired, "frontends", ())
        if self._frontends is None or self._frontends[0] != frontends:
            svc: dict[bytes, bytes] = {}
            for fe in frontends:
                kb, vb = codecs.encode_svc(fe.family, fe.address, fe.proto, fe.port)
                svc[kb] = vb
            self._frontends = (frontends, svc)
        hosteps: dict[bytes, bytes] = {}
        for name, hep in sorted(getattr(desired, "host_endpoints", {}).items()):
            for ifindex in (hep_ifindexes or {}).get(name, ()):
                kb, vb = codecs.encode_hostep(ifindex, hep, homes)
                hosteps[kb] = vb
        failsafe: dict[bytes, bytes] = {}  # only where a host endpoint needs them
        for direction, ports in (
            (DIR_INGRESS, getattr(desired, "failsafe_inbound", ())),
            (DIR_EGRESS, getattr(desired, "failsafe_outbound", ())),
        ):
            for proto, port in ports if hosteps else ():
                kb, vb = codecs.encode_failsafe(L4_PROTOCOLS[proto], port, direction)
                failsafe[kb] = vb
        return Encoding(
            endpoints, policy, ipcache, self._frontends[1], local, hosteps, failsafe, placed.touched
        )

    def with_twins(self, last: Encoding, limit: int = 1) -> Encoding | None:
        """`last` (this encoder's latest encoding) plus spare copies of up to `limit` tier
        profiles (ProfileHomes.twins); None when none is made."""
        policy = {k: v for k, v in last.policy.items() if not k & TIER_PROFILE_BIT}
        if not self.homes.twins(limit, self._spare_room(sum(map(len, policy.values())))):
            return None
        policy.update(self.homes.policy())
        return dataclasses.replace(last, policy=policy, policy_touched={})

    def _spare_room(self, others: int) -> int | None:
        """vg_policy entries spare profile homes may hold beside `others` (the endpoints' own
        entries), the live profiles and one largest profile (the room a re-key written whole
        needs); None: the capacity is not known."""
        if self.policy_capacity is None:
            return None
        live, largest = self.homes.live_size()
        return max(0, self.policy_capacity - others - live - largest)

    def _encode_ipcache(self, ipcache: Mapping[IPNetwork, tuple[int, int, int]]) -> IpcacheEncoding:
        last = self._ipcache
        if last is not None and ipcache is last.source:
            return last
        nets = list(ipcache)
        values = list(ipcache.values())
        if last is None:
            return _encode_ipcache_fully(ipcache, nets, values)
        # The compiler keeps the prefixes, and their order, of what it did not change: runs
        # of equal prefixes are aligned position by position (slice compares, C loops), and
        # only the positions outside them are matched by object (see align()).
        old_nets, old_values, old_keys = last.prefixes, last.values, last.keys
        runs, new_gaps, old_gaps = align(nets, old_nets)
        v4, v6 = dict(last.v4), dict(last.v6)
        touched: set[bytes] = set()
        gap_keys: dict[int, bytes] = {}  # new position outside the runs -> its key
        if new_gaps or old_gaps:
            new_ids = {id(nets[j]) for a, b in new_gaps for j in range(a, b)}
            old_at = {id(old_nets[j]): j for a, b in old_gaps for j in range(a, b)}
            # Removals first: a new prefix object may take over the key of a removed equal one.
            for j in old_at.values():
                if id(old_nets[j]) not in new_ids:
                    kb = old_keys[j]
                    (v4 if len(kb) == IPCACHE4_KEY_SIZE else v6).pop(kb, None)
                    touched.add(kb)
            for a, b in new_gaps:
                for j in range(a, b):
                    o = old_at.get(id(nets[j]))
                    if o is not None and old_values[o] == values[j]:
                        gap_keys[j] = old_keys[o]
                        continue
                    kb, vb = codecs.encode_ipcache(nets[j], *values[j])
                    (v4 if len(kb) == IPCACHE4_KEY_SIZE else v6)[kb] = vb
                    touched.add(kb)
                    gap_keys[j] = kb
        # An equal prefix in a run: its key stays, its value may have changed.
        for a, b, offset in runs:
            for x in _unequal_positions(values, a, old_values, a - offset, b - a):
                j = a + x
                kb, vb = codecs.encode_ipcache(nets[j], *values[j])
                (v4 if len(kb) == IPCACHE4_KEY_SIZE else v6)[kb] = vb
                touched.add(kb)
        segments: list[tuple[int, int, int | None]] = [*runs, *((a, b, None) for a, b in new_gaps)]
        keys: list[bytes] = []
        for a, b, shift in sorted(segments, key=lambda seg: seg[0]):
            if shift is None:
                keys += [gap_keys[j] for j in range(a, b)]
            else:
                keys += old_keys[a - shift : b - shift]
        return IpcacheEncoding(
            ipcache, nets, values, keys, v4, v6, next(_serials), last.serial, frozenset(touched)
        )


# align(): at most this many mismatched stretches are stepped over before the rest is left to
# matching by object, and how far ahead a stretch's end is looked for by object.
MAX_ALIGN_GAPS = 32
ALIGN_LOOKAHEAD = 64


def align(
    new: Sequence[Any], old: Sequence[Any]
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Positions of `new` that hold an item equal to the one `old` holds at an aligned position.

    Returns (runs, new_gaps, old_gaps): runs (a, b, offset) say new[j] == old[j - offset] for
    a <= j < b; new_gaps and old_gaps are the [a, b) ranges of positions in no run. Runs are
    found by comparing slices (equal_run); after a mismatch the next common object is looked
    for within ALIGN_LOOKAHEAD positions of both (an entry added, removed or replaced), else
    at the same offset further on (a block of replaced entries); after MAX_ALIGN_GAPS such
    stretches the rest is aligned from the back only. So the positions outside the runs are
    about those an event added, removed or replaced, not the size of the lists. Positions
    advance in both lists, so with distinct items (a mapping's keys) an item is in at most
    one run.
    """
    n_new, n_old = len(new), len(old)
    runs: list[tuple[int, int, int]] = []
    new_gaps: list[tuple[int, int]] = []
    old_gaps: list[tuple[int, int]] = []
    i = j = 0  # next unaligned position in new, old
    for _ in range(MAX_ALIGN_GAPS):
        k = equal_run(new, i, old, j, min(n_new - i, n_old - j))
        if k:
            runs.append((i, i + k, i - j))
            i, j = i + k, j + k
        if i >= n_new or j >= n_old:
            break
        ahead = {id(old[x]): x for x in range(j, min(n_old, j + ALIGN_LOOKAHEAD))}
        found = next(
            (
                (y, ahead[id(new[y])])
                for y in range(i, min(n_new, i + ALIGN_LOOKAHEAD))
                if id(new[y]) in ahead
            ),
            None,
        )
        if found is None:
            again = map(is_, islice(new, i + 1, None), islice(old, j + 1, None))
            k = next(compress(count(1), again), 0)
            if not k:
                break
            found = (i + k, j + k)
        y, x = found
        if y > i:
            new_gaps.append((i, y))
        if x > j:
            old_gaps.append((j, x))
        i, j = y, x
    # The rest, from the back: new[n_new - 1 - k] against old[n_old - 1 - k].
    k = equal_run(new, n_new, old, n_old, min(n_new - i, n_old - j), step=-1)
    if k:
        runs.append((n_new - k, n_new, n_new - n_old))
    if i < n_new - k:
        new_gaps.append((i, n_new - k))
    if j < n_old - k:
        old_gaps.append((j, n_old - k))
    return runs, new_gaps, old_gaps


def _unequal_positions(new: Sequence[Any], a: int, old: Sequence[Any], b: int, n: int) -> list[int]:
    """Positions x < n where new[a + x] != old[b + x] (equal_run from each mismatch on)."""
    out: list[int] = []
    x = 0
    while x < n:
        x += equal_run(new, a + x, old, b + x, n - x)
        if x < n:
            out.append(x)
            x += 1
    return out


def _encode_ipcache_fully(
    ipcache: Mapping[IPNetwork, tuple[int, int, int]],
    nets: list[IPNetwork],
    values: list[tuple[int, int, int]],
) -> IpcacheEncoding:
    keys: list[bytes] = []
    v4: dict[bytes, bytes] = {}
    v6: dict[bytes, bytes] = {}
    for net, value in zip(nets, values, strict=True):
        kb, vb = codecs.encode_ipcache(net, *value)
        keys.append(kb)
        (v4 if len(kb) == IPCACHE4_KEY_SIZE else v6)[kb] = vb
    return IpcacheEncoding(ipcache, nets, values, keys, v4, v6, next(_serials))


def _encode_endpoint(
    ep: EndpointDesired | None, ifindex: int, previous: _EndpointEncoding | None, home: int = 0
) -> _EndpointEncoding:
    """`home`: where its tier profile is written (ProfileHomes), 0 for none."""
    if ep is None:
        k, v = codecs.encode_endpoint(ifindex, 0, PENDING_FLAGS, None, None)
        return _EndpointEncoding(None, ifindex, k, v, None, None)
    k, v = codecs.encode_endpoint(
        ifindex,
        ep.identity,
        endpoint_flags(
            ep.ingress_isolated,
            ep.egress_isolated,
            ep.ingress_audit,
            ep.egress_audit,
            ep.ingress_tiered,
            ep.egress_tiered,
            ep.ingress_calico,
            ep.egress_calico,
            ep.calico_log,
            ep.dns,
        ),
        ep.ipv4,
        ep.ipv6,
        tier_profile=home,
    )
    local = tuple(codecs.encode_local(a, ifindex) for a in (ep.ipv4, ep.ipv6) if a)
    entries = ep.entries
    if previous is not None and previous.entries is entries and previous.ifindex == ifindex:
        policy = previous.policy
    else:
        encoded: dict[bytes, bytes] = {}
        for pk, pv in entries.items():
            kb, vb = codecs.encode_policy(ifindex, pk, pv)
            encoded[kb] = vb
        policy = encoded
    return _EndpointEncoding(ep, ifindex, k, v, entries, policy, local, home)


def desired_maps(
    desired: NodeDesired, pod_ifindex: Mapping[str, int], encoder: Encoder | None = None
) -> dict[str, dict[bytes, bytes]]:
    """Concrete key/value bytes per map. Endpoints are keyed by ifindex, with ep_id == ifindex.

    Pods of `desired` without an ifindex (no veth yet) are skipped; pods with an ifindex but no
    desired entry get a PENDING endpoint (fail closed until their policy is computed).
    `encoder`, when given, reuses its previous call's bytes for the parts of `desired` that are
    the same objects (see Encoder); the result is the same as without it.
    """
    return (encoder or Encoder()).encode(desired, pod_ifindex).maps()


def assign_slots(
    desired_endpoints: KV, current_endpoints: KV
) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(vg_endpoints with slots, vg_slots) for the desired endpoints (pure).

    A slot names an endpoint in the mark of a deferred packet (bpf/lib/service.h). Slots are
    stable: an endpoint keeps the slot the kernel map already gives it, so a packet marked just
    before a sync is still judged for the right client after it; new endpoints take the lowest
    free slots. Slots come from the kernel map, so an agent restart reproduces them.
    """
    kept: dict[bytes, int] = {}
    used: set[int] = set()
    for key in sorted(desired_endpoints):
        raw = current_endpoints.get(key)
        if raw is None:
            continue
        slot = abi.EndpointInfo.from_bytes(raw).slot
        if 0 < slot <= abi.MAX_SLOT and slot not in used:
            kept[key] = slot
            used.add(slot)
    endpoints: dict[bytes, bytes] = {}
    slots: dict[bytes, bytes] = {}
    free = 1
    for key in sorted(desired_endpoints):
        info = abi.EndpointInfo.from_bytes(desired_endpoints[key])
        slot = kept.get(key)
        if slot is None:
            while free in used:
                free += 1
            if free > abi.MAX_SLOT:
                slot = 0  # no slot: its flows to Services are dropped (fail closed)
            else:
                slot = free
                used.add(free)
        info.slot = slot
        endpoints[key] = bytes(info)
        if slot:
            slots[codecs.u32_key(slot)] = codecs.u32_key(info.ep_id)
    return endpoints, slots
