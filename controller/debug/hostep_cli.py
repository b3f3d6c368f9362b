"""The debug commands' host endpoint inputs that touch the kernel or the node's interfaces:
explain's live lookup of a host endpoint and observe's names of host endpoint interfaces."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controller.compiler.clusterview import ClusterView
from controller.core.errors import VethguardError
from controller.debug import hostep, observe
from controller.debug.explain_hep import HepLiveLookup
from controller.debug.inputs import NodeRef
from controller.debug.kernel import LiveHalf, NodeMaps
from controller.debug.live_checks import OpenedNodes, open_pinned


def live_hep_lookup(
    view: ClusterView,
    nodes: dict[str, NodeRef],
    open_maps: Callable[[NodeRef], NodeMaps] = open_pinned,
    links: Callable[[NodeRef], dict[int, hostep.Link]] = lambda ref: hostep.read_links(ref.netns),
) -> tuple[HepLiveLookup, Callable[[], None]]:
    """explain's live lookup of a host endpoint: the vg_hosteps entries of the interfaces that
    carry it (by the node's interface names), each judged on the live maps; and a closer."""
    opened = OpenedNodes(nodes, open_maps)

    def live(
        node: str, name: str, direction: int, src: str, dst: str, proto: int, port: int
    ) -> list[tuple[str, LiveHalf]] | None:
        got = opened.get(node)
        if got is None:
            return None
        ref, nm = got
        ifaces = links(ref)
        placed = hostep.placement(view.desired(node), sorted(nm.hosteps()), ifaces)
        return [
            (hostep.interface_name(ifaces, i), nm.hep_verdict(i, direction, src, dst, proto, port))
            for i, n in sorted(placed.items())
            if n == name
        ]

    return live, opened.close


def observe_host_endpoints(
    view: ClusterView,
    nodes: Sequence[NodeRef],
    open_maps: Callable[[NodeRef], NodeMaps] = open_pinned,
    links: Callable[[NodeRef], dict[int, hostep.Link]] = lambda ref: hostep.read_links(ref.netns),
) -> observe.HostEndpoints:
    """(node, ifindex) -> (host endpoint or None, interface) of every vg_hosteps entry; a node
    whose maps cannot be read has none here (its events are named by address, as before)."""
    out: dict[tuple[str, int], tuple[str | None, str]] = {}
    for node in nodes:
        try:
            with open_maps(node) as nm:
                entries = sorted(nm.hosteps())
        except VethguardError:
            continue
        if not entries:
            continue
        try:
            ifaces = links(node)
        except Exception:  # named by ifindex then
            ifaces = {}
        for ifindex, name in hostep.placement(view.desired(node.name), entries, ifaces).items():
            out[(node.name, ifindex)] = (name, hostep.interface_name(ifaces, ifindex))
    return out
