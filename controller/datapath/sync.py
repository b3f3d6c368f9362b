"""Turn NodeDesired into concrete map contents and apply the difference to the kernel.

Ordering is what keeps allowed traffic flowing during an update:
  1. adds and updates, dependencies first (ipcache, policy, then endpoints: an endpoint only
     becomes isolated once the entries that allow its traffic are present);
  2. deletes, dependents first (endpoints, policy, ipcache);
  3. bump vg_config.revision, so established flows re-check against the final state only.
An allowed flow therefore never sees an intermediate state that is narrower than both the old
and the new policy. Everything up to `plan()` is pure and tested without root.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, count, islice
from operator import is_
from typing import Any, Literal, Protocol

from controller.compiler.desired_state import EndpointDesired, NodeDesired, PolicyEntryKey, PolicyEntryValue
from controller.core.errors import VethguardError
from controller.core.net import IPNetwork
from controller.core.seqdiff import equal_run
from controller.datapath import abi, bpfsys, codecs

log = logging.getLogger(__name__)

# Maps managed by sync, in dependency order (what must exist before what refers to it): an
# endpoint's slot maps to it (vg_slots) before the endpoint carries the slot, and frontends are
# deferred only once every endpoint can be named in a mark.
# The addresses to believe only where they belong (vg_local) come first and go last: a new pod's
# address is never a remote one's for an instant.
SYNCED_MAPS = ("vg_local", "vg_ipcache4", "vg_ipcache6", "vg_policy", "vg_slots", "vg_endpoints", "vg_svc")

OpKind = Literal["add", "update", "delete"]


@dataclass(frozen=True)
class Op:
    kind: OpKind
    map: str
    key: bytes
    value: bytes | None = None


KV = Mapping[bytes, bytes]


def diff(map_name: str, desired: KV, current: KV) -> tuple[list[Op], list[Op]]:
    """(adds+updates, deletes) turning `current` into `desired` for one map; sorted for determinism."""
    upserts: list[Op] = []
    if desired is current:
        return upserts, []
    get = current.get
    # Only the changed keys are sorted (an event changes a few of the ipcache's entries).
    for k in sorted(k for k, v in desired.items() if get(k) != v):
        v = desired[k]
        upserts.append(Op("add" if get(k) is None else "update", map_name, k, v))
    deletes = [Op("delete", map_name, k) for k in sorted(k for k in current if k not in desired)]
    return upserts, deletes


def plan(desired: Mapping[str, KV], current: Mapping[str, KV]) -> list[Op]:
    """All operations for all synced maps, in the safe order (see module doc)."""
    return _ordered({name: diff(name, desired.get(name, {}), current.get(name, {})) for name in SYNCED_MAPS})


def _ordered(per_map: Mapping[str, tuple[list[Op], list[Op]]]) -> list[Op]:
    """Every map's upserts in dependency order, then every map's deletes in reverse order."""
    upserts: list[Op] = []
    deletes: list[Op] = []
    for name in SYNCED_MAPS:
        upserts += per_map[name][0]
    for name in reversed(SYNCED_MAPS):
        deletes += per_map[name][1]
    return upserts + deletes


def endpoint_flags(
    ingress_isolated: bool, egress_isolated: bool, ingress_audit: bool = False, egress_audit: bool = False
) -> int:
    return (
        (abi.EP_F_INGRESS_ISOLATED if ingress_isolated else 0)
        | (abi.EP_F_EGRESS_ISOLATED if egress_isolated else 0)
        | (abi.EP_F_INGRESS_AUDIT if ingress_audit else 0)
        | (abi.EP_F_EGRESS_AUDIT if egress_audit else 0)
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

    source: Mapping[IPNetwork, tuple[int, int]]
    prefixes: list[IPNetwork]
    values: list[tuple[int, int]]
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

    def encode(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> Encoding:
        endpoints: dict[bytes, bytes] = {}
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
            if hit is None or hit.ep is not ep or hit.ifindex != ifindex:
                hit = _encode_endpoint(ep, ifindex, hit)
            kept[pod] = hit
            endpoints[hit.key] = hit.value
            local.update(hit.local)
            if hit.policy is not None:
                had = policy.get(ifindex)
                # Two pods claiming one ifindex: later pods' entries win, as in one flat map.
                policy[ifindex] = hit.policy if had is None else {**had, **hit.policy}
        self._endpoints = kept
        self._ipcache = ipcache = self._encode_ipcache(desired.ipcache)
        frontends = getattr(desired, "frontends", ())
        if self._frontends is None or self._frontends[0] != frontends:
            svc: dict[bytes, bytes] = {}
            for fe in frontends:
                kb, vb = codecs.encode_svc(fe.family, fe.address, fe.proto, fe.port)
                svc[kb] = vb
            self._frontends = (frontends, svc)
        return Encoding(endpoints, policy, ipcache, self._frontends[1], local)

    def _encode_ipcache(self, ipcache: Mapping[IPNetwork, tuple[int, int]]) -> IpcacheEncoding:
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
                    kb, vb = codecs.encode_ipcache(nets[j], values[j][0], values[j][1])
                    (v4 if len(kb) == IPCACHE4_KEY_SIZE else v6)[kb] = vb
                    touched.add(kb)
                    gap_keys[j] = kb
        # An equal prefix in a run: its key stays, its value may have changed.
        for a, b, offset in runs:
            for x in _unequal_positions(values, a, old_values, a - offset, b - a):
                j = a + x
                kb, vb = codecs.encode_ipcache(nets[j], values[j][0], values[j][1])
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
    ipcache: Mapping[IPNetwork, tuple[int, int]],
    nets: list[IPNetwork],
    values: list[tuple[int, int]],
) -> IpcacheEncoding:
    keys: list[bytes] = []
    v4: dict[bytes, bytes] = {}
    v6: dict[bytes, bytes] = {}
    for net, (identity, cidr_identity) in zip(nets, values, strict=True):
        kb, vb = codecs.encode_ipcache(net, identity, cidr_identity)
        keys.append(kb)
        (v4 if len(kb) == IPCACHE4_KEY_SIZE else v6)[kb] = vb
    return IpcacheEncoding(ipcache, nets, values, keys, v4, v6, next(_serials))


def _encode_endpoint(
    ep: EndpointDesired | None, ifindex: int, previous: _EndpointEncoding | None
) -> _EndpointEncoding:
    if ep is None:
        k, v = codecs.encode_endpoint(ifindex, 0, PENDING_FLAGS, None, None)
        return _EndpointEncoding(None, ifindex, k, v, None, None)
    k, v = codecs.encode_endpoint(
        ifindex,
        ep.identity,
        endpoint_flags(ep.ingress_isolated, ep.egress_isolated, ep.ingress_audit, ep.egress_audit),
        ep.ipv4,
        ep.ipv6,
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
    return _EndpointEncoding(ep, ifindex, k, v, entries, policy, local)


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


class MapLike(Protocol):
    def items(self) -> dict[bytes, bytes]: ...
    def update(self, key: bytes, value: bytes, flags: int = ...) -> None: ...
    def delete(self, key: bytes) -> bool: ...
    def key_list(self) -> list[bytes]: ...
    def lookup(self, key: bytes) -> bytes | None: ...


@dataclass(frozen=True)
class SyncResult:
    adds: int
    updates: int
    deletes: int
    revision: int  # vg_config revision after the sync
    ct_deleted: int = 0  # conntrack entries of removed endpoints
    ops: tuple[Op, ...] = field(default=(), repr=False)
    # Endpoints left failed closed (PENDING) because a map was full: ep_id -> map name.
    full: dict[int, str] = field(default_factory=dict)
    # Operations not applied because their map was full (or their endpoint had already failed).
    skipped: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.adds or self.updates or self.deletes)


# bpf(2) update errors that mean "no room": hash maps (E2BIG), LPM tries (ENOSPC),
# non-preallocated maps whose element allocation failed (ENOMEM).
MAP_FULL_ERRNOS = frozenset({errno.E2BIG, errno.ENOSPC, errno.ENOMEM})


class MapFullError(VethguardError):
    """A sync could not insert into `map_name`; the affected endpoints were left failed closed.

    `endpoint` is the first affected pod ("ns/name"); `endpoints` all of them. A full ipcache
    concerns every endpoint of the node (a missing except-prefix could widen an ipBlock rule),
    so all of them are named. Everything that fitted was applied; the affected endpoints carry
    EP_F_PENDING (drop all but always-allowed traffic) until a later sync finds room, which
    needs nothing special: the next sync's diff simply retries the missing entries.
    """

    def __init__(self, map_name: str, endpoint: str | None, endpoints: tuple[str, ...], result: SyncResult):
        self.map_name = map_name
        self.endpoint = endpoint
        self.endpoints = endpoints
        self.result = result
        names = ", ".join(endpoints[:5]) + (f" and {len(endpoints) - 5} more" if len(endpoints) > 5 else "")
        super().__init__(
            f"BPF map {map_name} is full: endpoint(s) {names or '(none)'} left failed closed (pending) "
            f"until there is room; {result.skipped} map operations were not applied"
        )


def read_revision(config: MapLike) -> int:
    raw = config.lookup(codecs.u32_key(0))
    return abi.Config.from_bytes(raw).revision if raw else 0


def bump_revision(config: MapLike) -> int:
    raw = config.lookup(codecs.u32_key(0))
    cfg = abi.Config.from_bytes(raw) if raw else abi.Config()
    cfg.revision = (cfg.revision + 1) & 0xFFFFFFFF or 1  # 0 is "never synced"
    config.update(codecs.u32_key(0), bytes(cfg))
    return int(cfg.revision)


def _ep_id_of_ct_key(kb: bytes) -> int:
    return int(abi.CtKey.from_bytes(kb).ep_id)


def _ep_id_of_counter_key(kb: bytes) -> int:
    return int(abi.CounterKey.from_bytes(kb).ep_id)


def _op_ep_id(op: Op) -> int | None:
    """The endpoint an operation belongs to (None: ipcache, shared by the node)."""
    if op.map == "vg_policy":
        return int(abi.PolicyKey.from_bytes(op.key).ep_id)
    if op.map == "vg_endpoints":
        return int.from_bytes(op.key[:4], sys.byteorder)
    if op.map == "vg_slots" and op.value is not None:
        return int.from_bytes(op.value[:4], sys.byteorder)
    return None


def pending_value(endpoint_value: bytes) -> bytes:
    """The endpoint with its identity and addresses kept but failed closed (PENDING)."""
    info = abi.EndpointInfo.from_bytes(endpoint_value)
    info.flags = PENDING_FLAGS
    return bytes(info)


class _FullTracker:
    """Which endpoints must stay failed closed because an insert found its map full."""

    def __init__(self, desired_endpoints: KV, endpoints_map: MapLike) -> None:
        self.desired_endpoints = desired_endpoints
        self.endpoints_map = endpoints_map
        self.failed: dict[int, str] = {}
        self.node_wide: str | None = None
        self.skipped = 0

    def is_failed(self, ep_id: int | None) -> bool:
        return self.node_wide is not None or (ep_id is not None and ep_id in self.failed)

    def fail(self, map_name: str, ep_id: int | None) -> None:
        """Record the failure and close the endpoint(s) at once, before any further operation."""
        if ep_id is None:
            self.node_wide = self.node_wide or map_name
            targets = [int.from_bytes(k[:4], sys.byteorder) for k in self.desired_endpoints]
        else:
            targets = [ep_id]
        for ep in targets:
            self.failed.setdefault(ep, map_name)
            self._close(ep)

    def _close(self, ep_id: int) -> None:
        key = codecs.u32_key(ep_id)
        value = self.desired_endpoints.get(key)
        if value is None:
            return
        try:
            self.endpoints_map.update(key, pending_value(value))
        except bpfsys.BpfError as e:
            # No room for the endpoint itself: an attached veth without an endpoint entry
            # drops everything (DROP_NO_ENDPOINT), which is failed closed as well.
            if e.errno not in MAP_FULL_ERRNOS:
                raise


def _apply_upsert(op: Op, m: MapLike, full: _FullTracker) -> None:
    assert op.value is not None
    ep_id = _op_ep_id(op)
    value = op.value
    if op.map == "vg_endpoints" and full.is_failed(ep_id):
        value = pending_value(value)  # never lift PENDING of an endpoint whose entries are missing
    elif op.map == "vg_policy" and full.is_failed(ep_id) and full.node_wide is None:
        full.skipped += 1  # its map is full already: do not spend syscalls failing again
        return
    try:
        m.update(op.key, value)
    except bpfsys.BpfError as e:
        if e.errno not in MAP_FULL_ERRNOS:
            raise
        full.skipped += 1
        # A frontend that does not fit is judged before DNAT, on its own address, like any
        # other destination: no endpoint has to close for it.
        if op.map != "vg_svc":
            full.fail(op.map, ep_id)


def apply(
    desired: Mapping[str, KV], kernel: Mapping[str, MapLike], *, cleanup_removed: bool = True
) -> SyncResult:
    """Diff against what the kernel maps hold now and apply in the safe order.

    An insert that finds its map full never leaves an endpoint half-applied and open: the
    endpoint is rewritten PENDING immediately (ipcache: every endpoint), the remaining
    operations still run (deletes free room for the next attempt), and result.full says who
    was closed. Datapath.sync turns that into MapFullError.
    """
    return _apply_read(desired, kernel, cleanup_removed)[0]


def read_current(kernel: Mapping[str, MapLike]) -> dict[str, dict[bytes, bytes]]:
    """What the synced maps hold now (one bpf syscall per key and per value)."""
    return {name: kernel[name].items() for name in SYNCED_MAPS}


def _apply_read(
    desired: Mapping[str, KV], kernel: Mapping[str, MapLike], cleanup_removed: bool
) -> tuple[SyncResult, dict[bytes, bytes], dict[bytes, bytes]]:
    """apply(): the diff against the kernel maps as read now; also the endpoints (slots
    assigned) and vg_slots written."""
    current = read_current(kernel)
    endpoints, slots = assign_slots(desired.get("vg_endpoints", {}), current.get("vg_endpoints", {}))
    ops = plan({**desired, "vg_endpoints": endpoints, "vg_slots": slots}, current)
    return (
        _execute(ops, endpoints, current.get("vg_endpoints", {}), kernel, cleanup_removed),
        endpoints,
        slots,
    )


@dataclass(frozen=True, eq=False)
class Written:
    """What the synced maps hold after a sync that applied everything: `encoding`, with the
    endpoints' slots assigned (`endpoints`) and vg_slots (`slots`)."""

    encoding: Encoding
    endpoints: dict[bytes, bytes]
    slots: dict[bytes, bytes]


