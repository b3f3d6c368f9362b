"""Errors meant for the user: raised ones printed without a traceback, reported ones per field."""

from __future__ import annotations

from dataclasses import dataclass


class VethguardError(Exception):
    """A failure with a clear, user-facing explanation."""


@dataclass(frozen=True)
class PolicyError:
    """A problem in one field of a user's object, reported (status, logs), never raised: the
    rest of the object, and every other object, is still enforced."""

    object: str  # e.g. "NetworkPolicy x/deny-all"
    field: str  # e.g. "spec.ingress[0].ports[1].port"
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.field}: {self.message}"
