"""What the debug commands check the compiled view against on the live system: the agents'
statuses and whether they realized what the API lists (agents_behind), explain's lookups in a
node's pinned maps (live_lookup), and real probes between lab pods (probe_pods)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from controller.agent.realization import differing_kinds
from controller.compiler.clusterview import ClusterView
from controller.core.errors import VethguardError
from controller.datapath.dns_codecs import LearnedEntry
from controller.debug.inputs import LabTarget, NodeRef, Target
from controller.debug.kernel import LiveHalf, NodeMaps


def agent_statuses(target: Target, nodes: Sequence[NodeRef]) -> dict[str, dict[str, Any] | None]:
    return target.agent_statuses(nodes)


def agents_behind(view: ClusterView, agents: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """node -> why its maps may not reflect what the API listed just now: the agent does not
    answer, or the state it realized differs from the list for some kinds (compared by digest,
    controller.agent.realization: it has not caught up yet, or the API changed since the list)."""
    out = {}
    for node, status in agents.items():
        if status is None:
            out[node] = f"the agent of {node} does not answer /status"
            continue
        kinds = differing_kinds(view.raw.digests, status)
        if kinds:
            out[node] = (
                f"the agent of {node} realized other {', '.join(kinds)} objects than the API lists now: "
                "not caught up yet (or the API changed since the list)"
            )
    return out


def open_pinned(ref: NodeRef) -> NodeMaps:
    return NodeMaps(ref.pin_dir)


class OpenedNodes:
    """The pinned maps of `nodes`, each opened on first use; a node not among them is not
    visible from here (another machine's)."""

    def __init__(self, nodes: dict[str, NodeRef], open_maps: Callable[[NodeRef], NodeMaps] = open_pinned):
        self.nodes = nodes
        self.open_maps = open_maps
        self.opened: dict[str, NodeMaps] = {}

    def get(self, node: str) -> tuple[NodeRef, NodeMaps] | None:
        ref = self.nodes.get(node)
        if ref is None:
            return None
        nm = self.opened.get(node)
        if nm is None:
            nm = self.opened[node] = self.open_maps(ref)
        return ref, nm

    def close(self) -> None:
        for nm in self.opened.values():
            nm.close()


def live_lookup(
    nodes: dict[str, NodeRef], open_maps: Callable[[NodeRef], NodeMaps] = open_pinned
) -> tuple[Callable[[str, str, int, str, int, int], LiveHalf | None], Callable[[], None]]:
    """explain's live lookup over the maps of `nodes` (opened on first use), and a closer."""
    opened = OpenedNodes(nodes, open_maps)

    def live(node: str, ep_ip: str, direction: int, peer: str, proto: int, port: int) -> LiveHalf | None:
        got = opened.get(node)
        if got is None:
            return None  # another node's maps are not visible from here
        ref, nm = got
        ep = nm.endpoint_by_ip(ep_ip)
        if ep is None:
            raise VethguardError(f"no endpoint entry for {ep_ip} in {ref.pin_dir}/vg_endpoints")
        return nm.verdict(ep, direction, peer, proto, port)

    return live, opened.close


def learned_lookup(
    nodes: dict[str, NodeRef], open_maps: Callable[[NodeRef], NodeMaps] = open_pinned
) -> tuple[Callable[[str, str, str], LearnedEntry | None], Callable[[], None]]:
    """explain's read of what a pod learned from DNS (vg_dns_learned of its node: None when it
    learned nothing; LookupError when that node's maps are not visible from here), and a closer."""
    opened = OpenedNodes(nodes, open_maps)

    def learned(node: str, ep_ip: str, peer: str) -> LearnedEntry | None:
        got = opened.get(node)
        if got is None:
            raise LookupError(f"the maps of {node} are not visible from here")
        ep = got[1].endpoint_by_ip(ep_ip)
        return None if ep is None else got[1].learned().lookup(ep.ep_id, peer)

    return learned, opened.close


def probe_pods(
    target: LabTarget, pods: Sequence[str], port: int, protocol: str, family: int, timeout: float
) -> dict[tuple[str, str], bool]:
    from controller.lab import probe

    status = target.lab_status()["pods"]
    targets = [probe.Target(p, status[p]["netns"], tuple(status[p]["ips"])) for p in pods if p in status]
    results = probe.run(targets, targets, protocol, port, family, timeout)
    return {(r.source, r.destination): r.connected for r in results}
