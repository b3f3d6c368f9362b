"""Services, EndpointSlices and the VIP -> backend tables kube-proxy's iptables mode builds (pure).

The lab realizes Services with nftables in node namespaces (`render_nft`), the same way
kube-proxy's iptables mode does: a (VIP, protocol, port) lookup jumps to a per-Service chain
that picks one ready endpoint uniformly at random and DNATs to it; NodePorts match any local
address of the node; NodePort traffic and hairpin traffic (a pod reaching itself) are marked
and masqueraded to the node's address on the way out.

ClusterIPs come from SERVICE_CIDR4 (10.245.0.0/16): outside every range manifests may give
external hosts (the lab refuses external addresses inside it), so a VIP never shadows an
external address. Services are single-stack IPv4 (spec.ipFamilies ["IPv4"]).

External addresses, as kube-proxy programs them with externalTrafficPolicy Cluster: a
LoadBalancer Service is a NodePort Service plus one address of LB_POOL4 (10.246.0.0/24, reserved
like the Service range; spec.loadBalancerIP when it is inside and free), published in
status.loadBalancer.ingress[0].ip; spec.externalIPs (any type) are more such addresses. Every
node DNATs (address, protocol, port) to the Service's backends through the vips map, and marks
the flow for masquerade as it does NodePort traffic (the backend sees the node's address, not
the client's: kube-proxy does the same unless externalTrafficPolicy is Local, which the lab does
not implement). A packet to an external address that no rule DNATs (another port, ICMP) is
rejected instead of being routed on.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.core.net import L4_PROTOCOL_NAMES

SERVICE_CIDR4 = ipaddress.IPv4Network("10.245.0.0/16")
LB_POOL4 = ipaddress.IPv4Network("10.246.0.0/24")  # load-balancer addresses of type LoadBalancer
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")  # the types that get nodePorts
DNS_CLUSTER_IP = "10.245.0.10"  # kubelet's --cluster-dns; the kube-dns Service asks for it
NODE_PORT_RANGE = (30000, 32767)
MASQ_MARK = 0x4000  # kube-proxy's KUBE-MARK-MASQ bit
NFT_TABLE = "vethguard_svc"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "vethguard-lab"

Obj = dict[str, Any]


class ServiceError(ValueError):
    """A Service cannot be realized; the message names the field."""


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target: int | str  # a number, or the name of a container port
    node_port: int | None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str | None
    type: str
    selector: tuple[tuple[str, str], ...]
    ports: tuple[ServicePort, ...]
    external_ips: tuple[str, ...] = ()  # spec.externalIPs
    load_balancer_ip: str | None = None  # spec.loadBalancerIP: the address asked for
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip: the addresses given

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def external_addresses(self) -> tuple[str, ...]:
        """The addresses outside the cluster that lead to this Service (external and LB IPs)."""
        return tuple(dict.fromkeys((*self.external_ips, *self.load_balancer_ips)))


@dataclass(frozen=True)
class Backend:
    ip: str
    port: int


@dataclass(frozen=True)
class Frontend:
    """What a client addresses: a ClusterIP port, an external or load-balancer address port
    (external: masqueraded like a NodePort), or a NodePort on any node address (ip None)."""

    ip: str | None
    protocol: str
    port: int
    external: bool = False

    @property
    def masquerade(self) -> bool:
        return self.ip is None or self.external


def _port_number(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ServiceError(f"{where}: must be a number from 1 to 65535, got {value!r}")
    return value


def parse_service(obj: Obj) -> Service:
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
    where = f"Service {namespace}/{name}"
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise ServiceError(f"{where}: spec must be a mapping")
    kind = spec.get("type") or "ClusterIP"
    if kind not in SERVICE_TYPES:
        raise ServiceError(
            f"{where}: spec.type {kind!r} is not supported (ClusterIP, NodePort or LoadBalancer)"
        )
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        raise ServiceError(f"{where}: spec.selector must map label names to strings")
    raw_ports = spec.get("ports") or []
    if not isinstance(raw_ports, list) or not raw_ports:
        raise ServiceError(f"{where}: spec.ports: at least one port is required")
    ports = []
    for index, raw in enumerate(raw_ports):
        field = f"{where}: spec.ports[{index}]"
        if not isinstance(raw, dict):
            raise ServiceError(f"{field} must be a mapping")
        port = _port_number(raw.get("port"), f"{field}.port")
        protocol = raw.get("protocol") or "TCP"
        if protocol not in L4_PROTOCOL_NAMES:
            raise ServiceError(f"{field}.protocol must be TCP, UDP or SCTP, got {protocol!r}")
        target = raw.get("targetPort", port)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if isinstance(target, int):
            target = _port_number(target, f"{field}.targetPort")
        elif not isinstance(target, str) or not target:
            raise ServiceError(f"{field}.targetPort must be a number or a port name")
        node_port = raw.get("nodePort")
        if node_port is not None:
            node_port = _port_number(node_port, f"{field}.nodePort")
        if len(raw_ports) > 1 and not raw.get("name"):
            raise ServiceError(f"{field}.name is required when a Service has several ports")
        ports.append(ServicePort(str(raw.get("name") or ""), protocol, port, target, node_port))
    cluster_ip = spec.get("clusterIP")
    external_ips = spec.get("externalIPs") or []
    if not isinstance(external_ips, list):
        raise ServiceError(f"{where}: spec.externalIPs must be a list of IPv4 addresses")
    requested = spec.get("loadBalancerIP") or None
    status = obj.get("status") or {}
    balancer = (status.get("loadBalancer") or {}) if isinstance(status, dict) else {}
    ingress = (balancer.get("ingress") or []) if isinstance(balancer, dict) else []
    return Service(
        namespace,
        name,
        str(cluster_ip) if cluster_ip and cluster_ip != "None" else None,
        kind,
        tuple(sorted(selector.items())),
        tuple(ports),
        tuple(_ipv4(value, f"{where}: spec.externalIPs[{i}]") for i, value in enumerate(external_ips)),
        _ipv4(requested, f"{where}: spec.loadBalancerIP") if requested is not None else None,
        tuple(
            _ipv4(entry["ip"], f"{where}: status.loadBalancer.ingress[{i}].ip")
            for i, entry in enumerate(ingress)
            if isinstance(entry, dict) and entry.get("ip")
        ),
    )


def _ipv4(value: Any, where: str) -> str:
    """The canonical text of an IPv4 address (the lab's Services are IPv4 only)."""
    try:
        return str(ipaddress.IPv4Address(value if isinstance(value, str) else ""))
    except ValueError:
        raise ServiceError(f"{where}: must be an IPv4 address, got {value!r}") from None


def allocate_cluster_ip(used: Iterable[str], requested: str | None = None) -> str:
    """A free address of SERVICE_CIDR4 (the requested one when it is inside and free)."""
    taken = set(used)
    if requested:
        address = ipaddress.ip_address(requested)
        if address not in SERVICE_CIDR4:
            raise ServiceError(f"spec.clusterIP {requested} is not in the service range {SERVICE_CIDR4}")
        if requested in taken:
            raise ServiceError(f"spec.clusterIP {requested} is already allocated")
        return requested
    reserved = {str(SERVICE_CIDR4.network_address + 1), DNS_CLUSTER_IP}
    for address in SERVICE_CIDR4.hosts():
        text = str(address)
        if text not in taken and text not in reserved:
            return text
    raise ServiceError(f"the service range {SERVICE_CIDR4} is full")


def allocate_load_balancer_ip(used: Iterable[str], requested: str | None = None) -> str:
    """A free address of LB_POOL4 (spec.loadBalancerIP when it is inside and free)."""
    taken = set(used)
    if requested:
        if ipaddress.IPv4Address(requested) not in LB_POOL4:
            raise ServiceError(
                f"spec.loadBalancerIP {requested} is not in the lab's load-balancer pool {LB_POOL4}"
            )
        if requested in taken:
            raise ServiceError(f"spec.loadBalancerIP {requested} is already allocated")
        return requested
    for address in LB_POOL4.hosts():
        if str(address) not in taken:
            return str(address)
    raise ServiceError(f"the load-balancer pool {LB_POOL4} is full")


def external_frontends(service: Service) -> set[tuple[str, str, int]]:
    """(address, protocol, port) of every external and load-balancer address of a Service."""
    return {(a, p.protocol, p.port) for a in service.external_addresses for p in service.ports}


def routed_addresses(services: Iterable[Obj]) -> list[str]:
    """The external and load-balancer addresses of all Services, which the fabric routes to a node."""
    found = {a for obj in services for a in parse_service(obj).external_addresses}
    return sorted(found, key=ipaddress.IPv4Address)


def allocate_node_port(used: Iterable[int], requested: int | None = None) -> int:
    taken = set(used)
    low, high = NODE_PORT_RANGE
    if requested is not None:
        if not low <= requested <= high:
            raise ServiceError(f"nodePort {requested} is outside the range {low}-{high}")
        if requested in taken:
            raise ServiceError(f"nodePort {requested} is already allocated")
        return requested
    for port in range(low, high + 1):
        if port not in taken:
            return port
    raise ServiceError(f"no free nodePort left in {low}-{high}")


# --- endpoints --------------------------------------------------------------------------------


def _selects(selector: tuple[tuple[str, str], ...], pod: Obj) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector)


