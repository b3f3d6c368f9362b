"""`vethguard uninstall --node NAME`: remove from a node exactly what vethguard put there.

Runs in the node's network namespace (on a cluster: deploy/uninstall.yaml, a hostNetwork
DaemonSet), after the agent is gone, in this order:
  1. refuses while an agent answers on its health address (it would attach again), unless --force;
  2. unchains vethguard-cni from the CNI configuration and removes its binary
     (controller/cni/install.py `uninstall`), so new pods stop going through it (--keep-cni: not);
  3. removes our tc filters, by handle, priority and name, from both hooks of every interface,
     and our tcx links (opt-in attach mode), by program name;
  4. deletes the clsact qdiscs the node's ledger lists (controller/datapath/ledger.py) when the
     interface still has the recorded name and no filter is left on it; never any other clsact;
  5. removes the node's pin directory (maps, programs, conntrack) and the ledger.
Foreign qdiscs and filters stay. Idempotent: a second run finds nothing to do. With nothing
attached any more, the pinned programs and maps go with the pin directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.agent.loop import DEFAULT_HEALTH_ADDR, DEFAULT_PIN_ROOT
from controller.cni import install
from controller.core.columns import table
from controller.core.errors import VethguardError
from controller.datapath import cleanup, ledger
from controller.datapath.cleanup import Step
from controller.datapath.loader import pin_dir_for


@dataclass
class Report:
    node: str
    removed: list[Step] = field(default_factory=list)
    kept: list[Step] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "removed": [s._asdict() for s in self.removed],
            "kept": [s._asdict() for s in self.kept],
            "nothingToDo": not self.removed,
        }

    def render(self) -> str:
        if not self.removed:
            head = (
                f"node {self.node}: nothing to do (no vethguard filters, clsact ledger, pins or CNI chaining)"
            )
        else:
            head = f"node {self.node}: removed {len(self.removed)}, kept {len(self.kept)}"
        if not self.removed and not self.kept:
            return head
        rows = [("removed", *s) for s in self.removed] + [("kept", *s) for s in self.kept]
        return head + "\n" + table(("ACTION", "KIND", "NAME", "DETAIL"), rows)


def agent_answers(addr: str, timeout: float = 2.0) -> bool:
    """Something accepts connections on the agent's health address HOST:PORT."""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _remove_tree(path: Path, kind: str) -> list[Step]:
    if not path.exists():
        return []
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return [Step(kind, str(path), "removed")]


def uninstall(
    node: str,
    pin_root: str = DEFAULT_PIN_ROOT,
    state_dir: str = ledger.DEFAULT_STATE_DIR,
    cni_bin_dir: Path | None = Path("/opt/cni/bin"),
    cni_conf_dir: Path = Path("/etc/cni/net.d"),
) -> Report:
    """Steps 2-5 above, in this network namespace (cni_bin_dir None: leave the CNI plugin)."""
    pins = pin_dir_for(node, pin_root)
    ledger_file = ledger.ledger_path(state_dir, node)
    report = Report(node)
    if cni_bin_dir is not None:
        removed, kept = install.uninstall(cni_bin_dir, cni_conf_dir)
        report.removed += removed
        report.kept += kept
    interfaces = cleanup.links()
    filters, detached = cleanup.remove_filters(interfaces)
    report.removed += filters
    recorded, bad = ledger.read(ledger_file)
    removed, kept = cleanup.remove_clsacts(recorded, interfaces, detached)
    report.removed += removed
    report.kept += kept
    report.kept += [Step("ledger-line", repr(line), "not '<ifindex> <ifname>': ignored") for line in bad]
    report.removed += _remove_tree(pins, "pins")
    if os.path.isdir(pin_root) and not os.listdir(pin_root):
        os.rmdir(pin_root)  # the pin root was ours too, and no other node's pins are left in it
        report.removed.append(Step("pins", pin_root, "removed (empty)"))
    report.removed += _remove_tree(ledger_file, "ledger")
    return report


def cmd_uninstall(args: argparse.Namespace) -> int:
    if not args.node:
        raise VethguardError("uninstall: --node is required (or $NODE_NAME)")
    if not args.force and agent_answers(args.agent):
        raise VethguardError(
            f"an agent answers on {args.agent}: stop it first (a running agent attaches again; "
            "kubectl delete -k deploy/), or pass --force"
        )
    report = uninstall(
        args.node,
        pin_root=args.pin_root,
        state_dir=args.state_dir,
        cni_bin_dir=None if args.keep_cni else Path(args.cni_bin_dir),
        cni_conf_dir=Path(args.cni_conf_dir),
    )
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render())
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "uninstall",
        help="remove vethguard from this node: its CNI chaining, tc filters, clsact qdiscs and pins",
        description="Run in the node's network namespace after the agent stopped. Removes exactly what "
        "vethguard attached (filters by handle, priority and name; the clsact qdiscs its ledger "
        "lists when no other filter uses them), its pins and ledger, and unchains vethguard-cni; "
        "foreign qdiscs and filters stay. A second run finds nothing to do.",
    )
    p.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="this node's name, the agent's --node (default: $NODE_NAME)",
    )
    p.add_argument(
        "--pin-root", default=DEFAULT_PIN_ROOT, help=f"the agent's --pin-root (default {DEFAULT_PIN_ROOT})"
    )
    p.add_argument(
        "--state-dir",
        default=ledger.DEFAULT_STATE_DIR,
        help=f"the agent's --state-dir, where the clsact ledger is (default {ledger.DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--cni-bin-dir", default="/opt/cni/bin", help="CNI binary directory (default: %(default)s)"
    )
    p.add_argument(
        "--cni-conf-dir", default="/etc/cni/net.d", help="CNI configuration directory (default: %(default)s)"
    )
    p.add_argument("--keep-cni", action="store_true", help="leave vethguard-cni installed and chained")
    p.add_argument(
        "--agent",
        default=DEFAULT_HEALTH_ADDR,
        metavar="ADDR",
        help="the agent's health address: uninstall refuses while something answers there "
        f"(default {DEFAULT_HEALTH_ADDR})",
    )
    p.add_argument(
        "--force", action="store_true", help="uninstall even while an agent answers (it may attach again)"
    )
    p.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format (default: text)"
    )
    p.set_defaults(func=cmd_uninstall)
