"""Veth discovery: host routes and bridge neighbours/FDB (pure matchers with fixture tables), the
stateful NodeDiscovery with a fake kernel, and reads of the current namespace
(raw rtnetlink messages decoded by hand)."""

from __future__ import annotations

import socket
import struct

from controller.agent.discovery import (
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_LINKINFO,
    IFLA_MASTER,
    NDA_DST,
    NDA_LLADDR,
    NDA_MASTER,
    RTA_DST,
    RTA_OIF,
    RTA_TABLE,
    NodeDiscovery,
    NodeTables,
    RouteDiscovery,
    fdb_from_msg,
    link_from_msg,
    neighbour_from_msg,
    route_from_msg,
)
from controller.agent.veth_match import (
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_PERMANENT,
    NUD_REACHABLE,
    Discovered,
    FdbEntry,
    Link,
    Neighbour,
    PortBinding,
    Route,
    match_bridge,
    match_routes,
    merge,
    pod_bridges,
    probe_targets,
    unclaimed_key,
)
from controller.datapath import rtnl

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


# --- bridge strategy (flannel-like cni0): neighbour table + bridge FDB ----------------------


MAC_A, MAC_B, MAC_OLD = "aa:00:00:00:00:0a", "aa:00:00:00:00:0b", "aa:00:00:00:00:99"
BRIDGED = {
    1: Link(1, "lo", None),
    2: Link(2, "eth0", "veth", address="02:00:00:00:00:02"),
    3: Link(3, "cni0", "bridge", address="02:76:67:00:00:01"),
    4: Link(4, "vethA", "veth", master=3, address="06:00:00:00:00:04"),
    5: Link(5, "vethB", "veth", master=3, address="06:00:00:00:00:05"),
    6: Link(6, "vethC", "veth", master=3, address="06:00:00:00:00:06"),
}
FDB = [
    FdbEntry(MAC_A, 4, 3),
    FdbEntry(MAC_B, 5, 3),
    # the node's own entries are never pods
    FdbEntry("06:00:00:00:00:04", 4, 3, NUD_PERMANENT),
    FdbEntry("02:76:67:00:00:01", 3, 3, NUD_PERMANENT),
    FdbEntry("33:33:00:00:00:01", 4, None, NUD_PERMANENT),
]
PODS = {"x/a": ["10.244.1.2", "fd00:10:244:1::2"], "x/b": ["10.244.1.3", "fd00:10:244:1::3"]}


def test_a_bridged_pod_maps_to_the_port_where_the_bridge_learned_the_mac_of_its_ip():
    neighbours = [
        Neighbour("10.244.1.2", 3, MAC_A),
        Neighbour("fd00:10:244:1:0::2", 3, MAC_A.upper()),
        Neighbour("10.244.1.3", 3, MAC_B),
    ]
    got = match_bridge(PODS, neighbours, FDB, BRIDGED)
    assert got.pod_ifindex == {"x/a": 4, "x/b": 5}
    assert got.bindings["x/a"] == PortBinding(("10.244.1.2", "fd00:10:244:1::2"), MAC_A, 4)
    assert got.strategy == {"x/a": "bridge", "x/b": "bridge"}
    assert got.missing == [] and got.conflicts == {}
    assert got.unclaimed == [6]  # a veth port nobody claims: the agent fails it closed


def test_unresolved_failed_or_foreign_neighbours_and_unlearned_macs_identify_nothing():
    neighbours = [
        Neighbour("10.244.1.2", 3, None, NUD_INCOMPLETE),
        Neighbour("fd00:10:244:1::2", 3, MAC_A, NUD_FAILED),
        Neighbour("10.244.1.3", 2, MAC_B),  # on eth0, not on a bridge
        Neighbour("fd00:10:244:1::3", 3, MAC_OLD),  # a MAC the bridge never learned
    ]
    got = match_bridge(PODS, neighbours, FDB, BRIDGED)
    assert got.pod_ifindex == {}
    assert got.missing == ["x/a", "x/b"]
    assert got.unclaimed == [4, 5, 6]


