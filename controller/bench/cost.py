"""Per-packet cost of the tc programs from kernel BPF stats (run_time_ns / run_cnt).

Packets are driven by BPF_PROG_TEST_RUN against ifindex 1 (lo) with an endpoint keyed by 1:
  passthrough   the floor (returns TC_ACT_OK)
  established   a packet of a tracked, allowed flow (conntrack fast path)
  new flow      a packet of a new flow allowed by an isolating policy (parse, ipcache, LPM
                policy, CT insert, event); the source port differs on every run
The three are measured alternately in the same run (these machines are noisy) and reported
as medians over rounds and as ratios to passthrough. kernel.bpf_stats_enabled is restored.

Egress to a Service (judged after DNAT, bpf/lib/service.h) is measured in the same rounds:
  uplink pass         to_uplink on a packet without our mark: what every other packet leaving
                      the node pays
  deferred est.       from_pod on an established flow to a ClusterIP (CT hit, mark)
  judge est.          to_uplink on that flow's marked packet after DNAT (slot, CT hit). The
                      judge clears the mark and test_run's repeats reuse one skb, so it is
                      driven one test_run per packet, which costs more per packet (cold
                      caches): compare it with `direct egress est. (single runs)`, the direct
                      flow driven the same way
  deferred new        from_pod on a new flow to a ClusterIP (frontend lookup, CT insert, event)
  judge new           to_uplink on its first marked packet (policy lookups, CT insert, event)
  direct egress est.  from_pod on an established flow straight to a pod, for comparison

Where an established packet's time goes (bpf/bench_parts.c): programs that run the first N
steps of to_pod's established path on the same maps, measured in the same rounds; the report
gives each step's cost (part_N - part_(N-1)) and what to_pod adds beyond them.

Run: python -m controller.bench.cost [--rounds 9] [--packets 20000]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import statistics
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import ClassVar, TypeVar

from controller.agent import preflight
from controller.bench.bpf_parts import PASSTHROUGH, bench_programs
from controller.bench.common import logs_to_stderr
from controller.bench.testrun import run
from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.node import Datapath

T = TypeVar("T")
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
RUN_TIME_OFF = 192  # offsetof(struct bpf_prog_info, run_time_ns) (UAPI, stable)


class _ProgInfo(ctypes.Structure):
    _fields_: ClassVar = [
        ("_head", ctypes.c_uint8 * RUN_TIME_OFF),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
    ]


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program."""
    info = _ProgInfo()
    bpfsys.obj_info(fd, info)
    return int(info.run_time_ns), int(info.run_cnt)


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    import ipaddress

    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        1,
        0,
        64,
        6,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + tcp


POD = "10.244.1.10"
PEER = "10.244.1.20"
PEER_ID = 257
EP = 1
VIP = "10.245.0.20"  # a Service frontend (port 80)
BACKEND = "10.244.2.30"  # the pod behind it after DNAT (port 8080)
BACKEND_ID = 258
SLOT = 1
MARK = abi.VG_MARK_DEFERRED | (SLOT << abi.VG_MARK_SLOT_SHIFT)


@dataclass(frozen=True)
class CostReport:
    passthrough_ns: float
    established_ns: float
    new_flow_ns: float
    established_ratio: float
    new_flow_ratio: float
    rounds: int
    packets_per_round: int
    uplink_unmarked_ns: float | None = None
    direct_egress_established_ns: float | None = None
    deferred_established_ns: float | None = None
    judge_established_ns: float | None = None
    direct_egress_established_single_run_ns: float | None = None
    deferred_new_ns: float | None = None
    judge_new_ns: float | None = None
    # step -> ns it adds to an established packet (bpf/bench_parts.c), in to_pod's order
    established_steps_ns: dict[str, float] | None = None
    # the same for a new flow, every program driven one test_run per packet
    new_flow_steps_ns: dict[str, float] | None = None
    # figure -> its value in every round (passthrough_ns, established_ns, new_flow_ns): the plots' ranges
    samples: dict[str, list[float]] | None = None


