"""The agent loop with fake sources, compute, discovery and datapath (no root, no kernel)."""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from controller.agent import cli as agent_cli
from controller.agent import loop as agent_mod
from controller.agent.cluster_events import Event, KindSnapshot, Snapshot
from controller.agent.loop import Agent, AgentConfig
from controller.agent.metrics import Metrics
from controller.agent.realization import NAMESPACED
from controller.agent.veth_match import Discovered
from controller.compiler.desired_state import EndpointDesired, NodeDesired
from controller.core.errors import PolicyError
from controller.core.object_versions import digest_text, kind_digest
from controller.datapath.readback import KernelState
from tests.support.agent_fakes import NullDatapath
from tests.support.waiting import wait_for

KINDS = ("Namespace", "Pod", "NetworkPolicy", "Node", "Service")


class FakeSources:
    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.objects: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.rv = {k: "1" for k in KINDS}
        self.cv = {k: 0 for k in KINDS}
        self.synced = True
        self.started = self.stopped = False
        self.lock = threading.Lock()

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    @property
    def has_synced(self) -> bool:
        return self.synced

    def resource_versions(self) -> dict[str, str]:
        with self.lock:
            return dict(self.rv)

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(
                {
                    k: KindSnapshot(
                        tuple(self.objects[k].values()),
                        self.rv[k],
                        self.cv[k],
                        self.synced,
                        digest=kind_digest(self.objects[k].values(), NAMESPACED[k]),
                    )
                    for k in KINDS
                }
            )

    def put(self, kind: str, key: str, obj: dict[str, Any] | None, rv: int) -> None:
        with self.lock:
            if obj is None:
                self.objects[kind].pop(key, None)
            else:
                obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
                self.objects[kind][key] = obj
            self.cv[kind] += 1
            self.rv[kind] = str(rv)  # no BOOKMARKs: the other kinds keep their versions
        self.events.put(Event(kind, "DELETED" if obj is None else "ADDED", key, obj, str(rv)))  # type: ignore[arg-type]

    def bookmark(self, rv: int) -> None:
        with self.lock:
            for k in KINDS:
                self.rv[k] = str(rv)
        self.events.put(Event("Pod", "BOOKMARK", "", None, str(rv)))


def pod(name: str, ip: str, node: str = "node-1", ns: str = "x") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"nodeName": node}, "status": {"podIP": ip}}


class FakeCluster:
    def __init__(
        self,
        ns: Sequence[Any],
        pods: Sequence[Any],
        pols: Sequence[Any],
        nodes: Sequence[Any],
        cluster_policies: Sequence[Any] = (),
        calico: Any = None,
    ):
        self.pods = list(pods)
        self.policies = list(pols)
        self.errors = [
            PolicyError(f"NetworkPolicy x/{p['metadata']['name']}", "spec.ingress[0]", "bad")
            for p in pols
            if p.get("bad")
        ]


def fake_compute(calls: list[str]) -> Callable[[Any, str], NodeDesired]:
    def compute(cluster: FakeCluster, node: str) -> NodeDesired:
        calls.append(node)
        if any(p.get("explode") for p in cluster.policies):
            raise RuntimeError("compiler bug")
        eps = {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}": EndpointDesired(
                pod=f"{p['metadata']['namespace']}/{p['metadata']['name']}",
                identity=256,
                ingress_isolated=bool(cluster.policies),
                egress_isolated=False,
                ipv4=p["status"]["podIP"],
                ipv6=None,
                entries={},
            )
            for p in cluster.pods
            if p["spec"]["nodeName"] == node
        }
        return NodeDesired(endpoints=eps, ipcache={}, rules={}, identities={})

    return compute


class FakeDiscovery:
    def __init__(self) -> None:
        self.routes: dict[str, int] = {}
        self.fail = False

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        if self.fail:
            raise OSError("netlink down")
        out = Discovered()
        for p, ips in sorted(pod_ips.items()):
            idx = next((self.routes[i] for i in ips if i in self.routes), None)
            if idx is None:
                out.missing.append(p)
            else:
                out.pod_ifindex[p] = idx
        return out


