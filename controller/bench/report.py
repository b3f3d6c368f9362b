"""Markdown tables and PNG plots of benchmark results (the JSON documents the runs produce)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.bench import small_packets
from controller.bench.common import write_json


def _r(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def machine_line(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (
        f"{m['nproc']} CPUs ({m['cpu'] or 'unknown CPU'}), kernel {m['kernel']}, {m['memory_gb']} GB; "
        f"load average {m['loadavg_start']} at the start, {m.get('loadavg_end', '?')} at the end"
    )


def write_results(out: Path, name: str, doc: dict[str, Any], table: str) -> None:
    """<out>/<name>.json (the document) and <name>.md (the table and the machine line)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(f"{table}\nMachine: {machine_line(doc)}.\n")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


@dataclass(frozen=True)
class Metric:
    """One figure of every datapath run (a field of datapath_bench.Sample)."""

    key: str
    header: str
    fmt: str
    title: str


DATAPATH_METRICS = (
    Metric("throughput_gbps", "Gbit/s", "{:.2f}", "TCP throughput (Gbit/s, 64 KB writes)"),
    Metric("p50_us", "p50 us", "{:.1f}", "latency p50 (us, RTT)"),
    Metric("p99_us", "p99 us", "{:.1f}", "latency p99 (us, RTT)"),
    # small packets, where per-packet cost shows (64 KB TCP writes hide it)
    Metric("udp64_kpps", "UDP 64 B kpps", "{:.1f}", "UDP 64-byte datagrams received (k/s)"),
    Metric("tcp_rr_ktps", "TCP RR k/s", "{:.1f}", "TCP request/response, 1 in flight (k/s)"),
)


def measured(rows: Sequence[dict[str, Any]]) -> list[Metric]:
    """The metrics the results hold (results from before the small-packet runs lack two)."""
    return [m for m in DATAPATH_METRICS if rows and all(m.key in r for r in rows)]


