"""The objects a kubelet would write, which the lab writes itself: its Node objects (with the
labels kubelet sets) and a running Pod's status."""

from __future__ import annotations

import os
import time

from controller.core import programs
from controller.lab import topology
from controller.lab.discovery import KUBE_VERSION
from controller.lab.store import Obj


def node_labels(name: str) -> dict[str, str]:
    """The labels every lab Node carries (kubelet sets the same two)."""
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}


def pod_status(node: int, address4: str, address6: str, containers: list[Obj]) -> Obj:
    """A running pod's status as its kubelet would report it: every container running and ready
    (`kubectl get pods` counts READY from containerStatuses)."""
    host4, host6 = topology.node_addresses(node)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "phase": "Running",
        "hostIP": host4,
        "hostIPs": [{"ip": host4}, {"ip": host6}],
        "podIP": address4,
        "podIPs": [{"ip": address4}, {"ip": address6}],
        "startTime": now,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": c.get("name", ""),
                "ready": True,
                "started": True,
                "restartCount": 0,
                "image": c.get("image", ""),
                "imageID": "",
                "state": {"running": {"startedAt": now}},
            }
            for c in containers
        ],
    }


def node_object(index: int) -> Obj:
    name = topology.node_name(index)
    address4, address6 = topology.node_addresses(index)
    cidr4, cidr6 = topology.node_cidrs(index)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name)},
        "spec": {"podCIDR": cidr4, "podCIDRs": [cidr4, cidr6]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address4},
                {"type": "InternalIP", "address": address6},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
            # what `kubectl get nodes -o wide` shows: the lab's kubelet version is its API's
            "nodeInfo": {
                "kubeletVersion": KUBE_VERSION["gitVersion"],
                "osImage": "vethguard lab (network namespace)",
                "kernelVersion": os.uname().release,
                "containerRuntimeVersion": "vethguard-lab://netns",
                "operatingSystem": "linux",
                "architecture": programs.debian_arch(),  # amd64 and arm64 as Kubernetes names them
            },
        },
    }
