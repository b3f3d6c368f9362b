"""`vethguard reachability`: the pod-to-pod matrix the current policies imply (pure), and the
comparison with a real probe (`--probe`, labs only).

A pod's traffic to itself never leaves its loopback, so the kernel cannot enforce it: diagonal
cells show the policy's answer but are not compared with the probe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.debug import verdict_model
from controller.debug.view import ClusterView


def matrix(
    view: ClusterView, pods: Sequence[str], port: int, protocol: str, family: int = 4
) -> list[dict[str, Any]]:
    out = []
    for src in pods:
        src_desired = view.desired_of(src)
        for dst in pods:
            v = verdict_model.verdict(src_desired, view.desired_of(dst), src, dst, protocol, port, family)
            out.append({"from": src, "to": dst, "allowed": v.allowed})
    return out


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
