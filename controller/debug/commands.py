"""The debug commands' handlers (bpf, get, describe, explain, observe, reachability): each fetches
its inputs through a Target and prints. The pure work lives in bpfview/netpol/cnp/calico/explain/
observe/reach; the parsers are registered by controller.debug.cli.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from controller.compiler.clusterview import ClusterView
from controller.core.errors import VethguardError
from controller.debug import bpfview, calico, cnp, hostep, hostep_cli, netpol, observe, reach
from controller.debug import explain as explain_mod
from controller.debug.inputs import LabTarget, NodeRef, Target
from controller.debug.kernel import NodeMaps
from controller.debug.live_checks import (
    agent_statuses,
    agents_behind,
    learned_lookup,
    live_lookup,
    probe_pods,
)
from controller.debug.render import dump, table
from controller.debug.target_options import make_target

EXIT_MISMATCH = 3  # explain / reachability --probe: the kernel disagrees with the compiled state


# -- bpf -------------------------------------------------------------------------------------

# (header, row key or a function of the row) per table
BPF_COLUMNS: dict[str, list[tuple[str, str | Callable[[dict[str, Any]], Any]]]] = {
    "endpoints": [
        ("NODE", "node"),
        ("IFINDEX", "ifindex"),
        ("POD", "pod"),
        ("IDENTITY", "identity"),
        ("FLAGS", "flags"),
        ("IPV4", "ipv4"),
        ("IPV6", "ipv6"),
        ("ENTRIES", "policy_entries"),
    ],
    "identities": [
        ("NODE", "node"),
        ("IDENTITY", "identity"),
        ("KIND", "kind"),
        ("MEANING", "meaning"),
        ("PODS", "pods"),
        ("IN-IPCACHE", "in_ipcache"),
        ("POLICY-ENTRIES", "policy_entries"),
    ],
    "ipcache": [
        ("NODE", "node"),
        ("PREFIX", "prefix"),
        ("IDENTITY", "identity"),
        ("MEANING", "meaning"),
        ("CIDR-IDENTITY", "cidr_identity"),
        ("CIDR", "cidr"),
        ("NAMESPACE", "namespace"),
    ],
    "policy": [
        ("NODE", "node"),
        ("POD", "pod"),
        ("DIR", "direction"),
        ("PEER-ID", "peer_identity"),
        ("PEER", "peer"),
        ("PROTO", "protocol"),
        ("PORTS", "ports"),
        ("VERDICT", "verdict"),
        ("POLICY", "policy"),
        ("RULE", "rule"),
        ("ADMIN", lambda r: bpfview.tier_cell(r, "admin")),
        ("BASELINE", lambda r: bpfview.tier_cell(r, "baseline")),
        ("FLOWS", "flows"),
        ("PACKETS", "packets"),
        ("BYTES", "bytes"),
    ],
    "ct": [
        ("NODE", "node"),
        ("POD", "pod"),
        ("DIR", "direction"),
        ("PROTO", "protocol"),
        ("FROM", "from"),
        ("SRC", "src"),
        ("TO", "to"),
        ("DST", "dst"),
        ("STATE", "state"),
        ("SEEN", "seen"),
        ("EXPIRES", "expires_in_s"),
        ("PACKETS", "packets"),
        ("BYTES", "bytes"),
        ("RULE", "rule"),
    ],
    "hosteps": [
        ("NODE", "node"),
        ("INTERFACE", "interface"),
        ("HOSTENDPOINT", "host_endpoint"),
        ("FLAGS", "flags"),
        (
            "PROFILES(host/fwd/pre)",
            lambda r: f"{r['profile_host']:#x}/{r['profile_fwd']:#x}/{r['profile_pre']:#x}",
        ),
        ("PREDNAT", "policies_prednat"),
        ("NORMAL", "policies_normal"),
        ("FORWARD", "policies_forward"),
    ],
    "dns": [
        ("NODE", "node"),
        ("POD", "pod"),
        ("ADDRESS", "address"),
        ("NAME", "name"),
        ("DOMAIN", "domain"),
        (
            "EXPIRES",
            lambda r: (
                f"expired {-r['expires_in_s']:.0f}s ago" if r["expired"] else f"{r['expires_in_s']:.0f}s"
            ),
        ),
    ],
    "counters": [
        ("NODE", "node"),
        ("POD", "pod"),
        ("DIR", "direction"),
        ("REASON", "reason"),
        ("PACKETS", "packets"),
        ("BYTES", "bytes"),
    ],
}


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def bpf_rows(what: str, view: ClusterView, node: NodeRef, pod: str | None) -> list[dict[str, Any]]:
    with NodeMaps(node.pin_dir) as nm:
        state = nm.dump()
        if what == "endpoints":
            return bpfview.endpoint_rows(view, node.name, state)
        if what == "identities":
            return bpfview.identity_rows(view, node.name, state)
        if what == "ipcache":
            return bpfview.ipcache_rows(view, node.name, state)
        if what == "policy":
            return bpfview.policy_rows(view, node.name, state, time.monotonic_ns(), pod)
        if what == "hosteps":
            return hostep.hostep_rows(
                view, node.name, nm.hosteps(), nm.failsafe(), state.policy, hostep.read_links(node.netns)
            )
        if what == "ct":
            rows = bpfview.ct_rows(view, node.name, state, time.monotonic_ns())
            return [r for r in rows if pod is None or pod in (r["pod"], r["from"], r["to"])]
        if what == "dns":
            rows = bpfview.dns_rows(view, node.name, state, nm.learned().entries(), time.monotonic_ns())
            return [r for r in rows if pod is None or r["pod"] == pod]
        rows = bpfview.counter_rows(view, node.name, state, nm.counters())
        return [r for r in rows if pod is None or r["pod"] == pod]


def cmd_bpf(args: argparse.Namespace) -> int:
    target = make_target(args)
    view = _view(target)
    pod = getattr(args, "pod", None)
    if pod is not None and pod not in view.cluster.pods:
        raise VethguardError(f"{pod}: no such pod")
    rows: list[dict[str, Any]] = []
    for node in target.nodes():
        rows += bpf_rows(args.what, view, node, pod)
    if args.output in ("json", "yaml"):
        dump({"kind": f"vethguard.bpf.{args.what}", "items": rows}, args.output)
        return 0
    cols = list(BPF_COLUMNS[args.what])
    if args.what == "hosteps" and args.output == "wide":
        cols += [
            ("IFINDEX", "ifindex"),
            ("SELECTED-BY", "selected_by"),
            ("AS-DESIRED", "matches_desired"),
            ("FAILSAFE-IN", "failsafe_inbound"),
            ("FAILSAFE-OUT", "failsafe_outbound"),
        ]
    print(
        table([c for c, _ in cols], [[_cell(k(r) if callable(k) else r[k]) for _, k in cols] for r in rows])
    )
    if args.what == "hosteps":
        for node in sorted({r["node"] for r in rows}):
            r = next(x for x in rows if x["node"] == node)
            print(
                f"failsafe on {node}: inbound {_cell(r['failsafe_inbound'])}, "
                f"outbound {_cell(r['failsafe_outbound'])}"
            )
    if args.what == "policy":
        print("(FLOWS/PACKETS/BYTES: conntrack entries alive now that each entry allowed; both directions)")
    return 0


# -- get / describe ----------------------------------------------------------------------------


def _policies(view: ClusterView, namespace: str | None) -> list[dict[str, Any]]:
    return [
        dict(p)
        for p in view.raw.policies
        if namespace is None or (p.get("metadata") or {}).get("namespace") == namespace
    ]


def _view(target: Target) -> ClusterView:
    """The compiled view of the target's objects; what could not be listed is said on stderr."""
    raw = target.objects()
    for w in raw.warnings:
        print(f"vethguard: warning: {w}", file=sys.stderr)
    return ClusterView(raw)


