"""What the reference evaluators share: pods, nodes, namespaces' labels, label selectors (metav1)
and CIDRs, parsed from raw API objects (see evaluator.py for the semantics they serve).
Imports nothing from controller/."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class InvalidPolicy(ValueError):
    """The API server would have rejected this object."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RefPod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    addresses: tuple[IPAddress, ...]
    container_ports: tuple[tuple[str, int, str], ...]  # (name, number, protocol), named ones only
    node: str | None = None  # spec.nodeName
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def address(self, family: int) -> IPAddress | None:
        return of_family(self.addresses, family)


@dataclass(frozen=True)
class RefNode:
    name: str
    labels: Mapping[str, str]
    addresses: tuple[IPAddress, ...]  # every IP of status.addresses (what `nodes` peers match)
    internal: tuple[IPAddress, ...] = ()  # its InternalIP addresses: the node's own (see below)


def of_family(addresses: Iterable[IPAddress], family: int) -> IPAddress | None:
    for a in addresses:
        if a.version == family:
            return a
    return None


def labels_match_selector(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; `{}` matches every label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In":
            ok = present and labels[key] in values
        elif op == "NotIn":
            ok = not present or labels[key] not in values
        elif op == "Exists":
            ok = present
        elif op == "DoesNotExist":
            ok = not present
        else:
            raise InvalidPolicy(f"unknown selector operator {op!r}")
        if not ok:
            return False
    return True


def parse_pod(raw: Mapping[str, Any], nodes: Mapping[str, RefNode]) -> RefPod:
    meta = raw["metadata"]
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        raise InvalidPolicy(f"pod {meta['name']}: finished pods are out of scope")
    node = spec.get("nodeName")
    host_network = bool(spec.get("hostNetwork"))
    addresses = tuple(ipaddress.ip_address(e["ip"]) for e in status.get("podIPs") or [])
    if host_network and isinstance(node, str) and node in nodes:
        addresses = nodes[node].internal  # a host-network pod has its node's addresses
    ports: list[tuple[str, int, str]] = []
    for container in spec.get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name"):
                ports.append((p["name"], int(p["containerPort"]), p.get("protocol") or "TCP"))
    return RefPod(
        meta.get("namespace", "default"),
        meta["name"],
        dict(meta.get("labels") or {}),
        addresses,
        tuple(ports),
        node,
        host_network,
    )


def parse_node(raw: Mapping[str, Any]) -> RefNode:
    meta = raw["metadata"]
    addresses: list[IPAddress] = []
    internal: list[IPAddress] = []
    for entry in (raw.get("status") or {}).get("addresses") or []:
        try:
            addr = ipaddress.ip_address(entry.get("address", ""))
        except ValueError:
            continue  # Hostname, InternalDNS, ...: not an IP
        if addr not in addresses:
            addresses.append(addr)
        if entry.get("type") == "InternalIP" and addr not in internal:
            internal.append(addr)
    return RefNode(meta["name"], dict(meta.get("labels") or {}), tuple(addresses), tuple(internal))


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def contains(
    outer: ipaddress.IPv4Network | ipaddress.IPv6Network, inner: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> bool:
    """inner ⊆ outer, by comparing address ranges (no library subset helper)."""
    return int(outer.network_address) <= int(inner.network_address) and int(inner.broadcast_address) <= int(
        outer.broadcast_address
    )
