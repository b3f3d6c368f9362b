"""The agent's flow pipeline without a kernel: the bounded store, aggregation, followers, the
lost-event accounting, filters, the rotated JSON lines file, the flow socket and who may read it,
and observe's merge of several nodes."""

from __future__ import annotations

import argparse
import json
import os
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from controller.agent import cli as agent_cli
from controller.agent.flow_server import FlowServer, mark_text, netns_id, process_netns, refusal, wall_text
from controller.agent.flows import (
    FlowFile,
    FlowFilter,
    FlowReader,
    FlowStore,
    ViewCache,
    parse_since,
    unix_time,
)
from controller.agent.metrics import Metrics
from controller.compiler.clusterview import ClusterView, RawObjects
from controller.core.verdicts import DIR_INGRESS
from controller.datapath import abi
from controller.debug import observe
from controller.debug.flow_client import Merger
from tests.support.debug_views import flow_event, raw_cluster
from tests.support.flows import flow_rec, read_flow_socket


def lost(m: Metrics, reason: str) -> float:
    return m.registry.get_sample_value("vethguard_flows_lost_total", {"reason": reason}) or 0.0


def readers(m: Metrics, result: str) -> float:
    return m.registry.get_sample_value("vethguard_flows_readers_total", {"result": result}) or 0.0


def test_the_store_keeps_the_last_n_records_and_counts_every_evicted_event() -> None:
    m = Metrics()
    store = FlowStore(m, capacity=3, window=0)
    for port in range(10):
        store.add(flow_rec(t=1000 + port, port=port))
    assert [r["port"] for r in store.history()] == [7, 8, 9]
    assert lost(m, "evicted") == 7
    assert store.events == 10 and store.stored_events() + lost(m, "evicted") == store.events
    assert m.registry.get_sample_value("vethguard_flows_stored") == 3


def test_repeats_within_the_window_become_one_record_with_a_count() -> None:
    m = Metrics()
    store = FlowStore(m, capacity=10, window=5)
    for i in range(4):
        store.add(flow_rec(t=1000 + i, sport=40000 + i))  # other source ports: the same flow key
    store.add(flow_rec(t=1010))  # after the window: a new record
    store.add(flow_rec(t=1010, verdict="allowed", reason="ALLOW_POLICY"))
    hist = store.history()
    assert [(r["count"], r["verdict"]) for r in hist] == [(4, "denied"), (1, "denied"), (1, "allowed")]
    assert hist[0]["time"] < hist[0]["last_time"]


def test_observe_shows_how_often_a_kept_record_repeated() -> None:
    store = FlowStore(Metrics(), capacity=10, window=5)
    for i in range(3):
        store.add(flow_rec(t=1000 + i))
    assert observe.line(store.history()[0]).endswith("isolated by x/deny  x3 until 00:16:42.000")
    assert " until " not in observe.line(flow_rec())


def test_an_evicted_aggregate_counts_all_its_events_as_lost() -> None:
    m = Metrics()
    store = FlowStore(m, capacity=1, window=60)
    for i in range(5):
        store.add(flow_rec(t=1000 + i))
    store.add(flow_rec(t=1001, port=81))
    assert lost(m, "evicted") == 5 and store.stored_events() == 1


def test_followers_get_every_event_and_a_full_queue_counts_as_a_slow_reader() -> None:
    m = Metrics()
    store = FlowStore(m, capacity=100, window=60, follower_queue=2)
    _, fast = store.follow(FlowFilter(), history=False)
    _, slow = store.follow(FlowFilter(), history=False)
    for i in range(2):
        store.add(flow_rec(t=1000 + i))
    assert [fast.queue.get_nowait()["count"] for _ in range(2)] == [1, 1]  # not aggregated
    store.add(flow_rec(t=1003))
    assert slow.dropped == 1 and fast.dropped == 0
    assert lost(m, "reader_slow") == 1
    store.unfollow(slow)
    store.unfollow(fast)
    assert m.registry.get_sample_value("vethguard_flows_followers") == 0


