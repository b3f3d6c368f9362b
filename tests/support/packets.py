"""The one packet builder of the suite (no scapy): bytes of Ethernet frames, IPv4/IPv6 packets
and their L4 headers, for BPF_PROG_TEST_RUN (tests/kernel) and for AF_PACKET sockets in a lab
(tests/lab), and the raw-socket helpers those lab tests send and capture with.

Layers: L4 headers (`tcp`, `udp`, ...), L3 packets (`ipv4_packet`, `ipv6_packet`: the header
plus its payload), and frames (`eth`, or `ipv4`/`ipv6`/`arp`: a packet in an Ethernet frame
between two fixed test MACs). The kernel tests' frames leave checksums zero (the tc programs never
verify them); a packet put on a lab's wire wants `checksummed=True` for its IPv4 header (the
node's IP stack drops a bad one) and `l4_checksummed` for TCP/UDP.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import time
from collections.abc import Callable

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
SCTP = 132
NEXTHDR_HOP, NEXTHDR_FRAGMENT, NEXTHDR_DEST = 0, 44, 60

SYN = 0x02
ACK = 0x10
FIN = 0x01
RST = 0x04

PACKET_OUTGOING = 4  # sockaddr_ll pkttype of a frame the capturing interface sent itself

_MAC_A = bytes.fromhex("020000000001")
_MAC_B = bytes.fromhex("020000000002")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# ------------------------------------------------------------------------------------------- L2


def eth(ethertype: int, payload: bytes, *, dst: bytes = _MAC_B, src: bytes = _MAC_A) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


# ------------------------------------------------------------------------------------------- L4


def tcp(sport: int, dport: int, flags: int = SYN, payload: bytes = b"", *, seq: int | None = 1) -> bytes:
    """A 20-byte TCP header (checksum zero) and `payload`; seq=None draws a random sequence
    number (frames repeated on a lab's wire then differ)."""
    number = random.getrandbits(32) if seq is None else seq
    return struct.pack("!HHIIBBHHH", sport, dport, number, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"x" * 8) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0) + bytes(16)


def icmp_echo(ident: int, request: bool = True, v6: bool = False) -> bytes:
    typ = (128 if request else 129) if v6 else (8 if request else 0)
    return struct.pack("!BBHHH", typ, 0, 0, ident, 1) + b"ping" * 4


def icmp6(typ: int, body: bytes = bytes(20)) -> bytes:
    return struct.pack("!BBH", typ, 0, 0) + body


def l4_checksummed(src: str, dst: str, proto: int, segment: bytes) -> bytes:
    """The TCP or UDP `segment` with its checksum over the IPv4 or IPv6 pseudo header."""
    if ":" in src:
        pseudo = (
            ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(dst).packed
            + struct.pack("!IxxxB", len(segment), proto)
        )
    else:
        pseudo = (
            ipaddress.IPv4Address(src).packed
            + ipaddress.IPv4Address(dst).packed
            + struct.pack("!BBH", 0, proto, len(segment))
        )
    at = 16 if proto == TCP else 6
    return segment[:at] + struct.pack("!H", checksum(pseudo + segment)) + segment[at + 2 :]


# ------------------------------------------------------------------------------------------- L3


