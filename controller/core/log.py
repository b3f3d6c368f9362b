"""Structured logging: JSON lines on stdout, or human-friendly console output on a TTY."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog


class _CurrentStdout:
    """Writes to whatever sys.stdout is at the time of the write (it may be swapped later)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


def configure(level: str = "info", *, json: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog (and route stdlib logging through the same output).

    json=None picks JSON unless the stream is a TTY.
    """
    out: Any = stream if stream is not None else _CurrentStdout()
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if json:
        processors.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries (urllib3, kubernetes, pyroute2) log through stdlib logging: keep their
    # warnings, drop their chatter.
    logging.basicConfig(
        level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def scalar_fields(result: Any) -> Any:
    """The scalar fields of a dataclass- or mapping-like result, for a log line (never its lists)."""
    if result is None:
        return None
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        out = {}
        for f in dataclasses.fields(result):
            v = getattr(result, f.name)
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[f.name] = v
        return out
    if isinstance(result, Mapping):
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
    return str(result)[:200]
