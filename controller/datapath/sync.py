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

import errno
import ipaddress
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from controller.datapath import maps
from controller.errors import VethguardError
from controller.mapstate import NodeDesired, PolicyEntryKey, PolicyEntryValue

log = logging.getLogger(__name__)

# Maps managed by sync, in dependency order (what must exist before what refers to it): an
# endpoint's slot maps to it (vg_slots) before the endpoint carries the slot, and frontends are
# deferred only once every endpoint can be named in a mark.
SYNCED_MAPS = ("vg_ipcache4", "vg_ipcache6", "vg_policy", "vg_slots", "vg_endpoints", "vg_svc")

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
    get = current.get
    # Only the changed keys are sorted (an event changes a few of the ipcache's entries).
    for k in sorted(k for k, v in desired.items() if get(k) != v):
        v = desired[k]
        upserts.append(Op("add" if get(k) is None else "update", map_name, k, v))
    deletes = [Op("delete", map_name, k) for k in sorted(k for k in current if k not in desired)]
    return upserts, deletes


def plan(desired: Mapping[str, KV], current: Mapping[str, KV]) -> list[Op]:
    """All operations for all synced maps, in the safe order (see module doc)."""
    upserts: list[Op] = []
    deletes: list[Op] = []
    per_map = {name: diff(name, desired.get(name, {}), current.get(name, {})) for name in SYNCED_MAPS}
    for name in SYNCED_MAPS:
        upserts += per_map[name][0]
    for name in reversed(SYNCED_MAPS):
        deletes += per_map[name][1]
    return upserts + deletes


def endpoint_flags(
    ingress_isolated: bool, egress_isolated: bool, ingress_audit: bool = False, egress_audit: bool = False
) -> int:
    return (
        (maps.EP_F_INGRESS_ISOLATED if ingress_isolated else 0)
        | (maps.EP_F_EGRESS_ISOLATED if egress_isolated else 0)
        | (maps.EP_F_INGRESS_AUDIT if ingress_audit else 0)
        | (maps.EP_F_EGRESS_AUDIT if egress_audit else 0)
    )


# A pod with a veth but no computed policy yet: drop everything but the always-allowed classes.
PENDING_FLAGS = maps.EP_F_PENDING | maps.EP_F_INGRESS_ISOLATED | maps.EP_F_EGRESS_ISOLATED


IpcacheEncoded = dict[int, tuple[maps.IPNetwork, tuple[int, int], bytes, bytes]]


