"""The installed command finds its C sources wherever it runs from."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from controller.datapath.bpf_sources import bpf_source_dir

REPO = Path(__file__).resolve().parents[2]


def test_the_bpf_sources_resolve_from_the_package() -> None:
    src = bpf_source_dir()
    assert (src / "vethguard.c").is_file()
    assert (src / "lib" / "structs.h").is_file()


def test_the_installed_interpreter_finds_the_sources_outside_the_checkout() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from controller.datapath.bpf_sources import bpf_source_dir; print(bpf_source_dir())",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert (Path(out) / "vethguard.c").is_file()


def test_the_wheel_ships_the_c_sources_next_to_the_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("vethguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"controller/_bpf/{p.relative_to(REPO / 'bpf')}" for p in (REPO / "bpf").rglob("*.[ch]")}
    assert expected and expected <= names
