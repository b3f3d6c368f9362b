"""`vethguard bench control-plane`: compile time, event -> map-updated latency, agent memory and
map sizes on synthetic clusters, and realization latency through a 3-node lab.

Per cluster size a fresh worker process (`python -m controller.bench.control_plane --worker`):
  * builds the synthetic cluster of its Size (pods, namespaces, NetworkPolicies of five shapes,
    ClusterNetworkPolicies of five shapes: controller.bench.synth_cnp.control_plane_cluster; 100
    pods per node; default sizes 1k and 10k pods with 500 namespaces and 1,000 policies, 10k with
    200 CNPs, 50k with 2,500 / 5,000 / 200) as raw API objects, then compiles and loads the
    programs (bcc) as the agent does while its informers list; the ipcache and policy maps are
    sized for the cluster (at least the agent's defaults; recorded as *_map_capacity);
  * full compile = ClusterState.from_objects + compute.compute for node-1, timed separately
    (its objects are dropped before the agent's pass, so they are not counted as the agent's);
  * runs the real controller.agent.loop.Agent reconcile pass (build + compute + fit + Datapath.sync)
    against a real Datapath whose maps are pinned in a throwaway directory. The informers are
    replaced by an in-memory snapshot and veth discovery by a fixed pod -> ifindex table: the
    synthetic pods have no veths, so attach/detach are skipped (a real agent attaches once per
    new veth, not per event). Event latency = one reconcile after the change (the agent's 50 ms
    coalescing window is not included); the kinds: pod add, label change, NetworkPolicy add and
    delete, and ClusterNetworkPolicy add and delete where the size has some;
  * RSS of that process (VmRSS after the events, VmHWM peak): the agent's footprint with the
    compiled cluster and the maps, with the raw API objects held as the informers would hold them
    (not the kubernetes client's import); bcc compiles in a child process
    (controller/datapath/build.py), so its LLVM is in neither figure;
  * map memory = sum of the kernel's `memlock` of every map (/proc/self/fdinfo).
Realization: a 3-node lab with agents; a deny-all policy is applied and deleted alternately
through the lab API (in-process client); apply->realized is the time until every agent reports the
new resourceVersion, apply->probe the time until a cross-node TCP probe sees the new verdict.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.bench import synth, synth_cnp
from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import EMPTY_CALICO, CalicoObjects

if TYPE_CHECKING:
    from controller.datapath.readback import GcResult, KernelState

from controller.bench.common import (
    lab_cli,
    lab_name,
    lab_status,
    loadavg,
    log,
    logs_to_stderr,
    machine,
    median,
    percentile,
)


@dataclass(frozen=True)
class Size:
    """One synthetic cluster: pods, namespaces, NetworkPolicies, ClusterNetworkPolicies."""

    pods: int
    namespaces: int
    policies: int
    cluster_policies: int = 0

    @classmethod
    def of(cls, pods: int) -> Size:
        """The issue's shape for `pods`: 500 namespaces and 1,000 NetworkPolicies up to 10k pods
        (the sizes measured before), one namespace per 20 pods and two policies per namespace
        beyond, and 200 ClusterNetworkPolicies beyond 10k pods (50k: 2,500 / 5,000 / 200)."""
        namespaces = max(500, pods // 20)
        return cls(pods, namespaces, 2 * namespaces, 200 if pods > 10000 else 0)

    @classmethod
    def parse(cls, text: str) -> Size:
        """PODS (the shape of Size.of) or PODS:NAMESPACES:POLICIES:CNPS."""
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            return cls.of(parts[0])
        if len(parts) != 4 or min(parts) < 0 or parts[0] < 1 or parts[1] < 1:
            raise ValueError(f"size {text!r}: PODS or PODS:NAMESPACES:POLICIES:CNPS")
        return cls(*parts)

    def label(self) -> str:
        return f"{self.pods}:{self.namespaces}:{self.policies}:{self.cluster_policies}"


DEFAULT_SIZES = (Size(1000, 500, 1000), Size(10000, 500, 1000), Size(10000, 500, 1000, 200), Size.of(50000))
QUICK_SIZES = (Size(200, 50, 100), Size(1000, 50, 100, 20))


@dataclass
class Settings:
    sizes: tuple[Size, ...] = DEFAULT_SIZES
    events: int = 50  # per event kind and size (p99 of 50 lies between the two slowest)
    realization_rounds: int = 10

    @classmethod
    def quick(cls) -> Settings:
        return cls(sizes=QUICK_SIZES, events=3, realization_rounds=2)


POLICY_MAP_DEFAULT = 262144  # bpf/lib/maps.h VG_MAX_POLICY

# --- the worker ------------------------------------------------------------------------------


class _Snapshot:
    """Stands in for controller.agent.cluster_events.Snapshot: the kinds' objects and content versions."""

    def __init__(self, kinds: dict[str, list[Any]], versions: dict[str, int], generation: int) -> None:
        self._kinds = kinds
        self._versions = versions
        self.generation = generation

    @property
    def namespaces(self) -> list[Any]:
        return self._kinds["Namespace"]

    @property
    def pods(self) -> list[Any]:
        return self._kinds["Pod"]

    @property
    def policies(self) -> list[Any]:
        return self._kinds["NetworkPolicy"]

    @property
    def nodes(self) -> list[Any]:
        return self._kinds["Node"]

    @property
    def services(self) -> list[Any]:
        return self._kinds.get("Service", [])

    @property
    def cluster_policies(self) -> list[Any]:
        return self._kinds.get("ClusterNetworkPolicy", [])

    @property
    def calico(self) -> CalicoObjects:
        return EMPTY_CALICO  # the benchmark's clusters have no Calico objects

    @property
    def content_versions(self) -> tuple[int, ...]:
        return tuple(self._versions[k] for k in sorted(self._versions))