def test_a_follower_sees_the_history_then_every_later_event_without_a_gap() -> None:
    store = FlowStore(Metrics(), capacity=100, window=0)
    store.add(flow_rec(t=1000, port=1))
    past, f = store.follow(FlowFilter(ports=(1, 2)))
    store.add(flow_rec(t=1001, port=2))
    store.add(flow_rec(t=1002, port=3))  # filtered out
    assert [r["port"] for r in past] == [1]
    assert f.queue.get_nowait()["port"] == 2 and f.queue.empty()


@pytest.mark.parametrize(
    ("flt", "matches"),
    [
        (FlowFilter(pods=("x/a",)), True),
        (FlowFilter(pods=("y/a",)), False),
        (FlowFilter(namespaces=("x",)), True),
        (FlowFilter(namespaces=("y",)), False),
        (FlowFilter(verdicts=("denied", "audit")), True),
        (FlowFilter(verdicts=("allowed",)), False),
        (FlowFilter(policies=("x/deny",)), True),
        (FlowFilter(policies=("x/other",)), False),
        (FlowFilter(ports=(80,)), True),
        (FlowFilter(ports=(443,)), False),
        (FlowFilter(protocols=("tcp",)), True),
        (FlowFilter(protocols=("UDP",)), False),
        (FlowFilter(since=999.0), True),
        (FlowFilter(since=1001.0), False),
    ],
)
def test_each_filter_field_selects_records(flt: FlowFilter, matches: bool) -> None:
    assert flt.matches(flow_rec(t=1000)) is matches
    assert FlowFilter.from_json(json.loads(json.dumps(flt.as_json()))) == flt


def test_a_filter_with_unknown_fields_or_wrong_types_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown filter fields: pod"):
        FlowFilter.from_json({"pod": ["x/a"]})
    with pytest.raises(ValueError, match="ports"):
        FlowFilter.from_json({"ports": ["80"]})


def test_since_reads_durations_unix_times_and_iso_times() -> None:
    assert parse_since("30s", now=1000) == 970 and parse_since("2m", now=1000) == 880
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000 == unix_time(flow_rec(t=1_700_000_000))
    with pytest.raises(ValueError, match="expected"):
        parse_since("yesterday")


def test_the_flow_file_writes_json_lines_and_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "flows" / "flows.jsonl"
    out = FlowFile(path, max_bytes=2000, backups=2)
    recs = [flow_rec(t=1000 + i, port=i) for i in range(20)]
    out.write(recs)
    out.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"]
    assert all(p.stat().st_size <= 2000 + 1000 for p in path.parent.iterdir())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [line for name in files[::-1] for line in (path.parent / name).read_text().splitlines()]
    kept = [json.loads(line) for line in lines]
    ports = [r["port"] for r in kept]
    assert ports == sorted(ports) and ports[-1] == 19  # the newest kept, the oldest rotated away


def test_the_reader_translates_ring_records_and_names_the_isolating_policy() -> None:
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]},
    }
    view = ClusterView(raw_cluster([deny]))
    xa, xc = view.cluster.pods["x/a"].ips[0], view.cluster.pods["x/c"].ips[0]
    m = Metrics()
    store = FlowStore(m, capacity=10)
    reader = FlowReader("node-1", "/nonexistent", store, lambda: view)
    reader.handle([flow_event(xc, xa, DIR_INGRESS, abi.Reason.DROP_POLICY), b"\x00"], 0)
    (rec,) = store.history()
    assert (rec["from"], rec["to"], rec["verdict"], rec["policy"], rec["tier"]) == (
        "x/c",
        "x/a",
        "denied",
        "x/deny",
        "NetworkPolicy",
    )
    assert lost(m, "decode") == 1


