"""Reference evaluator of networking.k8s.io/v1 NetworkPolicy and policy.networking.k8s.io/v1alpha2
ClusterNetworkPolicy, with nodes and host-network pods, written from the API documentation.

Sources, restated (the API reference of NetworkPolicy and the "Network Policies" concept
page, as ../../../shared/DESIGN.md "Policy semantics" summarises them):

- A pod is isolated for ingress (egress) when at least one NetworkPolicy in ITS namespace
  selects it (spec.podSelector; `{}` = every pod of the namespace) and lists Ingress (Egress)
  in its policyTypes. An isolated direction allows only what some rule of such a policy
  allows; a non-isolated direction allows everything. Policies are additive.
- policyTypes omitted (or empty): Ingress always, plus Egress when spec.egress has at least
  one rule.
- A connection src -> dst is allowed when src's egress allows it and dst's ingress allows it
  (each side judged only when that side is a pod).
- A rule matches when one of its peers matches (from/to omitted or empty: every peer) and one
  of its ports matches (ports omitted or empty: every port of every protocol).
- Peers: podSelector alone = pods of the policy's namespace; namespaceSelector alone = every
  pod of the matching namespaces; both = matching pods in matching namespaces; ipBlock =
  any address inside cidr and outside every except (pod addresses included). Selector peers
  never match an address that is not a pod's.
- Ports: protocol defaults to TCP; port omitted = every port of that protocol; a number,
  optionally with endPort (inclusive range); a name = the destination pod's container port
  with that name and protocol (for ingress the selected pod, for egress the pod the traffic
  goes to; an address that is not a pod has no named ports).
- Label selectors: matchLabels k: v = label k equals v; matchExpressions In (key present,
  value listed), NotIn (key absent or value not listed), Exists, DoesNotExist; all ANDed.
- Namespaces carry the label kubernetes.io/metadata.name=<name> (set by the API server).

Only valid objects are evaluated: what the API server would reject (an except that is not
a strict subset of its cidr, endPort below port or with a named port, a port outside
1..65535, an unknown protocol, ipBlock mixed with selectors) raises InvalidPolicy.
Pods are running pods with their addresses in status.podIPs (finished pods are out of scope
and rejected). A pod talking to itself never crosses the datapath and is not a question this
evaluator answers.

ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, network-policy-api v0.2.0), restated
from the API's type documentation and ../../../shared/DESIGN.md "Cluster-wide, ordered policy":

- Per connection and per direction the tiers are consulted in order: Admin ClusterNetworkPolicies,
  then NetworkPolicy, then Baseline ClusterNetworkPolicies, then the default (allowed).
- Within a tier: policies by ascending spec.priority, ties by metadata.name; in a policy, the
  rules of the direction in written order. A policy applies to a pod its subject selects
  (`namespaces`: the pod's namespace labels; `pods`: namespaceSelector AND podSelector). The
  first rule whose peers (any of them) and protocols (any entry; none = everything, ICMP too)
  match decides: Accept (the direction is allowed), Deny (refused), Pass (the rest of this tier
  is skipped). No rule matching = no decision in this tier.
- NetworkPolicy tier: a pod NetworkPolicy isolates for the direction gets its decision; else on.
- Peers: `namespaces` (pods in matching namespaces), `pods` (namespaceSelector AND podSelector),
  egress also `networks` (any address in a CIDR: pods, nodes, outside hosts; ICMP included) and
  `nodes` (a node label selector: any address in the status.addresses of a matching node).
  Protocol entries: tcp / udp / sctp with destinationPort {number} or {range: start..end
  inclusive}, or destinationNamedPort (the destination pod's container port of that name and
  protocol; an address that is not a pod's has none).
- Only valid objects (what the CRD admits) are evaluated, anything else raises InvalidPolicy:
  not exactly one field in a subject, peer, protocol entry or destinationPort; a tcp/udp/sctp
  entry without destinationPort (minProperties 1); ports outside 1..65535, range start >= end;
  more than 25 rules, peers, protocol entries or networks; an empty from/to, protocols or
  networks list; a rule name over 100 characters; an unknown action or tier; a priority
  outside 0..1000; `pods` without podSelector; a destinationNamedPort in an egress rule with a
  networks, nodes or domainNames peer (the CRD's CEL rule). `domainNames` peers are valid API
  but not supported here (nor by vethguard): they raise InvalidPolicy too.

Nodes and host-network pods (the API text, ../../../shared/DESIGN.md "Datapath" and
"Cluster-wide, ordered policy", and the decisions of issue 15):

- A node has a name, labels and addresses: a `nodes` peer matches every IP in its
  status.addresses (the API's words), but the node's own addresses, where its traffic comes from
  and what "the pod's own node" means, are its InternalIP addresses (vethguard's decision: an
  ExternalIP is often not configured on the node at all, a cloud's NAT address). A host-network pod
  (spec.hostNetwork) has its node's addresses; traffic from it is traffic from its node and
  traffic to it is traffic to its node. It is never a NetworkPolicy or ClusterNetworkPolicy
  subject, and never matched by podSelector / namespaceSelector / `namespaces` / `pods` peers;
  only address peers (ipBlock, `networks`) and `nodes` peers match its (the node's) address.
  Node addresses have no named ports.
- A node (or a host-network pod) to a pod ON THAT SAME NODE: always allowed (kubelet probes);
  neither NetworkPolicy nor ClusterNetworkPolicy ingress applies.
- A pod to an address of ITS OWN node: the Admin tier first (its `nodes` and `networks` rules
  apply: Deny blocks, Accept allows); then, when NetworkPolicy isolates the pod's egress,
  NetworkPolicy decides, and it never blocks a pod's traffic to its own node: allowed;
  otherwise the Baseline tier (Deny blocks; Accept, Pass or no match: allowed). The node's
  side is not policed (nodes have no policy here).
- A pod to another node's address, and a remote node (or remote host-network pod) to a pod:
  ordinary evaluation (Admin -> NetworkPolicy -> Baseline -> allowed) for the pod's side, where
  only ipBlock, `networks` and `nodes` peers can match a node's address. Nothing polices a node's
  own side.

Deliberately plain: no indexes, no caching beyond parsing, nothing shared with controller/.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from tests.reference.calico import CalicoPolicy, Probe, parse_all, tier_decision
from tests.reference.objects import (
    NAMESPACE_NAME_LABEL,
    InvalidPolicy,
    IPAddress,
    RefNode,
    RefPod,
    labels_match_selector,
)
from tests.reference.objects import contains as _contains
from tests.reference.objects import network as _network
from tests.reference.objects import parse_node as _parse_node
from tests.reference.objects import parse_pod as _parse_pod

__all__ = ["Evaluator", "InvalidPolicy", "RefNode", "RefPod", "labels_match_selector"]

PROTOCOLS = ("TCP", "UDP", "SCTP")
# Protocols without ports: only a rule without a ports list allows them.
PORTLESS = ("ICMP", "ICMPv6")


def _validate_policy(raw: Mapping[str, Any]) -> None:
    spec = raw.get("spec") or {}
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction) or []:
            for peer in rule.get(peer_key) or []:
                block = peer.get("ipBlock")
                if block is None:
                    continue
                if "podSelector" in peer or "namespaceSelector" in peer:
                    raise InvalidPolicy("ipBlock cannot be combined with selectors")
                cidr = _network(block["cidr"])
                for e in block.get("except") or []:
                    ex = _network(e)
                    if (
                        ex.version != cidr.version
                        or not _contains(cidr, ex)
                        or ex.prefixlen <= cidr.prefixlen
                    ):
                        raise InvalidPolicy(f"except {e} must be a strict subset of cidr {block['cidr']}")
            for port in rule.get("ports") or []:
                if port.get("protocol", "TCP") not in PROTOCOLS:
                    raise InvalidPolicy(f"unknown protocol {port.get('protocol')!r}")
                number, end = port.get("port"), port.get("endPort")
                if isinstance(number, int) and not 1 <= number <= 65535:
                    raise InvalidPolicy(f"port {number} outside 1..65535")
                if end is not None and (not isinstance(number, int) or end < number or end > 65535):
                    raise InvalidPolicy(f"endPort {end} needs a numeric port <= it (port {number!r})")


CNP_TIERS = ("Admin", "Baseline")
CNP_ACTIONS = ("Accept", "Deny", "Pass")
CNP_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}
MAX_ITEMS = 25  # rules per direction, peers and protocol entries per rule, networks per peer


def _one_field(obj: Any, known: tuple[str, ...], what: str) -> str:
    if not isinstance(obj, Mapping) or len(obj) != 1 or next(iter(obj)) not in known:
        raise InvalidPolicy(f"{what}: exactly one of {', '.join(known)} must be set, got {obj!r}")
    return str(next(iter(obj)))


def _items(value: Any, what: str, least: int = 1) -> list[Any]:
    """A list the CRD bounds to least..25 items."""
    if not isinstance(value, list) or not least <= len(value) <= MAX_ITEMS:
        raise InvalidPolicy(f"{what}: a list of {least}..{MAX_ITEMS} items, got {value!r}")
    return value


def _validate_selector(value: Any, what: str) -> None:
    if not isinstance(value, Mapping):
        raise InvalidPolicy(f"{what}: a label selector, got {value!r}")
    labels_match_selector(value, {})  # raises on an unknown operator


def _validate_selects(value: Mapping[str, Any], kind: str, what: str) -> None:
    """A `namespaces` (label selector) or `pods` (namespaceSelector + podSelector) subject or peer."""
    if kind == "namespaces":
        _validate_selector(value["namespaces"], what)
        return
    pods = value["pods"]
    if not isinstance(pods, Mapping) or "podSelector" not in pods:
        raise InvalidPolicy(f"{what}: pods needs a podSelector, got {pods!r}")
    _validate_selector(pods.get("namespaceSelector") or {}, what)
    _validate_selector(pods["podSelector"], what)


def _validate_protocol(entry: Any, what: str) -> str:
    kind = _one_field(entry, (*CNP_PROTOCOLS, "destinationNamedPort"), what)
    if kind == "destinationNamedPort":
        if not isinstance(entry[kind], str) or not entry[kind]:
            raise InvalidPolicy(f"{what}: destinationNamedPort {entry[kind]!r}")
        return kind
    # minProperties 1: a tcp/udp/sctp entry names its destinationPort (and nothing else)
    port = _one_field(entry[kind], ("destinationPort",), f"{what}.{kind}")
    form = _one_field(entry[kind][port], ("number", "range"), f"{what}: destinationPort")
    value = entry[kind][port][form]
    bounds = [value] if form == "number" else [value.get("start"), value.get("end")]
    if not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 65535 for b in bounds) or (
        form == "range" and (set(value) != {"start", "end"} or bounds[0] >= bounds[1])
    ):
        raise InvalidPolicy(f"{what}: destinationPort {entry[kind][port]!r}")
    return kind


def _validate_cluster_policy(raw: Mapping[str, Any]) -> None:
    spec = raw.get("spec") or {}
    name = raw.get("metadata", {}).get("name")
    if not name:
        raise InvalidPolicy("ClusterNetworkPolicy without a name")
    if spec.get("tier") not in CNP_TIERS:
        raise InvalidPolicy(f"{name}: tier {spec.get('tier')!r}")
    priority = spec.get("priority")
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1000:
        raise InvalidPolicy(f"{name}: priority {priority!r}")
    subject: Any = spec.get("subject")
    _validate_selects(subject, _one_field(subject, ("namespaces", "pods"), f"{name}: subject"), name)
    for direction, peers_key, kinds in (
        ("ingress", "from", ("namespaces", "pods")),
        ("egress", "to", ("namespaces", "pods", "networks", "nodes", "domainNames")),
    ):
        rules = _items(spec.get(direction) or [], f"{name}: {direction}", least=0)
        for i, rule in enumerate(rules):
            what = f"{name}: {direction}[{i}]"
            if rule.get("action") not in CNP_ACTIONS:
                raise InvalidPolicy(f"{what}: action {rule.get('action')!r}")
            if not isinstance(rule.get("name", ""), str) or len(rule.get("name", "")) > 100:
                raise InvalidPolicy(f"{what}: name {rule.get('name')!r}")
            peer_kinds = set()
            for peer in _items(rule.get(peers_key), f"{what}.{peers_key}"):
                kind = _one_field(peer, kinds, f"{what}: peer")
                peer_kinds.add(kind)
                if kind in ("namespaces", "pods"):
                    _validate_selects(peer, kind, what)
                elif kind == "nodes":
                    _validate_selector(peer["nodes"], what)
                elif kind == "networks":
                    for cidr in _items(peer["networks"], f"{what}.networks"):
                        _network(cidr)
                else:
                    raise InvalidPolicy(f"{what}: domainNames peers are not supported")
            protocol_kinds = {
                _validate_protocol(entry, f"{what}.protocols")
                for entry in (_items(rule["protocols"], f"{what}.protocols") if "protocols" in rule else [])
            }
            if "destinationNamedPort" in protocol_kinds and peer_kinds & {"networks", "nodes"}:
                raise InvalidPolicy(f"{what}: a destinationNamedPort with networks or nodes peers")


class Evaluator:
    """Answers allowed(src, dst, port, protocol, family) for one cluster snapshot."""

    def __init__(
        self,
        namespaces: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        policies: Iterable[Mapping[str, Any]],
        cluster_policies: Iterable[Mapping[str, Any]] = (),
        nodes: Iterable[Mapping[str, Any]] = (),
        calico_policies: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """calico_policies: projectcalico.org/v3 GlobalNetworkPolicy and NetworkPolicy manifests
        (their semantics: calico.py)."""
        self.nodes: dict[str, RefNode] = {}
        for raw in nodes:
            node = _parse_node(raw)
            self.nodes[node.name] = node
        self.namespace_labels: dict[str, dict[str, str]] = {}
        for ns in namespaces:
            name = ns["metadata"]["name"]
            self.namespace_labels[name] = {**(ns["metadata"].get("labels") or {}), NAMESPACE_NAME_LABEL: name}
        self.pods: dict[str, RefPod] = {}  # pods with their own network: the ones policy is about
        self.host_network_pods: dict[str, RefPod] = {}
        for raw in pods:
            pod = _parse_pod(raw, self.nodes)
            (self.host_network_pods if pod.host_network else self.pods)[pod.key] = pod
            self.namespace_labels.setdefault(pod.namespace, {NAMESPACE_NAME_LABEL: pod.namespace})
        self.policies: list[Mapping[str, Any]] = []
        for raw in policies:
            _validate_policy(raw)
            self.policies.append(raw)
        self.cluster_policies: list[Mapping[str, Any]] = []
        for raw in cluster_policies:
            _validate_cluster_policy(raw)
            self.cluster_policies.append(raw)
        self.calico_policies: list[CalicoPolicy] = parse_all(calico_policies)

    # -- who is who -------------------------------------------------------------------------
    # `who` is a pod's key "namespace/name" or an address; host-network pods are replaced by
    # their (node's) address before any of these is asked.

    def _address(self, who: str, family: int) -> IPAddress | None:
        pod = self.pods.get(who) or self.host_network_pods.get(who)
        if pod is not None:
            return pod.address(family)
        addr = ipaddress.ip_address(who)
        return addr if addr.version == family else None

    def _pod_at(self, who: str) -> RefPod | None:
        """The pod `who` names, by key or by one of its addresses (never a host-network pod)."""
        if who in self.pods:
            return self.pods[who]
        addr = ipaddress.ip_address(who)
        for pod in self.pods.values():
            if addr in pod.addresses:
                return pod
        return None

    def _node_at(self, who: str) -> RefNode | None:
        """The node owning the address `who` (a pod key is never a node)."""
        if who in self.pods:
            return None
        addr = ipaddress.ip_address(who)
        for node in self.nodes.values():
            if addr in node.internal:
                return node
        return None

    # -- policy semantics -------------------------------------------------------------------

    @staticmethod
    def policy_types(raw: Mapping[str, Any]) -> list[str]:
        spec = raw.get("spec") or {}
        types = spec.get("policyTypes")
        if types:
            return list(types)
        return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]

    def _selecting(self, pod: RefPod, policy_type: str) -> list[Mapping[str, Any]]:
        out = []
        for raw in self.policies:
            if raw["metadata"].get("namespace", "default") != pod.namespace:
                continue
            if policy_type not in self.policy_types(raw):
                continue
            if labels_match_selector((raw.get("spec") or {}).get("podSelector") or {}, pod.labels):
                out.append(raw)
        return out

    def _peer_matches(self, peer: Mapping[str, Any], policy_ns: str, who: str, family: int) -> bool:
        if "ipBlock" in peer:
            addr = self._address(who, family)
            block = peer["ipBlock"]
            cidr = _network(block["cidr"])
            if addr is None or addr.version != cidr.version or addr not in cidr:
                return False
            return not any(addr in _network(e) for e in block.get("except") or [])
        pod = self._pod_at(who)
        if pod is None:
            return False
        if "namespaceSelector" in peer:
            if not labels_match_selector(peer["namespaceSelector"], self.namespace_labels[pod.namespace]):
                return False
        elif pod.namespace != policy_ns:
            return False
        if "podSelector" in peer:
            return labels_match_selector(peer["podSelector"], pod.labels)
        return True

    @staticmethod
    def _port_matches(
        ports: list[Mapping[str, Any]] | None, destination: RefPod | None, port: int, protocol: str
    ) -> bool:
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != protocol:
                continue
            number = p.get("port")
            if number is None:
                return True
            if isinstance(number, int):
                end = p.get("endPort")
                if (number == port) if end is None else (number <= port <= end):
                    return True
                continue
            if destination is not None and (number, port, protocol) in destination.container_ports:
                return True
        return False

    # -- ClusterNetworkPolicy ----------------------------------------------------------------

    def _cnp_selects(self, selector: Mapping[str, Any], pod: RefPod) -> bool:
        """A subject or a peer of kind `namespaces` (namespace labels) or `pods` (namespace
        labels AND pod labels) selects this pod."""
        ns_labels = self.namespace_labels[pod.namespace]
        if "namespaces" in selector:
            return labels_match_selector(selector["namespaces"], ns_labels)
        pods = selector["pods"]
        return labels_match_selector(
            pods.get("namespaceSelector") or {}, ns_labels
        ) and labels_match_selector(pods.get("podSelector") or {}, pod.labels)

    def _cnp_peer_matches(self, peer: Mapping[str, Any], who: str, family: int) -> bool:
        if "networks" in peer:
            addr = self._address(who, family)
            return addr is not None and any(
                addr.version == _network(c).version and addr in _network(c) for c in peer["networks"]
            )
        if "nodes" in peer:  # every IP of the node's status.addresses, ExternalIP included
            if who in self.pods:
                return False
            addr = ipaddress.ip_address(who)
            return any(
                addr in node.addresses and labels_match_selector(peer["nodes"], node.labels)
                for node in self.nodes.values()
            )
        pod = self._pod_at(who)
        return pod is not None and self._cnp_selects(peer, pod)

    @staticmethod
    def _cnp_protocols_match(
        entries: list[Mapping[str, Any]] | None, destination: RefPod | None, port: int, protocol: str
    ) -> bool:
        if not entries:
            return True  # every port and protocol, ICMP included
        for entry in entries:
            if "destinationNamedPort" in entry:
                if destination is not None and any(
                    name == entry["destinationNamedPort"] and (number, proto) == (port, protocol)
                    for name, number, proto in destination.container_ports
                ):
                    return True
                continue
            (kind,) = entry
            if CNP_PROTOCOLS[kind] != protocol:
                continue
            dport = (entry[kind] or {}).get("destinationPort")
            if dport is None:
                return True
            if "number" in dport and dport["number"] == port:
                return True
            if "range" in dport and dport["range"]["start"] <= port <= dport["range"]["end"]:
                return True
        return False

    def _tier_decision(
        self,
        tier: str,
        pod: RefPod,
        policy_type: str,
        peer: str,
        destination: RefPod | None,
        port: int,
        protocol: str,
        family: int,
    ) -> str | None:
        """ "Accept" or "Deny" when a rule of this tier decides; None when none does (or a Pass)."""
        rules_key, peers_key = ("ingress", "from") if policy_type == "Ingress" else ("egress", "to")
        ordered = sorted(
            (p for p in self.cluster_policies if p["spec"]["tier"] == tier),
            key=lambda p: (p["spec"]["priority"], p["metadata"]["name"]),
        )
        for raw in ordered:
            if not self._cnp_selects(raw["spec"]["subject"], pod):
                continue
            for rule in raw["spec"].get(rules_key) or []:
                if not any(self._cnp_peer_matches(p, peer, family) for p in rule[peers_key]):
                    continue
                if not self._cnp_protocols_match(rule.get("protocols"), destination, port, protocol):
                    continue
                return None if rule["action"] == "Pass" else str(rule["action"])
        return None

    def _direction_allows(
        self,
        pod: RefPod,
        policy_type: str,
        peer: str,
        destination: RefPod | None,
        port: int,
        protocol: str,
        family: int,
        own_node: bool = False,
    ) -> bool:
        """Admin tier -> NetworkPolicy (or the Calico tier, see calico.py) -> Baseline tier ->
        allowed, for one direction of `pod`. own_node: `peer` is an address of the pod's own
        node (egress), which NetworkPolicy never blocks (outside a Calico tier)."""
        admin = self._tier_decision("Admin", pod, policy_type, peer, destination, port, protocol, family)
        if admin is not None:
            return admin == "Accept"
        rules_key, peers_key = ("ingress", "from") if policy_type == "Ingress" else ("egress", "to")

        def knp_allows(raw: Mapping[str, Any]) -> bool:
            """A rule of this NetworkPolicy for the direction allows the connection."""
            ns = raw["metadata"].get("namespace", "default")
            for rule in (raw.get("spec") or {}).get(rules_key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer_matches(p, ns, peer, family) for p in peers):
                    continue
                if self._port_matches(rule.get("ports"), destination, port, protocol):
                    return True
            return False

        policies = self._selecting(pod, policy_type)
        probe = Probe.of(protocol, port, family)
        calico = tier_decision(
            self, self.calico_policies, pod, policy_type, peer, destination, probe, policies, knp_allows
        )
        if calico in ("Allow", "Deny"):
            return calico == "Allow"
        if calico == "End":
            return own_node
        if (
            calico == "Pass" or not policies
        ):  # not isolated by NetworkPolicy in this direction: Baseline, then allowed
            baseline = self._tier_decision(
                "Baseline", pod, policy_type, peer, destination, port, protocol, family
            )
            return baseline != "Deny"
        if own_node:
            return True
        return any(knp_allows(raw) for raw in policies)

    def _as_address(self, who: str, family: int) -> str:
        """`who` with a host-network pod replaced by its (node's) address of that family."""
        pod = self.host_network_pods.get(who)
        if pod is None:
            return who
        addr = pod.address(family)
        if addr is None:
            raise ValueError(f"{who}: host-network pod without an IPv{family} address")
        return str(addr)

    def allowed(self, src: str, dst: str, port: int, protocol: str, family: int) -> bool:
        """Is a new connection src -> dst:port/protocol over IPv<family> allowed?

        src / dst: a pod as "namespace/name" (a host-network pod stands for its node), or an
        IP address (of a pod, of a node or of an outside host).
        protocol: TCP, UDP, SCTP, or ICMP / ICMPv6: an echo request of the family's ICMP (the port
        is ignored; NetworkPolicy and ClusterNetworkPolicy rules match it only without ports).
        """
        src, dst = self._as_address(src, family), self._as_address(dst, family)
        if self._address(src, family) is None or self._address(dst, family) is None:
            raise ValueError(f"{src} -> {dst}: no IPv{family} address on one side")
        if protocol in PORTLESS:
            protocol, port = ("ICMP" if family == 4 else "ICMPv6"), 0  # matches no ports entry
        src_pod, dst_pod = self._pod_at(src), self._pod_at(dst)
        if src_pod is not None and src_pod is dst_pod:
            raise ValueError(f"{src} -> {dst}: a pod talking to itself does not cross the datapath")
        src_node = self._node_at(src) if src_pod is None else None
        dst_node = self._node_at(dst) if dst_pod is None else None
        if dst_pod is not None and src_node is not None and src_node.name == dst_pod.node:
            return True  # a node to its own pods (kubelet probes): no policy applies
        if src_pod is not None and not self._direction_allows(
            src_pod,
            "Egress",
            dst,
            dst_pod,
            port,
            protocol,
            family,
            own_node=dst_node is not None and dst_node.name == src_pod.node,
        ):
            return False
        return dst_pod is None or self._direction_allows(
            dst_pod, "Ingress", src, dst_pod, port, protocol, family
        )
