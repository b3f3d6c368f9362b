"""Fixtures for lab tests: labs built through the real `vethguard lab` CLI, always torn down
(tests/support/labs.py: Lab, run_cli, lab_up and the models)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.lab.client import teardown
from tests.support.labs import Lab, lab_up, model_text, run_cli, unique_lab_name


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Build labs (agents off unless asked); every one is removed at the end of the test."""
    created: list[str] = []

    def make(*up_args: str, model: str | None = None, agents: bool = False) -> Lab:
        name = unique_lab_name()
        created.append(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(model if model is not None else model_text())
        run_cli("up", "--name", name, "-f", str(path), *up_args, *([] if agents else ["--no-agents"]))
        return Lab(name)

    try:
        yield make
    finally:
        for name in created:
            teardown(name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One two-node lab (agents off) shared by a module's tests that do not change it much."""
    with lab_up(model_text(), "--nodes", "2", "--no-agents", timeout=120) as made:
        yield made
