"""Tier profile entries, folded by signature and carried from one compilation to the next
(a part of the tiers stage, controller/compiler/stages/tiers.py; docs/INTERNALS.md "Tiers").

Every contribution of one ClusterNetworkPolicy rule has the rule's tier, action, rank and
reference, and its keys are (its peer identities x its port specs), plus, for egress named
ports, each destination's own resolution. So a rule is a `RulePart` (those four, the specs and
the identity set), and the folded value of a key depends only on the parts whose identities
hold the key's identity: the identity's *signature* (one item per part: the head and the
specs it gives that identity). Identities with the same signature fold to the same rows
(proto, port, plen, value), so a profile is folded once per distinct signature and its entries
are those rows under each identity, sharing the PolicyEntryValue objects. This is `fold()` of
stages/tiers.py, the reference, computed per group (tests/unit/test_tier_profiles.py).

Memo (`TierMemo`, one per compilation, published in the builder's GenerationCache): the rule
parts (interned, so equal parts are one object), the rows of every signature, and per profile
key its parts and entries. A compilation asks the memo for a profile's entries with its parts:
the same parts give the very entries mapping of the previous compilation (the sync layer skips
it by identity); other parts patch the previous entries only for the identities whose signature
can have changed (those a changed part gains or loses, or every identity of a part whose
head or specs changed). A memo reads the previous generation's tables and keeps only what its
own compilation used; it is filled while its compilation runs and its values are never changed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue, ProfileChange

PortSpec = tuple[int, int, int]  # (proto, port, port_plen)
Head = tuple[int, int, int, int]  # (tier, action, rank, ref) of a rule
SigItem = tuple[Head, tuple[PortSpec, ...]]
Signature = tuple[SigItem, ...]
Row = tuple[int, int, int, PolicyEntryValue]  # (proto, port, port_plen, value)
Intern = Callable[[int, int, int, int, int], PolicyEntryKey]
Entries = Mapping[PolicyEntryKey, PolicyEntryValue]
SLOTS = 4
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RulePart:
    """One rule's share of a profile: in `direction`, `head` for every identity of `idents`
    on every spec of `specs`, and for each (identity, specs) of `extra` on those specs
    (egress named ports resolved per destination)."""

    direction: int
    head: Head
    specs: tuple[PortSpec, ...]
    idents: frozenset[int]
    extra: tuple[tuple[int, tuple[PortSpec, ...]], ...] = ()
    # (head, specs): what it gives an identity of `idents`, one object for every signature
    plain: SigItem = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", (self.head, self.specs))

    def identities(self) -> Iterable[int]:
        yield from self.idents
        yield from (i for i, _ in self.extra)

    def item(self, ident: int) -> SigItem | None:
        """What this part gives `ident` (None: nothing)."""
        specs: tuple[PortSpec, ...] = self.specs if ident in self.idents else ()
        for i, more in self.extra:
            if i == ident:
                specs = specs + more
        return (self.head, specs) if specs else None


Groups = Mapping[int, Mapping[int, Signature]]  # direction -> identity -> its signature


@dataclass(frozen=True, slots=True)
class ProfileState:
    """A profile's entries and what they were computed from."""

    parts: tuple[RulePart, ...]
    sigs: Groups
    entries: Entries


