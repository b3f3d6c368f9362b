"""Encoders and decoders between Python values and the BPF map structs (controller.datapath.abi):
one definition of each key, value and event layout."""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from controller.compiler.desired_state import HostEndpointDesired, PolicyEntryKey, PolicyEntryValue
from controller.core.net import IPNetwork
from controller.datapath import abi
from controller.datapath.abi import (
    POLICY_PLEN_ANY_PORT,
    POLICY_PLEN_ANY_PROTO,
    CtKey,
    CtValue,
    EndpointInfo,
    FlowEvent,
    Ipcache4Key,
    Ipcache6Key,
    IpcacheValue,
    LocalKey,
    LocalValue,
    PolicyKey,
    PolicyValue,
    SvcKey,
    SvcValue,
)

# ---------------------------------------------------------------------------------------------
# Encoders / decoders between Python values and the structs


def be16(value: int) -> ctypes.Array[ctypes.c_uint8]:
    return (ctypes.c_uint8 * 2)(*value.to_bytes(2, "big"))


def from_be16(raw: ctypes.Array[ctypes.c_uint8]) -> int:
    return int.from_bytes(bytes(raw), "big")


def addr16(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes:
    """An address in a 16-byte field: IPv4 in the first 4 bytes, the rest zero."""
    if addr is None:
        return bytes(16)
    ip = ipaddress.ip_address(addr)
    return ip.packed.ljust(16, b"\0")


def addr_from16(raw: bytes | ctypes.Array[ctypes.c_uint8], family: int) -> str:
    data = bytes(raw)
    if family == 4:
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data[:16]))


def encode_endpoint(
    ep_id: int,
    identity: int,
    flags: int,
    ipv4: str | None,
    ipv6: str | None,
    slot: int = 0,
    tier_profile: int = 0,
) -> tuple[bytes, bytes]:
    v = EndpointInfo(ep_id=ep_id, identity=identity, flags=flags, slot=slot, tier_profile=tier_profile)
    if ipv4:
        v.ipv4[:] = list(ipaddress.IPv4Address(ipv4).packed)
    if ipv6:
        v.ipv6[:] = list(ipaddress.IPv6Address(ipv6).packed)
    return u32_key(ep_id), bytes(v)


def encode_svc(family: int, address: str, proto: int, port: int) -> tuple[bytes, bytes]:
    """vg_svc key/value of one Service frontend."""
    k = SvcKey(proto=proto, family=family)
    k.addr[:] = list(addr16(address))
    k.port = be16(port)
    return bytes(k), bytes(SvcValue(flags=0))


def encode_local(address: str, ifindex: int) -> tuple[bytes, bytes]:
    """vg_local key/value: an address of this node (ifindex 0) or of a local pod (its veth)."""
    k = LocalKey(family=ipaddress.ip_address(address).version)
    k.addr[:] = list(addr16(address))
    return bytes(k), bytes(LocalValue(ifindex=ifindex))


def encode_hostep(
    ifindex: int, hep: HostEndpointDesired, homes: Mapping[int, int] | None = None
) -> tuple[bytes, bytes]:
    """vg_hosteps key/value of a host endpoint on one interface; `homes`: where each tier
    profile is written (profile id -> home id, ProfileHomes), when not under its own id."""

    def home(pid: int) -> int:
        return homes.get(pid, pid) if homes is not None and pid else pid

    flags = (
        (abi.HEP_F_INGRESS_FWD if hep.ingress_fwd else 0)
        | (abi.HEP_F_EGRESS_FWD if hep.egress_fwd else 0)
        | (abi.HEP_F_PREDNAT if hep.pre_dnat else 0)
    )
    v = abi.HostepInfo(
        flags=flags,
        profile_host=home(hep.profile_host),
        profile_fwd=home(hep.profile_fwd),
        profile_pre=home(hep.profile_pre),
    )
    return u32_key(ifindex), bytes(v)


def encode_failsafe(proto: int, port: int, direction: int) -> tuple[bytes, bytes]:
    """vg_failsafe key/value of one failsafe (protocol, port) in one direction."""
    k = abi.FailsafeKey(proto=proto, dir=direction)
    k.port[:] = list(be16(port))
    return bytes(k), b"\x01"


def decode_local(kb: bytes, vb: bytes) -> tuple[str, int]:
    """(address, ifindex) of a vg_local entry."""
    k = LocalKey.from_bytes(kb)
    return addr_from16(k.addr, k.family), int(LocalValue.from_bytes(vb).ifindex)