def ipv4_packet(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ident: int = 0x1234,
    ihl: int | None = None,
    options: bytes = b"",
    frag_offset: int = 0,  # bytes, multiple of 8
    more_fragments: bool = False,
    total_length: int | None = None,
    checksummed: bool = True,
) -> bytes:
    """An IPv4 header and `payload`. `ihl` and `total_length` override the computed ones (a
    header that promises more options than follow, a datagram shorter than the frame)."""
    assert len(options) % 4 == 0
    hlen = 20 + len(options)
    flags_off = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    head = struct.pack(
        "!BBHHHBBH4s4s",
        (4 << 4) | (ihl if ihl is not None else hlen // 4),
        0,
        total_length if total_length is not None else hlen + len(payload),
        ident,
        flags_off,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    if checksummed:
        head = head[:10] + struct.pack("!H", checksum(head + options)) + head[12:]
    return head + options + payload


def ipv6_packet(
    src: str,
    dst: str,
    nexthdr: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    flow: int = 0,
    payload_length: int | None = None,
) -> bytes:
    """An IPv6 header and `payload` (which starts with the header `nexthdr` names)."""
    return (
        struct.pack(
            "!IHBB",
            (6 << 28) | (flow & 0xFFFFF),
            payload_length if payload_length is not None else len(payload),
            nexthdr,
            hop_limit,
        )
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def ext_hdr(nexthdr: int, length8: int = 0) -> bytes:
    """A hop-by-hop / routing / destination options header of (length8 + 1) * 8 bytes."""
    body = bytes((length8 + 1) * 8 - 2)
    return struct.pack("!BB", nexthdr, length8) + body


def frag_hdr(nexthdr: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset // 8) << 3 | int(more), ident)


def padn(length: int) -> bytes:
    """An IPv6 PadN option filling `length` (>= 2) bytes."""
    return bytes([1, length - 2]) + bytes(length - 2)


# ----------------------------------------------------------------------- frames between test MACs


def ipv4(
    src: str,
    dst: str,
    proto: int,
    l4: bytes,
    *,
    options: bytes = b"",
    ident: int = 0x1234,
    frag_offset: int = 0,
    more_fragments: bool = False,
    ihl: int | None = None,
    checksummed: bool = False,
) -> bytes:
    """An Ethernet frame with an IPv4 packet (header checksum zero unless `checksummed`)."""
    packet = ipv4_packet(
        src,
        dst,
        proto,
        l4,
        options=options,
        ident=ident,
        frag_offset=frag_offset,
        more_fragments=more_fragments,
        ihl=ihl,
        checksummed=checksummed,
    )
    return eth(ETH_P_IP, packet)


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    """An Ethernet frame with an IPv6 packet; `payload` starts with the header `nexthdr` names."""
    return eth(ETH_P_IPV6, ipv6_packet(src, dst, nexthdr, payload, hop_limit=hop_limit))


def arp() -> bytes:
    return eth(
        ETH_P_ARP, struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + _MAC_A + bytes(4) + bytes(6) + bytes(4)
    )


# ------------------------------------------------------------- raw sockets on a lab pod's eth0


def open_tx() -> socket.socket:
    """An AF_PACKET socket on eth0 of the calling thread's netns that only sends."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only, receive nothing
    s.bind(("eth0", 0))
    return s


def open_rx() -> socket.socket:
    """An AF_PACKET socket on eth0 of the calling thread's netns that captures every protocol."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind(("eth0", ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


def drain(rx: socket.socket) -> None:
    """Discard what `rx` captured so far."""
    while select.select([rx], [], [], 0)[0]:
        rx.recv(65535)


def incoming(
    rx: socket.socket, seconds: float, stop: Callable[[list[bytes]], bool] | None = None
) -> list[bytes]:
    """Frames `rx` captured arriving (not sent) within `seconds`, or until stop(frames so far)."""
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([rx], [], [], left)[0]:
            break
        data, addr = rx.recvfrom(65535)
        if addr[2] != PACKET_OUTGOING:
            frames.append(data)
            if stop is not None and stop(frames):
                break
    return frames


def _masked(frame: bytes) -> bytes:
    """EtherType + L3 with the fields a forwarding node rewrites zeroed (TTL, IPv4 checksum,
    hop limit); the MAC addresses are rewritten too and are not part of it."""
    body = bytearray(frame[12:])
    ethertype = struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 0
    if ethertype == ETH_P_IP:
        for i in (2 + 8, 2 + 10, 2 + 11):
            if i < len(body):
                body[i] = 0
    elif ethertype == ETH_P_IPV6 and len(body) > 2 + 7:
        body[2 + 7] = 0
    return bytes(body)


def is_copy(received: bytes, sent: bytes) -> bool:
    """`received` is `sent` after a node forwarded it (a frame trimmed to its IP length too)."""
    got, want = _masked(received), _masked(sent)
    n = min(len(got), len(want))
    return n >= 2 + 8 and got[:n] == want[:n]
