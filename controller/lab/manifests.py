"""Lab manifests: multi-document YAML files, directories of them, or standard input.

Kinds: Namespace (v1), Node (v1: the labels of an existing lab node), Pod (v1), Service (v1:
ClusterIP or NodePort with a selector), NetworkPolicy (networking.k8s.io/v1),
ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, cluster-scoped), Calico's
GlobalNetworkPolicy, NetworkPolicy and HostEndpoint (projectcalico.org/v3: the apiVersion tells
Calico's NetworkPolicy from Kubernetes') and the lab's ExternalHost (lab.vethguard.dev/v1alpha1:
metadata.name, spec.ip one or a list, spec.ports [{port, protocol}], spec.names: DNS names the
lab's cluster DNS answers with spec.ip, spec.ttl their TTL in seconds, default 30, spec.aliases:
names answered as a CNAME chain ending at the first name). `kind: List` documents
are flattened. Errors name the file and document.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.core import dnsnames
from controller.core.errors import VethguardError
from controller.core.net import L4_PROTOCOL_NAMES
from controller.lab.kubeproxy import ServiceError, parse_service
from controller.lab.store import Resource, resource_of, resources_of_kind
from controller.lab.topology import check_external_address

APPLY_ORDER = (
    "Namespace",
    "Node",
    "ExternalHost",
    "Pod",
    "Service",
    "NetworkPolicy",
    "ClusterNetworkPolicy",
    "GlobalNetworkPolicy",
    "HostEndpoint",  # after the policies, as Calico advises: a host endpoint no policy allows
)
SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(VethguardError):
    """A manifest cannot be used; the message names the file, document and field."""


@dataclass(frozen=True)
class Manifest:
    resource: Resource
    obj: dict[str, Any]
    origin: str  # "file.yaml#2"

    @property
    def namespace(self) -> str:
        if not self.resource.namespaced:
            return ""
        return str(self.obj["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def display(self) -> str:
        qualified = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.resource.qualified_kind.lower()}/{qualified}"


def _read_sources(path: str) -> list[tuple[str, str]]:
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise ManifestError(f"{path}: no .yaml, .yml or .json files in this directory")
        return [(str(p), p.read_text()) for p in files]
    if not target.exists():
        raise ManifestError(f"{path}: no such file or directory")
    return [(path, target.read_text())]


def _documents(origin: str, text: str) -> list[tuple[str, Any]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{origin}: invalid YAML: {exc}") from exc
    result: list[tuple[str, Any]] = []
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items = doc.get("items") or []
            result.extend((f"{origin}#{index}.{i}", item) for i, item in enumerate(items, start=1))
        else:
            result.append((f"{origin}#{index}", doc))
    return result


def _check_ports(where: str, ports: Any, port_key: str) -> None:
    if ports is None:
        return
    if not isinstance(ports, list):
        raise ManifestError(f"{where}: ports must be a list")
    for port in ports:
        if not isinstance(port, dict):
            raise ManifestError(f"{where}: each port must be a mapping")
        number = port.get(port_key)
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            raise ManifestError(f"{where}: {port_key} must be a number from 1 to 65535, got {number!r}")
        protocol = port.get("protocol", "TCP")
        if protocol not in L4_PROTOCOL_NAMES:
            raise ManifestError(f"{where}: protocol must be TCP, UDP or SCTP, got {protocol!r}")


def _check_pod(where: str, obj: dict[str, Any]) -> None:
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: spec must be a mapping")
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        raise ManifestError(f"{where}: spec.containers must be a list")
    for index, container in enumerate(containers):
        if not isinstance(container, dict):
            raise ManifestError(f"{where}: spec.containers[{index}] must be a mapping")
        _check_ports(f"{where}: spec.containers[{index}].ports", container.get("ports"), "containerPort")
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        raise ManifestError(f"{where}: spec.nodeName must be a string")


def external_addresses(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    value = spec.get("ip")
    values = value if isinstance(value, list) else [value]
    return [str(ipaddress.ip_address(str(v))) for v in values]


EXTERNAL_TTL_DEFAULT = 30  # seconds, an ExternalHost's spec.ttl when not given
EXTERNAL_TTL_MAX = 2**31 - 1  # RFC 2181 8


def _dns_names(spec: dict[str, Any], fld: str) -> list[str]:
    """A list field of DNS names, canonical, in order, once each; ValueError naming the field.
    Names under the cluster's own domain are the cluster DNS's."""
    raw = spec.get(fld, [])
    if not isinstance(raw, list):
        raise ValueError(f"spec.{fld} must be a list of DNS names, got {raw!r}")
    names: list[str] = []
    for index, name in enumerate(raw):
        problems = dnsnames.problems(name) if isinstance(name, str) else ["must be a string"]
        if problems:
            raise ValueError(f"spec.{fld}[{index}] {name!r}: {'; '.join(problems)}")
        canonical = dnsnames.canonical(name)
        if canonical == dnsnames.CLUSTER_DOMAIN or canonical.endswith("." + dnsnames.CLUSTER_DOMAIN):
            raise ValueError(
                f"spec.{fld}[{index}] {name!r}: {dnsnames.CLUSTER_DOMAIN} is the cluster's own domain"
            )
        if canonical not in names:
            names.append(canonical)
    return names


def external_names(obj: dict[str, Any]) -> tuple[list[str], int]:
    """An ExternalHost's DNS names (canonical, in order, once each) and their TTL; ValueError
    naming the field for a bad one."""
    spec = obj.get("spec") or {}
    names = _dns_names(spec, "names")
    ttl = spec.get("ttl", EXTERNAL_TTL_DEFAULT)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= EXTERNAL_TTL_MAX:
        raise ValueError(f"spec.ttl must be a number of seconds from 0 to {EXTERNAL_TTL_MAX}, got {ttl!r}")
    return names, ttl


def external_aliases(obj: dict[str, Any]) -> list[str]:
    """An ExternalHost's `spec.aliases`: a CNAME chain ending at its first name (aliases[0] ->
    aliases[1] -> ... -> names[0]); ValueError naming the field for a bad one."""
    spec = obj.get("spec") or {}
    aliases = _dns_names(spec, "aliases")
    names, _ = external_names(obj)
    if aliases and not names:
        raise ValueError("spec.aliases needs spec.names: the chain ends at the first name")
    for index, alias in enumerate(aliases):
        if alias in names:
            raise ValueError(f"spec.aliases[{index}] {alias!r} is also in spec.names")
    return aliases


def _check_external(where: str, obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not spec.get("ip"):
        raise ManifestError(f"{where}: spec.ip is required (one address or a list)")
    values = spec["ip"] if isinstance(spec["ip"], list) else [spec["ip"]]
    for value in values:
        try:
            check_external_address(str(value))
        except ValueError as exc:
            raise ManifestError(f"{where}: spec.ip: {exc}") from exc
    _check_ports(f"{where}: spec.ports", spec.get("ports"), "port")
    try:
        external_names(obj)
        external_aliases(obj)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from exc


def parse(origin: str, doc: Any) -> Manifest:
    if not isinstance(doc, dict):
        raise ManifestError(f"{origin}: a manifest must be a mapping, got {type(doc).__name__}")
    kind = doc.get("kind")
    resource = resource_of(kind, doc.get("apiVersion"))
    if resource is None or kind == "EndpointSlice":  # the lab manages them
        supported = ", ".join(APPLY_ORDER)
        raise ManifestError(f"{origin}: unknown kind {kind!r} (the lab supports {supported})")
    if doc.get("apiVersion") != resource.api_version:
        versions = " or ".join(r.api_version for r in resources_of_kind(kind))
        raise ManifestError(
            f"{origin}: {kind} must have apiVersion {versions}, got {doc.get('apiVersion')!r}"
        )
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ManifestError(f"{origin}: {kind}: metadata.name is required")
    where = f"{origin}: {kind} {meta['name']}"
    labels = meta.get("labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise ManifestError(f"{where}: metadata.labels must map names to strings (quote numbers)")
    if kind == "Pod":
        _check_pod(where, doc)
    elif kind == "ExternalHost":
        _check_external(where, doc)
    elif kind == "Service":
        try:
            parse_service(doc)
        except ServiceError as exc:
            raise ManifestError(f"{origin}: {exc}") from exc
    return Manifest(resource, doc, origin)


def load(paths: list[str]) -> list[Manifest]:
    """Every manifest of the given files, directories or '-' (stdin), validated."""
    manifests: list[Manifest] = []
    for path in paths:
        for origin, text in _read_sources(path):
            manifests.extend(parse(where, doc) for where, doc in _documents(origin, text))
    if not manifests:
        raise ManifestError(f"{', '.join(paths)}: no manifests found")
    return manifests


def apply_order(manifests: list[Manifest]) -> list[Manifest]:
    """Namespaces first, then external hosts, pods, policies (stable within a kind)."""
    return sorted(manifests, key=lambda m: APPLY_ORDER.index(m.resource.kind))


def delete_order(manifests: list[Manifest]) -> list[Manifest]:
    return list(reversed(apply_order(manifests)))
