"""Network namespaces for kernel tests: a node namespace and a pod namespace joined by a veth.

Everything lives in namespaces created here (never the machine's own) and is deleted on exit.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that entered netns `name` (setns affects only the calling thread).

    Sockets created by fn stay in that namespace and may be used from any thread afterwards.
    """
    box: dict[str, object] = {}

    def target() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class VethPair:
    node_ns: str
    pod_ns: str
    ifindex: int  # of the host-side veth "vgh0" in node_ns
    node_ip: str = "10.99.0.1"
    pod_ip: str = "10.99.0.2"


@contextmanager
def veth_pair() -> Iterator[VethPair]:
    """node ns <-> pod ns over a veth pair; host side 'vgh0' in the node ns."""
    tag = uuid.uuid4().hex[:6]
    v = VethPair(node_ns=f"vgt-dp-node-{tag}", pod_ns=f"vgt-dp-pod-{tag}", ifindex=0)
    created: list[str] = []
    try:
        for ns in (v.node_ns, v.pod_ns):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh(
            "ip",
            "-n",
            v.node_ns,
            "link",
            "add",
            "vgh0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            v.pod_ns,
        )
        sh("ip", "-n", v.node_ns, "addr", "add", f"{v.node_ip}/24", "dev", "vgh0")
        sh("ip", "-n", v.pod_ns, "addr", "add", f"{v.pod_ip}/24", "dev", "eth0")
        for ns, dev in ((v.node_ns, "vgh0"), (v.pod_ns, "eth0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        ifindex = int(sh("ip", "netns", "exec", v.node_ns, "cat", "/sys/class/net/vgh0/ifindex").stdout)
        yield VethPair(node_ns=v.node_ns, pod_ns=v.pod_ns, ifindex=ifindex)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False)
