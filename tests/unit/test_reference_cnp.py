"""The reference evaluator's ClusterNetworkPolicy semantics (tests/reference/evaluator.py, written
from the API text) reproduce every upstream conformance probe of ../shared/conformance/cnp: the
evaluator the datapath will be checked against is itself checked against upstream first."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.reference.evaluator import Evaluator, InvalidPolicy

SCENARIOS = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "cnp" / "cnp-public.yaml"


def _scenarios() -> list[dict[str, Any]]:
    if not SCENARIOS.is_file():
        pytest.skip(f"{SCENARIOS} is not present")
    return list(yaml.safe_load(SCENARIOS.read_text()))


def _pod_object(i: int, spec: dict[str, Any]) -> dict[str, Any]:
    ports = [
        {
            "containerPort": p["port"],
            "protocol": p["protocol"],
            **({"name": p["name"]} if "name" in p else {}),
        }
        for p in spec.get("ports", [])
    ]
    address = str(ipaddress.IPv4Address("10.244.1.10") + i)
    return {
        "metadata": {
            "namespace": spec["namespace"],
            "name": spec["name"],
            "labels": dict(spec.get("labels") or {}),
        },
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": [{"ip": address}]},
    }


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", obj)
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def replay(scenario: dict[str, Any]) -> list[str]:
    """Every check whose answer differs from upstream's, as text."""
    model = scenario["model"]
    namespaces = {
        n["name"]: {"metadata": {"name": n["name"], "labels": dict(n.get("labels") or {})}}
        for n in model["namespaces"]
    }
    pods = {f"{p['namespace']}/{p['name']}": _pod_object(i, p) for i, p in enumerate(model["pods"])}
    objects: dict[tuple[str, str, str], dict[str, Any]] = {}
    wrong = []
    for n, step in enumerate(scenario["steps"]):
        for gone in step.get("delete") or []:
            objects.pop(_key(gone), None)
        for obj in step.get("apply") or []:
            objects[_key(obj)] = obj
        if "label" in step:
            target = step["label"]
            meta = (
                namespaces[target["name"]]
                if target["kind"] == "Namespace"
                else pods[f"{target['namespace']}/{target['name']}"]
            )["metadata"]
            meta["labels"] = dict(target["labels"])
        ev = Evaluator(
            namespaces.values(),
            pods.values(),
            [o for o in objects.values() if o["kind"] == "NetworkPolicy"],
            [o for o in objects.values() if o["kind"] == "ClusterNetworkPolicy"],
        )
        for check in step.get("checks") or []:
            got = ev.allowed(check["from"], check["to"], check["port"], check["protocol"], 4)
            if got != check["connected"]:
                wrong.append(f"step {n}: {check} -> {got}")
    return wrong


def test_the_scenarios_cover_both_tiers_every_action_and_a_networkpolicy_in_between() -> None:
    text = SCENARIOS.read_text() if SCENARIOS.is_file() else ""
    if not text:
        pytest.skip(f"{SCENARIOS} is not present")
    for needle in (
        "tier: Admin",
        "tier: Baseline",
        "action: Accept",
        "action: Deny",
        "action: Pass",
        "kind: NetworkPolicy",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("scenario", _scenarios() if SCENARIOS.is_file() else [], ids=lambda s: s["id"])
def test_the_reference_evaluator_answers_every_upstream_conformance_probe_as_upstream_expects(
    scenario: dict[str, Any],
) -> None:
    checks = sum(len(s.get("checks") or []) for s in scenario["steps"])
    assert checks > 0
    assert replay(scenario) == []


def test_the_reference_evaluator_refuses_objects_the_crd_would_reject() -> None:
    ns = [{"metadata": {"name": "a"}}]
    base: dict[str, Any] = {
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}},
    }
    bad_specs: list[dict[str, Any]] = [
        {"tier": "Developer"},
        {"priority": 1001},
        {"subject": {}},
        {"ingress": [{"action": "Allow", "from": [{"namespaces": {}}]}]},
        {"ingress": [{"action": "Deny", "from": []}]},
        {"egress": [{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}]},
        {
            "ingress": [
                {
                    "action": "Deny",
                    "from": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}],
                }
            ]
        },
    ]
    for bad in bad_specs:
        raw = {**base, "spec": {**base["spec"], **bad}}
        with pytest.raises(InvalidPolicy):
            Evaluator(ns, [], [], [raw])
