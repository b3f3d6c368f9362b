"""Calico's policy model (projectcalico.org/v3 GlobalNetworkPolicy, NetworkPolicy, HostEndpoint)
as typed, validated objects (pure; issue 16). The tier engine compiles the policies
(controller/compiler/stages/tiers.py, docs/INTERNALS.md "Tiers"); this module only turns raw
API JSON into what it compiles, with every problem reported and failed closed.

What is supported, and what we decided where Calico is silent or we cannot follow it:
- Policy: `order` (absent = after every ordered policy), `selector`, `namespaceSelector`
  (GlobalNetworkPolicy), `types` (absent: Ingress, plus Egress when there are egress rules;
  only Egress when there are egress rules and no ingress rules), `ingress`/`egress`,
  `preDNAT` (host endpoints only, Ingress only), `applyOnForward`, `doNotTrack: false`, `tier`
  "default" only.
- Rule: `action` Allow/Deny/Log/Pass, `protocol` (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite, any
  case, or 1..255), `icmp`/`notICMP` {type, code}, `ipVersion`, `source`/`destination` with
  `nets`/`notNets`, `selector`/`notSelector`, `namespaceSelector`, and on `destination` only
  `ports`/`notPorts` (numbers, "a:b" ranges, named ports in `ports`), `metadata`.
- The side of a rule that is the endpoint itself (`destination` of an ingress rule, `source` of
  an egress rule) may carry selectors (checked against the endpoint) and destination ports,
  not `nets`/`notNets`.
- Refused with a PolicyError naming object and field: source ports, `notProtocol`,
  `serviceAccounts`, `services`, `http`, `doNotTrack: true`, a tier other than "default",
  `preDNAT` with egress, ports with a protocol that has none here (ICMP, UDPLite).
- Failing closed: a rule that cannot be enforced as written becomes, for Allow and Log, a rule
  that matches nothing, and for Deny and Pass, a Deny of everything. A policy whose selector,
  order or policy-level settings are unusable applies to every endpoint, first in the order,
  its Allow rules matching nothing and its Pass rules turned into Deny (never wider than
  written). A policy without a usable name is skipped (error recorded).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from controller.compiler.apisyntax import Unusable, parse_cidr
from controller.compiler.calico_selector import All, CalicoSelectorError, Expr, parse_calico_selector
from controller.core.errors import PolicyError
from controller.core.net import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPNetwork,
)

GROUP, VERSION = "projectcalico.org", "v3"
API_VERSION = f"{GROUP}/{VERSION}"
GLOBAL_KIND, NAMESPACED_KIND, HEP_KIND = "GlobalNetworkPolicy", "NetworkPolicy", "HostEndpoint"
PLURALS = {
    GLOBAL_KIND: "globalnetworkpolicies",
    NAMESPACED_KIND: "networkpolicies",
    HEP_KIND: "hostendpoints",
}
# How the agent, the builder and the lab name each kind among every other (Kubernetes has a
# NetworkPolicy kind too): kind.group, as kubectl spells a resource it must disambiguate.
KIND_KEYS = {kind: f"{kind}.{GROUP}" for kind in PLURALS}
ALLOW, DENY, LOG, PASS = "Allow", "Deny", "Log", "Pass"
ACTIONS = (ALLOW, DENY, LOG, PASS)
DEFAULT_TIER = "default"
K8S_ORDER = 1000.0  # where Kubernetes NetworkPolicies take part in the Calico tier
K8S_NAME_PREFIX = "knp.default."  # Calico's name for a Kubernetes NetworkPolicy in its tier
IPPROTO_UDPLITE = 136
PROTOCOLS: Mapping[str, int] = {
    "tcp": IPPROTO_TCP,
    "udp": IPPROTO_UDP,
    "icmp": IPPROTO_ICMP,
    "icmpv6": IPPROTO_ICMPV6,
    "sctp": IPPROTO_SCTP,
    "udplite": IPPROTO_UDPLITE,
}
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})  # ports we can read
ICMP_PROTOCOLS = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})
IMPLICIT_NAMESPACE_LABEL = "projectcalico.org/namespace"
IMPLICIT_ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
_RANGE = re.compile(r"^(\d+):(\d+)$")

PortRange = tuple[int, int]  # inclusive


class CalicoObjects(NamedTuple):
    """The raw projectcalico.org/v3 objects a build reads (API JSON)."""

    global_policies: Sequence[Mapping[str, Any]] = ()
    namespaced_policies: Sequence[Mapping[str, Any]] = ()
    host_endpoints: Sequence[Mapping[str, Any]] = ()


EMPTY_CALICO = CalicoObjects()


def pod_calico_labels(namespace: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A pod's labels as Calico selectors see them: its own plus the implicit ones Calico gives
    every workload endpoint."""
    return {**labels, IMPLICIT_NAMESPACE_LABEL: namespace, IMPLICIT_ORCHESTRATOR_LABEL: "k8s"}


