"""The pod veths carrying our programs, as the agent keeps them: which are attached (adopted from
the pinned endpoints map after a restart, attached early on the netlink thread, or by a pass),
which failed, which new veths no pod claims yet (failed closed as PENDING placeholders), and the
veth-appeared -> attached -> enforced latencies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from controller.agent.capacity import Fit
from controller.agent.errors import ErrorBook
from controller.agent.metrics import Metrics
from controller.agent.protocols import LinkWatchLike
from controller.agent.veth_match import Discovered, is_placeholder, unclaimed_key
from controller.core.log import get_logger
from controller.datapath.abi import EP_F_PENDING
from controller.datapath.interface import NodeDatapath

log = get_logger("vethguard.agent")


class Attachments:
    def __init__(self, metrics: Metrics, errors: ErrorBook, exists: Callable[[int], bool]) -> None:
        self.metrics = metrics
        self.errors = errors
        self.exists = exists  # whether an ifindex names an interface of this netns
        self.attached: set[int] = set()
        self.failed: set[int] = set()  # the last pass could not attach these
        self.adopted_pending: set[int] = set()  # PENDING endpoints found in the pinned map at start
        self._early_lock = threading.Lock()  # attach_new() runs on the netlink thread
        self._early_tried: set[int] = set()  # new veths attach_new() tried (once each)
        self._early_attached: dict[int, float] = {}  # attached by it, not yet in attached: -> when
        self._attach_reported: dict[int, float] = {}  # ifindex -> when its programs were attached
        self._attach_times: dict[int, float] = {}  # ifindex -> when this agent attached its programs
        self._enforce_reported: set[int] = set()

    def adopt(self, dp: NodeDatapath) -> None:
        """After a restart the pinned endpoints map names the veths a previous agent attached to;
        adopt them so that those whose pod is gone get detached by the first pass, and those that
        were still PENDING stay failed closed until a pod claims them."""
        try:
            endpoints = dp.dump().endpoints
        except Exception as exc:
            log.warning("cannot read the pinned endpoints map", error=str(exc))
            return
        for ifindex, ep in endpoints.items():
            if not self.exists(ifindex):
                continue
            self.attached.add(ifindex)
            if ep.flags & EP_F_PENDING:
                self.adopted_pending.add(ifindex)

    def wanted(self, found: Discovered, fail_closed: bool, linkwatch: LinkWatchLike | None) -> dict[str, int]:
        """pod -> ifindex to attach and sync, with a placeholder key for each veth that must be
        failed closed because no known pod claims it yet (the datapath makes it PENDING)."""
        pod_ifindex = found.attachments()
        if not fail_closed:
            return {p: i for p, i in pod_ifindex.items() if not is_placeholder(p)}
        claimed = set(pod_ifindex.values())
        candidates = set(self.adopted_pending)
        if linkwatch is not None:
            candidates |= set(linkwatch.new_veths())
        for ifindex in sorted(candidates - claimed):
            if self.exists(ifindex):
                pod_ifindex[unclaimed_key(ifindex)] = ifindex
            else:
                self.adopted_pending.discard(ifindex)
        pending = sum(1 for p in pod_ifindex if is_placeholder(p))
        self.metrics.pending_interfaces.set(pending)
        return pod_ifindex

    def attach_new(self, dp: NodeDatapath, linkwatch: LinkWatchLike) -> bool:
        """Attach the veths netlink saw appear that no pass attached yet (netlink thread; see
        Agent.attach_new_veths). Each veth is tried once here; a failure is left to the pass,
        which records and retries it. Returns whether there was a new veth."""
        with self._early_lock:
            appeared = linkwatch.new_veths()
            self._early_tried &= set(appeared)
            fresh = sorted(i for i in appeared if i not in self._early_tried and i not in self.attached)
            for ifindex in fresh:
                self._early_tried.add(ifindex)
                try:
                    dp.attach(ifindex)
                except Exception as exc:  # gone already, or a real failure: the pass decides
                    log.debug("early attach failed, left to the pass", ifindex=ifindex, error=str(exc))
                    continue
                self._early_attached[ifindex] = time.monotonic()
                log.info("attached", ifindex=ifindex, pods=[], before_discovery=True)
        return bool(fresh)

    def take_early(self) -> set[int]:
        """(loop thread) Adopt the veths attach_new() attached; returns them."""
        with self._early_lock:
            taken, self._early_attached = self._early_attached, {}
        for ifindex, at in taken.items():
            if ifindex not in self.attached:
                self._attach_times[ifindex] = at
                self.attached.add(ifindex)
        if taken:
            self.metrics.attached.set(len(self.attached))
        return set(taken)

    def reconcile(self, dp: NodeDatapath, pod_ifindex: Mapping[str, int], full: bool) -> bool:
        """Attach the veths of `pod_ifindex` (every one on a full resync: catches filters removed
        behind our back), detach the others. Returns whether every attach succeeded."""
        # attached on the netlink thread after this pass listed the veths: not unwanted, only newer
        early = self.take_early()
        want = set(pod_ifindex.values())
        failed: set[int] = set()
        for ifindex in sorted(want if full else want - self.attached):
            try:
                dp.attach(ifindex)
            except Exception as exc:
                failed.add(ifindex)
                self.errors.fail("attach", exc, ifindex=ifindex)
                continue
            if ifindex not in self.attached:
                self._attach_times[ifindex] = time.monotonic()
                log.info(
                    "attached", ifindex=ifindex, pods=[p for p, i in pod_ifindex.items() if i == ifindex]
                )
            self.attached.add(ifindex)
        self.failed = failed
        if not failed:
            self.errors.clear("attach")
        for ifindex in sorted(self.attached - want - early):
            if self.exists(ifindex):
                try:
                    dp.detach(ifindex)
                except Exception as exc:
                    self.errors.fail("detach", exc, ifindex=ifindex)
                    continue
                log.info("detached", ifindex=ifindex)
            self.attached.discard(ifindex)
            self._attach_reported.pop(ifindex, None)
            self._attach_times.pop(ifindex, None)
            with self._early_lock:
                self._early_tried.discard(ifindex)
            self._enforce_reported.discard(ifindex)
        self.metrics.attached.set(len(self.attached))
        return not failed

    def observe_latencies(
        self, linkwatch: LinkWatchLike | None, fit: Fit, synced: bool, attached_at: float, done: float
    ) -> None:
        """veth appeared (netlink event) -> attached, and -> its pod's policy synced."""
        if linkwatch is None:
            return
        for pod, ifindex in sorted(fit.pod_ifindex.items()):
            appeared = linkwatch.appeared_at(ifindex)
            if appeared is None:
                continue
            if ifindex in self.attached and ifindex not in self._attach_reported:
                at = self._attach_times.get(ifindex, attached_at)
                self._attach_reported[ifindex] = at
                self.metrics.endpoint_attach_latency_seconds.observe(max(0.0, at - appeared))
            if pod in fit.desired.endpoints and ifindex not in self._enforce_reported and synced:
                self._enforce_reported.add(ifindex)
                latency = max(0.0, done - appeared)
                self.metrics.endpoint_enforce_latency_seconds.observe(latency)
                log.info(
                    "endpoint enforced",
                    pod=pod,
                    ifindex=ifindex,
                    veth_to_attached_ms=round(
                        max(0.0, self._attach_reported.get(ifindex, attached_at) - appeared) * 1000, 1
                    ),
                    veth_to_enforced_ms=round(latency * 1000, 1),
                )
