"""Per-packet cost of the node-interface programs (from_uplink, to_uplink) with and without a
Calico host endpoint (issue 16), from kernel BPF stats around BPF_PROG_TEST_RUN, as
controller.bench.cost measures the rest.

Two Datapaths (their own maps and programs, throwaway pins), synced from the real compiler's
output for one node with one pod and the guide's preDNAT policy `deny-nodeports` (Deny TCP and
UDP to 30000:32767, preDNAT, applyOnForward, Ingress), and the node address's NodePort 30080 as a
Service frontend:
  no host endpoint  the HostEndpoint left out: vg_hosteps and vg_failsafe empty, what every node
                    without host endpoints pays: from_uplink's anti-spoof vg_local lookup and one
                    vg_hosteps hash lookup, to_uplink's mark test and the same hash lookup
  host endpoint     a HostEndpoint selected by that policy only, on ifindex 1 (lo, the interface
                    every test packet is run on), with Calico's default failsafe ports
Cases (the packet, what it must be counted as before anything is measured):
  forwarded packets (outside <-> the pod, no local address), without a host endpoint: passed
  uncounted (TC_ACT_OK); with it, a SYN arriving passes ALLOW_HOSTEP untracked (the policy does
  not police it: no preDNAT match, not to the node, no applyOnForward policy), and a non-SYN
  segment of a flow the host endpoint never saw open passes ALLOW_CT without a conntrack entry
  (arriving and leaving); the SYNs' source port changes every packet (one test_run each, like
  the new flows of cost.py and tier_cost.py), and, as such a SYN creates no conntrack entry,
  the same SYN is also measured repeated (the same path without a fresh skb and cold caches);
  policed: a SYN to the NodePort on the node's address (DROP_PREDNAT), a SYN to the failsafe SSH
  port (ALLOW_FAILSAFE, tracked), a SYN the node sends to a failsafe port (the API server, 6443:
  ALLOW_FAILSAFE) and one it sends elsewhere (Calico's default deny of the node's own traffic
  with no egress policy: DROP_HOSTEP_END);
  the pass-through floor (bench_parts.c), driven both ways: repeats of one packet, and one
  test_run per packet (what the single-run cases compare with: a fresh skb and colder caches).
BPF_PROG_TEST_RUN always gives the skb a (dummy) socket, so to_uplink takes every test packet
for one the node sends (skb->sk): a forwarded SYN leaving through a host endpoint cannot be
driven here. Its path is a subset of the arriving forwarded SYN's (failsafe lookup, ipcache
lookup, ALLOW_HOSTEP; no preDNAT profile, no vg_local lookup).

Every round runs every case in rotated order (same run, alternating); figures are medians over
rounds, with ratios to the pass-through floor (repeats) and to the floor driven the same way.
After the rounds, the counters must have moved only under the checked reasons.

Run: python -m controller.bench.hostep_cost [--rounds 9] [--packets 20000] [--results docs/bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agent import preflight
from controller.bench import report
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
from controller.bench.cost import counted, drive, per_packet_ns, tcp_frame, with_stats_enabled
from controller.bench.testrun import run
from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import CalicoObjects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired, SvcFrontend
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath

EP = 1  # lo: the interface every test packet is run on, where the host endpoint is put
NODE = "bench-node"
NODE_IP, POD_IP, OUTSIDE = "10.244.1.1", "10.244.1.10", "203.0.113.5"
POD_PORT, NODE_PORT, SSH, API_SERVER, HTTPS = 8080, 30080, 22, 6443, 443
SYN, ACK = 0x02, 0x10
FIXED_SPORT, CHECK_SPORT = 61000, 61001  # outside the new flows' source ports
TC_ACT_OK, TC_ACT_SHOT = 0, 2
NO_HEP, HEP = "no host endpoint", "host endpoint"
RESULT = "hostep-cost"

HOST_ENDPOINT = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "HostEndpoint",
    "metadata": {"name": "bench-node-uplink", "labels": {"ibm.role": "worker_public"}},
    "spec": {"node": NODE, "interfaceName": "bench-uplink"},
}
DENY_NODEPORTS = {  # the guide's policy, projectcalico.org/v3 form
    "apiVersion": "projectcalico.org/v3",
    "kind": "GlobalNetworkPolicy",
    "metadata": {"name": "deny-nodeports"},
    "spec": {
        "order": 1100,
        "selector": "ibm.role in { 'worker_public', 'master_public' }",
        "preDNAT": True,
        "applyOnForward": True,
        "types": ["Ingress"],
        "ingress": [
            {"action": "Deny", "protocol": p, "source": {}, "destination": {"ports": ["30000:32767"]}}
            for p in ("TCP", "UDP")
        ],
    },
}
NAMESPACES = [{"metadata": {"name": "bench"}}]
PODS = [
    {
        "metadata": {"namespace": "bench", "name": "server", "labels": {"app": "server"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": POD_IP}]},
    }
]
NODES = [
    {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    }
]


Flow = tuple[str, str, int]  # source, destination, destination port (TCP)
FWD_IN, FWD_OUT = (OUTSIDE, POD_IP, POD_PORT), (POD_IP, OUTSIDE, POD_PORT)  # no local address
ONE, NEW = "repeats", "one run per packet"  # how a case's packets are driven


@dataclass(frozen=True)
class Case:
    key: str
    config: str  # NO_HEP / HEP; the floor runs with HEP's maps (it reads none)
    program: str  # from_uplink, to_uplink, or PASSTHROUGH
    what: str
    flow: Flow
    flags: int
    drive: str  # NEW: one test_run per packet, a new source port each; ONE: repeats of one packet
    reason: Reason | None  # the counted reason it must take; None: passes uncounted
    verdict: int = TC_ACT_OK

    @property
    def direction(self) -> int:
        return DIR_EGRESS if self.program == "to_uplink" else DIR_INGRESS

    def frame(self, sport: int) -> bytes:
        src, dst, dport = self.flow
        return tcp_frame(src, dst, sport, dport, self.flags)


R = Reason
CASES = (
    Case("passthrough", HEP, PASSTHROUGH, "pass-through program", FWD_IN, SYN, ONE, None),
    Case("passthrough_single", HEP, PASSTHROUGH, "pass-through program", FWD_IN, SYN, NEW, None),
    Case("plain_in", NO_HEP, "from_uplink", "forwarded SYN arriving", FWD_IN, SYN, ONE, None),
    Case("plain_out", NO_HEP, "to_uplink", "forwarded SYN leaving", FWD_OUT, SYN, ONE, None),
    Case(
        "hep_new_in",
        HEP,
        "from_uplink",
        "forwarded SYN arriving, new flows",
        FWD_IN,
        SYN,
        NEW,
        R.ALLOW_HOSTEP,
    ),
    # untracked, so repeating one SYN takes the same path: the figure without cold caches
    Case(
        "hep_syn_in", HEP, "from_uplink", "forwarded SYN arriving, one flow", FWD_IN, SYN, ONE, R.ALLOW_HOSTEP
    ),
    Case(
        "hep_ack_in", HEP, "from_uplink", "non-SYN arriving, no conntrack entry", FWD_IN, ACK, ONE, R.ALLOW_CT
    ),
    Case(
        "hep_ack_out", HEP, "to_uplink", "non-SYN leaving, no conntrack entry", FWD_OUT, ACK, ONE, R.ALLOW_CT
    ),
    Case(
        "hep_nodeport",
        HEP,
        "from_uplink",
        f"SYN to the node's NodePort {NODE_PORT}",
        (OUTSIDE, NODE_IP, NODE_PORT),
        SYN,
        ONE,
        R.DROP_PREDNAT,
        TC_ACT_SHOT,
    ),
    Case(
        "hep_failsafe_in",
        HEP,
        "from_uplink",
        f"SYN to the node's failsafe port {SSH}, new flows",
        (OUTSIDE, NODE_IP, SSH),
        SYN,
        NEW,
        R.ALLOW_FAILSAFE,
    ),
    Case(
        "hep_failsafe_out",
        HEP,
        "to_uplink",
        f"SYN the node sends to failsafe port {API_SERVER}, new flows",
        (NODE_IP, OUTSIDE, API_SERVER),
        SYN,
        NEW,
        R.ALLOW_FAILSAFE,
    ),
    Case(
        "hep_node_out",
        HEP,
        "to_uplink",
        f"SYN the node sends to port {HTTPS} (no egress policy)",
        (NODE_IP, OUTSIDE, HTTPS),
        SYN,
        ONE,
        R.DROP_HOSTEP_END,
        TC_ACT_SHOT,
    ),
)


class _BenchDatapath(Datapath):
    """A Datapath whose host endpoints are on ifindex 1 (lo), whatever their interfaceName: the
    real encoder writes vg_hosteps and vg_failsafe, and no interface of the machine is looked at."""

    def host_endpoint_interfaces(self, desired: NodeDesired) -> dict[str, list[int]]:
        return {name: [EP] for name in desired.host_endpoints}


def desired_for(config: str) -> NodeDesired:
    heps = [HOST_ENDPOINT] if config == HEP else []
    calico = CalicoObjects(global_policies=[DENY_NODEPORTS], host_endpoints=heps)
    cluster = cluster_from_objects(NAMESPACES, PODS, [], NODES, [], calico)
    if cluster.errors:
        raise RuntimeError(f"benchmark cluster has errors: {cluster.errors}")
    desired = compute(cluster, NODE)
    if (config == HEP) != bool(desired.host_endpoints) or desired.host_addresses != (NODE_IP,):
        raise RuntimeError(f"{config}: compiled host endpoints {list(desired.host_endpoints)}")
    # kube-proxy's NodePort on the node's address: a vg_svc frontend, so not "to the node itself"
    return dataclasses.replace(desired, frontends=frozenset({SvcFrontend(4, NODE_IP, 6, NODE_PORT)}))


@contextmanager
def prepared(pin_root: str) -> Iterator[dict[str, Datapath]]:
    """config -> its synced Datapath (throwaway pins under pin_root, removed on exit)."""
    preflight.use_kernel_headers()  # as the agent does: bcc compiles with the headers found
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        dps: dict[str, Datapath] = {}
        for n, config in enumerate((NO_HEP, HEP)):
            node = f"bench-hep{n}-{tag}"
            stack.callback(Datapath.remove_pins, node, pin_root)
            dp = _BenchDatapath(node=node, pin_root=pin_root)
            stack.callback(dp.close)
            dp.sync(desired_for(config), {})
            dps[config] = dp
        counts = dps[HEP].entry_counts()
        log(f"hostep: synced; host endpoint maps: {counts}")
        yield dps


def check(dps: Mapping[str, Datapath], case: Case) -> str:
    """The case's packet takes the path it names (its counted reason and tc verdict)."""
    if case.program == PASSTHROUGH:
        return "-"
    dp = dps[case.config]
    dp.maps["vg_ct"].clear()
    retval, moved = counted(dp, case.program, case.frame(CHECK_SPORT), ifindex=EP)
    want = [] if case.reason is None else [(case.reason, case.direction)]
    if retval != case.verdict or moved != want:
        raise RuntimeError(
            f"{case.config}, {case.program}, {case.what}: verdict {retval} counted {moved}; "
            f"the benchmark expects verdict {case.verdict} counted {want}"
        )
    dp.maps["vg_ct"].clear()
    return "uncounted" if case.reason is None else case.reason.name


