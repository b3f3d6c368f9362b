"""The interfaces of the agent loop's inputs other than the datapath (that one is
controller.datapath.interface.NodeDatapath): the informers and the netlink link watch."""

from __future__ import annotations

import queue
from typing import Protocol

from controller.agent.cluster_events import Event, Snapshot


class SourcesLike(Protocol):
    """controller.agent.informers.Sources: the caches of every watched kind and their events."""

    events: queue.Queue[Event]

    def start(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def has_synced(self) -> bool: ...
    def snapshot(self) -> Snapshot: ...
    def resource_versions(self) -> dict[str, str]:
        """kind -> the last resourceVersion its informer saw (/status `resource_versions`)."""
        ...


class LinkWatchLike(Protocol):
    """controller.agent.linkwatch.LinkWatch: new veths as netlink reports them."""

    def start(self) -> object: ...
    def stop(self) -> None: ...
    def new_veths(self) -> dict[int, float]: ...
    def appeared_at(self, ifindex: int) -> float | None: ...
