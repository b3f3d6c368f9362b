"""Turn NodeDesired into concrete map contents and apply the difference to the kernel.

Ordering is what keeps allowed traffic flowing during an update:
  1. adds and updates, dependencies first (policy, ipcache, then endpoints: an address moves to
     another identity - a relabelled pod, a namespace that leaves its class, an address under
     a new policy prefix - only once that identity's entries are present, and an endpoint only
     becomes isolated once the entries that allow its traffic are present);
  2. deletes, dependents first (endpoints, ipcache, policy: an identity's entries go only once
     no address has it);
  3. bump vg_config.revision, so established flows re-check against the final state only.
An allowed flow therefore never sees an intermediate state that is narrower than both the old
and the new policy. Everything up to `plan()` is pure and tested without root.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from controller.core.errors import VethguardError
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, TIER_PROFILE_BIT
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.encoding import KV, PENDING_FLAGS, Encoding, IpcacheEncoding, assign_slots

log = logging.getLogger(__name__)

# Maps managed by sync, in dependency order (what must exist before what refers to it): an
# endpoint's slot maps to it (vg_slots) before the endpoint carries the slot, and frontends are
# deferred only once every endpoint can be named in a mark.
# The addresses to believe only where they belong (vg_local) come first and go last: a new pod's
# address is never a remote one's for an instant.
# A host endpoint names its profiles in vg_policy: it comes after them (vg_hosteps); failsafe
# ports come before any host endpoint that relies on them.
SYNCED_MAPS = (
    "vg_local",
    "vg_failsafe",
    "vg_policy",
    "vg_ipcache4",
    "vg_ipcache6",
    "vg_slots",
    "vg_endpoints",
    "vg_hosteps",
    "vg_svc",
)

OpKind = Literal["add", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    map: str
    key: bytes
    value: bytes | None = None


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


def _ep_id_of_learned_key(kb: bytes) -> int:
    return int(abi.DnsLearnedKey.from_bytes(kb).ep_id)


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
        elif ep_id & TIER_PROFILE_BIT:
            # A tier profile's entries did not fit: every endpoint that uses it closes.
            self.failed.setdefault(ep_id, map_name)
            targets = [
                int.from_bytes(k[:4], sys.byteorder)
                for k, v in self.desired_endpoints.items()
                if abi.EndpointInfo.from_bytes(v).tier_profile == ep_id
            ]
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


# A run of this many operations of one kind on one of these maps goes to the kernel in one bpf(2)
# call (BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH: the same operations in the same order, run by
# the kernel one by one), where the map has batch operations. vg_endpoints stays one by one: each
# of its writes depends on what failed before it (pending_value).
BATCH_MIN = 16
BATCHED_MAPS = frozenset({"vg_policy", "vg_ipcache4", "vg_ipcache6", "vg_local"})
_NO_BATCH_ERRNOS = (errno.EINVAL, 524)  # 524: ENOTSUPP, a map type without the batch op


def _runs(ops: list[Op]) -> Iterator[list[Op]]:
    """Consecutive operations on one map that are all deletes or all upserts."""
    start = 0
    for i in range(1, len(ops) + 1):
        first = ops[start]
        if i == len(ops) or ops[i].map != first.map or (ops[i].kind == "delete") != (first.kind == "delete"):
            yield ops[start:i]
            start = i


def _batches(m: MapLike) -> bool:
    return callable(getattr(m, "update_batch", None)) and not getattr(m, "no_batch", False)


def _delete_run(run: list[Op], m: Any) -> None:
    """Deletes of a run in batches; a key already gone is skipped, as delete() does."""
    rest = [op.key for op in run]
    while rest:
        try:
            m.delete_batch(rest)
            return
        except bpfsys.BatchError as e:
            if e.done == 0 and e.errno in _NO_BATCH_ERRNOS:
                m.no_batch = True
                for k in rest:
                    m.delete(k)
                return
            if e.errno != errno.ENOENT or e.done >= len(rest):
                raise
            rest = rest[e.done + 1 :]


def _upsert_run(run: list[Op], m: Any, full: _FullTracker) -> None:
    """_apply_upsert() of every operation of a run, in batches: a batch stops at an insert that
    does not fit; that one is applied alone (it fails its endpoint closed, as one by one would)
    and the batch goes on with the rest, skipping what belongs to endpoints failed by now."""
    rest = run
    while rest:
        todo = rest
        if full.node_wide is None and full.failed:  # as _apply_upsert: none for an endpoint closed already
            todo = [op for op in rest if not full.is_failed(_op_ep_id(op))]
        full.skipped += len(rest) - len(todo)
        if not todo:
            return
        try:
            m.update_batch([op.key for op in todo], [op.value for op in todo])
            return
        except bpfsys.BatchError as e:
            if e.done == 0 and e.errno in _NO_BATCH_ERRNOS:
                m.no_batch = True
                for op in todo:
                    _apply_upsert(op, m, full)
                return
            if e.done >= len(todo):  # failed after the last element: not an element's failure
                raise
            _apply_upsert(todo[e.done], m, full)  # alone: raises unless the map was full
            rest = todo[e.done + 1 :]


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
    bump: bool = True,
) -> tuple[SyncResult, Written | None]:
    """apply() of an Encoder's output. Without `previous` it is apply(): the diff is against
    what the kernel maps hold (read entry by entry). With `previous` (what an earlier
    apply_encoding wrote, all of it) the diff is against that, and only over what differs:
    the parts of `encoding` that are the very objects `previous` wrote are skipped (an
    endpoint's policy entries, the ipcache, the frontends), and a changed ipcache is compared
    on the keys the Encoder touched since `previous` when it was derived from it. The
    operations, their order and the result are those apply() gives for the same contents.
    `bump`: False only for writes no endpoint reads (spare tier profile homes): conntrack
    entries need no re-check for them (with `previous` only).

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
                "vg_policy": _diff_policy(encoding.policy, old.policy, encoding.policy_touched),
                "vg_slots": diff("vg_slots", slots, previous.slots),
                "vg_endpoints": diff("vg_endpoints", endpoints, previous.endpoints),
                "vg_svc": diff("vg_svc", encoding.svc, old.svc),
                "vg_hosteps": diff("vg_hosteps", encoding.hosteps, old.hosteps),
                "vg_failsafe": diff("vg_failsafe", encoding.failsafe, old.failsafe),
            }
        )
        result = _execute(ops, endpoints, previous.endpoints, kernel, cleanup_removed, bump)
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
    new: Mapping[int, Mapping[bytes, bytes]],
    old: Mapping[int, Mapping[bytes, bytes]],
    touched: Mapping[int, tuple[Mapping[bytes, bytes], frozenset[bytes]]] | None = None,
) -> tuple[list[Op], list[Op]]:
    """diff() of vg_policy, endpoint by endpoint (every key holds its ep_id, so the endpoints'
    keys are disjoint); an endpoint whose entries are the very mapping written is skipped, and
    one the encoder derived from the mapping written (`touched`) is compared on the keys it
    touched only."""
    upserts: list[tuple[bytes, bytes, bool]] = []  # (key, value, whether it is new)
    removed: list[bytes] = []
    for ep_id, want in new.items():
        had = old.get(ep_id)
        if had is want:
            continue
        if had is None:
            had = {}
        get = had.get
        hint = touched.get(ep_id) if touched else None
        keys: Iterable[bytes] = hint[1] if hint is not None and hint[0] is had else want
        for k in keys:
            v = want.get(k)
            if v is not None:
                h = get(k)
                if h != v:
                    upserts.append((k, v, h is None))
            elif k in had:
                removed.append(k)
        if keys is want:
            removed.extend(k for k in had if k not in want)
    for ep_id, had in old.items():
        if ep_id not in new:
            removed.extend(had)
    upserts.sort(key=lambda u: u[0])
    return (
        [Op("add" if is_new else "update", "vg_policy", k, v) for k, v, is_new in upserts],
        [Op("delete", "vg_policy", k) for k in sorted(removed)],
    )


