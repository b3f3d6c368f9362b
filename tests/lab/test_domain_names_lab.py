"""Egress by domain name (issue 20) in a two-node lab with agents and cluster DNS: an Admin
ClusterNetworkPolicy allows a namespace's pods DNS and a list of names, a lower-precedence one
denies everything else; the names resolve through the lab's dnsmasq and the agents learn their
addresses from the answers they hold. The first connection right after an answer passes (no
race), other names and addresses stay denied, a TTL's end stops new connections and not
established ones, a CNAME chain counts for the name asked, forged answers on the wire teach
nothing, and `bpf dns`, explain and observe name what was learned."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from controller.core import dnswire
from controller.datapath import bpfsys, dns_codecs
from controller.lab import kubeproxy, netns, topology
from controller.lab.state import LabPaths
from tests.support import packets as P
from tests.support.labs import Lab, ip_link, lab_up
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
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: cdn}
spec:
  ip: 203.0.113.7
  ports: [{port: 443}]
  names: [edge.cdn.example]
  aliases: [www.shop.example, shop.cdn.example]
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: mallory, namespace: other}
spec: {nodeName: node-2, containers: [{name: c}]}
""".replace("BUCKET_IPS", ", ".join(f"198.18.7.{i}" for i in range(1, 121)))

# The allow-list, and a Deny-all after it in its own policy (the API's intended combination)
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
    to: [{domainNames: [api.stripe.example, "*.s3.example", api.v6.example, www.shop.example]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: payments-deny-all}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: payments}}}
  egress:
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
    return in_client(lab, RESOLVE_CONNECT, name, str(family), str(pick))


def in_client(lab: Lab, script: str, *args: str) -> dict:
    """Run a Python script in the client pod; its stdout is one JSON document."""
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab.name, "payments/client", "--",
         sys.executable, "-c", script, *args],
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


def learned(lab: Lab, node: str = "node-2") -> list[dns_codecs.LearnedEntry]:
    m = bpfsys.BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / node / "vg_dns_learned"))
    try:
        return [dns_codecs.decode_learned(k, v) for k, v in m.items().items()]
    finally:
        m.close()


def addresses(lab: Lab) -> list[str]:
    return [e.address for e in learned(lab)]


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
    assert addresses(lab) == ["203.0.113.5"]


def test_a_name_no_rule_allows_resolves_but_its_address_stays_denied(lab: Lab) -> None:
    got = resolve_connect(lab, "evil.example")
    assert got["address"] == "203.0.113.9" and not got["connected"]
    assert "203.0.113.9" not in addresses(lab)


def test_a_wildcard_name_with_more_addresses_than_udp_holds_is_learned_whole_over_tcp(lab: Lab) -> None:
    forget_learned(lab)
    got = resolve_connect(lab, "eu.bucket.s3.example", pick=119)  # the resolver retried over TCP
    assert got["addresses"] == 120 and got["address"] == "198.18.7.120" and got["connected"], got
    assert len([a for a in addresses(lab) if a.startswith("198.18.7.")]) == 120


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
    assert "203.0.113.5" in addresses(lab)
    assert lab.probe_tcp(443, ["payments/client"], ["ext/stripe"]) == {
        ("payments/client", "ext/stripe"): True
    }


# In the pod: resolve NAME, hold a connection to it open, then after WAIT seconds (the learned
# entry has expired) try a new connection and use the held one.
TTL_SCRIPT = """
import json, socket, sys, time
name, wait = sys.argv[1], float(sys.argv[2])
address = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
def new_connection():
    try:
        socket.create_connection((address, 443), timeout=2).close()
        return True
    except OSError:
        return False
held = socket.create_connection((address, 443), timeout=2)
fresh = new_connection()
time.sleep(wait)
expired = new_connection()
held.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
reply = held.recv(64).decode(errors="replace")
print(json.dumps({"address": address, "fresh": fresh, "expired": expired, "held_reply": reply}))
"""


def test_the_end_of_the_ttl_stops_new_connections_but_not_established_ones(lab: Lab) -> None:
    forget_learned(lab)
    # api.stripe.example has TTL 5 s (also the minimum hold): 6.5 s later the entry has expired
    got = in_client(lab, TTL_SCRIPT, "api.stripe.example", "6.5")
    assert got["address"] == "203.0.113.5" and got["fresh"], got
    assert not got["expired"], "a new connection passed after the learned address expired"
    assert got["held_reply"].startswith("HTTP/1.0 200"), got
    doc = json.loads(lab.debug("explain", "payments/client", "203.0.113.5", "--port", "443", "-o", "json"))
    assert not doc["allowed"] and doc["kernel_agrees"], doc
    assert doc["egress"]["domain"]["expired"] and doc["egress"]["domain"]["name"] == "api.stripe.example"


