"""New veths are attached as soon as netlink reports them, before the pass computes or discovers
anything, and the pass that writes their endpoint runs without waiting for the coalescing window.
Real model and compiler, fake kernel (the fakes of tests/support/agent_fakes.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from controller.agent.cluster_events import Event, KubeObject
from controller.agent.veth_match import Discovered, unclaimed_key
from tests.support.agent_fakes import (
    FakeDatapath,
    FakeLinkWatch,
    Routes,
    StaticApi,
    make_agent,
    metric,
    pod,
    relist,
)
from tests.support.waiting import wait_for


class CountingDatapath(FakeDatapath):
    def __init__(self, gone: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.attach_calls: list[int] = []
        self.gone = gone

    def attach(self, ifindex: int) -> None:
        self.attach_calls.append(ifindex)
        if ifindex in self.gone:
            raise OSError(f"no interface with ifindex {ifindex}")
        super().attach(ifindex)


class WatchingRoutes(Routes):
    """Records what the datapath had attached each time discovery ran."""

    def __init__(self, dp: FakeDatapath, by_ip: dict[str, int] | None = None) -> None:
        super().__init__(by_ip)
        self.dp = dp
        self.seen_attached: list[set[int]] = []

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        self.seen_attached.append(set(self.dp.attached))
        return super().discover(pod_ips)


def test_a_burst_of_new_veths_is_attached_before_discovery_and_each_veth_only_once():
    api = StaticApi()
    api.items["Pod"] = [pod("x", "a", "10.244.1.2")]
    dp = CountingDatapath()
    routes = WatchingRoutes(dp, {"10.244.1.2": 2})
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, routes, lw)
    assert agent.reconcile()
    for ifindex in range(10, 30):  # 20 pods' veths, their pods not in the API yet
        lw.appeared[ifindex] = 0.0
    assert agent.attach_new_veths()
    assert dp.attached == {2, *range(10, 30)}
    assert agent.reconcile()
    assert routes.seen_attached[-1] >= set(range(10, 30))
    assert sorted(dp.attach_calls) == [2, *range(10, 30)]  # the pass did not attach them again
    _desired, pod_ifindex = dp.last
    assert {unclaimed_key(i) for i in range(10, 30)} <= set(pod_ifindex)  # PENDING until claimed
    assert metric(agent, "vethguard_endpoint_attach_latency_seconds_count") == 20
    assert not agent.attach_new_veths()  # nothing new: the loop keeps coalescing


def test_without_fail_closed_new_veths_are_not_attached_before_their_pod_is_known():
    api = StaticApi()
    dp = CountingDatapath()
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, Routes(), lw, fail_closed=False)
    lw.appeared[9] = 0.0
    assert not agent.attach_new_veths()
    assert dp.attach_calls == []


def test_a_veth_that_vanished_before_the_early_attach_is_tried_once_and_left_to_the_pass():
    api = StaticApi()
    dp = CountingDatapath(gone=frozenset({7}))
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, Routes(), lw)
    lw.appeared[7] = 0.0
    assert agent.attach_new_veths()
    assert not agent.attach_new_veths()
    assert dp.attach_calls == [7] and 7 not in dp.attached
    agent.interface_exists = lambda ifindex: ifindex != 7
    assert agent.reconcile()  # the pass sees it gone: no placeholder, no error, ready
    assert unclaimed_key(7) not in dp.last[1] and agent.is_ready()


def test_the_pass_after_a_new_veth_does_not_wait_for_the_coalescing_window():
    api = StaticApi()
    dp = CountingDatapath()
    lw = FakeLinkWatch()
    # an hour of coalescing and no rescan: only the new-veth path can sync its endpoint
    agent = make_agent(api, dp, Routes(), lw, coalesce_seconds=3600, rescan_seconds=3600, resync_seconds=3600)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if dp.synced:
                break
            threading.Event().wait(0.01)
        assert dp.synced
        lw.appeared[5] = 0.0
        agent.wake()
        for _ in range(500):
            if unclaimed_key(5) in dp.last[1]:
                break
            threading.Event().wait(0.01)
        assert unclaimed_key(5) in dp.last[1] and 5 in dp.attached
    finally:
        agent.stop()
        thread.join(5)
        agent.close()


def test_the_pod_event_that_claims_a_pending_veth_is_realized_without_the_coalescing_window():
    api = StaticApi()
    api.items["Pod"] = [pod("x", "a", "10.244.1.2")]
    dp = CountingDatapath()
    routes = Routes({"10.244.1.2": 2})
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, routes, lw, coalesce_seconds=3600, rescan_seconds=3600, resync_seconds=3600)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(dp.synced))
        lw.appeared[9] = 0.0
        agent.wake()
        wait_for(lambda: unclaimed_key(9) in dp.last[1])
        # the pod of veth 9 reaches the API (after its route, as a CNI does it)
        routes.by_ip["10.244.1.9"] = 9
        api.items["Pod"].append(pod("x", "b", "10.244.1.9"))
        api.rv = 3
        relist(agent.sources)  # type: ignore[arg-type]
        wait_for(lambda: dp.last[1].get("x/b") == 9)
        assert dp.last[1] == {"x/a": 2, "x/b": 9}
        # The pass records the latency after its sync returned: wait for it, do not race it.
        wait_for(lambda: metric(agent, "vethguard_endpoint_enforce_latency_seconds_count") >= 1)
        assert metric(agent, "vethguard_endpoint_enforce_latency_seconds_count") == 1
    finally:
        agent.stop()
        thread.join(5)
        agent.close()


def test_only_a_pod_event_of_this_node_while_a_veth_is_pending_skips_the_coalescing_window():
    api = StaticApi()
    dp = CountingDatapath()
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, Routes(), lw)
    here, elsewhere = pod("x", "b", "10.244.1.9"), pod("x", "c", "10.244.2.9", node="node-2")
    agent._note_claim(_event("Pod", "ADDED", "x/b", here, "2"))
    assert not agent._claim_waiting  # nothing pending
    lw.appeared[9] = 0.0
    assert agent.reconcile()
    for ev in (
        _event("Pod", "ADDED", "x/c", elsewhere, "3"),
        _event("Pod", "DELETED", "x/b", here, "3"),
        _event("NetworkPolicy", "ADDED", "x/p", {"spec": {"nodeName": "node-1"}}, "3"),
    ):
        agent._note_claim(ev)
        assert not agent._claim_waiting, ev
    agent._note_claim(_event("Pod", "MODIFIED", "x/b", here, "4"))
    assert agent._claim_waiting


def _event(kind: str, type_: str, key: str, obj: dict[str, Any], rv: str) -> Event:
    return Event(kind, type_, key, cast(KubeObject, obj), rv)  # type: ignore[arg-type]


class BlockingRoutes(Routes):
    """Discovery that can be held in the middle of a pass (as a bridge probe waits up to 0.3 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.inside = threading.Event()
        self.release = threading.Event()

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        if self.hold.is_set():
            self.inside.set()
            self.release.wait(10)
        return super().discover(pod_ips)


def test_a_veth_appearing_during_a_slow_pass_is_attached_on_the_netlink_thread_without_waiting_for_it():
    api = StaticApi()
    dp = CountingDatapath()
    routes = BlockingRoutes()
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, routes, lw, rescan_seconds=3600, resync_seconds=3600)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(dp.synced))
        routes.hold.set()
        lw.appeared[5] = 0.0
        agent.wake()  # attaches 5, then the pass it starts is held in discovery
        assert 5 in dp.attached
        wait_for(routes.inside.is_set)
        lw.appeared[6] = 0.0
        agent.wake()  # the netlink thread, while the pass is held
        assert 6 in dp.attached and not routes.release.is_set()
        routes.hold.clear()
        routes.release.set()
        wait_for(lambda: {unclaimed_key(5), unclaimed_key(6)} <= set(dp.last[1]))
        assert dp.attach_calls.count(5) == 1 and dp.attach_calls.count(6) == 1
        assert agent.status()["attached"] == 2
    finally:
        routes.release.set()
        agent.stop()
        thread.join(5)
        agent.close()


class RacingLinkWatch(FakeLinkWatch):
    """Runs `then` right after the pass listed the new veths (the netlink thread acting mid-pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.then: Callable[[], None] | None = None

    def new_veths(self) -> dict[int, float]:
        listed = super().new_veths()
        then, self.then = self.then, None
        if then is not None:
            then()
        return listed


def test_a_veth_attached_on_the_netlink_thread_after_the_pass_listed_the_veths_is_not_detached_by_it():
    api = StaticApi()
    dp = CountingDatapath()
    lw = RacingLinkWatch()
    agent = make_agent(api, dp, Routes(), lw)
    assert agent.reconcile()

    def netlink_thread() -> None:
        lw.appeared[7] = 0.0
        assert agent.attach_new_veths()

    lw.then = netlink_thread
    assert agent.reconcile()
    assert 7 in dp.attached and unclaimed_key(7) not in dp.last[1]  # listed by the next pass
    assert agent.reconcile()
    assert unclaimed_key(7) in dp.last[1] and dp.attach_calls == [7]
