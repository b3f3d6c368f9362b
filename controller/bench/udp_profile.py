"""Where a 64-byte UDP datagram's CPU time goes, per configuration of `vethguard bench datapath`:
the profile behind its small-packet figures.

Same lab, pods and configurations as the datapath benchmark (controller.bench.datapath_bench, one
level). While iperf3 floods 64-byte datagrams client -> server, `perf record -e cpu-clock` samples
the clients' CPU, which runs the whole same-node path of a datagram: the client's sendmsg, both
veths, the tc hooks and their programs, the node's routing and the server socket's enqueue (the
server's CPU only reads). Every kernel symbol's share of the samples is averaged over rounds;
each configuration's shares minus the baseline's are what attaching its programs adds, grouped
(GROUPS): our programs' own code, the tc hook path that runs them (clsact + cls_bpf, or tcx for
the "+tcx" configurations), the map lookups and helpers they call. cpu-clock in a VM cannot
sample where interrupts are off (those samples land where they are turned back on), so shares
are of the sampled time: compare configurations with each other, not with the throughput
figures' absolute values.

Run: python -m controller.bench.udp_profile [--rules 10000] [--rounds 3] [--seconds 3]
[--results DIR] (root; needs perf, which scripts/install.sh installs: linux-perf).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from controller.bench import datapath_bench, small_packets, traffic
from controller.bench.bpf_parts import PASSTHROUGH, bench_programs
from controller.bench.common import command_line, loadavg, log, logs_to_stderr, machine, median, rotated
from controller.bench.report import write_results
from controller.core import programs

# group -> symbol patterns (re.match); the first group that matches a symbol takes it
GROUPS: tuple[tuple[str, str], ...] = (
    ("vethguard programs", r"bpf_prog_\w+_(from_pod|to_pod)$"),
    ("pass-through program", r"bpf_prog_\w+_passthrough$"),
    (
        "tc hook (tcx, or clsact + cls_bpf)",
        r"(tc_run$|cls_bpf_classify|_*tcf_classify|sch_handle_(ingress|egress)|tcx_)",
    ),
    ("hash map lookups", r"(htab_map_hash|lookup_nulls_elem_raw|__htab_map_lookup_elem|htab_\w+|jhash)"),
    ("clock helper", r"(bpf_ktime_get_coarse_ns|ktime_get_coarse)"),
)
OTHER = "everything else"
REPORT_LINE = re.compile(r"^\s*([\d.]+)%\s+\[[k.]\]\s+(\S+)")


def parse_report(text: str) -> dict[str, float]:
    """symbol -> its share (%) of the samples, from `perf report --sort sym --stdio`."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = REPORT_LINE.match(line)
        if m:
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(1))
    return out


def group_of(symbol: str) -> str:
    return next((name for name, pattern in GROUPS if re.match(pattern, symbol)), OTHER)


def grouped(shares: Mapping[str, float]) -> dict[str, float]:
    out = {name: 0.0 for name, _ in GROUPS} | {OTHER: 0.0}
    for symbol, share in shares.items():
        out[group_of(symbol)] += share
    return {k: round(v, 2) for k, v in out.items()}


def added(shares: Mapping[str, float], base: Mapping[str, float], top: int = 12) -> list[tuple[str, float]]:
    """The symbols whose share grew most over the baseline's: (symbol, percentage points)."""
    grown = {s: shares.get(s, 0.0) - base.get(s, 0.0) for s in set(shares) | set(base)}
    return [(s, round(d, 2)) for s, d in sorted(grown.items(), key=lambda kv: -kv[1])[:top] if d > 0]


def _mean(runs: list[dict[str, float]]) -> dict[str, float]:
    symbols = {s for r in runs for s in r}
    return {s: sum(r.get(s, 0.0) for r in runs) / len(runs) for s in symbols}


def _profile_run(bench: datapath_bench.Bench, seconds: float, data: Path) -> tuple[float, dict[str, float]]:
    """One flood of seconds + 2 s with perf sampling the clients' CPU for `seconds` in the middle."""
    server_ip = bench.pod_ip["server"]
    with ThreadPoolExecutor(max_workers=1) as pool:  # its result() re-raises iperf3's error
        flood = pool.submit(traffic.iperf3_udp64, bench.lab, "client", server_ip, seconds + 2)
        time.sleep(1)  # iperf3 is sending
        cpu = traffic.role_cpu("client")
        record = [
            "perf",
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-C",
            cpu,
            "-o",
            str(data),
            "--",
            "sleep",
            str(seconds),
        ]
        subprocess.run(record, check=True, capture_output=True)
        udp = flood.result()
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "sym", "--stdio"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return udp.received_kpps, parse_report(report)


