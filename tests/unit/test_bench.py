"""Pure parts of the benchmarks: synthetic clusters, the kube-router-style iptables peer,
statistics, sockperf parsing, tables and plots (no root, no kernel)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from controller.bench import (
    common,
    control_plane,
    datapath_bench,
    report,
    small_packets,
    synth,
    synth_cnp,
    tier_cost,
    traffic,
)
from controller.bench.iptables import build_ruleset
from controller.compiler import compute
from controller.compiler.builder import cluster_from_objects
from controller.compiler.model import ClusterState

PAIRS = [("client", "10.244.1.2", "server", "10.244.1.3")]
NODES = [("client", "node-1"), ("server", "node-1")]


def state(c: synth.Cluster) -> ClusterState:
    return cluster_from_objects(c.namespaces, c.pods, c.policies, c.nodes)


MEASURED_PORTS = 3  # iperf3 TCP and UDP, sockperf TCP


def test_datapath_cluster_gives_the_server_one_entry_per_synthetic_rule_plus_the_allowing_ports() -> None:
    desired = compute.compute(state(synth.datapath_cluster(30, 300, PAIRS, NODES)), "node-1")
    server = desired.endpoints["bench/server"]
    assert server.ingress_isolated
    assert len(server.entries) == 30 + MEASURED_PORTS
    assert not desired.endpoints["bench/client"].entries
    synthetic = [
        n
        for n in desired.ipcache
        if n.prefixlen == 32 and n.network_address in ipaddress.ip_network("10.100.0.0/15")
    ]
    assert len(synthetic) == 300


def test_only_the_allowing_policy_admits_the_client_on_the_measured_ports() -> None:
    desired = compute.compute(state(synth.datapath_cluster(20, 100, PAIRS, NODES)), "node-1")
    client_id = desired.endpoints["bench/client"].identity
    ports = sorted(
        (k.proto, k.port) for k in desired.endpoints["bench/server"].entries if k.identity == client_id
    )
    assert ports == [(6, synth.IPERF_PORT), (6, synth.SOCKPERF_PORT), (17, synth.IPERF_PORT)]


def test_control_plane_cluster_has_the_requested_shape_and_compiles_without_errors() -> None:
    c = synth.control_plane_cluster(400, namespaces=20, policies=50)
    assert (len(c.pods), len(c.namespaces), len(c.policies), len(c.nodes)) == (400, 20, 50, 4)
    cs = state(c)
    assert not cs.errors
    desired = compute.compute(cs, "node-1")
    assert len(desired.endpoints) == 100
    assert sum(len(e.entries) for e in desired.endpoints.values()) > 0


def test_iptables_peer_has_one_mark_and_return_pair_per_rule_and_port_and_ipsets_of_the_selected_pods() -> (
    None
):
    rs = build_ruleset(state(synth.datapath_cluster(10, 100, PAIRS, NODES)), "node-1")
    policy_rules = [
        r for chain, rules in rs.chains.items() if chain.startswith("KUBE-NWPLCY-") for r in rules
    ]
    assert len(policy_rules) == 2 * (10 + MEASURED_PORTS)
    pod_chains = [c for c in rs.chains if c.startswith("KUBE-POD-FW-")]
    assert len(pod_chains) == 1  # only the server is selected
    assert rs.chains[pod_chains[0]][0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    members = {ip for _, (kind, m) in rs.ipsets.items() if kind == "hash:ip" for ip in m}
    assert "10.244.1.2" in members and "10.244.1.3" in members
    assert rs.ipset_members == 100 + 1 + 2  # synthetic pods, the client, the server in two DST sets


def test_iptables_peer_renders_ipblock_excepts_as_nomatch_and_port_ranges() -> None:
    c = synth.Cluster(
        namespaces=[synth.namespace("a", {})],
        pods=[synth.pod("a", "p", {"x": "y"}, "10.244.1.5", "node-1")],
        policies=[
            synth.policy(
                "a",
                "blk",
                {
                    "podSelector": {},
                    "ingress": [
                        {
                            "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                            "ports": [{"port": 1000, "endPort": 2000}],
                        }
                    ],
                },
            )
        ],
    )
    rs = build_ruleset(state(c), "node-1")
    nets = [m for kind, m in rs.ipsets.values() if kind == "hash:net"]
    assert nets == [["10.0.0.0/8", "10.1.0.0/16 nomatch"]]
    assert any("--dport 1000:2000" in r for rules in rs.chains.values() for r in rules)
    text = rs.iptables_restore()
    assert text.startswith("*filter\n") and text.endswith("COMMIT\n")


def test_salted_rulesets_never_share_a_set_or_chain_name() -> None:
    cs = state(synth.datapath_cluster(10, 50, PAIRS, NODES))
    a, b = build_ruleset(cs, "node-1", salt="10"), build_ruleset(cs, "node-1", salt="1000")
    assert not set(a.ipsets) & set(b.ipsets)
    assert set(a.chains) & set(b.chains) == {"KUBE-ROUTER-FORWARD"}


def test_percentile_is_nearest_rank_and_ratio_guards_zero_and_missing() -> None:
    assert common.percentile([5, 1, 3, 2, 4], 50) == 3
    assert common.percentile(list(range(1, 11)), 99) == 10
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(3.0, 0.0) is None
    assert common.ratio(None, 2.0) is None


SOCKPERF_TAIL = """
sockperf: ====> avg-rtt=31.776 (std-dev=11.311)
sockperf: ---> <MAX> observation =  470.322
sockperf: ---> percentile 99.999 =  470.322
sockperf: ---> percentile 99.000 =   81.598
sockperf: ---> percentile 90.000 =   41.214
sockperf: ---> percentile 50.000 =   29.048
sockperf: ---> <MIN> observation =   19.510
"""


def test_sockperf_summary_parses_to_p50_and_p99() -> None:
    assert traffic.parse_sockperf(SOCKPERF_TAIL) == (29.048, 81.598)


SOCKPERF_COUNTS = """
sockperf: [Total Run] RunTime=4.100 sec; Warm up time=400 msec; SentMessages=121000; ReceivedMessages=120999
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=3.990 sec; SentMessages=119700; ReceivedMessages=119700
"""


def test_a_ping_pong_run_gives_its_request_response_rate_from_the_valid_duration() -> None:
    assert traffic.parse_sockperf_rate(SOCKPERF_COUNTS + SOCKPERF_TAIL) == pytest.approx(30.0)
    with pytest.raises(Exception, match="Valid Duration"):
        traffic.parse_sockperf_rate(SOCKPERF_TAIL)


def test_udp_packets_per_second_are_those_the_server_received() -> None:
    summed = {"end": {"sum": {"seconds": 4.0, "packets": 400_000, "lost_packets": 100_000}}}
    assert traffic.udp_received_kpps(summed) == 75.0
    received = {"end": {"sum_received": {"seconds": 2.0, "packets": 50_000, "lost_packets": 0}, "sum": {}}}
    assert traffic.udp_received_kpps(received) == 25.0
    with pytest.raises(Exception, match="packet counts"):
        traffic.udp_received_kpps({"end": {"sum": {"seconds": 4.0}}})


def test_clients_and_servers_run_on_one_cpu_each_where_two_are_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(traffic.os, "sched_getaffinity", lambda _pid: {3, 1, 2})
    assert (traffic.role_cpu("client"), traffic.role_cpu("server")) == ("1", "2")
    monkeypatch.setattr(traffic.os, "sched_getaffinity", lambda _pid: {0})
    assert (traffic.role_cpu("client"), traffic.role_cpu("server")) == ("0", "0")


def test_sockperf_without_percentiles_is_an_error_naming_it() -> None:
    with pytest.raises(Exception, match="percentiles"):
        traffic.parse_sockperf("sockperf: no server")


def test_rounds_rotate_the_configuration_order() -> None:
    configs = datapath_bench.configs_for(datapath_bench.QUICK_LEVELS)
    assert configs[:2] == ["baseline", "passthrough"]
    assert common.rotated(configs, 1)[0] == configs[1]
    assert sorted(common.rotated(configs, 3)) == sorted(configs)


def _samples(tput: float, p50: float) -> datapath_bench.Sample:
    udp, rr = [tput * 50] * 3, [1000 / p50] * 3
    return datapath_bench.Sample([tput, tput + 2, tput - 2], [p50] * 3, [p50 * 3] * 3, udp, rr)


def test_summary_gives_ratios_to_the_baseline_and_to_iptables_at_the_same_rule_count() -> None:
    levels = (datapath_bench.Level(10, 100),)
    samples = {
        "same-node": {
            "baseline": _samples(10, 20),
            "passthrough": _samples(9, 21),
            "vethguard-10": _samples(8, 22),
            "iptables-10": _samples(4, 44),
        }
    }
    rows = {r["config"]: r for r in datapath_bench.summarize(samples, levels)}
    assert rows["vethguard-10"]["throughput_gbps"] == 8
    assert rows["vethguard-10"]["throughput_gbps_vs_baseline"] == 0.8
    assert rows["vethguard-10"]["throughput_gbps_vs_iptables"] == 2.0
    assert rows["vethguard-10"]["p50_us_vs_iptables"] == 0.5
    assert rows["vethguard-10"]["udp64_kpps_vs_baseline"] == 0.8
    assert rows["vethguard-10"]["tcp_rr_ktps_vs_iptables"] == 2.0
    assert rows["iptables-10"]["throughput_gbps_vs_iptables"] is None
    assert rows["vethguard-10"]["ipcache_pods"] == 100


def _datapath_doc() -> dict[str, Any]:
    levels = (datapath_bench.Level(10, 100), datapath_bench.Level(1000, 1000))
    samples = {
        "same-node": {
            "baseline": _samples(10, 20),
            "passthrough": _samples(9, 21),
            "vethguard-10": _samples(8, 22),
            "vethguard-1000": _samples(8, 22),
            "iptables-10": _samples(7, 30),
            "iptables-1000": _samples(5, 40),
        }
    }
    cost = {
        "rules": 10,
        "ipcache_pods": 100,
        "passthrough_ns": 30.0,
        "established_ns": 60.0,
        "new_flow_ns": 300.0,
        "established_ratio": 2.0,
        "new_flow_ratio": 10.0,
    }
    return {
        "machine": {
            "nproc": 2,
            "cpu": "x",
            "kernel": "6",
            "memory_gb": 1,
            "loadavg_start": [1, 1, 1],
            "loadavg_end": [1, 1, 1],
        },
        "settings": {"rounds": 3, "seconds": 1},
        "results": datapath_bench.summarize(samples, levels),
        "per_packet_cost": {"small_maps": cost, "large_maps": {**cost, "rules": 1000}},
        "levels": [
            {"rules": 10, "compute_s": 0.1, "vethguard_sync_s_node1": 0.1, "ipset_restore_s_node1": 0.1},
            {"rules": 1000, "compute_s": 1, "vethguard_sync_s_node1": 1, "ipset_restore_s_node1": 1},
        ],
        "programming": {"iptables-10": {"iptables_restore_s_node1": 0.2}},
    }


def test_datapath_table_has_a_row_per_configuration_and_the_cost_ratios(tmp_path: Path) -> None:
    md = report.datapath_markdown(_datapath_doc())
    assert md.count("| same-node |") == 6
    assert "| UDP 64 B kpps | x base | x ipt | TCP RR k/s | x base | x ipt |" in md
    assert "| 60.0 | 2.00 | 300.0 | 10.00 |" in md
    assert "ClusterNetworkPolicies" not in md  # results from before the tiers were measured
    written = report.datapath_plots(_datapath_doc(), tmp_path)
    assert [p.name for p in written] == ["datapath-same-node.png", "per-packet-cost.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_datapath_table_shows_where_an_established_packets_time_goes_when_measured() -> None:
    doc = _datapath_doc()
    assert "Where an established packet" not in report.datapath_markdown(doc)  # older results
    for i, c in enumerate(doc["per_packet_cost"].values()):
        c["established_steps_ns"] = {"program floor": 30.0, "clock": 5.0, "ct lookup": 20.0 + i}
    md = report.datapath_markdown(doc)
    assert "| step | small maps | large maps |" in md
    assert "| ct lookup | 20.0 | 21.0 |" in md and "| clock | 5.0 | 5.0 |" in md


CP_SIZE = {
    "namespaces": 5,
    "policies": 5,
    "rss_mb": 150.0,
    "peak_rss_mb": 160.0,
    "entries_per_endpoint_mean": 2.0,
    "entries_per_endpoint_max": 4,
    "map_memory_bytes": 2**21,
}
REALIZATION = {
    "nodes": 3,
    "changes": 4,
    "apply_to_all_realized_ms": {"p50": 100, "p99": 200},
    "apply_to_probe_ms": {"p50": 150, "p99": 250},
}


CP_MACHINE = {"nproc": 2, "cpu": "x", "kernel": "6", "memory_gb": 1, "loadavg_start": [1, 1, 1]}


def test_control_plane_table_and_plot_cover_every_size(tmp_path: Path) -> None:
    events = {
        k: {"p50_ms": 10.0, "p99_ms": 20.0, "n": 3}
        for k in ("pod_add", "label_change", "policy_add", "policy_delete")
    }
    size = {**CP_SIZE, "pods": 100, "full_compile_s": 0.5, "events": events}
    doc = {
        "machine": CP_MACHINE,
        "sizes": [size, {**size, "pods": 1000}],
        "realization": REALIZATION,
    }
    md = report.control_plane_markdown(doc)
    assert "| 1000 | 5 | 5 | 0.50 | 10 / 20 |" in md and "2.0 |" in md
    assert "p50 150 ms" in md
    assert report.control_plane_plots(doc, tmp_path)[0].read_bytes()[:4] == b"\x89PNG"


# --- ClusterNetworkPolicies beside NetworkPolicies (synth_cnp, tier_cost) ------------------------


def _tiered(nps: int, cnps: int) -> tuple[ClusterState, list[dict[str, Any]]]:
    c, cluster_policies = synth_cnp.tiered_cluster(nps, 300, cnps)
    return cluster_from_objects(c.namespaces, c.pods, c.policies, c.nodes, cluster_policies), c.policies


def test_the_cnp_mix_covers_tiers_actions_peers_and_protocol_forms_and_parses_without_errors() -> None:
    cnps = synth_cnp.cluster_policies(100, groups=990)
    assert len(cnps) == len({p["metadata"]["name"] for p in cnps}) == 100
    specs = [p["spec"] for p in cnps]
    assert {s["tier"] for s in specs} == {"Admin", "Baseline"}
    assert len({s["priority"] for s in specs}) < len(specs)  # equal priorities: the name decides
    rules = [r for s in specs for d in ("ingress", "egress") for r in s.get(d, [])]
    assert {r["action"] for r in rules} == {"Accept", "Deny", "Pass"}
    peers = {k for r in rules for p in r.get("from", r.get("to", [])) for k in p}
    assert peers == {"namespaces", "pods", "networks", "nodes"}
    forms = {
        k for r in rules for p in r.get("protocols", []) for k in p.get("tcp", {}).get("destinationPort", {})
    }
    assert forms == {"number", "range"}
    assert any("destinationNamedPort" in p for r in rules for p in r.get("protocols", []))
    assert any("protocols" not in r for r in rules)
    cs, nps = _tiered(100, 100)
    assert not cs.errors
    assert len(nps) == 100 and len(cs.cluster_policies) == 100


def test_the_measured_server_is_tiered_with_cnps_and_its_flow_stays_allowed_by_networkpolicy() -> None:
    for cnps, tiered, lookups in ((0, False, 1), (10, True, 5), (100, True, 5)):
        desired = compute.compute(_tiered(100, cnps)[0], synth_cnp.MEASURED_NODE)
        server = desired.endpoints[tier_cost.SERVER]
        assert (server.ingress_tiered, server.egress_tiered) == (tiered, tiered)
        assert server.ingress_isolated
        # NetworkPolicy decides the measured flow either way (an Admin Pass hands it over), and
        # the client's address carries a CIDR identity with CNPs and, a pod's, a namespace
        # identity: all four lookups in the tier profile, then NetworkPolicy's first (which allows).
        assert tier_cost.policy_lookups(desired) == ("ALLOW_POLICY", lookups, tiered)
    assert len(server.cluster_policies) >= 90


def test_the_servers_policy_entries_stay_well_inside_the_policy_map() -> None:
    desired = compute.compute(_tiered(1000, 100)[0], synth_cnp.MEASURED_NODE)
    assert len(desired.endpoints[tier_cost.SERVER].entries) < 262144 // 4  # VG_MAX_POLICY


def _tier_doc() -> dict[str, Any]:
    infos = [
        {"cluster_policies": n, "networkpolicies": 100, "tiered": n > 0, "server_policy_entries": 10 + n}
        | {"policy_lookups": 3 if n else 1}
        for n in (0, 100)
    ]
    samples = {0: {"est": [60.0, 62.0, 61.0], "new": [300.0, 310.0]}, 100: {"est": [60.0], "new": [330.0]}}
    return tier_cost.summarize(infos, [30.0, 31.0, 29.0], samples, 3, 100, 50)


def test_tier_cost_summary_gives_ratios_to_the_floor_and_to_no_cnp() -> None:
    doc = _tier_doc()
    rows = {c["cluster_policies"]: c for c in doc["configs"]}
    assert doc["passthrough_ns"] == 30.0
    assert rows[100]["new_flow_ns"] == 330.0 and rows[100]["new_flow_vs_no_cnp"] == 1.082
    assert rows[0]["established_ns"] == 61.0 and rows[0]["established_ratio"] == 2.033
    assert rows[100]["new_flow_ratio"] == 11.0
    assert "up to 4 policy LPM" in doc["new_flow_lookups"]
    infos = [{"cluster_policies": 10}]  # no count 0 measured: no ratio to it
    only = tier_cost.summarize(infos, [30.0], {10: {"est": [60.0], "new": [300.0]}}, 1, 1, 1)
    assert only["configs"][0]["new_flow_vs_no_cnp"] is None


def test_datapath_report_has_the_cnp_table_and_plot_when_measured(tmp_path: Path) -> None:
    doc = {**_datapath_doc(), "cluster_policy_cost": _tier_doc()}
    md = report.datapath_markdown(doc)
    assert "| 0 | 100 | first hit | 10 + 0 | 1 | 61.0 | 2.03 | 1.00 | 305.0 | 10.17 | 1.00 |" in md
    assert "| 100 | 100 | tiered | 110 + 0 | 3 | 60.0 | 2.00 | 0.98 | 330.0 | 11.00 | 1.08 |" in md
    written = report.datapath_plots(doc, tmp_path)
    assert written[-1].name == "cluster-policy-cost.png" and written[-1].read_bytes()[:4] == b"\x89PNG"


def test_a_range_spans_the_min_and_max_of_the_rounds_and_is_empty_without_rounds() -> None:
    assert report.spread([3.0, 1.0, 7.0], 3.0) == (2.0, 4.0)
    assert report.spread(None, 3.0) == report.spread([], 3.0) == (0.0, 0.0)
    assert report.range_errors([3.0, 5.0], [[1.0, 3.0, 7.0], None]) == [[2.0, 0.0], [4.0, 0.0]]


class _KeptFigures:
    """matplotlib.pyplot, except that closed figures are kept for the test to look at."""

    def __init__(self) -> None:
        self.plt = report.pyplot()
        self.figures: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plt, name)

    def close(self, fig: Any) -> None:
        self.figures.append(fig)


def _bar_ranges(ax: Any) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn on ax, left to right per series."""
    from matplotlib.container import ErrorbarContainer

    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            (segments,) = container.lines[2]
            out += [(float(seg[0][1]), float(seg[1][1])) for seg in segments.get_segments()]
    return out


