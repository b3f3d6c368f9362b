"""Synthetic ClusterNetworkPolicies beside the datapath benchmark's NetworkPolicies (pure,
deterministic): what `vethguard bench datapath` measures the tiers' per-packet cost with.

tiered_cluster(networkpolicies, ipcache, cnps) is synth.datapath_cluster's measured pair
(bench/client -> bench/server on the iperf3 port) with `networkpolicies` NetworkPolicies
selecting the server (the allowing one and synthetic ones of RULES_PER_POLICY rules each) and
`ipcache` synthetic pods, plus `cnps` ClusterNetworkPolicies, a mix built by cnp(i):
  * tiers: every fourth policy Baseline, the rest Admin; priorities i % 40, so equal priorities
    are broken by name;
  * subjects: the bench namespace (`namespaces`), the server pod (`pods`), or the bench and
    synth namespaces together: all but one in ten select the server, so its ingress (and egress)
    is decided by the tiers (EP_F_*_TIERED);
  * ingress rules (two per policy) cycle through Accept / Deny / Pass with `namespaces` and
    `pods` peers (single synthetic groups, a monitoring namespace, every namespace) and
    protocols as a port, a port range, a named port or none;
  * egress rules (every other policy) with `networks` (the pod range 10.244.0.0/16 among them,
    so pod addresses carry a CIDR identity and the server's ingress makes all three policy
    lookups), `nodes` (kubelet port) and `pods` peers.
The measured flow meets Admin Pass rules (bench namespace, ports 5000-5999) and a Baseline Deny
of every namespace, but no Admin Accept or Deny: it is decided by the allowing NetworkPolicy
(ALLOW_POLICY), as without ClusterNetworkPolicies, so the two measurements differ only by the
tiers' lookups. Broad peers (every namespace, the synth namespace) only come with a single port
or no protocols, so the server's policy entries stay well inside the map.
"""

from __future__ import annotations

from typing import Any

from controller.bench import synth
from controller.compiler import cnp as cnp_api

Raw = dict[str, Any]

MONITORING_NS = "monitoring"
MEASURED_NODE = "node-1"
METRICS_PORT = 9100  # the server's named port "metrics" (destinationNamedPort rules)
# Peer pods outside the synthetic pods' range and the lab's 10.244.0.0/16.
PEER_PODS = (
    (MONITORING_NS, "prometheus", {"app": "prometheus"}, "10.102.0.1"),
    (MONITORING_NS, "scraper", {"app": "scraper"}, "10.102.0.2"),
)
NODE_IPS = {MEASURED_NODE: "172.20.0.1", synth.SYNTH_NODE: "172.20.0.2"}
PAIRS = [("client", "10.244.1.2", "server", "10.244.1.3")]


def cluster_network_policy(name: str, tier: str, priority: int, subject: Raw, **rules: list[Raw]) -> Raw:
    return {
        "apiVersion": cnp_api.API_VERSION,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": priority, "subject": subject, **rules},
    }


def _ns(name: str) -> Raw:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def _tcp(start: int, end: int | None = None) -> Raw:
    port: Raw = {"number": start} if end is None else {"range": {"start": start, "end": end}}
    return {"tcp": {"destinationPort": port}}


def _group(i: int, groups: int) -> Raw:
    """A `pods` peer: one synthetic group (one identity)."""
    return {
        "pods": {
            "namespaceSelector": _ns(synth.SYNTH_NS),
            "podSelector": {"matchLabels": {"grp": f"g-{i % groups}"}},
        }
    }


def _subject(i: int) -> Raw:
    kind = i % 10
    if kind == 9:  # selects only synthetic pods (none on the measured node)
        return {"namespaces": _ns(synth.SYNTH_NS)}
    if kind % 3 == 0:
        return {"namespaces": _ns(synth.BENCH_NS)}
    if kind % 3 == 1:
        return {
            "pods": {
                "namespaceSelector": _ns(synth.BENCH_NS),
                "podSelector": {"matchLabels": {"role": "server"}},
            }
        }
    expr = {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": [synth.BENCH_NS, synth.SYNTH_NS],
    }
    return {"namespaces": {"matchExpressions": [expr]}}


