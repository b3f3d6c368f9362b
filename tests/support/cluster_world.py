"""A small cluster that random events change, as informers would hold its raw objects (pods,
NetworkPolicies, namespaces, nodes and ClusterNetworkPolicies), and a summary of everything the
compiler hands out for it: what tests/unit/test_policy_incremental.py and
tests/unit/test_tier_profiles.py compare between incremental and full compilations."""

from __future__ import annotations

import random
from typing import Any

from controller.compiler import compute
from controller.compiler.model import ClusterState
from controller.compiler.policy import compile_cluster
from tests.support.k8s import K8s as K

NAMESPACES = ("a", "b", "c")
NODES = ("node-1", "node-2")
APPS = ("web", "api", "db")
TIERS = ("front", "back")
PortList = list[tuple[str | None, int, str]]
PORTS: tuple[PortList, ...] = (
    [("http", 80, "TCP")],
    [("http", 8080, "TCP")],
    [("db", 5432, "TCP"), ("http", 80, "TCP")],
    [],
)


class World:
    """Raw objects as informers hold them: an unchanged object is the same dict next time."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.rv = 0
        self.namespaces: dict[str, dict[str, Any]] = {n: self._stamp(K.ns(n, team=n)) for n in NAMESPACES}
        self.nodes: dict[str, dict[str, Any]] = {
            "node-1": self._stamp(K.node("node-1", "192.168.0.1", labels={"role": "a"})),
            "node-2": self._stamp(K.node("node-2", "192.168.0.2", labels={"role": "b"})),
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.cnps: dict[str, dict[str, Any]] = {}
        for i in range(8):
            self.add_pod(f"p{i}")
        for i in range(3):
            self.add_policy(f"n{i}")
        if rnd.random() < 0.7:
            self.add_cnp("c0")

    def _stamp(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        meta = raw["metadata"]
        meta["resourceVersion"] = str(self.rv)
        meta["uid"] = f"{meta.get('namespace', '')}/{meta['name']}"
        return raw

    def ip(self) -> str:
        return f"10.0.{self.rnd.randrange(2)}.{self.rnd.randrange(1, 12)}"

    def add_pod(self, name: str) -> None:
        r = self.rnd
        key = f"{r.choice(NAMESPACES)}/{name}"
        labels = {"app": r.choice(APPS)}
        if r.random() < 0.5:
            labels["tier"] = r.choice(TIERS)
        ips = [self.ip()] if r.random() < 0.9 else []
        if ips and r.random() < 0.3:
            ips.append(f"fd00::{r.randrange(1, 12):x}")
        phase = "Succeeded" if r.random() < 0.1 else "Running"
        pod = K.pod(
            key, labels, ips, r.choice(NODES), r.choice(PORTS), host_network=r.random() < 0.05, phase=phase
        )
        self.pods[key] = self._stamp(pod)

    def change_pod(self) -> None:
        r = self.rnd
        key = r.choice(sorted(self.pods))
        old = self.pods[key]
        meta = old["metadata"]
        labels = dict(meta["labels"])
        what = r.randrange(4)
        if what == 0:
            labels["app"] = r.choice(APPS)
        elif what == 1:
            labels.pop("tier", None) if "tier" in labels else labels.update(tier=r.choice(TIERS))
        ips = [i["ip"] for i in old["status"].get("podIPs", [])]
        if what == 2:
            ips = [self.ip()]
        node = old["spec"].get("nodeName")
        if what == 3:
            node = r.choice(NODES)
        ports = [
            (c.get("name"), c["containerPort"], c["protocol"]) for c in old["spec"]["containers"][0]["ports"]
        ]
        if r.random() < 0.2:
            ports = r.choice(PORTS)
        phase = "Failed" if r.random() < 0.05 else old["status"]["phase"]
        self.pods[key] = self._stamp(
            K.pod(key, labels, ips, node, ports, old["spec"].get("hostNetwork", False), phase)
        )

    def policy_spec(self) -> dict[str, Any]:
        r = self.rnd
        selector: dict[str, Any] = {} if r.random() < 0.3 else {"matchLabels": {"app": r.choice(APPS)}}
        peers: list[dict[str, Any]] = []
        for _ in range(r.randrange(3)):
            kind = r.randrange(4)
            if kind == 0:
                peers.append({"podSelector": {"matchLabels": {"tier": r.choice(TIERS)}}})
            elif kind == 1:
                peers.append(
                    {
                        "namespaceSelector": {"matchLabels": {"team": r.choice(NAMESPACES)}},
                        "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                    }
                )
            elif kind == 2:
                peers.append({"namespaceSelector": {}})
            else:
                block: dict[str, Any] = {"cidr": f"10.0.{r.randrange(2)}.0/24"}
                if r.random() < 0.5:
                    block["except"] = [f"10.0.{block['cidr'].split('.')[2]}.{r.randrange(1, 12)}/32"]
                peers.append({"ipBlock": block})
        ports: list[dict[str, Any]] = []
        if r.random() < 0.6:
            ports.append({"port": r.choice(["http", "db", 80, 443])})
        if r.random() < 0.1:
            ports.append({"port": 80, "endPort": 10})  # invalid: the rule is dropped, an error kept
        rule: dict[str, Any] = {"ports": ports} if ports else {}
        direction = r.choice(["ingress", "egress", "both"])
        spec: dict[str, Any] = {"podSelector": selector}
        if direction in ("ingress", "both"):
            spec["ingress"] = [{**rule, "from": peers}] if peers else [rule]
        if direction in ("egress", "both"):
            spec["egress"] = [{**rule, "to": peers}] if peers else [rule]
        spec["policyTypes"] = {"ingress": ["Ingress"], "egress": ["Egress"], "both": ["Ingress", "Egress"]}[
            direction
        ]
        return spec

    def add_policy(self, name: str) -> None:
        key = f"{self.rnd.choice(NAMESPACES)}/{name}"
        pol = K.policy(key, self.policy_spec())
        if self.rnd.random() < 0.2:
            pol["metadata"]["annotations"] = {"vethguard.dev/audit": "true"}
        self.policies[key] = self._stamp(pol)

    def cnp_rule(self, egress: bool) -> dict[str, Any]:
        r = self.rnd
        kinds = ["namespaces", "pods", "networks", "nodes"] if egress else ["namespaces", "pods"]
        peers: list[dict[str, Any]] = []
        for _ in range(r.randrange(1, 3)):
            kind = r.choice(kinds)
            if kind == "namespaces":
                peers.append({"namespaces": {"matchLabels": {"team": r.choice(NAMESPACES)}}})
            elif kind == "pods":
                pods = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": r.choice(APPS)}}}
                peers.append({"pods": pods})
            elif kind == "networks":
                peers.append({"networks": [r.choice(["10.0.0.0/24", "10.0.1.8/29", "192.168.0.0/16"])]})
            else:
                peers.append({"nodes": {"matchLabels": {"role": r.choice("ab")}}})
        rule: dict[str, Any] = {
            "action": r.choice(["Accept", "Deny", "Pass"]),
            ("to" if egress else "from"): peers,
        }
        if r.random() < 0.5:
            named = r.random() < 0.3 and all(next(iter(p)) in ("namespaces", "pods") for p in peers)
            port: dict[str, Any] = (
                {"destinationNamedPort": r.choice(["http", "db"])}
                if named
                else {
                    "tcp": {
                        "destinationPort": r.choice([{"number": 80}, {"range": {"start": 80, "end": 5432}}])
                    }
                }
            )
            rule["protocols"] = [port]
        return rule

    def add_cnp(self, name: str) -> None:
        r = self.rnd
        subject: dict[str, Any] = (
            {"namespaces": {"matchLabels": {"team": r.choice(NAMESPACES)}}}
            if r.random() < 0.5
            else {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": r.choice(APPS)}}}}
        )
        spec: dict[str, Any] = {
            "tier": r.choice(["Admin", "Baseline"]),
            "priority": r.randrange(3),
            "subject": subject,
        }
        if r.random() < 0.7:
            spec["ingress"] = [self.cnp_rule(False) for _ in range(r.randrange(1, 3))]
        if r.random() < 0.7:
            spec["egress"] = [self.cnp_rule(True) for _ in range(r.randrange(1, 3))]
        raw = {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.cnps[name] = self._stamp(raw)

    def step(self, n: int) -> str:
        r = self.rnd
        choice = r.choices(
            [
                "pod+",
                "pod-",
                "pod~",
                "pods~",
                "pol+",
                "pol-",
                "pol~",
                "ns~",
                "node~",
                "pod+pol",
                "cnp+",
                "cnp-",
            ],
            weights=[4, 3, 6, 2, 3, 2, 2, 1, 1, 1, 1, 1],
        )[0]
        if choice == "pod+":
            self.add_pod(f"q{n}")
        elif choice == "pod-" and self.pods:
            del self.pods[r.choice(sorted(self.pods))]
        elif choice == "pod~" and self.pods:
            self.change_pod()
        elif choice == "pods~" and self.pods:
            for _ in range(3):
                self.change_pod()
        elif choice == "pol+":
            self.add_policy(f"m{n}")
        elif choice == "pol-" and self.policies:
            del self.policies[r.choice(sorted(self.policies))]
        elif choice == "pol~" and self.policies:
            key = r.choice(sorted(self.policies))
            self.policies[key] = self._stamp(K.policy(key, self.policy_spec()))
        elif choice == "ns~":
            name = r.choice(NAMESPACES)
            self.namespaces[name] = self._stamp(K.ns(name, team=r.choice(NAMESPACES)))
        elif choice == "node~":
            # (sometimes an address a pod may also have: the pod's entry wins while it exists)
            self.nodes["node-2"] = self._stamp(K.node("node-2", r.choice(["192.168.0.2", "10.0.1.11"])))
        elif choice == "pod+pol":
            self.add_pod(f"q{n}")
            self.add_policy(f"m{n}")
        elif choice == "cnp+":
            self.add_cnp(r.choice(["c0", "c1", f"c{n}"]))  # (a new one, or a changed one)
        elif choice == "cnp-" and self.cnps:
            del self.cnps[r.choice(sorted(self.cnps))]
        return choice

    def objects(self) -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]:
        pods = list(self.pods.values())
        if self.rnd.random() < 0.15:  # a source that orders its objects otherwise, now and then
            pods = pods[::-1] if self.rnd.random() < 0.5 else pods[3:] + pods[:3]
        return (
            list(self.namespaces.values()),
            pods,
            list(self.policies.values()),
            list(self.nodes.values()),
            list(self.cnps.values()),
        )


def summary(state: ClusterState) -> dict[str, Any]:
    """Everything the compiler hands out, for comparison."""
    c = compile_cluster(state)
    return {
        "nodes": {n: compute.compute(state, n) for n in NODES},
        "pod_identity": dict(c.pod_identity),
        "selected": {k: v for k, v in c.selected.items()},
        "policies_for_identity": {i: [p.key for p in ps] for i, ps in c.policies_for_identity.items() if ps},
        "pods_by_identity": {i: [p.key for p in ps] for i, ps in c.pods_by_identity.items()},
        "identity_labels": {i: dict(v) for i, v in c.identity_labels.items()},
        "identities": dict(c.identities),
        "ns_index": {
            ns: (set(i.all), {k: set(v) for k, v in i.by_kv.items()}) for ns, i in c.ns_index.items()
        },
        "index": (set(c.index.all), {k: set(v) for k, v in c.index.by_kv.items()}, c.index.by_key),
        "rules": dict(c.rules),
        "tier_rules": dict(c.tiers.rules),
        "cidr_identity": dict(c.cidr_identity),
    }