def test_the_cost_plot_draws_each_bar_from_the_min_to_the_max_of_its_rounds(tmp_path: Path) -> None:
    kept = _KeptFigures()
    try:
        report.tiers_plot(kept, _tier_doc(), tmp_path)
        (fig,) = kept.figures
        (ax,) = fig.axes
        # established (count 0 then 100), then new flow; a single round spans nothing
        assert _bar_ranges(ax) == [(60.0, 62.0), (60.0, 60.0), (300.0, 310.0), (330.0, 330.0)]
        (band,) = [p for p in ax.patches if p.get_gid() == "floor-rounds"]
        ys = [float(y) for _, y in band.get_xy()]
        assert (min(ys), max(ys)) == (29.0, 31.0)  # the pass-through floor's rounds
        assert "min-max of the rounds" in ax.get_title()
    finally:
        for fig in kept.figures:
            kept.plt.close(fig)


def test_the_evlost_summary_compares_each_case_after_with_before_of_the_same_rounds() -> None:
    from controller.bench import evlost_cost

    samples = {"passthrough": [40.0, 50.0, 45.0]}
    for n, c in enumerate(evlost_cost.CASES):
        samples[f"{c.key}/before"] = [100.0 + n, 110.0 + n, 90.0 + n]
        samples[f"{c.key}/after"] = [105.0 + n, 100.0 + n, 120.0 + n]
    checked = {f"{c.key}/{v}": {"verdict": c.verdict} for c in evlost_cost.CASES for v in ("before", "after")}
    doc = evlost_cost.summarize(samples, checked, 3, 1000, 500) | {"before": "abc^"}
    rows = {r["case"]: r for r in doc["cases"]}
    assert doc["passthrough_ns"] == 45.0
    assert rows["established"]["before_ns"] == 100.0 and rows["established"]["after_ns"] == 105.0
    assert rows["established"]["after_vs_before"] == 1.05 and rows["established"]["after_vs_floor"] == 2.333
    assert rows["drop_ring_full"]["what"] == "drop, ring full"
    assert rows["new_rate_limited"]["what"] == "new flow, over the rate limit"
    md = report.evlost_markdown(doc)
    assert "| established, no event | ALLOW_CT | 100.0 | 105.0 | 1.05 | 2.22 | 2.33 |" in md
    assert "to_pod of abc^ (before)" in md


