"""Prometheus metrics of the agent, on a dedicated registry (served at /metrics).

Names follow vethguard_<subsystem>_<name>_{seconds,bytes,total}.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.core.log import get_logger
from controller.core.verdicts import DIRECTION_NAMES
from controller.datapath.abi import Reason
from controller.datapath.interface import NodeDatapath
from controller.datapath.loader import bcc_version

_COMPUTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Event -> kernel latencies: the agent aims at well under 100 ms, so resolve that range finely.
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

log = get_logger("vethguard.agent")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the agent exports. One instance per agent (tests create their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.policy_compute_seconds = Histogram(
            "vethguard_policy_compute_seconds",
            "Time to rebuild the cluster model and compute the node's desired map state.",
            buckets=_COMPUTE_BUCKETS,
            registry=r,
        )
        self.map_sync_seconds = Histogram(
            "vethguard_datapath_map_sync_seconds",
            "Time to attach programs and sync the BPF maps to the desired state.",
            buckets=_COMPUTE_BUCKETS,
            registry=r,
        )
        self.sync_operations_total = Counter(
            "vethguard_datapath_sync_operations_total",
            "Datapath sync operations, by kind (incremental: triggered by events or interface changes; "
            "full: periodic resync) and result (ok, error).",
            ["kind", "result"],
            registry=r,
        )
        self.watch_restarts_total = Counter(
            "vethguard_sources_watch_restarts_total",
            "Watch restarts by kind and reason (expired: 410 Gone -> relist; timeout; closed; error).",
            ["kind", "reason"],
            registry=r,
        )
        self.watch_events_total = Counter(
            "vethguard_sources_watch_events_total",
            "Watch events received, by kind and type.",
            ["kind", "type"],
            registry=r,
        )
        self.relists_total = Counter(
            "vethguard_sources_relists_total",
            "Full lists (initial and after 410 Gone), by kind.",
            ["kind"],
            registry=r,
        )
        self.realized_timestamp = Gauge(
            "vethguard_agent_realized_timestamp_seconds",
            "Unix time of the last pass after which the node's maps reflected the watched caches.",
            registry=r,
        )
        self.endpoints = Gauge(
            "vethguard_agent_endpoints",
            "Local pod endpoints in the desired state.",
            registry=r,
        )
        self.attached = Gauge(
            "vethguard_agent_attached_interfaces",
            "Pod veths the agent has attached its programs to.",
            registry=r,
        )
        self.policy_errors = Gauge(
            "vethguard_policy_errors",
            "Invalid or unsupported objects/fields in the current cluster state.",
            registry=r,
        )
        self.agent_errors_total = Counter(
            "vethguard_agent_errors_total",
            "Failures inside the agent loop, by stage (compute, discover, attach, detach, sync).",
            ["stage"],
            registry=r,
        )

        self.realization_lag_seconds = Histogram(
            "vethguard_agent_realization_lag_seconds",
            "Seconds from a cluster event's arrival at the agent to the end of the sync that realized it.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.endpoint_attach_latency_seconds = Histogram(
            "vethguard_endpoint_attach_latency_seconds",
            "Seconds from the netlink event of a new pod veth to our programs attached to it "
            "(pending or enforcing).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.endpoint_enforce_latency_seconds = Histogram(
            "vethguard_endpoint_enforce_latency_seconds",
            "Seconds from the netlink event of a new pod veth to the end of the sync that wrote its "
            "pod's real policy (before that it is failed closed when --fail-closed).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pending_interfaces = Gauge(
            "vethguard_agent_pending_interfaces",
            "New veths attached failed closed (pending) because no known pod claims them yet.",
            registry=r,
        )
        self.map_overflow_total = Counter(
            "vethguard_datapath_map_overflow_total",
            "Endpoints that had to fail closed (pending) because a map had no room for their entries, "
            "by map.",
            ["map"],
            registry=r,
        )
        self.overflowed_endpoints = Gauge(
            "vethguard_datapath_overflowed_endpoints",
            "Endpoints currently failed closed because a map is full.",
            registry=r,
        )
        self.map_entries = Gauge(
            "vethguard_datapath_map_entries",
            "Entries currently in each BPF map.",
            ["map"],
            registry=r,
        )
        self.map_capacity = Gauge(
            "vethguard_datapath_map_capacity",
            "max_entries of each BPF map.",
            ["map"],
            registry=r,
        )
        self.drops_total = Counter(
            "vethguard_datapath_drops_total",
            "Packets dropped by the tc programs, by direction (of the endpoint: ingress, egress) and "
            "reason (sum of vg_counters over endpoints and CPUs; kept monotonic across endpoint removal).",
            ["direction", "reason"],
            registry=r,
        )

        self.flows_events_total = Counter(
            "vethguard_flows_events_total",
            "Flow events the agent read from the node's vg_events ring buffer, by direction, verdict "
            "(allowed, denied, audit, log) and reason.",
            ["direction", "verdict", "reason"],
            registry=r,
        )
        self.flows_lost_total = Counter(
            "vethguard_flows_lost_total",
            "Flow events the agent could not keep, by reason (evicted: pushed out of the full store; "
            "reader_slow: a follower's queue was full; export: not written to the flow file; decode).",
            ["reason"],
            registry=r,
        )
        self.flows_stored = Gauge(
            "vethguard_flows_stored", "Flow records in the agent's store (repeats aggregated).", registry=r
        )
        self.flows_capacity = Gauge(
            "vethguard_flows_capacity", "Flow records the agent's store keeps at most.", registry=r
        )
        self.flows_followers = Gauge(
            "vethguard_flows_followers", "Readers following the node's flows now.", registry=r
        )
        self.flows_readers_total = Counter(
            "vethguard_flows_readers_total",
            "Connections to the flow socket, by result (served, refused).",
            ["result"],
            registry=r,
        )

        self.build_info = Gauge(
            "vethguard_build_info",
            "Always 1: the agent's version, Python, bcc and kernel release as labels.",
            ["version", "python", "bcc", "kernel"],
            registry=r,
        )
        self.build_info.labels(**build_labels()).set(1)
        # process_* (CPU seconds, resident memory, open fds, start time) and python_info
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class DatapathStats:
    """Map entry counts per map and drops by reason, read from a datapath into `metrics`; drop
    totals stay monotonic when a counter key is deleted and re-created (endpoint gone, index
    reused)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._totals: dict[tuple[int, int, int], int] = {}

    def refresh(self, dp: NodeDatapath) -> None:
        try:
            for name, n in dp.entry_counts().items():
                self.metrics.map_entries.labels(map=name).set(n)
            self._account_drops(dp.counters())
        except Exception as exc:
            log.warning("cannot read datapath statistics", error=str(exc))

    def _account_drops(self, counters: Mapping[tuple[int, int, int], tuple[int, int]]) -> None:
        for key, (packets, _bytes) in counters.items():
            _ep, reason, direction = key
            if reason < 64:
                continue
            before = self._totals.get(key, 0)
            delta = packets - before if packets >= before else packets
            if delta:
                self.metrics.drops_total.labels(
                    direction=DIRECTION_NAMES.get(direction, str(direction)), reason=_reason_name(reason)
                ).inc(delta)
        self._totals = {k: v[0] for k, v in counters.items() if k[1] >= 64}


def build_labels() -> dict[str, str]:
    """vethguard_build_info's labels: what a bug report needs to know about this agent."""
    import platform
    from importlib import metadata

    def version_of(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "version": version_of("vethguard"),
        "python": platform.python_version(),
        "bcc": bcc_version(),  # read from bcc's files: the agent does not import bcc
        "kernel": platform.release(),
    }


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return str(code)
