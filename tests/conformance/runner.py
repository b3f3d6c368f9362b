"""Replay conformance scenarios (../shared/conformance/*.yaml) through the lab CLI and score them.

The format is described in ../shared/conformance/README.md. Everything goes through the
`vethguard lab ...` command line exactly as an outside harness would drive it: the runner
never imports the lab or the agent.

    python tests/conformance/runner.py [--family 4|6] [--nodes N] [--cni routed|bridge]
                                       [--only ID ...] FILE...

prints one line per scenario and closes with "N passed, N failed".
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ORDER = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
PLACEHOLDER = re.compile(r"\{\{\s*ip\s+([^|}\s]+)\s*(?:\|\s*(host|net\s+\d+)\s*)?\}\}")


def shared_conformance_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "conformance"


def scenario_files() -> list[Path]:
    """The NetworkPolicy files, then the ClusterNetworkPolicy ones (cnp/)."""
    root = shared_conformance_dir()
    return sorted(root.glob("*.yaml")) + sorted(root.glob("cnp/*.yaml"))


def vethguard_command() -> list[str]:
    """The installed CLI when present, else this checkout's module (same code)."""
    exe = shutil.which("vethguard")
    return [exe] if exe else [sys.executable, "-m", "controller.cli"]


class LabError(RuntimeError):
    pass


PROBE_TIMEOUT = 0.5  # seconds per probe


@dataclass
class Lab:
    name: str
    nodes: int = 1
    cni: str = "routed"
    cmd: list[str] = field(default_factory=vethguard_command)

    def run(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        argv = [*self.cmd, "lab", *args, "--name", self.name]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise LabError(
                f"{' '.join(argv[len(self.cmd) :])} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def up(self, manifests: list[dict[str, Any]]) -> None:
        path = Path(f"/tmp/vethguard-conformance-{self.name}.yaml")
        path.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        try:
            self.run("up", "-f", str(path), "--nodes", str(self.nodes), "--cni", self.cni, timeout=600)
        finally:
            path.unlink(missing_ok=True)

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        self.run("apply", "-f", "-", stdin=yaml.safe_dump_all(manifests, sort_keys=False))

    def delete(self, manifests: list[dict[str, Any]], ignore_not_found: bool = False) -> None:
        extra = ["--ignore-not-found"] if ignore_not_found else []
        self.run("delete", "-f", "-", *extra, stdin=yaml.safe_dump_all(manifests, sort_keys=False))

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "-o", "json"))

    def probe(
        self, port: int, protocol: str, family: int, sources: Sequence[str], targets: Sequence[str]
    ) -> dict[tuple[str, str], bool]:
        args = ["probe", "--port", str(port), "--protocol", protocol, "--family", str(family), "-o", "json"]
        # A blocked cell costs the whole timeout; a connection between lab namespaces completes in
        # milliseconds, and a connected cell that timed out anyway is probed again
        # (_probe_until_stable), so half a second is plenty.
        args += ["--timeout", str(PROBE_TIMEOUT)]
        for s in sources:
            args += ["--from", s]
        for t in targets:
            args += ["--to", t]
        out = json.loads(self.run(*args))
        return {(r["from"], r["to"]): bool(r["connected"]) for r in out["results"]}

    def down(self) -> None:
        subprocess.run([*self.cmd, "lab", "down", "--name", self.name], capture_output=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# models


def default_model() -> dict[str, Any]:
    ports = [
        {"port": p, "protocol": proto, "name": f"serve-{p}-{proto.lower()}"}
        for p in (80, 81)
        for proto in ("TCP", "UDP", "SCTP")
    ]
    return {
        "namespaces": [{"name": n, "labels": {"ns": n}} for n in "xyz"],
        "pods": [
            {"namespace": n, "name": p, "labels": {"pod": p}, "ports": ports} for n in "xyz" for p in "abc"
        ],
        "externals": [],
    }


def namespace_manifest(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}}


