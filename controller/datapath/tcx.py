"""Attach the pod programs with tcx links (kernel 6.6+) instead of clsact + cls_bpf filters.

Why: a tcx hook runs its programs straight from the device's hook, without the classifier
layer (tc_run, tcf_classify, cls_bpf_classify) that clsact puts around every program: measured
(`python -m controller.bench.udp_profile`) that layer is ~2.3% of a same-node 64-byte datagram's
CPU time, as much as our two programs' own code. And a link is owned: `tc qdisc del dev X
clsact` by another tool removes clsact filters (enforcement gone, silently) but cannot touch a
link; only its fd or pin can detach it.

Where links live: each is pinned at <links_dir>/<netns inode>-<ifindex>-<ingress|egress>
(links_dir: the node's pin directory's `links/`; the netns inode because an ifindex is unique only
within a network namespace), so it outlives the process that made it (the CNI plugin exits right
after ADD; the agent restarts). Removing a pin releases the link and detaches the program, so
removing the node's pin directory (`vethguard uninstall`, lab teardown) detaches everything.
A link whose interface was deleted stays pinned, defunct (its ifindex reads 0): the next attach
to a reused ifindex replaces its pin, and sweep() removes such pins.

Ours on a hook: a link whose program is named like ours (from_pod / to_pod, whichever build) or
one this object holds. New links go first on the hook (BPF_F_BEFORE), where our prio-10 filter
ran before other tc filters; our verdict (TC_ACT_OK = TCX_PASS, TC_ACT_SHOT = TCX_DROP) ends the
hook as it ended clsact's classification. Attaching also removes our clsact filters from the
interface (an agent upgraded from a clsact-attaching version): the link runs first, then the
filter goes, so no packet passes unjudged. The default pod attacher (ClsactPodAttacher) does
the converse.

Which attacher a node uses: attach_mode(). clsact unless VETHGUARD_TC_ATTACH=tcx (the agent's
environment; the CNI plugins read their configuration's "tcAttach" first): the project's design
(DESIGN.md, Datapath) prescribes clsact, so tcx is opt-in; `vethguard bench datapath` measures
both side by side.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import ClassVar

from controller.core.errors import VethguardError
from controller.datapath import bpflinks, bpfsys
from controller.datapath.attach import FILTER_NAME, PARENT_EGRESS, PARENT_INGRESS, Attacher, filters_named

ATTACH_TYPE = {PARENT_INGRESS: bpflinks.BPF_TCX_INGRESS, PARENT_EGRESS: bpflinks.BPF_TCX_EGRESS}
HOOK_FILE = {PARENT_INGRESS: "ingress", PARENT_EGRESS: "egress"}
POD_PROGRAMS = {PARENT_INGRESS: "from_pod", PARENT_EGRESS: "to_pod"}  # program names (bcc: the function's)
LINKS_DIR = "links"
ATTACH_ENV = "VETHGUARD_TC_ATTACH"
MODES = ("tcx", "clsact")


@cache
def tcx_supported() -> bool:
    """Whether this kernel has tcx hooks: a read-only query of loopback's tcx ingress, which a
    kernel without tcx rejects (EINVAL)."""
    try:
        bpflinks.tcx_query(1, bpflinks.BPF_TCX_INGRESS)
    except OSError:
        return False
    return True


def attach_mode(wanted: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The pod attach mode: "clsact" (the default, as DESIGN.md's Datapath section prescribes) or
    "tcx"; `wanted` when given (the CNI configuration's tcAttach), else the environment's
    VETHGUARD_TC_ATTACH. tcx on a kernel without it is an error naming the setting, never a
    silent fallback."""
    env = os.environ if environ is None else environ
    source = "tcAttach" if wanted else ATTACH_ENV
    mode = (wanted or env.get(ATTACH_ENV, "")).strip().lower() or "clsact"
    if mode not in MODES:
        raise VethguardError(f"{source}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "tcx" and not tcx_supported():
        raise VethguardError(f"{source}=tcx: this kernel has no tcx hooks (6.6 or later has)")
    return mode


def links_dir_of(pin_dir: Path) -> Path:
    return pin_dir / LINKS_DIR


def netns_inode() -> int:
    """The calling thread's network namespace (an ifindex is unique only within one)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def pin_name(netns: int, ifindex: int, hook_file: str) -> str:
    """<netns inode>-<ifindex>-<ingress|egress>: one pin per hook of an interface."""
    return f"{netns}-{ifindex}-{hook_file}"


def _open_link(path: Path) -> int | None:
    try:
        return bpfsys.obj_get(str(path))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass
class TcxAttacher:
    """Our programs on the tcx hooks of `programs` (hook -> program name; default: both pod
    hooks). links_dir None: the links are held by this object's fds (benchmarks), not pinned.
    legacy_names: our clsact filters this attacher replaces and removes ({}: leaves filters be)."""

    links_dir: Path | None = None
    programs: dict[str, str] = field(default_factory=lambda: dict(POD_PROGRAMS))
    legacy_names: dict[str, str] = field(default_factory=lambda: dict(FILTER_NAME))
    # (netns inode, ifindex, hook) -> link fd: an ifindex names an interface only within its netns
    held: dict[tuple[int, int, str], int] = field(default_factory=dict)
    kind: ClassVar[str] = "tcx-link"

    @property
    def names(self) -> dict[str, str]:
        return self.programs

    def _pin(self, ifindex: int, hook: str) -> Path | None:
        if self.links_dir is None:
            return None
        return self.links_dir / pin_name(netns_inode(), ifindex, HOOK_FILE[hook])

    def attach(self, ifindex: int, from_pod_fd: int, to_pod_fd: int) -> None:
        self.attach_programs(ifindex, {PARENT_INGRESS: from_pod_fd, PARENT_EGRESS: to_pod_fd})

    def attach_programs(self, ifindex: int, fds: dict[str, int]) -> None:
        """Each hook's link runs fds[hook] (created first on the hook, or its program swapped
        atomically); then our clsact filters, if any, are removed."""
        for hook, fd in fds.items():
            try:
                self._attach_one(ifindex, hook, fd)
            except OSError as exc:
                where = f"ifindex {ifindex}"
                if exc.errno == errno.ENODEV:
                    raise VethguardError(f"no interface with {where} in this network namespace") from exc
                what = f"{self.programs[hook]} to the tcx {HOOK_FILE[hook]} hook"
                raise VethguardError(f"cannot attach {what} of {where}: {exc}") from exc
        self._drop_legacy(ifindex)

    def _current(self, ifindex: int, hook: str) -> int | None:
        """An fd of the link of ours already on this hook (ours to keep: pinned here or held)."""
        key = (netns_inode(), ifindex, hook)
        if key in self.held:
            return os.dup(self.held[key])
        pin = self._pin(ifindex, hook)
        if pin is None:
            return None
        fd = _open_link(pin)
        if fd is None:
            return None
        info = bpflinks.link_info(fd)
        if (
            info.type == bpflinks.BPF_LINK_TYPE_TCX
            and info.tcx_ifindex == ifindex
            and info.tcx_attach_type == ATTACH_TYPE[hook]
        ):
            return fd
        os.close(fd)  # defunct (its interface is gone; this ifindex was reused) or not a tcx link
        _unlink(pin)
        return None

    def _attach_one(self, ifindex: int, hook: str, prog_fd: int) -> None:
        for _ in range(3):  # a concurrent attacher may pin first: then update its link
            link = self._current(ifindex, hook)
            if link is not None:
                try:
                    if bpflinks.link_info(link).prog_id != bpfsys.prog_id(prog_fd).id:
                        bpflinks.link_update(link, prog_fd)
                finally:
                    os.close(link)
                return
            link = bpflinks.tcx_link_create(prog_fd, ifindex, ATTACH_TYPE[hook])
            pin = self._pin(ifindex, hook)
            if pin is None:
                self.held[(netns_inode(), ifindex, hook)] = link
                return
            try:
                pin.parent.mkdir(parents=True, exist_ok=True)
                bpfsys.obj_pin(link, str(pin))
                return
            except OSError as exc:
                bpflinks.link_detach(link)  # not pinned: ours must not run twice
                if exc.errno != errno.EEXIST:
                    raise
            finally:
                os.close(link)
        raise VethguardError(f"ifindex {ifindex}: the {HOOK_FILE[hook]} link keeps changing under us")

    def _drop_legacy(self, ifindex: int) -> None:
        """Remove our clsact filters from ifindex (the link already runs): an upgrade from the
        clsact attacher. One raw netlink dump per hook when there are none (a fresh veth)."""
        if self.legacy_names and filters_named(ifindex, self.legacy_names):
            Attacher(names=dict(self.legacy_names)).detach(ifindex)

    def ours(self, ifindex: int, hook: str) -> list[bpflinks.Attached]:
        """Our programs on ifindex's tcx hook, in run order (none: no interface)."""
        try:
            found = bpflinks.tcx_query(ifindex, ATTACH_TYPE[hook])
        except OSError:
            return []
        here = netns_inode()
        mine = {bpflinks.link_info(fd).id for key, fd in self.held.items() if key == (here, ifindex, hook)}
        out = []
        for a in found:
            if not a.link_id:
                continue
            if a.link_id in mine:
                out.append(a)
                continue
            try:
                name = bpflinks.prog_name_by_id(a.prog_id)
            except OSError:
                continue  # gone meanwhile
            if name == self.programs[hook]:
                out.append(a)
        return out

    def hooks_with_ours(self, ifindex: int) -> list[str]:
        return [hook for hook in self.programs if self.ours(ifindex, hook)]

    def attached(self, ifindex: int) -> bool:
        """Our programs run on every hook of ifindex: by our links, or else by our clsact filters
        (an agent of before attached them; the next attach converts them)."""
        if all(self.ours(ifindex, hook) for hook in self.programs):
            return True
        legacy = self.legacy_names
        return bool(legacy) and len(filters_named(ifindex, legacy)) == len(legacy)

    def attached_prog_ids(self, ifindex: int) -> dict[str, int | None]:
        """{"from_pod": id, "to_pod": id} of the programs our links run (None: no link), or of
        our clsact filters' when there is no link of ours."""
        out: dict[str, int | None] = {}
        for key, hook in (("from_pod", PARENT_INGRESS), ("to_pod", PARENT_EGRESS)):
            ours = self.ours(ifindex, hook) if hook in self.programs else []
            out[key] = ours[0].prog_id if len(ours) == 1 else None
        if all(v is None for v in out.values()):
            return Attacher(names=dict(self.legacy_names)).attached_prog_ids(ifindex)
        return out

    def detach(self, ifindex: int) -> None:
        """Detach our links from ifindex (pinned, held, or found by program name) and remove their
        pins; our clsact filters too. Idempotent."""
        self.detach_links(ifindex)
        self._drop_legacy(ifindex)

    def detach_links(self, ifindex: int) -> None:
        """detach() without the clsact filters."""
        for hook in self.programs:
            held = self.held.pop((netns_inode(), ifindex, hook), None)
            if held is not None:
                _detach_fd(held)
            pin = self._pin(ifindex, hook)
            if pin is not None:
                fd = _open_link(pin)
                if fd is not None:
                    info = bpflinks.link_info(fd)
                    if info.tcx_ifindex in (ifindex, 0):
                        _detach_fd(fd)
                    else:
                        os.close(fd)
                    _unlink(pin)
            for a in self.ours(ifindex, hook):
                try:
                    _detach_fd(bpflinks.link_fd_by_id(a.link_id))
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        what = f"our link {a.link_id} from ifindex {ifindex}"
                        raise VethguardError(f"cannot detach {what}: {exc}") from exc

    def sweep(self) -> list[str]:
        """Remove the pins of defunct links (their interface is gone); returns their names."""
        if self.links_dir is None or not self.links_dir.is_dir():
            return []
        removed = []
        for pin in sorted(self.links_dir.iterdir()):
            fd = _open_link(pin)
            if fd is None:
                continue
            try:
                defunct = bpflinks.link_info(fd).tcx_ifindex == 0
            finally:
                os.close(fd)
            if defunct:
                _unlink(pin)
                removed.append(pin.name)
        return removed


def _detach_fd(fd: int) -> None:
    try:
        bpflinks.link_detach(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOLINK, errno.EINVAL):  # already detached (interface gone)
            raise
    finally:
        os.close(fd)


class ClsactPodAttacher(Attacher):
    """The default pod attacher: clsact filters (controller/datapath/attach.py) that, once they
    run, take our tcx links off the interface (a node switched back from tcx). One query per hook."""

    def attach_programs(self, ifindex: int, fds: dict[str, int]) -> None:
        super().attach_programs(ifindex, fds)
        if tcx_supported():
            links = TcxAttacher()
            if links.hooks_with_ours(ifindex):
                links.detach_links(ifindex)


PodAttacher = ClsactPodAttacher | TcxAttacher


def pod_attacher(
    pin_dir: Path | None, ledger_file: Path | None = None, mode: str | None = None
) -> PodAttacher:
    """The attacher of the pod programs for attach_mode(): tcx links pinned under pin_dir's
    links/ (None: held by the returned object), else clsact filters (recording created clsacts
    in ledger_file)."""
    if (mode or attach_mode()) == "tcx":
        return TcxAttacher(links_dir=None if pin_dir is None else links_dir_of(pin_dir))
    return ClsactPodAttacher(ledger_file=ledger_file)
