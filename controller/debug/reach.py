"""`vethguard reachability`: the pod-to-pod matrix the current policies imply (pure), and the
comparison with a real probe (`--probe`, labs only).

A pod's traffic to itself never leaves its loopback, so the kernel cannot enforce it: diagonal
cells show the policy's answer but are not compared with the probe.

Every cell names the hook that decided it (the one that dropped it, the source's egress first;
for an allowed one the hook a rule allowed it at, the destination's ingress first): its reason,
and when a rule decided, its tier (Admin, NetworkPolicy, Baseline), policy, rule and rule_name.
The text adds a line per ClusterNetworkPolicy rule that decided cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.compiler.clusterview import DIRECTION_NAMES, ClusterView, rule_json
from controller.debug import verdict_model


def matrix(
    view: ClusterView, pods: Sequence[str], port: int, protocol: str, family: int = 4
) -> list[dict[str, Any]]:
    out = []
    for src in pods:
        src_desired = view.desired_of(src)
        for dst in pods:
            v = verdict_model.verdict(src_desired, view.desired_of(dst), src, dst, protocol, port, family)
            out.append({"from": src, "to": dst, "allowed": v.allowed, **decided_by(v)})
    return out


def decided_by(v: verdict_model.Verdict) -> dict[str, Any]:
    """The deciding hook of a verdict: direction, reason, and the rule's tier/policy/rule/name."""
    half = v.deciding
    if v.allowed and half.rule is None and v.egress.rule is not None:
        half = v.egress
    rule = rule_json(half.rule) if half.rule is not None else {}
    return {
        "direction": DIRECTION_NAMES[half.direction],
        "reason": half.reason,
        "tier": rule.get("tier"),
        "policy": rule.get("policy"),
        "rule": rule.get("rule"),
        "rule_name": rule.get("rule_name"),
    }


def tier_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per ClusterNetworkPolicy rule that decided cells: how many it allowed, denied."""
    counts: dict[str, list[int]] = {}
    for r in results:
        if r.get("tier") in ("Admin", "Baseline"):
            counts.setdefault(r["rule"], [0, 0])[0 if r["allowed"] else 1] += 1
    return [
        f"  {rule}: " + ", ".join(f"{n} {w}" for n, w in zip(c, ("allowed", "denied"), strict=True) if n)
        for rule, c in sorted(counts.items())
    ]


def compare(results: list[dict[str, Any]], probed: Mapping[tuple[str, str], bool]) -> list[dict[str, Any]]:
    """Add "probed" and "agrees" to every cell; diagonal cells are probed but never disagree."""
    for cell in results:
        got = probed.get((cell["from"], cell["to"]))
        cell["probed"] = got
        cell["agrees"] = True if got is None or cell["from"] == cell["to"] else got == cell["allowed"]
    return results


def matrix_text(results: Sequence[Mapping[str, Any]], pods: Sequence[str], title: str) -> str:
    """'.' allowed, 'X' denied; with a probe, '!' where the kernel disagreed (shown: what it did)."""
    cells = {}
    for r in results:
        mark = "." if r["allowed"] else "X"
        if r.get("agrees") is False:
            mark = "!" + ("." if r["probed"] else "X")
        cells[(r["from"], r["to"])] = mark
    width = max([len(title), *(len(p) for p in pods)])
    col = max([3, *(len(p) for p in pods)])
    lines = [f"{title:<{width}}  " + " ".join(f"{p:<{col}}" for p in pods).rstrip()]
    for src in pods:
        row = " ".join(f"{cells.get((src, d), '?'):<{col}}" for d in pods)
        lines.append(f"{src:<{width}}  {row}".rstrip())
    return "\n".join(lines)
