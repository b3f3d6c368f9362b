"""A Python model of the datapath's policy verdict over NodeDesired (pure).

It mirrors the tc programs' new-flow decision (bpf/, docs/INTERNALS.md), without conntrack:

At a hook of endpoint E, direction d (INGRESS = to the pod, EGRESS = from the pod), peer
address P, protocol `proto`, destination port `port`:

1. (identity, cidr_identity, ns_identity) = LPM of P in the ipcache of E's node
   (vg_ipcache4/6); no match (cannot happen: 0.0.0.0/0 and ::/0 are always present) =
   (WORLD, 0, 0). ns_identity: the namespace identity of a pod address, 0 for any other.
2. identity == HOST (P is an address of E's own node) -> ALLOW_HOST, unless d is EGRESS and a
   ClusterNetworkPolicy selects E for it: then the tiers below decide (a drop stays a drop,
   anything allowed is ALLOW_HOST; NetworkPolicy, where it isolates, allows the node).
3. E neither isolated nor tiered for d -> ALLOW_NOT_ISOLATED.
3b. E tiered for d (EndpointDesired.ingress_tiered / egress_tiered): the lookups of step 4, and
   one for ns_identity if non-zero (keys of rules selecting every pod of a namespace) and, for
   an egress peer address E learned from a DNS answer (vg_dns_learned, not expired), one for
   the domain identity it was learned under (domainNames rules), are made
   in E's tier profile (NodeDesired.tier_profiles[E.tier_profile]) and merged, per tier
   the lowest rank: the Admin rule decides on Accept/Deny (ALLOW_ADMIN / DROP_ADMIN); else
   NetworkPolicy if it isolates E for d (step 4-5, E's own entries); else the Baseline rule on
   Accept/Deny (ALLOW_BASELINE / DROP_BASELINE); else ALLOW_NOT_ISOLATED.
4. For peer id in (identity, cidr_identity if non-zero, ANY): LPM on vg_policy with key
   (E, id, d, proto, port): the longest of (proto, port/16 .. port/0) and then the
   (any protocol) entry. The first identity level whose match has an ALLOW verdict decides
   (ALLOW_POLICY); any other match moves on to the next level, as lib/policy.h vg_policy_try.
5. No match at any level -> DROP_POLICY, or ALLOW_AUDIT when only audit-mode policies isolate
   E for d (EndpointDesired.ingress_audit / egress_audit).

`verdict(src_desired, dst_desired, src, dst, proto, port)` decides a new connection A -> B:
allowed iff A's EGRESS allows it on A's node (peer = B's address, looked up in A's node
ipcache) AND B's INGRESS allows it on B's node (peer = A's address in B's node ipcache).
`src` / `dst` are endpoint keys "ns/name" (resolved in src_desired / dst_desired) or IP
address strings (an address of an endpoint of that NodeDesired is treated as that endpoint;
any other address is outside enforcement on that side, e.g. an external host, and that half
is "NOT_ENFORCED" = allowed). Pass None for a side's NodeDesired when it is not an endpoint.
A pod and itself, and both pods on one node, work the same way (pass the same NodeDesired).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.compiler.desired_state import (
    EndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    RuleRef,
)
from controller.core.identities import ID_ANY, ID_HOST, ID_WORLD
from controller.core.net import IPPROTO_ICMP, IPPROTO_ICMPV6, PROTOCOL_NUMBERS, IPNetwork
from controller.core.verdicts import (
    DIR_EGRESS,
    DIR_INGRESS,
    TIER_ACCEPT,
    TIER_DENY,
    TIER_NONE,
    TIER_PASS,
    VERDICT_ALLOW,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


ALLOW_POLICY = "ALLOW_POLICY"
ALLOW_NOT_ISOLATED = "ALLOW_NOT_ISOLATED"
ALLOW_HOST = "ALLOW_HOST"
DROP_POLICY = "DROP_POLICY"
ALLOW_AUDIT = "ALLOW_AUDIT"  # a would-be DROP_POLICY passed because only audit-mode policies isolate
ALLOW_ADMIN = "ALLOW_ADMIN"
ALLOW_BASELINE = "ALLOW_BASELINE"
DROP_ADMIN = "DROP_ADMIN"
DROP_BASELINE = "DROP_BASELINE"
ALLOW_CALICO = "ALLOW_CALICO"
DROP_CALICO = "DROP_CALICO"
DROP_CALICO_END = "DROP_CALICO_END"
NOT_ENFORCED = "NOT_ENFORCED"  # not a datapath reason: the side is not an endpoint at all


@dataclass(frozen=True)
class HalfVerdict:
    """One hook's decision (the egress hook of the source or the ingress hook of the destination)."""

    allowed: bool
    reason: str  # a reason name of the datapath's table, or NOT_ENFORCED
    direction: int
    endpoint: str | None  # "ns/name", None when not enforced
    peer: str  # the peer address
    peer_identity: int = ID_WORLD
    peer_cidr_identity: int = 0
    matched: PolicyEntryKey | None = None
    rule: RuleRef | None = None  # the deciding rule (NetworkPolicy or a tier's)
    passed: tuple[RuleRef, ...] = ()  # the tiers' Pass rules that handed the decision on
    rule_ref: int = 0  # the deciding rule's reference (what the datapath reports)
    peer_ns_identity: int = 0
    peer_domain_identity: int = 0  # egress: the domain the pod learned the peer address under


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: HalfVerdict  # at the source
    ingress: HalfVerdict  # at the destination

    @property
    def deciding(self) -> HalfVerdict:
        """The half that dropped it (egress first), or the ingress half when allowed."""
        if not self.egress.allowed:
            return self.egress
        return self.ingress