class MemorySources:
    """In-memory informer caches: change() replaces a kind's objects and bumps its version.

    Like the API server, every object carries a metadata.resourceVersion: the objects given at
    the start and every new or replaced object (one without a resourceVersion) get the next one.
    """

    has_synced = True

    def __init__(self, cluster: synth.Cluster) -> None:
        self.kinds: dict[str, list[Any]] = {
            "Namespace": list(cluster.namespaces),
            "Pod": list(cluster.pods),
            "NetworkPolicy": list(cluster.policies),
            "Node": list(cluster.nodes),
            "ClusterNetworkPolicy": list(cluster.cluster_policies),
        }
        self.versions = dict.fromkeys(self.kinds, 1)
        self.events: queue.Queue[Any] = queue.Queue()  # never fed: change() is followed by a reconcile
        self.generation = 1
        self.resource_version = 0
        for objects in self.kinds.values():
            self._stamp(objects)

    def _stamp(self, objects: list[Any]) -> None:
        for obj in objects:
            meta = obj.setdefault("metadata", {})
            if not meta.get("resourceVersion"):
                self.resource_version += 1
                meta["resourceVersion"] = str(self.resource_version)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def change(self, kind: str, objects: list[Any]) -> None:
        self._stamp(objects)
        self.kinds[kind] = objects
        self.versions[kind] += 1
        self.generation += 1

    def resource_versions(self) -> dict[str, str]:
        return {}

    def snapshot(self) -> _Snapshot:
        return _Snapshot({k: list(v) for k, v in self.kinds.items()}, dict(self.versions), self.generation)


@dataclass
class FixedDiscovery:
    """Every local pod 'has' a veth with a made-up ifindex (stable per pod)."""

    table: dict[str, int]

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Any:
        from controller.agent.veth_match import Discovered

        for pod in pod_ips:
            self.table.setdefault(pod, 100000 + len(self.table))
        return Discovered(pod_ifindex={p: self.table[p] for p in pod_ips})


class Unattached:
    """A real Datapath whose attach/detach are skipped (the synthetic pods have no veths)."""

    def __init__(self, dp: Any) -> None:
        self.dp = dp

    def attach(self, ifindex: int) -> None:
        pass

    def detach(self, ifindex: int) -> None:
        pass

    def sync(self, desired: Any, pod_ifindex: Mapping[str, int]) -> Any:
        return self.dp.sync(desired, pod_ifindex)

    def sync_incremental(self, desired: Any, pod_ifindex: Mapping[str, int]) -> Any:
        return self.dp.sync_incremental(desired, pod_ifindex)

    def prepare_spares(self) -> int:
        return int(self.dp.prepare_spares())

    def capacity(self) -> dict[str, int]:
        return dict(self.dp.capacity())

    def find_uplinks(self, names: Sequence[str]) -> dict[int, str]:
        return {}  # the host's interfaces are not the benchmark's

    def attach_uplink(self, ifindex: int) -> None:
        pass

    def detach_uplink(self, ifindex: int) -> None:
        pass

    def entry_counts(self) -> dict[str, int]:
        return dict(self.dp.entry_counts())

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        return dict(self.dp.counters())

    def gc_conntrack(self) -> GcResult:
        return self.dp.gc_conntrack()

    def sweep_links(self) -> int:
        return self.dp.sweep_links()

    def dump(self) -> KernelState:
        return self.dp.dump()

    def close(self) -> None:
        self.dp.close()