def test_a_cname_chain_counts_for_the_name_the_pod_asked(lab: Lab) -> None:
    forget_learned(lab)
    # www.shop.example -> shop.cdn.example -> edge.cdn.example -> 203.0.113.7; only the first is allowed
    got = resolve_connect(lab, "www.shop.example")
    assert got["address"] == "203.0.113.7" and got["connected"], got
    rows = json.loads(lab.debug("bpf", "dns", "-o", "json"))["items"]
    assert [(r["address"], r["name"]) for r in rows] == [("203.0.113.7", "www.shop.example")]
    forget_learned(lab)
    direct = resolve_connect(lab, "edge.cdn.example")  # the chain's end asked directly: no rule names it
    assert direct["address"] == "203.0.113.7" and not direct["connected"], direct


def test_bpf_explain_and_observe_name_the_learned_address_its_domain_and_expiry(lab: Lab) -> None:
    forget_learned(lab)
    assert resolve_connect(lab, "eu.bucket.s3.example", pick=3)["connected"]  # 198.18.7.4
    rows = json.loads(lab.debug("bpf", "dns", "-o", "json"))["items"]
    row = next(r for r in rows if r["address"] == "198.18.7.4")
    assert (row["node"], row["pod"], row["name"], row["domain"], row["expired"]) == (
        "node-2",
        "payments/client",
        "eu.bucket.s3.example",
        "domain:*.s3.example",
        False,
    )
    assert 0 < row["expires_in_s"] <= 30
    assert "eu.bucket.s3.example" in lab.debug("bpf", "dns", "payments/client")
    doc = json.loads(lab.debug("explain", "payments/client", "198.18.7.4", "--port", "443", "-o", "json"))
    assert doc["allowed"] and doc["kernel_agrees"] and doc["egress"]["rule_name"] == "stripe", doc
    assert doc["egress"]["domain"]["name"] == "eu.bucket.s3.example"
    text = lab.debug("explain", "payments/client", "198.18.7.4", "--port", "443")
    assert "198.18.7.4 was learned from DNS as eu.bucket.s3.example (domain:*.s3.example)" in text

    def flows() -> list[dict]:
        out = lab.debug("observe", "-o", "json", "--pod", "payments/client", "--port", "443")
        return [f for f in map(json.loads, out.splitlines()) if f["dst_ip"] == "198.18.7.4"]

    wait_for(lambda: any(f["direction"] == "egress" for f in flows()), timeout=10)
    egress = [f for f in flows() if f["direction"] == "egress"][-1]
    assert egress["verdict"] == "allowed" and egress["domain"]["name"] == "eu.bucket.s3.example", egress
    assert "[dns eu.bucket.s3.example domain:*.s3.example until" in lab.debug(
        "observe", "--pod", "payments/client", "--port", "443"
    )


def test_forged_dns_answers_on_the_wire_teach_nothing(lab: Lab) -> None:
    """other/mallory (same node) sends the client answers naming evil's address for
    api.stripe.example: with the cluster DNS's address (dropped at mallory's own hook: it is
    not hers) and with her own (it arrives, the capture shows, but it answers no flow of the
    client: not held, not learned). The address stays denied."""
    forget_learned(lab)
    status = lab.status()
    client, mallory = status["pods"]["payments/client"], status["pods"]["other/mallory"]
    client_ip = next(ip for ip in client["ips"] if ":" not in ip)
    mallory_ip = next(ip for ip in mallory["ips"] if ":" not in ip)
    eth0 = ip_link(mallory["netns"], "eth0")
    host = ip_link(status["nodes"]["node-2"]["netns"], topology.pod_ifname("other", "mallory"))
    mac, gw_mac = (bytes.fromhex(str(link["address"]).replace(":", "")) for link in (eth0, host))
    body = dnswire.encode_response(
        0x1234,
        dnswire.Question("api.stripe.example", dnswire.TYPE_A),
        [dnswire.Record("api.stripe.example", dnswire.TYPE_A, 300, "203.0.113.9")],
    )

    def forged(src: str, ident: int) -> bytes:
        udp = struct.pack("!HHHH", 53, 33333, 8 + len(body), 0) + body
        l3 = P.ipv4_packet(src, client_ip, P.UDP, P.l4_checksummed(src, client_ip, P.UDP, udp), ident=ident)
        return P.eth(P.ETH_P_IP, l3, dst=gw_mac, src=mac)

    spoofed, own = forged(kubeproxy.DNS_CLUSTER_IP, 0x4242), forged(mallory_ip, 0x4243)
    tx = netns.run_in_netns(mallory["netns"], P.open_tx)
    rx = netns.run_in_netns(client["netns"], P.open_rx)
    try:
        P.drain(rx)
        for _ in range(20):
            tx.send(spoofed)
            tx.send(own)
        got = P.incoming(rx, 3.0, stop=lambda got: any(P.is_copy(g, own) for g in got))
    finally:
        tx.close()
        rx.close()
    assert any(P.is_copy(g, own) for g in got), "control: mallory's own frame should arrive"
    assert not any(P.is_copy(g, spoofed) for g in got), "a frame with the cluster DNS's address arrived"
    assert "203.0.113.9" not in addresses(lab)
    assert lab.probe_tcp(443, ["payments/client"], ["ext/evil"]) == {("payments/client", "ext/evil"): False}
