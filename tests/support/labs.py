"""Labs built through the real `vethguard lab` CLI, always torn down, and the models they are
built from (tests/support/models/*.yaml). tests/lab/conftest.py makes the fixtures `lab` and
`lab_factory` from these.

Each lab gets a name unique to this test run (t<pid>n<n>); `lab_up` and the fixtures remove it
through `teardown` even when the test or `lab up` failed.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from controller.lab import cli as lab_cli
from controller.lab import client, netns
from controller.lab.apiserver import ApiUnixServer, ServerThread
from controller.lab.client import teardown
from controller.lab.store import Store
from controller.lab.topology import LabNames

MODELS = Path(__file__).parent / "models"
_counter = itertools.count()


def load_model(filename: str, /, **fields: str) -> str:
    """The YAML text of models/`filename`; with `fields`, its $placeholders filled in."""
    text = (MODELS / filename).read_text()
    return string.Template(text).substitute(fields) if fields else text


def model_text() -> str:
    """The default lab model: namespaces x and y, ext/web, pods x/a, x/b, y/a (see PODS)."""
    return load_model("default.yaml")


PODS: list[tuple[str, str]] = [
    (doc["metadata"]["namespace"], doc["metadata"]["name"])
    for doc in yaml.safe_load_all(model_text())
    if doc and doc["kind"] == "Pod"
]


# A NetworkPolicy that isolates x/a for ingress and admits only x/b: y/a -> x/a is denied.
X_A_ALLOWS_X_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-allows-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
"""


def unique_lab_name() -> str:
    return f"t{os.getpid()}n{next(_counter)}"


def run_cli(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`vethguard lab *args`; unless check=False, an AssertionError with its output if it fails."""
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


def ip_link(netns: str, ifname: str) -> dict[str, Any]:
    """`ip -j link show ifname` in the namespace `netns`."""
    argv = ["ip", "-n", netns, "-j", "link", "show", ifname]
    (link,) = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return dict(link)


@dataclass
class Lab:
    name: str
    timeout: float = 120  # per CLI command

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        return run_cli(command, "--name", self.name, *rest, stdin=stdin, check=check, timeout=self.timeout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("status", "-o", "json").stdout)
        return result

    def debug(self, *args: str) -> str:
        """stdout of `vethguard *args --lab NAME` (a debug command: get, describe, explain ...)."""
        proc = subprocess.run(
            [sys.executable, "-m", "controller.cli", *args, "--lab", self.name],
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"vethguard {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            )
        return proc.stdout

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

    def probe_tcp(self, port: int, sources: list[str], targets: list[str]) -> dict[tuple[str, str], bool]:
        """probe() over IPv4 TCP from `sources` to `targets` only."""
        args = [a for s in sources for a in ("--from", s)] + [a for t in targets for a in ("--to", t)]
        return self.probe(port, "TCP", 4, *args)


def agent_get(lab: Lab, path: str, node: int = 1) -> bytes:
    """GET `path` of node-`node`'s agent health server (its loopback, inside the node's namespace)."""

    def fetch() -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", 9890, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    return netns.run_in_netns(LabNames(lab.name).node(node), fetch)


@contextlib.contextmanager
def lab_up(model: str, *up_args: str, timeout: float = 300, prefix: str = "t") -> Iterator[Lab]:
    """`vethguard lab up` of `model` (YAML text) with `up_args`, torn down on exit whatever
    happened; for module-scoped fixtures. `prefix` replaces the name's leading t."""
    name = prefix + unique_lab_name()[1:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.yaml"
        path.write_text(model)
        try:
            run_cli("up", "--name", name, "-f", str(path), *up_args, timeout=timeout)
            yield Lab(name)
        finally:
            teardown(name)


@contextlib.contextmanager
def cli_on_store(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A lab API server on a unix socket in `directory` (no daemon, agents or namespaces; no
    root) that `vethguard lab ... --name t` talks to: its lab_cli.connect is patched."""
    store = Store()

    def lab_endpoint(method: str, path: str, body: Any) -> tuple[int, Any]:
        return 200, {"agentsEnabled": False, "resourceVersion": store.resource_version}

    server = ServerThread(ApiUnixServer(directory / "api.sock", store, lab_endpoint)).start()
    paths = SimpleNamespace(socket=directory / "api.sock", lab="t")
    monkeypatch.setattr(lab_cli, "connect", lambda lab: client.LabClient(paths))  # type: ignore[arg-type]
    try:
        yield store
    finally:
        server.stop()
