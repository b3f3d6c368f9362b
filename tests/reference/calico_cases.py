"""Random projectcalico.org/v3 policies over the generated clusters of cases.py (Hypothesis
strategies), for differential tests of the Calico front end against the reference evaluator
(calico.py). Imports nothing from controller/.

`calico_cases()` draws a cluster (cases.cases, with host-network pods and ClusterNetworkPolicies
when asked) plus GlobalNetworkPolicies and namespaced Calico NetworkPolicies. CIDRs in
`nets` / `notNets` may be placeholders (`pod:...`, `node:...`, as in cases.py);
`calico_manifests(case, addresses)` returns the policies as raw manifests with them resolved,
ready for the product's parser and for `Evaluator(..., calico_policies=...)`:

    addresses = unit_addresses(c.case)
    manifests = calico_manifests(c, addresses)

What the strategies cover: both kinds; orders absent, integral, fractional, 1000 (the
Kubernetes NetworkPolicies' order) and ties (twins of earlier policies; names "a…", "k…", "z…"
so that name keys sort around "<ns>/knp.default.<name>"); types omitted or explicit (also one
that leaves the other direction's rules out); rule lists omitted, empty or 1..3 rules; every
action (Allow, Deny, Pass, Log); protocols omitted, by name (TCP, UDP, SCTP, UDPLite, ICMP,
ICMPv6) or number (6, 17, 1, 58); icmp / notICMP types with and without code; entities with
nets / notNets (pod-, node- and literal CIDRs), selector / notSelector (pod labels and the
implicit projectcalico.org/namespace and orchestrator labels) and namespaceSelector, on the peer
and on the selected pod's side; destination ports as numbers, "a:b" ranges and names (the
names pods declare and one no pod has) and notPorts (numbers and ranges); spec.selector
omitted, "", all() or expressions, and spec.namespaceSelector on GlobalNetworkPolicies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.reference.cases import (
    MISSING_PORT_NAME,
    POLICY_PORTS,
    PORT_NAMES,
    RANGES,
    Case,
    _resolve_cidr,
    cases,
    network_cidrs,
)

API_VERSION = "projectcalico.org/v3"
ORDERS = (None, None, 0, 10, 10, 10.5, 1000, 1000, 2000)
NAME_PREFIXES = ("a", "k", "z")  # around "knp.default.<name>"
ACTIONS = ("Allow", "Allow", "Deny", "Deny", "Pass", "Log")
PROTOCOLS: tuple[str | int | None, ...] = (
    *(None, None, "TCP", "TCP", "UDP", "SCTP", "UDPLite"),
    *("ICMP", "ICMP", "ICMPv6", 6, 17, 1, 58),
)
WITH_PORTS = ("TCP", "UDP", "SCTP")
ICMP_TYPES = {"ICMP": (8, 0, 3), "ICMPv6": (128, 129)}
POD_TERMS = (
    *("app == 'a'", "app == 'b'", "app != 'a'", "has(tier)", "!has(app)", "app in {'a', 'b'}"),
    *("tier not in {'a'}", "env == 'a'", "projectcalico.org/namespace == 'x'"),
    *("projectcalico.org/namespace in {'y', 'z'}", "projectcalico.org/orchestrator == 'k8s'"),
)
NS_TERMS = (
    *("team == 'a'", "team != 'b'", "has(env)", "env == 'prod'"),
    *("kubernetes.io/metadata.name == 'x'", "kubernetes.io/metadata.name in {'y', 'z'}"),
)


@dataclass
class CalicoCase:
    case: Case
    calico_policies: tuple[dict[str, Any], ...]

    def describe(self) -> str:
        lines = [self.case.describe()]
        for p in self.calico_policies:
            meta = p["metadata"]
            key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
            lines.append(f"calico {p['kind']} {key}: {p['spec']}")
        return "\n".join(lines)


@st.composite
def calico_selectors(draw: st.DrawFn, terms: tuple[str, ...], empty: bool = True) -> str:
    form = draw(
        st.sampled_from(("all", "term", "term", "term", "and", "or", "not", *(("",) if empty else ())))
    )
    if form in ("", "all"):
        return "" if form == "" else "all()"
    one = draw(st.sampled_from(terms))
    if form == "term":
        return one
    if form == "not":
        return f"!({one})"
    two = draw(st.sampled_from(terms))
    return f"{one} {'&&' if form == 'and' else '||'} ({two})"


@st.composite
def port_lists(draw: st.DrawFn, names: bool) -> list[int | str]:
    def one(form: str) -> st.SearchStrategy[int | str]:
        if form == "number":
            return st.sampled_from(POLICY_PORTS)
        if form == "range":
            return st.sampled_from(RANGES).map(lambda r: f"{r[0]}:{r[1]}")
        return st.sampled_from((*PORT_NAMES, MISSING_PORT_NAME))

    forms = ("number", "range", *(("name", "name") if names else ()))
    return draw(st.lists(st.sampled_from(forms).flatmap(one), min_size=1, max_size=3))


@st.composite
def entities(draw: st.DrawFn, pod_keys: tuple[str, ...], peer: bool, ports: bool) -> dict[str, Any]:
    """An EntityRule: the peer's (rich) or the selected pod's own (sparse); ports: it is the
    destination of a rule whose protocol has ports."""
    # the selected pod's own side is matched by labels only (vethguard refuses nets there)
    fields: tuple[str, ...] = ("nets", "notNets", "selector", "notSelector", "namespaceSelector")
    if not peer:
        fields = fields[2:]
    chosen = draw(st.lists(st.sampled_from(fields), max_size=3 if peer else 1, unique=True))
    if not peer and draw(st.booleans()):
        chosen = []
    out: dict[str, Any] = {}
    for field in chosen:
        if field in ("nets", "notNets"):
            out[field] = draw(st.lists(network_cidrs(pod_keys), min_size=1, max_size=2, unique=True))
        elif field == "namespaceSelector":
            out[field] = draw(calico_selectors(NS_TERMS, empty=False))
        else:
            out[field] = draw(calico_selectors(POD_TERMS, empty=False))
    if ports:
        for field in draw(
            st.sampled_from(((), ("ports",), ("ports",), ("notPorts",), ("ports", "notPorts")))
        ):
            out[field] = draw(port_lists(names=field == "ports"))
    return out


@st.composite
def calico_rules(draw: st.DrawFn, egress: bool, pod_keys: tuple[str, ...]) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": draw(st.sampled_from(ACTIONS))}
    protocol = draw(st.sampled_from(PROTOCOLS))
    if protocol is not None:
        rule["protocol"] = protocol
    if isinstance(protocol, str) and protocol in ICMP_TYPES and draw(st.booleans()):
        icmp: dict[str, int] = {"type": draw(st.sampled_from(ICMP_TYPES[protocol]))}
        if draw(st.booleans()):
            icmp["code"] = draw(st.sampled_from((0, 0, 1)))
        rule[draw(st.sampled_from(("icmp", "icmp", "notICMP")))] = icmp
    has_ports = protocol in WITH_PORTS
    peer_key, own_key = ("destination", "source") if egress else ("source", "destination")
    for key, peer in ((peer_key, True), (own_key, False)):
        entity = draw(entities(pod_keys, peer, ports=has_ports and key == "destination"))
        if entity:
            rule[key] = entity
    return rule


@st.composite
def calico_policies(
    draw: st.DrawFn,
    namespaces: tuple[str, ...],
    pod_keys: tuple[str, ...],
    index: int,
    earlier: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """A GlobalNetworkPolicy or a namespaced NetworkPolicy; often at the order of an earlier one."""
    global_ = draw(st.booleans())
    spec: dict[str, Any] = {}
    order = draw(st.sampled_from(ORDERS))
    if len(earlier) > 0 and draw(st.booleans()):
        order = draw(st.sampled_from(earlier))["spec"].get("order")
    if order is not None:
        spec["order"] = order
    if draw(st.sampled_from((True, True, False))):
        spec["selector"] = draw(calico_selectors(POD_TERMS))
    if global_ and draw(st.sampled_from((False, False, True))):
        spec["namespaceSelector"] = draw(calico_selectors(NS_TERMS, empty=False))
    types = draw(st.sampled_from((None, None, ["Ingress"], ["Egress"], ["Ingress", "Egress"])))
    if types is not None:
        spec["types"] = types
    for direction, egress in (("ingress", False), ("egress", True)):
        shape = draw(st.sampled_from(("omitted", "empty", "rules", "rules", "rules")))
        if shape != "omitted":
            count = 0 if shape == "empty" else draw(st.integers(1, 3))
            spec[direction] = [draw(calico_rules(egress, pod_keys)) for _ in range(count)]
    name = f"{draw(st.sampled_from(NAME_PREFIXES))}{index}"
    metadata = {"name": name} if global_ else {"namespace": draw(st.sampled_from(namespaces)), "name": name}
    kind = "GlobalNetworkPolicy" if global_ else "NetworkPolicy"
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


@st.composite
def calico_cases(draw: st.DrawFn, max_calico: int = 4, **case_options: Any) -> CalicoCase:
    """A cluster from cases.cases(**case_options) (its NetworkPolicies and, if asked, its
    ClusterNetworkPolicies and host-network pods) plus 1..max_calico Calico policies."""
    case = draw(cases(**case_options))
    names = tuple(n for n, _ in case.namespaces)
    keys = tuple(p.key for p in case.pods)
    out: tuple[dict[str, Any], ...] = ()
    for i in range(draw(st.integers(1, max_calico))):
        out += (draw(calico_policies(names, keys, i, out)),)
    return CalicoCase(case, out)


def calico_manifests(case: CalicoCase, addresses: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The Calico policies as raw manifests, nets/notNets placeholders resolved (repeats dropped)."""
    out = []
    for raw in case.calico_policies:
        manifest = copy.deepcopy(raw)
        for rule in [*manifest["spec"].get("ingress", []), *manifest["spec"].get("egress", [])]:
            for side in ("source", "destination"):
                for field in ("nets", "notNets"):
                    if field in rule.get(side, {}):
                        resolved = (_resolve_cidr(c, addresses) for c in rule[side][field])
                        rule[side][field] = list(dict.fromkeys(resolved))
        out.append(manifest)
    return out
