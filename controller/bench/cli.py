"""`vethguard bench datapath|control-plane [--quick] [-o json] [--results DIR]`; `vethguard bench plot
--results DIR` draws the plots again from the JSON results a directory holds (no root)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.bench import control_plane, datapath_bench, report
from controller.bench.common import log, logs_to_stderr, results_dir, write_json
from controller.core.errors import VethguardError


def _write(
    doc: dict[str, Any],
    out: Path,
    name: str,
    markdown: str,
    plots: Callable[[dict[str, Any], Path], list[Path]],
) -> None:
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(markdown)
    try:
        written = plots(doc, out)
    except ImportError as exc:  # matplotlib missing: the JSON and the table are still useful
        log(f"no plots ({exc}); install python3-matplotlib")
        written = []
    doc["files"] = [str(out / f"{name}.json"), str(out / f"{name}.md"), *map(str, written)]


def _finish(args: argparse.Namespace, doc: dict[str, Any], markdown: str) -> int:
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(markdown)
        print("files: " + ", ".join(doc["files"]))
    return 0


def cmd_datapath(args: argparse.Namespace) -> int:
    settings = datapath_bench.Settings.quick() if args.quick else datapath_bench.Settings()
    if args.nodes is not None:
        settings.nodes = args.nodes
    if args.rounds is not None:
        settings.rounds = args.rounds
    if args.pair_rounds is not None:
        settings.pair_rounds = args.pair_rounds
    out = results_dir(args.results, "datapath")
    with logs_to_stderr():
        doc = datapath_bench.run(settings)
    doc["command"] = _command(args)
    markdown = report.datapath_markdown(doc)
    _write(doc, out, "datapath", markdown, report.datapath_plots)
    return _finish(args, doc, markdown)


def cmd_control_plane(args: argparse.Namespace) -> int:
    settings = control_plane.Settings.quick() if args.quick else control_plane.Settings()
    if args.sizes:
        settings.sizes = tuple(args.sizes)
    if args.events is not None:
        settings.events = args.events
    out = results_dir(args.results, "control-plane")
    with logs_to_stderr():
        doc = control_plane.run(settings)
    doc["command"] = _command(args)
    markdown = report.control_plane_markdown(doc)
    _write(doc, out, "control-plane", markdown, report.control_plane_plots)
    return _finish(args, doc, markdown)


def _tiers_plots(doc: dict[str, Any], out: Path) -> list[Path]:
    return [report.tiers_plot(report.pyplot(), doc, out)]


# results file -> what draws its plots; a later file's plot replaces an earlier one of the same name
PLOTS: tuple[tuple[str, Callable[[dict[str, Any], Path], list[Path]]], ...] = (
    ("datapath.json", report.datapath_plots),
    ("control-plane.json", report.control_plane_plots),
    ("cluster-policy-cost.json", _tiers_plots),
)


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.results)
    written: list[Path] = []
    for name, plots in PLOTS:
        if (out / name).is_file():
            written += plots(json.loads((out / name).read_text()), out)
    if not written:
        raise VethguardError(f"vethguard bench plot: none of {', '.join(n for n, _ in PLOTS)} in {out}")
    print("files: " + ", ".join(map(str, written)))
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["vethguard", "bench", args.bench_command]
    if args.quick:
        parts.append("--quick")
    for flag in ("nodes", "rounds", "pair_rounds", "events"):
        if getattr(args, flag, None) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if getattr(args, "sizes", None):
        parts += ["--sizes", ",".join(s.label() for s in args.sizes)]
    return " ".join(parts)


def _sizes(text: str) -> list[control_plane.Size]:
    try:
        return [control_plane.Size.parse(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _as_root(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        if os.geteuid() != 0:
            raise VethguardError(
                "vethguard bench: run as root (labs, BPF programs, iptables in lab namespaces)"
            )
        return func(args)

    return wrapped


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench", help="datapath and control-plane benchmarks (figures, plots, tables)"
    )
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    dp = sub.add_parser(
        "datapath", help="throughput/latency vs baseline, pass-through and iptables; per-packet cost"
    )
    dp.add_argument("--nodes", type=int, choices=[1, 2], help="2 adds a cross-node pair (default 1)")
    dp.add_argument("--rounds", type=int, help="rounds of every configuration (default 5, --quick 1)")
    dp.add_argument(
        "--pair-rounds",
        type=int,
        help="rounds of small packets in pairs: baseline, pass-through, vethguard (default 10, --quick 1)",
    )
    dp.set_defaults(func=_as_root(cmd_datapath))
    cp = sub.add_parser("control-plane", help="compile time, event latency, RSS, map memory; lab realization")
    cp.add_argument(
        "--sizes",
        type=_sizes,
        metavar="SIZE,...",
        help="cluster sizes, each PODS (500 namespaces and 1,000 NetworkPolicies up to 10k pods; "
        "beyond, a namespace per 20 pods, two NetworkPolicies per namespace and 200 "
        "ClusterNetworkPolicies) or PODS:NAMESPACES:POLICIES:CNPS "
        "(default 1000,10000,10000:500:1000:200,50000; --quick 200:50:100:0,1000:50:100:20)",
    )
    cp.add_argument("--events", type=int, help="changes of every event kind per size (default 50, --quick 3)")
    cp.set_defaults(func=_as_root(cmd_control_plane))
    for parser in (dp, cp):
        parser.add_argument("--quick", action="store_true", help="small configuration, about a minute (CI)")
        parser.add_argument(
            "-o", "--output", choices=["text", "json"], default="text", help="json: figures on stdout"
        )
        parser.add_argument(
            "--results", metavar="DIR", help="results directory (default results/<timestamp>-<benchmark>/)"
        )
    plot = sub.add_parser("plot", help="draw the plots again from the JSON results in a directory")
    plot.add_argument("--results", metavar="DIR", required=True, help="a results directory (docs/bench)")
    plot.set_defaults(func=cmd_plot)
