"""ClusterState from raw API objects: ClusterBuilder reuses the parses of unchanged objects
(uid + resourceVersion) from its previous build and records what changed (ClusterDelta), so
the compiler can update its previous compilation instead of starting over."""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from controller.compiler import calico as calico_model
from controller.compiler.calico import EMPTY_CALICO, CalicoObjects, CalicoPolicy
from controller.compiler.cnp import parse_cluster_network_policy
from controller.compiler.generations import GenerationCache
from controller.compiler.model import (
    ClusterDelta,
    ClusterState,
)
from controller.compiler.parse import (
    _Interner,
    _meta,
    _parse_namespace,
    _parse_node,
    _parse_pod,
    _parse_policy_collecting,
)
from controller.core.errors import PolicyError
from controller.core.seqdiff import equal_run

# Build numbers are unique in the process, so a delta can never be applied to another
# builder's build (an identity, not shared state: builders never read each other's).
_build_ids = itertools.count(1)


class _Parsed(NamedTuple):
    """One object's parse: reused while its uid and resourceVersion stay the same."""

    key: str
    uid: str
    resource_version: str
    value: Any  # Namespace | Pod | NetworkPolicy | Node | None (skipped)
    errors: tuple[PolicyError, ...]


def _parsed(version: tuple[str, str, str], value: Any, errs: list[PolicyError]) -> _Parsed:
    """The parse of an object of that version; its key is the value's own "ns/name" string when
    equal (a Pod's key: one string per pod instead of two)."""
    key = getattr(value, "key", None)
    return _Parsed(key if key == version[0] else version[0], version[1], version[2], value, tuple(errs))


def _version(raw: Any) -> tuple[str, str, str] | None:
    """(namespace/name, uid, resourceVersion) of an object that has a resourceVersion."""
    meta = raw.get("metadata") if type(raw) is dict else None  # JSON objects: skip the ABC check
    if type(meta) is not dict:
        meta = _meta(raw)
    rv = meta.get("resourceVersion")
    name = meta.get("name")
    if not isinstance(rv, str) or not rv or not isinstance(name, str):
        return None
    uid = meta.get("uid")
    return f"{meta.get('namespace', '')}/{name}", uid if isinstance(uid, str) else "", rv


