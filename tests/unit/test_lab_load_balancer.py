"""The lab's LoadBalancer Services and spec.externalIPs: the address pool, the nftables rules
every node gets, and what the lab's API server admits (a Store with the Service admission only;
no namespaces, no nft)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.lab import kubeproxy, topology
from controller.lab.kubeproxy import Backend, Frontend
from controller.lab.store import ApiError, Obj, Resource, Store
from controller.lab.svc import ServiceController


def service(name: str = "web", **spec: Any) -> Obj:
    body = {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "d"}, "spec": body}


class ServicesOnly:
    """Store admission with the lab's Service controller alone; records the routed addresses."""

    def __init__(self, store: Store) -> None:
        self.routed: list[list[str]] = []
        self.services = ServiceController(store, list, None, self.routed.append)

    def admit(self, op: str, resource: Resource, obj: Obj, old: Obj | None) -> Obj:
        return self.services.admit(op, obj, old) if resource.plural == "services" else obj

    def committed(self, op: str, resource: Resource, obj: Obj, old: Obj | None) -> None:
        self.services.committed(resource, obj)


@pytest.fixture
def store() -> Store:
    made = Store()
    made.create("namespaces", {"metadata": {"name": "d"}})
    made.admission = ServicesOnly(made)
    return made


def lb_ip(obj: Obj) -> str:
    return str(obj["status"]["loadBalancer"]["ingress"][0]["ip"])


def test_load_balancer_addresses_come_from_the_pool_and_honour_a_free_requested_one() -> None:
    first = kubeproxy.allocate_load_balancer_ip([])
    assert first == "10.246.0.1" and kubeproxy.allocate_load_balancer_ip([first]) == "10.246.0.2"
    assert kubeproxy.allocate_load_balancer_ip([first], "10.246.0.77") == "10.246.0.77"
    with pytest.raises(kubeproxy.ServiceError, match="already allocated"):
        kubeproxy.allocate_load_balancer_ip([first], first)
    with pytest.raises(
        kubeproxy.ServiceError, match=r"spec.loadBalancerIP 10.245.0.9 is not in .*10.246.0.0/24"
    ):
        kubeproxy.allocate_load_balancer_ip([], "10.245.0.9")


def test_the_pool_is_reserved_so_no_external_host_can_be_given_an_address_in_it() -> None:
    with pytest.raises(ValueError, match="which the lab uses itself"):
        topology.check_external_address("10.246.0.5")
    topology.check_external_address("10.247.0.5")


def test_external_and_load_balancer_addresses_are_frontends_beside_the_cluster_ip_and_node_port() -> None:
    obj = service(type="LoadBalancer", clusterIP="10.245.0.9", externalIPs=["192.0.2.10"])
    obj["spec"]["ports"][0]["nodePort"] = 30080
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": "10.246.0.3"}]}}
    slices = [
        {
            "metadata": {"namespace": "d", "labels": {kubeproxy.SERVICE_NAME_LABEL: "web"}},
            "ports": [{"name": "", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}}],
        }
    ]
    table = kubeproxy.service_table([obj], slices)
    assert set(table) == {
        Frontend("10.245.0.9", "TCP", 80),
        Frontend("192.0.2.10", "TCP", 80, external=True),
        Frontend("10.246.0.3", "TCP", 80, external=True),
        Frontend(None, "TCP", 30080),
    }
    assert set(table.values()) == {(Backend("10.244.1.2", 8080),)}
    assert kubeproxy.routed_addresses([obj]) == ["10.246.0.3", "192.0.2.10"]


