"""allocate_update: an incremental identity allocation equals a fresh allocate() or declines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler.identity import allocate, allocate_update


def enc(k: str) -> bytes:
    return k.encode()


KEYS = st.sets(st.text(alphabet="abcdef", min_size=1, max_size=3), max_size=12)


@settings(max_examples=400, deadline=None)
@given(before=KEYS, removed=KEYS, added=KEYS, hi=st.integers(min_value=11, max_value=40))
def test_an_update_that_is_local_gives_exactly_what_a_fresh_allocation_gives(
    before: set[str], removed: set[str], added: set[str], hi: int
) -> None:
    lo = 10
    current = allocate(before, lo, hi + 30, enc)
    owner = {v: k for k, v in current.items()}
    got = allocate_update(current, owner, sorted(removed), sorted(added), lo, hi + 30, enc)
    want = allocate((before - removed) | added, lo, hi + 30, enc)
    if got is not None:
        assert got[0] == want
        assert got[1] == {v: k for k, v in want.items()}


def test_most_updates_in_a_sparse_space_are_local() -> None:
    keys = {f"k{i}" for i in range(2000)}
    current = allocate(keys, 256, (1 << 24) - 1, enc)
    owner = {v: k for k, v in current.items()}
    local = 0
    for i in range(200):
        got = allocate_update(current, owner, [f"k{i}"], [f"new{i}"], 256, (1 << 24) - 1, enc)
        local += got is not None
    assert local >= 190


def test_an_update_does_not_modify_its_inputs() -> None:
    current = allocate({"a", "b", "c"}, 0, 99, enc)
    owner = {v: k for k, v in current.items()}
    snapshot = (dict(current), dict(owner))
    allocate_update(current, owner, ["a"], ["d"], 0, 99, enc)
    assert (current, owner) == snapshot
