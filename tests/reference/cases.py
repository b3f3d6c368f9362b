"""Generated clusters and policies (Hypothesis strategies) for differential tests.

A `Case` is a cluster shape (namespaces, pods with labels and named ports, external hosts)
plus NetworkPolicies as raw API dicts. ipBlock CIDRs may be placeholders
`pod:<ns>/<name>:<family>:<prefixlen>` (the network of that length around that pod's
address) because the real addresses are only known once a lab has assigned them;
`materialize(case, addresses)` substitutes them and returns raw API objects for the
compiler, the evaluator and the lab alike. `unit_addresses(case)` is the address plan used
without a lab (the lab's own scheme: node i = 10.244.i.0/24 and fd00:10:244:i::/64).

What the strategies cover (issue #5, item 1): namespaces with labels (plus one that may have
no pods), pods with equal labels mapping one port name to different numbers, one name on
several protocols, single- and dual-stack pods; every peer form (podSelector,
namespaceSelector, both, ipBlock with except, pod-relative and literal CIDRs of both
families); matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist; every port form
(none, protocol only, `{}`, numeric, named, a name no pod has, endPort ranges including
1..65535, 65535..65535 and single-port ranges); policyTypes explicit, empty or omitted;
rules and peer/port lists omitted, empty or given; several policies per namespace.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

NAMESPACES = ("x", "y", "z")
NODES = (1, 2)
POD_LABEL_SETS: tuple[dict[str, str], ...] = (
    {},
    {"app": "a"},
    {"app": "b"},
    {"app": "a", "tier": "b"},
    {"tier": "a"},
)
NS_LABEL_SETS: tuple[dict[str, str], ...] = ({}, {"team": "a"}, {"team": "b"}, {"team": "a", "env": "prod"})
PORT_NAMES = ("http", "dns")
MISSING_PORT_NAME = "nosuchport"  # a name no pod declares
CONTAINER_PORTS = (53, 80, 81, 8080, 65535)
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_PORTS = (1, 53, 79, 80, 81, 8080, 32768, 65534, 65535)
QUERY_PORTS = (0, 1, 53, 79, 80, 81, 8080, 32768, 65534, 65535)
RANGES = ((1, 65535), (65535, 65535), (80, 80), (79, 81), (32768, 65535), (1, 1), (1, 80), (53, 8080))
LITERAL_CIDRS = {
    4: (
        "0.0.0.0/0",
        "10.244.0.0/16",
        "10.244.1.0/24",
        "10.244.2.0/25",
        "203.0.113.0/24",
        "203.0.113.5/32",
        "198.51.100.0/24",
        "10.0.0.0/8",
    ),
    6: (
        "::/0",
        "fd00:10:244::/56",
        "fd00:10:244:1::/64",
        "fd00:10:244:2::/64",
        "2001:db8::/32",
        "2001:db8::5/128",
        "2001:db8:1::/48",
        "fd00::/8",
    ),
}
# A documentation prefix that holds nothing in these clusters: stands in for a pod-relative
# CIDR whose pod has no address of that family (dropping the peer would widen the rule).
NOWHERE = {4: "192.0.2.0/24", 6: "2001:db8:ffff::/48"}


@dataclass(frozen=True)
class PodShape:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    node: int
    ports: tuple[tuple[str | None, int, str], ...]  # (name, number, protocol)
    families: tuple[int, ...] = (4, 6)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ExternalShape:
    name: str
    ips: tuple[str, ...]
    ports: tuple[tuple[int, str], ...]


EXTERNALS = (
    ExternalShape("world", ("203.0.113.5", "2001:db8::5"), ((80, "TCP"), (80, "UDP"), (53, "UDP"))),
    ExternalShape("other", ("198.51.100.7", "2001:db8:1::7"), ((80, "TCP"), (8080, "TCP"))),
    ExternalShape("near", ("10.0.0.5", "fd00:99::5"), ((80, "TCP"), (81, "SCTP"))),
)


@dataclass
class Case:
    namespaces: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    pods: tuple[PodShape, ...]
    policies: tuple[dict[str, Any], ...]
    externals: tuple[ExternalShape, ...] = EXTERNALS
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"namespace {n} {dict(labels)}" for n, labels in self.namespaces]
        lines += [
            f"pod {p.key} node-{p.node} {dict(p.labels)} ports={list(p.ports)} ipv{p.families}"
            for p in self.pods
        ]
        lines += [
            f"policy {p['metadata']['namespace']}/{p['metadata']['name']}: {p['spec']}" for p in self.policies
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# strategies

POD_KEYS = st.sampled_from(("app", "tier", "env"))
POD_VALUES = st.sampled_from(("a", "b"))
NS_KEYS = st.sampled_from(("team", "env", "kubernetes.io/metadata.name"))
NS_VALUES = st.sampled_from(("a", "b", "prod", "x", "y", "z"))


def selectors(
    keys: st.SearchStrategy[str], values: st.SearchStrategy[str]
) -> st.SearchStrategy[dict[str, Any]]:
    expression = st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")).flatmap(
        lambda op: st.fixed_dictionaries(
            {"key": keys, "operator": st.just(op)}
            | (
                {"values": st.lists(values, min_size=1, max_size=2, unique=True)}
                if op in ("In", "NotIn")
                else {}
            )
        )
    )
    match_labels = st.dictionaries(keys, values, min_size=1, max_size=2)
    expressions = st.lists(expression, min_size=1, max_size=2)
    return st.sampled_from(("everything", "labels", "expressions", "both")).flatmap(
        lambda form: (
            st.just({})
            if form == "everything"
            else st.fixed_dictionaries(
                {
                    **({"matchLabels": match_labels} if form in ("labels", "both") else {}),
                    **({"matchExpressions": expressions} if form in ("expressions", "both") else {}),
                }
            )
        )
    )


POD_SELECTORS = selectors(POD_KEYS, POD_VALUES)
NS_SELECTORS = selectors(NS_KEYS, NS_VALUES)


POD_PREFIX_LENGTHS = {4: (32, 31, 28, 24, 16), 6: (128, 127, 124, 64, 56)}


@st.composite
def cidrs(draw: st.DrawFn, pod_keys: tuple[str, ...], family: int, longer_than: int = -1) -> str:
    """A literal CIDR, or a placeholder for the network of some length around a pod's address."""
    pod_relative = draw(st.booleans())
    if pod_keys and pod_relative:
        lengths = [n for n in POD_PREFIX_LENGTHS[family] if n > longer_than] or [
            POD_PREFIX_LENGTHS[family][0]
        ]
        return f"pod:{draw(st.sampled_from(pod_keys))}:{family}:{draw(st.sampled_from(lengths))}"
    literal = [c for c in LITERAL_CIDRS[family] if int(c.split("/")[1]) > longer_than] or [
        LITERAL_CIDRS[family][-1]
    ]
    return draw(st.sampled_from(literal))


