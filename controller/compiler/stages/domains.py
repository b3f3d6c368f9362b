"""Domain identities for ClusterNetworkPolicy `domainNames` peers (issue 20; docs/INTERNALS.md
"Egress by domain name").

An address a pod learns from a DNS answer is keyed in its tier profile by the domain identity of
the question's name: one identity per *class* of names that match the same patterns. Every
pattern of every policy makes a class: an exact name E (matching E and the wildcards whose
suffix E ends in), and a wildcard `*.S` (the names whose longest wildcard suffix is S: they match
`*.S` and the wildcards of S's own suffixes). A name's class is its exact pattern if there is
one, else its longest wildcard suffix (`identity()`, what the agent asks of each answer). A
rule's peer `*.S` or E is then the set of classes that match it (`of_pattern`). Identities are
derived from a hash of the class's pattern (and kept for a class while it exists).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.core import dnsnames
from controller.core.identities import DOMAIN_ID_MAX, DOMAIN_ID_MIN

ClassKey = tuple[bool, str]  # (wildcard, the exact name or the wildcard's suffix)


def _key(pattern: str) -> ClassKey:
    p = dnsnames.canonical(pattern)
    return (True, p[len(dnsnames.WILDCARD) :]) if p.startswith(dnsnames.WILDCARD) else (False, p)


def _matches(key: ClassKey, suffixes: Iterable[str]) -> set[str]:
    """The patterns a class's names match: its own, and every wildcard matching a name of it (the
    exact name, or one label in front of the wildcard class's suffix)."""
    wildcard, text = key
    name = f"x.{text}" if wildcard else text
    wildcards = {dnsnames.WILDCARD + s for s in suffixes}
    return {dnsnames.WILDCARD + text if wildcard else text} | {
        p for p in wildcards if dnsnames.matches(p, name)
    }


def _hashed_id(key: ClassKey, taken: set[int]) -> int:
    """A class's identity from a hash of its pattern (the next free one on a collision): the same
    in every agent and after a restart, so addresses learned before a restart keep their class,
    and a pattern removed and another added do not swap identities (which a counter would do,
    giving the new pattern what pods learned for the old one)."""
    span = DOMAIN_ID_MAX - DOMAIN_ID_MIN + 1
    digest = hashlib.blake2b(f"{int(key[0])}:{key[1]}".encode(), digest_size=8).digest()
    n = int.from_bytes(digest, "big") % span
    while DOMAIN_ID_MIN + n in taken:
        n = (n + 1) % span
    return DOMAIN_ID_MIN + n


@dataclass(frozen=True)
class DomainClasses:
    ids: Mapping[ClassKey, int]
    of_pattern: Mapping[str, frozenset[int]]  # canonical pattern -> identities of its classes

    @classmethod
    def build(cls, patterns: Iterable[str], previous: DomainClasses | None = None) -> DomainClasses:
        keys = sorted({_key(p) for p in patterns})
        old = previous.ids if previous is not None else {}
        ids = {k: old[k] for k in keys if k in old}
        taken = set(ids.values())
        for k in keys:
            if k not in ids:
                ids[k] = _hashed_id(k, taken)
                taken.add(ids[k])
        suffixes = [text for wildcard, text in keys if wildcard]
        of_pattern: dict[str, set[int]] = {}
        for k in keys:
            for pattern in _matches(k, suffixes):
                of_pattern.setdefault(pattern, set()).add(ids[k])
        return cls(ids, {p: frozenset(v) for p, v in of_pattern.items()})

    def identities(self, pattern: str) -> frozenset[int]:
        """The domain identities a rule's `pattern` selects (empty for an unknown pattern)."""
        return self.of_pattern.get(dnsnames.canonical(pattern), frozenset())

    def pattern_of(self, identity: int) -> str | None:
        """The pattern a class is named by (`api.example`, `*.s3.example`), None if unknown."""
        for (wildcard, text), ident in self.ids.items():
            if ident == identity:
                return dnsnames.WILDCARD + text if wildcard else text
        return None

    def identity(self, name: str) -> int | None:
        """The class of a name a pod asked for: its exact pattern, else its longest wildcard
        suffix; None when no pattern matches it."""
        name = dnsnames.canonical(name)
        hit = self.ids.get((False, name))
        if hit is not None:
            return hit
        labels = name.split(".")
        for i in range(1, len(labels)):  # the longest proper suffix first
            hit = self.ids.get((True, ".".join(labels[i:])))
            if hit is not None:
                return hit
        return None


NO_DOMAINS = DomainClasses({}, {})
