"""Server-side printing: the `meta.k8s.io/v1 Table` kube-apiserver answers `kubectl get` with
(pure: objects in, JSON-ready documents out).

kubectl asks for a Table in its Accept header (`application/json;as=Table;v=v1;g=meta.k8s.io`);
`wants_table` reads that header, and `table` builds the answer: `columnDefinitions` (name, type,
format, description, priority; priority 1 = only in `-o wide`) and one row per object, its
`cells` and its `object`: PartialObjectMetadata by default (kubectl reads the NAMESPACE column of
`-A` and `--show-labels` from it), the whole object with `includeObject=Object`, none with `None`.

The columns and cell values are kube-apiserver's (pkg/printers/internalversion/printers.go) for
the built-in kinds, one small function per kind; custom resources get their CRD's
additionalPrinterColumns (ClusterNetworkPolicy v1alpha2: Tier, Priority, Age, as
network-policy-api's CRD declares them) or, like any CRD without them, Name and Age (Calico's
kinds, the lab's ExternalHost). Not modelled: a pod's init containers (the lab has none; their
states do not change STATUS here as they would upstream) and Node address types other than
InternalIP/ExternalIP.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

TABLE_GROUP = "meta.k8s.io"
TABLE_VERSIONS = ("v1", "v1beta1")
INCLUDE_OBJECT = ("Metadata", "Object", "None")
NONE = "<none>"


@dataclass(frozen=True)
class Column:
    name: str
    description: str
    priority: int = 0  # 1: only printed with -o wide
    type: str = "string"
    format: str = ""

    def definition(self) -> Obj:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


NAME = Column(
    "Name",
    "Name must be unique within a namespace. It is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically.",
    format="name",
)
AGE = Column(
    "Age",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
)
CRD_AGE = Column(AGE.name, AGE.description, type="date")  # a CRD's default column: a date


def columns(*more: Column) -> tuple[Column, ...]:
    return (NAME, *more)


# --- cell helpers ---------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery's duration.HumanDuration: 45s, 3m20s, 15m, 5h3m, 3d4h, 40d, 2y100d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def since(timestamp: Any, now: datetime.datetime) -> str:
    """A timestamp's age as kubectl prints it; <unknown> when there is none."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((now - then).total_seconds())


def age(obj: Obj, now: datetime.datetime) -> str:
    return since(_meta(obj).get("creationTimestamp"), now)