@dataclass(frozen=True)
class EntityRule:
    """One side of a rule. None = no constraint of that kind."""

    nets: tuple[IPNetwork, ...] | None = None
    not_nets: tuple[IPNetwork, ...] = ()
    selector: Expr | None = None
    not_selector: Expr | None = None
    namespace_selector: Expr | None = None
    ports: tuple[PortRange, ...] | None = None  # destination ports (with `named`)
    named_ports: tuple[str, ...] = ()
    not_ports: tuple[PortRange, ...] = ()

    @property
    def has_ports(self) -> bool:
        return self.ports is not None or bool(self.named_ports) or bool(self.not_ports)

    @property
    def selects(self) -> bool:
        return (
            self.selector is not None or self.not_selector is not None or self.namespace_selector is not None
        )


ANY_ENTITY = EntityRule()


@dataclass(frozen=True)
class CalicoRule:
    index: int  # position in spec.ingress / spec.egress
    action: str  # as enforced (after failing closed)
    protocol: int | None = None
    icmp: tuple[int, int | None] | None = None  # (type, code)
    not_icmp: tuple[int, int | None] | None = None
    ip_version: int | None = None
    source: EntityRule = ANY_ENTITY
    destination: EntityRule = ANY_ENTITY
    matches_nothing: bool = False
    deny_all: bool = False

    def peer(self, egress: bool) -> EntityRule:
        return self.destination if egress else self.source

    def local(self, egress: bool) -> EntityRule:
        return self.source if egress else self.destination


@dataclass(frozen=True)
class CalicoPolicy:
    kind: str  # GLOBAL_KIND | NAMESPACED_KIND
    name: str
    namespace: str | None  # None for a GlobalNetworkPolicy
    order: float  # math.inf when absent; -inf when unusable (first)
    selector: Expr
    namespace_selector: Expr | None
    ingress: tuple[CalicoRule, ...]  # empty when types leave Ingress out
    egress: tuple[CalicoRule, ...]
    types: frozenset[str]
    pre_dnat: bool = False
    apply_on_forward: bool = False
    errors: tuple[PolicyError, ...] = ()

    @property
    def name_key(self) -> str:
        """The tie-break within one order: the name, namespaced ones as namespace/name."""
        return self.name if self.namespace is None else f"{self.namespace}/{self.name}"

    @property
    def sort_key(self) -> tuple[float, str]:
        return (self.order, self.name_key)

    @property
    def object(self) -> str:
        return policy_object(self.kind, self.namespace, self.name)

    def selects(self, namespace: str, labels: Mapping[str, str], ns_labels: Mapping[str, str]) -> bool:
        """Does the policy apply to this pod (its own labels, its namespace's labels)?"""
        if self.pre_dnat:
            return False  # host endpoints only
        if self.namespace is not None and namespace != self.namespace:
            return False
        if self.namespace_selector is not None and not self.namespace_selector.matches(ns_labels):
            return False
        return self.selector.matches(pod_calico_labels(namespace, labels))