def _execute(
    ops: list[Op],
    endpoints: KV,
    current_endpoints: KV,
    kernel: Mapping[str, MapLike],
    cleanup_removed: bool,
    bump: bool = True,
) -> SyncResult:
    """Run the planned operations (`endpoints`: the desired vg_endpoints, slots assigned;
    `current_endpoints`: what vg_endpoints held), bump the revision if anything changed and
    remove the conntrack entries and counters of removed endpoints."""
    full = _FullTracker(endpoints, kernel["vg_endpoints"])
    for run in _runs(ops):
        m = kernel[run[0].map]
        if len(run) >= BATCH_MIN and run[0].map in BATCHED_MAPS and _batches(m):
            if run[0].kind == "delete":
                _delete_run(run, m)
            else:
                _upsert_run(run, m, full)
            continue
        for op in run:
            if op.kind == "delete":
                m.delete(op.key)
            else:
                _apply_upsert(op, m, full)
    removed = [
        abi.EndpointInfo.from_bytes(current_endpoints[op.key])
        for op in ops
        if op.kind == "delete" and op.map == "vg_endpoints"
    ]
    removed_eps = {info.ep_id for info in removed}
    revision = bump_revision(kernel["vg_config"]) if ops and bump else read_revision(kernel["vg_config"])
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
        if "vg_dns_learned" in kernel:  # what a deleted pod learned is not its successor's
            for kb in kernel["vg_dns_learned"].key_list():
                if _ep_id_of_learned_key(kb) in removed_eps:
                    kernel["vg_dns_learned"].delete(kb)
        if "vg_est_counters" in kernel:  # an array: the slot's rows go back to zero for its next endpoint
            zero, est = bytes(ctypes.sizeof(abi.CounterValue)), kernel["vg_est_counters"]
            for info in (i for i in removed if i.slot):
                for reason in abi.EST_REASONS:
                    for direction in (DIR_INGRESS, DIR_EGRESS):
                        est.update(codecs.est_key(info.slot, reason, direction), zero)
    kinds = Counter(op.kind for op in ops)
    result = SyncResult(
        adds=kinds["add"],
        updates=kinds["update"],
        deletes=kinds["delete"],
        revision=revision,
        ct_deleted=ct_deleted,
        ops=tuple(ops),
        full={ep: m for ep, m in full.failed.items() if not ep & TIER_PROFILE_BIT},
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
