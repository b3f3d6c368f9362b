"""Synthetic clusters for the benchmarks, as raw Kubernetes API dicts (pure, deterministic).

Two shapes:
  control_plane_cluster(pods, namespaces, policies, pods_per_node)
      a "typical" cluster: pods spread over namespaces and nodes, labels from small
      vocabularies, and a mix of policy kinds (pod selectors, namespace+pod selectors, named
      ports, ipBlock with except, endPort ranges, default deny, egress).
  datapath_cluster(rules, ipcache, client_ip, server_ip)
      one measured pair (bench/client -> bench/server) allowed by one policy, plus `rules`
      synthetic ingress rules on the server (one port each, from synthetic pods the client never
      matches) and `ipcache` synthetic pods on a node that is not in the lab, so the measured
      packets meet a policy map and an ipcache of that size but their verdict stays the same.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Raw = dict[str, Any]

BENCH_NS = "bench"
SYNTH_NS = "synth"
SYNTH_NODE = "synth-node"
# Synthetic pod addresses: never routed anywhere (map/ipset entries only), outside the lab's
# 10.244.0.0/16 and the documentation ranges external hosts use.
SYNTH_POD_BASE = ipaddress.IPv4Address("10.100.0.0")
SYNTH_NODE_BASE = ipaddress.IPv4Address("172.20.0.0")
RULES_PER_POLICY = 10  # synthetic rules per synthetic policy (kube-router: one chain per policy)
IPERF_PORT = 5201
SOCKPERF_PORT = 11111
SYNTH_PORT_BASE = 20000


@dataclass
class Cluster:
    namespaces: list[Raw] = field(default_factory=list)
    pods: list[Raw] = field(default_factory=list)
    policies: list[Raw] = field(default_factory=list)
    nodes: list[Raw] = field(default_factory=list)
    cluster_policies: list[Raw] = field(default_factory=list)


def namespace(name: str, labels: dict[str, str]) -> Raw:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}},
    }


def pod(
    ns: str, name: str, labels: dict[str, str], ip: str, node: str, ports: list[Raw] | None = None
) -> Raw:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{ns}-{name}"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def node(name: str, ip: str) -> Raw:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def policy(ns: str, name: str, spec: Raw) -> Raw:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def synth_ip(i: int) -> str:
    return str(SYNTH_POD_BASE + i)


# --- control plane ---------------------------------------------------------------------------

APPS = 40
TIERS = ("web", "api", "db")
TEAMS = 25
POD_PORTS = [
    {"containerPort": 8080, "protocol": "TCP", "name": "http"},
    {"containerPort": 5432, "protocol": "TCP", "name": "db"},
]


def cp_node_name(i: int) -> str:
    return f"node-{i + 1}"


def cp_pod(i: int, namespaces: int, nodes: int, app_offset: int = 0) -> Raw:
    return pod(
        f"ns-{i % namespaces:03d}",
        f"pod-{i}",
        {"app": f"app-{(i + app_offset) % APPS}", "tier": TIERS[i % len(TIERS)]},
        synth_ip(i),
        cp_node_name(i % nodes),
        POD_PORTS,
    )


def cp_policy(j: int, namespaces: int) -> Raw:
    """One of five policy shapes, chosen by j (so any prefix of the sequence mixes them)."""
    ns = f"ns-{j % namespaces:03d}"
    app = {"app": f"app-{j % APPS}"}
    kind = j % 5
    if kind == 0:  # same-namespace pod selector, numeric port
        spec: Raw = {
            "podSelector": {"matchLabels": app},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 8080}]}
            ],
        }
    elif kind == 1:  # namespace + pod selector, named port
        spec = {
            "podSelector": {"matchLabels": app},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": f"team-{j % TEAMS}"}},
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "tier", "operator": "In", "values": ["api", "web"]}
                                ]
                            },
                        }
                    ],
                    "ports": [{"port": "http"}],
                }
            ],
        }
    elif kind == 2:  # egress to an ipBlock with except + to pods of a tier
        spec = {
            "podSelector": {"matchLabels": app},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.{j % 200}.0.0/16"]}}],
                    "ports": [{"port": 443}],
                },
                {"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": "db"}]},
            ],
        }
    elif kind == 3:  # default deny ingress for the namespace
        spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    else:  # ipBlock source with a port range
        spec = {
            "podSelector": {"matchLabels": {"tier": TIERS[j % len(TIERS)]}},
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": f"192.168.{j % 256}.0/24"}}],
                    "ports": [{"port": 30000, "endPort": 30000 + j % 1000}],
                }
            ],
        }
    return policy(ns, f"pol-{j}", spec)


def control_plane_cluster(
    pods: int, namespaces: int = 500, policies: int = 1000, pods_per_node: int = 100
) -> Cluster:
    nodes = max(1, pods // pods_per_node)
    c = Cluster()
    c.namespaces = [
        namespace(f"ns-{i:03d}", {"team": f"team-{i % TEAMS}", "env": "prod" if i % 2 else "dev"})
        for i in range(namespaces)
    ]
    c.nodes = [node(cp_node_name(i), str(SYNTH_NODE_BASE + i + 1)) for i in range(nodes)]
    c.pods = [cp_pod(i, namespaces, nodes) for i in range(pods)]
    c.policies = [cp_policy(j, namespaces) for j in range(policies)]
    return c


# --- datapath ------------------------------------------------------------------------------


def synth_groups(rules: int, ipcache: int) -> Iterator[tuple[int, str]]:
    """(pod index, group label) of every synthetic pod: group g-(i mod rules)."""
    groups = max(1, rules)
    for i in range(ipcache):
        yield i, f"g-{i % groups}"


def synth_rule(i: int) -> Raw:
    """Synthetic ingress rule i: from synth pods of group g-i, to one port no measured flow uses."""
    return {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SYNTH_NS}},
                "podSelector": {"matchLabels": {"grp": f"g-{i}"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": SYNTH_PORT_BASE + i % 40000}],
    }


ALLOW_POLICY = "zz-allow-client"  # sorts last: iptables meets it after every synthetic policy


def datapath_cluster(
    rules: int, ipcache: int, pairs: list[tuple[str, str, str, str]], nodes: list[tuple[str, str]]
) -> Cluster:
    """pairs: (client pod, client ip, server pod, server ip) in namespace bench, with the node
    of each pod given by `nodes` as (pod name, node name). Every server is selected by the
    `rules` synthetic rules and by the one policy allowing clients on the measured ports."""
    node_of = dict(nodes)
    c = Cluster()
    c.namespaces = [namespace(BENCH_NS, {}), namespace(SYNTH_NS, {})]
    seen: set[str] = set()
    for client, cip, server, sip in pairs:
        for name, ip, role in ((client, cip, "client"), (server, sip, "server")):
            if name not in seen:
                seen.add(name)
                c.pods.append(pod(BENCH_NS, name, {"role": role}, ip, node_of[name]))
    c.pods += [
        pod(SYNTH_NS, f"s-{i}", {"grp": grp}, synth_ip(i), SYNTH_NODE)
        for i, grp in synth_groups(rules, ipcache)
    ]
    server_sel = {"matchLabels": {"role": "server"}}
    for p in range(0, rules, RULES_PER_POLICY):
        chunk = [synth_rule(i) for i in range(p, min(rules, p + RULES_PER_POLICY))]
        c.policies.append(
            policy(
                BENCH_NS, f"synth-{p // RULES_PER_POLICY:05d}", {"podSelector": server_sel, "ingress": chunk}
            )
        )
    allow = {
        "podSelector": server_sel,
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [
                    {"protocol": "TCP", "port": IPERF_PORT},
                    {"protocol": "UDP", "port": IPERF_PORT},  # the 64-byte datagram runs
                    {"protocol": "TCP", "port": SOCKPERF_PORT},
                ],
            }
        ],
    }
    c.policies.append(policy(BENCH_NS, ALLOW_POLICY, allow))
    return c
