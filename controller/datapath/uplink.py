"""The node's uplinks: where a deferred Service flow leaves the node after DNAT (pyroute2).

A pod's packet to a Service frontend is judged after kube-proxy's DNAT (bpf/lib/service.h).
When the backend lives on another node, the packet's last hook on this node is the tc egress of
the interface it leaves by, so `to_uplink` runs there. It passes every packet without our mark
untouched, so attaching it to the node's main interface costs other traffic one mark test.

Which interfaces: every interface that carries a route through a gateway (the default route,
and routes to other nodes' pod CIDRs: `via` a next hop, as with direct routing, flannel's
vxlan or Calico's IPIP), in both families, or the ones given explicitly (`--uplink`). Pod veths
have link-scope routes without a gateway, so they never qualify.

Attach is idempotent: clsact is added only when absent and the filter is replaced on a fixed
handle and priority, the same as for pod veths; detach removes our filter only, and the clsact
only if this process added it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.datapath.attach import EEXIST, EINVAL, ENOENT, FILTER_HANDLE, FILTER_PRIO, PARENT_EGRESS
from controller.errors import VethguardError

UPLINK_FILTER_NAME = "vethguard-uplink"
_PARENT_EGRESS_ID = 0xFFFFFFF3
_PARENT_INGRESS_ID = 0xFFFFFFF2
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


@dataclass
class UplinkAttacher:
    created_clsact: set[int] = field(default_factory=set)

    def attach(self, ifindex: int, prog_fd: int) -> None:
        with IPRoute() as ipr:
            try:
                if not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex)):
                    try:
                        ipr.tc("add", "clsact", ifindex)
                        self.created_clsact.add(ifindex)
                    except NetlinkError as e:
                        if e.code != EEXIST:
                            raise
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    ifindex,
                    f":{FILTER_HANDLE}",
                    fd=prog_fd,
                    name=UPLINK_FILTER_NAME,
                    parent=PARENT_EGRESS,
                    classid=1,
                    direct_action=True,
                    prio=FILTER_PRIO,
                )
            except NetlinkError as e:
                raise VethguardError(f"cannot attach the uplink filter to ifindex {ifindex}: {e}") from e

    def attached(self, ifindex: int) -> bool:
        with IPRoute() as ipr:
            try:
                return bool(self._ours(ipr, ifindex))
            except NetlinkError:
                return False

    def _ours(self, ipr: Any, ifindex: int) -> list[Any]:
        out = []
        for f in ipr.get_filters(index=ifindex, parent=_PARENT_EGRESS_ID):
            opts = f.get_attr("TCA_OPTIONS")
            ours = f["handle"] == FILTER_HANDLE and (f["info"] >> 16) == FILTER_PRIO and opts
            if ours and opts.get_attr("TCA_BPF_NAME") == UPLINK_FILTER_NAME:
                out.append(f)
        return out

    def detach(self, ifindex: int) -> None:
        with IPRoute() as ipr:
            try:
                if self._ours(ipr, ifindex):
                    ipr.tc(
                        "del-filter",
                        "bpf",
                        ifindex,
                        f":{FILTER_HANDLE}",
                        parent=PARENT_EGRESS,
                        prio=FILTER_PRIO,
                    )
            except NetlinkError as e:
                if e.code not in (ENOENT, EINVAL):
                    raise VethguardError(
                        f"cannot remove the uplink filter from ifindex {ifindex}: {e}"
                    ) from e
                return
            if ifindex in self.created_clsact:
                self.created_clsact.discard(ifindex)
                remaining = [
                    f
                    for parent in (_PARENT_EGRESS_ID, _PARENT_INGRESS_ID)
                    for f in ipr.get_filters(index=ifindex, parent=parent)
                    if f.get_attr("TCA_OPTIONS")
                ]
                if not remaining:  # we created it and nobody else uses it
                    try:
                        ipr.tc("del", "clsact", ifindex)
                    except NetlinkError as e:
                        if e.code not in (ENOENT, EINVAL):
                            raise