def test_the_nodes_own_mac_on_a_port_is_not_a_pod():
    # a neighbour pointing at a MAC the node owns (permanent FDB entry of the port itself)
    got = match_bridge(
        {"x/a": ["10.244.1.2"]}, [Neighbour("10.244.1.2", 3, "06:00:00:00:00:04")], FDB, BRIDGED
    )
    assert got.pod_ifindex == {} and got.missing == ["x/a"]


def test_a_reused_address_follows_the_mac_the_bridge_knows_not_a_stale_neighbour():
    # x/a's IPv6 entry still holds a deleted pod's MAC; its IPv4 entry was refreshed
    neighbours = [Neighbour("10.244.1.2", 3, MAC_A), Neighbour("fd00:10:244:1::2", 3, MAC_OLD)]
    got = match_bridge({"x/a": PODS["x/a"]}, neighbours, FDB, BRIDGED)
    assert got.pod_ifindex == {"x/a": 4} and got.conflicts == {}


def test_a_port_two_pods_resolve_to_goes_to_neither_and_stays_unclaimed():
    neighbours = [Neighbour("10.244.1.2", 3, MAC_A), Neighbour("10.244.1.3", 3, MAC_A)]
    got = match_bridge(PODS, neighbours, FDB, BRIDGED)
    assert got.pod_ifindex == {}
    assert got.conflicts == {"x/a": [4], "x/b": [4]}
    assert got.missing == ["x/a", "x/b"]
    assert 4 in got.unclaimed


def test_a_remembered_binding_survives_the_fdb_entry_ageing_out_until_contradicted():
    remembered = {"x/a": PortBinding(("10.244.1.2",), MAC_A, 4)}
    aged_out: list[FdbEntry] = []
    got = match_bridge({"x/a": ["10.244.1.2"]}, [], aged_out, BRIDGED, remembered)
    assert got.pod_ifindex == {"x/a": 4} and got.bindings == remembered
    # the MAC now learned on another port: the memory is wrong
    moved = [FdbEntry(MAC_A, 5, 3)]
    assert match_bridge({"x/a": ["10.244.1.2"]}, [], moved, BRIDGED, remembered).missing == ["x/a"]
    # the port left the bridge (pod deleted) or the pod's addresses changed
    gone = {i: link for i, link in BRIDGED.items() if i != 4}
    assert match_bridge({"x/a": ["10.244.1.2"]}, [], [], gone, remembered).missing == ["x/a"]
    assert match_bridge({"x/a": ["10.244.1.9"]}, [], [], BRIDGED, remembered).missing == ["x/a"]


def test_host_routes_win_and_their_veths_are_never_unclaimed():
    routes = Discovered(pod_ifindex={"x/a": 6}, strategy={"x/a": "route"})
    bridge = match_bridge({"x/b": PODS["x/b"]}, [Neighbour("10.244.1.3", 3, MAC_B)], FDB, BRIDGED)
    got = merge(routes, bridge)
    assert got.pod_ifindex == {"x/a": 6, "x/b": 5}
    assert got.strategy == {"x/a": "route", "x/b": "bridge"}
    assert got.unclaimed == [4]


def test_attachments_add_a_placeholder_per_unclaimed_port_that_names_no_pod():
    found = Discovered(pod_ifindex={"x/a": 4}, unclaimed=[6])
    assert found.attachments() == {"x/a": 4, unclaimed_key(6): 6}
    assert "/" in unclaimed_key(6) and "(" in unclaimed_key(6).split("/")[0]


def test_probes_go_to_missing_pods_only_while_a_port_is_unclaimed_and_not_too_often():
    found = Discovered(missing=["x/a"], unclaimed=[6])
    assert probe_targets(found, PODS, {}, 10.0, 1.0) == ["10.244.1.2", "fd00:10:244:1::2"]
    assert probe_targets(found, PODS, {"10.244.1.2": 9.5}, 10.0, 1.0) == ["fd00:10:244:1::2"]
    assert probe_targets(Discovered(missing=["x/a"]), PODS, {}, 10.0, 1.0) == []


CNI0_ROUTES = [Route("10.244.1.0", 24, 3), Route("fd00:10:244:1::", 64, 3)]  # connected routes


