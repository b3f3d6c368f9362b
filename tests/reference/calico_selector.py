"""An independent reading of Calico's label selector language, for differential tests of
controller/compiler/calico_selector.py. Imports nothing from controller/.

Written from Calico's selector documentation (the "Selectors" section of the projectcalico.org/v3
NetworkPolicy and GlobalNetworkPolicy reference), restated:

- Match operators: `all()`; `k == 'v'` (label k present with value v); `k != 'v'` (k absent, or
  its value is not v); `has(k)`; `k in { 'v1', 'v2' }` (k present, value listed);
  `k not in { ... }` (k absent or value not listed); `k contains 's'`, `k starts with 's'`,
  `k ends with 's'`; `global()`. Strings in single or double quotes (no escapes).
- Logical operators, by precedence from the highest: the match operators, parentheses,
  negation `!`, conjunction `&&`, disjunction `||` (both left-associative; the result does not
  depend on the grouping of a chain of one of them).
- An empty selector matches everything.

Lexical details the documentation leaves open, taken from how Calico tokenizes (read, not copied):
whitespace is spaces and tabs; `has(` and `all(` are written without a space before the
parenthesis, with optional whitespace inside (`has( k )`, `all( )`); label keys are runs of
`[A-Za-z0-9_./-]`; the word operators (`in`, `not in` also written `notin`, `contains`,
`starts with`, `ends with`) are operators only right after a label key, anywhere else a word is
a label key (`not == 'x'` compares the label `not`).

vethguard does not support `contains`, `starts with`, `ends with` and `global()`: this reference
parses them and then refuses them (SelectorSyntaxError), like any text that is not a selector.

Technique (deliberately unlike the product's recursive descent over the raw text): a regex
tokenizer producing a token list, then precedence climbing over the binary operators, compiling
the expression into nested closures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]


class SelectorSyntaxError(ValueError):
    """Not a Calico selector, or one vethguard does not support."""


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t]+)
  | (?P<has>has\([ \t]*(?P<haskey>[A-Za-z0-9_./-]+)[ \t]*\))
  | (?P<all>all\([ \t]*\))
  | (?P<global>global\([ \t]*\))
  | (?P<op>==|!=|&&|\|\||!|\(|\)|\{|\}|,)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<word>[A-Za-z0-9_./-]+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # "has", "all", "global", "op", "string", "word", "end"
    text: str  # the operator, the word, the string's content, the has() key


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SelectorSyntaxError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        pos = m.end()
        kind = m.lastgroup  # the outer group: has() encloses haskey
        assert kind is not None
        if kind == "space":
            continue
        if kind == "has":
            out.append(Token("has", m.group("haskey")))
        elif kind == "string":
            out.append(Token("string", m.group()[1:-1]))
        else:
            out.append(Token(kind, m.group()))
    out.append(Token("end", ""))
    return out


# binary operators: precedence (higher binds tighter) and how to combine the two sides
_BINARY: dict[str, tuple[int, Callable[[Predicate, Predicate], Predicate]]] = {
    "||": (1, lambda a, b: lambda labels: a(labels) or b(labels)),
    "&&": (2, lambda a, b: lambda labels: a(labels) and b(labels)),
}
_UNSUPPORTED_WORDS = ("contains", "starts", "ends")


class _Climber:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def is_op(self, text: str) -> bool:
        return self.current.kind == "op" and self.current.text == text

    def need_op(self, text: str) -> None:
        if not self.is_op(text):
            raise SelectorSyntaxError(f"expected {text!r}, found {self.current.text!r}")
        self.advance()

    def need_string(self) -> str:
        if self.current.kind != "string":
            raise SelectorSyntaxError(f"expected a quoted string, found {self.current.text!r}")
        return self.advance().text

    def binary(self, floor: int) -> Predicate:
        left = self.prefix()
        while self.current.kind == "op" and self.current.text in _BINARY:
            precedence, combine = _BINARY[self.current.text]
            if precedence < floor:
                break
            self.advance()
            left = combine(left, self.binary(precedence + 1))
        return left

    def prefix(self) -> Predicate:
        if self.is_op("!"):
            self.advance()
            inner = self.prefix()
            return lambda labels: not inner(labels)
        return self.primary()

    def primary(self) -> Predicate:
        tok = self.advance()
        if tok.kind == "op" and tok.text == "(":
            inner = self.binary(1)
            self.need_op(")")
            return inner
        if tok.kind == "all":
            return lambda labels: True
        if tok.kind == "has":
            key = tok.text
            return lambda labels: key in labels
        if tok.kind == "global":
            raise SelectorSyntaxError("global() is not supported")
        if tok.kind == "word":
            return self.comparison(tok.text)
        raise SelectorSyntaxError(f"expected a match expression, found {tok.text!r}")

    def values(self) -> frozenset[str]:
        self.need_op("{")
        found: set[str] = set()
        if self.is_op("}"):
            self.advance()
            return frozenset()
        found.add(self.need_string())
        while self.is_op(","):
            self.advance()
            found.add(self.need_string())
        self.need_op("}")
        return frozenset(found)

    def comparison(self, key: str) -> Predicate:
        tok = self.advance()
        if tok.kind == "op" and tok.text in ("==", "!="):
            value = self.need_string()
            if tok.text == "==":
                return lambda labels: key in labels and labels[key] == value
            return lambda labels: key not in labels or labels[key] != value
        if (
            tok.kind == "word"
            and tok.text == "not"
            and self.current.kind == "word"
            and self.current.text == "in"
        ):
            self.advance()
            tok = Token("word", "notin")
        if tok.kind == "word" and tok.text in ("in", "notin"):
            listed = self.values()
            if tok.text == "in":
                return lambda labels: key in labels and labels[key] in listed
            return lambda labels: key not in labels or labels[key] not in listed
        if tok.kind == "word" and tok.text in _UNSUPPORTED_WORDS:
            raise SelectorSyntaxError(f"{tok.text!r} is not supported")
        raise SelectorSyntaxError(f"expected an operator after the label {key!r}, found {tok.text!r}")


@dataclass(frozen=True)
class Selector:
    text: str
    predicate: Predicate

    def matches(self, labels: Labels) -> bool:
        return self.predicate(labels)


def parse(text: str) -> Selector:
    """The selector `text` means; SelectorSyntaxError when it is not one (or is not supported)."""
    tokens = tokenize(text)
    if tokens[0].kind == "end":
        return Selector(text, lambda labels: True)
    climber = _Climber(tokens)
    predicate = climber.binary(1)
    if climber.current.kind != "end":
        raise SelectorSyntaxError(f"unexpected {climber.current.text!r} after the expression in {text!r}")
    return Selector(text, predicate)


def matches(text: str, labels: Labels) -> bool:
    return parse(text).matches(labels)
