"""Compiling in a child process and reusing the pinned build (controller/datapath/build.py): a first
load compiles, a restart whose programs did not change compiles nothing and runs the same programs,
other flags or a map deleted since compile again, a failed compile leaves the pins as they were,
and the agent's process never imports bcc."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.core.errors import VethguardError
from controller.datapath import bpfsys, build, loader
from controller.datapath.node import Datapath

pytestmark = [pytest.mark.root, pytest.mark.bcc]

REPO = Path(__file__).resolve().parents[2]
UPGRADE = ("-DVG_UPGRADE_MARKER=2",)


def _progs(d: Datapath) -> dict[str, bpfsys.ProgId]:
    return {name: d.prog_id(name) for name in loader.BUILD_PROGRAMS}


def _pinned(pin_dir: Path) -> dict[str, int]:
    """name -> kernel id of every map and program pinned directly in pin_dir."""
    out = {}
    for entry in sorted(pin_dir.iterdir()):
        if entry.is_dir():
            continue
        fd = bpfsys.obj_get(str(entry))
        try:
            out[entry.name] = bpfsys.prog_id(fd).id if entry.name.startswith("prog_") else bpfsys.map_id(fd)
        finally:
            os.close(fd)
    return out


def test_a_first_load_compiles_in_a_child_and_a_restart_compiles_nothing_and_runs_the_same_programs(
    node: str, opened: Callable[..., Datapath]
) -> None:
    first = opened(node)
    assert first.compiled
    assert first.build_dir.parent == first.pin_dir and first.build_dir.name.startswith("build-")
    key = os.readlink(first.build_dir / "done")
    assert first.build_dir.name == f"build-{key[:16]}"
    assert {p.name for p in first.build_dir.iterdir()} == {
        "done",
        *(f"prog_{p}" for p in loader.BUILD_PROGRAMS),
    }
    again = opened(node)
    assert not again.compiled
    assert again.build_dir == first.build_dir
    assert _progs(again) == _progs(first), "the same kernel programs (ids and tags), not a new load"
    for name in loader.PROGRAMS:
        fd = bpfsys.obj_get(str(again.pin_dir / f"prog_{name}"))
        try:
            assert bpfsys.prog_id(fd) == again.prog_id(name), "the stable pins name the programs in use"
        finally:
            os.close(fd)


def test_other_extra_cflags_compile_again_and_the_older_build_dir_is_removed(
    node: str, opened: Callable[..., Datapath]
) -> None:
    first = opened(node)
    upgraded = opened(node, UPGRADE)
    assert upgraded.compiled and upgraded.build_dir != first.build_dir
    assert _progs(upgraded)["to_pod"].tag != _progs(first)["to_pod"].tag, "other code, other programs"
    assert [p.name for p in upgraded.pin_dir.glob("build-*")] == [upgraded.build_dir.name]
    assert not opened(node, UPGRADE).compiled


def test_a_deleted_pinned_map_makes_the_build_stale_and_the_new_programs_use_the_new_map(
    node: str, opened: Callable[..., Datapath]
) -> None:
    first = opened(node)
    old_id = bpfsys.map_id(first.maps["vg_counters"].fd)
    (first.pin_dir / "vg_counters").unlink()
    again = opened(node)
    assert again.compiled, "its programs use a map no longer pinned: compiled again"
    new_id = bpfsys.map_id(again.maps["vg_counters"].fd)
    assert new_id != old_id
    for name in loader.BUILD_PROGRAMS:
        used = bpfsys.prog_map_ids(again.prog_fd(name))
        assert old_id not in used
    assert new_id in bpfsys.prog_map_ids(again.prog_fd("to_pod"))
    assert not opened(node).compiled, "and that build is reused in turn"


def test_a_failed_compile_raises_the_compiler_s_message_and_leaves_the_pins_as_they_were(
    node: str, opened: Callable[..., Datapath]
) -> None:
    # (An unknown flag is no failure: bcc's clang prints "error: unknown argument" and compiles.)
    first = opened(node)
    before = _pinned(first.pin_dir)
    builds = sorted(p.name for p in first.pin_dir.glob("build-*"))
    with pytest.raises(VethguardError, match="in a child process failed") as failed:
        Datapath(node=node, extra_cflags=("-DVG_SYNTAX_ERROR",))
    assert "VG_SYNTAX_ERROR: this build was asked to fail" in str(failed.value)
    assert _pinned(first.pin_dir) == before, "maps and program pins untouched"
    assert sorted(p.name for p in first.pin_dir.glob("build-*")) == builds
    assert not opened(node).compiled, "the previous build is still whole"


AGENT_LOAD = textwrap.dedent(
    """
    import sys
    from controller.agent import cli, preflight
    from controller.agent.loop import default_datapath_factory
    from controller.agent.metrics import build_labels

    assert not [p for p in preflight.check_bcc(preflight.Environment())], "bcc is found"
    labels = build_labels()
    dp = default_datapath_factory(sys.argv[2], sys.argv[1])
    dp.open_events(lambda e: None)
    dp.poll_events(10)
    dp.close()
    print("compiled", dp.compiled, "bcc", labels["bcc"], "imported", "bcc" in sys.modules)
    """
)


def test_an_agent_s_load_compiles_without_importing_bcc_into_its_own_process(node: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", AGENT_LOAD, "/sys/fs/bpf/vethguard", node],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    last = out.stdout.splitlines()[-1]  # after the agent's log lines
    assert last.split() == ["compiled", "True", "bcc", loader.bcc_version(), "imported", "False"]
    assert "programs compiled in a child process" in out.stdout, "the agent's log says it compiled"
    builds = list(loader.pin_dir_for(node, "/sys/fs/bpf/vethguard").glob(f"{build.BUILD_PREFIX}*"))
    assert len(builds) == 1 and (builds[0] / build.DONE).is_symlink(), "the child pinned its build"