def test_results_from_before_the_small_packet_runs_still_make_their_table_and_plots(tmp_path: Path) -> None:
    doc = _datapath_doc()
    for row in doc["results"]:
        for key in ("udp64_kpps", "tcp_rr_ktps"):
            row.pop(key)
    md = report.datapath_markdown(doc)
    assert "| p99 us | x base | x ipt |" in md and "UDP 64 B" not in md
    assert report.datapath_plots(doc, tmp_path)[0].read_bytes()[:4] == b"\x89PNG"


# --- the control-plane benchmark's sizes and ClusterNetworkPolicies ---------------------------


def _cp_state(pods: int, namespaces: int, policies: int, cnps: int) -> tuple[synth.Cluster, ClusterState]:
    c = synth_cnp.control_plane_cluster(pods, namespaces, policies, cnps)
    return c, cluster_from_objects(c.namespaces, c.pods, c.policies, c.nodes, c.cluster_policies)


def test_the_control_plane_cluster_has_its_cnps_and_they_compile_without_errors() -> None:
    c, cs = _cp_state(1000, 50, 100, 40)
    assert (len(c.pods), len(c.namespaces), len(c.policies), len(c.nodes)) == (1000, 50, 100, 10)
    assert len(cs.cluster_policies) == len({p["metadata"]["name"] for p in c.cluster_policies}) == 40
    assert not cs.errors
    specs = [p["spec"] for p in c.cluster_policies]
    assert {s["tier"] for s in specs} == {"Admin", "Baseline"}
    assert {k for s in specs for k in s["subject"]} == {"namespaces", "pods"}
    rules = [r for s in specs for d in ("ingress", "egress") for r in s.get(d, [])]
    assert {r["action"] for r in rules} == {"Accept", "Deny", "Pass"}
    assert {k for r in rules for p in r.get("from", r.get("to", [])) for k in p} == {
        "namespaces",
        "pods",
        "networks",
        "nodes",
    }
    assert any("destinationNamedPort" in p for r in rules for p in r.get("protocols", []))


