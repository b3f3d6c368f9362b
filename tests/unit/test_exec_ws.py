"""pods/exec over WebSocket on the lab's API server (controller.lab.exec_ws, agent_pods): the
RFC 6455 framing on its own, then exec through the official client's kubernetes.stream against
the server in this process (no root: the agent pods' commands run here, not in a node's
namespace): output, exit codes, stdin with v5's close signal, and the refusals before the
upgrade (a pod that is not an agent pod, a wrong container, a missing pod, no WebSocket), and
who may exec on the TCP port (root only, by the kernel's uid of the client's socket)."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.agent.api_errors import describe
from controller.lab import agent_pods, exec_ws, local_peer
from controller.lab.apiserver import ServerThread, serve_tcp
from tests.support.lab_api import agent_store, local_exec

MASK = b"\x01\x02\x03\x04"


@pytest.fixture
def served() -> Iterator[ServerThread]:
    thread = serve_tcp(agent_store())
    thread.server.exec_runner = local_exec()
    try:
        yield thread
    finally:
        thread.stop()


def core_api(thread: ServerThread) -> Any:
    from kubernetes import client as kube

    cfg = kube.Configuration()
    address: Any = thread.server.server_address
    cfg.host = f"http://{address[0]}:{address[1]}"
    return kube.CoreV1Api(kube.ApiClient(cfg))


def run_exec(
    thread: ServerThread, command: list[str], pod: str = "vethguard-node-1", **kw: Any
) -> tuple[str, str, int]:
    """stdout, stderr and exit code of `command` exec'd in `pod` (agent container) to the end."""
    from kubernetes.stream import stream

    ns = kw.pop("namespace", agent_pods.NAMESPACE)
    ws = stream(
        core_api(thread).connect_get_namespaced_pod_exec,
        pod,
        ns,
        command=command,
        container=kw.pop("container", "agent"),
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    ws.run_forever(timeout=30)
    return ws.read_stdout(), ws.read_stderr(), ws.returncode


# --- RFC 6455 -----------------------------------------------------------------------------------


def test_the_accept_key_is_the_one_of_rfc_6455s_example() -> None:
    assert exec_ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_masked_client_frame_of_any_length_reads_back_as_sent(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    raw = exec_ws.encode_frame(exec_ws.OP_BINARY, payload, MASK)
    assert raw[1] & 0x80 and (payload == b"" or payload not in raw)  # masked on the wire
    frame = exec_ws.read_frame(io.BytesIO(raw))
    assert (frame.fin, frame.opcode, frame.payload) == (True, exec_ws.OP_BINARY, payload)


def test_server_frames_are_unmasked_and_an_unmasked_client_frame_is_a_protocol_error() -> None:
    raw = exec_ws.encode_frame(exec_ws.OP_BINARY, b"\x01hello")
    assert raw == b"\x82\x06\x01hello"
    with pytest.raises(exec_ws.ProtocolError, match="unmasked"):
        exec_ws.read_frame(io.BytesIO(raw))
    with pytest.raises(EOFError):
        exec_ws.read_frame(io.BytesIO(exec_ws.encode_frame(exec_ws.OP_BINARY, b"\x01hello", MASK)[:8]))


def test_a_fragmented_message_is_joined_and_pings_are_answered_on_the_way() -> None:
    frames = (
        exec_ws.encode_frame(exec_ws.OP_BINARY, b"\x00hel", MASK, fin=False)
        + exec_ws.encode_frame(exec_ws.OP_PING, b"are you there", MASK)
        + exec_ws.encode_frame(exec_ws.OP_CONTINUATION, b"lo", MASK)
        + exec_ws.encode_frame(exec_ws.OP_CLOSE, struct.pack("!H", 1000), MASK)
    )
    out = io.BytesIO()
    conn = exec_ws.Connection(io.BytesIO(frames), out)
    assert conn.receive() == (exec_ws.OP_BINARY, b"\x00hello")
    assert out.getvalue() == exec_ws.encode_frame(exec_ws.OP_PONG, b"are you there")
    assert conn.receive() == (exec_ws.OP_CLOSE, struct.pack("!H", 1000))


def test_a_continuation_without_a_message_and_a_long_control_frame_are_refused() -> None:
    with pytest.raises(exec_ws.ProtocolError, match="continuation"):
        exec_ws.Connection(
            io.BytesIO(exec_ws.encode_frame(exec_ws.OP_CONTINUATION, b"x", MASK)), io.BytesIO()
        ).receive()
    with pytest.raises(exec_ws.ProtocolError, match="control frame"):
        exec_ws.read_frame(io.BytesIO(exec_ws.encode_frame(exec_ws.OP_PING, b"x" * 126, MASK)))


def test_the_subprotocol_is_v5_when_offered_else_v4_else_none() -> None:
    assert exec_ws.choose_protocol(["v4.channel.k8s.io, v5.channel.k8s.io"]) == "v5.channel.k8s.io"
    assert exec_ws.choose_protocol(["v3.channel.k8s.io", "v4.channel.k8s.io"]) == "v4.channel.k8s.io"
    assert exec_ws.choose_protocol(["channel.k8s.io"]) is None


# --- exec through the official client ---------------------------------------------------------


def test_exec_in_an_agent_pod_returns_stdout_stderr_and_the_exit_code(served: ServerThread) -> None:
    out, err, code = run_exec(served, ["sh", "-c", "echo on $NODE_NAME; echo oops >&2; exit 3"])
    assert (out, err, code) == ("on node-1\n", "oops\n", 3)
    out, err, code = run_exec(served, ["sh", "-c", "echo fine"], pod="vethguard-node-2")
    assert (out, err, code) == ("fine\n", "", 0)


def test_vethguard_in_an_agent_pod_is_the_labs_own(served: ServerThread) -> None:
    out, _, code = run_exec(served, ["vethguard", "agent-read", "--help"])
    assert code == 0 and "agent-read" in out and "flow socket" in out


def test_stdin_reaches_the_command_and_v5s_close_signal_ends_it(served: ServerThread) -> None:
    from kubernetes.stream import stream

    ws = stream(
        core_api(served).connect_get_namespaced_pod_exec,
        "vethguard-node-1",
        agent_pods.NAMESPACE,
        command=["sh", "-c", "tr a-z A-Z"],
        container="agent",
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    assert ws.subprotocol == "v5.channel.k8s.io"
    ws.write_stdin("hello\n")
    ws.close_channel(0)
    ws.run_forever(timeout=30)
    assert (ws.read_stdout(), ws.returncode) == ("HELLO\n", 0)


def test_a_command_that_cannot_start_fails_on_the_status_channel(served: ServerThread) -> None:
    _, _, code = run_exec(served, ["/nonexistent/command"])
    assert code == 127


@pytest.mark.parametrize(
    ("pod", "namespace", "container", "expect"),
    [
        ("a", "x", "c", "answered 400 Bad Request: the lab runs commands only in its agent pods"),
        ("vethguard-node-1", agent_pods.NAMESPACE, "sidecar", "container sidecar is not valid for pod"),
        (
            "vethguard-node-9",
            agent_pods.NAMESPACE,
            "agent",
            'answered 404 Not Found: pods "vethguard-node-9"',
        ),
    ],
    ids=["not-an-agent-pod", "wrong-container", "no-such-pod"],
)
def test_an_exec_the_lab_refuses_is_an_http_error_worded_as_one_line(
    served: ServerThread, pod: str, namespace: str, container: str, expect: str
) -> None:
    with pytest.raises(Exception) as refused:
        run_exec(served, ["true"], pod=pod, namespace=namespace, container=container)
    line = describe(refused.value)
    assert line is not None and expect in line, line


def test_exec_without_a_websocket_upgrade_is_refused(served: ServerThread) -> None:
    address: Any = served.server.server_address
    url = (
        f"http://{address[0]}:{address[1]}/api/v1/namespaces/{agent_pods.NAMESPACE}/pods/"
        "vethguard-node-1/exec?command=true&container=agent&stdout=true"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10)
    assert refused.value.code == 400
    assert "Upgrade request required" in json.loads(refused.value.read())["message"]


def test_an_api_server_without_an_exec_runner_refuses_exec() -> None:
    thread = serve_tcp(agent_store(1))
    try:
        with pytest.raises(Exception) as refused:
            run_exec(thread, ["true"])
        assert "runs no commands (lab up --agent-pods)" in str(describe(refused.value))
    finally:
        thread.stop()


def test_agent_pods_carry_the_daemonsets_pod_labels_and_are_host_network() -> None:
    import yaml

    daemonset = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml").read_text()
    )
    assert daemonset["spec"]["template"]["metadata"]["labels"] == agent_pods.LABELS
    assert daemonset["metadata"]["namespace"] == agent_pods.NAMESPACE
    assert [c["name"] for c in daemonset["spec"]["template"]["spec"]["containers"]] == [agent_pods.CONTAINER]
    pod = agent_pods.pod_object("node-2", {"phase": "Running"})
    assert pod["spec"] == {"nodeName": "node-2", "hostNetwork": True, "containers": [{"name": "agent"}]}
    assert agent_pods.is_agent_pod(pod) and not agent_pods.is_agent_pod({"metadata": {"namespace": "x"}})
    assert sys.executable in local_exec().argv("node-2", ["vethguard", "x"])


def test_the_uid_of_a_local_tcp_client_is_the_one_the_kernel_lists_for_its_socket(tmp_path: Path) -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1\n"
    )
    (tmp_path / "tcp").write_text(table)
    six = (
        "  sl  local_address                         remote_address                        st tx_queue"
        " rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000001000000:C351 00000000000000000000000001000000:1F90 01"
        " 00000000:00000000 00:00000000 00000000   0        0 2\n"
    )
    (tmp_path / "tcp6").write_text(six)
    assert local_peer.tcp_peer_uid(("127.0.0.1", 50000), ("127.0.0.1", 8080), tmp_path) == 1000
    assert local_peer.tcp_peer_uid(("::1", 50001), ("::1", 8080), tmp_path) == 0
    assert local_peer.tcp_peer_uid(("127.0.0.1", 50002), ("127.0.0.1", 8080), tmp_path) is None
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        assert local_peer.tcp_peer_uid(client.getsockname(), listener.getsockname()) == os.getuid()


UPGRADE = (
    "GET /api/v1/namespaces/vethguard-system/pods/vethguard-node-1/exec?command=id&container=agent"
    "&stdout=true HTTP/1.1\r\nHost: lab\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
)


@pytest.mark.root
def test_a_local_user_who_is_not_root_cannot_exec_in_an_agent_pod_and_root_can(served: ServerThread) -> None:
    address: Any = served.server.server_address
    # Prints the answer's head and, if it has one, its whole body (the server may write them in
    # separate segments: one recv() can return the head alone).
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(({address[0]!r}, {address[1]}))\n"
        "s.settimeout(10)\n"
        "s.sendall(sys.stdin.read().encode())\n"
        "f = s.makefile('rb')\n"
        "head = b''\n"
        "while not head.endswith(b'\\r\\n\\r\\n') and not head.endswith(b'\\n\\n'):\n"
        "    line = f.readline()\n"
        "    if not line: break\n"
        "    head += line\n"
        "n = [int(h[15:]) for h in head.split(b'\\n') if h.lower().startswith(b'content-length:')]\n"
        "print((head + (f.read(n[0]) if n else b'')).decode(errors='replace'))\n"
    )

    def attempt(user: int) -> str:
        run = [sys.executable, "-c", code]
        return subprocess.run(
            run, input=UPGRADE, user=user, capture_output=True, text=True, timeout=30
        ).stdout

    refused = attempt(65534)  # nobody: an unprivileged local user on the lab's 127.0.0.1 port
    assert refused.startswith("HTTP/1.1 403"), refused
    assert "served only to root on this machine (the connection is uid 65534's)" in refused
    assert attempt(0).startswith("HTTP/1.1 101")  # the control: root gets the session
