"""The product's Calico selector parser (controller/compiler/calico_selector.py) against an
independent reference written from Calico's documented grammar (tests/reference/calico_selector.py):
random expressions rendered with random spacing and parentheses mean the same to both (and what
the expression says); near-valid texts (dropped, repeated, swapped or foreign tokens) are accepted
by both or refused by both, and mean the same where accepted."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler.calico_selector import CalicoSelectorError, parse_calico_selector
from tests.reference import calico_selector as reference

# keys named like the language's words are label keys wherever a key is expected
KEYS = (
    "a",
    "b",
    "app.kubernetes.io/name",
    "ibm.role",
    "x-1_2",
    "not",
    "in",
    "has",
    "all",
    "contains",
    "global",
)
VALUES = ("", "x", "y", "a b", "&&", "}", ",", "it's", 'say "hi"')
SPACES = ("", " ", "  ", "\t")
WORD = re.compile(r"[A-Za-z0-9_./-]")

# An expression as a tuple: ("all",), ("has", k), ("eq" | "ne", k, v), ("in" | "notin", k, values),
# ("not", e), ("and" | "or", e1, e2).
Ast = tuple[Any, ...]
PRECEDENCE = {"or": 1, "and": 2, "not": 3}  # every match operator: 4


def meaning(e: Ast, labels: dict[str, str]) -> bool:
    op = e[0]
    if op == "all":
        return True
    if op == "has":
        return e[1] in labels
    if op == "eq":
        return labels.get(e[1]) == e[2]
    if op == "ne":
        return labels.get(e[1]) != e[2]
    if op == "in":
        return e[1] in labels and labels[e[1]] in e[2]
    if op == "notin":
        return not (e[1] in labels and labels[e[1]] in e[2])
    if op == "not":
        return not meaning(e[1], labels)
    if op == "and":
        return meaning(e[1], labels) and meaning(e[2], labels)
    return meaning(e[1], labels) or meaning(e[2], labels)


KEY = st.sampled_from(KEYS)
VALUE = st.sampled_from(VALUES)
LEAVES = st.one_of(
    st.just(("all",)),
    st.tuples(st.just("has"), KEY),
    st.tuples(st.sampled_from(("eq", "ne")), KEY, VALUE),
    st.tuples(st.sampled_from(("in", "notin")), KEY, st.lists(VALUE, max_size=3).map(tuple)),
)
ASTS: st.SearchStrategy[Ast] = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(("and", "or")), inner, inner),
    ),
    max_leaves=8,
)
LABELS = st.dictionaries(st.sampled_from((*KEYS, "v")), st.sampled_from((*VALUES, "v")), max_size=5)


def quoted(value: str, draw: Any) -> str:
    quotes = [q for q in ("'", '"') if q not in value]
    q = draw(st.sampled_from(quotes))
    return f"{q}{value}{q}"


def pieces(e: Ast, draw: Any, floor: int = 0) -> list[str]:
    """The tokens of `e` (has(...) and all(...) whole, with random inner spacing), in parentheses
    where precedence needs them (binding tighter than `floor`) and sometimes where it does not."""
    op = e[0]
    sp = lambda: draw(st.sampled_from(SPACES))  # noqa: E731
    if op == "all":
        out = [f"all({sp()})"]
    elif op == "has":
        out = [f"has({sp()}{e[1]}{sp()})"]
    elif op in ("eq", "ne"):
        out = [e[1], "==" if op == "eq" else "!=", quoted(e[2], draw)]
    elif op in ("in", "notin"):
        listed: list[str] = []
        for i, v in enumerate(e[2]):
            listed += ([","] if i else []) + [quoted(v, draw)]
        word = ["in"] if op == "in" else draw(st.sampled_from((["not", "in"], ["notin"])))
        out = [e[1], *word, "{", *listed, "}"]
    elif op == "not":
        out = ["!", *pieces(e[1], draw, PRECEDENCE["not"])]
    else:
        p = PRECEDENCE[op]
        out = [*pieces(e[1], draw, p), "&&" if op == "and" else "||", *pieces(e[2], draw, p + 1)]
    precedence = PRECEDENCE.get(op, 4)
    if precedence < floor or draw(st.integers(0, 5)) == 0:
        out = ["(", *out, ")"]
    return out


def join(parts: list[str], draw: Any, keep_words_apart: bool = True) -> str:
    text = ""
    for part in parts:
        gap = draw(st.sampled_from(SPACES))
        if keep_words_apart and text and not gap and WORD.match(text[-1]) and WORD.match(part[0]):
            gap = " "
        text += gap + part
    return text + draw(st.sampled_from(SPACES))


def product_meaning(text: str) -> Any:
    try:
        return parse_calico_selector(text)
    except CalicoSelectorError:
        return None


def reference_meaning(text: str) -> Any:
    try:
        return reference.parse(text)
    except reference.SelectorSyntaxError:
        return None


@settings(max_examples=500, deadline=None)
@given(e=ASTS, data=st.data(), label_sets=st.lists(LABELS, min_size=1, max_size=6))
def test_a_rendered_expression_means_the_same_to_the_product_and_the_reference(
    e: Ast, data: Any, label_sets: list[dict[str, str]]
) -> None:
    text = join(pieces(e, data.draw), data.draw)
    ours, theirs = parse_calico_selector(text), reference.parse(text)
    for labels in label_sets:
        assert ours.matches(labels) == theirs.matches(labels) == meaning(e, labels), (text, labels)


# foreign tokens: operators cut in half or doubled, the unsupported operators, misspaced calls
FOREIGN = (
    *("(", ")", "!", "&&", "||", "==", "!=", "=", "&", "|", "{", "}", ",", "'", '"'),
    *("in", "not", "notin", "all", "has", "a", "b", "'v'", '"w"', "x y"),
    *("all()", "all( )", "all ()", "has(a)", "has( b )", "has (a)", "has(", "has()", "!has(b)"),
    *("contains", "starts with", "ends with", "startswith", "global()", "global( )"),
)


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    parts = pieces(draw(ASTS), draw)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, max(len(parts) - 1, 0)))
        how = draw(st.sampled_from(("drop", "repeat", "insert", "replace", "swap")))
        if how == "drop" and parts:
            del parts[i]
        elif how == "repeat" and parts:
            parts.insert(i, parts[i])
        elif how == "insert":
            parts.insert(i, draw(st.sampled_from(FOREIGN)))
        elif how == "replace" and parts:
            parts[i] = draw(st.sampled_from(FOREIGN))
        elif how == "swap" and i + 1 < len(parts):
            parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return join(parts, draw, keep_words_apart=draw(st.booleans()))


@settings(max_examples=1500, deadline=None)
@given(text=near_valid(), label_sets=st.lists(LABELS, min_size=1, max_size=6))
def test_a_near_valid_text_is_accepted_by_both_or_refused_by_both_and_means_the_same(
    text: str, label_sets: list[dict[str, str]]
) -> None:
    ours, theirs = product_meaning(text), reference_meaning(text)
    assert (ours is None) == (theirs is None), (text, "product accepts" if ours else "reference accepts")
    if ours is not None:
        for labels in label_sets:
            assert ours.matches(labels) == theirs.matches(labels), (text, labels)


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("all( )", True),
        ("has( a )", True),
        ("has (a)", False),
        ("all ()", False),
        ("a notin {'x'}", True),
        ("not in {'x'}", True),
        ("a in {'x',}", False),
        ("a starts with 'x'", False),
        ("global()", False),
        ("()", False),
        (" \t ", True),
    ],
)
def test_the_lexical_corners_are_judged_alike(text: str, accepted: bool) -> None:
    assert (reference_meaning(text) is not None) == accepted
    assert (product_meaning(text) is not None) == accepted
