"""Small packets measured in pairs: the figure issue 19's small-packet target is read from
(64-byte UDP datagrams and TCP request/response transactions per second, pod to pod, at least
0.95x the no-program baseline with 10,000 rules).

Why pairs: what the programs add to a 64-byte datagram (~0.3 us against ~7 us) is smaller than
the drift of this VM's speed over the minutes between one configuration's run and another's in
the main rounds (their same-node baseline spans 145.8-174.6 kpps in one run). Here each round runs
the baseline, the pass-through program and vethguard at the largest level back to back (order
rotated every round), with short runs, and a configuration's figure is the median over rounds of
its ratio to the SAME round's baseline: drift slower than a round cancels out. Each UDP run also
records what the client sent and both sides' CPU use, so a reader can tell which side limited it.

Pure: the measuring loop takes the configuration switch and the traffic as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller.bench.common import median, rotated
from controller.bench.traffic import UdpRun

BASELINE = "baseline"
METRICS = (("udp64_kpps", "UDP 64 B kpps"), ("tcp_rr_ktps", "TCP RR k/s"))


TCX = "+tcx"  # a configuration's programs attached with tcx links instead of clsact filters


def paired_configs(largest_rules: int, tcx: bool = False) -> list[str]:
    """The baseline, the pass-through program and vethguard at the largest level, attached as the
    agent does by default (clsact); with `tcx`, both programs again attached with tcx links."""
    configs = ["passthrough", f"vethguard-{largest_rules}"]
    return [BASELINE, *configs, *([c + TCX for c in configs] if tcx else [])]


@dataclass
class PairedSample:
    """One configuration's runs on one path, one entry per round."""

    udp64_kpps: list[float] = field(default_factory=list)  # received
    udp64_sent_kpps: list[float] = field(default_factory=list)
    udp64_client_cpu_pct: list[float] = field(default_factory=list)
    udp64_server_cpu_pct: list[float] = field(default_factory=list)
    tcp_rr_ktps: list[float] = field(default_factory=list)

    def add(self, udp: UdpRun, rr_ktps: float) -> None:
        self.udp64_kpps.append(udp.received_kpps)
        self.udp64_sent_kpps.append(udp.sent_kpps)
        self.udp64_client_cpu_pct.append(udp.client_cpu_pct)
        self.udp64_server_cpu_pct.append(udp.server_cpu_pct)
        self.tcp_rr_ktps.append(rr_ktps)


Samples = dict[str, dict[str, PairedSample]]  # path -> config -> runs


def measure(
    configs: Sequence[str],
    paths: Sequence[str],
    rounds: int,
    configured: Callable[[str], AbstractContextManager[object]],
    run_path: Callable[[str], tuple[UdpRun, float]],
    log: Callable[[str], None] = lambda _msg: None,
) -> Samples:
    """`rounds` rounds; in each, every configuration (rotated order) runs `run_path` on every path."""
    if BASELINE not in configs:
        raise ValueError("paired small-packet runs need the baseline among the configurations")
    samples: Samples = {p: {c: PairedSample() for c in configs} for p in paths}
    for rnd in range(rounds):
        for config in rotated(list(configs), rnd):
            with configured(config):
                for path in paths:
                    samples[path][config].add(*run_path(path))
            log(
                f"small packets {rnd + 1}/{rounds} {config}: "
                + ", ".join(
                    f"{p}: udp64 {by[config].udp64_kpps[-1]:.0f} kpps "
                    f"(sent {by[config].udp64_sent_kpps[-1]:.0f}) rr {by[config].tcp_rr_ktps[-1]:.1f} k/s"
                    for p, by in samples.items()
                )
            )
    return samples


