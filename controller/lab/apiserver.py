"""A small Kubernetes API server over the lab's object store (JSON over plain http).

It serves what the official Kubernetes client needs to list and watch the kinds the agent reads
(Pods, Namespaces, Nodes, NetworkPolicies, Services, EndpointSlices, the cluster-scoped
ClusterNetworkPolicies of policy.networking.k8s.io/v1alpha2, served as if their CRD were
installed, and Calico's projectcalico.org/v3 GlobalNetworkPolicies, HostEndpoints (cluster
scoped) and NetworkPolicies (namespaced), served as if Calico's API server were installed) plus
the lab's ExternalHost kind: discovery and OpenAPI stubs for kubectl (controller.lab.discovery),
list with a resourceVersion, GET of one object, create (POST), replace (PUT), merge and strategic
merge patch (PATCH) and DELETE, and watches streamed as newline-delimited JSON events; paths,
selectors and patches are read by controller.lab.api_requests. A GET whose Accept header asks for
a `meta.k8s.io` Table (kubectl get) is answered with one, as kube-apiserver does
(controller.lab.tables: list, get, and watch events of one-row Tables whose first carries the
columns); every other client gets the objects. pods/exec over WebSocket (controller.lab.exec_ws)
where the server has an exec runner (the lab's agent pods, `lab up --agent-pods`:
controller.lab.agent_pods). RBAC is not modelled: every client may do everything, exec included;
tests make a request fail as RBAC would with the `fault` hook.

Watch semantics follow kube-apiserver: no resourceVersion (or "0") starts with an ADDED event per
existing object; a resourceVersion older than the retained window gets one ERROR event carrying a
410 Gone Status (reason Expired). BOOKMARKs as kube-apiserver sends them: only to a watch that
asked (allowWatchBookmarks=true), with the current resourceVersion, once every bookmark interval
the watch stays open (server.bookmark_interval, default 60 s like kube-apiserver's watch cache;
`lab up --bookmark-interval`, 0 = never), never after writes: no client may rely on them for
promptness (the agents do not; see controller.agent.realization).

Writes are decoded, defaulted and validated as kube-apiserver does (controller.lab.validation):
400 BadRequest for a body it could not decode, 422 Invalid with the causes for one it would not
admit. POST /lab/v1/unvalidated stores an object without field validation, as an API server of
another version could have admitted it: the way tests put such an object in front of the agents.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.lab import exec_ws, tables
from controller.lab.api_requests import (
    MERGE_PATCHES,
    Filter,
    Route,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    parse_resource_path,
    without_directives,
)
from controller.lab.discovery import discovery
from controller.lab.local_peer import tcp_peer_uid
from controller.lab.state import BOOKMARK_INTERVAL
from controller.lab.store import (
    ApiError,
    Expired,
    Obj,
    Resource,
    Store,
    WatchEvent,
    status_object,
)

UNVALIDATED_PATH = "/lab/v1/unvalidated"  # POST an object: stored without field validation
EXEC_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec$")
DEFAULT_WATCH_TIMEOUT = 1800.0

# A handler for the lab's own endpoints (/lab/...): (method, path, body) -> (code, json body).
LabHandler = Callable[[str, str, Any], tuple[int, Any]]


# --- the HTTP handler -----------------------------------------------------------------------


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vethguard-lab-apiserver"
    server: ApiHTTPServer | ApiUnixServer
    _raw_body = b""  # this request's body (read by _dispatch)
    # a request for a Table (kubectl get): its version and includeObject; None = plain objects
    _table_version: str | None = None
    _include_object = "Metadata"
    _table_headers_sent = False  # a watch's first Table event carries the column definitions

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the daemon logs errors itself
        return

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    # --- plumbing ---

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> Any:
        raw = self._raw_body
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {exc}") from exc

    def _dispatch(self, method: str) -> None:
        # Every body is read, used or not: one left unread would be parsed as the next request
        # of this keep-alive connection (kubectl sends DeleteOptions with DELETE).
        length = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(length) if length > 0 else b""
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            self._route(method, url.path, query)
        except ApiError as err:
            self._send_json(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            self._send_json(500, status_object(500, "InternalError", f"{type(exc).__name__}: {exc}"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- routes ---

    def _route(self, method: str, path: str, query: dict[str, str]) -> None:
        injected = self.server.fault(method, path) if self.server.fault is not None else None
        if injected is not None:
            raise injected
        if path in ("/livez", "/readyz", "/healthz"):
            self._send_text(200, "ok")
            return
        if path.startswith("/lab/"):
            self._lab(method, path)
            return
        if method == "GET":
            doc = discovery(path)
            if doc is not None:
                self._send_json(200, doc)
                return
        exec_path = EXEC_PATH.match(path)
        if exec_path is not None and method in ("GET", "POST"):
            self._exec(*(urllib.parse.unquote(p) for p in exec_path.groups()))
            return
        route = parse_resource_path(path)
        if route is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        self._negotiate(query)
        store = self.server.store
        resource, namespace, name = route.resource, route.namespace, route.name
        if method == "GET" and name is None:
            if query.get("watch") in ("true", "1"):
                self._watch(route, query)
            else:
                self._list(route, query)
        elif method == "GET":
            obj = store.get(resource.key, namespace or "", name or "")
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource.key} "{name}" not found')
            self._send_json(200, self._as_table(resource, [obj]) if self._table_version else obj)
        elif method == "POST" and name is None:
            self._send_json(201, store.create(resource.key, self._read_body(), namespace))
        elif method == "PUT" and name is not None:
            self._send_json(200, store.replace(resource.key, self._read_body(), namespace, name))
        elif method == "PATCH" and name is not None:
            self._patch(route)
        elif method == "DELETE" and name is not None:
            self._send_json(200, store.delete(resource.key, namespace or "", name))
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _lab(self, method: str, path: str) -> None:
        if method == "POST" and path == UNVALIDATED_PATH:
            self._send_json(200, self.server.store.write_unvalidated(self._read_body()))
            return
        handler = self.server.lab_handler
        if handler is None:
            raise ApiError(404, "NotFound", f"no lab endpoint {path}")
        code, body = handler(method, path, self._read_body() if method != "GET" else None)
        self._send_json(code, body)

    def _exec(self, namespace: str, name: str) -> None:
        self.close_connection = True
        if isinstance(self.server, ApiHTTPServer) and self.server.exec_runner is not None:
            # a root command: on a TCP port any local user can reach, only for root (the unix
            # socket is 0600 and root's already)
            server = self.server.server_address
            uid = tcp_peer_uid(
                (str(self.client_address[0]), int(self.client_address[1])), (str(server[0]), int(server[1]))
            )
            if uid not in (0, os.geteuid()):
                raise ApiError(
                    403,
                    "Forbidden",
                    f"pods/exec runs commands as root in a lab node: served only to root on this machine "
                    f"(the connection is uid {uid if uid is not None else 'unknown'}'s)",
                )
        exec_ws.serve(self, self.server.store, self.server.exec_runner, namespace, name)

    def _patch(self, route: Route) -> None:
        store = self.server.store
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type not in MERGE_PATCHES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the lab API server supports merge patches only, not {content_type}",
            )
        body = self._read_body()
        if content_type == "application/strategic-merge-patch+json":
            body = without_directives(body)
        for _ in range(5):
            current = store.get(route.resource.key, route.namespace or "", route.name or "")
            if current is None:
                raise ApiError(404, "NotFound", f'{route.resource.key} "{route.name}" not found')
            patched = merge_patch(current, body)
            patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                self._send_json(200, store.replace(route.resource.key, patched, route.namespace, route.name))
                return
            except ApiError as err:
                if err.code != 409:
                    raise
        raise ApiError(409, "Conflict", "the object keeps changing; try again")

    def _negotiate(self, query: dict[str, str]) -> None:
        """A GET that asks for a Table in its Accept header (kubectl get) gets one."""
        self._table_version = tables.wants_table(self.headers.get("Accept"))
        self._table_headers_sent = False
        if self._table_version is None:
            return
        include = query.get("includeObject") or "Metadata"
        if include not in tables.INCLUDE_OBJECT:
            raise ApiError(
                400,
                "BadRequest",
                f"includeObject must be one of {', '.join(tables.INCLUDE_OBJECT)}, not {include!r}",
            )
        self._include_object = include

    def _as_table(
        self, resource: Resource, objects: list[Obj], rv: int | None = None, headers: bool = True
    ) -> Obj:
        return tables.table(
            resource.key,
            [{"kind": resource.kind, "apiVersion": resource.api_version, **obj} for obj in objects],
            resource_version=None if rv is None else str(rv),
            include_object=self._include_object,
            table_version=self._table_version or "v1",
            headers=headers,
        )

    def _filter(self, route: Route, query: dict[str, str]) -> Filter:
        return Filter(
            route.namespace,
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
        )

    def _list(self, route: Route, query: dict[str, str]) -> None:
        selector = self._filter(route, query)
        items, rv = self.server.store.list(route.resource.key, route.namespace)
        items = [item for item in items if selector.matches(item)]
        if self._table_version:
            self._send_json(200, self._as_table(route.resource, items, rv))
            return
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        self._send_json(
            200,
            {
                "kind": f"{route.resource.kind}List",
                "apiVersion": route.resource.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    # --- watch ---

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _emit(self, event_type: str, obj: Obj) -> None:
        data = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _emit_object(self, event_type: str, resource: Resource, obj: Obj) -> None:
        """An ADDED/MODIFIED/DELETED event: the object, or (kubectl get -w) its one-row Table,
        as kube-apiserver sends it: the column definitions in the first event only."""
        if self._table_version:
            rv = int(obj["metadata"]["resourceVersion"])
            obj = self._as_table(resource, [obj], rv, headers=not self._table_headers_sent)
            self._table_headers_sent = True
        self._emit(event_type, obj)

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _bookmark(self, resource: Resource, rv: int) -> None:
        self._emit(
            "BOOKMARK",
            {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(rv)},
            },
        )

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        store = self.server.store
        resource = route.resource
        selector = self._filter(route, query)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        deadline = time.monotonic() + timeout
        requested = query.get("resourceVersion") or "0"
        try:
            since = int(requested)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {requested!r}") from exc
        self._start_stream()
        self.close_connection = True
        if since == 0:
            items, since = store.list(resource.key, route.namespace)
            for item in items:
                if selector.matches(item):
                    self._emit_object("ADDED", resource, item)
        interval = self.server.bookmark_interval
        bookmarks = bookmarks and interval > 0
        last_bookmark = time.monotonic()
        while not self.server.stopping.is_set():
            try:
                events, current = store.events_since(since)
            except Expired as exc:
                self._emit("ERROR", status_object(410, "Expired", str(exc)))
                break
            for event in events:
                self._send_event(resource, selector, event)
            if bookmarks and time.monotonic() - last_bookmark >= interval:
                self._bookmark(resource, current)
                last_bookmark = time.monotonic()
            since = current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait = min(remaining, 1.0)
            if bookmarks:
                wait = min(wait, max(0.0, last_bookmark + interval - time.monotonic()))
            store.wait_for_change(since, wait)
        self._end_stream()

    def _send_event(self, resource: Resource, selector: Filter, event: WatchEvent) -> None:
        if event.resource != resource.key:
            return
        now_matches = event.type != "DELETED" and selector.matches(event.obj)
        was_matching = selector.matches(event.old)
        if event.type == "DELETED":
            if was_matching:
                self._emit_object("DELETED", resource, event.obj)
        elif now_matches and (was_matching or event.type == "ADDED"):
            self._emit_object(event.type, resource, event.obj)
        elif now_matches:
            self._emit_object("ADDED", resource, event.obj)
        elif was_matching:
            self._emit_object("DELETED", resource, event.obj)


# --- servers --------------------------------------------------------------------------------


# A fault to inject (tests: the server made to fail as a real one can): (method, path) -> an
# ApiError to answer with instead, or None to serve the request.
Fault = Callable[[str, str], "ApiError | None"]


class _ApiServerMixin:
    store: Store
    lab_handler: LabHandler | None
    stopping: threading.Event
    fault: Fault | None = None
    bookmark_interval: float = BOOKMARK_INTERVAL  # seconds; 0: no BOOKMARKs at all
    exec_runner: exec_ws.ExecRunner | None = None  # pods/exec: None = refused (400)


class ApiHTTPServer(_ApiServerMixin, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, store: Store, lab_handler: LabHandler | None = None) -> None:
        super().__init__(sock.getsockname()[:2], ApiHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.store = store
        self.lab_handler = lab_handler
        self.stopping = threading.Event()


class ApiUnixServer(_ApiServerMixin, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, store: Store, lab_handler: LabHandler | None = None) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()
        super().__init__(str(path), ApiHandler)
        os.chmod(path, 0o600)
        self.store = store
        self.lab_handler = lab_handler
        self.stopping = threading.Event()

    def get_request(self) -> tuple[socket.socket, Any]:
        request, _ = self.socket.accept()
        return request, ("unix", 0)


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound in the calling thread's network namespace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


class ServerThread:
    """Runs one server's serve_forever in a daemon thread; stop() ends watches and the loop."""

    def __init__(self, server: ApiHTTPServer | ApiUnixServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stopping.set()
        self.server.store.notify()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def serve_tcp(
    store: Store, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
) -> ServerThread:
    return ServerThread(ApiHTTPServer(sock or tcp_listener(host, port), store)).start()


def kubeconfig_text(server_url: str, name: str = "vethguard-lab") -> str:
    """A kubeconfig for an unauthenticated plain-http API server."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": server_url}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "preferences": {},
        },
        indent=2,
    )
