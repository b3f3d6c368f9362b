"""`vethguard whatif` on a two-node lab (issue 17, item 5): real flows made with `lab probe` and
kept by the agents are replayed against a proposed deny policy; the flows it would deny are
listed with the rule before and after, and nothing is applied (the probe still passes)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.labs import Lab, lab_up, model_text

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

ONLY_FROM_X = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-only-from-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {}}]}]
"""


def whatif(lab: Lab, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "whatif", "--lab", lab.name, "-f", "-", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_whatif_lists_the_probed_flows_a_deny_would_stop_and_applies_nothing() -> None:
    with lab_up(model_text(), "--nodes", "2", timeout=180) as lab:
        both = {("y/a", "x/a"): True, ("x/b", "x/a"): True}
        assert lab.probe_tcp(80, ["y/a", "x/b"], ["x/a"]) == both  # flows the agents keep

        report: dict[str, Any] = json.loads(whatif(lab, "-o", "json", stdin=ONLY_FROM_X).stdout)
        assert report["objects"] == [
            {"kind": "NetworkPolicy", "namespace": "x", "name": "a-only-from-x", "action": "created"}
        ]
        (denied,) = report["changed"]
        assert (denied["from"], denied["to"], denied["port"], denied["protocol"]) == ("y/a", "x/a", 80, "TCP")
        assert denied["before"]["verdict"] == "allowed" and denied["before"]["reason"] == "ALLOW_NOT_ISOLATED"
        assert denied["after"] == {
            "verdict": "denied",
            "direction": "ingress",
            "endpoint": "x/a",
            "reason": "DROP_POLICY",
            "tier": "NetworkPolicy",
            "policy": "x/a-only-from-x",
            "rule": "ingress of x/a: isolated by x/a-only-from-x, no rule matches",
        }
        assert report["summary"]["y"]["newly_denied"] == 1
        assert set(report["nodes"]) == {"node-1", "node-2"} and report["flows"] >= 2

        text = whatif(lab, stdin=ONLY_FROM_X).stdout
        print(text)
        assert "NetworkPolicy x/a-only-from-x: created (not applied)" in text
        assert any(
            line.split()[:6] == ["y/a", "x/a", "80", "TCP", "allowed", "denied"] for line in text.splitlines()
        )

        assert lab.probe_tcp(80, ["y/a", "x/b"], ["x/a"]) == both  # the live state is unchanged
        code, body = lab_policies(lab)
        assert code == 200 and body["items"] == []


def lab_policies(lab: Lab) -> tuple[int, Any]:
    from controller.lab.client import connect

    return connect(lab.name).request("GET", "/apis/networking.k8s.io/v1/networkpolicies")