def icmp_policy_port(icmp_type: int, code: int) -> int:
    """The policy key's port of an ICMP packet (lib/parse.h vg_policy_port)."""
    return (icmp_type << 8) | code


def policy_port(proto: int, port: int) -> int:
    """The policy key's port (lib/parse.h vg_policy_port); ICMP port 0 is an echo request."""
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and port == 0:
        return icmp_policy_port(8 if proto == IPPROTO_ICMP else 128, 0)
    return port


def parse_proto(proto: int | str) -> int:
    if isinstance(proto, int):
        return proto
    try:
        return PROTOCOL_NUMBERS[proto.upper()]
    except KeyError:
        raise ValueError(f"unknown protocol {proto!r}") from None


# ipcache -> per family, (prefix length, {network as int: value}) longest first. Built once per
# ipcache mapping (NodeDesired is a value: its ipcache is not mutated after compute), so a
# lookup costs one dict probe per distinct prefix length instead of building 129 networks.
IpcacheValue = tuple[int, int, int]  # (identity, cidr_identity, ns_identity)
_LpmIndex = dict[int, list[tuple[int, dict[int, IpcacheValue]]]]
_LPM_INDEXES: dict[int, tuple[Mapping[IPNetwork, IpcacheValue], int, _LpmIndex]] = {}


def _lpm_index(ipcache: Mapping[IPNetwork, IpcacheValue]) -> _LpmIndex:
    hit = _LPM_INDEXES.get(id(ipcache))
    if hit is not None and hit[0] is ipcache and hit[1] == len(ipcache):
        return hit[2]
    by_len: dict[int, dict[int, dict[int, IpcacheValue]]] = {4: {}, 6: {}}
    for net, value in ipcache.items():
        by_len[net.version].setdefault(net.prefixlen, {})[int(net.network_address)] = value
    index = {v: sorted(lens.items(), reverse=True) for v, lens in by_len.items()}
    if len(_LPM_INDEXES) >= 32:  # a handful of live NodeDesired at a time; never grow unbounded
        _LPM_INDEXES.clear()
    _LPM_INDEXES[id(ipcache)] = (ipcache, len(ipcache), index)
    return index


