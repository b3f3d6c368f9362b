"""Agents in a lab: the periodic resync repairs kernel drift, new pods are enforced from their
veth's netlink event (latency printed, not asserted), and policy status reaches `lab status`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from controller.datapath import abi, bpfsys
from controller.lab.state import LabPaths
from tests.support.labs import Lab, agent_get
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.slow,
]

ISOLATE_X = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-only, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: TCP}, {port: 8080, protocol: UDP}]}]
"""


def pinned(lab: Lab, name: str, node: str = "node-1") -> bpfsys.BpfMap:
    return bpfsys.BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / node / name))


@pytest.fixture
def fast_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    # `lab up` -> daemon -> agents inherit the environment: a 1 s full resync
    monkeypatch.setenv("VETHGUARD_RESYNC_SECONDS", "1")


def test_the_periodic_resync_repairs_policy_and_endpoint_entries_changed_behind_the_agents_back(
    lab_factory: Callable[..., Lab], fast_resync: None
):
    lab = lab_factory(agents=True)
    lab.cli("apply", "-f", "-", stdin=ISOLATE_X)
    policy, endpoints = pinned(lab, "vg_policy"), pinned(lab, "vg_endpoints")
    try:
        want_policy, want_endpoints = policy.items(), endpoints.items()
        assert want_policy and want_endpoints
        victim = sorted(want_policy)[0]
        assert policy.delete(victim)
        ep_key = sorted(want_endpoints)[0]
        info = abi.EndpointInfo.from_bytes(want_endpoints[ep_key])
        info.flags = 0  # "not isolated": what an attacker with map access would write
        endpoints.update(ep_key, bytes(info))
        wait_for(lambda: policy.items() == want_policy, 20, "policy entry restored", interval=0.1)
        wait_for(lambda: endpoints.items() == want_endpoints, 20, "endpoint entry restored", interval=0.1)
    finally:
        policy.close()
        endpoints.close()
    metrics = agent_get(lab, "/metrics").decode()
    assert 'vethguard_datapath_sync_operations_total{kind="full",result="ok"}' in metrics


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_twenty_new_pods_are_enforced_from_their_veth_event_and_policy_status_is_reported(
    lab_factory: Callable[..., Lab],
):
    lab = lab_factory(agents=True)
    lab.cli("apply", "-f", "-", stdin=ISOLATE_X)
    pods = "".join(
        f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: n{i}, namespace: x, labels: {{app: n}}}}
spec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}
"""
        for i in range(20)
    )
    lab.cli("apply", "-f", "-", stdin=pods)
    log = LabPaths(lab.name).agent_log("node-1")
    enforced: dict[str, dict[str, Any]] = {}

    def read_log() -> bool:
        for line in log.read_text(errors="replace").splitlines():
            if '"endpoint enforced"' in line:
                rec = json.loads(line)
                enforced[rec["pod"]] = rec
        return all(f"x/n{i}" in enforced for i in range(20))

    wait_for(read_log, 30, "an 'endpoint enforced' log line for every new pod", interval=0.1)
    attach = [enforced[f"x/n{i}"]["veth_to_attached_ms"] for i in range(20)]
    enforce = [enforced[f"x/n{i}"]["veth_to_enforced_ms"] for i in range(20)]
    for what, values in (("attached", attach), ("enforced", enforce)):
        print(
            f"\nveth appeared -> {what} (ms, 20 pods): p50 {_quantile(values, 0.5):.1f} "
            f"p99 {_quantile(values, 0.99):.1f} mean {statistics.mean(values):.1f} max {max(values):.1f}"
        )
    metrics = agent_get(lab, "/metrics").decode()
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("vethguard_endpoint_enforce_latency_seconds_count")
    )
    assert count >= 20
    for name in (
        "vethguard_policy_compute_seconds_count",
        'vethguard_datapath_map_capacity{map="vg_policy"}',
    ):
        assert name in metrics
    # policy realization status, per node, through the lab
    status = lab.status()
    policy = status["agents"]["node-1"]["policies"]["x/web-only"]
    assert policy["selected_pods"] == 22 and policy["generation"] == 1 and policy["errors"] == []
    assert "x/web-only" in lab.cli("status").stdout
