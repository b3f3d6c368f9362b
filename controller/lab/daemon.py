"""The lab daemon: one per lab, detached from the CLI.

It owns the lab's API server (10.244.0.1:6443 in the fabric namespace, and a unix socket for the
CLI), the object store, the responders and the agents. Admission hooks build a pod's namespace
and veth before the Pod is written, and remove them after it is deleted.

A Pod with `spec.hostNetwork: true` gets no namespace, veth or CNI call: it runs in its node's
namespace, its podIP/podIPs are the node's addresses, and the ports it declares are served
there by one responder endpoint per node (`node/<node>`, the union of the ports of the node's
host-network pods: one set of SCTP raw sockets per namespace, so two endpoints would answer the
same INIT twice). Two host-network pods of one node may not declare the same port and protocol
(kubelet's host-port rule; refused 422), nor the node agent's status port. Agents run one per node
inside the node namespace, supervised like a kubelet would: one that exits is started again
within a second with the same node name and pin root.

Run as `python -m controller.lab.daemon --name LAB` (the CLI does it); state in
/run/vethguard/labs/<lab>/ (see controller.lab.state).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from controller.core import programs
from controller.lab import agent_pods, cni_runtime, dns, kubeproxy, netns, topology
from controller.lab.agents import AGENT_STATUS_PORT, AgentSupervisor, agent_env
from controller.lab.apiserver import (
    ApiHTTPServer,
    ApiUnixServer,
    ServerThread,
    kubeconfig_text,
    tcp_listener,
)
from controller.lab.discovery import KUBE_VERSION
from controller.lab.manifests import external_addresses
from controller.lab.responders import Port, Responders
from controller.lab.state import LabConfig, LabPaths
from controller.lab.store import ApiError, Obj, Resource, Store
from controller.lab.svc import ServiceController

log = logging.getLogger("vethguard.lab.daemon")
NODE_API_URL = f"http://{topology.API_ADDRESS}:{topology.API_PORT}"  # from inside the nodes


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


def _pod_key(pod: Obj) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def is_host_network(pod: Obj) -> bool:
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def node_labels(name: str) -> dict[str, str]:
    """The labels every lab Node carries (kubelet sets the same two)."""
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}


class LabAdmission:
    """Store admission hooks: the lab's network follows the Pods and ExternalHosts written."""

    def __init__(
        self,
        config: LabConfig,
        store: Store,
        topo: topology.Topology,
        responders: Responders,
        services: ServiceController | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.topo = topo
        self.responders = responders
        self.services = services

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
        if op != "delete":
            return
        if host_network:
            self._serve_host_ports(obj["spec"]["nodeName"])
        elif resource.plural == "pods":
            self.responders.remove(_pod_key(obj))
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
        where = f"Pod {_pod_key(old)}"
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
                    f"Pod {_pod_key(pod)}: spec.nodeName {requested!r} is not a lab node ({names})",
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
                    container_id=str(meta.get("uid") or _pod_key(pod)),
                )
                log.info(
                    "pod %s: closed by vethguard-cni %.1f ms after the lab began creating its veth",
                    _pod_key(pod),
                    (time.monotonic() - began) * 1000,
                )
            self.responders.add(
                _pod_key(pod), self.topo.names.pod(meta["namespace"], meta["name"]), responder_ports(pod)
            )
        except Exception as exc:
            self.responders.remove(_pod_key(pod))
            self.topo.delete_pod(meta["namespace"], meta["name"])
            raise ApiError(
                500, "InternalError", f"Pod {_pod_key(pod)}: building its network failed: {exc}"
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
        where = f"Pod {_pod_key(pod)}"
        ports = responder_ports(pod)
        taken: dict[Port, str] = {(AGENT_STATUS_PORT, "TCP"): "the node agent's status port"}
        for other in self._host_network_pods(node):
            taken.update(dict.fromkeys(responder_ports(other), f"host-network pod {_pod_key(other)}"))
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
            self.responders.add(_pod_key(pod), ns_name, responder_ports(pod))
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


def pod_status(node: int, address4: str, address6: str, containers: list[Obj]) -> Obj:
    """A running pod's status as its kubelet would report it: every container running and ready
    (`kubectl get pods` counts READY from containerStatuses)."""
    host4, host6 = topology.node_addresses(node)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "phase": "Running",
        "hostIP": host4,
        "hostIPs": [{"ip": host4}, {"ip": host6}],
        "podIP": address4,
        "podIPs": [{"ip": address4}, {"ip": address6}],
        "startTime": now,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": c.get("name", ""),
                "ready": True,
                "started": True,
                "restartCount": 0,
                "image": c.get("image", ""),
                "imageID": "",
                "state": {"running": {"startedAt": now}},
            }
            for c in containers
        ],
    }


