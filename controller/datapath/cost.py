"""Per-packet cost of the tc programs from kernel BPF stats (run_time_ns / run_cnt).

Packets are driven by BPF_PROG_TEST_RUN against ifindex 1 (lo) with an endpoint keyed by 1:
  passthrough   the floor (returns TC_ACT_OK)
  established   a packet of a tracked, allowed flow (conntrack fast path)
  new flow      a packet of a new flow allowed by an isolating policy (parse, ipcache, LPM
                policy, CT insert, event); the source port differs on every run
The three are measured alternately in the same run (these machines are noisy) and reported
as medians over rounds and as ratios to passthrough. kernel.bpf_stats_enabled is restored.

Run: python -m controller.datapath.cost [--rounds 9] [--packets 20000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import struct
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import ClassVar

from controller.datapath import Datapath, maps
from controller.datapath.testrun import run
from controller.mapstate import PolicyEntryKey, PolicyEntryValue

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
    maps.obj_info(fd, info)
    return int(info.run_time_ns), int(info.run_cnt)


def _frame(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
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


@dataclass(frozen=True)
class CostReport:
    passthrough_ns: float
    established_ns: float
    new_flow_ns: float
    established_ratio: float
    new_flow_ratio: float
    rounds: int
    packets_per_round: int


def _setup(dp: Datapath) -> None:
    k, v = maps.encode_endpoint(EP, 256, maps.EP_F_INGRESS_ISOLATED, POD, None)
    dp.maps["vg_endpoints"].update(k, v)
    for prefix, ident in ((f"{PEER}/32", PEER_ID), (f"{POD}/32", 256), ("0.0.0.0/0", 2)):
        import ipaddress

        k, v = maps.encode_ipcache(ipaddress.ip_network(prefix), ident, 0)
        dp.maps["vg_ipcache4"].update(k, v)
    # Some unrelated entries so the trie is not trivially small.
    for port in range(1000, 1064):
        k, v = maps.encode_policy(EP, PolicyEntryKey(0, PEER_ID + 1, 6, port, 16), PolicyEntryValue(1, 0, 1))
        dp.maps["vg_policy"].update(k, v)
    k, v = maps.encode_policy(EP, PolicyEntryKey(0, PEER_ID, 6, 80, 16), PolicyEntryValue(1, 0, 2))
    dp.maps["vg_policy"].update(k, v)


def _measure(fd: int, drive: Callable[[], object]) -> float:
    t0, c0 = prog_stats(fd)
    drive()
    t1, c1 = prog_stats(fd)
    return (t1 - t0) / max(1, c1 - c0)


def measure(dp: Datapath, rounds: int = 9, packets: int = 20000) -> CostReport:
    """Medians over `rounds` of each kind; `packets` per kind per round."""
    _setup(dp)
    pass_fd, to_pod = dp.prog_fd("passthrough"), dp.prog_fd("to_pod")
    est = _frame(PEER, POD, 40000, 80, 0x10)
    run(to_pod, est, ifindex=EP)  # creates the flow
    new_flows = min(packets, 5000)  # one test_run per packet: keep rounds short
    samples: dict[str, list[float]] = {"pass": [], "est": [], "new": []}
    sport = 1024
    for _ in range(rounds):
        samples["pass"].append(_measure(pass_fd, lambda: run(pass_fd, est, ifindex=EP, repeat=packets)))
        samples["est"].append(_measure(to_pod, lambda: run(to_pod, est, ifindex=EP, repeat=packets)))
        frames = []
        for _ in range(new_flows):
            sport = sport + 1 if sport < 65535 else 1024
            frames.append(_frame(PEER, POD, sport, 80, 0x02))
        dp.maps["vg_ct"].clear()  # every frame below is a miss, and the table never fills
        run(to_pod, est, ifindex=EP)

        def drive_new(fr: list[bytes] = frames) -> None:
            for f in fr:
                run(to_pod, f, ifindex=EP)

        samples["new"].append(_measure(to_pod, drive_new))
    p, e, n = (statistics.median(samples[k]) for k in ("pass", "est", "new"))
    return CostReport(
        passthrough_ns=round(p, 1),
        established_ns=round(e, 1),
        new_flow_ns=round(n, 1),
        established_ratio=round(e / p, 2) if p else float("inf"),
        new_flow_ratio=round(n / p, 2) if p else float("inf"),
        rounds=rounds,
        packets_per_round=packets,
    )


def with_stats_enabled(fn: Callable[[], CostReport]) -> CostReport:
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
