"""Codecs of the DNS maps (bpf/lib/structs.h: dns_learned_key/value, dns_held): what a pod
learned from DNS answers, and the DNS frames the programs give the agent (lib/dns.h)."""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from controller.datapath.abi import DnsHeld, DnsLearnedKey, DnsLearnedValue
from controller.datapath.codecs import addr16, addr_from16

HELD_HEADER = DnsHeld.data.offset  # bytes before the frame in a vg_dns_held record


@dataclass(frozen=True)
class Held:
    """A vg_dns_held record: a DNS frame of endpoint `ep_id` seen on `ifindex`."""

    ts_ns: int
    ifindex: int
    ep_id: int
    kind: int  # abi.DNS_HELD_QUERY (copied, sent on) or DNS_HELD_ANSWER (held: to release)
    frame: bytes  # from the Ethernet header


def decode_held(raw: bytes) -> Held:
    if len(raw) < HELD_HEADER:
        raise ValueError(f"vg_dns_held record of {len(raw)} bytes is shorter than its header")
    head = DnsHeld.from_buffer_copy(raw[:HELD_HEADER].ljust(ctypes.sizeof(DnsHeld), b"\0"))
    frame = raw[HELD_HEADER : HELD_HEADER + head.len]
    if len(frame) != head.len:
        raise ValueError(f"vg_dns_held record holds {len(frame)} frame bytes of {head.len}")
    return Held(head.ts_ns, head.ifindex, head.ep_id, head.kind, frame)


def encode_learned_key(ep_id: int, address: str) -> bytes:
    k = DnsLearnedKey(ep_id=ep_id, family=ipaddress.ip_address(address).version)
    k.addr[:] = list(addr16(address))
    return bytes(k)


def encode_learned(ep_id: int, address: str, identity: int, expires_ns: int) -> tuple[bytes, bytes]:
    """vg_dns_learned key/value: `address` learned by endpoint `ep_id` for domain `identity`,
    good for new flows until `expires_ns` (vg_now()'s clock: CLOCK_MONOTONIC)."""
    return encode_learned_key(ep_id, address), bytes(
        DnsLearnedValue(expires_ns=expires_ns, identity=identity)
    )


def decode_learned(kb: bytes, vb: bytes) -> tuple[int, str, int, int]:
    """(ep_id, address, identity, expires_ns) of a vg_dns_learned entry."""
    k = DnsLearnedKey.from_bytes(kb)
    v = DnsLearnedValue.from_bytes(vb)
    return k.ep_id, addr_from16(k.addr, k.family), v.identity, v.expires_ns
