"""`vethguard observe`: flow events of the vg_events ring buffers, translated (pure part).

The datapath emits an event for the first packet of every new flow and for every drop
(rate limited per CPU: 1000/s, burst 1000); established packets emit nothing. One connection
between two isolated pods therefore shows up twice when allowed, once per hook (the source's
egress, the destination's ingress), each naming the rule that allowed that half.

The deciding policy of a drop is the policy that isolates the endpoint in that direction (no
rule of any selecting policy matched): `policy` names the first of them and `policies` lists
all. Audit events (ALLOW_AUDIT) name the audit-mode policies the same way. A ClusterNetworkPolicy
rule that accepted or denied (ALLOW_ADMIN, ALLOW_BASELINE, DROP_ADMIN, DROP_BASELINE, and an
established flow a tier cut, DROP_REVOKED) comes with the event's rule reference: `tier`,
`policy` (its name), `rule` and `rule_name` name it.

An event of a Calico host endpoint (its ep_id is the ifindex of a node interface with a
vg_hosteps entry, or its reason is one only host endpoints report) is named for the interface:
`endpoint` "node/<node>:<interface>", `host_endpoint` the HostEndpoint, `policy_set` the set
that decided (failsafe, preDNAT, normal, applyOnForward, default deny, unpoliced), `tier`
"Calico"; its rule comes from the rule reference as for pods; Calico's default deny
(DROP_HOSTEP_END) names the policies that select the host endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controller.core.verdicts import DIR_EGRESS
from controller.datapath.codecs import Event
from controller.debug import hostep
from controller.debug.bpfview import reason_name
from controller.debug.render import proto_name
from controller.debug.view import DIRECTION_NAMES, ClusterView, rule_policy

AUDIT_REASONS = {"ALLOW_AUDIT"}
NO_PORTS = {1, 58}  # ICMP / ICMPv6: the "ports" are the echo identifier


# (node, ifindex) -> (host endpoint or None when unknown, interface name) of vg_hosteps entries
HostEndpoints = Mapping[tuple[str, int], tuple[str | None, str]]


def record(
    view: ClusterView, ev: Event, boot_offset_ns: int, host_endpoints: HostEndpoints | None = None
) -> dict[str, Any]:
    """One JSON-able observe record. boot_offset_ns: wall clock minus CLOCK_MONOTONIC;
    host_endpoints: the nodes' host endpoint interfaces (events there are named for them)."""
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
    hep = (host_endpoints or {}).get((ev.node, ev.ep_id))
    if hep is None and reason in hostep.HEP_REASON_SETS:
        hep = (None, f"if{ev.ep_id}")
    policy_set = None
    if hep is not None:
        endpoint = hostep.endpoint_name(ev.node, hep[1])
        tier = "Calico" if rule is not None or reason == "DROP_HOSTEP_END" else None
        if ev.node in view.cluster.nodes:
            desired = view.desired(ev.node)
            policy_set = hostep.hep_policy_set(
                desired, reason, ev.dir, ev.saddr, ev.daddr, ev.proto, ev.dport, ev.rule_ref
            )
            known = desired.host_endpoints.get(hep[0]) if hep[0] else None
            if rule is None and reason == "DROP_HOSTEP_END" and known is not None:
                policies = list(known.policies)
                policy = policies[0] if policies else None
    elif rule is None and verdict in ("denied", "audit") and view.pod_by_ip(endpoint_ip) is not None:
        policies = view.isolating(endpoint, ev.dir)
        policy = policies[0] if policies else None
        tier = "NetworkPolicy" if policies else None
    when = datetime.fromtimestamp((ev.ts_ns + boot_offset_ns) / 1e9, UTC)
    has_ports = ev.proto not in NO_PORTS
    return {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
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
        "host_endpoint": hep[0] if hep is not None else None,
        "policy_set": policy_set,
        "policy": policy,
        "policies": policies,
        "rule": rule_text,
        "rule_name": (rule.name or None) if rule is not None else None,
        "rule_ref": ev.rule_ref,
        "peer_identity": ev.peer_identity,
        "peer_labels": view.identity_text(ev.peer_identity),
    }


def matches(rec: dict[str, Any], pods: Sequence[str], verdicts: Sequence[str]) -> bool:
    if pods and rec["from"] not in pods and rec["to"] not in pods:
        return False
    return not verdicts or rec["verdict"] in verdicts


def line(rec: dict[str, Any]) -> str:
    """One human line, hubble-like: time node from -> to proto verdict (reason, where) policy."""

    def hp(who: str, port: int | None) -> str:
        return who if port is None else f"{who}:{port}"

    t = rec["time"][11:23]
    where = f"{rec['direction']} of {rec['endpoint']}"
    text = (
        f"{t}  {rec['node']}  {hp(rec['from'], rec['sport'])} -> {hp(rec['to'], rec['port'])}  "
        f"{rec['protocol']}  {rec['verdict'].upper()}  ({rec['reason']} at {where})"
    )
    if rec.get("policy_set"):
        text += f"  [{rec['policy_set']}]"
    if rec["rule"]:
        text += f"  by {rec['rule']}"
    elif rec.get("host_endpoint") is not None and rec["policies"]:
        text += f"  host endpoint {rec['host_endpoint']} selected by {', '.join(rec['policies'])}"
    elif rec["policies"]:
        text += f"  isolated by {', '.join(rec['policies'])}"
    return text
