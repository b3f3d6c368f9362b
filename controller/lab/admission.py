"""The lab daemon's store admission hooks: the lab's network follows the Pods and ExternalHosts
written. A pod's namespace and veth are built before the Pod is written, and removed after it is
deleted; Services go to the ServiceController; Nodes keep their spec and status.

A Pod with `spec.hostNetwork: true` gets no namespace, veth or CNI call: it runs in its node's
namespace, its podIP/podIPs are the node's addresses, and the ports it declares are served
there by one responder endpoint per node (`node/<node>`, the union of the ports of the node's
host-network pods: one set of SCTP raw sockets per namespace, so two endpoints would answer the
same INIT twice). Two host-network pods of one node may not declare the same port and protocol
(kubelet's host-port rule; refused 422), nor the node agent's status port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from controller.lab import agent_pods, cni_runtime, dns, kubeproxy, netns, topology
from controller.lab.agents import AGENT_STATUS_PORT
from controller.lab.kubelet_objects import node_labels, pod_status
from controller.lab.manifests import external_addresses, external_aliases, external_names
from controller.lab.responders import Port, Responders
from controller.lab.state import LabConfig, LabPaths
from controller.lab.store import ApiError, Obj, Resource, Store
from controller.lab.svc import ServiceController

log = logging.getLogger("vethguard.lab.daemon")  # the daemon's log: admission runs in it


def responder_ports(pod: Obj) -> list[Port]:
    """The ports the lab's responders serve for a pod (none when a real server owns them)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return [] if annotations.get(dns.NO_RESPONDERS_ANNOTATION) == "true" else pod_ports(pod)


def pod_ports(pod: Obj) -> list[Port]:
    ports: list[Port] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            ports.append((int(port["containerPort"]), str(port.get("protocol") or "TCP")))
    return sorted(set(ports))


def _port_signature(pod: Obj) -> list[tuple[int, str, str]]:
    result = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            result.append(
                (int(port["containerPort"]), str(port.get("protocol") or "TCP"), port.get("name") or "")
            )
    return sorted(result)


def external_ports(ext: Obj) -> list[Port]:
    spec = ext.get("spec") or {}
    return sorted({(int(p["port"]), str(p.get("protocol") or "TCP")) for p in spec.get("ports") or []})


