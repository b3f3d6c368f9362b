"""The pure parts of the debug CLI: tables, translations, explain text, observe records,
reachability, kubectl-like describe, and audit-mode compilation. No root, no kernel."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
import yaml

from controller.compiler.clusterview import ClusterView
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath import abi, codecs
from controller.datapath.encoding import desired_maps
from controller.debug import bpfview, netpol, observe, reach, render
from controller.debug.explain import explain, explain_text
from controller.debug.kernel import LiveHalf
from tests.conformance.runner import ORDER, parse_matrix, shared_conformance_dir
from tests.support.debug_views import NODES, flow_event, kernel_state, node_2_behind, raw_cluster


def _scenario_step(scenario: str) -> tuple[list[dict[str, Any]], dict[tuple[str, str], bool]]:
    """The first step of a shared conformance scenario: its policies and expected TCP/80 matrix."""
    doc = yaml.safe_load((shared_conformance_dir() / "upstream-e2e-public.yaml").read_text())
    scenarios = doc if isinstance(doc, list) else doc.get("scenarios", doc)
    sc = next(s for s in scenarios if s["id"] == scenario)
    step = sc["steps"][0]
    return step["apply"], parse_matrix(step["probe"]["expect"])


@pytest.fixture(scope="module")
def tcp03() -> tuple[ClusterView, dict[tuple[str, str], bool]]:
    policies, expect = _scenario_step("tcp-03")
    return ClusterView(raw_cluster(policies)), expect


# -- render --------------------------------------------------------------------------------


def test_a_table_aligns_columns_and_drops_trailing_blanks() -> None:
    text = render.table(["NAME", "AGE"], [["a-long-name", "5s"], ["b", None]])
    assert text.splitlines() == ["NAME          AGE", "a-long-name   5s", "b"]


def test_port_prefixes_print_as_the_ports_they_cover() -> None:
    assert render.port_range(80, 16) == "80"
    assert render.port_range(8080, 12) == "8080-8095"
    assert render.port_range(0, 0) == "*"


def test_selectors_print_like_kubectl() -> None:
    sel = {
        "matchLabels": {"pod": "a"},
        "matchExpressions": [{"key": "ns", "operator": "In", "values": ["x", "y"]}],
    }
    assert render.selector_text(sel) == "pod=a,ns in (x,y)"
    assert render.selector_text({}) == "<none>"


# -- explain ---------------------------------------------------------------------------------


def test_explain_names_the_isolating_policy_of_a_denial(tcp03: Any) -> None:
    view, _ = tcp03
    e = explain(view, "x/c", "x/a", 80, "TCP")
    assert not e.allowed
    assert e.ingress.policies == ["x/x-a-allows-x-b"]
    assert "denied: isolated by x/x-a-allows-x-b and no rule matches" in explain_text(e)
    assert e.egress.reason == "ALLOW_NOT_ISOLATED"


def test_explain_names_the_rule_that_allows(tcp03: Any) -> None:
    view, _ = tcp03
    doc = explain(view, "x/b", "x/a", 80, "TCP").as_json()
    assert doc["allowed"] is True
    assert doc["ingress"]["rule"] == "x/x-a-allows-x-b ingress[0]"
    assert doc["ingress"]["policies"] == ["x/x-a-allows-x-b"]
    assert doc["egress"]["policies"] == []


def test_explain_accepts_pod_addresses_and_resolves_them_to_pods(tcp03: Any) -> None:
    view, _ = tcp03
    xa = view.cluster.pods["x/a"].ipv6
    e = explain(view, "x/c", xa, 80, "TCP")
    assert (e.dst.pod, e.family, e.allowed) == ("x/a", 6, False)


def test_explain_agrees_with_every_cell_of_the_conformance_matrix(tcp03: Any) -> None:
    view, expect = tcp03
    for (src, dst), allowed in expect.items():
        assert explain(view, src, dst, 80, "TCP").allowed == allowed, (src, dst)


def test_a_kernel_that_disagrees_is_reported_as_a_mismatch(tcp03: Any) -> None:
    view, _ = tcp03

    def live(node: str, ep_ip: str, direction: int, peer: str, proto: int, port: int) -> LiveHalf:
        return LiveHalf(True, "ALLOW_NOT_ISOLATED")  # a stale map that never saw the policy

    e = explain(view, "x/c", "x/a", 80, "TCP", live=live, agents_behind={"node-1": "agent behind"})
    assert len(e.mismatches) == 1
    assert "compiled state says denied (DROP_POLICY)" in e.mismatches[0]
    assert "agent behind" in e.mismatches[0]
    assert "KERNEL MISMATCH" in explain_text(e)


def test_a_kernel_that_agrees_is_not_a_mismatch(tcp03: Any) -> None:
    view, _ = tcp03

    def live(node: str, ep_ip: str, direction: int, peer: str, proto: int, port: int) -> LiveHalf:
        if direction == DIR_INGRESS:
            return LiveHalf(False, "DROP_POLICY")
        return LiveHalf(True, "ALLOW_NOT_ISOLATED")

    e = explain(view, "x/c", "x/a", 80, "TCP", live=live)
    assert e.mismatches == [] and "kernel: agrees" in explain_text(e)


def test_explaining_a_pod_to_itself_says_the_datapath_never_sees_it(tcp03: Any) -> None:
    view, _ = tcp03
    e = explain(view, "x/a", "x/a", 80, "TCP")
    assert e.same_pod and any("loopback" in n for n in e.notes)


# -- audit mode ------------------------------------------------------------------------------


def _deny_all(ns: str, name: str, audit: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if audit:
        meta["annotations"] = {"vethguard.dev/audit": "true"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def test_a_direction_isolated_only_by_audit_policies_lets_would_be_drops_through_as_audit() -> None:
    view = ClusterView(raw_cluster([_deny_all("y", "audit-deny", audit=True)]))
    ep = view.desired(view.node_of("y/a") or "").endpoints["y/a"]
    assert ep.ingress_isolated and ep.ingress_audit and not ep.egress_audit
    e = explain(view, "x/a", "y/a", 80, "TCP")
    assert e.allowed and e.ingress.reason == "ALLOW_AUDIT" and e.ingress.policies == ["y/audit-deny"]
    flags = abi.EndpointInfo.from_bytes(
        desired_maps(view.desired(view.node_of("y/a") or ""), {"y/a": 9})["vg_endpoints"][codecs.u32_key(9)]
    ).flags
    assert flags & abi.EP_F_INGRESS_AUDIT and not flags & abi.EP_F_EGRESS_AUDIT


def test_one_enforcing_policy_makes_the_direction_enforcing_again() -> None:
    view = ClusterView(raw_cluster([_deny_all("y", "audit-deny", True), _deny_all("y", "real-deny", False)]))
    ep = view.desired(view.node_of("y/a") or "").endpoints["y/a"]
    assert ep.ingress_isolated and not ep.ingress_audit
    e = explain(view, "x/a", "y/a", 80, "TCP")
    assert not e.allowed and e.ingress.policies == ["y/audit-deny", "y/real-deny"]
    assert "isolated by y/audit-deny and y/real-deny" in e.ingress.text


# -- bpf tables ------------------------------------------------------------------------------


def test_policy_entries_name_their_policy_rule_and_count_conntrack_flows(tcp03: Any) -> None:
    view, _ = tcp03
    node = view.node_of("x/a") or ""
    xa, xb = view.cluster.pods["x/a"], view.cluster.pods["x/b"]
    probe_state, ifindex = kernel_state(view, node)
    ref = next(v.rule_ref for (ep, _), v in probe_state.policy.items() if ep == ifindex["x/a"])
    now = 10**12
    ct = [
        codecs.CtEntry(
            ifindex["x/a"],
            DIR_INGRESS,
            4,
            6,
            xb.ipv4 or "",
            xa.ipv4 or "",
            40000,
            80,
            now + 10**9,
            7,
            700,
            1,
            ref,
            abi.CT_ALLOWED,
            1,
        ),
        codecs.CtEntry(
            ifindex["x/a"],
            DIR_INGRESS,
            4,
            6,
            xb.ipv4 or "",
            xa.ipv4 or "",
            40001,
            80,
            now - 1,
            5,
            500,
            1,
            ref,
            abi.CT_ALLOWED,
            1,
        ),  # expired: not counted
    ]
    state, _ = kernel_state(view, node, ct)
    rows = bpfview.policy_rows(view, node, state, now, pod="x/a")
    assert len(rows) == 1
    row = rows[0]
    assert (row["policy"], row["rule"], row["peer"], row["ports"]) == (
        "x/x-a-allows-x-b",
        "ingress[0]",
        "x:pod=b",
        "*",
    )
    assert (row["flows"], row["packets"], row["bytes"]) == (1, 7, 700)
    ct_rows = bpfview.ct_rows(view, node, state, now)
    assert [r["state"] for r in ct_rows] == ["allowed", "expired"]
    assert ct_rows[0]["from"] == "x/b" and ct_rows[0]["rule"] == "ingress[0]"


def test_endpoints_translate_back_to_pods_and_isolating_policies(tcp03: Any) -> None:
    view, _ = tcp03
    node = view.node_of("x/a") or ""
    state, _ = kernel_state(view, node)
    rows = {r["pod"]: r for r in bpfview.endpoint_rows(view, node, state)}
    assert rows["x/a"]["flags"] == ["ingress-isolated"]
    assert rows["x/a"]["isolated_ingress_by"] == ["x/x-a-allows-x-b"]
    assert set(rows) == {p for p in view.pods() if view.node_of(p) == node}


def test_ipcache_rows_name_pods_nodes_and_reserved_identities(tcp03: Any) -> None:
    view, _ = tcp03
    state, _ = kernel_state(view, "node-1")
    by_prefix = {r["prefix"]: r for r in bpfview.ipcache_rows(view, "node-1", state)}
    assert by_prefix["0.0.0.0/0"]["meaning"] == "world"
    assert by_prefix["10.244.1.1/32"]["meaning"] == "node/node-1"
    assert by_prefix["10.244.2.1/32"]["labels"] == "remote-node"
    xb = view.cluster.pods["x/b"].ipv4
    assert by_prefix[f"{xb}/32"]["meaning"] == "x/b"


def test_counters_translate_reasons_and_unknown_codes_do_not_crash(tcp03: Any) -> None:
    view, _ = tcp03
    state, ifindex = kernel_state(view, "node-1")
    rows = bpfview.counter_rows(
        view, "node-1", state, {(ifindex["x/a"], 64, 0): (3, 222), (ifindex["x/a"], 99, 1): (1, 1)}
    )
    assert [(r["pod"], r["reason"], r["drop"]) for r in rows] == [
        ("x/a", "DROP_POLICY", True),
        ("x/a", "REASON_99", True),
    ]


# -- observe ---------------------------------------------------------------------------------


def test_a_drop_event_names_the_isolating_policy(tcp03: Any) -> None:
    view, _ = tcp03
    xc, xa = view.cluster.pods["x/c"].ipv4, view.cluster.pods["x/a"].ipv4
    ev = codecs.decode_event(
        node="node-1", data=flow_event(xc or "", xa or "", DIR_INGRESS, abi.Reason.DROP_POLICY)
    )
    rec = observe.record(view, ev, boot_offset_ns=1_700_000_000 * 10**9)
    assert (rec["from"], rec["to"], rec["port"], rec["protocol"]) == ("x/c", "x/a", 80, "TCP")
    assert (rec["verdict"], rec["reason"], rec["policy"], rec["direction"]) == (
        "denied",
        "DROP_POLICY",
        "x/x-a-allows-x-b",
        "ingress",
    )
    assert rec["time"] == "2023-11-14T22:13:25.000Z"
    assert "isolated by x/x-a-allows-x-b" in observe.line(rec)


def test_an_allowed_event_names_the_rule_from_its_rule_reference(tcp03: Any) -> None:
    view, _ = tcp03
    xb, xa = view.cluster.pods["x/b"].ipv4, view.cluster.pods["x/a"].ipv4
    ref = next(iter(view.compiled.rules))
    rec = observe.record(
        view, codecs.decode_event(node="n", data=flow_event(xb or "", xa or "", DIR_INGRESS, 0, ref)), 0
    )
    assert (rec["verdict"], rec["policy"], rec["rule"]) == (
        "allowed",
        "x/x-a-allows-x-b",
        "x/x-a-allows-x-b ingress[0]",
    )
    assert observe.matches(rec, ["x/a"], ["allowed"]) and not observe.matches(rec, ["y/a"], [])
    assert not observe.matches(rec, [], ["denied"])


def test_an_audit_event_is_reported_as_audit() -> None:
    view = ClusterView(raw_cluster([_deny_all("y", "audit-deny", audit=True)]))
    src, dst = view.cluster.pods["x/a"].ipv4, view.cluster.pods["y/a"].ipv4
    rec = observe.record(
        view,
        codecs.decode_event(
            node="n", data=flow_event(src or "", dst or "", DIR_INGRESS, abi.Reason.ALLOW_AUDIT)
        ),
        0,
    )
    assert (rec["verdict"], rec["policy"], rec["policies"]) == ("audit", "y/audit-deny", ["y/audit-deny"])


def test_an_egress_event_is_attributed_to_the_source_pod(tcp03: Any) -> None:
    view, _ = tcp03
    xc, xa = view.cluster.pods["x/c"].ipv4, view.cluster.pods["x/a"].ipv4
    rec = observe.record(
        view, codecs.decode_event(node="n", data=flow_event(xc or "", xa or "", DIR_EGRESS, 3)), 0
    )
    assert (rec["endpoint"], rec["verdict"], rec["policy"]) == ("x/c", "allowed", None)


def test_the_flow_event_mirror_is_64_bytes() -> None:
    assert ctypes.sizeof(abi.FlowEvent) == 64


# -- reachability and netpol -----------------------------------------------------------------


def test_reachability_reproduces_the_conformance_expectation(tcp03: Any) -> None:
    view, expect = tcp03
    results = reach.matrix(view, ORDER, 80, "TCP")
    assert {(r["from"], r["to"]): r["allowed"] for r in results} == expect
    text = reach.matrix_text(results, ORDER, "TCP/80")
    assert text.splitlines()[1].split()[1:] == ["X", *["."] * 8]


def test_a_probe_disagreement_is_marked_but_the_diagonal_is_not() -> None:
    results = [{"from": "x/a", "to": "x/a", "allowed": False}, {"from": "x/b", "to": "x/a", "allowed": False}]
    out = reach.compare(results, {("x/a", "x/a"): True, ("x/b", "x/a"): True})
    assert [r["agrees"] for r in out] == [True, False]
    assert "!." in reach.matrix_text(out, ["x/a", "x/b"], "t")


def test_get_and_describe_read_like_kubectl_plus_vethguard(tcp03: Any) -> None:
    view, _ = tcp03
    pols = [dict(p) for p in view.raw.policies]
    agents = node_2_behind(view.raw)
    rows = netpol.get_rows(view, pols, list(NODES), agents)
    assert rows[0]["pod_selector"] == "pod=a" and rows[0]["selected"] == ["x/a"]
    assert rows[0]["realized"] == {"node-1": True, "node-2": False}
    wide = netpol.get_text(rows, all_namespaces=True, wide=True)
    assert wide.splitlines()[0].split() == [
        "NAMESPACE",
        "NAME",
        "POD-SELECTOR",
        "AGE",
        "TYPES",
        "MODE",
        "SELECTED-PODS",
        "REALIZED",
    ]
    assert "1/2" in wide
    text = netpol.describe_text(view, pols[0], list(NODES), agents)
    for line in (
        "  Allowing ingress traffic:",
        "    To Port: <any> (traffic allowed to all ports)",
        "      PodSelector: pod=b",
        "  Not affecting egress traffic",
        "  Policy Types: Ingress",
        f"    {view.node_of('x/a')}: x/a",
    ):
        assert line in text.splitlines(), line
