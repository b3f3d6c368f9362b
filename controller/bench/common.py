"""Helpers shared by the benchmarks: statistics, machine description, labs, the results directory."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from controller.core.errors import VethguardError

T = TypeVar("T")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a sample; the max for q=99 of fewer than 100 values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not base or math.isnan(value) or math.isnan(base):
        return None
    return round(value / base, 3)


def rotated(items: Sequence[T], k: int) -> list[T]:
    """items rotated left by k: round k of an alternating run starts with a different one."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU count and model, kernel, memory, load at the time."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def results_dir(base: str | None, kind: str) -> Path:
    """results/<UTC timestamp>-<kind>/ unless a directory is given."""
    if base:
        path = Path(base)
    else:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path("results") / f"{stamp}-{kind}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line(module: str, argv: list[str] | None) -> str:
    """How a `python -m module` benchmark was run (its arguments: argv, else the process's)."""
    return " ".join(["python -m " + module, *(sys.argv[1:] if argv is None else argv)])


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


# --- labs --------------------------------------------------------------------------------------


def lab_cli(*args: str, stdin: str | None = None, timeout: float = 300) -> str:
    """Run `vethguard lab ...` (this interpreter); raise with its stderr on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise VethguardError(
            f"vethguard lab {' '.join(args[:3])} failed: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def lab_name(kind: str) -> str:
    """Unique per process, within the lab name rules ([a-z0-9_]{1,24})."""
    return f"b{kind}{os.getpid()}"[:24]


def lab_status(lab: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(lab_cli("status", "--name", lab, "-o", "json"))
    return doc


def log(message: str) -> None:
    """Progress on stderr (stdout is reserved for -o json)."""
    print(f"[bench {_dt.datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def logs_to_stderr() -> Iterator[None]:
    """While a benchmark measures, what the code it drives logs goes to stderr (a Datapath's
    build lines go to stdout, as the agent's do): stdout carries only the results (`-o json`)."""
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real_stdout
