"""Map capacity: fitting a node's desired entries into the BPF maps' max_entries (fit_capacity,
pure), and `MapCapacity`, the agent's record of the capacities and of the endpoints that did not
fit (failed closed), for /status, the metrics and the policy status."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from controller.agent.errors import AgentError
from controller.agent.metrics import Metrics
from controller.agent.veth_match import UNCLAIMED
from controller.core.log import get_logger
from controller.datapath.interface import NodeDatapath
from controller.datapath.sync import MapFullError

log = get_logger("vethguard.agent")

IPCACHE_MAPS = {4: "vg_ipcache4", 6: "vg_ipcache6"}
RESERVED_IDENTITIES = frozenset({1, 2, 3})  # HOST, WORLD, REMOTE_NODE: kept first when trimming


@dataclass(frozen=True)
class Overflow:
    pod: str
    map: str
    needed: int
    capacity: int


@dataclass
class Fit:
    desired: Any
    pod_ifindex: dict[str, int]
    overflow: dict[str, Overflow]


def fit_capacity(
    desired: Any,
    pod_ifindex: Mapping[str, int],
    capacity: Mapping[str, int],
    prefer: frozenset[str] = frozenset(),
) -> Fit:
    """Fit the desired entries into the maps' capacities (pure).

    - vg_policy: endpoints are admitted in a stable order (those synced before first, then by
      name) while their entries fit; the others lose their EndpointDesired, so the sync writes
      them as PENDING (fail closed: nothing but always-allowed traffic).
    - vg_endpoints: pods beyond its capacity get no entry at all; their veth still carries the
      programs, which drop everything for an unknown endpoint (DROP_NO_ENDPOINT).
    - vg_ipcache4/6: a full ipcache could widen an ipBlock rule (a missing except prefix), so every
      endpoint fails closed and the ipcache keeps the node/world entries that fit.
    """
    overflow: dict[str, Overflow] = {}
    endpoints = dict(desired.endpoints)
    ipcache = desired.ipcache  # copied before the first change (nothing to do when it fits)
    pods = dict(pod_ifindex)
    cap_eps = capacity.get("vg_endpoints")
    if cap_eps is not None and len(pods) > cap_eps:
        order = sorted(pods, key=lambda p: (p not in prefer, p.startswith(UNCLAIMED), p))
        for pod in order[cap_eps:]:
            overflow[pod] = Overflow(pod, "vg_endpoints", len(pod_ifindex), cap_eps)
            pods.pop(pod)
            endpoints.pop(pod, None)
    counts = _ipcache_counts(ipcache, capacity)
    for version, name in IPCACHE_MAPS.items():
        cap = capacity.get(name)
        if cap is None or counts.get(version, cap + 1) <= cap:
            continue
        nets = [n for n in ipcache if n.version == version]
        if len(nets) <= cap:
            continue
        if ipcache is desired.ipcache:
            ipcache = dict(ipcache)
        for pod in pods:
            overflow.setdefault(pod, Overflow(pod, name, len(nets), cap))
        endpoints = {}
        nets.sort(key=lambda n: (ipcache[n][0] not in RESERVED_IDENTITIES, -n.prefixlen, str(n)))
        for net in nets[cap:]:
            del ipcache[net]
    cap_pol = capacity.get("vg_policy")
    profiles = desired.tier_profiles
    if cap_pol is not None:
        with_veth = [p for p in endpoints if p in pods]
        used_profiles = {endpoints[p].tier_profile for p in with_veth} - {0}
        needed = sum(len(endpoints[p].entries) for p in with_veth) + sum(
            len(profiles.get(t, ())) for t in used_profiles
        )
        if needed > cap_pol:
            used = 0
            admitted: set[int] = set()
            for pod in sorted(with_veth, key=lambda p: (p not in prefer, p)):
                ep = endpoints[pod]
                # an endpoint needs its own entries and, unless another admitted endpoint
                # brought it, its tier profile's
                n = len(ep.entries)
                if ep.tier_profile and ep.tier_profile not in admitted:
                    n += len(profiles.get(ep.tier_profile, ()))
                if used + n <= cap_pol:
                    used += n
                    admitted.add(ep.tier_profile)
                    continue
                overflow[pod] = Overflow(pod, "vg_policy", needed, cap_pol)
                del endpoints[pod]
            profiles = {t: e for t, e in profiles.items() if t in admitted}
    if not overflow:
        return Fit(desired, dict(pod_ifindex), {})
    fitted = dataclasses.replace(desired, endpoints=endpoints, ipcache=ipcache, tier_profiles=profiles)
    return Fit(fitted, pods, overflow)


def _ipcache_counts(ipcache: Mapping[Any, Any], capacity: Mapping[str, int]) -> dict[int, int]:
    """Prefixes per IP version, when it can be told without Python code per prefix: all of
    them when even that fits every ipcache map, else counted by type (C loops); {} when the
    prefixes are not all ipaddress networks (fit_capacity then counts them one by one)."""
    caps = [capacity[name] for name in IPCACHE_MAPS.values() if name in capacity]
    total = len(ipcache)
    if not caps or total <= min(caps):
        return {4: total, 6: total}  # upper bounds, enough to tell that both fit
    v4 = sum(map(isinstance, ipcache, repeat(ipaddress.IPv4Network)))
    v6 = sum(map(isinstance, ipcache, repeat(ipaddress.IPv6Network)))
    return {4: v4, 6: v6} if v4 + v6 == total else {}


def overflow_message(o: Overflow) -> str:
    needed = f"needs {o.needed} entries, " if o.needed >= 0 else ""
    return f"failed closed (pending): map {o.map} is full ({needed}capacity {o.capacity})"


class MapCapacity:
    """The maps' capacities (read from the datapath once: a pinned map keeps its size) and the
    endpoints of the last pass that did not fit, each failed closed until there is room.

    `overflow` is replaced, never mutated (readers under `lock` get a consistent dict)."""

    def __init__(self, metrics: Metrics, lock: threading.Lock) -> None:
        self.metrics = metrics
        self._lock = lock
        self._limits: dict[str, int] | None = None
        self.overflow: dict[str, Overflow] = {}

    def limits(self, dp: NodeDatapath) -> dict[str, int]:
        """max_entries per map; {} if the datapath cannot tell (nothing is fitted then)."""
        if self._limits is not None:
            return self._limits
        try:
            caps = {str(k): int(v) for k, v in dp.capacity().items()}
        except Exception as exc:
            log.warning("cannot read map capacities; not fitting entries", error=str(exc))
            return {}
        self._limits = caps
        for name, cap in caps.items():
            self.metrics.map_capacity.labels(map=name).set(cap)
        return caps

    def fit(
        self, dp: NodeDatapath, desired: Any, pod_ifindex: Mapping[str, int], prefer: frozenset[str]
    ) -> Fit:
        """fit_capacity() with the datapath's capacities; the overflow is recorded."""
        fit = fit_capacity(desired, pod_ifindex, self.limits(dp), prefer)
        self.note(fit.overflow, pod_ifindex)
        return fit

    def note(self, overflow: Mapping[str, Overflow], pod_ifindex: Mapping[str, int]) -> None:
        for pod, o in sorted(overflow.items()):
            if pod not in self.overflow or self.overflow[pod].map != o.map:
                self.metrics.map_overflow_total.labels(map=o.map).inc()
                log.error(
                    "map full: endpoint fails closed until there is room",
                    endpoint=pod,
                    ifindex=pod_ifindex.get(pod),
                    map=o.map,
                    needed=o.needed,
                    capacity=o.capacity,
                )
        for pod in sorted(set(self.overflow) - set(overflow)):
            log.info("map has room again: endpoint enforced", endpoint=pod, map=self.overflow[pod].map)
        with self._lock:
            self.overflow = dict(overflow)
        self.metrics.overflowed_endpoints.set(len(overflow))

    def note_map_full(self, exc: MapFullError, pod_ifindex: Mapping[str, int]) -> None:
        """The datapath found a map full anyway (e.g. adds before deletes): it left the affected
        endpoints PENDING; the retry completes them once deletes made room."""
        overflow = dict(self.overflow)
        capacity = (self._limits or {}).get(exc.map_name, -1)
        for pod in exc.endpoints:
            overflow.setdefault(pod, Overflow(pod, exc.map_name, -1, capacity))
        self.note(overflow, pod_ifindex)

    def errors(self) -> list[AgentError]:
        """One /status error per endpoint that did not fit (call under the lock)."""
        return [
            AgentError(f"Pod {o.pod}", f"map {o.map}", overflow_message(o))
            for o in sorted(self.overflow.values(), key=lambda o: o.pod)
        ]
