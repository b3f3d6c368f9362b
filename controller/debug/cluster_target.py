"""Every node's agent on a real cluster (`--all-nodes`), reached with Kubernetes' own
authorization: pods/exec into each agent pod of the DaemonSet.

The agent serves its flows on a unix socket that admits only readers in the node's network
namespace running as root or the agent's user (controller.agent.flow_server), and its /status on
the node's 127.0.0.1: neither is reachable from another machine, by design. An exec in the agent
pod's `agent` container runs in the node's namespace (hostNetwork) as the agent's user, so it may
read both; and only who may `create pods/exec` in the agents' namespace (cluster admins, by RBAC)
can start one. So `ClusterTarget`:

  nodes()         lists the agent pods (--agent-namespace, default vethguard-system;
                  --agent-selector, default app.kubernetes.io/name=vethguard,
                  app.kubernetes.io/component=agent: deploy/uninstall.yaml's pods share the name
                  label) that have an `agent` container, one per node (spec.nodeName; a Running one
                  first, then the newest); nodes of the Node list without one are reported too.
  flow_stream()   runs `vethguard agent-read flows --request JSON` (controller.agent.agent_read)
                  there over the official client's WebSocket exec (kubernetes.stream) and yields
                  the flow socket's JSON lines from its stdout: controller.debug.flow_client's
                  ExecFeed merges them with the other nodes'.
  agent_status()  runs `vethguard agent-read status --agent ADDR` and parses its JSON.
Objects come from the API as for the local node (LocalTarget). Maps are not read across nodes:
commands that read pinned maps (bpf, explain) do not take --all-nodes.

Failures are one line per node, never a traceback: the API's refusal worded by
controller.agent.api_errors (a 403 names the missing verb and resource, plus what RBAC reading
agents needs), an agent pod that is not running, a node without an agent pod, the relay's own
error (its stderr) when it could not reach the agent. The other nodes go on.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.agent.flow_server import DEFAULT_FLOW_SOCKET
from controller.agent.kube_api import AGENT_CONTAINER, AGENT_NAMESPACE
from controller.core.errors import VethguardError
from controller.debug.inputs import REQUEST_TIMEOUT, LocalTarget, NodeRef, node_sort_key

DEFAULT_AGENT_NAMESPACE = AGENT_NAMESPACE
DEFAULT_AGENT_SELECTOR = "app.kubernetes.io/name=vethguard,app.kubernetes.io/component=agent"
RELAY = ("vethguard", "agent-read")
STREAM_TIMEOUT = 30.0  # seconds without a message (the agents tick every 0.5 s when following)
MAX_STDERR = 4096
STDOUT, STDERR, ERROR = 1, 2, 3


@dataclass(frozen=True)
class AgentPod:
    node: str
    name: str
    problem: str | None  # why it cannot be exec'd into (not running), None when it can


def _running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def choose_agent_pods(pods: Sequence[Mapping[str, Any]], namespace: str) -> dict[str, AgentPod]:
    """node -> its agent pod among `pods` (listed with the selector): those with an `agent`
    container, a Running one first, then the newest (a rolling update's)."""
    best: dict[str, Mapping[str, Any]] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node or AGENT_CONTAINER not in [c.get("name") for c in spec.get("containers") or []]:
            continue
        rank = (_running(pod), str((pod.get("metadata") or {}).get("creationTimestamp") or ""))
        if node not in best or rank > (
            _running(best[node]),
            str((best[node].get("metadata") or {}).get("creationTimestamp") or ""),
        ):
            best[node] = pod
    out = {}
    for node, pod in best.items():
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase") or "Unknown"
        problem = None if _running(pod) else f"agent pod {namespace}/{name} is {phase}, not Running"
        out[node] = AgentPod(node, name, problem)
    return out


def exec_error(exc: BaseException, namespace: str, pod: str) -> str:
    """One line for an exec the API refused or that could not be opened."""
    from controller.agent.api_errors import describe, handshake_status

    line = describe(exc) or f"{type(exc).__name__}: {exc}"
    refused = handshake_status(exc)
    status = refused[0] if refused is not None else getattr(exc, "status", None)
    if status == 403:
        line += f"; reading agents needs RBAC `create pods/exec` in namespace {namespace}"
    return f"exec in {namespace}/{pod}: {line}"


class PodExec:
    """One exec's streams (kubernetes.stream's WSClient, read frame by frame here: its own
    buffers would keep a follower's whole output): stdout as lines, stderr and the status kept
    for failure()."""

    def __init__(self, ws: Any, timeout: float = STREAM_TIMEOUT) -> None:
        self.ws = ws
        self.stderr = b""
        self.status: dict[str, Any] | None = None
        with contextlib.suppress(OSError, AttributeError):
            ws.sock.settimeout(timeout)

    def lines(self) -> Iterator[bytes]:
        from websocket import ABNF, WebSocketConnectionClosedException, WebSocketTimeoutException

        pending = b""
        while True:
            try:
                opcode, data = self.ws.sock.recv_data()
            except (WebSocketConnectionClosedException, EOFError):
                break
            except (TimeoutError, WebSocketTimeoutException) as exc:
                raise VethguardError(f"no message from the agent in {STREAM_TIMEOUT:.0f} s") from exc
            if opcode == ABNF.OPCODE_CLOSE:
                break
            if not data:
                continue
            channel, body = data[0], data[1:]
            if channel == STDOUT:
                pending += body
                *complete, pending = pending.split(b"\n")
                yield from (line for line in complete if line.strip())
            elif channel == STDERR:
                self.stderr = (self.stderr + body)[-MAX_STDERR:]
            elif channel == ERROR:
                with contextlib.suppress(ValueError):
                    self.status = json.loads(body)
        if pending.strip():
            yield pending

    def failure(self) -> str | None:
        """After lines(): why the command failed (its stderr's last line, or the Status), or None."""
        if self.status is not None and self.status.get("status") == "Success":
            return None
        said = [ln.strip() for ln in self.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        if said:
            return said[-1]
        if self.status is not None:
            return str(self.status.get("message") or "the command failed")
        return "the exec stream ended without the command's exit status"

    def close(self) -> None:
        raw = getattr(self.ws.sock, "sock", None)
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.ws.close()


class ClusterTarget(LocalTarget):
    """Every node's agent through pods/exec (see the module docstring)."""

    def __init__(
        self,
        kubeconfig: str | None,
        agent: str,
        namespace: str = DEFAULT_AGENT_NAMESPACE,
        selector: str = DEFAULT_AGENT_SELECTOR,
        flow_socket: str | None = None,
        pin_root: str = "/sys/fs/bpf/vethguard",
    ) -> None:
        super().__init__(None, pin_root, kubeconfig, agent, flow_socket or DEFAULT_FLOW_SOCKET)
        self.namespace = namespace
        self.selector = selector
        self.relay_flow_socket = flow_socket  # None: the agent container's own
        self._config: Any = None
        self._pods: dict[str, AgentPod] | None = None
        self.problems: dict[str, str] = {}  # node -> why its /status could not be read, last try

    def _api(self) -> Any:
        """A CoreV1Api on an ApiClient of its own: kubernetes.stream swaps the ApiClient's
        call_api while it opens an exec, so concurrent execs must not share one."""
        from kubernetes import client as kube

        from controller.agent.kube_api import load_api_client

        if self._config is None:
            self._config = load_api_client(self.kubeconfig).configuration
        return kube.CoreV1Api(kube.ApiClient(self._config))

    def agent_pods(self) -> dict[str, AgentPod]:
        if self._pods is None:
            api = self._api()
            resp = api.list_namespaced_pod(
                self.namespace,
                label_selector=self.selector,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            pods = choose_agent_pods(json.loads(resp.data).get("items") or [], self.namespace)
            if not pods:
                raise VethguardError(
                    f"no vethguard agent pods in namespace {self.namespace} with labels {self.selector} "
                    "and a container named agent (is the DaemonSet installed? see --agent-namespace, "
                    "--agent-selector)"
                )
            self._pods = pods
        return self._pods

    def _node_names(self) -> list[str]:
        """The Node list's names (none when it may not be listed: the agent pods tell then)."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._api().list_node(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException:
            return []
        return [str(n["metadata"]["name"]) for n in json.loads(resp.data).get("items") or []]

    def nodes(self) -> list[NodeRef]:
        pods = self.agent_pods()
        names = sorted(set(pods) | set(self._node_names()), key=node_sort_key)
        return [
            NodeRef(n, Path(self.pin_root) / n, agent_pod=pods[n].name if n in pods else None) for n in names
        ]

    def open_exec(self, node: NodeRef, argv: Sequence[str], timeout: float = STREAM_TIMEOUT) -> PodExec:
        """The relay `argv` running in `node`'s agent pod; VethguardError with one line if it cannot."""
        from kubernetes.stream import stream

        pod = self.agent_pods().get(node.name)
        if pod is None:
            raise VethguardError(
                f"no agent pod runs on {node.name} (namespace {self.namespace}, {self.selector})"
            )
        if pod.problem is not None:
            raise VethguardError(pod.problem)
        api = self._api()
        try:
            ws = stream(
                api.connect_get_namespaced_pod_exec,
                pod.name,
                self.namespace,
                container=AGENT_CONTAINER,
                command=list(argv),
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )
        except Exception as exc:
            raise VethguardError(exec_error(exc, self.namespace, pod.name)) from exc
        return PodExec(ws, timeout)

    def flow_stream(self, node: NodeRef, request: dict[str, Any]) -> PodExec:
        argv = [*RELAY, "flows", "--request", json.dumps(request, separators=(",", ":"))]
        if self.relay_flow_socket is not None:
            argv += ["--flow-socket", self.relay_flow_socket]
        return self.open_exec(node, argv)

    def agent_statuses(self, nodes: Sequence[NodeRef]) -> dict[str, dict[str, Any] | None]:
        """Every node's status at once: one exec each, in parallel (a cluster has many nodes)."""
        from concurrent.futures import ThreadPoolExecutor

        self.agent_pods()  # listed once, before the threads
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(nodes)))) as pool:
            return dict(zip([n.name for n in nodes], pool.map(self.agent_status, nodes), strict=True))

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        """The agent's /status through an exec, or None when it could not be read (why: problems)."""
        try:
            session = self.open_exec(node, [*RELAY, "status", "--agent", self.agent], timeout=REQUEST_TIMEOUT)
            try:
                out = b"".join(session.lines())
                failure = session.failure()
            finally:
                session.close()
            if failure is not None:
                raise VethguardError(failure)
            doc = json.loads(out)
        except (VethguardError, ValueError) as exc:
            if self.problems.get(node.name) != str(exc):  # said once, not at every refresh (ui)
                print(f"vethguard: {node.name}: {exc}", file=sys.stderr)
            self.problems[node.name] = str(exc)
            return None
        self.problems.pop(node.name, None)
        return doc if isinstance(doc, dict) else None
