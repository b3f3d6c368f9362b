"""ClusterNetworkPolicy tables (a part of the tiers stage, controller/compiler/stages/tiers.py):
the node-independent facts the tiers read. The policies in order (Admin, then Baseline; within a
tier ascending priority, ties by name), every rule's rank and reference, the pod identities a
subject or peer selects (the namespace classes of a peer that selects every pod of its
namespaces, stages/ns_classes.py), the addresses of the nodes a `nodes` peer selects, egress named-port
destinations, and the prefixes the tiers need as CIDR identities (`CnpTables.prefixes`).

Ranks (rule_ranks): priority * RANK_PRIORITY + place among the tier's policies of that priority
* RANK_POSITION + the rule's index in its direction, so a policy added or removed elsewhere moves
no other rule (docs/INTERNALS.md "Tiers").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from controller.compiler.cnp import TIERS, ClusterNetworkPolicy, CnpPeer, CnpRule
from controller.compiler.desired_state import RuleRef
from controller.compiler.model import Node, Peer, Pod
from controller.compiler.portrange import range_to_prefixes
from controller.compiler.selectors import LabelIndex, LabelSelector
from controller.compiler.stages.cidr import IPAddress, host_prefix
from controller.compiler.stages.domains import DomainClasses
from controller.compiler.stages.identities import IdentityTables
from controller.compiler.stages.ns_classes import NamespaceClasses
from controller.compiler.stages.policies import rule_ref
from controller.compiler.stages.selection import PeerSelector
from controller.compiler.stages.tier_profiles import TierMemo
from controller.core.net import L4_PROTOCOLS, IPNetwork
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS

PortSpec = tuple[int, int, int]  # (proto, port, port_plen)
ALL_PORTS: tuple[PortSpec, ...] = ((0, 0, 0),)


def cnp_rule_ref(name: str, direction: int, index: int) -> int:
    """The rule reference of a ClusterNetworkPolicy rule: NetworkPolicy's formula with no
    namespace, so the two never name the same string."""
    return rule_ref("", name, direction, index)


def ordered(policies: Iterable[ClusterNetworkPolicy]) -> list[ClusterNetworkPolicy]:
    return sorted(policies, key=lambda p: p.order)


# A rank from a rule's place that a policy added or removed elsewhere leaves alone, readable in
# decimal: priority * RANK_PRIORITY + position among the tier's policies of that priority (by
# name) * RANK_POSITION + the rule's index in its direction (ranks are compared only within one
# direction). Priority 10, second policy, rule 1: 10_001_001.
RANK_PRIORITY, RANK_POSITION = 1_000_000, 1_000


def rule_ranks(policies: Sequence[ClusterNetworkPolicy]) -> dict[tuple[str, int, int], int]:
    """(policy name, direction, rule index) -> rank, for policies in order: their order in the
    tier, lower first, stable under changes to policies of other priorities (and to those of
    the same priority that sort after it), so such an event leaves other profiles' entries as
    they were. Beyond the fields' room (1,000 policies of one priority, 1,000 rules in one
    direction), positions over the whole tier (every rule one rank)."""
    position: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    for pol in policies:
        k = (pol.tier, pol.priority)
        position[pol.name] = seen.get(k, 0)
        seen[k] = position[pol.name] + 1
    per = RANK_PRIORITY // RANK_POSITION
    roomy = all(n <= per for n in seen.values()) and all(
        r.index < RANK_POSITION for pol in policies for r in (*pol.ingress, *pol.egress)
    )
    out: dict[tuple[str, int, int], int] = {}
    dense = [0, 0]
    for pol in policies:
        tier = TIERS.index(pol.tier)
        for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
            for rule in rules:
                if roomy:
                    rank = pol.priority * RANK_PRIORITY + position[pol.name] * RANK_POSITION + rule.index
                else:
                    rank = dense[tier]
                    dense[tier] += 1
                out[(pol.name, direction, rule.index)] = rank
    return out


def port_specs(rule: CnpRule) -> tuple[PortSpec, ...]:
    """Numeric port specs of a rule (ALL_PORTS without `protocols`; named ports excluded)."""
    if rule.ports is None:
        return ALL_PORTS
    out: list[PortSpec] = []
    for p in rule.ports:
        if p.named is not None:
            continue
        proto = L4_PROTOCOLS[p.protocol]
        if p.start == 0:
            out.append((proto, 0, 0))
        elif p.start == p.end:
            out.append((proto, p.start, 16))
        else:
            out.extend((proto, port, plen) for port, plen in range_to_prefixes(p.start, p.end))
    return tuple(out)


def named_ports(rule: CnpRule) -> tuple[str, ...]:
    return tuple(p.named for p in rule.ports or () if p.named is not None)


def resolve_named(pod: Pod, names: Sequence[str]) -> tuple[PortSpec, ...]:
    """`destinationNamedPort` names resolved on a pod: every container port of that name, with
    its own protocol."""
    return tuple(sorted({(L4_PROTOCOLS[c.protocol], c.port, 16) for c in pod.ports if c.name in names}))


# the policies whose subject selects an identity, and the port names their ingress rules name
_Selecting = tuple[list[ClusterNetworkPolicy], tuple[str, ...]]


# entries beyond twice the live identities that the carried policies-by-identity-key may hold
CARRIED_SLACK = 1024


class CnpTables:
    """The node-independent part: policies in order, ranks and references, each rule's peers as
    identities, and the prefixes the tiers need as CIDR identities (known before the CIDR
    stage runs: `prefixes`)."""

    def __init__(
        self,
        policies: Mapping[str, ClusterNetworkPolicy],
        identities: IdentityTables,
        selector: PeerSelector,
        nodes: Mapping[str, Node],
        memo: TierMemo | None = None,
    ) -> None:
        memo = memo if memo is not None else TierMemo()
        # (carried from the previous compilation while the policies / nodes are the same mapping)
        self.policies, self.rules, self.place = memo.carried("order", policies, lambda: _order(policies))
        self.selector = selector
        self.pods_by_identity = identities.pods_by_identity
        self.nodes = nodes
        self._node_addresses: dict[object, tuple[IPAddress, ...]] = memo.carried(
            "node addresses", nodes, dict
        )
        self._node_prefix_cache: dict[object, tuple[IPNetwork, ...]] = memo.carried(
            "node prefixes", nodes, dict
        )
        self._subjects: dict[str, frozenset[int]] = {}
        # (policy, its subject's identities, its ingress rules' port names), in order
        self._subject_sets: list[tuple[ClusterNetworkPolicy, frozenset[int], tuple[str, ...]]] | None = None
        self.key_of_identity = identities.key_of_identity
        # identity key -> the policies whose subject selects it and their ingress rules' named
        # ports. A subject selects an identity by its key (namespace, labels) alone, so this is
        # carried while the policies and the namespaces are the same (at 50k pods recomputing it
        # for a node's identities on every pod event cost ~9 ms).
        self._policies_by_key: dict[object, _Selecting] = memo.carried(
            "policies by identity key", (self.policies, selector.namespaces), dict
        )
        if len(self._policies_by_key) > 2 * len(identities.identity_of_key) + CARRIED_SLACK:
            # the keys of identities gone since (relabels, rollouts) leave it (a cache: an entry
            # asked for again is computed again)
            live = identities.identity_of_key
            for gone in [k for k in list(self._policies_by_key) if k not in live]:
                del self._policies_by_key[gone]
        # The classes of namespaces the namespace-wide peers select alike (stages/ns_classes.py),
        # and per such peer's selector its classes: carried while the policies and the
        # namespaces are the same.
        ns_source = (policies, selector.namespaces)
        self.ns_classes: NamespaceClasses = memo.carried(
            "namespace classes",
            ns_source,
            lambda: NamespaceClasses.build(
                selector.namespaces.ids, self._namespace_selections(), memo.previous("namespace classes")
            ),
        )
        self._class_sets: dict[object, frozenset[int]] = memo.carried(
            "namespace class sets", (self.ns_classes, selector.namespaces), dict
        )
        self.prefixes = frozenset(self._prefixes())
        # (the previous compilation's classes keep their identities; see stages/domains.py)
        self.domains: DomainClasses = memo.carried(
            "domains",
            policies,
            lambda: DomainClasses.build(_patterns(self.policies), memo.previous("domains")),
        )

    # -- selection -----------------------------------------------------------------------------

    def subject_identities(self, pol: ClusterNetworkPolicy) -> frozenset[int]:
        """Pod identities the policy's subject selects (every pod when the subject is unusable)."""
        hit = self._subjects.get(pol.name)
        if hit is None:
            if pol.subject_pods is not None:
                hit = self.select(CnpPeer("pods", namespaces=pol.subject_pods[0], pods=pol.subject_pods[1]))
            else:
                hit = self.select(CnpPeer("namespaces", namespaces=pol.subject_namespaces))
            self._subjects[pol.name] = hit
        return hit

    def policies_selecting(self, identity: int) -> _Selecting:
        """The policies whose subject selects the pod identity, in order, and the port names their
        ingress rules name (`destinationNamedPort`), in order."""
        ikey = self.key_of_identity.get(identity)
        got = self._policies_by_key.get(ikey) if ikey is not None else None
        if got is None:
            if self._subject_sets is None:  # (once per compilation: 200 policies x ~100 identities)
                self._subject_sets = [
                    (p, self.subject_identities(p), tuple(n for r in p.ingress for n in named_ports(r)))
                    for p in self.policies
                ]
            chosen = [(p, names) for p, subjects, names in self._subject_sets if identity in subjects]
            got = ([p for p, _ in chosen], tuple(n for _, names in chosen for n in names))
            if ikey is not None:
                self._policies_by_key[ikey] = got
        return got

    def select(self, peer: CnpPeer) -> frozenset[int]:
        if peer.namespaces is None:  # an unusable subject: every pod
            return frozenset(self.pods_by_identity)
        peer_as_np = Peer(pod_selector=peer.pods, namespace_selector=peer.namespaces)
        return self.selector.peer_identities("", peer_as_np)

    def peer_identities(self, peer: CnpPeer) -> frozenset[int]:
        """The identities a `namespaces` or `pods` peer's keys name: the namespace classes of
        the namespaces it selects when it selects every pod of them (`namespace_wide`), else the
        pod identities it selects. A namespace's pods then match by their ipcache entry, and a
        pod coming or going leaves the profile as it is."""
        ns_sel = namespace_wide(peer)
        if ns_sel is None:
            return self.select(peer)
        hit = self._class_sets.get(ns_sel.key)
        if hit is None:
            selected = self.selector.namespace_identities(ns_sel)
            hit = self._class_sets[ns_sel.key] = self.ns_classes.classes(selected)
        return hit

    def _namespace_selections(self) -> Iterable[frozenset[int]]:
        """The namespace identities every namespace-wide peer of every rule selects."""
        for pol in self.policies:
            for rule in (*pol.ingress, *pol.egress):
                for peer in rule.peers:
                    ns_sel = namespace_wide(peer)
                    if ns_sel is not None:
                        yield self.selector.namespace_identities(ns_sel)

    def node_addresses(self, peer: CnpPeer) -> tuple[IPAddress, ...]:
        """Addresses of the nodes a `nodes` peer selects."""
        hit = self._node_addresses.get(peer.nodes)
        if hit is None:
            assert peer.nodes is not None
            sel = peer.nodes
            index = LabelIndex((i, n.labels) for i, n in enumerate(self.nodes.values()))
            chosen = set(sel.select(index))
            hit = tuple(
                ip_address(a)
                for i, n in enumerate(self.nodes.values())
                if i in chosen
                for a in (*n.addresses, *n.external_addresses)
            )
            self._node_addresses[peer.nodes] = hit
        return hit

    def node_prefixes(self, peer: CnpPeer) -> tuple[IPNetwork, ...]:
        """The exact prefixes of the addresses of the nodes a `nodes` peer selects."""
        hit = self._node_prefix_cache.get(peer.nodes)
        if hit is None:
            hit = self._node_prefix_cache[peer.nodes] = tuple(
                host_prefix(a) for a in self.node_addresses(peer)
            )
        return hit

    def named_targets(self, rule: CnpRule) -> list[tuple[Pod, tuple[PortSpec, ...]]]:
        """Egress named ports: (destination pod, its resolution) for every pod the peers select."""
        names = named_ports(rule)
        out: list[tuple[Pod, tuple[PortSpec, ...]]] = []
        for peer in rule.peers:
            if peer.kind not in ("namespaces", "pods"):
                continue
            for ident in sorted(self.select(peer)):
                for pod in self.pods_by_identity.get(ident, ()):
                    specs = resolve_named(pod, names)
                    if specs and pod.ips:
                        out.append((pod, specs))
        return out

    def _prefixes(self) -> Iterable[IPNetwork]:
        seen: set[object] = set()
        for pol in self.policies:
            for rule in pol.egress:
                if rule.matches_nothing or rule.deny_all:
                    continue
                for peer in rule.peers:
                    if peer.kind == "networks":
                        yield from peer.networks
                    elif peer.kind == "nodes" and peer.nodes not in seen:
                        seen.add(peer.nodes)  # (many policies, one selector: every node)
                        yield from self.node_prefixes(peer)
                if named_ports(rule):
                    for pod, _ in self.named_targets(rule):
                        yield from (host_prefix(ip_address(ip)) for ip in pod.ips)


