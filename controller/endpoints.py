"""Find the host-side veth of every local pod in the current network namespace.

Strategy "routes" (routed CNIs: Calico, kindnet, Cilium in native routing, the vethguard lab):
the CNI installs a host route to each pod IP (/32 or /128) via the pod's host-side veth, so the
route's output interface is the veth. The pure part (`match_routes`) works on plain `Route`
records and is unit-testable; `RouteDiscovery` reads the kernel tables with pyroute2.

Bridge CNIs (flannel, bridge plugin) need another strategy (neighbour table + bridge fdb ->
bridge port); it plugs in as another `Discovery` implementation.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

RT_TABLE_MAIN = 254
RTN_UNICAST = 1


@dataclass(frozen=True)
class Route:
    """The fields of a kernel route that discovery needs."""

    dst: str  # address without prefix length ("" for a default route)
    dst_len: int
    oif: int | None  # None for multipath / unreachable routes
    table: int = RT_TABLE_MAIN
    type: int = RTN_UNICAST


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # "veth", "bridge", ... (IFLA_INFO_KIND); None when the kernel gives none


@dataclass
class Discovered:
    """Result of a discovery pass."""

    pod_ifindex: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # local pods with no host route (yet)
    conflicts: dict[str, list[int]] = field(default_factory=dict)  # pod -> distinct ifindexes seen


class Discovery(Protocol):
    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered: ...


def _host_prefix(addr: str) -> tuple[str, int] | None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return (str(ip), ip.max_prefixlen)


def match_routes(
    pod_ips: Mapping[str, Sequence[str]],
    routes: Iterable[Route],
    links: Mapping[int, Link] | None = None,
    *,
    table: int = RT_TABLE_MAIN,
) -> Discovered:
    """Map each pod to the output interface of the host route to its IPs (pure).

    Only unicast /32 and /128 routes of `table` with an output interface count. When `links` is
    given, the interface must exist and, if the kernel reports a kind, be a veth. A pod whose IPs
    route to different interfaces takes the interface most of them use (ties: the first IP's), and
    is reported in `conflicts`.
    """
    by_dst: dict[str, int] = {}
    for r in routes:
        if r.table != table or r.type != RTN_UNICAST or r.oif is None or not r.dst:
            continue
        hp = _host_prefix(r.dst)
        if hp is None or r.dst_len != hp[1]:
            continue
        if links is not None:
            link = links.get(r.oif)
            if link is None or (link.kind is not None and link.kind != "veth"):
                continue
        by_dst[hp[0]] = r.oif

    out = Discovered()
    for pod, ips in sorted(pod_ips.items()):
        found: list[int] = []
        for ip in ips:
            hp = _host_prefix(ip)
            if hp is not None and hp[0] in by_dst:
                found.append(by_dst[hp[0]])
        if not found:
            out.missing.append(pod)
            continue
        counts = Counter(found)
        best = max(counts.values())
        chosen = next(i for i in found if counts[i] == best)
        out.pod_ifindex[pod] = chosen
        if len(counts) > 1:
            out.conflicts[pod] = sorted(counts)
    return out


def _route_from_msg(msg: Any) -> Route:
    table = msg.get_attr("RTA_TABLE")
    return Route(
        dst=msg.get_attr("RTA_DST") or "",
        dst_len=int(msg["dst_len"]),
        oif=msg.get_attr("RTA_OIF"),
        table=int(table if table is not None else msg["table"]),
        type=int(msg["type"]),
    )


def _link_from_msg(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(index=int(msg["index"]), name=str(msg.get_attr("IFLA_IFNAME") or ""), kind=kind)


class RouteDiscovery:
    """Reads routes and links of the current network namespace with pyroute2 (netlink dump)."""

    def __init__(self, table: int = RT_TABLE_MAIN) -> None:
        self.table = table

    def read(self) -> tuple[list[Route], dict[int, Link]]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            routes = [
                _route_from_msg(m)
                for family in (socket.AF_INET, socket.AF_INET6)
                for m in ipr.get_routes(family=family, table=self.table)
            ]
            links = {link.index: link for link in (_link_from_msg(m) for m in ipr.get_links())}
        return routes, links

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        routes, links = self.read()
        return match_routes(pod_ips, routes, links, table=self.table)


def interface_exists(ifindex: int) -> bool:
    """Whether an interface with this index exists in the current network namespace."""
    try:
        socket.if_indextoname(ifindex)
    except OSError:
        return False
    return True
