"""`vethguard ui [--lab NAME | --kubeconfig ...] [--listen ADDR:PORT]`: serves the page (static/,
shipped in the package) and its JSON API on 127.0.0.1 and a free port unless told otherwise,
prints the URL as the first line of its output, and serves until Ctrl-C.

    GET /                           the page; /static/<file> its script and style
    GET /api/info                   the target, its nodes and agents, the flow follower's state
    GET /api/policies               every policy: selected pods and realization per node
    GET /api/policy?kind=K&key=NS/N describe
    GET /api/heatmap?port=&protocol=&family=&namespace=&probe=1   (probe: labs only)
    GET /api/flows?after=SEQ&pod=&namespace=&verdict=&policy=&port=&protocol=
    GET /api/graph?seconds=300      pods and namespaces, edges of the flows of the last seconds
    GET /api/explain?from=&to=&port=&protocol=&family=&kernel=0|1
    POST /api/whatif {"yaml": "policies to create or replace", "delete": ["KIND/NS/NAME", ...]}
                                    `vethguard whatif` over the flows this page holds (not applied)

An API error is answered {"error": "..."} (400 for a bad request, 502 when the cluster, lab or
agents could not be read) and shown on the page. Flows reveal a cluster's traffic: the default
address is loopback, and any other is warned about on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import mimetypes
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from controller.agent.flows import FlowFilter
from controller.compiler.clusterview import ClusterView
from controller.core.errors import VethguardError
from controller.debug import explain as explain_mod
from controller.debug import hostep_cli
from controller.debug.inputs import LabTarget, Target
from controller.debug.live_checks import (
    agent_statuses,
    agents_behind,
    learned_lookup,
    live_lookup,
    probe_pods,
)
from controller.debug.target_options import make_target, target_args
from controller.debug.ui import api
from controller.debug.ui.flows import FlowBuffer, Follower
from controller.debug.whatif import Change, ChangeError, whatif
from controller.debug.whatif_cli import report_text

STATIC = Path(__file__).parent / "static"
VIEW_SECONDS = 2.0  # a view (objects listed, compiled) and the agents' statuses are reused this long
PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPV6")
MAX_POST_BYTES = 1 << 20  # a what-if change: policies, not bulk data


class BadRequest(VethguardError):
    pass


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(doc).encode())


class Source:
    """The target's compiled view and agent statuses, listed again when VIEW_SECONDS old."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._at = -VIEW_SECONDS
        self._view: ClusterView | None = None
        self._agents: dict[str, dict[str, Any] | None] = {}

    def get(self) -> tuple[ClusterView, dict[str, dict[str, Any] | None]]:
        with self._lock:
            if self._view is None or time.monotonic() - self._at >= VIEW_SECONDS:
                self._view = ClusterView(self.target.objects())
                self._agents = agent_statuses(self.target, self.target.nodes())
                self._at = time.monotonic()
            return self._view, self._agents


def _one(query: Mapping[str, Sequence[str]], name: str, default: str | None = None) -> str | None:
    values = query.get(name)
    return values[-1] if values else default


def _int(query: Mapping[str, Sequence[str]], name: str, default: int) -> int:
    raw = _one(query, name)
    try:
        return default if raw in (None, "") else int(str(raw))
    except ValueError as exc:
        raise BadRequest(f"{name}: not a number: {raw!r}") from exc


def _protocol(query: Mapping[str, Sequence[str]], allowed: Sequence[str] = PROTOCOLS) -> str:
    proto = str(_one(query, "protocol") or "TCP").upper()
    if proto not in allowed:
        raise BadRequest(f"protocol: one of {', '.join(allowed)}")
    return proto


def _family(query: Mapping[str, Sequence[str]]) -> int:
    fam = _int(query, "family", 4)
    if fam not in (4, 6):
        raise BadRequest("family: 4 or 6")
    return fam


