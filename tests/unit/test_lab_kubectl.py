"""The kubectl installed on this machine against the lab API server (on 127.0.0.1, no root): the
seeds' walkthroughs (`kubectl apply`, `get networkpolicy`, `describe networkpolicy`, `delete`)
work, as they do against a lab's kubeconfig; and the discovery and OpenAPI documents kubectl
reads, checked directly."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.lab.discovery import OPENAPI_ROOT, discovery
from controller.lab.kubelet_objects import node_object, pod_status
from controller.lab.store import RESOURCES, Store
from tests.support.lab_api import served_kubeconfig

# The tests run the kubectl found on the machine (these machines have v1.32); only where there
# is none are they skipped.
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: PORT, protocol: TCP}]
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    store = Store(window=50)
    store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    with served_kubeconfig(store, tmp_path) as path:
        yield path


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_kubectl
def test_kubectl_applies_gets_describes_changes_and_deletes_a_network_policy(kubeconfig: Path) -> None:
    out = kubectl(kubeconfig, "apply", "-f", "-", stdin=POLICY.replace("PORT", "80"))
    assert out.strip() == "networkpolicy.networking.k8s.io/only-b created"
    assert "only-b" in kubectl(kubeconfig, "get", "netpol", "-A")
    described = kubectl(kubeconfig, "describe", "networkpolicy", "-n", "x", "only-b")
    assert "PodSelector:     pod=a" in described and "To Port: 80/TCP" in described
    # a second apply is a strategic merge patch carrying kubectl's directives
    out = kubectl(kubeconfig, "apply", "-f", "-", stdin=POLICY.replace("PORT", "81"))
    assert out.strip() == "networkpolicy.networking.k8s.io/only-b configured"
    got = json.loads(kubectl(kubeconfig, "get", "networkpolicy", "-n", "x", "only-b", "-o", "json"))
    assert got["spec"]["ingress"][0]["ports"] == [{"port": 81, "protocol": "TCP"}]
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    # DELETE carries DeleteOptions on a keep-alive connection; the next request must still parse
    out = kubectl(kubeconfig, "delete", "-f", "-", stdin=POLICY.replace("PORT", "81"))
    assert out.strip() == 'networkpolicy.networking.k8s.io "only-b" deleted'
    assert kubectl(kubeconfig, "get", "netpol", "-n", "x", "-o", "name") == ""


@needs_kubectl
def test_kubectl_rejects_what_the_lab_api_server_would_not_admit(kubeconfig: Path) -> None:
    bad = POLICY.replace("PORT", "80").replace("[Ingress]", "[Bogus]")
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "Bogus" in done.stderr, done.stderr


def document(path: str) -> Any:
    doc = discovery(path)
    assert doc is not None, path
    return doc


@needs_kubectl
def test_kubectl_labels_a_pod_and_watches_policies_arrive(kubeconfig: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(pod))
    assert kubectl(kubeconfig, "label", "pod", "-n", "x", "a", "tier=web").strip() == "pod/a labeled"
    labels = json.loads(kubectl(kubeconfig, "get", "po", "-n", "x", "a", "-o", "json"))["metadata"]["labels"]
    assert labels == {"pod": "a", "tier": "web"}
    watcher = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "netpol", "-n", "x", "-w", "-o", "name"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # the watch is open (kubectl lists first, then watches)
        kubectl(kubeconfig, "apply", "-f", "-", stdin=POLICY.replace("PORT", "80"))
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "networkpolicy.networking.k8s.io/only-b"
    finally:
        watcher.kill()
        watcher.communicate()


def test_every_resource_has_an_openapi_patch_that_takes_field_validation() -> None:
    root = document(OPENAPI_ROOT)
    for r in RESOURCES.values():
        prefix = "api/v1" if not r.group else f"apis/{r.api_version}"
        url = root["paths"][prefix]["serverRelativeURL"]
        doc = document(url.split("?")[0])
        scope = "namespaces/{namespace}/" if r.namespaced else ""
        patch = doc["paths"][f"/{prefix}/{scope}{r.plural}/{{name}}"]["patch"]
        assert patch["x-kubernetes-group-version-kind"] == {
            "group": r.group,
            "version": r.version,
            "kind": r.kind,
        }
        assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][0].items()


def test_discovery_names_kubectl_s_short_names() -> None:
    core = {r["name"]: r for r in document("/api/v1")["resources"]}
    assert core["pods"]["shortNames"] == ["po"] and core["pods"]["categories"] == ["all"]
    net = {r["name"]: r for r in document("/apis/networking.k8s.io/v1")["resources"]}
    assert net["networkpolicies"]["shortNames"] == ["netpol"]


def test_an_unread_body_never_becomes_the_next_request_on_a_kept_connection(kubeconfig: Path) -> None:
    server = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = json.dumps({"propagationPolicy": "Background"})
        conn.request(
            "DELETE", "/api/v1/namespaces/x/pods/missing", body, {"Content-Type": "application/json"}
        )
        first = conn.getresponse()
        assert first.status == 404 and json.loads(first.read())["reason"] == "NotFound"
        conn.request("GET", "/api/v1/namespaces/x")
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["metadata"]["name"] == "x"
    finally:
        conn.close()


# --- server-side Tables: what `kubectl get` prints --------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Path]:
    """A store with a lab node, a running pod, a policy, a NodePort Service and a
    ClusterNetworkPolicy, served with a kubeconfig."""
    store = Store(window=50)
    for name in ("x", "y"):
        store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    store.create("nodes", node_object(1))
    containers = [{"name": "web", "ports": [{"containerPort": 80}]}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}
    pod["spec"] = {"nodeName": "node-1", "containers": containers}
    pod["status"] = pod_status(1, "10.244.1.5", "fd00:10:244:1::5", containers)
    store.create("pods", pod)
    store.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "b", "namespace": "y"},
            "spec": {"containers": []},
        },
    )
    store.create("networkpolicies", yaml_policy())
    store.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "x"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.20",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "nodePort": 30080}],
            },
        },
    )
    store.create(
        "clusternetworkpolicies",
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny-x"},
            "spec": {
                "tier": "Admin",
                "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            },
        },
    )
    with served_kubeconfig(store, tmp_path) as path:
        yield path


def yaml_policy() -> dict[str, Any]:
    return dict(yaml.safe_load(POLICY.replace("PORT", "80")))


def printed(kubeconfig: Path, *args: str) -> list[list[str]]:
    """kubectl get's lines, split into columns (no cell here holds a space)."""
    return [line.split() for line in kubectl(kubeconfig, "get", *args).splitlines()]


