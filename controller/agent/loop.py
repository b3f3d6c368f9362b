"""`vethguard agent --node NAME`: the per-node enforcement loop.

    informers (controller.agent.informers) --events--> coalesce (<= 1 pass per 50 ms)
      -> ClusterState.from_objects(caches) -> compute.compute(cluster, node)    [pure]
      -> discovery of local pod veths: host routes, or neighbours + bridge FDB (controller.agent.discovery)
      -> Datapath.attach(new veths) / detach(gone veths) -> Datapath.sync(desired, pod_ifindex)
      -> realized_generation = min over kinds of the resourceVersion the caches held at compute time

A new veth is attached by the netlink thread as soon as it appears (before any pass: fail closed),
and the pass that writes its endpoint, and later its pod's policy, is not coalesced.

Also: a full resync (re-attach + sync) every --resync-seconds, a route rescan every second (a veth
that appears after its pod is attached within a second), and /livez /readyz /metrics /status on
--health-addr. A bad object or a failed step is logged, counted and retried; the loop never dies
on it and keeps enforcing the last synced state. SIGTERM/SIGINT stop the agent WITHOUT detaching
anything: programs stay attached and maps stay pinned, so enforcement continues across restarts.

realized_generation: each informer records the last resourceVersion it has seen (list, events,
BOOKMARKs) atomically with its cache contents. A pass snapshots all caches, and only after
Datapath.sync succeeded (or was unnecessary because neither the cache contents nor the pod ->
ifindex map changed since the last successful sync) publishes min(int(rv) over the four kinds) of
that snapshot. A failed pass never advances it.

/status JSON (docs/INTERNALS.md fields first, then extras):
  node, ready, realized_generation, endpoints (local pods in the desired state), attached (veths
  with our programs), errors ([{object, field, message}]: agent failures by stage, then invalid
  objects), last_sync_seconds (duration of the last successful sync), last_sync_at (unix time),
  syncs, pod_ifindex, pods_without_veth, policy_errors (count), resource_versions (per kind).

After a restart the agent adopts the veths listed in the pinned endpoints map, so veths of pods
deleted while it was down are detached by the first pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, eq, is_
from typing import Any, Protocol

from controller.agent import discovery as endpoints_mod
from controller.agent.discovery import Discovered, Discovery, interface_exists
from controller.agent.health import HealthProbes, HealthServer
from controller.agent.informers import Event, Snapshot, Sources, load_api_client
from controller.agent.linkwatch import LinkWatch
from controller.agent.metrics import Metrics
from controller.compiler.frontends import frontends_of
from controller.core.errors import VethguardError
from controller.core.log import configure as configure_logging
from controller.core.log import get_logger
from controller.datapath.loader import release_free_heap

log = get_logger("vethguard.agent")

DEFAULT_PIN_ROOT = "/sys/fs/bpf/vethguard"
DEFAULT_HEALTH_ADDR = "127.0.0.1:9890"
LIVENESS_STALL_SECONDS = 60.0
MAX_ERRORS_REPORTED = 200


class DatapathLike(Protocol):
    def attach(self, ifindex: int) -> Any: ...
    def detach(self, ifindex: int) -> Any: ...
    def sync(self, desired: Any, pod_ifindex: Mapping[str, int]) -> Any: ...
    def close(self) -> Any: ...


class LinkWatchLike(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def new_veths(self) -> dict[int, float]: ...
    def appeared_at(self, ifindex: int) -> float | None: ...


class SourcesLike(Protocol):
    events: queue.Queue[Event]

    def start(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def has_synced(self) -> bool: ...
    def snapshot(self) -> Snapshot: ...


BuildCluster = Callable[[Sequence[Any], Sequence[Any], Sequence[Any], Sequence[Any]], Any]
Compute = Callable[[Any, str], Any]


def _default_build_cluster() -> BuildCluster:
    from controller.compiler.model import ClusterBuilder

    return ClusterBuilder().build  # reuses unchanged objects' parses (uid + resourceVersion)


def _default_compute() -> Compute:
    from controller.compiler.compute import compute

    return compute


def _default_discovery() -> Discovery:
    # Route + bridge discovery where controller.agent.discovery has it, host routes otherwise.
    factory = getattr(endpoints_mod, "NodeDiscovery", None) or endpoints_mod.RouteDiscovery
    found: Discovery = factory()
    return found


def _default_datapath_factory(node: str, pin_root: str) -> DatapathLike:
    from controller.datapath.node import Datapath

    return Datapath(node=node, pin_root=pin_root)


@dataclass
class AgentConfig:
    node: str
    pin_root: str = DEFAULT_PIN_ROOT
    health_addr: str | None = DEFAULT_HEALTH_ADDR  # None: no HTTP server (tests)
    resync_seconds: float = 30.0
    rescan_seconds: float = 1.0
    coalesce_seconds: float = 0.05
    retry_cap_seconds: float = 10.0
    fail_closed: bool = True
    datapath_metrics_seconds: float = 10.0  # map entry counts and drop counters refresh period
    # Interfaces whose tc egress judges deferred Service flows leaving the node
    # (controller/datapath/uplink.py); empty: every interface with a route through a gateway.
    uplinks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentError:
    object: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"object": self.object, "field": self.field, "message": self.message}


_WAKE = Event("agent", "SYNCED", "", None, "")  # put on the queue to wake the loop (stop)
_LINK = Event("netlink", "SYNCED", "", None, "")  # a link/route/neighbour changed: run a pass
UNCLAIMED = "(unclaimed)/"  # pod_ifindex key prefix of a veth no known pod claims (PENDING)
EP_F_PENDING = 1 << 3  # docs/INTERNALS.md endpoint flags (no datapath import: it pulls in bcc)
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
    if cap_pol is not None:
        with_veth = [p for p in endpoints if p in pods]
        needed = sum(len(endpoints[p].entries) for p in with_veth)
        if needed > cap_pol:
            used = 0
            for pod in sorted(with_veth, key=lambda p: (p not in prefer, p)):
                n = len(endpoints[pod].entries)
                if used + n <= cap_pol:
                    used += n
                    continue
                overflow[pod] = Overflow(pod, "vg_policy", needed, cap_pol)
                del endpoints[pod]
    if not overflow:
        return Fit(desired, dict(pod_ifindex), {})
    fitted = dataclasses.replace(desired, endpoints=endpoints, ipcache=ipcache)
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


@dataclass(frozen=True, eq=False)
class _StatusMemo:
    """What Agent._policy_status computed its last result from, and that result."""

    cluster: Any
    versions: Any
    errors: list[AgentError]
    overflow: dict[str, Overflow]
    status: dict[str, dict[str, Any]]


@dataclass(frozen=True, eq=False)
class _StatusParts:
    """The inputs of the last policy status computed from the compiled cluster, by policy,
    and that status: the next one redoes only the policies whose inputs differ."""

    raws: Sequence[Any]  # the snapshot's policy objects
    parsed: dict[int, tuple[Any, str | None, Any]]  # id(raw) -> (raw, key, generation)
    generations: dict[str, Any]
    errors: dict[str, list[dict[str, str]]]
    pods: Mapping[str, Any]  # the cluster's
    local: list[Any]  # its active pods on this node
    policies: Mapping[str, Any]  # the cluster's
    selected: dict[str, list[str]]  # policy -> local pods it selects
    overflow: dict[str, Overflow]
    status: dict[str, dict[str, Any]]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        sources: SourcesLike,
        *,
        datapath_factory: Callable[[str, str], DatapathLike] = _default_datapath_factory,
        build_cluster: BuildCluster | None = None,
        compute: Compute | None = None,
        discovery: Discovery | None = None,
        metrics: Metrics | None = None,
        linkwatch: LinkWatchLike | None = None,
    ) -> None:
        self.config = config
        self.node = config.node
        self.sources = sources
        self.metrics = metrics or Metrics()
        self._datapath_factory = datapath_factory
        self._build_cluster = build_cluster
        self._compute = compute
        self.discovery: Discovery = discovery or _default_discovery()
        self.interface_exists: Callable[[int], bool] = interface_exists
        self.linkwatch = linkwatch
        self.fail_closed = config.fail_closed
        self.dp: DatapathLike | None = None
        self.fatal: VethguardError | None = None  # set when the agent must exit (exit code 1)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()  # guards what /status reads

        # state of the last successful steps
        self._desired: Any = None
        self._cluster: Any = None
        self._desired_versions: tuple[int, ...] | None = None
        # (services, nodes, their frontends and errors) of the last pass that computed them
        self._frontends_of: tuple[Any, Any, frozenset[Any], list[Any]] | None = None
        self._synced_versions: tuple[int, ...] | None = None
        self._synced_pod_ifindex: dict[str, int] | None = None
        self._last_sync_ok = False
        self._attached: set[int] = set()
        self._attach_failed: set[int] = set()
        self._adopted_pending: set[int] = set()  # PENDING endpoints found in the pinned map at start
        self._discovered = Discovered()
        self.realized_generation = 0
        self.ready = False
        self.last_sync_seconds: float | None = None
        self.last_sync_at: float | None = None
        self.syncs = 0
        self._heartbeat = time.monotonic()
        self._policy_errors: list[AgentError] = []
        self._agent_errors: dict[str, AgentError] = {}  # stage -> last failure
        self._logged_policy_errors: set[AgentError] = set()
        self._failures = 0
        self._retry_at = 0.0
        self._overflow: dict[str, Overflow] = {}
        self._capacity: dict[str, int] | None = None
        self._policies: dict[str, dict[str, Any]] = {}
        self._policy_status_memo: _StatusMemo | None = None  # _policy_status's last result
        self._status_parts: _StatusParts | None = None
        self._arrivals: list[float] = []  # arrival times of cluster events not realized yet
        self._attach_reported: dict[int, float] = {}  # ifindex -> when its programs were attached
        self._attach_times: dict[int, float] = {}  # ifindex -> when this agent attached its programs
        self._early_lock = threading.Lock()  # attach_new_veths() runs on the netlink thread
        self._early_tried: set[int] = set()  # new veths attach_new_veths() tried (once each)
        self._early_attached: dict[int, float] = {}  # attached by it, not yet in _attached: -> when
        self._claim_waiting = False  # a Pod event of this node came while a new veth was PENDING
        self._enforce_reported: set[int] = set()
        self._counter_totals: dict[tuple[int, int, int], int] = {}
        self._uplinks: dict[int, str] = {}  # ifindex -> name: to_uplink attached
        self._uplinks_checked = False

    # ------------------------------------------------------------------ status

    def live(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() - self._heartbeat < LIVENESS_STALL_SECONDS

    def is_ready(self) -> bool:
        """Synced (informers listed), attached (every discovered veth) and reconciled (last pass ok)."""
        return (
            self.ready
            and not self.stop_event.is_set()
            and self.sources.has_synced
            and self._last_sync_ok
            and not self._attach_failed
        )

    def status(self) -> dict[str, Any]:
        with self._lock:
            errors = [e.as_dict() for e in self._agent_errors.values()]
            errors += [
                AgentError(f"Pod {o.pod}", f"map {o.map}", _overflow_message(o)).as_dict()
                for o in sorted(self._overflow.values(), key=lambda o: o.pod)
            ]
            errors += [e.as_dict() for e in self._policy_errors[:MAX_ERRORS_REPORTED]]
            endpoints = len(self._desired.endpoints) if self._desired is not None else 0
            snap_rvs: dict[str, str] = {}
            informers = getattr(self.sources, "informers", None)
            if isinstance(informers, dict):
                snap_rvs = {k: inf.resource_version for k, inf in informers.items()}
            pod_ifindex = dict(self._synced_pod_ifindex or {})
            return {
                "node": self.node,
                "ready": self.is_ready(),
                "realized_generation": self.realized_generation,
                "endpoints": endpoints,
                "attached": len(self._attached),
                "pod_ifindex": pod_ifindex,
                "pending_interfaces": sorted(i for p, i in pod_ifindex.items() if _is_placeholder(p)),
                "pods_without_veth": list(self._discovered.missing),
                "errors": errors,
                "policy_errors": len(self._policy_errors),
                "policies": {k: dict(v) for k, v in self._policies.items()},
                "overflow": [
                    dataclasses.asdict(o) for o in sorted(self._overflow.values(), key=lambda o: o.pod)
                ],
                "fail_closed": self.fail_closed,
                "last_sync_seconds": self.last_sync_seconds,
                "last_sync_at": self.last_sync_at,
                "syncs": self.syncs,
                "resource_versions": snap_rvs,
            }

    def probes(self) -> HealthProbes:
        return HealthProbes(
            live=self.live,
            ready=self.is_ready,
            status=self.status,
            metrics=self.metrics.exposition,
        )

    # ------------------------------------------------------------------ errors

    def _fail(self, stage: str, exc: BaseException | str, **context: Any) -> None:
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._agent_errors[stage] = AgentError(f"agent {self.node}", stage, msg)
        self.metrics.agent_errors_total.labels(stage=stage).inc()
        if isinstance(exc, BaseException) and not isinstance(exc, VethguardError):
            log.error(f"{stage} failed", node=self.node, error=msg, exc_info=exc, **context)
        else:  # a VethguardError already explains itself: no traceback
            log.error(f"{stage} failed", node=self.node, error=msg, **context)

    def _clear(self, stage: str) -> None:
        if stage in self._agent_errors:
            with self._lock:
                self._agent_errors.pop(stage, None)
            log.info(f"{stage} recovered", node=self.node)

    def _record_policy_errors(self, errors: Sequence[Any]) -> None:
        current: list[AgentError] = []
        seen: set[AgentError] = set()
        for e in errors:
            ae = AgentError(
                str(getattr(e, "object", "?")), str(getattr(e, "field", "?")), str(getattr(e, "message", e))
            )
            if ae not in seen:
                seen.add(ae)
                current.append(ae)
        for ae in current:
            if ae not in self._logged_policy_errors:
                log.warning("invalid object", object=ae.object, field=ae.field, message=ae.message)
        self._logged_policy_errors = seen
        with self._lock:
            self._policy_errors = current
        self.metrics.policy_errors.set(len(current))

    # ------------------------------------------------------------------ one pass

    def reconcile(self, full: bool = False) -> bool:
        """Bring the datapath to the state of the caches. Returns whether the maps now reflect them."""
        versions_before = self._desired_versions
        ok = self._reconcile(full)
        if full or self._desired_versions is not versions_before:
            # The previous model and this pass's scratch (sync diff, kernel dump) are garbage
            # now; glibc would keep their pages in its arenas (~25 MB at 10k pods).
            release_free_heap()
        if not ok:
            with self._lock:
                self.ready = False
        return ok

    def _reconcile(self, full: bool) -> bool:
        dp = self.dp
        if dp is None:
            return False
        kind = "full" if full else "incremental"
        pass_started = time.monotonic()
        snap = self.sources.snapshot()
        versions = snap.content_versions

        # 1. compute (only when cache contents changed since the last compute)
        if self._desired is None or versions != self._desired_versions:
            t0 = time.perf_counter()
            try:
                if self._build_cluster is None:
                    self._build_cluster = _default_build_cluster()  # kept: its parse cache
                build = self._build_cluster
                compute = self._compute or _default_compute()
                cluster = build(snap.namespaces, snap.pods, snap.policies, snap.nodes)
                desired = compute(cluster, self.node)
                fronts, front_errors = self._frontends(getattr(snap, "services", ()), snap.nodes)
                desired = dataclasses.replace(
                    desired, frontends=fronts, errors=(*getattr(desired, "errors", ()), *front_errors)
                )
            except Exception as exc:
                self._fail("compute", exc)
                return False
            self.metrics.policy_compute_seconds.observe(time.perf_counter() - t0)
            self._clear("compute")
            with self._lock:
                self._desired = desired
                self._cluster = cluster
            self._desired_versions = versions
            self._record_policy_errors([*getattr(cluster, "errors", ()), *getattr(desired, "errors", ())])
            self.metrics.endpoints.set(len(desired.endpoints))
        desired = self._desired

        # 2. discover the local pods' veths (+ new veths no pod claims yet: failed closed)
        pod_ips = {pod: [ip for ip in (ep.ipv4, ep.ipv6) if ip] for pod, ep in desired.endpoints.items()}
        try:
            found = self.discovery.discover(pod_ips)
        except Exception as exc:
            self._fail("discover", exc)
            return False
        self._clear("discover")
        if found.conflicts and found.conflicts != self._discovered.conflicts:
            log.warning("pod addresses route to different interfaces", conflicts=found.conflicts)
        if found.missing != self._discovered.missing and found.missing:
            log.info("local pods without a host route yet", pods=found.missing)
        self._discovered = found
        pod_ifindex = self._attachments(found)

        # 3. fit the desired entries into the maps (endpoints that do not fit fail closed)
        fit = fit_capacity(
            desired, pod_ifindex, self._capacities(), frozenset(self._synced_pod_ifindex or ())
        )
        self._note_overflow(fit.overflow, pod_ifindex)

        # 4. attach new veths (all of them on a full resync: catches filters removed behind our back)
        t0 = time.perf_counter()
        if not self._attach_detach(dp, pod_ifindex, full):
            pass  # failures are recorded; the sync still runs for what is attached
        if full or not self._uplinks_checked:
            self._attach_uplinks(dp)
        attached_at = time.monotonic()

        # 5. sync the maps when anything they depend on changed (always on a full resync)
        if (
            full
            or not self._last_sync_ok
            or versions != self._synced_versions
            or pod_ifindex != self._synced_pod_ifindex
        ):
            try:
                # An incremental pass diffs against what the last sync wrote; a full resync
                # reads the kernel maps and so repairs entries changed behind the agent's back.
                incremental = None if full else getattr(dp, "sync_incremental", None)
                result = (incremental or dp.sync)(fit.desired, fit.pod_ifindex)
            except Exception as exc:
                self._last_sync_ok = False
                self.metrics.sync_operations_total.labels(kind=kind, result="error").inc()
                if type(exc).__name__ == "MapFullError":
                    self._note_map_full(exc)
                self._fail("sync", exc)
                return False
            elapsed = time.perf_counter() - t0
            self.metrics.map_sync_seconds.observe(elapsed)
            self.metrics.sync_operations_total.labels(kind=kind, result="ok").inc()
            self._clear("sync")
            self._last_sync_ok = True
            self._synced_versions = versions
            with self._lock:
                self._synced_pod_ifindex = pod_ifindex
                self.last_sync_seconds = round(elapsed, 6)
                self.last_sync_at = time.time()
                self.syncs += 1
            log.info(
                "synced",
                kind=kind,
                endpoints=len(desired.endpoints),
                with_veth=len(pod_ifindex),
                attached=len(self._attached),
                generation=snap.generation,
                duration_ms=round(elapsed * 1000, 2),
                result=_summarize(result),
            )
        done = time.monotonic()
        self._observe_latencies(fit, attached_at, done)

        # 6. the maps reflect this snapshot: publish its generation and the policies' status
        gen = snap.generation
        policies = self._policy_status(snap, fit)
        with self._lock:
            if gen is not None and gen > self.realized_generation:
                self.realized_generation = gen
            self._policies = policies
            self.ready = True
        self.metrics.realized_generation.set(self.realized_generation)
        self._observe_realized(pass_started, done)
        self._failures = 0
        return True

    def _frontends(self, services: Any, nodes: Any) -> tuple[frozenset[Any], list[Any]]:
        """frontends_of(), again only when the Services or Nodes are not the very objects of
        the last pass (sequence equality compares elements by identity first: C speed)."""
        services, nodes = list(services), list(nodes)
        last = self._frontends_of
        if last is not None and last[0] == services and last[1] == nodes:
            return last[2], last[3]
        fronts, errors = frontends_of(services, nodes, self.node)
        self._frontends_of = (services, nodes, fronts, errors)
        return fronts, errors

    def _attachments(self, found: Discovered) -> dict[str, int]:
        """pod -> ifindex to attach and sync, with a placeholder key for each veth that must be
        failed closed because no known pod claims it yet (the datapath makes it PENDING)."""
        attachments = getattr(found, "attachments", None)
        pod_ifindex = dict(attachments()) if callable(attachments) else dict(found.pod_ifindex)
        if not self.fail_closed:
            return {p: i for p, i in pod_ifindex.items() if not _is_placeholder(p)}
        claimed = set(pod_ifindex.values())
        candidates = set(self._adopted_pending)
        if self.linkwatch is not None:
            candidates |= set(self.linkwatch.new_veths())
        for ifindex in sorted(candidates - claimed):
            if self.interface_exists(ifindex):
                pod_ifindex[unclaimed_key(ifindex)] = ifindex
            else:
                self._adopted_pending.discard(ifindex)
        pending = sum(1 for p in pod_ifindex if _is_placeholder(p))
        self.metrics.pending_interfaces.set(pending)
        return pod_ifindex

    def attach_new_veths(self) -> bool:
        """Attach the veths netlink saw appear that no pass attached yet. Runs on the netlink
        thread (wake()), so neither a pass in progress (a bridge probe waits up to 0.3 s) nor the
        coalescing window delays it: a burst of new pods waits on nothing but the attach (~0.3 ms
        each). Only when failing closed: until the pass that follows writes their endpoint (PENDING,
        or their pod's), the programs drop every packet of the unknown endpoint. Each veth is tried
        once here; a failure is left to the pass, which records and retries it. The loop takes the
        attached veths over (_take_early_attached). Returns whether there was a new veth."""
        dp, lw = self.dp, self.linkwatch
        if dp is None or lw is None or not self.fail_closed:
            return False
        with self._early_lock:
            appeared = lw.new_veths()
            self._early_tried &= set(appeared)
            fresh = sorted(i for i in appeared if i not in self._early_tried and i not in self._attached)
            for ifindex in fresh:
                self._early_tried.add(ifindex)
                try:
                    dp.attach(ifindex)
                except Exception as exc:  # gone already, or a real failure: the pass decides
                    log.debug("early attach failed, left to the pass", ifindex=ifindex, error=str(exc))
                    continue
                self._early_attached[ifindex] = time.monotonic()
                log.info("attached", ifindex=ifindex, pods=[], before_discovery=True)
        return bool(fresh)

    def _take_early_attached(self) -> set[int]:
        """(loop thread) Adopt the veths attach_new_veths() attached; returns them."""
        with self._early_lock:
            taken, self._early_attached = self._early_attached, {}
        for ifindex, at in taken.items():
            if ifindex not in self._attached:
                self._attach_times[ifindex] = at
                self._attached.add(ifindex)
        if taken:
            self.metrics.attached.set(len(self._attached))
        return set(taken)

    def _attach_detach(self, dp: DatapathLike, pod_ifindex: Mapping[str, int], full: bool) -> bool:
        # attached on the netlink thread after this pass listed the veths: not unwanted, only newer
        early = self._take_early_attached()
        want = set(pod_ifindex.values())
        failed: set[int] = set()
        for ifindex in sorted(want if full else want - self._attached):
            try:
                dp.attach(ifindex)
            except Exception as exc:
                failed.add(ifindex)
                self._fail("attach", exc, ifindex=ifindex)
                continue
            if ifindex not in self._attached:
                self._attach_times[ifindex] = time.monotonic()
                log.info(
                    "attached", ifindex=ifindex, pods=[p for p, i in pod_ifindex.items() if i == ifindex]
                )
            self._attached.add(ifindex)
        self._attach_failed = failed
        if not failed:
            self._clear("attach")
        for ifindex in sorted(self._attached - want - early):
            if self.interface_exists(ifindex):
                try:
                    dp.detach(ifindex)
                except Exception as exc:
                    self._fail("detach", exc, ifindex=ifindex)
                    continue
                log.info("detached", ifindex=ifindex)
            self._attached.discard(ifindex)
            self._attach_reported.pop(ifindex, None)
            self._attach_times.pop(ifindex, None)
            with self._early_lock:
                self._early_tried.discard(ifindex)
            self._enforce_reported.discard(ifindex)
        self.metrics.attached.set(len(self._attached))
        return not failed

    def _attach_uplinks(self, dp: DatapathLike) -> None:
        """to_uplink on every uplink (re-checked on each full resync: routes change)."""
        attach = getattr(dp, "attach_uplink", None)
        if not callable(attach):
            return
        from controller.datapath.uplink import find_uplinks

        try:
            found = find_uplinks(self.config.uplinks)
        except Exception as exc:
            self._fail("uplink", exc)
            return
        failed = False
        for ifindex, name in sorted(found.items()):
            try:
                attach(ifindex)
            except Exception as exc:
                failed = True
                self._fail("uplink", exc, interface=name)
                continue
            if ifindex not in self._uplinks:
                log.info("uplink attached", interface=name, ifindex=ifindex)
        detach = getattr(dp, "detach_uplink", None)
        for ifindex, name in sorted(self._uplinks.items()):
            if ifindex in found or not callable(detach):
                continue
            if self.interface_exists(ifindex):
                try:
                    detach(ifindex)
                except Exception as exc:
                    self._fail("uplink", exc, interface=name)
                    continue
            log.info("uplink detached", interface=name, ifindex=ifindex)
        self._uplinks = dict(found)
        self._uplinks_checked = True
        if not failed:
            self._clear("uplink")

    # ------------------------------------------------------------------ capacity

    def _capacities(self) -> dict[str, int]:
        """max_entries per map from the datapath (capacity(), else the open maps); {} if unknown."""
        if self._capacity is not None:
            return self._capacity
        dp = self.dp
        caps: dict[str, int] = {}
        try:
            capacity = getattr(dp, "capacity", None)
            if callable(capacity):
                caps = {str(k): int(v) for k, v in capacity().items()}
            else:
                maps = getattr(dp, "maps", None)
                if isinstance(maps, Mapping):
                    caps = {str(k): int(m.max_entries) for k, m in maps.items() if hasattr(m, "max_entries")}
        except Exception as exc:
            log.warning("cannot read map capacities; not fitting entries", error=str(exc))
            return {}
        self._capacity = caps  # a map's size is fixed once created (pins keep their size)
        for name, cap in caps.items():
            self.metrics.map_capacity.labels(map=name).set(cap)
        return caps

    def _note_overflow(self, overflow: Mapping[str, Overflow], pod_ifindex: Mapping[str, int]) -> None:
        for pod, o in sorted(overflow.items()):
            if pod not in self._overflow or self._overflow[pod].map != o.map:
                self.metrics.map_overflow_total.labels(map=o.map).inc()
                log.error(
                    "map full: endpoint fails closed until there is room",
                    endpoint=pod,
                    ifindex=pod_ifindex.get(pod),
                    map=o.map,
                    needed=o.needed,
                    capacity=o.capacity,
                )
        for pod in sorted(set(self._overflow) - set(overflow)):
            log.info("map has room again: endpoint enforced", endpoint=pod, map=self._overflow[pod].map)
        with self._lock:
            self._overflow = dict(overflow)
        self.metrics.overflowed_endpoints.set(len(overflow))

    def _note_map_full(self, exc: BaseException) -> None:
        """The datapath found a map full anyway (e.g. adds before deletes): it left the affected
        endpoints PENDING; the retry completes them once deletes made room."""
        map_name = str(getattr(exc, "map_name", "?"))
        pods = tuple(getattr(exc, "endpoints", ()) or ())
        overflow = dict(self._overflow)
        for pod in pods:
            overflow.setdefault(
                pod, Overflow(str(pod), map_name, -1, (self._capacity or {}).get(map_name, -1))
            )
        self._note_overflow(overflow, self._synced_pod_ifindex or {})

    # ------------------------------------------------------------------ observations

    def _observe_latencies(self, fit: Fit, attached_at: float, done: float) -> None:
        """veth appeared (netlink event) -> attached, and -> its pod's policy synced."""
        lw = self.linkwatch
        if lw is None:
            return
        for pod, ifindex in sorted(fit.pod_ifindex.items()):
            appeared = lw.appeared_at(ifindex)
            if appeared is None:
                continue
            if ifindex in self._attached and ifindex not in self._attach_reported:
                at = self._attach_times.get(ifindex, attached_at)
                self._attach_reported[ifindex] = at
                self.metrics.endpoint_attach_latency_seconds.observe(max(0.0, at - appeared))
            if pod in fit.desired.endpoints and ifindex not in self._enforce_reported and self._last_sync_ok:
                self._enforce_reported.add(ifindex)
                latency = max(0.0, done - appeared)
                self.metrics.endpoint_enforce_latency_seconds.observe(latency)
                log.info(
                    "endpoint enforced",
                    pod=pod,
                    ifindex=ifindex,
                    veth_to_attached_ms=round(
                        max(0.0, self._attach_reported.get(ifindex, attached_at) - appeared) * 1000, 1
                    ),
                    veth_to_enforced_ms=round(latency * 1000, 1),
                )

    def note_event(self, ev: Event, now: float | None = None) -> None:
        """Remember when a cluster event arrived (realization lag is measured from it)."""
        if ev is _WAKE or ev is _LINK or ev.type == "BOOKMARK":
            return
        if len(self._arrivals) < 100_000:  # bounded: a stuck agent must not grow without end
            self._arrivals.append(time.monotonic() if now is None else now)

    def _observe_realized(self, pass_started: float, done: float) -> None:
        # Events that arrived before this pass's snapshot are in the caches it realized.
        realized = [t for t in self._arrivals if t <= pass_started]
        if not realized:
            return
        self._arrivals = [t for t in self._arrivals if t > pass_started]
        for t in realized:
            self.metrics.realization_lag_seconds.observe(max(0.0, done - t))

    def _policy_status(self, snap: Snapshot, fit: Fit) -> dict[str, dict[str, Any]]:
        """Per policy: generation realized, local pods selected, its errors (and overflow).

        It depends on the cluster, the snapshot's policies, the policy errors and the overflow
        only: the previous pass's status is returned while they are the same (the caches'
        content versions say the snapshot's objects are)."""
        versions = getattr(snap, "content_versions", None)
        last = self._policy_status_memo
        if (
            last is not None
            and versions is not None
            and last.cluster is self._cluster
            and last.versions == versions
            and last.errors is self._policy_errors
            and last.overflow == fit.overflow
        ):
            return last.status
        out = self._compute_policy_status(snap, fit)
        self._policy_status_memo = _StatusMemo(
            self._cluster, versions, self._policy_errors, dict(fit.overflow), out
        )
        return out

    def _compute_policy_status(self, snap: Snapshot, fit: Fit) -> dict[str, dict[str, Any]]:
        """The status of every policy; from the compiled cluster, only the policies whose
        generation, selected local pods or errors changed since the last call are redone."""
        cluster = self._cluster
        pols = getattr(cluster, "policies", None)
        pods = getattr(cluster, "pods", None)
        if not isinstance(pols, Mapping) or not isinstance(pods, Mapping):
            return {}
        last = self._status_parts
        self._status_parts = None
        raws = snap.policies if isinstance(snap.policies, list | tuple) else list(snap.policies)
        if last is not None and len(raws) == len(last.raws) and all(map(is_, raws, last.raws)):
            generations, parsed = last.generations, last.parsed  # the very objects: the same
        else:
            generations, parsed = _generations(raws, last.parsed if last is not None else {})
        errors: dict[str, list[dict[str, str]]] = {}
        for e in self._policy_errors:
            if e.object.startswith("NetworkPolicy "):
                errors.setdefault(e.object.removeprefix("NetworkPolicy "), []).append(
                    {"field": e.field, "message": e.message}
                )
        local = last.local if last is not None and last.pods is pods else _local_pods(pods, self.node)
        by_policy = _selected_by_policy(cluster, local)
        overflow = fit.overflow
        if by_policy is None:
            return {
                key: _policy_entry(generations.get(key), _matching(pol, local), errors.get(key, ()), overflow)
                for key, pol in sorted(pols.items())
            }

        def entry(key: str) -> dict[str, Any]:
            return _policy_entry(generations.get(key), by_policy.get(key, []), errors.get(key, ()), overflow)

        if last is None or last.overflow != overflow:
            out = {key: entry(key) for key in sorted(pols)}
        else:
            changed = {
                k for k in by_policy.keys() | last.selected.keys() if by_policy.get(k) != last.selected.get(k)
            }
            if generations is not last.generations:
                changed.update(k for k, _ in generations.items() ^ last.generations.items())
            if errors != last.errors:
                changed.update(
                    k for k in errors.keys() | last.errors.keys() if errors.get(k) != last.errors.get(k)
                )
            previous = last.status
            if pols.keys() == last.policies.keys():
                out = {**previous, **{k: entry(k) for k in changed if k in pols}} if changed else previous
            else:
                out = {
                    k: previous[k] if k in previous and k not in changed else entry(k) for k in sorted(pols)
                }
        self._status_parts = _StatusParts(
            raws, parsed, generations, errors, pods, local, pols, by_policy, dict(overflow), out
        )
        return out

    def refresh_datapath_metrics(self) -> None:
        """Map entries per map and drops by reason (kept monotonic across endpoint removal)."""
        dp = self.dp
        if dp is None:
            return
        try:
            counts_fn = getattr(dp, "entry_counts", None)
            if callable(counts_fn):
                for name, n in counts_fn().items():
                    self.metrics.map_entries.labels(map=name).set(n)
            counters_fn = getattr(dp, "counters", None)
            if callable(counters_fn):
                self._account_drops(counters_fn())
        except Exception as exc:
            log.warning("cannot read datapath statistics", error=str(exc))

    def collect_conntrack(self) -> None:
        """Free expired conntrack/fragment entries (an LRU map never drops them by deadline)."""
        gc_fn = getattr(self.dp, "gc_conntrack", None)
        if not callable(gc_fn):
            return
        try:
            result = gc_fn()
        except Exception as exc:
            log.warning("cannot collect expired conntrack entries", error=str(exc))
            return
        if result.ct_deleted or result.frag_deleted:
            log.info("expired conntrack entries removed", ct=result.ct_deleted, frag=result.frag_deleted)

    def _account_drops(self, counters: Mapping[tuple[int, int, int], tuple[int, int]]) -> None:
        for key, (packets, _bytes) in counters.items():
            reason = key[1]
            if reason < 64:
                continue
            before = self._counter_totals.get(key, 0)
            # a smaller value means the key was deleted and re-created (endpoint gone, index reused)
            delta = packets - before if packets >= before else packets
            if delta:
                self.metrics.drops_total.labels(reason=_reason_name(reason)).inc(delta)
        self._counter_totals = {k: v[0] for k, v in counters.items() if k[1] >= 64}

    # ------------------------------------------------------------------ the loop

    def _open_datapath(self) -> bool:
        try:
            self.dp = self._datapath_factory(self.node, self.config.pin_root)
        except VethguardError as exc:
            # Missing kernel headers, bpffs, bcc or privileges: retrying cannot fix these.
            self.fatal = exc
            self._fail("datapath", exc, pin_root=self.config.pin_root)
            return False
        except Exception as exc:
            self._fail("datapath", exc, pin_root=self.config.pin_root)
            return False
        self._clear("datapath")
        self._adopt_previous_attachments()
        log.info("datapath ready", node=self.node, pin_root=self.config.pin_root, adopted=len(self._attached))
        return True

    def _adopt_previous_attachments(self) -> None:
        """After a restart the pinned endpoints map names the veths a previous agent attached to;
        adopt them so that those whose pod is gone get detached by the first pass, and those that
        were still PENDING stay failed closed until a pod claims them."""
        dump = getattr(self.dp, "dump", None)
        if dump is None:
            return
        try:
            endpoints = getattr(dump(), "endpoints", {}) or {}
        except Exception as exc:
            log.warning("cannot read the pinned endpoints map", error=str(exc))
            return
        for ifindex, ep in endpoints.items():
            if not isinstance(ifindex, int) or not self.interface_exists(ifindex):
                continue
            self._attached.add(ifindex)
            if int(getattr(ep, "flags", 0) or 0) & EP_F_PENDING:
                self._adopted_pending.add(ifindex)

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(self.config.retry_cap_seconds, 0.5 * 2 ** min(self._failures - 1, 10)))

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on stop; keeps the heartbeat fresh. True if stopping."""
        self._heartbeat = time.monotonic()
        return self.stop_event.wait(max(0.0, seconds))

    def stop(self) -> None:
        self.stop_event.set()
        self.sources.events.put(_WAKE)

    def wake(self) -> None:
        """Run a pass now (called from the netlink thread when links/routes/neighbours change);
        new veths are attached first, right on the calling thread."""
        try:
            self.attach_new_veths()
        finally:
            self.sources.events.put(_LINK)

    def run(self) -> None:
        cfg = self.config
        stop = self.stop_event
        self.sources.start()
        if self.linkwatch is not None:
            self.linkwatch.start()
        # open the datapath (compile + load) while the informers list
        while not stop.is_set() and not self._open_datapath():
            if self.fatal is not None:
                return
            if self._wait(self._backoff()):
                return
        self._failures = 0
        while not stop.is_set() and not self.sources.has_synced:
            self._wait(0.05)
        if stop.is_set():
            return
        log.info("informers synced", node=self.node, generation=self.sources.snapshot().generation)
        self._drain_events()

        now = time.monotonic()
        next_full = now  # the first pass is a full one
        next_rescan = now + cfg.rescan_seconds
        next_stats = now
        last_pass = 0.0
        pending = False
        while not stop.is_set():
            now = time.monotonic()
            self._heartbeat = now
            due = min(next_full, next_rescan)
            if pending:
                due = min(due, last_pass + cfg.coalesce_seconds)
            try:
                ev = self.sources.events.get(timeout=max(0.0, due - now))
                self.note_event(ev)
                self._note_claim(ev)
                if ev is not _WAKE:
                    pending = True
                pending = self._drain_events() or pending
            except queue.Empty:
                pass
            if stop.is_set():
                break
            new_veth = bool(self._take_early_attached())
            pending = pending or new_veth
            now = time.monotonic()
            ran = False
            ok = True
            if now >= next_full:
                ok = self.reconcile(full=True)
                ran = True
                next_full = now + cfg.resync_seconds
                self.collect_conntrack()
            else:
                # a new veth's endpoint (PENDING, then its pod's) is written without coalescing
                urgent = new_veth or self._claim_waiting
                coalesced = pending and (urgent or now >= last_pass + cfg.coalesce_seconds)
                rescan = now >= next_rescan and (not self._failures or now >= self._retry_at)
                if coalesced or rescan:
                    ok = self.reconcile()
                    ran = True
            if now >= next_rescan:
                next_rescan = now + cfg.rescan_seconds
            if now >= next_stats:
                self.refresh_datapath_metrics()
                next_stats = now + cfg.datapath_metrics_seconds
            if ran:
                pending = False
                self._claim_waiting = False
                last_pass = time.monotonic()
                if not ok:
                    self._retry_at = last_pass + self._backoff()

    def _drain_events(self) -> bool:
        """Empty the queue, noting arrivals. Returns whether it held a real event (not a stop wake-up)."""
        got = False
        while True:
            try:
                ev = self.sources.events.get_nowait()
            except queue.Empty:
                return got
            self.note_event(ev)
            self._note_claim(ev)
            if ev is not _WAKE:
                got = True

    def _note_claim(self, ev: Event) -> None:
        """A Pod of this node was added or changed while a new veth waits PENDING for its pod: the
        pass that can claim the veth and write the pod's policy runs without coalescing."""
        if self._claim_waiting or ev.kind != "Pod" or ev.type not in ("ADDED", "MODIFIED"):
            return
        spec = ev.obj.get("spec") if isinstance(ev.obj, Mapping) else None
        if not isinstance(spec, Mapping) or spec.get("nodeName") != self.node:
            return
        self._claim_waiting = any(_is_placeholder(p) for p in self._synced_pod_ifindex or ())

    def close(self) -> None:
        """Release resources WITHOUT detaching programs (enforcement continues across restarts)."""
        if self.linkwatch is not None:
            self.linkwatch.stop()
        self.sources.stop()
        if self.dp is not None:
            try:
                self.dp.close()
            except Exception as exc:
                log.warning("datapath close failed", error=str(exc))


