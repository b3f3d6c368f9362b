"""ClusterNetworkPolicy tiers compiled into policy entries (controller/compiler/stages/tiers.py),
decided by the lookup model of the datapath (controller/debug/verdict_model.py): the upstream
conformance scenarios, the fold of shorter prefixes, ranks across lookups, and node traffic."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.debug.verdict_model import verdict
from tests.support.cnp_scenarios import NODE, replay, scenarios

NODES = [
    {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]},
    }
]


def compiled(
    namespaces: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    nps: list[dict[str, Any]],
    cnps: list[dict[str, Any]],
) -> Callable[[str, str, int, str], bool]:
    cluster = cluster_from_objects(list(namespaces), list(pods), nps, NODES, cnps)
    assert not cluster.errors, cluster.errors
    desired = compute(cluster, NODE)

    def connected(src: str, dst: str, port: int, proto: str) -> bool:
        return verdict(desired, desired, src, dst, proto, port).allowed

    return connected


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s["id"])
def test_the_compiled_tiers_answer_every_upstream_conformance_probe_as_upstream_expects(
    scenario: dict[str, Any],
) -> None:
    assert replay(scenario, compiled) == []
