"""The debug CLI against a running two-node lab with agents and policies in place.

One lab (the conformance 9-pod model, tcp-03's policy) is shared by the module; every test
reads it or adds and removes its own policy. Commands run in-process through controller.cli.main
(the same parser and code as the console script) so 81 explains stay affordable; the kubectl
plugin entry point and the local-node mode (inside a node's namespace, as a DaemonSet pod sees
it) run as real subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from controller.cli import main as vethguard
from tests.conformance.runner import ORDER, default_model, model_manifests, shared_conformance_dir
from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _tcp03_policy() -> list[dict[str, Any]]:
    doc = yaml.safe_load((shared_conformance_dir() / "upstream-e2e-public.yaml").read_text())
    scenarios = doc if isinstance(doc, list) else doc.get("scenarios", doc)
    return list(next(s for s in scenarios if s["id"] == "tcp-03")["steps"][0]["apply"])


AUDIT_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "z-deny-ingress", "namespace": "z", "annotations": {"vethguard.dev/audit": "true"}},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    model = yaml.safe_dump_all(model_manifests(default_model()), sort_keys=False)
    with lab_up(model, "--nodes", "2", timeout=600) as lab:
        lab.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(_tcp03_policy()))
        yield lab


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = vethguard(list(args))
    out = capsys.readouterr()
    return rc, out.out + out.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    rc, out = run(capsys, *args, "-o", "json")
    assert rc == 0, out
    return json.loads(out)


def observe(capsys: pytest.CaptureFixture[str], lab: Lab, *args: str) -> list[dict[str, Any]]:
    rc, out = run(capsys, "observe", "--lab", lab.name, "-o", "json", *args)
    assert rc == 0, out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_bpf_tables_translate_every_map_into_pods_and_policies(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.probe(80, "TCP", 4, "--from", "x/b", "--to", "x/a")  # one allowed flow in conntrack
    endpoints = run_json(capsys, "bpf", "endpoints", "--lab", lab.name)["items"]
    assert sorted(r["pod"] for r in endpoints) == sorted(ORDER)
    assert {r["node"] for r in endpoints} == {"node-1", "node-2"}
    xa = next(r for r in endpoints if r["pod"] == "x/a")
    assert xa["flags"] == ["ingress-isolated"] and xa["isolated_ingress_by"] == ["x/x-a-allows-x-b"]

    policy = run_json(capsys, "bpf", "policy", "x/a", "--lab", lab.name)["items"]
    assert [(r["policy"], r["rule"], r["peer"], r["direction"]) for r in policy] == [
        ("x/x-a-allows-x-b", "ingress[0]", "x:pod=b", "ingress")
    ]
    assert policy[0]["flows"] >= 1 and policy[0]["packets"] >= 3  # the handshake, from conntrack

    ipcache = run_json(capsys, "bpf", "ipcache", "--lab", lab.name, "--node", "node-1")["items"]
    assert {r["meaning"] for r in ipcache} >= {*ORDER, "world", "node/node-1", "node/node-2"}
    idents = run_json(capsys, "bpf", "identities", "--lab", lab.name, "--node", "node-1")["items"]
    assert any(r["meaning"] == "x:pod=a" and r["pods"] == ["x/a"] for r in idents)
    ct = run_json(capsys, "bpf", "ct", "x/a", "--lab", lab.name)["items"]
    assert any(r["from"] == "x/b" and r["to"] == "x/a" and r["rule"] == "ingress[0]" for r in ct)
    counters = run_json(capsys, "bpf", "counters", "x/a", "--lab", lab.name)["items"]
    assert any(r["reason"] == "ALLOW_POLICY" and r["packets"] >= 1 for r in counters)
    rc, text = run(capsys, "bpf", "policy", "--lab", lab.name)
    assert rc == 0 and "x/x-a-allows-x-b" in text and "ingress[0]" in text


def test_get_and_describe_show_selection_and_realization(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    items = run_json(capsys, "get", "netpol", "-A", "--lab", lab.name)["items"]
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items] == [("x", "x-a-allows-x-b")]
    rc, text = run(capsys, "get", "netpol", "-n", "x", "--lab", lab.name, "-o", "wide")
    assert rc == 0
    header, row = text.splitlines()
    assert header.split() == ["NAME", "POD-SELECTOR", "AGE", "TYPES", "MODE", "SELECTED-PODS", "REALIZED"]
    assert row.split()[:2] == ["x-a-allows-x-b", "pod=a"] and row.split()[-2:] == ["x/a", "2/2"]
    rc, text = run(capsys, "describe", "netpol", "x-a-allows-x-b", "-n", "x", "--lab", lab.name)
    assert rc == 0
    assert "      PodSelector: pod=b" in text and "  Policy Types: Ingress" in text
    assert "    node-1: yes" in text and "    node-2: yes" in text
    rc, text = run(capsys, "describe", "netpol", "nope", "-n", "x", "--lab", lab.name)
    assert rc == 1 and "not found" in text


def test_observe_catches_a_drop_and_names_the_isolating_policy(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    observe(capsys, lab)  # drain what earlier tests left in the rings
    assert lab.probe(80, "TCP", 4, "--from", "x/c", "--to", "x/a") == {("x/c", "x/a"): False}
    denied = observe(capsys, lab, "--verdict", "denied", "--pod", "x/a")
    assert denied, "no drop event"
    rec = denied[0]
    assert (rec["from"], rec["to"], rec["port"], rec["protocol"]) == ("x/c", "x/a", 80, "TCP")
    assert (rec["verdict"], rec["reason"], rec["policy"], rec["direction"]) == (
        "denied",
        "DROP_POLICY",
        "x/x-a-allows-x-b",
        "ingress",
    )
    assert rec["node"] == next(
        r["node"]
        for r in run_json(capsys, "bpf", "endpoints", "--lab", lab.name)["items"]
        if r["pod"] == "x/a"
    )
    assert set(rec) >= {"time", "node", "from", "to", "port", "protocol", "verdict", "policy", "reason"}


def _probe_stable(lab: Lab, expect: dict[tuple[str, str], bool]) -> dict[tuple[str, str], bool]:
    """All 81 cells, then re-probe cells that look like packet loss (a busy 2-core machine)."""
    got = lab.probe(
        80, "TCP", 4, *[a for p in ORDER for a in ("--from", p)], *[a for p in ORDER for a in ("--to", p)]
    )
    for _ in range(2):
        lost = [k for k, v in expect.items() if v and not got[k]]
        for s, t in lost:
            got.update(lab.probe(80, "TCP", 4, "--from", s, "--to", t))
    return got


def test_explain_agrees_with_a_real_probe_for_every_cell_of_the_matrix(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    explained = {}
    for src in ORDER:
        for dst in ORDER:
            doc = run_json(capsys, "explain", src, dst, "--port", "80", "--lab", lab.name)
            assert doc["kernel_agrees"], doc
            explained[(src, dst)] = doc
    probed = _probe_stable(lab, {k: d["allowed"] for k, d in explained.items()})
    for (src, dst), doc in explained.items():
        if src == dst:
            # Loopback traffic never reaches the veth: explain says so, the kernel connects it.
            assert doc["same_pod"] and probed[(src, dst)], (src, dst)
        else:
            assert doc["allowed"] == probed[(src, dst)], (src, dst, doc)
    denied = explained[("y/a", "x/a")]
    assert (
        denied["ingress"]["policies"] == ["x/x-a-allows-x-b"] and denied["ingress"]["reason"] == "DROP_POLICY"
    )
    rc, text = run(capsys, "explain", "y/a", "x/a", "--port", "80", "--lab", lab.name)
    assert rc == 0 and "denied: isolated by x/x-a-allows-x-b and no rule matches" in text
    assert "kernel: agrees" in text


def test_reachability_probe_finds_the_kernel_in_agreement(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "reachability", "--lab", lab.name, "--probe")
    assert len(doc["results"]) == 81
    cells = {(r["from"], r["to"]): r for r in doc["results"]}
    assert not cells[("x/c", "x/a")]["allowed"] and cells[("x/b", "x/a")]["allowed"]
    flaky = [k for k, r in cells.items() if not r["agrees"]]
    # A disagreement that is packet loss (expected connected) must not survive a re-probe.
    for s, t in flaky:
        assert cells[(s, t)]["allowed"] and lab.probe(80, "TCP", 4, "--from", s, "--to", t)[(s, t)]


def test_audit_mode_lets_would_be_drops_through_and_reports_them(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = yaml.safe_dump(AUDIT_POLICY)
    lab.cli("apply", "-f", "-", stdin=manifest)
    try:
        observe(capsys, lab)
        assert lab.probe(80, "TCP", 4, "--from", "x/a", "--to", "z/a") == {("x/a", "z/a"): True}
        audit = observe(capsys, lab, "--verdict", "audit")
        assert any(
            (r["from"], r["to"], r["policy"], r["reason"])
            == ("x/a", "z/a", "z/z-deny-ingress", "ALLOW_AUDIT")
            for r in audit
        ), audit
        doc = run_json(capsys, "explain", "x/a", "z/a", "--port", "80", "--lab", lab.name)
        assert doc["allowed"] and doc["ingress"]["reason"] == "ALLOW_AUDIT" and doc["kernel_agrees"]
        rows = run_json(capsys, "get", "netpol", "-n", "z", "--lab", lab.name)
        assert rows["items"][0]["metadata"]["annotations"]["vethguard.dev/audit"] == "true"
    finally:
        lab.cli("delete", "-f", "-", stdin=manifest)
    assert lab.probe(80, "TCP", 4, "--from", "x/a", "--to", "z/a") == {
        ("x/a", "z/a"): True
    }  # no policy: open


def test_the_kubectl_plugin_and_the_local_node_mode_work(lab: Lab) -> None:
    plugin = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from controller.cli import kubectl_main; sys.exit(kubectl_main())",
            "get",
            "netpol",
            "-A",
            "--lab",
            lab.name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout.splitlines()[1].split()[:2] == ["x", "x-a-allows-x-b"]
    # The real kubectl: the lab's kubeconfig (the API on 127.0.0.1), and the plugin through PATH
    kubeconfig = lab.cli("kubeconfig").stdout.strip()
    assert kubeconfig == f"/run/vethguard/labs/{lab.name}/kubeconfig"
    for argv, first in (
        (["--kubeconfig", kubeconfig, "get", "networkpolicy", "-A"], ["x", "x-a-allows-x-b"]),
        (["vethguard", "get", "netpol", "-A", "--lab", lab.name], ["x", "x-a-allows-x-b"]),
    ):
        done = subprocess.run(["kubectl", *argv], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and done.stdout.splitlines()[1].split()[:2] == first, done
    # Inside node-1's namespace, like a DaemonSet pod: objects from the kubeconfig, maps by --node.
    node = lab.cli(
        "exec",
        "node/node-1",
        "--",
        sys.executable,
        "-m",
        "controller.cli",
        "bpf",
        "endpoints",
        "--node",
        "node-1",
        "--pin-root",
        f"/sys/fs/bpf/vethguard/lab-{lab.name}",
        "--kubeconfig",
        f"/run/vethguard/labs/{lab.name}/kubeconfig-nodes",
        "-o",
        "json",
    )
    rows = json.loads(node.stdout)["items"]
    assert rows and {r["node"] for r in rows} == {"node-1"} and all(r["pod"] in ORDER for r in rows)


def test_doctor_finds_this_machine_ready_and_every_agent_caught_up(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = run(capsys, "doctor", "--lab", lab.name, "-o", "json")
    checks = {c["name"]: c for c in json.loads(out)["items"]}
    assert rc == 0, out
    assert {checks[f"agent/node-{i}"]["status"] for i in (1, 2)} == {"ok"}
    assert checks["api"]["status"] == "ok" and checks["node/bpffs"]["status"] == "ok"
    assert checks["crd/clusternetworkpolicies.policy.networking.k8s.io"]["status"] == "ok"
