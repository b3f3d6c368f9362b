"""Policy status: per NetworkPolicy, the generation the maps realize, how many local pods it
selects, its errors and those of its selected pods that did not fit a map (/status `policies`).

`PolicyStatus` recomputes it only when its inputs changed, and then only for the policies whose
generation, selected local pods or errors changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import attrgetter, eq, is_
from typing import Any

from controller.agent.capacity import Overflow, overflow_message
from controller.agent.cluster_events import Snapshot
from controller.agent.errors import AgentError
from controller.compiler.model import ClusterState
from controller.compiler.policy import compile_cluster
from controller.core.log import get_logger

log = get_logger("vethguard.agent")


@dataclass(frozen=True, eq=False)
class _StatusMemo:
    """What PolicyStatus.status computed its last result from, and that result."""

    cluster: Any
    versions: Any
    errors: list[AgentError]
    overflow: dict[str, Overflow]
    status: dict[str, dict[str, Any]]


@dataclass(frozen=True, eq=False)
class _StatusParts:
    """The inputs of the last policy status computed from the compiled cluster, by policy,
    and that status: the next one redoes only the policies whose inputs differ."""

    raws: Sequence[Any]  # the snapshot's policy objects
    parsed: dict[int, tuple[Any, str | None, Any]]  # id(raw) -> (raw, key, generation)
    generations: dict[str, Any]
    errors: dict[str, list[dict[str, str]]]
    pods: Mapping[str, Any]  # the cluster's
    build_id: int | None  # its build's number (ClusterState.build_id)
    local: dict[str, Any]  # its active pods on this node, by key
    policies: Mapping[str, Any]  # the cluster's
    selected: dict[str, list[str]]  # policy -> local pods it selects
    overflow: dict[str, Overflow]
    status: dict[str, dict[str, Any]]


class PolicyStatus:
    """The policy status of one node, with what its last computation was made from."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._memo: _StatusMemo | None = None
        self._parts: _StatusParts | None = None

    def status(
        self, cluster: Any, snap: Snapshot, errors: list[AgentError], overflow: Mapping[str, Overflow]
    ) -> dict[str, dict[str, Any]]:
        """Per policy: generation realized, local pods selected, its errors (and overflow).

        It depends on the cluster, the snapshot's policies, the policy errors (`errors`, the
        agent's list: replaced, never mutated) and the overflow only: the previous result is
        returned while they are the same (the caches' content versions say the snapshot's
        objects are)."""
        versions = snap.content_versions
        last = self._memo
        if (
            last is not None
            and last.cluster is cluster
            and last.versions == versions
            and last.errors is errors
            and last.overflow == overflow
        ):
            return last.status
        out = self.compute(cluster, snap, errors, overflow)
        self._memo = _StatusMemo(cluster, versions, errors, dict(overflow), out)
        return out

    def compute(
        self,
        cluster: Any,
        snap: Snapshot,
        policy_errors: Sequence[AgentError],
        overflow: Mapping[str, Overflow],
    ) -> dict[str, dict[str, Any]]:
        """The status of every policy; from the compiled cluster, only the policies whose
        generation, selected local pods or errors changed since the last call are redone."""
        pols, pods = cluster.policies, cluster.pods
        if not isinstance(pols, Mapping) or not isinstance(pods, Mapping):
            return {}
        last = self._parts
        self._parts = None
        raws = snap.policies if isinstance(snap.policies, list | tuple) else list(snap.policies)
        if last is not None and len(raws) == len(last.raws) and all(map(is_, raws, last.raws)):
            generations, parsed = last.generations, last.parsed  # the very objects: the same
        else:
            generations, parsed = _generations(raws, last.parsed if last is not None else {})
        errors: dict[str, list[dict[str, str]]] = {}
        for e in policy_errors:
            if e.object.startswith("NetworkPolicy "):
                errors.setdefault(e.object.removeprefix("NetworkPolicy "), []).append(
                    {"field": e.field, "message": e.message}
                )
        local = _local_after(last, cluster, self.node) if last is not None else None
        if local is None:
            local = _local_pods(pods, self.node)
        by_policy = _selected_by_policy(cluster, local.values())
        if by_policy is None:
            on_node = list(local.values())
            return {
                key: _policy_entry(
                    generations.get(key), _matching(pol, on_node), errors.get(key, ()), overflow
                )
                for key, pol in sorted(pols.items())
            }

        def entry(key: str) -> dict[str, Any]:
            return _policy_entry(generations.get(key), by_policy.get(key, []), errors.get(key, ()), overflow)

        if last is None or last.overflow != overflow:
            out = {key: entry(key) for key in sorted(pols)}
        else:
            changed = {
                k for k in by_policy.keys() | last.selected.keys() if by_policy.get(k) != last.selected.get(k)
            }
            if generations is not last.generations:
                changed.update(k for k, _ in generations.items() ^ last.generations.items())
            if errors != last.errors:
                changed.update(
                    k for k in errors.keys() | last.errors.keys() if errors.get(k) != last.errors.get(k)
                )
            previous = last.status
            if pols.keys() == last.policies.keys():
                out = {**previous, **{k: entry(k) for k in changed if k in pols}} if changed else previous
            else:
                out = {
                    k: previous[k] if k in previous and k not in changed else entry(k) for k in sorted(pols)
                }
        self._parts = _StatusParts(
            raws,
            parsed,
            generations,
            errors,
            pods,
            getattr(cluster, "build_id", None),
            local,
            pols,
            by_policy,
            dict(overflow),
            out,
        )
        return out