def _local_pods(pods: Mapping[str, Any], node: str) -> list[Any]:
    """The active pods of `pods` on `node`, in their order (the node test in C loops)."""
    values = pods.values()
    try:
        on_node = list(compress(values, map(eq, repeat(node), map(attrgetter("node"), values))))
    except AttributeError:  # not every object has a node
        on_node = [p for p in values if getattr(p, "node", None) == node]
    return [p for p in on_node if getattr(p, "active", True)]


def _generations(
    raws: Sequence[Any], previous: Mapping[int, tuple[Any, str | None, Any]]
) -> tuple[dict[str, Any], dict[int, tuple[Any, str | None, Any]]]:
    """Policy key ("ns/name") -> metadata.generation (None: absent or not an int) of raw
    policies, and id(raw) -> (raw, key, generation): `previous`, such a table of an earlier
    call, gives those of the very objects it holds."""
    generations: dict[str, Any] = {}
    parsed: dict[int, tuple[Any, str | None, Any]] = {}
    for raw in raws:
        hit = previous.get(id(raw))
        if hit is None or hit[0] is not raw:
            hit = (raw, *_generation_of(raw))
        parsed[id(raw)] = hit
        if hit[1] is not None:
            generations[hit[1]] = hit[2]
    return generations, parsed


def _generation_of(raw: Any) -> tuple[str | None, Any]:
    """(policy key, generation) of a raw policy; key None: no metadata."""
    # type() first: the API's objects are dicts, and the ABC test costs ~1 us each
    meta = raw.get("metadata") if type(raw) is dict or isinstance(raw, Mapping) else None
    if type(meta) is dict or isinstance(meta, Mapping):
        gen = meta.get("generation")
        key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        return key, gen if isinstance(gen, int) else None
    return None, None


