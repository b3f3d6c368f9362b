"""A 3-node lab: each node runs its own agent with its own pinned maps; cross-node traffic is
judged egress at the source node and ingress at the destination node (read from the per-node
BPF drop counters through `vethguard bpf counters --lab`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controller.lab.state import LabPaths
from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab]

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-3, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]}
"""
POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec: {{podSelector: {{matchLabels: {{pod: {pod}}}}}, policyTypes: [{kind}]}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(MODEL, "--nodes", "3") as made:
        yield made


def drops(lab: Lab) -> dict[tuple[str, str, str], int]:
    """(node, pod, direction) -> DROP_POLICY packets."""
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "bpf", "counters", "--lab", lab.name, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found: dict[tuple[str, str, str], int] = {}
    for item in json.loads(out)["items"]:
        if item["reason"] == "DROP_POLICY":
            key = (item["node"], item["pod"], item["direction"])
            found[key] = found.get(key, 0) + int(item["packets"])
    return found


def isolate(lab: Lab, pod: str, kind: str) -> str:
    text = POLICY.format(name=f"{pod}-{kind.lower()}", pod=pod, kind=kind)
    lab.cli("apply", "-f", "-", stdin=text)
    return text


def test_every_node_runs_its_own_agent_with_its_own_pinned_maps(lab: Lab) -> None:
    status = lab.status()
    assert sorted(status["agents"]) == ["node-1", "node-2", "node-3"]
    assert len({a["pid"] for a in status["agents"].values()}) == 3
    assert all(a["healthy"] for a in status["agents"].values())
    pin_root = LabPaths(lab.name).pin_root
    for node in status["agents"]:
        assert (pin_root / node / "vg_endpoints").exists()
    assert {p["node"] for p in status["pods"].values()} == {"node-1", "node-2", "node-3"}


def test_cross_node_egress_is_dropped_at_the_source_node(lab: Lab) -> None:
    before = drops(lab)
    text = isolate(lab, "a", "Egress")
    try:
        result = lab.probe(80, "TCP", 4, "--from", "x/a", "--to", "x/b", "x/c")
        assert result == {("x/a", "x/b"): False, ("x/a", "x/c"): False}
        after = drops(lab)
        assert after.get(("node-1", "x/a", "egress"), 0) > before.get(("node-1", "x/a", "egress"), 0)
        for node, pod in (("node-3", "x/b"), ("node-2", "x/c")):
            assert after.get((node, pod, "ingress"), 0) == before.get((node, pod, "ingress"), 0)
        other = lab.probe(80, "TCP", 4, "--from", "x/c", "--to", "x/b")
        assert other == {("x/c", "x/b"): True}
    finally:
        lab.cli("delete", "-f", "-", stdin=text)


def test_cross_node_ingress_is_dropped_at_the_destination_node(lab: Lab) -> None:
    before = drops(lab)
    text = isolate(lab, "b", "Ingress")
    try:
        result = lab.probe(80, "TCP", 4, "--from", "x/a", "x/c", "--to", "x/b")
        assert result == {("x/a", "x/b"): False, ("x/c", "x/b"): False}
        after = drops(lab)
        assert after.get(("node-3", "x/b", "ingress"), 0) > before.get(("node-3", "x/b", "ingress"), 0)
        for node, pod in (("node-1", "x/a"), ("node-2", "x/c")):
            assert after.get((node, pod, "egress"), 0) == before.get((node, pod, "egress"), 0)
        # replies of b's own connections still come back across nodes
        assert lab.probe(80, "TCP", 4, "--from", "x/b", "--to", "x/a") == {("x/b", "x/a"): True}
    finally:
        lab.cli("delete", "-f", "-", stdin=text)
