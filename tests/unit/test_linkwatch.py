"""LinkWatch in a network namespace of its own: new veths are seen (and timed) from netlink events,
pre-existing links are not "new", a removed veth is forgotten, and after lost messages the links
are re-read. Decoding of the raw messages needs no root."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from controller.agent.linkwatch import IFLA_INFO_KIND, IFLA_LINKINFO, NDA_DST, NDA_LLADDR, LinkWatch
from controller.datapath import rtnl
from controller.lab import netns
from tests.support.waiting import wait_for


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


@pytest.mark.root
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


@pytest.mark.root
def test_after_lost_messages_veths_created_meanwhile_are_new_and_removed_ones_forgotten(ns: str):
    lw = LinkWatch(lambda: None)  # no thread: drive the re-read by hand, as ENOBUFS does
    netns.run_in_netns(ns, lambda: lw._refresh(blind=False))
    assert lw.new_veths() == {}  # pre0/pre1 and lo are the baseline
    netns.ip(ns, "link", "add", "pod0", "type", "veth", "peer", "name", "pod1")
    netns.ip(ns, "link", "add", "br0", "type", "bridge")
    netns.run_in_netns(ns, lambda: lw._refresh(blind=True))
    assert set(lw.new_veths()) == {ifindex(ns, "pod0"), ifindex(ns, "pod1")}
    netns.ip(ns, "link", "del", "pod0")
    netns.ip(ns, "link", "del", "pre0")
    netns.run_in_netns(ns, lambda: lw._refresh(blind=True))
    assert lw.new_veths() == {}


def _link(event: int, index: int, kind: str | None) -> rtnl.Message:
    info = rtnl.attr(IFLA_LINKINFO, rtnl.attr(IFLA_INFO_KIND, rtnl.asciiz(kind))) if kind else b""
    return rtnl.Message(event, rtnl.IFINFOMSG.pack(0, 1, index, 0, 0), rtnl.attr(3, b"x\0") + info)


def _neigh(event: int, index: int, ip: str) -> rtnl.Message:
    return rtnl.Message(
        event, rtnl.NDMSG.pack(socket.AF_INET, index, 2, 0, 1), rtnl.attr(NDA_DST, socket.inet_aton(ip))
    )


def _fdb(index: int, mac: str) -> rtnl.Message:
    return rtnl.Message(
        rtnl.RTM_NEWNEIGH,
        rtnl.NDMSG.pack(socket.AF_BRIDGE, index, 2, 0, 0),
        rtnl.attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", ""))),
    )


def test_raw_messages_mark_new_veths_forget_deleted_links_and_wake_only_for_new_neighbours_or_macs():
    lw = LinkWatch(lambda: None)
    lw._baseline = {2}
    assert lw._handle(_link(rtnl.RTM_NEWLINK, 7, "veth"), 1.0)
    assert lw._handle(_link(rtnl.RTM_NEWLINK, 7, "veth"), 2.0)  # up, addresses...: still the first time
    assert lw._handle(_link(rtnl.RTM_NEWLINK, 2, "veth"), 2.0)  # a baseline veth changed
    assert lw._handle(_link(rtnl.RTM_NEWLINK, 8, "bridge"), 2.0)
    assert lw.new_veths() == {7: 1.0}
    assert lw._handle(_neigh(rtnl.RTM_NEWNEIGH, 7, "10.0.0.2"), 3.0)
    assert not lw._handle(_neigh(rtnl.RTM_NEWNEIGH, 7, "10.0.0.2"), 3.0)  # REACHABLE -> STALE
    route = rtnl.Message(rtnl.RTM_NEWROUTE, rtnl.RTMSG.pack(2, 32, 0, 0, 254, 3, 0, 1, 0), b"")
    assert lw._handle(route, 3.0)
    assert not lw._handle(rtnl.Message(rtnl.RTM_NEWQDISC, b"", b""), 3.0)
    # the bridge learns MACs on a port: each new MAC wakes, the port's own known one does not
    assert lw._handle(_fdb(7, "02:00:00:00:00:07"), 3.0)
    assert lw._handle(_fdb(7, "0a:58:0a:f4:01:02"), 3.0)
    assert not lw._handle(_fdb(7, "0a:58:0a:f4:01:02"), 3.0)
    assert lw._handle(_link(rtnl.RTM_DELLINK, 7, "veth"), 4.0)
    assert lw.new_veths() == {} and lw.appeared_at(7) is None
    assert lw._handle(_neigh(rtnl.RTM_NEWNEIGH, 7, "10.0.0.2"), 5.0)  # index reused: new again