def check_counters(dps: Mapping[str, Datapath], before: Mapping[str, dict[Any, Any]]) -> None:
    """Over the rounds, counters moved only under the checked reasons of each Datapath's cases."""
    for config, dp in dps.items():
        allowed = {(c.reason, c.direction) for c in CASES if c.config == config and c.reason is not None}
        moved = {(Reason(k[1]), k[2]) for k, v in dp.counters().items() if v != before[config].get(k)}
        if not moved <= allowed:
            raise RuntimeError(f"{config}: counters moved under {moved}, expected only {allowed}")


def measure(dps: Mapping[str, Datapath], rounds: int, packets: int) -> dict[str, Any]:
    new_flows = min(packets, 5000)  # one test_run per packet: keep rounds short
    checked = {c.key: check(dps, c) for c in CASES}
    before = {config: dp.counters() for config, dp in dps.items()}
    samples: dict[str, list[float]] = {c.key: [] for c in CASES}
    sports = itertools.cycle(range(1024, FIXED_SPORT))
    with bench_programs(dps[HEP]) as fds:
        for rnd in range(rounds):
            for case in rotated(CASES, rnd):
                dp = dps[case.config]
                fd = fds[PASSTHROUGH] if case.program == PASSTHROUGH else dp.prog_fd(case.program)
                go: Callable[[], object]
                if case.drive == NEW:
                    dp.maps["vg_ct"].clear()  # every SYN below is new, and the table never fills
                    frames = [case.frame(next(sports)) for _ in range(new_flows)]
                    go = drive(fd, frames, ifindex=EP)
                else:
                    go = functools.partial(run, fd, case.frame(FIXED_SPORT), ifindex=EP, repeat=packets)
                samples[case.key].append(per_packet_ns(fd, go))
    check_counters(dps, before)
    return summarize(samples, checked, rounds, packets, new_flows)


