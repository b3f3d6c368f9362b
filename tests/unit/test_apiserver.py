"""The lab API server, driven with the official Kubernetes python client on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from controller.lab.api_requests import merge_patch
from controller.lab.apiserver import UNVALIDATED_PATH, ServerThread, kubeconfig_text, serve_tcp
from controller.lab.store import Store


def server_address(thread: ServerThread) -> tuple[str, int]:
    address: Any = thread.server.server_address
    return str(address[0]), int(address[1])


@pytest.fixture
def store() -> Store:
    return Store(window=50)


@pytest.fixture
def server(store: Store) -> Iterator[ServerThread]:
    thread = serve_tcp(store)
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def api_client(server: ServerThread, tmp_path: Path) -> Iterator[client.ApiClient]:
    host, port = server_address(server)
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(f"http://{host}:{port}"))
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        api.close()


def core_api(api_client: client.ApiClient) -> Any:
    return client.CoreV1Api(api_client)


def net_api(api_client: client.ApiClient) -> Any:
    return client.NetworkingV1Api(api_client)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, node: str = "node-1", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}],
        },
    }


def policy(ns: str, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec if spec is not None else {"podSelector": {}, "ingress": []},
    }


def test_version_and_discovery_are_served(api_client: client.ApiClient) -> None:
    assert client.VersionApi(api_client).get_code().git_version.startswith("v1.")
    groups = client.ApisApi(api_client).get_api_versions()
    assert "networking.k8s.io" in [g.name for g in groups.groups]
    resources = net_api(api_client).get_api_resources()
    assert [r.name for r in resources.resources] == ["networkpolicies"]


def test_lists_carry_kind_and_the_global_resource_version(store: Store, api_client: client.ApiClient) -> None:
    store.create("namespaces", namespace("x", ns="x"))
    store.create("pods", pod("x", "a", pod="a"))
    core = core_api(api_client)
    namespaces = core.list_namespace()
    assert [n.metadata.name for n in namespaces.items] == ["x"]
    assert namespaces.metadata.resource_version == "2"
    assert namespaces.items[0].metadata.labels == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    pods = core.list_pod_for_all_namespaces()
    assert pods.items[0].spec.containers[0].ports[0].protocol == "TCP"
    raw = json.loads(core.list_namespaced_pod("x", _preload_content=False).data)
    assert raw["kind"] == "PodList"
    assert raw["apiVersion"] == "v1"
    assert raw["metadata"]["resourceVersion"] == "2"


def test_objects_get_uid_timestamp_generation_and_resource_version(
    store: Store, api_client: client.ApiClient
) -> None:
    store.create("namespaces", namespace("x"))
    net = net_api(api_client)
    created = net.create_namespaced_network_policy("x", policy("x", "deny"))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.generation == 1
    assert created.spec.policy_types == ["Ingress"]
    body = policy("x", "deny", {"podSelector": {"matchLabels": {"a": "b"}}, "egress": [{}]})
    replaced = net.replace_namespaced_network_policy("deny", "x", body)
    assert replaced.metadata.generation == 2
    assert replaced.metadata.uid == created.metadata.uid
    assert replaced.spec.policy_types == ["Ingress", "Egress"]
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)


def test_get_of_a_missing_object_is_a_404_status(store: Store, api_client: client.ApiClient) -> None:
    store.create("namespaces", namespace("x"))
    with pytest.raises(ApiException) as info:
        core_api(api_client).read_namespaced_pod("nope", "x")
    assert info.value.status == 404
    assert json.loads(info.value.body or "{}")["reason"] == "NotFound"


def test_creating_in_a_missing_namespace_is_refused(api_client: client.ApiClient) -> None:
    with pytest.raises(ApiException) as info:
        net_api(api_client).create_namespaced_network_policy("ghost", policy("ghost", "p"))
    assert info.value.status == 404


def test_creating_twice_is_a_conflict(store: Store, api_client: client.ApiClient) -> None:
    store.create("namespaces", namespace("x"))
    with pytest.raises(ApiException) as info:
        core_api(api_client).create_namespace(namespace("x"))
    assert info.value.status == 409


def test_label_and_field_selectors_filter_lists(store: Store, api_client: client.ApiClient) -> None:
    store.create("namespaces", namespace("x"))
    store.create("pods", pod("x", "a", pod="a", tier="web"))
    store.create("pods", pod("x", "b", node="node-2", pod="b"))
    core = core_api(api_client)
    names = lambda result: [p.metadata.name for p in result.items]  # noqa: E731
    assert names(core.list_namespaced_pod("x", label_selector="pod in (a, c),tier")) == ["a"]
    assert names(core.list_namespaced_pod("x", label_selector="!tier")) == ["b"]
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-2")) == ["b"]


def _watch_events(
    net: Any, start: str, seconds: int, writer: Callable[[], None] | None = None, **kwargs: Any
) -> list[tuple[str, str]]:
    """(type, resourceVersion) of every event of a NetworkPolicy watch from `start` that the
    server ends after `seconds`; `writer` runs once the watch is open."""
    seen: list[tuple[str, str]] = []
    stream = watch.Watch()
    thread = threading.Thread(target=writer) if writer is not None else None
    if thread is not None:
        threading.Timer(0.3, thread.start).start()
    for event in stream.stream(
        net.list_network_policy_for_all_namespaces, resource_version=start, timeout_seconds=seconds, **kwargs
    ):
        raw = event["raw_object"]
        seen.append((event["type"], raw["metadata"]["resourceVersion"]))
    if thread is not None:
        thread.join()
    return seen


def test_a_watch_sees_create_replace_and_delete_and_no_bookmark_after_a_write(
    store: Store, api_client: client.ApiClient
) -> None:
    store.create("namespaces", namespace("x"))
    net = net_api(api_client)
    start = net.list_network_policy_for_all_namespaces().metadata.resource_version

    def writer() -> None:
        net.create_namespaced_network_policy("x", policy("x", "p"))
        net.replace_namespaced_network_policy("p", "x", policy("x", "p", {"podSelector": {}}))
        core_api(api_client).create_namespace(namespace("y"))  # another kind: nothing on this watch
        net.delete_namespaced_network_policy("p", "x")

    seen = _watch_events(net, start, 2, writer, allow_watch_bookmarks=True)
    assert [kind for kind, _ in seen] == ["ADDED", "MODIFIED", "DELETED"]  # kube-apiserver sends no BOOKMARK
    assert [int(rv) for _, rv in seen] == [2, 3, 5]  # the namespace y was 4


def test_bookmarks_come_once_per_interval_and_only_to_a_watch_that_asked(
    store: Store, server: ServerThread, api_client: client.ApiClient
) -> None:
    net = net_api(api_client)
    store.create("namespaces", namespace("x"))
    start = net.list_network_policy_for_all_namespaces().metadata.resource_version
    server.server.bookmark_interval = 0.5
    bookmarks = _watch_events(net, start, 3, allow_watch_bookmarks=True)
    # about one per 0.5 s of the 3 s watch (none at its start), each at the current version
    assert 2 <= len(bookmarks) <= 6 and set(bookmarks) == {("BOOKMARK", start)}
    assert _watch_events(net, start, 1) == []  # not asked for
    server.server.bookmark_interval = 0  # the lab's --bookmark-interval 0
    assert _watch_events(net, start, 1, allow_watch_bookmarks=True) == []


def test_a_watch_without_resource_version_starts_with_the_current_objects(
    store: Store, api_client: client.ApiClient
) -> None:
    store.create("namespaces", namespace("x"))
    store.create("namespaces", namespace("y"))
    core = core_api(api_client)
    events = list(watch.Watch().stream(core.list_namespace, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "x"), ("ADDED", "y")]


def test_a_label_change_out_of_a_watched_selector_is_a_deleted_event(
    store: Store, api_client: client.ApiClient
) -> None:
    store.create("namespaces", namespace("x"))
    store.create("pods", pod("x", "a", pod="a"))
    rv = str(store.resource_version)
    changed = store.get("pods", "x", "a")
    assert changed is not None
    changed["metadata"]["labels"] = {"pod": "z"}
    store.replace("pods", changed)
    core = core_api(api_client)
    events = list(
        watch.Watch().stream(
            core.list_namespaced_pod, "x", label_selector="pod=a", resource_version=rv, timeout_seconds=1
        )
    )
    assert [e["type"] for e in events] == ["DELETED"]


def test_a_watch_from_an_expired_resource_version_gets_410_gone(api_client: client.ApiClient) -> None:
    store = Store(window=3)
    thread = serve_tcp(store)
    try:
        host, port = server_address(thread)
        api_client.configuration.host = f"http://{host}:{port}"
        for name in "abcdef":
            store.create("namespaces", namespace(name))
        core = core_api(api_client)
        raw: Any = core.list_namespace(
            watch=True, resource_version="1", timeout_seconds=1, _preload_content=False
        )
        events = [json.loads(line) for line in raw.data.decode().splitlines() if line]
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410
        assert events[0]["object"]["reason"] == "Expired"
        with pytest.raises(ApiException) as info:
            for _ in watch.Watch().stream(core.list_namespace, resource_version="1", timeout_seconds=1):
                pass
        assert info.value.status == 410
        recent = list(watch.Watch().stream(core.list_namespace, resource_version="4", timeout_seconds=1))
        assert [e["object"].metadata.name for e in recent] == ["e", "f"]
    finally:
        thread.stop()


def test_a_merge_patch_replaces_labels(store: Store, api_client: client.ApiClient) -> None:
    store.create("namespaces", namespace("x", a="1"))
    patched = core_api(api_client).patch_namespace("x", {"metadata": {"labels": {"a": None, "b": "2"}}})
    assert patched.metadata.labels == {"b": "2", "kubernetes.io/metadata.name": "x"}


def test_deleting_a_namespace_deletes_what_it_contains(store: Store, api_client: client.ApiClient) -> None:
    store.create("namespaces", namespace("x"))
    store.create("pods", pod("x", "a"))
    store.create("networkpolicies", policy("x", "p"))
    core_api(api_client).delete_namespace("x")
    assert store.list("pods")[0] == []
    assert store.list("networkpolicies")[0] == []


def test_a_reloaded_store_keeps_objects_and_the_resource_version(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    first = Store(path)
    first.create("namespaces", namespace("x"))
    first.create("pods", pod("x", "a"))
    second = Store(path)
    assert second.resource_version == 2
    assert second.get("pods", "x", "a") is not None
    second.create("namespaces", namespace("y"))
    assert second.resource_version == 3


def test_a_restarted_server_answers_old_watches_with_410(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    Store(path).create("namespaces", namespace("x"))
    Store(path).create("namespaces", namespace("y"))
    restarted = Store(path)
    from controller.lab.store import Expired

    with pytest.raises(Expired):
        restarted.events_since(1)
    assert restarted.events_since(2) == ([], 2)


def test_merge_patch_removes_null_fields_and_merges_maps() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": 4}, "d": None}) == {
        "a": {"c": 2, "e": 4}
    }


# --- validation: what kube-apiserver would not admit ------------------------------------------

ISSUE_POLICY_SPEC = {"podSelector": {"matchLabels": {"bad key!": "db"}}, "policyTypes": ["Bogus"]}


def raw_request(server: ServerThread, method: str, path: str, body: Any) -> tuple[int, Any]:
    host, port = server_address(server)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_issue_s_malformed_policy_gets_422_invalid_with_kube_apiserver_s_status(
    store: Store, api_client: client.ApiClient
) -> None:
    """podSelector with an invalid label key and policyTypes [Bogus]: the lab's server once stored
    it and the agents isolated the namespace; kube-apiserver answers 422, and so does the lab."""
    store.create("namespaces", namespace("x"))
    rv = store.resource_version
    with pytest.raises(ApiException) as info:
        net_api(api_client).create_namespaced_network_policy("x", policy("x", "deny", ISSUE_POLICY_SPEC))
    assert info.value.status == 422
    status = json.loads(info.value.body or "{}")
    assert {k: status[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Invalid",
        "code": 422,
    }
    assert status["message"].startswith(
        'NetworkPolicy.networking.k8s.io "deny" is invalid: [spec.podSelector.matchLabels: Invalid value: '
        "\"bad key!\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
        "and end with an alphanumeric character"
    )
    details = status["details"]
    assert (details["name"], details["group"], details["kind"]) == (
        "deny",
        "networking.k8s.io",
        "NetworkPolicy",
    )
    assert [(c["reason"], c["field"]) for c in details["causes"]] == [
        ("FieldValueInvalid", "spec.podSelector.matchLabels"),
        ("FieldValueNotSupported", "spec.policyTypes[0]"),
    ]
    assert (
        details["causes"][1]["message"] == 'Unsupported value: "Bogus": supported values: "Ingress", "Egress"'
    )
    assert store.list("networkpolicies")[0] == [] and store.resource_version == rv  # nothing written


def test_a_replace_or_a_merge_patch_that_would_break_a_policy_is_refused_and_the_stored_one_kept(
    store: Store, api_client: client.ApiClient
) -> None:
    store.create("namespaces", namespace("x"))
    net = net_api(api_client)
    created = net.create_namespaced_network_policy("x", policy("x", "p", {"podSelector": {}}))
    for attempt in (
        lambda: net.replace_namespaced_network_policy("p", "x", policy("x", "p", ISSUE_POLICY_SPEC)),
        lambda: net.patch_namespaced_network_policy(
            "p", "x", {"spec": {"ingress": [{"ports": [{"port": 0}]}]}}
        ),
    ):
        with pytest.raises(ApiException) as info:
            attempt()
        assert info.value.status == 422
    stored = net.read_namespaced_network_policy("p", "x")
    assert stored.metadata.resource_version == created.metadata.resource_version
    assert stored.spec.ingress is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"policyTypes": "Ingress"}, "cannot unmarshal string into Go struct field spec.policyTypes"),
        (
            {"ingress": [{"from": [{"podSelecter": {}}]}]},
            'unknown field "spec.ingress[0].from[0].podSelecter"',
        ),
    ],
)
def test_a_body_kube_apiserver_could_not_decode_gets_400_bad_request(
    store: Store, server: ServerThread, spec: dict[str, Any], message: str
) -> None:
    store.create("namespaces", namespace("x"))
    path = "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies"
    code, status = raw_request(server, "POST", path, policy("x", "p", spec))
    assert (code, status["reason"]) == (400, "BadRequest")
    assert message in status["message"]


def test_invalid_names_and_labels_of_other_kinds_get_422(store: Store, api_client: client.ApiClient) -> None:
    core = core_api(api_client)
    with pytest.raises(ApiException) as info:
        core.create_namespace(namespace("Team-A"))
    assert info.value.status == 422
    assert json.loads(info.value.body or "{}")["message"].startswith(
        'Namespace "Team-A" is invalid: metadata.name'
    )
    store.create("namespaces", namespace("x"))
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("x", pod("x", "a", tier="front end"))
    assert info.value.status == 422
    assert json.loads(info.value.body or "{}")["details"]["causes"][0]["field"] == "metadata.labels"


def test_an_object_posted_unvalidated_is_stored_as_another_api_server_could_have_admitted_it(
    store: Store, server: ServerThread, api_client: client.ApiClient
) -> None:
    store.create("namespaces", namespace("x"))
    code, stored = raw_request(server, "POST", UNVALIDATED_PATH, policy("x", "deny", ISSUE_POLICY_SPEC))
    assert code == 200 and stored["spec"]["policyTypes"] == ["Bogus"]
    listed = net_api(api_client).list_namespaced_network_policy("x").items
    assert [p.metadata.name for p in listed] == ["deny"]
    code, replaced = raw_request(
        server, "POST", UNVALIDATED_PATH, policy("x", "deny", {"policyTypes": ["Nope"]})
    )
    assert code == 200 and replaced["metadata"]["generation"] == 2
    code, status = raw_request(
        server, "POST", UNVALIDATED_PATH, policy("x", "deny", {"policyTypes": "Ingress"})
    )
    assert (code, status["reason"]) == (400, "BadRequest")  # undecodable by any version
