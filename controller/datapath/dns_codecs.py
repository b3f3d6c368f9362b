"""Codecs of the DNS maps (bpf/lib/structs.h: dns_learned_key/value, dns_held): what a pod
learned from DNS answers, and the DNS frames the programs give the agent (lib/dns.h)."""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from controller.datapath.abi import VG_DNS_NAME_MAX, DnsHeld, DnsLearnedKey, DnsLearnedValue, DnsName
from controller.datapath.codecs import addr16, addr_from16, u32_key

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


def encode_learned(
    ep_id: int, address: str, identity: int, expires_ns: int, name_id: int = 0
) -> tuple[bytes, bytes]:
    """vg_dns_learned key/value: `address` learned by endpoint `ep_id` for domain `identity`,
    good for new flows until `expires_ns` (vg_now()'s clock: CLOCK_MONOTONIC); `name_id`: the
    asked name's key in vg_dns_names (0: none)."""
    return encode_learned_key(ep_id, address), bytes(
        DnsLearnedValue(expires_ns=expires_ns, identity=identity, name_id=name_id)
    )


@dataclass(frozen=True)
class LearnedEntry:
    """A vg_dns_learned entry: `address` learned by endpoint `ep_id` for domain `identity`, good
    for new flows until `expires_ns`; `name`: the name the pod asked for (vg_dns_names), None
    when not recorded or evicted there."""

    ep_id: int
    address: str
    identity: int
    expires_ns: int
    name_id: int = 0
    name: str | None = None


def decode_learned(kb: bytes, vb: bytes) -> LearnedEntry:
    k = DnsLearnedKey.from_bytes(kb)
    v = DnsLearnedValue.from_bytes(vb)
    return LearnedEntry(k.ep_id, addr_from16(k.addr, k.family), v.identity, v.expires_ns, v.name_id)


def encode_name(name_id: int, name: str) -> tuple[bytes, bytes]:
    """vg_dns_names key/value of a name (ASCII, canonical: at most 253 characters)."""
    raw = name.encode("ascii")
    if len(raw) >= VG_DNS_NAME_MAX:
        raise ValueError(f"DNS name of {len(raw)} characters does not fit vg_dns_names")
    return u32_key(name_id), bytes(DnsName(name=raw))


def decode_name(vb: bytes) -> str:
    return DnsName.from_bytes(vb).name.decode("ascii", "replace")
