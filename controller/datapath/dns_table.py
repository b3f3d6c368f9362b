"""What pods learned from DNS answers, with the names they asked for: vg_dns_learned joined with
vg_dns_names (bpf/lib/structs.h). The agent's DNS thread writes both (NameIds gives a name its
key); `vethguard bpf dns`, explain and the agent's flow records read them (LearnedTable).

Names are keyed by a number the agent hands out in order, not by a hash: two names never share
a key, so a debug view never shows another name than the one the pod asked for. A restarted
agent continues after the largest key it finds pinned.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from controller.datapath import codecs, dns_codecs
from controller.datapath.dns_codecs import LearnedEntry

NAMES_KEPT = 4096  # names whose key the agent remembers (an older name gets a new key when asked again)
NAME_CACHE = 16384  # names a reader keeps decoded before it starts over
_ID_LIMIT = 1 << 32


class MapLike(Protocol):
    def lookup(self, key: bytes) -> bytes | None: ...

    def items(self) -> dict[bytes, bytes]: ...


class WritableMap(MapLike, Protocol):
    def update(self, key: bytes, value: bytes) -> None: ...


class NameIds:
    """The key of each name in vg_dns_names, written there before an entry refers to it."""

    def __init__(self, names: WritableMap) -> None:
        self.names = names
        self.ids: OrderedDict[str, int] = OrderedDict()
        pinned = {
            int.from_bytes(kb, "little"): dns_codecs.decode_name(vb) for kb, vb in names.items().items()
        }
        for name_id in sorted(pinned)[-NAMES_KEPT:]:
            self.ids[pinned[name_id]] = name_id
        self.next_id = max(pinned, default=0) + 1

    def id_of(self, name: str) -> int:
        """The name's key, (re)written into vg_dns_names (which keeps the recently used: LRU)."""
        name_id = self.ids.get(name)
        if name_id is None:
            name_id = self.next_id
            self.next_id = self.next_id % (_ID_LIMIT - 1) + 1  # 1 .. 2^32-1: 0 means "no name"
            self.ids[name] = name_id
            while len(self.ids) > NAMES_KEPT:
                self.ids.popitem(last=False)
        self.ids.move_to_end(name)
        self.names.update(*dns_codecs.encode_name(name_id, name))
        return name_id


class LearnedTable:
    """Reads of vg_dns_learned with the asked names filled in from vg_dns_names (None when that
    map is not given, the entry has no name or the name was evicted)."""

    def __init__(self, learned: MapLike, names: MapLike | None = None) -> None:
        self.learned = learned
        self.names = names
        self._cache: dict[int, str | None] = {}

    def _name(self, name_id: int) -> str | None:
        if not name_id or self.names is None:
            return None
        if name_id not in self._cache:
            if len(self._cache) >= NAME_CACHE:
                self._cache.clear()
            raw = self.names.lookup(codecs.u32_key(name_id))
            if raw is None:
                return None  # (not cached: the agent may write it in a moment)
            self._cache[name_id] = dns_codecs.decode_name(raw)
        return self._cache[name_id]

    def _named(self, e: LearnedEntry) -> LearnedEntry:
        return LearnedEntry(e.ep_id, e.address, e.identity, e.expires_ns, e.name_id, self._name(e.name_id))

    def lookup(self, ep_id: int, address: str) -> LearnedEntry | None:
        """What endpoint `ep_id` learned about `address` (expired or not), or None."""
        kb = dns_codecs.encode_learned_key(ep_id, address)
        vb = self.learned.lookup(kb)
        return None if vb is None else self._named(dns_codecs.decode_learned(kb, vb))

    def entries(self) -> list[LearnedEntry]:
        """Every entry, by endpoint and address."""
        names = {} if self.names is None else self.names.items()
        out = []
        for kb, vb in self.learned.items().items():
            e = dns_codecs.decode_learned(kb, vb)
            raw = names.get(codecs.u32_key(e.name_id)) if e.name_id else None
            name = dns_codecs.decode_name(raw) if raw is not None else None
            out.append(LearnedEntry(e.ep_id, e.address, e.identity, e.expires_ns, e.name_id, name))
        return sorted(out, key=lambda e: (e.ep_id, e.address))
