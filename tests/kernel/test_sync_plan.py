"""The pure half of the sync layer: desired map bytes and the safe operation order (no root)."""

from __future__ import annotations

import ipaddress

from controller.compiler.desired_state import EndpointDesired, NodeDesired, PolicyEntryKey, PolicyEntryValue
from controller.datapath import abi, codecs
from controller.datapath.encoding import PENDING_FLAGS, Encoder, desired_maps
from controller.datapath.sync import diff, plan

ALLOW = PolicyEntryValue(verdict=1, rule_ref=11)


def _node(entries: dict[PolicyEntryKey, PolicyEntryValue], ingress_isolated: bool = True) -> NodeDesired:
    ep = EndpointDesired(
        pod="x/a",
        identity=300,
        ingress_isolated=ingress_isolated,
        egress_isolated=False,
        ipv4="10.244.1.10",
        ipv6="fd00:10:244:1::10",
        entries=entries,
    )
    return NodeDesired(
        endpoints={"x/a": ep},
        ipcache={
            ipaddress.ip_network("10.244.1.10/32"): (300, 0, 0),
            ipaddress.ip_network("::/0"): (2, 0, 0),
        },
        rules={},
        identities={},
    )


def test_a_diff_adds_updates_and_deletes_by_bytes() -> None:
    ups, dels = diff("m", {b"a": b"1", b"b": b"2"}, {b"b": b"3", b"c": b"4"})
    assert [(o.kind, o.key) for o in ups] == [("add", b"a"), ("update", b"b")]
    assert [(o.kind, o.key) for o in dels] == [("delete", b"c")]


def test_an_unchanged_state_plans_nothing() -> None:
    want = desired_maps(_node({PolicyEntryKey(0, 257, 6, 80, 16): ALLOW}), {"x/a": 7})
    assert plan(want, want) == []


def test_adds_and_updates_all_come_before_any_delete() -> None:
    old = desired_maps(_node({PolicyEntryKey(0, 257, 6, 80, 16): ALLOW}), {"x/a": 7})
    new = desired_maps(_node({PolicyEntryKey(0, 258, 6, 80, 16): ALLOW}, ingress_isolated=True), {"x/a": 7})
    ops = plan(new, old)
    kinds = [o.kind for o in ops]
    assert kinds == ["add", "delete"]
    assert all(o.map == "vg_policy" for o in ops)


def test_policy_entries_are_written_before_the_endpoint_that_becomes_isolated() -> None:
    open_ep = desired_maps(_node({}, ingress_isolated=False), {"x/a": 7})
    isolated = desired_maps(_node({PolicyEntryKey(0, 257, 6, 80, 16): ALLOW}), {"x/a": 7})
    ops = plan(isolated, open_ep)
    assert [(o.kind, o.map) for o in ops] == [("add", "vg_policy"), ("update", "vg_endpoints")]


def test_an_endpoint_is_removed_before_its_policy_entries() -> None:
    had = desired_maps(_node({PolicyEntryKey(0, 257, 6, 80, 16): ALLOW}), {"x/a": 7})
    ops = plan({}, had)
    order = [o.map for o in ops]
    assert order.index("vg_endpoints") < order.index("vg_ipcache4") < order.index("vg_policy")


def test_an_address_moves_to_a_new_identity_only_between_its_entries_added_and_the_old_ones_deleted() -> None:
    """A relabelled pod (or a namespace leaving its class): the new identity's entries are
    written before the address carries it, and the old identity's go once no address has it,
    so a new flow never meets an identity without its entries."""
    node = _node({PolicyEntryKey(0, 257, 6, 80, 16): ALLOW})
    old = desired_maps(node, {"x/a": 7})
    relabelled = dict(node.ipcache) | {ipaddress.ip_network("10.244.1.10/32"): (301, 0, 0)}
    moved = NodeDesired(
        endpoints=node.endpoints,
        ipcache=relabelled,
        rules={},
        identities={},
        tier_profiles={0x80000001: {PolicyEntryKey(0, 301, 6, 80, 16): ALLOW}},
    )
    new = desired_maps(moved, {"x/a": 7})
    got = [(o.kind, o.map) for o in plan(new, old) if o.map in ("vg_policy", "vg_ipcache4")]
    assert got == [("add", "vg_policy"), ("update", "vg_ipcache4")]
    back = [(o.kind, o.map) for o in plan(old, new) if o.map in ("vg_policy", "vg_ipcache4")]
    assert back == [("update", "vg_ipcache4"), ("delete", "vg_policy")]


