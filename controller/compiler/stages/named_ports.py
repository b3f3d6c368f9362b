"""Egress named ports (stage 4 of the compiler), resolved on the destination pods.

A named port resolves on the DESTINATION pod's container ports (name and protocol match); for
egress on every destination pod the rule's peers reach. A destination identity whose active
pods (with IPs) all map the name the same way gets (identity, port) targets; otherwise each pod
gets targets on an exact per-pod prefix (/32, /128), which joins the policy prefixes and so
gets its own CIDR identity. For ipBlock peers the per-pod prefix is always used (only the
addresses inside the block are meant). A pod without that name contributes nothing.

Each distinct (destination identities, ipBlocks, name, protocol) is resolved once and numbered
(a token); `egress_named[(policy key, rule index)]` holds the rule's tokens and `targets[token]`
its (target, proto, port) triples. Ingress named ports resolve on the endpoint itself
(stages/entries.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.compiler.model import IPBlock, NetworkPolicy, Rule
from controller.compiler.stages.cidr import host_prefix
from controller.compiler.stages.identities import IdentityTables
from controller.compiler.stages.selection import PeerSelector
from controller.core.net import L4_PROTOCOLS, IPNetwork


@dataclass(frozen=True)
class Target:
    """A destination of an egress named port: a pod identity or an exact per-pod prefix."""

    identity: int | None = None
    prefix: IPNetwork | None = None


Targets = tuple[tuple[Target, int, int], ...]  # (target, proto, port)
ByIdentity = dict[int, tuple[int, ...] | None]  # identity -> its pods' port numbers (None: they differ)
ResolutionKey = tuple[frozenset[int], tuple[IPBlock, ...], str, str]


class _Resolver:
    """One compilation's resolutions; with a previous compilation's per-name tables as a base,
    only the `touched` identities (whose pods changed) are looked at again."""

    def __init__(
        self, identities: IdentityTables, base: Mapping[tuple[str, str], ByIdentity], touched: frozenset[int]
    ):
        self.pods_by_identity = identities.pods_by_identity
        self.base = base
        self.touched = touched
        self.by_name: dict[tuple[str, str], ByIdentity] = {}

    def by_identity(self, name: str, protocol: str) -> ByIdentity:
        """identity -> the port numbers all its pods (with IPs) give `name`; None = they differ.
        Identities whose pods lack the name are absent."""
        key = (name, protocol)
        hit = self.by_name.get(key)
        if hit is not None:
            return hit
        base = self.base.get(key)
        if base is not None:
            res = dict(base)
            for ident in self.touched:
                res.pop(ident, None)
                self._name_identity(res, ident, name, protocol)
        else:
            res = {}
            for ident in self.pods_by_identity:
                self._name_identity(res, ident, name, protocol)
        self.by_name[key] = res
        return res

    def _name_identity(self, res: ByIdentity, ident: int, name: str, protocol: str) -> None:
        pods = self.pods_by_identity.get(ident)
        if not pods:
            return
        resolved = {p.resolve_named_port(name, protocol) for p in pods if p.ips}
        if len(resolved) > 1:
            res[ident] = None
        elif resolved:
            nums = next(iter(resolved))
            if nums:
                res[ident] = nums

    def targets(
        self,
        idents: frozenset[int],
        blocks: tuple[IPBlock, ...],
        name: str,
        protocol: str,
        exact: set[IPNetwork],
    ) -> Targets:
        """Destinations of one egress named port; the per-pod prefixes used are added to `exact`."""
        proto = L4_PROTOCOLS[protocol]
        by_ident = self.by_identity(name, protocol)
        out: list[tuple[Target, int, int]] = []
        for ident in sorted(idents.intersection(by_ident)):
            nums = by_ident[ident]
            if nums is not None:
                out.extend((Target(identity=ident), proto, n) for n in nums)
                continue
            for pod in self.pods_by_identity[ident]:
                pod_nums = pod.resolve_named_port(name, protocol)
                for ip in pod.ips if pod_nums else ():
                    pfx = host_prefix(ipaddress.ip_address(ip))
                    exact.add(pfx)
                    out.extend((Target(prefix=pfx), proto, n) for n in pod_nums)
        if blocks:
            for ident in sorted(by_ident):
                for pod in self.pods_by_identity[ident]:
                    pod_nums = pod.resolve_named_port(name, protocol)
                    if not pod_nums:
                        continue
                    for ip in pod.ips:
                        addr = ipaddress.ip_address(ip)
                        if any(b.contains(addr) for b in blocks):
                            pfx = host_prefix(addr)
                            exact.add(pfx)
                            out.extend((Target(prefix=pfx), proto, n) for n in pod_nums)
        return tuple(out)


@dataclass(frozen=True)
class NamedPorts:
    egress_named: dict[tuple[str, int], tuple[int, ...]]  # (policy key, rule index) -> tokens
    targets: list[Targets]  # by token
    by_name: dict[tuple[str, str], ByIdentity]  # (name, protocol) -> per-identity resolution
    resolved: dict[ResolutionKey, tuple[Targets, frozenset[IPNetwork]]]
    exact: frozenset[IPNetwork]  # the exact per-pod prefixes the targets use
    changed: bool  # whether any resolution differs from the previous compilation's (or is new)

    @classmethod
    def build(
        cls,
        named_rules: Sequence[tuple[NetworkPolicy, Rule]],
        identities: IdentityTables,
        selector: PeerSelector,
    ) -> NamedPorts:
        return _resolve(named_rules, identities, selector, None, frozenset())

    def update(
        self,
        named_rules: Sequence[tuple[NetworkPolicy, Rule]],
        identities: IdentityTables,
        selector: PeerSelector,
        touched: frozenset[int],
        inputs_changed: bool,
    ) -> NamedPorts:
        """The resolutions from these: one is reused unless a `touched` identity (one whose pods
        changed) could be among its destinations (any, for an ipBlock). Without `inputs_changed`
        (same rules, no pod changed, same indexes), these very resolutions."""
        if not inputs_changed:
            return self if not self.changed else dataclasses.replace(self, changed=False)
        return _resolve(named_rules, identities, selector, self, touched)


def _resolve(
    named_rules: Sequence[tuple[NetworkPolicy, Rule]],
    identities: IdentityTables,
    selector: PeerSelector,
    previous: NamedPorts | None,
    touched: frozenset[int],
) -> NamedPorts:
    resolver = _Resolver(identities, previous.by_name if previous is not None else {}, touched)
    old_resolved = previous.resolved if previous is not None else {}
    resolved: dict[ResolutionKey, tuple[Targets, frozenset[IPNetwork]]] = {}
    egress_named: dict[tuple[str, int], tuple[int, ...]] = {}
    targets: list[Targets] = []
    token_of: dict[tuple[Any, ...], int] = {}
    exact: set[IPNetwork] = set()
    changed = previous is None
    for pol, rule in named_rules:
        if not rule.peers:
            idents: frozenset[int] = frozenset(identities.pods_by_identity)
        else:
            # One selector peer: its cached set itself, the same object while its selection is the
            # same, so the lookup below hashes and compares nothing (a rebuilt set is O(size)).
            sets = [selector.peer_identities(pol.namespace, p) for p in rule.peers if p.ip_block is None]
            idents = sets[0] if len(sets) == 1 else frozenset().union(*sets)
        blocks = tuple(peer.ip_block for peer in rule.peers if peer.ip_block is not None)
        tokens: list[int] = []
        for pport in rule.ports:
            if not isinstance(pport.port, str):
                continue
            tkey = (idents, blocks, pport.port, pport.protocol)
            tok = token_of.get(tkey)
            if tok is None:
                tok = len(targets)
                token_of[tkey] = tok
                hit = old_resolved.get(tkey)
                if hit is None or (blocks and touched) or not idents.isdisjoint(touched):
                    mine: set[IPNetwork] = set()
                    found = resolver.targets(idents, blocks, pport.port, pport.protocol, mine)
                    changed |= hit is None or hit[0] != found
                    hit = (found, frozenset(mine))
                resolved[tkey] = hit
                targets.append(hit[0])
                exact |= hit[1]
            tokens.append(tok)
        egress_named[(pol.key, rule.index)] = tuple(tokens)
    changed |= len(resolved) != len(old_resolved)
    return NamedPorts(egress_named, targets, resolver.by_name, resolved, frozenset(exact), changed)
