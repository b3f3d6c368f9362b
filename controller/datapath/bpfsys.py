"""bpf(2) through ctypes: map lookups, updates, iteration, pinning and object info on any map or
program fd (pinned or bcc-created), without bcc's compiled table types."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import ClassVar

# ---------------------------------------------------------------------------------------------
# bpf(2) through ctypes: bcc's table API needs its own compiled types; these work on any fd.

# bpf(2)'s number differs by architecture (arch/*/syscall tables; arm64 and riscv64 use the
# generic table). An architecture missing here gets a clear error on the first call.
SYS_BPF_BY_MACHINE = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "ppc64le": 361,
    "s390x": 351,
    "i686": 357,
    "armv7l": 386,
}
SYS_BPF: int | None = SYS_BPF_BY_MACHINE.get(platform.machine())
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    pass


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(2); raise BpfError(errno) on failure."""
    if SYS_BPF is None:
        raise BpfError(errno.ENOSYS, f"bpf(2): no syscall number known for {platform.machine()}")
    ret = _libc.syscall(SYS_BPF, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


class _MapElemAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    """bpf_attr's `batch` member (BPF_MAP_*_BATCH)."""

    _fields_: ClassVar = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),  # in: elements given; out: elements done
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class BatchError(BpfError):
    """A batch operation stopped at element `done` (the ones before it were done)."""

    def __init__(self, err: int, message: str, done: int) -> None:
        super().__init__(err, message)
        self.done = done


class _ObjGetAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_: ClassVar = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class BpfMapInfo(ctypes.Structure):
    """The leading fields of struct bpf_map_info (the kernel accepts a shorter buffer)."""

    _fields_: ClassVar = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class BpfProgInfo(ctypes.Structure):
    """The leading fields of struct bpf_prog_info (UAPI, include/uapi/linux/bpf.h), up to
    verified_insns (kernel 5.16+; 0 before): enough to name a program, list its maps (map_ids: a
    user pointer to nr_map_ids u32s the kernel fills) and read how much of the verifier's budget
    its load took. Fields this code does not read are there for the offsets."""

    _fields_: ClassVar = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ProgId:
    """A loaded program: kernel id (unique while loaded) and tag (hash of its instructions)."""

    id: int
    tag: str  # 16 hex digits, as `bpftool prog` and tc show it


def prog_id(fd: int) -> ProgId:
    info = BpfProgInfo()
    obj_info(fd, info)
    return ProgId(id=int(info.id), tag=bytes(info.tag).hex())


def prog_verified_insns(fd: int) -> int:
    """Instructions the verifier processed to load the program (its budget: 1,000,000)."""
    info = BpfProgInfo()
    obj_info(fd, info)
    return int(info.verified_insns)


def prog_map_ids(fd: int) -> tuple[int, ...]:
    """Ids of the maps a loaded program uses (bpf_prog_info.nr_map_ids / map_ids): the kernel fills
    at most nr_map_ids of them into the u32 array map_ids points to, and says how many there are."""
    info = BpfProgInfo()
    obj_info(fd, info)
    while True:
        n = int(info.nr_map_ids)
        ids = (ctypes.c_uint32 * max(n, 1))()
        info = BpfProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
        obj_info(fd, info)
        if int(info.nr_map_ids) <= n:  # not grown meanwhile (a program's maps are fixed at load)
            return tuple(int(i) for i in ids[: int(info.nr_map_ids)])


def map_id(fd: int) -> int:
    info = BpfMapInfo()
    obj_info(fd, info)
    return int(info.id)


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program fd at path (which must not exist)."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(raw), bpf_fd=fd)
    bpf(BPF_OBJ_PIN, attr)


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns a new fd."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(raw))
    return bpf(BPF_OBJ_GET, attr)


def obj_info(fd: int, info: ctypes.Structure) -> None:
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


@cache
def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value array length the kernel uses."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


