"""Calico's older manifests (calicoctl's v1 API: `apiVersion: v1`, `kind: policy` / `kind: hostEndpoint`,
lower-case actions and protocols) converted to projectcalico.org/v3 (pure; issue 16, `vethguard
convert`).

- v1 `policy` -> v3 `GlobalNetworkPolicy` (v1 policies are cluster-wide): metadata.name; spec
  order, selector, types, ingress, egress, preDNAT, applyOnForward, doNotTrack. Actions
  allow/deny/log/pass -> Allow/Deny/Log/Pass; protocols tcp/udp/icmp/icmpv6/sctp/udplite ->
  TCP/UDP/ICMP/ICMPv6/SCTP/UDPLite (numbers kept), in `protocol` and `notProtocol`; `types`
  written out (as given, or v3's defaulting: [Ingress] without egress rules, [Egress] with only
  egress rules, both with both; a preDNAT policy: [Ingress]). Rules keep icmp, notICMP,
  ipVersion, source and destination; entities keep nets, notNets, selector, notSelector, ports,
  notPorts (port ranges stay "a:b" strings) and v1's single `net` / `notNet` become one-item
  `nets` / `notNets`.
- v1 `hostEndpoint` -> v3 `HostEndpoint`: metadata.name and labels; metadata.node becomes
  spec.node; spec interfaceName, expectedIPs, profiles.
- projectcalico.org/v3 documents pass through unchanged; empty documents are skipped.

Anything else (another kind or apiVersion, an unknown field, an unknown action or protocol, a bad
port) raises ConvertError naming the document (1-based), the object and the field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

V3 = "projectcalico.org/v3"
ACTIONS = {"allow": "Allow", "deny": "Deny", "log": "Log", "pass": "Pass"}
PROTOCOLS = {
    "tcp": "TCP",
    "udp": "UDP",
    "icmp": "ICMP",
    "icmpv6": "ICMPv6",
    "sctp": "SCTP",
    "udplite": "UDPLite",
}
TYPES = {"ingress": "Ingress", "egress": "Egress"}
_RANGE = re.compile(r"^(\d+):(\d+)$")

# v3 key order of each object (v1 fields that have no place here are errors)
POLICY_SPEC = ("order", "selector", "types", "ingress", "egress", "preDNAT", "applyOnForward", "doNotTrack")
RULE = ("action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "source", "destination")
ENTITY = ("nets", "notNets", "selector", "notSelector", "ports", "notPorts")
ENTITY_V1_ONLY = {"net": "nets", "notNet": "notNets"}
HOST_ENDPOINT_SPEC = ("interfaceName", "expectedIPs", "profiles")


class ConvertError(ValueError):
    """A document that cannot be converted; the message names document, object and field."""


class _Doc:
    """Where errors point: "document N (kind name)"."""

    def __init__(self, index: int, kind: str, name: str | None) -> None:
        self.where = f"document {index} ({kind}{f' {name}' if name else ''})"

    def error(self, field: str, message: str) -> ConvertError:
        return ConvertError(f"{self.where}: {field}: {message}")

    def fields(self, obj: Any, known: tuple[str, ...], field: str) -> Mapping[str, Any]:
        if not isinstance(obj, Mapping):
            raise self.error(field, f"expected a mapping, got {obj!r}")
        for key in obj:
            if key not in known:
                raise self.error(f"{field}.{key}" if field else str(key), "unknown field")
        return obj


def _protocol(doc: _Doc, value: Any, field: str) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 255:
        return value
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return PROTOCOLS[value.lower()]
    raise doc.error(field, f"unknown protocol {value!r}")


def _port(doc: _Doc, value: Any, field: str) -> int | str:
    """A number, an "a:b" range (kept as the string) or a name."""
    m = _RANGE.match(value) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif m is not None:
        lo, hi = int(m.group(1)), int(m.group(2))
    elif isinstance(value, str) and value.isdigit():
        lo = hi = int(value)
    elif isinstance(value, str) and value and ":" not in value:
        return value  # a named port
    else:
        lo, hi = 1, 0
    if not 0 <= lo <= hi <= 65535:
        raise doc.error(field, f"bad port {value!r} (a number 0..65535, a range 'a:b' or a name)")
    return value


def _entity(doc: _Doc, raw: Any, field: str) -> dict[str, Any]:
    raw = doc.fields(raw, (*ENTITY, *ENTITY_V1_ONLY), field)
    out: dict[str, Any] = {}
    for v1, v3 in ENTITY_V1_ONLY.items():
        if v1 in raw:
            if v3 in raw:
                raise doc.error(f"{field}.{v1}", f"given together with {v3}")
            out[v3] = [raw[v1]]
    for key in ENTITY:
        if key not in raw:
            continue
        value = raw[key]
        if key in ("ports", "notPorts"):
            if not isinstance(value, list):
                raise doc.error(f"{field}.{key}", "expected a list")
            value = [_port(doc, p, f"{field}.{key}[{i}]") for i, p in enumerate(value)]
        out[key] = copy.deepcopy(value)
    return {key: out[key] for key in ENTITY if key in out}


def _rule(doc: _Doc, raw: Any, field: str) -> dict[str, Any]:
    raw = doc.fields(raw, RULE, field)
    out: dict[str, Any] = {}
    for key in RULE:
        if key not in raw:
            continue
        value = raw[key]
        if key == "action":
            if not isinstance(value, str) or value.lower() not in ACTIONS:
                raise doc.error(f"{field}.action", f"unknown action {value!r}")
            value = ACTIONS[value.lower()]
        elif key in ("protocol", "notProtocol"):
            value = _protocol(doc, value, f"{field}.{key}")
        elif key in ("source", "destination"):
            value = _entity(doc, value, f"{field}.{key}")
        else:
            value = copy.deepcopy(value)
        out[key] = value
    if "action" not in out:
        raise doc.error(f"{field}.action", "required")
    return out


def _policy(doc: _Doc, raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    spec = doc.fields(raw.get("spec") or {}, POLICY_SPEC, "spec")
    rules: dict[str, list[dict[str, Any]]] = {}
    for direction in ("ingress", "egress"):
        if direction not in spec:
            continue
        given = spec.get(direction) or []
        if not isinstance(given, list):
            raise doc.error(f"spec.{direction}", "expected a list of rules")
        rules[direction] = [_rule(doc, r, f"spec.{direction}[{i}]") for i, r in enumerate(given)]
    ingress, egress = rules.get("ingress"), rules.get("egress")
    if spec.get("preDNAT") and egress:
        raise doc.error("spec.egress", "a preDNAT policy has ingress rules only")
    if "types" in spec:
        given_types = spec["types"]
        if not isinstance(given_types, list) or not all(
            isinstance(t, str) and t.lower() in TYPES for t in given_types
        ):
            raise doc.error("spec.types", f"expected a list of ingress/egress, got {given_types!r}")
        types = [TYPES[t.lower()] for t in given_types]
    elif spec.get("preDNAT") or not egress:
        types = ["Ingress"]
    else:
        types = ["Ingress", "Egress"] if ingress else ["Egress"]
    values: dict[str, Any] = {**{k: copy.deepcopy(v) for k, v in spec.items()}, **rules, "types": types}
    out_spec = {key: values[key] for key in POLICY_SPEC if key in values}
    return {"apiVersion": V3, "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": out_spec}


def _host_endpoint(doc: _Doc, raw: Mapping[str, Any], meta: Mapping[str, Any], name: str) -> dict[str, Any]:
    spec = doc.fields(raw.get("spec") or {}, HOST_ENDPOINT_SPEC, "spec")
    metadata: dict[str, Any] = {"name": name}
    if meta.get("labels"):
        metadata["labels"] = copy.deepcopy(dict(meta["labels"]))
    out_spec: dict[str, Any] = {}
    if meta.get("node"):
        out_spec["node"] = meta["node"]
    for key in HOST_ENDPOINT_SPEC:
        if key in spec:
            out_spec[key] = copy.deepcopy(spec[key])
    if not out_spec.get("interfaceName") and not out_spec.get("expectedIPs"):
        raise doc.error("spec", "a host endpoint needs interfaceName or expectedIPs")
    return {"apiVersion": V3, "kind": "HostEndpoint", "metadata": metadata, "spec": out_spec}


def convert_document(index: int, raw: Any) -> dict[str, Any]:
    """One document (index: its 1-based place in the input) in projectcalico.org/v3 form."""
    if not isinstance(raw, Mapping):
        raise ConvertError(f"document {index}: expected a mapping, got {type(raw).__name__}")
    api, kind = raw.get("apiVersion"), raw.get("kind")
    meta = raw.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    doc = _Doc(index, str(kind), name if isinstance(name, str) else None)
    if api == V3:
        return copy.deepcopy(dict(raw))
    if api != "v1" or kind not in ("policy", "hostEndpoint"):
        raise doc.error("apiVersion/kind", f"{api}/{kind} is not a calicoctl v1 policy or hostEndpoint")
    doc.fields(raw, ("apiVersion", "kind", "metadata", "spec"), "")
    meta = doc.fields(meta, ("name",) if kind == "policy" else ("name", "node", "labels"), "metadata")
    if not isinstance(name, str) or not name:
        raise doc.error("metadata.name", "required")
    return _policy(doc, raw, name) if kind == "policy" else _host_endpoint(doc, raw, meta, name)


def convert_documents(documents: list[Any]) -> list[dict[str, Any]]:
    """Every non-empty document converted, in order."""
    return [convert_document(i, d) for i, d in enumerate(documents, 1) if d is not None]
