"""Benchmark-only BPF programs (bpf/bench_parts.c), compiled against a node's pinned maps: the
pass-through floor every cost is compared with and the established-path parts. The agent never
loads them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from controller.datapath import loader
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