def test_a_tier_subject_cnp_selects_exactly_the_pods_of_that_tier_on_the_node() -> None:
    c, cs = _cp_state(1000, 50, 100, 1)  # cp-cnp-0000: the pods of tier web, every namespace
    desired = compute.compute(cs, "node-1")
    local = [p for p in c.pods if p["spec"]["nodeName"] == "node-1"]
    web = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in local
        if p["metadata"]["labels"]["tier"] == "web"
    }
    selected = {key for key, ep in desired.endpoints.items() if "cp-cnp-0000" in ep.cluster_policies}
    assert web and selected == web
    assert all(desired.endpoints[k].ingress_tiered for k in web)


def test_a_dev_namespaces_subject_selects_only_pods_in_dev_namespaces() -> None:
    c, cs = _cp_state(1000, 50, 100, 4)  # cp-cnp-0003: subject env=dev namespaces
    dev = {n["metadata"]["name"] for n in c.namespaces if n["metadata"]["labels"]["env"] == "dev"}
    for key, ep in compute.compute(cs, "node-1").endpoints.items():
        assert ("cp-cnp-0003" in ep.cluster_policies) == (key.split("/")[0] in dev)


def test_a_size_is_the_issues_shape_for_its_pods_or_given_in_full() -> None:
    from controller.bench.control_plane import DEFAULT_SIZES, Size

    assert Size.parse("1000") == Size(1000, 500, 1000, 0)
    assert Size.parse("50000") == Size(50000, 2500, 5000, 200)
    assert Size.parse("10000:500:1000:200") == Size(10000, 500, 1000, 200)
    assert [s.label() for s in DEFAULT_SIZES] == [
        "1000:500:1000:0",
        "10000:500:1000:0",
        "10000:500:1000:200",
        "50000:2500:5000:200",
    ]
    with pytest.raises(ValueError):
        Size.parse("10:2")