def format_labels(labels: Any) -> str:
    """labels.FormatLabels: k=v pairs sorted by key, or <none>."""
    if not isinstance(labels, dict) or not labels:
        return NONE
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def format_label_selector(selector: Any) -> str:
    """metav1.FormatLabelSelector: requirements sorted by key (k=v, k in (a,b), k notin (a),
    k, !k), or <none> for the empty selector that selects everything."""
    if not isinstance(selector, dict):
        return NONE
    terms: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = ",".join(sorted(expr.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(op, "<error>")
        terms.append((key, text))
    return ",".join(text for _, text in sorted(terms, key=lambda t: t[0])) or NONE


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def _list_with_more(items: list[str], limit: int = 3) -> str:
    """printers.go's listWithMoreString: the first three, then `+ N more...`; <unset> if none."""
    text = ",".join(items[:limit])
    if len(items) > limit:
        return f"{text} + {len(items) - limit} more..."
    return text or "<unset>"


# --- Pods -----------------------------------------------------------------------------------

POD_COLUMNS = columns(
    Column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    Column("Status", "The aggregate status of the containers in this pod."),
    Column(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when the last "
        "container in this pod has restarted.",
    ),
    AGE,
    Column("IP", "podIP address allocated to the pod. Routable at least within the cluster.", 1),
    Column("Node", "NodeName indicates in which node this pod is scheduled.", 1),
    Column("Nominated Node", "nominatedNodeName is set only when this pod preempts other pods.", 1),
    Column("Readiness Gates", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
)


def _condition(obj: Obj, kind: str) -> Obj | None:
    return next((c for c in _status(obj).get("conditions") or [] if c.get("type") == kind), None)


def pod_cells(pod: Obj, now: datetime.datetime) -> list[Any]:
    """printPod: READY ready/total, STATUS the phase or the containers' reason, RESTARTS the sum
    (with how long ago the last one ended), AGE, and the wide columns."""
    status, spec = _status(pod), _spec(pod)
    reason = status.get("reason") or status.get("phase") or ""
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("reason") == "SchedulingGated":
        reason = "SchedulingGated"
    restarts, ready, running, last_restart = 0, 0, False, ""
    for container in reversed(status.get("containerStatuses") or []):
        restarts += int(container.get("restartCount") or 0)
        finished = ((container.get("lastState") or {}).get("terminated") or {}).get("finishedAt") or ""
        last_restart = max(last_restart, finished)
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated and terminated.get("reason"):
            reason = terminated["reason"]
        elif terminated:
            signal = terminated.get("signal")
            reason = f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif container.get("ready") and state.get("running") is not None:
            running = True
            ready += 1
    if reason == "Completed" and running:
        ready_condition = _condition(pod, "Ready")
        reason = "Running" if ready_condition and ready_condition.get("status") == "True" else "NotReady"
    if _meta(pod).get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif status.get("phase") not in ("Succeeded", "Failed"):
            reason = "Terminating"
    restarts_text = f"{restarts} ({since(last_restart, now)} ago)" if last_restart else str(restarts)
    ips = status.get("podIPs") or []
    gates = spec.get("readinessGates") or []
    gates_text = NONE
    if gates:
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        gates_text = f"{sum(g.get('conditionType') in true for g in gates)}/{len(gates)}"
    return [
        _meta(pod).get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        restarts_text,
        age(pod, now),
        (ips[0].get("ip") if ips else status.get("podIP")) or NONE,
        spec.get("nodeName") or NONE,
        status.get("nominatedNodeName") or NONE,
        gates_text,
    ]


# --- Namespaces, Nodes ----------------------------------------------------------------------

NAMESPACE_COLUMNS = columns(Column("Status", "The status of the namespace"), AGE)


def namespace_cells(ns: Obj, now: datetime.datetime) -> list[Any]:
    return [_meta(ns).get("name", ""), _status(ns).get("phase", ""), age(ns, now)]


NODE_COLUMNS = columns(
    Column("Status", "The status of the node"),
    Column("Roles", "The roles of the node"),
    AGE,
    Column("Version", "Kubelet Version reported by the node."),
    Column("Internal-IP", "List of addresses reachable to the node.", 1),
    Column("External-IP", "List of addresses reachable to the node.", 1),
    Column("OS-Image", "OS Image reported by the node from /etc/os-release.", 1),
    Column("Kernel-Version", "Kernel Version reported by the node from 'uname -r'.", 1),
    Column("Container-Runtime", "ContainerRuntime Version reported by the node.", 1),
)
ROLE_PREFIX = "node-role.kubernetes.io/"


def node_roles(labels: dict[str, str]) -> str:
    roles = {k.removeprefix(ROLE_PREFIX) for k in labels if k.startswith(ROLE_PREFIX)}
    if labels.get("kubernetes.io/role"):
        roles.add(labels["kubernetes.io/role"])
    return ",".join(sorted(r for r in roles if r)) or NONE


def node_cells(node: Obj, now: datetime.datetime) -> list[Any]:
    """printNode: STATUS from the Ready condition (+SchedulingDisabled), ROLES from the
    node-role labels, the kubelet's version, the first internal and external address."""
    status = _status(node)
    ready = (_condition(node, "Ready") or {}).get("status")
    states = [{"True": "Ready", "False": "NotReady"}.get(ready or "", "Unknown")]
    if _spec(node).get("unschedulable"):
        states.append("SchedulingDisabled")
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        found = [a.get("address") for a in status.get("addresses") or [] if a.get("type") == kind]
        return found[0] if found else NONE

    return [
        _meta(node).get("name", ""),
        ",".join(states),
        node_roles(_meta(node).get("labels") or {}),
        age(node, now),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


# --- NetworkPolicies, Services, EndpointSlices ----------------------------------------------

NETWORK_POLICY_COLUMNS = columns(
    Column("Pod-Selector", "Selects the pods to which this NetworkPolicy object applies."), AGE
)


def network_policy_cells(policy: Obj, now: datetime.datetime) -> list[Any]:
    return [
        _meta(policy).get("name", ""),
        format_label_selector(_spec(policy).get("podSelector")),
        age(policy, now),
    ]


SERVICE_COLUMNS = columns(
    Column("Type", "type determines how the Service is exposed."),
    Column("Cluster-IP", "clusterIP is the IP address of the service."),
    Column("External-IP", "externalIPs is a list of IP addresses for which nodes also accept traffic."),
    Column("Port(s)", "The list of ports that are exposed by this service."),
    AGE,
    Column("Selector", "Route service traffic to pods with label keys and values matching this selector.", 1),
)


def service_external_ip(svc: Obj) -> str:
    """getServiceExternalIP (server side, so never truncated)."""
    spec = _spec(svc)
    external = list(spec.get("externalIPs") or [])
    kind = spec.get("type") or "ClusterIP"
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or NONE
    if kind == "LoadBalancer":
        ingress = (_status(svc).get("loadBalancer") or {}).get("ingress") or []
        balancers = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
        if external:
            return ",".join(external + balancers)
        return ",".join(balancers) or "<pending>"
    if kind == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def service_ports(ports: list[Obj]) -> str:
    """makePortString: port/PROTO, port:nodePort/PROTO with a node port; <none> if none."""
    out = []
    for p in ports:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol') or 'TCP'}")
    return ",".join(out) or NONE


def service_cells(svc: Obj, now: datetime.datetime) -> list[Any]:
    spec = _spec(svc)
    cluster_ips = spec.get("clusterIPs") or [spec.get("clusterIP") or NONE]
    return [
        _meta(svc).get("name", ""),
        spec.get("type") or "ClusterIP",
        cluster_ips[0],
        service_external_ip(svc),
        service_ports(spec.get("ports") or []),
        age(svc, now),
        format_labels(spec.get("selector")),
    ]


ENDPOINT_SLICE_COLUMNS = columns(
    Column("AddressType", "addressType specifies the type of address carried by this EndpointSlice."),
    Column("Ports", "ports specifies the list of network ports exposed by each endpoint in this slice."),
    Column("Endpoints", "endpoints is a list of unique endpoints in this slice."),
    AGE,
)


def endpoint_slice_cells(eps: Obj, now: datetime.datetime) -> list[Any]:
    """printEndpointSlice: up to three ports (number, else name, else *) and addresses."""
    ports = [
        str(p["port"]) if p.get("port") is not None else p.get("name") or "*" for p in eps.get("ports") or []
    ]
    addresses = [a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    return [
        _meta(eps).get("name", ""),
        eps.get("addressType", ""),
        _list_with_more(ports),
        _list_with_more(addresses),
        age(eps, now),
    ]


# --- custom resources -----------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterColumn:
    """One of a CRD's additionalPrinterColumns (a jsonPath of dotted field names)."""

    column: Column
    path: str

    def cell(self, obj: Obj, now: datetime.datetime) -> Any:
        node: Any = obj
        for part in self.path.strip(".").split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None  # kubectl prints <none>
        if self.column.type == "date":
            return since(node, now)
        if isinstance(node, bool):  # a string column holds the value as jsonpath prints it
            return "true" if node else "false"
        return str(node)


CREATED = PrinterColumn(CRD_AGE, ".metadata.creationTimestamp")
# network-policy-api's ClusterNetworkPolicy CRD (v1alpha2): Tier, Priority (typed string), Age
CNP_PRINTER_COLUMNS = (
    PrinterColumn(Column("Tier", ""), ".spec.tier"),
    PrinterColumn(Column("Priority", ""), ".spec.priority"),
    CREATED,
)
DEFAULT_PRINTER_COLUMNS = (CREATED,)  # a CRD without additionalPrinterColumns


def printer_columns(printers: tuple[PrinterColumn, ...]) -> tuple[Column, ...]:
    return columns(*(p.column for p in printers))


def printer_cells(printers: tuple[PrinterColumn, ...]) -> Callable[[Obj, datetime.datetime], list[Any]]:
    def cells(obj: Obj, now: datetime.datetime) -> list[Any]:
        return [_meta(obj).get("name", ""), *(p.cell(obj, now) for p in printers)]

    return cells


# --- the table ------------------------------------------------------------------------------

Cells = Callable[[Obj, datetime.datetime], list[Any]]


@dataclass(frozen=True)
class Printer:
    columns: tuple[Column, ...]
    cells: Cells


BUILT_IN: dict[str, Printer] = {
    "pods": Printer(POD_COLUMNS, pod_cells),
    "namespaces": Printer(NAMESPACE_COLUMNS, namespace_cells),
    "nodes": Printer(NODE_COLUMNS, node_cells),
    "networkpolicies": Printer(NETWORK_POLICY_COLUMNS, network_policy_cells),
    "services": Printer(SERVICE_COLUMNS, service_cells),
    "endpointslices": Printer(ENDPOINT_SLICE_COLUMNS, endpoint_slice_cells),
    "clusternetworkpolicies": Printer(
        printer_columns(CNP_PRINTER_COLUMNS), printer_cells(CNP_PRINTER_COLUMNS)
    ),
}
CUSTOM = Printer(printer_columns(DEFAULT_PRINTER_COLUMNS), printer_cells(DEFAULT_PRINTER_COLUMNS))


def printer(resource_key: str) -> Printer:
    """The columns of a resource (controller.lab.store's Resource.key); a custom resource
    without upstream printer columns (Calico's kinds, ExternalHost) gets Name and Age."""
    return BUILT_IN.get(resource_key, CUSTOM)


def wants_table(accept: str | None) -> str | None:
    """The Table version (v1, v1beta1) an Accept header asks for before anything else, or None
    for a client that wants the objects (plain JSON, as every client but kubectl's get)."""
    for media in (accept or "").split(","):
        kind, *params = (part.strip() for part in media.split(";"))
        options = dict(p.partition("=")[::2] for p in params)
        if options.get("as") == "Table":
            wanted = (kind, options.get("g"), options.get("v"))
            if wanted in {("application/json", TABLE_GROUP, v) for v in TABLE_VERSIONS}:
                return wanted[2]
            continue  # a Table this server cannot give (protobuf, another version): the next
        if kind in ("application/json", "*/*", "application/*", ""):
            return None
    return None


def row_object(obj: Obj, include: str, table_version: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"{TABLE_GROUP}/{table_version}",
        "metadata": _meta(obj),
    }


def table(
    resource_key: str,
    objects: list[Obj],
    *,
    resource_version: str | None = None,
    include_object: str = "Metadata",
    table_version: str = "v1",
    headers: bool = True,
    now: datetime.datetime | None = None,
) -> Obj:
    """The Table of `objects` (all of one resource, each with its kind and apiVersion);
    `headers=False` leaves out the column definitions (later events of a watch)."""
    now = now or datetime.datetime.now(datetime.UTC)
    kind = printer(resource_key)
    out: Obj = {
        "kind": "Table",
        "apiVersion": f"{TABLE_GROUP}/{table_version}",
        "metadata": {"resourceVersion": resource_version} if resource_version else {},
        "columnDefinitions": [c.definition() for c in kind.columns] if headers else [],
        "rows": [],
    }
    for obj in objects:
        row: Obj = {"cells": kind.cells(obj, now)}
        included = row_object(obj, include_object, table_version)
        if included is not None:
            row["object"] = included
        out["rows"].append(row)
    return out