def _matching(pol: Any, local: Sequence[Any]) -> list[str]:
    """Keys of the `local` pods a policy selects, by evaluating its selector on each."""
    try:
        return [p.key for p in local if p.namespace == pol.namespace and pol.pod_selector.matches(p.labels)]
    except Exception:  # a policy the model could not make sense of selects nothing we can count
        return []


def _policy_entry(
    generation: Any,
    selected: Sequence[str],
    errors: Sequence[dict[str, str]],
    overflow: Mapping[str, Overflow],
) -> dict[str, Any]:
    """One policy's status: its generation, how many local pods it selects, its errors and
    those of its selected pods that did not fit a map."""
    errs = list(errors)
    for pod in selected if overflow else ():
        o = overflow.get(pod)
        if o is not None:
            errs.append({"field": f"map {o.map}", "message": f"pod {pod}: {_overflow_message(o)}"})
    return {"generation": generation, "selected_pods": len(selected), "errors": errs}


def _selected_by_policy(cluster: Any, local: Sequence[Any]) -> dict[str, list[str]] | None:
    """policy key -> keys of the `local` pods it selects (in their order), from the compiled
    cluster's identity -> policies table: a policy selects an active pod iff it selects the
    pod's identity (same namespace, matching labels). None when `cluster` is not a ClusterState
    (the caller then evaluates every selector on every local pod)."""
    from controller.compiler.model import ClusterState

    if not isinstance(cluster, ClusterState):
        return None
    from controller.compiler.policy import compile_cluster

    try:
        compiled = compile_cluster(cluster)  # cached on the cluster: the pass's compute made it
        pod_identity = compiled.pod_identity
        policies_for_identity = compiled.policies_for_identity
    except Exception as exc:
        log.warning("cannot compile the cluster for the policy status; matching selectors", error=str(exc))
        return None
    out: dict[str, list[str]] = {}
    for pod in local:
        ident = pod_identity.get(pod.key)
        for pol in policies_for_identity.get(ident, ()) if ident is not None else ():
            out.setdefault(pol.key, []).append(pod.key)
    return out


