"""Where each tier profile lives in vg_policy: its *home* (the pseudo endpoint id its keys carry),
and the spare homes that make a changed profile cheap to write (docs/INTERNALS.md, "Tier
profile homes").

The compiler names a profile by a hash of what its entries are a function of (its *logical*
id, stages/tiers.py), so a profile whose endpoints' set of selecting policies changes gets a new
logical id, and written under that id it is written whole: at 50,000 pods a ClusterNetworkPolicy
that selects a node's pods re-keys profiles of 24,000 entries each. A profile is never changed
in place while an endpoint uses it (a new flow would be judged by half of the old and half of the
new one); it is written beside, the endpoints switch with one write each, then the old one goes.
(A profile whose logical id stays, patched by the compiler, is patched in place as before.)

So the old one does not go: a home no endpoint uses any more is kept, content and all, as a
*spare*. A new logical profile derived from one whose content a spare holds (the compiler's
ProfileChange: `base` patched on some keys) is written into that spare: only the keys the
derivations touched, then the endpoints switch to it. Lineage is followed two steps (new <- a
live profile <- a spare's content): a ClusterNetworkPolicy added and deleted again, or added
after another one was deleted, is written as what it changed. A spare is only taken in a sync
after the one that retired it, so no endpoint can still point at it. While the agent is idle,
`twins()` gives a live profile without one a spare copy of itself (the first re-key of it is
then cheap too). Spares are bounded: at most as many as live profiles, and no more entries
than the map's capacity less everything else it holds and one largest profile (the headroom any
re-key needs): the encoder fits them after each placement (`fit()`), so spares never make a
sync find the map full.

Pure bookkeeping over bytes: the Encoder places profiles with `place()`, and the debug tools
read homes from the kernel (an endpoint's tier_profile), never from the compiler's ids.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue, ProfileChange
from controller.core.verdicts import TIER_PROFILE_BIT
from controller.datapath import codecs

Entries = Mapping[PolicyEntryKey, PolicyEntryValue]


@dataclass(frozen=True, eq=False)
class Home:
    """A profile as written: at pseudo endpoint id `home`, `entries` encoded as `encoded`."""

    home: int
    entries: Entries
    encoded: Mapping[bytes, bytes]
    derived: ProfileChange | None = None  # how the compiler derived `entries`, if it did


@dataclass(frozen=True, eq=False)
class Placement:
    """One encoding's profiles: logical id -> home id, home id -> its vg_policy entries (spares
    included), and for homes written by patching what they held: (that, the keys touched)."""

    homes: dict[int, int]
    policy: dict[int, Mapping[bytes, bytes]]
    touched: dict[int, tuple[Mapping[bytes, bytes], frozenset[bytes]]]


class _Values:
    """Value bytes per value object (profile entries share a few value objects)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[PolicyEntryValue, bytes]] = {}

    def __call__(self, v: PolicyEntryValue) -> bytes:
        got = self._by_id.get(id(v))
        if got is None or got[0] is not v:
            got = self._by_id[id(v)] = (v, codecs.encode_policy_value(v))
        return got[1]


def encode_full(home: int, entries: Entries) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    by_id: dict[int, bytes] = {}  # the entries share a few value objects (alive meanwhile)
    key = codecs.encode_policy_key
    for k, v in entries.items():
        vb = by_id.get(id(v))
        if vb is None:
            vb = by_id[id(v)] = codecs.encode_policy_value(v)
        out[key(home, k)] = vb
    return out


def patch(
    home: int,
    encoded: Mapping[bytes, bytes],
    entries: Entries,
    keys: tuple[PolicyEntryKey, ...],
    values: _Values,
) -> tuple[dict[bytes, bytes], frozenset[bytes]]:
    """A copy of `encoded` (of entries equal to `entries` outside `keys`) made `entries`'
    encoding, and the keys it touched."""
    out = encoded.materialized() if isinstance(encoded, Rehomed) else dict(encoded)
    touched: set[bytes] = set()
    for k in keys:
        kb = codecs.encode_policy_key(home, k)
        v = entries.get(k)
        if v is None:
            out.pop(kb, None)
        else:
            out[kb] = values(v)
        touched.add(kb)
    return out, frozenset(touched)


