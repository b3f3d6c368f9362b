"""`vethguard convert -f FILE|-` (controller/debug/convert.py over controller/compiler/calico_convert.py):
calicoctl v1 policies and host endpoints printed as projectcalico.org/v3, v3 passed through,
ranges kept as written (never read as base-60 numbers), errors naming document, object and field."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.compiler.calico_convert import ConvertError, convert_documents
from controller.debug.convert import convert_text, load_documents

GUIDE = """\
apiVersion: v1
kind: policy
metadata:
  name: deny-nodeports
spec:
  preDNAT: true
  applyOnForward: true
  ingress:
  - action: deny
    destination:
      ports:
      - 30000:32767
    protocol: tcp
    source: {}
  - action: deny
    destination:
      ports:
      - 30000:32767
    protocol: udp
    source: {}
  order: 1100
  selector: ibm.role in { 'worker_public', 'master_public' }
"""

GUIDE_V3 = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-nodeports
spec:
  order: 1100
  selector: ibm.role in { 'worker_public', 'master_public' }
  types:
  - Ingress
  ingress:
  - action: Deny
    protocol: TCP
    source: {}
    destination:
      ports:
      - 30000:32767
  - action: Deny
    protocol: UDP
    source: {}
    destination:
      ports:
      - 30000:32767
  preDNAT: true
  applyOnForward: true
"""


def convert(argv_file: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["convert", "-f", argv_file])
    out, err = capsys.readouterr()
    return rc, out, err


def policy(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "policy", "metadata": {"name": name}, "spec": spec}


def one(doc: dict[str, Any]) -> dict[str, Any]:
    (out,) = convert_documents([doc])
    return out


def test_the_ibm_guide_policy_becomes_this_global_network_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "guide.yaml"
    path.write_text(GUIDE)
    assert convert(str(path), capsys) == (0, GUIDE_V3, "")


def test_the_readme_example_is_the_guide_manifest() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "calico" / "deny-nodeports-v1.yaml"
    assert example.read_text() == GUIDE


def test_stdin_is_read_with_a_dash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GUIDE))
    assert convert("-", capsys) == (0, GUIDE_V3, "")


def test_a_range_that_yaml_1_1_reads_as_base_60_stays_the_range_written() -> None:
    text = "apiVersion: v1\nkind: policy\nmetadata: {name: p}\nspec:\n  ingress:\n  - action: allow\n"
    text += "    protocol: tcp\n    destination: {ports: [1:30, 80]}\n"
    assert yaml.safe_load(text)["spec"]["ingress"][0]["destination"]["ports"] == [90, 80]  # the trap
    (doc,) = convert_documents(load_documents(text))
    assert doc["spec"]["ingress"][0]["destination"]["ports"] == ["1:30", 80]
    printed = convert_text(text)
    assert (
        "- '1:30'" in printed
        and yaml.safe_load(printed)["spec"]["ingress"][0]["destination"]["ports"][0] == "1:30"
    )


@pytest.mark.parametrize(
    ("v1", "v3"), [("allow", "Allow"), ("deny", "Deny"), ("log", "Log"), ("pass", "Pass")]
)
def test_each_action_is_capitalised(v1: str, v3: str) -> None:
    assert one(policy({"ingress": [{"action": v1}]}))["spec"]["ingress"] == [{"action": v3}]


@pytest.mark.parametrize(
    ("v1", "v3"),
    [
        ("tcp", "TCP"),
        ("udp", "UDP"),
        ("icmp", "ICMP"),
        ("icmpv6", "ICMPv6"),
        ("sctp", "SCTP"),
        ("udplite", "UDPLite"),
        (6, 6),
    ],
)
def test_each_protocol_is_spelled_as_v3_spells_it(v1: Any, v3: Any) -> None:
    rule = one(policy({"egress": [{"action": "allow", "protocol": v1, "notProtocol": v1}]}))["spec"][
        "egress"
    ][0]
    assert rule == {"action": "Allow", "protocol": v3, "notProtocol": v3}


