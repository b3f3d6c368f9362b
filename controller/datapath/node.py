"""The kernel side of vethguard: load the tc programs once per node, attach them to pod veths,
and keep the pinned maps equal to the desired state. See docs/INTERNALS.md (Datapath API)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from controller.compiler.desired_state import NodeDesired
from controller.datapath import bpfsys, build, codecs, encoding, ledger, loader, readback, sync, tcx, uplink
from controller.datapath.attach import PARENT_EGRESS, PARENT_INGRESS
from controller.datapath.bpfsys import ProgId
from controller.datapath.codecs import Event
from controller.datapath.interface import NodeDatapath
from controller.datapath.readback import GcResult, KernelState
from controller.datapath.ringbuf import RingBuffer, wait_any
from controller.datapath.sync import MapFullError, SyncResult

log = logging.getLogger(__name__)

# Maps whose fill level means something (arrays are always "full"; the ring buffer has no keys).
SIZED_MAPS = (
    "vg_endpoints",
    "vg_ipcache4",
    "vg_ipcache6",
    "vg_policy",
    "vg_svc",
    "vg_local",
    "vg_hosteps",
    "vg_failsafe",
    "vg_ct",
    "vg_frag",
    "vg_counters",
)


class Datapath:
    """One node's program set and maps.

    Datapath(node="node-1", pin_root="/sys/fs/bpf/vethguard") opens the node's programs from the
    build pinned under <pin_root>/<node>/ when its inputs did not change, else compiles them in a
    child process (bcc, ~1.3 s; controller/datapath/build.py), and pins or reuses the maps there.
    This process never imports bcc. With `state_dir`, every clsact
    it creates is recorded in the node's clsact ledger there (controller/datapath/ledger.py).
    Pod programs are attached with clsact filters, or with tcx links when `attach_mode` (else
    VETHGUARD_TC_ATTACH) says "tcx" (controller/datapath/tcx.py).
    """

    def __init__(
        self,
        node: str,
        pin_root: str = "/sys/fs/bpf/vethguard",
        extra_cflags: tuple[str, ...] = (),
        state_dir: str | None = None,
        attach_mode: str | None = None,
    ) -> None:
        self.node = node
        self.pin_root = pin_root
        self.extra_cflags = extra_cflags
        self._loaded = build.load(node, pin_root, extra_cflags)
        ledger_file = ledger.ledger_path(state_dir, node) if state_dir else None
        # pod veths: clsact filters, or tcx links pinned under <pin_dir>/links (tcx.attach_mode)
        self._attacher = tcx.pod_attacher(self._loaded.pin_dir, ledger_file, attach_mode)
        self._uplinks = uplink.uplink_attacher(ledger_file)
        self._events: RingBuffer | None = None
        self._event_sink: Callable[[Event], None] | None = None
        # What the synced maps hold after this object's last sync, if it completed (None: not
        # known, read the kernel), and the encoder that reuses the bytes of what did not change.
        self._written: sync.Written | None = None
        self._retired: sync.Written | None = None  # the sync before: freed by idle work
        self._encoder = self._new_encoder()
        self._unplaced_warned: set[str] = set()  # host endpoints already reported as not placed
        # When this load replaced pinned maps (another layout, loader.replacing_incompatible), the
        # interfaces already running programs of ours keep them (they enforce with their own, old
        # maps) until the first completed sync has filled the new maps: (pod veth?, ifindex).
        self._held: set[tuple[bool, int]] | None = set() if self._loaded.replaced else None
        self._held_lock = threading.Lock()  # the agent attaches new veths from its netlink thread
        # to_pod's tail-call targets (vg_tail): this build's, at once, unless maps were replaced:
        # then the previous programs' judge keeps its own, old maps until the first sync too.
        if self._held is None:
            self.place_tail_programs()

    # -- properties used by tests, benchmarks and the event reader
    @property
    def pin_dir(self) -> Path:
        return self._loaded.pin_dir

    @property
    def maps(self) -> Mapping[str, bpfsys.BpfMap]:
        return self._loaded.maps

    def prog_fd(self, name: str) -> int:
        """fd of one of loader.BUILD_PROGRAMS (e.g. "from_pod", "to_pod", "to_pod_judge")."""
        return self._loaded.prog_fds[name]

    def prog_id(self, name: str) -> ProgId:
        """Kernel id and tag of one of loader.BUILD_PROGRAMS as loaded by this object."""
        return bpfsys.prog_id(self.prog_fd(name))

    def tail_programs(self) -> dict[int, int | None]:
        """vg_tail's slots: slot -> id of the program to_pod reaches there (None: empty)."""
        return build.tail_program_ids(self.maps["vg_tail"])

    def place_tail_programs(self) -> tuple[int, ...]:
        """This build's tail-call targets into vg_tail where they are not (build.place_tail_programs);
        returns the slots written. Done at load (or, when maps were replaced, at the first sync)
        and on every full sync."""
        return build.place_tail_programs(self._loaded)

    @property
    def attach_mode(self) -> str:
        """How the pod programs are attached: "tcx" or "clsact" (controller/datapath/tcx.py)."""
        return "tcx" if isinstance(self._attacher, tcx.TcxAttacher) else "clsact"

    def attached_progs(self, ifindex: int) -> dict[str, int | None]:
        """Program ids our links or filters on ifindex run: {"from_pod": id, "to_pod": id} (None: absent)."""
        return self._attacher.attached_prog_ids(ifindex)

    @property
    def compiled(self) -> bool:
        """Whether this load compiled the programs (False: it reused the pinned build)."""
        return self._loaded.compiled

    @property
    def build_dir(self) -> Path:
        """Where the programs this object runs are pinned: <pin_dir>/build-<key16>."""
        return self._loaded.build_dir

    def open_events(self, callback: Callable[[Event], None]) -> None:
        """Deliver vg_events records (new flows and drops) to callback from poll_events().

        The ring (<pin_dir>/vg_events, controller.datapath.ringbuf) is opened once; a later call
        only replaces the callback. The ring has one consumer position: where the agent runs,
        its flow reader is the ring's reader, not this (tests and benchmarks use this).
        """
        self._event_sink = callback
        if self._events is None:
            self._events = RingBuffer(str(self.pin_dir / "vg_events"))

    def poll_events(self, timeout_ms: int = 0) -> None:
        """Hand every record available to the callback, waiting up to timeout_ms for one."""
        if self._events is None:
            return
        if timeout_ms > 0 and self._events.pending() == 0:
            wait_any([self._events], timeout_ms / 1000)
        for raw in self._events.read():
            if self._event_sink is not None:
                self._event_sink(codecs.decode_event(raw))

    # -- the API of docs/INTERNALS.md
    @property
    def replaced_maps(self) -> tuple[str, ...]:
        """The pinned maps of another layout this load replaced with new, empty ones."""
        return self._loaded.replaced

    def _held_back(self, pod: bool, ifindex: int) -> bool:
        """Whether (re-)attaching ifindex waits for the first sync (maps replaced, an older program
        set of ours runs there); a veth without our programs is attached at once (fail closed)."""
        with self._held_lock:
            if self._held is None or (pod, ifindex) in self._held:
                return self._held is not None
            if not (self._attacher if pod else self._uplinks).attached(ifindex):
                return False
            self._held.add((pod, ifindex))
        log.info("ifindex %s keeps its running programs until the replaced maps are synced", ifindex)
        return True

    def _attach_held(self) -> None:
        self.place_tail_programs()  # before any to_pod of this build runs
        with self._held_lock:
            held, self._held = self._held or set(), None
        for pod, ifindex in sorted(held):
            try:
                (self.attach if pod else self.attach_uplink)(ifindex)
            except Exception as exc:  # gone meanwhile, or a failure the agent's next full pass retries
                log.warning("re-attaching ifindex %s after the replaced maps were synced: %s", ifindex, exc)

    def attach(self, ifindex: int) -> None:
        """from_pod on the veth's tc ingress, to_pod on its tc egress (tcx links, or clsact filters:
        tcx.attach_mode()); idempotent; this netns."""
        if self._held_back(True, ifindex):
            return
        self._attacher.attach(ifindex, self.prog_fd("from_pod"), self.prog_fd("to_pod"))

    def detach(self, ifindex: int) -> None:
        """Remove our links or filters only; a clsact is removed only if this process created it."""
        self._attacher.detach(ifindex)

    def attached(self, ifindex: int) -> bool:
        return self._attacher.attached(ifindex)

    def find_uplinks(self, names: Sequence[str] = ()) -> dict[int, str]:
        """ifindex -> name of this network namespace's uplinks (`names`, else every interface with
        a route through a gateway): where attach_uplink() belongs."""
        return uplink.find_uplinks(names)

    def attach_uplink(self, ifindex: int) -> None:
        """to_uplink on the tc egress of a node uplink (judges deferred Service flows) and
        from_uplink on its tc ingress (drops forged local sources); idempotent."""
        if self._held_back(False, ifindex):
            return
        self._uplinks.attach_programs(
            ifindex, {PARENT_EGRESS: self.prog_fd("to_uplink"), PARENT_INGRESS: self.prog_fd("from_uplink")}
        )

    def detach_uplink(self, ifindex: int) -> None:
        self._uplinks.detach(ifindex)

    def uplink_attached(self, ifindex: int) -> bool:
        return self._uplinks.attached(ifindex)

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> SyncResult:
        """Diff desired vs kernel, add/update before delete, then bump the revision.

        Raises MapFullError when an insert found its map full: everything that fitted is
        applied, the affected endpoints are left PENDING (failed closed), and calling sync
        again later (the agent's retry) completes them once there is room.
        """
        return self._sync(desired, pod_ifindex, incremental=False)

    def sync_incremental(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> SyncResult:
        """sync(), diffing against what this object's last sync wrote instead of reading every
        entry of the kernel maps (two bpf syscalls per entry), and only over the parts of
        `desired` that are not the very objects that sync wrote (sync.apply_encoding): an event
        costs what it changed, not the size of the maps. Falls back to reading them when that
        is not known (first sync, a failed or partial sync). Entries changed behind this
        object's back are not seen: the agent's periodic full resync calls sync(), which reads
        the kernel maps and repairs them. `desired`'s mappings must not be mutated after a sync
        (the compiler builds new ones): an unchanged object is taken for unchanged contents.
        """
        return self._sync(desired, pod_ifindex, incremental=True)

    def _sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int], incremental: bool) -> SyncResult:
        last = self._written
        previous = last if incremental else None
        homes = self._encoder.homes
        self._written = None  # unknown until this sync completes
        encoding = self._encoder.encode(desired, pod_ifindex, self.host_endpoint_interfaces(desired))
        try:
            result, self._written = sync.apply_encoding(encoding, self._loaded.maps, previous)
        finally:
            if self._written is None:  # endpoints may still use a home this sync retired
                homes.forget_spares()
        # what the last sync wrote is freed by the idle work (prepare_spares), not in this pass
        self._retired = last
        if result.full:
            by_ifindex: dict[int, list[str]] = {}
            for pod, ifindex in pod_ifindex.items():
                by_ifindex.setdefault(ifindex, []).append(pod)
            pods = tuple(sorted(p for ep in result.full for p in by_ifindex.get(ep, [f"ifindex {ep}"])))
            map_name = min(result.full.values())  # deterministic when several maps overflowed
            raise MapFullError(map_name, pods[0] if pods else None, pods, result)
        if self._held is not None:
            self._attach_held()  # the replaced maps hold the desired state now
        elif not incremental:
            self.place_tail_programs()  # repairs a vg_tail slot changed behind our back
        return result

    def forget_written(self) -> None:
        """The maps were changed behind this object's back (tests clear them): the next sync
        reads them, and encodes everything afresh (no spare tier profile homes)."""
        self._written = None
        self._encoder = self._new_encoder()

    def _new_encoder(self) -> encoding.Encoder:
        enc = encoding.Encoder()
        enc.policy_capacity = int(self._loaded.maps["vg_policy"].max_entries)
        return enc

    def prepare_spares(self) -> int:
        """Idle work: one tier profile gets a spare copy of itself written (ProfileHomes.twins),
        so that the next change of its endpoints' policies writes only what changed. Returns
        how many were made (0: every profile has one, or no room, or the last sync failed).
        First frees what the last sync replaced (a 50k-pod encoding takes ms to free)."""
        self._retired = None
        written = self._written
        if written is None:
            return 0
        homes = self._encoder.homes
        twinned = self._encoder.with_twins(written.encoding)
        if twinned is None:
            return 0
        self._written = None
        try:
            # no endpoint reads a spare: established flows need no re-check (no revision bump)
            _, self._written = sync.apply_encoding(twinned, self._loaded.maps, written, bump=False)
        finally:
            if self._written is None:
                homes.forget_spares()
        return 1

    def host_endpoint_interfaces(self, desired: NodeDesired) -> dict[str, list[int]]:
        """The interfaces of this network namespace each host endpoint of `desired` is on: its
        interfaceName, every uplink for "*", else the interface holding one of its expectedIPs.
        Only uplinks carry the host endpoint programs (from_uplink / to_uplink)."""
        heps = getattr(desired, "host_endpoints", {})
        if not heps:
            return {}
        uplinks = self.find_uplinks()
        placed = {name: uplink.host_endpoint_ifindexes(hep, uplinks) for name, hep in heps.items()}
        for name in sorted(n for n, where in placed.items() if not where):
            if name not in self._unplaced_warned:
                self._unplaced_warned.add(name)
                hep = heps[name]
                log.warning(
                    "host endpoint %s is on no uplink of this node (interfaceName %s, expectedIPs %s; "
                    "uplinks: %s): it is not enforced",
                    name,
                    hep.interface,
                    ", ".join(hep.expected_ips) or "none",
                    ", ".join(sorted(uplinks.values())) or "none",
                )
        return placed

    def capacity(self) -> dict[str, int]:
        """max_entries of every sized map, as the kernel has it (a reused pin keeps its size)."""
        return {name: int(self._loaded.maps[name].max_entries) for name in SIZED_MAPS}

    def entry_counts(self) -> dict[str, int]:
        """Current number of entries of every sized map (walks the keys: ~1 us per entry)."""
        return {name: self._loaded.maps[name].count() for name in SIZED_MAPS}

    def dump(self) -> KernelState:
        return readback.dump(self._loaded.maps)

    def gc_conntrack(self, now_ns: int | None = None) -> GcResult:
        """Delete expired vg_ct / vg_frag entries (the agent calls this on every full resync).

        `now_ns` defaults to CLOCK_MONOTONIC, the clock of the deadlines (vg_now()). Walks the maps
        (~1-2 us per entry); expired entries are already misses for the programs, so this only
        frees room before the LRU would evict live flows to make it.
        """
        return readback.collect_expired(self._loaded.maps, time.monotonic_ns() if now_ns is None else now_ns)

    def sweep_links(self) -> int:
        """Remove the pins of tcx links whose interface was deleted (a pod's veth goes with its
        netns; nobody detaches it): how many (0 with clsact filters, which go with the veth)."""
        if not isinstance(self._attacher, tcx.TcxAttacher):
            return 0
        return len(self._attacher.sweep())

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        """(ep_id, reason, dir) -> (packets, bytes), summed over CPUs."""
        return readback.counters(self._loaded.maps)

    def close(self) -> None:
        """Release fds. Pinned maps and attached filters stay (restart reuses them)."""
        if self._events is not None:
            self._events.close()
            self._events = None
        self._loaded.close()

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def remove_pins(node: str, pin_root: str = "/sys/fs/bpf/vethguard") -> None:
        """Delete the node's pinned maps (lab down, tests). Attached programs keep their maps alive."""
        shutil.rmtree(loader.pin_dir_for(node, pin_root), ignore_errors=True)


def _implements_node_datapath(dp: Datapath) -> NodeDatapath:
    return dp  # mypy: Datapath has every method of the agent's datapath interface
