"""The lab's network, built from named network namespaces, in one of two pod-networking modes.

    vg-<lab>-ext-<name>  eth0 ──── ext<hash>  ┐
                                              vg-<lab>-fabric (routes node pod CIDRs and external
    vg-<lab>-node-<i>    eth0 ──── node<i>    ┘  addresses; API server on 10.244.0.1:6443)
         │ vg<hash> (host side of the pod's veth)
    vg-<lab>-pod-<ns>-<pod>  eth0

routed (default; Calico/kindnet-like): the node holds 10.244.i.1/32 and fd00:10:244:i::1/128 on
its eth0; each pod has 10.244.i.k/32 and fd00:10:244:i::k/128, the node a host route to each pod
IP via the pod's veth (proxy ARP, fe80::1 on the host side).

bridge (flannel-like): the node's bridge `cni0` holds the gateway addresses 10.244.i.1/24 and
fd00:10:244:i::1/64 and a fixed MAC; every pod's host-side veth is a port of it; pods have on-link
10.244.i.k/24 and fd00:10:244:i::k/64 and default routes via 10.244.i.1 / fd00:10:244:i::1. There
are no per-pod routes, so the agent finds a pod's veth through the neighbour table and the bridge
FDB (controller.agent.discovery). Pod-to-pod traffic on one node is bridged (it still crosses both veths'
tc hooks); cross-node and external traffic is routed by the node. Bridge netfilter stays out of
the way: the bridge's nf_call_* options are off and, when the kernel has br_netfilter (module or
built in), the node namespace's net.bridge.bridge-nf-call-* sysctls are set to 0; no module is
loaded. The node's eth0 then has no global address: the fabric reaches the node's addresses
(on cni0) through fe80::2 on the node's eth0 and IPv4 ARP for 10.244.i.1 (answered for any local
address). Like the CNI bridge plugin, a new pod sends a gratuitous ARP for its IPv4 address, so a
reused address never stays bound to a deleted pod's MAC in the node's neighbour table.

Service external and load-balancer addresses (controller.lab.svc): the fabric routes each one
to node-1 (`route_service_addresses`; routes marked with protocol SERVICE_ROUTE_PROTO so the lab
finds its own again after a restart), as a cloud load balancer in front of the nodes would; every
node DNATs them (controller.lab.kubeproxy), so the first node is as good as any.

Every point-to-point link: the inner side routes default via 169.254.1.1 (answered by proxy ARP
on a node's interfaces, by a local address in the fabric) and via fe80::1 (an address of the
outer side). Nothing here touches the root namespace, and every address lives in 10.244.0.0/16,
fd00:10:244::/56 or 169.254.1.1, plus the addresses manifests give external hosts (and the
fabric's routes to Service addresses in 10.245.0.0/16, 10.246.0.0/24 and spec.externalIPs).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from controller.lab import netns
from controller.lab.kubeproxy import LB_POOL4, SERVICE_CIDR4

POD_CIDR4 = ipaddress.IPv4Network("10.244.0.0/16")
POD_CIDR6 = ipaddress.IPv6Network("fd00:10:244::/56")
API_ADDRESS = "10.244.0.1"
API_PORT = 6443
GATEWAY4 = "169.254.1.1"
GATEWAY6 = "fe80::1"
CNI_MODES = ("routed", "bridge")
BRIDGE = "cni0"
NODE_LINK_LOCAL6 = "fe80::2"  # bridge mode: the fabric's IPv6 next hop to a node (its eth0)
NODE_PREFIX4, NODE_PREFIX6 = 24, 64  # a node's pod networks; on-link for bridge-mode pods
ANNOUNCE_PORT = 9  # discard: the datagram a new bridge-mode pod sends to its gateway
MAX_NODES = 254
MAX_PODS_PER_NODE = 253  # host indexes 2..254
SERVICE_ROUTE_PROTO = "118"  # the fabric's routes to Service external and load-balancer addresses
SERVICE_ROUTE_NODE = 1  # the node the fabric sends them to
RESERVED_NETWORKS = (
    POD_CIDR4,
    POD_CIDR6,
    SERVICE_CIDR4,  # ClusterIPs (controller.lab.kubeproxy)
    LB_POOL4,  # load-balancer addresses of type LoadBalancer Services
    ipaddress.IPv4Network("169.254.0.0/16"),
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv4Network("0.0.0.0/8"),
    ipaddress.IPv4Network("224.0.0.0/3"),
    ipaddress.IPv6Network("fe80::/10"),
    ipaddress.IPv6Network("ff00::/8"),
    ipaddress.IPv6Network("::/127"),
)

ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.default.forwarding": "1",
    "net.ipv4.conf.default.proxy_arp": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
HOST_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
# Present only when the kernel has br_netfilter (module loaded or built in); per namespace since 5.3.
BRIDGE_NF_SYSCTLS = (
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
)


def node_name(index: int) -> str:
    return f"node-{index}"


def node_index(name: str) -> int | None:
    prefix, _, number = name.rpartition("-")
    if prefix != "node" or not number.isdigit():
        return None
    return int(number)


def node_addresses(index: int) -> tuple[str, str]:
    return f"10.244.{index}.1", f"fd00:10:244:{index:x}::1"


def node_cidrs(index: int) -> tuple[str, str]:
    return f"10.244.{index}.0/24", f"fd00:10:244:{index:x}::/64"


def pod_addresses(index: int, host: int) -> tuple[str, str]:
    return f"10.244.{index}.{host}", f"fd00:10:244:{index:x}::{host:x}"


def short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def pod_ifname(namespace: str, pod: str) -> str:
    """The host-side veth name of a pod: 12 characters, stable for (namespace, name)."""
    return "vg" + short_hash(f"{namespace}/{pod}")


def ext_ifname(name: str) -> str:
    return "ext" + short_hash(name, 8)


def check_external_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address") from exc
    for network in RESERVED_NETWORKS:
        if address.version == network.version and address in network:
            raise ValueError(f"{address} is inside {network}, which the lab uses itself")
    return address


@dataclass(frozen=True)
class LabNames:
    """Namespace names of one lab: everything is `vg-<lab>-...`."""

    lab: str

    @property
    def prefix(self) -> str:
        return f"vg-{self.lab}-"

    @property
    def fabric(self) -> str:
        return f"vg-{self.lab}-fabric"

    def node(self, index: int) -> str:
        return f"vg-{self.lab}-node-{index}"

    def pod(self, namespace: str, name: str) -> str:
        return f"vg-{self.lab}-pod-{namespace}-{name}"

    def ext(self, name: str) -> str:
        return f"vg-{self.lab}-ext-{name}"

    def owned(self) -> list[str]:
        """Every existing namespace of this lab (lab names contain no '-', so the prefix is exact)."""
        return [n for n in netns.list_names() if n.startswith(self.prefix)]


def _fresh(name: str, sysctls: dict[str, str]) -> None:
    netns.delete(name)
    netns.add(name)
    netns.sysctl(name, sysctls)
    netns.ip(name, "link", "set", "lo", "up")


def _inner_side(address4: list[str], address6: list[str]) -> list[str]:
    """`ip` commands for the inner end (eth0) of a point-to-point link."""
    commands = [f"addr add {a}/32 dev eth0" for a in address4]
    commands += [f"addr add {a}/128 dev eth0 nodad" for a in address6]
    commands += [
        "link set eth0 up",
        f"route add {GATEWAY4} dev eth0 scope link",
        f"route add default via {GATEWAY4} dev eth0",
        f"route add default via {GATEWAY6} dev eth0",
    ]
    return commands


def _outer_side(ifname: str, address4: list[str], address6: list[str]) -> list[str]:
    """`ip` commands for the outer end: link-local gateway and host routes to the inner addresses."""
    commands = [f"link set {ifname} up", f"addr add {GATEWAY6}/64 dev {ifname} nodad"]
    commands += [f"route add {a}/32 dev {ifname} scope link" for a in address4]
    commands += [f"route add {a}/128 dev {ifname}" for a in address6]
    return commands


class Topology:
    """Creates and removes the namespaces and links of one lab (pod networking: `cni`)."""

    def __init__(self, lab: str, cni: str = "routed") -> None:
        if cni not in CNI_MODES:
            raise ValueError(f"unknown pod networking {cni!r} (one of {', '.join(CNI_MODES)})")
        self.names = LabNames(lab)
        self.cni = cni

    def create_fabric(self) -> None:
        fabric = self.names.fabric
        _fresh(fabric, ROUTER_SYSCTLS)
        netns.ip_batch(
            fabric,
            [f"addr add {API_ADDRESS}/32 dev lo", f"addr add {GATEWAY4}/32 dev lo"],
        )

    def route_service_addresses(self, addresses: list[str]) -> None:
        """The fabric routes exactly these addresses (/32) to node SERVICE_ROUTE_NODE."""
        fabric, node = self.names.fabric, SERVICE_ROUTE_NODE
        shown = netns.ip(fabric, "-4", "-j", "route", "show", "proto", SERVICE_ROUTE_PROTO)
        current = {str(route["dst"]).removesuffix("/32") for route in json.loads(shown or "[]")}
        commands = [f"route del {a}/32 proto {SERVICE_ROUTE_PROTO}" for a in sorted(current - set(addresses))]
        commands += [
            f"route replace {a}/32 via {node_addresses(node)[0]} dev node{node} proto {SERVICE_ROUTE_PROTO}"
            for a in addresses
        ]
        if commands:
            netns.ip_batch(fabric, commands)

    def create_node(self, index: int) -> None:
        node, fabric = self.names.node(index), self.names.fabric
        _fresh(node, ROUTER_SYSCTLS)
        outer = f"node{index}"
        if _link_exists(fabric, outer):
            netns.ip(fabric, "link", "del", outer)
        netns.ip(fabric, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", node)
        address4, address6 = node_addresses(index)
        cidr4, cidr6 = node_cidrs(index)
        if self.cni == "bridge":
            self._create_bridge(index)
            netns.ip_batch(node, [f"addr add {NODE_LINK_LOCAL6}/64 dev eth0 nodad", *_inner_side([], [])])
            # the node's addresses live on cni0: IPv4 ARP for them is answered on eth0 anyway
            # (arp_ignore 0), IPv6 needs an address of eth0 itself as the next hop
            fabric_routes = [
                f"route add {address4}/32 dev {outer} scope link",
                f"route add {cidr4} via {address4} dev {outer}",
                f"route add {cidr6} via {NODE_LINK_LOCAL6} dev {outer}",
            ]
            netns.ip_batch(fabric, [*_outer_side(outer, [], []), *fabric_routes])
        else:
            netns.ip_batch(node, _inner_side([address4], [address6]))
            netns.ip_batch(
                fabric,
                [
                    *_outer_side(outer, [address4], [address6]),
                    f"route add {cidr4} via {address4} dev {outer}",
                    f"route add {cidr6} via {address6} dev {outer}",
                ],
            )
        netns.sysctl(node, _proxy_arp_now("eth0"))

    def _create_bridge(self, index: int) -> None:
        """cni0 with the node's gateway addresses, a fixed MAC (a bridge otherwise takes the
        lowest port MAC, which changes as pods come and go) and bridge netfilter off."""
        node = self.names.node(index)
        address4, address6 = node_addresses(index)
        netns.ip_batch(
            node,
            [
                f"link add {BRIDGE} address {bridge_mac(index)} type bridge forward_delay 0 "
                "mcast_snooping 0 nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0",
                f"addr add {address4}/{NODE_PREFIX4} dev {BRIDGE}",
                f"addr add {address6}/{NODE_PREFIX6} dev {BRIDGE} nodad",
                f"link set {BRIDGE} up",
            ],
        )
        netns.sysctl(node, {f"net.ipv4.conf.{BRIDGE}.proxy_arp": "0"})
        present = [key for key in BRIDGE_NF_SYSCTLS if _kernel_has_sysctl(key)]
        if present:
            netns.sysctl(node, dict.fromkeys(present, "0"))

    def create_pod(self, namespace: str, name: str, node: int, address4: str, address6: str) -> str:
        """Build the pod's namespace and veth; return the host-side interface name."""
        pod_ns, node_ns = self.names.pod(namespace, name), self.names.node(node)
        ifname = pod_ifname(namespace, name)
        _fresh(pod_ns, HOST_SYSCTLS)
        if _link_exists(node_ns, ifname):
            netns.ip(node_ns, "link", "del", ifname)
        netns.ip(node_ns, "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
        if self.cni == "bridge":
            netns.ip_batch(node_ns, [f"link set {ifname} master {BRIDGE}", f"link set {ifname} up"])
            netns.ip_batch(pod_ns, _bridged_pod_side(node, address4, address6))
            _wait_forwarding(node_ns, ifname)
            announce(pod_ns, node)
            return ifname
        netns.ip_batch(pod_ns, _inner_side([address4], [address6]))
        netns.ip_batch(node_ns, _outer_side(ifname, [address4], [address6]))
        netns.sysctl(node_ns, _proxy_arp_now(ifname))
        return ifname

    def delete_pod(self, namespace: str, name: str) -> None:
        netns.delete(self.names.pod(namespace, name))  # the veth and its routes go with it

    def create_external(self, name: str, addresses: list[str]) -> None:
        ext_ns, fabric = self.names.ext(name), self.names.fabric
        outer = ext_ifname(name)
        address4 = [a for a in addresses if ":" not in a]
        address6 = [a for a in addresses if ":" in a]
        _fresh(ext_ns, HOST_SYSCTLS)
        if _link_exists(fabric, outer):
            netns.ip(fabric, "link", "del", outer)
        netns.ip(fabric, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ext_ns)
        netns.ip_batch(ext_ns, _inner_side(address4, address6))
        netns.ip_batch(fabric, _outer_side(outer, address4, address6))

    def delete_external(self, name: str) -> None:
        netns.delete(self.names.ext(name))

    def delete_all(self) -> list[str]:
        removed = []
        for name in self.names.owned():
            netns.delete(name)
            removed.append(name)
        return removed


def bridge_mac(index: int) -> str:
    """cni0's MAC on node `index`: locally administered, 02:76:67 ("vg"), then the node index."""
    return f"02:76:67:00:{index >> 8:02x}:{index & 0xFF:02x}"


def _bridged_pod_side(node: int, address4: str, address6: str) -> list[str]:
    """`ip` commands for a bridge-mode pod's eth0: on-link addresses, defaults via cni0."""
    gateway4, gateway6 = node_addresses(node)
    return [
        f"addr add {address4}/{NODE_PREFIX4} dev eth0",
        f"addr add {address6}/{NODE_PREFIX6} dev eth0 nodad",
        "link set eth0 up",
        f"route add default via {gateway4} dev eth0",
        f"route add default via {gateway6} dev eth0",
    ]


def _wait_forwarding(node_ns: str, ifname: str, timeout: float = 2.0) -> None:
    """Wait until the bridge forwards on the pod's port (carrier changes are handled
    asynchronously by the kernel), so the pod's first frames are not lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = netns.run_bridge(node_ns, "-j", "link", "show", "dev", ifname)
        try:
            ports = json.loads(out or "[]")
        except ValueError:
            ports = []
        if any(port.get("state") == "forwarding" for port in ports):
            return
        time.sleep(0.01)


def announce(pod_ns: str, node: int) -> None:
    """The pod's first packets: one UDP datagram to its gateway per family (discard port). Its ARP
    request / neighbour solicitation puts the pod's MAC into the node's neighbour table (created or
    overridden: a reused address must not keep a deleted pod's MAC) and the bridge learns it on
    the pod's port. The CNI bridge plugin sends a gratuitous ARP for the same reason."""
    gateways = node_addresses(node)

    def send() -> None:
        for family, gateway in ((socket.AF_INET, gateways[0]), (socket.AF_INET6, gateways[1])):
            with socket.socket(family, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
                sock.sendto(b"", (gateway, ANNOUNCE_PORT))

    netns.run_in_netns(pod_ns, send)


def _kernel_has_sysctl(key: str) -> bool:
    """Whether the kernel knows this sysctl (read in our own namespace: only its existence)."""
    return Path("/proc/sys", *key.split(".")).exists()


def _proxy_arp_now(ifname: str) -> dict[str, str]:
    """Answer proxy ARP at once (the default waits up to 0.8 s); per interface: a lab namespace
    has no neigh/default sysctls."""
    return {f"net.ipv4.conf.{ifname}.proxy_arp": "1", f"net.ipv4.neigh.{ifname}.proxy_delay": "0"}


def _link_exists(namespace: str, ifname: str) -> bool:
    try:
        netns.ip(namespace, "link", "show", "dev", ifname)
    except netns.NetnsError:
        return False
    return True
