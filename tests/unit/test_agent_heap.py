"""controller.agent.heap: passes freeze what is alive; a full resync collects everything once
per period, so cyclic garbage frozen meanwhile is freed (uses the real gc; unfreezes after)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from controller.agent.heap import FULL_COLLECT_SECONDS, Collector


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
