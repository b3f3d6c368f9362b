"""`vethguard lab ...`: build a namespace cluster, change it, probe it, tear it down.

The contract is DESIGN.md "Lab contract". The CLI talks (through controller.lab.client) to the lab daemon over
/run/vethguard/labs/<lab>/api.sock with the Kubernetes API (writes) and /lab/v1/status; probes
and exec run from the CLI process itself, inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
from typing import Any

from controller.core import programs
from controller.core.errors import VethguardError
from controller.lab import dns, netns, probe, topology
from controller.lab import manifests as manifest_io
from controller.lab.client import (
    LabClient,
    apply_manifests,
    connect,
    delete_manifests,
    exec_netns,
    start_daemon,
    teardown,
    wait_realized,
)
from controller.lab.state import (
    BOOKMARK_INTERVAL,
    LabConfig,
    LabPaths,
    check_name,
)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _fail_if(errors: list[str]) -> None:
    if errors:
        raise VethguardError("\n".join(errors))


# --- commands -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    lab = check_name(args.name)
    paths = LabPaths(lab)
    models = manifest_io.load(args.file)
    if not 1 <= args.nodes <= topology.MAX_NODES:
        raise VethguardError(f"--nodes must be between 1 and {topology.MAX_NODES}")
    if paths.root.exists() or topology.LabNames(lab).owned():
        raise VethguardError(f"lab {lab!r} already exists (remove it with: vethguard lab down --name {lab})")
    require_lab_programs(dns=args.dns)
    paths.write_config(
        LabConfig(
            lab,
            args.nodes,
            args.cni,
            agents=not args.no_agents,
            dns=args.dns,
            bookmark_interval=args.bookmark_interval,
            agent_pods=args.agent_pods,
        )
    )
    try:
        start_daemon(paths)
        client = LabClient(paths)
        rv, errors = apply_manifests(client, models, quiet=True)
        _fail_if(errors)
        wait_realized(client, max(rv, client.status()["resourceVersion"]), args.timeout)
        status = client.status()
    except BaseException:
        teardown(lab)
        raise
    print(
        f"lab {lab} is up: {len(status['nodes'])} node(s), {len(status['pods'])} pod(s), "
        f"{len(status['externals'])} external host(s); API {status['api']['url']} in the lab, "
        f"{status['api'].get('localUrl')} here (kubectl --kubeconfig {status['api']['kubeconfig']})"
    )
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    models = manifest_io.load([args.file])
    client = connect(args.name)
    rv, errors = apply_manifests(client, models)
    if rv:
        wait_realized(client, rv, args.timeout)
    _fail_if(errors)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    models = manifest_io.load([args.file])
    client = connect(args.name)
    rv, errors = delete_manifests(client, models, args.ignore_not_found)
    if rv:
        wait_realized(client, rv, args.timeout)
    _fail_if(errors)
    return 0


def _targets(status: dict[str, Any]) -> dict[str, probe.Target]:
    targets = {
        name: probe.Target(name, pod["netns"], tuple(pod["ips"]))
        for name, pod in sorted(status["pods"].items())
    }
    for name, ext in sorted(status["externals"].items()):
        targets[f"ext/{name}"] = probe.Target(f"ext/{name}", ext["netns"], tuple(ext["ips"]))
    for name, svc in sorted((status.get("services") or {}).items()):
        if svc.get("clusterIP"):  # the netns of a Service is never used: it is only a destination
            targets[f"svc/{name}"] = probe.Target(f"svc/{name}", "", (svc["clusterIP"],))
        if svc.get("loadBalancerIP"):  # type LoadBalancer: its address in the lab's pool
            targets[f"lb/{name}"] = probe.Target(f"lb/{name}", "", (svc["loadBalancerIP"],))
    return targets


def _address_targets(names: list[str] | None) -> dict[str, probe.Target]:
    """Destinations given as plain addresses (a node address with a NodePort, a ClusterIP)."""
    found = {}
    for name in names or []:
        with contextlib.suppress(ValueError):
            found[name] = probe.Target(name, "", (str(ipaddress.ip_address(name)),))
    return found


def _pick(
    targets: dict[str, probe.Target], names: list[str] | None, default: list[str]
) -> list[probe.Target]:
    chosen = names or default
    unknown = [n for n in chosen if n not in targets]
    if unknown:
        raise VethguardError(
            f"unknown probe endpoint(s) {', '.join(unknown)}; known: {', '.join(targets) or 'none'}"
        )
    return [targets[n] for n in dict.fromkeys(chosen)]


def cmd_probe(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise VethguardError("--port must be between 1 and 65535")
    status = connect(args.name).status()
    targets = _targets(status)
    pods = sorted(status["pods"])
    sources = _pick(targets, args.sources, pods)
    defaults = [t for t in targets if not t.startswith(("svc/", "lb/"))]  # Services only when named
    destinations = _pick({**targets, **_address_targets(args.destinations)}, args.destinations, defaults)
    results = probe.run(sources, destinations, args.protocol, args.port, args.family, args.timeout)
    if args.output == "json":
        doc = {
            "port": args.port,
            "protocol": args.protocol,
            "family": args.family,
            "results": [{"from": r.source, "to": r.destination, "connected": r.connected} for r in results],
        }
        print(json.dumps(doc))
    else:
        title = f"{args.protocol}/{args.port} IPv{args.family}"
        print(probe.matrix_text(results, [s.name for s in sources], [d.name for d in destinations], title))
    return 0


def _status_text(status: dict[str, Any]) -> str:
    lines = [f"lab {status['name']} (cni {status['cni']}, resourceVersion {status['resourceVersion']})"]
    lines.append(
        f"API: {status['api']['url']} in the lab, {status['api'].get('localUrl')} here  "
        f"kubeconfig: {status['api']['kubeconfig']}"
    )
    lines.append("NODES")
    for name, node in status["nodes"].items():
        agent = status["agents"].get(name)
        if agent is None:
            state = "agent: disabled"
        else:
            state = (
                f"agent pid {agent['pid']} healthy={str(agent['healthy']).lower()} "
                f"realized_generation={agent['realized_generation']} restarts={agent['restarts']}"
            )
        lines.append(f"  {name:<10} {' '.join(node['ips']):<34} {state}")
    lines.append("PODS")
    for name, pod in status["pods"].items():
        ports = ",".join(f"{p['port']}/{p['protocol']}" for p in pod["ports"])
        lines.append(f"  {name:<28} {pod['node']:<8} {' '.join(pod['ips']):<34} {ports}")
    if status["externals"]:
        lines.append("EXTERNAL HOSTS")
        for name, ext in status["externals"].items():
            ports = ",".join(f"{p['port']}/{p['protocol']}" for p in ext["ports"])
            lines.append(f"  ext/{name:<24} {' '.join(ext['ips']):<43} {ports}")
    policy_rows = [
        (policy, node, st)
        for node, agent in sorted(status["agents"].items())
        for policy, st in sorted((agent.get("policies") or {}).items())
    ]
    if policy_rows:
        lines.append("POLICIES (per node: generation realized, local pods selected, errors)")
        for policy, node, st in policy_rows:
            errors = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in st.get("errors") or [])
            lines.append(
                f"  {policy:<28} {node:<8} generation={st.get('generation')} "
                f"selected_pods={st.get('selected_pods')}{'  errors: ' + errors if errors else ''}"
            )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    status = connect(args.name).status()
    print(json.dumps(status, indent=2) if args.output == "json" else _status_text(status))
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    """The path of the kubeconfig for this machine's clients (`export KUBECONFIG=$(vethguard lab
    kubeconfig)`), once the lab answers."""
    print(connect(args.name).status()["api"]["kubeconfig"])
    return 0


def require_lab_programs(dns: bool) -> None:
    """Every program the lab itself starts (scripts/packages.tsv, role lab), before it creates anything."""
    needed = [p for p in programs.role_programs("lab") if dns or p != "dnsmasq"]
    programs.require(*needed, purpose="lab up")


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise VethguardError("lab exec: give a command after --, e.g. vethguard lab exec x/a -- ip addr")
    ns_name = exec_netns(args.name, args.target)
    if "/" not in command[0]:
        programs.require(command[0], purpose="lab exec")
    sys.stdout.flush()
    if (dns.NETNS_ETC / ns_name / "resolv.conf").exists():
        # the pod's resolv.conf (cluster DNS): `ip netns exec` bind-mounts /etc/netns/<ns>/* over
        # /etc for this command only, in a mount namespace of its own
        os.execvp("ip", ["ip", "netns", "exec", ns_name, *command])
    os.execvp("nsenter", ["nsenter", f"--net={netns.netns_path(ns_name)}", "--", *command])
    return 127  # not reached


def cmd_down(args: argparse.Namespace) -> int:
    lab = check_name(args.name)
    removed = teardown(lab)
    leftovers = topology.LabNames(lab).owned()
    if leftovers:
        raise VethguardError(f"lab {lab!r}: could not remove {', '.join(leftovers)}")
    print(
        f"lab {lab} removed ({len(removed)} items)"
        if removed
        else f"lab {lab} was not running; nothing to remove"
    )
    return 0


# --- argument parsing -----------------------------------------------------------------------


def _with_name(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # --lab as in the debug commands (`vethguard explain --lab NAME`): either spelling works
    parser.add_argument("--name", "--lab", default="default", help="lab name (default: %(default)s)")
    return parser


def register(subparsers: Any) -> None:
    lab = subparsers.add_parser(
        "lab", help="a namespace cluster on this machine, served over the Kubernetes API"
    )
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="SUBCOMMAND")

    up = _with_name(sub.add_parser("up", help="create a lab from manifests"))
    up.add_argument(
        "-f", "--file", action="append", required=True, help="manifest file or directory (repeatable)"
    )
    up.add_argument("--nodes", type=int, default=1, help="number of nodes (default: %(default)s)")
    up.add_argument(
        "--cni",
        default="routed",
        choices=list(topology.CNI_MODES),
        help="pod networking: routed (host routes to /32 and /128 pod addresses, like Calico or "
        "kindnet) or bridge (a cni0 bridge per node, like flannel) (default: routed)",
    )
    up.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the agents (default: 180)"
    )
    up.add_argument(
        "--dns",
        action="store_true",
        help="cluster DNS: a dnsmasq pod kube-system/kube-dns behind the Service kube-dns "
        "(10.245.0.10); pods resolve Service names in `lab exec`",
    )
    up.add_argument(
        "--bookmark-interval",
        type=_non_negative,
        default=BOOKMARK_INTERVAL,
        metavar="SECONDS",
        help="seconds between the BOOKMARKs the lab's API server sends a watch that asks for them, "
        f"as kube-apiserver does about once a minute (default: {BOOKMARK_INTERVAL:g}; 0: none)",
    )
    up.add_argument(
        "--agent-pods",
        action="store_true",
        help="also serve the agents as pods vethguard-system/vethguard-<node> (read-only, container "
        "agent) that pods/exec runs commands in, in the node's namespace: `observe --all-nodes` and "
        "`kubectl exec` reach every agent as on a cluster",
    )
    up.add_argument("--no-agents", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    for verb, func, text in (
        ("apply", cmd_apply, "create or replace objects, then wait until every agent realized them"),
        ("delete", cmd_delete, "delete the objects named in manifests, then wait for the agents"),
    ):
        parser = _with_name(sub.add_parser(verb, help=text))
        parser.add_argument("-f", "--file", required=True, help="manifest file, directory, or - for stdin")
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for the agents (default: 60)"
        )
        if verb == "delete":
            parser.add_argument(
                "--ignore-not-found", action="store_true", help="objects already gone are fine"
            )
        parser.set_defaults(func=func)

    pr = _with_name(sub.add_parser("probe", help="try connections from sources to destinations in parallel"))
    pr.add_argument("--port", type=int, required=True, help="destination port (a nodePort for a node's IP)")
    pr.add_argument(
        "--protocol", choices=["TCP", "UDP", "SCTP"], default="TCP", type=str.upper, help="(default: TCP)"
    )
    pr.add_argument("--family", type=int, choices=[4, 6], default=4, help="IP family of pods (default: 4)")
    pr.add_argument(
        "--from",
        dest="sources",
        action="extend",
        nargs="+",
        metavar="NS/POD|ext/NAME",
        help="sources (repeatable; default: every pod)",
    )
    pr.add_argument(
        "--to",
        dest="destinations",
        action="extend",
        nargs="+",
        metavar="NS/POD|ext/NAME|svc/NS/NAME|lb/NS/NAME|IP",
        help="destinations (repeatable; default: every pod and external host)",
    )
    pr.add_argument("--timeout", type=float, default=1.0, help="seconds per probe (default: %(default)s)")
    pr.add_argument("-o", "--output", choices=["text", "json"], default="text", help="a matrix, or JSON")
    pr.set_defaults(func=cmd_probe)

    st = _with_name(sub.add_parser("status", help="nodes, pods, external hosts and agents"))
    st.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format")
    st.set_defaults(func=cmd_status)

    kc = _with_name(
        sub.add_parser(
            "kubeconfig", help="print the path of the lab's kubeconfig for kubectl on this machine"
        )
    )
    kc.set_defaults(func=cmd_kubeconfig)

    ex = _with_name(sub.add_parser("exec", help="run a command inside a pod's network namespace"))
    ex.add_argument("target", metavar="NS/POD", help="NAMESPACE/POD, ext/NAME or node/node-N")
    ex.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command and its arguments"
    )
    ex.set_defaults(func=cmd_exec)

    down = _with_name(sub.add_parser("down", help="remove everything the lab created"))
    down.set_defaults(func=cmd_down)
