"""The datapath's ABI in Python: constants, the reasons table and ctypes mirrors of the BPF map
structs (bpf/lib/structs.h, bpf/lib/reasons.h).

tests/unit/test_map_layout.py compiles structs.h with gcc and checks every size, offset and
constant here (and in controller.core) against it, so the two cannot drift apart silently.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from typing import ClassVar, TypeVar

# ---------------------------------------------------------------------------------------------
# Constants (bpf/lib/structs.h)

EP_F_INGRESS_ISOLATED = 1 << 0
EP_F_EGRESS_ISOLATED = 1 << 1
EP_F_AUDIT = 1 << 2
EP_F_PENDING = 1 << 3
EP_F_INGRESS_AUDIT = 1 << 4  # isolated only by audit-mode policies: would-be drops pass
EP_F_EGRESS_AUDIT = 1 << 5
EP_F_INGRESS_TIERED = 1 << 6  # a ClusterNetworkPolicy with rules in that direction selects it
EP_F_EGRESS_TIERED = 1 << 7
EP_F_INGRESS_CALICO = 1 << 8  # Calico's tier polices that direction (end-of-tier deny)
EP_F_EGRESS_CALICO = 1 << 9
EP_F_CALICO_LOG = 1 << 10  # its tier profile has Calico Log rules (LOG_CALICO events)
EP_F_DNS = 1 << 11  # domainNames rules police its egress: DNS queries copied, answers held (lib/dns.h)
HEP_F_INGRESS_FWD = 1 << 0  # hostep_info.flags: applyOnForward policies select it for ingress
HEP_F_EGRESS_FWD = 1 << 1
HEP_F_PREDNAT = 1 << 2  # preDNAT policies select it

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
CT_SEEN_SRC_OWN = 32  # leaving the pod, the flow passed the source check at its revision (fast path)
VG_EST_ROW = 6  # vg_est_counters: entries per endpoint slot (bpf/lib/structs.h)

POLICY_PLEN_ANY_PROTO = 72
POLICY_PLEN_ANY_PORT = 80
POLICY_PLEN_FULL = 96

# skb->mark bits of a packet whose egress verdict is deferred past DNAT (bpf/lib/service.h)
VG_MARK_DEFERRED = 0x80000000
VG_MARK_SLOT_MASK = 0x7FFF0000
VG_MARK_SLOT_SHIFT = 16
VG_MARK_MASK = VG_MARK_DEFERRED | VG_MARK_SLOT_MASK
MAX_SLOT = VG_MARK_SLOT_MASK >> VG_MARK_SLOT_SHIFT
VG_MARK_DNS_RELEASED = VG_MARK_SLOT_MASK  # a held DNS answer the agent sends into the pod
VG_TAIL_JUDGE = 0  # vg_tail slot: to_pod_judge, a deferred packet's judge (bpf/vethguard.c)
VG_TAIL_TO_POD = 1  # vg_tail slot: to_pod_judged, to_pod's own decision after the judge
VG_TAIL_SLOTS = 2
VG_CB_CLIENT = 0  # skb->cb[] word in which the judge hands the client's ep_id to to_pod_judged
VG_DNS_HELD_MAX = 4096  # frame bytes in a dns_held record; longer frames pass unheld
VG_DNS_NAME_MAX = 256  # bytes of a vg_dns_names value (a name and its NUL)
DNS_HELD_QUERY = 1
DNS_HELD_ANSWER = 2

MAP_NAMES = (
    "vg_endpoints",
    "vg_ipcache4",
    "vg_ipcache6",
    "vg_policy",
    "vg_slots",
    "vg_svc",
    "vg_local",
    "vg_hosteps",
    "vg_failsafe",
    "vg_ct",
    "vg_frag",
    "vg_config",
    "vg_counters",
    "vg_est_counters",
    "vg_evrate",
    "vg_evlost",
    "vg_clock",
    "vg_tail",
    "vg_events",
    "vg_dns_learned",
    "vg_dns_names",
    "vg_dns_state",
    "vg_dns_scratch",
    "vg_dns_held",
)
RING_NAMES = ("vg_events", "vg_dns_held")  # ring buffers: no elements to read through bpf(2) map ops
AGENT_ONLY_MAPS = ("vg_dns_names",)  # pinned with the programs' maps but read by no program


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
    ALLOW_ADMIN = 11  # accepted by an Admin-tier ClusterNetworkPolicy rule
    ALLOW_BASELINE = 12  # accepted by a Baseline-tier ClusterNetworkPolicy rule
    ALLOW_FAILSAFE = 14  # host endpoint: a failsafe port
    ALLOW_PREDNAT = 15  # host endpoint: allowed by a preDNAT policy rule
    ALLOW_HOSTEP = 16  # host endpoint: allowed by a normal/applyOnForward rule, or forwarded and unpoliced
    LOG_CALICO = 17  # an event, never a verdict: a Calico Log rule matched the new flow
    DNS_HELD = 18  # a count, never a verdict: a DNS answer held for the agent (released as a reply)
    DNS_UNHELD = 19  # a count: a DNS answer that passed unheld (agent not releasing, ring full, too long)
    ALLOW_CALICO = 13  # allowed by a rule of Calico's tier (a Calico policy's, or a NetworkPolicy's in it)
    DROP_POLICY = 64
    DROP_MALFORMED = 65
    DROP_FRAG_UNKNOWN = 66
    DROP_REVOKED = 67
    DROP_PENDING = 68
    DROP_NO_ENDPOINT = 69
    DROP_CT_FULL = 70
    DROP_SPOOFED = 71  # source address is not the pod's own
    DROP_DEFERRED_UNKNOWN = 72  # deferred packet whose client endpoint is unknown
    DROP_ADMIN = 73  # denied by an Admin-tier ClusterNetworkPolicy rule
    DROP_BASELINE = 74  # denied by a Baseline-tier ClusterNetworkPolicy rule
    DROP_CALICO = 75  # denied by a Calico Deny rule
    DROP_PREDNAT = 77  # host endpoint: denied by a preDNAT policy rule (original destination)
    DROP_HOSTEP = 78  # host endpoint: denied by a normal or applyOnForward policy rule
    DROP_HOSTEP_END = 79  # host endpoint: no rule allowed traffic to/from the node (or policed forwarded)
    DROP_TAIL_CALL = 80  # a deferred packet to_pod could not tail-call its judge for (vg_tail slot empty)
    DROP_CALICO_END = 76  # Calico's tier selects the pod and none of its rules matched (end of tier)

    @property
    def is_drop(self) -> bool:
        return self >= 64


# vg_est_counters' kinds, in index order (slot * VG_EST_ROW + kind * 2 + dir): what the
# established fast path counts (bpf/lib/conntrack.h, vg_ct_fast)
EST_REASONS = (Reason.ALLOW_CT, Reason.ALLOW_REPLY, Reason.ALLOW_DEFERRED)


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
        ("tier_profile", ctypes.c_uint32),  # TIERED: policy_key.ep_id of its tier entries
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
    _fields_: ClassVar = [
        ("identity", ctypes.c_uint32),
        ("cidr_identity", ctypes.c_uint32),
        ("ns_identity", ctypes.c_uint32),  # a pod address's namespace identity, else 0
    ]


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
        ("admin", ctypes.c_uint8),
        ("baseline", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("rule_ref", ctypes.c_uint32),
        ("admin_rank", ctypes.c_uint32),
        ("admin_ref", ctypes.c_uint32),
        ("baseline_rank", ctypes.c_uint32),
        ("baseline_ref", ctypes.c_uint32),
        ("calico", ctypes.c_uint8),
        ("log", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
        ("calico_rank", ctypes.c_uint32),
        ("calico_ref", ctypes.c_uint32),
        ("log_rank", ctypes.c_uint32),
        ("log_ref", ctypes.c_uint32),
    ]


class HostepInfo(_Struct):
    _fields_: ClassVar = [
        ("flags", ctypes.c_uint32),
        ("profile_host", ctypes.c_uint32),
        ("profile_fwd", ctypes.c_uint32),
        ("profile_pre", ctypes.c_uint32),
    ]


class FailsafeKey(_Struct):
    _fields_: ClassVar = [
        ("port", ctypes.c_uint8 * 2),  # __be16: kept as bytes
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
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
        ("marker", ctypes.c_uint16),
        ("slot", ctypes.c_uint16),  # the endpoint's slot (vg_est_counters' row), 0 = not known yet
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


class DnsState(_Struct):
    _fields_: ClassVar = [
        ("hold_until_ns", ctypes.c_uint64),  # the agent releases held DNS answers until then
        ("reserved", ctypes.c_uint64),
    ]


class DnsLearnedKey(_Struct):
    _fields_: ClassVar = [
        ("ep_id", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("addr", U8x16),
    ]


class DnsLearnedValue(_Struct):
    _fields_: ClassVar = [
        ("expires_ns", ctypes.c_uint64),
        ("identity", ctypes.c_uint32),
        ("name_id", ctypes.c_uint32),
    ]


class DnsName(_Struct):
    _fields_: ClassVar = [("name", ctypes.c_char * VG_DNS_NAME_MAX)]


class DnsHeld(_Struct):
    _fields_: ClassVar = [
        ("ts_ns", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("data", ctypes.c_uint8 * VG_DNS_HELD_MAX),
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


class EvlostState(_Struct):
    _fields_: ClassVar = [("rate_limited", ctypes.c_uint64), ("ring_full", ctypes.c_uint64)]


class ClockCache(_Struct):
    _fields_: ClassVar = [("jiffies", ctypes.c_uint64), ("ns", ctypes.c_uint64)]


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
    "hostep_info": HostepInfo,
    "failsafe_key": FailsafeKey,
    "policy_value": PolicyValue,
    "ct_key": CtKey,
    "ct_value": CtValue,
    "frag_key": FragKey,
    "frag_value": FragValue,
    "config": Config,
    "counter_key": CounterKey,
    "counter_value": CounterValue,
    "flow_event": FlowEvent,
    "dns_state": DnsState,
    "dns_learned_key": DnsLearnedKey,
    "dns_learned_value": DnsLearnedValue,
    "dns_name": DnsName,
    "dns_held": DnsHeld,
    "evrate_state": EvrateState,
    "evlost_state": EvlostState,
    "clock_cache": ClockCache,
}
