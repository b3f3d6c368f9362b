"""Find the host-side veth of every local pod in the current network namespace.

Two strategies, chosen per pod by `NodeDiscovery` (what the agent uses):

route (routed CNIs: Calico, kindnet, Cilium in native routing, the lab's `--cni routed`): the CNI
installs a host route to each pod IP (/32 or /128) via the pod's host-side veth, so the route's
output interface is the veth (`match_routes`).

bridge (flannel's cni0, the bridge plugin, the lab's `--cni bridge`): pod IPs are on-link behind a
bridge, there is no per-pod route. The pod's MAC comes from the node's neighbour table on the
bridge (pod IP -> MAC), the port from the bridge FDB (MAC -> port ifindex; learned entries only,
never the permanent entries of the node's own interfaces) (`match_bridge`). A pod with a host
route to a veth uses the route strategy; every other pod the bridge strategy.

The agent cannot exec into pods, so it relies on frames the pod sent: a neighbour entry exists once
the pod and the node exchanged a packet, an FDB entry while the pod sent a frame within the
bridge's ageing time (300 s by default). So:
- a binding found once (IPs, MAC, port) is remembered while the port is still a veth of a bridge
  and no fresh evidence contradicts it (the MAC learned on another port, or the pod's IPs
  changed), so an idle pod keeps its port after its FDB entry aged out;
- when a local pod is still unknown and some veth port of a bridge is unclaimed, the node
  triggers resolution: one empty UDP datagram (discard port 9) from this namespace to each of
  the pod's IPs, at most once per `probe_interval` per IP. Sending makes the kernel resolve the
  address (ARP / neighbour solicitation, or a unicast to a stale MAC that the bridge floods); the
  pod's answer teaches the bridge its port. Discovery then re-reads the tables for up to
  `probe_wait` seconds. No traffic is sent when nothing is unknown;
- fail closed: veth ports that no pod claims, of a bridge whose subnet holds local pods (cni0,
  not a docker0 beside the CNI), are reported in `Discovered.unclaimed`;
  the agent attaches its programs to them with a PENDING endpoint (IP traffic dropped; ARP/ND
  pass, so the pod's MAC can still be learned) until their pod is known.
A port that two pods' addresses resolve to (a stale or spoofed neighbour entry) is given to
neither: both are reported in `conflicts` and the port stays unclaimed (pending).

The pure parts (`match_routes`, `pod_bridges`, `match_bridge`, `probe_targets`) work on plain records and are
unit-tested; `NodeTables.read` reads the kernel with pyroute2.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.agent.veth_match import (
    PROBE_PORT,
    RT_TABLE_MAIN,
    Discovered,
    FdbEntry,
    Link,
    Neighbour,
    PortBinding,
    Route,
    bridge_ports,
    match_bridge,
    match_routes,
    merge,
    pod_bridges,
    pod_key_ips,
    probe_targets,
)
from controller.datapath import rtnl

# rtnetlink attribute numbers (linux/if_link.h, rtnetlink.h, neighbour.h)
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
RTA_DST = 1
RTA_OIF = 4
RTA_TABLE = 15
NDA_DST = 1
NDA_LLADDR = 2
NDA_MASTER = 9


def route_from_msg(msg: rtnl.Message) -> Route:
    _family, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = rtnl.RTMSG.unpack(msg.header)
    attrs = msg.attributes()
    rta_table = rtnl.as_u32(attrs.get(RTA_TABLE))
    return Route(
        dst=rtnl.as_ip(attrs.get(RTA_DST)) or "",
        dst_len=dst_len,
        oif=rtnl.as_u32(attrs.get(RTA_OIF)),
        table=rta_table if rta_table is not None else table,
        type=rtype,
    )


def link_from_msg(msg: rtnl.Message) -> Link:
    _family, _type, index, _flags, _change = rtnl.IFINFOMSG.unpack(msg.header)
    attrs = msg.attributes()
    info = attrs.get(IFLA_LINKINFO)
    master = rtnl.as_u32(attrs.get(IFLA_MASTER))
    return Link(
        index=index,
        name=rtnl.as_str(attrs.get(IFLA_IFNAME)) or "",
        kind=rtnl.as_str(rtnl.parse_attrs(info).get(IFLA_INFO_KIND)) if info is not None else None,
        master=master or None,
        address=rtnl.as_mac(attrs.get(IFLA_ADDRESS)),
    )


def neighbour_from_msg(msg: rtnl.Message) -> Neighbour | None:
    _family, ifindex, state, _flags, _type = rtnl.NDMSG.unpack(msg.header)
    attrs = msg.attributes()
    dst = rtnl.as_ip(attrs.get(NDA_DST))
    if not dst:
        return None
    return Neighbour(dst, ifindex, rtnl.as_mac(attrs.get(NDA_LLADDR)), state)


def fdb_from_msg(msg: rtnl.Message) -> FdbEntry | None:
    _family, ifindex, state, _flags, _type = rtnl.NDMSG.unpack(msg.header)
    attrs = msg.attributes()
    mac = rtnl.as_mac(attrs.get(NDA_LLADDR))
    if not mac:
        return None
    master = rtnl.as_u32(attrs.get(NDA_MASTER))
    return FdbEntry(mac, ifindex, master or None, state)


def read_routes_links(nl: rtnl.Rtnl, table: int) -> tuple[list[Route], dict[int, Link]]:
    routes = [
        r
        for family in (socket.AF_INET, socket.AF_INET6)
        for r in (route_from_msg(m) for m in nl.routes(family))
        if r.table == table
    ]
    links = {link.index: link for link in (link_from_msg(m) for m in nl.links())}
    return routes, links


class RouteDiscovery:
    """Reads routes and links of the current network namespace (rtnetlink dumps)."""

    def __init__(self, table: int = RT_TABLE_MAIN) -> None:
        self.table = table

    def read(self) -> tuple[list[Route], dict[int, Link]]:
        with rtnl.Rtnl() as nl:
            return read_routes_links(nl, self.table)

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        routes, links = self.read()
        return match_routes(pod_ips, routes, links, table=self.table)


@dataclass
class NodeTables:
    """What discovery reads from the kernel: routes and links, and (only when needed) the
    neighbour table and the bridge FDB."""

    routes: list[Route] = field(default_factory=list)
    links: dict[int, Link] = field(default_factory=dict)
    neighbours: list[Neighbour] = field(default_factory=list)
    fdb: list[FdbEntry] = field(default_factory=list)


class TableReader(Protocol):
    def read(self, neighbours: bool) -> NodeTables: ...
    def read_bridge(self) -> tuple[list[Neighbour], list[FdbEntry]]: ...


class NetlinkReader:
    """Reads the current network namespace with rtnetlink dumps (controller.datapath.rtnl: a few
    attributes decoded straight from the bytes; pyroute2 took ~45 ms for 20 pods' tables)."""

    def __init__(self, table: int = RT_TABLE_MAIN) -> None:
        self.table = table

    def read(self, neighbours: bool) -> NodeTables:
        with rtnl.Rtnl() as nl:
            tables = NodeTables(*read_routes_links(nl, self.table))
            if neighbours:
                tables.neighbours, tables.fdb = self._bridge(nl)
        return tables

    def read_bridge(self) -> tuple[list[Neighbour], list[FdbEntry]]:
        with rtnl.Rtnl() as nl:
            return self._bridge(nl)

    @staticmethod
    def _bridge(nl: rtnl.Rtnl) -> tuple[list[Neighbour], list[FdbEntry]]:
        neighbours = [
            n
            for family in (socket.AF_INET, socket.AF_INET6)
            for n in (neighbour_from_msg(m) for m in nl.neighbours(family))
            if n is not None
        ]
        fdb = [e for e in (fdb_from_msg(m) for m in nl.neighbours(socket.AF_BRIDGE)) if e]
        return neighbours, fdb


def send_probes(addresses: Iterable[str]) -> None:
    """One empty UDP datagram to the discard port of each address, from this namespace: the
    kernel resolves the address first (ARP / ND), and the answer teaches the bridge the port."""
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.sendto(b"", (address, PROBE_PORT))


class NodeDiscovery:
    """Route strategy for pods with a host route to a veth, bridge strategy for the others
    (module docstring). Keeps the bridge bindings it found between passes."""

    def __init__(
        self,
        table: int = RT_TABLE_MAIN,
        *,
        probe: bool = True,
        probe_interval: float = 1.0,
        probe_wait: float = 0.3,
        reader: TableReader | None = None,
        prober: Callable[[list[str]], None] = send_probes,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        self.probe = probe
        self.probe_interval = probe_interval
        self.probe_wait = probe_wait
        self.reader: TableReader = reader or NetlinkReader(table)
        self.prober = prober
        self.clock = clock
        self.sleep = sleep
        self.memory: dict[str, PortBinding] = {}
        self._last_probe: dict[str, float] = {}
        self.probes_sent = 0

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        first = self.reader.read(neighbours=False)
        route = match_routes(pod_ips, first.routes, first.links, table=self.table)
        if not bridge_ports(first.links):  # no bridge with veth ports: routed node, done
            self.memory.clear()
            return route
        rest = {pod: pod_ips[pod] for pod in route.missing}
        carrying = pod_bridges(pod_ips, first.routes, first.links)
        neighbours, fdb = self.reader.read_bridge()
        found = merge(route, match_bridge(rest, neighbours, fdb, first.links, self.memory, carrying))
        targets = self._targets(found, pod_ips) if self.probe else []
        if targets:
            self.prober(targets)
            self.probes_sent += len(targets)
            found = self._wait_for(targets, route, rest, first.links, carrying)
        self.memory = dict(found.bindings)
        self._last_probe = {ip: t for ip, t in self._last_probe.items() if self.clock() - t < 60}
        return found

    def _targets(self, found: Discovered, pod_ips: Mapping[str, Sequence[str]]) -> list[str]:
        now = self.clock()
        targets = probe_targets(found, pod_ips, self._last_probe, now, self.probe_interval)
        for ip in targets:
            self._last_probe[ip] = now
        return targets

    def _wait_for(
        self,
        targets: list[str],
        route: Discovered,
        rest: Mapping[str, Sequence[str]],
        links: Mapping[int, Link],
        carrying: set[int],
    ) -> Discovered:
        """Re-read the bridge tables until the probed pods are found or probe_wait passed."""
        deadline = self.clock() + self.probe_wait
        probed = set(targets)
        while True:
            self.sleep(0.02)
            neighbours, fdb = self.reader.read_bridge()
            found = merge(route, match_bridge(rest, neighbours, fdb, links, self.memory, carrying))
            waiting = [p for p in found.missing if probed & set(pod_key_ips(rest.get(p, ())))]
            if not waiting or self.clock() >= deadline:
                return found


def interface_exists(ifindex: int) -> bool:
    """Whether an interface with this index exists in the current network namespace."""
    try:
        socket.if_indextoname(ifindex)
    except OSError:
        return False
    return True
