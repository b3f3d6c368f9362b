"""Service frontends (controller/compiler/frontends.py) and endpoint slots (sync.assign_slots): pure."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.compiler.desired_state import SvcFrontend
from controller.compiler.frontends import frontends_of
from controller.datapath import abi, codecs
from controller.datapath.encoding import assign_slots

NODES = [
    {
        "metadata": {"name": "node-1"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "10.244.1.1"},
                {"type": "InternalIP", "address": "fd00:10:244:1::1"},
                {"type": "Hostname", "address": "node-1"},
            ]
        },
    },
    {
        "metadata": {"name": "node-2"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.244.2.1"}]},
    },
]


def svc(spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "api") -> dict[str, Any]:
    return {"metadata": {"namespace": "shop", "name": name}, "spec": spec, "status": status or {}}


def test_a_cluster_ip_service_gives_one_frontend_per_address_and_port() -> None:
    fronts, errors = frontends_of(
        [
            svc(
                {
                    "clusterIPs": ["10.245.0.5", "fd00:245::5"],
                    "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}],
                }
            )
        ],
        NODES,
        "node-1",
    )
    assert errors == []
    assert fronts == {
        SvcFrontend(4, "10.245.0.5", 6, 80),
        SvcFrontend(4, "10.245.0.5", 17, 53),
        SvcFrontend(6, "fd00:245::5", 6, 80),
        SvcFrontend(6, "fd00:245::5", 17, 53),
    }


def test_a_node_port_is_a_frontend_on_this_nodes_addresses_only() -> None:
    spec = {"type": "NodePort", "clusterIP": "10.245.0.5", "ports": [{"port": 80, "nodePort": 30080}]}
    fronts, _ = frontends_of([svc(spec)], NODES, "node-1")
    assert SvcFrontend(4, "10.244.1.1", 6, 30080) in fronts
    assert SvcFrontend(6, "fd00:10:244:1::1", 6, 30080) in fronts
    assert not any(f.address == "10.244.2.1" for f in fronts)  # another node DNATs its own


def test_external_and_load_balancer_addresses_are_frontends_and_headless_or_external_names_are_not() -> None:
    spec = {
        "type": "LoadBalancer",
        "clusterIP": "None",
        "externalIPs": ["192.0.2.9"],
        "ports": [{"port": 443}],
    }
    status = {"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}, {"hostname": "lb.example"}]}}
    fronts, errors = frontends_of(
        [svc(spec, status), svc({"type": "ExternalName", "externalName": "db.example"}, name="ext")],
        NODES,
        "node-1",
    )
    assert errors == []
    assert fronts == {SvcFrontend(4, "192.0.2.9", 6, 443), SvcFrontend(4, "198.51.100.4", 6, 443)}


def test_invalid_fields_are_reported_by_object_and_field_and_the_rest_is_kept() -> None:
    spec = {
        "clusterIPs": ["10.245.0.5", "not-an-ip"],
        "ports": [{"port": 70000}, {"port": 80, "protocol": "QUIC"}, {"port": 81}, "junk"],
    }
    fronts, errors = frontends_of([svc(spec)], NODES, "node-1")
    assert fronts == {SvcFrontend(4, "10.245.0.5", 6, 81)}
    assert [(e.object, e.field) for e in errors] == [
        ("Service shop/api", "spec.clusterIPs[1]"),
        ("Service shop/api", "spec.ports[0].port"),
        ("Service shop/api", "spec.ports[1].protocol"),
        ("Service shop/api", "spec.ports[3]"),
    ]


@given(st.lists(st.integers(min_value=1, max_value=2**31), unique=True, max_size=40), st.randoms())
def test_slots_are_unique_nonzero_stable_for_kept_endpoints_and_map_back_to_their_endpoint(
    ifindexes: list[int], rnd: Any
) -> None:
    def endpoints(ids: list[int]) -> dict[bytes, bytes]:
        return dict(codecs.encode_endpoint(i, 256, 0, None, None) for i in ids)

    first, slots = assign_slots(endpoints(ifindexes), {})
    got = {i: abi.EndpointInfo.from_bytes(first[codecs.u32_key(i)]).slot for i in ifindexes}
    assert all(got.values()) and len(set(got.values())) == len(got)
    assert {codecs.u32_key(s): codecs.u32_key(i) for i, s in got.items()} == slots
    # Some endpoints go, new ones come: those that stay keep their slot.
    kept = [i for i in ifindexes if rnd.random() < 0.5]
    new = [i + 2**31 for i in ifindexes[:5]]
    second, _ = assign_slots(endpoints(kept + new), first)
    again = {i: abi.EndpointInfo.from_bytes(second[codecs.u32_key(i)]).slot for i in kept + new}
    assert all(again[i] == got[i] for i in kept)
    assert len(set(again.values())) == len(again) and all(again.values())
