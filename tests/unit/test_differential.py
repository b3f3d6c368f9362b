"""Differential test: compiled map entries + the datapath lookup model vs the reference evaluator.

For generated clusters and policies (tests/reference/cases.py), every (source, destination,
port, protocol, family) question is answered twice: by `controller.debug.verdict_model.verdict` over
`controller.compiler.compute` of the nodes involved, and by `tests.reference.evaluator`,
written from the API documentation without any code of controller/. They must agree.

Two campaigns: NetworkPolicy only (pods with their own network; node addresses among the
destinations and sources), and with ClusterNetworkPolicies and host-network pods (issue 15).
CI runs a bounded number of examples; VETHGUARD_DIFF_EXAMPLES=2000 (NetworkPolicy) and
VETHGUARD_DIFF_CNP_EXAMPLES=300 (with ClusterNetworkPolicies) run long campaigns (the totals
are printed: clusters, policies, cluster policies, questions); a failing case with
ClusterNetworkPolicies is shrunk to a minimal one only with VETHGUARD_DIFF_SHRINK=1 (minutes).
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import CalicoObjects
from controller.compiler.cnp import parse_cluster_network_policy
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.core.errors import PolicyError
from controller.debug.verdict_model import verdict
from tests.reference.calico_cases import CalicoCase, calico_cases, calico_manifests
from tests.reference.cases import (
    Case,
    Query,
    cases,
    materialize_cluster_policy,
    materialize_policy,
    namespace_objects,
    node_objects,
    pod_object,
    queries,
    unit_addresses,
)
from tests.reference.evaluator import Evaluator

EXAMPLES = int(os.environ.get("VETHGUARD_DIFF_EXAMPLES", "40"))
CNP_EXAMPLES = int(os.environ.get("VETHGUARD_DIFF_CNP_EXAMPLES", "30"))
# Shrinking a failing case with ClusterNetworkPolicies takes minutes: only when asked for.
CNP_SHRINK = os.environ.get("VETHGUARD_DIFF_SHRINK", "") == "1"
CNP_CASES = cases(cluster_policies=4, host_network=2)


@dataclass
class Totals:
    clusters: int = 0
    policies: int = 0
    cluster_policies: int = 0
    questions: int = 0
    allowed: int = 0


def compile_and_evaluate(
    case: Case, calico: list[dict[str, Any]] | None = None
) -> tuple[Callable[[Query], bool], Evaluator, list[str]]:
    """(lookup-model verdict function, reference evaluator, compiler errors) for one case, with
    `calico`: Calico policies (GlobalNetworkPolicy / NetworkPolicy manifests) besides."""
    addresses = unit_addresses(case)
    ns_objs = namespace_objects(case)
    pod_objs = [pod_object(p, addresses[p.key]) for p in case.pods]
    pol_objs = [materialize_policy(p, addresses) for p in case.policies]
    cnp_objs = [materialize_cluster_policy(p, addresses) for p in case.cluster_policies]
    node_objs = node_objects(nodes=case.nodes)
    calico_objs = CalicoObjects(
        global_policies=[c for c in calico or [] if c["kind"] == "GlobalNetworkPolicy"],
        namespaced_policies=[c for c in calico or [] if c["kind"] == "NetworkPolicy"],
    )
    cluster = cluster_from_objects(ns_objs, pod_objs, pol_objs, node_objs, cnp_objs, calico_objs)
    desired: dict[str, NodeDesired] = {n: compute(cluster, n) for n in cluster.nodes}
    node_of = {p.key: f"node-{p.node}" for p in case.pods if not p.host_network}
    host_network = {p.key for p in case.pods if p.host_network}

    def end(who: str, family: int) -> tuple[NodeDesired | None, str]:
        """A pod's NodeDesired and key; a host-network pod is its (node's) address."""
        if who in host_network:
            return None, next(a for a in addresses[who] if ipaddress.ip_address(a).version == family)
        return (desired[node_of[who]] if who in node_of else None), who

    def lookup(q: Query) -> bool:
        (src_d, src), (dst_d, dst) = end(q.src, q.family), end(q.dst, q.family)
        return verdict(src_d, dst_d, src, dst, q.protocol, q.port, q.family).allowed

    reference = Evaluator(ns_objs, pod_objs, pol_objs, cnp_objs, node_objs, calico_policies=calico or [])
    return lookup, reference, [str(e) for e in cluster.errors]


def disagreements(
    case: Case, limit: int = 5, calico: list[dict[str, Any]] | None = None
) -> tuple[int, int, list[str]]:
    """(questions asked, allowed count, first disagreements) for one case."""
    lookup, ref, errors = compile_and_evaluate(case, calico)
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


def run_campaign(
    examples: int,
    totals: Totals,
    strategy: st.SearchStrategy[Case] | st.SearchStrategy[CalicoCase],
    shrink: bool = True,
) -> None:
    """Every generated case answered by both sides; a CalicoCase adds its Calico policies."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if shrink else [])],
    )
    @given(case=strategy)
    def check(case: Case | CalicoCase) -> None:
        base = case.case if isinstance(case, CalicoCase) else case
        manifests = calico_manifests(case, unit_addresses(base)) if isinstance(case, CalicoCase) else []
        asked, allowed, wrong = disagreements(base, calico=manifests)
        totals.clusters += 1
        totals.policies += len(base.policies) + len(manifests)
        totals.cluster_policies += len(base.cluster_policies)
        totals.questions += asked
        totals.allowed += allowed
        assert not wrong, "\n".join([case.describe(), *wrong])

    check()


