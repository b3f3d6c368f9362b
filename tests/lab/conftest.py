"""Fixtures for lab tests: labs built through the real `vethguard lab` CLI, always torn down.

Each lab gets a name unique to this test run (t<pid><n>), and a finalizer that removes it
through `teardown` even when the test or `lab up` failed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.lab.client import teardown

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {name: web}
spec:
  ip: [203.0.113.5, "2001:db8::5"]
  ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}, {port: 80, protocol: SCTP}]
"""
POD = """
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}
spec:
  containers:
  - name: serve
    ports:
    - {{containerPort: 80, protocol: TCP, name: serve-80-tcp}}
    - {{containerPort: 80, protocol: UDP, name: serve-80-udp}}
    - {{containerPort: 80, protocol: SCTP, name: serve-80-sctp}}
"""
PODS = [("x", "a"), ("x", "b"), ("y", "a")]
_counter = itertools.count()


def model_text() -> str:
    return MODEL + "".join(POD.format(ns=ns, name=name) for ns, name in PODS)


def unique_lab_name() -> str:
    return f"t{os.getpid()}n{next(_counter)}"


def run_cli(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vethguard lab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
        )
    return proc


@dataclass
class Lab:
    name: str

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        return run_cli(command, "--name", self.name, *rest, stdin=stdin, check=check)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("status", "-o", "json").stdout)
        return result

    def probe(self, port: int, protocol: str, family: int = 4, *extra: str) -> dict[tuple[str, str], bool]:
        out = self.cli(
            "probe",
            "--port",
            str(port),
            "--protocol",
            protocol,
            "--family",
            str(family),
            "-o",
            "json",
            *extra,
        )
        doc = json.loads(out.stdout)
        assert (doc["port"], doc["protocol"], doc["family"]) == (port, protocol, family)
        return {(r["from"], r["to"]): r["connected"] for r in doc["results"]}


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Build labs (agents off unless asked); every one is removed at the end of the test."""
    created: list[str] = []

    def make(*up_args: str, model: str | None = None, agents: bool = False) -> Lab:
        name = unique_lab_name()
        created.append(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(model if model is not None else model_text())
        run_cli("up", "--name", name, "-f", str(path), *up_args, *([] if agents else ["--no-agents"]))
        return Lab(name)

    try:
        yield make
    finally:
        for name in created:
            teardown(name)


@contextlib.contextmanager
def lab_up(model: str, *up_args: str, timeout: float = 300) -> Iterator[Lab]:
    """`vethguard lab up` of `model` (YAML text) with `up_args`, torn down on exit whatever
    happened; for module-scoped fixtures."""
    name = unique_lab_name()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.yaml"
        path.write_text(model)
        try:
            run_cli("up", "--name", name, "-f", str(path), *up_args, timeout=timeout)
            yield Lab(name)
        finally:
            teardown(name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One two-node lab (agents off) shared by a module's tests that do not change it much."""
    with lab_up(model_text(), "--nodes", "2", "--no-agents", timeout=120) as made:
        yield made
