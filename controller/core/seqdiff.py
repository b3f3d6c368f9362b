"""Comparing two sequences that mostly hold the same objects in the same order (pure).

The model builder (an informer's object list against the previous build's) and the sync
encoder (an ipcache's prefixes against the previous encoding's) both need the runs of equal
items without Python code per item: list slices compare in C, testing identity before __eq__.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def equal_run(new: Sequence[Any], i: int, old: Sequence[Any], j: int, limit: int, step: int = 1) -> int:
    """How many positions from new[i] and old[j] on (step 1) or back (step -1: new[i - 1 - x]
    against old[j - 1 - x]) hold equal items, at most `limit`. Compares slices (C loops, an
    identity test before any __eq__), doubling their length, then bisects the unequal one."""
    lo, width = 0, 16
    while lo < limit:
        hi = min(limit, lo + width)
        if _slices_equal(new, i, old, j, lo, hi, step):
            lo, width = hi, width * 2
            continue
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _slices_equal(new, i, old, j, lo, mid, step):
                lo = mid
            else:
                hi = mid
        return lo
    return lo


def _slices_equal(
    new: Sequence[Any], i: int, old: Sequence[Any], j: int, lo: int, hi: int, step: int
) -> bool:
    if step > 0:
        return new[i + lo : i + hi] == old[j + lo : j + hi]
    return new[i - hi : i - lo] == old[j - hi : j - lo]