def ipcache_lookup(desired: NodeDesired, addr: IPAddress | str) -> IpcacheValue:
    """LPM of addr in the node's ipcache -> (identity, cidr_identity, ns_identity)."""
    a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    bits, value = a.max_prefixlen, int(a)
    for plen, nets in _lpm_index(desired.ipcache)[a.version]:
        hit = nets.get(value & (((1 << plen) - 1) << (bits - plen)))
        if hit is not None:
            return hit
    return (ID_WORLD, 0, 0)


def policy_lpm(
    entries: Mapping[PolicyEntryKey, PolicyEntryValue], direction: int, identity: int, proto: int, port: int
) -> tuple[PolicyEntryKey, PolicyEntryValue] | None:
    """Longest-prefix match on (proto, port) for one peer identity, as the vg_policy LPM trie does."""
    for plen in range(16, -1, -1):
        mask = (0xFFFF << (16 - plen)) & 0xFFFF
        key = PolicyEntryKey(direction, identity, proto, port & mask, plen)
        v = entries.get(key)
        if v is not None:
            return key, v
    key = PolicyEntryKey(direction, identity, 0, 0, 0)
    v = entries.get(key)
    if v is not None:
        return key, v
    return None


@dataclass(frozen=True)
class Decision:
    """One hook's decision in the datapath's own terms: what the tc program returns and the rule
    reference it reports (an event's rule_ref), plus what only a debugger wants to know."""

    allowed: bool
    reason: str
    rule_ref: int = 0  # the deciding rule: NetworkPolicy's allow, or a tier's Accept/Deny
    matched: PolicyEntryKey | None = None  # the entry of that rule (None when not known)
    passed: tuple[int, ...] = ()  # the tiers' Pass rules that handed the decision on, in order


# peer identity -> the longest vg_policy match for it: (matched key or None, value), or None
PolicyLookup = Callable[[int], tuple[PolicyEntryKey | None, PolicyEntryValue] | None]


def decide(
    direction: int,
    identity: int,
    cidr_identity: int,
    isolated: bool,
    tiered: bool,
    audit: bool,
    lookup: PolicyLookup,
    tier_lookup: PolicyLookup | None = None,
    calico: bool = False,
    ns_identity: int = 0,
    fqdn: int = 0,
) -> Decision:
    """Steps 2-5 of the module docstring (lib/newflow.h's HOST check, lib/policy.h
    vg_policy_verdict and vg_tiers_verdict) for an endpoint with those flags and a peer with
    those identities; `lookup` does the LPM in the endpoint's own entries, `tier_lookup` in its
    tier profile's (the model's dicts or the kernel's live map). The compiled model and the
    live-map check share it, so they cannot drift apart."""
    host = identity == ID_HOST
    if host and (direction == DIR_INGRESS or not tiered):
        return Decision(True, ALLOW_HOST)
    if not isolated and not tiered:
        return Decision(True, ALLOW_NOT_ISOLATED)
    levels = [identity]
    if cidr_identity and cidr_identity not in levels:
        levels.append(cidr_identity)
    if ID_ANY not in levels:
        levels.append(ID_ANY)
    if tiered:
        # lib/policy.h vg_tiers_lookup: the namespace and domain identities too (only tier
        # profiles have such keys)
        extra = [i for i in (ns_identity, fqdn) if i]
        tier_levels = [*levels[:-1], *extra, *levels[-1:]]
        found = (tier_lookup(lv) for lv in tier_levels) if tier_lookup else ()
        tier_hits = [h for h in found if h is not None]
        return _tiers(tier_hits, isolated, audit, host, lambda: _networkpolicy(levels, audit, lookup), calico)
    return _networkpolicy(levels, audit, lookup)


