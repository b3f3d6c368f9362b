"""What kube-apiserver checks before it stores an object, for the lab's API server (pure, no I/O).

`validate(kind, namespaced, obj, old)` returns every problem as a `FieldError` (reason, field,
value, detail), the way apimachinery's field.Error reports it; `old` is the stored object on a
replace. The store answers:

- 400 BadRequest when a value has the wrong JSON type (a string where a list belongs, a port of
  1.5, labels that are not strings) or a NetworkPolicy spec has a field the API does not know:
  kube-apiserver cannot decode the first, and refuses the second for kubectl, which asks for
  strict field validation by default (the lab's server is strict for every client).
  `decode_message` words it.
- 422 Invalid otherwise, with a Status whose `details.causes` list every problem
  (`invalid_details`) and whose message is kube-apiserver's (`invalid_message`):
  `NetworkPolicy.networking.k8s.io "deny" is invalid: spec.policyTypes[0]: Unsupported value:
  "Bogus": supported values: "Ingress", "Egress"`.

Rules by kind (pkg/apis/*/validation in kubernetes; the syntax of names, labels, port names and
CIDRs is in controller.compiler.apisyntax):

- every kind: metadata.name (a DNS-1123 label for Namespaces, a DNS-1035 label for Services, a
  DNS-1123 subdomain for the others), metadata.namespace (a DNS-1123 label; required for
  namespaced kinds, forbidden for the others), label keys and values, annotation keys and the
  annotations' total size;
- NetworkPolicy: label selectors (matchLabels; matchExpressions with In/NotIn and values,
  Exists/DoesNotExist without, label values in expressions unless the stored podSelector
  already had invalid ones), ports (protocol TCP/UDP/SCTP, port 1-65535 or a port name,
  endPort only with a numeric port, port <= endPort <= 65535), peers (one of podSelector /
  namespaceSelector / ipBlock, ipBlock alone; cidr required and valid, each except valid and
  strictly inside cidr), policyTypes (Ingress or Egress, at most two entries: kube-apiserver
  accepts a repeated entry);
- Pod: spec.containers[].ports (name a port name unique in its container, containerPort
  1-65535, hostPort 1-65535 when set, protocol);
- Service: type, sessionAffinity, selector labels, ports (a DNS-1123 label name, required and
  unique when there are several; port; protocol; targetPort a number or a port name; no
  repeated port+protocol);
- ClusterNetworkPolicy (a CRD's schema and CEL rules, network-policy-api v0.2.0): unknown
  fields at the top and in spec are refused as for NetworkPolicy (strict decoding); everything
  the compiler's parser (controller.compiler.cnp) reports -- tier, priority 0..1000, exactly one
  subject / peer / protocol field, port ranges, actions, more than 25 rules, peers or protocol
  entries, domainNames (not supported) -- is a 422 cause on the field it names. An object the
  CRD would have admitted but the agents cannot use reaches them only through
  write_unvalidated, as for NetworkPolicy;
- Calico's projectcalico.org/v3 GlobalNetworkPolicy, NetworkPolicy and HostEndpoint (named
  `Kind.projectcalico.org` here, as Kubernetes has a NetworkPolicy kind too): an unknown field
  at the top (beside metadata and spec) is refused as for NetworkPolicy (strict decoding, 400);
  everything the compiler's parsers (controller.compiler.calico) report -- unknown fields in
  spec and in rules, doNotTrack: true, the refused fields (source ports, notProtocol, http,
  serviceAccounts, services, tiers other than default, preDNAT with egress), selectors,
  protocols, ports, ICMP, CIDRs, a host endpoint's node / interfaceName / expectedIPs / ports --
  is a 422 cause on the field it names. What the parsers would enforce failed closed is
  refused here, so that a lab write is never silently narrowed;
- Node, ExternalHost, EndpointSlice: metadata only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.compiler import apisyntax as syntax
from controller.compiler import calico
from controller.compiler.cnp import parse_cluster_network_policy
from controller.compiler.selectors import OP_DOES_NOT_EXIST, OP_EXISTS, OP_IN, OP_NOT_IN
from controller.core.errors import PolicyError
from controller.core.net import L4_PROTOCOLS

Obj = dict[str, Any]

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TYPE_INVALID = "FieldValueTypeInvalid"  # decoding problems: answered 400, not 422
UNKNOWN_FIELD = "UnknownField"

_TITLES = {
    REQUIRED: "Required value",
    INVALID: "Invalid value",
    NOT_SUPPORTED: "Unsupported value",
    DUPLICATE: "Duplicate value",
    FORBIDDEN: "Forbidden",
    TOO_LONG: "Too long",
    TYPE_INVALID: "Invalid value",
    UNKNOWN_FIELD: "Unknown field",
}
_WITHOUT_VALUE = (REQUIRED, FORBIDDEN, TOO_LONG, UNKNOWN_FIELD)

NAME_REQUIRED = "name or generateName is required"
ANNOTATIONS_MAX_BYTES = 256 * 1024
POLICY_TYPES = ("Ingress", "Egress")
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
SESSION_AFFINITIES = ("ClientIP", "None")


def show(value: Any) -> str:
    """A bad value as field.Error prints it: strings quoted, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(map(show, value)) + "}"
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class FieldError:
    reason: str  # the cause's reason, e.g. FieldValueInvalid
    field: str  # e.g. spec.ingress[0].ports[1].endPort
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        """The message without the field (a Status cause's message)."""
        text = _TITLES[self.reason]
        if self.reason not in _WITHOUT_VALUE:
            text += f": {show(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