def test_only_bridges_whose_subnet_holds_local_pods_have_their_unclaimed_ports_failed_closed():
    links = {**BRIDGED, 7: Link(7, "docker0", "bridge"), 8: Link(8, "vethD", "veth", master=7)}
    routes = [*CNI0_ROUTES, Route("172.17.0.0", 16, 7), Route("", 0, 7)]
    carrying = pod_bridges(PODS, routes, links)
    assert carrying == {3}
    got = match_bridge(PODS, [], [], links, carrying_pods=carrying)
    assert got.unclaimed == [4, 5, 6]  # not docker0's vethD
    assert match_bridge(PODS, [], [], links).unclaimed == [4, 5, 6, 8]


def test_a_bridge_without_pods_gets_no_probes_and_no_pending_ports():
    reader = FakeReader(NodeTables([Route("172.17.0.0", 16, 3)], BRIDGED, [], []), ([], []))
    sent: list[list[str]] = []
    got = _discovery(reader, sent).discover({"x/a": ["10.244.1.2"]})
    assert got.missing == ["x/a"] and got.unclaimed == [] and sent == []


class FakeReader:
    """Tables as a kernel would show them; a probe makes `learn` appear (the pod answered)."""

    def __init__(self, tables: NodeTables, learn: tuple[list[Neighbour], list[FdbEntry]]) -> None:
        self.tables = tables
        self.learn = learn
        self.probed = False

    def read(self, neighbours: bool) -> NodeTables:
        base = NodeTables(self.tables.routes, self.tables.links)
        if neighbours:
            base.neighbours, base.fdb = self.read_bridge()
        return base

    def read_bridge(self) -> tuple[list[Neighbour], list[FdbEntry]]:
        if self.probed:
            return self.tables.neighbours + self.learn[0], self.tables.fdb + self.learn[1]
        return self.tables.neighbours, self.tables.fdb


def _discovery(reader: FakeReader, sent: list[list[str]]) -> NodeDiscovery:
    def prober(addresses: list[str]) -> None:
        sent.append(addresses)
        reader.probed = True

    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return NodeDiscovery(reader=reader, prober=prober, clock=lambda: now[0], sleep=sleep)


def test_an_unknown_bridged_pod_is_probed_from_the_node_and_found_in_the_same_pass():
    reader = FakeReader(
        NodeTables(CNI0_ROUTES, BRIDGED, [], [FdbEntry(MAC_B, 5, 3)]),
        ([Neighbour("10.244.1.2", 3, MAC_A)], [FdbEntry(MAC_A, 4, 3)]),
    )
    sent: list[list[str]] = []
    discovery = _discovery(reader, sent)
    got = discovery.discover({"x/a": PODS["x/a"]})
    assert sent == [["10.244.1.2", "fd00:10:244:1::2"]]
    assert got.pod_ifindex == {"x/a": 4} and got.missing == []
    # later passes: remembered, no more probes even once the FDB entry aged out
    reader.learn = ([], [])
    assert discovery.discover({"x/a": PODS["x/a"]}).pod_ifindex == {"x/a": 4}
    assert len(sent) == 1


def test_a_pod_that_never_answers_stays_missing_its_port_unclaimed_and_probes_are_rate_limited():
    reader = FakeReader(NodeTables(CNI0_ROUTES, BRIDGED, [], []), ([], []))
    sent: list[list[str]] = []
    discovery = _discovery(reader, sent)
    first = discovery.discover({"x/a": ["10.244.1.2"]})
    assert first.missing == ["x/a"] and first.unclaimed == [4, 5, 6]
    discovery.discover({"x/a": ["10.244.1.2"]})  # 0.3 s later (the fake clock): not again yet
    assert sent == [["10.244.1.2"]]


def test_a_routed_node_reads_no_bridge_tables_and_sends_no_probes():
    reader = FakeReader(NodeTables([Route("10.244.1.2", 32, 5)], LINKS, [], []), ([], []))
    sent: list[list[str]] = []
    got = _discovery(reader, sent).discover({"x/a": ["10.244.1.2"], "x/b": ["10.244.1.3"]})
    assert got.pod_ifindex == {"x/a": 5} and got.missing == ["x/b"] and got.unclaimed == []
    assert sent == []


