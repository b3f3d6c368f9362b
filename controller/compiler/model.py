"""Typed, validated cluster objects built from raw Kubernetes API JSON (pure, no I/O).

`builder.cluster_from_objects(namespaces, pods, policies, nodes)` never raises on bad input:
every problem becomes a `PolicyError(object, field, message)` in `ClusterState.errors` (and,
for policies, in `NetworkPolicy.errors`), e.g.
`NetworkPolicy x/allow-web: spec.ingress[0].ports[1].endPort: must be >= port (80)`.

Fail-closed rules for invalid NetworkPolicies (DESIGN.md "Policy semantics"):

- A rule (one element of spec.ingress / spec.egress) with ANY invalid part (peer, selector,
  ipBlock, port, protocol, endPort, wrong type) is dropped whole: a partially understood rule
  could allow more than intended (dropping one peer or one port of a rule would be safe, but
  dropping a bad `except` would not, so the rule is the unit). The remaining rules keep their
  original indices, so rule references still name the right element.
- The policy still selects its pods and isolates them for its policyTypes; valid rules apply.
- An invalid spec.podSelector: the policy selects EVERY pod of its namespace (for its
  policyTypes, with no rules at all, since the author's intent for those pods is unknown).
  A missing podSelector is the API default `{}` (all pods of the namespace), not an error.
- An invalid spec.policyTypes (not a list, or an entry other than Ingress/Egress): the policy
  isolates BOTH directions with its valid rules.
- spec.ingress / spec.egress that is not a list: error, no rules for that direction (the
  direction's isolation is unchanged; for defaulted policyTypes a non-empty egress value
  still counts as "has egress rules").
- A spec that is not an object: the policy selects every pod of its namespace and isolates
  both directions with no rules.

Other objects: a Pod or Namespace or Node without a usable name is skipped (error recorded);
invalid labels, IPs, container ports or node addresses are dropped individually (error
recorded). Pods in phase Succeeded/Failed are kept in `pods` but are not `active` (their IPs
may already belong to a new pod); hostNetwork pods are not `active` either (their IP is the
node's, and NetworkPolicy does not apply to them).

Decisions where the API is loose: `ipBlock.cidr` may have host bits set (normalised, as the
API server accepts it); every `except` must be a strict subset of `cidr` (same family);
a string `port` is a port name (IANA_SVC_NAME rules), never a number in disguise; protocol
names are case-sensitive (TCP, UDP, SCTP), as the API server requires.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from controller.compiler.calico import CalicoPolicy, HostEndpoint
from controller.compiler.cnp import ClusterNetworkPolicy
from controller.compiler.generations import GenerationCache
from controller.compiler.selectors import LabelSelector
from controller.core.errors import PolicyError
from controller.core.net import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NS_NAME_LABEL = "kubernetes.io/metadata.name"
INGRESS = "Ingress"
EGRESS = "Egress"


# ---------------------------------------------------------------------------------------------
# Typed objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]  # always includes kubernetes.io/metadata.name=<name>


class ContainerPort(NamedTuple):
    name: str | None
    port: int
    protocol: str  # TCP / UDP / SCTP


@dataclass(frozen=True, slots=True)
class Pod:
    """Slotted, and built by from_objects with shared label maps / port tuples / strings: a
    cluster holds one per pod, so its per-object size is most of the model's memory."""

    namespace: str
    name: str
    labels: Mapping[str, str]  # shared between pods with equal labels: never mutate
    node: str | None
    ips: tuple[str, ...]  # canonical strings; at most one IPv4 and one IPv6
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False
    phase: str | None = None
    # "ns/name", built once: every table keyed by pod then shares this one string.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    @property
    def ipv4(self) -> str | None:
        return next((ip for ip in self.ips if ":" not in ip), None)

    @property
    def ipv6(self) -> str | None:
        return next((ip for ip in self.ips if ":" in ip), None)

    @property
    def active(self) -> bool:
        """A pod policy applies to and that can be a peer: not hostNetwork, not terminated."""
        return not self.host_network and self.phase not in ("Succeeded", "Failed")

    @property
    def named_ports(self) -> tuple[tuple[str, int, str], ...]:
        return tuple((p.name, p.port, p.protocol) for p in self.ports if p.name)

    def resolve_named_port(self, name: str, protocol: str) -> tuple[int, ...]:
        """Container port numbers with this name and protocol (usually zero or one)."""
        return tuple(sorted({p.port for p in self.ports if p.name == name and p.protocol == protocol}))


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[str, ...]  # InternalIP addresses, canonical strings
    labels: Mapping[str, str] = field(default_factory=dict)  # ClusterNetworkPolicy `nodes` peers
    # ExternalIP addresses: a `nodes` peer matches them too (every IP of status.addresses, as the
    # API says), but they are not the node's own (not HOST / REMOTE_NODE): often a cloud's NAT
    # address that no packet on the node carries
    external_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, addr: IPAddress) -> bool:
        if addr.version != self.cidr.version or addr not in self.cidr:
            return False
        return not any(addr in e for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    """One element of from/to. Exactly one of: ip_block, or at least one selector."""

    pod_selector: LabelSelector | None = None  # None = not given
    namespace_selector: LabelSelector | None = None  # None = not given (= policy's namespace)
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None = every port of the protocol; str = named port
    end_port: int | None = None

    @property
    def is_named(self) -> bool:
        return isinstance(self.port, str)


@dataclass(frozen=True)
class Rule:
    index: int  # index in spec.ingress / spec.egress
    peers: tuple[Peer, ...] = ()  # empty = every peer
    ports: tuple[PolicyPort, ...] = ()  # empty = every protocol and port

    @property
    def has_named_ports(self) -> bool:
        return any(p.is_named for p in self.ports)


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[str]  # subset of {"Ingress", "Egress"}, after defaulting
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    errors: tuple[PolicyError, ...] = ()
    audit: bool = False  # annotation vethguard.dev/audit: "true": report would-be drops, do not drop

    @functools.cached_property
    def key(self) -> str:  # (read per policy and event: formatted once)
        return f"{self.namespace}/{self.name}"

    @property
    def isolates_ingress(self) -> bool:
        return INGRESS in self.policy_types

    @property
    def isolates_egress(self) -> bool:
        return EGRESS in self.policy_types


@dataclass(frozen=True)
class ClusterState:
    namespaces: Mapping[str, Namespace]
    pods: Mapping[str, Pod]  # by "ns/name"
    policies: Mapping[str, NetworkPolicy]  # by "ns/name"
    nodes: Mapping[str, Node]
    errors: tuple[PolicyError, ...] = ()
    # ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2) by metadata.name
    cluster_policies: Mapping[str, ClusterNetworkPolicy] = field(default_factory=dict)
    # Calico GlobalNetworkPolicies and NetworkPolicies by CalicoPolicy.object; HostEndpoints by name
    calico_policies: Mapping[str, CalicoPolicy] = field(default_factory=dict)
    host_endpoints: Mapping[str, HostEndpoint] = field(default_factory=dict)
    # Scratch space for derived data (the compiler caches its node-independent work here).
    # init=False: dataclasses.replace() starts a fresh cache instead of sharing a stale one.
    cache: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    # Set by a ClusterBuilder that reuses parses (the agent's): this build's number and what
    # changed since the builder's previous build. The compiler then updates the previous
    # build's compilation instead of starting over (controller.compiler.policy.compile_cluster).
    # init=False, like cache: a replace()d or hand-made ClusterState has neither.
    build_id: int | None = field(default=None, init=False, compare=False, repr=False)
    delta: ClusterDelta | None = field(default=None, init=False, compare=False, repr=False)
    # The generation caches of the builder that built this cluster (the compiler's tables
    # carried from one compilation to the next, controller.compiler.generations); None for a
    # cluster without a reusing builder, which is then compiled with a fresh cache.
    generations: GenerationCache | None = field(default=None, init=False, compare=False, repr=False)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        ns = self.namespaces.get(name)
        return ns.labels if ns is not None else {NS_NAME_LABEL: name}


@dataclass(frozen=True)
class ClusterDelta:
    """What a ClusterBuilder build changed since the builder's build number `base`: the keys
    ("ns/name") of pods and policies added, removed or replaced by another object, and whether
    any namespace or node did. `previous` weakly references that build's ClusterState (alive
    while its holder, the agent, keeps it: the compiler then starts from its compilation)."""

    base: int
    pods: frozenset[str]
    policies: frozenset[str]
    namespaces: bool
    nodes: bool
    cluster_policies: bool = False  # any ClusterNetworkPolicy or Calico object changed (starts over)
    previous: Callable[[], ClusterState | None] = field(default=lambda: None, compare=False, repr=False)