class BpfMap:
    """A map fd with its geometry; values of per-CPU maps are lists of per-CPU bytes."""

    def __init__(self, fd: int, owned: bool = False) -> None:
        self.fd = fd
        self._owned = owned
        info = BpfMapInfo()
        obj_info(fd, info)
        self.type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.name = info.name.decode()
        self.percpu = info.type in _PERCPU_TYPES
        self._slot = (self.value_size + 7) & ~7  # per-CPU values are 8-byte aligned
        self.no_batch = False  # callers set it once the kernel refused this map's batch operations

    @classmethod
    def open_pinned(cls, path: str) -> BpfMap:
        return cls(obj_get(path), owned=True)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buf(self) -> ctypes.Array[ctypes.c_char]:
        n = self._slot * possible_cpus() if self.percpu else self.value_size
        return ctypes.create_string_buffer(n)

    def _check_key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(key)} bytes, map wants {self.key_size}")

    def lookup_raw(self, key: bytes) -> bytes | None:
        self._check_key(key)
        kb = ctypes.create_string_buffer(key, len(key))
        vb = self._value_buf()
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb), value=ctypes.addressof(vb))
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return vb.raw

    def lookup(self, key: bytes) -> bytes | None:
        """Value bytes of a regular map (the first CPU's slot of a per-CPU map)."""
        raw = self.lookup_raw(key)
        return None if raw is None else raw[: self.value_size]

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        raw = self.lookup_raw(key)
        if raw is None:
            return None
        return [raw[i * self._slot : i * self._slot + self.value_size] for i in range(possible_cpus())]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._check_key(key)
        if self.percpu:
            value = b"".join(value.ljust(self._slot, b"\0") for _ in range(possible_cpus()))
        elif len(value) != self.value_size:
            raise ValueError(f"{self.name}: value is {len(value)} bytes, map wants {self.value_size}")
        kb = ctypes.create_string_buffer(key, len(key))
        vb = ctypes.create_string_buffer(value, len(value))
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb), value=ctypes.addressof(vb), flags=flags)
        bpf(BPF_MAP_UPDATE_ELEM, attr)

    def update_batch(self, keys: Sequence[bytes], values: Sequence[bytes], flags: int = BPF_ANY) -> None:
        """update() of every (key, value) in order, in one bpf(2) call (BPF_MAP_UPDATE_BATCH: the
        kernel runs them one by one and stops at the first failure). Raises BatchError naming how
        many were done; EINVAL or ENOTSUPP (errno 524) with none done: the map has no batch op.
        Not for per-CPU maps."""
        if self.percpu:
            raise ValueError(f"{self.name}: update_batch does not take per-CPU values")
        for k in keys:
            self._check_key(k)
        for v in values:
            if len(v) != self.value_size:
                raise ValueError(f"{self.name}: value is {len(v)} bytes, map wants {self.value_size}")
        self._batch(BPF_MAP_UPDATE_BATCH, keys, b"".join(values), flags)

    def delete_batch(self, keys: Sequence[bytes]) -> None:
        """delete() of every key in order, in one bpf(2) call; a missing key stops the batch
        there (BatchError, errno ENOENT)."""
        for k in keys:
            self._check_key(k)
        self._batch(BPF_MAP_DELETE_BATCH, keys, None, 0)

    def _batch(self, cmd: int, keys: Sequence[bytes], values: bytes | None, flags: int) -> None:
        if not keys:
            return
        kb = ctypes.create_string_buffer(b"".join(keys), len(keys) * self.key_size)
        vb = None if values is None else ctypes.create_string_buffer(values, len(values))
        attr = _BatchAttr(
            keys=ctypes.addressof(kb),
            values=0 if vb is None else ctypes.addressof(vb),
            count=len(keys),
            map_fd=self.fd,
            elem_flags=flags,
        )
        try:
            bpf(cmd, attr)
        except BpfError as e:
            done = int(attr.count)
            raise BatchError(e.errno or 0, f"{self.name}: batch stopped at {done}: {e.strerror}", done) from e

    def delete(self, key: bytes) -> bool:
        """Delete a key; False if it was not there."""
        self._check_key(key)
        kb = ctypes.create_string_buffer(key, len(key))
        attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb))
        try:
            bpf(BPF_MAP_DELETE_ELEM, attr)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def key_list(self) -> list[bytes]:
        """All keys, collected first so deleting while iterating is safe."""
        out: list[bytes] = []
        nb = ctypes.create_string_buffer(self.key_size)
        attr = _MapElemAttr(map_fd=self.fd, key=0, value=ctypes.addressof(nb))
        while True:
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    break
                raise
            out.append(nb.raw)
            kb = ctypes.create_string_buffer(nb.raw, self.key_size)
            attr = _MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kb), value=ctypes.addressof(nb))
        return out

    def count(self) -> int:
        """Number of keys (one GET_NEXT_KEY per key, two buffers swapped: nothing collected)."""
        bufs = (ctypes.create_string_buffer(self.key_size), ctypes.create_string_buffer(self.key_size))
        attr = _MapElemAttr(map_fd=self.fd, key=0, value=ctypes.addressof(bufs[0]))
        n = 0
        while True:
            try:
                bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return n
                raise
            n += 1
            attr.key = attr.value  # the key just returned is where the next walk starts
            attr.value = ctypes.addressof(bufs[n % 2])

    def items(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for k in self.key_list():
            v = self.lookup(k)
            if v is not None:  # may vanish between the two calls (LRU eviction)
                out[k] = v
        return out

    def clear(self) -> int:
        """Delete every entry (an array's cannot be deleted: each is set to zeros). Returns how
        many were deleted or zeroed."""
        if self.type in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY):
            zero = bytes(self.value_size)
            for i in range(self.max_entries):
                self.update(i.to_bytes(4, sys.byteorder), zero)
            return self.max_entries
        n = 0
        for k in self.key_list():
            n += self.delete(k)
        return n
