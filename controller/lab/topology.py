"""The lab's routed (Calico-like) network, built from named network namespaces.

    vg-<lab>-ext-<name>  eth0 ──── ext<hash>  ┐
                                              vg-<lab>-fabric (routes node pod CIDRs and external
    vg-<lab>-node-<i>    eth0 ──── node<i>    ┘  addresses; API server on 10.244.0.1:6443)
         │ vg<hash> (host side, proxy ARP, fe80::1)
    vg-<lab>-pod-<ns>-<pod>  eth0 (10.244.i.k/32, fd00:10:244:i::k/128)

Every point-to-point link: the inner side routes default via 169.254.1.1 (answered by proxy ARP
on a node's interfaces, by a local address in the fabric) and via fe80::1 (an address of the
outer side). Nothing here touches the root namespace, and every address lives in 10.244.0.0/16,
fd00:10:244::/56 or 169.254.1.1, plus the addresses manifests give external hosts.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from controller.lab import netns

POD_CIDR4 = ipaddress.IPv4Network("10.244.0.0/16")
POD_CIDR6 = ipaddress.IPv6Network("fd00:10:244::/56")
API_ADDRESS = "10.244.0.1"
API_PORT = 6443
GATEWAY4 = "169.254.1.1"
GATEWAY6 = "fe80::1"
MAX_NODES = 254
MAX_PODS_PER_NODE = 253  # host indexes 2..254
RESERVED_NETWORKS = (
    POD_CIDR4,
    POD_CIDR6,
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
    """Creates and removes the namespaces and links of one lab."""

    def __init__(self, lab: str) -> None:
        self.names = LabNames(lab)

    def create_fabric(self) -> None:
        fabric = self.names.fabric
        _fresh(fabric, ROUTER_SYSCTLS)
        netns.ip_batch(
            fabric,
            [f"addr add {API_ADDRESS}/32 dev lo", f"addr add {GATEWAY4}/32 dev lo"],
        )

    def create_node(self, index: int) -> None:
        node, fabric = self.names.node(index), self.names.fabric
        _fresh(node, ROUTER_SYSCTLS)
        outer = f"node{index}"
        if _link_exists(fabric, outer):
            netns.ip(fabric, "link", "del", outer)
        netns.ip(fabric, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", node)
        address4, address6 = node_addresses(index)
        netns.ip_batch(node, _inner_side([address4], [address6]))
        netns.sysctl(node, _proxy_arp_now("eth0"))
        cidr4, cidr6 = node_cidrs(index)
        netns.ip_batch(
            fabric,
            [
                *_outer_side(outer, [address4], [address6]),
                f"route add {cidr4} via {address4} dev {outer}",
                f"route add {cidr6} via {address6} dev {outer}",
            ],
        )

    def create_pod(self, namespace: str, name: str, node: int, address4: str, address6: str) -> str:
        """Build the pod's namespace and veth; return the host-side interface name."""
        pod_ns, node_ns = self.names.pod(namespace, name), self.names.node(node)
        ifname = pod_ifname(namespace, name)
        _fresh(pod_ns, HOST_SYSCTLS)
        if _link_exists(node_ns, ifname):
            netns.ip(node_ns, "link", "del", ifname)
        netns.ip(node_ns, "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
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
