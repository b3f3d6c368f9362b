"""`vethguard lab apply` with an object the API server refuses: the server's message, each
other object applied on its own, a non-zero exit. The lab's API server and the CLI's client
talk over a unix socket in a temporary directory (no root, no namespaces, no agents)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import cli
from controller.lab.store import Store

MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {matchLabels: {"bad key!": db}}
  policyTypes: [Bogus]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 5432}]}]
"""


def test_lab_apply_prints_the_api_server_s_422_applies_the_rest_and_exits_non_zero(
    cli_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFESTS)
    assert cli.main(["lab", "apply", "--name", "t", "-f", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["namespace/x created", "networkpolicy/x/allow created"]
    lines = err.splitlines()
    assert lines[0] == (
        f'error: networkpolicy/x/deny ({path}#2): NetworkPolicy.networking.k8s.io "deny" is invalid:'
    )
    assert lines[1].startswith(
        '  * spec.podSelector.matchLabels: Invalid value: "bad key!": name part must consist of alphanumeric'
    )
    assert (
        lines[2]
        == '  * spec.policyTypes[0]: Unsupported value: "Bogus": supported values: "Ingress", "Egress"'
    )
    assert [p["metadata"]["name"] for p in cli_store.list("networkpolicies")[0]] == ["allow"]


def test_a_single_cause_is_printed_as_the_api_server_words_it(
    cli_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFESTS.split("---\n")[0] + "---\n" + MANIFESTS.split("---\n")[2].replace("5432", "0"))
    assert cli.main(["lab", "apply", "--name", "t", "-f", str(path)]) == 1
    assert capsys.readouterr().err == (
        f'error: networkpolicy/x/allow ({path}#2): NetworkPolicy.networking.k8s.io "allow" is invalid: '
        "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive\n"
    )