class ClusterBuilder:
    """ClusterState.from_objects that reuses the parsed objects of its previous build.

    The agent rebuilds the model from its informer caches on every event; almost every object
    is the one it parsed last time. An object whose metadata.uid and metadata.resourceVersion
    (the API server changes it with every write) equal those of the previous build's object of
    the same kind, namespace and name is not parsed again: its typed object and its errors are
    reused. Objects without a resourceVersion are always parsed. The cache holds the previous
    build's objects only; a build's result is the same as from_objects on the same input.

    Cheap paths, since a pass at 10k pods must stay in the tens of milliseconds: the very raw
    object of the previous build (the informers keep an unchanged object's dict) is found by
    id() before any key is formatted, and a kind whose raw objects are all the previous build's,
    in the same order, reuses that build's whole map. Each build is numbered and records what
    changed since the previous one (ClusterState.build_id / .delta) for the compiler.
    """

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._previous: dict[str, dict[str, _Parsed]] = {}
        # per kind: id(raw) -> (raw, its parse), and the raw objects and result of the last build
        self._by_id: dict[str, dict[int, tuple[Any, _Parsed]]] = {}
        self._raws: dict[str, list[Any]] = {}
        self._maps: dict[str, tuple[dict[str, Any], tuple[PolicyError, ...]]] = {}
        self._interner: _Interner | None = None
        # kinds whose last build had an object without a resourceVersion or two with one key
        self._slow_only: dict[str, bool] = {}
        self._build_id: int | None = None
        self._previous_state: Callable[[], ClusterState | None] = lambda: None
        self.parsed = 0  # objects parsed by the last build (the others were reused)
        # The compiler's generation caches for this builder's clusters (each build carries it)
        self.generations = GenerationCache()

    def build(
        self,
        namespaces: Iterable[dict[str, Any]],
        pods: Iterable[dict[str, Any]],
        policies: Iterable[dict[str, Any]],
        nodes: Iterable[dict[str, Any]],
        cluster_policies: Iterable[dict[str, Any]] = (),
        calico: CalicoObjects = EMPTY_CALICO,
    ) -> ClusterState:
        errors: list[PolicyError] = []
        # The interner outlives a build (the unchanged pods already share its label maps), but
        # is started afresh once it holds mostly label sets no pod has any more.
        fresh_interner = self._interner is None or not self.reuse
        interner = _Interner() if self._interner is None or fresh_interner else self._interner
        self.parsed = 0
        previous_maps = dict(self._maps)  # build_kind replaces entries of self._maps
        # per kind: the keys that changed since the previous build (None: not known, compare)
        changed: dict[str, frozenset[str] | None] = {}

        def build_kind(kind: str, raws: Iterable[Any], parse: Any, key_of: Any) -> dict[str, Any]:
            raw_list = raws if isinstance(raws, list) else list(raws)
            last = self._raws.get(kind)
            reusable = self.reuse and not fresh_interner and last is not None
            # (list == list compares elements by identity first: C speed when all are the same)
            if reusable and last == raw_list:
                out, errs = previous_maps[kind]
                errors.extend(errs)
                changed[kind] = frozenset()
                return out
            if reusable:
                fast = self._apply_changes(kind, raw_list, parse, key_of)
                if fast is not None:
                    out, keys = fast
                    errors.extend(self._maps[kind][1])
                    self._raws[kind] = raw_list
                    changed[kind] = keys
                    return out
            kind_errors: list[PolicyError] = []
            out = {}
            values = 0
            for value in self._each(kind, raw_list, parse, kind_errors, interner, fresh_interner):
                if value is not None:
                    out[key_of(value)] = value
                    values += 1
            if values != len(out):  # one key twice: the last object wins, which only this pass does
                self._slow_only[kind] = True
            errors.extend(kind_errors)
            if self.reuse:
                self._raws[kind] = raw_list
                self._maps[kind] = (out, tuple(kind_errors))
            changed[kind] = None
            return out

        ns_map = build_kind("Namespace", namespaces, _parse_namespace, lambda v: v.name)
        pod_map = build_kind("Pod", pods, lambda raw, errs: _parse_pod(raw, errs, interner), lambda v: v.key)
        pol_map = build_kind("NetworkPolicy", policies, _parse_policy_collecting, lambda v: v.key)
        node_map = build_kind("Node", nodes, _parse_node, lambda v: v.name)
        cnp_map = build_kind(
            "ClusterNetworkPolicy", cluster_policies, parse_cluster_network_policy, lambda v: v.name
        )
        calico_map: dict[str, CalicoPolicy] = {}
        for kind, raws in (
            (calico_model.GLOBAL_KIND, calico.global_policies),
            (calico_model.NAMESPACED_KIND, calico.namespaced_policies),
        ):
            parse = functools.partial(_parse_calico, kind=kind)
            calico_map.update(build_kind(calico_model.KIND_KEYS[kind], raws, parse, lambda v: v.object))
        hep_map = build_kind(
            calico_model.KIND_KEYS[calico_model.HEP_KIND],
            calico.host_endpoints,
            calico_model.parse_host_endpoint,
            lambda v: v.name,
        )
        state = ClusterState(ns_map, pod_map, pol_map, node_map, tuple(errors), cnp_map, calico_map, hep_map)
        if not self.reuse:
            return state
        self._interner = interner if len(interner) <= 2 * len(pod_map) + 1024 else None
        build_id = next(_build_ids)
        object.__setattr__(state, "build_id", build_id)
        object.__setattr__(state, "generations", self.generations)
        if self._build_id is not None and previous_maps:
            object.__setattr__(
                state,
                "delta",
                ClusterDelta(
                    base=self._build_id,
                    pods=_changed_keys(changed["Pod"], previous_maps.get("Pod"), pod_map),
                    policies=_changed_keys(
                        changed["NetworkPolicy"], previous_maps.get("NetworkPolicy"), pol_map
                    ),
                    namespaces=bool(
                        _changed_keys(changed["Namespace"], previous_maps.get("Namespace"), ns_map)
                    ),
                    nodes=bool(_changed_keys(changed["Node"], previous_maps.get("Node"), node_map)),
                    cluster_policies=bool(
                        _changed_keys(
                            changed["ClusterNetworkPolicy"],
                            previous_maps.get("ClusterNetworkPolicy"),
                            cnp_map,
                        )
                    )
                    or any(
                        _changed_keys(changed[k], previous_maps.get(k), self._maps.get(k, ({}, ()))[0])
                        for k in calico_model.KIND_KEYS.values()
                    ),
                    previous=self._previous_state,
                ),
            )
        self._build_id = build_id
        self._previous_state = weakref.ref(state)
        return state

    # More changed objects than this and the per-object pass is as cheap.
    _FEW = 256

    def _apply_changes(
        self, kind: str, raws: list[Any], parse: Any, key_of: Any
    ) -> tuple[dict[str, Any], frozenset[str]] | None:
        """The previous build's map of `kind` with the few raw objects that are not the previous
        build's removed and the new ones parsed (or reused by uid + resourceVersion), and the keys
        that changed; None when that is not simpler than the per-object pass (many changes, an
        object without a resourceVersion, one object twice, two objects with one key)."""
        prev_ids = self._by_id.get(kind)
        if prev_ids is None or self._slow_only.get(kind, True):
            return None
        # Informers keep their objects in key order of arrival: a replaced object keeps its
        # place and a new one is appended, so the lists differ in a short middle stretch. Found
        # with list comparisons (identity first, C speed); an id() per object costs more.
        last = self._raws[kind]
        na, nb = len(last), len(raws)
        head = equal_run(last, 0, raws, 0, min(na, nb))
        tail = equal_run(last, na, raws, nb, min(na, nb) - head, step=-1)
        old_mid = {id(r): r for r in last[head : na - tail]}
        new_mid = {id(r): r for r in raws[head : nb - tail]}
        if len(old_mid) + len(new_mid) > 2 * self._FEW or len(new_mid) != nb - tail - head:
            return None
        gone = [i for i in old_mid if i not in new_mid]
        new = [i for i in new_mid if i not in old_mid]
        if any(i not in prev_ids for i in gone):  # (an equal copy took an object's place before)
            return None
        by_id = new_mid
        out_prev, errs_prev = self._maps[kind]
        previous = self._previous[kind]
        # What the new objects are, before anything changes (a bail-out leaves this builder as it was).
        hits: list[tuple[int, Any, _Parsed]] = []
        parsed_here = 0
        for i in new:
            raw = by_id[i]
            version = _version(raw)
            if version is None:
                return None
            hit = previous.get(version[0])
            if hit is None or hit.uid != version[1] or hit.resource_version != version[2]:
                parsed_here += 1
                errs: list[PolicyError] = []
                hit = _parsed(version, parse(raw, errs), errs)
            hits.append((i, raw, hit))
        out = dict(out_prev)  # (the previous build's ClusterState keeps its map as it was)
        for i in gone:
            parsed = prev_ids[i][1]
            if parsed.value is not None:
                key = key_of(parsed.value)
                if out.get(key) is parsed.value:
                    del out[key]
        for _, _, hit in hits:
            if hit.value is not None:
                key = key_of(hit.value)
                if key in out:
                    return None
                out[key] = hit.value
        # Committed: the builder's own indexes change in place (copying them cost ~5 ms per
        # event at 50k pods).
        keys: set[str] = set()
        errors_changed = False
        for i in gone:
            parsed = prev_ids.pop(i)[1]
            keys.add(parsed.key)
            errors_changed |= bool(parsed.errors)
            if previous.get(parsed.key) is parsed:
                del previous[parsed.key]
        for i, raw, hit in hits:
            keys.add(hit.key)
            errors_changed |= bool(hit.errors)
            previous[hit.key] = hit
            prev_ids[i] = (raw, hit)
        if errors_changed:  # in the objects' order, as the per-object pass gives them
            errs_prev = tuple(e for raw in raws for e in prev_ids[id(raw)][1].errors)
        self._maps[kind] = (out, errs_prev)
        self.parsed += parsed_here
        return out, frozenset(keys)

    def _each(
        self,
        kind: str,
        raws: list[Any],
        parse: Any,
        errors: list[PolicyError],
        interner: _Interner,
        fresh_interner: bool,
    ) -> Iterable[Any]:
        previous = self._previous.get(kind, {})
        previous_ids = self._by_id.get(kind, {})
        seen: dict[str, _Parsed] = {}
        ids: dict[int, tuple[Any, _Parsed]] = {}
        if self.reuse:
            self._previous[kind] = seen
            self._by_id[kind] = ids
            self._slow_only[kind] = False
        adopt = kind == "Pod" and fresh_interner
        for raw in raws:
            if not self.reuse:
                self.parsed += 1
                yield parse(raw, errors)
                continue
            hit_by_id = previous_ids.get(id(raw))
            if hit_by_id is not None and hit_by_id[0] is raw:
                meta = raw.get("metadata") if type(raw) is dict else None
                parsed = hit_by_id[1]
                if type(meta) is dict and meta.get("resourceVersion") == parsed.resource_version:
                    self._reuse(seen, ids, raw, parsed, errors, interner if adopt else None)
                    yield parsed.value
                    continue
            version = _version(raw)
            if version is not None:
                hit = previous.get(version[0])
                if hit is not None and hit.uid == version[1] and hit.resource_version == version[2]:
                    self._reuse(seen, ids, raw, hit, errors, interner if adopt else None)
                    yield hit.value
                    continue
            self.parsed += 1
            errs: list[PolicyError] = []
            value = parse(raw, errs)
            errors.extend(errs)
            if version is not None:
                parsed = _parsed(version, value, errs)
                seen[version[0]] = parsed
                ids[id(raw)] = (raw, parsed)
            else:
                self._slow_only[kind] = True
            yield value

    @staticmethod
    def _reuse(
        seen: dict[str, _Parsed],
        ids: dict[int, tuple[Any, _Parsed]],
        raw: Any,
        parsed: _Parsed,
        errors: list[PolicyError],
        adopt_into: _Interner | None,
    ) -> None:
        if adopt_into is not None and parsed.value is not None:
            adopt_into.adopt(parsed.value)
        seen[parsed.key] = parsed
        ids[id(raw)] = (raw, parsed)
        errors.extend(parsed.errors)


def _changed_keys(
    known: frozenset[str] | None, before: tuple[dict[str, Any], Any] | None, after: Mapping[str, Any]
) -> frozenset[str]:
    """Keys added, removed or bound to another object between two builds' maps (`known` when
    the build already knows them)."""
    if known is not None:
        return known
    old = before[0] if before is not None else {}
    out = {k for k, v in after.items() if old.get(k) is not v}
    out.update(k for k in old if k not in after)
    return frozenset(out)


def cluster_from_objects(
    namespaces: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    policies: Iterable[dict[str, Any]],
    nodes: Iterable[dict[str, Any]],
    cluster_policies: Iterable[dict[str, Any]] = (),
    calico: CalicoObjects = EMPTY_CALICO,
) -> ClusterState:
    """One build without reuse: the ClusterState of these raw objects. Never raises on bad input."""
    return ClusterBuilder(reuse=False).build(namespaces, pods, policies, nodes, cluster_policies, calico)


def _parse_calico(raw: Any, errors: list[PolicyError], kind: str) -> CalicoPolicy | None:
    return calico_model.parse_calico_policy(raw, kind, errors)
