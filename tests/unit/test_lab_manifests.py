"""Reading lab manifests: files, directories, stdin, List documents and clear errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from controller.lab import dns, manifests
from controller.lab.manifests import ManifestError

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
POD = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: a}}\n"
    "spec: {containers: [{name: c, ports: [{containerPort: 80, protocol: UDP}]}]}\n"
)
POLICY = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {}\n"
)
EXTERNAL = (
    "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: web}\n"
    "spec: {ip: 203.0.113.5, ports: [{port: 80, protocol: TCP}]}\n"
)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_multi_document_file_is_read_in_apply_order(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", "---\n".join([POLICY, POD, EXTERNAL, NAMESPACE]))
    loaded = manifests.apply_order(manifests.load([path]))
    assert [m.resource.kind for m in loaded] == ["Namespace", "ExternalHost", "Pod", "NetworkPolicy"]
    assert [m.display for m in loaded] == ["namespace/x", "externalhost/web", "pod/x/a", "networkpolicy/x/p"]


def test_delete_order_removes_policies_before_namespaces(tmp_path: Path) -> None:
    loaded = manifests.load([write(tmp_path, "m.yaml", "---\n".join([NAMESPACE, POLICY]))])
    assert [m.resource.kind for m in manifests.delete_order(loaded)] == ["NetworkPolicy", "Namespace"]


def test_a_directory_is_read_file_by_file_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "2-pod.yaml", POD)
    write(tmp_path, "1-ns.yml", NAMESPACE)
    write(tmp_path, "notes.txt", "not a manifest")
    assert [m.name for m in manifests.load([str(tmp_path)])] == ["x", "a"]


def test_standard_input_is_read_for_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(NAMESPACE))
    assert [m.name for m in manifests.load(["-"])] == ["x"]


def test_list_documents_are_flattened(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: q}}\n"
    assert [m.name for m in manifests.load([write(tmp_path, "l.yaml", text)])] == ["q"]


def test_a_pod_without_namespace_is_in_default(tmp_path: Path) -> None:
    loaded = manifests.load([write(tmp_path, "p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n")])
    assert loaded[0].namespace == "default"


def test_external_addresses_accept_one_or_a_list() -> None:
    one = {"spec": {"ip": "203.0.113.5"}}
    many = {"spec": {"ip": ["10.0.0.5", "2001:db8::5"]}}
    assert manifests.external_addresses(one) == ["203.0.113.5"]
    assert manifests.external_addresses(many) == ["10.0.0.5", "2001:db8::5"]


def test_external_names_are_canonical_once_each_with_the_default_ttl() -> None:
    host = {"spec": {"ip": "203.0.113.5", "names": ["API.example.com.", "api.example.com", "b.example.org"]}}
    assert manifests.external_names(host) == (["api.example.com", "b.example.org"], 30)
    assert manifests.external_names({"spec": {"ip": "203.0.113.5", "ttl": 2}}) == ([], 2)


def test_the_cluster_dns_answers_every_name_of_a_host_with_each_of_its_addresses() -> None:
    hosts: list[dict[str, Any]] = [
        {"metadata": {"name": "b"}, "spec": {"ip": "203.0.113.6", "names": ["api.example.com"], "ttl": 5}},
        {
            "metadata": {"name": "a"},
            "spec": {"ip": ["203.0.113.5", "2001:db8::5"], "names": ["api.example.com", "www.example.com"]},
        },
        {"metadata": {"name": "c"}, "spec": {"ip": "203.0.113.7"}},
    ]
    assert dns.external_conf(hosts).splitlines() == [
        "host-record=api.example.com,203.0.113.5,30",
        "host-record=api.example.com,2001:db8::5,30",
        "host-record=www.example.com,203.0.113.5,30",
        "host-record=www.example.com,2001:db8::5,30",
        "host-record=api.example.com,203.0.113.6,5",
    ]


def test_aliases_are_answered_as_a_cname_chain_ending_at_the_first_name() -> None:
    aliases = ["www.shop.example", "shop.cdn.example"]
    host = {
        "metadata": {"name": "cdn"},
        "spec": {"ip": "203.0.113.7", "names": ["edge.cdn.example"], "aliases": aliases, "ttl": 9},
    }
    assert dns.external_conf([host]).splitlines() == [
        "host-record=edge.cdn.example,203.0.113.7,9",
        "cname=www.shop.example,shop.cdn.example,9",
        "cname=shop.cdn.example,edge.cdn.example,9",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [\n", "invalid YAML"),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\n",
            "unknown kind 'EndpointSlice'",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "spec.ports: at least one port"),
        ("- just a list\n", "must be a mapping"),
        ("apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n", "must have apiVersion v1"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {}\n", "metadata.name is required"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {a: 1}}\n", "quote numbers"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n"
            "spec: {containers: [{ports: [{containerPort: 0}]}]}\n",
            "containerPort must be a number from 1 to 65535",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n"
            "spec: {containers: [{ports: [{containerPort: 80, protocol: ICMP}]}]}\n",
            "protocol must be TCP, UDP or SCTP",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\nspec: {}\n",
            "spec.ip is required",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 10.244.3.3}\n",
            "which the lab uses itself",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: nope}\n",
            "is not an IP address",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 203.0.113.5, names: [api.example.com, localhost]}\n",
            r"spec.names\[1\] 'localhost': must have at least two labels",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 203.0.113.5, aliases: [www.example.com]}\n",
            "spec.aliases needs spec.names",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 203.0.113.5, names: [a.example.com], aliases: [a.example.com]}\n",
            r"spec.aliases\[0\] 'a.example.com' is also in spec.names",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 203.0.113.5, names: [db.default.svc.cluster.local]}\n",
            "cluster.local is the cluster's own domain",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 203.0.113.5, names: [a.example.com], ttl: -1}\n",
            "spec.ttl must be a number of seconds",
        ),
        (
            "apiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: e}\n"
            "spec: {ip: 203.0.113.5, names: a.example.com}\n",
            "spec.names must be a list",
        ),
        ("", "no manifests found"),
    ],
)
def test_bad_manifests_are_refused_with_a_message_naming_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        manifests.load([write(tmp_path, "bad.yaml", text)])


def test_errors_name_the_file_and_document(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", NAMESPACE + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    with pytest.raises(ManifestError, match=r"m\.yaml#2"):
        manifests.load([path])


def test_a_missing_path_is_a_clear_error() -> None:
    with pytest.raises(ManifestError, match="no such file or directory"):
        manifests.load(["/nonexistent/model.yaml"])
