"""Informers and the agent against the lab's Kubernetes API server, with faults injected between them.

The lab API server (controller/lab/apiserver.py + store.py) runs in-process on 127.0.0.1. A small
TCP proxy sits between it and the official kubernetes client and can drop every connection,
refuse new ones, or stall (accept, then forward nothing). History compaction (410 Gone in the
middle of an open watch) is injected by a Store that rewrites objects without keeping their events,
as etcd compaction does.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from controller.agent.informers import InformerOptions, Sources
from controller.agent.kube_api import load_api_client
from controller.agent.loop import Agent, AgentConfig
from controller.agent.metrics import Metrics
from controller.agent.veth_match import Discovered
from controller.compiler.desired_state import NodeDesired
from controller.lab.agents import STORE_KEYS, realized_generation
from controller.lab.apiserver import ServerThread, kubeconfig_text, serve_tcp
from controller.lab.store import RESOURCES, Store, object_key
from tests.support.agent_fakes import NullDatapath
from tests.support.waiting import wait_for

# ------------------------------------------------------------------------------------------ faults


class CompactingStore(Store):
    """A lab Store that can change objects and forget the history of the change (compaction)."""

    def silent_write(self, plural: str, obj: dict[str, Any] | None, namespace: str, name: str) -> None:
        with self._cond:
            self._rv += 1
            key = (namespace, name)
            if obj is None:
                self._objects[plural].pop(key, None)
            else:
                stored = copy.deepcopy(obj)
                stored["metadata"]["resourceVersion"] = str(self._rv)
                assert object_key(RESOURCES[plural], stored) == key
                self._objects[plural][key] = stored

    def compact(self) -> None:
        """Drop every retained event: open watches get ERROR 410 at their next poll."""
        with self._cond:
            self._events.clear()
            self._oldest_watchable = self._rv
            self._cond.notify_all()


class ChaosProxy:
    """TCP proxy in front of the API server: drop(), refuse, stall."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refuse = False
        self.running = threading.Event()  # cleared = stalled: nothing is forwarded either way
        self.running.set()
        self.closed = False
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def drop(self) -> None:
        """Cut every open connection abruptly (no HTTP-level end of stream)."""
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def close(self) -> None:
        self.closed = True
        self.running.set()
        self.drop()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refuse:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self.running.wait(0.05):  # stalled: hold the bytes
                    if self.closed:
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------ helpers


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod(namespace: str, name: str, ip: str, app: str = "web", node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def deny_ingress(namespace: str, name: str = "deny") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def restarts(metrics: Metrics, kind: str, reason: str) -> float:
    return float(metrics.watch_restarts_total.labels(kind=kind, reason=reason)._value.get())


# Short server timeouts and read slack so a stall is noticed within ~3 s under test load.
OPTS = InformerOptions(
    watch_timeout_seconds=(2, 2), read_slack=1.0, list_read_timeout=2.0, backoff_base=0.02, backoff_cap=0.2
)


class Api:
    def __init__(self, tmp: Path, window: int = 1000) -> None:
        self.store = CompactingStore(window=window)
        self.server: ServerThread = serve_tcp(self.store)
        self.proxy = ChaosProxy(self.server.server.server_address[:2])  # type: ignore[arg-type,index]
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(kubeconfig_text(self.proxy.url))
        self.metrics = Metrics()
        self.sources = Sources.from_api_client(load_api_client(str(self.kubeconfig)), self.metrics, OPTS)

    def pods(self) -> list[str]:
        return self.sources.informers["Pod"].keys()

    def close(self) -> None:
        self.sources.stop()
        self.proxy.close()
        self.server.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = Api(tmp_path)
    a.store.create("namespaces", ns("x"))
    a.store.create("pods", pod("x", "a", "10.244.1.2"))
    a.store.create("pods", pod("x", "b", "10.244.1.3"))
    yield a
    a.close()


def caught_up(api: Api) -> bool:
    """Whether the informers have seen everything the store holds (as the lab works it out)."""
    seen = {STORE_KEYS[kind]: rv for kind, rv in api.sources.resource_versions().items()}
    return api.store.realized_generation(seen) == api.store.resource_version


def start(api: Api) -> None:
    api.sources.start()
    assert api.sources.wait_synced(15), "informers did not sync"
    wait_for(lambda: caught_up(api), timeout=15, what="initial versions")


# ------------------------------------------------------------------------------------------ informers


def test_a_410_in_the_middle_of_a_watch_relists_and_the_cache_converges(api: Api):
    start(api)
    lists = api.sources.informers["Pod"].lists
    api.store.silent_write("pods", None, "x", "a")
    changed = pod("x", "b", "10.244.1.3", app="db")
    api.store.silent_write("pods", changed, "x", "b")
    api.store.silent_write("pods", pod("x", "c", "10.244.1.4"), "x", "c")
    api.store.compact()
    wait_for(lambda: api.pods() == ["x/b", "x/c"], timeout=15, what="relisted pods")
    assert api.sources.informers["Pod"].get("x/b")["metadata"]["labels"] == {"app": "db"}  # type: ignore[index]
    assert api.sources.informers["Pod"].lists > lists
    assert restarts(api.metrics, "Pod", "expired") >= 1
    wait_for(lambda: caught_up(api), timeout=15, what="versions after relist")


def test_dropped_connections_resume_from_the_last_version_without_a_relist(api: Api):
    start(api)
    lists = {k: inf.lists for k, inf in api.sources.informers.items()}
    for round_ in range(3):
        api.proxy.drop()
        api.store.create("pods", pod("x", f"d{round_}", f"10.244.1.{10 + round_}"))
    wait_for(
        lambda: {"x/d0", "x/d1", "x/d2"} <= set(api.pods()), timeout=15, what="pods written around drops"
    )
    assert {k: inf.lists for k, inf in api.sources.informers.items()} == lists  # watch resumed, no relist


def test_objects_changed_while_disconnected_beyond_the_history_window_converge_after_reconnect(tmp_path):
    api = Api(tmp_path, window=3)
    try:
        api.store.create("namespaces", ns("x"))
        api.store.create("pods", pod("x", "a", "10.244.1.2"))
        start(api)
        api.proxy.refuse = True
        api.proxy.drop()
        api.store.delete("pods", "x", "a")
        for i in range(6):  # more writes than the server keeps: resuming the watch gets 410
            api.store.create("pods", pod("x", f"n{i}", f"10.244.1.{20 + i}"))
        time.sleep(0.5)
        assert api.pods() == ["x/a"]  # disconnected: the last known state is kept, not emptied
        api.proxy.refuse = False
        wait_for(lambda: api.pods() == [f"x/n{i}" for i in range(6)], timeout=15, what="converged pods")
        assert restarts(api.metrics, "Pod", "error") >= 1
        assert restarts(api.metrics, "Pod", "expired") >= 1
    finally:
        api.close()


def test_a_stalled_watch_is_noticed_by_the_read_timeout_and_rewatched(api: Api):
    start(api)
    api.proxy.stall()
    t0 = time.monotonic()
    wait_for(lambda: restarts(api.metrics, "Pod", "timeout") >= 1, timeout=20, what="stall noticed")
    noticed = time.monotonic() - t0
    # server timeout 2 s + read slack 1 s: generous bound for a loaded machine
    assert noticed < 15
    assert api.pods() == ["x/a", "x/b"]  # the cache survives the stall
    api.store.create("pods", pod("x", "late", "10.244.1.9"))
    api.proxy.resume()
    api.proxy.drop()  # connections held during the stall are dead anyway
    wait_for(lambda: "x/late" in api.pods(), timeout=15, what="write made during the stall")


def test_a_stalled_list_is_retried_until_the_server_answers(api: Api):
    api.proxy.stall()
    api.sources.start()
    wait_for(lambda: restarts(api.metrics, "Pod", "timeout") >= 1, timeout=20, what="stalled list noticed")
    assert not api.sources.has_synced
    api.proxy.resume()
    api.proxy.drop()
    assert api.sources.wait_synced(20)
    assert api.pods() == ["x/a", "x/b"]


# ------------------------------------------------------------------------------------------ agent


class Routes:
    def __init__(self, by_ip: dict[str, int]) -> None:
        self.by_ip = by_ip

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        out = Discovered()
        for p, ips in sorted(pod_ips.items()):
            idx = next((self.by_ip[i] for i in ips if i in self.by_ip), None)
            if idx is None:
                out.missing.append(p)
            else:
                out.pod_ifindex[p] = idx
        return out


class RecordingDatapath(NullDatapath):
    """Keeps every desired state handed to sync: what the kernel would have enforced."""

    def __init__(self) -> None:
        self.synced: list[tuple[NodeDesired, dict[str, int]]] = []
        self.lock = threading.Lock()

    def detach(self, ifindex: int) -> None:
        raise AssertionError(f"nothing may be detached during an API outage (ifindex {ifindex})")

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> None:
        with self.lock:
            self.synced.append((desired, dict(pod_ifindex)))

    def last(self) -> NodeDesired:
        with self.lock:
            return self.synced[-1][0]


def test_the_agent_keeps_enforcing_through_410_drops_and_stalls_and_converges_afterwards(api: Api):
    api.store.create("networkpolicies", deny_ingress("x"))
    dp = RecordingDatapath()
    agent = Agent(
        AgentConfig(node="node-1", health_addr=None, rescan_seconds=0.1, resync_seconds=0.5),
        api.sources,
        datapath_factory=lambda node, pin_root: dp,
        discovery=Routes({"10.244.1.2": 21, "10.244.1.3": 22, "10.244.1.4": 23}),
        metrics=api.metrics,
    )
    agent.interface_exists = lambda ifindex: True
    agent.fail_closed = False  # no netlink here: this test is about the watch, not new veths
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: realized_generation(api.store, agent.status()) == api.store.resource_version,
            timeout=15,
            what="initial realization",
        )
        # 1. a 410 mid-watch: a new pod appears only through the relist
        api.store.silent_write("pods", pod("x", "c", "10.244.1.4"), "x", "c")
        api.store.compact()
        wait_for(lambda: "x/c" in dp.last().endpoints, timeout=15, what="pod seen through the relist")
        # 2. dropped connections and a refusing server, with a change made meanwhile
        api.proxy.refuse = True
        api.proxy.drop()
        api.store.delete("networkpolicies", "x", "deny")
        time.sleep(1.2)  # at least two full resyncs run on the cached state
        assert dp.last().endpoints["x/a"].ingress_isolated  # still the last known state
        api.proxy.refuse = False
        wait_for(
            lambda: not dp.last().endpoints["x/a"].ingress_isolated, timeout=15, what="change made while away"
        )
        # 3. a stall, with a policy created during it
        api.proxy.stall()
        api.store.create("networkpolicies", deny_ingress("x", "again"))
        wait_for(lambda: restarts(api.metrics, "NetworkPolicy", "timeout") >= 1, timeout=20, what="stall")
        api.proxy.resume()
        api.proxy.drop()
        wait_for(
            lambda: dp.last().endpoints["x/a"].ingress_isolated,
            timeout=15,
            what="policy created during the stall",
        )
        wait_for(
            lambda: realized_generation(api.store, agent.status()) == api.store.resource_version,
            timeout=15,
            what="caught up",
        )
    finally:
        agent.stop()
        thread.join(5)
        agent.close()
    # never, in any sync during all of this, was the enforcement state emptied
    assert all({"x/a", "x/b"} <= set(d.endpoints) and {"x/a", "x/b"} <= set(m) for d, m in dp.synced)
