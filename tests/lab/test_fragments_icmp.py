"""Fragments and ICMP through the datapath, with the pods' own IP stacks.

A two-node lab: `x/server` (node-1, the lab's UDP echo responder on port 80) accepts from
role=client (`x/client`, node-2) everything (a rule without ports) and from role=stranger
(`x/stranger`, node-2) only TCP 80 (a rule with ports). `x/client` is isolated for ingress with no
rule at all: only replies of its own flows and ICMP errors about them may reach it.

- A 4000-byte UDP datagram from client is fragmented by its kernel over the 1500-byte veth (later
  fragments carry no ports), crosses both nodes, is reassembled by the server, echoed (fragmented
  again) and arrives back whole; the same from stranger is not echoed, and the server's hook
  counted the first fragment as DROP_POLICY and the later ones as DROP_FRAG_UNKNOWN.
- ICMP echo (an unprivileged ping socket, net.ipv4.ping_group_range set in the pod's namespace
  only): client gets replies, stranger does not.
- Port unreachable from the server's kernel reaches the ingress-isolated client
  (ConnectionRefusedError on its connected UDP socket; ALLOW_RELATED counted).
- Fragmentation needed / packet too big, sent by the server pod through a raw socket: one about a
  flow the client never had is dropped (DROP_POLICY) and its route keeps MTU 1500; one about the
  client's live flow passes (ALLOW_RELATED) and the client's kernel lowers the path MTU.
Both IP families throughout.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller.core.verdicts import DIR_INGRESS
from controller.datapath.abi import CounterKey, CounterValue, Reason
from controller.datapath.bpfsys import BpfMap
from controller.lab import netns
from controller.lab.state import LabPaths
from tests.support.labs import Lab, lab_up
from tests.support.packets import checksum

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
]

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec:
  nodeName: node-1
  containers: [{name: s, ports: [{containerPort: 80, protocol: TCP}, {containerPort: 80, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {role: client}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: x, labels: {role: stranger}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
  - from: [{podSelector: {matchLabels: {role: stranger}}}]
    ports: [{protocol: TCP, port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-isolated, namespace: x}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Ingress]
  ingress: []
"""
BIG = 4000
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
FAMILIES = [4, 6]


@dataclass
class Env:
    lab: Lab
    status: dict[str, Any]

    def ns(self, pod: str) -> str:
        return str(self.status["pods"][pod]["netns"])

    def ip(self, pod: str, family: int) -> str:
        return next(str(ip) for ip in self.status["pods"][pod]["ips"] if (":" in ip) == (family == 6))

    def ep(self, pod: str) -> int:
        out = subprocess.run(
            ["ip", "-n", self.ns(pod), "-j", "link", "show", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        )
        (eth0,) = json.loads(out.stdout)
        return int(eth0["link_index"])

    def count(self, pod: str, reason: Reason) -> int:
        node = str(self.status["pods"][pod]["node"])
        m = BpfMap.open_pinned(str(LabPaths(self.lab.name).pin_root / node / "vg_counters"))
        try:
            key = CounterKey(ep_id=self.ep(pod), reason=int(reason), dir=DIR_INGRESS).to_bytes()
            return sum(CounterValue.from_bytes(v).packets for v in m.lookup_percpu(key) or [])
        finally:
            m.close()

    def run(self, pod: str, fn: Callable[[], Any]) -> Any:
        return netns.run_in_netns(self.ns(pod), fn)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with lab_up(MODEL, "--nodes", "2", timeout=120) as lab:
        yield Env(lab, lab.status())


def af(family: int) -> socket.AddressFamily:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def udp_exchange(env: Env, pod: str, family: int, port: int, payload: bytes, timeout: float) -> bytes | None:
    """Send one datagram from `pod` to the server and wait for one back (None: nothing)."""
    dst = env.ip("x/server", family)

    def go() -> bytes | None:
        with socket.socket(af(family), socket.SOCK_DGRAM) as s:
            if family == 4:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)  # let the kernel fragment
            s.connect((dst, port))
            s.send(payload)
            if not select.select([s], [], [], timeout)[0]:
                return None
            return s.recv(65536)

    result: bytes | None = env.run(pod, go)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fragmented_udp_datagram_of_an_allowed_flow_arrives_whole(env: Env, family: int) -> None:
    payload = bytes(i % 251 for i in range(BIG))
    frag_server, frag_client = (
        env.count("x/server", Reason.ALLOW_FRAG),
        env.count("x/client", Reason.ALLOW_FRAG),
    )
    echoed = udp_exchange(env, "x/client", family, 80, payload, timeout=3.0)
    assert echoed is not None, "no echo of the 4000-byte datagram"
    assert len(echoed) == BIG and echoed == payload
    # 4000 bytes over a 1500-byte MTU: 3 fragments each way, 2 of them without ports
    assert env.count("x/server", Reason.ALLOW_FRAG) - frag_server >= 2
    assert env.count("x/client", Reason.ALLOW_FRAG) - frag_client >= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fragments_of_a_denied_flow_do_not_arrive(env: Env, family: int) -> None:
    policy, unknown = (
        env.count("x/server", Reason.DROP_POLICY),
        env.count("x/server", Reason.DROP_FRAG_UNKNOWN),
    )
    assert udp_exchange(env, "x/stranger", family, 80, b"s" * BIG, timeout=1.5) is None
    assert env.count("x/server", Reason.DROP_POLICY) - policy >= 1
    assert env.count("x/server", Reason.DROP_FRAG_UNKNOWN) - unknown >= 2


