"""`vethguard ui`'s JSON API without a cluster, a kernel or a socket: the pure builders of
controller/debug/ui/api.py on the conformance 9-pod model, the flow buffer and follower, and the
routes of the server's App (its handle(url), what the HTTP handler serves)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.agent.flows import FlowFilter
from controller.compiler.calico import CalicoObjects
from controller.compiler.clusterview import ClusterView, RawObjects
from controller.core.errors import VethguardError
from controller.debug import explain, reach
from controller.debug.inputs import NodeRef, Target
from controller.debug.ui import api, flows, server
from tests.support.calico_objects import calico_netpol
from tests.support.debug_views import NODES, node_2_behind, raw_cluster, with_digests
from tests.support.flows import flow_rec
from tests.support.waiting import wait_for

X_A_ALLOWS_X_B = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "a-allows-b", "namespace": "x"},
    "spec": {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
    },
}
ADMIN_DENY_Z = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2",
    "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "deny-to-z-c"},
    "spec": {
        "tier": "Admin",
        "priority": 10,
        "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}},
        "ingress": [
            {"name": "no-y", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}
        ],
    },
}


def raw() -> RawObjects:
    objs = raw_cluster([X_A_ALLOWS_X_B], cluster_policies=[ADMIN_DENY_Z])
    web = calico_netpol("y", "allow-web", selector="pod == 'b'")
    web["metadata"]["resourceVersion"] = "10"
    return with_digests(dataclasses.replace(objs, calico=CalicoObjects(namespaced_policies=[web])))


# node-1's agent has realized every policy as listed, node-2's older versions of them
AGENTS = node_2_behind(raw())


@pytest.fixture(scope="module")
def view() -> ClusterView:
    return ClusterView(raw())


def test_policies_lists_every_kind_with_what_it_selects_per_node_and_its_realization(
    view: ClusterView,
) -> None:
    doc = api.policies(view, list(NODES), AGENTS)
    by_key = {p["key"]: p for p in doc["items"]}
    assert [(p["kind"], p["key"]) for p in doc["items"]] == [
        ("NetworkPolicy", "x/a-allows-b"),
        ("ClusterNetworkPolicy", "deny-to-z-c"),
        ("projectcalico.org/NetworkPolicy", "y/allow-web"),
    ]
    netpol = by_key["x/a-allows-b"]
    assert netpol["selected"] == ["x/a"] and netpol["types"] == ["Ingress"]
    assert netpol["selected_by_node"] == {"node-1": ["x/a"], "node-2": []}
    assert netpol["realized"] == {"node-1": True, "node-2": False}
    admin = by_key["deny-to-z-c"]
    assert (admin["tier"], admin["order"], admin["types"]) == ("Admin", 10, ["Ingress"])
    assert admin["selected"] == ["x/c", "y/c", "z/c"]
    assert sorted(p for ps in admin["selected_by_node"].values() for p in ps) == admin["selected"]
    calico = by_key["y/allow-web"]
    assert (calico["tier"], calico["order"], calico["selector"]) == ("Calico", 100, "pod == 'b'")
    assert calico["selected"] == ["y/b"] and calico["errors"] == 0


def test_describe_answers_what_vethguard_describe_prints_and_an_unknown_policy_is_an_error(
    view: ClusterView,
) -> None:
    doc = api.describe(view, "NetworkPolicy", "x/a-allows-b", list(NODES), AGENTS)
    assert "Name:         a-allows-b" in doc["text"] and "PodSelector:     pod=a" in doc["text"]
    assert (
        "Tier:      Admin" in api.describe(view, "ClusterNetworkPolicy", "deny-to-z-c", NODES, AGENTS)["text"]
    )
    calico = api.describe(view, "projectcalico.org/NetworkPolicy", "y/allow-web", NODES, AGENTS)
    assert calico["text"].splitlines()[1].split() == ["y", "allow-web", "100", "pod", "==", "'b'"]
    with pytest.raises(VethguardError, match="no NetworkPolicy x/nope"):
        api.describe(view, "NetworkPolicy", "x/nope", NODES, AGENTS)


def test_the_heatmap_is_the_reachability_matrix_with_namespace_totals_and_probe_disagreements(
    view: ClusterView,
) -> None:
    pods = view.pods()
    doc = api.heatmap(view, pods, 80, "TCP", 4)
    assert doc["cells"] == reach.matrix(view, pods, 80, "TCP", 4) and not doc["probed"]
    totals = {(t["from"], t["to"]): t for t in doc["namespace_cells"]}
    assert len(totals) == 9 and all(t["cells"] == 9 for t in totals.values())
    assert totals[("x", "x")]["allowed"] == 7  # x/a admits only x/b (and itself)
    assert totals[("y", "z")]["allowed"] == 6  # the Admin tier denies y -> z/c
    probed = {(c["from"], c["to"]): c["allowed"] for c in doc["cells"]}
    probed[("y/a", "x/a")] = True  # the kernel let one denied pair through
    compared = api.heatmap(view, pods, 80, "TCP", 4, probed)
    assert compared["probed"]
    assert [(c["from"], c["to"]) for c in compared["cells"] if not c["agrees"]] == [("y/a", "x/a")]
    assert {(t["from"], t["to"]) for t in compared["namespace_cells"] if t["disagree"]} == {("y", "x")}


def test_the_flow_filter_of_a_query_takes_repeated_and_comma_separated_values() -> None:
    flt = api.flow_filter({"pod": ["x/a,y/b", "z/c"], "verdict": ["denied"], "port": ["80, 443"]})
    assert flt == FlowFilter(pods=("x/a", "y/b", "z/c"), verdicts=("denied",), ports=(80, 443))
    assert api.flow_filter({}) == FlowFilter()
    with pytest.raises(VethguardError, match="port"):
        api.flow_filter({"port": ["http"]})


def test_the_flow_buffer_answers_the_matching_records_after_a_number_and_keeps_the_newest() -> None:
    buf = flows.FlowBuffer(capacity=3)
    for i in range(5):
        buf.add(flow_rec(1_700_000_000.0 + i, verdict="denied" if i % 2 else "allowed", port=80 + i))
    last, recs = buf.after(0, FlowFilter())
    assert last == 5 and [r["seq"] for r in recs] == [3, 4, 5]  # the two oldest fell out
    assert [r["seq"] for r in buf.after(3, FlowFilter(verdicts=("denied",)))[1]] == [4]
    assert [r["port"] for r in buf.after(0, FlowFilter(), limit=1)[1]] == [84]
    assert buf.state() == {"following": False, "received": 5, "error": None}


def test_the_follower_says_why_the_agents_cannot_be_read_and_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flows, "RETRY_SECONDS", 0.01)
    attempts: list[int] = []
    seen_error = threading.Event()
    buf = flows.FlowBuffer()

    def records(target: Target) -> Iterator[dict[str, Any]]:
        attempts.append(1)
        if len(attempts) == 1:
            raise VethguardError("no node's flows could be read")
        seen_error.set()
        yield flow_rec()

    follower = flows.Follower(lambda: Target(), buf, records).start()
    try:
        wait_for(lambda: buf.state()["received"] == 1, what="a record after the retry")
    finally:
        follower.stop()
    assert seen_error.is_set() and len(attempts) >= 2
    wait_for(lambda: buf.state()["error"] is not None, what="the stream's end reported")


def test_the_graph_has_every_pod_and_an_edge_per_pair_with_allowed_and_denied_counts() -> None:
    recs = [
        flow_rec(verdict="denied", count=3),
        flow_rec(verdict="allowed", port=443, policy=None),
        {**flow_rec(verdict="allowed", policy=None), "from": "ext/web", "to": "x/b"},
    ]
    doc = api.graph(["x/a", "x/b", "x/c", "y/a"], recs)
    assert [n["id"] for n in doc["nodes"]] == ["ext/web", "x/a", "x/b", "x/c", "y/a"]
    assert doc["namespaces"] == ["ext", "x", "y"]
    assert doc["edges"] == [
        {"from": "ext/web", "to": "x/b", "allowed": 1, "denied": 0, "ports": [80], "policy": None},
        {"from": "x/c", "to": "x/a", "allowed": 1, "denied": 3, "ports": [80, 443], "policy": "x/deny"},
    ]


def test_explained_is_explains_json_with_the_text_the_command_prints(view: ClusterView) -> None:
    e = explain.explain(view, "y/a", "x/a", 80)
    doc = api.explained(e)
    assert not doc["allowed"] and doc["ingress"]["policy"] == "x/a-allows-b"
    assert doc["text"] == explain.explain_text(e)


# -- the server's routes ------------------------------------------------------------------------


class FakeTarget(Target):
    def __init__(self, objects: RawObjects | Exception) -> None:
        self._objects = objects

    def objects(self) -> RawObjects:
        if isinstance(self._objects, Exception):
            raise self._objects
        return self._objects

    def nodes(self) -> list[NodeRef]:
        return [NodeRef(n, Path("/nonexistent") / n) for n in NODES]

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        return AGENTS[node.name]


def app(objects: RawObjects | Exception | None = None) -> server.App:
    buf = flows.FlowBuffer()
    buf.add({**flow_rec(verdict="allowed"), "from": "x/b"})
    buf.add(flow_rec())
    source = server.Source(FakeTarget(raw() if objects is None else objects))
    return server.App(source, buf, "lab test", kernel=False)


def get(a: server.App, url: str, status: int = 200) -> Any:
    resp = a.handle(url)
    assert resp.status == status, resp.body
    return json.loads(resp.body) if resp.content_type == "application/json" else resp.body.decode()


def test_the_app_serves_the_page_and_its_assets_and_nothing_outside_them() -> None:
    a = app()
    page = get(a, "/")
    assert "<title>vethguard</title>" in page and a.handle("/").content_type == "text/html; charset=utf-8"
    assert "function loadHeatmap" in get(a, "/static/app.js")
    assert get(a, "/static/../server.py", 404)["error"].startswith("no such file")
    assert get(a, "/etc/passwd", 404)["error"] == "no such page: /etc/passwd"


def test_the_page_loads_nothing_from_outside_vethguard() -> None:
    for asset in server.STATIC.iterdir():
        text = asset.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), asset.name
        assert not re.search(r"(fetch|import)\(\s*[\"'`]https?:", text), asset.name


def test_the_api_routes_answer_json_and_errors_are_json_the_page_shows() -> None:
    a = app()
    info = get(a, "/api/info")
    assert (info["target"], info["probe"], len(info["pods"])) == ("lab test", False, 9)
    assert [n["name"] for n in info["nodes"]] == list(NODES)
    assert next(p["key"] for p in get(a, "/api/policies")["items"]) == "x/a-allows-b"
    heat = get(a, "/api/heatmap?port=80&protocol=tcp&namespace=x")
    assert heat["pods"] == ["x/a", "x/b", "x/c"] and len(heat["cells"]) == 9
    assert get(a, "/api/heatmap?probe=1", 400)["error"] == "probing needs a lab (vethguard ui --lab NAME)"
    assert get(a, "/api/heatmap?port=eighty", 400)["error"] == "port: not a number: 'eighty'"
    assert get(a, "/api/heatmap?family=5", 400)["error"] == "family: 4 or 6"
    flows_doc = get(a, "/api/flows?after=0&pod=x/b")
    assert flows_doc["last"] == 2 and [r["from"] for r in flows_doc["records"]] == ["x/b"]
    assert get(a, "/api/flows?after=2")["records"] == []
    edges = get(a, "/api/graph?seconds=999999999")["edges"]
    assert {(e["from"], e["to"]) for e in edges} == {("x/b", "x/a"), ("x/c", "x/a")}
    why = get(a, "/api/explain?from=y/a&to=x/a&port=80")
    assert not why["allowed"] and why["ingress"]["policy"] == "x/a-allows-b"
    assert get(a, "/api/explain?from=y/a", 400)["error"].startswith("from and to")
    assert "no such pod" in get(a, "/api/explain?from=y/a&to=q/q&port=80", 502)["error"]
    down = app(VethguardError("lab t is not running"))
    assert get(down, "/api/policies", 502) == {"error": "lab t is not running"}
    assert get(app(RuntimeError("boom")), "/api/info", 500) == {"error": "RuntimeError: boom"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        ("::1", ("::1", 0)),
        ("10.0.0.1", ("10.0.0.1", 0)),
    ],
)
def test_listen_takes_an_address_and_a_port_or_a_free_one(text: str, expected: tuple[str, int]) -> None:
    assert server.parse_listen(text) == expected
    host = f"[{expected[0]}]" if ":" in expected[0] else expected[0]
    assert server.url_of(*expected) == f"http://{host}:{expected[1]}/"


@pytest.mark.parametrize("text", ["localhost:80", "127.0.0.1:http", "127.0.0.1:70000"])
def test_listen_refuses_a_name_or_a_bad_port(text: str) -> None:
    with pytest.raises(VethguardError, match="--listen"):
        server.parse_listen(text)


DENY_X_A = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
"""