@dataclass(frozen=True)
class HostEndpoint:
    name: str
    node: str
    interface_name: str | None  # "*" = every interface of the node
    expected_ips: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[PolicyError, ...] = ()


def policy_object(kind: str, namespace: str | None, name: str) -> str:
    """How errors and views name a Calico policy."""
    return f"{kind} {name}" if namespace is None else f"{kind}.projectcalico.org {namespace}/{name}"


def _selector(raw: Any, fld: str) -> Expr:
    try:
        return parse_calico_selector(raw)
    except CalicoSelectorError as e:
        raise Unusable(fld, str(e)) from None


def _known(raw: Mapping[str, Any], fld: str, known: tuple[str, ...], refused: Mapping[str, str]) -> None:
    for key in raw:
        if key in refused:
            raise Unusable(f"{fld}.{key}" if fld else key, refused[key])
        if key not in known:
            raise Unusable(f"{fld}.{key}" if fld else key, "unknown field")


def _nets(raw: Any, fld: str) -> tuple[IPNetwork, ...]:
    if not isinstance(raw, list):
        raise Unusable(fld, "must be a list of CIDRs")
    out = []
    for i, text in enumerate(raw):
        net = None
        if isinstance(text, str):
            net = parse_cidr(text if "/" in text else f"{text}/{128 if ':' in text else 32}")
        if net is None:
            raise Unusable(f"{fld}[{i}]", f"invalid CIDR {text!r}")
        out.append(net)
    return tuple(out)


def _port_number(raw: Any, fld: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
        raise Unusable(fld, f"must be a port in 0..65535, not {raw!r}")
    return raw


def _ports(raw: Any, fld: str, named_ok: bool) -> tuple[tuple[PortRange, ...], tuple[str, ...]]:
    if not isinstance(raw, list):
        raise Unusable(fld, "must be a list of ports")
    ranges: list[PortRange] = []
    named: list[str] = []
    for i, item in enumerate(raw):
        f = f"{fld}[{i}]"
        if isinstance(item, str) and (m := _RANGE.match(item)):
            lo, hi = _port_number(int(m.group(1)), f), _port_number(int(m.group(2)), f)
            if lo > hi:
                raise Unusable(f, f"range start {lo} is above its end {hi}")
            ranges.append((lo, hi))
        elif isinstance(item, str) and item.isdigit():
            n = _port_number(int(item), f)
            ranges.append((n, n))
        elif isinstance(item, str) and item:
            if not named_ok:
                raise Unusable(f, "named ports are not supported here")
            named.append(item)
        else:
            n = _port_number(item, f)
            ranges.append((n, n))
    return tuple(ranges), tuple(named)


def _entity(raw: Any, fld: str, local: bool, is_destination: bool, namespaced: bool) -> EntityRule:
    if raw is None:
        return ANY_ENTITY
    if not isinstance(raw, Mapping):
        raise Unusable(fld, "must be an object")
    refused = {
        "serviceAccounts": "service account matching is not supported by this version of vethguard",
        "services": "service matching is not supported by this version of vethguard",
    }
    if not is_destination:
        refused["ports"] = "source ports are not supported by this version of vethguard"
        refused["notPorts"] = "source ports are not supported by this version of vethguard"
    if local:
        msg = "addresses of the endpoint the policy applies to are not supported; use selector"
        refused["nets"] = refused["notNets"] = msg
    known = ("nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts")
    _known(raw, fld, known, refused)
    nets = _nets(raw["nets"], f"{fld}.nets") if "nets" in raw else None
    not_nets = _nets(raw["notNets"], f"{fld}.notNets") if "notNets" in raw else ()
    # An empty string is Calico's unset selector (Go's zero value), not all().
    sel = _selector(raw["selector"], f"{fld}.selector") if raw.get("selector") else None
    not_sel = _selector(raw["notSelector"], f"{fld}.notSelector") if raw.get("notSelector") else None
    ns_raw = raw.get("namespaceSelector")
    ns_sel = _selector(ns_raw, f"{fld}.namespaceSelector") if ns_raw else None
    ports: tuple[PortRange, ...] | None = None
    named: tuple[str, ...] = ()
    not_ports: tuple[PortRange, ...] = ()
    if "ports" in raw:
        ports, named = _ports(raw["ports"], f"{fld}.ports", named_ok=True)
    if "notPorts" in raw:
        not_ports, _ = _ports(raw["notPorts"], f"{fld}.notPorts", named_ok=False)
    return EntityRule(nets, not_nets, sel, not_sel, ns_sel, ports, named, not_ports)


def _protocol(raw: Any, fld: str) -> int:
    if isinstance(raw, str) and raw.lower() in PROTOCOLS:
        return PROTOCOLS[raw.lower()]
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 255:
        return raw
    raise Unusable(fld, f"must be TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1..255, not {raw!r}")


def _icmp(raw: Any, fld: str) -> tuple[int, int | None]:
    if not isinstance(raw, Mapping):
        raise Unusable(fld, "must be an object with type and code")
    _known(raw, fld, ("type", "code"), {})
    t, c = raw.get("type"), raw.get("code")
    if t is None:
        if c is not None:
            raise Unusable(f"{fld}.code", "needs a type")
        raise Unusable(f"{fld}.type", "required")
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 254:
        raise Unusable(f"{fld}.type", f"must be an integer in 0..254, not {t!r}")
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255):
        raise Unusable(f"{fld}.code", f"must be an integer in 0..255, not {c!r}")
    return t, c


