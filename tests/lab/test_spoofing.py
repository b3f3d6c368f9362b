"""No pod can borrow another's identity: raw packets with a forged source address from a pod.

A one-node lab: `t/dst` accepts TCP/UDP 80 only from pods labelled app=friend (`t/friend`) and
from the ipBlocks 198.51.100.0/24 and 2001:db8:5::/64. `t/evil` is not selected by any policy
(nothing isolates its egress). From evil's eth0 an AF_PACKET socket sends hand-built frames whose
source is friend's address or an address of the allowed ipBlocks, IPv4 and IPv6, TCP SYN and UDP,
towards dst:80; an AF_PACKET socket on dst's eth0 captures everything that arrives. Asserted: no
forged frame arrives, and evil's from_pod hook counted exactly that many DROP_SPOOFED. Controls in
the same lab: the same frames with friend's real source, sent from friend, arrive (so the capture
works and the forged identity would have been let in), and evil's own address passes its hook.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.core.verdicts import DIR_EGRESS
from controller.datapath.abi import CounterKey, CounterValue, Reason
from controller.datapath.bpfsys import BpfMap
from controller.lab import netns, topology
from controller.lab.client import teardown
from controller.lab.state import LabPaths
from tests.lab.test_raw_packets import (
    ETH_P_IP,
    ETH_P_IPV6,
    TCP,
    UDP,
    _json,
    _open_rx,
    _open_tx,
    checksum,
    ipv4,
    ipv6,
    is_copy,
    run_cli,
    tcp,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw-packet lab tests need root (netns, AF_PACKET, bpf)"),
]

CIDR4, CIDR6 = "198.51.100.0/24", "2001:db8:5::/64"
IN_CIDR4, IN_CIDR6 = "198.51.100.7", "2001:db8:5::7"
MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: t, labels: {ns: t}}
"""
POD = """
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: t, labels: {{app: {name}}}}}
spec:
  containers:
  - name: serve
    ports: [{{containerPort: 80, protocol: TCP}}, {{containerPort: 80, protocol: UDP}}]
"""
POLICY = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: dst-friends, namespace: t}}
spec:
  podSelector: {{matchLabels: {{app: dst}}}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {{matchLabels: {{app: friend}}}}
    - ipBlock: {{cidr: {CIDR4}}}
    - ipBlock: {{cidr: "{CIDR6}"}}
    ports: [{{protocol: TCP, port: 80}}, {{protocol: UDP, port: 80}}]
"""
DEADLINE = 3.0
SETTLE = 0.4


@dataclass
class Pod:
    ip4: str
    ip6: str
    ep: int  # host-side veth ifindex
    mac: bytes
    gw_mac: bytes
    tx: socket.socket


@dataclass
class Env:
    evil: Pod
    friend: Pod
    dst4: str
    dst6: str
    rx: socket.socket
    counters: BpfMap

    def count(self, ep: int, reason: Reason) -> int:
        values = self.counters.lookup_percpu(
            CounterKey(ep_id=ep, reason=int(reason), dir=DIR_EGRESS).to_bytes()
        )
        return sum(CounterValue.from_bytes(v).packets for v in values or [])


def _link(ns: str, ifname: str) -> dict[str, object]:
    (link,) = _json(["ip", "-n", ns, "-j", "link", "show", ifname])
    return link


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    name = f"spoof{os.getpid()}"
    opened: list[socket.socket] = []
    counters: BpfMap | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "model.yaml"
            model.write_text(MODEL + "".join(POD.format(name=n) for n in ("evil", "friend", "dst")))
            run_cli("up", "--name", name, "-f", str(model))
        run_cli("apply", "--name", name, "-f", "-", stdin=POLICY)
        status = json.loads(run_cli("status", "--name", name, "-o", "json"))
        node_ns = status["nodes"][status["pods"]["t/dst"]["node"]]["netns"]

        def pod(pod_name: str) -> Pod:
            info = status["pods"][f"t/{pod_name}"]
            eth0 = _link(info["netns"], "eth0")
            host = _link(node_ns, topology.pod_ifname("t", pod_name))
            tx = netns.run_in_netns(info["netns"], _open_tx)
            opened.append(tx)
            return Pod(
                ip4=next(ip for ip in info["ips"] if ":" not in ip),
                ip6=next(ip for ip in info["ips"] if ":" in ip),
                ep=int(str(eth0["link_index"])),
                mac=bytes.fromhex(str(eth0["address"]).replace(":", "")),
                gw_mac=bytes.fromhex(str(host["address"]).replace(":", "")),
                tx=tx,
            )

        evil, friend = pod("evil"), pod("friend")
        dst = status["pods"]["t/dst"]
        rx = netns.run_in_netns(dst["netns"], _open_rx)
        opened.append(rx)
        counters = BpfMap.open_pinned(str(LabPaths(name).pin_root / dst["node"] / "vg_counters"))
        yield Env(
            evil=evil,
            friend=friend,
            dst4=next(ip for ip in dst["ips"] if ":" not in ip),
            dst6=next(ip for ip in dst["ips"] if ":" in ip),
            rx=rx,
            counters=counters,
        )
    finally:
        for s in opened:
            s.close()
        if counters is not None:
            counters.close()
        teardown(name)


def frames_from(sender: Pod, src4: str, src6: str, env: Env) -> list[bytes]:
    """TCP SYN and UDP datagram to dst:80, IPv4 and IPv6, with the given source addresses."""

    def eth(ethertype: int, l3: bytes) -> bytes:
        return sender.gw_mac + sender.mac + struct.pack("!H", ethertype) + l3

    def seg4(proto: int, body: bytes) -> bytes:
        pseudo = (
            socket.inet_aton(src4) + socket.inet_aton(env.dst4) + struct.pack("!BBH", 0, proto, len(body))
        )
        at = 16 if proto == TCP else 6
        return body[:at] + struct.pack("!H", checksum(pseudo + body)) + body[at + 2 :]

    def seg6(proto: int, body: bytes) -> bytes:
        pseudo = (
            socket.inet_pton(socket.AF_INET6, src6)
            + socket.inet_pton(socket.AF_INET6, env.dst6)
            + struct.pack("!IxxxB", len(body), proto)
        )
        at = 16 if proto == TCP else 6
        return body[:at] + struct.pack("!H", checksum(pseudo + body)) + body[at + 2 :]

    sport = random.randrange(20000, 60000)
    syn = tcp(sport, 80)
    udp = struct.pack("!HHHH", sport, 80, 12, 0) + b"spof"
    ident = random.randrange(0x100, 0xFFFF)
    return [
        eth(ETH_P_IP, ipv4(src4, env.dst4, TCP, seg4(TCP, syn), ident=ident)),
        eth(ETH_P_IP, ipv4(src4, env.dst4, UDP, seg4(UDP, udp), ident=ident + 1)),
        eth(ETH_P_IPV6, ipv6(src6, env.dst6, TCP, seg6(TCP, syn), flow=ident)),
        eth(ETH_P_IPV6, ipv6(src6, env.dst6, UDP, seg6(UDP, udp), flow=ident + 1)),
    ]


def arrived(env: Env, frames: list[bytes], seconds: float) -> list[bool]:
    got: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not all(
        any(is_copy(g, f) for g in got) for f in frames
    ):
        if select.select([env.rx], [], [], left)[0]:
            data, addr = env.rx.recvfrom(65535)
            if addr[2] != 4:  # PACKET_OUTGOING
                got.append(data)
    return [any(is_copy(g, f) for g in got) for f in frames]


def drain(env: Env) -> None:
    while select.select([env.rx], [], [], 0)[0]:
        env.rx.recv(65535)


def send_and_watch(env: Env, sender: Pod, frames: list[bytes], seconds: float) -> tuple[list[bool], int]:
    drain(env)
    before = env.count(sender.ep, Reason.DROP_SPOOFED)
    for f in frames:
        sender.tx.send(f)
    seen = arrived(env, frames, seconds)
    return seen, env.count(sender.ep, Reason.DROP_SPOOFED) - before


def test_the_friends_own_packets_arrive_so_the_capture_sees_what_the_policy_allows(env: Env) -> None:
    frames = frames_from(env.friend, env.friend.ip4, env.friend.ip6, env)
    seen, spoofed = send_and_watch(env, env.friend, frames, DEADLINE)
    assert seen == [True] * 4 and spoofed == 0


def test_a_pod_cannot_send_with_another_pods_address_that_the_destination_allows(env: Env) -> None:
    frames = frames_from(env.evil, env.friend.ip4, env.friend.ip6, env)
    seen, spoofed = send_and_watch(env, env.evil, frames, SETTLE)
    assert seen == [False] * 4, f"forged frames reached t/dst: {seen}"
    assert spoofed == 4


def test_a_pod_cannot_send_with_an_address_of_an_allowed_ip_block(env: Env) -> None:
    frames = frames_from(env.evil, IN_CIDR4, IN_CIDR6, env)
    seen, spoofed = send_and_watch(env, env.evil, frames, SETTLE)
    assert seen == [False] * 4, f"forged frames reached t/dst: {seen}"
    assert spoofed == 4


def test_the_attackers_own_address_passes_its_hook_and_is_denied_by_the_destination(env: Env) -> None:
    frames = frames_from(env.evil, env.evil.ip4, env.evil.ip6, env)
    allowed_before = env.count(env.evil.ep, Reason.ALLOW_NOT_ISOLATED)
    seen, spoofed = send_and_watch(env, env.evil, frames, SETTLE)
    assert seen == [False] * 4 and spoofed == 0
    assert env.count(env.evil.ep, Reason.ALLOW_NOT_ISOLATED) - allowed_before >= 4