def post(a: server.App, url: str, doc: Any, status: int = 200) -> Any:
    resp = a.handle(url, json.dumps(doc).encode())
    assert resp.status == status, resp.body
    return json.loads(resp.body)


def test_whatif_replays_the_flows_the_page_holds_against_a_change_without_applying_it() -> None:
    a = app()
    doc = post(a, "/api/whatif", {"yaml": DENY_X_A})
    # the page held x/b -> x/a allowed (x/a-allows-b); deny-all adds no rule for it: still allowed
    # by the other policy, so only flows from pods other than b would change (none held): none
    assert doc["objects"] == [
        {"kind": "NetworkPolicy", "namespace": "x", "name": "deny-all", "action": "created"}
    ]
    assert doc["flows"] >= 1 and "text" in doc and "not applied" in doc["text"]
    deleted = post(a, "/api/whatif", {"delete": ["netpol/x/a-allows-b"]})
    assert deleted["objects"][0]["action"] == "deleted"
    assert get(a, "/api/policies")["items"]  # nothing applied: the live policy is still listed


def test_whatif_names_the_problems_of_an_invalid_change_and_refuses_other_posts() -> None:
    a = app()
    bad = post(a, "/api/whatif", {"yaml": DENY_X_A.replace("[Ingress]", "[Sideways]")}, 422)
    assert bad["problems"] and any("Sideways" in p for p in bad["problems"])
    assert post(a, "/api/whatif", {"yaml": "- just\n- a list\n"}, 400)["error"].startswith(
        "every YAML document"
    )
    assert post(a, "/api/whatif", {}, 400)["error"].startswith("give the change")
    assert post(a, "/api/policies", {}, 405)["error"] == "POST is for /api/whatif, not /api/policies"
