"""Suite-wide hooks: the root/bcc rule of tests/support/root.py (skip a test marked `root`,
`lab` or `bcc` on a machine that cannot run it; fail it instead under VETHGUARD_REQUIRE_ROOT=1)."""

from __future__ import annotations

from tests.support.root import pytest_collection_modifyitems, pytest_runtest_makereport

__all__ = ["pytest_collection_modifyitems", "pytest_runtest_makereport"]
