"""Veth discovery from host routes: the pure matcher, and a read of the current namespace."""

from __future__ import annotations

from controller.endpoints import Link, Route, RouteDiscovery, match_routes

LINKS = {
    1: Link(1, "lo", None),
    5: Link(5, "vethA", "veth"),
    6: Link(6, "vethB", "veth"),
    9: Link(9, "tunl0", "ipip"),
}


def test_a_pod_maps_to_the_output_interface_of_the_host_route_to_its_ip():
    routes = [Route("10.244.1.2", 32, 5), Route("10.244.1.3", 32, 6)]
    got = match_routes({"x/a": ["10.244.1.2"], "x/b": ["10.244.1.3"]}, routes, LINKS)
    assert got.pod_ifindex == {"x/a": 5, "x/b": 6}
    assert got.missing == [] and got.conflicts == {}


def test_ipv6_host_routes_count_and_addresses_are_compared_in_canonical_form():
    routes = [Route("fd00:10:244:1::2", 128, 5)]
    got = match_routes({"x/a": ["fd00:10:244:1:0:0:0:2"]}, routes, LINKS)
    assert got.pod_ifindex == {"x/a": 5}


def test_routes_that_are_not_host_routes_or_not_unicast_or_elsewhere_are_ignored():
    routes = [
        Route("10.244.1.0", 24, 5),  # a block route, not the pod's
        Route("10.244.1.2", 32, 5, table=255),  # local table
        Route("10.244.1.3", 32, 6, type=6),  # blackhole
        Route("10.244.1.4", 32, None),  # multipath
    ]
    got = match_routes({"x/a": ["10.244.1.2"], "x/b": ["10.244.1.3"], "x/c": ["10.244.1.4"]}, routes, LINKS)
    assert got.pod_ifindex == {}
    assert got.missing == ["x/a", "x/b", "x/c"]


def test_a_route_through_a_non_veth_or_vanished_interface_is_not_a_pod_veth():
    routes = [Route("10.244.2.7", 32, 9), Route("10.244.1.2", 32, 42)]
    got = match_routes({"y/remote": ["10.244.2.7"], "x/a": ["10.244.1.2"]}, routes, LINKS)
    assert got.pod_ifindex == {}
    # without link information, any interface counts
    assert match_routes({"x/a": ["10.244.1.2"]}, routes).pod_ifindex == {"x/a": 42}


def test_a_pod_whose_addresses_route_to_different_veths_is_reported_as_a_conflict():
    routes = [Route("10.244.1.2", 32, 5), Route("fd00:10:244:1::2", 128, 6)]
    got = match_routes({"x/a": ["10.244.1.2", "fd00:10:244:1::2"]}, routes, LINKS)
    assert got.pod_ifindex == {"x/a": 5}  # tie: the first address wins
    assert got.conflicts == {"x/a": [5, 6]}


def test_a_pod_without_a_route_yet_is_missing_and_garbage_addresses_are_skipped():
    got = match_routes({"x/a": ["not-an-ip"], "x/b": []}, [Route("10.244.1.2", 32, 5)], LINKS)
    assert got.pod_ifindex == {} and got.missing == ["x/a", "x/b"]


def test_reading_the_current_namespace_needs_no_root_and_finds_no_unknown_pods():
    routes, links = RouteDiscovery().read()
    assert 1 in links and links[1].name == "lo"
    assert all(isinstance(r.dst_len, int) for r in routes)
    assert RouteDiscovery().discover({"x/a": ["192.0.2.254"]}).pod_ifindex == {}
