"""The generation caches of one compile pipeline, owned by whoever builds its clusters.

The agent recompiles the cluster on every event while the previous compilation is still alive.
A few tables are worth carrying from one compilation to the next even when the next one is
compiled in full (a namespace or node event): each pod's identity key and its encoding, the
pods' /32 and /128 prefix objects with the CIDR identity of each one's longest containing
prefix, and the identity tables of the last set of active Pod objects. A stage reads the
last generation of its kind when it builds the next one and publishes what it built; only the
last generation of each kind is kept, and a published value is never mutated (another thread's
compilation may still be reading it). The one exception, the tier memo
(controller/compiler/stages/tier_profiles.py), is published when its compilation starts and only
gains entries while that compilation's nodes are computed: a reader only looks entries up, and
an entry, once there, never changes.

Ownership: a ClusterBuilder (controller.compiler.model) makes one GenerationCache and every
ClusterState it builds carries it (ClusterState.generations); compile_cluster compiles a
cluster without one (hand-made, replace()d) with a fresh cache. Nothing here is class- or
module-level, so two builders in one process never share, evict or overwrite each other's
generations (tests/unit/test_policy_incremental.py).

This module imports nothing from the compiler: the stages define the types of what they
publish, and the cache keeps one value per type.
"""

from __future__ import annotations

from typing import TypeVar, cast

T = TypeVar("T")


class GenerationCache:
    """The last published generation of each kind (one value per type)."""

    __slots__ = ("_published",)

    def __init__(self) -> None:
        self._published: dict[type, object] = {}

    def last(self, kind: type[T]) -> T | None:
        """The last generation of `kind` published here, None before the first."""
        return cast("T | None", self._published.get(kind))

    def publish(self, generation: object) -> None:
        """Make `generation` the one the next compilation reuses (replaces the last of its type)."""
        self._published[type(generation)] = generation
