"""Registration of the debug commands' parsers (bpf, get, describe, explain, observe,
reachability). Their handlers are in controller.debug.commands, the options saying where the
inputs are in controller.debug.target_options.
"""

from __future__ import annotations

from typing import Any

from controller.agent.flow_server import DEFAULT_FLOW_SOCKET
from controller.debug import calico, cnp, netpol
from controller.debug.commands import (
    cmd_bpf,
    cmd_describe,
    cmd_explain,
    cmd_get,
    cmd_observe,
    cmd_reachability,
)
from controller.debug.target_options import target_args

NETPOL_NAMES = netpol.NAMES


def register(sub: Any) -> None:
    p = sub.add_parser("bpf", help="show the BPF maps of a node, translated into pods, labels and policies")
    what = p.add_subparsers(dest="what", required=True, metavar="MAP")
    for name, desc in (
        ("endpoints", "endpoints map: veth ifindex -> pod, identity, isolation flags"),
        ("identities", "identities: pod label sets, CIDRs and reserved ones, with their pods"),
        ("ipcache", "ipcache LPM tries: prefix -> identity"),
        ("policy", "policy entries with the policy and rule that produced them and conntrack counts"),
        ("ct", "conntrack entries"),
        ("dns", "addresses pods learned from DNS answers for domainNames rules, with name and expiry"),
        ("counters", "per endpoint / reason / direction packet counters"),
        ("hosteps", "Calico host endpoints on the node's interfaces: policy sets, profiles, failsafe ports"),
    ):
        q = what.add_parser(name, help=desc, description=desc)
        if name in ("policy", "ct", "counters", "dns"):
            q.add_argument("pod", nargs="?", metavar="NS/POD", help="only this pod")
        target_args(q, ("wide", "json", "yaml") if name == "hosteps" else ("json",))
        q.set_defaults(func=cmd_bpf)

    p = sub.add_parser(
        "get",
        help="list NetworkPolicies or ClusterNetworkPolicies (cnp) like kubectl, with selected pods "
        "and realization, or Calico's GlobalNetworkPolicies (gnp), NetworkPolicies (cnetpol) and "
        "HostEndpoints (hep) like calicoctl",
    )
    p.add_argument(
        "kind",
        choices=NETPOL_NAMES + cnp.NAMES + calico.NAMES,
        metavar="netpol|cnp|gnp|cnetpol|hep",
        help="the kind to list",
    )
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    target_args(p, ("wide", "json", "yaml"), all_nodes=True)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser(
        "describe",
        help="describe NetworkPolicies or ClusterNetworkPolicies (cnp) like kubectl, plus what "
        "vethguard made of them",
    )
    p.add_argument("kind", choices=NETPOL_NAMES + cnp.NAMES, metavar="netpol|cnp", help="the kind")
    p.add_argument("name", nargs="?", help="one object (default: every one)")
    p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    target_args(p, (), all_nodes=True)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser(
        "explain",
        help="why is FROM -> TO allowed or denied: deciding policies and rules, checked in the live maps",
    )
    p.add_argument("source", metavar="FROM", help="NS/POD or an IP address")
    p.add_argument("destination", metavar="TO", help="NS/POD or an IP address")
    p.add_argument("--port", type=int, required=True, help="destination port (ICMP: type<<8|code)")
    p.add_argument(
        "--protocol",
        default="TCP",
        type=str.upper,
        choices=["TCP", "UDP", "SCTP", "ICMP", "ICMPV6"],
        help="(default: TCP)",
    )
    p.add_argument(
        "--family", type=int, choices=[4, 6], help="address family of pods (default 4, or the IP's)"
    )
    p.add_argument("--no-kernel", action="store_true", help="skip the cross-check against the live maps")
    target_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "observe", help="flow and drop events from the kernel, with the policy that decided them"
    )
    p.add_argument(
        "--pod", action="append", metavar="NS/POD", help="only flows from or to this pod (repeatable)"
    )
    p.add_argument(
        "--verdict",
        action="append",
        choices=["allowed", "denied", "audit", "log"],
        help="only these (repeatable)",
    )
    p.add_argument("--namespace", action="append", metavar="NS", help="only flows from or to pods of NS")
    p.add_argument("--policy", action="append", metavar="NS/NAME", help="only flows this policy decided")
    p.add_argument("--port", action="append", type=int, help="only flows to this port (repeatable)")
    p.add_argument(
        "--protocol",
        action="append",
        type=str.upper,
        choices=["TCP", "UDP", "SCTP", "ICMP", "ICMPV6"],
        help="only flows of this protocol (repeatable)",
    )
    p.add_argument("--since", help="only flows since: 30s, 5m, 2h ago, a unix or an ISO 8601 time")
    p.add_argument(
        "--flow-socket",
        help=f"the agent's flow socket (default {DEFAULT_FLOW_SOCKET}; --all-nodes: the agent "
        "container's $VETHGUARD_FLOW_SOCKET or that)",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new events (from now on, or from --since)",
    )
    p.add_argument("--timeout", type=float, help="with --follow: stop after this many seconds")
    p.add_argument("--count", type=int, help="stop after this many events")
    target_args(p, all_nodes=True)
    p.set_defaults(func=cmd_observe)

    p = sub.add_parser(
        "reachability", help="the pod-to-pod matrix the policies imply (--probe: and what the kernel does)"
    )
    p.add_argument("-n", "--namespace", help="only pods of this namespace (default: all)")
    p.add_argument(
        "-A", "--all-namespaces", action="store_true", help="pods of every namespace (the default)"
    )
    p.add_argument("--port", type=int, default=80, help="destination port (default: 80)")
    p.add_argument(
        "--protocol", default="TCP", type=str.upper, choices=["TCP", "UDP", "SCTP"], help="(default: TCP)"
    )
    p.add_argument("--family", type=int, choices=[4, 6], default=4, help="IP family (default: 4)")
    p.add_argument("--probe", action="store_true", help="lab only: also try every cell for real")
    p.add_argument("--probe-timeout", type=float, default=1.0, help="seconds per probed cell (default: 1.0)")
    target_args(p)
    p.set_defaults(func=cmd_reachability)
