"""Calico's policies and host endpoints end to end in a two-node lab (issue 16), with real probes:
the guide's NodePort policy (NodePorts closed from outside on the nodes' public host endpoints,
before kube-proxy's DNAT, while the same Service's LoadBalancer address stays reachable and
pod-to-pod and pod-to-Service traffic is unchanged), a NodePort open from one CIDR only, a Deny
ordered before an Allow, a ClusterNetworkPolicy Pass handing the decision to a Kubernetes
NetworkPolicy inside Calico's tier, an ICMP type rule, and a Log rule seen in `observe`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "calico"
NODE_1, NODE_2 = "10.244.1.1", "10.244.2.1"  # the nodes' addresses (controller/lab/topology.py)
WEB = "shop/web"

# An ICMP echo request from inside a pod (a raw socket; the lab's pods have no ping binary):
# exit 0 when the reply comes within a second.
PING = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1.0)
body = struct.pack('!BBHHH', 8, 0, 0, 4242, 1) + b'vethguard!'  # an even length
csum = sum(struct.unpack('!%dH' % (len(body) // 2), body))
csum = (csum >> 16) + (csum & 0xffff); csum = ~(csum + (csum >> 16)) & 0xffff
s.sendto(body[:2] + struct.pack('!H', csum) + body[4:], (sys.argv[1], 0))
try:
    while True:
        data, _ = s.recvfrom(2048)
        if data[20] == 0 and data[24:26] == struct.pack('!H', 4242):
            sys.exit(0)
except socket.timeout:
    sys.exit(1)
"""


# A TCP connection from a namespace (a node's, for its own traffic): exit 0 when it connects.
CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up((EXAMPLES / "model.yaml").read_text(), "--nodes", "2") as lab:
        yield lab


def apply(lab: Lab, *texts: str) -> None:
    lab.cli("apply", "-f", "-", stdin="\n---\n".join(texts))


def delete(lab: Lab, *texts: str) -> None:
    lab.cli("delete", "-f", "-", stdin="\n---\n".join(texts))


def example(name: str) -> str:
    return (EXAMPLES / name).read_text()


def web_ip(lab: Lab) -> str:
    return str(lab.status()["pods"][WEB]["ips"][0])


def ping(lab: Lab, src: str, dst: str) -> bool:
    out = lab.cli("exec", src, "--", sys.executable, "-c", PING, dst, check=False)
    return out.returncode == 0


def connects(lab: Lab, src: str, ip: str, port: int) -> bool:
    return (
        lab.cli("exec", src, "--", sys.executable, "-c", CONNECT, ip, str(port), check=False).returncode == 0
    )


def gnp(name: str, order: int, selector: str, ingress: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"order": order, "selector": selector, "types": ["Ingress"], "ingress": ingress},
        }
    )


def test_the_guides_nodeport_policy_closes_nodeports_and_keeps_the_load_balancer_and_pods(lab: Lab) -> None:
    entrances = [f"{NODE_1}", f"{NODE_2}"]
    before = lab.probe_tcp(30080, ["ext/outside"], entrances)
    assert all(before.values()), before
    apply(lab, example("host-endpoints.yaml"), example("deny-nodeports.yaml"))
    try:
        assert lab.probe_tcp(30080, ["ext/outside", "ext/office"], entrances) == {
            (src, dst): False for src in ("ext/outside", "ext/office") for dst in entrances
        }
        assert lab.probe_tcp(80, ["ext/outside"], ["lb/shop/web"]) == {("ext/outside", "lb/shop/web"): True}
        assert lab.probe_tcp(80, ["shop/client"], [WEB, "svc/shop/web"]) == {
            ("shop/client", WEB): True,
            ("shop/client", "svc/shop/web"): True,
        }
        # one of the IPs from the guide's CIDR allowed, before deny-nodeports in the order
        apply(lab, example("allow-office.yaml"))
        assert lab.probe_tcp(30080, ["ext/outside", "ext/office"], [NODE_1]) == {
            ("ext/outside", NODE_1): False,
            ("ext/office", NODE_1): True,
        }
    finally:
        delete(lab, example("allow-office.yaml"), example("deny-nodeports.yaml"))
        delete(lab, *example("host-endpoints.yaml").split("---")[2:])
    assert all(lab.probe_tcp(30080, ["ext/outside"], entrances).values())


