"""Output helpers shared by the debug commands: aligned tables, JSON/YAML, ages, port prefixes."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

from controller.agent.flow_record import proto_name as proto_name
from controller.core.columns import table as table


def dump(doc: Any, fmt: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if fmt == "yaml":
        out.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    else:
        out.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def port_range(port: int, plen: int) -> str:
    """A dport prefix as the ports it covers: 80, 8080-8095, or * for any."""
    if plen == 0:
        return "*"
    if plen == 16:
        return str(port)
    span = 1 << (16 - plen)
    return f"{port}-{port + span - 1}"


def age(created: str | None, now: datetime | None = None) -> str:
    """kubectl's short age: 45s, 12m, 3h, 5d (<unknown> without a timestamp)."""
    if not created:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An API object's metadata (empty when it has none or it is not an object)."""
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An API object's spec (empty when it has none or it is not an object)."""
    s = obj.get("spec")
    return s if isinstance(s, Mapping) else {}


def labels_text(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def selector_text(sel: Mapping[str, Any] | None) -> str:
    """A LabelSelector as kubectl prints it (matchLabels a=b, expressions `k in (v1,v2)`)."""
    if not sel:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op = str(expr.get("operator", ""))
        key = expr.get("key", "")
        values = ",".join(str(v) for v in expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {op} ({values})")
    return ",".join(parts) if parts else "<none>"
