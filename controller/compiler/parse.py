"""Raw API JSON -> the typed objects of controller.compiler.model, validated field by field: a
bad field becomes a PolicyError naming the object and the field (fail closed), never an
exception out of a build."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from typing import Any

from controller.compiler.apisyntax import PORT_NAME_NEEDS_A_LETTER, port_name_problems
from controller.compiler.model import (
    EGRESS,
    INGRESS,
    NS_NAME_LABEL,
    ContainerPort,
    IPAddress,
    IPBlock,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    Rule,
)
from controller.compiler.selectors import LabelSelector, SelectorError
from controller.core.errors import PolicyError
from controller.core.net import L4_PROTOCOLS, IPNetwork


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _meta(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        return {}
    m = raw.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _labels(raw: Any, obj: str, fld: str, errors: list[PolicyError]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errors.append(PolicyError(obj, fld, "must be a map of string to string"))
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            errors.append(PolicyError(obj, f"{fld}.{k}", "label keys and values must be strings; dropped"))
            continue
        out[k] = v
    return out


class _Interner:
    """Shares equal values between the objects of one ClusterState build.

    Most pods repeat a few label sets and container port lists, and their namespace, node,
    label key and value strings: one shared object each instead of one per pod (JSON decoding
    gives every pod its own copies). Strings go through sys.intern, so consecutive builds (the
    agent's previous cluster is alive while the next is built) share them as well. Shared
    label maps are read-only by contract (Pod.labels is a Mapping).
    """

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self._ports: dict[tuple[ContainerPort, ...], tuple[ContainerPort, ...]] = {}
        self._adopted: dict[int, Mapping[str, str]] = {}  # id -> the map (kept: ids stay unique)

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self, labels: dict[str, str]) -> dict[str, str]:
        items = tuple(labels.items())
        hit = self._labels.get(items)
        if hit is None:
            hit = {sys.intern(k): sys.intern(v) for k, v in items}
            self._labels[items] = hit
        return hit

    def adopt(self, pod: Pod) -> None:
        """Share a reused pod's label map and port tuple with the pods parsed after it."""
        if id(pod.labels) not in self._adopted:  # label maps are shared: most were seen already
            self._adopted[id(pod.labels)] = pod.labels
            self._labels.setdefault(tuple(pod.labels.items()), pod.labels)  # type: ignore[arg-type]
        if pod.ports:
            self._ports.setdefault(pod.ports, pod.ports)

    def ports(self, ports: list[ContainerPort]) -> tuple[ContainerPort, ...]:
        if not ports:
            return ()
        key = tuple(ports)
        return self._ports.setdefault(key, key)

    @staticmethod
    def string(s: str) -> str:
        return sys.intern(s)


def _parse_namespace(raw: Any, errors: list[PolicyError]) -> Namespace | None:
    meta = _meta(raw)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append(PolicyError("Namespace ?", "metadata.name", "missing or not a string; skipped"))
        return None
    labels = _labels(meta.get("labels"), f"Namespace {name}", "metadata.labels", errors)
    labels[NS_NAME_LABEL] = name
    return Namespace(name, labels)


def _parse_ip(s: Any) -> IPAddress | None:
    if not isinstance(s, str):
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def _parse_pod(raw: Any, errors: list[PolicyError], interner: _Interner | None = None) -> Pod | None:
    shared = interner if interner is not None else _Interner()
    meta = _meta(raw)
    name = meta.get("name")
    namespace = meta.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        errors.append(PolicyError("Pod ?", "metadata.name", "missing name or namespace; skipped"))
        return None
    obj = f"Pod {namespace}/{name}"
    labels = _labels(meta.get("labels"), obj, "metadata.labels", errors)
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    status = raw.get("status") if isinstance(raw.get("status"), Mapping) else {}
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        errors.append(PolicyError(obj, "spec.nodeName", "must be a string"))
        node = None
    # IPs: status.podIPs[].ip, fallback status.podIP; at most one per family, first wins.
    candidates: list[tuple[str, Any]] = []
    pod_ips = status.get("podIPs")
    if isinstance(pod_ips, list) and pod_ips:
        for i, e in enumerate(pod_ips):
            candidates.append((f"status.podIPs[{i}].ip", e.get("ip") if isinstance(e, Mapping) else e))
    elif status.get("podIP"):
        candidates.append(("status.podIP", status.get("podIP")))
    ips: list[str] = []
    families: set[int] = set()
    for fld, value in candidates:
        addr = _parse_ip(value)
        if addr is None:
            errors.append(PolicyError(obj, fld, f"invalid IP address {value!r}; ignored"))
            continue
        if addr.version in families:
            continue
        families.add(addr.version)
        canonical = str(addr)
        ips.append(value if canonical == value else canonical)  # keep the API's string when canonical
    ports: list[ContainerPort] = []
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        errors.append(PolicyError(obj, "spec.containers", "must be a list"))
        containers = []
    for ci, c in enumerate(containers):
        if not isinstance(c, Mapping):
            continue
        cports = c.get("ports") or []
        if not isinstance(cports, list):
            errors.append(PolicyError(obj, f"spec.containers[{ci}].ports", "must be a list"))
            continue
        for pi, p in enumerate(cports):
            fld = f"spec.containers[{ci}].ports[{pi}]"
            if not isinstance(p, Mapping):
                errors.append(PolicyError(obj, fld, "must be an object"))
                continue
            num: int = p.get("containerPort")  # type: ignore[assignment]
            proto = p.get("protocol") or "TCP"
            pname = p.get("name")
            if not _is_int(num) or not 1 <= num <= 65535:
                errors.append(
                    PolicyError(obj, f"{fld}.containerPort", f"must be 1..65535, got {num!r}; ignored")
                )
                continue
            if proto not in L4_PROTOCOLS:
                errors.append(PolicyError(obj, f"{fld}.protocol", f"unknown protocol {proto!r}; ignored"))
                continue
            if pname is not None and not isinstance(pname, str):
                errors.append(PolicyError(obj, f"{fld}.name", "must be a string; name ignored"))
                pname = None
            ports.append(ContainerPort(pname or None, num, proto))
    phase = status.get("phase")
    return Pod(
        namespace=shared.string(namespace),
        name=name,
        labels=shared.labels(labels),
        node=shared.string(node) if node else None,
        ips=tuple(ips),
        ports=shared.ports(ports),
        host_network=bool(spec.get("hostNetwork", False)),
        phase=shared.string(phase) if isinstance(phase, str) else None,
    )


def _parse_node(raw: Any, errors: list[PolicyError]) -> Node | None:
    meta = _meta(raw)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append(PolicyError("Node ?", "metadata.name", "missing or not a string; skipped"))
        return None
    status = raw.get("status") if isinstance(raw.get("status"), Mapping) else {}
    addrs: list[str] = []
    external: list[str] = []
    raw_addrs = status.get("addresses") or []
    if not isinstance(raw_addrs, list):
        raw_addrs = []
    for i, a in enumerate(raw_addrs):
        if not isinstance(a, Mapping) or a.get("type") not in ("InternalIP", "ExternalIP"):
            continue
        addr = _parse_ip(a.get("address"))
        if addr is None:
            errors.append(
                PolicyError(f"Node {name}", f"status.addresses[{i}].address", "invalid IP address; ignored")
            )
            continue
        into = addrs if a.get("type") == "InternalIP" else external
        if str(addr) not in into:
            into.append(str(addr))
    labels = _labels(meta.get("labels"), f"Node {name}", "metadata.labels", errors)
    return Node(name, tuple(addrs), labels, tuple(a for a in external if a not in addrs))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_network(value: Any, fld: str) -> IPNetwork:
    if not isinstance(value, str) or "/" not in value:
        raise _Invalid(fld, f"must be a CIDR such as 10.0.0.0/24, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as e:
        raise _Invalid(fld, f"invalid CIDR {value!r}: {e}") from None


def _parse_ip_block(raw: Any, fld: str) -> IPBlock:
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object with cidr and optional except")
    cidr = _parse_network(raw.get("cidr"), f"{fld}.cidr")
    ex_raw = raw.get("except")
    excepts: list[IPNetwork] = []
    if ex_raw is not None:
        if not isinstance(ex_raw, list):
            raise _Invalid(f"{fld}.except", "must be a list of CIDRs")
        for i, e in enumerate(ex_raw):
            net = _parse_network(e, f"{fld}.except[{i}]")
            if net.version != cidr.version or not net.subnet_of(cidr) or net.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
                raise _Invalid(f"{fld}.except[{i}]", f"{net} is not a strict subset of cidr {cidr}")
            excepts.append(net)
    return IPBlock(cidr, tuple(sorted(set(excepts), key=lambda n: (n.network_address, n.prefixlen))))


def _parse_selector(raw: Any, fld: str) -> LabelSelector:
    try:
        return LabelSelector.parse(raw)
    except SelectorError as e:
        raise _Invalid(f"{fld}.{e.field}" if e.field else fld, e.message) from None


def _parse_peer(raw: Any, fld: str) -> Peer:
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object (podSelector, namespaceSelector or ipBlock)")
    unknown = set(raw) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown:
        raise _Invalid(f"{fld}.{sorted(unknown)[0]}", "unknown peer field")
    has_pod = raw.get("podSelector") is not None
    has_ns = raw.get("namespaceSelector") is not None
    has_ip = raw.get("ipBlock") is not None
    if has_ip and (has_pod or has_ns):
        raise _Invalid(fld, "ipBlock may not be combined with podSelector or namespaceSelector")
    if not (has_ip or has_pod or has_ns):
        raise _Invalid(fld, "must specify podSelector, namespaceSelector or ipBlock")
    if has_ip:
        return Peer(ip_block=_parse_ip_block(raw["ipBlock"], f"{fld}.ipBlock"))
    return Peer(
        pod_selector=_parse_selector(raw["podSelector"], f"{fld}.podSelector") if has_pod else None,
        namespace_selector=_parse_selector(raw["namespaceSelector"], f"{fld}.namespaceSelector")
        if has_ns
        else None,
    )


def _parse_port(raw: Any, fld: str) -> PolicyPort:
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object with protocol, port and endPort")
    proto = raw.get("protocol")
    if proto is None:
        proto = "TCP"
    if proto not in L4_PROTOCOLS:
        raise _Invalid(f"{fld}.protocol", f"unknown protocol {proto!r}; expected TCP, UDP or SCTP")
    port = raw.get("port")
    end = raw.get("endPort")
    if port is not None:
        if _is_int(port):
            if not 1 <= port <= 65535:
                raise _Invalid(f"{fld}.port", f"must be between 1 and 65535, got {port}")
        elif isinstance(port, str):
            problems = port_name_problems(port)
            if problems and problems != [PORT_NAME_NEEDS_A_LETTER]:
                raise _Invalid(f"{fld}.port", f"invalid port name {port!r} (IANA service name: 1-15 a-z0-9-)")
            if problems:
                raise _Invalid(
                    f"{fld}.port",
                    f"port name {port!r} must contain a letter (write numeric ports as numbers, not strings)",
                )
        else:
            raise _Invalid(f"{fld}.port", f"must be a number or a port name, not {type(port).__name__}")
    if end is not None:
        if not _is_int(end):
            raise _Invalid(f"{fld}.endPort", f"must be a number, not {type(end).__name__}")
        if port is None or not _is_int(port):
            raise _Invalid(f"{fld}.endPort", "needs a numeric port")
        if end < port:
            raise _Invalid(f"{fld}.endPort", f"must be >= port ({port}), got {end}")
        if end > 65535:
            raise _Invalid(f"{fld}.endPort", f"must be <= 65535, got {end}")
    return PolicyPort(proto, port, end)


def _parse_rule(raw: Any, index: int, fld: str, peer_key: str) -> Rule:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _Invalid(fld, "must be an object")
    peers_raw = raw.get(peer_key)
    peers: list[Peer] = []
    if peers_raw is not None:
        if not isinstance(peers_raw, list):
            raise _Invalid(f"{fld}.{peer_key}", "must be a list")
        for i, p in enumerate(peers_raw):
            peers.append(_parse_peer(p, f"{fld}.{peer_key}[{i}]"))
    ports_raw = raw.get("ports")
    ports: list[PolicyPort] = []
    if ports_raw is not None:
        if not isinstance(ports_raw, list):
            raise _Invalid(f"{fld}.ports", "must be a list")
        for i, p in enumerate(ports_raw):
            ports.append(_parse_port(p, f"{fld}.ports[{i}]"))
    return Rule(index, tuple(peers), tuple(ports))


def _parse_rules(raw: Any, fld: str, peer_key: str, obj: str, errors: list[PolicyError]) -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(PolicyError(obj, fld, "must be a list of rules; no rules used for this direction"))
        return ()
    rules: list[Rule] = []
    for i, r in enumerate(raw):
        try:
            rules.append(_parse_rule(r, i, f"{fld}[{i}]", peer_key))
        except _Invalid as e:
            errors.append(PolicyError(obj, e.field, f"{e.message}; rule {fld}[{i}] ignored (fail closed)"))
    return tuple(rules)


def _parse_policy_collecting(raw: Any, errors: list[PolicyError]) -> NetworkPolicy | None:
    """_parse_policy for ClusterState: its errors (or the skip) recorded in `errors`."""
    pol = _parse_policy(raw)
    if pol is None:
        errors.append(PolicyError("NetworkPolicy ?", "metadata.name", "missing name or namespace; skipped"))
        return None
    errors.extend(pol.errors)
    return pol


def _parse_policy(raw: Any) -> NetworkPolicy | None:
    meta = _meta(raw)
    name = meta.get("name")
    namespace = meta.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        return None
    obj = f"NetworkPolicy {namespace}/{name}"
    errors: list[PolicyError] = []
    spec = raw.get("spec") if isinstance(raw, Mapping) else None
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        errors.append(PolicyError(obj, "spec", "must be an object; isolating every pod of the namespace"))
        return NetworkPolicy(
            namespace, name, LabelSelector.EVERYTHING, frozenset({INGRESS, EGRESS}), errors=tuple(errors)
        )
    sel_ok = True
    try:
        pod_selector = (
            LabelSelector.EVERYTHING
            if spec.get("podSelector") is None
            else _parse_selector(spec["podSelector"], "spec.podSelector")
        )
    except _Invalid as e:
        errors.append(
            PolicyError(
                obj, e.field, f"{e.message}; the policy isolates every pod of {namespace} with no rules"
            )
        )
        pod_selector = LabelSelector.EVERYTHING
        sel_ok = False

    ingress_raw = spec.get("ingress")
    egress_raw = spec.get("egress")
    types_raw = spec.get("policyTypes")
    types: set[str]
    if types_raw is None or types_raw == []:
        types = {INGRESS}
        if egress_raw:  # upstream defaulting: Egress when egress rules are present
            types.add(EGRESS)
    elif not isinstance(types_raw, list) or any(t not in (INGRESS, EGRESS) for t in types_raw):
        errors.append(
            PolicyError(
                obj,
                "spec.policyTypes",
                f"must be a list of Ingress/Egress, got {types_raw!r}; isolating both directions",
            )
        )
        types = {INGRESS, EGRESS}
    else:
        types = set(types_raw)

    ingress = _parse_rules(ingress_raw, "spec.ingress", "from", obj, errors)
    egress = _parse_rules(egress_raw, "spec.egress", "to", obj, errors)
    if not sel_ok:
        ingress, egress = (), ()
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=frozenset(types),
        ingress=ingress,
        egress=egress,
        errors=tuple(errors),
        audit=_audit_annotation(meta),
    )


AUDIT_ANNOTATION = "vethguard.dev/audit"


def _audit_annotation(meta: Mapping[str, Any]) -> bool:
    """Audit mode is opt-in and exact: only the string "true" (any case) turns it on."""
    annotations = meta.get("annotations")
    if not isinstance(annotations, Mapping):
        return False
    value = annotations.get(AUDIT_ANNOTATION)
    return isinstance(value, str) and value.strip().lower() == "true"


def parse_network_policy(raw: Any) -> NetworkPolicy:
    """Parse one policy; problems land in `.errors` (fail closed). Raises ValueError without a name."""
    pol = _parse_policy(raw)
    if pol is None:
        raise ValueError("NetworkPolicy: metadata.name and metadata.namespace are required")
    return pol
