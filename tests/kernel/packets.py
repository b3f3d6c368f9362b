"""Tiny packet builders for kernel tests (no scapy here). Checksums are left zero: the tc
programs never verify them."""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
SCTP = 132

SYN = 0x02
ACK = 0x10
FIN = 0x01
RST = 0x04

_MAC_A = bytes.fromhex("020000000001")
_MAC_B = bytes.fromhex("020000000002")


def eth(ethertype: int, payload: bytes) -> bytes:
    return _MAC_B + _MAC_A + struct.pack("!H", ethertype) + payload


def tcp(sport: int, dport: int, flags: int = SYN, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"x" * 8) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0) + bytes(16)


def icmp_echo(ident: int, request: bool = True, v6: bool = False) -> bytes:
    typ = (128 if request else 129) if v6 else (8 if request else 0)
    return struct.pack("!BBHHH", typ, 0, 0, ident, 1) + b"ping" * 4


def icmp6(typ: int, body: bytes = bytes(20)) -> bytes:
    return struct.pack("!BBH", typ, 0, 0) + body


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
) -> bytes:
    """An Ethernet frame with an IPv4 packet. `ihl` overrides the computed header length."""
    assert len(options) % 4 == 0
    hlen = 20 + len(options)
    flags_off = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    ver_ihl = (4 << 4) | (ihl if ihl is not None else hlen // 4)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        ver_ihl,
        0,
        hlen + len(l4),
        ident,
        flags_off,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return eth(ETH_P_IP, hdr + options + l4)


def ext_hdr(nexthdr: int, length8: int = 0) -> bytes:
    """A hop-by-hop / routing / destination options header of (length8 + 1) * 8 bytes."""
    body = bytes((length8 + 1) * 8 - 2)
    return struct.pack("!BB", nexthdr, length8) + body


def frag_hdr(nexthdr: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset // 8) << 3 | int(more), ident)


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    """An Ethernet frame with an IPv6 packet; `payload` starts with the header `nexthdr` names."""
    hdr = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        nexthdr,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return eth(ETH_P_IPV6, hdr + payload)


def arp() -> bytes:
    return eth(
        ETH_P_ARP, struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + _MAC_A + bytes(4) + bytes(6) + bytes(4)
    )
