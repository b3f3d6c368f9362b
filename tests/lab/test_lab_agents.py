"""Labs with their agents on: startup waits for realization, apply waits for it, agents are supervised."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.labs import Lab
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.bcc,
    pytest.mark.slow,
]

DENY_Y = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, ingress: []}
"""


@pytest.fixture
def agent_lab(lab_factory: Callable[..., Lab]) -> Lab:
    """A lab whose API server sends no BOOKMARKs: realization must not need them."""
    return lab_factory("--bookmark-interval", "0", agents=True)


def test_up_returns_with_every_agent_healthy_and_caught_up(agent_lab: Lab) -> None:
    status = agent_lab.status()
    agent = status["agents"]["node-1"]
    assert agent["healthy"] is True
    assert agent["realized_generation"] >= status["resourceVersion"]


def test_apply_returns_once_the_policy_is_enforced_and_says_so_without_bookmarks(agent_lab: Lab) -> None:
    agent_lab.cli("apply", "-f", "-", stdin=DENY_Y)
    assert (
        agent_lab.status()["agents"]["node-1"]["realized_generation"] >= agent_lab.status()["resourceVersion"]
    )
    # REALIZED, describe and explain read the agent's realized state by equality only
    header, row = (
        line.split() for line in agent_lab.debug("get", "netpol", "-n", "y", "-o", "wide").splitlines()
    )
    assert (header[-1], row[0], row[-1]) == ("REALIZED", "deny-all", "1/1")
    assert "    node-1: yes" in agent_lab.debug("describe", "netpol", "deny-all", "-n", "y").splitlines()
    explained = agent_lab.debug("explain", "x/a", "y/a", "--port", "80", "-o", "json")
    doc = json.loads(explained)
    assert "not caught up" not in explained and (doc["allowed"], doc["kernel_agrees"]) == (False, True)
    blocked = agent_lab.probe(80, "TCP", 4, "--from", "x/a", "--to", "y/a", "x/b")
    assert blocked == {("x/a", "y/a"): False, ("x/a", "x/b"): True}
    agent_lab.cli("delete", "-f", "-", stdin=DENY_Y)
    assert agent_lab.probe(80, "TCP", 4, "--from", "x/a", "--to", "y/a") == {("x/a", "y/a"): True}


def test_an_agent_that_dies_is_started_again_with_the_same_node_name(agent_lab: Lab) -> None:
    first = agent_lab.status()["agents"]["node-1"]["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: agent_lab.status()["agents"]["node-1"]["pid"] != first, 1.5, "a new agent pid", interval=0.1
    )
    wait_for(
        lambda: agent_lab.status()["agents"]["node-1"]["healthy"], 60, "the new agent healthy", interval=0.1
    )
    agent = agent_lab.status()["agents"]["node-1"]
    assert agent["restarts"] == 1
    assert "node-1" in Path(f"/proc/{agent['pid']}/cmdline").read_text()