def _networkpolicy(levels: list[int], audit: bool, lookup: PolicyLookup) -> Decision:
    """lib/policy.h vg_np_verdict: the first level whose entry allows decides."""
    for level in levels:
        hit = lookup(level)
        if hit is not None and hit[1].verdict == VERDICT_ALLOW:
            return Decision(True, ALLOW_POLICY, hit[1].rule_ref, hit[0])
    return Decision(True, ALLOW_AUDIT) if audit else Decision(False, DROP_POLICY)


def _tiers(
    hits: list[tuple[PolicyEntryKey | None, PolicyEntryValue]],
    isolated: bool,
    audit: bool,
    host: bool,
    networkpolicy: Callable[[], Decision],
    calico: bool = False,
) -> Decision:
    """The tiers over the tier profile's hits, as lib/policy.h vg_tiers_verdict merges them: per
    tier the lowest rank wins; Calico's tier (NetworkPolicies in it) where it selects the pod,
    else NetworkPolicy where it isolates, decides in between."""
    admin: tuple[int, int, int, PolicyEntryKey | None] | None = None  # (rank, action, ref, key)
    base: tuple[int, int, int, PolicyEntryKey | None] | None = None
    cal: tuple[int, int, int, PolicyEntryKey | None] | None = None
    for key, v in hits:
        if v.calico != TIER_NONE and (cal is None or v.calico_rank < cal[0]):
            cal = (v.calico_rank, v.calico, v.calico_ref, key)
        if v.admin != TIER_NONE and (admin is None or v.admin_rank < admin[0]):
            admin = (v.admin_rank, v.admin, v.admin_ref, key)
        if v.baseline != TIER_NONE and (base is None or v.baseline_rank < base[0]):
            base = (v.baseline_rank, v.baseline, v.baseline_ref, key)
    passed: tuple[int, ...] = ()
    if admin is not None:
        if admin[1] == TIER_ACCEPT:
            return Decision(True, ALLOW_HOST if host else ALLOW_ADMIN, admin[2], admin[3])
        if admin[1] == TIER_DENY:
            return Decision(False, DROP_ADMIN, admin[2], admin[3])
        passed = (admin[2],)
    if calico:
        if cal is not None and cal[1] == TIER_ACCEPT:
            return Decision(True, ALLOW_HOST if host else ALLOW_CALICO, cal[2], cal[3], passed)
        if cal is not None and cal[1] == TIER_DENY:
            return Decision(False, DROP_CALICO, cal[2], cal[3], passed)
        if cal is None or cal[1] != TIER_PASS:
            return (
                Decision(True, ALLOW_HOST, passed=passed)
                if host
                else Decision(False, DROP_CALICO_END, passed=passed)
            )
        passed = (*passed, cal[2])
    elif isolated:
        if host:
            return Decision(True, ALLOW_HOST, passed=passed)
        d = networkpolicy()
        return Decision(d.allowed, d.reason, d.rule_ref, d.matched, passed)
    if base is not None:
        if base[1] == TIER_ACCEPT:
            return Decision(True, ALLOW_HOST if host else ALLOW_BASELINE, base[2], base[3], passed)
        if base[1] == TIER_DENY:
            return Decision(False, DROP_BASELINE, base[2], base[3], passed)
        passed = (*passed, base[2])
    return Decision(True, ALLOW_HOST if host else ALLOW_NOT_ISOLATED, passed=passed)


