"""`vethguard get netpol` and `vethguard describe netpol` (pure: raw objects + view in, text out).

The columns and the describe layout follow kubectl (NAME, POD-SELECTOR, AGE; "Allowing ingress
traffic: To Port / From ..."), then what kubectl cannot know: which pods the policy selects on
the target node(s), whether it runs in audit mode, and whether each node's agent has realized
this version of it (controller.agent.realization: the resourceVersion in its /status
realized_objects equals the policy's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from controller.agent.realization import realized_version
from controller.compiler.clusterview import ClusterView
from controller.compiler.parse import AUDIT_ANNOTATION
from controller.core.errors import PolicyError
from controller.debug.render import age, labels_text, selector_text, table

# What `vethguard get`, `describe` and `whatif --delete` take for a NetworkPolicy
NAMES = ("netpol", "netpols", "networkpolicy", "networkpolicies", "networkpolicy.networking.k8s.io")

Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def key(obj: Obj) -> str:
    m = _meta(obj)
    return f"{m.get('namespace', 'default')}/{m.get('name', '')}"


def realized_on(obj: Obj, agents: Mapping[str, Mapping[str, Any] | None]) -> dict[str, bool]:
    """node -> whether that node's agent is ready and its maps realize this very version of the
    object (the resourceVersion in its /status realized_objects equals the object's)."""
    rv = str(_meta(obj).get("resourceVersion") or "")
    return {
        node: bool(status and status.get("ready")) and bool(rv) and realized_version(status, obj) == rv
        for node, status in agents.items()
    }


def realized_text(obj: Obj, status: Mapping[str, Any] | None) -> str:
    """describe's words for one node's realization of the object."""
    if status is None:
        return "unknown (the agent does not answer /status)"
    rv = str(_meta(obj).get("resourceVersion") or "")
    have = realized_version(status, obj)
    if not status.get("ready"):
        return "NO (the agent is not ready)"
    if have is None:
        return "NO (not in the state the agent realized yet)"
    if have != rv:
        return f"NO (the agent realized resourceVersion {have})"
    return "yes"


def selected_on(view: ClusterView, policy: str, nodes: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for pod in view.selected_pods(policy):
        node = view.node_of(pod)
        if node in out:
            out[node].append(pod)
    return out


def policy_types(obj: Obj) -> list[str]:
    spec = obj.get("spec") or {}
    types = spec.get("policyTypes")
    if types:
        return [str(t) for t in types]
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def is_audit(obj: Obj) -> bool:
    value = (_meta(obj).get("annotations") or {}).get(AUDIT_ANNOTATION)
    return isinstance(value, str) and value.strip().lower() == "true"


def get_rows(
    view: ClusterView,
    policies: Sequence[Obj],
    nodes: Sequence[str],
    agents: Mapping[str, Mapping[str, Any] | None],
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for obj in sorted(policies, key=key):
        m = _meta(obj)
        k = key(obj)
        sel = selected_on(view, k, nodes)
        realized = realized_on(obj, agents)
        rows.append(
            {
                "namespace": m.get("namespace"),
                "name": m.get("name"),
                "pod_selector": selector_text((obj.get("spec") or {}).get("podSelector")),
                "age": age(m.get("creationTimestamp"), now),
                "policy_types": policy_types(obj),
                "audit": is_audit(obj),
                "selected": [p for node in nodes for p in sel[node]],
                "realized": realized,
                "resource_version": m.get("resourceVersion"),
            }
        )
    return rows


def get_text(rows: Sequence[dict[str, Any]], all_namespaces: bool, wide: bool) -> str:
    if not rows:
        return "No resources found."
    headers = [*(["NAMESPACE"] if all_namespaces else []), "NAME", "POD-SELECTOR", "AGE"]
    if wide:
        headers += ["TYPES", "MODE", "SELECTED-PODS", "REALIZED"]
    out = []
    for r in rows:
        row = [*([r["namespace"]] if all_namespaces else []), r["name"], r["pod_selector"], r["age"]]
        if wide:
            done = [n for n, ok in r["realized"].items() if ok]
            row += [
                ",".join(r["policy_types"]),
                "audit" if r["audit"] else "enforce",
                ",".join(r["selected"]) or "<none>",
                f"{len(done)}/{len(r['realized'])}",
            ]
        out.append(row)
    return table(headers, out)


# -- describe -----------------------------------------------------------------------------------


def _port_text(port: Mapping[str, Any]) -> str:
    proto = port.get("protocol") or "TCP"
    p = port.get("port")
    if p is None:
        return f"<any> (traffic allowed to all {proto} ports)"
    end = port.get("endPort")
    return f"{p}-{end}/{proto}" if end is not None else f"{p}/{proto}"


def _peer_lines(peer: Mapping[str, Any]) -> list[str]:
    lines = []
    ip_block = peer.get("ipBlock")
    if ip_block:
        lines.append("      IPBlock:")
        lines.append(f"        CIDR: {ip_block.get('cidr')}")
        lines.append(f"        Except: {', '.join(ip_block.get('except') or [])}")
        return lines
    if "namespaceSelector" in peer:
        lines.append(f"      NamespaceSelector: {selector_text(peer['namespaceSelector']) or '<none>'}")
    if "podSelector" in peer:
        lines.append(f"      PodSelector: {selector_text(peer['podSelector'])}")
    return lines


def _rules_lines(rules: Sequence[Mapping[str, Any]], ingress: bool) -> list[str]:
    word, peer_key = ("From", "from") if ingress else ("To", "to")
    if not rules:
        which = "ingress" if ingress else "egress"
        return [f"    <none> (Selected pods are isolated for {which} connectivity)"]
    lines: list[str] = []
    for i, rule in enumerate(rules):
        if i:
            lines.append("    ----------")
        ports = rule.get("ports") or []
        if ports:
            lines += [f"    To Port: {_port_text(p)}" for p in ports]
        else:
            lines.append("    To Port: <any> (traffic allowed to all ports)")
        peers = rule.get(peer_key) or []
        if not peers:
            what = "source" if ingress else "destination"
            lines.append(f"    {word}: <any> (traffic not restricted by {what})")
        for peer in peers:
            lines.append(f"    {word}:")
            lines += _peer_lines(peer)
    return lines


def describe_text(
    view: ClusterView,
    obj: Obj,
    nodes: Sequence[str],
    agents: Mapping[str, Mapping[str, Any] | None],
) -> str:
    m = _meta(obj)
    spec = obj.get("spec") or {}
    types = policy_types(obj)
    k = key(obj)
    sel = selector_text(spec.get("podSelector"))
    if sel == "<none>":
        sel = "<none> (Allowing the specific traffic to all pods in this namespace)"
    lines = [
        f"Name:         {m.get('name')}",
        f"Namespace:    {m.get('namespace')}",
        f"Created on:   {m.get('creationTimestamp') or '<unknown>'}",
        f"Labels:       {labels_text(m.get('labels'))}",
        f"Annotations:  {labels_text(m.get('annotations'))}",
        "Spec:",
        f"  PodSelector:     {sel}",
    ]
    if "Ingress" in types:
        lines.append("  Allowing ingress traffic:")
        lines += _rules_lines(spec.get("ingress") or [], ingress=True)
    else:
        lines.append("  Not affecting ingress traffic")
    if "Egress" in types:
        lines.append("  Allowing egress traffic:")
        lines += _rules_lines(spec.get("egress") or [], ingress=False)
    else:
        lines.append("  Not affecting egress traffic")
    lines.append(f"  Policy Types: {', '.join(types)}")
    lines.append("vethguard:")
    mode = f"audit ({AUDIT_ANNOTATION}: would-be drops pass and are reported)" if is_audit(obj) else "enforce"
    lines.append(f"  Mode:            {mode}")
    errors = [e for e in view.cluster.errors if e.object == f"NetworkPolicy {k}"]
    pol = view.policy(k)
    if pol is not None:
        errors += [e for e in pol.errors if e not in errors]
    lines += status_lines(obj, selected_on(view, k, nodes), agents, errors)
    return "\n".join(lines)


def status_lines(
    obj: Obj,
    selected: Mapping[str, Sequence[str]],
    agents: Mapping[str, Mapping[str, Any] | None],
    errors: Sequence[PolicyError],
) -> list[str]:
    """describe's vethguard part after the policy's own: selected pods per node, resource
    version, realization per node, problems."""
    lines = ["  Selected pods:"]
    lines += [f"    {node}: {', '.join(pods) or '<none>'}" for node, pods in selected.items()]
    lines.append(f"  Resource version: {_meta(obj).get('resourceVersion')}")
    lines.append("  Realized:")
    lines += [f"    {node}: {realized_text(obj, status)}" for node, status in agents.items()]
    lines.append("  Errors:" + ("" if errors else "          <none>"))
    lines += [f"    {e.field}: {e.message}" for e in errors]
    return lines