def setup_maps(dp: Datapath) -> None:
    flags = abi.EP_F_INGRESS_ISOLATED | abi.EP_F_EGRESS_ISOLATED
    k, v = codecs.encode_endpoint(EP, 256, flags, POD, None, slot=SLOT)
    dp.maps["vg_endpoints"].update(k, v)
    dp.maps["vg_slots"].update(codecs.u32_key(SLOT), codecs.u32_key(EP))
    kb, vb = codecs.encode_svc(4, VIP, 6, 80)
    dp.maps["vg_svc"].update(kb, vb)
    for key in (PolicyEntryKey(1, BACKEND_ID, 6, 8080, 16), PolicyEntryKey(1, PEER_ID, 6, 80, 16)):
        k, v = codecs.encode_policy(EP, key, PolicyEntryValue(1, 3))
        dp.maps["vg_policy"].update(k, v)
    for prefix, ident in (
        (f"{PEER}/32", PEER_ID),
        (f"{POD}/32", 256),
        (f"{BACKEND}/32", BACKEND_ID),
        ("0.0.0.0/0", 2),
    ):
        import ipaddress

        k, v = codecs.encode_ipcache(ipaddress.ip_network(prefix), ident, 0)
        dp.maps["vg_ipcache4"].update(k, v)
    # Some unrelated entries so the trie is not trivially small.
    for port in range(1000, 1064):
        k, v = codecs.encode_policy(EP, PolicyEntryKey(0, PEER_ID + 1, 6, port, 16), PolicyEntryValue(1, 1))
        dp.maps["vg_policy"].update(k, v)
    k, v = codecs.encode_policy(EP, PolicyEntryKey(0, PEER_ID, 6, 80, 16), PolicyEntryValue(1, 2))
    dp.maps["vg_policy"].update(k, v)


def per_packet_ns(fd: int, drive: Callable[[], object]) -> float:
    t0, c0 = prog_stats(fd)
    drive()
    t1, c1 = prog_stats(fd)
    return (t1 - t0) / max(1, c1 - c0)


def measure(dp: Datapath, rounds: int = 9, packets: int = 20000) -> CostReport:
    """Medians over `rounds` of each kind; `packets` per kind per round."""
    setup_maps(dp)
    with bench_programs(
        dp, (PASSTHROUGH, *PARTS, *NEW_PARTS)
    ) as fds:  # one compile for the floor and the steps
        return _measure_all(dp, fds, rounds, packets)


def _measure_all(dp: Datapath, fds: Mapping[str, int], rounds: int, packets: int) -> CostReport:
    pass_fd, to_pod = fds[PASSTHROUGH], dp.prog_fd("to_pod")
    est = tcp_frame(PEER, POD, 40000, 80, 0x10)
    run(to_pod, est, ifindex=EP)  # creates the flow
    new_flows = min(packets, 5000)  # one test_run per packet: keep rounds short
    samples: dict[str, list[float]] = {"pass": [], "est": [], "new": []}
    sport = 1024
    for _ in range(rounds):
        samples["pass"].append(per_packet_ns(pass_fd, lambda: run(pass_fd, est, ifindex=EP, repeat=packets)))
        samples["est"].append(per_packet_ns(to_pod, lambda: run(to_pod, est, ifindex=EP, repeat=packets)))
        frames = []
        for _ in range(new_flows):
            sport = sport + 1 if sport < 65535 else 1024
            frames.append(tcp_frame(PEER, POD, sport, 80, 0x02))
        dp.maps["vg_ct"].clear()  # every frame below is a miss, and the table never fills
        run(to_pod, est, ifindex=EP)

        def drive_new(fr: list[bytes] = frames) -> None:
            for f in fr:
                run(to_pod, f, ifindex=EP)

        samples["new"].append(per_packet_ns(to_pod, drive_new))
    svc = _measure_services(dp, rounds, packets, new_flows)
    steps = _measure_steps(dp, fds, rounds, packets)
    new_steps = _measure_new_steps(dp, fds, rounds, new_flows)
    p, e, n = (statistics.median(samples[k]) for k in ("pass", "est", "new"))
    return CostReport(
        passthrough_ns=round(p, 1),
        established_ns=round(e, 1),
        new_flow_ns=round(n, 1),
        established_ratio=round(e / p, 2) if p else float("inf"),
        new_flow_ratio=round(n / p, 2) if p else float("inf"),
        rounds=rounds,
        packets_per_round=packets,
        **svc,
        established_steps_ns=steps,
        new_flow_steps_ns=new_steps,
        samples={
            f"{name}_ns": [round(x, 1) for x in samples[k]]
            for k, name in (("pass", "passthrough"), ("est", "established"), ("new", "new_flow"))
        },
    )


# bpf/bench_parts.c: part_N runs the first N steps of to_pod's established (fast) path
STEPS = ("clock", "config", "parse", "ct lookup", "ct hit + count")
PARTS = tuple(f"part_{i}" for i in range(1, len(STEPS) + 1))
# ... and newpart_N the first N steps of a new flow's (a SYN its NetworkPolicy allows)
NEW_STEPS = ("fast path", "full path", "peer", "policy", "ct create", "count", "event")
NEW_PARTS = tuple(f"newpart_{i}" for i in range(1, len(NEW_STEPS) + 1))


