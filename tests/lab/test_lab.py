"""The lab contract (DESIGN.md "Lab contract") through the real `vethguard lab` CLI, agents off."""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.lab import netns
from controller.lab.client import LabClient
from controller.lab.state import LabPaths
from controller.lab.topology import LabNames
from tests.support.labs import PODS, Lab, run_cli

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
]

POD_NAMES = [f"{ns}/{name}" for ns, name in PODS]


def test_status_lists_nodes_pods_with_both_families_externals_and_no_agents(lab: Lab) -> None:
    status = lab.status()
    assert sorted(status["nodes"]) == ["node-1", "node-2"]
    assert sorted(status["pods"]) == sorted(POD_NAMES)
    for pod in status["pods"].values():
        v4, v6 = (ipaddress.ip_address(ip) for ip in pod["ips"])
        index = int(pod["node"].removeprefix("node-"))
        assert v4 in ipaddress.ip_network(f"10.244.{index}.0/24")
        assert v6 in ipaddress.ip_network(f"fd00:10:244:{index:x}::/64")
    assert {p["node"] for p in status["pods"].values()} == {"node-1", "node-2"}
    assert status["externals"]["web"]["ips"] == ["203.0.113.5", "2001:db8::5"]
    assert status["agents"] == {}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_every_pod_reaches_every_pod_on_a_declared_port(lab: Lab, protocol: str, family: int) -> None:
    results = lab.probe(80, protocol, family, "--to", *POD_NAMES)
    assert len(results) == len(POD_NAMES) ** 2
    assert all(results.values()), results


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_pods_reach_the_external_host_and_it_reaches_them(lab: Lab, protocol: str) -> None:
    outbound = lab.probe(80, protocol, 4, "--to", "ext/web")
    assert outbound == {(pod, "ext/web"): True for pod in POD_NAMES}
    inbound = lab.probe(80, protocol, 6, "--from", "ext/web", "--to", *POD_NAMES)
    assert inbound == {("ext/web", pod): True for pod in POD_NAMES}


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_a_probe_to_an_undeclared_port_is_not_connected(lab: Lab, protocol: str) -> None:
    results = lab.probe(81, protocol, 4, "--from", "x/a", "--timeout", "0.5")
    assert results and not any(results.values())


def test_the_default_probe_covers_all_pods_to_all_pods_and_external_hosts(lab: Lab) -> None:
    results = lab.probe(80, "TCP")
    assert set(results) == {(s, d) for s in POD_NAMES for d in [*POD_NAMES, "ext/web"]}


def test_the_text_probe_output_is_a_matrix(lab: Lab) -> None:
    out = lab.cli("probe", "--port", "80", "--protocol", "tcp", "--from", "x/a", "--to", "x/b", "y/a").stdout
    header, row = out.strip().splitlines()
    assert header.split() == ["TCP/80", "IPv4", "x/b", "y/a"]
    assert row.split() == ["x/a", ".", "."]


