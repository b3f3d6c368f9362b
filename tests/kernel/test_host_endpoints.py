"""Calico host endpoints in the kernel (issue 16): a node interface with a vg_hosteps entry whose
policy profiles come from the real compiler, packets run through from_uplink (arriving, before
kube-proxy's DNAT) and to_uplink (leaving). preDNAT decisions on the original destination,
failsafe ports, Calico's default deny of traffic to the node itself, forwarded traffic, replies."""

from __future__ import annotations

from typing import Any

import pytest

from controller.bench.testrun import run
from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import CalicoObjects
from controller.compiler.compute import compute
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import codecs
from controller.datapath.abi import Reason
from tests.support import packets as P
from tests.support.kernel import EP, NODE_IP, POD_B, Harness
from tests.support.tier_world import NAMESPACES, NODE, NODES, PODS

pytestmark = [pytest.mark.root, pytest.mark.bcc]

NODE_PORT, LB_ADDRESS = 30080, "10.246.0.5"
OUTSIDE, OFFICE = "203.0.113.5", "198.51.100.7"
HEP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "HostEndpoint",
    "metadata": {"name": "node-1-eth0", "labels": {"ibm.role": "worker_public"}},
    "spec": {"node": NODE, "interfaceName": "eth0"},
}
_SPORT = iter(range(20000, 60000))


def gnp(name: str, order: int, ingress: list[Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "order": order,
            "selector": "ibm.role in { 'worker_public', 'master_public' }",
            "ingress": ingress,
            **spec,
        },
    }


def pre_dnat(name: str, order: int, ingress: list[Any]) -> dict[str, Any]:
    return gnp(name, order, ingress, preDNAT=True, applyOnForward=True, types=["Ingress"])


DENY_NODEPORTS = pre_dnat(
    "deny-nodeports",
    1100,
    [
        {"action": "Deny", "protocol": proto, "source": {}, "destination": {"ports": ["30000:32767"]}}
        for proto in ("TCP", "UDP")
    ],
)


def host_endpoint(h: Harness, *gnps: dict[str, Any]) -> None:
    """Compile the cluster with HEP and these policies, sync the profiles, and put the host
    endpoint on EP (lo: the test packets' interface), with the node's address and a NodePort
    and a LoadBalancer frontend in the maps."""
    cluster = cluster_from_objects(
        NAMESPACES, PODS, [], NODES, [], CalicoObjects(global_policies=list(gnps), host_endpoints=[HEP])
    )
    assert not cluster.errors, cluster.errors
    desired = compute(cluster, NODE)
    h.dp.sync(desired, {})
    hep = desired.host_endpoints["node-1-eth0"]
    h.dp.maps["vg_hosteps"].update(*codecs.encode_hostep(EP, hep))
    for addr, port in ((NODE_IP, NODE_PORT), (LB_ADDRESS, 80)):
        h.dp.maps["vg_svc"].update(*codecs.encode_svc(4, addr, P.TCP, port))
    h.local(NODE_IP)


def reason(h: Harness, prog: str, frame: bytes, direction: int) -> Reason:
    before = h.counters()
    run(h.dp.prog_fd(prog), frame, ifindex=EP)
    after = h.counters()
    moved = [k for k, v in after.items() if k[0] == EP and k[2] == direction and v != before.get(k)]
    assert len(moved) == 1, moved
    return Reason(moved[0][1])


def arriving(h: Harness, src: str, dst: str, port: int, proto: int = P.TCP) -> Reason:
    seg = P.tcp(next(_SPORT), port) if proto == P.TCP else P.udp(next(_SPORT), port)
    return reason(h, "from_uplink", P.ipv4(src, dst, proto, seg), DIR_INGRESS)


def test_the_guides_nodeport_policy_closes_nodeports_and_leaves_the_load_balancer_open(h: Harness) -> None:
    host_endpoint(h, DENY_NODEPORTS)
    assert arriving(h, OUTSIDE, NODE_IP, NODE_PORT) is Reason.DROP_PREDNAT
    assert arriving(h, OUTSIDE, NODE_IP, 31000, P.UDP) is Reason.DROP_PREDNAT
    assert arriving(h, OUTSIDE, LB_ADDRESS, 80) is Reason.ALLOW_HOSTEP  # forwarded, no forward policy
    assert arriving(h, POD_B, "10.244.2.30", 8080) is Reason.ALLOW_HOSTEP  # pod to pod, forwarded
    # the failsafe SSH port and Calico's default deny of the node's own other ports
    assert arriving(h, OUTSIDE, NODE_IP, 22) is Reason.ALLOW_FAILSAFE
    assert arriving(h, OUTSIDE, NODE_IP, 8080) is Reason.DROP_HOSTEP_END


