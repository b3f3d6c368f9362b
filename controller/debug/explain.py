"""`vethguard explain FROM TO --port P`: the verdict of a new connection in both directions,
with the deciding policies and rules, from the compiled state of the cluster (controller.debug.verdict_model)
and cross-checked against the same lookup made in the node's live maps (pure here: the live
lookup is passed in as a function).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.compiler.clusterview import DIRECTION_NAMES, ClusterView, rule_json, rule_policy
from controller.compiler.desired_state import PolicyEntryKey, RuleRef
from controller.core.errors import VethguardError
from controller.core.verdicts import DIR_INGRESS
from controller.datapath.dns_codecs import LearnedEntry
from controller.debug import explain_hep, verdict_model
from controller.debug.kernel import LiveHalf
from controller.debug.render import port_range, proto_name

# (node, endpoint address, direction, peer address, proto, port) -> the live maps' answer
LiveLookup = Callable[[str, str, int, str, int, int], LiveHalf | None]
# (node, endpoint address, peer address) -> what the endpoint learned about the peer from DNS
# (LookupError: that node's maps are not visible from here)
LearnedLookup = Callable[[str, str, str], LearnedEntry | None]


@dataclass(frozen=True)
class Side:
    spec: str  # as given
    name: str  # pod key or the IP
    pod: str | None
    address: str
    node: str | None


@dataclass
class Half:
    direction: int
    endpoint: str | None
    node: str | None
    allowed: bool
    reason: str
    policies: list[str]  # the deciding policies
    rule: str | None  # the deciding rule: "ns/name ingress[0]", "Admin:name ingress[0] (rule name)"
    rule_ref: int
    isolated_by: list[str]
    peer: str
    peer_identity: int
    peer_labels: str
    text: str
    deciding: RuleRef | None = None
    tier: str | None = None  # "Admin", "NetworkPolicy", "Baseline": the tier that decided, if any
    action: str | None = None  # the deciding rule's action: Accept / Deny (tiers), Allow (NetworkPolicy)
    passed: tuple[RuleRef, ...] = ()  # the tiers' Pass rules that handed the decision on
    kernel: LiveHalf | None = None
    kernel_error: str | None = None
    mismatch: str | None = None
    domain: dict[str, Any] | None = None  # egress: what the pod learned about the peer from DNS

    def as_json(self) -> dict[str, Any]:
        d = self.deciding
        return {
            "direction": DIRECTION_NAMES[self.direction],
            "endpoint": self.endpoint,
            "node": self.node,
            "allowed": self.allowed,
            "reason": self.reason,
            "tier": self.tier,
            "policy": rule_policy(d) if d else (self.policies[0] if self.policies else None),
            "policies": self.policies,
            "rule": self.rule,
            "rule_index": d.index if d else None,
            "rule_name": (d.name or None) if d else None,
            "action": self.action,
            "passed": [rule_json(r) for r in self.passed],
            "isolated_by": self.isolated_by,
            "peer": self.peer,
            "peer_identity": self.peer_identity,
            "peer_labels": self.peer_labels,
            "kernel": None
            if self.kernel is None
            else {
                "allowed": self.kernel.allowed,
                "reason": self.kernel.reason,
                "rule_ref": self.kernel.rule_ref,
                "passed_refs": list(self.kernel.passed),
            },
            "kernel_error": self.kernel_error,
            "mismatch": self.mismatch,
            "domain": self.domain,
        }


@dataclass
class Explanation:
    src: Side
    dst: Side
    protocol: str
    port: int
    family: int
    egress: Half
    ingress: Half
    same_pod: bool
    notes: list[str] = field(default_factory=list)
    host: list[explain_hep.HostHalf] = field(default_factory=list)  # host endpoints on arrival

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed and all(h.allowed for h in self.host)

    @property
    def mismatches(self) -> list[str]:
        pods = [h.mismatch for h in (self.egress, self.ingress) if h.mismatch]
        return pods + [h.mismatch for h in self.host if h.mismatch]

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.src.name,
            "to": self.dst.name,
            "from_ip": self.src.address,
            "to_ip": self.dst.address,
            "protocol": self.protocol,
            "port": self.port,
            "family": self.family,
            "allowed": self.allowed,
            "egress": self.egress.as_json(),
            "ingress": self.ingress.as_json(),
            "host_endpoints": [h.as_json() for h in self.host],
            "same_pod": self.same_pod,
            "kernel_agrees": not self.mismatches,
            "notes": self.notes,
        }


def resolve(view: ClusterView, spec: str, family: int | None) -> Side:
    try:
        addr = ipaddress.ip_address(spec)
    except ValueError:
        addr = None
    if addr is not None:
        pod = view.pod_by_ip(str(addr))
        if pod is not None:
            return Side(spec, pod.key, pod.key, str(addr), pod.node)
        return Side(spec, str(addr), None, str(addr), None)
    pod = view.cluster.pods.get(spec)
    if pod is None or not pod.active:
        raise VethguardError(f"{spec}: no such pod (give NAMESPACE/POD or an IP address)")
    fam = family or 4
    ip = pod.ipv4 if fam == 4 else pod.ipv6
    if ip is None:
        raise VethguardError(f"{spec} has no IPv{fam} address")
    return Side(spec, pod.key, pod.key, ip, pod.node)


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


TIER_REASONS = {
    verdict_model.ALLOW_ADMIN: ("Admin", "Accept"),
    verdict_model.DROP_ADMIN: ("Admin", "Deny"),
    verdict_model.ALLOW_BASELINE: ("Baseline", "Accept"),
    verdict_model.DROP_BASELINE: ("Baseline", "Deny"),
    verdict_model.ALLOW_CALICO: ("Calico", "Allow"),
    verdict_model.DROP_CALICO: ("Calico", "Deny"),
}


def _matched_text(view: ClusterView, m: PolicyEntryKey | None, port: int) -> str:
    what = "any port and protocol"
    if m is not None and m.proto:
        what = f"{proto_name(m.proto)} {port_range(m.port, m.port_plen)}"
    peer = "any peer" if m is not None and m.identity == 0 else view.identity_text(m.identity if m else 0)
    return f"peer {peer}, {what}"


def _tier_rule_text(rule: RuleRef, action: str) -> str:
    """Admin tier: ClusterNetworkPolicy NAME ingress[0] (rule name): Accept; Calico tier:
    GlobalNetworkPolicy NAME ingress[0]: Allow (a NetworkPolicy's rule in it: NetworkPolicy ns/name)"""
    if rule.kind or not rule.tier:
        kind = rule.kind or "NetworkPolicy"
        where = f"{DIRECTION_NAMES[rule.direction]}[{rule.index}]"
        return f"Calico tier: {kind} {rule_policy(rule)} {where}: {action}"
    named = f" ({rule.name})" if rule.name else ""
    where = f"{DIRECTION_NAMES[rule.direction]}[{rule.index}]{named}"
    return f"{rule.tier} tier: ClusterNetworkPolicy {rule.policy} {where}: {action}"


def _half(view: ClusterView, hv: verdict_model.HalfVerdict, node: str | None, proto: int, port: int) -> Half:
    direction = hv.direction
    pod = hv.endpoint
    isolated = view.isolating(pod, direction) if pod else []
    dname = DIRECTION_NAMES[direction]
    peer_labels = view.identity_text(hv.peer_identity)
    policies: list[str] = []
    rule = str(hv.rule) if hv.rule is not None else None
    tier: str | None = None
    action: str | None = None
    passed = "".join(f"{_tier_rule_text(r, 'Pass')} handed it on; " for r in hv.passed)
    if hv.reason == verdict_model.NOT_ENFORCED:
        text = "not enforced: no pod of this cluster on this side"
    elif hv.reason in TIER_REASONS and hv.rule is not None:
        tier, action = TIER_REASONS[hv.reason]
        policies = [rule_policy(hv.rule)]
        verb = "allowed" if hv.allowed else "denied"
        text = (
            f"{passed}{verb} by {_tier_rule_text(hv.rule, action)} ({_matched_text(view, hv.matched, port)})"
        )
    elif hv.reason == verdict_model.ALLOW_HOST:
        text = "allowed: the peer is this pod's own node (always allowed)"
        if hv.rule is not None and hv.rule.is_cluster:
            tier, action, policies = hv.rule.tier, "Accept", [hv.rule.policy]
            text = (
                f"allowed: the peer is this pod's own node, accepted by {_tier_rule_text(hv.rule, 'Accept')}"
            )
        elif direction != DIR_INGRESS and pod is not None and _tiered(view, node, pod, direction):
            text = (
                f"{passed}allowed: the peer is this pod's own node "
                "(no ClusterNetworkPolicy rule denies it; NetworkPolicy never blocks it)"
            )
    elif hv.reason == verdict_model.ALLOW_NOT_ISOLATED:
        text = (
            f"{passed}allowed: not isolated for {dname} "
            f"(no policy selects {pod} with policyType {dname.capitalize()})"
        )
        if pod is not None and _tiered(view, node, pod, direction):
            text = (
                f"{passed}allowed: no ClusterNetworkPolicy rule decides and not isolated for {dname} "
                f"(no policy selects {pod} with policyType {dname.capitalize()})"
            )
    elif hv.reason == verdict_model.ALLOW_POLICY and hv.rule is not None:
        policies = [f"{hv.rule.namespace}/{hv.rule.policy}"]
        tier, action = "NetworkPolicy", "Allow"
        text = f"{passed}allowed by {rule} ({_matched_text(view, hv.matched, port)})"
    elif hv.reason == verdict_model.DROP_CALICO_END:
        ep = view.desired(node).endpoints.get(pod) if node and pod else None
        policies = list(ep.calico_policies) if ep is not None else []
        tier, action = "Calico", "Deny"
        text = (
            f"{passed}denied at the end of Calico's tier: selected by {_join(policies)} "
            "and no rule of the tier (NetworkPolicies' included) matches"
        )
    elif hv.reason == verdict_model.ALLOW_AUDIT:
        policies = list(isolated)
        tier = "NetworkPolicy"
        why = f"isolated by {_join(isolated)} and no rule matches"
        text = f"{passed}allowed in AUDIT mode: would be denied: {why}"
    else:
        policies = list(isolated)
        tier = "NetworkPolicy" if isolated else None
        text = f"{passed}denied: isolated by {_join(isolated)} and no rule matches"
    return Half(
        direction=direction,
        endpoint=pod,
        node=node if pod else None,
        allowed=hv.allowed,
        reason=hv.reason,
        policies=policies,
        rule=rule,
        rule_ref=hv.rule_ref,
        isolated_by=isolated,
        peer=view.who(hv.peer),
        peer_identity=hv.peer_identity,
        peer_labels=peer_labels,
        text=text,
        deciding=hv.rule,
        tier=tier,
        action=action,
        passed=hv.passed,
    )


def _tiered(view: ClusterView, node: str | None, pod: str, direction: int) -> bool:
    ep = view.desired(node).endpoints.get(pod) if node else None
    if ep is None:
        return False
    return ep.ingress_tiered if direction == DIR_INGRESS else ep.egress_tiered


def explain(
    view: ClusterView,
    src_spec: str,
    dst_spec: str,
    port: int,
    protocol: str = "TCP",
    family: int | None = None,
    live: LiveLookup | None = None,
    agents_behind: dict[str, str] | None = None,
    live_hep: explain_hep.HepLiveLookup | None = None,
    learned: LearnedLookup | None = None,
    now_ns: int | None = None,
) -> Explanation:
    """Explain a new connection src -> dst:port. `live` adds the kernel cross-check; agents_behind
    (node -> why) is quoted in mismatch messages when an agent has not realized the API state.
    `learned` reads what a source pod that domainNames rules police learned about the
    destination from DNS (its vg_dns_learned entry; unexpired at `now_ns`, default now: its
    domain's rules apply)."""
    proto = verdict_model.parse_proto(protocol)
    fam = family
    for spec in (src_spec, dst_spec):
        try:
            fam = fam or ipaddress.ip_address(spec).version
        except ValueError:
            continue
    fam = fam or 4
    src = resolve(view, src_spec, fam)
    dst = resolve(view, dst_spec, fam)
    src_desired = view.desired(src.node) if src.pod and src.node else None
    dst_desired = view.desired(dst.node) if dst.pod and dst.node else None
    src_ep = src_desired.endpoints.get(src.pod) if src_desired is not None and src.pod else None
    entry, unseen = None, None
    if learned is not None and src_ep is not None and src_ep.dns and src.node:
        try:
            entry = learned(src.node, src.address, dst.address)
        except LookupError as exc:
            unseen = f"{exc}: what {src.pod} learned from DNS is not known, taken as nothing"
    now = time.monotonic_ns() if now_ns is None else now_ns
    fresh = entry is not None and entry.expires_ns > now
    v = verdict_model.verdict(
        src_desired,
        dst_desired,
        src.pod or src.address,
        dst.pod or dst.address,
        proto,
        port,
        fam,
        entry.identity if entry is not None and fresh else 0,
    )
    eg = _half(view, v.egress, src.node, proto, port)
    if src_ep is not None and src_ep.dns and learned is not None:
        eg.domain, note = _domain(view, entry, now, src.pod or "", dst.address)
        eg.text += f"; {unseen or note}"
    ing = _half(view, v.ingress, dst.node, proto, port)
    result = Explanation(
        src, dst, proto_name(proto), port, fam, eg, ing, same_pod=bool(src.pod and src.pod == dst.pod)
    )
    if dst.pod is None:
        result.host = explain_hep.host_halves(
            view,
            src.address,
            src.node if src.pod else None,
            dst.address,
            proto,
            port,
            live_hep,
            agents_behind,
            result.notes,
        )
        if result.host:
            result.notes.append(
                "the host endpoint half is judged on arrival at the node, before kube-proxy's DNAT; "
                "a Service backend's own ingress is not shown (explain the pod itself)"
            )
    if result.same_pod:
        result.notes.append(
            "a pod connecting to itself: the packets stay on its loopback and never reach its veth, "
            "so the datapath does not see them (policy is shown for completeness)"
        )
    if live is not None:
        for half, me, peer in ((eg, src, dst), (ing, dst, src)):
            if half.endpoint is None or me.node is None:
                continue
            try:
                answer = live(me.node, me.address, half.direction, peer.address, proto, port)
            except Exception as exc:  # a missing pin or endpoint is itself worth reporting
                half.kernel_error = str(exc)
                where = f"{DIRECTION_NAMES[half.direction]} of {half.endpoint} on {me.node}"
                half.mismatch = f"{where}: live lookup failed: {exc}"
                continue
            if answer is None:
                result.notes.append(
                    f"the maps of {me.node} are not visible from here: {half.endpoint} not checked"
                )
                continue
            half.kernel = answer
            _compare(view, half, me.node, (agents_behind or {}).get(me.node))
    return result


def _domain(
    view: ClusterView, entry: LearnedEntry | None, now_ns: int, pod: str, address: str
) -> tuple[dict[str, Any] | None, str]:
    """What a pod that domainNames rules police learned about an address, as JSON and a phrase."""
    if entry is None:
        return None, (
            f"{pod} has not learned {address} from a DNS answer (domainNames rules match only "
            "addresses its own DNS answers gave it)"
        )
    left = (entry.expires_ns - now_ns) / 1e9
    domain = view.identity_text(entry.identity)
    name = entry.name or "an unrecorded name"
    doc = {
        "name": entry.name,
        "address": entry.address,
        "domain": domain,
        "domain_identity": entry.identity,
        "expires_in_s": round(left, 1),
        "expired": left <= 0,
    }
    if left > 0:
        return doc, f"{address} was learned from DNS as {name} ({domain}), for {left:.0f} s more"
    return doc, (
        f"{address} was learned from DNS as {name} ({domain}) but expired {-left:.0f} s ago: new "
        "connections no longer match its domainNames rules (established ones stay allowed)"
    )


def _compare(view: ClusterView, half: Half, node: str, behind: str | None) -> None:
    k = half.kernel
    assert k is not None
    kpassed = tuple(view.rule(ref) for ref in k.passed)
    if (k.allowed, k.reason, k.rule_ref, kpassed) == (half.allowed, half.reason, half.rule_ref, half.passed):
        return
    krule = view.rule(k.rule_ref)
    ktext = f"{k.reason} {krule}" if krule else k.reason
    if kpassed != half.passed:
        ktext += ", passed by " + (", ".join(str(r or "an unknown rule") for r in kpassed) or "no rule")
    msg = (
        f"{DIRECTION_NAMES[half.direction]} of {half.endpoint} on {node}: compiled state says "
        f"{'allowed' if half.allowed else 'denied'} ({half.reason}{' ' + half.rule if half.rule else ''}), "
        f"live maps say {'allowed' if k.allowed else 'denied'} ({ktext})"
    )
    if behind:
        msg += f" [{behind}]"
    half.mismatch = msg


def explain_text(e: Explanation) -> str:
    lines = [
        f"{e.src.name} -> {e.dst.name}  {e.protocol} port {e.port}  "
        f"(IPv{e.family} {e.src.address} -> {e.dst.address})"
    ]
    for label, half in (("egress ", e.egress), ("ingress", e.ingress)):
        where = f"{half.endpoint} ({half.node})" if half.endpoint else "-"
        lines.append(f"  {label} at {where}: {half.text}")
    lines += explain_hep.host_lines(e.host)
    lines.append(f"verdict: {'ALLOWED' if e.allowed else 'DENIED'}")
    checked = [h for h in (e.egress, e.ingress) if h.kernel is not None]
    checked_hep = [h for h in e.host if h.kernel]
    if e.mismatches:
        for m in e.mismatches:
            lines.append(f"KERNEL MISMATCH: {m}")
    elif checked or checked_hep:
        detail = "; ".join(
            f"{h.node} {DIRECTION_NAMES[h.direction]} {h.kernel.reason}" for h in checked if h.kernel
        )
        detail = "; ".join(
            [detail] * bool(detail)
            + [f"{h.node} {iface} {k.reason}" for h in checked_hep for iface, k in h.kernel or []]
        )
        lines.append(f"kernel: agrees ({detail})")
    else:
        lines.append("kernel: not checked")
    lines += [f"note: {n}" for n in e.notes]
    return "\n".join(lines)