def _prefixlen(text: str) -> int:
    return int(text.rsplit(":" if text.startswith("pod:") else "/", 1)[1])


@st.composite
def ip_block_peers(draw: st.DrawFn, pod_keys: tuple[str, ...]) -> dict[str, Any]:
    family = draw(st.sampled_from((4, 6)))
    block: dict[str, Any] = {"cidr": draw(cidrs(pod_keys, family))}
    if draw(st.sampled_from((True, True, False))):
        # Longer prefixes of the same family, so that most are inside the cidr; the ones that
        # turn out not to be strict subsets are dropped by materialize() (the API rejects them).
        longer = _prefixlen(block["cidr"])
        block["except"] = draw(st.lists(cidrs(pod_keys, family, longer), max_size=3))
    return {"ipBlock": block}


@st.composite
def peers(draw: st.DrawFn, pod_keys: tuple[str, ...]) -> dict[str, Any]:
    form = draw(st.sampled_from(("pod", "namespace", "both", "ipBlock", "ipBlock")))
    if form == "ipBlock":
        return draw(ip_block_peers(pod_keys))
    peer: dict[str, Any] = {}
    if form in ("pod", "both"):
        peer["podSelector"] = draw(POD_SELECTORS)
    if form in ("namespace", "both"):
        peer["namespaceSelector"] = draw(NS_SELECTORS)
    return peer


PROTOCOL_FIELD = {"protocol": st.sampled_from(PROTOCOLS)}


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    if draw(st.booleans()):
        return draw(st.sampled_from(RANGES))
    lo, hi = sorted(draw(st.lists(st.sampled_from(POLICY_PORTS), min_size=2, max_size=2)))
    return lo, hi


@st.composite
def policy_ports(draw: st.DrawFn) -> dict[str, Any]:
    form = draw(st.sampled_from(("{}", "protocol", "number", "number", "name", "name", "range", "range")))
    protocol = draw(st.sampled_from((None, "TCP", "UDP", "SCTP")))  # None: the field is omitted
    port: dict[str, Any] = {}
    if form == "{}":
        return port  # protocol TCP, every port
    if protocol is not None or form == "protocol":
        port["protocol"] = protocol or "UDP"
    if form == "number":
        port["port"] = draw(st.sampled_from(POLICY_PORTS))
    elif form == "name":
        port["port"] = draw(st.sampled_from((*PORT_NAMES, MISSING_PORT_NAME)))
    elif form == "range":
        port["port"], port["endPort"] = draw(ranges())
    return port


