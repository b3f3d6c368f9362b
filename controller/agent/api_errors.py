"""One line for a failure of the Kubernetes API or of its configuration (pure).

The official client raises ApiException for an HTTP error status, urllib3's errors for a server
it could not talk to (refused, unresolvable, TLS, timeouts; wrapped in MaxRetryError), and
ConfigException or a YAML error for a kubeconfig it could not read. `describe(exc)` turns each
into the line a user needs (which server, what it said, what to check); None for anything else,
which stays a bug with its traceback. A WebSocket request (kubernetes.stream: pods/exec) the
server refused is an ApiException without a status whose context is websocket-client's
WebSocketBadStatusException: it is worded like any other status. The CLI prints the line as
`error: ...` (controller/cli.py)."""

from __future__ import annotations

import json
from typing import Any

# What to check, by HTTP status of an ApiException.
HINTS = {
    401: "the kubeconfig's credentials were not accepted (expired token or certificate?)",
    403: "the user lacks an RBAC permission (kubectl auth can-i ...)",
    404: "the resource or the API is not served (a CRD not installed, a wrong name or namespace?)",
    410: "the resourceVersion is too old: list again",
    429: "the API server is throttling: try again later",
}


def handshake_status(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, reason, the Status's message) of a refused WebSocket upgrade (pods/exec), which
    kubernetes.stream raises as ApiException(status=0) from a WebSocketBadStatusException."""
    cause = exc.__cause__ or exc.__context__
    status = getattr(cause, "status_code", None)
    if not isinstance(status, int) or not hasattr(cause, "resp_body"):
        return None
    reason = str(getattr(cause, "status_message", "") or "")
    return status, reason, _status_message(getattr(cause, "resp_body", None), reason)


def _status_message(body: Any, reason: Any) -> str:
    """The Status object's message, or the raw body's first line, or the HTTP reason."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.strip():
        try:
            doc = json.loads(body)
        except ValueError:
            return body.strip().splitlines()[0][:300]
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    return str(reason or "")


def _where(exc: Any) -> str:
    """scheme://host:port of the connection (NewConnectionError.conn) or pool (MaxRetryError)."""
    vars_ = getattr(exc, "__dict__", {})
    held = vars_.get("conn") or vars_.get("pool")  # attributes, not urllib3's deprecated aliases
    if held is not None and getattr(held, "host", None):
        scheme = getattr(held, "scheme", None) or ("https" if "HTTPS" in type(held).__name__ else "http")
        return f"{scheme}://{held.host}:{held.port}"
    return "the API server"


def _transport(exc: BaseException) -> str | None:
    """urllib3's failures (MaxRetryError carries the underlying one as `reason`)."""
    import urllib3.exceptions as u3

    where = _where(exc)
    cause: BaseException = exc
    if isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        cause = exc.reason
        if where == "the API server":
            where = _where(cause)
    if isinstance(cause, u3.SSLError):
        return (
            f"TLS with the API server at {where} failed: {cause} (check the kubeconfig's CA and server URL)"
        )
    # NameResolutionError < NewConnectionError < ConnectTimeoutError: the most specific first
    if isinstance(cause, u3.NameResolutionError):
        return f"cannot reach the API server at {where}: its name does not resolve"
    if isinstance(cause, u3.NewConnectionError):
        detail = str(cause).rsplit(": ", 1)[-1]
        return f"cannot reach the API server at {where}: {detail}"
    if isinstance(cause, u3.ConnectTimeoutError):
        return f"cannot reach the API server at {where}: the connection timed out"
    if isinstance(cause, u3.ReadTimeoutError):
        return f"the API server at {where} did not answer in time"
    if isinstance(cause, u3.ProtocolError):
        return f"the connection to the API server at {where} broke: {cause.args[0] if cause.args else cause}"
    if isinstance(cause, u3.HTTPError):
        return f"cannot talk to the API server at {where}: {cause}"
    return None


def describe(exc: BaseException) -> str | None:
    """One line for an API or kubeconfig failure; None when `exc` is neither."""
    import yaml
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        refused = handshake_status(exc) if status == 0 else None
        if refused is not None:
            line = f"the API server answered {refused[0]} {refused[1]}".rstrip() + f": {refused[2]}"
            return f"{line} ({HINTS[refused[0]]})" if refused[0] in HINTS else line
        if status == 0:  # raised by the client itself: TLS failures, bad arguments
            reason = " ".join(str(exc.reason or "").split())
            if reason.startswith("SSLError"):
                detail = reason.removeprefix("SSLError").strip()
                return f"TLS with the API server failed: {detail} (check the kubeconfig's CA and server URL)"
            return f"Kubernetes client error: {reason}"
        message = _status_message(exc.body, exc.reason)
        hint = HINTS.get(status)
        line = f"the API server answered {status} {exc.reason or ''}".rstrip() + f": {message}"
        return f"{line} ({hint})" if hint else line
    if isinstance(exc, ConfigException):
        return f"bad Kubernetes configuration: {exc}"
    if isinstance(exc, yaml.YAMLError):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" ({mark.name}, line {mark.line + 1})" if mark is not None else ""
        return f"the kubeconfig is not valid YAML{where}: {first}"
    return _transport(exc)
