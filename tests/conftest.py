"""Suite-wide hooks.

Root-only tests (kernel programs, labs) skip on a machine that cannot run them. CI sets
VETHGUARD_REQUIRE_ROOT=1: there a skipped root test is a failure, because CI is exactly the
machine that must run them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

REQUIRE_ROOT = os.environ.get("VETHGUARD_REQUIRE_ROOT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    needs_root = item.get_closest_marker("root") or item.get_closest_marker("lab")
    # an expected failure (xfail) is reported as skipped too; it is not a root test that did not run
    if REQUIRE_ROOT and report.skipped and needs_root and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"root test skipped under VETHGUARD_REQUIRE_ROOT=1: {reason}"
