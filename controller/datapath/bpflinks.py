"""bpf(2) for BPF links and attachment queries, through ctypes (controller/datapath/bpfsys.py has
the syscall itself): create a tcx link, swap its program, detach it, read what it is attached to,
and list the programs and links attached to an interface's tcx hook.

The attribute structs are the leading fields of union bpf_attr's anonymous structs for these
commands (include/uapi/linux/bpf.h, 6.6+); the kernel accepts an attribute as long as every byte
past the fields it knows is zero, and ctypes zero-fills.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import ClassVar

from controller.datapath.bpfsys import (
    BPF_LINK_CREATE,
    BPF_LINK_DETACH,
    BPF_LINK_GET_FD_BY_ID,
    BPF_LINK_UPDATE,
    BPF_PROG_GET_FD_BY_ID,
    BPF_PROG_QUERY,
    BpfProgInfo,
    bpf,
    obj_info,
)

# enum bpf_attach_type (6.6+)
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
# enum bpf_link_type
BPF_LINK_TYPE_TCX = 11
# mprog attach flags: BPF_F_BEFORE without a relative program or link puts the new one first
BPF_F_BEFORE = 1 << 3
BPF_F_REPLACE = 1 << 2  # BPF_LINK_UPDATE: only if the link still runs old_prog_fd


class _LinkCreateAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),  # tcx: union { relative_fd; relative_id; }
        ("_pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
    ]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("link_fd", ctypes.c_uint32),
        ("new_prog_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    ]


class _LinkDetachAttr(ctypes.Structure):
    _fields_: ClassVar = [("link_fd", ctypes.c_uint32)]


class _GetFdByIdAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _QueryAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
    ]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info up to its tcx member (the union starts 8-byte aligned at 16)."""

    _fields_: ClassVar = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("tcx_ifindex", ctypes.c_uint32),  # 0 once the interface is gone (a defunct link)
        ("tcx_attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint64 * 2),
    ]


def tcx_link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = BPF_F_BEFORE) -> int:
    """A tcx link running prog_fd on ifindex's hook (first, by default); returns the link fd. The
    link lives while an fd or a pin holds it."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type, flags=flags)
    return bpf(BPF_LINK_CREATE, attr)


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the link's program atomically (no packet sees neither)."""
    bpf(BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=prog_fd))


def link_detach(link_fd: int) -> None:
    """Take the link's program off its hook now, whoever else holds the link."""
    bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd))


def link_info(link_fd: int) -> BpfLinkInfo:
    info = BpfLinkInfo()
    obj_info(link_fd, info)
    return info


def link_fd_by_id(link_id: int) -> int:
    return bpf(BPF_LINK_GET_FD_BY_ID, _GetFdByIdAttr(id=link_id))


def prog_name_by_id(prog_id: int) -> str:
    fd = bpf(BPF_PROG_GET_FD_BY_ID, _GetFdByIdAttr(id=prog_id))
    try:
        info = BpfProgInfo()
        obj_info(fd, info)
        return bytes(info.name).split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Attached:
    """One program on a tcx hook, in run order: its id and the link holding it (0: attached
    without a link, by BPF_PROG_ATTACH)."""

    prog_id: int
    link_id: int


def tcx_query(ifindex: int, attach_type: int) -> list[Attached]:
    """The programs on ifindex's tcx hook, in the order they run."""
    while True:
        probe = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type)
        bpf(BPF_PROG_QUERY, probe)
        n = int(probe.count)
        if n == 0:
            return []
        progs = (ctypes.c_uint32 * n)()
        links = (ctypes.c_uint32 * n)()
        attr = _QueryAttr(
            target_ifindex=ifindex,
            attach_type=attach_type,
            prog_ids=ctypes.addressof(progs),
            link_ids=ctypes.addressof(links),
            count=n,
        )
        try:
            bpf(BPF_PROG_QUERY, attr)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC: one was attached between the two calls
                continue
            raise
        return [Attached(int(progs[i]), int(links[i])) for i in range(int(attr.count))]
