"""Egress by domain name (issue 20) in a two-node lab with agents and cluster DNS: a
ClusterNetworkPolicy allows a namespace's pods DNS, one name, and denies everything else; the
names resolve through the lab's dnsmasq and the agents learn their addresses from the answers
they hold. The first connection right after an answer passes (no race), other names and
addresses stay denied."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controller.datapath import bpfsys, dns_codecs
from controller.lab.state import LabPaths
from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: payments}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: payments}
spec: {nodeName: node-2, containers: [{name: c}]}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: stripe}
spec: {ip: 203.0.113.5, ports: [{port: 443}], names: [api.stripe.example], ttl: 5}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: evil}
spec: {ip: 203.0.113.9, ports: [{port: 443}], names: [evil.example]}
"""

POLICY = """
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: payments-egress}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: payments}}}
  egress:
  - name: dns
    action: Accept
    to:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
        podSelector: {matchLabels: {k8s-app: kube-dns}}
    protocols: [{udp: {destinationPort: {number: 53}}}, {tcp: {destinationPort: {number: 53}}}]
  - name: stripe
    action: Accept
    to: [{domainNames: [api.stripe.example]}]
  - name: the-rest
    action: Deny
    to: [{networks: [0.0.0.0/0, "::/0"]}]
"""

# In the pod: resolve NAME and connect to its first address on 443 at once (no pause between
# the answer and the SYN); prints the address and whether the connection was accepted.
RESOLVE_CONNECT = """
import json, socket, sys, time
name = sys.argv[1]
t0 = time.perf_counter()
address = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
t1 = time.perf_counter()
s = socket.socket()
s.settimeout(2)
try:
    s.connect((address, 443))
    ok = True
except OSError:
    ok = False
print(json.dumps({"address": address, "connected": ok, "after_answer_ms": (time.perf_counter() - t1) * 1000}))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(MODEL, "--nodes", "2", "--dns") as made:
        made.cli("apply", "-f", "-", stdin=POLICY)
        yield made


def resolve_connect(lab: Lab, name: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab.name, "payments/client", "--",
         sys.executable, "-c", RESOLVE_CONNECT, name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict = json.loads(out.stdout)
    return result


def forget_learned(lab: Lab, node: str = "node-2") -> int:
    """Delete what the node's pods learned from DNS (as if every TTL had run out long ago)."""
    m = bpfsys.BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / node / "vg_dns_learned"))
    try:
        keys = m.key_list()
        for k in keys:
            m.delete(k)
        return len(keys)
    finally:
        m.close()


def learned(lab: Lab, node: str = "node-2") -> list[tuple[int, str, int, int]]:
    m = bpfsys.BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / node / "vg_dns_learned"))
    try:
        return [dns_codecs.decode_learned(k, v) for k, v in m.items().items()]
    finally:
        m.close()


def test_nothing_is_reachable_by_address_before_its_name_was_resolved(lab: Lab) -> None:
    forget_learned(lab)
    assert lab.probe_tcp(443, ["payments/client"], ["ext/stripe", "ext/evil"]) == {
        ("payments/client", "ext/stripe"): False,
        ("payments/client", "ext/evil"): False,
    }


def test_the_first_connection_right_after_the_answer_passes_every_time(lab: Lab) -> None:
    for _ in range(20):
        forget_learned(lab)
        got = resolve_connect(lab, "api.stripe.example")
        assert got["address"] == "203.0.113.5" and got["connected"], got
    assert [(a, i) for _, a, i, _ in learned(lab)] == [("203.0.113.5", learned(lab)[0][2])]


def test_a_name_no_rule_allows_resolves_but_its_address_stays_denied(lab: Lab) -> None:
    got = resolve_connect(lab, "evil.example")
    assert got["address"] == "203.0.113.9" and not got["connected"]
    assert all(address != "203.0.113.9" for _, address, _, _ in learned(lab))
