"""CI smoke run of both benchmarks (--quick): the JSON has its shape and every figure is positive.

Speed figures are never asserted beyond "measured and positive": this machine is shared and noisy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.lab.client import teardown

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


def _bench(kind: str, results: Path, lab_prefixes: tuple[str, ...]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "bench",
            kind,
            "--quick",
            "-o",
            "json",
            "--results",
            str(results),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for prefix in lab_prefixes:  # the labs are named after the bench process (common.lab_name)
            teardown(f"{prefix}{proc.pid}"[:24])
    assert proc.returncode == 0, err[-3000:]
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_quick_datapath_benchmark_reports_every_configuration_with_positive_figures(tmp_path: Path) -> None:
    doc = _bench("datapath", tmp_path, ("bdp",))
    configs = {r["config"] for r in doc["results"]}
    assert {"baseline", "passthrough"} <= configs
    assert any(c.startswith("vethguard-") for c in configs) and any(
        c.startswith("iptables-") for c in configs
    )
    for row in doc["results"]:
        for key in (
            "throughput_gbps",
            "p50_us",
            "p99_us",
            "throughput_gbps_vs_baseline",
            "p50_us_vs_baseline",
        ):
            assert _positive(row[key]), (row["config"], key, row[key])
        if row["engine"] == "vethguard":
            assert _positive(row["throughput_gbps_vs_iptables"])
    for cost in doc["per_packet_cost"].values():
        for key in ("passthrough_ns", "established_ns", "new_flow_ns", "established_ratio", "new_flow_ratio"):
            assert _positive(cost[key]), key
    for level in doc["levels"]:
        assert level["policy_entries_node1"] >= level["rules"]
        assert level["iptables_rules_node1"] >= 2 * level["rules"]
    _assert_tier_cost(doc["cluster_policy_cost"], [0, 100])
    paired = {r["config"]: r for r in doc["small_packets"]["results"]}
    largest = f"vethguard-{doc['levels'][-1]['rules']}"
    expected = {"baseline", "passthrough", largest}
    if "tcx" in doc["attach"]:  # the same programs attached with tcx links, side by side
        expected |= {"passthrough+tcx", f"{largest}+tcx"}
    assert set(paired) == expected
    for row in paired.values():
        for key in (
            "udp64_kpps",
            "udp64_sent_kpps",
            "tcp_rr_ktps",
            "udp64_kpps_vs_baseline",
            "tcp_rr_ktps_vs_baseline",
        ):
            assert _positive(row[key]), (row["config"], key, row[key])
        # the client sent what arrived (each side's rate over its own duration: 1% of slack)
        assert row["udp64_sent_kpps"] >= 0.99 * row["udp64_kpps"]
    names = {Path(f).name for f in doc["files"]}
    assert {"datapath.json", "datapath.md", "datapath-same-node.png", "per-packet-cost.png"} <= names
    assert "small-packets.png" in names
    assert "cluster-policy-cost.png" in names
    assert json.loads((tmp_path / "datapath.json").read_text())["results"] == doc["results"]


def _assert_tier_cost(cost: dict[str, Any], counts: list[int]) -> None:
    assert [c["cluster_policies"] for c in cost["configs"]] == counts
    assert _positive(cost["passthrough_ns"])
    for c in cost["configs"]:
        for key in ("established_ns", "new_flow_ns", "established_ratio", "new_flow_ratio"):
            assert _positive(c[key]), (c["cluster_policies"], key)
        assert c["tiered"] == (c["cluster_policies"] > 0)
        assert c["kernel_reason"] == c["reason"] == "ALLOW_POLICY"
        # tiered: four in the tier profile (the client pod's identity, its namespace identity,
        # ANY ...), then NetworkPolicy's first (an Admin Pass hands the measured flow to the
        # NetworkPolicy that allows it)
        assert c["policy_lookups"] == (5 if c["tiered"] else 1)
        assert c["policy_map_entries"] >= c["server_policy_entries"] + c["tier_profile_entries"] > 0
        assert (c["tier_profile_entries"] > 0) == c["tiered"]


def test_tier_cost_alone_measures_every_count_and_removes_its_pins() -> None:
    from controller.bench import tier_cost

    pin_root = "/sys/fs/bpf/vethguard"
    before = set(Path(pin_root).iterdir()) if Path(pin_root).exists() else set()
    settings = tier_cost.TierSettings(networkpolicies=20, ipcache=100, counts=(0, 10), rounds=1, packets=200)
    _assert_tier_cost(tier_cost.run_all(settings, pin_root), [0, 10])
    after = set(Path(pin_root).iterdir()) if Path(pin_root).exists() else set()
    assert not {p for p in after - before if p.name.startswith("bench-cnp")}


def test_quick_control_plane_benchmark_reports_every_size_and_event_kind_with_positive_figures(
    tmp_path: Path,
) -> None:
    doc = _bench("control-plane", tmp_path, ("brz",))
    assert len(doc["sizes"]) == len(doc["settings"]["sizes"])
    for size in doc["sizes"]:
        for key in (
            "full_compile_s",
            "rss_mb",
            "peak_rss_mb",
            "map_memory_bytes",
            "ipcache_entries",
            "local_endpoints",
        ):
            assert _positive(size[key]), key
        kinds = {"pod_add", "label_change", "policy_add", "policy_delete"}
        if size["cluster_policies"]:  # the quick run's second size has some
            kinds |= {"cnp_add", "cnp_delete"}
            assert _positive(size["tier_entries_per_endpoint_max"])
        assert set(size["events"]) == kinds
        for figures in size["events"].values():
            assert _positive(figures["p50_ms"]) and figures["p99_ms"] >= figures["p50_ms"]
    assert any(size["cluster_policies"] for size in doc["sizes"])
    rz = doc["realization"]
    assert rz["changes"] > 0
    assert _positive(rz["apply_to_all_realized_ms"]["p50"])
    assert rz["apply_to_probe_ms"]["p50"] >= 0
    assert {"control-plane.json", "control-plane.md", "control-plane.png"} <= {
        Path(f).name for f in doc["files"]
    }


def test_host_endpoint_cost_checks_every_case_s_counted_reason_and_removes_its_pins(tmp_path: Path) -> None:
    pin_root = Path("/sys/fs/bpf/vethguard")
    before = set(pin_root.iterdir()) if pin_root.exists() else set()
    args = ["--rounds", "1", "--packets", "50", "-o", "json", "--results", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "controller.bench.hostep_cost", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert {c["case"]: (c["config"], c["program"], c["reason"], c["verdict"]) for c in doc["cases"]} == {
        "passthrough": ("host endpoint", "passthrough", "-", "TC_ACT_OK"),
        "passthrough_single": ("host endpoint", "passthrough", "-", "TC_ACT_OK"),
        "plain_in": ("no host endpoint", "from_uplink", "uncounted", "TC_ACT_OK"),
        "plain_out": ("no host endpoint", "to_uplink", "uncounted", "TC_ACT_OK"),
        "hep_new_in": ("host endpoint", "from_uplink", "ALLOW_HOSTEP", "TC_ACT_OK"),
        "hep_syn_in": ("host endpoint", "from_uplink", "ALLOW_HOSTEP", "TC_ACT_OK"),
        "hep_ack_in": ("host endpoint", "from_uplink", "ALLOW_CT", "TC_ACT_OK"),
        "hep_ack_out": ("host endpoint", "to_uplink", "ALLOW_CT", "TC_ACT_OK"),
        "hep_nodeport": ("host endpoint", "from_uplink", "DROP_PREDNAT", "TC_ACT_SHOT"),
        "hep_failsafe_in": ("host endpoint", "from_uplink", "ALLOW_FAILSAFE", "TC_ACT_OK"),
        "hep_failsafe_out": ("host endpoint", "to_uplink", "ALLOW_FAILSAFE", "TC_ACT_OK"),
        "hep_node_out": ("host endpoint", "to_uplink", "DROP_HOSTEP_END", "TC_ACT_SHOT"),
    }
    assert _positive(doc["passthrough_ns"]) and _positive(doc["passthrough_single_run_ns"])
    assert doc["rounds"] == 1 and doc["packets_per_round"] == doc["new_flows_per_round"] == 50
    for c in doc["cases"]:
        assert len(c["samples"]) == 1 and _positive(c["ns"]), c["case"]
        assert _positive(c["ratio"]) and _positive(c["ratio_same_drive"]), c["case"]
    assert json.loads((tmp_path / "hostep-cost.json").read_text())["cases"] == doc["cases"]
    table = (tmp_path / "hostep-cost.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(doc["cases"]) + 1 and "Machine:" in table  # the header and one per case
    after = set(pin_root.iterdir()) if pin_root.exists() else set()
    assert not {p for p in after - before if p.name.startswith("bench-hep")}
