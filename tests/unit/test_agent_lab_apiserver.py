"""The agent end to end against the lab's Kubernetes API server (official client, real informers,
real model and policy compiler), with only the kernel parts faked: no root needed."""

from __future__ import annotations

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
from controller.lab.agents import realized_generation
from controller.lab.apiserver import ServerThread, kubeconfig_text, serve_tcp, tcp_listener
from controller.lab.store import Store
from tests.support import calico_objects
from tests.support.agent_fakes import NullDatapath
from tests.support.waiting import wait_for


class Routes:
    def __init__(self) -> None:
        self.by_ip: dict[str, int] = {}

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
    def __init__(self) -> None:
        self.attached: set[int] = set()
        self.last: tuple[NodeDesired, dict[str, int]] | None = None
        self.detaches = 0

    def attach(self, ifindex: int) -> None:
        self.attached.add(ifindex)

    def detach(self, ifindex: int) -> None:
        self.detaches += 1
        self.attached.discard(ifindex)

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> None:
        self.last = (desired, dict(pod_ifindex))

    def close(self) -> None:
        pass


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": name}}}


def pod(namespace: str, name: str, ip: str, node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def deny_all(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


class Env:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(window=5)
        self.sock = tcp_listener("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server: ServerThread = self.serve(self.sock)
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(f"http://127.0.0.1:{self.port}"))
        self.metrics = Metrics()
        opts = InformerOptions(backoff_base=0.02, backoff_cap=0.2)
        self.sources = Sources.from_api_client(load_api_client(str(kubeconfig)), self.metrics, opts)
        self.dp = RecordingDatapath()
        self.routes = Routes()
        self.agent = Agent(
            AgentConfig(node="node-1", health_addr=None, rescan_seconds=0.1),
            self.sources,
            datapath_factory=lambda node, pin_root: self.dp,
            discovery=self.routes,
            metrics=self.metrics,
        )
        self.agent.interface_exists = lambda ifindex: True
        self.thread = threading.Thread(target=self.agent.run, daemon=True)

    def serve(self, sock: socket.socket) -> ServerThread:
        """The lab's API server with BOOKMARKs turned off (`lab up --bookmark-interval 0`):
        realization must not depend on them."""
        server = serve_tcp(self.store, sock=sock)
        server.server.bookmark_interval = 0
        return server

    def realized(self) -> int:
        """The agent's realized_generation as the lab works it out from the agent's /status."""
        return realized_generation(self.store, self.agent.status()) or 0

    def caught_up(self) -> bool:
        return self.realized() >= self.store.resource_version

    def restart_server(self) -> None:
        self.server.stop()
        self.server = self.serve(tcp_listener("127.0.0.1", self.port))

    def close(self) -> None:
        self.agent.stop()
        self.thread.join(5)
        self.agent.close()
        self.server.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.store.create("namespaces", ns("x"))
    e.store.create("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    e.store.create("pods", pod("x", "a", "10.244.1.2"))
    e.store.create("pods", pod("x", "remote", "10.244.2.2", node="node-2"))
    e.routes.by_ip = {"10.244.1.2": 21}
    e.thread.start()
    yield e
    e.close()


def test_the_agent_realizes_the_initial_state_of_the_api_server(env: Env):
    wait_for(lambda: env.agent.status()["ready"], 10)
    wait_for(env.caught_up)
    desired, pod_ifindex = env.dp.last  # type: ignore[misc]
    assert list(desired.endpoints) == ["x/a"] and pod_ifindex == {"x/a": 21}
    assert not desired.endpoints["x/a"].ingress_isolated
    assert env.dp.attached == {21}


def test_every_write_is_realized_and_reported_through_realized_generation_without_bookmarks(env: Env):
    wait_for(env.caught_up, 10)
    env.store.create("networkpolicies", deny_all("x"))
    target = env.store.resource_version
    wait_for(lambda: env.realized() >= target, 10)
    desired, _ = env.dp.last  # type: ignore[misc]
    assert desired.endpoints["x/a"].ingress_isolated
    env.routes.by_ip["10.244.1.3"] = 22
    env.store.create("pods", pod("x", "b", "10.244.1.3"))
    wait_for(lambda: env.realized() >= env.store.resource_version and env.dp.attached == {21, 22}, 10)
    env.store.delete("pods", "x", "a")
    wait_for(lambda: env.realized() >= env.store.resource_version and env.dp.attached == {22}, 10)
    # a kind the agent does not watch: realized at once, nothing to wait for
    env.store.create("endpointslices", {"metadata": {"namespace": "x", "name": "s"}, "addressType": "IPv4"})
    wait_for(lambda: env.realized() == env.store.resource_version, 10)
    bookmarks = env.metrics.watch_events_total.labels(kind="Pod", type="BOOKMARK")._value.get()
    assert bookmarks == 0  # none was sent: the lab's API server had them turned off


def test_an_api_server_outage_keeps_enforcing_then_relists_when_history_is_gone(env: Env):
    wait_for(env.caught_up, 10)
    before = env.realized()
    env.server.stop()
    # more writes than the watch window keeps: resuming the watch will get 410 Gone
    env.store.create("networkpolicies", deny_all("x"))
    for i in range(8):
        env.store.create("namespaces", ns(f"extra-{i}"))
    time.sleep(0.3)
    st = env.agent.status()
    assert st["ready"] and env.realized() == before and st["endpoints"] == 1  # still enforcing
    env.restart_server()
    wait_for(env.caught_up, 10)
    desired, _ = env.dp.last  # type: ignore[misc]
    assert desired.endpoints["x/a"].ingress_isolated
    assert env.metrics.watch_restarts_total.labels(kind="NetworkPolicy", reason="expired")._value.get() >= 1
    assert env.dp.detaches == 0


def test_the_agent_lists_and_watches_cluster_network_policies_and_passes_them_to_the_model(env: Env):
    wait_for(env.caught_up, 10)
    assert env.agent.status()["cluster_policies"] == 0
    policy = {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-y"},
        "spec": {
            "tier": "Baseline",
            "priority": 5,
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}]}],
        },
    }
    env.store.create("clusternetworkpolicies", policy)
    wait_for(env.caught_up, 10)
    status = env.agent.status()
    assert status["cluster_policies"] == 1
    assert status["resource_versions"]["ClusterNetworkPolicy"] == str(env.store.resource_version)
    (parsed,) = env.agent._cluster.cluster_policies.values()
    assert (parsed.name, parsed.tier, parsed.priority) == ("deny-y", "Baseline", 5)
    env.store.delete("clusternetworkpolicies", "", "deny-y")
    wait_for(lambda: env.caught_up() and env.agent.status()["cluster_policies"] == 0, 10)