class TierMemo:
    """What one compilation's tiers computed, read by the next (see the module doc)."""

    def __init__(self, previous: TierMemo | None = None) -> None:
        self.parts: dict[RulePart, RulePart] = {}
        self.rows: dict[Signature, tuple[Row, ...]] = {}
        self._sigs: dict[Signature, Signature] = {}  # signatures made by patches, interned
        self.profiles: dict[Any, ProfileState] = {}
        self.keys: dict[int, Any] = {}  # profile id -> its key, for the profiles of self.profiles
        # how this compilation patched a profile from the previous one's (not carried over: the
        # base entries are dropped with the compilations that hand them out)
        self.changes: dict[Any, ProfileChange] = {}
        # the previous generation's tables (not the previous memo: no chain of generations)
        self._old_parts = previous.parts if previous is not None else {}
        self._old_rows = previous.rows if previous is not None else {}
        self._old_sigs = previous._sigs if previous is not None else {}
        self._old_profiles = previous.profiles if previous is not None else {}
        self._old_keys = previous.keys if previous is not None else {}
        # kind -> (the cluster mapping it was computed from, the value): see carried()
        self._carried: dict[str, tuple[object, Any]] = {}
        # (id, id) of two identity sets -> (them, their symmetric difference): many rules share
        # a peer's set, and profiles share rules
        self._xors: dict[tuple[int, int], tuple[frozenset[int], frozenset[int], frozenset[int]]] = {}
        self._old_carried = previous._carried if previous is not None else {}

    def _xor(self, a: frozenset[int], b: frozenset[int]) -> frozenset[int]:
        got = self._xors.get((id(a), id(b)))
        if got is None or got[0] is not a or got[1] is not b:
            got = self._xors[(id(a), id(b))] = (a, b, a ^ b)
        return got[2]

    def previous(self, kind: str) -> Any:
        """The previous compilation's value of `kind` (whatever its source), or None."""
        old = self._old_carried.get(kind)
        return old[1] if old is not None else None

    def carried(self, kind: str, source: object, make: Callable[[], T]) -> T:
        """The value of `kind` computed by `make` from `source` (a cluster mapping, never mutated,
        or a tuple of such), the previous compilation's while its source is the very same object
        (every member the same, for a tuple). A value may be a cache filled on use: an entry,
        once there, never changes."""
        got = self._carried.get(kind)
        if got is None or not _same(got[0], source):
            old = self._old_carried.get(kind)
            got = old if old is not None and _same(old[0], source) else (source, make())
            self._carried[kind] = got
        return cast("T", got[1])

    def part(self, part: RulePart) -> RulePart:
        """The interned part equal to `part`."""
        got = self.parts.get(part)
        if got is None:
            got = self._old_parts.get(part, part)
            self.parts[part] = got
        return got

    def _interned(self, sig: Signature) -> Signature:
        """The one object of a signature (many identities share one)."""
        got = self._sigs.get(sig)
        if got is None:
            got = self._sigs[sig] = self._old_sigs.get(sig, sig)
        return got

    def signature_rows(self, sig: Signature) -> tuple[Row, ...]:
        got = self.rows.get(sig)
        if got is None:
            got = self._old_rows.get(sig)
            if got is None:
                got = fold_signature(sig)
            self.rows[sig] = got
        return got

    def profile(
        self, pkey: Any, parts: tuple[RulePart, ...], intern: Intern, predecessor: int = 0
    ) -> ProfileState:
        """The profile of key `pkey` made of `parts` (the previous one's when its parts are these).
        A key the previous compilation did not have is patched from the profile of id
        `predecessor` (the one its endpoints had) when that is known and close to it."""
        got = self.profiles.get(pkey)
        if got is not None and got.parts == parts:
            return got
        old = self._old_profiles.get(pkey) if got is None else got
        if old is None and predecessor:
            old = self.state_of(predecessor)
        if old is not None and old.parts == parts:
            got = old
        else:
            got, change = self._build(parts, intern, old)
            if change is not None:
                self.changes[pkey] = change
        self.profiles[pkey] = got
        return got

    def state_of(self, pid: int) -> ProfileState | None:
        """The state of profile id `pid` in this compilation or the previous one."""
        pkey = self.keys.get(pid)
        if pkey is not None:
            return self.profiles.get(pkey)
        pkey = self._old_keys.get(pid)
        return self._old_profiles.get(pkey) if pkey is not None else None

    def _build(
        self, parts: tuple[RulePart, ...], intern: Intern, old: ProfileState | None
    ) -> tuple[ProfileState, ProfileChange | None]:
        touched = _touched(old.parts, parts, self._xor) if old is not None else None
        if old is None or touched is None or 2 * sum(map(len, touched.values())) > _size(old.sigs):
            # new, or most groups change (a rank shift): fold it all
            classes = signature_classes(parts)
            entries: dict[PolicyEntryKey, PolicyEntryValue] = {}
            for direction, members in classes.items():
                for sig, members_of in members:
                    rows = self.signature_rows(sig)
                    for ident in members_of:
                        for proto, port, plen, value in rows:
                            entries[intern(direction, ident, proto, port, plen)] = value
            state = ProfileState(parts, _groups(classes), MappingProxyType(entries))
            return state, (_compared(old.entries, entries) if old is not None else None)
        new_groups = {d: dict(sigs) for d, sigs in old.sigs.items()}
        # (a MappingProxyType's copy() is its dict's: no key hashed again, unlike dict(proxy))
        entries = old.entries.copy() if isinstance(old.entries, MappingProxyType) else dict(old.entries)
        removed: list[PolicyEntryKey] = []
        upserted: list[PolicyEntryKey] = []
        for direction, changed in touched.items():
            mine = [p for p in parts if p.direction == direction]
            old_sigs = old.sigs.get(direction, {})
            sigs = new_groups.setdefault(direction, {})
            groups: list[tuple[Signature | None, frozenset[int]]] = list(_split(mine, changed))
            given = set().union(*(idents for _, idents in groups)) if groups else set()
            groups.append((None, frozenset(changed.difference(given))))  # (no part gives them anything)
            # per (signature before, after): the row specs to remove and the rows to write, once
            steps: dict[tuple[int, int], tuple[list[PortSpec], list[Row]]] = {}
            for raw, group in groups:
                after = self._interned(raw) if raw is not None else None
                rows = self.signature_rows(after) if after is not None else ()
                for ident in group:
                    before = old_sigs.get(ident)
                    if after == before:
                        continue
                    step = steps.get((id(before), id(after)))
                    if step is None:
                        step = steps[(id(before), id(after))] = _step(
                            self.signature_rows(before) if before is not None else (), rows
                        )
                    for proto, port, plen in step[0]:
                        k = intern(direction, ident, proto, port, plen)
                        del entries[k]
                        removed.append(k)
                    if after is None:
                        del sigs[ident]
                        continue
                    sigs[ident] = after
                    for proto, port, plen, value in step[1]:
                        k = intern(direction, ident, proto, port, plen)
                        entries[k] = value
                        upserted.append(k)
        change = ProfileChange(old.entries, tuple(removed), tuple(upserted))
        return ProfileState(parts, new_groups, MappingProxyType(entries)), change


