"""Flow records and readers of the agents' flow sockets for the flow tests (unit and lab)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def flow_rec(t: float = 1_700_000_000.0, **fields: Any) -> dict[str, Any]:
    """A record as controller.agent.flow_record.record makes it: x/c -> x/a:80 TCP denied at
    x/a's ingress on node-1 at unix time `t`, with `fields` replaced."""
    rec: dict[str, Any] = {
        "time": datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "node": "node-1",
        "direction": "ingress",
        "endpoint": "x/a",
        "from": "x/c",
        "to": "x/a",
        "src_ip": "10.244.1.12",
        "dst_ip": "10.244.1.10",
        "sport": 40000,
        "port": 80,
        "protocol": "TCP",
        "verdict": "denied",
        "reason": "DROP_POLICY",
        "tier": "NetworkPolicy",
        "policy": "x/deny",
        "policies": ["x/deny"],
        "rule": None,
        "rule_name": None,
        "rule_ref": 0,
        "peer_identity": 7,
        "peer_labels": "x:pod=c",
    }
    rec.update(fields)
    return rec


def read_flow_socket(path: str | Path, request: dict[str, Any], until: int = 0) -> list[dict[str, Any]]:
    """Every message the flow socket at `path` answers `request` with (the connection closed),
    or the first `until` flow records (messages without "_") and what came before them."""
    out: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall((json.dumps(request) + "\n").encode())
        for line in s.makefile("rb"):
            out.append(json.loads(line))
            if until and sum(1 for m in out if "_" not in m) >= until:
                break
    return out


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples (as parsed from /metrics) whose labels include `labels`."""
    return sum(v for (n, have), v in samples.items() if n == name and labels.items() <= dict(have).items())


def observe_sessions(
    lab: str,
    sessions: int,
    seconds: float,
    *args: str,
    act: Callable[[], object],
    where: Sequence[str] | None = None,
) -> list[list[dict[str, Any]]]:
    """The records each of `sessions` `vethguard observe --lab LAB -o json -f --timeout SECONDS
    *args` printed, with `act()` run once they all follow (3 s after they start); `where`
    replaces `--lab LAB` (e.g. --kubeconfig K --all-nodes)."""
    place = ["--lab", lab] if where is None else list(where)
    command = [sys.executable, "-m", "controller.cli", "observe", *place, "-o", "json"]
    follow = ["-f", "--timeout", str(seconds), *args]
    procs = [
        subprocess.Popen([*command, *follow], stdout=subprocess.PIPE, text=True) for _ in range(sessions)
    ]
    try:
        time.sleep(3)  # all are following
        act()
        outs = [p.communicate(timeout=seconds + 30)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [[json.loads(line) for line in out.splitlines()] for out in outs]