def measure(rules: int, rounds: int, seconds: float) -> dict[str, Any]:
    purpose = "python -m controller.bench.udp_profile"
    programs.require(*programs.role_programs("lab", "bench"), purpose=purpose)
    level = datapath_bench.Level(rules, max(1000, rules * 10))
    settings = datapath_bench.Settings(levels=(level,), nodes=1)
    from controller.datapath.attach import Attacher
    from controller.datapath.tcx import TcxAttacher, tcx_supported

    configs = small_packets.paired_configs(rules, tcx=tcx_supported())
    kpps: dict[str, list[float]] = {c: [] for c in configs}
    shares: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    with datapath_bench.bench_lab(settings) as bench, tempfile.TemporaryDirectory() as tmp:
        bench.attacher = Attacher()
        bench.tcx_attacher = TcxAttacher() if tcx_supported() else None
        datapath_bench.prepare_level(bench, level)
        with bench_programs(next(iter(bench.datapaths.values()))) as fds:
            bench.passthrough_fd = fds[PASSTHROUGH]
            try:
                for rnd in range(rounds):
                    for config in rotated(configs, rnd):
                        with datapath_bench.configured(bench, config):
                            rate, found = _profile_run(bench, seconds, Path(tmp) / "perf.data")
                        kpps[config].append(rate)
                        shares[config].append(found)
                        log(f"round {rnd + 1}/{rounds} {config}: {rate:.1f} kpps, {grouped(found)}")
            finally:
                datapath_bench.detach_all(bench)
                bench.passthrough_fd = None
    mean = {c: _mean(runs) for c, runs in shares.items()}
    base = mean["baseline"]
    groups = {c: grouped(m) for c, m in mean.items()}
    return {
        "rules": rules,
        "rounds": rounds,
        "seconds": seconds,
        "configs": [
            {
                "config": c,
                "udp64_kpps": round(median(kpps[c]), 1),
                "udp64_kpps_samples": kpps[c],
                "groups_pct": groups[c],
                "added_vs_baseline_pct": {
                    g: round(v - groups["baseline"][g], 2) for g, v in groups[c].items() if g != OTHER
                },
                "top_added_symbols": added(mean[c], base),
            }
            for c in configs
        ],
    }


def markdown(doc: dict[str, Any]) -> str:
    groups = [name for name, _ in GROUPS]
    lines = [
        f"Same-node UDP 64 B, the clients' CPU sampled (perf cpu-clock), {doc['rounds']} rounds of "
        f"{doc['seconds']} s, vethguard with {doc['rules']} rules; share of the samples (%), "
        "and in brackets the percentage points over the baseline's:",
        "",
        "| config | kpps | " + " | ".join(groups) + " |",
        "|---|---:|" + "---:|" * len(groups),
    ]
    for c in doc["configs"]:
        cells = [f"{c['groups_pct'][g]:.2f} ({c['added_vs_baseline_pct'][g]:+.2f})" for g in groups]
        lines.append(f"| {c['config']} | {c['udp64_kpps']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Symbols that grew most over the baseline (percentage points):", ""]
    for c in doc["configs"][1:]:
        top = ", ".join(f"{s} {d:+.2f}" for s, d in c["top_added_symbols"])
        lines.append(f"- {c['config']}: {top}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    ap = argparse.ArgumentParser(prog="python -m controller.bench.udp_profile", description=summary)
    ap.add_argument("--rules", type=int, default=10000, help="vethguard's rules (default 10000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every configuration (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="sampled seconds per run (default 3)")
    ap.add_argument("--results", type=Path, help="write udp-profile.json and udp-profile.md there")
    args = ap.parse_args(argv)
    with logs_to_stderr():
        doc = {
            "benchmark": "udp_profile",
            "machine": machine(),
            **measure(args.rules, args.rounds, args.seconds),
            "command": command_line("controller.bench.udp_profile", argv),
        }
    doc["machine"]["loadavg_end"] = loadavg()
    table = markdown(doc)
    print(table)
    if args.results:
        write_results(args.results, "udp-profile", doc, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
