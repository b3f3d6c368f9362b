"""The agent's error book: the last failure of each stage of a pass (compute, discover, attach,
detach, uplink, sync, datapath) and the invalid objects of the last compute, as /status shows
them under `errors` and the metrics count them."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.agent.metrics import Metrics
from controller.core.errors import PolicyError, VethguardError
from controller.core.log import get_logger

log = get_logger("vethguard.agent")


@dataclass(frozen=True)
class AgentError:
    object: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"object": self.object, "field": self.field, "message": self.message}


class ErrorBook:
    """Failures by stage (each kept until the stage succeeds again) and invalid objects.

    `lock` is the agent's status lock: /status reads both tables under it."""

    def __init__(self, node: str, metrics: Metrics, lock: threading.Lock) -> None:
        self.node = node
        self.metrics = metrics
        self._lock = lock
        self.by_stage: dict[str, AgentError] = {}  # stage -> last failure
        # invalid objects of the last compute; replaced (never mutated) by record_policy_errors
        self.policy: list[AgentError] = []
        self._logged_policy: set[AgentError] = set()

    def fail(self, stage: str, exc: BaseException | str, **context: Any) -> None:
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.by_stage[stage] = AgentError(f"agent {self.node}", stage, msg)
        self.metrics.agent_errors_total.labels(stage=stage).inc()
        if isinstance(exc, BaseException) and not isinstance(exc, VethguardError):
            log.error(f"{stage} failed", node=self.node, error=msg, exc_info=exc, **context)
        else:  # a VethguardError already explains itself: no traceback
            log.error(f"{stage} failed", node=self.node, error=msg, **context)

    def clear(self, stage: str) -> None:
        if stage in self.by_stage:
            with self._lock:
                self.by_stage.pop(stage, None)
            log.info(f"{stage} recovered", node=self.node)

    def record_policy_errors(self, errors: Iterable[PolicyError]) -> None:
        """The invalid objects of a compute; each new one is logged once."""
        current: list[AgentError] = []
        seen: set[AgentError] = set()
        for e in errors:
            ae = AgentError(e.object, e.field, e.message)
            if ae not in seen:
                seen.add(ae)
                current.append(ae)
        for ae in current:
            if ae not in self._logged_policy:
                log.warning("invalid object", object=ae.object, field=ae.field, message=ae.message)
        self._logged_policy = seen
        with self._lock:
            self.policy = current
        self.metrics.policy_errors.set(len(current))
