"""The policy compiler: cluster model -> identities -> per-endpoint policy entries (pure).

Entry point: `compile_cluster(cluster)` does the node-independent work once (identities,
selector evaluation, ipBlock carving, named-port resolution, the cluster-wide ipcache) and is
cached on the ClusterState; `CompiledCluster.node_desired(node)` then builds the NodeDesired
for one node. `controller.compiler.compute(cluster, node)` is the two together.

How NetworkPolicy maps onto the policy map (docs/INTERNALS.md):

- Each endpoint (an active pod on the node with an IP) is isolated for a direction when any
  policy of its namespace selects it and has that policy type. Only isolated directions get
  entries; a policy that selects a pod but lacks a type contributes nothing for it.
- A rule contributes (peer identity x port spec) entries:
  - peers: omitted/empty from/to -> identity 0 (any peer); podSelector / namespaceSelector /
    both -> the pod identities of all active pods in the cluster they select; ipBlock {C, E}
    -> the CIDR identities of every policy prefix P of C's family with P ⊆ C and P ⊄ e for
    every e in E. Pod IPs carry the CIDR identity of their longest containing prefix in the
    ipcache, so ipBlocks match pod IPs (upstream semantics).
  - ports: none -> proto 0 (every protocol, every port); protocol only -> (proto, any port);
    numeric port -> exact (plen 16); port..endPort -> minimal aligned prefixes.
  - named ports resolve on the DESTINATION pod's container ports (name and protocol match):
    for ingress on the endpoint itself (so endpoints with different port maps get different
    entries); for egress on every destination pod the rule's peers reach. A destination
    identity whose active pods all map the name the same way gets (identity, port) entries;
    otherwise each pod gets entries on an exact per-pod prefix (/32, /128) that is added to
    the prefix set and so has its own CIDR identity (the pod's ipcache entry carries it).
    For ipBlock peers the per-pod prefix is always used (only the addresses inside the block
    are meant). A pod without that name contributes nothing.
- When two rules produce the same key, the first in (policy namespace/name, direction, rule
  index) order keeps its rule reference; verdicts are all ALLOW, so the winner only affects
  which rule an event names.
- rule_ref = crc32("<ns>/<name>/<ingress|egress>/<index>") & 0x7fffffff.

Performance: selectors are evaluated against inverted label indexes over pod identities
(not pods), results are cached per distinct selector, rule entry maps are built once per
rule (per named-port resolution for ingress named ports) and endpoint entry maps are shared
(read-only MappingProxyType) between endpoints with the same identity and port resolution.
"""

from __future__ import annotations

import bisect
import ipaddress
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from controller.compiler.desired_state import (
    EndpointDesired,
    IdentityInfo,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    RuleRef,
)
from controller.compiler.identity import (
    RESERVED_NAMES,
    PodIdentityKey,
    _encode_pod_key,
    allocate,
    allocate_cidr_identities,
    allocate_update,
    pod_identity_key,
)
from controller.compiler.model import (
    PROTOCOLS,
    ClusterDelta,
    ClusterState,
    IPBlock,
    NetworkPolicy,
    Peer,
    Pod,
    Rule,
)
from controller.compiler.portrange import range_to_prefixes
from controller.compiler.selectors import LabelIndex, LabelSelector
from controller.core.identities import ID_ANY, ID_HOST, ID_REMOTE_NODE, ID_WORLD, POD_ID_MAX, POD_ID_MIN
from controller.core.log import get_logger
from controller.core.net import IPNetwork
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, VERDICT_ALLOW

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = get_logger("vethguard.policy")

DIRECTION_NAMES = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}
DEFAULT_PRECEDENCE = 0
WORLD_V4 = ipaddress.ip_network("0.0.0.0/0")
WORLD_V6 = ipaddress.ip_network("::/0")

PortSpec = tuple[int, int, int]  # (proto, port, port_plen)
Entries = Mapping[PolicyEntryKey, PolicyEntryValue]


def rule_ref(namespace: str, name: str, direction: int, index: int) -> int:
    """The rule reference carried in policy values and events."""
    return zlib.crc32(f"{namespace}/{name}/{DIRECTION_NAMES[direction]}/{index}".encode()) & 0x7FFFFFFF


