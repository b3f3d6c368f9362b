"""Fixtures for the pure-layer unit tests: `k8s`, the raw API object builders of
tests/support/k8s.py."""

from __future__ import annotations

import pytest

from tests.support.k8s import K8s


@pytest.fixture(scope="session")
def k8s() -> type[K8s]:
    return K8s