def endpoint_verdict(
    desired: NodeDesired,
    endpoint: str,
    direction: int,
    peer: IPAddress | str,
    proto: int | str,
    port: int,
    fqdn: int = 0,
) -> HalfVerdict:
    """The decision of one endpoint's hook for a new flow with `peer` (see the module docstring);
    `fqdn`: the domain identity the endpoint learned `peer` under (egress, unexpired), or 0."""
    ep = desired.endpoints.get(endpoint)
    if ep is None:
        raise LookupError(f"{endpoint} is not an endpoint of this node")
    p = parse_proto(proto)
    addr = ipaddress.ip_address(peer) if isinstance(peer, str) else peer
    port = policy_port(p, port)
    ident, cidr_ident, ns_ident = ipcache_lookup(desired, addr)
    ingress = direction == DIR_INGRESS
    fqdn = fqdn if not ingress and ep.dns else 0  # lib/dnslearned.h: EP_F_DNS endpoints' egress only
    d = decide(
        direction,
        ident,
        cidr_ident,
        ep.ingress_isolated if ingress else ep.egress_isolated,
        ep.ingress_tiered if ingress else ep.egress_tiered,
        ep.ingress_audit if ingress else ep.egress_audit,
        lambda level: policy_lpm(ep.entries, direction, level, p, port),
        lambda level: policy_lpm(desired.tier_profiles.get(ep.tier_profile, {}), direction, level, p, port),
        ep.ingress_calico if ingress else ep.egress_calico,
        ns_ident,
        fqdn,
    )
    rules = desired.rules
    return HalfVerdict(
        d.allowed,
        d.reason,
        direction,
        endpoint,
        str(addr),
        ident,
        cidr_ident,
        d.matched,
        rules.get(d.rule_ref) if d.rule_ref else None,
        tuple(r for r in (rules.get(ref) for ref in d.passed) if r is not None),
        d.rule_ref,
        ns_ident,
        fqdn,
    )


def _resolve(desired: NodeDesired | None, who: str, family: int) -> tuple[EndpointDesired | None, IPAddress]:
    """(endpoint or None, address) of a side given as "ns/name" or an IP address."""
    addr: IPAddress | None = None
    if "/" not in who:  # endpoint keys always hold a "/", addresses never: skip a failing parse
        try:
            addr = ipaddress.ip_address(who)
        except ValueError:
            addr = None
    if addr is None:
        if desired is None or who not in desired.endpoints:
            raise LookupError(f"{who} is not an endpoint of the given NodeDesired")
        ep = desired.endpoints[who]
        ip = ep.ipv4 if family == 4 else ep.ipv6
        if ip is None:
            raise LookupError(f"{who} has no IPv{family} address")
        return ep, ipaddress.ip_address(ip)
    if desired is not None:
        for ep in desired.endpoints.values():
            if str(addr) in (ep.ipv4, ep.ipv6):
                return ep, addr
    return None, addr


def verdict(
    src_desired: NodeDesired | None,
    dst_desired: NodeDesired | None,
    src: str,
    dst: str,
    proto: int | str,
    port: int,
    family: int | None = None,
    egress_domain: int = 0,
) -> Verdict:
    """Would a new connection src -> dst:port/proto be allowed? (module docstring has the rules)

    `family` (4 or 6) picks the pods' addresses; default: the family of an IP given as src or
    dst, else 4. `egress_domain`: the domain identity src learned dst's address under (its
    unexpired vg_dns_learned entry), or 0.
    """
    if family is None:
        family = 4
        for who in (src, dst):
            try:
                family = ipaddress.ip_address(who).version
                break
            except ValueError:
                continue
    src_ep, src_addr = _resolve(src_desired, src, family)
    dst_ep, dst_addr = _resolve(dst_desired, dst, family)
    if src_addr.version != dst_addr.version:
        raise ValueError(f"address families differ: {src_addr} -> {dst_addr}")
    if src_ep is not None and src_desired is not None:
        eg = endpoint_verdict(src_desired, src_ep.pod, DIR_EGRESS, dst_addr, proto, port, egress_domain)
    else:
        eg = HalfVerdict(True, NOT_ENFORCED, DIR_EGRESS, None, str(dst_addr))
    if dst_ep is not None and dst_desired is not None:
        ing = endpoint_verdict(dst_desired, dst_ep.pod, DIR_INGRESS, src_addr, proto, port)
    else:
        ing = HalfVerdict(True, NOT_ENFORCED, DIR_INGRESS, None, str(src_addr))
    return Verdict(eg.allowed and ing.allowed, eg, ing)
