"""The lab's agent pods (`vethguard lab up --agent-pods`): the DaemonSet's pods as the API shows
them, so that clients reach every node's agent the way they do on a real cluster, through
pods/exec (`vethguard observe --all-nodes`, `kubectl exec`).

One Pod per node in namespace vethguard-system, named vethguard-<node>, with the pod labels of
deploy/daemonset.yaml, spec.nodeName, hostNetwork, one container `agent`, status Running with the
node's addresses. The lab made them, so they are read-only (a write is refused 405), and they get
nothing of a pod's network (a host-network pod with no ports: no responders).

Exec (`AgentExec`, the API server's exec runner): only in these pods' `agent` container; the
command runs in the node's network namespace as root, where the lab runs the node's agent, with
the agent's environment plus what its container would set: NODE_NAME and VETHGUARD_FLOW_SOCKET
(the node's flow socket in the lab; on a cluster the agent's default). `vethguard` as the
command is the lab's own (its interpreter and code, as its agents run it), whatever is on PATH.
Any other pod: 400 naming the pods that can be exec'd. Off by default, so the lab contract's
pod lists and the conformance models see no extra pods.

Who may exec: the lab models no RBAC, so exec is served only to this machine's root: on the
lab's unix socket (mode 0600) and on its 127.0.0.1 port to a client whose socket the kernel
lists as root's (controller.lab.local_peer: any local user can reach that port, and the command
runs as root), never on the fabric address (10.244.0.1:6443) that the lab's nodes and pods
reach: neither a lab pod nor an unprivileged user on this machine can exec their way into a node.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from controller.agent.kube_api import AGENT_CONTAINER, AGENT_NAMESPACE
from controller.lab.store import ApiError

NAMESPACE = AGENT_NAMESPACE
CONTAINER = AGENT_CONTAINER
# deploy/daemonset.yaml's pod template labels (tests/unit/test_cluster_observe.py compares them)
LABELS = {
    "app.kubernetes.io/name": "vethguard",
    "app.kubernetes.io/instance": "vethguard",
    "app.kubernetes.io/component": "agent",
    "app.kubernetes.io/part-of": "vethguard",
    "app.kubernetes.io/version": "0.1.0",
}
MANAGED = "lab.vethguard.dev/agent-pod"  # annotation: made by the lab, read-only

Obj = dict[str, Any]


def pod_name(node: str) -> str:
    return f"vethguard-{node}"


def namespace_object() -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def pod_object(node: str, status: Obj) -> Obj:
    """The agent pod of `node` with `status` (the daemon's pod_status with the node's addresses)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(node),
            "namespace": NAMESPACE,
            "labels": dict(LABELS),
            "annotations": {MANAGED: "true"},
        },
        "spec": {"nodeName": node, "hostNetwork": True, "containers": [{"name": CONTAINER}]},
        "status": status,
    }


def is_agent_pod(pod: Obj | None) -> bool:
    meta = (pod or {}).get("metadata") or {}
    return meta.get("namespace") == NAMESPACE and (meta.get("annotations") or {}).get(MANAGED) == "true"


def refuse_write(pod: Obj) -> ApiError:
    meta = pod["metadata"]
    return ApiError(
        405,
        "MethodNotAllowed",
        f"pod {meta['namespace']}/{meta['name']} is the lab's agent pod (lab up --agent-pods): read-only",
    )


class AgentExec:
    """The lab API server's exec runner (controller.lab.exec_ws.ExecRunner): see the module docstring.

    node_netns(node) -> the node's network namespace name (None: run here, for tests without
    root); env(node) -> the environment of that node's agent."""

    def __init__(self, node_netns: Callable[[str], str | None], env: Callable[[str], dict[str, str]]) -> None:
        self.node_netns = node_netns
        self.env = env

    def argv(self, node: str, command: list[str]) -> list[str]:
        if command[0] == "vethguard":
            command = [sys.executable, "-m", "controller.cli", *command[1:]]
        netns = self.node_netns(node)
        if netns is None:
            return command
        from controller.lab.netns import netns_path

        return ["nsenter", f"--net={netns_path(netns)}", "--", *command]

    def check(self, pod: Obj, container: str) -> None:
        meta = pod["metadata"]
        if not is_agent_pod(pod):
            raise ApiError(
                400,
                "BadRequest",
                f"the lab runs commands only in its agent pods ({NAMESPACE}/vethguard-<node>, container "
                f"{CONTAINER}, lab up --agent-pods), not in {meta['namespace']}/{meta['name']}",
            )

    def start(self, pod: Obj, container: str, command: list[str], stdin: bool) -> subprocess.Popen[bytes]:
        self.check(pod, container)
        node = pod["spec"]["nodeName"]
        return subprocess.Popen(
            self.argv(node, command),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the session ends the whole group when the client goes
            cwd="/",
            env=self.env(node) | {"NODE_NAME": node},  # as the DaemonSet sets it
        )