_RULE_FIELDS = (
    "action",
    "protocol",
    "icmp",
    "notICMP",
    "ipVersion",
    "source",
    "destination",
    "metadata",
)
_RULE_REFUSED = {
    "notProtocol": "not supported by this version of vethguard",
    "http": "HTTP matching needs an application-layer proxy, which vethguard does not have",
}


def _rule(
    raw: Any, index: int, fld: str, egress: bool, namespaced: bool, obj: str, errors: list[PolicyError]
) -> CalicoRule:
    action = raw.get("action") if isinstance(raw, Mapping) else None
    try:
        if not isinstance(raw, Mapping):
            raise Unusable(fld, "must be an object")
        if action not in ACTIONS:
            raise Unusable(f"{fld}.action", f"must be one of {', '.join(ACTIONS)}, not {action!r}")
        _known(raw, fld, _RULE_FIELDS, _RULE_REFUSED)
        proto = _protocol(raw["protocol"], f"{fld}.protocol") if raw.get("protocol") is not None else None
        icmp = _icmp(raw["icmp"], f"{fld}.icmp") if raw.get("icmp") is not None else None
        not_icmp = _icmp(raw["notICMP"], f"{fld}.notICMP") if raw.get("notICMP") is not None else None
        if (icmp or not_icmp) and proto not in ICMP_PROTOCOLS:
            raise Unusable(f"{fld}.icmp" if icmp else f"{fld}.notICMP", "needs protocol ICMP or ICMPv6")
        ipv = raw.get("ipVersion")
        if ipv is not None and ipv not in (4, 6):
            raise Unusable(f"{fld}.ipVersion", f"must be 4 or 6, not {ipv!r}")
        if ipv is not None and proto in ICMP_PROTOCOLS and ipv != (4 if proto == IPPROTO_ICMP else 6):
            raise Unusable(f"{fld}.ipVersion", f"{ipv} does not carry that ICMP protocol")
        src = _entity(raw.get("source"), f"{fld}.source", egress, False, namespaced)
        dst = _entity(raw.get("destination"), f"{fld}.destination", not egress, True, namespaced)
        if dst.has_ports and proto not in PORT_PROTOCOLS:
            raise Unusable(
                f"{fld}.protocol",
                "destination ports need protocol TCP, UDP or SCTP (the ones vethguard reads ports of)",
            )
        return CalicoRule(index, str(action), proto, icmp, not_icmp, ipv, src, dst)
    except Unusable as e:
        errors.append(PolicyError(obj, e.field, e.message))
        if action in (ALLOW, LOG):
            return CalicoRule(index, str(action), matches_nothing=True)
        return CalicoRule(index, DENY, deny_all=True)


