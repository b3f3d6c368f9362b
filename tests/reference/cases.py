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

With `cluster_policies` / `host_network` (issue 15), a case also has ClusterNetworkPolicies
(policy.networking.k8s.io/v1alpha2) and host-network pods, and its nodes get labels
(kubernetes.io/hostname, kubernetes.io/os and a random `role`). The CNPs cover both tiers,
priorities from a small set and twins of earlier policies (same tier and priority, often the
same subject: the metadata.name tie-break and a Pass across policies decide answers; names do
not sort in creation order), Accept/Deny/Pass, subjects `namespaces` and `pods`
(namespaceSelector given or omitted), one to three rules per direction (or none, or the key
omitted), rule names given or not, peers `namespaces`, `pods`, `networks` (CIDRs around pod
addresses, host-network pods' and nodes' addresses, and literal ones covering pods, nodes and
outside hosts) and `nodes` (node label selectors), and protocols omitted or tcp/udp/sctp
destinationPort number or range, or destinationNamedPort (the names pods declare, with
different numbers on different pods, and a name no pod has; only beside `namespaces` / `pods`
peers, as the CRD requires). Networks placeholders `node:<number>:<family>:<prefixlen>` stand for
the network around a node's address. `queries` adds node addresses and host-network pods as
sources and destinations.
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
    host_network: bool = False  # its addresses are its node's (families: the node's)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeShape:
    number: int  # node-<number>, addresses 10.244.<number>.1 and fd00:10:244:<number>::1
    labels: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return f"node-{self.number}"


def node_external_ips(number: int, families: tuple[int, ...] = (4, 6)) -> list[str]:
    """A node's ExternalIP: matched by `nodes` peers, but not one of the node's own addresses."""
    return [f"198.51.100.{number}"] if 4 in families else []


def node_ips(number: int, families: tuple[int, ...] = (4, 6)) -> list[str]:
    """A node's addresses in the unit plan (and the lab's): the .1 / ::1 of its pod networks."""
    return [a for a, f in ((f"10.244.{number}.1", 4), (f"fd00:10:244:{number}::1", 6)) if f in families]


def _node_labels(number: int, role: str | None = None) -> tuple[tuple[str, str], ...]:
    labels = {"kubernetes.io/hostname": f"node-{number}", "kubernetes.io/os": "linux"}
    if role is not None:
        labels["role"] = role
    return tuple(sorted(labels.items()))


DEFAULT_NODES = tuple(NodeShape(n, _node_labels(n)) for n in NODES)


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
    cluster_policies: tuple[dict[str, Any], ...] = ()
    nodes: tuple[NodeShape, ...] = DEFAULT_NODES

    def describe(self) -> str:
        lines = [f"node {n.name} {dict(n.labels)} {node_ips(n.number)}" for n in self.nodes]
        lines += [f"namespace {n} {dict(labels)}" for n, labels in self.namespaces]
        lines += [
            f"pod {p.key} node-{p.node} {dict(p.labels)} ports={list(p.ports)} "
            + ("hostNetwork" if p.host_network else f"ipv{p.families}")
            for p in self.pods
        ]
        lines += [
            f"policy {p['metadata']['namespace']}/{p['metadata']['name']}: {p['spec']}" for p in self.policies
        ]
        lines += [f"cluster policy {p['metadata']['name']}: {p['spec']}" for p in self.cluster_policies]
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
def pod_shapes(
    draw: st.DrawFn, namespaces: tuple[str, ...], index: int, single_stack: bool, host_network: bool = False
) -> PodShape:
    # () = a pod not yet given addresses: it still shapes identities and named-port resolution.
    families = (
        draw(st.sampled_from(((4, 6), (4, 6), (4, 6), (4,), (6,), ())))
        if single_stack and not host_network
        else (4, 6)
    )
    return PodShape(
        namespace=draw(st.sampled_from(namespaces)),
        name=f"p{index}",
        labels=tuple(sorted(draw(st.sampled_from(POD_LABEL_SETS)).items())),
        node=draw(st.sampled_from(NODES)),
        ports=tuple(draw(CONTAINER_PORT_LISTS)),
        families=families,
        host_network=host_network,
    )


