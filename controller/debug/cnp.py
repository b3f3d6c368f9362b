"""`vethguard get cnp` and `vethguard describe cnp` (pure: raw objects + view in, text out).

ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) is cluster-scoped. The columns follow
kubectl's for the CRD (NAME, TIER, PRIORITY, AGE) plus what kubectl cannot know: how many pods
the subject selects and on how many nodes the agent has realized this version of the object
(its /status realized_objects hold the object's resourceVersion, as for NetworkPolicy). `describe` adds each
rule (index, name, action, peers, protocols), the policy's place in its tier's order, the
selected pods per node, problems (invalid fields and the rules failed closed) and realization.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from controller.compiler.clusterview import ClusterView
from controller.compiler.cnp import KIND, ClusterNetworkPolicy, CnpRule
from controller.core.errors import PolicyError
from controller.debug.netpol import realized_on, status_lines
from controller.debug.render import age, labels_text, meta_of, selector_text, spec_of, table

Obj = Mapping[str, Any]

NAMES = (
    "cnp",
    "cnps",
    "clusternetworkpolicy",
    "clusternetworkpolicies",
    "clusternetworkpolicy.policy.networking.k8s.io",
    "clusternetworkpolicies.policy.networking.k8s.io",
)
RESOURCE = "clusternetworkpolicies.policy.networking.k8s.io"


def name(obj: Obj) -> str:
    return str(meta_of(obj).get("name") or "")


def selected_pods(view: ClusterView, policy: str) -> list[str]:
    """Pods the policy's subject selects (an unusable subject selects every pod), sorted."""
    pol = view.cluster.cluster_policies.get(policy)
    if pol is None:
        return []
    tables = view.compiled.tiers.tables
    return sorted(p.key for i in tables.subject_identities(pol) for p in tables.pods_by_identity.get(i, []))


def _selects(sel: Any, every: str) -> str:
    """A selector as kubectl prints it; an empty one selects everything, so say so."""
    text = selector_text(sel)
    return f"<none> ({every})" if text == "<none>" and isinstance(sel, Mapping) else text


def subject_text(obj: Obj) -> str:
    subject = spec_of(obj).get("subject")
    if not isinstance(subject, Mapping) or len(subject) != 1:
        return "<invalid>"
    if isinstance(subject.get("namespaces"), Mapping):
        return f"namespaces: {_selects(subject['namespaces'], 'every namespace')}"
    pods = subject.get("pods")
    if isinstance(pods, Mapping):
        return (
            f"pods: namespaces {_selects(pods.get('namespaceSelector'), 'every namespace')}, "
            f"pods {_selects(pods.get('podSelector'), 'every pod')}"
        )
    return "<invalid>"


def errors_of(view: ClusterView, policy: str) -> list[PolicyError]:
    """Every problem reported for the object (the parser's, and the cluster's about it)."""
    pol = view.cluster.cluster_policies.get(policy)
    errors = list(pol.errors) if pol is not None else []
    errors += [e for e in view.cluster.errors if e.object == f"{KIND} {policy}" and e not in errors]
    return errors


