"""`observe --all-nodes` on a cluster (controller.debug.cluster_target, flow_client.ExecFeed):
every node's agent read through pods/exec in its agent pod, against the lab's API server in this
process (the agent pods' commands run here: `vethguard agent-read` relays a fake flow socket or
/status); the merge of exec streams in time order; and every failure as one line per node while
the other nodes still stream (403 on pods/exec, an agent that cannot be reached, a pod that is
not running, no agent pods)."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from controller.debug import flow_client
from controller.debug.cluster_target import ClusterTarget, choose_agent_pods
from controller.debug.inputs import NodeRef
from controller.lab import agent_pods
from controller.lab.apiserver import ServerThread, kubeconfig_text, serve_tcp
from controller.lab.store import ApiError
from tests.support.flows import flow_rec
from tests.support.lab_api import agent_store, local_exec

EXEC_FORBIDDEN = (
    'pods "{pod}" is forbidden: User "dev" cannot create resource "pods/exec" in API group "" in the '
    'namespace "vethguard-system"'
)


@contextlib.contextmanager
def flow_socket(path: Path, messages: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """A unix socket at `path` answering every request with `messages` (as the agent's flow
    socket answers a request without follow); yields the requests it got."""
    requests: list[dict[str, Any]] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                requests.append(json.loads(conn.makefile("rb").readline()))
                conn.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield requests
    finally:
        server.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    """A two-node cluster with agent pods on the lab API server; node-1's agent serves flows at
    tmp/node-1.sock, node-2's socket is missing. Yields the server and a kubeconfig."""
    thread = serve_tcp(agent_store())
    sockets = {n: {"VETHGUARD_FLOW_SOCKET": str(tmp_path / f"{n}.sock")} for n in ("node-1", "node-2")}
    thread.server.exec_runner = local_exec(sockets)
    address: Any = thread.server.server_address
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(f"http://{address[0]}:{address[1]}"))
    try:
        yield thread, kubeconfig
    finally:
        thread.stop()


