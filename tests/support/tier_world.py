"""A one-node world for tier tests in the kernel (ClusterNetworkPolicy and Calico): its cluster
objects, syncing a compiled cluster into the maps of a Harness, and sending one packet and reading
the reason it was counted under, next to the lookup model's."""

from __future__ import annotations

from typing import Any

from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import EMPTY_CALICO, CalicoObjects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import Reason
from controller.debug import verdict_model
from tests.support import packets as P
from tests.support.kernel import EP, NODE_IP, POD_A, POD_B, POD_C, Harness

NODE = "node-1"
NAMESPACES = [
    {"metadata": {"name": "x", "labels": {"team": "x"}}},
    {"metadata": {"name": "y", "labels": {"team": "y"}}},
]


def pod(
    ns: str, name: str, ip: str, node: str, ports: tuple[tuple[str, int, str], ...] = ()
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "ports": [{"name": n, "containerPort": p, "protocol": pr} for n, p, pr in ports],
                }
            ],
        },
        "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
    }


PODS = [
    pod("x", "a", POD_A, NODE, (("web", 8080, "TCP"),)),  # the endpoint under test (EP)
    pod("x", "b", POD_B, NODE),
    pod("y", "c", POD_C, "node-2"),
]
NODES = [
    {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "role": "worker"}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    },
    {
        "metadata": {"name": "node-2", "labels": {"kubernetes.io/hostname": "node-2", "role": "worker"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.244.2.1"}]},
    },
]


def cnp(
    name: str,
    tier: str,
    priority: int,
    ingress: tuple[Any, ...] | list[Any] = (),
    egress: tuple[Any, ...] | list[Any] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tier": tier,
        "priority": priority,
        "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
    }
    if ingress:
        spec["ingress"] = list(ingress)
    if egress:
        spec["egress"] = list(egress)
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def rule(
    action: str, peers: list[Any], port: int | None = None, name: str = "", to: bool = False
) -> dict[str, Any]:
    r: dict[str, Any] = {"action": action, ("to" if to else "from"): peers}
    if name:
        r["name"] = name
    if port is not None:
        r["protocols"] = [{"tcp": {"destinationPort": {"number": port}}}]
    return r


FROM_B = {
    "pods": {
        "namespaceSelector": {"matchLabels": {"team": "x"}},
        "podSelector": {"matchLabels": {"app": "b"}},
    }
}
FROM_Y = {"namespaces": {"matchLabels": {"team": "y"}}}
FROM_ALL: dict[str, Any] = {"namespaces": {}}


def netpol(name: str, ingress: list[Any] | None = None, egress: list[Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return {"kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": name}, "spec": spec}


def synced(
    h: Harness,
    nps: list[dict[str, Any]],
    cnps: list[dict[str, Any]],
    calico: CalicoObjects = EMPTY_CALICO,
    namespaces: list[dict[str, Any]] = NAMESPACES,
    pods: list[dict[str, Any]] = PODS,
) -> NodeDesired:
    cluster = cluster_from_objects(namespaces, pods, nps, NODES, cnps, calico)
    assert all("futurePeer" in str(e) for e in cluster.errors), cluster.errors
    desired = compute(cluster, NODE)
    h.dp.sync(desired, {"x/a": EP})
    return desired


def reason_of(h: Harness, send: Any, frame: bytes, direction: int) -> Reason:
    """The reason the program counted for one packet (the counter that moved)."""
    before = h.counters()
    send(frame)
    after = h.counters()
    moved = [k for k, v in after.items() if k[0] == EP and k[2] == direction and v != before.get(k)]
    assert len(moved) == 1, moved
    return Reason(moved[0][1])


_SPORT = iter(range(20000, 60000))


def ingress(h: Harness, src: str, port: int, proto: int = P.TCP) -> Reason:
    seg = P.tcp(next(_SPORT), port) if proto == P.TCP else P.udp(next(_SPORT), port)
    return reason_of(h, h.to_pod, P.ipv4(src, POD_A, proto, seg), DIR_INGRESS)


def egress(h: Harness, dst: str, port: int, proto: int = P.TCP) -> Reason:
    seg = P.tcp(next(_SPORT), port) if proto == P.TCP else P.udp(next(_SPORT), port)
    return reason_of(h, h.from_pod, P.ipv4(POD_A, dst, proto, seg), DIR_EGRESS)


def model(desired: NodeDesired, direction: int, peer: str, port: int, proto: str = "TCP") -> str:
    return verdict_model.endpoint_verdict(desired, "x/a", direction, peer, proto, port).reason


def assert_kernel_is_model(h: Harness, desired: NodeDesired) -> None:
    for peer in (POD_B, POD_C, "8.8.8.8"):
        for port in (80, 81, 8080, 10250):
            assert ingress(h, peer, port).name == model(desired, DIR_INGRESS, peer, port), (peer, port)
    for peer in (POD_B, POD_C, NODE_IP, "10.244.2.1", "8.8.8.8"):
        for port in (53, 80, 10250):
            for proto, pname in ((P.TCP, "TCP"), (P.UDP, "UDP")):
                got = egress(h, peer, port, proto).name
                assert got == model(desired, DIR_EGRESS, peer, port, pname), (peer, port, pname)
