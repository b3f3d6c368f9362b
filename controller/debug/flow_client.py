"""Where `vethguard observe` gets its records: every node's agent, merged in time order.

Each node has a feed on its own thread that puts (node, message) on one queue:
  AgentFeed  connects to the node's flow socket (controller.agent.flow_server: the protocol
             and who may read). In a lab the thread first enters the node's network namespace:
             the agent serves only readers in its node's namespace, and it checks the threads of
             the connecting process, so the thread stays there for the whole session.
  RingFeed   where no agent serves the node (no socket: an agent older than the flow socket, or
             none), reads the node's pinned ring buffer itself as observe did before. It competes
             with any other ring reader: each event goes to one of them.
  ExecFeed   --all-nodes on a cluster: the same protocol read through pods/exec in the node's
             agent pod (controller.debug.cluster_target: `vethguard agent-read flows` relays the
             flow socket there, so the agent checks the relay, not us; RBAC decides who may exec).
Merge: a record is printed once every feed has reported a later time (a record, or the agents'
ticks every 0.5 s), or when it is HOLD_SECONDS old, whichever comes first; history first.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from controller.agent.flow_server import wall_text
from controller.agent.flows import READ_MARGIN_NS, FlowFilter
from controller.compiler.clusterview import ClusterView
from controller.core.errors import VethguardError
from controller.core.verdicts import DIR_EGRESS
from controller.datapath import codecs
from controller.debug import observe
from controller.debug.cluster_target import ClusterTarget
from controller.debug.inputs import NodeRef, Target

HOLD_SECONDS = 1.0
Message = tuple[str, dict[str, Any]]


class Feed:
    """One node's records on a thread of its own, put on `out` as (node, message)."""

    def __init__(self, node: NodeRef, out: queue.Queue[Message]) -> None:
        self.node = node
        self.out = out
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"flows-{node.name}", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        raise NotImplementedError


class AgentFeed(Feed):
    def __init__(self, node: NodeRef, request: dict[str, Any], out: queue.Queue[Message]) -> None:
        super().__init__(node, out)
        self.request = request
        self._sock: socket.socket | None = None

    def close(self) -> None:
        super().close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        name = self.node.name
        try:
            if self.node.netns is not None:
                from controller.lab import netns

                netns.enter(self.node.netns)  # this thread only; it ends with the session
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._sock = sock
            with sock:
                sock.connect(str(self.node.flow_socket))
                sock.sendall((json.dumps(self.request) + "\n").encode())
                for line in sock.makefile("rb"):
                    if self._closed.is_set():
                        break
                    self.out.put((name, json.loads(line)))
        except Exception as exc:
            if not self._closed.is_set():
                self.out.put((name, {"_": "error", "error": f"{self.node.flow_socket}: {exc}"}))
        finally:
            self.out.put((name, {"_": "closed"}))


class ExecStream(Protocol):
    """A relay's output (controller.debug.cluster_target.PodExec): the flow socket's JSON lines."""

    def lines(self) -> Iterator[bytes]: ...

    def failure(self) -> str | None: ...

    def close(self) -> None: ...


class ExecFeed(Feed):
    """The node's agent through an exec stream; `connect()` opens it (VethguardError: one line)."""

    def __init__(self, node: NodeRef, connect: Callable[[], ExecStream], out: queue.Queue[Message]) -> None:
        super().__init__(node, out)
        self.connect = connect
        self._stream: ExecStream | None = None

    def close(self) -> None:
        super().close()
        if self._stream is not None:
            self._stream.close()

    def _run(self) -> None:
        name = self.node.name
        try:
            self._stream = self.connect()
            if self._closed.is_set():
                self._stream.close()
                return
            for line in self._stream.lines():
                if self._closed.is_set():
                    break
                self.out.put((name, json.loads(line)))
            failure = None if self._closed.is_set() else self._stream.failure()
            if failure is not None:
                self.out.put((name, {"_": "error", "error": failure}))
        except Exception as exc:
            if not self._closed.is_set():
                self.out.put((name, {"_": "error", "error": str(exc)}))
        finally:
            if self._stream is not None:
                self._stream.close()
            self.out.put((name, {"_": "closed"}))


class RingFeed(Feed):
    """The node's ring buffer read directly (no agent serves it), translated here."""

    def __init__(
        self,
        node: NodeRef,
        view: Callable[[codecs.Event], ClusterView],
        flt: FlowFilter,
        follow: bool,
        out: queue.Queue[Message],
    ) -> None:
        from controller.datapath.ringbuf import RingBuffer

        super().__init__(node, out)
        self.ring = RingBuffer(str(node.pin_dir / "vg_events"))
        self.view = view
        self.filter = flt
        self.follow = follow

    def _run(self) -> None:
        from controller.datapath.ringbuf import wait_any

        name = self.node.name
        offset = time.time_ns() - time.monotonic_ns()
        try:
            while not self._closed.is_set():
                mark = wall_text(time.time_ns() - READ_MARGIN_NS)  # before the read: see FlowStore
                for data in self.ring.read():
                    ev = codecs.decode_event(data, name)
                    rec = observe.record(self.view(ev), ev, offset)
                    if self.filter.matches(rec):
                        self.out.put((name, rec))
                self.out.put((name, {"_": "tick", "time": mark}))
                if not self.follow:
                    break
                wait_any([self.ring], 0.2)
        finally:
            self.ring.close()
            self.out.put((name, {"_": "closed"}))