def test_node_discovery_reads_the_current_namespace_without_root():
    got = NodeDiscovery(probe=False).discover({"x/a": ["192.0.2.254"]})
    assert got.pod_ifindex == {} and got.missing == ["x/a"]


# ---- decoding rtnetlink messages (controller.datapath.rtnl: only the attributes discovery uses)


def _msg(header: bytes, *attrs: tuple[int, bytes]) -> rtnl.Message:
    return rtnl.Message(0, header, b"".join(rtnl.attr(k, v) for k, v in attrs))


def test_a_route_message_gives_its_destination_output_interface_and_the_table_attribute_over_the_header():
    header = rtnl.RTMSG.pack(socket.AF_INET6, 128, 0, 0, 252, 3, 0, 1, 0)
    msg = _msg(
        header,
        (RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00:10:244:1:0:0:0:2")),
        (RTA_OIF, struct.pack("=I", 7)),
        (RTA_TABLE, struct.pack("=I", 254)),
    )
    assert route_from_msg(msg) == Route("fd00:10:244:1::2", 128, 7, table=254, type=1)
    default = _msg(rtnl.RTMSG.pack(socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0))  # multipath: no RTA_OIF
    assert route_from_msg(default) == Route("", 0, None, table=254, type=1)


def test_a_link_message_gives_name_kind_from_the_nested_link_info_master_and_mac():
    header = rtnl.IFINFOMSG.pack(socket.AF_UNSPEC, 1, 12, 0, 0)
    info = rtnl.attr(2, b"\x00" * 8) + rtnl.attr(1, b"veth\0")  # IFLA_INFO_DATA first, then KIND
    msg = _msg(
        header,
        (IFLA_IFNAME, b"vgabc\0"),
        (IFLA_ADDRESS, bytes.fromhex("0AFE00000001")),
        (IFLA_MASTER, struct.pack("=I", 4)),
        (IFLA_LINKINFO, info),
    )
    assert link_from_msg(msg) == Link(12, "vgabc", "veth", 4, "0a:fe:00:00:00:01")
    bare = _msg(header, (IFLA_IFNAME, b"lo\0"), (IFLA_MASTER, struct.pack("=I", 0)))
    assert link_from_msg(bare) == Link(12, "lo", None, None, None)


def test_neighbour_and_fdb_messages_give_address_mac_port_bridge_and_state():
    neigh = _msg(
        rtnl.NDMSG.pack(socket.AF_INET, 3, NUD_REACHABLE, 0, 1),
        (NDA_DST, socket.inet_aton("10.244.1.2")),
        (NDA_LLADDR, bytes.fromhex("aabbccddeeff")),
    )
    assert neighbour_from_msg(neigh) == Neighbour("10.244.1.2", 3, "aa:bb:cc:dd:ee:ff", NUD_REACHABLE)
    unresolved = _msg(
        rtnl.NDMSG.pack(socket.AF_INET, 3, NUD_INCOMPLETE, 0, 1), (NDA_DST, socket.inet_aton("10.0.0.9"))
    )
    assert neighbour_from_msg(unresolved) == Neighbour("10.0.0.9", 3, None, NUD_INCOMPLETE)
    fdb = _msg(
        rtnl.NDMSG.pack(socket.AF_BRIDGE, 8, NUD_PERMANENT, 2, 0),
        (NDA_LLADDR, bytes.fromhex("020000000001")),
        (NDA_MASTER, struct.pack("=I", 4)),
    )
    assert fdb_from_msg(fdb) == FdbEntry("02:00:00:00:00:01", 8, 4, NUD_PERMANENT)
    assert fdb_from_msg(_msg(rtnl.NDMSG.pack(socket.AF_BRIDGE, 8, 0, 0, 0))) is None


def test_the_raw_dumps_of_the_current_namespace_list_its_loopback_and_end_without_root():
    with rtnl.Rtnl() as nl:
        links = [link_from_msg(m) for m in nl.links()]
        routes = [route_from_msg(m) for m in nl.routes(socket.AF_INET)]
        nl.neighbours(socket.AF_INET)  # may be empty; must terminate
    assert any(link.name == "lo" and link.index == 1 for link in links)
    assert all(isinstance(r.dst_len, int) for r in routes)