def test_an_event_right_after_a_compute_is_named_with_the_policies_of_that_compute() -> None:
    audit = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "z", "annotations": {"vethguard.dev/audit": "true"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    state = SimpleNamespace(raw=raw_cluster([]), computed=(1,), builds=0)

    def snapshot() -> RawObjects:
        state.builds += 1
        return state.raw

    cache = ViewCache(snapshot, lambda: state.computed)
    store = FlowStore(Metrics(), capacity=10)
    reader = FlowReader("node-1", "/nonexistent", store, cache.get)
    first = cache.get()
    xa, za = first.cluster.pods["x/a"].ips[0], first.cluster.pods["z/a"].ips[0]
    assert cache.get() is first and state.builds == 1  # nothing computed since: no rebuild
    state.raw, state.computed = raw_cluster([audit]), (2,)  # the agent computed the policy
    reader.handle([flow_event(xa, za, DIR_INGRESS, abi.Reason.ALLOW_AUDIT)], 0)
    (rec,) = store.history()
    assert (rec["verdict"], rec["policy"]) == ("audit", "z/deny") and state.builds == 2


def test_the_kernels_own_losses_are_counted_from_the_second_read_of_vg_evlost() -> None:
    m = Metrics()
    reader = FlowReader("node-1", "/nonexistent", FlowStore(m), lambda: ClusterView(raw_cluster([])))
    reader.account_kernel_lost((100, 7))  # before this agent: the baseline
    reader.account_kernel_lost((130, 7))
    reader.account_kernel_lost((150, 9))
    assert (lost(m, "kernel_rate_limited"), lost(m, "kernel_ring_full")) == (50, 2)


# -- who may read ------------------------------------------------------------------------------

OWN = (1, 100)
POD = (1, 200)


@pytest.mark.parametrize(
    ("pid", "uid", "threads", "why"),
    [
        (42, 0, {OWN}, None),
        (42, 1000, {OWN}, None),  # the agent's own uid (1000 here)
        (42, 0, {POD, OWN}, None),  # a thread entered the node's namespace (observe --lab)
        (42, 0, {POD}, "not in the node's network namespace"),
        (42, 0, set(), "not in the node's network namespace"),  # gone
        (42, 1001, {OWN}, "neither root nor the agent's"),
        (0, 0, {OWN}, "another PID namespace"),
    ],
)
def test_only_peers_in_the_nodes_network_namespace_may_read(
    pid: int, uid: int, threads: set[tuple[int, int]], why: str | None
) -> None:
    got = refusal(pid, uid, OWN, 1000, lambda _pid: threads)
    assert got is None if why is None else why in (got or "")


def test_a_process_network_namespaces_are_read_from_its_threads() -> None:
    assert process_netns(os.getpid()) == {netns_id("/proc/self/ns/net")}
    assert process_netns(2**22 + 12345) == set()


def _server(tmp_path: Path, store: FlowStore, threads: set[tuple[int, int]] | None = None) -> FlowServer:
    peer = (lambda _pid: threads) if threads is not None else process_netns
    return FlowServer(tmp_path / "run" / "flows.sock", store, "node-1", store.metrics, peer).start()


def test_the_socket_serves_the_history_to_a_reader_of_the_node(tmp_path: Path) -> None:
    store = FlowStore(Metrics(), capacity=10, window=0)
    store.add(flow_rec(t=1000, port=80))
    store.add(flow_rec(t=1001, port=81))
    server = _server(tmp_path, store)
    try:
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
        msgs = read_flow_socket(server.path, {"filter": {"ports": [81]}})
        assert [m.get("_") for m in msgs] == ["hello", None, "history_end"]
        assert msgs[0]["node"] == "node-1" and msgs[1]["port"] == 81 and msgs[1]["count"] == 1
        assert readers(store.metrics, "served") == 1
    finally:
        server.stop()
    assert not server.path.exists()


def test_the_socket_refuses_a_reader_of_another_network_namespace(tmp_path: Path) -> None:
    store = FlowStore(Metrics(), capacity=10)
    store.add(flow_rec())
    server = _server(tmp_path, store, threads={POD})
    try:
        msgs = read_flow_socket(server.path, {})
        assert [m["_"] for m in msgs] == ["refused"] and "network namespace" in msgs[0]["error"]
        assert readers(store.metrics, "refused") == 1
    finally:
        server.stop()


def test_two_concurrent_followers_see_the_same_events(tmp_path: Path) -> None:
    store = FlowStore(Metrics(), capacity=100, window=60)
    server = _server(tmp_path, store)
    got: list[list[dict[str, object]]] = [[], []]

    def follow(i: int) -> None:
        got[i] = read_flow_socket(server.path, {"follow": True, "history": False}, until=5)

    try:
        threads = [threading.Thread(target=follow, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while store.metrics.registry.get_sample_value("vethguard_flows_followers") != 2:
            assert time.monotonic() < deadline, "the followers did not connect"
            time.sleep(0.01)
        for i in range(5):
            store.add(flow_rec(t=1000 + i))  # one aggregated record, five events
        for t in threads:
            t.join(10)
        flows = [[m for m in g if "_" not in m] for g in got]
        assert len(flows[0]) == 5 and flows[0] == flows[1]
        assert [r["count"] for r in store.history()] == [5]
    finally:
        server.stop()


def test_the_agent_command_starts_the_flow_reader_and_socket_from_its_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VETHGUARD_FLOW_CAPACITY", "42")
    parser = argparse.ArgumentParser()
    agent_cli.register(parser.add_subparsers(dest="command"))
    sock, out = tmp_path / "flows.sock", tmp_path / "flows.jsonl"
    argv = ["agent", "--node", "node-1", "--pin-root", str(tmp_path / "bpf"), "--flow-socket", str(sock)]
    args = parser.parse_args([*argv, "--flow-file", str(out), "--flow-file-max-bytes", "4096"])
    assert (args.flow_capacity, args.flow_window_seconds, args.flow_file_backups) == (42, 5.0, 5)
    agent = SimpleNamespace(sources=SimpleNamespace(snapshot=lambda: None), computed_versions=lambda: None)
    parts = agent_cli.start_flows(args, agent, Metrics())  # type: ignore[arg-type]
    try:
        reader, server = parts
        assert isinstance(server, FlowServer)
        assert reader.ring_path == tmp_path / "bpf" / "node-1" / "vg_events"  # opened once pinned
        hello = read_flow_socket(sock, {})[0]
        assert (hello["_"], hello["capacity"]) == ("hello", 42) and out.exists()
    finally:
        for part in parts:
            part.stop()
    assert not sock.exists()
    no_socket = parser.parse_args([*argv[:-1], "none"])
    parts = agent_cli.start_flows(no_socket, agent, Metrics())  # type: ignore[arg-type]
    assert len(parts) == 1
    parts[0].stop()


def test_observe_merges_the_nodes_in_time_order() -> None:
    merger = Merger(["node-1", "node-2"])
    merger.add("node-1", flow_rec(t=1002, node="node-1"))
    merger.add("node-1", flow_rec(t=1003, node="node-1"))
    assert merger.ready() == []  # node-2 may still send something older
    merger.add("node-2", flow_rec(t=1001, node="node-2"))
    assert [r["node"] for r in merger.ready()] == ["node-2"]
    merger.add("node-2", {"_": "tick", "time": flow_rec(t=1005)["time"]})
    assert [unix_time(r) for r in merger.ready()] == [1002, 1003]
    merger.add("node-1", {"_": "refused", "error": "no"})
    merger.add("node-1", {"_": "closed"})
    merger.add("node-2", {"_": "closed"})
    assert not merger.open and merger.errors == ["node-1: no"]


def test_a_tick_promises_the_store_s_read_mark_not_the_clock() -> None:
    """An event stamped before a tick can still be in the ring when the tick is sent: the agent's
    ticks carry the time up to which its reader has emptied the ring, so a merge never prints a
    later node's record before an earlier one still on its way (a CI failure of 2026-12-06)."""
    store = FlowStore(Metrics())
    assert abs(unix_time({"time": mark_text(store)}) - time.time()) < 2  # nobody marks: now
    mark = 1_800_000_000_123_000_000
    store.mark_read(mark)
    store.mark_read(mark - 10**9)  # a mark never goes back
    assert mark_text(store) == wall_text(mark) == "2027-01-15T08:00:00.123Z"
