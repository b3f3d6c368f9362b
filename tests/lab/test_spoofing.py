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

import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from controller.core.verdicts import DIR_EGRESS
from controller.datapath.abi import CounterKey, CounterValue, Reason
from controller.datapath.bpfsys import BpfMap
from controller.lab import netns, topology
from controller.lab.state import LabPaths
from tests.support.labs import ip_link, lab_up, load_model
from tests.support.packets import (
    ETH_P_IP,
    ETH_P_IPV6,
    TCP,
    UDP,
    drain,
    eth,
    incoming,
    ipv4_packet,
    ipv6_packet,
    is_copy,
    l4_checksummed,
    open_rx,
    open_tx,
    tcp,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.bcc,
]

CIDR4, CIDR6 = "198.51.100.0/24", "2001:db8:5::/64"
IN_CIDR4, IN_CIDR6 = "198.51.100.7", "2001:db8:5::7"
MODEL = load_model("raw-namespace.yaml") + "".join(
    load_model("raw-pod.yaml", name=n) for n in ("evil", "friend", "dst")
)
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


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    opened: list[socket.socket] = []
    counters: BpfMap | None = None
    with lab_up(MODEL, timeout=180) as lab:
        try:
            lab.cli("apply", "-f", "-", stdin=POLICY)
            status = lab.status()
            node_ns = status["nodes"][status["pods"]["t/dst"]["node"]]["netns"]

            def pod(pod_name: str) -> Pod:
                info = status["pods"][f"t/{pod_name}"]
                eth0 = ip_link(info["netns"], "eth0")
                host = ip_link(node_ns, topology.pod_ifname("t", pod_name))
                tx = netns.run_in_netns(info["netns"], open_tx)
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
            rx = netns.run_in_netns(dst["netns"], open_rx)
            opened.append(rx)
            counters = BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / dst["node"] / "vg_counters"))
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


def frames_from(sender: Pod, src4: str, src6: str, env: Env) -> list[bytes]:
    """TCP SYN and UDP datagram to dst:80, IPv4 and IPv6, with the given source addresses."""

    def frame(ethertype: int, l3: bytes) -> bytes:
        return eth(ethertype, l3, dst=sender.gw_mac, src=sender.mac)

    sport = random.randrange(20000, 60000)
    syn = tcp(sport, 80, seq=None)
    udp = struct.pack("!HHHH", sport, 80, 12, 0) + b"spof"
    ident = random.randrange(0x100, 0xFFFF)
    return [
        frame(
            ETH_P_IP, ipv4_packet(src4, env.dst4, TCP, l4_checksummed(src4, env.dst4, TCP, syn), ident=ident)
        ),
        frame(
            ETH_P_IP,
            ipv4_packet(src4, env.dst4, UDP, l4_checksummed(src4, env.dst4, UDP, udp), ident=ident + 1),
        ),
        frame(
            ETH_P_IPV6, ipv6_packet(src6, env.dst6, TCP, l4_checksummed(src6, env.dst6, TCP, syn), flow=ident)
        ),
        frame(
            ETH_P_IPV6,
            ipv6_packet(src6, env.dst6, UDP, l4_checksummed(src6, env.dst6, UDP, udp), flow=ident + 1),
        ),
    ]


def arrived(env: Env, frames: list[bytes], seconds: float) -> list[bool]:
    got = incoming(env.rx, seconds, stop=lambda got: all(any(is_copy(g, f) for g in got) for f in frames))
    return [any(is_copy(g, f) for g in got) for f in frames]


def send_and_watch(env: Env, sender: Pod, frames: list[bytes], seconds: float) -> tuple[list[bool], int]:
    drain(env.rx)
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
