"""LinkWatch in a network namespace of its own: new veths are seen (and timed) from netlink events,
pre-existing links are not "new", and a removed veth is forgotten."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controller.lab import netns
from controller.linkwatch import LinkWatch

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root"),
]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vgt-lw-{os.getpid()}"
    netns.add(name)
    try:
        netns.ip(name, "link", "add", "pre0", "type", "veth", "peer", "name", "pre1")
        yield name
    finally:
        netns.delete(name)


def ifindex(ns: str, dev: str) -> int:
    return int(netns.run_in_netns(ns, lambda: __import__("socket").if_nametoindex(dev)))


def test_a_new_veth_wakes_the_watcher_at_once_and_is_timed_while_old_links_are_not_new(ns: str):
    wakes: list[float] = []
    woke = threading.Event()

    def wake() -> None:
        wakes.append(time.monotonic())
        woke.set()

    lw: LinkWatch = netns.run_in_netns(ns, lambda: LinkWatch(wake).start())  # its thread inherits the netns
    try:
        assert lw.new_veths() == {}  # pre0/pre1 and lo are the baseline
        woke.clear()
        t0 = time.monotonic()
        netns.ip(ns, "link", "add", "pod0", "type", "veth", "peer", "name", "pod1")
        wait_for(lambda: len(lw.new_veths()) == 2)
        index = ifindex(ns, "pod0")
        appeared = lw.appeared_at(index)
        assert appeared is not None and appeared >= t0 - 0.001
        assert woke.wait(2)
        print(f"\nveth created -> netlink wake-up: {(wakes[0] - t0) * 1000:.1f} ms (includes `ip` exec)")
        assert ifindex(ns, "pre0") not in lw.new_veths()
        # a route via the veth also wakes it (routed CNIs add the pod route after the link)
        woke.clear()
        netns.ip(ns, "link", "set", "pod0", "up")
        netns.ip(ns, "route", "add", "10.99.0.2/32", "dev", "pod0")
        assert woke.wait(2)
        netns.ip(ns, "link", "del", "pod0")
        wait_for(lambda: lw.new_veths() == {})
    finally:
        lw.stop()
