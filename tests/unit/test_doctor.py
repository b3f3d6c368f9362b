"""`vethguard doctor`'s checks over narrow inputs (no cluster, no root): preflight problems,
an API that fails or hides a kind, optional APIs served or not, the agent's RBAC as a
SubjectAccessReview answers it, and agents missing, not ready, with errors or behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from controller.agent.preflight import Problem
from controller.compiler.clusterview import RawObjects
from controller.core.errors import VethguardError
from controller.debug import doctor
from controller.debug.inputs import NodeRef, Target
from tests.support.debug_views import raw_cluster, realizing, restamped


def statuses(checks: list[doctor.Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def test_preflight_problems_fail_their_check_and_the_others_pass() -> None:
    checks = doctor.preflight_checks(lambda: [("kernel", []), ("bpffs", [Problem("bpffs", "mount it")])])
    assert [(c.name, c.status, c.detail) for c in checks] == [
        ("node/kernel", "ok", ""),
        ("node/bpffs", "FAIL", "mount it"),
    ]


class FakeTarget(Target):
    def __init__(self, objects: RawObjects | Exception, agents: dict[str, dict[str, Any] | None]) -> None:
        self._objects, self._agents = objects, agents

    def objects(self) -> RawObjects:
        if isinstance(self._objects, Exception):
            raise self._objects
        return self._objects

    def nodes(self) -> list[NodeRef]:
        return [NodeRef(n, Path("/nonexistent")) for n in self._agents]

    def agent_status(self, node: NodeRef) -> dict[str, Any] | None:
        return self._agents[node.name]


def test_an_api_that_fails_is_one_line_and_a_kind_it_hides_is_a_warning() -> None:
    failed, raw = doctor.api_check(FakeTarget(ApiException(status=401, reason="Unauthorized"), {}))
    assert raw is None and failed.status == "FAIL" and failed.detail.startswith("the API server answered 401")
    hidden = RawObjects(warnings=("not allowed to list clusternetworkpolicies.policy.networking.k8s.io",))
    warned, _ = doctor.api_check(FakeTarget(hidden, {}))
    assert warned.status == "warn" and "not allowed to list" in warned.detail
    lab_down, _ = doctor.api_check(FakeTarget(VethguardError("lab x is not running"), {}))
    assert (lab_down.status, lab_down.detail) == ("FAIL", "lab x is not running")
    with pytest.raises(RuntimeError):  # a bug is not a check result
        doctor.api_check(FakeTarget(RuntimeError("bug"), {}))


def test_optional_apis_not_served_are_warnings_naming_what_is_not_enforced() -> None:
    codes = {doctor.OPTIONAL_APIS[0][1]: 404}
    checks = doctor.crd_checks(lambda path: codes.get(path, 200))
    assert checks[0].status == "warn" and "no such policies exist or are enforced" in checks[0].detail
    assert {c.status for c in checks[1:]} == {"ok"} and len(checks) == 4


def test_rbac_fails_a_kind_the_agent_may_not_watch_and_says_where_to_fix_it() -> None:
    def review(group: str, resource: str, verb: str) -> bool:
        return not (resource == "pods" and verb == "watch")

    checks = statuses(doctor.rbac_checks(review))
    assert checks["rbac/pods"] == "FAIL" and checks["rbac/networkpolicies.networking.k8s.io"] == "ok"
    failed = next(c for c in doctor.rbac_checks(review) if c.status == "FAIL")
    assert failed.detail == f"{doctor.AGENT_SERVICE_ACCOUNT} may not watch it (deploy/rbac.yaml)"
    assert doctor.rbac_checks(None)[0].detail.startswith("not applicable")

    def forbidden(group: str, resource: str, verb: str) -> bool:
        raise ApiException(status=403, reason="Forbidden")

    assert {c.status for c in doctor.rbac_checks(forbidden)} == {"warn"}


def test_agents_missing_not_ready_with_errors_or_behind_are_reported_per_node() -> None:
    deny_all = {"metadata": {"namespace": "x", "name": "deny-all"}, "spec": {"podSelector": {}}}
    listed = raw_cluster([deny_all])
    older = dataclasses.replace(listed, policies=restamped(listed.policies, "9"))
    agents: dict[str, dict[str, Any] | None] = {
        "node-1": realizing(listed),
        "node-2": None,
        "node-3": {"ready": False, "errors": [{"object": "", "field": "sync", "message": "map full"}]},
        "node-4": realizing(older),
        "node-5": {**realizing(listed), "errors": [{"object": "x/p", "message": "bad"}]},
    }
    checks = {c.name: c for c in doctor.agent_checks(list(agents), agents, listed.digests)}
    assert checks["agent/node-1"].status == "ok"
    assert checks["agent/node-1"].detail == "ready, realized 15 objects: the state the API lists"
    assert checks["agent/node-2"].detail == "the agent does not answer /status (not running?)"
    assert (checks["agent/node-3"].status, checks["agent/node-3"].detail) == (
        "FAIL",
        "not ready: sync: map full",
    )
    assert checks["agent/node-4"].status == "warn"
    assert checks["agent/node-4"].detail.endswith(
        "but other NetworkPolicy objects than the API lists now: "
        "not caught up yet (or the API changed since the list)"
    )
    assert checks["agent/node-5"].status == "warn" and "x/p" in checks["agent/node-5"].detail


def test_doctor_stops_after_an_api_that_does_not_answer() -> None:
    target = FakeTarget(ApiException(status=500, reason="Internal"), {"node-1": None})
    checks = doctor.run(target, None, lambda: [("kernel", [])])
    assert [c.name for c in checks] == ["node/kernel", "api"]
