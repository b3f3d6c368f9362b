"""Selection (stage 3 of the compiler): which policies select which identities, and which
identities a selector peer (podSelector / namespaceSelector / both) selects cluster-wide.

Selectors are evaluated against inverted label indexes over pod identities (not pods), and a
peer's result is cached per distinct selector; the cache is shared with the next compilation
while the label indexes it read are the same objects, and carried into it with the identities
that came and went applied while the namespaces are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from controller.compiler.model import NetworkPolicy, Peer
from controller.compiler.selectors import LabelIndex, LabelSelector
from controller.compiler.stages.identities import IdentityChanges, IdentityTables
from controller.compiler.stages.ns_identities import NamespaceIdentities
from controller.compiler.stages.policies import PolicyTables


@dataclass(frozen=True)
class NamespaceIndex:
    """Every namespace the compiler knows of (named by an object, a pod identity or a policy),
    by name, with a label index over their labels (ids = positions in `names`) and each one's
    namespace identity (stages/ns_identities.py)."""

    names: list[str]
    label_index: LabelIndex
    ids: NamespaceIdentities

    @staticmethod
    def names_of(
        namespaces: Collection[str], identities: IdentityTables, policies: PolicyTables
    ) -> list[str]:
        # ns_index has a namespace for each namespace with an identity
        return sorted(frozenset(namespaces).union(identities.ns_index, policies.by_namespace))

    @classmethod
    def build(
        cls,
        names: list[str],
        labels_of: Callable[[str], Mapping[str, str]],
        last_ids: NamespaceIdentities | None = None,
    ) -> NamespaceIndex:
        """`last_ids`: the previous compilation's namespace identities (kept where they can be)."""
        return cls(
            names,
            LabelIndex((i, labels_of(n)) for i, n in enumerate(names)),
            NamespaceIdentities.derive(names, last_ids),
        )

    def update(self, names: list[str], labels_of: Callable[[str], Mapping[str, str]]) -> NamespaceIndex:
        """The index of `names` (namespace labels unchanged): this one while the names are the same."""
        return self if names == self.names else NamespaceIndex.build(names, labels_of, self.ids)

    def identities_matching(self, sel: LabelSelector) -> frozenset[int]:
        """The namespace identities of the namespaces `sel` selects."""
        of = self.ids.of
        names = self.names
        return frozenset(of[names[i]] for i in sel.select(self.label_index))


@dataclass(frozen=True)
class Selection:
    selected: dict[str, frozenset[int]]  # policy key -> identities it selects
    policies_for_identity: dict[int, list[NetworkPolicy]]  # identity -> selecting policies, by key

    @classmethod
    def build(cls, policies: PolicyTables, identities: IdentityTables) -> Selection:
        selected: dict[str, frozenset[int]] = {}
        pfi: dict[int, list[NetworkPolicy]] = {}
        for pol in policies.policies:
            idx = identities.ns_index.get(pol.namespace)
            sel = frozenset(pol.pod_selector.select(idx)) if idx is not None else frozenset()
            selected[pol.key] = sel
            for ident in sel:
                pfi.setdefault(ident, []).append(pol)
        return cls(selected, pfi)

    def update(
        self,
        old_policy_map: Mapping[str, NetworkPolicy],
        policy_map: Mapping[str, NetworkPolicy],
        policies: PolicyTables,
        identities: IdentityTables,
        changed_policies: frozenset[str],
        ns_changed: Collection[str],
        idents: Collection[int],
    ) -> Selection:
        """The selection from this one: the changed policies and those of the namespaces whose
        identities changed (`ns_changed`) are evaluated again; `idents` = identities added or
        removed."""
        redo = set(changed_policies)
        for ns in ns_changed:
            redo.update(p.key for p in policies.by_namespace.get(ns, ()))
        if not redo and not idents:
            return self
        selected = dict(self.selected)
        affected = set(idents)
        for key in redo:
            old = self.selected.get(key, frozenset())
            pol = policy_map.get(key)
            if pol is None:
                selected.pop(key, None)
                affected |= old
                continue
            idx = identities.ns_index.get(pol.namespace)
            new = frozenset(pol.pod_selector.select(idx)) if idx is not None else frozenset()
            selected[key] = new
            # a replaced policy object must replace the old one in every list that has it
            affected |= (old | new) if old_policy_map.get(key) is not pol else (old ^ new)
        pfi = dict(self.policies_for_identity)
        for ident in affected:
            ident_ns = identities.identity_namespace.get(ident)
            members = (
                [p for p in policies.by_namespace.get(ident_ns, ()) if ident in selected[p.key]]
                if ident_ns is not None
                else []
            )
            if members:
                pfi[ident] = members
            else:
                pfi.pop(ident, None)
        return Selection(selected, pfi)


