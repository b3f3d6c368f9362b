"""Datapath.sync_incremental against the real maps over a run of events that change a node's
desired state the way the compiler does (unchanged parts are the same objects): after every
incremental sync, a sync that reads the kernel maps finds nothing to change."""

from __future__ import annotations

import random
import weakref

import pytest

from tests.support.kernel import Harness
from tests.support.sync_world import World

pytestmark = [pytest.mark.root, pytest.mark.bcc]


def test_after_every_incremental_sync_a_sync_reading_the_maps_finds_nothing_to_change(h: Harness) -> None:
    world = World(random.Random(7))
    first = h.dp.sync(world.desired(), dict(world.pod_ifindex))
    assert first.changed
    changed = 0
    for step in range(80):
        world.step()
        desired, pod_ifindex = world.desired(), dict(world.pod_ifindex)
        result = h.dp.sync_incremental(desired, pod_ifindex)
        changed += result.changed
        check = h.dp.sync(desired, pod_ifindex)
        assert not check.changed, f"step {step}: the incremental sync left {check.ops}"
        assert check.revision == result.revision
    assert changed > 40  # the run did change the maps


def test_an_incremental_sync_after_a_full_one_diffs_against_what_the_full_one_wrote(h: Harness) -> None:
    world = World(random.Random(8))
    for step in range(30):
        desired, pod_ifindex = world.desired(), dict(world.pod_ifindex)
        h.dp.sync(desired, pod_ifindex)  # the agent's periodic full resync
        world.step()
        desired, pod_ifindex = world.desired(), dict(world.pod_ifindex)
        h.dp.sync_incremental(desired, pod_ifindex)
        assert not h.dp.sync(desired, pod_ifindex).changed, f"step {step}"


def test_what_a_sync_replaced_is_freed_by_the_idle_work_not_during_the_next_sync(h: Harness) -> None:
    world = World(random.Random(9))
    h.dp.sync(world.desired(), dict(world.pod_ifindex))
    first = weakref.ref(h.dp._written)  # what the maps hold after it (with its encoding)
    world.step()
    h.dp.sync_incremental(world.desired(), dict(world.pod_ifindex))
    assert first() is not None and first() is not h.dp._written  # replaced, still held
    h.dp.prepare_spares()  # the agent's idle work
    assert first() is None
