"""Every scenario of ../shared/conformance replayed through the lab CLI (runner.py) on IPv6.

Placeholders ({{ip NS/POD}}) expand to the pod's IPv6 address; checks that involve an
external host the scenario declares with an IPv4 address only are skipped with a note (the
runner prints it), as the issue allows. Same scenarios, same expectations as the IPv4 run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.runner import Runner, load_scenarios, scenario_files, shared_conformance_dir

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

FILES = scenario_files()
SCENARIOS = load_scenarios(FILES) if FILES else []


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    r = Runner(family=6, prefix="c6")
    try:
        yield r
    finally:
        r.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_scenario_passes_through_the_lab_cli_over_ipv6(runner: Runner, scenario: dict) -> None:
    assert FILES, f"no scenario files in {shared_conformance_dir()}"
    outcome = runner.run_scenario(scenario)
    assert outcome.passed, "\n".join(outcome.failures)
