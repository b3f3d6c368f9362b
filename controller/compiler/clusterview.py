"""The compiled view of a cluster that every debug command translates numbers with (pure).

Built from the raw API objects exactly as the agent builds its state
(ClusterState.from_objects -> compile_cluster -> node_desired), so identities, rule references
and CIDR identities here are the numbers the agents wrote into the maps (allocation is
deterministic in the set of objects).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import EMPTY_CALICO, CalicoObjects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired, RuleRef
from controller.compiler.frontends import frontends_of
from controller.compiler.model import ClusterState, NetworkPolicy, Pod
from controller.compiler.policy import CompiledCluster, compile_cluster
from controller.core.identities import DOMAIN_ID_MAX, DOMAIN_ID_MIN
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS

NS_CLASS_SHOWN = 3  # the members of a namespace class an identity's text names

DIRECTION_NAMES: Mapping[int, str] = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}


@dataclass(frozen=True)
class RawObjects:
    """Kubernetes API JSON of the kinds the agent watches, as listed at one resourceVersion."""

    namespaces: Sequence[dict[str, Any]] = ()
    pods: Sequence[dict[str, Any]] = ()
    policies: Sequence[dict[str, Any]] = ()
    nodes: Sequence[dict[str, Any]] = ()
    # agent kind name (controller.agent.kube_api.KINDS) -> digest of the listed objects
    # (controller.core.object_versions), for the kinds listed: compared with what agents realized
    digests: Mapping[str, str] = field(default_factory=dict)
    cluster_policies: Sequence[dict[str, Any]] = ()  # ClusterNetworkPolicy (none without the CRD)
    calico: CalicoObjects = EMPTY_CALICO  # Calico's projectcalico.org/v3 kinds (none without its API)
    warnings: Sequence[str] = ()  # what could not be listed, said once by the command
    # Services: only their frontends on each node (a host endpoint tells traffic to the node
    # from traffic kube-proxy forwards by them)
    services: Sequence[dict[str, Any]] = ()


@dataclass
class ClusterView:
    raw: RawObjects
    cluster: ClusterState = field(init=False)
    compiled: CompiledCluster = field(init=False)
    _desired: dict[str, NodeDesired] = field(default_factory=dict, init=False)
    _by_ip: dict[str, Pod] = field(default_factory=dict, init=False)
    _node_by_ip: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        r = self.raw
        self.cluster = cluster_from_objects(
            r.namespaces, r.pods, r.policies, r.nodes, r.cluster_policies, calico=r.calico
        )
        self.compiled = compile_cluster(self.cluster)
        for pod in self.cluster.pods.values():
            if pod.active:
                for ip in pod.ips:
                    self._by_ip[_canon(ip)] = pod
        for node in self.cluster.nodes.values():
            for ip in node.addresses:
                self._node_by_ip[_canon(ip)] = node.name

    # -- per node state
    def desired(self, node: str) -> NodeDesired:
        hit = self._desired.get(node)
        if hit is None:
            hit = compute(self.cluster, node)
            if self.raw.services:  # as the agent adds them (controller/agent/loop.py)
                fronts, _ = frontends_of(self.raw.services, self.raw.nodes, node)
                hit = dataclasses.replace(hit, frontends=fronts)
            self._desired[node] = hit
        return hit

    def node_of(self, pod: str) -> str | None:
        p = self.cluster.pods.get(pod)
        return p.node if p is not None else None

    def desired_of(self, pod: str) -> NodeDesired | None:
        node = self.node_of(pod)
        return self.desired(node) if node else None

    # -- translations
    def pod_by_ip(self, ip: str) -> Pod | None:
        return self._by_ip.get(_canon(ip))

    def who(self, ip: str) -> str:
        """A pod key, node/NAME for a node address, or the address itself."""
        pod = self.pod_by_ip(ip)
        if pod is not None:
            return pod.key
        node = self._node_by_ip.get(_canon(ip))
        return f"node/{node}" if node else ip

    def identity_text(self, ident: int) -> str:
        info = self.compiled.identities.get(ident)
        if info is None and DOMAIN_ID_MIN <= ident <= DOMAIN_ID_MAX:
            pattern = self.compiled.tiers.tables.domains.pattern_of(ident)
            return f"domain:{pattern}" if pattern is not None else f"domain:unknown({ident})"
        if info is None:
            return f"unknown({ident})"
        if info.kind == "reserved":
            return str(info.name)
        if info.kind == "cidr":
            return f"cidr:{info.cidr}"
        if info.kind == "namespace":  # a class of namespaces (stages/ns_classes.py)
            names = info.namespaces or (str(info.namespace),)
            more = f" +{len(names) - NS_CLASS_SHOWN} more" if len(names) > NS_CLASS_SHOWN else ""
            return f"ns:{','.join(names[:NS_CLASS_SHOWN])}{more}"
        labels = ",".join(f"{k}={v}" for k, v in sorted(info.labels.items())) or "<no labels>"
        return f"{info.namespace}:{labels}"

    def identity_pods(self, ident: int) -> list[str]:
        return [p.key for p in self.compiled.pods_by_identity.get(ident, [])]

    def rule(self, ref: int) -> RuleRef | None:
        """A NetworkPolicy's or a ClusterNetworkPolicy's rule by its reference."""
        if not ref:
            return None
        return self.compiled.rules.get(ref) or self.compiled.tiers.rules.get(ref)

    def policy(self, key: str) -> NetworkPolicy | None:
        return self.cluster.policies.get(key)

    def isolating(self, pod: str, direction: int) -> list[str]:
        """Keys of the policies that isolate `pod` in `direction` (sorted, as the compiler orders them)."""
        ident = self.compiled.pod_identity.get(pod)
        if ident is None:
            return []
        pols = self.compiled.policies_for_identity.get(ident, [])
        return [
            p.key for p in pols if (p.isolates_ingress if direction == DIR_INGRESS else p.isolates_egress)
        ]

    def selected_pods(self, policy: str) -> list[str]:
        idents = self.compiled.selected.get(policy, frozenset())
        return sorted(p.key for i in idents for p in self.compiled.pods_by_identity.get(i, []))

    def pods(self, namespace: str | None = None) -> list[str]:
        """Active pods with an address, optionally of one namespace, sorted."""
        return sorted(
            p.key
            for p in self.cluster.pods.values()
            if p.active and p.ips and (namespace is None or p.namespace == namespace)
        )


def rule_policy(rule: RuleRef) -> str:
    """The policy of a rule as the CLI names it: ns/name, or a cluster-wide policy's name."""
    return f"{rule.namespace}/{rule.policy}" if rule.namespace else rule.policy


def rule_json(rule: RuleRef) -> dict[str, Any]:
    """A rule for -o json: tier (NetworkPolicy for a namespace's policy), policy, index, name."""
    return {
        "tier": rule.tier or "NetworkPolicy",
        "kind": rule.kind or ("ClusterNetworkPolicy" if rule.tier else "NetworkPolicy"),
        "policy": rule_policy(rule),
        "direction": DIRECTION_NAMES[rule.direction],
        "rule_index": rule.index,
        "rule_name": rule.name or None,
        "rule": str(rule),
    }


def _canon(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip
