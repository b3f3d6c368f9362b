"""Informers against a small fake API server speaking the Kubernetes list/watch protocol."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from controller.agent.cluster_events import Event
from controller.agent.informers import InformerOptions, Sources, full_jitter
from controller.agent.kube_api import KINDS
from controller.agent.metrics import Metrics
from controller.core.object_versions import digest_text, kind_digest, object_key
from tests.support.waiting import wait_for

PATHS = {
    "/api/v1/namespaces": "Namespace",
    "/api/v1/pods": "Pod",
    "/apis/networking.k8s.io/v1/networkpolicies": "NetworkPolicy",
    "/api/v1/nodes": "Node",
    "/api/v1/services": "Service",
    "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies": "ClusterNetworkPolicy",
    "/apis/projectcalico.org/v3/globalnetworkpolicies": "GlobalNetworkPolicy.projectcalico.org",
    "/apis/projectcalico.org/v3/networkpolicies": "NetworkPolicy.projectcalico.org",
    "/apis/projectcalico.org/v3/hostendpoints": "HostEndpoint.projectcalico.org",
}


class FakeApiServer:
    """Enough of kube-apiserver for informers: list (with resourceVersion), watch with history
    replay, BOOKMARKs, 410 expiry, dropped connections and injected failures."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 1
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in PATHS.values()}
        # history of (rv, kind, event); bookmarks are kind "*"
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.min_rv = 0  # watches from an older RV get 410
        self.expire_epoch = 0
        self.drop_epoch = 0
        self.fail_requests = False  # answer 500 to everything
        self.gone_status = False  # answer an expired watch with HTTP 410 instead of an ERROR event
        self.refused: dict[str, int] = {}  # path -> status (404: an API not served, 403: no RBAC)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.open_watches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        with self.cond:
            self.drop_epoch += 1
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- state changes

    def write(self, kind: str, obj: dict[str, Any], *, notify: bool = True, delete: bool = False) -> int:
        with self.cond:
            self.rv += 1
            meta = obj.setdefault("metadata", {})
            meta["resourceVersion"] = str(self.rv)
            key = object_key(obj, kind in ("Pod", "NetworkPolicy"))
            existed = key in self.objects[kind]
            if delete:
                self.objects[kind].pop(key, None)
            else:
                self.objects[kind][key] = obj
            if notify:
                etype = "DELETED" if delete else ("MODIFIED" if existed else "ADDED")
                self.history.append((self.rv, kind, {"type": etype, "object": obj}))
            self.cond.notify_all()
            return self.rv

    def bookmark(self) -> None:
        """What the lab API server does after every write: BOOKMARK at the current RV on every watch."""
        with self.cond:
            self.history.append((self.rv, "*", {"type": "BOOKMARK"}))
            self.cond.notify_all()

    def expire(self) -> None:
        """Compact all history: open watches get ERROR 410, re-watching from an old RV too."""
        with self.cond:
            self.min_rv = self.rv
            self.history.clear()
            self.expire_epoch += 1
            self.cond.notify_all()

    def drop_watches(self) -> None:
        with self.cond:
            self.drop_epoch += 1
            self.cond.notify_all()

    def count(self, watch: bool) -> int:
        return sum(1 for _, q in self.requests if (q.get("watch") == "true") == watch)

    # ---- HTTP

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((url.path, q))
        kind = PATHS.get(url.path)
        # The epochs as this request arrived: a drop or expiry from now on ends its watch, even
        # one that happens before the watch below starts (a request in flight while the test
        # refuses the path and drops the watches must not become a watch that never ends).
        with self.cond:
            epochs = (self.drop_epoch, self.expire_epoch)
        if self.fail_requests:
            return self._json(h, 500, {"kind": "Status", "code": 500, "message": "injected failure"})
        code = 404 if kind is None else self.refused.get(url.path)
        if code is not None or kind is None:
            return self._json(h, code or 404, {"kind": "Status", "code": code, "message": "refused"})
        if q.get("watch") == "true":
            return self._watch(h, kind, q, epochs)
        with self.cond:
            items = [json.loads(json.dumps(o)) for o in self.objects[kind].values()]
            rv = self.rv
        body = {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}
        body["items"] = items
        self._json(h, 200, body)

    def _json(self, h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _watch(
        self, h: BaseHTTPRequestHandler, kind: str, q: dict[str, str], epochs: tuple[int, int]
    ) -> None:
        from_rv = int(q.get("resourceVersion") or 0)
        timeout = float(q.get("timeoutSeconds") or 30)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        gone = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old"}
        if from_rv < self.min_rv and self.gone_status:
            return self._json(h, 410, gone)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(ev: dict[str, Any]) -> None:
            data = json.dumps(ev).encode() + b"\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        deadline = time.monotonic() + timeout
        drop, expire = epochs
        with self.cond:
            self.open_watches += 1
        try:
            if from_rv < self.min_rv:
                send({"type": "ERROR", "object": gone})
                h.wfile.write(b"0\r\n\r\n")
                return
            cursor = 0
            while True:
                with self.cond:
                    while (
                        cursor >= len(self.history)
                        and drop == self.drop_epoch
                        and expire == self.expire_epoch
                        and time.monotonic() < deadline
                    ):
                        self.cond.wait(0.05)
                    if drop != self.drop_epoch:
                        h.connection.shutdown(socket.SHUT_RDWR)  # abrupt: no terminating chunk
                        return
                    if expire != self.expire_epoch:
                        pending = [{"type": "ERROR", "object": gone}]
                        end = True
                    else:
                        pending = []
                        for rv, k, ev in self.history[cursor:]:
                            if rv <= from_rv and k != "*":
                                continue
                            if k == "*":
                                if bookmarks:
                                    pending.append(
                                        {
                                            "type": "BOOKMARK",
                                            "object": {
                                                "kind": kind,
                                                "metadata": {"resourceVersion": str(rv)},
                                            },
                                        }
                                    )
                            elif k == kind:
                                pending.append(ev)
                        cursor = len(self.history)
                        end = time.monotonic() >= deadline
                for ev in pending:
                    send(ev)
                if end:
                    h.wfile.write(b"0\r\n\r\n")
                    return
        except OSError:
            return
        finally:
            with self.cond:
                self.open_watches -= 1


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def pod(namespace: str, name: str, ip: str, node: str = "node-1") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
    }


