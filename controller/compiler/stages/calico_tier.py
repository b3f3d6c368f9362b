"""Calico's ordered tier (a stage of the compiler, issue 16): projectcalico.org/v3
GlobalNetworkPolicies and NetworkPolicies, with Kubernetes NetworkPolicies taking part at order
1000, precomputed into the same tier profiles as ClusterNetworkPolicy's tiers
(stages/tiers.py; docs/INTERNALS.md "Tiers").

- Order: every Calico policy (preDNAT ones apply to host endpoints only) and every Kubernetes
  NetworkPolicy, by (order, name key): a Calico policy's order (absent = last) and name
  (namespaced: "ns/name"), a NetworkPolicy's 1000 and "ns/knp.default.name", as Calico names
  it. Each Calico rule gets a rank (its place in that order); a NetworkPolicy gets one rank for
  all its rules (all Allow: which of them matches first changes nothing).
- A pod is in the tier for a direction when a Calico policy whose `types` has it selects the
  pod. Then its tier profile holds, in the Calico slot, the first matching rule of the policies
  and NetworkPolicies selecting it; Log rules go to their own slot (the lowest-ranked one).
- A rule contributes (peer identity x port spec) keys: the peer side as identities
  (`peer_identities`), the ports as aligned prefixes (ICMP type/code as a 16-bit port:
  type << 8 | code). Negations (notNets, notSelector, notPorts, notICMP) become the complement:
  every other identity, prefix or range. A rule with both label and address conditions matches
  pods by their exact host prefixes (CIDR identities), so the AND needs no second lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.compiler.calico import (
    ALLOW,
    DENY,
    ICMP_PROTOCOLS,
    K8S_NAME_PREFIX,
    K8S_ORDER,
    LOG,
    PASS,
    CalicoPolicy,
    CalicoRule,
    EntityRule,
    HostEndpoint,
    PortRange,
    pod_calico_labels,
)
from controller.compiler.desired_state import RuleRef
from controller.compiler.model import NetworkPolicy, Pod
from controller.compiler.portrange import range_to_prefixes
from controller.compiler.stages.cidr import CidrTables, IPAddress, host_prefix
from controller.compiler.stages.identities import IdentityTables
from controller.compiler.stages.policies import rule_ref
from controller.core.identities import ID_ANY, ID_HOST, ID_REMOTE_NODE, ID_WORLD
from controller.core.net import L4_PROTOCOLS, IPNetwork
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, TIER_ACCEPT, TIER_DENY, TIER_PASS

CALICO_TIER = "Calico"
LOG_ACTION = 4  # a Log rule's contributions carry this action (the Log slot, not an action slot)
_ACTIONS = {ALLOW: TIER_ACCEPT, DENY: TIER_DENY, PASS: TIER_PASS, LOG: LOG_ACTION}
_NON_ENDPOINTS = (ID_WORLD, ID_HOST, ID_REMOTE_NODE)  # peers without labels
_ROOTS = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
FULL: tuple[PortRange, ...] = ((0, 0xFFFF),)

PortSpec = tuple[int, int, int]  # (proto, port, plen)
KeyTuple = tuple[int, int, int, int, int]


def calico_rule_ref(pol: CalicoPolicy, direction: int, index: int) -> int:
    """NetworkPolicy's formula with the kind in the name, so no NetworkPolicy of the same
    namespace and name shares it."""
    return rule_ref(pol.namespace or "", f"{pol.kind}.projectcalico.org:{pol.name}", direction, index)


def subtract(ranges: Iterable[PortRange], minus: Iterable[PortRange]) -> list[PortRange]:
    """Inclusive ranges minus inclusive ranges, merged and sorted."""
    out: list[PortRange] = []
    for lo, hi in sorted(ranges):
        pieces = [(lo, hi)]
        for mlo, mhi in minus:
            nxt: list[PortRange] = []
            for a, b in pieces:
                if mhi < a or mlo > b:
                    nxt.append((a, b))
                    continue
                if a < mlo:
                    nxt.append((a, mlo - 1))
                if mhi < b:
                    nxt.append((mhi + 1, b))
            pieces = nxt
        out.extend(pieces)
    merged: list[PortRange] = []
    for a, b in sorted(out):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _icmp_range(spec: tuple[int, int | None]) -> PortRange:
    t, c = spec
    return (t << 8, (t << 8) | 0xFF) if c is None else ((t << 8) | c, (t << 8) | c)


def port_specs(rule: CalicoRule) -> tuple[PortSpec, ...]:
    """The numeric (protocol, port prefix) specs of a rule; named ports are resolved apart."""
    proto = rule.protocol or 0
    dst = rule.destination
    if proto in ICMP_PROTOCOLS and (rule.icmp or rule.not_icmp):
        base = [_icmp_range(rule.icmp)] if rule.icmp else list(FULL)
        ranges = subtract(base, [_icmp_range(rule.not_icmp)] if rule.not_icmp else [])
    elif dst.has_ports:
        base = list(dst.ports) if dst.ports is not None else list(FULL)
        ranges = subtract(base, dst.not_ports)
    else:
        return ((proto, 0, 0),)
    return tuple((proto, port, plen) for lo, hi in ranges for port, plen in range_to_prefixes(lo, hi))


def resolve_named(
    pod: Pod, names: Sequence[str], proto: int, minus: Sequence[PortRange]
) -> tuple[PortSpec, ...]:
    """Named destination ports on a pod: its container ports of that name and the rule's
    protocol, less `notPorts`."""
    out = set()
    for c in pod.ports:
        if (
            c.name in names
            and L4_PROTOCOLS.get(c.protocol) == proto
            and not any(lo <= c.port <= hi for lo, hi in minus)
        ):
            out.add((proto, c.port, 16))
    return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class CalicoContribution:
    key: KeyTuple
    action: int  # TIER_* or LOG_ACTION
    rank: int
    ref: int


class CalicoTables:
    """The node-independent part: the order, each rule's rank and reference, which identities
    each policy selects, and the prefixes the rules need as CIDR identities (`prefixes`)."""

    def __init__(
        self,
        policies: Mapping[str, CalicoPolicy],
        np_policies: Mapping[str, NetworkPolicy],
        identities: IdentityTables,
        namespace_labels: Callable[[str], Mapping[str, str]],
    ) -> None:
        # every policy (preDNAT ones select host endpoints only: CalicoPolicy.selects)
        self.policies = sorted(policies.values(), key=lambda p: p.sort_key)
        self.identities = identities
        self.namespace_labels = namespace_labels
        self.rules: dict[int, RuleRef] = {}
        self.place: dict[tuple[str, int, int], tuple[int, int]] = {}  # (object, dir, index) -> (rank, ref)
        self.np_rank: dict[str, int] = {}  # NetworkPolicy key -> rank
        self._selecting: dict[int, tuple[CalicoPolicy, ...]] = {}
        self._pod_addresses: dict[tuple[str, bool, int, bool], list[tuple[Pod, IPAddress]]] = {}
        if not self.policies:
            self.prefixes: frozenset[IPNetwork] = frozenset()
            return
        slots: list[tuple[tuple[float, str], int, CalicoPolicy | NetworkPolicy]] = [
            (p.sort_key, 0, p) for p in self.policies
        ]
        slots.extend(
            ((K8S_ORDER, f"{n.namespace}/{K8S_NAME_PREFIX}{n.name}"), 1, n) for n in np_policies.values()
        )
        slots.sort(key=lambda s: (s[0], s[1]))
        rank = 0
        for _key, _kind, obj in slots:
            if isinstance(obj, CalicoPolicy):
                for direction, rules in ((DIR_INGRESS, obj.ingress), (DIR_EGRESS, obj.egress)):
                    for rule in rules:
                        ref = calico_rule_ref(obj, direction, rule.index)
                        kind = f"{obj.kind}.projectcalico.org" if obj.namespace else obj.kind
                        self.rules[ref] = RuleRef(
                            obj.namespace or "",
                            obj.name,
                            direction,
                            rule.index,
                            CALICO_TIER,
                            rule.action,
                            kind,
                        )
                        self.place[(obj.object, direction, rule.index)] = (rank, ref)
                        rank += 1
            else:
                self.np_rank[obj.key] = rank
                rank += 1
        self.prefixes = frozenset(self._prefixes())

    # -- who is who ----------------------------------------------------------------------------

    def labels_of(self, identity: int) -> tuple[str, Mapping[str, str], Mapping[str, str]]:
        """(namespace, Calico labels, namespace labels) of a pod identity."""
        ns = self.identities.identity_namespace[identity]
        labels = pod_calico_labels(ns, self.identities.identity_labels[identity])
        return ns, labels, self.namespace_labels(ns)

    def selecting(self, identity: int) -> tuple[CalicoPolicy, ...]:
        """The policies that select pods of this identity, in order."""
        hit = self._selecting.get(identity)
        if hit is None:
            ns = self.identities.identity_namespace[identity]
            labels = self.identities.identity_labels[identity]
            ns_labels = self.namespace_labels(ns)
            hit = tuple(p for p in self.policies if p.selects(ns, labels, ns_labels))
            self._selecting[identity] = hit
        return hit

    def entity_matches(self, pol: CalicoPolicy, e: EntityRule, identity: int) -> bool:
        """Do the label conditions of `e` hold for a pod of this identity?"""
        ns, labels, ns_labels = self.labels_of(identity)
        in_scope = pol.namespace is None or e.namespace_selector is not None or ns == pol.namespace
        if e.selector is not None and not (in_scope and e.selector.matches(labels)):
            return False
        if e.namespace_selector is not None and not e.namespace_selector.matches(ns_labels):
            return False
        # notSelector excludes the pods it matches within the same scope as selector's
        return not (e.not_selector is not None and in_scope and e.not_selector.matches(labels))

    def hep_selecting(self, hep: HostEndpoint) -> tuple[CalicoPolicy, ...]:
        """The policies that select a host endpoint, in order: GlobalNetworkPolicies whose selector
        matches its labels (a namespaceSelector selects namespaced endpoints only)."""
        return tuple(
            p
            for p in self.policies
            if p.namespace is None and p.namespace_selector is None and p.selector.matches(hep.labels)
        )

    def pods_of(self, identity: int) -> list[Pod]:
        return list(self.identities.pods_by_identity.get(identity, ()))

    # -- the prefixes the rules need ----------------------------------------------------------

    def _prefixes(self) -> Iterable[IPNetwork]:
        for pol in self.policies:
            for egress, rules in ((False, pol.ingress), (True, pol.egress)):
                for rule in rules:
                    if rule.matches_nothing or rule.deny_all:
                        continue
                    e = rule.peer(egress)
                    if _has_ip_condition(rule, e):
                        yield from e.nets or ()
                        yield from e.not_nets
                        if e.nets is None:
                            yield from (_ROOTS[f] for f in _families(rule))
                    for named in (False, True):
                        for _pod, ip in self.host_prefix_pods(pol, rule, egress, named):
                            yield host_prefix(ip)

    def host_prefix_pods(
        self, pol: CalicoPolicy, rule: CalicoRule, egress: bool, named: bool = False
    ) -> list[tuple[Pod, IPAddress]]:
        """Pod addresses that need their own host prefix for this rule. named=False: where a rule
        has both label and address conditions, the pods it matches (or, when addresses alone can
        match, the pods it must not match: carved out); named=True: the destinations of its egress
        named ports (pods it matches). Computed once per rule: the prefixes and each endpoint's
        contributions both ask."""
        ckey = (pol.object, egress, rule.index, named)
        hit = self._pod_addresses.get(ckey)
        if hit is None:
            hit = self._pod_addresses[ckey] = self._host_prefix_pods(pol, rule, egress, named)
        return hit

    def _host_prefix_pods(
        self, pol: CalicoPolicy, rule: CalicoRule, egress: bool, named: bool
    ) -> list[tuple[Pod, IPAddress]]:
        e = rule.peer(egress)
        out: list[tuple[Pod, IPAddress]] = []
        ip_cond = _has_ip_condition(rule, e)
        if (named and not (egress and e.named_ports)) or (not named and not ip_cond):
            return out
        labels_only_pods = e.selector is not None or e.namespace_selector is not None
        for ident in self.identities.pods_by_identity:
            ok = self.entity_matches(pol, e, ident)
            wanted = ok if named or labels_only_pods else not ok
            if not wanted:
                continue
            for pod in self.pods_of(ident):
                for text in pod.ips:
                    ip = ipaddress.ip_address(text)
                    if ip_matches(rule, e, ip):
                        out.append((pod, ip))
        return out


def _families(rule: CalicoRule) -> tuple[int, ...]:
    return (rule.ip_version,) if rule.ip_version else (4, 6)


def _has_ip_condition(rule: CalicoRule, e: EntityRule) -> bool:
    return e.nets is not None or bool(e.not_nets) or rule.ip_version is not None


def ip_matches(rule: CalicoRule, e: EntityRule, ip: IPAddress) -> bool:
    """The address conditions of a rule's peer side for one address."""
    if rule.ip_version is not None and ip.version != rule.ip_version:
        return False
    if e.nets is not None and not any(ip.version == n.version and ip in n for n in e.nets):
        return False
    return not any(ip.version == n.version and ip in n for n in e.not_nets)