def _container_ports(pod: Obj) -> list[Obj]:
    return [
        port
        for container in (pod.get("spec") or {}).get("containers") or []
        for port in container.get("ports") or []
    ]


def resolve_target(port: ServicePort, pod: Obj) -> int | None:
    """The pod's port for a Service port: the number itself, or the named container port."""
    if isinstance(port.target, int):
        return port.target
    for declared in _container_ports(pod):
        if declared.get("name") == port.target and (declared.get("protocol") or "TCP") == port.protocol:
            return int(declared["containerPort"])
    return None


def _pod_ipv4(pod: Obj) -> str | None:
    for entry in (pod.get("status") or {}).get("podIPs") or []:
        if ipaddress.ip_address(entry["ip"]).version == 4:
            return str(entry["ip"])
    return None


def _is_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return status.get("phase") == "Running" and bool(ready) and ready[0].get("status") == "True"


def endpoint_slices(service_obj: Obj, pods: Iterable[Obj]) -> list[Obj]:
    """The EndpointSlices (discovery.k8s.io/v1) of a selector Service: one per distinct resolution
    of its ports (pods that name a target port differently land in different slices)."""
    service = parse_service(service_obj)
    if not service.selector:
        return []  # a Service without selector has manually managed endpoints
    groups: dict[tuple[tuple[str, str, int], ...], list[Obj]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        meta = pod["metadata"]
        if meta.get("namespace") != service.namespace or not _selects(service.selector, pod):
            continue
        address = _pod_ipv4(pod)
        if address is None:
            continue
        resolved = []
        for port in service.ports:
            number = resolve_target(port, pod)
            if number is not None:
                resolved.append((port.name, port.protocol, number))
        endpoint = {
            "addresses": [address],
            "conditions": {"ready": _is_ready(pod), "serving": _is_ready(pod), "terminating": False},
            "nodeName": (pod.get("spec") or {}).get("nodeName"),
            "targetRef": {"kind": "Pod", "namespace": service.namespace, "name": meta["name"]},
        }
        groups.setdefault(tuple(resolved), []).append(endpoint)
    if not groups:
        groups[()] = []
    slices = []
    for group, endpoints in sorted(groups.items()):
        digest = hashlib.sha1(repr(group).encode()).hexdigest()[:5]
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service.name}-{digest}",
                    "namespace": service.namespace,
                    "labels": {SERVICE_NAME_LABEL: service.name, MANAGED_BY_LABEL: MANAGED_BY},
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": service.name,
                            "uid": (service_obj.get("metadata") or {}).get("uid", ""),
                        }
                    ],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": n, "protocol": p, "port": num} for n, p, num in group],
            }
        )
    return slices