def pod_key(pod: Obj) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def is_host_network(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


class LabAdmission:
    """Store admission hooks: the lab's network follows the Pods and ExternalHosts written."""

    def __init__(
        self,
        config: LabConfig,
        store: Store,
        topo: topology.Topology,
        responders: Responders,
        services: ServiceController | None = None,
        on_external_hosts: Callable[[list[Obj]], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.topo = topo
        self.responders = responders
        self.services = services
        self.on_external_hosts = on_external_hosts  # every ExternalHost, after each write of one

    # --- Admission protocol ---

    def admit(self, op: str, resource: Resource, obj: Obj, old: Obj | None) -> Obj:
        if resource.plural == "pods" and (agent_pods.is_agent_pod(obj) or agent_pods.is_agent_pod(old)):
            raise agent_pods.refuse_write(obj)
        if resource.plural == "pods":
            return self._admit_pod(op, obj, old)
        if resource.plural == "externalhosts":
            return self._admit_external(op, obj, old)
        if resource.plural == "services" and self.services is not None:
            return self.services.admit(op, obj, old)
        if resource.plural == "nodes":
            return _admit_node(op, obj, old)
        return obj

    def committed(self, op: str, resource: Resource, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        host_network = resource.plural == "pods" and is_host_network(obj)
        if resource.plural == "pods" and op == "create" and self.config.dns and not host_network:
            dns.write_resolv_conf(self.topo.names.pod(meta["namespace"], meta["name"]), meta["namespace"])
        if self.services is not None:
            self.services.committed(resource, obj)
        if resource.plural == "externalhosts" and self.on_external_hosts is not None:
            self.on_external_hosts(self.store.list("externalhosts")[0])
        if op != "delete":
            return
        if host_network:
            self._serve_host_ports(obj["spec"]["nodeName"])
        elif resource.plural == "pods":
            self.responders.remove(pod_key(obj))
            self.topo.delete_pod(meta["namespace"], meta["name"])
            dns.remove_resolv_conf(self.topo.names.pod(meta["namespace"], meta["name"]))
        elif resource.plural == "externalhosts":
            self.responders.remove(f"ext/{meta['name']}")
            self.topo.delete_external(meta["name"])

    # --- pods ---

    def _admit_pod(self, op: str, obj: Obj, old: Obj | None) -> Obj:
        if op == "create":
            return self._create_pod(obj)
        if op == "replace" and old is not None:
            return self._replace_pod(obj, old)
        return obj

    def _replace_pod(self, obj: Obj, old: Obj) -> Obj:
        where = f"Pod {pod_key(old)}"
        spec = obj.setdefault("spec", {})
        if not spec.get("containers"):  # a metadata-only manifest (e.g. a relabel) keeps the spec
            spec = obj["spec"] = old["spec"]
        node = spec.get("nodeName")
        if node not in (None, old["spec"]["nodeName"]):
            raise ApiError(
                422, "Invalid", f"{where}: spec.nodeName is fixed once created ({old['spec']['nodeName']})"
            )
        spec["nodeName"] = old["spec"]["nodeName"]
        if is_host_network(obj) != is_host_network(old):
            raise ApiError(
                422, "Invalid", f"{where}: spec.hostNetwork is fixed once created ({is_host_network(old)})"
            )
        if _port_signature(obj) != _port_signature(old):
            raise ApiError(
                422,
                "Invalid",
                f"{where}: spec.containers[].ports are fixed once created (only labels and annotations "
                "may change); delete the pod and create it again",
            )
        obj["status"] = old["status"]
        return obj

    def _pick_node(self, pod: Obj) -> int:
        requested = (pod.get("spec") or {}).get("nodeName")
        if requested:
            index = topology.node_index(requested)
            if index is None or not 1 <= index <= self.config.nodes:
                names = ", ".join(topology.node_name(i) for i in range(1, self.config.nodes + 1))
                raise ApiError(
                    422,
                    "Invalid",
                    f"Pod {pod_key(pod)}: spec.nodeName {requested!r} is not a lab node ({names})",
                )
            return index
        counts = dict.fromkeys(range(1, self.config.nodes + 1), 0)
        for existing in self.store.list("pods")[0]:
            index = topology.node_index(existing["spec"].get("nodeName", ""))
            if index in counts:
                counts[index] += 1
        return min(counts, key=lambda i: (counts[i], i))

    def _free_host(self, node: int) -> int:
        used = set()
        for existing in self.store.list("pods")[0]:
            for entry in existing.get("status", {}).get("podIPs") or []:
                parts = entry["ip"].split(".")
                if len(parts) == 4 and parts[2] == str(node):
                    used.add(int(parts[3]))
        for host in range(2, 2 + topology.MAX_PODS_PER_NODE):
            if host not in used:
                return host
        raise ApiError(422, "Invalid", f"node-{node} has no free pod address left")

    def _create_pod(self, pod: Obj) -> Obj:
        node = self._pick_node(pod)
        if is_host_network(pod):
            return self._create_host_network_pod(pod, node)
        address4, address6 = topology.pod_addresses(node, self._free_host(node))
        meta = pod["metadata"]
        try:
            began = time.monotonic()
            ifname = self.topo.create_pod(meta["namespace"], meta["name"], node, address4, address6)
            if self.config.agents:  # chained vethguard-cni: closed before anything in it runs
                cni_runtime.add(
                    pin_root=LabPaths(self.config.name).pin_root,
                    state_dir=LabPaths(self.config.name).root,
                    node=topology.node_name(node),
                    node_netns=self.topo.names.node(node),
                    pod_netns=self.topo.names.pod(meta["namespace"], meta["name"]),
                    host_ifname=ifname,
                    addresses=(address4, address6),
                    container_id=str(meta.get("uid") or pod_key(pod)),
                )
                log.info(
                    "pod %s: closed by vethguard-cni %.1f ms after the lab began creating its veth",
                    pod_key(pod),
                    (time.monotonic() - began) * 1000,
                )
            self.responders.add(
                pod_key(pod), self.topo.names.pod(meta["namespace"], meta["name"]), responder_ports(pod)
            )
        except Exception as exc:
            self.responders.remove(pod_key(pod))
            self.topo.delete_pod(meta["namespace"], meta["name"])
            raise ApiError(
                500, "InternalError", f"Pod {pod_key(pod)}: building its network failed: {exc}"
            ) from exc
        pod["spec"]["nodeName"] = topology.node_name(node)
        pod["status"] = pod_status(node, address4, address6, pod["spec"].get("containers") or [])
        return pod

    # --- host-network pods ---

    def _host_network_pods(self, node: str) -> list[Obj]:
        return [
            p for p in self.store.list("pods")[0] if is_host_network(p) and p["spec"].get("nodeName") == node
        ]

    def _create_host_network_pod(self, pod: Obj, index: int) -> Obj:
        node = topology.node_name(index)
        where = f"Pod {pod_key(pod)}"
        ports = responder_ports(pod)
        taken: dict[Port, str] = {(AGENT_STATUS_PORT, "TCP"): "the node agent's status port"}
        for other in self._host_network_pods(node):
            taken.update(dict.fromkeys(responder_ports(other), f"host-network pod {pod_key(other)}"))
        clashes = [
            f"{port}/{protocol} ({taken[(port, protocol)]})"
            for port, protocol in ports
            if (port, protocol) in taken
        ]
        if clashes:
            raise ApiError(
                422,
                "Invalid",
                f"{where}: hostNetwork ports already in use on {node}: {', '.join(clashes)}",
            )
        pod["spec"]["nodeName"] = node
        try:
            self._serve_host_ports(node, extra=ports)
        except Exception as exc:
            self._serve_host_ports(node)
            raise ApiError(
                500, "InternalError", f"{where}: serving its ports on {node} failed: {exc}"
            ) from exc
        pod["status"] = pod_status(
            index, *topology.node_addresses(index), pod["spec"].get("containers") or []
        )
        return pod

    def _serve_host_ports(self, node: str, extra: list[Port] | None = None) -> None:
        """The responders of `node`'s namespace: every port of its host-network pods (+ extra)."""
        pods = self._host_network_pods(node)
        key = f"node/{node}"
        if not pods and extra is None:
            self.responders.remove(key)
            return
        ports = [p for pod in pods for p in responder_ports(pod)] + (extra or [])
        self.responders.add(key, self.topo.names.node(topology.node_index(node) or 1), ports)

    # --- external hosts ---

    def _admit_external(self, op: str, obj: Obj, old: Obj | None) -> Obj:
        name = obj["metadata"]["name"]
        if op in ("create", "replace"):
            try:
                external_names(obj)
                external_aliases(obj)
            except ValueError as exc:
                raise ApiError(422, "Invalid", f"ExternalHost {name}: {exc}") from exc
        if op == "replace" and old is not None:
            if external_addresses(obj) != external_addresses(old) or external_ports(obj) != external_ports(
                old
            ):
                raise ApiError(
                    422, "Invalid", f"ExternalHost {name}: spec.ip and spec.ports are fixed once created"
                )
            return obj
        if op != "create":
            return obj
        try:
            addresses = external_addresses(obj)
            for address in addresses:
                topology.check_external_address(address)
        except ValueError as exc:
            raise ApiError(422, "Invalid", f"ExternalHost {name}: spec.ip: {exc}") from exc
        self._check_unused(name, addresses)
        try:
            self.topo.create_external(name, addresses)
            self.responders.add(f"ext/{name}", self.topo.names.ext(name), external_ports(obj))
        except Exception as exc:
            self.responders.remove(f"ext/{name}")
            self.topo.delete_external(name)
            raise ApiError(
                500, "InternalError", f"ExternalHost {name}: building its network failed: {exc}"
            ) from exc
        return obj

    def _check_unused(self, name: str, addresses: list[str]) -> None:
        for service in self.store.list("services")[0]:
            clash = set(addresses) & set(kubeproxy.parse_service(service).external_ips)
            if clash:
                meta = service["metadata"]
                raise ApiError(
                    422,
                    "Invalid",
                    f"ExternalHost {name}: {', '.join(sorted(clash))} is an external IP of Service "
                    f"{meta['namespace']}/{meta['name']} (the lab routes it to a node)",
                )
        for other in self.store.list("externalhosts")[0]:
            clash = set(addresses) & set(external_addresses(other))
            if clash:
                raise ApiError(
                    422,
                    "Invalid",
                    f"ExternalHost {name}: {', '.join(sorted(clash))} already belongs to "
                    f"{other['metadata']['name']}",
                )

    # --- restart ---

    def restore(self) -> None:
        """After a daemon restart: rebuild what is missing and serve every declared port again."""
        for node in {p["spec"]["nodeName"] for p in self.store.list("pods")[0] if is_host_network(p)}:
            self._serve_host_ports(node)
        for pod in self.store.list("pods")[0]:
            if is_host_network(pod):
                continue
            meta = pod["metadata"]
            ns_name = self.topo.names.pod(meta["namespace"], meta["name"])
            if not netns.exists(ns_name):
                ips = [entry["ip"] for entry in pod["status"]["podIPs"]]
                node = topology.node_index(pod["spec"]["nodeName"]) or 1
                self.topo.create_pod(meta["namespace"], meta["name"], node, ips[0], ips[1])
            self.responders.add(pod_key(pod), ns_name, responder_ports(pod))
            if self.config.dns:
                dns.write_resolv_conf(ns_name, meta["namespace"])
        for ext in self.store.list("externalhosts")[0]:
            name = ext["metadata"]["name"]
            if not netns.exists(self.topo.names.ext(name)):
                self.topo.create_external(name, external_addresses(ext))
            self.responders.add(f"ext/{name}", self.topo.names.ext(name), external_ports(ext))


def _admit_node(op: str, obj: Obj, old: Obj | None) -> Obj:
    """Lab nodes come and go with the lab; a replace may change their labels and annotations
    only (the two kubelet labels stay)."""
    if op != "replace" or old is None:
        raise ApiError(
            405, "MethodNotAllowed", "lab nodes are fixed when the lab is created (lab up --nodes N)"
        )
    meta = obj["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **node_labels(meta["name"])}
    obj["spec"], obj["status"] = old["spec"], old["status"]
    return obj
