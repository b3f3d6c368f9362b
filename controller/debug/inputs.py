"""Where the debug commands get their inputs: cluster objects from the API, the nodes' pinned
maps and the agents' /status, either for the local node (a real cluster) or for every node of
a lab (`--lab NAME`); every node's agent of a real cluster through pods/exec (`--all-nodes`) is
controller.debug.cluster_target's ClusterTarget.

Local node: objects through the official client (--kubeconfig / $KUBECONFIG / in-cluster),
maps under <pin-root>/<node>/, agent status from http://127.0.0.1:9890/status (the agent runs
with hostNetwork, so the node's loopback is ours), flows from the agent's flow socket
(--flow-socket, default /run/vethguard/flows.sock).
ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2, a CRD a cluster may not have) are
listed with the client's CustomObjectsApi: a 404 (the CRD is not installed) means none; a 403
(not allowed to list them) means none too, with a warning that tier decisions are missing.
Calico's projectcalico.org/v3 GlobalNetworkPolicies, NetworkPolicies (every namespace) and
HostEndpoints likewise, with the agent's list functions for them: none without Calico's API.
Lab: objects over the lab's unix socket (/run/vethguard/labs/<lab>/api.sock, the same
Kubernetes protocol), maps under /sys/fs/bpf/vethguard/lab-<lab>/node-<i>/ (bpffs is not
per network namespace), agent status fetched inside each node's network namespace, flows from
/run/vethguard/labs/<lab>/flows-<node>.sock read from inside the node's network namespace.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agent.flow_server import DEFAULT_FLOW_SOCKET
from controller.agent.health import fetch_status
from controller.agent.kube_api import KINDS
from controller.compiler import calico, cnp
from controller.compiler.calico import CalicoObjects
from controller.compiler.clusterview import RawObjects
from controller.core.errors import VethguardError
from controller.core.object_versions import digest_text, kind_digest

DEFAULT_PIN_ROOT = "/sys/fs/bpf/vethguard"
DEFAULT_AGENT = "127.0.0.1:9890"
REQUEST_TIMEOUT = 30.0  # seconds for each list: a stalled API server is an error, not a hang

# (field of RawObjects, API path) of the kinds the agent watches.
LIST_PATHS = (
    ("namespaces", "/api/v1/namespaces"),
    ("pods", "/api/v1/pods"),
    ("policies", "/apis/networking.k8s.io/v1/networkpolicies"),
    ("nodes", "/api/v1/nodes"),
)
LIST_KINDS = {
    "namespaces": "Namespace",
    "pods": "Pod",
    "policies": "NetworkPolicy",
    "nodes": "Node",
    "cluster_policies": "ClusterNetworkPolicy",
    "services": "Service",
}
# Services: their frontends tell a host endpoint's traffic to the node from forwarded traffic
SERVICES_PATH = "/api/v1/services"
CNP_PATH = cnp.PATH
# Calico's kinds: (field of CalicoObjects, kind, plural)
CALICO_FIELDS = (
    ("global_policies", calico.GLOBAL_KIND, calico.PLURALS[calico.GLOBAL_KIND]),
    ("namespaced_policies", calico.NAMESPACED_KIND, calico.PLURALS[calico.NAMESPACED_KIND]),
    ("host_endpoints", calico.HEP_KIND, calico.PLURALS[calico.HEP_KIND]),
)
LIST_KINDS.update({fld: kind for fld, kind, _ in CALICO_FIELDS})
CALICO_PATHS = tuple((fld, f"/apis/{calico.API_VERSION}/{plural}") for fld, _, plural in CALICO_FIELDS)
# The apiVersion a listed item gets when its list left it out (the core kinds need none)
API_VERSIONS = {
    "cluster_policies": cnp.API_VERSION,
    **{fld: calico.API_VERSION for fld, _, _ in CALICO_FIELDS},
}

# field -> (items, the list's resourceVersion: None where the kind could not be listed)
Lists = dict[str, tuple[list[dict[str, Any]], str | None]]


@dataclass(frozen=True)
class NodeRef:
    name: str
    pin_dir: Path
    netns: str | None = None  # the lab node's network namespace (None on a real node)
    flow_socket: Path | None = None  # where the node's agent serves its flows
    agent_pod: str | None = None  # --all-nodes: the agent pod exec'd into (controller.debug.cluster_target)


def _items(kind_field: str, body: Any) -> tuple[list[dict[str, Any]], str | None]:
    if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
        raise VethguardError(f"listing {kind_field}: unexpected answer {str(body)[:200]}")
    items = []
    for item in body["items"]:
        # List items carry no kind; the model does not need it, `get -o yaml` prints it.
        item = dict(item)
        item.setdefault("kind", LIST_KINDS[kind_field])
        if kind_field in API_VERSIONS:
            item.setdefault("apiVersion", API_VERSIONS[kind_field])
        items.append(item)
    return items, str((body.get("metadata") or {}).get("resourceVersion") or "")


# The optional kinds: field -> (the resource as kubectl names it, the agent's KindSpec key,
# what is missing from the views when we may not list it)
OPTIONAL = {
    "cluster_policies": (
        f"{cnp.PLURAL}.{cnp.GROUP}",
        cnp.KIND,
        "decisions of ClusterNetworkPolicy tiers are not shown",
    ),
    **{
        fld: (
            f"{plural}.{calico.GROUP}",
            calico.KIND_KEYS[kind],
            f"Calico's {kind.removesuffix('y') + 'ies' if kind.endswith('y') else kind + 's'} are not shown",
        )
        for fld, kind, plural in CALICO_FIELDS
    },
}


def _unlisted(field: str, code: int, source: str, detail: Any) -> tuple[list[dict[str, Any]], str | None]:
    """No objects of an optional kind after a failed list: (no items, a warning or None), or raise."""
    resource, _, missing = OPTIONAL[field]
    if code == 404:
        return [], None  # the API is not served (no CRD, no Calico): none, not an error
    if code == 403:
        return [], f"not allowed to list {resource} ({source}): {missing}"
    raise VethguardError(f"listing {resource} ({source}) failed ({code}): {str(detail)[:200]}")


def agent_kind(kind_field: str) -> str:
    """The agent's name (kube_api.KINDS) for the kind a RawObjects field holds."""
    return OPTIONAL[kind_field][1] if kind_field in OPTIONAL else LIST_KINDS[kind_field]


