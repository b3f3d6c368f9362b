"""Every node's agent read as on a real cluster (issue 17 item 3): a two-node lab started with
`--agent-pods` serves the agents as pods vethguard-system/vethguard-<node> one can exec into, and
`vethguard observe --kubeconfig <the lab's> --all-nodes` reads each node's flows through pods/exec
(the relay runs in the node's namespace, so the agent's flow socket admits it): the denied probes
of both nodes, the same events `observe --lab` sees, the same for two concurrent observers;
kubectl's exec (WebSocket v5) works too, the agent pods are read-only, and a lab pod cannot exec
through the API address the pods reach."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.flows import observe_sessions
from tests.support.labs import X_A_ALLOWS_X_B, Lab, lab_up, model_text

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

X_B_DENIES_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-denies-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
"""
DENIED = ["--verdict", "denied", "--port", "80"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # x/a runs on node-1 and x/b on node-2: y/a's probes to both are denied, one on each node
    with lab_up(model_text(), "--nodes", "2", "--agent-pods", timeout=180, prefix="hx") as made:
        made.cli("apply", "-f", "-", stdin=X_A_ALLOWS_X_B + "---" + X_B_DENIES_ALL)
        yield made


def kubeconfig(lab: Lab) -> str:
    return lab.cli("kubeconfig").stdout.strip()


def all_nodes(lab: Lab) -> list[str]:
    return ["--kubeconfig", kubeconfig(lab), "--all-nodes"]


def vethguard(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def observe(*args: str) -> list[dict[str, Any]]:
    done = vethguard("observe", "-o", "json", *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def probe_denied(lab: Lab) -> None:
    assert lab.probe_tcp(80, ["y/a"], ["x/a", "x/b"]) == {("y/a", "x/a"): False, ("y/a", "x/b"): False}


def test_the_lab_serves_one_running_agent_pod_per_node(lab: Lab) -> None:
    pods = lab.status()["pods"]
    agents = {k: v for k, v in pods.items() if k.startswith("vethguard-system/")}
    assert {k: (v["node"], v["hostNetwork"]) for k, v in agents.items()} == {
        "vethguard-system/vethguard-node-1": ("node-1", True),
        "vethguard-system/vethguard-node-2": ("node-2", True),
    }


def test_observe_all_nodes_sees_the_denied_probes_of_both_nodes_as_observe_lab_does(lab: Lab) -> None:
    probe_denied(lab)
    through_exec = observe(*all_nodes(lab), *DENIED)
    through_lab = observe("--lab", lab.name, *DENIED)
    assert through_exec == through_lab
    latest = {(r["to"], r["node"]) for r in through_exec if r["from"] == "y/a"}
    assert latest == {("x/a", "node-1"), ("x/b", "node-2")}
    assert {r["policy"] for r in through_exec} == {"x/a-allows-b", "x/b-denies-all"}


def test_two_concurrent_cluster_observers_see_the_same_events(lab: Lab) -> None:
    seen = observe_sessions(lab.name, 2, 12, *DENIED, act=lambda: probe_denied(lab), where=all_nodes(lab))
    assert seen[0] and seen[0] == seen[1]
    assert {(r["to"], r["node"]) for r in seen[0]} == {("x/a", "node-1"), ("x/b", "node-2")}
    times = [r["time"] for r in seen[0]]
    assert times == sorted(times)


def test_get_with_all_nodes_reads_each_agents_realization_through_exec(lab: Lab) -> None:
    done = vethguard("get", "netpol", "-n", "x", "-o", "wide", *all_nodes(lab))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    through_lab = vethguard("get", "netpol", "-n", "x", "-o", "wide", "--lab", lab.name)

    def without_age(text: str) -> str:  # the AGE column (2s, 3s) moves between the two commands
        return re.sub(r" \d+[smhd] ", " AGE ", text)

    assert without_age(done.stdout) == without_age(through_lab.stdout) and "b-denies-all" in done.stdout
    rows = done.stdout.splitlines()[1:]
    assert rows and all(row.rstrip().endswith("2/2") for row in rows)  # REALIZED: both agents, via exec


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
def test_kubectl_exec_runs_vethguard_in_the_agent_pod_of_each_node(lab: Lab) -> None:
    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["kubectl", "--kubeconfig", kubeconfig(lab), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    done = kubectl(
        "exec",
        "-n",
        "vethguard-system",
        "vethguard-node-1",
        "-c",
        "agent",
        "--",
        "vethguard",
        "agent-read",
        "status",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ready"] is True
    request = '{"follow": false, "history": false}'
    done = kubectl(
        "exec", "-n", "vethguard-system", "vethguard-node-2", "-c", "agent", "--",
        "vethguard", "agent-read", "flows", "--request", request,
    )  # fmt: skip
    hello = json.loads(done.stdout.splitlines()[0])
    assert (done.returncode, hello["_"], hello["node"]) == (
        0,
        "hello",
        "node-2",
    )  # node-2's agent admitted it
    refused = kubectl("exec", "-n", "x", "a", "--", "true")
    assert refused.returncode == 1 and "the lab runs commands only in its agent pods" in refused.stderr
    kept = kubectl("delete", "pod", "-n", "vethguard-system", "vethguard-node-1")
    assert kept.returncode == 1 and "is the lab's agent pod (lab up --agent-pods): read-only" in kept.stderr


# From inside a lab pod: the API on the fabric address, as the agents use it (GET with an upgrade)
FABRIC_EXEC = (
    "import http.client, json; c = http.client.HTTPConnection('10.244.0.1', 6443, timeout=10); "
    "c.request('GET', '/api/v1/namespaces/vethguard-system/pods/vethguard-node-1/exec"
    "?command=id&container=agent&stdout=true', "
    "headers={'Upgrade': 'websocket', 'Connection': 'Upgrade', 'Sec-WebSocket-Key': 'x', "
    "'Sec-WebSocket-Protocol': 'v5.channel.k8s.io'}); r = c.getresponse(); "
    "print(r.status, json.loads(r.read())['message'])"
)


def test_a_lab_pod_cannot_exec_into_an_agent_pod_through_the_fabric_api(lab: Lab) -> None:
    out = lab.cli("exec", "x/a", "--", sys.executable, "-c", FABRIC_EXEC).stdout
    assert out == "400 this API server runs no commands (lab up --agent-pods)\n"