def summarize(samples: Samples) -> list[dict[str, Any]]:
    """One row per (path, config): medians of the runs and, per metric, the median and range of
    the per-round ratios to the same round's baseline."""
    rows = []
    for path, configs in samples.items():
        base = configs[BASELINE]
        for config, smp in configs.items():
            row: dict[str, Any] = {"path": path, "config": config}
            for key, _ in METRICS:
                values, base_values = getattr(smp, key), getattr(base, key)
                ratios = [v / b for v, b in zip(values, base_values, strict=True) if b > 0]
                row[key] = round(median(values), 3)
                row[f"{key}_vs_baseline"] = round(median(ratios), 3) if ratios else None
                span = [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None
                row[f"{key}_vs_baseline_range"] = span
            sent = smp.udp64_sent_kpps
            losses = [1 - r / s for r, s in zip(smp.udp64_kpps, sent, strict=True) if s > 0]
            row["udp64_sent_kpps"] = round(median(sent), 3)
            row["udp64_loss_pct"] = round(100 * median(losses), 2) if losses else None
            row["udp64_client_cpu_pct"] = round(median(smp.udp64_client_cpu_pct), 1)
            row["udp64_server_cpu_pct"] = round(median(smp.udp64_server_cpu_pct), 1)
            row["samples"] = asdict(smp)
            rows.append(row)
    return rows


def _ratio_cell(row: dict[str, Any], key: str) -> str:
    ratio, span = row.get(f"{key}_vs_baseline"), row.get(f"{key}_vs_baseline_range")
    if ratio is None:
        return "-"
    return f"{ratio:.3f} ({span[0]:.2f}-{span[1]:.2f})" if span else f"{ratio:.3f}"


def markdown(section: dict[str, Any]) -> str:
    """The paired table: figures, ratio medians with their min-max over rounds, UDP send side."""
    lines = [
        f"Small packets in pairs: {section['rounds']} rounds of {section['seconds']} s runs, each round "
        "the baseline and the configurations back to back (order rotated); x base = median over "
        "rounds of the ratio to the same round's baseline (min-max of those ratios).",
        "",
        "| path | config | UDP 64 B kpps received | x base | sent kpps | loss % | client CPU % | "
        "server CPU % | TCP RR k/s | x base |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in section["results"]:
        loss = "-" if r["udp64_loss_pct"] is None else f"{r['udp64_loss_pct']:.2f}"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["path"],
                    r["config"],
                    f"{r['udp64_kpps']:.1f}",
                    _ratio_cell(r, "udp64_kpps"),
                    f"{r['udp64_sent_kpps']:.1f}",
                    loss,
                    f"{r['udp64_client_cpu_pct']:.0f}",
                    f"{r['udp64_server_cpu_pct']:.0f}",
                    f"{r['tcp_rr_ktps']:.1f}",
                    _ratio_cell(r, "tcp_rr_ktps"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


TARGET_RATIO = 0.95  # issue 19: small packets at least 0.95x the baseline with 10,000 rules


def plot(plt: Any, section: dict[str, Any], target: Path) -> Path:
    """Bars of the paired ratios to the baseline (one group per path and metric, one bar per
    configuration), error bars spanning the rounds' ratios, the target as a line."""
    rows = [r for r in section["results"] if r["config"] != BASELINE]
    paths = list(dict.fromkeys(r["path"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    groups = [(p, key, label) for p in paths for key, label in METRICS]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(configs))
    for i, config in enumerate(configs):
        by_path = {r["path"]: r for r in rows if r["config"] == config}
        values = [by_path[p][f"{key}_vs_baseline"] for p, key, _ in groups]
        spans = [by_path[p][f"{key}_vs_baseline_range"] for p, key, _ in groups]
        yerr = [
            [v - s[0] for v, s in zip(values, spans, strict=True)],
            [s[1] - v for v, s in zip(values, spans, strict=True)],
        ]
        xs = [j + i * width for j in range(len(groups))]
        bars = ax.bar(xs, values, width, label=config)
        ax.errorbar(xs, values, yerr=yerr, fmt="none", ecolor="black", capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, label_type="center")
    ax.axhline(1.0, color="black", linestyle=":", label="baseline (no program)")
    ax.axhline(TARGET_RATIO, color="red", linestyle="--", label=f"target {TARGET_RATIO}x")
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{p}\n{label}" for p, _, label in groups], fontsize=8)
    ax.set_ylabel("x the same round's baseline")
    ends = [e for r in rows for key, _ in METRICS for e in (r[f"{key}_vs_baseline_range"] or ())]
    ax.set_ylim(min([0.7, *ends]) - 0.02, max([1.15, *ends]) + 0.02)
    ax.set_title(
        f"small packets in pairs ({section['rounds']} rounds of {section['seconds']} s runs)\n"
        "(medians of per-round ratios; bars: min-max)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
