"""CIDR identities (stage 5 of the compiler): one identity per policy prefix (every ipBlock
CIDR and except, and the exact per-pod prefixes egress named ports need), with per-family
tables for longest-prefix match and ipBlock carving.

An ipBlock {C, E} selects the CIDR identities of every policy prefix P of C's family with
P ⊆ C and P ⊄ e for every e in E; an address carries the CIDR identity of its longest
containing policy prefix (so ipBlocks match pod and node addresses too).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.compiler.identity import allocate_cidr_identities
from controller.compiler.model import IPBlock
from controller.core.net import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_prefix(addr: IPAddress) -> IPNetwork:
    """addr/32 or addr/128: equal to, and hashed like, ip_network(f"{addr}/32"), built without
    what the standard constructor gives every /32 and /128 (a `hosts` closure in the instance,
    and a second copy of the address): the ipcache holds one per pod address, and that was
    60% of its size (4.9 MB for 10,000 addresses; 1.9 MB built this way)."""
    template = _HOST_TEMPLATES[addr.version]
    net = type(template).__new__(type(template))
    # attributes set one by one, in the constructor's order: the instance keeps them in its
    # compact inline values (vars() would give it a dict of its own)
    object.__setattr__(net, "network_address", addr)
    object.__setattr__(net, "netmask", template.netmask)
    object.__setattr__(net, "_prefixlen", addr.max_prefixlen)
    return net


_HOST_TEMPLATES: dict[int, IPNetwork] = {
    4: ipaddress.ip_network("0.0.0.0/32"),
    6: ipaddress.ip_network("::/128"),
}


class PrefixTable:
    """Policy prefixes of one family, for subset queries and longest-prefix match."""

    def __init__(self, bits: int, prefixes: Mapping[IPNetwork, int]) -> None:
        self.bits = bits
        rows = sorted(
            (int(n.network_address), int(n.broadcast_address), n.prefixlen, ident)
            for n, ident in prefixes.items()
        )
        self.rows = rows
        self.starts = [r[0] for r in rows]
        self.by_len: dict[int, dict[int, int]] = {}
        for start, _end, plen, ident in rows:
            self.by_len.setdefault(plen, {})[start] = ident
        self.lens_desc = sorted(self.by_len, reverse=True)

    def longest(self, addr: int) -> int:
        """CIDR identity of the longest prefix containing addr, 0 if none."""
        for plen in self.lens_desc:
            mask = ((1 << plen) - 1) << (self.bits - plen) if plen else 0
            ident = self.by_len[plen].get(addr & mask)
            if ident is not None:
                return ident
        return 0

    def carve(self, block: IPBlock) -> set[int]:
        """Identities of prefixes P with P ⊆ cidr and P ⊄ every except."""
        c = block.cidr
        lo, hi, cplen = int(c.network_address), int(c.broadcast_address), c.prefixlen
        ex = [(int(e.network_address), int(e.broadcast_address)) for e in block.excepts]
        out: set[int] = set()
        i = bisect.bisect_left(self.starts, lo)
        rows = self.rows
        while i < len(rows) and rows[i][0] <= hi:
            start, end, plen, ident = rows[i]
            i += 1
            if plen < cplen:
                continue
            if any(es <= start and end <= ee for es, ee in ex):
                continue
            out.add(ident)
        return out


@dataclass(frozen=True)
class CidrTables:
    prefixes: frozenset[IPNetwork]
    cidr_identity: dict[IPNetwork, int]
    tables: dict[int, PrefixTable]  # by IP version
    # ipBlock -> identities it selects (a function of the tables only: filled on use, shared
    # with the next compilation while the prefixes are the same)
    _blocks: dict[IPBlock, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, prefixes: frozenset[IPNetwork]) -> CidrTables:
        cidr_identity = allocate_cidr_identities(prefixes)
        tables = {
            4: PrefixTable(32, {n: i for n, i in cidr_identity.items() if n.version == 4}),
            6: PrefixTable(128, {n: i for n, i in cidr_identity.items() if n.version == 6}),
        }
        return cls(prefixes, cidr_identity, tables)

    def update(self, prefixes: frozenset[IPNetwork]) -> CidrTables:
        """The tables of `prefixes`: these while the prefix set is the same."""
        return self if prefixes == self.prefixes else CidrTables.build(prefixes)

    def longest(self, addr: IPAddress) -> int:
        """CIDR identity of `addr`'s longest containing policy prefix, 0 if none."""
        return self.tables[addr.version].longest(int(addr))

    def block_identities(self, block: IPBlock) -> frozenset[int]:
        hit = self._blocks.get(block)
        if hit is None:
            hit = frozenset(self.tables[block.cidr.version].carve(block))
            self._blocks[block] = hit
        return hit
