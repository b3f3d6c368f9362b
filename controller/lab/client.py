"""A lab's client library: talk to its daemon over /run/vethguard/labs/<lab>/api.sock (the
Kubernetes API for writes, /lab/v1/status), start the daemon, apply and delete manifests, wait
until the agents realized a generation, and tear a lab down. Used by `vethguard lab`, the debug
commands, the benchmarks and the tests.
"""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controller.core.errors import VethguardError
from controller.lab import dns, netns, topology
from controller.lab import manifests as manifest_io
from controller.lab.manifests import Manifest
from controller.lab.state import (
    DAEMON_MODULE,
    LabPaths,
    check_name,
    daemon_pid,
    is_agent,
    read_pid,
    terminate,
)
from controller.lab.store import Resource

DAEMON_START_TIMEOUT = 30.0
POLL_INTERVAL = 0.1


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


class LabClient:
    """Requests to one lab's daemon over its unix socket."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        conn = _UnixConnection(self.paths.socket, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except OSError as exc:
            raise VethguardError(f"lab {self.paths.lab!r}: cannot reach its daemon ({exc})") from exc
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def alive(self) -> bool:
        try:
            status, _ = self.request("GET", "/livez", timeout=2.0)
        except VethguardError:
            return False
        return status == 200

    def status(self) -> dict[str, Any]:
        code, body = self.request("GET", "/lab/v1/status")
        if code != 200 or not isinstance(body, dict):
            raise VethguardError(f"lab {self.paths.lab!r}: status request failed ({code}): {body}")
        return body


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text)


def start_daemon(paths: LabPaths) -> None:
    """Start the lab daemon detached from this process; return once its API answers."""
    log = open(paths.daemon_log, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", DAEMON_MODULE, "--name", paths.lab],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    finally:
        log.close()
    client = LabClient(paths)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VethguardError(
                f"lab {paths.lab!r}: the daemon exited with {proc.returncode} while starting:\n"
                f"{_log_tail(paths.daemon_log)}"
            )
        if paths.socket.exists() and client.alive():
            return
        time.sleep(POLL_INTERVAL)
    raise VethguardError(f"lab {paths.lab!r}: the daemon did not serve within {DAEMON_START_TIMEOUT:.0f}s")


def connect(lab: str) -> LabClient:
    """A client for a running lab; a lab whose daemon died is resumed from its saved state."""
    paths = LabPaths(check_name(lab))
    if not paths.config.exists():
        raise VethguardError(
            f"lab {lab!r} is not running (start it with: vethguard lab up --name {lab} -f MODEL)"
        )
    client = LabClient(paths)
    if daemon_pid(paths) is not None and client.alive():
        return client
    print(f"lab {lab!r}: its daemon was not running; starting it again from the saved state", file=sys.stderr)
    start_daemon(paths)
    return client


def collection_path(resource: Resource, namespace: str) -> str:
    base = "/api/v1" if not resource.group else f"/apis/{resource.group}/{resource.version}"
    if resource.namespaced:
        return f"{base}/namespaces/{namespace}/{resource.plural}"
    return f"{base}/{resource.plural}"


def object_path(manifest: Manifest) -> str:
    return f"{collection_path(manifest.resource, manifest.namespace)}/{manifest.name}"


def _message(body: Any) -> str:
    """The API server's message; a 422 with several causes gets one line per cause, as kubectl
    prints it."""
    if not isinstance(body, dict) or not body.get("message"):
        return str(body)
    message = str(body["message"])
    details = body.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if body.get("reason") != "Invalid" or not isinstance(causes, list) or len(causes) < 2:
        return message
    lines = [message.split(" is invalid: ")[0] + " is invalid:"]
    lines += [f"  * {c.get('field')}: {c.get('message')}" for c in causes if isinstance(c, dict)]
    return "\n".join(lines)


def _write_one(client: LabClient, manifest: Manifest) -> tuple[str, int]:
    """Create or replace one object; return (verb, resourceVersion)."""
    obj = json.loads(json.dumps(manifest.obj))
    obj.setdefault("metadata", {}).pop("resourceVersion", None)
    code, current = client.request("GET", object_path(manifest))
    if code == 404:
        code, body = client.request("POST", collection_path(manifest.resource, manifest.namespace), obj)
        verb = "created"
    elif code == 200:
        code, body = client.request("PUT", object_path(manifest), obj)
        verb = "configured"
    else:
        raise VethguardError(f"{manifest.display}: {_message(current)}")
    if code not in (200, 201):
        raise VethguardError(f"{manifest.display} ({manifest.origin}): {_message(body)}")
    return verb, int(body["metadata"]["resourceVersion"])


def apply_manifests(
    client: LabClient, manifests: list[Manifest], quiet: bool = False
) -> tuple[int, list[str]]:
    """Write every manifest (kind order); return the last resourceVersion written and the errors."""
    last, errors = 0, []
    for manifest in manifest_io.apply_order(manifests):
        try:
            verb, rv = _write_one(client, manifest)
        except VethguardError as exc:
            errors.append(str(exc))
            continue
        last = max(last, rv)
        if not quiet:
            print(f"{manifest.display} {verb}")
    return last, errors


def delete_manifests(
    client: LabClient, manifests: list[Manifest], ignore_not_found: bool
) -> tuple[int, list[str]]:
    last, errors = 0, []
    for manifest in manifest_io.delete_order(manifests):
        code, body = client.request("DELETE", object_path(manifest))
        if code == 404 and ignore_not_found:
            continue
        if code != 200:
            errors.append(f"{manifest.display}: {_message(body)}")
            continue
        last = max(last, int(body["metadata"]["resourceVersion"]))
        print(f"{manifest.display} deleted")
    return last, errors


def _lagging(status: dict[str, Any], target: int) -> list[str]:
    lagging = []
    for node, agent in sorted(status.get("agents", {}).items()):
        realized = agent.get("realized_generation")
        if agent.get("healthy") and isinstance(realized, int) and realized >= target:
            continue
        state = (
            "healthy"
            if agent.get("healthy")
            else ("running, not ready" if agent.get("running") else "not running")
        )
        lagging.append(
            f"{node} ({state}, realized_generation {realized}, restarts {agent.get('restarts', 0)})"
        )
    return lagging


def _agent_log_excerpt(paths: LabPaths, node: str) -> str:
    return f"  {paths.agent_log(node)}:\n{_log_tail(paths.agent_log(node), 8)}"


def wait_realized(client: LabClient, target: int, timeout: float) -> None:
    """Return once every agent is healthy and reports realized_generation >= target."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.status()
        if not status.get("agentsEnabled", True):
            return
        lagging = _lagging(status, target)
        if not lagging:
            return
        if time.monotonic() >= deadline:
            logs = "\n".join(_agent_log_excerpt(client.paths, line.split()[0]) for line in lagging)
            raise VethguardError(
                f"timed out after {timeout:.0f}s waiting for the agents to realize resourceVersion {target}: "
                f"{'; '.join(lagging)}\n{logs}"
            )
        time.sleep(POLL_INTERVAL)


