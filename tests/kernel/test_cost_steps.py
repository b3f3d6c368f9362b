"""The established-path profile (bpf/bench_parts.c) runs its steps on the real maps."""

from __future__ import annotations

import pytest

from controller.bench import cost
from controller.bench.bpf_parts import PASSTHROUGH, bench_programs
from controller.bench.testrun import run
from controller.core.verdicts import DIR_INGRESS
from controller.datapath import abi, loader
from controller.datapath.abi import Reason
from tests.support import packets as P
from tests.support.kernel import POD_A, POD_B, TC_ACT_OK, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]

PACKETS = 300


def test_the_step_programs_run_to_pods_established_path_on_the_real_maps_and_add_up_to_it(h: Harness) -> None:
    cost.setup_maps(h.dp)
    steps = cost.with_stats_enabled(lambda: cost.measure_steps(h.dp, rounds=2, packets=PACKETS))
    assert list(steps) == ["program floor", *cost.STEPS, "rest of to_pod"]
    assert steps["program floor"] > 0
    # part_5 (all steps) and to_pod each take the fast path: they count every packet as an
    # established one in the real vg_est_counters and bump the flow's own conntrack counters.
    allowed = h.count(Reason.ALLOW_CT, DIR_INGRESS)
    assert allowed >= 2 * 2 * PACKETS, allowed
    flow = [e for e in h.dp.dump().ct if e.dport == 80 and e.dir == DIR_INGRESS]
    assert len(flow) == 1 and flow[0].packets >= 2 * 2 * PACKETS, flow
    assert flow[0].slot > 0  # the full path gave the entry its endpoint's slot
    assert all(e.state == abi.CT_ALLOWED for e in flow)


def test_the_benchmarks_passthrough_program_passes_everything_and_the_agent_never_loads_it(
    h: Harness,
) -> None:
    with bench_programs(h.dp) as fds:
        for frame in (P.arp(), P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80))):
            assert run(fds[PASSTHROUGH], frame, ifindex=1).retval == TC_ACT_OK
    assert PASSTHROUGH not in loader.PROGRAMS


def test_the_new_flow_step_programs_run_to_pods_new_flow_path_and_create_its_entries(h: Harness) -> None:
    cost.setup_maps(h.dp)
    steps = cost.with_stats_enabled(lambda: cost.measure_new_steps(h.dp, rounds=1, new_flows=50))
    assert list(steps) == ["program floor", *cost.NEW_STEPS, "rest of to_pod"]
    # measure_new_steps checked that every part passes a new flow, and clears the table after
    assert h.dp.dump().ct == []
    allowed = h.count(Reason.ALLOW_POLICY, DIR_INGRESS)
    assert allowed >= 2 * 50  # newpart_6 and newpart_7 count (ALLOW_POLICY), and to_pod does


def test_the_ab_tool_runs_both_versions_programs_on_one_datapath_and_removes_its_pins() -> None:
    """controller.bench.ab_cost against the commit before the established fast path: both versions
    load on the same maps and pass every case's packet (it raises otherwise); figures are not
    checked here (benchmarks print them)."""
    from pathlib import Path

    from controller.bench import ab_cost

    root = "/sys/fs/bpf/vethguard"
    before = set(Path(root).iterdir()) if Path(root).exists() else set()
    doc = ab_cost.run_all(root, "1aa6f27", rounds=1, packets=100)
    assert [c["case"] for c in doc["cases"]] == list(ab_cost.CASES)
    assert all(c["before_ns"] > 0 and c["after_ns"] > 0 for c in doc["cases"])
    assert (set(Path(root).iterdir()) if Path(root).exists() else set()) == before


def test_the_insert_cost_benchmark_shows_a_full_plain_hash_failing_where_the_lru_maps_evict() -> None:
    from controller.bench import lru_cost

    inserts = 200
    got = cost.with_stats_enabled(lambda: lru_cost.measure(rounds=1, inserts=inserts))
    assert got["filling"]["failed_inserts"] == {"lru": 0, "lru-percpu": 0, "hash": 0}
    # full: every insert into the preallocated hash fails (a flood's new flows would fail
    # closed); the LRU maps make room by evicting
    assert got["full"]["failed_inserts"] == {"lru": 0, "lru-percpu": 0, "hash": inserts}
    for regime in ("filling", "full"):
        assert got[regime]["floor_ns"] > 0
        assert all(len(v) == 1 for v in got[regime]["samples"].values())
    md = lru_cost.markdown({"rounds": 1, "inserts": inserts, "results": got})
    assert "| full |" in md and "hash: 200" in md