def datapath_markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    metrics = measured(doc["results"])
    header = ["path", "config", "rules", "ipcache pods"]
    for m in metrics:
        header += [m.header, "x base", "x ipt"]
    lines = [
        f"Datapath: {s['rounds']} rounds, {s['seconds']} s per iperf3/sockperf run, medians. "
        "Ratios: x baseline (no program) and x iptables (kube-router-style rules, same policies).",
        "",
        _row(header),
        "|---|---|" + "---:|" * (len(header) - 2),
    ]
    for r in doc["results"]:
        cells: list[Any] = [r["path"], r["config"], r["rules"] or "-", r["ipcache_pods"] or "-"]
        for m in metrics:
            cells += [m.fmt.format(r[m.key]), _r(r[f"{m.key}_vs_baseline"]), _r(r[f"{m.key}_vs_iptables"])]
        lines.append(_row(cells))
    if "small_packets" in doc:
        lines += ["", small_packets.markdown(doc["small_packets"]).rstrip("\n")]
    lines += ["", "Per-packet program cost (kernel BPF stats, BPF_PROG_TEST_RUN), ns per packet:", ""]
    lines += [
        "| maps loaded | passthrough | established | x pass | new flow | x pass |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, c in doc["per_packet_cost"].items():
        what = f"{label.replace('_', ' ')} ({c['rules']} rules, {c['ipcache_pods']} ipcache pods)"
        figures = [f"{c[k]:.1f}" for k in ("passthrough_ns", "established_ns")]
        figures += [f"{c['established_ratio']:.2f}", f"{c['new_flow_ns']:.1f}", f"{c['new_flow_ratio']:.2f}"]
        lines.append(_row([what, *figures]))
    for field, title in (
        (
            "established_steps_ns",
            "Where an established packet's time goes (bpf/bench_parts.c: programs running the first N "
            "steps of to_pod's established path on the same maps; each step is part N - part N-1), ns:",
        ),
        (
            "new_flow_steps_ns",
            "Where a new flow's time goes (bpf/bench_parts.c newpart_N: the same for a SYN its "
            "NetworkPolicy allows, every program driven one test_run per packet, new flows only), ns:",
        ),
    ):
        steps = {label: c.get(field) for label, c in doc["per_packet_cost"].items()}
        if not all(steps.values()):
            continue
        lines += ["", title, "", _row(["step", *(label.replace("_", " ") for label in steps)])]
        lines.append("|---|" + "---:|" * len(steps))
        for step in next(iter(steps.values())):
            lines.append(_row([step, *(f"{s[step]:.1f}" for s in steps.values())]))
    if "cluster_policy_cost" in doc:
        lines += [
            "",
            "Per-packet cost with ClusterNetworkPolicies (controller.bench.tier_cost: one pod selected "
            "by the NetworkPolicies, with 0 and more ClusterNetworkPolicies beside them; same rounds), "
            "ns per packet:",
            "",
            tiers_markdown(doc["cluster_policy_cost"]).rstrip("\n"),
        ]
    lines += [
        "",
        "Programming the rules (one node):",
        "",
        "| rules | vethguard compute s | vethguard map sync s | ipset restore s | iptables-restore s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for lv in doc["levels"]:
        ipt = doc["programming"].get(f"iptables-{lv['rules']}", {}).get("iptables_restore_s_node1")
        cells = [lv["rules"], lv["compute_s"], lv["vethguard_sync_s_node1"], lv["ipset_restore_s_node1"]]
        lines.append(_row([*cells, ipt if ipt is not None else "-"]))
    lines += ["", f"Machine: {machine_line(doc)}."]
    return "\n".join(lines) + "\n"


TIERS_HEADER = ["ClusterNetworkPolicies", "NetworkPolicies", "path", "pod's + tier profile's entries"]
TIERS_HEADER += ["policy lookups"]
TIERS_HEADER += ["established ns", "x pass", "x no CNP", "new flow ns", "x pass", "x no CNP"]


def tiers_markdown(cost: dict[str, Any]) -> str:
    """controller.bench.tier_cost's figures: one row per ClusterNetworkPolicy count."""
    lines = [_row(TIERS_HEADER), "|---:|---:|---|" + "---:|" * (len(TIERS_HEADER) - 3)]
    for c in cost["configs"]:
        cells: list[Any] = [c["cluster_policies"], c["networkpolicies"]]
        entries = f"{c['server_policy_entries']} + {c.get('tier_profile_entries', 0)}"
        cells += ["tiered" if c["tiered"] else "first hit", entries, c["policy_lookups"]]
        for kind in ("established", "new_flow"):
            cells += [f"{c[f'{kind}_ns']:.1f}", _r(c[f"{kind}_ratio"]), _r(c[f"{kind}_vs_no_cnp"])]
        lines.append(_row(cells))
    lines += [
        "",
        f"Pass-through program {cost['passthrough_ns']:.1f} ns; medians of {cost['rounds']} rounds. "
        f"Map lookups of a new flow: {cost['new_flow_lookups']}.",
    ]
    return "\n".join(lines) + "\n"


HOSTEP_HEADER = ["interface", "program", "packet", "counted as", "drive", "ns", "x pass", "x pass same drive"]


def hostep_markdown(cost: dict[str, Any]) -> str:
    """controller.bench.hostep_cost's figures: one row per case."""
    lines = [_row(HOSTEP_HEADER), "|---|---|---|---|---|---:|---:|---:|"]
    for c in cost["cases"]:
        cells = [c["config"], c["program"], c["what"], c["reason"], c["drive"], f"{c['ns']:.1f}"]
        lines.append(_row([*cells, _r(c["ratio"]), _r(c["ratio_same_drive"])]))
    lines += [
        "",
        f"Pass-through program {cost['passthrough_ns']:.1f} ns (repeats), "
        f"{cost['passthrough_single_run_ns']:.1f} ns (one run per packet); medians of {cost['rounds']} "
        f"rounds of {cost['packets_per_round']} packets ({cost['new_flows_per_round']} new flows). "
        f"Host endpoint: {cost['host_endpoint']}.",
    ]
    return "\n".join(lines) + "\n"


EVLOST_HEADER = [
    "packet",
    "counted as",
    "before ns",
    "after ns",
    "after / before",
    "x pass before",
    "x pass after",
]


def evlost_markdown(cost: dict[str, Any]) -> str:
    """controller.bench.evlost_cost's figures: one row per case, before and after vg_evlost."""
    lines = [_row(EVLOST_HEADER), "|---|---|---:|---:|---:|---:|---:|"]
    for c in cost["cases"]:
        cells = [c["what"], c["reason"], f"{c['before_ns']:.1f}", f"{c['after_ns']:.1f}"]
        lines.append(
            _row([*cells, _r(c["after_vs_before"]), _r(c["before_vs_floor"]), _r(c["after_vs_floor"])])
        )
    lines += [
        "",
        f"to_pod of {cost['before']} (before) and of this checkout (after), same maps and packets; "
        f"pass-through program {cost['passthrough_ns']:.1f} ns; medians of {cost['rounds']} rounds of "
        f"{cost['packets_per_round']} packets ({cost['new_flows_per_round']} new flows; "
        f"{cost['packets_with_room']} where events are written or the ring is full).",
    ]
    return "\n".join(lines) + "\n"


EVENT_KINDS = ("pod_add", "label_change", "policy_add", "policy_delete", "cnp_add", "cnp_delete")
# issue 19's targets
COMPILE_TARGET_S, EVENT_TARGET_MS, RSS_TARGET_MB, RSS_TARGET_PODS = 5.0, 50.0, 100.0, 10000


def _event_kinds(sizes: Sequence[dict[str, Any]]) -> list[str]:
    """The event kinds any size measured (the ClusterNetworkPolicy ones only where CNPs exist)."""
    return [k for k in EVENT_KINDS if any(k in s["events"] for s in sizes)]


def _missed(text: str, missed: bool) -> str:
    return f"**{text}** (over)" if missed else text


def _event_cell(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "-"
    cell = f"{figures['p50_ms']:.0f} / {figures['p99_ms']:.0f}"
    if "min_ms" in figures:
        cell += f" ({figures['min_ms']:.0f}-{figures['max_ms']:.0f})"
    if figures.get("failed_closed_events"):  # a map was full: not the time of a realized change
        cell += f", {figures['failed_closed_events']} of {figures['n']} failed closed"
    return _missed(cell, figures["p99_ms"] > EVENT_TARGET_MS or bool(figures.get("failed_closed_events")))


def control_plane_markdown(doc: dict[str, Any]) -> str:
    """One row per size; the ClusterNetworkPolicy columns where the results have them (runs from
    before them have not); cells that miss issue 19's targets are bold and marked (over)."""
    sizes = doc["sizes"]
    cnps = any("cluster_policies" in s for s in sizes)
    kinds = _event_kinds(sizes)
    ranged = any("min_ms" in s["events"][k] for s in sizes for k in s["events"])
    header = ["pods", "namespaces", "policies"] + (["CNPs"] if cnps else []) + ["full compile s"]
    header += [f"{k.replace('_', ' ')} p50/p99{' (min-max)' if ranged else ''} ms" for k in kinds]
    header += ["RSS MB (peak)", "entries/endpoint (max)"]
    header += ["CNP entries/endpoint (max)"] if cnps else []
    header += ["map memory MB"]
    align = ["---:"] * (4 if cnps else 3) + ["---:"] + ["---"] * (len(kinds) + 2) + ["---"] * cnps + ["---:"]
    lines = [_row(header), "|" + "|".join(align) + "|"]
    for s in sizes:
        cells = [s["pods"], s["namespaces"], s["policies"]] + ([s.get("cluster_policies", 0)] if cnps else [])
        cells += [_missed(f"{s['full_compile_s']:.2f}", s["full_compile_s"] > COMPILE_TARGET_S)]
        cells += [_event_cell(s["events"].get(k)) for k in kinds]
        rss_missed = s["pods"] <= RSS_TARGET_PODS and s["rss_mb"] > RSS_TARGET_MB
        cells += [_missed(f"{s['rss_mb']:.0f} ({s['peak_rss_mb']:.0f})", rss_missed)]
        cells += [f"{s['entries_per_endpoint_mean']} ({s['entries_per_endpoint_max']})"]
        if cnps:
            cells += [
                f"{s.get('tier_entries_per_endpoint_mean', 0)} ({s.get('tier_entries_per_endpoint_max', 0)})"
            ]
        cells += [f"{s['map_memory_bytes'] / 2**20:.1f}"]
        lines.append(_row(cells))
    lines += [
        "",
        f"Targets (issue 19): full compile within {COMPILE_TARGET_S:.0f} s, event -> maps updated p99 "
        f"within {EVENT_TARGET_MS:.0f} ms, agent RSS within {RSS_TARGET_MB:.0f} MB up to "
        f"{RSS_TARGET_PODS} pods; bold (over): missed. Entries per endpoint are node-1's endpoints'"
        + (
            " own (NetworkPolicy) entries and their tier profile's (ClusterNetworkPolicy) entries."
            if cnps
            else "."
        ),
    ]
    rz = doc["realization"]
    applied, probed = rz["apply_to_all_realized_ms"], rz["apply_to_probe_ms"]
    lines += [
        "",
        f"Realization through a {rz['nodes']}-node lab ({rz['changes']} policy changes): "
        f"apply -> every agent realized p50 {applied['p50']:.0f} ms, p99 {applied['p99']:.0f} ms; "
        f"apply -> probe sees it p50 {probed['p50']:.0f} ms, p99 {probed['p99']:.0f} ms.",
        "",
        f"Machine: {machine_line(doc)}.",
    ]
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------------------


def spread(rounds: Sequence[float] | None, value: float) -> tuple[float, float]:
    """(value - min, max - value) of a figure's rounds: the error bar that spans them; (0, 0) when
    the figure's results recorded no rounds (runs from before they did)."""
    if not rounds:
        return 0.0, 0.0
    return max(0.0, value - min(rounds)), max(0.0, max(rounds) - value)


def range_errors(values: Sequence[float], rounds: Sequence[Sequence[float] | None]) -> list[list[float]]:
    """matplotlib's asymmetric yerr ([below...], [above...]) spanning each value's rounds."""
    pairs = [spread(r, v) for v, r in zip(values, rounds, strict=True)]
    return [[lo for lo, _ in pairs], [hi for _, hi in pairs]]


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def datapath_plots(doc: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    written = []
    for path in sorted({r["path"] for r in doc["results"]}):
        rows = [r for r in doc["results"] if r["path"] == path]
        metrics = measured(rows)
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5))
        for ax, key, label in ((ax, m.key, m.title) for ax, m in zip(axes, metrics, strict=True)):
            for engine, style in (("vethguard", "o-"), ("iptables", "s--")):
                pts = sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["rules"])
                values = [r[key] for r in pts]
                yerr = range_errors(values, [r.get("samples", {}).get(key) for r in pts])
                ax.errorbar([r["rules"] for r in pts], values, yerr=yerr, fmt=style, capsize=3, label=engine)
            for config, color in (("baseline", "black"), ("passthrough", "grey")):
                ref = next((r for r in rows if r["config"] == config), None)
                if ref is not None:
                    ax.axhline(ref[key], color=color, linestyle=":", label=f"{config} (no rules)")
                    lo, hi = spread(ref.get("samples", {}).get(key), ref[key])
                    ax.axhspan(ref[key] - lo, ref[key] + hi, color=color, alpha=0.08)
            ax.set_xscale("log")
            ticks = sorted({r["rules"] for r in rows if r["rules"]})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("policy rules selecting the server")
            ax.set_title(label)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        axes[0].legend(loc="lower left", fontsize=8)
        fig.suptitle(
            f"pod -> pod ({path}): vethguard vs kube-router-style iptables+ipset "
            "(medians; bars and bands: min-max of the rounds)"
        )
        fig.tight_layout()
        target = out / f"datapath-{path}.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    cost = doc["per_packet_cost"]
    labels = list(cost)
    kinds = (
        ("passthrough_ns", "passthrough"),
        ("established_ns", "established flow"),
        ("new_flow_ns", "new flow"),
    )
    groups = [
        f"{label.replace('_', ' ')}\n{cost[label]['rules']} rules, {cost[label]['ipcache_pods']} ipcache"
        for label in labels
    ]
    series = [
        Series(
            name,
            [cost[label][key] for label in labels],
            [cost[label].get("samples", {}).get(key) for label in labels],
        )
        for key, name in kinds
    ]
    written.append(_bars(plt, groups, series, "per-packet program cost", out / "per-packet-cost.png"))
    if "cluster_policy_cost" in doc:
        written.append(tiers_plot(plt, doc["cluster_policy_cost"], out))
    if "small_packets" in doc:
        written.append(small_packets.plot(plt, doc["small_packets"], out / "small-packets.png"))
    return written


def tiers_plot(plt: Any, cost: dict[str, Any], out: Path) -> Path:
    configs = cost["configs"]
    groups = [
        f"{c['cluster_policies']} CNPs + {c['networkpolicies']} NPs\n"
        f"{'tiered' if c['tiered'] else 'first hit'}, policy lookups: {c['policy_lookups']}"
        for c in configs
    ]
    series = [
        Series(name, [c[key] for c in configs], [c.get("samples", {}).get(kind) for c in configs])
        for key, kind, name in (
            ("established_ns", "est", "established flow"),
            ("new_flow_ns", "new", "new flow"),
        )
    ]
    title = "per-packet cost with ClusterNetworkPolicies"
    floor = Series("pass-through program", [cost["passthrough_ns"]], [cost.get("passthrough_samples")])
    return _bars(plt, groups, series, title, out / "cluster-policy-cost.png", floor=floor)


@dataclass(frozen=True)
class Series:
    """One bar per group: its medians and, per median, the rounds it is the median of (None: not recorded)."""

    name: str
    values: list[float]
    rounds: list[list[float] | None]


def _bars(
    plt: Any,
    groups: list[str],
    series: list[Series],
    title: str,
    target: Path,
    floor: Series | None = None,
) -> Path:
    """Grouped bars: one group per label, one bar per series, in ns per packet; error bars span
    the min and max of each figure's rounds where the results recorded them."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        xs = [j + i * width for j in range(len(groups))]
        bars = ax.bar(xs, s.values, width, label=s.name)
        ax.errorbar(
            xs, s.values, yerr=range_errors(s.values, s.rounds), fmt="none", ecolor="black", capsize=3
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=8, label_type="center")
    if floor is not None:
        value = floor.values[0]
        ax.axhline(value, color="grey", linestyle=":", label=floor.name)
        lo, hi = spread(floor.rounds[0], value)
        ax.axhspan(value - lo, value + hi, color="grey", alpha=0.15, gid="floor-rounds")
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups)
    ax.set_ylabel("ns per packet (kernel BPF stats)")
    rounds = any(r for s in series for r in s.rounds)
    ax.set_title(f"{title}\n(medians" + ("; bars: min-max of the rounds)" if rounds else ")"), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def _event_range(figures: dict[str, Any]) -> list[float] | None:
    """The fastest and slowest event of a kind (min_ms/max_ms; older results lack them)."""
    return [figures["min_ms"], figures["max_ms"]] if "min_ms" in figures else None


def _size_label(s: dict[str, Any]) -> str:
    label = f"{s['pods']} pods\n{s['namespaces']} ns, {s['policies']} NP"
    return label + (f"\n{s['cluster_policies']} CNP" if "cluster_policies" in s else "")


def _size_axis(ax: Any, sizes: Sequence[dict[str, Any]], ylabel: str, title: str) -> None:
    ax.set_xticks(range(len(sizes)), [_size_label(s) for s in sizes], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)


def control_plane_plots(doc: dict[str, Any], out: Path) -> list[Path]:
    """Latency (full compile and each event kind), memory and entries per endpoint, one point per
    size (in the order run: two sizes may have the same pods), with issue 19's targets."""
    plt = pyplot()
    sizes = doc["sizes"]
    xs = list(range(len(sizes)))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    ax.plot(xs, [s["full_compile_s"] * 1000 for s in sizes], "k^-", label="full compile")
    for n, kind in enumerate(_event_kinds(sizes)):
        at = [x for x, s in zip(xs, sizes, strict=True) if kind in s["events"]]
        figures = [s["events"][kind] for s in sizes if kind in s["events"]]
        p50 = [f["p50_ms"] for f in figures]
        yerr = range_errors(p50, [_event_range(f) for f in figures])
        color = f"C{n}"
        ax.errorbar(at, p50, yerr=yerr, fmt="o-", color=color, capsize=3, label=f"{kind} p50")
        ax.plot(at, [f["p99_ms"] for f in figures], "x:", color=color, label=f"{kind} p99")
    ax.set_yscale("log")  # a full compile is ~50x an event pass
    ax.axhline(EVENT_TARGET_MS, color="grey", linestyle="--", linewidth=0.8, label="50 ms target (event p99)")
    ax.axhline(
        COMPILE_TARGET_S * 1000, color="black", linestyle="--", linewidth=0.8, label="5 s target (compile)"
    )
    ranged = any(_event_range(s["events"][k]) for s in sizes for k in s["events"])
    title = "event -> maps updated (agent reconcile)" + ("\nbars: min-max of the events" if ranged else "")
    _size_axis(ax, sizes, "ms (log)", title)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    ax.plot(xs, [s["rss_mb"] for s in sizes], "o-", label="agent RSS")
    ax.plot(xs, [s["peak_rss_mb"] for s in sizes], "x:", label="agent peak RSS")
    ax.plot(xs, [s["map_memory_bytes"] / 2**20 for s in sizes], "s--", label="BPF map memory")
    ax.axhline(
        RSS_TARGET_MB, color="grey", linestyle="--", linewidth=0.8, label="100 MB target (RSS, 10k pods)"
    )
    ax.set_ylim(bottom=0)
    _size_axis(ax, sizes, "MB", "memory")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot(xs, [s["entries_per_endpoint_mean"] for s in sizes], "o-", color="C0", label="own entries, mean")
    ax.plot(xs, [s["entries_per_endpoint_max"] for s in sizes], "x:", color="C0", label="own entries, max")
    if any("tier_entries_per_endpoint_mean" in s for s in sizes):
        tiers = [s.get("tier_entries_per_endpoint_mean", 0) for s in sizes]
        ax.plot(xs, tiers, "o-", color="C1", label="tier profile (CNP) entries, mean")
        tiers = [s.get("tier_entries_per_endpoint_max", 0) for s in sizes]
        ax.plot(xs, tiers, "x:", color="C1", label="tier profile (CNP) entries, max")
        ax.set_yscale("symlog")
    _size_axis(ax, sizes, "policy map entries", "entries per node-1 endpoint")
    ax.legend(fontsize=7)
    fig.tight_layout()
    target = out / "control-plane.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return [target]
