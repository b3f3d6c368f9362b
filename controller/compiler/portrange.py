"""Split an inclusive port range into the minimal set of aligned power-of-two blocks.

The policy map is an LPM trie keyed on the destination port (network byte order, so the
prefix covers the high bits first). A range [lo, hi] therefore becomes a list of
(port, plen) prefixes, where plen 16 is an exact port and plen 0 is "any port".
"""

from __future__ import annotations

PORT_BITS = 16
MAX_PORT = (1 << PORT_BITS) - 1


def range_to_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Return the minimal list of (port, plen) aligned blocks whose union is exactly [lo, hi].

    Greedy from the low end: at each step take the largest block that starts at `lo`
    (alignment bounded by the lowest set bit of `lo`) and does not overshoot `hi`. This is
    the classic range-to-CIDR construction and is minimal; it yields at most 2*16-2 blocks.
    """
    if not (0 <= lo <= hi <= MAX_PORT):
        raise ValueError(f"invalid port range [{lo}, {hi}]")
    out: list[tuple[int, int]] = []
    cur = lo
    while cur <= hi:
        # Largest size allowed by alignment of `cur` (0 is aligned to everything).
        size = cur & -cur if cur else 1 << PORT_BITS
        while cur + size - 1 > hi:
            size >>= 1
        out.append((cur, PORT_BITS - (size.bit_length() - 1)))
        cur += size
    return out
