"""Typed, validated cluster objects built from raw Kubernetes API JSON (pure, no I/O).

`ClusterState.from_objects(namespaces, pods, policies, nodes)` never raises on bad input:
every problem becomes a `PolicyError(object, field, message)` in `ClusterState.errors` (and,
for policies, in `NetworkPolicy.errors`), e.g.
`NetworkPolicy x/allow-web: spec.ingress[0].ports[1].endPort: must be >= port (80)`.

Fail-closed rules for invalid NetworkPolicies (DESIGN.md "Policy semantics"):

- A rule (one element of spec.ingress / spec.egress) with ANY invalid part (peer, selector,
  ipBlock, port, protocol, endPort, wrong type) is dropped whole: a partially understood rule
  could allow more than intended (dropping one peer or one port of a rule would be safe, but
  dropping a bad `except` would not, so the rule is the unit). The remaining rules keep their
  original indices, so rule references still name the right element.
- The policy still selects its pods and isolates them for its policyTypes; valid rules apply.
- An invalid spec.podSelector: the policy selects EVERY pod of its namespace (for its
  policyTypes, with no rules at all, since the author's intent for those pods is unknown).
  A missing podSelector is the API default `{}` (all pods of the namespace), not an error.
- An invalid spec.policyTypes (not a list, or an entry other than Ingress/Egress): the policy
  isolates BOTH directions with its valid rules.
- spec.ingress / spec.egress that is not a list: error, no rules for that direction (the
  direction's isolation is unchanged; for defaulted policyTypes a non-empty egress value
  still counts as "has egress rules").
- A spec that is not an object: the policy selects every pod of its namespace and isolates
  both directions with no rules.

Other objects: a Pod or Namespace or Node without a usable name is skipped (error recorded);
invalid labels, IPs, container ports or node addresses are dropped individually (error
recorded). Pods in phase Succeeded/Failed are kept in `pods` but are not `active` (their IPs
may already belong to a new pod); hostNetwork pods are not `active` either (their IP is the
node's, and NetworkPolicy does not apply to them).

Decisions where the API is loose: `ipBlock.cidr` may have host bits set (normalised, as the
API server accepts it); every `except` must be a strict subset of `cidr` (same family);
a string `port` is a port name (IANA_SVC_NAME rules), never a number in disguise; protocol
names are case-sensitive (TCP, UDP, SCTP), as the API server requires.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from controller.compiler.apisyntax import PORT_NAME_NEEDS_A_LETTER, port_name_problems
from controller.compiler.generations import GenerationCache
from controller.compiler.selectors import LabelSelector, SelectorError
from controller.core.errors import PolicyError
from controller.core.net import L4_PROTOCOLS, IPNetwork
from controller.core.seqdiff import equal_run

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NS_NAME_LABEL = "kubernetes.io/metadata.name"
INGRESS = "Ingress"
EGRESS = "Egress"


# ---------------------------------------------------------------------------------------------
# Typed objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]  # always includes kubernetes.io/metadata.name=<name>


class ContainerPort(NamedTuple):
    name: str | None
    port: int
    protocol: str  # TCP / UDP / SCTP


@dataclass(frozen=True, slots=True)
class Pod:
    """Slotted, and built by from_objects with shared label maps / port tuples / strings: a
    cluster holds one per pod, so its per-object size is most of the model's memory."""

    namespace: str
    name: str
    labels: Mapping[str, str]  # shared between pods with equal labels: never mutate
    node: str | None
    ips: tuple[str, ...]  # canonical strings; at most one IPv4 and one IPv6
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False
    phase: str | None = None
    # "ns/name", built once: every table keyed by pod then shares this one string.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    @property
    def ipv4(self) -> str | None:
        return next((ip for ip in self.ips if ":" not in ip), None)

    @property
    def ipv6(self) -> str | None:
        return next((ip for ip in self.ips if ":" in ip), None)

    @property
    def active(self) -> bool:
        """A pod policy applies to and that can be a peer: not hostNetwork, not terminated."""
        return not self.host_network and self.phase not in ("Succeeded", "Failed")

    @property
    def named_ports(self) -> tuple[tuple[str, int, str], ...]:
        return tuple((p.name, p.port, p.protocol) for p in self.ports if p.name)

    def resolve_named_port(self, name: str, protocol: str) -> tuple[int, ...]:
        """Container port numbers with this name and protocol (usually zero or one)."""
        return tuple(sorted({p.port for p in self.ports if p.name == name and p.protocol == protocol}))


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[str, ...]  # InternalIP addresses, canonical strings


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, addr: IPAddress) -> bool:
        if addr.version != self.cidr.version or addr not in self.cidr:
            return False
        return not any(addr in e for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    """One element of from/to. Exactly one of: ip_block, or at least one selector."""

    pod_selector: LabelSelector | None = None  # None = not given
    namespace_selector: LabelSelector | None = None  # None = not given (= policy's namespace)
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None = every port of the protocol; str = named port
    end_port: int | None = None

    @property
    def is_named(self) -> bool:
        return isinstance(self.port, str)


@dataclass(frozen=True)
class Rule:
    index: int  # index in spec.ingress / spec.egress
    peers: tuple[Peer, ...] = ()  # empty = every peer
    ports: tuple[PolicyPort, ...] = ()  # empty = every protocol and port

    @property
    def has_named_ports(self) -> bool:
        return any(p.is_named for p in self.ports)


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[str]  # subset of {"Ingress", "Egress"}, after defaulting
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    errors: tuple[PolicyError, ...] = ()
    audit: bool = False  # annotation vethguard.dev/audit: "true": report would-be drops, do not drop

    @functools.cached_property
    def key(self) -> str:  # (read per policy and event: formatted once)
        return f"{self.namespace}/{self.name}"

    @property
    def isolates_ingress(self) -> bool:
        return INGRESS in self.policy_types

    @property
    def isolates_egress(self) -> bool:
        return EGRESS in self.policy_types

    @classmethod
    def from_dict(cls, raw: Any) -> NetworkPolicy:
        """Parse one policy; problems land in `.errors` (fail closed). Raises ValueError without a name."""
        pol = _parse_policy(raw)
        if pol is None:
            raise ValueError("NetworkPolicy: metadata.name and metadata.namespace are required")
        return pol


@dataclass(frozen=True)
class ClusterState:
    namespaces: Mapping[str, Namespace]
    pods: Mapping[str, Pod]  # by "ns/name"
    policies: Mapping[str, NetworkPolicy]  # by "ns/name"
    nodes: Mapping[str, Node]
    errors: tuple[PolicyError, ...] = ()
    # Scratch space for derived data (the compiler caches its node-independent work here).
    # init=False: dataclasses.replace() starts a fresh cache instead of sharing a stale one.
    cache: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    # Set by a ClusterBuilder that reuses parses (the agent's): this build's number and what
    # changed since the builder's previous build. The compiler then updates the previous
    # build's compilation instead of starting over (controller.compiler.policy.compile_cluster).
    # init=False, like cache: a replace()d or hand-made ClusterState has neither.
    build_id: int | None = field(default=None, init=False, compare=False, repr=False)
    delta: ClusterDelta | None = field(default=None, init=False, compare=False, repr=False)
    # The generation caches of the builder that built this cluster (the compiler's tables
    # carried from one compilation to the next, controller.compiler.generations); None for a
    # cluster without a reusing builder, which is then compiled with a fresh cache.
    generations: GenerationCache | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def from_objects(
        cls,
        namespaces: Iterable[dict[str, Any]],
        pods: Iterable[dict[str, Any]],
        policies: Iterable[dict[str, Any]],
        nodes: Iterable[dict[str, Any]],
    ) -> ClusterState:
        return ClusterBuilder(reuse=False).build(namespaces, pods, policies, nodes)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        ns = self.namespaces.get(name)
        return ns.labels if ns is not None else {NS_NAME_LABEL: name}


@dataclass(frozen=True)
class ClusterDelta:
    """What a ClusterBuilder build changed since the builder's build number `base`: the keys
    ("ns/name") of pods and policies added, removed or replaced by another object, and whether
    any namespace or node did. `previous` weakly references that build's ClusterState (alive
    while its holder, the agent, keeps it: the compiler then starts from its compilation)."""

    base: int
    pods: frozenset[str]
    policies: frozenset[str]
    namespaces: bool
    nodes: bool
    previous: Callable[[], ClusterState | None] = field(default=lambda: None, compare=False, repr=False)


_build_ids = itertools.count(1)


class _Parsed(NamedTuple):
    """One object's parse: reused while its uid and resourceVersion stay the same."""

    key: str
    uid: str
    resource_version: str
    value: Any  # Namespace | Pod | NetworkPolicy | Node | None (skipped)
    errors: tuple[PolicyError, ...]


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
        state = ClusterState(ns_map, pod_map, pol_map, node_map, tuple(errors))
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
        out = dict(out_prev)
        seen = dict(self._previous[kind])
        ids = dict(prev_ids)
        keys: set[str] = set()
        errors_changed = False
        parsed_here = 0
        for i in gone:
            parsed = ids.pop(i)[1]
            keys.add(parsed.key)
            errors_changed |= bool(parsed.errors)
            if seen.get(parsed.key) is parsed:
                del seen[parsed.key]
            if parsed.value is not None:
                key = key_of(parsed.value)
                if out.get(key) is parsed.value:
                    del out[key]
        for i in new:
            raw = by_id[i]
            version = _version(raw)
            if version is None:
                return None
            hit = self._previous[kind].get(version[0])
            if hit is None or hit.uid != version[1] or hit.resource_version != version[2]:
                parsed_here += 1
                errs: list[PolicyError] = []
                hit = _Parsed(version[0], version[1], version[2], parse(raw, errs), tuple(errs))
            keys.add(hit.key)
            errors_changed |= bool(hit.errors)
            seen[hit.key] = hit
            ids[i] = (raw, hit)
            if hit.value is not None:
                key = key_of(hit.value)
                if key in out:
                    return None
                out[key] = hit.value
        if errors_changed:  # in the objects' order, as the per-object pass gives them
            errs_prev = tuple(e for raw in raws for e in ids[id(raw)][1].errors)
        self._previous[kind] = seen
        self._by_id[kind] = ids
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
                parsed = _Parsed(version[0], version[1], version[2], value, tuple(errs))
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


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _meta(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        return {}
    m = raw.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _labels(raw: Any, obj: str, fld: str, errors: list[PolicyError]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errors.append(PolicyError(obj, fld, "must be a map of string to string"))
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            errors.append(PolicyError(obj, f"{fld}.{k}", "label keys and values must be strings; dropped"))
            continue
        out[k] = v
    return out


class _Interner:
    """Shares equal values between the objects of one ClusterState build.

    Most pods repeat a few label sets and container port lists, and their namespace, node,
    label key and value strings: one shared object each instead of one per pod (JSON decoding
    gives every pod its own copies). Strings go through sys.intern, so consecutive builds (the
    agent's previous cluster is alive while the next is built) share them as well. Shared
    label maps are read-only by contract (Pod.labels is a Mapping).
    """

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self._ports: dict[tuple[ContainerPort, ...], tuple[ContainerPort, ...]] = {}
        self._adopted: dict[int, Mapping[str, str]] = {}  # id -> the map (kept: ids stay unique)

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self, labels: dict[str, str]) -> dict[str, str]:
        items = tuple(labels.items())
        hit = self._labels.get(items)
        if hit is None:
            hit = {sys.intern(k): sys.intern(v) for k, v in items}
            self._labels[items] = hit
        return hit

    def adopt(self, pod: Pod) -> None:
        """Share a reused pod's label map and port tuple with the pods parsed after it."""
        if id(pod.labels) not in self._adopted:  # label maps are shared: most were seen already
            self._adopted[id(pod.labels)] = pod.labels
            self._labels.setdefault(tuple(pod.labels.items()), pod.labels)  # type: ignore[arg-type]
        if pod.ports:
            self._ports.setdefault(pod.ports, pod.ports)

    def ports(self, ports: list[ContainerPort]) -> tuple[ContainerPort, ...]:
        if not ports:
            return ()
        key = tuple(ports)
        return self._ports.setdefault(key, key)

    @staticmethod
    def string(s: str) -> str:
        return sys.intern(s)


def _parse_namespace(raw: Any, errors: list[PolicyError]) -> Namespace | None:
    meta = _meta(raw)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append(PolicyError("Namespace ?", "metadata.name", "missing or not a string; skipped"))
        return None
    labels = _labels(meta.get("labels"), f"Namespace {name}", "metadata.labels", errors)
    labels[NS_NAME_LABEL] = name
    return Namespace(name, labels)


def _parse_ip(s: Any) -> IPAddress | None:
    if not isinstance(s, str):
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def _parse_pod(raw: Any, errors: list[PolicyError], interner: _Interner | None = None) -> Pod | None:
    shared = interner if interner is not None else _Interner()
    meta = _meta(raw)
    name = meta.get("name")
    namespace = meta.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        errors.append(PolicyError("Pod ?", "metadata.name", "missing name or namespace; skipped"))
        return None
    obj = f"Pod {namespace}/{name}"
    labels = _labels(meta.get("labels"), obj, "metadata.labels", errors)
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    status = raw.get("status") if isinstance(raw.get("status"), Mapping) else {}
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        errors.append(PolicyError(obj, "spec.nodeName", "must be a string"))
        node = None
    # IPs: status.podIPs[].ip, fallback status.podIP; at most one per family, first wins.
    candidates: list[tuple[str, Any]] = []
    pod_ips = status.get("podIPs")
    if isinstance(pod_ips, list) and pod_ips:
        for i, e in enumerate(pod_ips):
            candidates.append((f"status.podIPs[{i}].ip", e.get("ip") if isinstance(e, Mapping) else e))
    elif status.get("podIP"):
        candidates.append(("status.podIP", status.get("podIP")))
    ips: list[str] = []
    families: set[int] = set()
    for fld, value in candidates:
        addr = _parse_ip(value)
        if addr is None:
            errors.append(PolicyError(obj, fld, f"invalid IP address {value!r}; ignored"))
            continue
        if addr.version in families:
            continue
        families.add(addr.version)
        canonical = str(addr)
        ips.append(value if canonical == value else canonical)  # keep the API's string when canonical
    ports: list[ContainerPort] = []
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        errors.append(PolicyError(obj, "spec.containers", "must be a list"))
        containers = []
    for ci, c in enumerate(containers):
        if not isinstance(c, Mapping):
            continue
        cports = c.get("ports") or []
        if not isinstance(cports, list):
            errors.append(PolicyError(obj, f"spec.containers[{ci}].ports", "must be a list"))
            continue
        for pi, p in enumerate(cports):
            fld = f"spec.containers[{ci}].ports[{pi}]"
            if not isinstance(p, Mapping):
                errors.append(PolicyError(obj, fld, "must be an object"))
                continue
            num: int = p.get("containerPort")  # type: ignore[assignment]
            proto = p.get("protocol") or "TCP"
            pname = p.get("name")
            if not _is_int(num) or not 1 <= num <= 65535:
                errors.append(
                    PolicyError(obj, f"{fld}.containerPort", f"must be 1..65535, got {num!r}; ignored")
                )
                continue
            if proto not in L4_PROTOCOLS:
                errors.append(PolicyError(obj, f"{fld}.protocol", f"unknown protocol {proto!r}; ignored"))
                continue
            if pname is not None and not isinstance(pname, str):
                errors.append(PolicyError(obj, f"{fld}.name", "must be a string; name ignored"))
                pname = None
            ports.append(ContainerPort(pname or None, num, proto))
    phase = status.get("phase")
    return Pod(
        namespace=shared.string(namespace),
        name=name,
        labels=shared.labels(labels),
        node=shared.string(node) if node else None,
        ips=tuple(ips),
        ports=shared.ports(ports),
        host_network=bool(spec.get("hostNetwork", False)),
        phase=shared.string(phase) if isinstance(phase, str) else None,
    )


def _parse_node(raw: Any, errors: list[PolicyError]) -> Node | None:
    meta = _meta(raw)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append(PolicyError("Node ?", "metadata.name", "missing or not a string; skipped"))
        return None
    status = raw.get("status") if isinstance(raw.get("status"), Mapping) else {}
    addrs: list[str] = []
    raw_addrs = status.get("addresses") or []
    if not isinstance(raw_addrs, list):
        raw_addrs = []
    for i, a in enumerate(raw_addrs):
        if not isinstance(a, Mapping) or a.get("type") != "InternalIP":
            continue
        addr = _parse_ip(a.get("address"))
        if addr is None:
            errors.append(
                PolicyError(f"Node {name}", f"status.addresses[{i}].address", "invalid IP address; ignored")
            )
            continue
        if str(addr) not in addrs:
            addrs.append(str(addr))
    return Node(name, tuple(addrs))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_network(value: Any, fld: str) -> IPNetwork:
    if not isinstance(value, str) or "/" not in value:
        raise _Invalid(fld, f"must be a CIDR such as 10.0.0.0/24, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as e:
        raise _Invalid(fld, f"invalid CIDR {value!r}: {e}") from None


def _parse_ip_block(raw: Any, fld: str) -> IPBlock:
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object with cidr and optional except")
    cidr = _parse_network(raw.get("cidr"), f"{fld}.cidr")
    ex_raw = raw.get("except")
    excepts: list[IPNetwork] = []
    if ex_raw is not None:
        if not isinstance(ex_raw, list):
            raise _Invalid(f"{fld}.except", "must be a list of CIDRs")
        for i, e in enumerate(ex_raw):
            net = _parse_network(e, f"{fld}.except[{i}]")
            if net.version != cidr.version or not net.subnet_of(cidr) or net.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
                raise _Invalid(f"{fld}.except[{i}]", f"{net} is not a strict subset of cidr {cidr}")
            excepts.append(net)
    return IPBlock(cidr, tuple(sorted(set(excepts), key=lambda n: (n.network_address, n.prefixlen))))


def _parse_selector(raw: Any, fld: str) -> LabelSelector:
    try:
        return LabelSelector.parse(raw)
    except SelectorError as e:
        raise _Invalid(f"{fld}.{e.field}" if e.field else fld, e.message) from None


def _parse_peer(raw: Any, fld: str) -> Peer:
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object (podSelector, namespaceSelector or ipBlock)")
    unknown = set(raw) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown:
        raise _Invalid(f"{fld}.{sorted(unknown)[0]}", "unknown peer field")
    has_pod = raw.get("podSelector") is not None
    has_ns = raw.get("namespaceSelector") is not None
    has_ip = raw.get("ipBlock") is not None
    if has_ip and (has_pod or has_ns):
        raise _Invalid(fld, "ipBlock may not be combined with podSelector or namespaceSelector")
    if not (has_ip or has_pod or has_ns):
        raise _Invalid(fld, "must specify podSelector, namespaceSelector or ipBlock")
    if has_ip:
        return Peer(ip_block=_parse_ip_block(raw["ipBlock"], f"{fld}.ipBlock"))
    return Peer(
        pod_selector=_parse_selector(raw["podSelector"], f"{fld}.podSelector") if has_pod else None,
        namespace_selector=_parse_selector(raw["namespaceSelector"], f"{fld}.namespaceSelector")
        if has_ns
        else None,
    )


def _parse_port(raw: Any, fld: str) -> PolicyPort:
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object with protocol, port and endPort")
    proto = raw.get("protocol")
    if proto is None:
        proto = "TCP"
    if proto not in L4_PROTOCOLS:
        raise _Invalid(f"{fld}.protocol", f"unknown protocol {proto!r}; expected TCP, UDP or SCTP")
    port = raw.get("port")
    end = raw.get("endPort")
    if port is not None:
        if _is_int(port):
            if not 1 <= port <= 65535:
                raise _Invalid(f"{fld}.port", f"must be between 1 and 65535, got {port}")
        elif isinstance(port, str):
            problems = port_name_problems(port)
            if problems and problems != [PORT_NAME_NEEDS_A_LETTER]:
                raise _Invalid(f"{fld}.port", f"invalid port name {port!r} (IANA service name: 1-15 a-z0-9-)")
            if problems:
                raise _Invalid(
                    f"{fld}.port",
                    f"port name {port!r} must contain a letter (write numeric ports as numbers, not strings)",
                )
        else:
            raise _Invalid(f"{fld}.port", f"must be a number or a port name, not {type(port).__name__}")
    if end is not None:
        if not _is_int(end):
            raise _Invalid(f"{fld}.endPort", f"must be a number, not {type(end).__name__}")
        if port is None or not _is_int(port):
            raise _Invalid(f"{fld}.endPort", "needs a numeric port")
        if end < port:
            raise _Invalid(f"{fld}.endPort", f"must be >= port ({port}), got {end}")
        if end > 65535:
            raise _Invalid(f"{fld}.endPort", f"must be <= 65535, got {end}")
    return PolicyPort(proto, port, end)


def _parse_rule(raw: Any, index: int, fld: str, peer_key: str) -> Rule:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object")
    peers_raw = raw.get(peer_key)
    peers: list[Peer] = []
    if peers_raw is not None:
        if not isinstance(peers_raw, list):
            raise _Invalid(f"{fld}.{peer_key}", "must be a list")
        for i, p in enumerate(peers_raw):
            peers.append(_parse_peer(p, f"{fld}.{peer_key}[{i}]"))
    ports_raw = raw.get("ports")
    ports: list[PolicyPort] = []
    if ports_raw is not None:
        if not isinstance(ports_raw, list):
            raise _Invalid(f"{fld}.ports", "must be a list")
        for i, p in enumerate(ports_raw):
            ports.append(_parse_port(p, f"{fld}.ports[{i}]"))
    return Rule(index, tuple(peers), tuple(ports))


def _parse_rules(raw: Any, fld: str, peer_key: str, obj: str, errors: list[PolicyError]) -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(PolicyError(obj, fld, "must be a list of rules; no rules used for this direction"))
        return ()
    rules: list[Rule] = []
    for i, r in enumerate(raw):
        try:
            rules.append(_parse_rule(r, i, f"{fld}[{i}]", peer_key))
        except _Invalid as e:
            errors.append(PolicyError(obj, e.field, f"{e.message}; rule {fld}[{i}] ignored (fail closed)"))
    return tuple(rules)


def _parse_policy_collecting(raw: Any, errors: list[PolicyError]) -> NetworkPolicy | None:
    """_parse_policy for ClusterState: its errors (or the skip) recorded in `errors`."""
    pol = _parse_policy(raw)
    if pol is None:
        errors.append(PolicyError("NetworkPolicy ?", "metadata.name", "missing name or namespace; skipped"))
        return None
    errors.extend(pol.errors)
    return pol


def _parse_policy(raw: Any) -> NetworkPolicy | None:
    meta = _meta(raw)
    name = meta.get("name")
    namespace = meta.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        return None
    obj = f"NetworkPolicy {namespace}/{name}"
    errors: list[PolicyError] = []
    spec = raw.get("spec") if isinstance(raw, Mapping) else None
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        errors.append(PolicyError(obj, "spec", "must be an object; isolating every pod of the namespace"))
        return NetworkPolicy(
            namespace, name, LabelSelector.EVERYTHING, frozenset({INGRESS, EGRESS}), errors=tuple(errors)
        )
    sel_ok = True
    try:
        pod_selector = (
            LabelSelector.EVERYTHING
            if spec.get("podSelector") is None
            else _parse_selector(spec["podSelector"], "spec.podSelector")
        )
    except _Invalid as e:
        errors.append(
            PolicyError(
                obj, e.field, f"{e.message}; the policy isolates every pod of {namespace} with no rules"
            )
        )
        pod_selector = LabelSelector.EVERYTHING
        sel_ok = False

    ingress_raw = spec.get("ingress")
    egress_raw = spec.get("egress")
    types_raw = spec.get("policyTypes")
    types: set[str]
    if types_raw is None or types_raw == []:
        types = {INGRESS}
        if egress_raw:  # upstream defaulting: Egress when egress rules are present
            types.add(EGRESS)
    elif not isinstance(types_raw, list) or any(t not in (INGRESS, EGRESS) for t in types_raw):
        errors.append(
            PolicyError(
                obj,
                "spec.policyTypes",
                f"must be a list of Ingress/Egress, got {types_raw!r}; isolating both directions",
            )
        )
        types = {INGRESS, EGRESS}
    else:
        types = set(types_raw)

    ingress = _parse_rules(ingress_raw, "spec.ingress", "from", obj, errors)
    egress = _parse_rules(egress_raw, "spec.egress", "to", obj, errors)
    if not sel_ok:
        ingress, egress = (), ()
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=frozenset(types),
        ingress=ingress,
        egress=egress,
        errors=tuple(errors),
        audit=_audit_annotation(meta),
    )


AUDIT_ANNOTATION = "vethguard.dev/audit"


def _audit_annotation(meta: Mapping[str, Any]) -> bool:
    """Audit mode is opt-in and exact: only the string "true" (any case) turns it on."""
    annotations = meta.get("annotations")
    if not isinstance(annotations, Mapping):
        return False
    value = annotations.get(AUDIT_ANNOTATION)
    return isinstance(value, str) and value.strip().lower() == "true"
