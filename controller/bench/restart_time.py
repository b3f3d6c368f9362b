"""Agent restart time and memory on a running lab: kill a node's agent, time until the agent the
lab starts again reports ready (/status), and read that agent's VmRSS.

    python -m controller.bench.restart_time --lab NAME [--node node-1] [--rounds 3]

Two kinds of restart, `rounds` of each: "compile" first removes the node's pinned builds
(<pin dir>/build-*: controller/datapath/build.py), so the new agent compiles its programs (what a
first start or an upgrade does); "cached" leaves them, so the new agent reuses the build (an agent
whose programs did not change). An agent that compiles in-process (before issue 19) compiles
either way. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from controller.bench.control_plane import rss_kb
from controller.lab import topology
from controller.lab.agents import query_agent
from controller.lab.state import LabPaths

READY_TIMEOUT = 120.0
SETTLE = 1.0  # seconds after ready before reading VmRSS (the first pass has run by then)


def agent_pid(paths: LabPaths, node: str) -> int:
    return int(paths.agent_pid(node).read_text())


def wait_ready(paths: LabPaths, node: str, old_pid: int) -> tuple[float, int]:
    """(monotonic time the new agent reported ready, its pid)."""
    node_ns = topology.LabNames(paths.lab).node(topology.node_index(node) or 1)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            pid = agent_pid(paths, node)
        except (OSError, ValueError):
            pid = old_pid
        if pid != old_pid:
            report = query_agent(node_ns, timeout=0.5)
            if report and report.get("ready"):
                return time.monotonic(), pid
        time.sleep(0.05)
    raise SystemExit(f"agent {node} not ready {READY_TIMEOUT} s after a restart: {paths.agent_log(node)}")


def restart(paths: LabPaths, node: str, compile_: bool) -> dict[str, Any]:
    if compile_:
        for build in (paths.pin_root / node).glob("build-*"):
            shutil.rmtree(build, ignore_errors=True)
    pid = agent_pid(paths, node)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    ready_at, new_pid = wait_ready(paths, node, pid)
    time.sleep(SETTLE)
    return {
        "kind": "compile" if compile_ else "cached",
        "ready_s": ready_at - killed,
        "rss_kib": rss_kb(new_pid).get("VmRSS"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.bench.restart_time",
        description="Time agent restarts (kill -> ready) on a running lab and read the new agent's VmRSS.",
    )
    parser.add_argument("--lab", required=True, help="the lab's name (`vethguard lab up --name`)")
    parser.add_argument("--node", default="node-1", help="whose agent to restart (default node-1)")
    parser.add_argument("--rounds", type=int, default=3, help="restarts of each kind (default 3)")
    args = parser.parse_args(argv)
    paths = LabPaths(args.lab)
    runs = []
    for _ in range(args.rounds):
        for compile_ in (True, False):
            runs.append(restart(paths, args.node, compile_))
            print(json.dumps(runs[-1]), flush=True)
    for kind in ("compile", "cached"):
        mine = [r for r in runs if r["kind"] == kind]
        ready = [r["ready_s"] for r in mine]
        rss = [r["rss_kib"] for r in mine if r["rss_kib"] is not None]
        print(
            f"{kind}: kill -> ready {', '.join(f'{s:.2f}' for s in ready)} s "
            f"(median {statistics.median(ready):.2f}); VmRSS {', '.join(f'{k / 1024:.1f}' for k in rss)} MiB",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
