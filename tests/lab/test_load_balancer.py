"""A LoadBalancer Service in a 2-node lab with agents: its nodePort on both nodes' addresses and
its load-balancer address (routed by the fabric to node-1, DNATed and masqueraded there as
kube-proxy does with externalTrafficPolicy Cluster) reach a backend from external hosts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.lab.client import connect
from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab]

EXTERNAL = (
    "{apiVersion: lab.vethguard.dev/v1alpha1, kind: ExternalHost, metadata: {name: NAME}, spec: {ip: IP}}"
)
WEB = (
    "{apiVersion: v1, kind: Pod, metadata: {name: NAME, namespace: shop, labels: {app: web}},"
    " spec: {nodeName: NODE, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}}"
)
MODEL = "\n---\n".join(
    [
        "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}",
        EXTERNAL.replace("NAME", "client").replace("IP", "198.51.100.7"),
        EXTERNAL.replace("NAME", "other").replace("IP", "203.0.113.9"),
        WEB.replace("NAME", "web1").replace("NODE", "node-1"),
        WEB.replace("NAME", "web2").replace("NODE", "node-2"),
        "{apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop},"
        " spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 8080, targetPort: http}]}}",
    ]
)
EXTERNALS = ["ext/client", "ext/other"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(MODEL, "--nodes", "2") as made:
        yield made


def entrances(lab: Lab) -> dict[tuple[int, str], str]:
    """(port, destination) -> what it is: the nodePort on each node, the LB address on the port."""
    status = lab.status()
    svc = status["services"]["shop/web"]
    node_port = svc["ports"][0]["nodePort"]
    found = {(node_port, node["ips"][0]): f"{name}:nodePort" for name, node in status["nodes"].items()}
    found[(8080, "lb/shop/web")] = "load balancer"
    return found


def reached(lab: Lab, sources: list[str]) -> dict[tuple[str, str], bool]:
    """(source, entrance) -> connected, over a few rounds (either backend may be picked)."""
    result: dict[tuple[str, str], bool] = {}
    for (port, destination), what in entrances(lab).items():
        for _ in range(3):
            for (source, _dest), ok in lab.probe(
                port, "TCP", 4, "--from", *sources, "--to", destination
            ).items():
                result[(source, what)] = result.get((source, what), ok) and ok
    return result


def test_a_load_balancer_service_gets_an_address_of_the_lab_pool_in_its_status(lab: Lab) -> None:
    svc = lab.status()["services"]["shop/web"]
    assert svc["type"] == "LoadBalancer" and svc["loadBalancerIP"].startswith("10.246.0.")
    assert 30000 <= svc["ports"][0]["nodePort"] <= 32767
    code, served = connect(lab.name).request("GET", "/api/v1/namespaces/shop/services/web")
    assert code == 200 and served["status"]["loadBalancer"]["ingress"][0]["ip"] == svc["loadBalancerIP"]


def test_external_hosts_reach_the_node_ports_and_the_load_balancer_address(lab: Lab) -> None:
    result = reached(lab, EXTERNALS)
    assert len(result) == 6 and all(result.values()), result


POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-outside, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: CIDR}}]}]
"""


def test_masquerade_hides_the_client_address_from_an_isolated_backend_but_not_that_it_is_outside(
    lab: Lab,
) -> None:
    only_client = POLICY.replace("CIDR", "198.51.100.7/32")
    lab.cli("apply", "-f", "-", stdin=only_client)
    try:
        direct = lab.probe(80, "TCP", 4, "--from", *EXTERNALS, "--to", "shop/web1", "shop/web2")
        behind = reached(lab, EXTERNALS)
    finally:
        lab.cli("delete", "-f", "-", stdin=only_client)
    # control: straight to the pods the policy sees each host's own address
    assert direct == {(s, d): s == "ext/client" for s in EXTERNALS for d in ("shop/web1", "shop/web2")}
    # kube-proxy (externalTrafficPolicy Cluster) masquerades NodePort and LB traffic to a node's
    # address: the backend judges an outside sender (or the node-1 relay) and no client /32 matches
    assert not any(behind.values()), behind
    anyone = POLICY.replace("CIDR", "0.0.0.0/0")
    lab.cli("apply", "-f", "-", stdin=anyone)
    try:
        behind = reached(lab, EXTERNALS)
    finally:
        lab.cli("delete", "-f", "-", stdin=anyone)
    assert len(behind) == 6 and all(behind.values()), behind
