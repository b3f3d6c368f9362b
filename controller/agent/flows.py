"""The agent's flow pipeline: it is the only consumer of its node's vg_events ring buffer.

    vg_events (pinned ring) -> FlowReader thread: decode_event -> flow_record.record (the
    policy, tier and rule that decided) -> FlowStore: the last N records in memory (repeats
    aggregated) + every follower's bounded queue -> FlowFile (JSON lines, rotated; optional)

FlowStore keeps at most `capacity` records. An event whose aggregation key (node, endpoint,
direction, peer, port, protocol, verdict, reason, rule) equals a record's still in the store,
and that came within `window` seconds of that record's first event, raises the record's `count`
(and `last_time`) instead of taking a slot. Followers (controller.agent.flow_server) get every
event, not aggregated, through a queue of `follower_queue` records each.

Nothing is lost silently: vethguard_flows_lost_total{reason} counts events
  evicted      pushed out of the full store (a record counts for all the events it aggregated);
  reader_slow  not queued for one follower whose queue was full (once per follower and event);
  export       not written to the JSON lines file (a write error);
  decode       a ring record too short or unreadable;
and the events the programs could not write, from the pinned per-CPU vg_evlost (read every
KERNEL_LOST_SECONDS; what it held when the agent started is not counted again):
  kernel_rate_limited  over the per-CPU rate limit (VG_EVENTS_PER_SEC, burst as much);
  kernel_ring_full     the ring had no room (the agent read too slowly).
So every packet with an event path is accounted for: flows_events_total + kernel losses.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from controller.agent.flow_record import record
from controller.agent.metrics import Metrics
from controller.compiler.clusterview import ClusterView, RawObjects
from controller.core.log import get_logger
from controller.core.verdicts import DIR_EGRESS
from controller.datapath.codecs import Event, decode_event
from controller.datapath.dns_codecs import LearnedEntry
from controller.datapath.dns_table import LearnedTable

log = get_logger("vethguard.flows")

READ_BATCH = 4096  # ring records per read
# An event is stamped by the program just before it is submitted to the ring (microseconds):
# a read that started this much later has it.
READ_MARGIN_NS = 5_000_000

DEFAULT_CAPACITY = 10_000
DEFAULT_WINDOW_SECONDS = 5.0
DEFAULT_FOLLOWER_QUEUE = 10_000
VERDICTS = ("allowed", "denied", "audit", "log")
KERNEL_LOST_SECONDS = 1.0


def unix_time(rec: Mapping[str, Any]) -> float:
    """A record's `time` (ISO 8601, UTC, Z) as unix seconds."""
    return datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00")).timestamp()


