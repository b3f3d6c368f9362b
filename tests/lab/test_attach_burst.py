"""A burst of new pods in a lab: every pod's veth ends up with our programs and its pod's policy.

Prints (does not assert) the latency distribution the agent logs per pod, from the netlink event
of the pod's veth: -> programs attached, and -> the pod's policy written, for one pod alone and
for 20 pods applied at once, with the spread of the veth creations (the lab builds pods one after
the other) and the load average while measuring. Reproduce the figures with

    python -m pytest -p no:cacheprovider tests/lab/test_attach_burst.py -q -s
"""

from __future__ import annotations

import json
import os
import socket
import statistics
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from controller.datapath import abi, bpfsys, codecs
from controller.datapath.tcx import pod_attacher
from controller.lab import netns
from controller.lab.state import LabPaths
from controller.lab.topology import LabNames, pod_ifname
from tests.support.labs import Lab
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
  ingress: [{ports: [{port: 80, protocol: TCP}]}]
"""
POD = """
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: x, labels: {{app: burst}}}}
spec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}
"""
BURST = 20


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _enforced_lines(lab: Lab, pods: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """The agent's "endpoint enforced" log record of each pod (waits until all are there)."""
    log = LabPaths(lab.name).agent_log("node-1")
    found: dict[str, dict[str, Any]] = {}

    def read() -> bool:
        for line in log.read_text(errors="replace").splitlines():
            if '"endpoint enforced"' in line:
                rec = json.loads(line)
                if rec["pod"] in pods:
                    found[rec["pod"]] = rec
        return all(p in found for p in pods)

    wait_for(read, timeout, f"an 'endpoint enforced' log line for {len(pods)} new pods", interval=0.1)
    return found


def _report(label: str, records: dict[str, dict[str, Any]], load: tuple[float, float, float]) -> None:
    attach = [r["veth_to_attached_ms"] for r in records.values()]
    enforce = [r["veth_to_enforced_ms"] for r in records.values()]
    # when each veth appeared, from the log time of its record minus its latency
    appeared = [
        datetime.fromisoformat(r["timestamp"]).timestamp() - r["veth_to_enforced_ms"] / 1000
        for r in records.values()
    ]
    print(
        f"\n{label}: {len(records)} pods, veths created over {1000 * (max(appeared) - min(appeared)):.0f} ms"
    )
    for what, values in (("attached", attach), ("enforced", enforce)):
        print(
            f"  veth appeared -> {what} (ms): p50 {_quantile(values, 0.5):.1f} "
            f"p99 {_quantile(values, 0.99):.1f} mean {statistics.mean(values):.1f} max {max(values):.1f}"
        )
    print(f"  load average before/after: {load[0]:.2f} / {os.getloadavg()[0]:.2f}")


def _pod_state(lab: Lab, pods: list[str]) -> dict[str, tuple[int, bool]]:
    """pod -> (vg_endpoints flags of its veth, -1 when absent; whether our filters are on it)."""
    node_ns = LabNames(lab.name).node(1)

    def read() -> dict[str, tuple[int, bool]]:
        endpoints = bpfsys.BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / "node-1" / "vg_endpoints"))
        try:
            entries = endpoints.items()
        finally:
            endpoints.close()
        out = {}
        attacher = pod_attacher(None)
        for pod in pods:
            ifindex = socket.if_nametoindex(pod_ifname(*pod.split("/")))
            value = entries.get(codecs.u32_key(ifindex))
            flags = abi.EndpointInfo.from_bytes(value).flags if value is not None else -1
            out[pod] = (flags, attacher.attached(ifindex))
        return out

    return netns.run_in_netns(node_ns, read)


def _assert_enforced(lab: Lab, pods: list[str]) -> None:
    state = _pod_state(lab, pods)
    not_enforced = {
        pod: flags
        for pod, (flags, attached) in state.items()
        if not attached or flags < 0 or flags & abi.EP_F_PENDING or not flags & abi.EP_F_INGRESS_ISOLATED
    }
    assert not not_enforced, f"pods whose veth lacks our programs or their policy: {not_enforced}"


@pytest.mark.parametrize("cni", ["routed", "bridge"])
def test_one_pod_and_a_burst_of_twenty_pods_all_end_up_attached_and_enforced(
    lab_factory: Callable[..., Lab], cni: str
):
    lab = lab_factory("--cni", cni, agents=True)
    lab.cli("apply", "-f", "-", stdin=ISOLATE_X)

    load = os.getloadavg()
    lab.cli("apply", "-f", "-", stdin=POD.format(name="solo"))
    solo = _enforced_lines(lab, ["x/solo"])
    _report(f"{cni}, one pod", solo, load)
    _assert_enforced(lab, ["x/solo"])

    names = [f"b{i}" for i in range(BURST)]
    load = os.getloadavg()
    lab.cli("apply", "-f", "-", stdin="".join(POD.format(name=n) for n in names))
    burst = _enforced_lines(lab, [f"x/{n}" for n in names])
    _report(f"{cni}, {BURST} pods in one apply", burst, load)
    _assert_enforced(lab, [f"x/{n}" for n in names])
