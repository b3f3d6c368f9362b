"""Namespace identities (part of the selection stage, stages/selection.py's NamespaceIndex).

Every namespace the compiler knows of gets a number in [NS_ID_MIN, NS_ID_MAX]
(controller.compiler.identity: hash of the name, linear probing), kept for the namespace while
it exists: each compilation derives its numbers from the last ones (allocate_update: removed
names free their numbers, added ones take their home slot) and only when that would move
another namespace's number (a probe collision) allocates the whole set again, as pod identities
are kept (stages/identities.py). A namespace deleted and created again gets its home slot back,
the same number, unless another took it meanwhile.

The ipcache entry of a pod address carries the identity of its namespace's class, the smallest
of its members' (stages/ns_classes.py; 0 for every other address); a ClusterNetworkPolicy peer
that selects every pod of some namespaces is keyed by their classes instead of every pod identity
in them (stages/tiers.py), so a profile does not change when a pod comes or goes in a selected
namespace.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from controller.compiler.identity import allocate, allocate_update, encode_namespace
from controller.core.identities import NS_ID_MAX, NS_ID_MIN


@dataclass(frozen=True)
class NamespaceIdentities:
    """namespace name -> identity, and the inverse."""

    of: Mapping[str, int]
    owner: Mapping[int, str]

    @classmethod
    def derive(cls, names: Collection[str], last: NamespaceIdentities | None) -> NamespaceIdentities:
        """The identities of `names`, from `last` (the previous compilation's) where possible."""
        if last is not None:
            wanted = frozenset(names)
            if wanted == last.of.keys():
                return last
            removed = sorted((n for n in last.of if n not in wanted), key=encode_namespace)
            added = sorted((n for n in wanted if n not in last.of), key=encode_namespace)
            got = allocate_update(last.of, last.owner, removed, added, NS_ID_MIN, NS_ID_MAX, encode_namespace)
            if got is not None:
                return cls(got[0], got[1])
        of = allocate(names, NS_ID_MIN, NS_ID_MAX, encode_namespace)
        return cls(of, {v: k for k, v in of.items()})