def decode_svc(kb: bytes) -> tuple[int, str, int, int]:
    """(family, address, proto, port) of a vg_svc key."""
    k = SvcKey.from_bytes(kb)
    return int(k.family), addr_from16(k.addr, k.family), int(k.proto), from_be16(k.port)


def u32_key(n: int) -> bytes:
    """A host-order __u32 key (vg_endpoints ifindex, vg_config index)."""
    return bytes(ctypes.c_uint32(n))


def est_key(slot: int, reason: int, direction: int) -> bytes:
    """vg_est_counters' key of a slot's count of `reason` (one of abi.EST_REASONS) in a hook
    direction (bpf/lib/conntrack.h, vg_ct_fast)."""
    return u32_key(slot * abi.VG_EST_ROW + abi.EST_REASONS.index(abi.Reason(reason)) * 2 + direction)


def policy_prefixlen(key: PolicyEntryKey) -> int:
    """72 = any protocol, 80 = protocol with any port, 80 + n = port prefix /n."""
    if key.proto == 0:
        return POLICY_PLEN_ANY_PROTO
    return POLICY_PLEN_ANY_PORT + key.port_plen


# PolicyEntryValue's fields: the same names in struct policy_value (which adds `flags`)
_POLICY_VALUE_FIELDS = tuple(f.name for f in dataclasses.fields(PolicyEntryValue))


def encode_policy(ep_id: int, key: PolicyEntryKey, value: PolicyEntryValue) -> tuple[bytes, bytes]:
    return encode_policy_key(ep_id, key), encode_policy_value(value)


def encode_policy_key(ep_id: int, key: PolicyEntryKey) -> bytes:
    if key.proto == 0 and (key.port or key.port_plen):
        raise ValueError(f"policy entry {key}: a port needs a protocol")
    if not 0 <= key.port_plen <= 16:
        raise ValueError(f"policy entry {key}: port_plen out of range")
    plen = policy_prefixlen(key)
    # Zero the host bits beyond the prefix: the trie ignores them, but the diff compares bytes.
    mask = (0xFFFF << (16 - key.port_plen)) & 0xFFFF if key.port_plen else 0
    # struct policy_key (abi.PolicyKey's layout, packed without ctypes: a profile has 10^5 keys)
    dport = (key.port & mask).to_bytes(2, "big")
    return _POLICY_KEY.pack(plen, ep_id, key.identity, key.direction, key.proto, dport)


_POLICY_KEY = struct.Struct("=IIIBB2s")


def encode_policy_value(value: PolicyEntryValue) -> bytes:
    v = PolicyValue(flags=0, **{f: getattr(value, f) for f in _POLICY_VALUE_FIELDS})  # pad stays zero
    return bytes(v)


def decode_policy(kb: bytes, vb: bytes) -> tuple[int, PolicyEntryKey, PolicyEntryValue]:
    k = PolicyKey.from_bytes(kb)
    v = PolicyValue.from_bytes(vb)
    if k.prefixlen <= POLICY_PLEN_ANY_PROTO:
        proto, port, plen = 0, 0, 0
    else:
        proto = k.proto
        plen = k.prefixlen - POLICY_PLEN_ANY_PORT
        port = from_be16(k.dport) if plen else 0
    return (
        k.ep_id,
        PolicyEntryKey(direction=k.dir, identity=k.identity, proto=proto, port=port, port_plen=plen),
        PolicyEntryValue(**{f: getattr(v, f) for f in _POLICY_VALUE_FIELDS}),
    )


def encode_ipcache(
    net: IPNetwork, identity: int, cidr_identity: int, ns_identity: int = 0
) -> tuple[bytes, bytes]:
    value = bytes(IpcacheValue(identity=identity, cidr_identity=cidr_identity, ns_identity=ns_identity))
    if net.version == 4:
        k4 = Ipcache4Key(prefixlen=net.prefixlen)
        k4.addr[:] = list(net.network_address.packed)
        return bytes(k4), value
    k6 = Ipcache6Key(prefixlen=net.prefixlen)
    k6.addr[:] = list(net.network_address.packed)
    return bytes(k6), value


