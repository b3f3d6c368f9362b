"""Per-packet cost of ClusterNetworkPolicy tiers beside NetworkPolicies (issue 15), from kernel
BPF stats around BPF_PROG_TEST_RUN, as controller.bench.cost measures the rest.

One Datapath (its own maps and programs, throwaway pins) per ClusterNetworkPolicy count, each
synced from the real compiler's output for synth_cnp.tiered_cluster: `networkpolicies`
NetworkPolicies selecting the measured pod bench/server, `ipcache` synthetic pods, and 0, 10 or
100 ClusterNetworkPolicies of synth_cnp's mix (most select the server: its ingress takes the
tiered path, EP_F_INGRESS_TIERED). The server's endpoint is keyed by ifindex 1 (lo), so
to_pod runs on packets from bench/client to the server's iperf3 port in this namespace:
  established  a packet of a tracked flow (conntrack fast path; the tiers are not consulted)
  new flow     a SYN of a new flow (source port differs every packet): endpoint hash lookup,
               ipcache LPM, policy LPM lookups, conntrack insert, event
Every round measures the pass-through floor and both kinds on every Datapath, in rotated
order (same run, alternating); figures are medians over rounds, with ratios to the floor and
to the Datapath without ClusterNetworkPolicies.

Before measuring, the first new-flow packet's counted reason must be the lookup model's
(controller/debug/verdict_model.py): ALLOW_POLICY for every count (the mix hands the measured
flow to NetworkPolicy through Admin Pass rules), so the counts differ only by the tiers'
lookups. `policy_lookups` is the number of vg_policy LPM lookups of that new flow, from the
model: NetworkPolicy's path stops at the first allowing lookup (here the client's identity: 1);
the tiered path always makes three in the endpoint's tier profile (the peer's identity, its CIDR
identity, ANY; two when the peer address has no CIDR identity), then, where the Admin tier
passes and NetworkPolicy isolates, NetworkPolicy's own (here 1): at most six, whatever the
number of policies, tiers and rules. Both also make one endpoint hash lookup and one ipcache
LPM lookup.

Run: python -m controller.bench.tier_cost [--rounds 9] [--packets 20000] [--counts 0,10,100]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from controller.agent import preflight
from controller.bench import report, synth, synth_cnp
from controller.bench.bpf_parts import PASSTHROUGH, bench_programs
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
from controller.bench.cost import counted, per_packet_ns, tcp_frame, with_stats_enabled
from controller.bench.testrun import run
from controller.compiler import compute
from controller.compiler.builder import cluster_from_objects
from controller.compiler.desired_state import NodeDesired
from controller.core.identities import ID_ANY
from controller.core.verdicts import DIR_INGRESS, VERDICT_ALLOW
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath
from controller.debug import verdict_model

EP = 1  # the server's endpoint: ifindex 1 (lo) of the namespace the test runs are made in
SERVER = f"{synth.BENCH_NS}/server"
CLIENT_IP, SERVER_IP = synth_cnp.PAIRS[0][1], synth_cnp.PAIRS[0][3]
PORT = synth.IPERF_PORT
SYN, ACK = 0x02, 0x10
EST_SPORT = 40000


@dataclass
class TierSettings:
    networkpolicies: int = 1000
    ipcache: int = 10000
    counts: tuple[int, ...] = (0, 10, 100)  # ClusterNetworkPolicies, one Datapath each
    rounds: int = 7
    packets: int = 20000  # established packets per kind per round (new flows: at most 5000)

    @classmethod
    def quick(cls) -> TierSettings:
        return cls(networkpolicies=100, ipcache=1000, counts=(0, 100), rounds=3, packets=5000)


@dataclass
class Prepared:
    cnps: int
    dp: Datapath
    desired: NodeDesired
    info: dict[str, Any] = field(default_factory=dict)


def policy_lookups(desired: NodeDesired) -> tuple[str, int, bool]:
    """(the model's reason, vg_policy lookups, tiered) of the measured new flow (module doc)."""
    ep = desired.endpoints[SERVER]
    v = verdict_model.endpoint_verdict(desired, SERVER, DIR_INGRESS, CLIENT_IP, "TCP", PORT)
    ident, cidr, ns_ident = verdict_model.ipcache_lookup(desired, CLIENT_IP)
    levels = [ident, *([cidr] if cidr else []), ID_ANY]
    np_lookups = len(levels)
    for n, level in enumerate(levels, 1):
        hit = verdict_model.policy_lpm(ep.entries, DIR_INGRESS, level, 6, PORT)
        if hit is not None and hit[1].verdict == VERDICT_ALLOW:
            np_lookups = n
            break
    if ep.ingress_tiered:
        # the tier profile's lookups, then NetworkPolicy's where it decided (Admin passed)
        np_decided = v.reason in (
            verdict_model.ALLOW_POLICY,
            verdict_model.DROP_POLICY,
            verdict_model.ALLOW_AUDIT,
        )
        # (lib/policy.h vg_tiers_lookup: a pod peer's namespace identity is one more)
        tier_lookups = len(levels) + (1 if ns_ident else 0)
        return v.reason, tier_lookups + (np_lookups if np_decided else 0), True
    return v.reason, np_lookups, False


def desired_for(s: TierSettings, cnps: int) -> tuple[NodeDesired, dict[str, Any]]:
    t0 = time.perf_counter()
    c, cluster_policies = synth_cnp.tiered_cluster(s.networkpolicies, s.ipcache, cnps)
    cluster = cluster_from_objects(c.namespaces, c.pods, c.policies, c.nodes, cluster_policies)
    if cluster.errors:
        raise RuntimeError(f"synthetic cluster has errors: {cluster.errors[:3]}")
    desired = compute.compute(cluster, synth_cnp.MEASURED_NODE)
    reason, lookups, tiered = policy_lookups(desired)
    ep = desired.endpoints[SERVER]
    info = {
        "cluster_policies": cnps,
        "networkpolicies": len(c.policies),
        "ipcache_pods": s.ipcache,
        "tiered": tiered,
        "server_policy_entries": len(ep.entries),
        "tier_profile_entries": len(desired.tier_profiles.get(ep.tier_profile, {})),
        "cluster_policies_selecting_server": len(ep.cluster_policies),
        "reason": reason,
        "policy_lookups": lookups,
        "compute_s": round(time.perf_counter() - t0, 3),
    }
    return desired, info


@contextmanager
def prepared(s: TierSettings, pin_root: str) -> Iterator[list[Prepared]]:
    """One synced Datapath per count (throwaway pins under pin_root, removed on exit)."""
    preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        out = []
        for cnps in s.counts:
            desired, info = desired_for(s, cnps)
            node = f"bench-cnp{cnps}-{tag}"
            stack.callback(Datapath.remove_pins, node, pin_root)
            dp = Datapath(node=node, pin_root=pin_root)
            stack.callback(dp.close)
            t0 = time.perf_counter()
            dp.sync(desired, {SERVER: EP})
            info["sync_s"] = round(time.perf_counter() - t0, 3)
            info["policy_map_entries"] = dp.entry_counts()["vg_policy"]
            log(f"tiers: {cnps} ClusterNetworkPolicies synced: {info}")
            out.append(Prepared(cnps, dp, desired, info))
        yield out


def kernel_reason(dp: Datapath, frame: bytes) -> Reason:
    """The reason to_pod counted for one packet (the ingress counter that moved)."""
    retval, moved = counted(dp, "to_pod", frame, ifindex=EP)
    if len(moved) != 1 or moved[0][1] != DIR_INGRESS:
        raise RuntimeError(f"expected one ingress counter to move, got {moved} (retval {retval})")
    return moved[0][0]


def check(p: Prepared) -> None:
    """The kernel decides the measured new flow as the model does, and allows it."""
    p.dp.maps["vg_ct"].clear()
    got = kernel_reason(p.dp, tcp_frame(CLIENT_IP, SERVER_IP, 1023, PORT, SYN))
    if got.name != p.info["reason"] or got.name != "ALLOW_POLICY":
        raise RuntimeError(
            f"{p.cnps} ClusterNetworkPolicies: the kernel counted {got.name}, the model says "
            f"{p.info['reason']}; the benchmark expects ALLOW_POLICY"
        )
    p.info["kernel_reason"] = got.name


def measure(preps: list[Prepared], rounds: int, packets: int) -> dict[str, Any]:
    for p in preps:
        check(p)
    new_flows = min(packets, 5000)  # one test_run per packet: keep rounds short
    est = tcp_frame(CLIENT_IP, SERVER_IP, EST_SPORT, PORT, ACK)
    samples: dict[int, dict[str, list[float]]] = {p.cnps: {"est": [], "new": []} for p in preps}
    floor: list[float] = []
    sport = 1024
    with bench_programs(preps[0].dp) as fds:
        pass_fd = fds[PASSTHROUGH]
        for rnd in range(rounds):
            floor.append(per_packet_ns(pass_fd, lambda: run(pass_fd, est, ifindex=EP, repeat=packets)))
            for p in rotated(preps, rnd):
                to_pod = p.dp.prog_fd("to_pod")
                p.dp.maps["vg_ct"].clear()  # every new flow below misses, and the table never fills
                run(to_pod, tcp_frame(CLIENT_IP, SERVER_IP, EST_SPORT, PORT, SYN), ifindex=EP)
                repeats = functools.partial(run, to_pod, est, ifindex=EP, repeat=packets)
                samples[p.cnps]["est"].append(per_packet_ns(to_pod, repeats))
                frames = []
                for _ in range(new_flows):
                    sport = sport + 1 if sport < 65535 else 1024
                    sport += sport == EST_SPORT  # never the established flow's
                    frames.append(tcp_frame(CLIENT_IP, SERVER_IP, sport, PORT, SYN))

                def drive_new(fd: int = to_pod, fr: list[bytes] = frames) -> None:
                    for f in fr:
                        run(fd, f, ifindex=EP)

                samples[p.cnps]["new"].append(per_packet_ns(to_pod, drive_new))
    return summarize([p.info for p in preps], floor, samples, rounds, packets, new_flows)


def summarize(
    infos: list[dict[str, Any]],
    floor: list[float],
    samples: dict[int, dict[str, list[float]]],
    rounds: int,
    packets: int,
    new_flows: int,
) -> dict[str, Any]:
    """Medians per ClusterNetworkPolicy count (samples: count -> "est"/"new" -> ns per packet),
    with ratios to the pass-through floor and to the count 0 when it was measured."""
    pass_ns = median(floor)
    base = samples.get(0)  # the Datapath without ClusterNetworkPolicies, when measured
    base_est = median(base["est"]) if base else None
    base_new = median(base["new"]) if base else None
    rows = []
    for info in infos:
        got = samples[info["cluster_policies"]]
        e, n = median(got["est"]), median(got["new"])
        rows.append(
            {
                **info,
                "established_ns": round(e, 1),
                "new_flow_ns": round(n, 1),
                "established_ratio": ratio(e, pass_ns),
                "new_flow_ratio": ratio(n, pass_ns),
                "established_vs_no_cnp": ratio(e, base_est),
                "new_flow_vs_no_cnp": ratio(n, base_new),
                "samples": {k: [round(x, 1) for x in v] for k, v in got.items()},
            }
        )
    return {
        "passthrough_ns": round(pass_ns, 1),
        "passthrough_samples": [round(x, 1) for x in floor],
        "rounds": rounds,
        "packets_per_round": packets,
        "new_flows_per_round": new_flows,
        "new_flow_lookups": (
            "tiered: 1 endpoint hash + 1 ipcache LPM + up to 4 policy LPM in the tier profile "
            "(identity, CIDR identity, namespace identity, ANY), then NetworkPolicy's lookups where "
            "the Admin tier passes and it isolates (1-3): at most 7, whatever the number of "
            "policies, tiers and rules; "
            "NetworkPolicy only: 1 endpoint hash + 1 ipcache LPM + policy LPM lookups up to the "
            "first that allows (1-3)"
        ),
        "configs": rows,
    }


def run_all(s: TierSettings, pin_root: str) -> dict[str, Any]:
    with prepared(s, pin_root) as preps:
        doc = with_stats_enabled(lambda: measure(preps, s.rounds, s.packets))
    doc["settings"] = asdict(s)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TierSettings()
    ap.add_argument("--rounds", type=int, default=d.rounds)
    ap.add_argument("--packets", type=int, default=d.packets)
    ap.add_argument("--networkpolicies", type=int, default=d.networkpolicies)
    ap.add_argument("--ipcache", type=int, default=d.ipcache)
    ap.add_argument("--counts", default=",".join(map(str, d.counts)), help="ClusterNetworkPolicy counts")
    ap.add_argument("--pin-root", default="/sys/fs/bpf/vethguard")
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ap.add_argument(
        "--results",
        metavar="DIR",
        help="also write cluster-policy-cost.{json,md,png} (with machine and load)",
    )
    args = ap.parse_args(argv)
    counts = tuple(int(x) for x in args.counts.split(","))
    s = TierSettings(args.networkpolicies, args.ipcache, counts, args.rounds, args.packets)
    started = machine()
    doc: dict[str, Any] = {
        "benchmark": "cluster-policy-cost",
        "command": command_line("controller.bench.tier_cost", argv),
        "machine": started,
    }
    with logs_to_stderr():  # stdout: the results only
        doc |= run_all(s, args.pin_root)
    doc["machine"]["loadavg_end"] = loadavg()
    table = report.tiers_markdown(doc)
    if args.results:
        out = Path(args.results)
        report.write_results(out, "cluster-policy-cost", doc, table)
        try:
            report.tiers_plot(report.pyplot(), doc, out)
        except ImportError as exc:
            log(f"no plot ({exc}); install python3-matplotlib")
    print(json.dumps(doc, indent=2) if args.output == "json" else table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
