"""The agent's DNS thread for domainNames rules (bpf/lib/dns.h, docs/INTERNALS.md "Egress by
domain name"): it drains vg_dns_held, teaches pods what their answers say (dns_learn.Learner
-> vg_dns_learned), releases every held answer into its pod (dns_release.Releaser), and while
it runs keeps vg_dns_state's deadline HOLD_AHEAD seconds ahead, so the programs hold answers
only while someone releases them.

Order matters: an answer's addresses are written before the answer is released, so a pod
cannot connect to an address before the datapath knows it. A failed write still releases the
answer (DNS is not filtered here); the pod's new flows to those addresses stay denied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import structlog

from controller.agent.dns_learn import DomainMatcher, Learned, Learner
from controller.datapath import abi, codecs, dns_codecs
from controller.datapath.dns_table import NameIds

log = structlog.get_logger("vethguard.agent.dns")

HOLD_AHEAD = 3.0  # seconds the programs keep holding answers after the last push
PUSH_EVERY = 1.0
NS = 1_000_000_000


class MapLike(Protocol):
    def update(self, key: bytes, value: bytes) -> None: ...


class ReleaserLike(Protocol):
    def release(self, ifindex: int, frame: bytes) -> None: ...

    def close(self) -> None: ...


class DnsService:
    def __init__(
        self,
        pin_dir: Path,
        matcher: Callable[[], DomainMatcher],
        releaser: Callable[[], ReleaserLike] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.pin_dir = pin_dir
        self.clock = clock  # vg_now()'s clock, in ns
        self.learner = Learner(matcher, lambda: self.clock() / NS)
        self._releaser_factory = releaser
        self.counts: dict[str, int] = {"released": 0, "learned": 0, "release_errors": 0, "queries": 0}
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dns", daemon=True)

    # -- one batch (the thread's body; tests call it directly)
    def handle(
        self, records: Iterable[bytes], learned: MapLike, releaser: ReleaserLike, names: NameIds | None = None
    ) -> None:
        """One batch of vg_dns_held records; `names` (vg_dns_names' keys) records the names asked."""
        for raw in records:
            try:
                held = dns_codecs.decode_held(raw)
            except ValueError as exc:
                log.warning("cannot decode a held DNS record", error=str(exc))
                continue
            if held.kind == abi.DNS_HELD_QUERY:
                self.counts["queries"] += 1
                self.learner.query(held.ep_id, held.frame)
                continue
            self._learn(self.learner.answer(held.ep_id, held.frame), learned, names)
            try:
                releaser.release(held.ifindex, held.frame)
                self.counts["released"] += 1
            except OSError as exc:  # the pod is gone, or its veth: its resolver asks again
                self.counts["release_errors"] += 1
                log.info("cannot release a DNS answer", ifindex=held.ifindex, error=str(exc))

    def _learn(self, entries: list[Learned], learned: MapLike, names: NameIds | None) -> None:
        now = self.clock()
        name_ids: dict[str, int] = {}
        for e in entries:
            try:
                if names is not None and e.name not in name_ids:  # first: no entry names a missing key
                    name_ids[e.name] = names.id_of(e.name)
                entry = dns_codecs.encode_learned(
                    e.ep_id, e.address, e.identity, now + e.ttl * NS, name_ids.get(e.name, 0)
                )
                learned.update(*entry)
                self.counts["learned"] += 1
            except OSError as exc:
                log.warning("cannot write a learned address", address=e.address, error=str(exc))

    def push_deadline(self, state: MapLike) -> None:
        until = self.clock() + int(HOLD_AHEAD * NS)
        state.update(codecs.u32_key(0), bytes(abi.DnsState(hold_until_ns=until)))

    # -- the thread
    def start(self) -> DnsService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from controller.datapath import bpfsys
        from controller.datapath.dns_release import Releaser
        from controller.datapath.ringbuf import RingBuffer, wait_any

        opened: dict[str, Any] = {}
        name_ids: NameIds | None = None
        next_push = 0.0
        while not self.stop_event.is_set():
            if not opened:
                try:
                    opened["ring"] = RingBuffer(str(self.pin_dir / "vg_dns_held"))
                    opened["learned"] = bpfsys.BpfMap.open_pinned(str(self.pin_dir / "vg_dns_learned"))
                    opened["state"] = bpfsys.BpfMap.open_pinned(str(self.pin_dir / "vg_dns_state"))
                    opened["names"] = bpfsys.BpfMap.open_pinned(str(self.pin_dir / "vg_dns_names"))
                    name_ids = NameIds(opened["names"])
                    opened["releaser"] = (self._releaser_factory or Releaser)()
                except OSError:
                    for thing in opened.values():
                        thing.close()
                    opened.clear()
                    self.stop_event.wait(1.0)  # the datapath has not pinned them yet
                    continue
            try:
                if time.monotonic() >= next_push:
                    next_push = time.monotonic() + PUSH_EVERY
                    self.push_deadline(opened["state"])
                self.handle(opened["ring"].read(1024), opened["learned"], opened["releaser"], name_ids)
            except Exception as exc:  # never let the thread die: held answers would wait for nobody
                log.warning("DNS pipeline failed on a batch", error=str(exc))
            if opened["ring"].pending() == 0:
                wait_any([opened["ring"]], 0.1)
        if opened:  # stopping: answers pass unheld from now on rather than wait for nobody
            opened["state"].update(codecs.u32_key(0), bytes(abi.DnsState(hold_until_ns=0)))
            for thing in opened.values():
                thing.close()
