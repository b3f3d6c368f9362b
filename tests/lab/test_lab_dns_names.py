"""ExternalHosts' DNS names served by the lab's cluster DNS (`lab up --dns`): the real dnsmasq,
queried from a pod over UDP and TCP, as the DESIGN's lab contract and issue 20 ask for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab import kubeproxy
from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab]

MANY = [f"198.18.7.{i}" for i in range(1, 121)]  # 120 addresses: more than a UDP answer holds
MODEL = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: app}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: app}}
spec: {{nodeName: node-1, containers: [{{name: c}}]}}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {{name: stripe-a}}
spec:
  ip: [203.0.113.5, "2001:db8::5"]
  ports: [{{port: 443}}]
  names: [api.stripe.example, www.stripe.example]
  ttl: 7
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {{name: stripe-b}}
spec: {{ip: 203.0.113.6, ports: [{{port: 443}}], names: [api.stripe.example]}}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {{name: bucket}}
spec: {{ip: {json.dumps(MANY)}, names: [big.s3.example]}}
"""

# Runs inside the pod: one query to the cluster DNS over UDP or TCP, the answer as JSON.
QUERY = """
import json, socket, sys
from controller.core import dnswire
name, qtype, transport, server = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
query = dnswire.encode_query(4242, name, qtype)
if transport == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(query, (server, 53))
    data = s.recv(65535)
else:
    s = socket.create_connection((server, 53), timeout=5)
    s.sendall(dnswire.tcp_frame(query))
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
        chunk = s.recv(65535)
        if not chunk:
            break
        buf += chunk
    data = buf[2:]
msg = dnswire.decode(data)
print(json.dumps({"id": msg.id, "rcode": msg.rcode, "tc": bool(msg.flags & dnswire.FLAG_TC),
                  "answers": [[r.name, r.rtype, r.ttl, r.data] for r in msg.answers]}))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(MODEL, "--dns", "--no-agents") as made:
        yield made


def ask(lab: Lab, name: str, qtype: int = 1, transport: str = "udp") -> dict:
    proc = subprocess.run(
        [
            sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab.name, "app/client", "--",
            sys.executable, "-c", QUERY, name, str(qtype), transport, kubeproxy.DNS_CLUSTER_IP,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def addresses(answer: dict) -> set[str]:
    return {a[3] for a in answer["answers"] if a[1] in (1, 28)}


def test_a_name_answers_with_the_addresses_of_every_host_that_has_it_and_their_ttls(lab: Lab) -> None:
    got = ask(lab, "api.stripe.example")
    assert got["rcode"] == 0 and got["id"] == 4242
    assert sorted((a[3], a[2]) for a in got["answers"]) == [("203.0.113.5", 7), ("203.0.113.6", 30)]
    assert [a[3] for a in ask(lab, "API.Stripe.Example", 28)["answers"]] == ["2001:db8::5"]
    assert addresses(ask(lab, "www.stripe.example")) == {"203.0.113.5"}


def test_an_unknown_name_is_not_found(lab: Lab) -> None:
    got = ask(lab, "nothing.stripe.example")
    assert got["answers"] == [] and got["rcode"] != 0


def test_more_addresses_than_udp_holds_are_truncated_there_and_answered_whole_over_tcp(lab: Lab) -> None:
    udp = ask(lab, "big.s3.example")
    assert udp["tc"] and len(udp["answers"]) < len(MANY)
    tcp = ask(lab, "big.s3.example", transport="tcp")
    assert not tcp["tc"] and addresses(tcp) == set(MANY)
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab.name, "app/client", "--",
         "getent", "ahostsv4", "big.s3.example"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert {line.split()[0] for line in out.stdout.splitlines()} == set(MANY)  # the resolver retried over TCP


def test_lab_apply_moves_a_name_and_the_next_answer_has_it(lab: Lab) -> None:
    moved = """
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: stripe-b}
spec: {ip: 203.0.113.6, ports: [{port: 443}], names: [api2.stripe.example], ttl: 2}
"""
    back = """
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: stripe-b}
spec: {ip: 203.0.113.6, ports: [{port: 443}], names: [api.stripe.example]}
"""
    lab.cli("apply", "-f", "-", stdin=moved)
    try:
        assert addresses(ask(lab, "api.stripe.example")) == {"203.0.113.5"}
        assert [(a[3], a[2]) for a in ask(lab, "api2.stripe.example")["answers"]] == [("203.0.113.6", 2)]
    finally:
        lab.cli("apply", "-f", "-", stdin=back)
    assert addresses(ask(lab, "api.stripe.example")) == {"203.0.113.5", "203.0.113.6"}


def test_an_invalid_name_is_refused_by_the_api_and_nothing_changes(lab: Lab) -> None:
    bad = """
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: stripe-b}
spec: {ip: 203.0.113.6, ports: [{port: 443}], names: [api.stripe.example, "bad name.example"]}
"""
    proc = lab.cli("apply", "-f", "-", stdin=bad, check=False)
    assert proc.returncode != 0
    assert "spec.names[1] 'bad name.example'" in proc.stderr
    assert addresses(ask(lab, "api.stripe.example")) == {"203.0.113.5", "203.0.113.6"}


def test_a_killed_lab_daemon_comes_back_answering_the_names(lab: Lab) -> None:
    pid = int(Path(f"/run/vethguard/labs/{lab.name}/daemon.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    lab.status()  # the CLI starts the daemon again from the saved state
    assert addresses(ask(lab, "api.stripe.example")) == {"203.0.113.5", "203.0.113.6"}
