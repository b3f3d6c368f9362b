"""ClusterNetworkPolicy tiers (a stage of the compiler): the ordered decision, precomputed per
endpoint into its policy entries, so the datapath decides with four lookups whatever the
number of policies, tiers and rules (docs/INTERNALS.md "Tiers").

- Order: Admin policies, then Baseline; within a tier ascending priority, ties by name, then
  rules in written order. Every rule gets a rank (following its tier's order) and a rule
  reference (stages/cnp_tables.py, with the other node-independent tables); a packet's answer
  in a tier is its matching rule of lowest rank.
- A rule contributes (peer identity x port spec) keys with its tier, action, rank and reference:
  a peer selecting every pod of some namespaces (`namespaces`, or `pods` with an empty pod
  selector) -> their namespace identities (a pod address's ipcache entry carries its
  namespace's); other `pods` peers -> the pod identities they select (host-network pods have
  neither);
  `networks` -> the CIDR identities of every policy prefix inside them (pod and node addresses
  carry theirs too); `nodes` -> the exact prefixes of the selected nodes' addresses (InternalIP and
  ExternalIP: every IP of status.addresses). Ports: none
  -> every protocol and port; a port or range -> its aligned prefixes; a named port -> resolved
  on the endpoint for ingress, on each destination pod for egress (keyed by that pod's exact
  prefix). A failed-closed Deny/Pass rule is a Deny of every peer and port; an Accept that
  matches nothing contributes nothing.
- Tier profiles: the entries of every rule of the policies selecting an endpoint are keyed by a
  profile id (TIER_PROFILE_BIT | hash) instead of the endpoint's, and shared by every endpoint
  the same policies select (with the same named-port resolution): a cluster-wide policy costs
  its entries once per node. NetworkPolicy's entries stay the endpoint's own.
- fold(): the LPM map returns only the longest match of one identity, so every key carries, per
  tier, the best rule among the keys of the same identity that cover it. ClusterNetworkPolicy
  profiles are folded per identity signature and carried across compilations by
  stages/tier_profiles.py (fold() is its reference, and folds Calico's profiles).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from controller.compiler.calico import CalicoPolicy, HostEndpoint
from controller.compiler.cnp import ACCEPT, DENY, PASS, TIERS, ClusterNetworkPolicy, CnpPeer, CnpRule
from controller.compiler.desired_state import (
    HostEndpointDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    ProfileChange,
    RuleRef,
)
from controller.compiler.model import IPBlock, Pod
from controller.compiler.stages.calico_tier import LOG_ACTION, CalicoTier
from controller.compiler.stages.cidr import CidrTables, host_prefix
from controller.compiler.stages.cnp_tables import ALL_PORTS, CnpTables, PortSpec, ip_address, resolve_named
from controller.compiler.stages.cnp_tables import cnp_rule_ref as cnp_rule_ref  # (re-exported)
from controller.compiler.stages.cnp_tables import named_ports as _named
from controller.compiler.stages.cnp_tables import port_specs as _port_specs
from controller.compiler.stages.tier_profiles import RulePart, TierMemo
from controller.core.identities import ID_ANY
from controller.core.verdicts import (
    DIR_EGRESS,
    DIR_INGRESS,
    TIER_ACCEPT,
    TIER_DENY,
    TIER_PASS,
    TIER_PROFILE_BIT,
    VERDICT_ALLOW,
)

ADMIN, BASELINE, CALICO, LOG = 0, 1, 2, 3  # slots of a folded value (CnP tiers, Calico's, its Log rules)
SLOTS = 4
_ACTIONS = {ACCEPT: TIER_ACCEPT, DENY: TIER_DENY, PASS: TIER_PASS}

KeyTuple = tuple[int, int, int, int, int]  # (direction, identity, proto, port, port_plen)


@dataclass(frozen=True, slots=True)
class Contribution:
    """One key of one rule: in `tier`, `action` at `rank` (lower decides), named by `ref`."""

    key: KeyTuple
    tier: int
    action: int
    rank: int
    ref: int


ProfileKey = tuple[object, ...]  # what a profile's entries are a function of (hashed to its id)


class EndpointTiers(NamedTuple):
    ingress: bool  # the tiers decide the direction's new flows (EP_F_*_TIERED)
    egress: bool
    profile: int  # tier profile id, 0 without one
    ingress_calico: bool = False  # Calico's tier polices the direction (EP_F_*_CALICO)
    egress_calico: bool = False
    calico_log: bool = False  # the profile has Calico Log rules (EP_F_CALICO_LOG)
    dns: bool = False  # the profile has domainNames rules: the pod learns from DNS (EP_F_DNS)


NOT_TIERED = EndpointTiers(False, False, 0)
Entries = Mapping[PolicyEntryKey, PolicyEntryValue]


class Tiers:
    """Per endpoint: which directions the tiers police and its tier profile, the entries of
    every rule of every policy that selects it, shared by every endpoint selected by the same
    policies with the same named-port resolution (computed on first use)."""

    def __init__(
        self,
        tables: CnpTables,
        cidr: CidrTables,
        calico: CalicoTier | None = None,
        np_rules: Mapping[int, RuleRef] | None = None,
        memo: TierMemo | None = None,
    ) -> None:
        self.tables = tables
        self.np_rules = np_rules or {}
        self.cidr = cidr
        self.calico = calico
        self.rules = {**tables.rules, **(calico.tables.rules if calico is not None else {})}
        self._np_sigs: dict[int, tuple[Entries, int]] = {}
        self.memo = memo if memo is not None else TierMemo()
        self._node_idents: dict[object, frozenset[int]] = {}  # a `nodes` selector's CIDR identities
        self._part_cache: dict[tuple[str, int, int, tuple[PortSpec, ...]], RulePart | None] = {}
        self._endpoint_cache: dict[tuple[object, ...], EndpointTiers] = {}
        self._profile_ids: dict[ProfileKey, int] = {}
        self._taken: set[int] = set()
        self.profiles: dict[int, Mapping[PolicyEntryKey, PolicyEntryValue]] = {}
        self.changes: dict[int, ProfileChange] = {}  # how some profiles' entries were derived

    def policies_for(self, identity: int) -> list[ClusterNetworkPolicy]:
        """The policies whose subject selects the identity, in order."""
        return self.tables.policies_selecting(identity)[0]

    def calico_policies_for(self, identity: int) -> tuple[str, ...]:
        if self.calico is None:
            return ()
        return tuple(p.object for p in self.calico.tables.selecting(identity))

    def _peer_identities(self, peer: CnpPeer) -> frozenset[int]:
        if peer.kind == "networks":
            out: set[int] = set()
            for net in peer.networks:
                out |= self.cidr.block_identities(IPBlock(net))
            return frozenset(out)
        if peer.kind == "nodes":
            got = self._node_idents.get(peer.nodes)
            if got is None:
                ids = self.cidr.cidr_identity
                got = self._node_idents[peer.nodes] = frozenset(
                    ids[n] for n in self.tables.node_prefixes(peer)
                )
            return got
        if peer.kind == "domainNames":  # the classes of names each pattern matches
            return frozenset().union(*(self.tables.domains.identities(d) for d in peer.domains))
        return self.tables.peer_identities(peer)

    def _part(
        self, pol: ClusterNetworkPolicy, direction: int, rule: CnpRule, own_named: tuple[PortSpec, ...]
    ) -> RulePart | None:
        """The rule's share of a profile (None: it matches nothing); once per compilation and
        (rule, named-port resolution), interned in the memo."""
        ckey = (pol.name, direction, rule.index, own_named)
        if ckey in self._part_cache:
            return self._part_cache[ckey]
        rank, ref = self.tables.place[(pol.name, direction, rule.index)]
        head = (TIERS.index(pol.tier), _ACTIONS[rule.action], rank, ref)
        part: RulePart | None = None
        if rule.matches_nothing:
            pass
        elif rule.deny_all:
            part = RulePart(direction, (head[0], TIER_DENY, rank, ref), ALL_PORTS, frozenset((ID_ANY,)))
        else:
            specs = _port_specs(rule)
            if direction == DIR_INGRESS:
                specs = specs + own_named
            idents: frozenset[int] = frozenset()
            if specs:
                peers = [self._peer_identities(peer) for peer in rule.peers]
                idents = peers[0] if len(peers) == 1 else frozenset().union(*peers)
            extra: list[tuple[int, tuple[PortSpec, ...]]] = []
            if direction == DIR_EGRESS and _named(rule):
                for pod, resolved in self.tables.named_targets(rule):
                    for ip in pod.ips:
                        extra.append((self.cidr.cidr_identity[host_prefix(ip_address(ip))], resolved))
            if idents or extra:
                part = RulePart(direction, head, specs, idents, tuple(extra))
        if part is not None:
            part = self.memo.part(part)
        self._part_cache[ckey] = part
        return part

    def _parts(self, pols: Sequence[ClusterNetworkPolicy], pod: Pod) -> tuple[RulePart, ...]:
        out: list[RulePart] = []
        for pol in pols:
            for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
                for rule in rules:
                    own_named = resolve_named(pod, _named(rule)) if direction == DIR_INGRESS else ()
                    part = self._part(pol, direction, rule, own_named)
                    if part is not None:
                        out.append(part)
        return tuple(out)

    def endpoint(
        self,
        identity: int,
        pod: Pod,
        intern: Callable[[int, int, int, int, int], PolicyEntryKey],
        np_entries: Entries | None = None,
        previous_profile: int = 0,
    ) -> EndpointTiers:
        """The tiers of an endpoint with this identity; the profile's entries are in `profiles`
        (interned keys from `intern`). `np_entries`: the endpoint's NetworkPolicy entries, which
        join Calico's tier at their policies' rank where Calico polices a direction.
        `previous_profile`: its profile id in the previous compilation (a new profile is patched
        from that one's entries where it can be)."""
        pols, names = self.tables.policies_selecting(identity)
        cal_in, cal_eg = self.calico.directions(identity) if self.calico is not None else (False, False)
        if not pols and not cal_in and not cal_eg:
            return NOT_TIERED
        own = resolve_named(pod, names) if names else ()
        cal_own = (
            self.calico.named_own(identity, pod) if self.calico is not None and (cal_in or cal_eg) else ()
        )
        np_sig = self._np_signature(np_entries) if np_entries and (cal_in or cal_eg) else 0
        key: tuple[object, ...] = (identity, own, cal_own, np_sig)
        hit = self._endpoint_cache.get(key)
        if hit is not None:
            return hit
        cal_pols = self.calico.tables.selecting(identity) if self.calico is not None else ()
        pkey: ProfileKey = (
            tuple(p.name for p in pols),
            own,
            tuple(p.object for p in cal_pols),
            self.calico.excluded(identity) if self.calico is not None and cal_pols else (),
            cal_own,
            (identity, np_sig) if np_sig else (),
        )
        profile = self._profile_ids.get(pkey)
        if profile is None:
            profile = self._allocate(pkey)
            parts = self._parts(pols, pod)
            if not cal_in and not cal_eg:
                state = self.memo.profile(pkey, parts, intern, previous_profile)
                self.memo.keys[profile] = pkey
                self.profiles[profile] = state.entries
                change = self.memo.changes.get(pkey)
                if change is not None:
                    self.changes[profile] = change
            else:
                out = [c for part in parts for c in _part_contributions(part)]
                out.extend(self._calico_contributions(identity, pod, np_entries, cal_in, cal_eg))
                self.profiles[profile] = MappingProxyType(fold(out, intern))
        hit = EndpointTiers(
            any(p.ingress for p in pols) or cal_in,
            any(p.egress for p in pols) or cal_eg,
            profile,
            cal_in,
            cal_eg,
            (cal_in or cal_eg) and any(v.log for v in self.profiles[profile].values()),
            self._learns_from_dns(pols),
        )
        self._endpoint_cache[key] = hit
        return hit

    def _learns_from_dns(self, pols: Sequence[ClusterNetworkPolicy]) -> bool:
        return any(peer.domains for pol in pols for rule in pol.egress for peer in rule.peers)

    def _calico_contributions(
        self, identity: int, pod: Pod, np_entries: Entries | None, cal_in: bool, cal_eg: bool
    ) -> list[Contribution]:
        """Calico's tier's contributions to a profile: its rules and the NetworkPolicy entries
        of the directions it polices, at their policy's rank."""
        assert self.calico is not None
        got, _ = self.calico.contributions(identity, pod)
        out = [
            Contribution(c.key, LOG if c.action == LOG_ACTION else CALICO, c.action, c.rank, c.ref)
            for c in got
        ]
        for k, v in (np_entries or {}).items():
            if (cal_in if k.direction == DIR_INGRESS else cal_eg) and v.verdict == VERDICT_ALLOW:
                rank = self._np_rank(v.rule_ref)
                key5 = (k.direction, k.identity, k.proto, k.port, k.port_plen)
                out.append(Contribution(key5, CALICO, TIER_ACCEPT, rank, v.rule_ref))
        return out

    def host_endpoint(
        self, hep: HostEndpoint, intern: Callable[[int, int, int, int, int], PolicyEntryKey]
    ) -> HostEndpointDesired:
        """A host endpoint's three policy sets as tier profiles (Calico slot only): its normal
        policies (traffic to and from the node), the applyOnForward ones, the preDNAT ones."""
        pols = self.calico.tables.hep_selecting(hep) if self.calico is not None else ()
        normal = tuple(p for p in pols if not p.pre_dnat)
        fwd = tuple(p for p in normal if p.apply_on_forward)
        pre = tuple(p for p in pols if p.pre_dnat)

        def profile(kind: str, subset: tuple[CalicoPolicy, ...]) -> int:
            if not subset or self.calico is None:
                return 0
            pkey: ProfileKey = (
                "hostendpoint",
                kind,
                tuple(p.object for p in subset),
                tuple(sorted(hep.labels.items())),
            )
            pid = self._profile_ids.get(pkey)
            if pid is None:
                pid = self._allocate(pkey)
                got = self.calico.hep_contributions(subset, hep)
                out = [
                    Contribution(c.key, LOG if c.action == LOG_ACTION else CALICO, c.action, c.rank, c.ref)
                    for c in got
                ]
                self.profiles[pid] = MappingProxyType(fold(out, intern))
            return pid

        return HostEndpointDesired(
            name=hep.name,
            interface=hep.interface_name,
            expected_ips=hep.expected_ips,
            profile_host=profile("host", normal),
            profile_fwd=profile("forward", fwd),
            profile_pre=profile("preDNAT", pre),
            ingress_fwd=any("Ingress" in p.types for p in fwd),
            egress_fwd=any("Egress" in p.types for p in fwd),
            pre_dnat=bool(pre),
            policies=tuple(p.object for p in pols),
        )

    def _np_rank(self, ref: int) -> int:
        """The rank of the NetworkPolicy of a rule in Calico's tier."""
        rr = self.np_rules[ref]
        assert self.calico is not None
        return self.calico.tables.np_rank[f"{rr.namespace}/{rr.policy}"]

    def _np_signature(self, entries: Entries) -> int:
        """A stable digest of an endpoint's NetworkPolicy entries (part of its profile's key:
        they join Calico's tier). Endpoints share their entries object: computed once each."""
        got = self._np_sigs.get(id(entries))
        if got is not None and got[0] is entries:
            return got[1]
        rows = sorted(
            (k.direction, k.identity, k.proto, k.port, k.port_plen, v.verdict, v.rule_ref)
            for k, v in entries.items()
        )
        sig = zlib.crc32(repr(rows).encode()) | 1
        self._np_sigs[id(entries)] = (entries, sig)
        return sig

    def _allocate(self, pkey: ProfileKey) -> int:
        """A profile id from a hash of its key (an agent restart reproduces it), probing past a
        collision."""
        n = zlib.crc32(repr(pkey).encode()) & ~TIER_PROFILE_BIT & 0xFFFFFFFF
        while (TIER_PROFILE_BIT | n) in self._taken or n == 0:
            n = (n + 1) & ~TIER_PROFILE_BIT & 0xFFFFFFFF
        profile = TIER_PROFILE_BIT | n
        self._taken.add(profile)
        self._profile_ids[pkey] = profile
        return profile


def _part_contributions(part: RulePart) -> Iterable[Contribution]:
    """A part's contributions, one per key (the fold's input)."""
    tier, action, rank, ref = part.head
    keys = [(part.direction, ident, *s) for ident in sorted(part.idents) for s in part.specs]
    keys += [(part.direction, ident, *s) for ident, specs in part.extra for s in specs]
    return (Contribution(k, tier, action, rank, ref) for k in dict.fromkeys(keys))


def _ancestors(key: KeyTuple) -> list[KeyTuple]:
    """The key and every shorter (protocol, port) prefix covering it, longest first."""
    direction, ident, proto, port, plen = key
    out = [key]
    for length in range(plen - 1, 0, -1):
        mask = (0xFFFF << (16 - length)) & 0xFFFF
        out.append((direction, ident, proto, port & mask, length))
    if plen > 0:
        out.append((direction, ident, proto, 0, 0))
    if proto != 0:
        out.append((direction, ident, 0, 0, 0))
    return out


def fold(
    contributions: Sequence[Contribution],
    intern: Callable[[int, int, int, int, int], PolicyEntryKey],
) -> dict[PolicyEntryKey, PolicyEntryValue]:
    """Every key of the contributions with the whole answer for its identity: per tier the
    lowest-ranked rule among the keys that cover it. `intern(direction, identity, proto, port,
    plen)` returns the shared PolicyEntryKey."""
    best: dict[KeyTuple, list[Contribution | None]] = {}
    for c in contributions:
        at = best.setdefault(c.key, [None] * SLOTS)
        cur = at[c.tier]
        if cur is None or c.rank < cur.rank:
            at[c.tier] = c
    out: dict[PolicyEntryKey, PolicyEntryValue] = {}
    for key in best:
        slots: list[Contribution | None] = [None] * SLOTS
        for anc in _ancestors(key):
            found = best.get(anc)
            if found is not None:
                for t in range(SLOTS):
                    got = found[t]
                    have = slots[t]
                    if got is not None and (have is None or got.rank < have.rank):
                        slots[t] = got
        admin, base, calico, log = slots
        out[intern(*key)] = PolicyEntryValue(
            verdict=0,
            rule_ref=0,
            admin=admin.action if admin else 0,
            admin_rank=admin.rank if admin else 0,
            admin_ref=admin.ref if admin else 0,
            baseline=base.action if base else 0,
            baseline_rank=base.rank if base else 0,
            baseline_ref=base.ref if base else 0,
            calico=calico.action if calico else 0,
            calico_rank=calico.rank if calico else 0,
            calico_ref=calico.ref if calico else 0,
            log=1 if log else 0,
            log_rank=log.rank if log else 0,
            log_ref=log.ref if log else 0,
        )
    return out
