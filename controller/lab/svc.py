"""The lab's Service machinery: ClusterIP/NodePort/load-balancer allocation, the EndpointSlice
controller and a kube-proxy (nftables, iptables-mode semantics) in every node namespace.

It runs inside the lab daemon's store hooks: a Service write is admitted (addresses allocated;
a LoadBalancer Service's address is written to its status.loadBalancer.ingress[0].ip, as a
cloud controller would), and every committed Pod or Service change recomputes the namespace's
EndpointSlices, writes the ones that changed through the store (so agents and clients see them
over list/watch), replaces the nftables table of every node (`nft -f`, atomic per node) and
has the fabric route every external and load-balancer address to a node (`route_addresses`).
The DNS server's hosts file follows the Services too (controller.lab.dns).

spec.externalIPs are refused (422) inside the lab's reserved ranges (controller.lab.topology:
pods, Services, the load-balancer pool, ...) and on an ExternalHost's address: the fabric routes
them to a node, which would cut that host off. An external or load-balancer address with a
port and protocol another Service already uses there is refused too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller.lab import kubeproxy, netns, topology
from controller.lab.manifests import external_addresses
from controller.lab.store import ApiError, Obj, Resource, Store

log = logging.getLogger("vethguard.lab.svc")


def _spec(obj: Obj) -> dict[str, Any]:
    spec = obj.setdefault("spec", {})
    return spec if isinstance(spec, dict) else {}


class ServiceController:
    def __init__(
        self,
        store: Store,
        node_namespaces: Callable[[], list[str]],
        on_services: Callable[[list[Obj]], None] | None = None,
        route_addresses: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.node_namespaces = node_namespaces
        self.on_services = on_services  # e.g. the DNS server's hosts file
        self.route_addresses = route_addresses  # the fabric's routes to external and LB addresses
        self.last_script = ""
        self.routed: list[str] | None = None  # None: not known yet (reconciled at the first realize)

    # --- admission ---

    def admit(self, op: str, obj: Obj, old: Obj | None) -> Obj:
        if op not in ("create", "replace"):
            return obj
        where = f"Service {obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
        spec = _spec(obj)
        try:
            kubeproxy.parse_service(obj)
            others = [
                s
                for s in self.store.list("services")[0]
                if old is None or s["metadata"]["uid"] != old["metadata"]["uid"]
            ]
            self._cluster_ip(spec, old, others)
            self._node_ports(spec, old, others)
            self._load_balancer(obj, old, others)
            self._check_external_addresses(obj, others)
        except kubeproxy.ServiceError as exc:
            raise ApiError(422, "Invalid", f"{where}: {exc}") from exc
        return obj

    @staticmethod
    def _cluster_ip(spec: dict[str, Any], old: Obj | None, others: list[Obj]) -> None:
        previous = (old or {}).get("spec", {}).get("clusterIP")
        requested = spec.get("clusterIP")
        if previous:
            if requested not in (None, "", previous):
                raise kubeproxy.ServiceError(f"spec.clusterIP is immutable ({previous})")
            address = previous
        else:
            used = [s["spec"].get("clusterIP") for s in others if s["spec"].get("clusterIP")]
            address = kubeproxy.allocate_cluster_ip(used, requested or None)
        spec["clusterIP"] = address
        spec["clusterIPs"] = [address]
        spec["ipFamilies"] = ["IPv4"]
        spec["ipFamilyPolicy"] = "SingleStack"

    @staticmethod
    def _node_ports(spec: dict[str, Any], old: Obj | None, others: list[Obj]) -> None:
        if spec.get("type") not in kubeproxy.NODE_PORT_TYPES:
            for port in spec.get("ports") or []:
                port.pop("nodePort", None)
            return
        used = {int(p["nodePort"]) for s in others for p in s["spec"].get("ports") or [] if p.get("nodePort")}
        previous = {
            (p.get("name") or "", p.get("protocol")): p.get("nodePort")
            for p in ((old or {}).get("spec") or {}).get("ports") or []
        }
        for port in spec.get("ports") or []:
            requested = port.get("nodePort") or previous.get((port.get("name") or "", port.get("protocol")))
            port["nodePort"] = kubeproxy.allocate_node_port(used, requested)
            used.add(port["nodePort"])

    @staticmethod
    def _load_balancer(obj: Obj, old: Obj | None, others: list[Obj]) -> None:
        """status.loadBalancer: one address of the lab's pool for type LoadBalancer (kept across
        replaces unless spec.loadBalancerIP asks for another), empty for the other types."""
        if obj["spec"].get("type") != "LoadBalancer":
            obj["status"] = {"loadBalancer": {}}
            return
        service = kubeproxy.parse_service(obj)
        previous = kubeproxy.parse_service(old).load_balancer_ips if old is not None else ()
        if previous and service.load_balancer_ip in (None, previous[0]):
            address = previous[0]
        else:
            used = [a for s in others for a in kubeproxy.parse_service(s).load_balancer_ips]
            address = kubeproxy.allocate_load_balancer_ip(used, service.load_balancer_ip)
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}}

    def _check_external_addresses(self, obj: Obj, others: list[Obj]) -> None:
        service = kubeproxy.parse_service(obj)
        hosts = {
            a: h["metadata"]["name"]
            for h in self.store.list("externalhosts")[0]
            for a in external_addresses(h)
        }
        for index, address in enumerate(service.external_ips):
            field = f"spec.externalIPs[{index}]"
            try:
                topology.check_external_address(address)
            except ValueError as exc:
                raise kubeproxy.ServiceError(f"{field}: {exc}") from exc
            if address in hosts:
                raise kubeproxy.ServiceError(
                    f"{field}: {address} is the address of ExternalHost {hosts[address]}"
                )
        taken = {f: s for s in map(kubeproxy.parse_service, others) for f in kubeproxy.external_frontends(s)}
        for address, protocol, port in sorted(kubeproxy.external_frontends(service) & taken.keys()):
            other = taken[(address, protocol, port)].key
            raise kubeproxy.ServiceError(
                f"{address} port {port}/{protocol} is already a frontend of Service {other}"
            )

    # --- after a commit ---

    def committed(self, resource: Resource, obj: Obj) -> None:
        if resource.plural not in ("pods", "services"):
            return
        namespace = obj["metadata"].get("namespace") or "default"
        self.reconcile_slices(namespace)
        self.realize()

    def reconcile_slices(self, namespace: str) -> None:
        if self.store.get("namespaces", "", namespace) is None:
            return  # the namespace is being deleted with everything in it
        pods = self.store.list("pods", namespace)[0]
        wanted: dict[str, Obj] = {}
        for service in self.store.list("services", namespace)[0]:
            for item in kubeproxy.endpoint_slices(service, pods):
                wanted[item["metadata"]["name"]] = item
        current = {
            s["metadata"]["name"]: s
            for s in self.store.list("endpointslices", namespace)[0]
            if (s["metadata"].get("labels") or {}).get(kubeproxy.MANAGED_BY_LABEL) == kubeproxy.MANAGED_BY
        }
        for name, item in wanted.items():
            have = current.get(name)
            if have is None:
                self.store.create("endpointslices", item, namespace)
            elif (have.get("endpoints"), have.get("ports")) != (item["endpoints"], item["ports"]):
                self.store.replace("endpointslices", item, namespace, name)
        for name in current.keys() - wanted.keys():
            self.store.delete("endpointslices", namespace, name)

    def realize(self) -> None:
        """Replace the nftables table of every node with the current Services' DNAT rules."""
        all_services = self.store.list("services")[0]
        table = kubeproxy.service_table(all_services, self.store.list("endpointslices")[0])
        script = kubeproxy.render_nft(table)
        if self.on_services is not None:
            self.on_services(all_services)
        routed = kubeproxy.routed_addresses(all_services)
        if self.route_addresses is not None and routed != self.routed:
            self.route_addresses(routed)
            self.routed = routed
        if script == self.last_script or (not table and not self.last_script):
            return  # unchanged, or still no Services (no table, so no conntrack in the nodes)
        for name in self.node_namespaces():
            apply_nft(name, script)
        self.last_script = script


def apply_nft(namespace: str, script: str) -> None:
    """Run an nft script inside a lab namespace (never the caller's)."""
    netns.run_in(namespace, ["nft", "-f", "-"], stdin=script)
