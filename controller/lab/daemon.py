"""The lab daemon: one per lab, detached from the CLI.

It owns the lab's API server (10.244.0.1:6443 in the fabric namespace, and a unix socket for the
CLI), the object store, the responders and the agents. Admission hooks (controller.lab.admission)
build a pod's namespace and veth before the Pod is written, and remove them after it is deleted;
this module builds the fabric and the nodes, writes the Node objects, serves the API and
GET /lab/v1/status, and starts and stops it all. Agents run one per node inside the node
namespace, supervised like a kubelet would: one that exits is started again within a second with
the same node name and pin root.

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
from typing import Any

from controller.lab import agent_pods, dns, kubeproxy, netns, topology
from controller.lab.admission import LabAdmission, external_ports, is_host_network, pod_key, pod_ports
from controller.lab.agents import AgentSupervisor, agent_env
from controller.lab.apiserver import (
    ApiHTTPServer,
    ApiUnixServer,
    ServerThread,
    kubeconfig_text,
    tcp_listener,
)
from controller.lab.kubelet_objects import node_object, pod_status
from controller.lab.manifests import external_addresses
from controller.lab.responders import Responders
from controller.lab.state import LabPaths
from controller.lab.store import Store
from controller.lab.svc import ServiceController

log = logging.getLogger("vethguard.lab.daemon")
NODE_API_URL = f"http://{topology.API_ADDRESS}:{topology.API_PORT}"  # from inside the nodes


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
        self.admission = LabAdmission(
            self.config,
            self.store,
            self.topo,
            self.responders,
            self.services,
            self.dns.update_external if self.dns is not None else None,
        )
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
        if self.dns is not None and not fresh:  # its pod exists: answering before the API serves
            self.dns.update_external(self.store.list("externalhosts")[0])
            self.dns.start()
        self.local_api_url = f"http://127.0.0.1:{self._serve()}"
        self.paths.node_kubeconfig.write_text(kubeconfig_text(NODE_API_URL))
        self.paths.kubeconfig.write_text(kubeconfig_text(self.local_api_url))
        if self.agents is not None:
            # before any pod: a pod's vethguard-cni ADD waits for the programs its agent pins
            self.paths.pin_root.mkdir(parents=True, exist_ok=True)
            self.agents.start()
        if self.dns is not None and fresh:  # (its pod's CNI ADD waits for the agents' programs)
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
            pods[pod_key(pod)] = {
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
