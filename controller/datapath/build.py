"""Compile the tc programs in a short-lived child process, and reuse a build whose inputs did not
change: the agent never imports bcc (LLVM: ~1.3 s per compile and ~30 MB of heap kept for the
process's life), and a restart whose programs did not change compiles nothing.

What is where, under a node's pin dir `<pin_root>/<node>/` (bpffs):

    vg_<map>                    the maps; bcc pins them on the first compile, later compiles (and
                                every build) reuse the pinned ones (loader.EXPECTED_LAYOUT)
    prog_<name>                 the programs the newest load uses, one per loader.PROGRAMS: stable
                                names for bpftool, `vethguard` debug commands and vethguard-cni
                                (loader.pin_programs re-pins them on every load)
    build-<key16>/prog_<name>   the programs of one build (loader.BUILD_PROGRAMS: the attached ones
                                and to_pod's tail-call targets), pinned by the compiling child
    build-<key16>/done          a symlink whose target is the full build key, made last: the build
                                is complete (bpffs holds no regular files; it does hold symlinks)
    replaced_<map>              a map of another layout set aside while a compile replaces it
                                (loader.replacing_incompatible)

The build key is sha256 over the inlined source text (loader.inline_sources), the full compiler
flags (loader.program_cflags: PIN_DIR, `extra_cflags`, $VETHGUARD_EXTRA_CFLAGS), the kernel
release, bcc's version (read from its files, not imported) and loader.EXPECTED_LAYOUT; <key16> is
its first 16 hex digits. load() reuses `build-<key16>` when it is complete and its programs use
exactly the maps pinned in the pin dir now (bpf_prog_info.map_ids against the ids of the pins:
a map replaced or deleted since makes the build stale); otherwise it runs

    python -m controller.datapath.build --pin-dir <pin dir> --key <key> [--cflag=<flag> ...]

which compiles with bcc against the pinned maps (loader.compile_programs), pins the programs in
`build-<key16>/`, makes `done` and exits. Its stderr (compiler and verifier output) is passed
through to the agent's, and a failure is a VethguardError naming the compiler's message; the
previous version's pins (maps, prog_<name>, its build dir) stay as they were. After a successful
load every other build dir is removed (attached filters keep their programs alive).

`vg_tail` (a prog array, pinned like the maps: a prog array's slots are emptied when no pin or
process holds it any more) holds to_pod's tail-call targets (loader.TAIL_PROGRAMS).
place_tail_programs() puts the build's into it before anything of the build is attached: a to_pod
still attached from the previous build then calls this build's judge, as the new to_pod will.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.core.errors import VethguardError
from controller.core.log import get_logger
from controller.datapath import abi, bpfsys, codecs, loader
from controller.datapath.bpf_sources import bpf_source_dir

log = get_logger("vethguard.datapath.build")  # structlog: the agent's log shows whether it compiled

ENTRY = "vethguard.c"
BUILD_PREFIX = "build-"
DONE = "done"
STDERR_TAIL = 6000  # characters of the child's stderr a compile failure's message carries


def build_key(
    text: str, cflags: Sequence[str], release: str, bcc_version: str, layout: Mapping[str, tuple[int, int]]
) -> str:
    """sha256 (hex) over everything a compiled program depends on besides the maps themselves."""
    doc = {
        "source": text,
        "cflags": list(cflags),
        "kernel": release,
        "bcc": bcc_version,
        "layout": sorted([name, list(sizes)] for name, sizes in layout.items()),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def node_build_key(pin_dir: Path, extra_cflags: tuple[str, ...] = (), src_dir: Path | None = None) -> str:
    """The build key of this version's programs compiled against the maps pinned in pin_dir."""
    src_dir = src_dir or bpf_source_dir()
    return build_key(
        loader.inline_sources(src_dir / ENTRY, src_dir),
        loader.program_cflags(pin_dir, extra_cflags, src_dir),
        os.uname().release,
        loader.bcc_version(),
        loader.EXPECTED_LAYOUT,
    )


def build_dir(pin_dir: Path, key: str) -> Path:
    return pin_dir / f"{BUILD_PREFIX}{key[:16]}"


