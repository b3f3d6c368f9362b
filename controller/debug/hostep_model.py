"""A Python model of a Calico host endpoint's decision over NodeDesired (pure), beside
verdict_model (the pods' decision).

It mirrors bpf/lib/hostep.h vg_hep_verdict and the failsafe check of bpf/vethguard.c
vg_hep_handle for a new flow (a TCP SYN; conntrack is not modelled) through a node interface
that carries host endpoint H (NodeDesired.host_endpoints), in direction d (INGRESS: arriving at
the node through it, tc ingress before kube-proxy's DNAT; EGRESS: leaving the node through it):

0. The (protocol, destination port) is a failsafe port of d (NodeDesired.failsafe_inbound /
   failsafe_outbound; TCP, UDP and SCTP only) -> ALLOW_FAILSAFE (set "failsafe").
1. The peer (the source arriving, the destination leaving) is looked up in the node's ipcache:
   (identity, cidr_identity). A policy set's answer: three LPM lookups in its tier profile
   (NodeDesired.tier_profiles[profile]) for identity, cidr_identity (if non-zero) and ANY (the
   kernel's fourth, the namespace identity, never answers: Calico's profiles have no such keys), the
   `calico` slot of the lowest `calico_rank` decides: Accept = Allow, Deny = Deny; anything
   else (Pass, no match) is no answer.
2. INGRESS and H has preDNAT policies: the preDNAT set on the original destination: Allow ->
   ALLOW_PREDNAT, Deny -> DROP_PREDNAT; no answer goes on (preDNAT has no default deny).
3. To the node itself (INGRESS: the destination is one of the node's addresses and not a
   Service frontend; EGRESS: sent by a socket of the node): the normal set; Allow ->
   ALLOW_HOSTEP, Deny -> DROP_HOSTEP, no answer -> DROP_HOSTEP_END (set "default deny":
   Calico denies what no policy of a host endpoint allows).
4. Forwarded (anything else): the applyOnForward set if such policies select H for d (same
   outcomes as 3), else ALLOW_HOSTEP unpoliced (set "unpoliced").

`decide` holds steps 0-4 over lookup functions, so the compiled model and the live-map check
(controller.debug.kernel) share it and cannot drift apart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from controller.compiler.desired_state import (
    HostEndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    RuleRef,
)
from controller.core.identities import ID_ANY, ID_WORLD
from controller.core.net import L4_PROTOCOLS
from controller.core.verdicts import DIR_INGRESS, TIER_ACCEPT, TIER_DENY, TIER_NONE
from controller.debug.verdict_model import (
    IPAddress,
    ipcache_lookup,
    parse_proto,
    policy_lpm,
    policy_port,
)

ALLOW_FAILSAFE = "ALLOW_FAILSAFE"
ALLOW_PREDNAT = "ALLOW_PREDNAT"
ALLOW_HOSTEP = "ALLOW_HOSTEP"
DROP_PREDNAT = "DROP_PREDNAT"
DROP_HOSTEP = "DROP_HOSTEP"
DROP_HOSTEP_END = "DROP_HOSTEP_END"

# The policy set that decided (HepDecision.policy_set)
SET_FAILSAFE = "failsafe"
SET_PREDNAT = "preDNAT"
SET_NORMAL = "normal"
SET_FORWARD = "applyOnForward"
SET_DEFAULT_DENY = "default deny"  # the normal or applyOnForward set answered nothing
SET_UNPOLICED = "unpoliced"  # forwarded, and no applyOnForward policy selects the host endpoint

# What the traffic is to the host endpoint (HepDecision.traffic)
TO_NODE = "to the node"
FROM_NODE = "from the node"
FORWARDED = "forwarded"

# (profile, peer identity level) -> the longest vg_policy match in that profile: (matched key or
# None, value), or None
ProfileLookup = Callable[[int, int], tuple[PolicyEntryKey | None, PolicyEntryValue] | None]


@dataclass(frozen=True)
class HepDecision:
    """A host endpoint's decision in the datapath's terms, plus what only a debugger wants."""

    reason: str
    policy_set: str
    traffic: str
    rule_ref: int = 0
    matched: PolicyEntryKey | None = None
    profile: int = 0  # the tier profile of the set that decided (0: none)
    default_deny_of: str | None = None  # SET_NORMAL / SET_FORWARD when the set was SET_DEFAULT_DENY

    @property
    def allowed(self) -> bool:
        return not self.reason.startswith("DROP_")


@dataclass(frozen=True)
class HepVerdict:
    """One host endpoint's decision for a new flow, with the rule named."""

    allowed: bool
    reason: str
    direction: int
    host_endpoint: str
    interface: str | None  # HostEndpointDesired.interface ("*", a name, or None: by expectedIPs)
    peer: str
    destination: str
    traffic: str
    policy_set: str
    peer_identity: int = ID_WORLD
    peer_cidr_identity: int = 0
    rule: RuleRef | None = None
    rule_ref: int = 0
    matched: PolicyEntryKey | None = None
    profile: int = 0
    default_deny_of: str | None = None
    policies: tuple[str, ...] = ()  # the Calico policies that select the host endpoint