def apply_encoding(
    encoding: Encoding,
    kernel: Mapping[str, MapLike],
    previous: Written | None = None,
    *,
    cleanup_removed: bool = True,
) -> tuple[SyncResult, Written | None]:
    """apply() of an Encoder's output. Without `previous` it is apply(): the diff is against
    what the kernel maps hold (read entry by entry). With `previous` (what an earlier
    apply_encoding wrote, all of it) the diff is against that, and only over what differs:
    the parts of `encoding` that are the very objects `previous` wrote are skipped (an
    endpoint's policy entries, the ipcache, the frontends), and a changed ipcache is compared
    on the keys the Encoder touched since `previous` when it was derived from it. The
    operations, their order and the result are those apply() gives for the same contents.

    Returns the result and what the maps hold afterwards (None after a map-full sync).
    """
    if previous is None:
        result, endpoints, slots = _apply_read(encoding.maps(), kernel, cleanup_removed)
    else:
        old = previous.encoding
        if encoding.endpoints == old.endpoints:
            endpoints, slots = previous.endpoints, previous.slots  # assign_slots would repeat them
        else:
            endpoints, slots = assign_slots(encoding.endpoints, previous.endpoints)
        ops = _ordered(
            {
                "vg_local": diff("vg_local", encoding.local, old.local),
                "vg_ipcache4": _diff_ipcache("vg_ipcache4", encoding.ipcache, old.ipcache),
                "vg_ipcache6": _diff_ipcache("vg_ipcache6", encoding.ipcache, old.ipcache),
                "vg_policy": _diff_policy(encoding.policy, old.policy),
                "vg_slots": diff("vg_slots", slots, previous.slots),
                "vg_endpoints": diff("vg_endpoints", endpoints, previous.endpoints),
                "vg_svc": diff("vg_svc", encoding.svc, old.svc),
            }
        )
        result = _execute(ops, endpoints, previous.endpoints, kernel, cleanup_removed)
    if result.full or result.skipped:
        return result, None
    return result, Written(encoding, endpoints, slots)