# -- ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) ------------------------------------

CNP_API_VERSION = "policy.networking.k8s.io/v1alpha2"
CNP_PRIORITIES = (0, 5, 5, 1000)  # few values: equal priorities are common, names break the tie
CNP_NAME_PREFIXES = ("a", "b", "c")  # "c0" sorts after "a1": name order is not creation order
NODE_ROLES = ("worker", "infra", None)


def broad_selectors(
    pairs: tuple[tuple[str, str], ...], general: st.SearchStrategy[dict[str, Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Selectors that often select something: `{}`, one label the cluster uses, or any selector.
    (With `selectors` alone, a subject AND a peer AND a protocol rarely all matched, and most
    generated ClusterNetworkPolicies changed no answer.)"""
    return st.sampled_from(("everything", "everything", "label", "label", "general")).flatmap(
        lambda form: (
            st.just({})
            if form == "everything"
            else st.sampled_from(pairs).map(lambda kv: {"matchLabels": {kv[0]: kv[1]}})
            if form == "label"
            else general
        )
    )


CNP_NS_SELECTORS = broad_selectors(
    (
        ("kubernetes.io/metadata.name", "x"),
        ("kubernetes.io/metadata.name", "y"),
        ("team", "a"),
        ("team", "b"),
        ("env", "prod"),
    ),
    NS_SELECTORS,
)
CNP_POD_SELECTORS = broad_selectors((("app", "a"), ("app", "b"), ("tier", "a"), ("tier", "b")), POD_SELECTORS)
NODE_SELECTORS = broad_selectors(
    (
        ("kubernetes.io/hostname", "node-1"),
        ("kubernetes.io/hostname", "node-2"),
        ("role", "worker"),
        ("role", "infra"),
    ),
    selectors(
        st.sampled_from(("kubernetes.io/hostname", "role", "kubernetes.io/os")),
        st.sampled_from(("node-1", "node-2", "worker", "infra", "linux")),
    ),
)
CNP_RANGES = tuple((lo, hi) for lo, hi in RANGES if lo < hi)  # the CRD wants start < end


@st.composite
def node_shapes(draw: st.DrawFn) -> tuple[NodeShape, ...]:
    return tuple(NodeShape(n, _node_labels(n, draw(st.sampled_from(NODE_ROLES)))) for n in NODES)


@st.composite
def namespaced_pods(draw: st.DrawFn) -> dict[str, Any]:
    """A `pods` subject or peer: podSelector (required) and namespaceSelector (optional)."""
    out = {"podSelector": draw(CNP_POD_SELECTORS)}
    if draw(st.sampled_from((True, True, False))):
        out = {"namespaceSelector": draw(CNP_NS_SELECTORS), **out}
    return out


@st.composite
def network_cidrs(draw: st.DrawFn, pod_keys: tuple[str, ...]) -> str:
    """A CIDR around a pod's (or host-network pod's) address, around a node's, or a literal one
    (pods' and nodes' networks, outside hosts, everything)."""
    family = draw(st.sampled_from((4, 6)))
    form = draw(st.sampled_from(("pod", "node", "literal", "literal")))
    if form == "node":
        lengths = POD_PREFIX_LENGTHS[family]
        return f"node:{draw(st.sampled_from(NODES))}:{family}:{draw(st.sampled_from(lengths))}"
    return str(draw(cidrs(pod_keys if form == "pod" else (), family)))


@st.composite
def cnp_peers(draw: st.DrawFn, egress: bool, pod_keys: tuple[str, ...]) -> dict[str, Any]:
    kinds = ("namespaces", "pods", "pods", *(("networks", "networks", "nodes") if egress else ()))
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return {"namespaces": draw(CNP_NS_SELECTORS)}
    if kind == "pods":
        return {"pods": draw(namespaced_pods())}
    if kind == "nodes":
        return {"nodes": draw(NODE_SELECTORS)}
    return {"networks": draw(st.lists(network_cidrs(pod_keys), min_size=1, max_size=3, unique=True))}


@st.composite
def cnp_protocols(draw: st.DrawFn, named: bool) -> dict[str, Any]:
    form = draw(st.sampled_from(("number", "range", *(("name", "name") if named else ()))))
    if form == "name":
        return {"destinationNamedPort": draw(st.sampled_from((*PORT_NAMES, MISSING_PORT_NAME)))}
    protocol = draw(st.sampled_from(("tcp", "udp", "sctp")))
    if form == "number":
        return {protocol: {"destinationPort": {"number": draw(st.sampled_from(POLICY_PORTS))}}}
    if draw(st.booleans()):
        start, end = draw(st.sampled_from(CNP_RANGES))
    else:
        start, end = sorted(
            draw(st.lists(st.sampled_from(POLICY_PORTS), min_size=2, max_size=2, unique=True))
        )
    return {protocol: {"destinationPort": {"range": {"start": start, "end": end}}}}


@st.composite
def cnp_rules(draw: st.DrawFn, egress: bool, pod_keys: tuple[str, ...], index: int) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule["name"] = f"rule-{index}"
    rule["action"] = draw(st.sampled_from(("Accept", "Deny", "Pass")))
    peers = draw(st.lists(cnp_peers(egress, pod_keys), min_size=1, max_size=3))
    rule["to" if egress else "from"] = peers
    if draw(st.sampled_from((False, True, True))):
        # a named port only beside pod peers: the CRD refuses it with networks or nodes peers
        named = not any("networks" in p or "nodes" in p for p in peers)
        rule["protocols"] = draw(st.lists(cnp_protocols(named), min_size=1, max_size=3))
    return rule


@st.composite
def cluster_network_policies(
    draw: st.DrawFn, pod_keys: tuple[str, ...], index: int, earlier: tuple[dict[str, Any], ...] = ()
) -> dict[str, Any]:
    """A ClusterNetworkPolicy; often a twin of an earlier one (same tier and priority, and often
    the same subject), so that the name tie-break and a Pass across policies decide answers."""
    twin: dict[str, Any] | None = None
    if len(earlier) > 0 and draw(st.booleans()):
        twin = draw(st.sampled_from(earlier))
    if twin is not None and draw(st.booleans()):
        subject: dict[str, Any] = copy.deepcopy(twin["spec"]["subject"])
    elif draw(st.booleans()):
        subject = {"namespaces": draw(CNP_NS_SELECTORS)}
    else:
        subject = {"pods": draw(namespaced_pods())}
    spec: dict[str, Any] = {
        "tier": twin["spec"]["tier"] if twin else draw(st.sampled_from(("Admin", "Baseline"))),
        "priority": twin["spec"]["priority"] if twin else draw(st.sampled_from(CNP_PRIORITIES)),
        "subject": subject,
    }
    for direction, egress in (("ingress", False), ("egress", True)):
        shape = draw(st.sampled_from(("omitted", "empty", "rules", "rules", "rules")))
        if shape != "omitted":
            spec[direction] = (
                []
                if shape == "empty"
                else [draw(cnp_rules(egress, pod_keys, i)) for i in range(draw(st.integers(1, 3)))]
            )
    return {
        "apiVersion": CNP_API_VERSION,
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": f"{draw(st.sampled_from(CNP_NAME_PREFIXES))}{index}"},
        "spec": spec,
    }


@st.composite
def cases(
    draw: st.DrawFn,
    max_pods: int = 5,
    max_policies: int = 4,
    single_stack: bool = True,
    min_policies: int = 1,
    cluster_policies: int = 0,
    host_network: int = 0,
) -> Case:
    """cluster_policies / host_network: at most that many ClusterNetworkPolicies (at least one
    when non-zero) and host-network pods; with either, the nodes get a random role label."""
    ns_count = draw(st.integers(2, 3))
    namespaces = tuple(
        (name, tuple(sorted(draw(st.sampled_from(NS_LABEL_SETS)).items()))) for name in NAMESPACES[:ns_count]
    )
    names = tuple(n for n, _ in namespaces)
    n_pods = draw(st.integers(2, max_pods))
    pods = tuple(draw(pod_shapes(names, i, single_stack)) for i in range(n_pods))
    if host_network:
        n_host = draw(st.integers(0, host_network))
        pods += tuple(draw(pod_shapes(names, n_pods + i, False, host_network=True)) for i in range(n_host))
    keys = tuple(p.key for p in pods)
    n_pol = draw(st.integers(min_policies, max_policies))
    pols = tuple(draw(policies(names, keys, i)) for i in range(n_pol))
    if not (cluster_policies or host_network):
        return Case(namespaces, pods, pols)
    n_cnp = draw(st.sampled_from(range(1, cluster_policies + 1))) if cluster_policies else 0
    cnps: tuple[dict[str, Any], ...] = ()
    for i in range(n_cnp):
        cnps += (draw(cluster_network_policies(keys, i, cnps)),)
    return Case(namespaces, pods, pols, cluster_policies=cnps, nodes=draw(node_shapes()))


# ---------------------------------------------------------------------------------------------
# addresses and raw objects


def unit_addresses(case: Case) -> dict[str, list[str]]:
    """The address plan without a lab: node i = 10.244.i.0/24 and fd00:10:244:i::/64, its own
    address .1 / ::1 (also its host-network pods')."""
    out: dict[str, list[str]] = {}
    for i, pod in enumerate(case.pods):
        if pod.host_network:
            out[pod.key] = node_ips(pod.node)
            continue
        host = 10 + i
        ips = []
        if 4 in pod.families:
            ips.append(f"10.244.{pod.node}.{host}")
        if 6 in pod.families:
            ips.append(f"fd00:10:244:{pod.node}::{host:x}")
        out[pod.key] = ips
    return out


def _resolve_cidr(text: str, addresses: dict[str, list[str]]) -> str:
    if not text.startswith(("pod:", "node:")):
        return text
    kind, who, family, plen = text.split(":")
    for ip in addresses.get(who, []) if kind == "pod" else node_ips(int(who)):
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


def materialize_cluster_policy(raw: dict[str, Any], addresses: dict[str, list[str]]) -> dict[str, Any]:
    """Substitute `networks` placeholders; drop repeats (the list is a set: the CRD refuses them)."""
    out = copy.deepcopy(raw)
    for rule in out["spec"].get("egress") or []:
        for peer in rule["to"]:
            if "networks" in peer:
                peer["networks"] = list(dict.fromkeys(_resolve_cidr(c, addresses) for c in peer["networks"]))
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
        "spec": {
            "nodeName": f"node-{pod.node}",
            **({"hostNetwork": True} if pod.host_network else {}),
            "containers": containers,
        },
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


def node_objects(
    families: tuple[int, ...] = (4, 6), nodes: tuple[NodeShape, ...] = DEFAULT_NODES
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n.name, "labels": dict(n.labels)},
            "status": {
                "addresses": [
                    *({"type": "InternalIP", "address": a} for a in node_ips(n.number, families)),
                    *({"type": "ExternalIP", "address": a} for a in node_external_ips(n.number, families)),
                    {"type": "Hostname", "address": n.name},
                ]
            },
        }
        for n in nodes
    ]


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
    """Every pair of ends where at least one is a pod with its own network (the others: host-network
    pods as "ns/name", node addresses, outside addresses), not a pod with itself, every port,
    protocol and family where both ends have an address; plus one ICMP query per pair."""
    for family in (4, 6):

        def has(key: str, family: int = family) -> bool:
            return any(ipaddress.ip_address(a).version == family for a in addresses[key])

        pods = [p.key for p in case.pods if not p.host_network and has(p.key)]
        host_network = [p.key for p in case.pods if p.host_network and has(p.key)]
        nodes = [ip for n in case.nodes for ip in node_ips(n.number, (family,))]
        nodes += [ip for n in case.nodes for ip in node_external_ips(n.number, (family,))]
        outside = [ip for e in case.externals for ip in e.ips if ipaddress.ip_address(ip).version == family]
        ends = pods + host_network + nodes + outside
        for src in ends:
            for dst in ends:
                if src == dst or (src not in pods and dst not in pods):
                    continue
                for protocol in protocols:
                    for port in ports:
                        yield Query(src, dst, port, protocol, family)
                yield Query(src, dst, 0, "ICMP" if family == 4 else "ICMPv6", family)