def _cp_doc(cnps: bool) -> dict[str, Any]:
    kinds = ("pod_add", "label_change", "policy_add", "policy_delete") + (
        ("cnp_add", "cnp_delete") if cnps else ()
    )
    events = {k: {"p50_ms": 10.0, "p99_ms": 20.0, "min_ms": 5.0, "max_ms": 60.0, "n": 3} for k in kinds}
    size: dict[str, Any] = {**CP_SIZE, "pods": 10000, "full_compile_s": 6.5, "events": events}
    if cnps:
        size |= {
            "cluster_policies": 200,
            "tier_entries_per_endpoint_mean": 300.0,
            "tier_entries_per_endpoint_max": 400,
        }
    return {
        "machine": CP_MACHINE,
        "sizes": [
            size,
            {
                **size,
                "pods": 50000,
                "full_compile_s": 1.0,
                "events": {**events, "pod_add": {**events["pod_add"], "p99_ms": 70.0}},
            },
        ],
        "realization": REALIZATION,
    }


def test_the_control_plane_table_has_cnp_columns_and_marks_the_missed_targets(tmp_path: Path) -> None:
    md = report.control_plane_markdown(_cp_doc(cnps=True))
    assert "| CNPs |" in md and "cnp add p50/p99 (min-max) ms" in md and "CNP entries/endpoint" in md
    assert "| 10000 | 5 | 5 | 200 | **6.50** (over) | 10 / 20 (5-60) |" in md
    assert "| 50000 | 5 | 5 | 200 | 1.00 | **10 / 70 (5-60)** (over) |" in md
    assert "**150 (160)** (over)" in md and "| 150 (160) |" in md  # RSS target up to 10k pods only
    assert "300.0 (400)" in md
    assert report.control_plane_plots(_cp_doc(cnps=True), tmp_path)[0].read_bytes()[:4] == b"\x89PNG"