def test_policy_keys_use_the_documented_prefix_lengths_and_network_order_ports() -> None:
    entries = {
        PolicyEntryKey(0, 0, 0, 0, 0): ALLOW,
        PolicyEntryKey(0, 257, 17, 0, 0): ALLOW,
        PolicyEntryKey(1, 257, 6, 8000, 10): ALLOW,
        PolicyEntryKey(1, 257, 6, 443, 16): ALLOW,
    }
    got = desired_maps(_node(entries), {"x/a": 7})["vg_policy"]
    keys = sorted(
        (k.prefixlen, k.ep_id, k.identity, k.dir, k.proto, bytes(k.dport))
        for k in map(abi.PolicyKey.from_bytes, got)
    )
    assert keys == [
        (72, 7, 0, 0, 0, b"\x00\x00"),
        (80, 7, 257, 0, 17, b"\x00\x00"),
        (90, 7, 257, 1, 6, (8000).to_bytes(2, "big")),
        (96, 7, 257, 1, 6, (443).to_bytes(2, "big")),
    ]
    for kb, vb in got.items():
        ep_id, key, value = codecs.decode_policy(kb, vb)
        assert ep_id == 7 and entries[key] == value


def test_endpoints_are_keyed_by_ifindex_with_the_ifindex_as_endpoint_id() -> None:
    got = desired_maps(_node({}), {"x/a": 42})["vg_endpoints"]
    ((kb, vb),) = got.items()
    ep = codecs.decode_endpoint(kb, vb)
    assert (ep.ifindex, ep.ep_id, ep.identity, ep.flags) == (42, 42, 300, abi.EP_F_INGRESS_ISOLATED)
    assert (ep.ipv4, ep.ipv6) == ("10.244.1.10", "fd00:10:244:1::10")


def test_a_pod_with_a_veth_but_no_desired_state_is_pending() -> None:
    got = desired_maps(_node({}), {"x/a": 42, "x/new": 43})["vg_endpoints"]
    flags = {codecs.decode_endpoint(k, v).ifindex: codecs.decode_endpoint(k, v).flags for k, v in got.items()}
    assert flags[43] == PENDING_FLAGS


def test_a_pod_without_a_veth_is_not_written() -> None:
    got = desired_maps(_node({PolicyEntryKey(0, 257, 6, 80, 16): ALLOW}), {})
    assert got["vg_endpoints"] == {} and got["vg_policy"] == {}
    assert len(got["vg_ipcache4"]) == 1 and len(got["vg_ipcache6"]) == 1


def test_the_ipcache_bytes_reused_from_the_previous_call_are_those_a_fresh_encoding_gives() -> None:
    cache = Encoder()
    node = _node({})
    nets = list(node.ipcache)
    steps = [
        node.ipcache,
        node.ipcache,  # same objects, same values: every entry reused
        {nets[0]: (301, 0, 0), nets[1]: (2, 0, 0)},  # a value changed
        {ipaddress.ip_network("10.244.1.10/32"): (301, 0, 0), nets[1]: (2, 0, 0)},  # an equal, new object
        {nets[1]: (2, 0, 0)},  # an entry gone
    ]
    for ipcache in steps:
        step = NodeDesired(endpoints=node.endpoints, ipcache=ipcache, rules={}, identities={})
        assert desired_maps(step, {"x/a": 7}, cache) == desired_maps(step, {"x/a": 7})