def ping(env: Env, pod: str, family: int, ident_hint: int) -> bool:
    """One ICMP echo through an unprivileged ping socket; True when the reply came."""
    netns.sysctl(env.ns(pod), {"net.ipv4.ping_group_range": "0 2147483647"})
    dst = env.ip("x/server", family)
    proto = socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6
    request = 8 if family == 4 else 128

    def go() -> bool:
        with socket.socket(af(family), socket.SOCK_DGRAM, proto) as s:
            s.connect((dst, 0))
            s.send(struct.pack("!BBHHH", request, 0, 0, 0, ident_hint) + b"vethguard")
            return bool(select.select([s], [], [], 1.5)[0]) and len(s.recv(1024)) >= 8

    result: bool = env.run(pod, go)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_a_rule_without_ports_allows_icmp_echo_and_a_rule_with_ports_does_not(env: Env, family: int) -> None:
    assert ping(env, "x/client", family, 1)
    assert not ping(env, "x/stranger", family, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_port_unreachable_reaches_an_ingress_isolated_sender(env: Env, family: int) -> None:
    related = env.count("x/client", Reason.ALLOW_RELATED)
    dst = env.ip("x/server", family)

    def go() -> str:
        with socket.socket(af(family), socket.SOCK_DGRAM) as s:
            s.connect((dst, 7777))  # nothing listens there
            s.send(b"anyone?")
            if not select.select([s], [], [], 2.0)[0]:
                return "nothing came back"
            try:
                s.recv(1024)
            except ConnectionRefusedError:
                return "refused"
            return "an answer"

    assert env.run("x/client", go) == "refused"
    assert env.count("x/client", Reason.ALLOW_RELATED) - related >= 1


def icmp_too_big(family: int, client: str, server: str, sport: int, dport: int, mtu: int) -> bytes:
    """The ICMP error the server would send about a UDP datagram client:sport -> server:dport."""
    udp = struct.pack("!HHHH", sport, dport, 8 + 1400, 0)
    if family == 4:
        head = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 1400, 1, 0x4000, 64, 17, 0,
            socket.inet_aton(client), socket.inet_aton(server),
        )  # fmt: skip
        head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
        body = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + head + udp
        return body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    head = struct.pack("!IHBB", 6 << 28, 8 + 1400, 17, 64)
    head += socket.inet_pton(socket.AF_INET6, client) + socket.inet_pton(socket.AF_INET6, server)
    return struct.pack("!BBHI", 2, 0, 0, mtu) + head + udp  # the kernel fills in ICMPv6 checksums


def route_mtu(env: Env, family: int) -> str:
    out = subprocess.run(
        ["ip", "-n", env.ns("x/client"), f"-{family}", "route", "get", env.ip("x/server", family)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = out.split()
    return words[words.index("mtu") + 1] if "mtu" in words else "none"


@pytest.mark.parametrize("family", FAMILIES)
def test_fragmentation_needed_reaches_the_sender_only_for_its_own_flow(env: Env, family: int) -> None:
    client, server = env.ip("x/client", family), env.ip("x/server", family)
    mtu = 1300

    def open_sockets() -> tuple[socket.socket, socket.socket]:
        live = socket.socket(af(family), socket.SOCK_DGRAM)
        live.connect((server, 80))
        live.send(b"hello")  # the echo makes this a tracked, allowed flow
        assert select.select([live], [], [], 2.0)[0] and live.recv(64) == b"hello"
        silent = socket.socket(af(family), socket.SOCK_DGRAM)
        silent.connect((server, 81))  # a socket the error could match, but no flow ever sent
        return live, silent

    live, silent = env.run("x/client", open_sockets)
    proto = socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6

    def send_error(sport: int, dport: int) -> None:
        with socket.socket(af(family), socket.SOCK_RAW, proto) as raw:
            raw.sendto(icmp_too_big(family, client, server, sport, dport, mtu), (client, 0))

    try:
        assert route_mtu(env, family) == "none"
        dropped, related = (
            env.count("x/client", Reason.DROP_POLICY),
            env.count("x/client", Reason.ALLOW_RELATED),
        )
        env.run("x/server", lambda: send_error(silent.getsockname()[1], 81))
        deadline = time.monotonic() + 3.0
        while env.count("x/client", Reason.DROP_POLICY) == dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert env.count("x/client", Reason.DROP_POLICY) - dropped == 1
        assert route_mtu(env, family) == "none", "an unsolicited error changed the client's path MTU"

        env.run("x/server", lambda: send_error(live.getsockname()[1], 80))
        deadline = time.monotonic() + 3.0
        while route_mtu(env, family) != str(mtu) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert route_mtu(env, family) == str(mtu)
        assert env.count("x/client", Reason.ALLOW_RELATED) - related == 1
    finally:
        live.close()
        silent.close()
