"""The policy compiler: cluster model -> identities -> per-endpoint policy entries (pure).

Entry point: `compile_cluster(cluster)` does the node-independent work once (identities,
selector evaluation, ipBlock carving, named-port resolution, the cluster-wide ipcache) and is
cached on the ClusterState; `CompiledCluster.node_desired(node)` then builds the NodeDesired
for one node. `controller.mapstate.compute(cluster, node)` is the two together.

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
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from controller.identity import (
    POD_ID_MAX,
    RESERVED_NAMES,
    PodIdentityKey,
    _encode_pod_key,
    allocate,
    allocate_cidr_identities,
    pod_identity_key,
)
from controller.mapstate import (
    DIR_EGRESS,
    DIR_INGRESS,
    ID_ANY,
    ID_HOST,
    ID_REMOTE_NODE,
    ID_WORLD,
    POD_ID_MIN,
    VERDICT_ALLOW,
    EndpointDesired,
    IdentityInfo,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    RuleRef,
)
from controller.model import PROTOCOLS, ClusterState, IPBlock, NetworkPolicy, Peer, Pod, Rule
from controller.portrange import range_to_prefixes
from controller.selectors import LabelIndex, LabelSelector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
    build (controller.model.ClusterBuilder reuses unchanged objects), so its identity key
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

    published: ClassVar[_Identities | None] = None


@dataclass(frozen=True)
class _Target:
    """A destination of an egress named port: a pod identity or an exact per-pod prefix."""

    identity: int | None = None
    prefix: IPNetwork | None = None


class CompiledCluster:
    """Node-independent compilation of a ClusterState (see the module docstring)."""

    def __init__(self, cluster: ClusterState) -> None:
        # The cluster's parts, not the ClusterState: the cluster caches this object (see
        # compile_cluster), and a reference back would make a cycle that keeps every replaced
        # cluster and its compilation alive until a full garbage collection (the agent would
        # hold two or three generations of the whole model at 10k pods).
        self.pods: Mapping[str, Pod] = cluster.pods
        self.nodes = cluster.nodes
        self.policy_map: Mapping[str, NetworkPolicy] = cluster.policies
        self.errors = tuple(cluster.errors)
        self.policies: list[NetworkPolicy] = sorted(cluster.policies.values(), key=lambda p: p.key)
        self._build_identities()
        self._build_namespace_index(cluster)
        self._selector_cache: dict[tuple[Any, ...], frozenset[int]] = {}
        self._build_selection()
        exact = self._resolve_egress_named_ports()
        self._build_cidr_identities(exact)
        self._build_ipcache_base()
        self._rule_cache: dict[tuple[Any, ...], dict[PolicyEntryKey, PolicyEntryValue]] = {}
        self._templates: dict[tuple[Any, ...], dict[PolicyEntryKey, None]] = {}
        self._keys: dict[tuple[int, int, int, int, int], PolicyEntryKey] = {}
        self._merge_cache: dict[tuple[Any, ...], Entries] = {}
        self._block_cache: dict[IPBlock, frozenset[int]] = {}
        self.rules: dict[int, RuleRef] = {}
        for pol in self.policies:
            for direction, rules in ((DIR_INGRESS, pol.ingress), (DIR_EGRESS, pol.egress)):
                for rule in rules:
                    ref = rule_ref(pol.namespace, pol.name, direction, rule.index)
                    self.rules.setdefault(ref, RuleRef(pol.namespace, pol.name, direction, rule.index))

    # -- identities ---------------------------------------------------------------------------

    def _build_identities(self) -> None:
        active = [p for p in self.pods.values() if p.active]
        previous = _Identities.published
        if (
            previous is not None
            and len(previous.active) == len(active)
            and all(previous.active.get(p.key) is p for p in active)
        ):
            # The very Pod objects of the last compilation (a policy or namespace event): its
            # identities, identity tables and label indexes, which nothing mutates, are shared.
            self.pod_identity: dict[str, int] = previous.pod_identity
            self.identity_namespace: dict[int, str] = previous.identity_namespace
            self.identity_labels: dict[int, Mapping[str, str]] = previous.identity_labels
            self.pods_by_identity: dict[int, list[Pod]] = previous.pods_by_identity
            self.index: LabelIndex = previous.index
            self.ns_index: dict[str, LabelIndex] = previous.ns_index
            return
        memo = _PodKeys.begin()
        keys = {p.key: memo.key(p) for p in active}
        # = allocate_pod_identities(keys.values()), each distinct key encoded once
        alloc = allocate(set(keys.values()), POD_ID_MIN, POD_ID_MAX, memo.encode)
        memo.publish()
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
        )

    def _build_namespace_index(self, cluster: ClusterState) -> None:
        names = set(cluster.namespaces) | set(self.identity_namespace.values())
        names |= {p.namespace for p in self.policies}
        self.ns_names = sorted(names)
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
        self.selected: dict[str, frozenset[int]] = {}
        self.policies_for_identity: dict[int, list[NetworkPolicy]] = {}
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
        res: dict[int, tuple[int, ...] | None] = {}
        for ident, pods in self.pods_by_identity.items():
            resolved = {p.resolve_named_port(name, protocol) for p in pods if p.ips}
            if len(resolved) > 1:
                res[ident] = None
            elif resolved:
                nums = next(iter(resolved))
                if nums:
                    res[ident] = nums
        self._named_cache[key] = res
        return res

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

    def _resolve_egress_named_ports(self) -> set[IPNetwork]:
        """Resolve named ports of egress rules; returns the exact per-pod prefixes needed.

        Each distinct (destination identities, ipBlocks, name, protocol) is resolved once and
        numbered (a token); `egress_named[(policy, rule index)]` holds the rule's tokens."""
        self.egress_named: dict[tuple[str, int], tuple[int, ...]] = {}
        self.named_targets: list[tuple[tuple[_Target, int, int], ...]] = []
        self._named_cache: dict[tuple[str, str], dict[int, tuple[int, ...] | None]] = {}
        token_of: dict[tuple[Any, ...], int] = {}
        exact: set[IPNetwork] = set()
        for pol in self.policies:
            if not pol.isolates_egress:
                continue
            for rule in pol.egress:
                if not rule.has_named_ports:
                    continue
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
                        self.named_targets.append(
                            self._named_targets(idents, blocks, pport.port, pport.protocol, exact)
                        )
                    tokens.append(tok)
                self.egress_named[(pol.key, rule.index)] = tuple(tokens)
        return exact

    # -- CIDR identities and the ipcache ----------------------------------------------------

    def _build_cidr_identities(self, exact: set[IPNetwork]) -> None:
        prefixes: set[IPNetwork] = set(exact)
        for pol in self.policies:
            for rule in (*pol.ingress, *pol.egress):
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        prefixes.add(peer.ip_block.cidr)
                        prefixes.update(peer.ip_block.excepts)
        self.cidr_identity: dict[IPNetwork, int] = allocate_cidr_identities(prefixes)
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
        self.node_addresses: dict[str, list[IPAddress]] = {
            name: [ipaddress.ip_address(a) for a in node.addresses] for name, node in self.nodes.items()
        }
        self._node_cidr: dict[IPAddress, int] = {}
        for addrs in self.node_addresses.values():
            for addr in addrs:
                self._node_cidr[addr] = self.longest_cidr_identity(addr)
        pod_entries: dict[IPNetwork, tuple[int, int]] = {}
        values: dict[tuple[int, int], tuple[int, int]] = {}  # one tuple per distinct value
        prefixes = _PodPrefixes.begin()
        known, found = prefixes.known_cidr(self.cidr_identity)
        for ident, pods in self.pods_by_identity.items():
            for pod in pods:
                for ip in pod.ips:
                    net = prefixes.get(ip)
                    cidr = known.get(ip)
                    if cidr is None:
                        cidr = self.longest_cidr_identity(net.network_address)
                    found[ip] = cidr
                    value = (ident, cidr)
                    pod_entries[net] = values.setdefault(value, value)
        prefixes.publish()
        self.pod_ipcache = pod_entries
        self.prefix_ipcache = base

        info: dict[int, IdentityInfo] = {
            i: IdentityInfo(i, "reserved", name=n) for i, n in RESERVED_NAMES.items()
        }
        for ident, labels in self.identity_labels.items():
            info[ident] = IdentityInfo(ident, "pod", namespace=self.identity_namespace[ident], labels=labels)
        for net, ident in self.cidr_identity.items():
            info[ident] = IdentityInfo(ident, "cidr", cidr=str(net))
        self.identities: Mapping[int, IdentityInfo] = MappingProxyType(info)

    def ipcache_for(self, node: str) -> dict[IPNetwork, tuple[int, int]]:
        out = dict(self.prefix_ipcache)
        for name, addrs in self.node_addresses.items():
            ident = ID_HOST if name == node else ID_REMOTE_NODE
            for addr in addrs:
                out[host_prefix(addr)] = (ident, self._node_cidr[addr])
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

    def node_desired(self, node: str) -> NodeDesired:
        endpoints: dict[str, EndpointDesired] = {}
        for pod in sorted(self.pods.values(), key=lambda p: p.key):
            if pod.node != node or not pod.active or not pod.ips:
                continue
            ing, egr, entries, pols = self.endpoint_entries(pod)
            ing_audit, egr_audit = self._audit_only(pols)
            endpoints[pod.key] = EndpointDesired(
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
        return NodeDesired(
            endpoints=endpoints,
            ipcache=self.ipcache_for(node),
            rules=dict(self.rules),
            identities=self.identities,
            errors=self.errors,
        )


def compile_cluster(cluster: ClusterState) -> CompiledCluster:
    """Node-independent compilation, cached on the (immutable) ClusterState."""
    compiled = cluster.cache.get("compiled")
    if (
        not isinstance(compiled, CompiledCluster)
        or compiled.pods is not cluster.pods
        or compiled.policy_map is not cluster.policies
    ):
        compiled = CompiledCluster(cluster)
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
