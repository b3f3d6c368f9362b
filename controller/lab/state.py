"""Where a lab keeps its state, and how its processes are recognised (pid files + cmdline)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.core.errors import VethguardError

LABS_DIR = Path("/run/vethguard/labs")
BPF_ROOT = Path("/sys/fs/bpf/vethguard")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")
DAEMON_MODULE = "controller.lab.daemon"


def check_name(lab: str) -> str:
    if not NAME_RE.match(lab):
        raise VethguardError(
            f"invalid lab name {lab!r}: use 1-24 characters a-z, 0-9 and '_' (no '-': "
            "namespace names are vg-<lab>-...)"
        )
    return lab


# kube-apiserver's watch cache sends a watch that asked for them a BOOKMARK about once a minute
BOOKMARK_INTERVAL = 60.0


@dataclass(frozen=True)
class LabConfig:
    name: str
    nodes: int = 1
    cni: str = "routed"
    agents: bool = True
    dns: bool = False  # cluster DNS (controller.lab.dns): dnsmasq pod + kube-dns Service
    bookmark_interval: float = BOOKMARK_INTERVAL  # seconds between a watch's BOOKMARKs (0: none)
    agent_pods: bool = False  # the agents as pods one can exec into (controller.lab.agent_pods)


@dataclass(frozen=True)
class LabPaths:
    lab: str

    @property
    def root(self) -> Path:
        return LABS_DIR / self.lab

    @property
    def config(self) -> Path:
        return self.root / "lab.json"

    @property
    def store(self) -> Path:
        return self.root / "store.json"

    @property
    def socket(self) -> Path:
        return self.root / "api.sock"

    @property
    def kubeconfig(self) -> Path:
        """For this machine's own clients (kubectl, the CLI): the API on 127.0.0.1."""
        return self.root / "kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        """For clients inside the lab's nodes (the agents): the API on the fabric's address."""
        return self.root / "kubeconfig-nodes"

    @property
    def daemon_pid(self) -> Path:
        return self.root / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    def agent_pid(self, node: str) -> Path:
        return self.root / f"agent-{node}.pid"

    def agent_log(self, node: str) -> Path:
        return self.root / f"agent-{node}.log"

    def flow_socket(self, node: str) -> Path:
        """The node's agent serves its flows here (controller.agent.flow_server)."""
        return self.root / f"flows-{node}.sock"

    @property
    def pin_root(self) -> Path:
        return BPF_ROOT / f"lab-{self.lab}"

    def read_config(self) -> LabConfig:
        try:
            return LabConfig(**json.loads(self.config.read_text()))
        except FileNotFoundError as exc:
            raise VethguardError(f"lab {self.lab!r} does not exist (no {self.config})") from exc

    def write_config(self, config: LabConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(asdict(config), indent=2))


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_daemon(pid: int, lab: str) -> bool:
    argv = cmdline(pid)
    return DAEMON_MODULE in argv and lab in argv


def is_agent(pid: int, node: str) -> bool:
    argv = cmdline(pid)
    return "agent" in argv and node in argv


def daemon_pid(paths: LabPaths) -> int | None:
    """The running daemon's pid, or None (a stale pid file does not count)."""
    pid = read_pid(paths.daemon_pid)
    return pid if pid is not None and is_daemon(pid, paths.lab) else None


def terminate(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] == "Z"