def drain(q: queue.Queue[Event]) -> list[Event]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


FAST = InformerOptions(watch_timeout_seconds=(20, 20), backoff_base=0.01, backoff_cap=0.05, read_slack=5)


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    s = FakeApiServer()
    yield s
    s.close()


@pytest.fixture
def make_sources(server: FakeApiServer) -> Iterator[Callable[..., Sources]]:
    from kubernetes import client

    made: list[Sources] = []

    def make(metrics: Metrics | None = None, options: InformerOptions = FAST) -> Sources:
        cfg = client.Configuration()
        cfg.host = server.url
        src = Sources.from_api_client(client.ApiClient(cfg), metrics=metrics, options=options)
        made.append(src)
        src.start()
        assert src.wait_synced(5), "informers did not sync"
        return src

    yield make
    for s in made:
        s.stop()


def test_initial_list_fills_every_cache_and_records_the_list_resource_version(server, make_sources):
    server.write("Namespace", ns("x"))
    server.write("Pod", pod("x", "a", "10.244.1.2"))
    src = make_sources()
    snap = src.snapshot()
    assert [o["metadata"]["name"] for o in snap.namespaces] == ["x"]
    assert [o["metadata"]["name"] for o in snap.pods] == ["a"]
    assert snap.pods[0]["kind"] == "Pod"  # list items get their kind filled in
    assert snap.policies == () and snap.nodes == ()
    assert set(src.resource_versions().values()) == {"3"}
    assert snap.kinds["Pod"].digest == kind_digest(snap.pods, namespaced=True) != 0


def test_watch_events_after_the_list_update_the_cache_and_the_event_stream(server, make_sources):
    src = make_sources()
    drain(src.events)
    wait_for(lambda: server.open_watches == len(KINDS))
    server.write("Pod", pod("x", "a", "10.244.1.2"))
    server.write("Pod", pod("x", "a", "10.244.1.2"), delete=True)
    server.write("Pod", pod("x", "b", "10.244.1.3"))
    wait_for(lambda: src.informers["Pod"].resource_version == "4")
    assert src.informers["Pod"].keys() == ["x/b"]
    # (the initial list's SYNCED may be queued just after wait_synced returned: not a watch event)
    evs = [(e.type, e.key) for e in drain(src.events) if e.kind == "Pod" and e.type != "SYNCED"]
    assert evs == [("ADDED", "x/a"), ("DELETED", "x/a"), ("ADDED", "x/b")]


