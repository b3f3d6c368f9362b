"""What holding DNS answers costs a pod that domainNames rules police (issue 20): the DNS round
trip of such a pod beside one of a pod no such rule selects, in one lab, alternating rounds.

    python -m controller.bench.dns_answer_cost [--rounds 5] [--queries 200] [--results DIR]

A one-node lab with cluster DNS (`lab up --dns`) and agents; `payments/client` is the subject of
an Accept rule with `domainNames` (its answers are held by to_pod, learned and released by the
agent's DNS thread: docs/INTERNALS.md "Egress by domain name"), `free/client` of nothing. Each
round, each pod (in turn, the order alternating) sends `queries` A queries for a name the lab's
dnsmasq answers, one at a time over UDP to the kube-dns Service, and times each answer. Prints
p50/p90/p99 per pod over every round and the added median; asserts nothing. The lab is removed
at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from controller.bench.common import (
    command_line,
    lab_cli,
    lab_name,
    log,
    machine,
    percentile,
    results_dir,
    write_json,
)
from controller.lab.kubeproxy import DNS_CLUSTER_IP

NAME = "api.stripe.example"
PODS = ("payments/client", "free/client")

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: payments}
---
apiVersion: v1
kind: Namespace
metadata: {name: free}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: payments}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: free}
spec: {containers: [{name: c}]}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: stripe}
spec: {ip: 203.0.113.5, ports: [{port: 443}], names: [api.stripe.example]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: payments-egress}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: payments}}}
  egress:
  - {name: stripe, action: Accept, to: [{domainNames: [api.stripe.example]}]}
"""

# In a pod: `count` queries, one at a time, each timed from send to its answer (microseconds).
QUERIES = """
import json, random, socket, struct, sys, time
server, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((server, 53))
out = []
for _ in range(count):
    qid = random.randrange(65536)
    msg = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    t0 = time.perf_counter_ns()
    s.send(msg)
    while True:
        reply = s.recv(4096)
        if reply[:2] == msg[:2]:
            break
    out.append((time.perf_counter_ns() - t0) / 1000)
print(json.dumps(out))
"""


def round_trips(lab: str, pod: str, count: int) -> list[float]:
    out = lab_cli(
        "exec", "--name", lab, pod, "--", sys.executable, "-c", QUERIES, DNS_CLUSTER_IP, NAME, str(count)
    )
    values: list[float] = json.loads(out)
    return values


def summary(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}_us": round(percentile(values, q), 1) for q in (50, 90, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.bench.dns_answer_cost",
        description="DNS round trips of a pod whose answers are held for domainNames and of one not.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per pod (default 5)")
    parser.add_argument("--queries", type=int, default=200, help="queries per pod per round (default 200)")
    parser.add_argument("--results", help="write dns-answer-cost.json here (default: print only)")
    args = parser.parse_args(argv)
    lab = lab_name("dns")
    samples: dict[str, list[float]] = {p: [] for p in PODS}
    rounds: list[dict[str, Any]] = []
    log(f"lab {lab}: up with cluster DNS and agents")
    lab_cli("up", "--name", lab, "--dns", "-f", "-", stdin=MODEL, timeout=600)
    try:
        for pod in PODS:  # warm-up: the resolver's first packets, the agent's first batch
            round_trips(lab, pod, 20)
        for r in range(args.rounds):
            for pod in PODS if r % 2 == 0 else PODS[::-1]:
                got = round_trips(lab, pod, args.queries)
                samples[pod] += got
                rounds.append({"round": r, "pod": pod, **summary(got)})
                log(f"round {r} {pod}: {summary(got)}")
    finally:
        lab_cli("down", "--name", lab, timeout=300)
    held, free = (summary(samples[p]) for p in PODS)
    doc = {
        "command": command_line("controller.bench.dns_answer_cost", argv),
        "machine": machine(),
        "queries_per_round": args.queries,
        "rounds": rounds,
        "held": held,
        "not_held": free,
        "added_p50_us": round(held["p50_us"] - free["p50_us"], 1),
    }
    for label, s in (("answers held (payments/client)", held), ("not held (free/client)", free)):
        print(f"{label}: p50 {s['p50_us']} us, p90 {s['p90_us']} us, p99 {s['p99_us']} us")
    print(f"added per answer (p50): {doc['added_p50_us']} us")
    if args.results:
        write_json(results_dir(args.results, "dns-answer-cost") / "dns-answer-cost.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
