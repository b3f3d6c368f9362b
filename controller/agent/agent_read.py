"""`vethguard agent-read flows|status`: read the agent of the node this runs on, for a reader
elsewhere. Internal: `vethguard observe|ui --all-nodes` (controller.debug.cluster_target) runs it
through pods/exec in each agent pod's `agent` container, so it runs in the node's network
namespace as the agent's user, which is what the flow socket admits (controller.agent.flow_server).

  flows   sends --request (one JSON request of the flow socket's protocol) to the flow socket
          (--flow-socket, default $VETHGUARD_FLOW_SOCKET or /run/vethguard/flows.sock) and copies
          the answer (JSON lines) to stdout until the agent closes it or the reader goes away.
  status  prints the agent's /status document (--agent HOST:PORT, default 127.0.0.1:9890).
A failure is one `error: ...` line on stderr and exit 1 (the reader shows it for the node).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from controller.agent.flow_server import DEFAULT_FLOW_SOCKET
from controller.agent.health import fetch_status
from controller.agent.loop import DEFAULT_HEALTH_ADDR
from controller.core.errors import VethguardError

CHUNK = 64 << 10


def relay_flows(path: str, request: dict[str, Any], out: int) -> None:
    """The flow socket's answer to `request`, copied to file descriptor `out` as it comes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            raise VethguardError(f"cannot connect to the agent's flow socket {path}: {exc}") from exc
        sock.sendall((json.dumps(request) + "\n").encode())
        while chunk := sock.recv(CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]


def cmd_agent_read(args: argparse.Namespace) -> int:
    if args.what == "status":
        host, _, port = args.agent.rpartition(":")
        status = fetch_status(host or "127.0.0.1", int(port))
        if status is None:
            raise VethguardError(f"the agent does not answer GET http://{args.agent}/status")
        print(json.dumps(status))
        return 0
    try:
        request = json.loads(args.request)
    except ValueError as exc:
        raise VethguardError(f"--request is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise VethguardError("--request must be a JSON object")
    sys.stdout.flush()
    relay_flows(args.flow_socket, request, sys.stdout.fileno())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent-read",
        help="(internal) read this node's agent: its flows or /status; run by observe/ui --all-nodes "
        "through pods/exec in each agent pod",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=["flows", "status"], help="the flow socket's answer, or /status")
    p.add_argument(
        "--request",
        default='{"follow": false, "history": true}',
        help="flows: the request, JSON (controller.agent.flow_server's protocol)",
    )
    p.add_argument(
        "--flow-socket",
        default=os.environ.get("VETHGUARD_FLOW_SOCKET", DEFAULT_FLOW_SOCKET),
        help=f"the agent's flow socket (default $VETHGUARD_FLOW_SOCKET or {DEFAULT_FLOW_SOCKET})",
    )
    p.add_argument(
        "--agent",
        default=DEFAULT_HEALTH_ADDR,
        help=f"status: the agent's health address (default {DEFAULT_HEALTH_ADDR})",
    )
    p.set_defaults(func=cmd_agent_read)