POLICY_PORT_FORMS = policy_ports()


# Hypothesis favours the simplest branch of one_of / optional keys, which left most generated
# rules without peers or ports; shapes are therefore drawn with sampled_from (uniform), and
# the rich shapes are listed more than once to weigh them up.
@st.composite
def rules(draw: st.DrawFn, peer_key: str, pod_keys: tuple[str, ...]) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    peer_shape = draw(st.sampled_from(("omitted", "empty", "list", "list", "list", "list")))
    if peer_shape != "omitted":
        rule[peer_key] = (
            [] if peer_shape == "empty" else draw(st.lists(peers(pod_keys), min_size=1, max_size=3))
        )
    port_shape = draw(st.sampled_from(("omitted", "empty", "list", "list", "list")))
    if port_shape != "omitted":
        rule["ports"] = (
            [] if port_shape == "empty" else draw(st.lists(POLICY_PORT_FORMS, min_size=1, max_size=3))
        )
    return rule


@st.composite
def rule_lists(draw: st.DrawFn, peer_key: str, pod_keys: tuple[str, ...]) -> list[dict[str, Any]]:
    shape = draw(st.sampled_from(("deny", "allow-all", "rules", "rules", "rules", "rules")))
    if shape == "deny":
        return []
    if shape == "allow-all":
        return [{}]
    return draw(st.lists(rules(peer_key, pod_keys), min_size=1, max_size=3))


@st.composite
def policies(
    draw: st.DrawFn, namespaces: tuple[str, ...], pod_keys: tuple[str, ...], index: int
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(POD_SELECTORS)}
    types = draw(st.sampled_from((None, [], ["Ingress"], ["Egress"], ["Ingress", "Egress"])))
    if types is not None:
        spec["policyTypes"] = types
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        if draw(st.sampled_from((True, True, False))):  # False: the key is omitted
            spec[direction] = draw(rule_lists(peer_key, pod_keys))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": draw(st.sampled_from(namespaces)), "name": f"p{index}"},
        "spec": spec,
    }


CONTAINER_PORT_LISTS = st.lists(
    st.tuples(
        st.sampled_from((*PORT_NAMES, *PORT_NAMES, None)),
        st.sampled_from(CONTAINER_PORTS),
        st.sampled_from(PROTOCOLS),
    ),
    max_size=5,
    unique_by=(lambda t: (t[1], t[2]), lambda t: (t[0], t[2]) if t[0] else (None, t[1], t[2])),
)


@st.composite
def pod_shapes(draw: st.DrawFn, namespaces: tuple[str, ...], index: int, single_stack: bool) -> PodShape:
    # () = a pod not yet given addresses: it still shapes identities and named-port resolution.
    families = draw(st.sampled_from(((4, 6), (4, 6), (4, 6), (4,), (6,), ()))) if single_stack else (4, 6)
    return PodShape(
        namespace=draw(st.sampled_from(namespaces)),
        name=f"p{index}",
        labels=tuple(sorted(draw(st.sampled_from(POD_LABEL_SETS)).items())),
        node=draw(st.sampled_from(NODES)),
        ports=tuple(draw(CONTAINER_PORT_LISTS)),
        families=families,
    )


@st.composite
def cases(
    draw: st.DrawFn,
    max_pods: int = 5,
    max_policies: int = 4,
    single_stack: bool = True,
    min_policies: int = 1,
) -> Case:
    ns_count = draw(st.integers(2, 3))
    namespaces = tuple(
        (name, tuple(sorted(draw(st.sampled_from(NS_LABEL_SETS)).items()))) for name in NAMESPACES[:ns_count]
    )
    names = tuple(n for n, _ in namespaces)
    n_pods = draw(st.integers(2, max_pods))
    pods = tuple(draw(pod_shapes(names, i, single_stack)) for i in range(n_pods))
    keys = tuple(p.key for p in pods)
    n_pol = draw(st.integers(min_policies, max_policies))
    pols = tuple(draw(policies(names, keys, i)) for i in range(n_pol))
    return Case(namespaces, pods, pols)


# ---------------------------------------------------------------------------------------------
# addresses and raw objects


