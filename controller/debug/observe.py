"""`vethguard observe`: flow records (controller.agent.flow_record) filtered, named and printed
(pure part). The records come from the agents' flow servers (controller.agent.flow_server), or
from the ring buffers themselves where no agent serves them (controller.datapath.ringbuf).

An event of a Calico host endpoint (its ep_id is the ifindex of a node interface with a
vg_hosteps entry, or its reason is one only host endpoints report) is named here, for the
interface: `endpoint` "node/<node>:<interface>", `host_endpoint` the HostEndpoint, `policy_set`
the set that decided (failsafe, preDNAT, normal, applyOnForward, default deny, unpoliced), `tier`
"Calico"; its rule comes from the rule reference as for pods; Calico's default deny
(DROP_HOSTEP_END) names the policies that select the host endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.agent import flow_record
from controller.compiler.clusterview import DIRECTION_NAMES, ClusterView
from controller.core.net import PROTOCOL_NUMBERS
from controller.datapath.codecs import Event
from controller.debug import hostep

# (node, ifindex) -> (host endpoint or None when unknown, interface name) of vg_hosteps entries
HostEndpoints = Mapping[tuple[str, int], tuple[str | None, str]]
_DIRECTIONS = {name: d for d, name in DIRECTION_NAMES.items()}


def record(
    view: ClusterView, ev: Event, boot_offset_ns: int, host_endpoints: HostEndpoints | None = None
) -> dict[str, Any]:
    """One JSON-able observe record (the agent's translation), named for its host endpoint when
    it is one's."""
    return name_host_endpoint(flow_record.record(view, ev, boot_offset_ns), view, host_endpoints or {})


def name_host_endpoint(
    rec: dict[str, Any], view: ClusterView, host_endpoints: HostEndpoints
) -> dict[str, Any]:
    """The record with a host endpoint's naming (module docstring) when its event is one's."""
    node, ep_id, reason = rec["node"], rec.get("ep_id"), rec["reason"]
    hep = host_endpoints.get((node, ep_id)) if isinstance(ep_id, int) else None
    if hep is None and reason in hostep.HEP_REASON_SETS:
        hep = (None, f"if{ep_id}")
    if hep is None:
        return rec
    out = dict(rec)
    out["endpoint"] = hostep.endpoint_name(node, hep[1])
    out["host_endpoint"] = hep[0]
    out["tier"] = "Calico" if rec["rule"] is not None or reason == "DROP_HOSTEP_END" else None
    out["policy_set"] = None
    if node in view.cluster.nodes:
        desired = view.desired(node)
        out["policy_set"] = hostep.hep_policy_set(
            desired,
            reason,
            _DIRECTIONS.get(rec["direction"], 0),
            rec["src_ip"],
            rec["dst_ip"],
            PROTOCOL_NUMBERS.get(str(rec["protocol"]).upper(), 0),
            rec["port"] or 0,
            rec["rule_ref"],
        )
        known = desired.host_endpoints.get(hep[0]) if hep[0] else None
        if rec["rule"] is None and reason == "DROP_HOSTEP_END" and known is not None:
            out["policies"] = list(known.policies)
            out["policy"] = out["policies"][0] if out["policies"] else None
    return out


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
    dom = rec.get("domain")
    if dom:  # learned from DNS (domainNames)
        until = "expired" if dom["expired"] else f"until {dom['expires'][11:19]}"
        text += f"  [dns {dom['name'] or '?'} {dom['domain']} {until}]"
    if rec["rule"]:
        text += f"  by {rec['rule']}"
    elif rec.get("host_endpoint") is not None and rec["policies"]:
        text += f"  host endpoint {rec['host_endpoint']} selected by {', '.join(rec['policies'])}"
    elif rec["policies"]:
        text += f"  isolated by {', '.join(rec['policies'])}"
    if (rec.get("count") or 1) > 1:  # an agent's record of repeats (controller.agent.flows)
        text += f"  x{rec['count']} until {rec['last_time'][11:23]}"
    return text
