"""vethguard-cni's protocol side (no root): the CNI commands, configuration errors as CNI error
results, and what it reads from the main plugin's prevResult."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controller.cni import plugin

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "vethabc", "mac": "02:00:00:00:00:01"},
        {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p"},
    ],
    "ips": [
        {"address": "10.244.1.7/24", "interface": 1},
        {"address": "fd00:10:244:1::7/64", "interface": 1},
        {"address": "10.244.1.8/24", "interface": 1},
    ],
}


def config(**extra: object) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": "k8s", "type": "vethguard-cni", "prevResult": PREV, **extra}


def env(command: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/p",
        "CNI_IFNAME": "eth0",
    }


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, stdin: str
) -> tuple[int, dict[str, object]]:
    monkeypatch.setattr(plugin.os, "environ", env(command))
    monkeypatch.setattr(plugin.sys, "stdin", io.StringIO(stdin))
    code = plugin.main()
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_version_lists_the_supported_spec_versions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_main(monkeypatch, capsys, "VERSION", '{"cniVersion": "1.0.0"}')
    assert code == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize(
    ("stdin", "code", "message"),
    [
        ("not json", 7, "network configuration is not JSON"),
        ('{"cniVersion": "0.1.0"}', 1, "cniVersion '0.1.0' is not supported"),
        (json.dumps({"cniVersion": "1.0.0"}), 7, "no prevResult"),
    ],
)
def test_a_bad_configuration_is_an_error_result_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdin: str,
    code: int,
    message: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "node-1").mkdir()
    (tmp_path / "node-1" / "prog_from_pod").touch()
    stdin = stdin.replace('"cniVersion": "1.0.0"}', f'"cniVersion": "1.0.0", "pinRoot": "{tmp_path}"}}')
    exit_code, out = run_main(monkeypatch, capsys, "ADD", stdin)
    assert exit_code == 1
    assert out["code"] == code and message in str(out["msg"])


def test_without_pinned_programs_add_fails_so_the_runtime_does_not_start_the_pod(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = run_main(monkeypatch, capsys, "ADD", json.dumps(config(pinRoot=str(tmp_path))))
    assert code == 1
    assert out["code"] == plugin.ERR_NOT_READY
    assert "has not started on this node" in str(out["msg"])


def test_the_pin_directory_is_the_named_node_or_the_only_one(tmp_path: Path) -> None:
    assert plugin.pin_dir({"pinRoot": str(tmp_path), "nodeName": "n7"}) == tmp_path / "n7"
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
        (tmp_path / node / "prog_from_pod").touch()
    with pytest.raises(plugin.CniError, match="2 nodes; set nodeName"):
        plugin.pin_dir({"pinRoot": str(tmp_path)})
    (tmp_path / "b" / "prog_from_pod").unlink()
    assert plugin.pin_dir({"pinRoot": str(tmp_path)}) == tmp_path / "a"


def test_the_pods_first_address_of_each_family_comes_from_prev_result() -> None:
    assert plugin.pod_addresses(config()) == ("10.244.1.7", "fd00:10:244:1::7")
    with pytest.raises(plugin.CniError, match="bad address"):
        plugin.pod_addresses(config(prevResult={"ips": [{"address": "nope"}]}))


def test_the_host_interface_is_the_one_without_a_sandbox() -> None:
    prev = {"interfaces": [{"name": "lo"}, {"name": "eth0", "sandbox": "/run/netns/p"}]}
    assert plugin.host_interface({"prevResult": prev}, "eth0") == 1  # lo in this namespace
    with pytest.raises(plugin.CniError, match="names no host-side interface"):
        plugin.host_interface({"prevResult": {"interfaces": [prev["interfaces"][1]]}}, "eth0")


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS"])
def test_commands_with_nothing_to_undo_succeed_silently(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert run_main(monkeypatch, capsys, command, json.dumps(config())) == (0, {})