def desired_maps(
    desired: NodeDesired, pod_ifindex: Mapping[str, int], ipcache_encoded: IpcacheEncoded | None = None
) -> dict[str, dict[bytes, bytes]]:
    """Concrete key/value bytes per map. Endpoints are keyed by ifindex, with ep_id == ifindex.

    Pods of `desired` without an ifindex (no veth yet) are skipped; pods with an ifindex but no
    desired entry get a PENDING endpoint (fail closed until their policy is computed).
    `ipcache_encoded` (id(prefix) -> (prefix, value, key bytes, value bytes)), when given, is the
    previous call's encoding of the ipcache: reused where the prefix object and its value are the
    same, and replaced by this one's.
    """
    out: dict[str, dict[bytes, bytes]] = {name: {} for name in SYNCED_MAPS}
    for pod, ifindex in pod_ifindex.items():
        ep = desired.endpoints.get(pod)
        if ep is None:
            k, v = maps.encode_endpoint(ifindex, 0, PENDING_FLAGS, None, None)
            out["vg_endpoints"][k] = v
            continue
        k, v = maps.encode_endpoint(
            ifindex,
            ep.identity,
            endpoint_flags(ep.ingress_isolated, ep.egress_isolated, ep.ingress_audit, ep.egress_audit),
            ep.ipv4,
            ep.ipv6,
        )
        out["vg_endpoints"][k] = v
        for pk, pv in ep.entries.items():
            kb, vb = maps.encode_policy(ifindex, pk, pv)
            out["vg_policy"][kb] = vb
    v4, v6 = out["vg_ipcache4"], out["vg_ipcache6"]
    if ipcache_encoded is None:
        for net, (identity, cidr_identity) in desired.ipcache.items():
            kb, vb = maps.encode_ipcache(net, identity, cidr_identity)
            (v4 if net.version == 4 else v6)[kb] = vb
    else:
        # Reuse the previous sync's bytes of every prefix whose value did not change (the
        # ipcache has an entry per pod of the cluster; an event changes a handful).
        # Keyed by the prefix object's id (the compiler reuses the pods' prefix objects between
        # compilations; hashing an ip_network runs Python code), the object kept in the value.
        previous = dict(ipcache_encoded)
        ipcache_encoded.clear()
        for net, value in desired.ipcache.items():
            hit = previous.get(id(net))
            if hit is None or hit[0] is not net or hit[1] != value:
                kb, vb = maps.encode_ipcache(net, value[0], value[1])
                hit = (net, value, kb, vb)
            ipcache_encoded[id(net)] = hit
            (v4 if net.version == 4 else v6)[hit[2]] = hit[3]
    for fe in getattr(desired, "frontends", ()):
        kb, vb = maps.encode_svc(fe.family, fe.address, fe.proto, fe.port)
        out["vg_svc"][kb] = vb
    return out


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
        slot = maps.EndpointInfo.from_bytes(raw).slot
        if 0 < slot <= maps.MAX_SLOT and slot not in used:
            kept[key] = slot
            used.add(slot)
    endpoints: dict[bytes, bytes] = {}
    slots: dict[bytes, bytes] = {}
    free = 1
    for key in sorted(desired_endpoints):
        info = maps.EndpointInfo.from_bytes(desired_endpoints[key])
        slot = kept.get(key)
        if slot is None:
            while free in used:
                free += 1
            if free > maps.MAX_SLOT:
                slot = 0  # no slot: its flows to Services are dropped (fail closed)
            else:
                slot = free
                used.add(free)
        info.slot = slot
        endpoints[key] = bytes(info)
        if slot:
            slots[maps.u32_key(slot)] = maps.u32_key(info.ep_id)
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
    raw = config.lookup(maps.u32_key(0))
    return maps.Config.from_bytes(raw).revision if raw else 0


def bump_revision(config: MapLike) -> int:
    raw = config.lookup(maps.u32_key(0))
    cfg = maps.Config.from_bytes(raw) if raw else maps.Config()
    cfg.revision = (cfg.revision + 1) & 0xFFFFFFFF or 1  # 0 is "never synced"
    config.update(maps.u32_key(0), bytes(cfg))
    return int(cfg.revision)


def _ep_id_of_ct_key(kb: bytes) -> int:
    return int(maps.CtKey.from_bytes(kb).ep_id)


def _ep_id_of_counter_key(kb: bytes) -> int:
    return int(maps.CounterKey.from_bytes(kb).ep_id)


def _op_ep_id(op: Op) -> int | None:
    """The endpoint an operation belongs to (None: ipcache, shared by the node)."""
    if op.map == "vg_policy":
        return int(maps.PolicyKey.from_bytes(op.key).ep_id)
    if op.map == "vg_endpoints":
        return int.from_bytes(op.key[:4], sys.byteorder)
    if op.map == "vg_slots" and op.value is not None:
        return int.from_bytes(op.value[:4], sys.byteorder)
    return None


def pending_value(endpoint_value: bytes) -> bytes:
    """The endpoint with its identity and addresses kept but failed closed (PENDING)."""
    info = maps.EndpointInfo.from_bytes(endpoint_value)
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
        key = maps.u32_key(ep_id)
        value = self.desired_endpoints.get(key)
        if value is None:
            return
        try:
            self.endpoints_map.update(key, pending_value(value))
        except maps.BpfError as e:
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
    except maps.BpfError as e:
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
    return apply_diff(desired, kernel, cleanup_removed=cleanup_removed)[0]


def read_current(kernel: Mapping[str, MapLike]) -> dict[str, dict[bytes, bytes]]:
    """What the synced maps hold now (one bpf syscall per key and per value)."""
    return {name: kernel[name].items() for name in SYNCED_MAPS}