class FakeDatapath(NullDatapath):
    def __init__(self) -> None:
        self.attached: set[int] = set()
        self.calls: list[tuple[str, Any]] = []
        self.syncs: list[tuple[NodeDesired, dict[str, int]]] = []
        self.fail_sync = False
        self.closed = False

    def attach(self, ifindex: int) -> None:
        self.calls.append(("attach", ifindex))
        self.attached.add(ifindex)

    def detach(self, ifindex: int) -> None:
        self.calls.append(("detach", ifindex))
        self.attached.discard(ifindex)

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> dict[str, int]:
        if self.fail_sync:
            raise OSError("map update failed: E2BIG")
        self.syncs.append((desired, dict(pod_ifindex)))
        return {"added": len(desired.endpoints)}

    def close(self) -> None:
        self.closed = True


class Rig:
    def __init__(self, **cfg: Any) -> None:
        self.sources = FakeSources()
        self.dp = FakeDatapath()
        self.disc = FakeDiscovery()
        self.compute_calls: list[str] = []
        self.metrics = Metrics()
        self.factory_failures = 0
        config = AgentConfig(node="node-1", health_addr=None, **cfg)
        self.agent = Agent(
            config,
            self.sources,
            datapath_factory=self._factory,
            build_cluster=FakeCluster,
            compute=fake_compute(self.compute_calls),
            discovery=self.disc,
            metrics=self.metrics,
        )
        self.agent.interface_exists = lambda ifindex: True
        self.thread: threading.Thread | None = None

    def _factory(self, node: str, pin_root: str) -> FakeDatapath:
        if self.factory_failures:
            self.factory_failures -= 1
            raise RuntimeError("bcc: kernel headers not found")
        return self.dp

    def open(self) -> Agent:
        assert self.agent._open_datapath()
        return self.agent

    def start(self) -> None:
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        if self.thread:
            self.thread.join(5)
            assert not self.thread.is_alive()
        self.agent.close()


@pytest.fixture
def rig() -> Rig:
    return Rig()


def realized(agent: Agent, kind: str = "Pod") -> str:
    """The resourceVersion of `kind` in the state the agent says its maps realize."""
    return str(agent.status()["realized"][kind]["resourceVersion"])


def test_a_pass_attaches_local_pod_veths_syncs_and_publishes_what_it_realized(rig: Rig):
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 5)
    rig.sources.put("Pod", "x/b", pod("b", "10.244.2.2", node="node-2"), 6)
    rig.disc.routes = {"10.244.1.2": 11}
    agent = rig.open()
    assert agent.reconcile(full=True)
    assert rig.dp.attached == {11}
    desired, pod_ifindex = rig.dp.syncs[-1]
    assert list(desired.endpoints) == ["x/a"] and pod_ifindex == {"x/a": 11}
    st = agent.status()
    assert st["ready"] and st["endpoints"] == 1 and st["attached"] == 1
    pods = kind_digest(rig.sources.objects["Pod"].values(), True)
    assert st["realized"]["Pod"] == {"resourceVersion": "6", "objects": 2, "digest": digest_text(pods)}
    assert st["node"] == "node-1" and st["errors"] == [] and st["last_sync_seconds"] is not None


def test_what_is_realized_is_each_kind_as_the_caches_held_it_opaque_versions_untouched(rig: Rig):
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 9)
    rig.sources.put("NetworkPolicy", "x/p", {"metadata": {"namespace": "x", "name": "p"}}, 10)
    rig.sources.rv["Node"] = "etcd-7"  # opaque: never parsed, never ordered
    agent = rig.open()
    assert agent.reconcile()
    st = agent.status()
    assert (st["realized"]["Node"]["resourceVersion"], realized(agent), realized(agent, "Service")) == (
        "etcd-7",
        "9",
        "1",
    )
    assert st["realized_objects"]["NetworkPolicy"] == {"x/p": "10"}  # per policy object
    assert "Pod" not in st["realized_objects"]  # pods: only as a whole (a cluster has many)


