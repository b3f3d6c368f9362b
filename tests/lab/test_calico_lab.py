"""Calico's projectcalico.org/v3 kinds in a one-node lab with its agent: `lab apply` of a Node's
ibm.role label, a GlobalNetworkPolicy, a Calico NetworkPolicy and a HostEndpoint returns once the
agent realized them, `vethguard get ... --lab` lists them in calicoctl's columns, the agent's
/status counts them and stays healthy, and `lab delete` takes them away again. (Enforcement is
tested where the datapath for them is.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from controller.lab import topology
from controller.lab.agents import query_agent
from tests.support.calico_objects import MANIFEST
from tests.support.labs import Lab, lab_up, model_text

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc, pytest.mark.slow]

NODE_LABEL = """\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {ibm.role: worker_public}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up(model_text(), "--nodes", "1") as lab:
        yield lab


def agent_status(lab: Lab) -> dict[str, Any]:
    return query_agent(topology.LabNames(lab.name).node(1)) or {}


def get(lab: Lab, *argv: str) -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "controller.cli", "get", *argv, "--lab", lab.name],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "failed closed" not in out.stderr
    return [line.split() for line in out.stdout.splitlines()]


def test_calico_s_kinds_are_applied_listed_counted_by_the_agent_and_deleted(lab: Lab) -> None:
    applied = lab.cli("apply", "-f", "-", stdin=NODE_LABEL + "---\n" + MANIFEST).stdout.splitlines()
    assert applied == [
        "node/node-1 configured",
        "networkpolicy.projectcalico.org/x/allow-web created",
        "globalnetworkpolicy.projectcalico.org/deny-nodeports created",
        "hostendpoint.projectcalico.org/node-1-public created",
    ]
    node = lab.status()
    assert node["agents"]["node-1"]["healthy"]
    assert get(lab, "gnp", "-o", "wide") == [
        ["NAME", "ORDER", "SELECTOR"],
        ["deny-nodeports", "1100", "ibm.role", "in", "{", "'worker_public',", "'master_public'", "}"],
    ]
    assert get(lab, "networkpolicies.crd.projectcalico.org", "-A") == [
        ["NAMESPACE", "NAME"],
        ["x", "allow-web"],
    ]
    assert get(lab, "hep", "-o", "wide") == [
        ["NAME", "NODE", "INTERFACE", "IPS", "PROFILES"],
        ["node-1-public", "node-1", "192.0.2.10"],
    ]
    status = agent_status(lab)
    assert (status["calico_policies"], status["host_endpoints"]) == (2, 1)
    assert status["ready"] and status["errors"] == []
    lab.cli("delete", "-f", "-", stdin=MANIFEST)
    status = agent_status(lab)
    assert (status["calico_policies"], status["host_endpoints"], status["ready"]) == (0, 0, True)
    assert lab.status()["agents"]["node-1"]["healthy"]
