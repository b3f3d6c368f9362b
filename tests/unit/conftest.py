"""Fixtures for the unit tests: `k8s`, the raw API object builders of tests/support/k8s.py, and
`cli_store`, a lab API server on a unix socket that `vethguard lab --name t` talks to
(tests/support/labs.py: cli_on_store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.lab.store import Store
from tests.support.k8s import K8s
from tests.support.labs import cli_on_store


@pytest.fixture(scope="session")
def k8s() -> type[K8s]:
    return K8s


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    with cli_on_store(tmp_path, monkeypatch) as store:
        yield store
