"""The kernel side of vethguard: load the tc programs once per node, attach them to pod veths,
and keep the pinned maps equal to the desired state. See docs/INTERNALS.md (Datapath API)."""

from __future__ import annotations

import ctypes
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller.datapath import loader, maps, sync
from controller.datapath.attach import Attacher
from controller.datapath.maps import Event
from controller.datapath.sync import KernelState, SyncResult
from controller.mapstate import NodeDesired

__all__ = ["Datapath", "KernelState", "SyncResult"]


class Datapath:
    """One node's program set and maps.

    Datapath(node="node-1", pin_root="/sys/fs/bpf/vethguard") compiles and loads once (bcc,
    ~1.3 s) and pins or reuses the maps under <pin_root>/<node>/.
    """

    def __init__(
        self, node: str, pin_root: str = "/sys/fs/bpf/vethguard", extra_cflags: tuple[str, ...] = ()
    ) -> None:
        self.node = node
        self.pin_root = pin_root
        self._loaded = loader.load(node, pin_root, extra_cflags)
        self._attacher = Attacher()
        self._event_cb: Callable[[object, int, int], None] | None = None
        self._event_sink: Callable[[Event], None] | None = None

    # -- properties used by tests, benchmarks and the event reader
    @property
    def pin_dir(self) -> Path:
        return self._loaded.pin_dir

    @property
    def maps(self) -> Mapping[str, maps.BpfMap]:
        return self._loaded.maps

    def prog_fd(self, name: str) -> int:
        """fd of "from_pod", "to_pod" or "passthrough"."""
        return self._loaded.prog_fds[name]

    @property
    def bcc(self) -> Any:
        """The bcc BPF object (e.g. bcc["vg_events"].open_ring_buffer(callback))."""
        return self._loaded.bpf

    def open_events(self, callback: Callable[[Event], None]) -> None:
        """Deliver vg_events records (new flows and drops) to callback from poll_events().

        The ring is opened once; a later call only replaces the callback.
        """
        self._event_sink = callback
        if self._event_cb is not None:
            return

        def _raw(_ctx: object, data: int, size: int) -> None:
            if self._event_sink is not None:
                self._event_sink(maps.decode_event(ctypes.string_at(data, size)))

        self._event_cb = _raw  # bcc keeps only a weak reference to the callback
        self._loaded.bpf["vg_events"].open_ring_buffer(_raw)

    def poll_events(self, timeout_ms: int = 0) -> None:
        self._loaded.bpf.ring_buffer_poll(timeout_ms)

    # -- the API of docs/INTERNALS.md
    def attach(self, ifindex: int) -> None:
        """clsact + from_pod (tc ingress) / to_pod (tc egress) filters; idempotent; this netns."""
        self._attacher.attach(ifindex, self.prog_fd("from_pod"), self.prog_fd("to_pod"))

    def detach(self, ifindex: int) -> None:
        """Remove our filters only; a clsact is removed only if this process created it."""
        self._attacher.detach(ifindex)

    def attached(self, ifindex: int) -> bool:
        return self._attacher.attached(ifindex)

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> SyncResult:
        """Diff desired vs kernel, add/update before delete, then bump the revision."""
        return sync.apply(sync.desired_maps(desired, pod_ifindex), self._loaded.maps)

    def dump(self) -> KernelState:
        return sync.dump(self._loaded.maps)

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        """(ep_id, reason, dir) -> (packets, bytes), summed over CPUs."""
        return sync.counters(self._loaded.maps["vg_counters"])

    def close(self) -> None:
        """Release fds. Pinned maps and attached filters stay (restart reuses them)."""
        self._loaded.close()

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def remove_pins(node: str, pin_root: str = "/sys/fs/bpf/vethguard") -> None:
        """Delete the node's pinned maps (lab down, tests). Attached programs keep their maps alive."""
        shutil.rmtree(loader.pin_dir_for(node, pin_root), ignore_errors=True)