def _restrict(rule: CalicoRule) -> CalicoRule:
    """The rule where its policy's place or scope is unknown: never wider than written."""
    if rule.action in (ALLOW, LOG):
        return CalicoRule(rule.index, rule.action, matches_nothing=True)
    if rule.action == PASS:
        return CalicoRule(
            rule.index, DENY, rule.protocol, rule.icmp, rule.not_icmp, rule.ip_version,
            rule.source, rule.destination, deny_all=rule.deny_all,
        )  # fmt: skip
    return rule


def default_types(spec: Mapping[str, Any]) -> frozenset[str]:
    """Calico's `types` when a policy leaves it out."""
    has_in, has_eg = bool(spec.get("ingress")), bool(spec.get("egress"))
    if has_eg and not has_in:
        return frozenset({"Egress"})
    return frozenset({"Ingress", "Egress"}) if has_eg else frozenset({"Ingress"})


_SPEC_FIELDS = (
    "order",
    "selector",
    "namespaceSelector",
    "types",
    "ingress",
    "egress",
    "preDNAT",
    "applyOnForward",
    "doNotTrack",
    "tier",
    "serviceAccountSelector",
    "performanceHints",
)


def parse_calico_policy(raw: Any, kind: str, errors: list[PolicyError]) -> CalicoPolicy | None:
    """A GlobalNetworkPolicy or (namespaced) Calico NetworkPolicy from raw API JSON; problems are
    appended to `errors` (and kept on the policy). None when it has no usable name."""
    namespaced = kind == NAMESPACED_KIND
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    namespace = meta.get("namespace", "default") if isinstance(meta, Mapping) and namespaced else None
    if not isinstance(name, str) or not name or (namespaced and not isinstance(namespace, str)):
        errors.append(PolicyError(kind, "metadata.name", "required"))
        return None
    obj = policy_object(kind, namespace, name)
    own: list[PolicyError] = []
    spec = raw.get("spec")
    if not isinstance(spec, Mapping):
        own.append(PolicyError(obj, "spec", "must be an object"))
        spec = {}
    placed = True

    def fail(fld: str, message: str) -> None:
        nonlocal placed
        own.append(
            PolicyError(obj, fld, f"{message}; enforced first, for every endpoint, never wider than written")
        )
        placed = False

    for key in spec:
        if key not in _SPEC_FIELDS or (key == "namespaceSelector" and namespaced):
            fail(f"spec.{key}", "unknown field")
    if spec.get("serviceAccountSelector") not in (None, ""):
        fail("spec.serviceAccountSelector", "not supported by this version of vethguard")
    if spec.get("doNotTrack") not in (None, False):
        fail("spec.doNotTrack", "only false is supported: vethguard tracks every connection it allows")
    if spec.get("tier") not in (None, DEFAULT_TIER):
        fail("spec.tier", f"only the {DEFAULT_TIER!r} tier is supported, not {spec.get('tier')!r}")
    order = math.inf
    raw_order = spec.get("order")
    if raw_order is not None:
        if isinstance(raw_order, bool) or not isinstance(raw_order, int | float) or math.isnan(raw_order):
            fail("spec.order", f"must be a number, not {raw_order!r}")
        else:
            order = float(raw_order)
    selector: Expr = All()
    try:
        selector = _selector(spec.get("selector", ""), "spec.selector")
    except Unusable as e:
        fail(e.field, e.message)
    ns_selector: Expr | None = None
    if not namespaced and spec.get("namespaceSelector") not in (None, ""):
        try:
            ns_selector = _selector(spec["namespaceSelector"], "spec.namespaceSelector")
        except Unusable as e:
            fail(e.field, e.message)
    types = default_types(spec)
    if spec.get("types"):  # an empty list is unset, as Calico reads it
        raw_types = spec["types"]
        if not isinstance(raw_types, list) or not all(t in ("Ingress", "Egress") for t in raw_types):
            fail("spec.types", f"must be a list of Ingress and Egress, not {raw_types!r}")
        else:
            types = frozenset(raw_types)
    pre_dnat = spec.get("preDNAT") is True
    apply_on_forward = spec.get("applyOnForward") is True
    if pre_dnat:
        if namespaced:
            fail("spec.preDNAT", "only a GlobalNetworkPolicy can be preDNAT")
        if spec.get("egress") or "Egress" in types:
            fail("spec.preDNAT", "a preDNAT policy has ingress rules only (types: [Ingress])")
        if not apply_on_forward:
            fail("spec.applyOnForward", "must be true when preDNAT is true")
    directions: dict[str, tuple[CalicoRule, ...]] = {}
    for key, egress in (("ingress", False), ("egress", True)):
        raw_rules = spec.get(key) or []
        if not isinstance(raw_rules, list):
            own.append(PolicyError(obj, f"spec.{key}", "must be a list; no rules"))
            raw_rules = []
        rules = tuple(
            _rule(r, i, f"spec.{key}[{i}]", egress, namespaced, obj, own) for i, r in enumerate(raw_rules)
        )
        if key.capitalize() not in types:
            rules = ()
        directions[key] = rules if placed else tuple(_restrict(r) for r in rules)
    if not placed:
        order, selector, ns_selector = -math.inf, All(), None
    errors.extend(own)
    return CalicoPolicy(
        kind=kind,
        name=name,
        namespace=namespace,
        order=order,
        selector=selector,
        namespace_selector=ns_selector,
        ingress=directions["ingress"],
        egress=directions["egress"],
        types=types,
        pre_dnat=pre_dnat and placed,
        apply_on_forward=apply_on_forward,
        errors=tuple(own),
    )


