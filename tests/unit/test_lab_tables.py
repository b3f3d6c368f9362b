"""Server-side Tables (controller.lab.tables): each kind's columns and cells as kube-apiserver
prints them, the Accept header that asks for one, and the lab API server answering list, get and
watch with Tables only to a client that asks (a plain client gets the objects as before)."""

from __future__ import annotations

import datetime
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from controller.lab import tables
from controller.lab.apiserver import ServerThread, serve_tcp
from controller.lab.kubelet_objects import node_object
from controller.lab.store import RESOURCES, Store

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


def created(seconds_ago: int) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def names(columns: tuple[tables.Column, ...], wide: bool = False) -> list[str]:
    return [c.name for c in columns if wide or c.priority == 0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (45, "45s"),
        (119, "119s"),
        (200, "3m20s"),
        (240, "4m"),
        (900, "15m"),
        (5 * 3600 + 180, "5h3m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (40 * 86400, "40d"),
        (3 * 365 * 86400 + 100 * 86400, "3y100d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_read_like_kubectl_s_human_durations(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_a_running_pod_shows_its_ready_containers_restarts_and_wide_columns() -> None:
    pod = {
        "metadata": {"name": "a", "namespace": "x", "creationTimestamp": created(90)},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c"}, {"name": "d"}]},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
            "containerStatuses": [
                {"name": "c", "ready": True, "restartCount": 1, "state": {"running": {}}},
                {"name": "d", "ready": False, "restartCount": 2, "state": {"running": {}}},
            ],
        },
    }
    assert names(tables.POD_COLUMNS) == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert names(tables.POD_COLUMNS, wide=True)[5:] == ["IP", "Node", "Nominated Node", "Readiness Gates"]
    assert tables.pod_cells(pod, NOW) == [
        "a",
        "1/2",
        "Running",
        "3",
        "90s",
        "10.244.1.5",
        "node-1",
        "<none>",
        "<none>",
    ]


def test_a_pod_s_status_is_its_containers_reason_or_terminating() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "a"},
        "spec": {"containers": [{"name": "c"}], "readinessGates": [{"conditionType": "x/ok"}]},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "x/ok", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "c",
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"finishedAt": created(300)}},
                }
            ],
        },
    }
    cells = tables.pod_cells(pod, NOW)
    assert cells[1:4] == ["0/1", "CrashLoopBackOff", "4 (5m ago)"] and cells[8] == "1/1"
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 3}}
    assert tables.pod_cells(pod, NOW)[2] == "ExitCode:3"
    pod["metadata"]["deletionTimestamp"] = created(1)
    assert tables.pod_cells(pod, NOW)[2] == "Terminating"


def test_a_lab_node_shows_ready_its_roles_version_and_addresses() -> None:
    node = node_object(1)
    node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = ""
    node["metadata"]["creationTimestamp"] = created(7200)
    node["spec"]["unschedulable"] = True
    cells = tables.node_cells(node, NOW)
    assert names(tables.NODE_COLUMNS) == ["Name", "Status", "Roles", "Age", "Version"]
    assert cells[:6] == [
        "node-1",
        "Ready,SchedulingDisabled",
        "control-plane",
        "120m",
        "v1.30.0-vethguard-lab",
        "10.244.1.1",
    ]
    assert cells[6:8] == ["<none>", "vethguard lab (network namespace)"]
    assert tables.node_cells({"metadata": {"name": "n"}}, NOW)[1:3] == ["Unknown", "<none>"]


def test_a_network_policy_shows_its_pod_selector_as_kubectl_formats_it() -> None:
    selector = {
        "matchLabels": {"role": "db", "app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["b", "a"]},
            {"key": "env", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "NotIn", "values": ["z"]},
        ],
    }
    policy = {"metadata": {"name": "p", "creationTimestamp": created(30)}, "spec": {"podSelector": selector}}
    assert tables.network_policy_cells(policy, NOW) == [
        "p",
        "app=web,!env,role=db,tier in (a,b),zone notin (z)",
        "30s",
    ]
    assert tables.format_label_selector({}) == "<none>"


