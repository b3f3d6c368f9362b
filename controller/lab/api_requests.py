"""What a request to the lab's API server names and asks for, read without serving it: the
resource path (Route), label and field selectors (Filter), and merge patches (JSON merge patch,
and strategic merge patches applied as one without their directives)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.lab.store import BY_PATH, ApiError, Obj, Resource

# --- selectors ------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
Requirement = Callable[[dict[str, str]], bool]


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _requirement(term: str) -> Requirement:
    match = _EQ_RE.match(term)
    if match:
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    match = _SET_RE.match(term)
    if not match:
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    negate, key, op, values_text = match.groups()
    if op is None:
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    if negate:
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    values = {v.strip() for v in values_text.split(",") if v.strip()}
    if op == "in":
        return lambda labels: labels.get(key) in values
    return lambda labels: labels.get(key) not in values


def parse_label_selector(text: str | None) -> list[Requirement]:
    return [_requirement(term) for term in _split_selector(text or "")]


def _field_value(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def parse_field_selector(text: str | None) -> list[Callable[[Obj], bool]]:
    requirements: list[Callable[[Obj], bool]] = []
    for term in _split_selector(text or ""):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = match.groups()
        requirements.append(_field_requirement(path, value, negate=op == "!="))
    return requirements


def _field_requirement(path: str, value: str, negate: bool) -> Callable[[Obj], bool]:
    def check(obj: Obj) -> bool:
        return (_field_value(obj, path) == value) != negate

    return check


@dataclass(frozen=True)
class Filter:
    namespace: str | None
    labels: list[Requirement]
    fields: list[Callable[[Obj], bool]]

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(r(labels) for r in self.labels) and all(f(obj) for f in self.fields)


# --- routing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    resource: Resource
    namespace: str | None  # None = all namespaces (or cluster-scoped)
    name: str | None


def parse_resource_path(path: str) -> Route | None:
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2:
        return None
    resource = BY_PATH.get((api_version, rest[0]))
    if resource is None:
        return None
    if namespace is not None and not resource.namespaced:
        return None
    return Route(resource, namespace, rest[1] if len(rest) == 2 else None)


# A strategic merge patch (kubectl apply/edit/label) is applied as a merge patch without its
# directives: lists are replaced whole, which is what it means for NetworkPolicy's lists (none has
# a merge key); a Pod's containers would lose the merge by name (the lab never patches them).
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json", "")


def without_directives(patch: Any) -> Any:
    """A strategic merge patch's keys without `$patch`, `$retainKeys`, `$setElementOrder/...`."""
    if isinstance(patch, dict):
        return {k: without_directives(v) for k, v in patch.items() if not k.startswith("$")}
    return patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches of plain fields)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