def get_rows(
    view: ClusterView,
    objs: Sequence[Obj],
    nodes: Sequence[str],
    agents: Mapping[str, Mapping[str, Any] | None],
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for obj in sorted(objs, key=name):
        m, spec = meta_of(obj), spec_of(obj)
        pods = selected_pods(view, name(obj))
        pol = view.cluster.cluster_policies.get(name(obj))
        rows.append(
            {
                "name": name(obj),
                "tier": spec.get("tier"),
                "priority": spec.get("priority"),
                "subject": subject_text(obj),
                "pods": len(pods),
                "selected": pods,
                "ingress_rules": len(pol.ingress) if pol else 0,
                "egress_rules": len(pol.egress) if pol else 0,
                "errors": len(errors_of(view, name(obj))),
                "realized": realized_on(obj, agents),
                "age": age(m.get("creationTimestamp"), now),
                "resource_version": m.get("resourceVersion"),
            }
        )
    return rows


def get_text(rows: Sequence[dict[str, Any]], wide: bool) -> str:
    headers = ["NAME", "TIER", "PRIORITY", "PODS", "REALIZED", "AGE"]
    if wide:
        headers += ["SUBJECT", "INGRESS", "EGRESS", "ERRORS", "SELECTED-PODS"]
    out = []
    for r in rows:
        done = [n for n, ok in r["realized"].items() if ok]
        row = [r["name"], r["tier"], r["priority"], r["pods"], f"{len(done)}/{len(r['realized'])}", r["age"]]
        if wide:
            row += [
                r["subject"],
                r["ingress_rules"],
                r["egress_rules"],
                r["errors"],
                ",".join(r["selected"]) or "<none>",
            ]
        out.append(row)
    return table(headers, out)


# -- describe -----------------------------------------------------------------------------------


def _peer_lines(peer: Any) -> list[str]:
    if not isinstance(peer, Mapping) or len(peer) != 1:
        return [f"      <invalid> {json.dumps(peer, sort_keys=True)}"]
    kind, value = next(iter(peer.items()))
    if kind == "namespaces":
        return [f"      Namespaces: {_selects(value, 'every namespace')}"]
    if kind == "pods" and isinstance(value, Mapping):
        return [
            "      Pods:",
            f"        NamespaceSelector: {_selects(value.get('namespaceSelector'), 'every namespace')}",
            f"        PodSelector: {_selects(value.get('podSelector'), 'every pod')}",
        ]
    if kind == "nodes":
        return [f"      Nodes: {_selects(value, 'every node')}"]
    if kind == "networks" and isinstance(value, list):
        return [f"      Networks: {', '.join(str(v) for v in value)}"]
    if kind == "domainNames" and isinstance(value, list):
        names = ", ".join(str(v) for v in value)
        return [f"      DomainNames: {names} (addresses the pods learn from their DNS answers)"]
    return [f"      {kind}: {json.dumps(value, sort_keys=True)} (not supported)"]


def _protocol_text(entry: Any) -> str:
    if not isinstance(entry, Mapping) or len(entry) != 1:
        return f"<invalid> {json.dumps(entry, sort_keys=True)}"
    kind, value = next(iter(entry.items()))
    if kind == "destinationNamedPort":
        return f"named port {value}"
    port = value.get("destinationPort") if isinstance(value, Mapping) else None
    if isinstance(port, Mapping) and "number" in port:
        return f"{kind.upper()} {port['number']}"
    if isinstance(port, Mapping) and isinstance(port.get("range"), Mapping):
        return f"{kind.upper()} {port['range'].get('start')}-{port['range'].get('end')}"
    return f"{kind.upper() if isinstance(kind, str) else kind} {json.dumps(value, sort_keys=True)}"


def _enforced(rule: CnpRule | None, written: Any) -> str:
    """The action as enforced, saying so when it is not the one written."""
    if rule is None:
        return str(written)
    if rule.deny_all:
        return f"{rule.action} (failed closed: {written} written; denies every peer, port and protocol)"
    if rule.matches_nothing:
        return f"{rule.action} (failed closed: matches nothing)"
    if rule.action != written:
        return f"{rule.action} ({written} written; failed closed: the policy's place or subject is unusable)"
    return rule.action


def _rules_lines(view: ClusterView, pol: ClusterNetworkPolicy | None, obj: Obj, egress: bool) -> list[str]:
    key, peer_key, word = ("egress", "to", "To") if egress else ("ingress", "from", "From")
    raw = spec_of(obj).get(key)
    if not isinstance(raw, list) or not raw:
        return [f"  {key.capitalize()}: <none>"]
    parsed = {r.index: r for r in (pol.egress if egress else pol.ingress)} if pol else {}
    lines = [f"  {key.capitalize()}:"]
    for i, rule in enumerate(raw):
        if i:
            lines.append("    ----------")
        rule = rule if isinstance(rule, Mapping) else {}
        named = f" {rule['name']}" if rule.get("name") else ""
        lines.append(f"    [{i}]{named}: {_enforced(parsed.get(i), rule.get('action'))}")
        lines.append(f"    {word}:")
        for peer in rule.get(peer_key) or []:
            lines += _peer_lines(peer)
        protocols = rule.get("protocols")
        if protocols is None:
            lines.append("    Protocols: <any> (every port and protocol, ICMP included)")
        else:
            lines.append(f"    Protocols: {', '.join(_protocol_text(p) for p in protocols or [])}")
    return lines


def _order_text(view: ClusterView, pol: ClusterNetworkPolicy | None) -> str:
    if pol is None:
        return "<not enforced: no usable metadata.name>"
    same = [p.name for p in view.compiled.tiers.tables.policies if p.tier == pol.tier]
    return (
        f"{pol.tier} tier, priority {pol.priority}: policy {same.index(pol.name) + 1} of {len(same)} "
        "(ascending priority, then name)"
    )


def describe_text(
    view: ClusterView,
    obj: Obj,
    nodes: Sequence[str],
    agents: Mapping[str, Mapping[str, Any] | None],
) -> str:
    m, spec = meta_of(obj), spec_of(obj)
    n = name(obj)
    pol = view.cluster.cluster_policies.get(n)
    lines = [
        f"Name:         {n}",
        f"Created on:   {m.get('creationTimestamp') or '<unknown>'}",
        f"Labels:       {labels_text(m.get('labels'))}",
        f"Annotations:  {labels_text(m.get('annotations'))}",
        "Spec:",
        f"  Tier:      {spec.get('tier')}",
        f"  Priority:  {spec.get('priority')}",
        f"  Subject:   {subject_text(obj)}",
        *_rules_lines(view, pol, obj, egress=False),
        *_rules_lines(view, pol, obj, egress=True),
        "vethguard:",
        f"  Order:           {_order_text(view, pol)}",
    ]
    selected = selected_pods(view, n)
    by_node = {node: [p for p in selected if view.node_of(p) == node] for node in nodes}
    lines += status_lines(obj, by_node, agents, errors_of(view, n))
    return "\n".join(lines)