def prefix_matches(rule: CalicoRule, e: EntityRule, net: IPNetwork) -> bool:
    """The address conditions for every address whose longest policy prefix is `net` (the
    rule's nets and notNets are policy prefixes, so each is wholly inside or outside them)."""
    if rule.ip_version is not None and net.version != rule.ip_version:
        return False
    if e.nets is not None and not any(net.version == n.version and net.subnet_of(n) for n in e.nets):  # type: ignore[arg-type]
        return False
    return not any(net.version == n.version and net.subnet_of(n) for n in e.not_nets)  # type: ignore[arg-type]


class CalicoTier:
    """Per endpoint identity: whether the tier polices each direction, and the contributions of
    every rule that applies to it (with the NetworkPolicies' from the caller)."""

    def __init__(self, tables: CalicoTables, cidr: CidrTables) -> None:
        self.tables = tables
        self.cidr = cidr
        self._peer_cache: dict[tuple[str, int, int], tuple[CalicoContribution, ...]] = {}
        self._peer_idents: dict[tuple[str, int, int], frozenset[int]] = {}

    def directions(self, identity: int) -> tuple[bool, bool]:
        """(ingress, egress): a policy of the tier selects the identity for that direction."""
        pols = self.tables.selecting(identity)
        return any("Ingress" in p.types for p in pols), any("Egress" in p.types for p in pols)

    def peer_identities(self, pol: CalicoPolicy, rule: CalicoRule, egress: bool) -> frozenset[int]:
        """The identities of the rule's peer side (once per rule: every endpoint it applies to
        with its own named ports asks again)."""
        ckey = (pol.object, int(egress), rule.index)
        hit = self._peer_idents.get(ckey)
        if hit is None:
            hit = self._peer_idents[ckey] = frozenset(self._peer_identities(pol, rule, egress))
        return hit

    def _peer_identities(self, pol: CalicoPolicy, rule: CalicoRule, egress: bool) -> set[int]:
        e = rule.peer(egress)
        t = self.tables
        if not _has_ip_condition(rule, e):
            if not e.selects:
                return {ID_ANY}
            idents = {i for i in t.identities.pods_by_identity if t.entity_matches(pol, e, i)}
            if e.selector is None and e.namespace_selector is None:
                idents.update(_NON_ENDPOINTS)  # only notSelector: every peer without labels
            return idents
        out: set[int] = set()
        if e.selector is None and e.namespace_selector is None:
            # addresses decide: every policy prefix inside the conditions (pods that fail the
            # notSelector have their own host prefixes, outside this rule)
            carved = {host_prefix(ip) for _pod, ip in t.host_prefix_pods(pol, rule, egress)}
            for net, ident in self.cidr.cidr_identity.items():
                if net not in carved and prefix_matches(rule, e, net):
                    out.add(ident)
        else:
            for _pod, ip in t.host_prefix_pods(pol, rule, egress):
                out.add(self.cidr.cidr_identity[host_prefix(ip)])
        return out

    def _peer_contributions(
        self, pol: CalicoPolicy, direction: int, rule: CalicoRule
    ) -> tuple[CalicoContribution, ...]:
        """What the rule contributes whatever the endpoint (its own named ports apart)."""
        ckey = (pol.object, direction, rule.index)
        hit = self._peer_cache.get(ckey)
        if hit is not None:
            return hit
        rank, ref = self.tables.place[ckey]
        action = _ACTIONS[rule.action]
        egress = direction == DIR_EGRESS
        keys: list[KeyTuple] = []
        if rule.deny_all:
            keys.append((direction, ID_ANY, 0, 0, 0))
        elif not rule.matches_nothing:
            specs = port_specs(rule)
            for ident in sorted(self.peer_identities(pol, rule, egress)):
                keys.extend((direction, ident, *s) for s in specs)
            e = rule.destination
            if egress and e.named_ports and rule.protocol is not None:
                for pod, ip in self.tables.host_prefix_pods(pol, rule, egress, named=True):
                    if _has_ip_condition(rule, e) and not ip_matches(rule, e, ip):
                        continue
                    resolved = resolve_named(pod, e.named_ports, rule.protocol, e.not_ports)
                    dest = self.cidr.cidr_identity[host_prefix(ip)]
                    keys.extend((direction, dest, *s) for s in resolved)
        hit = tuple(CalicoContribution(k, action, rank, ref) for k in dict.fromkeys(keys))
        self._peer_cache[ckey] = hit
        return hit

    def excluded(self, identity: int) -> tuple[tuple[str, int, int], ...]:
        """The rules of its policies whose own-side selectors do not match this identity (part
        of its profile's key: two identities selected by the same policies may differ here)."""
        out: list[tuple[str, int, int]] = []
        t = self.tables
        for pol in t.selecting(identity):
            for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
                for rule in rules:
                    local = rule.local(direction == DIR_EGRESS)
                    if local.selects and not t.entity_matches(pol, local, identity):
                        out.append((pol.object, direction, rule.index))
        return tuple(out)

    def contributions(self, identity: int, pod: Pod) -> tuple[list[CalicoContribution], tuple[bool, bool]]:
        """Every Calico rule's contributions for an endpoint of this identity (ingress named
        ports resolved on `pod`), and its (ingress, egress) membership of the tier."""
        out: list[CalicoContribution] = []
        t = self.tables
        for pol in t.selecting(identity):
            for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
                egress = direction == DIR_EGRESS
                for rule in rules:
                    if not rule.deny_all and not rule.matches_nothing:
                        local = rule.local(egress)
                        if local.selects and not t.entity_matches(pol, local, identity):
                            continue
                    out.extend(self._peer_contributions(pol, direction, rule))
                    e = rule.destination
                    if (
                        not egress
                        and e.named_ports
                        and rule.protocol is not None
                        and not rule.matches_nothing
                    ):
                        rank, ref = t.place[(pol.object, direction, rule.index)]
                        own = resolve_named(pod, e.named_ports, rule.protocol, e.not_ports)
                        for ident in sorted(self.peer_identities(pol, rule, egress)):
                            out.extend(
                                CalicoContribution((direction, ident, *s), _ACTIONS[rule.action], rank, ref)
                                for s in own
                            )
        return out, self.directions(identity)

    def hep_contributions(self, pols: Iterable[CalicoPolicy], hep: HostEndpoint) -> list[CalicoContribution]:
        """Every rule's contributions for a host endpoint (its own side's selectors checked
        against its labels; it has no named ports)."""
        out: list[CalicoContribution] = []
        for pol in pols:
            for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
                egress = direction == DIR_EGRESS
                for rule in rules:
                    local = rule.local(egress)
                    if not rule.deny_all and not rule.matches_nothing and local.selects:
                        if local.namespace_selector is not None:
                            continue  # a host endpoint has no namespace
                        if local.selector is not None and not local.selector.matches(hep.labels):
                            continue
                        if local.not_selector is not None and local.not_selector.matches(hep.labels):
                            continue
                    out.extend(self._peer_contributions(pol, direction, rule))
        return out

    def named_own(self, identity: int, pod: Pod) -> tuple[PortSpec, ...]:
        """The endpoint's own resolution of every ingress named port of its policies (part of
        its profile's key)."""
        out: set[PortSpec] = set()
        for pol in self.tables.selecting(identity):
            for rule in pol.ingress:
                e = rule.destination
                if e.named_ports and rule.protocol is not None:
                    out.update(resolve_named(pod, e.named_ports, rule.protocol, e.not_ports))
        return tuple(sorted(out))
