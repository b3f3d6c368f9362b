"""Netlink link/route/neighbour events of the agent's network namespace, as wake-ups.

The agent's route rescan runs once a second; a pod veth must be attached well within 100 ms of
appearing, so this thread subscribes to rtnetlink multicast groups (links, IPv4/IPv6 routes,
neighbours) and calls `wake()` on every message: the agent loop then runs a pass at once
(coalesced with other events). The rescan stays as a safety net for lost netlink messages
(ENOBUFS on a burst) and for anything this module does not understand.

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
import threading
import time
from collections.abc import Callable
from typing import Any

from controller.log import get_logger

log = get_logger("vethguard.linkwatch")


def _link_kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


class LinkWatch:
    """A thread reading rtnetlink events; thread-safe accessors for what it saw."""

    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._wake = wake
        self._clock = clock
        self._lock = threading.Lock()
        self._baseline: set[int] = set()
        self._appeared: dict[int, float] = {}  # new veths: ifindex -> first RTM_NEWLINK time
        self._neighbours: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._ipr: Any = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0
        self.error: str | None = None

    # ---- public

    def start(self) -> LinkWatch:
        self._thread = threading.Thread(target=self._run, name="linkwatch", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        ipr = self._ipr
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()
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
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.rtnl import (
                RTMGRP_IPV4_ROUTE,
                RTMGRP_IPV6_ROUTE,
                RTMGRP_LINK,
                RTMGRP_NEIGH,
            )
        except ImportError as exc:  # pragma: no cover - pyroute2 is a dependency
            self.error = str(exc)
            self._ready.set()
            return
        backoff = 0.1
        while not self._stop.is_set():
            ipr = None
            try:
                ipr = self._ipr = IPRoute()
                # Subscribe before the baseline dump: a veth created in between is then seen
                # twice (dump + event), never zero times.
                ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_NEIGH)
                with IPRoute() as dump:
                    present = {int(m["index"]) for m in dump.get_links()}
                with self._lock:
                    if not self._ready.is_set():
                        self._baseline = present
                    # after a reconnect, forget veths that went away while we were not listening
                    self._appeared = {i: t for i, t in self._appeared.items() if i in present}
                self._ready.set()
                backoff = 0.1
                self._read(ipr)
            except Exception as exc:  # a netlink failure must not end the watch: the rescan covers us
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("netlink watch failed, reopening", error=self.error, retry_in=backoff)
                self._ready.set()
                self._wake()  # something may have changed while we were blind
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._ipr = None
                if ipr is not None:
                    with contextlib.suppress(Exception):
                        ipr.close()

    def _read(self, ipr: Any) -> None:
        # Blocking get(): pyroute2 buffers messages it has read from the socket, so polling the fd
        # with select() would miss them. stop() closes the socket, which ends get() with [].
        while not self._stop.is_set():
            msgs = ipr.get()
            if not msgs:
                if self._stop.is_set():
                    return
                raise ConnectionError("netlink socket closed")
            now = self._clock()
            changed = False
            for msg in msgs:
                changed = self._handle(msg, now) or changed
            if changed:
                self._wake()

    def _handle(self, msg: Any, now: float) -> bool:
        event = str(msg.get("event") or "")
        self.events += 1
        if event == "RTM_NEWLINK":
            ifindex = int(msg["index"])
            if _link_kind(msg) == "veth":
                with self._lock:
                    if ifindex not in self._baseline and ifindex not in self._appeared:
                        self._appeared[ifindex] = now
            return True
        if event == "RTM_DELLINK":
            ifindex = int(msg["index"])
            with self._lock:
                self._appeared.pop(ifindex, None)
                self._baseline.discard(ifindex)
                self._neighbours = {
                    k for k in self._neighbours if k[0] != ifindex
                }  # an index may be reused by a new veth
            return True
        if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
            # Neighbour entries change state (REACHABLE/STALE/...) all the time under traffic; only
            # a new or removed (interface, address) pair can map a pod to an interface.
            key = (int(msg.get("ifindex") or 0), str(msg.get_attr("NDA_DST") or ""))
            with self._lock:
                if event == "RTM_DELNEIGH":
                    self._neighbours.discard(key)
                    return True
                if key in self._neighbours:
                    return False
                self._neighbours.add(key)
            return True
        return event in ("RTM_NEWROUTE", "RTM_DELROUTE")