class Rehomed(Mapping[bytes, bytes]):
    """`source` (one home's encoded entries, never mutated) keyed by another home id (struct
    policy_key: prefixlen, then ep_id), computed on access: a spare copy costs no memory until
    it is used (then patch() copies it)."""

    __slots__ = ("_from", "_source", "_to")

    def __init__(self, source: Mapping[bytes, bytes], source_home: int, home: int) -> None:
        self._source = source
        self._from = source_home.to_bytes(4, sys.byteorder)
        self._to = home.to_bytes(4, sys.byteorder)

    def __getitem__(self, kb: bytes) -> bytes:
        if kb[4:8] != self._to:
            raise KeyError(kb)
        return self._source[kb[:4] + self._from + kb[8:]]

    # get and `in` without Mapping's __getitem__ and KeyError per key: the sync's diff reads a
    # re-keyed spare once per key its patch touched (~26k at 50k pods)
    def get(self, kb: bytes, default: Any = None) -> Any:
        if kb[4:8] != self._to:
            return default
        return self._source.get(kb[:4] + self._from + kb[8:], default)

    def __contains__(self, kb: object) -> bool:
        return isinstance(kb, bytes) and kb[4:8] == self._to and kb[:4] + self._from + kb[8:] in self._source

    def __iter__(self) -> Iterator[bytes]:
        to = self._to
        return (kb[:4] + to + kb[8:] for kb in self._source)

    def __len__(self) -> int:
        return len(self._source)

    def materialized(self) -> dict[bytes, bytes]:
        """The entries as a dict (one pass over the source, not a lookup per key)."""
        to = self._to
        return {kb[:4] + to + kb[8:]: vb for kb, vb in self._source.items()}


def _keys(change: ProfileChange) -> tuple[PolicyEntryKey, ...]:
    """The keys `change` touched (a key may come twice: patch() reads its final entry)."""
    return change.removed + change.upserted


