"""Every scenario of ../shared/conformance replayed through the lab CLI (runner.py) on IPv4."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.runner import Runner, load_scenarios, scenario_files, shared_conformance_dir

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

FILES = scenario_files()
SCENARIOS = load_scenarios(FILES) if FILES else []


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    r = Runner(family=4, prefix="ct")
    try:
        yield r
    finally:
        r.close()


def test_the_shared_conformance_files_are_present() -> None:
    assert FILES, f"no scenario files in {shared_conformance_dir()}"
    assert len(SCENARIOS) >= 34


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_scenario_passes_through_the_lab_cli(runner: Runner, scenario: dict) -> None:
    outcome = runner.run_scenario(scenario)
    assert outcome.passed, "\n".join(outcome.failures)