def rss_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of process `pid` (default: this one), from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1])
    return out


def map_memory(dp: Any) -> dict[str, int]:
    """Kernel memlock bytes of every map the Datapath opened (from /proc/self/fdinfo)."""
    out = {}
    for name, m in dp.maps.items():
        for line in Path(f"/proc/self/fdinfo/{m.fd}").read_text().splitlines():
            if line.startswith("memlock:"):
                out[name] = int(line.split()[1])
    return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _events(
    sources: MemorySources,
    reconcile: Callable[[], bool],
    events: int,
    size: Size,
    failed_closed: Callable[[], int] = lambda: 0,
    idle: Callable[[], object] = lambda: None,
) -> dict[str, Any]:
    """p50/p99 (and the fastest and slowest) of change -> reconcile done, per event kind; the
    ClusterNetworkPolicy kinds where the cluster has some. `failed_closed()`: how many endpoints
    the last reconcile left failed closed (a map full): counted per kind, since such an event's
    time is not that of a realized change. `idle()`: what the agent does after a pass while no
    event waits (Agent.use_idle_time), run untimed after each event."""
    pods, namespaces, nodes = size.pods, size.namespaces, max(1, size.pods // 100)
    lat: dict[str, list[float]] = {"pod_add": [], "label_change": [], "policy_add": [], "policy_delete": []}
    if size.cluster_policies:
        lat |= {"cnp_add": [], "cnp_delete": []}
    closed = dict.fromkeys(lat, 0)

    def timed(kind: str) -> None:
        lat[kind].append(_timed(reconcile))
        closed[kind] += 1 if failed_closed() else 0
        idle()

    for k in range(events):
        # a new pod on node-1 (index chosen so i % nodes == 0 puts it there)
        new = synth.cp_pod(pods + k * nodes, namespaces, nodes)
        sources.change("Pod", [*sources.kinds["Pod"], new])
        timed("pod_add")
        # relabel a pod of node-1
        victim = (k * nodes) % pods
        relabeled = synth.cp_pod(victim, namespaces, nodes, app_offset=k + 1)
        pod_list = list(sources.kinds["Pod"])
        pod_list[victim] = relabeled
        sources.change("Pod", pod_list)
        timed("label_change")
        # add, then delete, a policy (every fifth shape is default-deny: pick a selecting one)
        pol = synth.cp_policy(size.policies + 5 * k, namespaces)
        before = list(sources.kinds["NetworkPolicy"])
        sources.change("NetworkPolicy", [*before, pol])
        timed("policy_add")
        sources.change("NetworkPolicy", before)
        timed("policy_delete")
        if size.cluster_policies:  # add, then delete, one of the mix (every shape in turn)
            cnps = list(sources.kinds["ClusterNetworkPolicy"])
            sources.change(
                "ClusterNetworkPolicy", [*cnps, synth_cnp.cp_cnp(size.cluster_policies + k, namespaces)]
            )
            timed("cnp_add")
            sources.change("ClusterNetworkPolicy", cnps)
            timed("cnp_delete")
    return {
        kind: {
            "p50_ms": round(percentile(v, 50) * 1000, 1),
            "p99_ms": round(percentile(v, 99) * 1000, 1),
            "min_ms": round(min(v) * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
            "n": len(v),
            "failed_closed_events": closed[kind],
        }
        for kind, v in lat.items()
    }


def _full_compile(cluster: synth.Cluster, size: Size) -> dict[str, Any]:
    """Time ClusterState.from_objects + compute.compute for node-1; nothing of it outlives the call.
    Entries per endpoint: its own (NetworkPolicy) entries, and its tier profile's (the
    ClusterNetworkPolicies', shared by the endpoints the same policies select)."""
    from controller.compiler import compute

    t0 = time.perf_counter()
    state = cluster_from_objects(
        cluster.namespaces, cluster.pods, cluster.policies, cluster.nodes, cluster.cluster_policies
    )
    t1 = time.perf_counter()
    desired = compute.compute(state, "node-1")
    t2 = time.perf_counter()
    if state.errors:
        raise RuntimeError(f"the synthetic cluster has policy errors: {state.errors[:3]}")
    entries = [len(ep.entries) for ep in desired.endpoints.values()]
    tiers = [len(desired.tier_profiles.get(ep.tier_profile, {})) for ep in desired.endpoints.values()]
    out: dict[str, Any] = {
        "pods": size.pods,
        "namespaces": size.namespaces,
        "policies": size.policies,
        "cluster_policies": size.cluster_policies,
        "nodes": len(cluster.nodes),
        "build_s": round(t1 - t0, 3),
        "compute_s": round(t2 - t1, 3),
        "full_compile_s": round(t2 - t0, 3),
        "local_endpoints": len(entries),
        "policy_entries": sum(entries),
        "entries_per_endpoint_mean": round(sum(entries) / max(1, len(entries)), 1),
        "entries_per_endpoint_max": max(entries, default=0),
        "tier_entries_per_endpoint_mean": round(sum(tiers) / max(1, len(tiers)), 1),
        "tier_entries_per_endpoint_max": max(tiers, default=0),
        "tier_profiles": len(desired.tier_profiles),
        "tier_entries": sum(len(v) for v in desired.tier_profiles.values()),
        "ipcache_entries": len(desired.ipcache),
    }
    return out


def worker(size: Size, events: int) -> dict[str, Any]:
    from controller.agent import preflight
    from controller.agent.cli import tune_gc
    from controller.agent.heap import Collector
    from controller.agent.loop import Agent, AgentConfig
    from controller.datapath.node import Datapath

    tune_gc()  # as `vethguard agent` does for its process
    pods = size.pods
    cluster = synth_cnp.control_plane_cluster(pods, size.namespaces, size.policies, size.cluster_policies)
    # The agent compiles and loads its programs while its informers list the cluster: same
    # order here, so the peak (VmHWM) has bcc's compile on top of the raw API objects.
    node = f"bench-cp-{uuid.uuid4().hex[:8]}"
    # Maps sized for the cluster like an operator would (the agent's defaults: 65,536 ipcache,
    # 262,144 policy entries). The 50k mix's entries are ~398k, and an event that gives endpoints
    # a new tier profile needs room for the new profile beside the old one until the endpoints
    # are switched (115k more at 50k): 400k (8 per pod) left them failed closed.
    ipcache, policy = max(65536, 2 * pods), max(POLICY_MAP_DEFAULT, 12 * pods)
    pin_root = "/sys/fs/bpf/vethguard"
    preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
    try:
        dp = Datapath(
            node=node,
            pin_root=pin_root,
            extra_cflags=(f"-DVG_MAX_IPCACHE={ipcache}", f"-DVG_MAX_POLICY={policy}"),
        )
    except BaseException:
        Datapath.remove_pins(node, pin_root)  # a failed compile or load leaves its pin directory
        raise
    try:
        # The timed full compile is the benchmark's, not the agent's (which builds and keeps its
        # own): done after the load and dropped on return, so the RSS below is the agent's.
        out = _full_compile(cluster, size)
        out |= {"ipcache_map_capacity": ipcache, "policy_map_capacity": policy}
        sources = MemorySources(cluster)
        agent = Agent(
            AgentConfig(node="node-1", pin_root=pin_root, health_addr=None),
            sources,  # type: ignore[arg-type]  # duck-typed like the informers
            datapath_factory=lambda _n, _p: Unattached(dp),
            discovery=FixedDiscovery({}),
            collector=Collector(),  # as `vethguard agent` has
        )
        agent.interface_exists = lambda _i: False
        if not agent._open_datapath():
            raise RuntimeError(f"agent could not open the datapath: {agent.status()['errors']}")
        out["first_sync_s"] = round(_timed(lambda: agent.reconcile(full=True)), 3)
        if not agent.ready:
            raise RuntimeError(f"first reconcile failed: {agent.status()['errors']}")
        if agent.capacity.errors():  # e.g. a map too small: endpoints failed closed
            raise RuntimeError(f"first reconcile: {[e.as_dict() for e in agent.capacity.errors()]}")
        idle_s = [0.0]

        def idle() -> None:  # as the agent's loop does after a pass while no event waits
            idle_s[0] += _timed(agent.use_idle_time)

        idle()
        out["events"] = _events(
            sources, agent.reconcile, events, size, lambda: len(agent.capacity.errors()), idle
        )
        out["idle_s"] = round(idle_s[0], 3)  # spare tier profiles written between events (untimed)
        counts = dp.entry_counts()
        out["map_entries"] = {k: v for k, v in counts.items() if v}
        memory = map_memory(dp)
        out["map_memory_bytes"] = sum(memory.values())
        out["map_memory_by_map"] = memory
        rss = rss_kb()
        out["rss_mb"] = round(rss.get("VmRSS", 0) / 1024, 1)
        out["peak_rss_mb"] = round(rss.get("VmHWM", 0) / 1024, 1)
    finally:
        dp.close()
        Datapath.remove_pins(node, pin_root)
    return out


def run_worker(size: Size, settings: Settings) -> dict[str, Any]:
    args = [sys.executable, "-m", "controller.bench.control_plane", "--worker", size.label()]
    args += ["--events", str(settings.events)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"control-plane worker for {size.label()} failed:\n{proc.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


# --- realization through a lab ---------------------------------------------------------------

REALIZE_MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: rz}
"""
REALIZE_POD = """---
apiVersion: v1
kind: Pod
metadata: {{name: p{i}, namespace: rz, labels: {{app: p{i}}}}}
spec:
  nodeName: node-{node}
  containers: [{{name: c, ports: [{{containerPort: 80, protocol: TCP}}]}}]
"""
DENY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-all", "namespace": "rz"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}


def _probe_until(source_ns: str, address: str, want: bool, timeout: float = 30.0) -> float:
    from controller.lab import netns, probe

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        # the start of the attempt that saw it: a refused/dropped probe spends its whole timeout
        started = time.perf_counter()
        if netns.run_in_netns(source_ns, lambda: probe.probe_tcp(address, 80, 0.2)) == want:
            return started
    raise RuntimeError(f"probe never saw connected={want} within {timeout}s")


def realization(settings: Settings) -> dict[str, Any]:
    from controller.lab import manifests, topology
    from controller.lab.client import apply_manifests, connect, delete_manifests, teardown, wait_realized

    lab = lab_name("rz")
    model = REALIZE_MODEL + "".join(REALIZE_POD.format(i=i, node=1 + i % 3) for i in range(6))
    apply_s: list[float] = []
    probe_s: list[float] = []
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(model)
            f.flush()
            log(f"lab {lab}: 3 nodes with agents")
            lab_cli("up", "--name", lab, "-f", f.name, "--nodes", "3", timeout=600)
        status = lab_status(lab)
        target = next(ip for ip in status["pods"]["rz/p1"]["ips"] if ":" not in ip)  # on node-2
        source_ns = topology.LabNames(lab).pod("rz", "p0")  # on node-1
        client = connect(lab)
        deny = manifests.parse("bench", DENY)
        for rnd in range(settings.realization_rounds * 2):
            adding = rnd % 2 == 0
            t0 = time.perf_counter()
            if adding:
                rv, errors = apply_manifests(client, [deny], quiet=True)
            else:
                import contextlib
                import io

                with contextlib.redirect_stdout(io.StringIO()):
                    rv, errors = delete_manifests(client, [deny], ignore_not_found=False)
            if errors:
                raise RuntimeError("; ".join(errors))
            wait_realized(client, rv, 60)
            t1 = time.perf_counter()
            t2 = _probe_until(source_ns, target, want=not adding)
            apply_s.append(t1 - t0)
            probe_s.append(t2 - t0)
    finally:
        teardown(lab)
    return {
        "nodes": 3,
        "changes": len(apply_s),
        "apply_to_all_realized_ms": {
            "p50": round(median(apply_s) * 1000, 1),
            "p99": round(percentile(apply_s, 99) * 1000, 1),
        },
        "apply_to_probe_ms": {
            "p50": round(median(probe_s) * 1000, 1),
            "p99": round(percentile(probe_s, 99) * 1000, 1),
        },
        "note": "lab API write -> every agent's realized_generation (polled every 0.1 s) "
        "-> cross-node TCP probe",
    }


def run(settings: Settings) -> dict[str, Any]:
    doc: dict[str, Any] = {"benchmark": "control-plane", "machine": machine(), "settings": asdict(settings)}
    doc["sizes"] = []
    for size in settings.sizes:
        log(
            f"control plane: {size.pods} pods, {size.namespaces} namespaces, {size.policies} "
            f"NetworkPolicies, {size.cluster_policies} ClusterNetworkPolicies"
        )
        doc["sizes"].append(run_worker(size, settings))
        log(f"  -> {json.dumps({k: v for k, v in doc['sizes'][-1].items() if k != 'map_memory_by_map'})}")
    doc["realization"] = realization(settings)
    log(f"realization: {doc['realization']}")
    doc["machine"]["loadavg_end"] = loadavg()
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="control-plane benchmark worker (used by `vethguard bench`)")
    ap.add_argument(
        "--worker",
        type=Size.parse,
        required=True,
        metavar="SIZE",
        help="PODS (the default shape for that many) or PODS:NAMESPACES:POLICIES:CNPS",
    )
    ap.add_argument("--events", type=int, default=Settings.events, help="events per kind")
    args = ap.parse_args(argv)
    with logs_to_stderr():  # the agent's log lines go to stdout: keep it for the JSON document
        doc = worker(args.worker, args.events)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