class ProfileHomes:
    """The homes of one node's tier profiles across encodings (see the module doc)."""

    def __init__(self) -> None:
        self._live: dict[int, Home] = {}  # logical id -> its home
        self._spares: dict[int, Home] = {}  # home id -> a home no endpoint uses (oldest first)

    @property
    def spares(self) -> Mapping[int, Home]:
        return self._spares

    def place(self, profiles: Mapping[int, Entries], changes: Mapping[int, ProfileChange]) -> Placement:
        live: dict[int, Home] = {}
        touched: dict[int, tuple[Mapping[bytes, bytes], frozenset[bytes]]] = {}
        values = _Values()  # per placement: the entries keep the value objects alive meanwhile
        fresh: list[int] = []
        for lid, entries in profiles.items():
            had = self._live.get(lid)
            if had is None:
                fresh.append(lid)
                continue
            if had.entries is entries:
                live[lid] = had
                continue
            change = changes.get(lid)
            if change is not None and change.base is had.entries:
                encoded, kbs = patch(had.home, had.encoded, entries, _keys(change), values)
                touched[had.home] = (had.encoded, kbs)
            else:
                encoded = encode_full(had.home, entries)
            live[lid] = Home(had.home, entries, encoded, change)
        used = {h.home for h in live.values()}
        # homes of the previous placement stay out of reach of a new profile: endpoints use them
        # until this sync switches them
        taken = used | {h.home for h in self._live.values()}
        spares = dict(self._spares)
        for lid in fresh:
            entries = profiles[lid]
            change = changes.get(lid)
            found = self._spare_for(change, spares)
            if found is not None:
                spare, keys = found
                del spares[spare.home]
                encoded, kbs = patch(spare.home, spare.encoded, entries, keys, values)
                touched[spare.home] = (spare.encoded, kbs)
                home = spare.home
            else:
                home = self._free_id(lid, taken, spares)
                src = self._written(change.base) if change is not None else None
                if change is not None and src is not None:  # its base's bytes, re-keyed and patched
                    encoded, _ = patch(
                        home, Rehomed(src.encoded, src.home, home), entries, _keys(change), values
                    )
                else:
                    encoded = encode_full(home, entries)
            used.add(home)
            taken.add(home)
            live[lid] = Home(home, entries, encoded, change)
        for lid, had in self._live.items():  # retired now: kept as spares (taken from the next sync)
            if lid not in live and had.home not in used:
                spares.pop(had.home, None)
                spares[had.home] = had
        self._spares = self._trim(spares, len(live))
        # A derivation is kept only while a spare holds its base (the two-step lineage): it
        # would otherwise keep an earlier compilation's entries alive for nothing.
        held = {id(h.entries) for h in self._spares.values()}
        self._live = {
            lid: h if h.derived is None or id(h.derived.base) in held else Home(h.home, h.entries, h.encoded)
            for lid, h in live.items()
        }
        policy = {h.home: h.encoded for h in live.values()}
        policy.update((h.home, h.encoded) for h in self._spares.values())
        return Placement({lid: h.home for lid, h in live.items()}, policy, touched)

    def twins(self, limit: int = 1, room: int | None = None) -> list[Home]:
        """Give up to `limit` live profiles without a spare holding their entries one (their
        content copied under a new home id), largest first, within the spares' bounds (`room`:
        the entries all spares may hold, None: no limit but their number). Returns the new
        spares (the next placement's policy has them)."""
        twinned = {id(h.entries) for h in self._spares.values()}
        used = {h.home for h in self._live.values()} | set(self._spares)
        made: list[Home] = []
        for lid, h in sorted(self._live.items(), key=lambda kv: (-len(kv[1].entries), kv[0])):
            if len(made) >= limit:
                break
            if id(h.entries) in twinned or not h.entries:
                continue
            # a twin goes before a retired home (the oldest first): it serves the next re-key
            while not self._fits([*self._spares.values(), *made], len(h.entries), room):
                live_ids = {id(x.entries) for x in self._live.values()}
                old = next((s for s in self._spares.values() if id(s.entries) not in live_ids), None)
                if old is None:
                    break
                del self._spares[old.home]
            if not self._fits([*self._spares.values(), *made], len(h.entries), room):
                break
            home = self._free_id(lid ^ 0x5A5A5A5A, used, {})
            used.add(home)
            made.append(Home(home, h.entries, Rehomed(h.encoded, h.home, home)))
        for h in made:
            self._spares[h.home] = h
        return made

    def policy(self) -> dict[int, Mapping[bytes, bytes]]:
        """Every home's entries (live and spare) as placed now."""
        out = {h.home: h.encoded for h in self._live.values()}
        out.update((h.home, h.encoded) for h in self._spares.values())
        return out

    def live_size(self) -> tuple[int, int]:
        """(entries of the live profiles, entries of the largest)."""
        sizes = [len(h.encoded) for h in self._live.values()]
        return sum(sizes), max(sizes, default=0)

    def fit(self, room: int) -> set[int]:
        """Keep the newest spares within `room` entries; returns the homes dropped."""
        kept = self._trim(self._spares, len(self._spares), room)
        dropped = set(self._spares) - set(kept)
        self._spares = kept
        return dropped

    def forget_spares(self) -> None:
        """After a sync that did not complete: endpoints may still point at a home retired by
        it, so no spare is taken (the next sync deletes them)."""
        self._spares = {}

    def _spare_for(
        self, change: ProfileChange | None, spares: Mapping[int, Home]
    ) -> tuple[Home, tuple[PolicyEntryKey, ...]] | None:
        """A spare whose content `change`'s result differs from only on known keys: its base
        (one step), or the base of the live profile its base is (two steps)."""
        if change is None:
            return None
        keys = _keys(change)
        for spare in spares.values():
            if spare.entries is change.base:
                return spare, keys
        for had in self._live.values():
            if had.entries is change.base and had.derived is not None:
                for spare in spares.values():
                    if spare.entries is had.derived.base:
                        return spare, keys + _keys(had.derived)
        return None

    def _written(self, entries: Entries) -> Home | None:
        """A home of the previous placement holding `entries`."""
        for h in (*self._live.values(), *self._spares.values()):
            if h.entries is entries:
                return h
        return None

    def _free_id(self, lid: int, used: set[int], spares: Mapping[int, Home]) -> int:
        """`lid` itself when no home has it, else the next free profile id."""
        n = lid & ~TIER_PROFILE_BIT & 0xFFFFFFFF
        while n == 0 or (TIER_PROFILE_BIT | n) in used or (TIER_PROFILE_BIT | n) in spares:
            n = (n + 1) & ~TIER_PROFILE_BIT & 0xFFFFFFFF
        return TIER_PROFILE_BIT | n

    def _fits(self, spares: list[Home], more: int, room: int | None) -> bool:
        if len(spares) + (1 if more else 0) > len(self._live):
            return False
        return room is None or sum(len(h.encoded) for h in spares) + more <= room

    def _trim(self, spares: dict[int, Home], bound: int, room: int | None = None) -> dict[int, Home]:
        """The newest spares within the bounds (`room`: entries, None: no limit)."""
        kept: list[Home] = []
        total = 0
        for h in reversed(spares.values()):
            if len(kept) >= bound:
                break
            if room is not None and total + len(h.encoded) > room:
                continue
            kept.append(h)
            total += len(h.encoded)
        return {h.home: h for h in reversed(kept)}
