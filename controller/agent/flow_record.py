"""One flow event of vg_events as a JSON-able record, with the policy that decided it (pure).

The datapath emits an event for the first packet of every new flow and for every drop
(rate limited per CPU: 1000/s, burst 1000); established packets emit nothing. One connection
between two isolated pods therefore shows up twice when allowed, once per hook (the source's
egress, the destination's ingress), each naming the rule that allowed that half.

The deciding policy of a drop is the policy that isolates the endpoint in that direction (no
rule of any selecting policy matched): `policy` names the first of them and `policies` lists
all. Audit events (ALLOW_AUDIT) name the audit-mode policies the same way. A ClusterNetworkPolicy
rule that accepted or denied (ALLOW_ADMIN, ALLOW_BASELINE, DROP_ADMIN, DROP_BASELINE, and an
established flow a tier cut, DROP_REVOKED) comes with the event's rule reference: `tier`,
`policy` (its name), `rule` and `rule_name` name it. An egress event to an address the pod
learned from a DNS answer (domainNames rules) carries `domain`: the name asked, its domain
class, and when the address expires for new connections.

The agent translates the events it reads (controller.agent.flows) and `vethguard observe`
prints these records (controller.debug.observe).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.compiler.clusterview import DIRECTION_NAMES, ClusterView, rule_policy
from controller.core.net import PROTOCOL_NAMES
from controller.core.verdicts import DIR_EGRESS
from controller.datapath import abi
from controller.datapath.codecs import Event
from controller.datapath.dns_codecs import LearnedEntry

AUDIT_REASONS = {"ALLOW_AUDIT"}
NO_PORTS = {1, 58}  # ICMP / ICMPv6: the "ports" are the echo identifier


def reason_name(code: int) -> str:
    try:
        return abi.Reason(code).name
    except ValueError:
        return f"REASON_{code}"


def proto_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto))


def _time(mono_ns: int, boot_offset_ns: int) -> str:
    when = datetime.fromtimestamp((mono_ns + boot_offset_ns) / 1e9, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def domain_field(view: ClusterView, ev: Event, entry: LearnedEntry, boot_offset_ns: int) -> dict[str, Any]:
    """What the endpoint had learned about the event's destination from DNS (domainNames)."""
    return {
        "name": entry.name,
        "domain": view.identity_text(entry.identity),
        "expires": _time(entry.expires_ns, boot_offset_ns),
        "expired": entry.expires_ns <= ev.ts_ns,  # at the event: only established flows use it then
    }


def record(
    view: ClusterView, ev: Event, boot_offset_ns: int, learned: LearnedEntry | None = None
) -> dict[str, Any]:
    """One JSON-able observe record. boot_offset_ns: wall clock minus CLOCK_MONOTONIC; `learned`:
    the endpoint's vg_dns_learned entry for the destination of an egress event, if any."""
    reason = reason_name(ev.reason)
    verdict = "denied" if ev.reason >= 64 else ("audit" if reason in AUDIT_REASONS else "allowed")
    if reason == "LOG_CALICO":
        verdict = "log"  # a Calico Log rule matched; the flow's own event follows
    endpoint_ip = ev.saddr if ev.dir == DIR_EGRESS else ev.daddr
    endpoint = view.who(endpoint_ip)
    rule = view.rule(ev.rule_ref)
    policies: list[str] = []
    policy: str | None = None
    rule_text = None
    tier = None
    if rule is not None:
        policy = rule_policy(rule)
        policies = [policy]
        rule_text = str(rule)
        tier = rule.tier or "NetworkPolicy"
    elif verdict in ("denied", "audit") and view.pod_by_ip(endpoint_ip) is not None:
        policies = view.isolating(endpoint, ev.dir)
        policy = policies[0] if policies else None
        tier = "NetworkPolicy" if policies else None
    has_ports = ev.proto not in NO_PORTS
    return {
        "time": _time(ev.ts_ns, boot_offset_ns),
        "node": ev.node,
        "direction": DIRECTION_NAMES.get(ev.dir, str(ev.dir)),
        "endpoint": endpoint,
        "from": view.who(ev.saddr),
        "to": view.who(ev.daddr),
        "src_ip": ev.saddr,
        "dst_ip": ev.daddr,
        "sport": ev.sport if has_ports else None,
        "port": ev.dport if has_ports else None,
        "protocol": proto_name(ev.proto),
        "verdict": verdict,
        "reason": reason,
        "tier": tier,
        "policy": policy,
        "policies": policies,
        "rule": rule_text,
        "rule_name": (rule.name or None) if rule is not None else None,
        "rule_ref": ev.rule_ref,
        "ep_id": ev.ep_id,  # the endpoint's ifindex (a pod's veth, or a host endpoint's interface)
        "host_endpoint": None,  # named by the debug views (controller.debug.observe)
        "policy_set": None,
        "peer_identity": ev.peer_identity,
        "peer_labels": view.identity_text(ev.peer_identity),
        "domain": domain_field(view, ev, learned, boot_offset_ns) if learned is not None else None,
    }
