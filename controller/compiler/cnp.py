"""ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, network-policy-api v0.2.0) as typed,
validated objects (pure): the first stage of the cluster-wide tiers (issue 15). Nothing watches,
compiles or enforces these yet; this module only turns raw API JSON into what the ordered
decision will be compiled from, with every problem reported and failed closed.

What the API says about bad input, and what we decided where it is silent:
- A peer or protocol entry that is unusable (not exactly one known field, a bad selector, CIDR or
  port, a `domainNames` peer in a Deny or Pass rule (the API allows it only in Accept rules), or
  a named port beside a networks or nodes peer): an Accept rule with it matches nothing; a Deny
  or Pass rule with it becomes a Deny-all rule (every peer, port and protocol). That is the
  API's "fail closed".
- A rule without `from` / `to` entries, or with an unknown action: an Accept rule matches nothing,
  anything else is a Deny-all rule.
- A policy whose place in the order is unusable (tier not Admin or Baseline, priority not an
  integer in 0..1000): it is placed first (Admin, priority 0), where a rule is most restrictive,
  and so that the move cannot widen access its Accept rules match nothing and its Pass rules
  become Deny (same peers and ports); Deny rules are unchanged.
- A policy whose subject is unusable: it applies to every pod (host-network pods are never
  subjects), with Accept rules matching nothing and Pass rules turned into Deny as above.
- More than 25 rules, peers or protocol entries, or a rule name over 100 characters (what the
  CRD would reject but is still unambiguous): reported, and enforced as written.
A policy without a usable metadata.name is skipped (error recorded). Every problem is a
PolicyError naming the object and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.compiler.apisyntax import Unusable, parse_cidr
from controller.compiler.selectors import LabelSelector, SelectorError
from controller.core import dnsnames
from controller.core.errors import PolicyError
from controller.core.net import IPNetwork

KIND = "ClusterNetworkPolicy"
GROUP, VERSION, PLURAL = "policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies"
API_VERSION = f"{GROUP}/{VERSION}"
PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"  # the list/watch path of the API
TIERS = ("Admin", "Baseline")  # evaluation order: Admin, then NetworkPolicy, then Baseline
ACCEPT, DENY, PASS = "Accept", "Deny", "Pass"
ACTIONS = (ACCEPT, DENY, PASS)
MAX_ITEMS = 25  # rules per direction, peers per rule, protocol entries per rule
MAX_RULE_NAME = 100
PRIORITY_MAX = 1000
PROTOCOL_FIELDS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


@dataclass(frozen=True)
class CnpPeer:
    """One peer: `namespaces` (namespace selector), `pods` (namespace + pod selectors), and for
    egress `nodes` (node selector), `networks` (CIDRs) or `domainNames` (Accept rules only)."""

    kind: str  # "namespaces" | "pods" | "nodes" | "networks" | "domainNames"
    namespaces: LabelSelector | None = None
    pods: LabelSelector | None = None
    nodes: LabelSelector | None = None
    networks: tuple[IPNetwork, ...] = ()
    domains: tuple[str, ...] = ()  # domainNames: canonical names and `*.` wildcards


@dataclass(frozen=True)
class CnpPort:
    """One protocol entry: a protocol with any port (start == end == 0), one port or an inclusive
    range, or a named port of the destination pod (protocol "" : the name decides it)."""

    protocol: str  # "TCP" | "UDP" | "SCTP", or "" for a named port
    start: int = 0
    end: int = 0
    named: str | None = None


@dataclass(frozen=True)
class CnpRule:
    index: int  # position in spec.ingress / spec.egress (rule references keep it)
    name: str
    action: str  # the action enforced: Accept | Deny | Pass (after failing closed)
    peers: tuple[CnpPeer, ...]
    ports: tuple[CnpPort, ...] | None  # None: every port and protocol, ICMP included
    matches_nothing: bool = False  # a failed-closed Accept rule
    deny_all: bool = False  # a failed-closed Deny or Pass rule: every peer, port and protocol


@dataclass(frozen=True)
class ClusterNetworkPolicy:
    name: str
    tier: str
    priority: int
    # Subject: exactly one of the two; both None = every pod (an unusable subject, failed closed).
    subject_namespaces: LabelSelector | None
    subject_pods: tuple[LabelSelector, LabelSelector] | None  # (namespaceSelector, podSelector)
    ingress: tuple[CnpRule, ...]
    egress: tuple[CnpRule, ...]
    errors: tuple[PolicyError, ...] = ()

    @property
    def order(self) -> tuple[int, int, str]:
        """Evaluation order across every policy: tier, then priority, then name (our tie-break)."""
        return (TIERS.index(self.tier), self.priority, self.name)


def _selector(raw: Any, fld: str) -> LabelSelector:
    if not isinstance(raw, Mapping):
        raise Unusable(fld, "must be a label selector object")
    try:
        return LabelSelector.parse(raw)
    except SelectorError as e:
        raise Unusable(f"{fld}.{e.field}" if e.field else fld, e.message) from None


def _only_field(raw: Any, fld: str, known: tuple[str, ...]) -> str:
    """The one field set in `raw`: exactly one of `known` (anything else, an API newer than ours)."""
    if not isinstance(raw, Mapping):
        raise Unusable(fld, "must be an object")
    fields = sorted(raw)
    if len(fields) != 1:
        raise Unusable(fld, f"exactly one field must be set, found {fields or 'none'}")
    if fields[0] not in known:
        raise Unusable(f"{fld}.{fields[0]}", f"unknown field (supported: {', '.join(known)})")
    return str(fields[0])


def _pods(raw: Any, fld: str) -> tuple[LabelSelector, LabelSelector]:
    if not isinstance(raw, Mapping):
        raise Unusable(fld, "must be an object with namespaceSelector and podSelector")
    unknown = sorted(set(raw) - {"namespaceSelector", "podSelector"})
    if unknown:
        raise Unusable(f"{fld}.{unknown[0]}", "unknown field")
    if "podSelector" not in raw:
        raise Unusable(f"{fld}.podSelector", "required")
    ns = _selector(raw.get("namespaceSelector", {}), f"{fld}.namespaceSelector")
    return ns, _selector(raw["podSelector"], f"{fld}.podSelector")


def _domain_names(value: Any, fld: str, action: str) -> tuple[str, ...]:
    """A domainNames peer's patterns (names, or `*.` wildcards matching one or more labels),
    canonical, in order, once each; only in Accept rules, as the API says."""
    if not isinstance(value, list) or not value:
        raise Unusable(fld, "must be a non-empty list of domain names")
    if len(value) > MAX_ITEMS:
        raise Unusable(fld, f"more than {MAX_ITEMS} entries ({len(value)})")
    for i, name in enumerate(value):
        problems = dnsnames.problems(name, wildcard=True) if isinstance(name, str) else ["must be a string"]
        if problems:
            raise Unusable(f"{fld}[{i}]", f"{name!r}: {'; '.join(problems)}")
    if action != ACCEPT:
        raise Unusable(fld, f"only allowed in Accept rules, not in a {action} rule")
    return tuple(dict.fromkeys(dnsnames.canonical(n) for n in value))


def _peer(raw: Any, fld: str, egress: bool, action: str) -> CnpPeer:
    known = ("namespaces", "pods", "nodes", "networks", "domainNames") if egress else ("namespaces", "pods")
    kind = _only_field(raw, fld, known)
    value = raw[kind]
    if kind == "namespaces":
        return CnpPeer(kind, namespaces=_selector(value, f"{fld}.namespaces"))
    if kind == "pods":
        ns, pods = _pods(value, f"{fld}.pods")
        return CnpPeer(kind, namespaces=ns, pods=pods)
    if kind == "nodes":
        return CnpPeer(kind, nodes=_selector(value, f"{fld}.nodes"))
    if kind == "domainNames":
        return CnpPeer(kind, domains=_domain_names(value, f"{fld}.domainNames", action))
    if not isinstance(value, list) or not value:
        raise Unusable(f"{fld}.networks", "must be a non-empty list of CIDRs")
    nets = []
    for i, cidr in enumerate(value):
        net = parse_cidr(cidr) if isinstance(cidr, str) else None
        if net is None:
            raise Unusable(f"{fld}.networks[{i}]", f"invalid CIDR {cidr!r}")
        nets.append(net)
    return CnpPeer(kind, networks=tuple(nets))


def _port_number(raw: Any, fld: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 65535:
        raise Unusable(fld, f"must be an integer in 1..65535, not {raw!r}")
    return raw


def _protocol(raw: Any, fld: str) -> CnpPort:
    kind = _only_field(raw, fld, ("tcp", "udp", "sctp", "destinationNamedPort"))
    value = raw[kind]
    if kind == "destinationNamedPort":
        if not isinstance(value, str) or not value:
            raise Unusable(f"{fld}.destinationNamedPort", "must be a port name")
        return CnpPort("", named=value)
    proto = PROTOCOL_FIELDS[kind]
    if not isinstance(value, Mapping):
        raise Unusable(f"{fld}.{kind}", "must be an object")
    unknown = sorted(set(value) - {"destinationPort"})
    if unknown:
        raise Unusable(f"{fld}.{kind}.{unknown[0]}", "unknown field")
    if "destinationPort" not in value:
        return CnpPort(proto)  # the protocol, any port
    pfld = f"{fld}.{kind}.destinationPort"
    form = _only_field(value["destinationPort"], pfld, ("number", "range"))
    if form == "number":
        n = _port_number(value["destinationPort"]["number"], f"{pfld}.number")
        return CnpPort(proto, n, n)
    rng = value["destinationPort"]["range"]
    if not isinstance(rng, Mapping) or set(rng) != {"start", "end"}:
        raise Unusable(f"{pfld}.range", "must have exactly start and end")
    start = _port_number(rng["start"], f"{pfld}.range.start")
    end = _port_number(rng["end"], f"{pfld}.range.end")
    if start >= end:
        raise Unusable(f"{pfld}.range", f"start ({start}) must be less than end ({end})")
    return CnpPort(proto, start, end)


def _list(raw: Any, fld: str, obj: str, errors: list[PolicyError]) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise Unusable(fld, "must be a list")
    if len(raw) > MAX_ITEMS:
        errors.append(
            PolicyError(obj, fld, f"more than {MAX_ITEMS} entries ({len(raw)}); enforced as written")
        )
    return raw


def _rule(raw: Any, index: int, fld: str, egress: bool, obj: str, errors: list[PolicyError]) -> CnpRule:
    name = ""
    action = raw.get("action") if isinstance(raw, Mapping) else None
    try:
        if not isinstance(raw, Mapping):
            raise Unusable(fld, "must be an object")
        name = raw.get("name", "")
        if not isinstance(name, str):
            raise Unusable(f"{fld}.name", "must be a string")
        if len(name) > MAX_RULE_NAME:
            errors.append(PolicyError(obj, f"{fld}.name", f"longer than {MAX_RULE_NAME} characters"))
        if action not in ACTIONS:
            raise Unusable(f"{fld}.action", f"must be one of {', '.join(ACTIONS)}, not {action!r}")
        peer_key = "to" if egress else "from"
        unknown = sorted(set(raw) - {"name", "action", peer_key, "protocols"})
        if unknown:
            raise Unusable(f"{fld}.{unknown[0]}", "unknown field")
        raw_peers = _list(raw.get(peer_key), f"{fld}.{peer_key}", obj, errors)
        if not raw_peers:
            raise Unusable(f"{fld}.{peer_key}", "must list at least one peer")
        peers = tuple(_peer(p, f"{fld}.{peer_key}[{i}]", egress, action) for i, p in enumerate(raw_peers))
        ports: tuple[CnpPort, ...] | None = None
        if "protocols" in raw:
            raw_ports = _list(raw["protocols"], f"{fld}.protocols", obj, errors)
            if not raw_ports:
                raise Unusable(f"{fld}.protocols", "must list at least one entry when present")
            ports = tuple(_protocol(p, f"{fld}.protocols[{i}]") for i, p in enumerate(raw_ports))
            if any(p.named for p in ports) and any(p.kind in ("nodes", "networks") for p in peers):
                raise Unusable(f"{fld}.protocols", "a named port cannot be used with networks or nodes peers")
        return CnpRule(index, name, str(action), peers, ports)
    except Unusable as e:
        errors.append(PolicyError(obj, e.field, e.message))
        if action == ACCEPT:
            return CnpRule(
                index, name if isinstance(name, str) else "", ACCEPT, (), None, matches_nothing=True
            )
        return CnpRule(index, name if isinstance(name, str) else "", DENY, (), None, deny_all=True)


def _restrict(rule: CnpRule) -> CnpRule:
    """The rule where its policy's place or scope is unknown: never wider than written."""
    if rule.action == ACCEPT:
        return CnpRule(rule.index, rule.name, ACCEPT, (), None, matches_nothing=True)
    if rule.action == PASS:
        return CnpRule(rule.index, rule.name, DENY, rule.peers, rule.ports, deny_all=rule.deny_all)
    return rule


