"""Host-network pods, Node labels and ClusterNetworkPolicy objects in a two-node lab with agents,
through the real `vethguard lab` CLI (tests/support/models/host-network.yaml). Enforcement of
ClusterNetworkPolicy is not tested here: only that the lab serves it and the agents see it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.lab import topology
from controller.lab.client import LabClient
from controller.lab.state import LabPaths
from tests.support.labs import Lab, lab_up, load_model

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.bcc,
    pytest.mark.slow,
]

CNP_PATH = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
CNP = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny-x}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: nobody, action: Deny, from: [{namespaces: {matchLabels: {ns: nowhere}}}]}
"""
HOST_POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: x}}
spec:
  nodeName: node-1
  hostNetwork: true
  containers:
  - name: serve
    ports: [{{containerPort: {port}, protocol: TCP}}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(load_model("host-network.yaml"), "--nodes", "2", timeout=600) as made:
        yield made


def api(lab: Lab, method: str, path: str) -> tuple[int, Any]:
    return LabClient(LabPaths(lab.name)).request(method, path)


def test_a_host_network_pod_has_its_node_s_addresses_and_namespace(lab: Lab) -> None:
    status = lab.status()
    host = status["pods"]["x/host"]
    assert host["node"] == "node-1" and host["hostNetwork"] is True
    assert host["ips"] == list(topology.node_addresses(1)) == status["nodes"]["node-1"]["ips"]
    assert host["netns"] == status["nodes"]["node-1"]["netns"]
    assert status["pods"]["x/a"]["hostNetwork"] is False
    code, pod = api(lab, "GET", "/api/v1/namespaces/x/pods/host")
    assert code == 200 and pod["status"]["podIP"] == pod["status"]["hostIP"] == "10.244.1.1"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_pods_on_either_node_reach_a_host_network_pod_and_it_reaches_them(
    lab: Lab, protocol: str, family: int
) -> None:
    to_host = lab.probe(8080, protocol, family, "--from", "x/a", "x/b", "--to", "x/host")
    assert to_host == {("x/a", "x/host"): True, ("x/b", "x/host"): True}
    from_host = lab.probe(80, protocol, family, "--from", "x/host", "--to", "x/a", "x/b")
    assert from_host == {("x/host", "x/a"): True, ("x/host", "x/b"): True}


def test_two_host_network_pods_of_a_node_serve_their_own_ports_side_by_side(lab: Lab) -> None:
    assert lab.probe(8081, "TCP", 4, "--from", "x/b", "--to", "x/host", "x/host2") == {
        ("x/b", "x/host"): True,  # the same node address: 8081 is x/host2's port
        ("x/b", "x/host2"): True,
    }
    assert lab.probe(9999, "TCP", 4, "--from", "x/b", "--to", "x/host2") == {("x/b", "x/host2"): False}
    assert lab.probe(8080, "SCTP", 4, "--from", "x/b", "--to", "x/host2")[("x/b", "x/host2")] is True


@pytest.mark.parametrize(
    ("port", "message"),
    [(8080, "8080/TCP (host-network pod x/host)"), (9890, "9890/TCP (the node agent's status port)")],
)
def test_a_host_network_pod_declaring_a_port_already_in_use_on_its_node_is_refused(
    lab: Lab, port: int, message: str
) -> None:
    result = lab.cli("apply", "-f", "-", stdin=HOST_POD.format(name="clash", port=port), check=False)
    assert result.returncode != 0
    assert f"hostNetwork ports already in use on node-1: {message}" in result.stderr
    assert "x/clash" not in lab.status()["pods"]


def test_a_deleted_host_network_pod_stops_serving_and_its_neighbour_keeps_serving(lab: Lab) -> None:
    manifest = HOST_POD.format(name="host3", port=8083)
    lab.cli("apply", "-f", "-", stdin=manifest)
    assert lab.probe(8083, "TCP", 4, "--from", "x/b", "--to", "x/host3") == {("x/b", "x/host3"): True}
    lab.cli("delete", "-f", "-", stdin=manifest)
    assert lab.probe(8083, "TCP", 4, "--from", "x/b", "--to", "10.244.1.1") == {("x/b", "10.244.1.1"): False}
    assert lab.probe(8080, "TCP", 4, "--from", "x/b", "--to", "x/host") == {("x/b", "x/host"): True}


def test_nodes_carry_kubelet_s_labels_and_lab_apply_adds_others(lab: Lab) -> None:
    code, node = api(lab, "GET", "/api/v1/nodes/node-2")
    assert code == 200
    assert node["metadata"]["labels"] == {"kubernetes.io/hostname": "node-2", "kubernetes.io/os": "linux"}
    lab.cli(
        "apply", "-f", "-", stdin="apiVersion: v1\nkind: Node\nmetadata: {name: node-2, labels: {zone: b}}\n"
    )
    _, node = api(lab, "GET", "/api/v1/nodes/node-2")
    assert node["metadata"]["labels"]["zone"] == "b"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-2"
    assert node["spec"]["podCIDRs"] == list(topology.node_cidrs(2))


def test_lab_apply_of_a_cluster_network_policy_reaches_the_api_and_every_agent(lab: Lab) -> None:
    out = lab.cli("apply", "-f", "-", stdin=CNP).stdout
    assert "clusternetworkpolicy/baseline-deny-x created" in out
    code, listed = api(lab, "GET", CNP_PATH)
    assert code == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["baseline-deny-x"]
    agents = lab.status()["agents"]  # apply returned after every agent realized it
    assert {node: a["cluster_policies"] for node, a in agents.items()} == {"node-1": 1, "node-2": 1}
    lab.cli("delete", "-f", "-", stdin=CNP)
    assert api(lab, "GET", CNP_PATH)[1]["items"] == []
    assert {a["cluster_policies"] for a in lab.status()["agents"].values()} == {0}


def test_a_restarted_daemon_serves_the_host_network_pods_ports_again(lab: Lab) -> None:
    before = lab.status()["pods"]
    os.kill(int(LabPaths(lab.name).daemon_pid.read_text()), signal.SIGKILL)
    time.sleep(0.2)
    assert lab.status()["pods"] == before  # the CLI resumes the daemon from the saved state
    assert lab.probe(8080, "UDP", 6, "--from", "x/b", "--to", "x/host") == {("x/b", "x/host"): True}
    assert lab.probe(8081, "TCP", 4, "--from", "x/a", "--to", "x/host2") == {("x/a", "x/host2"): True}