def _diff_ipcache(name: str, new: IpcacheEncoding, old: IpcacheEncoding) -> tuple[list[Op], list[Op]]:
    """diff() of one ipcache map; over `new.touched` only when `new` was derived from `old`."""
    want, had = (new.v4, old.v4) if name == "vg_ipcache4" else (new.v6, old.v6)
    if want is had:
        return [], []
    if new.base is None or new.base != old.serial:
        return diff(name, want, had)
    get = had.get
    upserts = [
        Op("add" if get(k) is None else "update", name, k, want[k])
        for k in sorted(k for k in new.touched if k in want and get(k) != want[k])
    ]
    deletes = [Op("delete", name, k) for k in sorted(k for k in new.touched if k in had and k not in want)]
    return upserts, deletes


def _diff_policy(
    new: Mapping[int, Mapping[bytes, bytes]], old: Mapping[int, Mapping[bytes, bytes]]
) -> tuple[list[Op], list[Op]]:
    """diff() of vg_policy, endpoint by endpoint (every key holds its ep_id, so the endpoints'
    keys are disjoint); an endpoint whose entries are the very mapping written is skipped."""
    changed: list[bytes] = []
    removed: list[bytes] = []
    merged_want: dict[bytes, bytes] = {}
    merged_had: dict[bytes, bytes] = {}
    for ep_id, want in new.items():
        had = old.get(ep_id)
        if had is want:
            continue
        if had is None:
            had = {}
        get = had.get
        changed.extend(k for k, v in want.items() if get(k) != v)
        removed.extend(k for k in had if k not in want)
        merged_want.update(want)
        merged_had.update(had)
    for ep_id, had in old.items():
        if ep_id not in new:
            removed.extend(had)
            merged_had.update(had)
    get = merged_had.get
    upserts = [
        Op("add" if get(k) is None else "update", "vg_policy", k, merged_want[k]) for k in sorted(changed)
    ]
    return upserts, [Op("delete", "vg_policy", k) for k in sorted(removed)]