def unit_addresses(case: Case) -> dict[str, list[str]]:
    """The address plan without a lab: node i = 10.244.i.0/24 and fd00:10:244:i::/64."""
    out: dict[str, list[str]] = {}
    for i, pod in enumerate(case.pods):
        host = 10 + i
        ips = []
        if 4 in pod.families:
            ips.append(f"10.244.{pod.node}.{host}")
        if 6 in pod.families:
            ips.append(f"fd00:10:244:{pod.node}::{host:x}")
        out[pod.key] = ips
    return out


def _resolve_cidr(text: str, addresses: dict[str, list[str]]) -> str:
    if not text.startswith("pod:"):
        return text
    _, key, family, plen = text.split(":")
    for ip in addresses.get(key, []):
        if ipaddress.ip_address(ip).version == int(family):
            return str(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
    return NOWHERE[int(family)]


def _strict_subset(inner: str, outer: str) -> bool:
    a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
    return a.version == b.version and a.prefixlen > b.prefixlen and a.supernet(new_prefix=b.prefixlen) == b


def materialize_policy(raw: dict[str, Any], addresses: dict[str, list[str]]) -> dict[str, Any]:
    """Substitute CIDR placeholders; drop excepts that are not strict subsets (the API rejects them)."""
    out = copy.deepcopy(raw)
    spec = out["spec"]
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction) or []:
            for peer in rule.get(peer_key) or []:
                block = peer.get("ipBlock")
                if block is None:
                    continue
                block["cidr"] = _resolve_cidr(block["cidr"], addresses)
                if "except" in block:
                    resolved = [_resolve_cidr(e, addresses) for e in block["except"]]
                    block["except"] = [e for e in dict.fromkeys(resolved) if _strict_subset(e, block["cidr"])]
    return out


def namespace_objects(case: Case) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": dict(labels)}}
        for n, labels in case.namespaces
    ]


def pod_object(pod: PodShape, ips: list[str] | None = None) -> dict[str, Any]:
    """A Pod manifest (ips given: with the status a running pod would have)."""
    containers = [
        {
            "name": f"c{i}",
            "image": "agnhost",
            "ports": [{"containerPort": num, "protocol": proto, **({"name": name} if name else {})}],
        }
        for i, (name, num, proto) in enumerate(pod.ports)
    ] or [{"name": "main", "image": "agnhost"}]
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": pod.namespace, "name": pod.name, "labels": dict(pod.labels)},
        "spec": {"nodeName": f"node-{pod.node}", "containers": containers},
    }
    if ips is not None:
        obj["status"] = {
            "phase": "Running" if ips else "Pending",
            "podIPs": [{"ip": ip} for ip in ips],
            **({"podIP": ips[0]} if ips else {}),
        }
    return obj


def external_objects(case: Case) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "lab.vethguard.dev/v1alpha1",
            "kind": "ExternalHost",
            "metadata": {"name": e.name},
            "spec": {"ip": list(e.ips), "ports": [{"port": p, "protocol": proto} for p, proto in e.ports]},
        }
        for e in case.externals
    ]


def node_objects(families: tuple[int, ...] = (4, 6)) -> list[dict[str, Any]]:
    out = []
    for n in NODES:
        addrs = [a for a, f in ((f"10.244.{n}.1", 4), (f"fd00:10:244:{n}::1", 6)) if f in families]
        out.append(
            {
                "metadata": {"name": f"node-{n}"},
                "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addrs]},
            }
        )
    return out


@dataclass(frozen=True)
class Query:
    src: str  # "ns/name" or an external address
    dst: str
    port: int
    protocol: str
    family: int


def queries(
    case: Case,
    addresses: dict[str, list[str]],
    ports: tuple[int, ...] = QUERY_PORTS,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> Iterator[Query]:
    """Every pod/external pair (not a pod with itself, not outside to outside), every port,
    protocol and family where both ends have an address; plus one ICMP query per pair."""
    for family in (4, 6):
        ends: list[str] = [
            p.key
            for p in case.pods
            if any(ipaddress.ip_address(a).version == family for a in addresses[p.key])
        ]
        outside = [ip for e in case.externals for ip in e.ips if ipaddress.ip_address(ip).version == family]
        for src in ends + outside:
            for dst in ends + outside:
                if src == dst or (src in outside and dst in outside):
                    continue
                for protocol in protocols:
                    for port in ports:
                        yield Query(src, dst, port, protocol, family)
                yield Query(src, dst, 0, "ICMP" if family == 4 else "ICMPv6", family)