def summarize(
    samples: Mapping[str, Sequence[float]],
    checked: Mapping[str, str],
    rounds: int,
    packets: int,
    new_flows: int,
) -> dict[str, Any]:
    floor = {ONE: median(samples["passthrough"]), NEW: median(samples["passthrough_single"])}
    rows = []
    for c in CASES:
        ns = median(samples[c.key])
        rows.append(
            {
                "case": c.key,
                "what": c.what,
                "config": c.config,
                "program": c.program,
                "packet": f"TCP {c.flow[0]} -> {c.flow[1]}:{c.flow[2]} {'SYN' if c.flags == SYN else 'ACK'}",
                "drive": c.drive,
                "reason": checked[c.key],
                "verdict": "TC_ACT_SHOT" if c.verdict == TC_ACT_SHOT else "TC_ACT_OK",
                "ns": round(ns, 1),
                "ratio": ratio(ns, floor[ONE]),
                "ratio_same_drive": ratio(ns, floor[c.drive]),
                "samples": [round(x, 1) for x in samples[c.key]],
            }
        )
    return {
        "passthrough_ns": round(floor[ONE], 1),
        "passthrough_single_run_ns": round(floor[NEW], 1),
        "rounds": rounds,
        "packets_per_round": packets,
        "new_flows_per_round": new_flows,
        "host_endpoint": "a HostEndpoint on ifindex 1 selected by the guide's deny-nodeports only (preDNAT, "
        "applyOnForward, Ingress: Deny TCP and UDP to 30000:32767); Calico's default failsafe ports",
        "cases": rows,
    }


def run_all(pin_root: str, rounds: int, packets: int) -> dict[str, Any]:
    with prepared(pin_root) as dps:
        return with_stats_enabled(lambda: measure(dps, rounds, packets))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--packets", type=int, default=20000, help="per case per round (new flows: at most 5000)")
    ap.add_argument("--pin-root", default="/sys/fs/bpf/vethguard")
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ap.add_argument("--results", metavar="DIR", default="docs/bench", help=f"where {RESULT}.{{json,md}} go")
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {
        "benchmark": RESULT,
        "command": command_line("controller.bench.hostep_cost", argv),
        "machine": machine(),
    }
    with logs_to_stderr():  # stdout: the results only
        doc |= run_all(args.pin_root, args.rounds, args.packets)
    doc["machine"]["loadavg_end"] = loadavg()
    table = report.hostep_markdown(doc)
    report.write_results(Path(args.results), RESULT, doc, table)
    print(json.dumps(doc, indent=2) if args.output == "json" else table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