def exec_netns(lab: str, target: str) -> str:
    names = topology.LabNames(check_name(lab))
    kind, _, rest = target.partition("/")
    if kind == "ext" and rest:
        ns_name = names.ext(rest)
    elif kind == "node" and topology.node_index(rest) is not None:
        ns_name = names.node(topology.node_index(rest) or 1)
    elif rest and "/" not in rest:
        ns_name = names.pod(kind, rest)
    else:
        raise VethguardError(f"{target!r}: name a pod as NAMESPACE/POD (or ext/NAME, node/node-N)")
    if not netns.exists(ns_name):
        raise VethguardError(f"{target!r} is not in lab {lab!r} (no network namespace {ns_name})")
    return ns_name


def teardown(lab: str) -> list[str]:
    """Remove every process, namespace, pinned object and file of a lab; works without its daemon."""
    paths = LabPaths(lab)
    removed: list[str] = []
    pid = daemon_pid(paths)
    if pid is not None:
        terminate(pid)
        removed.append(f"daemon (pid {pid})")
    for pid_file in sorted(paths.root.glob("agent-*.pid")) if paths.root.exists() else []:
        node = pid_file.name.removeprefix("agent-").removesuffix(".pid")
        agent = read_pid(pid_file)
        if agent is not None and is_agent(agent, node):
            terminate(agent)
            removed.append(f"agent {node} (pid {agent})")
    names = topology.LabNames(lab)
    for leftover in netns.pids_in(names.owned()):
        if leftover != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
            removed.append(f"process {leftover}")
    removed.extend(f"namespace {n}" for n in topology.Topology(lab).delete_all())
    removed.extend(dns.remove_all_resolv_confs(names.prefix))
    if paths.pin_root.exists():
        shutil.rmtree(paths.pin_root, ignore_errors=True)
        removed.append(str(paths.pin_root))
    if paths.root.exists():
        shutil.rmtree(paths.root, ignore_errors=True)
        removed.append(str(paths.root))
    return removed
