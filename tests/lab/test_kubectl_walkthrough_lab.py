"""The AKS network-policy walkthrough (seed-aks-walkthrough) as README shows it: plain kubectl
against a lab's kubeconfig applies, lists and describes the policies, `kubectl vethguard get`
says when the agents realized each step, and real probes show each step's verdicts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.labs import Lab, lab_up
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "kubectl"
CLIENTS = ["development/network-policy", "development/frontend", "production/frontend"]
BACKEND = ["development/backend"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up((EXAMPLES / "model.yaml").read_text()) as made:
        yield made


def kubectl(lab: Lab, *args: str) -> str:
    """kubectl with the lab's kubeconfig in $KUBECONFIG (kubectl takes no flag before a plugin's name)."""
    env = {**os.environ, "KUBECONFIG": lab.cli("kubeconfig").stdout.strip()}
    done = subprocess.run(
        ["kubectl", *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def reaches(lab: Lab) -> list[bool]:
    got = lab.probe_tcp(80, CLIENTS, BACKEND)
    return [got[(c, BACKEND[0])] for c in CLIENTS]


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (None, [True, True, True]),
        ("backend-policy-deny.yaml", [False, False, False]),
        ("backend-policy-frontends.yaml", [False, True, True]),
        ("backend-policy-development.yaml", [False, True, False]),
    ],
)
def test_each_step_applied_with_kubectl_is_realized_and_probed(
    lab: Lab, step: str | None, expected: list[bool]
) -> None:
    if step is not None:
        out = kubectl(lab, "apply", "-f", str(EXAMPLES / step))
        assert out.strip() in (
            "networkpolicy.networking.k8s.io/backend-policy created",
            "networkpolicy.networking.k8s.io/backend-policy configured",
        )
        assert "backend-policy" in kubectl(lab, "get", "networkpolicy", "-n", "development")
        assert "PodSelector:     app=webapp,role=backend" in kubectl(
            lab, "describe", "networkpolicy", "-n", "development", "backend-policy"
        )

        def realized() -> bool:  # kubectl apply returns once the API has it; the agent follows
            out = kubectl(
                lab, "vethguard", "get", "netpol", "-n", "development", "--lab", lab.name, "-o", "wide"
            )
            return out.splitlines()[1].split()[-1] == "1/1"  # REALIZED: on 1 of 1 node

        wait_for(realized, 30, f"the agent realizing {step}")
    assert reaches(lab) == expected
