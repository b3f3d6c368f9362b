"""Desired BPF map contents for one node, computed purely from the cluster model.

The types here are the hand-off between the policy compiler (controller.compiler.policy) and the
datapath sync layer (controller.datapath.sync). See docs/INTERNALS.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.compiler.stages.domains import NO_DOMAINS, DomainClasses
from controller.core.errors import PolicyError
from controller.core.net import IPNetwork
from controller.core.verdicts import DIR_INGRESS

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, order=True, slots=True)
class PolicyEntryKey:
    """A policy map key without the endpoint id."""

    direction: int
    identity: int  # peer identity, ID_ANY = any peer
    proto: int  # 0 = any protocol (then port == 0 and port_plen == 0)
    port: int  # host byte order; 0 when port_plen == 0
    port_plen: int  # 0..16; 16 = one exact port


@dataclass(frozen=True, slots=True)
class PolicyEntryValue:
    """What one entry answers for all three tiers (bpf/lib/structs.h, struct policy_value): the
    compiler folds into it every rule of the same endpoint, direction and peer identity whose
    (protocol, port) prefix covers it, so the longest match alone is complete."""

    verdict: int  # VERDICT_ALLOW: a NetworkPolicy rule allows it; 0: none does
    rule_ref: int  # that NetworkPolicy rule
    admin: int = 0  # TIER_*: the action of the first matching Admin-tier rule
    admin_rank: int = 0  # its place in the Admin tier's order (lower decides)
    admin_ref: int = 0
    baseline: int = 0  # TIER_*: the same for the Baseline tier
    baseline_rank: int = 0
    baseline_ref: int = 0
    calico: int = 0  # TIER_*: the first matching rule of Calico's tier (with NetworkPolicies at order 1000)
    calico_rank: int = 0
    calico_ref: int = 0
    log: int = 0  # 1: a Calico Log rule matches; the lowest-ranked one:
    log_rank: int = 0
    log_ref: int = 0


@dataclass(frozen=True)
class RuleRef:
    namespace: str  # "" for a ClusterNetworkPolicy
    policy: str
    direction: int
    index: int  # index of the rule in spec.ingress / spec.egress
    tier: str = ""  # ClusterNetworkPolicy: "Admin" | "Baseline"; "" for a NetworkPolicy
    name: str = ""  # ClusterNetworkPolicy: the rule's `name`; Calico: the rule's action
    kind: str = ""  # Calico: GlobalNetworkPolicy | NetworkPolicy.projectcalico.org; "" otherwise

    @property
    def is_cluster(self) -> bool:
        return bool(self.tier)

    def __str__(self) -> str:
        d = "ingress" if self.direction == DIR_INGRESS else "egress"
        if self.kind:
            where = f"{self.namespace}/{self.policy}" if self.namespace else self.policy
            return f"{self.tier}:{self.kind} {where} {d}[{self.index}] ({self.name})"
        if self.tier:
            named = f" ({self.name})" if self.name else ""
            return f"{self.tier}:{self.policy} {d}[{self.index}]{named}"
        return f"{self.namespace}/{self.policy} {d}[{self.index}]"


@dataclass(frozen=True)
class IdentityInfo:
    identity: int
    kind: str  # "pod", "cidr", "namespace", "reserved"
    namespace: str | None = None  # a pod's; a namespace class's first member
    labels: Mapping[str, str] = field(default_factory=dict)
    cidr: str | None = None
    name: str | None = None  # reserved identity name
    namespaces: tuple[str, ...] = ()  # a namespace class's members, sorted (stages/ns_classes.py)


@dataclass(frozen=True)
class EndpointDesired:
    pod: str  # "ns/name"
    identity: int
    ingress_isolated: bool
    egress_isolated: bool
    ipv4: str | None
    ipv6: str | None
    entries: Mapping[PolicyEntryKey, PolicyEntryValue]
    policies: Sequence[str] = ()  # "ns/name" of the policies that select this pod
    # Isolated in that direction only by audit-mode policies (annotation vethguard.dev/audit:
    # "true"): would-be policy drops pass and are reported as ALLOW_AUDIT.
    ingress_audit: bool = False
    egress_audit: bool = False
    # Selected by a ClusterNetworkPolicy with rules in that direction: new flows are decided by
    # the tiers (EP_F_*_TIERED).
    ingress_tiered: bool = False
    egress_tiered: bool = False
    cluster_policies: Sequence[str] = ()  # names of the ClusterNetworkPolicies that select it
    tier_profile: int = 0  # TIER_PROFILE_BIT | n: the key of its tier entries (NodeDesired.tier_profiles)
    # Selected by a Calico policy for that direction: Calico's tier decides, NetworkPolicies
    # inside it at order 1000, and a pod it selects that no rule matches is denied (EP_F_*_CALICO).
    ingress_calico: bool = False
    egress_calico: bool = False
    calico_policies: Sequence[str] = ()  # the Calico policies that select it (CalicoPolicy.object)
    calico_log: bool = False  # its tier profile has Calico Log rules (EP_F_CALICO_LOG)
    dns: bool = False  # domainNames rules police its egress: it learns from DNS (EP_F_DNS)


@dataclass(frozen=True, order=True)
class SvcFrontend:
    """An address + port kube-proxy DNATs on this node (a ClusterIP, an external IP, or one of
    this node's addresses with a NodePort): a pod's flow to it is judged after DNAT."""

    family: int  # 4 or 6
    address: str  # canonical
    proto: int  # IPPROTO_TCP / UDP / SCTP
    port: int


@dataclass(frozen=True)
class HostEndpointDesired:
    """A Calico HostEndpoint of this node (vg_hosteps, bpf/lib/hostep.h): where it is and the
    tier profiles of its three policy sets (0: none selects it)."""

    name: str
    interface: str | None  # interfaceName ("*": every uplink); None: the one holding expected_ips
    expected_ips: tuple[str, ...]
    profile_host: int  # normal policies: traffic to and from the node itself
    profile_fwd: int  # applyOnForward policies: forwarded traffic
    profile_pre: int  # preDNAT policies: arrivals, before DNAT
    ingress_fwd: bool  # applyOnForward policies select it for ingress (else forwarded passes)
    egress_fwd: bool
    pre_dnat: bool  # preDNAT policies select it
    policies: tuple[str, ...] = ()  # the Calico policies that select it (CalicoPolicy.object)


# Calico's default failsafe ports (FelixConfiguration failsafeInboundHostPorts /
# failsafeOutboundHostPorts): (protocol, port) always allowed to (inbound) or from (outbound) a
# host endpoint, so a wrong policy cannot lock an administrator out. SSH, DHCP, BGP, etcd,
# Typha, the API server, DNS.
_FAILSAFE_BOTH: tuple[tuple[str, int], ...] = tuple(
    ("TCP", port) for port in (179, 2379, 2380, 5473, 6443, 6666, 6667)
)  # BGP, etcd, Typha, the API server, and Calico's 6666/6667, in both directions
FAILSAFE_INBOUND: tuple[tuple[str, int], ...] = (("TCP", 22), ("UDP", 68), *_FAILSAFE_BOTH)
FAILSAFE_OUTBOUND: tuple[tuple[str, int], ...] = (("UDP", 53), ("UDP", 67), *_FAILSAFE_BOTH)


@dataclass(frozen=True, eq=False)
class ProfileChange:
    """How a tier profile's entries were derived from `base` (an earlier compilation's entries of
    the same profile, or of the profile its endpoints had when its key is new; never mutated):
    `removed` keys taken out, then `upserted` keys set. The encoder re-encodes only those where
    it wrote `base` (the result is the same; controller/datapath/profile_homes.py)."""

    base: Mapping[PolicyEntryKey, PolicyEntryValue]
    removed: tuple[PolicyEntryKey, ...]
    upserted: tuple[PolicyEntryKey, ...]


@dataclass(frozen=True)
class NodeDesired:
    endpoints: Mapping[str, EndpointDesired]
    ipcache: Mapping[IPNetwork, tuple[int, int, int]]  # prefix -> (identity, cidr_identity, ns_identity)
    rules: Mapping[int, RuleRef]
    identities: Mapping[int, IdentityInfo]
    errors: Sequence[PolicyError] = ()
    frontends: frozenset[SvcFrontend] = frozenset()
    # This node's own addresses (its Node object's): believed only on packets it sends itself
    # (vg_local, bpf/lib/trust.h).
    host_addresses: tuple[str, ...] = ()
    # The tier profiles its endpoints use: profile id -> ClusterNetworkPolicy entries (keyed in
    # vg_policy by the profile id instead of an endpoint's)
    tier_profiles: Mapping[int, Mapping[PolicyEntryKey, PolicyEntryValue]] = field(default_factory=dict)
    # Calico HostEndpoints of this node, by name (their profiles are in tier_profiles)
    host_endpoints: Mapping[str, HostEndpointDesired] = field(default_factory=dict)
    # For some of tier_profiles: how their entries were derived from an earlier compilation's
    # (a hint for the encoder; not part of the contents)
    tier_profile_changes: Mapping[int, ProfileChange] = field(default_factory=dict, compare=False, repr=False)
    # (protocol, port) that always pass a host endpoint, inbound and outbound (the agent's
    # --failsafe-inbound / --failsafe-outbound replace Calico's defaults)
    failsafe_inbound: tuple[tuple[str, int], ...] = FAILSAFE_INBOUND
    failsafe_outbound: tuple[tuple[str, int], ...] = FAILSAFE_OUTBOUND
    # The domainNames classes: the agent's DNS thread asks it for the identity of each answered name
    domains: DomainClasses = field(default=NO_DOMAINS, compare=False, repr=False)
