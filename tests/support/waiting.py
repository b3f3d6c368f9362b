"""The one polling wait of the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    cond: Callable[[], object], timeout: float = 5.0, what: str = "condition", *, interval: float = 0.01
) -> None:
    """Return as soon as `cond()` is true; raise AssertionError naming `what` if it is still
    false `timeout` seconds from now (it is checked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    if not cond():
        raise AssertionError(f"{what}: not within {timeout} s")
