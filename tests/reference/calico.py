"""Reference reading of projectcalico.org/v3 GlobalNetworkPolicy and (namespaced) NetworkPolicy for
pods, for the evaluator (evaluator.py, constructor argument `calico_policies`). Imports nothing
from controller/.

Written from Calico's resource reference (GlobalNetworkPolicy, NetworkPolicy, Rule, EntityRule,
ICMP, Ports, Selectors; docs.tigera.io, projectcalico.org/v3) and, where Calico is silent or
speaks of things vethguard does not model (tiers, profiles, host endpoints), from the decisions
of issue 16, restated:

- Per connection and direction: Admin ClusterNetworkPolicies -> the Calico tier -> Baseline
  ClusterNetworkPolicies -> allowed. Egress at the source, then ingress at the destination.
- A pod has a Calico tier for a direction when at least one Calico policy selects it for that
  direction. The tier then holds those Calico policies AND the Kubernetes NetworkPolicies
  selecting the pod for that direction, each of those as a policy at order 1000 made of Allow
  rules (NetworkPolicy's own peer/port matching; no rules = a policy with no rules). Without a
  Calico policy for the pod and direction, NetworkPolicy works as in evaluator.py.
- In the tier: policies by (order, name key); order = spec.order (a number; absent = after every
  ordered policy); name key = GlobalNetworkPolicy: metadata.name; NetworkPolicy:
  "<namespace>/<name>"; Kubernetes NetworkPolicy "<namespace>/knp.default.<name>" (byte order).
  Rules in written order; the first rule that matches decides: Allow (direction allowed), Deny
  (refused), Pass (leave the tier: Baseline next), Log (no effect: the next rule). No rule
  matching in the whole tier: Deny (the end of a tier that selects the pod).
- Selection: GlobalNetworkPolicy: spec.selector (absent or "" = all()) over the pod's labels plus
  projectcalico.org/namespace=<ns> and projectcalico.org/orchestrator=k8s, and spec.namespaceSelector
  (if set) over its namespace's labels (which carry kubernetes.io/metadata.name). NetworkPolicy:
  the pods of its namespace that spec.selector matches (the same labels). Host-network pods are
  never selected and never matched by selectors.
- spec.types (Ingress/Egress); absent or empty: [Ingress] without egress rules, [Egress] with
  egress rules and no ingress rules, both with both. A policy takes part in a direction only if
  its types include it (its rules of the other direction are ignored).
- A rule matches when every criterion it has holds: protocol (TCP, UDP, ICMP, ICMPv6, SCTP,
  UDPLite, or a number 1..255; absent = any); icmp {type, code?} (the probe's ICMP type and
  code), notICMP (not that); source and destination entities. In ingress rules `source` is the
  peer and `destination` the selected pod; in egress rules `destination` is the peer and `source`
  the selected pod. Entity: nets (the address is in one of them), notNets (in none), selector
  (the address is a pod's whose labels + implicit labels match; in a NetworkPolicy only pods of
  its namespace, unless namespaceSelector is given), notSelector (NOT a pod, in that same scope,
  matching it), namespaceSelector (the address is a pod's in a namespace whose labels match;
  with selector both hold; in a GlobalNetworkPolicy a selector alone matches pods of every
  namespace), ports (destination only: numbers, "a:b" inclusive ranges, names = the destination
  pod's named container port of the probe's protocol; not a pod: no named ports), notPorts
  (numbers and ranges only; the port is in none). Addresses that are not pods (outside hosts,
  nodes, host-network pods) match nets/notNets by address, never selector/namespaceSelector,
  always notSelector. An ICMP probe has no port: a rule with ports or notPorts never matches it.
  An empty selector string in an entity is the same as no selector.
- The probes: TCP/UDP/SCTP to a port, or an ICMP echo request (IPv4: ICMP type 8 code 0; IPv6:
  ICMPv6 type 128 code 0).
- Valid objects only; InvalidPolicy for: an unknown spec, rule or entity field (rule `metadata`,
  annotations only, is known and has no effect); an action not Allow/Deny/Log/Pass; ports or
  notPorts without protocol TCP, UDP, SCTP or UDPLite; icmp/notICMP without ICMP/ICMPv6, or a
  code without a type; source ports (source.ports / source.notPorts, not supported); doNotTrack
  or preDNAT true (host endpoints are out of this reference's scope); a bad selector; a range
  start > end; a port outside 0..65535; named ports in notPorts; a bad CIDR.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tests.reference import calico_selector
from tests.reference.objects import InvalidPolicy, IPAddress, RefPod, network

API_VERSION = "projectcalico.org/v3"
KINDS = ("GlobalNetworkPolicy", "NetworkPolicy")
ACTIONS = ("Allow", "Deny", "Log", "Pass")
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
# Protocols whose ports a rule may name: vethguard reads the ports of these only (UDPLite's are
# refused, a documented decision).
WITH_PORTS = ("TCP", "UDP", "SCTP")
WITH_ICMP = ("ICMP", "ICMPv6")
ECHO_REQUEST = {4: ("ICMP", 8), 6: ("ICMPv6", 128)}
NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
KNP_ORDER = 1000.0
DIRECTIONS = {"Ingress": "ingress", "Egress": "egress"}

SPEC_FIELDS = frozenset(
    ("order", "selector", "types", "ingress", "egress", "preDNAT", "applyOnForward", "doNotTrack")
)
GLOBAL_SPEC_FIELDS = SPEC_FIELDS | {"namespaceSelector"}
RULE_FIELDS = frozenset(("action", "protocol", "icmp", "notICMP", "source", "destination", "metadata"))
ENTITY_FIELDS = frozenset(
    ("nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts")
)
_RANGE = re.compile(r"^(\d+):(\d+)$")


@functools.lru_cache(maxsize=4096)
def selector(text: str) -> calico_selector.Selector:
    return calico_selector.parse(text)


@dataclass(frozen=True)
class Probe:
    protocol: str  # TCP, UDP, SCTP, ICMP or ICMPv6
    port: int  # 0 for ICMP
    family: int
    icmp: tuple[int, int] | None = None  # (type, code) of an ICMP probe

    @staticmethod
    def of(protocol: str, port: int, family: int) -> Probe:
        if protocol in WITH_ICMP:
            name, kind = ECHO_REQUEST[family]
            return Probe(name, 0, family, (kind, 0))
        return Probe(protocol, port, family)


class Cluster(Protocol):
    """What the tier needs of the evaluator (evaluator.py's Evaluator)."""

    namespace_labels: dict[str, dict[str, str]]

    def _address(self, who: str, family: int) -> IPAddress | None: ...

    def _pod_at(self, who: str) -> RefPod | None: ...


PortSpec = tuple[int, int] | str  # an inclusive range, or a port name


@dataclass(frozen=True)
class CalicoPolicy:
    raw: Mapping[str, Any]
    namespace: str | None  # None: a GlobalNetworkPolicy
    name: str
    order: float | None
    selects_labels: calico_selector.Selector
    namespace_selector: calico_selector.Selector | None
    types: tuple[str, ...]

    @property
    def name_key(self) -> str:
        return self.name if self.namespace is None else f"{self.namespace}/{self.name}"

    def rules(self, policy_type: str) -> list[Mapping[str, Any]]:
        return list((self.raw.get("spec") or {}).get(DIRECTIONS[policy_type]) or [])


def pod_labels(pod: RefPod) -> dict[str, str]:
    """A pod's labels as Calico selectors see them: its own plus the implicit ones."""
    return {**pod.labels, NAMESPACE_LABEL: pod.namespace, ORCHESTRATOR_LABEL: "k8s"}


# -- validation ----------------------------------------------------------------------------------


def _known(obj: Any, fields: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidPolicy(f"{what}: an object, got {obj!r}")
    unknown = sorted(set(obj) - fields)
    if unknown:
        raise InvalidPolicy(f"{what}: unknown field {unknown[0]!r}")
    return obj


def _selector_field(obj: Mapping[str, Any], key: str, what: str) -> calico_selector.Selector | None:
    """The selector of obj[key]; None when absent or empty."""
    text = obj.get(key)
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise InvalidPolicy(f"{what}.{key}: a selector string, got {text!r}")
    try:
        return selector(text)
    except calico_selector.SelectorSyntaxError as exc:
        raise InvalidPolicy(f"{what}.{key}: {exc}") from exc


def _port(value: Any, what: str, names: bool) -> PortSpec:
    if isinstance(value, bool):
        raise InvalidPolicy(f"{what}: port {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str) and value.isdigit():
        lo = hi = int(value)
    elif isinstance(value, str) and _RANGE.match(value):
        m = _RANGE.match(value)
        assert m is not None
        lo, hi = int(m.group(1)), int(m.group(2))
    elif isinstance(value, str) and value and names:
        return value
    else:
        raise InvalidPolicy(f"{what}: port {value!r}")
    if not 0 <= lo <= hi <= 65535:
        raise InvalidPolicy(f"{what}: port {value!r} (0..65535, start <= end)")
    return (lo, hi)


def _entity(entity: Any, what: str, protocol: Any, source: bool, local: bool) -> None:
    """local: the side that is the selected pod itself, which vethguard matches by labels only
    (nets/notNets there are refused, a documented decision)."""
    entity = _known(entity, ENTITY_FIELDS, what)
    for key in ("nets", "notNets"):
        if key in entity and local:
            raise InvalidPolicy(f"{what}.{key}: addresses of the selected pod itself are not supported")
        if key in entity:
            if not isinstance(entity[key], list):
                raise InvalidPolicy(f"{what}.{key}: a list of CIDRs")
            for cidr in entity[key]:
                try:
                    network(cidr)
                except (ValueError, TypeError) as exc:
                    raise InvalidPolicy(f"{what}.{key}: {cidr!r} is not a CIDR") from exc
    for key in ("selector", "notSelector", "namespaceSelector"):
        _selector_field(entity, key, what)
    for key in ("ports", "notPorts"):
        if key not in entity:
            continue
        if source:
            raise InvalidPolicy(f"{what}.{key}: source ports are not supported")
        if protocol not in WITH_PORTS:
            raise InvalidPolicy(f"{what}.{key}: needs protocol TCP, UDP, SCTP or UDPLite, got {protocol!r}")
        if not isinstance(entity[key], list):
            raise InvalidPolicy(f"{what}.{key}: a list of ports")
        for value in entity[key]:
            _port(value, f"{what}.{key}", names=key == "ports")


def _icmp(value: Any, what: str, protocol: Any) -> None:
    if protocol not in WITH_ICMP:
        raise InvalidPolicy(f"{what}: needs protocol ICMP or ICMPv6, got {protocol!r}")
    value = _known(value, frozenset(("type", "code")), what)
    for key, top in (("type", 254), ("code", 255)):
        v = value.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top):
            raise InvalidPolicy(f"{what}.{key}: {v!r}")
    if "code" in value and "type" not in value:
        raise InvalidPolicy(f"{what}: a code needs a type")


def _rule(rule: Any, what: str, egress: bool) -> None:
    rule = _known(rule, RULE_FIELDS, what)
    if rule.get("action") not in ACTIONS:
        raise InvalidPolicy(f"{what}.action: {rule.get('action')!r} is not Allow, Deny, Log or Pass")
    protocol = rule.get("protocol")
    numeric = isinstance(protocol, int) and not isinstance(protocol, bool) and 1 <= protocol <= 255
    if protocol is not None and protocol not in PROTOCOL_NUMBERS and not numeric:
        raise InvalidPolicy(f"{what}.protocol: {protocol!r}")
    for key in ("icmp", "notICMP"):
        if key in rule:
            _icmp(rule[key], f"{what}.{key}", protocol)
    for key in ("source", "destination"):
        if key in rule:
            local = key == ("source" if egress else "destination")
            _entity(rule[key], f"{what}.{key}", protocol, source=key == "source", local=local)


def parse_calico_policy(raw: Mapping[str, Any]) -> CalicoPolicy:
    kind = raw.get("kind")
    meta = raw.get("metadata") or {}
    name = meta.get("name")
    if raw.get("apiVersion") != API_VERSION or kind not in KINDS:
        raise InvalidPolicy(f"not a Calico policy: {raw.get('apiVersion')} {kind}")
    if not isinstance(name, str) or not name:
        raise InvalidPolicy(f"{kind} without a name")
    namespace = None if kind == "GlobalNetworkPolicy" else str(meta.get("namespace") or "default")
    what = f"{kind} {name if namespace is None else f'{namespace}/{name}'}: spec"
    spec = _known(raw.get("spec") or {}, GLOBAL_SPEC_FIELDS if namespace is None else SPEC_FIELDS, what)
    order = spec.get("order")
    if order is not None and (isinstance(order, bool) or not isinstance(order, int | float)):
        raise InvalidPolicy(f"{what}.order: {order!r}")
    for flag in ("doNotTrack", "preDNAT"):
        if spec.get(flag) is True:
            raise InvalidPolicy(f"{what}.{flag}: true is not supported (host endpoints are out of scope)")
    for direction in ("ingress", "egress"):
        rules = spec.get(direction) or []
        if not isinstance(rules, list):
            raise InvalidPolicy(f"{what}.{direction}: a list of rules")
        for i, rule in enumerate(rules):
            _rule(rule, f"{what}.{direction}[{i}]", egress=direction == "egress")
    types = spec.get("types") or []
    if not isinstance(types, list) or any(t not in DIRECTIONS for t in types):
        raise InvalidPolicy(f"{what}.types: {types!r}")
    if not types:
        has_in, has_out = bool(spec.get("ingress")), bool(spec.get("egress"))
        types = ["Ingress", "Egress"] if has_in and has_out else ["Egress"] if has_out else ["Ingress"]
    return CalicoPolicy(
        raw,
        namespace,
        name,
        None if order is None else float(order),
        _selector_field(spec, "selector", what) or selector("all()"),
        _selector_field(spec, "namespaceSelector", what) if namespace is None else None,
        tuple(types),
    )


# -- decisions -------------------------------------------------------------------------------------


def _selects(cluster: Cluster, policy: CalicoPolicy, pod: RefPod) -> bool:
    if pod.host_network:
        return False
    if policy.namespace is not None and pod.namespace != policy.namespace:
        return False
    if policy.namespace_selector is not None and not policy.namespace_selector.matches(
        cluster.namespace_labels[pod.namespace]
    ):
        return False
    return policy.selects_labels.matches(pod_labels(pod))


def _in_nets(address: IPAddress | None, cidrs: Iterable[str]) -> bool:
    return address is not None and any(
        address.version == network(c).version and address in network(c) for c in cidrs
    )


def _port_hit(spec: PortSpec, probe: Probe, destination: RefPod | None) -> bool:
    if isinstance(spec, str):
        return destination is not None and (spec, probe.port, probe.protocol) in destination.container_ports
    return spec[0] <= probe.port <= spec[1]


def _entity_matches(
    cluster: Cluster,
    policy: CalicoPolicy,
    entity: Mapping[str, Any],
    who: str,
    probe: Probe,
    destination: RefPod | None,
) -> bool:
    address = cluster._address(who, probe.family)
    if "nets" in entity and not _in_nets(address, entity["nets"]):
        return False
    if "notNets" in entity and _in_nets(address, entity["notNets"]):
        return False
    pod = cluster._pod_at(who)
    namespaces = _selector_field(entity, "namespaceSelector", "entity")

    def in_scope(p: RefPod) -> bool:
        if namespaces is not None:
            return namespaces.matches(cluster.namespace_labels[p.namespace])
        return policy.namespace is None or p.namespace == policy.namespace

    if namespaces is not None and (pod is None or not in_scope(pod)):
        return False
    positive = _selector_field(entity, "selector", "entity")
    if positive is not None and (pod is None or not in_scope(pod) or not positive.matches(pod_labels(pod))):
        return False
    negative = _selector_field(entity, "notSelector", "entity")
    if negative is not None and pod is not None and in_scope(pod) and negative.matches(pod_labels(pod)):
        return False
    if "ports" in entity or "notPorts" in entity:
        if probe.icmp is not None:
            return False
        specs = {k: [_port(v, k, names=True) for v in entity.get(k) or []] for k in ("ports", "notPorts")}
        if "ports" in entity and not any(_port_hit(s, probe, destination) for s in specs["ports"]):
            return False
        if any(_port_hit(s, probe, destination) for s in specs["notPorts"]):
            return False
    return True


def _protocol_is(value: Any, probe: Probe) -> bool:
    return (
        value == probe.protocol if isinstance(value, str) else value == PROTOCOL_NUMBERS.get(probe.protocol)
    )


def _icmp_hit(spec: Mapping[str, Any], probe: Probe) -> bool:
    if probe.icmp is None:
        return False
    kind, code = probe.icmp
    return spec.get("type") == kind and ("code" not in spec or spec["code"] == code)


def _rule_matches(
    cluster: Cluster,
    policy: CalicoPolicy,
    rule: Mapping[str, Any],
    policy_type: str,
    pod: RefPod,
    peer: str,
    destination: RefPod | None,
    probe: Probe,
) -> bool:
    if "protocol" in rule and not _protocol_is(rule["protocol"], probe):
        return False
    if "icmp" in rule and not _icmp_hit(rule["icmp"], probe):
        return False
    if "notICMP" in rule and _icmp_hit(rule["notICMP"], probe):
        return False
    peer_key, own_key = ("source", "destination") if policy_type == "Ingress" else ("destination", "source")
    return _entity_matches(cluster, policy, rule.get(peer_key) or {}, peer, probe, destination) and (
        _entity_matches(cluster, policy, rule.get(own_key) or {}, pod.key, probe, destination)
    )


def tier_decision(
    cluster: Cluster,
    policies: Iterable[CalicoPolicy],
    pod: RefPod,
    policy_type: str,
    peer: str,
    destination: RefPod | None,
    probe: Probe,
    knps: Iterable[Mapping[str, Any]],
    knp_allows: Callable[[Mapping[str, Any]], bool],
) -> str | None:
    """None: the pod has no Calico tier for this direction. Otherwise "Allow", "Deny", "Pass" or
    "End" (no rule matched: denied, except a pod's egress to its own node, which only an explicit
    Deny rule blocks, vethguard's documented choice, docs/INTERNALS.md).
    knps: the Kubernetes NetworkPolicies selecting the pod for the direction; knp_allows(raw):
    a rule of that NetworkPolicy allows the connection (evaluator.py's NetworkPolicy matching)."""
    calico = [p for p in policies if policy_type in p.types and _selects(cluster, p, pod)]
    if not calico:
        return None
    members: list[tuple[tuple[int, float, str], CalicoPolicy | Mapping[str, Any]]] = [
        ((0, p.order, p.name_key) if p.order is not None else (1, 0.0, p.name_key), p) for p in calico
    ]
    for raw in knps:
        meta = raw["metadata"]
        members.append(
            ((0, KNP_ORDER, f"{meta.get('namespace', 'default')}/knp.default.{meta['name']}"), raw)
        )
    for _, member in sorted(members, key=lambda m: m[0]):
        if not isinstance(member, CalicoPolicy):  # a Kubernetes NetworkPolicy: Allow rules
            if knp_allows(member):
                return "Allow"
            continue
        for rule in member.rules(policy_type):
            matched = _rule_matches(cluster, member, rule, policy_type, pod, peer, destination, probe)
            if matched and rule["action"] != "Log":
                return str(rule["action"])
    return "End"  # the end of a tier that selects the pod: denied (the pod's own node aside)


def parse_all(raws: Iterable[Mapping[str, Any]]) -> list[CalicoPolicy]:
    return [parse_calico_policy(raw) for raw in raws]
