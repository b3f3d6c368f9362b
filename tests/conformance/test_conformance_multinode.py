"""Every scenario of ../shared/conformance replayed through the lab CLI on a 3-node routed lab.

Pods are spread over three node namespaces, so most pairs cross the underlay: egress is judged
by the source node's agent and ingress by the destination node's agent, each with its own maps.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.runner import Runner, load_scenarios, scenario_files

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

FILES = scenario_files()
SCENARIOS = load_scenarios(FILES) if FILES else []


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    r = Runner(family=4, nodes=3, prefix="cm")
    try:
        yield r
    finally:
        r.close()


def test_the_runner_spreads_pods_over_three_nodes(runner: Runner) -> None:
    assert runner.nodes == 3
    assert len(SCENARIOS) >= 34


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_scenario_passes_through_a_three_node_lab(runner: Runner, scenario: dict) -> None:
    outcome = runner.run_scenario(scenario)
    assert outcome.passed, "\n".join(outcome.failures)