def _execute(
    ops: list[Op], endpoints: KV, current_endpoints: KV, kernel: Mapping[str, MapLike], cleanup_removed: bool
) -> SyncResult:
    """Run the planned operations (`endpoints`: the desired vg_endpoints, slots assigned;
    `current_endpoints`: what vg_endpoints held), bump the revision if anything changed and
    remove the conntrack entries and counters of removed endpoints."""
    full = _FullTracker(endpoints, kernel["vg_endpoints"])
    for op in ops:
        m = kernel[op.map]
        if op.kind == "delete":
            m.delete(op.key)
        else:
            _apply_upsert(op, m, full)
    removed_eps = {
        abi.EndpointInfo.from_bytes(current_endpoints[op.key]).ep_id
        for op in ops
        if op.kind == "delete" and op.map == "vg_endpoints"
    }
    revision = bump_revision(kernel["vg_config"]) if ops else read_revision(kernel["vg_config"])
    ct_deleted = 0
    if removed_eps and cleanup_removed:
        # Flows of a deleted pod must not be matched if its ifindex is reused by a new pod.
        if "vg_ct" in kernel:
            for kb in kernel["vg_ct"].key_list():
                if _ep_id_of_ct_key(kb) in removed_eps:
                    ct_deleted += kernel["vg_ct"].delete(kb)
        if "vg_counters" in kernel:
            for kb in kernel["vg_counters"].key_list():
                if _ep_id_of_counter_key(kb) in removed_eps:
                    kernel["vg_counters"].delete(kb)
    result = SyncResult(
        adds=sum(op.kind == "add" for op in ops),
        updates=sum(op.kind == "update" for op in ops),
        deletes=sum(op.kind == "delete" for op in ops),
        revision=revision,
        ct_deleted=ct_deleted,
        ops=tuple(ops),
        full=dict(full.failed),
        skipped=full.skipped,
    )
    if result.changed:
        log.info(
            "datapath sync: %d adds, %d updates, %d deletes, revision %d, %d ct entries removed",
            result.adds,
            result.updates,
            result.deletes,
            result.revision,
            result.ct_deleted,
        )
    return result


