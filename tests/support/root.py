"""The one rule for tests that need the machine: root, and for the datapath bcc and bpffs.

Mark a test (or module, with `pytestmark`):
  root  needs root (network namespaces, raw sockets, iptables, bpffs)
  lab   builds a network-namespace lab: needs root
  bcc   compiles or loads the datapath: needs root, a working bcc and bpffs at /sys/fs/bpf
Such a test is skipped, with the reason, on a machine that lacks what it needs. CI sets
VETHGUARD_REQUIRE_ROOT=1: there a skipped test with one of these markers is a failure, because
CI is exactly the machine that must run them. tests/conftest.py installs the two hooks below.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator
from typing import Any

import pytest

REQUIRE_ROOT = os.environ.get("VETHGUARD_REQUIRE_ROOT") == "1"
MARKERS = ("root", "lab", "bcc")


@functools.cache
def _bcc_problem() -> str | None:
    try:
        from controller.datapath.loader import import_bcc

        import_bcc()
    except Exception as e:
        return f"bcc is not usable here: {e}"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted at /sys/fs/bpf"
    return None


def missing(*, bcc: bool = False) -> str | None:
    """Why a test needing root (and, with `bcc`, bcc and bpffs) cannot run here; None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets, bpf)"
    return _bcc_problem() if bcc else None


def needs_machine(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in MARKERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not needs_machine(item):
            continue
        reason = missing(bcc=item.get_closest_marker("bcc") is not None)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    # an expected failure (xfail) is reported as skipped too; it is not a root test that did not run
    if REQUIRE_ROOT and report.skipped and needs_machine(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"root test skipped under VETHGUARD_REQUIRE_ROOT=1: {reason}"
