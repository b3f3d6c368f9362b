"""Informers: list+watch of the cluster objects the agent needs, kept as raw API JSON dicts.

One `Informer` per kind (Namespaces, Pods, NetworkPolicies, Nodes, Services,
ClusterNetworkPolicies, Calico's GlobalNetworkPolicies, NetworkPolicies and HostEndpoints) runs
a tiny loop in a thread:

    list (paginated)  ->  replace the cache, emit the diff as events, remember resourceVersion
    watch from that resourceVersion (allowWatchBookmarks)  ->  apply events to the cache
      ERROR 410 / ApiException 410     -> relist (the diff of old vs new cache gives the events)
      server closed / timeout          -> re-watch from the last resourceVersion at once
      connection or API error          -> back off (full jitter, capped) and re-watch
      stalled server (accepts, then sends nothing) -> the client read timeout fires: re-watch

A stall is noticed because every request carries a client-side read timeout (_request_timeout):
a watch asks the server to end it after timeoutSeconds (a healthy server does, or sends BOOKMARKs
meanwhile) and reads with a timeout of timeoutSeconds + read_slack, so a silent connection is
given up within that bound; a list reads with list_read_timeout. urllib3's own retries are
switched off (`retries=False`) so a timeout surfaces at once instead of after 3 silent retries.
Malformed objects (not a JSON object, no metadata) are skipped with a warning, never raised.

An optional kind (KindSpec.optional: ClusterNetworkPolicy, a CRD a cluster may not have, and
Calico's projectcalico.org/v3 kinds, which a cluster without Calico's API server has not) whose
list is answered 404 (the API is not served) or 403 (our RBAC does not cover it yet) is "absent":
one warning, an empty cache that counts as synced, no resourceVersion (left out of what the
agent reports as realized), and another list every absent_retry_seconds; a later list that succeeds brings it
back (logged). A 404 on its watch (the CRD was removed) leads to such a list at once.

The cache is never dropped on a disconnect, so the agent keeps enforcing the last known state.
Every kind tracks the last resourceVersion it has seen (from lists, events and BOOKMARKs, kept
as the opaque string the server sent) and the digest of its cache (controller.core.object_versions,
updated per event); the agent reports both for the caches its maps realize (docs/INTERNALS.md
"Realization"). Nothing here compares or orders resourceVersions.

All informers feed one thread-safe `queue.Queue[Event]`. Requests go through the official
kubernetes client (CoreV1Api / NetworkingV1Api) with `_preload_content=False`, so objects stay
raw dicts and no model deserialization cost is paid.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

from controller.agent.cluster_events import (
    Event,
    KindSnapshot,
    KubeList,
    KubeObject,
    Snapshot,
    WatchEventJSON,
    has_name,
)
from controller.agent.kube_api import KINDS, KindSpec, ListFn
from controller.agent.metrics import Metrics
from controller.core.log import get_logger
from controller.core.object_versions import (
    EMPTY_DIGEST,
    kind_digest,
    object_digest,
    object_key,
    resource_version_of,
)

log = get_logger("vethguard.sources")


# --------------------------------------------------------------------------------------------
# Errors


class WatchExpired(Exception):
    """The server no longer has history for our resourceVersion (HTTP 410 Gone): relist."""


class WatchFailed(Exception):
    """An ERROR event other than 410 on the watch stream."""


def _is_gone(exc: BaseException) -> bool:
    return getattr(exc, "status", None) == 410


def _is_unserved(exc: BaseException) -> bool:
    """404 (no such API: a CRD not installed) or 403 (not allowed to list it)."""
    return getattr(exc, "status", None) in (403, 404)


# --------------------------------------------------------------------------------------------
# Streaming helpers


def _iter_lines(resp: Any) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        if isinstance(chunk, str):
            chunk = chunk.encode()
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1 :]
            if line.strip():
                yield line
    if buf.strip():
        yield buf


def _abort_response(resp: Any) -> None:
    """Unblock a thread reading `resp` (used by stop())."""
    with contextlib.suppress(Exception):
        shutdown = getattr(resp, "shutdown", None)
        if callable(shutdown):
            shutdown()
            return
    with contextlib.suppress(Exception):
        conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)


def _close_response(resp: Any) -> None:
    with contextlib.suppress(Exception):
        resp.close()
    with contextlib.suppress(Exception):
        resp.release_conn()


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """AWS-style full jitter: uniform(0, min(cap, base * 2**attempt))."""
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


# --------------------------------------------------------------------------------------------
# Informer


@dataclass
class InformerOptions:
    # Server-side watch timeout, picked at random per watch so informers do not re-watch in step.
    # Short enough that a stalled connection is noticed within hi + read_slack seconds.
    watch_timeout_seconds: tuple[int, int] = (60, 90)
    connect_timeout: float = 10.0
    read_slack: float = 15.0  # client read timeout = server timeout + slack (dead peer detection)
    list_read_timeout: float = 30.0  # a list whose server goes silent this long is retried
    page_size: int = 500
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    absent_retry_seconds: float = 60.0  # an optional kind the server does not serve: list again


class Informer:
    """List+watch of one kind into a cache of raw objects, events into `out`."""

    def __init__(
        self,
        spec: KindSpec,
        list_fn: ListFn,
        out: queue.Queue[Event],
        metrics: Metrics | None = None,
        options: InformerOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.kind = spec.kind
        self._list_fn = list_fn
        self._out = out
        self._metrics = metrics
        self._opts = options or InformerOptions()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._cache: dict[str, KubeObject] = {}
        self._rv = ""
        self._content_version = 0
        self._digest = EMPTY_DIGEST  # object_versions.kind_digest of _cache
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        self.lists = 0  # number of completed (re)lists, for tests and status
        self.absent = False  # an optional kind the server does not serve (see the module doc)
        self.last_error: str | None = None

    # ---- public

    @property
    def resource_version(self) -> str:
        with self._lock:
            return self._rv

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def snapshot(self) -> KindSnapshot:
        with self._lock:
            return KindSnapshot(
                objects=tuple(self._cache.values()),
                resource_version=self._rv,
                content_version=self._content_version,
                synced=self._synced.is_set(),
                absent=self.absent,
                digest=self._digest,
            )

    def get(self, key: str) -> KubeObject | None:
        with self._lock:
            return self._cache.get(key)

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._cache)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, join_timeout: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            _abort_response(resp)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(join_timeout)

    # ---- the loop

    def run(self) -> None:
        need_list = True
        attempt = 0
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                    attempt = 0
                started = time.monotonic()
                progressed = self._watch_once()
                # The server ended the stream (its timeout, or a close): re-watch from the last RV.
                self._restart("closed")
                if progressed:
                    attempt = 0
                elif time.monotonic() - started < 1.0:
                    # An empty stream that ends at once: do not hammer the server.
                    self._stop.wait(self._backoff(attempt))
                    attempt += 1
            except WatchExpired as exc:
                if self._stop.is_set():
                    break
                log.info("watch expired, relisting", kind=self.kind, error=str(exc), rv=self._rv)
                self._restart("expired")
                need_list = True
            except Exception as exc:
                if self._stop.is_set():
                    break
                if self.spec.optional and _is_unserved(exc):
                    if need_list:  # the list itself: run without this kind, ask again later
                        self._mark_absent(exc)
                        self._stop.wait(self._opts.absent_retry_seconds)
                    need_list = True  # a watch's 404: the API went away, the list finds out
                    continue
                if _is_gone(exc):
                    log.info("resourceVersion gone, relisting", kind=self.kind, resource_version=self._rv)
                    self._restart("expired")
                    need_list = True
                    continue
                if _is_read_timeout(exc):
                    # A stalled server: it accepted the request, then went silent past our read
                    # timeout. The cache stays; ask again (a list if one was due, else a watch).
                    self.last_error = f"stalled: {exc}"
                    log.warning(
                        "API server stalled, retrying",
                        kind=self.kind,
                        request="list" if need_list else "watch",
                        resource_version=self._rv,
                    )
                    self._restart("timeout")
                    continue
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff(attempt)
                attempt += 1
                log.warning(
                    "watch failed, keeping the cache and retrying",
                    kind=self.kind,
                    error=self.last_error,
                    retry_in=round(delay, 3),
                    relist=need_list,
                )
                self._restart("error")
                self._stop.wait(delay)

    def _backoff(self, attempt: int) -> float:
        return full_jitter(attempt, self._opts.backoff_base, self._opts.backoff_cap, self._rng)

    def _restart(self, reason: str) -> None:
        if self._metrics is not None and not self._stop.is_set():
            self._metrics.watch_restarts_total.labels(kind=self.kind, reason=reason).inc()

    def _relist(self) -> None:
        items: dict[str, KubeObject] = {}
        list_rv = ""
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "_preload_content": False,
                "_request_timeout": (self._opts.connect_timeout, self._opts.list_read_timeout),
            }
            if self._opts.page_size:
                kwargs["limit"] = self._opts.page_size
            if cont:
                kwargs["_continue"] = cont
            resp = self._list_fn(**kwargs)
            try:
                body: KubeList = json.loads(resp.data)
            finally:
                _close_response(resp)
            meta = body.get("metadata") if isinstance(body, dict) else None
            if not isinstance(meta, dict):
                meta = {}
            if not list_rv:
                list_rv = str(meta.get("resourceVersion", "") or "")
            raw_items = body.get("items") if isinstance(body, dict) else None
            for item in raw_items if isinstance(raw_items, list) else []:
                if not has_name(item):
                    log.warning(
                        "ignoring a listed object without metadata.name", kind=self.kind, item=str(item)[:200]
                    )
                    continue
                item.setdefault("kind", self.spec.object_kind)
                item.setdefault("apiVersion", self.spec.api_version)
                items[object_key(item, self.spec.namespaced)] = item
            cont = meta.get("continue")  # type: ignore[assignment]
            if not cont:
                break

        events: list[Event] = []
        with self._lock:
            old = self._cache
            for key, obj in items.items():
                prev = old.get(key)
                if prev is None:
                    events.append(Event(self.kind, "ADDED", key, obj, resource_version_of(obj)))
                elif prev != obj:
                    events.append(Event(self.kind, "MODIFIED", key, obj, resource_version_of(obj)))
            for key, prev in old.items():
                if key not in items:
                    events.append(Event(self.kind, "DELETED", key, prev, resource_version_of(prev)))
            self._cache = items
            self._digest = kind_digest(items.values(), self.spec.namespaced)
            self._rv = list_rv
            if events:
                self._content_version += 1
            self.lists += 1
            was_absent, self.absent = self.absent, False
            self.last_error = None
            first = not self._synced.is_set()
            self._synced.set()
        if self._metrics is not None:
            self._metrics.relists_total.labels(kind=self.kind).inc()
        if was_absent:
            log.info("the API server serves this kind now", kind=self.kind, api_version=self.spec.api_version)
        log.info(
            "listed" if first else "relisted",
            kind=self.kind,
            objects=len(items),
            changes=len(events),
            resource_version=list_rv,
        )
        for ev in events:
            self._out.put(ev)
        self._out.put(Event(self.kind, "SYNCED", "", None, list_rv))

    def _mark_absent(self, exc: BaseException) -> None:
        """The server does not serve this optional kind (or we may not list it): no objects (any
        cached ones are deleted), synced, no resourceVersion. Warns once per absence."""
        with self._lock:
            gone = [Event(self.kind, "DELETED", k, o, resource_version_of(o)) for k, o in self._cache.items()]
            self._cache = {}
            self._digest = EMPTY_DIGEST
            self._rv = ""
            if gone:
                self._content_version += 1
            first, self.absent = not self.absent, True
            self.last_error = f"not served: {getattr(exc, 'status', '')} {getattr(exc, 'reason', '')}".strip()
            self._synced.set()
        if first:
            log.warning(
                "the API server does not serve this kind, or does not let us list it: running without it "
                "and listing it again now and then (install its CRD, or update the RBAC rules)",
                kind=self.kind,
                api_version=self.spec.api_version,
                status=getattr(exc, "status", None),
                retry_seconds=self._opts.absent_retry_seconds,
            )
        for ev in gone:
            self._out.put(ev)
        if first or gone:
            self._out.put(Event(self.kind, "SYNCED", "", None, ""))

    def _watch_once(self) -> bool:
        """One watch request, until the server ends it. Returns whether any event arrived."""
        lo, hi = self._opts.watch_timeout_seconds
        server_timeout = self._rng.randint(lo, hi) if hi > lo else lo
        resp = self._list_fn(
            watch=True,
            resource_version=self._rv or None,
            allow_watch_bookmarks=True,
            timeout_seconds=server_timeout,
            _preload_content=False,
            _request_timeout=(self._opts.connect_timeout, server_timeout + self._opts.read_slack),
        )
        self._resp = resp
        progressed = False
        try:
            if self._stop.is_set():
                return progressed
            for line in _iter_lines(resp):
                self._handle_line(line)
                progressed = True
                if self._stop.is_set():
                    break
        finally:
            self._resp = None
            _close_response(resp)
        return progressed

    def _handle_line(self, line: bytes) -> None:
        try:
            ev: WatchEventJSON = json.loads(line)
            etype = ev["type"]
            obj = ev["object"]
            if not isinstance(obj, dict) or not isinstance(etype, str):
                raise TypeError("a watch event needs a string type and an object")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed watch line", kind=self.kind, error=str(exc), line=line[:200])
            return
        if self._metrics is not None:
            self._metrics.watch_events_total.labels(kind=self.kind, type=etype).inc()
        if etype == "ERROR":
            code = obj.get("code")
            msg = f"{obj.get('reason', '')}: {obj.get('message', '')}"
            if code == 410:
                raise WatchExpired(msg)
            raise WatchFailed(f"watch ERROR {code} {msg}")
        rv = resource_version_of(obj)
        if etype == "BOOKMARK":
            with self._lock:
                if rv:
                    self._rv = rv
            self._out.put(Event(self.kind, "BOOKMARK", "", None, rv))
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("ignoring unknown watch event type", kind=self.kind, type=etype)
            return
        if not has_name(obj):
            log.warning("ignoring a watch event without metadata.name", kind=self.kind, type=etype)
            return
        obj.setdefault("kind", self.spec.object_kind)
        obj.setdefault("apiVersion", self.spec.api_version)
        kobj: KubeObject = obj  # type: ignore[assignment]
        key = object_key(kobj, self.spec.namespaced)
        with self._lock:
            old = self._cache.pop(key, None) if etype == "DELETED" else self._cache.get(key)
            if old is not None:
                self._digest ^= object_digest(key, resource_version_of(old))
            if etype != "DELETED":
                self._cache[key] = kobj
                self._digest ^= object_digest(key, rv)
            if rv:
                self._rv = rv
            self._content_version += 1
        self._out.put(Event(self.kind, etype, key, kobj, rv))  # type: ignore[arg-type]


def _is_read_timeout(exc: BaseException) -> bool:
    if isinstance(exc, MaxRetryError):  # a client built with retries enabled wraps the timeout
        return isinstance(exc.reason, ReadTimeoutError)
    if isinstance(exc, ReadTimeoutError):
        return True
    # urllib3 wraps a socket timeout during streaming in ProtocolError/ReadTimeoutError
    return isinstance(exc, ProtocolError) and isinstance(exc.__context__, TimeoutError)


# --------------------------------------------------------------------------------------------
# All kinds together


@dataclass
class Sources:
    """The informers of every kind the agent watches, feeding one event queue."""

    informers: dict[str, Informer]
    events: queue.Queue[Event] = field(default_factory=queue.Queue)

    @classmethod
    def from_api_client(
        cls,
        api_client: Any,
        metrics: Metrics | None = None,
        options: InformerOptions | None = None,
        kinds: Iterable[KindSpec] = KINDS,
    ) -> Sources:
        q: queue.Queue[Event] = queue.Queue()
        informers = {
            spec.kind: Informer(spec, spec.list_fn_of(api_client), q, metrics, options) for spec in kinds
        }
        return cls(informers=informers, events=q)

    def start(self) -> None:
        for inf in self.informers.values():
            inf.start()

    def stop(self) -> None:
        for inf in self.informers.values():
            inf._stop.set()
            if inf._resp is not None:
                _abort_response(inf._resp)
        for inf in self.informers.values():
            inf.stop()

    @property
    def has_synced(self) -> bool:
        return all(inf.has_synced for inf in self.informers.values())

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for inf in self.informers.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not inf.wait_synced(left):
                return False
        return True

    def snapshot(self) -> Snapshot:
        return Snapshot({kind: inf.snapshot() for kind, inf in self.informers.items()})

    def resource_versions(self) -> dict[str, str]:
        return {kind: inf.resource_version for kind, inf in self.informers.items()}
