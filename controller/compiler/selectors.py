"""Kubernetes label selectors (metav1.LabelSelector), pure.

Semantics follow apimachinery's `LabelSelectorAsSelector`:

- `matchLabels: {k: v}` is the requirement `k In (v)`;
- `In` / `NotIn` need a non-empty list of string values; `NotIn` also matches objects that do
  not have the key at all;
- `Exists` / `DoesNotExist` take no values;
- all requirements are ANDed; a selector with no requirements (`{}`) matches everything;
- a null selector (`None`) matches nothing (`LabelSelector.NOTHING`). Whether a null selector
  in an API object means "nothing" or "not specified" is the caller's business (NetworkPolicy
  peers treat a missing podSelector/namespaceSelector as "not specified").

Besides matching one label set, a selector can evaluate itself against a `LabelIndex` (an
inverted index (key, value) -> ids) to select a set of ids without visiting every object;
the compiler uses that to translate selectors into identity sets quickly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

OP_IN = "In"
OP_NOT_IN = "NotIn"
OP_EXISTS = "Exists"
OP_DOES_NOT_EXIST = "DoesNotExist"
OPERATORS = (OP_IN, OP_NOT_IN, OP_EXISTS, OP_DOES_NOT_EXIST)


class SelectorError(ValueError):
    """An invalid selector; `field` is the path relative to the selector (e.g. matchExpressions[0].values)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True, order=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()  # sorted, de-duplicated

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == OP_IN:
            return self.key in labels and labels[self.key] in self.values
        if op == OP_NOT_IN:
            return self.key not in labels or labels[self.key] not in self.values
        if op == OP_EXISTS:
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def __str__(self) -> str:
        if self.operator == OP_IN and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        if self.operator == OP_NOT_IN and len(self.values) == 1:
            return f"{self.key}!={self.values[0]}"
        if self.operator == OP_EXISTS:
            return self.key
        if self.operator == OP_DOES_NOT_EXIST:
            return f"!{self.key}"
        return f"{self.key} {self.operator.lower()} ({','.join(self.values)})"


class LabelIndex:
    """Inverted index over labelled objects identified by hashable ids (ints in practice).

    Only (key, value) -> ids is kept up to date; key -> ids (for Exists, DoesNotExist, NotIn)
    is derived from it on first use, since most selectors never need it (the compiler keeps one
    index per namespace, so every set held counts).
    """

    __slots__ = ("_by_key", "all", "by_kv")

    def __init__(self, items: Iterable[tuple[int, Mapping[str, str]]] = ()) -> None:
        self.all: set[int] = set()
        self.by_kv: dict[tuple[str, str], set[int]] = {}
        self._by_key: dict[str, set[int]] | None = None
        for ident, labels in items:
            self.add(ident, labels)

    def add(self, ident: int, labels: Mapping[str, str]) -> None:
        self.all.add(ident)
        for kv in labels.items():
            self.by_kv.setdefault(kv, set()).add(ident)
        self._by_key = None

    def updated(
        self, removed: Iterable[tuple[int, Mapping[str, str]]], added: Iterable[tuple[int, Mapping[str, str]]]
    ) -> LabelIndex:
        """A new index with `removed` taken out and `added` put in (each with the labels it was
        or is indexed under). This one is not modified: the new one shares every id set that
        did not change, so the cost is that of the change (plus copying the outer dicts)."""
        out = LabelIndex.__new__(LabelIndex)
        out.all = set(self.all)
        out.by_kv = dict(self.by_kv)
        by_key = None if self._by_key is None else dict(self._by_key)
        copied: set[tuple[str, str]] = set()
        copied_keys: set[str] = set()

        def own_kv(kv: tuple[str, str]) -> set[int]:
            if kv not in copied:
                copied.add(kv)
                out.by_kv[kv] = set(out.by_kv.get(kv, ()))
            return out.by_kv[kv]

        def own_key(k: str) -> set[int] | None:
            if by_key is None:
                return None
            if k not in copied_keys:
                copied_keys.add(k)
                by_key[k] = set(by_key.get(k, ()))
            return by_key[k]

        for ident, labels in removed:
            out.all.discard(ident)
            for kv in labels.items():
                ids = own_kv(kv)
                ids.discard(ident)
                if not ids:
                    del out.by_kv[kv]
                    copied.discard(kv)
                key_ids = own_key(kv[0])
                if key_ids is not None:
                    key_ids.discard(ident)  # an object has one value per key
                    if not key_ids and by_key is not None:
                        del by_key[kv[0]]
                        copied_keys.discard(kv[0])
        for ident, labels in added:
            out.all.add(ident)
            for kv in labels.items():
                own_kv(kv).add(ident)
                key_ids = own_key(kv[0])
                if key_ids is not None:
                    key_ids.add(ident)
        out._by_key = by_key
        return out

    @property
    def by_key(self) -> dict[str, set[int]]:
        """key -> ids of the objects that have the key (any value); do not mutate."""
        by_key = self._by_key
        if by_key is None:
            by_key = {}
            for (k, _v), ids in self.by_kv.items():
                got = by_key.get(k)
                if got is None:
                    by_key[k] = set(ids)
                else:
                    got |= ids
            self._by_key = by_key
        return by_key

    def __len__(self) -> int:
        return len(self.all)


_EMPTY: frozenset[int] = frozenset()