def parse_since(text: str, now: float | None = None) -> float:
    """'30s', '5m', '2h' ago, a unix time, or an ISO 8601 time -> unix seconds."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ValueError(f"{text!r}: expected 30s, 5m, 2h, a unix time or an ISO 8601 time") from exc


@dataclass(frozen=True)
class FlowFilter:
    """Which records a reader wants; each non-empty field must match (a field's values: any)."""

    pods: tuple[str, ...] = ()  # NS/POD: from or to
    namespaces: tuple[str, ...] = ()  # the namespace of from or to
    verdicts: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()  # ns/name or a cluster-wide policy's name: any of `policies`
    ports: tuple[int, ...] = ()
    protocols: tuple[str, ...] = ()  # TCP, UDP, SCTP, ICMP, ICMPv6 (any case)
    since: float | None = None  # unix seconds: records at or after

    def matches(self, rec: Mapping[str, Any]) -> bool:
        ends = (rec.get("from") or "", rec.get("to") or "")
        if self.pods and not any(e in self.pods for e in ends):
            return False
        if self.namespaces and not any(e.partition("/")[0] in self.namespaces for e in ends if "/" in e):
            return False
        if self.verdicts and rec.get("verdict") not in self.verdicts:
            return False
        if self.policies and not set(self.policies) & {rec.get("policy"), *(rec.get("policies") or ())}:
            return False
        if self.ports and rec.get("port") not in self.ports:
            return False
        if self.protocols and str(rec.get("protocol")).upper() not in {p.upper() for p in self.protocols}:
            return False
        last = rec.get("last_time") or rec["time"]
        return self.since is None or unix_time({"time": last}) >= self.since

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items() if v}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FlowFilter:
        def strings(name: str) -> tuple[str, ...]:
            value = doc.get(name) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"filter {name}: expected a list of strings")
            return tuple(value)

        ports = doc.get("ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, int) for p in ports):
            raise ValueError("filter ports: expected a list of integers")
        since = doc.get("since")
        if since is not None and not isinstance(since, int | float):
            raise ValueError("filter since: expected unix seconds")
        bad = set(doc) - set(cls.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown filter fields: {', '.join(sorted(bad))}")
        return cls(
            pods=strings("pods"),
            namespaces=strings("namespaces"),
            verdicts=strings("verdicts"),
            policies=strings("policies"),
            ports=tuple(ports),
            protocols=strings("protocols"),
            since=None if since is None else float(since),
        )


def aggregation_key(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    """Node, endpoint, direction, peer, port, protocol, verdict, reason, rule (no source port)."""
    peer = rec["from"] if rec["direction"] == "ingress" else rec["to"]
    return (
        rec["node"],
        rec["endpoint"],
        rec["direction"],
        peer,
        rec["port"],
        rec["protocol"],
        rec["verdict"],
        rec["reason"],
        rec["rule_ref"],
    )


@dataclass
class _Entry:
    key: tuple[Any, ...]
    rec: dict[str, Any]
    first: float
    evicted: bool = False


@dataclass(eq=False)
class Follower:
    """One reader's live feed: every matching event, or a count of those that did not fit."""

    filter: FlowFilter
    queue: queue.Queue[dict[str, Any]]
    dropped: int = 0


@dataclass
class FlowStore:
    metrics: Metrics
    capacity: int = DEFAULT_CAPACITY
    window: float = DEFAULT_WINDOW_SECONDS
    follower_queue: int = DEFAULT_FOLLOWER_QUEUE
    events: int = 0  # every event added
    _entries: deque[_Entry] = field(default_factory=deque)
    _latest: dict[tuple[Any, ...], _Entry] = field(default_factory=dict)
    _followers: list[Follower] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Wall-clock ns up to which every event is in the store: just before the last ring read that
    # emptied the ring (less READ_MARGIN_NS). None: no reader marks it (then readers use now).
    read_mark_ns: int | None = None

    def mark_read(self, wall_ns: int) -> None:
        self.read_mark_ns = max(self.read_mark_ns or 0, wall_ns)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("the flow store needs a capacity of at least 1")
        self.metrics.flows_capacity.set(self.capacity)

    def add(self, rec: dict[str, Any]) -> None:
        when = unix_time(rec)
        key = aggregation_key(rec)
        with self._lock:
            self.events += 1
            self.metrics.flows_events_total.labels(
                direction=rec["direction"], verdict=rec["verdict"], reason=rec["reason"]
            ).inc()
            for f in self._followers:
                if f.filter.matches(rec):
                    try:
                        f.queue.put_nowait(dict(rec, count=1))
                    except queue.Full:
                        f.dropped += 1
                        self.lost("reader_slow")
            hit = self._latest.get(key)
            if hit is not None and not hit.evicted and 0 <= when - hit.first <= self.window:
                hit.rec["count"] += 1
                hit.rec["last_time"] = rec["time"]
                return
            entry = _Entry(key, dict(rec, count=1, last_time=rec["time"]), when)
            self._entries.append(entry)
            self._latest[key] = entry
            while len(self._entries) > self.capacity:
                old = self._entries.popleft()
                old.evicted = True
                if self._latest.get(old.key) is old:
                    del self._latest[old.key]
                self.lost("evicted", old.rec["count"])
            self.metrics.flows_stored.set(len(self._entries))

    def lost(self, reason: str, n: int = 1) -> None:
        self.metrics.flows_lost_total.labels(reason=reason).inc(n)

    def history(self, flt: FlowFilter = FlowFilter()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e.rec) for e in self._entries if flt.matches(e.rec)]

    def follow(self, flt: FlowFilter, history: bool = True) -> tuple[list[dict[str, Any]], Follower]:
        """The matching history and a follower registered at the same instant (no gap, no repeat)."""
        f = Follower(flt, queue.Queue(self.follower_queue))
        with self._lock:
            past = [dict(e.rec) for e in self._entries if flt.matches(e.rec)] if history else []
            self._followers.append(f)
            self.metrics.flows_followers.set(len(self._followers))
        return past, f

    def unfollow(self, f: Follower) -> None:
        with self._lock:
            if f in self._followers:
                self._followers.remove(f)
            self.metrics.flows_followers.set(len(self._followers))

    def __len__(self) -> int:
        return len(self._entries)

    def stored_events(self) -> int:
        with self._lock:
            return sum(e.rec["count"] for e in self._entries)


class FlowFile:
    """Events as JSON lines in `path`, rotated by size: path -> path.1 -> ... -> path.<backups>."""

    def __init__(self, path: str | Path, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max(1, max_bytes)
        self.backups = max(0, backups)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out: TextIO = self._open()

    def _open(self) -> TextIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, recs: Iterable[Mapping[str, Any]]) -> None:
        for rec in recs:
            self._out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            if self._out.tell() >= self.max_bytes:
                self._rotate()
        self._out.flush()

    def _rotate(self) -> None:
        self._out.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._out = self._open()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._out.close()


class ViewCache:
    """The ClusterView events are translated with.

    It is rebuilt when the agent computed from new cache contents (`computed()`: the versions of
    its last compute, set before that compute's maps are written), never on a clock: an event the
    kernel emitted under new maps is named with a view at least as new as those maps (a view one
    second old named an audit drop right after a policy change without its policy). A rebuild
    costs what the agent's own compute costs, at most once per compute."""

    def __init__(self, snapshot: Callable[[], Any], computed: Callable[[], tuple[int, ...] | None]) -> None:
        self._snapshot = snapshot
        self._computed = computed
        self._view: ClusterView | None = None
        self._seen: tuple[int, ...] | None = None  # computed() when the view was built

    def get(self) -> ClusterView:
        seen = self._computed()
        if self._view is not None and seen == self._seen:
            return self._view
        snap = self._snapshot()  # as new as that compute's, or newer
        self._view = ClusterView(
            RawObjects(
                namespaces=snap.namespaces,
                pods=snap.pods,
                policies=snap.policies,
                nodes=snap.nodes,
                cluster_policies=snap.cluster_policies,
                calico=snap.calico,
            )
        )
        self._seen = seen
        return self._view


class FlowReader:
    """The thread that drains the node's ring buffer into the store (and the file)."""

    def __init__(
        self,
        node: str,
        ring_path: str | Path,
        store: FlowStore,
        view: Callable[[], ClusterView],
        out: FlowFile | None = None,
    ) -> None:
        self.node = node
        self.ring_path = Path(ring_path)
        self.store = store
        self.view = view
        self.out = out
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flows", daemon=True)
        self._kernel_lost: tuple[int, int] | None = None  # (rate limited, ring full) last read
        self.learned: LearnedTable | None = None  # what pods learned from DNS, named (if pinned)

    def start(self) -> FlowReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)
        if self.out is not None:
            self.out.close()

    def handle(self, raw: Sequence[bytes], boot_offset_ns: int) -> None:
        """Decode, translate, keep and export one batch of ring records."""
        recs = []
        view = self.view() if raw else None
        for data in raw:
            try:
                ev: Event = decode_event(data, self.node)
            except (ValueError, TypeError) as exc:
                self.store.lost("decode")
                log.warning("cannot decode a flow event", error=str(exc), size=len(data))
                continue
            assert view is not None
            rec = record(view, ev, boot_offset_ns, self._learned_entry(ev))
            self.store.add(rec)
            recs.append(rec)
        if self.out is not None and recs:
            try:
                self.out.write(recs)
            except OSError as exc:
                self.store.lost("export", len(recs))
                log.warning("cannot write flows", path=str(self.out.path), error=str(exc))

    def _learned_entry(self, ev: Event) -> LearnedEntry | None:
        """The endpoint's vg_dns_learned entry for an egress event's destination (domainNames)."""
        if self.learned is None or ev.dir != DIR_EGRESS:
            return None
        try:
            return self.learned.lookup(ev.ep_id, ev.daddr)
        except (OSError, ValueError):
            return None

    def account_kernel_lost(self, now: tuple[int, int]) -> None:
        """Add what vg_evlost gained since the last read to the lost counter (the first read is
        the baseline)."""
        before, self._kernel_lost = self._kernel_lost, now
        if before is None:
            return
        for reason, was, new in zip(("kernel_rate_limited", "kernel_ring_full"), before, now, strict=True):
            if new > was:
                self.store.lost(reason, new - was)

    def _read_kernel_lost(self) -> None:
        from controller.datapath import abi, bpfsys
        from controller.datapath.codecs import u32_key

        try:
            m = bpfsys.BpfMap.open_pinned(str(self.ring_path.parent / "vg_evlost"))
        except OSError:
            return  # programs older than vg_evlost
        try:
            per_cpu = m.lookup_percpu(u32_key(0)) or []
        finally:
            m.close()
        values = [abi.EvlostState.from_bytes(raw) for raw in per_cpu]
        self.account_kernel_lost(
            (sum(int(v.rate_limited) for v in values), sum(int(v.ring_full) for v in values))
        )

    def _run(self) -> None:
        from controller.datapath.ringbuf import RingBuffer, wait_any

        ring = None
        dns_maps: list[Any] = []
        next_lost = 0.0
        while not self.stop_event.is_set():
            if ring is None:
                try:
                    ring = RingBuffer(str(self.ring_path))
                    log.info("reading flow events", ring=str(self.ring_path))
                    self.learned, dns_maps = _open_learned(self.ring_path.parent)
                except OSError:
                    self.stop_event.wait(1.0)  # the datapath has not pinned it yet
                    continue
            offset = time.time_ns() - time.monotonic_ns()
            try:
                if time.monotonic() >= next_lost:
                    next_lost = time.monotonic() + KERNEL_LOST_SECONDS
                    self._read_kernel_lost()
                started = time.time_ns()
                batch = ring.read(READ_BATCH)
                self.handle(batch, offset)
                if len(batch) < READ_BATCH:  # the ring was empty: every event stamped before is read
                    self.store.mark_read(started - READ_MARGIN_NS)
            except Exception as exc:  # never let the thread die: the ring would fill up
                log.warning("flow pipeline failed on a batch", error=str(exc))
            if ring.pending() == 0:
                wait_any([ring], 0.2)
        if ring is not None:
            ring.close()
        for m in dns_maps:
            m.close()


def _open_learned(pin_dir: Path) -> tuple[LearnedTable | None, list[Any]]:
    """vg_dns_learned with vg_dns_names of the node (None: programs older than domainNames), and
    the maps to close."""
    from controller.datapath import bpfsys

    maps = []
    try:
        for name in ("vg_dns_learned", "vg_dns_names"):
            maps.append(bpfsys.BpfMap.open_pinned(str(pin_dir / name)))
    except OSError:
        for m in maps:
            m.close()
        return None, []
    return LearnedTable(maps[0], maps[1]), maps