class PeerSelector:
    """Pod identities a selector peer selects (cluster-wide), cached per distinct selector.

    The cache outlives a compilation: while the namespaces are the same, the next compilation's
    selector starts from this one's selections with the identities that came and went applied
    (each new identity tested against each cached selector), instead of evaluating every selector
    again over the whole index (issue 19: a relabelled pod at 50k pods re-ran ~1,250 of them).
    Only selections asked for while this selector was in use are carried, so the selectors of
    deleted policies leave the cache with the next identity change."""

    def __init__(self, identities: IdentityTables, namespaces: NamespaceIndex) -> None:
        self.ns_index = identities.ns_index
        self.index = identities.index
        self.identity_namespace = identities.identity_namespace
        self.namespaces = namespaces
        self._cache: dict[tuple[Any, ...], frozenset[int]] = {}
        # cache key -> the peer's (policy namespace, namespace selector, pod selector)
        self._peers: dict[tuple[Any, ...], tuple[str, LabelSelector | None, LabelSelector | None]] = {}
        self._ns_cache: dict[str, frozenset[int]] = {}
        self._ns_names: dict[str, frozenset[str]] = {}  # namespace selector key -> names it selects
        self._asked: set[tuple[Any, ...]] = set()  # cache keys asked for (what update() carries)
        self._ns_asked: set[str] = set()

    @classmethod
    def build(cls, identities: IdentityTables, namespaces: NamespaceIndex) -> PeerSelector:
        return cls(identities, namespaces)

    def update(
        self, identities: IdentityTables, namespaces: NamespaceIndex, changes: IdentityChanges | None = None
    ) -> PeerSelector:
        """This selector (and its cache) while the indexes it evaluates against are the same:
        the identities' namespaces and labels are then those it read (an update replaces
        ns_index whenever an identity comes or goes). Otherwise a new one; with the same
        namespaces and the identities' `changes`, it carries this one's selections over."""
        if identities.ns_index is self.ns_index and namespaces is self.namespaces:
            return self
        out = PeerSelector(identities, namespaces)
        if namespaces is not self.namespaces or changes is None:
            return out
        # (list(): a snapshot, taken at once, should another thread still ask this selector)
        for k in list(self._ns_asked):
            hit = self._ns_cache.get(k)
            if hit is not None:
                out._ns_cache[k] = hit  # (of the namespaces alone)
        removed = changes.removed
        added = [(i, identities.identity_namespace[i], identities.identity_labels[i]) for i in changes.added]
        for key in list(self._asked):
            got = self._cache.get(key)
            if got is None:
                continue
            policy_ns, ns_sel, pod_sel = out._peers[key] = self._peers[key]
            if ns_sel is not None and ns_sel.key in self._ns_names:
                out._ns_names[ns_sel.key] = self._ns_names[ns_sel.key]
            gained = [i for i, ns, labels in added if out._selects(policy_ns, ns_sel, pod_sel, ns, labels)]
            if gained or not removed.isdisjoint(got):
                got = got.difference(removed).union(gained)
            out._cache[key] = got
        return out

    def _selects(
        self,
        policy_ns: str,
        ns_sel: LabelSelector | None,
        pod_sel: LabelSelector | None,
        ns: str,
        labels: Mapping[str, str],
    ) -> bool:
        """Whether a peer selects an identity of namespace `ns` with these labels (as
        peer_identities would find it)."""
        if ns_sel is None:
            return ns == policy_ns and pod_sel is not None and pod_sel.matches(labels)
        names = self._ns_names.get(ns_sel.key)
        if names is None:
            names = self._ns_names[ns_sel.key] = frozenset(self._namespaces_matching(ns_sel))
        return ns in names and (pod_sel is None or pod_sel.matches(labels))

    def namespace_identities(self, sel: LabelSelector) -> frozenset[int]:
        """The namespace identities of the namespaces `sel` selects (cached like peers)."""
        hit = self._ns_cache.get(sel.key)
        if hit is None:
            hit = self._ns_cache[sel.key] = self.namespaces.identities_matching(sel)
        self._ns_asked.add(sel.key)
        return hit

    def _namespaces_matching(self, sel: LabelSelector) -> list[str]:
        names = self.namespaces.names
        return [names[i] for i in sel.select(self.namespaces.label_index)]

    def peer_identities(self, policy_ns: str, peer: Peer) -> frozenset[int]:
        pod_sel, ns_sel = peer.pod_selector, peer.namespace_selector
        key = (
            policy_ns if ns_sel is None else None,
            None if ns_sel is None else ns_sel.key,
            None if pod_sel is None else pod_sel.key,
        )
        hit = self._cache.get(key)
        self._asked.add(key)
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
            elif len(namespaces) * 4 < len(self.namespaces.names) or len(namespaces) < 8:
                for ns in namespaces:
                    idx = self.ns_index.get(ns)
                    if idx is not None:
                        result |= pod_sel.select(idx)
            else:
                allowed = set(namespaces)
                result = {i for i in pod_sel.select(self.index) if self.identity_namespace[i] in allowed}
        frozen = frozenset(result)
        self._peers[key] = (policy_ns, ns_sel, pod_sel)  # (before the entry: update() reads both)
        self._cache[key] = frozen
        return frozen
