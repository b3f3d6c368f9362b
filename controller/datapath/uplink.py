"""The node's uplinks: where a deferred Service flow leaves the node after DNAT (pyroute2).

A pod's packet to a Service frontend is judged after kube-proxy's DNAT (bpf/lib/service.h).
When the backend lives on another node, the packet's last hook on this node is the tc egress of
the interface it leaves by, so `to_uplink` runs there. It passes every packet without our mark
untouched, so attaching it to the node's main interface costs other traffic one mark test.

Which interfaces: every interface that carries a route through a gateway (the default route,
and routes to other nodes' pod CIDRs: `via` a next hop, as with direct routing, flannel's
vxlan or Calico's IPIP), in both families, or the ones given explicitly (`--uplink`). Pod veths
have link-scope routes without a gateway, so they never qualify.

Attach and detach are those of pod veths (controller/datapath/attach.py `Attacher`, with one
filter on the egress hook): idempotent, our filter only, a clsact only if this process added it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from controller.compiler.desired_state import HostEndpointDesired
from controller.core.errors import VethguardError
from controller.datapath.attach import PARENT_EGRESS, PARENT_INGRESS, Attacher
from controller.datapath.netlink import IPRoute

UPLINK_FILTER_NAME = "vethguard-uplink"
UPLINK_INGRESS_FILTER_NAME = "vethguard-from-uplink"
RT_TABLE_MAIN = 254


def gateway_interfaces(routes: Iterable[Any]) -> set[int]:
    """ifindexes of the main-table routes that go through a gateway (pure over route messages)."""
    out: set[int] = set()
    for r in routes:
        table = r.get_attr("RTA_TABLE") or r.get("table")
        if table != RT_TABLE_MAIN:
            continue
        oif = r.get_attr("RTA_OIF")
        if oif and r.get_attr("RTA_GATEWAY"):
            out.add(int(oif))
        for hop in r.get_attr("RTA_MULTIPATH") or []:  # ECMP: each next hop has its own interface
            if hop.get("oif") and hop.get_attr("RTA_GATEWAY"):
                out.add(int(hop["oif"]))
    return out


def find_uplinks(names: Iterable[str] = ()) -> dict[int, str]:
    """ifindex -> name of the uplinks of this network namespace (the given names, else auto)."""
    wanted = [n for n in names if n]
    with IPRoute() as ipr:
        links = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        if wanted:
            by_name = {name: index for index, name in links.items()}
            missing = [n for n in wanted if n not in by_name]
            if missing:
                raise VethguardError(
                    f"--uplink: no interface named {', '.join(missing)} in this network namespace"
                )
            return {by_name[n]: n for n in wanted}
        routes = [*ipr.get_routes(family=socket.AF_INET), *ipr.get_routes(family=socket.AF_INET6)]
    return {i: links[i] for i in sorted(gateway_interfaces(routes)) if i in links}


def uplink_attacher(ledger_file: Path | None = None) -> Attacher:
    """The Attacher of to_uplink (tc egress) and from_uplink (tc ingress)."""
    return Attacher(
        names={PARENT_EGRESS: UPLINK_FILTER_NAME, PARENT_INGRESS: UPLINK_INGRESS_FILTER_NAME},
        ledger_file=ledger_file,
    )


def host_endpoint_ifindexes(hep: HostEndpointDesired, uplinks: Mapping[int, str]) -> list[int]:
    """The uplinks a host endpoint is on: its interfaceName, every uplink for "*", else the
    uplinks holding one of its expectedIPs. An interface that is not an uplink carries no
    host endpoint program, so it is left out (the agent reports host endpoints it cannot place)."""
    if hep.interface == "*":
        return sorted(uplinks)
    if hep.interface is not None:
        return [i for i, name in sorted(uplinks.items()) if name == hep.interface]
    wanted = set(hep.expected_ips)
    with IPRoute() as ipr:
        held = {int(a["index"]) for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS") in wanted}
    return sorted(i for i in uplinks if i in held)