def test_services_show_type_addresses_ports_and_selector() -> None:
    svc = {
        "metadata": {"name": "web"},
        "spec": {
            "type": "NodePort",
            "clusterIPs": ["10.96.0.10", "fd00:96::a"],
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
            "selector": {"b": "2", "a": "1"},
        },
    }
    assert tables.service_cells(svc, NOW) == [
        "web",
        "NodePort",
        "10.96.0.10",
        "<none>",
        "80:30080/TCP,53/UDP",
        "<unknown>",
        "a=1,b=2",
    ]
    balancer: dict[str, Any] = {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}
    assert tables.service_external_ip(balancer) == "<pending>"
    balancer["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}
    balancer["spec"]["externalIPs"] = ["198.51.100.1"]
    assert tables.service_external_ip(balancer) == "198.51.100.1,192.0.2.7"
    assert tables.service_external_ip({"spec": {"type": "ExternalName", "externalName": "a.b"}}) == "a.b"


def test_endpoint_slices_show_three_ports_and_addresses_then_how_many_more() -> None:
    eps = {
        "metadata": {"name": "web-abc"},
        "addressType": "IPv4",
        "ports": [{"port": 80}, {"name": "dns"}, {}],
        "endpoints": [{"addresses": [f"10.0.0.{i}"]} for i in range(5)],
    }
    assert tables.endpoint_slice_cells(eps, NOW)[1:4] == [
        "IPv4",
        "80,dns,*",
        "10.0.0.0,10.0.0.1,10.0.0.2 + 2 more...",
    ]
    assert tables.endpoint_slice_cells({"metadata": {"name": "e"}}, NOW)[2:4] == ["<unset>", "<unset>"]


def test_custom_resources_use_their_crd_s_printer_columns_or_name_and_age() -> None:
    cnp = tables.printer("clusternetworkpolicies")
    assert [c.definition()["name"] for c in cnp.columns] == ["Name", "Tier", "Priority", "Age"]
    obj = {
        "metadata": {"name": "deny", "creationTimestamp": created(61)},
        "spec": {"tier": "Admin", "priority": 10},
    }
    assert cnp.cells(obj, NOW) == ["deny", "Admin", "10", "61s"]
    assert cnp.cells({"metadata": {"name": "bare"}}, NOW) == ["bare", None, None, None]
    for key in (
        "globalnetworkpolicies.projectcalico.org",
        "hostendpoints.projectcalico.org",
        "externalhosts",
    ):
        assert key in RESOURCES
        assert [c.name for c in tables.printer(key).columns] == ["Name", "Age"]
        assert tables.printer(key).columns[1].type == "date"


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        (KUBECTL_ACCEPT, "v1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json", "v1beta1"),
        ("application/json; as=Table; g=meta.k8s.io; v=v1", "v1"),
        ("application/json", None),
        (None, None),
        ("*/*", None),
        ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json", None),
        ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json", None),
        ("application/json,application/json;as=Table;v=v1;g=meta.k8s.io", None),
    ],
)
def test_only_an_accept_header_that_asks_first_for_a_json_table_gets_one(
    accept: str | None, version: str | None
) -> None:
    assert tables.wants_table(accept) == version


def test_a_table_row_carries_partial_metadata_the_object_or_nothing() -> None:
    ns = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "x"}, "status": {"phase": "Active"}}
    table = tables.table("namespaces", [ns], resource_version="7", now=NOW)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "7"}
    assert table["columnDefinitions"][0] == {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": tables.NAME.description,
        "priority": 0,
    }
    [row] = table["rows"]
    assert row["cells"] == ["x", "Active", "<unknown>"]
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "x"},
    }
    assert tables.table("namespaces", [ns], include_object="Object")["rows"][0]["object"] == ns
    assert "object" not in tables.table("namespaces", [ns], include_object="None")["rows"][0]
    assert tables.table("namespaces", [ns], headers=False)["columnDefinitions"] == []


# --- the API server's content negotiation ----------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Store, ServerThread]]:
    store = Store(window=50)
    store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    store.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"containers": [{"name": "c"}]},
        },
    )
    thread = serve_tcp(store)
    try:
        yield store, thread
    finally:
        thread.stop()


def get(thread: ServerThread, path: str, accept: str | None = None) -> tuple[int, Any]:
    address: Any = thread.server.server_address
    conn = http.client.HTTPConnection(address[0], address[1], timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_kubectl_s_accept_header_gets_a_table_of_the_list_and_of_one_object(
    served: tuple[Store, ServerThread],
) -> None:
    _, thread = served
    code, listed = get(thread, "/api/v1/pods?labelSelector=pod%3Da", KUBECTL_ACCEPT)
    assert code == 200 and listed["kind"] == "Table" and listed["metadata"]["resourceVersion"]
    [row] = listed["rows"]
    assert row["cells"][:3] == ["a", "0/1", ""]
    assert row["object"]["metadata"]["namespace"] == "x"
    code, one = get(thread, "/api/v1/namespaces/x/pods/a?includeObject=Object", KUBECTL_ACCEPT)
    assert code == 200 and one["rows"][0]["object"]["kind"] == "Pod"
    assert get(thread, "/api/v1/pods?labelSelector=pod%3Db", KUBECTL_ACCEPT)[1]["rows"] == []
    code, bad = get(thread, "/api/v1/pods?includeObject=All", KUBECTL_ACCEPT)
    assert code == 400 and "includeObject" in bad["message"]


def test_a_client_that_asks_for_json_gets_the_list_as_before(served: tuple[Store, ServerThread]) -> None:
    _, thread = served
    for accept in ("application/json", None):
        code, listed = get(thread, "/api/v1/namespaces/x/pods", accept)
        assert code == 200 and listed["kind"] == "PodList" and listed["apiVersion"] == "v1"
        assert [p["metadata"]["name"] for p in listed["items"]] == ["a"]
        assert "kind" not in listed["items"][0]
        assert get(thread, "/api/v1/namespaces/x/pods/a", accept)[1]["kind"] == "Pod"


def test_a_table_watch_sends_one_row_tables_with_the_columns_only_first(
    served: tuple[Store, ServerThread],
) -> None:
    store, thread = served
    store.create("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "x"}})
    address: Any = thread.server.server_address
    conn = http.client.HTTPConnection(address[0], address[1], timeout=10)
    try:
        conn.request(
            "GET", "/api/v1/namespaces/x/pods?watch=true&timeoutSeconds=1", headers={"Accept": KUBECTL_ACCEPT}
        )
        lines = conn.getresponse().read().splitlines()
    finally:
        conn.close()
    events = [json.loads(line) for line in lines if line.strip()]
    assert [e["type"] for e in events] == ["ADDED", "ADDED"]
    assert [e["object"]["kind"] for e in events] == ["Table", "Table"]
    assert [e["object"]["rows"][0]["cells"][0] for e in events] == ["a", "b"]
    assert len(events[0]["object"]["columnDefinitions"]) == len(tables.POD_COLUMNS)
    assert events[1]["object"]["columnDefinitions"] == []