def listed_digests(lists: Lists) -> dict[str, str]:
    """Agent kind -> digest of the objects listed, for every kind that was listed."""
    namespaced = {spec.kind: spec.namespaced for spec in KINDS}
    out = {}
    for fld, (items, rv) in lists.items():
        kind = agent_kind(fld)
        if rv is not None and kind in namespaced:
            out[kind] = digest_text(kind_digest(items, namespaced[kind]))
    return out


def _raw_objects(lists: Lists, warnings: Sequence[str] = ()) -> RawObjects:
    return RawObjects(
        namespaces=lists["namespaces"][0],
        pods=lists["pods"][0],
        policies=lists["policies"][0],
        nodes=lists["nodes"][0],
        digests=listed_digests(lists),
        cluster_policies=lists.get("cluster_policies", ([], None))[0],
        calico=CalicoObjects(*(lists.get(fld, ([], None))[0] for fld, _, _ in CALICO_FIELDS)),
        warnings=tuple(warnings),
        services=lists.get("services", ([], None))[0],
    )


def list_optional(api: Any, lists: Lists) -> list[str]:
    """Add the ClusterNetworkPolicies and Calico's kinds to `lists` with the agent's list
    functions for them (the official client's CustomObjectsApi, ApiClient `api`); returns
    warnings for those that could not be listed but whose absence is no error."""
    from kubernetes.client.exceptions import ApiException

    specs = {s.kind: s for s in KINDS}
    warnings = []
    for fld, (_, key, _) in OPTIONAL.items():
        try:
            resp: Any = specs[key].list_fn_of(api)(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            items, warning = _unlisted(fld, int(exc.status or 0), "the API server", exc.reason)
            lists[fld] = (items, None)
            warnings += [warning] if warning else []
            continue
        lists[fld] = _items(fld, json.loads(resp.data))
    return warnings


class Target:
    """Inputs of one invocation. Subclasses: LocalTarget, LabTarget."""

    lab: str | None = None

    def objects(self) -> RawObjects:
        raise NotImplementedError

    def nodes(self) -> list[NodeRef]:
        raise NotImplementedError

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        raise NotImplementedError

    def agent_statuses(self, nodes: Sequence[NodeRef]) -> dict[str, dict[str, Any] | None]:
        """node -> agent_status(node), for every one of `nodes`."""
        return {n.name: self.agent_status(n) for n in nodes}


class LocalTarget(Target):
    def __init__(
        self,
        node: str | None,
        pin_root: str,
        kubeconfig: str | None,
        agent: str,
        flow_socket: str = DEFAULT_FLOW_SOCKET,
    ) -> None:
        self.node = node or os.environ.get("NODE_NAME") or socket.gethostname()
        self.pin_root = pin_root
        self.flow_socket = Path(flow_socket)
        self.kubeconfig = kubeconfig
        self.agent = agent

    def objects(self) -> RawObjects:
        from controller.agent.kube_api import load_api_client

        api = load_api_client(self.kubeconfig)
        fields = {
            "Namespace": "namespaces",
            "Pod": "pods",
            "NetworkPolicy": "policies",
            "Node": "nodes",
            "Service": "services",
        }
        lists: Lists = {}
        for spec in KINDS:
            if spec.kind not in fields:
                continue
            resp = spec.list_fn_of(api)(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
            lists[fields[spec.kind]] = _items(fields[spec.kind], json.loads(resp.data))
        return _raw_objects(lists, list_optional(api, lists))

    def nodes(self) -> list[NodeRef]:
        return [NodeRef(self.node, Path(self.pin_root) / self.node, flow_socket=self.flow_socket)]

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        host, _, port = self.agent.rpartition(":")
        return fetch_status(host or "127.0.0.1", int(port))


class LabTarget(Target):
    def __init__(self, lab: str, node: str | None = None) -> None:
        from controller.lab.client import connect
        from controller.lab.state import LabPaths

        self.lab = lab
        self.paths = LabPaths(lab)
        self.client = connect(lab)
        self._status: dict[str, Any] | None = None
        self.only_node = node

    def lab_status(self) -> dict[str, Any]:
        if self._status is None:
            self._status = self.client.status()
        return self._status

    def objects(self) -> RawObjects:
        lists: Lists = {}
        for kind_field, path in LIST_PATHS:
            code, body = self.client.request("GET", path)
            if code != 200:
                raise VethguardError(f"lab {self.lab}: GET {path} failed ({code}): {body}")
            lists[kind_field] = _items(kind_field, body)
        code, body = self.client.request("GET", SERVICES_PATH)
        lists["services"] = _items("services", body) if code == 200 else ([], None)
        warnings = []
        for fld, path in (("cluster_policies", CNP_PATH), *CALICO_PATHS):
            code, body = self.client.request("GET", path)
            if code == 200:
                lists[fld] = _items(fld, body)
                continue
            items, warning = _unlisted(fld, code, f"lab {self.lab}", body)
            lists[fld] = (items, None)
            warnings += [warning] if warning else []
        return _raw_objects(lists, warnings)

    def nodes(self) -> list[NodeRef]:
        nodes = self.lab_status().get("nodes") or {}
        names = sorted(nodes, key=node_sort_key)
        if self.only_node is not None:
            if self.only_node not in nodes:
                raise VethguardError(
                    f"lab {self.lab} has no node {self.only_node!r} (nodes: {', '.join(names)})"
                )
            names = [self.only_node]
        return [
            NodeRef(n, self.paths.pin_root / n, nodes[n].get("netns"), self.paths.flow_socket(n))
            for n in names
        ]

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        from controller.lab import netns

        if node.netns is None:
            return None
        try:
            return netns.run_in_netns(node.netns, lambda: fetch_status("127.0.0.1", 9890))
        except netns.NetnsError:
            return None

    def pod_netns(self) -> dict[str, str]:
        return {k: v["netns"] for k, v in (self.lab_status().get("pods") or {}).items()}


def node_sort_key(name: str) -> tuple[str, int]:
    base, _, num = name.rpartition("-")
    return (base, int(num)) if num.isdigit() else (name, 0)
