"""The ctypes mirrors in controller/datapath/maps.py match bpf/lib/structs.h byte for byte.

gcc compiles a tiny program that includes bpf/lib/maps.h (the map definitions are skipped
outside bcc) and prints sizeof/offsetof for every field the mirrors declare. No root needed.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.datapath import maps
from controller.datapath.sources import bpf_source_dir

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "lib/maps.h"', "int main(void) {"]
    for cname, cls in maps.C_STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in cls._fields_:
            lines.append(
                f'printf("{cname}.{fname} %zu %zu\\n", offsetof(struct {cname}, {fname}), '
                f"sizeof(((struct {cname} *)0)->{fname}));"
            )
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, ...]]:
    tmp = tmp_path_factory.mktemp("layout")
    src = tmp / "layout.c"
    exe = tmp / "layout"
    src.write_text(_c_program())
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-I", str(bpf_source_dir()), "-o", str(exe), str(src)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    layout: dict[str, tuple[int, ...]] = {}
    for line in out.splitlines():
        name, *nums = line.split()
        if nums[0] == "size":
            continue
        layout[name] = tuple(int(n) for n in nums)
    for line in out.splitlines():
        m = re.match(r"(\w+) size (\d+)", line)
        if m:
            layout[m.group(1)] = (int(m.group(2)),)
    return layout


@pytest.mark.parametrize("cname", sorted(maps.C_STRUCTS))
def test_every_struct_has_the_same_size_in_c_and_python(
    cname: str, c_layout: dict[str, tuple[int, ...]]
) -> None:
    assert ctypes.sizeof(maps.C_STRUCTS[cname]) == c_layout[cname][0]


@pytest.mark.parametrize("cname", sorted(maps.C_STRUCTS))
def test_every_field_has_the_same_offset_and_width_in_c_and_python(
    cname: str, c_layout: dict[str, tuple[int, ...]]
) -> None:
    cls = maps.C_STRUCTS[cname]
    for fname, *_ in cls._fields_:
        desc = getattr(cls, fname)
        assert (desc.offset, desc.size) == c_layout[f"{cname}.{fname}"], f"{cname}.{fname}"


def test_the_documented_sizes_hold() -> None:
    # docs/INTERNALS.md states these; a change is a map layout break for pinned maps.
    assert ctypes.sizeof(maps.EndpointInfo) == 36
    assert ctypes.sizeof(maps.PolicyKey) == 16
    assert ctypes.sizeof(maps.CtKey) == 44
    assert ctypes.sizeof(maps.CtValue) == 40


def test_the_reason_table_matches_reasons_h() -> None:
    text = (Path(bpf_source_dir()) / "lib" / "reasons.h").read_text()
    in_c = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*(\w+)\s*=\s*(\d+),", text, re.M)}
    assert in_c == {r.name: r.value for r in maps.Reason}


def test_the_constants_match_structs_h() -> None:
    text = (Path(bpf_source_dir()) / "lib" / "structs.h").read_text()
    defines = {
        m.group(1): m.group(2) for m in re.finditer(r"^#define (\w+)\s+(\S+(?: << \d+\))?)", text, re.M)
    }
    for name in ("EP_F_INGRESS_ISOLATED", "EP_F_EGRESS_ISOLATED", "EP_F_AUDIT", "EP_F_PENDING"):
        m = re.fullmatch(r"\(1 << (\d+)\)", defines[name])
        assert m is not None and 1 << int(m.group(1)) == getattr(maps, name), name
    for name in (
        "DIR_INGRESS",
        "DIR_EGRESS",
        "VERDICT_ALLOW",
        "CT_ALLOWED",
        "CT_DENIED",
        "CT_DEFERRED",
        "VG_MARK_SLOT_SHIFT",
        "POLICY_PLEN_ANY_PROTO",
        "POLICY_PLEN_ANY_PORT",
        "POLICY_PLEN_FULL",
    ):
        assert int(defines[name]) == getattr(maps, name), name
