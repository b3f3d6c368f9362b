"""The policy compiler: cluster model -> identities -> per-endpoint policy entries (pure).

Entry point: `compile_cluster(cluster)` does the node-independent work once and caches it on
the ClusterState; `CompiledCluster.node_desired(node)` then builds the NodeDesired for one
node. `controller.compiler.compute.compute(cluster, node)` is the two together.

CompiledCluster only runs the stages (controller/compiler/stages/, each module says what
NetworkPolicy semantics it implements; docs/INTERNALS.md has the map layout):

    policies -> identities -> selection -> named ports -> CIDR identities -> ipcache -> entries

Each stage has a full build and an incremental update. A cluster from a ClusterBuilder whose
previous build is alive and compiled is compiled from that compilation: every stage is updated
from the previous one's with what the build's delta names (pods, policies), and a stage nothing
of which changed is the previous object itself; the result is the same as a full compilation
(tests/unit/test_policy_incremental.py checks it over random event sequences). A namespace or
node event, a step that cannot be done locally (an identity allocation that would move other
keys) or a failing step compiles in full. Tables carried across full compilations live in the
builder's GenerationCache (controller.compiler.generations), never in a class or module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from controller.compiler.calico import HostEndpoint
from controller.compiler.desired_state import EndpointDesired, IdentityInfo, NodeDesired, RuleRef
from controller.compiler.generations import GenerationCache
from controller.compiler.identity import PodIdentityKey
from controller.compiler.model import (
    ClusterDelta,
    ClusterState,
    IPBlock,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    Rule,
)
from controller.compiler.selectors import LabelIndex
from controller.compiler.stages.calico_tier import CalicoTables, CalicoTier
from controller.compiler.stages.cidr import CidrTables, IPAddress, host_prefix
from controller.compiler.stages.entries import Entries, NodeEndpoints, RuleEntries, numeric_port_specs
from controller.compiler.stages.identities import IdentityCatalogue, IdentityTables
from controller.compiler.stages.ipcache import Ipcache, IpcacheMap, NodeIpcaches
from controller.compiler.stages.named_ports import NamedPorts
from controller.compiler.stages.ns_identities import NamespaceIdentities
from controller.compiler.stages.policies import PolicyTables, rule_ref
from controller.compiler.stages.selection import NamespaceIndex, PeerSelector, Selection
from controller.compiler.stages.tier_profiles import TierMemo
from controller.compiler.stages.tiers import CnpTables, Tiers
from controller.core.log import get_logger
from controller.core.net import IPNetwork

log = get_logger("vethguard.policy")


class CompiledCluster:
    """Node-independent compilation of a ClusterState: the stage objects, and per-node views.

    Holds the cluster's parts, not the ClusterState: the cluster caches this object (see
    compile_cluster), and a reference back would make a cycle that keeps every replaced cluster
    and its compilation alive until a full garbage collection. Nor does it hold the previous
    compilation (only the per-node tables it reuses), or every one would keep its predecessor."""

    policy_tables: PolicyTables
    identity_tables: IdentityTables
    namespaces: NamespaceIndex
    selection: Selection
    selector: PeerSelector
    named: NamedPorts
    cidr: CidrTables
    ipcache: Ipcache
    catalogue: IdentityCatalogue
    entries: RuleEntries
    tiers: Tiers
    node_ipcaches: NodeIpcaches
    node_endpoints: NodeEndpoints

    def __init__(
        self,
        cluster: ClusterState,
        previous: CompiledCluster | None = None,
        generations: GenerationCache | None = None,
    ) -> None:
        """Compile `cluster`. With `previous` (the compilation of the build cluster.delta is
        relative to), each stage is updated from previous's, which is never modified."""
        self.pods: Mapping[str, Pod] = cluster.pods
        self.nodes: Mapping[str, Node] = cluster.nodes
        self.policy_map: Mapping[str, NetworkPolicy] = cluster.policies
        self.host_endpoints: Mapping[str, HostEndpoint] = cluster.host_endpoints
        self.errors = tuple(cluster.errors)
        self.generations = generations if generations is not None else GenerationCache()
        self.incremental = False  # whether this compilation was derived from a previous one
        delta = cluster.delta
        if (
            previous is not None
            and delta is not None
            and not delta.namespaces
            and not delta.nodes
            # (Calico's tier is compiled in full; see INTERNALS; ClusterNetworkPolicies are not)
            and not cluster.calico_policies
            and previous.tiers.calico is None
            and not (delta.cluster_policies and (cluster.host_endpoints or previous.host_endpoints))
        ):
            try:
                if self._update(cluster, previous, delta):
                    self.incremental = True
                    return
            except Exception:  # a bug here must not stop enforcement: the full path is the reference
                log.exception("incremental compilation failed; compiling in full")
        self._full(cluster)

    def _full(self, cluster: ClusterState) -> None:
        policies = PolicyTables.build(cluster.policies)
        identities = IdentityTables.build(cluster.pods, self.generations)
        names = NamespaceIndex.names_of(cluster.namespaces, identities, policies)
        namespaces = NamespaceIndex.build(
            names, cluster.namespace_labels, self.generations.last(NamespaceIdentities)
        )
        self.generations.publish(namespaces.ids)
        selection = Selection.build(policies, identities)
        selector = PeerSelector.build(identities, namespaces)
        named = NamedPorts.build(policies.named_rules, identities, selector)
        memo = self._tier_memo()
        cnp = CnpTables(cluster.cluster_policies, identities, selector, cluster.nodes, memo)
        calico = CalicoTables(cluster.calico_policies, cluster.policies, identities, cluster.namespace_labels)
        cidr = CidrTables.build(policies.block_prefixes | named.exact | cnp.prefixes | calico.prefixes)
        ipcache = Ipcache.build(cluster.nodes, identities, cidr, cnp.ns_classes, self.generations)
        catalogue = IdentityCatalogue.build(identities, cidr.cidr_identity, cnp.ns_classes)
        self._set(policies, identities, namespaces, selection, selector, named, ipcache, catalogue)
        self.entries = RuleEntries(identities, selection, selector, cidr, named)
        self.tiers = Tiers(
            cnp,
            cidr,
            CalicoTier(calico, cidr) if calico.policies else None,
            policies.rules,
            memo,
        )
        self.node_ipcaches = NodeIpcaches(ipcache)
        self.node_endpoints = NodeEndpoints(self.entries, self.pods, self.policy_map, self.tiers)

    def _update(self, cluster: ClusterState, prev: CompiledCluster, delta: ClusterDelta) -> bool:
        """Every stage from prev's and the pods and policies `delta` names (namespaces and nodes
        unchanged). False when a step cannot be done locally (the caller compiles in full)."""
        policies = prev.policy_tables.update(cluster.policies, delta.policies)
        got = prev.identity_tables.update(prev.pods, cluster.pods, delta.pods)
        if got is None:
            return False
        identities, changes = got
        before = prev.identity_tables
        moved = changes.added | changes.removed
        # namespaces whose set of identities changed
        ns_changed = {identities.identity_namespace.get(i) or before.identity_namespace[i] for i in moved}
        names = (
            NamespaceIndex.names_of(cluster.namespaces, identities, policies)
            if moved or delta.policies
            else prev.namespaces.names
        )
        namespaces = prev.namespaces.update(names, cluster.namespace_labels)
        self.generations.publish(namespaces.ids)
        selection = prev.selection.update(
            prev.policy_map, cluster.policies, policies, identities, delta.policies, ns_changed, moved
        )
        selector = prev.selector.update(identities, namespaces, changes)
        same_indexes = selector is prev.selector
        named = prev.named.update(
            policies.named_rules,
            identities,
            selector,
            changes.touched,
            inputs_changed=bool(changes.touched or delta.policies or not same_indexes),
        )
        memo = self._tier_memo()
        cnp = CnpTables(cluster.cluster_policies, identities, selector, cluster.nodes, memo)
        cidr = prev.cidr.update(policies.block_prefixes | named.exact | cnp.prefixes)
        ipcache = prev.ipcache.update(
            prev.pods,
            cluster.pods,
            delta.pods,
            cluster.nodes,
            identities,
            cidr,
            cnp.ns_classes,
            self.generations,
        )
        if cidr is prev.cidr:
            catalogue = prev.catalogue.update(identities, changes).with_classes(
                prev.ipcache.ns_classes, cnp.ns_classes
            )
        else:
            catalogue = IdentityCatalogue.build(identities, cidr.cidr_identity, cnp.ns_classes)
        # Nothing an endpoint's entries depend on changed but its own pod: the previous
        # EndpointDesired of every unchanged pod is handed out again.
        stable = (
            not delta.policies
            and same_indexes
            and selection.policies_for_identity is prev.selection.policies_for_identity
            and cidr is prev.cidr
            and not named.changed
            and not cluster.cluster_policies  # (what the tiers give an endpoint may have changed)
            and not delta.cluster_policies
        )
        self._set(policies, identities, namespaces, selection, selector, named, ipcache, catalogue)
        self.entries = RuleEntries(identities, selection, selector, cidr, named, keys=prev.entries.keys)
        self.tiers = Tiers(cnp, cidr, memo=memo)
        self.node_ipcaches = NodeIpcaches(ipcache, prev.node_ipcaches)
        self.node_endpoints = NodeEndpoints(
            self.entries, self.pods, self.policy_map, self.tiers, prev.node_endpoints, delta.pods, stable
        )
        return True

    def _tier_memo(self) -> TierMemo:
        """This compilation's tier memo, reading the last one's (published for the next)."""
        memo = TierMemo(self.generations.last(TierMemo))
        self.generations.publish(memo)
        return memo

    def _set(
        self,
        policies: PolicyTables,
        identities: IdentityTables,
        namespaces: NamespaceIndex,
        selection: Selection,
        selector: PeerSelector,
        named: NamedPorts,
        ipcache: Ipcache,
        catalogue: IdentityCatalogue,
    ) -> None:
        self.policy_tables = policies
        self.identity_tables = identities
        self.namespaces = namespaces
        self.selection = selection
        self.selector = selector
        self.named = named
        self.cidr = ipcache.cidr
        self.ipcache = ipcache
        self.catalogue = catalogue

    # -- the tables, for callers (read-only: shared with other compilations) ------------------

    @property
    def policies(self) -> list[NetworkPolicy]:
        """Every policy, by key."""
        return self.policy_tables.policies

    @property
    def policies_by_ns(self) -> dict[str, list[NetworkPolicy]]:
        return self.policy_tables.by_namespace

    @property
    def rules(self) -> dict[int, RuleRef]:
        return self.policy_tables.rules

    @property
    def pod_identity(self) -> dict[str, int]:
        return self.identity_tables.pod_identity

    @property
    def identity_namespace(self) -> dict[int, str]:
        return self.identity_tables.identity_namespace

    @property
    def identity_labels(self) -> dict[int, Mapping[str, str]]:
        return self.identity_tables.identity_labels

    @property
    def pods_by_identity(self) -> dict[int, list[Pod]]:
        return self.identity_tables.pods_by_identity

    @property
    def index(self) -> LabelIndex:
        return self.identity_tables.index

    @property
    def ns_index(self) -> dict[str, LabelIndex]:
        return self.identity_tables.ns_index

    @property
    def identity_of_key(self) -> dict[PodIdentityKey, int]:
        return self.identity_tables.identity_of_key

    @property
    def selected(self) -> dict[str, frozenset[int]]:
        return self.selection.selected

    @property
    def policies_for_identity(self) -> dict[int, list[NetworkPolicy]]:
        return self.selection.policies_for_identity

    @property
    def cidr_identity(self) -> dict[IPNetwork, int]:
        return self.cidr.cidr_identity

    @property
    def namespace_identity(self) -> Mapping[str, int]:
        """namespace name -> the namespace identity its pods' addresses carry and the tier
        profiles' keys name: its class's (stages/ns_classes.py)."""
        return self.ipcache.ns_classes.of

    @property
    def node_addresses(self) -> dict[str, list[IPAddress]]:
        return self.ipcache.node_addresses

    @property
    def prefix_ipcache(self) -> IpcacheMap:
        return self.ipcache.prefix_ipcache

    @property
    def pod_ipcache(self) -> IpcacheMap:
        return self.ipcache.pod_ipcache

    @property
    def identities(self) -> Mapping[int, IdentityInfo]:
        return self.catalogue.view

    def peer_identities(self, policy_ns: str, peer: Peer) -> frozenset[int]:
        """Pod identities a selector peer selects (cluster-wide)."""
        return self.selector.peer_identities(policy_ns, peer)

    def block_identities(self, block: IPBlock) -> frozenset[int]:
        return self.cidr.block_identities(block)

    def rule_peer_identities(self, pol: NetworkPolicy, rule: Rule) -> set[int]:
        return self.entries.rule_peer_identities(pol, rule)

    def longest_cidr_identity(self, addr: IPAddress) -> int:
        return self.cidr.longest(addr)

    def endpoint_entries(self, pod: Pod) -> tuple[bool, bool, Entries, list[str]]:
        """(ingress isolated, egress isolated, entries, selecting policy keys) of an active pod."""
        return self.entries.endpoint_entries(pod)

    def ipcache_for(self, node: str) -> IpcacheMap:
        """The ipcache of `node` (shared by every caller for this node: do not mutate)."""
        return self.node_ipcaches.for_node(node)

    def node_desired(self, node: str) -> NodeDesired:
        endpoints = self.node_endpoints.for_node(node)
        heps = {
            h.name: self.tiers.host_endpoint(h, self.entries.entry_key)
            for h in self.host_endpoints.values()
            if h.node == node
        }
        profiles = self.tiers.profiles
        used = {ep.tier_profile for ep in endpoints.values()}
        used.update(p for h in heps.values() for p in (h.profile_host, h.profile_fwd, h.profile_pre))
        return NodeDesired(
            endpoints=endpoints,
            tier_profiles={p: profiles[p] for p in sorted(used) if p},
            tier_profile_changes={p: self.tiers.changes[p] for p in used if p in self.tiers.changes},
            host_endpoints=heps,
            ipcache=self.ipcache_for(node),
            rules={**self.rules, **self.tiers.rules},
            identities=self.identities,
            errors=self.errors,
            host_addresses=tuple(str(a) for a in self.node_addresses.get(node, ())),
            domains=self.tiers.tables.domains,
        )


def compile_cluster(cluster: ClusterState) -> CompiledCluster:
    """Node-independent compilation, cached on the (immutable) ClusterState. A cluster from a
    ClusterBuilder whose previous build is still alive and compiled is compiled from that
    compilation (incrementally, see CompiledCluster._update); every compilation reads and
    publishes generations in the cluster's builder's GenerationCache (a fresh one for a cluster
    without a builder)."""
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
        compiled = CompiledCluster(cluster, previous, cluster.generations)
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