def _overflow_message(o: Overflow) -> str:
    needed = f"needs {o.needed} entries, " if o.needed >= 0 else ""
    return f"failed closed (pending): map {o.map} is full ({needed}capacity {o.capacity})"


def _is_placeholder(pod: str) -> bool:
    return pod.startswith(UNCLAIMED)


def unclaimed_key(ifindex: int) -> str:
    """Placeholder endpoint name of a veth no pod claims yet (same form as controller.agent.discovery':
    no Kubernetes namespace contains parentheses, so it never names a pod)."""
    return f"{UNCLAIMED}{ifindex}"


def _reason_name(code: int) -> str:
    try:
        from controller.datapath.abi import Reason

        return Reason(code).name
    except (ImportError, ValueError):
        return str(code)


def _summarize(result: Any) -> Any:
    """The scalar fields of a SyncResult-like object, for the log line (never its op list)."""
    if result is None:
        return None
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        out = {}
        for f in dataclasses.fields(result):
            v = getattr(result, f.name)
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[f.name] = v
        return out
    if isinstance(result, Mapping):
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
    return str(result)[:200]


# ---------------------------------------------------------------------- CLI


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the per-node agent (watch the cluster, enforce policy on local pod veths)",
        description="Watch Pods, Namespaces, NetworkPolicies and Nodes; compile the policy of this node's "
        "pods into BPF maps; attach the tc programs to every local pod veth. Stopping the agent leaves "
        "programs and pinned maps in place.",
    )
    p.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="this node's name as in the API (default: $NODE_NAME)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument(
        "--pin-root", default=DEFAULT_PIN_ROOT, help=f"bpffs directory (default {DEFAULT_PIN_ROOT})"
    )
    p.add_argument(
        "--health-addr",
        default=DEFAULT_HEALTH_ADDR,
        help=f"HOST:PORT for /livez /readyz /metrics /status (default {DEFAULT_HEALTH_ADDR})",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=_env_float("VETHGUARD_RESYNC_SECONDS", 30.0),
        help="full re-attach + sync period, repairs drift of the kernel maps "
        "(default: $VETHGUARD_RESYNC_SECONDS or 30)",
    )
    p.add_argument(
        "--no-fail-closed",
        dest="fail_closed",
        action="store_false",
        help="let a new veth pass traffic until its pod's policy is known (default: a veth no known "
        "pod claims yet carries a PENDING endpoint: only ARP/ND and node traffic pass)",
    )
    p.add_argument(
        "--uplink",
        action="append",
        default=[u for u in os.environ.get("VETHGUARD_UPLINKS", "").split(",") if u],
        metavar="IFACE",
        help="an interface by which traffic leaves the node for other nodes; Service flows going "
        "there are judged on its tc egress after DNAT (repeatable; default: $VETHGUARD_UPLINKS, "
        "else every interface with a route through a gateway)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_cli)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


GC_GEN0_THRESHOLD = 20000  # CPython's default is 700


def tune_gc() -> None:
    """Raise the young-generation threshold of the cyclic garbage collector (process-wide).

    With the default (700) a pass at 10k pods ran ~17 young collections (~25 ms), which promote
    the pass's temporaries, and about one pass in four also a full collection over the whole heap
    (110-215 ms). With 20,000 a pass ran one young collection (~15 ms) and none of 16 measured
    passes a full one. Only cyclic garbage waits longer (the model has no reference cycles, and
    refcounting frees everything else at once)."""
    import gc

    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _preflight() -> None:
    """controller.agent.preflight's checks (headers, bpffs, capabilities) when this build has them."""
    import importlib

    try:
        preflight = importlib.import_module("controller.agent.preflight")
    except ImportError:
        return  # the datapath loader's own VethguardErrors still stop the agent (see Agent.fatal)
    require = getattr(preflight, "require", None)
    if callable(require):
        require()  # raises one VethguardError listing every problem and its fix


def run_cli(args: argparse.Namespace) -> int:
    if not args.node:
        print("vethguard agent: --node NAME is required (or set $NODE_NAME)", file=sys.stderr)
        return 2
    if args.resync_seconds <= 0:
        print("vethguard agent: --resync-seconds must be positive", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    tune_gc()
    metrics = Metrics()
    try:
        _preflight()
        api = load_api_client(args.kubeconfig)
        sources = Sources.from_api_client(api, metrics=metrics)
        agent = Agent(
            AgentConfig(
                node=args.node,
                pin_root=args.pin_root,
                health_addr=args.health_addr,
                resync_seconds=args.resync_seconds,
                fail_closed=getattr(args, "fail_closed", True),
                uplinks=tuple(getattr(args, "uplink", None) or ()),
            ),
            sources,
            metrics=metrics,
        )
        agent.linkwatch = LinkWatch(agent.wake)
        health = HealthServer(args.health_addr, agent.probes()).start()
    except VethguardError as exc:
        print(f"vethguard agent: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping (programs and maps stay in place)", signal=signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "agent starting",
        node=args.node,
        pin_root=args.pin_root,
        health_addr=args.health_addr,
        resync_seconds=args.resync_seconds,
        fail_closed=getattr(args, "fail_closed", True),
        pid=os.getpid(),
    )
    try:
        agent.run()
    finally:
        health.stop()
        agent.close()
    if agent.fatal is not None:
        print(f"vethguard agent: {agent.fatal}", file=sys.stderr)
        log.error("agent cannot run, exiting", node=args.node, error=str(agent.fatal))
        return 1
    log.info("agent stopped", node=args.node, realized_generation=agent.realized_generation)
    return 0
