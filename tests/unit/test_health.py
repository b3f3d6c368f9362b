"""The health/status HTTP server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from controller.agent.health import METRICS_ONLY, HealthProbes, HealthServer, parse_addr
from controller.agent.metrics import Metrics
from controller.core.errors import VethguardError


class State:
    def __init__(self) -> None:
        self.live = True
        self.ready = False
        self.metrics = Metrics()
        self.metrics.realized_timestamp.set(42)
        self.metrics.watch_restarts_total.labels(kind="Pod", reason="expired").inc()
        self.status: dict[str, Any] = {
            "node": "node-1",
            "ready": False,
            "realized": {},
            "realized_objects": {},
            "endpoints": 0,
            "attached": 0,
            "errors": [],
            "last_sync_seconds": None,
        }


@pytest.fixture
def served() -> Iterator[tuple[State, str]]:
    st = State()
    probes = HealthProbes(
        live=lambda: st.live, ready=lambda: st.ready, status=lambda: st.status, metrics=st.metrics.exposition
    )
    srv = HealthServer("127.0.0.1:0", probes).start()
    host, port = srv.address
    yield st, f"http://{host}:{port}"
    srv.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def test_livez_is_200_while_the_loop_is_alive_and_503_when_it_stalls(served):
    st, url = served
    assert get(url + "/livez")[0] == 200
    st.live = False
    assert get(url + "/livez")[0] == 503


def test_readyz_is_503_until_the_first_sync_then_200(served):
    st, url = served
    assert get(url + "/readyz")[0] == 503
    st.ready = True
    assert get(url + "/readyz")[0] == 200


def test_status_is_the_documented_json(served):
    st, url = served
    realized = {"Pod": {"resourceVersion": "7", "objects": 3, "digest": "00000000000000ab"}}
    st.status.update(ready=True, realized=realized, endpoints=3, attached=3)
    st.status["errors"] = [{"object": "NetworkPolicy x/p", "field": "spec.ingress[0]", "message": "bad"}]
    code, ctype, body = get(url + "/status")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert {"node", "ready", "realized", "realized_objects", "endpoints", "attached", "errors"} <= set(doc)
    assert doc["realized"] == realized and doc["errors"][0]["field"] == "spec.ingress[0]"


def test_metrics_are_the_prometheus_exposition_of_the_dedicated_registry(served):
    _, url = served
    code, ctype, body = get(url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "vethguard_agent_realized_timestamp_seconds 42.0" in body
    assert 'vethguard_sources_watch_restarts_total{kind="Pod",reason="expired"} 1.0' in body
    assert "vethguard_policy_compute_seconds_bucket" in body
    assert Metrics().registry is not Metrics().registry  # dedicated: a second agent's registers fine


def test_an_unknown_path_is_404(served):
    _, url = served
    assert get(url + "/nope")[0] == 404


def test_a_probe_that_raises_gives_500_and_the_server_keeps_serving():
    def boom() -> bool:
        raise RuntimeError("probe bug")

    probes = HealthProbes(live=boom, ready=lambda: True, status=dict, metrics=lambda: b"")
    srv = HealthServer("127.0.0.1:0", probes).start()
    try:
        url = "http://{}:{}".format(*srv.address)
        assert get(url + "/livez")[0] == 500
        assert get(url + "/readyz")[0] == 200
    finally:
        srv.stop()


def test_health_addresses_parse_and_bad_ones_are_clear_errors():
    assert parse_addr("127.0.0.1:9890") == ("127.0.0.1", 9890)
    assert parse_addr("[::1]:9890") == ("::1", 9890)
    assert parse_addr(":9890") == ("127.0.0.1", 9890)
    with pytest.raises(VethguardError, match="HOST:PORT"):
        parse_addr("localhost")


def test_a_busy_port_is_a_clear_error():
    probes = HealthProbes(live=lambda: True, ready=lambda: True, status=dict, metrics=lambda: b"")
    first = HealthServer("127.0.0.1:0", probes)
    try:
        with pytest.raises(VethguardError, match="cannot serve"):
            HealthServer(f"127.0.0.1:{first.address[1]}", probes)
    finally:
        first.stop()


def test_the_scrape_address_serves_metrics_alone_never_the_status(served):
    st, _ = served
    probes = HealthProbes(
        live=lambda: st.live, ready=lambda: st.ready, status=lambda: st.status, metrics=st.metrics.exposition
    )
    scrape = HealthServer("127.0.0.1:0", probes, METRICS_ONLY, "--metrics-addr").start()
    try:
        host, port = scrape.address
        code, ctype, body = get(f"http://{host}:{port}/metrics")
        assert code == 200 and ctype.startswith("text/plain") and "vethguard_build_info{" in body
        for path in ("/status", "/livez", "/readyz"):
            assert get(f"http://{host}:{port}{path}")[:1] == (404,), path
    finally:
        scrape.stop()
    with pytest.raises(VethguardError, match="invalid --metrics-addr 'nope'"):
        HealthServer("nope", probes, METRICS_ONLY, "--metrics-addr")


def test_metrics_carry_build_info_process_metrics_and_directions():
    m = Metrics()
    text = m.exposition().decode()
    info = next(line for line in text.splitlines() if line.startswith("vethguard_build_info{"))
    assert 'version="' in info and 'kernel="' in info and 'bcc="' in info and info.endswith(" 1.0")
    assert "process_resident_memory_bytes " in text and "process_cpu_seconds_total " in text
    m.drops_total.labels(direction="egress", reason="DROP_POLICY").inc(3)
    assert (
        'vethguard_datapath_drops_total{direction="egress",reason="DROP_POLICY"} 3.0'
        in m.exposition().decode()
    )


def exported_series() -> dict[str, set[str]]:
    """Every sample name the agent's registry exposes (counter _total, histogram _bucket/_sum/
    _count, process_*) -> the labels it carries."""
    import re

    m = Metrics()
    names: dict[str, set[str]] = {}
    for family in m.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            family.type, ("",)
        )
        for suffix in suffixes:
            names[family.name + suffix] = {"le"} if suffix == "_bucket" else set()
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    for attr in vars(m).values():  # labelled metrics without samples yet: their label names
        labelnames = getattr(attr, "_labelnames", ())
        name = getattr(attr, "_name", "")
        for key in list(names):
            if re.fullmatch(rf"{re.escape(name)}(_total|_bucket|_sum|_count)?", key):
                names[key].update(labelnames)
    return names


def test_the_grafana_dashboard_queries_only_metrics_and_labels_the_agent_exports():
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "grafana-dashboard.json"
    exprs = [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]
    series = exported_series()
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b((?:vethguard|process)_[a-z0-9_]+)", expr):
            assert name in series, f"{name} (in {expr}) is not exported"
            used.add(name)
            by = re.search(r"by \(([^)]*)\)", expr)
            grouped = {x.strip() for x in by.group(1).split(",")} - {"le", "instance", "job"} if by else set()
            metric_names = re.findall(r"\b(?:vethguard|process)_[a-z0-9_]+", expr)
            assert grouped <= set().union(*(series[n] for n in metric_names)), (expr, grouped)
    assert {"vethguard_datapath_drops_total", "vethguard_flows_lost_total", "vethguard_build_info"} <= used