class App:
    """The routes (module docstring) over a Source and the followed flows."""

    def __init__(
        self,
        source: Source,
        flows: FlowBuffer,
        target_text: str,
        probe: Callable[[Sequence[str], int, str, int], dict[tuple[str, str], bool]] | None = None,
        kernel: bool = True,
    ) -> None:
        self.source = source
        self.flows = flows
        self.target_text = target_text
        self.probe = probe
        self.kernel = kernel

    def handle(self, url: str, body: bytes | None = None) -> Response:
        """GET `url`, or POST `body` to it (only /api/whatif takes one)."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        path = parts.path
        try:
            if body is not None:
                if path != "/api/whatif":
                    return json_response({"error": f"POST is for /api/whatif, not {path}"}, 405)
                return json_response(self.api_whatif(body))
            if path in ("/", "/index.html"):
                return self.static("index.html")
            if path.startswith("/static/"):
                return self.static(path.removeprefix("/static/"))
            route = (
                getattr(self, "api_" + path.removeprefix("/api/"), None) if path.startswith("/api/") else None
            )
            if route is None:
                return json_response({"error": f"no such page: {path}"}, 404)
            return json_response(route(query))
        except BadRequest as exc:
            return json_response({"error": str(exc)}, 400)
        except ChangeError as exc:  # the proposed change names its problems: the page lists them
            return json_response({"error": str(exc), "problems": exc.problems}, 422)
        except VethguardError as exc:
            return json_response({"error": str(exc)}, 502)
        except Exception as exc:  # the page shows it; the server keeps serving
            return json_response({"error": f"{type(exc).__name__}: {exc}"}, 500)

    def static(self, name: str) -> Response:
        path = (STATIC / name).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            return json_response({"error": f"no such file: {name}"}, 404)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(
            200, ctype + ("; charset=utf-8" if ctype.startswith("text/") else ""), path.read_bytes()
        )

    # -- the API ----------------------------------------------------------------------------------

    def api_info(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        view, agents = self.source.get()
        doc = api.info(view, self.target_text, agents, self.flows.state())
        return {**doc, "probe": self.probe is not None}

    def api_policies(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        view, agents = self.source.get()
        return api.policies(view, list(agents), agents)

    def api_policy(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        view, agents = self.source.get()
        return api.describe(
            view, str(_one(query, "kind", "")), str(_one(query, "key", "")), list(agents), agents
        )

    def api_heatmap(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        view, _ = self.source.get()
        namespace = _one(query, "namespace") or None
        port, protocol, family = (
            _int(query, "port", 80),
            _protocol(query, ("TCP", "UDP", "SCTP")),
            _family(query),
        )
        pods = view.pods(namespace)
        probed = None
        if _one(query, "probe") in ("1", "true"):
            if self.probe is None:
                raise BadRequest("probing needs a lab (vethguard ui --lab NAME)")
            probed = self.probe(pods, port, protocol, family)
        return api.heatmap(view, pods, port, protocol, family, probed)

    def api_flows(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        flt = api.flow_filter(query)
        last, records = self.flows.after(_int(query, "after", 0), flt, _int(query, "limit", 500))
        return {"last": last, "records": records, **self.flows.state()}

    def api_graph(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        view, _ = self.source.get()
        seconds = _int(query, "seconds", 300)
        _, records = self.flows.after(0, FlowFilter(since=time.time() - seconds), limit=100_000)
        return {"seconds": seconds, **api.graph(view.pods(), records)}

    def api_whatif(self, body: bytes) -> dict[str, Any]:
        """The proposed change (YAML documents and references to delete) replayed against the
        flows this page holds, before and after, without applying it."""
        try:
            request = json.loads(body or b"{}")
            docs = [d for d in yaml.safe_load_all(str(request.get("yaml") or "")) if d is not None]
        except (ValueError, yaml.YAMLError, AttributeError) as exc:
            raise BadRequest(f"expected {{'yaml': ..., 'delete': [...]}} with YAML documents: {exc}") from exc
        if not all(isinstance(d, dict) for d in docs):
            raise BadRequest("every YAML document must be an object (a policy, or a List of them)")
        items = [i for d in docs for i in (d.get("items") or [] if d.get("kind") == "List" else [d])]
        if not all(isinstance(i, dict) for i in items):
            raise BadRequest("every YAML document must be an object (a policy, or a List of them)")
        deletes = [str(x) for x in request.get("delete") or [] if str(x).strip()]
        if not items and not deletes:
            raise BadRequest("give the change: policies to create or replace, and/or objects to delete")
        view, _ = self.source.get()
        _, records = self.flows.after(0, FlowFilter(), limit=self.flows.capacity)
        report = whatif(view.raw, Change(items, deletes), records)
        return {**report.to_json(), "text": report_text(report)}

    def api_explain(self, query: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        src, dst = _one(query, "from"), _one(query, "to")
        if not src or not dst:
            raise BadRequest("from and to: NS/POD or an IP address")
        port = _int(query, "port", 80)
        protocol, family = _protocol(query), _one(query, "family")
        view, agents = self.source.get()
        check = self.kernel and _one(query, "kernel", "1") != "0"
        nodes = {n.name: n for n in self.source.target.nodes()}
        live, close = live_lookup(nodes) if check else (None, lambda: None)
        live_hep, close_hep = hostep_cli.live_hep_lookup(view, nodes) if check else (None, lambda: None)
        learned, close_learned = learned_lookup(nodes) if check else (None, lambda: None)
        try:
            e = explain_mod.explain(
                view,
                src,
                dst,
                port,
                protocol,
                int(family) if family in ("4", "6") else None,
                live,
                agents_behind(view, agents) if check else {},
                live_hep,
                learned,
            )
        finally:
            close()
            close_hep()
            close_learned()
        return api.explained(e)


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass serve() makes

    def do_GET(self) -> None:
        self._answer(self.app.handle(self.path))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_POST_BYTES:
            self._answer(json_response({"error": f"the change is over {MAX_POST_BYTES} bytes"}, 413))
            return
        self._answer(self.app.handle(self.path, self.rfile.read(length) if length > 0 else b""))

    def _answer(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(resp.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the page polls: one line per request would drown the terminal


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [V6]:PORT, :PORT (loopback) or an address alone (a free port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    host = host or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        number = int(port or 0)
    except ValueError as exc:
        raise VethguardError(f"--listen {text!r}: expected ADDR:PORT with an IP address ({exc})") from exc
    if not 0 <= number <= 65535:
        raise VethguardError(f"--listen {text!r}: port out of range")
    return host, number


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: App, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("UiHandler", (Handler,), {"app": app})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type(
        "UiServer", (ThreadingHTTPServer,), {"daemon_threads": True, "address_family": family}
    )
    return server_class((host, port), handler)


def cmd_ui(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    target = make_target(args)
    source = Source(target)
    source.get()  # fail now, with the command's error, when the cluster or lab cannot be read
    probe = None
    if isinstance(target, LabTarget):
        lab = target

        def probe(pods: Sequence[str], port: int, protocol: str, family: int) -> dict[tuple[str, str], bool]:
            return probe_pods(lab, pods, port, protocol, family, 1.0)

    flows = FlowBuffer()
    Follower(lambda: make_target(args), flows).start()
    if args.lab:
        text = f"lab {args.lab}"
    elif args.all_nodes:
        text = f"cluster, {len(target.nodes())} nodes (pods/exec in {args.agent_namespace})"
    else:
        text = f"node {target.nodes()[0].name}"
    try:
        server = serve(App(source, flows, text, probe), host, port)
    except OSError as exc:
        raise VethguardError(f"--listen {args.listen}: {exc}") from exc
    bound_host, bound_port = server.server_address[:2]
    print(url_of(str(bound_host), int(bound_port)), flush=True)
    if not ipaddress.ip_address(host).is_loopback:
        print(
            f"vethguard ui: warning: serving on {host}, not loopback: anyone who reaches it sees the "
            "cluster's policies and flows (there is no login)",
            file=sys.stderr,
            flush=True,
        )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


def register(sub: Any) -> None:
    from controller.agent.flow_server import DEFAULT_FLOW_SOCKET

    p = sub.add_parser(
        "ui",
        help="a local web page: policies, reachability heatmap, live flows, flow graph, explain",
        description="Serve a web page about a lab (--lab NAME) or the cluster of the kubeconfig: "
        "policies and their realization, the reachability heatmap, live flows with filters, a "
        "graph of recent flows and explain. Prints the URL first; serves until Ctrl-C.",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="ADDR:PORT",
        help="address to serve on (default 127.0.0.1 and a free port; flows are sensitive: "
        "any other address is warned about)",
    )
    p.add_argument(
        "--flow-socket",
        help=f"the agent's flow socket (default {DEFAULT_FLOW_SOCKET}; --all-nodes: the agent "
        "container's $VETHGUARD_FLOW_SOCKET or that)",
    )
    target_args(p, (), all_nodes=True)
    p.set_defaults(func=cmd_ui)
