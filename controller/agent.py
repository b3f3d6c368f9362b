"""`vethguard agent --node NAME`: the per-node enforcement loop.

    informers (controller.sources) --events--> coalesce (<= 1 pass per 50 ms)
      -> ClusterState.from_objects(caches) -> mapstate.compute(cluster, node)    [pure]
      -> host-route discovery of local pod veths (controller.endpoints)
      -> Datapath.attach(new veths) / detach(gone veths) -> Datapath.sync(desired, pod_ifindex)
      -> realized_generation = min over kinds of the resourceVersion the caches held at compute time

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
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.endpoints import Discovered, Discovery, RouteDiscovery, interface_exists
from controller.errors import VethguardError
from controller.health import HealthProbes, HealthServer
from controller.log import configure as configure_logging
from controller.log import get_logger
from controller.metrics import Metrics
from controller.sources import Event, Snapshot, Sources, load_api_client

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
    from controller.model import ClusterState

    return ClusterState.from_objects


def _default_compute() -> Compute:
    from controller import mapstate

    fn = getattr(mapstate, "compute", None)
    if fn is None:
        raise VethguardError("controller.mapstate.compute is not available in this build")
    return fn


def _default_datapath_factory(node: str, pin_root: str) -> DatapathLike:
    from controller.datapath import Datapath

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


@dataclass(frozen=True)
class AgentError:
    object: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"object": self.object, "field": self.field, "message": self.message}


_WAKE = Event("agent", "SYNCED", "", None, "")  # put on the queue to wake the loop (stop)


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
    ) -> None:
        self.config = config
        self.node = config.node
        self.sources = sources
        self.metrics = metrics or Metrics()
        self._datapath_factory = datapath_factory
        self._build_cluster = build_cluster
        self._compute = compute
        self.discovery: Discovery = discovery or RouteDiscovery()
        self.interface_exists: Callable[[int], bool] = interface_exists
        self.dp: DatapathLike | None = None
        self.stop_event = threading.Event()
        self._lock = threading.Lock()  # guards what /status reads

        # state of the last successful steps
        self._desired: Any = None
        self._desired_versions: tuple[int, ...] | None = None
        self._synced_versions: tuple[int, ...] | None = None
        self._synced_pod_ifindex: dict[str, int] | None = None
        self._last_sync_ok = False
        self._attached: set[int] = set()
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

    # ------------------------------------------------------------------ status

    def live(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() - self._heartbeat < LIVENESS_STALL_SECONDS

    def status(self) -> dict[str, Any]:
        with self._lock:
            errors = [e.as_dict() for e in self._agent_errors.values()]
            errors += [e.as_dict() for e in self._policy_errors[:MAX_ERRORS_REPORTED]]
            endpoints = len(self._desired.endpoints) if self._desired is not None else 0
            snap_rvs: dict[str, str] = {}
            informers = getattr(self.sources, "informers", None)
            if isinstance(informers, dict):
                snap_rvs = {k: inf.resource_version for k, inf in informers.items()}
            return {
                "node": self.node,
                "ready": self.ready,
                "realized_generation": self.realized_generation,
                "endpoints": endpoints,
                "attached": len(self._attached),
                "pod_ifindex": dict(self._synced_pod_ifindex or {}),
                "pods_without_veth": list(self._discovered.missing),
                "errors": errors,
                "policy_errors": len(self._policy_errors),
                "last_sync_seconds": self.last_sync_seconds,
                "last_sync_at": self.last_sync_at,
                "syncs": self.syncs,
                "resource_versions": snap_rvs,
            }

    def probes(self) -> HealthProbes:
        return HealthProbes(
            live=self.live,
            ready=lambda: self.ready and not self.stop_event.is_set(),
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
        dp = self.dp
        if dp is None:
            return False
        kind = "full" if full else "incremental"
        snap = self.sources.snapshot()
        versions = snap.content_versions

        # 1. compute (only when cache contents changed since the last compute)
        if self._desired is None or versions != self._desired_versions:
            t0 = time.perf_counter()
            try:
                build = self._build_cluster or _default_build_cluster()
                compute = self._compute or _default_compute()
                cluster = build(snap.namespaces, snap.pods, snap.policies, snap.nodes)
                desired = compute(cluster, self.node)
            except Exception as exc:
                self._fail("compute", exc)
                return False
            self.metrics.policy_compute_seconds.observe(time.perf_counter() - t0)
            self._clear("compute")
            with self._lock:
                self._desired = desired
            self._desired_versions = versions
            self._record_policy_errors([*getattr(cluster, "errors", ()), *getattr(desired, "errors", ())])
            self.metrics.endpoints.set(len(desired.endpoints))
        desired = self._desired

        # 2. discover the local pods' veths
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
        pod_ifindex = dict(found.pod_ifindex)

        # 3. attach new veths (all of them on a full resync: catches filters removed behind our back)
        t0 = time.perf_counter()
        want = set(pod_ifindex.values())
        attach_failed: list[int] = []
        for ifindex in sorted(want if full else want - self._attached):
            try:
                dp.attach(ifindex)
            except Exception as exc:
                attach_failed.append(ifindex)
                self._fail("attach", exc, ifindex=ifindex)
                continue
            if ifindex not in self._attached:
                log.info(
                    "attached", ifindex=ifindex, pods=[p for p, i in pod_ifindex.items() if i == ifindex]
                )
            self._attached.add(ifindex)
        if not attach_failed:
            self._clear("attach")
        for ifindex in sorted(self._attached - want):
            if self.interface_exists(ifindex):
                try:
                    dp.detach(ifindex)
                except Exception as exc:
                    self._fail("detach", exc, ifindex=ifindex)
                    continue
                log.info("detached", ifindex=ifindex)
            self._attached.discard(ifindex)
        self.metrics.attached.set(len(self._attached))

        # 4. sync the maps when anything they depend on changed (always on a full resync)
        if (
            full
            or not self._last_sync_ok
            or versions != self._synced_versions
            or pod_ifindex != self._synced_pod_ifindex
        ):
            try:
                result = dp.sync(desired, pod_ifindex)
            except Exception as exc:
                self._last_sync_ok = False
                self.metrics.sync_operations_total.labels(kind=kind, result="error").inc()
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

        # 5. the maps reflect this snapshot: publish its generation
        gen = snap.generation
        with self._lock:
            if gen is not None and gen > self.realized_generation:
                self.realized_generation = gen
            self.ready = True
        self.metrics.realized_generation.set(self.realized_generation)
        self._failures = 0
        return True

    # ------------------------------------------------------------------ the loop

    def _open_datapath(self) -> bool:
        try:
            self.dp = self._datapath_factory(self.node, self.config.pin_root)
        except Exception as exc:
            self._fail("datapath", exc, pin_root=self.config.pin_root)
            return False
        self._clear("datapath")
        self._adopt_previous_attachments()
        log.info("datapath ready", node=self.node, pin_root=self.config.pin_root, adopted=len(self._attached))
        return True

    def _adopt_previous_attachments(self) -> None:
        """After a restart the pinned endpoints map names the veths a previous agent attached to;
        adopt them so that those whose pod is gone get detached by the first pass."""
        dump = getattr(self.dp, "dump", None)
        if dump is None:
            return
        try:
            endpoints = getattr(dump(), "endpoints", {}) or {}
        except Exception as exc:
            log.warning("cannot read the pinned endpoints map", error=str(exc))
            return
        self._attached |= {int(i) for i in endpoints if isinstance(i, int) and self.interface_exists(i)}

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

    def run(self) -> None:
        cfg = self.config
        stop = self.stop_event
        self.sources.start()
        # open the datapath (compile + load) while the informers list
        while not stop.is_set() and not self._open_datapath():
            if self._wait(self._backoff()):
                return
        self._failures = 0
        while not stop.is_set() and not self.sources.has_synced:
            self._wait(0.05)
        if stop.is_set():
            return
        log.info("informers synced", node=self.node, generation=self.sources.snapshot().generation)
        _drain(self.sources.events)

        now = time.monotonic()
        next_full = now  # the first pass is a full one
        next_rescan = now + cfg.rescan_seconds
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
                if ev is not _WAKE:
                    pending = True
                pending = _drain(self.sources.events) or pending
            except queue.Empty:
                pass
            if stop.is_set():
                break
            now = time.monotonic()
            ran = False
            ok = True
            if now >= next_full:
                ok = self.reconcile(full=True)
                ran = True
                next_full = now + cfg.resync_seconds
            else:
                coalesced = pending and now >= last_pass + cfg.coalesce_seconds
                rescan = now >= next_rescan and (not self._failures or now >= self._retry_at)
                if coalesced or rescan:
                    ok = self.reconcile()
                    ran = True
            if now >= next_rescan:
                next_rescan = now + cfg.rescan_seconds
            if ran:
                pending = False
                last_pass = time.monotonic()
                if not ok:
                    self._retry_at = last_pass + self._backoff()

    def close(self) -> None:
        """Release resources WITHOUT detaching programs (enforcement continues across restarts)."""
        self.sources.stop()
        if self.dp is not None:
            try:
                self.dp.close()
            except Exception as exc:
                log.warning("datapath close failed", error=str(exc))


def _drain(q: queue.Queue[Event]) -> bool:
    """Empty the queue. Returns whether it held a real event (not just a wake-up)."""
    got = False
    while True:
        try:
            ev = q.get_nowait()
        except queue.Empty:
            return got
        if ev is not _WAKE:
            got = True


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
        "--resync-seconds", type=float, default=30.0, help="full re-attach + sync period (default 30)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if not args.node:
        print("vethguard agent: --node NAME is required (or set $NODE_NAME)", file=sys.stderr)
        return 2
    if args.resync_seconds <= 0:
        print("vethguard agent: --resync-seconds must be positive", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    metrics = Metrics()
    try:
        api = load_api_client(args.kubeconfig)
        sources = Sources.from_api_client(api, metrics=metrics)
        agent = Agent(
            AgentConfig(
                node=args.node,
                pin_root=args.pin_root,
                health_addr=args.health_addr,
                resync_seconds=args.resync_seconds,
            ),
            sources,
            metrics=metrics,
        )
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
        pid=os.getpid(),
    )
    try:
        agent.run()
    finally:
        health.stop()
        agent.close()
    log.info("agent stopped", node=args.node, realized_generation=agent.realized_generation)
    return 0