def apply_diff(
    desired: Mapping[str, KV],
    kernel: Mapping[str, MapLike],
    *,
    current: Mapping[str, KV] | None = None,
    cleanup_removed: bool = True,
) -> tuple[SyncResult, dict[str, dict[bytes, bytes]] | None]:
    """apply(), diffing against `current` when given (what the synced maps are known to hold,
    e.g. what the previous apply wrote) instead of reading every entry of the kernel maps.

    Also returns what the synced maps hold afterwards (the desired maps with their slots), or
    None when that is not known: an insert found its map full, so some operations were skipped
    or rewritten PENDING. Endpoint slots come from `current`'s vg_endpoints values, so `current`
    must carry the values written, slots included.
    """
    if current is None:
        current = read_current(kernel)
    endpoints, slots = assign_slots(desired.get("vg_endpoints", {}), current.get("vg_endpoints", {}))
    desired = {**desired, "vg_endpoints": endpoints, "vg_slots": slots}
    ops = plan(desired, current)
    full = _FullTracker(desired.get("vg_endpoints", {}), kernel["vg_endpoints"])
    for op in ops:
        m = kernel[op.map]
        if op.kind == "delete":
            m.delete(op.key)
        else:
            _apply_upsert(op, m, full)
    written: dict[str, dict[bytes, bytes]] | None = None
    if not full.failed and not full.skipped:
        written = {name: dict(desired.get(name, {})) for name in SYNCED_MAPS}
    removed_eps = {
        maps.EndpointInfo.from_bytes(current["vg_endpoints"][op.key]).ep_id
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
    return result, written


@dataclass(frozen=True)
class KernelState:
    """What the maps hold, decoded."""

    revision: int
    endpoints: dict[int, maps.Endpoint]  # by ifindex
    ipcache: dict[maps.IPNetwork, tuple[int, int]]
    policy: dict[tuple[int, PolicyEntryKey], PolicyEntryValue]  # (ep_id, key) -> value
    ct: list[maps.CtEntry]
    frontends: tuple[tuple[int, str, int, int], ...] = ()  # vg_svc: (family, address, proto, port)


def dump(kernel: Mapping[str, MapLike]) -> KernelState:
    endpoints = {}
    for kb, vb in kernel["vg_endpoints"].items().items():
        ep = maps.decode_endpoint(kb, vb)
        endpoints[ep.ifindex] = ep
    ipcache: dict[maps.IPNetwork, tuple[int, int]] = {}
    for name in ("vg_ipcache4", "vg_ipcache6"):
        for kb, vb in kernel[name].items().items():
            net, val = maps.decode_ipcache(kb, vb)
            ipcache[net] = val
    policy = {}
    for kb, vb in kernel["vg_policy"].items().items():
        ep_id, pk, pv = maps.decode_policy(kb, vb)
        policy[(ep_id, pk)] = pv
    ct = [maps.decode_ct(kb, vb) for kb, vb in kernel["vg_ct"].items().items()]
    frontends = (
        tuple(sorted(maps.decode_svc(kb) for kb in kernel["vg_svc"].items())) if "vg_svc" in kernel else ()
    )
    return KernelState(
        revision=read_revision(kernel["vg_config"]),
        endpoints=endpoints,
        ipcache=ipcache,
        policy=policy,
        ct=ct,
        frontends=frontends,
    )


def counters(counter_map: maps.BpfMap) -> dict[tuple[int, int, int], tuple[int, int]]:
    """(ep_id, reason, dir) -> (packets, bytes), summed over CPUs."""
    out: dict[tuple[int, int, int], tuple[int, int]] = {}
    for kb in counter_map.key_list():
        per_cpu = counter_map.lookup_percpu(kb)
        if per_cpu is None:
            continue
        k = maps.CounterKey.from_bytes(kb)
        pk = by = 0
        for raw in per_cpu:
            v = maps.CounterValue.from_bytes(raw)
            pk += v.packets
            by += v.bytes
        out[(int(k.ep_id), int(k.reason), int(k.dir))] = (pk, by)
    return out


def ipnet(s: str) -> maps.IPNetwork:
    return ipaddress.ip_network(s, strict=False)


@dataclass(frozen=True)
class GcResult:
    ct_deleted: int
    frag_deleted: int
    ct_left: int


def _expires_ns(map_name: str, value: bytes) -> int:
    if map_name == "vg_ct":
        return int(maps.CtValue.from_bytes(value).expires_ns)
    return int(maps.FragValue.from_bytes(value).expires_ns)


def collect_expired(kernel: Mapping[str, MapLike], now_ns: int) -> GcResult:
    """Delete vg_ct and vg_frag entries whose deadline (bpf_ktime_get_ns, CLOCK_MONOTONIC) passed.

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
