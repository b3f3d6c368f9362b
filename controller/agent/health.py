"""The agent's small HTTP endpoint: /livez, /readyz, /metrics, /status (docs/INTERNALS.md).

Served on --health-addr (default 127.0.0.1:9890, inside the node's network namespace).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controller.agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from controller.core.errors import VethguardError


@dataclass
class HealthProbes:
    """What the server asks the agent; every callable must be cheap and thread-safe."""

    live: Callable[[], bool]
    ready: Callable[[], bool]
    status: Callable[[], dict[str, Any]]
    metrics: Callable[[], bytes]


ALL_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/status"})
METRICS_ONLY = frozenset({"/metrics"})  # --metrics-addr: what a scraper may see, not /status


def parse_addr(addr: str, flag: str = "--health-addr") -> tuple[str, int]:
    """'127.0.0.1:9890', '[::1]:9890' or ':9890' -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise VethguardError(f"invalid {flag} {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9890")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], probes: HealthProbes, paths: frozenset[str]) -> None:
        import socket

        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.probes = probes
        self.paths = paths
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # requests are not worth a log line
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        probes = self.server.probes
        try:
            if path not in self.server.paths:
                self._send(404, f"not found: try {' '.join(sorted(self.server.paths))}\n".encode())
            elif path == "/livez":
                ok = probes.live()
                self._send(200 if ok else 503, b"ok\n" if ok else b"agent loop stalled\n")
            elif path == "/readyz":
                ok = probes.ready()
                self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
            elif path == "/metrics":
                self._send(200, probes.metrics(), METRICS_CONTENT_TYPE)
            elif path == "/status":
                body = json.dumps(probes.status(), indent=1, sort_keys=True, default=str).encode() + b"\n"
                self._send(200, body, "application/json")
        except Exception as exc:  # never let a probe kill the server thread
            self._send(500, f"internal error: {type(exc).__name__}: {exc}\n".encode())

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)


class HealthServer:
    """/livez /readyz /metrics /status on --health-addr (127.0.0.1), or only `paths` (the
    scrape address, --metrics-addr, serves /metrics alone)."""

    def __init__(
        self, addr: str, probes: HealthProbes, paths: frozenset[str] = ALL_PATHS, flag: str = "--health-addr"
    ) -> None:
        host, port = parse_addr(addr, flag)
        try:
            self._httpd = _Server((host, port), probes, paths)
        except OSError as exc:
            raise VethguardError(f"cannot serve {flag} {addr}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


def fetch_status(host: str, port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET an agent's /status document (the client side of this module); None when it does not answer."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