def _step(before: Sequence[Row], after: Sequence[Row]) -> tuple[list[PortSpec], list[Row]]:
    """From an identity's rows `before` to `after`: the specs only `before` has (removed) and
    the rows of `after` whose value is not the very one `before` had there (written)."""
    had = {(proto, port, plen): v for proto, port, plen, v in before}
    kept = {(proto, port, plen) for proto, port, plen, _ in after}
    gone = [spec for spec in had if spec not in kept]
    return gone, [row for row in after if had.get(row[:3]) is not row[3]]


def _compared(old: Entries, new: Entries) -> ProfileChange:
    """`new` as a change of `old`, found by comparing them (rows of one signature are one object
    from one compilation to the next, so an unchanged entry holds the very value)."""
    get = old.get
    removed = tuple(k for k in old if k not in new)
    upserted = tuple(k for k, v in new.items() if get(k) is not v)
    return ProfileChange(old, removed, upserted)


def _size(groups: Groups) -> int:
    return sum(map(len, groups.values()))


def _touched(
    old: Sequence[RulePart],
    new: Sequence[RulePart],
    xor: Callable[[frozenset[int], frozenset[int]], frozenset[int]],
) -> dict[int, set[int]] | None:
    """Per direction, the identities whose signature may differ between two part lists: every
    identity of a part in one list and not the other, and what a part of the same rule, head
    and specs gains or loses (`xor`). None: the lists do not name their rules once each."""
    old_by = {(p.direction, p.head[0], p.head[3]): p for p in old}
    new_by = {(p.direction, p.head[0], p.head[3]): p for p in new}
    if len(old_by) != len(old) or len(new_by) != len(new):
        return None
    out: dict[int, set[int]] = {}
    for key in old_by.keys() | new_by.keys():
        a, b = old_by.get(key), new_by.get(key)
        if a is b:
            continue
        at = out.setdefault(key[0], set())
        if a is not None and b is not None and a.head == b.head and a.specs == b.specs and a.extra == b.extra:
            at |= xor(a.idents, b.idents)
            continue
        for p in (a, b):
            if p is not None:
                at |= p.idents
                at.update(i for i, _ in p.extra)
    return out


def _signature(parts: Sequence[RulePart], ident: int) -> Signature | None:
    """The signature of `ident` among parts of one direction (None: no part gives it anything)."""
    items: list[SigItem] = []
    for p in parts:
        if p.extra:
            it = p.item(ident)
            if it is not None:
                items.append(it)
        elif p.specs and ident in p.idents:  # RulePart.item() without the call (many parts)
            items.append(p.plain)
    return tuple(items) if items else None


Classes = dict[int, list[tuple[Signature, frozenset[int]]]]  # direction -> (signature, its identities)