def test_a_bookmark_advances_the_resource_version_without_changing_the_cache(server, make_sources):
    src = make_sources()
    wait_for(lambda: server.open_watches == len(KINDS))
    before = src.snapshot()
    server.write("Pod", pod("x", "a", "10.244.1.2"))
    server.bookmark()
    wait_for(lambda: set(src.resource_versions().values()) == {str(server.rv)})
    after = src.snapshot()
    # only the Pod cache changed content; all kinds moved to the bookmark's RV
    assert after.kinds["Namespace"].content_version == before.kinds["Namespace"].content_version
    assert after.kinds["Pod"].content_version > before.kinds["Pod"].content_version
    assert {k.resource_version for k in after.kinds.values()} == {str(server.rv)}


def test_a_410_mid_watch_triggers_a_relist_and_the_cache_converges(server, make_sources):
    metrics = Metrics()
    server.write("Pod", pod("x", "a", "10.244.1.2"))
    server.write("Pod", pod("x", "b", "10.244.1.3"))
    src = make_sources(metrics)
    wait_for(lambda: server.open_watches == len(KINDS))
    drain(src.events)
    # changes the watch never delivers (compacted away), then expiry
    server.write("Pod", pod("x", "a", "10.244.1.2"), delete=True, notify=False)
    changed = pod("x", "b", "10.244.1.3")
    changed["metadata"]["labels"]["v"] = "2"
    server.write("Pod", changed, notify=False)
    server.write("Pod", pod("x", "c", "10.244.1.4"), notify=False)
    server.expire()
    wait_for(lambda: src.informers["Pod"].keys() == ["x/b", "x/c"])
    assert src.informers["Pod"].get("x/b")["metadata"]["labels"]["v"] == "2"
    # (the relist swaps the cache, then queues its events: they may trail the cache a little)
    seen: list[Event] = []

    def relist_events() -> list[tuple[str, str]]:
        seen.extend(
            e for e in drain(src.events) if e.kind == "Pod" and e.type in ("ADDED", "MODIFIED", "DELETED")
        )
        return sorted((e.type, e.key) for e in seen)

    wait_for(lambda: len(relist_events()) >= 3)
    assert relist_events() == [("ADDED", "x/c"), ("DELETED", "x/a"), ("MODIFIED", "x/b")]
    assert src.informers["Pod"].resource_version == str(server.rv)
    assert metrics.watch_restarts_total.labels(kind="Pod", reason="expired")._value.get() >= 1


def test_an_http_410_on_rewatch_also_relists(server, make_sources):
    src = make_sources()
    wait_for(lambda: server.open_watches == len(KINDS))
    lists_before = src.informers["Node"].lists
    server.gone_status = True
    server.write("Node", {"metadata": {"name": "node-9"}}, notify=False)
    server.expire()
    wait_for(lambda: src.informers["Node"].keys() == ["node-9"])
    assert src.informers["Node"].lists > lists_before


def test_a_dropped_connection_reconnects_from_the_last_version_without_losing_the_cache(server, make_sources):
    server.write("Pod", pod("x", "a", "10.244.1.2"))
    metrics = Metrics()
    src = make_sources(metrics)
    wait_for(lambda: server.open_watches == len(KINDS))
    lists = server.count(watch=False)
    server.fail_requests = True
    server.drop_watches()
    failed = server.count(watch=True)
    wait_for(lambda: server.count(watch=True) >= failed + 8)  # several failed reconnects
    assert src.informers["Pod"].keys() == ["x/a"]  # enforcement continues on the last state
    server.write("Pod", pod("x", "b", "10.244.1.3"))  # happens while we are disconnected
    server.fail_requests = False
    wait_for(lambda: src.informers["Pod"].keys() == ["x/a", "x/b"])
    assert server.count(watch=False) == lists  # resumed from the RV: no relist was needed
    assert metrics.watch_restarts_total.labels(kind="Pod", reason="error")._value.get() >= 1


def test_a_watch_ended_by_the_server_is_resumed_at_once(server, make_sources):
    opts = InformerOptions(watch_timeout_seconds=(1, 1), backoff_base=0.01, backoff_cap=0.05, read_slack=5)
    src = make_sources(options=opts)
    server.write("Namespace", ns("late"))
    wait_for(lambda: src.informers["Namespace"].keys() == ["late"], timeout=5)
    wait_for(lambda: server.count(watch=True) >= 2 * len(KINDS), timeout=5)  # every kind re-watched after 1 s
    assert server.count(watch=False) == len(KINDS)


