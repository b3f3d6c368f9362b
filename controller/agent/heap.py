"""When the agent's cyclic garbage collector scans the whole heap (pure policy over `gc`).

After every pass the objects alive (the compiled model, the caches, the last sync's record) go
to the permanent generation (gc.freeze, O(1)): the collector's own full collections then scan
only what later passes allocated. Without it a full collection scanned the whole model (~100 ms
at 10k pods: `python -m controller.bench.control_plane --worker 10000:500:1000:200` put one in
the slowest ClusterNetworkPolicy add, 229 ms of which 104 ms were that collection), inside
whichever event's pass it fell. Frozen objects are still freed by reference counting the moment
nothing uses them (the model has no reference cycles); what a cycle holds is freed by the full
collection that runs every FULL_COLLECT_SECONDS after a full resync (unfreeze, collect, freeze),
a pass no event waits for.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

FULL_COLLECT_SECONDS = 300.0


class Collector:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.next_full = clock() + FULL_COLLECT_SECONDS
        self.full_collections = 0

    def after_pass(self, full: bool) -> None:
        now = self.clock()
        if full and now >= self.next_full:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
            self.next_full = now + FULL_COLLECT_SECONDS
        gc.freeze()
