"""The debug CLI on Calico host endpoints in a two-node lab (issue 16): with the guide's
deny-nodeports preDNAT policy on the nodes' public host endpoints, `explain` of an outside host
to node-1's NodePort names the preDNAT Deny and the kernel agrees, a real probe's DROP_PREDNAT
event shows in `observe` named for node-1's interface and the policy, and `bpf hosteps` lists
both nodes' entries."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main as vethguard
from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.bcc]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "calico"
NODE_1, OUTSIDE = "10.244.1.1", "203.0.113.5"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up((EXAMPLES / "model.yaml").read_text(), "--nodes", "2") as lab:
        text = "\n---\n".join(
            (EXAMPLES / n).read_text() for n in ("host-endpoints.yaml", "deny-nodeports.yaml")
        )
        lab.cli("apply", "-f", "-", stdin=text)
        yield lab


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    rc = vethguard([*args, "-o", "json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_explain_observe_and_bpf_name_the_preDNAT_deny_on_the_nodes_interface(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    deadline = time.monotonic() + 20  # the agents realize the host endpoints
    while True:
        e = run_json(capsys, "explain", OUTSIDE, NODE_1, "--port", "30080", "--lab", lab.name)
        if e["kernel_agrees"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    [h] = e["host_endpoints"]
    assert (e["allowed"], h["node"], h["host_endpoint"], h["endpoint"]) == (
        False,
        "node-1",
        "node-1-public",
        "node/node-1:eth0",
    )
    assert (h["policy_set"], h["tier"], h["policy"], h["rule_index"], h["action"]) == (
        "preDNAT",
        "Calico",
        "deny-nodeports",
        0,
        "Deny",
    )
    assert e["kernel_agrees"], e
    assert [k["reason"] for k in h["kernel"]] == ["DROP_PREDNAT"]

    capsys.readouterr()
    vethguard(["observe", "--lab", lab.name, "-o", "json"])  # drain what came before
    capsys.readouterr()
    assert lab.probe(30080, "TCP", 4, "--from", "ext/outside", "--to", NODE_1) == {
        ("ext/outside", NODE_1): False
    }
    assert vethguard(["observe", "--lab", lab.name, "-o", "json", "--verdict", "denied"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    drops = [r for r in recs if r["reason"] == "DROP_PREDNAT" and r["dst_ip"] == NODE_1]
    assert drops, recs
    assert {(r["endpoint"], r["host_endpoint"], r["policy_set"], r["policy"], r["tier"]) for r in drops} == {
        ("node/node-1:eth0", "node-1-public", "preDNAT", "deny-nodeports", "Calico")
    }

    rows = run_json(capsys, "bpf", "hosteps", "--lab", lab.name)["items"]
    assert sorted((r["node"], r["interface"], r["host_endpoint"], tuple(r["flags"])) for r in rows) == [
        ("node-1", "eth0", "node-1-public", ("preDNAT",)),
        ("node-2", "eth0", "node-2-public", ("preDNAT",)),
    ]
    assert all(r["policies_prednat"] == ["GlobalNetworkPolicy deny-nodeports"] for r in rows)
    assert all("TCP/22" in r["failsafe_inbound"] for r in rows)
    capsys.readouterr()
    assert vethguard(["bpf", "hosteps", "--lab", lab.name, "-o", "wide"]) == 0
    text = capsys.readouterr().out
    assert "node-1-public" in text and "FAILSAFE-IN" in text and "failsafe on node-2: inbound TCP/22" in text
    assert vethguard(["explain", OUTSIDE, NODE_1, "--port", "30080", "--lab", lab.name]) == 0
    text = capsys.readouterr().out
    assert "preDNAT: GlobalNetworkPolicy deny-nodeports ingress[0]: Deny" in text