def _local_pods(pods: Mapping[str, Any], node: str) -> dict[str, Any]:
    """The active pods of `pods` on `node`, by key, in their order (the node test in C loops)."""
    items = pods.items()
    try:
        on_node = list(compress(items, map(eq, repeat(node), map(attrgetter("node"), pods.values()))))
    except AttributeError:  # not every object has a node
        on_node = [(k, p) for k, p in items if getattr(p, "node", None) == node]
    return {k: p for k, p in on_node if getattr(p, "active", True)}


def _local_after(last: _StatusParts, cluster: Any, node: str) -> dict[str, Any] | None:
    """The local pods of `cluster` from those of `last`: the very ones when the cluster's pods
    are last's, else updated for the pods its delta names when it was built from the build last
    was computed from (a pod event: ~100 local pods copied, not 50k scanned). None when neither
    holds (the caller scans every pod)."""
    if cluster.pods is last.pods:
        return last.local
    delta = getattr(cluster, "delta", None)
    if (
        delta is None
        or last.build_id is None
        or delta.base != last.build_id
        or delta.namespaces
        or delta.nodes
    ):
        return None
    out = dict(last.local)
    now = cluster.pods
    for key in delta.pods:
        pod = now.get(key)
        if pod is not None and getattr(pod, "node", None) == node and getattr(pod, "active", True):
            out[key] = pod
        else:
            out.pop(key, None)
    return out


def _generations(
    raws: Sequence[Any], previous: Mapping[int, tuple[Any, str | None, Any]]
) -> tuple[dict[str, Any], dict[int, tuple[Any, str | None, Any]]]:
    """Policy key ("ns/name") -> metadata.generation (None: absent or not an int) of raw
    policies, and id(raw) -> (raw, key, generation): `previous`, such a table of an earlier
    call, gives those of the very objects it holds."""
    generations: dict[str, Any] = {}
    parsed: dict[int, tuple[Any, str | None, Any]] = {}
    for raw in raws:
        hit = previous.get(id(raw))
        if hit is None or hit[0] is not raw:
            hit = (raw, *_generation_of(raw))
        parsed[id(raw)] = hit
        if hit[1] is not None:
            generations[hit[1]] = hit[2]
    return generations, parsed


def _generation_of(raw: Any) -> tuple[str | None, Any]:
    """(policy key, generation) of a raw policy; key None: no metadata."""
    # type() first: the API's objects are dicts, and the ABC test costs ~1 us each
    meta = raw.get("metadata") if type(raw) is dict or isinstance(raw, Mapping) else None
    if type(meta) is dict or isinstance(meta, Mapping):
        gen = meta.get("generation")
        key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        return key, gen if isinstance(gen, int) else None
    return None, None


