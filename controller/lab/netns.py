"""Network namespace helpers: named namespaces (/run/netns), per-thread setns, `ip` and sysctl.

Python 3.11 has no os.setns, so a thread enters a namespace with libc's setns(2). A thread that
entered a lab namespace never goes back: work is done on a fresh thread (`run_in_netns`) that
ends afterwards, so no pooled thread and no other code ever runs in the wrong namespace. Every
entry is checked (the thread's /proc net namespace inode must be the target's), and the root
namespace is never modified: sysctls are only written through `nsenter --net=<lab namespace>`.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from controller.core import programs
from controller.core.errors import VethguardError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(VethguardError):
    """A namespace operation failed."""


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return netns_path(name).exists()


def list_names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def inode(name: str) -> int:
    return os.stat(netns_path(name)).st_ino


def enter(name: str) -> None:
    """Move the calling thread into the named network namespace (and check that it did)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns into network namespace {name} failed: {os.strerror(err)}")
        target = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != target:
        raise NetnsError(f"setns into {name} did not take effect")


def run_in_netns(name: str, func: Callable[[], T]) -> T:
    """Run func on a new thread inside the named namespace; return its result or raise its error."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            enter(name)
            result.append(func())
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _run(argv: list[str], stdin: str | None = None, checked: bool = False) -> str:
    # a missing program is named with its package, not as nsenter's "failed to execute nft"
    if not checked:
        programs.require_command(argv)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise NetnsError(f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''} failed: {detail}")
    return proc.stdout


def add(name: str) -> None:
    _run(["ip", "netns", "add", name])


def delete(name: str) -> None:
    if exists(name):
        _run(["ip", "netns", "delete", name])


def ip(name: str, *args: str) -> str:
    """Run one `ip` command inside the named namespace."""
    return _run(["ip", "-n", name, *args])


def run_bridge(name: str, *args: str) -> str:
    """Run one `bridge` (iproute2) command inside the named namespace."""
    return _run(["bridge", "-n", name, *args])


def ip_batch(name: str, commands: Iterable[str]) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) inside the named namespace."""
    script = "\n".join(commands) + "\n"
    _run(["ip", "-n", name, "-batch", "-"], stdin=script)


def run_in(name: str, argv: list[str], stdin: str | None = None) -> str:
    """Run a program inside the named namespace only (never the caller's); its stdout. A missing
    program is named before a missing namespace."""
    command = ["nsenter", f"--net={netns_path(name)}", "--", *argv]
    programs.require_command(command)
    if not exists(name):
        raise NetnsError(f"network namespace {name} does not exist")
    return _run(command, stdin=stdin, checked=True)


def sysctl(name: str, settings: dict[str, str]) -> None:
    """Set sysctls inside the named namespace only (never the caller's namespace)."""
    assignments = [f"{key}={value}" for key, value in settings.items()]
    run_in(name, ["sysctl", "-q", "-w", *assignments])


def pids_in(names: Iterable[str]) -> list[int]:
    """Processes whose network namespace is one of the named ones."""
    wanted = set()
    for name in names:
        try:
            st = os.stat(netns_path(name))
        except FileNotFoundError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    if not wanted:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            found.append(int(entry))
    return found
