"""Policy entries (stage 7 of the compiler): per rule, per endpoint, and each node's endpoints.

- Each endpoint (an active pod on the node with an IP) is isolated for a direction when any
  policy of its namespace selects it and has that policy type. Only isolated directions get
  entries; a policy that selects a pod but lacks a type contributes nothing for it.
- A rule contributes (peer identity x port spec) entries: peers omitted/empty -> identity 0
  (any peer); selector peers -> the pod identities they select (stages/selection.py); ipBlock
  -> the CIDR identities it carves (stages/cidr.py). Ports: none -> proto 0 (every protocol,
  every port); protocol only -> (proto, any port); numeric port -> exact (plen 16);
  port..endPort -> minimal aligned prefixes; ingress named ports resolve on the endpoint
  itself, egress named ports on their destinations (stages/named_ports.py).
- When two rules produce the same key, the first in (policy namespace/name, direction, rule
  index) order keeps its rule reference; verdicts are all ALLOW, so the winner only affects
  which rule an event names.

Rule entry maps are built once per rule (per named-port resolution for ingress named ports);
endpoint entry maps are shared (read-only MappingProxyType) between endpoints with the same
identity and port resolution; keys are interned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controller.compiler.desired_state import EndpointDesired, PolicyEntryKey, PolicyEntryValue
from controller.compiler.model import NetworkPolicy, Pod, Rule
from controller.compiler.portrange import range_to_prefixes
from controller.compiler.stages.cidr import CidrTables
from controller.compiler.stages.identities import IdentityTables
from controller.compiler.stages.named_ports import NamedPorts
from controller.compiler.stages.policies import rule_ref
from controller.compiler.stages.selection import PeerSelector, Selection
from controller.compiler.stages.tiers import Tiers
from controller.core.identities import ID_ANY
from controller.core.net import L4_PROTOCOLS
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, VERDICT_ALLOW

PortSpec = tuple[int, int, int]  # (proto, port, port_plen)
Entries = Mapping[PolicyEntryKey, PolicyEntryValue]
KeyTuple = tuple[int, int, int, int, int]


def numeric_port_specs(rule: Rule) -> list[PortSpec]:
    """Port specs of a rule's numeric / protocol-only ports ([(0, 0, 0)] for a rule without ports)."""
    if not rule.ports:
        return [(0, 0, 0)]
    out: list[PortSpec] = []
    for p in rule.ports:
        proto = L4_PROTOCOLS[p.protocol]
        if p.port is None:
            out.append((proto, 0, 0))
        elif isinstance(p.port, int):
            if p.end_port is not None and p.end_port != p.port:
                out.extend((proto, port, plen) for port, plen in range_to_prefixes(p.port, p.end_port))
            else:
                out.append((proto, p.port, 16))
    return out


def ingress_named(rule: Rule, pod: Pod) -> tuple[PortSpec, ...]:
    """A rule's ingress named ports resolved on the endpoint `pod`."""
    out: list[PortSpec] = []
    for p in rule.ports:
        if isinstance(p.port, str):
            proto = L4_PROTOCOLS[p.protocol]
            out.extend((proto, n, 16) for n in pod.resolve_named_port(p.port, p.protocol))
    return tuple(sorted(set(out)))


