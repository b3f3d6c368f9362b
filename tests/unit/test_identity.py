from __future__ import annotations

import ipaddress
from random import Random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.compiler.identity import (
    RESERVED_NAMES,
    allocate,
    allocate_cidr_identities,
    allocate_pod_identities,
    is_cidr_identity,
    is_pod_identity,
    pod_identity_key,
)
from controller.core.identities import CIDR_ID_MAX, CIDR_ID_MIN, POD_ID_MIN

pod_keys = st.lists(
    st.tuples(
        st.sampled_from(["x", "y", "z"]),
        st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b", "c"]), max_size=2),
    ),
    max_size=20,
)


def test_reserved_identities_are_the_documented_four() -> None:
    assert dict(RESERVED_NAMES) == {0: "any", 1: "host", 2: "world", 3: "remote-node"}


def test_pods_with_the_same_namespace_and_labels_share_an_identity() -> None:
    a = pod_identity_key("x", {"app": "web", "tier": "fe"})
    b = pod_identity_key("x", {"tier": "fe", "app": "web"})
    c = pod_identity_key("y", {"app": "web", "tier": "fe"})
    ids = allocate_pod_identities([a, b, c])
    assert a == b and ids[a] == ids[b]
    assert ids[a] != ids[c]


@given(pod_keys, st.randoms())
def test_pod_identity_allocation_depends_only_on_the_set_of_keys(raw: list[Any], rnd: Random) -> None:
    keys = [pod_identity_key(ns, labels) for ns, labels in raw]
    shuffled = list(keys)
    rnd.shuffle(shuffled)
    ids = allocate_pod_identities(keys)
    assert ids == allocate_pod_identities(shuffled)
    assert len(set(ids.values())) == len(ids)
    assert all(is_pod_identity(i) and i >= POD_ID_MIN for i in ids.values())


def test_cidr_identities_are_in_their_own_range_and_distinct() -> None:
    nets = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "10.1.0.0/16", "::/0", "0.0.0.0/0", "fd00::/64")]
    ids = allocate_cidr_identities(nets)
    assert len(set(ids.values())) == len(nets)
    assert all(CIDR_ID_MIN <= i <= CIDR_ID_MAX and is_cidr_identity(i) for i in ids.values())


def test_colliding_keys_probe_linearly_in_sorted_key_order() -> None:
    # A 3-slot space forces collisions; the result is still a bijection and order-independent.
    keys = ["a", "b", "c"]
    ids = allocate(keys, 10, 12, lambda k: k.encode())
    assert sorted(ids.values()) == [10, 11, 12]
    assert ids == allocate(list(reversed(keys)), 10, 12, lambda k: k.encode())


def test_adding_a_key_keeps_existing_identities_unless_it_collides() -> None:
    keys = [pod_identity_key("ns", {"app": f"a{i}"}) for i in range(200)]
    before = allocate_pod_identities(keys)
    after = allocate_pod_identities([*keys, pod_identity_key("ns", {"app": "new"})])
    assert sum(before[k] != after[k] for k in keys) <= 1
