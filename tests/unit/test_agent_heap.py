"""controller.agent.heap: passes freeze what is alive; a full resync collects everything once
per period, so cyclic garbage frozen meanwhile is freed (uses the real gc; unfreezes after).
The agent frees what a pass replaced in its idle time."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from controller.agent.heap import FULL_COLLECT_SECONDS, Collector
from tests.support.agent_fakes import FakeDatapath, Routes, StaticApi, make_agent, pod, relist


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def clock() -> Iterator[list[float]]:
    now = [1000.0]
    try:
        yield now
    finally:
        gc.unfreeze()  # the test process must not keep its objects frozen


def test_a_pass_freezes_what_is_alive_and_a_full_resync_collects_once_per_period(clock: list[float]) -> None:
    c = Collector(lambda: clock[0])
    c.after_pass(full=False)
    assert gc.get_freeze_count() > 0
    c.after_pass(full=True)
    assert c.full_collections == 0  # not due yet
    clock[0] += FULL_COLLECT_SECONDS
    c.after_pass(full=False)
    assert c.full_collections == 0  # only a full resync's pass collects
    c.after_pass(full=True)
    assert c.full_collections == 1
    c.after_pass(full=True)
    assert c.full_collections == 1  # the next period starts now


def test_a_cycle_frozen_while_alive_is_freed_by_the_next_full_collection(clock: list[float]) -> None:
    c = Collector(lambda: clock[0])
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    c.after_pass(full=False)  # the cycle is frozen with everything else
    del a, b
    gc.collect()
    assert alive() is not None, "frozen objects are out of the collector's reach"
    clock[0] += FULL_COLLECT_SECONDS
    c.after_pass(full=True)
    assert alive() is None


def test_the_cluster_a_pass_replaced_is_freed_by_the_idle_work_not_during_the_pass() -> None:
    api = StaticApi()
    api.items["Namespace"] = [{"metadata": {"name": "x"}}]
    api.items["Pod"] = [pod("x", "a", "10.244.1.2")]
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 7}))
    assert agent.reconcile(full=True)
    first = weakref.ref(agent._cluster)
    api.items["Pod"] = [pod("x", "a", "10.244.1.2", app="db")]
    relist(agent.sources)  # type: ignore[arg-type]
    assert agent.reconcile()
    assert first() is not None and first() is not agent._cluster  # replaced, still held
    agent.use_idle_time()
    assert first() is None