def pod_manifest(pod: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    containers = []
    for i, port in enumerate(pod.get("ports") or []):
        proto = port.get("protocol", "TCP")
        spec: dict[str, Any] = {"containerPort": port["port"], "protocol": proto}
        if port.get("name"):
            spec["name"] = port["name"]
        containers.append(
            {"name": f"cont-{port['port']}-{proto.lower()}-{i}", "image": "agnhost", "ports": [spec]}
        )
    if not containers:
        containers = [{"name": "main", "image": "agnhost"}]
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod["name"],
            "namespace": pod["namespace"],
            "labels": dict(pod.get("labels") or {} if labels is None else labels),
        },
        "spec": {"containers": containers},
    }
    if pod.get("node"):
        manifest["spec"]["nodeName"] = pod["node"]
    if pod.get("hostNetwork"):
        manifest["spec"]["hostNetwork"] = True
    return manifest


def external_manifest(ext: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "lab.vethguard.dev/v1alpha1",
        "kind": "ExternalHost",
        "metadata": {"name": ext["name"]},
        "spec": {"ip": ext["ip"], "ports": list(ext.get("ports") or [])},
    }


def model_manifests(model: dict[str, Any]) -> list[dict[str, Any]]:
    docs = [namespace_manifest(n["name"], n.get("labels") or {}) for n in model["namespaces"]]
    docs += [pod_manifest(p) for p in model["pods"]]
    docs += [external_manifest(e) for e in model.get("externals") or []]
    return docs


# ---------------------------------------------------------------------------------------------
# placeholders


def pod_ip(status: dict[str, Any], pod: str, family: int) -> str:
    for ip in status["pods"][pod]["ips"]:
        if ipaddress.ip_address(ip).version == family:
            return str(ip)
    raise LabError(f"pod {pod} has no IPv{family} address in lab status")


def substitute(obj: Any, status: dict[str, Any], family: int) -> Any:
    if isinstance(obj, str):

        def repl(m: re.Match[str]) -> str:
            ip = pod_ip(status, m.group(1), family)
            mod = (m.group(2) or "").split()
            if not mod:
                return ip
            if mod[0] == "host":
                return f"{ip}/{32 if family == 4 else 128}"
            return str(ipaddress.ip_network(f"{ip}/{mod[1]}", strict=False))

        return PLACEHOLDER.sub(repl, obj)
    if isinstance(obj, list):
        return [substitute(v, status, family) for v in obj]
    if isinstance(obj, dict):
        return {k: substitute(v, status, family) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# scoring


@dataclass
class Outcome:
    scenario: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def parse_matrix(text: str) -> dict[tuple[str, str], bool]:
    rows = [line.split() for line in text.strip().splitlines() if line.strip()]
    if len(rows) != 9 or any(len(r) != 9 for r in rows):
        raise ValueError("expect matrix must be 9 rows of 9 cells")
    return {(ORDER[i], ORDER[j]): cell == "." for i, row in enumerate(rows) for j, cell in enumerate(row)}


def render_matrix(cells: dict[tuple[str, str], bool], names: Sequence[str]) -> str:
    width = max(len(n) for n in names)
    lines = [" " * width + " " + " ".join(names)]
    for s in names:
        lines.append(
            s.ljust(width) + " " + " ".join(("." if cells.get((s, d)) else "X").center(len(d)) for d in names)
        )
    return "\n".join(lines)


API_VERSIONS = {
    "NetworkPolicy": "networking.k8s.io/v1",
    "ClusterNetworkPolicy": "policy.networking.k8s.io/v1alpha2",
}


def object_ref(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    """A manifest naming one object (for `lab delete`)."""
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSIONS.get(kind, "v1"), "kind": kind, "metadata": meta}


@dataclass
class ModelLab:
    """A lab up with one model, and what scenarios changed in it since (undone by reset)."""

    lab: Lab
    model: dict[str, Any]
    dirty_objects: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, namespace, name)
    dirty_labels: bool = False


