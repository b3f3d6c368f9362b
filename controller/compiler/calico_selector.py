"""Calico's label selector language (projectcalico.org/v3 `selector`, `namespaceSelector`,
rule `selector` / `notSelector`), parsed into a small expression tree (pure; issue 16, step 1).

Grammar (Calico's documentation, the subset issue 16 asks for), lowest precedence first:

    expr     := and ( "||" and )*
    and      := unary ( "&&" unary )*
    unary    := "!" unary | atom
    atom     := "(" expr ")" | "all(" ")" | "has(" key ")"   (no space before "(", as in Calico)
              | key "==" value | key "!=" value
              | key "in" "{" [ value ( "," value )* ] "}" | key "not" "in" "{" ... "}"
    key      := [A-Za-z0-9_./-]+
    value    := a string in single or double quotes (no escapes)

An empty selector (only spaces) selects everything, like `all()`. Semantics: `k != 'v'` and
`k not in {...}` also match objects without the label `k`; `has(k)` matches any value.
Anything else (Calico's `contains`, `starts with`, `ends with`, `global()`, an unknown token) is
refused with a CalicoSelectorError naming the position, never ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEY = re.compile(r"[A-Za-z0-9_./-]+")
_SPACE = re.compile(r"\s*")


class CalicoSelectorError(ValueError):
    def __init__(self, text: str, pos: int, message: str) -> None:
        super().__init__(f"{message} at position {pos} of {text!r}")
        self.text = text
        self.pos = pos
        self.message = message


@dataclass(frozen=True)
class All:
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True


@dataclass(frozen=True)
class Has:
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels


@dataclass(frozen=True)
class Equals:
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) == self.value


@dataclass(frozen=True)
class In:
    key: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.key)
        return v is not None and v in self.values


@dataclass(frozen=True)
class Not:
    inner: Expr

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.inner.matches(labels)


@dataclass(frozen=True)
class And:
    parts: tuple[Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(p.matches(labels) for p in self.parts)


@dataclass(frozen=True)
class Or:
    parts: tuple[Expr, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(p.matches(labels) for p in self.parts)


Expr = All | Has | Equals | In | Not | And | Or


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> CalicoSelectorError:
        return CalicoSelectorError(self.text, self.pos, message)

    def skip(self) -> None:
        m = _SPACE.match(self.text, self.pos)
        assert m is not None
        self.pos = m.end()

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.take(token):
            raise self.fail(f"expected {token!r}")

    def key(self) -> str:
        self.skip()
        m = _KEY.match(self.text, self.pos)
        if m is None:
            raise self.fail("expected a label key")
        self.pos = m.end()
        return m.group()

    def value(self) -> str:
        self.skip()
        quote = self.text[self.pos : self.pos + 1]
        if quote not in ("'", '"'):
            raise self.fail("expected a quoted value")
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise self.fail("unterminated string")
        out = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return out

    def expr(self) -> Expr:
        parts = [self.conj()]
        while self.take("||"):
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conj(self) -> Expr:
        parts = [self.unary()]
        while self.take("&&"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Expr:
        if self.peek("!") and not self.peek("!="):
            self.pos += 1
            return Not(self.unary())
        return self.atom()

    def values(self) -> frozenset[str]:
        self.expect("{")
        out: set[str] = set()
        if self.take("}"):
            return frozenset()
        out.add(self.value())
        while self.take(","):
            out.add(self.value())
        self.expect("}")
        return frozenset(out)

    def atom(self) -> Expr:
        if self.take("("):
            inner = self.expr()
            self.expect(")")
            return inner
        if self.peek("global(") or self.peek("global ("):
            raise self.fail("'global()' is not supported by this version of vethguard")
        if self.take("all("):  # Calico: no space before the parenthesis, any inside
            self.expect(")")
            return All()
        if self.take("has("):
            key = self.key()
            self.expect(")")
            return Has(key)
        key = self.key()
        if self.take("=="):
            return Equals(key, self.value())
        if self.take("!="):
            return Not(Equals(key, self.value()))
        if self.take("not"):
            self.expect("in")
            return Not(In(key, self.values()))
        if self.take("in"):
            return In(key, self.values())
        for word in ("contains", "starts with", "ends with"):
            if self.peek(word):
                raise self.fail(f"{word!r} is not supported by this version of vethguard")
        raise self.fail("expected ==, !=, in or not in after the label key")


def parse_calico_selector(text: str) -> Expr:
    """The expression of a Calico selector; CalicoSelectorError (with the position) when it is
    not one, or uses what this version does not support."""
    if not isinstance(text, str):
        raise CalicoSelectorError(repr(text), 0, "a selector must be a string")
    if not text.strip():
        return All()
    p = _Parser(text)
    out = p.expr()
    p.skip()
    if p.pos != len(text):
        raise p.fail("unexpected text")
    return out
