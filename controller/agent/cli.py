"""`vethguard agent`: the command that runs the agent loop (controller.agent.loop) on a node:
its options, the preflight checks, the informers, the link watch, the health server and the
signals that stop it (leaving programs and maps in place)."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from typing import Any

from controller.agent import flows, preflight
from controller.agent.dns_service import DnsService
from controller.agent.flow_server import DEFAULT_FLOW_SOCKET, FlowServer
from controller.agent.health import METRICS_ONLY, HealthServer
from controller.agent.heap import Collector
from controller.agent.informers import Sources
from controller.agent.kube_api import load_api_client
from controller.agent.linkwatch import LinkWatch
from controller.agent.loop import (
    DEFAULT_HEALTH_ADDR,
    DEFAULT_PIN_ROOT,
    Agent,
    AgentConfig,
    default_datapath_factory,
)
from controller.agent.metrics import Metrics, build_labels
from controller.compiler.desired_state import FAILSAFE_INBOUND, FAILSAFE_OUTBOUND
from controller.core.errors import VethguardError
from controller.core.log import configure as configure_logging
from controller.core.log import get_logger
from controller.core.net import L4_PROTOCOLS
from controller.datapath.ledger import DEFAULT_STATE_DIR

log = get_logger("vethguard.agent")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the per-node agent (watch the cluster, enforce policy on local pod veths)",
        description="Watch Pods, Namespaces, NetworkPolicies and Nodes; compile the policy of this node's "
        "pods into BPF maps; attach the tc programs to every local pod veth. Stopping the agent leaves "
        "programs and pinned maps in place.",
    )
    p.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="this node's name as in the API (default: $NODE_NAME)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument(
        "--pin-root", default=DEFAULT_PIN_ROOT, help=f"bpffs directory (default {DEFAULT_PIN_ROOT})"
    )
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help="where the clsact ledger lives: every clsact qdisc the agent creates is recorded in "
        f"clsact-<node> there, for `vethguard uninstall` (default {DEFAULT_STATE_DIR}, a tmpfs)",
    )
    p.add_argument(
        "--health-addr",
        default=DEFAULT_HEALTH_ADDR,
        help=f"HOST:PORT for /livez /readyz /metrics /status (default {DEFAULT_HEALTH_ADDR})",
    )
    p.add_argument(
        "--metrics-addr",
        default=os.environ.get("VETHGUARD_METRICS_ADDR", ""),
        help="HOST:PORT serving /metrics alone, for Prometheus (deploy/ uses the node's address, "
        "port 9891); default: $VETHGUARD_METRICS_ADDR, else /metrics only on --health-addr",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=_env_float("VETHGUARD_RESYNC_SECONDS", 30.0),
        help="full re-attach + sync period, repairs drift of the kernel maps "
        "(default: $VETHGUARD_RESYNC_SECONDS or 30)",
    )
    p.add_argument(
        "--no-fail-closed",
        dest="fail_closed",
        action="store_false",
        help="let a new veth pass traffic until its pod's policy is known (default: a veth no known "
        "pod claims yet carries a PENDING endpoint: only ARP/ND and node traffic pass)",
    )
    p.add_argument(
        "--uplink",
        action="append",
        default=[u for u in os.environ.get("VETHGUARD_UPLINKS", "").split(",") if u],
        metavar="IFACE",
        help="an interface by which traffic leaves the node for other nodes; Service flows going "
        "there are judged on its tc egress after DNAT (repeatable; default: $VETHGUARD_UPLINKS, "
        "else every interface with a route through a gateway)",
    )
    for direction, default in (("inbound", FAILSAFE_INBOUND), ("outbound", FAILSAFE_OUTBOUND)):
        env = f"VETHGUARD_FAILSAFE_{direction.upper()}"
        p.add_argument(
            f"--failsafe-{direction}",
            type=parse_failsafe,
            default=parse_failsafe(os.environ[env]) if os.environ.get(env) else None,
            metavar="PROTO:PORT,...",
            help=f"{direction} ports a Calico host endpoint always lets through, so a wrong policy "
            f"cannot lock you out (Calico's failsafe{direction.capitalize()}HostPorts; 'none' for "
            f"none; default: ${env}, else {format_failsafe(default)})",
        )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(default: info)"
    )
    _flow_args(p)
    p.set_defaults(func=run_cli)


def _flow_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("flows (controller/agent/flows.py, flow_server.py)")
    g.add_argument(
        "--flow-capacity",
        type=int,
        default=int(os.environ.get("VETHGUARD_FLOW_CAPACITY") or flows.DEFAULT_CAPACITY),
        help="flow records kept in memory, repeats aggregated "
        f"(default $VETHGUARD_FLOW_CAPACITY or {flows.DEFAULT_CAPACITY})",
    )
    g.add_argument(
        "--flow-window-seconds",
        type=float,
        default=flows.DEFAULT_WINDOW_SECONDS,
        help="repeats of a flow (same endpoint, direction, peer, port, protocol, verdict, rule) "
        "within this many seconds of its first event are one record with a count "
        f"(default {flows.DEFAULT_WINDOW_SECONDS})",
    )
    g.add_argument(
        "--flow-socket",
        default=os.environ.get("VETHGUARD_FLOW_SOCKET", DEFAULT_FLOW_SOCKET),
        help="unix socket serving the node's flows to readers in the node's network namespace "
        f"('none': no socket; default $VETHGUARD_FLOW_SOCKET or {DEFAULT_FLOW_SOCKET})",
    )
    g.add_argument(
        "--flow-file", help="also write every flow event as a JSON line to this file (rotated by size)"
    )
    g.add_argument(
        "--flow-file-max-bytes",
        type=int,
        default=100 << 20,
        help="rotate the flow file at this size (100 MiB)",
    )
    g.add_argument("--flow-file-backups", type=int, default=5, help="rotated flow files kept (default 5)")


def start_flows(args: argparse.Namespace, agent: Agent, metrics: Metrics) -> tuple[Any, ...]:
    """The ring buffer's reader (the agent is its only consumer), the store, the socket and the
    file; returns what to stop."""
    from controller.datapath.loader import pin_dir_for

    store = flows.FlowStore(metrics, capacity=args.flow_capacity, window=args.flow_window_seconds)
    out = None
    if args.flow_file:
        out = flows.FlowFile(args.flow_file, args.flow_file_max_bytes, args.flow_file_backups)
    view = flows.ViewCache(agent.sources.snapshot, agent.computed_versions)
    ring = pin_dir_for(args.node, args.pin_root) / "vg_events"
    started: list[Any] = [flows.FlowReader(args.node, ring, store, view.get, out).start()]
    if args.flow_socket.lower() != "none":
        started.append(FlowServer(args.flow_socket, store, args.node, metrics).start())
    return tuple(started)


def parse_failsafe(text: str) -> tuple[tuple[str, int], ...]:
    """'tcp:22,udp:68' (Calico's spelling; 'none': no port) -> (("TCP", 22), ("UDP", 68))."""
    if text.strip().lower() == "none":
        return ()
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        proto, _, port = item.rpartition(":")
        proto = (proto or "tcp").upper()
        if proto not in L4_PROTOCOLS or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(f"{item!r}: expected PROTO:PORT with PROTO tcp, udp or sctp")
        out.append((proto, int(port)))
    return tuple(out)


def format_failsafe(ports: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{p.lower()}:{n}" for p, n in ports) or "none"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


GC_GEN0_THRESHOLD = 20000  # CPython's default is 700


def tune_gc() -> None:
    """Raise the young-generation threshold of the cyclic garbage collector (process-wide).

    With the default (700) a pass at 10k pods ran ~17 young collections (~25 ms), which promote
    the pass's temporaries, and about one pass in four also a full collection over the whole heap
    (110-215 ms). With 20,000 a pass ran one young collection (~15 ms) and none of 16 measured
    passes a full one. Only cyclic garbage waits longer (the model has no reference cycles, and
    refcounting frees everything else at once)."""
    import gc

    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def run_cli(args: argparse.Namespace) -> int:
    if not args.node:
        print("vethguard agent: --node NAME is required (or set $NODE_NAME)", file=sys.stderr)
        return 2
    if args.resync_seconds <= 0:
        print("vethguard agent: --resync-seconds must be positive", file=sys.stderr)
        return 2
    if args.flow_capacity < 1:
        print("vethguard agent: --flow-capacity must be at least 1", file=sys.stderr)
        return 2
    from controller.datapath.loader import pin_dir_for

    configure_logging(args.log_level)
    tune_gc()
    metrics = Metrics()
    try:
        preflight.require()  # one VethguardError listing every problem and its fix
        api = load_api_client(args.kubeconfig)
        sources = Sources.from_api_client(api, metrics=metrics)
        agent = Agent(
            AgentConfig(
                node=args.node,
                pin_root=args.pin_root,
                health_addr=args.health_addr,
                resync_seconds=args.resync_seconds,
                fail_closed=args.fail_closed,
                uplinks=tuple(args.uplink),
                failsafe_inbound=args.failsafe_inbound,
                failsafe_outbound=args.failsafe_outbound,
            ),
            sources,
            metrics=metrics,
            datapath_factory=functools.partial(default_datapath_factory, state_dir=args.state_dir),
            collector=Collector(),
        )
        agent.linkwatch = LinkWatch(agent.wake)
        health = HealthServer(args.health_addr, agent.probes()).start()
        servers = [health]
        if args.metrics_addr:
            scrape = HealthServer(args.metrics_addr, agent.probes(), METRICS_ONLY, "--metrics-addr")
            servers.append(scrape.start())
        flow_parts = start_flows(args, agent, metrics)
        # DNS for domainNames rules: held answers learned from, then released (vg_dns_held's reader)
        flow_parts += (DnsService(pin_dir_for(args.node, args.pin_root), agent.domains).start(),)
    except (VethguardError, OSError, ValueError) as exc:
        print(f"vethguard agent: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping (programs and maps stay in place)", signal=signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "agent starting",
        node=args.node,
        pin_root=args.pin_root,
        health_addr=args.health_addr,
        metrics_addr=args.metrics_addr or None,
        resync_seconds=args.resync_seconds,
        fail_closed=args.fail_closed,
        pid=os.getpid(),
        **build_labels(),
    )
    try:
        agent.run()
    finally:
        for part in flow_parts:
            part.stop()
        for server in servers:
            server.stop()
        agent.close()
    if agent.fatal is not None:
        print(f"vethguard agent: {agent.fatal}", file=sys.stderr)
        log.error("agent cannot run, exiting", node=args.node, error=str(agent.fatal))
        return 1
    log.info("agent stopped", node=args.node, realized=agent.status().get("realized"))
    return 0