def pinned_map_ids(pin_dir: Path) -> dict[str, int] | None:
    """name -> kernel id of every map of abi.MAP_NAMES pinned in pin_dir; None when one is missing."""
    out = {}
    for name in abi.MAP_NAMES:
        try:
            fd = bpfsys.obj_get(str(pin_dir / name))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        try:
            out[name] = bpfsys.map_id(fd)
        finally:
            os.close(fd)
    return out


def _close_all(fds: Mapping[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def open_build(pin_dir: Path, key: str) -> dict[str, int] | None:
    """name -> fd of the programs of build `key` when it is complete and they use exactly the maps
    pinned in pin_dir now; None when there is no such build (compile one)."""
    where = build_dir(pin_dir, key)
    try:
        if os.readlink(where / DONE) != key:
            return None
    except OSError:
        return None  # never built, or a child died before finishing
    maps = pinned_map_ids(pin_dir)
    if maps is None:
        log.info("build stale: a map is not pinned any more", build=where.name, pin_dir=str(pin_dir))
        return None
    fds: dict[str, int] = {}
    try:
        for name in loader.BUILD_PROGRAMS:
            fds[name] = bpfsys.obj_get(str(where / f"prog_{name}"))
        used = {i for fd in fds.values() for i in bpfsys.prog_map_ids(fd)}
    except OSError as e:
        _close_all(fds)
        log.info("build unusable: compiling again", build=where.name, error=str(e))
        return None
    if used != {i for name, i in maps.items() if name not in abi.AGENT_ONLY_MAPS}:
        _close_all(fds)
        gone = sorted(name for name, i in maps.items() if i not in used)
        log.info("build stale: its programs do not use the maps pinned now", build=where.name, maps=gone)
        return None
    return fds


def compile_in_child(pin_dir: Path, key: str, extra_cflags: tuple[str, ...] = ()) -> float:
    """Run `python -m controller.datapath.build` for build `key`; returns the seconds it took.

    Its stderr is passed through to ours; a failure raises VethguardError with its tail."""
    cmd = [
        sys.executable,
        "-m",
        "controller.datapath.build",
        "--pin-dir",
        str(pin_dir),
        "--key",
        key,
        *(f"--cflag={flag}" for flag in extra_cflags),
    ]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # where the child imports this code from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    started = time.monotonic()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    took = time.monotonic() - started
    err = proc.stderr.decode(errors="replace")
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
    if proc.returncode != 0:
        tail = err.strip()[-STDERR_TAIL:] or "no output"
        raise VethguardError(
            f"compiling {ENTRY} in a child process failed (exit {proc.returncode}, {took:.1f} s): {tail}"
        )
    return took


def pin_build(pin_dir: Path, key: str, extra_cflags: tuple[str, ...] = ()) -> Path:
    """The child's work: compile with bcc against the maps pinned in pin_dir, pin the programs in
    build-<key16>/ and make `done` last. Returns the build dir."""
    where = build_dir(pin_dir, key)
    shutil.rmtree(where, ignore_errors=True)  # an incomplete or stale build of the same key
    b, fds = loader.compile_programs(ENTRY, pin_dir, loader.BUILD_PROGRAMS, extra_cflags)
    try:
        where.mkdir()
        for name, fd in fds.items():
            bpfsys.obj_pin(fd, str(where / f"prog_{name}"))
        os.symlink(key, where / DONE)
    except OSError as e:
        raise VethguardError(f"cannot pin the programs of the build at {where}: {e}") from e
    finally:
        b.cleanup()
    return where


def remove_other_builds(pin_dir: Path, keep: Path) -> None:
    """Remove every build dir but `keep` (programs still attached stay alive in their filters)."""
    for old in pin_dir.glob(f"{BUILD_PREFIX}*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class Loaded:
    """The program set of one node, opened from its build's pins."""

    pin_dir: Path
    prog_fds: dict[str, int]
    build_dir: Path
    compiled: bool  # this load ran the compiling child (False: the build was reused)
    maps: dict[str, bpfsys.BpfMap] = field(default_factory=dict)
    replaced: tuple[str, ...] = ()  # pinned maps of another layout this load replaced (new, empty)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        _close_all(self.prog_fds)
        self.prog_fds.clear()


def tail_program_ids(tail: bpfsys.BpfMap) -> dict[int, int | None]:
    """vg_tail's slots: slot -> id of the program in it (None: empty)."""
    out: dict[int, int | None] = {}
    for slot in range(tail.max_entries):
        raw = tail.lookup(codecs.u32_key(slot))  # a prog array reads back its programs' ids
        out[slot] = None if raw is None else int.from_bytes(raw, sys.byteorder)
    return out


def place_tail_programs(loaded: Loaded) -> tuple[int, ...]:
    """Put the build's tail-call targets (loader.TAIL_PROGRAMS) into vg_tail where a slot holds
    another program or none; returns the slots written (none when all were in place).

    Every to_pod attached, of this build or (during an upgrade) of the previous one, then calls
    this build's judge. Datapath calls this before it attaches anything of this build, and on
    every full sync (a slot emptied or overwritten behind its back is put back)."""
    tail = loaded.maps["vg_tail"]
    current = tail_program_ids(tail)
    written = []
    for slot, name in sorted(loader.TAIL_PROGRAMS.items()):
        fd = loaded.prog_fds[name]
        if current.get(slot) != bpfsys.prog_id(fd).id:
            tail.update(codecs.u32_key(slot), codecs.u32_key(fd))  # a prog array takes the fd
            written.append(slot)
    if written:
        log.info("tail-call targets placed", build=loaded.build_dir.name, slots=written)
    return tuple(written)


def load(node: str, pin_root: str = "/sys/fs/bpf/vethguard", extra_cflags: tuple[str, ...] = ()) -> Loaded:
    """Open the node's programs from a reusable build, else compile one in a child process; pin
    them as <pin_dir>/prog_<name>; open the pinned maps."""
    pin_dir = loader.pin_dir_for(node, pin_root)
    pin_dir.mkdir(parents=True, exist_ok=True)
    loader.recover_set_aside(pin_dir)
    key = node_build_key(pin_dir, extra_cflags)
    where = build_dir(pin_dir, key)
    fds = None if loader.incompatible_pins(pin_dir) else open_build(pin_dir, key)
    replaced: tuple[str, ...] = ()
    compiled = fds is None
    if fds is None:
        with loader.replacing_incompatible(pin_dir) as replaced:
            took = compile_in_child(pin_dir, key, extra_cflags)
        fds = open_build(pin_dir, key)
        if fds is None:
            raise VethguardError(f"the compiling child left no usable build at {where}")
        log.info("programs compiled in a child process", build=where.name, seconds=round(took, 2))
    else:
        log.info("programs reused: nothing compiled", build=where.name)
    loaded = Loaded(pin_dir=pin_dir, prog_fds=fds, build_dir=where, compiled=compiled, replaced=replaced)
    try:
        loader.pin_programs(pin_dir, fds)
        for name in abi.MAP_NAMES:
            if name not in abi.RING_NAMES:
                loaded.maps[name] = bpfsys.BpfMap.open_pinned(str(pin_dir / name))
    except BaseException:
        loaded.close()
        raise
    remove_other_builds(pin_dir, where)
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.datapath.build",
        description="Compile vethguard's tc programs with bcc against the maps pinned in PIN_DIR and pin "
        "them in PIN_DIR/build-<key16>/ (the agent runs this in a child process; see the module docstring).",
    )
    parser.add_argument("--pin-dir", required=True, help="the node's pin dir (<pin root>/<node>)")
    parser.add_argument(
        "--key", required=True, help="the build key the parent computed; refused if this build's differs"
    )
    parser.add_argument(
        "--cflag",
        action="append",
        default=[],
        help="an extra compiler flag (repeatable; write --cflag=-DX=1); $VETHGUARD_EXTRA_CFLAGS is added too",
    )
    args = parser.parse_args(argv)
    pin_dir, extra = Path(args.pin_dir), tuple(args.cflag)
    try:
        key = node_build_key(pin_dir, extra)
        if key != args.key:
            raise VethguardError(
                f"build key {key[:16]} differs from the parent's {args.key[:16]}: the sources, flags "
                "or bcc changed meanwhile"
            )
        pin_build(pin_dir, key, extra)
    except VethguardError as e:
        print(f"vethguard: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
