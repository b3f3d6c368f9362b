"""controller.lab.kubeproxy (pure): Service parsing, address allocation, EndpointSlices, VIP tables, nft."""

from __future__ import annotations

from typing import Any

import pytest

from controller.lab import kubeproxy
from controller.lab.kubeproxy import Backend, Frontend


def pod(
    name: str, labels: dict[str, str], ip: str, ports: list[dict[str, Any]], ns: str = "d", ready: bool = True
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": ip}, {"ip": "fd00::1"}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(
    ports: list[dict[str, Any]], selector: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "d", "uid": "u1"},
        "spec": {"selector": selector if selector is not None else {"app": "web"}, "ports": ports, **spec},
    }


def test_a_named_target_port_resolves_per_pod_into_one_slice_per_resolution() -> None:
    pods = [
        pod("a", {"app": "web"}, "10.244.1.2", [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]),
        pod("b", {"app": "web"}, "10.244.2.2", [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]),
        pod("c", {"app": "other"}, "10.244.2.3", [{"name": "http", "containerPort": 80, "protocol": "TCP"}]),
        pod("d", {"app": "web"}, "10.244.2.4", [{"name": "http", "containerPort": 80}], ns="elsewhere"),
    ]
    slices = kubeproxy.endpoint_slices(service([{"port": 80, "targetPort": "http"}]), pods)
    found = {s["ports"][0]["port"]: [e["addresses"][0] for e in s["endpoints"]] for s in slices}
    assert found == {8080: ["10.244.1.2"], 9090: ["10.244.2.2"]}
    assert all(s["metadata"]["labels"][kubeproxy.SERVICE_NAME_LABEL] == "web" for s in slices)


def test_not_ready_endpoints_are_listed_but_get_no_traffic() -> None:
    pods = [
        pod("a", {"app": "web"}, "10.244.1.2", []),
        pod("b", {"app": "web"}, "10.244.1.3", [], ready=False),
    ]
    svc = service([{"port": 80, "targetPort": 8080}])
    slices = kubeproxy.endpoint_slices(svc, pods)
    assert [e["conditions"]["ready"] for e in slices[0]["endpoints"]] == [True, False]
    svc["spec"]["clusterIP"] = "10.245.0.7"
    table = kubeproxy.service_table([svc], slices)
    assert table == {Frontend("10.245.0.7", "TCP", 80): (Backend("10.244.1.2", 8080),)}


def test_a_node_port_is_a_frontend_on_every_node_address() -> None:
    ports = [{"port": 80, "targetPort": 8080, "nodePort": 30080}]
    svc = service(ports, type="NodePort", clusterIP="10.245.0.9")
    slices = kubeproxy.endpoint_slices(svc, [pod("a", {"app": "web"}, "10.244.1.2", [])])
    table = kubeproxy.service_table([svc], slices)
    assert set(table) == {Frontend("10.245.0.9", "TCP", 80), Frontend(None, "TCP", 30080)}


def test_cluster_ips_come_from_the_service_range_and_skip_the_dns_address() -> None:
    first = kubeproxy.allocate_cluster_ip([])
    assert first != kubeproxy.DNS_CLUSTER_IP and first in (str(a) for a in kubeproxy.SERVICE_CIDR4.hosts())
    assert kubeproxy.allocate_cluster_ip([first]) != first
    assert kubeproxy.allocate_cluster_ip([], kubeproxy.DNS_CLUSTER_IP) == kubeproxy.DNS_CLUSTER_IP
    with pytest.raises(kubeproxy.ServiceError, match="not in the service range"):
        kubeproxy.allocate_cluster_ip([], "10.0.0.5")
    with pytest.raises(kubeproxy.ServiceError, match="already allocated"):
        kubeproxy.allocate_cluster_ip([first], first)


def test_node_ports_are_allocated_in_range_and_never_twice() -> None:
    assert kubeproxy.allocate_node_port([30000]) == 30001
    with pytest.raises(kubeproxy.ServiceError):
        kubeproxy.allocate_node_port([], 80)
    with pytest.raises(kubeproxy.ServiceError):
        kubeproxy.allocate_node_port([30500], 30500)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"type": "ExternalName", "ports": [{"port": 80}]}, "not supported"),
        ({"ports": [{"port": 80}], "externalIPs": ["fd00::1"]}, r"externalIPs\[0\]: must be an IPv4"),
        ({"ports": [{"port": 80}], "loadBalancerIP": "nowhere"}, "loadBalancerIP: must be an IPv4"),
        ({"ports": []}, "at least one port"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "name is required"),
        ({"ports": [{"port": 70000}]}, "from 1 to 65535"),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "TCP, UDP or SCTP"),
    ],
)
def test_services_the_lab_cannot_realize_are_refused_with_the_field(
    bad: dict[str, Any], message: str
) -> None:
    with pytest.raises(kubeproxy.ServiceError, match=message):
        kubeproxy.parse_service({"metadata": {"name": "s"}, "spec": bad})


def test_the_nft_script_picks_one_backend_at_random_and_masquerades_node_ports() -> None:
    table = {
        Frontend("10.245.0.5", "TCP", 80): (Backend("10.244.1.2", 8080), Backend("10.244.2.2", 8080)),
        Frontend(None, "UDP", 30053): (Backend("10.244.1.2", 53),),
        Frontend("10.245.0.6", "TCP", 81): (),
    }
    script = kubeproxy.render_nft(table)
    assert "numgen random mod 2" in script
    assert "meta l4proto tcp dnat ip to 10.244.1.2:8080" in script
    assert "meta l4proto tcp dnat ip to 10.244.2.2:8080" in script
    assert "10.245.0.5 . tcp . 80 : goto" in script and "udp . 30053 : goto" in script
    assert "10.245.0.6 . tcp . 81" in script.split("set dead")[1]  # no backends: rejected
    assert "masquerade" in script


def test_no_services_means_no_table_at_all() -> None:
    script = kubeproxy.render_nft({})
    assert "nat" not in script and script.strip().endswith(f"delete table ip {kubeproxy.NFT_TABLE}")
