"""Deterministic identity allocation (docs/INTERNALS.md, "Identities").

- 0..255 are reserved (ANY, HOST, WORLD, REMOTE_NODE, the rest unused);
- pod identities (256 .. 2^24-1): one per distinct (namespace, pod label set);
- CIDR identities (2^24 .. 2^25-1): one per distinct prefix (ipBlock cidr/except, exact per-pod
  prefixes for egress named ports);
- namespace identities (2^25 .. 2^26-1): one per namespace the compiler knows of (a pod
  address's ipcache entry carries its namespace's; ClusterNetworkPolicy peers that select every
  pod of a namespace are keyed by it).

Allocation: keys are encoded canonically to bytes, processed in sorted order of that encoding;
each key's home slot is `lo + H(key) mod (hi - lo + 1)` (H = first 8 bytes of blake2b), and on
a collision the next free slot is taken (linear probing, wrapping). The result depends only on
the set of keys, so every agent and every restart computes the same numbers for the same
cluster, and adding a key moves no other key unless it collides on the way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from controller.core.identities import (
    CIDR_ID_MAX,
    CIDR_ID_MIN,
    ID_ANY,
    ID_HOST,
    ID_REMOTE_NODE,
    ID_WORLD,
    NS_ID_MAX,
    NS_ID_MIN,
    POD_ID_MAX,
    POD_ID_MIN,
)
from controller.core.net import IPNetwork

RESERVED_NAMES: Mapping[int, str] = {
    ID_ANY: "any",
    ID_HOST: "host",
    ID_WORLD: "world",
    ID_REMOTE_NODE: "remote-node",
}

K = TypeVar("K")

PodIdentityKey = tuple[str, tuple[tuple[str, str], ...]]  # (namespace, sorted label items)


class IdentitySpaceExhausted(RuntimeError):
    pass


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def allocate(keys: Iterable[K], lo: int, hi: int, encode: Callable[[K], bytes]) -> dict[K, int]:
    """Map each distinct key to a number in [lo, hi] by hash + linear probing in sorted key order."""
    size = hi - lo + 1
    encoded = sorted({encode(k): k for k in keys}.items())
    if len(encoded) > size:
        raise IdentitySpaceExhausted(f"{len(encoded)} keys do not fit in [{lo}, {hi}]")
    used: set[int] = set()
    out: dict[K, int] = {}
    for data, key in encoded:
        slot = _hash64(data) % size
        while slot in used:
            slot = (slot + 1) % size
        used.add(slot)
        out[key] = lo + slot
    return out


def allocate_update(
    current: Mapping[K, int],
    owner: Mapping[int, K],
    removed: Iterable[K],
    added: Iterable[K],
    lo: int,
    hi: int,
    encode: Callable[[K], bytes],
) -> tuple[dict[K, int], dict[int, K]] | None:
    """allocate() of (current's keys - removed + added), derived from `current` (= allocate()'s
    result for its keys; `owner` = its inverse) when that stays local, else None (call allocate).

    Local means no other key moves, which holds when every removed key is the end of every
    probe run through its slot (no later key of its cluster probed past it) and every added key
    finds its home slot free. With 10k keys in 16M slots nearly every change is local. Keys are
    removed, then added, one at a time; each step is again an allocate() result, so the whole
    is. Returns new (key -> number, number -> key) maps; the inputs are not modified.
    """
    size = hi - lo + 1
    out = dict(current)
    inverse = dict(owner)
    for key in removed:
        num = out.pop(key, None)
        if num is None:
            continue
        slot = num - lo
        # A key in the occupied run after `slot` whose home is not in (slot, its own slot]
        # probed through `slot`: removing this key would move it.
        nxt = (slot + 1) % size
        while lo + nxt in inverse:
            home = _hash64(encode(inverse[lo + nxt])) % size
            if not _in_cyclic(home, slot, nxt, size):
                return None
            nxt = (nxt + 1) % size
        del inverse[num]
    for key in added:
        if key in out:
            continue
        home = _hash64(encode(key)) % size
        if lo + home in inverse:
            return None
        if len(out) >= size:
            raise IdentitySpaceExhausted(f"{len(out) + 1} keys do not fit in [{lo}, {hi}]")
        out[key] = lo + home
        inverse[lo + home] = key
    return out, inverse


def _in_cyclic(x: int, after: int, upto: int, size: int) -> bool:
    """x in the cyclic interval (after, upto] of [0, size)."""
    return 0 < (x - after) % size <= (upto - after) % size


def pod_identity_key(namespace: str, labels: Mapping[str, str]) -> PodIdentityKey:
    return (namespace, tuple(sorted(labels.items())))


def _encode_pod_key(key: PodIdentityKey) -> bytes:
    return json.dumps([key[0], [list(kv) for kv in key[1]]], separators=(",", ":")).encode()


def _encode_prefix(net: IPNetwork) -> bytes:
    # version, then address bytes, then prefix length: the natural order of prefixes.
    return bytes([net.version]) + net.network_address.packed + bytes([net.prefixlen])


def encode_namespace(name: str) -> bytes:
    return name.encode()


def allocate_namespace_identities(names: Iterable[str]) -> dict[str, int]:
    return allocate(names, NS_ID_MIN, NS_ID_MAX, encode_namespace)


def allocate_pod_identities(keys: Iterable[PodIdentityKey]) -> dict[PodIdentityKey, int]:
    return allocate(keys, POD_ID_MIN, POD_ID_MAX, _encode_pod_key)


def allocate_cidr_identities(prefixes: Iterable[IPNetwork]) -> dict[IPNetwork, int]:
    return allocate(prefixes, CIDR_ID_MIN, CIDR_ID_MAX, _encode_prefix)


def is_pod_identity(ident: int) -> bool:
    return POD_ID_MIN <= ident <= POD_ID_MAX


def is_cidr_identity(ident: int) -> bool:
    return CIDR_ID_MIN <= ident <= CIDR_ID_MAX


def is_namespace_identity(ident: int) -> bool:
    return NS_ID_MIN <= ident <= NS_ID_MAX