def signature_classes(parts: Sequence[RulePart]) -> Classes:
    """Per direction, the identities the parts give something, in classes of equal signature:
    split part by part with set operations; those of a part's `extra` get theirs one by one."""
    out: Classes = {}
    for direction in sorted({p.direction for p in parts}):
        classes = _split([p for p in parts if p.direction == direction], None)
        if classes:
            out[direction] = classes
    return out


def _split(
    mine: Sequence[RulePart], within: frozenset[int] | set[int] | None
) -> list[tuple[Signature, frozenset[int]]]:
    """The identities parts of one direction give something (of `within` only, when given), in
    classes of equal signature: split part by part with set operations (C loops over the sets,
    not a Python test per identity and part); those of a part's `extra` get theirs one by one."""
    classes: list[tuple[Signature, frozenset[int]]] = []
    for p in mine:
        item: SigItem = (p.head, p.specs)
        rest = p.idents if within is None else p.idents.intersection(within)
        if not rest:
            continue
        split: list[tuple[Signature, frozenset[int]]] = []
        for sig, idents in classes:
            inside = idents & rest if rest else frozenset()
            if not inside:
                split.append((sig, idents))
                continue
            rest = rest - inside
            if len(inside) < len(idents):
                split.append((sig, idents - inside))
            split.append(((*sig, item), inside))
        if rest:
            split.append(((item,), frozenset(rest)))
        classes = split
    special = frozenset(i for p in mine for i, _ in p.extra)
    if within is not None:
        special = special.intersection(within)
    if special:
        classes = [(sig, idents - special) for sig, idents in classes if idents - special]
        for ident in sorted(special):
            got = _signature(mine, ident)
            if got is not None:
                classes.append((got, frozenset((ident,))))
    return classes


def _groups(classes: Classes) -> dict[int, dict[int, Signature]]:
    out: dict[int, dict[int, Signature]] = {}
    for direction, members in classes.items():
        sigs = out[direction] = {}
        for sig, idents in members:
            sigs.update(dict.fromkeys(idents, sig))
    return out


def _ancestors(proto: int, port: int, plen: int) -> list[PortSpec]:
    """The spec and every shorter (protocol, port) prefix covering it, longest first."""
    out = [(proto, port, plen)]
    for length in range(plen - 1, 0, -1):
        mask = (0xFFFF << (16 - length)) & 0xFFFF
        out.append((proto, port & mask, length))
    if plen > 0:
        out.append((proto, 0, 0))
    if proto != 0:
        out.append((0, 0, 0))
    return out


def fold_signature(sig: Signature) -> tuple[Row, ...]:
    """The folded rows of one identity's signature: per key, per tier the lowest-ranked rule
    among the keys that cover it (stages/tiers.py fold(), for one identity)."""
    best: dict[PortSpec, list[Head | None]] = {}
    for head, specs in sig:
        tier, rank = head[0], head[2]
        for spec in specs:
            at = best.get(spec)
            if at is None:
                at = best[spec] = [None] * SLOTS
            cur = at[tier]
            if cur is None or rank < cur[2]:
                at[tier] = head
    out: list[Row] = []
    for spec in best:
        slots: list[Head | None] = [None] * SLOTS
        for anc in _ancestors(*spec):
            found = best.get(anc)
            if found is not None:
                for t in range(SLOTS):
                    got, have = found[t], slots[t]
                    if got is not None and (have is None or got[2] < have[2]):
                        slots[t] = got
        out.append((*spec, _value(slots)))
    return tuple(out)


def _value(slots: Sequence[Head | None]) -> PolicyEntryValue:
    admin, base, calico, log = slots
    return PolicyEntryValue(
        verdict=0,
        rule_ref=0,
        admin=admin[1] if admin else 0,
        admin_rank=admin[2] if admin else 0,
        admin_ref=admin[3] if admin else 0,
        baseline=base[1] if base else 0,
        baseline_rank=base[2] if base else 0,
        baseline_ref=base[3] if base else 0,
        calico=calico[1] if calico else 0,
        calico_rank=calico[2] if calico else 0,
        calico_ref=calico[3] if calico else 0,
        log=1 if log else 0,
        log_rank=log[2] if log else 0,
        log_ref=log[3] if log else 0,
    )


def _same(a: object, b: object) -> bool:
    """The very same object, or tuples of the very same objects."""
    if a is b:
        return True
    return type(a) is tuple and type(b) is tuple and len(a) == len(b) and all(map(operator.is_, a, b))