# --- VIP tables -------------------------------------------------------------------------------


def service_table(services: Iterable[Obj], slices: Iterable[Obj]) -> dict[Frontend, tuple[Backend, ...]]:
    """Frontend -> ready backends, from Services and their EndpointSlices."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for item in slices:
        meta = item.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            by_service.setdefault((str(meta.get("namespace")), owner), []).append(item)
    table: dict[Frontend, tuple[Backend, ...]] = {}
    for obj in services:
        service = parse_service(obj)
        for port in service.ports:
            backends = _backends(port, by_service.get((service.namespace, service.name), []))
            if service.cluster_ip:
                table[Frontend(service.cluster_ip, port.protocol, port.port)] = backends
            for address in service.external_addresses:
                table[Frontend(address, port.protocol, port.port, external=True)] = backends
            if service.type in NODE_PORT_TYPES and port.node_port:
                table[Frontend(None, port.protocol, port.node_port)] = backends
    return table


def _backends(port: ServicePort, slices: list[Obj]) -> tuple[Backend, ...]:
    found = set()
    for item in slices:
        numbers = [
            p["port"]
            for p in item.get("ports") or []
            if (p.get("name") or "") == port.name and p.get("protocol", "TCP") == port.protocol
        ]
        if not numbers:
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                found.add(Backend(str(address), int(numbers[0])))
    return tuple(sorted(found, key=lambda b: (ipaddress.ip_address(b.ip), b.port)))


def _chain(prefix: str, text: str) -> str:
    return f"{prefix}_{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def render_nft(table: Mapping[Frontend, tuple[Backend, ...]]) -> str:
    """An `nft -f` script that replaces the table NFT_TABLE with DNAT rules for `table`.

    A frontend without ready backends is rejected (as kube-proxy does), so clients fail fast
    instead of waiting for a timeout."""
    lines = [f"table ip {NFT_TABLE}", f"delete table ip {NFT_TABLE}"]
    if not table:
        return "\n".join(lines) + "\n"  # no table at all: no NAT hooks, no conntrack cost
    lines.append(f"table ip {NFT_TABLE} {{")
    vips, node_ports, dead, chains = [], [], [], []
    externals = sorted({f.ip for f in table if f.ip and f.external}, key=ipaddress.IPv4Address)
    for frontend in sorted(table, key=lambda f: (f.ip or "", f.protocol, f.port)):
        backends = table[frontend]
        proto = frontend.protocol.lower()
        service_chain = _chain("svc", f"{frontend}")
        if not backends:
            if frontend.ip is not None:
                dead.append(f"{frontend.ip} . {proto} . {frontend.port}")
            continue
        body = [
            "numgen random mod {} vmap {{ {} }}".format(
                len(backends),
                ", ".join(f"{i} : goto {_chain('sep', f'{frontend}{b}')}" for i, b in enumerate(backends)),
            )
        ]
        if frontend.masquerade:  # NodePort, external and LB addresses (externalTrafficPolicy Cluster)
            body.insert(0, f"meta mark set meta mark | {MASQ_MARK:#x}")
        chains.append((service_chain, body))
        for backend in backends:
            chains.append(
                (
                    _chain("sep", f"{frontend}{backend}"),
                    [
                        f"ip saddr {backend.ip} meta mark set meta mark | {MASQ_MARK:#x}",  # hairpin
                        f"meta l4proto {proto} dnat ip to {backend.ip}:{backend.port}",
                    ],
                )
            )
        if frontend.ip is None:
            node_ports.append(f"{proto} . {frontend.port} : goto {service_chain}")
        else:
            vips.append(f"{frontend.ip} . {proto} . {frontend.port} : goto {service_chain}")
    for name, body in chains:
        lines.append(f"  chain {name} {{")
        lines.extend(f"    {rule}" for rule in body)
        lines.append("  }")
    lines.append("  map vips {")
    lines.append("    type ipv4_addr . inet_proto . inet_service : verdict")
    if vips:
        lines.append(f"    elements = {{ {', '.join(vips)} }}")
    lines.append("  }")
    lines.append("  map nodeports {")
    lines.append("    type inet_proto . inet_service : verdict")
    if node_ports:
        lines.append(f"    elements = {{ {', '.join(node_ports)} }}")
    lines.append("  }")
    dispatch = [
        "ip daddr . meta l4proto . th dport vmap @vips",
        "fib daddr type local meta l4proto . th dport vmap @nodeports",
    ]
    lines.append("  set dead {")
    lines.append("    type ipv4_addr . inet_proto . inet_service")
    if dead:
        lines.append(f"    elements = {{ {', '.join(dead)} }}")
    lines.append("  }")
    lines.append("  set externals {")  # still addressed to one after DNAT: nothing serves it
    lines.append("    type ipv4_addr")
    if externals:
        lines.append(f"    elements = {{ {', '.join(externals)} }}")
    lines.append("  }")
    for hook in ("forward", "output"):  # REJECT lives in filter chains, as kube-proxy's does
        lines.append(f"  chain {hook}_filter {{")
        lines.append(f"    type filter hook {hook} priority filter; policy accept;")
        lines.append("    ip daddr . meta l4proto . th dport @dead reject")
        if hook == "forward":
            lines.append("    ip daddr @externals reject")
        lines.append("  }")
    for hook, kind in (("prerouting", "dstnat"), ("output", "-100")):
        lines.append(f"  chain {hook} {{")
        lines.append(f"    type nat hook {hook} priority {kind}; policy accept;")
        lines.extend(f"    {rule}" for rule in dispatch)
        lines.append("  }")
    lines.append("  chain postrouting {")
    lines.append("    type nat hook postrouting priority srcnat; policy accept;")
    lines.append(f"    meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
