"""The clsact ledger: which clsact qdiscs vethguard created on a node, so that `vethguard
uninstall` deletes those and no one else's.

One text file per node, `<state dir>/clsact-<node>` (state dir default /run/vethguard: a tmpfs,
cleared at reboot exactly when the kernel's tc state is). Every writer (the agent's Attacher,
the Python CNI plugin, the Go plugin in cni/main.go) appends one line "<ifindex> <ifname>\n"
with a single O_APPEND write when its exclusive clsact add succeeded (never on EEXIST), so
concurrent writers never interleave within a line. Lines accumulate: an interface deleted and
its ifindex reused shows up twice; readers keep the last line per ifindex and check that the
interface still has that name before touching it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from controller.datapath.loader import pin_dir_for

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/run/vethguard"


def ledger_path(state_dir: str | Path, node: str) -> Path:
    """<state_dir>/clsact-<node> (the node name is checked as for its pin directory)."""
    return Path(state_dir) / f"clsact-{pin_dir_for(node, '/').name}"


def record(path: Path, ifindex: int, ifname: str | None = None) -> None:
    """Append "<ifindex> <ifname>" (the name looked up in this network namespace when not
    given). A failure is logged, not raised: the clsact exists either way, and a pod must not
    fail to start because the ledger could not be written (uninstall then leaves that clsact)."""
    try:
        name = ifname or socket.if_indextoname(ifindex)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{ifindex} {name}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("cannot record the clsact of ifindex %d in %s: %s", ifindex, path, exc)


def parse(text: str) -> tuple[dict[int, str], list[str]]:
    """ifindex -> ifname (the last line per ifindex wins), and the lines that are not
    "<ifindex> <ifname>" (a torn or foreign line; pure)."""
    entries: dict[int, str] = {}
    bad: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) <= 0:
            bad.append(line)
            continue
        entries[int(fields[0])] = fields[1]
    return entries, bad


def read(path: Path) -> tuple[dict[int, str], list[str]]:
    """parse() of the ledger file; no file: nothing recorded."""
    try:
        return parse(path.read_text(errors="replace"))
    except FileNotFoundError:
        return {}, []
