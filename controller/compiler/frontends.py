"""Service frontends kube-proxy DNATs on a node, from Service and Node objects (pure).

A pod's new flow to one of these is not judged by from_pod (it would see the ClusterIP, not the
pod behind it) but after DNAT, by the backend it reaches: see bpf/lib/service.h. The set is what
kube-proxy (iptables, ipvs or nftables mode) rewrites on every node:

  - every ClusterIP (spec.clusterIPs, else spec.clusterIP; not headless "None") x each port;
  - spec.externalIPs and status.loadBalancer.ingress[].ip x each port;
  - this node's own addresses (Node status.addresses InternalIP / ExternalIP) x each nodePort.
    kube-proxy DNATs a NodePort only for addresses local to the node (`--dst-type LOCAL`), so
    another node's address with a NodePort is an ordinary destination here, judged as that node.

ExternalName Services have no frontend. Only the EndpointSlices' backends are not needed: the
judge sees the backend kube-proxy picked. Anything invalid in an object is skipped on its own
and reported with the object and field, never the whole Service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from controller.compiler.desired_state import SvcFrontend
from controller.core.errors import PolicyError
from controller.core.net import L4_PROTOCOLS

NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def _address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def node_addresses(nodes: Iterable[Mapping[str, Any]], node: str) -> list[str]:
    """This node's InternalIP/ExternalIP addresses, canonical, in object order."""
    out: list[str] = []
    for obj in nodes:
        meta = obj.get("metadata") or {}
        if not isinstance(meta, Mapping) or meta.get("name") != node:
            continue
        status = obj.get("status") or {}
        for entry in (status.get("addresses") or []) if isinstance(status, Mapping) else []:
            if not isinstance(entry, Mapping) or entry.get("type") not in NODE_ADDRESS_TYPES:
                continue
            ip = _address(entry.get("address"))
            if ip is not None and str(ip) not in out:
                out.append(str(ip))
    return out


def frontends_of(
    services: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]], node: str
) -> tuple[frozenset[SvcFrontend], list[PolicyError]]:
    """The frontends of `node` and the errors found on the way."""
    local = node_addresses(nodes, node)
    found: set[SvcFrontend] = set()
    errors: list[PolicyError] = []
    for obj in services:
        meta = obj.get("metadata") or {}
        if not isinstance(meta, Mapping):
            continue
        what = f"Service {meta.get('namespace') or 'default'}/{meta.get('name')}"
        spec = obj.get("spec") or {}
        if not isinstance(spec, Mapping):
            errors.append(PolicyError(what, "spec", "not a mapping; ignored"))
            continue
        if spec.get("type") == "ExternalName":
            continue
        virtual: list[str] = []
        raw_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        fields = [("spec.clusterIPs", raw_ips), ("spec.externalIPs", spec.get("externalIPs") or [])]
        status = obj.get("status") or {}
        lb = (status.get("loadBalancer") or {}) if isinstance(status, Mapping) else {}
        ingress = (lb.get("ingress") or []) if isinstance(lb, Mapping) else []
        fields.append(
            (
                "status.loadBalancer.ingress",
                [e.get("ip") for e in ingress if isinstance(e, Mapping) and e.get("ip")],
            )
        )
        for field, values in fields:
            if not isinstance(values, list):
                errors.append(PolicyError(what, field, "not a list; ignored"))
                continue
            for i, value in enumerate(values):
                if value in ("None", ""):
                    continue  # headless: DNS returns the pods themselves, no DNAT
                ip = _address(value)
                if ip is None:
                    errors.append(
                        PolicyError(what, f"{field}[{i}]", f"invalid IP address {value!r}; ignored")
                    )
                    continue
                virtual.append(str(ip))
        ports = spec.get("ports") or []
        if not isinstance(ports, list):
            errors.append(PolicyError(what, "spec.ports", "not a list; ignored"))
            continue
        for i, port in enumerate(ports):
            if not isinstance(port, Mapping):
                errors.append(PolicyError(what, f"spec.ports[{i}]", "not a mapping; ignored"))
                continue
            proto = L4_PROTOCOLS.get(str(port.get("protocol") or "TCP"))
            if proto is None:
                errors.append(
                    PolicyError(
                        what, f"spec.ports[{i}].protocol", f"unknown protocol {port.get('protocol')!r}"
                    )
                )
                continue
            number = port.get("port")
            if isinstance(number, int) and _valid_port(number):
                found.update(SvcFrontend(_family(a), a, proto, number) for a in virtual)
            else:
                errors.append(PolicyError(what, f"spec.ports[{i}].port", f"invalid port {number!r}; ignored"))
            node_port = port.get("nodePort")
            if node_port is None:
                continue
            if isinstance(node_port, int) and _valid_port(node_port):
                found.update(SvcFrontend(_family(a), a, proto, node_port) for a in local)
            else:
                errors.append(
                    PolicyError(what, f"spec.ports[{i}].nodePort", f"invalid port {node_port!r}; ignored")
                )
    return frozenset(found), errors


def _valid_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version
