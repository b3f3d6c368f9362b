"""Builders of raw Kubernetes API objects for the pure-layer unit tests (the unit fixture `k8s`)."""

from __future__ import annotations

from typing import Any

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.compiler.model import ClusterState


class K8s:
    """Raw API JSON builders, and a one-call compile of a small cluster."""

    @staticmethod
    def ns(name: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": dict(labels)}}

    @staticmethod
    def pod(
        key: str,
        labels: dict[str, str] | None = None,
        ips: list[str] | None = None,
        node: str | None = "node-1",
        ports: list[tuple[str | None, int, str]] | None = None,
        host_network: bool = False,
        phase: str = "Running",
    ) -> dict[str, Any]:
        ns, name = key.split("/")
        cports = []
        for pname, num, proto in ports or []:
            p: dict[str, Any] = {"containerPort": num, "protocol": proto}
            if pname:
                p["name"] = pname
            cports.append(p)
        spec: dict[str, Any] = {"containers": [{"name": "c", "ports": cports}]}
        if node:
            spec["nodeName"] = node
        if host_network:
            spec["hostNetwork"] = True
        status: dict[str, Any] = {"phase": phase}
        if ips:
            status["podIP"] = ips[0]
            status["podIPs"] = [{"ip": ip} for ip in ips]
        return {
            "metadata": {"namespace": ns, "name": name, "labels": dict(labels or {})},
            "spec": spec,
            "status": status,
        }

    @staticmethod
    def policy(key: str, spec: dict[str, Any]) -> dict[str, Any]:
        ns, name = key.split("/")
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }

    @staticmethod
    def node(name: str, *addresses: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {
            "metadata": {"name": name, **({"labels": labels} if labels else {})},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
        }

    @staticmethod
    def cluster(
        pods: list[dict[str, Any]],
        policies: list[dict[str, Any]] = (),  # type: ignore[assignment]
        namespaces: list[dict[str, Any]] | None = None,
        nodes: list[dict[str, Any]] | None = None,
    ) -> ClusterState:
        if namespaces is None:
            names = sorted(
                {p["metadata"]["namespace"] for p in pods} | {p["metadata"]["namespace"] for p in policies}
            )
            namespaces = [K8s.ns(n) for n in names]
        if nodes is None:
            nodes = [K8s.node("node-1", "192.168.0.1"), K8s.node("node-2", "192.168.0.2")]
        return cluster_from_objects(namespaces, pods, list(policies), nodes)

    @staticmethod
    def compute_all(cluster: ClusterState) -> dict[str, NodeDesired]:
        return {n: compute(cluster, n) for n in cluster.nodes}