def _ingress(i: int, j: int, groups: int) -> Raw:
    """Ingress rule j of policy i (two per policy; the kind cycles over both indexes)."""
    kind = (2 * i + j) % 6
    name = f"in-{j}"
    if kind == 0:  # deny a synthetic group on a port range
        base = 30000 + (i * 37) % 20000
        return {
            "name": name,
            "action": "Deny",
            "from": [_group(i, groups)],
            "protocols": [_tcp(base, base + 99)],
        }
    if kind == 1:  # monitoring scrapes the named metrics port
        peer = {"namespaces": _ns(MONITORING_NS)}
        return {
            "name": name,
            "action": "Accept",
            "from": [peer],
            "protocols": [{"destinationNamedPort": "metrics"}],
        }
    if kind == 2:  # hand the bench namespace's application ports to NetworkPolicy
        return {
            "name": name,
            "action": "Pass",
            "from": [{"namespaces": _ns(synth.BENCH_NS)}],
            "protocols": [_tcp(5000, 5999)],
        }
    if kind == 3:  # deny a few synthetic groups on every port
        return {"name": name, "action": "Deny", "from": [_group(i + k, groups) for k in range(3)]}
    if kind == 4:  # accept one pod of the monitoring namespace on one port
        peer = {
            "pods": {
                "namespaceSelector": _ns(MONITORING_NS),
                "podSelector": {"matchLabels": {"app": "prometheus"}},
            }
        }
        return {"name": name, "action": "Accept", "from": [peer], "protocols": [_tcp(8080 + i % 10)]}
    # every namespace on one port: Deny in Baseline (a default the NetworkPolicy overrides), Pass in Admin
    action = "Deny" if i % 4 == 3 else "Pass"
    return {
        "name": name,
        "action": action,
        "from": [{"namespaces": {}}],
        "protocols": [_tcp(9000 + 443 * (i % 2))],
    }


def _egress(i: int, groups: int) -> list[Raw]:
    return [
        {
            "name": "pods-https",
            "action": "Accept",
            "to": [{"networks": ["10.244.0.0/16"]}],
            "protocols": [_tcp(443)],
        },
        {
            "name": "block-range",
            "action": "Deny",
            "to": [{"networks": [f"192.168.{i % 256}.0/24", f"10.{i % 200}.0.0/16"]}],
        },
        {
            "name": "kubelet",
            "action": "Deny",
            "to": [{"nodes": {"matchLabels": {"kubernetes.io/hostname": synth.SYNTH_NODE}}}],
            "protocols": [_tcp(10250)],
        },
        {"name": "to-group", "action": "Pass", "to": [_group(i, groups)], "protocols": [_tcp(8000, 8999)]},
    ]


def cnp(i: int, groups: int) -> Raw:
    """ClusterNetworkPolicy i of the mix (module docstring); `groups`: synthetic groups in use."""
    tier = "Baseline" if i % 4 == 3 else "Admin"
    rules: dict[str, list[Raw]] = {"ingress": [_ingress(i, j, groups) for j in range(2)]}
    if i % 2 == 0:
        rules["egress"] = _egress(i, groups)
    return cluster_network_policy(f"cnp-{i:03d}", tier, i % 40, _subject(i), **rules)


def baseline_default_deny() -> Raw:
    """The cluster's default: deny ingress from every namespace, where no NetworkPolicy isolates."""
    rule = {"name": "default-deny", "action": "Deny", "from": [{"namespaces": {}}]}
    return cluster_network_policy(
        "zz-baseline-default-deny", "Baseline", 1000, {"namespaces": {}}, ingress=[rule]
    )


def cluster_policies(count: int, groups: int) -> list[Raw]:
    """`count` ClusterNetworkPolicies: count - 1 of the mix plus the Baseline default deny."""
    if count <= 0:
        return []
    return [cnp(i, groups) for i in range(count - 1)] + [baseline_default_deny()]


def node(name: str) -> Raw:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IPS[name]}]},
    }


def rules_for(networkpolicies: int) -> int:
    """Synthetic rules so that datapath_cluster makes `networkpolicies` NetworkPolicies in all
    (synthetic ones of RULES_PER_POLICY rules, plus the one allowing the client)."""
    return max(0, networkpolicies - 1) * synth.RULES_PER_POLICY


def tiered_cluster(networkpolicies: int, ipcache: int, cnps: int) -> tuple[synth.Cluster, list[Raw]]:
    """(the cluster, its ClusterNetworkPolicies): the measured pair on MEASURED_NODE."""
    rules = rules_for(networkpolicies)
    placement = [("client", MEASURED_NODE), ("server", MEASURED_NODE)]
    c = synth.datapath_cluster(rules, ipcache, PAIRS, placement)
    server = next(p for p in c.pods if p["metadata"]["name"] == "server")
    server["spec"]["containers"][0]["ports"] = [
        {"containerPort": METRICS_PORT, "protocol": "TCP", "name": "metrics"}
    ]
    c.namespaces.append(synth.namespace(MONITORING_NS, {"team": "monitoring"}))
    c.pods += [synth.pod(ns, name, labels, ip, synth.SYNTH_NODE) for ns, name, labels, ip in PEER_PODS]
    c.nodes = [node(MEASURED_NODE), node(synth.SYNTH_NODE)]
    return c, cluster_policies(cnps, max(1, rules))