def measure_steps(dp: Datapath, rounds: int, packets: int) -> dict[str, float]:
    """Medians of what each step of the established path adds, plus "rest of to_pod" (what
    to_pod does beyond the steps) and "program floor" (passthrough), which sum to to_pod.

    The parts are compiled against dp's pinned maps (the entries setup_maps wrote), and every
    round runs passthrough, each part and to_pod on the same established packet.
    """
    with bench_programs(dp, (PASSTHROUGH, *PARTS)) as fds:
        return _measure_steps(dp, fds, rounds, packets)


def _measure_steps(dp: Datapath, fds: Mapping[str, int], rounds: int, packets: int) -> dict[str, float]:
    pass_fd, to_pod = fds[PASSTHROUGH], dp.prog_fd("to_pod")
    est = tcp_frame(PEER, POD, 40000, 80, 0x10)
    run(to_pod, est, ifindex=EP)  # the flow (earlier measurements cleared the table)
    order = [("pass", pass_fd), *((n, fds[n]) for n in PARTS), ("to_pod", to_pod)]
    for name, fd in order:
        got = run(fd, est, ifindex=EP).retval
        if got != 0:  # TC_ACT_OK: a part that fails early would measure less than its steps
            raise RuntimeError(f"{name} returned {got} on an established packet, not TC_ACT_OK")
    samples: dict[str, list[float]] = {name: [] for name, _ in order}
    for _ in range(rounds):
        for name, fd in order:
            samples[name].append(
                per_packet_ns(fd, functools.partial(run, fd, est, ifindex=EP, repeat=packets))
            )
    return _step_costs(samples, STEPS, PARTS)


def _new_frames(count: int, first_sport: int) -> list[bytes]:
    """`count` SYNs from PEER to POD:80, each from its own source port from first_sport on."""
    return [tcp_frame(PEER, POD, 1024 + (first_sport + i) % 64512, 80, 0x02) for i in range(count)]


def measure_new_steps(dp: Datapath, rounds: int, new_flows: int) -> dict[str, float]:
    """Medians of what each step of a new flow adds (bpf/bench_parts.c newpart_N), plus "rest of
    to_pod" and "program floor" (passthrough), which sum to to_pod, every program driven one
    test_run per packet with `new_flows` new flows per round (setup_maps first)."""
    with bench_programs(dp, (PASSTHROUGH, *NEW_PARTS)) as fds:
        return _measure_new_steps(dp, fds, rounds, new_flows)


def _measure_new_steps(dp: Datapath, fds: Mapping[str, int], rounds: int, new_flows: int) -> dict[str, float]:
    to_pod = dp.prog_fd("to_pod")
    order = [("pass", fds[PASSTHROUGH]), *((n, fds[n]) for n in NEW_PARTS), ("to_pod", to_pod)]
    dp.maps["vg_ct"].clear()
    for name, fd in order:
        got = run(fd, _new_frames(1, 0)[0], ifindex=EP).retval
        if got != 0:  # TC_ACT_OK: a part that fails early would measure less than its steps
            raise RuntimeError(f"{name} returned {got} on a new flow, not TC_ACT_OK")
        dp.maps["vg_ct"].clear()
    samples: dict[str, list[float]] = {name: [] for name, _ in order}
    first = 1
    for _ in range(rounds):
        for name, fd in order:
            frames = _new_frames(new_flows, first)
            first += new_flows
            dp.maps["vg_ct"].clear()  # every frame is a miss, and the table never fills
            samples[name].append(per_packet_ns(fd, drive(fd, frames, ifindex=EP)))
    dp.maps["vg_ct"].clear()
    return _step_costs(samples, NEW_STEPS, NEW_PARTS)


def _step_costs(
    samples: Mapping[str, list[float]], steps: tuple[str, ...], parts: tuple[str, ...]
) -> dict[str, float]:
    """From the rounds of "pass", every part and "to_pod": the floor, what each part adds to the
    one before (its step), and what to_pod adds to the last part; medians."""
    med = {name: statistics.median(v) for name, v in samples.items()}
    out = {"program floor": round(med["pass"], 1)}
    prev = med["pass"]
    for step, name in zip(steps, parts, strict=True):
        out[step] = round(med[name] - prev, 1)
        prev = med[name]
    out["rest of to_pod"] = round(med["to_pod"] - prev, 1)
    return out


