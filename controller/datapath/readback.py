"""Reading the kernel's maps back: a decoded dump of every map (for debug commands and tests),
the per-CPU counters, and conntrack garbage collection of expired entries."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.core.net import IPNetwork
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.sync import MapLike, read_revision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelState:
    """What the maps hold, decoded."""

    revision: int
    endpoints: dict[int, codecs.Endpoint]  # by ifindex
    ipcache: dict[IPNetwork, tuple[int, int, int]]
    policy: dict[tuple[int, PolicyEntryKey], PolicyEntryValue]  # (ep_id, key) -> value
    ct: list[codecs.CtEntry]
    frontends: tuple[tuple[int, str, int, int], ...] = ()  # vg_svc: (family, address, proto, port)


def dump(kernel: Mapping[str, MapLike]) -> KernelState:
    endpoints = {}
    for kb, vb in kernel["vg_endpoints"].items().items():
        ep = codecs.decode_endpoint(kb, vb)
        endpoints[ep.ifindex] = ep
    ipcache: dict[IPNetwork, tuple[int, int, int]] = {}
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


def _per_cpu_sum(per_cpu: list[bytes]) -> tuple[int, int]:
    pk = by = 0
    for raw in per_cpu:
        v = abi.CounterValue.from_bytes(raw)
        pk += v.packets
        by += v.bytes
    return pk, by


def counters(maps: Mapping[str, bpfsys.BpfMap]) -> dict[tuple[int, int, int], tuple[int, int]]:
    """(ep_id, reason, dir) -> (packets, bytes), summed over CPUs: vg_counters, plus the
    established fast path's vg_est_counters rows of every endpoint in vg_endpoints (by its slot)."""
    counter_map = maps["vg_counters"]
    out: dict[tuple[int, int, int], tuple[int, int]] = {}
    for kb in counter_map.key_list():
        per_cpu = counter_map.lookup_percpu(kb)
        if per_cpu is None:
            continue
        k = abi.CounterKey.from_bytes(kb)
        out[(int(k.ep_id), int(k.reason), int(k.dir))] = _per_cpu_sum(per_cpu)
    est = maps.get("vg_est_counters")
    if est is None or "vg_endpoints" not in maps:
        return out
    for raw in maps["vg_endpoints"].items().values():
        ep = abi.EndpointInfo.from_bytes(raw)
        if not ep.slot:
            continue
        for reason in abi.EST_REASONS:
            for direction in (DIR_INGRESS, DIR_EGRESS):
                per_cpu = est.lookup_percpu(codecs.est_key(ep.slot, reason, direction))
                pk, by = _per_cpu_sum(per_cpu or [])
                if not pk:
                    continue
                key = (int(ep.ep_id), int(reason), direction)
                had = out.get(key, (0, 0))
                out[key] = (had[0] + pk, had[1] + by)
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
