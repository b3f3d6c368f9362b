"""Differential test: compiled map entries + the datapath lookup model vs the reference evaluator.

For generated clusters and policies (tests/reference/cases.py), every (source, destination,
port, protocol, family) question is answered twice: by `controller.debug.verdict_model.verdict` over
`controller.compiler.compute` of the nodes involved, and by `tests.reference.evaluator`,
written from the API documentation without any code of controller/. They must agree.

CI runs a bounded number of examples; VETHGUARD_DIFF_EXAMPLES=2000 runs a long campaign
(the totals are printed: clusters, policies, questions).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.debug.verdict_model import verdict
from tests.reference.cases import (
    Case,
    Query,
    cases,
    materialize_policy,
    namespace_objects,
    node_objects,
    pod_object,
    queries,
    unit_addresses,
)
from tests.reference.evaluator import Evaluator

EXAMPLES = int(os.environ.get("VETHGUARD_DIFF_EXAMPLES", "40"))


@dataclass
class Totals:
    clusters: int = 0
    policies: int = 0
    questions: int = 0
    allowed: int = 0


def compile_and_evaluate(case: Case) -> tuple[Callable[[Query], bool], Evaluator, list[str]]:
    """(lookup-model verdict function, reference evaluator, compiler errors) for one case."""
    addresses = unit_addresses(case)
    ns_objs = namespace_objects(case)
    pod_objs = [pod_object(p, addresses[p.key]) for p in case.pods]
    pol_objs = [materialize_policy(p, addresses) for p in case.policies]
    cluster = cluster_from_objects(ns_objs, pod_objs, pol_objs, node_objects())
    desired: dict[str, NodeDesired] = {n: compute(cluster, n) for n in cluster.nodes}
    node_of = {p.key: f"node-{p.node}" for p in case.pods}

    def lookup(q: Query) -> bool:
        src_d = desired[node_of[q.src]] if q.src in node_of else None
        dst_d = desired[node_of[q.dst]] if q.dst in node_of else None
        return verdict(src_d, dst_d, q.src, q.dst, q.protocol, q.port, q.family).allowed

    return lookup, Evaluator(ns_objs, pod_objs, pol_objs), [str(e) for e in cluster.errors]


def disagreements(case: Case, limit: int = 5) -> tuple[int, int, list[str]]:
    """(questions asked, allowed count, first disagreements) for one case."""
    lookup, ref, errors = compile_and_evaluate(case)
    assert not errors, errors  # generated policies are valid: the compiler must accept them
    asked = allowed = 0
    wrong: list[str] = []
    for q in queries(case, unit_addresses(case)):
        expected = ref.allowed(q.src, q.dst, q.port, q.protocol, q.family)
        got = lookup(q)
        asked += 1
        allowed += expected
        if got != expected and len(wrong) < limit:
            wrong.append(
                f"{q}: evaluator {'allows' if expected else 'denies'}, datapath model "
                f"{'allows' if got else 'denies'}"
            )
    return asked, allowed, wrong


def run_campaign(examples: int, totals: Totals) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases())
    def check(case: Case) -> None:
        asked, allowed, wrong = disagreements(case)
        totals.clusters += 1
        totals.policies += len(case.policies)
        totals.questions += asked
        totals.allowed += allowed
        assert not wrong, "\n".join([case.describe(), *wrong])

    check()


def test_the_compiled_maps_give_the_reference_evaluators_verdict_on_generated_clusters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    totals = Totals()
    run_campaign(EXAMPLES, totals)
    with capsys.disabled():
        print(
            f"\ndifferential: {totals.clusters} clusters, {totals.policies} policies, "
            f"{totals.questions} questions ({totals.allowed} allowed), no disagreement"
        )
    # Guard against a generator that degenerated into trivial answers.
    assert 0 < totals.allowed < totals.questions
