"""`vethguard explain`'s host endpoint half (pure; the live lookup is passed in): when the
destination is an address of a node with Calico host endpoints (one of its addresses, or a
Service frontend there: a NodePort on its address, a LoadBalancer or external IP), the decision
of each such host endpoint on arrival (controller.debug.hostep_model), with the policy set,
policy and rule named, and cross-checked against the node's live vg_hosteps / vg_policy.

The packet arrives through one interface; which one is the network's business, so every host
endpoint of the node that could carry it is shown (those whose expectedIPs hold the
destination, else all of the node's) and each must let it in. A LoadBalancer or external IP is
a frontend on every node: each node's host endpoints are shown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.compiler.clusterview import ClusterView, rule_json, rule_policy
from controller.compiler.desired_state import NodeDesired, RuleRef
from controller.core.verdicts import DIR_INGRESS
from controller.debug import hostep_model as hm
from controller.debug.kernel import LiveHalf
from controller.debug.render import port_range, proto_name

# (node, host endpoint, direction, src, dst, proto, port) -> the live maps' answers, one per
# interface carrying that host endpoint ((interface, answer)), or None: not visible from here
HepLiveLookup = Callable[[str, str, int, str, str, int, int], list[tuple[str, LiveHalf]] | None]


@dataclass
class HostHalf:
    node: str
    host_endpoint: str
    interface: str | None  # the HostEndpoint's interfaceName ("*": every uplink; None: by expectedIPs)
    verdict: hm.HepVerdict
    text: str
    kernel: list[tuple[str, LiveHalf]] | None = None
    kernel_error: str | None = None
    mismatch: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict.allowed

    @property
    def rule(self) -> RuleRef | None:
        return self.verdict.rule

    def as_json(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "node": self.node,
            "host_endpoint": self.host_endpoint,
            "interface": self.interface,
            "endpoint": f"node/{self.node}:{self.interface or '?'}",
            "direction": "ingress",
            "allowed": v.allowed,
            "reason": v.reason,
            "traffic": v.traffic,
            "policy_set": v.policy_set,
            "default_deny_of": v.default_deny_of,
            "tier": "Calico",
            "policy": rule_policy(v.rule) if v.rule else None,
            "policies": list(v.policies),
            "rule": rule_json(v.rule) if v.rule else None,
            "rule_index": v.rule.index if v.rule else None,
            "action": v.rule.name if v.rule else None,
            "rule_ref": v.rule_ref,
            "peer": v.peer,
            "peer_identity": v.peer_identity,
            "peer_cidr_identity": v.peer_cidr_identity,
            "text": self.text,
            "kernel": None
            if self.kernel is None
            else [
                {"interface": i, "allowed": k.allowed, "reason": k.reason, "rule_ref": k.rule_ref}
                for i, k in self.kernel
            ],
            "kernel_error": self.kernel_error,
            "mismatch": self.mismatch,
        }


def rule_text(rule: RuleRef) -> str:
    """GlobalNetworkPolicy deny-nodeports ingress[0]: Deny"""
    d = "ingress" if rule.direction == DIR_INGRESS else "egress"
    return f"{rule.kind or 'NetworkPolicy'} {rule_policy(rule)} {d}[{rule.index}]: {rule.name}"


def hep_text(view: ClusterView, v: hm.HepVerdict, port: int) -> str:
    """`preDNAT: GlobalNetworkPolicy deny-nodeports ingress[0]: Deny (...)` and the like."""
    if v.reason == hm.ALLOW_FAILSAFE:
        return f"allowed: failsafe port {port} ({v.traffic}; no policy can close it)"
    if v.policy_set == hm.SET_UNPOLICED:
        return f"allowed: {v.traffic} and no applyOnForward policy selects the host endpoint"
    if v.policy_set == hm.SET_DEFAULT_DENY:
        which = "normal" if v.default_deny_of == hm.SET_NORMAL else "applyOnForward"
        by = ", ".join(v.policies) or "no policy"
        return (
            f"denied: {v.traffic}, no {which} policy rule allows it: Calico's default deny of a host "
            f"endpoint (selected by {by})"
        )
    assert v.rule is not None
    m = v.matched
    what = (
        "any port and protocol"
        if m is None or not m.proto
        else f"{proto_name(m.proto)} {port_range(m.port, m.port_plen)}"
    )
    peer = "any peer" if m is not None and m.identity == 0 else view.identity_text(m.identity if m else 0)
    verb = "allowed" if v.allowed else "denied"
    return f"{verb} ({v.traffic}): {v.policy_set}: {rule_text(v.rule)} (peer {peer}, {what})"


def _candidates(desired: NodeDesired, dst: str) -> list[str]:
    by_ip = [
        n
        for n, h in sorted(desired.host_endpoints.items())
        if dst in {str(ipaddress.ip_address(a)) for a in h.expected_ips}
    ]
    return by_ip or sorted(desired.host_endpoints)


def entrance_nodes(view: ClusterView, dst: str, proto: int, port: int) -> list[str]:
    """The nodes with host endpoints where dst is the node itself or one of its frontends."""
    out = []
    for node in sorted(view.cluster.nodes):
        d = view.desired(node)
        if not d.host_endpoints:
            continue
        mine = dst in {str(ipaddress.ip_address(a)) for a in d.host_addresses}
        front = any(fe.address == dst and fe.proto == proto and fe.port == port for fe in d.frontends)
        if mine or front:
            out.append(node)
    return out


def host_halves(
    view: ClusterView,
    src: str,
    src_node: str | None,
    dst: str,
    proto: int,
    port: int,
    live: HepLiveLookup | None = None,
    behind: dict[str, str] | None = None,
    notes: list[str] | None = None,
) -> list[HostHalf]:
    """The host endpoint halves of src -> dst:port (module docstring). `src_node`: the node of
    a source pod (its traffic to its own node does not cross the node's interfaces)."""
    out: list[HostHalf] = []
    for node in entrance_nodes(view, dst, proto, port):
        if node == src_node:
            if notes is not None:
                notes.append(f"a pod's traffic to its own node {node} does not cross its host endpoints")
            continue
        desired = view.desired(node)
        for name in _candidates(desired, dst):
            v = hm.host_endpoint_verdict(desired, name, DIR_INGRESS, src, dst, proto, port)
            half = HostHalf(node, name, desired.host_endpoints[name].interface, v, hep_text(view, v, port))
            if live is not None:
                _check(view, half, src, dst, proto, port, live, (behind or {}).get(node), notes)
            out.append(half)
    return out


def _check(
    view: ClusterView,
    half: HostHalf,
    src: str,
    dst: str,
    proto: int,
    port: int,
    live: HepLiveLookup,
    behind: str | None,
    notes: list[str] | None,
) -> None:
    where = f"host endpoint {half.host_endpoint} on {half.node}"
    try:
        answers = live(half.node, half.host_endpoint, DIR_INGRESS, src, dst, proto, port)
    except Exception as exc:  # a missing pin or entry is itself worth reporting
        half.kernel_error = str(exc)
        half.mismatch = f"{where}: live lookup failed: {exc}"
        return
    if answers is None:
        if notes is not None:
            notes.append(f"the maps of {half.node} are not visible from here: {where} not checked")
        return
    half.kernel = answers
    v = half.verdict
    if not answers:
        half.mismatch = f"{where}: no vg_hosteps entry carries it (not placed on any uplink?)"
    for iface, k in answers:
        if (k.allowed, k.reason, k.rule_ref) != (v.allowed, v.reason, v.rule_ref):
            krule = view.rule(k.rule_ref)
            half.mismatch = (
                f"{where} ({iface}): compiled state says {v.reason}{' ' + str(v.rule) if v.rule else ''}, "
                f"live maps say {k.reason}{' ' + str(krule) if krule else ''}"
                + (f" [{behind}]" if behind else "")
            )


def host_lines(halves: list[HostHalf]) -> list[str]:
    lines = []
    for h in halves:
        iface = {None: "by expectedIPs", "*": "every uplink"}.get(h.interface, h.interface)
        lines.append(f"  host endpoint {h.host_endpoint} ({iface} on {h.node}): {h.text}")
    return lines
