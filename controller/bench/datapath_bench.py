"""`vethguard bench datapath`: pod -> pod throughput and latency against a no-program baseline,
a pass-through tc program, vethguard at several policy/ipcache sizes, and kube-router-style
iptables+ipset at the same policies; plus per-packet program cost from kernel BPF stats.

How (DESIGN.md "Measuring performance"):
  * a lab with agents off (`vethguard lab up --no-agents`): bench/client and bench/server on
    node-1 (and bench/server2 on node-2 with --nodes 2: the cross-node path). The benchmark
    itself plays the agent, so it can switch what is attached between runs.
  * one Datapath (its own pinned maps, under the lab's pin root) per node and level, synced once
    with controller.compiler.compute of a synthetic cluster (controller.bench.synth): `rules`
    synthetic ingress rules select the server, `ipcache` synthetic pods fill the ipcache, and one
    policy allows the client on the measured ports. Switching to a level = re-attaching that
    Datapath's programs (tc replace), so nothing is re-synced between runs.
  * configurations: baseline (our filters and the clsact we added removed), passthrough (the
    `passthrough` program on both hooks), vethguard-<rules>, iptables-<rules> (ipsets loaded once
    per level; the filter table restored before and emptied after each run, so conntrack hooks are
    not active during the other configurations).
  * every round runs every configuration (order rotated by one each round), each doing an
    iperf3 single-stream TCP run (64 KB writes: throughput), a sockperf TCP ping-pong run (RTT
    p50/p99, and its rate: TCP request/response transactions per second, one in flight) and an
    iperf3 UDP run of 64-byte datagrams at full speed (datagrams the server received per
    second): the small-packet figures, where per-packet cost shows, via `vethguard lab exec`;
    figures are medians over rounds, ratios are to the baseline of the same run. With two or
    more CPUs the clients run on one CPU and the servers on another (taskset), so every
    configuration and round has the same placement (left to the scheduler, same-node TCP
    request/response ran at ~13 k/s with a bimodal p50 on a 2-CPU VM; pinned, ~34 k/s).
  * then small packets in pairs (controller.bench.small_packets): rounds of short UDP 64 B and
    TCP request/response runs of the baseline, the pass-through program and vethguard at the
    largest level back to back, each figure a median of ratios to the same round's baseline (the
    figure issue 19's small-packet target is read from); the UDP runs record the client's send
    rate and both sides' CPU use beside what the server received.
  * per-packet cost: controller.bench.cost (BPF_PROG_TEST_RUN + kernel.bpf_stats_enabled) on
    the smallest and the largest level's Datapath (its big maps loaded).
  * ClusterNetworkPolicy cost: controller.bench.tier_cost, new-flow and established packets of
    a pod selected by 1,000 NetworkPolicies with 0, 10 and 100 ClusterNetworkPolicies (its own
    Datapaths, pinned under the lab's pin root), alternated in the same rounds.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from controller.agent import preflight
from controller.bench import small_packets, synth, tier_cost, traffic
from controller.bench.bpf_parts import PASSTHROUGH, bench_programs
from controller.bench.common import (
    lab_cli,
    lab_name,
    lab_status,
    loadavg,
    log,
    machine,
    median,
    ratio,
    rotated,
    tool_version,
)
from controller.bench.iptables import Ruleset, build_ruleset
from controller.bench.report import DATAPATH_METRICS
from controller.bench.tier_cost import TierSettings
from controller.compiler.builder import cluster_from_objects
from controller.core import programs
from controller.lab import netns, topology
from controller.lab.client import teardown
from controller.lab.state import LabPaths


@dataclass(frozen=True)
class Level:
    rules: int
    ipcache: int

    @property
    def tag(self) -> str:
        return str(self.rules)


FULL_LEVELS = (Level(10, 1000), Level(1000, 10000), Level(10000, 100000))
QUICK_LEVELS = (Level(10, 1000), Level(1000, 10000))


@dataclass
class Settings:
    levels: tuple[Level, ...] = FULL_LEVELS
    rounds: int = 5
    seconds: float = 4.0  # per iperf3 run and per sockperf run
    nodes: int = 1
    cost_rounds: int = 7
    cost_packets: int = 20000
    pair_rounds: int = 10  # small packets in pairs (controller.bench.small_packets)
    pair_seconds: float = 2.0
    tiers: TierSettings = field(default_factory=TierSettings)

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            levels=QUICK_LEVELS,
            rounds=1,
            seconds=1.0,
            nodes=1,
            cost_rounds=3,
            cost_packets=5000,
            pair_rounds=1,
            pair_seconds=1.0,
            tiers=TierSettings.quick(),
        )


@dataclass
class Sample:
    throughput_gbps: list[float] = field(default_factory=list)
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    # small packets, where per-packet cost shows (64 KB TCP segments hide it)
    udp64_kpps: list[float] = field(default_factory=list)  # 64-byte UDP datagrams received, k/s
    tcp_rr_ktps: list[float] = field(default_factory=list)  # TCP request/response (1 in flight), k/s


# --- the lab ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Path_:
    name: str  # "same-node" / "cross-node"
    client: str
    server: str


@dataclass
class Bench:
    lab: str
    settings: Settings
    paths: list[Path_]
    pod_ip: dict[str, str] = field(default_factory=dict)
    pod_node: dict[str, int] = field(default_factory=dict)
    veth: dict[str, int] = field(default_factory=dict)  # pod -> host-side ifindex (in its node)
    datapaths: dict[tuple[int, int], Any] = field(default_factory=dict)  # (node, rules) -> Datapath
    rulesets: dict[tuple[int, int], Ruleset] = field(default_factory=dict)
    programming: dict[str, dict[str, float]] = field(default_factory=dict)
    attacher: Any = None  # clsact filters, as the agent attaches by default
    tcx_attacher: Any = None  # tcx links (the "+tcx" configurations; None: this kernel has no tcx)
    passthrough_fd: int | None = None  # bench_parts.c's pass-through program, while measuring

    @property
    def names(self) -> topology.LabNames:
        return topology.LabNames(self.lab)

    def node_ns(self, node: int) -> str:
        return self.names.node(node)

    def pods(self) -> list[str]:
        return sorted({p for path in self.paths for p in (path.client, path.server)})


def lab_model(nodes: int) -> tuple[str, list[Path_], dict[str, int]]:
    placement = {"client": 1, "server": 1}
    paths = [Path_("same-node", "client", "server")]
    if nodes >= 2:
        placement["server2"] = 2
        paths.append(Path_("cross-node", "client", "server2"))
    docs = [f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {synth.BENCH_NS}}}\n"]
    for pod, node in placement.items():
        role = "client" if pod == "client" else "server"
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {synth.BENCH_NS}, "
            f"labels: {{role: {role}}}}}\nspec: {{nodeName: node-{node}, containers: [{{name: c}}]}}\n"
        )
    return "---\n".join(docs), paths, placement


def ifindex_in(ns: str, ifname: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", ifname], capture_output=True, text=True, check=True
    )
    return int(json.loads(out.stdout)[0]["ifindex"])


@contextmanager
def bench_lab(settings: Settings) -> Iterator[Bench]:
    lab = lab_name("dp")
    model, paths, placement = lab_model(settings.nodes)
    bench = Bench(lab, settings, paths)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(model)
            f.flush()
            log(f"lab {lab}: up with {settings.nodes} node(s), agents off")
            lab_cli("up", "--name", lab, "-f", f.name, "--nodes", str(settings.nodes), "--no-agents")
        status = lab_status(lab)
        for pod, node in placement.items():
            info = status["pods"][f"{synth.BENCH_NS}/{pod}"]
            bench.pod_ip[pod] = next(ip for ip in info["ips"] if ":" not in ip)
            bench.pod_node[pod] = node
            bench.veth[pod] = ifindex_in(bench.node_ns(node), topology.pod_ifname(synth.BENCH_NS, pod))
        for server in sorted({path.server for path in paths}):
            servers += traffic.start_servers(lab, server)
            traffic.wait_listening(lab, server)
        yield bench
    finally:
        for proc in servers:
            with suppress(ProcessLookupError):
                proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for dp in bench.datapaths.values():
            with suppress(Exception):
                dp.close()
        teardown(lab)  # kills what runs in its namespaces, deletes them and the pins under its pin root


# --- configurations ----------------------------------------------------------------------------


def _in_node(bench: Bench, node: int, fn: Callable[[], object]) -> None:
    netns.run_in_netns(bench.node_ns(node), fn)


def detach_all(bench: Bench) -> None:
    for attacher in (bench.attacher, bench.tcx_attacher):
        if attacher is None:
            continue
        for pod in bench.pods():
            ifindex = bench.veth[pod]
            _in_node(bench, bench.pod_node[pod], functools.partial(attacher.detach, ifindex))


def _attach(bench: Bench, fds: Callable[[int], tuple[int, int]], tcx: bool = False) -> None:
    """Attach with one attacher only: switching from the other detaches it first (an attacher
    converts the other's attachments too, but the bench says so explicitly)."""
    attacher = bench.tcx_attacher if tcx else bench.attacher
    if attacher is None:
        raise RuntimeError("this kernel has no tcx hooks: no +tcx configurations")
    detach_all(bench)
    for pod in bench.pods():
        node, ifindex = bench.pod_node[pod], bench.veth[pod]
        from_fd, to_fd = fds(node)
        _in_node(bench, node, functools.partial(attacher.attach, ifindex, from_fd, to_fd))


def _iptables(bench: Bench, node: int, text: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", bench.node_ns(node), "iptables-restore"], input=text, text=True, check=True
    )
    return time.perf_counter() - t0


EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


@contextmanager
def configured(bench: Bench, config: str) -> Iterator[None]:
    """Make `config` the only thing between the pods for the duration of the block."""
    nodes = sorted(set(bench.pod_node.values()))
    tcx = config.endswith(small_packets.TCX)
    config = config.removesuffix(small_packets.TCX)
    if config == "baseline":
        detach_all(bench)
    elif config == "passthrough":
        fd = bench.passthrough_fd
        if fd is None:
            raise RuntimeError("the pass-through program is loaded only while measure_rounds runs")
        _attach(bench, lambda _n: (fd, fd), tcx)
    elif config.startswith("vethguard-"):
        rules = int(config.split("-", 1)[1])
        _attach(
            bench,
            lambda n: (
                bench.datapaths[(n, rules)].prog_fd("from_pod"),
                bench.datapaths[(n, rules)].prog_fd("to_pod"),
            ),
            tcx,
        )
    elif config.startswith("iptables-"):
        rules = int(config.split("-", 1)[1])
        detach_all(bench)
        for n in nodes:
            took = _iptables(bench, n, bench.rulesets[(n, rules)].iptables_restore())
            bench.programming.setdefault(config, {}).setdefault(f"iptables_restore_s_node{n}", round(took, 3))
    try:
        yield
    finally:
        if config.startswith("iptables-"):
            for n in nodes:
                _iptables(bench, n, EMPTY_FILTER)


# --- setup of the levels -------------------------------------------------------------------------


def desired_cluster(bench: Bench, level: Level) -> Any:

    pairs = [(p.client, bench.pod_ip[p.client], p.server, bench.pod_ip[p.server]) for p in bench.paths]
    placement = [(pod, topology.node_name(node)) for pod, node in bench.pod_node.items()]
    c = synth.datapath_cluster(level.rules, level.ipcache, pairs, placement)
    return cluster_from_objects(c.namespaces, c.pods, c.policies, c.nodes)


def prepare_level(bench: Bench, level: Level) -> dict[str, Any]:
    from controller.compiler import compute
    from controller.datapath.node import Datapath

    t0 = time.perf_counter()
    cluster = desired_cluster(bench, level)
    build_s = time.perf_counter() - t0
    info: dict[str, Any] = {"rules": level.rules, "ipcache_pods": level.ipcache}
    pin_root = str(LabPaths(bench.lab).pin_root)
    cap = max(65536, 1 << (level.ipcache + 1024).bit_length())
    for node in sorted(set(bench.pod_node.values())):
        node_name = topology.node_name(node)
        t_node = time.perf_counter()
        desired = compute.compute(cluster, node_name)
        # What one agent spends: the cluster model plus its node's desired state (the first
        # node's; later nodes reuse the model's node-independent work, as agents do not).
        info.setdefault("compute_s", round(build_s + time.perf_counter() - t_node, 3))
        preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
        dp = Datapath(
            node=f"bench-{level.rules}-n{node}", pin_root=pin_root, extra_cflags=(f"-DVG_MAX_IPCACHE={cap}",)
        )
        bench.datapaths[(node, level.rules)] = dp
        local = {f"{synth.BENCH_NS}/{p}": bench.veth[p] for p, n in bench.pod_node.items() if n == node}
        t1 = time.perf_counter()
        dp.sync(desired, local)
        info[f"vethguard_sync_s_node{node}"] = round(time.perf_counter() - t1, 3)
        counts = dp.entry_counts()
        info[f"policy_entries_node{node}"] = counts["vg_policy"]
        info[f"ipcache_entries_node{node}"] = counts["vg_ipcache4"]
        rs = build_ruleset(cluster, node_name, salt=f"{level.rules}")
        bench.rulesets[(node, level.rules)] = rs
        t2 = time.perf_counter()
        subprocess.run(
            ["ip", "netns", "exec", bench.node_ns(node), "ipset", "restore"],
            input=rs.ipset_restore(),
            text=True,
            check=True,
        )
        info[f"ipset_restore_s_node{node}"] = round(time.perf_counter() - t2, 3)
        info[f"iptables_rules_node{node}"] = rs.rule_count
        info[f"ipset_members_node{node}"] = rs.ipset_members
    return info


# --- the run ---------------------------------------------------------------------------------


def configs_for(levels: tuple[Level, ...]) -> list[str]:
    return (
        ["baseline", "passthrough"]
        + [f"vethguard-{lv.rules}" for lv in levels]
        + [f"iptables-{lv.rules}" for lv in levels]
    )


def measure_rounds(bench: Bench) -> tuple[dict[str, dict[str, Sample]], small_packets.Samples]:
    """The main rounds (every configuration), then the small packets in pairs."""
    s = bench.settings
    configs = configs_for(s.levels)
    samples: dict[str, dict[str, Sample]] = {p.name: {c: Sample() for c in configs} for p in bench.paths}
    with bench_programs(next(iter(bench.datapaths.values()))) as fds:  # compiled once, not per round
        bench.passthrough_fd = fds[PASSTHROUGH]
        try:
            _measure_rounds(bench, configs, samples)
            pairs = measure_pairs(bench)
        finally:
            detach_all(bench)  # nothing of ours stays attached once the program is unloaded
            bench.passthrough_fd = None
    return samples, pairs


def measure_pairs(bench: Bench) -> small_packets.Samples:
    s = bench.settings
    by_name = {p.name: p for p in bench.paths}

    def run_path(name: str) -> tuple[traffic.UdpRun, float]:
        path = by_name[name]
        server_ip = bench.pod_ip[path.server]
        udp = traffic.iperf3_udp64(bench.lab, path.client, server_ip, s.pair_seconds)
        return udp, traffic.sockperf(bench.lab, path.client, server_ip, s.pair_seconds)[2]

    return small_packets.measure(
        small_packets.paired_configs(s.levels[-1].rules, tcx=bench.tcx_attacher is not None),
        list(by_name),
        s.pair_rounds,
        functools.partial(configured, bench),
        run_path,
        log,
    )


def _measure_rounds(bench: Bench, configs: list[str], samples: dict[str, dict[str, Sample]]) -> None:
    s = bench.settings
    for rnd in range(s.rounds):
        for config in rotated(configs, rnd):
            with configured(bench, config):
                for path in bench.paths:
                    smp = samples[path.name][config]
                    server_ip = bench.pod_ip[path.server]
                    smp.throughput_gbps.append(traffic.iperf3(bench.lab, path.client, server_ip, s.seconds))
                    p50, p99, rr = traffic.sockperf(bench.lab, path.client, server_ip, s.seconds)
                    smp.p50_us.append(p50)
                    smp.p99_us.append(p99)
                    smp.tcp_rr_ktps.append(rr)
                    smp.udp64_kpps.append(
                        traffic.iperf3_udp64(bench.lab, path.client, server_ip, s.seconds).received_kpps
                    )
            log(
                f"round {rnd + 1}/{s.rounds} {config}: "
                + ", ".join(
                    f"{p}: {smp.throughput_gbps[-1]:.2f} Gbit/s p50 {smp.p50_us[-1]:.1f} us "
                    f"udp64 {smp.udp64_kpps[-1]:.0f} kpps rr {smp.tcp_rr_ktps[-1]:.1f} k/s"
                    for p, smp in ((p, samples[p][config]) for p in samples)
                )
            )


def summarize(samples: dict[str, dict[str, Sample]], levels: tuple[Level, ...]) -> list[dict[str, Any]]:
    """One row per (path, config): medians, ratios to the baseline and to iptables at that level."""
    rows = []
    by_rules = {lv.rules: lv for lv in levels}
    for path, configs in samples.items():
        keys = [m.key for m in DATAPATH_METRICS]
        med = {c: {k: median(getattr(smp, k)) for k in keys} for c, smp in configs.items()}
        base = med["baseline"]
        for config, m in med.items():
            engine, _, rules_s = config.partition("-")
            rules = int(rules_s) if rules_s else None
            row: dict[str, Any] = {
                "path": path,
                "config": config,
                "engine": engine,
                "rules": rules,
                "ipcache_pods": by_rules[rules].ipcache if rules else None,
                **{k: round(m[k], 3) for k in keys},
                "samples": asdict(configs[config]),
            }
            for k in keys:
                row[f"{k}_vs_baseline"] = ratio(m[k], base[k])
                ipt = med.get(f"iptables-{rules}") if engine == "vethguard" else None
                row[f"{k}_vs_iptables"] = ratio(m[k], ipt[k]) if ipt else None
            rows.append(row)
    return rows


def per_packet_cost(bench: Bench) -> dict[str, Any]:
    from controller.bench import cost

    s = bench.settings
    out: dict[str, Any] = {}
    for label, level in (("small_maps", s.levels[0]), ("large_maps", s.levels[-1])):
        dp = bench.datapaths[(1, level.rules)]
        report = cost.with_stats_enabled(functools.partial(cost.measure, dp, s.cost_rounds, s.cost_packets))
        out[label] = {"rules": level.rules, "ipcache_pods": level.ipcache, **asdict(report)}
        log(f"per-packet cost ({label}): {asdict(report)}")
    return out


def run(settings: Settings) -> dict[str, Any]:
    programs.require(*programs.role_programs("lab", "bench"), purpose="vethguard bench datapath")
    doc: dict[str, Any] = {"benchmark": "datapath", "machine": machine(), "settings": asdict(settings)}
    doc["tools"] = {
        "iperf3": tool_version(["iperf3", "--version"]),
        "sockperf": tool_version(["sockperf", "--version"]),
        "iptables": tool_version(["iptables", "--version"]),
        "ipset": tool_version(["ipset", "--version"]),
    }
    from controller.datapath.attach import Attacher
    from controller.datapath.tcx import TcxAttacher, tcx_supported

    doc["attach"] = ["clsact", *(["tcx"] if tcx_supported() else [])]
    with bench_lab(settings) as bench:
        bench.attacher = Attacher()
        bench.tcx_attacher = TcxAttacher() if tcx_supported() else None  # links held, not pinned
        levels = []
        for level in settings.levels:
            log(f"preparing {level.rules} rules / {level.ipcache} ipcache pods")
            levels.append(prepare_level(bench, level))
        doc["levels"] = levels
        samples, pairs = measure_rounds(bench)
        doc["results"] = summarize(samples, settings.levels)
        doc["small_packets"] = {
            "rounds": settings.pair_rounds,
            "seconds": settings.pair_seconds,
            "results": small_packets.summarize(pairs),
        }
        doc["programming"] = bench.programming
        doc["per_packet_cost"] = per_packet_cost(bench)
        log("per-packet cost with ClusterNetworkPolicies")
        doc["cluster_policy_cost"] = tier_cost.run_all(settings.tiers, str(LabPaths(bench.lab).pin_root))
        doc["lab"] = {"name": bench.lab, "pods": bench.pod_ip, "paths": [asdict(p) for p in bench.paths]}
    doc["machine"]["loadavg_end"] = loadavg()
    return doc