def test_a_failed_sync_does_not_publish_its_state_and_is_retried(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    assert agent.reconcile()
    rig.dp.fail_sync = True
    rig.sources.put("Pod", "x/b", pod("b", "10.244.1.3"), 4)
    assert not agent.reconcile()
    st = agent.status()
    assert realized(agent) == "3"
    assert st["errors"][0]["field"] == "sync" and "E2BIG" in st["errors"][0]["message"]
    assert rig.metrics.sync_operations_total.labels(kind="incremental", result="error")._value.get() == 1
    rig.dp.fail_sync = False
    assert agent.reconcile()
    assert realized(agent) == "4" and agent.status()["errors"] == []


def test_a_bookmark_alone_advances_the_realized_versions_without_recompute_or_sync(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    agent.reconcile()
    computes, syncs = len(rig.compute_calls), len(rig.dp.syncs)
    rig.sources.bookmark(8)
    agent.reconcile()
    assert {k["resourceVersion"] for k in agent.status()["realized"].values()} == {"8"}
    assert (len(rig.compute_calls), len(rig.dp.syncs)) == (computes, syncs)


def test_a_veth_that_appears_later_is_attached_and_synced(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    agent.reconcile()
    assert rig.dp.attached == set() and agent.status()["pods_without_veth"] == ["x/a"]
    rig.disc.routes = {"10.244.1.2": 12}
    agent.reconcile()
    assert rig.dp.attached == {12} and rig.dp.syncs[-1][1] == {"x/a": 12}


def test_the_veth_of_a_deleted_pod_is_detached(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    rig.disc.routes = {"10.244.1.2": 12}
    agent.reconcile()
    rig.sources.put("Pod", "x/a", None, 4)
    agent.reconcile()
    assert ("detach", 12) in rig.dp.calls and agent.status()["attached"] == 0


def test_a_full_resync_reattaches_every_veth_and_syncs_even_without_changes(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    rig.disc.routes = {"10.244.1.2": 12}
    agent.reconcile()
    syncs = len(rig.dp.syncs)
    agent.reconcile()
    assert len(rig.dp.syncs) == syncs  # nothing changed: no sync
    agent.reconcile(full=True)
    assert rig.dp.calls.count(("attach", 12)) == 2 and len(rig.dp.syncs) == syncs + 1


def test_a_compute_failure_is_reported_and_the_last_state_stays_enforced(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    agent.reconcile()
    rig.sources.put("NetworkPolicy", "x/p", {"metadata": {"name": "p"}, "explode": True}, 4)
    assert not agent.reconcile()
    st = agent.status()
    assert realized(agent) == "3" and "x/p" not in agent.status()["realized_objects"]["NetworkPolicy"]
    assert st["errors"][0]["field"] == "compute"
    assert ("detach", 12) not in rig.dp.calls
    rig.sources.put("NetworkPolicy", "x/p", None, 5)
    assert agent.reconcile() and realized(agent, "NetworkPolicy") == "5"


def test_invalid_objects_are_reported_with_object_and_field_and_counted(rig: Rig):
    agent = rig.open()
    rig.sources.put("NetworkPolicy", "x/p", {"metadata": {"name": "p"}, "bad": True}, 4)
    assert agent.reconcile()  # a bad policy never stops enforcement
    st = agent.status()
    assert st["errors"] == [{"object": "NetworkPolicy x/p", "field": "spec.ingress[0]", "message": "bad"}]
    assert st["policy_errors"] == 1
    assert rig.metrics.policy_errors._value.get() == 1


def test_a_discovery_failure_is_retried_without_losing_attachments(rig: Rig):
    agent = rig.open()
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    rig.disc.routes = {"10.244.1.2": 12}
    agent.reconcile()
    rig.disc.fail = True
    assert not agent.reconcile()
    assert rig.dp.attached == {12} and agent.status()["errors"][0]["field"] == "discover"


def test_the_loop_coalesces_events_and_stops_without_detaching(rig: Rig):
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 2)
    rig.disc.routes = {"10.244.1.2": 12, "10.244.1.3": 13}
    rig.start()
    wait_for(lambda: rig.agent.status()["ready"])
    syncs = len(rig.dp.syncs)
    for i in range(20):  # a burst
        rig.sources.put("Pod", f"x/p{i}", pod(f"p{i}", f"10.244.9.{i}"), 10 + i)
    rig.sources.put("Pod", "x/b", pod("b", "10.244.1.3"), 40)
    wait_for(lambda: realized(rig.agent) == "40")
    assert len(rig.dp.syncs) - syncs <= 3
    assert rig.dp.attached == {12, 13}
    rig.stop()
    assert rig.dp.closed and rig.sources.stopped
    assert not any(c[0] == "detach" for c in rig.dp.calls)


def test_the_loop_rescans_routes_so_a_late_veth_is_attached_within_a_second():
    rig = Rig(rescan_seconds=0.1)
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 2)
    rig.start()
    wait_for(lambda: rig.agent.status()["ready"])
    rig.disc.routes = {"10.244.1.2": 12}
    wait_for(lambda: rig.dp.attached == {12}, timeout=2)
    rig.stop()


def test_the_loop_runs_a_periodic_full_resync():
    rig = Rig(resync_seconds=0.2)
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 2)
    rig.disc.routes = {"10.244.1.2": 12}
    rig.start()
    wait_for(lambda: rig.dp.calls.count(("attach", 12)) >= 3, timeout=3)
    assert rig.metrics.sync_operations_total.labels(kind="full", result="ok")._value.get() >= 3
    rig.stop()


def test_the_loop_waits_for_the_initial_list_before_the_first_sync():
    rig = Rig()
    rig.sources.synced = False
    rig.start()
    time.sleep(0.2)
    assert rig.dp.syncs == [] and not rig.agent.status()["ready"]
    assert rig.agent.live()
    rig.sources.synced = True
    wait_for(lambda: rig.agent.status()["ready"])
    rig.stop()


def test_a_datapath_that_fails_to_load_is_retried_and_reported(monkeypatch):
    rig = Rig()
    rig.factory_failures = 1
    rig.start()
    wait_for(lambda: any(e["field"] == "datapath" for e in rig.agent.status()["errors"]), timeout=2)
    assert not rig.agent.status()["ready"]
    wait_for(lambda: rig.agent.status()["ready"], timeout=5)
    assert rig.agent.status()["errors"] == []
    rig.stop()


def test_a_failing_sync_in_the_loop_is_retried_with_backoff_and_recovers():
    rig = Rig(rescan_seconds=0.05)
    rig.dp.fail_sync = True
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 2)
    rig.start()
    wait_for(lambda: rig.metrics.agent_errors_total.labels(stage="sync")._value.get() >= 2, timeout=3)
    assert not rig.agent.status()["ready"]
    rig.dp.fail_sync = False
    wait_for(lambda: rig.agent.status()["ready"], timeout=5)
    rig.stop()


def test_the_agent_subcommand_registers_its_options_and_a_func():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    agent_cli.register(sub)
    args = parser.parse_args(["agent", "--node", "node-1", "--resync-seconds", "5"])
    assert args.func is agent_cli.run_cli
    assert args.node == "node-1" and args.resync_seconds == 5.0
    assert args.pin_root == "/sys/fs/bpf/vethguard" and args.health_addr == "127.0.0.1:9890"
    assert args.kubeconfig is None


def test_the_agent_command_without_a_node_exits_with_a_clear_message(capsys, monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    parser = argparse.ArgumentParser()
    agent_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent"])
    assert agent_cli.run_cli(args) == 2
    assert "--node" in capsys.readouterr().err


def test_after_a_restart_veths_of_pods_gone_meanwhile_are_detached_and_live_ones_kept(rig: Rig):
    from controller.datapath.codecs import Endpoint

    # what the pinned map says a previous agent attached
    pinned = KernelState(0, {i: Endpoint(i, i, 256, 0, None, None) for i in (12, 30)}, {}, {}, [])
    rig.dp.dump = lambda: pinned  # type: ignore[method-assign]
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    rig.disc.routes = {"10.244.1.2": 12}
    agent = rig.open()
    assert agent.reconcile(full=True)
    assert ("detach", 30) in rig.dp.calls and ("detach", 12) not in rig.dp.calls
    assert agent.status()["attached"] == 1


def test_the_synced_log_line_summarizes_a_sync_result_without_its_operations():
    from dataclasses import dataclass, field

    @dataclass
    class Result:
        adds: int
        deletes: int
        ops: tuple[Any, ...] = field(default=())

    assert agent_mod._summarize(Result(3, 1, ops=(1, 2, 3))) == {"adds": 3, "deletes": 1}
    assert agent_mod._summarize(None) is None


def test_logs_are_json_lines_when_stdout_is_not_a_terminal():
    import io
    import json

    import structlog

    from controller.core.log import configure, get_logger

    buf = io.StringIO()
    try:
        configure("info", stream=buf)
        get_logger("t").info("synced", endpoints=3, duration_ms=1.5)
        get_logger("t").debug("hidden")
        line = json.loads(buf.getvalue().strip())
        assert line["event"] == "synced" and line["endpoints"] == 3 and line["level"] == "info"
        assert "timestamp" in line and buf.getvalue().count("\n") == 1
    finally:
        structlog.reset_defaults()


class UplinkDatapath(FakeDatapath):
    def find_uplinks(self, names: Sequence[str]) -> dict[int, str]:
        from controller.datapath import uplink

        return uplink.find_uplinks(names)

    def attach_uplink(self, ifindex: int) -> None:
        self.calls.append(("attach_uplink", ifindex))

    def detach_uplink(self, ifindex: int) -> None:
        self.calls.append(("detach_uplink", ifindex))


def test_services_become_frontends_of_the_synced_state_and_bad_fields_are_reported(rig: Rig):
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 3)
    node = {
        "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.1"}]},
    }
    rig.sources.put("Node", "node-1", node, 4)
    svc = {
        "metadata": {"namespace": "x", "name": "api"},
        "spec": {"clusterIP": "10.245.0.9", "ports": [{"port": 80, "nodePort": 30080}, {"port": "eighty"}]},
    }
    rig.sources.put("Service", "x/api", svc, 5)
    agent = rig.open()
    assert agent.reconcile(full=True)
    desired, _ = rig.dp.syncs[-1]
    assert {(f.address, f.port) for f in desired.frontends} == {("10.245.0.9", 80), ("10.1.0.1", 30080)}
    assert [(e["object"], e["field"]) for e in agent.status()["errors"]] == [
        ("Service x/api", "spec.ports[1].port")
    ]
    rig.sources.put("Service", "x/api", None, 6)  # deleted: its frontends go with the next sync
    assert agent.reconcile()
    assert rig.dp.syncs[-1][0].frontends == frozenset()