class RuleEntries:
    """Entries of rules and endpoints under one compilation's tables (caches per compilation;
    `keys`, the interned PolicyEntryKeys, a pure function of their fields, may be shared)."""

    def __init__(
        self,
        identities: IdentityTables,
        selection: Selection,
        selector: PeerSelector,
        cidr: CidrTables,
        named: NamedPorts,
        keys: dict[KeyTuple, PolicyEntryKey] | None = None,
    ) -> None:
        self.pod_identity = identities.pod_identity
        self.policies_for_identity = selection.policies_for_identity
        self.selector = selector
        self.cidr = cidr
        self.named = named
        self.keys: dict[KeyTuple, PolicyEntryKey] = {} if keys is None else keys
        self._rules: dict[tuple[Any, ...], dict[PolicyEntryKey, PolicyEntryValue]] = {}
        self._templates: dict[tuple[Any, ...], dict[PolicyEntryKey, None]] = {}
        self._merged: dict[tuple[Any, ...], Entries] = {}

    def rule_peer_identities(self, pol: NetworkPolicy, rule: Rule) -> set[int]:
        if not rule.peers:
            return {ID_ANY}
        out: set[int] = set()
        for peer in rule.peers:
            if peer.ip_block is not None:
                out |= self.cidr.block_identities(peer.ip_block)
            else:
                out |= self.selector.peer_identities(pol.namespace, peer)
        return out

    def entry_key(self, direction: int, ident: int, proto: int, port: int, plen: int) -> PolicyEntryKey:
        """Interned PolicyEntryKey: equal keys are one object, so dict merges compare by identity."""
        t = (direction, ident, proto, port, plen)
        k = self.keys.get(t)
        if k is None:
            k = PolicyEntryKey(direction, ident, proto, port, plen)
            self.keys[t] = k
        return k

    def rule_entries(
        self, pol: NetworkPolicy, direction: int, rule: Rule, named: tuple[PortSpec, ...]
    ) -> dict[PolicyEntryKey, PolicyEntryValue]:
        """Entries of one rule; `named` = ingress named ports resolved on the endpoint.

        The returned dict is cached and shared: never mutate it."""
        key = (pol.key, direction, rule.index, named)
        hit = self._rules.get(key)
        if hit is not None:
            return hit
        value = PolicyEntryValue(VERDICT_ALLOW, rule_ref(pol.namespace, pol.name, direction, rule.index))
        specs = tuple(numeric_port_specs(rule)) + named
        peer_ids = frozenset(self.rule_peer_identities(pol, rule)) if specs else frozenset()
        tokens = self.named.egress_named.get((pol.key, rule.index), ()) if direction == DIR_EGRESS else ()
        tkey = (direction, peer_ids, specs, tokens)
        template = self._templates.get(tkey)
        if template is None:
            template = {}
            for ident in sorted(peer_ids):
                for proto, port, plen in specs:
                    template[self.entry_key(direction, ident, proto, port, plen)] = None
            for tok in tokens:
                for target, proto, port in self.named.targets[tok]:
                    if target.identity is not None:
                        dest = target.identity
                    else:
                        assert target.prefix is not None
                        dest = self.cidr.cidr_identity[target.prefix]
                    template[self.entry_key(direction, dest, proto, port, 16)] = None
            self._templates[tkey] = template
        out = dict.fromkeys(template, value)  # reuses the template's stored hashes
        self._rules[key] = out
        return out

    def endpoint_entries(self, pod: Pod) -> tuple[bool, bool, Entries, list[str]]:
        """(ingress isolated, egress isolated, entries, selecting policy keys) of an active pod."""
        ident = self.pod_identity[pod.key]
        pols = self.policies_for_identity.get(ident, [])
        ingress_iso = any(p.isolates_ingress for p in pols)
        egress_iso = any(p.isolates_egress for p in pols)
        parts: list[tuple[NetworkPolicy, int, Rule, tuple[PortSpec, ...]]] = []
        for pol in pols:
            if pol.isolates_ingress:
                for rule in pol.ingress:
                    named = ingress_named(rule, pod) if rule.has_named_ports else ()
                    parts.append((pol, DIR_INGRESS, rule, named))
            if pol.isolates_egress:
                parts.extend((pol, DIR_EGRESS, rule, ()) for rule in pol.egress)
        mkey = tuple((pol.key, d, r.index, named) for pol, d, r, named in parts)
        merged = self._merged.get(mkey)
        if merged is None:
            maps = [self.rule_entries(pol, d, r, named) for pol, d, r, named in parts]
            maps = [m for m in maps if m]
            if len(maps) == 1:
                merged = MappingProxyType(maps[0])
            else:
                # Earlier rules win on equal keys: update in reverse order (C speed, no re-hashing).
                acc: dict[PolicyEntryKey, PolicyEntryValue] = {}
                for m in reversed(maps):
                    acc.update(m)
                merged = MappingProxyType(acc)
            self._merged[mkey] = merged
        return ingress_iso, egress_iso, merged, [p.key for p in pols]


