"""The per-node enforcement loop (`vethguard agent --node NAME`, controller.agent.cli).

The loop owns the order of a pass; its collaborators hold the state of one concern each:
errors.ErrorBook (failures by stage, invalid objects), attachments.Attachments (pod veths),
uplinks.Uplinks, capacity.MapCapacity (fitting the maps, overflow) and
policy_status.PolicyStatus. It reaches the kernel only through
controller.datapath.interface.NodeDatapath.

    informers (controller.agent.informers) --events--> coalesce (<= 1 pass per 50 ms)
      -> cluster_from_objects(caches) -> compute.compute(cluster, node)    [pure]
      -> discovery of local pod veths: host routes, or neighbours + bridge FDB (controller.agent.discovery)
      -> Datapath.attach(new veths) / detach(gone veths) -> Datapath.sync(desired, pod_ifindex)
      -> realized = that snapshot's versions and digests (controller.agent.realization)

A new veth is attached by the netlink thread as soon as it appears (before any pass: fail closed),
and the pass that writes its endpoint, and later its pod's policy, is not coalesced.

Also: a full resync (re-attach + sync) every --resync-seconds, a route rescan every second (a veth
that appears after its pod is attached within a second), and /livez /readyz /metrics /status on
--health-addr. A bad object or a failed step is logged, counted and retried; the loop never dies
on it and keeps enforcing the last synced state. SIGTERM/SIGINT stop the agent WITHOUT detaching
anything: programs stay attached and maps stay pinned, so enforcement continues across restarts.

Realization: each informer records the last resourceVersion it has seen (list, events,
BOOKMARKs) and its cache's digest atomically with its cache contents. A pass snapshots all
caches, and only after Datapath.sync succeeded (or was unnecessary because neither the cache
contents nor the pod -> ifindex map changed since the last successful sync) publishes that
snapshot as realized (controller.agent.realization: per kind its resourceVersion, object count
and digest, and the policies' own resourceVersions; a kind the API server does not serve is left
out). A failed pass never publishes. resourceVersions stay opaque strings: nothing here orders them.

/status JSON: Agent.status() (docs/INTERNALS.md "Agent status" names the fields the lab reads).

After a restart the agent adopts the veths listed in the pinned endpoints map, so veths of pods
deleted while it was down are detached by the first pass.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.agent import preflight
from controller.agent.attachments import Attachments
from controller.agent.capacity import Fit, MapCapacity
from controller.agent.cluster_events import Event, Snapshot
from controller.agent.discovery import NodeDiscovery, interface_exists
from controller.agent.errors import ErrorBook
from controller.agent.health import HealthProbes
from controller.agent.heap import Collector
from controller.agent.metrics import DatapathStats, Metrics
from controller.agent.policy_status import PolicyStatus, cluster_policy_status, model_counts
from controller.agent.protocols import LinkWatchLike, SourcesLike
from controller.agent.realization import realized_kinds, realized_objects
from controller.agent.uplinks import Uplinks
from controller.agent.veth_match import Discovered, Discovery, is_placeholder, may_claim_pending
from controller.compiler.frontends import frontends_of
from controller.compiler.stages.domains import NO_DOMAINS, DomainClasses
from controller.core.errors import VethguardError
from controller.core.log import get_logger
from controller.core.log import scalar_fields as _summarize
from controller.datapath.interface import NodeDatapath
from controller.datapath.loader import release_free_heap
from controller.datapath.sync import MapFullError

log = get_logger("vethguard.agent")

DEFAULT_PIN_ROOT = "/sys/fs/bpf/vethguard"
DEFAULT_HEALTH_ADDR = "127.0.0.1:9890"
LIVENESS_STALL_SECONDS = 60.0
MAX_ERRORS_REPORTED = 200

# (namespaces, pods, policies, nodes, cluster_policies=..., calico=...) -> ClusterState
BuildCluster = Callable[..., Any]
Compute = Callable[[Any, str], Any]


def _default_build_cluster() -> BuildCluster:
    from controller.compiler.builder import ClusterBuilder

    return ClusterBuilder().build  # reuses unchanged objects' parses (uid + resourceVersion)


def _default_compute() -> Compute:
    from controller.compiler.compute import compute

    return compute


def default_datapath_factory(node: str, pin_root: str, state_dir: str | None = None) -> NodeDatapath:
    from controller.datapath.node import Datapath

    # points bcc at the headers preflight found (or raises the fix); the compiling child inherits it
    preflight.use_kernel_headers()
    return Datapath(node=node, pin_root=pin_root, state_dir=state_dir)  # state_dir: the clsact ledger


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
    # Host endpoints' failsafe ports, (protocol, port); None: Calico's defaults (desired_state)
    failsafe_inbound: tuple[tuple[str, int], ...] | None = None
    failsafe_outbound: tuple[tuple[str, int], ...] | None = None

    def failsafe_overrides(self) -> dict[str, tuple[tuple[str, int], ...]]:
        out = {"failsafe_inbound": self.failsafe_inbound, "failsafe_outbound": self.failsafe_outbound}
        return {k: v for k, v in out.items() if v is not None}


_WAKE = Event("agent", "SYNCED", "", None, "")  # put on the queue to wake the loop (stop)
_LINK = Event("netlink", "SYNCED", "", None, "")  # a link/route/neighbour changed: run a pass


class Agent:
    """The loop. Its collaborators: `errors` (failures by stage, invalid objects), `attachments`
    (pod veths), `uplinks`, `capacity` (map fitting, overflow) and `policy_status`; the datapath
    (a NodeDatapath) is opened by run() through `datapath_factory`."""

    def __init__(
        self,
        config: AgentConfig,
        sources: SourcesLike,
        *,
        datapath_factory: Callable[[str, str], NodeDatapath] = default_datapath_factory,
        build_cluster: BuildCluster | None = None,
        compute: Compute | None = None,
        discovery: Discovery | None = None,
        metrics: Metrics | None = None,
        linkwatch: LinkWatchLike | None = None,
        collector: Collector | None = None,
    ) -> None:
        """`collector`: when the cyclic garbage collector scans everything (controller.agent.heap;
        the agent's process passes one, a test's leaves it alone)."""
        self.config = config
        self.collector = collector
        self.node = config.node
        self.sources = sources
        self.metrics = metrics or Metrics()
        self._datapath_factory = datapath_factory
        self._build_cluster = build_cluster
        self._compute = compute
        self.discovery: Discovery = discovery or NodeDiscovery()
        self.interface_exists: Callable[[int], bool] = interface_exists
        self.linkwatch = linkwatch
        self.fail_closed = config.fail_closed
        self.dp: NodeDatapath | None = None
        self.fatal: VethguardError | None = None  # set when the agent must exit (exit code 1)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()  # guards what /status reads

        def exists(ifindex: int) -> bool:  # tests replace interface_exists after construction
            return self.interface_exists(ifindex)

        self.errors = ErrorBook(self.node, self.metrics, self._lock)
        self.attachments = Attachments(self.metrics, self.errors, exists)
        self.uplinks = Uplinks(config.uplinks, self.errors, exists)
        self.capacity = MapCapacity(self.metrics, self._lock)
        self.policy_status = PolicyStatus(self.node)

        # state of the last successful steps
        self._desired: Any = None
        self._cluster: Any = None
        self._desired_versions: tuple[int, ...] | None = None
        # The cluster and desired state a pass replaced: freed by use_idle_time (or the next
        # pass that replaces them), not during the pass (a 50k-pod model takes ~3 ms to free)
        self._retired: tuple[Any, ...] = ()
        # (services, nodes, their frontends and errors) of the last pass that computed them
        self._frontends_of: tuple[Any, Any, frozenset[Any], list[Any]] | None = None
        self._synced_versions: tuple[int, ...] | None = None
        self._synced_pod_ifindex: dict[str, int] | None = None
        self._last_sync_ok = False
        self._discovered = Discovered()
        self._realized: Snapshot | None = None  # the last snapshot the maps reflect
        self.ready = False
        self.last_sync_seconds: float | None = None
        self.last_sync_at: float | None = None
        self.syncs = 0
        self._heartbeat = time.monotonic()
        self._failures = 0
        self._retry_at = 0.0
        self._policies: dict[str, dict[str, Any]] = {}
        self._arrivals: list[float] = []  # arrival times of cluster events not realized yet
        self._claim_waiting = False  # a Pod event of this node came while a new veth was PENDING
        self.datapath_stats = DatapathStats(self.metrics)

    # ------------------------------------------------------------------ status

    def live(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() - self._heartbeat < LIVENESS_STALL_SECONDS

    def domains(self) -> DomainClasses:
        """The domainNames classes of the last compute (the DNS thread's matcher)."""
        desired = self._desired
        return desired.domains if desired is not None else NO_DOMAINS

    def computed_versions(self) -> tuple[int, ...] | None:
        """The cache versions of the last compute (set before its maps are written)."""
        return self._desired_versions

    def is_ready(self) -> bool:
        """Synced (informers listed), attached (every discovered veth) and reconciled (last pass ok)."""
        return (
            self.ready
            and not self.stop_event.is_set()
            and self.sources.has_synced
            and self._last_sync_ok
            and not self.attachments.failed
        )

    def status(self) -> dict[str, Any]:
        """node, ready, realized, realized_objects, endpoints (local pods in the desired state),
        attached (veths with our programs), errors ([{object, field, message}]: failures by
        stage, then invalid objects), counts of the model's cluster-wide and Calico objects,
        last sync duration/time, pod_ifindex, pods_without_veth, resource_versions (per kind)."""
        resource_versions = self.sources.resource_versions()
        with self._lock:
            errors = [e.as_dict() for e in self.errors.by_stage.values()]
            errors += [e.as_dict() for e in self.capacity.errors()]
            errors += [e.as_dict() for e in self.errors.policy[:MAX_ERRORS_REPORTED]]
            endpoints = len(self._desired.endpoints) if self._desired is not None else 0
            pod_ifindex = dict(self._synced_pod_ifindex or {})
            overflow = sorted(self.capacity.overflow.values(), key=lambda o: o.pod)
            return {
                "node": self.node,
                "ready": self.is_ready(),
                "realized": realized_kinds(self._realized),
                "realized_objects": realized_objects(self._realized),
                "endpoints": endpoints,
                "attached": len(self.attachments.attached),
                "pod_ifindex": pod_ifindex,
                "pending_interfaces": sorted(i for p, i in pod_ifindex.items() if is_placeholder(p)),
                "pods_without_veth": list(self._discovered.missing),
                "errors": errors,
                "policy_errors": len(self.errors.policy),
                **model_counts(self._cluster),
                "cluster_policy_status": cluster_policy_status(
                    self._cluster, self._desired, self.errors.policy, self.capacity.overflow
                ),
                "policies": {k: dict(v) for k, v in self._policies.items()},
                "overflow": [dataclasses.asdict(o) for o in overflow],
                "fail_closed": self.fail_closed,
                "last_sync_seconds": self.last_sync_seconds,
                "last_sync_at": self.last_sync_at,
                "syncs": self.syncs,
                "resource_versions": resource_versions,
            }

    def probes(self) -> HealthProbes:
        return HealthProbes(
            live=self.live,
            ready=self.is_ready,
            status=self.status,
            metrics=self.metrics.exposition,
        )

    # ------------------------------------------------------------------ one pass

    def reconcile(self, full: bool = False) -> bool:
        """Bring the datapath to the state of the caches. Returns whether the maps now reflect them."""
        versions_before = self._desired_versions
        ok = self._reconcile(full)
        if full or self._desired_versions is not versions_before:
            # The previous model and this pass's scratch (sync diff, kernel dump) are garbage
            # now; glibc would keep their pages in its arenas (~25 MB at 10k pods).
            release_free_heap()
        if self.collector is not None:
            self.collector.after_pass(full)
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
                cluster = build(
                    snap.namespaces,
                    snap.pods,
                    snap.policies,
                    snap.nodes,
                    cluster_policies=snap.cluster_policies,
                    calico=snap.calico,
                )
                desired = compute(cluster, self.node)
                fronts, front_errors = self._frontends(snap.services, snap.nodes)
                desired = dataclasses.replace(
                    desired,
                    frontends=fronts,
                    errors=(*desired.errors, *front_errors),
                    **self.config.failsafe_overrides(),
                )
            except Exception as exc:
                self.errors.fail("compute", exc)
                return False
            self.metrics.policy_compute_seconds.observe(time.perf_counter() - t0)
            self.errors.clear("compute")
            with self._lock:
                self._retired = (self._cluster, self._desired)
                self._desired = desired
                self._cluster = cluster
            self._desired_versions = versions
            self.errors.record_policy_errors([*cluster.errors, *desired.errors])
            self.metrics.endpoints.set(len(desired.endpoints))
        desired = self._desired

        # 2. discover the local pods' veths (+ new veths no pod claims yet: failed closed)
        pod_ips = {pod: [ip for ip in (ep.ipv4, ep.ipv6) if ip] for pod, ep in desired.endpoints.items()}
        try:
            found = self.discovery.discover(pod_ips)
        except Exception as exc:
            self.errors.fail("discover", exc)
            return False
        self.errors.clear("discover")
        if found.conflicts and found.conflicts != self._discovered.conflicts:
            log.warning("pod addresses route to different interfaces", conflicts=found.conflicts)
        if found.missing != self._discovered.missing and found.missing:
            log.info("local pods without a host route yet", pods=found.missing)
        self._discovered = found
        pod_ifindex = self.attachments.wanted(found, self.fail_closed, self.linkwatch)

        # 3. fit the desired entries into the maps (endpoints that do not fit fail closed)
        fit = self.capacity.fit(dp, desired, pod_ifindex, frozenset(self._synced_pod_ifindex or ()))

        # 4. attach new veths (all of them on a full resync: catches filters removed behind our
        # back); failures are recorded, and the sync still runs for what is attached
        t0 = time.perf_counter()
        self.attachments.reconcile(dp, pod_ifindex, full)
        if full or not self.uplinks.checked:
            self.uplinks.reconcile(dp)
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
                sync = dp.sync if full else dp.sync_incremental
                result = sync(fit.desired, fit.pod_ifindex)
            except Exception as exc:
                self._last_sync_ok = False
                self.metrics.sync_operations_total.labels(kind=kind, result="error").inc()
                if isinstance(exc, MapFullError):
                    self.capacity.note_map_full(exc, self._synced_pod_ifindex or {})
                self.errors.fail("sync", exc)
                return False
            elapsed = time.perf_counter() - t0
            self.metrics.map_sync_seconds.observe(elapsed)
            self.metrics.sync_operations_total.labels(kind=kind, result="ok").inc()
            self.errors.clear("sync")
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
                attached=len(self.attachments.attached),
                duration_ms=round(elapsed * 1000, 2),
                result=_summarize(result),
            )
        done = time.monotonic()
        self.attachments.observe_latencies(self.linkwatch, fit, self._last_sync_ok, attached_at, done)

        # 6. the maps reflect this snapshot: publish it and the policies' status
        policies = self._policy_status(snap, fit)
        with self._lock:
            self._realized = snap
            self._policies = policies
            self.ready = True
        self.metrics.realized_timestamp.set(time.time())
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

    def _policy_status(self, snap: Snapshot, fit: Fit) -> dict[str, dict[str, Any]]:
        """Per policy: generation realized, local pods selected, errors (see PolicyStatus)."""
        return self.policy_status.status(self._cluster, snap, self.errors.policy, fit.overflow)

    def attach_new_veths(self) -> bool:
        """Attach the veths netlink saw appear that no pass attached yet. Runs on the netlink
        thread (wake()), so neither a pass in progress (a bridge probe waits up to 0.3 s) nor the
        coalescing window delays it: a burst of new pods waits on nothing but the attach (~0.3 ms
        each). Only when failing closed: until the pass that follows writes their endpoint (PENDING,
        or their pod's), the programs drop every packet of the unknown endpoint. The loop takes the
        attached veths over (Attachments.take_early). Returns whether there was a new veth."""
        dp, lw = self.dp, self.linkwatch
        if dp is None or lw is None or not self.fail_closed:
            return False
        return self.attachments.attach_new(dp, lw)

    # ------------------------------------------------------------------ observations

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

    def refresh_datapath_metrics(self) -> None:
        """Map entries per map and drops by reason (metrics.DatapathStats)."""
        if self.dp is not None:
            self.datapath_stats.refresh(self.dp)

    def collect_conntrack(self) -> None:
        """Free expired conntrack/fragment entries (an LRU map never drops them by deadline)."""
        if self.dp is None:
            return
        try:
            result = self.dp.gc_conntrack()
        except Exception as exc:
            log.warning("cannot collect expired conntrack entries", error=str(exc))
            return
        if result.ct_deleted or result.frag_deleted:
            log.info("expired conntrack entries removed", ct=result.ct_deleted, frag=result.frag_deleted)

    def sweep_links(self) -> None:
        """Remove the pins of tcx links whose interface is gone (a pod's veth goes with its netns)."""
        if self.dp is None:
            return
        try:
            swept = self.dp.sweep_links()
        except Exception as exc:
            log.warning("cannot remove the pinned links of deleted interfaces", error=str(exc))
            return
        if swept:
            log.info("pinned links of deleted interfaces removed", links=swept)

    # ------------------------------------------------------------------ the loop

    def _open_datapath(self) -> bool:
        try:
            self.dp = self._datapath_factory(self.node, self.config.pin_root)
        except VethguardError as exc:
            # Missing kernel headers, bpffs, bcc or privileges: retrying cannot fix these.
            self.fatal = exc
            self.errors.fail("datapath", exc, pin_root=self.config.pin_root)
            return False
        except Exception as exc:
            self.errors.fail("datapath", exc, pin_root=self.config.pin_root)
            return False
        self.errors.clear("datapath")
        self.attachments.adopt(self.dp)
        adopted = len(self.attachments.attached)
        mode = getattr(self.dp, "attach_mode", None)  # fakes have none
        pins = self.config.pin_root
        log.info("datapath ready", node=self.node, pin_root=pins, adopted=adopted, attach=mode)
        return True

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
        log.info("informers synced", node=self.node, resource_versions=self.sources.resource_versions())
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
            new_veth = bool(self.attachments.take_early())
            pending = pending or new_veth
            now = time.monotonic()
            ran = False
            ok = True
            if now >= next_full:
                ok = self.reconcile(full=True)
                ran = True
                next_full = now + cfg.resync_seconds
                self.collect_conntrack()
                self.sweep_links()
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
                else:
                    self.use_idle_time()

    def use_idle_time(self) -> None:
        """After a pass, while no event waits: free what the pass replaced, then the datapath's
        idle work (spare copies of tier profiles, one per call, so that an event waits for at
        most one)."""
        self._retired = ()
        dp = self.dp
        while dp is not None and self.sources.events.empty() and not self.stop_event.is_set():
            try:
                if not dp.prepare_spares():
                    return
            except Exception as e:  # idle work: the next pass repairs whatever it left
                log.warning("preparing spare tier profiles failed", node=self.node, error=str(e))
                return

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
        """The pass that can claim a PENDING veth for its pod runs without coalescing."""
        if not self._claim_waiting:
            self._claim_waiting = may_claim_pending(
                ev.kind, ev.type, ev.obj, self.node, self._synced_pod_ifindex
            )

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