# --- the control-plane benchmark's cluster ---------------------------------------------------
#
# cp_cnp(i, namespaces) are ClusterNetworkPolicies for synth.control_plane_cluster (namespaces
# ns-NNN labelled team/env, pods labelled app/tier with the named ports http and db): what a
# platform team would write, in five shapes chosen by i % 5 (so any prefix mixes them):
#   0 Admin, subject the pods of one tier in every namespace: Deny from dev namespaces to the
#     database port, Accept from the api tier on the named port `db`;
#   1 Admin, subject one team's namespaces: Pass the application ports (a range) to
#     NetworkPolicy from every namespace, Deny egress to two networks, Deny egress to every
#     node's kubelet port;
#   2 Admin, subject one app's pods (pods: every namespace): Accept from three named
#     namespaces on the named port `http`, Pass egress to the pod range on 443;
#   3 Admin, subject the dev namespaces: Deny ingress from prod namespaces (every port);
#   4 Baseline, subject one team's namespaces: Accept from the team's own namespaces, Deny from
#     every namespace (the default NetworkPolicy overrides).
# Priorities i % 50 (equal ones are broken by name).


def _labels(**labels: str) -> Raw:
    return {"matchLabels": labels}


def _cp_subject(i: int) -> Raw:
    kind = i % 5
    team = _labels(team=f"team-{(i // 5) % synth.TEAMS}")
    if kind == 0:
        return {"pods": {"namespaceSelector": {}, "podSelector": _labels(tier=synth.TIERS[(i // 5) % 3])}}
    if kind == 2:
        return {"pods": {"namespaceSelector": {}, "podSelector": _labels(app=f"app-{i % synth.APPS}")}}
    if kind == 3:
        return {"namespaces": _labels(env="dev")}
    return {"namespaces": team}


def _cp_rules(i: int, namespaces: int) -> dict[str, list[Raw]]:
    kind = i % 5
    if kind == 0:
        api = {"pods": {"namespaceSelector": {}, "podSelector": _labels(tier="api")}}
        return {
            "ingress": [
                {"name": "no-dev-db", "action": "Deny", "from": [{"namespaces": _labels(env="dev")}]}
                | {"protocols": [_tcp(5432)]},
                {"name": "api-db", "action": "Accept", "from": [api]}
                | {"protocols": [{"destinationNamedPort": "db"}]},
            ]
        }
    if kind == 1:
        return {
            "ingress": [
                {
                    "name": "apps",
                    "action": "Pass",
                    "from": [{"namespaces": {}}],
                    "protocols": [_tcp(8000, 8999)],
                }
            ],
            "egress": [
                {
                    "name": "blocked",
                    "action": "Deny",
                    "to": [{"networks": [f"192.168.{i % 256}.0/24", f"10.{i % 200}.0.0/16"]}],
                },
                {"name": "kubelet", "action": "Deny", "to": [{"nodes": {}}], "protocols": [_tcp(10250)]},
            ],
        }
    if kind == 2:
        peers = [{"namespaces": _ns(f"ns-{(i + k) % namespaces:03d}")} for k in range(3)]
        return {
            "ingress": [
                {"name": "frontends", "action": "Accept", "from": peers}
                | {"protocols": [{"destinationNamedPort": "http"}]}
            ],
            "egress": [
                {"name": "pods-https", "action": "Pass", "to": [{"networks": ["10.100.0.0/16"]}]}
                | {"protocols": [_tcp(443)]}
            ],
        }
    if kind == 3:
        return {
            "ingress": [{"name": "no-prod", "action": "Deny", "from": [{"namespaces": _labels(env="prod")}]}]
        }
    team = _labels(team=f"team-{(i // 5) % synth.TEAMS}")
    return {
        "ingress": [
            {"name": "own-team", "action": "Accept", "from": [{"namespaces": team}]},
            {"name": "default-deny", "action": "Deny", "from": [{"namespaces": {}}]},
        ]
    }


def cp_cnp(i: int, namespaces: int) -> Raw:
    """ClusterNetworkPolicy i of the control-plane mix (above); `namespaces`: ns-NNN in use."""
    tier = "Baseline" if i % 5 == 4 else "Admin"
    return cluster_network_policy(f"cp-cnp-{i:04d}", tier, i % 50, _cp_subject(i), **_cp_rules(i, namespaces))


def control_plane_cluster(pods: int, namespaces: int, policies: int, cnps: int) -> synth.Cluster:
    """synth.control_plane_cluster with `cnps` ClusterNetworkPolicies of the mix above."""
    c = synth.control_plane_cluster(pods, namespaces, policies)
    c.cluster_policies = [cp_cnp(i, namespaces) for i in range(cnps)]
    return c
