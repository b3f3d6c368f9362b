"""Generated cases replayed with real packets: a lab's verdicts vs the reference evaluator.

A few seeded cases of tests/reference/cases.py (deterministic: fixed Hypothesis seed, no
shrinking) each get their own two-node lab with agents (`vethguard lab up`), their policies
(`lab apply`, with ipBlock placeholders expanded to the addresses the lab assigned), and
probes over IPv4 and IPv6 on the ports the pods serve (`lab probe`), from every pod and
from every external host. A cell is expected connected when the evaluator allows the
connection AND the destination serves that port (nothing answers elsewhere). Cells that
look like packet loss (expected connected, got blocked) are probed again twice.

LAB_DIFF_CASES (default 3) sets the number of cases.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.reference.cases import (
    Case,
    cases,
    external_objects,
    materialize_policy,
    namespace_objects,
    pod_object,
)
from tests.reference.evaluator import Evaluator
from tests.support.labs import lab_up, run_cli

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.slow,
]

CASES = int(os.environ.get("LAB_DIFF_CASES", "3"))
MAX_PROBED_PORTS = 4
RETRIES = 2


def lab_cli(name: str, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
    command, *rest = args
    return run_cli(command, "--name", name, *rest, stdin=stdin, timeout=timeout).stdout


def probe(
    name: str, port: int, protocol: str, family: int, sources: list[str], targets: list[str]
) -> dict[tuple[str, str], bool]:
    args = ["probe", "--port", str(port), "--protocol", protocol, "--family", str(family), "-o", "json"]
    args += ["--from", *sources, "--to", *targets]
    doc = json.loads(lab_cli(name, *args))
    return {(r["from"], r["to"]): bool(r["connected"]) for r in doc["results"]}


def probed_ports(case: Case) -> list[tuple[int, str]]:
    """(port, protocol) pairs that pods serve, 80/TCP first (every external serves it), capped."""
    served = sorted({(num, proto) for p in case.pods for _, num, proto in p.ports} - {(80, "TCP")})
    return [(80, "TCP"), *served[: MAX_PROBED_PORTS - 1]]


def serves(case: Case, who: str, port: int, protocol: str) -> bool:
    if who.startswith("ext/"):
        ext = next(e for e in case.externals if e.name == who[4:])
        return (port, protocol) in ext.ports
    pod = next(p for p in case.pods if p.key == who)
    return any((num, proto) == (port, protocol) for _, num, proto in pod.ports)


@dataclass
class Tally:
    cells: int = 0
    blocked: int = 0  # expected blocked (by policy or because nothing serves the port)
    by_policy: int = 0  # expected blocked although the destination serves the port


def replay(case: Case, tally: Tally) -> list[str]:
    """Run one case in its own lab; return the cells where packets and evaluator disagree."""
    docs = [*namespace_objects(case), *(pod_object(p) for p in case.pods), *external_objects(case)]
    with lab_up(yaml.safe_dump_all(docs, sort_keys=False), "--nodes", "2", timeout=600) as lab:
        name = lab.name
        status: dict[str, Any] = json.loads(lab_cli(name, "status", "-o", "json"))
        addresses = {key: list(status["pods"][key]["ips"]) for key in (p.key for p in case.pods)}
        policies = [materialize_policy(p, addresses) for p in case.policies]
        lab_cli(name, "apply", "-f", "-", stdin=yaml.safe_dump_all(policies, sort_keys=False))
        ref = Evaluator(
            namespace_objects(case), [pod_object(p, addresses[p.key]) for p in case.pods], policies
        )
        return compare(name, case, ref, addresses, tally)


def compare(
    name: str, case: Case, ref: Evaluator, addresses: dict[str, list[str]], tally: Tally
) -> list[str]:
    pods = [p.key for p in case.pods]
    externals = [f"ext/{e.name}" for e in case.externals]
    wrong: list[str] = []
    for family in (4, 6):
        addr = {
            k: next(a for a in v if ipaddress.ip_address(a).version == family) for k, v in addresses.items()
        }
        addr.update(
            {
                f"ext/{e.name}": next(a for a in e.ips if ipaddress.ip_address(a).version == family)
                for e in case.externals
            }
        )
        for port, protocol in probed_ports(case):
            expect: dict[tuple[str, str], bool] = {}
            for src, dst in [(s, d) for s in pods for d in [*pods, *externals]] + [
                (s, d) for s in externals for d in pods
            ]:
                if src == dst:
                    continue
                who = (src if src in pods else addr[src], dst if dst in pods else addr[dst])
                served = serves(case, dst, port, protocol)
                allowed = ref.allowed(who[0], who[1], port, protocol, family)
                expect[(src, dst)] = served and allowed
                tally.cells += 1
                tally.blocked += not (served and allowed)
                tally.by_policy += served and not allowed
            got = probe(name, port, protocol, family, pods, [*pods, *externals])
            got.update(probe(name, port, protocol, family, externals, pods))
            for _ in range(RETRIES):
                lost = [k for k, v in expect.items() if v and not got.get(k)]
                for src, dst in lost:
                    got.update(probe(name, port, protocol, family, [src], [dst]))
            wrong += [
                f"IPv{family} {protocol}/{port} {s} -> {d}: expected {'connected' if v else 'blocked'}"
                for (s, d), v in expect.items()
                if got.get((s, d)) != v
            ]
    return wrong


def test_generated_cases_give_the_evaluators_verdicts_with_real_packets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tally = Tally()

    @seed(20260521)
    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(max_pods=4, max_policies=3, single_stack=False, min_policies=2))
    def check(case: Case) -> None:
        wrong = replay(case, tally)
        assert not wrong, "\n".join([case.describe(), *wrong])

    check()
    with capsys.disabled():
        print(
            f"\nlab differential: {tally.cells} cells, {tally.blocked} expected blocked, "
            f"{tally.by_policy} of them by policy"
        )
    assert tally.by_policy, "the sample never exercised a policy drop"
