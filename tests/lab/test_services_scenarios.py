"""tests/scenarios/services.yaml replayed through the lab CLI on a 2-node lab with cluster DNS:
the source documents' walkthroughs by Service name (wget/getent inside pods, ClusterIP probes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conformance.runner import model_manifests
from tests.support.labs import lab_up, run_cli

pytestmark = pytest.mark.slow

SCENARIO_FILE = Path(__file__).resolve().parents[1] / "scenarios" / "services.yaml"
SCENARIOS: list[dict[str, Any]] = yaml.safe_load(SCENARIO_FILE.read_text())
BODY = "vethguard lab responder"


def lab_cli(lab: str, *args: str, stdin: str | None = None) -> str:
    command, *rest = args
    return run_cli(command, "--name", lab, *rest, stdin=stdin, timeout=300).stdout


def in_pod(lab: str, pod: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab, pod, "--", *command],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def observe(lab: str, check: dict[str, Any]) -> tuple[bool, bool]:
    """(expected, observed) for one check."""
    if "url" in check:
        out = in_pod(lab, check["exec"], "wget", "-q", "-T", "3", "-t", "1", "-O-", check["url"])
        return bool(check["connected"]), out.returncode == 0 and BODY in out.stdout
    if "resolve" in check:
        out = in_pod(lab, check["exec"], "getent", "hosts", check["resolve"])
        return bool(check["resolves"]), out.returncode == 0
    doc = json.loads(
        lab_cli(
            lab,
            "probe",
            "--port",
            str(check["port"]),
            "--protocol",
            check.get("protocol", "TCP"),
            "--from",
            check["from"],
            "--to",
            check["to"],
            "--timeout",
            "2",
            "-o",
            "json",
        )
    )
    return bool(check["connected"]), bool(doc["results"][0]["connected"])


def describe(check: dict[str, Any]) -> str:
    if "url" in check:
        return f"{check['exec']} wget {check['url']}"
    if "resolve" in check:
        return f"{check['exec']} resolve {check['resolve']}"
    return f"{check['from']} -> {check['to']}:{check['port']}/{check.get('protocol', 'TCP')}"


def test_the_scenario_file_has_the_source_walkthroughs() -> None:
    ids = {s["id"] for s in SCENARIOS}
    assert {"svc-howto-frontend-backend-service", "svc-aks-walkthrough-by-name"} <= ids
    for scenario in SCENARIOS:
        assert scenario["steps"] and all(step.get("checks") for step in scenario["steps"])


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_scenario_by_service_name(scenario: dict[str, Any]) -> None:
    manifests = model_manifests(scenario["model"]) + list(scenario["model"].get("services") or [])
    failures, gaps_met = [], []
    with lab_up(yaml.safe_dump_all(manifests, sort_keys=False), "--nodes", "2", "--dns", timeout=300) as made:
        lab = made.name
        for number, step in enumerate(scenario["steps"], start=1):
            if step.get("apply"):
                lab_cli(lab, "apply", "-f", "-", stdin=yaml.safe_dump_all(step["apply"]))
            for check in step["checks"]:
                expected, observed = observe(lab, check)
                line = f"step {number}: {describe(check)}: expected {expected}, got {observed}"
                if check.get("known_gap"):
                    if observed == expected:
                        gaps_met.append(f"{line} (known_gap now met: remove the marker)")
                elif observed != expected:
                    failures.append(line)
    assert not failures, "\n".join(failures)
    assert not gaps_met, "\n".join(gaps_met)
