"""DNS names as users write them: ExternalHost `spec.names` in the lab, and (with a leading
`*.` wildcard) ClusterNetworkPolicy `domainNames` peers.

A name is compared in its canonical form: lower case, without the root's trailing dot. Rules
(RFC 1035 / RFC 1123 host names, with `_` allowed inside a label as resolvers accept it): at
most 253 characters, labels of 1-63 of a-z, 0-9, `-` and `_` that neither start nor end with
`-`, and at least two labels (a single label would be searched under the pod's cluster search
domains, never looked up as written).
"""

from __future__ import annotations

import re

CLUSTER_DOMAIN = "cluster.local"  # the cluster DNS's own domain (kubelet --cluster-domain)
NAME_MAX = 253
LABEL_MAX = 63
WILDCARD = "*."
_LABEL_RE = re.compile(r"[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?")


def canonical(name: str) -> str:
    """`name` lower-cased, without a trailing dot (no check: see problems())."""
    return name.lower().removesuffix(".")


def problems(name: str, *, wildcard: bool = False) -> list[str]:
    """What is wrong with `name` (empty: a valid name). `wildcard`: a leading `*.` is allowed
    (it matches one or more labels in front of the rest)."""
    if not isinstance(name, str) or not name:
        return ["must be a non-empty string"]
    text = canonical(name)
    if wildcard and text.startswith(WILDCARD):
        text = text[len(WILDCARD) :]
    out: list[str] = []
    if len(text) > NAME_MAX:
        out.append(f"must be no more than {NAME_MAX} characters")
    labels = text.split(".")
    if len(labels) < 2:
        out.append("must have at least two labels (like example.com)")
    for label in labels:
        if "*" in label:
            out.append(
                "a wildcard is only allowed as a whole first label (*.example.com)"
                if wildcard
                else "must not contain a wildcard"
            )
            break
        if not label:
            out.append("must not contain an empty label")
            break
        if len(label) > LABEL_MAX:
            out.append(f"label {label[:16]}... must be no more than {LABEL_MAX} characters")
            break
        if not _LABEL_RE.fullmatch(label):
            out.append(
                f"label {label!r} must consist of a-z, 0-9, '-' and '_', and start and end with "
                "a letter, digit or '_'"
            )
            break
    return out


def matches(pattern: str, name: str) -> bool:
    """Whether `name` is `pattern` (both canonical), or for `*.rest` ends in `.rest` with at
    least one label before it (`*.kubernetes.io` matches `www.kubernetes.io` and
    `latest.blog.kubernetes.io`, not `kubernetes.io`)."""
    if pattern.startswith(WILDCARD):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern
