"""Netlink link/route/neighbour events of the agent's network namespace, as wake-ups.

The agent's route rescan runs once a second; a pod veth must be attached well within 100 ms of
appearing, so this thread subscribes to rtnetlink multicast groups (links, IPv4/IPv6 routes,
neighbours) and calls `wake()` on every message: the agent loop then runs a pass at once
(coalesced with other events). The rescan stays as a safety net for lost netlink messages
(ENOBUFS on a burst: the links are then re-read, and veths created meanwhile count as new) and
for anything this module does not understand. Messages are decoded by controller.datapath.rtnl (a few
attributes straight from the bytes): pyroute2 spent ~0.5 ms of CPU per message, ~90 ms for a burst
of 20 pods, holding the GIL the agent's attach needs.

It also remembers WHEN each veth appeared (monotonic time of its first RTM_NEWLINK), which the
agent uses for two things:
  - fail closed: a veth that appeared after the agent started and that no known pod claims yet
    gets the programs with a PENDING endpoint (`new_veths()`);
  - latency: veth appeared -> programs attached, and -> pod's policy written (metrics + log).
Veths present when the watch started are the baseline: they are never "new" (an uplink that
happens to be a veth, as in kind, is not put in PENDING).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable

from controller.core.log import get_logger
from controller.datapath import rtnl

log = get_logger("vethguard.linkwatch")


GROUPS = rtnl.RTMGRP_LINK | rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV6_ROUTE | rtnl.RTMGRP_NEIGH
READ_TIMEOUT = 0.2  # how often the thread looks at stop()
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
NDA_DST = 1
NDA_LLADDR = 2


def _index_kind(msg: rtnl.Message) -> tuple[int, str | None]:
    """ifindex and IFLA_INFO_KIND ("veth", "bridge", ...; None when absent) of a link message."""
    _family, _type, index, _flags, _change = rtnl.IFINFOMSG.unpack(msg.header)
    info = msg.attributes().get(IFLA_LINKINFO)
    kind = rtnl.as_str(rtnl.parse_attrs(info).get(IFLA_INFO_KIND)) if info is not None else None
    return index, kind


class LinkWatch:
    """A thread reading rtnetlink events; thread-safe accessors for what it saw."""

    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._wake = wake
        self._clock = clock
        self._lock = threading.Lock()
        self._baseline: set[int] = set()
        self._appeared: dict[int, float] = {}  # new veths: ifindex -> first RTM_NEWLINK time
        self._neighbours: set[tuple[int, str]] = set()  # (interface, address or FDB MAC) seen
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0
        self.overflows = 0  # reads that found messages lost (ENOBUFS)
        self._have_baseline = False
        self.error: str | None = None

    # ---- public

    def start(self) -> LinkWatch:
        self._thread = threading.Thread(target=self._run, name="linkwatch", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        """Ends the thread within one read timeout (it closes its own socket)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def new_veths(self) -> dict[int, float]:
        """Veths that appeared after the watch started and still exist: ifindex -> appeared at."""
        with self._lock:
            return dict(self._appeared)

    def appeared_at(self, ifindex: int) -> float | None:
        with self._lock:
            return self._appeared.get(ifindex)

    # ---- the thread

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            nl = None
            try:
                # Subscribe before the baseline dump: a veth created in between is then seen
                # twice (dump + event), never zero times.
                nl = rtnl.Rtnl(groups=GROUPS)
                self._refresh(blind=self._have_baseline)
                self._ready.set()
                backoff = 0.1
                self._read(nl)
            except Exception as exc:  # a netlink failure must not end the watch: the rescan covers us
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("netlink watch failed, reopening", error=self.error, retry_in=backoff)
                self._ready.set()
                self._wake()  # something may have changed while we were blind
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if nl is not None:
                    with contextlib.suppress(Exception):
                        nl.close()

    def _refresh(self, blind: bool) -> None:
        """Read the links. The first time, they are the baseline. After a time without events
        (reopened socket, or messages lost to ENOBUFS in a burst) veths that went away are
        forgotten, and veths created meanwhile count as new from now (fail closed)."""
        with rtnl.Rtnl() as dump:
            links = [(idx, kind) for idx, kind in (_index_kind(m) for m in dump.links())]
        present = {idx for idx, _ in links}
        now = self._clock()
        with self._lock:
            if not blind:
                self._baseline = present
                self._have_baseline = True
                return
            self._appeared = {i: t for i, t in self._appeared.items() if i in present}
            self._baseline &= present
            for idx, kind in links:
                if kind == "veth" and idx not in self._baseline and idx not in self._appeared:
                    self._appeared[idx] = now

    def _read(self, nl: rtnl.Rtnl) -> None:
        while not self._stop.is_set():
            try:
                msgs = nl.events(READ_TIMEOUT)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overflows += 1
                log.warning("netlink messages lost (socket buffer full), re-reading the links")
                self._refresh(True)
                self._wake()
                continue
            if not msgs:
                continue
            now = self._clock()
            changed = False
            for msg in msgs:
                changed = self._handle(msg, now) or changed
            if changed:
                self._wake()

    def _handle(self, msg: rtnl.Message, now: float) -> bool:
        self.events += 1
        if msg.type == rtnl.RTM_NEWLINK:
            ifindex, kind = _index_kind(msg)
            if kind == "veth":
                with self._lock:
                    if ifindex not in self._baseline and ifindex not in self._appeared:
                        self._appeared[ifindex] = now
            return True
        if msg.type == rtnl.RTM_DELLINK:
            ifindex, _kind = _index_kind(msg)
            with self._lock:
                self._appeared.pop(ifindex, None)
                self._baseline.discard(ifindex)
                self._neighbours = {
                    k for k in self._neighbours if k[0] != ifindex
                }  # an index may be reused by a new veth
            return True
        if msg.type in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
            # Neighbour entries change state (REACHABLE/STALE/...) all the time under traffic; only
            # a new or removed (interface, address) pair can map a pod to an interface. A bridge
            # FDB entry (AF_BRIDGE) has no address: its MAC is the key (a port learning the pod's
            # MAC must wake the agent even though the port's own MAC was known already).
            family, ifindex, _state, _flags, _type = rtnl.NDMSG.unpack(msg.header)
            attrs = msg.attributes()
            if family == socket.AF_BRIDGE:
                key = (ifindex, rtnl.as_mac(attrs.get(NDA_LLADDR)) or "")
            else:
                key = (ifindex, rtnl.as_ip(attrs.get(NDA_DST)) or "")
            with self._lock:
                if msg.type == rtnl.RTM_DELNEIGH:
                    self._neighbours.discard(key)
                    return True
                if key in self._neighbours:
                    return False
                self._neighbours.add(key)
            return True
        return msg.type in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE)