def counted(
    dp: Datapath, prog: str | int, frame: bytes, **kw: int
) -> tuple[int, list[tuple[abi.Reason, int]]]:
    """One packet through dp's program `prog` (or a program fd using dp's maps): (its tc verdict,
    the (reason, direction) of every counter that moved). Benchmarks check with it that a measured
    packet takes the path they name."""
    before = dp.counters()
    got = run(prog if isinstance(prog, int) else dp.prog_fd(prog), frame, **kw)
    moved = [(abi.Reason(k[1]), k[2]) for k, v in dp.counters().items() if v != before.get(k)]
    return got.retval, moved


def drive(fd: int, frames: list[bytes], **kw: int) -> Callable[[], None]:
    """One test_run per frame (each starts from a fresh skb: mark and all)."""

    def go() -> None:
        for f in frames:
            run(fd, f, **kw)

    return go


def _measure_services(dp: Datapath, rounds: int, packets: int, new_flows: int) -> dict[str, float]:
    """Medians of the Service kinds (module doc), alternated round by round."""
    from_pod, uplink = dp.prog_fd("from_pod"), dp.prog_fd("to_uplink")
    direct = tcp_frame(POD, PEER, 40002, 80, 0x10)
    to_vip = tcp_frame(POD, VIP, 40001, 80, 0x10)
    judged = tcp_frame(POD, BACKEND, 40001, 8080, 0x10)
    kinds = ("pass", "direct", "direct1", "dest", "jest", "dnew", "jnew")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    sport = 1024
    for _ in range(rounds):
        # (re)create the established entries: the new-flow drive below clears the table
        run(from_pod, tcp_frame(POD, PEER, 40002, 80, 0x02), ifindex=EP)
        run(from_pod, tcp_frame(POD, VIP, 40001, 80, 0x02), ifindex=EP)
        run(uplink, tcp_frame(POD, BACKEND, 40001, 8080, 0x02), mark=MARK)
        samples["pass"].append(per_packet_ns(uplink, lambda: run(uplink, direct, repeat=packets)))
        samples["direct"].append(
            per_packet_ns(from_pod, lambda: run(from_pod, direct, ifindex=EP, repeat=packets))
        )
        samples["dest"].append(
            per_packet_ns(from_pod, lambda: run(from_pod, to_vip, ifindex=EP, repeat=packets))
        )
        # The judge clears the mark, and test_run repeats reuse one skb: one run per packet.
        samples["jest"].append(per_packet_ns(uplink, drive(uplink, [judged] * new_flows, mark=MARK)))
        samples["direct1"].append(per_packet_ns(from_pod, drive(from_pod, [direct] * new_flows, ifindex=EP)))
        vip_frames, backend_frames = [], []
        for _ in range(new_flows):
            sport = sport + 1 if sport < 65535 else 1024
            vip_frames.append(tcp_frame(POD, VIP, sport, 80, 0x02))
            backend_frames.append(tcp_frame(POD, BACKEND, sport, 8080, 0x02))
        dp.maps["vg_ct"].clear()
        samples["dnew"].append(per_packet_ns(from_pod, drive(from_pod, vip_frames, ifindex=EP)))
        samples["jnew"].append(per_packet_ns(uplink, drive(uplink, backend_frames, mark=MARK)))
        dp.maps["vg_ct"].clear()
    med = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    return {
        "uplink_unmarked_ns": med["pass"],
        "direct_egress_established_ns": med["direct"],
        "deferred_established_ns": med["dest"],
        "judge_established_ns": med["jest"],
        "direct_egress_established_single_run_ns": med["direct1"],
        "deferred_new_ns": med["dnew"],
        "judge_new_ns": med["jnew"],
    }


def with_stats_enabled(fn: Callable[[], T]) -> T:
    with open(STATS_SYSCTL) as f:
        old = f.read().strip()
    try:
        with open(STATS_SYSCTL, "w") as f:
            f.write("1")
        return fn()
    finally:
        with open(STATS_SYSCTL, "w") as f:
            f.write(old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--pin-root", default="/sys/fs/bpf/vethguard")
    args = ap.parse_args(argv)
    node = f"test-dp-cost-{uuid.uuid4().hex[:8]}"  # throwaway maps, removed below
    preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
    with logs_to_stderr():  # stdout: the results only (the Datapath logs its build)
        dp = Datapath(node=node, pin_root=args.pin_root)
        try:
            report = with_stats_enabled(lambda: measure(dp, args.rounds, args.packets))
        finally:
            dp.close()
            Datapath.remove_pins(node, args.pin_root)
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
