"""Fixtures for kernel tests: one compiled Datapath per session under a unique test pin dir,
maps emptied before every test (tests/support/kernel.py: the harness and its addresses). Every
kernel test is marked `root` and `bcc` (tests/support/root.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from controller.datapath import abi, codecs
from controller.datapath.codecs import Event
from controller.datapath.node import Datapath
from controller.datapath.tcx import tcx_supported
from tests.support.kernel import (
    ID_A,
    ID_B,
    ID_C,
    NODE_IP,
    NODE_IP6,
    POD_A,
    POD_A6,
    POD_B,
    POD_B6,
    POD_C,
    POD_C6,
    Harness,
)


@pytest.fixture(scope="session")
def dp() -> Iterator[Datapath]:
    node = f"test-dp-{uuid.uuid4().hex[:10]}"
    try:
        d = Datapath(node=node, pin_root="/sys/fs/bpf/vethguard")
    except BaseException:
        Datapath.remove_pins(node)
        raise
    try:
        yield d
    finally:
        d.close()
        Datapath.remove_pins(node)


@pytest.fixture(scope="session")
def dp_tcx(dp: Datapath) -> Iterator[Datapath]:
    """The session's node programs (its pinned build: no compile) attached with tcx links
    (controller/datapath/tcx.py) instead of the default clsact filters."""
    if not tcx_supported():
        pytest.skip("this kernel has no tcx hooks")
    d = Datapath(node=dp.node, pin_root=dp.pin_root, attach_mode="tcx")
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def h(dp: Datapath) -> Harness:
    for name, m in dp.maps.items():
        if name in ("vg_evrate", "vg_evlost"):  # arrays: nothing to delete
            continue
        if name == "vg_tail":  # the build's tail-call targets (a test may have emptied a slot)
            dp.place_tail_programs()
            continue
        if name == "vg_clock":  # no reading: a test may have planted one (test_conntrack.py)
            Harness(dp).set_clock_readings(abi.ClockCache())
        elif name == "vg_config":
            m.update(codecs.u32_key(0), bytes(abi.Config()))
        else:
            m.clear()
    dp.forget_written()
    harness = Harness(dp)
    # The node itself and the peers every test uses.
    harness.ipcache(f"{NODE_IP}/32", 1)
    harness.ipcache(f"{NODE_IP6}/128", 1)
    harness.ipcache(f"{POD_A}/32", ID_A)
    harness.ipcache(f"{POD_A6}/128", ID_A)
    harness.ipcache(f"{POD_B}/32", ID_B)
    harness.ipcache(f"{POD_B6}/128", ID_B)
    harness.ipcache(f"{POD_C}/32", ID_C)
    harness.ipcache(f"{POD_C6}/128", ID_C)
    harness.ipcache("0.0.0.0/0", 2)
    harness.ipcache("::/0", 2)
    return harness


@pytest.fixture
def events(h: Harness) -> Iterator[list[Event]]:
    """The flow events the programs emit from now on (poll with h.dp.poll_events)."""
    got: list[Event] = []
    h.dp.open_events(got.append)
    h.dp.poll_events(0)
    got.clear()
    yield got


@pytest.fixture
def node() -> Iterator[str]:
    """A node name of its own, whose pins are removed at the end."""
    name = f"test-node-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        Datapath.remove_pins(name)


@pytest.fixture
def opened() -> Iterator[Callable[..., Datapath]]:
    """Open Datapaths (closed at the end): each one is what a (re)started agent loads."""
    dps: list[Datapath] = []

    def open_(node: str, extra: tuple[str, ...] = ()) -> Datapath:
        dps.append(Datapath(node=node, extra_cflags=extra))
        return dps[-1]

    try:
        yield open_
    finally:
        for d in dps:
            d.close()