def test_the_uplink_program_is_attached_at_the_first_pass_and_follows_the_routes_on_full_resyncs(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
):
    from controller.datapath import uplink

    rig.dp = UplinkDatapath()
    found = {7: "eth0"}
    monkeypatch.setattr(uplink, "find_uplinks", lambda names: dict(found))
    agent = rig.open()
    assert agent.reconcile()
    assert ("attach_uplink", 7) in rig.dp.calls
    found.clear()
    found[9] = "vxlan0"
    rig.dp.calls.clear()
    assert agent.reconcile()  # not a full pass: routes are re-read on full resyncs only
    assert not [c for c in rig.dp.calls if "uplink" in c[0]]
    assert agent.reconcile(full=True)
    assert ("attach_uplink", 9) in rig.dp.calls and ("detach_uplink", 7) in rig.dp.calls


def test_frontends_are_computed_again_only_when_services_or_nodes_change(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
):
    import controller.agent.loop as agent_mod

    calls: list[int] = []
    real = agent_mod.frontends_of

    def counting(services: Any, nodes: Any, node: str) -> Any:
        calls.append(len(list(services)))
        return real(services, nodes, node)

    monkeypatch.setattr(agent_mod, "frontends_of", counting)
    svc = {
        "metadata": {"namespace": "x", "name": "api"},
        "spec": {"clusterIP": "10.245.0.9", "ports": [{"port": 80}]},
    }
    rig.sources.put("Service", "x/api", svc, 3)
    agent = rig.open()
    assert agent.reconcile(full=True) and calls == [1]
    rig.sources.put("Pod", "x/a", pod("a", "10.244.1.2"), 4)  # a pod event: the same Services
    assert agent.reconcile() and calls == [1]
    assert {f.address for f in rig.dp.syncs[-1][0].frontends} == {"10.245.0.9"}
    changed = {**svc, "spec": {"clusterIP": "10.245.0.10", "ports": [{"port": 80}]}}
    rig.sources.put("Service", "x/api", changed, 5)
    assert agent.reconcile() and calls == [1, 1]
    assert {f.address for f in rig.dp.syncs[-1][0].frontends} == {"10.245.0.10"}
