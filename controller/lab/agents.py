"""The lab's agents: one `vethguard agent` process per lab node, run inside the node's network
namespace, restarted when it dies, and queried for its /status on the node's loopback.

An agent's realized_generation (the lab contract's) is worked out here, by the lab that issued
the resourceVersions, from what the agent says it realized per kind (controller.agent.realization)
and the store's record of when each kind was last written (Store.realized_generation); the agent
itself never compares resourceVersions."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from controller.agent.health import fetch_status
from controller.agent.kube_api import KINDS
from controller.lab import netns, topology
from controller.lab.state import LabConfig, LabPaths, is_agent, read_pid, terminate
from controller.lab.store import RESOURCES, Store

log = logging.getLogger("vethguard.lab.daemon")

AGENT_STATUS_PORT = 9890
SUPERVISE_INTERVAL = 0.2


class AgentSupervisor:
    """Starts one agent per node inside its namespace and restarts any that exits."""

    def __init__(
        self, config: LabConfig, paths: LabPaths, topo: topology.Topology, store: Store | None = None
    ) -> None:
        self.config = config
        self.paths = paths
        self.topo = topo
        self.store = store
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agents", daemon=True)

    @property
    def nodes(self) -> list[str]:
        return [topology.node_name(i) for i in range(1, self.config.nodes + 1)]

    def command(self, node: str) -> list[str]:
        index = topology.node_index(node) or 1
        return [
            "nsenter",
            f"--net={netns.netns_path(self.topo.names.node(index))}",
            "--",
            sys.executable,
            "-m",
            "controller.cli",
            "agent",
            "--node",
            node,
            "--kubeconfig",
            str(self.paths.node_kubeconfig),
            "--pin-root",
            str(self.paths.pin_root),
            "--state-dir",  # the lab's own clsact ledger, beside its other state
            str(self.paths.root),
            "--flow-socket",
            str(self.paths.flow_socket(node)),
        ]

    def start(self) -> AgentSupervisor:
        for node in self.nodes:
            self._kill_stale(node)
            self._spawn(node)
        self._thread.start()
        return self

    def _kill_stale(self, node: str) -> None:
        pid = read_pid(self.paths.agent_pid(node))
        if pid is not None and is_agent(pid, node):
            terminate(pid)

    def _spawn(self, node: str) -> None:
        log_file = open(self.paths.agent_log(node), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                self.command(node),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                env=agent_env(self.paths),
            )
        finally:
            log_file.close()
        self.procs[node] = proc
        self.paths.agent_pid(node).write_text(f"{proc.pid}\n")
        log.info("agent %s started (pid %d)", node, proc.pid)

    def _loop(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            for node, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                self.restarts[node] = self.restarts.get(node, 0) + 1
                log.warning("agent %s exited with %s; starting it again", node, code)
                self._spawn(node)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for node, proc in self.procs.items():
            terminate(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            self.paths.agent_pid(node).unlink(missing_ok=True)

    def status(self, node: str) -> dict[str, Any]:
        proc = self.procs.get(node)
        alive = proc is not None and proc.poll() is None
        report = query_agent(self.topo.names.node(topology.node_index(node) or 1)) if alive else None
        realized = self.realized_generation(report) if report else None
        return {
            "pid": proc.pid if proc is not None else None,
            "running": alive,
            "healthy": bool(alive and report and report.get("ready")),
            "realized_generation": realized,
            "restarts": self.restarts.get(node, 0),
            "errors": (report or {}).get("errors") or [],
            "policies": (report or {}).get("policies") or {},  # per policy: generation, selected pods
            "cluster_policies": (report or {}).get("cluster_policies"),  # ClusterNetworkPolicies seen
        }

    def realized_generation(self, report: dict[str, Any]) -> int | None:
        return realized_generation(self.store, report) if self.store is not None else None


def realized_generation(store: Store, report: Mapping[str, Any]) -> int | None:
    """The store's resourceVersion an agent's maps have caught up with, from its /status
    (`realized`: per kind the last resourceVersion it had seen); None: unknown."""
    realized = report.get("realized")
    if not isinstance(realized, Mapping) or not realized:
        return None
    seen = {}
    for kind, entry in realized.items():
        key = STORE_KEYS.get(kind)
        if key is not None and isinstance(entry, Mapping):
            seen[key] = str(entry.get("resourceVersion") or "")
    return store.realized_generation(seen)


def _store_keys() -> dict[str, str]:
    """The agent's kind names (kube_api.KINDS) -> the lab store's resource keys."""
    by_kind = {(r.api_version, r.kind): key for key, r in RESOURCES.items()}
    return {
        spec.kind: by_kind[(spec.api_version, spec.object_kind)]
        for spec in KINDS
        if (spec.api_version, spec.object_kind) in by_kind
    }


STORE_KEYS = _store_keys()

AGENT_ENV_FILE = "agent.env"


def agent_env(paths: LabPaths) -> dict[str, str]:
    """The daemon's environment plus KEY=VALUE lines of <lab dir>/agent.env, read at every
    (re)start: lets a test restart agents as a "newer version" (VETHGUARD_EXTRA_CFLAGS=...)."""
    env = dict(os.environ)
    try:
        text = (paths.root / AGENT_ENV_FILE).read_text()
    except FileNotFoundError:
        return env
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            env[key.strip()] = value.strip()
    return env


def query_agent(node_netns: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET /status from the agent on 127.0.0.1:9890 inside the node's namespace."""
    try:
        return netns.run_in_netns(node_netns, lambda: fetch_status("127.0.0.1", AGENT_STATUS_PORT, timeout))
    except netns.NetnsError:
        return None