@dataclass(frozen=True)
class HepFlags:
    """The parts of a vg_hosteps entry the decision reads (hostep_info)."""

    pre_dnat: bool
    ingress_fwd: bool
    egress_fwd: bool
    profile_host: int
    profile_fwd: int
    profile_pre: int

    @classmethod
    def of(cls, hep: HostEndpointDesired) -> HepFlags:
        return cls(
            hep.pre_dnat, hep.ingress_fwd, hep.egress_fwd, hep.profile_host, hep.profile_fwd, hep.profile_pre
        )


def _calico_answer(
    profile: int, identity: int, cidr_identity: int, lookup: ProfileLookup
) -> tuple[int, int, PolicyEntryKey | None] | None:
    """lib/policy.h vg_tiers_lookup's `calico` slot: (action, rule_ref, matched key) of the
    lowest calico_rank over the three lookups, or None when no entry has a Calico answer."""
    best: tuple[int, int, int, PolicyEntryKey | None] | None = None
    for level in (identity, *([cidr_identity] if cidr_identity else []), ID_ANY):
        found = lookup(profile, level)
        if found is None:
            continue
        key, v = found
        if v.calico != TIER_NONE and (best is None or v.calico_rank < best[0]):
            best = (v.calico_rank, v.calico, v.calico_ref, key)
    return None if best is None else (best[1], best[2], best[3])


def _set(
    profile: int,
    identity: int,
    cidr_identity: int,
    lookup: ProfileLookup,
    policy_set: str,
    traffic: str,
    allow: str,
    deny: str,
    otherwise: str | None,
) -> HepDecision | None:
    """lib/hostep.h vg_hep_set: Allow/Deny decide; anything else is `otherwise` (None: go on)."""
    answer = _calico_answer(profile, identity, cidr_identity, lookup)
    if answer is not None and answer[0] in (TIER_ACCEPT, TIER_DENY):
        action, ref, key = answer
        return HepDecision(allow if action == TIER_ACCEPT else deny, policy_set, traffic, ref, key, profile)
    if otherwise is None:
        return None
    return HepDecision(otherwise, SET_DEFAULT_DENY, traffic, profile=profile, default_deny_of=policy_set)