class Runner:
    """Replays scenarios; keeps one lab per distinct model (the default 9-pod model, the
    ClusterNetworkPolicy scenarios' houses) and resets it between scenarios."""

    def __init__(
        self,
        family: int = 4,
        nodes: int = 1,
        prefix: str = "conf",
        retries: int = 2,
        log: Any = print,
        cni: str = "routed",
    ) -> None:
        self.family = family
        self.nodes = nodes
        self.cni = cni
        self.prefix = prefix
        self.retries = retries
        self.log = log
        self.default_model = default_model()
        self.labs: dict[str, ModelLab] = {}

    def close(self) -> None:
        for ml in self.labs.values():
            ml.lab.down()
        self.labs.clear()

    # -- lab lifecycle --------------------------------------------------------------------

    def _lab_for(self, scenario: dict[str, Any]) -> ModelLab:
        model = copy.deepcopy(scenario.get("model") or self.default_model)
        model.setdefault("externals", [])
        key = json.dumps(model, sort_keys=True)
        ml = self.labs.get(key)
        if ml is not None:
            self._reset(ml)
            return ml
        nodes = len(model["nodes"]) if model.get("nodes") else self.nodes
        lab = Lab(f"{self.prefix}{os.getpid() % 10000}m{len(self.labs)}", nodes=nodes, cni=self.cni)
        lab.down()
        lab.up(model_manifests(model))
        ml = self.labs[key] = ModelLab(lab, model)
        return ml

    def _reset(self, ml: ModelLab) -> None:
        if ml.dirty_objects:
            refs = [object_ref(kind, name, ns or None) for kind, ns, name in sorted(ml.dirty_objects)]
            ml.lab.delete(refs, ignore_not_found=True)
        if ml.dirty_labels:
            ml.lab.apply(
                [namespace_manifest(n["name"], n.get("labels") or {}) for n in ml.model["namespaces"]]
                + [pod_manifest(p) for p in ml.model["pods"]]
            )
        ml.dirty_objects.clear()
        ml.dirty_labels = False

    # -- one scenario ---------------------------------------------------------------------

    def run_scenario(self, scenario: dict[str, Any]) -> Outcome:
        start = time.monotonic()
        out = Outcome(scenario["id"], passed=True)
        try:
            ml = self._lab_for(scenario)
            status = ml.lab.status()
            for n, step in enumerate(scenario.get("steps") or [], start=1):
                self._act(ml, step, status)
                if "probe" in step:
                    self._score_matrix(ml.lab, step["probe"], n, out)
                if step.get("checks"):
                    self._score_checks(ml.lab, step["checks"], n, out)
        except Exception as exc:  # a broken lab or CLI is a failed scenario, with the reason
            out.passed = False
            out.failures.append(f"error: {exc}")
        out.seconds = time.monotonic() - start
        out.passed = out.passed and not out.failures
        return out

    def _act(self, ml: ModelLab, step: dict[str, Any], status: dict[str, Any]) -> None:
        if step.get("delete"):
            refs = [object_ref(r["kind"], r["name"], r.get("namespace")) for r in step["delete"]]
            for r in step["delete"]:
                ml.dirty_objects.discard((r["kind"], r.get("namespace", ""), r["name"]))
            ml.lab.delete(refs)
        if step.get("apply"):
            docs = substitute(step["apply"], status, self.family)
            for d in docs:
                meta = d["metadata"]
                namespace = meta.get("namespace", "default") if d.get("kind") == "NetworkPolicy" else ""
                ml.dirty_objects.add((d["kind"], namespace, meta["name"]))
            ml.lab.apply(docs)
        if step.get("label"):
            ml.lab.apply([self._relabel(ml.model, step["label"])])
            ml.dirty_labels = True

    @staticmethod
    def _relabel(model: dict[str, Any], label: dict[str, Any]) -> dict[str, Any]:
        labels = dict(label.get("labels") or {})
        if label["kind"] == "Namespace":
            return namespace_manifest(label["name"], labels)
        for pod in model["pods"]:
            if pod["namespace"] == label["namespace"] and pod["name"] == label["name"]:
                return pod_manifest(pod, labels)
        raise LabError(f"label step names unknown pod {label['namespace']}/{label['name']}")

    def _probe_until_stable(
        self,
        lab: Lab,
        port: int,
        protocol: str,
        expect: dict[tuple[str, str], bool],
        scored: Iterable[tuple[str, str]],
    ) -> dict[tuple[str, str], bool]:
        """Probe, then re-probe only cells that look like packet loss (expected connected, got blocked)."""
        pairs = list(expect)
        sources = sorted({s for s, _ in pairs})
        targets = sorted({t for _, t in pairs})
        got = lab.probe(port, protocol, self.family, sources, targets)
        scored = set(scored)
        for _ in range(self.retries):
            lost = [(s, t) for (s, t) in scored if expect[(s, t)] and not got.get((s, t), False)]
            if not lost:
                break
            for s, t in lost:
                got.update(lab.probe(port, protocol, self.family, [s], [t]))
        return got

    def _score_matrix(self, lab: Lab, probe: dict[str, Any], step: int, out: Outcome) -> None:
        expect = parse_matrix(probe["expect"])
        scored = [k for k in expect if k[0] != k[1]]
        got = self._probe_until_stable(lab, probe["port"], probe["protocol"], expect, scored)
        wrong = [k for k in scored if got.get(k) != expect[k]]
        diag = [k for k in expect if k[0] == k[1] and got.get(k) != expect[k]]
        if diag:
            out.notes.append(f"step {step}: diagonal differs (not scored): {', '.join(s for s, _ in diag)}")
        if wrong:
            out.failures.append(
                f"step {step} {probe['protocol']}/{probe['port']}: {len(wrong)} cells wrong: "
                + ", ".join(f"{s}->{t} expected {'.' if expect[(s, t)] else 'X'}" for s, t in wrong)
                + "\n"
                + render_matrix(got, ORDER)
            )

    def _score_checks(self, lab: Lab, checks: list[dict[str, Any]], step: int, out: Outcome) -> None:
        """A step's checks, probed together per (port, protocol): one `lab probe` of their sources x
        destinations (in parallel, like a matrix) instead of one probe call per check."""
        groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for check in checks:
            key = (check["from"], check["to"])
            if self.family == 6 and any(x.startswith("ext/") for x in key):
                out.notes.append(
                    f"step {step}: {key[0]}->{key[1]} skipped on IPv6 (external host is IPv4 only)"
                )
                continue
            groups.setdefault((check["port"], check.get("protocol", "TCP")), []).append(check)
        for (port, protocol), group in groups.items():
            expect = {(c["from"], c["to"]): bool(c["connected"]) for c in group}
            got = self._probe_until_stable(lab, port, protocol, expect, list(expect))
            for c in group:
                key, want = (c["from"], c["to"]), bool(c["connected"])
                if got.get(key) != want:
                    out.failures.append(
                        f"step {step}: {key[0]} -> {key[1]} {protocol}/{port} "
                        f"expected {'connected' if want else 'blocked'}, got "
                        f"{'connected' if got.get(key) else 'blocked'}"
                    )


def load_scenarios(files: Iterable[Path]) -> list[dict[str, Any]]:
    scenarios: list[dict[str, Any]] = []
    for f in files:
        scenarios += yaml.safe_load(Path(f).read_text()) or []
    return scenarios


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument(
        "--cni",
        choices=("routed", "bridge"),
        default="routed",
        help="the lab's pod networking (vethguard lab up --cni)",
    )
    ap.add_argument("--only", action="append", default=[])
    args = ap.parse_args(argv)
    files = args.files or scenario_files()
    scenarios = [s for s in load_scenarios(files) if not args.only or s["id"] in args.only]
    runner = Runner(family=args.family, nodes=args.nodes, cni=args.cni)
    passed = failed = 0
    try:
        for sc in scenarios:
            res = runner.run_scenario(sc)
            print(f"{'PASS' if res.passed else 'FAIL'} {res.scenario} ({res.seconds:.1f}s)", flush=True)
            for line in res.notes:
                print(f"    note: {line}")
            for line in res.failures:
                print("    " + line.replace("\n", "\n    "))
            passed += res.passed
            failed += not res.passed
    finally:
        runner.close()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
