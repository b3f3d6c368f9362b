"""The debug CLI's host endpoint views over fake maps (no root): explain's host endpoint half
with its live cross-check, `bpf hosteps` rows, and observe naming host endpoint events for the
node's interface instead of a pod."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from controller.compiler.clusterview import ClusterView
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi
from controller.datapath.codecs import decode_event
from controller.debug import explain, hostep, hostep_cli, observe
from controller.debug.inputs import NodeRef
from controller.debug.kernel import NodeMaps
from tests.support.debug_views import (
    HEP_IFINDEX,
    LB_IP,
    NODE_1_IP,
    NODE_PORT,
    OFFICE,
    OUTSIDE,
    example_objects,
    flow_event,
    hep_links,
    hep_node_maps,
    raw_host_endpoint_cluster,
)

NODES = {n: NodeRef(n, Path(f"/fake/{n}")) for n in ("node-1", "node-2")}


@pytest.fixture(scope="module")
def view() -> ClusterView:
    objs = example_objects("host-endpoints.yaml", "deny-nodeports.yaml")
    return ClusterView(raw_host_endpoint_cluster(*objs))


def live(view: ClusterView, maps: Any = None) -> Any:
    return hostep_cli.live_hep_lookup(
        view,
        NODES,
        maps or (lambda ref: hep_node_maps(view, ref.name)),
        lambda ref: hep_links(view, ref.name),
    )[0]


def explained(view: ClusterView, src: str, dst: str, port: int, maps: Any = None) -> explain.Explanation:
    return explain.explain(view, src, dst, port, "TCP", live_hep=live(view, maps))


def test_explain_names_the_preDNAT_deny_of_the_nodes_host_endpoint_and_the_kernel_agrees(
    view: ClusterView,
) -> None:
    e = explained(view, OUTSIDE, NODE_1_IP, NODE_PORT)
    assert not e.allowed and not e.mismatches
    [h] = e.host
    text = explain.explain_text(e)
    assert "host endpoint node-1-public (eth0 on node-1): denied (forwarded): preDNAT: " in text
    assert "GlobalNetworkPolicy deny-nodeports ingress[0]: Deny" in text
    assert "verdict: DENIED" in text and "kernel: agrees (node-1 eth0 DROP_PREDNAT)" in text
    j = e.as_json()["host_endpoints"][0]
    assert (j["endpoint"], j["policy_set"], j["tier"], j["policy"], j["rule_index"], j["action"]) == (
        "node/node-1:eth0",
        "preDNAT",
        "Calico",
        "deny-nodeports",
        0,
        "Deny",
    )
    assert j["kernel"] == [
        {"interface": "eth0", "allowed": False, "reason": "DROP_PREDNAT", "rule_ref": h.verdict.rule_ref}
    ]


def test_explain_of_a_load_balancer_address_shows_every_nodes_host_endpoint_letting_it_in(
    view: ClusterView,
) -> None:
    e = explained(view, OFFICE, LB_IP, 80)
    assert e.allowed and not e.mismatches
    assert [(h.node, h.verdict.reason, h.verdict.policy_set) for h in e.host] == [
        ("node-1", "ALLOW_HOSTEP", "unpoliced"),
        ("node-2", "ALLOW_HOSTEP", "unpoliced"),
    ]


def test_explain_shows_calicos_default_deny_for_another_nodes_pod_and_none_for_the_nodes_own(
    view: ClusterView,
) -> None:
    pods = {p: view.node_of(p) for p in view.pods()}
    other = next(p for p, n in pods.items() if n == "node-2")
    own = next(p for p, n in pods.items() if n == "node-1")
    e = explained(view, other, NODE_1_IP, 8080)
    assert [(h.verdict.reason, h.verdict.policy_set) for h in e.host] == [("DROP_HOSTEP_END", "default deny")]
    assert "Calico's default deny of a host endpoint (selected by GlobalNetworkPolicy deny-nodeports)" in (
        explain.explain_text(e)
    )
    mine = explained(view, own, NODE_1_IP, 8080)
    assert mine.host == [] and any("does not cross its host endpoints" in n for n in mine.notes)
    assert explained(view, OUTSIDE, NODE_1_IP, 22).host[0].verdict.reason == "ALLOW_FAILSAFE"


def test_explain_reports_a_kernel_mismatch_when_the_host_endpoint_entry_lost_its_preDNAT_profile(
    view: ClusterView,
) -> None:
    def stale(ref: NodeRef) -> NodeMaps:
        nm = hep_node_maps(view, ref.name)
        items = nm.maps["vg_hosteps"].items()
        for k in items:
            items[k] = bytes(abi.HostepInfo(flags=0, profile_host=0, profile_fwd=0, profile_pre=0))
        return nm

    e = explained(view, OUTSIDE, NODE_1_IP, NODE_PORT, stale)
    assert e.mismatches and "live maps say ALLOW_HOSTEP" in e.mismatches[0]
    assert "compiled state says DROP_PREDNAT" in e.mismatches[0]


def test_the_bpf_hosteps_rows_name_the_interface_host_endpoint_sets_and_failsafe_ports(
    view: ClusterView,
) -> None:
    nm = hep_node_maps(view, "node-1")
    rows = hostep.hostep_rows(
        view, "node-1", nm.hosteps(), nm.failsafe(), nm.dump().policy, hep_links(view, "node-1")
    )
    [r] = rows
    assert (r["interface"], r["ifindex"], r["host_endpoint"], r["flags"], r["matches_desired"]) == (
        "eth0",
        HEP_IFINDEX,
        "node-1-public",
        ["preDNAT"],
        True,
    )
    assert r["profile_pre"] and not r["profile_host"] and not r["profile_fwd"]
    assert (r["policies_prednat"], r["policies_normal"], r["policies_forward"]) == (
        ["GlobalNetworkPolicy deny-nodeports"],
        [],
        [],
    )
    assert "TCP/22" in r["failsafe_inbound"] and "UDP/53" in r["failsafe_outbound"]
    assert "TCP/22" not in r["failsafe_outbound"] or ("TCP", 22) in view.desired("node-1").failsafe_outbound


def _event(src: str, dst: str, direction: int, reason: abi.Reason, rule_ref: int = 0, port: int = 80) -> Any:
    ev = decode_event(flow_event(src, dst, direction, reason, rule_ref, ep_id=HEP_IFINDEX), "node-1")
    return dataclasses.replace(ev, dport=port)


def test_observe_names_a_preDNAT_drop_for_the_node_interface_policy_and_rule(view: ClusterView) -> None:
    heps = hostep_cli.observe_host_endpoints(
        view,
        [NODES["node-1"]],
        lambda ref: hep_node_maps(view, ref.name),
        lambda ref: hep_links(view, ref.name),
    )
    assert heps == {("node-1", HEP_IFINDEX): ("node-1-public", "eth0")}
    ref = explained(view, OUTSIDE, NODE_1_IP, NODE_PORT).host[0].verdict.rule_ref
    rec = observe.record(
        view, _event(OUTSIDE, NODE_1_IP, DIR_INGRESS, abi.Reason.DROP_PREDNAT, ref, NODE_PORT), 0, heps
    )
    assert (
        rec["endpoint"],
        rec["host_endpoint"],
        rec["policy_set"],
        rec["tier"],
        rec["policy"],
        rec["verdict"],
    ) == (
        "node/node-1:eth0",
        "node-1-public",
        "preDNAT",
        "Calico",
        "deny-nodeports",
        "denied",
    )
    assert (
        "(DROP_PREDNAT at ingress of node/node-1:eth0)  [preDNAT]  "
        "by Calico:GlobalNetworkPolicy deny-nodeports" in observe.line(rec)
    )
    end = observe.record(
        view, _event(OUTSIDE, NODE_1_IP, DIR_INGRESS, abi.Reason.DROP_HOSTEP_END, port=8080), 0, heps
    )
    assert (end["policy_set"], end["policies"], end["tier"]) == (
        "default deny",
        ["GlobalNetworkPolicy deny-nodeports"],
        "Calico",
    )


def test_observe_does_not_name_a_pod_for_traffic_a_host_endpoint_forwards_to_or_from_it(
    view: ClusterView,
) -> None:
    pod = next(p for p in view.pods() if view.node_of(p) == "node-1")
    ip = view.cluster.pods[pod].ipv4
    assert ip is not None
    heps = {("node-1", HEP_IFINDEX): ("node-1-public", "eth0")}
    into = observe.record(view, _event(OUTSIDE, ip, DIR_INGRESS, abi.Reason.ALLOW_HOSTEP), 0, heps)
    out = observe.record(view, _event(ip, OUTSIDE, DIR_EGRESS, abi.Reason.ALLOW_HOSTEP), 0, heps)
    for rec in (into, out):
        assert (rec["endpoint"], rec["policy_set"], rec["policies"]) == ("node/node-1:eth0", "unpoliced", [])
    # without the interface known (maps unreadable): the reason alone still says host endpoint
    bare = observe.record(view, _event(OUTSIDE, ip, DIR_INGRESS, abi.Reason.ALLOW_FAILSAFE), 0, {})
    assert (bare["endpoint"], bare["host_endpoint"], bare["policy_set"]) == (
        f"node/node-1:if{HEP_IFINDEX}",
        None,
        "failsafe",
    )
    # a pod's own event (its veth's ep_id) is still the pod's
    own = observe.record(
        view, decode_event(flow_event(OUTSIDE, ip, DIR_INGRESS, abi.Reason.ALLOW_POLICY), "node-1"), 0, heps
    )
    assert own["endpoint"] == pod and own["host_endpoint"] is None
