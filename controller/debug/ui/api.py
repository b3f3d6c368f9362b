"""The JSON answers of `vethguard ui` (pure: a ClusterView, the agents' statuses and flow
records in, JSON-able dicts out). Every answer is built from the debug commands' own functions,
so the page says what `get`, `describe`, `reachability`, `explain` and `observe` say:

    policies()   every NetworkPolicy, ClusterNetworkPolicy and Calico (Global)NetworkPolicy: what it
                 selects per node and whether each node's agent realized it (netpol.get_rows,
                 cnp.get_rows, netpol.realized_on)
    describe()   one policy as `vethguard describe` prints it
    heatmap()    reach.matrix over pods (and reach.compare with a probe), plus namespace totals
    explained()  explain.explain's JSON and its text
    graph()      pods and namespaces, with an edge per (from, to) of recent flow records
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.agent.flows import FlowFilter
from controller.agent.realization import differing_kinds
from controller.compiler.calico import GROUP, HEP_KIND
from controller.compiler.clusterview import ClusterView
from controller.core.errors import VethguardError
from controller.debug import calico, cnp, netpol, reach
from controller.debug import explain as explain_mod

Agents = Mapping[str, Mapping[str, Any] | None]


def by_node(view: ClusterView, pods: Iterable[str], nodes: Sequence[str]) -> dict[str, list[str]]:
    """node -> the pods of `pods` that run there (every node of `nodes` present)."""
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for pod in pods:
        node = view.node_of(pod)
        if node in out:
            out[node].append(pod)
    return out


def _calico_selected(view: ClusterView, obj: Mapping[str, Any], kind: calico.CalicoKind) -> list[str]:
    wanted = calico.object_name(kind, obj)
    pol = next((p for p in view.cluster.calico_policies.values() if p.object == wanted), None)
    if pol is None:
        return []
    return sorted(
        p.key
        for p in view.cluster.pods.values()
        if p.active and pol.selects(p.namespace, p.labels, view.cluster.namespace_labels(p.namespace))
    )


def calico_kind(kind: calico.CalicoKind) -> str:
    """Calico's kinds as the page names them: group/kind (its NetworkPolicy is not Kubernetes')."""
    return f"{GROUP}/{kind.kind}"


def policies(view: ClusterView, nodes: Sequence[str], agents: Agents) -> dict[str, Any]:
    """Every policy of every kind: kind, key, tier and order, selector, selected pods (all and
    per node), realization per node, problems."""
    items: list[dict[str, Any]] = []
    for r in netpol.get_rows(view, list(view.raw.policies), nodes, agents):
        key = f"{r['namespace']}/{r['name']}"
        items.append(
            {
                "kind": "NetworkPolicy",
                "key": key,
                "namespace": r["namespace"],
                "name": r["name"],
                "tier": "NetworkPolicy",
                "order": None,
                "selector": r["pod_selector"],
                "types": r["policy_types"],
                "mode": "audit" if r["audit"] else "enforce",
                "selected": r["selected"],
                "selected_by_node": by_node(view, r["selected"], nodes),
                "realized": r["realized"],
                "errors": len(
                    {e for e in view.cluster.errors if e.object == f"NetworkPolicy {key}"}
                    | set(pol.errors if (pol := view.policy(key)) else ())
                ),
            }
        )
    for r in cnp.get_rows(view, list(view.raw.cluster_policies), nodes, agents):
        items.append(
            {
                "kind": "ClusterNetworkPolicy",
                "key": r["name"],
                "namespace": None,
                "name": r["name"],
                "tier": r["tier"],
                "order": r["priority"],
                "selector": r["subject"],
                "types": [
                    t for t, n in (("Ingress", r["ingress_rules"]), ("Egress", r["egress_rules"])) if n
                ],
                "mode": "enforce",
                "selected": r["selected"],
                "selected_by_node": by_node(view, r["selected"], nodes),
                "realized": r["realized"],
                "errors": r["errors"],
            }
        )
    for kind in calico.KINDS:
        if kind.kind == HEP_KIND:
            continue
        for obj in calico.objects(view, kind, None):
            namespace, name = calico.key(obj)
            spec = obj.get("spec") or {}
            selected = _calico_selected(view, obj, kind)
            items.append(
                {
                    "kind": calico_kind(kind),
                    "key": f"{namespace}/{name}" if kind.namespaced else name,
                    "namespace": namespace or None,
                    "name": name,
                    "tier": "Calico",
                    "order": spec.get("order"),
                    "selector": spec.get("selector") or "all()",
                    "types": list(spec.get("types") or []),
                    "mode": "enforce",
                    "selected": selected,
                    "selected_by_node": by_node(view, selected, nodes),
                    "realized": netpol.realized_on(obj, agents),
                    "errors": len(calico.errors_of(view, kind, obj)),
                }
            )
    return {"nodes": list(nodes), "items": items, "warnings": list(view.raw.warnings)}


def describe(view: ClusterView, kind: str, key: str, nodes: Sequence[str], agents: Agents) -> dict[str, Any]:
    """One policy as `vethguard describe` prints it (Calico's: as `get -o wide` does)."""
    if kind == "NetworkPolicy":
        obj = next((p for p in view.raw.policies if netpol.key(p) == key), None)
        if obj is not None:
            return {"kind": kind, "key": key, "text": netpol.describe_text(view, obj, nodes, agents)}
    elif kind == "ClusterNetworkPolicy":
        obj = next((p for p in view.raw.cluster_policies if cnp.name(p) == key), None)
        if obj is not None:
            return {"kind": kind, "key": key, "text": cnp.describe_text(view, obj, nodes, agents)}
    else:
        for ck in calico.KINDS:
            if calico_kind(ck) != kind:
                continue
            for cobj in calico.objects(view, ck, None):
                namespace, name = calico.key(cobj)
                if (f"{namespace}/{name}" if ck.namespaced else name) == key:
                    text = calico.get_text(view, ck, [cobj], wide=True)
                    notes = calico.error_notes(view, ck, [cobj])
                    return {"kind": kind, "key": key, "text": "\n".join([text, *notes])}
    raise VethguardError(f"no {kind} {key}")


def heatmap(
    view: ClusterView,
    pods: Sequence[str],
    port: int,
    protocol: str,
    family: int,
    probed: Mapping[tuple[str, str], bool] | None = None,
) -> dict[str, Any]:
    """reach.matrix over `pods` (compared with `probed` when given), and per pair of namespaces
    how many cells are allowed, of how many, and how many the probe disagreed with."""
    cells = reach.matrix(view, pods, port, protocol, family)
    if probed is not None:
        cells = reach.compare(cells, probed)
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cells:
        pair = (c["from"].partition("/")[0], c["to"].partition("/")[0])
        t = totals.setdefault(pair, {"from": pair[0], "to": pair[1], "allowed": 0, "cells": 0, "disagree": 0})
        t["cells"] += 1
        t["allowed"] += bool(c["allowed"])
        t["disagree"] += c.get("agrees") is False
    namespaces = sorted({p.partition("/")[0] for p in pods})
    return {
        "port": port,
        "protocol": protocol,
        "family": family,
        "probed": probed is not None,
        "pods": list(pods),
        "namespaces": namespaces,
        "cells": cells,
        "namespace_cells": [totals[k] for k in sorted(totals)],
    }


def explained(e: explain_mod.Explanation) -> dict[str, Any]:
    """explain's -o json, with the text `vethguard explain` prints."""
    return {**e.as_json(), "text": explain_mod.explain_text(e)}


def flow_filter(query: Mapping[str, Sequence[str]]) -> FlowFilter:
    """The flow filter of the page's query: pod, namespace, verdict, policy, port, protocol
    (each repeatable or comma-separated; any value matches)."""

    def values(name: str) -> tuple[str, ...]:
        return tuple(v.strip() for raw in query.get(name, ()) for v in raw.split(",") if v.strip())

    try:
        ports = tuple(int(p) for p in values("port"))
    except ValueError as exc:
        raise VethguardError(f"port: {exc}") from exc
    return FlowFilter(
        pods=values("pod"),
        namespaces=values("namespace"),
        verdicts=values("verdict"),
        policies=values("policy"),
        ports=ports,
        protocols=values("protocol"),
    )


def graph(pods: Sequence[str], records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Namespaces and pods (every pod, and every other end flows name), and an edge per
    (from, to) of `records`: how many allowed and denied records, their ports, the last deciding
    policy."""
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    ends = set(pods)
    for r in records:
        a, b = str(r.get("from") or "?"), str(r.get("to") or "?")
        ends |= {a, b}
        e = edges.setdefault(
            (a, b), {"from": a, "to": b, "allowed": 0, "denied": 0, "ports": [], "policy": None}
        )
        e["denied" if r.get("verdict") == "denied" else "allowed"] += int(r.get("count") or 1)
        if r.get("port") is not None and r["port"] not in e["ports"]:
            e["ports"].append(r["port"])
        e["policy"] = r.get("policy") or e["policy"]
    nodes = [{"id": p, "namespace": p.partition("/")[0] if "/" in p else ""} for p in sorted(ends)]
    return {
        "namespaces": sorted({n["namespace"] for n in nodes}),
        "nodes": nodes,
        "edges": [edges[k] for k in sorted(edges)],
    }


def info(view: ClusterView, target_text: str, agents: Agents, flows: Mapping[str, Any]) -> dict[str, Any]:
    """What the page is about: the target, its pods, its nodes and their agents, the flow
    follower's state."""
    nodes = list(agents)
    return {
        "target": target_text,
        "pods": view.pods(),
        "nodes": [
            {
                "name": n,
                "agent": agents.get(n) is not None,
                "ready": bool((agents.get(n) or {}).get("ready")),
                # kinds whose realized state differs from the list the page shows
                "behind": differing_kinds(view.raw.digests, agents.get(n) or {}),
            }
            for n in nodes
        ],
        "flows": dict(flows),
    }