def test_a_nodeport_allowed_only_from_one_cidr(h: Harness) -> None:
    allow_office = pre_dnat(
        "allow-office",
        1000,
        [
            {
                "action": "Allow",
                "protocol": "TCP",
                "source": {"nets": ["198.51.100.0/24"]},
                "destination": {"ports": [NODE_PORT]},
            }
        ],
    )
    host_endpoint(h, allow_office, DENY_NODEPORTS)
    assert arriving(h, OFFICE, NODE_IP, NODE_PORT) is Reason.ALLOW_PREDNAT
    assert arriving(h, OUTSIDE, NODE_IP, NODE_PORT) is Reason.DROP_PREDNAT


def test_normal_host_policy_allows_a_port_of_the_node_and_replies_pass(h: Harness) -> None:
    web = gnp(
        "node-web",
        10,
        [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}],
        types=["Ingress"],
    )
    host_endpoint(h, web)
    sport = next(_SPORT)
    syn = P.ipv4(OUTSIDE, NODE_IP, P.TCP, P.tcp(sport, 8080))
    assert reason(h, "from_uplink", syn, DIR_INGRESS) is Reason.ALLOW_HOSTEP
    synack = P.ipv4(NODE_IP, OUTSIDE, P.TCP, P.tcp(8080, sport, flags=P.SYN | P.ACK))
    assert reason(h, "to_uplink", synack, DIR_EGRESS) is Reason.ALLOW_REPLY
    assert arriving(h, OUTSIDE, NODE_IP, 8081) is Reason.DROP_HOSTEP_END


def test_an_interface_without_a_host_endpoint_is_untouched(h: Harness) -> None:
    before = h.counters()
    frame = P.ipv4(OUTSIDE, NODE_IP, P.TCP, P.tcp(next(_SPORT), NODE_PORT))
    assert run(h.dp.prog_fd("from_uplink"), frame, ifindex=EP).retval == 0
    assert h.counters() == before


def test_only_an_opening_syn_is_judged_so_connections_older_than_the_host_endpoint_survive(
    h: Harness,
) -> None:
    host_endpoint(h, DENY_NODEPORTS)
    ack = P.ipv4(OUTSIDE, NODE_IP, P.TCP, P.tcp(next(_SPORT), 8080, flags=P.ACK))
    assert reason(h, "from_uplink", ack, DIR_INGRESS) is Reason.ALLOW_CT
    syn = P.ipv4(OUTSIDE, NODE_IP, P.TCP, P.tcp(next(_SPORT), 8080))
    assert reason(h, "from_uplink", syn, DIR_INGRESS) is Reason.DROP_HOSTEP_END


def test_apply_on_forward_policies_judge_forwarded_traffic_and_normal_ones_do_not(h: Harness) -> None:
    normal = gnp(
        "node-only", 10, [{"action": "Deny", "source": {"nets": ["203.0.113.0/24"]}}], types=["Ingress"]
    )
    host_endpoint(h, normal)
    assert arriving(h, OUTSIDE, "10.244.2.30", 8080) is Reason.ALLOW_HOSTEP  # forwarded: not judged
    assert arriving(h, OUTSIDE, NODE_IP, 8080) is Reason.DROP_HOSTEP
    forward = gnp(
        "forwarded-too",
        10,
        [{"action": "Deny", "source": {"nets": ["203.0.113.0/24"]}}, {"action": "Allow"}],
        types=["Ingress"],
        applyOnForward=True,
    )
    host_endpoint(h, forward)
    assert arriving(h, OUTSIDE, "10.244.2.30", 8080) is Reason.DROP_HOSTEP
    assert arriving(h, OFFICE, "10.244.2.30", 8080) is Reason.ALLOW_HOSTEP
    assert arriving(h, OFFICE, NODE_IP, 8080) is Reason.ALLOW_HOSTEP  # applyOnForward ones judge the node too
