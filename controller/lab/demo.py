"""`vethguard demo`: the AKS network-policy walkthrough, measured with real connections in a lab.

Stages (the AKS "secure traffic between pods using network policies" walkthrough):
  1. no policy: every pod reaches the backend
  2. deny all ingress to the backend
  3. allow the frontend pods (by label, from any namespace)
  4. allow the frontend pods of the development namespace only
Each stage is applied with `vethguard lab apply` (which returns once the agent has realized it
in the kernel) and then measured with `vethguard lab probe`: real TCP connections from every
pod to every pod. The lab is torn down at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

NAMESPACES = [("development", {"purpose": "development"}), ("production", {"purpose": "production"})]
PODS = [
    ("development", "backend", {"app": "webapp", "role": "backend"}),
    ("development", "network-policy", {"run": "network-policy"}),
    ("development", "frontend", {"app": "webapp", "role": "frontend"}),
    ("production", "frontend", {"app": "webapp", "role": "frontend"}),
]


def _policy(ingress: list[dict[str, Any]] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"app": "webapp", "role": "backend"}},
        "ingress": ingress or [],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "backend-policy", "namespace": "development"},
        "spec": spec,
    }


FRONTEND = {"matchLabels": {"app": "webapp", "role": "frontend"}}
STAGES: list[tuple[str, dict[str, Any] | None]] = [
    ("1. No policy: every pod reaches the backend", None),
    ("2. Deny all inbound traffic to the backend", _policy(None)),
    (
        "3. Allow only pods labelled app=webapp,role=frontend (any namespace)",
        _policy([{"from": [{"namespaceSelector": {}, "podSelector": FRONTEND}]}]),
    ),
    (
        "4. Allow only frontend pods in namespaces labelled purpose=development",
        _policy(
            [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"purpose": "development"}},
                            "podSelector": FRONTEND,
                        }
                    ]
                }
            ]
        ),
    ),
]


def model_manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}}
        for n, labels in NAMESPACES
    ]
    for ns, name, labels in PODS:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx",
                            "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}],
                        }
                    ]
                },
            }
        )
    return docs


def _lab(args: argparse.Namespace, *cmd: str, stdin: str | None = None) -> str:
    argv = [sys.executable, "-m", "controller.cli", "lab", *cmd, "--name", args.name]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vethguard lab {' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _down(args: argparse.Namespace) -> None:
    subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "down", "--name", args.name],
        capture_output=True,
        text=True,
    )


def render_table(results: list[dict[str, Any]], pods: list[str]) -> str:
    """Rows are sources, columns destinations; '.' connected, 'X' blocked, '-' a pod to itself."""
    got = {(r["from"], r["to"]): r["connected"] for r in results}
    width = max(len(p) for p in pods)
    head = " " * (width + 4) + "  ".join(f"{i + 1}" for i in range(len(pods)))
    lines = ["  to: " + ", ".join(f"{i + 1}={p}" for i, p in enumerate(pods)), head]
    for src in pods:
        cells = ["-" if src == dst else ("." if got.get((src, dst)) else "X") for dst in pods]
        lines.append(f"  {src.ljust(width)}  " + "  ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    pods = [f"{ns}/{name}" for ns, name, _ in PODS]
    print(f"vethguard demo: AKS network-policy walkthrough in lab '{args.name}'\n", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(model_manifests(), f, sort_keys=False)
        model = Path(f.name)
    _down(args)  # a leftover lab of the same name from an interrupted run
    try:
        print("Creating the lab: namespaces development/production, 4 pods serving TCP 80 ...", flush=True)
        _lab(args, "up", "-f", str(model))
        status = json.loads(_lab(args, "status", "-o", "json"))
        for pod in pods:
            print(f"  {pod:28} {', '.join(status['pods'][pod]['ips'])}")
        print()
        for title, policy in STAGES:
            print(f"== {title}")
            if policy is not None:
                print("   " + yaml.safe_dump(policy["spec"], sort_keys=False).replace("\n", "\n   ").rstrip())
                _lab(args, "apply", "-f", "-", stdin=yaml.safe_dump(policy, sort_keys=False))
            cmd = ["probe", "--port", "80", "--protocol", "TCP", "-o", "json"]
            for p in pods:
                cmd += ["--from", p, "--to", p]
            results = json.loads(_lab(args, *cmd))["results"]
            print(render_table(results, pods))
            to_backend = {r["from"]: r["connected"] for r in results if r["to"] == "development/backend"}
            print(
                "   to development/backend: "
                + ", ".join(
                    f"{src} {'connected' if ok else 'blocked'}"
                    for src, ok in to_backend.items()
                    if src != "development/backend"
                )
                + "\n",
                flush=True,
            )
    except (RuntimeError, KeyError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        model.unlink(missing_ok=True)
        if not args.keep:
            _down(args)
            print(f"Lab '{args.name}' torn down.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="walk through the AKS network-policy scenario in a lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", default="demo", help="lab name (default: demo)")
    p.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    p.set_defaults(func=run)
