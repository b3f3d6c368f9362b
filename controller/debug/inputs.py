"""Where the debug commands get their inputs: cluster objects from the API, the nodes' pinned
maps and the agents' /status, either for the local node (a real cluster) or for every node of
a lab (`--lab NAME`).

Local node: objects through the official client (--kubeconfig / $KUBECONFIG / in-cluster),
maps under <pin-root>/<node>/, agent status from http://127.0.0.1:9890/status (the agent runs
with hostNetwork, so the node's loopback is ours).
ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2, a CRD a cluster may not have) are
listed with the client's CustomObjectsApi: a 404 (the CRD is not installed) means none; a 403
(not allowed to list them) means none too, with a warning that tier decisions are missing.
Lab: objects over the lab's unix socket (/run/vethguard/labs/<lab>/api.sock, the same
Kubernetes protocol), maps under /sys/fs/bpf/vethguard/lab-<lab>/node-<i>/ (bpffs is not
per network namespace), agent status fetched inside each node's network namespace.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agent.health import fetch_status
from controller.compiler import cnp
from controller.core.errors import VethguardError
from controller.debug.view import RawObjects

DEFAULT_PIN_ROOT = "/sys/fs/bpf/vethguard"
DEFAULT_AGENT = "127.0.0.1:9890"

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
}
CNP_PATH = cnp.PATH

Lists = dict[str, tuple[list[dict[str, Any]], int | None]]


@dataclass(frozen=True)
class NodeRef:
    name: str
    pin_dir: Path
    netns: str | None = None  # the lab node's network namespace (None on a real node)


def _items(kind_field: str, body: Any) -> tuple[list[dict[str, Any]], int | None]:
    if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
        raise VethguardError(f"listing {kind_field}: unexpected answer {str(body)[:200]}")
    items = []
    for item in body["items"]:
        # List items carry no kind; the model does not need it, `get -o yaml` prints it.
        item = dict(item)
        item.setdefault("kind", LIST_KINDS[kind_field])
        if kind_field == "cluster_policies":
            item.setdefault("apiVersion", cnp.API_VERSION)
        items.append(item)
    rv = (body.get("metadata") or {}).get("resourceVersion")
    return items, int(rv) if isinstance(rv, str) and rv.isdigit() else None


def _cnp_unlisted(code: int, source: str, detail: Any) -> tuple[list[dict[str, Any]], str | None]:
    """No ClusterNetworkPolicies after a failed list: (no items, a warning or None), or raise."""
    if code == 404:
        return [], None  # the CRD is not installed: no ClusterNetworkPolicies, not an error
    if code == 403:
        return [], (
            f"not allowed to list {cnp.PLURAL}.{cnp.GROUP} ({source}): "
            "decisions of ClusterNetworkPolicy tiers are not shown"
        )
    raise VethguardError(f"listing {cnp.PLURAL}.{cnp.GROUP} ({source}) failed ({code}): {str(detail)[:200]}")


def _raw_objects(lists: Lists, warnings: tuple[str, ...] = ()) -> RawObjects:
    versions = [rv for _, rv in lists.values() if rv is not None]
    return RawObjects(
        namespaces=lists["namespaces"][0],
        pods=lists["pods"][0],
        policies=lists["policies"][0],
        nodes=lists["nodes"][0],
        resource_version=min(versions) if versions else None,
        cluster_policies=lists.get("cluster_policies", ([], None))[0],
        warnings=warnings,
    )


def list_cluster_policies(api: Any, lists: Lists) -> str | None:
    """Add the ClusterNetworkPolicies to `lists` with the agent's list function for them (the
    official client's CustomObjectsApi, ApiClient `api`); returns a warning when they could not
    be listed but that is no error."""
    from kubernetes.client.exceptions import ApiException

    from controller.agent.kube_api import KINDS

    [spec] = [s for s in KINDS if s.kind == cnp.KIND]
    try:
        resp: Any = spec.list_fn_of(api)(_preload_content=False)
    except ApiException as exc:
        items, warning = _cnp_unlisted(int(exc.status or 0), "the API server", exc.reason)
        lists["cluster_policies"] = (items, None)
        return warning
    lists["cluster_policies"] = _items("cluster_policies", json.loads(resp.data))
    return None


class Target:
    """Inputs of one invocation. Subclasses: LocalTarget, LabTarget."""

    lab: str | None = None

    def objects(self) -> RawObjects:
        raise NotImplementedError

    def nodes(self) -> list[NodeRef]:
        raise NotImplementedError

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        raise NotImplementedError


class LocalTarget(Target):
    def __init__(self, node: str | None, pin_root: str, kubeconfig: str | None, agent: str) -> None:
        self.node = node or os.environ.get("NODE_NAME") or socket.gethostname()
        self.pin_root = pin_root
        self.kubeconfig = kubeconfig
        self.agent = agent

    def objects(self) -> RawObjects:
        from controller.agent.kube_api import KINDS, load_api_client

        api = load_api_client(self.kubeconfig)
        fields = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "policies", "Node": "nodes"}
        lists: Lists = {}
        for spec in KINDS:
            if spec.kind not in fields:
                continue  # Services: the debug views explain pod-to-pod verdicts only
            resp = spec.list_fn_of(api)(_preload_content=False)
            lists[fields[spec.kind]] = _items(fields[spec.kind], json.loads(resp.data))
        warning = list_cluster_policies(api, lists)
        return _raw_objects(lists, (warning,) if warning else ())

    def nodes(self) -> list[NodeRef]:
        return [NodeRef(self.node, Path(self.pin_root) / self.node)]

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
        code, body = self.client.request("GET", CNP_PATH)
        warning = None
        if code == 200:
            lists["cluster_policies"] = _items("cluster_policies", body)
        else:
            items, warning = _cnp_unlisted(code, f"lab {self.lab}", body)
            lists["cluster_policies"] = (items, None)
        return _raw_objects(lists, (warning,) if warning else ())

    def nodes(self) -> list[NodeRef]:
        nodes = self.lab_status().get("nodes") or {}
        names = sorted(nodes, key=_node_sort_key)
        if self.only_node is not None:
            if self.only_node not in nodes:
                raise VethguardError(
                    f"lab {self.lab} has no node {self.only_node!r} (nodes: {', '.join(names)})"
                )
            names = [self.only_node]
        return [NodeRef(n, self.paths.pin_root / n, nodes[n].get("netns")) for n in names]

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


def _node_sort_key(name: str) -> tuple[str, int]:
    base, _, num = name.rpartition("-")
    return (base, int(num)) if num.isdigit() else (name, 0)