def parse_host_endpoint(raw: Any, errors: list[PolicyError]) -> HostEndpoint | None:
    """A HostEndpoint from raw API JSON; None (error recorded) when it cannot be placed on a
    node interface: no name, no node, or neither interfaceName nor expectedIPs."""
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        errors.append(PolicyError(HEP_KIND, "metadata.name", "required"))
        return None
    obj = f"{HEP_KIND} {name}"
    own: list[PolicyError] = []
    labels = meta.get("labels") or {} if isinstance(meta, Mapping) else {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        own.append(PolicyError(obj, "metadata.labels", "must map strings to strings; treated as no labels"))
        labels = {}
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    for key in spec:
        if key == "ports":
            own.append(
                PolicyError(obj, "spec.ports", "named ports of host endpoints are not supported; ignored")
            )
        elif key not in ("node", "interfaceName", "expectedIPs", "profiles"):
            own.append(PolicyError(obj, f"spec.{key}", "unknown field; ignored"))
    node = spec.get("node")
    iface = spec.get("interfaceName")
    ips_raw = spec.get("expectedIPs") or []
    ips: list[str] = []
    for i, text in enumerate(ips_raw if isinstance(ips_raw, list) else []):
        net = parse_cidr(f"{text}/{128 if ':' in str(text) else 32}") if isinstance(text, str) else None
        if net is None:
            own.append(PolicyError(obj, f"spec.expectedIPs[{i}]", f"invalid IP {text!r}; ignored"))
        else:
            ips.append(str(net.network_address))
    problem = None
    if not isinstance(node, str) or not node:
        problem = ("spec.node", "required")
    elif iface is not None and (not isinstance(iface, str) or not iface):
        problem = ("spec.interfaceName", "must be an interface name or '*'")
    elif iface is None and not ips:
        problem = ("spec.interfaceName", "either interfaceName or expectedIPs is required")
    if problem is not None:
        own.append(PolicyError(obj, problem[0], f"{problem[1]}; the host endpoint is not enforced"))
        errors.extend(own)
        return None
    errors.extend(own)
    return HostEndpoint(name, str(node), iface, tuple(ips), dict(labels), tuple(own))
