"""The "where" options every debug command takes (--lab, --node, --pin-root, --kubeconfig, --agent;
--all-nodes for the commands that read agents) and the Target they make
(controller.debug.inputs, controller.debug.cluster_target)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from controller.agent.flow_server import DEFAULT_FLOW_SOCKET
from controller.core.errors import VethguardError
from controller.debug.cluster_target import DEFAULT_AGENT_NAMESPACE, DEFAULT_AGENT_SELECTOR, ClusterTarget
from controller.debug.inputs import DEFAULT_AGENT, DEFAULT_PIN_ROOT, LabTarget, LocalTarget, Target


def target_args(
    p: argparse.ArgumentParser, output: Sequence[str] = ("json",), all_nodes: bool = False
) -> None:
    """The options saying where the inputs are; `all_nodes`: the command reads agents (not maps),
    so it takes --all-nodes (controller.debug.cluster_target)."""
    g = p.add_argument_group("where")
    g.add_argument("--lab", metavar="NAME", help="act on every node of this lab instead of the local node")
    g.add_argument(
        "--node", metavar="NAME", help="node name (local: default $NODE_NAME or the hostname; lab: one node)"
    )
    g.add_argument(
        "--pin-root",
        default=DEFAULT_PIN_ROOT,
        help=f"bpffs directory of the agent (default {DEFAULT_PIN_ROOT})",
    )
    g.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    g.add_argument(
        "--agent",
        default=DEFAULT_AGENT,
        help=f"the agent's status address on its node (default {DEFAULT_AGENT})",
    )
    if all_nodes:
        g.add_argument(
            "--all-nodes",
            action="store_true",
            help="with the kubeconfig's cluster: read every node's agent through pods/exec in its "
            "agent pod (needs RBAC create pods/exec in --agent-namespace)",
        )
        g.add_argument(
            "--agent-namespace",
            default=DEFAULT_AGENT_NAMESPACE,
            help=f"--all-nodes: the agents' namespace (default {DEFAULT_AGENT_NAMESPACE})",
        )
        g.add_argument(
            "--agent-selector",
            default=DEFAULT_AGENT_SELECTOR,
            help=f"--all-nodes: the agent pods' label selector (default {DEFAULT_AGENT_SELECTOR})",
        )
    if output:  # describe prints text only, as kubectl's does (get -o json|yaml has the data)
        p.add_argument("-o", "--output", choices=list(output), help="output format")


def make_target(args: argparse.Namespace) -> Target:
    if getattr(args, "all_nodes", False):
        if args.lab or args.node:
            raise VethguardError("--all-nodes reads a cluster's agents: it takes no --lab or --node")
        return ClusterTarget(
            args.kubeconfig,
            args.agent,
            args.agent_namespace,
            args.agent_selector,
            getattr(args, "flow_socket", None),
            args.pin_root,
        )
    if args.lab:
        return LabTarget(args.lab, args.node)
    return LocalTarget(
        args.node,
        args.pin_root,
        args.kubeconfig,
        args.agent,
        getattr(args, "flow_socket", None) or DEFAULT_FLOW_SOCKET,
    )
