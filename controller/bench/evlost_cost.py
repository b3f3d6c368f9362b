"""Per-packet cost of the event paths before and after vg_evlost (issue 17), from kernel BPF
stats around BPF_PROG_TEST_RUN, as controller.bench.cost measures the rest.

vg_evlost (commit 6c8b965) counts, per CPU, the events vg_emit does not write: over the rate
limit, or the ring full. The "before" program is to_pod compiled from the bpf/ sources of the
commit before it (`git archive <rev> bpf`, default 6c8b965^), the "after" program to_pod of this
checkout's bpf/; both are compiled the same way (loader.compile_programs, same flags) against the
maps of one Datapath (the map layouts are the same; the old program does not know vg_evlost), so
they run on the same entries (controller.bench.cost.setup_maps: an ingress-isolated endpoint on
ifindex 1, lo, that allows TCP port 80 from its peer) and the same packets:
  established       a packet of a tracked flow, repeated (no event: the unchanged common path)
  new flow          a SYN with a new source port every packet, one test_run each (ALLOW_POLICY
                    and an event): the bucket full and the ring empty (the event written), or
                    the bucket empty (rate limited: after, vg_evlost.rate_limited += 1)
  drop              a SYN to port 81, repeated (DROP_POLICY and an event): written, rate
                    limited, or the ring full (tokens left, ringbuf_reserve fails: after,
                    vg_evlost.ring_full += 1)
Before a case runs, its event state is set: the ring drained and vg_evrate's bucket full ("room";
at most 800 packets, under the burst of 1000 and the ring's ~3600 records), the bucket empty as of
now (`rate limited`; about one token per ms comes back, so over 99% of the packets are limited),
or the ring filled and the bucket full ("ring full"). Before the rounds, every program and case is
checked on one packet: its tc verdict, counted reason, whether the ring got a record, and how
vg_evlost moved (after: the path's counter by one; before: no such map). Every round runs the
pass-through floor and every (case, program) in rotated order (same run, alternating); figures
are medians over rounds, with the after/before ratio of each case.

Run: python -m controller.bench.evlost_cost [--rounds 9] [--packets 20000] [--before 6c8b965^]
[--results docs/bench] (root; a git checkout, for the old sources)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agent import preflight
from controller.bench import report
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
    counted,
    drive,
    per_packet_ns,
    setup_maps,
    tcp_frame,
    with_stats_enabled,
)
from controller.bench.testrun import run
from controller.datapath import abi, codecs
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath
from controller.datapath.ringbuf import RingBuffer

RESULT = "evlost-cost"
BEFORE_REV = "6c8b965^"  # the commit before vg_evlost: git log -S vg_evlost -- bpf
ROOM, LIMITED, FULL, NONE = "room", "rate limited", "ring full", "-"
EST, NEW, DROP = "established", "new flow", "drop"
SYN, ACK = 0x02, 0x10
EST_SPORT, CHECK_SPORT, DROP_PORT = 40000, 40001, 81
ROOM_PACKETS = 800  # under the bucket's burst (1000) and the ring's capacity (~3600 records)
TC_ACT_OK, TC_ACT_SHOT = 0, 2
ZERO = codecs.u32_key(0)


@dataclass(frozen=True)
class Case:
    key: str
    packet: str  # EST, NEW, DROP
    events: str  # the event state it runs in: ROOM, LIMITED, FULL; NONE: no event
    reason: Reason
    verdict: int = TC_ACT_OK

    @property
    def what(self) -> str:
        said = {NONE: "no event", ROOM: "event written", LIMITED: "over the rate limit", FULL: "ring full"}
        return f"{self.packet}, {said[self.events]}"


CASES = (
    Case("established", EST, NONE, Reason.ALLOW_CT),
    Case("new_written", NEW, ROOM, Reason.ALLOW_POLICY),
    Case("new_rate_limited", NEW, LIMITED, Reason.ALLOW_POLICY),
    Case("drop_written", DROP, ROOM, Reason.DROP_POLICY, TC_ACT_SHOT),
    Case("drop_rate_limited", DROP, LIMITED, Reason.DROP_POLICY, TC_ACT_SHOT),
    Case("drop_ring_full", DROP, FULL, Reason.DROP_POLICY, TC_ACT_SHOT),
)
EST_FRAME = tcp_frame(PEER, POD, EST_SPORT, 80, ACK)
DROP_FRAME = tcp_frame(PEER, POD, EST_SPORT, DROP_PORT, SYN)


@dataclass
class Bench:
    dp: Datapath
    ring: RingBuffer
    fds: dict[str, int]  # BEFORE / AFTER -> to_pod; PASSTHROUGH -> the floor

    def evlost(self) -> tuple[int, int]:
        """(rate_limited, ring_full) summed over CPUs."""
        per_cpu = self.dp.maps["vg_evlost"].lookup_percpu(ZERO) or []
        states = [abi.EvlostState.from_buffer_copy(v) for v in per_cpu]
        return sum(s.rate_limited for s in states), sum(s.ring_full for s in states)

    def bucket(self, last_ns: int = 0, tokens: int = 0) -> None:
        """vg_evrate on every CPU; last_ns 0 refills the bucket on the next event."""
        self.dp.maps["vg_evrate"].update(ZERO, bytes(abi.EvrateState(last_ns=last_ns, tokens=tokens)))

    def set_events(self, state: str) -> None:
        if state == FULL:
            pending = -1
            while self.ring.pending() != pending:  # drops with a full bucket until no record fits
                pending = self.ring.pending()
                self.bucket()
                run(self.fds[AFTER], DROP_FRAME, ifindex=EP, repeat=1000)
            self.bucket()
            return
        self.ring.read()
        if state == LIMITED:
            self.bucket(time.monotonic_ns(), 0)  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        else:
            self.bucket()

    def frames(self, case: Case, n: int, sports: Iterator[int]) -> list[bytes]:
        if case.packet == NEW:
            return [tcp_frame(PEER, POD, next(sports), 80, SYN) for _ in range(n)]
        return [EST_FRAME if case.packet == EST else DROP_FRAME]

    def prepare(self, case: Case, fd: int) -> None:
        self.dp.maps["vg_ct"].clear()  # new flows miss, and the table never fills
        if case.packet == EST:
            run(fd, tcp_frame(PEER, POD, EST_SPORT, 80, SYN), ifindex=EP)
        if case.events != NONE:
            self.set_events(case.events)


def check(b: Bench, case: Case, version: str) -> dict[str, Any]:
    """One packet of the case through one version: the path it must take (module doc)."""
    fd = b.fds[version]
    b.prepare(case, fd)
    (frame,) = b.frames(case, 1, iter([CHECK_SPORT]))
    pending, lost = b.ring.pending(), b.evlost()
    retval, moved = counted(b.dp, fd, frame, ifindex=EP)
    written = b.ring.pending() > pending
    lost_after = b.evlost()
    got = {
        "verdict": retval,
        "reason": [r.name for r, _ in moved],
        "event_written": written,
        "evlost_moved": {
            "rate_limited": lost_after[0] - lost[0],
            "ring_full": lost_after[1] - lost[1],
        },
    }
    counts_lost = version == AFTER
    want = {
        "verdict": case.verdict,
        "reason": [case.reason.name],
        "event_written": case.events == ROOM,
        "evlost_moved": {
            "rate_limited": int(counts_lost and case.events == LIMITED),
            "ring_full": int(counts_lost and case.events == FULL),
        },
    }
    if got != want:
        raise RuntimeError(f"{version}, {case.what}: {got}; the benchmark expects {want}")
    return got


def measure(b: Bench, rounds: int, packets: int) -> dict[str, Any]:
    checked = {f"{c.key}/{v}": check(b, c, v) for c in CASES for v in (BEFORE, AFTER)}
    new_flows = min(packets, 5000)  # one test_run per packet: keep rounds short
    runs = [(c, v) for c in CASES for v in (BEFORE, AFTER)]
    samples: dict[str, list[float]] = {PASSTHROUGH: [], **{f"{c.key}/{v}": [] for c, v in runs}}
    sports = itertools.cycle(range(1024, EST_SPORT))
    for rnd in range(rounds):
        floor = b.fds[PASSTHROUGH]
        samples[PASSTHROUGH].append(
            per_packet_ns(floor, functools.partial(run, floor, EST_FRAME, repeat=packets))
        )
        for case, version in rotated(runs, rnd):
            fd = b.fds[version]
            n = ROOM_PACKETS if case.events in (ROOM, FULL) else packets
            b.prepare(case, fd)
            go: Callable[[], object]
            if case.packet == NEW:
                go = drive(fd, b.frames(case, min(n, new_flows), sports), ifindex=EP)
            else:
                go = functools.partial(run, fd, b.frames(case, 1, sports)[0], ifindex=EP, repeat=n)
            samples[f"{case.key}/{version}"].append(per_packet_ns(fd, go))
    return summarize(samples, checked, rounds, packets, new_flows)


def summarize(
    samples: dict[str, list[float]], checked: dict[str, Any], rounds: int, packets: int, new_flows: int
) -> dict[str, Any]:
    floor = median(samples[PASSTHROUGH])
    rows = []
    for c in CASES:
        before, after = (median(samples[f"{c.key}/{v}"]) for v in (BEFORE, AFTER))
        rows.append(
            {
                "case": c.key,
                "what": c.what,
                "reason": c.reason.name,
                "before_ns": round(before, 1),
                "after_ns": round(after, 1),
                "after_vs_before": ratio(after, before),
                "before_vs_floor": ratio(before, floor),
                "after_vs_floor": ratio(after, floor),
                "samples": {v: [round(x, 1) for x in samples[f"{c.key}/{v}"]] for v in (BEFORE, AFTER)},
                "checked": {v: checked[f"{c.key}/{v}"] for v in (BEFORE, AFTER)},
            }
        )
    return {
        "passthrough_ns": round(floor, 1),
        "passthrough_samples": [round(x, 1) for x in samples[PASSTHROUGH]],
        "rounds": rounds,
        "packets_per_round": packets,
        "new_flows_per_round": new_flows,
        "packets_with_room": ROOM_PACKETS,
        "cases": rows,
    }


def run_all(pin_root: str, before_rev: str, rounds: int, packets: int) -> dict[str, Any]:
    preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
    node = f"bench-evlost-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        stack.callback(Datapath.remove_pins, node, pin_root)
        dp = Datapath(node=node, pin_root=pin_root)
        stack.callback(dp.close)
        setup_maps(dp)
        versions = stack.enter_context(before_and_after(dp, before_rev, ("to_pod",)))
        fds = {version: got["to_pod"] for version, got in versions.items()}
        floor = stack.enter_context(bench_programs(dp))
        fds[PASSTHROUGH] = floor[PASSTHROUGH]
        ring = stack.enter_context(contextlib.closing(RingBuffer(str(dp.pin_dir / "vg_events"))))
        log(f"evlost: to_pod of {before_rev} and of this checkout loaded on {dp.pin_dir}")
        doc = with_stats_enabled(lambda: measure(Bench(dp, ring, fds), rounds, packets))
    doc["before"] = before_rev
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--packets", type=int, default=20000, help="per case per round (new flows: at most 5000)")
    ap.add_argument("--before", default=BEFORE_REV, help="the commit whose bpf/ is the 'before' program")
    ap.add_argument("--pin-root", default="/sys/fs/bpf/vethguard")
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ap.add_argument(
        "--results", metavar="DIR", help=f"also write {RESULT}.{{json,md}} (with machine and load)"
    )
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {
        "benchmark": RESULT,
        "command": command_line("controller.bench.evlost_cost", argv),
        "machine": machine(),
    }
    with logs_to_stderr():  # stdout: the results only
        doc |= run_all(args.pin_root, args.before, args.rounds, args.packets)
    doc["machine"]["loadavg_end"] = loadavg()
    table = report.evlost_markdown(doc)
    if args.results:
        report.write_results(Path(args.results), RESULT, doc, table)
    print(json.dumps(doc, indent=2) if args.output == "json" else table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
