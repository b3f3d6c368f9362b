"""Per-packet cost of to_pod and from_pod before and after a change, in one run: the "before"
programs compiled from the bpf/ sources of a commit (`git archive <rev> bpf`), the "after" ones
from this checkout's bpf/, both against the maps of one Datapath (controller.bench.cost.setup_maps:
an isolated endpoint on ifindex 1, lo, allowing TCP port 80 from its peer, egress to the peer's
port 80 and to a Service's backend), with kernel BPF stats around BPF_PROG_TEST_RUN:
  established   to_pod on a packet of a tracked flow, repeated
  egress est.   from_pod on a packet of a tracked flow straight to a pod, repeated
  service est.  from_pod on a packet of a tracked flow to a ClusterIP (marked for the judge)
  new flow      to_pod on a SYN with a new source port every packet, one test_run each
The pass-through floor and every (case, version) run in rotated order in every round (same run,
alternating: these machines' speed drifts between runs); figures are medians over rounds, with
after/before ratios. Before the rounds every program is checked to pass every case's packet.

Run: python -m controller.bench.ab_cost --before REV [--rounds 9] [--packets 20000] (root; a git
checkout, for the old sources). The maps are this checkout's: the old programs must use their
layouts (map value sizes checked by the loader of each build).
"""

from __future__ import annotations

import argparse
import itertools
import json
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from controller.agent import preflight
from controller.bench.bpf_parts import AFTER, BEFORE, PASSTHROUGH, before_and_after, bench_programs
from controller.bench.common import (
    command_line,
    loadavg,
    log,
    logs_to_stderr,
    machine,
    median,
    ratio,
    rotated,
)
from controller.bench.cost import (
    EP,
    PEER,
    POD,
    VIP,
    drive,
    per_packet_ns,
    setup_maps,
    tcp_frame,
    with_stats_enabled,
)
from controller.bench.testrun import run
from controller.datapath.node import Datapath

CASES = ("established", "egress est.", "service est.", "new flow")


def _frames(case: str, new_flows: int, first_sport: int) -> tuple[str, list[bytes], bool]:
    """(program, frames, repeat): the case's packets; repeat = one frame run many times."""
    if case == "established":
        return "to_pod", [tcp_frame(PEER, POD, 40000, 80, 0x10)], True
    if case == "egress est.":
        return "from_pod", [tcp_frame(POD, PEER, 40002, 80, 0x10)], True
    if case == "service est.":
        return "from_pod", [tcp_frame(POD, VIP, 40001, 80, 0x10)], True
    sports = (1024 + (first_sport + i) % 64512 for i in range(new_flows))
    return "to_pod", [tcp_frame(PEER, POD, s, 80, 0x02) for s in sports], False


def _flows(dp: Datapath, fds: dict[str, dict[str, int]]) -> None:
    """The tracked flows of the established cases, made by this checkout's programs (both
    versions read the same entries)."""
    dp.maps["vg_ct"].clear()
    run(fds[AFTER]["to_pod"], tcp_frame(PEER, POD, 40000, 80, 0x02), ifindex=EP)
    run(fds[AFTER]["from_pod"], tcp_frame(POD, PEER, 40002, 80, 0x02), ifindex=EP)
    run(fds[AFTER]["from_pod"], tcp_frame(POD, VIP, 40001, 80, 0x02), ifindex=EP)


def _repeated(fd: int, frame: bytes, packets: int) -> Callable[[], object]:
    return lambda: run(fd, frame, ifindex=EP, repeat=packets)


def measure(dp: Datapath, fds: dict[str, dict[str, int]], rounds: int, packets: int) -> dict[str, Any]:
    new_flows = min(packets, 5000)
    _flows(dp, fds)
    for case, version in itertools.product(CASES, (BEFORE, AFTER)):
        prog, frames, _ = _frames(case, 1, 0)
        got = run(fds[version][prog], frames[0], ifindex=EP).retval
        if got != 0:
            raise RuntimeError(f"{version} {prog}, {case}: tc verdict {got}, the benchmark expects 0 (pass)")
    keys = [PASSTHROUGH, *(f"{c}/{v}" for c in CASES for v in (BEFORE, AFTER))]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    sport = 0
    for r in range(rounds):
        _flows(dp, fds)  # the new flows of the last round were cleared with the table
        for key in rotated(keys, r):
            if key == PASSTHROUGH:
                fd, frames, repeat = (
                    fds[PASSTHROUGH][PASSTHROUGH],
                    [tcp_frame(PEER, POD, 40000, 80, 0x10)],
                    True,
                )
            else:
                case, version = key.split("/")
                prog, frames, repeat = _frames(case, new_flows, sport)
                fd = fds[version][prog]
                sport += 0 if repeat else new_flows
            go = _repeated(fd, frames[0], packets) if repeat else drive(fd, frames, ifindex=EP)
            samples[key].append(per_packet_ns(fd, go))
        dp.maps["vg_ct"].clear()
    floor = median(samples[PASSTHROUGH])
    rows = []
    for case in CASES:
        before, after = median(samples[f"{case}/{BEFORE}"]), median(samples[f"{case}/{AFTER}"])
        rows.append(
            {
                "case": case,
                "before_ns": round(before, 1),
                "after_ns": round(after, 1),
                "after_vs_before": ratio(after, before),
                "before_vs_floor": ratio(before, floor),
                "after_vs_floor": ratio(after, floor),
                "samples": {v: [round(x, 1) for x in samples[f"{case}/{v}"]] for v in (BEFORE, AFTER)},
            }
        )
    return {"passthrough_ns": round(floor, 1), "rounds": rounds, "packets_per_round": packets, "cases": rows}


def run_all(pin_root: str, before_rev: str, rounds: int, packets: int) -> dict[str, Any]:
    preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
    node = f"bench-ab-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        stack.callback(Datapath.remove_pins, node, pin_root)
        dp = Datapath(node=node, pin_root=pin_root)
        stack.callback(dp.close)
        setup_maps(dp)
        fds = stack.enter_context(before_and_after(dp, before_rev, ("to_pod", "from_pod")))
        fds[PASSTHROUGH] = stack.enter_context(bench_programs(dp))
        log(f"ab: to_pod and from_pod of {before_rev} and of this checkout loaded on {dp.pin_dir}")
        doc = with_stats_enabled(lambda: measure(dp, fds, rounds, packets))
    doc["before"] = before_rev
    return doc


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"to_pod / from_pod of {doc['before']} (before) and of this checkout (after), same maps, same"
        f" rounds; pass-through {doc['passthrough_ns']} ns; medians of {doc['rounds']} rounds,"
        " ns per packet:",
        "",
        "| case | before | after | after / before | before x pass | after x pass |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["cases"]:
        lines.append(
            f"| {r['case']} | {r['before_ns']} | {r['after_ns']} | {r['after_vs_before']} |"
            f" {r['before_vs_floor']} | {r['after_vs_floor']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the commit whose bpf/ is the 'before' program")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--packets", type=int, default=20000, help="per case per round (new flows: at most 5000)")
    ap.add_argument("--pin-root", default="/sys/fs/bpf/vethguard")
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {"benchmark": "ab-cost", "command": command_line("controller.bench.ab_cost", argv)}
    doc["machine"] = machine()
    with logs_to_stderr():  # stdout: the results only
        doc |= run_all(args.pin_root, args.before, args.rounds, args.packets)
    doc["machine"]["loadavg_end"] = loadavg()
    print(json.dumps(doc, indent=2) if args.output == "json" else markdown(doc), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