@dataclass(frozen=True)
class _Before:
    """What NodeEndpoints reuses from the previous compilation's (never that object itself:
    each would keep the one before it alive)."""

    endpoints: Mapping[str, dict[str, EndpointDesired]] = field(default_factory=dict)
    local_pods: Mapping[str, list[Pod]] = field(default_factory=dict)
    changed_pods: frozenset[str] | None = None
    stable: bool = False  # every unchanged pod's endpoint is the previous one


class NodeEndpoints:
    """Each node's endpoints, built on first request. An endpoint equal to the one the previous
    compilation gave is that very object, so the sync layer can tell unchanged endpoints by
    identity; with `stable` (nothing an endpoint's entries depend on changed but its own pod)
    every unchanged pod's previous endpoint is handed out without being computed again."""

    def __init__(
        self,
        entries: RuleEntries,
        pods: Mapping[str, Pod],
        policy_map: Mapping[str, NetworkPolicy],
        tiers: Tiers,
        previous: NodeEndpoints | None = None,
        changed_pods: frozenset[str] | None = None,
        stable: bool = False,
    ) -> None:
        self.entries = entries
        self.pods = pods
        self.policy_map = policy_map
        self.tiers = tiers
        self._endpoints: dict[str, dict[str, EndpointDesired]] = {}
        self._local: dict[str, list[Pod]] = {}
        if previous is None:
            self._before = _Before()
        else:
            self._before = _Before(previous._endpoints, previous._local, changed_pods, stable)

    def local(self, node: str) -> list[Pod]:
        """The node's active pods with an address, by key (from the previous compilation's
        list and the changed pods when there is one)."""
        got = self._local.get(node)
        if got is not None:
            return got
        before = self._before
        old = before.local_pods.get(node)
        if old is not None and before.changed_pods is not None:
            changed = before.changed_pods
            got = [p for p in old if p.key not in changed]
            for key in changed:
                pod = self.pods.get(key)
                if pod is not None and pod.node == node and pod.active and pod.ips:
                    got.append(pod)
        else:
            got = [p for p in self.pods.values() if p.node == node and p.active and p.ips]
        got.sort(key=lambda p: p.key)
        self._local[node] = got
        return got

    def _audit_only(self, policy_keys: Sequence[str]) -> tuple[bool, bool]:
        """Per direction: every policy that isolates it is in audit mode (vacuously true if none)."""
        pols = [self.policy_map[k] for k in policy_keys]
        return (
            all(p.audit for p in pols if p.isolates_ingress),
            all(p.audit for p in pols if p.isolates_egress),
        )

    def for_node(self, node: str) -> dict[str, EndpointDesired]:
        endpoints: dict[str, EndpointDesired] = {}
        before = self._before
        old_endpoints = before.endpoints.get(node, {})
        unchanged_but = before.changed_pods if before.stable else None
        for pod in self.local(node):
            if unchanged_but is not None and pod.key not in unchanged_but:
                kept = old_endpoints.get(pod.key)
                if kept is not None:
                    endpoints[pod.key] = kept
                    continue
            ing, egr, entries, pols = self.entries.endpoint_entries(pod)
            ing_audit, egr_audit = self._audit_only(pols)
            identity = self.entries.pod_identity[pod.key]
            old = old_endpoints.get(pod.key)
            tiers = self.tiers.endpoint(
                identity, pod, self.entries.entry_key, entries, old.tier_profile if old is not None else 0
            )
            ep = EndpointDesired(
                pod=pod.key,
                identity=identity,
                ingress_isolated=ing,
                egress_isolated=egr,
                ipv4=pod.ipv4,
                ipv6=pod.ipv6,
                entries=entries,
                policies=tuple(pols),
                ingress_audit=ing and ing_audit,
                egress_audit=egr and egr_audit,
                ingress_tiered=tiers.ingress,
                egress_tiered=tiers.egress,
                cluster_policies=tuple(p.name for p in self.tiers.policies_for(identity)),
                tier_profile=tiers.profile,
                ingress_calico=tiers.ingress_calico,
                egress_calico=tiers.egress_calico,
                calico_policies=self.tiers.calico_policies_for(identity),
                calico_log=tiers.calico_log,
                dns=tiers.dns,
            )
            endpoints[pod.key] = old if old is not None and old == ep else ep
        self._endpoints[node] = endpoints
        return endpoints
