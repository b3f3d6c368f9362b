"""The flows `vethguard ui` shows: one follower thread reads every node's agent through
controller.debug.flow_client.observed (the merge `vethguard observe` prints, history first, then
follow), names host endpoints' records as observe does, and keeps the newest CAPACITY records
numbered in a FlowBuffer that the page polls (`/api/flows?after=SEQ`). When the agents cannot be
read the follower says why (shown on the page) and tries again every RETRY_SECONDS.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

from controller.agent.flows import FlowFilter
from controller.debug.inputs import Target

CAPACITY = 5000
RETRY_SECONDS = 2.0


class FlowBuffer:
    """The newest `capacity` records, numbered from 1 in arrival order; thread-safe."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._records: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()
        self.error: str | None = None
        self.following = False

    def add(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            self._records.append((self._seq, rec))

    def after(self, seq: int, flt: FlowFilter, limit: int = 500) -> tuple[int, list[dict[str, Any]]]:
        """(the newest number, the newest `limit` records after `seq` that `flt` matches, each
        with its number as "seq")."""
        with self._lock:
            last = self._seq
            picked = [{**r, "seq": n} for n, r in self._records if n > seq and flt.matches(r)]
        return last, picked[-limit:]

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"following": self.following, "received": self._seq, "error": self.error}


Records = Callable[[Target], Iterator[dict[str, Any]]]


def observed_records(target: Target) -> Iterator[dict[str, Any]]:
    """Every node's records, history then new ones, named as `vethguard observe` names them."""
    from controller.compiler.clusterview import ClusterView
    from controller.debug import flow_client, hostep_cli, observe

    flt = FlowFilter()
    request = {"follow": True, "history": True, "filter": flt.as_json()}
    view = ClusterView(target.objects())
    heps = hostep_cli.observe_host_endpoints(view, target.nodes())
    for rec in flow_client.observed(target, flt, request, None):
        yield observe.name_host_endpoint(rec, view, heps)


class Follower:
    """A daemon thread that fills `buffer` from `records(make_target())`, again after errors."""

    def __init__(
        self, make_target: Callable[[], Target], buffer: FlowBuffer, records: Records = observed_records
    ) -> None:
        self.make_target = make_target
        self.buffer = buffer
        self.records = records
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ui-flows", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.buffer.following = True
                for rec in self.records(self.make_target()):
                    self.buffer.error = None
                    self.buffer.add(rec)
                    if self._stop.is_set():
                        return
                self.buffer.error = "the agents closed their flow streams"
            except Exception as exc:  # shown on the page; tried again
                self.buffer.error = f"reading flows: {exc}"
            self.buffer.following = False
            self._stop.wait(RETRY_SECONDS)