def test_types_are_written_out_by_v3_defaulting_or_as_given() -> None:
    def types(spec: dict[str, Any]) -> list[str]:
        return list(one(policy(spec))["spec"]["types"])

    rule = [{"action": "allow"}]
    assert types({}) == ["Ingress"] and types({"ingress": rule}) == ["Ingress"]
    assert types({"egress": rule}) == ["Egress"] and types({"ingress": rule, "egress": rule}) == [
        "Ingress",
        "Egress",
    ]
    assert types({"types": ["egress"], "ingress": rule}) == ["Egress"]
    assert types({"preDNAT": True, "ingress": rule}) == ["Ingress"]


def test_entities_keep_their_fields_and_a_single_net_becomes_a_list() -> None:
    rule = {
        "action": "allow",
        "protocol": "tcp",
        "icmp": {"type": 8},
        "source": {"net": "10.0.0.0/8", "notSelector": "has(a)"},
        "destination": {"notNets": ["192.0.2.0/24"], "ports": ["http", 80], "notPorts": ["1:1023"]},
    }
    assert one(policy({"ingress": [rule]}))["spec"]["ingress"][0] == {
        "action": "Allow",
        "protocol": "TCP",
        "icmp": {"type": 8},
        "source": {"nets": ["10.0.0.0/8"], "notSelector": "has(a)"},
        "destination": {"notNets": ["192.0.2.0/24"], "ports": ["http", 80], "notPorts": ["1:1023"]},
    }


def test_a_host_endpoint_moves_its_node_into_the_spec() -> None:
    v1 = {
        "apiVersion": "v1",
        "kind": "hostEndpoint",
        "metadata": {"name": "eth0-w1", "node": "worker-1", "labels": {"ibm.role": "worker_public"}},
        "spec": {"interfaceName": "eth0", "expectedIPs": ["169.45.1.2"], "profiles": ["p"]},
    }
    assert one(v1) == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "HostEndpoint",
        "metadata": {"name": "eth0-w1", "labels": {"ibm.role": "worker_public"}},
        "spec": {
            "node": "worker-1",
            "interfaceName": "eth0",
            "expectedIPs": ["169.45.1.2"],
            "profiles": ["p"],
        },
    }


def test_v3_documents_pass_through_unchanged_and_empty_documents_are_skipped() -> None:
    v3 = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": "n", "namespace": "x"},
        "spec": {"selector": "all()", "ingress": [{"action": "Allow", "unknownToUs": True}]},
    }
    assert convert_documents([None, v3]) == [v3]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            policy({"ingress": [{"action": "drop"}]}, "deny-nodeports"),
            "document 2 (policy deny-nodeports): spec.ingress[0].action: unknown action 'drop'",
        ),
        (policy({"tier": "x"}), "document 2 (policy p): spec.tier: unknown field"),
        (
            policy({"egress": [{"action": "allow", "source": {"tag": "t"}}]}),
            "document 2 (policy p): spec.egress[0].source.tag: unknown field",
        ),
        (
            policy({"ingress": [{"action": "allow", "protocol": "gre"}]}),
            "document 2 (policy p): spec.ingress[0].protocol: unknown protocol 'gre'",
        ),
        (
            policy({"ingress": [{"action": "allow", "destination": {"ports": ["90:80"]}}]}),
            "document 2 (policy p): spec.ingress[0].destination.ports[0]: bad port '90:80' "
            "(a number 0..65535, a range 'a:b' or a name)",
        ),
        (
            policy({"preDNAT": True, "egress": [{"action": "deny"}]}),
            "document 2 (policy p): spec.egress: a preDNAT policy has ingress rules only",
        ),
        (
            {"apiVersion": "v1", "kind": "profile", "metadata": {"name": "k8s"}},
            "document 2 (profile k8s): apiVersion/kind: v1/profile is not a calicoctl v1 policy "
            "or hostEndpoint",
        ),
        (
            {"apiVersion": "v1", "kind": "policy", "metadata": {}},
            "document 2 (policy): metadata.name: required",
        ),
    ],
)
def test_what_cannot_be_converted_is_named_by_document_object_and_field(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConvertError) as info:
        convert_documents([policy({}, "first"), doc])
    assert str(info.value) == message


def test_the_command_prints_errors_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GUIDE + "---\n" + GUIDE.replace("action: deny", "action: drop", 1))
    assert convert(str(path), capsys) == (
        1,
        "",
        "error: document 2 (policy deny-nodeports): spec.ingress[0].action: unknown action 'drop'\n",
    )
    assert convert(str(tmp_path / "missing.yaml"), capsys)[0] == 1