def test_an_event_that_left_endpoints_failed_closed_is_marked_in_the_table() -> None:
    doc = _cp_doc(cnps=True)
    doc["sizes"][0]["events"]["cnp_add"] |= {"failed_closed_events": 2}
    md = report.control_plane_markdown(doc)
    assert "**10 / 20 (5-60), 2 of 3 failed closed** (over)" in md


def test_the_event_benchmark_counts_the_events_a_full_map_failed_closed() -> None:
    cluster = synth_cnp.control_plane_cluster(200, 4, 4, 2)
    sources = control_plane.MemorySources(cluster)
    changes = iter(range(100))
    # the third reconcile of every three leaves an endpoint failed closed
    got = control_plane._events(
        sources, lambda: True, 2, control_plane.Size(200, 4, 4, 2), lambda: next(changes) % 3 == 2
    )
    assert [got[k]["failed_closed_events"] for k in report.EVENT_KINDS] == [0, 0, 2, 0, 0, 2]


def test_the_control_plane_table_without_cnps_has_no_cnp_columns(tmp_path: Path) -> None:
    md = report.control_plane_markdown(_cp_doc(cnps=False))
    assert "CNP" not in md and "cnp" not in md
    assert "| 10000 | 5 | 5 | **6.50** (over) | 10 / 20 (5-60) |" in md
    assert report.control_plane_plots(_cp_doc(cnps=False), tmp_path)[0].read_bytes()[:4] == b"\x89PNG"