def decode_ipcache(kb: bytes, vb: bytes) -> tuple[IPNetwork, tuple[int, int, int]]:
    v = IpcacheValue.from_bytes(vb)
    net: IPNetwork
    if len(kb) == ctypes.sizeof(Ipcache4Key):
        k4 = Ipcache4Key.from_bytes(kb)
        net = ipaddress.IPv4Network((bytes(k4.addr), k4.prefixlen), strict=False)
    else:
        k6 = Ipcache6Key.from_bytes(kb)
        net = ipaddress.IPv6Network((bytes(k6.addr), k6.prefixlen), strict=False)
    return net, (v.identity, v.cidr_identity, v.ns_identity)


@dataclass(frozen=True)
class Endpoint:
    ifindex: int
    ep_id: int
    identity: int
    flags: int
    ipv4: str | None
    ipv6: str | None
    slot: int = 0
    tier_profile: int = 0


def decode_endpoint(kb: bytes, vb: bytes) -> Endpoint:
    v = EndpointInfo.from_bytes(vb)
    v4 = bytes(v.ipv4)
    v6 = bytes(v.ipv6)
    return Endpoint(
        ifindex=ctypes.c_uint32.from_buffer_copy(kb).value,
        ep_id=v.ep_id,
        identity=v.identity,
        flags=v.flags,
        ipv4=str(ipaddress.IPv4Address(v4)) if any(v4) else None,
        ipv6=str(ipaddress.IPv6Address(v6)) if any(v6) else None,
        slot=v.slot,
        tier_profile=v.tier_profile,
    )


@dataclass(frozen=True)
class CtEntry:
    ep_id: int
    dir: int
    family: int
    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    expires_ns: int
    packets: int
    bytes: int
    revision: int
    rule_ref: int
    state: int
    seen: int
    marker: int = 0  # VG_UPGRADE_MARKER of the program that created the entry
    slot: int = 0  # the endpoint's slot, for the established fast path (0: not known yet)
    nat: int = 0  # 1: the judge's entry of a deferred flow (post-DNAT tuple)
    origin: int = 0  # masqueraded ingress flow: its real sender's slot, or CT_ORIGIN_OUTSIDE


def encode_ct_key(
    ep_id: int, direction: int, proto: int, saddr: str, daddr: str, sport: int, dport: int
) -> bytes:
    family = ipaddress.ip_address(saddr).version
    k = CtKey(ep_id=ep_id, dir=direction, proto=proto, family=family)
    k.saddr[:] = list(addr16(saddr))
    k.daddr[:] = list(addr16(daddr))
    k.sport = be16(sport)
    k.dport = be16(dport)
    return bytes(k)


def decode_ct(kb: bytes, vb: bytes) -> CtEntry:
    k = CtKey.from_bytes(kb)
    v = CtValue.from_bytes(vb)
    return CtEntry(
        ep_id=k.ep_id,
        dir=k.dir,
        family=k.family,
        proto=k.proto,
        saddr=addr_from16(k.saddr, k.family),
        daddr=addr_from16(k.daddr, k.family),
        sport=from_be16(k.sport),
        dport=from_be16(k.dport),
        expires_ns=v.expires_ns,
        packets=v.packets,
        bytes=v.bytes,
        revision=v.revision,
        rule_ref=v.rule_ref,
        state=v.state,
        seen=v.seen,
        marker=v.marker,
        slot=v.slot,
        nat=k.nat,
        origin=v.origin,
    )


@dataclass(frozen=True)
class Event:
    ts_ns: int
    ep_id: int
    dir: int
    reason: int  # a Reason code; kept as a number so that an unknown code cannot crash a reader
    family: int
    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    peer_identity: int
    peer_cidr_identity: int
    rule_ref: int
    node: str = ""  # the node whose ring buffer delivered it, when the reader knows


def decode_event(data: bytes, node: str = "") -> Event:
    """The one decoder of a vg_events record (struct flow_event)."""
    e = FlowEvent.from_bytes(data[: ctypes.sizeof(FlowEvent)])
    fam = int(e.family) or 4
    return Event(
        ts_ns=int(e.ts_ns),
        ep_id=int(e.ep_id),
        dir=int(e.dir),
        reason=int(e.reason),
        family=int(e.family),
        proto=int(e.proto),
        saddr=addr_from16(e.saddr, fam),
        daddr=addr_from16(e.daddr, fam),
        sport=from_be16(e.sport),
        dport=from_be16(e.dport),
        peer_identity=int(e.peer_identity),
        peer_cidr_identity=int(e.peer_cidr_identity),
        rule_ref=int(e.rule_ref),
        node=node,
    )