def namespace_wide(peer: CnpPeer) -> LabelSelector | None:
    """The namespace selector of a peer that selects every pod of the namespaces it selects
    (kind `namespaces`, or `pods` with an empty pod selector); None for any other peer."""
    ns_sel = peer.namespaces
    if ns_sel is None or peer.kind not in ("namespaces", "pods"):
        return None
    if peer.kind == "namespaces" or peer.pods is None or peer.pods.is_everything:
        return ns_sel
    return None


def _order(
    policies: Mapping[str, ClusterNetworkPolicy],
) -> tuple[list[ClusterNetworkPolicy], dict[int, RuleRef], dict[tuple[str, int, int], tuple[int, int]]]:
    """The policies in order, their rules by reference, and (policy name, direction, rule index)
    -> (rank, ref)."""
    ordered_policies = ordered(policies.values())
    rules: dict[int, RuleRef] = {}
    place: dict[tuple[str, int, int], tuple[int, int]] = {}
    ranks = rule_ranks(ordered_policies)
    for pol in ordered_policies:
        for direction, written in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
            for rule in written:
                ref = cnp_rule_ref(pol.name, direction, rule.index)
                rules.setdefault(ref, RuleRef("", pol.name, direction, rule.index, pol.tier, rule.name))
                place[(pol.name, direction, rule.index)] = (ranks[(pol.name, direction, rule.index)], ref)
    return ordered_policies, rules, place


def _patterns(policies: Iterable[ClusterNetworkPolicy]) -> list[str]:
    """Every domainNames pattern of every Accept rule."""
    return [d for pol in policies for rule in pol.egress for peer in rule.peers for d in peer.domains]


def ip_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text)
