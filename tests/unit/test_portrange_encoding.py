"""Port ranges become aligned LPM prefixes on dport; the union must be exact and small."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.compiler.portrange import range_to_prefixes


def _expand(prefixes: list[tuple[int, int]]) -> list[int]:
    ports: list[int] = []
    for port, plen in prefixes:
        size = 1 << (16 - plen)
        assert port % size == 0, "every block must be aligned to its size"
        ports.extend(range(port, port + size))
    return ports


@st.composite
def port_ranges(draw: st.DrawFn) -> tuple[int, int]:
    lo = draw(st.integers(0, 65535))
    hi = draw(st.integers(lo, 65535))
    return lo, hi


@given(port_ranges())
def test_the_union_of_the_prefixes_is_exactly_the_range(r: tuple[int, int]) -> None:
    lo, hi = r
    ports = _expand(range_to_prefixes(lo, hi))
    assert sorted(ports) == list(range(lo, hi + 1))  # exact and no overlap (no duplicates)


@given(port_ranges())
def test_a_range_needs_at_most_thirty_prefixes(r: tuple[int, int]) -> None:
    assert len(range_to_prefixes(*r)) <= 30


def test_a_single_port_is_one_exact_prefix() -> None:
    assert range_to_prefixes(80, 80) == [(80, 16)]


def test_the_full_range_is_one_wildcard_prefix() -> None:
    assert range_to_prefixes(0, 65535) == [(0, 0)]


def test_the_worst_case_range_splits_into_thirty_blocks() -> None:
    assert len(range_to_prefixes(1, 65534)) == 30


def test_a_typical_range_is_split_minimally() -> None:
    assert range_to_prefixes(8000, 8080) == [(8000, 10), (8064, 12), (8080, 16)]


@pytest.mark.parametrize(("lo", "hi"), [(-1, 5), (5, 4), (0, 65536)])
def test_an_invalid_range_is_rejected(lo: int, hi: int) -> None:
    with pytest.raises(ValueError):
        range_to_prefixes(lo, hi)
