"""Benchmark-only BPF programs (bpf/bench_parts.c), compiled against a node's pinned maps: the
pass-through floor every cost is compared with and the established-path parts; and an earlier
commit's bpf/ sources (sources_at), whose programs benchmarks and upgrade tests load beside this
version's. The agent never loads them."""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from controller.datapath import loader
from controller.datapath.bpf_sources import bpf_source_dir
from controller.datapath.node import Datapath

PASSTHROUGH = "passthrough"
ENTRY = "bench_parts.c"


@contextmanager
def bench_programs(dp: Datapath, names: tuple[str, ...] = (PASSTHROUGH,)) -> Iterator[dict[str, int]]:
    """name -> program fd of `names` from bench_parts.c, using dp's pinned maps; unloaded on exit."""
    b, fds = loader.compile_programs(ENTRY, dp.pin_dir, names, dp.extra_cflags)
    try:
        yield fds
    finally:
        b.cleanup()


@contextmanager
def sources_at(rev: str) -> Iterator[Path]:
    """The bpf/ sources of commit `rev` of the git checkout this package runs from, in a temp dir."""
    repo = bpf_source_dir().parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "bpf"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {rev} bpf in {repo}: {archive.stderr.decode().strip()}")
    with (
        tempfile.TemporaryDirectory(prefix="vg-bpf-") as tmp,
        tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar,
    ):
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: refuse links and paths out of tmp
            tar.extractall(tmp, filter="data")
        else:  # our own repository's files
            tar.extractall(tmp)
        yield Path(tmp) / "bpf"


BEFORE, AFTER = "before", "after"


@contextmanager
def before_and_after(
    dp: Datapath, before_rev: str, names: tuple[str, ...]
) -> Iterator[dict[str, dict[str, int]]]:
    """{"before": {name: fd}, "after": {name: fd}}: the programs `names` of vethguard.c compiled
    from commit before_rev's bpf/ and from this checkout's, both against dp's pinned maps (so they
    run on the same entries); unloaded on exit."""
    with ExitStack() as stack:
        old_src = stack.enter_context(sources_at(before_rev))
        fds: dict[str, dict[str, int]] = {}
        for version, src in ((BEFORE, old_src), (AFTER, None)):
            prog, got = loader.compile_programs("vethguard.c", dp.pin_dir, names, dp.extra_cflags, src)
            stack.callback(prog.cleanup)
            fds[version] = got
        yield fds