Errors = list[FieldError]


def invalid(fld: str, value: Any, detail: str) -> FieldError:
    return FieldError(INVALID, fld, value, detail)


def required(fld: str, detail: str = "") -> FieldError:
    return FieldError(REQUIRED, fld, None, detail)


def not_supported(fld: str, value: Any, supported: tuple[str, ...]) -> FieldError:
    return FieldError(NOT_SUPPORTED, fld, value, "supported values: " + ", ".join(map(show, supported)))


def _wrong_type(fld: str, value: Any, expected: str) -> FieldError:
    return FieldError(TYPE_INVALID, fld, value, expected)


# --- typed reads: a wrong JSON type is recorded and read as absent --------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: Any, fld: str, errs: Errors) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errs.append(_wrong_type(fld, value, "object"))
        return {}
    return value


def _list(value: Any, fld: str, errs: Errors) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.append(_wrong_type(fld, value, "array"))
        return []
    return value


def _string(value: Any, fld: str, errs: Errors) -> str:
    """A string field; null reads as "" (Go's zero value)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        errs.append(_wrong_type(fld, value, "string"))
        return ""
    return value


def _strings(value: Any, fld: str, errs: Errors) -> list[str]:
    return [_string(item, f"{fld}[{i}]", errs) for i, item in enumerate(_list(value, fld, errs))]


def _int32(value: Any, fld: str, errs: Errors) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not -(2**31) <= value < 2**31:
        errs.append(_wrong_type(fld, value, "int32"))
        return None
    return int(value)


def _int_or_string(value: Any, fld: str, errs: Errors) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if _is_int(value):
        return _int32(value, fld, errs)
    errs.append(_wrong_type(fld, value, "IntOrString"))
    return None


def _string_map(value: Any, fld: str, errs: Errors) -> dict[str, str]:
    mapping = _object(value, fld, errs)
    bad = [k for k, v in mapping.items() if not isinstance(v, str)]
    if bad:
        errs.append(_wrong_type(f"{fld}.{bad[0]}", mapping[bad[0]], "string"))
    return {k: v for k, v in mapping.items() if isinstance(v, str)}


def _known(obj: Mapping[str, Any], fld: str, fields: tuple[str, ...], errs: Errors) -> None:
    """Fields the API does not know (strict field validation refuses them)."""
    for key in obj:
        if key not in fields:
            errs.append(FieldError(UNKNOWN_FIELD, f"{fld}.{key}" if fld else str(key)))


# --- metadata -------------------------------------------------------------------------------


def _problems(fld: str, value: Any, problems: list[str]) -> Errors:
    return [invalid(fld, value, problem) for problem in problems]


def validate_labels(labels: Mapping[str, str], fld: str) -> Errors:
    """apimachinery's ValidateLabels: every problem is reported on the map's path."""
    errs: Errors = []
    for key, value in labels.items():
        errs += _problems(fld, key, syntax.label_key_problems(key))
        errs += _problems(fld, value, syntax.label_value_problems(value))
    return errs


def _annotations(annotations: Mapping[str, str], fld: str) -> Errors:
    errs: Errors = []
    for key in annotations:  # annotation keys are label keys in any case
        errs += _problems(fld, key, syntax.label_key_problems(key.lower()))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        errs.append(FieldError(TOO_LONG, fld, None, f"must have at most {ANNOTATIONS_MAX_BYTES} bytes"))
    return errs


def _metadata(obj: Obj, namespaced: bool, name_rule: Callable[[str], list[str]], errs: Errors) -> None:
    meta = _object(obj.get("metadata"), "metadata", errs)
    name = _string(meta.get("name"), "metadata.name", errs)
    if not name:
        errs.append(required("metadata.name", NAME_REQUIRED))
    errs.extend(_problems("metadata.name", name, name_rule(name)) if name else ())
    namespace = _string(meta.get("namespace"), "metadata.namespace", errs)
    if namespaced and not namespace:
        errs.append(required("metadata.namespace"))
    elif namespaced:
        errs += _problems("metadata.namespace", namespace, syntax.dns1123_label_problems(namespace))
    elif namespace:
        errs.append(FieldError(FORBIDDEN, "metadata.namespace", None, "not allowed on this type"))
    errs += validate_labels(_string_map(meta.get("labels"), "metadata.labels", errs), "metadata.labels")
    annotations = _string_map(meta.get("annotations"), "metadata.annotations", errs)
    errs += _annotations(annotations, "metadata.annotations")


# --- NetworkPolicy --------------------------------------------------------------------------


def _selector(raw: Any, fld: str, check_values: bool, errs: Errors) -> None:
    """metav1.LabelSelector (ValidateLabelSelector)."""
    selector = _object(raw, fld, errs)
    _known(selector, fld, ("matchLabels", "matchExpressions"), errs)
    labels = _string_map(selector.get("matchLabels"), f"{fld}.matchLabels", errs)
    errs += validate_labels(labels, f"{fld}.matchLabels")
    for i, raw_expr in enumerate(_list(selector.get("matchExpressions"), f"{fld}.matchExpressions", errs)):
        at = f"{fld}.matchExpressions[{i}]"
        expr = _object(raw_expr, at, errs)
        _known(expr, at, ("key", "operator", "values"), errs)
        key = _string(expr.get("key"), f"{at}.key", errs)
        operator = _string(expr.get("operator"), f"{at}.operator", errs)
        values = _strings(expr.get("values"), f"{at}.values", errs)
        if operator in (OP_IN, OP_NOT_IN) and not values:
            errs.append(required(f"{at}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif operator in (OP_EXISTS, OP_DOES_NOT_EXIST) and values:
            detail = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            errs.append(FieldError(FORBIDDEN, f"{at}.values", None, detail))
        elif operator not in (OP_IN, OP_NOT_IN, OP_EXISTS, OP_DOES_NOT_EXIST):
            errs.append(invalid(f"{at}.operator", operator, "not a valid selector operator"))
        errs += _problems(f"{at}.key", key, syntax.label_key_problems(key))
        for j, value in enumerate(values if check_values else ()):
            errs += _problems(f"{at}.values[{j}]", value, syntax.label_value_problems(value))


def _policy_port(raw: Any, fld: str, errs: Errors) -> None:
    port_obj = _object(raw, fld, errs)
    _known(port_obj, fld, ("protocol", "port", "endPort"), errs)
    protocol = port_obj.get("protocol")
    if protocol is not None and _string(protocol, f"{fld}.protocol", errs) not in L4_PROTOCOLS:
        errs.append(not_supported(f"{fld}.protocol", protocol, tuple(L4_PROTOCOLS)))
    port = _int_or_string(port_obj.get("port"), f"{fld}.port", errs)
    end = _int32(port_obj.get("endPort"), f"{fld}.endPort", errs)
    if isinstance(port, int):
        errs += _problems(f"{fld}.port", port, syntax.port_number_problems(port))
        if end is not None and end < port:
            errs.append(invalid(f"{fld}.endPort", end, "must be greater than or equal to `port`"))
        if end is not None:
            errs += _problems(f"{fld}.endPort", end, syntax.port_number_problems(end))
    elif isinstance(port, str):
        if end is not None:
            errs.append(invalid(f"{fld}.endPort", end, "may not be specified when `port` is non-numeric"))
        errs += _problems(f"{fld}.port", port, syntax.port_name_problems(port))
    elif end is not None:
        errs.append(invalid(f"{fld}.endPort", end, "may not be specified when `port` is not specified"))


def _ip_block(raw: Any, fld: str, errs: Errors) -> None:
    block = _object(raw, fld, errs)
    _known(block, fld, ("cidr", "except"), errs)
    cidr_text = _string(block.get("cidr"), f"{fld}.cidr", errs)
    excepts = _strings(block.get("except"), f"{fld}.except", errs)
    if not cidr_text:
        errs.append(required(f"{fld}.cidr"))
        return
    cidr = syntax.parse_cidr(cidr_text)
    if cidr is None:
        errs.append(invalid(f"{fld}.cidr", cidr_text, syntax.CIDR_PROBLEM))
        return
    for i, text in enumerate(excepts):
        inner = syntax.parse_cidr(text)
        if inner is None:
            errs.append(invalid(f"{fld}.except[{i}]", text, syntax.CIDR_PROBLEM))
        elif not syntax.strictly_inside(inner, cidr):
            errs.append(invalid(f"{fld}.except[{i}]", text, "must be a strict subset of `cidr`"))


PEER_FIELDS = ("podSelector", "namespaceSelector", "ipBlock")


def _peer(raw: Any, fld: str, check_values: bool, errs: Errors) -> None:
    peer = _object(raw, fld, errs)
    _known(peer, fld, PEER_FIELDS, errs)
    present = [k for k in PEER_FIELDS if peer.get(k) is not None]
    for key in present:
        if key == "ipBlock":
            _ip_block(peer[key], f"{fld}.ipBlock", errs)
        else:
            _selector(peer[key], f"{fld}.{key}", check_values, errs)
    if not present:
        errs.append(required(fld, "must specify a peer"))
    elif len(present) > 1 and "ipBlock" in present:
        errs.append(FieldError(FORBIDDEN, fld, None, "may not specify both ipBlock and another peer"))


def _rules(spec: Mapping[str, Any], direction: str, peer_key: str, check_values: bool, errs: Errors) -> None:
    for i, raw_rule in enumerate(_list(spec.get(direction), f"spec.{direction}", errs)):
        at = f"spec.{direction}[{i}]"
        rule = _object(raw_rule, at, errs)
        _known(rule, at, (peer_key, "ports"), errs)
        for j, port in enumerate(_list(rule.get("ports"), f"{at}.ports", errs)):
            _policy_port(port, f"{at}.ports[{j}]", errs)
        for j, peer in enumerate(_list(rule.get(peer_key), f"{at}.{peer_key}", errs)):
            _peer(peer, f"{at}.{peer_key}[{j}]", check_values, errs)


def _network_policy(obj: Obj, old: Obj | None, errs: Errors) -> None:
    _known(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"), errs)
    spec = _object(obj.get("spec"), "spec", errs)
    _known(spec, "spec", ("podSelector", "policyTypes", "ingress", "egress"), errs)
    # ValidationOptionsForNetworking: a stored podSelector with problems lets invalid label
    # values in expressions through on a replace (the object could not be changed otherwise)
    check_values = old is None or not _selector_problems((old.get("spec") or {}).get("podSelector"))
    _selector(spec.get("podSelector"), "spec.podSelector", check_values, errs)
    _rules(spec, "ingress", "from", check_values, errs)
    _rules(spec, "egress", "to", check_values, errs)
    types = _list(spec.get("policyTypes"), "spec.policyTypes", errs)
    if len(types) > len(POLICY_TYPES):
        errs.append(invalid("spec.policyTypes", types, "may not specify more than two policyTypes"))
        return
    for i, raw_type in enumerate(types):
        if _string(raw_type, f"spec.policyTypes[{i}]", errs) not in POLICY_TYPES:
            errs.append(not_supported(f"spec.policyTypes[{i}]", raw_type or "", POLICY_TYPES))


def _selector_problems(raw: Any) -> bool:
    errs: Errors = []
    _selector(raw, "", True, errs)
    return bool(errs)


# --- ClusterNetworkPolicy -------------------------------------------------------------------

CNP_SPEC_FIELDS = ("tier", "priority", "subject", "ingress", "egress")


def value_at(obj: Any, fld: str) -> Any:
    """The value at a field path such as `spec.ingress[0].to[1]` (None when absent)."""
    node = obj
    for part in fld.replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            index = int(part[1:-1])
            node = node[index] if isinstance(node, list) and index < len(node) else None
        elif part:
            node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _parser_problems(obj: Obj, problems: list[PolicyError], errs: Errors) -> None:
    """What a compiler parser reported, each a 422 cause on the field it names."""
    for problem in problems:
        detail = problem.message.split("; ")[0]  # what follows says how the agents fail closed
        errs.append(invalid(problem.field, value_at(obj, problem.field), detail))


def _cluster_network_policy(obj: Obj, old: Obj | None, errs: Errors) -> None:
    _known(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"), errs)
    spec = _object(obj.get("spec"), "spec", errs)
    _known(spec, "spec", CNP_SPEC_FIELDS, errs)
    if not (obj.get("metadata") or {}).get("name"):
        return  # reported with the metadata
    problems: list[PolicyError] = []
    parse_cluster_network_policy(obj, problems)
    _parser_problems(obj, problems, errs)


# --- Calico (projectcalico.org/v3) ----------------------------------------------------------


def _calico(kind: str) -> Callable[[Obj, Obj | None, Errors], None]:
    def check(obj: Obj, old: Obj | None, errs: Errors) -> None:
        _known(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"), errs)
        if not (obj.get("metadata") or {}).get("name"):
            return  # reported with the metadata
        problems: list[PolicyError] = []
        if kind == calico.HEP_KIND:
            calico.parse_host_endpoint(obj, problems)
        else:
            calico.parse_calico_policy(obj, kind, problems)
        _parser_problems(obj, problems, errs)

    return check


# --- Pod and Service ------------------------------------------------------------------------

CORE_PROTOCOLS = tuple(sorted(L4_PROTOCOLS))  # kube lists them sorted for core kinds


def _core_protocol(raw: Any, fld: str, errs: Errors) -> str:
    protocol = _string(raw, fld, errs)
    if not protocol:
        errs.append(required(fld))
    elif protocol not in L4_PROTOCOLS:
        errs.append(not_supported(fld, protocol, CORE_PROTOCOLS))
    return protocol


def _port_field(value: int | None, fld: str, errs: Errors) -> None:
    errs += _problems(fld, value or 0, syntax.port_number_problems(value or 0))


def _pod(obj: Obj, old: Obj | None, errs: Errors) -> None:
    spec = _object(obj.get("spec"), "spec", errs)
    for i, raw_container in enumerate(_list(spec.get("containers"), "spec.containers", errs)):
        at = f"spec.containers[{i}]"
        container = _object(raw_container, at, errs)
        names: set[str] = set()
        for j, raw_port in enumerate(_list(container.get("ports"), f"{at}.ports", errs)):
            where = f"{at}.ports[{j}]"
            port = _object(raw_port, where, errs)
            name = _string(port.get("name"), f"{where}.name", errs)
            problems = syntax.port_name_problems(name) if name else []
            errs += _problems(f"{where}.name", name, problems)
            if name and not problems and name in names:
                errs.append(FieldError(DUPLICATE, f"{where}.name", name))
            names.add(name)
            container_port = _int32(port.get("containerPort"), f"{where}.containerPort", errs)
            if not container_port:
                errs.append(required(f"{where}.containerPort"))
            else:
                _port_field(container_port, f"{where}.containerPort", errs)
            host_port = _int32(port.get("hostPort"), f"{where}.hostPort", errs)
            if host_port:
                _port_field(host_port, f"{where}.hostPort", errs)
            _core_protocol(port.get("protocol"), f"{where}.protocol", errs)


def _service(obj: Obj, old: Obj | None, errs: Errors) -> None:
    spec = _object(obj.get("spec"), "spec", errs)
    kind = _string(spec.get("type"), "spec.type", errs)
    if kind not in SERVICE_TYPES:
        errs.append(not_supported("spec.type", kind, SERVICE_TYPES))
    affinity = _string(spec.get("sessionAffinity"), "spec.sessionAffinity", errs)
    if affinity not in SESSION_AFFINITIES:
        errs.append(not_supported("spec.sessionAffinity", affinity, SESSION_AFFINITIES))
    errs += validate_labels(_string_map(spec.get("selector"), "spec.selector", errs), "spec.selector")
    ports = _list(spec.get("ports"), "spec.ports", errs)
    if not ports and spec.get("clusterIP") != "None" and kind != "ExternalName":
        errs.append(required("spec.ports"))
    names: set[str] = set()
    seen: set[tuple[int, str]] = set()
    for i, raw_port in enumerate(ports):
        at = f"spec.ports[{i}]"
        port = _object(raw_port, at, errs)
        name = _string(port.get("name"), f"{at}.name", errs)
        if len(ports) > 1 and not name:
            errs.append(required(f"{at}.name"))
        elif name:
            errs += _problems(f"{at}.name", name, syntax.dns1123_label_problems(name))
            errs.extend([FieldError(DUPLICATE, f"{at}.name", name)] if name in names else [])
            names.add(name)
        number = _int32(port.get("port"), f"{at}.port", errs) or 0
        _port_field(number, f"{at}.port", errs)
        protocol = _core_protocol(port.get("protocol"), f"{at}.protocol", errs)
        target = _int_or_string(port.get("targetPort"), f"{at}.targetPort", errs)
        if isinstance(target, str):
            errs += _problems(f"{at}.targetPort", target, syntax.port_name_problems(target))
        else:
            _port_field(target, f"{at}.targetPort", errs)
        if (number, protocol) in seen:
            errs.append(FieldError(DUPLICATE, at, {"port": number, "protocol": protocol}))
        seen.add((number, protocol))


# --- entry points ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KindRules:
    name: Callable[[str], list[str]]
    spec: Callable[[Obj, Obj | None, Errors], None] | None = None


RULES: dict[str, KindRules] = {
    "Namespace": KindRules(syntax.dns1123_label_problems),
    "Node": KindRules(syntax.dns1123_subdomain_problems),
    "Pod": KindRules(syntax.dns1123_subdomain_problems, _pod),
    "Service": KindRules(syntax.dns1035_label_problems, _service),
    "NetworkPolicy": KindRules(syntax.dns1123_subdomain_problems, _network_policy),
    "ExternalHost": KindRules(syntax.dns1123_subdomain_problems),
    "EndpointSlice": KindRules(syntax.dns1123_subdomain_problems),
    "ClusterNetworkPolicy": KindRules(syntax.dns1123_subdomain_problems, _cluster_network_policy),
    **{
        calico.KIND_KEYS[kind]: KindRules(syntax.dns1123_subdomain_problems, _calico(kind))
        for kind in calico.PLURALS
    },
}


def validate(kind: str, namespaced: bool, obj: Obj, old: Obj | None = None) -> Errors:
    """Every problem kube-apiserver would find in `obj` (after defaulting), in its order. `kind`
    is group-qualified where two groups have it (Resource.qualified_kind:
    "NetworkPolicy.projectcalico.org")."""
    rules = RULES.get(kind, KindRules(syntax.dns1123_subdomain_problems))
    errs: Errors = []
    _metadata(obj, namespaced, rules.name, errs)
    if rules.spec is not None:
        rules.spec(obj, old, errs)
    return errs


def decode_problems(errors: Errors, unknown_fields: bool = True) -> Errors:
    """The problems that make a body undecodable (answered 400): wrong JSON types, and unknown
    fields unless `unknown_fields` is False."""
    decoding = (TYPE_INVALID, UNKNOWN_FIELD) if unknown_fields else (TYPE_INVALID,)
    return [e for e in errors if e.reason in decoding]


def qualified_kind(kind: str, group: str) -> str:
    return f"{kind}.{group}" if group else kind


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "bool", dict: "object", list: "array"}


def decode_message(kind: str, version: str, error: FieldError) -> str:
    """kube-apiserver's 400 for a body it cannot decode (or, for an unknown field, one that
    strict field validation refuses)."""
    if error.reason == UNKNOWN_FIELD:
        return f'strict decoding error: unknown field "{error.field}"'
    got = _JSON_TYPES.get(type(error.value), "value")
    if got == "number":
        got = f"number {show(error.value)}"
    return (
        f'{kind} in version "{version}" cannot be handled as a {kind}: json: cannot unmarshal {got} '
        f"into Go struct field {error.field} of type {error.detail}"
    )


def invalid_message(kind: str, group: str, name: str, errors: Errors) -> str:
    """kube-apiserver's message for 422 Invalid: the errors aggregated, repeats dropped."""
    unique = list(dict.fromkeys(str(e) for e in errors))
    joined = unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
    return f"{qualified_kind(kind, group)} {json.dumps(name)} is invalid: {joined}"


def invalid_details(kind: str, group: str, name: str, errors: Errors) -> Obj:
    details: Obj = {"name": name, "group": group, "kind": kind}
    details = {k: v for k, v in details.items() if v}  # omitempty, as metav1.StatusDetails
    details["causes"] = [{"reason": e.reason, "message": e.body(), "field": e.field} for e in errors]
    return details
