"""The compiler's entry point: desired map contents of one node from the cluster model."""

from __future__ import annotations

from controller.compiler.desired_state import NodeDesired
from controller.compiler.model import ClusterState
from controller.compiler.policy import compile_cluster


def compute(cluster: ClusterState, node: str) -> NodeDesired:
    """Desired map contents for `node`: its endpoints (active pods on it with an IP), the
    ipcache and the rule/identity tables. Pure; node-independent work is cached on `cluster`,
    so computing every node of one ClusterState costs little more than one."""
    return compile_cluster(cluster).node_desired(node)
