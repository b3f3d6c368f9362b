"""Releasing held DNS answers (controller/datapath/dns_release.py) through a real veth between
two throwaway namespaces: the pod's socket gets a UDP answer whose held checksum was not final;
a TCP answer longer than the MTU (sent with a virtio-net GSO header) arrives whole and in order."""

from __future__ import annotations

import socket
import struct

import pytest

from controller.core import dnswire
from controller.datapath import dns_release
from tests.support import packets as P
from tests.support.netns_util import VethPair, in_netns, veth_pair

pytestmark = [pytest.mark.root]

DNS_ANSWER = dnswire.encode_response(
    5, dnswire.Question("api.example.com", 1), [dnswire.Record("api.example.com", 1, 30, "203.0.113.5")]
)


def _pod_mac(v: VethPair) -> bytes:
    def read() -> bytes:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("eth0", 0))
        mac = s.getsockname()[4]
        s.close()
        return bytes(mac)

    return in_netns(v.pod_ns, read)


def test_a_released_udp_answer_reaches_the_pods_socket_with_a_valid_checksum() -> None:
    with veth_pair() as v:
        rx = in_netns(v.pod_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        rx.bind((v.pod_ip, 40000))
        rx.settimeout(2)
        releaser = in_netns(v.node_ns, dns_release.Releaser)
        try:
            l4 = P.udp(53, 40000, DNS_ANSWER)
            # the held copy of a CHECKSUM_PARTIAL packet: the field is not the final checksum
            frame = P.eth(
                0x0800, P.ipv4_packet(v.node_ip, v.pod_ip, 17, l4, checksummed=True), dst=_pod_mac(v)
            )
            frame = frame[:40] + b"\x12\x34" + frame[42:]
            releaser.release(v.ifindex, frame)
            data, peer = rx.recvfrom(4096)
            assert (data, peer) == (DNS_ANSWER, (v.node_ip, 53))
        finally:
            releaser.close()
            rx.close()


def test_a_tcp_answer_longer_than_the_mtu_reaches_the_pod_whole_and_in_order() -> None:
    body = dnswire.encode_response(
        6,
        dnswire.Question("big.example.com", 1),
        [dnswire.Record("big.example.com", 1, 30, f"198.18.7.{i}") for i in range(1, 121)],
    )
    payload = dnswire.tcp_frame(body)
    assert len(payload) > 1500
    with veth_pair() as v:
        cap = in_netns(
            v.pod_ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        )
        cap.bind(("eth0", 0))
        cap.settimeout(2)
        releaser = in_netns(v.node_ns, dns_release.Releaser)
        try:
            seg = P.tcp(53, 40000, P.ACK, payload, seq=1000)
            frame = P.eth(
                0x0800, P.ipv4_packet(v.node_ip, v.pod_ip, 6, seg, checksummed=True), dst=_pod_mac(v)
            )
            releaser.release(v.ifindex, frame)
            got = b""
            while len(got) < len(payload):
                pkt = cap.recv(65535)
                if pkt[23] != 6 or pkt[26:30] != socket.inet_aton(v.node_ip):
                    continue
                ihl = (pkt[14] & 0x0F) * 4
                l4 = 14 + ihl
                (seq,) = struct.unpack_from("!I", pkt, l4 + 4)
                data = pkt[l4 + (pkt[l4 + 12] >> 4) * 4 : 14 + struct.unpack_from("!H", pkt, 16)[0]]
                assert seq == 1000 + len(got)
                got += data
            assert got == payload
        finally:
            releaser.close()
            cap.close()