def test_exec_runs_a_command_in_the_pod_and_passes_its_exit_code_through(lab: Lab) -> None:
    ip = lab.status()["pods"]["x/a"]["ips"][0]
    assert f"{ip}/32" in lab.cli("exec", "x/a", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert lab.cli("exec", "y/a", "--", "sh", "-c", "exit 7", check=False).returncode == 7


def test_pods_reach_the_api_server_in_the_fabric(lab: Lab) -> None:
    out = lab.cli("exec", "y/a", "--", "python3", "-c", CURL_VERSION).stdout
    assert "vethguard-lab" in out


CURL_VERSION = (
    "import urllib.request;print(urllib.request.urlopen('http://10.244.0.1:6443/version').read().decode())"
)


def test_apply_of_a_relabelled_pod_updates_the_api(lab: Lab) -> None:
    manifest = POD_MANIFEST.format(labels="{pod: b, role: new}")
    out = lab.cli("apply", "-f", "-", stdin=manifest).stdout
    assert "pod/x/b configured" in out
    code, pod = LabClient(LabPaths(lab.name)).request("GET", "/api/v1/namespaces/x/pods/b")
    assert code == 200
    assert pod["metadata"]["labels"] == {"pod": "b", "role": "new"}
    assert pod["metadata"]["generation"] == 1  # labels are metadata, not spec
    assert lab.probe(80, "TCP", 4, "--from", "x/a", "--to", "x/b") == {("x/a", "x/b"): True}


POD_MANIFEST = """
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: x, labels: {labels}}}
spec:
  containers:
  - name: serve
    ports:
    - {{containerPort: 80, protocol: TCP, name: serve-80-tcp}}
    - {{containerPort: 80, protocol: UDP, name: serve-80-udp}}
    - {{containerPort: 80, protocol: SCTP, name: serve-80-sctp}}
"""


def test_a_metadata_only_pod_manifest_changes_labels_and_keeps_the_ports(lab: Lab) -> None:
    lab.cli(
        "apply",
        "-f",
        "-",
        stdin="apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y, labels: {k: v}}\n",
    )
    code, pod = LabClient(LabPaths(lab.name)).request("GET", "/api/v1/namespaces/y/pods/a")
    assert code == 200
    assert pod["metadata"]["labels"] == {"k": "v"}
    assert len(pod["spec"]["containers"][0]["ports"]) == 3
    assert lab.status()["pods"]["y/a"]["ports"]


def test_changing_the_ports_of_an_existing_pod_is_a_clear_error(lab: Lab) -> None:
    manifest = POD_MANIFEST.format(labels="{pod: b}").replace(
        "containerPort: 80, protocol: TCP", "containerPort: 90"
    )
    result = lab.cli("apply", "-f", "-", stdin=manifest, check=False)
    assert result.returncode != 0
    assert "ports are fixed once created" in result.stderr


def test_a_policy_is_stored_with_api_server_defaults(lab: Lab) -> None:
    policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: y}\n"
    policy += "spec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n"
    lab.cli("apply", "-f", "-", stdin=policy)
    try:
        code, stored = LabClient(LabPaths(lab.name)).request(
            "GET", "/apis/networking.k8s.io/v1/namespaces/y/networkpolicies/p"
        )
        assert code == 200
        assert stored["spec"]["policyTypes"] == ["Ingress"]
        assert stored["spec"]["ingress"][0]["ports"][0]["protocol"] == "TCP"
    finally:
        lab.cli("delete", "-f", "-", stdin=policy)


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("kind: [\n", "invalid YAML"),
        ("apiVersion: v1\nkind: ReplicaSet\nmetadata: {name: s}\n", "unknown kind 'ReplicaSet'"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "spec.ports: at least one port"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ghost}\n",
            'namespaces "ghost" not found',
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {nodeName: node-7}\n",
            "not a lab node",
        ),
    ],
)
def test_bad_manifests_fail_with_a_clear_message(lab: Lab, stdin: str, message: str) -> None:
    result = lab.cli("apply", "-f", "-", stdin=stdin, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_commands_on_a_lab_that_is_not_running_fail_clearly() -> None:
    result = run_cli("status", "--name", "nosuchlab", check=False)
    assert result.returncode != 0
    assert "is not running" in result.stderr


def test_up_of_an_existing_lab_fails_clearly(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n")
    result = run_cli("up", "--name", lab.name, "-f", str(path), "--no-agents", check=False)
    assert result.returncode != 0
    assert "already exists" in result.stderr


def test_exec_of_a_program_that_is_not_installed_says_so_instead_of_an_nsenter_error(lab: Lab) -> None:
    result = lab.cli("exec", "x/a", "--", "vethguard-no-such-program", "-v", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: lab exec: vethguard-no-such-program is not installed "
        "(no package vethguard knows of provides it)"
    )
    control = lab.cli("exec", "x/a", "--", "ip", "-brief", "addr", "show", "eth0")
    assert "eth0" in control.stdout


def test_delete_removes_the_pod_and_its_namespace(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory()
    pod_netns = LabNames(lab.name).pod("y", "a")
    assert netns.exists(pod_netns)
    out = lab.cli(
        "delete", "-f", "-", stdin="apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y}\n"
    ).stdout
    assert "pod/y/a deleted" in out
    assert "y/a" not in lab.status()["pods"]
    assert not netns.exists(pod_netns)
    missing = lab.cli(
        "delete",
        "-f",
        "-",
        stdin="apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: y}\n",
        check=False,
    )
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_a_new_pod_applied_later_is_reachable_at_once(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory()
    lab.cli("apply", "-f", "-", stdin=POD_MANIFEST.format(labels="{pod: b}").replace("name: b,", "name: c,"))
    assert lab.probe(80, "UDP", 6, "--from", "y/a", "--to", "x/c") == {("y/a", "x/c"): True}


def test_a_restarted_daemon_serves_the_same_lab(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory()
    before = lab.status()
    pid = int(LabPaths(lab.name).daemon_pid.read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    after = lab.status()  # the CLI resumes the daemon from the saved state
    assert after["pods"] == before["pods"]
    assert after["resourceVersion"] == before["resourceVersion"]
    assert lab.probe(80, "SCTP", 4, "--from", "x/a", "--to", "y/a", "ext/web") == {
        ("x/a", "y/a"): True,
        ("x/a", "ext/web"): True,
    }


def gone(pid: int, wait: float = 3.0) -> bool:
    deadline = time.monotonic() + wait
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def test_down_leaves_no_namespace_pinned_directory_state_or_process(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory()
    paths = LabPaths(lab.name)
    daemon = int(paths.daemon_pid.read_text())
    paths.pin_root.mkdir(parents=True, exist_ok=True)
    sleeper = lab.cli("exec", "x/a", "--", "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!").stdout.strip()
    lab.cli("down")
    assert LabNames(lab.name).owned() == []
    assert not paths.root.exists()
    assert not paths.pin_root.exists()
    assert gone(daemon)
    assert gone(int(sleeper))
    assert "nothing to remove" in lab.cli("down").stdout
