"""Services, EndpointSlices and cluster DNS in a 2-node lab with agents (kube-proxy-like nftables
DNAT in the node namespaces, dnsmasq behind kube-system/kube-dns)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab]

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: development, labels: {purpose: development}}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: client}
spec: {ip: 198.51.100.7}
---
apiVersion: v1
kind: Pod
metadata: {name: backend1, namespace: development, labels: {app: webapp, role: backend}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: backend2, namespace: development, labels: {app: webapp, role: backend}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: development, labels: {app: webapp, role: frontend}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: development, labels: {app: webapp, role: remote}}
spec: {nodeName: node-2, containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: development}
spec:
  type: NodePort
  selector: {app: webapp, role: backend}
  ports: [{port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: development}
spec:
  selector: {app: none}
  ports: [{port: 80}]
"""
CLIENTS = ["development/frontend", "development/remote"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(MODEL, "--nodes", "2", "--dns") as made:
        yield made
    assert not list(Path("/etc/netns").glob(f"vg-{made.name}-*")), "resolv.conf files left behind"


def api_get(lab: Lab, path: str) -> dict:
    proc = subprocess.run(
        ["curl", "-s", "--unix-socket", f"/run/vethguard/labs/{lab.name}/api.sock", f"http://lab{path}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(proc.stdout)


def lab_exec(lab: Lab, pod: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab.name, pod, "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def slice_addresses(lab: Lab, service: str) -> list[str]:
    doc = api_get(
        lab,
        "/apis/discovery.k8s.io/v1/namespaces/development/endpointslices"
        f"?labelSelector=kubernetes.io/service-name%3D{service}",
    )
    return sorted(a for s in doc["items"] for e in s["endpoints"] for a in e["addresses"])


def pod_ip(lab: Lab, pod: str) -> str:
    return str(lab.status()["pods"][pod]["ips"][0])


def test_services_get_cluster_ips_from_the_service_range_and_node_ports(lab: Lab) -> None:
    svc = lab.status()["services"]["development/backend"]
    assert svc["clusterIP"].startswith("10.245.")
    assert 30000 <= svc["ports"][0]["nodePort"] <= 32767
    served = api_get(lab, "/api/v1/namespaces/development/services/backend")
    assert served["spec"]["clusterIP"] == svc["clusterIP"]
    assert lab.status()["services"]["kube-system/kube-dns"]["clusterIP"] == "10.245.0.10"


def test_endpoint_slices_list_the_selected_pods_with_the_named_target_port(lab: Lab) -> None:
    assert slice_addresses(lab, "backend") == sorted(
        [pod_ip(lab, "development/backend1"), pod_ip(lab, "development/backend2")]
    )
    doc = api_get(lab, "/apis/discovery.k8s.io/v1/namespaces/development/endpointslices")
    owned = [s for s in doc["items"] if s["metadata"]["labels"]["kubernetes.io/service-name"] == "backend"]
    ports = {p["port"] for s in owned for p in s["ports"]}
    assert ports == {80}


def test_the_cluster_ip_reaches_a_backend_from_both_nodes(lab: Lab) -> None:
    result = lab.probe(8080, "TCP", 4, "--from", *CLIENTS, "--to", "svc/development/backend")
    assert result == {(c, "svc/development/backend"): True for c in CLIENTS}
    # the Service port is not a pod port: without DNAT nothing would answer there
    direct = lab.probe(8080, "TCP", 4, "--from", *CLIENTS, "--to", "development/backend1")
    assert not any(direct.values())


def test_the_node_port_answers_on_every_node_address_for_pods_and_external_hosts(lab: Lab) -> None:
    status = lab.status()
    node_port = status["services"]["development/backend"]["ports"][0]["nodePort"]
    nodes = [n["ips"][0] for n in status["nodes"].values()]
    result = lab.probe(node_port, "TCP", 4, "--from", *CLIENTS, "ext/client", "--to", *nodes)
    assert result and all(result.values()), result


def test_a_service_without_endpoints_refuses_connections_at_once(lab: Lab) -> None:
    started = time.monotonic()
    result = lab.probe(
        80, "TCP", 4, "--from", "development/frontend", "--to", "svc/development/nobody", "--timeout", "5"
    )
    assert result == {("development/frontend", "svc/development/nobody"): False}
    assert time.monotonic() - started < 4.5, "a rejected connection should fail fast, not time out"


def test_endpoints_follow_pod_labels(lab: Lab) -> None:
    relabel = """
apiVersion: v1
kind: Pod
metadata: {name: backend2, namespace: development, labels: {app: webapp, role: retired}}
"""
    back = relabel.replace("retired", "backend")
    lab.cli("apply", "-f", "-", stdin=relabel)
    try:
        assert slice_addresses(lab, "backend") == [pod_ip(lab, "development/backend1")]
        for _ in range(8):  # every connection now lands on backend1, whichever node asks
            result = lab.probe(8080, "TCP", 4, "--from", *CLIENTS, "--to", "svc/development/backend")
            assert all(result.values())
    finally:
        lab.cli("apply", "-f", "-", stdin=back)
    assert len(slice_addresses(lab, "backend")) == 2


@pytest.mark.parametrize("name", ["backend", "backend.development", "backend.development.svc.cluster.local"])
def test_pods_resolve_service_names_through_the_dns_pod(lab: Lab, name: str) -> None:
    cluster_ip = lab.status()["services"]["development/backend"]["clusterIP"]
    for client in CLIENTS:
        out = lab_exec(lab, client, "getent", "hosts", name)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == cluster_ip


def test_unknown_cluster_names_do_not_resolve(lab: Lab) -> None:
    out = lab_exec(lab, "development/frontend", "getent", "hosts", "missing.development")
    assert out.returncode != 0


def test_wget_and_curl_reach_a_backend_by_service_name(lab: Lab) -> None:
    wget = lab_exec(
        lab, "development/remote", "wget", "-q", "-T", "5", "-O-", "http://backend.development:8080/"
    )
    assert wget.returncode == 0 and "vethguard lab responder" in wget.stdout, wget.stderr
    curl = lab_exec(lab, "development/frontend", "curl", "-s", "-m", "5", "http://backend:8080/")
    assert curl.returncode == 0 and "vethguard lab responder" in curl.stdout, curl.stderr


def test_ingress_is_judged_on_the_backend_behind_the_cluster_ip(lab: Lab) -> None:
    policy = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-frontend, namespace: development}
spec:
  podSelector: {matchLabels: {role: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}]}]
"""
    lab.cli("apply", "-f", "-", stdin=policy)
    try:
        for _ in range(4):  # whichever backend (node-1 or node-2) the DNAT picks
            result = lab.probe(8080, "TCP", 4, "--from", *CLIENTS, "--to", "svc/development/backend")
            assert result == {
                ("development/frontend", "svc/development/backend"): True,
                ("development/remote", "svc/development/backend"): False,
            }
    finally:
        lab.cli("delete", "-f", "-", stdin=policy)


def test_without_an_egress_rule_for_dns_names_do_not_resolve(lab: Lab) -> None:
    policy = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-egress-backend-only, namespace: development}
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {role: backend}}}]}]
"""
    lab.cli("apply", "-f", "-", stdin=policy)
    try:
        out = lab_exec(lab, "development/frontend", "getent", "hosts", "backend")
        assert out.returncode != 0
        other = lab_exec(lab, "development/remote", "getent", "hosts", "backend")
        assert other.returncode == 0
    finally:
        lab.cli("delete", "-f", "-", stdin=policy)


def test_an_egress_rule_allowing_dns_to_kube_system_lets_names_resolve(lab: Lab) -> None:
    policy = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-egress-dns, namespace: development}
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"""
    lab.cli("apply", "-f", "-", stdin=policy)
    try:
        out = lab_exec(lab, "development/frontend", "getent", "hosts", "backend")
        assert out.returncode == 0
    finally:
        lab.cli("delete", "-f", "-", stdin=policy)


def test_a_killed_daemon_comes_back_with_services_and_dns(lab: Lab) -> None:
    pid = int(Path(f"/run/vethguard/labs/{lab.name}/daemon.pid").read_text())
    os.kill(pid, 9)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    status = lab.status()  # the CLI starts the daemon again from the saved state
    assert status["services"]["development/backend"]["clusterIP"].startswith("10.245.")
    out = lab_exec(
        lab,
        "development/remote",
        "wget",
        "-q",
        "-T",
        "5",
        "-t",
        "2",
        "-O-",
        "http://backend.development:8080/",
    )
    assert out.returncode == 0 and "vethguard lab responder" in out.stdout, out.stderr
