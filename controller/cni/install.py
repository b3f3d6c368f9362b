"""`vethguard cni-install`: put vethguard-cni on a node and chain it after the node's CNI plugin.

Run by the DaemonSet's install-cni init container with the host's CNI directories mounted:
  1. copies the static plugin (the image's /opt/vethguard/cni/vethguard-cni, built from cni/)
     into the CNI binary directory, atomically (a runtime never executes a half-written file);
  2. in the network configuration the runtime uses (the first *.conflist / *.conf / *.json by
     name, as containerd and CRI-O pick it), appends {"type": "vethguard-cni", "pinRoot": ...,
     "nodeName": ...} to the plugin list, replacing an entry of ours from an earlier install, and
     writes the file back atomically. A single-plugin .conf becomes a .conflist with it.
Idempotent: a second run changes nothing. No configuration yet (the cluster's CNI is not
installed) is an error, so the init container fails and kubelet retries it.

`uninstall` is its mirror (`vethguard uninstall` runs it first, so new pods stop needing the
plugin): our entry leaves every configuration list that has one, the other plugins and keys as
they were (a .conf that install turned into a .conflist stays a one-plugin .conflist, which
runtimes read the same), then the binary goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from controller.core.errors import VethguardError
from controller.datapath.cleanup import Step
from controller.datapath.tcx import ATTACH_ENV, MODES

PLUGIN = "vethguard-cni"
DEFAULT_BINARY = "/opt/vethguard/cni/vethguard-cni"


def network_config(conf_dir: Path) -> Path:
    candidates = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json"))
    if not candidates:
        raise VethguardError(
            f"no CNI network configuration in {conf_dir} yet: install the cluster's CNI plugin first "
            "(this init container is retried)"
        )
    return candidates[0]


def chained(config: dict[str, Any], node: str, pin_root: str, tc_attach: str = "clsact") -> dict[str, Any]:
    """The configuration list with our plugin last (pure); "tcAttach": "tcx" in our entry when the
    agent attaches with tcx links (clsact, the default, needs no key)."""
    if "plugins" in config:
        out = dict(config)
        plugins = [p for p in config["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN)]
    else:  # a single-plugin .conf
        out = {k: config[k] for k in ("cniVersion", "name") if k in config}
        plugins = [{k: v for k, v in config.items() if k not in ("cniVersion", "name")}]
    if not plugins:
        raise VethguardError("the CNI configuration has no plugin to chain after")
    ours: dict[str, Any] = {"type": PLUGIN, "pinRoot": pin_root, "nodeName": node}
    if tc_attach == "tcx":
        ours["tcAttach"] = "tcx"
    out["plugins"] = [*plugins, ours]
    return out


def unchained(config: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration list without our plugin; None when it has no entry of ours (pure). A
    single-plugin .conf never has one (install makes it a list)."""
    plugins = config.get("plugins")
    if not isinstance(plugins, list):
        return None
    kept = [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN)]
    if len(kept) == len(plugins):
        return None
    return {**config, "plugins": kept}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise VethguardError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise VethguardError(f"{path}: not a CNI network configuration")
    return config


def uninstall(bin_dir: Path, conf_dir: Path) -> tuple[list[Step], list[Step]]:
    """Unchain the plugin from every network configuration in conf_dir, then remove it from
    bin_dir: (removed, kept with why). A missing directory is a kept step, not an error."""
    removed: list[Step] = []
    kept: list[Step] = []
    still_used = False
    if not conf_dir.is_dir():
        kept.append(Step("cni-config", str(conf_dir), "no such directory: nothing to unchain"))
    else:
        for path in sorted(p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json")):
            new = unchained(_read_config(path))
            if new is None:
                continue
            if not new["plugins"]:
                kept.append(Step("cni-config", str(path), f"{PLUGIN} is its only plugin: left for its owner"))
                still_used = True
                continue
            _write_atomically(path, (json.dumps(new, indent=2) + "\n").encode(), 0o644)
            removed.append(Step("cni-config", str(path), f"{PLUGIN} unchained"))
    target = bin_dir / PLUGIN
    if not bin_dir.is_dir():
        kept.append(Step("cni-binary", str(bin_dir), "no such directory"))
    elif still_used and target.exists():
        kept.append(Step("cni-binary", str(target), "a network configuration still runs it"))
    elif target.exists():
        target.unlink()
        removed.append(Step("cni-binary", str(target), "removed"))
    return removed, kept


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.vethguard-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(
    binary: Path, bin_dir: Path, conf_dir: Path, node: str, pin_root: str, tc_attach: str = "clsact"
) -> Path:
    """Install the plugin and chain it; returns the configuration file written."""
    if not binary.is_file():
        raise VethguardError(f"{binary}: no vethguard-cni binary in this image")
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / PLUGIN
    if not target.exists() or target.read_bytes() != binary.read_bytes():
        tmp = target.with_name(f".{PLUGIN}.vethguard-tmp")
        shutil.copyfile(binary, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    source = network_config(conf_dir)
    config = _read_config(source)
    new = chained(config, node, pin_root, tc_attach)
    dest = source if source.suffix == ".conflist" else source.with_suffix(".conflist")
    if new != config or dest != source:
        _write_atomically(dest, (json.dumps(new, indent=2) + "\n").encode(), 0o644)
        if dest != source:
            source.unlink()
    return dest


def cmd_install(args: argparse.Namespace) -> int:
    # the flag, else VETHGUARD_TC_ATTACH, else clsact; not probed here (this container has no
    # capabilities): the plugin checks the kernel when it attaches
    mode = (args.tc_attach or os.environ.get(ATTACH_ENV, "") or "clsact").strip().lower()
    if mode not in MODES:
        raise VethguardError(f"{ATTACH_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    where = (Path(args.binary), Path(args.bin_dir), Path(args.conf_dir))
    written = install(*where, args.node, args.pin_root, mode)
    print(f"{PLUGIN} installed in {args.bin_dir} and chained in {written}", flush=True)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cni-install", help="install vethguard-cni on this node and chain it (init container)"
    )
    p.add_argument("--node", required=True, help="this node's name (the agent's --node)")
    p.add_argument("--binary", default=DEFAULT_BINARY, help="the static plugin (default: %(default)s)")
    p.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI binary directory (default: %(default)s)")
    p.add_argument(
        "--conf-dir", default="/etc/cni/net.d", help="CNI configuration directory (default: %(default)s)"
    )
    p.add_argument(
        "--pin-root", default="/sys/fs/bpf/vethguard", help="the agent's --pin-root (default: %(default)s)"
    )
    p.add_argument(
        "--tc-attach",
        choices=MODES,
        help="how vethguard-cni attaches the programs: as the agent's VETHGUARD_TC_ATTACH "
        "(default: that variable of this process, else clsact)",
    )
    p.set_defaults(func=cmd_install)