def test_the_agent_lists_and_watches_calico_s_kinds_and_counts_them_in_its_status(env: Env):
    wait_for(env.caught_up, 10)
    status = env.agent.status()
    assert (status["calico_policies"], status["host_endpoints"]) == (0, 0)
    gnp = env.store.create(calico_objects.GNP_KEY, calico_objects.gnp())
    netpol = env.store.create(calico_objects.NETPOL_KEY, calico_objects.calico_netpol("x"))
    hep = env.store.create(calico_objects.HEP_KEY, calico_objects.hep())
    wait_for(env.caught_up, 10)
    status = env.agent.status()
    assert (status["calico_policies"], status["host_endpoints"]) == (2, 1)
    assert status["ready"] and status["errors"] == []
    # each kind at the version of its own last write (no BOOKMARK moved them further)
    for key, obj in (("GlobalNetworkPolicy", gnp), ("NetworkPolicy", netpol), ("HostEndpoint", hep)):
        kind, rv = f"{key}.projectcalico.org", obj["metadata"]["resourceVersion"]
        assert status["realized"][kind]["resourceVersion"] == status["resource_versions"][kind] == rv
        assert list(status["realized_objects"][kind].values()) == [rv]
    assert sorted(env.agent._cluster.calico_policies) == [
        "GlobalNetworkPolicy deny-nodeports",
        "NetworkPolicy.projectcalico.org x/allow-web",
    ]
    (endpoint,) = env.agent._cluster.host_endpoints.values()
    assert (endpoint.node, endpoint.labels) == ("node-1", {"ibm.role": "worker_public"})
    env.store.delete(calico_objects.NETPOL_KEY, "x", "allow-web")
    env.store.delete(calico_objects.HEP_KEY, "", "node-1-public")
    wait_for(lambda: env.caught_up() and env.agent.status()["calico_policies"] == 1, 10)
    assert env.agent.status()["host_endpoints"] == 0
