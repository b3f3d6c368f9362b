"""Egress by domain name (issue 20) in a two-node lab with agents and cluster DNS: a
ClusterNetworkPolicy allows a namespace's pods DNS, one name, and denies everything else; the
names resolve through the lab's dnsmasq and the agents learn their addresses from the answers
they hold. The first connection right after an answer passes (no race), other names and
addresses stay denied."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controller.datapath import bpfsys, dns_codecs
from controller.lab.state import LabPaths
from tests.support.labs import Lab, lab_up
from tests.support.waiting import wait_for

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
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: bucket}
spec:
  ip: [BUCKET_IPS]
  ports: [{port: 443}]
  names: [eu.bucket.s3.example]
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: v6}
spec: {ip: "2001:db8::443", ports: [{port: 443}], names: [api.v6.example]}
""".replace("BUCKET_IPS", ", ".join(f"198.18.7.{i}" for i in range(1, 121)))

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
    to: [{domainNames: [api.stripe.example, "*.s3.example", api.v6.example]}]
  - name: the-rest
    action: Deny
    to: [{networks: [0.0.0.0/0, "::/0"]}]
"""

# In the pod: resolve NAME and connect to its first address on 443 at once (no pause between
# the answer and the SYN); prints the address and whether the connection was accepted.
RESOLVE_CONNECT = """
import json, socket, sys, time
name, family, pick = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
infos = socket.getaddrinfo(name, 443, socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
addresses = sorted({i[4][0] for i in infos}, key=lambda a: socket.inet_pton(infos[0][0], a))
address = addresses[pick]
t1 = time.perf_counter()
s = socket.socket(infos[0][0])
s.settimeout(2)
try:
    s.connect((address, 443))
    ok = True
except OSError:
    ok = False
after = (time.perf_counter() - t1) * 1000
print(json.dumps({"address": address, "addresses": len(addresses), "connected": ok, "after_ms": after}))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(MODEL, "--nodes", "2", "--dns") as made:
        made.cli("apply", "-f", "-", stdin=POLICY)
        yield made


def resolve_connect(lab: Lab, name: str, family: int = 4, pick: int = 0) -> dict:
    """Resolve `name` in the client pod and connect to its `pick`th address (in address order)."""
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab.name, "payments/client", "--",
         sys.executable, "-c", RESOLVE_CONNECT, name, str(family), str(pick)],
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


def test_a_wildcard_name_with_more_addresses_than_udp_holds_is_learned_whole_over_tcp(lab: Lab) -> None:
    forget_learned(lab)
    got = resolve_connect(lab, "eu.bucket.s3.example", pick=119)  # the resolver retried over TCP
    assert got["addresses"] == 120 and got["address"] == "198.18.7.120" and got["connected"], got
    assert len([a for _, a, _, _ in learned(lab) if a.startswith("198.18.7.")]) == 120


def test_ipv6_answers_are_learned(lab: Lab) -> None:
    forget_learned(lab)
    got = resolve_connect(lab, "api.v6.example", family=6)
    assert got["address"] == "2001:db8::443" and got["connected"], got


def test_what_the_pods_learned_survives_an_agent_restart(lab: Lab) -> None:
    forget_learned(lab)
    assert resolve_connect(lab, "api.stripe.example")["connected"]
    pid = lab.status()["agents"]["node-2"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: lab.status()["agents"]["node-2"].get("pid") not in (None, pid), timeout=30)
    wait_for(lambda: lab.status()["agents"]["node-2"].get("healthy"), timeout=60)
    assert ("203.0.113.5") in [a for _, a, _, _ in learned(lab)]
    assert lab.probe_tcp(443, ["payments/client"], ["ext/stripe"]) == {
        ("payments/client", "ext/stripe"): True
    }
