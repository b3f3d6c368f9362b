"""`NodeDatapath`: what the agent needs from a node's datapath, as one typed interface.

controller.datapath.node.Datapath implements it (mypy checks that at the bottom of node.py),
and so does every test fake the agent runs against: the agent calls these methods and nothing
else, without probing which of them an object has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from controller.compiler.desired_state import NodeDesired
from controller.datapath.readback import GcResult, KernelState


class NodeDatapath(Protocol):
    # -- pod veths (from_pod on tc ingress, to_pod on tc egress); idempotent
    def attach(self, ifindex: int) -> None: ...
    def detach(self, ifindex: int) -> None: ...

    # -- node uplinks (to_uplink / from_uplink)
    def find_uplinks(self, names: Sequence[str]) -> dict[int, str]:
        """ifindex -> name of this network namespace's uplinks: `names`, or every interface with
        a route through a gateway when `names` is empty."""
        ...

    def attach_uplink(self, ifindex: int) -> None: ...
    def detach_uplink(self, ifindex: int) -> None: ...

    # -- maps
    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> object:
        """Make the maps hold `desired` for the veths of `pod_ifindex`, reading the kernel maps
        (repairs drift). Raises sync.MapFullError when a map is full (the rest is applied).
        Returns a summary for the log (its scalar fields are logged)."""
        ...

    def sync_incremental(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> object:
        """sync(), diffing against what the last sync wrote instead of the kernel maps."""
        ...

    def prepare_spares(self) -> int:
        """Idle work after a sync: give one tier profile a spare copy of itself, so that its next
        re-key writes what changed (profile_homes.py). Returns how many it made (0: none due)."""
        ...

    def capacity(self) -> Mapping[str, int]:
        """max_entries of every map whose fill level matters ({}: not known, nothing is fitted)."""
        ...

    def entry_counts(self) -> Mapping[str, int]: ...
    def counters(self) -> Mapping[tuple[int, int, int], tuple[int, int]]:
        """(ep_id, reason, dir) -> (packets, bytes)."""
        ...

    def gc_conntrack(self) -> GcResult: ...
    def sweep_links(self) -> int:
        """Remove the pins of tcx links whose interface is gone; returns how many."""
        ...

    def dump(self) -> KernelState: ...
    def close(self) -> None:
        """Release resources; attached programs and pinned maps stay."""
        ...
