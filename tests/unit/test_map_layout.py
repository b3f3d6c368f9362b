"""The ctypes mirrors and constants in controller/datapath/abi.py and controller/core/ match
bpf/lib/structs.h byte for byte.

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

from controller.core import identities, verdicts
from controller.datapath import abi
from controller.datapath.bpf_sources import bpf_source_dir

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "lib/maps.h"', "int main(void) {"]
    for cname, cls in abi.C_STRUCTS.items():
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


@pytest.mark.parametrize("cname", sorted(abi.C_STRUCTS))
def test_every_struct_has_the_same_size_in_c_and_python(
    cname: str, c_layout: dict[str, tuple[int, ...]]
) -> None:
    assert ctypes.sizeof(abi.C_STRUCTS[cname]) == c_layout[cname][0]


@pytest.mark.parametrize("cname", sorted(abi.C_STRUCTS))
def test_every_field_has_the_same_offset_and_width_in_c_and_python(
    cname: str, c_layout: dict[str, tuple[int, ...]]
) -> None:
    cls = abi.C_STRUCTS[cname]
    for fname, *_ in cls._fields_:
        desc = getattr(cls, fname)
        assert (desc.offset, desc.size) == c_layout[f"{cname}.{fname}"], f"{cname}.{fname}"


def test_the_documented_sizes_hold() -> None:
    # docs/INTERNALS.md states these; a change is a map layout break for pinned maps.
    assert ctypes.sizeof(abi.EndpointInfo) == 40
    assert ctypes.sizeof(abi.PolicyKey) == 16
    assert ctypes.sizeof(abi.PolicyValue) == 44
    assert ctypes.sizeof(abi.CtKey) == 44
    assert ctypes.sizeof(abi.CtValue) == 40


def test_the_reason_table_matches_reasons_h() -> None:
    text = (Path(bpf_source_dir()) / "lib" / "reasons.h").read_text()
    in_c = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*(\w+)\s*=\s*(\d+),", text, re.M)}
    assert in_c == {r.name: r.value for r in abi.Reason}


def test_the_reason_table_of_internals_md_lists_every_reason_with_its_code() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "INTERNALS.md").read_text()
    table = text.split("### Reasons (one table", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d+) \| (\w+) \|", table, re.M)}
    assert rows == {r.name: r.value for r in abi.Reason}


def _c_defines(text: str) -> dict[str, int]:
    """Numeric #defines of a header: literals, (1 << n), A | B of earlier ones and x - 1."""
    values: dict[str, int] = {}
    for m in re.finditer(r"^#define (\w+)[ \t]+([^/\n]+?)\s*(?:/\*.*)?$", text, re.M):
        expr = re.sub(r"(0x[0-9a-fA-F]+|\d+)[uU]", r"\1", m.group(2))
        expr = re.sub(r"\b([A-Z_][A-Z0-9_]*)\b", lambda n: str(values[n.group(1)]), expr)
        if re.fullmatch(r"[0-9a-fA-Fx()<|\- ]+", expr):
            values[m.group(1)] = eval(expr)  # digits, shifts, ors and minus only
    return values


def test_every_constant_of_structs_h_has_one_python_definition_with_its_value() -> None:
    defines = _c_defines((Path(bpf_source_dir()) / "lib" / "structs.h").read_text())
    assert len(defines) >= 25, sorted(defines)  # the parse above did not silently stop
    homes = (abi, verdicts, identities)
    for name, value in defines.items():
        if name.startswith("VG_") and name.endswith("_H"):
            continue  # include guard
        owners = [m.__name__ for m in homes if name in vars(m)]
        assert len(owners) == 1, f"{name} defined in {owners or 'no Python module'}"
        mod = next(m for m in homes if name in vars(m))
        assert getattr(mod, name) == value, name