def decide(
    direction: int,
    hep: HepFlags,
    identity: int,
    cidr_identity: int,
    to_node: bool,
    failsafe: bool,
    lookup: ProfileLookup,
) -> HepDecision:
    """Steps 0-4 of the module docstring. `to_node`: INGRESS, the destination is the node itself;
    EGRESS, a socket of the node sent it. `failsafe`: the (protocol, port) is a failsafe port of
    `direction`. `lookup` does the LPM in a profile's entries (the model's dicts or the live map)."""
    ingress = direction == DIR_INGRESS
    traffic = (TO_NODE if ingress else FROM_NODE) if to_node else FORWARDED
    if failsafe:
        return HepDecision(ALLOW_FAILSAFE, SET_FAILSAFE, traffic)
    if ingress and hep.pre_dnat:
        d = _set(
            hep.profile_pre,
            identity,
            cidr_identity,
            lookup,
            SET_PREDNAT,
            traffic,
            ALLOW_PREDNAT,
            DROP_PREDNAT,
            None,
        )
        if d is not None:
            return d
    if to_node:
        profile, policy_set = hep.profile_host, SET_NORMAL
    elif hep.ingress_fwd if ingress else hep.egress_fwd:
        profile, policy_set = hep.profile_fwd, SET_FORWARD
    else:
        return HepDecision(ALLOW_HOSTEP, SET_UNPOLICED, traffic)
    d = _set(
        profile,
        identity,
        cidr_identity,
        lookup,
        policy_set,
        traffic,
        ALLOW_HOSTEP,
        DROP_HOSTEP,
        DROP_HOSTEP_END,
    )
    assert d is not None  # a default is given: always a decision
    return d


def is_failsafe(desired: NodeDesired, direction: int, proto: int, port: int) -> bool:
    """lib/hostep.h vg_failsafe_port over NodeDesired.failsafe_inbound / failsafe_outbound."""
    ports = desired.failsafe_inbound if direction == DIR_INGRESS else desired.failsafe_outbound
    return any(L4_PROTOCOLS.get(name) == proto and p == port for name, p in ports)


def to_node(desired: NodeDesired, dst: IPAddress, proto: int, port: int) -> bool:
    """lib/hostep.h vg_to_node: one of the node's addresses and not a Service frontend there."""
    if str(dst) not in {str(ipaddress.ip_address(a)) for a in desired.host_addresses}:
        return False
    return not any(
        fe.address == str(dst) and fe.proto == proto and fe.port == port and fe.family == dst.version
        for fe in desired.frontends
    )


def host_endpoint_verdict(
    desired: NodeDesired,
    name: str,
    direction: int,
    src: IPAddress | str,
    dst: IPAddress | str,
    proto: int | str,
    port: int,
    from_node: bool | None = None,
) -> HepVerdict:
    """The decision of host endpoint `name` of this node for a new flow src -> dst:port.

    INGRESS: arriving (src is the peer; dst the original destination, before DNAT); EGRESS:
    leaving (dst is the peer); `from_node` says whether a socket of the node sent it (default:
    src is one of the node's addresses)."""
    hep = desired.host_endpoints.get(name)
    if hep is None:
        raise LookupError(f"{name} is not a host endpoint of this node")
    p = parse_proto(proto)
    s = ipaddress.ip_address(src) if isinstance(src, str) else src
    t = ipaddress.ip_address(dst) if isinstance(dst, str) else dst
    ingress = direction == DIR_INGRESS
    peer = s if ingress else t
    if ingress:
        local = to_node(desired, t, p, port)
    else:
        local = from_node if from_node is not None else str(s) in set(desired.host_addresses)
    # (its profiles are Calico's, which have no namespace keys: the kernel's lookup of the
    # namespace identity, lib/policy.h vg_tiers_lookup, never answers for a host endpoint)
    ident, cidr, _ = ipcache_lookup(desired, peer)
    lport = policy_port(p, port)
    failsafe = p in L4_PROTOCOLS.values() and is_failsafe(desired, direction, p, port)
    profiles = desired.tier_profiles
    d = decide(
        direction,
        HepFlags.of(hep),
        ident,
        cidr,
        local,
        failsafe,
        lambda profile, level: policy_lpm(profiles.get(profile, {}), direction, level, p, lport),
    )
    return HepVerdict(
        allowed=d.allowed,
        reason=d.reason,
        direction=direction,
        host_endpoint=name,
        interface=hep.interface,
        peer=str(peer),
        destination=str(t),
        traffic=d.traffic,
        policy_set=d.policy_set,
        peer_identity=ident,
        peer_cidr_identity=cidr,
        rule=desired.rules.get(d.rule_ref) if d.rule_ref else None,
        rule_ref=d.rule_ref,
        matched=d.matched,
        profile=d.profile,
        default_deny_of=d.default_deny_of,
        policies=hep.policies,
    )