@dataclass(frozen=True)
class KernelState:
    """What the maps hold, decoded."""

    revision: int
    endpoints: dict[int, codecs.Endpoint]  # by ifindex
    ipcache: dict[IPNetwork, tuple[int, int]]
    policy: dict[tuple[int, PolicyEntryKey], PolicyEntryValue]  # (ep_id, key) -> value
    ct: list[codecs.CtEntry]
    frontends: tuple[tuple[int, str, int, int], ...] = ()  # vg_svc: (family, address, proto, port)


def dump(kernel: Mapping[str, MapLike]) -> KernelState:
    endpoints = {}
    for kb, vb in kernel["vg_endpoints"].items().items():
        ep = codecs.decode_endpoint(kb, vb)
        endpoints[ep.ifindex] = ep
    ipcache: dict[IPNetwork, tuple[int, int]] = {}
    for name in ("vg_ipcache4", "vg_ipcache6"):
        for kb, vb in kernel[name].items().items():
            net, val = codecs.decode_ipcache(kb, vb)
            ipcache[net] = val
    policy = {}
    for kb, vb in kernel["vg_policy"].items().items():
        ep_id, pk, pv = codecs.decode_policy(kb, vb)
        policy[(ep_id, pk)] = pv
    ct = [codecs.decode_ct(kb, vb) for kb, vb in kernel["vg_ct"].items().items()]
    frontends = (
        tuple(sorted(codecs.decode_svc(kb) for kb in kernel["vg_svc"].items())) if "vg_svc" in kernel else ()
    )
    return KernelState(
        revision=read_revision(kernel["vg_config"]),
        endpoints=endpoints,
        ipcache=ipcache,
        policy=policy,
        ct=ct,
        frontends=frontends,
    )