def _matching(pol: Any, local: Sequence[Any]) -> list[str]:
    """Keys of the `local` pods a policy selects, by evaluating its selector on each."""
    try:
        return [p.key for p in local if p.namespace == pol.namespace and pol.pod_selector.matches(p.labels)]
    except Exception:  # a policy the model could not make sense of selects nothing we can count
        return []


def _policy_entry(
    generation: Any,
    selected: Sequence[str],
    errors: Sequence[dict[str, str]],
    overflow: Mapping[str, Overflow],
) -> dict[str, Any]:
    """One policy's status: its generation, how many local pods it selects, its errors and
    those of its selected pods that did not fit a map."""
    errs = list(errors)
    for pod in selected if overflow else ():
        o = overflow.get(pod)
        if o is not None:
            errs.append({"field": f"map {o.map}", "message": f"pod {pod}: {overflow_message(o)}"})
    return {"generation": generation, "selected_pods": len(selected), "errors": errs}


def _selected_by_policy(cluster: Any, local: Iterable[Any]) -> dict[str, list[str]] | None:
    """policy key -> keys of the `local` pods it selects (in their order), from the compiled
    cluster's identity -> policies table: a policy selects an active pod iff it selects the
    pod's identity (same namespace, matching labels). None when `cluster` is not a ClusterState
    (the caller then evaluates every selector on every local pod)."""
    if not isinstance(cluster, ClusterState):
        return None
    try:
        compiled = compile_cluster(cluster)  # cached on the cluster: the pass's compute made it
        pod_identity = compiled.pod_identity
        policies_for_identity = compiled.policies_for_identity
    except Exception as exc:
        log.warning("cannot compile the cluster for the policy status; matching selectors", error=str(exc))
        return None
    out: dict[str, list[str]] = {}
    for pod in local:
        ident = pod_identity.get(pod.key)
        for pol in policies_for_identity.get(ident, ()) if ident is not None else ():
            out.setdefault(pol.key, []).append(pod.key)
    return out


def cluster_policy_status(
    cluster: Any, desired: Any, errors: Sequence[AgentError], overflow: Mapping[str, Overflow]
) -> dict[str, dict[str, Any]]:
    """Per ClusterNetworkPolicy (/status `cluster_policy_status`): its tier and priority as
    enforced (an unusable place is enforced as Admin 0), how many of this node's endpoints it
    selects, its errors and those of its selected pods that did not fit a map. Computed when
    /status is asked for, from the last desired state (no memo: a few policies, a node's pods)."""
    pols = getattr(cluster, "cluster_policies", None)
    if not isinstance(pols, Mapping):
        return {}
    selected: dict[str, list[str]] = {}
    for ep in getattr(desired, "endpoints", {}).values():
        for name in getattr(ep, "cluster_policies", ()):
            selected.setdefault(name, []).append(ep.pod)
    errs: dict[str, list[dict[str, str]]] = {}
    for e in errors:
        if e.object.startswith("ClusterNetworkPolicy "):
            errs.setdefault(e.object.removeprefix("ClusterNetworkPolicy "), []).append(
                {"field": e.field, "message": e.message}
            )
    out: dict[str, dict[str, Any]] = {}
    for name, pol in sorted(pols.items()):
        entry = _policy_entry(None, selected.get(name, []), errs.get(name, ()), overflow)
        del entry["generation"]
        out[name] = {"tier": pol.tier, "priority": pol.priority, **entry}
    return out


def model_counts(cluster: Any) -> dict[str, int]:
    """How many cluster-wide and Calico objects the last model holds (/status counts):
    ClusterNetworkPolicies, Calico policies (GlobalNetworkPolicies and namespaced Calico
    NetworkPolicies with a usable name) and HostEndpoints that can be placed on a node."""
    return {
        field: len(getattr(cluster, field, None) or ())
        for field in ("cluster_policies", "calico_policies", "host_endpoints")
    }
