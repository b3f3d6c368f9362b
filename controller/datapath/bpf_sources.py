"""Locate the C sources: shipped inside the wheel as controller/_bpf, or bpf/ in a checkout (and
an earlier commit's, for benchmarks and upgrade tests that load a previous version's programs)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def sources_at(rev: str) -> Iterator[Path]:
    """The bpf/ sources of commit `rev` of the git checkout this package runs from, in a temp dir."""
    repo = bpf_source_dir().parent
    with tempfile.TemporaryDirectory(prefix="vg-bpf-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", rev, "bpf"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {rev} bpf in {repo}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp) / "bpf"