def counters(counter_map: bpfsys.BpfMap) -> dict[tuple[int, int, int], tuple[int, int]]:
    """(ep_id, reason, dir) -> (packets, bytes), summed over CPUs."""
    out: dict[tuple[int, int, int], tuple[int, int]] = {}
    for kb in counter_map.key_list():
        per_cpu = counter_map.lookup_percpu(kb)
        if per_cpu is None:
            continue
        k = abi.CounterKey.from_bytes(kb)
        pk = by = 0
        for raw in per_cpu:
            v = abi.CounterValue.from_bytes(raw)
            pk += v.packets
            by += v.bytes
        out[(int(k.ep_id), int(k.reason), int(k.dir))] = (pk, by)
    return out


def ipnet(s: str) -> IPNetwork:
    return ipaddress.ip_network(s, strict=False)


@dataclass(frozen=True)
class GcResult:
    ct_deleted: int
    frag_deleted: int
    ct_left: int


def _expires_ns(map_name: str, value: bytes) -> int:
    if map_name == "vg_ct":
        return int(abi.CtValue.from_bytes(value).expires_ns)
    return int(abi.FragValue.from_bytes(value).expires_ns)


def collect_expired(kernel: Mapping[str, MapLike], now_ns: int) -> GcResult:
    """Delete vg_ct and vg_frag entries whose deadline (vg_now(): CLOCK_MONOTONIC, tick resolution) passed.

    The programs already treat an expired entry as a miss, so this only returns the memory (an
    LRU map evicts by age of use, not by deadline). Each entry is read again right before its
    delete and kept if a packet refreshed it meanwhile; the remaining race (a packet re-creating
    the entry between that read and the delete) only makes that flow's next packet new again,
    judged by policy: it can end a flow early, never let one in.
    """
    deleted = {"vg_ct": 0, "vg_frag": 0}
    kept = {"vg_ct": 0, "vg_frag": 0}
    for name in deleted:
        if name not in kernel:
            continue
        m = kernel[name]
        for kb, vb in m.items().items():
            if _expires_ns(name, vb) <= now_ns:
                again = m.lookup(kb)
                if again is not None and _expires_ns(name, again) <= now_ns and m.delete(kb):
                    deleted[name] += 1
                    continue
            kept[name] += 1
    return GcResult(ct_deleted=deleted["vg_ct"], frag_deleted=deleted["vg_frag"], ct_left=kept["vg_ct"])
