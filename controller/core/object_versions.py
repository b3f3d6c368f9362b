"""Keys, resourceVersions and content digests of raw Kubernetes API objects.

resourceVersions are opaque (the API says so): they are compared only for equality here. To tell
whether two readers hold the same state of a kind (an agent's last realized caches and the list a
CLI just made), each side folds its objects into a digest: the XOR of a 64-bit hash of every
object's (key, resourceVersion). XOR makes the digest independent of order and lets an informer
keep it up to date in O(1) per event (remove the old pair, add the new one); keys are unique
within a kind, so no pair can cancel another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

EMPTY_DIGEST = 0


def object_key(obj: Mapping[str, Any], namespaced: bool) -> str:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    if namespaced:
        return f"{meta.get('namespace', '')}/{name}"
    return name


def resource_version_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ""
    return str(meta.get("resourceVersion", "") or "")


def object_digest(key: str, resource_version: str) -> int:
    """The 64-bit hash of one object's key and resourceVersion (one term of a kind's digest)."""
    data = f"{key}\0{resource_version}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def kind_digest(objects: Iterable[Mapping[str, Any]], namespaced: bool) -> int:
    """The digest of a kind's objects, as an informer that holds exactly these keeps it."""
    out = EMPTY_DIGEST
    for obj in objects:
        out ^= object_digest(object_key(obj, namespaced), resource_version_of(obj))
    return out


def digest_text(digest: int) -> str:
    """How a digest is written in /status and compared: 16 hex digits."""
    return f"{digest:016x}"
