"""ClusterNetworkPolicy end to end in a two-node lab with agents: the README walkthrough's
manifests (docs/examples/cluster-policy) applied step by step with real probes, explain naming
the deciding tier and rule with the kernel agreeing, a pod's egress to its own node's address
denied by a `nodes` rule while other ports stay open, and an established connection cut when a
policy change denies it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.labs import Lab, lab_up
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster-policy"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    model = (EXAMPLES / "model.yaml").read_text()
    with lab_up(model, "--nodes", "2") as lab:
        yield lab


def apply(lab: Lab, text: str) -> None:
    lab.cli("apply", "-f", "-", stdin=text)


def explain(lab: Lab, src: str, dst: str, port: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "explain",
            "--lab",
            lab.name,
            src,
            dst,
            "--port",
            str(port),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_the_readme_walkthrough_holds_step_by_step(lab: Lab) -> None:
    assert lab.probe_tcp(9090, ["shop/web", "dev/tool"], ["monitoring/metrics"]) == {
        ("shop/web", "monitoring/metrics"): True,
        ("dev/tool", "monitoring/metrics"): True,
    }
    apply(lab, (EXAMPLES / "admin.yaml").read_text())
    assert lab.probe_tcp(9090, ["shop/web", "dev/tool", "monitoring/prometheus"], ["monitoring/metrics"]) == {
        ("shop/web", "monitoring/metrics"): False,
        ("dev/tool", "monitoring/metrics"): False,
        ("monitoring/prometheus", "monitoring/metrics"): True,
    }
    # observe names the deciding tier and rule of a drop
    argv = [
        sys.executable,
        "-m",
        "controller.cli",
        "observe",
        "--lab",
        lab.name,
        "--pod",
        "monitoring/metrics",
    ]
    argv += ["--verdict", "denied", "-f", "--count", "1", "--timeout", "60", "-o", "json"]
    observer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def dropped_and_seen() -> bool:
        # (drops are sent until the observer, which may still be starting, has reported one)
        lab.probe_tcp(9090, ["dev/tool"], ["monitoring/metrics"])
        return observer.poll() is not None

    try:
        wait_for(dropped_and_seen, timeout=60, what="observe reporting a drop", interval=0.5)
        out, _ = observer.communicate(timeout=30)
    finally:
        if observer.poll() is None:
            observer.kill()
    event = json.loads(out.splitlines()[0])
    assert (event["reason"], event["tier"], event["policy"], event["rule_name"]) == (
        "DROP_ADMIN",
        "Admin",
        "protect-monitoring",
        "deny-everyone-else",
    )
    apply(lab, (EXAMPLES / "baseline.yaml").read_text())
    assert lab.probe_tcp(80, ["dev/tool", "shop/api"], ["shop/api", "shop/web"]) == {
        ("dev/tool", "shop/api"): False,
        ("dev/tool", "shop/web"): False,
        ("shop/api", "shop/api"): True,
        ("shop/api", "shop/web"): True,
    }
    apply(lab, (EXAMPLES / "shop-netpol.yaml").read_text())
    got = lab.probe_tcp(80, ["dev/tool", "shop/api"], ["shop/api", "shop/web"])
    assert (
        got[("dev/tool", "shop/web")] and not got[("dev/tool", "shop/api")] and got[("shop/api", "shop/web")]
    )
    # The NetworkPolicy isolates shop/web: port 9090 is closed to the scraper now, Baseline or not.
    assert lab.probe_tcp(9090, ["monitoring/prometheus"], ["shop/web"]) == {
        ("monitoring/prometheus", "shop/web"): False
    }

    doc = explain(lab, "dev/tool", "shop/api", 80)
    ing = doc["ingress"]
    assert doc["allowed"] is False
    assert (ing["reason"], ing["tier"], ing["policy"], ing["rule_name"]) == (
        "DROP_BASELINE",
        "Baseline",
        "default-deny-from-dev",
        "deny-from-dev",
    )
    assert ing["kernel"]["reason"] == "DROP_BASELINE" and not ing["mismatch"]
    doc = explain(lab, "shop/web", "monitoring/metrics", 9090)
    assert (doc["ingress"]["reason"], doc["ingress"]["rule_name"]) == ("DROP_ADMIN", "deny-everyone-else")


NODE_GUARD = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: keep-dev-off-the-node}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: dev}}}
  egress:
  - name: no-port-10250
    action: ${action}
    to: [{nodes: {matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}}]
    protocols: [{tcp: {destinationPort: {number: 10250}}}]
"""


def _node_address(lab: Lab, pod: str) -> str:
    status = lab.status()
    node = status["pods"][pod]["node"]
    return str(status["nodes"][node]["ips"][0])


def test_a_nodes_rule_keeps_a_pod_off_its_own_nodes_port_and_a_change_cuts_the_open_connection(
    lab: Lab,
) -> None:
    host = _node_address(lab, "dev/tool")
    # A listener on the node's address (the node's namespace), standing in for the kubelet.
    status = lab.status()
    node_ns = status["nodes"][status["pods"]["dev/tool"]["node"]]["netns"]
    pod_ns = status["pods"]["dev/tool"]["netns"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c", _SERVER, host, "10250", "10251"],
        stdout=subprocess.PIPE,
        text=True,
    )
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        apply(lab, NODE_GUARD.replace("${action}", "Accept"))
        # A connection opened while allowed, kept open, echoing a line every 0.1 s.
        client = subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, sys.executable, "-c", _CLIENT, host, "10250"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "ok"
        apply(lab, NODE_GUARD.replace("${action}", "Deny"))
        # the open connection stops getting answers, and a new one is refused silently
        wait_for(lambda: client is not None and client.poll() is not None, timeout=15)
        assert client.stdout.read().strip().endswith("stalled")
        assert not _connects(pod_ns, host, 10250)
        assert _connects(pod_ns, host, 10251)  # the node's other ports: not this rule's
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        lab.cli("delete", "-f", "-", stdin=NODE_GUARD.replace("${action}", "Deny"), check=False)


def _connects(netns: str, host: str, port: int) -> bool:
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1.5)\n"
        "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('yes')\n"
        "except OSError: print('no')\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code, host, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip() == "yes"


_SERVER = """
import socket, sys, threading
def serve(c):
    while True:
        data = c.recv(100)
        if not data:
            return
        c.sendall(data)
def accept(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
for port in sys.argv[2:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(port))); s.listen(8)
    threading.Thread(target=accept, args=(s,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""

_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"x"); s.recv(1); print("ok", flush=True)
while True:
    try:
        s.sendall(b"x"); s.recv(1)
    except OSError:
        print("stalled", flush=True); break
    time.sleep(0.1)
"""