def observe_all(
    capsys: pytest.CaptureFixture[str], kubeconfig: Path, *args: str
) -> tuple[int, list[Any], str]:
    capsys.readouterr()
    rc = main(["observe", "--kubeconfig", str(kubeconfig), "--all-nodes", "-o", "json", *args])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def test_observe_all_nodes_reads_each_agent_through_exec_and_reports_the_one_it_cannot_reach(
    cluster: tuple[ServerThread, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = cluster
    kept = [flow_rec(1_700_000_000.0), flow_rec(1_700_000_001.0, verdict="allowed", policy=None)]
    answer = [{"_": "hello", "node": "node-1"}, *kept, {"_": "history_end", "time": "2030-01-01T00:00:00Z"}]
    with flow_socket(tmp_path / "node-1.sock", answer) as requests:
        rc, records, err = observe_all(capsys, kubeconfig, "--verdict", "denied")
    assert rc == 0 and records == kept  # the relay copies the agent's records as they are
    assert requests == [{"follow": False, "history": True, "filter": requests[0]["filter"]}]
    assert requests[0]["filter"]["verdicts"] == ["denied"]  # the filter reached the agent
    assert err == (
        "vethguard observe: node-2: error: cannot connect to the agent's flow socket "
        f"{tmp_path}/node-2.sock: [Errno 2] No such file or directory\n"
    )


def test_a_403_on_pods_exec_is_one_line_per_node_naming_the_verb_resource_and_rbac_needed(
    cluster: tuple[ServerThread, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    thread, kubeconfig = cluster

    def forbid(method: str, path: str) -> ApiError | None:
        pod = path.split("/")[-2]
        return ApiError(403, "Forbidden", EXEC_FORBIDDEN.format(pod=pod)) if path.endswith("/exec") else None

    thread.server.fault = forbid
    rc, records, err = observe_all(capsys, kubeconfig)
    assert rc == 1 and records == []
    lines = err.splitlines()
    assert lines[-1] == "error: no node's flows could be read"
    for node, line in zip(("node-1", "node-2"), sorted(lines[:-1]), strict=True):  # any order: a thread each
        pod = f"vethguard-{node}"
        assert line == (
            f"vethguard observe: {node}: exec in vethguard-system/{pod}: the API server answered 403 "
            f"Forbidden: {EXEC_FORBIDDEN.format(pod=pod)} (the user lacks an RBAC permission (kubectl auth "
            "can-i ...)); reading agents needs RBAC `create pods/exec` in namespace vethguard-system"
        )
    assert "Traceback" not in err


def test_an_agent_pod_that_is_not_running_is_reported_and_the_other_node_still_streams(
    cluster: tuple[ServerThread, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thread, kubeconfig = cluster
    store = thread.server.store
    pod = store.get("pods", agent_pods.NAMESPACE, "vethguard-node-2")
    assert pod is not None
    pod["status"] = {"phase": "Pending"}
    store.replace("pods", pod)
    kept = [flow_rec(1_700_000_000.0)]
    with flow_socket(tmp_path / "node-1.sock", [*kept, {"_": "history_end", "time": "2030-01-01T00:00:00Z"}]):
        rc, records, err = observe_all(capsys, kubeconfig)
    assert (rc, records) == (0, kept)
    assert (
        err
        == "vethguard observe: node-2: agent pod vethguard-system/vethguard-node-2 is Pending, not Running\n"
    )


def test_no_agent_pods_is_an_error_naming_the_namespace_and_selector(
    cluster: tuple[ServerThread, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = cluster
    rc, _, err = observe_all(capsys, kubeconfig, "--agent-namespace", "elsewhere")
    assert rc == 1 and err == (
        "error: no vethguard agent pods in namespace elsewhere with labels app.kubernetes.io/name=vethguard,"
        "app.kubernetes.io/component=agent and a container named agent (is the DaemonSet installed? see "
        "--agent-namespace, --agent-selector)\n"
    )


class StatusHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"ready": True, "realized_generation": 7}).encode()
        self.send_response(200 if self.path == "/status" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_agent_status_is_read_through_exec_and_a_failure_is_said_once(
    cluster: tuple[ServerThread, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = cluster
    http = ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        target = ClusterTarget(str(kubeconfig), f"127.0.0.1:{http.server_address[1]}")
        nodes = target.nodes()
        assert [(n.name, n.agent_pod) for n in nodes] == [
            ("node-1", "vethguard-node-1"),
            ("node-2", "vethguard-node-2"),
        ]
        assert target.agent_status(nodes[0]) == {"ready": True, "realized_generation": 7}
    finally:
        http.shutdown()
        http.server_close()
    capsys.readouterr()
    for _ in range(2):
        assert target.agent_status(nodes[1]) is None
    err = capsys.readouterr().err
    assert err == f"vethguard: node-2: error: the agent does not answer GET http://{target.agent}/status\n"


# --- the merge, with fake exec streams ---------------------------------------------------------


class FakeStream:
    def __init__(self, messages: list[dict[str, Any]], failure: str | None = None) -> None:
        self.messages = messages
        self._failure = failure
        self.closed = False

    def lines(self) -> Iterator[bytes]:
        yield from (json.dumps(m).encode() for m in self.messages)

    def failure(self) -> str | None:
        return self._failure

    def close(self) -> None:
        self.closed = True


class FakeCluster(ClusterTarget):
    def __init__(self, streams: dict[str, FakeStream]) -> None:
        super().__init__(None, "127.0.0.1:9890")
        self.streams = streams

    def nodes(self) -> list[NodeRef]:
        return [NodeRef(n, Path("/nonexistent") / n, agent_pod=f"vethguard-{n}") for n in self.streams]

    def flow_stream(self, node: NodeRef, request: dict[str, Any]) -> Any:
        return self.streams[node.name]


def test_exec_streams_of_all_nodes_merge_in_time_order_and_a_failed_node_is_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = 1_700_000_000.0
    one = [flow_rec(t0 + i, node="node-1", sport=i) for i in (0, 2, 4)]
    two = [flow_rec(t0 + i, node="node-2", sport=i) for i in (1, 3)]
    end = {"_": "history_end", "time": "2030-01-01T00:00:00.000Z"}
    streams = {
        "node-1": FakeStream([{"_": "hello"}, *one, end]),
        "node-2": FakeStream([*two, {"_": "lost", "count": 2}, end]),
        "node-3": FakeStream([], failure="error: cannot connect to the agent's flow socket"),
    }
    got = list(flow_client.observed(FakeCluster(streams), None, {"follow": False}, None))
    assert [r["sport"] for r in got] == [0, 1, 2, 3, 4]
    assert [r["node"] for r in got] == ["node-1", "node-2", "node-1", "node-2", "node-1"]
    assert all(s.closed for s in streams.values())
    assert capsys.readouterr().err == (
        "vethguard observe: node-3: error: cannot connect to the agent's flow socket\n"
        "vethguard observe: 2 events did not reach this reader in time\n"
    )


def test_a_closed_exec_feed_stops_without_reporting_an_error() -> None:
    out: queue.Queue[flow_client.Message] = queue.Queue()
    opened = threading.Event()
    release = threading.Event()

    class Blocking(FakeStream):
        def lines(self) -> Iterator[bytes]:
            opened.set()
            release.wait(5)
            raise OSError("the connection was shut down")

    stream = Blocking([])
    feed = flow_client.ExecFeed(NodeRef("node-1", Path("/x")), lambda: stream, out).start()
    assert opened.wait(5)
    feed.close()
    release.set()
    assert out.get(timeout=5) == ("node-1", {"_": "closed"}) and stream.closed


def test_the_agent_pod_of_a_node_is_a_running_one_with_an_agent_container_the_newest_first() -> None:
    def pod(name: str, node: str, phase: str, created: str, container: str = "agent") -> dict[str, Any]:
        return {
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": [{"name": container}]},
            "status": {"phase": phase},
        }

    chosen = choose_agent_pods(
        [
            pod("old", "n1", "Running", "2024-01-01T00:00:00Z"),
            pod("new", "n1", "Running", "2024-02-01T00:00:00Z"),
            pod("starting", "n1", "Pending", "2024-03-01T00:00:00Z"),
            pod("uninstall", "n2", "Running", "2024-01-01T00:00:00Z", container="uninstall"),
            pod("pending", "n3", "Pending", "2024-01-01T00:00:00Z"),
        ],
        "ns",
    )
    assert {n: (p.name, p.problem) for n, p in chosen.items()} == {
        "n1": ("new", None),
        "n3": ("pending", "agent pod ns/pending is Pending, not Running"),
    }
