"""Namespace classes (part of the tiers stage, stages/cnp_tables.py): the namespaces that every
namespace-wide ClusterNetworkPolicy peer selects alike.

A peer that selects every pod of some namespaces is keyed in a tier profile by identities that
a pod address's ipcache entry carries (`ns_identity`). Keyed per namespace, a rule denying
from the 1,250 `env=prod` namespaces of a 2,500-namespace cluster is 1,250 keys (times its port
pieces) in every profile it applies to, and every change to a rule such namespaces share
rewrites all of them. But no rule can tell apart two namespaces that every namespace-wide peer
selects alike, so such namespaces form one class, and the class is what the ipcache carries and
the keys name: that rule is then one key per class (50 classes of namespaces in the control-plane
benchmark's mix, plus one per namespace a rule names alone).

The classes are the partition of the known namespaces by which of the namespace-wide peers'
selections (`selections`) hold them. A class's identity is the smallest namespace identity
(stages/ns_identities.py) of its members: it needs no allocation, it is unique (every namespace
is in one class), it lies in the namespace range, it is the same after a restart whenever the
namespace identities are (they usually are: stages/ns_identities.py), and it stays while the
class keeps that member. When a policy adds a
selection that splits a class, the part with that member keeps the identity and only the other
part's pods get new ipcache values; the profiles' keys for the class stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.compiler.stages.ns_identities import NamespaceIdentities

SAME_PARTITION_KEPT = 8  # selection sets remembered per classes object (NamespaceClasses._same)


@dataclass(frozen=True)
class NamespaceClasses:
    """namespace name -> its class's identity, and each class's members."""

    ids: NamespaceIdentities  # the namespace identities the classes are made of
    selections: frozenset[frozenset[int]]  # ... and the selections they tell apart
    of: Mapping[str, int]  # namespace name -> the identity of its class
    members: Mapping[int, tuple[str, ...]]  # class identity -> its namespaces, sorted
    _class_of: Mapping[int, int] = field(repr=False)  # namespace identity -> class identity
    # Other selections found to make these same classes (from the same `ids`): a later build
    # with one of them returns these classes without partitioning again. A cache, bounded.
    _same: set[frozenset[frozenset[int]]] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        ids: NamespaceIdentities,
        selections: Iterable[frozenset[int]],
        last: NamespaceClasses | None = None,
    ) -> NamespaceClasses:
        """The classes of `ids`' namespaces by the selections (sets of namespace identities) that
        hold them; `last` itself when it was built from the same (a ClusterNetworkPolicy event
        that brings no new selection and leaves none unused changes no class), or from other
        selections that partition them alike (then remembered: the next build with them does not
        partition again)."""
        wanted = frozenset(selections)
        if last is not None and last.ids is ids and (last.selections == wanted or wanted in last._same):
            return last
        held: dict[int, list[int]] = {ident: [] for ident in ids.owner}
        for k, selection in enumerate(wanted):
            for ident in selection:
                held[ident].append(k)
        classes: dict[tuple[int, ...], list[int]] = {}
        for ident, ks in held.items():
            classes.setdefault(tuple(ks), []).append(ident)
        class_of: dict[int, int] = {}
        members: dict[int, tuple[str, ...]] = {}
        for idents in classes.values():
            head = min(idents)
            members[head] = tuple(sorted(ids.owner[i] for i in idents))
            for ident in idents:
                class_of[ident] = head
        of = {name: class_of[ident] for name, ident in ids.of.items()}
        if last is not None and last.of == of:
            if len(last._same) >= SAME_PARTITION_KEPT:
                last._same.clear()
            last._same.add(wanted)
            return last  # (other selections, the same partition)
        return cls(ids, wanted, of, members, class_of)

    def classes(self, selection: frozenset[int]) -> frozenset[int]:
        """The class identities of a selection the classes were built from (its namespaces'
        classes, each wholly inside it)."""
        return frozenset(self._class_of[ident] for ident in selection)

    def moved(self, other: NamespaceClasses) -> frozenset[str]:
        """The namespaces both know whose class identity differs in `other`."""
        if other is self:
            return frozenset()
        mine = self.of
        return frozenset(name for name, ident in other.of.items() if mine.get(name, ident) != ident)
