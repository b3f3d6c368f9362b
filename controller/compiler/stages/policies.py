"""Policy tables: what depends on the policies alone (stage 1 of the compiler).

Policies by namespace, rule references (rule_ref -> RuleRef), the egress rules with named
ports, and the ipBlock prefixes (CIDR and excepts) every policy names. Per-policy facts are
reused while the policy is the same object.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from controller.compiler.desired_state import RuleRef
from controller.compiler.model import NetworkPolicy, Rule
from controller.core.net import IPNetwork
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS

DIRECTION_NAMES = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}

# (the policy, its egress rules with named ports, the ipBlock prefixes it names)
PolicyFact = tuple[NetworkPolicy, tuple[Rule, ...], frozenset[IPNetwork]]
PolicyRuleRefs = tuple[NetworkPolicy, tuple[tuple[int, RuleRef], ...]]


def rule_ref(namespace: str, name: str, direction: int, index: int) -> int:
    """The rule reference carried in policy values and events."""
    return zlib.crc32(f"{namespace}/{name}/{DIRECTION_NAMES[direction]}/{index}".encode()) & 0x7FFFFFFF


def policy_fact(pol: NetworkPolicy) -> PolicyFact:
    egress_named = tuple(r for r in pol.egress if r.has_named_ports) if pol.isolates_egress else ()
    prefixes: set[IPNetwork] = set()
    for rule in (*pol.ingress, *pol.egress):
        for peer in rule.peers:
            if peer.ip_block is not None:
                prefixes.add(peer.ip_block.cidr)
                prefixes.update(peer.ip_block.excepts)
    return (pol, egress_named, frozenset(prefixes))


def policy_rule_refs(pol: NetworkPolicy) -> PolicyRuleRefs:
    refs: list[tuple[int, RuleRef]] = []
    for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
        for rule in rules:
            ref = rule_ref(pol.namespace, pol.name, direction, rule.index)
            refs.append((ref, RuleRef(pol.namespace, pol.name, direction, rule.index)))
    return (pol, tuple(refs))


def _rule_refs(
    policies: list[NetworkPolicy], old: Mapping[str, PolicyRuleRefs]
) -> tuple[dict[int, RuleRef], dict[str, PolicyRuleRefs]]:
    """rule_ref -> RuleRef of every rule (the first rule in policy order keeps a reference)."""
    rules: dict[int, RuleRef] = {}
    per_policy: dict[str, PolicyRuleRefs] = {}
    for pol in policies:
        hit = old.get(pol.key)
        if hit is None or hit[0] is not pol:
            hit = policy_rule_refs(pol)
        per_policy[pol.key] = hit
        for ref, rr in hit[1]:
            rules.setdefault(ref, rr)
    return rules, per_policy


@dataclass(frozen=True)
class PolicyTables:
    policies: list[NetworkPolicy]  # by key
    by_namespace: dict[str, list[NetworkPolicy]]  # each list by key
    facts: dict[str, PolicyFact]
    named_rules: list[tuple[NetworkPolicy, Rule]]  # egress rules with named ports, in policy order
    block_prefixes: frozenset[IPNetwork]
    rules: dict[int, RuleRef]
    rule_refs: dict[str, PolicyRuleRefs]

    @classmethod
    def build(cls, policy_map: Mapping[str, NetworkPolicy]) -> PolicyTables:
        policies = sorted(policy_map.values(), key=lambda p: p.key)
        by_ns: dict[str, list[NetworkPolicy]] = {}
        facts: dict[str, PolicyFact] = {}
        named: list[tuple[NetworkPolicy, Rule]] = []
        blocks: set[IPNetwork] = set()
        for pol in policies:
            by_ns.setdefault(pol.namespace, []).append(pol)
            fact = policy_fact(pol)
            facts[pol.key] = fact
            named.extend((pol, rule) for rule in fact[1])
            blocks |= fact[2]
        rules, refs = _rule_refs(policies, {})
        return cls(policies, by_ns, facts, named, frozenset(blocks), rules, refs)

    def update(self, policy_map: Mapping[str, NetworkPolicy], changed: frozenset[str]) -> PolicyTables:
        """The tables of `policy_map`, whose policies other than `changed` (keys) are this
        compilation's objects: only the changed policies' facts and namespaces are redone."""
        if not changed:
            return self
        policies = sorted(policy_map.values(), key=lambda p: p.key)
        facts = dict(self.facts)
        by_ns = dict(self.by_namespace)
        blocks_changed = False
        for key in changed:
            old = facts.pop(key, None)
            pol = policy_map.get(key)
            namespace = key.split("/", 1)[0]
            members = [p for p in by_ns.get(namespace, ()) if p.key != key]
            if pol is not None:
                facts[key] = policy_fact(pol)
                members.append(pol)
                members.sort(key=lambda p: p.key)
            if members:
                by_ns[namespace] = members
            else:
                by_ns.pop(namespace, None)
            blocks_changed |= bool(old is not None and old[2]) or bool(pol is not None and facts[key][2])
        named = [(pol, rule) for pol in policies for rule in facts[pol.key][1]]
        blocks = frozenset().union(*(f[2] for f in facts.values())) if blocks_changed else self.block_prefixes
        rules, refs = _rule_refs(policies, self.rule_refs)
        return PolicyTables(policies, by_ns, facts, named, blocks, rules, refs)
