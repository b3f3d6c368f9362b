"""Locate the C sources: shipped inside the wheel as controller/_bpf, or bpf/ in a checkout."""

from __future__ import annotations

from pathlib import Path


def bpf_source_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # controller/
    for candidate in (here / "_bpf", here.parent / "bpf"):
        if (candidate / "vethguard.c").is_file():
            return candidate
    raise FileNotFoundError(
        f"vethguard BPF sources not found (looked in {here / '_bpf'} and {here.parent / 'bpf'}); "
        "reinstall the vethguard package"
    )