@needs_kubectl
def test_kubectl_get_pods_prints_ready_status_restarts_and_age_from_the_server_s_table(
    filled: Path,
) -> None:
    rows = printed(filled, "pods", "-A")
    assert rows[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1][:5] == ["x", "a", "1/1", "Running", "0"]
    assert rows[2][:4] == ["y", "b", "0/0", "0"]  # no phase: an empty STATUS, as kube-apiserver's
    wide = printed(filled, "pods", "-n", "x", "-o", "wide")
    assert wide[0] == [
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"
    ]  # fmt: skip
    assert wide[1][:4] == ["a", "1/1", "Running", "0"]
    assert wide[1][5:] == ["10.244.1.5", "node-1", "<none>", "<none>"]


@needs_kubectl
def test_kubectl_get_prints_the_columns_of_policies_nodes_services_and_cluster_policies(
    filled: Path,
) -> None:
    netpol = printed(filled, "netpol", "-A")
    assert netpol[0] == ["NAMESPACE", "NAME", "POD-SELECTOR", "AGE"]
    assert netpol[1][:3] == ["x", "only-b", "pod=a"]
    nodes = printed(filled, "nodes")
    assert nodes[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert nodes[1][:3] == ["node-1", "Ready", "<none>"] and nodes[1][4] == "v1.30.0-vethguard-lab"
    svc = printed(filled, "svc", "-A")
    assert svc[0] == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1][:6] == ["x", "web", "NodePort", "10.96.0.20", "<none>", "80:30080/TCP"]
    assert printed(filled, "svc", "-n", "x", "-o", "wide")[1][-1] == "app=web"
    cnp = printed(filled, "cnp")
    assert cnp[0] == ["NAME", "TIER", "PRIORITY", "AGE"]
    assert cnp[1][:3] == ["deny-x", "Admin", "10"]


@needs_kubectl
def test_kubectl_get_watch_prints_rows_of_objects_as_they_change(filled: Path) -> None:
    watcher = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(filled), "get", "pods", "-n", "x", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert watcher.stdout.readline().split()[:3] == ["a", "1/1", "Running"]
        assert kubectl(filled, "label", "pod", "-n", "x", "a", "tier=web").strip() == "pod/a labeled"
        assert watcher.stdout.readline().split()[:3] == ["a", "1/1", "Running"]
    finally:
        watcher.kill()
        watcher.communicate()