def _get_calico(view: ClusterView, args: argparse.Namespace) -> int:
    kind = calico.BY_NAME[args.kind]
    ns = None if args.all_namespaces else args.namespace
    objs = calico.objects(view, kind, ns)
    if args.output in ("json", "yaml"):
        dump({"apiVersion": "v1", "kind": "List", "items": [dict(o) for o in objs]}, args.output)
    elif not objs:
        where = f" in {ns} namespace" if kind.namespaced and ns is not None else ""
        print(f"No resources found{where}.", file=sys.stderr)
    else:
        print(calico.get_text(view, kind, objs, wide=args.output == "wide"))
        for note in calico.error_notes(view, kind, objs):
            print(f"vethguard: {note}", file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    target = make_target(args)
    view = _view(target)
    if args.kind in calico.NAMES:
        return _get_calico(view, args)
    nodes = target.nodes()
    agents = agent_statuses(target, nodes)
    if args.kind in cnp.NAMES:
        objs = sorted(view.raw.cluster_policies, key=cnp.name)
        if args.output in ("json", "yaml"):
            dump({"apiVersion": "v1", "kind": "List", "items": [dict(o) for o in objs]}, args.output)
        elif not objs:
            print("No resources found", file=sys.stderr)
        else:
            rows = cnp.get_rows(view, objs, [n.name for n in nodes], agents)
            print(cnp.get_text(rows, wide=args.output == "wide"))
        return 0
    ns = None if args.all_namespaces else args.namespace
    pols = _policies(view, ns)
    if args.output in ("json", "yaml"):
        dump({"apiVersion": "v1", "kind": "List", "items": sorted(pols, key=netpol.key)}, args.output)
        return 0
    rows = netpol.get_rows(view, pols, [n.name for n in nodes], agents)
    if not rows and ns is not None:
        print(f"No resources found in {ns} namespace.", file=sys.stderr)
        return 0
    print(netpol.get_text(rows, all_namespaces=args.all_namespaces, wide=args.output == "wide"))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    target = make_target(args)
    view = _view(target)
    nodes = target.nodes()
    agents = agent_statuses(target, nodes)
    if args.kind in cnp.NAMES:
        objs = [o for o in view.raw.cluster_policies if args.name is None or cnp.name(o) == args.name]
        if not objs and args.name is not None:
            raise VethguardError(f'{cnp.RESOURCE} "{args.name}" not found')
        if not objs:
            print("No resources found", file=sys.stderr)
        texts = [
            cnp.describe_text(view, o, [n.name for n in nodes], agents) for o in sorted(objs, key=cnp.name)
        ]
        if texts:
            print("\n\n".join(texts))
        return 0
    pols = [
        p for p in _policies(view, args.namespace) if args.name is None or p["metadata"]["name"] == args.name
    ]
    if not pols:
        raise VethguardError(
            f'networkpolicies.networking.k8s.io "{args.name}" not found in namespace {args.namespace}'
        )
    texts = [
        netpol.describe_text(view, p, [n.name for n in nodes], agents) for p in sorted(pols, key=netpol.key)
    ]
    print("\n\n".join(texts))
    return 0


# -- explain -----------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    target = make_target(args)
    view = _view(target)
    nodes = {n.name: n for n in target.nodes()}
    live, close = (None, lambda: None) if args.no_kernel else live_lookup(nodes)
    live_hep, close_hep = (None, lambda: None) if args.no_kernel else hostep_cli.live_hep_lookup(view, nodes)
    learned, close_learned = (None, lambda: None) if args.no_kernel else learned_lookup(nodes)
    try:
        behind = {} if args.no_kernel else agents_behind(view, agent_statuses(target, list(nodes.values())))
        e = explain_mod.explain(
            view,
            args.source,
            args.destination,
            args.port,
            args.protocol,
            args.family,
            live,
            behind,
            live_hep,
            learned,
        )
    finally:
        close()
        close_hep()
        close_learned()
    if args.output == "json":
        dump(e.as_json(), "json")
    else:
        print(explain_mod.explain_text(e))
    if e.mismatches:
        for m in e.mismatches:
            print(f"vethguard explain: KERNEL MISMATCH: {m}", file=sys.stderr)
        return EXIT_MISMATCH
    return 0


# -- observe -----------------------------------------------------------------------------------


def cmd_observe(args: argparse.Namespace) -> int:
    """History and/or live flows of every node: from the agents' flow sockets, merged in time
    order (controller.debug.flow_client); a node without one: its ring buffer, read here."""
    from controller.agent.flows import FlowFilter, parse_since
    from controller.debug import flow_client

    target = make_target(args)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise VethguardError(f"--since {exc}") from exc
    flt = FlowFilter(
        pods=tuple(args.pod or ()),
        namespaces=tuple(args.namespace or ()),
        verdicts=tuple(args.verdict or ()),
        policies=tuple(args.policy or ()),
        ports=tuple(args.port or ()),
        protocols=tuple(args.protocol or ()),
        since=since,
    )
    # Without --follow: what the agents kept. With it: new flows (and history since --since).
    history = not args.follow or since is not None
    request = {"follow": bool(args.follow), "history": history, "filter": flt.as_json()}
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    view = _view(target)
    heps = hostep_cli.observe_host_endpoints(view, target.nodes())  # their events, named for them
    for shown, rec in enumerate(flow_client.observed(target, flt, request, deadline), 1):
        rec = observe.name_host_endpoint(rec, view, heps)
        print(json.dumps(rec) if args.output == "json" else observe.line(rec), flush=True)
        if args.count is not None and shown >= args.count:
            break
    return 0


# -- reachability ------------------------------------------------------------------------------


def cmd_reachability(args: argparse.Namespace) -> int:
    target = make_target(args)
    view = _view(target)
    pods = view.pods(None if args.all_namespaces else args.namespace)
    if not pods:
        raise VethguardError(
            "no pods with an address" + (f" in namespace {args.namespace}" if args.namespace else "")
        )
    results = reach.matrix(view, pods, args.port, args.protocol, args.family)
    disagree: list[dict[str, Any]] = []
    if args.probe:
        if not isinstance(target, LabTarget):
            raise VethguardError("--probe needs --lab NAME (it sends real packets between lab pods)")
        results = reach.compare(
            results, probe_pods(target, pods, args.port, args.protocol, args.family, args.probe_timeout)
        )
        disagree = [r for r in results if not r["agrees"]]
    if args.output == "json":
        dump(
            {"port": args.port, "protocol": args.protocol, "family": args.family, "results": results}, "json"
        )
    else:
        title = f"{args.protocol}/{args.port}"
        print(reach.matrix_text(results, pods, title))
        print(
            "'.' allowed  'X' denied"
            + ("  '!' the kernel disagreed (shown: what the probe saw)" if args.probe else "")
        )
        tiers = reach.tier_lines(results)
        if tiers:
            print("decided by ClusterNetworkPolicy rules (cells):")
            print("\n".join(tiers))
        for r in disagree:
            print(
                f"MISMATCH: {r['from']} -> {r['to']}: policy says {'allowed' if r['allowed'] else 'denied'}, "
                f"probe {'connected' if r['probed'] else 'did not connect'}"
            )
    return EXIT_MISMATCH if disagree else 0