def test_the_committed_control_plane_results_still_make_their_table_and_plot(tmp_path: Path) -> None:
    import json

    doc = json.loads((Path(__file__).parents[2] / "docs/bench/control-plane.json").read_text())
    assert "| 10000 | 500 | 1000 |" in report.control_plane_markdown(doc)
    assert report.control_plane_plots(doc, tmp_path)[0].is_file()


IPERF3_UDP = {
    "end": {
        "sum_sent": {"seconds": 2.0, "packets": 300_000, "lost_packets": 0},
        "sum_received": {"seconds": 2.0, "packets": 300_000, "lost_packets": 60_000},
        "cpu_utilization_percent": {"host_total": 99.5, "remote_total": 41.0},
    }
}


def test_a_udp_run_records_what_the_client_sent_and_each_sides_cpu_beside_what_arrived() -> None:
    run = traffic.udp_run(IPERF3_UDP)
    assert run == traffic.UdpRun(
        received_kpps=120.0, sent_kpps=150.0, client_cpu_pct=99.5, server_cpu_pct=41.0
    )
    # an iperf3 that reports no sender sum: sent is what arrived
    older = {"end": {"sum": {"seconds": 4.0, "packets": 400_000, "lost_packets": 0}}}
    assert traffic.udp_run(older).sent_kpps == traffic.udp_run(older).received_kpps == 100.0


class _Drifting:
    """A fake VM whose speed changes from round to round by up to +-30% (and by 0.5% between the
    runs of one round); vethguard costs 4% and the pass-through program 1%."""

    COST: ClassVar[dict[str, float]] = {"baseline": 1.0, "passthrough": 0.99, "vethguard": 0.96}
    ROUND_SPEED = (1.3, 0.7, 1.0, 1.2, 0.8, 1.1, 0.9, 1.25, 0.75)

    def __init__(self, configs: int = 3) -> None:
        self.configs = configs
        self.config = ""
        self.calls = 0
        self.active: list[str] = []

    @contextmanager
    def configured(self, config: str) -> Iterator[None]:
        self.active.append(config)
        self.config = config
        yield
        self.active.pop()

    def run_path(self, path: str) -> tuple[traffic.UdpRun, float]:
        assert self.active == [self.config], "traffic runs inside its configuration"
        rnd = self.calls // self.configs
        speed = self.ROUND_SPEED[rnd % len(self.ROUND_SPEED)] * (1 + 0.005 * (self.calls % 2))
        self.calls += 1
        factor = speed * self.COST[self.config.split("-")[0]]
        return traffic.UdpRun(150 * factor, 165 * factor, 99.0, 50.0), 30 * factor


def test_paired_small_packet_ratios_are_to_the_same_rounds_baseline_so_drift_cancels() -> None:
    vm = _Drifting()
    configs = small_packets.paired_configs(10000)
    assert configs == ["baseline", "passthrough", "vethguard-10000"]
    samples = small_packets.measure(configs, ["same-node"], 9, vm.configured, vm.run_path)
    rows = {r["config"]: r for r in small_packets.summarize(samples)}
    assert vm.calls == 27 and len(samples["same-node"]["baseline"].udp64_kpps) == 9
    vg = rows["vethguard-10000"]
    # the raw figures span the VM's drift (112-195 kpps) ...
    assert max(vg["samples"]["udp64_kpps"]) / min(vg["samples"]["udp64_kpps"]) > 1.7
    # ... the per-round ratios only the 0.5% between runs of a round
    for key in ("udp64_kpps", "tcp_rr_ktps"):
        assert vg[f"{key}_vs_baseline"] == pytest.approx(0.96, abs=0.006)
        lo, hi = vg[f"{key}_vs_baseline_range"]
        assert lo <= vg[f"{key}_vs_baseline"] <= hi and hi - lo <= 0.011
    assert rows["passthrough"]["udp64_kpps_vs_baseline"] == pytest.approx(0.99, abs=0.006)
    assert rows["baseline"]["udp64_kpps_vs_baseline"] == 1.0
    assert vg["udp64_loss_pct"] == pytest.approx(100 * (1 - 150 / 165), abs=0.01)
    assert vg["udp64_sent_kpps"] > vg["udp64_kpps"] and vg["udp64_client_cpu_pct"] == 99.0


