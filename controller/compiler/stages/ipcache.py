"""The ipcache (stage 6 of the compiler): address -> (identity, CIDR identity, namespace identity).

Cluster-wide: the policy prefixes and ::/0, 0.0.0.0/0 (identity world), the node addresses and
every active pod address (its pod identity and the identity of its namespace's class,
stages/ns_classes.py), each with the CIDR identity of its longest containing policy prefix;
only pod addresses have a namespace identity (0 otherwise). Per node: the same, with that
node's own addresses as host and the others' as remote-node; a pod address wins over a node
address, a node address over a prefix.

Across compilations (the builder's GenerationCache): the pods' /32 and /128 prefix objects and
their longest-prefix CIDR identities (while the CIDR identities are the same) are reused. An
IPv4Network/IPv6Network costs ~550 bytes; the agent recompiles on every event while the
previous compilation is alive, so without sharing every pod address would exist twice at the
peak and each event would allocate and free 10k+ of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.compiler.generations import GenerationCache
from controller.compiler.model import Node, Pod
from controller.compiler.stages.cidr import CidrTables, IPAddress, host_prefix
from controller.compiler.stages.identities import IdentityTables
from controller.compiler.stages.ns_classes import NamespaceClasses
from controller.core.identities import ID_HOST, ID_REMOTE_NODE, ID_WORLD
from controller.core.net import IPNetwork

WORLD_V4 = ipaddress.ip_network("0.0.0.0/0")
WORLD_V6 = ipaddress.ip_network("::/0")

IpcacheValue = tuple[int, int, int]  # (identity, CIDR identity, namespace identity)
IpcacheMap = dict[IPNetwork, IpcacheValue]


@dataclass(frozen=True)
class PodPrefixGeneration:
    """The pod addresses' prefix objects of the last pod ipcache build, and each address's
    longest-prefix CIDR identity under `cidr_identity` (that build's CIDR identities)."""

    prefixes: Mapping[str, IPNetwork]
    cidr_identity: Mapping[IPNetwork, int]
    longest: Mapping[str, int]


class _PodPrefixMemo:
    def __init__(self, last: PodPrefixGeneration | None, cidr_identity: Mapping[IPNetwork, int]) -> None:
        self.last_prefixes = last.prefixes if last is not None else {}
        # known longest-prefix identities only while the CIDR identities are those they were found under
        self.known = last.longest if last is not None and last.cidr_identity == cidr_identity else {}
        self.cidr_identity = cidr_identity
        self.prefixes: dict[str, IPNetwork] = {}
        self.longest: dict[str, int] = {}

    def prefix(self, ip: str) -> IPNetwork:
        net = self.prefixes.get(ip)
        if net is None:
            net = self.last_prefixes.get(ip)
            if net is None:
                net = host_prefix(ipaddress.ip_address(ip))
            self.prefixes[ip] = net
        return net

    def generation(self) -> PodPrefixGeneration:
        return PodPrefixGeneration(self.prefixes, self.cidr_identity, self.longest)


def _pod_ipcache(
    identities: IdentityTables, cidr: CidrTables, ns_classes: NamespaceClasses, generations: GenerationCache
) -> tuple[IpcacheMap, frozenset[str]]:
    """(every active pod address -> (pod identity, CIDR identity of its longest prefix, its
    namespace's class identity), the addresses more than one pod has)."""
    entries: IpcacheMap = {}
    values: dict[IpcacheValue, IpcacheValue] = {}  # one tuple per distinct value
    # addresses of more than one pod (a stale pod's address reused): later updates rebuild, as
    # only this order decides which entry wins
    shared: set[str] = set()
    memo = _PodPrefixMemo(generations.last(PodPrefixGeneration), cidr.cidr_identity)
    known, found = memo.known, memo.longest
    # Identities in the order of their first pod (a full build's order, whatever order an
    # incremental one added them in): where two pods share an address the last one wins.
    ns_of = identities.identity_namespace
    for ident, pods in sorted(identities.pods_by_identity.items(), key=lambda item: item[1][0].key):
        ns_ident = ns_classes.of[ns_of[ident]]
        for pod in pods:
            for ip in pod.ips:
                net = memo.prefix(ip)
                longest = known.get(ip)
                if longest is None:
                    longest = cidr.longest(net.network_address)
                if ip in found:
                    shared.add(ip)
                found[ip] = longest
                value = (ident, longest, ns_ident)
                entries[net] = values.setdefault(value, value)
    generations.publish(memo.generation())
    return entries, frozenset(shared)


@dataclass(frozen=True)
class Ipcache:
    cidr: CidrTables  # the CIDR identities the entries carry
    ns_classes: NamespaceClasses  # the namespace class identities the pod entries carry
    prefix_ipcache: IpcacheMap  # world and every policy prefix
    node_addresses: dict[str, list[IPAddress]]
    node_cidr: dict[IPAddress, int]  # node address -> its longest-prefix CIDR identity
    pod_ipcache: IpcacheMap
    shared_ips: frozenset[str]  # pod addresses more than one active pod has
    # (prefixes removed, entries added or changed) since the previous compilation's pod
    # ipcache when it was updated rather than rebuilt
    pod_changes: tuple[list[IPNetwork], IpcacheMap] | None = field(default=None, compare=False)

    @classmethod
    def build(
        cls,
        nodes: Mapping[str, Node],
        identities: IdentityTables,
        cidr: CidrTables,
        ns_classes: NamespaceClasses,
        generations: GenerationCache,
    ) -> Ipcache:
        base: IpcacheMap = {}
        base[WORLD_V4] = (ID_WORLD, cidr.cidr_identity.get(WORLD_V4, 0), 0)
        base[WORLD_V6] = (ID_WORLD, cidr.cidr_identity.get(WORLD_V6, 0), 0)
        for net, ident in cidr.cidr_identity.items():
            base[net] = (ID_WORLD, ident, 0)
        node_addresses = {
            name: [ipaddress.ip_address(a) for a in node.addresses] for name, node in nodes.items()
        }
        node_cidr = {addr: cidr.longest(addr) for addrs in node_addresses.values() for addr in addrs}
        pod_ipcache, shared = _pod_ipcache(identities, cidr, ns_classes, generations)
        return cls(cidr, ns_classes, base, node_addresses, node_cidr, pod_ipcache, shared)

    def update(
        self,
        old_pods: Mapping[str, Pod],
        pods: Mapping[str, Pod],
        changed: frozenset[str],
        nodes: Mapping[str, Node],
        identities: IdentityTables,
        cidr: CidrTables,
        ns_classes: NamespaceClasses,
        generations: GenerationCache,
    ) -> Ipcache:
        """The ipcache from this one (built over `old_pods`, same nodes) and the changed pods.
        Namespaces added or removed leave the unchanged pods' entries as they are (a
        namespace's first pod or last pod is a changed pod); the pods of a namespace whose
        class identity moved are changed pods too (all of them when most moved: rebuilt)."""
        if cidr is not self.cidr:
            return Ipcache.build(nodes, identities, cidr, ns_classes, generations)
        if ns_classes is not self.ns_classes:
            moved = self.ns_classes.moved(ns_classes)
            if moved:
                if 2 * len(moved) > len(ns_classes.of):
                    return Ipcache.build(nodes, identities, cidr, ns_classes, generations)
                by_ns, pods_of = identities.ns_index, identities.pods_by_identity
                changed = changed.union(
                    pod.key
                    for ns in moved
                    if ns in by_ns
                    for ident in by_ns[ns].all
                    for pod in pods_of[ident]
                )
            return self._with_ns_classes(ns_classes)._update(old_pods, pods, changed, identities, generations)
        return self._update(old_pods, pods, changed, identities, generations)

    def _with_ns_classes(self, ns_classes: NamespaceClasses) -> Ipcache:
        return Ipcache(
            self.cidr, ns_classes, self.prefix_ipcache, self.node_addresses, self.node_cidr,
            self.pod_ipcache, self.shared_ips, self.pod_changes,
        )  # fmt: skip

    def _update(
        self,
        old_pods: Mapping[str, Pod],
        pods: Mapping[str, Pod],
        changed: frozenset[str],
        identities: IdentityTables,
        generations: GenerationCache,
    ) -> Ipcache:
        cidr = self.cidr
        if not changed:
            return (
                self if self.pod_changes is None else self._with_pods(self.pod_ipcache, self.shared_ips, None)
            )
        got = self._update_pods(old_pods, pods, changed, identities)
        if got is None:
            pod_ipcache, shared = _pod_ipcache(identities, cidr, self.ns_classes, generations)
            return self._with_pods(pod_ipcache, shared, None)
        pod_ipcache, changes = got
        return self._with_pods(pod_ipcache, frozenset(), changes)

    def _with_pods(
        self,
        pod_ipcache: IpcacheMap,
        shared: frozenset[str],
        changes: tuple[list[IPNetwork], IpcacheMap] | None,
    ) -> Ipcache:
        return Ipcache(
            self.cidr, self.ns_classes, self.prefix_ipcache, self.node_addresses, self.node_cidr,
            pod_ipcache, shared, changes,
        )  # fmt: skip

    def _update_pods(
        self,
        old_pods: Mapping[str, Pod],
        pods: Mapping[str, Pod],
        changed: frozenset[str],
        identities: IdentityTables,
    ) -> tuple[IpcacheMap, tuple[list[IPNetwork], IpcacheMap]] | None:
        """The pod ipcache with the changed pods' entries; None when an address is or becomes
        shared by two pods (then rebuilt in full, as the order decides). An address no two pods
        share is its pod's entry, so no address -> pod table is needed."""
        if self.shared_ips:
            return None
        old_ips: set[str] = set()
        for key in changed:
            old = old_pods.get(key)
            if old is not None and old.active:
                old_ips.update(old.ips)
        new_idents: dict[str, int] = {}  # address -> identity of the changed pod that has it
        ns_of, ns_ids = identities.identity_namespace, self.ns_classes.of
        for key in changed:
            pod = pods.get(key)
            if pod is None or not pod.active:
                continue
            ident = identities.pod_identity[key]
            for ip in pod.ips:
                if ip in new_idents:
                    return None  # two changed pods with one address
                new_idents[ip] = ident
        pod_ipcache = dict(self.pod_ipcache)
        removed: list[IPNetwork] = []
        added: IpcacheMap = {}
        for ip in old_ips - new_idents.keys():
            net = host_prefix(ipaddress.ip_address(ip))
            del pod_ipcache[net]
            removed.append(net)
        for ip, ident in new_idents.items():
            net = host_prefix(ipaddress.ip_address(ip))
            if ip not in old_ips and net in pod_ipcache:
                return None  # an unchanged pod has this address too
            value = (ident, self.cidr.longest(net.network_address), ns_ids[ns_of[ident]])
            # (an equal key already there stays: the ipcache keeps its prefix objects)
            pod_ipcache[net] = added[net] = value
        return pod_ipcache, (removed, added)

    def node_entries(self, node: str) -> IpcacheMap:
        """The node addresses' entries as `node` sees them."""
        out: IpcacheMap = {}
        for name, addrs in self.node_addresses.items():
            ident = ID_HOST if name == node else ID_REMOTE_NODE
            for addr in addrs:
                out[host_prefix(addr)] = (ident, self.node_cidr[addr], 0)
        return out


@dataclass(frozen=True)
class _Before:
    """What NodeIpcaches reuses from the previous compilation's (never that object itself:
    each would keep the one before it alive)."""

    ipcaches: Mapping[str, IpcacheMap] = field(default_factory=dict)
    node_entries: Mapping[str, IpcacheMap] = field(default_factory=dict)
    prefix_ipcache: IpcacheMap | None = None
    pod_ipcache: IpcacheMap | None = None
    node_addresses: Mapping[str, list[IPAddress]] | None = None


class NodeIpcaches:
    """Each node's ipcache, built on first request; from the previous compilation's ipcache
    of that node (and the pod entries that changed) where that is the same but for pods."""

    def __init__(self, ipcache: Ipcache, previous: NodeIpcaches | None = None) -> None:
        self.ipcache = ipcache
        self._ipcaches: dict[str, IpcacheMap] = {}
        self._node_entries: dict[str, IpcacheMap] = {}
        if previous is None:
            self._before = _Before()
        else:
            p = previous.ipcache
            self._before = _Before(
                previous._ipcaches, previous._node_entries, p.prefix_ipcache, p.pod_ipcache, p.node_addresses
            )

    def for_node(self, node: str) -> IpcacheMap:
        """The ipcache of `node` (shared by every caller for this node: do not mutate)."""
        out = self._ipcaches.get(node)
        if out is not None:
            return out
        now, before = self.ipcache, self._before
        out = before.ipcaches.get(node)
        if (
            out is None
            or before.prefix_ipcache is not now.prefix_ipcache
            or before.node_addresses is not now.node_addresses
        ):
            out = self._build(node)
        elif before.pod_ipcache is not now.pod_ipcache:
            if now.pod_changes is None:
                out = self._build(node)
            else:
                # The previous node ipcache with the pod entries that changed: a removed pod
                # address falls back to what lies under it (a node address, a policy prefix).
                out = dict(out)
                removed, added = now.pod_changes
                nodes = self.node_entries(node)
                for net in removed:
                    lower = nodes.get(net) or now.prefix_ipcache.get(net)
                    if lower is None:
                        out.pop(net, None)
                    else:
                        out[net] = lower
                out.update(added)
        self._ipcaches[node] = out
        return out

    def node_entries(self, node: str) -> IpcacheMap:
        """The node addresses' entries as `node` sees them (shared: do not mutate)."""
        out = self._node_entries.get(node)
        if out is None:
            before = self._before
            if before.node_addresses is self.ipcache.node_addresses and node in before.node_entries:
                out = before.node_entries[node]
            else:
                out = self.ipcache.node_entries(node)
            self._node_entries[node] = out
        return out

    def _build(self, node: str) -> IpcacheMap:
        out = dict(self.ipcache.prefix_ipcache)
        out.update(self.node_entries(node))
        out.update(self.ipcache.pod_ipcache)
        return out