def test_a_deny_ordered_before_an_allow_decides(lab: Lab) -> None:
    deny = gnp(
        "deny-other", 10, "app == 'web'", [{"action": "Deny", "source": {"selector": "app == 'other'"}}]
    )
    allow = gnp("allow-all", 20, "app == 'web'", [{"action": "Allow"}])
    apply(lab, deny, allow)
    try:
        assert lab.probe_tcp(80, ["shop/client", "shop/other"], [WEB]) == {
            ("shop/client", WEB): True,
            ("shop/other", WEB): False,
        }
    finally:
        delete(lab, deny, allow)


def test_an_admin_pass_hands_the_decision_to_a_kubernetes_networkpolicy_in_calicos_tier(lab: Lab) -> None:
    admin = json.dumps(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "hand-to-teams"},
            "spec": {
                "tier": "Admin",
                "priority": 10,
                "subject": {"namespaces": {}},
                "ingress": [
                    {"action": "Pass", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]},
                ],
            },
        }
    )
    netpol = json.dumps(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": "shop", "name": "web-from-client"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
            },
        }
    )
    default_deny = gnp("web-default-deny", 2000, "app == 'web'", [{"action": "Deny"}])
    apply(lab, admin, netpol, default_deny)
    try:
        assert lab.probe_tcp(80, ["shop/client", "shop/other"], [WEB]) == {
            ("shop/client", WEB): True,  # Admin Pass -> Calico's tier: the NetworkPolicy at order 1000
            ("shop/other", WEB): False,  # nothing there until the Deny at order 2000
        }
    finally:
        delete(lab, admin, netpol, default_deny)


def test_an_icmp_type_rule_allows_echo_requests_only_of_that_type(lab: Lab) -> None:
    target = web_ip(lab)
    assert ping(lab, "shop/client", target)
    only_timestamps = gnp(
        "icmp-13", 5, "app == 'web'", [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 13}}]
    )
    apply(lab, only_timestamps)
    try:
        assert not ping(lab, "shop/client", target)
        echo = gnp(
            "icmp-8", 4, "app == 'web'", [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}]
        )
        apply(lab, echo)
        try:
            assert ping(lab, "shop/client", target)
        finally:
            delete(lab, echo)
    finally:
        delete(lab, only_timestamps)


def test_a_log_rule_is_seen_in_observe_and_the_next_rule_decides(lab: Lab) -> None:
    logged = gnp(
        "log-then-allow",
        1,
        "app == 'web'",
        [{"action": "Log", "source": {"selector": "app == 'client'"}}, {"action": "Allow"}],
    )
    apply(lab, logged)
    try:
        observe = subprocess.Popen(
            [
                *(sys.executable, "-m", "controller.cli", "observe", "--lab", lab.name),
                *("--pod", WEB, "-f", "--timeout", "20", "-o", "json"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)  # observe is reading the ring buffers
        assert lab.probe_tcp(80, ["shop/client"], [WEB]) == {("shop/client", WEB): True}
        records: list[dict[str, Any]] = []
        assert observe.stdout is not None
        for line in observe.stdout:
            records.append(json.loads(line))
            if any(r["verdict"] == "log" for r in records) and any(
                r["verdict"] == "allowed" and r["policy"] == "log-then-allow" for r in records
            ):
                break
        observe.kill()
        observe.wait()
        log = [r for r in records if r["verdict"] == "log"]
        assert log, records
        assert log[0]["policy"] == "log-then-allow" and log[0]["from"] == "shop/client", log[0]
        assert any(r["verdict"] == "allowed" and r["policy"] == "log-then-allow" for r in records), records
    finally:
        delete(lab, logged)


def test_the_nodes_own_traffic_is_judged_by_its_host_endpoint_and_its_replies_pass(lab: Lab) -> None:
    outside = "203.0.113.5"
    assert connects(lab, "node/node-1", outside, 80)
    egress = json.dumps(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "node-egress-web"},
            "spec": {
                "order": 100,
                "selector": "ibm.role == 'worker_public'",
                "types": ["Egress"],
                "egress": [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "destination": {"nets": ["203.0.113.0/24"], "ports": [80]},
                    }
                ],
            },
        }
    )
    apply(lab, example("host-endpoints.yaml"))
    try:
        assert not connects(lab, "node/node-1", outside, 80)  # Calico's default deny for the node
        apply(lab, egress)  # the agent's own API connection (a failsafe port) kept working
        assert connects(lab, "node/node-1", outside, 80)  # and the reply passes the ingress side
        assert lab.probe_tcp(80, ["shop/client"], [WEB]) == {("shop/client", WEB): True}
    finally:
        delete(lab, egress)
        delete(lab, *example("host-endpoints.yaml").split("---")[2:])
    assert connects(lab, "node/node-1", outside, 80)