def test_paired_configurations_add_the_tcx_attached_programs_only_when_asked() -> None:
    assert small_packets.paired_configs(10, tcx=True) == [
        "baseline",
        "passthrough",
        "vethguard-10",
        "passthrough+tcx",
        "vethguard-10+tcx",
    ]
    assert "passthrough+tcx".removesuffix(small_packets.TCX) == "passthrough"


def test_paired_rounds_rotate_the_order_so_no_configuration_always_runs_first() -> None:
    vm = _Drifting()
    order: list[str] = []

    @contextmanager
    def configured(config: str) -> Iterator[None]:
        order.append(config)
        with vm.configured(config):
            yield

    small_packets.measure(small_packets.paired_configs(10), ["p"], 3, configured, vm.run_path)
    firsts = {order[i] for i in range(0, 9, 3)}
    assert firsts == {"baseline", "passthrough", "vethguard-10"}
    with pytest.raises(ValueError, match="baseline"):
        small_packets.measure(["passthrough"], ["p"], 1, configured, vm.run_path)


def test_the_datapath_report_has_the_paired_small_packet_table_and_plot(tmp_path: Path) -> None:
    vm = _Drifting(configs=6)  # two paths per configuration
    samples = small_packets.measure(
        small_packets.paired_configs(1000), ["same-node", "cross-node"], 3, vm.configured, vm.run_path
    )
    doc = {
        **_datapath_doc(),
        "small_packets": {"rounds": 3, "seconds": 2.0, "results": small_packets.summarize(samples)},
    }
    md = report.datapath_markdown(doc)
    assert "Small packets in pairs: 3 rounds of 2.0 s runs" in md
    vg = next(
        r
        for r in doc["small_packets"]["results"]
        if r["config"] == "vethguard-1000" and r["path"] == "cross-node"
    )
    lo, hi = vg["udp64_kpps_vs_baseline_range"]
    cells = f"{vg['udp64_kpps']:.1f} | {vg['udp64_kpps_vs_baseline']:.3f} ({lo:.2f}-{hi:.2f})"
    assert f"| cross-node | vethguard-1000 | {cells} |" in md
    written = {p.name: p for p in report.datapath_plots(doc, tmp_path)}
    assert written["small-packets.png"].read_bytes()[:4] == b"\x89PNG"
    assert "small-packets.png" not in {p.name for p in report.datapath_plots(_datapath_doc(), tmp_path)}


PERF_REPORT = """
# Samples: 10K of event 'cpu-clock'
#
    12.22%  [k] _raw_spin_unlock_irqrestore
     1.55%  [k] bpf_prog_7122c1766ae7c1c4_to_pod
     1.52%  [k] bpf_prog_e0c4028c060445d8_from_pod
     1.07%  [k] lookup_nulls_elem_raw
     0.83%  [k] cls_bpf_classify
     0.80%  [k] htab_map_hash
     0.48%  [k] __tcf_classify.constprop.0
     0.81%  [k] tc_run
     0.40%  [k] bpf_ktime_get_coarse_ns
     0.39%  [k] bpf_prog_59f4a931744dcdc6_passthrough
     0.96%  [.] __GI___libc_write
"""


def test_the_udp_profile_groups_perf_symbols_into_programs_classifier_lookups_and_the_rest() -> None:
    from controller.bench import udp_profile

    shares = udp_profile.parse_report(PERF_REPORT)
    assert shares["bpf_prog_7122c1766ae7c1c4_to_pod"] == 1.55 and shares["__GI___libc_write"] == 0.96
    assert "Samples:" not in " ".join(shares)
    groups = udp_profile.grouped(shares)
    assert groups["vethguard programs"] == 3.07
    assert groups["pass-through program"] == 0.39
    assert groups["tc hook (tcx, or clsact + cls_bpf)"] == 2.12
    assert groups["hash map lookups"] == 1.87
    assert groups["clock helper"] == 0.4
    assert groups[udp_profile.OTHER] == round(12.22 + 0.96, 2)
    base = {"_raw_spin_unlock_irqrestore": 13.0, "lookup_nulls_elem_raw": 0.6}
    assert udp_profile.added(shares, base, top=2) == [
        ("bpf_prog_7122c1766ae7c1c4_to_pod", 1.55),
        ("bpf_prog_e0c4028c060445d8_from_pod", 1.52),
    ]
    assert ("lookup_nulls_elem_raw", 0.47) in udp_profile.added(shares, base)
    assert all(s != "_raw_spin_unlock_irqrestore" for s, _ in udp_profile.added(shares, base))