def report(capsys: pytest.CaptureFixture[str], name: str, totals: Totals) -> None:
    with capsys.disabled():
        print(
            f"\n{name}: {totals.clusters} clusters, {totals.policies} policies, "
            f"{totals.cluster_policies} cluster policies, {totals.questions} questions "
            f"({totals.allowed} allowed), no disagreement"
        )
    # Guard against a generator that degenerated into trivial answers.
    assert 0 < totals.allowed < totals.questions


def test_the_compiled_maps_give_the_reference_evaluators_verdict_on_generated_clusters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    totals = Totals()
    run_campaign(EXAMPLES, totals, cases())
    report(capsys, "differential", totals)


def test_the_compiled_maps_give_the_reference_evaluators_verdict_with_cluster_network_policies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    totals = Totals()
    run_campaign(CNP_EXAMPLES, totals, CNP_CASES, shrink=CNP_SHRINK)
    report(capsys, "differential with cluster network policies", totals)


CALICO_EXAMPLES = int(os.environ.get("VETHGUARD_DIFF_CALICO_EXAMPLES", "30"))


def test_the_compiled_maps_give_the_reference_evaluators_verdict_with_calico_policies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    totals = Totals()
    run_campaign(CALICO_EXAMPLES, totals, calico_cases(cluster_policies=2, host_network=1), shrink=CNP_SHRINK)
    report(capsys, "differential with calico policies", totals)


def _features(raw: dict[str, Any]) -> set[str]:
    """What one generated ClusterNetworkPolicy exercises, as words."""
    spec = raw["spec"]
    out = {f"tier {spec['tier']}", f"subject {next(iter(spec['subject']))}"}
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction) or []:
            out.add(f"{direction} {rule['action']}")
            out.update(f"{direction} peer {next(iter(p))}" for p in rule[peers_key])
            for entry in rule.get("protocols") or [{"none": {}}]:
                kind = next(iter(entry))
                port = (entry[kind] or {}).get("destinationPort") if isinstance(entry[kind], dict) else None
                out.add(f"protocol {kind}" + (f" {next(iter(port))}" if port else ""))
    return out


def test_the_generated_cluster_network_policies_are_valid_api_objects_covering_every_form() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=CNP_CASES)
    def check(case: Case) -> None:
        addresses = unit_addresses(case)
        objs = [materialize_cluster_policy(p, addresses) for p in case.cluster_policies]
        for raw in objs:
            errors: list[PolicyError] = []
            assert parse_cluster_network_policy(raw, errors) is not None
            assert errors == [], (raw, errors)
            assert raw["apiVersion"] == "policy.networking.k8s.io/v1alpha2"
            seen.update(_features(raw))
        # the reference accepts them too (it raises InvalidPolicy on what the CRD would refuse)
        Evaluator(namespace_objects(case), [], [], objs, node_objects(nodes=case.nodes))
        keys = [(p["spec"]["tier"], p["spec"]["priority"]) for p in objs]
        if len(set(keys)) < len(keys):
            seen["equal priorities in a tier"] += 1
        if any(p.host_network for p in case.pods):
            seen["host-network pod"] += 1
        if len({n.labels for n in case.nodes}) > 1 and any(dict(n.labels).get("role") for n in case.nodes):
            seen["node role label"] += 1

    check()
    expected = {
        "tier Admin",
        "tier Baseline",
        "subject namespaces",
        "subject pods",
        *(f"{d} {a}" for d in ("ingress", "egress") for a in ("Accept", "Deny", "Pass")),
        *(f"ingress peer {k}" for k in ("namespaces", "pods")),
        *(f"egress peer {k}" for k in ("namespaces", "pods", "networks", "nodes")),
        "protocol none",
        *(f"protocol {p} {f}" for p in ("tcp", "udp", "sctp") for f in ("number", "range")),
        "protocol destinationNamedPort",
        "equal priorities in a tier",
        "host-network pod",
        "node role label",
    }
    assert expected <= set(seen), sorted(expected - set(seen))
