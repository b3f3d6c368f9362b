from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler.selectors import LabelIndex, LabelSelector, SelectorError

KEYS = ["app", "tier", "env", "x"]
VALUES = ["a", "b", "c"]

label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=4)
expressions = st.one_of(
    st.fixed_dictionaries(
        {
            "key": st.sampled_from(KEYS),
            "operator": st.sampled_from(["In", "NotIn"]),
            "values": st.lists(st.sampled_from(VALUES), min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"key": st.sampled_from(KEYS), "operator": st.sampled_from(["Exists", "DoesNotExist"])}
    ),
)
raw_selectors = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2),
        "matchExpressions": st.lists(expressions, max_size=3),
    },
)


def reference_match(raw: dict[str, Any], labels: dict[str, str]) -> bool:
    """Straight from the API documentation, independent of the implementation."""
    for k, v in (raw.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in raw.get("matchExpressions") or []:
        k, op = e["key"], e["operator"]
        if op == "In" and not (k in labels and labels[k] in e["values"]):
            return False
        if op == "NotIn" and k in labels and labels[k] in e["values"]:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def test_an_empty_selector_matches_everything() -> None:
    sel = LabelSelector.parse({})
    assert sel.is_everything
    assert sel.matches({}) and sel.matches({"a": "b"})


def test_a_null_selector_matches_nothing() -> None:
    sel = LabelSelector.parse(None)
    assert not sel.matches({}) and not sel.matches({"a": "b"})
    assert sel.select(LabelIndex([(1, {})])) == set()


def test_match_labels_require_every_pair() -> None:
    sel = LabelSelector.parse({"matchLabels": {"app": "web", "tier": "fe"}})
    assert sel.matches({"app": "web", "tier": "fe", "x": "y"})
    assert not sel.matches({"app": "web"})
    assert not sel.matches({"app": "web", "tier": "be"})


def test_not_in_matches_objects_without_the_key() -> None:
    sel = LabelSelector.parse({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]})
    assert sel.matches({})
    assert sel.matches({"env": "dev"})
    assert not sel.matches({"env": "prod"})


def test_exists_and_does_not_exist_look_only_at_the_key() -> None:
    ex = LabelSelector.parse({"matchExpressions": [{"key": "env", "operator": "Exists"}]})
    dne = LabelSelector.parse(
        {"matchExpressions": [{"key": "env", "operator": "DoesNotExist", "values": []}]}
    )
    assert ex.matches({"env": ""}) and not ex.matches({})
    assert dne.matches({}) and not dne.matches({"env": "x"})


def test_match_labels_and_an_equivalent_in_expression_are_the_same_selector() -> None:
    a = LabelSelector.parse({"matchLabels": {"app": "web"}})
    b = LabelSelector.parse({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]})
    assert a == b and a.key == b.key


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
            "matchExpressions[0].operator",
            "unknown operator",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
            "matchExpressions[0].values",
            "list",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]},
            "matchExpressions[0].values",
            "at least one",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "matchExpressions[0].values",
            "no values",
        ),
        ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key", "non-empty"),
        ({"matchLabels": {"a": 1}}, "matchLabels.a", "string"),
        ({"matchLabels": ["a"]}, "matchLabels", "map"),
        ({"matchLabel": {"a": "b"}}, "matchLabel", "unknown field"),
        ("app=web", "", "object"),
    ],
)
def test_an_invalid_selector_names_the_bad_field(raw: Any, field: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as ei:
        LabelSelector.parse(raw)
    assert ei.value.field == field
    assert fragment in ei.value.message


@settings(max_examples=300)
@given(raw=raw_selectors, labels=label_sets)
def test_matching_agrees_with_the_api_definition(raw: dict[str, Any], labels: dict[str, str]) -> None:
    assert LabelSelector.parse(raw).matches(labels) == reference_match(raw, labels)


@settings(max_examples=300)
@given(raw=raw_selectors, objects=st.lists(label_sets, max_size=12))
def test_selecting_through_the_index_equals_matching_each_object(
    raw: dict[str, Any], objects: list[dict[str, str]]
) -> None:
    sel = LabelSelector.parse(raw)
    index = LabelIndex(enumerate(objects))
    assert set(sel.select(index)) == {i for i, labels in enumerate(objects) if sel.matches(labels)}


@given(raw=raw_selectors)
def test_the_order_of_expressions_does_not_change_the_selector(raw: dict[str, Any]) -> None:
    rev = dict(raw)
    if "matchExpressions" in rev:
        rev["matchExpressions"] = list(reversed(rev["matchExpressions"]))
    assert LabelSelector.parse(raw) == LabelSelector.parse(rev)
