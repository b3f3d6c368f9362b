"""`vethguard get` of Calico's projectcalico.org/v3 kinds: calicoctl's columns (NAME; NAMESPACE
NAME; NAME NODE, and -o wide's ORDER SELECTOR / INTERFACE IPS PROFILES), an ERRORS column and
notes when the parser reported problems, -n / -A for the namespaced kind, -o json|yaml, and the
debug inputs reading the three kinds from a Kubernetes API server (the lab's, in this process)
or going without them where the API is not served."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from controller.cli import main
from controller.compiler.calico import CalicoObjects
from controller.compiler.clusterview import ClusterView
from controller.debug import calico as calico_view
from controller.debug.inputs import LocalTarget, list_optional
from controller.lab.store import Store
from tests.support.calico_objects import GNP_KEY, HEP_KEY, NETPOL_KEY, calico_netpol, gnp, hep
from tests.support.debug_views import raw_cluster
from tests.support.lab_api import served_kubeconfig

BROKEN = gnp("broken", order=None, doNotTrack=True)


def view_with(**objects: list[dict[str, Any]]) -> ClusterView:
    return ClusterView(dataclasses.replace(raw_cluster([]), calico=CalicoObjects(**objects)))


@pytest.fixture
def store() -> Store:
    s = Store(window=50)
    for name in ("x", "y"):
        s.create("namespaces", {"metadata": {"name": name}})
    s.create(GNP_KEY, gnp())
    s.create(GNP_KEY, gnp("allow-all", order=None, selector="", preDNAT=False, ingress=[{"action": "Allow"}]))
    s.create(NETPOL_KEY, calico_netpol("x", "allow-web"))
    s.create(NETPOL_KEY, calico_netpol("y", "allow-web", order=2.5))
    s.create(HEP_KEY, hep())
    s.create(HEP_KEY, hep("node-2-any", "node-2", interfaceName="*", expectedIPs=None, profiles=["a", "b"]))
    return s


@pytest.fixture
def kubeconfig(store: Store, tmp_path: Path) -> Iterator[Path]:
    with served_kubeconfig(store, tmp_path) as path:
        yield path


def get(kubeconfig: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    local = ["--kubeconfig", str(kubeconfig), "--node", "node-1", "--agent", "127.0.0.1:9"]
    assert main(["get", *argv, *local]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_global_network_policies_are_listed_in_calicoctl_s_columns(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = get(kubeconfig, capsys, "globalnetworkpolicies")
    assert (out.splitlines(), err) == (["NAME", "allow-all", "deny-nodeports"], "")
    out, _ = get(kubeconfig, capsys, "gnp", "-o", "wide")
    assert out.splitlines() == [
        "NAME             ORDER    SELECTOR",
        "allow-all        <none>   all()",
        "deny-nodeports   1100     ibm.role in { 'worker_public', 'master_public' }",
    ]


def test_calico_network_policies_are_listed_per_namespace_or_across_namespaces(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = get(kubeconfig, capsys, "networkpolicies.crd.projectcalico.org", "-n", "x")
    assert out.splitlines() == ["NAMESPACE   NAME", "x           allow-web"]
    out, _ = get(kubeconfig, capsys, "cnetpol", "-A", "-o", "wide")
    assert out.splitlines() == [
        "NAMESPACE   NAME        ORDER   SELECTOR",
        "x           allow-web   100     app == 'web'",
        "y           allow-web   2.5     app == 'web'",
    ]
    assert get(kubeconfig, capsys, "networkpolicies.projectcalico.org") == (
        "",
        "No resources found in default namespace.\n",
    )
    out, _ = get(kubeconfig, capsys, "netpol", "-A")  # Kubernetes' NetworkPolicies: none
    assert "allow-web" not in out


def test_host_endpoints_are_listed_with_their_node_and_wide_with_interface_ips_and_profiles(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = get(kubeconfig, capsys, "hep")
    assert out.splitlines() == ["NAME            NODE", "node-1-public   node-1", "node-2-any      node-2"]
    out, _ = get(kubeconfig, capsys, "hostendpoints", "-o", "wide")
    assert out.splitlines() == [
        "NAME            NODE     INTERFACE   IPS        PROFILES",
        "node-1-public   node-1   eth0        10.0.0.1",
        "node-2-any      node-2   *                      a,b",
    ]


def test_json_and_yaml_print_the_objects_as_a_list(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = get(kubeconfig, capsys, "gnp", "-o", "json")
    doc = json.loads(out)
    assert (doc["kind"], [i["metadata"]["name"] for i in doc["items"]]) == (
        "List",
        ["allow-all", "deny-nodeports"],
    )
    assert {(i["kind"], i["apiVersion"]) for i in doc["items"]} == {
        ("GlobalNetworkPolicy", "projectcalico.org/v3")
    }
    out, _ = get(kubeconfig, capsys, "cnetpols", "-A", "-o", "yaml")
    items = yaml.safe_load(out)["items"]
    assert [(i["metadata"]["namespace"], i["kind"]) for i in items] == [
        ("x", "NetworkPolicy"),
        ("y", "NetworkPolicy"),
    ]


def test_a_policy_the_parser_reported_gets_an_errors_column_and_a_note_that_it_fails_closed() -> None:
    view = view_with(global_policies=[BROKEN, gnp()])
    kind = calico_view.BY_NAME["gnp"]
    objs = calico_view.objects(view, kind, None)
    assert calico_view.get_text(view, kind, objs, wide=False).splitlines() == [
        "NAME             ERRORS",
        "broken           1",
        "deny-nodeports",
    ]
    assert calico_view.error_notes(view, kind, objs) == [
        "GlobalNetworkPolicy broken: spec.doNotTrack: only false is supported: vethguard tracks every "
        "connection it allows; enforced first, for every endpoint, never wider than written "
        "(the policy is enforced failed closed)"
    ]
    heps = calico_view.BY_NAME["hep"]
    view = view_with(host_endpoints=[hep("no-node", node="")])
    notes = calico_view.error_notes(view, heps, calico_view.objects(view, heps, None))
    assert notes == ["HostEndpoint no-node: spec.node: required; the host endpoint is not enforced"]


def test_the_get_command_says_a_listed_object_s_problems_on_stderr(
    store: Store, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.write_unvalidated(calico_netpol("x", "bad", selector="a ==", ingress=[]))
    out, err = get(kubeconfig, capsys, "cnetpol", "-n", "x")
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "ERRORS"]
    assert out.splitlines()[2].split() == ["x", "bad", "1"]
    assert err.startswith("vethguard: NetworkPolicy.projectcalico.org x/bad: spec.selector: ")
    assert err.rstrip().endswith("(the policy is enforced failed closed)")


class _NoCalico:
    """kubernetes.client.CustomObjectsApi of a cluster with the ClusterNetworkPolicy CRD and
    Calico's API answering `calico` (403: the agent's RBAC is not applied yet)."""

    calico = 404

    def __init__(self, api_client: Any) -> None:
        pass

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Any:
        if group == "projectcalico.org":
            raise ApiException(status=self.calico, reason="Forbidden")
        return type("R", (), {"data": json.dumps({"items": [], "metadata": {"resourceVersion": "7"}})})()


def test_without_calico_s_api_the_inputs_have_none_and_without_permission_they_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(k8s_client, "CustomObjectsApi", _NoCalico)
    lists: dict[str, Any] = {}
    assert list_optional(object(), lists) == []
    assert sorted(lists) == ["cluster_policies", "global_policies", "host_endpoints", "namespaced_policies"]
    assert all(items == [] for items, _ in lists.values())
    monkeypatch.setattr(_NoCalico, "calico", 403)
    warnings = list_optional(object(), {})
    assert warnings == [
        "not allowed to list globalnetworkpolicies.projectcalico.org (the API server): "
        "Calico's GlobalNetworkPolicies are not shown",
        "not allowed to list networkpolicies.projectcalico.org (the API server): "
        "Calico's NetworkPolicies are not shown",
        "not allowed to list hostendpoints.projectcalico.org (the API server): "
        "Calico's HostEndpoints are not shown",
    ]


def test_the_local_target_reads_calico_s_kinds_into_the_model(kubeconfig: Path) -> None:
    raw = LocalTarget("node-1", "/nonexistent", str(kubeconfig), "127.0.0.1:9").objects()
    assert [
        len(raw.calico.global_policies),
        len(raw.calico.namespaced_policies),
        len(raw.calico.host_endpoints),
    ] == [2, 2, 2]
    cluster = ClusterView(raw).cluster
    assert sorted(cluster.calico_policies) == [
        "GlobalNetworkPolicy allow-all",
        "GlobalNetworkPolicy deny-nodeports",
        "NetworkPolicy.projectcalico.org x/allow-web",
        "NetworkPolicy.projectcalico.org y/allow-web",
    ]
    assert sorted(cluster.host_endpoints) == ["node-1-public", "node-2-any"]