def host_prefix(addr: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


def numeric_port_specs(rule: Rule) -> list[PortSpec]:
    """Port specs of a rule's numeric / protocol-only ports ([(0, 0, 0)] for a rule without ports)."""
    if not rule.ports:
        return [(0, 0, 0)]
    out: list[PortSpec] = []
    for p in rule.ports:
        proto = PROTOCOLS[p.protocol]
        if p.port is None:
            out.append((proto, 0, 0))
        elif isinstance(p.port, int):
            if p.end_port is not None and p.end_port != p.port:
                out.extend((proto, port, plen) for port, plen in range_to_prefixes(p.port, p.end_port))
            else:
                out.append((proto, p.port, 16))
    return out


class _PrefixTable:
    """Policy prefixes of one family, for subset queries and longest-prefix match."""

    def __init__(self, bits: int, prefixes: Mapping[IPNetwork, int]) -> None:
        self.bits = bits
        rows = sorted(
            (int(n.network_address), int(n.broadcast_address), n.prefixlen, ident)
            for n, ident in prefixes.items()
        )
        self.rows = rows
        self.starts = [r[0] for r in rows]
        self.by_len: dict[int, dict[int, int]] = {}
        for start, _end, plen, ident in rows:
            self.by_len.setdefault(plen, {})[start] = ident
        self.lens_desc = sorted(self.by_len, reverse=True)

    def longest(self, addr: int) -> int:
        """CIDR identity of the longest prefix containing addr, 0 if none."""
        for plen in self.lens_desc:
            mask = ((1 << plen) - 1) << (self.bits - plen) if plen else 0
            ident = self.by_len[plen].get(addr & mask)
            if ident is not None:
                return ident
        return 0

    def carve(self, block: IPBlock) -> set[int]:
        """Identities of prefixes P with P ⊆ cidr and P ⊄ every except."""
        c = block.cidr
        lo, hi, cplen = int(c.network_address), int(c.broadcast_address), c.prefixlen
        ex = [(int(e.network_address), int(e.broadcast_address)) for e in block.excepts]
        out: set[int] = set()
        i = bisect.bisect_left(self.starts, lo)
        rows = self.rows
        while i < len(rows) and rows[i][0] <= hi:
            start, end, plen, ident = rows[i]
            i += 1
            if plen < cplen:
                continue
            if any(es <= start and end <= ee for es, ee in ex):
                continue
            out.add(ident)
        return out


class _PodPrefixes:
    """The pods' /32 and /128 ipcache keys, shared with the previous compilation.

    An IPv4Network/IPv6Network costs ~550 bytes (ipaddress keeps an address, a netmask and a
    hosts() closure per object). The agent recompiles the cluster on every event while the
    previous compilation is still alive, so without sharing every pod address exists twice at
    the peak and each event allocates and frees 10k+ of them. begin() starts a generation that
    reuses the last published one's objects; publish() makes it the one the next compilation
    reuses, so the table never holds more than one compilation's addresses. Published tables
    are never mutated (safe to read from another thread's compilation).
    """

    _published: dict[str, IPNetwork] = {}
    # The CIDR identities of the last published generation and each pod address's longest
    # containing prefix under them (reused while the CIDR identities are the same).
    _published_cidr: tuple[Mapping[IPNetwork, int], dict[str, int]] = ({}, {})

    def __init__(
        self, previous: dict[str, IPNetwork], previous_cidr: tuple[Mapping[IPNetwork, int], dict[str, int]]
    ) -> None:
        self.previous = previous
        self.current: dict[str, IPNetwork] = {}
        self.previous_cidr = previous_cidr
        self.cidr: tuple[Mapping[IPNetwork, int], dict[str, int]] = ({}, {})

    @classmethod
    def begin(cls) -> _PodPrefixes:
        return cls(cls._published, cls._published_cidr)

    def known_cidr(self, cidr_identity: Mapping[IPNetwork, int]) -> tuple[dict[str, int], dict[str, int]]:
        """(ip -> CIDR identity of its longest containing prefix as the last published generation
        found it, or {} if that was under other CIDR identities; the table to fill for this one)."""
        known = self.previous_cidr[1] if self.previous_cidr[0] == cidr_identity else {}
        self.cidr = (cidr_identity, {})
        return known, self.cidr[1]

    def get(self, ip: str) -> IPNetwork:
        net = self.current.get(ip)
        if net is None:
            net = self.previous.get(ip)
            if net is None:
                net = host_prefix(ipaddress.ip_address(ip))
            self.current[ip] = net
        return net

    def publish(self) -> None:
        type(self)._published = self.current
        type(self)._published_cidr = self.cidr


class _PodKeys:
    """Each pod's identity key and each key's encoding, shared with the previous compilation.

    The agent recompiles on every event; nearly every Pod object is the one of the previous
    build (controller.compiler.model.ClusterBuilder reuses unchanged objects), so its identity key
    (sorted labels) and the key's encoding (what allocation sorts and hashes) are looked up
    instead of computed again. Like _PodPrefixes: begin() reuses the last published generation,
    publish() replaces it, and published tables are never mutated.
    """

    _published: tuple[dict[str, tuple[Pod, PodIdentityKey]], dict[PodIdentityKey, bytes]] = ({}, {})

    def __init__(
        self, previous: tuple[dict[str, tuple[Pod, PodIdentityKey]], dict[PodIdentityKey, bytes]]
    ) -> None:
        self.previous_keys, self.previous_bytes = previous
        self.keys: dict[str, tuple[Pod, PodIdentityKey]] = {}
        self.encoded: dict[PodIdentityKey, bytes] = {}

    @classmethod
    def begin(cls) -> _PodKeys:
        return cls(cls._published)

    def key(self, pod: Pod) -> PodIdentityKey:
        hit = self.previous_keys.get(pod.key)
        if hit is None or hit[0] is not pod:
            hit = (pod, pod_identity_key(pod.namespace, pod.labels))
        self.keys[pod.key] = hit
        return hit[1]

    def encode(self, key: PodIdentityKey) -> bytes:
        data = self.previous_bytes.get(key)
        if data is None:
            data = _encode_pod_key(key)
        self.encoded[key] = data
        return data

    def publish(self) -> None:
        type(self)._published = (self.keys, self.encoded)


@dataclass(frozen=True)
class _Identities:
    """The identity tables of the last compilation that built them, with the active pods they
    were built from (CompiledCluster._build_identities shares them while those are the same
    objects). One generation is kept, as in _PodPrefixes; never mutated once published."""

    active: Mapping[str, Pod]
    pod_identity: dict[str, int]
    identity_namespace: dict[int, str]
    identity_labels: dict[int, Mapping[str, str]]
    pods_by_identity: dict[int, list[Pod]]
    index: LabelIndex
    ns_index: dict[str, LabelIndex]
    identity_of_key: dict[PodIdentityKey, int]
    key_of_identity: dict[int, PodIdentityKey]

    published: ClassVar[_Identities | None] = None


@dataclass(frozen=True)
class _Target:
    """A destination of an egress named port: a pod identity or an exact per-pod prefix."""

    identity: int | None = None
    prefix: IPNetwork | None = None


@dataclass(frozen=True)
class _PreviousNodes:
    """What node_desired reuses from the previous compilation (never the compilation itself:
    each would keep the one before it alive)."""

    ipcache: Mapping[str, dict[IPNetwork, tuple[int, int]]] = field(default_factory=dict)
    endpoints: Mapping[str, dict[str, EndpointDesired]] = field(default_factory=dict)
    local_pods: Mapping[str, list[Pod]] = field(default_factory=dict)
    prefix_ipcache: Mapping[IPNetwork, tuple[int, int]] | None = None
    pod_ipcache: Mapping[IPNetwork, tuple[int, int]] | None = None
    node_addresses: Mapping[str, list[IPAddress]] | None = None
    changed_pods: frozenset[str] | None = None
    node_entries: Mapping[str, dict[IPNetwork, tuple[int, int]]] = field(default_factory=dict)
    endpoints_stable: bool = False  # every unchanged pod's endpoint is the previous one


class CompiledCluster:
    """Node-independent compilation of a ClusterState (see the module docstring)."""

    # Tables (set by _full or _update; see the module docstring)
    _policy_facts: dict[str, tuple[NetworkPolicy, tuple[Rule, ...], frozenset[IPNetwork]]]
    _named_rules: list[tuple[NetworkPolicy, Rule]]
    _block_prefixes: frozenset[IPNetwork]
    _exact: frozenset[IPNetwork]
    _resolved: dict[tuple[Any, ...], tuple[tuple[tuple[_Target, int, int], ...], frozenset[IPNetwork]]]
    pods: Mapping[str, Pod]
    policy_map: Mapping[str, NetworkPolicy]
    _rule_cache: dict[tuple[Any, ...], dict[PolicyEntryKey, PolicyEntryValue]]
    _templates: dict[tuple[Any, ...], dict[PolicyEntryKey, None]]
    _merge_cache: dict[tuple[Any, ...], Entries]
    _selector_cache: dict[tuple[Any, ...], frozenset[int]]
    _node_ipcache: dict[str, dict[IPNetwork, tuple[int, int]]]
    _node_endpoints: dict[str, dict[str, EndpointDesired]]
    _previous_nodes: _PreviousNodes
    policies: list[NetworkPolicy]
    _keys: dict[tuple[int, int, int, int, int], PolicyEntryKey]
    _block_cache: dict[IPBlock, frozenset[int]]
    _policy_rules: dict[str, tuple[NetworkPolicy, tuple[tuple[int, RuleRef], ...]]]
    policies_by_ns: dict[str, list[NetworkPolicy]]
    rules: dict[int, RuleRef]
    pod_identity: dict[str, int]
    identity_namespace: dict[int, str]
    identity_labels: dict[int, Mapping[str, str]]
    pods_by_identity: dict[int, list[Pod]]
    index: LabelIndex
    ns_index: dict[str, LabelIndex]
    identity_of_key: dict[PodIdentityKey, int]
    key_of_identity: dict[int, PodIdentityKey]
    selected: dict[str, frozenset[int]]
    policies_for_identity: dict[int, list[NetworkPolicy]]
    egress_named: dict[tuple[str, int], tuple[int, ...]]
    named_targets: list[tuple[tuple[_Target, int, int], ...]]
    _named_cache: dict[tuple[str, str], dict[int, tuple[int, ...] | None]]
    cidr_identity: dict[IPNetwork, int]
    node_addresses: dict[str, list[IPAddress]]
    _node_cidr: dict[IPAddress, int]
    identities: Mapping[int, IdentityInfo]
    ns_names: list[str]
    ns_label_index: LabelIndex
    tables: dict[int, _PrefixTable]
    _cidr_prefix_set: frozenset[IPNetwork]
    prefix_ipcache: dict[IPNetwork, tuple[int, int]]
    _info: dict[int, IdentityInfo]
    _shared_ips: frozenset[str]
    pod_ipcache: dict[IPNetwork, tuple[int, int]]
    _named_base: Mapping[tuple[str, str], dict[int, tuple[int, ...] | None]]
    _touched: frozenset[int]
    _named_changed: bool

    def __init__(self, cluster: ClusterState, previous: CompiledCluster | None = None) -> None:
        """Compile `cluster`. With `previous` (the compilation of the build cluster.delta is
        relative to), only what the delta touches is recomputed and the rest is shared with
        `previous`, which is never modified (see _update); the result is the same."""
        # The cluster's parts, not the ClusterState: the cluster caches this object (see
        # compile_cluster), and a reference back would make a cycle that keeps every replaced
        # cluster and its compilation alive until a full garbage collection (the agent would
        # hold two or three generations of the whole model at 10k pods).
        self.pods = cluster.pods
        self.nodes = cluster.nodes
        self.policy_map = cluster.policies
        self.errors = tuple(cluster.errors)
        self._namespaces = frozenset(cluster.namespaces)
        self._rule_cache = {}
        self._templates = {}
        self._merge_cache = {}
        self._selector_cache = {}
        self._node_ipcache = {}
        self._node_endpoints = {}
        self.incremental = False  # whether this compilation was derived from a previous one
        # what the previous compilation computed per node, for node_desired to hand out again
        self._previous_nodes = _PreviousNodes()
        self._local_pods: dict[str, list[Pod]] = {}
        self._node_entry_cache: dict[str, dict[IPNetwork, tuple[int, int]]] = {}
        # (prefixes removed, entries added or changed) of the pod ipcache since the previous
        # compilation, when it was updated rather than rebuilt
        self._pod_ipcache_changes: tuple[list[IPNetwork], dict[IPNetwork, tuple[int, int]]] | None = None
        delta = cluster.delta
        if previous is not None and delta is not None and not delta.namespaces and not delta.nodes:
            try:
                if self._update(cluster, previous, delta):
                    self.incremental = True
                    return
            except Exception:  # a bug here must not stop enforcement: the full path is the reference
                log.exception("incremental compilation failed; compiling in full")
                self._previous_nodes = _PreviousNodes()
                self._pod_ipcache_changes = None
        self._full(cluster)

    def _full(self, cluster: ClusterState) -> None:
        self.policies = sorted(cluster.policies.values(), key=lambda p: p.key)
        self._build_policies_by_ns()
        self._build_identities()
        self._build_namespace_index(cluster)
        self._selector_cache = {}
        self._build_selection()
        self._exact = frozenset(self._resolve_egress_named_ports())
        self._build_cidr_identities(self._exact)
        self._build_ipcache_base()
        self._keys = {}
        self._block_cache = {}
        self._policy_rules = {}
        self._build_rules()

    def _build_policies_by_ns(self, previous: CompiledCluster | None = None) -> None:
        """Tables that depend on the policies only: policies by namespace, the egress rules
        with named ports, and the ipBlock prefixes (per policy, reused while it is the same object)."""
        self.policies_by_ns = {}
        old = previous._policy_facts if previous is not None else {}
        facts: dict[str, tuple[NetworkPolicy, tuple[Rule, ...], frozenset[IPNetwork]]] = {}
        named: list[tuple[NetworkPolicy, Rule]] = []
        blocks: set[IPNetwork] = set()
        for pol in self.policies:
            self.policies_by_ns.setdefault(pol.namespace, []).append(pol)
            hit = old.get(pol.key)
            if hit is None or hit[0] is not pol:
                hit = self._policy_fact(pol)
            facts[pol.key] = hit
            named.extend((pol, rule) for rule in hit[1])
            blocks |= hit[2]
        self._policy_facts = facts
        self._named_rules = named
        self._block_prefixes = frozenset(blocks)

    def _update_policy_tables(self, prev: CompiledCluster, changed: frozenset[str]) -> None:
        """_build_policies_by_ns's tables from prev's: only the changed policies' facts and
        namespaces are redone."""
        facts = dict(prev._policy_facts)
        by_ns = dict(prev.policies_by_ns)
        blocks_changed = False
        for key in changed:
            old = facts.pop(key, None)
            pol = self.policy_map.get(key)
            namespace = key.split("/", 1)[0]
            members = [p for p in by_ns.get(namespace, ()) if p.key != key]
            if pol is not None:
                facts[key] = self._policy_fact(pol)
                members.append(pol)
                members.sort(key=lambda p: p.key)
            if members:
                by_ns[namespace] = members
            else:
                by_ns.pop(namespace, None)
            blocks_changed |= bool(old is not None and old[2]) or bool(pol is not None and facts[key][2])
        self._policy_facts, self.policies_by_ns = facts, by_ns
        self._named_rules = [(pol, rule) for pol in self.policies for rule in facts[pol.key][1]]
        if blocks_changed:
            self._block_prefixes = frozenset().union(*(f[2] for f in facts.values()))
        else:
            self._block_prefixes = prev._block_prefixes

    @staticmethod
    def _policy_fact(pol: NetworkPolicy) -> tuple[NetworkPolicy, tuple[Rule, ...], frozenset[IPNetwork]]:
        egress_named = tuple(r for r in pol.egress if r.has_named_ports) if pol.isolates_egress else ()
        prefixes: set[IPNetwork] = set()
        for rule in (*pol.ingress, *pol.egress):
            for peer in rule.peers:
                if peer.ip_block is not None:
                    prefixes.add(peer.ip_block.cidr)
                    prefixes.update(peer.ip_block.excepts)
        return (pol, egress_named, frozenset(prefixes))

    def _build_rules(self, previous: CompiledCluster | None = None) -> None:
        """rule_ref -> RuleRef of every rule (the first rule in policy order keeps a reference)."""
        old = previous._policy_rules if previous is not None else {}
        self.rules = {}
        for pol in self.policies:
            hit = old.get(pol.key)
            if hit is None or hit[0] is not pol:
                refs: list[tuple[int, RuleRef]] = []
                for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
                    for rule in rules:
                        ref = rule_ref(pol.namespace, pol.name, direction, rule.index)
                        refs.append((ref, RuleRef(pol.namespace, pol.name, direction, rule.index)))
                hit = (pol, tuple(refs))
            self._policy_rules[pol.key] = hit
            for ref, rr in hit[1]:
                self.rules.setdefault(ref, rr)

    # -- incremental compilation ------------------------------------------------------------

    def _update(self, cluster: ClusterState, prev: CompiledCluster, delta: ClusterDelta) -> bool:
        """Compile from `prev` and the pods and policies `delta` names (namespaces and nodes
        unchanged). Every table is either prev's own object (nothing it depends on changed) or a
        copy with the changes applied; prev is never modified, so it stays valid for whoever
        still holds it. False (nothing usable set) when a step cannot be done locally; the
        caller then compiles in full. tests/unit/test_policy_incremental.py checks the result
        against a full compilation over random event sequences."""
        if delta.policies:
            self.policies = sorted(cluster.policies.values(), key=lambda p: p.key)
            self._update_policy_tables(prev, delta.policies)
        else:
            self.policies = prev.policies
            self.policies_by_ns, self._policy_facts = prev.policies_by_ns, prev._policy_facts
            self._named_rules, self._block_prefixes = prev._named_rules, prev._block_prefixes
        changes = self._update_identities(prev, delta.pods)
        if changes is None:
            return False
        touched, added, removed = changes
        # namespaces whose set of identities changed
        ns_changed = {
            self.identity_namespace.get(i) or prev.identity_namespace[i] for i in (*added, *removed)
        }

        names = self._namespace_names() if (added or removed or delta.policies) else prev.ns_names
        if names == prev.ns_names:
            self.ns_names, self.ns_label_index = prev.ns_names, prev.ns_label_index
        else:
            self._build_namespace_index(cluster)

        self._update_selection(prev, delta.policies, ns_changed, added | removed)
        if (
            not touched
            and not delta.policies
            and self.ns_index is prev.ns_index
            and self.ns_label_index is prev.ns_label_index
        ):
            # Same selection inputs: every selector evaluation and named-port resolution holds.
            self._selector_cache = prev._selector_cache
            self.egress_named, self.named_targets = prev.egress_named, prev.named_targets
            self._named_cache, self._resolved = prev._named_cache, prev._resolved
            self._exact = prev._exact
            self._named_changed = False
        else:
            if self.ns_index is prev.ns_index and self.ns_label_index is prev.ns_label_index:
                self._selector_cache = dict(prev._selector_cache)  # (only this one adds to it)
            self._exact = frozenset(self._resolve_egress_named_ports(prev, touched))
        exact = self._exact
        prefixes = self._cidr_prefixes(exact)
        if prefixes == prev._cidr_prefix_set:
            self.cidr_identity, self.tables = prev.cidr_identity, prev.tables
            self._cidr_prefix_set = prev._cidr_prefix_set
            self._block_cache = prev._block_cache  # a function of the tables only
            self.prefix_ipcache = prev.prefix_ipcache
            self.node_addresses, self._node_cidr = prev.node_addresses, prev._node_cidr
            if not self._update_pod_ipcache(prev, delta.pods):
                self._build_pod_ipcache()
            if added or removed:
                info = dict(prev._info)
                for ident in removed:
                    info.pop(ident, None)
                for ident in added:
                    info[ident] = IdentityInfo(
                        ident,
                        "pod",
                        namespace=self.identity_namespace[ident],
                        labels=self.identity_labels[ident],
                    )
                self._info = info
                self.identities = MappingProxyType(info)
            else:
                self._info, self.identities = prev._info, prev.identities
        else:
            self._build_cidr_identities(exact)
            self._build_ipcache_base()
            self._block_cache = {}
        self._keys = prev._keys  # interned keys: a pure function of their fields
        self._policy_rules = {}
        if delta.policies:
            self._build_rules(prev)
        else:
            self.rules, self._policy_rules = prev.rules, prev._policy_rules
        # Nothing an endpoint's entries depend on changed but its own pod: node_desired hands
        # out the previous EndpointDesired of every unchanged pod.
        stable = (
            not delta.policies
            and self.ns_index is prev.ns_index
            and self.ns_label_index is prev.ns_label_index
            and self.policies_for_identity is prev.policies_for_identity
            and self.cidr_identity is prev.cidr_identity
            and not self._named_changed
        )
        self._previous_nodes = _PreviousNodes(
            prev._node_ipcache,
            prev._node_endpoints,
            prev._local_pods,
            prev.prefix_ipcache,
            prev.pod_ipcache,
            prev.node_addresses,
            delta.pods,
            prev._node_entry_cache,
            stable,
        )
        return True

    def _update_identities(
        self, prev: CompiledCluster, changed: frozenset[str]
    ) -> tuple[frozenset[int], set[int], set[int]] | None:
        """Identity tables from prev's and the changed pods: (identities whose pods changed,
        identities added, identities removed), or None when allocation moved other keys."""
        names = (
            "pod_identity", "identity_namespace", "identity_labels", "pods_by_identity",
            "index", "ns_index", "identity_of_key", "key_of_identity",
        )  # fmt: skip
        if not changed:
            for name in names:
                setattr(self, name, getattr(prev, name))
            return frozenset(), set(), set()
        pods = self.pods
        pod_identity = dict(prev.pod_identity)
        lists: dict[int, list[Pod]] = {}  # identity -> its new pod list (copies)

        def pods_of(ident: int) -> list[Pod]:
            got = lists.get(ident)
            if got is None:
                got = list(prev.pods_by_identity.get(ident, ()))
                lists[ident] = got
            return got

        for key in changed:
            old = prev.pods.get(key)
            if old is not None and old.active:
                ident = pod_identity.pop(key)
                members = pods_of(ident)
                members[:] = [p for p in members if p.key != key]
        new_keys: dict[str, PodIdentityKey] = {}
        for key in changed:
            pod = pods.get(key)
            if pod is not None and pod.active:
                new_keys[key] = pod_identity_key(pod.namespace, pod.labels)
        of_key = prev.identity_of_key
        emptied = [i for i, members in lists.items() if not members]
        wanted = set(new_keys.values())
        gone = [prev.key_of_identity[i] for i in emptied if prev.key_of_identity[i] not in wanted]
        fresh = sorted({k for k in wanted if k not in of_key}, key=_encode_pod_key)
        if gone or fresh:
            update = allocate_update(
                of_key, prev.key_of_identity, sorted(gone, key=_encode_pod_key), fresh,
                POD_ID_MIN, POD_ID_MAX, _encode_pod_key,
            )  # fmt: skip
            if update is None:
                return None
            self.identity_of_key, self.key_of_identity = update
        else:
            self.identity_of_key, self.key_of_identity = of_key, prev.key_of_identity
        for key, ikey in new_keys.items():
            ident = self.identity_of_key[ikey]
            pod_identity[key] = ident
            pods_of(ident).append(pods[key])
        self.pod_identity = pod_identity
        pods_by_identity = dict(prev.pods_by_identity)
        identity_namespace = dict(prev.identity_namespace)
        identity_labels = dict(prev.identity_labels)
        added: set[int] = set()
        removed: set[int] = set()
        for ident, members in lists.items():
            if members:
                members.sort(key=lambda p: p.key)
                pods_by_identity[ident] = members
                if ident not in prev.pods_by_identity:
                    added.add(ident)
                    identity_namespace[ident] = members[0].namespace
                    identity_labels[ident] = members[-1].labels
            elif ident in prev.pods_by_identity:
                removed.add(ident)
                del pods_by_identity[ident]
                del identity_namespace[ident]
                del identity_labels[ident]
        self.pods_by_identity = pods_by_identity
        self.identity_namespace = identity_namespace
        self.identity_labels = identity_labels
        if added or removed:
            gone_items = [(i, prev.identity_labels[i]) for i in sorted(removed)]
            new_items = [(i, identity_labels[i]) for i in sorted(added)]
            self.index = prev.index.updated(gone_items, new_items)
            ns_index = dict(prev.ns_index)
            for ns in {prev.identity_namespace[i] for i in removed} | {identity_namespace[i] for i in added}:
                old_idx = ns_index.get(ns) or LabelIndex()
                idx = old_idx.updated(
                    [(i, lab) for i, lab in gone_items if prev.identity_namespace[i] == ns],
                    [(i, lab) for i, lab in new_items if identity_namespace[i] == ns],
                )
                if idx.all:
                    ns_index[ns] = idx
                else:
                    ns_index.pop(ns, None)
            self.ns_index = ns_index
        else:
            self.index, self.ns_index = prev.index, prev.ns_index
        return frozenset(lists), added, removed

    def _update_selection(
        self, prev: CompiledCluster, changed_policies: frozenset[str], ns_changed: set[str], idents: set[int]
    ) -> None:
        """selected / policies_for_identity from prev's: the changed policies and those of the
        namespaces whose identities changed are evaluated again."""
        redo = set(changed_policies)
        for ns in ns_changed:
            redo.update(p.key for p in self.policies_by_ns.get(ns, ()))
        if not redo and not idents:
            self.selected, self.policies_for_identity = prev.selected, prev.policies_for_identity
            return
        selected = dict(prev.selected)
        affected = set(idents)
        for key in redo:
            old = prev.selected.get(key, frozenset())
            pol = self.policy_map.get(key)
            if pol is None:
                selected.pop(key, None)
                affected |= old
                continue
            idx = self.ns_index.get(pol.namespace)
            new = frozenset(pol.pod_selector.select(idx)) if idx is not None else frozenset()
            selected[key] = new
            # a replaced policy object must replace the old one in every list that has it
            affected |= (old | new) if prev.policy_map.get(key) is not pol else (old ^ new)
        pfi = dict(prev.policies_for_identity)
        for ident in affected:
            ident_ns = self.identity_namespace.get(ident)
            members = (
                [p for p in self.policies_by_ns.get(ident_ns, ()) if ident in selected[p.key]]
                if ident_ns is not None
                else []
            )
            if members:
                pfi[ident] = members
            else:
                pfi.pop(ident, None)
        self.selected, self.policies_for_identity = selected, pfi

    def _update_pod_ipcache(self, prev: CompiledCluster, changed: frozenset[str]) -> bool:
        """pod_ipcache from prev's (same CIDR identities) and the changed pods; False when an
        address is or becomes shared by two pods (then rebuilt in full, as the order decides).
        An address no two pods share is its pod's entry, so no address -> pod table is needed."""
        if not changed:
            self.pod_ipcache, self._shared_ips = prev.pod_ipcache, prev._shared_ips
            return True
        if prev._shared_ips:
            return False
        old_ips: set[str] = set()
        for key in changed:
            old = prev.pods.get(key)
            if old is not None and old.active:
                old_ips.update(old.ips)
        new_idents: dict[str, int] = {}  # address -> identity of the changed pod that has it
        for key in changed:
            pod = self.pods.get(key)
            if pod is None or not pod.active:
                continue
            ident = self.pod_identity[key]
            for ip in pod.ips:
                if ip in new_idents:
                    return False  # two changed pods with one address
                new_idents[ip] = ident
        pod_ipcache = dict(prev.pod_ipcache)
        removed: list[IPNetwork] = []
        added: dict[IPNetwork, tuple[int, int]] = {}
        for ip in old_ips - new_idents.keys():
            net = host_prefix(ipaddress.ip_address(ip))
            del pod_ipcache[net]
            removed.append(net)
        for ip, ident in new_idents.items():
            net = host_prefix(ipaddress.ip_address(ip))
            if ip not in old_ips and net in pod_ipcache:
                return False  # an unchanged pod has this address too
            value = (ident, self.longest_cidr_identity(net.network_address))
            # (an equal key already there stays: the ipcache keeps its prefix objects)
            pod_ipcache[net] = added[net] = value
        self.pod_ipcache, self._shared_ips = pod_ipcache, frozenset()
        self._pod_ipcache_changes = (removed, added)
        return True

    # -- identities ---------------------------------------------------------------------------

    def _build_identities(self) -> None:
        active = [p for p in self.pods.values() if p.active]
        previous = _Identities.published
        if (
            previous is not None
            and len(previous.active) == len(active)
            and all(previous.active.get(p.key) is p for p in active)
        ):
            self.identity_of_key = previous.identity_of_key
            self.key_of_identity = previous.key_of_identity
            # The very Pod objects of the last compilation (a policy or namespace event): its
            # identities, identity tables and label indexes, which nothing mutates, are shared.
            self.pod_identity = previous.pod_identity
            self.identity_namespace = previous.identity_namespace
            self.identity_labels = previous.identity_labels
            self.pods_by_identity = previous.pods_by_identity
            self.index = previous.index
            self.ns_index = previous.ns_index
            return
        memo = _PodKeys.begin()
        keys = {p.key: memo.key(p) for p in active}
        # = allocate_pod_identities(keys.values()), each distinct key encoded once
        alloc = allocate(set(keys.values()), POD_ID_MIN, POD_ID_MAX, memo.encode)
        memo.publish()
        self.identity_of_key = alloc
        self.key_of_identity = {v: k for k, v in alloc.items()}
        self.pod_identity = {k: alloc[v] for k, v in keys.items()}
        self.identity_namespace = {}
        self.identity_labels = {}
        self.pods_by_identity = {}
        for pod in sorted(active, key=lambda p: p.key):
            ident = self.pod_identity[pod.key]
            self.identity_namespace[ident] = pod.namespace
            self.identity_labels[ident] = pod.labels
            self.pods_by_identity.setdefault(ident, []).append(pod)
        self.index = LabelIndex(self.identity_labels.items())
        self.ns_index = {}
        for ident, labels in self.identity_labels.items():
            ns = self.identity_namespace[ident]
            self.ns_index.setdefault(ns, LabelIndex()).add(ident, labels)
        _Identities.published = _Identities(
            {p.key: p for p in active},
            self.pod_identity,
            self.identity_namespace,
            self.identity_labels,
            self.pods_by_identity,
            self.index,
            self.ns_index,
            self.identity_of_key,
            self.key_of_identity,
        )

    def _namespace_names(self) -> list[str]:
        # ns_index has a namespace for each namespace with an identity
        return sorted(self._namespaces.union(self.ns_index, self.policies_by_ns))

    def _build_namespace_index(self, cluster: ClusterState) -> None:
        self.ns_names = self._namespace_names()
        self.ns_label_index = LabelIndex(
            (i, cluster.namespace_labels(n)) for i, n in enumerate(self.ns_names)
        )

    # -- selectors ----------------------------------------------------------------------------

    def _namespaces_matching(self, sel: LabelSelector) -> list[str]:
        return [self.ns_names[i] for i in sel.select(self.ns_label_index)]

    def peer_identities(self, policy_ns: str, peer: Peer) -> frozenset[int]:
        """Pod identities a selector peer selects (cluster-wide)."""
        pod_sel, ns_sel = peer.pod_selector, peer.namespace_selector
        key = (
            policy_ns if ns_sel is None else None,
            None if ns_sel is None else ns_sel.key,
            None if pod_sel is None else pod_sel.key,
        )
        hit = self._selector_cache.get(key)
        if hit is not None:
            return hit
        result: set[int] = set()
        if ns_sel is None:
            idx = self.ns_index.get(policy_ns)
            if idx is not None and pod_sel is not None:
                result = set(pod_sel.select(idx))
        else:
            namespaces = self._namespaces_matching(ns_sel)
            if pod_sel is None or pod_sel.is_everything:
                for ns in namespaces:
                    idx = self.ns_index.get(ns)
                    if idx is not None:
                        result |= idx.all
            elif len(namespaces) * 4 < len(self.ns_names) or len(namespaces) < 8:
                for ns in namespaces:
                    idx = self.ns_index.get(ns)
                    if idx is not None:
                        result |= pod_sel.select(idx)
            else:
                allowed = set(namespaces)
                result = {i for i in pod_sel.select(self.index) if self.identity_namespace[i] in allowed}
        frozen = frozenset(result)
        self._selector_cache[key] = frozen
        return frozen

    def _build_selection(self) -> None:
        """Which policies select which identities (and which policies select nothing at all)."""
        self.selected = {}
        self.policies_for_identity = {}
        for pol in self.policies:
            idx = self.ns_index.get(pol.namespace)
            sel = frozenset(pol.pod_selector.select(idx)) if idx is not None else frozenset()
            self.selected[pol.key] = sel
            for ident in sel:
                self.policies_for_identity.setdefault(ident, []).append(pol)

    # -- egress named ports -------------------------------------------------------------------

    def _named_by_identity(self, name: str, protocol: str) -> dict[int, tuple[int, ...] | None]:
        """identity -> the port numbers all its pods (with IPs) give `name`; None = they differ.

        Identities whose pods lack the name are absent."""
        key = (name, protocol)
        hit = self._named_cache.get(key)
        if hit is not None:
            return hit
        base = self._named_base.get(key)
        if base is not None:
            # Derived from the previous compilation's: only the touched identities are redone.
            res = dict(base)
            for ident in self._touched:
                res.pop(ident, None)
                self._name_identity(res, ident, name, protocol)
        else:
            res = {}
            for ident in self.pods_by_identity:
                self._name_identity(res, ident, name, protocol)
        self._named_cache[key] = res
        return res

    def _name_identity(
        self, res: dict[int, tuple[int, ...] | None], ident: int, name: str, protocol: str
    ) -> None:
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

    def _named_targets(
        self,
        idents: frozenset[int],
        blocks: tuple[IPBlock, ...],
        name: str,
        protocol: str,
        exact: set[IPNetwork],
    ) -> tuple[tuple[_Target, int, int], ...]:
        """Destinations of one egress named port: (target, proto, port) triples."""
        proto = PROTOCOLS[protocol]
        by_ident = self._named_by_identity(name, protocol)
        out: list[tuple[_Target, int, int]] = []
        for ident in sorted(idents.intersection(by_ident)):
            nums = by_ident[ident]
            if nums is not None:
                out.extend((_Target(identity=ident), proto, n) for n in nums)
                continue
            for pod in self.pods_by_identity[ident]:
                pod_nums = pod.resolve_named_port(name, protocol)
                for ip in pod.ips if pod_nums else ():
                    pfx = host_prefix(ipaddress.ip_address(ip))
                    exact.add(pfx)
                    out.extend((_Target(prefix=pfx), proto, n) for n in pod_nums)
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
                            out.extend((_Target(prefix=pfx), proto, n) for n in pod_nums)
        return tuple(out)

    def _resolve_egress_named_ports(
        self, previous: CompiledCluster | None = None, touched: frozenset[int] = frozenset()
    ) -> set[IPNetwork]:
        """Resolve named ports of egress rules; returns the exact per-pod prefixes needed.

        Each distinct (destination identities, ipBlocks, name, protocol) is resolved once and
        numbered (a token); `egress_named[(policy, rule index)]` holds the rule's tokens.
        With `previous`, a resolution it made is reused unless a `touched` identity (one whose
        pods changed) could be among its destinations (any, for an ipBlock)."""
        self.egress_named = {}
        self.named_targets = []
        self._named_cache = {}
        self._named_base = previous._named_cache if previous is not None else {}
        self._touched = touched
        old_resolved = previous._resolved if previous is not None else {}
        self._resolved = {}
        token_of: dict[tuple[Any, ...], int] = {}
        exact: set[IPNetwork] = set()
        # whether any resolution differs from the previous compilation's (or is new)
        self._named_changed = previous is None
        for pol, rule in self._named_rules:
            if not rule.peers:
                idents: frozenset[int] = frozenset(self.pods_by_identity)
            else:
                acc: set[int] = set()
                for peer in rule.peers:
                    if peer.ip_block is None:
                        acc |= self.peer_identities(pol.namespace, peer)
                idents = frozenset(acc)
            blocks = tuple(peer.ip_block for peer in rule.peers if peer.ip_block is not None)
            tokens: list[int] = []
            for pport in rule.ports:
                if not isinstance(pport.port, str):
                    continue
                tkey = (idents, blocks, pport.port, pport.protocol)
                tok = token_of.get(tkey)
                if tok is None:
                    tok = len(self.named_targets)
                    token_of[tkey] = tok
                    hit = old_resolved.get(tkey)
                    if hit is None or (blocks and touched) or not idents.isdisjoint(touched):
                        mine: set[IPNetwork] = set()
                        targets = self._named_targets(idents, blocks, pport.port, pport.protocol, mine)
                        self._named_changed |= hit is None or hit[0] != targets
                        hit = (targets, frozenset(mine))
                    self._resolved[tkey] = hit
                    self.named_targets.append(hit[0])
                    exact |= hit[1]
                tokens.append(tok)
            self.egress_named[(pol.key, rule.index)] = tuple(tokens)
        self._named_changed |= len(self._resolved) != len(old_resolved)
        return exact

    # -- CIDR identities and the ipcache ----------------------------------------------------

    def _cidr_prefixes(self, exact: Iterable[IPNetwork]) -> frozenset[IPNetwork]:
        return self._block_prefixes.union(exact)

    def _build_cidr_identities(self, exact: Iterable[IPNetwork]) -> None:
        prefixes = self._cidr_prefixes(exact)
        self._cidr_prefix_set = prefixes
        self.cidr_identity = allocate_cidr_identities(prefixes)
        self.tables = {
            4: _PrefixTable(32, {n: i for n, i in self.cidr_identity.items() if n.version == 4}),
            6: _PrefixTable(128, {n: i for n, i in self.cidr_identity.items() if n.version == 6}),
        }

    def longest_cidr_identity(self, addr: IPAddress) -> int:
        return self.tables[addr.version].longest(int(addr))

    def _build_ipcache_base(self) -> None:
        base: dict[IPNetwork, tuple[int, int]] = {}
        base[WORLD_V4] = (ID_WORLD, self.cidr_identity.get(WORLD_V4, 0))
        base[WORLD_V6] = (ID_WORLD, self.cidr_identity.get(WORLD_V6, 0))
        for net, ident in self.cidr_identity.items():
            base[net] = (ID_WORLD, ident)
        self.node_addresses = {
            name: [ipaddress.ip_address(a) for a in node.addresses] for name, node in self.nodes.items()
        }
        self._node_cidr = {}
        for addrs in self.node_addresses.values():
            for addr in addrs:
                self._node_cidr[addr] = self.longest_cidr_identity(addr)
        self.prefix_ipcache = base
        self._build_pod_ipcache()
        info: dict[int, IdentityInfo] = {
            i: IdentityInfo(i, "reserved", name=n) for i, n in RESERVED_NAMES.items()
        }
        for ident, labels in self.identity_labels.items():
            info[ident] = IdentityInfo(ident, "pod", namespace=self.identity_namespace[ident], labels=labels)
        for net, ident in self.cidr_identity.items():
            info[ident] = IdentityInfo(ident, "cidr", cidr=str(net))
        self._info = info
        self.identities = MappingProxyType(info)

    def _build_pod_ipcache(self) -> None:
        """Every active pod address -> (pod identity, CIDR identity of its longest prefix)."""
        pod_entries: dict[IPNetwork, tuple[int, int]] = {}
        values: dict[tuple[int, int], tuple[int, int]] = {}  # one tuple per distinct value
        # addresses of more than one pod (a stale pod's address reused): later updates rebuild
        # (_update_pod_ipcache), as only this order decides which entry wins
        shared: set[str] = set()
        prefixes = _PodPrefixes.begin()
        known, found = prefixes.known_cidr(self.cidr_identity)
        # Identities in the order of their first pod (a full build's order, whatever order an
        # incremental one added them in): where two pods share an address the last one wins.
        for ident, pods in sorted(self.pods_by_identity.items(), key=lambda item: item[1][0].key):
            for pod in pods:
                for ip in pod.ips:
                    net = prefixes.get(ip)
                    cidr = known.get(ip)
                    if cidr is None:
                        cidr = self.longest_cidr_identity(net.network_address)
                    if ip in found:
                        shared.add(ip)
                    found[ip] = cidr
                    value = (ident, cidr)
                    pod_entries[net] = values.setdefault(value, value)
        prefixes.publish()
        self.pod_ipcache = pod_entries
        self._shared_ips = frozenset(shared)

    def ipcache_for(self, node: str) -> dict[IPNetwork, tuple[int, int]]:
        """The ipcache of `node` (shared by every caller for this node: do not mutate)."""
        out = self._node_ipcache.get(node)
        if out is not None:
            return out
        before = self._previous_nodes
        out = before.ipcache.get(node)
        if (
            out is None
            or before.prefix_ipcache is not self.prefix_ipcache
            or before.node_addresses is not self.node_addresses
        ):
            out = self._ipcache_for(node)
        elif before.pod_ipcache is not self.pod_ipcache:
            changes = self._pod_ipcache_changes
            if changes is None:
                out = self._ipcache_for(node)
            else:
                # The previous node ipcache with the pod entries that changed: a removed pod
                # address falls back to what lies under it (a node address, a policy prefix).
                out = dict(out)
                removed, added = changes
                nodes = self._node_entries(node)
                for net in removed:
                    lower = nodes.get(net) or self.prefix_ipcache.get(net)
                    if lower is None:
                        out.pop(net, None)
                    else:
                        out[net] = lower
                out.update(added)
        self._node_ipcache[node] = out
        return out

    def _node_entries(self, node: str) -> dict[IPNetwork, tuple[int, int]]:
        """The node addresses' ipcache entries as `node` sees them (shared: do not mutate)."""
        out = self._node_entry_cache.get(node)
        if out is None:
            before = self._previous_nodes
            if before.node_addresses is self.node_addresses and node in before.node_entries:
                out = before.node_entries[node]
            else:
                out = self._build_node_entries(node)
            self._node_entry_cache[node] = out
        return out

    def _build_node_entries(self, node: str) -> dict[IPNetwork, tuple[int, int]]:
        out: dict[IPNetwork, tuple[int, int]] = {}
        for name, addrs in self.node_addresses.items():
            ident = ID_HOST if name == node else ID_REMOTE_NODE
            for addr in addrs:
                out[host_prefix(addr)] = (ident, self._node_cidr[addr])
        return out

    def _ipcache_for(self, node: str) -> dict[IPNetwork, tuple[int, int]]:
        out = dict(self.prefix_ipcache)
        out.update(self._node_entries(node))
        out.update(self.pod_ipcache)
        return out

    # -- rules -> entries ---------------------------------------------------------------------

    def block_identities(self, block: IPBlock) -> frozenset[int]:
        hit = self._block_cache.get(block)
        if hit is None:
            hit = frozenset(self.tables[block.cidr.version].carve(block))
            self._block_cache[block] = hit
        return hit

    def rule_peer_identities(self, pol: NetworkPolicy, rule: Rule) -> set[int]:
        if not rule.peers:
            return {ID_ANY}
        out: set[int] = set()
        for peer in rule.peers:
            if peer.ip_block is not None:
                out |= self.block_identities(peer.ip_block)
            else:
                out |= self.peer_identities(pol.namespace, peer)
        return out

    def _key(self, direction: int, ident: int, proto: int, port: int, plen: int) -> PolicyEntryKey:
        """Interned PolicyEntryKey: equal keys are one object, so dict merges compare by identity."""
        t = (direction, ident, proto, port, plen)
        k = self._keys.get(t)
        if k is None:
            k = PolicyEntryKey(direction, ident, proto, port, plen)
            self._keys[t] = k
        return k

    def _rule_entries(
        self, pol: NetworkPolicy, direction: int, rule: Rule, named: tuple[PortSpec, ...]
    ) -> dict[PolicyEntryKey, PolicyEntryValue]:
        """Entries of one rule; `named` = ingress named ports resolved on the endpoint.

        The returned dict is cached and shared: never mutate it."""
        key = (pol.key, direction, rule.index, named)
        hit = self._rule_cache.get(key)
        if hit is not None:
            return hit
        value = PolicyEntryValue(
            VERDICT_ALLOW, DEFAULT_PRECEDENCE, rule_ref(pol.namespace, pol.name, direction, rule.index)
        )
        specs = tuple(numeric_port_specs(rule)) + named
        peer_ids = frozenset(self.rule_peer_identities(pol, rule)) if specs else frozenset()
        tokens = self.egress_named.get((pol.key, rule.index), ()) if direction == DIR_EGRESS else ()
        tkey = (direction, peer_ids, specs, tokens)
        template = self._templates.get(tkey)
        if template is None:
            template = {}
            for ident in sorted(peer_ids):
                for proto, port, plen in specs:
                    template[self._key(direction, ident, proto, port, plen)] = None
            for tok in tokens:
                for target, proto, port in self.named_targets[tok]:
                    if target.identity is not None:
                        dest = target.identity
                    else:
                        assert target.prefix is not None
                        dest = self.cidr_identity[target.prefix]
                    template[self._key(direction, dest, proto, port, 16)] = None
            self._templates[tkey] = template
        out = dict.fromkeys(template, value)  # reuses the template's stored hashes
        self._rule_cache[key] = out
        return out

    @staticmethod
    def _ingress_named(rule: Rule, pod: Pod) -> tuple[PortSpec, ...]:
        out: list[PortSpec] = []
        for p in rule.ports:
            if isinstance(p.port, str):
                proto = PROTOCOLS[p.protocol]
                out.extend((proto, n, 16) for n in pod.resolve_named_port(p.port, p.protocol))
        return tuple(sorted(set(out)))

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
                    named = self._ingress_named(rule, pod) if rule.has_named_ports else ()
                    parts.append((pol, DIR_INGRESS, rule, named))
            if pol.isolates_egress:
                parts.extend((pol, DIR_EGRESS, rule, ()) for rule in pol.egress)
        mkey = tuple((pol.key, d, r.index, named) for pol, d, r, named in parts)
        merged = self._merge_cache.get(mkey)
        if merged is None:
            maps = [self._rule_entries(pol, d, r, named) for pol, d, r, named in parts]
            maps = [m for m in maps if m]
            if len(maps) == 1:
                merged = MappingProxyType(maps[0])
            else:
                # Earlier rules win on equal keys: update in reverse order (C speed, no re-hashing).
                acc: dict[PolicyEntryKey, PolicyEntryValue] = {}
                for m in reversed(maps):
                    acc.update(m)
                merged = MappingProxyType(acc)
            self._merge_cache[mkey] = merged
        return ingress_iso, egress_iso, merged, [p.key for p in pols]

    def _audit_only(self, policy_keys: Sequence[str]) -> tuple[bool, bool]:
        """Per direction: every policy that isolates it is in audit mode (vacuously true if none)."""
        pols = [self.policy_map[k] for k in policy_keys]
        return (
            all(p.audit for p in pols if p.isolates_ingress),
            all(p.audit for p in pols if p.isolates_egress),
        )

    # -- per node -----------------------------------------------------------------------------

    def _local(self, node: str) -> list[Pod]:
        """The node's active pods with an address, by key (from the previous compilation's
        list and the changed pods when there is one)."""
        got = self._local_pods.get(node)
        if got is not None:
            return got
        before = self._previous_nodes
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
        self._local_pods[node] = got
        return got

    def node_desired(self, node: str) -> NodeDesired:
        endpoints: dict[str, EndpointDesired] = {}
        # An endpoint equal to the one the previous compilation gave is that very object, so
        # the sync layer can tell unchanged endpoints by identity.
        previous = self._previous_nodes
        before = previous.endpoints.get(node, {})
        unchanged_but = previous.changed_pods if previous.endpoints_stable else None
        for pod in self._local(node):
            if unchanged_but is not None and pod.key not in unchanged_but:
                kept = before.get(pod.key)
                if kept is not None:
                    endpoints[pod.key] = kept
                    continue
            ing, egr, entries, pols = self.endpoint_entries(pod)
            ing_audit, egr_audit = self._audit_only(pols)
            ep = EndpointDesired(
                pod=pod.key,
                identity=self.pod_identity[pod.key],
                ingress_isolated=ing,
                egress_isolated=egr,
                ipv4=pod.ipv4,
                ipv6=pod.ipv6,
                entries=entries,
                policies=tuple(pols),
                ingress_audit=ing and ing_audit,
                egress_audit=egr and egr_audit,
            )
            old = before.get(pod.key)
            endpoints[pod.key] = old if old is not None and old == ep else ep
        self._node_endpoints[node] = endpoints
        return NodeDesired(
            endpoints=endpoints,
            ipcache=self.ipcache_for(node),
            rules=dict(self.rules),
            identities=self.identities,
            errors=self.errors,
            host_addresses=tuple(str(a) for a in self.node_addresses.get(node, ())),
        )


def compile_cluster(cluster: ClusterState) -> CompiledCluster:
    """Node-independent compilation, cached on the (immutable) ClusterState. A cluster from a
    ClusterBuilder whose previous build is still alive and compiled is compiled from that
    compilation (incrementally, see CompiledCluster._update)."""
    compiled = cluster.cache.get("compiled")
    if (
        not isinstance(compiled, CompiledCluster)
        or compiled.pods is not cluster.pods
        or compiled.policy_map is not cluster.policies
    ):
        previous = None
        before = cluster.delta.previous() if cluster.delta is not None else None
        if before is not None:
            hit = before.cache.get("compiled")
            if isinstance(hit, CompiledCluster) and hit.pods is before.pods:
                previous = hit
        compiled = CompiledCluster(cluster, previous)
        cluster.cache["compiled"] = compiled
    return compiled


def selected_pods(cluster: ClusterState, policy: NetworkPolicy) -> list[str]:
    """Keys of the active pods a policy selects (for the CLI)."""
    c = compile_cluster(cluster)
    idents = c.selected.get(policy.key, frozenset())
    return sorted(p.key for i in idents for p in c.pods_by_identity.get(i, []))


def all_entries(desired: Iterable[EndpointDesired]) -> int:
    """Total number of policy entries over endpoints (for metrics)."""
    return sum(len(ep.entries) for ep in desired)


__all__: Sequence[str] = (
    "CompiledCluster",
    "all_entries",
    "compile_cluster",
    "host_prefix",
    "numeric_port_specs",
    "rule_ref",
    "selected_pods",
)
