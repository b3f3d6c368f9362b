"""Pod identities (stage 2 of the compiler).

Every active pod gets the identity of its (namespace, labels) key (controller.compiler.identity
allocates them); per identity the compiler keeps its namespace, labels and pods (by key), and
label indexes over identities (cluster-wide and per namespace) for selector evaluation.

Across compilations (the builder's GenerationCache): each pod's identity key and each key's
encoding are reused while the Pod is the same object, and a full build over the very Pod
objects of the last full build (a policy, namespace or node event) shares that build's tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from controller.compiler.desired_state import IdentityInfo
from controller.compiler.generations import GenerationCache
from controller.compiler.identity import (
    RESERVED_NAMES,
    PodIdentityKey,
    _encode_pod_key,
    allocate,
    allocate_update,
    pod_identity_key,
)
from controller.compiler.model import Pod
from controller.compiler.selectors import LabelIndex
from controller.compiler.stages.ns_classes import NamespaceClasses
from controller.core.identities import POD_ID_MAX, POD_ID_MIN
from controller.core.net import IPNetwork


@dataclass(frozen=True)
class PodKeyGeneration:
    """Each pod's identity key (with the Pod it was computed from) and each key's encoding
    (what allocation sorts and hashes), as the last full identity build computed them."""

    keys: Mapping[str, tuple[Pod, PodIdentityKey]]
    encoded: Mapping[PodIdentityKey, bytes]


class _PodKeyMemo:
    """Identity keys and encodings for one build, looked up in the last generation first."""

    def __init__(self, last: PodKeyGeneration | None) -> None:
        self.last = last if last is not None else PodKeyGeneration({}, {})
        self.keys: dict[str, tuple[Pod, PodIdentityKey]] = {}
        self.encoded: dict[PodIdentityKey, bytes] = {}
        self._by_labels: dict[tuple[str, int], tuple[Mapping[str, str], PodIdentityKey]] = {}

    def key(self, pod: Pod) -> PodIdentityKey:
        hit = self.last.keys.get(pod.key)
        if hit is None or hit[0] is not pod:
            # Pods of one namespace with one (shared, parse._Interner) label map share one key
            # object: 10,000 pods hold ~6,000 keys instead of 10,000 (~1 MB).
            ref = (pod.namespace, id(pod.labels))
            shared = self._by_labels.get(ref)
            if shared is None or shared[0] is not pod.labels:
                shared = self._by_labels[ref] = (pod.labels, pod_identity_key(pod.namespace, pod.labels))
            hit = (pod, shared[1])
        self.keys[pod.key] = hit
        return hit[1]

    def encode(self, key: PodIdentityKey) -> bytes:
        data = self.last.encoded.get(key)
        if data is None:
            data = _encode_pod_key(key)
        self.encoded[key] = data
        return data

    def generation(self) -> PodKeyGeneration:
        return PodKeyGeneration(self.keys, self.encoded)


@dataclass(frozen=True)
class IdentityChanges:
    """What an incremental update changed: identities whose pods changed, identities added, removed."""

    touched: frozenset[int]
    added: frozenset[int]
    removed: frozenset[int]


@dataclass(frozen=True)
class IdentityTables:
    pod_identity: dict[str, int]  # active pod key -> identity
    identity_namespace: dict[int, str]
    identity_labels: dict[int, Mapping[str, str]]
    pods_by_identity: dict[int, list[Pod]]  # each list by pod key
    index: LabelIndex  # over every identity's labels
    ns_index: dict[str, LabelIndex]  # per namespace with an identity
    identity_of_key: dict[PodIdentityKey, int]
    key_of_identity: dict[int, PodIdentityKey]

    @classmethod
    def build(cls, pods: Mapping[str, Pod], generations: GenerationCache) -> IdentityTables:
        active = [p for p in pods.values() if p.active]
        last = generations.last(IdentityGeneration)
        if (
            last is not None
            and len(last.active) == len(active)
            and all(last.active.get(p.key) is p for p in active)
        ):
            # The very Pod objects of the last full build: its tables, which nothing mutates.
            return last.tables
        memo = _PodKeyMemo(generations.last(PodKeyGeneration))
        keys = {p.key: memo.key(p) for p in active}
        # = allocate_pod_identities(keys.values()), each distinct key encoded once
        alloc = allocate(set(keys.values()), POD_ID_MIN, POD_ID_MAX, memo.encode)
        generations.publish(memo.generation())
        pod_identity = {k: alloc[v] for k, v in keys.items()}
        identity_namespace: dict[int, str] = {}
        identity_labels: dict[int, Mapping[str, str]] = {}
        pods_by_identity: dict[int, list[Pod]] = {}
        for pod in sorted(active, key=lambda p: p.key):
            ident = pod_identity[pod.key]
            identity_namespace[ident] = pod.namespace
            identity_labels[ident] = pod.labels
            pods_by_identity.setdefault(ident, []).append(pod)
        ns_index: dict[str, LabelIndex] = {}
        for ident, labels in identity_labels.items():
            ns_index.setdefault(identity_namespace[ident], LabelIndex()).add(ident, labels)
        tables = cls(
            pod_identity,
            identity_namespace,
            identity_labels,
            pods_by_identity,
            LabelIndex(identity_labels.items()),
            ns_index,
            alloc,
            {v: k for k, v in alloc.items()},
        )
        generations.publish(IdentityGeneration({p.key: p for p in active}, tables))
        return tables

    def update(
        self, old_pods: Mapping[str, Pod], pods: Mapping[str, Pod], changed: frozenset[str]
    ) -> tuple[IdentityTables, IdentityChanges] | None:
        """The tables of `pods` from these (built over `old_pods`) and the keys of the pods
        that changed; None when allocation would move identities of unchanged keys."""
        if not changed:
            return self, IdentityChanges(frozenset(), frozenset(), frozenset())
        pod_identity = dict(self.pod_identity)
        lists: dict[int, list[Pod]] = {}  # identity -> its new pod list (copies)

        def pods_of(ident: int) -> list[Pod]:
            got = lists.get(ident)
            if got is None:
                got = list(self.pods_by_identity.get(ident, ()))
                lists[ident] = got
            return got

        for key in changed:
            old = old_pods.get(key)
            if old is not None and old.active:
                ident = pod_identity.pop(key)
                members = pods_of(ident)
                members[:] = [p for p in members if p.key != key]
        new_keys: dict[str, PodIdentityKey] = {}
        for key in changed:
            pod = pods.get(key)
            if pod is not None and pod.active:
                new_keys[key] = pod_identity_key(pod.namespace, pod.labels)
        of_key, key_of = self.identity_of_key, self.key_of_identity
        emptied = [i for i, members in lists.items() if not members]
        wanted = set(new_keys.values())
        gone = [key_of[i] for i in emptied if key_of[i] not in wanted]
        fresh = sorted({k for k in wanted if k not in of_key}, key=_encode_pod_key)
        if gone or fresh:
            update = allocate_update(
                of_key, key_of, sorted(gone, key=_encode_pod_key), fresh,
                POD_ID_MIN, POD_ID_MAX, _encode_pod_key,
            )  # fmt: skip
            if update is None:
                return None
            of_key, key_of = update
        for key, ikey in new_keys.items():
            ident = of_key[ikey]
            pod_identity[key] = ident
            pods_of(ident).append(pods[key])
        pods_by_identity = dict(self.pods_by_identity)
        identity_namespace = dict(self.identity_namespace)
        identity_labels = dict(self.identity_labels)
        added: set[int] = set()
        removed: set[int] = set()
        for ident, members in lists.items():
            if members:
                members.sort(key=lambda p: p.key)
                pods_by_identity[ident] = members
                if ident not in self.pods_by_identity:
                    added.add(ident)
                    identity_namespace[ident] = members[0].namespace
                    identity_labels[ident] = members[-1].labels
            elif ident in self.pods_by_identity:
                removed.add(ident)
                del pods_by_identity[ident]
                del identity_namespace[ident]
                del identity_labels[ident]
        index, ns_index = self.index, self.ns_index
        if added or removed:
            gone_items = [(i, self.identity_labels[i]) for i in sorted(removed)]
            new_items = [(i, identity_labels[i]) for i in sorted(added)]
            index = self.index.updated(gone_items, new_items)
            ns_index = dict(self.ns_index)
            for ns in {self.identity_namespace[i] for i in removed} | {identity_namespace[i] for i in added}:
                old_idx = ns_index.get(ns) or LabelIndex()
                idx = old_idx.updated(
                    [(i, lab) for i, lab in gone_items if self.identity_namespace[i] == ns],
                    [(i, lab) for i, lab in new_items if identity_namespace[i] == ns],
                )
                if idx.all:
                    ns_index[ns] = idx
                else:
                    ns_index.pop(ns, None)
        tables = IdentityTables(
            pod_identity,
            identity_namespace,
            identity_labels,
            pods_by_identity,
            index,
            ns_index,
            of_key,
            key_of,
        )
        return tables, IdentityChanges(frozenset(lists), frozenset(added), frozenset(removed))


@dataclass(frozen=True)
class IdentityGeneration:
    """The identity tables of the last full build, with the active pods they were built from."""

    active: Mapping[str, Pod]
    tables: IdentityTables


class IdentityCatalogue:
    """identity -> IdentityInfo of every identity in use: reserved, pod, CIDR and namespace
    (class) identities."""

    def __init__(self, info: dict[int, IdentityInfo]) -> None:
        self._info = info
        self.view: Mapping[int, IdentityInfo] = MappingProxyType(info)

    @classmethod
    def build(
        cls,
        tables: IdentityTables,
        cidr_identity: Mapping[IPNetwork, int],
        ns_classes: NamespaceClasses | None = None,
    ) -> IdentityCatalogue:
        info: dict[int, IdentityInfo] = {
            i: IdentityInfo(i, "reserved", name=n) for i, n in RESERVED_NAMES.items()
        }
        if ns_classes is not None:
            _add_classes(info, ns_classes)
        for ident, labels in tables.identity_labels.items():
            info[ident] = IdentityInfo(
                ident, "pod", namespace=tables.identity_namespace[ident], labels=labels
            )
        for net, ident in cidr_identity.items():
            info[ident] = IdentityInfo(ident, "cidr", cidr=str(net))
        return cls(info)

    def with_classes(self, before: NamespaceClasses, after: NamespaceClasses) -> IdentityCatalogue:
        """This catalogue with the namespace class identities of `after` instead of `before`'s."""
        if after is before:
            return self
        info = dict(self._info)
        for ident in before.members:
            del info[ident]
        _add_classes(info, after)
        return IdentityCatalogue(info)

    def update(self, tables: IdentityTables, changes: IdentityChanges) -> IdentityCatalogue:
        """This catalogue with the pod identities `changes` added and removed (same CIDR and
        namespace identities)."""
        if not changes.added and not changes.removed:
            return self
        info = dict(self._info)
        for ident in changes.removed:
            info.pop(ident, None)
        for ident in changes.added:
            info[ident] = IdentityInfo(
                ident, "pod", namespace=tables.identity_namespace[ident], labels=tables.identity_labels[ident]
            )
        return IdentityCatalogue(info)


def _add_classes(info: dict[int, IdentityInfo], ns_classes: NamespaceClasses) -> None:
    for ident, members in ns_classes.members.items():
        info[ident] = IdentityInfo(ident, "namespace", namespace=members[0], namespaces=members)