def test_an_external_address_is_dnated_and_masqueraded_and_anything_else_to_it_rejected() -> None:
    backend = (Backend("10.244.1.2", 8080),)
    script = kubeproxy.render_nft(
        {
            Frontend("10.245.0.9", "TCP", 80): backend,
            Frontend("10.246.0.3", "TCP", 80, external=True): backend,
        }
    )
    chains = script.split("  chain ")
    lb_chain = next(
        c
        for c in chains
        if c.startswith(kubeproxy._chain("svc", str(Frontend("10.246.0.3", "TCP", 80, True))))
    )
    cluster_chain = next(
        c for c in chains if c.startswith(kubeproxy._chain("svc", str(Frontend("10.245.0.9", "TCP", 80))))
    )
    assert "meta mark set meta mark | 0x4000" in lb_chain and "0x4000" not in cluster_chain
    assert "10.246.0.3 . tcp . 80 : goto" in script  # the vips map: every node knows it
    assert "elements = { 10.246.0.3 }" in script.split("set externals")[1]
    assert "ip daddr @externals reject" in script.split("chain forward_filter")[1]


def test_type_load_balancer_is_admitted_with_node_ports_and_an_address_in_its_status(store: Store) -> None:
    created = store.create("services", service(type="LoadBalancer"))
    assert lb_ip(created) == "10.246.0.1"
    assert 30000 <= created["spec"]["ports"][0]["nodePort"] <= 32767
    assert lb_ip(store.create("services", service("api", type="LoadBalancer"))) == "10.246.0.2"
    again = store.replace("services", service(type="LoadBalancer"))
    assert lb_ip(again) == "10.246.0.1"  # kept across replaces
    assert store.admission.routed[-1] == ["10.246.0.1", "10.246.0.2"]  # type: ignore[union-attr]
    back = store.replace("services", service())
    assert back["status"] == {"loadBalancer": {}} and "nodePort" not in back["spec"]["ports"][0]
    assert store.admission.routed[-1] == ["10.246.0.2"]  # type: ignore[union-attr]


def test_a_requested_load_balancer_ip_is_given_when_free_and_in_the_pool(store: Store) -> None:
    created = store.create("services", service(type="LoadBalancer", loadBalancerIP="10.246.0.50"))
    assert lb_ip(created) == "10.246.0.50"
    with pytest.raises(ApiError) as refused:
        store.create("services", service("api", type="LoadBalancer", loadBalancerIP="10.246.0.50"))
    assert refused.value.code == 422 and "already allocated" in refused.value.message


def test_a_load_balancer_ip_outside_the_pool_is_refused_with_a_422_naming_the_field(store: Store) -> None:
    with pytest.raises(ApiError) as refused:
        store.create("services", service(type="LoadBalancer", loadBalancerIP="203.0.113.5"))
    assert refused.value.code == 422
    assert refused.value.message == (
        "Service d/web: spec.loadBalancerIP 203.0.113.5 is not in the lab's load-balancer pool 10.246.0.0/24"
    )


@pytest.mark.parametrize(
    "address, message",
    [
        ("10.244.1.9", r"spec.externalIPs\[0\]: 10.244.1.9 is inside 10.244.0.0/16"),
        ("10.246.0.9", r"spec.externalIPs\[0\]: 10.246.0.9 is inside 10.246.0.0/24"),
        ("198.51.100.7", r"spec.externalIPs\[0\]: 198.51.100.7 is the address of ExternalHost client"),
    ],
)
def test_external_ips_inside_the_lab_or_on_an_external_host_are_refused(
    store: Store, address: str, message: str
) -> None:
    store.create(
        "externalhosts",
        {
            "apiVersion": "lab.vethguard.dev/v1alpha1",
            "kind": "ExternalHost",
            "metadata": {"name": "client"},
            "spec": {"ip": "198.51.100.7"},
        },
    )
    with pytest.raises(ApiError, match=message) as refused:
        store.create("services", service(externalIPs=[address]))
    assert refused.value.code == 422


def test_one_external_address_and_port_belongs_to_one_service(store: Store) -> None:
    store.create("services", service(externalIPs=["192.0.2.10"]))
    store.create("services", service("other-port", externalIPs=["192.0.2.10"], ports=[{"port": 81}]))
    with pytest.raises(ApiError, match=r"192\.0\.2\.10 port 80/TCP is already a frontend of Service d/web"):
        store.create("services", service("api", externalIPs=["192.0.2.10"]))
    assert store.admission.routed[-1] == ["192.0.2.10"]  # type: ignore[union-attr]
