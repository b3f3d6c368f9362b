"""bpf(2)'s syscall number by architecture: the values of the kernel's syscall tables, this
machine's entry, and a clear error (never another syscall) where the number is unknown; the
struct bpf_prog_info mirror's offsets."""

from __future__ import annotations

import ctypes
import errno
import platform

import pytest

from controller.datapath import bpfsys

# From the kernel's tables: arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl,
# include/uapi/asm-generic/unistd.h (__NR_bpf 280: arm64, riscv64), arch/arm/tools/syscall.tbl,
# arch/powerpc/kernel/syscalls/syscall.tbl, arch/s390/kernel/syscalls/syscall.tbl.
KERNEL = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "ppc64le": 361,
    "s390x": 351,
    "i686": 357,
    "armv7l": 386,
}


def test_the_table_holds_the_kernel_s_numbers_for_each_architecture() -> None:
    for machine, number in KERNEL.items():
        assert bpfsys.SYS_BPF_BY_MACHINE[machine] == number, machine
    assert bpfsys.SYS_BPF_BY_MACHINE["arm64"] == 280  # the name some systems report for aarch64


def test_this_machine_uses_its_own_architecture_s_number() -> None:
    assert KERNEL[platform.machine()] == bpfsys.SYS_BPF


def test_an_unknown_architecture_fails_with_enosys_instead_of_calling_another_syscall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bpfsys, "SYS_BPF", None)
    monkeypatch.setattr(platform, "machine", lambda: "mips64")
    with pytest.raises(bpfsys.BpfError) as failed:
        bpfsys.bpf(bpfsys.BPF_OBJ_GET, ctypes.c_uint64(0))  # type: ignore[arg-type]
    assert failed.value.errno == errno.ENOSYS and "mips64" in str(failed.value)


def test_the_prog_info_mirror_puts_each_field_read_at_its_uapi_offset() -> None:
    """struct bpf_prog_info (include/uapi/linux/bpf.h): the kernel fills fields by offset, so a
    shifted mirror reads another field silently."""
    info = bpfsys.BpfProgInfo
    offsets = {
        "id": 4,
        "tag": 8,
        "nr_map_ids": 52,
        "map_ids": 56,
        "name": 64,
        "netns_dev": 88,
        "btf_id": 128,
        "prog_tags": 184,
        "run_time_ns": 192,
        "verified_insns": 216,
    }
    assert {name: getattr(info, name).offset for name in offsets} == offsets
