"""`vethguard whatif -f CHANGE.yaml [--delete KIND/NS/NAME ...]`: which flows the agents kept would
change their verdict if the change were applied (controller.debug.whatif; nothing is applied).

The live objects come from the API (or the lab's, `--lab NAME`), the flows from every node's
agent history (controller.debug.flow_client, as `vethguard observe` without --follow).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from controller.agent.flow_server import DEFAULT_FLOW_SOCKET
from controller.agent.flows import FlowFilter
from controller.core.errors import VethguardError
from controller.debug import flow_client
from controller.debug.render import dump, table
from controller.debug.target_options import make_target, target_args
from controller.debug.whatif import Change, WhatIfReport, kind_of, whatif
from controller.lab import manifests


def _port(port: int | None) -> str:
    return "-" if port is None else str(port)


def report_text(report: WhatIfReport) -> str:
    """kubectl-like: what the change does to each object, the flows whose verdict changes, the
    summary per namespace, and what was replayed."""
    lines = []
    for o in report.objects:
        where = f"{o['namespace']}/{o['name']}" if o["namespace"] else o["name"]
        lines.append(f"{o['kind']} {where}: {o['action']} (not applied)")
    lines.append("")
    if report.changed:
        rows = [
            (
                c.source,
                c.destination,
                _port(c.port),
                c.protocol if c.family == 4 else f"{c.protocol}/v6",
                c.before.verdict,
                c.after.verdict,
                c.before.rule,
                c.after.rule,
            )
            for c in report.changed
        ]
        headers = ("FROM", "TO", "PORT", "PROTO", "BEFORE", "AFTER", "RULE-BEFORE", "RULE-AFTER")
        lines += [table(headers, rows), ""]
        summary = [
            (ns, c["newly_denied"], c["newly_allowed"], c["other"]) for ns, c in report.summary.items()
        ]
        lines += [table(("NAMESPACE", "NEWLY-DENIED", "NEWLY-ALLOWED", "OTHER"), summary), ""]
    else:
        lines += ["No replayed flow changes its verdict.", ""]
    nodes = ", ".join(report.nodes) or "no node"
    skipped = sum(report.skipped.values())
    lines.append(
        f"{len(report.changed)} of {report.flows} flows change their verdict; replayed "
        f"{report.records - skipped} records kept by the agents of {nodes}"
        + (f" ({skipped} more are no policy decision and were not replayed)" if skipped else "")
    )
    return "\n".join(lines)


def cmd_whatif(args: argparse.Namespace) -> int:
    docs = manifests.load(args.filename) if args.filename else []
    for m in docs:
        if kind_of(m.obj) is None:
            raise VethguardError(
                f"{m.origin}: {m.obj.get('kind')} is not a policy kind (NetworkPolicy, ClusterNetworkPolicy, "
                "Calico's GlobalNetworkPolicy, NetworkPolicy, HostEndpoint)"
            )
    if not docs and not args.delete:
        raise VethguardError("give the change: -f FILE (documents to create or replace) and/or --delete")
    target = make_target(args)
    raw = target.objects()
    for w in raw.warnings:
        print(f"vethguard: warning: {w}", file=sys.stderr)
    flt = FlowFilter()
    request: dict[str, Any] = {"follow": False, "history": True, "filter": flt.as_json()}
    deadline = time.monotonic() + args.timeout
    records = list(flow_client.observed(target, flt, request, deadline))
    report = whatif(raw, Change([m.obj for m in docs], args.delete or []), records)
    if args.output in ("json", "yaml"):
        dump(report.to_json(), args.output)
    else:
        print(report_text(report))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "whatif",
        help="which flows the agents kept would change their verdict with this policy change (not applied)",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help="policies to create or replace: YAML/JSON, multi-document, a directory or - (stdin); repeatable",
    )
    p.add_argument(
        "--delete",
        action="extend",
        nargs="+",
        metavar="KIND/NAME",
        help="objects to delete: KIND/NAMESPACE/NAME or KIND/NAME (netpol, cnp, gnp, cnetpol, hep)",
    )
    p.add_argument(
        "--flow-socket",
        default=DEFAULT_FLOW_SOCKET,
        help=f"the local agent's flow socket (default {DEFAULT_FLOW_SOCKET})",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="give up reading the agents' flows after this")
    target_args(p, ("text", "json", "yaml"))
    p.set_defaults(func=cmd_whatif)