class Merger:
    """Records of several feeds in time order (see the module docstring)."""

    def __init__(self, nodes: list[str]) -> None:
        self.marks = dict.fromkeys(nodes, "")
        self._heap: list[tuple[str, str, int, float, dict[str, Any]]] = []
        self._seq = itertools.count()
        self.errors: list[str] = []
        self.lost = 0

    @property
    def open(self) -> bool:
        return bool(self.marks)

    def add(self, node: str, msg: dict[str, Any]) -> None:
        kind = msg.get("_")
        if kind is None:
            heapq.heappush(self._heap, (str(msg["time"]), node, next(self._seq), time.monotonic(), msg))
            self.marks[node] = max(self.marks.get(node, ""), str(msg["time"]))
        elif kind in ("tick", "history_end") and node in self.marks:
            self.marks[node] = max(self.marks[node], str(msg["time"]))
        elif kind in ("refused", "error"):
            self.errors.append(f"{node}: {msg.get('error')}")
        elif kind == "lost":
            self.lost += int(msg.get("count") or 0)
        elif kind == "closed":
            self.marks.pop(node, None)

    def ready(self, flush: bool = False) -> list[dict[str, Any]]:
        """Records every open feed has passed (all of them with flush or once every feed closed)."""
        mark = min(self.marks.values()) if self.marks else None
        stale = time.monotonic() - HOLD_SECONDS
        out = []
        while self._heap:
            when, _, _, arrived, rec = self._heap[0]
            if not (flush or mark is None or when <= mark or arrived <= stale):
                break
            heapq.heappop(self._heap)
            out.append(rec)
        return out


def observed(
    target: Target, flt: Any, request: dict[str, Any], deadline: float | None
) -> Iterator[dict[str, Any]]:
    """The records of every node of `target` in time order (see the module docstring)."""
    nodes = target.nodes()
    out: queue.Queue[Message] = queue.Queue()
    feeds: list[Feed] = []
    ring_view = RingView(target)
    try:
        for node in nodes:
            if isinstance(target, ClusterTarget):
                feeds.append(ExecFeed(node, _stream_of(target, node, request), out).start())
                continue
            if node.flow_socket is not None and node.flow_socket.exists():
                feeds.append(AgentFeed(node, request, out).start())
                continue
            print(
                f"vethguard observe: no agent serves {node.name}'s flows here ({node.flow_socket}): "
                "reading its ring buffer",
                file=sys.stderr,
            )
            try:
                feed = RingFeed(node, ring_view.get, flt, bool(request["follow"]), out)
            except OSError as exc:
                raise VethguardError(f"cannot open {node.pin_dir / 'vg_events'}: {exc} (needs root)") from exc
            feeds.append(feed.start())
        merger = Merger([n.name for n in nodes])
        while merger.open:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                merger.add(*out.get(timeout=0.2 if left is None else min(0.2, left)))
                while True:
                    merger.add(*out.get_nowait())
            except queue.Empty:
                pass
            yield from merger.ready()
        yield from merger.ready(flush=True)
        for err in merger.errors:
            print(f"vethguard observe: {err}", file=sys.stderr)
        if merger.lost:
            print(
                f"vethguard observe: {merger.lost} events did not reach this reader in time", file=sys.stderr
            )
        if merger.errors and len(merger.errors) == len(nodes):
            raise VethguardError("no node's flows could be read")
    finally:
        for f in feeds:
            f.close()


def _stream_of(target: ClusterTarget, node: NodeRef, request: dict[str, Any]) -> Callable[[], ExecStream]:
    return lambda: target.flow_stream(node, request)


class RingView:
    """The view ring records are translated with, listed again (at most once a second) when an
    event names an address no pod of it has (a pod created after we listed)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.view: ClusterView | None = None
        self.refreshed = 0.0
        self._lock = threading.Lock()

    def get(self, ev: codecs.Event) -> ClusterView:
        with self._lock:
            endpoint = ev.saddr if ev.dir == DIR_EGRESS else ev.daddr
            stale = self.view is not None and self.view.pod_by_ip(endpoint) is None
            if self.view is None or (stale and time.monotonic() - self.refreshed > 1):
                self.view, self.refreshed = ClusterView(self.target.objects()), time.monotonic()
            return self.view