def test_stop_returns_promptly_even_with_open_watches(server, make_sources):
    src = make_sources()
    wait_for(lambda: server.open_watches == len(KINDS))
    t = time.monotonic()
    src.stop()
    assert time.monotonic() - t < 2
    assert not any(inf._thread.is_alive() for inf in src.informers.values())


def test_the_cache_digest_follows_every_watch_event_as_a_fresh_list_would_compute_it(server, make_sources):
    src = make_sources()
    wait_for(lambda: server.open_watches == len(KINDS))
    server.write("Pod", pod("x", "a", "10.244.1.2"))
    server.write("Pod", pod("x", "b", "10.244.1.3"))
    server.write("Pod", pod("x", "a", "10.244.1.4"))  # modified: the old version leaves the digest
    server.write("Pod", pod("x", "b", "10.244.1.3"), delete=True)
    wait_for(
        lambda: src.informers["Pod"].keys() == ["x/a"] and src.resource_versions()["Pod"] == str(server.rv)
    )
    snap = src.snapshot().kinds["Pod"]
    assert snap.digest == kind_digest(snap.objects, namespaced=True)
    assert snap.digest == kind_digest(server.objects["Pod"].values(), namespaced=True)
    assert digest_text(snap.digest) != digest_text(0)


def test_full_jitter_never_exceeds_the_cap():
    assert all(0 <= full_jitter(a, 0.2, 10.0) <= 10.0 for a in range(100))
    assert full_jitter(0, 0.2, 10.0) <= 0.2


CNP_PATH = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"


def cnp(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"tier": "Admin", "priority": 1}}


@pytest.mark.parametrize("status", [404, 403])
def test_without_the_cluster_network_policy_api_the_agent_syncs_without_it_and_lists_it_again_later(
    server, make_sources, status, capsys
):
    server.refused[CNP_PATH] = status
    server.write("Namespace", ns("x"))
    src = make_sources(options=InformerOptions(absent_retry_seconds=0.2, backoff_base=0.01, backoff_cap=0.05))
    informer = src.informers["ClusterNetworkPolicy"]
    assert src.has_synced and informer.absent
    snap = src.snapshot()
    assert snap.cluster_policies == () and snap.kinds["ClusterNetworkPolicy"].absent
    assert src.resource_versions()["ClusterNetworkPolicy"] == "" and src.resource_versions()["Pod"] == "2"
    wait_for(lambda: server.count(watch=False) >= len(KINDS) + 2)  # listed again, never watched
    assert not any(p == CNP_PATH and q.get("watch") == "true" for p, q in server.requests)
    assert capsys.readouterr().out.count("does not serve this kind") == 1  # one warning, not one per list
    del server.refused[CNP_PATH]  # the CRD is installed
    server.write("ClusterNetworkPolicy", cnp("deny-y"))
    wait_for(lambda: [o["metadata"]["name"] for o in src.snapshot().cluster_policies] == ["deny-y"])
    assert not informer.absent
    assert src.snapshot().kinds["ClusterNetworkPolicy"].resource_version == "3"
    server.write("ClusterNetworkPolicy", cnp("deny-z"))  # and watched from then on
    wait_for(lambda: len(src.snapshot().cluster_policies) == 2)


def test_a_cluster_network_policy_api_that_goes_away_empties_the_cache(server, make_sources):
    server.write("ClusterNetworkPolicy", cnp("deny-y"))
    src = make_sources(options=InformerOptions(absent_retry_seconds=0.2, backoff_base=0.01, backoff_cap=0.05))
    assert len(src.snapshot().cluster_policies) == 1
    server.refused[CNP_PATH] = 404  # the CRD was deleted: its watches end, lists answer 404
    server.drop_watches()
    wait_for(lambda: src.informers["ClusterNetworkPolicy"].absent)
    assert src.snapshot().cluster_policies == ()
    deleted = [e for e in drain(src.events) if e.kind == "ClusterNetworkPolicy" and e.type == "DELETED"]
    assert [e.key for e in deleted] == ["deny-y"]


def test_object_keys_are_namespace_slash_name_for_namespaced_kinds():
    assert object_key({"metadata": {"namespace": "x", "name": "a"}}, True) == "x/a"
    assert object_key({"metadata": {"name": "node-1"}}, False) == "node-1"
    assert [k.kind for k in KINDS] == [
        "Namespace",
        "Pod",
        "NetworkPolicy",
        "Node",
        "Service",
        "ClusterNetworkPolicy",
        "GlobalNetworkPolicy.projectcalico.org",
        "NetworkPolicy.projectcalico.org",
        "HostEndpoint.projectcalico.org",
    ]