def node_object(index: int) -> Obj:
    name = topology.node_name(index)
    address4, address6 = topology.node_addresses(index)
    cidr4, cidr6 = topology.node_cidrs(index)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name)},
        "spec": {"podCIDR": cidr4, "podCIDRs": [cidr4, cidr6]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address4},
                {"type": "InternalIP", "address": address6},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
            # what `kubectl get nodes -o wide` shows: the lab's kubelet version is its API's
            "nodeInfo": {
                "kubeletVersion": KUBE_VERSION["gitVersion"],
                "osImage": "vethguard lab (network namespace)",
                "kernelVersion": os.uname().release,
                "containerRuntimeVersion": "vethguard-lab://netns",
                "operatingSystem": "linux",
                "architecture": programs.debian_arch(),  # amd64 and arm64 as Kubernetes names them
            },
        },
    }


# --- the daemon -----------------------------------------------------------------------------


class LabDaemon:
    def __init__(self, lab: str) -> None:
        self.paths = LabPaths(lab)
        self.config = self.paths.read_config()
        self.topo = topology.Topology(lab, self.config.cni)
        self.store = Store(self.paths.store)
        self.local_api_url: str | None = None  # the API on this machine's 127.0.0.1 (once serving)
        self.responders = Responders()
        self.dns = (
            dns.DnsServer(
                self.paths.root / "dns",
                self.topo.names.pod(dns.NAMESPACE, dns.NAME),
                self.paths.root / "dns.log",
            )
            if self.config.dns
            else None
        )
        self.services = ServiceController(
            self.store,
            lambda: [self.topo.names.node(i) for i in range(1, self.config.nodes + 1)],
            self.dns.update if self.dns is not None else None,
            self.topo.route_service_addresses,
        )
        self.admission = LabAdmission(self.config, self.store, self.topo, self.responders, self.services)
        self.servers: list[ServerThread] = []
        self.agents = (
            AgentSupervisor(self.config, self.paths, self.topo, self.store) if self.config.agents else None
        )
        self.stopped = threading.Event()

    def start(self) -> None:
        self.paths.daemon_pid.write_text(f"{os.getpid()}\n")
        self.responders.start()
        fresh = self.store.resource_version == 0
        self._build_network(fresh)
        if fresh:
            for index in range(1, self.config.nodes + 1):
                self.store.create("nodes", node_object(index))
            self.store.create(
                "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
            )
            if self.config.agent_pods:  # written before admission: it refuses writes of them
                self.store.create("namespaces", agent_pods.namespace_object())
                for index in range(1, self.config.nodes + 1):
                    addresses = topology.node_addresses(index)
                    status = pod_status(index, *addresses, [{"name": agent_pods.CONTAINER}])
                    self.store.create("pods", agent_pods.pod_object(topology.node_name(index), status))
        self.store.admission = self.admission
        if not fresh:
            self.admission.restore()
        self.services.last_script = ""  # node tables may be gone (a rebuilt lab): write them again
        self.services.realize()
        self.local_api_url = f"http://127.0.0.1:{self._serve()}"
        self.paths.node_kubeconfig.write_text(kubeconfig_text(NODE_API_URL))
        self.paths.kubeconfig.write_text(kubeconfig_text(self.local_api_url))
        if self.agents is not None:
            # before any pod: a pod's vethguard-cni ADD waits for the programs its agent pins
            self.paths.pin_root.mkdir(parents=True, exist_ok=True)
            self.agents.start()
        if self.dns is not None:
            if fresh:
                self._create_dns_objects()
            self.dns.start()
        log.info("lab %s serving (resourceVersion %d)", self.config.name, self.store.resource_version)

    def _create_dns_objects(self) -> None:
        plurals = {"Namespace": "namespaces", "Pod": "pods", "Service": "services"}
        for obj in dns.objects():
            if (
                self.store.get(
                    plurals[obj["kind"]], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
                )
                is None
            ):
                self.store.create(plurals[obj["kind"]], obj)

    def _build_network(self, fresh: bool) -> None:
        nodes = range(1, self.config.nodes + 1)
        names = self.topo.names
        if not fresh and netns.exists(names.fabric) and all(netns.exists(names.node(i)) for i in nodes):
            return
        self.topo.create_fabric()
        for index in nodes:
            self.topo.create_node(index)

    def _serve(self) -> int:
        """The API on the fabric (for the nodes), on the unix socket (for the CLI) and on a free
        port of this machine's 127.0.0.1 (for kubectl: no route to the fabric is added to this
        machine's namespace); returns that port."""
        fabric = self.topo.names.fabric
        sock = netns.run_in_netns(fabric, lambda: tcp_listener(topology.API_ADDRESS, topology.API_PORT))
        local = tcp_listener("127.0.0.1", 0)
        servers = (
            ApiHTTPServer(sock, self.store, self.lab_endpoint),
            ApiHTTPServer(local, self.store, self.lab_endpoint),
            ApiUnixServer(self.paths.socket, self.store, self.lab_endpoint),
        )
        for server in servers:
            server.bookmark_interval = self.config.bookmark_interval
        if self.config.agent_pods:  # this machine's clients only: not on the fabric, which pods reach
            runner = agent_pods.AgentExec(self._node_netns, self._agent_pod_env)
            for server in servers[1:]:
                server.exec_runner = runner
        for server in servers:
            self.servers.append(ServerThread(server).start())
        return int(local.getsockname()[1])

    def _node_netns(self, node: str) -> str:
        return self.topo.names.node(topology.node_index(node) or 1)

    def _agent_pod_env(self, node: str) -> dict[str, str]:
        """What an exec in the node's agent pod sees: its agent's environment and container's."""
        return agent_env(self.paths) | {"VETHGUARD_FLOW_SOCKET": str(self.paths.flow_socket(node))}

    def lab_endpoint(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/lab/v1/status":
            return 200, self.status()
        return 404, {"kind": "Status", "code": 404, "message": f"no lab endpoint {method} {path}"}

    def status(self) -> dict[str, Any]:
        pods = {}
        for pod in self.store.list("pods")[0]:
            meta = pod["metadata"]
            node = pod["spec"].get("nodeName") or ""
            pods[_pod_key(pod)] = {
                "node": node,
                "ips": [entry["ip"] for entry in pod.get("status", {}).get("podIPs") or []],
                "netns": (
                    self.topo.names.node(topology.node_index(node) or 1)
                    if is_host_network(pod)
                    else self.topo.names.pod(meta["namespace"], meta["name"])
                ),
                "hostNetwork": is_host_network(pod),
                "ports": [{"port": p, "protocol": proto} for p, proto in pod_ports(pod)],
            }
        externals = {}
        for ext in self.store.list("externalhosts")[0]:
            name = ext["metadata"]["name"]
            externals[name] = {
                "ips": external_addresses(ext),
                "netns": self.topo.names.ext(name),
                "ports": [{"port": p, "protocol": proto} for p, proto in external_ports(ext)],
            }
        nodes = {}
        for index in range(1, self.config.nodes + 1):
            nodes[topology.node_name(index)] = {
                "ips": list(topology.node_addresses(index)),
                "podCIDRs": list(topology.node_cidrs(index)),
                "netns": self.topo.names.node(index),
            }
        agents = {}
        if self.agents is not None:
            threads = {}
            results: dict[str, dict[str, Any]] = {}
            for node in self.agents.nodes:
                threads[node] = threading.Thread(
                    target=lambda n=node: results.__setitem__(n, self.agents.status(n) if self.agents else {})
                )
                threads[node].start()
            for node, thread in threads.items():
                thread.join()
                agents[node] = results[node]
        svcs = {}
        for service in self.store.list("services")[0]:
            meta, spec = service["metadata"], service["spec"]
            svcs[f"{meta['namespace']}/{meta['name']}"] = {
                "type": spec.get("type"),
                "clusterIP": spec.get("clusterIP"),
                "loadBalancerIP": next(iter(kubeproxy.parse_service(service).load_balancer_ips), None),
                "externalIPs": list(spec.get("externalIPs") or []),
                "ports": [
                    {
                        "name": p.get("name") or "",
                        "port": p["port"],
                        "protocol": p["protocol"],
                        "targetPort": p.get("targetPort"),
                        "nodePort": p.get("nodePort"),
                    }
                    for p in spec.get("ports") or []
                ],
            }
        return {
            "name": self.config.name,
            "cni": self.config.cni,
            "dns": self.config.dns,
            "services": svcs,
            "resourceVersion": self.store.resource_version,
            "api": {
                "url": NODE_API_URL,
                "localUrl": self.local_api_url,
                "kubeconfig": str(self.paths.kubeconfig),
                "nodeKubeconfig": str(self.paths.node_kubeconfig),
            },
            "agentsEnabled": self.config.agents,
            "nodes": nodes,
            "pods": pods,
            "externals": externals,
            "agents": agents,
        }

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.dns is not None:
            self.dns.stop()
        if self.agents is not None:
            self.agents.stop()
        for server in self.servers:
            server.stop()
        self.responders.close()
        self.paths.socket.unlink(missing_ok=True)
        self.paths.daemon_pid.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vethguard-lab-daemon")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    daemon = LabDaemon(args.name)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: done.set())
    try:
        daemon.start()
        while not done.wait(1.0):
            pass
    except Exception:
        log.exception("lab daemon failed")
        return 1
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
