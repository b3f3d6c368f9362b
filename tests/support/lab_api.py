"""The lab's Kubernetes API server in this process, for unit tests of what it serves and of the
clients that read it: the official client's CustomObjectsApi on a store, a kubeconfig of a
served store, a raw GET (discovery), and a store with the agent pods of `lab up --agent-pods`
with an exec runner that runs their commands here (pods/exec without root)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.lab import agent_pods
from controller.lab.apiserver import kubeconfig_text, serve_tcp, tcp_listener
from controller.lab.kubelet_objects import node_object, pod_status
from controller.lab.store import Store
from controller.lab.topology import node_addresses, node_name

# how often the served stores' watches get a BOOKMARK: several in watch_events' one second
BOOKMARK_SECONDS = 0.3


@contextlib.contextmanager
def custom_objects(store: Store) -> Iterator[Any]:
    """`store` served over TCP on 127.0.0.1 (a BOOKMARK every BOOKMARK_SECONDS) and the official
    client's CustomObjectsApi on it."""
    from kubernetes import client as kube

    sock = tcp_listener("127.0.0.1", 0)
    server = serve_tcp(store, sock=sock)
    server.server.bookmark_interval = BOOKMARK_SECONDS
    cfg = kube.Configuration()
    cfg.host = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield kube.CustomObjectsApi(kube.ApiClient(cfg))
    finally:
        server.stop()


def api_get(objects: Any, path: str) -> Any:
    """GET `path` with the client of `objects` (a CustomObjectsApi); the JSON answer."""
    response = objects.api_client.call_api("GET", objects.api_client.configuration.host + path)
    response.read()
    return json.loads(response.data)


@contextlib.contextmanager
def served_kubeconfig(store: Store, directory: Path) -> Iterator[Path]:
    """A kubeconfig (in `directory`) of `store` served over TCP."""
    thread = serve_tcp(store)
    address: Any = thread.server.server_address
    path = directory / "kubeconfig"
    path.write_text(kubeconfig_text(f"http://{address[0]}:{address[1]}"))
    try:
        yield path
    finally:
        thread.stop()


def cluster_round_trip(
    store: Store, objects: Any, plural: tuple[str, str, str], key: str, pair: tuple[Any, Any], field: str
) -> None:
    """A cluster-scoped custom resource (`plural` = group, version, plural; `key` its store
    name) through the official client: create both objects of `pair` (named a and b), list
    them, replace a with spec.`field` = 20, delete b; asserts what each step answers."""
    group, version, name = plural
    created = objects.create_cluster_custom_object(group, version, name, pair[0])
    assert created["metadata"]["resourceVersion"] and "namespace" not in created["metadata"]
    objects.create_cluster_custom_object(group, version, name, pair[1])
    listed = objects.list_cluster_custom_object(group, version, name)
    assert listed["kind"] == f"{pair[0]['kind']}List" and listed["apiVersion"] == f"{group}/{version}"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    got = objects.get_cluster_custom_object(group, version, name, "a")
    got["spec"][field] = 20
    replaced = objects.replace_cluster_custom_object(group, version, name, "a", got)
    assert replaced["spec"][field] == 20 and replaced["metadata"]["generation"] == 2
    objects.delete_cluster_custom_object(group, version, name, "b")
    assert [p["metadata"]["name"] for p in store.list(key)[0]] == ["a"]


def watch_events(objects: Any, plural: tuple[str, str, str], resource_version: str) -> list[dict[str, Any]]:
    """The events of a one-second watch (with bookmarks) of `plural` (group, version, plural)
    across the cluster from `resource_version`."""
    resp = objects.list_cluster_custom_object(
        *plural,
        watch=True,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _preload_content=False,
    )
    return [json.loads(line) for line in resp.data.splitlines() if line.strip()]


def lab_manifest(directory: Path, verb: str, text: str) -> int:
    """`vethguard lab VERB --name t -f FILE` of the manifest `text` (written in `directory`),
    against the store of the `cli_store` fixture; its exit code."""
    from controller import cli

    path = directory / "manifest.yaml"
    path.write_text(text)
    return cli.main(["lab", verb, "--name", "t", "-f", str(path)])


def agent_store(nodes: int = 2) -> Store:
    """A store as `lab up --agent-pods --nodes N` writes it, plus a pod x/a that is no agent."""
    store = Store(window=100)
    for ns in ("default", "x", agent_pods.NAMESPACE):
        store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for index in range(1, nodes + 1):
        store.create("nodes", node_object(index))
        status = pod_status(index, *node_addresses(index), [{"name": agent_pods.CONTAINER}])
        store.create("pods", agent_pods.pod_object(node_name(index), status))
    store.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
            "status": pod_status(1, "10.244.1.2", "fd00:10:244:1::2", [{"name": "c"}]),
        },
    )
    return store


def local_exec(env: dict[str, dict[str, str]] | None = None) -> agent_pods.AgentExec:
    """The lab's exec runner with the node's namespace left out (commands run here)."""
    return agent_pods.AgentExec(lambda node: None, lambda node: dict(os.environ) | (env or {}).get(node, {}))
