"""The build key that decides whether a restarted agent may reuse the programs pinned by an earlier
compile (controller/datapath/build.py): it changes with the source, a compiler flag, the kernel
release, bcc's version and the map layout, and is stable otherwise. No root, no bcc import."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from controller.datapath import abi, build, loader

PIN_DIR = Path("/sys/fs/bpf/vethguard/node-1")
TEXT = "int x;\n"
CFLAGS = ('-DPIN_DIR="/sys/fs/bpf/vethguard/node-1"', "-I/src", "-Wno-unused-function")
LAYOUT = dict(loader.EXPECTED_LAYOUT)


def key(
    text: str = TEXT,
    cflags: tuple[str, ...] = CFLAGS,
    release: str = "6.1.0-56-amd64",
    bcc: str = "0.26.0",
    layout: dict[str, tuple[int, int]] | None = None,
) -> str:
    return build.build_key(text, cflags, release, bcc, LAYOUT if layout is None else layout)


def test_the_same_inputs_give_the_same_key() -> None:
    assert key() == key()
    assert len(key()) == 64 and int(key(), 16) >= 0


def test_the_key_changes_when_the_source_changes() -> None:
    assert key(text="int x; \n") != key()


def test_the_key_changes_when_a_compiler_flag_changes_or_is_added() -> None:
    assert key(cflags=(*CFLAGS, "-DVG_MAX_POLICY=64")) != key()
    assert key(cflags=('-DPIN_DIR="/sys/fs/bpf/vethguard/node-2"', *CFLAGS[1:])) != key()


def test_the_key_changes_when_the_kernel_release_or_bcc_changes() -> None:
    assert key(release="6.1.0-57-amd64") != key()
    assert key(bcc="0.29.1") != key()


def test_the_key_changes_when_a_map_layout_changes() -> None:
    wider = {**LAYOUT, "vg_policy": (ctypes.sizeof(abi.PolicyKey), ctypes.sizeof(abi.PolicyValue) + 8)}
    assert key(layout=wider) != key()
    assert key(layout={**LAYOUT, "vg_new": (4, 4)}) != key()


def test_the_key_does_not_depend_on_the_order_the_layout_is_listed_in() -> None:
    assert key(layout=dict(reversed(list(LAYOUT.items())))) == key()


def test_a_node_s_key_is_stable_and_follows_its_extra_and_environment_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(loader.ENV_EXTRA_CFLAGS, raising=False)
    plain = build.node_build_key(PIN_DIR)
    assert build.node_build_key(PIN_DIR) == plain
    assert build.node_build_key(PIN_DIR, ("-DVG_UPGRADE_MARKER=2",)) != plain
    assert build.node_build_key(PIN_DIR.with_name("node-2")) != plain
    monkeypatch.setenv(loader.ENV_EXTRA_CFLAGS, "-DVG_MAX_POLICY=64")
    assert build.node_build_key(PIN_DIR) != plain


def test_a_node_s_key_follows_the_kernel_release(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = build.node_build_key(PIN_DIR)
    real = build.os.uname()

    class Other:
        release = real.release + "-other"

    monkeypatch.setattr(build.os, "uname", lambda: Other)
    assert build.node_build_key(PIN_DIR) != plain


def test_a_build_dir_is_named_by_the_key_s_first_16_hex_digits() -> None:
    k = key()
    assert build.build_dir(PIN_DIR, k) == PIN_DIR / f"build-{k[:16]}"


def test_bcc_s_version_is_read_without_importing_bcc() -> None:
    had = "bcc" in sys.modules
    version = loader.bcc_version()
    assert version != "" and ("bcc" in sys.modules) == had
