"""The lab's container-runtime side of CNI: after the lab's own "main plugin" (topology.create_pod:
the veth, addresses and routes) it runs vethguard-cni ADD for the new pod, as a runtime does for
kubelet with a chained plugin list, before the pod's processes (its responders) start.

The call goes through controller.cni.plugin.handle with the CNI environment and configuration a
runtime passes, on a thread inside the node's network namespace: the same code the executable
runs, without a Python start per pod (tests/kernel/test_cni.py runs the executable itself). An
ADD that finds no pinned programs yet (the node's agent is still compiling its first program set)
is retried, as kubelet retries a sandbox whose CNI ADD failed; any other failure fails the pod.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from pathlib import Path

from controller.cni import plugin
from controller.lab import netns

log = logging.getLogger("vethguard.lab.cni")

RETRY_INTERVAL = 0.1


def prev_result(pod_netns: str, host_ifname: str, addresses: tuple[str, ...]) -> dict[str, object]:
    """What the lab's main plugin would return: the two ends of the veth and the pod's addresses."""
    ips = [
        {"address": f"{a}/{32 if ipaddress.ip_address(a).version == 4 else 128}", "interface": 1}
        for a in addresses
    ]
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": host_ifname}, {"name": "eth0", "sandbox": str(netns.netns_path(pod_netns))}],
        "ips": ips,
    }


def add(
    *,
    pin_root: Path,
    state_dir: Path,
    node: str,
    node_netns: str,
    pod_netns: str,
    host_ifname: str,
    addresses: tuple[str, ...],
    container_id: str,
    wait_seconds: float = 120.0,
) -> float:
    """vethguard-cni ADD for a new pod; returns the seconds it took (retries included)."""
    config = {
        "cniVersion": "1.0.0",
        "name": "lab",
        "type": "vethguard-cni",
        "pinRoot": str(pin_root),
        "stateDir": str(state_dir),
        "nodeName": node,
        "prevResult": prev_result(pod_netns, host_ifname, addresses),
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": str(netns.netns_path(pod_netns)),
        "CNI_IFNAME": "eth0",
    }
    stdin = json.dumps(config)
    start = time.monotonic()
    while True:
        try:
            netns.run_in_netns(node_netns, lambda: plugin.handle(env, stdin))
            return time.monotonic() - start
        except plugin.CniError as exc:
            if exc.code != plugin.ERR_NOT_READY or time.monotonic() - start > wait_seconds:
                raise
            time.sleep(RETRY_INTERVAL)
