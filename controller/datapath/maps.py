"""ctypes mirrors of the BPF map structs (bpf/lib/structs.h), encoders/decoders, the reasons
table, and a minimal bpf(2) map API that works on any map fd (pinned or bcc-created).

tests/unit/test_map_layout.py compiles structs.h with gcc and checks every size and offset
here against it, so the two cannot drift apart silently.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from typing import ClassVar, TypeVar

from controller.mapstate import PolicyEntryKey, PolicyEntryValue

# ---------------------------------------------------------------------------------------------
# Constants (bpf/lib/structs.h)

DIR_INGRESS = 0
DIR_EGRESS = 1

EP_F_INGRESS_ISOLATED = 1 << 0
EP_F_EGRESS_ISOLATED = 1 << 1
EP_F_AUDIT = 1 << 2
EP_F_PENDING = 1 << 3
EP_F_INGRESS_AUDIT = 1 << 4  # isolated only by audit-mode policies: would-be drops pass
EP_F_EGRESS_AUDIT = 1 << 5

VERDICT_ALLOW = 1
VERDICT_DENY = 2

CT_ALLOWED = 1
CT_DENIED = 2
CT_DEFERRED = 3  # a pod's flow to a Service frontend: its egress verdict is given after DNAT
# ct_value.origin of a flow the node masqueraded to its own address for a sender outside it
CT_ORIGIN_OUTSIDE = 0xFFFF
CT_SEEN_REPLY = 1
CT_SEEN_FIN = 2
CT_SEEN_RST = 4
CT_SEEN_MIDSTREAM = 8  # created by a TCP packet other than a SYN: replies judged by their own policy
CT_SEEN_REPLY_OK = 16  # a MIDSTREAM entry whose reply direction was allowed at its revision

POLICY_PLEN_ANY_PROTO = 72
POLICY_PLEN_ANY_PORT = 80
POLICY_PLEN_FULL = 96

# skb->mark bits of a packet whose egress verdict is deferred past DNAT (bpf/lib/service.h)
VG_MARK_DEFERRED = 0x80000000
VG_MARK_SLOT_MASK = 0x7FFF0000
VG_MARK_SLOT_SHIFT = 16
MAX_SLOT = VG_MARK_SLOT_MASK >> VG_MARK_SLOT_SHIFT

MAP_NAMES = (
    "vg_endpoints",
    "vg_ipcache4",
    "vg_ipcache6",
    "vg_policy",
    "vg_slots",
    "vg_svc",
    "vg_local",
    "vg_ct",
    "vg_frag",
    "vg_config",
    "vg_counters",
    "vg_evrate",
    "vg_events",
)


class Reason(IntEnum):
    """bpf/lib/reasons.h: codes below 64 pass the packet, 64 and above drop it."""

    ALLOW_POLICY = 0
    ALLOW_CT = 1
    ALLOW_REPLY = 2
    ALLOW_NOT_ISOLATED = 3
    ALLOW_HOST = 4
    ALLOW_NON_IP = 5
    ALLOW_ICMP6_CTRL = 6
    ALLOW_FRAG = 7
    ALLOW_AUDIT = 8  # a would-be DROP_POLICY passed in audit mode
    ALLOW_RELATED = 9  # ICMP error about a tracked allowed flow
    ALLOW_DEFERRED = 10  # to a Service frontend: judged after DNAT
    DROP_POLICY = 64
    DROP_MALFORMED = 65
    DROP_FRAG_UNKNOWN = 66
    DROP_REVOKED = 67
    DROP_PENDING = 68
    DROP_NO_ENDPOINT = 69
    DROP_CT_FULL = 70
    DROP_SPOOFED = 71  # source address is not the pod's own
    DROP_DEFERRED_UNKNOWN = 72  # deferred packet whose client endpoint is unknown

    @property
    def is_drop(self) -> bool:
        return self >= 64


# ---------------------------------------------------------------------------------------------
# Struct mirrors. Field order and widths follow structs.h exactly; byte arrays hold addresses
# and network-order fields are kept as raw big-endian integers via c_uint16/32 of the bytes.

U8x16 = ctypes.c_uint8 * 16


class _Struct(ctypes.Structure):
    """Base with byte (de)serialisation helpers."""

    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def from_bytes(cls: type[_S], data: bytes) -> _S:
        return cls.from_buffer_copy(data)


_S = TypeVar("_S", bound=_Struct)


class EndpointInfo(_Struct):
    _fields_: ClassVar = [
        ("ep_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("ipv4", ctypes.c_uint8 * 4),  # __be32: kept as bytes
        ("ipv6", U8x16),
        ("slot", ctypes.c_uint32),  # this endpoint in the mark of deferred packets (vg_slots)
    ]


class SvcKey(_Struct):
    _fields_: ClassVar = [
        ("addr", U8x16),
        ("port", ctypes.c_uint8 * 2),  # __be16: kept as bytes
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
    ]


class SvcValue(_Struct):
    _fields_: ClassVar = [("flags", ctypes.c_uint32)]


class LocalKey(_Struct):
    _fields_: ClassVar = [("addr", U8x16), ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class LocalValue(_Struct):
    _fields_: ClassVar = [("ifindex", ctypes.c_uint32)]


class Ipcache4Key(_Struct):
    _fields_: ClassVar = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class Ipcache6Key(_Struct):
    _fields_: ClassVar = [("prefixlen", ctypes.c_uint32), ("addr", U8x16)]


class IpcacheValue(_Struct):
    _fields_: ClassVar = [("identity", ctypes.c_uint32), ("cidr_identity", ctypes.c_uint32)]


class PolicyKey(_Struct):
    _fields_: ClassVar = [
        ("prefixlen", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("dir", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("dport", ctypes.c_uint8 * 2),  # __be16: kept as bytes
    ]


class PolicyValue(_Struct):
    _fields_: ClassVar = [
        ("verdict", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("precedence", ctypes.c_uint16),
        ("rule_ref", ctypes.c_uint32),
    ]


class CtKey(_Struct):
    _fields_: ClassVar = [
        ("saddr", U8x16),
        ("daddr", U8x16),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("ep_id", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("nat", ctypes.c_uint8),  # 1: egress entry judged after DNAT
    ]


class CtValue(_Struct):
    _fields_: ClassVar = [
        ("expires_ns", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("revision", ctypes.c_uint32),
        ("rule_ref", ctypes.c_uint32),
        ("state", ctypes.c_uint8),
        ("seen", ctypes.c_uint8),
        ("origin", ctypes.c_uint16),  # slot of a masqueraded flow's real sender (bpf/lib/trust.h)
        ("marker", ctypes.c_uint32),
    ]


class FragKey(_Struct):
    _fields_: ClassVar = [
        ("saddr", U8x16),
        ("daddr", U8x16),
        ("id", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class FragValue(_Struct):
    _fields_: ClassVar = [
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("pad", ctypes.c_uint32),
        ("expires_ns", ctypes.c_uint64),
    ]


class Config(_Struct):
    _fields_: ClassVar = [
        ("revision", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint64),
    ]


class CounterKey(_Struct):
    _fields_: ClassVar = [
        ("ep_id", ctypes.c_uint32),
        ("reason", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class CounterValue(_Struct):
    _fields_: ClassVar = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class FlowEvent(_Struct):
    _fields_: ClassVar = [
        ("ts_ns", ctypes.c_uint64),
        ("ep_id", ctypes.c_uint32),
        ("peer_identity", ctypes.c_uint32),
        ("peer_cidr_identity", ctypes.c_uint32),
        ("rule_ref", ctypes.c_uint32),
        ("dir", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("saddr", U8x16),
        ("daddr", U8x16),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
    ]


class EvrateState(_Struct):
    _fields_: ClassVar = [("last_ns", ctypes.c_uint64), ("tokens", ctypes.c_uint64)]


# Name in structs.h -> mirror, for the layout test.
C_STRUCTS: dict[str, type[_Struct]] = {
    "endpoint_info": EndpointInfo,
    "svc_key": SvcKey,
    "svc_value": SvcValue,
    "local_key": LocalKey,
    "local_value": LocalValue,
    "ipcache4_key": Ipcache4Key,
    "ipcache6_key": Ipcache6Key,
    "ipcache_value": IpcacheValue,
    "policy_key": PolicyKey,
    "policy_value": PolicyValue,
    "ct_key": CtKey,
    "ct_value": CtValue,
    "frag_key": FragKey,
    "frag_value": FragValue,
    "config": Config,
    "counter_key": CounterKey,
    "counter_value": CounterValue,
    "flow_event": FlowEvent,
    "evrate_state": EvrateState,
}

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
    ep_id: int, identity: int, flags: int, ipv4: str | None, ipv6: str | None, slot: int = 0
) -> tuple[bytes, bytes]:
    v = EndpointInfo(ep_id=ep_id, identity=identity, flags=flags, slot=slot)
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


def policy_prefixlen(key: PolicyEntryKey) -> int:
    """72 = any protocol, 80 = protocol with any port, 80 + n = port prefix /n."""
    if key.proto == 0:
        return POLICY_PLEN_ANY_PROTO
    return POLICY_PLEN_ANY_PORT + key.port_plen


def encode_policy(ep_id: int, key: PolicyEntryKey, value: PolicyEntryValue) -> tuple[bytes, bytes]:
    if key.proto == 0 and (key.port or key.port_plen):
        raise ValueError(f"policy entry {key}: a port needs a protocol")
    if not 0 <= key.port_plen <= 16:
        raise ValueError(f"policy entry {key}: port_plen out of range")
    plen = policy_prefixlen(key)
    # Zero the host bits beyond the prefix: the trie ignores them, but the diff compares bytes.
    mask = (0xFFFF << (16 - key.port_plen)) & 0xFFFF if key.port_plen else 0
    k = PolicyKey(
        prefixlen=plen,
        ep_id=ep_id,
        identity=key.identity,
        dir=key.direction,
        proto=key.proto,
        dport=be16(key.port & mask),
    )
    v = PolicyValue(verdict=value.verdict, flags=0, precedence=value.precedence, rule_ref=value.rule_ref)
    return bytes(k), bytes(v)


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
        PolicyEntryValue(verdict=v.verdict, precedence=v.precedence, rule_ref=v.rule_ref),
    )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def encode_ipcache(net: IPNetwork, identity: int, cidr_identity: int) -> tuple[bytes, bytes]:
    value = bytes(IpcacheValue(identity=identity, cidr_identity=cidr_identity))
    if net.version == 4:
        k4 = Ipcache4Key(prefixlen=net.prefixlen)
        k4.addr[:] = list(net.network_address.packed)
        return bytes(k4), value
    k6 = Ipcache6Key(prefixlen=net.prefixlen)
    k6.addr[:] = list(net.network_address.packed)
    return bytes(k6), value


def decode_ipcache(kb: bytes, vb: bytes) -> tuple[IPNetwork, tuple[int, int]]:
    v = IpcacheValue.from_bytes(vb)
    net: IPNetwork
    if len(kb) == ctypes.sizeof(Ipcache4Key):
        k4 = Ipcache4Key.from_bytes(kb)
        net = ipaddress.IPv4Network((bytes(k4.addr), k4.prefixlen), strict=False)
    else:
        k6 = Ipcache6Key.from_bytes(kb)
        net = ipaddress.IPv6Network((bytes(k6.addr), k6.prefixlen), strict=False)
    return net, (v.identity, v.cidr_identity)


@dataclass(frozen=True)
class Endpoint:
    ifindex: int
    ep_id: int
    identity: int
    flags: int
    ipv4: str | None
    ipv6: str | None
    slot: int = 0


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
        nat=k.nat,
        origin=v.origin,
    )


@dataclass(frozen=True)
class Event:
    ts_ns: int
    ep_id: int
    dir: int
    reason: Reason
    family: int
    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    peer_identity: int
    peer_cidr_identity: int
    rule_ref: int


def decode_event(data: bytes) -> Event:
    e = FlowEvent.from_bytes(data[: ctypes.sizeof(FlowEvent)])
    fam = e.family or 4
    return Event(
        ts_ns=e.ts_ns,
        ep_id=e.ep_id,
        dir=e.dir,
        reason=Reason(e.reason),
        family=e.family,
        proto=e.proto,
        saddr=addr_from16(e.saddr, fam),
        daddr=addr_from16(e.daddr, fam),
        sport=from_be16(e.sport),
        dport=from_be16(e.dport),
        peer_identity=e.peer_identity,
        peer_cidr_identity=e.peer_cidr_identity,
        rule_ref=e.rule_ref,
    )


# ---------------------------------------------------------------------------------------------
# bpf(2) through ctypes: bcc's table API needs its own compiled types; these work on any fd.

SYS_BPF = 321  # x86_64
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    pass


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(2); raise BpfError(errno) on failure."""
    ret = _libc.syscall(SYS_BPF, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


class _MapElemAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _ObjGetAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class BpfMapInfo(ctypes.Structure):
    """The leading fields of struct bpf_map_info (the kernel accepts a shorter buffer)."""

    _fields_: ClassVar = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class BpfProgInfo(ctypes.Structure):
    """The leading fields of struct bpf_prog_info (UAPI): enough to name a program."""

    _fields_: ClassVar = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class ProgId:
    """A loaded program: kernel id (unique while loaded) and tag (hash of its instructions)."""

    id: int
    tag: str  # 16 hex digits, as `bpftool prog` and tc show it


def prog_id(fd: int) -> ProgId:
    info = BpfProgInfo()
    obj_info(fd, info)
    return ProgId(id=int(info.id), tag=bytes(info.tag).hex())


def map_id(fd: int) -> int:
    info = BpfMapInfo()
    obj_info(fd, info)
    return int(info.id)


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program fd at path (which must not exist)."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(raw), bpf_fd=fd)
    bpf(BPF_OBJ_PIN, attr)


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new fd."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(raw))
    return bpf(BPF_OBJ_GET, attr)


def obj_info(fd: int, info: ctypes.Structure) -> None:
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


@cache
def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value array length the kernel uses."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


class BpfMap:
    """A map fd with its geometry; values of per-CPU maps are lists of per-CPU bytes."""

    def __init__(self, fd: int, owned: bool = False) -> None:
        self.fd = fd
        self._owned = owned
        info = BpfMapInfo()
        obj_info(fd, info)
        self.type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.name = info.name.decode()
        self.percpu = info.type in _PERCPU_TYPES
        self._slot = (self.value_size + 7) & ~7  # per-CPU values are 8-byte aligned

    @classmethod
    def open_pinned(cls, path: str) -> BpfMap:
        return cls(obj_get(path), owned=True)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buf(self) -> ctypes.Array[ctypes.c_char]:
        n = self._slot * possible_cpus() if self.percpu else self.value_size
        return ctypes.create_string_buffer(n)

    def _check_key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(key)} bytes, map wants {self.key_size}")

    def lookup_raw(self, key: bytes) -> bytes | None:
        self._check_key(key)
        kb = ctypes.create_string_buffer(key, len(key))
        vb = self._value_buf()
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb), value=ctypes.addressof(vb))
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return vb.raw

    def lookup(self, key: bytes) -> bytes | None:
        """Value bytes of a regular map (the first CPU's slot of a per-CPU map)."""
        raw = self.lookup_raw(key)
        return None if raw is None else raw[: self.value_size]

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        raw = self.lookup_raw(key)
        if raw is None:
            return None
        return [raw[i * self._slot : i * self._slot + self.value_size] for i in range(possible_cpus())]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._check_key(key)
        if self.percpu:
            value = b"".join(value.ljust(self._slot, b"\0") for _ in range(possible_cpus()))
        elif len(value) != self.value_size:
            raise ValueError(f"{self.name}: value is {len(value)} bytes, map wants {self.value_size}")
        kb = ctypes.create_string_buffer(key, len(key))
        vb = ctypes.create_string_buffer(value, len(value))
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb), value=ctypes.addressof(vb), flags=flags)
        bpf(BPF_MAP_UPDATE_ELEM, attr)

    def delete(self, key: bytes) -> bool:
        """Delete a key; False if it was not there."""
        self._check_key(key)
        kb = ctypes.create_string_buffer(key, len(key))
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb))
        try:
            bpf(BPF_MAP_DELETE_ELEM, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def key_list(self) -> list[bytes]:
        """All keys, collected first so deleting while iterating is safe."""
        out: list[bytes] = []
        nb = ctypes.create_string_buffer(self.key_size)
        attr = _MapElemAttr(map_fd=self.fd, key=0, value=ctypes.addressof(nb))
        while True:
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    break
                raise
            out.append(nb.raw)
            kb = ctypes.create_string_buffer(nb.raw, self.key_size)
            attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb), value=ctypes.addressof(nb))
        return out

    def count(self) -> int:
        """Number of keys (one GET_NEXT_KEY per key, two buffers swapped: nothing collected)."""
        bufs = (ctypes.create_string_buffer(self.key_size), ctypes.create_string_buffer(self.key_size))
        attr = _MapElemAttr(map_fd=self.fd, key=0, value=ctypes.addressof(bufs[0]))
        n = 0
        while True:
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return n
                raise
            n += 1
            attr.key = attr.value  # the key just returned is where the next walk starts
            attr.value = ctypes.addressof(bufs[n % 2])

    def items(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for k in self.key_list():
            v = self.lookup(k)
            if v is not None:  # may vanish between the two calls (LRU eviction)
                out[k] = v
        return out

    def clear(self) -> int:
        n = 0
        for k in self.key_list():
            n += self.delete(k)
        return n