@dataclass(frozen=True)
class LabelSelector:
    """A parsed, validated label selector. Requirements are kept sorted: equal selectors compare equal."""

    requirements: tuple[Requirement, ...] = ()
    nothing: bool = False  # the null selector

    EVERYTHING: ClassVar[LabelSelector]
    NOTHING: ClassVar[LabelSelector]

    @classmethod
    def make(cls, requirements: Iterable[Requirement]) -> LabelSelector:
        reqs = tuple(sorted(set(requirements)))
        return cls(reqs, False)

    @classmethod
    def parse(cls, raw: Any) -> LabelSelector:
        """Parse an API LabelSelector dict. None -> NOTHING. Raises SelectorError."""
        if raw is None:
            return cls.NOTHING
        if not isinstance(raw, Mapping):
            raise SelectorError("", f"must be an object, not {type(raw).__name__}")
        unknown = set(raw) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise SelectorError(sorted(unknown)[0], "unknown field in a label selector")
        reqs: list[Requirement] = []
        ml = raw.get("matchLabels")
        if ml is not None:
            if not isinstance(ml, Mapping):
                raise SelectorError("matchLabels", "must be a map of string to string")
            for k, v in ml.items():
                _check_key(k, f"matchLabels.{k}")
                if not isinstance(v, str):
                    raise SelectorError(f"matchLabels.{k}", f"value must be a string, not {type(v).__name__}")
                _check_value(v, f"matchLabels.{k}")
                reqs.append(Requirement(k, OP_IN, (v,)))
        me = raw.get("matchExpressions")
        if me is not None:
            if not isinstance(me, list):
                raise SelectorError("matchExpressions", "must be a list")
            for i, expr in enumerate(me):
                reqs.append(_parse_expression(expr, f"matchExpressions[{i}]"))
        return cls.make(reqs)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.nothing:
            return False
        return all(r.matches(labels) for r in self.requirements)

    @property
    def is_everything(self) -> bool:
        return not self.nothing and not self.requirements

    @functools.cached_property
    def key(self) -> str:
        """A canonical string, usable as a cache key (formatted once per selector)."""
        if self.nothing:
            return "<nothing>"
        return json.dumps([[r.key, r.operator, list(r.values)] for r in self.requirements])

    def select(self, index: LabelIndex) -> set[int] | frozenset[int]:
        """The ids in `index` whose labels this selector matches (do not mutate the result)."""
        if self.nothing:
            return _EMPTY
        if not self.requirements:
            return index.all
        cur: set[int] | None = None
        positive = [r for r in self.requirements if r.operator in (OP_IN, OP_EXISTS)]
        negative = [r for r in self.requirements if r.operator not in (OP_IN, OP_EXISTS)]
        for r in positive:
            if r.operator == OP_IN:
                if len(r.values) == 1:
                    s = index.by_kv.get((r.key, r.values[0]), set())
                else:
                    s = set()
                    for v in r.values:
                        s |= index.by_kv.get((r.key, v), set())
            else:
                s = index.by_key.get(r.key, set())
            cur = set(s) if cur is None else cur & s
            if not cur:
                return _EMPTY
        for r in negative:
            if r.operator == OP_NOT_IN:
                excluded: set[int] = set()
                for v in r.values:
                    excluded |= index.by_kv.get((r.key, v), set())
            else:
                excluded = index.by_key.get(r.key, set())
            cur = (index.all - excluded) if cur is None else (cur - excluded)
        return cur if cur is not None else index.all

    def __str__(self) -> str:
        if self.nothing:
            return "<nothing>"
        if not self.requirements:
            return "<all>"
        return ",".join(str(r) for r in self.requirements)


LabelSelector.EVERYTHING = LabelSelector((), False)
LabelSelector.NOTHING = LabelSelector((), True)


def _check_key(k: Any, fld: str) -> None:
    if not isinstance(k, str) or not k:
        raise SelectorError(fld, "label key must be a non-empty string")
    if len(k) > 317:
        raise SelectorError(fld, "label key is too long")


def _check_value(v: str, fld: str) -> None:
    if len(v) > 63:
        raise SelectorError(fld, f"label value {v!r} is longer than 63 characters")


def _parse_expression(expr: Any, fld: str) -> Requirement:
    if not isinstance(expr, Mapping):
        raise SelectorError(fld, "must be an object with key, operator and values")
    key: str = expr.get("key")  # type: ignore[assignment]
    _check_key(key, f"{fld}.key")
    op = expr.get("operator")
    if op not in OPERATORS:
        raise SelectorError(
            f"{fld}.operator", f"unknown operator {op!r}; expected one of {', '.join(OPERATORS)}"
        )
    values = expr.get("values")
    if op in (OP_IN, OP_NOT_IN):
        if not isinstance(values, list):
            raise SelectorError(f"{fld}.values", f"operator {op} needs a list of values")
        if not values:
            raise SelectorError(f"{fld}.values", f"operator {op} needs at least one value")
        for j, v in enumerate(values):
            if not isinstance(v, str):
                raise SelectorError(f"{fld}.values[{j}]", f"must be a string, not {type(v).__name__}")
            _check_value(v, f"{fld}.values[{j}]")
        return Requirement(key, op, tuple(sorted(set(values))))
    if values:  # Exists / DoesNotExist
        raise SelectorError(f"{fld}.values", f"operator {op} takes no values")
    return Requirement(key, op, ())