def parse_cluster_network_policy(raw: Any, errors: list[PolicyError]) -> ClusterNetworkPolicy | None:
    """A ClusterNetworkPolicy from raw API JSON; problems are appended to `errors` (and kept on
    the policy). None when it has no usable metadata.name."""
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        errors.append(PolicyError(KIND, "metadata.name", "required"))
        return None
    obj = f"{KIND} {name}"
    own: list[PolicyError] = []
    spec = raw.get("spec")
    if not isinstance(spec, Mapping):
        own.append(PolicyError(obj, "spec", "must be an object"))
        spec = {}
    placed = True
    tier = spec.get("tier")
    if tier not in TIERS:
        own.append(PolicyError(obj, "spec.tier", f"must be Admin or Baseline, not {tier!r}"))
        placed = False
    priority = spec.get("priority")
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= PRIORITY_MAX:
        own.append(
            PolicyError(obj, "spec.priority", f"must be an integer in 0..{PRIORITY_MAX}, not {priority!r}")
        )
        placed = False
    if not placed:
        tier, priority = "Admin", 0  # first, where a rule is most restrictive
    subject_ns: LabelSelector | None = None
    subject_pods: tuple[LabelSelector, LabelSelector] | None = None
    try:
        kind = _only_field(spec.get("subject"), "spec.subject", ("namespaces", "pods"))
        if kind == "namespaces":
            subject_ns = _selector(spec["subject"]["namespaces"], "spec.subject.namespaces")
        else:
            subject_pods = _pods(spec["subject"]["pods"], "spec.subject.pods")
    except Unusable as e:
        own.append(PolicyError(obj, e.field, f"{e.message}; the policy applies to every pod, failed closed"))
        placed = False
    directions: dict[str, tuple[CnpRule, ...]] = {}
    for key, egress in (("ingress", False), ("egress", True)):
        try:
            raw_rules = _list(spec.get(key), f"spec.{key}", obj, own)
        except Unusable as e:
            own.append(PolicyError(obj, e.field, f"{e.message}; no {key} rules"))
            raw_rules = []
        rules = tuple(_rule(r, i, f"spec.{key}[{i}]", egress, obj, own) for i, r in enumerate(raw_rules))
        directions[key] = rules if placed else tuple(_restrict(r) for r in rules)
    errors.extend(own)
    return ClusterNetworkPolicy(
        name=name,
        tier=str(tier),
        priority=int(priority),
        subject_namespaces=subject_ns,
        subject_pods=subject_pods,
        ingress=directions["ingress"],
        egress=directions["egress"],
        errors=tuple(own),
    )
