"""A bridge-mode lab (`vethguard lab up --cni bridge`, flannel-like cni0) with its agents on.

x/a and x/b share node-1 (their traffic is bridged), y/a is on node-2 (routed through the fabric),
ext/web is outside the cluster. The agent must find each pod's bridge port from the neighbour
table and the FDB, enforce policy on it like on a routed veth, find the pods again after it lost
that knowledge, and fail closed on a bridge port no pod claims.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.lab import netns, topology
from controller.lab.agents import query_agent
from controller.lab.client import teardown
from tests.support.labs import Lab, lab_up
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.bcc,
    pytest.mark.slow,
]

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: web}
spec:
  ip: [203.0.113.5, "2001:db8::5"]
  ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}]
"""
POD = """
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: serve
    ports: [{{containerPort: 80, protocol: TCP}}, {{containerPort: 80, protocol: UDP}}]
"""
PODS = [("x", "a", "node-1"), ("x", "b", "node-1"), ("y", "a", "node-2")]
POD_NAMES = [f"{ns}/{name}" for ns, name, _ in PODS]
TARGETS = [*POD_NAMES, "ext/web"]

# x/b accepts only x/a; y/a may only talk to pods (not outside the cluster)
POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-pods-only, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}]}]
"""
BLOCKED_WITH_POLICY = {("y/a", "x/b"), ("y/a", "ext/web"), ("ext/web", "x/b")}


@pytest.fixture(scope="module")
def bridge_lab() -> Iterator[Lab]:
    model = MODEL + "".join(POD.format(ns=ns, name=n, node=node) for ns, n, node in PODS)
    with lab_up(model, "--nodes", "2", "--cni", "bridge", timeout=400) as made:
        yield made


def ip_json(namespace: str, *args: str) -> Any:
    return json.loads(netns.ip(namespace, "-j", *args) or "[]")


def agent_status(lab: Lab, node: int) -> dict[str, Any]:
    return query_agent(topology.LabNames(lab.name).node(node)) or {}


def host_ifindex(lab: Lab, namespace: str, pod: str, node: int) -> int:
    link = ip_json(
        topology.LabNames(lab.name).node(node), "link", "show", "dev", topology.pod_ifname(namespace, pod)
    )
    return int(link[0]["ifindex"])


def matrix(lab: Lab, family: int, protocol: str = "TCP") -> dict[tuple[str, str], bool]:
    cells = lab.probe(80, protocol, family, "--from", *POD_NAMES, "--to", *TARGETS)
    cells |= lab.probe(80, protocol, family, "--from", "ext/web", "--to", *POD_NAMES)
    return cells


def test_each_node_has_a_cni0_with_the_gateway_and_pods_are_its_ports_on_link(bridge_lab: Lab) -> None:
    names = topology.LabNames(bridge_lab.name)
    node = names.node(1)
    bridge = ip_json(node, "-d", "addr", "show", "dev", "cni0")[0]
    assert {(a["local"], a["prefixlen"]) for a in bridge["addr_info"] if a["scope"] == "global"} == {
        ("10.244.1.1", 24),
        ("fd00:10:244:1::1", 64),
    }
    info = bridge["linkinfo"]["info_data"]
    assert (info["nf_call_iptables"], info["nf_call_ip6tables"], info["nf_call_arptables"]) == (0, 0, 0)
    ports = {link["ifname"]: link.get("master") for link in ip_json(node, "link", "show", "master", "cni0")}
    assert ports == {topology.pod_ifname("x", "a"): "cni0", topology.pod_ifname("x", "b"): "cni0"}
    # no per-pod host routes: the agent cannot use the route strategy here
    assert [
        r for r in ip_json(node, "route", "show") if r["dst"].startswith("10.244.1.") and "/" not in r["dst"]
    ] == []
    pod = names.pod("x", "a")
    eth0 = ip_json(pod, "addr", "show", "dev", "eth0")[0]
    assert {a["prefixlen"] for a in eth0["addr_info"] if a["scope"] == "global"} == {24, 64}
    gateways = {r["gateway"] for r in ip_json(pod, "route", "show", "default")}
    gateways |= {r["gateway"] for r in ip_json(pod, "-6", "route", "show", "default")}
    assert gateways == {"10.244.1.1", "fd00:10:244:1::1"}


def test_bridge_netfilter_is_off_in_the_node_namespace_when_the_kernel_has_it(bridge_lab: Lab) -> None:
    if not Path("/proc/sys/net/bridge").exists():
        pytest.skip("this kernel has no br_netfilter: nothing to switch off")
    node = netns.netns_path(topology.LabNames(bridge_lab.name).node(1))
    out = subprocess.run(
        ["nsenter", f"--net={node}", "--", "sysctl", "-n", *topology.BRIDGE_NF_SYSCTLS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["0", "0", "0"]


def test_the_agent_maps_each_local_pod_to_its_bridge_port(bridge_lab: Lab) -> None:
    node1, node2 = agent_status(bridge_lab, 1), agent_status(bridge_lab, 2)
    assert node1["pod_ifindex"] == {
        "x/a": host_ifindex(bridge_lab, "x", "a", 1),
        "x/b": host_ifindex(bridge_lab, "x", "b", 1),
    }
    assert node2["pod_ifindex"] == {"y/a": host_ifindex(bridge_lab, "y", "a", 2)}
    assert node1["pods_without_veth"] == [] and node2["pods_without_veth"] == []


@pytest.mark.parametrize("family", [4, 6])
def test_without_policy_same_node_cross_node_and_external_traffic_connects(
    bridge_lab: Lab, family: int
) -> None:
    cells = matrix(bridge_lab, family)
    assert cells and all(cells.values()), sorted(k for k, ok in cells.items() if not ok)


def test_a_policy_blocks_exactly_the_expected_cells_and_deleting_it_restores_them(bridge_lab: Lab) -> None:
    bridge_lab.cli("apply", "-f", "-", stdin=POLICY)
    try:
        for family in (4, 6):
            for protocol in ("TCP", "UDP"):
                cells = matrix(bridge_lab, family, protocol)
                blocked = {k for k, ok in cells.items() if not ok}
                assert blocked == BLOCKED_WITH_POLICY, (family, protocol)
    finally:
        bridge_lab.cli("delete", "-f", "-", stdin=POLICY)
    assert all(matrix(bridge_lab, 4).values())


def _forget_pods(node_ns: str) -> None:
    """Flush the node's neighbours on cni0 and the bridge's learned (non-permanent) FDB entries."""
    netns.ip(node_ns, "neigh", "flush", "dev", "cni0")
    for entry in json.loads(netns.run_bridge(node_ns, "-j", "fdb", "show", "br", "cni0") or "[]"):
        if entry.get("master") == "cni0" and "permanent" not in (entry.get("state") or ""):
            netns.run_bridge(node_ns, "fdb", "del", entry["mac"], "dev", entry["ifname"], "master")


def _pod_neighbours(node_ns: str) -> set[str]:
    return {n["dst"] for n in ip_json(node_ns, "neigh", "show", "dev", "cni0") if n.get("lladdr")}


def test_a_restarted_agent_that_lost_the_pods_macs_finds_them_again_by_probing(bridge_lab: Lab) -> None:
    node_ns = topology.LabNames(bridge_lab.name).node(1)
    bridge_lab.cli("apply", "-f", "-", stdin=POLICY)
    try:
        before = agent_status(bridge_lab, 1)["pod_ifindex"]
        pid = bridge_lab.status()["agents"]["node-1"]["pid"]
        os.kill(pid, signal.SIGSTOP)  # frozen while the node forgets: it cannot re-learn
        try:
            _forget_pods(node_ns)
            assert _pod_neighbours(node_ns) == set()
        finally:
            os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: bridge_lab.status()["agents"]["node-1"]["pid"] != pid, 10, "a new agent pid", interval=0.2
        )
        wait_for(
            lambda: bool(agent_status(bridge_lab, 1).get("ready")), 120, "the new agent ready", interval=0.2
        )
        wait_for(
            lambda: agent_status(bridge_lab, 1).get("pod_ifindex") == before,
            10,
            "every pod mapped to its bridge port again",
            interval=0.2,
        )
        # only the node's probes can have brought the idle pods back into its neighbour table
        pods = bridge_lab.status()["pods"]
        assert {pods["x/a"]["ips"][0], pods["x/b"]["ips"][0]} <= _pod_neighbours(node_ns)
        blocked = {k for k, ok in matrix(bridge_lab, 4).items() if not ok}
        assert blocked == BLOCKED_WITH_POLICY
    finally:
        bridge_lab.cli("delete", "-f", "-", stdin=POLICY)


def _answers(namespace: str, address: str, port: int) -> bool:
    """Whether a TCP SYN from `namespace` gets an answer (accepted or refused), not a timeout."""

    def connect() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            try:
                sock.connect((address, port))
            except ConnectionRefusedError:
                return True
            except OSError:
                return False
            return True

    return netns.run_in_netns(namespace, connect)


def test_a_bridge_port_no_pod_claims_is_failed_closed_until_it_goes(bridge_lab: Lab) -> None:
    names = topology.LabNames(bridge_lab.name)
    node_ns, stray = names.node(1), names.pod("zz", "stray")  # a lab namespace: `down` removes it too
    port = "vgstray0"
    netns.add(stray)
    try:
        netns.ip(node_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", stray)
        netns.ip_batch(node_ns, [f"link set {port} master cni0", f"link set {port} up"])
        netns.ip_batch(
            stray,
            ["addr add 10.244.1.250/24 dev eth0", "link set eth0 up", "route add default via 10.244.1.1"],
        )
        ifindex = int(ip_json(node_ns, "link", "show", "dev", port)[0]["ifindex"])

        def pending() -> bool:
            return ifindex in agent_status(bridge_lab, 1).get("pod_ifindex", {}).values()

        wait_for(pending, 30, "the unclaimed port pending", interval=0.2)
        keys = [p for p, i in agent_status(bridge_lab, 1)["pod_ifindex"].items() if i == ifindex]
        assert keys == [f"(unclaimed)/{ifindex}"]
        # IP to a pod is dropped, but ARP passes both ways: the stray resolved x/a, and the
        # bridge learned the stray's MAC on its port (what would let discovery claim it)
        target = bridge_lab.status()["pods"]["x/a"]["ips"][0]
        assert not _answers(stray, target, 80)
        resolved = [n for n in ip_json(stray, "neigh", "show", "dev", "eth0") if n["dst"] == target]
        assert resolved and resolved[0].get("lladdr")
        mac = ip_json(stray, "link", "show", "dev", "eth0")[0]["address"]
        learned = json.loads(netns.run_bridge(node_ns, "-j", "fdb", "show", "br", "cni0") or "[]")
        assert any(e["mac"] == mac and e["ifname"] == port for e in learned)
    finally:
        netns.delete(stray)
    wait_for(lambda: not pending(), 30, "the unclaimed port gone", interval=0.2)


BRIDGE_SCENARIOS = ["tcp-01", "tcp-35", "seed-aks-walkthrough"]  # plain, ipBlock with except, a walkthrough


@pytest.fixture(scope="module")
def bridge_runner() -> Iterator[Any]:
    from tests.conformance.runner import Runner

    runner = Runner(family=4, prefix=f"cb{os.getpid() % 1000}", cni="bridge")
    try:
        yield runner
    finally:
        runner.close()
        for suffix in ("d", "s"):  # the runner's own names; removed even after an interruption
            teardown(f"{runner.prefix}{os.getpid() % 10000}{suffix}")


@pytest.mark.parametrize("scenario_id", BRIDGE_SCENARIOS)
def test_conformance_scenarios_pass_on_a_bridge_lab(bridge_runner: Any, scenario_id: str) -> None:
    from tests.conformance.runner import load_scenarios, shared_conformance_dir

    scenarios = [
        s for s in load_scenarios(sorted(shared_conformance_dir().glob("*.yaml"))) if s["id"] == scenario_id
    ]
    assert len(scenarios) == 1, f"scenario {scenario_id} not found"
    outcome = bridge_runner.run_scenario(scenarios[0])
    assert outcome.passed, "\n".join(outcome.failures)
