"""`vethguard bpf ...`: the maps of a node as rows, numbers translated through the compiled
view of the cluster (pure: a KernelState in, dict rows out; text columns are chosen by cli).

Policy entry counters come from conntrack, not from the datapath: every allowed new flow gets a
CT entry holding its packets and bytes (both directions, as seen at that endpoint's hooks), and
each CT entry is attributed to the policy entry the same longest-prefix lookup selects. So the
figures cover the flows tracked right now (entries expire: TCP 6 h after the reply, 10 s after
FIN/RST, others 60 s idle), and cost the datapath nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from controller.agent.flow_record import reason_name as reason_name
from controller.compiler.clusterview import DIRECTION_NAMES, ClusterView, rule_policy
from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.core import verdicts
from controller.core.identities import ID_ANY, ID_WORLD
from controller.core.net import IPNetwork
from controller.core.verdicts import DIR_EGRESS
from controller.datapath import abi
from controller.datapath.dns_codecs import LearnedEntry
from controller.datapath.readback import KernelState
from controller.debug.render import port_range, proto_name
from controller.debug.verdict_model import policy_lpm

Row = dict[str, Any]

FLAG_NAMES = (
    (abi.EP_F_INGRESS_ISOLATED, "ingress-isolated"),
    (abi.EP_F_EGRESS_ISOLATED, "egress-isolated"),
    (abi.EP_F_INGRESS_AUDIT, "ingress-audit"),
    (abi.EP_F_EGRESS_AUDIT, "egress-audit"),
    (abi.EP_F_AUDIT, "audit"),
    (abi.EP_F_PENDING, "pending"),
    (abi.EP_F_INGRESS_TIERED, "ingress-tiered"),
    (abi.EP_F_EGRESS_TIERED, "egress-tiered"),
    (abi.EP_F_DNS, "dns"),
)

NP_VERDICTS = {verdicts.VERDICT_ALLOW: "allow", verdicts.VERDICT_DENY: "deny"}
SEEN_NAMES = ((abi.CT_SEEN_REPLY, "reply"), (abi.CT_SEEN_FIN, "fin"), (abi.CT_SEEN_RST, "rst"))


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]


def endpoint_pods(view: ClusterView, state: KernelState) -> dict[int, str]:
    """ep_id -> pod key, by the addresses stored in the endpoint entries."""
    out: dict[int, str] = {}
    for ep in state.endpoints.values():
        for ip in (ep.ipv4, ep.ipv6):
            pod = view.pod_by_ip(ip) if ip else None
            if pod is not None:
                out[ep.ep_id] = pod.key
                break
    return out


def _ep_name(pods: Mapping[int, str], ep_id: int) -> str:
    return pods.get(ep_id, f"ep{ep_id}")


def rule_text(view: ClusterView, ref: int) -> tuple[str | None, str | None]:
    """(policy: ns/name or a ClusterNetworkPolicy's name, rule like ingress[0] or, for a
    ClusterNetworkPolicy's named rule, ingress[0] (name)) of a rule reference; (None, None) for 0."""
    if not ref:
        return None, None
    rule = view.rule(ref)
    if rule is None:
        return None, f"unknown-rule({ref:#x})"
    named = f" ({rule.name})" if rule.name else ""
    return rule_policy(rule), f"{DIRECTION_NAMES[rule.direction]}[{rule.index}]{named}"


def tier_fields(view: ClusterView, tier: str, action: int, rank: int, ref: int) -> Row:
    """One tier's answer of a policy entry: action, rank, rule (None when the tier has none)."""
    if action == verdicts.TIER_NONE:
        return {
            tier: None,
            f"{tier}_rank": None,
            f"{tier}_policy": None,
            f"{tier}_rule": None,
            f"{tier}_ref": 0,
        }
    policy, rule = rule_text(view, ref)
    return {
        tier: verdicts.TIER_ACTION_NAMES.get(action, str(action)),
        f"{tier}_rank": rank,
        f"{tier}_policy": policy,
        f"{tier}_rule": rule,
        f"{tier}_ref": ref,
    }


def tier_cell(row: Row, tier: str) -> str | None:
    """`Deny(rank 2) protect-x-a ingress[2] (deny-others)` for the text table."""
    if row.get(tier) is None:
        return None
    return f"{row[tier]}(rank {row[tier + '_rank']}) {row[tier + '_policy']} {row[tier + '_rule']}"


def endpoint_rows(view: ClusterView, node: str, state: KernelState) -> list[Row]:
    pods = endpoint_pods(view, state)
    entries: dict[int, int] = {}
    for ep_id, _ in state.policy:
        entries[ep_id] = entries.get(ep_id, 0) + 1
    rows = []
    for ifindex, ep in sorted(state.endpoints.items()):
        pod = pods.get(ep.ep_id)
        rows.append(
            {
                "node": node,
                "ifindex": ifindex,
                "pod": pod,
                "identity": ep.identity,
                "labels": view.identity_text(ep.identity) if ep.identity else None,
                "flags": flag_names(ep.flags),
                "ipv4": ep.ipv4,
                "ipv6": ep.ipv6,
                "policy_entries": entries.get(ep.ep_id, 0),
                "isolated_ingress_by": view.isolating(pod, 0) if pod else [],
                "isolated_egress_by": view.isolating(pod, 1) if pod else [],
            }
        )
    return rows


def identity_rows(view: ClusterView, node: str, state: KernelState) -> list[Row]:
    in_ipcache: set[int] = set()
    for ident, cidr, ns_ident in state.ipcache.values():
        in_ipcache.add(ident)
        if cidr:
            in_ipcache.add(cidr)
        if ns_ident:
            in_ipcache.add(ns_ident)
    refs: dict[int, int] = {}
    for _, key in state.policy:
        refs[key.identity] = refs.get(key.identity, 0) + 1
    idents = sorted(set(view.compiled.identities) | in_ipcache | set(refs) | {ID_ANY})
    rows = []
    for ident in idents:
        info = view.compiled.identities.get(ident)
        rows.append(
            {
                "node": node,
                "identity": ident,
                "kind": info.kind if info else "unknown",
                "meaning": view.identity_text(ident),
                "pods": view.identity_pods(ident),
                "in_ipcache": ident in in_ipcache,
                "policy_entries": refs.get(ident, 0),
            }
        )
    return rows


def ipcache_rows(view: ClusterView, node: str, state: KernelState) -> list[Row]:
    rows = []
    for net, (ident, cidr, ns_ident) in sorted(state.ipcache.items(), key=lambda kv: (kv[0].version, kv[0])):
        single = net.prefixlen == net.max_prefixlen
        rows.append(
            {
                "node": node,
                "prefix": str(net),
                "identity": ident,
                "meaning": view.who(str(net.network_address)) if single else view.identity_text(ident),
                "labels": view.identity_text(ident),
                "cidr_identity": cidr,
                "cidr": view.identity_text(cidr) if cidr else None,
                "ns_identity": ns_ident,
                "namespace": view.identity_text(ns_ident) if ns_ident else None,
            }
        )
    return rows


def _ipcache_lpm(ipcache: Mapping[IPNetwork, tuple[int, int, int]], addr: str) -> tuple[int, int, int]:
    a = ipaddress.ip_address(addr)
    for plen in range(a.max_prefixlen, -1, -1):
        hit = ipcache.get(ipaddress.ip_network(f"{a}/{plen}", strict=False))
        if hit is not None:
            return hit
    return (ID_WORLD, 0, 0)


def ct_attribution(state: KernelState, now_ns: int) -> dict[tuple[int, PolicyEntryKey], tuple[int, int, int]]:
    """(ep_id, policy key) -> (flows, packets, bytes) of the live CT entries each entry allowed."""
    per_ep: dict[int, dict[PolicyEntryKey, PolicyEntryValue]] = {}
    for (ep_id, key), value in state.policy.items():
        per_ep.setdefault(ep_id, {})[key] = value
    out: dict[tuple[int, PolicyEntryKey], tuple[int, int, int]] = {}
    for ct in state.ct:
        if ct.state != abi.CT_ALLOWED or not ct.rule_ref or ct.expires_ns <= now_ns:
            continue
        entries = per_ep.get(ct.ep_id)
        if not entries:
            continue
        peer = ct.daddr if ct.dir == DIR_EGRESS else ct.saddr
        # (NetworkPolicy's entries only: their rule_ref; they have no namespace keys)
        ident, cidr, _ = _ipcache_lpm(state.ipcache, peer)
        port = 0 if ct.proto in (1, 58) else ct.dport
        for level in (ident, *([cidr] if cidr else []), ID_ANY):
            hit = policy_lpm(entries, ct.dir, level, ct.proto, port)
            if hit is not None:
                k = (ct.ep_id, hit[0])
                flows, pk, by = out.get(k, (0, 0, 0))
                out[k] = (flows + 1, pk + ct.packets, by + ct.bytes)
                break
    return out


def policy_rows(
    view: ClusterView, node: str, state: KernelState, now_ns: int, pod: str | None = None
) -> list[Row]:
    pods = endpoint_pods(view, state)
    # A tier profile's entries (keyed by its id, TIER_PROFILE_BIT set) belong to every endpoint
    # that uses it: shown as "tier-profile 0x...", or as the pod's own rows when asking for one.
    users: dict[int, list[str]] = {}
    for ep in state.endpoints.values():
        if ep.tier_profile:
            users.setdefault(ep.tier_profile, []).append(_ep_name(pods, ep.ep_id))
    counts = ct_attribution(state, now_ns)
    rows = []
    for (ep_id, key), value in sorted(
        state.policy.items(), key=lambda kv: (_ep_name(pods, kv[0][0]), kv[0][1])
    ):
        profile = ep_id & verdicts.TIER_PROFILE_BIT
        name = _ep_name(pods, ep_id)
        if profile:  # a home no endpoint uses is a spare copy (controller/datapath/profile_homes.py)
            name = f"tier-profile {ep_id:#x}" + ("" if ep_id in users else " (spare)")
        if pod is not None:
            if (pod not in users.get(ep_id, ())) if profile else name != pod:
                continue
            name = pod
        policy, rule = rule_text(view, value.rule_ref)
        flows, packets, nbytes = counts.get((ep_id, key), (0, 0, 0))
        rows.append(
            {
                "node": node,
                "pod": name,
                "direction": DIRECTION_NAMES.get(key.direction, str(key.direction)),
                "peer_identity": key.identity,
                "peer": view.identity_text(key.identity),
                "protocol": proto_name(key.proto),
                "ports": port_range(key.port, key.port_plen) if key.proto else "*",
                # NetworkPolicy's answer: allow, or None (no NetworkPolicy rule allows it)
                "verdict": {verdicts.VERDICT_ALLOW: "allow", verdicts.VERDICT_DENY: "deny"}.get(
                    value.verdict
                ),
                "policy": policy,
                "rule": rule,
                "rule_ref": value.rule_ref,
                "tier_profile": ep_id if profile else 0,
                **tier_fields(view, "admin", value.admin, value.admin_rank, value.admin_ref),
                **tier_fields(view, "baseline", value.baseline, value.baseline_rank, value.baseline_ref),
                **tier_fields(view, "calico", value.calico, value.calico_rank, value.calico_ref),
                "log_rule": rule_text(view, value.log_ref)[1] if value.log else None,
                "flows": flows,
                "packets": packets,
                "bytes": nbytes,
            }
        )
    return rows


def ct_rows(view: ClusterView, node: str, state: KernelState, now_ns: int) -> list[Row]:
    pods = endpoint_pods(view, state)
    rows = []
    for ct in sorted(state.ct, key=lambda c: (c.ep_id, c.dir, c.saddr, c.sport, c.daddr, c.dport)):
        policy, rule = rule_text(view, ct.rule_ref)
        rows.append(
            {
                "node": node,
                "pod": _ep_name(pods, ct.ep_id),
                "direction": DIRECTION_NAMES.get(ct.dir, str(ct.dir)),
                "protocol": proto_name(ct.proto),
                "from": view.who(ct.saddr),
                "src": f"{_hostport(ct.saddr, ct.sport)}",
                "to": view.who(ct.daddr),
                "dst": f"{_hostport(ct.daddr, ct.dport)}",
                # An expired entry stays in the LRU map until reused; the datapath ignores it.
                "state": "expired"
                if ct.expires_ns <= now_ns
                else {
                    abi.CT_ALLOWED: "allowed after DNAT" if ct.nat else "allowed",
                    abi.CT_DENIED: "revoked",
                    abi.CT_DEFERRED: "deferred to DNAT",
                }.get(ct.state, str(ct.state)),
                "seen": [n for bit, n in SEEN_NAMES if ct.seen & bit],
                "expires_in_s": round((ct.expires_ns - now_ns) / 1e9, 1),
                "packets": ct.packets,
                "bytes": ct.bytes,
                "policy": policy,
                "rule": rule,
                "revision": ct.revision,
            }
        )
    return rows


def counter_rows(
    view: ClusterView, node: str, state: KernelState, counters: Mapping[tuple[int, int, int], tuple[int, int]]
) -> list[Row]:
    pods = endpoint_pods(view, state)
    rows = []
    for (ep_id, reason, direction), (packets, nbytes) in sorted(
        counters.items(), key=lambda kv: (_ep_name(pods, kv[0][0]), kv[0][2], kv[0][1])
    ):
        rows.append(
            {
                "node": node,
                "pod": _ep_name(pods, ep_id),
                "direction": DIRECTION_NAMES.get(direction, str(direction)),
                "reason": reason_name(reason),
                "drop": reason >= 64,
                "packets": packets,
                "bytes": nbytes,
            }
        )
    return rows


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def expiry_text(seconds: float) -> str:
    """`25s`, or `expired 3s ago`."""
    return f"{seconds:.0f}s" if seconds > 0 else f"expired {-seconds:.0f}s ago"


def dns_rows(
    view: ClusterView, node: str, state: KernelState, entries: list[LearnedEntry], now_ns: int
) -> list[Row]:
    """vg_dns_learned: the addresses pods learned from DNS answers for domainNames rules, with the
    name asked, the domain class it counts for and the time left for new connections (negative:
    expired; only flows already established still use it)."""
    pods = endpoint_pods(view, state)
    by_id = {ep.ep_id: ep for ep in state.endpoints.values()}
    rows = []
    for e in entries:
        left = (e.expires_ns - now_ns) / 1e9
        rows.append(
            {
                "node": node,
                "pod": _ep_name(pods, e.ep_id),
                "ep_id": e.ep_id,
                "address": e.address,
                "name": e.name,
                "domain": view.identity_text(e.identity),
                "domain_identity": e.identity,
                "expires_in_s": round(left, 1),
                "expired": left <= 0,
                "endpoint_present": e.ep_id in by_id,
            }
        )
    return rows
