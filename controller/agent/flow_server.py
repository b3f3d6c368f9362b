"""The agent's flow socket: the node's flows (controller.agent.flows) for any number of readers.

Who may read. Flows reveal the cluster's traffic, and every pod can reach its node, so the
flows are served on a unix socket only (no TCP port), mode 0600 and owned by the agent's user,
and each connection is authenticated by the kernel's view of the peer, not by anything it sends:

  1. SO_PEERCRED gives the connecting process's pid and uid (as the kernel recorded them at
     connect(2); they cannot be forged).
  2. The uid must be root or the agent's own.
  3. The peer must be in the node's network namespace: one of the peer's threads
     (/proc/<pid>/task/*/ns/net) must be the namespace the agent runs in (/proc/self/ns/net,
     compared by device and inode). A process in a pod's network namespace is refused even when
     it can open the path (a pod that shares the node's filesystem, as the lab's pods do, or runs
     as root): it cannot enter the node's namespace without CAP_SYS_ADMIN over it, that is,
     without already being the node's administrator. A peer whose pid is not visible in the
     agent's PID namespace (pid 0) is refused as well.
Where the agent runs with hostNetwork (deploy/daemonset.yaml) the node's namespace is the host's;
in a lab each node's agent runs in the node's namespace, and `vethguard observe --lab` connects
from a thread that entered it. From another machine, `vethguard observe --all-nodes` reaches each
node's socket through pods/exec into the agent pod (controller.debug.cluster_target): the exec'd
relay (`vethguard agent-read flows`, controller.agent.agent_read) runs in the agent container,
i.e. in the node's namespace, as the agent's user and in its PID namespace, so it passes these
checks, and Kubernetes' RBAC (`create pods/exec` in the agents' namespace: cluster admins)
decides who may start it. Nothing here trusts the API server: the kernel's checks stay the gate.
A refused peer gets one JSON line {"_": "refused", "error": ...} and the connection is closed;
vethguard_flows_readers_total{result} counts both outcomes.

Protocol (JSON lines both ways, UTF-8): the reader sends one request
    {"follow": false, "history": true, "filter": {FlowFilter fields}}
and receives {"_": "hello", "node", "capacity", "stored", "events"}, then the kept records that
match (oldest first, aggregated: `count`, `last_time`), then {"_": "history_end", "time"}; with
follow, every matching event from then on (count 1), a {"_": "tick", "time"} when idle for
TICK_SECONDS (the reader merges nodes by time with it: its time is the store's read mark, before
which every event is in the store, not the clock, since an event stamped before a tick may still
be in the ring then) and {"_": "lost", "count"} when its own queue overflowed. Messages with "_"
are control messages; the others are flow records.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.agent.flows import FlowFilter, FlowStore
from controller.agent.metrics import Metrics
from controller.core.log import get_logger

log = get_logger("vethguard.flows")

DEFAULT_FLOW_SOCKET = "/run/vethguard/flows.sock"
TICK_SECONDS = 0.5
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 64 << 10

NetnsId = tuple[int, int]


def netns_id(path: str) -> NetnsId:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded them."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def process_netns(pid: int, proc: str = "/proc") -> set[NetnsId]:
    """The network namespaces of every thread of process `pid` (empty if it is gone)."""
    out: set[NetnsId] = set()
    try:
        tasks = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out.add(netns_id(f"{proc}/{pid}/task/{tid}/ns/net"))
    return out


def refusal(
    pid: int, uid: int, own_netns: NetnsId, own_uid: int, peer_netns: Callable[[int], set[NetnsId]]
) -> str | None:
    """Why a peer may not read the flows, or None when it may."""
    if pid <= 0:
        return "the reader's process is not visible from the agent (another PID namespace)"
    if uid not in (0, own_uid):
        return f"uid {uid} is neither root nor the agent's"
    if own_netns not in peer_netns(pid):
        return "the reader is not in the node's network namespace"
    return None


def now_text() -> str:
    return wall_text(time.time_ns())


def wall_text(wall_ns: int) -> str:
    return (
        datetime.fromtimestamp(wall_ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def mark_text(store: FlowStore) -> str:
    """The time a tick promises: no event stamped earlier is still to come from this agent (the
    store's read mark: events still in the ring are stamped later), else now."""
    mark = store.read_mark_ns
    return now_text() if mark is None else wall_text(mark)


class FlowServer:
    def __init__(
        self,
        path: str | Path,
        store: FlowStore,
        node: str,
        metrics: Metrics,
        peer_netns: Callable[[int], set[NetnsId]] = process_netns,
    ) -> None:
        self.path = Path(path)
        self.store = store
        self.node = node
        self.metrics = metrics
        self.peer_netns = peer_netns
        self.own_netns = netns_id("/proc/self/ns/net")
        self.own_uid = os.geteuid()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._accept_loop, name="flow-server", daemon=True)

    def start(self) -> FlowServer:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()  # a previous agent's
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # born 0600: no window in which others may connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        self._sock = sock
        self._thread.start()
        log.info("serving flows", socket=str(self.path))
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="flow-reader", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                pid, uid, _ = peer_credentials(conn)
                why = refusal(pid, uid, self.own_netns, self.own_uid, self.peer_netns)
                if why is not None:
                    self.metrics.flows_readers_total.labels(result="refused").inc()
                    log.warning("flow reader refused", pid=pid, uid=uid, reason=why)
                    _send(conn, {"_": "refused", "error": why})
                    _linger(conn)
                    return
                self.metrics.flows_readers_total.labels(result="served").inc()
                request = _read_request(conn)
                self._answer(conn, request)
            except (OSError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    _send(conn, {"_": "error", "error": str(exc)})

    def _answer(self, conn: socket.socket, request: dict[str, Any]) -> None:
        flt = FlowFilter.from_json(request.get("filter") or {})
        follow = bool(request.get("follow"))
        history = bool(request.get("history", True))
        store = self.store
        _send(
            conn,
            {"_": "hello", "node": self.node, "capacity": store.capacity, "stored": len(store)}
            | {"events": store.events},
        )
        if not follow:
            past = store.history(flt) if history else []
            _send_many(conn, past)
            _send(conn, {"_": "history_end", "time": mark_text(store)})
            return
        past, follower = store.follow(flt, history)
        try:
            _send_many(conn, past)
            _send(conn, {"_": "history_end", "time": mark_text(store)})
            reported = 0
            while not self._stop.is_set():
                try:
                    first = follower.queue.get(timeout=TICK_SECONDS)
                except queue.Empty:
                    _send(conn, {"_": "tick", "time": mark_text(store)})
                    continue
                batch = [first]
                with contextlib.suppress(queue.Empty):
                    while len(batch) < 1000:
                        batch.append(follower.queue.get_nowait())
                if follower.dropped != reported:
                    _send(conn, {"_": "lost", "count": follower.dropped - reported})
                    reported = follower.dropped
                _send_many(conn, batch)
        finally:
            store.unfollow(follower)


def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    conn.sendall((json.dumps(msg, separators=(",", ":")) + "\n").encode())


def _send_many(conn: socket.socket, msgs: list[dict[str, Any]]) -> None:
    if msgs:
        conn.sendall("".join(json.dumps(m, separators=(",", ":")) + "\n" for m in msgs).encode())


def _linger(conn: socket.socket) -> None:
    """Close politely: a close with the request unread would reset the connection and the
    reader could lose the answer."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


def _read_request(conn: socket.socket) -> dict[str, Any]:
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too long")
    conn.settimeout(None)
    line = data.split(b"\n", 1)[0]
    doc = json.loads(line) if line.strip() else {}
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object as the request")
    return doc
